//! The batch poller: reads Trendyol batch results and Hepsiburada upload statuses until they
//! are final, then applies them per item in one transaction per batch.
//!
//! * Item success moves the quantity to `listing_state.accepted_quantity` (guarded by the
//!   batch id, so an older result never overwrites a newer one).
//! * Item failure clears the "sent" mark and re-enqueues the pair (`RETRY`, with its attempt
//!   count); at `max_attempts` it becomes a dead letter instead.
//! * A batch the marketplace does not know, or that has no final result after
//!   `batch_result_timeout`, fails all its items the same way.
//!
//! Polls are leased by moving `next_poll_at` forward in the claiming statement, and a batch
//! is finished only while still `polling` under a row lock, so instances can share this
//! work and a crash mid-poll only means polling again.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Object;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;

use super::apilog::{self, kind, Entry};
use super::sql::*;
use super::store_cycle::{
    outcome_label, outcome_message, rate_window_wait, retry_delay, store_credentials, BatchItem,
};
use super::{DispatchError, Dispatcher};
use crate::marketplace::{BatchStatus, Provider};
use crate::metrics::metrics;

const TICK: Duration = Duration::from_millis(250);
/// Longest gap between two polls of one batch.
const MAX_POLL_GAP: Duration = Duration::from_secs(30);

struct DueBatch {
    id: i64,
    store_id: Uuid,
    provider: String,
    batch_ref: String,
    items: String,
    age: Duration,
}

pub(super) async fn run(d: Arc<Dispatcher>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(e) = poll_due(&d, &stop).await {
            debug!(error = %e, "batch polling failed; will retry");
        }
    }
}

async fn poll_due(d: &Dispatcher, stop: &CancellationToken) -> Result<(), DispatchError> {
    let mut db = d.pool.get().await?;
    let due: Vec<DueBatch> = db
        .query(
            DUE_BATCHES_SQL,
            &[
                &d.settings.first_poll_delay.as_secs_f64(),
                &MAX_POLL_GAP.as_secs_f64(),
            ],
        )
        .await?
        .iter()
        .map(|r| DueBatch {
            id: r.get(0),
            store_id: r.get(1),
            provider: r.get(2),
            batch_ref: r.get(3),
            items: r.get(4),
            age: Duration::from_secs_f64(r.get::<_, f64>(5).max(0.0)),
        })
        .collect();
    for batch in due {
        if stop.is_cancelled() {
            break;
        }
        if let Err(e) = poll_one(d, &mut db, &batch).await {
            warn!(batch = batch.id, batch_ref = %batch.batch_ref, error = %e, "reading a batch result failed; will retry");
        }
    }
    Ok(())
}

async fn poll_one(d: &Dispatcher, db: &mut Object, b: &DueBatch) -> Result<(), DispatchError> {
    let items: Vec<BatchItem> = match serde_json::from_str(&b.items) {
        Ok(items) => items,
        Err(e) => return expire_unreadable(d, db, b, e.to_string()).await,
    };
    let timed_out = b.age >= d.settings.batch_result_timeout;
    let give_up = |why: String| fail_all(items.len(), why);
    let Some(provider) = Provider::from_store_type(&b.provider) else {
        return apply(
            d,
            db,
            b,
            &items,
            give_up(format!("unknown provider {}", b.provider)),
            "expired",
        )
        .await;
    };
    let Some(creds) = store_credentials(db, b.store_id, provider).await? else {
        if timed_out {
            let why = "the store has no usable credentials to read the batch result".to_string();
            return apply(d, db, b, &items, give_up(why), "expired").await;
        }
        return Ok(());
    };
    let endpoint = provider.status_endpoint();
    if rate_window_wait(db, &d.settings, b.store_id, endpoint)
        .await?
        .is_some()
    {
        // Polled again after the lease the claim took.
        return Ok(());
    }
    db.execute(RECORD_STATUS_REQUEST_SQL, &[&b.store_id, &endpoint])
        .await?;
    let keys: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
    let (status, exchange) = d.client.batch_status(&creds, &b.batch_ref, &keys).await;
    let m = metrics();
    let store_label = b.store_id.to_string();
    let (label, error) = match &status {
        BatchStatus::Pending | BatchStatus::Done(_) => ("2xx", None),
        BatchStatus::NotFound => ("404", Some("batch unknown to the marketplace".to_string())),
        BatchStatus::Failed(outcome) => (outcome_label(outcome), outcome_message(outcome)),
    };
    m.requests_sent
        .with_label_values(&[&store_label, "status", label])
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
            let mut outcomes: Vec<(usize, Result<(), String>)> = results
                .into_iter()
                .filter(|r| r.index < items.len())
                .map(|r| {
                    let result = if r.success {
                        Ok(())
                    } else if r.reasons.is_empty() {
                        Err(format!("{} failed without a reason", r.key))
                    } else {
                        Err(format!("{}: {}", r.key, r.reasons.join("; ")))
                    };
                    (r.index, result)
                })
                .collect();
            // A result that leaves an item out does not count as its success.
            for i in 0..items.len() {
                if !outcomes.iter().any(|(j, _)| *j == i) {
                    outcomes.push((i, Err("item missing from the batch result".into())));
                }
            }
            apply(d, db, b, &items, outcomes, "done").await
        }
        BatchStatus::NotFound => {
            apply(
                d,
                db,
                b,
                &items,
                give_up("the marketplace does not know this batch".into()),
                "expired",
            )
            .await
        }
        BatchStatus::Pending | BatchStatus::Failed(_) if timed_out => {
            let why = format!(
                "no final batch result after {:?}",
                d.settings.batch_result_timeout
            );
            apply(d, db, b, &items, give_up(why), "expired").await
        }
        BatchStatus::Pending => Ok(()),
        BatchStatus::Failed(outcome) => {
            debug!(batch = %b.batch_ref, outcome = ?outcome, "batch result unreadable for now");
            Ok(())
        }
    }
}

/// A batch whose stored items cannot be read (this code writes them with serde, so the row was
/// edited by hand) cannot be applied item by item, and polling it again changes nothing. Its
/// pairs are still known: every listing whose last push was this batch. They fail as a whole
/// (in doubt and re-enqueued, to be recomputed and sent again) and the batch is expired.
async fn expire_unreadable(
    d: &Dispatcher,
    db: &mut Object,
    b: &DueBatch,
    error: String,
) -> Result<(), DispatchError> {
    let rows = db.query(SENT_IN_BATCH_SQL, &[&b.store_id, &b.id]).await?;
    warn!(batch = b.id, batch_ref = %b.batch_ref, error = %error, listings = rows.len(),
        "stored batch items are unreadable; expiring the batch and sending its listings again");
    let reason = crate::capture::seeds::Reason::Resync;
    let items: Vec<BatchItem> = rows
        .iter()
        .map(|r| BatchItem {
            queue_id: 0,
            product_id: r.get(0),
            key: String::new(),
            quantity: r.get(1),
            attempts: 0,
            priority: reason.priority(),
        })
        .collect();
    // Whether the marketplace applied them is unknown: resend even an unchanged quantity.
    let products: Vec<Uuid> = items.iter().map(|i| i.product_id).collect();
    db.execute(MARK_IN_DOUBT_SQL, &[&b.store_id, &products])
        .await?;
    let why = format!("batch {} items unreadable: {error}", b.id);
    apply(d, db, b, &items, fail_all(items.len(), why), "expired").await
}

/// The same failure for each of `count` items, as [`apply`] takes outcomes.
fn fail_all(count: usize, why: String) -> Vec<(usize, Result<(), String>)> {
    (0..count).map(|i| (i, Err(why.clone()))).collect()
}

/// Applies item outcomes (`(request position, Ok | Err(reason))`) and closes the batch with
/// `final_state`, once.
async fn apply(
    d: &Dispatcher,
    db: &mut Object,
    b: &DueBatch,
    items: &[BatchItem],
    outcomes: Vec<(usize, Result<(), String>)>,
    final_state: &str,
) -> Result<(), DispatchError> {
    let max_attempts = d.settings.max_attempts;
    let mut accepted_products = Vec::new();
    let mut accepted_quantities = Vec::new();
    let mut failed_products = Vec::new();
    let mut failed_priorities = Vec::new();
    let mut failed_attempts = Vec::new();
    let mut failed_delays = Vec::new();
    let mut failed_errors = Vec::new();
    for (index, result) in outcomes {
        let item = &items[index];
        match result {
            Ok(()) => {
                accepted_products.push(item.product_id);
                accepted_quantities.push(item.quantity);
            }
            Err(reason) => {
                let attempts = item.attempts + 1;
                failed_products.push(item.product_id);
                failed_priorities.push(item.priority);
                failed_attempts.push(attempts);
                failed_delays.push(retry_delay(attempts));
                failed_errors.push(reason);
            }
        }
    }
    let tx = db.transaction().await?;
    let state: Option<String> = tx
        .query_opt(LOCK_BATCH_SQL, &[&b.id])
        .await?
        .map(|r| r.get(0));
    if state.as_deref() != Some("polling") {
        return Ok(());
    }
    if !accepted_products.is_empty() {
        tx.execute(
            ITEM_ACCEPTED_SQL,
            &[&b.store_id, &accepted_products, &accepted_quantities, &b.id],
        )
        .await?;
    }
    if !failed_products.is_empty() {
        tx.execute(ITEM_FAILED_SQL, &[&b.store_id, &failed_products, &b.id])
            .await?;
        tx.execute(
            REQUEUE_FAILED_ITEMS_SQL,
            &[
                &b.store_id,
                &max_attempts,
                &failed_products,
                &failed_priorities,
                &failed_attempts,
                &failed_delays,
                &failed_errors,
            ],
        )
        .await?;
    }
    tx.execute(FINISH_BATCH_SQL, &[&b.id, &final_state]).await?;
    tx.commit().await?;

    let m = metrics();
    let store_label = b.store_id.to_string();
    m.items_sent
        .with_label_values(&[&store_label, "accepted"])
        .inc_by(accepted_products.len() as u64);
    m.items_sent
        .with_label_values(&[&store_label, "failed"])
        .inc_by(failed_products.len() as u64);
    for ((product, attempts), error) in failed_products
        .iter()
        .zip(&failed_attempts)
        .zip(&failed_errors)
    {
        if *attempts >= max_attempts {
            m.dead_letters.with_label_values(&[&store_label]).inc();
            warn!(store = %b.store_id, product = %product, attempts, error = %error, "item dead-lettered");
        } else {
            warn!(store = %b.store_id, product = %product, attempts, error = %error, "item refused by the marketplace; will retry");
        }
    }
    debug!(batch = %b.batch_ref, accepted = accepted_products.len(), failed = failed_products.len(), final_state, "batch result applied");
    Ok(())
}
