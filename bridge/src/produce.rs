//! Kafka production: an idempotent, acks=all rdkafka producer. `send` enqueues a record and
//! hands back a `Delivery`, the token the ingress holds until Kafka's delivery report
//! says the record is safe; only then does the device get its PUBACK/PUBREC.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::settings::KafkaSettings;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    #[error("kafka refused the record: {0}")]
    Kafka(#[from] KafkaError),
    #[error("local producer queue is full")]
    QueueFull,
}

/// Resolves when Kafka has acknowledged (or finally refused) one record.
pub type Delivery = Pin<Box<dyn Future<Output = Result<(), ProduceError>> + Send>>;

/// Why a payload went to the dead-letter topic, with what the operator needs to find it.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub mqtt_topic: &'a str,
    pub client_id: &'a str,
    pub reason: &'a str,
    pub detail: String,
    pub received_at: DateTime<Utc>,
    /// MQTT 5 properties of the publish, as for a readings record (see `headers`).
    pub properties: &'a [(String, String)],
}

pub struct Producer {
    inner: FutureProducer,
    dead_letter_topic: String,
}

/// Base client configuration shared by producer, consumer and admin client.
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &settings.brokers);
    for (k, v) in &settings.properties {
        config.set(k, v);
    }
    config
}

impl Producer {
    pub fn new(settings: &KafkaSettings) -> Result<Producer, KafkaError> {
        let inner = client_config(settings)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
            .set(
                "message.timeout.ms",
                settings.delivery_timeout_ms.to_string(),
            )
            .create()?;
        Ok(Producer {
            inner,
            dead_letter_topic: settings.dead_letter_topic.clone(),
        })
    }

    /// Enqueues one record. When librdkafka's local queue is full it waits if `wait` (the
    /// device is then not read, which is the backpressure), else fails at once (QoS 0).
    pub async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
        wait: bool,
    ) -> Delivery {
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        loop {
            match self.inner.send_result(record) {
                Ok(delivery) => {
                    return Box::pin(async move {
                        match delivery.await {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err((e, _))) => Err(ProduceError::Kafka(e)),
                            Err(_cancelled) => Err(ProduceError::Kafka(KafkaError::Canceled)),
                        }
                    });
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) if wait => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Box::pin(async { Err(ProduceError::QueueFull) });
                }
                Err((e, _)) => return Box::pin(async move { Err(ProduceError::Kafka(e)) }),
            }
        }
    }

    /// Sends a payload that could not be decoded or mapped, with its original bytes.
    pub async fn dead_letter(
        &self,
        payload: &[u8],
        letter: DeadLetter<'_>,
        wait: bool,
    ) -> Delivery {
        let received_at = letter.received_at.to_rfc3339();
        let headers = OwnedHeaders::new()
            .insert(header("mqtt_topic", letter.mqtt_topic))
            .insert(header("client_id", letter.client_id))
            .insert(header("reason", letter.reason))
            .insert(header("detail", &letter.detail))
            .insert(header("received_at", &received_at));
        let headers = letter
            .properties
            .iter()
            .fold(headers, |h, (k, v)| h.insert(header(k, v)));
        let topic = self.dead_letter_topic.clone();
        self.send(&topic, letter.client_id, payload, Some(headers), wait)
            .await
    }
}

/// Record headers from name/value pairs; none when there are none (the common case).
pub fn headers(pairs: &[(String, String)]) -> Option<OwnedHeaders> {
    (!pairs.is_empty()).then(|| {
        pairs
            .iter()
            .fold(OwnedHeaders::new(), |h, (k, v)| h.insert(header(k, v)))
    })
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

/// Creates the topics Sluice produces to when they are missing (tansu, like many
/// production clusters, does not auto-create them).
pub async fn ensure_topics<'a>(
    settings: &KafkaSettings,
    topics: impl IntoIterator<Item = &'a str>,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(settings).create()?;
    let mut names: Vec<&str> = topics.into_iter().collect();
    names.push(&settings.dead_letter_topic);
    names.sort_unstable();
    names.dedup();
    let new: Vec<NewTopic> = names
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                settings.partitions,
                TopicReplication::Fixed(settings.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new, &options).await? {
        match result {
            Ok(name) => tracing::info!(topic = %name, "created kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaError::AdminOp(code)).inspect_err(
                    |_| tracing::error!(topic = %name, %code, "cannot create kafka topic"),
                )
            }
        }
    }
    Ok(())
}
