//! Sending one group (at most a batch): the identical-body rule (Trendyol's: re-order, else
//! defer; it concerns bodies the marketplace received, a request that never
//! left does not count, see [`super::outcome`]), the
//! rate window, then — recorded before the request leaves — the pairs marked in doubt, the
//! request counted for the limits and the claims' lease renewed; then the push and its API
//! log row.

use tokio_postgres::Client;
use tracing::{debug, info};

use super::apilog::{self, kind, Entry};
use super::build::{ids_and_quantities, stock_items, Outgoing};
use super::store_cycle::Cycle;
use super::DispatchError;
use crate::marketplace::{prepare, Exchange, PreparedRequest, Provider, PushOutcome};
use crate::queue::{self, Outcome, Release};
use crate::stores::RequestKind;

/// Re-orderings tried before a body identical to a recent one is deferred.
const MAX_ROTATIONS: usize = 4;

/// What became of a group.
pub(super) enum Sending {
    /// The request went out (or was attempted); its answer.
    Sent(Sent),
    /// Every order of the group was sent recently: the claims were deferred.
    Deferred,
    /// Stopped before sending (shutdown, lock lost); the claims were released.
    Stopped,
}

/// A request that left, with its answer.
pub(super) struct Sent {
    pub group: Vec<Outgoing>,
    pub request: PreparedRequest,
    /// The `sent_requests` row (to forget the body if the marketplace refused it).
    pub request_id: i64,
    pub outcome: PushOutcome,
    pub exchange: Exchange,
}

impl Cycle<'_> {
    /// Sends one group, honouring the identical-body rule and the rate window.
    pub(super) async fn send_group(
        &self,
        db: &Client,
        mut group: Vec<Outgoing>,
    ) -> Result<Sending, DispatchError> {
        let ids: Vec<i64> = group.iter().map(|o| o.claim.id).collect();
        let mut request = prepare(self.store.provider, &stock_items(&group));
        let mut rotations = 0;
        // The identical-body rule is Trendyol's; Hepsiburada takes a repeated body.
        let identical_rule = self.store.provider == Provider::Trendyol;
        while let Some(wait) = if identical_rule {
            self.limiter
                .identical_body_wait(db, &request.body_sha256)
                .await?
        } else {
            None
        } {
            if group.len() < 2 || rotations >= MAX_ROTATIONS.min(group.len() - 1) {
                self.limiter.waited("identical_body");
                debug!(store = %self.store_id, wait_s = wait.as_secs_f64(), "identical body sent recently; deferring");
                let how = Release {
                    defer: Some(wait),
                    ..Release::default()
                };
                queue::release(db, self.token, &ids, how).await?;
                return Ok(Sending::Deferred);
            }
            // The same items in another order are a different body.
            group.rotate_left(1);
            rotations += 1;
            request = prepare(self.store.provider, &stock_items(&group));
        }

        let endpoint = self.store.provider.push_endpoint();
        if !self
            .limiter
            .wait_for_slot(db, endpoint, None, &self.stop)
            .await?
            || self.lock_lost()
        {
            queue::release(db, self.token, &ids, Release::default()).await?;
            return Ok(Sending::Stopped);
        }
        // All before the request leaves: a crash after it must neither break the limits
        // nor let a possibly applied quantity pass for "unchanged" later, and the claims'
        // lease must cover the request.
        let products: Vec<_> = group.iter().map(|o| o.claim.product_id).collect();
        // A claim made moments ago needs no renewal; one that waited (rate windows, splits)
        // does, or another dispatcher could take it for an orphan mid-request.
        if self.claimed_at.elapsed() > self.d.settings.claim_lease() / 4 {
            queue::renew(db, self.token, &ids).await?;
        }
        let keys: Vec<&str> = group.iter().map(|o| o.key.as_str()).collect();
        let forms: Vec<&str> = group.iter().map(|o| o.form.as_str()).collect();
        queue::mark_leaving(db, self.store_id, &products, &keys, &forms).await?;
        let body_sha256 = identical_rule.then_some(request.body_sha256.as_str());
        let request_id = self
            .limiter
            .record(db, endpoint, RequestKind::Push, body_sha256)
            .await?;
        let (outcome, exchange) = self.d.client.push(&self.store.creds, &request).await;
        let sent = Sent {
            group,
            request,
            request_id,
            outcome,
            exchange,
        };
        self.log_push(db, &sent).await;
        Ok(Sending::Sent(sent))
    }

    async fn log_push(&self, db: &Client, sent: &Sent) {
        let batch_ref = match &sent.outcome {
            PushOutcome::Accepted { batch_ref } => Some(batch_ref.as_str()),
            _ => None,
        };
        let error = super::outcome::message(&sent.outcome);
        apilog::write(
            db,
            Entry {
                provider: self.store.provider.as_str(),
                kind: kind::UPDATE_STOCK,
                store_id: Some(self.store_id),
                item_count: Some(sent.group.len()),
                status_code: sent.exchange.status,
                duration: Some(sent.exchange.duration),
                batch_id: batch_ref,
                success: batch_ref.is_some(),
                request_body: Some(&String::from_utf8_lossy(&sent.request.body)),
                response_body: Some(&sent.exchange.response_body),
                error_message: error.as_deref(),
            },
        )
        .await;
    }

    /// Dry run: the payload goes to the log and the API log; the entries close as `dry_run`.
    pub(super) async fn dry_run(
        &self,
        db: &Client,
        outgoing: Vec<Outgoing>,
    ) -> Result<(), DispatchError> {
        let request = prepare(self.store.provider, &stock_items(&outgoing));
        let body = String::from_utf8_lossy(&request.body);
        info!(store = %self.store_id, items = outgoing.len(), "dry run: would send {body}");
        apilog::write(
            db,
            Entry {
                provider: self.store.provider.as_str(),
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
        queue::finish(db, self.token, &ids, Outcome::DryRun, &quantities).await?;
        self.count_items(Outcome::DryRun.as_str(), ids.len());
        Ok(())
    }
}
