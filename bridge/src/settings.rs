//! Configuration: `broker.toml` layered with `SLUICE__SECTION__KEY` environment variables,
//! plus `DATABASE_URL` and `KAFKA_BROKERS` as-is. Every section rejects unknown keys so a
//! typo stops start-up with the key's name instead of being silently ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::decode::{Format, Limits};
use crate::mapping::AckPolicy;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub ingress: IngressSettings,
    pub mappings: Vec<MappingSettings>,
    #[serde(default)]
    pub limits: Limits,
    pub kafka: KafkaSettings,
    pub writer: WriterSettings,
    pub http: HttpSettings,
    #[serde(default)]
    pub log: LogSettings,
    /// The embedded rumqttd broker's own configuration, in rumqttd's format.
    pub broker: rumqttd::Config,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngressSettings {
    /// The device-facing port: MQTT 3.1.1 and 5 on the same socket.
    pub listen: SocketAddr,
    /// Largest MQTT packet accepted from a device, in bytes.
    pub max_packet_size: usize,
    /// Records a connection may have on their way to Kafka before Sluice stops reading it.
    pub max_inflight_per_connection: usize,
    /// Records all connections together may have on their way to Kafka.
    pub max_inflight_total: usize,
    /// The same two limits in payload bytes.
    pub max_inflight_bytes_per_connection: usize,
    pub max_inflight_bytes_total: usize,
    /// How long a new connection may take to send its CONNECT.
    pub connect_timeout_ms: u64,
    /// What happens to a publish no mapping matches.
    #[serde(default)]
    pub unmapped: UnmappedPolicy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnmappedPolicy {
    /// Into the dead-letter topic with its bytes, then acknowledged.
    #[default]
    DeadLetter,
    /// Counted and acknowledged (MQTT 5: reason 0x90), not kept.
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
    /// Partitions of each readings topic this writer takes; all of them when absent.
    /// Writers that share the load take disjoint sets under one `group_id`.
    #[serde(default)]
    pub partitions: Option<Vec<i32>>,
    /// Upper bound on rows per COPY batch.
    pub max_batch_rows: usize,
    /// Extra wait for more records when a batch is not full; 0 writes as soon as Kafka is idle.
    pub linger_ms: u64,
    /// Rows per second the writer may write; 0 is no limit. Protects a shared database.
    #[serde(default)]
    pub max_rows_per_second: u64,
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
        let mut builder = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("SLUICE")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            );
        for (var, key) in [
            ("DATABASE_URL", "writer.database_url"),
            ("KAFKA_BROKERS", "kafka.brokers"),
        ] {
            if let Ok(value) = std::env::var(var) {
                builder = builder
                    .set_override(key, value)
                    .map_err(|e| SettingsError::Invalid(e.to_string()))?;
            }
        }
        let file_error = |source| SettingsError::File {
            path: path.display().to_string(),
            source,
        };
        let settings: Settings = builder
            .build()
            .map_err(file_error)?
            .try_deserialize()
            .map_err(file_error)?;
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
        if self.writer.max_batch_rows == 0 {
            return invalid("writer.max_batch_rows", "must be at least 1");
        }
        let listeners = self.broker.v4.iter().chain(self.broker.v5.iter());
        if listeners.flat_map(|l| l.values()).next().is_none() {
            return invalid("broker.v4", "the embedded broker needs a v4 listener");
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
