//! Why a pair was enqueued, and the priority that follows from it (defined here once).

use std::fmt;
use std::str::FromStr;

/// Why a (product, store) pair was enqueued. A pending entry keeps the reason of the highest
/// priority that touched it; claims are served in priority order, then by age.
///
/// | reason | priority | written by |
/// | --- | --- | --- |
/// | `ORDER_CREATED` | 100 | capture: sellable down while committed up |
/// | `ORDER_CANCELLED` | 90 | capture: sellable up while committed down |
/// | `STOCK_REMOVED` | 80 | capture: sellable down (also a deleted listing, TRUNCATE) |
/// | `STOCK_ADDED` | 70 | capture: sellable up (also a new listing) |
/// | `COMPOSITION_CHANGED` | 60 | capture: a set's items changed |
/// | `RECONCILE` | 55 | reconciliation found the marketplace showing something else |
/// | `INITIAL_SYNC` | 50 | capture's first run: every listed pair |
/// | `RESYNC` | 50 | `stocksync resync`, `retry-failed`, a store that can be sent to again |
/// | `RETRY` | the failed entry's own | a batch result refused the item; retried after a delay |
///
/// `RETRY` keeps the priority of the entry that failed (see [`Reason::priority`]): a refused
/// order update stays an order update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    OrderCreated,
    OrderCancelled,
    StockRemoved,
    StockAdded,
    /// A set's composition changed (items added, removed or re-quantified).
    CompositionChanged,
    /// Reconciliation read a different quantity at the marketplace.
    Reconcile,
    /// The first run's snapshot of every listed pair.
    InitialSync,
    /// `stocksync resync`, `retry-failed`, or a store that became sendable again.
    Resync,
    /// An item the marketplace refused in a batch result, tried again.
    Retry,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::OrderCreated,
        Reason::OrderCancelled,
        Reason::StockRemoved,
        Reason::StockAdded,
        Reason::CompositionChanged,
        Reason::Reconcile,
        Reason::InitialSync,
        Reason::Resync,
        Reason::Retry,
    ];

    /// The claim priority of a new entry with this reason. `Retry` entries are written with
    /// the failed entry's own priority; this value is only their floor.
    pub fn priority(self) -> i32 {
        match self {
            Reason::OrderCreated => 100,
            Reason::OrderCancelled => 90,
            Reason::StockRemoved => 80,
            Reason::StockAdded => 70,
            Reason::CompositionChanged => 60,
            Reason::Reconcile => 55,
            Reason::InitialSync | Reason::Resync => 50,
            Reason::Retry => 0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::OrderCreated => "ORDER_CREATED",
            Reason::OrderCancelled => "ORDER_CANCELLED",
            Reason::StockRemoved => "STOCK_REMOVED",
            Reason::StockAdded => "STOCK_ADDED",
            Reason::CompositionChanged => "COMPOSITION_CHANGED",
            Reason::Reconcile => "RECONCILE",
            Reason::InitialSync => "INITIAL_SYNC",
            Reason::Resync => "RESYNC",
            Reason::Retry => "RETRY",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown queue reason {0:?}")]
pub struct UnknownReason(pub String);

impl FromStr for Reason {
    type Err = UnknownReason;
    fn from_str(s: &str) -> Result<Reason, UnknownReason> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_the_seed_plan() {
        assert_eq!(Reason::OrderCreated.priority(), 100);
        assert_eq!(Reason::OrderCancelled.priority(), 90);
        assert_eq!(Reason::StockRemoved.priority(), 80);
        assert_eq!(Reason::StockAdded.priority(), 70);
        assert_eq!(Reason::CompositionChanged.priority(), 60);
        assert!(Reason::Reconcile.priority() > Reason::Resync.priority());
        assert!(Reason::Reconcile.priority() < Reason::CompositionChanged.priority());
    }

    #[test]
    fn names_round_trip() {
        for r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>(), Ok(r));
        }
        assert!("ORDER".parse::<Reason>().is_err());
    }
}
