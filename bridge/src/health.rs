//! What the health checks report: whether the producer has hit a fatal error, whether and
//! how long Kafka and the database have been unreachable, whether the process is still
//! starting or already stopping, and the state of TimescaleDB's jobs. Stages record what
//! they see; `http` reads it as `/health`, `/health/live` and `/health/ready`.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::Utc;

/// A dependency this long unreachable makes the process unhealthy (`/health`; readiness
/// does not wait).
pub const GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub struct Health {
    producer_fatal: AtomicBool,
    kafka: Outage,
    database: Outage,
    /// The writer's lease, renewed on a connection of its own: apart from `database`, so
    /// that a lease renewed does not hide batches that keep failing.
    lease: Outage,
    /// Roles (ingress, writer) not yet serving: the process is not ready until they are.
    starting: AtomicUsize,
    /// Set on SIGTERM: a draining process takes no new work.
    stopping: AtomicBool,
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

    pub fn lease_failing(&self) {
        self.lease.failing();
    }

    pub fn lease_working(&self) {
        self.lease.working();
    }

    /// The process has `roles` roles to start before it is ready.
    pub fn starting(&self, roles: usize) {
        self.starting.store(roles, Ordering::Relaxed);
    }

    /// One role is serving.
    pub fn started(&self) {
        let _ = self
            .starting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// The process is stopping (draining connections, flushing, committing).
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
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

    /// Why the process is unhealthy (`/health`, the older combined check), one line each;
    /// empty when it is healthy. An outage counts once it has lasted `GRACE`.
    pub fn problems(&self) -> Vec<String> {
        let mut out = self.dead();
        out.extend(self.outages(GRACE));
        out
    }

    /// Why the process must be restarted (liveness), one line each; empty while waiting
    /// can still mend it. Only a fatal producer error is such a state: the other failures
    /// nothing mends (the embedded broker stopping, the writer failing for good, a bad
    /// configuration) end the process itself.
    pub fn dead(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.producer_fatal.load(Ordering::Relaxed) {
            out.push("kafka producer hit a fatal error; restart sluice".to_owned());
        }
        out
    }

    /// Why the process should get no new work now (readiness), one line each; empty when
    /// it is ready. An outage counts the moment it is seen, and stops counting the moment
    /// the dependency answers again.
    pub fn not_ready(&self) -> Vec<String> {
        let mut out = self.dead();
        if self.starting.load(Ordering::Relaxed) > 0 {
            out.push("starting".to_owned());
        }
        if self.stopping.load(Ordering::Relaxed) {
            out.push("stopping: draining connections".to_owned());
        }
        out.extend(self.outages(Duration::ZERO));
        out
    }

    /// A line per dependency unreachable for at least `past`.
    fn outages(&self, past: Duration) -> Vec<String> {
        [
            ("kafka", &self.kafka),
            ("database", &self.database),
            ("database (writer lease)", &self.lease),
        ]
        .into_iter()
        .filter_map(|(what, outage)| {
            let d = outage.down_for().filter(|d| *d >= past)?;
            Some(format!("{what} unreachable for {} s", d.as_secs()))
        })
        .collect()
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

    #[test]
    fn readiness_follows_dependencies_at_once() {
        let h = Health::default();
        assert!(h.not_ready().is_empty());
        h.kafka_failing();
        assert_eq!(h.not_ready(), ["kafka unreachable for 0 s"]);
        assert!(
            h.problems().is_empty(),
            "/health still waits for the grace period"
        );
        h.database_failing();
        assert_eq!(h.not_ready().len(), 2);
        h.kafka_working();
        h.database_working();
        assert!(h.not_ready().is_empty(), "ready again once both answer");
        assert!(h.dead().is_empty(), "outages never make the process dead");
    }

    #[test]
    fn readiness_waits_for_every_role_and_ends_when_stopping() {
        let h = Health::default();
        h.starting(2);
        assert_eq!(h.not_ready(), ["starting"]);
        h.started();
        assert_eq!(h.not_ready(), ["starting"]);
        h.started();
        h.started(); // one too many changes nothing
        assert!(h.not_ready().is_empty());
        h.stopping();
        assert_eq!(h.not_ready(), ["stopping: draining connections"]);
        assert!(h.dead().is_empty() && h.problems().is_empty());
    }

    #[test]
    fn a_fatal_producer_error_is_dead_and_not_ready() {
        let h = Health::default();
        h.producer_fatal();
        assert_eq!(h.dead().len(), 1);
        assert_eq!(h.not_ready(), h.dead());
        assert_eq!(h.problems(), h.dead());
    }
}
