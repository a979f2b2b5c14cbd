//! Device identity on the real stack: passwords from `mosquitto_passwd`, ACLs, TLS client
//! certificates from `scripts/certs.sh`, client-id ownership, rate limits and SIGHUP
//! reloads, driven with mosquitto_pub/sub, Paho Python, rumqttc and raw sockets. Each test
//! checks what the refused client sees, that nothing of it reaches Kafka or the table, and
//! that the others are still served.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::raw::{connect_login, connected, logged_in, packet, publish, string, subscribe, Raw};
use common::{certificates, db, free_port, set, wait_for, wait_rows, Gateway};

/// A password file written by the real `mosquitto_passwd`.
fn password_file(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("passwd");
    let _ = std::fs::remove_file(&path);
    for (user, password) in users {
        let mut c = Command::new("mosquitto_passwd");
        c.arg("-b");
        if !path.exists() {
            c.arg("-c");
        }
        let status = c.arg(&path).args([user, password]).status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "mosquitto_passwd (Debian package mosquitto) writes {}",
            path.display()
        );
    }
    path
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn reading(value: i64, ts: u64) -> String {
    format!(r#"{{"value": {value}, "ts": {ts}}}"#)
}

/// MQTT 5 PUBACK with a reason code: (type, [pkid, reason, ...]).
fn reason_of(ack: &(u8, Vec<u8>)) -> u8 {
    ack.1.get(2).copied().unwrap_or(0)
}

#[tokio::test]
async fn passwords_acls_and_client_ids_on_the_plain_listener() {
    let files = tempfile::tempdir().expect("temp dir");
    // Identities are device ids, unique to the run, as the shared table keeps rows.
    let id = common::unique("pw");
    let (dev_a, dev_b) = (format!("{id}-a"), format!("{id}-b"));
    let passwd = password_file(
        files.path(),
        &[
            (&dev_a, "a-secret"),
            (&dev_b, "b-secret"),
            ("ops", "ops-secret"),
        ],
    );
    let acl = files.path().join("acl");
    std::fs::write(
        &acl,
        "# operators read every device\nuser ops\ntopic read sensors/#\n",
    )
    .expect("acl");
    let (p, a) = (passwd.clone(), acl.clone());
    let gateway = Gateway::start(Some(Box::new(move |c| {
        set(c, &["auth", "password_file"], p.display().to_string());
        set(c, &["auth", "acl_file"], a.display().to_string());
    })));
    let db = db().await;
    let port = gateway.mqtt_port.to_string();
    let pub_as = |args: &[&str]| -> Output {
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-q", "1"])
            .args(args)
            .output()
            .expect("mosquitto_pub runs")
    };
    let ts = 1_700_000_000_000u64;
    let (topic_a, topic_b) = (
        format!("sensors/{dev_a}/temp"),
        format!("sensors/{dev_b}/temp"),
    );

    // With a password file, the loopback listener takes no anonymous clients.
    let anonymous = pub_as(&["-V", "5", "-t", &topic_a, "-m", "1"]);
    assert!(!anonymous.status.success());
    assert!(
        text(&anonymous).contains("Not authorized"),
        "{}",
        text(&anonymous)
    );
    for (user, password) in [(dev_a.as_str(), "wrong"), ("nobody", "a-secret")] {
        let refused = pub_as(&["-u", user, "-P", password, "-t", &topic_a, "-m", "1"]);
        assert!(!refused.status.success());
        assert!(
            text(&refused).contains("bad user name or password"),
            "{user}: {}",
            text(&refused)
        );
    }
    // Publishes pipelined behind a refused CONNECT are discarded with it.
    let mut intruder = Raw::connect(&gateway);
    let mut bytes = connect_login(4, "intruder", &dev_a, "guess");
    bytes.extend(publish(4, &topic_a, 1, &[], reading(666, ts).as_bytes()));
    intruder.send(&bytes);
    assert_eq!(
        intruder.packet(),
        (0x20, vec![0, 4]),
        "CONNACK: bad user name or password"
    );
    assert!(intruder.closed().is_empty(), "nothing after the refusal");

    // An operator account reads every device; a device may not read them all.
    let mut ops = logged_in(&gateway, 5, "ops-console", "ops", "ops-secret");
    ops.send(&subscribe(5, 7, "sensors/#", 0));
    assert_eq!(ops.packet(), (0x90, vec![0, 7, 0, 0]), "SUBACK granted");
    let mut a = logged_in(&gateway, 5, &format!("{id}-a5"), &dev_a, "a-secret");
    a.send(&subscribe(5, 8, "#", 0));
    assert_eq!(
        a.packet(),
        (0x90, vec![0, 8, 0, 0x87]),
        "SUBACK: not authorised"
    );
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            &dev_b,
            "-P",
            "b-secret",
        ])
        .args(["-t", "#", "-W", "10"])
        .output()
        .expect("mosquitto_sub runs");
    assert!(
        text(&sub).contains("denied"),
        "mosquitto_sub is told: {}",
        text(&sub)
    );

    // A device publishes on its own topics, and nowhere else.
    let own = pub_as(&[
        "-u",
        &dev_a,
        "-P",
        "a-secret",
        "-t",
        &topic_a,
        "-m",
        &reading(1, ts),
    ]);
    assert!(own.status.success(), "{}", text(&own));
    let (kind, body) = ops.packet();
    assert_eq!(kind, 0x30, "the operator sees dev-a's reading");
    assert!(String::from_utf8_lossy(&body).contains(&topic_a));
    a.send(&publish(5, &topic_b, 9, &[], reading(2, ts + 1).as_bytes()));
    let denied = a.packet();
    assert_eq!(
        (denied.0, reason_of(&denied)),
        (0x40, 0x87),
        "MQTT 5: PUBACK 0x87"
    );
    let mut a4 = logged_in(&gateway, 4, &format!("{id}-a4"), &dev_a, "a-secret");
    a4.send(&publish(
        4,
        &topic_b,
        10,
        &[],
        reading(3, ts + 2).as_bytes(),
    ));
    assert_eq!(
        a4.packet(),
        (0x40, vec![0, 10]),
        "3.1.1: acknowledged and dropped"
    );
    // dev-b's own reading is the marker: once it is stored, anything before it would be.
    let own_b = pub_as(&[
        "-u",
        &dev_b,
        "-P",
        "b-secret",
        "-t",
        &topic_b,
        "-m",
        &reading(4, ts + 3),
    ]);
    assert!(own_b.status.success(), "{}", text(&own_b));
    let rows_b = wait_rows(&db, &dev_b, 1).await;
    let rows_a = wait_rows(&db, &dev_a, 1).await;
    let values = |rows: &[common::Row]| rows.iter().map(|r| r.value).collect::<Vec<_>>();
    assert_eq!(values(&rows_b), vec![Some(4.0)], "only dev-b's own reading");
    assert_eq!(
        values(&rows_a),
        vec![Some(1.0)],
        "nothing of the refused CONNECT"
    );
    assert!(
        ops.next_packet(Duration::from_millis(500))
            .is_some_and(|(k, b)| k == 0x30 && String::from_utf8_lossy(&b).contains("value\": 4")),
        "only dev-b's own reading reached subscribers"
    );
    assert_eq!(
        gateway.metric("sluice_denied_total{action=\"publish\"}"),
        2.0
    );
    assert_eq!(
        gateway.metric("sluice_denied_total{action=\"subscribe\"}"),
        2.0
    );
    assert!(gateway.metric("sluice_connections_refused_total{reason=\"bad_credentials\"}") >= 3.0);
    let logs = gateway.logs();
    assert!(
        logs.contains("CONNECT refused") && !logs.contains("a-secret") && !logs.contains("guess")
    );

    // A client id belongs to the identity whose session holds it.
    let mut held = Raw::connect(&gateway);
    let shared = format!("{id}-shared");
    let mut persistent = connect_login(4, &shared, &dev_a, "a-secret");
    persistent[9] &= !0x02; // clean session off: the session outlives the connection
    held.send(&persistent);
    assert_eq!(held.packet().1[1], 0, "dev-a holds the client id");
    drop(held);
    let mut thief = Raw::connect(&gateway);
    thief.send(&connect_login(5, &shared, &dev_b, "b-secret"));
    assert_eq!(thief.packet(), (0x20, vec![0, 0x87, 0]), "CONNACK 0x87");
    let mut enhanced = Raw::connect(&gateway);
    let mut body = string(b"MQTT");
    body.extend([5, 0x02, 0, 60]);
    let method = [&[0x15][..], &string(b"SCRAM-SHA-1")].concat();
    body.push(method.len() as u8);
    body.extend(method);
    body.extend(string(b"enhanced"));
    enhanced.send(&packet(0x10, &body));
    assert_eq!(enhanced.packet(), (0x20, vec![0, 0x8C, 0]), "CONNACK 0x8C");
    // A will is a publish: dev-a may not leave one on dev-b's topic.
    let mut will = Raw::connect(&gateway);
    let mut body = string(b"MQTT");
    body.extend([4, 0x02 | 0x04 | 0x80 | 0x40, 0, 60]);
    body.extend(string(format!("{id}-will").as_bytes()));
    body.extend(string(topic_b.as_bytes()));
    body.extend(string(reading(5, ts + 4).as_bytes()));
    body.extend(string(dev_a.as_bytes()));
    body.extend(string(b"a-secret"));
    will.send(&packet(0x10, &body));
    assert_eq!(will.packet(), (0x20, vec![0, 5]), "CONNACK: not authorised");
}

#[tokio::test]
async fn tls_with_client_certificates() {
    let files = tempfile::tempdir().expect("temp dir");
    let id = common::unique("tls");
    let (dev_a, dev_b) = (format!("{id}-a"), format!("{id}-b"));
    let certs = certificates(files.path(), &[&dev_a, &dev_b]);
    let (topic_a, topic_b) = (
        format!("sensors/{dev_a}/temp"),
        format!("sensors/{dev_b}/temp"),
    );
    let tls_port = free_port();
    let c2 = certs.clone();
    let gateway = Gateway::start(Some(Box::new(move |c| {
        let file = |name: &str| toml::Value::from(c2.join(name).display().to_string());
        let tls = toml::Table::from_iter([
            ("listen".into(), format!("127.0.0.1:{tls_port}").into()),
            ("certfile".into(), file("server.pem")),
            ("keyfile".into(), file("server.key")),
            ("cafile".into(), file("ca.pem")),
            ("crlfile".into(), file("crl.pem")),
            ("require_certificate".into(), true.into()),
        ]);
        set(c, &["ingress", "tls"], tls);
    })));
    let db = db().await;
    let ts = 1_700_000_000_000u64;
    let file = |name: &str| certs.join(name).display().to_string();
    let pub_with = |cert: Option<&str>, topic: &str, body: &str| -> Output {
        let mut c = Command::new("mosquitto_pub");
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &tls_port.to_string(),
            "-q",
            "1",
            "-V",
            "5",
        ])
        .args(["--cafile", &file("ca.pem"), "-t", topic, "-m", body]);
        if let Some(name) = cert {
            c.args([
                "--cert",
                &file(&format!("{name}.pem")),
                "--key",
                &file(&format!("{name}.key")),
            ]);
        }
        c.output().expect("mosquitto_pub runs")
    };
    let ok = pub_with(Some(&dev_a), &topic_a, &reading(1, ts));
    assert!(ok.status.success(), "{}", text(&ok));
    for refused in [None, Some("intruder"), Some("expired"), Some("revoked")] {
        let out = pub_with(refused, &topic_a, &reading(666, ts + 1));
        assert!(
            !out.status.success(),
            "{refused:?} was served: {}",
            text(&out)
        );
    }
    assert!(gateway.metric("sluice_tls_handshake_failures_total") >= 3.0);

    // Paho Python, as a fleet's scripts use it.
    let script = format!(
        r#"
import sys, paho.mqtt.client as mqtt
c = mqtt.Client(client_id="{dev_b}-paho")
c.tls_set(ca_certs="{ca}", certfile="{cert}", keyfile="{key}")
c.connect("127.0.0.1", {port})
c.loop_start()
info = c.publish("{topic_b}", '{body}', qos=1)
info.wait_for_publish(10)
sys.exit(0 if info.is_published() else 1)
"#,
        ca = file("ca.pem"),
        cert = file(&format!("{dev_b}.pem")),
        key = file(&format!("{dev_b}.key")),
        port = tls_port,
        body = reading(2, ts + 2),
    );
    let paho = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert!(paho.status.success(), "paho: {}", text(&paho));

    // rumqttc over TLS, MQTT 5: its own topic succeeds, another device's gets 0x87.
    let reasons = rumqttc_v5_tls(&certs, &dev_a, &[&topic_a, &topic_b], tls_port, ts + 3).await;
    assert_eq!(
        reasons,
        ["Success", "NotAuthorized"],
        "own topic, then dev-b's"
    );
    let values = |rows: Vec<common::Row>| rows.into_iter().map(|r| r.value).collect::<Vec<_>>();
    let rows_a = values(wait_rows(&db, &dev_a, 2).await);
    assert_eq!(
        rows_a,
        vec![Some(1.0), Some(4.0)],
        "mosquitto_pub's, rumqttc's own"
    );
    let rows_b = values(wait_rows(&db, &dev_b, 1).await);
    assert_eq!(
        rows_b,
        vec![Some(2.0)],
        "paho's; dev-a never wrote as dev-b"
    );
    let logs = gateway.logs();
    assert!(
        logs.contains("TLS handshake"),
        "handshake failures are logged"
    );
}

/// Publishes as `device` over TLS with rumqttc (MQTT 5), one reading to each topic; the
/// PUBACK reasons, in order.
async fn rumqttc_v5_tls(
    certs: &Path,
    device: &str,
    topics: &[&str],
    port: u16,
    ts: u64,
) -> Vec<String> {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{mqttbytes::QoS, AsyncClient, Event, MqttOptions};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(certs.join("ca.pem")).expect("ca.pem") {
        roots.add(ca.expect("a certificate")).expect("trusted");
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(certs.join(format!("{device}.pem")))
        .expect("device certificate")
        .map(|c| c.expect("a certificate"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(certs.join(format!("{device}.key"))).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
    let mut options = MqttOptions::new(format!("{device}-rumqttc"), "127.0.0.1", port);
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
    ));
    let (client, mut events) = AsyncClient::new(options, 10);
    for (n, topic) in topics.iter().enumerate() {
        client
            .publish(*topic, QoS::AtLeastOnce, false, reading(4, ts + n as u64))
            .await
            .expect("queued");
    }
    let mut reasons = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while reasons.len() < topics.len() && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(20), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(ack)))) => {
                reasons.push(format!("{:?}", ack.reason))
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("rumqttc over TLS: {e}"),
            Err(_) => break,
        }
    }
    reasons
}

#[tokio::test]
async fn a_reload_revokes_a_device_and_a_bad_file_keeps_the_rules() {
    let files = tempfile::tempdir().expect("temp dir");
    let passwd = password_file(
        files.path(),
        &[("dev-a", "a-secret"), ("dev-b", "b-secret"), ("ops", "o")],
    );
    let acl = files.path().join("acl");
    std::fs::write(&acl, "user ops\ntopic read sensors/#\n").expect("acl");
    let (p, l) = (passwd.clone(), acl.clone());
    let gateway = Gateway::start(Some(Box::new(move |c| {
        set(c, &["auth", "password_file"], p.display().to_string());
        set(c, &["auth", "acl_file"], l.display().to_string());
    })));
    // An operator with a persistent session (3.1.1, clean session off) reading everything.
    let ops_connect = {
        let mut bytes = connect_login(4, "reload-ops", "ops", "o");
        bytes[9] &= !0x02;
        bytes
    };
    let mut ops = Raw::connect(&gateway);
    ops.send(&ops_connect);
    assert_eq!(ops.packet().1[1], 0, "ops logged in");
    ops.send(&subscribe(4, 1, "sensors/#", 0));
    assert_eq!(ops.packet(), (0x90, vec![0, 1, 0]), "SUBACK granted");
    let mut a = logged_in(&gateway, 5, "reload-a", "dev-a", "a-secret");
    a.send(&subscribe(5, 1, "sensors/dev-a/+", 0));
    assert_eq!(a.packet(), (0x90, vec![0, 1, 0, 0]), "its own topics");
    let mut b = logged_in(&gateway, 4, "reload-b", "dev-b", "b-secret");

    // dev-a's entry is removed as operators do it: a SIGHUP disconnects it, dev-b stays.
    let removed = Command::new("mosquitto_passwd")
        .arg("-D")
        .arg(&passwd)
        .arg("dev-a")
        .status();
    assert!(removed.is_ok_and(|s| s.success()), "mosquitto_passwd -D");
    gateway.signal(0, "HUP");
    assert_eq!(a.packet(), (0xE0, vec![0x87]), "DISCONNECT 0x87");
    assert!(a.closed().is_empty());
    b.send(&publish(
        4,
        "sensors/dev-b/temp",
        1,
        &[],
        reading(1, 1_700_000_000_000).as_bytes(),
    ));
    assert_eq!(b.packet(), (0x40, vec![0, 1]), "dev-b still served");
    assert_eq!(ops.packet().0, 0x30, "ops reads dev-b's reading");
    let mut again = Raw::connect(&gateway);
    again.send(&connect_login(5, "reload-a2", "dev-a", "a-secret"));
    assert_eq!(
        again.packet(),
        (0x20, vec![0, 0x86, 0]),
        "dev-a is refused from now on"
    );

    // ops may no longer read sensors/#: disconnected (3.1.1 has no DISCONNECT to send), and
    // back on its persistent session it finds the subscription gone.
    std::fs::write(&acl, "user ops\ntopic read ops/#\n").expect("acl");
    gateway.signal(0, "HUP");
    assert!(ops.closed().is_empty(), "ops disconnected");
    let mut ops = Raw::connect(&gateway);
    ops.send(&ops_connect);
    assert_eq!(
        ops.packet(),
        (0x20, vec![0, 0]),
        "no session present: it was ended"
    );
    b.send(&publish(
        4,
        "sensors/dev-b/temp",
        3,
        &[],
        reading(3, 1_700_000_000_002).as_bytes(),
    ));
    assert_eq!(b.packet(), (0x40, vec![0, 3]), "dev-b still served");
    assert_eq!(
        ops.next_packet(Duration::from_secs(1)),
        None,
        "nothing reaches ops"
    );

    // A file that does not parse changes nothing, and says so.
    std::fs::write(&passwd, "dev-b has no colon\n").expect("garble");
    gateway.signal(0, "HUP");
    wait_for(Duration::from_secs(10), "the refused reload", || {
        gateway.metric("sluice_security_files_ok") == 0.0
    });
    assert!(gateway.logs().contains("reload refused"));
    assert!(gateway.logs().contains("line 1"), "the log says where");
    b.send(&publish(
        4,
        "sensors/dev-b/temp",
        2,
        &[],
        reading(2, 1_700_000_000_001).as_bytes(),
    ));
    assert_eq!(b.packet(), (0x40, vec![0, 2]), "dev-b still served");
    let _b2 = logged_in(&gateway, 4, "reload-b2", "dev-b", "b-secret");
}

#[tokio::test]
async fn a_device_over_its_rate_is_slowed_and_its_neighbour_is_not() {
    let gateway = Gateway::start(Some(Box::new(|c| {
        set(c, &["ingress", "max_messages_per_second"], 20);
        set(c, &["ingress", "burst_messages"], 10);
        set(c, &["ingress", "max_connects_per_second"], 5);
    })));
    let id = gateway.id.clone();
    let flood_dev = format!("{id}-flood");
    let mut flood = connected(&gateway, 4, &flood_dev, 60);
    let mut neighbour = connected(&gateway, 4, &format!("{id}-calm"), 60);
    // 100 publishes at once: 10 pass at once, the rest at 20 a second, 4.5 s at least.
    let started = Instant::now();
    let burst: Vec<u8> = (1..=100u16)
        .flat_map(|n| {
            let topic = format!("sensors/{flood_dev}/temp");
            publish(
                4,
                &topic,
                n,
                &[],
                reading(n.into(), 1_700_000_000_000 + u64::from(n)).as_bytes(),
            )
        })
        .collect();
    flood.send(&burst);
    let mut first = flood.packet();
    assert_eq!(first.0, 0x40);
    // Meanwhile its neighbour is served at once, publish after publish.
    for n in 1..=10u16 {
        let topic = format!("sensors/{id}-calm/temp");
        neighbour.send(&publish(
            4,
            &topic,
            n,
            &[],
            reading(n.into(), 1_700_000_000_000 + u64::from(n)).as_bytes(),
        ));
        assert_eq!(
            neighbour.packet(),
            (0x40, n.to_be_bytes().to_vec()),
            "neighbour's PUBACK"
        );
    }
    let neighbour_done = started.elapsed();
    let mut acked = 1;
    while acked < 100 {
        first = flood.packet();
        assert_eq!(first.0, 0x40);
        acked += 1;
    }
    let flood_done = started.elapsed();
    assert!(
        flood_done >= Duration::from_secs(4),
        "100 publishes at 20/s with a burst of 10 took {flood_done:?}"
    );
    assert!(
        neighbour_done < flood_done / 2,
        "neighbour {neighbour_done:?}, flood {flood_done:?}"
    );
    assert!(gateway.metric("sluice_throttled_total") > 0.0);
    let db = db().await;
    assert_eq!(
        wait_rows(&db, &flood_dev, 100).await.len(),
        100,
        "every publish stored once"
    );

    // New connections past 5 a second get CONNACK 0x9F.
    let mut codes = Vec::new();
    for n in 0..12 {
        let mut raw = Raw::connect(&gateway);
        raw.send(&common::raw::connect(
            5,
            &format!("{id}-c{n}"),
            true,
            60,
            None,
        ));
        codes.push(raw.packet().1[1]);
    }
    assert!(codes.contains(&0x9F) && codes.contains(&0), "{codes:?}");
}
