//! One store's cycle, as the module doc of [`crate::dispatch`] lists it: lock, release
//! orphans, gates, limits, claim, build, send each group, apply each answer.

use std::collections::VecDeque;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::apilog::{self, kind, Entry};
use super::build::{self, Outgoing};
use super::outcome::GroupEnd;
use super::send::Sending;
use super::{batches, DispatchError, Dispatcher, MAX_OPEN_HEPSIBURADA_BATCHES};
use crate::locks;
use crate::marketplace::Provider;
use crate::metrics::metrics;
use crate::queue::{self, Claim, ClaimToken, Outcome, Release};
use crate::stores::{gates, Gate, Limiter, OpenStore};

/// Runs one cycle of `store_id` if no one else is. `Ok(true)`: it claimed a full batch, so
/// the store may have more ready at once.
pub(super) async fn run(
    d: &Dispatcher,
    store_id: Uuid,
    stop: &CancellationToken,
) -> Result<bool, DispatchError> {
    let key = locks::store_key(store_id);
    let locked: bool = d
        .locks
        .query_one(locks::TRY_LOCK_SQL, &[&locks::STORE_CYCLE, &key])
        .await?
        .get(0);
    if !locked {
        debug!(store = %store_id, "another dispatcher holds this store");
        return Ok(false);
    }
    let mut db = d.pool.get().await?;
    let result = cycle(d, &mut db, store_id, stop).await;
    // A failed unlock means the lock connection is gone, and the lock with it.
    let _ = d
        .locks
        .query_one(locks::UNLOCK_SQL, &[&locks::STORE_CYCLE, &key])
        .await;
    result
}

async fn cycle(
    d: &Dispatcher,
    db: &mut Client,
    store_id: Uuid,
    stop: &CancellationToken,
) -> Result<bool, DispatchError> {
    let orphans = queue::release_orphans(db, store_id, d.settings.claim_lease()).await?;
    if orphans > 0 {
        info!(store = %store_id, entries = orphans, "released claims left by a stopped dispatcher");
    }
    let fingerprint_key = d.fingerprint_key(&*db).await?;
    let Gate::Open(store) = gates::check(db, store_id, d.settings.gates(fingerprint_key)).await?
    else {
        return Ok(false);
    };
    let limiter = Limiter::new(&d.settings.limits, store_id);
    if !limiter.admit(&store) {
        return Ok(false);
    }
    if uploads_full(db, store_id, store.provider).await? {
        limiter.waited("open_uploads");
        return Ok(false);
    }
    let token = ClaimToken::new();
    // A 413 may have left the store a smaller batch; a probe needs one item.
    let batch = match (store.probe, store.state.batch_limit) {
        (true, _) => 1,
        (false, Some(limit)) => d
            .settings
            .batch_size(store.provider)
            .min(limit.max(1) as usize),
        (false, None) => d.settings.batch_size(store.provider),
    };
    let claims = queue::claim(db, store_id, &d.settings.instance_id, token, batch).await?;
    if claims.is_empty() {
        return Ok(false);
    }
    let full = claims.len() >= batch;
    let ids: Vec<i64> = claims.iter().map(|c| c.id).collect();
    let cycle = Cycle {
        d,
        store_id,
        label: store_id.to_string(),
        store: *store,
        token,
        claimed_at: std::time::Instant::now(),
        limiter,
        stop: stop.clone(),
    };
    let result = cycle.deliver(db, claims).await;
    match &result {
        Err(DispatchError::Queue(queue::QueueError::ClaimLost { .. })) => {
            warn!(store = %store_id, "another dispatcher took over this store's claims; this cycle stops");
        }
        // Whatever is still claimed goes back; if even that fails, the claims are orphans
        // the next holder of the lock releases.
        Err(_) => {
            let _ = queue::release_unfinished(db, token, &ids).await;
        }
        Ok(()) => {}
    }
    result.map(|()| full)
}

/// Hepsiburada keeps at most [`MAX_OPEN_HEPSIBURADA_BATCHES`] uploads of a merchant in
/// processing: whether a Hepsiburada store has that many open. Asked before the claim and
/// again before every request of the cycle, since each half of a split batch is an upload
/// of its own.
async fn uploads_full(
    db: &Client,
    store_id: Uuid,
    provider: Provider,
) -> Result<bool, DispatchError> {
    Ok(provider == Provider::Hepsiburada
        && batches::open_batches(db, store_id).await? >= MAX_OPEN_HEPSIBURADA_BATCHES)
}

/// What the steps of one cycle share.
pub(super) struct Cycle<'a> {
    pub d: &'a Dispatcher,
    pub store_id: Uuid,
    pub label: String,
    pub store: OpenStore,
    /// Names this cycle's claims; every transition out of `in_flight` checks it.
    pub token: ClaimToken,
    /// When the claims were made (their lease runs from then until renewed).
    pub claimed_at: std::time::Instant,
    pub limiter: Limiter<'a>,
    pub stop: CancellationToken,
}

impl Cycle<'_> {
    /// Builds the batch, closes what needs no request, sends the rest group by group.
    async fn deliver(&self, db: &mut Client, claims: Vec<Claim>) -> Result<(), DispatchError> {
        let rules = self.d.settings.rules_for(self.store_id);
        let plan = build::plan(db, self.store_id, self.store.provider, &rules, claims).await?;
        if !plan.unchanged.is_empty() {
            let (ids, quantities): (Vec<i64>, Vec<Option<i32>>) =
                plan.unchanged.iter().map(|(c, q)| (c.id, Some(*q))).unzip();
            queue::finish(db, self.token, &ids, Outcome::Unchanged, &quantities).await?;
            self.count_items(Outcome::Unchanged.as_str(), ids.len());
        }
        let field = match self.store.provider {
            Provider::Trendyol => "products.barcode",
            Provider::Hepsiburada => "products.sku",
        };
        let without_key: Vec<(&Claim, String)> = plan
            .without_key
            .iter()
            .map(|c| (c, c.product_id.to_string()))
            .collect();
        let why = format!("{field} is empty or the product row is missing");
        self.skip(db, &without_key, Outcome::NoKey, &why).await?;
        let duplicates: Vec<(&Claim, String)> = plan
            .duplicate_key
            .iter()
            .map(|(c, key)| (c, format!("{} ({key})", c.product_id)))
            .collect();
        let why = "another product listed in this store names the same listing at the marketplace \
                   (the same key, or one the marketplace spells the same); neither is sent until \
                   the data is fixed";
        self.skip(db, &duplicates, Outcome::DuplicateKey, why)
            .await?;
        // Not a problem to report on every change: `status` lists such listings.
        let fulfilled: Vec<i64> = plan.fulfilled.iter().map(|c| c.id).collect();
        self.close(db, &fulfilled, Outcome::FulfilledByMarketplace)
            .await?;
        if plan.outgoing.is_empty() {
            return Ok(());
        }
        if self.d.settings.dry_run {
            return self.dry_run(db, plan.outgoing).await;
        }

        let mut groups: VecDeque<Vec<Outgoing>> = VecDeque::from([plan.outgoing]);
        while let Some(group) = groups.pop_front() {
            let end = if self.stop.is_cancelled() || self.lock_lost() {
                groups.push_front(group);
                GroupEnd::StopStore
            } else if uploads_full(db, self.store_id, self.store.provider).await? {
                // The halves of a split that did not leave wait, pending, for an upload to
                // finish.
                self.limiter.waited("open_uploads");
                groups.push_front(group);
                GroupEnd::StopStore
            } else {
                match self.send_group(db, group).await? {
                    Sending::Sent(sent) => self.apply(db, sent).await?,
                    Sending::Deferred => GroupEnd::Next,
                    // The group's claims are released; the rest follow below.
                    Sending::Stopped => GroupEnd::StopStore,
                }
            };
            match end {
                GroupEnd::Next => {}
                GroupEnd::Split(first, second) => {
                    groups.push_front(second);
                    groups.push_front(first);
                }
                GroupEnd::StopStore => {
                    let rest: Vec<i64> = groups.iter().flatten().map(|o| o.claim.id).collect();
                    queue::release(db, self.token, &rest, Release::default()).await?;
                    break;
                }
            }
        }
        Ok(())
    }

    /// The store's lock went with its connection: another dispatcher may hold it now, so no
    /// further request of this cycle may leave.
    pub(super) fn lock_lost(&self) -> bool {
        self.d.locks.is_closed()
    }

    pub(super) fn count_items(&self, outcome: &str, n: usize) {
        metrics()
            .items_sent
            .with_label_values(&[&self.label, outcome])
            .inc_by(n as u64);
    }

    /// Closes claims that cannot be sent (`outcome`) with one report naming each product
    /// (`(claim, how the report names it)`) and why.
    async fn skip(
        &self,
        db: &Client,
        skipped: &[(&Claim, String)],
        outcome: Outcome,
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
        apilog::write(
            db,
            Entry {
                provider: self.store.provider.as_str(),
                kind: kind::STOCK_PROBLEM,
                store_id: Some(self.store_id),
                item_count: Some(skipped.len()),
                error_message: Some(&message),
                ..Entry::default()
            },
        )
        .await;
        self.close(db, &ids, outcome).await
    }

    /// Closes claims with `outcome` and no quantity sent.
    async fn close(&self, db: &Client, ids: &[i64], outcome: Outcome) -> Result<(), DispatchError> {
        if ids.is_empty() {
            return Ok(());
        }
        queue::finish(db, self.token, ids, outcome, &vec![None; ids.len()]).await?;
        self.count_items(outcome.as_str(), ids.len());
        Ok(())
    }
}
