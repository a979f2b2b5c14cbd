//! MQTT on the device socket, as far as the ingress needs it: split a byte stream into
//! frames, read CONNECT and PUBLISH with rumqttc's public codecs (3.1.1 and 5), rewrite the
//! few packets rumqttd gets wrong (keep alive 0, MQTT 5 topic aliases and CONNACK
//! properties), and encode what the ingress sends itself (acks, DISCONNECT). Everything
//! else is relayed untouched.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes as v4;
use rumqttc::v5::mqttbytes::v5;

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const UNSUBSCRIBE: u8 = 10;
pub const UNSUBACK: u8 = 11;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

/// PINGREQ and PINGRESP, whole.
pub const PINGREQ_PACKET: [u8; 2] = [PINGREQ << 4, 0];
pub const PINGRESP_PACKET: [u8; 2] = [PINGRESP << 4, 0];
/// DISCONNECT, normal (both levels): the will is dropped.
pub const DISCONNECT_PACKET: [u8; 2] = [0xE0, 0];

/// The protocol level a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// MQTT 3.1.1 (level 4).
    V311,
    /// MQTT 5.
    V5,
}

/// Quality of service of a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Qos {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl Qos {
    pub fn label(self) -> &'static str {
        match self {
            Qos::AtMostOnce => "0",
            Qos::AtLeastOnce => "1",
            Qos::ExactlyOnce => "2",
        }
    }
}

/// MQTT 5 reason codes the ingress sends on acknowledgements and DISCONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    Success = 0x00,
    /// UNSUBACK: the client had no such subscription.
    NoSubscriptionExisted = 0x11,
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ImplementationSpecificError = 0x83,
    ClientIdentifierNotValid = 0x85,
    BadUserNameOrPassword = 0x86,
    NotAuthorized = 0x87,
    ServerUnavailable = 0x88,
    ServerShuttingDown = 0x8B,
    BadAuthenticationMethod = 0x8C,
    KeepAliveTimeout = 0x8D,
    SessionTakenOver = 0x8E,
    TopicFilterInvalid = 0x8F,
    TopicNameInvalid = 0x90,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    MessageRateTooHigh = 0x96,
    QuotaExceeded = 0x97,
    PayloadFormatInvalid = 0x99,
    ConnectionRateExceeded = 0x9F,
}

impl Reason {
    /// Codes from 0x80 up are failures.
    pub fn is_error(self) -> bool {
        self as u8 >= 0x80
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("malformed remaining length")]
    MalformedLength,
    #[error("packet of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("first packet is not CONNECT")]
    NotConnect,
    #[error("unsupported protocol level {0} (3.1.1 = 4 and 5 are served)")]
    UnsupportedLevel(u8),
    #[error("topic {0:?} contains a wildcard, which a PUBLISH may not")]
    WildcardTopic(String),
    #[error("malformed {packet}: {reason}")]
    Malformed {
        packet: &'static str,
        reason: String,
    },
}

/// One whole MQTT packet as it came off the wire.
#[derive(Debug, Clone)]
pub struct Frame {
    pub bytes: Bytes,
    header_len: usize,
    remaining_len: usize,
}

impl Frame {
    pub fn packet_type(&self) -> u8 {
        self.bytes[0] >> 4
    }

    /// The packet identifier of a PUBACK, PUBREC, PUBREL or PUBCOMP.
    pub fn packet_id(&self) -> Result<u16, WireError> {
        match self.bytes.get(self.header_len..self.header_len + 2) {
            Some(&[hi, lo]) => Ok(u16::from_be_bytes([hi, lo])),
            _ => Err(malformed("acknowledgement", "no packet identifier")),
        }
    }

    /// The reason code of an MQTT 5 PUBACK, PUBREC or PUBCOMP (success when left out).
    pub fn ack_reason(&self) -> u8 {
        self.bytes.get(self.header_len + 2).copied().unwrap_or(0)
    }

    fn v4_header(&self) -> v4::FixedHeader {
        v4::FixedHeader::new(self.bytes[0], self.header_len - 1, self.remaining_len)
    }

    fn v5_header(&self) -> v5::FixedHeader {
        v5::FixedHeader::new(self.bytes[0], self.header_len - 1, self.remaining_len)
    }
}

/// Takes the next whole frame off the front of `buf`, or `None` if more bytes are needed.
pub fn next_frame(buf: &mut BytesMut, limit: usize) -> Result<Option<Frame>, WireError> {
    let mut remaining_len = 0usize;
    let mut header_len = 1;
    loop {
        let Some(&byte) = buf.get(header_len) else {
            return Ok(None);
        };
        remaining_len |= usize::from(byte & 0x7f) << (7 * (header_len - 1));
        header_len += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if header_len > 4 {
            return Err(WireError::MalformedLength);
        }
    }
    let size = header_len + remaining_len;
    if size > limit {
        return Err(WireError::TooLarge { size, limit });
    }
    // No room is reserved for the rest of a packet before it arrives: a client that
    // announces a large packet and sends it slowly holds only what it has sent.
    if buf.len() < size {
        return Ok(None);
    }
    Ok(Some(Frame {
        bytes: buf.split_to(size).freeze(),
        header_len,
        remaining_len,
    }))
}

/// What the ingress needs from a CONNECT.
#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    pub level: Level,
    pub client_id: String,
    /// Clean session (3.1.1) or clean start (5): no state from an earlier connection.
    pub clean: bool,
    /// Seconds; 0 turns keep alive off.
    pub keep_alive: u16,
    /// MQTT 5: whether the client accepts reason strings on acknowledgements (default yes).
    pub problem_info: bool,
    /// MQTT 5: seconds the session outlives the connection (0 when left out); `None` for
    /// MQTT 3.1.1, whose persistent sessions never expire.
    pub session_expiry: Option<u32>,
    /// MQTT 5: QoS 1 and 2 publishes the client takes at once (65,535 when left out).
    pub receive_maximum: u16,
    /// MQTT 5: the largest packet the client takes.
    pub max_packet_size: Option<u32>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// MQTT 5 enhanced authentication, which Sluice does not offer.
    pub auth_method: Option<String>,
    /// Where the client's will would be published: a publish like any other.
    pub will_topic: Option<String>,
    pub will_retain: bool,
}

impl std::fmt::Debug for Connect {
    // Everything but the password, which must never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect")
            .field("level", &self.level)
            .field("client_id", &self.client_id)
            .field("clean", &self.clean)
            .field("keep_alive", &self.keep_alive)
            .field("username", &self.username)
            .field("will_topic", &self.will_topic)
            .finish_non_exhaustive()
    }
}

/// A user name given only when it is not empty; the password with it, if any.
fn credentials(username: String, password: String) -> (Option<String>, Option<String>) {
    (
        (!username.is_empty()).then_some(username),
        (!password.is_empty()).then_some(password),
    )
}

pub fn read_connect(frame: &Frame) -> Result<Connect, WireError> {
    if frame.packet_type() != CONNECT {
        return Err(WireError::NotConnect);
    }
    // Protocol name (2-byte length + "MQTT") then the level byte. MQTT 3.1 ("MQIsdp") is
    // told its level is not served; any other name is not MQTT, and gets no CONNACK.
    let vh = &frame.bytes[frame.header_len..];
    let truncated = || malformed("CONNECT", "truncated variable header");
    let name_len = usize::from(u16::from_be_bytes([
        *vh.first().ok_or_else(truncated)?,
        *vh.get(1).ok_or_else(truncated)?,
    ]));
    let name = vh.get(2..2 + name_len).ok_or_else(truncated)?;
    let level = *vh.get(2 + name_len).ok_or_else(truncated)?;
    match name {
        b"MQTT" => {}
        b"MQIsdp" => return Err(WireError::UnsupportedLevel(level)),
        _ => return Err(malformed("CONNECT", "protocol name is not MQTT")),
    }
    match level {
        4 => {
            let c = v4::v4::Connect::read(frame.v4_header(), frame.bytes.clone())
                .map_err(|e| malformed("CONNECT", e))?;
            let (username, password) = c
                .login
                .map_or((None, None), |l| credentials(l.username, l.password));
            Ok(Connect {
                username,
                password,
                auth_method: None,
                will_retain: c.last_will.as_ref().is_some_and(|w| w.retain),
                will_topic: c.last_will.map(|w| w.topic),
                level: Level::V311,
                client_id: c.client_id,
                clean: c.clean_session,
                keep_alive: c.keep_alive,
                problem_info: true,
                session_expiry: None,
                receive_maximum: u16::MAX,
                max_packet_size: None,
            })
        }
        5 => {
            let (c, will, login) = v5::Connect::read(frame.v5_header(), frame.bytes.clone())
                .map_err(|e| malformed("CONNECT", e))?;
            let will_retain = will.as_ref().is_some_and(|w| w.retain);
            let will_topic = will
                .map(|w| String::from_utf8(w.topic.to_vec()))
                .transpose()
                .map_err(|_| malformed("CONNECT", "will topic is not UTF-8"))?;
            let props = c.properties.unwrap_or_default();
            // MQTT 5, 3.1.2.11: both are protocol errors at 0.
            if props.receive_maximum == Some(0) || props.max_packet_size == Some(0) {
                return Err(malformed(
                    "CONNECT",
                    "receive maximum or maximum packet size 0",
                ));
            }
            let (username, password) =
                login.map_or((None, None), |l| credentials(l.username, l.password));
            Ok(Connect {
                username,
                password,
                auth_method: props.authentication_method,
                will_topic,
                will_retain,
                level: Level::V5,
                client_id: c.client_id,
                clean: c.clean_start,
                keep_alive: c.keep_alive,
                problem_info: props.request_problem_info.is_none_or(|v| v != 0),
                session_expiry: Some(props.session_expiry_interval.unwrap_or(0)),
                receive_maximum: props.receive_maximum.unwrap_or(u16::MAX),
                max_packet_size: props.max_packet_size,
            })
        }
        other => Err(WireError::UnsupportedLevel(other)),
    }
}

/// The CONNECT as rumqttd gets it: another keep alive (the ingress keeps the device's
/// itself); for MQTT 5, `clean_start` as Sluice decides it (a clean start with a session
/// expiry is a fresh session rumqttd must keep), no topic alias maximum, receive maximum
/// or packet size (what rumqttd sends the client passes the ingress, which keeps those;
/// rumqttd's own topic aliases name a filter, not a topic), and the will's user property
/// `stamp_key` as Sluice sets it (`will_stamp`), never as the client sent it. Only for a
/// frame `read_connect` accepted ("MQTT" name, level 4/5).
pub fn connect_for_broker(
    frame: &Frame,
    level: Level,
    keep_alive: u16,
    clean_start: bool,
    (stamp_key, will_stamp): (&str, Option<String>),
) -> Result<Bytes, WireError> {
    if level == Level::V311 {
        let mut bytes = BytesMut::from(&frame.bytes[..]);
        // Protocol name (2 + 4 bytes), level, flags, then the keep alive.
        let at = frame.header_len + 8;
        bytes[at..at + 2].copy_from_slice(&keep_alive.to_be_bytes());
        return Ok(bytes.freeze());
    }
    let (mut c, mut will, login) = v5::Connect::read(frame.v5_header(), frame.bytes.clone())
        .map_err(|e| malformed("CONNECT", e))?;
    if let Some(w) = will.as_mut() {
        let props = w.properties.get_or_insert_with(|| v5::LastWillProperties {
            delay_interval: None,
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        });
        props.user_properties.retain(|(k, _)| k != stamp_key);
        if let Some(stamp) = will_stamp {
            props.user_properties.push((stamp_key.to_owned(), stamp));
        }
    }
    c.keep_alive = keep_alive;
    c.clean_start = clean_start;
    if let Some(p) = c.properties.as_mut() {
        p.topic_alias_max = None;
        p.receive_maximum = None;
        p.max_packet_size = None;
    }
    let mut out = BytesMut::new();
    c.write(&will, &login, &mut out)
        .map_err(|e| malformed("CONNECT", e))?;
    Ok(out.freeze())
}

/// An MQTT 5 CONNECT with clean start for `client_id`: what, followed by a DISCONNECT,
/// ends the client's session in rumqttd.
pub fn clean_start_v5(client_id: &str) -> Result<Bytes, WireError> {
    let mut out = BytesMut::new();
    v5::Connect {
        keep_alive: 10,
        client_id: client_id.to_owned(),
        clean_start: true,
        properties: None,
    }
    .write(&None, &None, &mut out)
    .map_err(|e| malformed("CONNECT", e))?;
    Ok(out.freeze())
}

/// What the device port really offers an MQTT 5 client, told in CONNACK.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub receive_maximum: u16,
    pub max_packet_size: u32,
    pub topic_alias_maximum: u16,
}

/// rumqttd's MQTT 5 CONNACK with properties that tell the truth about the device port:
/// Sluice's receive maximum, packet size and topic aliases; retained messages, wildcard
/// and shared subscriptions and subscription identifiers, which rumqttd has (measured by
/// `conformance.rs`).
/// rumqttd's own values (e.g. a topic alias maximum it does not implement) are replaced;
/// an assigned client identifier is kept. `server_keep_alive`: the keep alive Sluice holds
/// the client to, when not the one it asked for.
pub fn connack_v5(
    frame: &Frame,
    limits: ServerLimits,
    server_keep_alive: Option<u16>,
) -> Result<Bytes, WireError> {
    let mut ack = v5::ConnAck::read(frame.v5_header(), frame.bytes.clone())
        .map_err(|e| malformed("CONNACK", e))?;
    if ack.code == v5::ConnectReturnCode::Success {
        let mut p = ack.properties.take().unwrap_or(v5::ConnAckProperties {
            session_expiry_interval: None,
            receive_max: None,
            max_qos: None,
            retain_available: None,
            max_packet_size: None,
            assigned_client_identifier: None,
            topic_alias_max: None,
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        });
        p.receive_max = Some(limits.receive_maximum);
        p.max_packet_size = Some(limits.max_packet_size);
        p.topic_alias_max = Some(limits.topic_alias_maximum);
        p.retain_available = Some(1);
        p.wildcard_subscription_available = Some(1);
        p.shared_subscription_available = Some(1);
        p.subscription_identifiers_available = Some(1);
        p.server_keep_alive = server_keep_alive;
        ack.properties = Some(p);
    }
    let mut out = BytesMut::new();
    ack.write(&mut out).map_err(|e| malformed("CONNACK", e))?;
    Ok(out.freeze())
}

/// A CONNACK's return code (3.1.1) or reason code (MQTT 5): 0 accepts.
pub fn connack_code(connack: &Frame) -> Option<u8> {
    connack.bytes.get(connack.header_len + 1).copied()
}

/// Whether a CONNACK says the session was resumed.
pub fn session_present(connack: &Frame) -> bool {
    connack
        .bytes
        .get(connack.header_len)
        .is_some_and(|flags| flags & 1 == 1)
}

/// A device's PUBLISH, version-independent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub qos: Qos,
    /// Set on a retransmission.
    pub dup: bool,
    pub retain: bool,
    pub pkid: u16,
    pub payload: Bytes,
    /// MQTT 5 content type, which names the payload's format.
    pub content_type: Option<String>,
    /// MQTT 5: the payload format indicator says UTF-8 text.
    pub utf8: bool,
    /// MQTT 5 topic alias; with an empty topic, the topic is the alias's.
    pub topic_alias: Option<u16>,
    pub message_expiry: Option<u32>,
    pub user_properties: Vec<(String, String)>,
}

pub fn read_publish(frame: &Frame, level: Level) -> Result<Publish, WireError> {
    let publish = read_publish_any(frame, level)?;
    // MQTT 3.3.2.1: a topic name never holds a wildcard (it would become a device id).
    if publish.topic.contains(['+', '#']) {
        return Err(WireError::WildcardTopic(publish.topic));
    }
    Ok(publish)
}

fn qos(q: impl Into<u8>) -> Qos {
    match q.into() {
        0 => Qos::AtMostOnce,
        1 => Qos::AtLeastOnce,
        _ => Qos::ExactlyOnce,
    }
}

fn read_publish_any(frame: &Frame, level: Level) -> Result<Publish, WireError> {
    let dup = frame.bytes[0] & 0x08 != 0;
    let retain = frame.bytes[0] & 0x01 != 0;
    if level == Level::V5 {
        let p = v5::Publish::read(frame.v5_header(), frame.bytes.clone())
            .map_err(|e| malformed("PUBLISH", e))?;
        let topic = String::from_utf8(p.topic.to_vec())
            .map_err(|_| malformed("PUBLISH", "topic is not UTF-8"))?;
        let props = p.properties.unwrap_or_default();
        Ok(Publish {
            topic,
            qos: qos(p.qos as u8),
            dup,
            retain,
            pkid: p.pkid,
            payload: p.payload,
            content_type: props.content_type,
            utf8: props.payload_format_indicator == Some(1),
            topic_alias: props.topic_alias,
            message_expiry: props.message_expiry_interval,
            user_properties: props.user_properties,
        })
    } else {
        let p = v4::v4::Publish::read(frame.v4_header(), frame.bytes.clone())
            .map_err(|e| malformed("PUBLISH", e))?;
        Ok(Publish {
            topic: p.topic,
            qos: qos(p.qos as u8),
            dup,
            retain,
            pkid: p.pkid,
            payload: p.payload,
            content_type: None,
            utf8: false,
            topic_alias: None,
            message_expiry: None,
            user_properties: Vec::new(),
        })
    }
}

/// An MQTT 5 PUBLISH as rumqttd gets it: with its topic alias resolved (`topic`: the full
/// topic, no alias, as rumqttd does not implement client topic aliases), and the user
/// property `stamp_key` as Sluice sets it (`stamp`), never as the client sent it.
pub fn publish_for_broker(
    frame: &Frame,
    topic: Option<&str>,
    stamp_key: &str,
    stamp: Option<String>,
) -> Result<Bytes, WireError> {
    let mut p = read_delivery(frame)?;
    let props = p.properties.get_or_insert_with(Default::default);
    if let Some(topic) = topic {
        p.topic = Bytes::copy_from_slice(topic.as_bytes());
        props.topic_alias = None;
    }
    props.user_properties.retain(|(k, _)| k != stamp_key);
    if let Some(stamp) = stamp {
        props.user_properties.push((stamp_key.to_owned(), stamp));
    }
    let mut out = BytesMut::new();
    p.write(&mut out).map_err(|e| malformed("PUBLISH", e))?;
    Ok(out.freeze())
}

/// An MQTT 5 PUBLISH whole, as rumqttd sends it to a subscriber.
pub type Delivery = v5::Publish;

pub fn read_delivery(frame: &Frame) -> Result<Delivery, WireError> {
    v5::Publish::read(frame.v5_header(), frame.bytes.clone()).map_err(|e| malformed("PUBLISH", e))
}

pub fn delivery_qos(publish: &Delivery) -> Qos {
    qos(publish.qos as u8)
}

pub fn encode_delivery(out: &mut BytesMut, publish: &Delivery) -> Result<usize, WireError> {
    publish.write(out).map_err(|e| malformed("PUBLISH", e))
}

/// When retained messages are sent at a subscribe (MQTT 5 retain handling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainHandling {
    OnEverySubscribe,
    OnNewSubscribe,
    Never,
}

/// One filter of a SUBSCRIBE with its options (MQTT 3.1.1: the defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter {
    pub path: String,
    pub qos: Qos,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

/// A SUBSCRIBE: its packet id, filters in order, and (MQTT 5) properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    pub filters: Vec<SubscribeFilter>,
    /// The subscription identifier the client gave these subscriptions.
    pub identifier: Option<usize>,
}

pub fn read_subscribe(frame: &Frame, level: Level) -> Result<Subscribe, WireError> {
    Ok(match level {
        Level::V5 => {
            let s = v5::Subscribe::read(frame.v5_header(), frame.bytes.clone())
                .map_err(|e| malformed("SUBSCRIBE", e))?;
            let identifier = s.properties.and_then(|p| p.id);
            if identifier == Some(0) {
                return Err(malformed("SUBSCRIBE", "subscription identifier 0"));
            }
            let filters = s
                .filters
                .into_iter()
                .map(|f| SubscribeFilter {
                    path: f.path,
                    qos: qos(f.qos as u8),
                    no_local: f.nolocal,
                    retain_as_published: f.preserve_retain,
                    retain_handling: match f.retain_forward_rule {
                        v5::RetainForwardRule::OnEverySubscribe => RetainHandling::OnEverySubscribe,
                        v5::RetainForwardRule::OnNewSubscribe => RetainHandling::OnNewSubscribe,
                        v5::RetainForwardRule::Never => RetainHandling::Never,
                    },
                })
                .collect();
            Subscribe {
                pkid: s.pkid,
                filters,
                identifier,
            }
        }
        Level::V311 => {
            let s = v4::v4::Subscribe::read(frame.v4_header(), frame.bytes.clone())
                .map_err(|e| malformed("SUBSCRIBE", e))?;
            let filters = s
                .filters
                .into_iter()
                .map(|f| SubscribeFilter {
                    path: f.path,
                    qos: qos(f.qos as u8),
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::OnEverySubscribe,
                })
                .collect();
            Subscribe {
                pkid: s.pkid,
                filters,
                identifier: None,
            }
        }
    })
}

/// A SUBSCRIBE of one filter, for rumqttd; MQTT 5 with the subscription identifier
/// Sluice gave it (rumqttd ignores the other subscription options and user properties).
pub fn encode_subscribe(
    out: &mut BytesMut,
    level: Level,
    pkid: u16,
    filter: &SubscribeFilter,
    identifier: usize,
) -> Result<(), WireError> {
    let bad = |e: &dyn std::fmt::Display| malformed("SUBSCRIBE", e);
    match level {
        Level::V5 => {
            use rumqttc::v5::mqttbytes::QoS;
            let qos = match filter.qos {
                Qos::AtMostOnce => QoS::AtMostOnce,
                Qos::AtLeastOnce => QoS::AtLeastOnce,
                Qos::ExactlyOnce => QoS::ExactlyOnce,
            };
            v5::Subscribe {
                pkid,
                filters: vec![v5::Filter::new(filter.path.clone(), qos)],
                properties: Some(v5::SubscribeProperties {
                    id: Some(identifier),
                    user_properties: Vec::new(),
                }),
            }
            .write(out)
            .map_err(|e| bad(&e))?;
        }
        Level::V311 => {
            let qos = match filter.qos {
                Qos::AtMostOnce => v4::QoS::AtMostOnce,
                Qos::AtLeastOnce => v4::QoS::AtLeastOnce,
                Qos::ExactlyOnce => v4::QoS::ExactlyOnce,
            };
            v4::v4::Subscribe {
                pkid,
                filters: vec![v4::v4::SubscribeFilter::new(filter.path.clone(), qos)],
            }
            .write(out)
            .map_err(|e| bad(&e))?;
        }
    }
    Ok(())
}

/// The filters an UNSUBSCRIBE names, and its packet id.
pub fn read_unsubscribe(frame: &Frame, level: Level) -> Result<(u16, Vec<String>), WireError> {
    Ok(match level {
        Level::V5 => {
            let u = v5::Unsubscribe::read(frame.v5_header(), frame.bytes.clone())
                .map_err(|e| malformed("UNSUBSCRIBE", e))?;
            (u.pkid, u.filters)
        }
        Level::V311 => {
            let u = v4::v4::Unsubscribe::read(frame.v4_header(), frame.bytes.clone())
                .map_err(|e| malformed("UNSUBSCRIBE", e))?;
            (u.pkid, u.topics)
        }
    })
}

/// SUBACK: per filter, the QoS granted or why not (3.1.1: failure, 0x80).
pub fn encode_suback(out: &mut BytesMut, level: Level, pkid: u16, answers: &[Result<Qos, Reason>]) {
    let codes = answers.iter().map(|a| match (a, level) {
        (Ok(qos), _) => *qos as u8,
        (Err(reason), Level::V5) => *reason as u8,
        (Err(_), Level::V311) => 0x80,
    });
    encode_acknowledgement(out, SUBACK, level, pkid, codes);
}

/// UNSUBACK: MQTT 5 with a reason per filter; 3.1.1 has none.
pub fn encode_unsuback(out: &mut BytesMut, level: Level, pkid: u16, reasons: &[Reason]) {
    let codes = reasons.iter().map(|r| *r as u8);
    match level {
        Level::V5 => encode_acknowledgement(out, UNSUBACK, level, pkid, codes),
        Level::V311 => encode_acknowledgement(out, UNSUBACK, level, pkid, std::iter::empty()),
    }
}

/// A SUBACK or UNSUBACK: packet id, (MQTT 5) no properties, codes.
fn encode_acknowledgement(
    out: &mut BytesMut,
    kind: u8,
    level: Level,
    pkid: u16,
    codes: impl Iterator<Item = u8>,
) {
    let mut body = pkid.to_be_bytes().to_vec();
    if level == Level::V5 {
        body.push(0);
    }
    body.extend(codes);
    out.extend_from_slice(&[kind << 4]);
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        out.extend_from_slice(&[if len > 0 { byte | 0x80 } else { byte }]);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(&body);
}

/// The session expiry interval an MQTT 5 DISCONNECT sets, if it sets one.
pub fn read_disconnect_expiry(frame: &Frame) -> Result<Option<u32>, WireError> {
    let d = v5::Disconnect::read(frame.v5_header(), frame.bytes.clone())
        .map_err(|e| malformed("DISCONNECT", e))?;
    Ok(d.properties.and_then(|p| p.session_expiry_interval))
}

fn malformed(packet: &'static str, reason: impl ToString) -> WireError {
    WireError::Malformed {
        packet,
        reason: reason.to_string(),
    }
}

/// PUBACK for QoS 1 or PUBREC for QoS 2, for one of the device's publishes.
pub fn encode_ack(
    out: &mut BytesMut,
    qos: Qos,
    pkid: u16,
    level: Level,
    reason: Reason,
    reason_string: Option<&str>,
) {
    let kind = if qos == Qos::ExactlyOnce {
        PUBREC
    } else {
        PUBACK
    };
    encode_response(out, kind, pkid, level, reason, reason_string);
}

/// PUBCOMP, the answer to a device's PUBREL.
pub fn encode_pubcomp(out: &mut BytesMut, pkid: u16, level: Level, reason: Reason) {
    encode_response(out, PUBCOMP, pkid, level, reason, None);
}

/// PUBREL for a QoS 2 publish the ingress relayed to rumqttd, which releases it at once.
pub fn encode_pubrel(out: &mut BytesMut, pkid: u16) {
    let [hi, lo] = pkid.to_be_bytes();
    out.extend_from_slice(&[PUBREL << 4 | 0x02, 2, hi, lo]);
}

/// PUBACK, PUBREC or PUBCOMP. MQTT 5 carries a reason code when it is not success (the
/// property length may then be omitted, MQTT 5, 3.4.2.2.1), and a reason string when
/// there is one.
fn encode_response(
    out: &mut BytesMut,
    kind: u8,
    pkid: u16,
    level: Level,
    reason: Reason,
    reason_string: Option<&str>,
) {
    let [hi, lo] = pkid.to_be_bytes();
    let code = reason as u8;
    if level == Level::V311 || reason == Reason::Success {
        out.extend_from_slice(&[kind << 4, 2, hi, lo]);
        return;
    }
    match reason_string {
        Some(text) => {
            let text = truncate(text, 120).as_bytes();
            // Property: 0x1F, a two-byte length, the UTF-8 string.
            let props = 3 + text.len();
            out.extend_from_slice(&[kind << 4, (4 + props) as u8, hi, lo, code, props as u8]);
            out.extend_from_slice(&[0x1F, 0, text.len() as u8]);
            out.extend_from_slice(text);
        }
        None => out.extend_from_slice(&[kind << 4, 3, hi, lo, code]),
    }
}

/// MQTT 5 DISCONNECT from the server, with a reason code.
pub fn encode_disconnect(out: &mut BytesMut, reason: Reason) {
    out.extend_from_slice(&[0xE0, 1, reason as u8]);
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// CONNACK accepting a connection, as rumqttd would send it (then as `connack_v5` makes
/// it for MQTT 5): for a connection whose relay opens later.
pub fn connack_accepted(
    level: Level,
    session_present: bool,
    limits: ServerLimits,
    server_keep_alive: Option<u16>,
) -> Result<Bytes, WireError> {
    let present = u8::from(session_present);
    match level {
        Level::V311 => Ok(Bytes::copy_from_slice(&[0x20, 2, present, 0])),
        Level::V5 => {
            let rumqttd = Frame {
                bytes: Bytes::copy_from_slice(&[0x20, 3, present, 0, 0]),
                header_len: 2,
                remaining_len: 3,
            };
            connack_v5(&rumqttd, limits, server_keep_alive)
        }
    }
}

/// CONNACK refusing an unsupported protocol level (3.1.1 return code 1), then the
/// connection is closed, as MQTT 3.1.1 section 3.1.2.2 asks.
pub const CONNACK_UNACCEPTABLE_PROTOCOL: [u8; 4] = [0x20, 2, 0, 1];

/// CONNACK refusing a connection the ingress will not serve: MQTT 5 with `reason`,
/// 3.1.1 with the return code that says the same.
pub fn connack_refused(level: Level, reason: Reason) -> Vec<u8> {
    match level {
        Level::V5 => vec![0x20, 3, 0, reason as u8, 0],
        Level::V311 => {
            let code = match reason {
                Reason::ClientIdentifierNotValid => 2,
                Reason::BadUserNameOrPassword => 4,
                Reason::NotAuthorized => 5,
                _ => 3, // server unavailable
            };
            vec![0x20, 2, 0, code]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    fn ack_pkid(frame: &Frame) -> Option<u16> {
        let mut b = frame.bytes.slice(frame.header_len..);
        (b.remaining() >= 2).then(|| b.get_u16())
    }

    fn frames(bytes: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = next_frame(&mut buf, 1 << 20).unwrap() {
            out.push(f);
        }
        out
    }

    #[test]
    fn frames_split_across_reads_and_long_lengths() {
        let mut p = v4::v4::Publish::new("sensors/d/t", v4::QoS::AtLeastOnce, vec![7u8; 300]);
        p.pkid = 42;
        let mut wire = BytesMut::new();
        p.write(&mut wire).unwrap();
        let full = wire.to_vec();
        let mut buf = BytesMut::from(&full[..3]);
        assert!(next_frame(&mut buf, 1 << 20).unwrap().is_none());
        buf.extend_from_slice(&full[3..]);
        let f = next_frame(&mut buf, 1 << 20).unwrap().expect("whole frame");
        let got = read_publish(&f, Level::V311).unwrap();
        assert_eq!(got.topic, "sensors/d/t");
        assert_eq!(
            (got.qos, got.pkid, got.payload.len()),
            (Qos::AtLeastOnce, 42, 300)
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_and_malformed_lengths_are_refused() {
        let mut buf = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0x7f][..]);
        assert!(matches!(
            next_frame(&mut buf, 1024),
            Err(WireError::TooLarge { .. })
        ));
        let mut buf = BytesMut::from(&[0x30u8, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        assert!(matches!(
            next_frame(&mut buf, usize::MAX),
            Err(WireError::MalformedLength)
        ));
    }

    #[test]
    fn subscribe_options_are_read_and_one_filter_goes_to_rumqttd_with_sluices_identifier() {
        use rumqttc::v5::mqttbytes::QoS;
        let mut wire = BytesMut::new();
        v5::Subscribe {
            pkid: 7,
            filters: vec![
                v5::Filter {
                    path: "a/+".into(),
                    qos: QoS::AtLeastOnce,
                    nolocal: true,
                    preserve_retain: true,
                    retain_forward_rule: v5::RetainForwardRule::Never,
                },
                v5::Filter::new("b/#", QoS::ExactlyOnce),
            ],
            properties: Some(v5::SubscribeProperties {
                id: Some(42),
                user_properties: vec![("k".into(), "v".into())],
            }),
        }
        .write(&mut wire)
        .unwrap();
        let s = read_subscribe(&frames(&wire)[0], Level::V5).unwrap();
        assert_eq!((s.pkid, s.identifier), (7, Some(42)));
        assert_eq!(
            s.filters[0],
            SubscribeFilter {
                path: "a/+".into(),
                qos: Qos::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::Never,
            }
        );
        assert_eq!(
            s.filters[1].retain_handling,
            RetainHandling::OnEverySubscribe
        );
        let mut one = BytesMut::new();
        encode_subscribe(&mut one, Level::V5, 7, &s.filters[1], 9).unwrap();
        let sent = read_subscribe(&frames(&one)[0], Level::V5).unwrap();
        assert_eq!((sent.pkid, sent.identifier), (7, Some(9)));
        assert_eq!(sent.filters.len(), 1);
        assert_eq!(sent.filters[0].path, "b/#");

        // Identifier 0 is a protocol error.
        let mut zero = BytesMut::new();
        v5::Subscribe {
            pkid: 1,
            filters: vec![v5::Filter::new("c", QoS::AtMostOnce)],
            properties: Some(v5::SubscribeProperties {
                id: Some(0),
                user_properties: Vec::new(),
            }),
        }
        .write(&mut zero)
        .unwrap();
        assert!(read_subscribe(&frames(&zero)[0], Level::V5).is_err());
    }

    #[test]
    fn subacks_and_unsubacks_answer_every_filter_in_place() {
        let answers = [
            Ok(Qos::AtLeastOnce),
            Err(Reason::NotAuthorized),
            Ok(Qos::AtMostOnce),
        ];
        let mut out = BytesMut::new();
        encode_suback(&mut out, Level::V311, 7, &answers);
        assert_eq!(&out[..], &[0x90, 5, 0, 7, 1, 0x80, 0]);
        out.clear();
        encode_suback(&mut out, Level::V5, 9, &answers);
        assert_eq!(&out[..], &[0x90, 6, 0, 9, 0, 1, 0x87, 0]);
        let ack = v5::SubAck::read(frames(&out)[0].v5_header(), out.clone().freeze()).unwrap();
        assert_eq!(ack.return_codes.len(), 3);
        out.clear();
        encode_unsuback(
            &mut out,
            Level::V5,
            3,
            &[Reason::Success, Reason::NoSubscriptionExisted],
        );
        assert_eq!(&out[..], &[0xB0, 5, 0, 3, 0, 0, 0x11]);
        out.clear();
        encode_unsuback(&mut out, Level::V311, 3, &[Reason::Success]);
        assert_eq!(&out[..], &[0xB0, 2, 0, 3]);
        // 200 answers need a two-byte remaining length.
        out.clear();
        encode_suback(&mut out, Level::V311, 1, &[Ok(Qos::AtMostOnce); 200]);
        assert_eq!(&out[..3], &[0x90, (202 % 128) | 0x80, 1]);
        assert_eq!(frames(&out).len(), 1);
    }

    #[test]
    fn connect_levels_and_client_ids() {
        let mut wire = BytesMut::new();
        v4::v4::Connect::new("dev-1").write(&mut wire).unwrap();
        let c = read_connect(&frames(&wire)[0]).unwrap();
        assert_eq!(
            c,
            Connect {
                level: Level::V311,
                client_id: "dev-1".into(),
                clean: true,
                keep_alive: 10,
                problem_info: true,
                session_expiry: None,
                receive_maximum: u16::MAX,
                max_packet_size: None,
                username: None,
                password: None,
                auth_method: None,
                will_topic: None,
                will_retain: false,
            }
        );
        let changed =
            connect_for_broker(&frames(&wire)[0], Level::V311, 65535, true, ("$s", None)).unwrap();
        let c = read_connect(&frames(&changed)[0]).unwrap();
        assert_eq!((c.keep_alive, c.client_id.as_str()), (65535, "dev-1"));

        let mut wire = BytesMut::new();
        v5::Connect {
            keep_alive: 30,
            client_id: "dev-5".into(),
            clean_start: true,
            properties: None,
        }
        .write(&None, &Some(v5::Login::new("dev-5", "s3cret")), &mut wire)
        .unwrap();
        let c = read_connect(&frames(&wire)[0]).unwrap();
        assert_eq!(
            c,
            Connect {
                level: Level::V5,
                client_id: "dev-5".into(),
                clean: true,
                keep_alive: 30,
                problem_info: true,
                session_expiry: Some(0),
                receive_maximum: u16::MAX,
                max_packet_size: None,
                username: Some("dev-5".into()),
                password: Some("s3cret".into()),
                auth_method: None,
                will_topic: None,
                will_retain: false,
            }
        );
        let c = read_connect(
            &frames(
                &connect_for_broker(&frames(&wire)[0], Level::V5, 7, true, ("$s", None)).unwrap(),
            )[0],
        )
        .unwrap();
        assert_eq!(c.keep_alive, 7);

        // What rumqttd gets of an MQTT 5 CONNECT: Sluice's clean start, none of the limits
        // the ingress keeps for it, the rest as the client sent it.
        let mut wire = BytesMut::new();
        v5::Connect {
            keep_alive: 30,
            client_id: "dev-6".into(),
            clean_start: true,
            properties: Some(v5::ConnectProperties {
                session_expiry_interval: Some(300),
                receive_maximum: Some(2),
                max_packet_size: Some(200),
                topic_alias_max: Some(10),
                request_response_info: None,
                request_problem_info: None,
                user_properties: vec![("k".into(), "v".into())],
                authentication_method: None,
                authentication_data: None,
            }),
        }
        .write(&None, &None, &mut wire)
        .unwrap();
        let c = read_connect(&frames(&wire)[0]).unwrap();
        assert_eq!(
            (c.receive_maximum, c.max_packet_size, c.session_expiry),
            (2, Some(200), Some(300))
        );
        let upstream =
            connect_for_broker(&frames(&wire)[0], Level::V5, 60, false, ("$s", None)).unwrap();
        let f = &frames(&upstream)[0];
        let (sent, _, _) = v5::Connect::read(f.v5_header(), f.bytes.clone()).unwrap();
        let p = sent.properties.unwrap();
        assert_eq!(
            (sent.clean_start, sent.keep_alive, sent.client_id.as_str()),
            (false, 60, "dev-6")
        );
        assert_eq!(
            (p.receive_maximum, p.max_packet_size, p.topic_alias_max),
            (None, None, None)
        );
        assert_eq!(
            (p.session_expiry_interval, p.user_properties.len()),
            (Some(300), 1)
        );

        // The will's stamp is Sluice's, whatever the client put there.
        let mut wire = BytesMut::new();
        let will = v5::LastWill {
            topic: Bytes::from_static(b"w"),
            message: Bytes::from_static(b"gone"),
            qos: rumqttc::v5::mqttbytes::QoS::AtMostOnce,
            retain: true,
            properties: Some(v5::LastWillProperties {
                delay_interval: None,
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: vec![("$s".into(), "1 victim".into())],
            }),
        };
        v5::Connect {
            keep_alive: 30,
            client_id: "dev-7".into(),
            clean_start: true,
            properties: None,
        }
        .write(&Some(will), &None, &mut wire)
        .unwrap();
        assert!(read_connect(&frames(&wire)[0]).unwrap().will_retain);
        let stamp = ("$s", Some("1 dev-7".to_owned()));
        let upstream = connect_for_broker(&frames(&wire)[0], Level::V5, 60, true, stamp).unwrap();
        let f = &frames(&upstream)[0];
        let (_, will, _) = v5::Connect::read(f.v5_header(), f.bytes.clone()).unwrap();
        let props = will.unwrap().properties.unwrap();
        assert_eq!(
            props.user_properties,
            vec![("$s".to_string(), "1 dev-7".to_string())]
        );

        // Receive maximum 0 is a protocol error.
        let mut wire = BytesMut::new();
        v5::Connect {
            keep_alive: 30,
            client_id: "dev-8".into(),
            clean_start: true,
            properties: Some(v5::ConnectProperties {
                receive_maximum: Some(0),
                ..v5::ConnectProperties::new()
            }),
        }
        .write(&None, &None, &mut wire)
        .unwrap();
        assert!(read_connect(&frames(&wire)[0]).is_err());

        // MQTT 3.1 ("MQIsdp", level 3) is not served.
        let mut bad = BytesMut::new();
        v4::v4::Connect::new("old").write(&mut bad).unwrap();
        let mut raw = bad.to_vec();
        raw[2..10].copy_from_slice(&[0, 6, b'M', b'Q', b'I', b's', b'd', b'p']);
        assert!(read_connect(&frames(&raw)[0]).is_err());
    }

    #[test]
    fn acks_decode_with_rumqttc() {
        let mut out = BytesMut::new();
        encode_ack(
            &mut out,
            Qos::AtLeastOnce,
            513,
            Level::V311,
            Reason::Success,
            None,
        );
        let f = &frames(&out)[0];
        assert_eq!((f.packet_type(), ack_pkid(f)), (PUBACK, Some(513)));

        let mut out = BytesMut::new();
        encode_ack(
            &mut out,
            Qos::AtLeastOnce,
            9,
            Level::V5,
            Reason::PayloadFormatInvalid,
            None,
        );
        let ack = v5::PubAck::read(frames(&out)[0].v5_header(), out.clone().freeze()).unwrap();
        assert_eq!(ack.pkid, 9);
        assert_eq!(ack.reason, v5::PubAckReason::PayloadFormatInvalid);

        let mut out = BytesMut::new();
        let why = "invalid JSON: expected value at line 1 column 1 ".repeat(5);
        encode_ack(
            &mut out,
            Qos::AtLeastOnce,
            11,
            Level::V5,
            Reason::PayloadFormatInvalid,
            Some(&why),
        );
        let ack = v5::PubAck::read(frames(&out)[0].v5_header(), out.clone().freeze()).unwrap();
        assert_eq!(ack.pkid, 11);
        assert_eq!(
            ack.properties.and_then(|p| p.reason_string).as_deref(),
            Some(&why[..120])
        );

        let mut out = BytesMut::new();
        encode_ack(
            &mut out,
            Qos::ExactlyOnce,
            10,
            Level::V311,
            Reason::Success,
            None,
        );
        assert_eq!(frames(&out)[0].packet_type(), PUBREC);

        let mut out = BytesMut::new();
        encode_pubcomp(&mut out, 77, Level::V5, Reason::PacketIdentifierNotFound);
        let comp = v5::PubComp::read(frames(&out)[0].v5_header(), out.clone().freeze()).unwrap();
        assert_eq!(comp.pkid, 77);
        assert_eq!(comp.reason, v5::PubCompReason::PacketIdentifierNotFound);
        let mut out = BytesMut::new();
        encode_pubrel(&mut out, 300);
        let f = &frames(&out)[0];
        assert_eq!((f.packet_type(), f.packet_id().unwrap()), (PUBREL, 300));
    }

    #[test]
    fn publish_topics_with_wildcards_are_refused() {
        for topic in ["sensors/+/t", "sensors/#"] {
            let mut wire = BytesMut::new();
            v4::v4::Publish::new(topic, v4::QoS::AtMostOnce, vec![1u8])
                .write(&mut wire)
                .unwrap();
            assert!(matches!(
                read_publish(&frames(&wire)[0], Level::V311),
                Err(WireError::WildcardTopic(_))
            ));
        }
    }
}
