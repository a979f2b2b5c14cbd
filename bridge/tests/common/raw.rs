//! A raw MQTT client for tests that must break the rules: it writes whatever bytes a test
//! builds with the packet helpers below and reads back what the server sends.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::Gateway;

pub const DISCONNECT: u8 = 0xE0;

/// A client that writes whatever bytes a test gives it.
pub struct Raw(pub TcpStream);

impl Raw {
    pub fn connect(gateway: &Gateway) -> Raw {
        let s = TcpStream::connect(gateway.mqtt_addr()).expect("device port");
        s.set_nodelay(true).expect("nodelay");
        Raw(s)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).expect("send");
    }

    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        self.0
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = vec![0; n];
        self.0.read_exact(&mut buf).expect("bytes from the server");
        buf
    }

    /// The next whole packet: its first byte and its body. Panics after 10 s.
    pub fn packet(&mut self) -> (u8, Vec<u8>) {
        self.next_packet(Duration::from_secs(10))
            .expect("a packet from the server within 10 s")
    }

    /// The next whole packet within `limit`, or None (nothing came, or the server closed).
    pub fn next_packet(&mut self, limit: Duration) -> Option<(u8, Vec<u8>)> {
        self.0.set_read_timeout(Some(limit)).expect("timeout");
        let mut first = [0u8; 1];
        self.0.read_exact(&mut first).ok()?;
        self.0
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let mut b = [0u8; 1];
            self.0.read_exact(&mut b).ok()?;
            len |= usize::from(b[0] & 0x7f) << shift;
            shift += 7;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0; len];
        self.0.read_exact(&mut body).ok()?;
        Some((first[0], body))
    }

    /// What the server sends before it closes the connection, which it must within 10 s.
    pub fn closed(&mut self) -> Vec<u8> {
        self.until_closed(Duration::from_secs(10))
            .expect("closed within 10 s")
            .0
    }

    /// Everything the server sends until it closes the connection (None if it has not
    /// within `limit`), and when it closed.
    pub fn until_closed(&mut self, limit: Duration) -> Option<(Vec<u8>, Duration)> {
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let left = limit.checked_sub(start.elapsed())?;
            self.0
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            match self.0.read(&mut buf) {
                Ok(0) => return Some((got, start.elapsed())),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Some((got, start.elapsed()))
                }
                Err(_) => return None,
            }
        }
    }
}

pub fn string(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        v.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    v.extend_from_slice(body);
    v
}

/// CONNECT for MQTT 3.1.1 (level 4) or 5, clean or not, with an optional QoS 0 will.
pub fn connect(
    level: u8,
    client_id: &str,
    clean: bool,
    keep_alive: u16,
    will: Option<(&str, &str)>,
) -> Vec<u8> {
    let mut flags = if clean { 0x02 } else { 0 };
    if will.is_some() {
        flags |= 0x04;
    }
    let mut body = string(b"MQTT");
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        body.push(0); // no properties
    }
    body.extend(string(client_id.as_bytes()));
    if let Some((topic, message)) = will {
        if level == 5 {
            body.push(0); // no will properties
        }
        body.extend(string(topic.as_bytes()));
        body.extend(string(message.as_bytes()));
    }
    packet(0x10, &body)
}

/// QoS 1 PUBLISH; on MQTT 5 with the given raw properties.
pub fn publish(level: u8, topic: &str, pkid: u16, props: &[u8], payload: &[u8]) -> Vec<u8> {
    publish_at(level, 1, false, topic, pkid, props, payload)
}

/// PUBLISH at any QoS (no packet id at 0), DUP flag as given.
pub fn publish_at(
    level: u8,
    qos: u8,
    dup: bool,
    topic: &str,
    pkid: u16,
    props: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut body = string(topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    if level == 5 {
        body.push(props.len() as u8);
        body.extend_from_slice(props);
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1) | if dup { 0x08 } else { 0 }, &body)
}

/// SUBSCRIBE to one filter at a QoS.
pub fn subscribe(level: u8, pkid: u16, filter: &str, qos: u8) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if level == 5 {
        body.push(0);
    }
    body.extend(string(filter.as_bytes()));
    body.push(qos);
    packet(0x82, &body)
}

/// PUBREL for a packet id (reason success, which both versions may leave out).
pub fn pubrel(pkid: u16) -> Vec<u8> {
    let id = pkid.to_be_bytes();
    vec![0x62, 2, id[0], id[1]]
}

/// A connected raw client, its CONNACK read.
pub fn connected(gateway: &Gateway, level: u8, client_id: &str, keep_alive: u16) -> Raw {
    let mut raw = Raw::connect(gateway);
    raw.send(&connect(level, client_id, true, keep_alive, None));
    let head = raw.read_exact(2);
    assert_eq!(head[0], 0x20, "CONNACK");
    let rest = raw.read_exact(head[1] as usize);
    assert_eq!(rest[1], 0, "connection accepted");
    raw
}

/// CONNECT, clean, keep alive 60, with a user name and password.
pub fn connect_login(level: u8, client_id: &str, username: &str, password: &str) -> Vec<u8> {
    let mut body = string(b"MQTT");
    body.push(level);
    body.push(0x02 | 0x80 | 0x40);
    body.extend_from_slice(&60u16.to_be_bytes());
    if level == 5 {
        body.push(0); // no properties
    }
    body.extend(string(client_id.as_bytes()));
    body.extend(string(username.as_bytes()));
    body.extend(string(password.as_bytes()));
    packet(0x10, &body)
}

/// A raw client logged in with a user name and password, its CONNACK read (and checked).
pub fn logged_in(gateway: &Gateway, level: u8, client_id: &str, user: &str, pw: &str) -> Raw {
    let mut raw = Raw::connect(gateway);
    raw.send(&connect_login(level, client_id, user, pw));
    let (kind, body) = raw.packet();
    assert_eq!((kind, body[1]), (0x20, 0), "{user} logged in");
    raw
}
