//! HTTP side: `/metrics` for Prometheus, `/health/live` and `/health/ready` for
//! orchestrators, and `/health` (the older combined check) for load balancers and scripts.
//! It only reads state that the other stages publish: the `metrics` facade and `Health`.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::health::Health;

/// Installs the process-wide metrics recorder; call once, before any stage starts. Every
/// metric carries the process's `role` (`all`, `ingress`, `writer`), so one Prometheus
/// scraping several processes tells them apart; `sluice_info{role, version}` is 1.
pub fn install_metrics(
    role: &str,
) -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .add_global_label("role", role)
        .set_buckets_for_metric(
            Matcher::Full("sluice_writer_batch_rows".into()),
            &[1.0, 10.0, 100.0, 1_000.0, 5_000.0, 10_000.0, 50_000.0],
        )?
        .install_recorder()?;
    metrics::gauge!("sluice_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    health: Arc<Health>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || std::future::ready(metrics.render())),
        )
        .route("/health", {
            let health = health.clone();
            get(move || std::future::ready(report(health.problems(), health.details())))
        })
        .route("/health/live", {
            let health = health.clone();
            get(move || std::future::ready(report(health.dead(), Vec::new())))
        })
        .route(
            "/health/ready",
            get(move || std::future::ready(report(health.not_ready(), Vec::new()))),
        );
    axum::serve(listener, app).await
}

/// 200 "ok", or 503 with one line per problem; then a line per detail (storage jobs).
fn report(problems: Vec<String>, details: Vec<String>) -> (StatusCode, String) {
    let (status, mut lines) = if problems.is_empty() {
        (StatusCode::OK, vec!["ok".to_owned()])
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems)
    };
    lines.extend(details);
    (status, lines.join("\n") + "\n")
}
