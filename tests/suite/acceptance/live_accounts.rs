//! What live marketplace accounts do that a friendly mock does not (issue 10), each through
//! real HTTP against the mock taught the same trick: the Hepsiburada user agent, upload status
//! words, 403 blocks, unexpected statuses, 413, Trendyol's barcode normalisation, listing
//! flags, application rows of other shapes, the per-minute caps, and readiness when dispatch
//! stalls.

use crate::common;

use std::time::Duration;

use common::stack::*;
use common::*;
use stocksync::marketplace::{Endpoint, ServiceGroup};
use stocksync::mock::{
    Behaviour, FaultScope, Faults, ListingFlags, Marketplace, MockAccount, MockConfig,
};
use stocksync::stores::{LimitSettings, Limiter, RequestKind};
use tokio_postgres::Client;
use uuid::Uuid;

const TY_SELLER: &str = "5001";
const HB_ONE: &str = "6a1f0a8e-0000-4000-8000-0000000000a1";
const HB_TWO: &str = "6a1f0a8e-0000-4000-8000-0000000000a2";

fn mock(behaviour: Behaviour) -> MockConfig {
    MockConfig {
        accounts: vec![
            MockAccount::trendyol(TY_SELLER, "ty-key", "ty-secret"),
            MockAccount::hepsiburada(HB_ONE, "hb-secret-1"),
            MockAccount::hepsiburada(HB_TWO, "hb-secret-2"),
        ],
        identical_window: Duration::from_secs(2),
        behaviour,
        ..MockConfig::default()
    }
}

fn authorised(user_agent: &str) -> Behaviour {
    Behaviour {
        hepsiburada_user_agent: Some(user_agent.into()),
        ..Behaviour::default()
    }
}

/// Stores of the tests: one Trendyol, two Hepsiburada.
struct Stores {
    trendyol: Uuid,
    hb_one: Uuid,
    hb_two: Uuid,
}

impl Stores {
    fn new() -> Stores {
        Stores {
            trendyol: uuid(),
            hb_one: uuid(),
            hb_two: uuid(),
        }
    }

    async fn load(&self, c: &Client) {
        c.execute(
            "INSERT INTO stores (id, name, type, is_active, send_stock, seller_id, api_key, api_secret) VALUES \
             ($1, 'TY', 'TRENDYOL', true, true, $4, 'ty-key', 'ty-secret'), \
             ($2, 'HB one', 'HEPSIBURADA', true, true, $5, NULL, 'hb-secret-1'), \
             ($3, 'HB two', 'HEPSIBURADA', true, true, $6, NULL, 'hb-secret-2')",
            &[&self.trendyol, &self.hb_one, &self.hb_two, &TY_SELLER, &HB_ONE, &HB_TWO],
        )
        .await
        .unwrap();
    }
}

/// A simple product listed in `stores` with `sellable`; its barcode and sku are `code`.
async fn product(c: &Client, code: &str, stores: &[Uuid], sellable: i32) -> Uuid {
    let id = uuid();
    c.execute(
        "INSERT INTO products (id, barcode, sku, name, product_type) VALUES ($1, $2, $2, $2, 'SIMPLE')",
        &[&id, &code],
    )
    .await
    .unwrap();
    for store in stores {
        c.execute(
            "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity) VALUES ($1, $2, $3, $4)",
            &[&uuid(), &id, store, &sellable],
        )
        .await
        .unwrap();
    }
    id
}

async fn set_stock(stack: &Stack, product: Uuid, store: Uuid, sellable: i32) {
    stack
        .exec(
            "UPDATE product_stores SET sellable_quantity = $1 WHERE product_id = $2 AND store_id = $3",
            &[&sellable, &product, &store],
        )
        .await;
}

/// `(pause_kind, paused_reason, next probe)` of a store.
async fn pause_of(c: &Client, store: Uuid) -> Option<(Option<String>, String, Option<String>)> {
    c.query_opt(
        "SELECT pause_kind, paused_reason, not_before::text FROM stock_sync.store_state \
         WHERE store_id = $1 AND paused_reason IS NOT NULL",
        &[&store],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
}

fn pushes_to(stack: &Stack, seller: &str) -> Vec<stocksync::mock::RequestRecord> {
    stack
        .mock
        .requests()
        .into_iter()
        .filter(|r| r.seller_id.as_deref() == Some(seller) && r.method == "POST")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hepsiburada_store_without_a_user_agent_is_paused_and_sent_nothing() {
    let s = Stores::new();
    let per_store = format!("{}=acme_dev", s.hb_one);
    let stack = start(
        "live_user_agent",
        mock(authorised("acme_dev")),
        &[
            // No global user agent: only the first Hepsiburada store has one.
            ("STOCKSYNC_HEPSIBURADA_USER_AGENT", String::new()),
            ("STOCKSYNC_HEPSIBURADA_USER_AGENT_PER_STORE", per_store),
            ("STOCKSYNC_TRENDYOL_INTEGRATOR", "AcmeSync".into()),
        ],
        async |c: &Client| {
            s.load(c).await;
            product(c, "P-1", &[s.trendyol, s.hb_one, s.hb_two], 7).await;
        },
    )
    .await;
    wait_quantity(&stack.mock, TY_SELLER, "P-1", 7).await;
    wait_quantity(&stack.mock, HB_ONE, "P-1", 7).await;
    eventually(
        Duration::from_secs(20),
        "the second store paused",
        || async { pause_of(&stack.client, s.hb_two).await.is_some() },
    )
    .await;
    let (kind, reason, _) = pause_of(&stack.client, s.hb_two).await.unwrap();
    assert_eq!(kind.as_deref(), Some("not_configured"));
    assert!(
        reason.contains("STOCKSYNC_HEPSIBURADA_USER_AGENT"),
        "the reason names the setting: {reason}"
    );
    assert!(
        stack
            .mock
            .requests()
            .iter()
            .all(|r| r.seller_id.as_deref() != Some(HB_TWO)),
        "a store without a user agent is never sent a request"
    );
    // The integrator name is in Trendyol's User-Agent; the authorised name in Hepsiburada's.
    let ty = pushes_to(&stack, TY_SELLER);
    assert!(ty
        .iter()
        .all(|r| r.user_agent.as_deref() == Some("5001 - AcmeSync")));
    assert!(pushes_to(&stack, HB_ONE)
        .iter()
        .all(|r| r.user_agent.as_deref() == Some("acme_dev")));
    let status = stocksync::ops::status::read(&stack.client, "live_user_agent")
        .await
        .unwrap();
    let two = status
        .stores
        .iter()
        .find(|st| st.store_id == s.hb_two.to_string())
        .unwrap();
    assert_eq!(two.pause_kind.as_deref(), Some("not_configured"));
    let url = stack.url.clone();
    stack.stop().await;

    // `check` (with the slot free again) names the store and the setting, and fails.
    let out = std::process::Command::new(binary())
        .arg("check")
        .env_clear()
        .env("DATABASE_URL", &url)
        .env("STOCKSYNC_SLOT", "live_user_agent")
        .env("STOCKSYNC_PUBLICATION", "live_user_agent")
        .env(
            "STOCKSYNC_HEPSIBURADA_USER_AGENT_PER_STORE",
            format!("{}=acme_dev", s.hb_one),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&s.hb_two.to_string())
            && stderr.contains("STOCKSYNC_HEPSIBURADA_USER_AGENT")
            && !stderr.contains(&s.hb_one.to_string()),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_status_words_are_read_in_any_case_and_an_unknown_word_is_never_success() {
    let s = Stores::new();
    let mut p = Uuid::nil();
    let stack = start(
        "live_words",
        mock(Behaviour {
            upload_done_word: "Gelecek".into(),
            ..authorised("test_dev")
        }),
        &[],
        async |c: &Client| {
            s.load(c).await;
            p = product(c, "W-1", &[s.hb_one], 3).await;
        },
    )
    .await;
    // Pushed and applied at the marketplace, but its upload reports a word nobody knows: the
    // result stays open and nothing counts as accepted.
    wait_quantity(&stack.mock, HB_ONE, "W-1", 3).await;
    let accepted = || async {
        stack
            .client
            .query_opt(
                "SELECT accepted_quantity FROM stock_sync.listing_state WHERE store_id = $1 AND product_id = $2",
                &[&s.hb_one, &p],
            )
            .await
            .unwrap()
            .and_then(|r| r.get::<_, Option<i32>>(0))
    };
    eventually(
        Duration::from_secs(20),
        "the upload polled twice",
        || async {
            stack
                .mock
                .requests()
                .iter()
                .filter(|r| r.seller_id.as_deref() == Some(HB_ONE) && r.method == "GET")
                .count()
                >= 2
        },
    )
    .await;
    assert_eq!(accepted().await, None, "an unknown word is never success");
    let open: i64 = stack
        .client
        .query_one(
            "SELECT count(*) FROM stock_sync.batches WHERE store_id = $1 AND state = 'polling'",
            &[&s.hb_one],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 1, "the upload stays pending");
    let metrics = stocksync::metrics::metrics().render();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("stocksync_unknown_status_words_total{provider=\"HEPSIBURADA\"}")
            && !l.ends_with(" 0")),
        "counted in a metric"
    );
    // The same upload reported in another case and with underscores: read as done.
    stack.mock.set_behaviour(Behaviour {
        upload_done_word: "completed_with_errors".into(),
        ..authorised("test_dev")
    });
    eventually(Duration::from_secs(60), "the upload accepted", || async {
        accepted().await == Some(3)
    })
    .await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_pauses_the_store_which_probes_itself_and_resumes() {
    let s = Stores::new();
    let mut p = Uuid::nil();
    let stack = start(
        "live_forbidden",
        mock(authorised("test_dev")),
        &[("STOCKSYNC_FORBIDDEN_BACKOFF", "1s".into())],
        async |c: &Client| {
            s.load(c).await;
            p = product(c, "F-1", &[s.trendyol], 1).await;
        },
    )
    .await;
    wait_quantity(&stack.mock, TY_SELLER, "F-1", 1).await;
    // An IP block: every push is answered 403 for 4 s.
    stack.mock.set_faults(Faults {
        status: Some(403),
        status_for_ms: Some(4000),
        scope: FaultScope::Push,
        ..Faults::default()
    });
    set_stock(&stack, p, s.trendyol, 2).await;
    eventually(
        Duration::from_secs(20),
        "the store paused as forbidden",
        || async {
            pause_of(&stack.client, s.trendyol)
                .await
                .is_some_and(|(kind, _, _)| kind.as_deref() == Some("forbidden"))
        },
    )
    .await;
    let status = stocksync::ops::status::read(&stack.client, "live_forbidden")
        .await
        .unwrap();
    let ty = status
        .stores
        .iter()
        .find(|st| st.store_id == s.trendyol.to_string())
        .unwrap();
    assert_eq!(ty.pause_kind.as_deref(), Some("forbidden"));
    assert!(ty.next_probe_at.is_some(), "status shows the next probe");
    // It probes itself (one request per try, the wait doubling) and resumes once accepted.
    wait_quantity(&stack.mock, TY_SELLER, "F-1", 2).await;
    eventually(Duration::from_secs(60), "the pause lifted", || async {
        pause_of(&stack.client, s.trendyol).await.is_none()
    })
    .await;
    let refused: Vec<_> = pushes_to(&stack, TY_SELLER)
        .into_iter()
        .filter(|r| r.status == 403)
        .collect();
    assert!(
        refused.iter().all(|r| r.item_count <= 1),
        "a probe is one request of one item: {refused:#?}"
    );
    // While forbidden, the store asked at most once per doubling wait (1 s, 2 s, 4 s...).
    assert!(refused.len() <= 4, "{} refused pushes", refused.len());
    let attempts: i32 = stack
        .client
        .query_one(
            "SELECT coalesce(max(attempts), 0) FROM stock_sync.queue WHERE store_id = $1",
            &[&s.trendyol],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 0, "a 403 is the store's problem, not the item's");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpected_statuses_keep_entries_pending_and_a_413_halves_the_batch() {
    let s = Stores::new();
    let mut products = Vec::new();
    let stack = start(
        "live_unexpected",
        mock(authorised("test_dev")),
        &[],
        async |c: &Client| {
            s.load(c).await;
            for i in 0..120 {
                products.push(product(c, &format!("U-{i:03}"), &[s.trendyol], 1).await);
            }
        },
    )
    .await;
    wait_quantity(&stack.mock, TY_SELLER, "U-119", 1).await;
    settled(&stack).await;
    for (status, window_ms) in [(404u16, 3000u64), (422, 3000), (413, 3000)] {
        stack.mock.set_faults(Faults {
            status: Some(status),
            status_for_ms: Some(window_ms),
            scope: FaultScope::Push,
            ..Faults::default()
        });
        let quantity = i32::from(status);
        stack
            .exec(
                "UPDATE product_stores SET sellable_quantity = $1 WHERE store_id = $2",
                &[&quantity, &s.trendyol],
            )
            .await;
        eventually(
            Duration::from_secs(20),
            &format!("a {status} answered"),
            || async {
                pushes_to(&stack, TY_SELLER)
                    .iter()
                    .any(|r| r.status == status)
            },
        )
        .await;
        // The store's problem: no attempt counted, no dead letter, the store backs off.
        let (dead, attempts): (i64, i32) = {
            let r = stack
                .client
                .query_one(
                    "SELECT count(*) FILTER (WHERE state = 'dead'), coalesce(max(attempts), 0) \
                     FROM stock_sync.queue WHERE store_id = $1",
                    &[&s.trendyol],
                )
                .await
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!((dead, attempts), (0, 0), "after {status}");
        // (A 413 first halves the batch; the store backs off once halves are small.)
        eventually(Duration::from_secs(60), "the store backing off", || async {
            stack
                .client
                .query_one(
                    "SELECT problem_kind FROM stock_sync.store_state WHERE store_id = $1",
                    &[&s.trendyol],
                )
                .await
                .unwrap()
                .get::<_, Option<String>>(0)
                .as_deref()
                == Some("unexpected_status")
        })
        .await;
        wait_quantity(&stack.mock, TY_SELLER, "U-119", i64::from(quantity)).await;
        settled(&stack).await;
    }
    // The 413 halved the store's batch (120 -> 60 -> at least 50) and it stays so.
    let limit: Option<i32> = stack
        .client
        .query_one(
            "SELECT batch_limit FROM stock_sync.store_state WHERE store_id = $1",
            &[&s.trendyol],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(limit, Some(50));
    let after: Vec<_> = pushes_to(&stack, TY_SELLER)
        .into_iter()
        .filter(|r| r.status == 200)
        .rev()
        .take(3)
        .collect();
    assert!(after.iter().all(|r| r.item_count <= 50), "{after:#?}");
    let _ = products;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trendyol_result_naming_a_barcode_without_spaces_is_matched() {
    let s = Stores::new();
    let mut p = Uuid::nil();
    let stack = start(
        "live_barcodes",
        mock(authorised("test_dev")),
        &[],
        async |c: &Client| {
            s.load(c).await;
            p = product(c, "869 0001", &[s.trendyol], 4).await;
        },
    )
    .await;
    eventually(Duration::from_secs(60), "the item accepted", || async {
        stack
            .client
            .query_opt(
                "SELECT accepted_quantity FROM stock_sync.listing_state WHERE store_id = $1 AND product_id = $2",
                &[&s.trendyol, &p],
            )
            .await
            .unwrap()
            .and_then(|r| r.get::<_, Option<i32>>(0))
            == Some(4)
    })
    .await;
    let retries: i64 = stack
        .client
        .query_one(
            "SELECT count(*) FROM stock_sync.queue WHERE product_id = $1 AND reason = 'RETRY'",
            &[&p],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(retries, 0, "not retried as missing from the result");
    assert_eq!(stack.mock.quantity(TY_SELLER, "8690001"), Some(4));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_that_refuse_updates_dead_letter_at_once_with_the_reason() {
    let s = Stores::new();
    let (mut locked, mut campaign) = (Uuid::nil(), Uuid::nil());
    let stack = start(
        "live_flags",
        mock(authorised("test_dev")),
        &[],
        async |c: &Client| {
            s.load(c).await;
            locked = product(c, "L-1", &[s.hb_one], 5).await;
            campaign = product(c, "C-1", &[s.hb_one], 5).await;
        },
    )
    .await;
    wait_quantity(&stack.mock, HB_ONE, "C-1", 5).await;
    settled(&stack).await;
    let flags = |f: ListingFlags, key: &str| {
        assert!(stack
            .mock
            .set_listing_flags(Marketplace::Hepsiburada, HB_ONE, key, f));
    };
    flags(
        ListingFlags {
            locked: true,
            ..ListingFlags::default()
        },
        "L-1",
    );
    flags(
        ListingFlags {
            stock_decrease_disabled: true,
            ..ListingFlags::default()
        },
        "C-1",
    );
    set_stock(&stack, locked, s.hb_one, 9).await;
    set_stock(&stack, campaign, s.hb_one, 2).await;
    eventually(Duration::from_secs(60), "both dead-lettered", || async {
        stack
            .client
            .query_one(
                "SELECT count(*) FROM stock_sync.queue WHERE store_id = $1 AND state = 'dead'",
                &[&s.hb_one],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 2
    })
    .await;
    let status = stocksync::ops::status::read(&stack.client, "live_flags")
        .await
        .unwrap();
    let reasons: Vec<String> = status
        .dead_letters
        .iter()
        .filter_map(|d| d.last_error.clone())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("ListingLocked")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("DiscountedListingStockDecrease")),
        "{reasons:?}"
    );
    // At once: one push each, not max_attempts of them.
    let uploads = pushes_to(&stack, HB_ONE).len();
    assert!(uploads <= 4, "{uploads} uploads");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_of_other_shapes_are_read() {
    let s = Stores::new();
    let stack = start(
        "live_shapes",
        mock(authorised("test_dev")),
        &[],
        async |c: &Client| {
            // An enum type, integer flags, a numeric seller id, extra and reordered columns.
            c.batch_execute(
                "CREATE TYPE store_kind AS ENUM ('TRENDYOL', 'HEPSIBURADA', 'IKAS'); \
                 ALTER TABLE stores ALTER COLUMN type TYPE store_kind USING type::store_kind; \
                 ALTER TABLE stores ALTER COLUMN is_active DROP DEFAULT; \
                 ALTER TABLE stores ALTER COLUMN is_active TYPE integer USING is_active::integer; \
                 ALTER TABLE stores ADD COLUMN region text; \
                 ALTER TABLE stores ALTER COLUMN seller_id TYPE bigint USING seller_id::bigint;",
            )
            .await
            .unwrap();
            c.execute(
                "INSERT INTO stores (id, name, type, is_active, send_stock, seller_id, api_key, api_secret, region) \
                 VALUES ($1, 'TY', 'TRENDYOL', 1, true, 5001, 'ty-key', 'ty-secret', 'tr')",
                &[&s.trendyol],
            )
            .await
            .unwrap();
            product(c, "S-1", &[s.trendyol], 6).await;
        },
    )
    .await;
    wait_quantity(&stack.mock, TY_SELLER, "S-1", 6).await;
    let status = stocksync::ops::status::read(&stack.client, "live_shapes")
        .await
        .unwrap();
    assert!(status
        .stores
        .iter()
        .any(|st| st.store_type.as_deref() == Some("TRENDYOL")));
    stack.stop().await;
}

/// The per-minute caps count a service group's endpoints together, on top of the per-window
/// limit; a share of a group's cap holds one endpoint to less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_minute_caps_count_the_service_group_across_endpoints() {
    let url = fresh_database("live_caps");
    let db = connect(&url).await;
    setup(&url, "live_caps", "live_caps").await;
    let store = uuid();
    let mut limits = LimitSettings {
        rate_limit_requests: 1000,
        ..LimitSettings::default()
    };
    limits.per_minute.insert(ServiceGroup::TrendyolRead, 3);
    let limiter = Limiter::new(&limits, store);
    for endpoint in [
        Endpoint::TrendyolBatchResult,
        Endpoint::TrendyolStockRead,
        Endpoint::TrendyolBatchResult,
    ] {
        assert!(limiter
            .slot_wait(&db, endpoint, None)
            .await
            .unwrap()
            .is_none());
        limiter
            .record(&db, endpoint, RequestKind::Read, None)
            .await
            .unwrap();
    }
    // Three reads in the minute, whatever the endpoint: the fourth waits.
    let (wait, rule) = limiter
        .slot_wait(&db, Endpoint::TrendyolStockRead, None)
        .await
        .unwrap()
        .expect("the read cap is reached");
    assert_eq!(rule, "per_minute_cap");
    assert!(
        wait > Duration::from_secs(50) && wait <= Duration::from_secs(61),
        "{wait:?}"
    );
    // Writes are another group.
    assert!(limiter
        .slot_wait(&db, Endpoint::TrendyolPush, None)
        .await
        .unwrap()
        .is_none());
    // A share of the read cap: one read of the stock endpoint is its whole share.
    let mut roomy = limits.clone();
    roomy.per_minute.insert(ServiceGroup::TrendyolRead, 100);
    let limiter = Limiter::new(&roomy, store);
    let share = stocksync::stores::limiter::Share {
        endpoint: Endpoint::TrendyolStockRead,
        per_minute: 1,
    };
    let (_, rule) = limiter
        .slot_wait(&db, Endpoint::TrendyolStockRead, Some(share))
        .await
        .unwrap()
        .expect("the share is used up");
    assert_eq!(rule, "read_share");
    assert!(limiter
        .slot_wait(&db, Endpoint::TrendyolBatchResult, Some(share))
        .await
        .unwrap()
        .is_none());
}

/// `/readyz` fails while a store with due work gets no finished cycle for ten flush
/// intervals (here: dispatch cannot read the `stores` table), and recovers with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_dispatch_is_stuck() {
    let s = Stores::new();
    let mut p = Uuid::nil();
    let http = free_addr();
    let stack = start(
        "live_ready",
        mock(authorised("test_dev")),
        &[("STOCKSYNC_HTTP_ADDR", http.to_string())],
        async |c: &Client| {
            s.load(c).await;
            p = product(c, "R-1", &[s.trendyol], 1).await;
        },
    )
    .await;
    wait_quantity(&stack.mock, TY_SELLER, "R-1", 1).await;
    let ready = || async {
        reqwest::get(format!("http://{http}/readyz"))
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    };
    eventually(Duration::from_secs(60), "ready", ready).await;
    stack
        .exec("ALTER TABLE stores RENAME TO stores_elsewhere", &[])
        .await;
    set_stock(&stack, p, s.trendyol, 2).await;
    eventually(Duration::from_secs(60), "unready while stuck", || async {
        !ready().await
    })
    .await;
    let body: serde_json::Value = reqwest::get(format!("http://{http}/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["stalled_stores"][0], s.trendyol.to_string(), "{body}");
    stack
        .exec("ALTER TABLE stores_elsewhere RENAME TO stores", &[])
        .await;
    wait_quantity(&stack.mock, TY_SELLER, "R-1", 2).await;
    eventually(Duration::from_secs(60), "ready again", ready).await;
    stack.stop().await;
}
