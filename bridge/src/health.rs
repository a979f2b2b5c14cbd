//! What `/health` reports: whether the producer has hit a fatal error, how long Kafka and
//! the database have been unreachable, and the state of TimescaleDB's jobs. Stages record
//! what they see; `http` reads it.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;

/// A dependency this long unreachable makes the process unhealthy.
pub const GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Health {
    producer_fatal: AtomicBool,
    kafka: Outage,
    database: Outage,
    /// One line per TimescaleDB job, for the body of `/health` (not a reason for 503:
    /// a late rollup is no reason to take the gateway out of service).
    storage_jobs: Mutex<Vec<String>>,
}

/// Since when (Unix ms) a dependency has been failing; 0 while it works.
#[derive(Debug, Default)]
struct Outage(AtomicI64);

impl Outage {
    fn failing(&self) {
        let now = Utc::now().timestamp_millis();
        let _ = self
            .0
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn working(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    fn down_for(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(
                (Utc::now().timestamp_millis() - since).max(0) as u64,
            )),
        }
    }
}

impl Health {
    pub fn producer_fatal(&self) {
        self.producer_fatal.store(true, Ordering::Relaxed);
    }

    pub fn kafka_failing(&self) {
        self.kafka.failing();
    }

    pub fn kafka_working(&self) {
        self.kafka.working();
    }

    pub fn kafka_down(&self) -> bool {
        self.kafka.down_for().is_some()
    }

    pub fn database_failing(&self) {
        self.database.failing();
    }

    pub fn database_working(&self) {
        self.database.working();
    }

    pub fn storage_jobs(&self, lines: Vec<String>) {
        *self.storage_jobs.lock().unwrap_or_else(|e| e.into_inner()) = lines;
    }

    /// What `/health` says beside its verdict.
    pub fn details(&self) -> Vec<String> {
        self.storage_jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Why the process is unhealthy, one line each; empty when it is healthy.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.producer_fatal.load(Ordering::Relaxed) {
            out.push("kafka producer hit a fatal error; restart sluice".to_owned());
        }
        for (what, outage) in [("kafka", &self.kafka), ("database", &self.database)] {
            if let Some(d) = outage.down_for().filter(|d| *d >= GRACE) {
                out.push(format!("{what} unreachable for {} s", d.as_secs()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_count_only_past_the_grace_period() {
        let h = Health::default();
        assert!(h.problems().is_empty());
        h.kafka_failing();
        assert!(h.problems().is_empty(), "just started failing");
        h.kafka
            .0
            .store(Utc::now().timestamp_millis() - 31_000, Ordering::Relaxed);
        h.kafka_failing(); // keeps the first failure's time
        assert_eq!(h.problems(), ["kafka unreachable for 31 s"]);
        h.kafka_working();
        h.producer_fatal();
        assert_eq!(h.problems().len(), 1);
    }
}
