//! Loads N synthetic readings into a Kafka topic as Sluice records (one reading per record,
//! as devices publish them) and writes the same readings as a binary COPY file (columns
//! time, device_id, metric, value, received_at) for a raw `\copy`, so that
//! `scripts/bench-writer.sh` can compare the writer with the physical limit on equal data.
//!   cargo run --release --example load_kafka -- BROKERS TOPIC N COPY_FILE

use std::io::{BufWriter, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{TimeZone, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use sluice::record::{Reading, Record};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, brokers, topic, n, copy_file] = &args[..] else {
        anyhow::bail!("usage: load_kafka BROKERS TOPIC N COPY_FILE");
    };
    let n: u64 = n.parse().context("N")?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut out = BufWriter::new(std::fs::File::create(copy_file).context("COPY file")?);
    // PostgreSQL's binary COPY header: signature, flags, header extension length.
    out.write_all(b"PGCOPY\n\xff\r\n\0")?;
    out.write_all(&[0; 8])?;
    let start = Utc.timestamp_millis_opt(1_790_000_000_000).unwrap();
    let epoch_2000 = Utc.timestamp_opt(946_684_800, 0).unwrap();
    let began = Instant::now();
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..n {
        let device_id = format!("bench-{}", i % 10_000);
        let time = start + chrono::Duration::milliseconds((i / 10_000) as i64 * 1000);
        let value = (i % 1000) as f64 / 10.0;
        let record = Record {
            device_id: device_id.clone(),
            mqtt_topic: format!("sensors/{device_id}/temp"),
            qos: 1,
            client_id: device_id.clone(),
            received_at: time,
            readings: vec![Reading {
                metric: "temp".into(),
                time,
                value: Some(value),
                ..Reading::default()
            }],
        };
        let micros = (time - epoch_2000).num_microseconds().context("time")?;
        out.write_all(&5i16.to_be_bytes())?;
        for field in [
            &micros.to_be_bytes()[..],
            device_id.as_bytes(),
            b"temp",
            &value.to_be_bytes(),
            &micros.to_be_bytes(),
        ] {
            out.write_all(&(field.len() as i32).to_be_bytes())?;
            out.write_all(field)?;
        }
        let payload = record.to_json();
        loop {
            match producer.send_result(FutureRecord::to(topic).key(&device_id).payload(&payload)) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        if pending.len() == 10_000 {
            for d in pending.drain(..) {
                d.await?.map_err(|(e, _)| e).context("delivery")?;
            }
        }
    }
    for d in pending.drain(..) {
        d.await?.map_err(|(e, _)| e).context("delivery")?;
    }
    producer.flush(Duration::from_secs(30))?;
    out.write_all(&(-1i16).to_be_bytes())?;
    out.flush()?;
    eprintln!(
        "loaded {n} records in {:.1}s",
        began.elapsed().as_secs_f64()
    );
    Ok(())
}
