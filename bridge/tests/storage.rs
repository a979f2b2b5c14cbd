//! Storage for analysts, on both paths: plain PostgreSQL always, TimescaleDB where the
//! machine has it (`common::timescaledb`). The path chosen at start and what is refused,
//! the `[storage]` lifecycle applied at start and reconciled on restart (concurrent starts
//! included), TimescaleDB's jobs kept and watched, `readings_1m` following what devices
//! publish (late readings included), and the README's analyst queries on known data.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::{
    connect, insert_reading, postgres, set, storages, timescaledb, wait_for, Gateway, OwnDatabase,
    Storage,
};

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
    let path = postgres();
    let own = path.database("lifecycle");
    let migrate = |settings: &[(&str, &str)]| {
        let mut envs = path.env(&own).to_vec();
        envs.extend_from_slice(settings);
        gateway.migrate(&envs);
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

    // And rollup minutes of 10 and 4 days ago.
    db.batch_execute(
        "INSERT INTO readings_1m (bucket, device_id, metric, count) VALUES \
         (date_trunc('minute', now() - INTERVAL '10 days'), 'old', 'temp', 1), \
         (date_trunc('minute', now() - INTERVAL '4 days'), 'old', 'temp', 1)",
    )
    .await
    .expect("insert rollup");

    // Restart with other settings: new partitions are two hours wide and follow on from
    // the old ones, retention removes readings older than three days and rollup minutes
    // older than five.
    migrate(&[
        ("SLUICE__STORAGE__CHUNK_INTERVAL", "2 hours"),
        ("SLUICE__STORAGE__PARTITIONS_AHEAD", "6"),
        ("SLUICE__STORAGE__RETAIN_FOR", "3 days"),
        ("SLUICE__STORAGE__ROLLUP_RETAIN_FOR", "5 days"),
    ]);
    let kept: i64 = db
        .query_one(
            "SELECT count(*) FROM readings_1m WHERE bucket > now() - INTERVAL '5 days'",
            &[],
        )
        .await
        .expect("rollup")
        .get(0);
    let all: i64 = db
        .query_one("SELECT count(*) FROM readings_1m", &[])
        .await
        .expect("rollup")
        .get(0);
    assert_eq!(
        (kept, all),
        (1, 1),
        "the rollup keeps what is younger than 5 days"
    );
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
            "storage.retain_for: must be longer than storage.rollup_lookback",
        ),
        (
            vec![("SLUICE__STORAGE__ROLLUP_COMPRESS_AFTER", "1 hour")],
            "storage.rollup_compress_after: must be longer than storage.rollup_lookback",
        ),
        (
            vec![("SLUICE__STORAGE__ROLLUP_RETAIN_FOR", "1 day")],
            "storage.rollup_retain_for: must be longer than storage.rollup_lookback",
        ),
        (
            vec![("SLUICE__STORAGE__BACKEND", "influxdb")],
            "storage.backend",
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
    for path in storages("readings_1m_follows_published_readings_late_ones_included") {
        readings_1m_follows(&path).await;
    }
}

async fn readings_1m_follows(path: &Storage) {
    let mut gateway = Gateway::configure(Some(Box::new(|c: &mut toml::Table| {
        set(c, &["storage", "rollup_refresh"], "1 s");
    })));
    let own = path.database("rollup");
    gateway.spawn(&["--role", "all"], &path.env(&own));
    gateway.wait_ready();
    let db = connect(&own.url).await;
    let dev = format!("{}-rollup", gateway.id);
    // The start of the minute ten minutes ago: within TimescaleDB's refresh window.
    let now = Utc::now().timestamp_millis();
    let t0: i64 = now - now % 60_000 - 600_000;
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
    // readings_1m as it is once it equals `want`, or after 60 s (a refresh late in the
    // background is run by sluice 15 s past its schedule).
    let settled = |want: Vec<Bucket>| async move {
        let mut got = Vec::new();
        for _ in 0..600 {
            got = rollup().await;
            if got == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (got, want)
    };
    let (got, want) = settled(want).await;
    assert_eq!(got, want, "{}", path.backend);

    // Materialised, where TimescaleDB keeps the rollup: a late reading must then be
    // rolled up by its refresh, not only be seen through the real-time part.
    if path.timescaledb() {
        let sql = format!(
            "SELECT count(*) FROM {} WHERE device_id = $1",
            materialization(&db).await
        );
        let mut done = false;
        for _ in 0..600 {
            let rows: i64 = db
                .query_one(&sql, &[&dev])
                .await
                .expect("materialised")
                .get(0);
            if rows == 2 {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(done, "the refresh job materialised both minutes");
    }

    // A late reading in the first minute (the device was offline): that minute is redone.
    publish(&[(30_000, 100.0)]);
    let want = vec![
        (0, 4, Some(1.0), Some(100.0), Some(27.25), Some(100.0)),
        (60_000, 2, Some(10.0), Some(20.0), Some(15.0), Some(20.0)),
    ];
    let (got, want) = settled(want).await;
    assert_eq!(got, want, "{}", path.backend);
    if path.timescaledb() {
        // A success on record, in the background or run by sluice where the background
        // fails (here, TimescaleDB's failing runs may have done the work meanwhile).
        let succeeded = |line: &str| {
            !(line.contains("last success never") && line.contains("last run by sluice never"))
        };
        let mut line = String::new();
        for _ in 0..600 {
            let (_, body) = gateway.get("/health");
            line = body
                .lines()
                .find(|l| l.starts_with("storage job rollup_refresh"))
                .unwrap_or_default()
                .to_owned();
            if succeeded(&line) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(succeeded(&line), "{line}");
    } else {
        assert!(gateway.metric("sluice_rollup_rows_total") >= 3.0);
    }
}

/// readings_1m's materialization hypertable (TimescaleDB), schema-qualified.
async fn materialization(db: &tokio_postgres::Client) -> String {
    db.query_one(
        "SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name) \
         FROM timescaledb_information.continuous_aggregates WHERE view_name = 'readings_1m'",
        &[],
    )
    .await
    .expect("readings_1m is a continuous aggregate")
    .get(0)
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
    for path in storages("analyst_queries_in_the_readme_give_the_right_numbers") {
        analyst_queries(&path).await;
    }
}

async fn analyst_queries(path: &Storage) {
    let gateway = Gateway::configure(None);
    let own = path.database("queries");
    gateway.migrate(&path.env(&own));
    let db = connect(&own.url).await;
    db.batch_execute("SET TimeZone = 'UTC'").await.expect("tz");
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap();
    let data = known_data(now);
    for s in &data {
        insert_reading(&db, s.time, s.device, s.metric, s.value).await;
    }
    // Materialise readings_1m, so the rollup query reads what the refresh wrote.
    let refresh = if path.timescaledb() {
        pause_jobs(&db).await;
        "CALL refresh_continuous_aggregate('readings_1m', NULL, NULL)"
    } else {
        "SELECT sluice_refresh_readings_1m()"
    };
    db.batch_execute(refresh).await.expect("refresh");

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
                .unwrap_or_else(|e| {
                    panic!("README query {i} fails on {}: {e}\n{sql}", path.backend)
                })
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

/// Pauses TimescaleDB's jobs and waits until none runs, for tests that run them (or
/// refresh the rollup) themselves: a background run beside theirs could deadlock.
async fn pause_jobs(db: &tokio_postgres::Client) {
    for (_, id, _, _) in jobs(db).await {
        db.execute("SELECT alter_job($1, scheduled => false)", &[&id])
            .await
            .expect("pause");
    }
    for _ in 0..300 {
        let running: i64 = db
            .query_one("SELECT count(*) FROM sluice_jobs() WHERE running", &[])
            .await
            .expect("sluice_jobs")
            .get(0);
        if running == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("TimescaleDB's jobs still run after 30 s");
}

/// `(job name, job id, schedule in s, config)` of each TimescaleDB job, by name.
async fn jobs(db: &tokio_postgres::Client) -> Vec<(String, i32, f64, serde_json::Value)> {
    db.query(
        "SELECT job, job_id, extract(epoch FROM schedule_interval)::float8, config::text \
         FROM sluice_jobs() ORDER BY job",
        &[],
    )
    .await
    .expect("sluice_jobs")
    .iter()
    .map(|r| {
        let config: &str = r.get(3);
        (
            r.get(0),
            r.get(1),
            r.get(2),
            serde_json::from_str(config).expect("json"),
        )
    })
    .collect()
}

/// An interval as TimescaleDB keeps it in a job's config, in seconds.
async fn seconds(db: &tokio_postgres::Client, interval: &serde_json::Value) -> f64 {
    db.query_one(
        "SELECT extract(epoch FROM $1::text::interval)::float8",
        &[&interval.as_str().expect("an interval")],
    )
    .await
    .expect("interval")
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_all_succeed_and_agree() {
    for path in storages("concurrent_starts_all_succeed_and_agree") {
        let gateway = Gateway::configure(None);
        let own = path.database("concurrent");
        let envs = path.env(&own);
        // Nine processes migrating and configuring one new database at once.
        let outs: Vec<std::process::Output> = std::thread::scope(|s| {
            let runs: Vec<_> = (0..9)
                .map(|_| s.spawn(|| gateway.run(&["--migrate-only"], &envs)))
                .collect();
            runs.into_iter()
                .map(|r| r.join().expect("thread"))
                .collect()
        });
        for out in &outs {
            assert!(
                out.status.success(),
                "{}: {}",
                path.backend,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let db = connect(&own.url).await;
        if path.timescaledb() {
            // Nine more with other settings: the jobs are changed in place, once.
            let before = jobs(&db).await;
            let mut changed = envs.to_vec();
            changed.extend_from_slice(&[
                ("SLUICE__STORAGE__COMPRESS_AFTER", "3 days"),
                ("SLUICE__STORAGE__ROLLUP_REFRESH", "30 s"),
            ]);
            std::thread::scope(|s| {
                let runs: Vec<_> = (0..9)
                    .map(|_| s.spawn(|| gateway.run(&["--migrate-only"], &changed)))
                    .collect();
                for run in runs {
                    let out = run.join().expect("thread");
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            });
            let after = jobs(&db).await;
            let ids = |jobs: &[(String, i32, f64, serde_json::Value)]| {
                jobs.iter().map(|j| (j.0.clone(), j.1)).collect::<Vec<_>>()
            };
            assert_eq!(ids(&after), ids(&before), "the same jobs");
            let refresh = after
                .iter()
                .find(|j| j.0 == "rollup_refresh")
                .expect("refresh");
            assert_eq!(refresh.2, 30.0, "the new schedule");
            let names: Vec<String> = after.into_iter().map(|j| j.0).collect();
            // (The harness turns retention of readings off.)
            assert_eq!(
                names,
                [
                    "compression",
                    "rollup_compression",
                    "rollup_refresh",
                    "rollup_retention"
                ],
                "one job each"
            );
        } else {
            let parts = partitions(&db).await;
            assert!(contiguous(&parts), "{parts:?}");
            assert_eq!(parts.len(), 4, "today and 3 ahead, once: {parts:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timescaledb_jobs_keep_their_ids_and_take_changed_settings_in_place() {
    let Some(path) = timescaledb("timescaledb_jobs_keep_their_ids") else {
        return;
    };
    let gateway = Gateway::configure(None);
    let own = path.database("jobs");
    let migrate = |settings: &[(&str, &str)]| {
        let mut envs = path.env(&own).to_vec();
        envs.extend_from_slice(settings);
        gateway.migrate(&envs);
    };
    migrate(&[("SLUICE__STORAGE__RETAIN_FOR", "30 days")]);
    let db = connect(&own.url).await;
    let first = jobs(&db).await;
    assert_eq!(first.len(), 5, "{first:?}");
    migrate(&[("SLUICE__STORAGE__RETAIN_FOR", "30 days")]);
    assert_eq!(jobs(&db).await, first, "a restart changes nothing");

    migrate(&[
        ("SLUICE__STORAGE__RETAIN_FOR", "off"),
        ("SLUICE__STORAGE__CHUNK_INTERVAL", "6 hours"),
        ("SLUICE__STORAGE__COMPRESS_AFTER", "3 days"),
        ("SLUICE__STORAGE__ROLLUP_REFRESH", "30 s"),
        ("SLUICE__STORAGE__ROLLUP_LOOKBACK", "2 hours"),
        ("SLUICE__STORAGE__ROLLUP_RETAIN_FOR", "400 days"),
    ]);
    let now = jobs(&db).await;
    let id = |jobs: &[(String, i32, f64, serde_json::Value)], name: &str| {
        jobs.iter().find(|j| j.0 == name).map(|j| j.1)
    };
    for name in [
        "compression",
        "rollup_compression",
        "rollup_refresh",
        "rollup_retention",
    ] {
        assert_eq!(id(&now, name), id(&first, name), "{name} kept its id");
    }
    assert_eq!(id(&now, "retention"), None, "retention off: no job");
    let job = |name: &str| now.iter().find(|j| j.0 == name).expect(name).clone();
    assert_eq!(
        seconds(&db, &job("compression").3["compress_after"]).await,
        3.0 * 86_400.0
    );
    let refresh = job("rollup_refresh");
    assert_eq!(refresh.2, 30.0, "refresh schedule");
    assert_eq!(seconds(&db, &refresh.3["start_offset"]).await, 7200.0);
    assert_eq!(
        seconds(&db, &job("rollup_retention").3["drop_after"]).await,
        400.0 * 86_400.0
    );
    let chunk: f64 = db
        .query_one(
            "SELECT extract(epoch FROM time_interval)::float8 FROM timescaledb_information.dimensions \
             WHERE hypertable_name = 'readings' AND column_name = 'time'",
            &[],
        )
        .await
        .expect("dimension")
        .get(0);
    assert_eq!(chunk, 6.0 * 3600.0, "chunk interval");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timescaledb_rollup_is_compressed_and_kept_longer_than_the_readings() {
    let Some(path) = timescaledb("timescaledb_rollup_is_compressed_and_kept_longer") else {
        return;
    };
    let gateway = Gateway::configure(None);
    let own = path.database("rollup_life");
    let mut envs = path.env(&own).to_vec();
    envs.extend_from_slice(&[
        ("SLUICE__STORAGE__RETAIN_FOR", "3 days"),
        ("SLUICE__STORAGE__ROLLUP_LOOKBACK", "1 hour"),
        ("SLUICE__STORAGE__ROLLUP_COMPRESS_AFTER", "2 days"),
        ("SLUICE__STORAGE__ROLLUP_RETAIN_FOR", "10 days"),
    ]);
    gateway.migrate(&envs);
    let db = connect(&own.url).await;
    // The jobs are run below, one at a time: TimescaleDB's own runs of them (each runs
    // once when created) could deadlock with the refresh.
    pause_jobs(&db).await;
    // One-day chunks for the rollup too (TimescaleDB's default is ten times the
    // readings'), so each of the three days below is a chunk of its own.
    let mat = materialization(&db).await;
    db.execute(
        "SELECT set_chunk_time_interval($1::text::regclass, INTERVAL '1 day')",
        &[&mat],
    )
    .await
    .expect("rollup chunks");
    db.batch_execute(
        "INSERT INTO readings (time, device_id, metric, value, received_at) \
         SELECT now() - d * INTERVAL '1 day', 'dev', 'temp', d, now() FROM unnest(ARRAY[20, 5, 1]) d",
    )
    .await
    .expect("insert");
    db.batch_execute(
        "CALL refresh_continuous_aggregate('readings_1m', NULL, now() - INTERVAL '1 hour')",
    )
    .await
    .expect("refresh");
    let run = |name: &'static str| {
        let db = &db;
        async move {
            let id = jobs(db)
                .await
                .into_iter()
                .find(|j| j.0 == name)
                .expect(name)
                .1;
            db.execute("CALL run_job($1)", &[&id]).await.expect(name);
        }
    };
    run("rollup_compression").await;
    run("rollup_retention").await;
    run("retention").await;

    let (schema, table) = mat.split_once('.').expect("qualified");
    let compressed: Vec<bool> = db
        .query(
            "SELECT is_compressed FROM timescaledb_information.chunks \
             WHERE hypertable_schema = $1 AND hypertable_name = $2 ORDER BY range_start",
            &[&schema, &table],
        )
        .await
        .expect("chunks")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        compressed,
        [true, false],
        "the 5-day-old rollup chunk compressed, the 1-day-old one not, the 20-day-old dropped"
    );
    let rollup: Vec<f64> = db
        .query(
            "SELECT last FROM readings_1m WHERE device_id = 'dev' ORDER BY bucket",
            &[],
        )
        .await
        .expect("readings_1m")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rollup, [5.0, 1.0], "rollup: 10 days kept");
    let raw: Vec<f64> = db
        .query("SELECT value FROM readings ORDER BY time", &[])
        .await
        .expect("readings")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(raw, [1.0], "readings: 3 days kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_timescaledb_job_shows_in_metrics_health_and_the_log() {
    let Some(path) = timescaledb("a_failing_timescaledb_job_shows") else {
        return;
    };
    let mut gateway = Gateway::configure(Some(Box::new(|c: &mut toml::Table| {
        set(c, &["storage", "rollup_refresh"], "1 s");
        set(c, &["storage", "retain_for"], "3 days");
    })));
    let own = path.database("failing_job");
    let envs = path.env(&own);
    // No retention job yet: TimescaleDB runs a new job at once, and this one must first
    // meet a chunk it cannot drop.
    let mut no_retention = envs.to_vec();
    no_retention.push(("SLUICE__STORAGE__RETAIN_FOR", "off"));
    gateway.migrate(&no_retention);
    // A 10-day-old reading whose chunk a view depends on: the retention job cannot drop
    // it, in the background or when sluice runs it.
    let db = connect(&own.url).await;
    db.batch_execute(
        "INSERT INTO readings (time, device_id, metric, value, received_at) \
         VALUES (now() - INTERVAL '10 days', 'dev', 'temp', 1, now())",
    )
    .await
    .expect("insert");
    let chunk: String = db
        .query_one(
            "SELECT format('%I.%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks \
             WHERE hypertable_name = 'readings'",
            &[],
        )
        .await
        .expect("chunk")
        .get(0);
    db.batch_execute(&format!(
        "CREATE VIEW holds_the_chunk AS SELECT * FROM {chunk}"
    ))
    .await
    .expect("view");

    // The writer's start adds the retention job (3 days, from the configuration).
    gateway.spawn(&["--role", "writer"], &envs);
    wait_for(
        Duration::from_secs(60),
        "the writer to serve /metrics",
        || {
            gateway.check_alive();
            gateway.logs().contains("serving /metrics")
        },
    );
    wait_for(Duration::from_secs(60), "the retention job overdue", || {
        gateway.check_alive();
        gateway.metric("sluice_storage_job_overdue{job=\"retention\"}") == 1.0
    });
    assert!(gateway.metric("sluice_storage_job_failures{job=\"retention\"}") >= 1.0);
    wait_for(Duration::from_secs(30), "sluice's own run of it", || {
        gateway.logs().contains("failed when sluice ran it too")
    });
    let logs = gateway.logs();
    assert!(
        logs.contains("has not succeeded within its schedule"),
        "{logs}"
    );
    assert!(
        logs.contains("holds_the_chunk"),
        "sluice logged the database's reason: {logs}"
    );
    // Nobody runs it now (sluice tries once per schedule, a day): /health says so.
    let retention_line = || {
        let (status, body) = gateway.get("/health");
        assert_eq!(
            status, 200,
            "a late job is no reason to leave service: {body}"
        );
        body.lines()
            .find(|l| l.starts_with("storage job retention"))
            .unwrap_or_else(|| panic!("{body}"))
            .to_owned()
    };
    wait_for(Duration::from_secs(30), "/health to say OVERDUE", || {
        retention_line().ends_with("OVERDUE")
    });
    assert!(retention_line().contains("last success never"));
    // The others succeed (in the background, or run by sluice where the background fails).
    wait_for(
        Duration::from_secs(60),
        "the rollup refresh to succeed",
        || {
            let (_, body) = gateway.get("/health");
            body.lines().any(|l| {
                l.starts_with("storage job rollup_refresh")
                    && !(l.contains("last success never") && l.contains("last run by sluice never"))
                    && !l.ends_with("OVERDUE")
            })
        },
    );
}

/// What `readings` is in a database: 'p' (partitioned: plain path) or 'r' (hypertable).
async fn readings_kind(url: &str) -> u8 {
    let kind: i8 = connect(url)
        .await
        .query_one(
            "SELECT relkind::\"char\" FROM pg_class WHERE relname = 'readings'",
            &[],
        )
        .await
        .expect("readings")
        .get(0);
    kind as u8
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_the_server_or_the_database_cannot_give_is_refused_saying_what_to_do() {
    let gateway = Gateway::configure(None);
    let migrate = |envs: &[(&str, &str)]| {
        let out = gateway.run(&["--migrate-only"], envs);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    fn with<'a>(
        path: &Storage,
        db: &'a OwnDatabase,
        backend: &'static str,
    ) -> [(&'static str, &'a str); 2] {
        let mut envs = path.env(db);
        envs[1].1 = backend;
        envs
    }
    // A database keeps its path: asked for the other one, start-up is refused saying so;
    // "auto" takes the one it has.
    let keeps = |path: &Storage, other: &'static str, says: &str| {
        let db = path.database("keeps");
        assert_eq!(migrate(&path.env(&db)).0, Some(0));
        let (code, err) = migrate(&with(path, &db, other));
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(says), "{err}");
        assert_eq!(migrate(&with(path, &db, "auto")).0, Some(0));
    };
    let plain = postgres();
    keeps(
        &plain,
        "timescaledb",
        "keeps readings in plain PostgreSQL tables",
    );

    if let Some(ts) = timescaledb("a_path_the_server_or_the_database_cannot_give") {
        keeps(
            &ts,
            "postgres",
            "keeps readings in a TimescaleDB hypertable",
        );

        // Kept plain as asked, where a DBA created the extension beforehand.
        let dba = ts.database("dba");
        connect(&dba.url)
            .await
            .batch_execute("CREATE EXTENSION timescaledb")
            .await
            .expect("extension");
        let (code, err) = migrate(&with(&ts, &dba, "postgres"));
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(readings_kind(&dba.url).await, b'p');
        assert_eq!(migrate(&with(&ts, &dba, "auto")).0, Some(0), "and stays so");
    }
    // Asked for where the server has none.
    let none = plain.database("none");
    let installed: i64 = connect(&none.url)
        .await
        .query_one(
            "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'",
            &[],
        )
        .await
        .expect("extensions")
        .get(0);
    let installed = installed > 0;
    if !installed {
        let (code, err) = migrate(&with(&plain, &none, "timescaledb"));
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("no TimescaleDB installed"), "{err}");
    }

    // Installed but not preloaded (scripts/test.sh starts such a server where TimescaleDB
    // is installed): one line saying what to change, or the plain path when asked for.
    let Ok(unloaded) = std::env::var("TIMESCALEDB_UNLOADED_URL") else {
        eprintln!("not-preloaded half skipped: TIMESCALEDB_UNLOADED_URL is not set");
        return;
    };
    let db = OwnDatabase::on(&unloaded, "unloaded");
    let envs = [("DATABASE_URL", db.url.as_str())];
    let (code, err) = migrate(&envs);
    assert_eq!(code, Some(2), "{err}");
    let line = err.lines().last().unwrap_or_default();
    assert!(
        line.contains("installed on the database server but not preloaded")
            && line.contains("add 'timescaledb' to shared_preload_libraries in ")
            && line.contains("postgresql.conf and restart PostgreSQL")
            && line.contains("storage.backend = \"postgres\""),
        "{err}"
    );
    assert!(!err.contains("error communicating"), "{err}");
    let (code, err) = migrate(&[
        ("DATABASE_URL", db.url.as_str()),
        ("SLUICE__STORAGE__BACKEND", "postgres"),
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        readings_kind(&db.url).await,
        b'p',
        "readings is a partitioned table"
    );
}
