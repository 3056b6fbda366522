//! Hepsiburada uploads: the batch size a 413 leaves, at most five open uploads across the
//! splits of a cycle, and upload results that name no sku of the request.

use std::time::Duration;

use super::*;
use crate::common::stack::*;
use crate::common::*;

/// A Hepsiburada store `store` selling `products` (sku, sellable quantity), with credentials.
pub(super) async fn hepsiburada_store(
    client: &Client,
    store: Uuid,
    products: &[(Uuid, &str, i32)],
) {
    client
        .execute(
            "INSERT INTO stores (id, name, type, is_active, send_stock, seller_id, api_key, api_secret) \
             VALUES ($1, 'HB', 'HEPSIBURADA', true, true, $2, NULL, 'hb-secret')",
            &[&store, &HB_MERCHANT],
        )
        .await
        .unwrap();
    for (id, sku, _) in products {
        client
            .execute(
                "INSERT INTO products (id, barcode, sku, name, product_type) VALUES ($1, $2, $2, $2, 'SIMPLE')",
                &[id, sku],
            )
            .await
            .unwrap();
    }
}

/// `products`' listings of `store`, in one transaction (one capture, one claim).
pub(super) async fn list_products(client: &Client, store: Uuid, products: &[(Uuid, &str, i32)]) {
    let ids: Vec<Uuid> = products.iter().map(|(id, _, _)| *id).collect();
    let quantities: Vec<i32> = products.iter().map(|(_, _, q)| *q).collect();
    client
        .execute(
            "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity, committed_quantity) \
             SELECT gen_random_uuid(), u.product_id, $1, u.quantity, 0 \
             FROM unnest($2::uuid[], $3::int[]) AS u(product_id, quantity)",
            &[&store, &ids, &quantities],
        )
        .await
        .unwrap();
}

/// A 413 leaves the store a smaller batch size; lifting an unrelated pause (here: the
/// credentials were fixed) keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_size_a_413_left_survives_an_unrelated_unpause() {
    use stocksync::stores::{gates, state, Gate};
    let url = fresh_database("delivery_413_unpause");
    let client = connect(&url).await;
    setup(&url, "delivery_413_unpause", "delivery_413_unpause").await;
    let store = uuid();
    hepsiburada_store(&client, store, &[]).await;
    state::read(&client, store, Duration::ZERO).await.unwrap();
    state::limit_batch(&client, store, 250).await.unwrap();
    let pause = state::Pause {
        kind: state::PauseKind::Credentials,
        reason: "credentials refused (401)",
        fingerprint: "the credentials before the fix",
        look_again_after: Duration::ZERO,
        forbidden: false,
    };
    state::pause(&client, store, &pause).await.unwrap();
    let user_agents = stocksync::marketplace::UserAgents {
        hepsiburada_default: Some("test_dev".into()),
        ..Default::default()
    };
    let fingerprint_key = stocksync::stores::state::fingerprint_key(&client)
        .await
        .unwrap();
    let settings = gates::GateSettings {
        min_send_interval: Duration::ZERO,
        user_agents: &user_agents,
        fingerprint_key: &fingerprint_key,
    };
    // The credentials in `stores` differ from the refused ones: the pause lifts.
    let Gate::Open(open) = gates::check(&client, store, settings).await.unwrap() else {
        panic!("the pause should have lifted");
    };
    let after = state::read(&client, store, Duration::ZERO).await.unwrap();
    assert!(after.paused_reason.is_none());
    assert_eq!(after.batch_limit, Some(250), "the 413's batch size is kept");
    assert_eq!(open.state.batch_limit, Some(250));
}

/// At most five Hepsiburada uploads are open at once, also when a 400 splits a batch into
/// halves that each become an upload of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_of_a_refused_batch_respect_the_open_upload_cap() {
    let store = uuid();
    let products = [
        (uuid(), "CAP-1", 5),
        (uuid(), "CAP-2", 5),
        // Above what the mock accepts: the batch of four is refused (400) and split.
        (uuid(), "CAP-3", 500),
        (uuid(), "CAP-4", 5),
    ];
    let mut config = mock_config();
    config.max_quantity = 100;
    // Uploads stay in processing for the whole test: every accepted one stays open.
    config.processing_delay = Duration::from_secs(3600);
    let stack = start("delivery_open_uploads", config, &[], async |c: &Client| {
        hepsiburada_store(c, store, &products).await
    })
    .await;
    // Four uploads are open already (not polled again within the test).
    for i in 0..4 {
        stack
            .exec(
                "INSERT INTO stock_sync.batches (store_id, provider, batch_ref, items, next_poll_at) \
                 VALUES ($1, 'HEPSIBURADA', $2, '[]', now() + interval '1 hour')",
                &[&store, &format!("open-{i}")],
            )
            .await;
    }
    list_products(&stack.client, store, &products).await;
    let open = || async {
        stack
            .client
            .query_one(
                "SELECT count(*) FROM stock_sync.batches WHERE store_id = $1 AND state = 'polling'",
                &[&store],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    // The batch was refused and split; the cycle is over once nothing is claimed.
    eventually_explained(
        Duration::from_secs(60),
        "the batch refused, split and its cycle over",
        || async {
            let refused = stack
                .mock
                .requests()
                .iter()
                .any(|r| r.endpoint.as_deref() == Some("push") && r.status == 400 && r.item_count == 4);
            let in_flight: i64 = stack
                .client
                .query_one(
                    "SELECT count(*) FROM stock_sync.queue WHERE store_id = $1 AND state = 'in_flight'",
                    &[&store],
                )
                .await
                .unwrap()
                .get(0);
            refused && in_flight == 0 && open().await >= 5
        },
        || async { format!("{} uploads open", open().await) },
    )
    .await;
    assert_eq!(open().await, 5, "at most five open uploads");
    // What could not leave waits, pending, for an upload to finish.
    let pending: i64 = stack
        .client
        .query_one(
            "SELECT count(*) FROM stock_sync.queue WHERE store_id = $1 AND state = 'pending'",
            &[&store],
        )
        .await
        .unwrap()
        .get(0);
    assert!(pending >= 1, "the rest of the split stays pending");
    stack.stop().await;
}

/// An upload result whose error row names no sku of the request (here only Hepsiburada's own
/// `hepsiburadaSku`) makes the upload's outcome unknown: its items are sent again without an
/// attempt counted, but only a few times in a row; then each unknown outcome counts an
/// attempt, and `max_attempts` dead-letters the item instead of resending it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_whose_result_names_no_sku_of_the_request_end_in_a_dead_letter() {
    let store = uuid();
    let ghost = (uuid(), "GHOST-1", 7);
    let mut config = mock_config();
    // The merchant has no such listing: the upload status has an error row for it, naming
    // only a hepsiburadaSku.
    config.accounts =
        vec![MockAccount::hepsiburada(HB_MERCHANT, "hb-secret").with_listings(["OTHER-1"])];
    config.behaviour.upload_error_row_skus = stocksync::mock::ErrorRowSkus::HepsiburadaOnly;
    let max_attempts = 2;
    let stack = start(
        "delivery_unknown_rows",
        config,
        &[("STOCKSYNC_MAX_ATTEMPTS", max_attempts.to_string())],
        async |c: &Client| {
            hepsiburada_store(c, store, &[ghost]).await;
            list_products(c, store, &[ghost]).await;
        },
    )
    .await;
    let accepted_uploads = || {
        stack
            .mock
            .requests()
            .iter()
            .filter(|r| r.endpoint.as_deref() == Some("push") && r.status == 200)
            .count()
    };
    let dead = || async {
        stack
            .client
            .query_opt(
                "SELECT attempts, last_error FROM stock_sync.queue WHERE store_id = $1 AND state = 'dead'",
                &[&store],
            )
            .await
            .unwrap()
            .map(|r| (r.get::<_, i32>(0), r.get::<_, String>(1)))
    };
    eventually_explained(
        Duration::from_secs(90),
        "the item dead-lettered",
        || async { dead().await.is_some() },
        || async { format!("{} uploads accepted so far", accepted_uploads()) },
    )
    .await;
    let (attempts, error) = dead().await.unwrap();
    assert_eq!(attempts, max_attempts);
    assert!(error.contains("unreadable item by item"), "{error}");
    // The first few unknown outcomes were free; then every one counted.
    assert_eq!(
        accepted_uploads(),
        stocksync::dispatch::FREE_UNKNOWN_OUTCOMES as usize + max_attempts as usize
    );
    stack.stop().await;
}
