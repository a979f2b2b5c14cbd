//! The read API: devices, series, summaries, anomalies and the pipeline's status as JSON
//! on the HTTP ingest listener, for operators, analysts and the dashboard. Queries run on
//! a few database connections of their own; the ingest gate (`ingress::http`) decides who
//! may read (`Api::may_read`).

mod devices;
mod params;
mod series;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics::counter;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::db;
use crate::settings::{ApiSettings, Settings};

pub use params::Params;

/// The OpenAPI description of every endpoint, ingest included.
const OPENAPI: &str = include_str!("openapi.json");

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("database: {}", db::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::Postgres(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) =>
            {
                (StatusCode::SERVICE_UNAVAILABLE, "query_timeout")
            }
            ApiError::Db(_) | ApiError::Postgres(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "database_unavailable")
            }
        };
        if status != StatusCode::BAD_REQUEST {
            tracing::warn!(error = %self, "read API request failed");
        }
        reply(status, json!({"error": error, "detail": self.to_string()}))
    }
}

/// A JSON answer, counted by status.
pub fn reply(status: StatusCode, body: Value) -> Response {
    counter!("sluice_api_requests_total", "status" => status.as_str().to_owned()).increment(1);
    let mut response = (status, axum::Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, "no-store".parse().expect("static"));
    response
}

pub struct Api {
    settings: ApiSettings,
    pool: Pool,
    status: status::Sampler,
    config: Value,
    streams: Arc<Semaphore>,
    stop: tokio::sync::watch::Receiver<bool>,
    /// Whether readings_1m is TimescaleDB's real-time aggregate (asked once).
    live_rollup: tokio::sync::OnceCell<bool>,
    /// How far readings_1m may be behind where Sluice refreshes it.
    rollup_lag: chrono::Duration,
}

impl Api {
    /// Starts the status sampler; nothing connects to the database until a query needs it.
    pub fn new(
        settings: &Settings,
        metrics: metrics_exporter_prometheus::PrometheusHandle,
        writer: bool,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Arc<Api>, rdkafka::error::KafkaError> {
        let pool = Pool {
            url: settings.writer.database_url.clone(),
            statement_timeout_ms: settings.api.statement_timeout_ms,
            idle: std::sync::Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(settings.api.database_connections)),
        };
        let status = status::Sampler::start(settings, metrics, writer)?;
        Ok(Arc::new(Api {
            settings: settings.api.clone(),
            streams: Arc::new(Semaphore::new(settings.api.max_streams)),
            config: settings.as_set.clone(),
            pool,
            status,
            stop,
            live_rollup: tokio::sync::OnceCell::new(),
            rollup_lag: chrono::Duration::from_std(
                settings.storage.rollup_refresh.0.unwrap_or_default() + Duration::from_secs(60),
            )
            .unwrap_or(chrono::Duration::MAX),
        }))
    }

    /// Readers: anonymous senders where the listener admits them, and `api.readers`.
    pub fn may_read(&self, identity: Option<&str>) -> bool {
        identity.is_none_or(|name| self.settings.readers.iter().any(|r| r == name))
    }

    /// TimescaleDB's readings_1m is a view over materialised minutes and the newest
    /// readings; Sluice's own is a table.
    async fn rollup_is_live(&self, db: &tokio_postgres::Client) -> Result<bool, ApiError> {
        let ask = || async {
            let sql = "SELECT relkind <> 'r' FROM pg_class WHERE oid = 'readings_1m'::regclass";
            Ok::<bool, ApiError>(db.query_one(sql, &[]).await?.get(0))
        };
        self.live_rollup.get_or_try_init(ask).await.copied()
    }

    pub fn routes(self: &Arc<Api>) -> Router {
        Router::new()
            .route("/v1/devices", get(devices::list))
            .route("/v1/series", get(series::series))
            .route("/v1/summary", get(series::summary))
            .route("/v1/anomalies", get(series::anomalies))
            .route("/v1/status", get(status::now))
            .route("/v1/status/stream", get(status::stream))
            .route("/v1/config", get(config))
            .route("/v1/openapi.json", get(openapi))
            .with_state(self.clone())
    }
}

async fn config(axum::extract::State(api): axum::extract::State<Arc<Api>>) -> Response {
    reply(StatusCode::OK, api.config.clone())
}

async fn openapi() -> Response {
    let mut response = reply(StatusCode::OK, Value::Null);
    *response.body_mut() = axum::body::Body::from(OPENAPI);
    response
}

/// The API's database connections: at most `api.database_connections`, kept while they
/// work, each with `api.statement_timeout_ms` so one slow query cannot hold one forever.
struct Pool {
    url: String,
    statement_timeout_ms: u64,
    idle: std::sync::Mutex<Vec<tokio_postgres::Client>>,
    slots: Arc<Semaphore>,
}

/// A connection lent to one request; back to the pool when dropped, unless it broke.
pub struct Lease<'a> {
    client: Option<tokio_postgres::Client>,
    pool: &'a Pool,
    _slot: OwnedSemaphorePermit,
}

impl std::ops::Deref for Lease<'_> {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        self.client.as_ref().expect("held until drop")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take().filter(|c| !c.is_closed()) {
            let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.push(client);
        }
    }
}

impl Pool {
    async fn get(&self) -> Result<Lease<'_>, ApiError> {
        let wait = tokio::time::timeout(Duration::from_secs(5), self.slots.clone().acquire_owned());
        let slot = match wait.await {
            Ok(Ok(slot)) => slot,
            _ => {
                return Err(ApiError::Busy(
                    "every API database connection is busy".into(),
                ))
            }
        };
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let client = match idle {
            Some(client) => client,
            None => {
                let client = db::connect(&self.url).await?;
                let timeout = format!("SET statement_timeout = {}", self.statement_timeout_ms);
                client.batch_execute(&timeout).await?;
                client
            }
        };
        Ok(Lease {
            client: Some(client),
            pool: self,
            _slot: slot,
        })
    }
}
