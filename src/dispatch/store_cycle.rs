//! One store's cycle: lock, gates, claim, compute, filter, send (see the module docs of
//! [`crate::dispatch`] for the rules).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use deadpool_postgres::Object;
use serde::{Deserialize, Serialize};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::apilog::{self, kind, Entry};
use super::sql::*;
use super::{DispatchError, DispatchSettings, Dispatcher, MAX_OPEN_HEPSIBURADA_BATCHES};
use crate::marketplace::{
    prepare, PreparedRequest, Provider, PushOutcome, StockItem, StoreCredentials,
};
use crate::metrics::metrics;

/// Advisory lock class of store cycles ("STKS").
const LOCK_CLASS: i32 = 0x5354_4B53;
/// Re-orderings tried before a body identical to a recent one is deferred.
const MAX_ROTATIONS: usize = 4;
/// Slack added to the rate and identical-body windows: a request is recorded a moment before
/// it arrives, so without it the marketplace could count one more in its window.
const RATE_WINDOW_SLACK: Duration = Duration::from_millis(250);
/// 5xx / transport backoff: first delay and cap.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(120);
/// Tries of a release that loses a race with capture (a unique violation, see RELEASE_SQL).
const RELEASE_RETRIES: usize = 5;

/// Items per push for a provider.
pub(super) fn batch_size(settings: &DispatchSettings, provider: Provider) -> usize {
    match provider {
        Provider::Trendyol => provider.max_batch(),
        Provider::Hepsiburada => settings.hepsiburada_batch_size.clamp(1, 10_000),
    }
}

/// The largest batch of any provider (a store with that many ready entries is due).
pub(super) fn largest_batch(settings: &DispatchSettings) -> usize {
    batch_size(settings, Provider::Trendyol).max(batch_size(settings, Provider::Hepsiburada))
}

/// Delay before an item that failed `attempts` times is tried again: 2^attempts seconds,
/// at most five minutes.
pub(super) fn retry_delay(attempts: i32) -> f64 {
    2f64.powi(attempts.clamp(0, 16)).min(300.0)
}

fn lock_key(store_id: Uuid) -> i32 {
    let v = store_id.as_u128();
    (v ^ (v >> 32) ^ (v >> 64) ^ (v >> 96)) as u32 as i32
}

/// A claimed queue entry.
#[derive(Debug, Clone)]
pub(super) struct Claim {
    pub id: i64,
    pub product_id: Uuid,
    pub priority: i32,
    pub attempts: i32,
}

/// A claimed entry on its way to the marketplace.
#[derive(Debug, Clone)]
struct Outgoing {
    claim: Claim,
    key: String,
    quantity: i32,
}

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

/// The `stores` row as dispatch needs it.
struct StoreRow {
    store_type: String,
    active: bool,
    seller_id: Option<String>,
    api_key: Option<String>,
    api_secret: Option<String>,
}

impl StoreRow {
    /// The credentials, or which field is missing.
    fn credentials(&self, provider: Provider) -> Result<StoreCredentials, &'static str> {
        let present = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        if !present(&self.seller_id) {
            return Err("stores.seller_id is empty");
        }
        if !present(&self.api_secret) {
            return Err("stores.api_secret is empty");
        }
        if provider == Provider::Trendyol && !present(&self.api_key) {
            return Err("stores.api_key is empty");
        }
        Ok(self.credentials_as_is(provider))
    }

    /// Whatever is there (empty for missing fields): its fingerprint notices any change.
    fn credentials_as_is(&self, provider: Provider) -> StoreCredentials {
        StoreCredentials {
            provider,
            seller_id: self.seller_id.clone().unwrap_or_default(),
            api_key: self.api_key.clone(),
            api_secret: self.api_secret.clone().unwrap_or_default(),
        }
    }
}

async fn load_store(db: &Client, store_id: Uuid) -> Result<Option<StoreRow>, DispatchError> {
    let Some(row) = db.query_opt(STORE_SQL, &[&store_id]).await? else {
        return Ok(None);
    };
    let is_active: Option<bool> = row.get(1);
    let send_stock: Option<bool> = row.get(2);
    let store = StoreRow {
        store_type: row.get::<_, Option<String>>(0).unwrap_or_default(),
        active: is_active == Some(true) && send_stock == Some(true),
        seller_id: row.get(3),
        api_key: row.get(4),
        api_secret: row.get(5),
    };
    Ok(Some(store))
}

/// The credentials of a store for reading batch results (any active state), if usable.
pub(super) async fn store_credentials(
    db: &Client,
    store_id: Uuid,
    provider: Provider,
) -> Result<Option<StoreCredentials>, DispatchError> {
    Ok(load_store(db, store_id)
        .await?
        .and_then(|store| store.credentials(provider).ok()))
}

/// Runs one cycle of `store_id` if no one else is.
pub(super) async fn run(
    d: &Dispatcher,
    store_id: Uuid,
    stop: &CancellationToken,
) -> Result<(), DispatchError> {
    let key = lock_key(store_id);
    let locked: bool = d
        .locks
        .query_one(TRY_LOCK_SQL, &[&LOCK_CLASS, &key])
        .await?
        .get(0);
    if !locked {
        debug!(store = %store_id, "another dispatcher holds this store");
        return Ok(());
    }
    let mut db = d.pool.get().await?;
    let result = cycle(d, &mut db, store_id, stop).await;
    // A failed unlock means the lock connection is gone, and the lock with it.
    let _ = d.locks.query_one(UNLOCK_SQL, &[&LOCK_CLASS, &key]).await;
    result
}

async fn cycle(
    d: &Dispatcher,
    db: &mut Object,
    store_id: Uuid,
    stop: &CancellationToken,
) -> Result<(), DispatchError> {
    let m = metrics();
    let store_label = store_id.to_string();
    // Holding the lock, any claim of this store is an orphan of a crashed cycle.
    let orphans: Vec<i64> = db
        .query(CLAIMED_IDS_SQL, &[&store_id])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !orphans.is_empty() {
        info!(store = %store_id, entries = orphans.len(), "releasing claims left by a stopped dispatcher");
        release(db, &orphans, None, None, 0).await?;
    }

    let Some(store) = load_store(db, store_id).await? else {
        return close_store(db, store_id, "store_missing").await;
    };
    let Some(provider) = Provider::from_store_type(&store.store_type) else {
        return close_store(db, store_id, "store_type_ignored").await;
    };
    if !store.active {
        return close_store(db, store_id, "store_inactive").await;
    }
    db.execute(ENSURE_STORE_STATE_SQL, &[&store_id]).await?;
    let state = db
        .query_one(
            STORE_STATE_SQL,
            &[&store_id, &d.settings.min_send_interval.as_secs_f64()],
        )
        .await?;
    let paused_reason: Option<String> = state.get(0);
    let paused_credentials: Option<String> = state.get(1);
    let backing_off: bool = state.get(2);
    let too_soon: bool = state.get(3);

    let fingerprint = store.credentials_as_is(provider).fingerprint();
    if let Some(reason) = &paused_reason {
        if paused_credentials.as_deref() == Some(fingerprint.as_str()) {
            db.execute(PAUSE_RECHECK_SQL, &[&store_id]).await?;
            return Ok(());
        }
        info!(store = %store_id, previous = %reason, "store credentials changed; resuming the store");
        db.execute(UNPAUSE_STORE_SQL, &[&store_id]).await?;
        let _ = m.store_paused.remove_label_values(&[&store_label, reason]);
    }
    let creds = match store.credentials(provider) {
        Ok(c) => c,
        Err(missing) => {
            let reason = format!("credentials missing: {missing}");
            pause(db, store_id, &reason, &fingerprint).await?;
            return Ok(());
        }
    };
    if backing_off {
        return Ok(());
    }
    if too_soon {
        m.rate_limit_waits
            .with_label_values(&[&store_label, "min_send_interval"])
            .inc();
        return Ok(());
    }
    if provider == Provider::Hepsiburada {
        let open: i64 = db.query_one(OPEN_BATCHES_SQL, &[&store_id]).await?.get(0);
        if open >= MAX_OPEN_HEPSIBURADA_BATCHES {
            m.rate_limit_waits
                .with_label_values(&[&store_label, "open_uploads"])
                .inc();
            return Ok(());
        }
    }

    let limit = batch_size(&d.settings, provider) as i64;
    let claims: Vec<Claim> = db
        .query(CLAIM_SQL, &[&store_id, &d.settings.instance_id, &limit])
        .await?
        .iter()
        .map(|r| Claim {
            id: r.get(0),
            product_id: r.get(1),
            priority: r.get(2),
            attempts: r.get(3),
        })
        .collect();
    if claims.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = claims.iter().map(|c| c.id).collect();
    let ctx = StoreContext {
        d,
        store_id,
        store_label,
        provider,
        creds,
        fingerprint,
    };
    let result = ctx.deliver(db, claims, stop).await;
    if result.is_err() {
        // Whatever is still claimed goes back; if even that fails, the next holder of the
        // lock releases it.
        let _ = release(db, &ids, None, None, 0).await;
    }
    result
}

/// What the delivery steps of one cycle share.
struct StoreContext<'a> {
    d: &'a Dispatcher,
    store_id: Uuid,
    store_label: String,
    provider: Provider,
    creds: StoreCredentials,
    fingerprint: String,
}

/// How sending one group ended.
enum GroupEnd {
    /// Go on with the next group.
    Next,
    /// A 400 for several items: try each half.
    Split(Vec<Outgoing>, Vec<Outgoing>),
    /// The store cannot take more now (429, 401/403, 5xx, shutdown): release the rest.
    StopStore,
}

impl StoreContext<'_> {
    async fn deliver(
        &self,
        db: &mut Object,
        claims: Vec<Claim>,
        stop: &CancellationToken,
    ) -> Result<(), DispatchError> {
        let m = metrics();
        let settings = &self.d.settings;
        let product_ids: Vec<Uuid> = claims.iter().map(|c| c.product_id).collect();
        let rules = settings.rules_for(self.store_id);
        let started = Instant::now();
        let computed =
            crate::stock::compute_quantities(&***db, self.store_id, &product_ids, &rules).await?;
        m.quantity_computation_seconds
            .observe(started.elapsed().as_secs_f64());
        m.set_computations.inc_by(computed.len() as u64);
        let mut quantity_of: HashMap<Uuid, i32> = HashMap::with_capacity(computed.len());
        for q in &computed {
            if let Some(problem) = &q.problem {
                warn!(store = %self.store_id, product = %q.product_id, problem = %problem, "set composition problem");
                let message = format!("product {}: {problem}", q.product_id);
                apilog::write(
                    db,
                    Entry {
                        provider: apilog::STOCKSYNC,
                        kind: kind::STOCK_PROBLEM,
                        store_id: Some(self.store_id),
                        item_count: Some(1),
                        error_message: Some(&message),
                        ..Entry::default()
                    },
                )
                .await;
            }
            quantity_of.insert(q.product_id, q.quantity);
        }
        let mut keys: HashMap<Uuid, Option<String>> = HashMap::with_capacity(product_ids.len());
        for r in db
            .query(PRODUCT_KEYS_SQL, &[&product_ids, &self.store_id])
            .await?
        {
            let id: Uuid = r.get(0);
            let key: Option<String> = match self.provider {
                Provider::Trendyol => r.get(1),
                Provider::Hepsiburada => r.get(2),
            };
            keys.insert(id, key.filter(|k| !k.trim().is_empty()));
            // A listing that was deleted is told 0 (a set's quantity would otherwise still
            // be computed from its components).
            if !r.get::<_, bool>(3) {
                quantity_of.insert(id, 0);
            }
        }
        let told: HashMap<Uuid, Option<i32>> = db
            .query(LAST_TOLD_SQL, &[&self.store_id, &product_ids])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();

        let mut unchanged: (Vec<i64>, Vec<Option<i32>>) = Default::default();
        let mut without_key: Vec<(&Claim, String)> = Vec::new();
        let mut duplicate_key: Vec<(&Claim, String)> = Vec::new();
        let mut outgoing: Vec<Outgoing> = Vec::new();
        let mut keys_in_request: HashSet<String> = HashSet::new();
        for claim in &claims {
            let quantity = quantity_of.get(&claim.product_id).copied().unwrap_or(0);
            let Some(key) = keys.get(&claim.product_id).cloned().flatten() else {
                without_key.push((claim, claim.product_id.to_string()));
                continue;
            };
            if told.get(&claim.product_id).copied().flatten() == Some(quantity) {
                unchanged.0.push(claim.id);
                unchanged.1.push(Some(quantity));
                continue;
            }
            if !keys_in_request.insert(key.clone()) {
                duplicate_key.push((claim, format!("{} ({key})", claim.product_id)));
                continue;
            }
            outgoing.push(Outgoing {
                claim: claim.clone(),
                key,
                quantity,
            });
        }
        if !unchanged.0.is_empty() {
            finish(db, &unchanged.0, "unchanged", &unchanged.1).await?;
            self.count_items("unchanged", unchanged.0.len());
        }
        let field = match self.provider {
            Provider::Trendyol => "products.barcode",
            Provider::Hepsiburada => "products.sku",
        };
        let why = format!("{field} is empty or the product row is missing");
        self.skip(db, &without_key, "no_key", &why).await?;
        let why = "another product of this store has the same marketplace key";
        self.skip(db, &duplicate_key, "duplicate_key", why).await?;
        if outgoing.is_empty() {
            return Ok(());
        }
        if settings.dry_run {
            return self.dry_run(db, outgoing).await;
        }

        let mut groups: VecDeque<Vec<Outgoing>> = VecDeque::from([outgoing]);
        while let Some(group) = groups.pop_front() {
            let end = if stop.is_cancelled() {
                groups.push_front(group);
                GroupEnd::StopStore
            } else {
                self.send_group(db, group, stop).await?
            };
            match end {
                GroupEnd::Next => {}
                GroupEnd::Split(first, second) => {
                    groups.push_front(second);
                    groups.push_front(first);
                }
                GroupEnd::StopStore => {
                    let rest: Vec<i64> = groups.iter().flatten().map(|o| o.claim.id).collect();
                    release(db, &rest, None, None, 0).await?;
                    break;
                }
            }
        }
        Ok(())
    }

    fn count_items(&self, outcome: &str, n: usize) {
        metrics()
            .items_sent
            .with_label_values(&[&self.store_label, outcome])
            .inc_by(n as u64);
    }

    /// Closes claims that cannot be sent (`outcome`) with one report naming each product
    /// (`(claim, how the report names it)`) and why.
    async fn skip(
        &self,
        db: &Client,
        skipped: &[(&Claim, String)],
        outcome: &str,
        why: &str,
    ) -> Result<(), DispatchError> {
        if skipped.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = skipped.iter().map(|(c, _)| c.id).collect();
        let names: Vec<&str> = skipped.iter().map(|(_, name)| name.as_str()).collect();
        let message = format!(
            "{} product(s) skipped: {why}: {}",
            skipped.len(),
            names.join(", ")
        );
        warn!(store = %self.store_id, "{message}");
        self.problem(db, skipped.len(), &message).await;
        finish(db, &ids, outcome, &vec![None; ids.len()]).await?;
        self.count_items(outcome, ids.len());
        Ok(())
    }

    async fn problem(&self, db: &Client, items: usize, message: &str) {
        apilog::write(
            db,
            Entry {
                provider: self.provider.as_str(),
                kind: kind::STOCK_PROBLEM,
                store_id: Some(self.store_id),
                item_count: Some(items),
                error_message: Some(message),
                ..Entry::default()
            },
        )
        .await;
    }

    async fn dry_run(&self, db: &Client, outgoing: Vec<Outgoing>) -> Result<(), DispatchError> {
        let request = prepare(self.provider, &stock_items(&outgoing));
        let body = String::from_utf8_lossy(&request.body);
        info!(store = %self.store_id, items = outgoing.len(), "dry run: would send {body}");
        apilog::write(
            db,
            Entry {
                provider: self.provider.as_str(),
                kind: kind::DRY_RUN,
                store_id: Some(self.store_id),
                item_count: Some(outgoing.len()),
                success: true,
                request_body: Some(&body),
                ..Entry::default()
            },
        )
        .await;
        let (ids, quantities) = ids_and_quantities(&outgoing);
        finish(db, &ids, "dry_run", &quantities).await?;
        self.count_items("dry_run", ids.len());
        Ok(())
    }

    /// Sends one group (at most a batch): identical-body rule, rate limit, push, outcome.
    async fn send_group(
        &self,
        db: &mut Object,
        mut group: Vec<Outgoing>,
        stop: &CancellationToken,
    ) -> Result<GroupEnd, DispatchError> {
        let m = metrics();
        let settings = &self.d.settings;
        // With the same slack as the rate window: our record precedes the arrival.
        let window = (settings.identical_request_window + RATE_WINDOW_SLACK).as_secs_f64();
        // The claims of this group, whatever order its items take below.
        let ids: Vec<i64> = group.iter().map(|o| o.claim.id).collect();
        let mut request = prepare(self.provider, &stock_items(&group));
        let mut rotations = 0;
        loop {
            let wait: Option<f64> = db
                .query_opt(
                    IDENTICAL_BODY_SQL,
                    &[&self.store_id, &request.body_sha256, &window],
                )
                .await?
                .and_then(|r| r.get(0));
            let Some(wait) = wait else { break };
            if group.len() < 2 || rotations >= MAX_ROTATIONS.min(group.len() - 1) {
                m.rate_limit_waits
                    .with_label_values(&[&self.store_label, "identical_body"])
                    .inc();
                debug!(store = %self.store_id, wait_s = wait, "identical body sent recently; deferring");
                release(db, &ids, Some(wait.max(0.0) + 0.01), None, 0).await?;
                return Ok(GroupEnd::Next);
            }
            // The same items in another order are a different body.
            group.rotate_left(1);
            rotations += 1;
            request = prepare(self.provider, &stock_items(&group));
        }

        let endpoint = self.provider.push_endpoint();
        if !wait_for_rate_window(
            db,
            settings,
            self.store_id,
            &self.store_label,
            endpoint,
            stop,
        )
        .await?
        {
            release(db, &ids, None, None, 0).await?;
            return Ok(GroupEnd::StopStore);
        }
        // Both before the request leaves: a crash after it must neither break the limits
        // nor let a possibly applied quantity pass for "unchanged" later.
        let products: Vec<Uuid> = group.iter().map(|o| o.claim.product_id).collect();
        db.execute(MARK_IN_DOUBT_SQL, &[&self.store_id, &products])
            .await?;
        let request_id: i64 = db
            .query_one(
                RECORD_REQUEST_SQL,
                &[&self.store_id, &endpoint, &request.body_sha256],
            )
            .await?
            .get(0);
        let (outcome, exchange) = self.d.client.push(&self.creds, &request).await;
        // Only a body the marketplace may have taken counts for the identical-body rule; a
        // lost answer (transport) may hide an accepted one, so it keeps counting.
        if !matches!(
            outcome,
            PushOutcome::Accepted { .. } | PushOutcome::Transport { .. }
        ) {
            db.execute(FORGET_BODY_SQL, &[&request_id]).await?;
        }
        let label = outcome_label(&outcome);
        m.requests_sent
            .with_label_values(&[&self.store_label, "push", label])
            .inc();
        m.request_duration_seconds
            .with_label_values(&[self.provider.as_str(), "push"])
            .observe(exchange.duration.as_secs_f64());
        let batch_ref = match &outcome {
            PushOutcome::Accepted { batch_ref } => Some(batch_ref.as_str()),
            _ => None,
        };
        let error = outcome_message(&outcome);
        apilog::write(
            db,
            Entry {
                provider: self.provider.as_str(),
                kind: kind::UPDATE_STOCK,
                store_id: Some(self.store_id),
                item_count: Some(group.len()),
                status_code: exchange.status,
                duration: Some(exchange.duration),
                batch_id: batch_ref,
                success: batch_ref.is_some(),
                request_body: Some(&String::from_utf8_lossy(&request.body)),
                response_body: Some(&exchange.response_body),
                error_message: error.as_deref(),
            },
        )
        .await;
        Ok(match outcome {
            PushOutcome::Accepted { batch_ref } => {
                self.accepted(db, &group, &request, &batch_ref).await?;
                GroupEnd::Next
            }
            PushOutcome::RateLimited { retry_after } => {
                let wait = retry_after.unwrap_or(settings.rate_limit_window);
                warn!(store = %self.store_id, wait_s = wait.as_secs_f64(), "marketplace throttled the store (429)");
                let message = format!(
                    "429 from the marketplace; retrying in {:.1} s",
                    wait.as_secs_f64()
                );
                db.execute(
                    THROTTLE_STORE_SQL,
                    &[&self.store_id, &wait.as_secs_f64(), &message],
                )
                .await?;
                release(db, &ids, None, None, 0).await?;
                GroupEnd::StopStore
            }
            PushOutcome::AuthRejected { status, message } => {
                let reason = if status == 0 {
                    format!("credentials unusable: {message}")
                } else {
                    format!("credentials refused ({status}): {message}")
                };
                pause(db, self.store_id, &reason, &self.fingerprint).await?;
                release(db, &ids, None, None, 0).await?;
                GroupEnd::StopStore
            }
            PushOutcome::IdenticalBody { .. } => {
                // The marketplace remembers a body our window does not: wait a whole window.
                m.rate_limit_waits
                    .with_label_values(&[&self.store_label, "identical_body"])
                    .inc();
                release(db, &ids, Some(window), None, 0).await?;
                GroupEnd::Next
            }
            PushOutcome::BadRequest { status, message } => {
                if group.len() > 1 {
                    debug!(store = %self.store_id, items = group.len(), status, "batch refused; splitting it to find the bad items");
                    let second = group.split_off(group.len() / 2);
                    GroupEnd::Split(group, second)
                } else {
                    let item = &group[0];
                    let error = format!(
                        "{} refused {} ({status}): {message}",
                        self.provider, item.key
                    );
                    self.item_failed(db, &item.claim, &error).await?;
                    GroupEnd::Next
                }
            }
            PushOutcome::ServerError { .. } | PushOutcome::Transport { .. } => {
                let message = error.unwrap_or_default();
                warn!(store = %self.store_id, error = %message, "marketplace unavailable; backing off");
                db.execute(
                    BACKOFF_STORE_SQL,
                    &[
                        &self.store_id,
                        &BACKOFF_BASE.as_secs_f64(),
                        &BACKOFF_CAP.as_secs_f64(),
                        &message,
                    ],
                )
                .await?;
                release(db, &ids, None, None, 0).await?;
                GroupEnd::StopStore
            }
        })
    }

    /// A claimed item refused for its own sake: retried later, or dead-lettered.
    async fn item_failed(
        &self,
        db: &Client,
        claim: &Claim,
        error: &str,
    ) -> Result<(), DispatchError> {
        let attempts = claim.attempts + 1;
        if attempts >= self.d.settings.max_attempts {
            warn!(store = %self.store_id, product = %claim.product_id, attempts, error, "item dead-lettered");
            db.execute(DEAD_LETTER_SQL, &[&claim.id, &error]).await?;
            metrics()
                .dead_letters
                .with_label_values(&[&self.store_label])
                .inc();
        } else {
            debug!(store = %self.store_id, product = %claim.product_id, attempts, error, "item refused; will retry");
            release(db, &[claim.id], Some(retry_delay(attempts)), Some(error), 1).await?;
        }
        self.count_items("refused", 1);
        Ok(())
    }

    /// Request-level acceptance: the batch to poll, the sent quantities and the finished
    /// entries are one transaction.
    async fn accepted(
        &self,
        db: &mut Object,
        group: &[Outgoing],
        request: &PreparedRequest,
        batch_ref: &str,
    ) -> Result<(), DispatchError> {
        let items: Vec<BatchItem> = group
            .iter()
            .map(|o| BatchItem {
                queue_id: o.claim.id,
                product_id: o.claim.product_id,
                key: o.key.clone(),
                quantity: o.quantity,
                attempts: o.claim.attempts,
                priority: o.claim.priority,
            })
            .collect();
        let items_json = serde_json::to_string(&items).expect("batch items serialise");
        let (ids, quantities) = ids_and_quantities(group);
        let products: Vec<Uuid> = group.iter().map(|o| o.claim.product_id).collect();
        let sent: Vec<i32> = group.iter().map(|o| o.quantity).collect();
        let provider = self.provider.as_str();
        let first_poll = self.d.settings.first_poll_delay.as_secs_f64();
        let tx = db.transaction().await?;
        let batch_id: i64 = tx
            .query_one(
                INSERT_BATCH_SQL,
                &[
                    &self.store_id,
                    &provider,
                    &batch_ref,
                    &items_json,
                    &first_poll,
                ],
            )
            .await?
            .get(0);
        tx.execute(
            MARK_SENT_SQL,
            &[&self.store_id, &products, &sent, &batch_id],
        )
        .await?;
        tx.execute(FINISH_SQL, &[&ids, &"sent", &quantities])
            .await?;
        tx.execute(STORE_SUCCESS_SQL, &[&self.store_id]).await?;
        tx.commit().await?;
        debug!(store = %self.store_id, batch = %batch_ref, items = group.len(), sha256 = %request.body_sha256, "push accepted");
        self.count_items("sent", group.len());
        Ok(())
    }
}

/// `None` when the store may send one more request to `endpoint` now, else the seconds
/// until the oldest request in the window leaves it.
pub(super) async fn rate_window_wait(
    db: &Client,
    settings: &DispatchSettings,
    store_id: Uuid,
    endpoint: &str,
) -> Result<Option<f64>, DispatchError> {
    let window = (settings.rate_limit_window + RATE_WINDOW_SLACK).as_secs_f64();
    let limit = i64::from(settings.rate_limit_requests.max(1));
    let row = db
        .query_one(RATE_WINDOW_SQL, &[&store_id, &endpoint, &window])
        .await?;
    let count: i64 = row.get(0);
    Ok((count >= limit).then(|| row.get::<_, f64>(1).clamp(0.01, window)))
}

/// Waits until the store may send one more request to `endpoint`. False when stopped first.
async fn wait_for_rate_window(
    db: &Client,
    settings: &DispatchSettings,
    store_id: Uuid,
    store_label: &str,
    endpoint: &str,
    stop: &CancellationToken,
) -> Result<bool, DispatchError> {
    while let Some(wait) = rate_window_wait(db, settings, store_id, endpoint).await? {
        metrics()
            .rate_limit_waits
            .with_label_values(&[store_label, "rate_limit"])
            .inc();
        tokio::select! {
            _ = stop.cancelled() => return Ok(false),
            _ = tokio::time::sleep(Duration::from_secs_f64(wait)) => {}
        }
    }
    Ok(true)
}

fn stock_items(group: &[Outgoing]) -> Vec<StockItem> {
    group
        .iter()
        .map(|o| StockItem {
            key: o.key.clone(),
            quantity: o.quantity,
        })
        .collect()
}

fn ids_and_quantities(group: &[Outgoing]) -> (Vec<i64>, Vec<Option<i32>>) {
    group.iter().map(|o| (o.claim.id, Some(o.quantity))).unzip()
}

/// Metric label of an outcome.
pub(super) fn outcome_label(outcome: &PushOutcome) -> &'static str {
    match outcome {
        PushOutcome::Accepted { .. } => "2xx",
        PushOutcome::RateLimited { .. } => "429",
        PushOutcome::AuthRejected { .. } => "auth",
        PushOutcome::IdenticalBody { .. } => "identical",
        PushOutcome::BadRequest { .. } => "4xx",
        PushOutcome::ServerError { .. } => "5xx",
        PushOutcome::Transport { .. } => "error",
    }
}

/// The error text of a failed outcome.
pub(super) fn outcome_message(outcome: &PushOutcome) -> Option<String> {
    match outcome {
        PushOutcome::Accepted { .. } => None,
        PushOutcome::RateLimited { retry_after } => Some(format!(
            "429 Too Many Requests (retry after {retry_after:?})"
        )),
        PushOutcome::AuthRejected { status, message }
        | PushOutcome::IdenticalBody { status, message }
        | PushOutcome::BadRequest { status, message }
        | PushOutcome::ServerError { status, message } => Some(format!("{status}: {message}")),
        PushOutcome::Transport { message } => Some(message.clone()),
    }
}

async fn close_store(db: &Client, store_id: Uuid, outcome: &str) -> Result<(), DispatchError> {
    db.execute(MARK_GATED_SQL, &[&store_id, &outcome]).await?;
    let n = db.execute(CLOSE_STORE_SQL, &[&store_id, &outcome]).await?;
    if n > 0 {
        debug!(store = %store_id, entries = n, outcome, "entries closed without a request");
        metrics()
            .items_sent
            .with_label_values(&[&store_id.to_string(), outcome])
            .inc_by(n);
    }
    Ok(())
}

async fn pause(
    db: &Client,
    store_id: Uuid,
    reason: &str,
    fingerprint: &str,
) -> Result<(), DispatchError> {
    warn!(store = %store_id, reason, "store paused until its credentials change (or `stocksync retry-failed`)");
    db.execute(PAUSE_STORE_SQL, &[&store_id, &reason, &fingerprint])
        .await?;
    metrics()
        .store_paused
        .with_label_values(&[&store_id.to_string(), reason])
        .set(1);
    Ok(())
}

pub(super) async fn finish(
    db: &Client,
    ids: &[i64],
    outcome: &str,
    quantities: &[Option<i32>],
) -> Result<(), DispatchError> {
    db.execute(FINISH_SQL, &[&ids, &outcome, &quantities])
        .await?;
    Ok(())
}

/// Puts claims back (see [`RELEASE_SQL`]); retried when capture wins a race for the pair.
pub(super) async fn release(
    db: &Client,
    ids: &[i64],
    defer_seconds: Option<f64>,
    error: Option<&str>,
    add_attempts: i32,
) -> Result<(), DispatchError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut tries = 0;
    loop {
        match db
            .execute(RELEASE_SQL, &[&ids, &defer_seconds, &error, &add_attempts])
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) && tries < RELEASE_RETRIES => {
                tries += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_spread_and_are_stable() {
        let a = Uuid::parse_str("6a1f0a8e-0000-4000-8000-000000000001").unwrap();
        let b = Uuid::parse_str("6a1f0a8e-0000-4000-8000-000000000002").unwrap();
        assert_eq!(lock_key(a), lock_key(a));
        assert_ne!(lock_key(a), lock_key(b));
    }

    #[test]
    fn retry_delay_grows_and_is_capped() {
        assert_eq!(retry_delay(0), 1.0);
        assert_eq!(retry_delay(1), 2.0);
        assert_eq!(retry_delay(3), 8.0);
        assert_eq!(retry_delay(50), 300.0);
        assert_eq!(retry_delay(-1), 1.0);
    }

    #[test]
    fn store_credentials_name_the_missing_field() {
        let row = StoreRow {
            store_type: "TRENDYOL".into(),
            active: true,
            seller_id: Some("1".into()),
            api_key: None,
            api_secret: Some("s".into()),
        };
        assert_eq!(
            row.credentials(Provider::Trendyol).unwrap_err(),
            "stores.api_key is empty"
        );
        // Hepsiburada authenticates with merchant id and secret only.
        assert!(row.credentials(Provider::Hepsiburada).is_ok());
        let blank = StoreRow {
            api_secret: Some("  ".into()),
            ..row
        };
        assert_eq!(
            blank.credentials(Provider::Hepsiburada).unwrap_err(),
            "stores.api_secret is empty"
        );
        // Filling a field changes the fingerprint, so a pause for it lifts.
        let filled = StoreRow {
            api_secret: Some("new".into()),
            ..blank
        };
        assert_ne!(
            filled
                .credentials_as_is(Provider::Hepsiburada)
                .fingerprint(),
            StoreRow {
                api_secret: None,
                ..filled
            }
            .credentials_as_is(Provider::Hepsiburada)
            .fingerprint()
        );
    }
}
