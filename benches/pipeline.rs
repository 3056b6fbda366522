//! Benchmarks, one table: `cargo bench --bench pipeline`.
//!
//! Every figure is measured side by side with a baseline in the same run:
//! * capture: 100,000 single-row updates drained by `pg_recvlogical` (to /dev/null) from a
//!   fresh slot vs. stocksync (the release binary, `stocksync run`) until its checkpoint passes
//!   the same end LSN; once with a store of a type stocksync ignores (capture alone) and once
//!   with a Trendyol store whose changes dispatch pushes to the mock marketplace meanwhile;
//! * recompute: quantities of every listed pair of 250,000 products (20,000 sets of 2-5
//!   components) in 4 stores with `stock::compute_store`, vs. a naive per-item loop like the
//!   seed's `calculateSetStock` (one query per product, one per set item) over a sample,
//!   extrapolated;
//! * memory: peak resident memory of `stocksync run` while it captures one UPDATE of 400,000 rows
//!   (target < 64 MB), with the time to capture it;
//! * latency: one committed change to the mock marketplace showing it, with
//!   `flush_interval=0`, p50 and p99 over 100 changes spaced to stay within the default rate
//!   limit (target p99 < 250 ms), vs. the bare HTTP push of the same one-item body;
//! * reconcile: a full audit (`stocksync reconcile`, the release binary) of a Trendyol store
//!   of 250,000 listings in the mock, one per content (2,500 pages), against the floor the
//!   read budget allows (the rate window and reconciliation's per-minute share).
//!
//! Sizes can be reduced for a quick look: `STOCKSYNC_BENCH_SCALE=0.1 cargo bench --bench pipeline`;
//! `STOCKSYNC_BENCH_ONLY=capture,large` runs a subset.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stocksync::db::DbConfig;
use stocksync::localpg::{ClusterOptions, LocalCluster};
use tokio_postgres::Client;
use uuid::Uuid;

const APP_SCHEMA: &str = include_str!("../sql/app_schema.sql");

struct Row {
    workload: String,
    stocksync: String,
    baseline: String,
    ratio: String,
}

fn scale() -> f64 {
    std::env::var("STOCKSYNC_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would too: only run when benching.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rows = runtime.block_on(run_all());
    let machine = machine_description();
    println!(
        "\nstocksync benchmarks — {} — {machine}\n",
        chrono::Utc::now().format("%Y-%m-%d")
    );
    println!("| workload | stocksync | baseline | ratio |");
    println!("| --- | --- | --- | --- |");
    for r in rows {
        println!(
            "| {} | {} | {} | {} |",
            r.workload, r.stocksync, r.baseline, r.ratio
        );
    }
}

fn machine_description() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} cores, {model}")
}

async fn run_all() -> Vec<Row> {
    let cluster = LocalCluster::start(ClusterOptions {
        settings: vec![
            ("max_wal_size".into(), "4GB".into()),
            ("logical_decoding_work_mem".into(), "64MB".into()),
        ],
        ..ClusterOptions::default()
    })
    .expect("start PostgreSQL");
    cluster
        .remove_when_process_exits(std::process::id())
        .expect("watchdog");
    // STOCKSYNC_BENCH_ONLY=capture,latency runs a subset (names: capture, spread, large,
    // large_v1, initial, recompute, latency, reconcile).
    let only = std::env::var("STOCKSYNC_BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|o| o.trim() == name);
    let mut rows = Vec::new();
    if wanted("capture") {
        rows.push(capture_bench(&cluster, Shape::Repeated).await);
        rows.push(capture_bench(&cluster, Shape::RepeatedLive).await);
    }
    if wanted("spread") {
        rows.push(capture_bench(&cluster, Shape::Spread).await);
    }
    if wanted("large") {
        rows.push(large_transaction_bench(&cluster, true).await);
    }
    if wanted("large_v1") {
        rows.push(large_transaction_bench(&cluster, false).await);
    }
    if wanted("initial") {
        rows.push(initial_sync_bench(&cluster).await);
    }
    if wanted("recompute") {
        rows.push(recompute_bench(&cluster).await);
    }
    if wanted("latency") {
        rows.push(latency_bench(&cluster).await);
    }
    if wanted("reconcile") {
        rows.push(reconcile_bench(&cluster).await);
    }
    rows
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// End-to-end latency: UPDATE committed -> mock marketplace shows the quantity.
async fn latency_bench(cluster: &LocalCluster) -> Row {
    use stocksync::marketplace::{
        prepare, ClientSettings, MarketplaceClient, Provider, StockItem, StoreCredentials,
    };
    use stocksync::mock::{MockAccount, MockConfig, MockMarketplace};
    let changes = ((100.0 * scale()) as usize).max(10);
    let name = "bench_latency";
    let (url, client) = empty_database(cluster, name).await;
    let store = Uuid::new_v4();
    client
        .batch_execute(&format!(
            "INSERT INTO stores (id, name, type, is_active, send_stock, seller_id, api_key, api_secret)
               VALUES ('{store}', 'bench', 'TRENDYOL', true, true, '4001', 'k', 's');
             INSERT INTO products (id, barcode, sku, name, product_type)
               SELECT gen_random_uuid(), 'L' || g, 'L' || g, 'p', 'SIMPLE' FROM generate_series(1, 200) g;
             INSERT INTO product_stores (id, product_id, store_id, sellable_quantity)
               SELECT gen_random_uuid(), id, '{store}', 5 FROM products;"
        ))
        .await
        .unwrap();
    setup_slot(&client, name).await;
    let mock = MockMarketplace::start(
        MockConfig {
            accounts: vec![MockAccount::trendyol("4001", "k", "s")],
            ..MockConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let mut child = spawn_stocksync(
        &url,
        name,
        &[
            ("STOCKSYNC_TRENDYOL_URL", mock.base_url()),
            ("STOCKSYNC_FLUSH_INTERVAL", "0s".into()),
        ],
    );
    // The first run sends every listing; wait for it, and for the window to clear.
    while mock.quantity("4001", "L200") != Some(5) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("stocksync exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(11)).await;
    let mut latencies = Vec::with_capacity(changes);
    for i in 0..changes {
        let code = format!("L{}", i % 200 + 1);
        let quantity = 1000 + i as i32;
        let started = Instant::now();
        client
            .execute(
                "UPDATE product_stores SET sellable_quantity = $1 WHERE product_id = (SELECT id FROM products WHERE barcode = $2)",
                &[&quantity, &code],
            )
            .await
            .unwrap();
        while mock.quantity("4001", &code) != Some(i64::from(quantity)) {
            if started.elapsed() > Duration::from_secs(30) {
                panic!("change {i} did not arrive in 30 s");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        latencies.push(started.elapsed());
        // 50 requests per 10 s is the default limit: stay under it.
        tokio::time::sleep(Duration::from_millis(220)).await;
    }
    stop(&mut child);
    // Baseline: the same one-item push straight to the mock.
    let http = MarketplaceClient::new(ClientSettings {
        trendyol_url: mock.base_url(),
        hepsiburada_url: mock.base_url(),
        timeout: Duration::from_secs(10),
    });
    let creds = StoreCredentials {
        provider: Provider::Trendyol,
        seller_id: "4001".into(),
        api_key: Some("k".into()),
        api_secret: "s".into(),
        user_agent: "4001 - SelfIntegration".into(),
    };
    let mut direct = Vec::with_capacity(changes);
    for i in 0..changes {
        let request = prepare(
            Provider::Trendyol,
            &[StockItem {
                key: format!("L{}", i % 200 + 1),
                quantity: 5000 + i as i32,
            }],
        );
        let started = Instant::now();
        let _ = http.push(&creds, &request).await;
        direct.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(220)).await;
    }
    mock.shutdown().await;
    latencies.sort();
    direct.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let (b50, b99) = (percentile(&direct, 0.5), percentile(&direct, 0.99));
    Row {
        workload: format!("one change to the marketplace, flush_interval=0 ({changes} changes; target p99 < 250 ms)"),
        stocksync: format!("p50 {} / p99 {}", ms(p50), ms(p99)),
        baseline: format!("bare HTTP push p50 {} / p99 {}", ms(b50), ms(b99)),
        ratio: format!("{:.1}x / {:.1}x", p50.as_secs_f64() / b50.as_secs_f64(), p99.as_secs_f64() / b99.as_secs_f64()),
    }
}

/// A new database with the application schema: its URL and a connection.
async fn empty_database(cluster: &LocalCluster, name: &str) -> (String, Client) {
    cluster
        .psql("postgres", &format!("CREATE DATABASE {name}"))
        .unwrap();
    cluster.psql(name, APP_SCHEMA).unwrap();
    let url = cluster.url_for("postgres", name);
    let client = DbConfig::from_url(&url).unwrap().connect().await.unwrap();
    (url, client)
}

/// A database with `products` listed products in one store, set up with slot = publication =
/// `name` (slot names are cluster-wide).
async fn database(cluster: &LocalCluster, name: &str, products: usize) -> (String, Client, Uuid) {
    database_with_store(cluster, name, products, false).await
}

/// Seller id and credentials of the Trendyol store of [`database_with_store`].
const BENCH_SELLER: &str = "4001";

/// `products` products listed in one store: by default of a type stocksync ignores (dispatch
/// closes its entries without requests, so the figures are capture's); with `live`, a Trendyol
/// store (seller [`BENCH_SELLER`], key `k`, secret `s`) that dispatch really pushes to.
async fn database_with_store(
    cluster: &LocalCluster,
    name: &str,
    products: usize,
    live: bool,
) -> (String, Client, Uuid) {
    let (url, client) = empty_database(cluster, name).await;
    let store = Uuid::new_v4();
    let store_type = if live { "TRENDYOL" } else { "OTHER" };
    client
        .execute(
            "INSERT INTO stores (id, name, type, is_active, send_stock, seller_id, api_key, api_secret)
             VALUES ($1, 'bench', $2, true, true, $3, 'k', 's')",
            &[&store, &store_type, &BENCH_SELLER],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO products (id, barcode, name) SELECT gen_random_uuid(), 'B' || g, 'p' FROM generate_series(1, $1::int) g",
            &[&(products as i32)],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity) SELECT gen_random_uuid(), id, $1, 100 FROM products",
            &[&store],
        )
        .await
        .unwrap();
    setup_slot(&client, name).await;
    (url, client, store)
}

/// `stocksync setup` with slot = publication = `name` (slot names are cluster-wide).
async fn setup_slot(client: &Client, name: &str) {
    let steps = stocksync::ops::setup::plan(client, name, name)
        .await
        .unwrap();
    stocksync::ops::setup::apply(client, &steps).await.unwrap();
}

/// `stocksync run` (the release binary) on `slot`, with `extra` settings.
fn spawn_stocksync(url: &str, slot: &str, extra: &[(&str, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_stocksync"))
        .arg("run")
        .env("DATABASE_URL", url)
        .env("STOCKSYNC_SLOT", slot)
        .env("STOCKSYNC_PUBLICATION", slot)
        .env("STOCKSYNC_HTTP_ADDR", "127.0.0.1:0")
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .env(
            "STOCKSYNC_LOG",
            std::env::var("STOCKSYNC_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn stocksync")
}

/// Whether the checkpoint passed `target`; panics when the service died.
async fn checkpoint_reached(client: &Client, child: &mut Child, target: &str) -> bool {
    if let Ok(Some(status)) = child.try_wait() {
        panic!("stocksync exited early: {status}");
    }
    client
        .query_one(
            "SELECT coalesce((SELECT max(lsn) FROM stock_sync.checkpoint) >= $1::text::pg_lsn, false)",
            &[&target],
        )
        .await
        .unwrap()
        .get(0)
}

async fn current_lsn(client: &Client) -> String {
    client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// Runs stocksync (with `extra` settings) until its first run is captured and the slot has
/// passed the first run's own transaction (the snapshot of every listed pair, which the
/// server decodes too), so the measured run starts from the workload.
async fn prime_with(url: &str, slot: &str, client: &Client, extra: &[(&str, String)]) {
    let mut child = spawn_stocksync(url, slot, extra);
    let target = current_lsn(client).await;
    while !checkpoint_reached(client, &mut child, &target).await {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after_first_run = current_lsn(client).await;
    // The slot's restart LSN must pass the first run too, or the measured run's walsender
    // decodes it again (and, being below the confirmed position, spills it to disk): a
    // checkpoint logs the running transactions, from which the server moves the restart LSN
    // once the slot is confirmed past them.
    for _ in 0..50 {
        client.batch_execute("CHECKPOINT").await.unwrap();
        let target = current_lsn(client).await;
        while !slot_confirmed(client, &mut child, slot, &target).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let restarted_past: bool = client
            .query_one(
                "SELECT restart_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot, &after_first_run],
            )
            .await
            .unwrap()
            .get(0);
        if restarted_past {
            break;
        }
    }
    stop(&mut child);
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The shape of a capture workload.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// 100,000 single-row transactions over 10,000 pairs (each changed ten times: most queue
    /// writes update a pending entry), store of an ignored type.
    Repeated,
    /// The same with a Trendyol store that dispatch pushes to the mock meanwhile.
    RepeatedLive,
    /// 100,000 single-row transactions over 100,000 pairs (each changed once).
    Spread,
}

/// Whether the slot's `confirmed_flush_lsn` reached `target`: what a DBA sees (the checkpoint
/// commits first, the standby status update follows). Panics when the service died.
async fn slot_confirmed(client: &Client, child: &mut Child, slot: &str, target: &str) -> bool {
    if let Ok(Some(status)) = child.try_wait() {
        panic!("stocksync exited early: {status}");
    }
    client
        .query_one(
            "SELECT coalesce((SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1) >= $2::text::pg_lsn, false)",
            &[&slot, &target],
        )
        .await
        .unwrap()
        .get(0)
}

/// The slot's `spill_bytes` (bytes of decoded changes the server wrote to disk).
async fn spill_bytes(client: &Client, slot: &str) -> i64 {
    client
        .query_opt(
            "SELECT spill_bytes FROM pg_stat_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
        .unwrap_or(0)
}

/// The baseline: `pg_recvlogical` drains the WAL up to `end` (to /dev/null) from a fresh slot
/// `bench_recvlogical`, created before the workload by [`create_baseline_slot`], with the
/// protocol options stocksync uses; the slot is dropped after. Returns the time and the
/// slot's spill bytes.
async fn recvlogical(
    cluster: &LocalCluster,
    client: &Client,
    url: &str,
    publication: &str,
    end: &str,
    streaming: bool,
) -> (Duration, i64) {
    let mut args = vec![
        "-d".to_string(),
        url.to_string(),
        "--slot".into(),
        "bench_recvlogical".into(),
        "--start".into(),
        "-o".into(),
        format!("publication_names={publication}"),
        "-E".into(),
        end.to_string(),
        "-f".into(),
        "/dev/null".into(),
        "-n".into(),
    ];
    if streaming {
        args.extend([
            "-o".into(),
            "proto_version=2".into(),
            "-o".into(),
            "streaming=on".into(),
        ]);
    } else {
        args.extend(["-o".into(), "proto_version=1".into()]);
    }
    let started = Instant::now();
    let status = Command::new(cluster.client_tool("pg_recvlogical"))
        .args(&args)
        .status()
        .expect("run pg_recvlogical");
    let elapsed = started.elapsed();
    assert!(status.success(), "pg_recvlogical failed");
    let spilled = spill_bytes(client, "bench_recvlogical").await;
    client
        .execute("SELECT pg_drop_replication_slot('bench_recvlogical')", &[])
        .await
        .unwrap();
    (elapsed, spilled)
}

async fn create_baseline_slot(client: &Client) {
    client
        .execute(
            "SELECT pg_create_logical_replication_slot('bench_recvlogical', 'pgoutput')",
            &[],
        )
        .await
        .unwrap();
}

/// Capture of 100,000 single-row transactions ([`Shape`]), timed from the start of `stocksync
/// run` until the slot is confirmed past the end LSN, against `pg_recvlogical` draining the
/// same WAL. With a live store, dispatch (claims, quantities, requests) shares the two cores
/// with capture.
async fn capture_bench(cluster: &LocalCluster, shape: Shape) -> Row {
    use stocksync::mock::{MockAccount, MockConfig, MockMarketplace};
    let updates = (100_000.0 * scale()) as usize;
    let (slot, pairs, live_store) = match shape {
        Shape::Repeated => ("bench_capture", updates / 10, false),
        Shape::RepeatedLive => ("bench_capture_live", updates / 10, true),
        Shape::Spread => ("bench_spread", updates, false),
    };
    let (url, client, _store) = database_with_store(cluster, slot, pairs, live_store).await;
    let mock = MockMarketplace::start(
        MockConfig {
            accounts: vec![MockAccount::trendyol(BENCH_SELLER, "k", "s")],
            ..MockConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let marketplace = [("STOCKSYNC_TRENDYOL_URL", mock.base_url())];
    prime_with(&url, slot, &client, &marketplace).await;
    create_baseline_slot(&client).await;
    // The workload: single-row autocommit updates, pipelined on a few connections; the
    // spread shape changes every pair once, in a random order.
    let mut ids: Vec<Uuid> = client
        .query("SELECT id FROM product_stores ORDER BY random()", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    if shape != Shape::Spread {
        ids.sort();
    }
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..4 {
        let url = url.clone();
        let ids = ids.clone();
        workers.push(tokio::spawn(async move {
            let client = DbConfig::from_url(&url).unwrap().connect().await.unwrap();
            let statement = client
                .prepare("UPDATE product_stores SET sellable_quantity = sellable_quantity + 1 WHERE id = $1")
                .await
                .unwrap();
            let mut pending = futures_util::stream::FuturesUnordered::new();
            use futures_util::StreamExt;
            let (client, statement) = (&client, &statement);
            for i in (w..updates).step_by(4) {
                let id = ids[i % ids.len()];
                pending.push(async move { client.execute(statement, &[&id]).await });
                if pending.len() >= 64 {
                    pending.next().await.unwrap().unwrap();
                }
            }
            while let Some(r) = pending.next().await {
                r.unwrap();
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    eprintln!(
        "workload: {updates} transactions over {pairs} pairs committed in {:?}",
        started.elapsed()
    );
    let end = current_lsn(&client).await;
    let (baseline, _) = recvlogical(cluster, &client, &url, slot, &end, true).await;

    let requests_before = mock.requests().len();
    let started = Instant::now();
    let mut child = spawn_stocksync(&url, slot, &marketplace);
    while !slot_confirmed(&client, &mut child, slot, &end).await {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ours = started.elapsed();
    stop(&mut child);
    let requests = mock.requests().len() - requests_before;
    mock.shutdown().await;
    let captured: i64 = client
        .query_one("SELECT count(*) FROM stock_sync.captured_transactions", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        captured as usize >= updates,
        "captured {captured} of {updates}"
    );
    let workload = match shape {
        Shape::Repeated => format!("capture {updates} single-row update transactions over {pairs} pairs (each changed ten times), store of an ignored type"),
        Shape::RepeatedLive => format!("the same with a Trendyol store: dispatch pushes to the mock meanwhile ({requests} requests)"),
        Shape::Spread => format!("capture {updates} single-row update transactions over {pairs} pairs (each changed once), store of an ignored type"),
    };
    Row {
        workload: format!("{workload}; from process start until the slot is confirmed past the end LSN (target 1.3x, goal 1.1x)"),
        stocksync: format!("{:.2} s", ours.as_secs_f64()),
        baseline: format!("{:.2} s (pg_recvlogical to /dev/null)", baseline.as_secs_f64()),
        ratio: format!("{:.2}x", ours.as_secs_f64() / baseline.as_secs_f64()),
    }
}

/// One UPDATE of 400,000 rows (a nightly ERP import): time from process start until the slot
/// is confirmed past it, peak RSS, and the server's spill bytes for stocksync's slot, with
/// `streaming` on or off, against `pg_recvlogical` with the same protocol options.
async fn large_transaction_bench(cluster: &LocalCluster, streaming: bool) -> Row {
    let rows = (400_000.0 * scale()) as usize;
    let slot = if streaming {
        "bench_large"
    } else {
        "bench_large_v1"
    };
    let (url, client, _store) = database(cluster, slot, rows).await;
    let setting = [(
        "STOCKSYNC_STREAMING",
        if streaming { "on" } else { "off" }.to_string(),
    )];
    prime_with(&url, slot, &client, &setting).await;
    create_baseline_slot(&client).await;
    client
        .execute(
            "UPDATE product_stores SET sellable_quantity = sellable_quantity + 1",
            &[],
        )
        .await
        .unwrap();
    let end = current_lsn(&client).await;
    let (baseline, baseline_spill) =
        recvlogical(cluster, &client, &url, slot, &end, streaming).await;

    let spilled_before = spill_bytes(&client, slot).await;
    let started = Instant::now();
    let mut child = spawn_stocksync(&url, slot, &setting);
    let pid = child.id();
    let mut peak = 0;
    while !slot_confirmed(&client, &mut child, slot, &end).await {
        peak = peak.max(peak_rss_kb(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ours = started.elapsed();
    peak = peak.max(peak_rss_kb(pid).unwrap_or(0));
    stop(&mut child);
    let spilled = spill_bytes(&client, slot).await - spilled_before;
    let pending: i64 = client
        .query_one(
            "SELECT count(*) FROM stock_sync.queue WHERE commit_lsn IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        pending as usize >= rows,
        "{pending} of {rows} pairs enqueued"
    );
    let mode = if streaming {
        "streaming on (target 1.5x, goal 1.0x; peak RSS < 64 MB; no spill)"
    } else {
        "STOCKSYNC_STREAMING=off (protocol 1)"
    };
    Row {
        workload: format!("one UPDATE of {rows} rows, {mode}: until the slot is confirmed past it"),
        stocksync: format!(
            "{:.2} s, {:.1} MB peak RSS, {} MB spilled by the server",
            ours.as_secs_f64(),
            peak as f64 / 1024.0,
            spilled / 1_000_000
        ),
        baseline: format!(
            "{:.2} s (pg_recvlogical, {} MB spilled)",
            baseline.as_secs_f64(),
            baseline_spill / 1_000_000
        ),
        ratio: format!("{:.2}x", ours.as_secs_f64() / baseline.as_secs_f64()),
    }
}

/// Initial sync: `listings` products listed in each of two Trendyol stores, an empty mock
/// marketplace with its default limits, stocksync with its defaults: from process start until
/// the mock shows every listing's quantity. The floor is what the rate limit allows: each
/// store needs `listings / 1000` pushes, `rate_limit_requests` per `rate_limit_window`
/// (sliding), the stores in parallel.
async fn initial_sync_bench(cluster: &LocalCluster) -> Row {
    use stocksync::mock::{MockAccount, MockConfig, MockMarketplace};
    let listings = (250_000.0 * scale()) as i32;
    let sellers = ["4101", "4102"];
    let name = "bench_initial";
    let (url, client) = empty_database(cluster, name).await;
    client
        .batch_execute(&format!(
            "INSERT INTO stores (id, name, type, is_active, send_stock, seller_id, api_key, api_secret)
               SELECT gen_random_uuid(), 'store ' || s, 'TRENDYOL', true, true, s, 'k', 's'
               FROM unnest(ARRAY['{}', '{}']) s;
             INSERT INTO products (id, barcode, sku, name, product_type)
               SELECT gen_random_uuid(), 'I' || g, 'I' || g, 'p', 'SIMPLE' FROM generate_series(1, {listings}) g;
             INSERT INTO product_stores (id, product_id, store_id, sellable_quantity)
               SELECT gen_random_uuid(), p.id, s.id, 1 + (hashtext(p.barcode) & 255) FROM products p CROSS JOIN stores s;
             ANALYZE;",
            sellers[0], sellers[1]
        ))
        .await
        .unwrap();
    setup_slot(&client, name).await;
    let mock = MockMarketplace::start(
        MockConfig {
            accounts: sellers
                .iter()
                .map(|s| MockAccount::trendyol(*s, "k", "s"))
                .collect(),
            ..MockConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let mut child = spawn_stocksync(&url, name, &[("STOCKSYNC_TRENDYOL_URL", mock.base_url())]);
    // Accepted items per seller from the request log (cheap), then the catalogues once.
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("stocksync exited early: {status}");
        }
        let requests = mock.requests();
        let accepted = |seller: &str| {
            requests
                .iter()
                .filter(|r| {
                    r.seller_id.as_deref() == Some(seller)
                        && r.endpoint.as_deref() == Some("push")
                        && r.status == 200
                })
                .map(|r| r.item_count - r.unchanged_items)
                .sum::<usize>()
        };
        if sellers.iter().all(|s| accepted(s) >= listings as usize) {
            break;
        }
        if started.elapsed() > Duration::from_secs(900) {
            panic!("not converged after 900 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ours = started.elapsed();
    stop(&mut child);
    let state = mock.state();
    for seller in sellers {
        let shown = state
            .accounts
            .iter()
            .find(|a| a.seller_id == seller)
            .map_or(0, |a| a.stock.len());
        assert_eq!(
            shown, listings as usize,
            "seller {seller} shows {shown} listings"
        );
    }
    let requests = mock.requests();
    let pushes = requests
        .iter()
        .filter(|r| r.endpoint.as_deref() == Some("push"))
        .count();
    // Where the time goes: the gaps between one store's pushes (the limit allows 0.2 s on
    // average, 50 at once).
    for seller in sellers {
        let times: Vec<chrono::DateTime<chrono::FixedOffset>> = requests
            .iter()
            .filter(|r| {
                r.seller_id.as_deref() == Some(seller) && r.endpoint.as_deref() == Some("push")
            })
            .map(|r| chrono::DateTime::parse_from_rfc3339(&r.time).unwrap())
            .collect();
        let mut gaps: Vec<i64> = times
            .windows(2)
            .map(|w| (w[1] - w[0]).num_milliseconds())
            .collect();
        gaps.sort_unstable();
        if !gaps.is_empty() {
            eprintln!(
                "seller {seller}: {} pushes, the first {:.1} s after start, the last {:.1} s after start; gaps p50 {} ms, p90 {} ms, max {} ms",
                times.len(),
                (times[0].with_timezone(&chrono::Utc) - started_at).as_seconds_f64(),
                (times[times.len() - 1].with_timezone(&chrono::Utc) - started_at).as_seconds_f64(),
                gaps[gaps.len() / 2],
                gaps[gaps.len() * 9 / 10],
                gaps[gaps.len() - 1]
            );
        }
    }
    mock.shutdown().await;
    // Defaults: 1000 items per push, 50 requests per 10 s.
    let per_store = (listings as usize).div_ceil(1000);
    let windows = per_store.div_ceil(50).saturating_sub(1);
    let floor = Duration::from_secs(10 * windows as u64);
    Row {
        workload: format!(
            "initial sync of {listings} listings in each of two Trendyol stores to an empty mock marketplace (default limits), from process start until every listing is shown (target 1.2x of the floor)"
        ),
        stocksync: format!("{:.1} s ({pushes} pushes)", ours.as_secs_f64()),
        baseline: format!(
            "floor {:.1} s ({per_store} pushes per store at 50 per 10 s: the last 50 leave {windows} windows after the first)",
            floor.as_secs_f64()
        ),
        ratio: format!("{:.2}x", ours.as_secs_f64() / floor.as_secs_f64().max(1.0)),
    }
}

/// Per-item loop of the seed plan: product row, then its set items and one row per
/// component, or its own row. Returns the quantity (unclamped).
async fn naive_quantity(client: &Client, product: Uuid, store: Uuid) -> i64 {
    let kind: String = client
        .query_one(
            "SELECT product_type FROM products WHERE id = $1",
            &[&product],
        )
        .await
        .unwrap()
        .get(0);
    if kind != "SET" {
        return client
            .query_opt("SELECT sellable_quantity FROM product_stores WHERE product_id = $1 AND store_id = $2", &[&product, &store])
            .await
            .unwrap()
            .map(|r| i64::from(r.get::<_, i32>(0)).max(0))
            .unwrap_or(0);
    }
    let items = client
        .query("SELECT component_product_id, quantity FROM product_set_items WHERE set_product_id = $1", &[&product])
        .await
        .unwrap();
    let mut min = i64::MAX;
    for item in &items {
        let component: Uuid = item.get(0);
        let quantity: i32 = item.get(1);
        let available = client
            .query_opt("SELECT sellable_quantity FROM product_stores WHERE product_id = $1 AND store_id = $2", &[&component, &store])
            .await
            .unwrap()
            .map(|r| i64::from(r.get::<_, i32>(0)).max(0))
            .unwrap_or(0);
        min = min.min(available / i64::from(quantity.max(1)));
    }
    if items.is_empty() {
        0
    } else {
        min
    }
}

async fn recompute_bench(cluster: &LocalCluster) -> Row {
    let products = (250_000.0 * scale()) as i32;
    let sets = (20_000.0 * scale()) as i32;
    let (_url, client) = empty_database(cluster, "bench_recompute").await;
    client
        .batch_execute(&format!(
            "INSERT INTO stores (id, name, type) SELECT gen_random_uuid(), 'store ' || g, 'TRENDYOL' FROM generate_series(1, 4) g;
             INSERT INTO products (id, barcode, name, product_type)
               SELECT gen_random_uuid(), 'B' || g, 'p' || g, CASE WHEN g <= {sets} THEN 'SET' ELSE 'SIMPLE' END
               FROM generate_series(1, {products}) g;
             CREATE TEMP TABLE numbered AS SELECT id, row_number() OVER (ORDER BY barcode) AS n, product_type FROM products;
             INSERT INTO product_set_items (id, set_product_id, component_product_id, quantity)
               SELECT gen_random_uuid(), s.id, c.id, 1 + (k % 3)
               FROM numbered s
               CROSS JOIN LATERAL generate_series(1, 2 + (s.n % 4)::int) k
               JOIN numbered c ON c.n = {sets} + 1 + ((s.n * 7919 + k * 104729) % ({products} - {sets}))
               WHERE s.product_type = 'SET';
             INSERT INTO product_stores (id, product_id, store_id, sellable_quantity)
               SELECT gen_random_uuid(), p.id, s.id, (random() * 200)::int - 5 FROM products p CROSS JOIN stores s;
             ANALYZE;"
        ))
        .await
        .unwrap();
    let stores: Vec<Uuid> = client
        .query("SELECT id FROM stores", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let rules = stocksync::stock::QuantityRules::default();
    let started = Instant::now();
    let mut pairs = 0usize;
    for store in &stores {
        pairs += stocksync::stock::compute_store(&client, *store, &rules)
            .await
            .unwrap()
            .len();
    }
    let ours = started.elapsed();

    // Naive loop over a sample of pairs (sets over-represented as in the catalogue), extrapolated.
    let sample: Vec<(Uuid, Uuid)> = client
        .query(
            "SELECT product_id, store_id FROM product_stores TABLESAMPLE SYSTEM (1) LIMIT 2000",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let started = Instant::now();
    for (product, store) in &sample {
        naive_quantity(&client, *product, *store).await;
    }
    let naive_sample = started.elapsed();
    let naive = naive_sample.as_secs_f64() * pairs as f64 / sample.len().max(1) as f64;
    Row {
        workload: format!("full recompute of {pairs} listed pairs ({products} products, {sets} sets of 2-5 components, 4 stores)"),
        stocksync: format!("{:.2} s (stock::compute_store, one statement per store)", ours.as_secs_f64()),
        baseline: format!("{naive:.1} s (seed-style per-item loop: {} pairs in {:.2} s, extrapolated)", sample.len(), naive_sample.as_secs_f64()),
        ratio: format!("{:.0}x faster", naive / ours.as_secs_f64()),
    }
}

/// The shortest time `requests` reads can take under limits of (at most `max` per `window`):
/// the first `max` at once, each further `max` one window later.
fn read_floor(requests: u64, limits: &[(u64, Duration)]) -> Duration {
    limits
        .iter()
        .map(|(max, window)| window.mul_f64(requests.div_ceil(*max).saturating_sub(1) as f64))
        .max()
        .unwrap_or_default()
}

/// A full audit of a Trendyol store whose listings all agree: requests and wall time of
/// `stocksync reconcile` against the floor of its read budget (defaults: 50 reads per 10 s
/// per endpoint, 50% of the 1000/min read group).
async fn reconcile_bench(cluster: &LocalCluster) -> Row {
    use stocksync::mock::{
        Marketplace, MockAccount, MockConfig, MockMarketplace, PanelEdit, ReadsConfig,
    };
    let listings = ((250_000.0 * scale()) as usize).max(1000);
    let name = "bench_reconcile";
    let (url, client, store) = database_with_store(cluster, name, listings, true).await;
    client.batch_execute("ANALYZE").await.unwrap();
    let mock = MockMarketplace::start(
        MockConfig {
            accounts: vec![MockAccount::trendyol(BENCH_SELLER, "k", "s")],
            reads: ReadsConfig {
                trendyol_max_variants: 1,
                ..ReadsConfig::default()
            },
            ..MockConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    // What the marketplace shows: what the database implies (100 each).
    let http = reqwest::Client::new();
    let edits: Vec<PanelEdit> = (1..=listings)
        .map(|i| {
            PanelEdit::new(Marketplace::Trendyol, BENCH_SELLER, &format!("B{i}"))
                .quantity(Some(100))
        })
        .collect();
    for chunk in edits.chunks(5_000) {
        let resp = http
            .post(format!("{}/_mock/edit", mock.base_url()))
            .json(chunk)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }
    let started = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_stocksync"))
        .args(["reconcile", "--json", "--store", &store.to_string()])
        .env("DATABASE_URL", &url)
        .env("STOCKSYNC_SLOT", name)
        .env("STOCKSYNC_PUBLICATION", name)
        .env("STOCKSYNC_TRENDYOL_URL", mock.base_url())
        .env("STOCKSYNC_LOG", "warn")
        .output()
        .await
        .unwrap();
    let wall = started.elapsed();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let checked = report["stores"][0]["checked"].as_u64().unwrap_or(0);
    assert_eq!(checked as usize, listings, "{report}");
    let requests = mock
        .requests()
        .iter()
        .filter(|r| r.endpoint.as_deref() == Some("read"))
        .count() as u64;
    let floor = read_floor(
        requests,
        &[
            (50, Duration::from_secs(10)),
            (500, Duration::from_secs(60)),
        ],
    );
    mock.shutdown().await;
    Row {
        workload: format!("full reconciliation audit of {listings} listings (Trendyol, 100 contents of one variant per page), all agreeing"),
        stocksync: format!("{requests} requests, {:.1} s", wall.as_secs_f64()),
        baseline: format!("{:.1} s: the floor of the read budget for {requests} requests (50 per 10 s, 500 per minute)", floor.as_secs_f64()),
        ratio: format!("{:.2}x the floor", wall.as_secs_f64() / floor.as_secs_f64().max(0.001)),
    }
}
