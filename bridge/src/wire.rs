//! MQTT on the device socket, as far as the ingress needs it: split a byte stream into
//! frames, read CONNECT and PUBLISH with rumqttc's public codecs (3.1.1 and 5), and encode
//! the acknowledgements the ingress sends itself. Everything else is relayed untouched.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes as v4;
use rumqttc::v5::mqttbytes::v5;

pub const CONNECT: u8 = 1;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;

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
    if buf.len() < size {
        buf.reserve(size - buf.len());
        return Ok(None);
    }
    Ok(Some(Frame {
        bytes: buf.split_to(size).freeze(),
        header_len,
        remaining_len,
    }))
}

/// What the ingress needs from a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// 4 for MQTT 3.1.1, 5 for MQTT 5.
    pub level: u8,
    pub client_id: String,
    /// Seconds; 0 turns keep alive off.
    pub keep_alive: u16,
}

pub fn read_connect(frame: &Frame) -> Result<Connect, WireError> {
    if frame.packet_type() != CONNECT {
        return Err(WireError::NotConnect);
    }
    // Protocol name (2-byte length + "MQTT") then the level byte.
    let level = *frame
        .bytes
        .get(frame.header_len + 6)
        .ok_or_else(|| malformed("CONNECT", "truncated variable header"))?;
    let (client_id, keep_alive) = match level {
        4 => {
            let c = v4::v4::Connect::read(frame.v4_header(), frame.bytes.clone())
                .map_err(|e| malformed("CONNECT", e))?;
            (c.client_id, c.keep_alive)
        }
        5 => {
            let c = v5::Connect::read(frame.v5_header(), frame.bytes.clone())
                .map_err(|e| malformed("CONNECT", e))?
                .0;
            (c.client_id, c.keep_alive)
        }
        other => return Err(WireError::UnsupportedLevel(other)),
    };
    Ok(Connect {
        level,
        client_id,
        keep_alive,
    })
}

/// The CONNECT with another keep alive. rumqttd refuses keep alive 0 (valid MQTT: off),
/// so the ingress, which owns the device's socket, relays such a CONNECT with the largest
/// keep alive instead. Only for a frame `read_connect` accepted ("MQTT" name, level 4/5).
pub fn with_keep_alive(frame: &Frame, seconds: u16) -> Bytes {
    let mut bytes = BytesMut::from(&frame.bytes[..]);
    // Protocol name (2 + 4 bytes), level, flags, then the keep alive.
    let at = frame.header_len + 8;
    bytes[at..at + 2].copy_from_slice(&seconds.to_be_bytes());
    bytes.freeze()
}

/// A device's PUBLISH, version-independent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub topic: String,
    pub qos: u8,
    pub pkid: u16,
    pub payload: Bytes,
    /// MQTT 5 content type, which names the payload's format.
    pub content_type: Option<String>,
}

pub fn read_publish(frame: &Frame, level: u8) -> Result<Publish, WireError> {
    if level == 5 {
        let p = v5::Publish::read(frame.v5_header(), frame.bytes.clone())
            .map_err(|e| malformed("PUBLISH", e))?;
        let topic = String::from_utf8(p.topic.to_vec())
            .map_err(|_| malformed("PUBLISH", "topic is not UTF-8"))?;
        Ok(Publish {
            topic,
            qos: p.qos as u8,
            pkid: p.pkid,
            payload: p.payload,
            content_type: p.properties.and_then(|props| props.content_type),
        })
    } else {
        let p = v4::v4::Publish::read(frame.v4_header(), frame.bytes.clone())
            .map_err(|e| malformed("PUBLISH", e))?;
        Ok(Publish {
            topic: p.topic,
            qos: p.qos as u8,
            pkid: p.pkid,
            payload: p.payload,
            content_type: None,
        })
    }
}

fn malformed(packet: &'static str, reason: impl ToString) -> WireError {
    WireError::Malformed {
        packet,
        reason: reason.to_string(),
    }
}

/// MQTT 5 reason codes the ingress puts on acknowledgements.
pub const REASON_SUCCESS: u8 = 0x00;
pub const REASON_TOPIC_NAME_INVALID: u8 = 0x90;
pub const REASON_PAYLOAD_FORMAT_INVALID: u8 = 0x99;

/// PUBACK for QoS 1 or PUBREC for QoS 2. MQTT 5 carries a reason code when it is not
/// success; the property length may then be omitted (MQTT 5, 3.4.2.2.1).
pub fn encode_ack(out: &mut BytesMut, qos: u8, pkid: u16, level: u8, reason: u8) {
    let kind = if qos == 2 { PUBREC } else { PUBACK };
    let [hi, lo] = pkid.to_be_bytes();
    if level == 5 && reason != REASON_SUCCESS {
        out.extend_from_slice(&[kind << 4, 3, hi, lo, reason]);
    } else {
        out.extend_from_slice(&[kind << 4, 2, hi, lo]);
    }
}

/// CONNACK refusing an unsupported protocol level (3.1.1 return code 1), then the
/// connection is closed, as MQTT 3.1.1 section 3.1.2.2 asks.
pub const CONNACK_UNACCEPTABLE_PROTOCOL: [u8; 4] = [0x20, 2, 0, 1];

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
        let got = read_publish(&f, 4).unwrap();
        assert_eq!(got.topic, "sensors/d/t");
        assert_eq!((got.qos, got.pkid, got.payload.len()), (1, 42, 300));
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
    fn connect_levels_and_client_ids() {
        let mut wire = BytesMut::new();
        v4::v4::Connect::new("dev-1").write(&mut wire).unwrap();
        let c = read_connect(&frames(&wire)[0]).unwrap();
        assert_eq!(
            c,
            Connect {
                level: 4,
                client_id: "dev-1".into(),
                keep_alive: 10,
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
        .write(&None, &None, &mut wire)
        .unwrap();
        let c = read_connect(&frames(&wire)[0]).unwrap();
        assert_eq!(
            c,
            Connect {
                level: 5,
                client_id: "dev-5".into(),
                keep_alive: 30,
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
        encode_ack(&mut out, 1, 513, 4, REASON_SUCCESS);
        let f = &frames(&out)[0];
        assert_eq!((f.packet_type(), ack_pkid(f)), (PUBACK, Some(513)));

        let mut out = BytesMut::new();
        encode_ack(&mut out, 1, 9, 5, REASON_PAYLOAD_FORMAT_INVALID);
        let ack = v5::PubAck::read(frames(&out)[0].v5_header(), out.clone().freeze()).unwrap();
        assert_eq!(ack.pkid, 9);
        assert_eq!(ack.reason, v5::PubAckReason::PayloadFormatInvalid);

        let mut out = BytesMut::new();
        encode_ack(&mut out, 2, 10, 4, REASON_SUCCESS);
        assert_eq!(frames(&out)[0].packet_type(), PUBREC);
    }
}
