//! Dispatch: pending queue entries -> computed quantities -> marketplace requests.
//!
//! # The cycle of one store ([`store_cycle`])
//! A store is *due* when its oldest pending, non-deferred entry is `flush_interval` old or a
//! full batch is ready ([`crate::queue::due_stores`]). Its cycle, run by one dispatcher of one
//! instance at a time, has one file per step:
//!
//! 1. **lock and orphans** ([`store_cycle`]): the store's advisory lock
//!    ([`crate::locks::STORE_CYCLE`]) on the dispatcher's lock connection (held elsewhere:
//!    skip); claims whose cycle is gone go back to pending;
//! 2. **gates and pauses** ([`crate::stores::gates`]): no `stores` row, a foreign type, inactive or
//!    `send_stock = false` close the entries with that outcome; missing or refused
//!    credentials pause the store until they change;
//! 3. **limits** ([`crate::stores::limiter`]): backoff and Retry-After, `min_send_interval`,
//!    open Hepsiburada uploads; later, per request, open Hepsiburada uploads again (each half
//!    of a split batch is an upload), the rate window, the per-minute caps and the
//!    identical-body rule;
//! 4. **claim** ([`crate::queue::claim`]): up to a batch of entries under a fresh
//!    [`crate::queue::ClaimToken`] (`FOR UPDATE SKIP LOCKED`, priority then age);
//! 5. **build** ([`build`]): quantities with one statement ([`crate::stock`]); entries equal to
//!    what the marketplace was last told close as `unchanged`, entries without a marketplace
//!    key as `no_key` (reported);
//! 6. **send** ([`send`]): a body identical to one sent within `identical_request_window` is
//!    re-ordered or deferred; the rate window is waited for; the pairs are marked in doubt and
//!    the request recorded before it leaves;
//! 7. **outcome** ([`outcome`]): the answer becomes queue transitions and store state (a 400
//!    is split in halves until the offending item is alone);
//! 8. **batch results** ([`batches`], a task of its own): accepted pushes are polled until
//!    their per-item result is final.
//!
//! # Invariants
//! * An entry is `in_flight` only while the cycle that claimed it lives; every move out of
//!   `in_flight` names the cycle's claim token, so a cycle whose claims were taken over
//!   changes nothing and stops. A cycle checks its lock connection before every request: once
//!   the lock is gone, nothing more leaves.
//! * The marketplace's last accepted quantity changes only on item-level success read from
//!   the batch result, and never goes back to an older batch's value. While a result is open
//!   the sent quantity counts as told, so the same value is not sent twice.
//! * Before a request leaves, its pairs are marked `in_doubt` (with the request recorded for
//!   the limiters); only an accepted push clears the mark. A crash, timeout or 5xx after the
//!   request left therefore leads to a resend of the then current quantity (harmless), never
//!   to an "unchanged" skip while the marketplace may hold something else.
//! * No request carries credentials the store does not have, and nothing is sent in dry run.

pub mod apilog;
mod batches;
mod build;
mod outcome;
mod retry;
mod send;
mod store_cycle;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::backoff::BackoffPolicy;
use crate::db::DbConfig;
use crate::failures::FailureLog;
use crate::marketplace::read::match_key;
use crate::marketplace::{ClientSettings, FingerprintKey, MarketplaceClient, Provider, UserAgents};
use crate::metrics::metrics;
use crate::queue::{self, QueueError, Reason};
use crate::stock::QuantityRules;
use crate::stores::{self, state as store_state, LimitSettings, StoreError};
use retry::StoreRetries;

/// Hepsiburada is said to keep at most five uploads per merchant in processing.
pub const MAX_OPEN_HEPSIBURADA_BATCHES: i64 = 5;

/// Unknown upload outcomes in a row (a result whose error row names no item of the upload)
/// a pair may have before each further one counts an attempt like a refusal, so
/// `max_attempts` ends it in a dead letter ([`batches`]). Three: one or two such results can
/// be a passing fault of the marketplace, and a resend costs little; a third in a row means
/// the pair meets the same unreadable answer every time, and would otherwise be resent forever.
pub const FREE_UNKNOWN_OUTCOMES: i32 = 3;

/// Errors that end one cycle (the dispatcher logs them and goes on).
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("database: {}", crate::db::describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("connection pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What dispatch needs from the configuration (built by `ops` from `Config`).
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// Names this process in `queue.claimed_by` (host:pid).
    pub instance_id: String,
    pub flush_interval: Duration,
    /// Every limit a store's requests obey.
    pub limits: LimitSettings,
    pub max_quantity: i32,
    pub safety_stock: i32,
    pub safety_stock_per_store: HashMap<Uuid, i32>,
    pub dry_run: bool,
    pub client: ClientSettings,
    /// Who stocksync says it is, per marketplace and store.
    pub user_agents: UserAgents,
    /// A Retry-After further away than this is garbage: ignored.
    pub max_retry_after: Duration,
    /// A forbidden (403) store probes itself after this, doubling per 403 up to an hour.
    pub forbidden_backoff: Duration,
    pub hepsiburada_batch_size: usize,
    /// Failed sends of one item before it is dead-lettered.
    pub max_attempts: i32,
    /// A batch whose result is not final after this long fails its items (they are retried).
    pub batch_result_timeout: Duration,
    /// Store cycles running at once in this process.
    pub concurrency: usize,
    /// First gap between two polls of a batch result (doubles per poll, up to 30 s).
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
            limits: LimitSettings::default(),
            max_quantity: crate::stock::DEFAULT_MAX_QUANTITY,
            safety_stock: 0,
            safety_stock_per_store: HashMap::new(),
            dry_run: false,
            client: ClientSettings {
                trendyol_url: crate::marketplace::TRENDYOL_PRODUCTION_URL.into(),
                hepsiburada_url: crate::marketplace::HEPSIBURADA_PRODUCTION_URL.into(),
                timeout: Duration::from_secs(30),
            },
            user_agents: UserAgents::default(),
            max_retry_after: Duration::from_secs(600),
            forbidden_backoff: Duration::from_secs(60),
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

    /// What the gates need (`fingerprint_key`: [`Dispatcher::fingerprint_key`]).
    pub fn gates<'a>(
        &'a self,
        fingerprint_key: &'a FingerprintKey,
    ) -> stores::gates::GateSettings<'a> {
        stores::gates::GateSettings {
            min_send_interval: self.limits.min_send_interval,
            user_agents: &self.user_agents,
            fingerprint_key,
        }
    }

    /// Items per push for a provider.
    pub fn batch_size(&self, provider: Provider) -> usize {
        match provider {
            Provider::Trendyol => provider.max_batch(),
            Provider::Hepsiburada => self.hepsiburada_batch_size.clamp(1, 10_000),
        }
    }

    /// The largest batch of any provider (a store with that many ready entries is due).
    fn largest_batch(&self) -> usize {
        self.batch_size(Provider::Trendyol)
            .max(self.batch_size(Provider::Hepsiburada))
    }

    /// How long a claim lives without its cycle renewing it (before every request): a
    /// rate-window wait plus a request's timeout, twice, and a minute of slack. A claim past
    /// its lease is an orphan even if its connection lives.
    pub fn claim_lease(&self) -> Duration {
        2 * (self.limits.rate_limit_window + self.client.timeout) + Duration::from_secs(60)
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

/// What this process's dispatcher did lately per store, for `/readyz`: a store with due
/// work that no cycle of this process has finished (nor found another dispatcher working)
/// for a while means dispatch is stuck.
#[derive(Debug, Default)]
pub struct Progress {
    last: std::sync::Mutex<HashMap<Uuid, tokio::time::Instant>>,
}

impl Progress {
    fn touched(&self, store: Uuid) {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(store, tokio::time::Instant::now());
    }

    /// Whether a cycle of `store` finished (or found it worked elsewhere) within `within`.
    pub fn recent(&self, store: Uuid, within: Duration) -> bool {
        self.last
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&store)
            .is_some_and(|at| at.elapsed() <= within)
    }
}

/// Shared by the store cycles and the batch poller.
pub(crate) struct Dispatcher {
    pub pool: Pool,
    pub settings: DispatchSettings,
    pub client: MarketplaceClient,
    /// Holds the per-store advisory locks; they vanish with it if the process dies.
    pub locks: tokio_postgres::Client,
    pub progress: Arc<Progress>,
    /// Batch polls leased and not finished; outlives the lock connection, which a server
    /// restart takes down with the poll.
    unfinished_polls: Arc<batches::UnfinishedLeases>,
    /// This install's credential fingerprint key, read from the database once.
    fingerprint_key: Arc<tokio::sync::OnceCell<FingerprintKey>>,
}

impl Dispatcher {
    /// The install's fingerprint key (read, or made, on first use; it never changes).
    pub(crate) async fn fingerprint_key(
        &self,
        db: &impl tokio_postgres::GenericClient,
    ) -> Result<&FingerprintKey, DispatchError> {
        Ok(self
            .fingerprint_key
            .get_or_try_init(|| store_state::fingerprint_key(db))
            .await?)
    }
}

/// Reconnecting the lock connection: from half a second, doubling to 30 s (an outage of the
/// database is waited out without flooding its log).
const RECONNECT: BackoffPolicy =
    BackoffPolicy::new(Duration::from_millis(500), Duration::from_secs(30));
/// How often the slow checks run: orphaned claims, and stores that became sendable again.
const SLOW_CHECK_EVERY: Duration = Duration::from_secs(5);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How often the queue's planner statistics are checked (a catalogue read; the ANALYZE it
/// may start runs beside the cycles).
const STATISTICS_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Runs dispatch until `shutdown`: store cycles, the batch poller and pruning. Database
/// outages are waited out (logged), never fatal.
pub async fn run(
    pool: Pool,
    db: DbConfig,
    settings: DispatchSettings,
    progress: Arc<Progress>,
    shutdown: CancellationToken,
) {
    if settings.dry_run {
        info!("dry run: payloads are computed and written to the API log, nothing is sent");
    }
    let client = MarketplaceClient::new(settings.client.clone());
    let mut reconnect = RECONNECT.start();
    let unfinished_polls = Arc::new(batches::UnfinishedLeases::default());
    let fingerprint_key = Arc::new(tokio::sync::OnceCell::new());
    loop {
        let locks = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = db.connect() => c,
        };
        match locks {
            Ok(locks) => {
                reconnect.reset();
                let dispatcher = Arc::new(Dispatcher {
                    pool: pool.clone(),
                    settings: settings.clone(),
                    client: client.clone(),
                    locks,
                    progress: progress.clone(),
                    unfinished_polls: unfinished_polls.clone(),
                    fingerprint_key: fingerprint_key.clone(),
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
            _ = tokio::time::sleep(reconnect.next_delay()) => {}
        }
    }
}

/// The loop over one lock connection. Returns true on shutdown, false when the lock
/// connection broke (every cycle has ended by then).
async fn run_with(dispatcher: Arc<Dispatcher>, shutdown: &CancellationToken) -> bool {
    // Cancelled on shutdown, and when this lock connection is given up.
    let stop = shutdown.child_token();
    let mut cycles: JoinSet<(Uuid, Result<(), DispatchError>)> = JoinSet::new();
    let mut retries = StoreRetries::default();
    let mut active: HashSet<Uuid> = HashSet::new();
    let poller = tokio::spawn(batches::run(dispatcher.clone(), stop.clone()));
    let mut ticker = tokio::time::interval(dispatcher.settings.tick());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_slow_check = tokio::time::Instant::now();
    let mut last_prune: Option<tokio::time::Instant> = None;
    let mut pruning: Option<tokio::task::JoinHandle<()>> = None;
    let mut last_statistics_check: Option<tokio::time::Instant> = None;
    let mut statistics: Option<tokio::task::JoinHandle<Result<(), DispatchError>>> = None;
    let mut statistics_failures = FailureLog::new("checking the queue's planner statistics");
    let mut due_failures = FailureLog::new("reading due stores");
    // A cycle that claimed a full batch wakes the loop when it ends: a store with a backlog
    // (an initial sync, a resync) starts its next cycle at once instead of at the next tick
    // (which left it idle half a tick per batch on average). Other cycles wait for the tick,
    // so a store held back by its limits is not polled in a loop.
    let cycle_done = Arc::new(tokio::sync::Notify::new());
    let stopped = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break true,
            _ = ticker.tick() => {}
            _ = cycle_done.notified() => {}
        }
        if dispatcher.locks.is_closed() {
            break false;
        }
        if poller.is_finished() {
            // The poller ends only when stopped: anything else is a bug (a panic). A new
            // lock connection starts a new one.
            error!("the batch-result poller ended unexpectedly; restarting dispatch");
            break false;
        }
        if let Some(done) = pruning.take_if(|p| p.is_finished()) {
            if let Err(e) = done.await {
                error!(error = %e, "pruning panicked; it runs again in an hour");
            }
        }
        if let Some(done) = statistics.take_if(|s| s.is_finished()) {
            match done.await {
                Ok(result) => _ = statistics_failures.track(result),
                Err(e) => error!(error = %e, "the statistics check panicked; it runs again"),
            }
        }
        while let Some(done) = cycles.try_join_next() {
            match done {
                Ok((store, result)) => {
                    active.remove(&store);
                    match result {
                        Ok(()) => retries.succeeded(store),
                        Err(e) => retries.failed(store, &e),
                    }
                }
                Err(e) => {
                    // A panicking cycle is a bug; its store may stay locked in this session,
                    // so the lock connection is dropped (and with it every lock) below.
                    error!(error = %e, "a store cycle panicked; restarting dispatch");
                    break;
                }
            }
        }
        if active.len() > cycles.len() {
            break false;
        }
        let Some(mut due) = due_failures.track(due_stores(&dispatcher).await) else {
            metrics().dispatch_ready.set(0);
            continue;
        };
        metrics().dispatch_ready.set(1);
        if last_slow_check.elapsed() >= SLOW_CHECK_EVERY {
            last_slow_check = tokio::time::Instant::now();
            match stale_claim_stores(&dispatcher).await {
                Ok(stale) => due.extend(stale),
                Err(e) => warn!(error = %e, "cannot look for orphaned claims"),
            }
            if let Err(e) = resync_reopened_stores(&dispatcher).await {
                warn!(error = %e, "cannot check for stores that can be sent to again");
            }
            if let Err(e) = recheck_key_collisions(&dispatcher).await {
                warn!(error = %e, "cannot look again at listings whose keys collided");
            }
        }
        for store in due {
            if active.len() >= dispatcher.settings.concurrency {
                break;
            }
            if retries.may_run(&store) && active.insert(store) {
                let dispatcher = dispatcher.clone();
                let stop = stop.clone();
                let done = cycle_done.clone();
                cycles.spawn(async move {
                    let result = store_cycle::run(&dispatcher, store, &stop).await;
                    // Finished, or found another dispatcher working the store.
                    if let Ok(full) = result {
                        dispatcher.progress.touched(store);
                        if full {
                            done.notify_one();
                        }
                    }
                    (store, result.map(|_| ()))
                });
            }
        }
        if last_statistics_check.is_none_or(|at| at.elapsed() >= STATISTICS_CHECK_EVERY)
            && statistics.is_none()
        {
            last_statistics_check = Some(tokio::time::Instant::now());
            let dispatcher = dispatcher.clone();
            statistics = Some(tokio::spawn(async move {
                refresh_statistics(&dispatcher).await
            }));
        }
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(tokio::time::Instant::now());
            let dispatcher = dispatcher.clone();
            pruning = Some(tokio::spawn(async move { prune(&dispatcher).await }));
        }
    };
    // Not ready from here: the lock connection broke (a new one is sought) or shutdown.
    metrics().dispatch_ready.set(0);
    // Let running cycles finish their requests and release their claims.
    stop.cancel();
    while cycles.join_next().await.is_some() {}
    let _ = poller.await;
    stopped
}

async fn due_stores(d: &Dispatcher) -> Result<Vec<Uuid>, DispatchError> {
    let db = d.pool.get().await?;
    let s = &d.settings;
    Ok(queue::due_stores(
        &**db,
        s.flush_interval,
        s.largest_batch(),
        s.limits.min_send_interval,
    )
    .await?)
}

async fn stale_claim_stores(d: &Dispatcher) -> Result<Vec<Uuid>, DispatchError> {
    let db = d.pool.get().await?;
    Ok(queue::stale_claim_stores(&**db, d.settings.claim_lease()).await?)
}

/// A store whose entries were closed because it was inactive, of another type or missing,
/// and that is now an active marketplace store, gets every listing enqueued again: the
/// `stores` table is not replicated, so this is the only way its stock catches up.
async fn resync_reopened_stores(d: &Dispatcher) -> Result<(), DispatchError> {
    let mut db = d.pool.get().await?;
    for (store, was) in store_state::reopened(&**db).await? {
        let tx = db.transaction().await?;
        let pairs = queue::enqueue_all_listed(&*tx, Reason::Resync, Some(store)).await?;
        store_state::clear_gated(&*tx, store).await?;
        tx.commit().await?;
        info!(store = %store, previously = %was, pairs, "store can be sent to again; its listings are enqueued");
    }
    Ok(())
}

/// Products held back because their keys named one listing with another product's are
/// looked at again (the `products` table is not replicated, so a fixed barcode is noticed
/// only here): those that no longer collide are forgotten and their pairs enqueued.
async fn recheck_key_collisions(d: &Dispatcher) -> Result<(), DispatchError> {
    let db = d.pool.get().await?;
    let recorded = queue::key_collisions(&**db).await?;
    if recorded.is_empty() {
        return Ok(());
    }
    let providers: HashMap<Uuid, Provider> = stores::row::sendable_stores(&**db)
        .await?
        .into_iter()
        .map(|s| (s.id, s.provider))
        .collect();
    let mut by_store: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for c in recorded {
        by_store.entry(c.store_id).or_default().push(c.product_id);
    }
    for (store, products) in by_store {
        // A store that cannot be sent to keeps its record until it can.
        let Some(&provider) = providers.get(&store) else {
            continue;
        };
        let current = build::current_keys(&**db, store, provider, &products).await?;
        let keyed: Vec<(Uuid, String)> = current
            .iter()
            .filter(|(_, c)| c.listed)
            .filter_map(|(p, c)| Some((*p, match_key(provider, c.key.as_deref()?))))
            .collect();
        let still = build::collisions(&**db, store, provider, &keyed).await?;
        let resolved: Vec<Uuid> = products
            .into_iter()
            .filter(|p| !still.contains_key(p))
            .collect();
        if resolved.is_empty() {
            continue;
        }
        queue::clear_key_collisions(&**db, store, &resolved).await?;
        let pairs = queue::enqueue_pairs(&**db, store, &resolved, Reason::Resync).await?;
        info!(store = %store, pairs, "listings whose keys collided no longer do; enqueued");
    }
    Ok(())
}

/// Keeps the planner's picture of the queue current (see [`queue::refresh_statistics`]).
/// Runs every second; the loop reports a failure once per stretch, because a check that
/// alone keeps failing (an `ANALYZE` held up by a lock, say) leaves plans to go stale.
async fn refresh_statistics(d: &Dispatcher) -> Result<(), DispatchError> {
    let db = d.pool.get().await?;
    let tables = queue::refresh_statistics(&**db).await?;
    if !tables.is_empty() {
        info!(
            tables = %tables.join(", "),
            "changed more than their planner statistics knew; analysed"
        );
    }
    Ok(())
}

/// Retention of finished entries, batches, the API log and the limiters' records.
async fn prune(d: &Dispatcher) {
    let db = match d.pool.get().await {
        Ok(db) => db,
        Err(e) => return warn!(error = %e, "pruning skipped: no connection"),
    };
    let s = &d.settings;
    let results: [(&str, Result<u64, DispatchError>); 4] = [
        (
            "queue",
            queue::prune(&**db, s.retention_days)
                .await
                .map_err(Into::into),
        ),
        ("batches", batches::prune(&**db, s.retention_days).await),
        (
            "api log",
            apilog::prune(&**db, s.api_log_retention_days)
                .await
                .map_err(Into::into),
        ),
        (
            "sent requests",
            stores::limiter::prune(&**db, &s.limits)
                .await
                .map_err(Into::into),
        ),
    ];
    for (what, result) in results {
        match result {
            Ok(n) if n > 0 => debug!(rows = n, what, "pruned"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, what, "pruning failed"),
        }
    }
}
