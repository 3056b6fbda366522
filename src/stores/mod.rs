//! The marketplace stores and what stocksync keeps per store: the `stores` row and its
//! credentials ([`row`]), whether the store may be sent to or read at all ([`gates`]), its
//! pauses, backoff and last request ([`state`], the `stock_sync.store_state` table), and the
//! limits every request to it obeys ([`limiter`], `stock_sync.sent_requests`).
//!
//! Dispatch (pushes, batch results) and reconciliation (reads) both go through here, so a
//! paused store is neither pushed to nor read, and their requests share one set of budgets.

pub mod gates;
pub mod limiter;
pub mod row;
pub mod state;

pub use gates::{Gate, OpenStore};
pub use limiter::{LimitSettings, Limiter, RequestKind};
pub use row::StoreRow;

use uuid::Uuid;

/// Errors of the store-level checks.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {}", crate::db::describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    #[error("stores row {store}: column {column}: {problem}")]
    BadStoreRow {
        store: Uuid,
        column: &'static str,
        problem: String,
    },
}
