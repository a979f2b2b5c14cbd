//! Ingress: owns each device's socket. It relays the connection to the embedded rumqttd
//! (sessions, subscriptions, retained messages and live fan-out stay rumqttd's), sends every
//! publish through `mapping` and `decode` to `produce`, and holds back rumqttd's
//! PUBACK/PUBREC: the device gets its own, in packet order, once Kafka has the record.
//! It also keeps the MQTT rules rumqttd does not: keep alive, a second CONNECT, and on
//! MQTT 5 topic aliases, receive maximum, packet size and truthful CONNACK properties.

use std::collections::HashMap;
use std::future::{ready, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use chrono::Utc;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use metrics::{counter, gauge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use crate::decode::{check_name, decode, Context, DecodeError, Format, Limits};
use crate::mapping::{AckPolicy, Mappings};
use crate::produce::{self, DeadLetter, Delivery, ProduceError, Producer};
use crate::record::Record;
use crate::sessions::Sessions;
use crate::settings::{IngressSettings, UnmappedPolicy};
use crate::wire::{self, Frame, WireError};

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Wire(#[from] WireError),
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("no embedded broker listener for protocol level {0}")]
    NoBroker(u8),
    #[error("kafka did not take a QoS {qos} record (packet {pkid}): {source}; closing so the device retransmits")]
    Delivery {
        qos: u8,
        pkid: u16,
        source: ProduceError,
    },
    #[error("a second CONNECT on the connection")]
    SecondConnect,
    #[error("silent for {0:?}, 1.5 times its keep alive")]
    KeepAlive(Duration),
    #[error("more than the receive maximum of {0} unacknowledged QoS 1/2 publishes")]
    ReceiveMaximum(usize),
    #[error("topic alias {0} is not valid here")]
    TopicAlias(u16),
}

impl ConnError {
    /// The MQTT 5 DISCONNECT reason a device is told before the connection closes.
    fn disconnect_reason(&self) -> Option<u8> {
        Some(match self {
            ConnError::Wire(WireError::TooLarge { .. }) => wire::REASON_PACKET_TOO_LARGE,
            ConnError::Wire(_) => wire::REASON_MALFORMED_PACKET,
            ConnError::SecondConnect => wire::REASON_PROTOCOL_ERROR,
            ConnError::KeepAlive(_) => wire::REASON_KEEP_ALIVE_TIMEOUT,
            ConnError::ReceiveMaximum(_) => wire::REASON_RECEIVE_MAXIMUM_EXCEEDED,
            ConnError::TopicAlias(_) => wire::REASON_TOPIC_ALIAS_INVALID,
            _ => return None,
        })
    }
}

/// Shared by every connection.
pub struct Ingress {
    settings: IngressSettings,
    limits: Limits,
    /// rumqttd's loopback listeners for MQTT 3.1.1 and 5.
    broker_v4: SocketAddr,
    broker_v5: Option<SocketAddr>,
    mappings: Mappings,
    producer: Arc<Producer>,
    /// Records and bytes on their way to Kafka, all connections together.
    inflight: Arc<Budget>,
    /// MQTT 5 session expiry (rumqttd has none).
    sessions: Option<Arc<Sessions>>,
    /// What the port promises MQTT 5 clients in CONNACK, and enforces.
    port: wire::ServerLimits,
}

/// What is on its way to Kafka: records and payload bytes.
#[derive(Default)]
struct Budget {
    records: AtomicUsize,
    bytes: AtomicUsize,
}

impl Ingress {
    pub fn new(
        settings: IngressSettings,
        limits: Limits,
        broker_v4: SocketAddr,
        broker_v5: Option<SocketAddr>,
        mappings: Mappings,
        producer: Arc<Producer>,
    ) -> Ingress {
        Ingress {
            limits,
            broker_v4,
            broker_v5,
            mappings,
            producer,
            inflight: Arc::new(Budget::default()),
            sessions: broker_v5.map(|addr| Arc::new(Sessions::new(addr))),
            port: wire::ServerLimits {
                receive_maximum: settings.max_inflight_per_connection.min(65_535) as u16,
                max_packet_size: settings.max_packet_size.min(u32::MAX as usize) as u32,
                topic_alias_maximum: settings.topic_alias_maximum,
            },
            settings,
        }
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: keep serving the others.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let ingress = self.clone();
            tokio::spawn(async move {
                gauge!("sluice_connections").increment(1.0);
                if let Err(e) = ingress.connection(socket).await {
                    tracing::info!(%peer, error = %e, "device connection closed");
                }
                gauge!("sluice_connections").decrement(1.0);
            });
        }
    }

    async fn connection(self: Arc<Self>, device: TcpStream) -> Result<(), ConnError> {
        device.set_nodelay(true)?;
        let (mut dev_rd, mut dev_wr) = device.into_split();
        let mut dev_buf = BytesMut::with_capacity(4096);
        let wait = Duration::from_millis(self.settings.connect_timeout_ms);
        let first = tokio::time::timeout(wait, async {
            loop {
                if let Some(frame) = wire::next_frame(&mut dev_buf, self.settings.max_packet_size)?
                {
                    return Ok::<_, ConnError>(frame);
                }
                if dev_rd.read_buf(&mut dev_buf).await? == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                }
            }
        })
        .await
        .map_err(|_| ConnError::ConnectTimeout(wait))??;
        let connect = match wire::read_connect(&first) {
            Err(e @ WireError::UnsupportedLevel(_)) => {
                dev_wr
                    .write_all(&wire::CONNACK_UNACCEPTABLE_PROTOCOL)
                    .await?;
                return Err(e.into());
            }
            other => other?,
        };
        let broker = match connect.level {
            5 => self.broker_v5.ok_or(ConnError::NoBroker(5))?,
            _ => self.broker_v4,
        };
        let sessions = self.sessions.clone().filter(|_| connect.level == 5);
        let claim = match &sessions {
            Some(s) => Some(s.opened(&connect.client_id, connect.session_expiry).await),
            None => None,
        };
        let result = self
            .relay(connect, first, broker, dev_rd, dev_wr, dev_buf)
            .await;
        if let (Some(sessions), Some(claim)) = (sessions, claim) {
            sessions.closed(claim);
        }
        result
    }

    /// Opens the device's relay to rumqttd and serves the connection until either side ends.
    async fn relay(
        self: Arc<Self>,
        connect: wire::Connect,
        first: Frame,
        broker: SocketAddr,
        dev_rd: OwnedReadHalf,
        dev_wr: OwnedWriteHalf,
        dev_buf: BytesMut,
    ) -> Result<(), ConnError> {
        let upstream = TcpStream::connect(broker).await?;
        upstream.set_nodelay(true)?;
        let (up_rd, mut up_wr) = upstream.into_split();
        // The ingress keeps the device's keep alive itself (and tells MQTT 5 clients why it
        // closes); rumqttd gets the largest one, so it never races the ingress to it, and so
        // a keep alive of 0, which it refuses, is accepted.
        up_wr
            .write_all(&wire::with_keep_alive(&first, u16::MAX))
            .await?;
        let keep_alive = (connect.keep_alive > 0)
            .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
        Conn {
            ingress: self,
            level: connect.level,
            client_id: connect.client_id,
            problem_info: connect.problem_info,
            // MQTT 3.1.1, 3.1.2.10 and MQTT 5, 3.1.2.10: one and a half times keep alive.
            silence: Box::pin(tokio::time::sleep(keep_alive.unwrap_or(Duration::MAX / 4))),
            keep_alive,
            heard: Instant::now(),
            connack_sent: false,
            aliases: HashMap::new(),
            dev_rd,
            dev_wr,
            dev_buf,
            up_rd,
            up_wr,
            up_buf: BytesMut::with_capacity(4096),
            out: BytesMut::with_capacity(1024),
            pending: FuturesOrdered::new(),
            pending_bytes: 0,
        }
        .run()
        .await
    }
}

/// What to send a device once its publish's delivery resolves.
struct Ack {
    qos: u8,
    pkid: u16,
    reason: u8,
    /// Why a publish was refused, for an MQTT 5 reason string.
    detail: Option<String>,
    bytes: usize,
}

/// A publish ready for Kafka.
struct Accepted<'a> {
    topic: &'a str,
    key: String,
    ack: AckPolicy,
    record: Record,
}

/// A publish that is not: why, what MQTT 5 devices are told, and whether its bytes are kept.
struct Rejected {
    reason: &'static str,
    detail: String,
    code: u8,
    ack: AckPolicy,
    dead_letter: bool,
}

type PendingAck = Pin<Box<dyn Future<Output = (Ack, Result<(), ProduceError>)> + Send>>;

/// One relayed device connection.
struct Conn {
    ingress: Arc<Ingress>,
    level: u8,
    client_id: String,
    /// MQTT 5: the client accepts reason strings.
    problem_info: bool,
    /// Silence after which the device is gone (its will is then published by rumqttd).
    keep_alive: Option<Duration>,
    /// When the device was last heard from, and a timer that, when it fires, checks
    /// that against the keep alive: re-armed per keep alive, not per packet.
    heard: Instant,
    silence: Pin<Box<tokio::time::Sleep>>,
    connack_sent: bool,
    /// MQTT 5 topic aliases the client set up on this connection.
    aliases: HashMap<u16, String>,
    dev_rd: OwnedReadHalf,
    dev_wr: OwnedWriteHalf,
    dev_buf: BytesMut,
    up_rd: OwnedReadHalf,
    up_wr: OwnedWriteHalf,
    up_buf: BytesMut,
    /// Frames on their way to one side, written once per read.
    out: BytesMut,
    /// QoS 1/2 publishes awaiting Kafka, in packet order, and their payload bytes.
    pending: FuturesOrdered<PendingAck>,
    pending_bytes: usize,
}

impl Conn {
    async fn run(mut self) -> Result<(), ConnError> {
        let result = self.serve().await;
        if let Err(e) = &result {
            if let (5, Some(reason)) = (self.level, e.disconnect_reason()) {
                let mut out = BytesMut::new();
                wire::encode_disconnect(&mut out, reason);
                let _ = self.dev_wr.write_all(&out).await;
            }
        }
        // Dropping the broker socket without a DISCONNECT makes rumqttd publish the will.
        result
    }

    async fn serve(&mut self) -> Result<(), ConnError> {
        // CONNECT may have arrived with more packets behind it.
        self.relay_from_device().await?;
        loop {
            let has_room = self.has_room();
            if !has_room {
                // Not reading is Sluice's choice, not the device's silence.
                self.heard = Instant::now();
            }
            tokio::select! {
                n = self.dev_rd.read_buf(&mut self.dev_buf), if has_room => {
                    if n? == 0 {
                        return Ok(());
                    }
                    self.heard = Instant::now();
                    self.relay_from_device().await?;
                }
                n = self.up_rd.read_buf(&mut self.up_buf) => {
                    if n? == 0 {
                        return Ok(());
                    }
                    self.relay_from_broker().await?;
                }
                Some(done) = self.pending.next() => self.acknowledge(done).await?,
                // Only the global budget is full: look again shortly.
                _ = tokio::time::sleep(Duration::from_millis(5)), if !has_room && self.pending.is_empty() => {}
                _ = self.silence.as_mut(), if self.keep_alive.is_some() => {
                    let keep_alive = self.keep_alive.unwrap_or_default();
                    let due = self.heard + keep_alive;
                    if has_room && Instant::now() >= due {
                        return Err(ConnError::KeepAlive(keep_alive));
                    }
                    self.silence.as_mut().reset(due.into());
                }
            }
        }
    }

    /// Whether this connection may be read: past its own or the global budget, the device
    /// is left waiting for acks, which is what slows it down.
    fn has_room(&self) -> bool {
        let limits = &self.ingress.settings;
        let global = &self.ingress.inflight;
        // MQTT 5 clients keep to the receive maximum themselves (and are disconnected if
        // they do not); 3.1.1 clients are slowed down by not being read.
        (self.level == 5 || self.pending.len() < limits.max_inflight_per_connection)
            && self.pending_bytes < limits.max_inflight_bytes_per_connection
            && global.records.load(Ordering::Relaxed) < limits.max_inflight_total
            && global.bytes.load(Ordering::Relaxed) < limits.max_inflight_bytes_total
    }

    /// Relays whole frames to rumqttd; publishes also go to Kafka first.
    async fn relay_from_device(&mut self) -> Result<(), ConnError> {
        let limit = self.ingress.settings.max_packet_size;
        while let Some(frame) = wire::next_frame(&mut self.dev_buf, limit)? {
            match frame.packet_type() {
                wire::CONNECT => return Err(ConnError::SecondConnect),
                wire::PUBLISH => match self.publish(&frame).await? {
                    Some(resolved) => self.out.extend_from_slice(&resolved),
                    None => self.out.extend_from_slice(&frame.bytes),
                },
                _ => self.out.extend_from_slice(&frame.bytes),
            }
        }
        if !self.out.is_empty() {
            self.up_wr.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Relays rumqttd's packets to the device, except its early PUBACK/PUBREC: those
    /// answer the device's own publishes, which Sluice acknowledges itself. An MQTT 5
    /// CONNACK gets the properties of the device port rather than rumqttd's.
    async fn relay_from_broker(&mut self) -> Result<(), ConnError> {
        while let Some(frame) = wire::next_frame(&mut self.up_buf, usize::MAX)? {
            match frame.packet_type() {
                wire::PUBACK | wire::PUBREC => {}
                wire::CONNACK if self.level == 5 && !self.connack_sent => {
                    self.connack_sent = true;
                    let connack = wire::connack_v5(&frame, self.ingress.port)?;
                    self.out.extend_from_slice(&connack);
                }
                _ => self.out.extend_from_slice(&frame.bytes),
            }
        }
        if !self.out.is_empty() {
            self.dev_wr.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Sends one publish on its way to Kafka and queues its ack. Returns the frame to relay
    /// to rumqttd instead of the device's, when a topic alias had to be resolved.
    async fn publish(&mut self, frame: &Frame) -> Result<Option<bytes::Bytes>, ConnError> {
        let received_at = Utc::now();
        let mut publish = wire::read_publish(frame, self.level)?;
        let qos = publish.qos;
        if self.level == 5
            && qos > 0
            && self.pending.len() >= self.ingress.port.receive_maximum.into()
        {
            return Err(ConnError::ReceiveMaximum(self.pending.len()));
        }
        let resolved = match publish.topic_alias {
            Some(alias) => Some(self.resolve_alias(alias, &mut publish, frame)?),
            None => None,
        };
        let properties = property_headers(&publish);
        counter!("sluice_publishes_total", "qos" => qos.to_string()).increment(1);
        let producer = &self.ingress.producer;
        let wait = qos > 0;
        let (delivery, reason, detail, policy) = match self.prepare(&publish, received_at) {
            Ok(accepted) => {
                let payload = accepted.record.to_json();
                let delivery = producer
                    .send(
                        accepted.topic,
                        &accepted.key,
                        &payload,
                        produce::headers(&properties),
                        wait,
                    )
                    .await;
                (delivery, wire::REASON_SUCCESS, None, accepted.ack)
            }
            Err(rejected) => {
                counter!("sluice_rejected_total", "reason" => rejected.reason).increment(1);
                tracing::debug!(topic = %publish.topic, client_id = %self.client_id, reason = rejected.reason, detail = %rejected.detail, "publish rejected");
                let delivery: Delivery = if rejected.dead_letter {
                    let letter = DeadLetter {
                        mqtt_topic: &publish.topic,
                        client_id: &self.client_id,
                        reason: rejected.reason,
                        detail: rejected.detail.clone(),
                        received_at,
                        properties: &properties,
                    };
                    producer.dead_letter(&publish.payload, letter, wait).await
                } else {
                    Box::pin(ready(Ok(())))
                };
                (delivery, rejected.code, Some(rejected.detail), rejected.ack)
            }
        };
        let bytes = publish.payload.len();
        let delivery = InFlight::track(&self.ingress.inflight, bytes, delivery);
        let ack = Ack {
            qos,
            pkid: publish.pkid,
            reason,
            detail,
            bytes,
        };
        match (qos, policy) {
            (0, _) => {
                tokio::spawn(watch_unacknowledged(delivery, "qos0"));
            }
            (_, AckPolicy::Receipt) => {
                tokio::spawn(watch_unacknowledged(delivery, "receipt"));
                self.pending_bytes += bytes;
                self.pending.push_back(Box::pin(ready((ack, Ok(())))));
            }
            (_, AckPolicy::Kafka) => {
                self.pending_bytes += bytes;
                self.pending
                    .push_back(Box::pin(delivery.map(move |result| (ack, result))));
            }
        }
        Ok(resolved)
    }

    /// MQTT 5 topic aliases (3.3.2.3.4): a topic with an alias sets it up, an empty topic
    /// uses it. rumqttd does not implement them, so it gets the full topic, no alias.
    fn resolve_alias(
        &mut self,
        alias: u16,
        publish: &mut wire::Publish,
        frame: &Frame,
    ) -> Result<bytes::Bytes, ConnError> {
        if alias == 0 || alias > self.ingress.port.topic_alias_maximum {
            return Err(ConnError::TopicAlias(alias));
        }
        if publish.topic.is_empty() {
            publish.topic = self
                .aliases
                .get(&alias)
                .ok_or(ConnError::TopicAlias(alias))?
                .clone();
        } else {
            self.aliases.insert(alias, publish.topic.clone());
        }
        Ok(wire::publish_with_topic(frame, &publish.topic)?)
    }

    /// Maps and decodes a publish into the record Kafka gets, or says why not.
    fn prepare<'a>(
        &'a self,
        publish: &wire::Publish,
        received_at: chrono::DateTime<Utc>,
    ) -> Result<Accepted<'a>, Rejected> {
        let ingress = &self.ingress;
        let Some(route) = ingress.mappings.route(&publish.topic) else {
            return Err(Rejected {
                reason: "unmapped",
                detail: "no mapping matches the topic".into(),
                code: wire::REASON_TOPIC_NAME_INVALID,
                ack: AckPolicy::Kafka,
                dead_letter: ingress.settings.unmapped == UnmappedPolicy::DeadLetter,
            });
        };
        let refuse = |e: DecodeError| Rejected {
            reason: e.reason(),
            detail: e.to_string(),
            code: wire::REASON_PAYLOAD_FORMAT_INVALID,
            ack: route.ack,
            dead_letter: true,
        };
        check_name(&route.device_id, &ingress.limits).map_err(refuse)?;
        let format = publish
            .content_type
            .as_deref()
            .and_then(Format::from_content_type)
            .unwrap_or(route.format);
        let cx = Context {
            format,
            metric: route.metric.as_deref(),
            received_at,
            limits: &ingress.limits,
        };
        if publish.utf8 && std::str::from_utf8(&publish.payload).is_err() {
            return Err(refuse(DecodeError::NotUtf8));
        }
        let readings = decode(&publish.payload, &cx).map_err(refuse)?;
        Ok(Accepted {
            topic: route.kafka_topic,
            key: route.key,
            ack: route.ack,
            record: Record {
                device_id: route.device_id,
                mqtt_topic: publish.topic.clone(),
                qos: publish.qos,
                client_id: self.client_id.clone(),
                received_at,
                readings,
            },
        })
    }

    /// Writes the acks of every delivery that is done, in packet order; a failed delivery
    /// closes the connection so that the device retransmits what it never saw acknowledged.
    async fn acknowledge(
        &mut self,
        mut done: (Ack, Result<(), ProduceError>),
    ) -> Result<(), ConnError> {
        loop {
            let (ack, result) = done;
            self.pending_bytes -= ack.bytes;
            if let Err(source) = result {
                counter!("sluice_delivery_failed_total", "policy" => "kafka").increment(1);
                return Err(ConnError::Delivery {
                    qos: ack.qos,
                    pkid: ack.pkid,
                    source,
                });
            }
            let why = ack.detail.as_deref().filter(|_| self.problem_info);
            wire::encode_ack(
                &mut self.out,
                ack.qos,
                ack.pkid,
                self.level,
                ack.reason,
                why,
            );
            match self.pending.next().now_or_never() {
                Some(Some(next)) => done = next,
                _ => break,
            }
        }
        self.dev_wr.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }
}

/// MQTT 5 publish properties a Kafka consumer may need, as record headers: content type,
/// payload format, message expiry, and the user properties under their own names.
fn property_headers(publish: &wire::Publish) -> Vec<(String, String)> {
    let mut h = Vec::new();
    if let Some(ct) = &publish.content_type {
        h.push(("mqtt.content_type".to_owned(), ct.clone()));
    }
    if publish.utf8 {
        h.push(("mqtt.payload_format".to_owned(), "utf-8".to_owned()));
    }
    if let Some(expiry) = publish.message_expiry {
        h.push(("mqtt.message_expiry_s".to_owned(), expiry.to_string()));
    }
    h.extend(publish.user_properties.iter().cloned());
    h
}

/// Counts a record against the global budget until its delivery resolves or is abandoned
/// with its connection.
struct InFlight {
    budget: Arc<Budget>,
    bytes: usize,
}

impl InFlight {
    fn track(budget: &Arc<Budget>, bytes: usize, delivery: Delivery) -> Delivery {
        budget.records.fetch_add(1, Ordering::Relaxed);
        budget.bytes.fetch_add(bytes, Ordering::Relaxed);
        let guard = InFlight {
            budget: budget.clone(),
            bytes,
        };
        Box::pin(async move {
            let result = delivery.await;
            drop(guard);
            result
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.budget.records.fetch_sub(1, Ordering::Relaxed);
        self.budget.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Deliveries nobody waits for (QoS 0, `ack = "receipt"`): a failure is counted, not silent.
async fn watch_unacknowledged(delivery: Delivery, policy: &'static str) {
    if let Err(e) = delivery.await {
        counter!("sluice_delivery_failed_total", "policy" => policy).increment(1);
        tracing::warn!(error = %e, policy, "record lost after it was accepted without waiting for kafka");
    }
}
