//! MQTT 5 session expiry, which rumqttd 0.20 does not implement (it keeps every persistent
//! session forever). When the last connection of a persistent session ends, Sluice waits
//! out the session expiry interval (none for 0) and, unless the client is back, ends the
//! session in rumqttd by connecting as that client with clean start.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::wire;

/// Sessions whose expiry Sluice keeps, by client id.
pub struct Sessions {
    broker_v5: SocketAddr,
    live: Mutex<HashMap<String, Session>>,
}

#[derive(Default)]
struct Session {
    /// Open connections of this client id (a takeover briefly makes two).
    connections: usize,
    /// Bumped by every connection, so a pending expiry sees the client came back.
    generation: u64,
    /// Held while the session is being ended, so a new connection waits for that.
    ending: Arc<tokio::sync::Mutex<()>>,
}

/// An open connection's claim on its session; hand it back with `Sessions::closed`.
pub struct Claim {
    client_id: String,
    expiry: Option<u32>,
}

impl Sessions {
    pub fn new(broker_v5: SocketAddr) -> Sessions {
        Sessions {
            broker_v5,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// Called before a connection's CONNECT goes to rumqttd: waits for the end of an
    /// expiring session of the same client id, so the new one never meets a half-ended one.
    pub async fn opened(&self, client_id: &str, expiry: Option<u32>) -> Claim {
        let ending = {
            let mut live = self.live.lock().expect("sessions lock");
            let s = live.entry(client_id.to_owned()).or_default();
            s.connections += 1;
            s.generation += 1;
            s.ending.clone()
        };
        drop(ending.lock().await);
        Claim {
            client_id: client_id.to_owned(),
            expiry,
        }
    }

    /// Called when a connection ends: a persistent MQTT 5 session (clean start 0) with a
    /// finite expiry is ended that many seconds later, unless its client is back by then.
    pub fn closed(self: &Arc<Self>, claim: Claim) {
        let mut live = self.live.lock().expect("sessions lock");
        let Some(s) = live.get_mut(&claim.client_id) else {
            return;
        };
        s.connections -= 1;
        if s.connections > 0 {
            return;
        }
        let Some(expiry) = claim.expiry.filter(|&e| e != u32::MAX) else {
            live.remove(&claim.client_id);
            return;
        };
        let generation = s.generation;
        let sessions = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(expiry.into())).await;
            sessions.expire(&claim.client_id, generation).await;
        });
    }

    async fn expire(&self, client_id: &str, generation: u64) {
        let ending = {
            let live = self.live.lock().expect("sessions lock");
            match live.get(client_id) {
                Some(s) if s.generation == generation && s.connections == 0 => s.ending.clone(),
                _ => return,
            }
        };
        let _ending = ending.lock().await;
        // Checked again under the session's own lock: a connection may have come since.
        // One that comes now waits for this lock, so it finds the session ended.
        let unchanged = |live: &HashMap<String, Session>| {
            live.get(client_id)
                .is_some_and(|s| s.generation == generation && s.connections == 0)
        };
        if !unchanged(&self.live.lock().expect("sessions lock")) {
            return;
        }
        match self.end_in_broker(client_id).await {
            Ok(()) => tracing::debug!(client_id, "session expired"),
            Err(e) => tracing::warn!(client_id, error = %e, "could not end an expired session"),
        }
        let mut live = self.live.lock().expect("sessions lock");
        if unchanged(&live) {
            live.remove(client_id);
        }
    }

    async fn end_in_broker(&self, client_id: &str) -> std::io::Result<()> {
        let connect = wire::clean_start_v5(client_id).map_err(std::io::Error::other)?;
        let mut broker = TcpStream::connect(self.broker_v5).await?;
        broker.write_all(&connect).await?;
        // The CONNACK: rumqttd has dropped the old session once it answers.
        let mut head = [0u8; 2];
        broker.read_exact(&mut head).await?;
        let mut disconnect = bytes::BytesMut::new();
        wire::encode_disconnect(&mut disconnect, wire::REASON_SUCCESS);
        broker.write_all(&disconnect).await?;
        Ok(())
    }
}
