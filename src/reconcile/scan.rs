//! Reads within the budget ([`Reader`]): before every read the store's limits are waited for
//! (the endpoint's rate window, the read group's per-minute cap, and reconciliation's share
//! of it) and the read is recorded in `stock_sync.sent_requests`, so the budget holds across
//! restarts, instances and alongside dispatch's batch-result polling. Every read is counted in
//! `stocksync_reconcile_reads_total{store,outcome}`.
//!
//! A 429 waits its `Retry-After`; a 5xx, no answer or a malformed page is tried again with
//! backoff a few times; a refusal (401/403, another 4xx) ends the audit at once. Errors keep
//! the kind and status only: a marketplace's error text may echo anything.

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::ReconcileError;
use crate::backoff::BackoffPolicy;
use crate::marketplace::read::{ListingPage, ReadFailure, ReadQuery};
use crate::marketplace::{MarketplaceClient, PushOutcome, StoreCredentials};
use crate::metrics::metrics;
use crate::stores::limiter::Share;
use crate::stores::{Limiter, RequestKind};

/// A failed read (5xx, no answer, a malformed page) waits 1 s, doubling to 30 s: an outage
/// is not hammered, a blip costs a second.
const READ_RETRY: BackoffPolicy =
    BackoffPolicy::new(Duration::from_secs(1), Duration::from_secs(30));
/// Tries of one read before the audit gives up (429s count apart).
const MAX_TRIES: u32 = 5;
/// 429s for one read before the audit gives up: the marketplace sees traffic we do not
/// (another tool on the account), and an audit can wait for the next interval.
const MAX_THROTTLED: u32 = 20;
/// A 429 without a usable `Retry-After` (none, zero, in the past) waits this long.
const THROTTLE_WAIT: Duration = Duration::from_secs(10);

/// The `outcome` label of `stocksync_reconcile_reads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    Ok,
    RateLimited,
    Refused,
    ClientError,
    ServerError,
    Transport,
    Malformed,
}

impl ReadOutcome {
    pub const ALL: [ReadOutcome; 7] = [
        ReadOutcome::Ok,
        ReadOutcome::RateLimited,
        ReadOutcome::Refused,
        ReadOutcome::ClientError,
        ReadOutcome::ServerError,
        ReadOutcome::Transport,
        ReadOutcome::Malformed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReadOutcome::Ok => "ok",
            ReadOutcome::RateLimited => "rate_limited",
            ReadOutcome::Refused => "refused",
            ReadOutcome::ClientError => "client_error",
            ReadOutcome::ServerError => "server_error",
            ReadOutcome::Transport => "transport",
            ReadOutcome::Malformed => "malformed",
        }
    }

    fn of(result: &Result<ListingPage, ReadFailure>) -> ReadOutcome {
        match result {
            Ok(_) => ReadOutcome::Ok,
            Err(ReadFailure::Transport(_)) => ReadOutcome::Transport,
            Err(ReadFailure::Malformed(_)) => ReadOutcome::Malformed,
            Err(ReadFailure::Refused(o)) => match o {
                PushOutcome::RateLimited { .. } => ReadOutcome::RateLimited,
                PushOutcome::AuthRejected { .. } => ReadOutcome::Refused,
                PushOutcome::ServerError { .. } => ReadOutcome::ServerError,
                PushOutcome::Transport { .. } => ReadOutcome::Transport,
                _ => ReadOutcome::ClientError,
            },
        }
    }
}

/// Reads of one store's listings, within its budget.
pub struct Reader<'a> {
    client: &'a MarketplaceClient,
    creds: &'a StoreCredentials,
    limiter: Limiter<'a>,
    share: Share,
    label: String,
    stop: &'a CancellationToken,
    /// Requests made (every try counts).
    pub reads: u64,
}

impl<'a> Reader<'a> {
    pub fn new(
        client: &'a MarketplaceClient,
        creds: &'a StoreCredentials,
        limiter: Limiter<'a>,
        share: Share,
        stop: &'a CancellationToken,
        label: String,
    ) -> Reader<'a> {
        for outcome in ReadOutcome::ALL {
            metrics()
                .reconcile_reads
                .with_label_values(&[&label, outcome.as_str()]);
        }
        Reader {
            client,
            creds,
            limiter,
            share,
            label,
            stop,
            reads: 0,
        }
    }

    /// Sleeps `wait` unless stopped first.
    async fn pause(&self, wait: Duration) -> Result<(), ReconcileError> {
        tokio::select! {
            _ = self.stop.cancelled() => Err(ReconcileError::Stopped),
            _ = tokio::time::sleep(wait) => Ok(()),
        }
    }

    /// One read, waiting for the budget and trying again as the module doc says.
    pub async fn read(
        &mut self,
        db: &Client,
        query: &ReadQuery<'_>,
    ) -> Result<ListingPage, ReconcileError> {
        let endpoint = self.share.endpoint;
        let mut backoff = READ_RETRY.start();
        let (mut tries, mut throttled) = (0, 0);
        loop {
            if !self
                .limiter
                .wait_for_slot(db, endpoint, Some(self.share), self.stop)
                .await?
            {
                return Err(ReconcileError::Stopped);
            }
            // Recorded before it leaves: a crash after it must not break the limits.
            self.limiter
                .record(db, endpoint, RequestKind::Read, None)
                .await?;
            self.reads += 1;
            let (result, exchange) = self.client.read_listings(self.creds, query).await;
            let outcome = ReadOutcome::of(&result);
            let m = metrics();
            m.reconcile_reads
                .with_label_values(&[&self.label, outcome.as_str()])
                .inc();
            m.request_duration_seconds
                .with_label_values(&[self.creds.provider.as_str(), "read"])
                .observe(exchange.duration.as_secs_f64());
            let failure = match result {
                Ok(page) => return Ok(page),
                Err(f) => f,
            };
            let status = exchange.status.unwrap_or(0);
            match &failure {
                ReadFailure::Refused(PushOutcome::RateLimited { retry_after }) => {
                    throttled += 1;
                    if throttled > MAX_THROTTLED {
                        return Err(ReconcileError::Unavailable {
                            tries: throttled,
                            last: outcome.as_str(),
                        });
                    }
                    self.limiter.waited("rate_limit");
                    self.pause(
                        // Zero (a date already past) would retry into the same throttle.
                        retry_after
                            .filter(|w| !w.is_zero())
                            .unwrap_or(THROTTLE_WAIT)
                            .min(Duration::from_secs(300)),
                    )
                    .await?;
                    continue;
                }
                ReadFailure::Refused(PushOutcome::AuthRejected { .. }) => {
                    return Err(ReconcileError::Refused {
                        kind: "credentials refused",
                        status,
                    })
                }
                ReadFailure::Refused(PushOutcome::ServerError { .. })
                | ReadFailure::Refused(PushOutcome::Transport { .. })
                | ReadFailure::Transport(_)
                | ReadFailure::Malformed(_) => {}
                ReadFailure::Refused(_) => {
                    return Err(ReconcileError::Refused {
                        kind: "request refused",
                        status,
                    })
                }
            }
            tries += 1;
            if tries >= MAX_TRIES {
                return Err(match failure {
                    ReadFailure::Malformed(m) => ReconcileError::Malformed(m),
                    _ => ReconcileError::Unavailable {
                        tries,
                        last: outcome.as_str(),
                    },
                });
            }
            tracing::debug!(store = %self.label, status, outcome = outcome.as_str(), "read failed; trying again");
            self.pause(backoff.next_delay()).await?;
        }
    }
}
