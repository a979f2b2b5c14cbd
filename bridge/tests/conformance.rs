//! MQTT conformance of the device port, seen from clients: keep alive and wills, `$`
//! topics, protocol violations, zero-length client ids, and MQTT 5's CONNACK properties,
//! receive maximum, packet size, topic aliases and payload format indicator. Clients are
//! mosquitto_pub/sub, Paho Python (tests/clients/paho_client.py), rumqttc, and raw sockets where
//! a test needs a client that breaks the rules.

mod common;

use std::process::Command;
use std::time::Duration;

use common::raw::{connect, connected, packet, publish, string, Raw, DISCONNECT};
use common::{db, lines, mosquitto_sub, paho, read_topic, set, wait_rows, Gateway};

#[test]
fn silent_devices_are_closed_after_one_and_a_half_keep_alives_and_their_will_published() {
    let gateway = Gateway::start(None);
    let will_topic = format!("wills/{}/silent", gateway.id);
    let sub = mosquitto_sub(&gateway, &["-t", &will_topic, "-W", "6"]);

    // MQTT 3.1.1, keep alive 1 s, then silence.
    let mut silent = Raw::connect(&gateway);
    silent.send(&connect(
        4,
        &format!("{}-silent", gateway.id),
        true,
        1,
        Some((&will_topic, "gone")),
    ));
    assert_eq!(silent.read_exact(4), [0x20, 2, 0, 0]);
    let (bytes, after) = silent
        .until_closed(Duration::from_secs(5))
        .expect("closed within 5 s");
    assert!(
        bytes.is_empty(),
        "3.1.1 has no DISCONNECT from the server: {bytes:?}"
    );
    assert!(
        after >= Duration::from_millis(1400) && after < Duration::from_millis(3000),
        "closed after {after:?}"
    );

    // A device that pings within its keep alive stays connected.
    let mut pinging = connected(&gateway, 4, &format!("{}-pinging", gateway.id), 1);
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        pinging.send(&[0xC0, 0]);
        assert_eq!(pinging.read_exact(2), [0xD0, 0], "PINGRESP");
    }

    // MQTT 5 is told why.
    let mut silent5 = connected(&gateway, 5, &format!("{}-silent5", gateway.id), 1);
    let (bytes, _) = silent5
        .until_closed(Duration::from_secs(5))
        .expect("closed within 5 s");
    assert_eq!(bytes, [DISCONNECT, 1, 0x8D], "keep alive timeout");

    assert_eq!(lines(sub), [format!("{will_topic} gone")], "the will, once");
}

#[test]
fn wildcards_at_the_first_level_never_match_dollar_topics() {
    let gateway = Gateway::start(None);
    let id = &gateway.id;
    let all = mosquitto_sub(&gateway, &["-t", "#", "-W", "4"]);
    let first_level = mosquitto_sub(&gateway, &["-t", &format!("+/{id}"), "-W", "4"]);
    for topic in [
        format!("$SYS/{id}"),
        format!("$x/{id}"),
        format!("plain/{id}"),
    ] {
        let status = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &gateway.mqtt_port.to_string()])
            .args(["-q", "1", "-t", &topic, "-m", "m"])
            .status()
            .expect("mosquitto_pub runs");
        assert!(status.success());
    }
    // An MQTT 5 publisher to a `$` topic no mapping takes is served as a broker serves it.
    let mut v5 = connected(&gateway, 5, &format!("{id}-dollar"), 60);
    v5.send(&publish(5, &format!("$SYS/{id}"), 9, &[], b"{}"));
    assert_eq!(v5.packet(), (0x40, vec![0, 9]), "PUBACK, success");
    for sub in [all, first_level] {
        let mine: Vec<String> = lines(sub)
            .into_iter()
            .filter(|l| l.contains(id.as_str()))
            .collect();
        assert_eq!(mine, [format!("plain/{id} m")], "only the plain topic");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_only_that_connection() {
    let gateway = Gateway::start(None);
    let db = db().await;
    let dev = format!("{}-bystander", gateway.id);
    // A device connected before all this, and still served after.
    let mut bystander = connected(&gateway, 4, &dev, 60);

    // A second CONNECT: closed (MQTT 5: told it is a protocol error).
    let mut twice = connected(&gateway, 4, &format!("{}-twice", gateway.id), 60);
    twice.send(&connect(4, "again", true, 60, None));
    assert_eq!(twice.closed(), b"");
    let mut twice5 = connected(&gateway, 5, &format!("{}-twice5", gateway.id), 60);
    twice5.send(&connect(5, "again", true, 60, None));
    assert_eq!(twice5.closed(), [DISCONNECT, 1, 0x82]);

    // Not MQTT at all: closed without a CONNACK.
    let mut name = Raw::connect(&gateway);
    let mut bad = connect(4, "x", true, 60, None);
    bad[4..8].copy_from_slice(b"MQTX");
    name.send(&bad);
    assert_eq!(name.closed(), b"");

    // MQTT 3.1: refused with return code 1 (unacceptable protocol version), then closed.
    let mut old = Raw::connect(&gateway);
    let mut body = string(b"MQIsdp");
    body.extend_from_slice(&[3, 0x02, 0, 60]);
    body.extend(string(b"old"));
    old.send(&packet(0x10, &body));
    assert_eq!(old.closed(), [0x20, 2, 0, 1]);

    // A malformed remaining length: closed (MQTT 5: malformed packet).
    let mut garbled = connected(&gateway, 4, &format!("{}-garbled", gateway.id), 60);
    garbled.send(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert_eq!(garbled.closed(), b"");
    let mut garbled5 = connected(&gateway, 5, &format!("{}-garbled5", gateway.id), 60);
    garbled5.send(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]);
    assert_eq!(garbled5.closed(), [DISCONNECT, 1, 0x81]);

    bystander.send(&publish(
        4,
        &format!("sensors/{dev}/temp"),
        7,
        &[],
        br#"{"value": 5, "ts": 1700000000000}"#,
    ));
    assert_eq!(bystander.read_exact(4), [0x40, 2, 0, 7], "PUBACK");
    assert_eq!(wait_rows(&db, &dev, 1).await.len(), 1);
}

#[test]
fn zero_length_client_ids_as_the_spec_says() {
    let gateway = Gateway::start(None);
    // 3.1.1 with a persistent session: identifier rejected (return code 2), closed.
    let mut persistent = Raw::connect(&gateway);
    persistent.send(&connect(4, "", false, 60, None));
    assert_eq!(persistent.closed(), [0x20, 2, 0, 2]);
    // MQTT 5 without clean start: client identifier not valid (0x85).
    let mut persistent5 = Raw::connect(&gateway);
    persistent5.send(&connect(5, "", false, 60, None));
    let bytes = persistent5.closed();
    assert_eq!(&bytes[..4], [0x20, 3, 0, 0x85], "{bytes:?}");
    // Clean sessions are accepted; MQTT 5 is told the identifier it was given.
    let seen = paho(&["empty-id", &gateway.mqtt_port.to_string()]);
    assert_eq!(seen["v311_reason"], 0, "{seen}");
    assert_eq!(seen["v5_reason"], 0, "{seen}");
    assert!(
        seen["v5_assigned"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{seen}"
    );
}

fn small_limits() -> Gateway {
    Gateway::start(Some(Box::new(|c: &mut toml::Table| {
        set(c, &["ingress", "max_inflight_per_connection"], 7);
        set(c, &["ingress", "max_packet_size"], 4096);
        set(c, &["ingress", "topic_alias_maximum"], 5);
    })))
}

#[test]
fn mqtt5_connack_tells_what_the_port_enforces_and_it_is_enforced() {
    let gateway = small_limits();
    let seen = paho(&["connack", &gateway.mqtt_port.to_string()]);
    assert_eq!(seen["reason"], 0, "{seen}");
    let p = &seen["properties"];
    assert_eq!(p["ReceiveMaximum"], 7, "{seen}");
    assert_eq!(p["MaximumPacketSize"], 4096, "{seen}");
    assert_eq!(p["TopicAliasMaximum"], 5, "{seen}");
    assert_eq!(p["RetainAvailable"], 1, "{seen}");
    assert_eq!(p["WildcardSubscriptionAvailable"], 1, "{seen}");
    assert_eq!(p["SharedSubscriptionAvailable"], 1, "{seen}");
    assert_eq!(p["SubscriptionIdentifierAvailable"], 1, "{seen}");

    let topic = format!("sensors/{}-limits/temp", gateway.id);
    let body = br#"{"value": 1, "ts": 1700000000000}"#;
    // Eight unacknowledged QoS 1 publishes against a receive maximum of seven.
    let mut eager = connected(&gateway, 5, &format!("{}-eager", gateway.id), 60);
    let burst: Vec<u8> = (1..=8)
        .flat_map(|i| publish(5, &topic, i, &[], body))
        .collect();
    eager.send(&burst);
    let bytes = eager.closed();
    assert!(bytes.ends_with(&[DISCONNECT, 1, 0x93]), "{bytes:?}");

    // A packet over the maximum packet size: MQTT 5 is told, 3.1.1 is closed.
    let mut big = connected(&gateway, 5, &format!("{}-big", gateway.id), 60);
    big.send(&publish(5, &topic, 1, &[], &vec![b' '; 5000]));
    let bytes = big.closed();
    assert_eq!(bytes, [DISCONNECT, 1, 0x95]);
    let mut big4 = connected(&gateway, 4, &format!("{}-big4", gateway.id), 60);
    big4.send(&publish(4, &topic, 1, &[], &vec![b' '; 5000]));
    let bytes = big4.closed();
    assert_eq!(bytes, b"");

    // Topic aliases over the maximum, or used before they are set up.
    for (alias, topic) in [(6u8, topic.as_str()), (2, "")] {
        let mut aliased = connected(&gateway, 5, &format!("{}-alias{alias}", gateway.id), 60);
        aliased.send(&publish(5, topic, 1, &[0x23, 0, alias], body));
        let bytes = aliased.closed();
        assert_eq!(bytes, [DISCONNECT, 1, 0x94], "alias {alias}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_resolve_and_properties_reach_kafka_headers() {
    let gateway = Gateway::start(None);
    let db = db().await;
    let dev = format!("{}-paho", gateway.id);
    let seen = paho(&["alias", &gateway.mqtt_port.to_string(), &dev]);
    assert_eq!(seen["acked"], 3, "{seen}");
    let rows = wait_rows(&db, &dev, 3).await;
    assert_eq!(
        rows.iter()
            .map(|r| (r.metric.as_str(), r.value))
            .collect::<Vec<_>>(),
        [
            ("temp", Some(0.0)),
            ("temp", Some(1.0)),
            ("temp", Some(2.0))
        ]
    );
    let records = read_topic(&gateway.readings_topic, 3).await;
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(r.key, dev.as_bytes(), "keyed by the aliased topic's device");
        assert_eq!(r.header("site"), Some("north"), "{r:?}");
        assert_eq!(
            r.header("mqtt.content_type"),
            Some("application/json"),
            "{r:?}"
        );
        let record: serde_json::Value = serde_json::from_slice(&r.payload).expect("record JSON");
        assert_eq!(record["mqtt_topic"], format!("sensors/{dev}/temp"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_format_indicator_utf8_is_checked_with_a_reason_string() {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let gateway = Gateway::start(None);
    let db = db().await;
    let dev = format!("{}-utf8", gateway.id);
    let (client, mut eventloop) =
        AsyncClient::new(MqttOptions::new(&dev, "127.0.0.1", gateway.mqtt_port), 8);
    let text = PublishProperties {
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    let topic = format!("sensors/{dev}/temp");
    // CBOR {"value": 1.0} is not UTF-8; the JSON after it is.
    let cbor = vec![0xa1, 0x65, b'v', b'a', b'l', b'u', b'e', 0xf9, 0x3c, 0x00];
    let json = br#"{"value": 2, "ts": 1700000000000}"#.to_vec();
    for payload in [cbor.clone(), json] {
        client
            .publish_with_properties(&topic, QoS::AtLeastOnce, false, payload, text.clone())
            .await
            .expect("queued");
    }
    let acks = tokio::time::timeout(Duration::from_secs(30), async {
        let mut acks = Vec::new();
        while acks.len() < 2 {
            if let Event::Incoming(P5::PubAck(ack)) = eventloop.poll().await.expect("connected") {
                acks.push((ack.reason, ack.properties.and_then(|p| p.reason_string)));
            }
        }
        acks
    })
    .await
    .expect("two PUBACKs within 30 s");
    assert_eq!(acks[0].0, PubAckReason::PayloadFormatInvalid);
    assert!(
        acks[0].1.as_deref().is_some_and(|s| s.contains("UTF-8")),
        "reason string: {:?}",
        acks[0].1
    );
    assert_eq!(acks[1], (PubAckReason::Success, None));
    assert_eq!(wait_rows(&db, &dev, 1).await[0].value, Some(2.0));
    let letters = read_topic(&gateway.dlq_topic, 1).await;
    assert_eq!(letters[0].payload, cbor);
    assert_eq!(letters[0].header("reason"), Some("payload_not_utf8"));
    assert_eq!(letters[0].header("mqtt.payload_format"), Some("utf-8"));
}
