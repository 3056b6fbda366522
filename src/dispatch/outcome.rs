//! What a push's answer does to the queue and the store:
//!
//! | answer | queue | store |
//! | --- | --- | --- |
//! | accepted | `sent` (batch to poll, sent quantities, one transaction) | success |
//! | 429 | released | waits Retry-After (or a window) |
//! | 401/403 | released | paused until credentials change |
//! | identical body | released, deferred a window | — |
//! | 400 | split in halves; a lone item fails (retried, dead-lettered at `max_attempts`) | — |
//! | 5xx, no answer | released | backs off ([`STORE_BACKOFF`]) |

use std::time::Duration;

use tokio_postgres::Client;
use tracing::{debug, warn};

use super::batches::{self, BatchItem};
use super::build::{ids_and_quantities, Outgoing};
use super::send::Sent;
use super::store_cycle::Cycle;
use super::DispatchError;
use crate::backoff::BackoffPolicy;
use crate::marketplace::PushOutcome;
use crate::metrics::metrics;
use crate::queue::{self, Claim, Outcome, Release};
use crate::stores::gates;
use crate::stores::state::{self as store_state, PauseKind};

/// A store whose marketplace fails (5xx, no answer) waits 1 s, doubling per consecutive
/// failure up to a minute (jittered: at most two): long enough not to hammer an outage,
/// short enough that a blip costs seconds.
pub(super) const STORE_BACKOFF: BackoffPolicy =
    BackoffPolicy::new(Duration::from_secs(1), Duration::from_secs(60));

/// An item the marketplace refused waits 1 s, doubling per attempt up to five minutes
/// (exact: the wait is per item, nobody retries in lockstep).
pub(super) const ITEM_RETRY: BackoffPolicy =
    BackoffPolicy::exact(Duration::from_secs(1), Duration::from_secs(300));

/// How sending one group ended.
pub(super) enum GroupEnd {
    /// Go on with the next group.
    Next,
    /// A 400 for several items: try each half.
    Split(Vec<Outgoing>, Vec<Outgoing>),
    /// The store cannot take more now (429, 401/403, 5xx, shutdown): release the rest.
    StopStore,
}

/// Metric label of an outcome.
pub(super) fn label(outcome: &PushOutcome) -> &'static str {
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
pub(super) fn message(outcome: &PushOutcome) -> Option<String> {
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

/// The delay before an item that failed `attempts` times is tried again.
pub(super) fn retry_delay(attempts: i32) -> Duration {
    ITEM_RETRY.delay_after(attempts.max(0) as u32 + 1)
}

impl Cycle<'_> {
    /// Applies a push's answer.
    pub(super) async fn apply(
        &self,
        db: &mut Client,
        sent: Sent,
    ) -> Result<GroupEnd, DispatchError> {
        let Sent {
            mut group,
            request,
            request_id,
            outcome,
            exchange,
        } = sent;
        let settings = &self.d.settings;
        // Only a body the marketplace may have taken counts for the identical-body rule; a
        // lost answer (transport) may hide an accepted one, so it keeps counting.
        if !matches!(
            outcome,
            PushOutcome::Accepted { .. } | PushOutcome::Transport { .. }
        ) {
            self.limiter.forget_body(db, request_id).await?;
        }
        let m = metrics();
        m.requests_sent
            .with_label_values(&[&self.label, "push", label(&outcome)])
            .inc();
        m.request_duration_seconds
            .with_label_values(&[self.store.provider.as_str(), "push"])
            .observe(exchange.duration.as_secs_f64());
        let ids: Vec<i64> = group.iter().map(|o| o.claim.id).collect();
        let error = message(&outcome).unwrap_or_default();
        Ok(match outcome {
            PushOutcome::Accepted { batch_ref } => {
                self.accepted(db, &group, &batch_ref).await?;
                debug!(store = %self.store_id, batch = %batch_ref, items = group.len(), sha256 = %request.body_sha256, "push accepted");
                GroupEnd::Next
            }
            PushOutcome::RateLimited { retry_after } => {
                let wait = retry_after.unwrap_or(settings.limits.rate_limit_window);
                warn!(store = %self.store_id, wait_s = wait.as_secs_f64(), "marketplace throttled the store (429)");
                let message = format!(
                    "429 from the marketplace; retrying in {:.1} s",
                    wait.as_secs_f64()
                );
                store_state::throttle(db, self.store_id, wait, &message).await?;
                queue::release(db, self.token, &ids, Release::default()).await?;
                GroupEnd::StopStore
            }
            PushOutcome::AuthRejected { status, message } => {
                let reason = if status == 0 {
                    PauseKind::CredentialsUnusable.reason(&format!(": {message}"))
                } else {
                    PauseKind::CredentialsRefused.reason(&format!(" ({status}): {message}"))
                };
                gates::pause(db, self.store_id, &reason, &self.store.fingerprint).await?;
                queue::release(db, self.token, &ids, Release::default()).await?;
                GroupEnd::StopStore
            }
            PushOutcome::IdenticalBody { .. } => {
                // The marketplace remembers a body our window does not: wait a whole window.
                self.limiter.waited("identical_body");
                let how = Release {
                    defer: Some(self.limiter.identical_window()),
                    ..Release::default()
                };
                queue::release(db, self.token, &ids, how).await?;
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
                        self.store.provider, item.key
                    );
                    self.item_failed(db, &item.claim, &error).await?;
                    GroupEnd::Next
                }
            }
            PushOutcome::ServerError { .. } | PushOutcome::Transport { .. } => {
                let failures = self.store.state.consecutive_failures.max(0) as u32 + 1;
                let wait = STORE_BACKOFF.delay_after(failures);
                warn!(store = %self.store_id, error = %error, retry_in_s = wait.as_secs_f64(), "marketplace unavailable; backing off");
                store_state::back_off(db, self.store_id, wait, &error).await?;
                queue::release(db, self.token, &ids, Release::default()).await?;
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
            queue::dead_letter(db, self.token, claim.id, error).await?;
            metrics()
                .dead_letters
                .with_label_values(&[&self.label])
                .inc();
        } else {
            debug!(store = %self.store_id, product = %claim.product_id, attempts, error, "item refused; will retry");
            let how = Release {
                defer: Some(retry_delay(attempts)),
                error: Some(error),
                add_attempts: 1,
            };
            queue::release(db, self.token, &[claim.id], how).await?;
        }
        self.count_items("refused", 1);
        Ok(())
    }

    /// Request-level acceptance: the batch to poll, the sent quantities and the finished
    /// entries are one transaction.
    async fn accepted(
        &self,
        db: &mut Client,
        group: &[Outgoing],
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
        let (ids, quantities) = ids_and_quantities(group);
        let products: Vec<_> = group.iter().map(|o| o.claim.product_id).collect();
        let sent: Vec<i32> = group.iter().map(|o| o.quantity).collect();
        let tx = db.transaction().await?;
        let batch_id = batches::insert(
            &tx,
            self.store_id,
            self.store.provider,
            batch_ref,
            &items,
            self.d.settings.first_poll_delay,
        )
        .await?;
        queue::mark_sent(&tx, self.store_id, &products, &sent, batch_id).await?;
        queue::finish(&tx, self.token, &ids, Outcome::Sent, &quantities).await?;
        store_state::success(&tx, self.store_id).await?;
        tx.commit().await?;
        self.count_items(Outcome::Sent.as_str(), group.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let s = Duration::from_secs;
        assert_eq!(retry_delay(0), s(1));
        assert_eq!(retry_delay(1), s(2));
        assert_eq!(retry_delay(3), s(8));
        assert_eq!(retry_delay(50), s(300));
        assert_eq!(retry_delay(-1), s(1));
    }
}
