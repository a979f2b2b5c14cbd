//! The `sluice` binary: reads the configuration and runs the roles it is asked for, the
//! embedded broker with the ingress, the writer, or both (the default), plus HTTP; or
//! only checks the configuration (`--check-config`).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use sluice::health::Health;
use sluice::lifecycle;
use sluice::security::tls::TlsSettings;
use sluice::security::{Door, Security};
use sluice::settings::Settings;
use sluice::{api, http, ingress, mapping, produce, writer};
use tokio::net::{TcpListener, TcpSocket};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Role {
    /// Broker, ingress and writer in one process.
    All,
    /// Broker and ingress: MQTT in, Kafka out.
    Ingress,
    /// Writer only: Kafka in, database out.
    Writer,
}

impl Role {
    /// As on the command line; also the `role` label of every metric.
    fn name(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Ingress => "ingress",
            Role::Writer => "writer",
        }
    }
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
    /// Check the configuration as start-up would for --role (the mappings, the security
    /// files) without opening a socket or connecting to anything; print it, secrets
    /// masked, and exit 0, or print what is wrong and exit 2.
    #[arg(long, conflicts_with = "migrate_only")]
    check_config: bool,
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
    if cli.check_config {
        std::process::exit(check_config(&settings, cli.role));
    }
    init_logging(settings.log.json);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli, settings)) {
        let e = Failure(e);
        tracing::error!("{e}");
        eprintln!("sluice: {e}");
        // 2, as for a bad configuration: retrying will not help until someone acts.
        let setup = matches!(
            e.0.downcast_ref(),
            Some(lifecycle::LifecycleError::Setup(_))
        ) || e.0.downcast_ref::<BadConfiguration>().is_some();
        std::process::exit(if setup { 2 } else { 1 });
    }
}

/// `--check-config`: what `check` says, and the configuration as set; the exit code.
fn check_config(settings: &Settings, role: Role) -> i32 {
    match check(settings, role) {
        Ok(_) => {
            let shown = serde_json::to_string_pretty(&settings.as_set)
                .unwrap_or_else(|_| settings.as_set.to_string());
            println!("configuration OK (role {})\n{shown}", role.name());
            0
        }
        Err(e) => {
            eprintln!("sluice: {}", Failure(e));
            2
        }
    }
}

/// An error and its causes on one line, each cause once: many of the library's errors
/// already name their source in their own message.
struct Failure(anyhow::Error);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut said = String::new();
        for cause in self.0.chain() {
            let text = cause.to_string();
            if said.contains(&text) {
                continue;
            }
            if !said.is_empty() {
                said.push_str(": ");
            }
            said.push_str(&text);
        }
        f.write_str(&said)
    }
}

/// Marks a start-up error that only an edit of the configuration or its files mends.
#[derive(Debug)]
struct BadConfiguration;

impl std::fmt::Display for BadConfiguration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("configuration")
    }
}

/// What start-up takes from the configuration before it opens a socket or talks to Kafka
/// or the database (`Settings::load` has validated the rest): the mappings compiled and,
/// for the ingress, the embedded broker's v4 listener and the security files read.
struct Checked {
    mappings: mapping::Mappings,
    ingress: Option<(SocketAddr, Security)>,
}

fn check(settings: &Settings, role: Role) -> anyhow::Result<Checked> {
    let mappings = mapping::Mappings::new(&settings.mappings).context("mappings")?;
    if role != Role::Ingress {
        let url = &settings.writer.database_url;
        // Parsed only, no connection; the error names the setting, not the password.
        tokio_postgres::Config::from_str(url)
            .with_context(|| format!("writer.database_url {}", sluice::db::redact(url)))?;
    }
    let ingress = match role {
        Role::Writer => None,
        Role::All | Role::Ingress => {
            let broker_v4 = settings.broker_addr(4).context("broker.v4 listener")?;
            let security = Security::load(
                settings.auth.clone(),
                settings.ingress.tls.clone(),
                mappings.identity_patterns(),
            )?;
            Some((broker_v4, security))
        }
    };
    Ok(Checked { mappings, ingress })
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
    tracing::info!(
        role = cli.role.name(),
        version = env!("CARGO_PKG_VERSION"),
        config = %cli.config.display(),
        configuration = %settings.as_set,
        "starting with this configuration (as set: secrets masked, unset keys at their defaults)"
    );
    let mut backend = None;
    if with_writer || cli.migrate_only {
        let url = &settings.writer.database_url;
        backend = Some(lifecycle::prepare(url, &settings.storage).await?);
        if cli.migrate_only {
            return Ok(());
        }
    }
    let metrics = http::install_metrics(cli.role.name()).context("metrics recorder")?;
    // After the recorder: loading the security files sets a gauge.
    let Checked {
        mappings,
        ingress: ingress_parts,
    } = check(&settings, cli.role).context(BadConfiguration)?;
    let health = Arc::new(Health::default());
    health.starting(usize::from(with_ingress) + usize::from(with_writer));
    let http_listener = TcpListener::bind(settings.http.listen)
        .await
        .with_context(|| format!("http.listen {}", settings.http.listen))?;
    let topic_refs = mappings.kafka_topics();
    let stop = stop_on_signals(health.clone());
    let stopping = || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };

    let ingress_task = async {
        let Some((broker_v4, security)) = ingress_parts else {
            stopping().await;
            return Ok(());
        };
        create_topics(&settings, &topic_refs).await?;
        let i = &settings.ingress;
        let producer = produce::Producer::new(
            &settings.kafka,
            i.max_inflight_total,
            i.max_inflight_bytes_total,
            health.clone(),
        )
        .context("kafka producer")?;
        let p = producer.clone();
        tokio::spawn(watch_kafka(move || p.reachable(), health.clone(), false));
        let broker_v5 = settings.broker_addr(5);
        claim_broker_ports(&settings.broker)?;
        start_broker(settings.broker.clone(), broker_v4).await?;
        let security = Arc::new(security);
        tokio::spawn(reload_on_sighup(security.clone()));
        let listeners = listeners(&settings).await?;
        let http_listeners = http_listeners(&settings).await?;
        let ingress = Arc::new(ingress::Ingress::new(
            i.clone(),
            settings.limits.clone(),
            broker_v4,
            broker_v5,
            mappings.clone(),
            producer.clone(),
            security,
        ));
        let api = match &i.http {
            Some(_) => Some(
                api::Api::new(&settings, metrics.clone(), with_writer, stop.clone())
                    .context("read API")?,
            ),
            None => None,
        };
        let http = i
            .http
            .clone()
            .map(|h| ingress::http::Front::new(ingress.clone(), h, api));
        let serving_http = async {
            if let Some(front) = http {
                front.serve(http_listeners, stopping()).await;
            }
        };
        health.started();
        tokio::join!(ingress.serve(listeners, stopping()), serving_http);
        // Records acknowledged on receipt and QoS 0 records are in librdkafka's queue.
        let left = producer.in_flight();
        tracing::info!(records = left, "flushing the kafka producer");
        let timeout = Duration::from_millis(i.drain_timeout_ms);
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await?;
        match flushed {
            Ok(()) => tracing::info!("kafka producer flushed"),
            Err(e) => {
                tracing::error!(error = %e, "kafka producer not flushed; records may be lost")
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    let writer_task = async {
        if !with_writer {
            stopping().await;
            return Ok(());
        }
        if let Some(backend) = backend {
            let url = settings.writer.database_url.clone();
            let storage = settings.storage.clone();
            tokio::spawn(lifecycle::run(url, storage, backend, health.clone()));
        }
        let anomalies = &settings.anomalies;
        if anomalies.enabled {
            tokio::spawn(create_anomalies_topic(settings.clone()));
        }
        if !with_ingress {
            // No producer here to notice Kafka going away: ask it, for readiness.
            let probe = Arc::new(produce::Probe::new(&settings.kafka).context("kafka probe")?);
            tokio::spawn(watch_kafka(move || probe.reachable(), health.clone(), true));
        }
        let w = writer::Writer::new(
            settings.writer.clone(),
            anomalies,
            &settings.kafka,
            &topic_refs,
        )?;
        tracing::info!(group = %settings.writer.group_id, "writer consuming");
        // A task of its own: the detector's block_in_place must not hold up the ingress's
        // accept loops, which share this task.
        // It says it has started once it has its first share of the partitions.
        let running = tokio::spawn(w.run(health.clone(), stop.clone()));
        running.await.context("writer task")?.context("writer")
    };
    tracing::info!(listen = %settings.http.listen, "serving /metrics, /health/live, /health/ready and /health");
    tokio::select! {
        r = async { tokio::try_join!(ingress_task, writer_task) } => {
            r?;
            tracing::info!("stopped");
            Ok(())
        }
        r = http::serve(http_listener, metrics.clone(), health.clone()) => r.context("http"),
    }
}

/// The device port's listeners: plain MQTT on `ingress.listen`, and MQTT over TLS on
/// `ingress.tls.listen` when that is set.
async fn listeners(settings: &Settings) -> anyhow::Result<Vec<ingress::Listener>> {
    let i = &settings.ingress;
    let anonymous = i.plain_allows_anonymous(&settings.auth);
    tracing::info!(listen = %i.listen, anonymous, "accepting MQTT 3.1.1 and 5 devices");
    if anonymous && !i.listen.ip().is_loopback() {
        tracing::warn!(listen = %i.listen, "anonymous clients allowed beyond loopback (ingress.allow_anonymous)");
    }
    let reuse = i.reuse_port;
    let door = plain_door(anonymous);
    let mut listeners = vec![bind(i.listen, "ingress.listen", door, false, reuse)?];
    if let Some(tls) = &i.tls {
        tracing::info!(listen = %tls.listen, client_certificates = tls.cafile.is_some(), "accepting MQTT over TLS");
        listeners.push(bind(
            tls.listen,
            "ingress.tls.listen",
            tls_door(tls),
            true,
            reuse,
        )?);
    }
    Ok(listeners)
}

/// `[ingress.http]`'s listeners: plain HTTP, and HTTPS with `[ingress.tls]`'s
/// certificates when `tls_listen` is set.
async fn http_listeners(settings: &Settings) -> anyhow::Result<Vec<ingress::Listener>> {
    let Some(h) = &settings.ingress.http else {
        return Ok(Vec::new());
    };
    let anonymous = h.plain_allows_anonymous(&settings.auth);
    tracing::info!(listen = %h.listen, anonymous, "accepting readings over HTTP");
    if anonymous && !h.listen.ip().is_loopback() {
        tracing::warn!(listen = %h.listen, "anonymous HTTP senders allowed beyond loopback (ingress.http.allow_anonymous)");
    }
    let (door, reuse) = (plain_door(anonymous), settings.ingress.reuse_port);
    let mut listeners = vec![bind(h.listen, "ingress.http.listen", door, false, reuse)?];
    if let (Some(addr), Some(tls)) = (h.tls_listen, &settings.ingress.tls) {
        tracing::info!(listen = %addr, "accepting readings over HTTPS");
        let door = tls_door(tls);
        listeners.push(bind(addr, "ingress.http.tls_listen", door, true, reuse)?);
    }
    Ok(listeners)
}

/// A device-facing listener on `addr` (`key` names its setting in errors); with
/// `reuse_port` (`ingress.reuse_port`) other ingress processes may listen there too.
fn bind(
    addr: SocketAddr,
    key: &str,
    door: Door,
    tls: bool,
    reuse_port: bool,
) -> anyhow::Result<ingress::Listener> {
    let socket = listen(addr, reuse_port).map_err(|e| {
        let hint = match e.kind() {
            ErrorKind::AddrInUse if !reuse_port => {
                " (processes share an address only with ingress.reuse_port = true in each)"
            }
            _ => "",
        };
        anyhow::Error::new(e).context(format!("{key} {addr}{hint}"))
    })?;
    Ok(ingress::Listener { socket, door, tls })
}

/// What `TcpListener::bind` does (SO_REUSEADDR, so a restart binds while old connections
/// sit in TIME_WAIT; a backlog of 1024), plus SO_REUSEPORT when asked.
fn listen(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A plain listener's door: anonymous clients, or only those with a password or token.
fn plain_door(allow_anonymous: bool) -> Door {
    Door {
        allow_anonymous,
        certificate_is_identity: false,
        identity_field: Default::default(),
    }
}

/// A TLS listener's door (MQTT or HTTPS), as `[ingress.tls]` says.
fn tls_door(tls: &TlsSettings) -> Door {
    Door {
        allow_anonymous: tls.allow_anonymous,
        certificate_is_identity: tls.use_identity_as_username,
        identity_field: tls.identity,
    }
}

/// SIGHUP re-reads the password file, the ACL and the TLS files.
async fn reload_on_sighup(security: Arc<Security>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reloads need a restart");
        return;
    };
    while hangup.recv().await.is_some() {
        // Reading and parsing files is blocking work.
        let security = security.clone();
        let _ = tokio::task::spawn_blocking(move || security.reload()).await;
    }
}

/// SIGTERM or Ctrl-C: stop gracefully (drain connections, flush Kafka, let the writer
/// commit; readiness turns 503 at once); a second one exits at once.
fn stop_on_signals(health: Arc<Health>) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        signal().await;
        tracing::info!(
            "stopping: draining connections, flushing kafka (a second signal exits at once)"
        );
        health.stopping();
        tx.send_replace(true);
        signal().await;
        tracing::warn!("second signal: exiting now");
        std::process::exit(130);
    });
    rx
}

async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        },
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Asks Kafka for metadata every few seconds (`reachable` blocks), so readiness and
/// `/health` recover even when no record is flowing. With a producer (`always` false),
/// only while Kafka is marked down: the producer marks it down itself, and a failing
/// delivery says more than an answered metadata request. Without one, always, both ways.
async fn watch_kafka(
    reachable: impl Fn() -> bool + Clone + Send + 'static,
    health: Arc<Health>,
    always: bool,
) {
    loop {
        if always || health.kafka_down() {
            match tokio::task::spawn_blocking(reachable.clone()).await {
                Ok(true) => health.kafka_working(),
                Ok(false) if always => health.kafka_failing(),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
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

/// The writer's own topic. Kafka may be down while the writer starts, and the writer
/// waits it out: so does this, in the background, while readings are written.
async fn create_anomalies_topic(settings: Settings) {
    let topic = settings.anomalies.topic.as_str();
    loop {
        match produce::ensure_topics(&settings.kafka, [topic]).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(topic, error = %e, "cannot create the anomalies topic yet; retrying")
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Binds each of the embedded broker's listeners and lets go at once. rumqttd only logs
/// a listener that fails to bind, and `start_broker` only waits until something answers
/// on broker.v4: without this a second ingress process on the machine with the same
/// ports would relay its devices through the first one's broker.
fn claim_broker_ports(config: &rumqttd::Config) -> anyhow::Result<()> {
    let mut listeners: Vec<(String, SocketAddr)> = Vec::new();
    for (level, servers) in [("v4", &config.v4), ("v5", &config.v5)] {
        for (name, server) in servers.iter().flatten() {
            listeners.push((format!("broker.{level}.{name}.listen"), server.listen));
        }
    }
    listeners.sort();
    for (setting, addr) in listeners {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            bail!(
                "{setting} {addr}: {e} (each ingress process on one machine needs its own \
                 embedded-broker ports: SLUICE__BROKER__V4__1__LISTEN, \
                 SLUICE__BROKER__V5__1__LISTEN)"
            );
        }
    }
    Ok(())
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
