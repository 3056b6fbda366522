//! Change capture against a real PostgreSQL: which pairs are enqueued, first run, skipping
//! what was captured, schema drift, and the kill -9 loop.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use stocksync::capture::{self, CaptureHealth, CaptureSettings};
use stocksync::db::DbConfig;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), capture::CaptureError>>,
}

impl Running {
    async fn stop(self) -> Result<(), capture::CaptureError> {
        self.shutdown.cancel();
        self.task.await.expect("capture task")
    }
}

fn start_capture(url: &str, slot: &str) -> Running {
    let shutdown = CancellationToken::new();
    let settings = CaptureSettings {
        slot: slot.into(),
        publication: slot.into(),
        status_interval: Duration::from_secs(1),
        ..CaptureSettings::default()
    };
    let db = DbConfig::from_url(url).unwrap();
    let task = tokio::spawn(capture::run(
        db,
        settings,
        shutdown.clone(),
        Arc::new(CaptureHealth::default()),
    ));
    Running { shutdown, task }
}

/// The seed plan's example catalogue in one store, plus a nested set, all listed.
struct Catalogue {
    store: Uuid,
    other_store: Uuid,
    mont: Uuid,
    eldiven: Uuid,
    atki: Uuid,
    kis_paketi: Uuid,
    mega_paket: Uuid,
    unrelated: Uuid,
}

async fn load_catalogue(client: &Client) -> Catalogue {
    let c = Catalogue {
        store: uuid(),
        other_store: uuid(),
        mont: uuid(),
        eldiven: uuid(),
        atki: uuid(),
        kis_paketi: uuid(),
        mega_paket: uuid(),
        unrelated: uuid(),
    };
    client
        .execute(
            "INSERT INTO stores (id, name, type, seller_id, api_key, api_secret) VALUES \
             ($1, 'Trendyol A', 'TRENDYOL', '1001', 'k', 's'), ($2, 'Other', 'TRENDYOL', '1002', 'k', 's')",
            &[&c.store, &c.other_store],
        )
        .await
        .unwrap();
    for (id, barcode, name, kind) in [
        (c.mont, "MONT-1", "Mont", "SIMPLE"),
        (c.eldiven, "ELD-1", "Eldiven", "SIMPLE"),
        (c.atki, "ATK-1", "Atkı", "SIMPLE"),
        (c.kis_paketi, "SET-001", "Kış Paketi", "SET"),
        (c.mega_paket, "SET-002", "Mega Paket", "SET"),
        (c.unrelated, "UNR-1", "Şemsiye", "SIMPLE"),
    ] {
        client
            .execute(
                "INSERT INTO products (id, barcode, sku, name, product_type) VALUES ($1, $2, $2, $3, $4)",
                &[&id, &barcode, &name, &kind],
            )
            .await
            .unwrap();
    }
    for (set, component, quantity) in [
        (c.kis_paketi, c.mont, 1i32),
        (c.kis_paketi, c.eldiven, 2),
        (c.kis_paketi, c.atki, 1),
        (c.mega_paket, c.kis_paketi, 2),
    ] {
        client
            .execute(
                "INSERT INTO product_set_items (id, set_product_id, component_product_id, quantity) VALUES ($1, $2, $3, $4)",
                &[&uuid(), &set, &component, &quantity],
            )
            .await
            .unwrap();
    }
    for (product, sellable) in [
        (c.mont, 50i32),
        (c.eldiven, 30),
        (c.atki, 40),
        (c.kis_paketi, 0),
        (c.mega_paket, 0),
        (c.unrelated, 7),
    ] {
        client
            .execute(
                "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity, committed_quantity) VALUES ($1, $2, $3, $4, 0)",
                &[&uuid(), &product, &c.store, &sellable],
            )
            .await
            .unwrap();
    }
    // Eldiven is also sold in the other store, where the sets are not listed.
    client
        .execute(
            "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity, committed_quantity) VALUES ($1, $2, $3, 5, 0)",
            &[&uuid(), &c.eldiven, &c.other_store],
        )
        .await
        .unwrap();
    c
}

/// Pending entries as {(product, store) -> reason}.
async fn pending(client: &Client) -> BTreeMap<(Uuid, Uuid), String> {
    client
        .query(
            "SELECT product_id, store_id, reason FROM stock_sync.queue WHERE state = 'pending'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect()
}

async fn clear_queue(client: &Client) {
    client
        .execute(
            "UPDATE stock_sync.queue SET state = 'done', outcome = 'test' WHERE state = 'pending'",
            &[],
        )
        .await
        .unwrap();
}

async fn checkpoint(client: &Client, slot: &str) -> Option<String> {
    client
        .query_opt(
            "SELECT lsn::text FROM stock_sync.checkpoint WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// Waits until capture's checkpoint has passed everything committed so far.
async fn wait_caught_up(client: &Client, slot: &str) {
    let target: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    eventually(Duration::from_secs(30), "checkpoint to reach the current WAL position", || async {
        client
            .query_one(
                "SELECT coalesce((SELECT lsn FROM stock_sync.checkpoint WHERE slot_name = $1) >= $2::text::pg_lsn, false)",
                &[&slot, &target],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_example_enqueues_products_and_every_set_containing_them() {
    let url = fresh_database("capture_seed");
    let client = connect(&url).await;
    let c = load_catalogue(&client).await;
    setup(&url, "stock_sync", "stock_sync").await;
    // Heartbeat-free idle slot: keepalives every second are enough to move the checkpoint.
    let running = start_capture(&url, "stock_sync");

    // First run: every listed pair once, with the first checkpoint.
    eventually(Duration::from_secs(20), "first-run snapshot", || async {
        pending(&client).await.len() == 7
    })
    .await;
    assert!(pending(&client).await.values().all(|r| r == "INITIAL_SYNC"));
    assert!(checkpoint(&client, "stock_sync").await.is_some());
    clear_queue(&client).await;

    // An order takes 2 Eldiven: Eldiven, Kış Paketi and (nested) Mega Paket in that store;
    // in the other store Eldiven is not touched.
    client
        .execute(
            "UPDATE product_stores SET sellable_quantity = sellable_quantity - 2, committed_quantity = committed_quantity + 2 \
             WHERE product_id = $1 AND store_id = $2",
            &[&c.eldiven, &c.store],
        )
        .await
        .unwrap();
    wait_caught_up(&client, "stock_sync").await;
    let got = pending(&client).await;
    let want: BTreeMap<_, _> = [
        ((c.eldiven, c.store), "ORDER_CREATED".to_string()),
        ((c.kis_paketi, c.store), "ORDER_CREATED".to_string()),
        ((c.mega_paket, c.store), "ORDER_CREATED".to_string()),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);
    clear_queue(&client).await;

    // Only committed quantity moves: nothing to tell anyone.
    client
        .execute("UPDATE product_stores SET committed_quantity = committed_quantity + 1 WHERE product_id = $1", &[&c.mont])
        .await
        .unwrap();
    wait_caught_up(&client, "stock_sync").await;
    assert!(
        pending(&client).await.is_empty(),
        "no-op update enqueued work"
    );

    // Composition edit: the set (and its parent) where listed, not the component.
    client
        .execute(
            "UPDATE product_set_items SET quantity = 3 WHERE set_product_id = $1 AND component_product_id = $2",
            &[&c.kis_paketi, &c.eldiven],
        )
        .await
        .unwrap();
    wait_caught_up(&client, "stock_sync").await;
    let got: BTreeSet<_> = pending(&client).await.into_keys().collect();
    assert_eq!(
        got,
        [(c.kis_paketi, c.store), (c.mega_paket, c.store)]
            .into_iter()
            .collect()
    );
    assert!(pending(&client)
        .await
        .values()
        .all(|r| r == "COMPOSITION_CHANGED"));
    clear_queue(&client).await;

    // Deleting a listing enqueues that pair (so 0 is pushed once) and its sets.
    client
        .execute(
            "DELETE FROM product_stores WHERE product_id = $1 AND store_id = $2",
            &[&c.atki, &c.store],
        )
        .await
        .unwrap();
    wait_caught_up(&client, "stock_sync").await;
    let got: BTreeSet<_> = pending(&client).await.into_keys().collect();
    assert_eq!(
        got,
        [
            (c.atki, c.store),
            (c.kis_paketi, c.store),
            (c.mega_paket, c.store)
        ]
        .into_iter()
        .collect()
    );

    // A second change to a pending pair raises priority but keeps one entry and its age.
    let before: (i64, chrono::DateTime<chrono::Utc>) = {
        let r = client
            .query_one("SELECT count(*), min(enqueued_at) FROM stock_sync.queue WHERE state = 'pending' AND product_id = $1", &[&c.kis_paketi])
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    client
        .execute(
            "UPDATE product_stores SET sellable_quantity = 1, committed_quantity = 5 WHERE product_id = $1 AND store_id = $2",
            &[&c.mont, &c.store],
        )
        .await
        .unwrap();
    wait_caught_up(&client, "stock_sync").await;
    let r = client
        .query_one(
            "SELECT count(*), min(enqueued_at), max(priority), max(reason) FROM stock_sync.queue WHERE state = 'pending' AND product_id = $1",
            &[&c.kis_paketi],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), 1);
    assert_eq!(r.get::<_, chrono::DateTime<chrono::Utc>>(1), before.1);
    assert_eq!(r.get::<_, i32>(2), 100);
    assert_eq!(r.get::<_, String>(3), "ORDER_CREATED");
    assert_eq!(before.0, 1);

    // TRUNCATE of product_set_items: every listed set.
    clear_queue(&client).await;
    client
        .execute("TRUNCATE product_set_items", &[])
        .await
        .unwrap();
    wait_caught_up(&client, "stock_sync").await;
    let got: BTreeSet<_> = pending(&client).await.into_keys().collect();
    assert_eq!(
        got,
        [(c.kis_paketi, c.store), (c.mega_paket, c.store)]
            .into_iter()
            .collect()
    );

    running.stop().await.expect("clean stop");
    // Every captured transaction appears once in the capture log, with increasing LSNs.
    let n: i64 = client
        .query_one("SELECT count(*) FROM stock_sync.captured_transactions", &[])
        .await
        .unwrap()
        .get(0);
    assert!(n >= 6, "capture log has {n} transactions");
    let _ = c.unrelated;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_skips_captured_transactions_and_resumes() {
    let url = fresh_database("capture_restart");
    let client = connect(&url).await;
    let c = load_catalogue(&client).await;
    setup(&url, "restart_slot", "restart_slot").await;
    let running = start_capture(&url, "restart_slot");
    eventually(Duration::from_secs(20), "first run", || async {
        checkpoint(&client, "restart_slot").await.is_some()
    })
    .await;
    for i in 0..20 {
        client
            .execute("UPDATE product_stores SET sellable_quantity = $1 WHERE product_id = $2 AND store_id = $3", &[&(100 + i), &c.unrelated, &c.store])
            .await
            .unwrap();
    }
    wait_caught_up(&client, "restart_slot").await;
    running.stop().await.unwrap();
    let logged: i64 = client
        .query_one("SELECT count(*) FROM stock_sync.captured_transactions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, 20);

    // Changes while stopped are captured after restart; nothing twice (the capture log's
    // exclusion constraint would stop capture with an error).
    for i in 0..5 {
        client
            .execute("UPDATE product_stores SET sellable_quantity = $1 WHERE product_id = $2 AND store_id = $3", &[&(500 + i), &c.unrelated, &c.store])
            .await
            .unwrap();
    }
    let running = start_capture(&url, "restart_slot");
    wait_caught_up(&client, "restart_slot").await;
    running.stop().await.expect("no double capture");
    let logged: i64 = client
        .query_one("SELECT count(*) FROM stock_sync.captured_transactions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, 25);

    // The guard itself: a batch claiming a transaction that is already logged is refused
    // with the exclusion violation capture treats as fatal.
    let replay = client
        .execute(
            "INSERT INTO stock_sync.capture_batches (lsns, transactions, row_changes, xids, commit_lsns)
             SELECT stock_sync.lsn_range(commit_lsn, commit_lsn + 1), 1, 1, ARRAY[xid], ARRAY[commit_lsn]
             FROM stock_sync.captured_transactions ORDER BY commit_lsn DESC LIMIT 1",
            &[],
        )
        .await
        .expect_err("a second capture of a logged transaction");
    assert_eq!(
        replay.code(),
        Some(&tokio_postgres::error::SqlState::EXCLUSION_VIOLATION),
        "{replay}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_read_column_stops_capture_with_a_clear_error_and_adding_one_does_not() {
    let url = fresh_database("capture_drift");
    let client = connect(&url).await;
    let c = load_catalogue(&client).await;
    setup(&url, "drift_slot", "drift_slot").await;
    let running = start_capture(&url, "drift_slot");
    eventually(Duration::from_secs(20), "first run", || async {
        checkpoint(&client, "drift_slot").await.is_some()
    })
    .await;
    clear_queue(&client).await;

    client
        .execute("ALTER TABLE product_stores ADD COLUMN shelf text", &[])
        .await
        .unwrap();
    client
        .execute("UPDATE product_stores SET sellable_quantity = 3, shelf = 'A1' WHERE product_id = $1 AND store_id = $2", &[&c.unrelated, &c.store])
        .await
        .unwrap();
    wait_caught_up(&client, "drift_slot").await;
    assert!(pending(&client).await.contains_key(&(c.unrelated, c.store)));

    client
        .execute(
            "ALTER TABLE product_stores RENAME COLUMN sellable_quantity TO available",
            &[],
        )
        .await
        .unwrap();
    client
        .execute(
            "UPDATE product_stores SET available = 4 WHERE product_id = $1 AND store_id = $2",
            &[&c.unrelated, &c.store],
        )
        .await
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(20), running.task)
        .await
        .expect("capture stops")
        .unwrap();
    let err = result.expect_err("capture must refuse");
    assert!(err.is_fatal());
    let text = err.to_string();
    assert!(
        text.contains("sellable_quantity") && text.contains("product_stores"),
        "{text}"
    );
}

/// The kill -9 loop: the real binary captures while a random workload commits; it is killed
/// at random moments and restarted. At the end every workload transaction is in the capture
/// log exactly once, every changed pair has a queue entry at least as new as its change, and
/// the checkpoint never moved backwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_loop_loses_nothing_and_captures_nothing_twice() {
    use rand::{Rng, SeedableRng};
    let seed = common::seed();
    let url = fresh_database("capture_kill");
    let client = connect(&url).await;
    // Stores of a type stocksync ignores: dispatch marks their entries done without requests.
    let stores: Vec<Uuid> = (0..2).map(|_| uuid()).collect();
    for s in &stores {
        client
            .execute(
                "INSERT INTO stores (id, name, type) VALUES ($1, 'shop', 'OTHER')",
                &[s],
            )
            .await
            .unwrap();
    }
    let products: Vec<Uuid> = (0..60).map(|_| uuid()).collect();
    for (i, p) in products.iter().enumerate() {
        let kind = if i % 10 == 0 { "SET" } else { "SIMPLE" };
        client
            .execute(
                "INSERT INTO products (id, barcode, name, product_type) VALUES ($1, $2, 'p', $3)",
                &[p, &format!("B{i}"), &kind],
            )
            .await
            .unwrap();
        for s in &stores {
            client
                .execute("INSERT INTO product_stores (id, product_id, store_id, sellable_quantity) VALUES ($1, $2, $3, 10)", &[&uuid(), p, s])
                .await
                .unwrap();
        }
    }
    for set in (0..60).step_by(10) {
        for k in 1..4 {
            client
                .execute(
                    "INSERT INTO product_set_items (id, set_product_id, component_product_id, quantity) VALUES ($1, $2, $3, 1)",
                    &[&uuid(), &products[set], &products[set + k]],
                )
                .await
                .unwrap();
        }
    }
    setup(&url, "kill_slot", "kill_slot").await;

    let stop = CancellationToken::new();
    // Checkpoint monitor: never backwards.
    let monitor = {
        let url = url.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let client = connect(&url).await;
            let mut last: Option<u64> = None;
            let mut samples = 0u32;
            while !stop.is_cancelled() {
                if let Some(row) = client
                    .query_opt("SELECT (lsn - '0/0'::pg_lsn)::bigint FROM stock_sync.checkpoint WHERE slot_name = 'kill_slot'", &[])
                    .await
                    .unwrap()
                {
                    let now = row.get::<_, i64>(0) as u64;
                    if let Some(prev) = last {
                        assert!(now >= prev, "checkpoint moved backwards: {prev} -> {now}");
                    }
                    last = Some(now);
                    samples += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        })
    };

    // Workload: two clients, random single and multi-row transactions; each records its xid
    // and the pairs whose sellable quantity it changed.
    let mut workers = Vec::new();
    for w in 0..2u64 {
        let url = url.clone();
        let products = products.clone();
        let stores = stores.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (w + 1));
            let mut client = connect(&url).await;
            let mut changed: Vec<(i64, Vec<(Uuid, Uuid)>)> = Vec::new();
            let mut count = 0;
            while !stop.is_cancelled() && count < 1500 {
                let tx = client.transaction().await.unwrap();
                let xid: i64 = tx.query_one("SELECT txid_current()", &[]).await.unwrap().get(0);
                let mut pairs = Vec::new();
                // Rows are updated in one global order, so the two clients cannot deadlock.
                let mut updates: Vec<(Uuid, Uuid, i32)> = (0..rng.gen_range(1..4))
                    .map(|_| {
                        (
                            products[rng.gen_range(0..products.len())],
                            stores[rng.gen_range(0..stores.len())],
                            rng.gen_range(-3..=3),
                        )
                    })
                    .collect();
                updates.sort();
                for (p, s, delta) in updates {
                    if delta == 0 {
                        // committed-only change: must not be required in the queue
                        tx.execute("UPDATE product_stores SET committed_quantity = committed_quantity + 1 WHERE product_id = $1 AND store_id = $2", &[&p, &s]).await.unwrap();
                    } else {
                        tx.execute(
                            "UPDATE product_stores SET sellable_quantity = sellable_quantity + $3, committed_quantity = committed_quantity - $3 WHERE product_id = $1 AND store_id = $2",
                            &[&p, &s, &delta],
                        )
                        .await
                        .unwrap();
                        pairs.push((p, s));
                    }
                }
                tx.commit().await.unwrap();
                changed.push((xid, pairs));
                count += 1;
                if count % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..30))).await;
                }
            }
            changed
        }));
    }

    // Kill loop.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut kills = 0;
    let spawn = || {
        std::process::Command::new(binary())
            .arg("run")
            .env("DATABASE_URL", &url)
            .env("STOCKSYNC_SLOT", "kill_slot")
            .env("STOCKSYNC_PUBLICATION", "kill_slot")
            .env("STOCKSYNC_HTTP_ADDR", "127.0.0.1:0")
            .env("STOCKSYNC_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn stocksync run")
    };
    while kills < 20 {
        let mut child = spawn();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..1200))).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        kills += 1;
    }
    let mut results = Vec::new();
    for w in workers {
        results.push(w.await.unwrap());
    }
    // Final run to catch up, then a clean stop.
    let mut child = spawn();
    wait_caught_up(&client, "kill_slot").await;
    unsafe_sigterm(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "clean shutdown after SIGTERM: {status:?}");
    stop.cancel();
    let samples = monitor.await.unwrap();
    assert!(samples > 10);

    // Exactly once: every workload xid captured once.
    let captured: HashMap<i64, (i64, String)> = client
        .query("SELECT xid, count(*) OVER (PARTITION BY xid), commit_lsn::text FROM stock_sync.captured_transactions", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i64>(0), (r.get::<_, i64>(1), r.get::<_, String>(2))))
        .collect();
    let mut transactions = 0;
    for changed in &results {
        for (xid, pairs) in changed {
            transactions += 1;
            let Some((count, commit_lsn)) = captured.get(xid) else {
                panic!("transaction {xid} (seed {seed}) was never captured");
            };
            assert_eq!(*count, 1, "transaction {xid} captured {count} times");
            for (p, s) in pairs {
                let covered: bool = client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM stock_sync.queue WHERE product_id = $1 AND store_id = $2 AND commit_lsn >= $3::text::pg_lsn)",
                        &[p, s, commit_lsn],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert!(covered, "pair ({p}, {s}) changed by {xid} at {commit_lsn} has no queue entry (seed {seed})");
            }
        }
    }
    println!("kill -9 loop: {kills} kills, {transactions} transactions verified");
    assert!(transactions >= 1000);
}

fn unsafe_sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
