//! The pipeline end to end on real parts: MQTT clients (rumqttc, mosquitto_pub/sub) publish
//! to a real `sluice`, through real tansu, into real PostgreSQL; the tests read the rows.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{db, read_topic, wait_rows, Gateway, Row};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

/// A rumqttc device whose events are collected in the background.
struct Device {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Event>,
}

impl Device {
    async fn connect(gateway: &Gateway, client_id: &str) -> Device {
        Device::connect_keep_alive(gateway, client_id, Duration::from_secs(30)).await
    }

    async fn connect_keep_alive(
        gateway: &Gateway,
        client_id: &str,
        keep_alive: Duration,
    ) -> Device {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", gateway.mqtt_port);
        options.set_keep_alive(keep_alive);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let (tx, events) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                if tx.send(event).is_err() {
                    break;
                }
            }
        });
        let mut device = Device { client, events };
        device.expect(|p| matches!(p, Packet::ConnAck(_))).await;
        device
    }

    async fn publish(&self, topic: &str, qos: QoS, payload: Vec<u8>) {
        self.client
            .publish(topic, qos, false, payload)
            .await
            .expect("queued");
    }

    /// The next incoming packet that `want` accepts, within 30 s.
    async fn expect(&mut self, want: impl Fn(&Packet) -> bool) -> Packet {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match self.events.recv().await {
                    Some(Event::Incoming(p)) if want(&p) => return p,
                    Some(_) => {}
                    None => panic!("connection ended"),
                }
            }
        })
        .await
        .expect("packet within 30 s")
    }

    async fn expect_puback(&mut self) {
        self.expect(|p| matches!(p, Packet::PubAck(_))).await;
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    async fn publish_acked(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.publish(topic, QoS::AtLeastOnce, payload.into()).await;
        self.expect_puback().await;
    }
}

fn cbor(value: &ciborium::Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("cbor");
    out
}

fn row(
    device: &str,
    metric: &str,
    time_ms: i64,
    value: f64,
    unit: Option<&str>,
    seq: Option<i64>,
) -> Row {
    Row {
        device_id: device.into(),
        metric: metric.into(),
        time_ms,
        value: Some(value),
        unit: unit.map(Into::into),
        seq,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_json_and_cbor_at_qos0_and_qos1_land_as_exact_rows() {
    let gateway = Gateway::start(None);
    let db = db().await;
    let a = format!("{}-a", gateway.id);
    let b = format!("{}-b", gateway.id);
    let mut dev_a = Device::connect(&gateway, &a).await;
    let dev_b = Device::connect(&gateway, &b).await;

    use ciborium::Value;
    dev_a
        .publish_acked(
            &format!("sensors/{a}/temp"),
            br#"{"value": 21.5, "ts": 1700000000000, "unit": "Cel", "seq": 1}"#,
        )
        .await;
    let packed = cbor(&Value::Map(vec![
        (Value::Text("value".into()), Value::Float(48.25)),
        (
            Value::Text("ts".into()),
            Value::Text("2023-11-14T22:13:21Z".into()),
        ),
        (Value::Text("seq".into()), Value::Integer(2.into())),
    ]));
    dev_a
        .publish_acked(&format!("sensors/{a}/hum"), packed)
        .await;
    dev_b
        .publish(
            &format!("sensors/{b}/temp"),
            QoS::AtMostOnce,
            br#"{"value": -3, "ts": 1700000002000}"#.to_vec(),
        )
        .await;
    let packed = cbor(&Value::Map(vec![
        (Value::Text("value".into()), Value::Integer(7.into())),
        (
            Value::Text("ts".into()),
            Value::Integer(1_700_000_003_000i64.into()),
        ),
        (Value::Text("unit".into()), Value::Text("%".into())),
    ]));
    dev_b
        .publish(&format!("sensors/{b}/hum"), QoS::AtMostOnce, packed)
        .await;

    let rows = wait_rows(&db, &gateway.id, 4).await;
    assert_eq!(
        rows,
        vec![
            row(&a, "hum", 1_700_000_001_000, 48.25, None, Some(2)),
            row(&a, "temp", 1_700_000_000_000, 21.5, Some("Cel"), Some(1)),
            row(&b, "hum", 1_700_000_003_000, 7.0, Some("%"), None),
            row(&b, "temp", 1_700_000_002_000, -3.0, None, None),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_lands_and_mosquitto_sub_sees_it_live() {
    let gateway = Gateway::start(None);
    let db = db().await;
    let port = gateway.mqtt_port.to_string();
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            "sensors/#",
            "-v",
            "-C",
            "2",
            "-W",
            "30",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (Debian mosquitto-clients) runs");
    // mosquitto_sub has no "subscribed" signal; give its SUBSCRIBE time to reach the broker.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dev = format!("{}-m", gateway.id);
    for (version, metric, body) in [
        (
            "mqttv311",
            "temp",
            r#"{"value": 1.25, "ts": 1700000000000}"#,
        ),
        (
            "mqttv5",
            "hum",
            r#"{"value": 2.5, "ts": 1700000001000, "unit": "%"}"#,
        ),
    ] {
        let status = gateway
            .mosquitto_pub()
            .args([
                "-V",
                version,
                "-t",
                &format!("sensors/{dev}/{metric}"),
                "-m",
                body,
            ])
            .status()
            .expect("mosquitto_pub runs");
        assert!(
            status.success(),
            "mosquitto_pub -V {version} got its PUBACK"
        );
    }
    let out = sub.wait_with_output().expect("mosquitto_sub ends");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        vec![
            format!(r#"sensors/{dev}/temp {{"value": 1.25, "ts": 1700000000000}}"#),
            format!(r#"sensors/{dev}/hum {{"value": 2.5, "ts": 1700000001000, "unit": "%"}}"#),
        ]
    );
    let rows = wait_rows(&db, &dev, 2).await;
    assert_eq!(
        rows,
        vec![
            row(&dev, "hum", 1_700_000_001_000, 2.5, Some("%"), None),
            row(&dev, "temp", 1_700_000_000_000, 1.25, None, None),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_are_dead_lettered_and_the_connection_keeps_flowing() {
    let gateway = Gateway::start(None);
    let db = db().await;
    let bad = format!("{}-bad", gateway.id);
    let other = format!("{}-other", gateway.id);
    let mut dev = Device::connect(&gateway, &bad).await;
    let mut neighbour = Device::connect(&gateway, &other).await;

    dev.publish_acked(&format!("sensors/{bad}/temp"), b"not json at all")
        .await;
    dev.publish_acked(&format!("sensors/{bad}/temp"), vec![0xa1, 0x65, 0x76])
        .await;
    // The same connection goes on: its next good reading lands, and so do the neighbour's.
    dev.publish_acked(
        &format!("sensors/{bad}/temp"),
        br#"{"value": 5, "ts": 1700000000000}"#,
    )
    .await;
    neighbour
        .publish_acked(
            &format!("sensors/{other}/temp"),
            br#"{"value": 6, "ts": 1700000000000}"#,
        )
        .await;
    let rows = wait_rows(&db, &gateway.id, 2).await;
    assert_eq!(
        rows,
        vec![
            row(&bad, "temp", 1_700_000_000_000, 5.0, None, None),
            row(&other, "temp", 1_700_000_000_000, 6.0, None, None),
        ]
    );
    assert_eq!(
        gateway.metric(r#"sluice_rejected_total{reason="unknown_format"}"#),
        1.0
    );
    assert_eq!(
        gateway.metric(r#"sluice_rejected_total{reason="invalid_cbor"}"#),
        1.0
    );

    // Both bad payloads are in the dead-letter topic with their bytes and reasons.
    let letters = read_topic(&gateway.dlq_topic, 2).await;
    let mut got: Vec<(Vec<u8>, String, String)> = letters
        .iter()
        .map(|r| {
            let h = |k: &str| r.header(k).unwrap_or_default().to_owned();
            (r.payload.clone(), h("reason"), h("mqtt_topic"))
        })
        .collect();
    got.sort();
    let topic = format!("sensors/{bad}/temp");
    assert_eq!(
        got,
        vec![
            (
                b"not json at all".to_vec(),
                "unknown_format".into(),
                topic.clone()
            ),
            (vec![0xa1, 0x65, 0x76], "invalid_cbor".into(), topic),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_bad_payload_gets_reason_code_0x99() {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};
    let gateway = Gateway::start(None);
    let dev = format!("{}-v5", gateway.id);
    let (client, mut eventloop) =
        Client5::new(Options5::new(&dev, "127.0.0.1", gateway.mqtt_port), 8);
    client
        .publish(
            format!("sensors/{dev}/temp"),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "{oops",
        )
        .await
        .expect("queued");
    let reason = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Event5::Incoming(P5::PubAck(ack)) = eventloop.poll().await.expect("connected") {
                return ack.reason;
            }
        }
    })
    .await
    .expect("PUBACK within 30 s");
    assert_eq!(reason, PubAckReason::PayloadFormatInvalid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_zero_is_accepted() {
    // Valid MQTT (keep alive off) that rumqttd alone refuses without a CONNACK.
    let gateway = Gateway::start(None);
    let db = db().await;
    let dev = format!("{}-ka0", gateway.id);
    let mut device = Device::connect_keep_alive(&gateway, &dev, Duration::ZERO).await;
    device
        .publish_acked(
            &format!("sensors/{dev}/temp"),
            br#"{"value": 3, "ts": 1700000000000}"#,
        )
        .await;
    let rows = wait_rows(&db, &dev, 1).await;
    assert_eq!(
        rows,
        vec![row(&dev, "temp", 1_700_000_000_000, 3.0, None, None)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_runs_as_its_own_process() {
    let mut gateway = Gateway::configure(None);
    gateway.spawn(&["--role", "ingress"], &[]);
    let writer_http = format!("127.0.0.1:{}", common::free_port());
    gateway.spawn(
        &["--role", "writer"],
        &[("SLUICE__HTTP__LISTEN", &writer_http)],
    );
    gateway.wait_ready();
    let db = db().await;
    let dev = format!("{}-split", gateway.id);
    let mut device = Device::connect(&gateway, &dev).await;
    for i in 0..3 {
        let body = format!(r#"{{"value": {i}, "ts": {}}}"#, 1_700_000_000_000i64 + i);
        device
            .publish_acked(&format!("sensors/{dev}/temp"), body.into_bytes())
            .await;
    }
    let rows = wait_rows(&db, &dev, 3).await;
    assert_eq!(
        rows.iter().map(|r| r.value).collect::<Vec<_>>(),
        vec![Some(0.0), Some(1.0), Some(2.0)]
    );
}

#[test]
fn configuration_errors_name_the_key_and_stop_start_up() {
    let gateway = Gateway::configure(Some(Box::new(|c: &mut toml::Table| {
        if let Some(toml::Value::Table(kafka)) = c.get_mut("kafka") {
            kafka.insert("brokerz".into(), "x".into());
        }
    })));
    let run = |envs: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--config")
            .arg(&gateway.config)
            .envs(envs.iter().copied())
            .output()
            .expect("sluice runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("brokerz"), "names the unknown key: {err}");

    let good = Gateway::configure(None);
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(&good.config)
        .env("SLUICE__HTTP__LISTEN", "not-an-address")
        .output()
        .expect("sluice runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("http.listen") || err.contains("listen"),
        "names the key: {err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--config")
        .arg(good.dir.path().join("missing.toml"))
        .output()
        .expect("sluice runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("missing.toml"), "names the file: {err}");
}

/// `--check-config` checks what start-up would, connects to nothing, and says so: 0 and
/// the configuration (secrets masked), or 2 and the key or file at fault.
#[test]
fn check_config_checks_without_starting() {
    let check = |config: &std::path::Path, args: &[&str], envs: &[(&str, &str)]| {
        // Nothing listens there: a check that tried to connect would fail or hang.
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .arg("--check-config")
            .arg("--config")
            .arg(config)
            .args(args)
            .env("KAFKA_BROKERS", "127.0.0.1:1")
            .env(
                "DATABASE_URL",
                "postgres://sluice:secret@127.0.0.1:1/sluice",
            )
            .envs(envs.iter().copied())
            .output()
            .expect("sluice runs");
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let (code, out, err) = check(&root.join("broker.toml"), &[], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("configuration OK"), "{out}");
    assert!(
        out.contains("\"sensors/{device_id}/{metric}\""),
        "the mappings: {out}"
    );
    assert!(
        out.contains("postgres://sluice@127.0.0.1:1/sluice") && !out.contains("secret"),
        "the environment applied, the password masked: {out}"
    );

    let unknown = Gateway::configure(Some(Box::new(|c: &mut toml::Table| {
        if let Some(toml::Value::Table(writer)) = c.get_mut("writer") {
            writer.insert("linger".into(), 5.into());
        }
    })));
    let (code, _, err) = check(&unknown.config, &[], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("linger"), "names the unknown key: {err}");

    let bad_mapping = Gateway::configure(Some(Box::new(|c: &mut toml::Table| {
        let first = c
            .get_mut("mappings")
            .and_then(toml::Value::as_array_mut)
            .and_then(|m| m.first_mut())
            .and_then(toml::Value::as_table_mut)
            .expect("a mapping");
        first.insert("filter".into(), "sensors/#/{device_id}".into());
    })));
    let (code, _, err) = check(&bad_mapping.config, &[], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("mappings[0].filter"),
        "names the mapping: {err}"
    );

    let missing = Gateway::configure(None);
    let path = missing.dir.path().join("no-such-passwd");
    let path = path.to_string_lossy();
    let passwd = [("SLUICE__AUTH__PASSWORD_FILE", &*path)];
    let (code, _, err) = check(&missing.config, &[], &passwd);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("auth.password_file") && err.contains("no-such-passwd"),
        "names the file: {err}"
    );
    // A writer reads no security file.
    let (code, out, err) = check(&missing.config, &["--role", "writer"], &passwd);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("configuration OK (role writer)"), "{out}");

    // The database URL is parsed (not connected to), for the roles with the writer.
    let garbage = [("DATABASE_URL", "garbage")];
    let (code, _, err) = check(&missing.config, &["--role", "writer"], &garbage);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("writer.database_url"),
        "names the setting: {err}"
    );
    let bad_port = [(
        "DATABASE_URL",
        "postgres://sluice:secret@127.0.0.1:x/sluice",
    )];
    let (code, _, err) = check(&missing.config, &["--role", "writer"], &bad_port);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("writer.database_url") && !err.contains("secret"),
        "names the setting, not the password: {err}"
    );
    // An ingress has no use for it.
    let (code, _, err) = check(&root.join("broker.toml"), &["--role", "ingress"], &garbage);
    assert_eq!(code, Some(0), "{err}");
}
