//! The read API on the real stack: known readings put straight into a database of the
//! test's own, on plain PostgreSQL and on TimescaleDB; each endpoint's numbers checked
//! against what Rust computes from the same rows; bad requests answered 400; readers
//! and devices told apart; the live status and its event stream moving with real
//! publishes.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeZone, Utc};
use common::{connect, insert_reading, set, sha256_hex, storages, wait_for, Gateway, Storage};
use serde_json::{json, Value};

/// `curl` GET of `url` with `args`; the status and the JSON body (Null if none).
fn get(url: &str, args: &[&str]) -> (u16, Value, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-D", "-", "-o", "/dev/stdout"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::Null),
        head.to_owned(),
    )
}

fn api(gateway: &Gateway, path_and_query: &str) -> Value {
    let url = format!("http://127.0.0.1:{}{path_and_query}", gateway.ingest_port);
    let (status, body, _) = get(&url, &[]);
    assert_eq!(status, 200, "{path_and_query}: {body}");
    body
}

struct Sample {
    device: String,
    metric: &'static str,
    time: DateTime<Utc>,
    value: f64,
}

/// Three devices over the last two hours, readings every 37 s (none within two minutes
/// of an hour ago, so "the last hour" is the same for the test and the database).
fn known_data(prefix: &str, now: DateTime<Utc>) -> Vec<Sample> {
    let mut data = Vec::new();
    let hour_ago = now - chrono::Duration::hours(1);
    for k in 1..=190i64 {
        let time = now - chrono::Duration::seconds(37 * k);
        if (time - hour_ago).num_seconds().abs() < 120 {
            continue;
        }
        let wobble = ((k * 7919) % 23) as f64 / 4.0;
        data.push(Sample {
            device: format!("{prefix}-alpha"),
            metric: "temp",
            time,
            value: 20.0 + wobble,
        });
        if k % 2 == 0 {
            data.push(Sample {
                device: format!("{prefix}-beta"),
                metric: "temp",
                time,
                value: 30.0 - wobble,
            });
            data.push(Sample {
                device: format!("{prefix}-beta"),
                metric: "hum",
                time,
                value: 40.0 + 2.0 * wobble,
            });
        }
        if k % 5 == 0 {
            data.push(Sample {
                device: format!("{prefix}-Gamma"),
                metric: "temp",
                time: time - chrono::Duration::hours(24),
                value: -wobble,
            });
        }
    }
    data
}

/// count, min, max, avg, last of `values` in time order.
fn stats(values: &[(DateTime<Utc>, f64)]) -> (i64, f64, f64, f64, f64) {
    let v: Vec<f64> = values.iter().map(|(_, v)| *v).collect();
    let min = v.iter().cloned().fold(f64::MAX, f64::min);
    let max = v.iter().cloned().fold(f64::MIN, f64::max);
    let avg = v.iter().sum::<f64>() / v.len() as f64;
    let last = values
        .iter()
        .max_by_key(|(t, _)| *t)
        .map(|(_, v)| *v)
        .unwrap_or(f64::NAN);
    (v.len() as i64, min, max, avg, last)
}

/// PostgreSQL's percentile_cont: linear between the closest ranks.
fn percentile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = q * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

fn close(a: &Value, b: f64) -> bool {
    a.as_f64()
        .is_some_and(|a| (a - b).abs() < 1e-6 * b.abs().max(1.0))
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
        .expect("rfc3339")
        .with_timezone(&Utc)
}

#[tokio::test]
async fn each_endpoint_agrees_with_the_rows_on_both_storage_paths() {
    for path in storages("each_endpoint_agrees_with_the_rows_on_both_storage_paths") {
        endpoints_on(&path).await;
    }
}

async fn endpoints_on(path: &Storage) {
    let mut gateway = Gateway::configure(None);
    let own = path.database("api");
    gateway.migrate(&path.env(&own));
    let db = connect(&own.url).await;
    let prefix = gateway.id.clone();
    let now = Utc::now()
        .duration_trunc(chrono::Duration::seconds(1))
        .expect("now");
    let data = known_data(&prefix, now);
    for s in &data {
        insert_reading(&db, s.time, &s.device, s.metric, s.value).await;
    }
    let refresh = match path.timescaledb() {
        true => "CALL refresh_continuous_aggregate('readings_1m', NULL, NULL)",
        false => "SELECT sluice_refresh_readings_1m()",
    };
    db.batch_execute(refresh).await.expect("refresh");
    gateway.spawn(&["--role", "all"], &path.env(&own));
    gateway.wait_ready();
    let (alpha, beta, gamma) = (
        format!("{prefix}-alpha"),
        format!("{prefix}-beta"),
        format!("{prefix}-Gamma"),
    );

    // Devices: every one, in pages of two, with its metrics, first and last reading,
    // readings in the last hour and last value per metric.
    let first = api(&gateway, "/v1/devices?limit=2");
    assert_eq!(
        first["devices"].as_array().expect("devices").len(),
        2,
        "{first}"
    );
    let next = first["next"].as_str().expect("a next page");
    let second = api(&gateway, &format!("/v1/devices?limit=2&after={next}"));
    assert!(second["next"].is_null(), "{second}");
    let all: Vec<&Value> = first["devices"]
        .as_array()
        .into_iter()
        .chain(second["devices"].as_array())
        .flatten()
        .collect();
    let ids: Vec<&str> = all
        .iter()
        .map(|d| d["device_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    for device in &all {
        let id = device["device_id"].as_str().expect("id");
        let mine: Vec<&Sample> = data.iter().filter(|s| s.device == id).collect();
        let mut metrics: Vec<&str> = mine.iter().map(|s| s.metric).collect();
        metrics.sort();
        metrics.dedup();
        let listed: Vec<&str> = device["metrics"]
            .as_array()
            .expect("metrics")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let mut sorted = listed.clone();
        sorted.sort();
        assert_eq!(sorted, metrics, "{device}");
        let first_seen = mine.iter().map(|s| s.time).min().expect("rows");
        let last_seen = mine.iter().map(|s| s.time).max().expect("rows");
        assert_eq!(time(&device["first_seen"]), first_seen, "{device}");
        assert_eq!(time(&device["last_seen"]), last_seen, "{device}");
        let hour = mine
            .iter()
            .filter(|s| s.time > now - chrono::Duration::hours(1))
            .count();
        assert_eq!(device["readings_last_hour"], hour, "{device}");
        for metric in metrics {
            let last = mine
                .iter()
                .filter(|s| s.metric == metric)
                .max_by_key(|s| s.time)
                .expect("rows");
            assert_eq!(time(&device["last"][metric]["time"]), last.time, "{device}");
            assert!(
                close(&device["last"][metric]["value"], last.value),
                "{device}"
            );
        }
    }
    // One device by its exact id, or none.
    let one = api(&gateway, &format!("/v1/devices?id={alpha}"));
    assert_eq!(one["devices"][0]["device_id"], alpha.as_str(), "{one}");
    assert_eq!(one["devices"].as_array().map(Vec::len), Some(1), "{one}");
    let none = api(&gateway, &format!("/v1/devices?id={prefix}-alph"));
    assert_eq!(none["devices"].as_array().map(Vec::len), Some(0), "{none}");
    // Search: part of the id, any case.
    let found = api(&gateway, "/v1/devices?search=GAMM");
    let found: Vec<&str> = found["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .filter_map(|d| d["device_id"].as_str())
        .collect();
    assert_eq!(found, [gamma.as_str()]);

    // Series: the same buckets from the rollup (whole minutes) and from raw readings.
    let from = now - chrono::Duration::minutes(90);
    let range = format!(
        "from={}&to={}",
        from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    for (bucket, width, source) in [
        ("5m", 300, "readings_1m"),
        ("45s", 45, "readings"),
        ("1h", 3600, "readings_1m"),
    ] {
        let got = api(
            &gateway,
            &format!("/v1/series?device={alpha}&device={beta}&metric=temp&{range}&bucket={bucket}"),
        );
        assert_eq!(got["source"], source, "{got}");
        assert_eq!(got["bucket_seconds"], width);
        let (start, end) = (time(&got["from"]), time(&got["to"]));
        assert!(start <= from && end >= now, "aligned outwards: {got}");
        for series in got["series"].as_array().expect("series") {
            let device = series["device_id"].as_str().expect("device");
            let mut want: BTreeMap<i64, Vec<(DateTime<Utc>, f64)>> = BTreeMap::new();
            for s in data.iter().filter(|s| {
                s.device == device && s.metric == "temp" && s.time >= start && s.time < end
            }) {
                let origin = Utc.with_ymd_and_hms(2000, 1, 3, 0, 0, 0).unwrap();
                let bucket = (s.time - origin).num_seconds().div_euclid(width) * width;
                want.entry(bucket).or_default().push((s.time, s.value));
            }
            let points = series["points"].as_array().expect("points");
            assert_eq!(points.len(), want.len(), "{device} {bucket}: {series}");
            for (point, values) in points.iter().zip(want.values()) {
                let (count, min, max, avg, last) = stats(values);
                assert_eq!(point["count"], count, "{point}");
                assert!(
                    close(&point["min"], min) && close(&point["max"], max),
                    "{point}"
                );
                assert!(close(&point["avg"], avg), "{point} vs {avg}");
                assert!(close(&point["last"], last), "{point} vs {last}");
            }
        }
    }
    // A reading newer than the last refresh of readings_1m is in the series at once: the
    // newest buckets come from the readings (on TimescaleDB too, whose real-time aggregate
    // would not show it: the test's refresh materialised its minute).
    let fresh = now - chrono::Duration::seconds(5);
    insert_reading(&db, fresh, &alpha, "temp", 1000.0).await;
    let got = api(
        &gateway,
        &format!("/v1/series?device={alpha}&metric=temp&{range}&bucket=1m"),
    );
    assert!(time(&got["raw_from"]) <= fresh, "{got}");
    let points = got["series"][0]["points"].as_array().expect("points");
    let newest = points.last().expect("points");
    assert!(time(&newest["time"]) <= fresh, "{newest}");
    assert_eq!(newest["max"], 1000.0, "{newest}");
    db.execute(
        "DELETE FROM readings WHERE time = $1 AND device_id = $2",
        &[&fresh, &alpha],
    )
    .await
    .expect("delete");

    // No bucket: one chosen for about 500 points or fewer.
    let auto = api(
        &gateway,
        &format!("/v1/series?device={alpha}&metric=temp&{range}"),
    );
    assert_eq!(auto["bucket_seconds"], 30, "{auto}");

    // Summaries: one per device and metric, percentiles as PostgreSQL computes them.
    let wide = format!(
        "from={}&to={}",
        (now - chrono::Duration::days(2)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        (now + chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let page = api(&gateway, &format!("/v1/summary?{wide}&limit=3"));
    let rest = api(
        &gateway,
        &format!(
            "/v1/summary?{wide}&limit=3&after={}",
            page["next"].as_str().expect("next")
        ),
    );
    let summaries: Vec<&Value> = page["summaries"]
        .as_array()
        .into_iter()
        .chain(rest["summaries"].as_array())
        .flatten()
        .filter(|s| {
            s["device_id"]
                .as_str()
                .is_some_and(|d| d.starts_with(&prefix))
        })
        .collect();
    assert_eq!(
        summaries.len(),
        4,
        "alpha temp, beta hum and temp, Gamma temp"
    );
    for s in summaries {
        let (device, metric) = (
            s["device_id"].as_str().unwrap(),
            s["metric"].as_str().unwrap(),
        );
        let values: Vec<(DateTime<Utc>, f64)> = data
            .iter()
            .filter(|d| d.device == device && d.metric == metric)
            .map(|d| (d.time, d.value))
            .collect();
        let (count, min, max, avg, last) = stats(&values);
        let plain: Vec<f64> = values.iter().map(|(_, v)| *v).collect();
        assert_eq!(s["count"], count, "{s}");
        for (key, want) in [
            ("min", min),
            ("max", max),
            ("avg", avg),
            ("last", last),
            ("p50", percentile(&plain, 0.5)),
            ("p90", percentile(&plain, 0.9)),
            ("p99", percentile(&plain, 0.99)),
        ] {
            assert!(close(&s[key], want), "{key}: {s} vs {want}");
        }
    }
    let one = api(
        &gateway,
        &format!("/v1/summary?{wide}&device={gamma}&metric=temp"),
    );
    assert_eq!(one["summaries"].as_array().map(Vec::len), Some(1), "{one}");

    // Bad requests: each a 400 that says what is wrong.
    let base = format!("http://127.0.0.1:{}", gateway.ingest_port);
    for (query, says) in [
        (format!("/v1/series?device={alpha}&metric=temp&from=yesterday"), "RFC 3339"),
        (format!("/v1/series?device={alpha}&metric=temp&from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"), "before"),
        (format!("/v1/series?device={alpha}&metric=temp&from=2025-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&bucket=1s"), "buckets"),
        (format!("/v1/series?device={alpha}&metric=temp&bucket=5x"), "bucket"),
        (format!("/v1/series?device={alpha}&metric=temp&bucket=90s"), "whole minutes"),
        (format!("/v1/series?device={alpha}&metric=temp&device="), "no device"),
        ("/v1/status?verbose=1".to_owned(), "unknown parameter"),
        ("/v1/series?metric=temp".to_owned(), "device"),
        (format!("/v1/series?device={alpha}"), "metric"),
        ("/v1/devices?limit=0".to_owned(), "limit"),
        ("/v1/devices?limit=5000".to_owned(), "limit"),
        ("/v1/devices?after=forged".to_owned(), "next"),
        ("/v1/devices?serch=x".to_owned(), "unknown parameter"),
        ("/v1/summary?from=2025-01-01T00:00:00Z&to=2026-01-01T00:00:00Z".to_owned(), "days"),
    ] {
        let (status, body, _) = get(&format!("{base}{query}"), &[]);
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"], "bad_request", "{query}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{query}: {detail}");
    }
    let (status, body, _) = get(&format!("{base}/v1/openapi.json"), &[]);
    assert_eq!(status, 200);
    assert!(body["paths"]["/v1/series"]["get"].is_object(), "{body}");
    // Anomalies: filtered by device, metric, kind and range, oldest first, in pages.
    let flagged: Vec<(DateTime<Utc>, &str, &str)> = vec![
        (now - chrono::Duration::minutes(50), alpha.as_str(), "spike"),
        (now - chrono::Duration::minutes(40), alpha.as_str(), "stuck"),
        (now - chrono::Duration::minutes(30), alpha.as_str(), "spike"),
        (now - chrono::Duration::minutes(20), beta.as_str(), "spike"),
        (now - chrono::Duration::hours(30), alpha.as_str(), "spike"),
    ];
    for (t, device, kind) in &flagged {
        db.execute(
            "INSERT INTO anomalies (time, device_id, metric, kind, value, expected, low, high, score) \
             VALUES ($1, $2, 'temp', $3, 99, 20, 18, 22, 12.5)",
            &[t, device, kind],
        )
        .await
        .expect("insert anomaly");
    }
    let first = api(
        &gateway,
        &format!("/v1/anomalies?device={alpha}&kind=spike&limit=1"),
    );
    let rest = api(
        &gateway,
        &format!(
            "/v1/anomalies?device={alpha}&kind=spike&limit=1&after={}",
            first["next"].as_str().expect("a second page")
        ),
    );
    assert!(
        rest["next"].is_null(),
        "two spikes of alpha's in the last day: {rest}"
    );
    let got: Vec<DateTime<Utc>> = [&first, &rest]
        .iter()
        .flat_map(|p| p["anomalies"].as_array().cloned().unwrap_or_default())
        .map(|a| time(&a["time"]))
        .collect();
    let want: Vec<DateTime<Utc>> = flagged
        .iter()
        .filter(|(t, d, k)| *d == alpha && *k == "spike" && *t > now - chrono::Duration::hours(24))
        .map(|(t, _, _)| *t)
        .collect();
    assert_eq!(got, want);
    let one = &first["anomalies"][0];
    assert_eq!(
        (
            one["metric"].as_str(),
            one["value"].as_f64(),
            one["low"].as_f64(),
            one["high"].as_f64(),
            one["score"].as_f64()
        ),
        (Some("temp"), Some(99.0), Some(18.0), Some(22.0), Some(12.5)),
        "{one}"
    );
    let newest = api(
        &gateway,
        &format!("/v1/anomalies?device={alpha}&kind=spike&order=desc&limit=1"),
    );
    let newer = api(
        &gateway,
        &format!(
            "/v1/anomalies?device={alpha}&kind=spike&order=desc&limit=1&after={}",
            newest["next"].as_str().expect("a second page")
        ),
    );
    let got: Vec<DateTime<Utc>> = [&newest, &newer]
        .iter()
        .map(|p| time(&p["anomalies"][0]["time"]))
        .collect();
    assert_eq!(
        got,
        want.iter().rev().copied().collect::<Vec<_>>(),
        "newest first"
    );
    let all = api(&gateway, &format!("/v1/anomalies?{wide}"));
    assert_eq!(all["anomalies"].as_array().map(Vec::len), Some(5), "{all}");

    let config = api(&gateway, "/v1/config");
    assert_eq!(config["kafka"]["partitions"], 3, "{config}");
    let url = config["writer"]["database_url"]
        .as_str()
        .unwrap_or_default();
    assert!(
        url.contains(&own.url.rsplit('/').next().unwrap_or("?").to_owned()),
        "{config}"
    );
}

#[tokio::test]
async fn readers_read_devices_do_not_and_the_status_moves_with_publishes() {
    let tokens = tempfile::NamedTempFile::new().expect("token file");
    let text = format!(
        "ops:{}\nsensor-9:{}\n",
        sha256_hex("ops-token"),
        sha256_hex("device-token")
    );
    std::fs::write(tokens.path(), text).expect("write tokens");
    let path = tokens.path().display().to_string();
    let gateway = Gateway::start(Some(Box::new(move |c| {
        set(c, &["auth", "token_file"], path.clone());
        set(
            c,
            &["api", "readers"],
            toml::Value::Array(vec!["ops".into()]),
        );
    })));
    let base = format!("http://127.0.0.1:{}", gateway.ingest_port);
    let ops = ["-H", "Authorization: Bearer ops-token"];

    // Nobody: 401 with a challenge a browser answers; a device: 403; a reader: 200.
    let (status, body, head) = get(&format!("{base}/v1/status"), &[]);
    assert_eq!(status, 401, "{body}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("www-authenticate: basic realm=\"sluice\""),
        "{head}"
    );
    let (status, body, _) = get(
        &format!("{base}/v1/devices"),
        &["-H", "Authorization: Bearer device-token"],
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    let (status, _, _) = get(&format!("{base}/v1/devices?limit=1"), &ops);
    assert_eq!(status, 200);

    // The device posts; the reader sees readings come in, get written and the lag close.
    let post = |value: i64| {
        let status = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
            .args(["-H", "Authorization: Bearer device-token"])
            .args(["-H", "Content-Type: application/json"])
            .args(["--data", &json!({"value": value}).to_string()])
            .arg(format!("{base}/v1/readings/sensor-9/temp"))
            .output()
            .expect("curl");
        assert_eq!(String::from_utf8_lossy(&status.stdout), "202");
    };
    let mut seen = Value::Null;
    let mut n = 0;
    wait_for(
        Duration::from_secs(30),
        "the status to show readings in and written",
        || {
            n += 1;
            post(n);
            let (_, status, _) = get(&format!("{base}/v1/status"), &ops);
            seen = status.clone();
            let rate = |k: &str| status[k].as_f64().unwrap_or(0.0);
            rate("readings_in_per_second") > 0.0
                && rate("readings_written_per_second") > 0.0
                && status["ack_latency_ms"]["p99"].as_f64().is_some()
                && status["kafka_lag"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|p| p["written_offset"].as_i64() > Some(0)))
        },
    );
    let partitions = seen["kafka_lag"].as_array().expect("lag").len();
    assert!(partitions >= 3, "one entry per readings partition: {seen}");
    assert!(
        seen["connections"]["mqtt"].is_u64() && seen["connections"]["http"].is_u64(),
        "{seen}"
    );

    // The stream: `event: status` about every second, with the same fields.
    let out = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "3"])
        .args(ops)
        .arg(format!("{base}/v1/status/stream"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect();
    assert!(text.contains("event: status"), "{text}");
    assert!(events.len() >= 2, "at least two events in 3 s: {text}");
    assert!(events.iter().all(|e| e["kafka_lag"].is_array()), "{text}");
    let times: Vec<DateTime<Utc>> = events.iter().map(|e| time(&e["time"])).collect();
    assert!(
        times.windows(2).all(|w| w[1] > w[0]),
        "fresh each time: {times:?}"
    );
}

#[tokio::test]
async fn anonymous_readers_only_where_allowed_and_streams_are_capped() {
    let gateway = Gateway::start(Some(Box::new(|c| {
        set(c, &["api", "allow_anonymous"], false);
        set(c, &["api", "max_streams"], 1);
    })));
    let base = format!("http://127.0.0.1:{}", gateway.ingest_port);
    // Anonymous senders may post here, but not read: asked for credentials instead.
    let (status, body, head) = get(&format!("{base}/v1/status"), &[]);
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{head}"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("allow_anonymous"),
        "{body}"
    );
    drop(gateway);

    let gateway = Gateway::start(Some(Box::new(|c| set(c, &["api", "max_streams"], 1))));
    let url = format!("http://127.0.0.1:{}/v1/status/stream", gateway.ingest_port);
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let mut first = Command::new("curl")
        .args(["-sS", "-N", "-o"])
        .arg(out.path())
        .arg(&url)
        .spawn()
        .expect("curl");
    wait_for(
        Duration::from_secs(10),
        "the first stream's first event",
        || std::fs::read_to_string(out.path()).is_ok_and(|t| t.contains("event: status")),
    );
    let (status, body, _) = get(&url, &["--max-time", "2"]);
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("busy")),
        "{body}"
    );
    let _ = first.kill();
    let _ = first.wait();
    // Its place comes back once the client has gone.
    wait_for(Duration::from_secs(10), "the place to come back", || {
        let out = Command::new("curl")
            .args(["-sS", "-N", "--max-time", "2", &url])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).contains("event: status")
    });
}
