//! The queue: the durable state machine between capture and the marketplaces.
//!
//! Every statement on `stock_sync.queue`, `stock_sync.listing_state`, `stock_sync.key_collisions`,
//! `stock_sync.capture_batches`, `stock_sync.stream_staging` and `stock_sync.checkpoint` lives
//! in this module; capture, dispatch, reconciliation (`reconcile.rs`: pairs in motion,
//! repairs, how far capture is) and the operator commands call the functions here and never
//! write SQL on those tables themselves.
//!
//! # An entry's life
//!
//! An entry says "recompute (product, store) and tell the marketplace if it changed". It never
//! carries a quantity: the quantity is read from the application tables when it is sent.
//!
//! ```text
//!   capture, resync, retry-failed,           claim (dispatch, holding the store's lock;
//!   reconcile, a refused batch item          FOR UPDATE SKIP LOCKED, priority then age)
//!          │  upsert: one per pair                   │
//!          ▼                                         ▼
//!      ┌─────────┐ ─────────────────────────▶ ┌───────────┐  finish: sent, unchanged,
//!      │ pending │                            │ in_flight │  dry_run, no_key, ─────────┐
//!      └─────────┘ ◀───────────────────────── └───────────┘  duplicate_key,            │
//!          │                                       │    │  fulfilled_by_marketplace    │
//!          │        release: 429, 5xx, shutdown,   │    │                              ▼
//!          │        identical body, a retry delay; │    │ dead_letter           ┌──────────┐
//!          │        release_orphans (the claim's   │    └──────────────────────▶│   dead   │
//!          │        cycle is gone)                 │                            └──────────┘
//!          │                                       │ release while a newer          │
//!          │ close_store: store_inactive,          │ pending entry exists           │ retry_failed
//!          │ store_type_ignored, store_missing     ▼                                ▼
//!          └──────────────────────────────▶ ┌──────────┐ ◀──────────────── (retried; the pair
//!                                           │   done   │                   gets a new pending
//!                                           └──────────┘                   entry)
//! ```
//!
//! # Invariants
//! 1. **One pending entry per pair** (`queue_one_pending_per_pair`). Every writer upserts: a
//!    new reason raises the priority, keeps the first enqueue time, and lifts a deferral.
//! 2. **Exactly-once capture**: queue rows, the capture batch row and the checkpoint commit
//!    in one transaction ([`capture::CaptureWriter::commit`]); the rules are in
//!    [`crate::capture`]'s module doc. The checkpoint never moves backwards. Seeds of a
//!    streamed transaction wait in `stream_staging`, which nothing but capture reads, and
//!    reach the queue only in that transaction ([`capture::CaptureWriter::move_staged`]).
//! 3. **Who moves what.** Only capture, operator commands, reconciliation and the batch
//!    poller create pending entries. Only a dispatcher holding the store's advisory lock
//!    ([`crate::locks::STORE_CYCLE`]) claims them. Every move out of `in_flight` names the
//!    [`ClaimToken`] of the claim: a cycle whose claim was released and re-claimed by another
//!    changes nothing ([`QueueError::ClaimLost`]) and must stop. An entry carries a claim
//!    token exactly while it is `in_flight` (every move out clears it), so a statement
//!    naming the token needs no `state` test, and its plan never hinges on how many rows the
//!    planner believes are in flight. Claims of a store are
//!    orphans — released by the next holder of its lock — only when the claiming backend is
//!    gone or the claim is older than the lease the dispatcher gives it.
//! 4. **In doubt** (`listing_state.in_doubt`): a request carrying the pair left, or was about
//!    to, and its answer is not known. Until a push of the pair is accepted nothing is known
//!    to be "told", so nothing is closed as unchanged.
//! 5. **Told quantities** (`listing_state`): `accepted_quantity` changes only on item-level
//!    success read from a batch result, never back to an older batch's value; while a result
//!    is open, `sent_quantity` counts as told.
//! 6. **Unknown outcomes in a row** (`listing_state.unknown_outcomes`): counted per pair in
//!    the transaction that applies a batch result whose items cannot be told apart, reset by
//!    a known item outcome; dispatch counts attempts once a streak is long.

mod admin;
pub mod capture;
mod claims;
mod keys;
mod listings;
mod reason;
mod reconcile;
mod unknown;
mod visibility;

pub use admin::{
    checkpoint_lag, dead_by_store, dead_letters, enqueue_all_listed, outstanding, pending_by_store,
    prune, queue_counts, refresh_statistics, retry_dead_letters, store_summaries, CheckpointLag,
    DeadLetter, PendingByStore, QueueCounts, StoreSummary,
};
pub use capture::read_checkpoint;
pub use claims::{
    claim, close_store, dead_letter, due_stores, finish, release, release_orphans,
    release_unfinished, renew, requeue_failed_items, stale_claim_stores, Claim, ClaimToken,
    Release, RequeuedItem,
};
pub use keys::{
    clear_key_collisions, key_candidates, key_collisions, record_key_collisions, KeyCollision,
};
pub use listings::{
    forget_told, fulfilled_listings, item_accepted, item_failed, last_told,
    mark_fulfilled_by_marketplace, mark_in_doubt, mark_leaving, mark_sent, sent_in_batch,
    FulfilledListing, Told,
};
pub use reason::{Reason, UnknownReason};
pub use reconcile::{checkpoint_reached, enqueue_pairs, in_motion, last_accepted};
pub use unknown::{clear_unknown_outcomes, count_unknown_outcomes};
pub use visibility::{current_snapshot, Snapshot};

/// Where an entry is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    InFlight,
    Done,
    Dead,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::InFlight => "in_flight",
            State::Done => "done",
            State::Dead => "dead",
        }
    }
}

/// How an entry ended (`queue.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Pushed; the marketplace accepted the request (item results follow in `listing_state`).
    Sent,
    /// The quantity equals what the marketplace was last told.
    Unchanged,
    /// `STOCKSYNC_DRY_RUN`: written to the API log, not sent.
    DryRun,
    /// The product has no marketplace key (barcode / sku) or no row.
    NoKey,
    /// Another product of the store names the same listing at the marketplace (the same key,
    /// or one the marketplace spells the same): neither is pushed while it lasts.
    DuplicateKey,
    /// The marketplace keeps this listing's stock itself (Hepsiburada `isFulfilledByHB`).
    FulfilledByMarketplace,
    /// The store is inactive or has `send_stock = false`.
    StoreInactive,
    /// The store's type is not a marketplace stocksync serves.
    StoreTypeIgnored,
    /// The store has no `stores` row.
    StoreMissing,
    /// A newer pending entry of the pair made this one redundant.
    Superseded,
    /// A dead letter `retry-failed` re-enqueued.
    Retried,
    /// Dead-lettered (state `dead`).
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::Unchanged => "unchanged",
            Outcome::DryRun => "dry_run",
            Outcome::NoKey => "no_key",
            Outcome::DuplicateKey => "duplicate_key",
            Outcome::FulfilledByMarketplace => "fulfilled_by_marketplace",
            Outcome::StoreInactive => "store_inactive",
            Outcome::StoreTypeIgnored => "store_type_ignored",
            Outcome::StoreMissing => "store_missing",
            Outcome::Superseded => "superseded",
            Outcome::Retried => "retried",
            Outcome::Failed => "failed",
        }
    }

    /// Outcomes of a store that gets no requests at all: its entries are closed by age.
    pub fn is_gate(self) -> bool {
        matches!(
            self,
            Outcome::StoreInactive | Outcome::StoreTypeIgnored | Outcome::StoreMissing
        )
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("database: {}", crate::db::describe(.0))]
    Db(#[from] tokio_postgres::Error),
    /// A transition out of `in_flight` found fewer of its entries than it named: another
    /// cycle released and re-claimed them. The cycle that sees this must stop.
    #[error("{lost} of {expected} claimed entries were taken over by another dispatcher")]
    ClaimLost { expected: usize, lost: usize },
}

impl QueueError {
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            QueueError::Db(e) => e.code(),
            QueueError::ClaimLost { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_outcomes() {
        assert!(Outcome::StoreInactive.is_gate());
        assert!(!Outcome::Sent.is_gate());
        assert_eq!(State::InFlight.as_str(), "in_flight");
    }
}
