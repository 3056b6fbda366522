//! HTTP: `/metrics` (Prometheus text), `/healthz` (process alive), `/readyz` (streaming or
//! standing by, and the database answers), `/api/status` (the JSON of `stocksync status`),
//! `/api/log` (recent API log entries) and `/` (the dashboard). Read-only: no endpoint
//! changes state, and none takes a request body.
//!
//! It cannot hurt the pipeline: it has its own pool ([`POOL`]: 2 connections,
//! `statement_timeout` 5 s), so a burst of requests never takes connections from capture or
//! dispatch.
//!
//! It cannot be starved by slow clients: idle connections cost a few kilobytes, so up to
//! [`MAX_CONNECTIONS`] are held at once (fewer when the process's file-descriptor limit is
//! low: at most half of it, the rest stays for the pipeline). When full, or when `accept`
//! fails (out of descriptors), the connection that has waited longest without sending its
//! headers is closed first. Headers must arrive within [`HEADER_READ_TIMEOUT`] and a whole
//! request, from its first byte to the end of its answer, within [`REQUEST_DEADLINE`]; every
//! connection carries one request (no keep-alive), so that deadline is the connection's.
//! `/healthz` and `/readyz` touch no database: `/readyz` answers from state refreshed in the
//! background every [`READINESS_REFRESH`], so without the token no request reaches the
//! database.
//!
//! Access: with `STOCKSYNC_HTTP_TOKEN` set, `/api/*`, the dashboard and (unless
//! `STOCKSYNC_METRICS_PUBLIC=true`) `/metrics` need `Authorization: Bearer <token>`
//! (compared in constant time); `/healthz` and `/readyz` stay open. The dashboard page asks
//! for the token once and keeps it in the browser session. A non-loopback address without a
//! token is refused by the configuration. On a loopback address, a request whose `Host` is not
//! a loopback name or address is refused (DNS rebinding: a web page must not read it through a
//! name that resolves to 127.0.0.1). Answers carry no connection strings: errors are a short
//! kind and the server's message.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use deadpool_postgres::Pool;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::Secret;
use crate::capture::CaptureHealth;
use crate::db::PoolSettings;
use crate::metrics::metrics;

/// The HTTP surface's own pool.
pub const POOL: PoolSettings = PoolSettings {
    max_size: 2,
    statement_timeout: Some(Duration::from_secs(5)),
    wait_timeout: Duration::from_secs(5),
};
/// `application_name` of the HTTP pool's sessions (visible in `pg_stat_activity`).
pub const POOL_APPLICATION_NAME: &str = "stocksync-http";
/// A request's headers must arrive within this (slow or idle clients are closed).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections held at once (idle ones included), at most: see [`connection_cap`].
pub const MAX_CONNECTIONS: usize = 4096;
/// A request, from its first byte to the end of its answer (header read, pool wait and
/// statement timeouts of 5 s each fit in it).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(15);
/// Largest request head read (Node's default): a trickling client's buffer stays small.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How often `/readyz`'s database checks run in the background.
pub const READINESS_REFRESH: Duration = Duration::from_secs(2);
/// A background check older than this counts as a database that does not answer.
const READINESS_STALE: Duration = Duration::from_secs(15);

/// Who may read what.
#[derive(Clone, Debug)]
pub struct Access {
    /// SHA-256 of `STOCKSYNC_HTTP_TOKEN` (compared in constant time).
    token_hash: Option<[u8; 32]>,
    metrics_public: bool,
    /// Bound to loopback: refuse foreign `Host` headers.
    loopback: bool,
}

impl Access {
    pub fn new(addr: SocketAddr, token: Option<&Secret>, metrics_public: bool) -> Access {
        Access {
            token_hash: token.map(|t| sha256(t.expose().as_bytes())),
            metrics_public,
            loopback: addr.ip().is_loopback(),
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(expected) = &self.token_hash else {
            return true;
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| sha256(t.trim().as_bytes()));
        // Hashing first makes the comparison independent of the token's length too.
        presented.is_some_and(|p| bool::from(p.ct_eq(expected)))
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[derive(Clone)]
pub struct AppState {
    /// The HTTP surface's own pool ([`POOL`]).
    pub pool: Pool,
    pub slot: String,
    pub capture: Arc<CaptureHealth>,
    pub access: Access,
    /// The supervised tasks: `/readyz` fails while one is down.
    pub tasks: Arc<super::supervise::Tasks>,
    /// What dispatch did per store lately, and when a due store counts as stuck.
    pub dispatch: DispatchReadiness,
    /// The database checks of `/readyz`, as last run in the background.
    pub checked: Arc<Checked>,
}

/// The result of the last background readiness check ([`refresh_readiness`]).
#[derive(Debug, Default)]
pub struct Checked {
    last: std::sync::Mutex<Option<Check>>,
}

#[derive(Debug, Clone)]
struct Check {
    at: std::time::Instant,
    database: bool,
    stalled: Vec<uuid::Uuid>,
}

impl Checked {
    /// Whether the database answered and which stores are stalled; a check older than
    /// [`READINESS_STALE`] (or none yet) counts as a database that does not answer.
    fn current(&self) -> (bool, Vec<uuid::Uuid>) {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some(c) if c.at.elapsed() < READINESS_STALE => (c.database, c.stalled.clone()),
            _ => (false, Vec::new()),
        }
    }

    fn set(&self, database: bool, stalled: Vec<uuid::Uuid>) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Check {
            at: std::time::Instant::now(),
            database,
            stalled,
        });
    }
}

/// Runs `/readyz`'s database checks every [`READINESS_REFRESH`] until `shutdown`, each
/// within [`REQUEST_DEADLINE`].
async fn refresh_readiness(state: AppState, shutdown: CancellationToken) {
    loop {
        let check = async {
            match state.pool.get().await {
                Ok(client) => match state.dispatch.stalled(&client).await {
                    Ok(stalled) => (true, stalled),
                    Err(_) => (false, Vec::new()),
                },
                Err(_) => (false, Vec::new()),
            }
        };
        let (database, stalled) = tokio::select! {
            _ = shutdown.cancelled() => return,
            checked = tokio::time::timeout(REQUEST_DEADLINE, check) => {
                checked.unwrap_or((false, Vec::new()))
            }
        };
        state.checked.set(database, stalled);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(READINESS_REFRESH) => {}
        }
    }
}

/// Dispatch is ready while every store with due work has had a finished cycle within
/// [`DispatchReadiness::STALL_FLUSH_INTERVALS`] flush intervals.
#[derive(Clone)]
pub struct DispatchReadiness {
    pub progress: Arc<crate::dispatch::Progress>,
    pub flush_interval: Duration,
    pub min_send_interval: Duration,
    pub batch: usize,
}

impl DispatchReadiness {
    pub const STALL_FLUSH_INTERVALS: u32 = 10;

    /// Stores with due work and no finished cycle within the stall window (their oldest
    /// entry older than the window too, so a store that just became due is not stuck).
    async fn stalled(
        &self,
        db: &tokio_postgres::Client,
    ) -> Result<Vec<uuid::Uuid>, crate::queue::QueueError> {
        let window =
            self.flush_interval.max(Duration::from_millis(100)) * Self::STALL_FLUSH_INTERVALS;
        let due =
            crate::queue::due_stores(db, self.flush_interval, self.batch, self.min_send_interval)
                .await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let old: std::collections::HashSet<uuid::Uuid> = crate::queue::pending_by_store(db)
            .await?
            .into_iter()
            .filter(|p| p.oldest_age_seconds > (window + self.flush_interval).as_secs_f64())
            .map(|p| p.store_id)
            .collect();
        Ok(due
            .into_iter()
            .filter(|store| old.contains(store) && !self.progress.recent(*store, window))
            .collect())
    }
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
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// A JSON error: a short kind and a message.
fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": { "kind": kind, "message": message.into() } });
    (status, axum::Json(body)).into_response()
}

/// Methods, bodies, `Host` and the token, before any handler runs.
async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
            "only GET and HEAD are served",
        );
    }
    let headers = req.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING) {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body",
            "requests take no body",
        );
    }
    if state.access.loopback && !loopback_host(headers) {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "host",
            "this server is bound to loopback and answers only requests for localhost or a loopback address",
        );
    }
    let path = req.uri().path();
    let open = path == "/healthz"
        || path == "/readyz"
        || (path == "/metrics" && state.access.metrics_public);
    if !open && !state.access.authorized(headers) {
        let mut resp = if path == "/" {
            // The page itself asks for the token, keeps it in the session and sends it.
            (
                StatusCode::UNAUTHORIZED,
                Html(include_str!("dashboard.html")),
            )
                .into_response()
        } else {
            error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <STOCKSYNC_HTTP_TOKEN>",
            )
        };
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return resp;
    }
    next.run(req).await
}

/// `Host` is `localhost`, `*.localhost`, a 127.0.0.0/8 address or `[::1]` (any port), or absent.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Binds now (so a taken port is reported at start) and serves until `shutdown`.
pub async fn spawn(
    addr: SocketAddr,
    state: AppState,
    supervisor: &super::supervise::Supervisor,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>> {
    if !state.access.loopback && state.access.token_hash.is_none() {
        anyhow::bail!("refusing to serve HTTP on {addr} without STOCKSYNC_HTTP_TOKEN");
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (STOCKSYNC_HTTP_ADDR)"))?;
    // The bound address, not the configured one: port 0 picks a free port.
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %bound, "HTTP listening: /metrics /healthz /readyz /api/status and the dashboard at /");
    // Bound once, at start (a taken port is reported then); a restarted accept loop keeps it.
    let listener = Arc::new(listener);
    let cap = connection_cap(open_files_limit());
    let app = router(state.clone());
    Ok(supervisor.spawn("http", move || {
        let (listener, app, state, shutdown) = (
            listener.clone(),
            app.clone(),
            state.clone(),
            shutdown.clone(),
        );
        async move {
            tokio::join!(
                serve(listener, app, cap, shutdown.clone()),
                refresh_readiness(state, shutdown),
            );
        }
    }))
}

/// [`MAX_CONNECTIONS`], or half the file-descriptor limit when that is lower (the pipeline's
/// database and marketplace connections keep the other half).
fn connection_cap(open_files: Option<u64>) -> usize {
    open_files.map_or(MAX_CONNECTIONS, |n| {
        MAX_CONNECTIONS.min(usize::try_from(n / 2).unwrap_or(usize::MAX).max(1))
    })
}

/// The soft `RLIMIT_NOFILE` of this process (Linux: `/proc/self/limits`; `None` elsewhere or
/// unlimited).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The connections being served, oldest first (ids grow with accept time).
#[derive(Default)]
struct Open {
    next: u64,
    by_id: std::collections::BTreeMap<u64, Held>,
}

struct Held {
    /// Set once the request's headers are complete (the service was called).
    headers_read: Arc<std::sync::atomic::AtomicBool>,
    /// Cancelled to close the connection.
    close: CancellationToken,
}

impl Open {
    fn add(&mut self, held: Held) -> u64 {
        let id = self.next;
        self.next += 1;
        self.by_id.insert(id, held);
        id
    }

    /// Closes the connection that has waited longest for its headers; false when every
    /// connection is past its headers (those end within [`REQUEST_DEADLINE`]).
    fn close_slowest(&mut self) -> bool {
        let slowest = self
            .by_id
            .iter()
            .find(|(_, h)| !h.headers_read.load(Ordering::Acquire))
            .map(|(id, _)| *id);
        match slowest.and_then(|id| self.by_id.remove(&id)) {
            Some(held) => {
                held.close.cancel();
                true
            }
            None => false,
        }
    }
}

fn lock(open: &std::sync::Mutex<Open>) -> std::sync::MutexGuard<'_, Open> {
    open.lock().unwrap_or_else(|e| e.into_inner())
}

/// The accept loop: up to `cap` connections, the slowest closed first when full; HTTP/1.1,
/// one request per connection, with a header-read timeout and a total deadline.
async fn serve(
    listener: Arc<tokio::net::TcpListener>,
    app: Router,
    cap: usize,
    shutdown: CancellationToken,
) {
    use hyper::service::Service as _;
    use hyper_util::rt::{TokioIo, TokioTimer};
    let open = Arc::new(std::sync::Mutex::new(Open::default()));
    let mut connections = tokio::task::JoinSet::new();
    let mut accept_failures = crate::failures::FailureLog::new("accepting HTTP connections");
    loop {
        let (tcp, _peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, typically: the slowest connection gives its
                    // own back; warned once per stretch.
                    accept_failures.failed(&e);
                    if !lock(&open).close_slowest() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                }
            },
        };
        let held = Held {
            headers_read: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            close: CancellationToken::new(),
        };
        let (headers_read, close) = (held.headers_read.clone(), held.close.clone());
        let id = {
            let mut open = lock(&open);
            if open.by_id.len() >= cap && !open.close_slowest() {
                // Every held connection is past its headers and ends within the deadline.
                continue;
            }
            open.add(held)
        };
        let tower = hyper_util::service::TowerToHyperService::new(app.clone());
        let service = hyper::service::service_fn(move |req| {
            headers_read.store(true, Ordering::Release);
            tower.call(req)
        });
        let (stop, open) = (shutdown.clone(), open.clone());
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .max_buf_size(MAX_HEAD_BYTES);
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = tokio::time::timeout(REQUEST_DEADLINE, conn.as_mut()) => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
                // Closed to make room (dropping the connection closes the socket).
                _ = close.cancelled() => {}
            }
            lock(&open).by_id.remove(&id);
        });
        while connections.try_join_next().is_some() {}
        accept_failures.succeeded();
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
}

async fn metrics_text() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics().render(),
    )
        .into_response()
}

/// Ready: the database answered the last background check, capture streams or stands by, every supervised task is up,
/// and no store with due work has gone without a finished cycle for ten flush intervals.
async fn readyz(State(state): State<AppState>) -> Response {
    // From the background check: no request reaches the database here.
    let (db_ok, stalled) = state.checked.current();
    let (status, body) = readiness(&state.capture, db_ok, &state.tasks, &stalled);
    (status, axum::Json(body)).into_response()
}

/// What `/readyz` answers: *what* is down, by name (`database`, `capture`, `dispatch`, a
/// task's name), never an error text. `/readyz` is open to anyone who reaches the port;
/// a server's or a panic's message stays in the log and behind the token (`/api/status`).
fn readiness(
    capture: &crate::capture::CaptureHealth,
    db_ok: bool,
    tasks: &super::supervise::Tasks,
    stalled: &[uuid::Uuid],
) -> (StatusCode, serde_json::Value) {
    let streaming = capture.streaming.load(Ordering::Acquire);
    let standby = capture.standby.load(Ordering::Acquire);
    let tasks_down = tasks.down();
    let mut down: Vec<&str> = Vec::new();
    if !db_ok {
        down.push("database");
    }
    if !(streaming || standby) {
        down.push("capture");
    }
    if !stalled.is_empty() {
        down.push("dispatch");
    }
    for name in &tasks_down {
        if !down.contains(name) {
            down.push(name);
        }
    }
    let task_states: serde_json::Map<String, serde_json::Value> = tasks
        .snapshot()
        .into_iter()
        .map(|(name, s)| {
            let state = serde_json::json!({ "up": s.up, "restarts": s.restarts });
            (name.to_string(), state)
        })
        .collect();
    let body = serde_json::json!({
        "ready": down.is_empty(),
        "down": down,
        "streaming": streaming,
        "standby": standby,
        "database": db_ok,
        "tasks": task_states,
        "tasks_down": tasks_down,
        "stalled_stores": stalled,
    });
    let status = if down.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

/// A pool failure, without the connection string.
fn unavailable(e: &deadpool_postgres::PoolError) -> Response {
    let message = match e {
        deadpool_postgres::PoolError::Backend(e) => crate::db::describe(e),
        deadpool_postgres::PoolError::Timeout(_) => "no database connection within 5 s".into(),
        _ => "no database connection".into(),
    };
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
        message,
    )
}

async fn api_status(State(state): State<AppState>) -> Response {
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(e) => return unavailable(&e),
    };
    match super::status::read(&client, &state.slot).await {
        Ok(status) => axum::Json(status).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "status_query",
            e.to_string(),
        ),
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
        Err(e) => return unavailable(&e),
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
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_log_query",
            crate::db::describe(&e),
        ),
    }
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/readyz` names what is down and quotes no error: not capture's last server
    /// message, not a task's panic.
    #[tokio::test]
    async fn readiness_names_what_is_down_and_quotes_no_error() {
        let capture = crate::capture::CaptureHealth::default();
        *capture.last_error.lock().unwrap() = Some(crate::capture::ErrorSummary {
            kind: "connection",
            message: "FATAL: password authentication failed for user \"svc-7f3a\"".into(),
        });
        let shutdown = tokio_util::sync::CancellationToken::new();
        let supervisor = super::super::supervise::Supervisor::new(shutdown.clone());
        let _task = supervisor.spawn("dispatch", || async {
            panic!("server said: no pg_hba.conf entry for host 10.1.2.3, user svc-7f3a")
        });
        let tasks = supervisor.tasks();
        while tasks.down().is_empty() {
            tokio::task::yield_now().await;
        }
        let stalled = [uuid::Uuid::nil()];
        let (status, body) = readiness(&capture, false, &tasks, &stalled);
        shutdown.cancel();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let text = body.to_string();
        for quoted in ["svc-7f3a", "password", "pg_hba", "10.1.2.3", "panicked"] {
            assert!(!text.contains(quoted), "{quoted:?} in {text}");
        }
        let down: Vec<&str> = body["down"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(down, ["database", "capture", "dispatch"], "{text}");
        // Ready when nothing is down.
        capture.streaming.store(true, Ordering::Release);
        let idle = super::super::supervise::Tasks::default();
        let (status, body) = readiness(&capture, true, &idle, &[]);
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["down"], serde_json::json!([]));
    }

    #[test]
    fn the_slowest_connection_is_closed_first() {
        let mut open = Open::default();
        let held = |headers: bool| Held {
            headers_read: Arc::new(std::sync::atomic::AtomicBool::new(headers)),
            close: CancellationToken::new(),
        };
        let served = open.add(held(true));
        let (oldest, newer) = (held(false), held(false));
        let (oldest_close, newer_close) = (oldest.close.clone(), newer.close.clone());
        let oldest = open.add(oldest);
        let newer = open.add(newer);
        assert!(open.close_slowest());
        assert!(oldest_close.is_cancelled() && !newer_close.is_cancelled());
        assert!(!open.by_id.contains_key(&oldest) && open.by_id.contains_key(&served));
        assert!(open.close_slowest());
        assert!(newer_close.is_cancelled() && !open.by_id.contains_key(&newer));
        // Past their headers, connections end within the deadline: none is closed.
        assert!(!open.close_slowest());
        assert_eq!(open.by_id.len(), 1);
    }

    #[test]
    fn the_cap_leaves_half_the_descriptors() {
        assert_eq!(connection_cap(None), MAX_CONNECTIONS);
        assert_eq!(connection_cap(Some(1024)), 512);
        assert_eq!(connection_cap(Some(1 << 20)), MAX_CONNECTIONS);
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }

    #[test]
    fn loopback_hosts() {
        let host = |h: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, h.parse().unwrap());
            loopback_host(&headers)
        };
        for ok in [
            "localhost",
            "localhost:9187",
            "127.0.0.1:9187",
            "127.9.9.9",
            "[::1]:80",
            "app.localhost",
            "LOCALHOST.",
        ] {
            assert!(host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9187",
            "localhost.evil.example",
            "10.0.0.1:9187",
            "[::2]:1",
            "127.0.0.1.nip.io",
        ] {
            assert!(!host(bad), "{bad}");
        }
        assert!(loopback_host(&HeaderMap::new()));
    }
}
