//! `/metrics` (Prometheus text format) and `/healthz` for long-running commands.

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide metrics recorder once and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0])
                .and_then(|b| b.install_recorder())
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    PrometheusBuilder::new().build_recorder().handle()
                })
        })
        .clone()
}

/// Routes serving `/metrics` and `/healthz`.
pub fn routes() -> Router {
    let handle = metrics_handle();
    Router::new().route("/metrics", get(move || std::future::ready(handle.render()))).route("/healthz", get(|| async { "ok\n" }))
}

/// Serves the metrics routes on `addr` in the background (empty address: nothing).
pub async fn spawn_metrics_server(addr: &str) -> std::io::Result<()> {
    if addr.is_empty() {
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr, "metrics on /metrics, health on /healthz");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, routes()).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}
