//! `sluice-sim`: connects N virtual sensors to an MQTT gateway (or its HTTP ingest), each on
//! its own connection, publishes a reading per sensor and metric every interval for a
//! bounded time, shows progress, and reports throughput and publish-to-ack latency; `--verify-db` then checks
//! that every acknowledged reading is in the database exactly once. With `--anomalies` the
//! sensors inject labelled anomalies, and the run ends with the detector's precision and
//! recall (`--score` scores a labels file alone).

mod chart;
mod http;
mod labels;
mod sensor;
mod stats;
mod verify;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rumqttc::QoS;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use sensor::{Format, Plan};
use stats::{Latency, Stats};
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Virtual sensors (MQTT, or HTTP posts) for load and latency tests"
)]
struct Cli {
    /// A scenario file (TOML, the load options below by their long names with `_`, e.g.
    /// `sensors = 10000`); options given on the command line win.
    #[arg(long)]
    scenario: Option<std::path::PathBuf>,
    #[command(flatten)]
    load: Load,
    /// First topic level of single readings: `{topic_root}/{device}/{metric}`.
    #[arg(long, default_value = "sensors")]
    topic_root: String,
    /// Device id prefix; devices are `{prefix}-{n}`.
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// After the run, check every acknowledged reading against this database.
    #[arg(long, env = "SIM_VERIFY_DB")]
    verify_db: Option<String>,
    /// How long verify waits for the writer to catch up, in seconds.
    #[arg(long, default_value_t = 60)]
    verify_wait: u64,
    /// Also write the report as JSON (with a per-second timeline) to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Also write the report as a markdown table to this file.
    #[arg(long)]
    markdown: Option<std::path::PathBuf>,
    /// Also draw acks per second and latency over the run as a PNG.
    #[arg(long)]
    chart: Option<std::path::PathBuf>,
    /// Seconds between progress lines (0: none).
    #[arg(long, default_value_t = 5)]
    progress: u64,
    /// Connect over TLS, trusting the gateway's certificate from this CA bundle (PEM).
    #[arg(long)]
    cafile: Option<std::path::PathBuf>,
    /// With --cafile: a client certificate (PEM chain) and its key, shared by every sensor.
    #[arg(long, requires = "key")]
    cert: Option<std::path::PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<std::path::PathBuf>,
    /// User name and password every sensor logs in with.
    #[arg(long, requires = "password")]
    username: Option<String>,
    #[arg(long, env = "SIM_PASSWORD", requires = "username")]
    password: Option<String>,
    /// HTTP bearer token every sensor posts with (`--transport http`; the TLS and login
    /// options above and --topic-root are for MQTT).
    #[arg(long, env = "SIM_TOKEN")]
    token: Option<String>,
    /// With --anomalies: where the labels go (JSON lines: a first line with the run's
    /// device prefix and times, then device, metric, start_ms, end_ms, kind).
    #[arg(long)]
    labels: Option<std::path::PathBuf>,
    /// Only score this labels file against the `anomalies` table at --verify-db, and exit.
    #[arg(long, requires = "verify_db")]
    score: Option<std::path::PathBuf>,
    /// An anomaly matches a label whose span, widened this much either way, holds its time.
    #[arg(long, default_value_t = 1000)]
    tolerance_ms: i64,
}

/// A TLS client configuration from PEM files: the CA bundle that signed the gateway's
/// certificate, and optionally the sensors' client certificate.
fn tls_config(cli: &Cli) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let Some(cafile) = &cli.cafile else {
        return Ok(None);
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(cafile).with_context(|| cafile.display().to_string())? {
        roots.add(ca.with_context(|| cafile.display().to_string())?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&cli.cert, &cli.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| cert.display().to_string())?;
            let key =
                PrivateKeyDer::from_pem_file(key).with_context(|| key.display().to_string())?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(Arc::new(config)))
}

/// The shape of the load: from the command line, a scenario file, or both.
#[derive(Debug, Clone, Default, clap::Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Load {
    /// Gateway addresses, host:port, comma-separated; sensors are spread over them
    /// [default: $MQTT_ADDR or 127.0.0.1:1883; with --transport http, $INGEST_ADDR or
    /// 127.0.0.1:8080].
    #[arg(long)]
    addr: Option<String>,
    /// "mqtt" (QoS as --qos) or "http": POST /v1/readings/..., acknowledged by 202 (QoS
    /// and TLS options do not apply) [default: mqtt].
    #[arg(long)]
    transport: Option<Transport>,
    /// Sensors, each on its own connection [default: 1000].
    #[arg(long)]
    sensors: Option<usize>,
    /// Total readings per second of the fleet; sets the interval (overrides interval_ms).
    #[arg(long)]
    rate: Option<f64>,
    /// Milliseconds between two publishes of one sensor (per metric) [default: 1000].
    #[arg(long)]
    interval_ms: Option<u64>,
    /// How long to publish, in seconds; unacknowledged readings get 30 s more [default: 30].
    #[arg(long)]
    duration: Option<u64>,
    /// QoS of each sensor, cycled over the fleet: "1", or a mix like "0,1,1,2" [default: 1].
    #[arg(long)]
    qos: Option<String>,
    /// Payload format of each sensor, cycled: json, cbor, senml, e.g. "json,cbor,senml".
    #[arg(long)]
    format: Option<String>,
    /// Metrics per sensor, each its own publish per interval [default: 1].
    #[arg(long)]
    metrics: Option<usize>,
    /// SenML records per publish (format senml) [default: 1].
    #[arg(long)]
    pack: Option<usize>,
    /// JSON and SenML payloads padded with whitespace to this many bytes [default: none].
    #[arg(long)]
    payload_bytes: Option<usize>,
    /// Sensor clocks are off by up to this many milliseconds, either way [default: 0].
    #[arg(long)]
    clock_skew_ms: Option<i64>,
    /// Fraction of publishes sent twice, as by a device that missed an ack [default: 0].
    #[arg(long)]
    duplicates: Option<f64>,
    /// Seconds between reconnect storms (0: none) [default: 0].
    #[arg(long)]
    reconnect_every_s: Option<u64>,
    /// Fraction of sensors that drop and re-open their connection in a storm [default: 0.5].
    #[arg(long)]
    reconnect_fraction: Option<f64>,
    /// New connections per second while ramping up [default: 500].
    #[arg(long)]
    connect_rate: Option<u64>,
    /// Chance that a reading starts a labelled anomaly (spike, stuck value, drift or
    /// dropout; after each metric's first 100 readings, 100 apart at least); each metric
    /// is then a noisy signal of its own [default: none].
    #[arg(long)]
    anomalies: Option<f64>,
}

impl Load {
    /// This load with the gaps filled from `other`.
    fn or(self, other: Load) -> Load {
        Load {
            addr: self.addr.or(other.addr),
            transport: self.transport.or(other.transport),
            sensors: self.sensors.or(other.sensors),
            rate: self.rate.or(other.rate),
            interval_ms: self.interval_ms.or(other.interval_ms),
            duration: self.duration.or(other.duration),
            qos: self.qos.or(other.qos),
            format: self.format.or(other.format),
            metrics: self.metrics.or(other.metrics),
            pack: self.pack.or(other.pack),
            payload_bytes: self.payload_bytes.or(other.payload_bytes),
            clock_skew_ms: self.clock_skew_ms.or(other.clock_skew_ms),
            duplicates: self.duplicates.or(other.duplicates),
            reconnect_every_s: self.reconnect_every_s.or(other.reconnect_every_s),
            reconnect_fraction: self.reconnect_fraction.or(other.reconnect_fraction),
            connect_rate: self.connect_rate.or(other.connect_rate),
            anomalies: self.anomalies.or(other.anomalies),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum Transport {
    Mqtt,
    Http,
}

fn list<T>(text: &str, what: &str, parse: impl Fn(&str) -> Option<T>) -> anyhow::Result<Vec<T>> {
    text.split(',')
        .map(|item| parse(item.trim()).with_context(|| format!("{what}: {item:?} is not valid")))
        .collect()
}

#[derive(Debug, Serialize)]
struct Report {
    load: Load,
    seconds: f64,
    sent: i64,
    resent: i64,
    duplicates_sent: i64,
    reconnects: i64,
    acked: i64,
    acked_readings: i64,
    skipped: i64,
    unacked: i64,
    errors: u64,
    error_kinds: std::collections::BTreeMap<String, u64>,
    acked_per_second: f64,
    readings_per_second: f64,
    ack_latency_ms: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    verify: Option<verify::Verdict>,
    timeline: Vec<stats::Second>,
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
    if let (Some(path), Some(url)) = (&cli.score, &cli.verify_db) {
        labels::print(&labels::score(url, path, cli.tolerance_ms).await?);
        return Ok(());
    }
    let scenario: Load = match &cli.scenario {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("scenario {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("scenario {}", path.display()))?
        }
        None => Load::default(),
    };
    let load = cli.load.clone().or(scenario);
    let transport = load.transport.unwrap_or(Transport::Mqtt);
    let (variable, fallback) = match transport {
        Transport::Mqtt => ("MQTT_ADDR", "127.0.0.1:1883"),
        Transport::Http => ("INGEST_ADDR", "127.0.0.1:8080"),
    };
    let default_addr = std::env::var(variable).unwrap_or_else(|_| fallback.to_owned());
    let gateways = list(
        load.addr.as_deref().unwrap_or(&default_addr),
        "--addr",
        |a| {
            let (h, p) = a.rsplit_once(':')?;
            Some((h.to_owned(), p.parse().ok()?))
        },
    )?;
    let qos = list(load.qos.as_deref().unwrap_or("1"), "--qos", |q| match q {
        "0" => Some(QoS::AtMostOnce),
        "1" => Some(QoS::AtLeastOnce),
        "2" => Some(QoS::ExactlyOnce),
        _ => None,
    })?;
    let formats = list(load.format.as_deref().unwrap_or("json"), "--format", |f| {
        serde_json::from_value(serde_json::Value::String(f.to_owned())).ok()
    })?;
    let sensors = load.sensors.unwrap_or(1000);
    let metrics = load.metrics.unwrap_or(1).max(1);
    let pack = load.pack.unwrap_or(1).max(1);
    let duration = load.duration.unwrap_or(30);
    // Readings per publish, averaged over the format mix (only SenML packs carry several).
    let per_publish = formats
        .iter()
        .map(|f| if *f == Format::Senml { pack } else { 1 })
        .sum::<usize>() as f64
        / formats.len() as f64;
    let interval = match load.rate {
        Some(rate) if rate > 0.0 => {
            Duration::from_secs_f64(sensors as f64 * metrics as f64 * per_publish / rate)
        }
        _ => Duration::from_millis(load.interval_ms.unwrap_or(1000).max(1)),
    };
    let duplicates = load.duplicates.unwrap_or(0.0);
    let skew = load.clock_skew_ms.unwrap_or(0).abs();
    let injection = match (load.anomalies, &cli.labels) {
        (None, _) => None,
        (Some(_), None) => anyhow::bail!("--anomalies needs --labels PATH"),
        (Some(f), Some(_)) if !(0.0..=1.0).contains(&f) => {
            anyhow::bail!("--anomalies: {f} is not a fraction")
        }
        (Some(_), Some(_)) if formats.contains(&Format::Senml) && pack > 1 => {
            anyhow::bail!("--anomalies: SenML packs of one record only (--pack 1)")
        }
        (Some(fraction), Some(_)) => Some(Arc::new(labels::Injection {
            fraction,
            labels: std::sync::Mutex::new(Vec::new()),
        })),
    };
    let started_ms = chrono::Utc::now().timestamp_millis();
    let started = Instant::now();
    let plan = Arc::new(Plan {
        gateways,
        prefix: cli.prefix.clone(),
        topic_root: cli.topic_root.clone(),
        qos,
        formats,
        interval,
        metrics: (0..metrics).map(|m| format!("m{m}")).collect(),
        pack,
        payload_bytes: load.payload_bytes.unwrap_or(0),
        clock_skew_ms: load.clock_skew_ms.unwrap_or(0),
        duplicate_every: if duplicates > 0.0 {
            (1.0 / duplicates).round().max(1.0) as u64
        } else {
            0
        },
        reconnect_fraction: load.reconnect_fraction.unwrap_or(0.5),
        stop_at: started + Duration::from_secs(duration),
        tls: tls_config(&cli)?,
        login: cli.username.clone().zip(cli.password.clone()),
        token: cli.token.clone(),
        injection: injection.clone(),
    });
    let stats = Arc::new(Stats::new());
    let acked = Arc::new(Mutex::new(Vec::new()));
    let (storm_tx, storms) = watch::channel(0u64);
    if let Some(every) = load.reconnect_every_s.filter(|&s| s > 0) {
        tokio::spawn(async move {
            for storm in 1.. {
                tokio::time::sleep(Duration::from_secs(every)).await;
                if storm_tx.send(storm).is_err() {
                    return;
                }
            }
        });
    }
    let mut tasks = Vec::with_capacity(sensors);
    let ramp = Duration::from_secs_f64(1.0 / load.connect_rate.unwrap_or(500).max(1) as f64);
    let progress = tokio::spawn(show_progress(stats.clone(), cli.progress, started));
    for i in 0..sensors {
        let (plan, stats, acked, storms) =
            (plan.clone(), stats.clone(), acked.clone(), storms.clone());
        tasks.push(match transport {
            Transport::Mqtt => tokio::spawn(sensor::run(i, plan, stats, acked, storms)),
            Transport::Http => tokio::spawn(http::run(i, plan, stats, acked, storms)),
        });
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
        load,
        seconds,
        sent: stats.sent.get(),
        resent: stats.resent.get(),
        duplicates_sent: stats.duplicates_sent.get(),
        reconnects: stats.reconnects.get(),
        acked: stats.acked.get(),
        acked_readings: stats.acked_readings.get(),
        skipped: stats.skipped.get(),
        unacked: stats.unacked.get(),
        errors: stats.error_count(),
        error_kinds: stats.errors(),
        acked_per_second: stats.acked.get() as f64 / duration.max(1) as f64,
        readings_per_second: stats.acked_readings.get() as f64 / duration.max(1) as f64,
        ack_latency_ms: stats.latency_ms(),
        verify: verdict,
        timeline: stats.timeline(),
    };
    print!("{}", text_report(&report));
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &cli.chart {
        chart::write(path, &report.timeline)?;
    }
    if let Some(path) = &cli.markdown {
        std::fs::write(path, markdown_report(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let (Some(injection), Some(path)) = (&injection, &cli.labels) {
        let run = labels::Run {
            prefix: cli.prefix.clone(),
            from_ms: started_ms - skew,
            to_ms: chrono::Utc::now().timestamp_millis() + skew,
        };
        let mut written = injection
            .labels
            .lock()
            .map_err(|_| anyhow::anyhow!("a sensor panicked"))?
            .clone();
        written.sort_by(|a, b| {
            (&a.device, &a.metric, a.start_ms).cmp(&(&b.device, &b.metric, b.start_ms))
        });
        labels::write(path, &run, &written)?;
        if let Some(url) = &cli.verify_db {
            println!("anomalies (labels in {}):", path.display());
            labels::print(&labels::score(url, path, cli.tolerance_ms).await?);
        }
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

fn text_report(r: &Report) -> String {
    use std::fmt::Write;
    let l = &r.ack_latency_ms;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "load: {}",
        serde_json::to_string(&r.load).unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "seconds={:.1} sent={} resent={} duplicates_sent={} reconnects={} acked={} acked_readings={} skipped={} unacked={} errors={}",
        r.seconds, r.sent, r.resent, r.duplicates_sent, r.reconnects, r.acked, r.acked_readings, r.skipped, r.unacked, r.errors
    );
    let _ = writeln!(
        out,
        "rate={:.0} acked publishes/s, {:.0} readings/s",
        r.acked_per_second, r.readings_per_second
    );
    let _ = writeln!(
        out,
        "publish-to-ack ms: p50={:.2} p90={:.2} p99={:.2} p99.9={:.2} max={:.2} (n={})",
        l.p50, l.p90, l.p99, l.p999, l.max, l.samples
    );
    for (kind, n) in &r.error_kinds {
        let _ = writeln!(out, "error x{n}: {kind}");
    }
    if let Some(v) = &r.verify {
        let _ = writeln!(
            out,
            "publish-to-row ms: p50={:.1} p99={:.1} max={:.1}",
            v.publish_to_row_ms.p50, v.publish_to_row_ms.p99, v.publish_to_row_ms.max
        );
        let _ = writeln!(
            out,
            "verify: acked={} rows={} lost={} duplicates={}",
            v.acked, v.rows, v.lost, v.duplicates
        );
    }
    out
}

fn markdown_report(r: &Report) -> String {
    let l = &r.ack_latency_ms;
    let mut rows = vec![
        (
            "load".to_owned(),
            format!("`{}`", serde_json::to_string(&r.load).unwrap_or_default()),
        ),
        (
            "acked publishes/s".into(),
            format!("{:.0}", r.acked_per_second),
        ),
        ("readings/s".into(), format!("{:.0}", r.readings_per_second)),
        (
            "publish-to-ack p50 / p90 / p99 / p99.9 / max (ms)".into(),
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2} / {:.2}",
                l.p50, l.p90, l.p99, l.p999, l.max
            ),
        ),
        (
            "sent / resent / duplicates sent / skipped / unacked".into(),
            format!(
                "{} / {} / {} / {} / {}",
                r.sent, r.resent, r.duplicates_sent, r.skipped, r.unacked
            ),
        ),
        ("reconnects".into(), r.reconnects.to_string()),
        ("errors".into(), format!("{} {:?}", r.errors, r.error_kinds)),
    ];
    if let Some(v) = &r.verify {
        rows.push((
            "publish-to-row p50 / p99 (ms)".into(),
            format!(
                "{:.1} / {:.1}",
                v.publish_to_row_ms.p50, v.publish_to_row_ms.p99
            ),
        ));
        rows.push((
            "lost / duplicates".into(),
            format!("{} / {}", v.lost, v.duplicates),
        ));
    }
    let mut out = String::from("| measure | value |\n|---|---|\n");
    for (k, v) in rows {
        out.push_str(&format!("| {k} | {v} |\n"));
    }
    out
}
