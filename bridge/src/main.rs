//! The `sluice` binary: reads the configuration and runs the roles it is asked for, the
//! embedded broker with the ingress, the writer, or both (the default), plus HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use sluice::lifecycle::{self, Backend};
use sluice::settings::Settings;
use sluice::{db, http, ingress, mapping, produce, writer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Broker, ingress and writer in one process.
    All,
    /// Broker and ingress: MQTT in, Kafka out.
    Ingress,
    /// Writer only: Kafka in, database out.
    Writer,
}

#[derive(Debug, Parser)]
#[command(
    version,
    about = "MQTT ingestion gateway: devices -> Kafka -> TimescaleDB"
)]
struct Cli {
    /// Configuration file; SLUICE__SECTION__KEY environment variables override it.
    #[arg(long, short, env = "SLUICE_CONFIG", default_value = "broker.toml")]
    config: PathBuf,
    #[arg(long, value_enum, default_value = "all")]
    role: Role,
    /// Apply database migrations and the [storage] lifecycle, and exit.
    #[arg(long)]
    migrate_only: bool,
}

fn main() {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice: {e}");
            std::process::exit(2);
        }
    };
    init_logging(settings.log.json);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli, settings)) {
        tracing::error!("{e:#}");
        eprintln!("sluice: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,rumqttd=warn,librdkafka=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    let with_writer = cli.role != Role::Ingress;
    let with_ingress = cli.role != Role::Writer;
    let mut backend = None;
    if with_writer || cli.migrate_only {
        let url = &settings.writer.database_url;
        db::migrate(url).await?;
        backend = Some(lifecycle::configure(url, &settings.storage).await?);
        if cli.migrate_only {
            return Ok(());
        }
    }
    let metrics = http::install_metrics().context("metrics recorder")?;
    let http_listener = tokio::net::TcpListener::bind(settings.http.listen)
        .await
        .with_context(|| format!("http.listen {}", settings.http.listen))?;
    let mappings = mapping::Mappings::new(&settings.mappings).context("mappings")?;
    let topic_refs = mappings.kafka_topics();

    let ingress_task = async {
        if !with_ingress {
            return std::future::pending().await;
        }
        create_topics(&settings, &topic_refs).await?;
        let producer = Arc::new(produce::Producer::new(&settings.kafka).context("kafka producer")?);
        let broker_v4 = settings.broker_addr(4).context("broker.v4 listener")?;
        let broker_v5 = settings.broker_addr(5);
        start_broker(settings.broker.clone(), broker_v4).await?;
        let listener = tokio::net::TcpListener::bind(settings.ingress.listen)
            .await
            .with_context(|| format!("ingress.listen {}", settings.ingress.listen))?;
        tracing::info!(listen = %settings.ingress.listen, "accepting MQTT 3.1.1 and 5 devices");
        let ingress = Arc::new(ingress::Ingress::new(
            settings.ingress.clone(),
            settings.limits.clone(),
            broker_v4,
            broker_v5,
            mappings.clone(),
            producer,
        ));
        ingress.serve(listener).await.context("ingress")
    };
    let writer_task = async {
        if !with_writer {
            return std::future::pending().await;
        }
        if backend == Some(Backend::PostgreSql) {
            let url = settings.writer.database_url.clone();
            tokio::spawn(lifecycle::run(url, settings.storage.clone()));
        }
        let w = writer::Writer::new(settings.writer.clone(), &settings.kafka, &topic_refs)?;
        tracing::info!(group = %settings.writer.group_id, "writer consuming");
        w.run().await.context("writer")
    };
    tracing::info!(listen = %settings.http.listen, "serving /metrics and /health");
    tokio::select! {
        r = ingress_task => r,
        r = writer_task => r,
        r = http::serve(http_listener, metrics) => r.context("http"),
        _ = shutdown() => {
            tracing::info!("shutting down");
            Ok(())
        }
    }
}

/// Tansu and many production clusters do not auto-create topics; Kafka may still be
/// starting, so keep trying for a while before giving up with a clear message.
async fn create_topics(settings: &Settings, topics: &[&str]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match produce::ensure_topics(&settings.kafka, topics.iter().copied()).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(brokers = %settings.kafka.brokers, error = %e, "kafka not ready; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => bail!(
                "cannot create topics on kafka.brokers {}: {e}",
                settings.kafka.brokers
            ),
        }
    }
}

/// Starts rumqttd on its own threads and waits until its v4 listener accepts.
async fn start_broker(config: rumqttd::Config, v4: SocketAddr) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            if let Err(e) = rumqttd::Broker::new(config).start() {
                tracing::error!(error = %e, "embedded broker stopped");
                std::process::exit(1);
            }
        })
        .context("starting the embedded broker")?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(v4).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("embedded broker did not listen on {v4} (broker.v4)")
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
