//! Storage lifecycle: at start, picks the database path (TimescaleDB hypertables or plain
//! PostgreSQL partitions, `storage.backend`) and applies `[storage]` through the
//! `sluice_configure` SQL function of the migrations. Then, without TimescaleDB this module
//! does the jobs itself (partitions ahead, retention, `readings_1m` refresh); with it, it
//! watches TimescaleDB's jobs and reports their state in metrics, `/health` and the log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};

use crate::db;
use crate::health::Health;
use crate::settings::{StorageBackend, StorageSettings};

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    /// The server or the database does not allow what `[storage]` asks: the operator
    /// must change one of them.
    #[error("{0}")]
    Setup(String),
    #[error("examining the database server: {}", db::describe(.0))]
    Probe(tokio_postgres::Error),
    #[error("applying [storage] to the database: {}", db::describe(.0))]
    Configure(tokio_postgres::Error),
}

/// Which database path the migrations took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    TimescaleDb,
    PostgreSql,
}

impl Backend {
    /// As migration 1 reads it from `sluice.backend` and `sluice_configure` returns it.
    fn name(self) -> &'static str {
        match self {
            Backend::TimescaleDb => "timescaledb",
            Backend::PostgreSql => "postgresql",
        }
    }
}

/// What the database server offers, and what the database already is.
#[derive(Debug, Default)]
struct Server {
    /// TimescaleDB's version when its package is installed on the server.
    installed: Option<String>,
    /// Its library is in `shared_preload_libraries`, as `CREATE EXTENSION` requires.
    preloaded: bool,
    /// The database has the extension: its readings are in a hypertable.
    created: bool,
    /// The database has `readings` already.
    migrated: bool,
    /// postgresql.conf, when the role may see where it is.
    config_file: Option<String>,
}

/// Picks the path for the database, or says in one line what the operator must change.
fn choose(wanted: StorageBackend, server: &Server) -> Result<Backend, String> {
    let preload = format!(
        "TimescaleDB {} is installed on the database server but not preloaded: add \
         shared_preload_libraries = 'timescaledb' to {} and restart PostgreSQL",
        server.installed.as_deref().unwrap_or_default(),
        server.config_file.as_deref().unwrap_or("postgresql.conf"),
    );
    let keeps = |path: &str| {
        format!(
            "this database keeps readings in {path} (a database keeps the path it was created \
             with): set storage.backend = \"auto\", or point writer.database_url at a new database"
        )
    };
    if server.created {
        return match wanted {
            StorageBackend::Postgres => Err(format!(
                "storage.backend = \"postgres\", but {}",
                keeps("a TimescaleDB hypertable")
            )),
            _ if !server.preloaded => Err(format!("This database uses TimescaleDB: {preload}")),
            _ => Ok(Backend::TimescaleDb),
        };
    }
    if server.migrated {
        return match wanted {
            StorageBackend::Timescaledb => Err(format!(
                "storage.backend = \"timescaledb\", but {}",
                keeps("plain PostgreSQL tables")
            )),
            _ => Ok(Backend::PostgreSql),
        };
    }
    match (wanted, &server.installed) {
        (StorageBackend::Postgres, _) | (StorageBackend::Auto, None) => Ok(Backend::PostgreSql),
        (StorageBackend::Timescaledb, None) => Err(
            "storage.backend = \"timescaledb\", but the database server has no TimescaleDB \
             installed: install it (README, \"TimescaleDB\"), or set storage.backend = \"auto\" \
             or \"postgres\""
                .to_owned(),
        ),
        _ if !server.preloaded => Err(format!(
            "{preload}, or set storage.backend = \"postgres\" to keep readings in plain \
             PostgreSQL tables"
        )),
        _ => Ok(Backend::TimescaleDb),
    }
}

async fn probe(client: &tokio_postgres::Client) -> Result<Server, tokio_postgres::Error> {
    // TimescaleDB's loader defines its settings only where it is preloaded.
    let row = client
        .query_one(
            "SELECT (SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'), \
                    EXISTS (SELECT 1 FROM pg_settings WHERE name = 'timescaledb.max_background_workers'), \
                    EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'), \
                    to_regclass('readings') IS NOT NULL, \
                    (SELECT setting FROM pg_settings WHERE name = 'config_file')",
            &[],
        )
        .await?;
    Ok(Server {
        installed: row.get(0),
        preloaded: row.get(1),
        created: row.get(2),
        migrated: row.get(3),
        config_file: row.get(4),
    })
}

/// Picks the path, applies the migrations and then `[storage]`; safe to run at every
/// start, by several processes at once.
pub async fn prepare(url: &str, storage: &StorageSettings) -> Result<Backend, LifecycleError> {
    let client = db::connect(url).await?;
    let server = probe(&client).await.map_err(LifecycleError::Probe)?;
    let backend = choose(storage.backend, &server).map_err(LifecycleError::Setup)?;
    db::migrate(url, backend.name()).await?;
    let applied = configure(&client, storage).await?;
    if applied != backend {
        // Another process created the database the other way meanwhile.
        return Err(LifecycleError::Setup(format!(
            "this start chose {}, but another one created the database on the other path \
             meanwhile: give every process the same storage.backend",
            backend.name()
        )));
    }
    tracing::info!(
        backend = backend.name(),
        chunk_interval = %storage.chunk_interval,
        compress_after = %storage.compress_after,
        retain_for = %storage.retain_for,
        rollup_refresh = %storage.rollup_refresh,
        rollup_compress_after = %storage.rollup_compress_after,
        rollup_retain_for = %storage.rollup_retain_for,
        "storage lifecycle applied"
    );
    if backend == Backend::PostgreSql
        && (storage.compress_after.0.is_some() || storage.rollup_compress_after.0.is_some())
    {
        tracing::info!("storage compression needs TimescaleDB; without it nothing is compressed");
    }
    Ok(backend)
}

async fn configure(
    client: &tokio_postgres::Client,
    storage: &StorageSettings,
) -> Result<Backend, LifecycleError> {
    let row = client
        .query_one(
            "SELECT sluice_configure(make_interval(secs => $1), make_interval(secs => $2), \
             make_interval(secs => $3), make_interval(secs => $4), make_interval(secs => $5), $6, \
             make_interval(secs => $7), make_interval(secs => $8))",
            &[
                &storage.chunk_interval.seconds(),
                &storage.compress_after.seconds(),
                &storage.retain_for.seconds(),
                &storage.rollup_refresh.seconds(),
                &storage.rollup_lookback.seconds(),
                &(storage.partitions_ahead as i32),
                &storage.rollup_compress_after.seconds(),
                &storage.rollup_retain_for.seconds(),
            ],
        )
        .await
        .map_err(LifecycleError::Configure)?;
    Ok(match row.get::<_, &str>(0) {
        "timescaledb" => Backend::TimescaleDb,
        _ => Backend::PostgreSql,
    })
}

/// Every `rollup_refresh`: without TimescaleDB, keeps partitions ahead, applies retention
/// and refreshes `readings_1m`; with it, watches its jobs. Database outages are logged
/// and retried next time.
pub async fn run(url: String, storage: StorageSettings, backend: Backend, health: Arc<Health>) {
    let period = storage.rollup_refresh.0.unwrap_or(Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client = None;
    let mut watch = Watch {
        run_overdue: storage.run_overdue_jobs,
        ..Watch::default()
    };
    loop {
        tick.tick().await;
        if client.is_none() {
            match db::connect(&url).await {
                Ok(c) => client = Some(c),
                Err(e) => tracing::warn!(error = %e, "storage maintenance waits for the database"),
            }
        }
        let Some(c) = &client else { continue };
        let done = match backend {
            Backend::PostgreSql => maintain(c, &storage).await.map(|rows| {
                counter!("sluice_rollup_rows_total").increment(rows as u64);
            }),
            Backend::TimescaleDb => watch.pass(c, &health).await,
        };
        if let Err(e) = done {
            counter!("sluice_lifecycle_errors_total").increment(1);
            tracing::warn!(error = %db::describe(&e), "storage maintenance failed; retrying next period");
            client = None;
        }
    }
}

async fn maintain(
    client: &tokio_postgres::Client,
    storage: &StorageSettings,
) -> Result<i64, tokio_postgres::Error> {
    client
        .execute(
            "SELECT sluice_maintain(make_interval(secs => $1), $2, make_interval(secs => $3)), \
                    sluice_trim_readings_1m(make_interval(secs => $4))",
            &[
                &storage.chunk_interval.seconds(),
                &(storage.partitions_ahead as i32),
                &storage.retain_for.seconds(),
                &storage.rollup_retain_for.seconds(),
            ],
        )
        .await?;
    let row = client
        .query_one("SELECT sluice_refresh_readings_1m()", &[])
        .await?;
    Ok(row.get(0))
}

/// How late a job's success may be past its schedule before it counts as overdue: the
/// time a run itself takes.
const SLACK: Duration = Duration::from_secs(60);

/// One of TimescaleDB's jobs for `readings` or `readings_1m`, as `sluice_jobs()` says,
/// with Sluice's own runs of it.
#[derive(Debug, Clone, PartialEq)]
struct Job {
    name: String,
    id: i32,
    schedule: Duration,
    last_status: Option<String>,
    /// Since TimescaleDB's last successful run of it.
    since_success: Option<Duration>,
    /// Since Sluice last ran it successfully (`CALL run_job`).
    since_ours: Option<Duration>,
    /// How long ago it was due to start, if it was.
    since_due: Option<Duration>,
    runs: i64,
    failures: i64,
}

impl Job {
    /// No success, by TimescaleDB or by Sluice, for longer than its schedule (plus
    /// `SLACK`), or due and never run.
    fn overdue(&self) -> bool {
        match self.since_success.into_iter().chain(self.since_ours).min() {
            Some(since) => since > self.schedule + SLACK,
            None => self.failures > 0 || self.since_due.is_some_and(|d| d > SLACK),
        }
    }

    fn describe(&self) -> String {
        let ago = |d: Option<Duration>| match d {
            Some(d) => format!("{} s ago", d.as_secs()),
            None => "never".to_owned(),
        };
        format!(
            "storage job {} (id {}, every {} s): last run {}, last success {}, {} of {} runs \
             failed, last run by sluice {}{}",
            self.name,
            self.id,
            self.schedule.as_secs(),
            self.last_status.as_deref().unwrap_or("none yet"),
            ago(self.since_success),
            self.failures,
            self.runs,
            ago(self.since_ours),
            if self.overdue() { "; OVERDUE" } else { "" },
        )
    }
}

/// Watches TimescaleDB's jobs; where `run_overdue` is set, runs an overdue one itself,
/// at most once per schedule, so a broken background worker does not stop the rollup.
#[derive(Default)]
struct Watch {
    run_overdue: bool,
    /// By job id: when Sluice last tried a run, and when one last succeeded.
    tried: HashMap<i32, Instant>,
    succeeded: HashMap<i32, Instant>,
    overdue: Vec<String>,
}

impl Watch {
    async fn pass(
        &mut self,
        client: &tokio_postgres::Client,
        health: &Health,
    ) -> Result<(), tokio_postgres::Error> {
        let mut jobs = self.jobs(client).await?;
        for job in jobs.iter_mut().filter(|j| j.overdue() && self.run_overdue) {
            if self
                .tried
                .get(&job.id)
                .is_some_and(|t| t.elapsed() < job.schedule)
            {
                continue;
            }
            self.tried.insert(job.id, Instant::now());
            match client.execute("CALL run_job($1)", &[&job.id]).await {
                Ok(_) => {
                    tracing::info!(job = %job.name, job_id = job.id, "sluice ran an overdue TimescaleDB job");
                    self.succeeded.insert(job.id, Instant::now());
                    job.since_ours = Some(Duration::ZERO);
                }
                Err(e) => tracing::warn!(
                    job = %job.name,
                    job_id = job.id,
                    error = %db::describe(&e),
                    "an overdue TimescaleDB job failed when sluice ran it too"
                ),
            }
        }
        self.report(&jobs);
        health.storage_jobs(jobs.iter().map(Job::describe).collect());
        Ok(())
    }

    async fn jobs(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<Vec<Job>, tokio_postgres::Error> {
        let secs = |v: Option<f64>| v.map(|s| Duration::from_secs_f64(s.max(0.0)));
        let rows = client
            .query(
                "SELECT job, job_id, extract(epoch FROM schedule_interval)::float8, last_run_status, \
                        extract(epoch FROM now() - last_successful_finish)::float8, \
                        extract(epoch FROM now() - next_start)::float8, \
                        coalesce(total_runs, 0), coalesce(total_failures, 0) \
                   FROM sluice_jobs() ORDER BY job",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let id = r.get(1);
                Job {
                    name: r.get(0),
                    id,
                    schedule: secs(r.get(2)).unwrap_or_default(),
                    last_status: r.get(3),
                    since_success: secs(r.get(4)),
                    since_ours: self.succeeded.get(&id).map(Instant::elapsed),
                    since_due: secs(r.get(5)).filter(|d| !d.is_zero()),
                    runs: r.get(6),
                    failures: r.get(7),
                }
            })
            .collect())
    }

    /// Metrics for each job, and a log line when one becomes overdue or recovers.
    fn report(&mut self, jobs: &[Job]) {
        let mut overdue = Vec::new();
        for job in jobs {
            let labels = [("job", job.name.clone())];
            gauge!("sluice_storage_job_runs", &labels).set(job.runs as f64);
            gauge!("sluice_storage_job_failures", &labels).set(job.failures as f64);
            if let Some(since) = job.since_success {
                gauge!("sluice_storage_job_last_success_age_seconds", &labels)
                    .set(since.as_secs_f64());
            }
            gauge!("sluice_storage_job_overdue", &labels).set(if job.overdue() {
                1.0
            } else {
                0.0
            });
            let before = self.overdue.contains(&job.name);
            if job.overdue() {
                if !before {
                    tracing::warn!(
                        job = %job.name,
                        job_id = job.id,
                        "TimescaleDB job has not succeeded within its schedule (see \
                         timescaledb_information.job_errors): {}",
                        job.describe()
                    );
                }
                overdue.push(job.name.clone());
            } else if before {
                tracing::info!(job = %job.name, "TimescaleDB job succeeds again");
            }
        }
        self.overdue = overdue;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(installed: bool, preloaded: bool, created: bool, migrated: bool) -> Server {
        Server {
            installed: installed.then(|| "2.28.3".to_owned()),
            preloaded,
            created,
            migrated,
            config_file: Some("/etc/postgresql/15/main/postgresql.conf".to_owned()),
        }
    }

    #[test]
    fn the_path_follows_the_server_and_what_the_database_already_is() {
        use StorageBackend::*;
        let pg = Ok(Backend::PostgreSql);
        let ts = Ok(Backend::TimescaleDb);
        // A new database.
        assert_eq!(choose(Auto, &server(false, false, false, false)), pg);
        assert_eq!(choose(Auto, &server(true, true, false, false)), ts);
        assert_eq!(choose(Postgres, &server(true, false, false, false)), pg);
        assert_eq!(choose(Postgres, &server(true, true, false, false)), pg);
        assert_eq!(choose(Timescaledb, &server(true, true, false, false)), ts);
        // Installed, not preloaded: say where to preload it, and the way out.
        let e = choose(Auto, &server(true, false, false, false)).unwrap_err();
        assert!(
            e.contains("shared_preload_libraries = 'timescaledb'"),
            "{e}"
        );
        assert!(e.contains("/etc/postgresql/15/main/postgresql.conf"), "{e}");
        assert!(e.contains("storage.backend = \"postgres\""), "{e}");
        let e = choose(Timescaledb, &server(true, false, false, false)).unwrap_err();
        assert!(e.contains("not preloaded"), "{e}");
        let e = choose(Timescaledb, &server(false, false, false, false)).unwrap_err();
        assert!(e.contains("no TimescaleDB installed"), "{e}");
        // A database keeps its path.
        assert_eq!(choose(Auto, &server(true, true, true, true)), ts);
        assert_eq!(choose(Auto, &server(true, true, false, true)), pg);
        let e = choose(Postgres, &server(true, true, true, true)).unwrap_err();
        assert!(
            e.contains("keeps readings in a TimescaleDB hypertable"),
            "{e}"
        );
        let e = choose(Timescaledb, &server(true, true, false, true)).unwrap_err();
        assert!(e.contains("keeps readings in plain PostgreSQL"), "{e}");
        let e = choose(Auto, &server(true, false, true, true)).unwrap_err();
        assert!(e.contains("This database uses TimescaleDB"), "{e}");
        assert!(
            !e.contains("storage.backend"),
            "no way out but preloading: {e}"
        );
    }

    #[test]
    fn a_job_is_overdue_past_its_schedule_or_failing_from_the_start() {
        let job = |since_success: Option<u64>, since_due: Option<u64>, failures| Job {
            name: "rollup_refresh".to_owned(),
            id: 1000,
            schedule: Duration::from_secs(60),
            last_status: None,
            since_success: since_success.map(Duration::from_secs),
            since_ours: None,
            since_due: since_due.map(Duration::from_secs),
            runs: failures,
            failures,
        };
        assert!(!job(Some(100), None, 0).overdue());
        assert!(job(Some(121), None, 3).overdue());
        assert!(!job(None, None, 0).overdue(), "not run yet, not due");
        assert!(!job(None, Some(30), 0).overdue(), "due a moment ago");
        assert!(job(None, Some(61), 0).overdue(), "due long ago, never run");
        assert!(job(None, None, 1).overdue(), "failed, never succeeded");
        assert!(job(Some(121), None, 3).describe().ends_with("OVERDUE"));
        let rescued = Job {
            since_ours: Some(Duration::from_secs(5)),
            ..job(None, None, 4)
        };
        assert!(
            !rescued.overdue(),
            "failing in the background, run by sluice"
        );
    }
}
