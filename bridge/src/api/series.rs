//! Readings over time: `GET /v1/series` (bucketed, from `readings_1m` when the buckets are
//! whole minutes and the rollup has been refreshed, else from `readings`), `GET /v1/summary` (per device and metric over a
//! range, percentiles included) and `GET /v1/anomalies` (what the detector flagged).

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::response::Response;
use chrono::{DateTime, Duration, TimeZone, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use super::params::{bad, page, Params};
use super::{answer, Api, ApiError};

/// Most buckets one answer may have, all devices together: a chart needs far fewer.
const MAX_POINTS: i64 = 10_000;
/// Widths chosen from the range when the caller gives none: the smallest that keeps a
/// series under about 500 points.
const WIDTHS: [i64; 14] = [
    1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 10_800, 21_600, 43_200, 86_400,
];
const TARGET_POINTS: i64 = 500;

#[derive(Serialize)]
struct Point {
    time: DateTime<Utc>,
    count: i64,
    min: Option<f64>,
    max: Option<f64>,
    avg: Option<f64>,
    last: Option<f64>,
}

#[derive(Serialize)]
struct Series {
    device_id: String,
    points: Vec<Point>,
}

/// Buckets of `$1` seconds from the one-minute rollup; an average weighs each minute by
/// its count, the last value is the latest minute's.
const FROM_ROLLUP: &str = "
SELECT device_id, time_bucket(make_interval(secs => $1), bucket) AS t,
       sum(count)::bigint, min(min), max(max),
       sum(avg * count) / nullif(sum(count) FILTER (WHERE avg IS NOT NULL), 0),
       (array_agg(last ORDER BY bucket DESC))[1]
  FROM readings_1m
 WHERE device_id = ANY($2) AND metric = $3 AND bucket >= $4 AND bucket < $5
 GROUP BY device_id, t ORDER BY device_id, t";

const FROM_READINGS: &str = "
SELECT device_id, time_bucket(make_interval(secs => $1), time) AS t,
       count(*), min(value), max(value), avg(value),
       (array_agg(value ORDER BY time DESC))[1]
  FROM readings
 WHERE device_id = ANY($2) AND metric = $3 AND time >= $4 AND time < $5
 GROUP BY device_id, t ORDER BY device_id, t";

pub async fn series(State(api): State<Arc<Api>>, RawQuery(query): RawQuery) -> Response {
    answer(async move { bucketed(&api, query.as_deref()).await }).await
}

pub async fn summary(State(api): State<Arc<Api>>, RawQuery(query): RawQuery) -> Response {
    answer(async move { summaries(&api, query.as_deref()).await }).await
}

pub async fn anomalies(State(api): State<Arc<Api>>, RawQuery(query): RawQuery) -> Response {
    answer(async move { flagged(&api, query.as_deref()).await }).await
}

async fn bucketed(api: &Api, query: Option<&str>) -> Result<Value, ApiError> {
    let params = Params::parse(query, &["device", "metric", "from", "to", "bucket"])?;
    let devices = params.devices()?;
    if devices.is_empty() {
        return Err(bad("name at least one device".into()));
    }
    let metric = params
        .one("metric")?
        .ok_or_else(|| bad("name the metric".into()))?;
    let (from, to) = params.range(Duration::hours(1), Duration::days(366))?;
    let span = (to - from).num_seconds().max(1);
    let width = match params.one("bucket")? {
        Some(text) => parse_width(text)?,
        None => WIDTHS
            .into_iter()
            .find(|w| span / w <= TARGET_POINTS)
            .unwrap_or(86_400),
    };
    // Whole buckets, so both sources answer for the same instants.
    let (from, to) = (align(from, width, false), align(to, width, true));
    let points = (to - from).num_seconds() / width * devices.len() as i64;
    if points > MAX_POINTS {
        return Err(bad(format!(
            "{points} buckets of {width} s (all devices together); at most {MAX_POINTS}: ask for wider buckets, fewer devices or a shorter range"
        )));
    }
    let db = api.pool.get().await?;
    // readings_1m is brought up to date every rollup_refresh (TimescaleDB's real-time
    // aggregate adds only minutes past its last refresh, not late readings in minutes it
    // already has), so the newest buckets come from the readings themselves.
    let rollup_until = match width % 60 == 0 {
        false => from,
        true => {
            let refreshed = Utc::now()
                .checked_sub_signed(api.rollup_lag)
                .unwrap_or(from);
            align(refreshed, width, false).clamp(from, to)
        }
    };
    let width_s = width as f64;
    let mut rows = Vec::new();
    if rollup_until > from {
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&width_s, &devices, &metric, &from, &rollup_until];
        rows.extend(db.query(FROM_ROLLUP, &args).await?);
    }
    if rollup_until < to {
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&width_s, &devices, &metric, &rollup_until, &to];
        rows.extend(db.query(FROM_READINGS, &args).await?);
    }
    let mut series: Vec<Series> = devices
        .iter()
        .map(|d| Series {
            device_id: d.clone(),
            points: Vec::new(),
        })
        .collect();
    for row in rows {
        let device: &str = row.get(0);
        if let Some(s) = series.iter_mut().find(|s| s.device_id == device) {
            s.points.push(Point {
                time: row.get(1),
                count: row.get(2),
                min: row.get(3),
                max: row.get(4),
                avg: row.get(5),
                last: row.get(6),
            });
        }
    }
    Ok(json!({
        "metric": metric,
        "from": from,
        "to": to,
        "bucket_seconds": width,
        "source": if rollup_until > from { "readings_1m" } else { "readings" },
        // Buckets from here on come from the readings (null: none do).
        "raw_from": (rollup_until < to).then_some(rollup_until),
        "series": series,
    }))
}

/// `90`, `90s`, `5m`, `1h` or `1d`: whole seconds, at least one, at most a week.
fn parse_width(text: &str) -> Result<i64, ApiError> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => 0,
    };
    match number.parse::<i64>() {
        Ok(n) if scale > 0 && n > 0 && n.checked_mul(scale).is_some_and(|w| w <= 7 * 86_400) => {
            match scale >= 60 || n * scale < 60 || n * scale % 60 == 0 {
                true => Ok(n * scale),
                false => Err(bad(format!(
                    "bucket={text:?}: a bucket of a minute or more is whole minutes (readings_1m serves it)"
                ))),
            }
        }
        _ => Err(bad(format!(
            "bucket={text:?}: give seconds, or a number with s, m, h or d, up to 7d"
        ))),
    }
}

/// `t` down (or up) to a bucket boundary of `width` seconds, counted from
/// 2000-01-03T00:00Z as `time_bucket` counts them.
fn align(t: DateTime<Utc>, width: i64, up: bool) -> DateTime<Utc> {
    const ORIGIN: i64 = 946_857_600;
    let since = t.timestamp() - ORIGIN;
    let mut start = since.div_euclid(width) * width;
    let exact = start == since && t.timestamp_subsec_nanos() == 0;
    if up && !exact {
        start += width;
    }
    Utc.timestamp_opt(ORIGIN + start, 0).single().unwrap_or(t)
}

const SUMMARY: &str = "
SELECT device_id, metric, count(*), min(value), max(value), avg(value),
       (array_agg(value ORDER BY time DESC))[1],
       percentile_cont(0.5) WITHIN GROUP (ORDER BY value),
       percentile_cont(0.9) WITHIN GROUP (ORDER BY value),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY value)
  FROM readings
 WHERE time >= $1 AND time < $2
   AND (cardinality($3::text[]) = 0 OR device_id = ANY($3))
   AND ($4::text IS NULL OR metric = $4)
   AND (device_id, metric) > ($5, $6)
 GROUP BY device_id, metric ORDER BY device_id, metric LIMIT $7";

async fn summaries(api: &Api, query: Option<&str>) -> Result<Value, ApiError> {
    let params = Params::parse(query, &["device", "metric", "from", "to", "limit", "after"])?;
    let devices = params.devices()?;
    let metric = params.one("metric")?;
    let (from, to) = params.range(Duration::hours(1), Duration::days(31))?;
    let limit = params.limit(100, 1000)?;
    let after = params.after(2)?.unwrap_or_else(|| vec![String::new(); 2]);
    let db = api.pool.get().await?;
    let rows = db
        .query(
            SUMMARY,
            &[
                &from,
                &to,
                &devices,
                &metric,
                &after[0],
                &after[1],
                &(limit as i64 + 1),
            ],
        )
        .await?;
    let (rows, next) = page(rows, limit, |r| vec![r.get(0), r.get(1)]);
    let summaries: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "device_id": r.get::<_, &str>(0),
                "metric": r.get::<_, &str>(1),
                "count": r.get::<_, i64>(2),
                "min": r.get::<_, Option<f64>>(3),
                "max": r.get::<_, Option<f64>>(4),
                "avg": r.get::<_, Option<f64>>(5),
                "last": r.get::<_, Option<f64>>(6),
                "p50": r.get::<_, Option<f64>>(7),
                "p90": r.get::<_, Option<f64>>(8),
                "p99": r.get::<_, Option<f64>>(9),
            })
        })
        .collect();
    Ok(json!({"from": from, "to": to, "summaries": summaries, "next": next}))
}

/// Oldest first, or newest first (the paging key then compared the other way).
fn anomalies_sql(newest_first: bool) -> String {
    let (order, past) = match newest_first {
        true => ("DESC", "<"),
        false => ("ASC", ">"),
    };
    format!(
        "SELECT time, device_id, metric, kind, value, expected, low, high, score
           FROM anomalies
          WHERE time >= $1 AND time < $2
            AND (cardinality($3::text[]) = 0 OR device_id = ANY($3))
            AND ($4::text IS NULL OR metric = $4)
            AND ($5::text IS NULL OR kind = $5)
            AND (time, device_id, metric, kind) {past} ($6, $7, $8, $9)
          ORDER BY time {order}, device_id {order}, metric {order}, kind {order} LIMIT $10"
    )
}

async fn flagged(api: &Api, query: Option<&str>) -> Result<Value, ApiError> {
    let params = Params::parse(
        query,
        &[
            "device", "metric", "kind", "from", "to", "limit", "after", "order",
        ],
    )?;
    let newest_first = match params.one("order")? {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(other) => return Err(bad(format!("order={other:?}: asc or desc"))),
    };
    let devices = params.devices()?;
    let metric = params.one("metric")?;
    let kind = params.one("kind")?;
    let (from, to) = params.range(Duration::hours(24), Duration::days(366))?;
    let limit = params.limit(100, 1000)?;
    let after = match params.after(4)? {
        Some(key) => {
            let time = DateTime::parse_from_rfc3339(&key[0])
                .map_err(|_| bad("after must be the `next` of a previous page".into()))?;
            (
                time.with_timezone(&Utc),
                key[1].clone(),
                key[2].clone(),
                key[3].clone(),
            )
        }
        // Outside the range: every row's key is past it, in either order.
        None => {
            let edge = match newest_first {
                false => from - Duration::seconds(1),
                true => to + Duration::seconds(1),
            };
            (edge, String::new(), String::new(), String::new())
        }
    };
    let db = api.pool.get().await?;
    let rows = db
        .query(
            &anomalies_sql(newest_first),
            &[
                &from,
                &to,
                &devices,
                &metric,
                &kind,
                &after.0,
                &after.1,
                &after.2,
                &after.3,
                &(limit as i64 + 1),
            ],
        )
        .await?;
    let (rows, next) = page(rows, limit, |r| {
        let time = r.get::<_, DateTime<Utc>>(0).to_rfc3339();
        vec![time, r.get(1), r.get(2), r.get(3)]
    });
    let anomalies: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "time": r.get::<_, DateTime<Utc>>(0),
                "device_id": r.get::<_, &str>(1),
                "metric": r.get::<_, &str>(2),
                "kind": r.get::<_, &str>(3),
                "value": r.get::<_, Option<f64>>(4),
                "expected": r.get::<_, Option<f64>>(5),
                "low": r.get::<_, Option<f64>>(6),
                "high": r.get::<_, Option<f64>>(7),
                "score": r.get::<_, Option<f64>>(8),
            })
        })
        .collect();
    Ok(json!({"anomalies": anomalies, "next": next}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widths_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_width("5m").unwrap(), 300);
        assert_eq!(parse_width("1d").unwrap(), 86_400);
        assert_eq!(parse_width("45").unwrap(), 45);
        assert_eq!(parse_width("120").unwrap(), 120);
        for bad in [
            "0",
            "-5",
            "5x",
            "m",
            "8d",
            "",
            "90",
            "61s",
            "99999999999999999d",
        ] {
            assert!(parse_width(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn alignment_follows_time_bucket() {
        let t = Utc.with_ymd_and_hms(2026, 11, 30, 12, 34, 56).unwrap();
        assert_eq!(
            align(t, 60, false),
            Utc.with_ymd_and_hms(2026, 11, 30, 12, 34, 0).unwrap()
        );
        assert_eq!(
            align(t, 60, true),
            Utc.with_ymd_and_hms(2026, 11, 30, 12, 35, 0).unwrap()
        );
        assert_eq!(
            align(t, 3600, false),
            Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap()
        );
        let exact = Utc.with_ymd_and_hms(2026, 11, 30, 12, 0, 0).unwrap();
        assert_eq!(align(exact, 3600, true), exact);
        // Weeks start on Mondays, as TimescaleDB's do (2026-11-30 is a Monday).
        assert_eq!(
            align(t, 7 * 86_400, false),
            Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap()
        );
    }
}
