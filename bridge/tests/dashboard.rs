//! The dashboard in a real browser: the stack runs, devices publish, and headless Chromium
//! (Debian's `chromium`, driven over the DevTools protocol) opens the page on a chosen
//! device and checks what a person would see: a moving throughput figure, the device's
//! chart with points, its anomaly marked, no error banner. The screenshot is kept in
//! `target/test-artefacts/dashboard.png`.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{db, wait_for, wait_rows, Gateway};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};

/// Headless Chromium with one page, driven over its DevTools WebSocket.
struct Chromium {
    child: Child,
    socket: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Chromium {
    fn start() -> Chromium {
        let profile = tempfile::tempdir().expect("temp dir");
        let child = Command::new("chromium")
            .args([
                "--headless=new",
                // Tests run as root in CI, where Chromium's sandbox refuses to start.
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,1400",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Debian's chromium (scripts/lib.sh installs it)");
        // With port 0 Chromium picks one and writes it here.
        let active = profile.path().join("DevToolsActivePort");
        let mut port = String::new();
        wait_for(Duration::from_secs(30), "Chromium's DevTools port", || {
            port = std::fs::read_to_string(&active)
                .unwrap_or_default()
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            !port.is_empty()
        });
        let list = Command::new("curl")
            .args(["-sS", &format!("http://127.0.0.1:{port}/json/list")])
            .output()
            .expect("curl runs");
        let targets: Value = serde_json::from_slice(&list.stdout).expect("DevTools target list");
        let url = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .unwrap_or_else(|| panic!("no page target in {targets}"))
            .to_owned();
        let stream = TcpStream::connect(("127.0.0.1", port.parse::<u16>().expect("a port")))
            .expect("DevTools accepts");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout set");
        let (socket, _) = tungstenite::client(url.as_str(), stream).expect("DevTools WebSocket");
        Chromium {
            child,
            socket,
            next_id: 0,
            _profile: profile,
        }
    }

    /// One DevTools command's result; events that arrive meanwhile are skipped.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let command = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket
            .send(tungstenite::Message::text(command))
            .expect("DevTools command sent");
        loop {
            let message = self.socket.read().expect("DevTools answers");
            let Ok(text) = message.to_text() else {
                continue;
            };
            let answer: Value = serde_json::from_str(text).expect("DevTools JSON");
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    fn screenshot(&mut self, path: &Path) {
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .expect("a base64 PNG");
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("artefact folder");
        std::fs::write(path, png).expect("screenshot written");
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the page shows, read as a person would (text) plus the charts' drawn counts.
const SEEN: &str = r#"(() => {
  const q = (s) => document.querySelector(s);
  // Page.navigate answers before the page has loaded.
  if (location.pathname !== '/dashboard/' || !q('#tiles')) return null;
  const banner = q('#banner');
  return {
    readings_in: q('#t-in .value').textContent,
    status_time: q('#tiles').dataset.time || null,
    live_points: Number(q('#live-chart').dataset.points),
    points: Number(q('#device-chart').dataset.points),
    anomalies: Number(q('#device-chart').dataset.anomalies),
    banner: banner.hidden ? null : banner.textContent,
    info: q('#device-info').textContent,
  };
})()"#;

fn figure(seen: &Value) -> f64 {
    let text = seen["readings_in"].as_str().unwrap_or_default();
    text.replace(',', "").parse().unwrap_or(0.0)
}

/// A device publishing a temperature near 20 every 100-300 ms until `stop`, so the rate
/// in moves from second to second; with `history`, first the last 10 minutes of it every
/// 10 s, so its chart has a line to draw, with a spike (35) 150 s ago for the detector to
/// flag once its warm-up is over.
async fn publish_until(gateway_port: u16, device: String, history: bool, stop: Arc<AtomicBool>) {
    let options = MqttOptions::new(&device, "127.0.0.1", gateway_port);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let topic = format!("sensors/{device}/temp");
    let temperature = |ts: i64| 20.0 + ((ts / 1000) as f64 / 60.0).sin() * 0.5;
    let now = chrono::Utc::now().timestamp_millis();
    let send = |ts: i64| {
        let value = match now - ts == 150_000 {
            true => 35.0,
            false => temperature(ts),
        };
        let payload = json!({"value": value, "ts": ts}).to_string();
        client.publish(topic.clone(), QoS::AtLeastOnce, false, payload)
    };
    for ts in (now - 600_000..now).step_by(10_000).filter(|_| history) {
        send(ts).await.expect("queued");
    }
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        send(chrono::Utc::now().timestamp_millis())
            .await
            .expect("queued");
        tokio::time::sleep(Duration::from_millis(100 + (n * 37) % 200)).await;
    }
    let _ = client.disconnect().await;
}

fn artefact(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/test-artefacts")
        .join(name)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_sees_live_throughput_a_device_chart_and_its_anomaly() {
    let gateway = Gateway::start(None);
    let db = db().await;
    let devices: Vec<String> = (0..3).map(|n| format!("{}-dev{n}", gateway.id)).collect();
    let chosen = devices[0].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = devices
        .iter()
        .map(|d| {
            let history = *d == chosen;
            tokio::spawn(publish_until(
                gateway.mqtt_port,
                d.clone(),
                history,
                stop.clone(),
            ))
        })
        .collect();
    wait_rows(&db, &chosen, 65).await;

    // The detector flags the injected spike as the writer stores it.
    let spikes =
        "SELECT count(*) FROM anomalies WHERE device_id = $1 AND kind = 'spike' AND value = 35";
    let start = Instant::now();
    while db
        .query_one(spikes, &[&chosen])
        .await
        .expect("anomalies")
        .get::<_, i64>(0)
        == 0
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the spike was not flagged"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let url = format!(
        "http://127.0.0.1:{}/dashboard/#device={chosen}&metric=temp&range=15m",
        gateway.ingest_port
    );
    let checks = tokio::task::spawn_blocking(move || {
        let mut browser = Chromium::start();
        browser.call("Page.enable", json!({}));
        browser.call("Page.navigate", json!({"url": url}));

        let start = Instant::now();
        let mut seen = browser.eval(SEEN);
        let count = |seen: &Value, key: &str| seen[key].as_u64().unwrap_or(0);
        while !(figure(&seen) > 0.0 && count(&seen, "points") > 0 && count(&seen, "anomalies") > 0)
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the page never showed live data, points and the anomaly: {seen}"
            );
            std::thread::sleep(Duration::from_millis(500));
            seen = browser.eval(SEEN);
        }
        // The figure a person watches changes as the stream goes on.
        let mut figures = vec![seen["readings_in"].clone()];
        let first_time = seen["status_time"].clone();
        for _ in 0..12 {
            std::thread::sleep(Duration::from_secs(1));
            seen = browser.eval(SEEN);
            assert!(figure(&seen) > 0.0, "{seen}");
            figures.push(seen["readings_in"].clone());
        }
        figures.dedup();
        assert!(
            figures.len() > 1,
            "the throughput figure never moved: {figures:?}"
        );
        assert_ne!(seen["status_time"], first_time, "{seen}");
        assert!(count(&seen, "live_points") > 5, "{seen}");
        assert!(
            count(&seen, "points") > 5,
            "the device's history is not drawn: {seen}"
        );
        assert!(seen["banner"].is_null(), "an error banner: {seen}");
        browser.screenshot(&artefact("dashboard.png"));

        // A person looking for another device types part of its id.
        let search = chosen.replace("-dev0", "-dev");
        browser.eval(&format!(
            "(() => {{ const i = document.querySelector('#device-search'); i.value = {search:?}; \
             i.dispatchEvent(new Event('input')); }})()"
        ));
        let start = Instant::now();
        while browser.eval("document.querySelector('#device-matches').dataset.count || '0'") != "3"
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no search matches"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        seen
    })
    .await
    .expect("browser checks");

    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.await.expect("publisher ends");
    }
    eprintln!("the page showed: {checks}");
}
