//! Rate limits: publishes and bytes per second per identity, all its connections together,
//! and new connections per second per listener. Over a limit the caller stops reading the
//! socket for the time it is told, so the client slows down and its neighbours do not notice.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};

use crate::settings::IngressSettings;

/// Whose rate a publish counts against: an identity, all its connections together, or an
/// anonymous client by its client id, or an anonymous HTTP sender by its source address
/// (never the same bucket as an identity's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    Identity(Arc<str>),
    Anonymous(Arc<str>),
    Address(IpAddr),
}

/// Why readings may not go on now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// Over the rate: try again after this long.
    Wait(Duration),
    /// More messages at once than the burst: never in one go.
    Never,
}

/// Per-identity publish limits.
pub struct Rates {
    messages: Option<DefaultKeyedRateLimiter<RateKey>>,
    bytes: Option<DefaultKeyedRateLimiter<RateKey>>,
}

fn quota(per_second: u32, burst: u32, at_least: usize) -> Option<Quota> {
    let rate = NonZeroU32::new(per_second)?;
    let burst = if burst == 0 {
        per_second.max(u32::try_from(at_least).unwrap_or(u32::MAX))
    } else {
        burst
    };
    Some(Quota::per_second(rate).allow_burst(NonZeroU32::new(burst).unwrap_or(rate)))
}

impl Rates {
    pub fn new(s: &IngressSettings) -> Rates {
        let messages = quota(s.max_messages_per_second, s.burst_messages, 1);
        // A burst always holds the largest packet, or that packet could never pass.
        let bytes = quota(s.max_bytes_per_second, s.burst_bytes, s.max_packet_size);
        Rates {
            messages: messages.map(DefaultKeyedRateLimiter::keyed),
            bytes: bytes.map(DefaultKeyedRateLimiter::keyed),
        }
    }

    /// `None`: the publish of `bytes` may go on now. `Some(wait)`: the identity is over
    /// its rate; try again after `wait`.
    pub fn check(&self, key: &RateKey, bytes: usize) -> Option<Duration> {
        match self.check_all(key, 1, bytes) {
            Err(Over::Wait(wait)) => Some(wait),
            _ => None,
        }
    }

    /// `messages` readings of `bytes` in all (an HTTP request): each limit takes them all
    /// or none.
    pub fn check_all(&self, key: &RateKey, messages: usize, bytes: usize) -> Result<(), Over> {
        // The clock is read only when a limit is hit: this runs on every publish.
        if let (Some(limiter), Some(n)) = (&self.messages, count(messages)) {
            match limiter.check_key_n(key, n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    return Err(Over::Wait(not_until.wait_time_from(limiter.clock().now())))
                }
                Err(_) => return Err(Over::Never),
            }
        }
        if let (Some(limiter), Some(n)) = (&self.bytes, count(bytes)) {
            match limiter.check_key_n(key, n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => {
                    return Err(Over::Wait(not_until.wait_time_from(limiter.clock().now())))
                }
                // One packet passes (settings keep bursts above the packet size); a batch
                // larger than the burst would dodge the limit.
                Err(_) if messages > 1 => return Err(Over::Never),
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Forgets identities whose buckets are full again, so the map holds only the busy.
    pub fn forget_idle(&self) {
        for limiter in [&self.messages, &self.bytes].into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

fn count(n: usize) -> Option<NonZeroU32> {
    NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX))
}

/// New connections per second on one listener.
pub struct ConnectRate(Option<DefaultDirectRateLimiter>);

impl ConnectRate {
    pub fn new(per_second: u32) -> ConnectRate {
        ConnectRate(quota(per_second, 0, 1).map(DefaultDirectRateLimiter::direct))
    }

    pub fn allows(&self) -> bool {
        self.0.as_ref().is_none_or(|l| l.check().is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_over_its_rate_waits_and_others_do_not() {
        let settings = |m: u32| {
            let text = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../broker.toml"),
            )
            .expect("broker.toml");
            let mut v: toml::Value = toml::from_str(&text).expect("toml");
            let ingress = v
                .get_mut("ingress")
                .and_then(|i| i.as_table_mut())
                .expect("ingress");
            ingress.insert("max_messages_per_second".into(), (m as i64).into());
            ingress.insert("burst_messages".into(), 3.into());
            let s: IngressSettings = ingress.clone().try_into().expect("settings");
            s
        };
        let rates = Rates::new(&settings(10));
        let a = RateKey::Identity("a".into());
        let b = RateKey::Anonymous("a".into());
        for _ in 0..3 {
            assert_eq!(rates.check(&a, 10), None, "within the burst");
        }
        let wait = rates.check(&a, 10).expect("over the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert_eq!(
            rates.check(&b, 10),
            None,
            "an anonymous client id of the same name is not slowed"
        );
        let c = RateKey::Address("10.0.0.1".parse().expect("address"));
        assert_eq!(
            rates.check_all(&c, 4, 10),
            Err(Over::Never),
            "over the burst"
        );
        assert_eq!(
            rates.check_all(&c, 3, 10),
            Ok(()),
            "all of the burst at once"
        );
        assert!(matches!(rates.check_all(&c, 1, 10), Err(Over::Wait(_))));
        let none = Rates::new(&settings(0));
        for _ in 0..1000 {
            assert_eq!(none.check(&a, 1 << 20), None);
        }
        assert!(ConnectRate::new(0).allows());
        let c = ConnectRate::new(2);
        assert!(c.allows() && c.allows() && !c.allows());
    }
}
