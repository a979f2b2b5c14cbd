//! HTTP ingest on the real stack, driven with curl: every format (and gzip, HTTP/2, a batch)
//! reaching the table once, each refusal with its status and reason (and the dead letter
//! where MQTT would make one), bearer tokens, Basic passwords and client certificates
//! against the ACL, a SIGHUP that withdraws a token, a sender over its rate beside one
//! under it, full budgets, and Kafka killed (503, then recovery with nothing lost).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    certificates, db, free_port, read_topic, rows, set, sha256_hex, wait_rows, Gateway, Tansu,
};
use serde_json::{json, Value};

/// What curl saw.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: String,
    body: Value,
    /// curl's own exit status: non-zero when no HTTP answer came (a failed handshake).
    exit: i32,
    http_version: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }
}

/// `curl -X POST` of `body` to `url`, with `args` (headers, TLS options) before it.
fn curl(url: &str, args: &[&str], body: &[u8]) -> Reply {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out, head) = (dir.path().join("body"), dir.path().join("head"));
    let mut child = Command::new("curl")
        .args([
            "-sS",
            "-X",
            "POST",
            "--data-binary",
            "@-",
            "--max-time",
            "60",
        ])
        .arg("-o")
        .arg(&out)
        .arg("-D")
        .arg(&head)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args)
        .arg(url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("curl runs (scripts/lib.sh installs it)");
    let mut stdin = child.stdin.take().expect("stdin");
    // A refusal may come before the whole body is read: a broken pipe is not a failure.
    let _ = stdin.write_all(body);
    drop(stdin);
    let output = child.wait_with_output().expect("curl exits");
    let written = String::from_utf8_lossy(&output.stdout).into_owned();
    let (code, version) = written.split_once(' ').unwrap_or((&written, ""));
    let text = std::fs::read(&out).unwrap_or_default();
    Reply {
        status: code.trim().parse().unwrap_or(0),
        headers: std::fs::read_to_string(&head).unwrap_or_default(),
        body: serde_json::from_slice(&text).unwrap_or(Value::Null),
        exit: output.status.code().unwrap_or(-1),
        http_version: version.trim().to_owned(),
    }
}

fn base(gateway: &Gateway) -> String {
    format!("http://127.0.0.1:{}/v1/readings", gateway.ingest_port)
}

const JSON: &str = "Content-Type: application/json";
const SENML: &str = "Content-Type: application/senml+json";
const TS: i64 = 1_700_000_000_000;

fn reading(value: i64, ts: i64) -> Vec<u8> {
    json!({"value": value, "ts": ts}).to_string().into_bytes()
}

fn cbor(value: &ciborium::Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("cbor");
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

#[tokio::test]
async fn every_format_reaches_the_table_once_with_http_headers_in_kafka() {
    let gateway = Gateway::start(None);
    let db = db().await;
    let id = &gateway.id;
    let url = base(&gateway);
    let dev = |n: &str| format!("{id}-{n}");

    let single = curl(
        &format!("{url}/{}/temp", dev("json")),
        &["-H", JSON],
        &reading(21, TS),
    );
    assert_eq!(
        (single.status, &single.body),
        (202, &json!({"accepted": 1})),
        "{single:?}"
    );
    // Without a metric in the path the payload names it.
    let named = json!({"metric": "hum", "value": 40, "ts": TS}).to_string();
    let r = curl(
        &format!("{url}/{}", dev("json")),
        &["-H", JSON],
        named.as_bytes(),
    );
    assert_eq!(r.status, 202, "{r:?}");
    use ciborium::Value as C;
    let map = C::Map(vec![
        (C::Text("value".into()), C::Integer(7.into())),
        (C::Text("ts".into()), C::Integer(TS.into())),
    ]);
    let r = curl(
        &format!("{url}/{}/temp", dev("cbor")),
        &["-H", "Content-Type: application/cbor"],
        &cbor(&map),
    );
    assert_eq!(r.status, 202, "{r:?}");
    let pack = json!([
        {"bn": "env.", "bt": TS / 1000, "n": "t", "v": 1},
        {"n": "h", "v": 2},
        {"n": "p", "v": 3, "t": 1}
    ]);
    let r = curl(
        &format!("{url}/{}", dev("senml")),
        &["-H", SENML],
        pack.to_string().as_bytes(),
    );
    assert_eq!(r.body, json!({"accepted": 3}), "{r:?}");
    // SenML CBOR, integer labels (RFC 8428: bn -2, bt -3, n 0, v 2).
    let record = C::Map(vec![
        (C::Integer((-2).into()), C::Text("c.".into())),
        (C::Integer((-3).into()), C::Integer((TS / 1000).into())),
        (C::Integer(0.into()), C::Text("x".into())),
        (C::Integer(2.into()), C::Integer(5.into())),
    ]);
    let r = curl(
        &format!("{url}/{}", dev("senmlcbor")),
        &["-H", "Content-Type: application/senml+cbor"],
        &cbor(&C::Array(vec![record])),
    );
    assert_eq!(r.status, 202, "{r:?}");
    let r = curl(
        &format!("{url}/{}/temp", dev("gzip")),
        &["-H", JSON, "-H", "Content-Encoding: gzip"],
        &gzip(&reading(9, TS)),
    );
    assert_eq!(r.status, 202, "{r:?}");
    // A batch over HTTP/2 (cleartext, prior knowledge): one bad item is refused and
    // dead-lettered, the others stored.
    let batch = json!([
        {"device_id": dev("b1"), "metric": "temp", "payload": {"value": 1, "ts": TS}},
        {"device_id": dev("b2"), "payload": [{"n": "x", "v": 2, "t": TS / 1000}]},
        {"device_id": dev("b3"), "metric": "temp", "payload": {"value": "warm"}}
    ]);
    let r = curl(
        &url,
        &["--http2-prior-knowledge", "-H", JSON],
        batch.to_string().as_bytes(),
    );
    assert_eq!((r.status, r.http_version.as_str()), (202, "2"), "{r:?}");
    assert_eq!(r.body["accepted"], 2, "{r:?}");
    assert_eq!(r.body["rejected"][0]["index"], 2, "{r:?}");
    assert_eq!(r.body["rejected"][0]["error"], "invalid_json", "{r:?}");

    let got = wait_rows(&db, &format!("{id}-"), 10).await;
    let mut names: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            (
                r.device_id.trim_start_matches(&format!("{id}-")).to_owned(),
                r.metric.clone(),
            )
        })
        .collect();
    names.sort();
    let want: Vec<(String, String)> = [
        ("b1", "temp"),
        ("b2", "x"),
        ("cbor", "temp"),
        ("gzip", "temp"),
        ("json", "hum"),
        ("json", "temp"),
        ("senml", "env.h"),
        ("senml", "env.p"),
        ("senml", "env.t"),
        ("senmlcbor", "c.x"),
    ]
    .iter()
    .map(|(d, m)| (d.to_string(), m.to_string()))
    .collect();
    assert_eq!(names, want, "each reading once: {got:?}");
    let records = read_topic(&gateway.readings_topic, 8).await;
    let first = records
        .iter()
        .find(|r| r.key == dev("json").as_bytes() && r.payload.windows(4).any(|w| w == b"temp"))
        .expect("the first reading's record, keyed by its device id");
    assert_eq!(first.header("http.content_type"), Some("application/json"));
    let gzipped = records
        .iter()
        .find(|r| r.key == dev("gzip").as_bytes())
        .expect("gzip record");
    assert_eq!(gzipped.header("http.content_encoding"), Some("gzip"));
    let letters = read_topic(&gateway.dlq_topic, 1).await;
    assert_eq!(letters[0].header("reason"), Some("invalid_json"));
    assert_eq!(
        letters[0].payload, br#"{"value":"warm"}"#,
        "the item's payload as sent"
    );
}

#[tokio::test]
async fn bad_requests_get_their_status_and_reason_and_the_others_are_served() {
    let gateway = Gateway::start(Some(Box::new(|c: &mut toml::Table| {
        set(c, &["ingress", "http", "max_body_bytes"], 4096);
    })));
    let db = db().await;
    let id = gateway.id.clone();
    let url = base(&gateway);
    let dev = format!("{id}-bad");
    let one = format!("{url}/{dev}/temp");

    let r = curl(&one, &["-H", JSON], br#"{"value": 1,"#);
    assert_eq!((r.status, r.error()), (400, "invalid_json"), "{r:?}");
    assert!(
        r.body["detail"].as_str().is_some_and(|d| d.contains("EOF")),
        "{r:?}"
    );
    let letters = read_topic(&gateway.dlq_topic, 1).await;
    assert_eq!(letters[0].header("reason"), Some("invalid_json"));
    assert_eq!(letters[0].payload, br#"{"value": 1,"#);
    assert_eq!(
        letters[0].header("mqtt_topic"),
        Some(format!("sensors/{dev}/temp").as_str())
    );

    let r = curl(&one, &["-H", JSON], &reading(1, TS - 86_400_000 * 365 * 20));
    assert_eq!((r.status, r.error()), (400, "time_out_of_window"), "{r:?}");
    let big = vec![b' '; 70_000];
    let r = curl(&one, &["-H", JSON], &big);
    assert_eq!((r.status, r.error()), (413, "payload_too_large"), "{r:?}");
    // Small on the wire, past the limit once inflated.
    let r = curl(
        &one,
        &["-H", JSON, "-H", "Content-Encoding: gzip"],
        &gzip(&big),
    );
    assert_eq!((r.status, r.error()), (413, "payload_too_large"), "{r:?}");
    let r = curl(
        &one,
        &["-H", JSON, "-H", "Content-Encoding: gzip"],
        b"not gzip",
    );
    assert_eq!((r.status, r.error()), (400, "bad_gzip"), "{r:?}");
    let r = curl(&url, &["-H", JSON], &vec![b' '; 5000]);
    assert_eq!(
        (r.status, r.error()),
        (413, "payload_too_large"),
        "batch over max_body_bytes: {r:?}"
    );
    let r = curl(&one, &["-H", "Content-Type: text/csv"], b"1,2");
    assert_eq!(
        (r.status, r.error()),
        (415, "unsupported_content_type"),
        "{r:?}"
    );
    let r = curl(&one, &[], &reading(1, TS));
    assert_eq!(r.status, 415, "no content type: {r:?}");
    let r = curl(
        &one,
        &["-H", JSON, "-H", "Content-Encoding: br"],
        &reading(1, TS),
    );
    assert_eq!(
        (r.status, r.error()),
        (415, "unsupported_encoding"),
        "{r:?}"
    );
    let r = curl(&format!("{url}/a%2Fb/temp"), &["-H", JSON], &reading(1, TS));
    assert_eq!(
        (r.status, r.error()),
        (400, "invalid_name"),
        "a device id with a /: {r:?}"
    );
    let r = curl(&format!("{url}/{dev}/a/b"), &["-H", JSON], &reading(1, TS));
    assert_eq!((r.status, r.error()), (404, "not_found"), "{r:?}");
    let r = curl(&url, &["-H", JSON], br#"{"device_id": "x"}"#);
    assert_eq!((r.status, r.error()), (400, "invalid_batch"), "{r:?}");
    let r = curl(
        &url,
        &["-H", JSON],
        json!([{"device_id": "x/y", "payload": {}}])
            .to_string()
            .as_bytes(),
    );
    assert_eq!(
        (r.status, r.error(), &r.body["index"]),
        (400, "invalid_name", &json!(0)),
        "{r:?}"
    );

    // After all that, the same sender is served as before, and only this reading is stored.
    let r = curl(&one, &["-H", JSON], &reading(5, TS));
    assert_eq!(r.status, 202, "{r:?}");
    let got = wait_rows(&db, &dev, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].value, Some(5.0));
    assert!(gateway.metric("sluice_http_requests_total{status=\"413\"}") >= 3.0);
}

#[tokio::test]
async fn tokens_passwords_and_certificates_post_only_where_the_acl_allows() {
    let files = tempfile::tempdir().expect("temp dir");
    let id = common::unique("hid");
    let (dev_a, dev_b, dev_c) = (format!("{id}-a"), format!("{id}-b"), format!("{id}-c"));
    let tokens = files.path().join("tokens");
    let token_lines = |devices: &[&str]| {
        let mut text = format!("collector:{}\n", sha256_hex("collector-token"));
        for d in devices {
            text += &format!("{d}:{}\n", sha256_hex(&format!("{d}-token")));
        }
        text
    };
    std::fs::write(&tokens, token_lines(&[&dev_a])).expect("tokens");
    let acl = files.path().join("acl");
    std::fs::write(
        &acl,
        "user collector\ntopic write sensors/#\ntopic write devices/#\n",
    )
    .expect("acl");
    let passwd = files.path().join("passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwd)
        .args([dev_b.as_str(), "b-secret"])
        .status();
    assert!(made.is_ok_and(|s| s.success()), "mosquitto_passwd");
    let certs = certificates(files.path(), &[&dev_c]);
    let tls_port = free_port();
    let (t, a, p, c2) = (tokens.clone(), acl.clone(), passwd.clone(), certs.clone());
    let mut gateway = Gateway::start(Some(Box::new(move |c: &mut toml::Table| {
        let path = |p: &Path| toml::Value::from(p.display().to_string());
        set(c, &["auth", "token_file"], path(&t));
        set(c, &["auth", "acl_file"], path(&a));
        set(c, &["auth", "password_file"], path(&p));
        let tls = toml::Table::from_iter([
            ("listen".into(), format!("127.0.0.1:{}", free_port()).into()),
            ("certfile".into(), path(&c2.join("server.pem"))),
            ("keyfile".into(), path(&c2.join("server.key"))),
            ("cafile".into(), path(&c2.join("ca.pem"))),
            ("require_certificate".into(), true.into()),
        ]);
        set(c, &["ingress", "tls"], tls);
        set(
            c,
            &["ingress", "http", "tls_listen"],
            format!("127.0.0.1:{tls_port}"),
        );
    })));
    let db = db().await;
    let url = base(&gateway);
    let bearer = |who: &str| format!("Authorization: Bearer {who}-token");
    let post = |device: &str, auth: &[&str], value: i64| {
        let mut args = vec!["-H", JSON];
        args.extend_from_slice(auth);
        curl(
            &format!("{url}/{device}/temp"),
            &args,
            &reading(value, TS + value),
        )
    };

    let r = post(&dev_a, &[], 1);
    assert_eq!((r.status, r.error()), (401, "unauthorized"), "{r:?}");
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"sluice\""),
        "{r:?}"
    );
    let r = post(&dev_a, &["-H", "Authorization: Bearer guessed"], 2);
    assert_eq!(r.status, 401, "{r:?}");
    let r = post(&dev_a, &["-H", &bearer(&dev_a)], 3);
    assert_eq!(r.status, 202, "a device posts its own readings: {r:?}");
    let r = post(&dev_b, &["-H", &bearer(&dev_a)], 4);
    assert_eq!(
        (r.status, r.error()),
        (403, "forbidden"),
        "another device's: {r:?}"
    );
    let r = post(&dev_b, &["-u", &format!("{dev_b}:b-secret")], 5);
    assert_eq!(r.status, 202, "Basic, the MQTT password: {r:?}");
    let r = post(&dev_b, &["-u", &format!("{dev_b}:wrong")], 6);
    assert_eq!(r.status, 401, "{r:?}");
    // A service the ACL lets write every device's topics posts a batch for two.
    let batch = json!([
        {"device_id": dev_b, "metric": "temp", "payload": {"value": 7, "ts": TS + 7}},
        {"device_id": dev_c, "metric": "temp", "payload": {"value": 8, "ts": TS + 8}}
    ]);
    let r = curl(
        &url,
        &["-H", JSON, "-H", &bearer("collector")],
        batch.to_string().as_bytes(),
    );
    assert_eq!(r.status, 202, "{r:?}");
    // A batch with one device its sender may not post for is refused whole.
    let batch = json!([
        {"device_id": dev_a, "metric": "temp", "payload": {"value": 9, "ts": TS + 9}},
        {"device_id": dev_b, "metric": "temp", "payload": {"value": 10, "ts": TS + 10}}
    ]);
    let r = curl(
        &url,
        &["-H", JSON, "-H", &bearer(&dev_a)],
        batch.to_string().as_bytes(),
    );
    assert_eq!(
        (r.status, r.error(), &r.body["index"]),
        (403, "forbidden", &json!(1)),
        "{r:?}"
    );

    // HTTPS: the client certificate is the identity; HTTP/2 by ALPN.
    let file = |name: &str| certs.join(name).display().to_string();
    let https = format!("https://127.0.0.1:{tls_port}/v1/readings");
    let tls_args = |cert: Option<&str>| {
        let mut args = vec![
            "--cacert".to_owned(),
            file("ca.pem"),
            "-H".into(),
            JSON.into(),
        ];
        if let Some(name) = cert {
            args.extend(["--cert".into(), file(&format!("{name}.pem"))]);
            args.extend(["--key".into(), file(&format!("{name}.key"))]);
        }
        args
    };
    let args = tls_args(Some(&dev_c));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = curl(
        &format!("{https}/{dev_c}/temp"),
        &args,
        &reading(11, TS + 11),
    );
    assert_eq!((r.status, r.http_version.as_str()), (202, "2"), "{r:?}");
    let r = curl(
        &format!("{https}/{dev_a}/temp"),
        &args,
        &reading(12, TS + 12),
    );
    assert_eq!(
        r.status, 403,
        "a certificate for {dev_c} posting for {dev_a}: {r:?}"
    );
    let args = tls_args(None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = curl(
        &format!("{https}/{dev_c}/temp"),
        &args,
        &reading(13, TS + 13),
    );
    assert!(
        r.status == 0 && r.exit != 0,
        "no certificate, no handshake: {r:?}"
    );

    // A token removed from the file stops working at the next SIGHUP; the others go on.
    std::fs::write(&tokens, token_lines(&[])).expect("tokens");
    gateway.signal(0, "HUP");
    common::wait_for(Duration::from_secs(10), "the reload", || {
        gateway
            .logs()
            .contains("credentials, ACL and certificates reloaded")
    });
    gateway.check_alive();
    let r = post(&dev_a, &["-H", &bearer(&dev_a)], 14);
    assert_eq!(r.status, 401, "{r:?}");
    let r = post(&dev_a, &["-H", &bearer("collector")], 15);
    assert_eq!(r.status, 202, "{r:?}");

    let got = wait_rows(&db, &format!("{id}-"), 6).await;
    let mut values: Vec<i64> = got
        .iter()
        .filter_map(|r| r.value)
        .map(|v| v as i64)
        .collect();
    values.sort_unstable();
    assert_eq!(
        values,
        vec![3, 5, 7, 8, 11, 15],
        "only what got a 202: {got:?}"
    );
}

#[tokio::test]
async fn a_sender_over_its_rate_gets_429_and_one_under_it_does_not() {
    let files = tempfile::tempdir().expect("temp dir");
    let id = common::unique("hrate");
    let (fast, slow) = (format!("{id}-fast"), format!("{id}-slow"));
    let tokens = files.path().join("tokens");
    let lines = format!(
        "{fast}:{}\n{slow}:{}\n",
        sha256_hex("fast-token"),
        sha256_hex("slow-token")
    );
    std::fs::write(&tokens, lines).expect("tokens");
    let t = tokens.clone();
    let gateway = Gateway::start(Some(Box::new(move |c: &mut toml::Table| {
        set(c, &["auth", "token_file"], t.display().to_string());
        set(c, &["ingress", "max_messages_per_second"], 2);
        set(c, &["ingress", "burst_messages"], 3);
    })));
    let db = db().await;
    let url = base(&gateway);
    let post = |device: &str, token: &str, n: i64| {
        let auth = format!("Authorization: Bearer {token}");
        curl(
            &format!("{url}/{device}/temp"),
            &["-H", JSON, "-H", &auth],
            &reading(n, TS + n),
        )
    };
    // More readings in one request than the burst could ever let through.
    let batch: Vec<Value> = (0..4)
        .map(|n| json!({"device_id": fast, "metric": "b", "payload": {"value": n, "ts": TS + n}}))
        .collect();
    let auth = "Authorization: Bearer fast-token";
    let r = curl(
        &url,
        &["-H", JSON, "-H", auth],
        json!(batch).to_string().as_bytes(),
    );
    assert_eq!((r.status, r.error()), (413, "over_burst"), "{r:?}");
    let mut accepted = Vec::new();
    let mut limited = None;
    // Ten at once: more than the burst of three whatever the machine's speed.
    let (post, fast) = (&post, fast.as_str());
    let replies: Vec<(i64, Reply)> = std::thread::scope(|s| {
        let posts: Vec<_> = (0..10)
            .map(|n| s.spawn(move || (n, post(fast, "fast-token", n))))
            .collect();
        posts.into_iter().filter_map(|p| p.join().ok()).collect()
    });
    for (n, r) in replies {
        match r.status {
            202 => accepted.push(n),
            429 => limited = Some(r),
            _ => panic!("{r:?}"),
        }
    }
    accepted.sort_unstable();
    let limited = limited.expect("ten posts at once are over 2/s with a burst of 3");
    assert_eq!(limited.error(), "rate_limited", "{limited:?}");
    let wait: u64 = limited
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=2).contains(&wait), "{limited:?}");
    assert!(
        (3..10).contains(&accepted.len()),
        "the burst, and what refilled: {accepted:?}"
    );
    for n in 0..3 {
        let r = post(&slow, "slow-token", n);
        assert_eq!(r.status, 202, "the other sender is not slowed: {r:?}");
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = post(fast, "fast-token", 100);
    assert_eq!(r.status, 202, "after Retry-After: {r:?}");
    accepted.push(100);
    let got = wait_rows(&db, fast, accepted.len()).await;
    let stored: Vec<i64> = got
        .iter()
        .filter_map(|r| r.value)
        .map(|v| v as i64)
        .collect();
    assert_eq!(stored, accepted, "exactly the 202s");
    assert_eq!(rows(&db, &slow).await.len(), 3);
}

#[tokio::test]
async fn full_budgets_and_too_many_requests_get_503_and_idle_sockets_are_closed() {
    let gateway = Gateway::start(Some(Box::new(|c: &mut toml::Table| {
        // HTTP may use half of the process's budget: one record.
        set(c, &["ingress", "max_inflight_total"], 2);
        set(c, &["ingress", "connect_timeout_ms"], 1000);
        let mut http = |key: &str, value: i64| set(c, &["ingress", "http", key], value);
        http("max_concurrent_requests", 1);
        http("max_requests_per_address", 2);
        http("max_connections_per_address", 3);
        http("max_batch_entries", 2);
    })));
    let db = db().await;
    let url = base(&gateway);
    let dev = format!("{}-busy", gateway.id);
    let batch = json!([
        {"device_id": dev, "metric": "a", "payload": {"value": 1, "ts": TS}},
        {"device_id": dev, "metric": "b", "payload": {"value": 2, "ts": TS}}
    ]);
    let r = curl(&url, &["-H", JSON], batch.to_string().as_bytes());
    assert_eq!((r.status, r.error()), (503, "busy"), "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    let three = json!([batch[0], batch[1], batch[0]]);
    let r = curl(&url, &["-H", JSON], three.to_string().as_bytes());
    assert_eq!((r.status, r.error()), (413, "too_many_entries"), "{r:?}");
    // One request holds the only slot while its body trickles in.
    let held = Held::start(&gateway, &format!("{dev}/c"), &reading(3, TS));
    held.wait_served(&gateway);
    let r = curl(&format!("{url}/{dev}/d"), &["-H", JSON], &reading(4, TS));
    assert_eq!((r.status, r.error()), (503, "busy"), "{r:?}");
    assert_eq!(held.finish(), "HTTP/1.1 202", "the held request is served");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Sockets that send nothing hold a place for connect_timeout_ms, and one address holds
    // at most three at once.
    let idle: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", gateway.ingest_port)).expect("connect"))
        .collect();
    let opened = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    let closed_after = |s: &std::net::TcpStream, since: Instant| {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let n = std::io::Read::read(&mut &*s, &mut [0u8; 1]).unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        since.elapsed()
    };
    let fourth = std::net::TcpStream::connect(("127.0.0.1", gateway.ingest_port)).expect("connect");
    let waited = closed_after(&fourth, Instant::now());
    assert!(
        waited < Duration::from_millis(500),
        "over the cap: closed at once ({waited:?})"
    );
    for s in &idle {
        let waited = closed_after(s, opened);
        assert!(
            waited > Duration::from_millis(700) && waited < Duration::from_secs(3),
            "closed after connect_timeout_ms, not before: {waited:?}"
        );
    }
    assert!(gateway.metric("sluice_http_connections_refused_total{reason=\"per_address\"}") >= 1.0);
    let r = curl(&format!("{url}/{dev}/e"), &["-H", JSON], &reading(5, TS));
    assert_eq!(r.status, 202, "{r:?}");
    let got = wait_rows(&db, &dev, 2).await;
    let metrics: Vec<&str> = got.iter().map(|r| r.metric.as_str()).collect();
    assert_eq!(metrics, ["c", "e"], "only the 202s");
}

/// An HTTP/1.1 request whose body is sent but for its last bytes, until `finish`.
struct Held {
    stream: std::net::TcpStream,
    rest: Vec<u8>,
}

impl Held {
    fn start(gateway: &Gateway, path: &str, body: &[u8]) -> Held {
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", gateway.ingest_port)).expect("connect");
        let head = format!(
            "POST /v1/readings/{path} HTTP/1.1\r\nHost: x\r\n{JSON}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let (first, rest) = body.split_at(body.len() / 2);
        stream.write_all(head.as_bytes()).expect("head");
        stream.write_all(first).expect("first half");
        Held {
            stream,
            rest: rest.to_vec(),
        }
    }

    /// Waits until the gateway serves the request (it waits for the rest of the body).
    fn wait_served(&self, gateway: &Gateway) {
        common::wait_for(Duration::from_secs(10), "the request to be served", || {
            gateway.metric("sluice_http_requests_in_progress") >= 1.0
        });
    }

    /// Sends the rest and returns the status line.
    fn finish(mut self) -> String {
        self.stream.write_all(&self.rest).expect("rest of the body");
        self.status()
    }

    /// The status line of the answer, the rest of the body never sent.
    fn status(mut self) -> String {
        let mut answer = [0u8; 12];
        std::io::Read::read_exact(&mut self.stream, &mut answer).expect("answer");
        String::from_utf8_lossy(&answer).into_owned()
    }
}

#[tokio::test]
async fn a_body_that_never_ends_gets_408_and_its_address_429_meanwhile() {
    let gateway = Gateway::start(Some(Box::new(|c: &mut toml::Table| {
        set(c, &["ingress", "http", "request_timeout_ms"], 1500);
        set(c, &["ingress", "http", "max_requests_per_address"], 1);
    })));
    let dev = format!("{}-slow", gateway.id);
    let held = Held::start(&gateway, &format!("{dev}/temp"), &reading(1, TS));
    held.wait_served(&gateway);
    let r = curl(
        &format!("{}/{dev}/temp", base(&gateway)),
        &["-H", JSON],
        &reading(2, TS),
    );
    assert_eq!((r.status, r.error()), (429, "too_many_requests"), "{r:?}");
    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    let started = Instant::now();
    assert_eq!(held.status(), "HTTP/1.1 408", "the body never came");
    assert!(started.elapsed() < Duration::from_secs(5));
    let r = curl(
        &format!("{}/{dev}/temp", base(&gateway)),
        &["-H", JSON],
        &reading(3, TS),
    );
    assert_eq!(r.status, 202, "its place is given back: {r:?}");
}

#[tokio::test]
async fn sigterm_lets_a_request_in_progress_finish_and_takes_no_new_ones() {
    let mut gateway = Gateway::start(None);
    let dev = format!("{}-drain", gateway.id);
    let held = Held::start(&gateway, &format!("{dev}/temp"), &reading(1, TS));
    held.wait_served(&gateway);
    gateway.signal(0, "TERM");
    common::wait_for(Duration::from_secs(10), "the drain to start", || {
        gateway.logs().contains("HTTP ingest stopped accepting")
    });
    let r = curl(
        &format!("{}/{dev}/temp", base(&gateway)),
        &["-H", JSON],
        &reading(2, TS + 1),
    );
    assert!(
        r.status == 0 && r.exit != 0,
        "the listener is closed: {r:?}"
    );
    assert_eq!(
        held.finish(),
        "HTTP/1.1 202",
        "the request in progress is answered"
    );
    let status = gateway.wait_exit(0);
    assert!(status.success(), "{status}");
    // The writer may have stopped before writing it: Kafka has it, once.
    let records = read_topic(&gateway.readings_topic, 1).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].key, dev.as_bytes());
}

#[tokio::test]
async fn kafka_killed_gives_503_then_recovers_and_every_202_is_stored_once() {
    let mut kafka = Tansu::start();
    let mut gateway = Gateway::configure(Some(Box::new(|c: &mut toml::Table| {
        set(c, &["ingress", "http", "request_timeout_ms"], 3000);
    })));
    gateway.spawn(&["--role", "all"], &[("KAFKA_BROKERS", &kafka.brokers())]);
    gateway.wait_ready();
    let db = db().await;
    let url = base(&gateway);
    let dev = format!("{}-kk", gateway.id);
    let mut n = 0i64;
    let mut post = || {
        n += 1;
        (
            n,
            curl(
                &format!("{url}/{dev}/temp"),
                &["-H", JSON],
                &reading(n, TS + n),
            ),
        )
    };
    let mut accepted = Vec::new();
    for _ in 0..5 {
        let (n, r) = post();
        assert_eq!(r.status, 202, "{r:?}");
        accepted.push(n);
    }
    kafka.kill();
    let started = Instant::now();
    let mut unavailable = 0;
    let mut fast_refusal = None;
    while started.elapsed() < Duration::from_secs(40) && fast_refusal.is_none() {
        let sent = Instant::now();
        let (n, r) = post();
        match r.status {
            202 => accepted.push(n),
            503 => {
                assert_eq!(r.error(), "kafka_unavailable", "{r:?}");
                assert_eq!(r.header("retry-after"), Some("5"), "{r:?}");
                unavailable += 1;
                // Once Sluice knows Kafka is down, it says so at once.
                if sent.elapsed() < Duration::from_millis(500) {
                    fast_refusal = Some(r);
                }
            }
            _ => panic!("{r:?}"),
        }
    }
    assert!(
        fast_refusal.is_some(),
        "503s at once while Kafka is down ({unavailable} in all)"
    );
    kafka.restart();
    let recovered = Instant::now();
    loop {
        let (n, r) = post();
        if r.status == 202 {
            accepted.push(n);
            break;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(60),
            "no recovery: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for _ in 0..5 {
        let (n, r) = post();
        assert_eq!(r.status, 202, "{r:?}");
        accepted.push(n);
    }
    // Every 202 is in the table once; a 503's reading may be too (Kafka may have taken it
    // after the answer), never twice.
    let got = wait_rows(&db, &dev, accepted.len()).await;
    let stored: Vec<i64> = got
        .iter()
        .filter_map(|r| r.value)
        .map(|v| v as i64)
        .collect();
    for a in &accepted {
        assert_eq!(
            stored.iter().filter(|s| *s == a).count(),
            1,
            "reading {a}: {stored:?}"
        );
    }
}
