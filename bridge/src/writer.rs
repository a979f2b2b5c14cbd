//! Writer: turns Kafka records into `readings` rows, exactly once. Two tasks: one fetches
//! and decodes records into a batch, the other writes batches; the fetcher hands its batch
//! over whenever the store is free, so batches stay small under light load and grow with
//! the backlog. Each batch is one transaction: the rows, and the next Kafka offsets in
//! `sluice_offsets`. The database is the source of truth for progress: the writer assigns
//! itself its share of the partitions (`lease`) at the offsets stored there, and again
//! whenever the share changes. The anomaly detector judges each
//! batch once, as it is taken; its anomalies go into the same transaction and, once that
//! is committed, to Kafka.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use metrics::{counter, gauge, histogram};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use crate::anomaly::{Anomaly, Detector, Publisher};
use crate::db;
use crate::health::Health;
use crate::kafka_group::KafkaGroup;
use crate::lease::{member_name, Coordinator, Partition, Share};
use crate::produce::client_config;
use crate::record::{Reading, Record};
use crate::settings::{AnomalySettings, Coordination, KafkaSettings, WriterSettings};

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("database: {}", db::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the writer's {0} task ended")]
    TaskEnded(&'static str),
}

/// One row of `readings`, as COPY sends it.
struct Row {
    device_id: String,
    received_at: DateTime<Utc>,
    reading: Reading,
}

/// Rows plus the Kafka position they bring each partition to.
#[derive(Default)]
struct Batch {
    rows: Vec<Row>,
    next_offsets: HashMap<Partition, i64>,
    records: usize,
    bytes: usize,
}

pub struct Writer {
    settings: WriterSettings,
    consumer: Arc<StreamConsumer>,
    /// This writer's name in its group, and where its share arrives.
    member: String,
    share: (Share, watch::Receiver<Option<Vec<Partition>>>),
    /// The member of Kafka's group that deals the share, with `coordination = "kafka"`.
    group: Option<KafkaGroup>,
    topics: Vec<String>,
    anomalies: Option<Anomalies>,
}

/// The detector and where its findings go to, when `anomalies.enabled`.
struct Anomalies {
    detector: Detector,
    publisher: Arc<Publisher>,
    /// How long a graceful stop waits for the publisher: `kafka.delivery_timeout_ms`, after
    /// which librdkafka gives a record up anyway.
    flush_timeout: Duration,
}

impl Writer {
    pub fn new(
        settings: WriterSettings,
        anomalies: &AnomalySettings,
        kafka: &KafkaSettings,
        topics: &[&str],
    ) -> Result<Writer, WriterError> {
        // The group id names the progress in `sluice_offsets` and the lease (and Kafka's
        // offset hint). This consumer never joins the group: it is assigned its share (see
        // `lease`) at the offsets in the database.
        let mut config = client_config(kafka);
        let member = member_name();
        let share = watch::channel(None);
        // Only the coordinator's senders may keep the share open: the writer ends when they go.
        let group = match settings.coordination {
            Coordination::Kafka => Some(KafkaGroup::new(
                &settings,
                config.clone(),
                &member,
                share.0.clone(),
            )?),
            Coordination::Lease => None,
        };
        config
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        // Brokers like tansu answer a fetch only when its wait is up, so a long wait is
        // latency added to every reading under light load (kafka.properties may override).
        if !kafka.properties.contains_key("fetch.wait.max.ms") {
            config.set("fetch.wait.max.ms", "10");
        }
        let consumer: StreamConsumer = config.create()?;
        let anomalies = match anomalies.enabled {
            true => Some(Anomalies {
                detector: Detector::new(anomalies.clone()),
                publisher: Publisher::new(kafka, &anomalies.topic)?,
                flush_timeout: Duration::from_millis(kafka.delivery_timeout_ms),
            }),
            false => None,
        };
        Ok(Writer {
            settings,
            consumer: Arc::new(consumer),
            member,
            share,
            group,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            anomalies,
        })
    }

    /// Runs until `stop` turns true, then returns once the batch being written, if any, is
    /// committed; database outages are waited out batch by batch. Each time its share of
    /// the partitions changes, the writer finishes the batch in hand and starts again from
    /// the offsets in the database: a partition another writer wrote meanwhile resumes
    /// where that one stopped, and rows written twice in the handover are absorbed by
    /// the readings' unique key.
    pub async fn run(
        self,
        health: Arc<Health>,
        stop: watch::Receiver<bool>,
    ) -> Result<(), WriterError> {
        let Writer {
            settings,
            consumer,
            member,
            share: (share_tx, mut share),
            group,
            topics,
            anomalies,
        } = self;
        let mut store = Store::new(
            settings.clone(),
            consumer.clone(),
            health.clone(),
            anomalies,
        );
        // The coordinator gives the lease up only once the last batch is committed.
        let (done, quit) = watch::channel(false);
        let coordinating = match group {
            Some(group) => {
                // Kafka's group member publishes the share on a sender of its own.
                drop(share_tx);
                tokio::spawn(group.follow(topics, quit))
            }
            None => {
                let coordinator = Coordinator::new(
                    settings.clone(),
                    member,
                    consumer.clone(),
                    topics,
                    health.clone(),
                );
                tokio::spawn(coordinator.run(share_tx, quit))
            }
        };
        let max_rows = match settings.max_rows_per_second {
            // A throttled writer takes about a second's worth at a time, so it stays smooth.
            0 => settings.max_batch_rows,
            rate => settings.max_batch_rows.min(rate as usize),
        };
        let mut first = true;
        let outcome = loop {
            let mine = tokio::select! {
                mine = share.wait_for(Option::is_some) => match mine {
                    Ok(mine) => mine.clone().unwrap_or_default(),
                    Err(_) => break Err(WriterError::TaskEnded("coordinator")),
                },
                _ = stopped(stop.clone()) => break Ok(()),
            };
            let Some(committed) = store.load_committed(&stop).await else {
                break Ok(());
            };
            if let Err(e) = assign(&consumer, &mine, &committed) {
                break Err(e);
            }
            if std::mem::take(&mut first) {
                health.started();
            }
            let (requests, waiting) = mpsc::channel(1);
            let fetch = Fetch {
                max_rows,
                max_bytes: settings.max_batch_bytes,
                linger: Duration::from_millis(settings.linger_ms),
                consumer: consumer.clone(),
                mine: mine.into_iter().collect(),
                committed,
            };
            let fetching = tokio::spawn(fetch.run(waiting));
            let ended = store.run(requests, stop.clone(), &mut share).await;
            fetching.abort();
            // The fetcher holds the consumer's stream; it must be gone before the next assign.
            let _ = fetching.await;
            match ended {
                Ended::Reassigned => continue,
                Ended::Stopped => break Ok(()),
                Ended::FetchGone => break Err(WriterError::TaskEnded("fetch")),
                // Writing on without a lease would overlap the writers that took this one's
                // share: stop, and let the process be restarted.
                Ended::CoordinatorGone => break Err(WriterError::TaskEnded("coordinator")),
            }
        };
        done.send_replace(true);
        let _ = coordinating.await;
        if let Some(a) = &store.anomalies {
            flush_anomalies(a.publisher.clone(), a.flush_timeout).await;
        }
        if outcome.is_ok() {
            tracing::info!("writer stopped");
        }
        outcome
    }
}

/// Assigns this writer's share, each partition at the offset the database has for it.
fn assign(
    consumer: &StreamConsumer,
    mine: &[Partition],
    committed: &HashMap<Partition, i64>,
) -> Result<(), WriterError> {
    let mut tpl = TopicPartitionList::new();
    for partition in mine {
        let offset = match committed.get(partition) {
            Some(&next) => Offset::Offset(next),
            None => Offset::Beginning,
        };
        tpl.add_partition_offset(&partition.0, partition.1, offset)?;
    }
    consumer.assign(&tpl)?;
    tracing::info!(partitions = tpl.count(), "writer assigned partitions");
    Ok(())
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Sends the anomalies still queued before the writer returns, as main.rs does for the
/// readings' producer; what is left after `timeout` is lost (and logged).
async fn flush_anomalies(publisher: Arc<Publisher>, timeout: Duration) {
    let left = publisher.in_flight();
    if left == 0 {
        return;
    }
    tracing::info!(records = left, "flushing the anomaly publisher");
    match tokio::task::spawn_blocking(move || publisher.flush(timeout)).await {
        Ok(Ok(())) => tracing::info!("anomaly publisher flushed"),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "anomaly publisher not flushed; anomalies may be unpublished")
        }
        Err(e) => tracing::error!(error = %e, "anomaly publisher flush failed"),
    }
}

/// The fetching half: consumes, decodes and batches records until the store asks.
struct Fetch {
    consumer: Arc<StreamConsumer>,
    /// The partitions assigned: a record of another (fetched before a reassignment) is
    /// left to its new owner.
    mine: HashSet<Partition>,
    /// Next offset per partition as the database had it at start: anything below is
    /// already written (Kafka's position may lag the database's after a crash).
    committed: HashMap<Partition, i64>,
    max_rows: usize,
    max_bytes: usize,
    linger: Duration,
}

impl Fetch {
    async fn run(self, mut waiting: mpsc::Receiver<oneshot::Sender<Batch>>) {
        let mut batch = Batch::default();
        let mut started = Instant::now();
        let mut store: Option<oneshot::Sender<Batch>> = None;
        loop {
            let full = batch.rows.len() >= self.max_rows || batch.bytes >= self.max_bytes;
            if !full {
                // Everything already fetched joins this batch without waiting.
                if let Some(message) = self.consumer.recv().now_or_never() {
                    self.add(&mut batch, message);
                    continue;
                }
            }
            let due = batch.records > 0 && (full || started.elapsed() >= self.linger);
            if due && store.is_some() {
                let taken = std::mem::take(&mut batch);
                if store.take().is_some_and(|s| s.send(taken).is_err()) {
                    return;
                }
                continue;
            }
            tokio::select! {
                request = waiting.recv(), if store.is_none() => match request {
                    Some(s) => store = Some(s),
                    None => return,
                },
                message = self.consumer.recv(), if !full => {
                    if batch.records == 0 {
                        started = Instant::now();
                    }
                    self.add(&mut batch, message);
                }
                _ = tokio::time::sleep_until((started + self.linger).into()), if batch.records > 0 && !due => {}
            }
        }
    }

    fn add(&self, batch: &mut Batch, message: Result<BorrowedMessage<'_>, KafkaError>) {
        let m = match message {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "kafka consumer error");
                return;
            }
        };
        let partition = (m.topic().to_owned(), m.partition());
        let offset = m.offset();
        if !self.mine.contains(&partition) {
            return;
        }
        if self
            .committed
            .get(&partition)
            .is_some_and(|&next| offset < next)
        {
            counter!("sluice_writer_skipped_total").increment(1);
            return;
        }
        batch.records += 1;
        batch.bytes += m.payload_len();
        // The highest offset taken: a batch never moves a partition backwards.
        let next = batch.next_offsets.entry(partition).or_default();
        *next = (*next).max(offset + 1);
        match m.payload().map(Record::from_json) {
            Some(Ok(record)) => {
                let Record {
                    device_id,
                    received_at,
                    readings,
                    ..
                } = record;
                batch.rows.extend(readings.into_iter().map(|reading| Row {
                    device_id: device_id.clone(),
                    received_at,
                    reading,
                }))
            }
            // Only Sluice produces to the readings topics; anything else is skipped, loudly.
            _ => {
                counter!("sluice_writer_bad_records_total").increment(1);
                tracing::error!(
                    offset,
                    "record on a readings topic is not a Sluice record; skipped"
                );
            }
        }
    }
}

const COLUMNS: &str =
    "time, device_id, metric, value, value_bool, value_text, value_data, sum, unit, seq, received_at";

/// Why `Store::run` returned.
#[derive(Debug)]
enum Ended {
    Stopped,
    Reassigned,
    FetchGone,
    CoordinatorGone,
}

/// The writing half: one transaction per batch, retried until the database takes it.
struct Store {
    settings: WriterSettings,
    consumer: Arc<StreamConsumer>,
    client: Option<tokio_postgres::Client>,
    /// Crash drill hook: abort the process after COPY, before the commit of this batch
    /// number (`SLUICE_CRASH_BEFORE_COMMIT=N`), as a kill at the worst moment would.
    crash_before_commit: Option<u64>,
    health: Arc<Health>,
    anomalies: Option<Anomalies>,
}

impl Store {
    fn new(
        settings: WriterSettings,
        consumer: Arc<StreamConsumer>,
        health: Arc<Health>,
        anomalies: Option<Anomalies>,
    ) -> Store {
        Store {
            settings,
            consumer,
            client: None,
            health,
            anomalies,
            crash_before_commit: std::env::var("SLUICE_CRASH_BEFORE_COMMIT")
                .ok()
                .and_then(|n| n.parse().ok()),
        }
    }

    /// Asks the fetcher for a batch each time it is free, until `stop` (between batches,
    /// or while a batch could not be written: it is not committed and will be fetched
    /// again), a new `share` (between batches) or the fetcher's end.
    async fn run(
        &mut self,
        requests: mpsc::Sender<oneshot::Sender<Batch>>,
        mut stop: watch::Receiver<bool>,
        share: &mut watch::Receiver<Option<Vec<Partition>>>,
    ) -> Ended {
        loop {
            if *stop.borrow_and_update() {
                return Ended::Stopped;
            }
            match share.has_changed() {
                Ok(false) => {}
                Ok(true) => return Ended::Reassigned,
                Err(_) => return Ended::CoordinatorGone,
            }
            let (reply, batch) = oneshot::channel();
            if requests.send(reply).await.is_err() {
                return Ended::FetchGone;
            }
            let batch = tokio::select! {
                batch = batch => match batch {
                    Ok(batch) => batch,
                    Err(_) => return Ended::FetchGone,
                },
                _ = stop.changed() => return Ended::Stopped,
                changed = share.changed() => return match changed {
                    Ok(()) => Ended::Reassigned,
                    Err(_) => Ended::CoordinatorGone,
                },
            };
            let started = Instant::now();
            // Judged once, before any attempt: a retried write stores the same anomalies,
            // and each reading moves its series' state once.
            // A large batch keeps the detector busy for a while: off the async worker (which
            // also serves MQTT acks) when the runtime has others to take over its tasks.
            let found = match tokio::runtime::Handle::current().runtime_flavor() {
                tokio::runtime::RuntimeFlavor::CurrentThread => self.detect(&batch),
                _ => tokio::task::block_in_place(|| self.detect(&batch)),
            };
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.write(&batch, &found).await {
                    Ok(inserted) => {
                        self.health.database_working();
                        // Only what this commit stored: an anomaly already in the table
                        // (a batch fetched again) was published when it was stored.
                        if let Some(a) = &self.anomalies {
                            a.publisher.publish(&inserted);
                        }
                        break;
                    }
                    Err(e) => {
                        self.health.database_failing();
                        counter!("sluice_writer_errors_total").increment(1);
                        tracing::warn!(error = %e, retry_in = ?backoff, rows = batch.rows.len(), "batch not written; retrying");
                        self.client = None;
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.changed() => return Ended::Stopped,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            self.commit_hint(&batch);
            self.throttle(batch.rows.len(), started).await;
        }
    }

    async fn client(&mut self) -> Result<&mut tokio_postgres::Client, WriterError> {
        if self.client.is_none() {
            let client = db::connect(&self.settings.database_url).await?;
            client
                .batch_execute(&format!(
                    "CREATE TEMP TABLE IF NOT EXISTS readings_stage ON COMMIT DELETE ROWS AS \
                     SELECT {COLUMNS} FROM readings WITH NO DATA"
                ))
                .await?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    /// Reads this group's offsets, waiting out a database outage; None when `stop` comes
    /// first.
    async fn load_committed(
        &mut self,
        stop: &watch::Receiver<bool>,
    ) -> Option<HashMap<Partition, i64>> {
        let group = self.settings.group_id.clone();
        loop {
            let result = match self.client().await {
                Ok(client) => client
                    .query(
                        "SELECT topic, partition, next_offset FROM sluice_offsets WHERE group_id = $1",
                        &[&group],
                    )
                    .await
                    .map_err(WriterError::from),
                Err(e) => Err(e),
            };
            match result {
                Ok(rows) => {
                    self.health.database_working();
                    let committed = rows.iter().map(|r| ((r.get(0), r.get(1)), r.get(2)));
                    return Some(committed.collect());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read writer offsets; retrying");
                    self.health.database_failing();
                    self.client = None;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stopped(stop.clone()) => return None,
                    }
                }
            }
        }
    }

    /// The batch's anomalies, with the detector's time in `sluice_detector_seconds`.
    fn detect(&mut self, batch: &Batch) -> Vec<Anomaly> {
        let Some(a) = self.anomalies.as_mut() else {
            return Vec::new();
        };
        let started = Instant::now();
        let found = a.detector.observe(
            batch
                .rows
                .iter()
                .map(|r| (r.device_id.as_str(), &r.reading)),
        );
        histogram!("sluice_detector_seconds").record(started.elapsed().as_secs_f64());
        found
    }

    /// Writes the batch and its anomalies in one transaction; returns the anomalies it
    /// inserted (not those already stored).
    async fn write(
        &mut self,
        batch: &Batch,
        anomalies: &[Anomaly],
    ) -> Result<Vec<Anomaly>, WriterError> {
        let started = Instant::now();
        let group = self.settings.group_id.clone();
        let crash = match self.crash_before_commit.as_mut() {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        let client = self.client().await?;
        let mut tx = client.transaction().await?;
        // Fast path: COPY straight into `readings`. A batch holding a reading that is
        // already stored (a device's resend) fails on the unique key; then it goes through
        // a staging table and `ON CONFLICT DO NOTHING`, which costs about twice as much.
        let direct = tx.savepoint("direct").await?;
        let inserted = match copy(&direct, "readings", &batch.rows).await {
            Ok(n) => {
                direct.commit().await?;
                n
            }
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                direct.rollback().await?;
                counter!("sluice_writer_conflict_batches_total").increment(1);
                copy(&tx, "readings_stage", &batch.rows).await?;
                tx.execute(
                    &format!(
                        "INSERT INTO readings ({COLUMNS}) SELECT {COLUMNS} FROM readings_stage \
                         ON CONFLICT DO NOTHING"
                    ),
                    &[],
                )
                .await?
            }
            Err(e) => return Err(e.into()),
        };
        let stored = match anomalies.is_empty() {
            true => Vec::new(),
            false => insert_anomalies(&tx, anomalies).await?,
        };
        let (topics, partitions, offsets): (Vec<&str>, Vec<i32>, Vec<i64>) = batch
            .next_offsets
            .iter()
            .map(|((topic, partition), next)| (topic.as_str(), *partition, *next))
            .collect();
        tx.execute(
            "INSERT INTO sluice_offsets (group_id, topic, partition, next_offset) \
             SELECT $1, * FROM unnest($2::text[], $3::int[], $4::bigint[]) \
             ON CONFLICT (group_id, topic, partition) \
             DO UPDATE SET next_offset = GREATEST(sluice_offsets.next_offset, EXCLUDED.next_offset)",
            &[&group, &topics, &partitions, &offsets],
        )
        .await?;
        if crash {
            tracing::error!(
                rows = batch.rows.len(),
                "SLUICE_CRASH_BEFORE_COMMIT: aborting after COPY, before commit"
            );
            std::process::abort();
        }
        tx.commit().await?;
        let duplicates = batch.rows.len() as u64 - inserted;
        counter!("sluice_writer_rows_total").increment(inserted);
        counter!("sluice_writer_duplicates_total").increment(duplicates);
        histogram!("sluice_writer_batch_rows").record(batch.rows.len() as f64);
        histogram!("sluice_writer_batch_seconds").record(started.elapsed().as_secs_f64());
        // How late the batch's oldest reading got into the database: the writer's lag.
        if let Some(oldest) = batch.rows.iter().map(|r| r.received_at).min() {
            let late = (Utc::now() - oldest).num_milliseconds().max(0) as f64 / 1000.0;
            gauge!("sluice_writer_lag_seconds").set(late);
        }
        let now = Utc::now().timestamp_millis() as f64 / 1000.0;
        gauge!("sluice_writer_last_commit_seconds").set(now);
        Ok(stored)
    }

    /// Keeps to `max_rows_per_second` by sleeping off what this batch was ahead.
    async fn throttle(&self, rows: usize, started: Instant) {
        let rate = self.settings.max_rows_per_second;
        if rate > 0 {
            let due = Duration::from_secs_f64(rows as f64 / rate as f64);
            tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
        }
    }

    /// Tells Kafka how far the database is, so a restart fetches from near there; the
    /// database's offsets stay authoritative (records below them are skipped).
    fn commit_hint(&self, batch: &Batch) {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &batch.next_offsets {
            if tpl
                .add_partition_offset(topic, *partition, Offset::Offset(*next))
                .is_err()
            {
                return;
            }
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "offset hint not committed to kafka");
        }
    }
}

/// Anomalies are few, so one multi-row INSERT; one found again (the batch fetched again
/// after a crash before its commit was seen) is already there and left alone. Returns the
/// anomalies inserted, in their order.
async fn insert_anomalies(
    tx: &Transaction<'_>,
    anomalies: &[Anomaly],
) -> Result<Vec<Anomaly>, tokio_postgres::Error> {
    let column = |f: fn(&Anomaly) -> f64| anomalies.iter().map(f).collect::<Vec<f64>>();
    let times: Vec<DateTime<Utc>> = anomalies.iter().map(|a| a.time).collect();
    let devices: Vec<&str> = anomalies.iter().map(|a| a.device_id.as_str()).collect();
    let metrics: Vec<&str> = anomalies.iter().map(|a| a.metric.as_str()).collect();
    let kinds: Vec<&str> = anomalies.iter().map(|a| a.kind.name()).collect();
    let rows = tx
        .query(
        "INSERT INTO anomalies (time, device_id, metric, kind, value, expected, low, high, score) \
         SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], \
                              $5::float8[], $6::float8[], $7::float8[], $8::float8[], $9::float8[]) \
         ON CONFLICT DO NOTHING \
         RETURNING device_id, metric, time, kind",
        &[
            &times,
            &devices,
            &metrics,
            &kinds,
            &column(|a| a.value),
            &column(|a| a.expected),
            &column(|a| a.low),
            &column(|a| a.high),
            &column(|a| a.score),
        ],
    )
    .await?;
    // The table keeps microseconds.
    let key = |device: &str, metric: &str, time: DateTime<Utc>, kind: &str| {
        (
            device.to_owned(),
            metric.to_owned(),
            time.timestamp_micros(),
            kind.to_owned(),
        )
    };
    let inserted: std::collections::HashSet<_> = rows
        .iter()
        .map(|r| key(r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    Ok(anomalies
        .iter()
        .filter(|a| inserted.contains(&key(&a.device_id, &a.metric, a.time, a.kind.name())))
        .cloned()
        .collect())
}

/// Binary COPY of `rows` into `table`; returns the number of rows copied.
async fn copy(
    tx: &Transaction<'_>,
    table: &str,
    rows: &[Row],
) -> Result<u64, tokio_postgres::Error> {
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let types = [
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::TEXT,
        Type::FLOAT8,
        Type::BOOL,
        Type::TEXT,
        Type::BYTEA,
        Type::FLOAT8,
        Type::TEXT,
        Type::INT8,
        Type::TIMESTAMPTZ,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    futures::pin_mut!(writer);
    for row in rows {
        let r = &row.reading;
        writer
            .as_mut()
            .write(&[
                &r.time,
                &row.device_id,
                &r.metric,
                &r.value,
                &r.value_bool,
                &r.value_text,
                &r.value_data,
                &r.sum,
                &r.unit,
                &r.seq,
                &row.received_at,
            ])
            .await?;
    }
    writer.finish().await
}
