//! The device port as the MQTT broker it also is, for clients that are not sensors:
//! operators' subscribers, services exchanging requests and replies, retained
//! configuration. Each test drives it with independent clients (mosquitto_pub/sub -V 5,
//! Paho Python, rumqttc v5, raw sockets where a test must see every packet) and checks what
//! they get; the README's compatibility tables name these tests.

mod common;

use std::process::Command;
use std::time::Duration;

use common::raw::{connect, connected, packet, publish, string, subscribe, Raw, DISCONNECT};
use common::{db, lines, mosquitto_sub, paho, rows, set, wait_rows, Gateway};

const PUBLISH: u8 = 3;
const PUBACK: u8 = 0x40;

/// An MQTT 5 CONNECT with raw properties.
fn connect_with(client_id: &str, clean: bool, keep_alive: u16, props: &[u8]) -> Vec<u8> {
    let mut body = string(b"MQTT");
    body.extend_from_slice(&[5, if clean { 0x02 } else { 0 }]);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    body.push(props.len() as u8);
    body.extend_from_slice(props);
    body.extend(string(client_id.as_bytes()));
    packet(0x10, &body)
}

/// A PUBLISH's packet id (QoS 1 and 2) and payload, as an MQTT 5 client reads it.
fn publish_body(first: u8, body: &[u8]) -> (u16, Vec<u8>) {
    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let mut at = 2 + topic_len;
    let mut pkid = 0;
    if first & 0x06 != 0 {
        pkid = u16::from_be_bytes([body[at], body[at + 1]]);
        at += 2;
    }
    let props = usize::from(body[at]); // short property sets in these tests
    (pkid, body[at + 1 + props..].to_vec())
}

/// `mosquitto_sub -V 5 -q 2` on one filter, for up to `count` messages or `secs` seconds.
fn mosquitto_sub5(gateway: &Gateway, filter: &str, count: u32, secs: u32) -> std::process::Child {
    let (count, secs) = (count.to_string(), secs.to_string());
    let args = [
        "-V", "5", "-q", "2", "-t", filter, "-C", &count, "-W", &secs,
    ];
    mosquitto_sub(gateway, &args)
}

/// The test a generic broker suite starts with: subscribe, publish at QoS 0, 1 and 2 on a
/// topic no mapping takes, receive three messages; every acknowledgement a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_traffic_outside_the_mappings_is_served_at_every_qos() {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason, PubCompReason, PubRecReason};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let gateway = Gateway::start(None);
    let topic = format!("chat/{}", gateway.id);
    let sub = mosquitto_sub5(&gateway, &topic, 6, 20);
    for qos in ["0", "1", "2"] {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &gateway.mqtt_port.to_string()])
            .args([
                "-V",
                "5",
                "-q",
                qos,
                "-t",
                &topic,
                "-m",
                &format!("mosquitto {qos}"),
            ])
            .status()
            .expect("mosquitto_pub runs");
        assert!(status.success(), "mosquitto_pub -q {qos}");
    }
    // rumqttc v5 subscribes and publishes on the same connection.
    let id = format!("{}-rumqttc", gateway.id);
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new(&id, "127.0.0.1", gateway.mqtt_port), 16);
    client
        .subscribe(&topic, QoS::ExactlyOnce)
        .await
        .expect("queued");
    let mut got = Vec::new();
    let mut acks = Vec::new();
    let mut published = false;
    tokio::time::timeout(Duration::from_secs(20), async {
        while got.len() < 3 || acks.len() < 2 {
            match events.poll().await.expect("connected") {
                Event::Incoming(P5::SubAck(_)) if !published => {
                    published = true;
                    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                        let body = format!("rumqttc {}", qos as u8);
                        client
                            .publish(&topic, qos, false, body)
                            .await
                            .expect("queued");
                    }
                }
                Event::Incoming(P5::Publish(p)) => {
                    got.push(String::from_utf8_lossy(&p.payload).into_owned())
                }
                Event::Incoming(P5::PubAck(a)) => acks.push(a.reason == PubAckReason::Success),
                Event::Incoming(P5::PubRec(r)) => assert_eq!(r.reason, PubRecReason::Success),
                Event::Incoming(P5::PubComp(c)) => acks.push(c.reason == PubCompReason::Success),
                _ => {}
            }
        }
    })
    .await
    .expect("three messages and two acknowledgements within 20 s");
    got.sort();
    assert_eq!(got, ["rumqttc 0", "rumqttc 1", "rumqttc 2"]);
    assert_eq!(acks, [true, true]);
    let mut seen = lines(sub);
    seen.sort();
    let want: Vec<String> = ["mosquitto 0", "mosquitto 1", "mosquitto 2"]
        .iter()
        .chain(&["rumqttc 0", "rumqttc 1", "rumqttc 2"])
        .map(|m| format!("{topic} {m}"))
        .collect();
    assert_eq!(seen, want);
    assert_eq!(rows(&db().await, &gateway.id).await, [], "nothing ingested");
}

/// What MQTT 5 subscribers get through the device port, measured with Paho: every
/// subscription option, properties passed through, subscription identifiers per
/// overlapping subscription. Two rows are rumqttd's (README): a message is delivered at
/// the subscription's QoS, not the lower of the two, and a second SUBSCRIBE to the same
/// filter sends no retained messages whatever its retain handling.
#[test]
fn mqtt5_subscribers_get_what_their_subscriptions_ask_for() {
    let gateway = Gateway::start(None);
    let seen = paho(&[
        "subscriber",
        &gateway.mqtt_port.to_string(),
        &format!("subs-{}", gateway.id),
    ]);
    let want = serde_json::json!({
        "retained_delivered": true,
        "retained_flag": true,
        "expired_retained_delivered": false,
        "user_properties": true,
        "content_type": true,
        "message_expiry_forwarded": true,
        "response_topic": true,
        "correlation_data": true,
        "subscription_identifier": [42],
        "no_local_respected": true,
        "retain_as_published": [true, false],
        "overlapping_identifiers": [[1], [2]],
        "qos0_publish_delivered_at": [2],
        "retain_handling_2_respected": true,
        "retained_copies_for_two_subscribes": {"0": 1, "1": 1},
        "shared_deliveries": [2, 2],
    });
    assert_eq!(seen, want);
}

/// MQTT 5 sessions (rumqttd alone keeps every session forever): expiry 0 ends the session
/// with the connection; a longer one keeps it, with its queued QoS 1 and 2 messages, until
/// then; a clean start with an expiry starts a session that outlives its connection; a
/// DISCONNECT may shorten the expiry; a queued message's own expiry counts while it waits.
#[test]
fn mqtt5_sessions_resume_expire_and_start_as_asked() {
    let gateway = Gateway::start(None);
    let port = gateway.mqtt_port.to_string();
    let session = |expiry: &str, wait: &str, how: &str| {
        let id = format!("{}-{how}-{expiry}-{}", gateway.id, wait.replace('.', "_"));
        paho(&["session", &port, &id, expiry, wait, how])
    };
    let gone = serde_json::json!({"session_present": [0, 0], "messages": []});
    let kept = serde_json::json!({
        "session_present": [0, 1],
        "messages": [["queued-1", 1], ["queued-2", 2]],
    });
    assert_eq!(session("0", "0.5", "persistent"), gone, "expiry 0");
    assert_eq!(session("3", "0.5", "persistent"), kept, "within the expiry");
    assert_eq!(session("1", "2.5", "persistent"), gone, "after the expiry");
    assert_eq!(
        session("300", "0.5", "clean-start"),
        kept,
        "clean start, expiry 300"
    );
    assert_eq!(
        session("300", "0.5", "disconnect-0"),
        gone,
        "DISCONNECT sets 0"
    );
    assert_eq!(
        session("0", "0.5", "v311"),
        kept,
        "MQTT 3.1.1, clean session 0"
    );
    let expiring = session("300", "2.5", "expiring");
    assert_eq!(
        expiring["messages"],
        serde_json::json!([["long", 1, 58]]),
        "{expiring}"
    );
}

/// Every filter of a SUBSCRIBE and UNSUBSCRIBE is answered in its place; rumqttd would close
/// the connection for a `$` filter and never answer an UNSUBSCRIBE of a filter it lacks.
#[test]
fn subscribe_and_unsubscribe_are_answered_for_every_filter() {
    let gateway = Gateway::start(Some(Box::new(|c: &mut toml::Table| {
        set(c, &["ingress", "max_subscriptions_per_session"], 3);
    })));
    let codes = paho(&[
        "filters",
        &gateway.mqtt_port.to_string(),
        &format!("filters-{}", gateway.id),
    ]);
    let want = serde_json::json!({
        "suback": [1, 0x8F, 0],
        "suback_in_time": true,
        "unsuback": [0, 0x11],
        "unsuback_in_time": true,
        "still_connected": true,
    });
    assert_eq!(codes, want);
    // A malformed filter (Paho refuses to send one): 0x8F (3.1.1: 0x80), connection kept.
    for level in [5, 4] {
        let mut raw = connected(&gateway, level, &format!("{}-bad{level}", gateway.id), 60);
        raw.send(&subscribe(level, 3, "a/b#", 1));
        let refused = if level == 5 { 0x8F } else { 0x80 };
        let ack = raw.packet();
        assert_eq!(ack.0, 0x90);
        assert_eq!(ack.1.last(), Some(&refused), "level {level}: {ack:?}");
        // 3.1.1: an UNSUBSCRIBE of a filter never subscribed gets its UNSUBACK.
        let mut body = 4u16.to_be_bytes().to_vec();
        if level == 5 {
            body.push(0);
        }
        body.extend(string(b"never/subscribed"));
        raw.send(&packet(0xA2, &body));
        let unsuback = raw.packet();
        assert_eq!(unsuback.0, 0xB0, "level {level}");
        assert_eq!(&unsuback.1[..2], &[0, 4]);
    }
    // Four filters against `max_subscriptions_per_session = 3`: the fourth is refused.
    let mut many = connected(&gateway, 5, &format!("{}-many", gateway.id), 60);
    let mut body = 5u16.to_be_bytes().to_vec();
    body.push(0);
    for f in ["q/1", "q/2", "q/3", "q/4"] {
        body.extend(string(f.as_bytes()));
        body.push(1);
    }
    many.send(&packet(0x82, &body));
    assert_eq!(many.packet(), (0x90, vec![0, 5, 0, 1, 1, 1, 0x97]));
}

/// rumqttd sends a persistent session's unfinished deliveries again on reconnect, and takes
/// acknowledgements only in its order: Sluice's in the client's place (here, for the
/// client's own QoS 2 publish on its no-local subscription) wait behind those the client
/// owes from its previous connection.
#[test]
fn a_resumed_session_gets_its_unfinished_deliveries_and_stays_in_step() {
    let gateway = Gateway::start(None);
    let id = format!("{}-resumed", gateway.id);
    let topic = format!("plain/{}", gateway.id);
    let expiry = [0x11, 0, 0, 1, 44]; // session expiry 300 s
    let mut first = Raw::connect(&gateway);
    first.send(&connect_with(&id, true, 60, &expiry));
    assert_eq!(first.packet().0, 0x20);
    // QoS 2, no local, subscription identifier 7 (0x0B).
    let mut body = 1u16.to_be_bytes().to_vec();
    body.extend_from_slice(&[2, 0x0B, 7]);
    body.extend(string(topic.as_bytes()));
    body.push(0x06);
    first.send(&packet(0x82, &body));
    assert_eq!(first.packet(), (0x90, vec![0, 1, 0, 2]));
    let mut other = connected(&gateway, 5, &format!("{}-other", gateway.id), 60);
    let qos2 = |pkid: u16, payload: &[u8]| {
        let mut body = string(topic.as_bytes());
        body.extend_from_slice(&pkid.to_be_bytes());
        body.push(0);
        body.extend_from_slice(payload);
        packet(0x34, &body)
    };
    other.send(&qos2(1, b"one"));
    assert_eq!(other.packet().0, 0x50, "PUBREC");
    let (first_byte, delivered) = first.packet();
    let (pkid, payload) = publish_body(first_byte, &delivered);
    assert_eq!(payload, b"one");
    // PUBREC, then the connection is lost before rumqttd's PUBREL is answered.
    let [hi, lo] = pkid.to_be_bytes();
    first.send(&[0x50, 2, hi, lo]);
    std::thread::sleep(Duration::from_millis(300));
    drop(first);
    let mut again = Raw::connect(&gateway);
    again.send(&connect_with(&id, false, 60, &expiry));
    let (connack, flags) = again.packet();
    assert_eq!((connack, flags[0]), (0x20, 1), "session present");
    assert_eq!(
        again.packet(),
        (0x62, vec![hi, lo]),
        "rumqttd's PUBREL again"
    );
    // The client's own QoS 2 publish: not sent back to it (no local), so Sluice answers
    // rumqttd for it (rumqttd reuses packet id 1 for it), after the client's PUBCOMP.
    again.send(&qos2(9, b"mine"));
    let mut seen = Vec::new();
    while let Some(p) = again.next_packet(Duration::from_secs(1)) {
        seen.push(p);
    }
    assert_eq!(
        seen,
        [(0x50, vec![0, 9])],
        "PUBREC for its publish, nothing else"
    );
    again.send(&[0x62, 2, 0, 9]);
    assert_eq!(
        again.packet(),
        (0x70, vec![0, 9]),
        "PUBCOMP for its publish"
    );
    again.send(&[0x70, 2, hi, lo]);
    // Still in step with rumqttd: the next deliveries come, with the client's
    // subscription identifier (rumqttd forgot it; Sluice gave it back), and complete.
    for (n, payload) in [(2u16, &b"two"[..]), (3, b"three")] {
        other.send(&qos2(n, payload));
        assert_eq!(other.packet().0, 0x50, "PUBREC");
        let (first_byte, delivered) = again.packet();
        assert_eq!(publish_body(first_byte, &delivered).1, payload);
        assert!(delivered.windows(2).any(|w| w == [0x0B, 7]), "identifier 7");
        let (pkid, _) = publish_body(first_byte, &delivered);
        let [hi, lo] = pkid.to_be_bytes();
        again.send(&[0x50, 2, hi, lo]);
        assert_eq!(again.packet(), (0x62, vec![hi, lo]), "PUBREL");
        again.send(&[0x70, 2, hi, lo]);
    }
    again.send(&[0xC0, 0]);
    assert_eq!(again.packet().0, 0xD0, "PINGRESP: still connected");
    assert_eq!(
        gateway.metric(r#"sluice_deliveries_skipped_total{reason="no_local"}"#),
        1.0
    );
}

/// What Sluice sends a client stays within the receive maximum and the maximum packet size
/// it asked for (rumqttd sends regardless): the rest waits for its PUBACKs, a packet too
/// large is dropped, and rumqttd is acknowledged in its place, in order (rumqttd closes a
/// connection whose acknowledgements come out of order).
#[test]
fn a_client_is_sent_no_more_than_its_receive_maximum_and_packet_size() {
    let gateway = Gateway::start(None);
    let topic = format!("plain/{}", gateway.id);
    let mut sub = Raw::connect(&gateway);
    // Receive maximum 2 (0x21), maximum packet size 200 (0x27).
    let props = [0x21, 0, 2, 0x27, 0, 0, 0, 200];
    sub.send(&connect_with(
        &format!("{}-small", gateway.id),
        true,
        60,
        &props,
    ));
    assert_eq!(sub.packet().0, 0x20, "CONNACK");
    sub.send(&subscribe(5, 1, &topic, 1));
    assert_eq!(sub.packet().0, 0x90, "SUBACK");
    let mut publisher = connected(&gateway, 5, &format!("{}-pub", gateway.id), 60);
    let sent: Vec<Vec<u8>> = ["m1", "m2", "BIG", "m3", "m4"]
        .iter()
        .map(|m| match *m {
            "BIG" => vec![b'x'; 500],
            m => m.as_bytes().to_vec(),
        })
        .collect();
    for (i, payload) in sent.iter().enumerate() {
        publisher.send(&publish(5, &topic, i as u16 + 1, &[], payload));
        assert_eq!(
            publisher.packet(),
            (PUBACK, vec![0, i as u8 + 1]),
            "PUBACK, success"
        );
    }
    let mut got = Vec::new();
    while let Some((first, body)) = sub.next_packet(Duration::from_secs(1)) {
        assert_eq!(first >> 4, PUBLISH);
        got.push(publish_body(first, &body));
    }
    let payloads = |got: &[(u16, Vec<u8>)]| got.iter().map(|g| g.1.clone()).collect::<Vec<_>>();
    assert_eq!(
        payloads(&got),
        [b"m1".to_vec(), b"m2".to_vec()],
        "two unacknowledged"
    );
    // Each PUBACK lets one more go; the 500-byte one never comes.
    for _ in 0..3 {
        let pkid = got[got.len() - 2].0.to_be_bytes();
        sub.send(&[PUBACK, 2, pkid[0], pkid[1]]);
        if let Some((first, body)) = sub.next_packet(Duration::from_secs(2)) {
            got.push(publish_body(first, &body));
        }
    }
    let want: Vec<Vec<u8>> = ["m1", "m2", "m3", "m4"]
        .iter()
        .map(|m| m.as_bytes().to_vec())
        .collect();
    assert_eq!(payloads(&got), want);
    sub.send(&[0xC0, 0]);
    assert_eq!(sub.packet().0, 0xD0, "PINGRESP: the connection is still up");
    assert_eq!(
        gateway.metric(r#"sluice_deliveries_skipped_total{reason="too_large"}"#),
        1.0
    );
}

/// `ingress.max_keep_alive`: MQTT 5 clients asking for more (or 0) are told the maximum in
/// CONNACK; MQTT 3.1.1 clients, which cannot be told, are refused. And a DISCONNECT may
/// not set a session expiry after a CONNECT with none.
#[test]
fn the_server_keep_alive_and_session_expiry_rules_hold() {
    let gateway = Gateway::start(Some(Box::new(|c: &mut toml::Table| {
        set(c, &["ingress", "max_keep_alive"], 20);
    })));
    let mut v5 = Raw::connect(&gateway);
    v5.send(&connect_with(&format!("{}-ka", gateway.id), true, 0, &[]));
    let (first, body) = v5.packet();
    assert_eq!((first, body[1]), (0x20, 0), "CONNACK, success");
    assert!(
        body.windows(3).any(|w| w == [0x13, 0, 20]),
        "server keep alive 20 in {body:?}"
    );
    let mut v311 = Raw::connect(&gateway);
    v311.send(&connect(4, &format!("{}-ka4", gateway.id), true, 0, None));
    assert_eq!(v311.packet(), (0x20, vec![0, 2]), "identifier rejected");
    let mut fine = connected(&gateway, 4, &format!("{}-ka4-ok", gateway.id), 20);
    fine.send(&[0xC0, 0]);
    assert_eq!(fine.packet().0, 0xD0);
    // DISCONNECT with session expiry 300 (0x11) after none at CONNECT: protocol error.
    v5.send(&packet(0xE0, &[0, 5, 0x11, 0, 0, 1, 44]));
    assert_eq!(v5.closed(), [DISCONNECT, 1, 0x82]);
}

/// What a client gets for the MQTT 5 protocol errors Sluice now checks for rumqttd: no local
/// on a shared subscription (DISCONNECT 0x82) and a receive maximum of 0 in CONNECT (closed
/// without a CONNACK); a bystander keeps being served.
#[test]
fn subscriber_protocol_errors_close_only_that_connection() {
    let gateway = Gateway::start(None);
    let mut bystander = connected(&gateway, 5, &format!("{}-bystander", gateway.id), 60);
    let mut shared = connected(&gateway, 5, &format!("{}-shared", gateway.id), 60);
    let mut body = 1u16.to_be_bytes().to_vec();
    body.push(0);
    body.extend(string(b"$share/g/plain/x"));
    body.push(0x05); // QoS 1, no local
    shared.send(&packet(0x82, &body));
    assert_eq!(shared.closed(), [DISCONNECT, 1, 0x82]);
    let mut zero = Raw::connect(&gateway);
    zero.send(&connect_with(
        &format!("{}-rm0", gateway.id),
        true,
        60,
        &[0x21, 0, 0],
    ));
    assert_eq!(zero.closed(), b"", "receive maximum 0: no CONNACK");
    bystander.send(&[0xC0, 0]);
    assert_eq!(bystander.packet().0, 0xD0, "PINGRESP");
}

/// Retained messages and wills on a mapped topic. A retained reading is ingested once, when
/// it is published (what a subscriber is sent at subscribe is no new reading); an empty
/// retained publish clears it and is no reading either; a will is a message the device never
/// sent: subscribers get it, Kafka and the table do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_readings_and_wills_on_mapped_topics() {
    let gateway = Gateway::start(None);
    let db = db().await;
    let dev = format!("{}-will", gateway.id);
    let topic = format!("sensors/{dev}/temp");
    let watcher = mosquitto_sub5(&gateway, &format!("sensors/{dev}/#"), 3, 15);
    let will = r#"{"value": 99, "ts": 1700000009000}"#;
    let mut device = Raw::connect(&gateway);
    device.send(&connect(5, &dev, true, 60, Some((&topic, will))));
    assert_eq!(device.packet().0, 0x20);
    let retained = |pkid: u16, payload: &[u8]| {
        let mut body = string(topic.as_bytes());
        body.extend_from_slice(&pkid.to_be_bytes());
        body.push(0);
        body.extend_from_slice(payload);
        packet(0x33, &body) // QoS 1, retain
    };
    device.send(&retained(1, br#"{"value": 1, "ts": 1700000001000}"#));
    assert_eq!(device.packet(), (PUBACK, vec![0, 1]));
    // A late subscriber gets the retained reading; it is not ingested again.
    let late = mosquitto_sub5(&gateway, &topic, 1, 10);
    assert_eq!(
        lines(late),
        [format!(r#"{topic} {{"value": 1, "ts": 1700000001000}}"#)]
    );
    device.send(&retained(2, b""));
    assert_eq!(
        device.packet(),
        (PUBACK, vec![0, 2]),
        "cleared: success, not 0x99"
    );
    let after_clear = mosquitto_sub5(&gateway, &topic, 1, 2);
    assert_eq!(lines(after_clear), Vec::<String>::new(), "nothing retained");
    // The device vanishes: rumqttd publishes its will.
    drop(device);
    let seen = lines(watcher);
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[2], format!("{topic} {will}"));
    let rows = wait_rows(&db, &dev, 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].value, Some(1.0));
    assert_eq!(common::rows(&db, &dev).await, rows, "no row from the will");
    assert_eq!(gateway.metric("sluice_retained_cleared_total"), 1.0);
}

/// A client with no will, clean or persistent, that publishes what nobody subscribes to has
/// no relay to rumqttd: one socket instead of three (`sluice_broker_relays` counts relays).
/// Its relay opens when rumqttd must see something: a subscriber to its readings appears
/// (one to other topics is not enough).
/// Another connection taking its client id over closes it (MQTT 5: DISCONNECT 0x8E), with or
/// without a relay, as rumqttd would have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_open_only_when_rumqttd_must_see_something() {
    let gateway = Gateway::start(None);
    let db = db().await;
    let level = |i: usize| if i.is_multiple_of(2) { 4 } else { 5 };
    let id = |i: usize| format!("{}-s{i}", gateway.id);
    let reading = |i: usize, pkid: u16| {
        let topic = format!("sensors/{}/temp", id(i));
        publish(level(i), &topic, pkid, &[], b"{\"value\": 1}")
    };
    let mut sensors: Vec<Raw> = (0..6)
        .map(|i| connected(&gateway, level(i), &id(i), 60))
        .collect();
    for (i, sensor) in sensors.iter_mut().enumerate() {
        sensor.send(&reading(i, 1));
        assert_eq!(sensor.packet().0, PUBACK);
    }
    assert_eq!(
        wait_rows(&db, &gateway.id, 6).await.len(),
        6,
        "each reading once"
    );
    assert_eq!(gateway.metric("sluice_broker_relays"), 0.0, "no relay yet");
    // A persistent session that never subscribed has none either; it is there when its
    // client comes back (session present), as rumqttd would have said.
    let persistent = format!("{}-persistent", gateway.id);
    for (level, present) in [(4, 0), (4, 1), (5, 1)] {
        let mut p = Raw::connect(&gateway);
        p.send(&connect(level, &persistent, false, 60, None));
        let (first, connack) = p.packet();
        assert_eq!(
            (first, connack[0], connack[1]),
            (0x20, present, 0),
            "MQTT {level}"
        );
        p.send(&[DISCONNECT, 0]);
        assert_eq!(p.closed(), b"");
    }
    assert_eq!(gateway.metric("sluice_broker_relays"), 0.0, "no relay yet");

    // A subscriber to other topics opens its own relay and none of theirs.
    let mut operator = connected(&gateway, 5, &format!("{}-operator", gateway.id), 60);
    operator.send(&subscribe(5, 1, "alerts/#", 1));
    assert_eq!(operator.packet().0, 0x90, "SUBACK");
    for (i, sensor) in sensors.iter_mut().enumerate() {
        sensor.send(&reading(i, 2));
        assert_eq!(sensor.packet().0, PUBACK);
    }
    assert_eq!(
        gateway.metric("sluice_broker_relays"),
        1.0,
        "the operator's only"
    );
    drop(operator);
    common::wait_for(
        Duration::from_secs(10),
        "the operator's relay closed",
        || gateway.metric("sluice_broker_relays") == 0.0,
    );

    let sub = mosquitto_sub(
        &gateway,
        &["-V", "5", "-t", "sensors/+/temp", "-C", "6", "-W", "20"],
    );
    common::wait_for(Duration::from_secs(10), "the subscriber's relay", || {
        gateway.metric("sluice_broker_relays") == 1.0
    });
    for (i, sensor) in sensors.iter_mut().enumerate() {
        sensor.send(&reading(i, 3));
        assert_eq!(sensor.packet().0, PUBACK);
    }
    let got = lines(sub);
    assert_eq!(
        got.len(),
        6,
        "every sensor's third reading, through its new relay: {got:?}"
    );
    assert_eq!(
        gateway.metric("sluice_broker_relays"),
        6.0,
        "the sensors' relays"
    );
    assert_eq!(
        wait_rows(&db, &gateway.id, 18).await.len(),
        18,
        "each reading once"
    );

    // Taken over: an MQTT 5 sensor with a relay, an MQTT 3.1.1 one, an idle one without.
    let mut again = connected(&gateway, 5, &id(1), 60);
    assert_eq!(sensors[1].closed(), [DISCONNECT, 1, 0x8E]);
    let _again_v4 = connected(&gateway, 4, &id(0), 60);
    assert_eq!(sensors[0].closed(), b"");
    let idle_id = format!("{}-idle", gateway.id);
    let mut idle = connected(&gateway, 5, &idle_id, 60);
    let _idle_again = connected(&gateway, 5, &idle_id, 60);
    assert_eq!(idle.closed(), [DISCONNECT, 1, 0x8E]);
    again.send(&reading(1, 4));
    assert_eq!(again.packet().0, PUBACK, "the new connection is served");
    assert_eq!(
        wait_rows(&db, &gateway.id, 19).await.len(),
        19,
        "each reading once"
    );
}
