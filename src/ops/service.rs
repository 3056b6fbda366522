//! The long-running parts of `stocksync run` besides capture: the HTTP endpoints, the
//! dispatcher, the periodic reconciliation audit, the metrics refresher, the dashboard's
//! history sampler and the slot heartbeat. Started together, stopped in order within a bound.
//! Under a `Type=notify` systemd unit the service reports readiness, status, watchdog
//! keep-alives and stopping (`notify.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use deadpool_postgres::Pool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::config::Config;
use super::notify::Notifier;
use super::supervise::Supervisor;
use crate::capture::CaptureHealth;
use crate::db::DbConfig;
use crate::metrics::metrics;

/// The slot's `safe_wal_size` (NULL: unlimited or no slot), `wal_status`, and whether it
/// exists (a missing slot stocksync has a checkpoint for is lost).
const SLOT_HEALTH_SQL: &str = r#"
SELECT s.safe_wal_size, s.wal_status, s.slot_name IS NOT NULL
FROM (VALUES (1)) AS one (x) LEFT JOIN pg_replication_slots s ON s.slot_name = $1
"#;

/// How long `Service::stop` waits for its tasks (the unit's `TimeoutStopSec` must exceed
/// this plus capture's own stop).
pub const STOP_BOUND: Duration = Duration::from_secs(10);

/// Dead letters are counted with a scan of the queue (no index covers them): every this
/// many metric refreshes (2 s each), not on every one.
const DEAD_LETTERS_EVERY: u32 = 15;

/// When something scrapes `/metrics`, a process about to exit because its slot is lost waits
/// at most this long for one more scrape, so Prometheus sees `stocksync_slot_lost 1`.
const LINGER_FOR_SCRAPE: Duration = Duration::from_secs(75);

/// A transactional message: decoding it moves the slot even when the published tables are
/// quiet (the empty transaction is skipped, the keepalive that follows is confirmed).
const HEARTBEAT_SQL: &str =
    "SELECT pg_logical_emit_message(true, 'stocksync.heartbeat', now()::text)";

pub struct Service {
    pub config: Arc<Config>,
    pub db: DbConfig,
    pub pool: Pool,
    pub capture_health: Arc<CaptureHealth>,
    pub supervisor: Supervisor,
    tasks: Vec<JoinHandle<()>>,
    shutdown: CancellationToken,
}

impl Service {
    pub async fn start(
        config: Config,
        db: DbConfig,
        capture_health: Arc<CaptureHealth>,
        shutdown: CancellationToken,
    ) -> Result<Service> {
        let pool = db.pool(16).context("creating the connection pool")?;
        // The HTTP surface's own pool: its requests never wait for, or take, the pipeline's.
        let mut http_db = db.clone();
        http_db.application_name = super::http::POOL_APPLICATION_NAME.into();
        let http_pool = http_db
            .pool_with(super::http::POOL)
            .context("creating the HTTP connection pool")?;
        let config = Arc::new(config);
        let supervisor = Supervisor::new(shutdown.clone());
        let settings = super::dispatch_settings(&config);
        let progress = Arc::new(crate::dispatch::Progress::default());
        let mut tasks = Vec::new();
        let state = super::http::AppState {
            pool: http_pool,
            slot: config.slot.clone(),
            capture: capture_health.clone(),
            access: super::http::Access::new(
                config.http_addr,
                config.http_token.as_ref(),
                config.metrics_public,
            ),
            tasks: supervisor.tasks(),
            dispatch: super::http::DispatchReadiness {
                progress: progress.clone(),
                flush_interval: settings.flush_interval,
                min_send_interval: settings.limits.min_send_interval,
                batch: settings.batch_size(crate::marketplace::Provider::Trendyol),
            },
            checked: Arc::default(),
        };
        tasks.push(
            super::http::spawn(config.http_addr, state, &supervisor, shutdown.clone()).await?,
        );
        {
            let (pool, config, shutdown) = (pool.clone(), config.clone(), shutdown.clone());
            tasks.push(supervisor.spawn("metrics", move || {
                refresh_metrics(pool.clone(), config.clone(), shutdown.clone())
            }));
        }
        {
            let shutdown = shutdown.clone();
            tasks.push(supervisor.spawn("history", move || super::history::run(shutdown.clone())));
        }
        if !config.heartbeat_interval.is_zero() {
            let (pool, every, shutdown) =
                (pool.clone(), config.heartbeat_interval, shutdown.clone());
            tasks.push(supervisor.spawn("heartbeat", move || {
                heartbeat(pool.clone(), every, shutdown.clone())
            }));
        }
        {
            let (pool, db, shutdown) = (pool.clone(), db.clone(), shutdown.clone());
            tasks.push(supervisor.spawn("dispatch", move || {
                crate::dispatch::run(
                    pool.clone(),
                    db.clone(),
                    settings.clone(),
                    progress.clone(),
                    shutdown.clone(),
                )
            }));
        }
        let reconcile = super::reconcile_settings(&config);
        if !reconcile.interval.is_zero() {
            let (db, shutdown) = (db.clone(), shutdown.clone());
            tasks.push(supervisor.spawn("reconcile", move || {
                crate::reconcile::periodic::run(db.clone(), reconcile.clone(), shutdown.clone())
            }));
        }
        Ok(Service {
            config,
            db,
            pool,
            capture_health,
            supervisor,
            tasks,
            shutdown,
        })
    }

    /// Cancels every task and waits at most `bound` for them.
    pub async fn stop(self, bound: Duration) {
        self.shutdown.cancel();
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(bound, all).await.is_err() {
            warn!(?bound, "some tasks did not stop in time; abandoning them");
        }
    }
}

/// Runs capture, delivery and HTTP until `shutdown` is cancelled or capture fails fatally.
/// The outer error is a start-up failure (pool, HTTP port); the inner one is capture's.
pub async fn run_until(
    config: Config,
    shutdown: CancellationToken,
) -> Result<Result<(), crate::capture::CaptureError>> {
    let db = config.db()?;
    let settings = super::capture_settings(&config);
    let health = Arc::new(CaptureHealth::default());
    let service = Service::start(config, db, health, shutdown.clone()).await?;
    tracing::info!("stocksync running");
    let notifier = Arc::new(Notifier::from_env());
    let done = CancellationToken::new();
    let systemd = tokio::spawn(tell_systemd(
        notifier.clone(),
        service.capture_health.clone(),
        service.config.slot.clone(),
        shutdown.clone(),
        done.clone(),
    ));
    let result = supervised_capture(&service, settings, &shutdown).await;
    if let Err(e) = &result {
        notifier.status(&format!("capture stopped: {e}"));
        if e.is_slot_loss() {
            metrics().slot_lost.set(1);
            linger_for_scrape(&shutdown).await;
        }
    }
    // Capture ended: by shutdown, or fatally. Either way stop the rest in order.
    shutdown.cancel();
    service.stop(STOP_BOUND).await;
    done.cancel();
    let _ = systemd.await;
    Ok(result)
}

/// Capture under supervision: a panic is logged, marks the task down and restarts it after a
/// backoff (it resumes from its checkpoint); an error capture reports is fatal and returned.
async fn supervised_capture(
    service: &Service,
    settings: crate::capture::CaptureSettings,
    shutdown: &CancellationToken,
) -> Result<(), crate::capture::CaptureError> {
    let mut backoff = super::supervise::RESTART.start();
    loop {
        let run = tokio::spawn(crate::capture::run(
            service.db.clone(),
            settings.clone(),
            shutdown.clone(),
            service.capture_health.clone(),
        ));
        match run.await {
            Ok(result) => return result,
            Err(e) if shutdown.is_cancelled() => {
                warn!(error = %e, "capture ended during shutdown");
                return Ok(());
            }
            Err(e) => {
                let why = super::supervise::panic_message(e);
                let wait = backoff.next_delay();
                tracing::error!(task = "capture", retry_in = ?wait, "task panicked: {why}; restarting it");
                metrics()
                    .task_restarts
                    .with_label_values(&["capture"])
                    .inc();
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Keeps systemd informed (a no-op outside a `Type=notify` unit): `READY=1` once HTTP is up
/// (it is bound before this starts) and capture streams or stands by, `STATUS=` when that
/// changes, `WATCHDOG=1` at half the unit's `WatchdogSec=`, `STOPPING=1` once shutdown begins.
/// The watchdog keep-alive comes from the async runtime: a runtime that stops scheduling
/// tasks gets the process restarted.
async fn tell_systemd(
    notifier: Arc<Notifier>,
    health: Arc<CaptureHealth>,
    slot: String,
    shutdown: CancellationToken,
    done: CancellationToken,
) {
    if !notifier.enabled() {
        return;
    }
    let watchdog = super::notify::watchdog_interval();
    let mut last_watchdog = tokio::time::Instant::now();
    let mut shown: Option<&str> = None;
    let mut ready = false;
    let mut ticker = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let state = if health.streaming.load(Ordering::Acquire) {
            Some("streaming")
        } else if health.standby.load(Ordering::Acquire) {
            Some("standing by")
        } else {
            None
        };
        if state != shown {
            let line = format!("{} (slot {slot})", state.unwrap_or("capture reconnecting"));
            match state {
                Some(_) if !ready => {
                    notifier.ready(&line);
                    ready = true;
                }
                _ if ready => notifier.status(&line),
                _ => {}
            }
            shown = state;
        }
        if let Some(every) = watchdog {
            if last_watchdog.elapsed() >= every {
                notifier.watchdog();
                last_watchdog = tokio::time::Instant::now();
            }
        }
    }
    notifier.stopping("stopping: committing the checkpoint, ending requests in flight");
    // Stopping can take a while (in-flight requests): the watchdog must not fire meanwhile.
    if let Some(every) = watchdog {
        loop {
            tokio::select! {
                _ = done.cancelled() => return,
                _ = tokio::time::sleep(every) => notifier.watchdog(),
            }
        }
    }
}

/// The process is about to exit because its slot is lost. Prometheus sees that only if it
/// scrapes `/metrics` before the exit: when this process has been scraped, wait (at most
/// [`LINGER_FOR_SCRAPE`]; SIGTERM ends the wait) for one more scrape.
async fn linger_for_scrape(shutdown: &CancellationToken) {
    let m = metrics();
    let seen = m.scrapes();
    if seen == 0 {
        return;
    }
    warn!(
        max_wait = ?LINGER_FOR_SCRAPE,
        "slot lost: serving /metrics until the next scrape, then exiting with code 3"
    );
    let deadline = tokio::time::Instant::now() + LINGER_FOR_SCRAPE;
    while m.scrapes() == seen && tokio::time::Instant::now() < deadline {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

async fn refresh_metrics(pool: Pool, config: Arc<Config>, shutdown: CancellationToken) {
    let m = metrics();
    let mut ticker = tokio::time::interval(Duration::from_secs(2));
    let mut warned = false;
    let mut slot_failures = crate::failures::FailureLog::new("reading the slot's figures");
    let mut refreshes: u32 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Ok(client) = pool.get().await else {
            continue;
        };
        if refreshes.is_multiple_of(DEAD_LETTERS_EVERY) {
            if let Ok(dead) = crate::queue::dead_by_store(&**client).await {
                m.queue_dead_letters.reset();
                for (store, n) in dead {
                    m.queue_dead_letters
                        .with_label_values(&[&store.to_string()])
                        .set(n);
                }
            }
        }
        refreshes = refreshes.wrapping_add(1);
        if let Ok(paused) = crate::stores::state::paused(&**client).await {
            m.store_paused.reset();
            for (store, kind) in paused {
                m.store_paused
                    .with_label_values(&[&store.to_string(), kind.as_str()])
                    .set(1);
            }
        }
        if let Ok(backing_off) = crate::stores::state::backing_off(&**client).await {
            m.store_backing_off.reset();
            for (store, problem) in backing_off {
                m.store_backing_off
                    .with_label_values(&[&store.to_string(), problem.as_str()])
                    .set(1);
            }
        }
        if let Ok(pending) = crate::queue::pending_by_store(&**client).await {
            m.queue_depth.reset();
            m.queue_oldest_age_seconds.reset();
            for p in pending {
                let store = p.store_id.to_string();
                m.queue_depth.with_label_values(&[&store]).set(p.pending);
                m.queue_oldest_age_seconds
                    .with_label_values(&[&store])
                    .set(p.oldest_age_seconds);
                // A store with work shows its dead letters (0 until the next count says more).
                m.queue_dead_letters.with_label_values(&[&store]);
            }
        }
        if let Ok(audits) = crate::reconcile::journal::last_done(&**client).await {
            m.drift_listings.reset();
            m.reconcile_last_run_timestamp_seconds.reset();
            for (store, drifted, ended) in audits {
                let store = store.to_string();
                m.drift_listings.with_label_values(&[&store]).set(drifted);
                m.reconcile_last_run_timestamp_seconds
                    .with_label_values(&[&store])
                    .set(ended);
            }
        }
        let checkpointed = match crate::queue::checkpoint_lag(&**client, &config.slot).await {
            Ok(lag) => {
                m.replication_lag_bytes
                    .set(lag.lag_bytes.unwrap_or(0).max(0));
                lag.checkpoint_lsn.is_some()
            }
            Err(_) => false,
        };
        match client.query_one(SLOT_HEALTH_SQL, &[&config.slot]).await {
            Ok(row) => {
                slot_failures.succeeded();
                let safe: Option<i64> = row.get(0);
                let wal_status: Option<String> = row.get(1);
                let exists: bool = row.get(2);
                let lost = wal_status.as_deref() == Some("lost") || (!exists && checkpointed);
                m.slot_lost.set(i64::from(lost));
                m.slot_safe_wal_size_bytes.set(safe.unwrap_or(-1));
                match safe {
                    Some(bytes) if bytes < config.safe_wal_size_warn => {
                        if !warned {
                            warn!(safe_wal_size = bytes, threshold = config.safe_wal_size_warn,
                                "the slot is close to losing WAL it needs (max_slot_wal_keep_size); check that capture keeps up");
                            warned = true;
                        }
                    }
                    _ => warned = false,
                }
            }
            Err(e) => slot_failures.failed(&crate::db::describe(&e)),
        }
    }
}

async fn heartbeat(pool: Pool, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    let mut failures = crate::failures::FailureLog::new("the slot heartbeat");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let sent = match pool.get().await {
            Ok(client) => client
                .execute(HEARTBEAT_SQL, &[])
                .await
                .map(|_| ())
                .map_err(|e| crate::db::describe(&e)),
            Err(e) => Err(e.to_string()),
        };
        failures.track(sent);
    }
}
