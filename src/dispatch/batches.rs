//! Batch results: `stock_sync.batches` holds every accepted push whose per-item result is
//! not known yet; the poller reads Trendyol batch results and Hepsiburada upload statuses
//! until they are final, then applies them per item in one transaction per batch.
//!
//! * Item success moves the quantity to `listing_state.accepted_quantity` (guarded by the
//!   batch id, so an older result never overwrites a newer one).
//! * Item failure clears the "sent" mark and re-enqueues the pair (`RETRY`, with its attempt
//!   count); at `max_attempts` it becomes a dead letter instead.
//! * A batch the marketplace does not know, or that has no final result after
//!   `batch_result_timeout`, fails all its items the same way.
//! * A result that cannot be read item by item (an error row naming no item of the upload)
//!   leaves every item unknown: in doubt and re-enqueued with no attempt counted, up to
//!   [`FREE_UNKNOWN_OUTCOMES`] in a row per pair (`listing_state.unknown_outcomes`); each
//!   further one counts an attempt, so the pair is dead-lettered at `max_attempts` instead of
//!   being resent forever. A known outcome (accepted or refused) ends the streak.
//!
//! Polls are leased by moving `next_poll_at` forward in the claiming statement, and a batch
//! is finished only while still `polling` under a row lock, so instances can share this
//! work and a crash mid-poll only means polling again (when the lease ends). A poll that
//! fails on the database, or that a stopping poller skips, gives its lease back once the
//! database answers again (the next poller of the process does it), so a server restart does
//! not hold results back for a whole lease.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, GenericClient};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;

use super::apilog::{self, kind, Entry};
use super::outcome::{label, message, retry_delay};
use super::{DispatchError, Dispatcher, FREE_UNKNOWN_OUTCOMES};
use crate::backoff::BackoffPolicy;
use crate::failures::FailureLog;
use crate::marketplace::{is_fulfilled_by_marketplace, BatchStatus, Provider};
use crate::metrics::metrics;
use crate::queue::{self, Reason, RequeuedItem};
use crate::stores::{self, row, Limiter, RequestKind};

const TICK: Duration = Duration::from_millis(250);
/// How long a claimed poll is leased to its poller (other instances skip it meanwhile).
const POLL_LEASE: Duration = Duration::from_secs(30);
/// Gaps between two polls of one batch: from `first_poll_delay`, doubling, at most 30 s —
/// results usually come within seconds, and a slow one should not cost a read a second.
const MAX_POLL_GAP: Duration = Duration::from_secs(30);

const INSERT_SQL: &str = r#"
INSERT INTO stock_sync.batches (store_id, provider, batch_ref, items, next_poll_at)
VALUES ($1, $2, $3, $4::text::jsonb, now() + make_interval(secs => $5::float8))
RETURNING id
"#;

/// Batches whose result is due, leased for `$1` seconds, so other instances skip them.
const DUE_SQL: &str = r#"
UPDATE stock_sync.batches b
SET next_poll_at = now() + make_interval(secs => $1::float8), polls = b.polls + 1
WHERE b.id IN (
    SELECT id FROM stock_sync.batches
    WHERE state = 'polling' AND next_poll_at <= now()
    ORDER BY next_poll_at
    LIMIT 16
    FOR UPDATE SKIP LOCKED
)
RETURNING b.id, b.store_id, b.provider, b.batch_ref, b.items::text,
          EXTRACT(EPOCH FROM now() - b.created_at)::float8, b.polls
"#;

/// The next poll of a batch whose result is still pending, `$2` seconds from now.
const SCHEDULE_SQL: &str = r#"
UPDATE stock_sync.batches SET next_poll_at = now() + make_interval(secs => $2::float8)
WHERE id = $1 AND state = 'polling'
"#;

/// Gives back the leases of batches whose poll failed after [`DUE_SQL`] leased them (a lost
/// connection, a restarting server), or that were not polled because the poller stopped:
/// they are polled again after the gap a pending result gets, not when the lease ends. A
/// lease taken since by another poller (`polls` moved on) is left alone.
const GIVE_BACK_SQL: &str = r#"
UPDATE stock_sync.batches b
SET next_poll_at = LEAST(b.next_poll_at, now() + make_interval(secs => l.gap))
FROM unnest($1::bigint[], $2::int[], $3::float8[]) AS l(id, polls, gap)
WHERE b.id = l.id AND b.polls = l.polls AND b.state = 'polling'
"#;

/// Locks a batch for finishing; only a batch still polling is finished (once).
const LOCK_SQL: &str = "SELECT state FROM stock_sync.batches WHERE id = $1 FOR UPDATE";

const FINISH_SQL: &str =
    "UPDATE stock_sync.batches SET state = $2, finished_at = now() WHERE id = $1";

/// Batches of a store whose result is still open (Hepsiburada allows only a few).
const OPEN_SQL: &str =
    "SELECT count(*) FROM stock_sync.batches WHERE store_id = $1 AND state = 'polling'";

/// Retention of finished batches (`$1` days).
const PRUNE_SQL: &str = "DELETE FROM stock_sync.batches WHERE state <> 'polling' AND finished_at < now() - make_interval(days => $1::int)";

/// What a batch row remembers of each request item (`batches.items`, in request order).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct BatchItem {
    pub queue_id: i64,
    pub product_id: Uuid,
    pub key: String,
    pub quantity: i32,
    pub attempts: i32,
    pub priority: i32,
}

/// Records an accepted push to poll. Returns the batch's id.
pub(super) async fn insert(
    db: &impl GenericClient,
    store: Uuid,
    provider: Provider,
    batch_ref: &str,
    items: &[BatchItem],
    first_poll: Duration,
) -> Result<i64, DispatchError> {
    let items_json = serde_json::to_string(items).expect("batch items serialise");
    Ok(db
        .query_one(
            INSERT_SQL,
            &[
                &store,
                &provider.as_str(),
                &batch_ref,
                &items_json,
                &first_poll.as_secs_f64(),
            ],
        )
        .await?
        .get(0))
}

/// Uploads of a store whose result is still open.
pub(super) async fn open_batches(
    db: &impl GenericClient,
    store: Uuid,
) -> Result<i64, DispatchError> {
    Ok(db.query_one(OPEN_SQL, &[&store]).await?.get(0))
}

pub(super) async fn prune(
    db: &impl GenericClient,
    retention_days: i32,
) -> Result<u64, DispatchError> {
    Ok(db.execute(PRUNE_SQL, &[&retention_days]).await?)
}

struct DueBatch {
    id: i64,
    store_id: Uuid,
    provider: String,
    batch_ref: String,
    items: String,
    age: Duration,
    polls: i32,
}

/// Leases a poller of this process took and did not finish: its poll failed, or it was
/// stopped first (the lock connection broke). (batch id, `polls` at the lease.) Only the
/// poller adds and removes; the lock is never held across an await.
#[derive(Default)]
pub(super) struct UnfinishedLeases(std::sync::Mutex<Vec<(i64, i32)>>);

impl UnfinishedLeases {
    fn add(&self, batch: &DueBatch) {
        let mut leases = self.0.lock().unwrap_or_else(|e| e.into_inner());
        leases.push((batch.id, batch.polls));
    }

    /// Gives the leases back ([`GIVE_BACK_SQL`]); kept for the next tick if the database
    /// still fails.
    async fn give_back(&self, d: &Dispatcher, db: &Client) -> Result<(), DispatchError> {
        let leases = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if leases.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = leases.iter().map(|(id, _)| *id).collect();
        let polls: Vec<i32> = leases.iter().map(|(_, polls)| *polls).collect();
        let gaps: Vec<f64> = polls
            .iter()
            .map(|&p| next_poll_gap(d, p).as_secs_f64())
            .collect();
        db.execute(GIVE_BACK_SQL, &[&ids, &polls, &gaps]).await?;
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.retain(|lease| !leases.contains(lease));
        Ok(())
    }
}

/// Polls due batches until `stop`.
pub(super) async fn run(d: Arc<Dispatcher>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = FailureLog::new("batch polling");
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        failures.track(poll_due(&d, &stop).await);
    }
}

async fn poll_due(d: &Dispatcher, stop: &CancellationToken) -> Result<(), DispatchError> {
    let mut db = d.pool.get().await?;
    d.unfinished_polls.give_back(d, &db).await?;
    let due: Vec<DueBatch> = db
        .query(DUE_SQL, &[&POLL_LEASE.as_secs_f64()])
        .await?
        .iter()
        .map(|r| DueBatch {
            id: r.get(0),
            store_id: r.get(1),
            provider: r.get(2),
            batch_ref: r.get(3),
            items: r.get(4),
            age: Duration::from_secs_f64(r.get::<_, f64>(5).max(0.0)),
            polls: r.get(6),
        })
        .collect();
    for batch in due {
        if stop.is_cancelled() {
            d.unfinished_polls.add(&batch);
            continue;
        }
        if let Err(e) = poll_one(d, &mut db, &batch).await {
            warn!(batch = batch.id, batch_ref = %batch.batch_ref, error = %e, "reading a batch result failed; will retry");
            d.unfinished_polls.add(&batch);
        }
    }
    Ok(())
}

/// The gap before the next poll of a batch polled `polls` times.
fn next_poll_gap(d: &Dispatcher, polls: i32) -> Duration {
    BackoffPolicy::exact(d.settings.first_poll_delay, MAX_POLL_GAP).delay_after(polls.max(1) as u32)
}

async fn poll_one(d: &Dispatcher, db: &mut Client, b: &DueBatch) -> Result<(), DispatchError> {
    let items: Vec<BatchItem> = match serde_json::from_str(&b.items) {
        Ok(items) => items,
        Err(e) => return expire_unreadable(d, db, b, e.to_string()).await,
    };
    let timed_out = b.age >= d.settings.batch_result_timeout;
    let give_up = |why: String| fail_all(items.len(), why);
    let Some(provider) = Provider::from_store_type(&b.provider) else {
        let why = format!("unknown provider {}", b.provider);
        return apply(d, db, b, &items, give_up(why), "expired").await;
    };
    let creds = row::store_credentials(db, b.store_id, provider, &d.settings.user_agents).await?;
    // A paused store is not asked anything (a 403 block, missing credentials or user agent):
    // its results wait, up to the batch-result timeout.
    let paused = stores::state::read(db, b.store_id, std::time::Duration::ZERO)
        .await?
        .paused_reason
        .is_some();
    let Some(creds) = creds.filter(|_| !paused) else {
        if timed_out {
            let why = "the store has no usable credentials to read the batch result".to_string();
            return apply(d, db, b, &items, give_up(why), "expired").await;
        }
        return schedule(db, d, b).await;
    };
    let endpoint = provider.status_endpoint();
    let limiter = Limiter::new(&d.settings.limits, b.store_id);
    if limiter.slot_wait(db, endpoint, None).await?.is_some() {
        return schedule(db, d, b).await;
    }
    limiter
        .record(db, endpoint, RequestKind::Read, None)
        .await?;
    let keys: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
    let (status, exchange) = d.client.batch_status(&creds, &b.batch_ref, &keys).await;
    let m = metrics();
    let store_label = b.store_id.to_string();
    let (outcome_label, error) = match &status {
        BatchStatus::Pending | BatchStatus::UnknownStatus(_) | BatchStatus::Done(_) => {
            ("2xx", None)
        }
        BatchStatus::OutcomeUnknown(why) => ("2xx", Some(why.clone())),
        BatchStatus::NotFound => ("404", Some("batch unknown to the marketplace".to_string())),
        BatchStatus::Failed(outcome) => (label(outcome), message(outcome)),
    };
    m.requests_sent
        .with_label_values(&[&store_label, "status", outcome_label])
        .inc();
    m.request_duration_seconds
        .with_label_values(&[provider.as_str(), "status"])
        .observe(exchange.duration.as_secs_f64());
    apilog::write(
        db,
        Entry {
            provider: provider.as_str(),
            kind: kind::GET_BATCH_STATUS,
            store_id: Some(b.store_id),
            item_count: Some(items.len()),
            status_code: exchange.status,
            duration: Some(exchange.duration),
            batch_id: Some(&b.batch_ref),
            success: error.is_none(),
            response_body: Some(&exchange.response_body),
            error_message: error.as_deref(),
            ..Entry::default()
        },
    )
    .await;
    match status {
        BatchStatus::Done(results) => {
            let mut outcomes: Vec<(usize, ItemFate)> = results
                .into_iter()
                .filter(|r| r.index < items.len())
                .map(|r| {
                    let fate = if r.success {
                        ItemFate::Accepted
                    } else {
                        let reason = if r.reasons.is_empty() {
                            format!("{} failed without a reason", r.key)
                        } else {
                            format!("{}: {}", r.key, r.reasons.join("; "))
                        };
                        if r.reasons.iter().any(|r| is_fulfilled_by_marketplace(r)) {
                            ItemFate::Fulfilled(reason)
                        } else {
                            ItemFate::Refused {
                                reason,
                                permanent: r.permanent,
                            }
                        }
                    };
                    (r.index, fate)
                })
                .collect();
            // A result that leaves an item out does not count as its success.
            for i in 0..items.len() {
                if !outcomes.iter().any(|(j, _)| *j == i) {
                    outcomes.push((i, ItemFate::refused("item missing from the batch result")));
                }
            }
            apply(d, db, b, &items, outcomes, "done").await
        }
        BatchStatus::OutcomeUnknown(why) => {
            warn!(store = %b.store_id, batch = %b.batch_ref, %why, "the upload's result names no item it can be matched to; sending its items again");
            let fate =
                |_| ItemFate::Unknown(format!("upload result unreadable item by item: {why}"));
            let outcomes = (0..items.len()).map(|i| (i, fate(i))).collect();
            apply(d, db, b, &items, outcomes, "done").await
        }
        BatchStatus::NotFound => {
            let why = "the marketplace does not know this batch".to_string();
            apply(d, db, b, &items, give_up(why), "expired").await
        }
        BatchStatus::Pending | BatchStatus::UnknownStatus(_) | BatchStatus::Failed(_)
            if timed_out =>
        {
            let why = format!(
                "no final batch result after {:?}",
                d.settings.batch_result_timeout
            );
            apply(d, db, b, &items, give_up(why), "expired").await
        }
        BatchStatus::Pending => schedule(db, d, b).await,
        BatchStatus::UnknownStatus(word) => {
            unknown_status_word(provider, &word);
            schedule(db, d, b).await
        }
        BatchStatus::Failed(outcome) => {
            debug!(batch = %b.batch_ref, outcome = ?outcome, "batch result unreadable for now");
            schedule(db, d, b).await
        }
    }
}

/// A status word no client has seen: one warning per new word (per process), and a count.
fn unknown_status_word(provider: Provider, word: &str) {
    static SEEN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    metrics()
        .unknown_status_words
        .with_label_values(&[provider.as_str()])
        .inc();
    let seen = SEEN.get_or_init(Default::default);
    let new = seen
        .lock()
        .map(|mut words| words.len() < 1000 && words.insert(word.to_string()))
        .unwrap_or(false);
    if new {
        warn!(provider = %provider, word, "the marketplace answered an upload status word stocksync does not know; the upload stays pending until a known word or the result timeout");
    }
}

async fn schedule(db: &Client, d: &Dispatcher, b: &DueBatch) -> Result<(), DispatchError> {
    let gap = next_poll_gap(d, b.polls);
    db.execute(SCHEDULE_SQL, &[&b.id, &gap.as_secs_f64()])
        .await?;
    Ok(())
}

/// A batch whose stored items cannot be read (this code writes them with serde, so the row was
/// edited by hand) cannot be applied item by item, and polling it again changes nothing. Its
/// pairs are still known: every listing whose last push was this batch. They fail as a whole
/// (in doubt and re-enqueued, to be recomputed and sent again) and the batch is expired.
async fn expire_unreadable(
    d: &Dispatcher,
    db: &mut Client,
    b: &DueBatch,
    error: String,
) -> Result<(), DispatchError> {
    let sent = queue::sent_in_batch(db, b.store_id, b.id).await?;
    warn!(batch = b.id, batch_ref = %b.batch_ref, error = %error, listings = sent.len(),
        "stored batch items are unreadable; expiring the batch and sending its listings again");
    let items: Vec<BatchItem> = sent
        .iter()
        .map(|(product_id, quantity)| BatchItem {
            queue_id: 0,
            product_id: *product_id,
            key: String::new(),
            quantity: *quantity,
            attempts: 0,
            priority: Reason::Resync.priority(),
        })
        .collect();
    // Whether the marketplace applied them is unknown: resend even an unchanged quantity.
    let why = format!("batch {} items unreadable: {error}", b.id);
    let outcomes = (0..items.len())
        .map(|i| (i, ItemFate::Unknown(why.clone())))
        .collect();
    apply(d, db, b, &items, outcomes, "expired").await
}

/// What the result said of one item.
enum ItemFate {
    Accepted,
    /// Refused for the item's own sake; `permanent` when only a person can change it.
    Refused {
        reason: String,
        permanent: bool,
    },
    /// Whether the marketplace applied it is unknown: sent again, no attempt counted.
    Unknown(String),
    /// The marketplace fulfils the listing itself and keeps its stock: recorded, and the
    /// pair goes back to the queue without an attempt, where dispatch closes it unsent.
    Fulfilled(String),
}

impl ItemFate {
    fn refused(reason: impl Into<String>) -> ItemFate {
        ItemFate::Refused {
            reason: reason.into(),
            permanent: false,
        }
    }
}

/// The same failure for each of `count` items, as [`apply`] takes outcomes.
fn fail_all(count: usize, why: String) -> Vec<(usize, ItemFate)> {
    (0..count)
        .map(|i| (i, ItemFate::refused(why.clone())))
        .collect()
}

/// Applies item outcomes (by request position) and closes the batch with `final_state`,
/// once.
async fn apply(
    d: &Dispatcher,
    db: &mut Client,
    b: &DueBatch,
    items: &[BatchItem],
    outcomes: Vec<(usize, ItemFate)>,
    final_state: &str,
) -> Result<(), DispatchError> {
    let max_attempts = d.settings.max_attempts;
    let mut accepted_products = Vec::new();
    let mut accepted_quantities = Vec::new();
    let mut failed: Vec<RequeuedItem> = Vec::new();
    let mut unknown_items: Vec<(&BatchItem, String)> = Vec::new();
    let mut fulfilled_items: Vec<RequeuedItem> = Vec::new();
    for (index, fate) in outcomes {
        let item = &items[index];
        match fate {
            ItemFate::Accepted => {
                accepted_products.push(item.product_id);
                accepted_quantities.push(item.quantity);
            }
            ItemFate::Refused { reason, permanent } => {
                // A listing that refuses until a person acts is dead-lettered at once, with
                // the marketplace's reason, instead of churning through retries.
                let attempts = if permanent {
                    max_attempts.max(item.attempts + 1)
                } else {
                    item.attempts + 1
                };
                failed.push(RequeuedItem {
                    product_id: item.product_id,
                    priority: item.priority,
                    attempts,
                    delay: retry_delay(attempts),
                    error: reason,
                });
            }
            ItemFate::Unknown(reason) => unknown_items.push((item, reason)),
            ItemFate::Fulfilled(reason) => {
                fulfilled_items.push(RequeuedItem {
                    product_id: item.product_id,
                    priority: item.priority,
                    attempts: item.attempts,
                    delay: Duration::ZERO,
                    error: reason,
                });
            }
        }
    }
    // Known outcomes end a pair's streak of unknown ones.
    let known: Vec<Uuid> = accepted_products
        .iter()
        .copied()
        .chain(failed.iter().map(|f| f.product_id))
        .collect();
    let unknown: Vec<Uuid> = unknown_items.iter().map(|(i, _)| i.product_id).collect();
    let tx = db.transaction().await?;
    let state: Option<String> = tx.query_opt(LOCK_SQL, &[&b.id]).await?.map(|r| r.get(0));
    if state.as_deref() != Some("polling") {
        return Ok(());
    }
    // Counted under the batch's lock, so each result counts once.
    let streaks = queue::count_unknown_outcomes(&tx, b.store_id, &unknown).await?;
    queue::clear_unknown_outcomes(&tx, b.store_id, &known).await?;
    let mut free_unknown: Vec<RequeuedItem> = Vec::new();
    for (item, reason) in unknown_items {
        let streak = streaks.get(&item.product_id).copied().unwrap_or(1);
        if streak > FREE_UNKNOWN_OUTCOMES {
            // Sent again and again with no readable answer: from now on each such outcome
            // counts like a refusal, so the pair ends in a dead letter instead of a loop.
            let attempts = item.attempts + 1;
            failed.push(RequeuedItem {
                product_id: item.product_id,
                priority: item.priority,
                attempts,
                delay: retry_delay(attempts),
                error: format!("{reason} ({streak} unknown outcomes in a row)"),
            });
        } else {
            free_unknown.push(RequeuedItem {
                product_id: item.product_id,
                priority: item.priority,
                attempts: item.attempts,
                delay: retry_delay(0),
                error: reason,
            });
        }
    }
    // Items that counted an attempt come first (reported below), then the free resends.
    let counted = failed.len();
    let fulfilled: Vec<Uuid> = fulfilled_items.iter().map(|f| f.product_id).collect();
    failed.extend(free_unknown);
    failed.extend(fulfilled_items);
    let failed_products: Vec<Uuid> = failed.iter().map(|f| f.product_id).collect();
    // Possibly applied: nothing may pass for "unchanged" until a push is accepted again.
    queue::mark_in_doubt(&tx, b.store_id, &unknown).await?;
    queue::item_accepted(
        &tx,
        b.store_id,
        &accepted_products,
        &accepted_quantities,
        b.id,
    )
    .await?;
    queue::item_failed(&tx, b.store_id, &failed_products, b.id).await?;
    queue::mark_fulfilled_by_marketplace(&tx, b.store_id, &fulfilled, true).await?;
    queue::requeue_failed_items(&tx, b.store_id, max_attempts, &failed).await?;
    tx.execute(FINISH_SQL, &[&b.id, &final_state]).await?;
    tx.commit().await?;

    let m = metrics();
    let store_label = b.store_id.to_string();
    m.items_sent
        .with_label_values(&[&store_label, "accepted"])
        .inc_by(accepted_products.len() as u64);
    m.items_sent
        .with_label_values(&[&store_label, "failed"])
        .inc_by(failed.len() as u64);
    for f in &failed[..counted] {
        if f.attempts >= max_attempts {
            m.dead_letters.with_label_values(&[&store_label]).inc();
            warn!(store = %b.store_id, product = %f.product_id, attempts = f.attempts, error = %f.error, "item dead-lettered");
        } else {
            warn!(store = %b.store_id, product = %f.product_id, attempts = f.attempts, error = %f.error, "item refused by the marketplace; will retry");
        }
    }
    debug!(batch = %b.batch_ref, accepted = accepted_products.len(), failed = failed.len(), final_state, "batch result applied");
    Ok(())
}
