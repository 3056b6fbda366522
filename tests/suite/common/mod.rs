//! Test harness: one private PostgreSQL cluster per suite (started from the installed server
//! binaries, `wal_level=logical`), a fresh database per test, and helpers to run `stocksync`
//! pieces against it. Clusters are removed when the test process exits.
//!
//! A suite is a module of this test binary (`capture`, `reliability`, ...), named by the
//! innermost module in the test's name, which libtest gives the thread running it. Each suite
//! keeps its own cluster, as when every suite was a binary of its own: walsenders read only
//! their suite's WAL, and the slot and connection limits are per suite. Code running off a
//! test thread (a spawned task) gets the `shared` suite.
//!
//! A cluster is shared without a lock (its methods take `&self`), so a test that panics
//! cannot poison it for the others. Random workloads draw from [`seed`]: fixed per suite and
//! printed into the test's output, overridden with `STOCKSYNC_TEST_SEED`, so a red run can be
//! replayed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use stocksync::db::DbConfig;
use stocksync::localpg::{ClusterOptions, LocalCluster};
use tokio_postgres::Client;

pub const APP_SCHEMA: &str = include_str!("../../../sql/app_schema.sql");

static DB_COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The suite of the running test: the innermost module in its name (`reliability` for
/// `acceptance::reliability::large_transaction_converges_with_bounded_memory`).
pub fn suite() -> String {
    let thread = std::thread::current();
    match thread.name().and_then(|name| name.rsplit("::").nth(1)) {
        Some(suite) => suite.to_string(),
        None => "shared".to_string(),
    }
}

/// The cluster of the running test's suite, started on first use.
pub fn cluster() -> &'static LocalCluster {
    static CLUSTERS: Mutex<BTreeMap<String, &'static OnceLock<LocalCluster>>> =
        Mutex::new(BTreeMap::new());
    // The map lock is held only to find the suite's slot, never while a cluster starts
    // (a panic there must not block the other suites); `OnceLock` makes one start per suite.
    let slot: &'static OnceLock<LocalCluster> = {
        let mut clusters = CLUSTERS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        clusters
            .entry(suite())
            .or_insert_with(|| Box::leak(Box::new(OnceLock::new())))
    };
    slot.get_or_init(|| {
        let cluster = LocalCluster::start(ClusterOptions::default())
            .expect("start a private PostgreSQL cluster");
        cluster
            .remove_when_process_exits(std::process::id())
            .expect("cluster watchdog");
        cluster
    })
}

/// The seed of the running test's random workloads: `STOCKSYNC_TEST_SEED`, else a value fixed
/// per suite. Printed into the test's output (shown when it fails), so every run can be
/// replayed.
pub fn seed() -> u64 {
    let suite = suite();
    let seed = std::env::var("STOCKSYNC_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        // FNV-1a of the suite's name: fixed, and different per suite.
        .unwrap_or_else(|| {
            suite.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            })
        });
    println!("{suite}: test seed {seed} (replay with STOCKSYNC_TEST_SEED={seed})");
    seed
}

/// A new database with the application schema; returns its URL.
pub fn fresh_database(prefix: &str) -> String {
    let n = DB_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("{prefix}_{n}");
    let cluster = cluster();
    cluster
        .psql("postgres", &format!("CREATE DATABASE {name}"))
        .expect("create database");
    cluster
        .psql(&name, APP_SCHEMA)
        .expect("load application schema");
    cluster.url_for("postgres", &name)
}

pub async fn connect(url: &str) -> Client {
    DbConfig::from_url(url)
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

/// Runs `stocksync setup` steps through the library.
pub async fn setup(url: &str, slot: &str, publication: &str) {
    let client = connect(url).await;
    let steps = stocksync::ops::setup::plan(&client, slot, publication)
        .await
        .expect("plan");
    stocksync::ops::setup::apply(&client, &steps)
        .await
        .expect("apply");
}

/// Polls `check` until it returns true or `timeout` passes; panics with `what` on timeout.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_explained(timeout, what, check, || async { String::new() }).await
}

/// [`eventually`], and on timeout the panic also carries what `explain` reports (the state of
/// whatever was waited for, so a red run shows why).
pub async fn eventually_explained<F, Fut, E, EFut>(
    timeout: Duration,
    what: &str,
    mut check: F,
    explain: E,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
    E: FnOnce() -> EFut,
    EFut: std::future::Future<Output = String>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        if start.elapsed() > timeout {
            let explanation = explain().await;
            if explanation.is_empty() {
                panic!("timed out after {timeout:?} waiting for: {what}");
            }
            panic!("timed out after {timeout:?} waiting for: {what}: {explanation}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a process streams from `slot` now.
pub async fn slot_active(client: &tokio_postgres::Client, slot: &str) -> bool {
    client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active)",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0)
}

/// Waits until capture has durably captured everything committed so far: the slot's
/// confirmed position has reached the current WAL position. Capture confirms only what it has
/// committed (its checkpoint) or, idle, a keepalive's position; it persists such an idle
/// position as its checkpoint at the next keepalive, which a quiet server sends only every
/// half `wal_sender_timeout` (30 s here), so the checkpoint row is not the signal to wait on.
pub async fn capture_caught_up(client: &tokio_postgres::Client, slot: &str) {
    let target: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    // Where capture stands, for a red run: the checkpoint, the slot, its walsender, the sessions.
    let explain = || async {
        client
            .query_one(
                "SELECT format('checkpoint %s; slot %s; walsender %s; sessions: %s', \
                   (SELECT lsn FROM stock_sync.checkpoint WHERE slot_name = $1), \
                   (SELECT format('active %s confirmed %s restart %s', active, confirmed_flush_lsn, restart_lsn) \
                      FROM pg_replication_slots WHERE slot_name = $1), \
                   (SELECT format('%s sent %s', r.state, r.sent_lsn) FROM pg_stat_replication r \
                      JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $1), \
                   (SELECT string_agg(format('%s %s/%s [%s]', pid, wait_event_type, wait_event, left(query, 80)), '; ') \
                      FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()))",
                &[&slot],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or_else(|e| e.to_string())
    };
    eventually_explained(
        Duration::from_secs(30),
        &format!("capture to confirm the current WAL position {target}"),
        || async {
            client
                .query_one(
                    "SELECT coalesce((SELECT confirmed_flush_lsn FROM pg_replication_slots \
                       WHERE slot_name = $1) >= $2::text::pg_lsn, false)",
                    &[&slot, &target],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
        },
        explain,
    )
    .await;
}

/// The one `bigint` a statement returns (a `count(*)`).
pub async fn count(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> i64 {
    client.query_one(sql, params).await.unwrap().get(0)
}

pub fn uuid() -> uuid::Uuid {
    uuid::Uuid::new_v4()
}

/// A loopback address with a port free at the moment (bound to port 0, read, released): the
/// service does not report the address it bound, so tests choose it.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .unwrap()
}

/// Path of the built `stocksync` binary (cargo builds it for integration tests).
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_stocksync")
}

/// A Trendyol store the mock accepts (`ty-key`/`ty-secret`) and a Hepsiburada store whose key
/// it refuses (`wrong-secret`: the store pauses, its entries wait), both listing every
/// product of `products` (barcode = sku = name, sellable quantity). Returns the two store ids.
pub async fn trendyol_and_refused_hepsiburada(
    client: &Client,
    names: (&str, &str),
    sellers: (&str, &str),
    products: &[(&str, i32)],
) -> (uuid::Uuid, uuid::Uuid) {
    let (ty, hb) = (uuid(), uuid());
    client
        .execute(
            "INSERT INTO stores (id, name, type, is_active, send_stock, seller_id, api_key, api_secret) VALUES \
             ($1, $3, 'TRENDYOL', true, true, $5, 'ty-key', 'ty-secret'), \
             ($2, $4, 'HEPSIBURADA', true, true, $6, NULL, 'wrong-secret')",
            &[&ty, &hb, &names.0, &names.1, &sellers.0, &sellers.1],
        )
        .await
        .unwrap();
    for (code, sellable) in products {
        let id = uuid();
        client
            .execute(
                "INSERT INTO products (id, barcode, sku, name) VALUES ($1, $2, $2, $2)",
                &[&id, code],
            )
            .await
            .unwrap();
        for store in [ty, hb] {
            client
                .execute(
                    "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity) VALUES ($1, $2, $3, $4)",
                    &[&uuid(), &id, &store, sellable],
                )
                .await
                .unwrap();
        }
    }
    (ty, hb)
}

/// The mock marketplace for [`trendyol_and_refused_hepsiburada`]: it knows the Trendyol
/// store's key and expects another one from the Hepsiburada store.
pub async fn mock_refusing_hepsiburada(
    ty_seller: &str,
    hb_merchant: &str,
) -> stocksync::mock::MockMarketplace {
    use stocksync::mock::{MockAccount, MockConfig, MockMarketplace};
    MockMarketplace::start(
        MockConfig {
            accounts: vec![
                MockAccount::trendyol(ty_seller, "ty-key", "ty-secret"),
                MockAccount::hepsiburada(hb_merchant, "the-right-secret"),
            ],
            ..MockConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

pub mod oracle;
pub mod reference;
pub mod stack;
pub mod workload;
