//! `GET /v1/devices`: the devices that have readings, a page at a time (or one by its
//! `id`), each with its
//! metrics, first and last reading, readings in the last hour and last value per metric.
//! Device ids come from a skip scan of the `(device_id, metric, time)` key, so a page
//! costs a few index probes per device however many readings there are.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;

use super::params::{page, Params};
use super::{answer, Api, ApiError};

#[derive(Serialize)]
struct Device {
    device_id: String,
    metrics: Vec<String>,
    first_seen: Option<DateTime<Utc>>,
    last_seen: Option<DateTime<Utc>>,
    readings_last_hour: i64,
    last: BTreeMap<String, Last>,
}

#[derive(Serialize)]
struct Last {
    time: DateTime<Utc>,
    value: Option<f64>,
}

/// Device ids after `$1`, in order, containing `$2` (any case); `$3` of them.
const IDS: &str = "
WITH RECURSIVE ids AS (
  (SELECT device_id FROM readings WHERE device_id > $1 ORDER BY device_id LIMIT 1)
  UNION ALL
  SELECT (SELECT r.device_id FROM readings r WHERE r.device_id > ids.device_id
           ORDER BY r.device_id LIMIT 1)
    FROM ids WHERE ids.device_id IS NOT NULL
)
SELECT device_id FROM ids
 WHERE device_id IS NOT NULL AND strpos(lower(device_id), lower($2)) > 0
 LIMIT $3";

/// Per device of `$1` and metric: first reading, last reading and value, last hour's count.
const DETAILS: &str = "
WITH RECURSIVE m AS (
  SELECT d AS device_id,
         (SELECT metric FROM readings WHERE device_id = d ORDER BY metric LIMIT 1) AS metric
    FROM unnest($1::text[]) d
  UNION ALL
  SELECT m.device_id,
         (SELECT r.metric FROM readings r WHERE r.device_id = m.device_id AND r.metric > m.metric
           ORDER BY r.metric LIMIT 1)
    FROM m WHERE m.metric IS NOT NULL
)
SELECT m.device_id, m.metric,
       (SELECT time FROM readings f WHERE f.device_id = m.device_id AND f.metric = m.metric
         ORDER BY time LIMIT 1) AS first,
       l.time, l.value,
       (SELECT count(*) FROM readings h WHERE h.device_id = m.device_id AND h.metric = m.metric
           AND h.time > now() - INTERVAL '1 hour') AS last_hour
  FROM m
  CROSS JOIN LATERAL (SELECT time, value FROM readings l
                       WHERE l.device_id = m.device_id AND l.metric = m.metric
                       ORDER BY time DESC LIMIT 1) l
 WHERE m.metric IS NOT NULL
 ORDER BY m.device_id, m.metric";

pub async fn list(State(api): State<Arc<Api>>, RawQuery(query): RawQuery) -> Response {
    answer(async move { devices(&api, query.as_deref()).await }).await
}

async fn devices(api: &Api, query: Option<&str>) -> Result<serde_json::Value, ApiError> {
    let params = Params::parse(query, &["id", "search", "limit", "after"])?;
    let limit = params.limit(100, 1000)?;
    let search = params.one("search")?.unwrap_or("");
    let after = params
        .after(1)?
        .map(|mut k| k.remove(0))
        .unwrap_or_default();
    let db = api.pool.get().await?;
    let (ids, next) = match params.one("id")? {
        // One device by its exact id (a link to it), or none.
        Some(id) => {
            let sql = "SELECT device_id FROM readings WHERE device_id = $1 LIMIT 1";
            let rows = db.query(sql, &[&id]).await?;
            (rows.iter().map(|r| r.get(0)).collect(), None)
        }
        None => {
            let rows = db
                .query(IDS, &[&after, &search, &(limit as i64 + 1)])
                .await?;
            let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            page(ids, limit, |id| vec![id.clone()])
        }
    };
    // The database's order (its collation), which the cursor follows too.
    let mut devices: Vec<Device> = ids
        .iter()
        .map(|id| Device {
            device_id: id.clone(),
            metrics: Vec::new(),
            first_seen: None,
            last_seen: None,
            readings_last_hour: 0,
            last: BTreeMap::new(),
        })
        .collect();
    let index: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    for row in db.query(DETAILS, &[&ids]).await? {
        let Some(&i) = index.get(row.get::<_, &str>(0)) else {
            continue;
        };
        let device = &mut devices[i];
        let metric: String = row.get(1);
        let first: DateTime<Utc> = row.get(2);
        let time: DateTime<Utc> = row.get(3);
        device.first_seen = Some(device.first_seen.map_or(first, |f| f.min(first)));
        device.last_seen = Some(device.last_seen.map_or(time, |l| l.max(time)));
        device.readings_last_hour += row.get::<_, i64>(5);
        device.last.insert(
            metric.clone(),
            Last {
                time,
                value: row.get(4),
            },
        );
        device.metrics.push(metric);
    }
    Ok(json!({"devices": devices, "next": next}))
}
