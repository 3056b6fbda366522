//! Store cycles that fail (a database error, a statement that cannot succeed until something
//! changes): the store is retried after a growing delay instead of at every tick, and the
//! failure is a warning once per stretch (repeats are debug lines) instead of a log line per
//! tick. A store that keeps failing also fails `/readyz` (its cycles do not finish), so it is
//! a page, not a silent stall.

use std::collections::HashMap;
use std::fmt::Display;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::backoff::{Backoff, BackoffPolicy};

/// From a second, doubling to a minute: a transient error (a failover, a lock timeout) is
/// retried soon, a lasting one costs the database one failing cycle a minute.
const CYCLE_RETRY: BackoffPolicy =
    BackoffPolicy::new(Duration::from_secs(1), Duration::from_secs(60));

/// The stores whose last cycle failed, each with its delays and when it may run again.
#[derive(Debug, Default)]
pub(super) struct StoreRetries {
    failing: HashMap<Uuid, (Backoff, Instant)>,
}

impl StoreRetries {
    /// Whether `store` may start a cycle now.
    pub(super) fn may_run(&self, store: &Uuid) -> bool {
        self.failing
            .get(store)
            .is_none_or(|(_, retry_at)| Instant::now() >= *retry_at)
    }

    pub(super) fn failed(&mut self, store: Uuid, error: &dyn Display) {
        match self.failing.get_mut(&store) {
            Some((backoff, retry_at)) => {
                let delay = backoff.next_delay();
                *retry_at = Instant::now() + delay;
                debug!(store = %store, error = %error, retry_in = ?delay, "store cycle still failing");
            }
            None => {
                let mut backoff = CYCLE_RETRY.start();
                let delay = backoff.next_delay();
                warn!(store = %store, error = %error, retry_in = ?delay,
                    "store cycle failed; retrying with backoff");
                self.failing
                    .insert(store, (backoff, Instant::now() + delay));
            }
        }
    }

    pub(super) fn succeeded(&mut self, store: Uuid) {
        if self.failing.remove(&store).is_some() {
            info!(store = %store, "store cycle works again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failing_store_waits_longer_each_time_and_a_success_forgets_it() {
        let store = Uuid::from_u128(7);
        let mut retries = StoreRetries::default();
        assert!(retries.may_run(&store));
        retries.failed(store, &"boom");
        assert!(!retries.may_run(&store));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(retries.may_run(&store), "the first delay is 1 s to 2 s");
        retries.failed(store, &"boom");
        tokio::time::advance(Duration::from_millis(1_900)).await;
        assert!(!retries.may_run(&store), "the second delay is at least 2 s");
        retries.succeeded(store);
        assert!(retries.may_run(&store));
        assert!(
            retries.may_run(&Uuid::from_u128(8)),
            "other stores are not held"
        );
    }
}
