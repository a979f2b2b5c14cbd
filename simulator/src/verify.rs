//! Verify mode: every reading the gateway acknowledged must be in `readings` exactly once.
//! Waits for the writer to catch up, then reports `lost` and `duplicates`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::sensor::Acked;

#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub acked: usize,
    pub rows: usize,
    /// Acknowledged readings with no row.
    pub lost: usize,
    /// Rows beyond the first for one (device, metric, seq).
    pub duplicates: usize,
    /// From Sluice receiving a publish to its row being written (`ingested_at -
    /// received_at`), over this run's rows.
    pub publish_to_row_ms: RowLatency,
}

#[derive(Debug, Clone, Serialize)]
pub struct RowLatency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

pub async fn verify(
    database_url: &str,
    prefix: &str,
    acked: &[Acked],
    wait: Duration,
) -> anyhow::Result<Verdict> {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("verify: cannot connect to {database_url}"))?;
    tokio::spawn(connection);
    let want: HashSet<(&str, &str, i64)> = acked
        .iter()
        .map(|a| (a.device.as_str(), a.metric.as_str(), a.ts_ms))
        .collect();
    let deadline = Instant::now() + wait;
    loop {
        let rows = client
            .query(
                "SELECT device_id, metric, (extract(epoch FROM time) * 1000)::bigint, seq \
                 FROM readings WHERE starts_with(device_id, $1)",
                &[&format!("{prefix}-")],
            )
            .await
            .context("verify: querying readings")?;
        let mut have = HashSet::with_capacity(rows.len());
        // A reading stored twice under two times would share its seq; SenML has none.
        let mut per_seq: HashMap<(String, String, i64), usize> = HashMap::new();
        for row in &rows {
            let (device, metric): (String, String) = (row.get(0), row.get(1));
            have.insert((device.clone(), metric.clone(), row.get::<_, i64>(2)));
            if let Some(seq) = row.get::<_, Option<i64>>(3) {
                *per_seq.entry((device, metric, seq)).or_default() += 1;
            }
        }
        let lost = want
            .iter()
            .filter(|(d, m, t)| !have.contains(&(d.to_string(), m.to_string(), *t)))
            .count();
        let duplicates = per_seq.values().map(|n| n - 1).sum();
        if lost == 0 || Instant::now() >= deadline {
            let latency = client
                .query_one(
                    "SELECT coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY d), 0), \
                            coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY d), 0), \
                            coalesce(max(d), 0) \
                     FROM (SELECT extract(epoch FROM ingested_at - received_at)::float8 * 1000 AS d \
                           FROM readings WHERE starts_with(device_id, $1)) t",
                    &[&format!("{prefix}-")],
                )
                .await
                .context("verify: publish-to-row latency")?;
            return Ok(Verdict {
                acked: want.len(),
                rows: rows.len(),
                lost,
                duplicates,
                publish_to_row_ms: RowLatency {
                    p50: latency.get(0),
                    p99: latency.get(1),
                    max: latency.get(2),
                },
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
