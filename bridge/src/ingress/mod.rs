//! Ingress: owns each device's socket. It accepts connections within the caps on its
//! listeners (plain and TLS), reads the CONNECT, decides who the client is (`security`),
//! claims the session and only then gives the device its relay to the embedded rumqttd
//! (sessions, subscriptions, retained messages and live fan-out stay rumqttd's), opened at
//! once or when rumqttd must first see something (`upstream`); `conn` serves the
//! connection from there, `admit` decides what each publish becomes. On
//! shutdown it stops accepting and lets every connection drain.

mod admit;
mod conn;
pub(crate) mod deliver;
pub mod http;
mod rate;
mod receipts;
pub(crate) mod sources;
mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use metrics::{counter, gauge};
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::ack::Qos2Received;
use crate::budget::{Budget, BufferShare, Buffers};
use crate::decode::Limits;
use crate::mapping::Mappings;
use crate::produce::{ProduceError, Producer};
use crate::security::acl::{Access, Who};
use crate::security::{Door, Identity, Presented, Refusal, Rules, Security};
use crate::sessions::{Claim, Granted, Lifetime, Sessions};
use crate::settings::IngressSettings;
use crate::wire::{self, Frame, Level, Qos, Reason, WireError};
use upstream::Upstream;

/// Longest client id served: client ids key the sessions and receipts Sluice keeps, and
/// every dead letter.
const MAX_CLIENT_ID_BYTES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Wire(#[from] WireError),
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("no embedded broker listener for MQTT 5")]
    NoBroker,
    #[error("kafka did not take a QoS {} record (packet {pkid}): {source}; closing so the device retransmits", *qos as u8)]
    Delivery {
        qos: Qos,
        pkid: u16,
        source: ProduceError,
    },
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("silent for {0:?}, 1.5 times its keep alive")]
    KeepAlive(Duration),
    #[error("did not read what it was sent for {0:?}")]
    WriteTimeout(Duration),
    #[error("more than {0} unacknowledged QoS 1/2 publishes, or unreleased QoS 2 ones")]
    ReceiveMaximum(usize),
    #[error("topic alias {0} is not valid here")]
    TopicAlias(u16),
    #[error("sluice is shutting down")]
    ShuttingDown,
    #[error("CONNECT refused with {0:?}")]
    Refused(Reason),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("its rights were withdrawn by a reload")]
    Revoked,
    #[error("over its rate and ingress.disconnect_over_rate is set")]
    RateTooHigh,
    #[error("more than {0} QoS 2 deliveries left incomplete")]
    Backlog(usize),
    #[error("another connection took its client id over")]
    TakenOver,
    #[error("the relay to the embedded broker did not open: {0}")]
    Relay(std::io::Error),
}

impl ConnError {
    /// The MQTT 5 DISCONNECT reason a device is told before the connection closes.
    fn disconnect_reason(&self) -> Option<Reason> {
        Some(match self {
            ConnError::Wire(WireError::TooLarge { .. }) => Reason::PacketTooLarge,
            ConnError::Wire(WireError::WildcardTopic(_)) => Reason::TopicNameInvalid,
            ConnError::Wire(_) => Reason::MalformedPacket,
            ConnError::Protocol(_) => Reason::ProtocolError,
            ConnError::KeepAlive(_) => Reason::KeepAliveTimeout,
            ConnError::ReceiveMaximum(_) => Reason::ReceiveMaximumExceeded,
            ConnError::TopicAlias(_) => Reason::TopicAliasInvalid,
            ConnError::ShuttingDown => Reason::ServerShuttingDown,
            ConnError::Revoked => Reason::NotAuthorized,
            ConnError::RateTooHigh => Reason::MessageRateTooHigh,
            ConnError::Backlog(_) => Reason::QuotaExceeded,
            ConnError::TakenOver => Reason::SessionTakenOver,
            ConnError::Relay(_) => Reason::ImplementationSpecificError,
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
    global: Arc<Budget>,
    /// Bytes in connections' buffers, all together.
    buffers: Arc<Buffers>,
    sessions: Arc<Sessions>,
    receipts: receipts::Receipts,
    /// What the port promises MQTT 5 clients in CONNACK, and enforces.
    port: wire::ServerLimits,
    security: Arc<Security>,
    rates: rate::Rates,
    /// Set when the process stops: connections drain.
    shutdown: watch::Sender<bool>,
    open: Arc<sources::Connections>,
}

/// A listening socket and how it admits clients.
pub struct Listener {
    pub socket: TcpListener,
    pub door: Door,
    /// TLS is terminated here, with the certificates in force when a client connects.
    pub tls: bool,
}

impl Listener {
    /// The next connection; a failed accept (out of file descriptors and the like) is
    /// logged and tried again shortly, so the others keep being served.
    async fn next(&self) -> (TcpStream, SocketAddr) {
        loop {
            match self.socket.accept().await {
                Ok(accepted) => return accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// What every connection of one listener shares.
struct Gate {
    door: Door,
    tls: bool,
    connects: rate::ConnectRate,
}

/// A device connection's place among the open ones, counted in `sluice_connections`.
struct Slot {
    _open: sources::Open,
}

impl Drop for Slot {
    fn drop(&mut self) {
        gauge!("sluice_connections").decrement(1.0);
    }
}

impl Ingress {
    pub fn new(
        settings: IngressSettings,
        limits: Limits,
        broker_v4: SocketAddr,
        broker_v5: Option<SocketAddr>,
        mappings: Mappings,
        producer: Arc<Producer>,
        security: Arc<Security>,
    ) -> Ingress {
        Ingress {
            security,
            rates: rate::Rates::new(&settings),
            limits,
            broker_v4,
            broker_v5,
            mappings,
            producer,
            global: Budget::new(
                settings.max_inflight_total,
                settings.max_inflight_bytes_total,
            ),
            buffers: Buffers::new(settings.max_buffered_bytes_total),
            sessions: Arc::new(Sessions::new(broker_v5)),
            receipts: receipts::Receipts::new(
                settings.max_inflight_per_connection,
                settings.max_connections.saturating_mul(2),
            ),
            port: wire::ServerLimits {
                receive_maximum: settings.max_inflight_per_connection.min(65_535) as u16,
                max_packet_size: settings.max_packet_size.min(u32::MAX as usize) as u32,
                topic_alias_maximum: settings.topic_alias_maximum,
            },
            shutdown: watch::channel(false).0,
            open: Arc::default(),
            settings,
        }
    }

    /// How often Sluice pings rumqttd on a quiet relay: well inside the keep alive it
    /// relays in CONNECT, which rumqttd enforces at 1.5 times.
    fn broker_ping_interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.settings.broker_keep_alive_s.max(2)) / 2)
    }

    /// Accepts devices on `listeners` until `stop` resolves, then stops accepting and
    /// drains: every connection stops reading, waits up to `ingress.drain_timeout_ms` for
    /// the Kafka answers its device is owed, sends them (MQTT 5: then DISCONNECT 0x8B) and
    /// closes.
    pub async fn serve(
        self: Arc<Self>,
        listeners: Vec<Listener>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let accepting = listeners.into_iter().map(|l| self.clone().accept(l));
        let tidy = async {
            loop {
                tokio::time::sleep(Duration::from_secs(60)).await;
                self.rates.forget_idle();
            }
        };
        tokio::select! {
            _ = futures::future::join_all(accepting) => {}
            _ = tidy => {}
            _ = stop => {}
        }
        tracing::info!(
            connections = self.open.open(),
            "stopped accepting; draining connections"
        );
        let idle = self.open.idle();
        tokio::pin!(idle);
        idle.as_mut().enable();
        self.shutdown.send_replace(true);
        if self.open.open() > 0 {
            let limit = Duration::from_millis(self.settings.drain_timeout_ms + 3_000);
            let _ = tokio::time::timeout(limit, idle).await;
        }
    }

    /// One listener's accept loop; it ends (closing the socket) when dropped.
    async fn accept(self: Arc<Self>, listener: Listener) {
        let gate = Arc::new(Gate {
            door: listener.door,
            tls: listener.tls,
            connects: rate::ConnectRate::new(self.settings.max_connects_per_second),
        });
        loop {
            let (socket, peer) = listener.next().await;
            let Some(slot) = self.admit_connection(peer.ip()) else {
                continue;
            };
            let (gate, ingress) = (gate.clone(), self.clone());
            tokio::spawn(async move {
                if let Err(e) = ingress.connection(socket, peer, &gate).await {
                    tracing::info!(%peer, error = %e, "device connection closed");
                }
                drop(slot);
            });
        }
    }

    /// A slot for a new connection, or `None` (the socket is closed at once) past
    /// `ingress.max_connections` or `ingress.max_connections_per_address`.
    fn admit_connection(&self, address: IpAddr) -> Option<Slot> {
        let s = &self.settings;
        match self
            .open
            .admit(address, s.max_connections, s.max_connections_per_address)
        {
            Ok(open) => {
                gauge!("sluice_connections").increment(1.0);
                Some(Slot { _open: open })
            }
            Err(reason) => {
                counter!("sluice_connections_refused_total", "reason" => reason).increment(1);
                tracing::debug!(%address, reason, "connection refused: over the cap");
                None
            }
        }
    }

    async fn connection(
        self: Arc<Self>,
        socket: TcpStream,
        peer: SocketAddr,
        gate: &Gate,
    ) -> Result<(), ConnError> {
        socket.set_nodelay(true)?;
        // Counted before any work: over the rate, a TLS client costs no handshake (it is
        // closed at once), a plain one is told 0x9F.
        let over_rate = !gate.connects.allows();
        if over_rate && gate.tls {
            counter!("sluice_connections_refused_total", "reason" => "connect_rate").increment(1);
            return Ok(());
        }
        let wait = Duration::from_millis(self.settings.connect_timeout_ms);
        let (dev_rd, mut dev_wr, certificates) = if gate.tls {
            let tls = self.security.current().tls.clone();
            let tls = tls.ok_or_else(|| ConnError::Tls(std::io::Error::other("no TLS set up")))?;
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
            let stream = tokio::time::timeout(wait, acceptor.accept(socket))
                .await
                .map_err(|_| ConnError::ConnectTimeout(wait))?
                .map_err(|e| {
                    counter!("sluice_tls_handshake_failures_total").increment(1);
                    ConnError::Tls(e)
                })?;
            let certificates: Option<Vec<CertificateDer<'static>>> = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect());
            let (rd, wr) = tokio::io::split(stream);
            (
                Box::new(rd) as DeviceReader,
                Box::new(wr) as DeviceWriter,
                certificates,
            )
        } else {
            let (rd, wr) = socket.into_split();
            (
                Box::new(rd) as DeviceReader,
                Box::new(wr) as DeviceWriter,
                None,
            )
        };
        let mut dev_rd = dev_rd;
        let mut dev_buf = BytesMut::with_capacity(1024);
        let first = tokio::time::timeout(wait, async {
            loop {
                if let Some(frame) = wire::next_frame(&mut dev_buf, self.settings.max_packet_size)?
                {
                    return Ok::<_, ConnError>(frame);
                }
                if dev_buf.capacity() == dev_buf.len() {
                    dev_buf.reserve(1024);
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
                let write = dev_wr.write_all(&wire::CONNACK_UNACCEPTABLE_PROTOCOL);
                let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), dev_wr.flush()).await;
                return Err(e.into());
            }
            other => other?,
        };
        let broker = match connect.level {
            Level::V5 => self.broker_v5.ok_or(ConnError::NoBroker)?,
            Level::V311 => self.broker_v4,
        };
        // Told of every reload from before the decision, so one during it is not missed.
        let rules = self.security.watch();
        // Nothing the client sent past its CONNECT is looked at before this decision.
        let decided = if over_rate {
            Err(("connect_rate", Reason::ConnectionRateExceeded))
        } else {
            let now = rules.borrow().clone();
            self.decide(&connect, gate, certificates, peer, &now).await
        };
        let (identity, mut claim) = match decided {
            Ok(accepted) => accepted,
            Err((why, reason)) => {
                counter!("sluice_connections_refused_total", "reason" => why).increment(1);
                // Debug formatting escapes what a client chose (no forged log lines).
                tracing::warn!(%peer, client_id = ?connect.client_id, username = ?connect.username, reason = why, "CONNECT refused");
                let connack = wire::connack_refused(connect.level, reason);
                let refuse = async {
                    dev_wr.write_all(&connack).await?;
                    dev_wr.flush().await
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), refuse).await;
                return Err(ConnError::Refused(reason));
            }
        };
        let device = Device {
            rd: dev_rd,
            wr: dev_wr,
            unread: dev_buf,
            tls: gate.tls,
        };
        let client_id = connect.client_id.clone();
        let session = Session {
            identity,
            rules,
            qos2: claim.qos2.clone(),
            granted: claim.granted.clone(),
            taken_over: claim.taken_over.clone(),
            present: claim.present,
        };
        let lifetime = Lifetime::of(&connect);
        let ended = self
            .clone()
            .relay(connect, first, broker, device, session, lifetime)
            .await;
        if let Some(seconds) = ended.expiry {
            claim.set_expiry(seconds);
        }
        claim.relayed = ended.relayed;
        // rumqttd would keep a persistent session's subscriptions for its return; a clean
        // one ends with its relay (and the empty client id's entry is shared by every
        // clean client that has one: ending it would forget another's subscriptions).
        if matches!(ended.result, Err(ConnError::Revoked)) && claim.persistent() {
            claim.relayed &= !self.sessions.end(&client_id).await;
        }
        self.sessions.closed(claim);
        ended.result
    }

    /// The ACL decides; where it says nothing, a client with an identity may publish
    /// where a mapping's `{device_id}` is that identity.
    fn may_publish(&self, rules: &Rules, who: Who<'_>, topic: &str) -> bool {
        match rules.acl.decide(who, Access::Publish, topic) {
            Some(allowed) => allowed,
            None => who.identity.is_some_and(|me| {
                self.mappings
                    .route(topic)
                    .is_some_and(|route| route.device_id == me)
            }),
        }
    }

    /// Whether a CONNECT is served, and as whom: the refusal's metric label and reason
    /// otherwise. Failed logins are counted per source address and slowed down.
    async fn decide(
        &self,
        connect: &wire::Connect,
        gate: &Gate,
        certificates: Option<Vec<CertificateDer<'static>>>,
        peer: SocketAddr,
        rules: &Arc<Rules>,
    ) -> Result<(Identity, Claim), (&'static str, Reason)> {
        if connect.client_id.len() > MAX_CLIENT_ID_BYTES {
            return Err(("client_id", Reason::ClientIdentifierNotValid));
        }
        if *self.shutdown.borrow() {
            return Err(("shutting_down", Reason::ServerUnavailable));
        }
        if connect.auth_method.is_some() {
            return Err(("auth_method", Reason::BadAuthenticationMethod));
        }
        // MQTT 3.1.1 has no way to tell a client the keep alive it must use.
        if connect.level == Level::V311 && self.keep_alive_for(connect.keep_alive).is_some() {
            return Err(("keep_alive", Reason::ClientIdentifierNotValid));
        }
        let presented = Presented {
            username: connect.username.as_deref(),
            password: connect.password.as_deref(),
            certificates: certificates.as_deref(),
        };
        let identity = self
            .security
            .authenticate(rules, gate.door, presented, source(peer.ip()))
            .await
            .map_err(|r| match r {
                Refusal::BadCredentials => ("bad_credentials", Reason::BadUserNameOrPassword),
                Refusal::NotAuthorized => ("not_authorized", Reason::NotAuthorized),
                Refusal::NoCertificateIdentity => ("certificate_identity", Reason::NotAuthorized),
            })?;
        // The handshake used the certificates in force then; a reload since may distrust it.
        if !identity.still_valid(rules) {
            return Err(("revoked", Reason::NotAuthorized));
        }
        let who = Who {
            identity: identity.name.as_deref(),
            client_id: &connect.client_id,
        };
        // A will is a publish like any other (rumqttd publishes it for the client).
        if let Some(topic) = &connect.will_topic {
            if !self.may_publish(rules, who, topic) {
                counter!("sluice_denied_total", "action" => "will").increment(1);
                return Err(("will_denied", Reason::NotAuthorized));
            }
        }
        let claim = self
            .sessions
            .opened(
                &connect.client_id,
                Lifetime::of(connect),
                identity.name.as_ref(),
                connect.clean,
                connect.will_topic.is_none(),
            )
            .await
            .map_err(|_| ("client_id_taken", Reason::NotAuthorized))?;
        // A session taken from another identity, or one whose subscriptions the rules no
        // longer allow (changed while it was away), is ended in rumqttd before the relay;
        // so is one a clean start replaces with a new persistent one.
        let stale = claim
            .granted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .filters()
            .any(|f| !rules.acl.allows(who, Access::Subscribe, f));
        if (claim.fresh || stale) && !self.sessions.end(&connect.client_id).await {
            self.sessions.closed(claim);
            return Err(("session_not_ended", Reason::ServerUnavailable));
        }
        Ok((identity, claim))
    }

    /// The keep alive a client asking for `asked` is held to instead, if it may not have
    /// its own (`ingress.max_keep_alive`).
    fn keep_alive_for(&self, asked: u16) -> Option<u16> {
        let max = self.settings.max_keep_alive;
        (max > 0 && (asked == 0 || asked > max)).then_some(max)
    }

    /// Gives the device its relay to rumqttd, opened now or, for a connection whose claim
    /// allows it, when rumqttd must first see something (Sluice answers the CONNECT then),
    /// and serves the connection until either side ends it.
    async fn relay(
        self: Arc<Self>,
        connect: wire::Connect,
        first: Frame,
        broker: SocketAddr,
        device: Device,
        session: Session,
        lifetime: Lifetime,
    ) -> conn::Ended {
        let origin = deliver::origin(&connect.client_id);
        let server_keep_alive = self.keep_alive_for(connect.keep_alive);
        let opened = async {
            // The ingress keeps the device's keep alive itself (and tells MQTT 5 clients why
            // it closes); rumqttd gets a long one, kept up by Sluice's pings, so it never
            // races the ingress to it, and so a keep alive of 0, which it refuses, is
            // accepted. A clean start whose session outlives the connection is, to rumqttd,
            // a persistent session (the old one was ended in `decide`).
            let clean = connect.clean && lifetime == Lifetime::Connection;
            let keep_alive = self.settings.broker_keep_alive_s;
            let will = deliver::Stamp::will(connect.will_retain, &origin).map(|s| s.encode());
            let stamp = (deliver::STAMP, will);
            let for_broker =
                wire::connect_for_broker(&first, connect.level, keep_alive, clean, stamp)?;
            if session.taken_over.is_none() {
                return Ok((Upstream::open(broker, for_broker).await?, None));
            }
            let connack = wire::connack_accepted(
                connect.level,
                session.present,
                self.port,
                server_keep_alive,
            )?;
            Ok::<_, ConnError>((Upstream::unopened(broker, for_broker), Some(connack)))
        };
        let (upstream, connack) = match opened.await {
            Ok(opened) => opened,
            Err(e) => {
                return conn::Ended {
                    result: Err(e),
                    expiry: None,
                    relayed: false,
                }
            }
        };
        let keep_alive = server_keep_alive.unwrap_or(connect.keep_alive);
        // MQTT 3.1.1, 3.1.2.10 and MQTT 5, 3.1.2.10: one and a half times keep alive.
        let keep_alive =
            (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let outbox = deliver::Outbox::new(
            connect.receive_maximum,
            connect.max_packet_size,
            self.settings.max_buffered_bytes_per_connection,
            &mut session.granted.lock().unwrap_or_else(|p| p.into_inner()),
        );
        let client_id: Arc<str> = connect.client_id.into();
        let current = session.rules.borrow().clone();
        let rate_key = match &session.identity.name {
            Some(name) => rate::RateKey::Identity(name.clone()),
            None => rate::RateKey::Anonymous(client_id.clone()),
        };
        conn::Conn {
            level: connect.level,
            current,
            rules: session.rules,
            identity: session.identity,
            granted: session.granted,
            rate_key,
            client_id,
            tls: device.tls,
            problem_info: connect.problem_info,
            keep_alive,
            server_keep_alive,
            session_expiry: connect.session_expiry,
            outbox,
            origin,
            dev_rd: device.rd,
            dev_wr: device.wr,
            dev_in: device.unread,
            upstream,
            taken_over: session.taken_over,
            qos2: session.qos2,
            shutdown: self.shutdown.subscribe(),
            budget: Budget::new(
                self.settings.max_inflight_per_connection,
                self.settings.max_inflight_bytes_per_connection,
            ),
            state: conn::State::new(connack.as_deref()),
            buffers: BufferShare::new(self.buffers.clone()),
            ingress: self,
        }
        .run()
        .await
    }
}

/// What `ingress.max_connections_per_address` counts by: an IPv4 address, or an IPv6 /64
/// (one host usually holds a whole /64).
fn source(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

/// Who a served connection is, and what it keeps beside its session.
struct Session {
    identity: Identity,
    /// The rules in force, told of every reload.
    rules: watch::Receiver<Arc<Rules>>,
    qos2: Qos2Received,
    granted: Granted,
    /// Set when the relay may open late: told of a takeover.
    taken_over: Option<Arc<Notify>>,
    /// The session was there already.
    present: bool,
}

/// The two halves of a device's socket, plain TCP or TLS.
type DeviceReader = Box<dyn AsyncRead + Send + Unpin>;
type DeviceWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// The device's socket, and what was read past its CONNECT.
struct Device {
    rd: DeviceReader,
    wr: DeviceWriter,
    unread: BytesMut,
    /// TLS buffers what it writes: it must be flushed.
    tls: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_are_counted_by_their_64_bit_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("address");
        assert_eq!(source(ip("10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(source(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(source(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            source(ip("2001:db8:1:2:ffff::9")),
            source(ip("2001:db8:1:2::7"))
        );
    }
}
