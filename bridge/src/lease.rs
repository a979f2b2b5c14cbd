//! Which writer writes which partitions. Writers of one `writer.group_id` share the
//! readings partitions through a lease the database arbitrates: each renews its row in
//! `sluice_writers` every beat, a row not renewed for `writer.lease_ms` is a writer gone, and
//! the partitions are dealt round-robin over the live writers in name order, so every writer
//! computes the same split without talking to the others. `writer.coordination = "kafka"`
//! lets Kafka's group protocol deal them instead (tansu never reassigns a dead member's
//! partitions, hence not the default); a fixed `writer.partitions` opts out. Either way the
//! writer only learns its share here: it reads from the offsets in the database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::sync::watch;

use crate::db;
use crate::health::Health;
use crate::settings::WriterSettings;

/// A readings topic and one of its partitions.
pub type Partition = (String, i32);

/// Where the writer's share goes: None until the first is known.
pub type Share = watch::Sender<Option<Vec<Partition>>>;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("database: {}", db::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
}

/// This writer's share: the `i`-th of the sorted `partitions` goes to the member at `i` mod
/// the number of members (sorted too). Empty when `me` is not among `members`.
pub fn share(partitions: &[Partition], members: &[String], me: &str) -> Vec<Partition> {
    let mut partitions = partitions.to_vec();
    partitions.sort();
    let mut members = members.to_vec();
    members.sort();
    let Some(rank) = members.iter().position(|m| m == me) else {
        return Vec::new();
    };
    partitions
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % members.len() == rank)
        .map(|(_, p)| p)
        .collect()
}

/// Keeps the writer's share of the partitions up to date on `share`: a task asks Kafka for
/// the topics' partitions every beat (so added ones are picked up) and, in a shared group,
/// the coordinator renews the lease every beat and reads who else is alive. On `stop` it
/// gives the lease up, so the others take over at their next beat instead of after the lease.
pub struct Coordinator {
    settings: WriterSettings,
    member: String,
    consumer: Arc<StreamConsumer>,
    topics: Vec<String>,
    health: Arc<Health>,
    client: Option<tokio_postgres::Client>,
}

impl Coordinator {
    pub fn new(
        settings: WriterSettings,
        member: String,
        consumer: Arc<StreamConsumer>,
        topics: Vec<String>,
        health: Arc<Health>,
    ) -> Coordinator {
        Coordinator {
            member,
            settings,
            consumer,
            topics,
            health,
            client: None,
        }
    }

    /// Publishes the share on `out` (None until the first is known) until `stop`.
    pub async fn run(mut self, out: Share, mut stop: watch::Receiver<bool>) {
        let lease = Duration::from_millis(self.settings.lease_ms);
        // Five beats per lease: a late beat or two does not lose it.
        let beat = lease / 5;
        // Kafka is asked in a task of its own: a slow Kafka must not hold the lease up.
        let (found, partitions) = watch::channel(Vec::new());
        let asking = tokio::spawn(watch_partitions(
            self.consumer.clone(),
            self.topics.clone(),
            beat,
            found,
        ));
        let fixed = self.settings.partitions.clone();
        let mut renewed_at: Option<Instant> = None;
        // The others take this writer's share a lease after the database stamped its last
        // renewal, which was after it was asked for: it gives the share up a beat before a
        // lease from the asking, until it holds the lease again, and a renewal that hangs
        // is cut off then too. None before the first renewal.
        let until_give_up = |renewed_at: Option<Instant>| {
            renewed_at.map(|asked| (asked + lease - beat).saturating_duration_since(Instant::now()))
        };
        let mut failing = false;
        tracing::info!(member = %self.member, group = %self.settings.group_id, "writer joining its group");
        loop {
            let known = partitions.borrow().clone();
            match &fixed {
                // Nothing to deal until Kafka has named the partitions once.
                _ if known.is_empty() => {}
                Some(fixed) => {
                    let mine = known.into_iter().filter(|(_, p)| fixed.contains(p));
                    publish(&out, mine.collect(), None);
                }
                None => {
                    let left = until_give_up(renewed_at);
                    if left.is_some_and(|l| l.is_zero()) {
                        publish(&out, Vec::new(), None);
                    }
                    let bound = match left {
                        Some(l) if !l.is_zero() => l.min(lease / 2),
                        _ => lease / 2,
                    };
                    let asked = Instant::now();
                    match tokio::time::timeout(bound, self.renew(lease)).await {
                        Ok(Ok(members)) => {
                            self.health.lease_working();
                            failing = false;
                            // At start, and after a gap longer than the lease, the others'
                            // rows may be stale or missing: dealing waits a beat for them.
                            let settled = renewed_at.is_some_and(|t| t.elapsed() < lease);
                            renewed_at = Some(asked);
                            if settled {
                                let mine = share(&known, &members, &self.member);
                                publish(&out, mine, Some(&members));
                            }
                        }
                        failed => {
                            let why = match failed {
                                Ok(Err(e)) => e.to_string(),
                                _ => format!("no answer within {bound:?}"),
                            };
                            if !failing {
                                tracing::warn!(error = %why, "writer lease not renewed; retrying every beat");
                            }
                            failing = true;
                            self.health.lease_failing();
                            self.client = None;
                            if until_give_up(renewed_at).is_none_or(|l| l.is_zero()) {
                                publish(&out, Vec::new(), None);
                            }
                        }
                    }
                }
            }
            // While failing, the next pass comes no later than the moment to give up.
            let nap = match until_give_up(renewed_at) {
                Some(left) if failing && !left.is_zero() => beat.min(left),
                _ => beat,
            };
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        asking.abort();
        if fixed.is_none() {
            // Bounded: a database that does not answer costs the others the lease, not
            // this process its stop.
            if tokio::time::timeout(lease / 2, self.leave()).await.is_err() {
                tracing::warn!("writer lease not given up in time; the others wait it out");
            }
        }
    }

    async fn client(&mut self) -> Result<&tokio_postgres::Client, LeaseError> {
        if self.client.is_none() {
            self.client = Some(db::connect(&self.settings.database_url).await?);
        }
        Ok(self.client.as_ref().expect("just connected"))
    }

    /// Renews this writer's row and returns the group's live members, this one included.
    /// The database's clock decides who is alive, so the writers' clocks need not agree.
    async fn renew(&mut self, lease: Duration) -> Result<Vec<String>, LeaseError> {
        let group = self.settings.group_id.clone();
        let member = self.member.clone();
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO sluice_writers (group_id, member, lease) \
                 VALUES ($1, $2, make_interval(secs => $3)) \
                 ON CONFLICT (group_id, member) DO UPDATE SET renewed_at = now()",
                &[&group, &member, &lease.as_secs_f64()],
            )
            .await?;
        // Rows of writers long gone are cleared, by whichever writer beats first.
        let rows = client
            .query(
                "WITH gone AS (DELETE FROM sluice_writers WHERE group_id = $1 \
                   AND renewed_at < now() - lease * 100) \
                 SELECT member FROM sluice_writers WHERE group_id = $1 \
                   AND renewed_at >= now() - lease ORDER BY member",
                &[&group],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn leave(&mut self) {
        let (group, member) = (self.settings.group_id.clone(), self.member.clone());
        let left = match self.client().await {
            Ok(client) => client
                .execute(
                    "DELETE FROM sluice_writers WHERE group_id = $1 AND member = $2",
                    &[&group, &member],
                )
                .await
                .map_err(LeaseError::from),
            Err(e) => Err(e),
        };
        match left {
            Ok(_) => tracing::info!(member = %member, "writer left its group"),
            Err(e) => {
                tracing::warn!(error = %e, "writer lease not given up; the others wait it out")
            }
        }
    }
}

/// Every beat, the partitions of `topics` as Kafka names them, on `found`; while Kafka does
/// not answer, the last ones known stay.
async fn watch_partitions(
    consumer: Arc<StreamConsumer>,
    topics: Vec<String>,
    beat: Duration,
    found: watch::Sender<Vec<Partition>>,
) {
    let mut missing: Option<String> = None;
    loop {
        match partitions(consumer.clone(), topics.clone()).await {
            Ok(all) => {
                missing = None;
                found.send_if_modified(|known| {
                    let changed = *known != all;
                    *known = all;
                    changed
                });
            }
            // Said once per spell, not every beat.
            Err(why) if missing.as_ref() != Some(&why) => {
                tracing::warn!(topics = ?topics, "{why}; keeping the partitions known");
                missing = Some(why);
            }
            Err(_) => {}
        }
        tokio::time::sleep(beat).await;
    }
}

/// Every partition of `topics`, sorted, or why there are none.
async fn partitions(
    consumer: Arc<StreamConsumer>,
    topics: Vec<String>,
) -> Result<Vec<Partition>, String> {
    let found = tokio::task::spawn_blocking(move || {
        let mut all = Vec::new();
        for topic in &topics {
            let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
            all.extend(
                md.topics()
                    .iter()
                    .flat_map(|t| t.partitions().iter().map(|p| (t.name().to_owned(), p.id()))),
            );
        }
        all.sort();
        Ok::<_, rdkafka::error::KafkaError>(all)
    })
    .await;
    match found {
        Ok(Ok(all)) if !all.is_empty() => Ok(all),
        Ok(Ok(_)) => Err("the readings topics have no partitions yet".to_owned()),
        Ok(Err(e)) => Err(format!("kafka metadata unavailable: {e}")),
        Err(e) => Err(format!("kafka metadata task failed: {e}")),
    }
}

/// Sends a changed share to the writer, and says so; `members` in a shared group.
pub(crate) fn publish(out: &Share, mine: Vec<Partition>, members: Option<&[String]>) {
    if let Some(members) = members {
        gauge!("sluice_writer_members").set(members.len() as f64);
    }
    gauge!("sluice_writer_partitions").set(mine.len() as f64);
    out.send_if_modified(|current| {
        if current.as_ref() == Some(&mine) {
            return false;
        }
        counter!("sluice_writer_rebalances_total").increment(1);
        tracing::info!(members = ?members, partitions = ?mine, "writer's share of the partitions changed");
        *current = Some(mine);
        true
    });
}

/// Unique per process run, readable in logs: host, process id, start time and a random
/// part (containers often share a host name and run as pid 1).
pub fn member_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    let started = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f");
    // RandomState is seeded from the operating system's randomness.
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!(
        "{host}:{}:{started}:{:04x}",
        std::process::id(),
        random & 0xffff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(n: i32) -> Vec<Partition> {
        (0..n).map(|p| ("t".to_owned(), p)).collect()
    }

    #[test]
    fn every_partition_goes_to_exactly_one_member() {
        let members: Vec<String> = ["b", "a", "c"].map(String::from).to_vec();
        let shares: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|m| share(&parts(12), &members, m))
            .collect();
        assert!(shares.iter().all(|s| s.len() == 4));
        let mut all: Vec<_> = shares.concat();
        all.sort();
        assert_eq!(all, parts(12));
        assert_eq!(share(&parts(12), &members, "d"), Vec::<Partition>::new());
    }

    #[test]
    fn the_split_does_not_depend_on_the_order_members_are_listed_in() {
        let one = share(&parts(5), &["x".into(), "y".into()], "y");
        let two = share(&parts(5), &["y".into(), "x".into()], "y");
        assert_eq!(one, two);
        assert_eq!(one, vec![("t".to_owned(), 1), ("t".to_owned(), 3)]);
    }
}
