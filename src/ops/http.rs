//! HTTP: `/metrics` (Prometheus text), `/healthz` (process alive), `/readyz` (streaming or
//! standing by, and the database answers), `/api/status` (the JSON of `stocksync status`),
//! `/api/log` (recent API log entries) and `/` (the dashboard). Read-only: no endpoint
//! changes state. Binds to loopback by default.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use deadpool_postgres::Pool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::capture::CaptureHealth;
use crate::metrics::metrics;

#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub slot: String,
    pub capture: Arc<CaptureHealth>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/status", get(api_status))
        .route("/api/log", get(api_log))
        // The dashboard's charts: the last hour, sampled in this process (`history.rs`).
        .route("/api/history", get(super::history::api))
        .with_state(state)
}

/// Binds now (so a taken port is reported at start) and serves until `shutdown`.
pub async fn spawn(
    addr: SocketAddr,
    state: AppState,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (STOCKSYNC_HTTP_ADDR)"))?;
    // The bound address, not the configured one: port 0 picks a free port.
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %bound, "HTTP listening: /metrics /healthz /readyz /api/status and the dashboard at /");
    let app = router(state);
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    }))
}

async fn metrics_text() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics().render(),
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    let streaming = state.capture.streaming.load(Ordering::Acquire);
    let standby = state.capture.standby.load(Ordering::Acquire);
    let db_ok = match state.pool.get().await {
        Ok(client) => client.query_one("SELECT 1", &[]).await.is_ok(),
        Err(_) => false,
    };
    let body = serde_json::json!({
        "streaming": streaming,
        "standby": standby,
        "database": db_ok,
        "last_error": state.capture.last_error.lock().map(|e| e.clone()).unwrap_or(None),
    });
    let status = if db_ok && (streaming || standby) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn api_status(State(state): State<AppState>) -> Response {
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("database unavailable: {e}"),
            )
                .into_response()
        }
    };
    match super::status::read(&client, &state.slot).await {
        Ok(status) => axum::Json(status).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("status query failed: {e}"),
        )
            .into_response(),
    }
}

/// The 50 most recent API log entries (no credentials are ever stored there).
const RECENT_API_LOG_SQL: &str = r#"
SELECT to_char(created_at, 'YYYY-MM-DD"T"HH24:MI:SS.MSOF'), provider, type, store_id::text,
       item_count, status_code, duration_ms, batch_id, success, error_message
FROM stock_sync.api_log ORDER BY id DESC LIMIT 50
"#;

async fn api_log(State(state): State<AppState>) -> Response {
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("database unavailable: {e}"),
            )
                .into_response()
        }
    };
    match client.query(RECENT_API_LOG_SQL, &[]).await {
        Ok(rows) => {
            let entries: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "created_at": r.get::<_, Option<String>>(0),
                        "provider": r.get::<_, String>(1),
                        "type": r.get::<_, String>(2),
                        "store_id": r.get::<_, Option<String>>(3),
                        "item_count": r.get::<_, Option<i32>>(4),
                        "status_code": r.get::<_, Option<i32>>(5),
                        "duration_ms": r.get::<_, Option<i32>>(6),
                        "batch_id": r.get::<_, Option<String>>(7),
                        "success": r.get::<_, bool>(8),
                        "error_message": r.get::<_, Option<String>>(9),
                    })
                })
                .collect();
            axum::Json(entries).into_response()
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("api log query failed: {}", crate::db::describe(&e)),
        )
            .into_response(),
    }
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}
