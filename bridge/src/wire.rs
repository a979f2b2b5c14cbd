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
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;

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
    TopicNameInvalid = 0x90,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    MessageRateTooHigh = 0x96,
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
    /// MQTT 5: seconds a persistent session (clean start 0) outlives its connection;
    /// `None` for a clean start and for MQTT 3.1.1, whose sessions never expire.
    pub session_expiry: Option<u32>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// MQTT 5 enhanced authentication, which Sluice does not offer.
    pub auth_method: Option<String>,
    /// Where the client's will would be published: a publish like any other.
    pub will_topic: Option<String>,
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
                will_topic: c.last_will.map(|w| w.topic),
                level: Level::V311,
                client_id: c.client_id,
                clean: c.clean_session,
                keep_alive: c.keep_alive,
                problem_info: true,
                session_expiry: None,
            })
        }
        5 => {
            let (c, will, login) = v5::Connect::read(frame.v5_header(), frame.bytes.clone())
                .map_err(|e| malformed("CONNECT", e))?;
            let will_topic = will
                .map(|w| String::from_utf8(w.topic.to_vec()))
                .transpose()
                .map_err(|_| malformed("CONNECT", "will topic is not UTF-8"))?;
            let props = c.properties.unwrap_or_default();
            let (username, password) =
                login.map_or((None, None), |l| credentials(l.username, l.password));
            Ok(Connect {
                username,
                password,
                auth_method: props.authentication_method,
                will_topic,
                level: Level::V5,
                client_id: c.client_id,
                clean: c.clean_start,
                keep_alive: c.keep_alive,
                problem_info: props.request_problem_info.is_none_or(|v| v != 0),
                session_expiry: (!c.clean_start)
                    .then(|| props.session_expiry_interval.unwrap_or(0)),
            })
        }
        other => Err(WireError::UnsupportedLevel(other)),
    }
}

/// The CONNECT with another keep alive, for rumqttd: the ingress keeps the device's keep
/// alive itself. Only for a frame `read_connect` accepted ("MQTT" name, level 4/5).
pub fn with_keep_alive(frame: &Frame, seconds: u16) -> Bytes {
    let mut bytes = BytesMut::from(&frame.bytes[..]);
    // Protocol name (2 + 4 bytes), level, flags, then the keep alive.
    let at = frame.header_len + 8;
    bytes[at..at + 2].copy_from_slice(&seconds.to_be_bytes());
    bytes.freeze()
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
/// an assigned client identifier is kept.
pub fn connack_v5(frame: &Frame, limits: ServerLimits) -> Result<Bytes, WireError> {
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
        ack.properties = Some(p);
    }
    let mut out = BytesMut::new();
    ack.write(&mut out).map_err(|e| malformed("CONNACK", e))?;
    Ok(out.freeze())
}

/// A device's PUBLISH, version-independent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub qos: Qos,
    /// Set on a retransmission.
    pub dup: bool,
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

/// An MQTT 5 PUBLISH with its topic alias resolved: the full topic, no alias, for rumqttd,
/// which does not implement client topic aliases.
pub fn publish_with_topic(frame: &Frame, topic: &str) -> Result<Bytes, WireError> {
    let mut p = v5::Publish::read(frame.v5_header(), frame.bytes.clone())
        .map_err(|e| malformed("PUBLISH", e))?;
    p.topic = Bytes::copy_from_slice(topic.as_bytes());
    if let Some(props) = p.properties.as_mut() {
        props.topic_alias = None;
    }
    let mut out = BytesMut::new();
    p.write(&mut out).map_err(|e| malformed("PUBLISH", e))?;
    Ok(out.freeze())
}

/// A SUBSCRIBE's packet id and topic filters, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub pkid: u16,
    pub filters: Vec<String>,
}

pub fn read_subscribe(frame: &Frame, level: Level) -> Result<Subscribe, WireError> {
    Ok(match level {
        Level::V5 => {
            let s = v5::Subscribe::read(frame.v5_header(), frame.bytes.clone())
                .map_err(|e| malformed("SUBSCRIBE", e))?;
            let filters = s.filters.into_iter().map(|f| f.path).collect();
            Subscribe {
                pkid: s.pkid,
                filters,
            }
        }
        Level::V311 => {
            let s = v4::v4::Subscribe::read(frame.v4_header(), frame.bytes.clone())
                .map_err(|e| malformed("SUBSCRIBE", e))?;
            let filters = s.filters.into_iter().map(|f| f.path).collect();
            Subscribe {
                pkid: s.pkid,
                filters,
            }
        }
    })
}

/// The filters an UNSUBSCRIBE names.
pub fn read_unsubscribe(frame: &Frame, level: Level) -> Result<Vec<String>, WireError> {
    Ok(match level {
        Level::V5 => {
            v5::Unsubscribe::read(frame.v5_header(), frame.bytes.clone())
                .map_err(|e| malformed("UNSUBSCRIBE", e))?
                .filters
        }
        Level::V311 => {
            v4::v4::Unsubscribe::read(frame.v4_header(), frame.bytes.clone())
                .map_err(|e| malformed("UNSUBSCRIBE", e))?
                .topics
        }
    })
}

/// The SUBSCRIBE with only the filters `granted` marks, for rumqttd (properties kept).
pub fn subscribe_only(frame: &Frame, level: Level, granted: &[bool]) -> Result<Bytes, WireError> {
    let bad = |e: &dyn std::fmt::Display| malformed("SUBSCRIBE", e);
    let mut out = BytesMut::new();
    match level {
        Level::V5 => {
            let mut s =
                v5::Subscribe::read(frame.v5_header(), frame.bytes.clone()).map_err(|e| bad(&e))?;
            s.filters = only_granted(s.filters, granted);
            s.write(&mut out).map_err(|e| bad(&e))?;
        }
        Level::V311 => {
            let mut s = v4::v4::Subscribe::read(frame.v4_header(), frame.bytes.clone())
                .map_err(|e| bad(&e))?;
            s.filters = only_granted(s.filters, granted);
            s.write(&mut out).map_err(|e| bad(&e))?;
        }
    }
    Ok(out.freeze())
}

/// The items `granted` marks, in order.
fn only_granted<T>(items: Vec<T>, granted: &[bool]) -> Vec<T> {
    let marks = granted.iter().copied().chain(std::iter::repeat(false));
    items
        .into_iter()
        .zip(marks)
        .filter(|(_, g)| *g)
        .map(|(item, _)| item)
        .collect()
}

/// One answer per filter: `theirs` (rumqttd's, for the granted ones) in the granted
/// places, `refused` in the others.
fn with_refusals<C: Clone>(theirs: Vec<C>, granted: &[bool], refused: C) -> Vec<C> {
    let mut theirs = theirs.into_iter();
    granted
        .iter()
        .map(|&g| match g {
            true => theirs.next().unwrap_or_else(|| refused.clone()),
            false => refused.clone(),
        })
        .collect()
}

/// The SUBACK for a SUBSCRIBE of which only the `granted` filters went to rumqttd: its
/// answers for those (`upstream`, rumqttd's SUBACK; `None` when none went) in their
/// places, and "not authorised" (3.1.1: failure 0x80; 5: 0x87) for the others.
pub fn suback_with_refusals(
    upstream: Option<&Frame>,
    pkid: u16,
    level: Level,
    granted: &[bool],
) -> Result<Bytes, WireError> {
    let bad = |e: &dyn std::fmt::Display| malformed("SUBACK", e);
    let mut out = BytesMut::new();
    match level {
        Level::V5 => {
            let mut ack = match upstream {
                Some(f) => v5::SubAck::read(f.v5_header(), f.bytes.clone()).map_err(|e| bad(&e))?,
                None => v5::SubAck {
                    pkid,
                    return_codes: Vec::new(),
                    properties: None,
                },
            };
            let refused = v5::SubscribeReasonCode::NotAuthorized;
            ack.return_codes = with_refusals(ack.return_codes, granted, refused);
            ack.write(&mut out).map_err(|e| bad(&e))?;
        }
        Level::V311 => {
            let mut ack = match upstream {
                Some(f) => {
                    v4::v4::SubAck::read(f.v4_header(), f.bytes.clone()).map_err(|e| bad(&e))?
                }
                None => v4::v4::SubAck {
                    pkid,
                    return_codes: Vec::new(),
                },
            };
            let refused = v4::v4::SubscribeReasonCode::Failure;
            ack.return_codes = with_refusals(ack.return_codes, granted, refused);
            ack.write(&mut out).map_err(|e| bad(&e))?;
        }
    }
    Ok(out.freeze())
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
    fn refused_filters_are_left_out_and_answered_in_their_places() {
        use v4::v4::{SubAck, Subscribe as Sub, SubscribeFilter, SubscribeReasonCode as Code};
        let filters = ["sensors/a/+", "#", "sensors/a/t"];
        let mut wire = BytesMut::new();
        Sub {
            pkid: 7,
            filters: filters
                .iter()
                .map(|f| SubscribeFilter::new(f.to_string(), v4::QoS::AtLeastOnce))
                .collect(),
        }
        .write(&mut wire)
        .unwrap();
        let frame = &frames(&wire)[0];
        assert_eq!(read_subscribe(frame, Level::V311).unwrap().filters, filters);
        let granted = [true, false, true];
        let only = subscribe_only(frame, Level::V311, &granted).unwrap();
        let sent = read_subscribe(&frames(&only)[0], Level::V311).unwrap();
        assert_eq!(
            (sent.pkid, sent.filters),
            (7, vec![filters[0].to_owned(), filters[2].to_owned()])
        );
        let mut theirs = BytesMut::new();
        SubAck::new(
            7,
            vec![
                Code::Success(v4::QoS::AtLeastOnce),
                Code::Success(v4::QoS::AtMostOnce),
            ],
        )
        .write(&mut theirs)
        .unwrap();
        let merged =
            suback_with_refusals(Some(&frames(&theirs)[0]), 7, Level::V311, &granted).unwrap();
        assert_eq!(&merged[..], &[0x90, 5, 0, 7, 1, 0x80, 0]);
        let none = suback_with_refusals(None, 9, Level::V5, &[false]).unwrap();
        assert_eq!(&none[..], &[0x90, 4, 0, 9, 0, 0x87]);
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
                username: None,
                password: None,
                auth_method: None,
                will_topic: None,
            }
        );
        let changed = with_keep_alive(&frames(&wire)[0], 65535);
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
                session_expiry: None,
                username: Some("dev-5".into()),
                password: Some("s3cret".into()),
                auth_method: None,
                will_topic: None,
            }
        );
        let c = read_connect(&frames(&with_keep_alive(&frames(&wire)[0], 7))[0]).unwrap();
        assert_eq!(c.keep_alive, 7);

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
