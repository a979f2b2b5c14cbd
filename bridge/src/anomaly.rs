//! Anomaly detection: `Detector`, a streaming detector per device and metric, run by the
//! writer on each batch it takes, judging every numeric reading against that series' own
//! recent past; it does no I/O. The writer stores its `Anomaly`s in the readings'
//! transaction, then hands those it stored to `Publisher`, which sends them to Kafka.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::counter;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde::Serialize;

use crate::produce::client_config;
use crate::record::Reading;
use crate::settings::{AnomalySettings, KafkaSettings};

/// What kind of anomaly; its name is the `kind` column and label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A value far outside the series' band (robust z over `threshold`).
    Spike,
    /// The same value `stuck_after` times in a row, from a series whose values vary.
    Stuck,
    /// The series' recent average has left its slow baseline's band for `drift_for`
    /// readings.
    Drift,
    /// A gap `dropout_factor` times the series' typical interval, seen at the next reading.
    Dropout,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Spike => "spike",
            Kind::Stuck => "stuck",
            Kind::Drift => "drift",
            Kind::Dropout => "dropout",
        }
    }
}

/// One row of `anomalies`, and the JSON of one `sensor.anomalies` record. For a dropout,
/// `value`, `expected`, `low` and `high` are seconds between readings (the gap, the typical
/// interval, 0 and the largest gap not flagged); otherwise the metric's units.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Anomaly {
    pub device_id: String,
    pub metric: String,
    /// The time of the reading that revealed it.
    pub time: DateTime<Utc>,
    pub kind: Kind,
    pub value: f64,
    pub expected: f64,
    pub low: f64,
    pub high: f64,
    /// Spike: robust z; drift: the fast average's distance from the baseline in noise
    /// standard deviations; stuck:
    /// identical readings in a row; dropout: the gap over the typical interval.
    pub score: f64,
}

/// A series' repeat rate (share of readings equal to the one before) above which runs of
/// one value are normal for it, so it is never judged stuck. 0.2^9: a run of 10 by chance
/// about once in two million readings.
const MAX_REPEAT_RATE: f64 = 0.2;
/// Weight of the newest reading in a series' repeat rate and typical interval.
const RATE_ALPHA: f64 = 1.0 / 64.0;
/// 1.4826 x MAD estimates a normal distribution's standard deviation.
const MAD_TO_SIGMA: f64 = 1.4826;
/// The mean absolute step between two independent normal values is 2/sqrt(pi) = 1.128
/// standard deviations.
const STEP_TO_SIGMA: f64 = 1.128;
/// A reading this many typical intervals older than its series' last one means the
/// device's clock went back: the series starts again from it. Closer, it is a resend or a
/// straggler and is passed over.
const CLOCK_RESET_INTERVALS: f64 = 100.0;
/// The drift baseline follows the values this many times more slowly than the fast
/// average (`anomalies.drift_alpha`).
const BASELINE_SLOWER: f64 = 10.0;

/// The state of one (device, metric) series: about `150 + 8 x window` bytes plus its names
/// and the maps' own (about 700 bytes in all with the default window of 64).
#[derive(Debug, Clone)]
struct Series {
    /// The last `window` accepted values, oldest first from `next` (a ring).
    window: Vec<f64>,
    next: usize,
    /// Numeric readings taken, warm-up included.
    seen: u64,
    last_time: DateTime<Utc>,
    last_value: f64,
    /// Readings in a row equal to `last_value` (1: it differs from the one before).
    run: usize,
    repeat_rate: f64,
    /// Typical seconds between readings; 0 until two readings.
    interval: f64,
    /// Averages of the (clipped) values: a fast one (`drift_alpha`) and the slow baseline
    /// it is compared with; and the mean step between successive values, for the noise.
    fast: f64,
    baseline: f64,
    step: f64,
    previous_kept: f64,
    /// Readings in a row with the average out of its band; flagged once per excursion.
    drift_run: usize,
    /// When the writer last saw it (its batch count), for eviction.
    touched: u64,
}

/// Per-series detectors; one per writer, fed each batch once, in Kafka order.
pub struct Detector {
    settings: AnomalySettings,
    series: HashMap<Box<str>, HashMap<Box<str>, Series>>,
    count: usize,
    batches: u64,
    /// Reused for the median and MAD.
    scratch: Vec<f64>,
}

impl Detector {
    pub fn new(settings: AnomalySettings) -> Detector {
        Detector {
            scratch: Vec::with_capacity(settings.window),
            settings,
            series: HashMap::new(),
            count: 0,
            batches: 0,
        }
    }

    /// Series held now.
    pub fn series(&self) -> usize {
        self.count
    }

    /// Judges one batch's readings of each device, in order; returns what it found. Readings
    /// no later than their series' last one (resends, stragglers) are passed over
    /// (`sluice_anomaly_readings_skipped_total`), unless far older: then the device's clock
    /// went back and the series starts again. A series whose state overflows (values near
    /// f64's limits) starts again too.
    pub fn observe<'a>(
        &mut self,
        readings: impl IntoIterator<Item = (&'a str, &'a Reading)>,
    ) -> Vec<Anomaly> {
        self.batches += 1;
        let mut found = Vec::new();
        for (device, reading) in readings {
            let Some(value) = reading.value.filter(|v| v.is_finite()) else {
                continue;
            };
            self.judge(device, reading, value, &mut found);
        }
        if self.count > self.settings.max_series {
            self.evict();
        }
        for a in &found {
            counter!("sluice_anomalies_total", "kind" => a.kind.name()).increment(1);
        }
        found
    }

    fn judge(&mut self, device: &str, reading: &Reading, x: f64, found: &mut Vec<Anomaly>) {
        let s = &self.settings;
        let metrics = match self.series.get_mut(device) {
            Some(m) => m,
            None => self.series.entry(device.into()).or_default(),
        };
        let held = metrics.len();
        let series = match metrics.get_mut(reading.metric.as_str()) {
            Some(series) => series,
            None if held >= s.max_series_per_device => {
                // One device cannot crowd the others out with made-up metric names.
                counter!("sluice_anomaly_series_refused_total").increment(1);
                return;
            }
            None => {
                self.count += 1;
                let series = Series::new(x, reading.time, s.window, self.batches);
                metrics.insert(reading.metric.as_str().into(), series);
                return;
            }
        };
        series.touched = self.batches;
        if reading.time <= series.last_time {
            let back = (series.last_time - reading.time).as_seconds_f64();
            // Far older than the series' last reading: the device's clock went back (a
            // reset), and every reading after would be passed over forever; start again.
            if back > CLOCK_RESET_INTERVALS * series.interval {
                series.restart(
                    x,
                    reading.time,
                    s.window,
                    self.batches,
                    "its clock went back",
                );
            } else {
                counter!("sluice_anomaly_readings_skipped_total").increment(1);
            }
            return;
        }
        let gap = (reading.time - series.last_time).as_seconds_f64();
        let repeat = x == series.last_value;
        if !repeat {
            series.end_run(s.stuck_after);
        }
        series.run = if repeat { series.run + 1 } else { 1 };
        series.last_time = reading.time;
        series.last_value = x;
        series.seen += 1;
        let judged = series.seen > s.warmup as u64;
        let anomaly = |kind, value, expected, low, high, score| Anomaly {
            device_id: device.to_owned(),
            metric: reading.metric.clone(),
            time: reading.time,
            kind,
            value,
            expected,
            low,
            high,
            score,
        };

        // Dropout: a long gap is not let into the typical interval.
        let longest = s.dropout_factor * series.interval;
        if judged && series.interval > 0.0 && gap > longest {
            let score = gap / series.interval;
            found.push(anomaly(
                Kind::Dropout,
                gap,
                series.interval,
                0.0,
                longest,
                score,
            ));
        } else if series.interval == 0.0 {
            series.interval = gap;
        } else {
            series.interval += RATE_ALPHA * (gap - series.interval);
        }

        let (median, scale) = median_and_scale(&series.window, &mut self.scratch, s.min_scale);
        if !(median.is_finite() && scale.is_finite()) {
            // Values near f64's limits overflow the median or scale: there is no band to
            // judge or clip to (a NaN bound would panic), so the series starts again.
            series.restart(
                x,
                reading.time,
                s.window,
                self.batches,
                "its state overflowed",
            );
            return;
        }
        let low = median - s.threshold * scale;
        let high = median + s.threshold * scale;
        let z = (x - median).abs() / scale;
        if judged && series.run == s.stuck_after && series.repeat_rate <= MAX_REPEAT_RATE {
            found.push(anomaly(
                Kind::Stuck,
                x,
                median,
                low,
                high,
                series.run as f64,
            ));
        }
        let spike = judged && z > s.threshold && !repeat;
        if spike {
            found.push(anomaly(Kind::Spike, x, median, low, high, z));
        }

        // A spike enters the window and the averages clipped to the band, so one wild
        // value moves none of them, while a lasting shift is still taken in over a window's
        // length. The warm-up's band is not yet one to clip to.
        let kept = if judged { x.clamp(low, high) } else { x };
        // A stuck run past `stuck_after` is one reading said again: it feeds nothing.
        if series.run < s.stuck_after {
            series.push(kept, s.window);
            let step = (kept - series.previous_kept).abs();
            series.previous_kept = kept;
            // During the warm-up the plain mean of the steps; then a step is clipped to four
            // times the usual one, so a spike's two steps stay small.
            if judged {
                let usual = series.step.max(s.min_scale);
                series.step += RATE_ALPHA * (step.min(4.0 * usual) - series.step);
            } else {
                series.step += (step - series.step) / (series.seen - 1) as f64;
            }
            series.fast += s.drift_alpha * (kept - series.fast);
            series.baseline += s.drift_alpha / BASELINE_SLOWER * (kept - series.baseline);
        }

        // Drift is judged against the noise alone, from the steps between readings, which a
        // slow trend hardly changes (the window's MAD grows with the trend it should find).
        let noise = (series.step / STEP_TO_SIGMA).max(s.min_scale);
        let band = s.drift_threshold * noise;
        let off = (series.fast - series.baseline).abs();
        series.drift_run = if judged && off > band {
            series.drift_run + 1
        } else {
            0
        };
        if series.drift_run == s.drift_for {
            let b = series.baseline;
            found.push(anomaly(Kind::Drift, x, b, b - band, b + band, off / noise));
        }
        // An overflowed average or step (inf, then NaN) would stay so and silence the
        // series' drift for good.
        if !series.is_finite() {
            series.restart(
                x,
                reading.time,
                s.window,
                self.batches,
                "its state overflowed",
            );
        }
    }

    /// Drops a tenth of the series, so memory stays bounded by `max_series`: those still
    /// in their warm-up first (a flood of new series costs only its own kind), then those
    /// seen least recently (devices gone quiet).
    fn evict(&mut self) {
        let warmup = self.settings.warmup as u64;
        let rank = |s: &Series| (s.seen > warmup, s.touched);
        let mut ranks: Vec<(bool, u64)> = self
            .series
            .values()
            .flat_map(|m| m.values().map(rank))
            .collect();
        let drop = (self.count / 10).max(self.count - self.settings.max_series);
        let (_, cut, _) = ranks.select_nth_unstable(drop.saturating_sub(1));
        let cut = *cut;
        let mut left = drop;
        for metrics in self.series.values_mut() {
            metrics.retain(|_, s| {
                let gone = left > 0 && rank(s) <= cut;
                left -= usize::from(gone);
                !gone
            });
        }
        self.series.retain(|_, m| !m.is_empty());
        self.count -= drop - left;
        tracing::info!(
            dropped = drop - left,
            kept = self.count,
            "anomaly detector: series seen least recently dropped (anomalies.max_series)"
        );
    }
}

impl Series {
    fn new(x: f64, time: DateTime<Utc>, window: usize, batch: u64) -> Series {
        let mut values = Vec::with_capacity(window);
        values.push(x);
        Series {
            window: values,
            next: 0,
            seen: 1,
            last_time: time,
            last_value: x,
            run: 1,
            repeat_rate: 0.0,
            interval: 0.0,
            fast: x,
            baseline: x,
            step: 0.0,
            previous_kept: x,
            drift_run: 0,
            touched: batch,
        }
    }

    /// Starts the series again from this reading, with a new warm-up.
    fn restart(&mut self, x: f64, time: DateTime<Utc>, window: usize, batch: u64, why: &str) {
        tracing::debug!(why, "anomaly series restarted");
        counter!("sluice_anomaly_series_restarted_total").increment(1);
        *self = Series::new(x, time, window, batch);
    }

    fn is_finite(&self) -> bool {
        [
            self.fast,
            self.baseline,
            self.step,
            self.previous_kept,
            self.interval,
            self.repeat_rate,
        ]
        .iter()
        .all(|v| v.is_finite())
    }

    /// Takes the run that just ended into the repeat rate. Only ended runs count, so a run
    /// is judged against the series' past; and only as far as `stuck_after`, so one stuck
    /// episode does not make the series look like one that repeats.
    fn end_run(&mut self, stuck_after: usize) {
        let repeats = self.run.min(stuck_after) - 1;
        let kept = (1.0 - RATE_ALPHA).powi(repeats as i32);
        self.repeat_rate = (1.0 - (1.0 - self.repeat_rate) * kept) * (1.0 - RATE_ALPHA);
    }

    fn push(&mut self, x: f64, limit: usize) {
        if self.window.len() < limit {
            self.window.push(x);
        } else {
            self.window[self.next] = x;
            self.next = (self.next + 1) % self.window.len();
        }
    }
}

/// The window's median and its spread in standard deviations: 1.4826 x MAD, the mean
/// absolute deviation when over half the values are equal (MAD 0), and `floor` at least,
/// so a perfectly flat series does not flag every tiny change.
fn median_and_scale(window: &[f64], scratch: &mut Vec<f64>, floor: f64) -> (f64, f64) {
    scratch.clear();
    scratch.extend_from_slice(window);
    let median = median_of(scratch);
    for v in scratch.iter_mut() {
        *v = (*v - median).abs();
    }
    let mut scale = MAD_TO_SIGMA * median_of(scratch);
    if scale == 0.0 {
        // sqrt(pi/2): the mean absolute deviation of a normal distribution in sigmas.
        scale = 1.2533 * scratch.iter().sum::<f64>() / scratch.len() as f64;
    }
    (median, scale.max(floor))
}

/// The median of `values`, reordering them.
fn median_of(values: &mut [f64]) -> f64 {
    let n = values.len();
    let (_, mid, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    let mid = *mid;
    if n % 2 == 1 {
        return mid;
    }
    let below = values[..n / 2].iter().copied().fold(f64::MIN, f64::max);
    (mid + below) / 2.0
}

/// Counts what Kafka did not take; the rows are in the database either way.
struct Reports;

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            counter!("sluice_anomalies_unpublished_total").increment(1);
            tracing::warn!(error = %e, "anomaly not published to kafka");
        }
    }
}

/// Sends anomalies to their Kafka topic, keyed by device, without ever waiting: librdkafka
/// retries in the background, and what it cannot deliver or queue is counted and logged.
pub struct Publisher {
    producer: ThreadedProducer<Reports>,
    topic: String,
}

impl Publisher {
    pub fn new(kafka: &KafkaSettings, topic: &str) -> Result<Arc<Publisher>, KafkaError> {
        let mut config = client_config(kafka);
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", kafka.delivery_timeout_ms.to_string());
        Ok(Arc::new(Publisher {
            producer: config.create_with_context(Reports)?,
            topic: topic.to_owned(),
        }))
    }

    /// Waits up to `timeout` for every queued anomaly to be delivered (or given up on): a
    /// graceful stop's last step. Blocks; call it from `spawn_blocking`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    /// Anomalies queued and not yet delivered or given up on.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }

    pub fn publish(&self, anomalies: &[Anomaly]) {
        for a in anomalies {
            // Plain strings, numbers and a timestamp always serialise.
            let payload = serde_json::to_vec(a).unwrap_or_default();
            let record = BaseRecord::to(&self.topic)
                .key(&a.device_id)
                .payload(&payload);
            if let Err((e, _)) = self.producer.send(record) {
                counter!("sluice_anomalies_unpublished_total").increment(1);
                let full = e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull);
                tracing::warn!(error = %e, queue_full = full, "anomaly not queued for kafka");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AnomalySettings {
        AnomalySettings::default()
    }

    /// A deterministic noise in [-1, 1].
    fn noise(i: u64) -> f64 {
        let mut x = i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 29;
        (x % 2_000_001) as f64 / 1_000_000.0 - 1.0
    }

    fn at(i: u64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_700_000_000_000 + i as i64 * 1000).expect("valid")
    }

    fn reading(metric: &str, i: u64, value: f64) -> Reading {
        Reading {
            metric: metric.into(),
            time: at(i),
            value: Some(value),
            ..Reading::default()
        }
    }

    /// Feeds `values` (index, value) of one series, one batch each; returns the anomalies.
    fn feed(d: &mut Detector, device: &str, values: &[(u64, f64)]) -> Vec<Anomaly> {
        values
            .iter()
            .flat_map(|&(i, v)| d.observe([(device, &reading("temp", i, v))]))
            .collect()
    }

    fn series(n: u64, base: f64, amplitude: f64) -> Vec<(u64, f64)> {
        (0..n).map(|i| (i, base + amplitude * noise(i))).collect()
    }

    #[test]
    fn a_noisy_and_a_quiet_series_are_each_judged_against_themselves() {
        let mut d = Detector::new(settings());
        assert!(feed(&mut d, "noisy", &series(200, 20.0, 5.0)).is_empty());
        assert!(feed(&mut d, "quiet", &series(200, 20.0, 0.01)).is_empty());
        // +2 is ordinary for the noisy device and far out for the quiet one.
        let noisy = feed(&mut d, "noisy", &[(200, 22.0)]);
        assert!(noisy.is_empty(), "{noisy:?}");
        let quiet = feed(&mut d, "quiet", &[(200, 22.0)]);
        assert_eq!(quiet.len(), 1, "{quiet:?}");
        assert_eq!(quiet[0].kind, Kind::Spike);
        assert_eq!(d.series(), 2);
    }

    #[test]
    fn nothing_is_judged_during_the_warm_up() {
        let mut d = Detector::new(settings());
        let mut values = series(settings().warmup as u64, 20.0, 0.1);
        values[10].1 = 1000.0;
        assert!(feed(&mut d, "d", &values).is_empty());
    }

    #[test]
    fn a_spike_is_flagged_with_its_band_and_score_and_does_not_move_the_band() {
        let mut d = Detector::new(settings());
        feed(&mut d, "d", &series(100, 50.0, 1.0));
        let found = feed(&mut d, "d", &[(100, 80.0)]);
        assert_eq!(found.len(), 1, "{found:?}");
        let a = &found[0];
        assert_eq!(
            (a.kind, a.device_id.as_str(), a.metric.as_str()),
            (Kind::Spike, "d", "temp")
        );
        assert_eq!((a.time, a.value), (at(100), 80.0));
        assert!((a.expected - 50.0).abs() < 0.5, "{a:?}");
        assert!(
            a.low < a.expected && a.expected < a.high && a.high < 80.0,
            "{a:?}"
        );
        assert!(a.score > settings().threshold, "{a:?}");
        // The band after it is about the same, and normal values pass.
        let after = feed(&mut d, "d", &series(200, 50.0, 1.0)[101..]);
        assert!(after.is_empty(), "{after:?}");
    }

    #[test]
    fn a_stuck_value_is_flagged_once_per_run_and_a_repeating_series_never() {
        let s = settings();
        let mut d = Detector::new(s.clone());
        let mut values = series(100, 10.0, 1.0);
        values.extend((100..130).map(|i| (i, 10.25)));
        let found = feed(&mut d, "d", &values);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, Kind::Stuck);
        // The first 7.25 and stuck_after - 1 repeats.
        assert_eq!(found[0].time, at(100 + s.stuck_after as u64 - 1));
        assert_eq!(found[0].score, s.stuck_after as f64);
        // Integer readings that often stay put are never stuck.
        let steps: Vec<(u64, f64)> = (0..300).map(|i| (i, ((i / 15) % 3) as f64)).collect();
        let found = feed(&mut d, "steps", &steps);
        assert!(found.iter().all(|a| a.kind != Kind::Stuck), "{found:?}");
    }

    #[test]
    fn resent_and_late_readings_are_passed_over() {
        let mut d = Detector::new(settings());
        feed(&mut d, "d", &series(100, 50.0, 1.0));
        assert_eq!(feed(&mut d, "d", &[(100, 90.0)]).len(), 1);
        // The same reading again (a resend), and an older one.
        assert!(feed(&mut d, "d", &[(100, 90.0), (50, 90.0)]).is_empty());
    }

    #[test]
    fn a_clock_gone_far_back_restarts_the_series() {
        let mut d = Detector::new(settings());
        let later: Vec<(u64, f64)> = series(100, 50.0, 1.0)
            .into_iter()
            .map(|(i, v)| (i + 10_000, v))
            .collect();
        feed(&mut d, "d", &later);
        // The clock is reset: readings from long before are taken, not passed over for
        // the next 10,000 seconds.
        assert!(feed(&mut d, "d", &series(100, 50.0, 1.0)).is_empty());
        let found = feed(&mut d, "d", &[(100, 80.0)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].kind, found[0].time), (Kind::Spike, at(100)));
    }

    #[test]
    fn a_series_whose_state_overflows_starts_again() {
        let mut d = Detector::new(settings());
        // Huge values: the median of two overflows to inf, and so would the steps.
        let huge: Vec<(u64, f64)> = (0..100)
            .map(|i| (i, if i % 2 == 0 { 1e308 } else { -0.9e308 }))
            .chain((100..200).map(|i| (i, if i % 2 == 0 { 1e308 } else { 0.9e308 })))
            .collect();
        feed(&mut d, "d", &huge);
        let normal: Vec<(u64, f64)> = series(400, 50.0, 1.0)[200..].to_vec();
        feed(&mut d, "d", &normal);
        let found = feed(&mut d, "d", &[(400, 80.0)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, Kind::Spike);
        let state = &d.series["d"]["temp"];
        assert!(state.is_finite() && state.window.iter().all(|v| v.is_finite()));
        // And a slow drift is still seen (an inf average would hide it for good).
        let drift: Vec<(u64, f64)> = (401..500)
            .map(|i| (i, 50.0 + noise(i) + 0.15 * (i - 400) as f64))
            .collect();
        let found = feed(&mut d, "d", &drift);
        assert!(found.iter().any(|a| a.kind == Kind::Drift), "{found:?}");
    }

    #[test]
    fn a_gap_is_a_dropout_and_a_slow_drift_is_seen() {
        let mut d = Detector::new(settings());
        feed(&mut d, "d", &series(100, 50.0, 1.0));
        let found = feed(&mut d, "d", &[(130, 50.0)]);
        assert_eq!(found.len(), 1, "{found:?}");
        let a = &found[0];
        assert_eq!((a.kind, a.value, a.expected), (Kind::Dropout, 31.0, 1.0));
        let drift: Vec<(u64, f64)> = (131..230)
            .map(|i| (i, 50.0 + noise(i) + 0.15 * (i - 130) as f64))
            .collect();
        let found = feed(&mut d, "d", &drift);
        assert!(found.iter().any(|a| a.kind == Kind::Drift), "{found:?}");
    }

    #[test]
    fn series_seen_least_recently_are_dropped_past_max_series() {
        let mut d = Detector::new(AnomalySettings {
            max_series: 100,
            ..settings()
        });
        for n in 0..150 {
            d.observe([(format!("d{n}").as_str(), &reading("m", 0, 1.0))]);
        }
        assert!(d.series() <= 100, "{}", d.series());
        assert!(d.series() >= 90, "{}", d.series());
    }

    #[test]
    fn a_warmed_series_survives_a_flood_of_new_series() {
        let mut d = Detector::new(AnomalySettings {
            max_series: 100,
            ..settings()
        });
        feed(&mut d, "old", &series(100, 50.0, 1.0));
        // Many devices, each newer than "old", each seen once.
        for n in 0..1000 {
            d.observe([(format!("d{n}").as_str(), &reading("m", 0, 1.0))]);
        }
        assert!(d.series() <= 100, "{}", d.series());
        // Still warmed up: a spike is flagged at once.
        let found = feed(&mut d, "old", &[(100, 80.0)]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, Kind::Spike);
    }

    #[test]
    fn one_device_holds_at_most_max_series_per_device() {
        let mut d = Detector::new(AnomalySettings {
            max_series_per_device: 3,
            ..settings()
        });
        for n in 0..10 {
            d.observe([("d", &reading(&format!("m{n}"), 0, 1.0))]);
        }
        d.observe([("other", &reading("m", 0, 1.0))]);
        assert_eq!(d.series(), 4);
    }

    #[test]
    fn median_and_scale_follow_the_definitions() {
        let mut scratch = Vec::new();
        let (m, s) = median_and_scale(&[1.0, 2.0, 3.0, 4.0, 100.0], &mut scratch, 0.0);
        assert_eq!(m, 3.0);
        assert!((s - MAD_TO_SIGMA).abs() < 1e-12);
        let (m, s) = median_and_scale(&[5.0; 8], &mut scratch, 0.01);
        assert_eq!((m, s), (5.0, 0.01));
        let (m, _) = median_and_scale(&[1.0, 2.0, 3.0, 4.0], &mut scratch, 0.0);
        assert_eq!(m, 2.5);
    }
}
