//! `sluice-sim`: connects N virtual sensors to an MQTT gateway, each on its own connection,
//! publishes a reading per sensor and metric every interval for a bounded time, shows
//! progress, and reports throughput and publish-to-ack latency; `--verify-db` then checks
//! that every acknowledged reading is in the database exactly once.

mod sensor;
mod stats;
mod verify;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rumqttc::QoS;
use serde::Serialize;
use tokio::sync::Mutex;

use sensor::{Format, Plan};
use stats::{Latency, Stats};

#[derive(Debug, Parser)]
#[command(version, about = "Virtual MQTT sensors for load and latency tests")]
struct Cli {
    /// Gateway address, host:port.
    #[arg(long, env = "MQTT_ADDR", default_value = "127.0.0.1:1883")]
    addr: String,
    #[arg(long, default_value_t = 1000)]
    sensors: usize,
    /// Milliseconds between two readings of one sensor (per metric).
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// How long to publish, in seconds; unacknowledged readings get 30 s more.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    #[arg(long, value_enum, default_value = "json")]
    format: Format,
    /// Metrics per sensor, each its own topic (`sensors/{device}/m0`, `m1`, ...).
    #[arg(long, default_value_t = 1)]
    metrics: usize,
    /// First topic level: readings go to `{topic_root}/{device}/{metric}`.
    #[arg(long, default_value = "sensors")]
    topic_root: String,
    /// Device id prefix; devices are `{prefix}-{n}`.
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 500)]
    connect_rate: u64,
    /// After the run, check every acknowledged reading against this database.
    #[arg(long, env = "SIM_VERIFY_DB")]
    verify_db: Option<String>,
    /// How long verify waits for the writer to catch up, in seconds.
    #[arg(long, default_value_t = 60)]
    verify_wait: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Seconds between progress lines (0: none).
    #[arg(long, default_value_t = 5)]
    progress: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    sensors: usize,
    qos: u8,
    format: Format,
    seconds: f64,
    sent: i64,
    resent: i64,
    acked: i64,
    skipped: i64,
    unacked: i64,
    errors: u64,
    error_kinds: std::collections::BTreeMap<String, u64>,
    acked_per_second: f64,
    ack_latency_ms: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    verify: Option<verify::Verdict>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let (host, port) = cli
        .addr
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
        .with_context(|| format!("--addr {:?} is not host:port", cli.addr))?;
    let qos = match cli.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let started = Instant::now();
    let plan = Arc::new(Plan {
        host,
        port,
        prefix: cli.prefix.clone(),
        topic_root: cli.topic_root.clone(),
        qos,
        format: cli.format,
        interval: Duration::from_millis(cli.interval_ms.max(1)),
        metrics: (0..cli.metrics.max(1)).map(|m| format!("m{m}")).collect(),
        stop_at: started + Duration::from_secs(cli.duration),
    });
    let stats = Arc::new(Stats::new());
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::with_capacity(cli.sensors);
    let ramp = Duration::from_secs_f64(1.0 / cli.connect_rate.max(1) as f64);
    let progress = tokio::spawn(show_progress(stats.clone(), cli.progress, started));
    for i in 0..cli.sensors {
        tasks.push(tokio::spawn(sensor::run(
            i,
            plan.clone(),
            stats.clone(),
            acked.clone(),
        )));
        tokio::time::sleep(ramp).await;
    }
    for t in tasks {
        t.await.context("sensor task")?;
    }
    progress.abort();
    let seconds = started.elapsed().as_secs_f64();
    let acked = acked.lock().await;
    let verdict = match &cli.verify_db {
        Some(url) => Some(
            verify::verify(
                url,
                &cli.prefix,
                &acked,
                Duration::from_secs(cli.verify_wait),
            )
            .await?,
        ),
        None => None,
    };
    let report = Report {
        sensors: cli.sensors,
        qos: cli.qos,
        format: cli.format,
        seconds,
        sent: stats.sent.get(),
        resent: stats.resent.get(),
        acked: stats.acked.get(),
        skipped: stats.skipped.get(),
        unacked: stats.unacked.get(),
        errors: stats.error_count(),
        error_kinds: stats.errors(),
        acked_per_second: stats.acked.get() as f64 / cli.duration.max(1) as f64,
        ack_latency_ms: stats.latency_ms(),
        verify: verdict,
    };
    print_report(&report);
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    match &report.verify {
        Some(v) if v.lost > 0 || v.duplicates > 0 => std::process::exit(3),
        _ => Ok(()),
    }
}

async fn show_progress(stats: Arc<Stats>, every: u64, started: Instant) {
    if every == 0 {
        return;
    }
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(every)).await;
        let acked = stats.acked.get();
        eprintln!(
            "[{:>5.0}s] connected={} sent={} acked={} ({:.0}/s) inflight={} skipped={} errors={}",
            started.elapsed().as_secs_f64(),
            stats.connected.get(),
            stats.sent.get(),
            acked,
            (acked - last) as f64 / every as f64,
            stats.sent.get() - stats.resent.get() - acked,
            stats.skipped.get(),
            stats.error_count(),
        );
        last = acked;
    }
}

fn print_report(r: &Report) {
    let l = &r.ack_latency_ms;
    println!(
        "sensors={} qos={} format={:?} seconds={:.1}",
        r.sensors, r.qos, r.format, r.seconds
    );
    println!(
        "sent={} resent={} acked={} skipped={} unacked={} errors={}",
        r.sent, r.resent, r.acked, r.skipped, r.unacked, r.errors
    );
    println!("rate={:.0} acked/s", r.acked_per_second);
    println!(
        "publish-to-ack ms: p50={:.2} p90={:.2} p99={:.2} p99.9={:.2} max={:.2} (n={})",
        l.p50, l.p90, l.p99, l.p999, l.max, l.samples
    );
    for (kind, n) in &r.error_kinds {
        println!("error x{n}: {kind}");
    }
    if let Some(v) = &r.verify {
        println!(
            "verify: acked={} rows={} lost={} duplicates={}",
            v.acked, v.rows, v.lost, v.duplicates
        );
    }
}
