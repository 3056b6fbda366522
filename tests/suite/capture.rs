//! Change capture against a real PostgreSQL: which pairs are enqueued, first run, skipping
//! what was captured, schema drift, and the kill -9 loop.

use crate::common;

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
    start_capture_with(url, slot, true)
}

fn start_capture_with(url: &str, slot: &str, streaming: bool) -> Running {
    let shutdown = CancellationToken::new();
    let settings = CaptureSettings {
        slot: slot.into(),
        publication: slot.into(),
        status_interval: Duration::from_secs(1),
        streaming,
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
    capture_caught_up(&client, "stock_sync").await;
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
    capture_caught_up(&client, "stock_sync").await;
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
    capture_caught_up(&client, "stock_sync").await;
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
    capture_caught_up(&client, "stock_sync").await;
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
    capture_caught_up(&client, "stock_sync").await;
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
    capture_caught_up(&client, "stock_sync").await;
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

/// The database's name in its URL.
fn database_name(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_string()
}

/// Makes the server stream any transaction over 64 kB of decoded changes (its minimum), so
/// a few thousand rows are enough to exercise streaming. Read by walsenders at connection.
async fn stream_small_transactions(client: &Client, url: &str) {
    client
        .batch_execute(&format!(
            "ALTER DATABASE {} SET logical_decoding_work_mem = '64kB'",
            database_name(url)
        ))
        .await
        .unwrap();
}

async fn staged(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM stock_sync.stream_staging", &[])
        .await
        .unwrap()
        .get(0)
}

/// `n` more products (in no set) listed in `store`; their ids.
async fn add_listings(client: &Client, store: Uuid, n: i32) -> Vec<Uuid> {
    client
        .query(
            "WITH p AS (
                 INSERT INTO products (id, barcode, name, product_type)
                 SELECT gen_random_uuid(), 'BULK-' || gen_random_uuid(), 'bulk', 'SIMPLE'
                 FROM generate_series(1, $2::int)
                 RETURNING id)
             INSERT INTO product_stores (id, product_id, store_id, sellable_quantity)
             SELECT gen_random_uuid(), id, $1, 10 FROM p RETURNING product_id",
            &[&store, &n],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

const BULK_UPDATE: &str = "UPDATE product_stores SET sellable_quantity = sellable_quantity + 1 \
     WHERE store_id = $1 AND product_id = ANY($2)";

/// The catalogue plus 12,000 listings in its store (their products), transactions over 64 kB
/// streamed, capture running on `slot` (with `streaming`) past its first run, queue empty.
async fn bulk_rig(slot: &str, streaming: bool) -> (String, Client, Catalogue, Vec<Uuid>, Running) {
    let url = fresh_database(slot);
    let client = connect(&url).await;
    let c = load_catalogue(&client).await;
    let bulk = add_listings(&client, c.store, 12_000).await;
    stream_small_transactions(&client, &url).await;
    setup(&url, slot, slot).await;
    let running = start_capture_with(&url, slot, streaming);
    eventually(Duration::from_secs(30), "first run", || async {
        checkpoint(&client, slot).await.is_some()
    })
    .await;
    capture_caught_up(&client, slot).await;
    clear_queue(&client).await;
    (url, client, c, bulk, running)
}

/// Transactions the server streamed to the slot so far.
async fn streamed_transactions(client: &Client, slot: &str) -> i64 {
    client
        .query_opt(
            "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
        .unwrap_or(0)
}

/// Rule 6: a transaction the server streams while it runs is staged, never in the queue
/// before its commit; its commit enqueues its pairs and their sets (once in the capture
/// log), its rollback leaves nothing, and a rolled back subtransaction takes its own
/// changes away and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_transactions_are_staged_until_commit_and_dropped_on_abort() {
    let (url, client, c, bulk, running) = bulk_rig("stream_slot", true).await;
    let streamed_before = streamed_transactions(&client, "stream_slot").await;

    // Committed: staged while it runs (12,000 seeds: one chunk of 10,000 staged before the
    // commit), in the queue only after.
    let mut writer = connect(&url).await;
    let tx = writer.transaction().await.unwrap();
    let xid: i64 = tx
        .query_one("SELECT txid_current()", &[])
        .await
        .unwrap()
        .get(0);
    tx.execute(BULK_UPDATE, &[&c.store, &bulk]).await.unwrap();
    tx.execute(
        "UPDATE product_stores SET sellable_quantity = 1 WHERE product_id = $1 AND store_id = $2",
        &[&c.eldiven, &c.store],
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(30),
        "seeds staged while the transaction runs",
        || async { staged(&client).await >= 10_000 },
    )
    .await;
    assert!(
        pending(&client).await.is_empty(),
        "nothing enqueued before the commit"
    );
    tx.commit().await.unwrap();
    capture_caught_up(&client, "stream_slot").await;
    let got = pending(&client).await;
    assert_eq!(
        got.len(),
        bulk.len() + 3,
        "every pair, Eldiven and its two sets"
    );
    for p in bulk
        .iter()
        .chain([&c.eldiven, &c.kis_paketi, &c.mega_paket])
    {
        assert!(got.contains_key(&(*p, c.store)), "{p} not enqueued");
    }
    assert_eq!(got[&(c.eldiven, c.store)], "STOCK_REMOVED");
    // Capture deletes staged rows after the checkpoint commits, off its critical path.
    eventually(
        Duration::from_secs(30),
        "the staging emptied after the commit",
        || async { staged(&client).await == 0 },
    )
    .await;
    let logged: i64 = client
        .query_one(
            "SELECT count(*) FROM stock_sync.captured_transactions WHERE xid = $1",
            &[&xid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        logged, 1,
        "the streamed transaction is in the capture log once"
    );
    clear_queue(&client).await;

    // Rolled back: staged, then deleted; nothing enqueued.
    let tx = writer.transaction().await.unwrap();
    tx.execute(BULK_UPDATE, &[&c.store, &bulk]).await.unwrap();
    eventually(Duration::from_secs(30), "seeds staged", || async {
        staged(&client).await >= 10_000
    })
    .await;
    tx.rollback().await.unwrap();
    // A small transaction after it: its capture shows the abort was handled before it.
    client
        .execute(
            "UPDATE product_stores SET sellable_quantity = 3 WHERE product_id = $1 AND store_id = $2",
            &[&c.unrelated, &c.store],
        )
        .await
        .unwrap();
    capture_caught_up(&client, "stream_slot").await;
    // Capture deletes staged rows after the checkpoint commits, off its critical path.
    eventually(
        Duration::from_secs(30),
        "the abort deleted the staging",
        || async { staged(&client).await == 0 },
    )
    .await;
    assert_eq!(
        pending(&client).await.into_keys().collect::<Vec<_>>(),
        vec![(c.unrelated, c.store)]
    );
    clear_queue(&client).await;

    // A subtransaction rolled back after its changes were streamed: only its changes go.
    let tx = writer.transaction().await.unwrap();
    tx.execute(
        "UPDATE product_stores SET sellable_quantity = 4 WHERE product_id = $1 AND store_id = $2",
        &[&c.unrelated, &c.store],
    )
    .await
    .unwrap();
    tx.batch_execute("SAVEPOINT s1").await.unwrap();
    tx.execute(BULK_UPDATE, &[&c.store, &bulk]).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "the subtransaction's seeds staged",
        || async { staged(&client).await >= 10_000 },
    )
    .await;
    tx.batch_execute("ROLLBACK TO SAVEPOINT s1").await.unwrap();
    tx.execute(
        "UPDATE product_stores SET sellable_quantity = 2 WHERE product_id = $1 AND store_id = $2",
        &[&c.mont, &c.store],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    capture_caught_up(&client, "stream_slot").await;
    let got: BTreeSet<_> = pending(&client).await.into_keys().collect();
    let want: BTreeSet<_> = [
        (c.unrelated, c.store),
        (c.mont, c.store),
        (c.kis_paketi, c.store),
        (c.mega_paket, c.store),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        got, want,
        "the rolled back subtransaction's pairs are not enqueued"
    );
    // Capture deletes staged rows after the checkpoint commits, off its critical path.
    eventually(
        Duration::from_secs(30),
        "the staging emptied after the commit",
        || async { staged(&client).await == 0 },
    )
    .await;

    assert!(
        streamed_transactions(&client, "stream_slot").await >= streamed_before + 3,
        "the server streamed the three transactions"
    );
    running.stop().await.expect("clean stop");
}

/// `STOCKSYNC_STREAMING=off`: the same large transaction arrives at its commit (protocol 1)
/// and is enqueued the same; nothing is staged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_streaming_a_large_transaction_arrives_at_commit() {
    let (url, client, c, bulk, running) = bulk_rig("nostream_slot", false).await;
    let mut writer = connect(&url).await;
    let tx = writer.transaction().await.unwrap();
    tx.execute(BULK_UPDATE, &[&c.store, &bulk]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(staged(&client).await, 0, "protocol 1 stages nothing");
    tx.commit().await.unwrap();
    capture_caught_up(&client, "nostream_slot").await;
    assert_eq!(pending(&client).await.len(), bulk.len());
    running.stop().await.expect("clean stop");
}

/// Rule 8 (capture's module doc) with streaming: a set item committed while a streamed
/// transaction runs makes one of its already staged products a component; the transaction's
/// commit enqueues that set (and the set above it). A set item deleted meanwhile enqueued its
/// set at its own commit, and the transaction's commit does not: the set's quantity no longer
/// depends on the component.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_transaction_expands_to_the_sets_at_its_commit() {
    compositions_change_while_a_large_transaction_runs("compose_stream_slot", true).await;
}

/// Rule 8 without streaming: the same, the transaction arriving whole at its commit; both
/// paths enqueue the same entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transaction_expands_to_the_sets_at_its_commit_without_streaming() {
    compositions_change_while_a_large_transaction_runs("compose_nostream_slot", false).await;
}

/// The scenario of the two tests above. While a large transaction (a product `joiner` first,
/// then 11,998 others) is open — with streaming, once the server streamed `joiner`'s change
/// and capture staged it — another session commits a composition change of `joiner`; capture
/// enqueues its sets and "dispatch" takes them (the queue is cleared, as a push with
/// `joiner`'s old stock would); then the large transaction commits.
async fn compositions_change_while_a_large_transaction_runs(slot: &str, streaming: bool) {
    let (url, client, c, bulk, running) = bulk_rig(slot, streaming).await;
    let (joiner, rest) = (bulk[0], bulk[2..].to_vec());
    let mut writer = connect(&url).await;
    // The sets' pending entries: {set -> (reason, commit LSN)}.
    let sets = || async {
        client
            .query(
                "SELECT product_id, reason, commit_lsn::text FROM stock_sync.queue \
                 WHERE state = 'pending' AND store_id = $1 AND product_id = ANY($2)",
                &[&c.store, &vec![c.kis_paketi, c.mega_paket]],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<_, Uuid>(0), (r.get::<_, String>(1), r.get(2))))
            .collect::<BTreeMap<Uuid, (String, String)>>()
    };
    let commit_lsn = |xid: i64| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT commit_lsn::text FROM stock_sync.captured_transactions WHERE xid = $1",
                    &[&xid],
                )
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    let bulk_pairs = |sets: &[Uuid]| -> BTreeSet<(Uuid, Uuid)> {
        rest.iter()
            .chain([&joiner])
            .chain(sets)
            .map(|p| (*p, c.store))
            .collect()
    };

    // 1. `joiner` becomes a component of Kış Paketi (itself in Mega Paket).
    let (tx, xid) =
        open_large_transaction(&mut writer, &client, c.store, joiner, &rest, streaming).await;
    client
        .execute(
            "INSERT INTO product_set_items (id, set_product_id, component_product_id, quantity) \
             VALUES ($1, $2, $3, 1)",
            &[&uuid(), &c.kis_paketi, &joiner],
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the set item's sets enqueued",
        || async { sets().await.len() == 2 },
    )
    .await;
    clear_queue(&client).await;
    tx.commit().await.unwrap();
    capture_caught_up(&client, slot).await;
    let lsn = commit_lsn(xid).await;
    let stock_added = ("STOCK_ADDED".to_string(), lsn);
    assert_eq!(
        sets().await,
        [
            (c.kis_paketi, stock_added.clone()),
            (c.mega_paket, stock_added)
        ]
        .into_iter()
        .collect(),
        "the sets `joiner` is in at the commit are enqueued by it"
    );
    assert_eq!(
        pending(&client).await.into_keys().collect::<BTreeSet<_>>(),
        bulk_pairs(&[c.kis_paketi, c.mega_paket])
    );
    clear_queue(&client).await;

    // 2. `joiner` leaves Kış Paketi: the delete enqueues the sets it left, at its own commit;
    //    the large transaction's commit leaves them alone.
    let (tx, _) =
        open_large_transaction(&mut writer, &client, c.store, joiner, &rest, streaming).await;
    client
        .execute(
            "DELETE FROM product_set_items WHERE set_product_id = $1 AND component_product_id = $2",
            &[&c.kis_paketi, &joiner],
        )
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the deleted set item's sets enqueued",
        || async {
            let got = sets().await;
            got.len() == 2 && got.values().all(|(r, _)| r == "COMPOSITION_CHANGED")
        },
    )
    .await;
    clear_queue(&client).await;
    tx.commit().await.unwrap();
    capture_caught_up(&client, slot).await;
    assert_eq!(
        pending(&client).await.into_keys().collect::<BTreeSet<_>>(),
        bulk_pairs(&[]),
        "a set `joiner` left before the commit is not the commit's"
    );
    if streaming {
        // Capture deletes staged rows after the checkpoint commits, off its critical path.
        eventually(Duration::from_secs(30), "the staging emptied", || async {
            staged(&client).await == 0
        })
        .await;
    }
    running.stop().await.expect("clean stop");
}

/// Opens the large transaction of the scenario above: `joiner`'s listing in `store` first,
/// then `rest`'s; with `streaming`, returns once capture staged `joiner`'s change. Its xid.
async fn open_large_transaction<'a>(
    writer: &'a mut Client,
    client: &Client,
    store: Uuid,
    joiner: Uuid,
    rest: &[Uuid],
    streaming: bool,
) -> (tokio_postgres::Transaction<'a>, i64) {
    let tx = writer.transaction().await.unwrap();
    let xid: i64 = tx
        .query_one("SELECT txid_current()", &[])
        .await
        .unwrap()
        .get(0);
    tx.execute(BULK_UPDATE, &[&store, &vec![joiner]])
        .await
        .unwrap();
    tx.execute(BULK_UPDATE, &[&store, &rest]).await.unwrap();
    if streaming {
        eventually(
            Duration::from_secs(30),
            "the joiner's change staged",
            || async {
                client
                    .query_one(
                        "SELECT count(*) FROM stock_sync.stream_staging WHERE product_id = $1",
                        &[&joiner],
                    )
                    .await
                    .unwrap()
                    .get::<_, i64>(0)
                    == 1
            },
        )
        .await;
    }
    (tx, xid)
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
    capture_caught_up(&client, "restart_slot").await;
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
    capture_caught_up(&client, "restart_slot").await;
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
    capture_caught_up(&client, "drift_slot").await;
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
    // Capture's own larger transactions (the first run) are streamed by the server.
    stream_small_transactions(&client, &url).await;
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
    // Every other run reads the slot with protocol 1: switching back and forth (an upgrade,
    // a rollback, a changed setting) loses and doubles nothing either.
    let spawn = |run: u32| {
        std::process::Command::new(binary())
            .arg("run")
            .env("DATABASE_URL", &url)
            .env("STOCKSYNC_SLOT", "kill_slot")
            .env("STOCKSYNC_PUBLICATION", "kill_slot")
            .env(
                "STOCKSYNC_STREAMING",
                if run.is_multiple_of(2) { "on" } else { "off" },
            )
            .env("STOCKSYNC_HTTP_ADDR", "127.0.0.1:0")
            .env("STOCKSYNC_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("spawn stocksync run")
    };
    while kills < 20 {
        let mut child = spawn(kills);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..1200))).await;
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        kills += 1;
    }
    let mut results = Vec::new();
    for w in workers {
        results.push(w.await.unwrap());
    }
    // Final run to catch up, then a clean stop. It streams first: the slot may have been
    // confirmed up to the end by a killed run, and a SIGTERM before the process handles it
    // would end it like a kill.
    let mut child = spawn(kills);
    eventually(Duration::from_secs(30), "the final run streams", || {
        slot_active(&client, "kill_slot")
    })
    .await;
    capture_caught_up(&client, "kill_slot").await;
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

/// The real binary killed in the middle of a streamed transaction (its seeds partly staged,
/// its commit not yet made) and in the middle of its commit (the staged seeds moved into the
/// queue, the capture log row waiting on a lock): both times the restarted service discards
/// the staging, the server streams the transaction again, and it is captured exactly once
/// with every pair enqueued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_in_a_streamed_transaction_and_in_its_commit_captures_it_once() {
    let url = fresh_database("capture_kill_stream");
    let client = connect(&url).await;
    let store = uuid();
    client
        .execute(
            "INSERT INTO stores (id, name, type) VALUES ($1, 'shop', 'OTHER')",
            &[&store],
        )
        .await
        .unwrap();
    let bulk = add_listings(&client, store, 25_000).await;
    stream_small_transactions(&client, &url).await;
    setup(&url, "kill_stream", "kill_stream").await;
    let log =
        std::env::temp_dir().join(format!("stocksync-kill-stream-{}.log", std::process::id()));
    let spawn = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        std::process::Command::new(binary())
            .arg("run")
            .env("DATABASE_URL", &url)
            .env("STOCKSYNC_SLOT", "kill_stream")
            .env("STOCKSYNC_PUBLICATION", "kill_stream")
            .env("STOCKSYNC_HTTP_ADDR", "127.0.0.1:0")
            .env("STOCKSYNC_HEARTBEAT_INTERVAL", "0s")
            .env("STOCKSYNC_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn stocksync run")
    };
    let mut child = spawn();
    capture_caught_up(&client, "kill_stream").await;
    let mut writer = connect(&url).await;
    let captured = |xid: i64| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT count(*) FROM stock_sync.captured_transactions WHERE xid = $1",
                    &[&xid],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };

    // 1. Killed while the transaction streams: 20,000 of its 25,000 seeds are staged (two
    //    chunks) when it is complete but not committed.
    let tx = writer.transaction().await.unwrap();
    let first: i64 = tx
        .query_one("SELECT txid_current()", &[])
        .await
        .unwrap()
        .get(0);
    tx.execute(BULK_UPDATE, &[&store, &bulk]).await.unwrap();
    eventually(Duration::from_secs(60), "two chunks staged", || async {
        staged(&client).await == 20_000
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    child = spawn();
    // The restarted service discards what its predecessor staged; the server streams the
    // transaction again from its start: 20,000 rows again, not 40,000.
    eventually(
        Duration::from_secs(60),
        "the transaction staged again",
        || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("discarded the staging")
                && staged(&client).await == 20_000
        },
    )
    .await;
    tx.commit().await.unwrap();
    capture_caught_up(&client, "kill_stream").await;
    assert_eq!(captured(first).await, 1);
    assert_eq!(pending(&client).await.len(), bulk.len());
    // Capture deletes staged rows after the checkpoint commits.
    eventually(Duration::from_secs(30), "the staging emptied", || async {
        staged(&client).await == 0
    })
    .await;
    clear_queue(&client).await;

    // 2. Killed in the commit: a lock on the capture log holds the capture transaction after
    //    it moved the staged seeds into the queue.
    let mut blocker = connect(&url).await;
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE stock_sync.capture_batches IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let tx = writer.transaction().await.unwrap();
    let second: i64 = tx
        .query_one("SELECT txid_current()", &[])
        .await
        .unwrap()
        .get(0);
    tx.execute(BULK_UPDATE, &[&store, &bulk]).await.unwrap();
    tx.commit().await.unwrap();
    eventually(
        Duration::from_secs(60),
        "the commit waiting on the capture log",
        || async {
            client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND btrim(query, E' \\n') LIKE 'INSERT INTO stock_sync.capture_batches%'",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 1
        },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    lock.rollback().await.unwrap();
    assert_eq!(captured(second).await, 0, "the killed commit left nothing");
    child = spawn();
    capture_caught_up(&client, "kill_stream").await;
    assert_eq!(
        captured(second).await,
        1,
        "captured exactly once after the restart"
    );
    assert_eq!(pending(&client).await.len(), bulk.len());
    // Capture deletes staged rows after the checkpoint commits.
    eventually(Duration::from_secs(30), "the staging emptied", || async {
        staged(&client).await == 0
    })
    .await;
    unsafe_sigterm(&child);
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_file(&log);
}

fn unsafe_sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// PostgreSQL 14 and older send Begin/Commit for transactions that changed no published
/// table, capture's own batch commits among them: an idle service must not turn them into
/// capture batches (each would come back as another empty transaction, forever). Over a
/// quiet minute with the heartbeat on, no batch is written, while the slot keeps being
/// confirmed past the heartbeats (capture is alive).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_service_writes_no_capture_batches() {
    use crate::common::stack::{settled, start, wait_quantity};
    let seller = "4001";
    let stack = start(
        "capture_idle",
        stocksync::mock::MockConfig {
            accounts: vec![stocksync::mock::MockAccount::trendyol(
                seller,
                "ty-key",
                "ty-secret",
            )],
            ..stocksync::mock::MockConfig::default()
        },
        &[("STOCKSYNC_HEARTBEAT_INTERVAL", "1s".into())],
        async |c: &Client| {
            let store = uuid();
            c.execute(
                "INSERT INTO stores (id, name, type, is_active, send_stock, seller_id, api_key, api_secret) \
                 VALUES ($1, 'TY', 'TRENDYOL', true, true, $2, 'ty-key', 'ty-secret')",
                &[&store, &seller],
            )
            .await
            .unwrap();
            let product = uuid();
            c.execute(
                "INSERT INTO products (id, barcode, sku, name) VALUES ($1, 'IDLE-1', 'IDLE-1', 'Idle')",
                &[&product],
            )
            .await
            .unwrap();
            c.execute(
                "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity) VALUES ($1, $2, $3, 3)",
                &[&uuid(), &product, &store],
            )
            .await
            .unwrap();
        },
    )
    .await;
    wait_quantity(&stack.mock, seller, "IDLE-1", 3).await;
    settled(&stack).await;
    let batches = "SELECT count(*) FROM stock_sync.capture_batches";
    let confirmed = "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'capture_idle'";
    let before = count(&stack.client, batches, &[]).await;
    let confirmed_before: String = stack.client.query_one(confirmed, &[]).await.unwrap().get(0);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = count(&stack.client, batches, &[]).await;
    assert_eq!(after, before, "capture batches written by an idle service");
    let moved: bool = stack
        .client
        .query_one(
            "SELECT confirmed_flush_lsn > $1::text::pg_lsn FROM pg_replication_slots WHERE slot_name = 'capture_idle'",
            &[&confirmed_before],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        moved,
        "the slot was confirmed past the heartbeats meanwhile"
    );
    stack.stop().await;
}
