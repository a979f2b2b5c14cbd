//! Storage lifecycle: applies `[storage]` (chunk or partition size, compression, retention,
//! rollup refresh) to the database at every start, through the `sluice_configure` SQL
//! function of the migrations. With TimescaleDB its own jobs do the rest; without it this
//! module runs them: partitions created ahead, old ones dropped, `readings_1m` refreshed.

use std::time::Duration;

use metrics::counter;

use crate::db;
use crate::settings::StorageSettings;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("applying [storage] to the database: {0}")]
    Configure(tokio_postgres::Error),
}

/// Which database path the migrations took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    TimescaleDb,
    PostgreSql,
}

/// Reconciles the database with `[storage]`; safe to run at every start.
pub async fn configure(url: &str, storage: &StorageSettings) -> Result<Backend, LifecycleError> {
    let client = db::connect(url).await?;
    let row = client
        .query_one(
            "SELECT sluice_configure(make_interval(secs => $1), make_interval(secs => $2), \
             make_interval(secs => $3), make_interval(secs => $4), make_interval(secs => $5), $6)",
            &[
                &storage.chunk_interval.seconds(),
                &storage.compress_after.seconds(),
                &storage.retain_for.seconds(),
                &storage.rollup_refresh.seconds(),
                &storage.rollup_lookback.seconds(),
                &(storage.partitions_ahead as i32),
            ],
        )
        .await
        .map_err(LifecycleError::Configure)?;
    let backend = match row.get::<_, &str>(0) {
        "timescaledb" => Backend::TimescaleDb,
        _ => Backend::PostgreSql,
    };
    tracing::info!(
        ?backend,
        chunk_interval = %storage.chunk_interval,
        compress_after = %storage.compress_after,
        retain_for = %storage.retain_for,
        rollup_refresh = %storage.rollup_refresh,
        "storage lifecycle applied"
    );
    if backend == Backend::PostgreSql && storage.compress_after.0.is_some() {
        tracing::info!(
            "storage.compress_after needs TimescaleDB; without it nothing is compressed"
        );
    }
    Ok(backend)
}

/// Without TimescaleDB: every `rollup_refresh`, keeps partitions ahead, applies retention
/// and refreshes `readings_1m`. Database outages are logged and retried next time.
pub async fn run(url: String, storage: StorageSettings) {
    let period = storage.rollup_refresh.0.unwrap_or(Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut client = None;
    loop {
        tick.tick().await;
        if client.is_none() {
            match db::connect(&url).await {
                Ok(c) => client = Some(c),
                Err(e) => tracing::warn!(error = %e, "storage maintenance waits for the database"),
            }
        }
        let Some(c) = &client else { continue };
        match maintain(c, &storage).await {
            Ok(rows) => counter!("sluice_rollup_rows_total").increment(rows as u64),
            Err(e) => {
                counter!("sluice_lifecycle_errors_total").increment(1);
                tracing::warn!(error = %e, "storage maintenance failed; retrying next period");
                client = None;
            }
        }
    }
}

async fn maintain(
    client: &tokio_postgres::Client,
    storage: &StorageSettings,
) -> Result<i64, tokio_postgres::Error> {
    client
        .execute(
            "SELECT sluice_maintain(make_interval(secs => $1), $2, make_interval(secs => $3))",
            &[
                &storage.chunk_interval.seconds(),
                &(storage.partitions_ahead as i32),
                &storage.retain_for.seconds(),
            ],
        )
        .await?;
    let row = client
        .query_one("SELECT sluice_refresh_readings_1m()", &[])
        .await?;
    Ok(row.get(0))
}
