//! One device connection after its CONNECT: relays packets between the device and its
//! loopback connection to rumqttd, sends publishes through admission to Kafka, and keeps
//! what rumqttd does not: acknowledgements after Kafka, QoS 2 release per packet id, keep
//! alive, pings, and bounded buffers both ways, so a device that stops reading or writing
//! holds its own connection up and nobody else's. It also keeps the client inside its
//! rights: the ACL on every publish and subscription, its rate, and a reload's verdict.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use metrics::counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use super::admit::{admit, property_headers, Admission, Destination, Rules};
use super::{ConnError, DeviceReader, DeviceWriter, Ingress};
use crate::ack::{AckQueue, Acknowledgement, Delivered, Qos2Received, Waiter};
use crate::budget::{Budget, BufferShare, Reservation};
use crate::mapping::AckPolicy;
use crate::produce::{Outgoing, Ticket};
use crate::security::acl::{Access, Who};
use crate::security::{self, Identity};
use crate::sessions::Granted;
use crate::wire::{self, Frame, Level, Qos, Reason};

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 8 * 1024;

/// What a connection may hold in its buffers and still be read when all connections
/// together hold more than `ingress.max_buffered_bytes_total`.
const PRESSED_SHARE: usize = 64 * 1024;

/// How long what is due may take to leave when a connection ends.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// A publish admitted and waiting for room in the in-flight budgets; nothing behind it on
/// the connection is read until it has room, which keeps packet order.
struct Waiting {
    publish: Admitted,
    room: Pin<Box<dyn Future<Output = Reservation> + Send>>,
}

/// A publish with everything needed to send it on.
struct Admitted {
    admission: Admission,
    qos: Qos,
    pkid: u16,
    /// The frame rumqttd gets (an alias resolved where needed).
    frame: Bytes,
}

pub(super) struct Conn {
    pub ingress: Arc<Ingress>,
    pub level: Level,
    pub client_id: Arc<str>,
    pub identity: Identity,
    /// The rules in force, told of every reload.
    pub rules: watch::Receiver<Arc<security::Rules>>,
    /// The rules this connection was last checked against: what each publish and
    /// subscription is decided by, without touching the shared channel.
    pub current: Arc<security::Rules>,
    /// What the client's rate is counted under.
    pub rate_key: super::rate::RateKey,
    /// The filters granted to the session, re-checked on a reload.
    pub granted: Granted,
    pub problem_info: bool,
    /// One and a half times the device's keep alive; `None` when it is 0.
    pub keep_alive: Option<Duration>,
    pub dev_rd: DeviceReader,
    pub dev_wr: DeviceWriter,
    /// TLS holds back what it is given until flushed.
    pub tls: bool,
    pub dev_in: BytesMut,
    pub up_rd: OwnedReadHalf,
    pub up_wr: OwnedWriteHalf,
    pub qos2: Qos2Received,
    pub shutdown: watch::Receiver<bool>,
    pub budget: Arc<Budget>,
    /// This connection's part of what all connections' buffers hold.
    pub buffers: BufferShare,
    pub state: State,
}

/// What changes while a connection runs.
pub(super) struct State {
    heard: Instant,
    /// Since when bytes have been waiting for the device to read them.
    stalled_since: Option<Instant>,
    last_upstream: Instant,
    /// The timer's current deadline (keep alive, write stall, upstream ping).
    armed: Instant,
    /// rumqttd has answered the CONNECT: until then nothing of the device's is processed.
    connack_seen: bool,
    /// Set when the process is stopping: nothing more is read, owed acknowledgements are
    /// waited for until then.
    draining: Option<Instant>,
    /// All connections' buffers hold more than `ingress.max_buffered_bytes_total`.
    pressed: bool,
    up_in: BytesMut,
    to_device: BytesMut,
    to_broker: BytesMut,
    acks: AckQueue,
    waiting: Option<Waiting>,
    /// MQTT 5 topic aliases the client set up on this connection.
    aliases: HashMap<u16, String>,
    /// A publish over the client's rate, and when it may go.
    held: Option<(Frame, Instant)>,
    /// Written to TLS and not flushed yet.
    unflushed: bool,
    /// SUBSCRIBEs relayed with some filters refused: which, by packet id, for the SUBACK.
    partly_refused: HashMap<u16, Vec<bool>>,
}

impl Default for State {
    fn default() -> State {
        let now = Instant::now();
        State {
            heard: now,
            stalled_since: None,
            last_upstream: now,
            armed: now,
            connack_seen: false,
            draining: None,
            pressed: false,
            up_in: BytesMut::with_capacity(READ_CHUNK),
            to_device: BytesMut::new(),
            to_broker: BytesMut::new(),
            acks: AckQueue::default(),
            waiting: None,
            aliases: HashMap::new(),
            held: None,
            unflushed: false,
            partly_refused: HashMap::new(),
        }
    }
}

/// Writes what waits for the device; with nothing waiting, flushes what TLS still holds
/// (`None`).
async fn write_or_flush(
    wr: &mut DeviceWriter,
    out: &mut BytesMut,
) -> std::io::Result<Option<usize>> {
    if out.is_empty() {
        wr.flush().await?;
        return Ok(None);
    }
    wr.write_buf(out).await.map(Some)
}

impl Conn {
    pub async fn run(mut self) -> Result<(), ConnError> {
        let result = self.serve().await;
        // Acknowledgements already due go out even when the connection ends in an error,
        // then MQTT 5 clients are told why; a device that does not read gets no more time.
        if let (Level::V5, Err(e)) = (self.level, &result) {
            if let Some(reason) = e.disconnect_reason() {
                wire::encode_disconnect(&mut self.state.to_device, reason);
            }
        }
        if !matches!(result, Err(ConnError::WriteTimeout(_))) {
            let flush = async {
                self.dev_wr.write_all(&self.state.to_device).await?;
                self.dev_wr.flush().await
            };
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, flush).await;
        }
        // A client whose rights were withdrawn leaves no will behind: its relay ends with a
        // DISCONNECT (success), which tells rumqttd to drop the will.
        if matches!(result, Err(ConnError::Revoked)) {
            self.state
                .to_broker
                .extend_from_slice(&wire::DISCONNECT_PACKET);
        }
        // What the device sent before it closed (its last publishes, its DISCONNECT) still
        // goes to rumqttd. Dropping the broker socket without a DISCONNECT makes rumqttd
        // publish the will.
        if !self.state.to_broker.is_empty() {
            let flush = self.up_wr.write_all(&self.state.to_broker);
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, flush).await;
        }
        result
    }

    fn settings(&self) -> &crate::settings::IngressSettings {
        &self.ingress.settings
    }

    async fn serve(&mut self) -> Result<(), ConnError> {
        let mut timer = Box::pin(tokio::time::sleep(Duration::ZERO));
        let buffer_cap = self.settings().max_buffered_bytes_per_connection;
        let pool = self.buffers.pool();
        if *self.shutdown.borrow_and_update() {
            self.start_draining();
        }
        loop {
            if self.state.connack_seen && self.state.draining.is_none() {
                self.process_device().await?;
            }
            if self.state.draining.is_some() && self.state.acks.is_empty() {
                self.state.waiting = None;
                if self.level == Level::V5 {
                    wire::encode_disconnect(&mut self.state.to_device, Reason::ServerShuttingDown);
                }
                return Ok(());
            }
            let max_owed = self.settings().max_inflight_per_connection;
            let s = &mut self.state;
            // Only what waits to be written counts: it drains by writing, or its device is
            // closed at the write timeout, so the limit is always released again.
            let held = s.to_device.len() + s.to_broker.len();
            // Past the process-wide limit, connections holding more than a small share stop
            // reading until there is room; devices that hold little are still served.
            s.pressed = self.buffers.set(held) && held > PRESSED_SHARE;
            let room = pool.room();
            tokio::pin!(room);
            if s.pressed {
                room.as_mut().enable();
                s.pressed = pool.full();
            }
            let reading_device = !s.pressed
                && s.connack_seen
                && s.draining.is_none()
                && s.waiting.is_none()
                && s.held.is_none()
                && s.acks.len() < max_owed
                && s.to_broker.len() < buffer_cap
                && s.to_device.len() < buffer_cap;
            if !reading_device {
                // Not reading is Sluice's choice, not the device's silence.
                s.heard = Instant::now();
            }
            match (&s.stalled_since, s.to_device.is_empty()) {
                (None, false) => s.stalled_since = Some(Instant::now()),
                (Some(_), true) => s.stalled_since = None,
                _ => {}
            }
            let due = self.next_deadline();
            let s = &mut self.state;
            if due < s.armed || timer.is_elapsed() {
                s.armed = due;
                timer.as_mut().reset(due.into());
            }
            if self.dev_in.capacity() - self.dev_in.len() < READ_CHUNK / 2 {
                self.dev_in.reserve(READ_CHUNK);
            }
            tokio::select! {
                n = self.dev_rd.read_buf(&mut self.dev_in), if reading_device => {
                    if n? == 0 {
                        return Ok(());
                    }
                }
                // Read even when pressed: rumqttd does not read the relay while it cannot
                // write to it, and `to_device` has its own cap and write timeout.
                n = self.up_rd.read_buf(&mut self.state.up_in), if self.state.to_device.len() < buffer_cap => {
                    if n? == 0 {
                        return Ok(());
                    }
                    self.relay_from_broker()?;
                }
                n = write_or_flush(&mut self.dev_wr, &mut self.state.to_device), if !self.state.to_device.is_empty() || self.state.unflushed => {
                    match n? {
                        // A device that reads slowly is not stalled; one that stops is.
                        Some(n) if n > 0 => {
                            self.state.stalled_since = None;
                            self.state.unflushed = self.tls;
                        }
                        Some(_) => {}
                        None => self.state.unflushed = false,
                    }
                }
                n = self.up_wr.write_buf(&mut self.state.to_broker), if !self.state.to_broker.is_empty() => {
                    n?;
                }
                (seq, outcome) = self.state.acks.next_outcome() => {
                    self.state.acks.record(seq, outcome);
                    self.release_acks()?;
                }
                reservation = async { self.state.waiting.as_mut().expect("guarded").room.as_mut().await }, if self.state.waiting.is_some() => {
                    if let Some(w) = self.state.waiting.take() {
                        self.dispatch(w.publish, reservation).await;
                    }
                }
                _ = &mut room, if self.state.pressed => {}
                _ = timer.as_mut() => self.on_timer()?,
                _ = self.shutdown.changed(), if self.state.draining.is_none() => self.start_draining(),
                changed = self.rules.changed() => {
                    if changed.is_ok() {
                        self.recheck()?;
                    }
                }
            }
        }
    }

    fn start_draining(&mut self) {
        let limit = Duration::from_millis(self.settings().drain_timeout_ms);
        self.state.draining = Some(Instant::now() + limit);
    }

    fn next_deadline(&self) -> Instant {
        let s = &self.state;
        let ping = s.last_upstream + self.ingress.broker_ping_interval();
        let keep_alive = self.keep_alive.map(|k| s.heard + k);
        let stall = s
            .stalled_since
            .map(|t| t + Duration::from_millis(self.settings().write_timeout_ms));
        let held = s.held.as_ref().map(|(_, until)| *until);
        [keep_alive, stall, s.draining, held]
            .into_iter()
            .flatten()
            .fold(ping, Instant::min)
    }

    fn on_timer(&mut self) -> Result<(), ConnError> {
        let now = Instant::now();
        let write_timeout = Duration::from_millis(self.settings().write_timeout_ms);
        let ping_interval = self.ingress.broker_ping_interval();
        let s = &mut self.state;
        if s.draining.is_some_and(|deadline| now >= deadline) {
            return Err(ConnError::ShuttingDown);
        }
        if s.stalled_since
            .is_some_and(|since| now >= since + write_timeout)
        {
            counter!("sluice_disconnects_total", "reason" => "not_reading").increment(1);
            return Err(ConnError::WriteTimeout(write_timeout));
        }
        if let Some(k) = self.keep_alive {
            if now >= s.heard + k {
                counter!("sluice_disconnects_total", "reason" => "keep_alive").increment(1);
                return Err(ConnError::KeepAlive(k));
            }
        }
        // rumqttd keeps its own keep alive on the relay; a device with keep alive 0 may be
        // silent for days, so Sluice pings for it.
        if now >= s.last_upstream + ping_interval {
            s.to_broker.extend_from_slice(&wire::PINGREQ_PACKET);
            s.last_upstream = now;
        }
        Ok(())
    }

    /// Handles every whole frame the device has sent, in order, until one must wait.
    async fn process_device(&mut self) -> Result<(), ConnError> {
        let limit = self.settings().max_packet_size;
        let cap = self.settings().max_buffered_bytes_per_connection;
        while self.state.waiting.is_none()
            && self.state.to_broker.len() < cap
            && self.state.to_device.len() < cap
        {
            let now = Instant::now();
            if self
                .state
                .held
                .as_ref()
                .is_some_and(|(_, until)| now < *until)
            {
                break;
            }
            let frame = match self.state.held.take() {
                Some((frame, _)) => frame,
                None => match wire::next_frame(&mut self.dev_in, limit)? {
                    Some(frame) => frame,
                    None => break,
                },
            };
            self.state.heard = now;
            if frame.packet_type() == wire::PUBLISH {
                if let Some(wait) = self.ingress.rates.check(&self.rate_key, frame.bytes.len()) {
                    if self.settings().disconnect_over_rate {
                        counter!("sluice_disconnects_total", "reason" => "rate").increment(1);
                        return Err(ConnError::RateTooHigh);
                    }
                    counter!("sluice_throttled_total").increment(1);
                    self.state.held = Some((frame, Instant::now() + wait));
                    break;
                }
            }
            match frame.packet_type() {
                wire::CONNECT => return Err(ConnError::SecondConnect),
                wire::PUBLISH => self.publish(frame).await?,
                wire::PUBREL => self.release_qos2(frame.packet_id()?),
                wire::SUBSCRIBE => self.subscribe(&frame)?,
                wire::UNSUBSCRIBE => {
                    let filters = wire::read_unsubscribe(&frame, self.level)?;
                    let mut granted = self.granted.lock().unwrap_or_else(|p| p.into_inner());
                    for filter in filters {
                        granted.remove(&filter);
                    }
                    drop(granted);
                    self.send_to_broker(&frame.bytes);
                }
                // Answered here: rumqttd's keep alive is Sluice's business (see on_timer).
                wire::PINGREQ => self
                    .state
                    .to_device
                    .extend_from_slice(&wire::PINGRESP_PACKET),
                _ => self.send_to_broker(&frame.bytes),
            }
        }
        Ok(())
    }

    fn send_to_broker(&mut self, bytes: &[u8]) {
        self.state.to_broker.extend_from_slice(bytes);
        self.state.last_upstream = Instant::now();
    }

    /// Relays rumqttd's packets to the device, except those that answer Sluice's own
    /// packets to rumqttd (acknowledgements of relayed publishes, PINGRESP). An MQTT 5
    /// CONNACK gets the properties of the device port rather than rumqttd's.
    fn relay_from_broker(&mut self) -> Result<(), ConnError> {
        while let Some(frame) = wire::next_frame(&mut self.state.up_in, usize::MAX)? {
            match frame.packet_type() {
                wire::PUBACK | wire::PUBREC | wire::PUBCOMP | wire::PINGRESP => {}
                wire::SUBACK if !self.state.partly_refused.is_empty() => {
                    let pkid = frame.packet_id()?;
                    match self.state.partly_refused.remove(&pkid) {
                        Some(granted) => {
                            let ack = wire::suback_with_refusals(
                                Some(&frame),
                                pkid,
                                self.level,
                                &granted,
                            )?;
                            self.state.to_device.extend_from_slice(&ack);
                        }
                        None => self.state.to_device.extend_from_slice(&frame.bytes),
                    }
                }
                wire::CONNACK if !self.state.connack_seen => {
                    self.state.connack_seen = true;
                    match self.level {
                        Level::V5 => {
                            let connack = wire::connack_v5(&frame, self.ingress.port)?;
                            self.state.to_device.extend_from_slice(&connack);
                        }
                        Level::V311 => self.state.to_device.extend_from_slice(&frame.bytes),
                    }
                }
                _ => self.state.to_device.extend_from_slice(&frame.bytes),
            }
        }
        Ok(())
    }

    /// One device publish: a retransmission of one still owed an acknowledgement is
    /// absorbed; anything else is admitted and, once the budgets have room, sent on.
    async fn publish(&mut self, frame: Frame) -> Result<(), ConnError> {
        let received_at = Utc::now();
        let mut publish = wire::read_publish(&frame, self.level)?;
        let (qos, pkid) = (publish.qos, publish.pkid);
        counter!("sluice_publishes_total", "qos" => qos.label()).increment(1);
        let frame = match publish.topic_alias {
            Some(alias) => self.resolve_alias(alias, &mut publish, &frame)?,
            None => frame.bytes,
        };
        if qos > Qos::AtMostOnce && self.absorb_retransmission(qos, pkid) {
            counter!("sluice_retransmissions_total").increment(1);
            return Ok(());
        }
        // MQTT 5, 4.9: QoS 1 publishes count until their PUBACK, QoS 2 until their PUBCOMP
        // (held in the session until the PUBREL). Unreleased QoS 2 publishes are bounded
        // the same way for 3.1.1, which has no receive maximum to point to.
        let max = usize::from(self.ingress.port.receive_maximum);
        let unreleased = || self.qos2.lock().unwrap_or_else(|p| p.into_inner()).len();
        if (self.level == Level::V5 && qos > Qos::AtMostOnce && self.state.acks.len() >= max)
            || (qos == Qos::ExactlyOnce && unreleased() >= max)
        {
            return Err(ConnError::ReceiveMaximum(max));
        }
        if !self.may_publish(&publish.topic) {
            counter!("sluice_denied_total", "action" => "publish").increment(1);
            tracing::debug!(client_id = %self.client_id, topic = %publish.topic, "publish denied");
            let detail = format!("not authorised to publish to {}", publish.topic);
            let publish = Admitted {
                admission: Admission::refused(Reason::NotAuthorized, detail),
                qos,
                pkid,
                frame,
            };
            self.dispatch(publish, Reservation::none()).await;
            return Ok(());
        }
        // A reading without a timestamp takes the receipt time; a retransmission must get
        // the first receipt's, or it would be a second row.
        let received_at = match qos {
            Qos::AtMostOnce => received_at,
            _ => self.ingress.receipts.stamp(
                &self.client_id,
                pkid,
                publish.dup,
                &publish.payload,
                received_at,
            ),
        };
        let properties = property_headers(&publish);
        let rules = Rules {
            mappings: &self.ingress.mappings,
            limits: &self.ingress.limits,
            unmapped: self.ingress.settings.unmapped,
        };
        let admission = admit(&rules, publish, &self.client_id, properties, received_at);
        let publish = Admitted {
            admission,
            qos,
            pkid,
            frame,
        };
        let bytes = publish.admission.bytes();
        // What goes nowhere near Kafka (broker traffic on unmapped topics) never waits
        // for Kafka's budget.
        if matches!(publish.admission.destination, Destination::Nothing) {
            self.dispatch(publish, Reservation::none()).await;
            return Ok(());
        }
        match Reservation::try_reserve(&self.budget, &self.ingress.global, bytes) {
            Some(reservation) => self.dispatch(publish, reservation).await,
            None => {
                let room =
                    Reservation::reserve(self.budget.clone(), self.ingress.global.clone(), bytes);
                self.state.waiting = Some(Waiting {
                    publish,
                    room: Box::pin(room),
                });
            }
        }
        Ok(())
    }

    fn who(&self) -> Who<'_> {
        Who {
            identity: self.identity.name.as_deref(),
            client_id: &self.client_id,
        }
    }

    fn may_publish(&self, topic: &str) -> bool {
        self.ingress.may_publish(&self.current, self.who(), topic)
    }

    /// Relays a SUBSCRIBE's granted filters to rumqttd; the others are answered "not
    /// authorised" in the SUBACK, in their places (3.1.1: 0x80; 5: 0x87).
    fn subscribe(&mut self, frame: &Frame) -> Result<(), ConnError> {
        let subscribe = wire::read_subscribe(frame, self.level)?;
        let granted: Vec<bool> = {
            let rules = &self.current;
            let who = self.who();
            subscribe
                .filters
                .iter()
                .map(|f| rules.acl.allows(who, Access::Subscribe, f))
                .collect()
        };
        let refused = granted.iter().filter(|g| !**g).count();
        let allowed = subscribe
            .filters
            .into_iter()
            .zip(&granted)
            .filter(|(_, g)| **g);
        self.granted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(allowed.map(|(filter, _)| filter));
        if refused == 0 {
            self.send_to_broker(&frame.bytes);
            return Ok(());
        }
        counter!("sluice_denied_total", "action" => "subscribe").increment(refused as u64);
        tracing::debug!(client_id = %self.client_id, refused, "subscription denied");
        if refused == granted.len() {
            let ack = wire::suback_with_refusals(None, subscribe.pkid, self.level, &granted)?;
            self.state.to_device.extend_from_slice(&ack);
        } else {
            let some = wire::subscribe_only(frame, self.level, &granted)?;
            self.send_to_broker(&some);
            self.state.partly_refused.insert(subscribe.pkid, granted);
        }
        Ok(())
    }

    /// After a reload: a client whose identity is no longer proved (password entry
    /// changed or gone, certificate no longer trusted) or one of whose subscriptions is no
    /// longer allowed is disconnected (MQTT 5: 0x87). Publishes meet the new ACL as they come.
    fn recheck(&mut self) -> Result<(), ConnError> {
        let rules = self.rules.borrow_and_update().clone();
        self.current = rules.clone();
        let who = self.who();
        let allowed = self.identity.still_valid(&rules)
            && self
                .granted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .all(|f| rules.acl.allows(who, Access::Subscribe, f));
        if allowed {
            return Ok(());
        }
        counter!("sluice_disconnects_total", "reason" => "revoked").increment(1);
        Err(ConnError::Revoked)
    }

    /// MQTT 4.3.2 / 4.3.3: the same packet id before its acknowledgement (QoS 1) or its
    /// PUBREL (QoS 2) is the same message. It is not sent to Kafka or subscribers again;
    /// the device gets one acknowledgement for it.
    fn absorb_retransmission(&mut self, qos: Qos, pkid: u16) -> bool {
        if self.state.acks.owes(pkid) {
            return true;
        }
        if qos != Qos::ExactlyOnce {
            return false;
        }
        let mut received = self.qos2.lock().unwrap_or_else(|p| p.into_inner());
        let Some(outcome) = received.get(&pkid).cloned() else {
            return false;
        };
        let ack = Acknowledgement {
            qos,
            pkid,
            reason: Reason::Success,
            detail: None,
        };
        let known = outcome.borrow().clone();
        match known {
            // Delivered before (on this connection or an earlier one): PUBREC again.
            Some(Ok(delivered)) => self.state.acks.done(ack, Ok(delivered)),
            // Not delivered: this one is sent as new.
            Some(Err(_)) => {
                received.remove(&pkid);
                return false;
            }
            // An earlier connection's record is still on its way.
            None => self.state.acks.follow(ack, outcome),
        }
        true
    }

    /// Sends an admitted publish to Kafka and, unless it was refused, to rumqttd.
    async fn dispatch(&mut self, publish: Admitted, reservation: Reservation) {
        let Admitted {
            admission,
            qos,
            pkid,
            frame,
        } = publish;
        let ack = Acknowledgement {
            qos,
            pkid,
            reason: admission.reason,
            detail: admission.detail,
        };
        let waiter = match (qos, admission.policy, &admission.destination) {
            (Qos::AtMostOnce, _, _) => Waiter::unheard("qos0"),
            (_, _, Destination::Nothing) => {
                self.state.acks.done(ack, Ok(Delivered::Stored));
                Waiter::unheard("none")
            }
            (_, AckPolicy::Receipt, _) => {
                self.state.acks.done(ack, Ok(Delivered::Stored));
                Waiter::unheard("receipt")
            }
            (_, AckPolicy::Kafka, _) => self.state.acks.wait(ack),
        };
        let waiter = if qos == Qos::ExactlyOnce {
            let (waiter, outcome) = waiter.with_session();
            let mut received = self.qos2.lock().unwrap_or_else(|p| p.into_inner());
            received.insert(pkid, outcome);
            waiter
        } else {
            waiter
        };
        if admission.relay {
            self.send_to_broker(&frame);
            if qos == Qos::ExactlyOnce {
                // rumqttd releases QoS 2 publishes first in, first out; released at once,
                // its queue never holds one the device's PUBREL could be matched against.
                wire::encode_pubrel(&mut self.state.to_broker, pkid);
            }
        }
        let wait = qos > Qos::AtMostOnce;
        match admission.destination {
            Destination::Readings {
                topic,
                key,
                json,
                headers,
                origin,
            } => {
                let out = Outgoing {
                    topic: &topic,
                    key: &key,
                    payload: &json,
                    headers: crate::produce::headers(&headers),
                };
                let ticket = Ticket {
                    reservation,
                    waiter,
                    origin: Some(origin),
                };
                self.ingress.producer.send(out, ticket, wait).await;
            }
            Destination::DeadLetter(letter) => {
                let ticket = Ticket {
                    reservation,
                    waiter,
                    origin: None,
                };
                self.ingress
                    .producer
                    .dead_letter(letter, ticket, wait)
                    .await;
            }
            Destination::Nothing => waiter.resolve(Ok(Delivered::Stored)),
        }
    }

    /// The device releases a QoS 2 publish: Sluice answers PUBCOMP itself (rumqttd was
    /// released when the publish came). An unknown packet id gets MQTT 5's 0x92.
    fn release_qos2(&mut self, pkid: u16) {
        // The device sends PUBREL only after its PUBREC, so whatever is held for the id
        // (with `ack = "receipt"`, possibly not yet answered by Kafka) is released.
        let released = {
            let mut received = self.qos2.lock().unwrap_or_else(|p| p.into_inner());
            received.remove(&pkid).is_some()
        };
        let reason = if released {
            Reason::Success
        } else {
            counter!("sluice_unknown_pubrel_total").increment(1);
            Reason::PacketIdentifierNotFound
        };
        wire::encode_pubcomp(&mut self.state.to_device, pkid, self.level, reason);
    }

    /// Writes the acknowledgements that are due, in packet order; a record Kafka did not
    /// take closes the connection (after those before it), so the device retransmits it.
    fn release_acks(&mut self) -> Result<(), ConnError> {
        let (level, problem_info) = (self.level, self.problem_info);
        let out = &mut self.state.to_device;
        let qos2 = &self.qos2;
        let result = self.state.acks.release(|ack, delivered| {
            let (reason, why) = match delivered {
                Delivered::Stored => (ack.reason, ack.detail.as_deref()),
                Delivered::DeadLettered(why) => {
                    (Reason::ImplementationSpecificError, Some(why.as_str()))
                }
            };
            // MQTT 5, 4.3.3: a PUBREC with an error ends the exchange; no PUBREL follows,
            // and the packet id is free for a new message.
            if ack.qos == Qos::ExactlyOnce && level == Level::V5 && reason.is_error() {
                qos2.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&ack.pkid);
            }
            let why = why.filter(|_| problem_info);
            wire::encode_ack(out, ack.qos, ack.pkid, level, reason, why);
        });
        result.map_err(|u| {
            counter!("sluice_delivery_failed_total", "policy" => "kafka").increment(1);
            ConnError::Delivery {
                qos: u.ack.qos,
                pkid: u.ack.pkid,
                source: u.error,
            }
        })
    }

    /// MQTT 5 topic aliases (3.3.2.3.4): a topic with an alias sets it up, an empty topic
    /// uses it. rumqttd does not implement them, so it gets the full topic, no alias.
    fn resolve_alias(
        &mut self,
        alias: u16,
        publish: &mut wire::Publish,
        frame: &Frame,
    ) -> Result<Bytes, ConnError> {
        if alias == 0 || alias > self.ingress.port.topic_alias_maximum {
            return Err(ConnError::TopicAlias(alias));
        }
        if publish.topic.is_empty() {
            publish.topic = self
                .state
                .aliases
                .get(&alias)
                .ok_or(ConnError::TopicAlias(alias))?
                .clone();
        } else {
            self.state.aliases.insert(alias, publish.topic.clone());
        }
        Ok(wire::publish_with_topic(frame, &publish.topic)?)
    }
}
