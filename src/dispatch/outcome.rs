//! What a push's answer does to the queue and the store:
//!
//! | answer | queue | store |
//! | --- | --- | --- |
//! | accepted | `sent` (batch to poll, sent quantities, one transaction) | success; a probe lifts a 403 pause |
//! | 429 | released | waits Retry-After (a hint past `max_retry_after`, or of zero or in the past, is ignored) or a window |
//! | 401, unusable credentials | released | paused until the credentials change |
//! | 403 | released | paused; probes itself after `forbidden_backoff`, doubling to an hour |
//! | identical body | released, deferred a window | — |
//! | 400 | split in halves; a lone item fails (retried, dead-lettered at `max_attempts`) | — |
//! | 413 | split in halves | at most half as many items per request from now on (at least 50) |
//! | 5xx, no answer, no connection | released | backs off ([`STORE_BACKOFF`]) |
//! | anything else (3xx, 404, 405, 408, 409, 415, 422, ...) | released, no attempt counted | backs off as for a 5xx |
//!
//! Only a 400 may split a batch and count attempts towards dead letters: a wrong base URL or
//! a gateway's answer must never dead-letter a catalogue.

use std::time::Duration;

use tokio_postgres::Client;
use tracing::{debug, info, warn};

use super::batches::{self, BatchItem};
use super::build::{ids_and_quantities, Outgoing};
use super::send::Sent;
use super::store_cycle::Cycle;
use super::DispatchError;
use crate::backoff::BackoffPolicy;
use crate::marketplace::{throttle_wait, PushOutcome, Throttle};
use crate::metrics::metrics;
use crate::queue::{self, Claim, Outcome, Release};
use crate::stores::gates;
use crate::stores::state::{self as store_state, Pause, PauseKind, Problem};

/// A store whose marketplace fails (5xx, no answer) waits 1 s, doubling per consecutive
/// failure up to a minute (jittered: at most two): long enough not to hammer an outage,
/// short enough that a blip costs seconds.
pub(super) const STORE_BACKOFF: BackoffPolicy =
    BackoffPolicy::new(Duration::from_secs(1), Duration::from_secs(60));

/// A forbidden store's probe waits at most an hour.
pub(super) const FORBIDDEN_BACKOFF_CAP: Duration = Duration::from_secs(3600);

/// A 413 halves the store's batch size, never below this.
pub(super) const MIN_BATCH_AFTER_413: usize = 50;

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
        PushOutcome::Forbidden { .. } => "403",
        PushOutcome::IdenticalBody { .. } => "identical",
        PushOutcome::BadRequest { .. } => "4xx",
        PushOutcome::TooLarge { .. } => "413",
        PushOutcome::Unexpected { .. } => "unexpected",
        PushOutcome::ServerError { .. } => "5xx",
        PushOutcome::Transport { .. } | PushOutcome::NotDelivered { .. } => "error",
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
        | PushOutcome::Unexpected { status, message }
        | PushOutcome::ServerError { status, message } => Some(format!("{status}: {message}")),
        PushOutcome::Forbidden { message } => Some(format!("403: {message}")),
        PushOutcome::TooLarge { message } => Some(format!("413: {message}")),
        PushOutcome::Transport { message } | PushOutcome::NotDelivered { message } => {
            Some(message.clone())
        }
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
        // lost answer (transport) may hide an accepted one, so it keeps counting, while a
        // connection never made (`NotDelivered`) carried no body at all.
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
        if self.store.probe {
            match &outcome {
                PushOutcome::Forbidden { .. } => {}
                // No answer says nothing about the block: the next probe decides.
                PushOutcome::ServerError { .. }
                | PushOutcome::Transport { .. }
                | PushOutcome::NotDelivered { .. } => {
                    self.forbidden(db, &error, false).await?;
                    queue::release(db, self.token, &ids, Release::default()).await?;
                    return Ok(GroupEnd::StopStore);
                }
                // The marketplace answered: the block is over, whatever it thought of the
                // request.
                _ => {
                    info!(store = %self.store_id, "the marketplace answers again after a 403; the pause is lifted");
                    store_state::unpause(db, Some(self.store_id)).await?;
                }
            }
        }
        Ok(match outcome {
            PushOutcome::Accepted { batch_ref } => {
                self.accepted(db, &group, &batch_ref).await?;
                debug!(store = %self.store_id, batch = %batch_ref, items = group.len(), sha256 = %request.body_sha256, "push accepted");
                GroupEnd::Next
            }
            PushOutcome::RateLimited { retry_after } => {
                let throttle = throttle_wait(
                    retry_after,
                    settings.limits.rate_limit_window,
                    settings.max_retry_after,
                );
                if let Throttle::HintTooLong(_) = throttle {
                    warn!(store = %self.store_id, "the marketplace asked for a wait longer than STOCKSYNC_MAX_RETRY_AFTER; ignoring it");
                }
                let wait = throttle.wait();
                warn!(store = %self.store_id, wait_s = wait.as_secs_f64(), "marketplace throttled the store (429)");
                let message = format!(
                    "429 from the marketplace; retrying in {:.1} s",
                    wait.as_secs_f64()
                );
                store_state::back_off(db, self.store_id, wait, Problem::Throttled, &message, false)
                    .await?;
                queue::release(db, self.token, &ids, Release::default()).await?;
                GroupEnd::StopStore
            }
            PushOutcome::AuthRejected { status, message } => {
                let reason = if status == 0 {
                    format!("credentials unusable: {message}")
                } else {
                    format!("credentials refused ({status}): {message}")
                };
                let pause = Pause {
                    kind: PauseKind::Credentials,
                    reason: &reason,
                    fingerprint: &self.store.fingerprint,
                    look_again_after: store_state::PAUSE_RECHECK,
                    forbidden: false,
                };
                gates::pause(db, self.store_id, &pause).await?;
                queue::release(db, self.token, &ids, Release::default()).await?;
                GroupEnd::StopStore
            }
            PushOutcome::Forbidden { .. } => {
                self.forbidden(db, &error, true).await?;
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
            PushOutcome::TooLarge { .. } if group.len() > MIN_BATCH_AFTER_413 => {
                let limit = (group.len() / 2).max(MIN_BATCH_AFTER_413);
                warn!(store = %self.store_id, items = group.len(), limit, "request too large (413); sending at most {limit} items per request to this store");
                store_state::limit_batch(db, self.store_id, limit as i32).await?;
                let second = group.split_off(group.len() / 2);
                GroupEnd::Split(group, second)
            }
            PushOutcome::TooLarge { .. } | PushOutcome::Unexpected { .. } => {
                self.store_failed(db, &ids, Problem::UnexpectedStatus, &error)
                    .await?
            }
            PushOutcome::ServerError { .. }
            | PushOutcome::Transport { .. }
            | PushOutcome::NotDelivered { .. } => {
                self.store_failed(db, &ids, Problem::ServerError, &error)
                    .await?
            }
        })
    }

    /// The store, not the items, failed: every entry stays pending (no attempt counted) and
    /// the store backs off.
    async fn store_failed(
        &self,
        db: &Client,
        ids: &[i64],
        problem: Problem,
        error: &str,
    ) -> Result<GroupEnd, DispatchError> {
        let failures = self.store.state.consecutive_failures.max(0) as u32 + 1;
        let wait = STORE_BACKOFF.delay_after(failures);
        warn!(store = %self.store_id, kind = problem.as_str(), error = %error, retry_in_s = wait.as_secs_f64(), "the marketplace failed the store's request; backing off");
        store_state::back_off(db, self.store_id, wait, problem, error, true).await?;
        queue::release(db, self.token, ids, Release::default()).await?;
        Ok(GroupEnd::StopStore)
    }

    /// A 403 (`counts`) or a probe that got no answer: the store is paused and probes itself
    /// after `forbidden_backoff`, doubling per 403 up to [`FORBIDDEN_BACKOFF_CAP`].
    async fn forbidden(&self, db: &Client, error: &str, counts: bool) -> Result<(), DispatchError> {
        let answers = self.store.state.forbidden_count.max(0) as u32 + u32::from(counts);
        let policy = BackoffPolicy::exact(self.d.settings.forbidden_backoff, FORBIDDEN_BACKOFF_CAP);
        let wait = policy.delay_after(answers.max(1));
        let reason = format!(
            "forbidden (403: an IP block or overload, not necessarily the credentials): {error}"
        );
        let pause = Pause {
            kind: PauseKind::Forbidden,
            reason: &reason,
            fingerprint: &self.store.fingerprint,
            look_again_after: wait,
            forbidden: counts,
        };
        gates::pause(db, self.store_id, &pause).await?;
        Ok(())
    }

    /// A claimed item refused for its own sake: retried later, or dead-lettered.
    async fn item_failed(
        &self,
        db: &Client,
        claim: &Claim,
        error: &str,
    ) -> Result<(), DispatchError> {
        let attempts = claim.attempts + 1;
        // A known outcome: the pair's streak of unknown upload outcomes ends.
        queue::clear_unknown_outcomes(db, self.store_id, &[claim.product_id]).await?;
        if attempts >= self.d.settings.max_attempts {
            warn!(store = %self.store_id, product = %claim.product_id, attempts, error, "item dead-lettered");
            queue::dead_letter(db, self.token, claim.id, error).await?;
            metrics()
                .dead_letters
                .with_label_values(&[&self.label])
                .inc();
        } else {
            warn!(store = %self.store_id, product = %claim.product_id, attempts, error, "item refused; will retry");
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
