//! HTTP side: `/metrics` for Prometheus and `/health` for load balancers and scripts.
//! It only reads state that the other stages publish: the `metrics` facade and `Health`.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::health::Health;

/// Installs the process-wide metrics recorder; call once, before any stage starts.
pub fn install_metrics() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("sluice_writer_batch_rows".into()),
            &[1.0, 10.0, 100.0, 1_000.0, 5_000.0, 10_000.0, 50_000.0],
        )?
        .install_recorder()
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
        .route("/health", get(move || std::future::ready(report(&health))));
    axum::serve(listener, app).await
}

/// 200 "ok", or 503 with one line per problem; then a line per detail (storage jobs).
fn report(health: &Health) -> (StatusCode, String) {
    let problems = health.problems();
    let (status, mut lines) = if problems.is_empty() {
        (StatusCode::OK, vec!["ok".to_owned()])
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems)
    };
    lines.extend(health.details());
    (status, lines.join("\n") + "\n")
}
