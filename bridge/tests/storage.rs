//! Storage for analysts, on the PostgreSQL path CI runs: the `[storage]` lifecycle applied
//! at start and reconciled on restart, `readings_1m` following what devices publish (late
//! readings included), and the README's analyst queries on known data.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::{connect, db, set, Gateway, OwnDatabase};

/// One `readings_1m` row: minute (ms from the test's start), count, min, max, avg, last.
type Bucket = (i64, i64, Option<f64>, Option<f64>, Option<f64>, Option<f64>);

/// `(range_start, range_end)` of each partition, in seconds, oldest first.
async fn partitions(db: &tokio_postgres::Client) -> Vec<(i64, i64)> {
    db.query(
        "SELECT extract(epoch FROM range_start)::bigint, extract(epoch FROM range_end)::bigint \
         FROM sluice_partitions() ORDER BY range_start",
        &[],
    )
    .await
    .expect("partitions")
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn contiguous(parts: &[(i64, i64)]) -> bool {
    parts.windows(2).all(|w| w[0].1 == w[1].0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_settings_are_applied_at_start_and_reconciled_on_restart() {
    let gateway = Gateway::configure(None);
    let own = OwnDatabase::create("lifecycle");
    let migrate = |settings: &[(&str, &str)]| {
        let mut envs = vec![("DATABASE_URL", own.url.as_str())];
        envs.extend_from_slice(settings);
        let out = gateway.run(&["--migrate-only"], &envs);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    migrate(&[
        ("SLUICE__STORAGE__CHUNK_INTERVAL", "1 hour"),
        ("SLUICE__STORAGE__PARTITIONS_AHEAD", "2"),
        ("SLUICE__STORAGE__RETAIN_FOR", "off"),
    ]);
    let db = connect(&own.url).await;
    let now = Utc::now().timestamp();
    let hourly = partitions(&db).await;
    assert!(hourly.iter().all(|(a, b)| b - a == 3600), "{hourly:?}");
    assert!(contiguous(&hourly), "{hourly:?}");
    assert_eq!(hourly[0].0, now - now % 3600, "first partition holds now");
    assert!(hourly.last().unwrap().1 >= now + 2 * 3600, "{hourly:?}");

    // Readings of 10 days and 1 hour ago, and one that lands in the newest partition.
    db.batch_execute(
        "INSERT INTO readings (time, device_id, metric, value, received_at) VALUES \
         (now() - INTERVAL '10 days', 'old', 'temp', 1, now()), \
         (now() - INTERVAL '1 hour', 'recent', 'temp', 2, now()), \
         (now() + INTERVAL '150 minutes', 'ahead', 'temp', 3, now())",
    )
    .await
    .expect("insert");

    // Restart with other settings: new partitions are two hours wide and follow on from
    // the old ones, and retention removes what is older than three days.
    migrate(&[
        ("SLUICE__STORAGE__CHUNK_INTERVAL", "2 hours"),
        ("SLUICE__STORAGE__PARTITIONS_AHEAD", "6"),
        ("SLUICE__STORAGE__RETAIN_FOR", "3 days"),
    ]);
    let now = Utc::now().timestamp();
    let all = partitions(&db).await;
    assert_eq!(&all[..hourly.len()], &hourly[..], "old partitions kept");
    let added = &all[hourly.len()..];
    assert!(
        !added.is_empty() && added.iter().all(|(a, b)| b - a == 7200),
        "{all:?}"
    );
    assert!(contiguous(&all), "{all:?}");
    assert!(all.last().unwrap().1 >= now + 12 * 3600, "{all:?}");
    let devices: Vec<String> = db
        .query("SELECT device_id FROM readings ORDER BY time", &[])
        .await
        .expect("readings")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(devices, ["recent", "ahead"]);

    // The service's maintenance, a day from now with one day of retention: whole
    // partitions that ended before then are dropped, and the rows in them.
    db.batch_execute(
        "SELECT sluice_maintain(INTERVAL '2 hours', 6, INTERVAL '1 day', now() + INTERVAL '2 days')",
    )
    .await
    .expect("maintain");
    let later = partitions(&db).await;
    let cutoff = now + 86_400;
    assert!(later.iter().all(|(_, end)| *end > cutoff - 60), "{later:?}");
    assert!(contiguous(&later), "{later:?}");
    let left: i64 = db
        .query_one("SELECT count(*) FROM readings", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "every reading was older than the retention");
}

#[test]
fn bad_storage_settings_stop_start_up_naming_the_key() {
    let gateway = Gateway::configure(None);
    for (envs, key) in [
        (
            vec![("SLUICE__STORAGE__RETAIN_FOR", "5 fortnights")],
            "retain_for",
        ),
        (
            vec![("SLUICE__STORAGE__CHUNK_INTERVAL", "off")],
            "storage.chunk_interval",
        ),
        (
            vec![
                ("SLUICE__STORAGE__RETAIN_FOR", "30 days"),
                ("SLUICE__STORAGE__ROLLUP_LOOKBACK", "40 days"),
            ],
            "storage.rollup_lookback",
        ),
    ] {
        let out = gateway.run(&["--migrate-only"], &envs);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{envs:?}: {stderr}");
        assert!(stderr.contains(key), "{envs:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_1m_follows_published_readings_late_ones_included() {
    let gateway = Gateway::start(Some(Box::new(|c: &mut toml::Table| {
        set(c, &["storage", "rollup_refresh"], "1 s");
    })));
    let db = db().await;
    let dev = format!("{}-rollup", gateway.id);
    // 2023-11-14T22:14:00Z, the start of a minute.
    let t0: i64 = 1_700_000_040_000;
    let publish = |readings: &[(i64, f64)]| {
        let lines: String = readings
            .iter()
            .map(|(ms, v)| format!("{{\"value\": {v}, \"ts\": {}}}\n", t0 + ms))
            .collect();
        assert!(gateway.publish_lines(&format!("sensors/{dev}/temp"), &lines));
    };
    let rollup = || async {
        db.query(
            "SELECT extract(epoch FROM bucket)::bigint * 1000, count, min, max, avg, last \
             FROM readings_1m WHERE device_id = $1 ORDER BY bucket",
            &[&dev],
        )
        .await
        .expect("readings_1m")
        .iter()
        .map(|r| {
            (
                r.get::<_, i64>(0) - t0,
                r.get::<_, i64>(1),
                r.get::<_, Option<f64>>(2),
                r.get::<_, Option<f64>>(3),
                r.get::<_, Option<f64>>(4),
                r.get::<_, Option<f64>>(5),
            )
        })
        .collect::<Vec<_>>()
    };
    publish(&[
        (0, 1.0),
        (10_000, 2.0),
        (20_000, 6.0),
        (60_000, 10.0),
        (70_000, 20.0),
    ]);
    let want = vec![
        (0, 3, Some(1.0), Some(6.0), Some(3.0), Some(6.0)),
        (60_000, 2, Some(10.0), Some(20.0), Some(15.0), Some(20.0)),
    ];
    // readings_1m as it is once it equals `want`, or after 30 s.
    let settled = |want: Vec<Bucket>| async move {
        let mut got = Vec::new();
        for _ in 0..300 {
            got = rollup().await;
            if got == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (got, want)
    };
    let (got, want) = settled(want).await;
    assert_eq!(got, want);

    // A late reading in the first minute (the device was offline): that minute is redone.
    publish(&[(30_000, 100.0)]);
    let want = vec![
        (0, 4, Some(1.0), Some(100.0), Some(27.25), Some(100.0)),
        (60_000, 2, Some(10.0), Some(20.0), Some(15.0), Some(20.0)),
    ];
    let (got, want) = settled(want).await;
    assert_eq!(got, want);
    assert!(gateway.metric("sluice_rollup_rows_total") >= 3.0);
}

/// The `sql` blocks of the README's "Analyst queries" section, in order.
fn readme_queries() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = readme
        .split("### Analyst queries")
        .nth(1)
        .expect("README has an Analyst queries section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .split("```sql\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap_or_default().to_owned())
        .collect()
}

struct Sample {
    device: &'static str,
    metric: &'static str,
    time: DateTime<Utc>,
    value: f64,
}

/// Known data around `now`: sensor-1 every 10 s for the last 30 minutes but for a gap,
/// sensor-2 every 30 s for two hours, sensor-3 every minute until 40 minutes ago, and a
/// humidity metric for sensor-1 that the temp-only queries must leave out.
fn known_data(now: DateTime<Utc>) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut add = |device, metric, from_s: i64, to_s: i64, step: usize| {
        for s in (from_s..to_s).step_by(step) {
            samples.push(Sample {
                device,
                metric,
                time: now + chrono::Duration::seconds(s),
                value: ((s.rem_euclid(17)) as f64) * 1.5 - 4.0,
            });
        }
    };
    add("sensor-1", "temp", -1800, -1200, 10);
    add("sensor-1", "temp", -720, 0, 10);
    add("sensor-1", "humidity", -1800, 0, 60);
    add("sensor-2", "temp", -7200, 0, 30);
    add("sensor-3", "temp", -5400, -2400, 60);
    samples
}

fn minute(t: DateTime<Utc>) -> i64 {
    t.timestamp() - t.timestamp().rem_euclid(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyst_queries_in_the_readme_give_the_right_numbers() {
    let gateway = Gateway::configure(None);
    let own = OwnDatabase::create("queries");
    let out = gateway.run(&["--migrate-only"], &[("DATABASE_URL", &own.url)]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = connect(&own.url).await;
    db.batch_execute("SET TimeZone = 'UTC'").await.expect("tz");
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
    let data = known_data(now);
    for s in &data {
        db.execute(
            "INSERT INTO readings (time, device_id, metric, value, received_at) VALUES ($1, $2, $3, $4, $1)",
            &[&s.time, &s.device, &s.metric, &s.value],
        )
        .await
        .expect("insert");
    }
    db.batch_execute("SELECT sluice_refresh_readings_1m()")
        .await
        .expect("refresh");

    let queries = readme_queries();
    assert_eq!(queries.len(), 5, "five analyst queries in the README");
    // Each query as the README has it, with now() pinned to the data's clock.
    let run = |i: usize| {
        let sql = queries[i]
            .trim()
            .trim_end_matches(';')
            .replace("now()", "TIMESTAMPTZ '2026-01-01 12:00:00+00'");
        let db = &db;
        async move {
            db.query(&format!("SELECT row_to_json(q)::text FROM ({sql}) q"), &[])
                .await
                .unwrap_or_else(|e| panic!("README query {i} fails: {e}\n{sql}"))
                .iter()
                .map(|r| serde_json::from_str(r.get(0)).expect("json"))
                .collect::<Vec<serde_json::Value>>()
        }
    };
    let time = |v: &serde_json::Value| {
        DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
            .expect("rfc3339")
            .timestamp()
    };
    let num = |v: &serde_json::Value| v.as_f64().expect("a number");
    let text = |v: &serde_json::Value| v.as_str().expect("text").to_owned();
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;

    // 1. Readings per minute per device, last hour (all metrics).
    let mut want: BTreeMap<(i64, String), f64> = BTreeMap::new();
    for s in data
        .iter()
        .filter(|s| s.time > now - chrono::Duration::hours(1))
    {
        *want
            .entry((minute(s.time), s.device.to_owned()))
            .or_default() += 1.0;
    }
    let got: BTreeMap<(i64, String), f64> = run(0)
        .await
        .iter()
        .map(|r| {
            (
                (time(&r["minute"]), text(&r["device_id"])),
                num(&r["readings"]),
            )
        })
        .collect();
    assert_eq!(got, want, "readings per minute per device");
    assert_eq!(got.get(&(minute(now) - 60, "sensor-1".into())), Some(&7.0));

    // 2. Last temp value per device.
    let got: Vec<(String, i64, f64)> = run(1)
        .await
        .iter()
        .map(|r| (text(&r["device_id"]), time(&r["time"]), num(&r["value"])))
        .collect();
    let want: Vec<(String, i64, f64)> = ["sensor-1", "sensor-2", "sensor-3"]
        .iter()
        .map(|d| {
            let last = data
                .iter()
                .filter(|s| s.device == *d && s.metric == "temp")
                .max_by_key(|s| s.time)
                .expect("data");
            (d.to_string(), last.time.timestamp(), last.value)
        })
        .collect();
    assert_eq!(got, want, "last value per device");

    // 3. Gaps in sensor-1's temp: the one from -20:10 to -12:00.
    let got: Vec<(String, i64, i64)> = run(2)
        .await
        .iter()
        .map(|r| {
            (
                text(&r["device_id"]),
                time(&r["gap_from"]),
                time(&r["gap_to"]),
            )
        })
        .collect();
    let t = now.timestamp();
    assert_eq!(
        got,
        vec![("sensor-1".to_owned(), t - 1210, t - 720)],
        "gaps"
    );

    // 4. Hourly rollup from readings_1m: the same numbers as from the raw temp readings.
    let mut want: BTreeMap<(i64, String), (f64, f64, f64, f64)> = BTreeMap::new();
    for s in data
        .iter()
        .filter(|s| s.metric == "temp" && s.time >= now - chrono::Duration::days(1))
    {
        let hour = s.time.timestamp() - s.time.timestamp().rem_euclid(3600);
        let e = want
            .entry((hour, s.device.to_owned()))
            .or_insert((0.0, f64::MAX, f64::MIN, 0.0));
        e.0 += 1.0;
        e.1 = e.1.min(s.value);
        e.2 = e.2.max(s.value);
        e.3 += s.value;
    }
    let got = run(3).await;
    assert_eq!(got.len(), want.len(), "hourly rollup rows: {got:?}");
    for (r, ((hour, device), (n, min, max, sum))) in got.iter().zip(&want) {
        assert_eq!(
            (time(&r["hour"]), text(&r["device_id"])),
            (*hour, device.clone())
        );
        assert_eq!(num(&r["readings"]), *n, "{r}");
        assert!(
            close(num(&r["min"]), *min) && close(num(&r["max"]), *max),
            "{r}"
        );
        assert!((num(&r["avg"]) - sum / n).abs() < 1e-6, "{r}");
    }

    // 5. Top devices by rate over the last ten minutes: sensor-1 (6/min), sensor-2 (2/min);
    //    sensor-3 went quiet 40 minutes ago.
    let got: Vec<(String, f64)> = run(4)
        .await
        .iter()
        .map(|r| (text(&r["device_id"]), num(&r["per_second"])))
        .collect();
    let recent = |d: &str| {
        data.iter()
            .filter(|s| s.device == d && s.time > now - chrono::Duration::minutes(10))
            .count() as f64
            / 600.0
    };
    let names: Vec<&str> = got.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(names, ["sensor-1", "sensor-2"], "top devices");
    for (device, rate) in &got {
        assert!((rate - recent(device)).abs() < 1e-12, "{device}: {rate}");
    }
    assert!(recent("sensor-1") > recent("sensor-2"));
}
