//! No client can hurt the others: each test plays one misbehaving client against the real
//! stack (raw sockets where it must break the rules), checks what that client gets, and
//! that a well-behaved device on the same gateway keeps getting PUBACKs and rows meanwhile.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::raw::{
    connect, connected, packet, publish, publish_at, pubrel, string, subscribe, Raw, DISCONNECT,
};
use common::{add_receipt_mapping, db, read_topic, rows, set, wait_for, wait_rows, Gateway, Tansu};

const PINGREQ: [u8; 2] = [0xC0, 0];
const PINGRESP: (u8, Vec<u8>) = (0xD0, Vec::new());

/// A well-behaved MQTT 3.1.1 device: QoS 1 readings, each with its own timestamp.
struct Bystander {
    raw: Raw,
    dev: String,
    sent: u16,
}

impl Bystander {
    fn connect(gateway: &Gateway) -> Bystander {
        let dev = format!("{}-bystander", gateway.id);
        Bystander {
            raw: connected(gateway, 4, &dev, 60),
            dev,
            sent: 0,
        }
    }

    /// Publishes `n` readings and gets a PUBACK for each (within 10 s each).
    fn is_served(&mut self, n: u16) {
        for _ in 0..n {
            self.sent += 1;
            let body = format!(
                r#"{{"value": {}, "ts": {}}}"#,
                self.sent,
                1_700_000_000_000u64 + u64::from(self.sent)
            );
            let topic = format!("sensors/{}/temp", self.dev);
            self.raw
                .send(&publish(4, &topic, self.sent, &[], body.as_bytes()));
            let [hi, lo] = self.sent.to_be_bytes();
            assert_eq!(
                self.raw.packet(),
                (0x40, vec![hi, lo]),
                "bystander's PUBACK"
            );
        }
    }

    /// Every reading it was acknowledged for is a row, once.
    async fn rows_all_landed(&self, db: &tokio_postgres::Client) {
        let rows = wait_rows(db, &self.dev, self.sent.into()).await;
        assert_eq!(rows.len(), usize::from(self.sent), "{rows:?}");
    }
}

/// A raw 3.1.1 connection whose receive buffer is a few KiB.
async fn tiny_reader(gateway: &Gateway, client_id: &str) -> Raw {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket
        .connect(gateway.mqtt_addr().parse().expect("address"))
        .await
        .expect("device port");
    let stream = stream.into_std().expect("std socket");
    stream.set_nonblocking(false).expect("blocking");
    let mut raw = Raw(stream);
    raw.send(&connect(4, client_id, true, 60, None));
    assert_eq!(raw.read_exact(4), [0x20, 2, 0, 0], "CONNACK");
    raw
}

fn mqtt5_connect(client_id: &str, clean: bool, expiry: u32) -> Vec<u8> {
    let mut body = string(b"MQTT");
    body.extend_from_slice(&[5, if clean { 0x02 } else { 0 }, 0, 60]);
    body.push(5);
    body.push(0x11);
    body.extend_from_slice(&expiry.to_be_bytes());
    body.extend(string(client_id.as_bytes()));
    packet(0x10, &body)
}

/// A device that subscribes to its own topic, publishes large readings and never
/// reads fills its buffers; its budget shares come back when Kafka answers and the
/// process-wide buffer limit holds back only those holding much, so the others are still
/// read, and it is disconnected once it has read nothing for the write timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_does_not_read_is_disconnected_and_holds_up_no_one() {
    let gateway = Gateway::start(Some(Box::new(|c: &mut toml::Table| {
        set(c, &["ingress", "max_packet_size"], 65_536);
        set(c, &["ingress", "max_buffered_bytes_per_connection"], 65_536);
        // Three stuck connections' echoes fill this: they stop being read, not the others.
        set(c, &["ingress", "max_buffered_bytes_total"], 196_608);
        set(c, &["ingress", "write_timeout_ms"], 6_000);
        // Three stuck connections' completed records would fill this if they held it.
        set(c, &["ingress", "max_inflight_bytes_total"], 1_048_576);
        set(
            c,
            &["ingress", "max_inflight_bytes_per_connection"],
            524_288,
        );
    })));
    let db = db().await;
    let mut bystander = Bystander::connect(&gateway);
    let pad = "x".repeat(60_000);
    let (mut writers, mut deaf_ones) = (Vec::new(), Vec::new());
    for n in 0..3 {
        let id = format!("{}-deaf{n}", gateway.id);
        let mut deaf = tiny_reader(&gateway, &id).await;
        let topic = format!("sensors/{id}/temp");
        deaf.send(&subscribe(4, 1, &topic, 0));
        assert_eq!(deaf.packet(), (0x90, vec![0, 1, 0]), "SUBACK");
        let body = format!(r#"{{"value": 1, "ts": 1700000000000, "pad": "{pad}"}}"#);
        let mut socket = deaf.0.try_clone().expect("clone");
        writers.push(std::thread::spawn(move || {
            // Blocks once Sluice stops reading it; ends when it is disconnected.
            for pkid in (1..=u16::MAX).cycle() {
                if socket
                    .write_all(&publish(4, &topic, pkid, &[], body.as_bytes()))
                    .is_err()
                {
                    break;
                }
            }
        }));
        deaf_ones.push(deaf); // held open, never read
    }
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    bystander.is_served(20);
    assert!(
        gateway.metric(r#"sluice_disconnects_total{reason="not_reading"}"#) == 0.0,
        "the bystander was served while the deaf devices were still connected"
    );
    wait_for(
        Duration::from_secs(30),
        "the deaf devices to be disconnected",
        || gateway.metric(r#"sluice_disconnects_total{reason="not_reading"}"#) == 3.0,
    );
    assert!(
        start.elapsed() >= Duration::from_secs(6),
        "not before the write timeout"
    );
    for w in writers {
        w.join().expect("writer thread");
    }
    bystander.is_served(5);
    bystander.rows_all_landed(&db).await;
}

/// What a publish expands to is bounded, and a record Kafka will never take is
/// dead-lettered and acknowledged, so the device moves on instead of resending forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amplifying_packs_and_records_kafka_refuses_are_dead_lettered_and_acknowledged() {
    let gateway = Gateway::start(Some(Box::new(|c: &mut toml::Table| {
        // Kafka takes dead letters of any publish (the packet size, plus 16 KiB, plus 64
        // KiB for a resolved topic alias) and no more; records can be larger.
        set(c, &["ingress", "max_packet_size"], 65_536);
        set(c, &["ingress", "max_buffered_bytes_per_connection"], 65_536);
        set(c, &["kafka", "properties", "message.max.bytes"], "150000");
    })));
    let db = db().await;
    let mut bystander = Bystander::connect(&gateway);
    let dev = format!("{}-amp", gateway.id);
    let topic = format!("devices/{dev}/senml");
    // 500 records sharing a 55,000-byte base unit: 60 KB sent, ~28 MB of readings.
    let records: Vec<String> = (0..500)
        .map(|i| format!(r#"{{"n":"m{i}","v":1}}"#))
        .collect();
    let amplifying = format!(
        r#"[{{"bu":"{}","n":"m","v":1}},{}]"#,
        "x".repeat(55_000),
        records.join(",")
    );
    // 1,000 readings named by a 200-byte base name: 40 KB sent, a ~260 KB record.
    let records: Vec<String> = (1..1000)
        .map(|i| format!(r#"{{"n":"m{i}","v":{i},"t":1700000000}}"#))
        .collect();
    let oversized = format!(
        r#"[{{"bn":"{}","n":"m","v":1,"t":1700000000}},{}]"#,
        "b".repeat(200),
        records.join(",")
    );

    let mut device = connected(&gateway, 5, &dev, 60);
    let started = Instant::now();
    device.send(&publish(5, &topic, 1, &[], amplifying.as_bytes()));
    let (kind, ack) = device.packet();
    assert_eq!((kind, &ack[..3]), (0x40, &[0, 1, 0x99][..]), "{ack:?}");
    assert!(String::from_utf8_lossy(&ack).contains("record"), "{ack:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    device.send(&publish(5, &topic, 2, &[], oversized.as_bytes()));
    let (kind, ack) = device.packet();
    assert_eq!((kind, &ack[..3]), (0x40, &[0, 2, 0x83][..]), "{ack:?}");
    assert!(String::from_utf8_lossy(&ack).contains("kafka"), "{ack:?}");
    // 3.1.1 cannot be told; it gets its PUBACK and its connection stays.
    let mut old = connected(&gateway, 4, &format!("{dev}-311"), 60);
    old.send(&publish(4, &topic, 7, &[], oversized.as_bytes()));
    assert_eq!(old.packet(), (0x40, vec![0, 7]));
    old.send(&PINGREQ);
    assert_eq!(old.packet(), PINGRESP);

    // The device goes on.
    let fine = format!("sensors/{dev}/temp");
    device.send(&publish(
        5,
        &fine,
        3,
        &[],
        br#"{"value": 3, "ts": 1700000000000}"#,
    ));
    assert_eq!(device.packet(), (0x40, vec![0, 3]));
    assert_eq!(wait_rows(&db, &dev, 1).await[0].value, Some(3.0));

    let letters = read_topic(&gateway.dlq_topic, 3).await;
    let mut reasons: Vec<&str> = letters.iter().filter_map(|l| l.header("reason")).collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        ["kafka_refused", "kafka_refused", "record_too_large"]
    );
    bystander.is_served(3);
    bystander.rows_all_landed(&db).await;
}

/// Sluice owns the QoS 2 exchange per packet id: a PUBREL resent after a lost
/// PUBCOMP gets PUBCOMP again, an unknown one MQTT 5's 0x92; a refused publish leaves
/// nothing behind for a later PUBREL; and the same packet id before its PUBREL is the same
/// message across a persistent session's reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_is_released_per_packet_id_and_exactly_once_across_reconnects() {
    let gateway = Gateway::start(Some(Box::new(|c: &mut toml::Table| {
        add_receipt_mapping(c);
        // Kafka answers late, so a PUBREC on receipt is released before it has.
        set(c, &["kafka", "properties", "linger.ms"], "500");
    })));
    let db = db().await;
    let dev = format!("{}-q2", gateway.id);
    let topic = format!("sensors/{dev}/temp");
    let persistent = |gateway: &Gateway, present: u8| {
        let mut raw = Raw::connect(gateway);
        raw.send(&connect(4, &dev, false, 60, None));
        assert_eq!(raw.packet(), (0x20, vec![present, 0]), "CONNACK");
        raw
    };
    let mut sub = Raw::connect(&gateway);
    sub.send(&connect(4, &format!("{dev}-sub"), true, 60, None));
    assert_eq!(sub.packet(), (0x20, vec![0, 0]));
    sub.send(&subscribe(4, 1, &format!("sensors/{dev}/#"), 2));
    assert_eq!(sub.packet(), (0x90, vec![0, 1, 2]));

    // (a) PUBCOMP lost: the PUBREL resent after reconnecting is answered, not punished.
    let mut device = persistent(&gateway, 0);
    device.send(&publish_at(4, 2, false, &topic, 5, &[], br#"{"value": 1}"#));
    assert_eq!(device.packet(), (0x50, vec![0, 5]), "PUBREC");
    device.send(&pubrel(5));
    assert_eq!(device.packet(), (0x70, vec![0, 5]), "PUBCOMP");
    drop(device);
    let mut device = persistent(&gateway, 1);
    device.send(&pubrel(5));
    assert_eq!(device.packet(), (0x70, vec![0, 5]), "PUBCOMP again");
    device.send(&PINGREQ);
    assert_eq!(device.packet(), PINGRESP, "still connected");

    // (b) No PUBREL before the connection dropped: the resend is the same message.
    device.send(&publish_at(4, 2, false, &topic, 6, &[], br#"{"value": 2}"#));
    assert_eq!(device.packet(), (0x50, vec![0, 6]));
    drop(device);
    let mut device = persistent(&gateway, 1);
    device.send(&publish_at(4, 2, true, &topic, 6, &[], br#"{"value": 2}"#));
    assert_eq!(device.packet(), (0x50, vec![0, 6]), "PUBREC for the resend");
    device.send(&pubrel(6));
    assert_eq!(device.packet(), (0x70, vec![0, 6]));
    let values: Vec<_> = wait_rows(&db, &dev, 2)
        .await
        .iter()
        .map(|r| r.value)
        .collect();
    assert_eq!(
        values,
        [Some(1.0), Some(2.0)],
        "each reading once, though timeless"
    );

    // (c) MQTT 5: a refused QoS 2 publish ends its exchange and frees its packet id; the
    // next one with that id is a new message; an unknown packet id gets 0x92.
    let mut v5 = connected(&gateway, 5, &format!("{dev}-5"), 60);
    v5.send(&publish_at(5, 2, false, &topic, 1, &[], b"not json"));
    let (kind, rec) = v5.packet();
    assert_eq!((kind, &rec[..3]), (0x50, &[0, 1, 0x99][..]), "{rec:?}");
    v5.send(&publish_at(5, 2, false, &topic, 1, &[], br#"{"value": 3}"#));
    assert_eq!(v5.packet(), (0x50, vec![0, 1]), "the id is free again");
    v5.send(&pubrel(1));
    assert_eq!(v5.packet(), (0x70, vec![0, 1]));
    v5.send(&pubrel(77));
    assert_eq!(v5.packet(), (0x70, vec![0, 77, 0x92]));

    // (d) Acknowledged on receipt: released before Kafka has answered, and the id reused.
    let receipt_dev = format!("{}-receipt", gateway.id);
    let fast = format!("fast/{receipt_dev}/temp");
    for value in [1, 2] {
        let body = format!(r#"{{"value": {value}}}"#);
        v5.send(&publish_at(5, 2, false, &fast, 9, &[], body.as_bytes()));
        assert_eq!(v5.packet(), (0x50, vec![0, 9]));
        v5.send(&pubrel(9));
        assert_eq!(v5.packet(), (0x70, vec![0, 9]), "PUBCOMP, not 0x92");
    }
    assert_eq!(wait_rows(&db, &receipt_dev, 2).await.len(), 2);

    // (e) QoS 2 publishes count until released: a client that never sends PUBREL is
    // closed past the receive maximum (100) even though each got its PUBREC.
    let hoard_dev = format!("{}-hoard", gateway.id);
    let mut hoarder = connected(&gateway, 5, &hoard_dev, 60);
    let hoard = format!("sensors/{hoard_dev}/temp");
    for batch in 0..10u16 {
        let mut burst = Vec::new();
        for n in 1..=10 {
            let body = format!(
                r#"{{"value": {n}, "ts": {}}}"#,
                1_700_000_000_000u64 + u64::from(batch * 10 + n)
            );
            burst.extend(publish_at(
                5,
                2,
                false,
                &hoard,
                batch * 10 + n,
                &[],
                body.as_bytes(),
            ));
        }
        hoarder.send(&burst);
        for _ in 0..10 {
            assert_eq!(hoarder.packet().0, 0x50, "PUBREC");
        }
    }
    hoarder.send(&publish_at(
        5,
        2,
        false,
        &hoard,
        101,
        &[],
        br#"{"value": 1}"#,
    ));
    assert_eq!(hoarder.closed(), [DISCONNECT, 1, 0x93]);

    // The subscriber got each accepted message once, and never the refused one.
    let mut got = Vec::new();
    while let Some((kind, body)) = sub.next_packet(Duration::from_secs(2)) {
        if kind & 0xF0 == 0x30 {
            let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let pkid = [body[2 + topic_len], body[3 + topic_len]];
            got.push(String::from_utf8_lossy(&body[4 + topic_len..]).into_owned());
            match kind & 0x06 {
                2 => sub.send(&[0x40, 2, pkid[0], pkid[1]]),
                4 => sub.send(&[0x50, 2, pkid[0], pkid[1]]),
                _ => {}
            }
        } else if kind == 0x62 {
            sub.send(&[0x70, 2, body[0], body[1]]);
        }
    }
    assert_eq!(
        got,
        [r#"{"value": 1}"#, r#"{"value": 2}"#, r#"{"value": 3}"#]
    );
    assert_eq!(rows(&db, &dev).await.len(), 3);
}

/// A QoS 1 retransmission of a publish still waiting for Kafka gets no PUBACK of
/// its own, so a stale one can never acknowledge the next publish with that packet id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmitted_packet_id_is_acknowledged_once() {
    let gateway = Gateway::start(None);
    let db = db().await;
    let dev = format!("{}-dup", gateway.id);
    let topic = format!("sensors/{dev}/temp");
    let mut device = connected(&gateway, 4, &dev, 60);
    let first = br#"{"value": 1, "ts": 1700000000000}"#;
    let mut both = publish_at(4, 1, false, &topic, 1, &[], first);
    both.extend(publish_at(4, 1, true, &topic, 1, &[], first));
    device.send(&both);
    assert_eq!(device.packet(), (0x40, vec![0, 1]));
    assert_eq!(
        device.next_packet(Duration::from_secs(2)),
        None,
        "one PUBACK"
    );
    device.send(&publish(
        4,
        &topic,
        1,
        &[],
        br#"{"value": 2, "ts": 1700000000001}"#,
    ));
    assert_eq!(device.packet(), (0x40, vec![0, 1]));
    assert_eq!(wait_rows(&db, &dev, 2).await.len(), 2);
    assert_eq!(gateway.metric("sluice_retransmissions_total"), 1.0);
}

/// A reading without a timestamp takes its receipt time; its QoS 1 retransmission
/// after a reconnect takes the same time, so it is one row. A new publish is a new row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_without_a_timestamp_resent_is_written_once() {
    let gateway = Gateway::start(None);
    let db = db().await;
    let dev = format!("{}-nots", gateway.id);
    let topic = format!("sensors/{dev}/temp");
    let body = br#"{"value": 5}"#;
    let mut device = connected(&gateway, 4, &dev, 60);
    device.send(&publish(4, &topic, 3, &[], body));
    wait_rows(&db, &dev, 1).await;
    // Its PUBACK is never read: the device reconnects and resends.
    drop(device);
    let mut device = connected(&gateway, 4, &dev, 60);
    device.send(&publish_at(4, 1, true, &topic, 3, &[], body));
    assert_eq!(device.packet(), (0x40, vec![0, 3]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rows(&db, &dev).await.len(), 1, "the resend is the same row");
    device.send(&publish(4, &topic, 3, &[], body));
    assert_eq!(device.packet(), (0x40, vec![0, 3]));
    assert_eq!(
        wait_rows(&db, &dev, 2).await.len(),
        2,
        "a new publish is new"
    );
}

/// A stale expiry never ends a newer session, and ending a session never kicks a
/// live connection of the same client id.
#[test]
fn session_expiry_ends_only_the_session_it_was_set_for() {
    let gateway = Gateway::start(None);
    let id = format!("{}-exp", gateway.id);
    let topic = format!("queue/{id}");
    let session = |clean: bool, expiry: u32, present: u8| {
        let mut raw = Raw::connect(&gateway);
        raw.send(&mqtt5_connect(&id, clean, expiry));
        let (kind, body) = raw.packet();
        assert_eq!((kind, &body[..2]), (0x20, &[present, 0][..]), "{body:?}");
        raw
    };
    // Expiry 2 s; then a clean connection (forgotten at once); then a session of 60 s.
    session(false, 2, 0).send(&[DISCONNECT, 0]);
    session(true, 0, 0).send(&[DISCONNECT, 0]);
    let mut kept = session(false, 60, 0);
    kept.send(&subscribe(5, 1, &topic, 1));
    assert_eq!(kept.packet().0, 0x90);
    kept.send(&[DISCONNECT, 0]);
    std::thread::sleep(Duration::from_secs(3));
    let mut publisher = connected(&gateway, 5, &format!("{id}-pub"), 60);
    publisher.send(&publish(5, &topic, 1, &[], b"queued"));
    assert_eq!(publisher.packet(), (0x40, vec![0, 1]));
    let mut back = session(false, 60, 1);
    let (kind, body) = back.packet();
    assert_eq!(kind & 0xF0, 0x30, "the queued message");
    assert!(body.ends_with(b"queued"));

    // An MQTT 5 session with expiry 1 s, then a 3.1.1 connection of the same client id.
    let other = format!("{id}-other");
    let mut raw = Raw::connect(&gateway);
    raw.send(&mqtt5_connect(&other, false, 1));
    assert_eq!(raw.packet().0, 0x20);
    raw.send(&[DISCONNECT, 0]);
    let mut live = connected(&gateway, 4, &other, 60);
    std::thread::sleep(Duration::from_millis(2500));
    live.send(&PINGREQ);
    assert_eq!(live.packet(), PINGRESP, "not kicked by the expiry");
}

/// With Kafka down, a QoS 0 flood holds only its own connection's budget, so the
/// others are still read (and acknowledged once Kafka is back); /health/ready says Kafka
/// is down at once, /health after its grace period, and /health/live never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_bound_qos0_floods_and_health_tells_when_kafka_is_down() {
    let mut kafka = Tansu::start();
    let mut gateway = Gateway::configure(Some(Box::new(|c: &mut toml::Table| {
        set(c, &["ingress", "max_inflight_per_connection"], 20);
        set(c, &["ingress", "max_inflight_total"], 50);
    })));
    gateway.spawn(&["--role", "all"], &[("KAFKA_BROKERS", &kafka.brokers())]);
    gateway.wait_ready();
    assert_eq!(gateway.get("/health").0, 200);
    for check in ["/health/live", "/health/ready"] {
        assert_eq!(gateway.get(check), (200, "ok\n".into()), "{check}");
    }
    let db = db().await;
    let dev = format!("{}-flood", gateway.id);
    kafka.kill();
    let down = Instant::now();
    wait_for(
        Duration::from_secs(25),
        "/health/ready to say Kafka is down",
        || {
            let (status, body) = gateway.get("/health/ready");
            status == 503 && body.starts_with("kafka unreachable")
        },
    );
    // No grace period for readiness: it turned before /health's 30 s were up.
    assert!(
        down.elapsed() < sluice::health::GRACE,
        "{:?}",
        down.elapsed()
    );
    assert_eq!(gateway.get("/health").0, 200);

    let flood = connected(&gateway, 4, &dev, 60);
    let mut socket = flood.0.try_clone().expect("clone");
    let topic = format!("sensors/{dev}/temp");
    let flooder = std::thread::spawn(move || {
        for i in 0..500u64 {
            let body = format!(r#"{{"value": {i}, "ts": {}}}"#, 1_700_000_000_000 + i);
            if socket
                .write_all(&publish_at(4, 0, false, &topic, 0, &[], body.as_bytes()))
                .is_err()
            {
                break;
            }
        }
    });
    wait_for(
        Duration::from_secs(10),
        "the flood to fill its budget",
        || gateway.metric(r#"sluice_publishes_total{qos="0"}"#) >= 21.0,
    );
    let mut bystander = Bystander::connect(&gateway);
    for n in 1..=3u16 {
        let body = format!(
            r#"{{"value": {n}, "ts": {}}}"#,
            1_700_000_000_000u64 + u64::from(n)
        );
        bystander.raw.send(&publish(
            4,
            &format!("sensors/{}/temp", bystander.dev),
            n,
            &[],
            body.as_bytes(),
        ));
    }
    bystander.sent = 3;
    wait_for(Duration::from_secs(10), "the bystander to be read", || {
        gateway.metric(r#"sluice_publishes_total{qos="1"}"#) == 3.0
    });
    assert!(gateway.metric(r#"sluice_publishes_total{qos="0"}"#) <= 21.0);
    wait_for(
        Duration::from_secs(90),
        "/health to say Kafka is down",
        || {
            let (status, body) = gateway.get("/health");
            status == 503 && body.contains("kafka")
        },
    );
    assert_eq!(gateway.get("/health/live").0, 200, "waiting mends this");

    kafka.restart();
    for n in 1..=3u8 {
        let (kind, body) = bystander.raw.packet();
        if kind == 0x40 {
            assert_eq!(body, [0, n]);
        } else {
            panic!("unexpected packet {kind:#x}");
        }
    }
    bystander.rows_all_landed(&db).await;
    wait_for(Duration::from_secs(60), "/health to recover", || {
        gateway.get("/health").0 == 200
    });
    assert_eq!(gateway.get("/health/ready"), (200, "ok\n".into()));
    drop(flood.0.shutdown(std::net::Shutdown::Both));
    flooder.join().expect("flooder");
}

/// SIGTERM drains. Records received at QoS 0 and acknowledged on receipt, still
/// lingering in the producer, reach Kafka and the table; MQTT 5 clients get 0x8B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_what_was_received_into_kafka() {
    let mut gateway = Gateway::configure(Some(Box::new(|c: &mut toml::Table| {
        add_receipt_mapping(c);
        // Records wait two seconds in the producer: without a flush they die with it.
        set(c, &["kafka", "properties", "linger.ms"], "2000");
    })));
    gateway.spawn(&["--role", "all"], &[]);
    gateway.wait_ready();
    let db = db().await;
    let dev = format!("{}-term", gateway.id);
    let mut v5 = connected(&gateway, 5, &format!("{dev}-watcher"), 60);
    let mut device = connected(&gateway, 4, &dev, 60);
    let mut burst = Vec::new();
    for i in 0..200u16 {
        let body = format!(
            r#"{{"value": {i}, "ts": {}}}"#,
            1_700_000_000_000u64 + u64::from(i)
        );
        let (topic, qos) = if i % 2 == 0 {
            (format!("sensors/{dev}/zero"), 0)
        } else {
            (format!("fast/{dev}/receipt"), 1)
        };
        burst.extend(publish_at(
            4,
            qos,
            false,
            &topic,
            i + 1,
            &[],
            body.as_bytes(),
        ));
    }
    device.send(&burst);
    for _ in 0..100 {
        assert_eq!(device.packet().0, 0x40, "PUBACK on receipt");
    }
    assert_eq!(gateway.metric(r#"sluice_publishes_total{qos="0"}"#), 100.0);
    gateway.signal(0, "TERM");
    assert_eq!(
        v5.packet(),
        (DISCONNECT, vec![0x8B]),
        "server shutting down"
    );
    let status = gateway.wait_exit(0);
    assert!(status.success(), "{status}");
    // Whatever the writer had not written yet is in Kafka: the next start writes it.
    gateway.spawn(&["--role", "all"], &[]);
    assert_eq!(wait_rows(&db, &dev, 200).await.len(), 200);
}

/// Wildcards in a topic name, unmapped topics refused, long client ids,
/// connection caps, keep alive 0 with a short keep alive on the relay, and a slowloris.
#[test]
fn wildcard_topics_caps_keep_alive_zero_and_slowloris() {
    let gateway = Gateway::start(Some(Box::new(|c: &mut toml::Table| {
        set(c, &["ingress", "max_connections_per_address"], 6);
        set(c, &["ingress", "broker_keep_alive_s"], 2);
        set(c, &["ingress", "unmapped"], "reject");
    })));
    let id = &gateway.id;
    let mut bystander = Bystander::connect(&gateway);

    let mut wild5 = connected(&gateway, 5, &format!("{id}-wild5"), 60);
    wild5.send(&publish(5, "sensors/+/temp", 1, &[], br#"{"value": 1}"#));
    assert_eq!(wild5.closed(), [DISCONNECT, 1, 0x90]);
    let mut wild = connected(&gateway, 4, &format!("{id}-wild"), 60);
    wild.send(&publish(4, "sensors/#", 1, &[], br#"{"value": 1}"#));
    assert_eq!(wild.closed(), b"");

    // With `unmapped = "reject"`, a publish no mapping matches is refused with why, and
    // the connection stays.
    let mut unmapped = connected(&gateway, 5, &format!("{id}-unmapped"), 60);
    unmapped.send(&publish(5, &format!("nowhere/{id}"), 1, &[], b"{}"));
    let (kind, ack) = unmapped.packet();
    assert_eq!((kind, &ack[..3]), (0x40, &[0, 1, 0x90][..]), "{ack:?}");
    assert!(
        String::from_utf8_lossy(&ack).contains("no mapping"),
        "{ack:?}"
    );
    unmapped.send(&PINGREQ);
    assert_eq!(unmapped.packet(), PINGRESP);
    drop(unmapped);

    // Client ids longer than 256 bytes are refused.
    let long_id = "i".repeat(300);
    let mut long5 = Raw::connect(&gateway);
    long5.send(&connect(5, &long_id, true, 60, None));
    assert_eq!(long5.closed(), [0x20, 3, 0, 0x85, 0]);
    let mut long = Raw::connect(&gateway);
    long.send(&connect(4, &long_id, true, 60, None));
    assert_eq!(long.closed(), [0x20, 2, 0, 2]);

    // Keep alive 0: never closed for silence, though rumqttd's own keep alive is 2 s.
    let mut quiet = connected(&gateway, 4, &format!("{id}-quiet"), 0);
    // A slowloris: keep alive 1 s, a byte of a packet every 400 ms.
    let mut slow = connected(&gateway, 4, &format!("{id}-slow"), 1);
    let started = Instant::now();
    let bytes = publish(4, "sensors/x/temp", 1, &[], &[b' '; 200]);
    for b in &bytes[..10] {
        std::thread::sleep(Duration::from_millis(400));
        if slow.0.write_all(&[*b]).is_err() {
            break;
        }
    }
    let closed_after = started.elapsed();
    let (_, more) = slow
        .until_closed(Duration::from_secs(5))
        .expect("the slowloris is closed");
    assert!(
        closed_after + more < Duration::from_secs(6),
        "{closed_after:?} + {more:?}"
    );
    quiet.send(&PINGREQ);
    assert_eq!(quiet.packet(), PINGRESP, "keep alive 0 is still connected");

    // Six from one address (bystander, quiet and four more); the seventh is refused.
    std::thread::sleep(Duration::from_millis(500)); // the closed ones' slots given back
    let _more: Vec<Raw> = (0..4)
        .map(|n| connected(&gateway, 4, &format!("{id}-cap{n}"), 60))
        .collect();
    let mut over = Raw::connect(&gateway);
    let _ = over
        .0
        .write_all(&connect(4, &format!("{id}-over"), true, 60, None));
    assert_eq!(over.closed(), b"", "closed without a CONNACK");
    assert_eq!(
        gateway.metric(r#"sluice_connections_refused_total{reason="per_address"}"#),
        1.0
    );
    bystander.is_served(3);
}
