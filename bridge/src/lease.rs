//! Which writer writes which partitions. Writers of one `writer.group_id` share the
//! readings partitions through a lease the database arbitrates: each renews its row in
//! `sluice_writers` every beat, a row not renewed for `writer.lease_ms` is a writer gone, and
//! the partitions are dealt round-robin over the live writers in name order, so every writer
//! computes the same split without talking to the others. A fixed `writer.partitions` opts
//! out. Kafka's own group protocol is not used: tansu never reassigns a dead member's
//! partitions, and the database already holds the offsets the writers resume from.

use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};
use rdkafka::consumer::{Consumer, StreamConsumer};
use tokio::sync::watch;

use crate::db;
use crate::settings::WriterSettings;

/// A readings topic and one of its partitions.
pub type Partition = (String, i32);

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

/// Keeps the writer's share of the partitions up to date on `share`: every beat it asks
/// Kafka for the topics' partitions (so added ones are picked up) and, in a shared group,
/// renews the lease and reads who else is alive. On `stop` it gives the lease up, so the
/// others take over at their next beat instead of after the lease.
pub struct Coordinator {
    settings: WriterSettings,
    member: String,
    consumer: Arc<StreamConsumer>,
    topics: Vec<String>,
    client: Option<tokio_postgres::Client>,
}

impl Coordinator {
    pub fn new(
        settings: WriterSettings,
        consumer: Arc<StreamConsumer>,
        topics: Vec<String>,
    ) -> Coordinator {
        Coordinator {
            member: member_name(),
            settings,
            consumer,
            topics,
            client: None,
        }
    }

    /// Publishes the share on `share` (None until the first is known) until `stop`.
    pub async fn run(
        mut self,
        share: watch::Sender<Option<Vec<Partition>>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let lease = Duration::from_millis(self.settings.lease_ms);
        // Five beats per lease: a late beat or two does not lose it.
        let beat = (lease / 5).max(Duration::from_millis(100));
        let mut partitions = Vec::new();
        let mut members = vec![self.member.clone()];
        let mut missing: Option<String> = None;
        let mut renewed = false;
        tracing::info!(member = %self.member, group = %self.settings.group_id, "writer joining its group");
        loop {
            match self.partitions().await {
                Ok(found) => {
                    partitions = found;
                    missing = None;
                }
                // Said once per spell, not every beat.
                Err(why) if missing.as_ref() != Some(&why) => {
                    tracing::warn!(topics = ?self.topics, "{why}; keeping the partitions known");
                    missing = Some(why);
                }
                Err(_) => {}
            }
            match self.settings.partitions.clone() {
                // Nothing to deal until Kafka has named the partitions once.
                _ if partitions.is_empty() => {}
                Some(fixed) => {
                    let mine = partitions.iter().filter(|(_, p)| fixed.contains(p));
                    publish(&share, mine.cloned().collect(), &members);
                }
                None => {
                    let deal = match self.renew(lease).await {
                        Ok(live) if renewed => {
                            members = live;
                            true
                        }
                        // Writers started together see each other from their second beat:
                        // waiting for it spares them taking everything for a moment.
                        Ok(_) => {
                            renewed = true;
                            false
                        }
                        Err(e) => {
                            // Keep writing what it has: the store cannot write either while
                            // the database is away, and the others may still count it in.
                            tracing::warn!(error = %e, "writer lease not renewed; retrying");
                            self.client = None;
                            renewed
                        }
                    };
                    if deal {
                        publish(
                            &share,
                            share_of(&partitions, &members, &self.member),
                            &members,
                        );
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(beat) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        if self.settings.partitions.is_none() {
            self.leave().await;
        }
    }

    /// Every partition of the readings topics, or why there are none.
    async fn partitions(&self) -> Result<Vec<Partition>, String> {
        let consumer = self.consumer.clone();
        let topics = self.topics.clone();
        let found =
            tokio::task::spawn_blocking(move || {
                let mut all = Vec::new();
                for topic in &topics {
                    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
                    all.extend(md.topics().iter().flat_map(|t| {
                        t.partitions().iter().map(|p| (t.name().to_owned(), p.id()))
                    }));
                }
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

/// This writer's share, counting it in even when its row is not visible yet (its first
/// renewal failed): it writes its share rather than nothing.
fn share_of(partitions: &[Partition], members: &[String], me: &str) -> Vec<Partition> {
    let mut members = members.to_vec();
    if !members.iter().any(|m| m == me) {
        members.push(me.to_owned());
    }
    share(partitions, &members, me)
}

/// Sends a changed share to the writer, and says so.
fn publish(
    share: &watch::Sender<Option<Vec<Partition>>>,
    mut mine: Vec<Partition>,
    members: &[String],
) {
    mine.sort();
    gauge!("sluice_writer_members").set(members.len() as f64);
    gauge!("sluice_writer_partitions").set(mine.len() as f64);
    share.send_if_modified(|current| {
        if current.as_ref() == Some(&mine) {
            return false;
        }
        counter!("sluice_writer_rebalances_total").increment(1);
        tracing::info!(members = ?members, partitions = ?mine, "writer's share of the partitions changed");
        *current = Some(mine);
        true
    });
}

/// Unique per process run, readable in logs: host, process id and start time.
fn member_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    let started = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f");
    format!("{host}:{}:{started}", std::process::id())
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

    #[test]
    fn a_writer_whose_row_is_missing_still_counts_itself_in() {
        assert_eq!(share_of(&parts(4), &[], "me"), parts(4));
        assert_eq!(share_of(&parts(4), &["a".into()], "me").len(), 2);
    }
}
