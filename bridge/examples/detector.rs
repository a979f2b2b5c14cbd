//! The anomaly detector's cost alone: N readings (default 2,000,000) of 10,000 noisy
//! series, judged in batches of 20,000 as the writer takes them; prints readings/s on one
//! core and what it found. `cargo run --release --example detector [N]`
use std::time::Instant;

use chrono::{TimeZone, Utc};
use sluice::anomaly::Detector;
use sluice::record::Reading;
use sluice::settings::AnomalySettings;

const SERIES: usize = 10_000;
const BATCH: usize = 20_000;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let start = Utc.timestamp_millis_opt(1_790_000_000_000).unwrap();
    let devices: Vec<String> = (0..SERIES).map(|d| format!("bench-{d}")).collect();
    // A cheap deterministic noise: each series its own level and spread.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let readings: Vec<(usize, Reading)> = (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let d = i % SERIES;
            let noise = (x % 2001) as f64 / 1000.0 - 1.0;
            let reading = Reading {
                metric: "temp".into(),
                time: start + chrono::Duration::seconds((i / SERIES) as i64),
                value: Some(d as f64 + (1 + d % 7) as f64 * noise),
                ..Reading::default()
            };
            (d, reading)
        })
        .collect();
    let mut detector = Detector::new(AnomalySettings::default());
    let began = Instant::now();
    let mut found = 0;
    for batch in readings.chunks(BATCH) {
        found += detector
            .observe(batch.iter().map(|(d, r)| (devices[*d].as_str(), r)))
            .len();
    }
    let seconds = began.elapsed().as_secs_f64();
    println!(
        "detector: {n} readings of {} series in {seconds:.2} s = {:.0} readings/s on one core \
         ({:.2} us each); {found} anomalies",
        detector.series(),
        n as f64 / seconds,
        seconds * 1e6 / n as f64,
    );
}
