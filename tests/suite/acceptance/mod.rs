//! The end-to-end scenarios that run for a minute or more: the reliability suite (random
//! workloads under kill -9, faults and restarts, ending with the oracle) and reconciliation
//! under a workload (reads within a per-minute budget take more than a minute by design).
//!
//! They sit under `acceptance::` because libtest starts tests in the order of their names:
//! started first, the long scenarios overlap the short suites instead of trailing them.

mod reconcile;
mod reliability;
