//! The long-running parts of `stocksync run` besides capture: the HTTP endpoints, the
//! dispatcher, the metrics refresher and the slot heartbeat. Started together, stopped in
//! order within a bound.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use deadpool_postgres::Pool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::config::Config;
use crate::capture::CaptureHealth;
use crate::db::DbConfig;
use crate::metrics::metrics;

/// The slot's `safe_wal_size` (NULL: unlimited, no row: no slot), for `/metrics`.
const SAFE_WAL_SIZE_SQL: &str =
    "SELECT safe_wal_size FROM pg_replication_slots WHERE slot_name = $1";

/// A transactional message: decoding it moves the slot even when the published tables are
/// quiet (the empty transaction is skipped, the keepalive that follows is confirmed).
const HEARTBEAT_SQL: &str =
    "SELECT pg_logical_emit_message(true, 'stocksync.heartbeat', now()::text)";

pub struct Service {
    pub config: Arc<Config>,
    pub db: DbConfig,
    pub pool: Pool,
    pub capture_health: Arc<CaptureHealth>,
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
        };
        tasks.push(super::http::spawn(config.http_addr, state, shutdown.clone()).await?);
        tasks.push(tokio::spawn(refresh_metrics(
            pool.clone(),
            config.clone(),
            shutdown.clone(),
        )));
        if !config.heartbeat_interval.is_zero() {
            tasks.push(tokio::spawn(heartbeat(
                pool.clone(),
                config.heartbeat_interval,
                shutdown.clone(),
            )));
        }
        tasks.push(tokio::spawn(crate::dispatch::run(
            pool.clone(),
            db.clone(),
            super::dispatch_settings(&config),
            shutdown.clone(),
        )));
        Ok(Service {
            config,
            db,
            pool,
            capture_health,
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
    let result = crate::capture::run(
        service.db.clone(),
        settings,
        shutdown.clone(),
        service.capture_health.clone(),
    )
    .await;
    // Capture ended: by shutdown, or fatally. Either way stop the rest in order.
    shutdown.cancel();
    service.stop(Duration::from_secs(10)).await;
    Ok(result)
}

async fn refresh_metrics(pool: Pool, config: Arc<Config>, shutdown: CancellationToken) {
    let m = metrics();
    let mut ticker = tokio::time::interval(Duration::from_secs(2));
    let mut warned = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Ok(client) = pool.get().await else {
            continue;
        };
        if let Ok(pending) = crate::queue::pending_by_store(&**client).await {
            m.queue_depth.reset();
            m.queue_oldest_age_seconds.reset();
            for p in pending {
                let store = p.store_id.to_string();
                m.queue_depth.with_label_values(&[&store]).set(p.pending);
                m.queue_oldest_age_seconds
                    .with_label_values(&[&store])
                    .set(p.oldest_age_seconds);
            }
        }
        if let Ok(lag) = crate::queue::checkpoint_lag(&**client, &config.slot).await {
            m.replication_lag_bytes
                .set(lag.lag_bytes.unwrap_or(0).max(0));
        }
        match client.query_opt(SAFE_WAL_SIZE_SQL, &[&config.slot]).await {
            Ok(row) => {
                let safe: Option<i64> = row.and_then(|r| r.get(0));
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
            Err(e) => debug!(error = %e, "slot figures unavailable"),
        }
    }
}

async fn heartbeat(pool: Pool, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match pool.get().await {
            Ok(client) => {
                if let Err(e) = client.execute(HEARTBEAT_SQL, &[]).await {
                    debug!(error = %e, "heartbeat failed");
                }
            }
            Err(e) => debug!(error = %e, "heartbeat: no connection"),
        }
    }
}
