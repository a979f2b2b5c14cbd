//! The pipeline's status for `GET /v1/status` and the dashboard's live stream
//! (`/v1/status/stream`): readings/s in and written, Kafka-confirmation latency, Kafka and
//! writer lag, dead letters, connections. One sampler task computes it every second, so a
//! reader costs a clone; Kafka's end offsets are asked for only while someone is watching.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Extension, RawQuery, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use tokio::sync::watch;

use super::params::Params;
use super::{reply, Api, ApiError, Reader};
use crate::settings::Settings;

/// Rates are over this many one-second samples; latencies too.
const WINDOW: usize = 10;
/// Kafka's offsets are fetched while a status was asked for this recently.
const WATCHED_FOR: Duration = Duration::from_secs(30);
/// Live streams one address may hold, and how long one lasts.
const STREAMS_PER_ADDRESS: usize = 4;
const STREAM_LIFETIME: Duration = Duration::from_secs(600);
/// Longest the sampler waits for Kafka's offsets and the database's.
const LAG_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    time: DateTime<Utc>,
    /// Readings this process accepted and handed to Kafka, per second.
    readings_in_per_second: Option<f64>,
    /// Readings this process's writer committed, per second (`None`: no writer here).
    readings_written_per_second: Option<f64>,
    /// Publish to Kafka's confirmation, for records someone waited for.
    ack_latency_ms: Latency,
    /// Per readings partition: Kafka's end offset against the writers' stored offset.
    kafka_lag: Option<Vec<Lag>>,
    /// How late the last batch's oldest reading reached the database; while readings
    /// wait in Kafka, at least the time since that batch.
    writer_lag_seconds: Option<f64>,
    /// Dead letters this process sent since start, by reason.
    dead_letters: BTreeMap<String, u64>,
    connections: Connections,
    /// Why a figure is missing.
    problems: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Latency {
    p50: Option<f64>,
    p99: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
struct Lag {
    topic: String,
    partition: i32,
    end_offset: i64,
    written_offset: i64,
    lag: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Connections {
    mqtt: u64,
    http: u64,
}

/// Computes the status every second and hands it to whoever asks.
pub struct Sampler {
    latest: watch::Receiver<Arc<Status>>,
    /// When a status was last asked for (Unix ms).
    asked: Arc<AtomicI64>,
}

impl Sampler {
    pub fn start(
        settings: &Settings,
        metrics: PrometheusHandle,
        writer: bool,
    ) -> Result<Sampler, rdkafka::error::KafkaError> {
        let consumer: BaseConsumer = crate::produce::client_config(&settings.kafka).create()?;
        let (tx, latest) = watch::channel(Arc::new(Status::default()));
        let asked = Arc::new(AtomicI64::new(0));
        let mut topics: Vec<String> = settings
            .mappings
            .iter()
            .map(|m| m.kafka_topic.clone())
            .collect();
        topics.sort();
        topics.dedup();
        let task = Task {
            metrics,
            writer,
            consumer: Arc::new(consumer),
            topics,
            database_url: settings.writer.database_url.clone(),
            group_id: settings.writer.group_id.clone(),
            client: None,
            samples: VecDeque::new(),
            confirmations: VecDeque::new(),
            asked: asked.clone(),
        };
        tokio::spawn(task.run(tx));
        Ok(Sampler { latest, asked })
    }

    fn now(&self) -> Arc<Status> {
        self.asked
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        self.latest.borrow().clone()
    }
}

pub async fn now(State(api): State<Arc<Api>>, RawQuery(query): RawQuery) -> Response {
    if let Err(e) = Params::parse(query.as_deref(), &[]) {
        return e.into_response();
    }
    let status = api.status.now();
    reply(
        StatusCode::OK,
        serde_json::to_value(&*status).unwrap_or_default(),
    )
}

/// `event: status` every second, until the client leaves, Sluice stops or
/// `STREAM_LIFETIME` passes (a browser's EventSource reconnects by itself).
pub async fn stream(
    State(api): State<Arc<Api>>,
    Extension(reader): Extension<Reader>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(e) = Params::parse(query.as_deref(), &[]) {
        return e.into_response();
    }
    let mine = api
        .streams_by_source
        .take(reader.address, STREAMS_PER_ADDRESS);
    let Some(mine) = mine else {
        let detail =
            format!("{STREAMS_PER_ADDRESS} live status streams are open from this address already");
        return ApiError::Busy(detail).into_response();
    };
    let Ok(place) = api.streams.clone().try_acquire_owned() else {
        let detail = "too many live status streams open ([api] max_streams)";
        return ApiError::Busy(detail.into()).into_response();
    };
    let ends = tokio::time::Instant::now() + STREAM_LIFETIME;
    let latest = api.status.latest.clone();
    let places = (place, mine);
    let events = futures::stream::unfold(
        (api, latest, places, true),
        move |(api, mut latest, places, first)| async move {
            let mut stop = api.stop.clone();
            if !first {
                tokio::select! {
                    changed = latest.changed() => changed.ok()?,
                    _ = stop.wait_for(|s| *s) => return None,
                    _ = tokio::time::sleep_until(ends) => return None,
                }
            }
            if *stop.borrow() {
                return None;
            }
            latest.borrow_and_update();
            let status = api.status.now();
            let event = Event::default().event("status").json_data(&*status).ok()?;
            Some((Ok::<_, Infallible>(event), (api, latest, places, false)))
        },
    );
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One second's counters.
struct Sample {
    at: Instant,
    accepted: f64,
    written: f64,
}

struct Task {
    metrics: PrometheusHandle,
    writer: bool,
    consumer: Arc<BaseConsumer>,
    topics: Vec<String>,
    database_url: String,
    group_id: String,
    client: Option<tokio_postgres::Client>,
    samples: VecDeque<Sample>,
    confirmations: VecDeque<Histogram<u64>>,
    asked: Arc<AtomicI64>,
}

impl Task {
    async fn run(mut self, tx: watch::Sender<Arc<Status>>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let watched = tx.receiver_count() > 1
                || Utc::now().timestamp_millis() - self.asked.load(Ordering::Relaxed)
                    < WATCHED_FOR.as_millis() as i64;
            // Confirmation times are recorded only while someone looks at them.
            crate::ack::record_confirmations(watched);
            let status = self.sample(watched).await;
            tx.send_replace(Arc::new(status));
        }
    }

    async fn sample(&mut self, watched: bool) -> Status {
        let text = self.metrics.render();
        let metrics = Metrics::parse(&text);
        self.samples.push_back(Sample {
            at: Instant::now(),
            accepted: metrics.sum("sluice_readings_accepted_total"),
            written: metrics.sum("sluice_writer_rows_total"),
        });
        if self.samples.len() > WINDOW {
            self.samples.pop_front();
        }
        self.confirmations
            .push_back(crate::ack::take_confirmations());
        if self.confirmations.len() > WINDOW {
            self.confirmations.pop_front();
        }
        let mut problems = Vec::new();
        let kafka_lag = match watched {
            true => match tokio::time::timeout(LAG_TIMEOUT, self.lag()).await {
                Ok(Ok(lag)) => Some(lag),
                Ok(Err(e)) => {
                    problems.push(e);
                    None
                }
                Err(_) => {
                    self.client = None;
                    problems.push(format!("kafka lag: no answer within {LAG_TIMEOUT:?}"));
                    None
                }
            },
            false => None,
        };
        let writer_lag_seconds = self
            .writer
            .then(|| writer_lag(&metrics, kafka_lag.as_deref()))
            .flatten();
        let rate = |of: fn(&Sample) -> f64| {
            let (first, last) = (self.samples.front()?, self.samples.back()?);
            let seconds = (last.at - first.at).as_secs_f64();
            (seconds > 0.5).then(|| ((of(last) - of(first)) / seconds).max(0.0))
        };
        Status {
            time: Utc::now(),
            readings_in_per_second: rate(|s| s.accepted),
            readings_written_per_second: self.writer.then(|| rate(|s| s.written)).flatten(),
            ack_latency_ms: self.latency(),
            kafka_lag,
            writer_lag_seconds,
            dead_letters: metrics.by_label("sluice_dead_letters_total", "reason"),
            connections: Connections {
                mqtt: metrics.sum("sluice_connections") as u64,
                http: metrics.sum("sluice_http_connections") as u64,
            },
            problems,
        }
    }

    fn latency(&self) -> Latency {
        let mut all = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 2).expect("static");
        for h in &self.confirmations {
            let _ = all.add(h);
        }
        let ms = |q: f64| (!all.is_empty()).then(|| all.value_at_quantile(q) as f64 / 1000.0);
        Latency {
            p50: ms(0.5),
            p99: ms(0.99),
        }
    }

    /// Kafka's end offsets against the offsets the writers stored with their rows.
    async fn lag(&mut self) -> Result<Vec<Lag>, String> {
        let consumer = self.consumer.clone();
        let topics = self.topics.clone();
        let ends = tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(2);
            // Nothing else polls this consumer: its events are dropped here.
            let _ = consumer.poll(Duration::ZERO);
            let mut ends = Vec::new();
            for topic in topics {
                let metadata = consumer.fetch_metadata(Some(&topic), timeout)?;
                for t in metadata.topics() {
                    for p in t.partitions() {
                        let (_, high) = consumer.fetch_watermarks(&topic, p.id(), timeout)?;
                        ends.push((topic.clone(), p.id(), high));
                    }
                }
            }
            Ok::<_, rdkafka::error::KafkaError>(ends)
        })
        .await
        .map_err(|e| format!("kafka: {e}"))?
        .map_err(|e| format!("kafka: {e}"))?;
        let written = self.written().await.map_err(|e| {
            self.client = None;
            format!("database: {e}")
        })?;
        Ok(ends
            .into_iter()
            .map(|(topic, partition, end)| {
                let written_offset = written
                    .get(&(topic.clone(), partition))
                    .copied()
                    .unwrap_or(0);
                Lag {
                    lag: (end - written_offset).max(0),
                    topic,
                    partition,
                    end_offset: end,
                    written_offset,
                }
            })
            .collect())
    }

    async fn written(&mut self) -> Result<BTreeMap<(String, i32), i64>, ApiError> {
        if self.client.is_none() {
            self.client = Some(crate::db::connect(&self.database_url).await?);
        }
        let client = self.client.as_ref().expect("just connected");
        let rows = client
            .query(
                "SELECT topic, partition, next_offset FROM sluice_offsets WHERE group_id = $1",
                &[&self.group_id],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| ((r.get(0), r.get(1)), r.get(2)))
            .collect())
    }
}

/// The last batch's lateness, or, while readings wait in Kafka, the time since that
/// batch if longer: a stalled writer's lag grows instead of freezing.
fn writer_lag(metrics: &Metrics<'_>, kafka_lag: Option<&[Lag]>) -> Option<f64> {
    let last_batch = metrics.last("sluice_writer_lag_seconds")?;
    let waiting = kafka_lag.is_some_and(|lag| lag.iter().any(|p| p.lag > 0));
    let committed = metrics.last("sluice_writer_last_commit_seconds");
    match (waiting, committed) {
        (true, Some(at)) => {
            let since = Utc::now().timestamp_millis() as f64 / 1000.0 - at;
            Some(last_batch.max(since))
        }
        _ => Some(last_batch),
    }
}

/// Prometheus text as this process's recorder renders it: `name{labels} value` lines.
struct Metrics<'a>(Vec<(&'a str, &'a str, f64)>);

impl<'a> Metrics<'a> {
    fn parse(text: &'a str) -> Metrics<'a> {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let value = value.parse().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                Some((name, labels, value))
            })
            .collect();
        Metrics(samples)
    }

    fn of(&self, name: &'a str) -> impl Iterator<Item = &(&'a str, &'a str, f64)> + '_ {
        self.0.iter().filter(move |(n, _, _)| *n == name)
    }

    fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(n, _, _)| *n == name)
            .map(|(_, _, v)| v)
            .sum()
    }

    fn last(&self, name: &'a str) -> Option<f64> {
        self.of(name).map(|(_, _, v)| *v).last()
    }

    /// Counts by the value of `label`.
    fn by_label(&self, name: &'a str, label: &str) -> BTreeMap<String, u64> {
        let prefix = format!("{label}=\"");
        self.of(name)
            .filter_map(|(_, labels, v)| {
                let start = labels.find(&prefix)? + prefix.len();
                let end = labels[start..].find('"')? + start;
                Some((labels[start..end].to_owned(), *v as u64))
            })
            .fold(BTreeMap::new(), |mut by, (key, v)| {
                *by.entry(key).or_default() += v;
                by
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_is_read_by_name_and_label() {
        // Every metric carries the process's role, ahead of its own labels.
        let text = "# TYPE sluice_rejected_total counter\n\
                    sluice_rejected_total{role=\"all\",reason=\"malformed_json\"} 3\n\
                    sluice_rejected_total{role=\"all\",reason=\"unmapped\"} 2\n\
                    sluice_connections{role=\"all\"} 7\n\
                    sluice_writer_lag_seconds{role=\"all\"} 0.25\n";
        let m = Metrics::parse(text);
        assert_eq!(m.sum("sluice_connections"), 7.0);
        assert_eq!(m.sum("sluice_rejected_total"), 5.0);
        assert_eq!(m.last("sluice_writer_lag_seconds"), Some(0.25));
        assert_eq!(m.last("absent"), None);
        let by = m.by_label("sluice_rejected_total", "reason");
        assert_eq!(by.get("malformed_json"), Some(&3));
        assert_eq!(by.get("unmapped"), Some(&2));
    }
}
