//! Receipt times of each client id's recent QoS 1 and 2 publishes. A reading without a
//! timestamp takes the time Sluice received it; a retransmission (DUP, same packet id and
//! payload) gets the first receipt's time instead, so it is the same row, written once.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// How long a client id's receipts are kept after its last publish: a device resends what
/// it was not acknowledged for when it reconnects, well within this.
const KEPT_FOR: Duration = Duration::from_secs(15 * 60);

/// Publishes looked at between sweeps of client ids gone quiet.
const SWEEP_EVERY: u32 = 4096;

pub struct Receipts {
    /// Receipts remembered per client id: enough for every publish that can be waiting for
    /// its acknowledgement at once (the per-connection in-flight limit).
    per_client: usize,
    /// Client ids remembered at most; past it a new client id's receipts are not kept
    /// (its timeless resends become new rows) until quiet ones are swept.
    clients: usize,
    hasher: RandomState,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    clients: HashMap<String, Recent>,
    since_sweep: u32,
}

impl Default for Recent {
    fn default() -> Recent {
        Recent {
            last: Instant::now(),
            publishes: VecDeque::new(),
        }
    }
}

struct Recent {
    last: Instant,
    /// (packet id, payload hash, received at), oldest first.
    publishes: VecDeque<(u16, u64, DateTime<Utc>)>,
}

impl Receipts {
    pub fn new(per_client: usize, clients: usize) -> Receipts {
        Receipts {
            per_client: per_client.clamp(1, 65_535),
            clients,
            hasher: RandomState::new(),
            state: Mutex::default(),
        }
    }

    /// The receipt time of a publish: `now`, unless it is a retransmission of the last
    /// one received with its packet id (DUP set, same payload), then that one's.
    pub fn stamp(
        &self,
        client_id: &str,
        pkid: u16,
        dup: bool,
        payload: &[u8],
        now: DateTime<Utc>,
    ) -> DateTime<Utc> {
        let hash = self.hasher.hash_one(payload);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.since_sweep += 1;
        if state.since_sweep >= SWEEP_EVERY {
            state.since_sweep = 0;
            state.clients.retain(|_, r| r.last.elapsed() < KEPT_FOR);
        }
        if !state.clients.contains_key(client_id) {
            if state.clients.len() >= self.clients {
                return now;
            }
            state
                .clients
                .insert(client_id.to_owned(), Recent::default());
        }
        let Some(recent) = state.clients.get_mut(client_id) else {
            return now;
        };
        recent.last = Instant::now();
        // Only a DUP can be a retransmission: the others need no search.
        let last = dup
            .then(|| recent.publishes.iter().rev().find(|(p, _, _)| *p == pkid))
            .flatten();
        match last {
            Some(&(_, h, at)) if h == hash => at,
            _ => {
                if recent.publishes.len() >= self.per_client {
                    recent.publishes.pop_front();
                }
                recent.publishes.push_back((pkid, hash, now));
                now
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retransmission_gets_the_first_receipt_time() {
        let r = Receipts::new(2, 2);
        let t = |s| DateTime::from_timestamp(s, 0).expect("time");
        assert_eq!(r.stamp("a", 1, false, b"x", t(10)), t(10));
        // Same id and payload, resent: the first time. Not marked DUP: a new publish.
        assert_eq!(r.stamp("a", 1, true, b"x", t(20)), t(10));
        assert_eq!(r.stamp("a", 1, false, b"x", t(30)), t(30));
        // Another payload, another client id: new.
        assert_eq!(r.stamp("a", 1, true, b"y", t(40)), t(40));
        assert_eq!(r.stamp("b", 1, true, b"x", t(50)), t(50));
        // Only the last `per_client` are remembered.
        assert_eq!(r.stamp("a", 2, false, b"z", t(60)), t(60));
        assert_eq!(r.stamp("a", 1, true, b"x", t(70)), t(70));
        // Only the last publish with a packet id is matched.
        assert_eq!(r.stamp("a", 2, false, b"w", t(80)), t(80));
        assert_eq!(r.stamp("a", 2, true, b"z", t(90)), t(90));
        // Past `clients` client ids, a new one is not remembered.
        assert_eq!(r.stamp("c", 1, false, b"x", t(100)), t(100));
        assert_eq!(r.stamp("c", 1, true, b"x", t(110)), t(110));
    }
}
