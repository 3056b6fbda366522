//! The integration suites, in one test binary so that `cargo test` runs them side by side
//! (cargo runs test binaries one after another) and links the crate once, not once per suite.
//!
//! Each module is a suite with its own private PostgreSQL cluster (see [`common`]); most of a
//! test's time is waiting on the service, the mock's latency or a rate window, so the suite
//! runs more tests at once than the machine has cores (`RUST_TEST_THREADS` in
//! `.cargo/config.toml`; `--test-threads` overrides it). One suite:
//! `cargo test --test suite reliability::`.
//!
//! `tests/tls.rs` stays a binary of its own: it makes a test CA this process's system trust
//! store (`SSL_CERT_FILE`), which must not leak into other suites.

mod common;

mod acceptance;
mod capture;
mod dashboard;
mod delivery;
mod delivery_edges;
mod demo;
mod deploy;
mod errors;
mod ha;
mod hostile;
mod http_surface;
mod marketplace_clients;
mod mock_marketplace;
mod ops;
mod queue;
mod stock;
mod wire;
