//! Labelled anomalies (`--anomalies FRACTION --labels PATH`): each sensor's metric becomes a
//! noisy signal of its own (level, noise and a slow wave differ per sensor) into which
//! spikes, stuck values, drifts and dropouts are injected, each written down as a label;
//! `score` then compares the labels with what Sluice stored in `anomalies`.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Readings of a series before any anomaly, so that a detector has warmed up.
const CLEAN_READINGS: u64 = 100;
/// Normal readings between two anomalies of a series, so each is judged against a normal
/// past (longer than the detector's default window of 64).
const COOLDOWN_READINGS: u64 = 100;

/// One injected anomaly: readings of `metric` of `device` timed `start_ms` to `end_ms`.
/// For a dropout, the first reading that was not sent and the first one after the gap.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Label {
    pub device: String,
    pub metric: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub kind: String,
}

/// The first line of a labels file: which devices and reading times the run covered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub prefix: String,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// What the sensors inject, and the labels they write down.
#[derive(Debug)]
pub struct Injection {
    /// Chance that a normal reading (after the clean start and cool-down) begins one.
    pub fraction: f64,
    pub labels: Mutex<Vec<Label>>,
}

enum Episode {
    /// Readings left, and the value repeated.
    Stuck { left: u64, value: f64, start: i64 },
    /// Readings done and in all, and the peak offset.
    Drift {
        done: u64,
        len: u64,
        peak: f64,
        start: i64,
    },
    /// Readings still to skip, and the time of the first one skipped.
    Dropout { left: u64, start: i64 },
}

/// One series' signal: `level + wave + noise`, with anomalies injected.
pub struct Signal {
    rng: u64,
    level: f64,
    noise: f64,
    wave: f64,
    period: f64,
    n: u64,
    last: f64,
    calm: u64,
    episode: Option<Episode>,
}

impl Signal {
    /// A signal of its own for a sensor's index and metric.
    pub fn new(index: usize, metric: usize) -> Signal {
        let mut s = Signal {
            rng: (index as u64) << 16 | metric as u64,
            level: 0.0,
            noise: 0.0,
            wave: 0.0,
            period: 0.0,
            n: 0,
            last: 0.0,
            calm: CLEAN_READINGS,
            episode: None,
        };
        s.level = 100.0 * s.uniform();
        // From 0.01 to 5, evenly on a log scale: quiet and noisy sensors side by side.
        s.noise = 0.01 * 500f64.powf(s.uniform());
        s.wave = 2.0 * s.noise * s.uniform();
        s.period = 3000.0 + 3000.0 * s.uniform();
        s
    }

    /// SplitMix64, as a uniform number in [0, 1).
    fn uniform(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal number (Box-Muller).
    fn gauss(&mut self) -> f64 {
        let u = 1.0 - self.uniform();
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    fn between(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.uniform()
    }

    /// The value of the reading timed `ts`, or None when it is not sent (a dropout);
    /// labels of finished anomalies go to `injection`.
    pub fn next(
        &mut self,
        device: &str,
        metric: &str,
        ts: i64,
        injection: &Injection,
    ) -> Option<f64> {
        self.n += 1;
        let phase = std::f64::consts::TAU * self.n as f64 / self.period;
        let normal = self.level + self.wave * phase.sin() + self.noise * self.gauss();
        let label = |kind: &str, start_ms: i64| {
            if let Ok(mut labels) = injection.labels.lock() {
                labels.push(Label {
                    device: device.to_owned(),
                    metric: metric.to_owned(),
                    start_ms,
                    end_ms: ts,
                    kind: kind.to_owned(),
                });
            }
        };
        let value = match self.episode.take() {
            None if self.calm > 0 => {
                self.calm -= 1;
                normal
            }
            None if self.uniform() < injection.fraction => {
                self.calm = COOLDOWN_READINGS;
                match (self.uniform() * 4.0) as u32 {
                    0 => {
                        label("spike", ts);
                        let size = self.between(8.0, 16.0) * self.noise;
                        normal + if self.uniform() < 0.5 { size } else { -size }
                    }
                    1 => {
                        let left = self.between(15.0, 40.0) as u64 - 1;
                        self.episode = Some(Episode::Stuck {
                            left,
                            value: self.last,
                            start: ts,
                        });
                        self.last
                    }
                    2 => {
                        let peak = self.between(8.0, 12.0) * self.noise;
                        let peak = if self.uniform() < 0.5 { peak } else { -peak };
                        let len = self.between(80.0, 120.0) as u64;
                        self.episode = Some(Episode::Drift {
                            done: 0,
                            len,
                            peak,
                            start: ts,
                        });
                        normal
                    }
                    _ => {
                        let left = self.between(10.0, 30.0) as u64;
                        self.episode = Some(Episode::Dropout { left, start: ts });
                        return None;
                    }
                }
            }
            None => normal,
            Some(Episode::Stuck { left, value, start }) => {
                if left > 1 {
                    self.episode = Some(Episode::Stuck {
                        left: left - 1,
                        value,
                        start,
                    });
                } else {
                    label("stuck", start);
                }
                value
            }
            Some(Episode::Drift {
                done,
                len,
                peak,
                start,
            }) => {
                // Up to the peak and back down, as a slowly failing sensor might.
                let done = done + 1;
                let half = len as f64 / 2.0;
                let offset = peak * (1.0 - (done as f64 - half).abs() / half);
                if done < len {
                    self.episode = Some(Episode::Drift {
                        done,
                        len,
                        peak,
                        start,
                    });
                } else {
                    label("drift", start);
                }
                normal + offset
            }
            Some(Episode::Dropout { left, start }) => {
                if left > 1 {
                    self.episode = Some(Episode::Dropout {
                        left: left - 1,
                        start,
                    });
                    return None;
                }
                label("dropout", start);
                normal
            }
        };
        self.last = value;
        Some(value)
    }
}

/// Writes the run line and the labels, one JSON object a line.
pub fn write(path: &Path, run: &Run, labels: &[Label]) -> anyhow::Result<()> {
    let write = || -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        serde_json::to_writer(&mut out, run)?;
        writeln!(out)?;
        for l in labels {
            serde_json::to_writer(&mut out, l)?;
            writeln!(out)?;
        }
        out.flush()
    };
    write().with_context(|| format!("writing labels to {}", path.display()))
}

fn read(path: &Path) -> anyhow::Result<(Run, Vec<Label>)> {
    let context = || format!("labels file {}", path.display());
    let file = std::fs::File::open(path).with_context(context)?;
    let mut lines = std::io::BufReader::new(file).lines();
    let first = lines.next().context("empty")?.with_context(context)?;
    let run: Run = serde_json::from_str(&first).with_context(context)?;
    let mut labels = Vec::new();
    for line in lines {
        labels.push(serde_json::from_str(&line.with_context(context)?).with_context(context)?);
    }
    Ok((run, labels))
}

/// How the detector did on one kind.
#[derive(Debug, Default, Serialize)]
pub struct Score {
    pub labelled: usize,
    pub detected: usize,
    /// Detected anomalies of this kind inside a label of this kind.
    pub true_positives: usize,
    /// Labels of this kind with at least one such anomaly.
    pub recalled: usize,
    pub precision: f64,
    pub recall: f64,
}

/// Compares the labels with the `anomalies` rows of the run's devices and times: an
/// anomaly matches a label of the same device, metric and kind whose span, widened by
/// `tolerance_ms` either way, holds its time.
pub async fn score(
    database_url: &str,
    labels_path: &Path,
    tolerance_ms: i64,
) -> anyhow::Result<BTreeMap<String, Score>> {
    let (run, labels) = read(labels_path)?;
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("score: cannot connect to {database_url}"))?;
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT device_id, metric, kind, (extract(epoch FROM time) * 1000)::bigint \
             FROM anomalies WHERE starts_with(device_id, $1) \
             AND time BETWEEN to_timestamp($2::float8 / 1000) AND to_timestamp($3::float8 / 1000)",
            &[
                &format!("{}-", run.prefix),
                &(run.from_ms as f64),
                &(run.to_ms as f64),
            ],
        )
        .await
        .context("score: querying anomalies")?;
    // Each series' labels of each kind, by index.
    let mut by_series: HashMap<(&str, &str, &str), Vec<usize>> = HashMap::new();
    for (i, l) in labels.iter().enumerate() {
        by_series
            .entry((&l.device, &l.metric, &l.kind))
            .or_default()
            .push(i);
    }
    let mut scores: BTreeMap<String, Score> = ["spike", "stuck", "drift", "dropout"]
        .into_iter()
        .map(|k| (k.to_owned(), Score::default()))
        .collect();
    for l in &labels {
        scores.entry(l.kind.clone()).or_default().labelled += 1;
    }
    let mut recalled = vec![false; labels.len()];
    for row in &rows {
        let (device, metric, kind): (&str, &str, &str) = (row.get(0), row.get(1), row.get(2));
        let time: i64 = row.get(3);
        let score = scores.entry(kind.to_owned()).or_default();
        score.detected += 1;
        let matched = by_series
            .get(&(device, metric, kind))
            .into_iter()
            .flatten()
            .filter(|&&i| {
                let l = &labels[i];
                l.start_ms - tolerance_ms <= time && time <= l.end_ms + tolerance_ms
            });
        let mut any = false;
        for &i in matched {
            recalled[i] = true;
            any = true;
        }
        score.true_positives += usize::from(any);
    }
    for (l, hit) in labels.iter().zip(&recalled) {
        if *hit {
            scores.entry(l.kind.clone()).or_default().recalled += 1;
        }
    }
    for s in scores.values_mut() {
        s.precision = ratio(s.true_positives, s.detected);
        s.recall = ratio(s.recalled, s.labelled);
    }
    Ok(scores)
}

/// A share, 1 when there was nothing to count (nothing detected is no false alarm).
fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        1.0
    } else {
        part as f64 / whole as f64
    }
}

pub fn print(scores: &BTreeMap<String, Score>) {
    println!(
        "{:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
        "kind", "labelled", "detected", "true pos", "recalled", "precision", "recall"
    );
    for (kind, s) in scores {
        println!(
            "{:<8} {:>9} {:>9} {:>9} {:>9} {:>9.3} {:>7.3}",
            kind, s.labelled, s.detected, s.true_positives, s.recalled, s.precision, s.recall
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_injected_and_labelled_within_its_readings() {
        let injection = Injection {
            fraction: 0.05,
            labels: Mutex::new(Vec::new()),
        };
        let mut signal = Signal::new(3, 0);
        let mut skipped = 0;
        for i in 0..20_000 {
            if signal.next("d", "m", i * 100, &injection).is_none() {
                skipped += 1;
            }
        }
        let labels = injection.labels.lock().expect("labels");
        for kind in ["spike", "stuck", "drift", "dropout"] {
            assert!(labels.iter().any(|l| l.kind == kind), "no {kind}");
        }
        assert!(labels
            .iter()
            .all(|l| l.start_ms <= l.end_ms && l.start_ms >= 100 * 100));
        assert!(skipped > 0);
    }
}
