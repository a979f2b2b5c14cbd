//! What each source address holds at once (MQTT connections; HTTP connections and
//! requests), so one address cannot take every place. A source is an IPv4 address or an
//! IPv6 /64 (`super::source`), since one host usually holds a whole /64.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

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
            if *n == 0 {
                held.remove(&source);
            }
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            sources: self.clone(),
            source,
        })
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
}
