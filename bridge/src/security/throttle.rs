//! Slows down password guessing: logins from a source address that failed many times
//! lately wait longer and longer before they are checked. An attempt counts as a failure
//! from the moment it starts, so a burst of simultaneous guesses is slowed too.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed logins from one source address past this many are slowed down.
const FREE_FAILURES: u32 = 5;
/// Longest a login from such an address waits before it is checked.
const MAX_PENALTY: Duration = Duration::from_secs(5);
/// An address's failures are forgotten this long after its last one.
const FORGET_FAILURES: Duration = Duration::from_secs(600);
/// Addresses remembered at most; past it, new addresses are not tracked until old ones
/// are forgotten (an attacker with many addresses cannot wipe the others' records).
const MAX_ADDRESSES: usize = 100_000;

#[derive(Default)]
pub struct LoginThrottle {
    failures: Mutex<HashMap<IpAddr, Failures>>,
}

struct Failures {
    count: u32,
    last: Instant,
}

impl LoginThrottle {
    /// Records the start of a login from `address` (as a failure until `succeeded`), and
    /// says how long it must wait: nothing until `FREE_FAILURES`, then doubling up to
    /// `MAX_PENALTY`.
    pub fn attempt(&self, address: IpAddr) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if failures.len() >= MAX_ADDRESSES && !failures.contains_key(&address) {
            failures.retain(|_, f| now.duration_since(f.last) < FORGET_FAILURES);
            if failures.len() >= MAX_ADDRESSES {
                return MAX_PENALTY;
            }
        }
        let f = failures.entry(address).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.duration_since(f.last) >= FORGET_FAILURES {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        match f.count.checked_sub(FREE_FAILURES + 1) {
            Some(doublings) => {
                (Duration::from_millis(100) * (1 << doublings.min(10))).min(MAX_PENALTY)
            }
            None => Duration::ZERO,
        }
    }

    /// The login from `address` succeeded: it does not count against the address.
    pub fn succeeded(&self, address: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = failures.get_mut(&address) {
            f.count = f.count.saturating_sub(1);
            if f.count == 0 {
                failures.remove(&address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_from_one_address_are_slowed_and_successes_are_not() {
        let t = LoginThrottle::default();
        let (bad, good): (IpAddr, IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let waits: Vec<Duration> = (0..9).map(|_| t.attempt(bad)).collect();
        assert_eq!(&waits[..5], &[Duration::ZERO; 5]);
        assert_eq!(waits[5], Duration::from_millis(100));
        assert_eq!(waits[8], Duration::from_millis(800));
        assert!((0..50).map(|_| t.attempt(bad)).all(|w| w <= MAX_PENALTY));
        for _ in 0..20 {
            assert_eq!(t.attempt(good), Duration::ZERO);
            t.succeeded(good);
        }
    }
}
