//! Dispatch: pending queue entries -> computed quantities -> marketplace requests.
//!
//! # The cycle of one store
//! A store is *due* when its oldest pending, non-deferred entry is `flush_interval` old or a
//! full batch is ready. Its cycle, run by one dispatcher of one instance at a time:
//!
//! 1. takes the store's session advisory lock on the dispatcher's lock connection (another
//!    instance holding it means "skip"); every `in_flight` entry of the store found now is
//!    an orphan of a crash and goes back to pending;
//! 2. reads the `stores` row: missing, foreign type, `is_active = false` or
//!    `send_stock = false` close the pending entries with that outcome and send nothing
//!    (and when such a store becomes sendable, every listing of it is enqueued again);
//!    missing credentials pause the store; a pause for refused credentials lasts until the
//!    credentials change (or `retry-failed`);
//! 3. honours the store's gates: Retry-After / 5xx backoff (`not_before`),
//!    `min_send_interval`, and for Hepsiburada at most [`MAX_OPEN_HEPSIBURADA_BATCHES`]
//!    uploads whose result is open;
//! 4. claims up to a batch of entries (`FOR UPDATE SKIP LOCKED`, priority then age) and
//!    computes their quantities with one statement ([`crate::stock`]);
//! 5. closes without a request entries whose quantity equals what the marketplace was last
//!    told, and entries without a marketplace key (reported);
//! 6. sends the rest: a body identical to one sent within `identical_request_window` is
//!    re-ordered or deferred; at most `rate_limit_requests` per `rate_limit_window` per
//!    endpoint (counted in `sent_requests`, written *before* the request leaves; a body the
//!    marketplace answered 429/401/403/4xx/5xx stops counting for the identical-body rule, a
//!    lost answer keeps counting); a 400 is split in halves until the offending item is alone.
//!
//! # Invariants
//! * An entry is `in_flight` only while a cycle holding the store's lock owns it; every exit
//!   of a cycle finishes or releases its claims, and a crash leaves orphans that the next
//!   holder of the lock releases. Releasing never creates a second pending entry of a pair.
//! * The marketplace's last accepted quantity (`listing_state.accepted_quantity`) changes
//!   only on item-level success read from the batch result, and never goes back to an older
//!   batch's value. While a result is open the sent quantity counts as told, so the same
//!   value is not sent twice.
//! * Before a request leaves, its pairs are marked `in_doubt` (with the request recorded for
//!   the limiters); only an accepted push clears the mark. A crash, timeout or 5xx after the
//!   request left therefore leads to a resend of the then current quantity (harmless), never
//!   to an "unchanged" skip while the marketplace may hold something else.
//! * No request carries credentials the store does not have, and nothing is sent in dry run.

pub mod apilog;
mod batches;
pub mod sql;
mod store_cycle;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::db::DbConfig;
use crate::marketplace::{ClientSettings, MarketplaceClient};
use crate::stock::QuantityRules;

/// Hepsiburada is said to keep at most five uploads per merchant in processing.
pub const MAX_OPEN_HEPSIBURADA_BATCHES: i64 = 5;

/// Errors that end one cycle (the dispatcher logs them and goes on).
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("database: {}", crate::db::describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

/// What dispatch needs from the configuration.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// Names this process in `queue.claimed_by` (host:pid).
    pub instance_id: String,
    pub flush_interval: Duration,
    pub min_send_interval: Duration,
    pub identical_request_window: Duration,
    pub rate_limit_requests: u32,
    pub rate_limit_window: Duration,
    pub max_quantity: i32,
    pub safety_stock: i32,
    pub safety_stock_per_store: HashMap<Uuid, i32>,
    pub dry_run: bool,
    pub client: ClientSettings,
    pub hepsiburada_batch_size: usize,
    /// Failed sends of one item before it is dead-lettered.
    pub max_attempts: i32,
    /// A batch whose result is not final after this long fails its items (they are retried).
    pub batch_result_timeout: Duration,
    /// Store cycles running at once in this process.
    pub concurrency: usize,
    /// First gap between two polls of a batch result (grows 1.5x per poll, up to 30 s).
    pub first_poll_delay: Duration,
    /// Days of finished queue entries, result batches and capture batch log kept.
    pub retention_days: i32,
    /// Days of API log kept.
    pub api_log_retention_days: i32,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            instance_id: instance_id(),
            flush_interval: Duration::from_secs(5),
            min_send_interval: Duration::ZERO,
            identical_request_window: Duration::from_secs(15 * 60),
            rate_limit_requests: 50,
            rate_limit_window: Duration::from_secs(10),
            max_quantity: crate::stock::DEFAULT_MAX_QUANTITY,
            safety_stock: 0,
            safety_stock_per_store: HashMap::new(),
            dry_run: false,
            client: ClientSettings {
                trendyol_url: crate::marketplace::TRENDYOL_PRODUCTION_URL.into(),
                hepsiburada_url: crate::marketplace::HEPSIBURADA_PRODUCTION_URL.into(),
                hepsiburada_user_agent: "stocksync".into(),
                timeout: Duration::from_secs(30),
            },
            hepsiburada_batch_size: 1000,
            max_attempts: 8,
            batch_result_timeout: Duration::from_secs(4 * 3600),
            concurrency: 4,
            first_poll_delay: Duration::from_millis(500),
            retention_days: 7,
            api_log_retention_days: 30,
        }
    }
}

impl DispatchSettings {
    pub fn from_config(config: &crate::ops::config::Config) -> Self {
        DispatchSettings {
            flush_interval: config.flush_interval,
            min_send_interval: config.min_send_interval,
            identical_request_window: config.identical_request_window,
            rate_limit_requests: config.rate_limit_requests,
            rate_limit_window: config.rate_limit_window,
            max_quantity: config.max_quantity,
            safety_stock: config.safety_stock,
            safety_stock_per_store: config.safety_stock_per_store.clone(),
            dry_run: config.dry_run,
            client: ClientSettings {
                trendyol_url: config.trendyol_url.clone(),
                hepsiburada_url: config.hepsiburada_url.clone(),
                hepsiburada_user_agent: config.hepsiburada_user_agent.clone(),
                timeout: config.request_timeout,
            },
            hepsiburada_batch_size: config.hepsiburada_batch_size,
            max_attempts: config.max_attempts.max(1),
            ..DispatchSettings::default()
        }
    }

    /// Quantity rules of a store (its safety stock override, else the default).
    pub fn rules_for(&self, store_id: Uuid) -> QuantityRules {
        QuantityRules {
            max_quantity: self.max_quantity,
            safety_stock: *self
                .safety_stock_per_store
                .get(&store_id)
                .unwrap_or(&self.safety_stock),
        }
    }

    /// How often the queue is asked for due stores: often enough that `flush_interval`
    /// is kept to within a fraction, never a busy loop.
    fn tick(&self) -> Duration {
        (self.flush_interval / 2).clamp(Duration::from_millis(25), Duration::from_millis(250))
    }
}

/// `host:pid`, for `queue.claimed_by`.
pub fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "stocksync".into());
    format!("{host}:{}", std::process::id())
}

/// Shared by the store cycles and the batch poller.
pub(crate) struct Dispatcher {
    pub pool: Pool,
    pub settings: DispatchSettings,
    pub client: MarketplaceClient,
    /// Holds the per-store advisory locks; they vanish with it if the process dies.
    pub locks: tokio_postgres::Client,
}

/// Claims older than this are checked for orphans (a live cycle holds its lock, so checking
/// early is harmless; checking often is wasted work).
const STALE_CLAIM_AFTER: Duration = Duration::from_secs(5);
/// How often the slow checks run: stale claims, and stores that became sendable again.
const SLOW_CHECK_EVERY: Duration = Duration::from_secs(5);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Runs dispatch until `shutdown`: store cycles, the batch poller and pruning. Database
/// outages are waited out (logged), never fatal.
pub async fn run(
    pool: Pool,
    db: DbConfig,
    settings: DispatchSettings,
    shutdown: CancellationToken,
) {
    if settings.dry_run {
        info!("dry run: payloads are computed and written to the API log, nothing is sent");
    }
    let client = MarketplaceClient::new(settings.client.clone());
    let mut backoff = Duration::from_millis(500);
    loop {
        let locks = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = db.connect() => c,
        };
        match locks {
            Ok(locks) => {
                backoff = Duration::from_millis(500);
                let dispatcher = Arc::new(Dispatcher {
                    pool: pool.clone(),
                    settings: settings.clone(),
                    client: client.clone(),
                    locks,
                });
                if run_with(dispatcher, &shutdown).await {
                    return;
                }
                warn!("dispatch lost its lock connection; reconnecting");
            }
            Err(e) => warn!(error = %e, "dispatch cannot connect; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// The loop over one lock connection. Returns true on shutdown, false when the lock
/// connection broke (every cycle has ended by then).
async fn run_with(dispatcher: Arc<Dispatcher>, shutdown: &CancellationToken) -> bool {
    // Cancelled on shutdown, and when this lock connection is given up.
    let stop = shutdown.child_token();
    let mut cycles: JoinSet<Uuid> = JoinSet::new();
    let mut active: HashSet<Uuid> = HashSet::new();
    let poller = tokio::spawn(batches::run(dispatcher.clone(), stop.clone()));
    let mut ticker = tokio::time::interval(dispatcher.settings.tick());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_slow_check = tokio::time::Instant::now();
    let mut last_prune: Option<tokio::time::Instant> = None;
    let stopped = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break true,
            _ = ticker.tick() => {}
        }
        if dispatcher.locks.is_closed() {
            break false;
        }
        while let Some(done) = cycles.try_join_next() {
            match done {
                Ok(store) => {
                    active.remove(&store);
                }
                Err(e) => {
                    // A panicking cycle is a bug; its store may stay locked in this session,
                    // so the lock connection is dropped (and with it every lock) below.
                    warn!(error = %e, "a store cycle panicked");
                    break;
                }
            }
        }
        if active.len() > cycles.len() {
            break false;
        }
        let mut due = match due_stores(&dispatcher).await {
            Ok(due) => due,
            Err(e) => {
                debug!(error = %e, "cannot read due stores");
                continue;
            }
        };
        if last_slow_check.elapsed() >= SLOW_CHECK_EVERY {
            last_slow_check = tokio::time::Instant::now();
            match stale_claim_stores(&dispatcher).await {
                Ok(stale) => due.extend(stale),
                Err(e) => debug!(error = %e, "cannot read stale claims"),
            }
            if let Err(e) = resync_reopened_stores(&dispatcher).await {
                debug!(error = %e, "cannot check for reopened stores");
            }
        }
        for store in due {
            if active.len() >= dispatcher.settings.concurrency {
                break;
            }
            if active.insert(store) {
                let dispatcher = dispatcher.clone();
                let stop = stop.clone();
                cycles.spawn(async move {
                    if let Err(e) = store_cycle::run(&dispatcher, store, &stop).await {
                        warn!(store = %store, error = %e, "store cycle failed; will retry");
                    }
                    store
                });
            }
        }
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(tokio::time::Instant::now());
            let dispatcher = dispatcher.clone();
            tokio::spawn(async move { prune(&dispatcher).await });
        }
    };
    // Let running cycles finish their requests and release their claims.
    stop.cancel();
    while cycles.join_next().await.is_some() {}
    let _ = poller.await;
    stopped
}

async fn due_stores(d: &Dispatcher) -> Result<Vec<Uuid>, DispatchError> {
    let db = d.pool.get().await?;
    let batch = store_cycle::largest_batch(&d.settings) as i64;
    let rows = db
        .query(
            sql::DUE_STORES_SQL,
            &[
                &d.settings.flush_interval.as_secs_f64(),
                &batch,
                &d.settings.min_send_interval.as_secs_f64(),
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A store whose entries were closed because it was inactive, of another type or missing,
/// and that is now an active marketplace store, gets every listing enqueued again: the
/// `stores` table is not replicated, so this is the only way its stock catches up.
async fn resync_reopened_stores(d: &Dispatcher) -> Result<(), DispatchError> {
    let mut db = d.pool.get().await?;
    let reopened: Vec<(Uuid, String)> = db
        .query(sql::REOPENED_STORES_SQL, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let reason = crate::capture::seeds::Reason::Resync;
    for (store, was) in reopened {
        let tx = db.transaction().await?;
        let pairs = tx
            .execute(
                crate::capture::queue::ENQUEUE_ALL_LISTED_SQL,
                &[&reason.as_str(), &reason.priority(), &Some(store)],
            )
            .await?;
        tx.execute(sql::CLEAR_GATED_SQL, &[&store]).await?;
        tx.commit().await?;
        info!(store = %store, previously = %was, pairs, "store can be sent to again; its listings are enqueued");
    }
    Ok(())
}

async fn stale_claim_stores(d: &Dispatcher) -> Result<Vec<Uuid>, DispatchError> {
    let db = d.pool.get().await?;
    let rows = db
        .query(
            sql::STALE_CLAIM_STORES_SQL,
            &[&STALE_CLAIM_AFTER.as_secs_f64()],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn prune(d: &Dispatcher) {
    let Ok(db) = d.pool.get().await else {
        return;
    };
    let s = &d.settings;
    let sent_window = s
        .identical_request_window
        .max(s.rate_limit_window)
        .max(s.min_send_interval)
        + Duration::from_secs(3600);
    let results = [
        db.execute(sql::PRUNE_QUEUE_SQL, &[&s.retention_days]).await,
        db.execute(sql::PRUNE_BATCHES_SQL, &[&s.retention_days])
            .await,
        db.execute(sql::PRUNE_CAPTURE_BATCHES_SQL, &[&s.retention_days])
            .await,
        db.execute(sql::PRUNE_LEGACY_CAPTURE_LOG_SQL, &[&s.retention_days])
            .await,
        db.execute(sql::PRUNE_API_LOG_SQL, &[&s.api_log_retention_days])
            .await,
        db.execute(sql::PRUNE_SENT_REQUESTS_SQL, &[&sent_window.as_secs_f64()])
            .await,
    ];
    for r in results {
        match r {
            Ok(n) if n > 0 => debug!(rows = n, "pruned"),
            Ok(_) => {}
            Err(e) => debug!(error = %e, "pruning failed"),
        }
    }
}
