//! End-to-end harness: starts real `sluice` processes against the PostgreSQL and tansu that
//! `scripts/test.sh` started (DATABASE_URL, KAFKA_BROKERS), each test on its own ports,
//! Kafka topics and consumer group, and stops them when the test ends.
#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod raw;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the end-to-end tests through scripts/test.sh")
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A name unique to this test run, for device ids, topics and groups.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

pub struct Gateway {
    pub id: String,
    pub mqtt_port: u16,
    pub http_port: u16,
    /// HTTP ingest (`[ingress.http]`).
    pub ingest_port: u16,
    pub readings_topic: String,
    pub dlq_topic: String,
    pub anomalies_topic: String,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    children: Vec<Child>,
}

/// The HTTP status code and body of a GET on a local port; status 0 when nothing answers.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok());
    (status.unwrap_or(0), body.to_owned())
}

/// Edits of the default broker.toml for one test.
pub type Tweak = Box<dyn Fn(&mut toml::Table)>;

impl Gateway {
    /// One `sluice` process with every role.
    pub fn start(tweak: Option<Tweak>) -> Gateway {
        let mut g = Gateway::configure(tweak);
        g.spawn(&["--role", "all"], &[]);
        g.wait_ready();
        g
    }

    /// Writes this test's configuration; processes are started with `spawn`.
    pub fn configure(tweak: Option<Tweak>) -> Gateway {
        let id = unique("e2e");
        let dir = tempfile::tempdir().expect("temp dir");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join("broker.toml")).expect("broker.toml");
        let mut config: toml::Table = text.parse().expect("broker.toml parses");
        let (mqtt_port, http_port, ingest_port) = (free_port(), free_port(), free_port());
        let readings_topic = format!("sensor.readings.{id}");
        let dlq_topic = format!("sensor.dlq.{id}");
        let anomalies_topic = format!("sensor.anomalies.{id}");
        set(
            &mut config,
            &["ingress", "listen"],
            format!("127.0.0.1:{mqtt_port}"),
        );
        set(
            &mut config,
            &["http", "listen"],
            format!("127.0.0.1:{http_port}"),
        );
        set(
            &mut config,
            &["ingress", "http", "listen"],
            format!("127.0.0.1:{ingest_port}"),
        );
        set(
            &mut config,
            &["broker", "v4", "1", "listen"],
            format!("127.0.0.1:{}", free_port()),
        );
        set(
            &mut config,
            &["broker", "v5", "1", "listen"],
            format!("127.0.0.1:{}", free_port()),
        );
        set(
            &mut config,
            &["kafka", "dead_letter_topic"],
            dlq_topic.clone(),
        );
        set(&mut config, &["kafka", "partitions"], 3);
        set(&mut config, &["writer", "group_id"], format!("writer-{id}"));
        set(
            &mut config,
            &["anomalies", "topic"],
            anomalies_topic.clone(),
        );
        // Tests publish readings timed in 2023; the shared database keeps them.
        set(&mut config, &["storage", "retain_for"], "off");
        if let Some(toml::Value::Array(mappings)) = config.get_mut("mappings") {
            for m in mappings.iter_mut().filter_map(toml::Value::as_table_mut) {
                m.insert("kafka_topic".into(), readings_topic.clone().into());
            }
        }
        if let Some(tweak) = tweak {
            tweak(&mut config);
        }
        let path = dir.path().join("broker.toml");
        std::fs::write(&path, toml::to_string(&config).expect("serialises")).expect("write config");
        Gateway {
            id,
            mqtt_port,
            http_port,
            ingest_port,
            readings_topic,
            dlq_topic,
            anomalies_topic,
            dir,
            config: path,
            children: Vec::new(),
        }
    }

    fn command(&self, args: &[&str], envs: &[(&str, &str)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sluice"));
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .env("DATABASE_URL", env("DATABASE_URL"))
            .env("KAFKA_BROKERS", env("KAFKA_BROKERS"))
            .envs(envs.iter().copied());
        c
    }

    /// Starts a `sluice` process; returns its number, for `signal` and `wait_exit`.
    pub fn spawn(&mut self, args: &[&str], envs: &[(&str, &str)]) -> usize {
        let n = self.children.len();
        let log = std::fs::File::create(self.dir.path().join(format!("sluice-{n}.log")))
            .expect("log file");
        let child = self
            .command(args, envs)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sluice starts");
        self.children.push(child);
        n
    }

    /// Runs `sluice` with this configuration to completion (e.g. `--migrate-only`).
    pub fn run(&self, args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
        self.command(args, envs).output().expect("sluice runs")
    }

    /// `sluice --migrate-only`, which must succeed.
    pub fn migrate(&self, envs: &[(&str, &str)]) {
        let out = self.run(&["--migrate-only"], envs);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until the device port accepts and the writer has its partitions.
    pub fn wait_ready(&mut self) {
        wait_for(Duration::from_secs(60), "sluice to accept MQTT", || {
            self.check_alive();
            std::net::TcpStream::connect(("127.0.0.1", self.mqtt_port)).is_ok()
        });
        wait_for(Duration::from_secs(60), "the writer to be assigned", || {
            self.check_alive();
            self.logs().contains("writer assigned partitions")
        });
    }

    /// Waits for the `n`th process started to exit on its own.
    pub fn wait_exit(&mut self, n: usize) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.children[n].try_wait() {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "process {n} did not exit"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends a signal (`TERM`, `INT`) to the `n`th process started.
    pub fn signal(&self, n: usize, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.children[n].id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -s {signal}");
    }

    /// The HTTP status code and body of a GET on the HTTP port.
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http_port, path)
    }

    pub fn check_alive(&mut self) {
        for c in &mut self.children {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("sluice exited ({status}):\n{}", self.logs());
            }
        }
    }

    pub fn logs(&self) -> String {
        (0..self.children.len())
            .map(|n| {
                std::fs::read_to_string(self.dir.path().join(format!("sluice-{n}.log")))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// `mosquitto_pub` (Debian's mosquitto-clients) at QoS 1 against this gateway; the
    /// caller adds the topic and message arguments.
    pub fn mosquitto_pub(&self) -> Command {
        let mut c = Command::new("mosquitto_pub");
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.mqtt_port.to_string(),
            "-q",
            "1",
        ]);
        c
    }

    /// Publishes each line as one QoS 1 message (`mosquitto_pub -l`); true when
    /// mosquitto_pub got every PUBACK and exited cleanly.
    pub fn publish_lines(&self, topic: &str, lines: &str) -> bool {
        use std::io::Write;
        let mut publisher = self
            .mosquitto_pub()
            .args(["-l", "-t", topic])
            .stdin(Stdio::piped())
            .spawn()
            .expect("mosquitto_pub runs");
        publisher
            .stdin
            .take()
            .expect("stdin")
            .write_all(lines.as_bytes())
            .expect("lines written");
        publisher.wait().expect("mosquitto_pub exits").success()
    }

    pub fn mqtt_addr(&self) -> String {
        format!("127.0.0.1:{}", self.mqtt_port)
    }

    /// The Prometheus page.
    pub fn metrics(&self) -> String {
        self.get("/metrics").1
    }

    /// The value of one sample (`name` or `name{labels}`), 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_in(&self.metrics(), sample)
    }
}

/// The value of `sample` (`name` or `name{labels}`) in a Prometheus page: the first line
/// of that name carrying at least those labels, whatever others it has (every metric
/// carries the process's `role`), 0 when absent.
pub fn metric_in(page: &str, sample: &str) -> f64 {
    let (name, wanted) = sample_parts(sample);
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = sample_parts(series);
            let all = wanted.iter().all(|w| labels.contains(w));
            (n == name && all).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// `name{a="1",b="2"}` as `name` and its `a="1"`, `b="2"` (values hold no commas here).
fn sample_parts(series: &str) -> (&str, Vec<&str>) {
    match series.split_once('{') {
        Some((name, labels)) => {
            let labels = labels.trim_end_matches('}');
            (name, labels.split(',').filter(|l| !l.is_empty()).collect())
        }
        None => (series, Vec::new()),
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- sluice logs ---\n{}", self.logs());
        }
    }
}

/// A tansu broker of a test's own, for tests that kill Kafka.
pub struct Tansu {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Tansu {
    pub fn start() -> Tansu {
        let mut t = Tansu {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        t.restart();
        t
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(self.dir.path().join("tansu.log")).expect("log");
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        wait_for(Duration::from_secs(30), "tansu to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// CA, server and device certificates from `scripts/certs.sh`, as the README makes them.
pub fn certificates(dir: &Path, devices: &[&str]) -> PathBuf {
    let out = dir.join("certs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/certs.sh");
    let status = Command::new("bash")
        .arg(script)
        .arg(&out)
        .args(devices)
        .status()
        .expect("bash runs");
    assert!(status.success(), "scripts/certs.sh");
    out
}

/// Adds a mapping `fast/{device_id}/{metric}` like the first one, acknowledged on receipt.
pub fn add_receipt_mapping(c: &mut toml::Table) {
    let Some(toml::Value::Array(mappings)) = c.get_mut("mappings") else {
        panic!("broker.toml has [[mappings]]");
    };
    let mut fast = mappings[0].as_table().expect("a table").clone();
    fast.insert("filter".into(), "fast/{device_id}/{metric}".into());
    fast.insert("ack".into(), "receipt".into());
    mappings.push(fast.into());
}

pub fn set(table: &mut toml::Table, path: &[&str], value: impl Into<toml::Value>) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut t = table;
    for p in parents {
        t = t
            .get_mut(*p)
            .and_then(toml::Value::as_table_mut)
            .unwrap_or_else(|| panic!("broker.toml has no [{p}]"));
    }
    t.insert((*last).into(), value.into());
}

pub fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The SHA-256 of `text` in hex, as a token file holds it (computed by `sha256sum`).
pub fn sha256_hex(text: &str) -> String {
    use std::io::Write;
    let output = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().expect("stdin").write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .expect("sha256sum runs");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// One numeric reading put straight into `readings`, received when it was taken.
pub async fn insert_reading(
    db: &tokio_postgres::Client,
    time: chrono::DateTime<chrono::Utc>,
    device: &str,
    metric: &str,
    value: f64,
) {
    db.execute(
        "INSERT INTO readings (time, device_id, metric, value, received_at) VALUES ($1, $2, $3, $4, $1)",
        &[&time, &device, &metric, &value],
    )
    .await
    .expect("insert a reading");
}

pub async fn db() -> tokio_postgres::Client {
    connect(&env("DATABASE_URL")).await
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("database reachable");
    tokio::spawn(conn);
    client
}

/// A database of a test's own, dropped when the test ends; for tests that change
/// partitions or jobs, or need known data and nothing else.
pub struct OwnDatabase {
    pub url: String,
    name: String,
    /// The server's `sluice` database, from which this one is created and dropped.
    admin: String,
}

impl OwnDatabase {
    /// On the shared PostgreSQL (DATABASE_URL).
    pub fn create(prefix: &str) -> OwnDatabase {
        OwnDatabase::on(&env("DATABASE_URL"), prefix)
    }

    /// On the server of `server_url` (a URL of one of its databases).
    pub fn on(server_url: &str, prefix: &str) -> OwnDatabase {
        let name = unique(prefix).replace('-', "_");
        let base = server_url.rsplit_once('/').expect("a database URL").0;
        let db = OwnDatabase {
            url: format!("{base}/{name}"),
            name,
            admin: server_url.to_owned(),
        };
        db.admin(&format!("CREATE DATABASE {}", db.name));
        db
    }

    fn admin(&self, sql: &str) {
        let status = Command::new("psql")
            .args([&self.admin, "-X", "-q", "-c", sql])
            .status()
            .expect("psql runs");
        assert!(status.success(), "{sql} failed");
    }
}

impl Drop for OwnDatabase {
    fn drop(&mut self) {
        self.admin(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// One of the two storage paths, on a server that offers it.
pub struct Storage {
    /// As `storage.backend` names it: "postgres" or "timescaledb".
    pub backend: &'static str,
    server: String,
}

impl Storage {
    pub fn timescaledb(&self) -> bool {
        self.backend == "timescaledb"
    }

    /// A database of the test's own on this path's server.
    pub fn database(&self, prefix: &str) -> OwnDatabase {
        OwnDatabase::on(&self.server, &format!("{prefix}_{}", self.backend))
    }

    /// The environment that makes `sluice` use `db` on this path.
    pub fn env<'a>(&self, db: &'a OwnDatabase) -> [(&'static str, &'a str); 2] {
        [
            ("DATABASE_URL", db.url.as_str()),
            ("SLUICE__STORAGE__BACKEND", self.backend),
        ]
    }
}

/// Plain PostgreSQL, asked for explicitly on the shared server.
pub fn postgres() -> Storage {
    Storage {
        backend: "postgres",
        server: env("DATABASE_URL"),
    }
}

/// TimescaleDB, on the server TIMESCALEDB_URL names (scripts/test.sh sets it, to the
/// shared server, wherever TimescaleDB is installed); None, said on stderr, without it.
pub fn timescaledb(test: &str) -> Option<Storage> {
    match std::env::var("TIMESCALEDB_URL") {
        Ok(server) if !server.is_empty() => Some(Storage {
            backend: "timescaledb",
            server,
        }),
        _ => {
            eprintln!(
                "{test}: TimescaleDB half skipped: TIMESCALEDB_URL is not set \
                 (scripts/timescaledb.sh installs TimescaleDB; scripts/test.sh then sets it)"
            );
            None
        }
    }
}

/// Both paths where the machine has both; plain PostgreSQL alone where it has not.
pub fn storages(test: &str) -> Vec<Storage> {
    std::iter::once(postgres())
        .chain(timescaledb(test))
        .collect()
}

/// A row as the tests compare it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub device_id: String,
    pub metric: String,
    pub time_ms: i64,
    pub value: Option<f64>,
    pub unit: Option<String>,
    pub seq: Option<i64>,
}

pub async fn rows(db: &tokio_postgres::Client, device_prefix: &str) -> Vec<Row> {
    db.query(
        "SELECT device_id, metric, (extract(epoch FROM time) * 1000)::bigint, value, unit, seq \
         FROM readings WHERE starts_with(device_id, $1) ORDER BY device_id, metric, time",
        &[&device_prefix],
    )
    .await
    .expect("query readings")
    .iter()
    .map(|r| Row {
        device_id: r.get(0),
        metric: r.get(1),
        time_ms: r.get(2),
        value: r.get(3),
        unit: r.get(4),
        seq: r.get(5),
    })
    .collect()
}

/// The next offsets the writers of `gateway`'s group stored, added up: the records they
/// have written, on a topic that started empty.
pub async fn offsets_stored(db: &tokio_postgres::Client, gateway: &Gateway) -> i64 {
    let group = format!("writer-{}", gateway.id);
    db.query_one(
        "SELECT coalesce(sum(next_offset), 0)::bigint FROM sluice_offsets WHERE group_id = $1",
        &[&group],
    )
    .await
    .expect("offsets")
    .get(0)
}

/// Waits until `n` rows exist for the prefix (and a little longer, to catch extras).
pub async fn wait_rows(db: &tokio_postgres::Client, device_prefix: &str, n: usize) -> Vec<Row> {
    let start = Instant::now();
    loop {
        let got = rows(db, device_prefix).await;
        if got.len() >= n {
            tokio::time::sleep(Duration::from_millis(500)).await;
            return rows(db, device_prefix).await;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {n} rows of {device_prefix}: have {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Kafka record as tests look at it.
#[derive(Debug, Clone)]
pub struct KafkaRecord {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl KafkaRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A consumer of a test topic's 3 partitions from the beginning; with `eof`, it reports
/// each partition's end.
pub fn topic_consumer(topic: &str, eof: bool) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", env("KAFKA_BROKERS"))
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", eof.to_string())
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    consumer
}

/// Reads `n` records from every partition of a topic, from the beginning.
pub async fn read_topic(topic: &str, n: usize) -> Vec<KafkaRecord> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer = topic_consumer(&topic, false);
        let mut out = Vec::new();
        wait_for(Duration::from_secs(30), "kafka records", || {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                                (h.key.to_owned(), v.unwrap_or_default())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(KafkaRecord {
                    key: m.key().unwrap_or_default().to_vec(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            out.len() >= n
        });
        out
    })
    .await
    .expect("reader")
}

/// Runs tests/clients/paho_client.py (Debian's python3-paho-mqtt) and returns the JSON it
/// prints.
pub fn paho(args: &[&str]) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/paho_client.py");
    let out = Command::new("/usr/bin/python3")
        .arg(script)
        .args(args)
        .output()
        .expect("Debian's python3 with python3-paho-mqtt");
    assert!(
        out.status.success(),
        "paho_client.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("paho_client.py prints JSON")
}

/// `mosquitto_sub -v` on this gateway with `args` (`-t FILTER`, `-V 5`, `-C N`, `-W S`...),
/// given time to subscribe before it is returned; `lines` collects what it printed.
pub fn mosquitto_sub(gateway: &Gateway, args: &[&str]) -> Child {
    let child = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &gateway.mqtt_port.to_string(),
            "-v",
        ])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs");
    std::thread::sleep(Duration::from_millis(800));
    child
}

/// The `topic payload` lines a `mosquitto_sub` printed, once it has ended.
pub fn lines(child: Child) -> Vec<String> {
    let out = child.wait_with_output().expect("mosquitto_sub ends");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}
