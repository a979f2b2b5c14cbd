//! "Acknowledged" means "in Kafka": with the Kafka broker down a QoS 1 publish is not
//! acknowledged until it is back, unless its mapping says `ack = "receipt"`.

mod common;

use std::process::Child;
use std::time::Duration;

use common::{add_receipt_mapping, db, wait_for, wait_rows, Gateway, Tansu};

fn mosquitto_pub(gateway: &Gateway, topic: &str, body: &str) -> Child {
    gateway
        .mosquitto_pub()
        .args(["-t", topic, "-m", body])
        .spawn()
        .expect("mosquitto_pub runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puback_waits_for_kafka_unless_the_mapping_acks_on_receipt() {
    let mut kafka = Tansu::start();
    let mut gateway = Gateway::configure(Some(Box::new(add_receipt_mapping)));
    gateway.spawn(&["--role", "all"], &[("KAFKA_BROKERS", &kafka.brokers())]);
    gateway.wait_ready();
    let db = db().await;
    let dev = format!("{}-gated", gateway.id);

    kafka.kill();
    let mut gated = mosquitto_pub(
        &gateway,
        &format!("sensors/{dev}/temp"),
        r#"{"value": 1, "ts": 1700000000000}"#,
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        gated.try_wait().expect("status").is_none(),
        "mosquitto_pub -q 1 must not complete while Kafka is down"
    );

    let mut receipt = mosquitto_pub(
        &gateway,
        &format!("fast/{dev}/temp"),
        r#"{"value": 2, "ts": 1700000000001}"#,
    );
    wait_for(
        Duration::from_secs(5),
        "the receipt-acked publish to complete",
        || matches!(receipt.try_wait(), Ok(Some(s)) if s.success()),
    );
    assert!(
        gated.try_wait().expect("status").is_none(),
        "still waiting for Kafka"
    );

    kafka.restart();
    wait_for(
        Duration::from_secs(90),
        "the gated publish to complete once Kafka is back",
        || matches!(gated.try_wait(), Ok(Some(s)) if s.success()),
    );
    let rows = wait_rows(&db, &dev, 2).await;
    assert_eq!(
        rows.iter().map(|r| r.value).collect::<Vec<_>>(),
        vec![Some(1.0), Some(2.0)],
        "both readings land once Kafka is back: {rows:?}"
    );
}
