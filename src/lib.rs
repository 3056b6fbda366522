//! stocksync: keeps marketplace stock equal to a seller's PostgreSQL database.
//!
//! The data's path, one module per stage (lower stages never import higher ones):
//!
//! ```text
//! PostgreSQL WAL --pgoutput--> replication (wire, decode, stream) --> capture --> queue
//!                                            (queue rows + checkpoint, one transaction)
//! queue --> dispatch (claim, gates, limits, build, send, outcome) --> stock (quantity SQL)
//!                    \--> marketplace clients --> Trendyol / Hepsiburada
//! marketplace reads --> reconcile (compare with the quantity SQL) --> queue (repairs)
//! ```
//!
//! | module | holds | may use |
//! | --- | --- | --- |
//! | [`replication`] | the replication wire, the pure pgoutput decoder, the stream | `db` |
//! | [`capture`] | row changes -> queue entries (+ parent sets); the exactly-once rules | `replication`, `queue`, `db` |
//! | [`queue`] | the queue's state machine: every statement on the queue, `listing_state`, `capture_batches` and the checkpoint | `db` |
//! | [`stock`] | set-based quantity SQL | — |
//! | [`stores`] | the `stores` rows, gates and pauses, every request limit | `queue`, `marketplace`, `db` |
//! | [`dispatch`] | one file per step of a store's cycle, batch-result polling | `queue`, `stores`, `stock`, `marketplace`, `db` |
//! | [`reconcile`] | read back what the marketplaces show, compare, report drift, enqueue repairs | `queue`, `stores`, `stock`, `marketplace`, `db`, `locks`, `backoff`, `failures`, `metrics` |
//! | [`marketplace`] | Trendyol and Hepsiburada clients (push, results, reads); response classification | — |
//! | [`mock`] | the strict local marketplaces (tests, staging, demo) | — |
//! | [`ops`] | CLI, configuration, setup, status, HTTP, the service, the demo | everything |
//!
//! Shared by all: [`db`] (connection settings, TLS), [`locks`] (every advisory lock),
//! [`backoff`] (every retry delay), [`failures`] (background failures warned once per
//! stretch), [`metrics`] (the Prometheus registry), [`localpg`] (private clusters for tests,
//! benchmarks and the demo).

pub mod backoff;
pub mod capture;
pub mod db;
pub mod dispatch;
pub mod failures;
pub mod localpg;
pub mod locks;
pub mod marketplace;
pub mod metrics;
pub mod mock;
pub mod ops;
pub mod queue;
pub mod reconcile;
pub mod replication;
pub mod stock;
pub mod stores;
