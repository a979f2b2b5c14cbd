//! Configuration: `broker.toml` layered with `SLUICE__SECTION__KEY` environment variables,
//! plus `DATABASE_URL` and `KAFKA_BROKERS` as-is. Every section rejects unknown keys so a
//! typo stops start-up with the key's name instead of being silently ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::decode::{Format, Limits};
use crate::mapping::AckPolicy;

/// Room for a dead letter's headers (topic, client id, reason, detail, properties are
/// within the packet; reason, detail and times are added).
const DEAD_LETTER_OVERHEAD: usize = 16_384;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub ingress: IngressSettings,
    pub mappings: Vec<MappingSettings>,
    #[serde(default)]
    pub limits: Limits,
    pub kafka: KafkaSettings,
    pub writer: WriterSettings,
    #[serde(default)]
    pub anomalies: AnomalySettings,
    #[serde(default)]
    pub storage: StorageSettings,
    pub http: HttpSettings,
    #[serde(default)]
    pub log: LogSettings,
    #[serde(default)]
    pub auth: AuthSettings,
    /// The embedded rumqttd broker's own configuration, in rumqttd's format.
    pub broker: rumqttd::Config,
    #[serde(default)]
    pub api: ApiSettings,
    /// The configuration as the file and the environment set it, secrets masked, for
    /// the read API and the dashboard (unset keys take the defaults the README lists).
    #[serde(skip)]
    pub as_set: serde_json::Value,
}

/// The read API (query endpoints, status, dashboard) on the `[ingress.http]` listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Identities that may read; anonymous readers where the listener takes anonymous
    /// senders (the loopback default). Devices are not readers.
    #[serde(default)]
    pub readers: Vec<String>,
    /// Anonymous readers (on a listener that admits anonymous senders). Unset: only from
    /// a loopback address.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// Database connections the API's queries share.
    #[serde(default = "default_api_connections")]
    pub database_connections: usize,
    /// Longest a query may run, in milliseconds.
    #[serde(default = "default_api_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// Live status streams (`/v1/status/stream`) open at once.
    #[serde(default = "default_api_streams")]
    pub max_streams: usize,
}

impl Default for ApiSettings {
    fn default() -> ApiSettings {
        ApiSettings {
            readers: Vec::new(),
            allow_anonymous: None,
            database_connections: default_api_connections(),
            statement_timeout_ms: default_api_statement_timeout_ms(),
            max_streams: default_api_streams(),
        }
    }
}

fn default_api_connections() -> usize {
    4
}

fn default_api_statement_timeout_ms() -> u64 {
    10_000
}

fn default_api_streams() -> usize {
    64
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressSettings {
    /// The device-facing port: MQTT 3.1.1 and 5 on the same socket.
    pub listen: SocketAddr,
    /// Binds every device-facing listener (MQTT, MQTT over TLS, HTTP ingest, HTTPS) with
    /// SO_REUSEPORT, so several ingress processes share one address and the kernel
    /// spreads connections over them.
    #[serde(default)]
    pub reuse_port: bool,
    /// Largest MQTT packet accepted from a device, in bytes.
    pub max_packet_size: usize,
    /// Records a connection may have on their way to Kafka before Sluice stops reading it.
    pub max_inflight_per_connection: usize,
    /// Records all connections together may have on their way to Kafka.
    pub max_inflight_total: usize,
    /// The same two limits in bytes of the Kafka records (readings JSON, key, headers).
    pub max_inflight_bytes_per_connection: usize,
    pub max_inflight_bytes_total: usize,
    /// How long a new connection may take to send its CONNECT.
    pub connect_timeout_ms: u64,
    /// What happens to a publish no mapping matches.
    #[serde(default)]
    pub unmapped: UnmappedPolicy,
    /// MQTT 5 topic aliases a client may set up on one connection (0: none).
    #[serde(default = "default_topic_alias_maximum")]
    pub topic_alias_maximum: u16,
    /// Open device connections, in all and from one source address (0: no cap per
    /// address). Past them a new connection is closed at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Bytes a connection may have waiting to be written, each way; past them Sluice
    /// stops reading the other side.
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes_per_connection: usize,
    /// Bytes waiting to be written, all connections together; past it the connections
    /// holding much stop reading until there is room.
    #[serde(default = "default_max_buffered_bytes_total")]
    pub max_buffered_bytes_total: usize,
    /// A device that leaves what Sluice sends it unread this long is disconnected.
    #[serde(default = "default_write_timeout_ms")]
    pub write_timeout_ms: u64,
    /// On SIGTERM, how long connections may wait for Kafka's answers before closing.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// The keep alive the relay to rumqttd is opened with; Sluice pings at half of it.
    #[serde(default = "default_broker_keep_alive_s")]
    pub broker_keep_alive_s: u16,
    /// Clients with no identity on `listen`. Unset: allowed only when `listen` is a
    /// loopback address and there is no password file.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// New connections per second each listener takes (0: no limit); past it MQTT 5
    /// clients get CONNACK 0x9F.
    #[serde(default)]
    pub max_connects_per_second: u32,
    /// Per identity (a client with no identity: per client id), all its connections
    /// together: publishes and bytes per second, with bursts (0: no limit; a burst of 0
    /// is one second's worth). Past them Sluice stops reading the client's socket.
    #[serde(default)]
    pub max_messages_per_second: u32,
    #[serde(default)]
    pub burst_messages: u32,
    #[serde(default)]
    pub max_bytes_per_second: u32,
    #[serde(default)]
    pub burst_bytes: u32,
    /// Past the rate, disconnect instead (MQTT 5: DISCONNECT 0x96).
    #[serde(default)]
    pub disconnect_over_rate: bool,
    /// The longest keep alive a client may use, in seconds (0: any, keep alive 0 included).
    /// MQTT 5 clients asking for more, or for 0, are told this one in CONNACK (server keep
    /// alive); 3.1.1 clients are refused (return code 2), as mosquitto's max_keepalive.
    #[serde(default)]
    pub max_keep_alive: u16,
    /// Subscriptions a session may hold; past it a SUBSCRIBE's new filters are refused
    /// (MQTT 5: SUBACK 0x97; 3.1.1: 0x80).
    #[serde(default = "default_max_subscriptions_per_session")]
    pub max_subscriptions_per_session: usize,
    /// A second listener, with TLS.
    #[serde(default)]
    pub tls: Option<crate::security::tls::TlsSettings>,
    /// Readings over HTTP, beside MQTT.
    #[serde(default)]
    pub http: Option<HttpIngestSettings>,
}

/// `[ingress.http]`: `POST /v1/readings/...` through the same mappings, limits, identities
/// and Kafka path as MQTT publishes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpIngestSettings {
    /// Plain HTTP (HTTP/1.1 and HTTP/2 without TLS).
    pub listen: SocketAddr,
    /// HTTPS with `[ingress.tls]`'s certificates; client certificates identify senders as
    /// on MQTT over TLS.
    #[serde(default)]
    pub tls_listen: Option<SocketAddr>,
    /// The MQTT topic `POST /v1/readings/{device_id}` is routed as.
    #[serde(default = "default_http_topic")]
    pub topic: String,
    /// The MQTT topic `POST /v1/readings/{device_id}/{metric}` is routed as.
    #[serde(default = "default_http_metric_topic")]
    pub metric_topic: String,
    /// Senders with no identity on `listen`. Unset: allowed only when `listen` is a
    /// loopback address and there is neither a password file nor a token file.
    #[serde(default)]
    pub allow_anonymous: Option<bool>,
    /// Open HTTP connections, in all and from one source address (an IPv4 address or an
    /// IPv6 /64; 0: no cap); past them a new one is closed at once.
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_http_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Requests being served at once; past it `503`.
    #[serde(default = "default_http_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Requests being served at once from one source address (an IPv4 address or an IPv6
    /// /64; 0: no cap); past it `429`, so one sender cannot hold every slot.
    #[serde(default = "default_http_max_requests_per_address")]
    pub max_requests_per_address: usize,
    /// A batch request's body, compressed or not.
    #[serde(default = "default_http_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Entries in one batch.
    #[serde(default = "default_http_max_batch_entries")]
    pub max_batch_entries: usize,
    /// Reading a request and waiting for Kafka's answer: past it `503` (the readings may
    /// still be stored).
    #[serde(default = "default_http_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

fn default_lease_ms() -> u64 {
    5000
}

fn default_http_topic() -> String {
    "devices/{device_id}/senml".into()
}
fn default_http_metric_topic() -> String {
    "sensors/{device_id}/{metric}".into()
}
fn default_http_max_connections() -> usize {
    1024
}
fn default_http_max_connections_per_address() -> usize {
    128
}
fn default_http_max_concurrent_requests() -> usize {
    256
}
fn default_http_max_requests_per_address() -> usize {
    64
}
fn default_http_max_batch_entries() -> usize {
    1000
}
fn default_http_max_body_bytes() -> usize {
    1 << 20
}
fn default_http_request_timeout_ms() -> u64 {
    30_000
}

impl HttpIngestSettings {
    /// Whether `listen` takes senders with no identity (see `allow_anonymous`).
    pub fn plain_allows_anonymous(&self, auth: &AuthSettings) -> bool {
        self.allow_anonymous.unwrap_or(
            self.listen.ip().is_loopback()
                && auth.password_file.is_none()
                && auth.token_file.is_none(),
        )
    }

    /// The topic a request for `device_id` (and `metric`) is routed as.
    pub fn topic_for(&self, device_id: &str, metric: Option<&str>) -> String {
        match metric {
            Some(metric) => self
                .metric_topic
                .replace("{device_id}", device_id)
                .replace("{metric}", metric),
            None => self.topic.replace("{device_id}", device_id),
        }
    }
}

fn default_max_subscriptions_per_session() -> usize {
    1000
}

/// Who may connect and what they may do: files re-read on SIGHUP.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Users and password hashes as `mosquitto_passwd` writes them.
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// Publish and subscribe rules in mosquitto's acl_file format.
    #[serde(default)]
    pub acl_file: Option<std::path::PathBuf>,
    /// HTTP bearer tokens: `identity:sha256-of-token` lines.
    #[serde(default)]
    pub token_file: Option<std::path::PathBuf>,
}

impl IngressSettings {
    /// Whether `listen` takes clients with no identity (see `allow_anonymous`).
    pub fn plain_allows_anonymous(&self, auth: &AuthSettings) -> bool {
        self.allow_anonymous
            .unwrap_or(self.listen.ip().is_loopback() && auth.password_file.is_none())
    }
}

fn default_topic_alias_maximum() -> u16 {
    32
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_connections_per_address() -> usize {
    1_000
}
fn default_max_buffered_bytes() -> usize {
    1 << 20
}
fn default_max_buffered_bytes_total() -> usize {
    256 * 1024 * 1024
}
fn default_write_timeout_ms() -> u64 {
    30_000
}
fn default_drain_timeout_ms() -> u64 {
    10_000
}
fn default_broker_keep_alive_s() -> u16 {
    u16::MAX
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnmappedPolicy {
    /// Routed to subscribers like any broker traffic, acknowledged with success; nothing
    /// goes to Kafka.
    #[default]
    Route,
    /// Routed, and kept in the dead-letter topic with its bytes; acknowledged with success
    /// once it is there.
    DeadLetter,
    /// Not routed, not kept; acknowledged (MQTT 5: reason 0x90).
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSettings {
    /// MQTT topic filter with named segments, e.g. `sensors/{device_id}/{metric}`.
    pub filter: String,
    pub kafka_topic: String,
    /// Kafka key template over the filter's named segments.
    #[serde(default = "default_key")]
    pub key: String,
    #[serde(default)]
    pub ack: AckPolicy,
    /// `auto` (by first byte), `json`, `cbor`, `senml`, `senml+json` or `senml+cbor`; an
    /// MQTT 5 content type overrides it.
    #[serde(default)]
    pub format: Format,
}

fn default_key() -> String {
    "{device_id}".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    pub brokers: String,
    /// Where payloads that cannot be decoded or mapped go, with their original bytes.
    pub dead_letter_topic: String,
    /// Partitions for topics Sluice creates at start-up when they are missing.
    pub partitions: i32,
    pub replication_factor: i32,
    /// How long the producer keeps retrying a record before giving up on it.
    pub delivery_timeout_ms: u64,
    /// Extra librdkafka properties, passed through unchanged.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterSettings {
    pub database_url: String,
    /// Names this writer's progress in `sluice_offsets`.
    pub group_id: String,
    /// Partitions of each readings topic this writer takes, fixed, with no failover. When
    /// absent, the writers of one `group_id` share all partitions as `coordination` says
    /// and take over a stopped or dead writer's share (`lease`).
    #[serde(default)]
    pub partitions: Option<Vec<i32>>,
    /// Who deals the partitions among the writers of one `group_id`.
    #[serde(default)]
    pub coordination: Coordination,
    /// A writer not heard from for this long is taken for dead and its partitions are
    /// dealt to the others: its lease in the database, or Kafka's `session.timeout.ms`.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Upper bounds on one COPY batch: rows, and Kafka record bytes.
    pub max_batch_rows: usize,
    pub max_batch_bytes: usize,
    /// Extra wait for more records when a batch is not full; 0 writes as soon as Kafka is idle.
    pub linger_ms: u64,
    /// Rows per second the writer may write; 0 is no limit. Protects a shared database.
    #[serde(default)]
    pub max_rows_per_second: u64,
}

/// `[anomalies]`: the writer's streaming detector (see `anomaly`). Scales are robust
/// standard deviations of a series' recent values (1.4826 x MAD).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnomalySettings {
    pub enabled: bool,
    /// The Kafka topic anomalies are published to (JSON, keyed by device).
    pub topic: String,
    /// Readings of a series taken before it is judged.
    pub warmup: usize,
    /// Recent values a series' median and MAD are taken over.
    pub window: usize,
    /// A spike: a value more than this many scales from the median.
    pub threshold: f64,
    /// The smallest scale a series is judged with, in its own units, so that a perfectly
    /// flat series does not flag every tiny change.
    pub min_scale: f64,
    /// Stuck: the same value this many times in a row, from a series that seldom repeats.
    pub stuck_after: usize,
    /// Dropout: a gap longer than this many times the series' typical interval.
    pub dropout_factor: f64,
    /// Drift: a fast average of the values (this weight for each new one) more than
    /// `drift_threshold` noise standard deviations (from the steps between readings) from
    /// a baseline ten times slower, for `drift_for` readings in a row.
    pub drift_alpha: f64,
    pub drift_threshold: f64,
    pub drift_for: usize,
    /// Series kept (about 700 bytes each with the default window); past it those still in
    /// their warm-up are dropped first, then those seen least recently.
    pub max_series: usize,
    /// Series (metrics) tracked per device; a device's further metrics are not judged.
    pub max_series_per_device: usize,
}

impl Default for AnomalySettings {
    fn default() -> Self {
        AnomalySettings {
            enabled: true,
            topic: "sensor.anomalies".into(),
            warmup: 30,
            window: 64,
            threshold: 6.0,
            min_scale: 1e-3,
            stuck_after: 10,
            dropout_factor: 5.0,
            drift_alpha: 0.05,
            drift_threshold: 2.0,
            drift_for: 10,
            max_series: 1_000_000,
            max_series_per_device: 256,
        }
    }
}

impl AnomalySettings {
    fn validate(&self) -> Result<(), SettingsError> {
        let invalid =
            |key: &str, why: &str| Err(SettingsError::Invalid(format!("anomalies.{key}: {why}")));
        if self.topic.trim().is_empty() {
            return invalid("topic", "must name a Kafka topic");
        }
        if self.window < 8 || self.window > 4096 {
            return invalid("window", "must be between 8 and 4096 readings");
        }
        if self.warmup < self.window.min(30) / 2 {
            return invalid(
                "warmup",
                "must be at least half of the window or of 30, whichever is smaller",
            );
        }
        if self.stuck_after < 3 {
            return invalid("stuck_after", "must be at least 3");
        }
        if self.drift_for == 0 || self.max_series == 0 || self.max_series_per_device == 0 {
            return invalid(
                "drift_for, max_series and max_series_per_device",
                "must be at least 1",
            );
        }
        for (key, v, low) in [
            ("threshold", self.threshold, 0.0),
            ("min_scale", self.min_scale, 0.0),
            ("drift_threshold", self.drift_threshold, 0.0),
            ("dropout_factor", self.dropout_factor, 1.0),
        ] {
            if !(v.is_finite() && v > low) {
                return invalid(key, &format!("must be a number above {low}"));
            }
        }
        if !(self.drift_alpha > 0.0 && self.drift_alpha <= 1.0) {
            return invalid("drift_alpha", "must be above 0 and at most 1");
        }
        Ok(())
    }
}

/// The database's lifecycle, applied at every start (see `lifecycle`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// Where readings are kept: TimescaleDB hypertables or plain PostgreSQL partitions.
    pub backend: StorageBackend,
    /// Time span of one TimescaleDB chunk, or of one partition without TimescaleDB.
    pub chunk_interval: Span,
    /// Chunks older than this are compressed (TimescaleDB only).
    pub compress_after: Span,
    /// Readings older than this are dropped, a chunk or partition at a time.
    pub retain_for: Span,
    /// How often `readings_1m` is brought up to date.
    pub rollup_refresh: Span,
    /// How far back TimescaleDB's refresh policy looks for changed minutes.
    pub rollup_lookback: Span,
    /// `readings_1m` rows older than this are compressed (TimescaleDB only).
    pub rollup_compress_after: Span,
    /// `readings_1m` rows older than this are dropped; usually longer than `retain_for`.
    pub rollup_retain_for: Span,
    /// A TimescaleDB job that has not succeeded within its schedule is run by Sluice
    /// (`CALL run_job`), at most once per schedule.
    pub run_overdue_jobs: bool,
    /// Partitions kept ready ahead of the current one (without TimescaleDB).
    pub partitions_ahead: u32,
}

impl Default for StorageSettings {
    fn default() -> Self {
        let span = |s: &str| Span::try_from(s.to_owned()).expect("valid default");
        StorageSettings {
            backend: StorageBackend::Auto,
            chunk_interval: span("1 day"),
            compress_after: span("7 days"),
            retain_for: span("365 days"),
            rollup_refresh: span("1 minute"),
            rollup_lookback: span("1 day"),
            rollup_compress_after: span("30 days"),
            rollup_retain_for: span("1825 days"),
            run_overdue_jobs: true,
            partitions_ahead: 3,
        }
    }
}

/// Who deals the readings partitions among the writers of one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Coordination {
    /// A lease in the database (`sluice_writers`): works on every Kafka.
    #[default]
    Lease,
    /// Kafka's consumer-group protocol, for brokers that reassign a dead member's
    /// partitions (Apache Kafka, Redpanda; not tansu 0.6).
    Kafka,
}

/// Which database path `storage.backend` asks for. A database keeps the path it was
/// created with: asking for the other one later is refused at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// TimescaleDB when the server has it installed (and it must then be preloaded),
    /// plain PostgreSQL when it has not.
    #[default]
    Auto,
    Timescaledb,
    Postgres,
}

/// A time span written as a number and a unit ("90 days", "1 hour", "30 s"), or "off".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Span(pub Option<Duration>);

impl TryFrom<String> for Span {
    type Error = String;

    fn try_from(text: String) -> Result<Span, String> {
        let t = text.trim();
        if t == "off" {
            return Ok(Span(None));
        }
        let bad =
            || format!("{text:?} is not a span like \"30 s\", \"1 hour\", \"7 days\" or \"off\"");
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let n: u64 = t[..digits].parse().map_err(|_| bad())?;
        let unit: u64 = match t[digits..].trim().trim_end_matches('s') {
            "" | "sec" | "second" => 1,
            "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            "w" | "week" => 604_800,
            _ => return Err(bad()),
        };
        match n.checked_mul(unit) {
            Some(secs) if secs > 0 => Ok(Span(Some(Duration::from_secs(secs)))),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => write!(f, "{} s", d.as_secs()),
            None => f.write_str("off"),
        }
    }
}

impl StorageSettings {
    /// How often readings_1m is brought up to date (a minute when `rollup_refresh` is off).
    pub fn rollup_period(&self) -> Duration {
        self.rollup_refresh.0.unwrap_or(Duration::from_secs(60))
    }
}

impl Span {
    /// Seconds, for PostgreSQL's `make_interval(secs => ..)`; NULL when off.
    pub fn seconds(&self) -> Option<f64> {
        self.0.map(|d| d.as_secs_f64())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Serves `/metrics` (Prometheus) and `/health`.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    #[serde(default)]
    pub json: bool,
}

/// `value` with every secret replaced, whole: the database URL's password, and anything
/// under a key that names a password, secret, key, token or credentials (librdkafka's
/// `ssl.key.pem` or `sasl.password`, rumqttd's `auth` tables of users and passwords).
/// File paths are kept.
fn masked(mut value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    // `auth` is rumqttd's table of users and passwords, except Sluice's own [auth]
    // section, which names files.
    fn secret(key: &str, top: bool) -> bool {
        let key = key.to_ascii_lowercase();
        let words = [
            "pass",
            "secret",
            "private",
            "sasl",
            "token",
            "credential",
            "pem",
            "key",
        ];
        let named = words.iter().any(|w| key.contains(w));
        // Paths to such files, and a mapping's Kafka `key` template, are not secrets.
        let harmless = key.ends_with("_file") || key.ends_with(".location") || key == "key";
        (named && !harmless) || (key == "auth" && !top)
    }
    fn walk(value: &mut Value, top: bool) {
        match value {
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    match secret(key, top) {
                        true => *v = Value::String("********".into()),
                        false => walk(v, false),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, false)),
            _ => {}
        }
    }
    walk(&mut value, true);
    if let Some(url) = value.pointer_mut("/writer/database_url") {
        if let Some(text) = url.as_str() {
            *url = Value::String(crate::db::redact(text));
        }
    }
    value
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration file {path}: {source}")]
    File {
        path: String,
        source: config::ConfigError,
    },
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Reads `path`, then the environment; validates what serde cannot.
    pub fn load(path: &Path) -> Result<Settings, SettingsError> {
        Self::load_from(path, None)
    }

    /// As [`Settings::load`], with `env` read instead of the process's environment: a
    /// configuration checked as a deployment would run it (a Kubernetes container's
    /// `env`, say) without setting variables that other threads read.
    pub fn load_with_env(
        path: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<Settings, SettingsError> {
        Self::load_from(path, Some(env))
    }

    fn load_from(
        path: &Path,
        env: Option<&BTreeMap<String, String>>,
    ) -> Result<Settings, SettingsError> {
        let given = env.map(|e| e.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        let mut builder = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("SLUICE")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .source(given),
            );
        for (var, key) in [
            ("DATABASE_URL", "writer.database_url"),
            ("KAFKA_BROKERS", "kafka.brokers"),
        ] {
            let value = match env {
                Some(env) => env.get(var).cloned(),
                None => std::env::var(var).ok(),
            };
            if let Some(value) = value {
                builder = builder
                    .set_override(key, value)
                    .map_err(|e| SettingsError::Invalid(e.to_string()))?;
            }
        }
        let file_error = |source| SettingsError::File {
            path: path.display().to_string(),
            source,
        };
        let built = builder.build().map_err(file_error)?;
        let as_set = built.clone().try_deserialize().map_err(file_error)?;
        let mut settings: Settings = built.try_deserialize().map_err(file_error)?;
        settings.as_set = masked(as_set);
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |key: &str, why: &str| Err(SettingsError::Invalid(format!("{key}: {why}")));
        if self.mappings.is_empty() {
            return invalid("mappings", "at least one mapping is required");
        }
        for (i, m) in self.mappings.iter().enumerate() {
            if let Err(e) = crate::mapping::TopicTemplate::parse(&m.filter, &m.key) {
                return invalid(&format!("mappings[{i}].filter"), &e.to_string());
            }
        }
        if self.api.database_connections == 0 || self.api.max_streams == 0 {
            return invalid(
                "api.database_connections, api.max_streams",
                "must be at least 1",
            );
        }
        if self.kafka.brokers.trim().is_empty() {
            return invalid("kafka.brokers", "must name at least one host:port");
        }
        let i = &self.ingress;
        let limits = [
            i.max_inflight_per_connection,
            i.max_inflight_total,
            i.max_inflight_bytes_per_connection,
            i.max_inflight_bytes_total,
        ];
        if limits.contains(&0) {
            return invalid("ingress.max_inflight_*", "must be at least 1");
        }
        if i.max_connections == 0 {
            return invalid("ingress.max_connections", "must be at least 1");
        }
        const DAY_MS: u64 = 86_400_000;
        for (key, ms) in [
            ("ingress.write_timeout_ms", i.write_timeout_ms),
            ("ingress.drain_timeout_ms", i.drain_timeout_ms),
            ("ingress.connect_timeout_ms", i.connect_timeout_ms),
        ] {
            if ms == 0 || ms > DAY_MS {
                return invalid(key, "must be between 1 and 86400000 (a day)");
            }
        }
        if i.max_bytes_per_second > 0
            && i.burst_bytes > 0
            && (i.burst_bytes as usize) < i.max_packet_size
        {
            return invalid(
                "ingress.burst_bytes",
                "must be at least ingress.max_packet_size, or a packet could never pass",
            );
        }
        if let Some(tls) = &i.tls {
            if tls.listen == i.listen {
                return invalid("ingress.tls.listen", "must differ from ingress.listen");
            }
            if tls.require_certificate && tls.cafile.is_none() {
                return invalid(
                    "ingress.tls.cafile",
                    "require_certificate needs a CA bundle",
                );
            }
        }
        if let Some(h) = &i.http {
            self.validate_http(h)?;
        }
        if i.broker_keep_alive_s < 2 {
            return invalid("ingress.broker_keep_alive_s", "must be at least 2");
        }
        // rumqttd closes a relay whose packet is past its own limit. On MQTT 5 a resolved
        // topic alias makes a packet up to a 65,535-byte topic longer than the device sent
        // it, and Sluice's stamp (`ingress::deliver::STAMP_ROOM`) a little longer.
        let alias_room = if i.topic_alias_maximum > 0 { 65_536 } else { 0 };
        let v5_room = alias_room + crate::ingress::deliver::STAMP_ROOM;
        let listeners = [(&self.broker.v4, 0), (&self.broker.v5, v5_room)];
        for (servers, room) in listeners {
            for server in servers.iter().flat_map(|l| l.values()) {
                let relayed = i.max_packet_size + room;
                if server.connections.max_payload_size < relayed {
                    let key = format!("broker listener {} max_payload_size", server.name);
                    let why = format!("must be at least {relayed} (ingress.max_packet_size; on MQTT 5 plus 512, and 65536 more with topic aliases)");
                    return invalid(&key, &why);
                }
            }
        }
        if i.max_buffered_bytes_total < i.max_buffered_bytes_per_connection {
            return invalid(
                "ingress.max_buffered_bytes_total",
                "must be at least ingress.max_buffered_bytes_per_connection",
            );
        }
        if i.max_buffered_bytes_per_connection < i.max_packet_size {
            return invalid(
                "ingress.max_buffered_bytes_per_connection",
                "must be at least ingress.max_packet_size",
            );
        }
        // A dead letter carries a whole publish: Kafka must always take it, or a device
        // could be refused forever.
        let kafka_max = self
            .kafka
            .properties
            .get("message.max.bytes")
            .map_or(Ok(1_000_000), |v| v.parse::<usize>());
        let dead_letter_max = i.max_packet_size + DEAD_LETTER_OVERHEAD + alias_room;
        if !kafka_max.is_ok_and(|max| max >= dead_letter_max) {
            let why = format!("must be at least {dead_letter_max} (a dead letter of the largest packet, a topic alias resolved)");
            return invalid("kafka.properties.message.max.bytes", &why);
        }
        if self.writer.max_batch_rows == 0 {
            return invalid("writer.max_batch_rows", "must be at least 1");
        }
        if self.writer.max_batch_bytes == 0 {
            return invalid("writer.max_batch_bytes", "must be at least 1");
        }
        if self.writer.lease_ms < 500 || self.writer.lease_ms > 300_000 {
            return invalid(
                "writer.lease_ms",
                "must be between 500 and 300000 (5 minutes)",
            );
        }
        if self.writer.coordination == Coordination::Kafka {
            if self.writer.partitions.is_some() {
                return invalid(
                    "writer.coordination",
                    "\"kafka\" deals the partitions; writer.partitions fixes them: set one",
                );
            }
            // Kafka brokers refuse session timeouts under group.min.session.timeout.ms.
            if self.writer.lease_ms < 6000 {
                return invalid(
                    "writer.lease_ms",
                    "is Kafka's session.timeout.ms with coordination = \"kafka\": at least 6000",
                );
            }
        }
        self.anomalies.validate()?;
        if self.anomalies.enabled {
            // The writer would read its own anomalies back as readings, or mix them with
            // dead letters.
            let topic = self.anomalies.topic.trim();
            if topic == self.kafka.dead_letter_topic.trim() {
                return invalid(
                    "anomalies.topic",
                    &format!("{topic:?} is also kafka.dead_letter_topic; give anomalies a topic of their own"),
                );
            }
            if let Some(i) = self
                .mappings
                .iter()
                .position(|m| m.kafka_topic.trim() == topic)
            {
                return invalid(
                    "anomalies.topic",
                    &format!("{topic:?} is also mappings[{i}].kafka_topic; give anomalies a topic of their own"),
                );
            }
        }
        let st = &self.storage;
        for (key, span) in [
            ("storage.chunk_interval", st.chunk_interval),
            ("storage.rollup_refresh", st.rollup_refresh),
            ("storage.rollup_lookback", st.rollup_lookback),
        ] {
            if span.0.is_none() {
                return invalid(key, "cannot be off");
            }
        }
        // The refresh window must stay clear of what is dropped of the readings and of
        // what is compressed or dropped of the rollup (TimescaleDB's add_policies() refuses
        // such overlaps): a refresh over dropped readings would empty minutes it had rolled
        // up. Compressed readings are still read by the refresh.
        for (key, span) in [
            ("storage.retain_for", st.retain_for),
            ("storage.rollup_compress_after", st.rollup_compress_after),
            ("storage.rollup_retain_for", st.rollup_retain_for),
        ] {
            if span.0.is_some() && span.0 <= st.rollup_lookback.0 {
                return invalid(key, "must be longer than storage.rollup_lookback");
            }
        }
        let listeners = self.broker.v4.iter().chain(self.broker.v5.iter());
        if listeners.flat_map(|l| l.values()).next().is_none() {
            return invalid("broker.v4", "the embedded broker needs a v4 listener");
        }
        Ok(())
    }

    /// `[ingress.http]`: its topics must each route through a mapping that names the
    /// device (and, for `metric_topic`, the metric) where the path puts them.
    fn validate_http(&self, h: &HttpIngestSettings) -> Result<(), SettingsError> {
        let invalid = |key: &str, why: String| Err(SettingsError::Invalid(format!("{key}: {why}")));
        let mappings = crate::mapping::Mappings::new(&self.mappings)
            .map_err(|e| SettingsError::Invalid(format!("mappings: {e}")))?;
        let (device, metric) = ("device-probe", "metric-probe");
        for (key, template, want_metric) in [
            ("ingress.http.topic", &h.topic, None),
            ("ingress.http.metric_topic", &h.metric_topic, Some(metric)),
        ] {
            if !template.contains("{device_id}")
                || want_metric.is_some() != template.contains("{metric}")
            {
                let names = if want_metric.is_some() {
                    "{device_id} and {metric}"
                } else {
                    "{device_id} and no {metric}"
                };
                return invalid(key, format!("must name {names}"));
            }
            let topic = h.topic_for(device, want_metric);
            let route = mappings.route(&topic);
            let routed = route.as_ref().is_some_and(|r| {
                r.device_id == device && want_metric.is_none_or(|m| r.metric.as_deref() == Some(m))
            });
            if !routed {
                return invalid(key, format!("{topic:?} must match a [[mappings]] filter that captures the device id there (and the metric, for metric_topic)"));
            }
        }
        if let (Some(tls_listen), None) = (h.tls_listen, &self.ingress.tls) {
            return invalid(
                "ingress.http.tls_listen",
                format!("{tls_listen} needs [ingress.tls] (its certificates serve HTTPS too)"),
            );
        }
        let addresses = [Some(h.listen), h.tls_listen];
        let taken = [
            Some(self.ingress.listen),
            self.ingress.tls.as_ref().map(|t| t.listen),
            Some(self.http.listen),
        ];
        if addresses
            .iter()
            .flatten()
            .any(|a| taken.contains(&Some(*a)))
            || h.tls_listen == Some(h.listen)
        {
            return invalid(
                "ingress.http.listen",
                "must differ from the other listeners".into(),
            );
        }
        for (key, n) in [
            ("ingress.http.max_connections", h.max_connections),
            (
                "ingress.http.max_concurrent_requests",
                h.max_concurrent_requests,
            ),
            ("ingress.http.max_body_bytes", h.max_body_bytes),
            ("ingress.http.max_batch_entries", h.max_batch_entries),
        ] {
            if n == 0 {
                return invalid(key, "must be at least 1".into());
            }
        }
        if h.request_timeout_ms == 0 || h.request_timeout_ms > 86_400_000 {
            return invalid(
                "ingress.http.request_timeout_ms",
                "must be between 1 and 86400000 (a day)".into(),
            );
        }
        Ok(())
    }

    /// The embedded broker's loopback listener for a protocol level (4 = 3.1.1, 5 = 5).
    pub fn broker_addr(&self, level: u8) -> Option<SocketAddr> {
        let servers = if level == 5 {
            &self.broker.v5
        } else {
            &self.broker.v4
        };
        servers.as_ref()?.values().next().map(|s| s.listen)
    }
}

#[cfg(test)]
mod tests {
    use super::{masked, Span};
    use std::time::Duration;

    #[test]
    fn secrets_are_masked_whole_and_paths_kept() {
        let set = serde_json::json!({
            "writer": {"database_url": "postgres://u:pw@h/db"},
            "kafka": {"properties": {"sasl.password": "s", "ssl.key.pem": "-----BEGIN",
                                     "ssl.key.location": "/etc/k.pem", "acks": "all"}},
            "auth": {"password_file": "passwd", "token_file": "tokens"},
            "broker": {"v4": {"1": {"connections": {"auth": {"dev": "pw"}}}}},
            "mappings": [{"key": "{device_id}"}],
        });
        let m = masked(set);
        assert_eq!(m["writer"]["database_url"], "postgres://u@h/db");
        let p = &m["kafka"]["properties"];
        assert_eq!(p["sasl.password"], "********");
        assert_eq!(p["ssl.key.pem"], "********");
        assert_eq!(p["ssl.key.location"], "/etc/k.pem");
        assert_eq!(p["acks"], "all");
        assert_eq!(m["auth"]["password_file"], "passwd");
        assert_eq!(m["auth"]["token_file"], "tokens");
        assert_eq!(m["broker"]["v4"]["1"]["connections"]["auth"], "********");
        assert_eq!(m["mappings"][0]["key"], "{device_id}");
    }

    fn span(s: &str) -> Result<Option<u64>, String> {
        Span::try_from(s.to_owned()).map(|s| s.0.map(|d| d.as_secs()))
    }

    #[test]
    fn spans_read_like_postgres_intervals() {
        assert_eq!(span("30 s"), Ok(Some(30)));
        assert_eq!(span("1 minute"), Ok(Some(60)));
        assert_eq!(span("2 hours"), Ok(Some(7200)));
        assert_eq!(span("7 days"), Ok(Some(604_800)));
        assert_eq!(span("1w"), Ok(Some(604_800)));
        assert_eq!(span("off"), Ok(None));
        for bad in [
            "",
            "days",
            "0 s",
            "1 month",
            "-1 day",
            "1.5 hours",
            "99999999999999 w",
        ] {
            assert!(span(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            Span::try_from("1 day".to_owned()).unwrap().0,
            Some(Duration::from_secs(86_400))
        );
    }

    /// broker.toml with `edit` applied, loaded and validated.
    fn load_edited(edit: impl Fn(String) -> String) -> Result<super::Settings, String> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = std::fs::read_to_string(root.join("broker.toml")).expect("broker.toml");
        let dir = std::env::temp_dir().join(format!("sluice-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{n}.toml"));
        std::fs::write(&path, edit(text)).expect("write");
        let loaded = super::Settings::load(&path).map_err(|e| e.to_string());
        let _ = std::fs::remove_file(&path);
        loaded
    }

    #[test]
    fn limits_that_would_refuse_a_device_forever_are_refused() {
        assert!(load_edited(|t| t).is_ok(), "broker.toml is valid");
        let small_kafka = load_edited(|t| {
            t.replace(
                "\"client.id\" = \"sluice\"",
                "\"client.id\" = \"sluice\"\n\"message.max.bytes\" = \"100000\"",
            )
        });
        assert!(
            small_kafka.is_err_and(|e| e.contains("message.max.bytes")),
            "dead letters must fit"
        );
        // The MQTT 5 listener, which gets resolved topic aliases and stamps.
        let small_broker = load_edited(|t| {
            let at = t
                .rfind("max_payload_size = 328192")
                .expect("the v5 listener");
            t[..at].to_owned() + &t[at..].replacen("328192", "327680", 1)
        });
        assert!(
            small_broker.is_err_and(|e| e.contains("max_payload_size")),
            "relayed packets must fit"
        );
        let bad_threshold = load_edited(|t| t.replace("threshold = 6.0", "threshold = -1"));
        assert!(
            bad_threshold.is_err_and(|e| e.contains("anomalies.threshold")),
            "anomaly thresholds are checked"
        );
        let readings_topic = load_edited(|t| {
            t.replace(
                "topic = \"sensor.anomalies\"",
                "topic = \"sensor.readings\"",
            )
        });
        assert!(
            readings_topic.is_err_and(
                |e| e.contains("anomalies.topic") && e.contains("mappings[0].kafka_topic")
            ),
            "anomalies are not published among readings"
        );
        let dead_letters =
            load_edited(|t| t.replace("topic = \"sensor.anomalies\"", "topic = \"sensor.dlq\""));
        assert!(
            dead_letters.is_err_and(|e| e.contains("kafka.dead_letter_topic")),
            "anomalies are not published among dead letters"
        );
    }

    #[test]
    fn writer_coordination_is_checked_against_the_lease() {
        fn kafka(lease: &'static str) -> impl Fn(String) -> String {
            move |t| {
                t.replace(
                    "lease_ms = 5000\n",
                    &format!("lease_ms = {lease}\ncoordination = \"kafka\"\n"),
                )
            }
        }
        let loaded = load_edited(kafka("6000")).expect("kafka with a 6 s session");
        assert_eq!(loaded.writer.coordination, super::Coordination::Kafka);
        assert!(
            load_edited(kafka("5000")).is_err_and(|e| e.contains("session.timeout.ms")),
            "Kafka would refuse a session under 6 s"
        );
        let fixed = load_edited(|t| {
            kafka("6000")(t).replace("# partitions = [0, 1, 2]", "partitions = [0, 1, 2]")
        });
        assert!(
            fixed.is_err_and(|e| e.contains("writer.coordination")),
            "a fixed share and Kafka's dealing exclude each other"
        );
        let forever = load_edited(|t| t.replace("lease_ms = 5000", "lease_ms = 86400000"));
        assert!(forever.is_err_and(|e| e.contains("writer.lease_ms")));
        let unknown = load_edited(|t| {
            t.replace("# coordination = \"lease\"", "coordination = \"zookeeper\"")
        });
        assert!(unknown.is_err_and(|e| e.contains("coordination")));
    }
}
