//! Delivery end to end: PostgreSQL changes -> capture -> dispatch -> the project's mock
//! marketplaces over real HTTP. Checks quantities (sets included), only-changed sends,
//! inactive stores, credential pauses, item failures and the rate limits.

use crate::common;

mod credentials;
mod hepsiburada;

use std::time::Duration;

use common::stack::*;
use common::*;
use stocksync::mock::{Faults, MockAccount, MockConfig, MockMarketplace};
use tokio_postgres::Client;
use uuid::Uuid;

const TRENDYOL_SELLER: &str = "2001";
const HB_MERCHANT: &str = "6a1f0a8e-0000-4000-8000-000000000001";

struct Seed {
    trendyol: Uuid,
    hepsiburada: Uuid,
    inactive: Uuid,
    other_type: Uuid,
    mont: Uuid,
    eldiven: Uuid,
    atki: Uuid,
    kis_paketi: Uuid,
}

fn seed_ids() -> Seed {
    Seed {
        trendyol: uuid(),
        hepsiburada: uuid(),
        inactive: uuid(),
        other_type: uuid(),
        mont: uuid(),
        eldiven: uuid(),
        atki: uuid(),
        kis_paketi: uuid(),
    }
}

async fn load_seed(client: &Client, s: &Seed) {
    client
        .execute(
            "INSERT INTO stores (id, name, type, is_active, send_stock, seller_id, api_key, api_secret) VALUES \
             ($1, 'TY', 'TRENDYOL', true, true, $5, 'ty-key', 'ty-secret'), \
             ($2, 'HB', 'HEPSIBURADA', true, true, $6, NULL, 'hb-secret'), \
             ($3, 'TY off', 'TRENDYOL', false, true, '2002', 'k', 's'), \
             ($4, 'Shop', 'IKAS', true, true, 'x', 'k', 's')",
            &[&s.trendyol, &s.hepsiburada, &s.inactive, &s.other_type, &TRENDYOL_SELLER, &HB_MERCHANT],
        )
        .await
        .unwrap();
    for (id, code, name, kind) in [
        (s.mont, "MONT-1", "Mont", "SIMPLE"),
        (s.eldiven, "ELD-1", "Eldiven", "SIMPLE"),
        (s.atki, "ATK-1", "Atkı", "SIMPLE"),
        (s.kis_paketi, "SET-001", "Kış Paketi", "SET"),
    ] {
        client
            .execute("INSERT INTO products (id, barcode, sku, name, product_type) VALUES ($1, $2, $2, $3, $4)", &[&id, &code, &name, &kind])
            .await
            .unwrap();
    }
    for (component, quantity) in [(s.mont, 1i32), (s.eldiven, 2), (s.atki, 1)] {
        client
            .execute(
                "INSERT INTO product_set_items (id, set_product_id, component_product_id, quantity) VALUES ($1, $2, $3, $4)",
                &[&uuid(), &s.kis_paketi, &component, &quantity],
            )
            .await
            .unwrap();
    }
    for store in [s.trendyol, s.hepsiburada, s.inactive, s.other_type] {
        for (product, sellable) in [
            (s.mont, 50i32),
            (s.eldiven, 30),
            (s.atki, 40),
            (s.kis_paketi, 999),
        ] {
            client
                .execute(
                    "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity, committed_quantity) VALUES ($1, $2, $3, $4, 0)",
                    &[&uuid(), &product, &store, &sellable],
                )
                .await
                .unwrap();
        }
    }
}

fn mock_config() -> MockConfig {
    MockConfig {
        accounts: vec![
            MockAccount::trendyol(TRENDYOL_SELLER, "ty-key", "ty-secret"),
            MockAccount::hepsiburada(HB_MERCHANT, "hb-secret"),
        ],
        identical_window: Duration::from_secs(2),
        // As a live merchant account: only the authorised user agent is accepted.
        behaviour: stocksync::mock::Behaviour {
            hepsiburada_user_agent: Some("test_dev".into()),
            ..stocksync::mock::Behaviour::default()
        },
        ..MockConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_both_marketplaces_with_set_quantities() {
    let s = seed_ids();
    let stack = start("delivery_e2e", mock_config(), &[], async |c: &Client| {
        load_seed(c, &s).await
    })
    .await;
    let mock = &stack.mock;
    // First run pushes the truth: Kış Paketi = min(50/1, 30/2, 40/1) = 15; its own 999 ignored.
    for (seller, key) in [(TRENDYOL_SELLER, "SET-001"), (HB_MERCHANT, "SET-001")] {
        wait_quantity(mock, seller, key, 15).await;
    }
    wait_quantity(mock, TRENDYOL_SELLER, "ELD-1", 30).await;
    wait_quantity(mock, HB_MERCHANT, "MONT-1", 50).await;

    // An order takes Eldiven down to 0 in the Trendyol store: the set goes to 0 there.
    stack
        .exec(
            "UPDATE product_stores SET sellable_quantity = 0, committed_quantity = 30 WHERE product_id = $1 AND store_id = $2",
            &[&s.eldiven, &s.trendyol],
        )
        .await;
    wait_quantity(mock, TRENDYOL_SELLER, "SET-001", 0).await;
    wait_quantity(mock, TRENDYOL_SELLER, "ELD-1", 0).await;
    assert_eq!(
        mock.quantity(HB_MERCHANT, "SET-001"),
        Some(15),
        "the other store is unaffected"
    );

    // Above the cap: clamped to 20000.
    stack
        .exec("UPDATE product_stores SET sellable_quantity = 50000 WHERE product_id = $1 AND store_id = $2", &[&s.atki, &s.hepsiburada])
        .await;
    wait_quantity(mock, HB_MERCHANT, "ATK-1", 20000).await;

    // Requests: never to the inactive or foreign-type stores; no unchanged items sent;
    // every request carried the right User-Agent (the mock refuses otherwise). The positive
    // signal that dispatch has decided about every entry: all of them are closed, those of
    // the inactive and foreign stores with their gate's outcome.
    settled(&stack).await;
    let gated: i64 = stack
        .client
        .query_one(
            "SELECT count(*) FROM stock_sync.queue WHERE state = 'done' \
               AND ((store_id = $1 AND outcome = 'store_inactive') \
                 OR (store_id = $2 AND outcome = 'store_type_ignored'))",
            &[&s.inactive, &s.other_type],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        gated, 8,
        "every listing of the two gated stores closed by its gate"
    );
    let requests = mock.requests();
    assert!(requests
        .iter()
        .all(|r| !matches!(r.seller_id.as_deref(), Some("2002") | Some("x"))));
    assert!(requests.iter().all(|r| r.status == 200), "{requests:#?}");
    let unchanged: usize = requests.iter().map(|r| r.unchanged_items).sum();
    assert_eq!(unchanged, 0, "unchanged quantities were sent");

    // A no-op for sellable quantity sends nothing.
    let before = mock.requests().len();
    stack
        .exec(
            "UPDATE product_stores SET committed_quantity = 7 WHERE product_id = $1",
            &[&s.mont],
        )
        .await;
    // A change that computes to the same marketplace quantity sends nothing either.
    stack
        .exec("UPDATE product_stores SET sellable_quantity = 31 WHERE product_id = $1 AND store_id = $2", &[&s.eldiven, &s.hepsiburada])
        .await;
    wait_quantity(mock, HB_MERCHANT, "ELD-1", 31).await;
    // Decided, not just quiet: capture passed both updates and the set's entry in that store
    // closed as unchanged.
    settled(&stack).await;
    let set_unchanged: i64 = stack
        .client
        .query_one(
            "SELECT count(*) FROM stock_sync.queue WHERE product_id = $1 AND store_id = $2 \
               AND outcome = 'unchanged' AND sent_quantity = 15",
            &[&s.kis_paketi, &s.hepsiburada],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        set_unchanged >= 1,
        "the set's recomputation closed as unchanged"
    );
    let new: Vec<_> = mock
        .requests()
        .into_iter()
        .skip(before)
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(
        new.len(),
        1,
        "only Eldiven's change (set stays 15) is sent: {new:#?}"
    );
    assert_eq!(new[0].item_count, 1);

    // Inactive stores' entries are closed with a reason, not left pending.
    let open: i64 = stack
        .client
        .query_one(
            "SELECT count(*) FROM stock_sync.queue WHERE store_id IN ($1, $2) AND state <> 'done'",
            &[&s.inactive, &s.other_type],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0);
    let api_log: i64 = stack
        .client
        .query_one(
            "SELECT count(*) FROM stock_sync.api_log WHERE type = 'UPDATE_STOCK' AND success",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(api_log >= 3);
    let leaked: i64 = stack
        .client
        .query_one(
            "SELECT count(*) FROM stock_sync.api_log WHERE concat(request_body, response_body, error_message) ~ '(ty-secret|hb-secret|ty-key)'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0, "credentials in the API log");
    let _ = &stack.url;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_pause_only_that_store_and_bad_barcodes_do_not_block_batch_mates() {
    let s = seed_ids();
    let mut config = mock_config();
    // Trendyol knows every listing but Atkı's barcode; Hepsiburada's secret differs.
    config.accounts = vec![
        MockAccount::trendyol(TRENDYOL_SELLER, "ty-key", "ty-secret")
            .with_listings(["MONT-1", "ELD-1", "SET-001"]),
        MockAccount::hepsiburada(HB_MERCHANT, "another-secret"),
    ];
    let stack = start(
        "delivery_faults",
        config,
        &[("STOCKSYNC_MAX_ATTEMPTS", "2".into())],
        async |c: &Client| load_seed(c, &s).await,
    )
    .await;
    let mock = &stack.mock;
    wait_quantity(mock, TRENDYOL_SELLER, "SET-001", 15).await;
    wait_quantity(mock, TRENDYOL_SELLER, "MONT-1", 50).await;
    // Atkı failed at item level, twice, and is dead-lettered; the rest went through.
    eventually(Duration::from_secs(40), "Atkı dead-lettered", || async {
        stack
            .client
            .query_one("SELECT count(*) FROM stock_sync.queue WHERE state = 'dead' AND product_id = $1 AND store_id = $2", &[&s.atki, &s.trendyol])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    // The Hepsiburada store is paused with a reason; its entries wait.
    eventually(Duration::from_secs(20), "Hepsiburada store paused", || async {
        stack
            .client
            .query_opt("SELECT paused_reason FROM stock_sync.store_state WHERE store_id = $1 AND paused_reason IS NOT NULL", &[&s.hepsiburada])
            .await
            .unwrap()
            .is_some()
    })
    .await;
    let hb_requests = mock
        .requests()
        .iter()
        .filter(|r| r.seller_id.as_deref() == Some(HB_MERCHANT))
        .count();
    // Dispatch looks at a paused store every PAUSE_RECHECK (2 s), moving its `not_before` to
    // two seconds after the look: wait for a look that happened after the count above.
    let counted_at: chrono::DateTime<chrono::Utc> = stack
        .client
        .query_one("SELECT now()", &[])
        .await
        .unwrap()
        .get(0);
    eventually(
        Duration::from_secs(20),
        "dispatch looked at the paused store again",
        || async {
            stack
                .client
                .query_one(
                    "SELECT COALESCE(not_before > $2::timestamptz + interval '2 seconds', false) \
                     FROM stock_sync.store_state WHERE store_id = $1",
                    &[&s.hepsiburada, &counted_at],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
        },
    )
    .await;
    assert_eq!(
        mock.requests()
            .iter()
            .filter(|r| r.seller_id.as_deref() == Some(HB_MERCHANT))
            .count(),
        hb_requests,
        "a paused store gets no requests"
    );
    // The operator fixes the credentials: the pause lifts by itself and stock converges.
    stack
        .exec(
            "UPDATE stores SET api_secret = 'another-secret' WHERE id = $1",
            &[&s.hepsiburada],
        )
        .await;
    wait_quantity(mock, HB_MERCHANT, "SET-001", 15).await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_throttling_recover_and_limits_hold() {
    let s = seed_ids();
    let mut config = mock_config();
    config.faults = Faults {
        error_rate: 1.0,
        ..Faults::default()
    };
    let stack = start(
        "delivery_limits",
        config,
        &[
            ("STOCKSYNC_RATE_LIMIT_REQUESTS", "3".into()),
            ("STOCKSYNC_RATE_LIMIT_WINDOW", "2s".into()),
        ],
        async |c: &Client| load_seed(c, &s).await,
    )
    .await;
    let mock = &stack.mock;
    // Everything fails with 500 for a while...
    eventually(Duration::from_secs(10), "some 500s", || async {
        mock.requests().iter().filter(|r| r.status == 500).count() >= 2
    })
    .await;
    // ...then recovers: everything converges.
    mock.set_faults(Faults::default());
    wait_quantity(mock, TRENDYOL_SELLER, "SET-001", 15).await;
    wait_quantity(mock, HB_MERCHANT, "SET-001", 15).await;

    // Many changes, one at a time: never more than 3 pushes per 2 s per seller.
    for i in 0..12 {
        stack
            .exec("UPDATE product_stores SET sellable_quantity = $1 WHERE product_id = $2 AND store_id = $3", &[&(60 + i), &s.mont, &s.trendyol])
            .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    wait_quantity(mock, TRENDYOL_SELLER, "MONT-1", 71).await;
    settled(&stack).await;
    // The send-side record of every push (written before the request leaves), complete...
    let sent: Vec<chrono::DateTime<chrono::Utc>> = stack
        .client
        .query(
            "SELECT sent_at FROM stock_sync.sent_requests \
             WHERE store_id = $1 AND endpoint = 'trendyol.price-and-inventory' ORDER BY sent_at",
            &[&s.trendyol],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        sent.len(),
        trendyol_pushes(mock).len(),
        "one record per push"
    );
    // ...never holds more than 3 within 2 s.
    for (i, at) in sent.iter().enumerate() {
        let in_window = sent[i..]
            .iter()
            .take_while(|o| **o - *at < chrono::Duration::milliseconds(2000))
            .count();
        assert!(in_window <= 3, "more than 3 requests in 2 s from {at}");
    }
    assert!(mock
        .requests()
        .iter()
        .all(|r| r.status != 429 && r.status != 403 && r.status != 401));
    stack.stop().await;
}

/// Pushes to the Trendyol seller, in arrival order, with their arrival time.
fn trendyol_pushes(
    mock: &MockMarketplace,
) -> Vec<(
    chrono::DateTime<chrono::FixedOffset>,
    stocksync::mock::RequestRecord,
)> {
    mock.requests()
        .into_iter()
        .filter(|r| r.seller_id.as_deref() == Some(TRENDYOL_SELLER) && r.method == "POST")
        .map(|r| (chrono::DateTime::parse_from_rfc3339(&r.time).unwrap(), r))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_send_interval_identical_bodies_and_retry_after_are_honoured() {
    let s = seed_ids();
    let stack = start(
        "delivery_gates",
        mock_config(),
        &[("STOCKSYNC_MIN_SEND_INTERVAL", "1s".into())],
        async |c: &Client| load_seed(c, &s).await,
    )
    .await;
    let mock = &stack.mock;
    wait_quantity(mock, TRENDYOL_SELLER, "MONT-1", 50).await;
    let set_mont =
        "UPDATE product_stores SET sellable_quantity = $1 WHERE product_id = $2 AND store_id = $3";
    // 60, 61, then 60 again: the third body equals the first and must wait out the 2 s
    // identical-request window; every push waits 1 s after the previous one.
    let first = trendyol_pushes(mock).len();
    for quantity in [60, 61, 60] {
        stack
            .exec(set_mont, &[&quantity, &s.mont, &s.trendyol])
            .await;
        wait_quantity(mock, TRENDYOL_SELLER, "MONT-1", i64::from(quantity)).await;
    }
    let pushes = trendyol_pushes(mock);
    let ms = |a: &chrono::DateTime<chrono::FixedOffset>,
              b: &chrono::DateTime<chrono::FixedOffset>| (*b - *a).num_milliseconds();
    for pair in pushes.windows(2) {
        assert!(
            ms(&pair[0].0, &pair[1].0) >= 950,
            "pushes {} ms apart despite min_send_interval=1s",
            ms(&pair[0].0, &pair[1].0)
        );
    }
    for (i, (t, r)) in pushes.iter().enumerate() {
        for (u, o) in &pushes[i + 1..] {
            assert!(
                r.body_sha256 != o.body_sha256 || ms(t, u) >= 2000,
                "identical body sent twice within the window ({} ms)",
                ms(t, u)
            );
        }
    }
    let ours = &pushes[first..];
    assert_eq!(ours.len(), 3, "one push per change: {ours:#?}");
    assert_eq!(ours[0].1.body_sha256, ours[2].1.body_sha256);
    assert!(ms(&ours[0].0, &ours[2].0) >= 2000);

    // 429 with Retry-After: 3 s. The next push comes no earlier.
    mock.set_faults(Faults {
        throttle_for_ms: Some(3000),
        retry_after_secs: Some(3),
        ..Faults::default()
    });
    stack.exec(set_mont, &[&70, &s.mont, &s.trendyol]).await;
    wait_quantity(mock, TRENDYOL_SELLER, "MONT-1", 70).await;
    let pushes = trendyol_pushes(mock);
    let throttled = pushes
        .iter()
        .position(|(_, r)| r.status == 429)
        .expect("a push was throttled");
    let (t429, _) = &pushes[throttled];
    let (next, record) = &pushes[throttled + 1];
    assert_eq!(record.status, 200, "{record:#?}");
    assert!(
        ms(t429, next) >= 2900,
        "retried {} ms after a 429 with Retry-After: 3",
        ms(t429, next)
    );
    assert_eq!(
        pushes.iter().filter(|(_, r)| r.status == 429).count(),
        1,
        "no request while the Retry-After lasted"
    );
    stack.stop().await;
}

/// The `stores` table is not replicated: a store switched back on (or given a marketplace
/// type) is noticed by dispatch and gets every listing sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_switched_on_gets_its_listings() {
    let s = seed_ids();
    let mut config = mock_config();
    config
        .accounts
        .push(MockAccount::trendyol("2002", "k", "s"));
    let stack = start("delivery_reopen", config, &[], async |c: &Client| {
        load_seed(c, &s).await
    })
    .await;
    let mock = &stack.mock;
    wait_quantity(mock, TRENDYOL_SELLER, "SET-001", 15).await;
    eventually(Duration::from_secs(10), "inactive store's entries closed", || async {
        stack
            .client
            .query_one(
                "SELECT count(*) FROM stock_sync.queue WHERE store_id = $1 AND outcome = 'store_inactive'",
                &[&s.inactive],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 4
    })
    .await;
    assert_eq!(
        mock.quantity("2002", "SET-001"),
        None,
        "nothing sent while inactive"
    );
    stack
        .exec(
            "UPDATE stores SET is_active = true WHERE id = $1",
            &[&s.inactive],
        )
        .await;
    for (key, quantity) in [
        ("SET-001", 15),
        ("MONT-1", 50),
        ("ELD-1", 30),
        ("ATK-1", 40),
    ] {
        wait_quantity(mock, "2002", key, quantity).await;
    }
    stack.stop().await;
}

/// A body the marketplace refused with a 5xx was not taken: its retry is not held back by
/// the identical-body window (60 s here), only by the store's short backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_refused_with_a_server_error_is_retried_without_waiting_the_identical_window() {
    let s = seed_ids();
    let mut config = mock_config();
    config.identical_window = Duration::from_secs(60);
    let stack = start(
        "delivery_retry_body",
        config,
        &[("STOCKSYNC_IDENTICAL_REQUEST_WINDOW", "60s".into())],
        async |c: &Client| load_seed(c, &s).await,
    )
    .await;
    let mock = &stack.mock;
    wait_quantity(mock, TRENDYOL_SELLER, "MONT-1", 50).await;
    mock.set_faults(Faults {
        error_rate: 1.0,
        scope: stocksync::mock::FaultScope::Push,
        ..Faults::default()
    });
    stack
        .exec(
            "UPDATE product_stores SET sellable_quantity = 77 WHERE product_id = $1 AND store_id = $2",
            &[&s.mont, &s.trendyol],
        )
        .await;
    eventually(
        Duration::from_secs(10),
        "the push failed with 500",
        || async { trendyol_pushes(mock).iter().any(|(_, r)| r.status == 500) },
    )
    .await;
    mock.set_faults(Faults::default());
    // Well within the 60 s identical window (wait_quantity gives up after 30 s).
    wait_quantity(mock, TRENDYOL_SELLER, "MONT-1", 77).await;
    let pushes = trendyol_pushes(mock);
    let (failed, ok) = (
        pushes.iter().rev().find(|(_, r)| r.status == 500).unwrap(),
        pushes.last().unwrap(),
    );
    assert_eq!(
        failed.1.body_sha256, ok.1.body_sha256,
        "the same body was retried"
    );
    // The refused request's body was forgotten for the identical-body rule; the accepted
    // one still counts.
    let remembered: i64 = stack
        .client
        .query_one(
            "SELECT count(*) FROM stock_sync.sent_requests WHERE store_id = $1 AND body_sha256 = $2",
            &[&s.trendyol, &ok.1.body_sha256],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(remembered, 1, "only the accepted body counts as sent");
    stack.stop().await;
}

/// `STOCKSYNC_DRY_RUN=true`: the payloads are computed and written to the API log, nothing
/// is sent and the marketplace's last accepted quantities are not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_logs_payloads_and_sends_nothing() {
    let s = seed_ids();
    let stack = start(
        "delivery_dry",
        mock_config(),
        &[("STOCKSYNC_DRY_RUN", "true".into())],
        async |c: &Client| load_seed(c, &s).await,
    )
    .await;
    let client = &stack.client;
    eventually(
        Duration::from_secs(30),
        "every listing handled in dry run",
        || async {
            client
                .query_one(
                    "SELECT count(*) FILTER (WHERE outcome = 'dry_run') = 8 \
                        AND count(*) FILTER (WHERE state <> 'done') = 0 \
                 FROM stock_sync.queue",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, bool>(0)
        },
    )
    .await;
    let bodies: Vec<String> = client
        .query(
            "SELECT request_body FROM stock_sync.api_log WHERE type = 'DRY_RUN' AND store_id = $1",
            &[&s.trendyol],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        bodies
            .iter()
            .any(|b| b.contains(r#"{"barcode":"SET-001","quantity":15}"#)),
        "the would-be Trendyol payload is logged: {bodies:#?}"
    );
    let dry: i64 = client
        .query_one(
            "SELECT count(*) FROM stock_sync.queue WHERE outcome = 'dry_run'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        dry, 8,
        "4 listings in each of the 2 active marketplace stores"
    );
    assert!(stack.mock.requests().is_empty(), "nothing sent");
    let told: i64 = client
        .query_one("SELECT count(*) FROM stock_sync.listing_state", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(told, 0, "nothing counts as told in a dry run");
    stack.stop().await;
}

/// A batch row whose stored items cannot be read (edited by hand) is not polled forever: it
/// is expired, and the listings it was the last push of are sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_unreadable_items_is_expired_and_its_listings_sent_again() {
    let s = seed_ids();
    let stack = start(
        "delivery_bad_batch",
        mock_config(),
        &[],
        async |c: &Client| load_seed(c, &s).await,
    )
    .await;
    let mock = &stack.mock;
    wait_quantity(mock, TRENDYOL_SELLER, "MONT-1", 50).await;
    // Nothing else pending or polling: the resend must be a push of its own.
    settled(&stack).await;
    let before = trendyol_pushes(mock).len();

    // One statement: the poller must not read the batch before the listing names it.
    let batch: i64 = stack
        .client
        .query_one(
            "WITH b AS (
                 INSERT INTO stock_sync.batches (store_id, provider, batch_ref, items, next_poll_at)
                 VALUES ($1, 'TRENDYOL', 'hand-edited', '{\"not\": \"items\"}', now()) RETURNING id
             ), l AS (
                 UPDATE stock_sync.listing_state SET sent_quantity = 50, sent_batch_id = (SELECT id FROM b)
                 WHERE store_id = $1 AND product_id = $2
             )
             SELECT id FROM b",
            &[&s.trendyol, &s.mont],
        )
        .await
        .unwrap()
        .get(0);

    eventually(Duration::from_secs(30), "the batch expired", || async {
        let state: String = stack
            .client
            .query_one(
                "SELECT state FROM stock_sync.batches WHERE id = $1",
                &[&batch],
            )
            .await
            .unwrap()
            .get(0);
        state == "expired"
    })
    .await;
    eventually(Duration::from_secs(30), "MONT-1 sent again", || async {
        trendyol_pushes(mock)[before..]
            .iter()
            .any(|(_, r)| r.status == 200 && r.item_count == 1 && r.unchanged_items == 1)
    })
    .await;
    let retried: i64 = stack
        .client
        .query_one(
            "SELECT count(*) FROM stock_sync.queue
             WHERE store_id = $1 AND product_id = $2 AND reason = 'RETRY' AND last_error LIKE '%unreadable%'",
            &[&s.trendyol, &s.mont],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(retried, 1);
    // Only that listing: nothing else of the store was sent again.
    let pushes = trendyol_pushes(mock);
    let again: usize = pushes[before..].iter().map(|(_, r)| r.item_count).sum();
    assert_eq!(again, 1, "{:#?}", &pushes[before..]);
    stack.stop().await;
}

/// A poll that fails on the database after it leased its batch (here its connection is
/// terminated while it waits to finish the batch) gives the lease back: the batch is polled
/// again after the usual gap, not left until its 30-second lease runs out (what a server
/// restart used to cost every batch being polled at that moment).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poll_that_fails_on_the_database_gives_its_lease_back() {
    let s = seed_ids();
    let stack = start(
        "delivery_poll_lease",
        mock_config(),
        &[],
        async |c: &Client| load_seed(c, &s).await,
    )
    .await;
    let mock = &stack.mock;
    wait_quantity(mock, TRENDYOL_SELLER, "MONT-1", 50).await;
    settled(&stack).await;
    // The batch result is held at the marketplace long enough to lock the row meanwhile.
    mock.set_faults(Faults {
        latency_ms: 3000,
        scope: stocksync::mock::FaultScope::Status,
        ..Faults::default()
    });
    // Ready before the batch exists: the row is locked within the poll's 3 s.
    let mut holder = connect(&stack.url).await;
    let holder_pid: i32 = holder
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    // A batch the marketplace does not know: its poll ends by expiring it.
    let batch: i64 = stack
        .client
        .query_one(
            "INSERT INTO stock_sync.batches (store_id, provider, batch_ref, items, next_poll_at) \
             VALUES ($1, 'TRENDYOL', 'unknown-to-the-marketplace', '[]', now()) RETURNING id",
            &[&s.trendyol],
        )
        .await
        .unwrap()
        .get(0);
    let lease = || async {
        stack
            .client
            .query_one(
                "SELECT polls, next_poll_at FROM stock_sync.batches WHERE id = $1",
                &[&batch],
            )
            .await
            .unwrap()
    };
    eventually(Duration::from_secs(10), "the poll leased", || async {
        lease().await.get::<_, i32>(0) == 1
    })
    .await;
    let leased_until: chrono::DateTime<chrono::Utc> = lease().await.get(1);
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        "SELECT 1 FROM stock_sync.batches WHERE id = $1 FOR UPDATE",
        &[&batch],
    )
    .await
    .unwrap();
    let blocked_poller = || async {
        stack
            .client
            .query_opt(
                // Its own database: a slot being created anywhere in the cluster waits for
                // the holder's transaction too.
                "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid)) \
                   AND datname = current_database() AND backend_type = 'client backend'",
                &[&holder_pid],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, i32>(0))
    };
    eventually(
        Duration::from_secs(20),
        "the poller waiting for the row",
        || async { blocked_poller().await.is_some() },
    )
    .await;
    let poller = blocked_poller().await.unwrap();
    stack
        .client
        .execute("SELECT pg_terminate_backend($1)", &[&poller])
        .await
        .unwrap();
    mock.set_faults(Faults::default());
    tx.rollback().await.unwrap();
    eventually(Duration::from_secs(60), "the batch expired", || async {
        let state: String = stack
            .client
            .query_one(
                "SELECT state FROM stock_sync.batches WHERE id = $1",
                &[&batch],
            )
            .await
            .unwrap()
            .get(0);
        state == "expired"
    })
    .await;
    let row = stack
        .client
        .query_one(
            "SELECT polls, finished_at FROM stock_sync.batches WHERE id = $1",
            &[&batch],
        )
        .await
        .unwrap();
    let finished_at: chrono::DateTime<chrono::Utc> = row.get(1);
    assert_eq!(row.get::<_, i32>(0), 2, "polled once more");
    assert!(
        finished_at < leased_until,
        "polled again only when the lease ran out ({leased_until}): finished at {finished_at}"
    );
    stack.stop().await;
}

/// Capture holds its leader lock for as long as it streams. A store whose dispatch lock key
/// equals the slot's key must still be dispatched: the two locks have classes of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_lock_key_equals_the_slot_hash_is_dispatched() {
    const SLOT_NAME: &str = "delivery_lock_key";
    let probe = connect(&cluster().url_for("postgres", "postgres")).await;
    let slot_key: i32 = probe
        .query_one("SELECT hashtext($1)", &[&SLOT_NAME])
        .await
        .unwrap()
        .get(0);
    // store_key folds the uuid's four 32-bit words with XOR: choose the lowest word so the
    // fold is the slot's key.
    let high = uuid().as_u128() & !0xffff_ffff_u128;
    let fold = |v: u128| (v ^ (v >> 32) ^ (v >> 64) ^ (v >> 96)) as u32;
    let low = fold(high) ^ (slot_key as u32);
    let mut s = seed_ids();
    s.trendyol = Uuid::from_u128(high | u128::from(low));
    assert_eq!(stocksync::locks::store_key(s.trendyol), slot_key);
    let stack = start(SLOT_NAME, mock_config(), &[], async |c: &Client| {
        load_seed(c, &s).await
    })
    .await;
    wait_quantity(&stack.mock, TRENDYOL_SELLER, "SET-001", 15).await;
    stack.stop().await;
}
