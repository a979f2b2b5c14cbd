//! The read API: devices, series, summaries, anomalies and the pipeline's status as JSON
//! on the HTTP ingest listener, for operators, analysts and the dashboard. Queries run on
//! a few database connections of their own; the ingest gate (`ingress::http`) decides who
//! may read (`Api::may_read`).

mod devices;
mod params;
mod series;
mod status;

use std::future::Future;
use std::net::IpAddr;
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
use crate::ingress::sources::Sources;
use crate::settings::{ApiSettings, Settings};

/// The OpenAPI description of every endpoint, ingest included.
const OPENAPI: &str = include_str!("openapi.json");

#[derive(Debug, thiserror::Error)]
enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Busy(String),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("database: {}", db::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the query task failed")]
    Internal,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        use tokio_postgres::error::SqlState;
        // Clients learn what they can act on; the database's own words go to the log.
        let (status, error, detail) = match &self {
            ApiError::BadRequest(d) => (StatusCode::BAD_REQUEST, "bad_request", d.as_str()),
            ApiError::Busy(d) => (StatusCode::SERVICE_UNAVAILABLE, "busy", d.as_str()),
            ApiError::Postgres(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "query_timeout",
                "the query ran longer than [api] statement_timeout_ms; ask for less",
            ),
            ApiError::Postgres(e) if e.as_db_error().is_some() => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the database refused the query; see sluice's log",
            ),
            ApiError::Db(_) | ApiError::Postgres(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database cannot be reached",
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the query task failed; see sluice's log",
            ),
        };
        if status != StatusCode::BAD_REQUEST {
            tracing::warn!(error = %self, "read API request failed");
        }
        reply(status, json!({"error": error, "detail": detail}))
    }
}

/// Runs a request's queries in a task of their own, so a client that hangs up does not
/// leave its query queued on a pooled connection: it finishes (within the statement
/// timeout) and the connection goes back clean.
async fn answer<F>(work: F) -> Response
where
    F: Future<Output = Result<Value, ApiError>> + Send + 'static,
{
    match tokio::spawn(work).await {
        Ok(Ok(body)) => reply(StatusCode::OK, body),
        Ok(Err(e)) => e.into_response(),
        Err(_) => ApiError::Internal.into_response(),
    }
}

/// A JSON answer, counted by status.
fn reply(status: StatusCode, body: Value) -> Response {
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
    streams_by_source: Arc<Sources>,
    stop: tokio::sync::watch::Receiver<bool>,
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
            streams_by_source: Arc::default(),
            config: settings.as_set.clone(),
            pool,
            status,
            stop,
            rollup_lag: chrono::Duration::from_std(
                settings.storage.rollup_period() + Duration::from_secs(60),
            )
            .unwrap_or(chrono::Duration::days(1)),
        }))
    }

    /// Readers: the identities in `api.readers`, and anonymous clients (on a listener
    /// that admits them) where `api.allow_anonymous` says, by default from loopback only.
    pub fn may_read(&self, identity: Option<&str>, address: IpAddr) -> bool {
        match identity {
            Some(name) => self.settings.readers.iter().any(|r| r == name),
            None => self
                .settings
                .allow_anonymous
                .unwrap_or(address.is_loopback()),
        }
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

/// Where a reader's request came from, as the gate saw it.
#[derive(Clone, Copy)]
pub struct Reader {
    pub address: IpAddr,
}

async fn config(
    axum::extract::State(api): axum::extract::State<Arc<Api>>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    match params::Params::parse(query.as_deref(), &[]) {
        Ok(_) => reply(StatusCode::OK, api.config.clone()),
        Err(e) => e.into_response(),
    }
}

async fn openapi() -> Response {
    counter!("sluice_api_requests_total", "status" => "200").increment(1);
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
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
struct Lease<'a> {
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
                let connecting =
                    tokio::time::timeout(Duration::from_secs(5), db::connect(&self.url));
                let client = connecting.await.map_err(|_| {
                    ApiError::Busy("the database did not answer within 5 s".into())
                })??;
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
