//! stocksync: keeps marketplace stock equal to a seller's PostgreSQL database.
//!
//! The data's path, one module per stage (lower stages never import higher ones):
//!
//! ```text
//! PostgreSQL WAL --pgoutput--> replication (wire, decode, stream) --> capture --> stock_sync.queue
//! stock_sync.queue --> dispatch (claim, coalesce, limit) --> stock (quantity SQL)
//!                              \--> marketplace clients --> Trendyol / Hepsiburada
//! ```
//!
//! `ops` holds the CLI, configuration, HTTP endpoints and metrics; `mock` is the strict local
//! marketplace used by tests, staging and the demo; `localpg` starts private PostgreSQL
//! clusters for tests, benchmarks and the demo.

pub mod backoff;
pub mod capture;
pub mod db;
pub mod dispatch;
pub mod localpg;
pub mod locks;
pub mod marketplace;
pub mod metrics;
pub mod mock;
pub mod ops;
pub mod queue;
pub mod replication;
pub mod stock;
