//! Reconciliation: read back what each marketplace shows, compare it with what the database
//! says it should show, report the drift, and repair it.
//!
//! # One audit of one store ([`audit`])
//! 1. **Gates** ([`targets`]): only a store dispatch would send to is read (a marketplace
//!    `stores` row, active, `send_stock`, not paused, with credentials), decided without
//!    writing anything. One audit of a store at a time ([`crate::locks::RECONCILE`]).
//! 2. **Pages** ([`scan`]): the marketplace's catalogue is paged (Trendyol 100 contents per
//!    page following `nextPageToken`; Hepsiburada `offset`/`limit`, deduplicated by
//!    `listingId`) within the read budget: each read waits for the store's limits (the
//!    endpoint's rate window, the read group's per-minute cap and reconciliation's share of
//!    it) and is recorded in `stock_sync.sent_requests` before it leaves.
//! 3. **Compare** ([`catalogue`], [`compare`]): each listing's key is looked up among the
//!    store's listed products in the marketplace's spelling (Trendyol ignores spaces in
//!    barcodes, Hepsiburada skus compare case-insensitively); the quantity the database
//!    implies comes from the quantity SQL ([`crate::stock::compute_quantities`]) for the
//!    page's products at once. Agreement and unknown (`null`) quantities are settled here.
//! 4. **Confirm**: every other listing is read again by key (50 per request, in the
//!    marketplace's spelling of the key: the listing's own, or a Trendyol barcode without
//!    spaces), the truth is
//!    computed after that read, and capture is waited for until its checkpoint passes the
//!    server's WAL position at that moment, so every change the truth saw is in the queue;
//!    then a pair *in motion* (a pending or in-flight entry, a push whose item result is
//!    open, or an entry closed or a push accepted since `flush_interval` before the re-read)
//!    is set apart, never counted as drift. A listing shown *lower* than the truth is held
//!    back ([`held`]) until the same difference has persisted `confirm_after`, unless
//!    Trendyol's `stockLastModifiedDate` shows nothing changed there since the last accepted
//!    push; one shown higher is drift at once.
//! 5. **Repair** (with `fix`): each drifted pair gets a `RECONCILE` entry (priority 55) and
//!    its last accepted quantity is forgotten, so the only-changed rule cannot skip the
//!    repair; the running service pushes it as usual (limits, identical-body rule, batch
//!    results). Repairs and the journal's record of the page commit in one transaction.
//! 6. **Listings no page showed** are read by key; still absent (and not in motion): missing
//!    at the marketplace.
//!
//! # Categories
//! Every listing looked at lands in exactly one ([`compare::Kind`]): agree, drifted, held back
//! (with the time it may be repaired), missing at the marketplace, unknown to the database, not repairable (Hepsiburada: fulfilled by
//! Hepsiburada, locked, frozen, a decrease during a campaign — reported, never pushed),
//! unknown (no quantity shown), in motion. `checked` is their sum; `repaired` counts the
//! drifted pairs enqueued. Rows of an answer that cannot be read are reported as bad rows
//! (naming the row and field) and the rest of the page is used; a malformed answer is tried
//! again and then ends the audit with an error naming the field.
//!
//! # Where it runs
//! * `stocksync reconcile [--store ID] [--fix] [--json]` audits now and prints the result;
//!   without `--fix` it writes nothing but the limiter's records of its reads.
//! * Inside `stocksync run` ([`periodic`]): every `reconcile_interval`, one store at a time,
//!   repairing unless `reconcile_fix = false` (or dry run). Its position, counts, the keys it
//!   has read and a sample of its findings are kept in `stock_sync.reconcile_*` with each
//!   page ([`journal`]), so an audit cut short by a restart (or kill -9) resumes where it
//!   stopped. `status`, the dashboard and `/metrics` read those tables.
//!
//! # Invariants
//! * No read without a recorded request and a free slot in every limit that applies.
//! * A pair is reported drifted only after a re-read by key, with the truth computed after
//!   that read, capture past the truth's position, and the pair not in motion.
//! * A listing shown lower than the database is never repaired on a first sighting (an
//!   order may not be imported yet), except where the marketplace dates its stock to no later
//!   than stocksync's last accepted push and shows what that push set.
//! * Nothing a marketplace wrote is logged or stored but parsed figures, keys and lock or
//!   freeze reasons (masked of the store's credentials).
//! * Lower stages only: `queue`, `stores`, `stock`, `marketplace`, `db`, `locks`, `backoff`,
//!   `failures`, `metrics`.

pub mod audit;
pub mod catalogue;
pub mod compare;
pub mod held;
pub mod journal;
pub mod periodic;
pub mod scan;
pub mod targets;

use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

pub use audit::{Audit, Memory, Progress, StoreReport};
pub use compare::{Finding, Kind, Tally};
pub use journal::RunStatus;
pub use scan::ReadOutcome;
pub use targets::{Skipped, Target};

use crate::marketplace::read::MalformedPage;
use crate::marketplace::{ClientSettings, Provider, UserAgents};
use crate::stock::QuantityRules;
use crate::stores::limiter::Share;
use crate::stores::LimitSettings;

/// What reconciliation needs from the configuration (built by `ops`).
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    pub client: ClientSettings,
    /// Who stocksync says it is, per store (as dispatch).
    pub user_agents: UserAgents,
    /// The limits every request obeys (shared with dispatch through the database).
    pub limits: LimitSettings,
    /// Reads per minute reconciliation may use of the Trendyol read group (its share of the
    /// cap; batch-result polling has the rest).
    pub trendyol_reads_per_minute: u32,
    /// Reads per minute of the Hepsiburada listings.
    pub hepsiburada_reads_per_minute: u32,
    /// Hepsiburada `limit` per page.
    pub hepsiburada_page_limit: u32,
    /// Quantity rules of stores without their own.
    pub rules: QuantityRules,
    pub rules_per_store: HashMap<Uuid, QuantityRules>,
    /// A push sent or accepted this recently may not show yet (`flush_interval`).
    pub motion_window: Duration,
    /// The slot whose checkpoint tells how far capture is.
    pub slot: String,
    /// Longest wait for capture to pass the truth's position before a difference is judged.
    pub capture_wait: Duration,
    /// Periodic audits: every this long per store (zero: none).
    pub interval: Duration,
    /// Periodic audits repair.
    pub fix: bool,
    /// A listing shown lower than the database is repaired only once the difference has
    /// persisted across reads this far apart (zero: at once), unless the marketplace shows
    /// that nothing changed on its side since the last accepted push ([`held`]).
    pub confirm_after: Duration,
}

impl ReconcileSettings {
    /// The quantity rules of a store.
    pub fn rules_for(&self, store: Uuid) -> QuantityRules {
        self.rules_per_store
            .get(&store)
            .copied()
            .unwrap_or(self.rules)
    }

    /// Reconciliation's part of the read budget of `provider`.
    pub fn share(&self, provider: Provider) -> Share {
        Share {
            endpoint: provider.read_endpoint(),
            per_minute: match provider {
                Provider::Trendyol => self.trendyol_reads_per_minute,
                Provider::Hepsiburada => self.hepsiburada_reads_per_minute,
            }
            .max(1),
        }
    }
}

/// Why an audit stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("database: {}", crate::db::describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("connecting to the database: {0}")]
    Connect(#[from] crate::db::DbError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    #[error(transparent)]
    Store(#[from] crate::stores::StoreError),
    /// The marketplace refused a read (its text is not kept: it may echo anything).
    #[error("the marketplace refused the read: {kind} (HTTP {status})")]
    Refused { kind: &'static str, status: u16 },
    #[error("the marketplace gave no usable answer in {tries} tries (last: {last})")]
    Unavailable { tries: u32, last: &'static str },
    #[error(transparent)]
    Malformed(#[from] MalformedPage),
    #[error("stopped")]
    Stopped,
}
