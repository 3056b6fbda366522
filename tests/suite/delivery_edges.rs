//! Delivery when something else moves first (issue 24): a product deleted with its listings,
//! two spellings of one listing, listings the marketplace fulfils itself, a request that
//! never left, a 429 that names no time ahead. Each test fails on the code before its fix.

use crate::common;

use std::time::Duration;

use common::stack::*;
use common::*;
use stocksync::mock::{FaultScope, Faults, MockAccount, MockConfig};
use tokio_postgres::Client;
use uuid::Uuid;

const SELLER: &str = "3001";
const MERCHANT: &str = "6a1f0a8e-0000-4000-8000-0000000000e1";

fn mock_config() -> MockConfig {
    MockConfig {
        accounts: vec![
            MockAccount::trendyol(SELLER, "ty-key", "ty-secret"),
            MockAccount::hepsiburada(MERCHANT, "hb-secret"),
        ],
        identical_window: Duration::from_secs(2),
        behaviour: stocksync::mock::Behaviour {
            hepsiburada_user_agent: Some("test_dev".into()),
            ..stocksync::mock::Behaviour::default()
        },
        ..MockConfig::default()
    }
}

/// A Trendyol and a Hepsiburada store, both sendable.
async fn stores(client: &Client) -> (Uuid, Uuid) {
    let (ty, hb) = (uuid(), uuid());
    client
        .execute(
            "INSERT INTO stores (id, name, type, is_active, send_stock, seller_id, api_key, api_secret) VALUES \
             ($1, 'TY', 'TRENDYOL', true, true, $3, 'ty-key', 'ty-secret'), \
             ($2, 'HB', 'HEPSIBURADA', true, true, $4, NULL, 'hb-secret')",
            &[&ty, &hb, &SELLER, &MERCHANT],
        )
        .await
        .unwrap();
    (ty, hb)
}

/// A product with `key` as barcode and sku, listed in `stores` with `sellable`.
async fn product(client: &Client, key: &str, sellable: i32, stores: &[Uuid]) -> Uuid {
    let id = uuid();
    client
        .execute(
            "INSERT INTO products (id, barcode, sku, name) VALUES ($1, $2, $2, $2)",
            &[&id, &key],
        )
        .await
        .unwrap();
    for store in stores {
        client
            .execute(
                "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity) VALUES ($1, $2, $3, $4)",
                &[&uuid(), &id, store, &sellable],
            )
            .await
            .unwrap();
    }
    id
}

async fn outcome_count(client: &Client, product: Uuid, outcome: &str) -> i64 {
    count(
        client,
        "SELECT count(*) FROM stock_sync.queue WHERE product_id = $1 AND outcome = $2",
        &[&product, &outcome],
    )
    .await
}

fn pushes(
    mock: &stocksync::mock::MockMarketplace,
    seller: &str,
) -> Vec<stocksync::mock::RequestRecord> {
    mock.requests()
        .into_iter()
        .filter(|r| r.seller_id.as_deref() == Some(seller) && r.endpoint.as_deref() == Some("push"))
        .collect()
}

/// One transaction deletes a product's listings and its row: the barcode/sku is gone before
/// dispatch reads it, and each marketplace is told 0 under the key it was last told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_deleted_with_its_listings_is_told_zero_under_its_last_key() {
    let mut ids = (Uuid::nil(), Uuid::nil(), Uuid::nil());
    let stack = start("edges_deleted", mock_config(), &[], async |c: &Client| {
        let (ty, hb) = stores(c).await;
        let gone = product(c, "GONE-1", 7, &[ty, hb]).await;
        product(c, "STAYS-1", 3, &[ty, hb]).await;
        ids = (ty, hb, gone);
    })
    .await;
    let (_, _, gone) = ids;
    let mock = &stack.mock;
    wait_quantity(mock, SELLER, "GONE-1", 7).await;
    wait_quantity(mock, MERCHANT, "GONE-1", 7).await;
    settled(&stack).await;
    let mut client = connect(&stack.url).await;
    let tx = client.transaction().await.unwrap();
    tx.execute("DELETE FROM product_stores WHERE product_id = $1", &[&gone])
        .await
        .unwrap();
    tx.execute("DELETE FROM products WHERE id = $1", &[&gone])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    wait_quantity(mock, SELLER, "GONE-1", 0).await;
    wait_quantity(mock, MERCHANT, "GONE-1", 0).await;
    settled(&stack).await;
    assert_eq!(outcome_count(&stack.client, gone, "no_key").await, 0);
    // Told once: a later change of nothing does not send 0 again.
    let before = pushes(mock, SELLER).len();
    stack
        .exec(
            "INSERT INTO stock_sync.queue (product_id, store_id, reason, priority) \
             SELECT $1, id, 'RESYNC', 50 FROM stores",
            &[&gone],
        )
        .await;
    settled(&stack).await;
    assert_eq!(pushes(mock, SELLER).len(), before, "0 was told once");
    assert!(outcome_count(&stack.client, gone, "unchanged").await >= 1);
    stack.stop().await;
}

/// "869 0001" and "8690001" are one listing at Trendyol (it removes spaces): neither is
/// pushed while both are listed, the collision is reported, and once the data is fixed the
/// remaining product is pushed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_spellings_of_one_trendyol_listing_push_neither_until_fixed() {
    let mut ids = (Uuid::nil(), Uuid::nil(), Uuid::nil());
    let stack = start("edges_spellings", mock_config(), &[], async |c: &Client| {
        let (ty, _) = stores(c).await;
        let spaced = product(c, "869 0001", 5, &[ty]).await;
        let plain = product(c, "8690001", 9, &[ty]).await;
        product(c, "OTHER-1", 4, &[ty]).await;
        ids = (ty, spaced, plain);
    })
    .await;
    let (ty, spaced, plain) = ids;
    let mock = &stack.mock;
    wait_quantity(mock, SELLER, "OTHER-1", 4).await;
    settled(&stack).await;
    // In one batch or two: the listing is never given two quantities.
    assert_eq!(
        mock.quantity(SELLER, "8690001"),
        None,
        "neither spelling was pushed"
    );
    for p in [spaced, plain] {
        assert_eq!(outcome_count(&stack.client, p, "duplicate_key").await, 1);
    }
    let recorded = count(
        &stack.client,
        "SELECT count(*) FROM stock_sync.key_collisions WHERE store_id = $1 AND key_form = '8690001'",
        &[&ty],
    )
    .await;
    assert_eq!(recorded, 2, "both products recorded for status");
    let problems = count(
        &stack.client,
        "SELECT count(*) FROM stock_sync.api_log WHERE type = 'STOCK_PROBLEM' AND error_message LIKE '%8690001%'",
        &[],
    )
    .await;
    assert!(problems >= 1, "the collision is in the API log");
    // Later changes of either side are held back too.
    stack
        .exec(
            "UPDATE product_stores SET sellable_quantity = 11 WHERE product_id = $1",
            &[&plain],
        )
        .await;
    settled(&stack).await;
    assert_eq!(mock.quantity(SELLER, "8690001"), None);
    assert_eq!(
        outcome_count(&stack.client, plain, "duplicate_key").await,
        2
    );
    // The data is fixed (products are not replicated: dispatch looks again by itself).
    stack
        .exec(
            "UPDATE products SET barcode = '8690002', sku = '8690002' WHERE id = $1",
            &[&spaced],
        )
        .await;
    wait_quantity(mock, SELLER, "8690001", 11).await;
    wait_quantity(mock, SELLER, "8690002", 5).await;
    eventually(
        Duration::from_secs(30),
        "the collision forgotten",
        || async {
            count(
                &stack.client,
                "SELECT count(*) FROM stock_sync.key_collisions",
                &[],
            )
            .await
                == 0
        },
    )
    .await;
    stack.stop().await;
}

/// A listing Hepsiburada fulfils itself refuses updates (`IsFulfilledByHB`): stocksync
/// learns it from the refusal, keeps it per listing, shows it in `status` and never pushes
/// the listing again, while the store's other listings go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_hepsiburada_fulfils_is_learnt_from_its_refusal_and_never_pushed_again() {
    let mut ids = (Uuid::nil(), Uuid::nil());
    let stack = start("edges_fulfilled", mock_config(), &[], async |c: &Client| {
        let (_, hb) = stores(c).await;
        let fulfilled = product(c, "HBF-1", 6, &[hb]).await;
        product(c, "HBF-2", 2, &[hb]).await;
        ids = (hb, fulfilled);
    })
    .await;
    let (hb, fulfilled) = ids;
    let mock = &stack.mock;
    wait_quantity(mock, MERCHANT, "HBF-1", 6).await;
    settled(&stack).await;
    assert!(mock.set_listing_flags(
        stocksync::mock::Marketplace::Hepsiburada,
        MERCHANT,
        "HBF-1",
        stocksync::mock::ListingFlags {
            fulfilled_by_hb: true,
            ..Default::default()
        },
    ));
    let set_all = "UPDATE product_stores SET sellable_quantity = sellable_quantity + 10";
    stack.exec(set_all, &[]).await;
    wait_quantity(mock, MERCHANT, "HBF-2", 12).await;
    eventually(Duration::from_secs(30), "the refusal learnt", || async {
        count(
            &stack.client,
            "SELECT count(*) FROM stock_sync.listing_state WHERE store_id = $1 AND product_id = $2 AND fulfilled_by_marketplace",
            &[&hb, &fulfilled],
        )
        .await
            == 1
    })
    .await;
    settled(&stack).await;
    let uploads_with_it = |mock: &stocksync::mock::MockMarketplace| {
        pushes(mock, MERCHANT)
            .iter()
            .filter(|r| r.status == 200 && r.item_count > 0)
            .count()
    };
    let before = uploads_with_it(mock);
    stack.exec(set_all, &[]).await;
    wait_quantity(mock, MERCHANT, "HBF-2", 22).await;
    settled(&stack).await;
    assert_eq!(uploads_with_it(mock), before + 1, "only HBF-2 was uploaded");
    assert_eq!(mock.quantity(MERCHANT, "HBF-1"), Some(6), "never changed");
    assert!(outcome_count(&stack.client, fulfilled, "fulfilled_by_marketplace").await >= 1);
    let status = stocksync::ops::status::read(&stack.client, "edges_fulfilled")
        .await
        .unwrap();
    assert_eq!(status.fulfilled_by_marketplace.len(), 1);
    assert_eq!(
        status.fulfilled_by_marketplace[0].key.as_deref(),
        Some("HBF-1")
    );
    assert!(stocksync::ops::status::render(&status).contains("fulfils itself"));
    stack.stop().await;
}

/// The identical-body rule is Trendyol's: Hepsiburada gets 60, 61, 60 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hepsiburada_takes_a_repeated_body_without_the_identical_window() {
    let mut ids = (Uuid::nil(), Uuid::nil());
    let stack = start(
        "edges_hb_identical",
        MockConfig {
            identical_window: Duration::from_secs(600),
            ..mock_config()
        },
        &[("STOCKSYNC_IDENTICAL_REQUEST_WINDOW", "10m".into())],
        async |c: &Client| {
            let (_, hb) = stores(c).await;
            ids = (hb, product(c, "HBI-1", 60, &[hb]).await);
        },
    )
    .await;
    let (_, item) = ids;
    let mock = &stack.mock;
    wait_quantity(mock, MERCHANT, "HBI-1", 60).await;
    for quantity in [61, 60] {
        stack
            .exec(
                "UPDATE product_stores SET sellable_quantity = $1 WHERE product_id = $2",
                &[&quantity, &item],
            )
            .await;
        wait_quantity(mock, MERCHANT, "HBI-1", i64::from(quantity)).await;
    }
    let bodies: Vec<String> = pushes(mock, MERCHANT)
        .into_iter()
        .map(|r| r.body_sha256)
        .collect();
    assert_eq!(bodies.len(), 3, "{bodies:?}");
    assert_eq!(
        bodies[0], bodies[2],
        "the same body went again within the window"
    );
    stack.stop().await;
}

/// A push whose connection was refused never reached Trendyol: it does not start the
/// identical-body window, so the same single-item body goes as soon as the marketplace is
/// reachable again (the window is 10 minutes here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_refused_before_it_left_does_not_start_the_identical_window() {
    let addr = free_addr();
    let mut ids = (Uuid::nil(), Uuid::nil());
    let stack = start(
        "edges_not_left",
        MockConfig {
            identical_window: Duration::from_secs(600),
            ..mock_config()
        },
        &[
            ("STOCKSYNC_IDENTICAL_REQUEST_WINDOW", "10m".into()),
            ("STOCKSYNC_TRENDYOL_URL", format!("http://{addr}")),
        ],
        async |c: &Client| {
            let (ty, _) = stores(c).await;
            ids = (ty, product(c, "NL-1", 8, &[ty]).await);
        },
    )
    .await;
    let (ty, _) = ids;
    eventually(Duration::from_secs(30), "a push refused at connect", || async {
        count(
            &stack.client,
            "SELECT count(*) FROM stock_sync.api_log WHERE type = 'UPDATE_STOCK' AND store_id = $1 AND NOT success",
            &[&ty],
        )
        .await
            >= 1
    })
    .await;
    let remembered = count(
        &stack.client,
        "SELECT count(*) FROM stock_sync.sent_requests WHERE store_id = $1 AND body_sha256 IS NOT NULL",
        &[&ty],
    )
    .await;
    assert_eq!(remembered, 0, "a body that never left counts for no window");
    // The marketplace comes up where the service looks for it.
    let mock = stocksync::mock::MockMarketplace::start(mock_config(), addr)
        .await
        .unwrap();
    wait_quantity(&mock, SELLER, "NL-1", 8).await;
    mock.shutdown().await;
    stack.stop().await;
}

/// `Retry-After: 0` and a date already past ask for no wait: the store waits its rate
/// window (3 s here) instead of retrying into the same throttle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_asking_for_no_wait_waits_the_rate_window() {
    let mut ids = (Uuid::nil(), Uuid::nil());
    let stack = start(
        "edges_429_zero",
        mock_config(),
        &[("STOCKSYNC_RATE_LIMIT_WINDOW", "3s".into())],
        async |c: &Client| {
            let (ty, _) = stores(c).await;
            ids = (ty, product(c, "RA-1", 1, &[ty]).await);
        },
    )
    .await;
    let (_, item) = ids;
    let mock = &stack.mock;
    wait_quantity(mock, SELLER, "RA-1", 1).await;
    for (quantity, header) in [(2, "0"), (3, "Tue, 14 Nov 2023 22:00:00 GMT")] {
        mock.set_faults(Faults {
            throttle_for_ms: Some(2_000),
            retry_after_header: Some(header.into()),
            scope: FaultScope::Push,
            ..Faults::default()
        });
        let first = pushes(mock, SELLER).len();
        stack
            .exec(
                "UPDATE product_stores SET sellable_quantity = $1 WHERE product_id = $2",
                &[&quantity, &item],
            )
            .await;
        wait_quantity(mock, SELLER, "RA-1", i64::from(quantity)).await;
        let ours = &pushes(mock, SELLER)[first..];
        let throttled = ours.iter().filter(|r| r.status == 429).count();
        assert_eq!(
            throttled, 1,
            "Retry-After {header:?}: one 429, then a wait of the rate window (3 s) that outlasts \
             the 2 s throttle: {ours:#?}"
        );
        mock.set_faults(Faults::default());
    }
    stack.stop().await;
}

/// A DBA's defaults for the database (`statement_timeout`, `idle_in_transaction_session_timeout`
/// of 1 ms, as an application's guard might be) do not cut stocksync's own sessions: each
/// says what it can live with, and the catalogue is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_default_timeouts_do_not_cut_stocksyncs_sessions() {
    let stack = start_after(
        "edges_timeouts",
        mock_config(),
        &[],
        async |c: &Client| {
            let (ty, _) = stores(c).await;
            for i in 0..50 {
                product(c, &format!("TO-{i:02}"), i + 1, &[ty]).await;
            }
        },
        async |c: &Client| {
            let db: String = c
                .query_one("SELECT current_database()", &[])
                .await
                .unwrap()
                .get(0);
            c.batch_execute(&format!(
                "ALTER DATABASE {db} SET statement_timeout = '1ms'; \
                 ALTER DATABASE {db} SET idle_in_transaction_session_timeout = '1ms'"
            ))
            .await
            .unwrap();
        },
    )
    .await;
    for i in [0, 24, 49] {
        wait_quantity(&stack.mock, SELLER, &format!("TO-{i:02}"), i64::from(i + 1)).await;
    }
    stack
        .exec(
            "UPDATE product_stores SET sellable_quantity = 77 WHERE product_id = (SELECT id FROM products WHERE barcode = 'TO-07')",
            &[],
        )
        .await;
    wait_quantity(&stack.mock, SELLER, "TO-07", 77).await;
    let client = connect(&stack.url).await;
    stack.stop().await;
    // No session of the database was ended by a timeout (an idle-in-transaction timeout ends
    // the session with FATAL; the service's sessions are gone now, so their counts are in).
    let fatal = "SELECT sessions_fatal FROM pg_stat_database WHERE datname = current_database()";
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fatal: i64 = client.query_one(fatal, &[]).await.unwrap().get(0);
    assert_eq!(
        fatal, 0,
        "sessions of stocksync ended by the database's timeouts"
    );
}
