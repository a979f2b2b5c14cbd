//! Storage lifecycle: at start, picks the database path (TimescaleDB hypertables or plain
//! PostgreSQL partitions, `storage.backend`) and applies `[storage]` through the
//! `sluice_configure` SQL function of the migrations. Then, without TimescaleDB this module
//! does the jobs itself (partitions ahead, retention, `readings_1m` refresh); with it, it
//! watches TimescaleDB's jobs and reports their state in metrics, `/health` and the log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use tokio::task::JoinHandle;

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
    /// As `storage.backend`, migration 1 (`sluice.backend`) and `sluice_configure` say it.
    fn name(self) -> &'static str {
        match self {
            Backend::TimescaleDb => "timescaledb",
            Backend::PostgreSql => "postgres",
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
    /// The database has the extension (a DBA may have created it for Sluice's role).
    extension: bool,
    /// Sluice's role is a superuser, so it may create the extension itself.
    superuser: bool,
    /// The path `readings` is on; None before the first start.
    readings: Option<Backend>,
    /// postgresql.conf, when the role may see where it is.
    config_file: Option<String>,
    role: String,
    database: String,
}

/// Picks the path for the database, or says in one line what the operator must change.
fn choose(wanted: StorageBackend, server: &Server) -> Result<Backend, String> {
    let preload =
        format!(
        "TimescaleDB{} is installed on the database server but not preloaded: add 'timescaledb' \
         to shared_preload_libraries in {} and restart PostgreSQL",
        server.installed.as_deref().map(|v| format!(" {v}")).unwrap_or_default(),
        server.config_file.as_deref().unwrap_or("postgresql.conf"),
    );
    let keeps = |path: &str| {
        format!(
            "this database keeps readings in {path} (a database keeps the path it was created \
             with): set storage.backend = \"auto\", or point writer.database_url at a new database"
        )
    };
    let plain_instead = "or set storage.backend = \"postgres\" to keep readings in plain \
                         PostgreSQL tables";
    match (server.readings, wanted) {
        (Some(Backend::TimescaleDb), StorageBackend::Postgres) => Err(format!(
            "storage.backend = \"postgres\", but {}",
            keeps("a TimescaleDB hypertable")
        )),
        (Some(Backend::TimescaleDb), _) if !server.preloaded => Err(format!(
            "This database keeps readings in TimescaleDB: {preload}"
        )),
        (Some(Backend::PostgreSql), StorageBackend::Timescaledb) => Err(format!(
            "storage.backend = \"timescaledb\", but {}",
            keeps("plain PostgreSQL tables")
        )),
        (Some(path), _) => Ok(path),
        (None, StorageBackend::Postgres) => Ok(Backend::PostgreSql),
        (None, StorageBackend::Auto) if server.installed.is_none() => Ok(Backend::PostgreSql),
        (None, StorageBackend::Timescaledb) if server.installed.is_none() => Err(
            "storage.backend = \"timescaledb\", but the database server has no TimescaleDB \
             installed: install it (README, \"TimescaleDB\"), or set storage.backend = \"auto\" \
             or \"postgres\""
                .to_owned(),
        ),
        (None, _) if !server.preloaded => Err(format!("{preload}, {plain_instead}")),
        (None, _) if !server.extension && !server.superuser => Err(format!(
            "TimescaleDB is available but role {} may not create the extension: have a superuser \
             run CREATE EXTENSION timescaledb in database {}, {plain_instead}",
            server.role, server.database
        )),
        (None, _) => Ok(Backend::TimescaleDb),
    }
}

async fn probe(client: &tokio_postgres::Client) -> Result<Server, tokio_postgres::Error> {
    // TimescaleDB's loader defines its settings only where it is preloaded. A hypertable
    // is a plain table to PostgreSQL ('r'); the plain path's readings is partitioned.
    let row = client
        .query_one(
            "SELECT (SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'), \
                    EXISTS (SELECT 1 FROM pg_settings WHERE name = 'timescaledb.max_background_workers'), \
                    EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'), \
                    coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false), \
                    (SELECT relkind::text FROM pg_class WHERE oid = to_regclass('readings')), \
                    (SELECT setting FROM pg_settings WHERE name = 'config_file'), \
                    current_user::text, current_database()::text",
            &[],
        )
        .await?;
    Ok(Server {
        installed: row.get(0),
        preloaded: row.get(1),
        extension: row.get(2),
        superuser: row.get(3),
        readings: row.get::<_, Option<&str>>(4).map(|kind| match kind {
            "r" => Backend::TimescaleDb,
            _ => Backend::PostgreSql,
        }),
        config_file: row.get(5),
        role: row.get(6),
        database: row.get(7),
    })
}

/// Picks the path, applies the migrations and then `[storage]`; safe to run at every
/// start, by several processes at once: they take turns, so each one's choice sees what
/// the one before it created.
pub async fn prepare(url: &str, storage: &StorageSettings) -> Result<Backend, LifecycleError> {
    let client = db::connect(url).await?;
    // Released when this connection closes, at the end of this function.
    client
        .execute("SELECT pg_advisory_lock(7261000)", &[])
        .await
        .map_err(LifecycleError::Probe)?;
    let server = probe(&client).await.map_err(LifecycleError::Probe)?;
    let backend = choose(storage.backend, &server).map_err(LifecycleError::Setup)?;
    db::migrate(url, backend.name()).await?;
    configure(&client, storage).await?;
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
) -> Result<(), LifecycleError> {
    client
        .execute(
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
    Ok(())
}

/// Every `rollup_refresh`: without TimescaleDB, keeps partitions ahead, applies retention
/// and refreshes `readings_1m`; with it, watches its jobs. Database outages are logged
/// and retried next time.
pub async fn run(url: String, storage: StorageSettings, backend: Backend, health: Arc<Health>) {
    let period = storage.rollup_period();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client = None;
    let mut watch = Watch::new(url.clone(), storage.run_overdue_jobs);
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
            let error = db::describe(&e);
            tracing::warn!(%error, "storage maintenance failed; retrying next period");
            if backend == Backend::TimescaleDb {
                health.storage_jobs(vec![format!(
                    "storage jobs: not known, the last check failed: {error}"
                )]);
            }
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

/// How late a job's success may be past its schedule (at least; its last run's length
/// counts instead when longer) before it is overdue, and before Sluice runs it itself.
const SLACK: Duration = Duration::from_secs(60);
const RESCUE_SLACK: Duration = Duration::from_secs(15);
/// The longest Sluice lets one of its runs of a job take, unless the schedule is longer.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// One of TimescaleDB's jobs for `readings` or `readings_1m`, as `sluice_jobs()` says,
/// with Sluice's own runs of it.
#[derive(Debug, Clone, PartialEq)]
struct Job {
    name: String,
    id: i32,
    schedule: Duration,
    /// False when an operator paused it (`alter_job(id, scheduled => false)`).
    scheduled: bool,
    /// A TimescaleDB worker runs it now.
    running: bool,
    /// This process runs it now.
    ours_running: bool,
    last_status: Option<String>,
    last_duration: Option<Duration>,
    /// Since TimescaleDB's last successful run of it.
    since_success: Option<Duration>,
    /// Since a Sluice process last ran it successfully (`sluice_job_runs`).
    since_ours: Option<Duration>,
    /// How long ago it was due to start, if it was.
    since_due: Option<Duration>,
    /// Since this process first saw it: a job whose scheduler never starts it has no
    /// other clock.
    since_seen: Duration,
    runs: i64,
    failures: i64,
}

impl Job {
    /// Scheduled, and no success (by TimescaleDB or by Sluice) for longer than its
    /// schedule plus `slack` (or its last run's length); or, never having succeeded,
    /// failed, or due (or seen) that long and never run.
    fn late_by(&self, slack: Duration) -> bool {
        let slack = self.last_duration.map_or(slack, |d| d.max(slack));
        self.scheduled
            && match self.since_success.into_iter().chain(self.since_ours).min() {
                Some(since) => since > self.schedule + slack,
                None => {
                    self.failures > 0
                        || self.since_due.is_some_and(|d| d > slack)
                        || (self.runs == 0 && self.since_seen > self.schedule + slack)
                }
            }
    }

    fn overdue(&self) -> bool {
        self.late_by(SLACK)
    }

    /// Sluice should run it now: a little late, and nobody runs it.
    fn wants_rescue(&self) -> bool {
        self.late_by(RESCUE_SLACK) && !self.running && !self.ours_running
    }

    fn describe(&self) -> String {
        let ago = |d: Option<Duration>| match d {
            Some(d) => format!("{} s ago", d.as_secs()),
            None => "never".to_owned(),
        };
        let state = if !self.scheduled {
            "; paused"
        } else if self.running {
            "; running"
        } else if self.ours_running {
            "; sluice runs it"
        } else if self.overdue() {
            "; OVERDUE"
        } else {
            ""
        };
        format!(
            "storage job {} (id {}, every {} s): last run {}, last success {}, {} of {} runs \
             failed, last run by sluice {}{state}",
            self.name,
            self.id,
            self.schedule.as_secs(),
            self.last_status.as_deref().unwrap_or("none yet"),
            ago(self.since_success),
            self.failures,
            self.runs,
            ago(self.since_ours),
        )
    }
}

/// Watches TimescaleDB's jobs; where `run_overdue` is set, runs a late one itself, so that
/// failing or missing background workers do not stop the rollup.
struct Watch {
    url: String,
    run_overdue: bool,
    /// This process's runs in progress, by job id, each on a connection of its own.
    runs: HashMap<i32, (String, JoinHandle<Result<bool, String>>)>,
    /// By job id: when this process first saw it, and last started a run of it.
    seen: HashMap<i32, Instant>,
    tried: HashMap<i32, Instant>,
    /// The jobs (by name) last reported, and which of them were overdue.
    reported: Vec<String>,
    overdue: Vec<String>,
}

impl Watch {
    fn new(url: String, run_overdue: bool) -> Watch {
        Watch {
            url,
            run_overdue,
            runs: HashMap::new(),
            seen: HashMap::new(),
            tried: HashMap::new(),
            reported: Vec::new(),
            overdue: Vec::new(),
        }
    }

    async fn pass(
        &mut self,
        client: &tokio_postgres::Client,
        health: &Health,
    ) -> Result<(), tokio_postgres::Error> {
        self.finished().await;
        let mut jobs = self.jobs(client).await?;
        for job in jobs.iter_mut() {
            let tried_lately = self
                .tried
                .get(&job.id)
                .is_some_and(|t| t.elapsed() < job.schedule);
            if !self.run_overdue || !job.wants_rescue() || tried_lately {
                continue;
            }
            self.tried.insert(job.id, Instant::now());
            let limit = job.schedule.max(RUN_LIMIT);
            let run = tokio::spawn(run_job(self.url.clone(), job.id, limit));
            self.runs.insert(job.id, (job.name.clone(), run));
            job.ours_running = true;
        }
        self.report(&jobs);
        health.storage_jobs(jobs.iter().map(Job::describe).collect());
        Ok(())
    }

    /// Collects this process's runs that have ended, and logs how.
    async fn finished(&mut self) {
        let done: Vec<i32> = self
            .runs
            .iter()
            .filter(|(_, (_, run))| run.is_finished())
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            let Some((name, run)) = self.runs.remove(&id) else {
                continue;
            };
            match run.await {
                Ok(Ok(true)) => {
                    tracing::info!(job = %name, job_id = id, "sluice ran a late TimescaleDB job")
                }
                Ok(Ok(false)) => {
                    tracing::debug!(job = %name, job_id = id, "the job ran elsewhere meanwhile")
                }
                Ok(Err(error)) => tracing::warn!(
                    job = %name,
                    job_id = id,
                    %error,
                    "a late TimescaleDB job failed when sluice ran it too"
                ),
                Err(e) => tracing::warn!(job = %name, error = %e, "a job run panicked"),
            }
        }
    }

    async fn jobs(
        &mut self,
        client: &tokio_postgres::Client,
    ) -> Result<Vec<Job>, tokio_postgres::Error> {
        // Infinite spans (TimescaleDB's "never") are None.
        let secs = |v: Option<f64>| {
            v.filter(|s| s.is_finite())
                .map(|s| Duration::from_secs_f64(s.max(0.0)))
        };
        let rows = client
            .query(
                "SELECT job, job_id, extract(epoch FROM schedule_interval)::float8, scheduled, \
                        running, last_run_status, extract(epoch FROM last_run_duration)::float8, \
                        extract(epoch FROM now() - last_successful_finish)::float8, \
                        extract(epoch FROM now() - sluice_success)::float8, \
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
                    scheduled: r.get(3),
                    running: r.get(4),
                    ours_running: self.runs.contains_key(&id),
                    last_status: r.get(5),
                    last_duration: secs(r.get(6)),
                    since_success: secs(r.get(7)),
                    since_ours: secs(r.get(8)),
                    since_due: secs(r.get(9)).filter(|d| !d.is_zero()),
                    since_seen: self.seen.entry(id).or_insert_with(Instant::now).elapsed(),
                    runs: r.get(10),
                    failures: r.get(11),
                }
            })
            .collect())
    }

    /// Metrics for each job (a job that went away reads as not overdue), and a log line
    /// when one becomes overdue or is on time again.
    fn report(&mut self, jobs: &[Job]) {
        for gone in self
            .reported
            .iter()
            .filter(|n| !jobs.iter().any(|j| &j.name == *n))
        {
            gauge!("sluice_storage_job_overdue", "job" => gone.clone()).set(0.0);
        }
        self.reported = jobs.iter().map(|j| j.name.clone()).collect();
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
                tracing::info!(job = %job.name, "TimescaleDB job on time again: {}", job.describe());
            }
        }
        self.overdue = overdue;
    }
}

/// Runs a job in the foreground on a connection of its own, with `limit` as its statement
/// timeout, unless another Sluice process runs it, TimescaleDB started it, or a Sluice
/// process ran it within its schedule (every writer process watches the same jobs);
/// false when it did not run it.
async fn run_job(url: String, id: i32, limit: Duration) -> Result<bool, String> {
    let client = db::connect(&url).await.map_err(|e| e.to_string())?;
    let describe = |e: tokio_postgres::Error| db::describe(&e);
    // A session lock, released when this connection closes.
    let mine: bool = client
        .query_one("SELECT pg_try_advisory_lock(7261003, $1)", &[&id])
        .await
        .map_err(describe)?
        .get(0);
    let still_late: Option<bool> = client
        .query_opt(
            "SELECT NOT running AND (sluice_success IS NULL \
                    OR sluice_success < now() - schedule_interval) \
               FROM sluice_jobs() WHERE job_id = $1",
            &[&id],
        )
        .await
        .map_err(describe)?
        .map(|r| r.get(0));
    if !mine || still_late != Some(true) {
        return Ok(false);
    }
    // TimescaleDB's scheduler starts it no earlier than a schedule from now, so the two
    // never run it at once.
    client
        .batch_execute(&format!(
            "SELECT alter_job({id}, next_start => now() + schedule_interval) \
               FROM timescaledb_information.jobs WHERE job_id = {id}; \
             SET statement_timeout = {}",
            limit.as_millis()
        ))
        .await
        .map_err(describe)?;
    client
        .execute("CALL run_job($1)", &[&id])
        .await
        .map_err(describe)?;
    client
        .execute(
            "INSERT INTO sluice_job_runs (job_id, succeeded_at) VALUES ($1, now()) \
             ON CONFLICT (job_id) DO UPDATE SET succeeded_at = EXCLUDED.succeeded_at",
            &[&id],
        )
        .await
        .map_err(describe)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(installed: bool, preloaded: bool, readings: Option<Backend>) -> Server {
        Server {
            installed: installed.then(|| "2.28.3".to_owned()),
            preloaded,
            extension: readings == Some(Backend::TimescaleDb),
            superuser: true,
            readings,
            config_file: Some("/etc/postgresql/15/main/postgresql.conf".to_owned()),
            role: "sluice".to_owned(),
            database: "sluice".to_owned(),
        }
    }

    #[test]
    fn the_path_follows_the_server_and_what_the_database_already_is() {
        use StorageBackend::*;
        let (pg, ts) = (Some(Backend::PostgreSql), Some(Backend::TimescaleDb));
        let pick = |wanted, s: Server| choose(wanted, &s);
        // A new database.
        for (wanted, installed, preloaded, path) in [
            (Auto, false, false, Backend::PostgreSql),
            (Auto, true, true, Backend::TimescaleDb),
            (Postgres, true, false, Backend::PostgreSql),
            (Postgres, true, true, Backend::PostgreSql),
            (Timescaledb, true, true, Backend::TimescaleDb),
        ] {
            assert_eq!(pick(wanted, server(installed, preloaded, None)), Ok(path));
        }
        // Installed, not preloaded: say where to preload it, and the way out.
        let e = pick(Auto, server(true, false, None)).unwrap_err();
        assert!(e.contains("add 'timescaledb' to shared_preload_libraries in /etc/postgresql/15/main/postgresql.conf"), "{e}");
        assert!(e.contains("storage.backend = \"postgres\""), "{e}");
        let e = pick(Timescaledb, server(true, false, None)).unwrap_err();
        assert!(e.contains("not preloaded"), "{e}");
        let e = pick(Timescaledb, server(false, false, None)).unwrap_err();
        assert!(e.contains("no TimescaleDB installed"), "{e}");
        // A role that may not create the extension, unless a DBA did.
        let mut unprivileged = server(true, true, None);
        unprivileged.superuser = false;
        let e = choose(Auto, &unprivileged).unwrap_err();
        assert!(
            e.contains("CREATE EXTENSION timescaledb in database sluice"),
            "{e}"
        );
        unprivileged.extension = true;
        assert_eq!(choose(Auto, &unprivileged), Ok(Backend::TimescaleDb));
        assert_eq!(choose(Postgres, &unprivileged), Ok(Backend::PostgreSql));
        // A database keeps its path, whatever the server has.
        assert_eq!(pick(Auto, server(true, true, ts)), Ok(Backend::TimescaleDb));
        assert_eq!(pick(Auto, server(true, true, pg)), Ok(Backend::PostgreSql));
        let e = pick(Postgres, server(true, true, ts)).unwrap_err();
        assert!(
            e.contains("keeps readings in a TimescaleDB hypertable"),
            "{e}"
        );
        let e = pick(Timescaledb, server(true, true, pg)).unwrap_err();
        assert!(e.contains("keeps readings in plain PostgreSQL"), "{e}");
        let e = pick(Auto, server(true, false, ts)).unwrap_err();
        assert!(
            e.contains("This database keeps readings in TimescaleDB"),
            "{e}"
        );
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
            scheduled: true,
            running: false,
            ours_running: false,
            last_status: None,
            last_duration: None,
            since_success: since_success.map(Duration::from_secs),
            since_ours: None,
            since_due: since_due.map(Duration::from_secs),
            since_seen: Duration::from_secs(5),
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
