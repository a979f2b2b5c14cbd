//! What each source address holds at once (MQTT connections; HTTP connections and
//! requests), so one address cannot take every place, and the open connections of a
//! listener kind in all. A source is an IPv4 address or an IPv6 /64 (`super::source`),
//! since one host usually holds a whole /64.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

#[derive(Default)]
pub struct Sources {
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One place held by a source, given back when dropped.
pub struct SourceSlot {
    sources: Arc<Sources>,
    source: IpAddr,
}

impl Sources {
    /// A place for `address`'s source, unless it holds `max` already (0: no cap).
    pub fn take(self: &Arc<Self>, address: IpAddr, max: usize) -> Option<SourceSlot> {
        let source = super::source(address);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(source).or_default();
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            sources: self.clone(),
            source,
        })
    }
}

/// Open connections, in all and per source.
#[derive(Default)]
pub struct Connections {
    total: AtomicUsize,
    sources: Arc<Sources>,
    /// Notified when the last connection closes.
    idle: Notify,
}

/// One connection's place in `Connections`, given back when dropped.
pub struct Open {
    connections: Arc<Connections>,
    _source: SourceSlot,
}

impl Connections {
    /// A place for a new connection from `address`, or why not (a metric label):
    /// `max_total` are open, or its source holds `max_each` (0: no cap per source).
    pub fn admit(
        self: &Arc<Self>,
        address: IpAddr,
        max_total: usize,
        max_each: usize,
    ) -> Result<Open, &'static str> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.closed();
            return Err("total");
        }
        let Some(source) = self.sources.take(address, max_each) else {
            self.closed();
            return Err("per_address");
        };
        Ok(Open {
            connections: self.clone(),
            _source: source,
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Resolves once no connection is open; enable it, then check `open`, so the wake-up
    /// is not missed.
    pub fn idle(&self) -> Notified<'_> {
        self.idle.notified()
    }

    fn closed(&self) {
        if self.total.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.connections.closed();
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut held = self.sources.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_holds_at_most_its_cap_and_gives_places_back() {
        let sources = Arc::new(Sources::default());
        let ip = |s: &str| s.parse::<IpAddr>().expect("address");
        let a = sources.take(ip("10.0.0.1"), 2).expect("first");
        let b = sources.take(ip("10.0.0.1"), 2).expect("second");
        assert!(sources.take(ip("10.0.0.1"), 2).is_none(), "over the cap");
        assert!(sources.take(ip("10.0.0.2"), 2).is_some(), "another source");
        let v6 = sources.take(ip("2001:db8::1"), 1).expect("v6");
        assert!(sources.take(ip("2001:db8::2"), 1).is_none(), "the same /64");
        drop((a, v6));
        assert!(sources.take(ip("10.0.0.1"), 2).is_some(), "given back");
        drop(b);
        assert!(sources.take(ip("10.0.0.9"), 0).is_some(), "0: no cap");
    }

    #[test]
    fn connections_are_capped_in_all_and_per_source() {
        let open = Arc::new(Connections::default());
        let ip = |s: &str| s.parse::<IpAddr>().expect("address");
        let a = open.admit(ip("10.0.0.1"), 3, 1).expect("first");
        assert_eq!(open.admit(ip("10.0.0.1"), 3, 1).err(), Some("per_address"));
        let b = open.admit(ip("10.0.0.2"), 3, 1).expect("another source");
        let c = open.admit(ip("10.0.0.3"), 3, 1).expect("third");
        assert_eq!(open.admit(ip("10.0.0.4"), 3, 1).err(), Some("total"));
        assert_eq!(open.open(), 3, "refusals give their place back");
        drop((a, b, c));
        assert_eq!(open.open(), 0);
    }
}
