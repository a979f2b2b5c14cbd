//! Counters and the latency histogram that all sensors share, and the report made of them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Default)]
pub struct Counter(AtomicI64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n as i64, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub struct Stats {
    pub sent: Counter,
    pub resent: Counter,
    pub acked: Counter,
    /// Readings in the acknowledged publishes (a SenML pack carries several).
    pub acked_readings: Counter,
    pub skipped: Counter,
    pub unacked: Counter,
    pub connected: Counter,
    pub duplicates_sent: Counter,
    pub reconnects: Counter,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Publish-to-ack latency in microseconds, the whole run and each second of it.
    latency: Mutex<Histogram<u64>>,
    seconds: Mutex<Vec<Histogram<u64>>>,
    started: Instant,
}

/// One second of the run: acknowledgements and their latency.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub t: usize,
    pub acked: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// 1 µs to 10 min at 3 significant digits; bounds are constants, so this holds.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            sent: Counter::default(),
            resent: Counter::default(),
            acked: Counter::default(),
            acked_readings: Counter::default(),
            skipped: Counter::default(),
            unacked: Counter::default(),
            connected: Counter::default(),
            duplicates_sent: Counter::default(),
            reconnects: Counter::default(),
            errors: Mutex::new(BTreeMap::new()),
            latency: Mutex::new(histogram()),
            seconds: Mutex::new(Vec::new()),
            started: Instant::now(),
        }
    }

    /// Acknowledgements per second of the run, with that second's latency.
    pub fn timeline(&self) -> Vec<Second> {
        let seconds = self.seconds.lock().map(|s| s.clone()).unwrap_or_default();
        seconds
            .iter()
            .enumerate()
            .map(|(t, h)| Second {
                t,
                acked: h.len(),
                p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
                p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            })
            .collect()
    }

    pub fn record_latency(&self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 600_000_000);
        if let Ok(mut h) = self.latency.lock() {
            let _ = h.record(us);
        }
        let second = self.started.elapsed().as_secs() as usize;
        if let Ok(mut s) = self.seconds.lock() {
            while s.len() <= second {
                s.push(histogram());
            }
            let _ = s[second].record(us);
        }
    }

    /// Errors are grouped by their text with digits dropped, so "connection refused (os
    /// error 111)" from a thousand sensors is one line.
    pub fn error(&self, text: &str) {
        let kind: String = text.chars().filter(|c| !c.is_ascii_digit()).collect();
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(kind).or_default() += 1;
        }
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }

    pub fn error_count(&self) -> u64 {
        self.errors().values().sum()
    }

    pub fn latency_ms(&self) -> Latency {
        let h = self
            .latency
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Latency {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
            samples: h.len(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub samples: u64,
}
