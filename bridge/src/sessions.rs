//! Sessions as Sluice keeps them beside rumqttd: every connection's client id (MQTT 3.1.1
//! and 5 share rumqttd's router, so one map), the QoS 2 publishes a session has received
//! and not yet released, and MQTT 5 session expiry, which rumqttd 0.20 lacks: when the last
//! connection of a persistent MQTT 5 session ends, Sluice waits out the expiry interval and,
//! unless the client is back, ends the session in rumqttd by connecting as it, clean start.
//! A session belongs to the identity that opened it: another cannot take its client id,
//! except an identity taking its own name, which ends the other's session first.
//! rumqttd closes a connection another of its client id takes over; a connection whose
//! relay opens late (`ingress::upstream`) may have none, so Sluice closes it itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

use crate::ack::Qos2Received;
pub use crate::ingress::deliver::Granted;
use crate::wire;

/// Ending a session in rumqttd gives up after this; connections of that client id wait
/// for it meanwhile.
const END_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Sessions {
    broker_v5: Option<SocketAddr>,
    live: Mutex<HashMap<String, Session>>,
    /// Never reused, so a stale expiry never mistakes a new session for its own.
    generations: AtomicU64,
}

struct Session {
    /// The identity that opened it (`None`: anonymous).
    owner: Option<Arc<str>>,
    /// Open connections of this client id (a takeover briefly makes two).
    connections: usize,
    /// Those of them whose relay opens late: told when they are taken over.
    late: Vec<Arc<Notify>>,
    /// rumqttd may hold something of it: a relay of it was opened since it was last ended
    /// there. Until then Sluice knows all there is of it (no subscriptions, nothing queued).
    in_broker: bool,
    /// It outlives its connections (a persistent session was opened and not ended since):
    /// what "session present" says to the next connection.
    persisted: bool,
    /// Notified whenever one of its connections ends.
    closing: Arc<Notify>,
    /// Set by every connection, so a pending expiry sees the client came back.
    generation: u64,
    /// Held while the session is being ended, so a new connection waits for that.
    ending: Arc<tokio::sync::Mutex<()>>,
    /// The pending expiry, cancelled when the client comes back.
    expiry: Option<AbortHandle>,
    qos2: Qos2Received,
    granted: Granted,
}

/// How long a session outlives its last connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Clean session / clean start: it ends with the connection.
    Connection,
    /// MQTT 5: this many seconds (u32::MAX: never).
    Seconds(u32),
    /// MQTT 3.1.1 persistent session: until a clean session replaces it.
    Forever,
}

impl Lifetime {
    pub fn of(connect: &wire::Connect) -> Lifetime {
        // rumqttd refuses an empty client id without a clean start (no session to keep).
        if connect.client_id.is_empty() {
            return Lifetime::Connection;
        }
        match (connect.clean, connect.session_expiry) {
            (true, None | Some(0)) => Lifetime::Connection,
            (false, None) | (_, Some(u32::MAX)) => Lifetime::Forever,
            (_, Some(s)) => Lifetime::Seconds(s),
        }
    }
}

/// A client id whose session belongs to another identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken;

/// An open connection's claim on its session; hand it back with `Sessions::closed`.
pub struct Claim {
    client_id: String,
    lifetime: Lifetime,
    /// The session's QoS 2 publishes awaiting release.
    pub qos2: Qos2Received,
    /// The filters its clients were granted.
    pub granted: Granted,
    /// The session must start afresh in rumqttd (`end` it before relaying): it was another
    /// identity's until now, or an MQTT 5 clean start asks for a new session that outlives
    /// its connection, which rumqttd would take for the old one resumed.
    pub fresh: bool,
    /// Asked for with `late_relay` (the client has no will) and granted (no other connection of the client id is
    /// left for rumqttd to close, and rumqttd holds nothing of the session): notified when
    /// another connection takes the client id over.
    pub taken_over: Option<Arc<Notify>>,
    /// The session was there already (what CONNACK says when Sluice answers it).
    pub present: bool,
    /// Set when the connection's relay was opened.
    pub relayed: bool,
}

impl Claim {
    /// Whether the session outlives this connection in rumqttd.
    pub fn persistent(&self) -> bool {
        self.lifetime != Lifetime::Connection
    }

    /// MQTT 5: the client set another session expiry interval at DISCONNECT.
    pub fn set_expiry(&mut self, seconds: u32) {
        self.lifetime = match seconds {
            u32::MAX => Lifetime::Forever,
            s => Lifetime::Seconds(s),
        };
    }
}

impl Sessions {
    pub fn new(broker_v5: Option<SocketAddr>) -> Sessions {
        Sessions {
            broker_v5,
            live: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(1),
        }
    }

    fn live(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        // Nothing panics while holding it; a poisoned map is still consistent.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called before a connection's CONNECT goes to rumqttd: cancels a pending expiry and
    /// waits for the end of one under way, so the new connection never meets a half-ended
    /// session. A clean connection starts with no QoS 2 state or subscriptions. `Err` when the client id's
    /// session belongs to another identity, unless the client id is the new identity's own
    /// name (or empty, which only clean sessions use). Connections of the client id whose
    /// relay opens late are told they are taken over, and waited for.
    pub async fn opened(
        &self,
        client_id: &str,
        lifetime: Lifetime,
        owner: Option<&Arc<str>>,
        clean: bool,
        late_relay: bool,
    ) -> Result<Claim, Taken> {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let (ending, foreign) = {
            let mut live = self.live();
            let foreign = !client_id.is_empty()
                && live
                    .get(client_id)
                    .is_some_and(|s| s.owner.as_ref() != owner);
            if foreign && owner.is_none_or(|o| &**o != client_id) {
                return Err(Taken);
            }
            let s = live.entry(client_id.to_owned()).or_insert_with(|| Session {
                owner: owner.cloned(),
                connections: 0,
                late: Vec::new(),
                in_broker: false,
                persisted: false,
                closing: Arc::default(),
                generation,
                ending: Arc::default(),
                expiry: None,
                qos2: Qos2Received::default(),
                granted: Granted::default(),
            });
            s.connections += 1;
            s.generation = generation;
            if let Some(expiry) = s.expiry.take() {
                expiry.abort();
            }
            s.owner = owner.cloned();
            for old in &s.late {
                old.notify_one();
            }
            (s.ending.clone(), foreign)
        };
        // What the session is, once the connections taken over are gone (a relay one of
        // them opened is counted then) and an end under way is over.
        self.taken_over_gone(client_id).await;
        drop(ending.lock().await);
        let mut live = self.live();
        let Some(s) = live.get_mut(client_id) else {
            // Only `closed` removes an entry, and not while this connection counts in it.
            return Err(Taken);
        };
        let persistent = lifetime != Lifetime::Connection;
        let present = s.persisted && !clean && !foreign;
        let fresh = foreign || (s.in_broker && clean && persistent);
        s.persisted = persistent;
        if !present {
            s.qos2 = Qos2Received::default();
            s.granted = Granted::default();
        }
        // Alone, nothing is left for rumqttd to take over; with nothing of the session in
        // rumqttd (no relay of it opened since it was last ended there, so no subscription
        // and nothing queued) nothing there waits for the client: the relay may open late.
        // A clean start over a session rumqttd holds must reach rumqttd to end it.
        let subscribed = s.granted.lock().unwrap_or_else(|p| p.into_inner()).len() > 0;
        let late = late_relay
            && !client_id.is_empty()
            && s.connections == 1
            && !(s.in_broker || subscribed);
        let taken_over = late.then(|| {
            let notify = Arc::new(Notify::new());
            s.late.push(notify.clone());
            notify
        });
        s.in_broker |= !late;
        let (qos2, granted) = (s.qos2.clone(), s.granted.clone());
        drop(live);
        Ok(Claim {
            client_id: client_id.to_owned(),
            lifetime,
            qos2,
            granted,
            fresh,
            taken_over,
            present,
            relayed: false,
        })
    }

    /// Waits until the client id's connections whose relay opens late have closed (they
    /// were told to), for at most `END_TIMEOUT`.
    async fn taken_over_gone(&self, client_id: &str) {
        let deadline = tokio::time::Instant::now() + END_TIMEOUT;
        loop {
            let Some(closing) = self.live().get(client_id).map(|s| s.closing.clone()) else {
                return;
            };
            let closed = closing.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.live().get(client_id).is_none_or(|s| s.late.is_empty()) {
                return;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                tracing::warn!(client_id, "a connection taken over did not close in time");
                return;
            }
        }
    }

    /// Ends a client id's session in rumqttd (its subscriptions and queued messages) and
    /// forgets its QoS 2 state and grants; its connections, if any, go on. False when
    /// rumqttd did not answer: nothing is forgotten then.
    pub async fn end(&self, client_id: &str) -> bool {
        let Some(ending) = self.live().get(client_id).map(|s| s.ending.clone()) else {
            return true;
        };
        let _ending = ending.lock().await;
        let ended = match tokio::time::timeout(END_TIMEOUT, self.end_in_broker(client_id)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(client_id, error = %e, "could not end a session");
                false
            }
            Err(_) => {
                tracing::warn!(client_id, "ending a session timed out");
                false
            }
        };
        if let Some(s) = self.live().get_mut(client_id).filter(|_| ended) {
            s.qos2.lock().unwrap_or_else(|p| p.into_inner()).clear();
            s.granted.lock().unwrap_or_else(|p| p.into_inner()).clear();
            s.in_broker = false;
            s.persisted = false;
        }
        ended
    }

    /// Called when a connection ends. A clean session is forgotten; an MQTT 5 persistent
    /// session with a finite expiry is ended that many seconds later, unless its client is
    /// back by then; a 3.1.1 persistent session is kept.
    pub fn closed(self: &Arc<Self>, claim: Claim) {
        let mut live = self.live();
        let Some(s) = live.get_mut(&claim.client_id) else {
            return;
        };
        if let Some(mine) = &claim.taken_over {
            s.late.retain(|n| !Arc::ptr_eq(n, mine));
        }
        s.in_broker |= claim.relayed;
        s.closing.notify_waiters();
        s.connections -= 1;
        if s.connections > 0 {
            return;
        }
        match (claim.lifetime, self.broker_v5) {
            (Lifetime::Connection, _) => {
                live.remove(&claim.client_id);
            }
            (Lifetime::Seconds(expiry), Some(_)) => {
                let generation = s.generation;
                let sessions = self.clone();
                let client_id = claim.client_id;
                let task = tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(expiry.into())).await;
                    sessions.expire(&client_id, generation).await;
                });
                s.expiry = Some(task.abort_handle());
            }
            _ => {}
        }
    }

    async fn expire(&self, client_id: &str, generation: u64) {
        let unchanged = |live: &HashMap<String, Session>| {
            live.get(client_id)
                .is_some_and(|s| s.generation == generation && s.connections == 0)
        };
        let ending = {
            let live = self.live();
            if !unchanged(&live) {
                return;
            }
            live[client_id].ending.clone()
        };
        let _ending = ending.lock().await;
        // Checked again under the session's own lock: a connection (of either protocol
        // level) may have come since. One that comes now waits for this lock.
        {
            let mut live = self.live();
            if !unchanged(&live) {
                return;
            }
            if !live[client_id].in_broker {
                live.remove(client_id);
                return;
            }
        }
        match tokio::time::timeout(END_TIMEOUT, self.end_in_broker(client_id)).await {
            Ok(Ok(())) => tracing::debug!(client_id, "session expired"),
            Ok(Err(e)) => tracing::warn!(client_id, error = %e, "could not end an expired session"),
            Err(_) => tracing::warn!(client_id, "ending an expired session timed out"),
        }
        let mut live = self.live();
        if unchanged(&live) {
            live.remove(client_id);
        }
    }

    async fn end_in_broker(&self, client_id: &str) -> std::io::Result<()> {
        let Some(addr) = self.broker_v5 else {
            return Ok(());
        };
        let connect = wire::clean_start_v5(client_id).map_err(std::io::Error::other)?;
        let mut broker = TcpStream::connect(addr).await?;
        broker.write_all(&connect).await?;
        // The CONNACK: rumqttd has dropped the old session once it answers.
        let mut head = [0u8; 2];
        broker.read_exact(&mut head).await?;
        let mut disconnect = bytes::BytesMut::new();
        wire::encode_disconnect(&mut disconnect, wire::Reason::Success);
        broker.write_all(&disconnect).await?;
        Ok(())
    }

    /// Client ids Sluice holds state for (connected or persistent).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.live().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_returning_client_cancels_its_expiry_and_generations_never_repeat() {
        let sessions = Arc::new(Sessions::new(Some("127.0.0.1:1".parse().unwrap())));
        let first = sessions
            .opened("c", Lifetime::Seconds(3600), None, false, false)
            .await
            .unwrap();
        sessions.closed(first);
        let pending = sessions.live()["c"].expiry.clone().expect("expiry pending");
        let again = sessions
            .opened("c", Lifetime::Seconds(3600), None, false, false)
            .await
            .unwrap();
        tokio::task::yield_now().await;
        assert!(pending.is_finished(), "the old expiry was cancelled");
        let generation = sessions.live()["c"].generation;
        sessions.closed(again);
        // A clean connection forgets the session entirely; a new one gets a new generation.
        let clean = sessions
            .opened("c", Lifetime::Connection, None, true, false)
            .await
            .unwrap();
        assert!(sessions.live()["c"].generation > generation);
        sessions.closed(clean);
        assert_eq!(sessions.len(), 0);
    }

    #[tokio::test]
    async fn a_relay_opens_late_only_where_rumqttd_holds_nothing_of_the_session() {
        let sessions = Arc::new(Sessions::new(None));
        let late = |c: &Claim| c.taken_over.is_some();
        // Persistent, never relayed: late, and present the second time.
        let mut first = sessions
            .opened("p", Lifetime::Forever, None, false, true)
            .await
            .unwrap();
        assert!(late(&first) && !first.present);
        let taken = first.taken_over.clone().unwrap();
        // Taken over: told, and waited for.
        let closer = {
            let sessions = sessions.clone();
            tokio::spawn(async move {
                taken.notified().await;
                first.relayed = true;
                sessions.closed(first);
            })
        };
        let second = sessions
            .opened("p", Lifetime::Forever, None, false, true)
            .await
            .unwrap();
        closer.await.unwrap();
        assert!(second.present);
        assert!(
            !late(&second),
            "its relay was opened: rumqttd holds the session now"
        );
        sessions.closed(second);
        // A clean start must reach rumqttd to end the session there; after it, the client
        // id starts over.
        let clean = sessions
            .opened("p", Lifetime::Connection, None, true, true)
            .await
            .unwrap();
        assert!(!late(&clean) && !clean.present);
        sessions.closed(clean);
        let anew = sessions
            .opened("p", Lifetime::Forever, None, false, true)
            .await
            .unwrap();
        assert!(late(&anew) && !anew.present);
        sessions.closed(anew);
        // A will (no late relay asked for), or another connection still open: not late.
        let will = sessions
            .opened("w", Lifetime::Connection, None, true, false)
            .await
            .unwrap();
        assert!(!late(&will));
        sessions.closed(will);
        let a = sessions
            .opened("", Lifetime::Connection, None, true, true)
            .await
            .unwrap();
        assert!(!late(&a), "an empty client id is rumqttd's to fill in");
        sessions.closed(a);
    }

    #[tokio::test]
    async fn qos2_state_survives_a_persistent_reconnect_and_not_a_clean_one() {
        let sessions = Arc::new(Sessions::new(None));
        let a = sessions
            .opened("d", Lifetime::Forever, None, false, false)
            .await
            .unwrap();
        a.qos2
            .lock()
            .unwrap()
            .insert(5, tokio::sync::watch::channel(None).1);
        sessions.closed(a);
        let b = sessions
            .opened("d", Lifetime::Forever, None, false, false)
            .await
            .unwrap();
        assert!(b.qos2.lock().unwrap().contains_key(&5));
        sessions.closed(b);
        let c = sessions
            .opened("d", Lifetime::Connection, None, true, false)
            .await
            .unwrap();
        assert!(c.qos2.lock().unwrap().is_empty());
        sessions.closed(c);
    }

    #[tokio::test]
    async fn a_session_belongs_to_the_identity_that_opened_it() {
        let sessions = Arc::new(Sessions::new(None));
        let (a, b): (Arc<str>, Arc<str>) = ("dev-a".into(), "dev-b".into());
        let first = sessions
            .opened("c1", Lifetime::Forever, Some(&a), false, false)
            .await
            .unwrap();
        assert_eq!(
            sessions
                .opened("c1", Lifetime::Connection, Some(&b), true, false)
                .await
                .err(),
            Some(Taken)
        );
        assert_eq!(
            sessions
                .opened("c1", Lifetime::Connection, None, true, false)
                .await
                .err(),
            Some(Taken)
        );
        sessions.closed(first);
        // A persistent session stays bound after its connection ends.
        assert!(sessions
            .opened("c1", Lifetime::Forever, Some(&b), false, false)
            .await
            .is_err());
        let again = sessions
            .opened("c1", Lifetime::Connection, Some(&a), true, false)
            .await
            .unwrap();
        sessions.closed(again);
        // Ended by a clean session: the client id is free again.
        let other = sessions
            .opened("c1", Lifetime::Connection, Some(&b), true, false)
            .await
            .unwrap();
        sessions.closed(other);
    }
}
