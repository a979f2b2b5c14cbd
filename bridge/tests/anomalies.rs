//! Anomaly detection end to end on real parts: a rumqttc device publishes a series with a
//! spike and a stuck run, another a normal one, through a real `sluice`, tansu and
//! PostgreSQL; the `anomalies` rows and the `sensor.anomalies` records are checked, and a
//! writer that reads every record again (its offsets lost) writes and publishes no anomaly
//! twice.

mod common;

use std::time::Duration;

use common::{db, read_topic, topic_consumer, wait_for, wait_rows, Gateway};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const START_MS: i64 = 1_700_000_000_000;

/// A deterministic noise in [-1, 1].
fn noise(i: i64) -> f64 {
    let mut x = (i as u64)
        .wrapping_add(7)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x % 2_000_001) as f64 / 1_000_000.0 - 1.0
}

/// Publishes `values` as QoS 1 JSON readings of `metric`, one a second of reading time,
/// and waits for every PUBACK.
async fn publish(gateway: &Gateway, device: &str, metric: &str, values: &[f64]) {
    let mut options = MqttOptions::new(device, "127.0.0.1", gateway.mqtt_port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(options, values.len() + 8);
    for (i, v) in values.iter().enumerate() {
        let ts = START_MS + i as i64 * 1000;
        let payload = format!("{{\"value\": {v}, \"ts\": {ts}}}");
        client
            .publish(
                format!("sensors/{device}/{metric}"),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await
            .expect("queued");
    }
    let mut acked = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        while acked < values.len() {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("{device}: {e}"),
            }
        }
    })
    .await
    .expect("every reading acknowledged within 60 s");
    let _ = client.disconnect().await;
}

/// The (kind, time) of every record on `topic`'s 3 partitions, read to their end.
async fn topic_contents(topic: &str) -> Vec<(String, String)> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer = topic_consumer(&topic, true);
        let mut out = Vec::new();
        let mut ended = std::collections::HashSet::new();
        let start = std::time::Instant::now();
        while ended.len() < 3 {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{topic} read to its end"
            );
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let json: serde_json::Value =
                        serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON");
                    out.push((
                        json["kind"].as_str().unwrap_or_default().to_owned(),
                        json["time"].as_str().unwrap_or_default().to_owned(),
                    ));
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    ended.insert(p);
                }
                _ => {}
            }
        }
        out.sort();
        out
    })
    .await
    .expect("reader")
}

/// (device, metric, time in ms, kind, value) of the anomalies of devices starting `prefix`.
async fn anomalies(
    db: &tokio_postgres::Client,
    prefix: &str,
) -> Vec<(String, String, i64, String, f64)> {
    db.query(
        "SELECT device_id, metric, (extract(epoch FROM time) * 1000)::bigint, kind, value \
         FROM anomalies WHERE starts_with(device_id, $1) ORDER BY device_id, time, kind",
        &[&prefix],
    )
    .await
    .expect("query anomalies")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_and_a_stuck_run_are_stored_and_published_once_and_a_normal_device_is_left_alone() {
    let mut gateway = Gateway::start(None);
    let db = db().await;
    let odd = format!("{}-odd", gateway.id);
    let calm = format!("{}-calm", gateway.id);
    // 90 readings about 20 with noise of +-0.5; the odd device's 41st is 60 and its 61st to
    // 75th repeat its 60th.
    let normal: Vec<f64> = (0..90).map(|i| 20.0 + 0.5 * noise(i)).collect();
    let mut values = normal.clone();
    values[40] = 60.0;
    for v in &mut values[60..75] {
        *v = normal[59];
    }
    publish(&gateway, &odd, "temp", &values).await;
    publish(&gateway, &calm, "temp", &normal).await;
    wait_rows(&db, &gateway.id, 180).await;

    // The stuck run is flagged at its tenth equal value: the 60th reading and 9 repeats.
    let want = vec![
        (
            odd.clone(),
            "temp".to_owned(),
            START_MS + 40_000,
            "spike".to_owned(),
            60.0,
        ),
        (
            odd.clone(),
            "temp".to_owned(),
            START_MS + 68_000,
            "stuck".to_owned(),
            normal[59],
        ),
    ];
    let mut got = Vec::new();
    for _ in 0..50 {
        got = anomalies(&db, &gateway.id).await;
        if got.len() >= want.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(got, want, "nothing for {calm}");
    let band: (f64, f64, f64, f64) = {
        let r = db
            .query_one(
                "SELECT expected, low, high, score FROM anomalies \
                 WHERE device_id = $1 AND kind = 'spike'",
                &[&odd],
            )
            .await
            .expect("the spike");
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert!((band.0 - 20.0).abs() < 0.5, "expected about 20: {band:?}");
    assert!(
        band.1 < 20.0 && 20.0 < band.2 && band.2 < 60.0 && band.3 > 6.0,
        "{band:?}"
    );

    let records = read_topic(&gateway.anomalies_topic, 2).await;
    let mut published: Vec<(String, String, String)> = records
        .iter()
        .map(|r| {
            let json: serde_json::Value = serde_json::from_slice(&r.payload).expect("JSON");
            assert_eq!(r.key, odd.as_bytes(), "keyed by device");
            assert_eq!(json["device_id"], odd.as_str());
            (
                json["kind"].as_str().unwrap_or_default().to_owned(),
                json["time"].as_str().unwrap_or_default().to_owned(),
                json["metric"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    published.sort();
    assert_eq!(
        published,
        vec![
            ("spike".into(), "2023-11-14T22:14:00Z".into(), "temp".into()),
            ("stuck".into(), "2023-11-14T22:14:28Z".into(), "temp".into()),
        ]
    );
    assert_eq!(
        gateway.metric("sluice_anomalies_total{kind=\"spike\"}"),
        1.0
    );
    assert!(gateway.metrics().contains("sluice_detector_seconds"));

    // The writer forgets how far it got and reads every record again, with a fresh
    // detector: the same anomalies are found, and none is stored twice.
    gateway.signal(0, "TERM");
    gateway.wait_exit(0);
    let group = format!("writer-{}", gateway.id);
    db.execute("DELETE FROM sluice_offsets WHERE group_id = $1", &[&group])
        .await
        .expect("offsets forgotten");
    gateway.spawn(&["--role", "all"], &[]);
    wait_for(
        Duration::from_secs(60),
        "sluice to serve /metrics again",
        || std::net::TcpStream::connect(("127.0.0.1", gateway.http_port)).is_ok(),
    );
    wait_for(Duration::from_secs(60), "every record read again", || {
        gateway.metric("sluice_writer_duplicates_total") >= 180.0
    });
    assert_eq!(
        gateway.metric("sluice_anomalies_total{kind=\"spike\"}"),
        1.0
    );
    assert_eq!(anomalies(&db, &gateway.id).await, want, "each anomaly once");
    // Nor published twice: a graceful stop flushes whatever the replay would have sent.
    gateway.signal(1, "TERM");
    gateway.wait_exit(1);
    assert_eq!(
        topic_contents(&gateway.anomalies_topic).await,
        vec![
            ("spike".into(), "2023-11-14T22:14:00Z".into()),
            ("stuck".into(), "2023-11-14T22:14:28Z".into()),
        ],
        "each anomaly published once"
    );
}
