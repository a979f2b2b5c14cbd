//! Several processes on one machine: ingress processes sharing the device port with
//! `ingress.reuse_port` beside a writer of its own, one ingress killed, and each process's
//! metrics labelled with its role.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{db, free_port, http_get, metric_in, set, wait_for, wait_rows, Gateway};

/// Its own metrics port and embedded-broker ports, for a second process on the machine.
struct OwnPorts {
    http: String,
    v4: String,
    v5: String,
}

impl OwnPorts {
    fn new() -> OwnPorts {
        let addr = || format!("127.0.0.1:{}", free_port());
        OwnPorts {
            http: addr(),
            v4: addr(),
            v5: addr(),
        }
    }

    fn http_port(&self) -> u16 {
        self.http
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("a port")
    }

    /// The environment that moves only the metrics port: for a writer, which has no
    /// embedded broker.
    fn http_env(&self) -> [(&'static str, &str); 1] {
        [("SLUICE__HTTP__LISTEN", self.http.as_str())]
    }

    /// The environment that moves them all (what an operator sets).
    fn env(&self) -> [(&'static str, &str); 3] {
        [
            self.http_env()[0],
            ("SLUICE__BROKER__V4__1__LISTEN", self.v4.as_str()),
            ("SLUICE__BROKER__V5__1__LISTEN", self.v5.as_str()),
        ]
    }
}

/// Each of `devices` publishes readings `from..to` (QoS 1, one connection each); every
/// one must be acknowledged.
fn publish(gateway: &Gateway, devices: &[String], from: i64, to: i64) {
    for dev in devices {
        let lines: String = (from..to)
            .map(|i| format!("{{\"value\": {i}, \"ts\": {}}}\n", 1_700_000_000_000 + i))
            .collect();
        assert!(
            gateway.publish_lines(&format!("sensors/{dev}/temp"), &lines),
            "{dev}'s readings {from}..{to} acknowledged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_processes_share_the_device_port_and_one_can_die() {
    let mut gateway = Gateway::configure(Some(Box::new(|c: &mut toml::Table| {
        set(c, &["ingress", "reuse_port"], true);
    })));
    let (second, writer) = (OwnPorts::new(), OwnPorts::new());
    let first = gateway.spawn(&["--role", "ingress"], &[]);
    gateway.spawn(&["--role", "ingress"], &second.env());
    gateway.spawn(&["--role", "writer"], &writer.http_env());
    gateway.wait_ready();
    let ports = [gateway.http_port, second.http_port(), writer.http_port()];
    wait_for(Duration::from_secs(30), "every process to be ready", || {
        gateway.check_alive();
        ports.iter().all(|p| http_get(*p, "/health/ready").0 == 200)
    });

    // Without reuse_port, a process cannot take the port, and says which setting.
    let third = OwnPorts::new();
    let mut env = third.env().to_vec();
    env.push(("SLUICE__INGRESS__REUSE_PORT", "false"));
    let no_reuse = gateway.spawn(&["--role", "ingress"], &env);
    assert_eq!(gateway.wait_exit(no_reuse).code(), Some(1));
    let refused = format!("ingress.listen 127.0.0.1:{}", gateway.mqtt_port);
    let logs = gateway.logs();
    assert!(
        logs.contains(&refused) && logs.contains("ingress.reuse_port = true"),
        "names the setting: {logs}"
    );

    // Nor can it share the first one's embedded-broker ports: it would relay its devices
    // through the first one's broker.
    let fourth = OwnPorts::new();
    let same_broker = gateway.spawn(&["--role", "ingress"], &fourth.http_env());
    assert_ne!(gateway.wait_exit(same_broker).code(), Some(0));
    let config: toml::Table = std::fs::read_to_string(&gateway.config)
        .expect("the configuration")
        .parse()
        .expect("it parses");
    let v4 = config["broker"]["v4"]["1"]["listen"]
        .as_str()
        .expect("broker.v4.1.listen");
    let refused = format!("broker.v4.1.listen {v4}: ");
    let logs = gateway.logs();
    assert!(
        logs.contains(&refused) && logs.contains("SLUICE__BROKER__V4__1__LISTEN"),
        "names the setting: {logs}"
    );

    let devices: Vec<String> = (0..16).map(|n| format!("{}-d{n:02}", gateway.id)).collect();
    publish(&gateway, &devices, 0, 5);
    let pages = ports.map(|p| http_get(p, "/metrics").1);
    let publishes = |page: &str| metric_in(page, r#"sluice_publishes_total{qos="1"}"#);
    let (a, b) = (publishes(&pages[0]), publishes(&pages[1]));
    assert_eq!(a + b, 80.0, "every publish went through one of the two");
    // 16 connections all on one of two sockets: about 1 in 30,000.
    assert!(a > 0.0 && b > 0.0, "the kernel spread them: {a} and {b}");
    for (page, role) in pages.iter().zip(["ingress", "ingress", "writer"]) {
        let info = format!(r#"sluice_info{{role="{role}""#);
        assert!(page.contains(&info), "{role} says so: {page}");
    }

    // One ingress dies; the devices connect again through the same port.
    gateway.signal(first, "KILL");
    gateway.wait_exit(first);
    publish(&gateway, &devices, 5, 10);

    let db = db().await;
    let prefix = format!("{}-d", gateway.id);
    let rows = wait_rows(&db, &prefix, 160).await;
    let stored: Vec<(String, i64)> = rows
        .iter()
        .map(|r| (r.device_id.clone(), r.time_ms))
        .collect();
    let expected: BTreeSet<(String, i64)> = devices
        .iter()
        .flat_map(|d| (0..10).map(move |i| (d.clone(), 1_700_000_000_000 + i)))
        .collect();
    assert_eq!(
        stored.len(),
        expected.len(),
        "each reading once: {stored:?}"
    );
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), expected);
}
