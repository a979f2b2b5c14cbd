//! Writer: turns Kafka records into `readings` rows. Batches grow with the backlog (it
//! writes as soon as Kafka has nothing more ready, up to `max_batch_rows`); each batch is
//! one transaction: binary COPY into a staging table, `INSERT .. ON CONFLICT DO NOTHING`
//! into `readings`, and the next Kafka offsets. The database is the source of truth for
//! progress: the writer assigns itself its partitions at the offsets stored there.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::FutureExt;
use metrics::{counter, histogram};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use crate::db;
use crate::produce::client_config;
use crate::record::{Reading, Record};
use crate::settings::{KafkaSettings, WriterSettings};

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("kafka consumer: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
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
    next_offsets: HashMap<(String, i32), i64>,
    records: usize,
}

/// A consumed Kafka message, detached from the consumer's buffers.
struct Incoming {
    partition: (String, i32),
    offset: i64,
    payload: Option<Vec<u8>>,
}

fn owned(message: Result<BorrowedMessage<'_>, KafkaError>) -> Option<Incoming> {
    match message {
        Ok(m) => Some(Incoming {
            partition: (m.topic().to_owned(), m.partition()),
            offset: m.offset(),
            payload: m.payload().map(<[u8]>::to_vec),
        }),
        Err(e) => {
            tracing::warn!(error = %e, "kafka consumer error");
            None
        }
    }
}

pub struct Writer {
    settings: WriterSettings,
    consumer: StreamConsumer,
    topics: Vec<String>,
    /// Next offset to write per partition, as the database has it.
    committed: HashMap<(String, i32), i64>,
    client: Option<tokio_postgres::Client>,
    /// Crash drill hook: abort the process after COPY, before the commit of this batch
    /// number (`SLUICE_CRASH_BEFORE_COMMIT=N`), as a kill at the worst moment would.
    crash_before_commit: Option<u64>,
}

const STAGE_COLUMNS: &str =
    "time, device_id, metric, value, value_bool, value_text, value_data, sum, unit, seq, received_at";

impl Writer {
    pub fn new(
        settings: WriterSettings,
        kafka: &KafkaSettings,
        topics: &[&str],
    ) -> Result<Writer, WriterError> {
        // The group id only names the progress in `sluice_offsets` (and Kafka's offset
        // hint); partitions are assigned, not negotiated, so a restarted writer resumes at
        // once instead of waiting out a dead member's session.
        let consumer: StreamConsumer = client_config(kafka)
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        Ok(Writer {
            settings,
            consumer,
            topics: topics.iter().map(|t| t.to_string()).collect(),
            committed: HashMap::new(),
            client: None,
            crash_before_commit: std::env::var("SLUICE_CRASH_BEFORE_COMMIT")
                .ok()
                .and_then(|n| n.parse().ok()),
        })
    }

    /// Assigns this writer's partitions (all of them, or `writer.partitions`), each at
    /// the offset the database has for it; waits for Kafka and the database if need be.
    async fn assign(&mut self) -> Result<(), WriterError> {
        self.load_committed().await;
        let mut tpl = TopicPartitionList::new();
        for topic in self.topics.clone() {
            let partitions = self.partitions(&topic).await;
            for p in partitions {
                let offset = match self.committed.get(&(topic.clone(), p)) {
                    Some(&next) => Offset::Offset(next),
                    None => Offset::Beginning,
                };
                tpl.add_partition_offset(&topic, p, offset)?;
            }
        }
        self.consumer.assign(&tpl)?;
        tracing::info!(partitions = tpl.count(), "writer assigned partitions");
        Ok(())
    }

    async fn partitions(&self, topic: &str) -> Vec<i32> {
        loop {
            match self
                .consumer
                .fetch_metadata(Some(topic), Duration::from_secs(5))
            {
                Ok(md) => {
                    let all: Vec<i32> = md
                        .topics()
                        .iter()
                        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                        .collect();
                    if !all.is_empty() {
                        return match &self.settings.partitions {
                            Some(mine) => all.into_iter().filter(|p| mine.contains(p)).collect(),
                            None => all,
                        };
                    }
                    tracing::warn!(topic, "topic has no partitions yet; waiting");
                }
                Err(e) => tracing::warn!(topic, error = %e, "kafka metadata unavailable; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Runs until the process ends; database outages are waited out batch by batch.
    pub async fn run(mut self) -> Result<(), WriterError> {
        self.assign().await?;
        loop {
            let batch = self.next_batch().await;
            let started = Instant::now();
            if batch.records == 0 {
                continue;
            }
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.write(&batch).await {
                    Ok(()) => break,
                    Err(e) => {
                        counter!("sluice_writer_errors_total").increment(1);
                        tracing::warn!(error = %e, retry_in = ?backoff, rows = batch.rows.len(), "batch not written; retrying");
                        self.client = None;
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            self.commit_hint(&batch);
            self.throttle(batch.rows.len(), started).await;
        }
    }

    /// Waits for one record, then takes whatever else is ready (and, with `linger_ms`,
    /// whatever arrives within it) up to `max_batch_rows`.
    async fn next_batch(&mut self) -> Batch {
        let mut batch = Batch::default();
        let first = owned(self.consumer.recv().await);
        self.add(&mut batch, first);
        let deadline = Instant::now() + Duration::from_millis(self.settings.linger_ms);
        // A throttled writer takes about a second's worth at a time, so it stays smooth.
        let max_rows = match self.settings.max_rows_per_second {
            0 => self.settings.max_batch_rows,
            rate => self.settings.max_batch_rows.min(rate as usize),
        };
        while batch.rows.len() < max_rows {
            let next = match self.consumer.recv().now_or_never() {
                Some(next) => owned(next),
                None => {
                    // A received message must never be dropped: its offset is consumed.
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match tokio::time::timeout(left, self.consumer.recv()).await {
                        Ok(next) => owned(next),
                        Err(_elapsed) => break,
                    }
                }
            };
            self.add(&mut batch, next);
        }
        batch
    }

    fn add(&self, batch: &mut Batch, message: Option<Incoming>) {
        let Some(Incoming {
            partition,
            offset,
            payload,
        }) = message
        else {
            return;
        };
        if self
            .committed
            .get(&partition)
            .is_some_and(|&next| offset < next)
        {
            counter!("sluice_writer_skipped_total").increment(1);
            return;
        }
        batch.records += 1;
        batch.next_offsets.insert(partition, offset + 1);
        match payload.as_deref().map(Record::from_json) {
            Some(Ok(record)) => batch
                .rows
                .extend(record.readings.into_iter().map(|reading| Row {
                    device_id: record.device_id.clone(),
                    received_at: record.received_at,
                    reading,
                })),
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

    async fn client(&mut self) -> Result<&mut tokio_postgres::Client, WriterError> {
        if self.client.is_none() {
            let client = db::connect(&self.settings.database_url).await?;
            client
                .batch_execute(&format!(
                    "CREATE TEMP TABLE IF NOT EXISTS readings_stage ON COMMIT DELETE ROWS AS \
                     SELECT {STAGE_COLUMNS} FROM readings WITH NO DATA"
                ))
                .await?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    /// Reads this group's offsets, waiting out a database outage.
    async fn load_committed(&mut self) {
        let group = self.settings.group_id.clone();
        let rows = loop {
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
                Ok(rows) => break rows,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read writer offsets; retrying");
                    self.client = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        self.committed = rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect();
    }

    async fn write(&mut self, batch: &Batch) -> Result<(), WriterError> {
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
        let tx = client.transaction().await?;
        let sink = tx
            .copy_in(&format!(
                "COPY readings_stage ({STAGE_COLUMNS}) FROM STDIN (FORMAT binary)"
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
        for row in &batch.rows {
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
        writer.finish().await?;
        let inserted = tx
            .execute(
                &format!(
                    "INSERT INTO readings ({STAGE_COLUMNS}) SELECT {STAGE_COLUMNS} FROM readings_stage \
                     ON CONFLICT DO NOTHING"
                ),
                &[],
            )
            .await?;
        let statement = tx
            .prepare(
                "INSERT INTO sluice_offsets (group_id, topic, partition, next_offset) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (group_id, topic, partition) \
                 DO UPDATE SET next_offset = GREATEST(sluice_offsets.next_offset, EXCLUDED.next_offset)",
            )
            .await?;
        for ((topic, partition), next) in &batch.next_offsets {
            tx.execute(&statement, &[&group, topic, partition, next])
                .await?;
        }
        if crash {
            tracing::error!(
                rows = batch.rows.len(),
                "SLUICE_CRASH_BEFORE_COMMIT: aborting after COPY, before commit"
            );
            std::process::abort();
        }
        tx.commit().await?;
        for (partition, next) in &batch.next_offsets {
            self.committed.insert(partition.clone(), *next);
        }
        let duplicates = batch.rows.len() as u64 - inserted;
        counter!("sluice_writer_rows_total").increment(inserted);
        counter!("sluice_writer_duplicates_total").increment(duplicates);
        histogram!("sluice_writer_batch_rows").record(batch.rows.len() as f64);
        histogram!("sluice_writer_batch_seconds").record(started.elapsed().as_secs_f64());
        Ok(())
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
