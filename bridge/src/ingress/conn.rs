//! One device connection after its CONNECT: relays packets between the device and its
//! loopback connection to rumqttd, sends publishes through admission to Kafka, and keeps
//! what rumqttd does not: acknowledgements after Kafka, QoS 2 release per packet id, keep
//! alive, pings, and bounded buffers both ways, so a device that stops reading or writing
//! holds its own connection up and nobody else's. It also keeps the client inside its
//! rights: the ACL on every publish and subscription, its rate, and a reload's verdict.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chrono::Utc;
use metrics::counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::admit::{admit, property_headers, Admission, Destination, Rules};
use super::deliver::{self, Outbox, Stamp};
use super::upstream::{self, Upstream};
use super::{ConnError, DeviceReader, DeviceWriter, Ingress};
use crate::ack::{AckQueue, Acknowledgement, Delivered, Qos2Received, Waiter};
use crate::budget::{Budget, BufferShare, Reservation};
use crate::mapping::AckPolicy;
use crate::security::acl::{self, Access, Who};
use crate::security::{self, Identity};
use crate::sessions::Granted;
use crate::wire::{self, Frame, Level, Qos, Reason, WireError};

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 8 * 1024;

/// What a connection may hold in its buffers and still be read when all connections
/// together hold more than `ingress.max_buffered_bytes_total`.
const PRESSED_SHARE: usize = 64 * 1024;

/// SUBSCRIBEs and UNSUBSCRIBEs awaiting rumqttd's answer before the device is read again.
const MAX_BARRIERS: usize = 64;

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
    /// MQTT 5: the keep alive told in CONNACK, when not the client's own.
    pub server_keep_alive: Option<u16>,
    /// MQTT 5: the session expiry interval of the CONNECT.
    pub session_expiry: Option<u32>,
    /// MQTT 5: deliveries on their way to the client.
    pub outbox: Outbox,
    /// Who this client is in stamps (`deliver::Stamp`): its client id.
    pub origin: Arc<str>,
    pub dev_rd: DeviceReader,
    pub dev_wr: DeviceWriter,
    /// TLS holds back what it is given until flushed.
    pub tls: bool,
    pub dev_in: BytesMut,
    pub upstream: Upstream,
    /// Notified when another connection takes the client id over (relays that open late;
    /// rumqttd closes the others).
    pub taken_over: Option<Arc<tokio::sync::Notify>>,
    pub qos2: Qos2Received,
    pub shutdown: watch::Receiver<bool>,
    pub budget: Arc<Budget>,
    /// This connection's part of what all connections' buffers hold.
    pub buffers: BufferShare,
    pub state: State,
}

/// How a connection ended.
pub(super) struct Ended {
    pub result: Result<(), ConnError>,
    /// MQTT 5: the session expiry interval the client set at DISCONNECT, if it set one.
    pub expiry: Option<u32>,
    /// Its relay to rumqttd was opened.
    pub relayed: bool,
}

/// What changes while a connection runs.
pub(super) struct State {
    heard: Instant,
    /// Since when bytes have been waiting for the device to read them.
    stalled_since: Option<Instant>,
    last_upstream: Instant,
    /// The timer's current deadline (keep alive, write stall, upstream ping).
    armed: Instant,
    /// The device has its CONNACK (rumqttd's, or Sluice's when the relay opens later):
    /// until then nothing of the device's is processed.
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
    /// One per PINGREQ sent to rumqttd, answered in order: a SUBACK or UNSUBACK Sluice
    /// made, due once rumqttd has handled what was sent before (its own answers are not
    /// relayed), or nothing for a keep-alive ping.
    barriers: VecDeque<Option<Bytes>>,
    /// The session has a no-local subscription: the client's publishes are stamped.
    no_local: bool,
    /// MQTT 5: the session expiry interval the client set at DISCONNECT.
    expiry_at_disconnect: Option<u32>,
    /// The client sent DISCONNECT.
    disconnected: bool,
}

impl State {
    /// `connack`: the device's CONNACK, when Sluice answers it (the relay opens later).
    pub fn new(connack: Option<&[u8]>) -> State {
        let now = Instant::now();
        State {
            heard: now,
            stalled_since: None,
            last_upstream: now,
            armed: now,
            connack_seen: connack.is_some(),
            draining: None,
            pressed: false,
            up_in: BytesMut::with_capacity(READ_CHUNK),
            to_device: connack.map(BytesMut::from).unwrap_or_default(),
            to_broker: BytesMut::new(),
            acks: AckQueue::default(),
            waiting: None,
            aliases: HashMap::new(),
            held: None,
            unflushed: false,
            barriers: VecDeque::new(),
            no_local: false,
            expiry_at_disconnect: None,
            disconnected: false,
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

/// Resolves when the connection is taken over (pending for one rumqttd watches).
async fn taken_over(notify: &Option<Arc<tokio::sync::Notify>>) {
    match notify {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// Milliseconds since the Unix epoch: what stamps and message expiry count in.
fn now_ms() -> u64 {
    u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0)
}

impl Conn {
    /// Serves the connection until either side ends it.
    pub async fn run(mut self) -> Ended {
        let no_local = self.subscriptions().any_no_local();
        self.state.no_local = no_local;
        let result = self.serve().await;
        // Both ends get FLUSH_TIMEOUT in all, which the drain at shutdown allows for.
        let deadline = tokio::time::Instant::now() + FLUSH_TIMEOUT;
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
            let _ = tokio::time::timeout_at(deadline, flush).await;
        }
        // A client whose rights were withdrawn leaves no will behind: its relay ends with a
        // DISCONNECT (success), which tells rumqttd to drop the will.
        if matches!(result, Err(ConnError::Revoked)) && self.upstream.is_wanted() {
            self.state
                .to_broker
                .extend_from_slice(&wire::DISCONNECT_PACKET);
        }
        // What the device sent before it closed (its last publishes, its DISCONNECT) still
        // goes to rumqttd. Closing the relay without a DISCONNECT makes rumqttd publish the
        // will. rumqttd has let the relay go when this returns: a revoked client's session
        // is ended next, by connecting to rumqttd as it, and a second link of one client id
        // racing the first can leave rumqttd refusing that client id for good.
        if !self.state.to_broker.is_empty() {
            self.upstream.start();
        }
        let close = self.upstream.close(&self.state.to_broker);
        let _ = tokio::time::timeout_at(deadline, close).await;
        let granted = self.granted.clone();
        self.outbox
            .park(&mut granted.lock().unwrap_or_else(|p| p.into_inner()));
        Ended {
            result,
            expiry: self.state.expiry_at_disconnect,
            relayed: self.upstream.relayed(),
        }
    }

    fn subscriptions(&self) -> std::sync::MutexGuard<'_, deliver::Subscriptions> {
        self.granted.lock().unwrap_or_else(|p| p.into_inner())
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
                if self.state.disconnected {
                    return Ok(());
                }
            }
            if self.state.draining.is_some() && self.state.acks.is_empty() {
                self.state.waiting = None;
                if self.level == Level::V5 {
                    wire::encode_disconnect(&mut self.state.to_device, Reason::ServerShuttingDown);
                }
                return Ok(());
            }
            if !self.state.to_broker.is_empty() {
                self.upstream.start();
            }
            let max_owed = self.settings().max_inflight_per_connection;
            let s = &mut self.state;
            // Only what waits to be written counts: it drains by writing, or its device is
            // closed at the write timeout, so the limit is always released again. (What the
            // outbox holds drains by the client's acknowledgements, which must be read; it is
            // bounded by rumqttd's in-flight window and the per-connection cap instead.)
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
                && s.to_device.len() < buffer_cap
                && s.barriers.len() < MAX_BARRIERS;
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
                n = upstream::read(&mut self.upstream.rd, &mut self.state.up_in), if self.state.to_device.len() < buffer_cap => {
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
                n = upstream::write(&mut self.upstream.wr, &mut self.state.to_broker), if !self.state.to_broker.is_empty() => {
                    n?;
                }
                stream = upstream::opened(&mut self.upstream.opening) => {
                    self.upstream.attach(stream.map_err(ConnError::Relay)?);
                    self.state.last_upstream = Instant::now();
                    self.release_acks()?;
                }
                (seq, outcome) = self.state.acks.next_outcome() => {
                    self.state.acks.record(seq, outcome);
                    // A publish acknowledged must have reached rumqttd too: while its
                    // relay is opening, acknowledgements wait (and are never sent if it
                    // cannot open, so the device sends the publish again).
                    if !self.upstream.is_opening() {
                        self.release_acks()?;
                    }
                }
                reservation = async { self.state.waiting.as_mut().expect("guarded").room.as_mut().await }, if self.state.waiting.is_some() => {
                    if let Some(w) = self.state.waiting.take() {
                        self.dispatch(w.publish, reservation).await;
                    }
                }
                _ = &mut room, if self.state.pressed => {}
                _ = taken_over(&self.taken_over) => return Err(ConnError::TakenOver),
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
        // Nothing at all due: looked at again in an hour.
        let idle = Instant::now() + Duration::from_secs(3600);
        let ping = (self.upstream.is_wanted())
            .then(|| s.last_upstream + self.ingress.broker_ping_interval());
        let keep_alive = self.keep_alive.map(|k| s.heard + k);
        let stall = s
            .stalled_since
            .map(|t| t + Duration::from_millis(self.settings().write_timeout_ms));
        let held = s.held.as_ref().map(|(_, until)| *until);
        [ping, keep_alive, stall, s.draining, held]
            .into_iter()
            .flatten()
            .fold(idle, Instant::min)
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
        if now >= s.last_upstream + ping_interval && self.upstream.is_wanted() {
            s.to_broker.extend_from_slice(&wire::PINGREQ_PACKET);
            s.barriers.push_back(None);
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
                wire::CONNECT => return Err(ConnError::Protocol("a second CONNECT")),
                wire::PUBLISH => self.publish(frame).await?,
                wire::PUBREL => self.release_qos2(frame.packet_id()?),
                wire::SUBSCRIBE => self.subscribe(&frame)?,
                wire::UNSUBSCRIBE => self.unsubscribe(&frame)?,
                // MQTT 5 deliveries pass the outbox; 3.1.1 ones are relayed as they are.
                wire::PUBACK | wire::PUBCOMP | wire::PUBREC if self.level == Level::V5 => {
                    let s = &mut self.state;
                    let mut out = deliver::Out {
                        to_device: &mut s.to_device,
                        to_broker: &mut s.to_broker,
                    };
                    self.outbox.client_ack(&frame, now_ms(), &mut out)?;
                    s.last_upstream = now;
                }
                // Nothing after a DISCONNECT is read. rumqttd gets it (dropping the will)
                // when the relay closes; a relay never opened has no will to drop.
                wire::DISCONNECT => {
                    if self.level == Level::V5 {
                        self.disconnecting(&frame)?;
                    }
                    if self.upstream.is_wanted() {
                        self.send_to_broker(&frame.bytes);
                    }
                    self.state.disconnected = true;
                    break;
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

    /// MQTT 5, 3.14.2.2.2: a DISCONNECT may change the session expiry interval, except
    /// from zero.
    fn disconnecting(&mut self, frame: &Frame) -> Result<(), ConnError> {
        let Some(expiry) = wire::read_disconnect_expiry(frame)? else {
            return Ok(());
        };
        if expiry > 0 && self.session_expiry.unwrap_or(0) == 0 {
            return Err(ConnError::Protocol(
                "a session expiry set at DISCONNECT after 0 at CONNECT",
            ));
        }
        self.state.expiry_at_disconnect = Some(expiry);
        Ok(())
    }

    /// Relays rumqttd's packets to the device, except those that answer Sluice's own
    /// packets to rumqttd (acknowledgements of relayed publishes, PINGRESP) and those
    /// Sluice answers itself (SUBACK, UNSUBACK). An MQTT 5 CONNACK gets the properties of
    /// the device port rather than rumqttd's; MQTT 5 deliveries go through the outbox.
    fn relay_from_broker(&mut self) -> Result<(), ConnError> {
        while let Some(frame) = wire::next_frame(&mut self.state.up_in, usize::MAX)? {
            match frame.packet_type() {
                wire::PUBACK | wire::PUBREC | wire::PUBCOMP | wire::SUBACK | wire::UNSUBACK => {}
                wire::PINGRESP => {
                    if let Some(Some(answer)) = self.state.barriers.pop_front() {
                        self.state.to_device.extend_from_slice(&answer);
                    }
                }
                wire::PUBLISH if self.level == Level::V5 => self.deliver(&frame)?,
                wire::PUBREL if self.level == Level::V5 => {
                    let ours = self
                        .outbox
                        .released(frame.packet_id()?, &mut self.state.to_broker);
                    if !ours {
                        self.state.to_device.extend_from_slice(&frame.bytes);
                    }
                    if self.outbox.backlog() {
                        return Err(ConnError::Backlog(deliver::MAX_AWAITED));
                    }
                }
                // The device already has Sluice's (see `upstream`); rumqttd refusing the
                // relay leaves it without a broker side.
                wire::CONNACK if self.upstream.connack_owed => {
                    self.upstream.connack_owed = false;
                    if wire::connack_code(&frame) != Some(0) {
                        return Err(ConnError::Relay(std::io::Error::other("refused")));
                    }
                }
                wire::CONNACK if !self.state.connack_seen => {
                    self.state.connack_seen = true;
                    // The device starts afresh when rumqttd says so: what Sluice kept of
                    // an earlier session (held while rumqttd had none) would misread it.
                    if !wire::session_present(&frame) {
                        self.qos2.lock().unwrap_or_else(|p| p.into_inner()).clear();
                        self.subscriptions().clear();
                    }
                    match self.level {
                        Level::V5 => {
                            let connack = wire::connack_v5(
                                &frame,
                                self.ingress.port,
                                self.server_keep_alive,
                            )?;
                            self.state.to_device.extend_from_slice(&connack);
                            if wire::session_present(&frame) {
                                let mut restore = BytesMut::new();
                                self.subscriptions().restore(&mut restore)?;
                                self.send_to_broker(&restore);
                            }
                        }
                        Level::V311 => self.state.to_device.extend_from_slice(&frame.bytes),
                    }
                }
                _ => self.state.to_device.extend_from_slice(&frame.bytes),
            }
        }
        Ok(())
    }

    /// A publish rumqttd routes to this MQTT 5 client: the session's subscription options
    /// applied, then out within the client's limits (`deliver`).
    fn deliver(&mut self, frame: &Frame) -> Result<(), WireError> {
        let publish = wire::read_delivery(frame)?;
        let (qos, pkid) = (wire::delivery_qos(&publish), publish.pkid);
        let prepared = deliver::prepare(publish, &self.subscriptions(), &self.origin, now_ms());
        let s = &mut self.state;
        let mut out = deliver::Out {
            to_device: &mut s.to_device,
            to_broker: &mut s.to_broker,
        };
        match prepared {
            Ok(ready) => self.outbox.push(ready, now_ms(), &mut out),
            Err(why) => {
                self.outbox.skip(qos, pkid, why, &mut out);
                Ok(())
            }
        }
    }

    /// Sends what rumqttd is to handle before `answer` goes to the client, then a PINGREQ
    /// whose PINGRESP releases it.
    fn send_before(&mut self, to_broker: &[u8], answer: BytesMut) {
        self.send_to_broker(to_broker);
        self.send_to_broker(&wire::PINGREQ_PACKET);
        self.state.barriers.push_back(Some(answer.freeze()));
    }

    /// One device publish: a retransmission of one still owed an acknowledgement is
    /// absorbed; anything else is admitted and, once the budgets have room, sent on.
    async fn publish(&mut self, frame: Frame) -> Result<(), ConnError> {
        let received_at = Utc::now();
        let mut publish = wire::read_publish(&frame, self.level)?;
        let (qos, pkid) = (publish.qos, publish.pkid);
        counter!("sluice_publishes_total", "qos" => qos.label()).increment(1);
        let frame = self.for_broker(&mut publish, frame)?;
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
        let heard = publish.retain || deliver::subscribed_to(&publish.topic);
        let mut admission = admit(&rules, publish, &self.client_id, properties, received_at);
        admission.relay &= heard;
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

    /// Relays a SUBSCRIBE's granted filters to rumqttd, one SUBSCRIBE each (MQTT 5: with the
    /// subscription identifier Sluice gave it), and answers the SUBACK itself once rumqttd
    /// has them: the QoS asked for (rumqttd grants it), or why not (MQTT 5: 0x87 not
    /// authorised, 0x97 over `max_subscriptions_per_session`, 0x8F a malformed filter or a
    /// `$` one, for which rumqttd would close the connection; 3.1.1: 0x80).
    fn subscribe(&mut self, frame: &Frame) -> Result<(), ConnError> {
        let subscribe = wire::read_subscribe(frame, self.level)?;
        if subscribe
            .filters
            .iter()
            .any(|f| f.no_local && f.path.starts_with("$share/"))
        {
            return Err(ConnError::Protocol("no local on a shared subscription"));
        }
        let max = self.settings().max_subscriptions_per_session;
        let who = self.who();
        let mut upstream = BytesMut::new();
        let mut answers = Vec::with_capacity(subscribe.filters.len());
        let mut subs = self.granted.lock().unwrap_or_else(|p| p.into_inner());
        for filter in &subscribe.filters {
            let path = filter.path.as_str();
            let dollar = path.starts_with('$') && !path.starts_with("$share/");
            let answer = if dollar || !acl::valid_subscription(path) {
                Err(Reason::TopicFilterInvalid)
            } else if !self.current.acl.allows(who, Access::Subscribe, path) {
                counter!("sluice_denied_total", "action" => "subscribe").increment(1);
                Err(Reason::NotAuthorized)
            } else if !subs.contains(path) && subs.len() >= max {
                counter!("sluice_denied_total", "action" => "subscription_quota").increment(1);
                Err(Reason::QuotaExceeded)
            } else {
                let id = subs.add(filter, subscribe.identifier);
                wire::encode_subscribe(&mut upstream, self.level, subscribe.pkid, filter, id)?;
                Ok(filter.qos)
            };
            answers.push(answer);
        }
        self.state.no_local = subs.any_no_local();
        drop(subs);
        if answers.iter().any(Result::is_err) {
            tracing::debug!(client_id = %self.client_id, ?answers, "subscription refused");
        }
        let mut suback = BytesMut::new();
        wire::encode_suback(&mut suback, self.level, subscribe.pkid, &answers);
        self.send_before(&upstream, suback);
        Ok(())
    }

    /// Relays an UNSUBSCRIBE and answers it once rumqttd has handled it (rumqttd sends no
    /// UNSUBACK for a filter it does not have): MQTT 5 says per filter whether there was
    /// such a subscription.
    fn unsubscribe(&mut self, frame: &Frame) -> Result<(), ConnError> {
        let (pkid, filters) = wire::read_unsubscribe(frame, self.level)?;
        let mut subs = self.granted.lock().unwrap_or_else(|p| p.into_inner());
        let reasons: Vec<Reason> = filters
            .iter()
            .map(|f| match subs.remove(f) {
                true => Reason::Success,
                false => Reason::NoSubscriptionExisted,
            })
            .collect();
        self.state.no_local = subs.any_no_local();
        drop(subs);
        let mut unsuback = BytesMut::new();
        wire::encode_unsuback(&mut unsuback, self.level, pkid, &reasons);
        self.send_before(&frame.bytes, unsuback);
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
                .subscriptions()
                .filters()
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
        let producer = &self.ingress.producer;
        admission
            .destination
            .send(producer, reservation, waiter, wait)
            .await;
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

    /// The publish as rumqttd gets it (MQTT 5): with its topic alias resolved, as rumqttd
    /// does not implement client topic aliases, and stamped with what subscribers may need
    /// from it (`deliver::Stamp`). Most readings need neither and pass as they came.
    fn for_broker(
        &mut self,
        publish: &mut wire::Publish,
        frame: Frame,
    ) -> Result<Bytes, ConnError> {
        if self.level == Level::V311 {
            return Ok(frame.bytes);
        }
        let aliased = match publish.topic_alias {
            Some(alias) => {
                self.resolve_alias(alias, publish)?;
                Some(publish.topic.as_str())
            }
            None => None,
        };
        let stamp = Stamp::needed(publish, self.state.no_local, &self.origin);
        let forged = publish
            .user_properties
            .iter()
            .any(|(k, _)| k == deliver::STAMP);
        if aliased.is_none() && stamp.is_none() && !forged {
            return Ok(frame.bytes);
        }
        let stamp = stamp.map(|s| s.encode());
        Ok(wire::publish_for_broker(
            &frame,
            aliased,
            deliver::STAMP,
            stamp,
        )?)
    }

    /// MQTT 5 topic aliases (3.3.2.3.4): a topic with an alias sets it up, an empty topic
    /// uses it.
    fn resolve_alias(&mut self, alias: u16, publish: &mut wire::Publish) -> Result<(), ConnError> {
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
        Ok(())
    }
}
