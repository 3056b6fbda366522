//! The end-to-end scenarios that run for half a minute or more: the reliability suite (random
//! workloads under kill -9, faults and restarts, ending with the oracle), reconciliation under
//! a workload (reads within a per-minute budget take more than a minute by design), and the
//! live-account behaviours (backoffs and pauses that wait out doubling delays).
//!
//! They sit under `acceptance::` because libtest starts tests in the order of their names:
//! started first, the long scenarios overlap the short suites instead of trailing them. Each
//! module is still a suite of its own (its own cluster, named after the module).

mod live_accounts;
mod reconcile;
mod reliability;
