//! Kafka production: an idempotent, acks=all rdkafka producer. A record travels with a
//! `Ticket`: its share of the in-flight budget and the `Waiter` for its acknowledgement.
//! The delivery report hands both back, on librdkafka's thread: the budget is free the
//! moment Kafka answers, and a record Kafka refuses for good goes to the dead-letter topic.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use metrics::counter;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use tokio::sync::mpsc;

use crate::ack::{Delivered, Waiter};
use crate::budget::Reservation;
use crate::health::Health;
use crate::settings::KafkaSettings;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProduceError {
    #[error("kafka refused the record: {0}")]
    Kafka(#[from] KafkaError),
    #[error("local producer queue is full")]
    QueueFull,
    #[error("the record's outcome was lost with its producer")]
    Abandoned,
}

/// Why a payload went to the dead-letter topic, with what the operator needs to find it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The device's bytes, as they came.
    pub payload: Bytes,
    pub mqtt_topic: String,
    pub client_id: Arc<str>,
    pub reason: &'static str,
    pub detail: String,
    pub received_at: DateTime<Utc>,
    /// MQTT 5 properties of the publish, as for a readings record (see `headers`).
    pub properties: Vec<(String, String)>,
}

/// What rides with a record through librdkafka and comes back in its delivery report.
pub struct Ticket {
    pub reservation: Reservation,
    pub waiter: Waiter,
    /// The publish as it came, to dead-letter if Kafka refuses the record for good.
    pub origin: Option<DeadLetter>,
}

/// A record ready for Kafka.
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: &'a str,
    pub payload: &'a [u8],
    pub headers: Option<OwnedHeaders>,
}

/// Receives delivery reports and librdkafka's own errors.
struct Reports {
    health: Arc<Health>,
    /// Records Kafka refused for good, on their way to the dead-letter topic.
    refused: mpsc::UnboundedSender<(DeadLetter, Ticket)>,
}

impl ClientContext for Reports {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.health.kafka_failing(),
            Some(RDKafkaErrorCode::Fatal) => self.health.producer_fatal(),
            _ => {}
        }
        tracing::error!(target: "librdkafka", "librdkafka: {error}: {reason}");
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<Ticket>;

    fn delivery(&self, result: &DeliveryResult<'_>, ticket: Box<Ticket>) {
        let ticket = *ticket;
        match result {
            Ok(_) => {
                self.health.kafka_working();
                ticket.waiter.resolve(Ok(Delivered::Stored));
            }
            Err((e, _)) => self.failed(e.clone(), ticket),
        }
    }
}

impl Reports {
    /// A record Kafka will never take is dead-lettered (and then acknowledged); any other
    /// failure is the waiter's to hear.
    fn failed(&self, error: KafkaError, mut ticket: Ticket) {
        let for_good = refused_for_good(&error);
        if for_good && ticket.origin.is_none() {
            // A dead letter refused too (settings keep them small enough; a broker's own
            // limit may not): dropped and counted, so the device is not refused forever.
            counter!("sluice_dead_letters_dropped_total").increment(1);
            tracing::error!(error = %error, "the dead-letter topic refused a dead letter; dropped");
            return ticket.waiter.resolve(Ok(Delivered::Stored));
        }
        if let (true, Some(letter)) = (for_good, ticket.origin.take()) {
            let letter = DeadLetter {
                reason: "kafka_refused",
                detail: format!("kafka refused the record: {error}"),
                ..letter
            };
            if let Err(mpsc::error::SendError((_, ticket))) = self.refused.send((letter, ticket)) {
                ticket.waiter.resolve(Err(error.into()));
            }
            return;
        }
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::MessageTimedOut | RDKafkaErrorCode::AllBrokersDown)
        ) {
            self.health.kafka_failing();
        }
        ticket.waiter.resolve(Err(error.into()));
    }
}

/// Errors no retry can mend: the record itself is what Kafka will not take.
fn refused_for_good(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}

pub struct Producer {
    inner: ThreadedProducer<Reports>,
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
    /// `queue_records` and `queue_bytes` are what the in-flight budgets let through:
    /// librdkafka's own queue is sized to hold them, so it is never the limit that bites
    /// (kafka.properties may still set it).
    pub fn new(
        settings: &KafkaSettings,
        queue_records: usize,
        queue_bytes: usize,
        health: Arc<Health>,
    ) -> Result<Arc<Producer>, KafkaError> {
        let (refused, mut refusals) = mpsc::unbounded_channel();
        let mut config = client_config(settings);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                settings.delivery_timeout_ms.to_string(),
            );
        // Defaults kafka.properties may change. The queue has room for the budgets plus
        // the dead letters of refused records, which keep their reservation.
        let queue_messages = (queue_records + 1_000).min(i32::MAX as usize).to_string();
        let queue_kbytes = (queue_bytes / 1024 + 1024)
            .min(i32::MAX as usize)
            .to_string();
        for (key, value) in [
            ("linger.ms", "2"),
            ("compression.type", "lz4"),
            ("queue.buffering.max.messages", &queue_messages),
            ("queue.buffering.max.kbytes", &queue_kbytes),
        ] {
            if !settings.properties.contains_key(key) {
                config.set(key, value);
            }
        }
        let inner = config.create_with_context(Reports { health, refused })?;
        let producer = Arc::new(Producer {
            inner,
            dead_letter_topic: settings.dead_letter_topic.clone(),
        });
        let dead_letters = producer.clone();
        tokio::spawn(async move {
            while let Some((letter, mut ticket)) = refusals.recv().await {
                let detail = letter.detail.clone();
                ticket.waiter = ticket.waiter.on_success(Delivered::DeadLettered(detail));
                dead_letters.dead_letter(letter, ticket, true).await;
            }
        });
        Ok(producer)
    }

    /// Enqueues one record; its ticket's waiter hears how it went. When librdkafka's
    /// queue is full it waits if `wait` (the device is then not read, which is the
    /// backpressure), else fails at once (QoS 0).
    pub async fn send(&self, out: Outgoing<'_>, ticket: Ticket, wait: bool) {
        let mut record = BaseRecord::with_opaque_to(out.topic, Box::new(ticket))
            .key(out.key)
            .payload(out.payload);
        if let Some(h) = out.headers {
            record = record.headers(h);
        }
        loop {
            match self.inner.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) if wait => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    return back
                        .delivery_opaque
                        .waiter
                        .resolve(Err(ProduceError::QueueFull));
                }
                Err((error, back)) => {
                    let ticket = *back.delivery_opaque;
                    return self.inner.context().failed(error, ticket);
                }
            }
        }
    }

    /// Sends a payload that could not be decoded, mapped or stored, with its original
    /// bytes and why.
    pub async fn dead_letter(&self, letter: DeadLetter, ticket: Ticket, wait: bool) {
        counter!("sluice_dead_letters_total", "reason" => letter.reason).increment(1);
        let received_at = letter.received_at.to_rfc3339();
        let headers = OwnedHeaders::new()
            .insert(header("mqtt_topic", &letter.mqtt_topic))
            .insert(header("client_id", &letter.client_id))
            .insert(header("reason", letter.reason))
            .insert(header("detail", &letter.detail))
            .insert(header("received_at", &received_at));
        let headers = letter
            .properties
            .iter()
            .fold(headers, |h, (k, v)| h.insert(header(k, v)));
        let out = Outgoing {
            topic: &self.dead_letter_topic,
            key: &letter.client_id,
            payload: &letter.payload,
            headers: Some(headers),
        };
        self.send(out, ticket, wait).await;
    }

    /// Waits until every record handed over has its delivery report, or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(timeout)
    }

    /// Whether a broker answers a metadata request (blocking, up to two seconds).
    pub fn reachable(&self) -> bool {
        answers(self.inner.client())
    }

    /// Whether Kafka is known to be unreachable: every broker down, or a record that
    /// timed out, and no delivery since.
    pub fn kafka_down(&self) -> bool {
        self.inner.context().health.kafka_down()
    }

    /// Records librdkafka still holds.
    pub fn in_flight(&self) -> i32 {
        self.inner.in_flight_count()
    }
}

/// Whether a broker answers `client`'s metadata request (blocking, up to two seconds).
fn answers<C: ClientContext>(client: &rdkafka::client::Client<C>) -> bool {
    client.fetch_metadata(None, Duration::from_secs(2)).is_ok()
}

/// A Kafka client that only asks for metadata: how a process without a producer (a
/// writer of its own) tells whether Kafka answers, for its readiness.
pub struct Probe(AdminClient<DefaultClientContext>);

impl Probe {
    pub fn new(settings: &KafkaSettings) -> Result<Probe, KafkaError> {
        client_config(settings).create().map(Probe)
    }

    /// Whether a broker answers a metadata request (blocking, up to two seconds).
    pub fn reachable(&self) -> bool {
        answers(self.0.inner())
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
