//! `stocksync::marketplace` clients against the strict mock marketplace over real HTTP
//! on 127.0.0.1.

use std::time::Duration;

use stocksync::marketplace::{
    prepare, BatchStatus, ClientSettings, ItemResult, MarketplaceClient, PreparedRequest, Provider,
    PushOutcome, StockItem, StoreCredentials,
};
use stocksync::mock::{
    Faults, Marketplace, MockAccount, MockConfig, MockMarketplace, RateLimit,
    IDENTICAL_REQUEST_MESSAGE, UNKNOWN_BARCODE_REASON, UNKNOWN_SKU_ERROR,
};

const TY: &str = "123456";
const TY_KEY: &str = "ty-api-key";
const TY_SECRET: &str = "ty-api-secret-xyz";
const HB: &str = "0c3f1a52-6a42-4c1e-9a43-5b2d1c0e9f11";
const HB_SECRET: &str = "hb-service-key-xyz";
const HB_UA: &str = "stocksync-dev";

fn config() -> MockConfig {
    MockConfig::default()
        .with_account(MockAccount::trendyol(TY, TY_KEY, TY_SECRET))
        .with_account(MockAccount::hepsiburada(HB, HB_SECRET))
}

async fn start(config: MockConfig) -> MockMarketplace {
    MockMarketplace::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("mock starts")
}

fn client_with_timeout(m: &MockMarketplace, timeout: Duration) -> MarketplaceClient {
    MarketplaceClient::new(ClientSettings {
        trendyol_url: m.base_url(),
        hepsiburada_url: format!("{}/", m.base_url()),
        timeout,
    })
}

fn client(m: &MockMarketplace) -> MarketplaceClient {
    client_with_timeout(m, Duration::from_secs(10))
}

fn ty_creds() -> StoreCredentials {
    StoreCredentials {
        provider: Provider::Trendyol,
        seller_id: TY.into(),
        api_key: Some(TY_KEY.into()),
        api_secret: TY_SECRET.into(),
        user_agent: format!("{TY} - SelfIntegration"),
    }
}

fn hb_creds() -> StoreCredentials {
    StoreCredentials {
        provider: Provider::Hepsiburada,
        seller_id: HB.into(),
        api_key: None,
        api_secret: HB_SECRET.into(),
        user_agent: HB_UA.into(),
    }
}

fn creds(p: Provider) -> StoreCredentials {
    match p {
        Provider::Trendyol => ty_creds(),
        Provider::Hepsiburada => hb_creds(),
    }
}

fn mock_marketplace(p: Provider) -> Marketplace {
    match p {
        Provider::Trendyol => Marketplace::Trendyol,
        Provider::Hepsiburada => Marketplace::Hepsiburada,
    }
}

fn items(pairs: &[(&str, i32)]) -> Vec<StockItem> {
    pairs
        .iter()
        .map(|(k, q)| StockItem {
            key: k.to_string(),
            quantity: *q,
        })
        .collect()
}

fn keys(items: &[StockItem]) -> Vec<String> {
    items.iter().map(|i| i.key.clone()).collect()
}

const BOTH: [Provider; 2] = [Provider::Trendyol, Provider::Hepsiburada];

async fn push_accepted(
    c: &MarketplaceClient,
    creds: &StoreCredentials,
    req: &PreparedRequest,
) -> String {
    let (outcome, exchange) = c.push(creds, req).await;
    match outcome {
        PushOutcome::Accepted { batch_ref } => {
            assert_eq!(exchange.status, Some(200));
            assert!(exchange.response_body.contains(&batch_ref));
            batch_ref
        }
        other => panic!("expected Accepted, got {other:?} ({exchange:?})"),
    }
}

async fn wait_done(
    c: &MarketplaceClient,
    creds: &StoreCredentials,
    batch_ref: &str,
    request_keys: &[String],
) -> Vec<ItemResult> {
    for _ in 0..100 {
        match c.batch_status(creds, batch_ref, request_keys).await.0 {
            BatchStatus::Done(r) => return r,
            BatchStatus::Pending => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("unexpected batch status {other:?}"),
        }
    }
    panic!("batch {batch_ref} never finished");
}

fn assert_all_success(results: &[ItemResult], request_keys: &[String]) {
    assert_eq!(results.len(), request_keys.len());
    for (i, (r, k)) in results.iter().zip(request_keys).enumerate() {
        assert_eq!(r.index, i);
        assert_eq!(&r.key, k);
        assert!(r.success, "{r:?}");
        assert!(r.reasons.is_empty(), "{r:?}");
    }
}

// ------------------------------------------------------------------ accepted pushes

#[tokio::test]
async fn accepted_push_applies_stock_and_batch_reports_success() {
    let m = start(config()).await;
    let c = client(&m);
    for p in BOTH {
        let creds = creds(p);
        let its = items(&[("K-1", 5), ("K-2", 0), ("K-3", 20000)]);
        let req = prepare(p, &its);
        let batch_ref = push_accepted(&c, &creds, &req).await;

        for it in &its {
            assert_eq!(
                m.quantity_in(mock_marketplace(p), &creds.seller_id, &it.key),
                Some(i64::from(it.quantity)),
                "{p:?} {}",
                it.key
            );
        }
        // The mock saw exactly the prepared bytes, with the required User-Agent.
        let rec = m.requests().last().cloned().unwrap();
        assert_eq!(rec.status, 200);
        assert_eq!(rec.body_sha256, req.body_sha256);
        assert_eq!(rec.body_bytes, req.body.len());
        assert_eq!(rec.item_count, 3);
        let ua = match p {
            Provider::Trendyol => format!("{TY} - SelfIntegration"),
            Provider::Hepsiburada => HB_UA.to_string(),
        };
        assert_eq!(rec.user_agent.as_deref(), Some(ua.as_str()));

        let (status, exchange) = c.batch_status(&creds, &batch_ref, &keys(&its)).await;
        assert_eq!(exchange.status, Some(200));
        match status {
            BatchStatus::Done(results) => assert_all_success(&results, &keys(&its)),
            other => panic!("{p:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn unknown_listing_fails_alone_while_batch_mates_succeed() {
    let m = start(
        MockConfig::default()
            .with_account(MockAccount::trendyol(TY, TY_KEY, TY_SECRET).with_listings(["A", "C"]))
            .with_account(MockAccount::hepsiburada(HB, HB_SECRET).with_listings(["A", "C"])),
    )
    .await;
    let c = client(&m);
    for p in BOTH {
        let creds = creds(p);
        let its = items(&[("A", 1), ("UNKNOWN", 2), ("C", 3)]);
        let batch_ref = push_accepted(&c, &creds, &prepare(p, &its)).await;
        let results = wait_done(&c, &creds, &batch_ref, &keys(&its)).await;
        let reason = match p {
            Provider::Trendyol => UNKNOWN_BARCODE_REASON,
            Provider::Hepsiburada => UNKNOWN_SKU_ERROR,
        };
        assert_eq!(
            results,
            vec![
                ItemResult {
                    index: 0,
                    key: "A".into(),
                    success: true,
                    reasons: vec![],
                    permanent: false,
                },
                ItemResult {
                    index: 1,
                    key: "UNKNOWN".into(),
                    success: false,
                    reasons: vec![reason.to_string()],
                    permanent: false,
                },
                ItemResult {
                    index: 2,
                    key: "C".into(),
                    success: true,
                    reasons: vec![],
                    permanent: false,
                },
            ],
            "{p:?}"
        );
        let mp = mock_marketplace(p);
        assert_eq!(m.quantity_in(mp, &creds.seller_id, "A"), Some(1));
        assert_eq!(m.quantity_in(mp, &creds.seller_id, "UNKNOWN"), None);
        assert_eq!(m.quantity_in(mp, &creds.seller_id, "C"), Some(3));
    }

    // Hepsiburada: every element unknown -> FAILED, every item failed.
    let its = items(&[("X", 1), ("Y", 2)]);
    let batch_ref = push_accepted(&c, &hb_creds(), &prepare(Provider::Hepsiburada, &its)).await;
    let (_, ex) = c.batch_status(&hb_creds(), &batch_ref, &keys(&its)).await;
    assert!(
        ex.response_body.contains("\"Failed\""),
        "{}",
        ex.response_body
    );
    let results = wait_done(&c, &hb_creds(), &batch_ref, &keys(&its)).await;
    assert!(results.iter().all(|r| !r.success && !r.reasons.is_empty()));
}

#[tokio::test]
async fn processing_delay_is_pending_then_done() {
    let m = start(MockConfig {
        processing_delay: Duration::from_millis(700),
        ..config()
    })
    .await;
    let c = client(&m);
    for p in BOTH {
        let creds = creds(p);
        let its = items(&[("P-1", 4), ("P-2", 6)]);
        let batch_ref = push_accepted(&c, &creds, &prepare(p, &its)).await;
        let (status, exchange) = c.batch_status(&creds, &batch_ref, &keys(&its)).await;
        assert_eq!(status, BatchStatus::Pending, "{p:?} {exchange:?}");
        tokio::time::sleep(Duration::from_millis(800)).await;
        let (status, _) = c.batch_status(&creds, &batch_ref, &keys(&its)).await;
        match status {
            BatchStatus::Done(results) => assert_all_success(&results, &keys(&its)),
            other => panic!("{p:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn unknown_batch_is_not_found() {
    let m = start(config()).await;
    let c = client(&m);
    for p in BOTH {
        let (status, exchange) = c
            .batch_status(&creds(p), "no-such-batch", &["A".to_string()])
            .await;
        assert_eq!(status, BatchStatus::NotFound, "{p:?}");
        assert_eq!(exchange.status, Some(404));
    }
}

// ------------------------------------------------------------------ refusals

#[tokio::test]
async fn wrong_secret_is_auth_rejected_and_never_echoed() {
    let m = start(config()).await;
    let c = client(&m);
    for p in BOTH {
        let mut creds = creds(p);
        creds.api_secret = "wrong-secret-value".into();
        let (outcome, exchange) = c.push(&creds, &prepare(p, &items(&[("A", 1)]))).await;
        match &outcome {
            PushOutcome::AuthRejected {
                status: 401,
                message,
            } => {
                assert!(!message.is_empty(), "{p:?}")
            }
            other => panic!("{p:?}: {other:?}"),
        }
        assert_eq!(exchange.status, Some(401));
        for secret in ["wrong-secret-value", TY_SECRET, HB_SECRET, TY_KEY] {
            assert!(!exchange.response_body.contains(secret));
        }
        let (status, _) = c.batch_status(&creds, "x", &["A".to_string()]).await;
        assert!(
            matches!(
                status,
                BatchStatus::Failed(PushOutcome::AuthRejected { status: 401, .. })
            ),
            "{p:?}: {status:?}"
        );
    }
}

#[tokio::test]
async fn without_a_hepsiburada_user_agent_nothing_is_sent() {
    let m = start(config()).await;
    let c = client(&m);
    let creds = StoreCredentials {
        user_agent: String::new(),
        ..hb_creds()
    };
    let (outcome, exchange) = c
        .push(&creds, &prepare(Provider::Hepsiburada, &items(&[("A", 1)])))
        .await;
    assert!(
        matches!(outcome, PushOutcome::AuthRejected { status: 0, .. }),
        "{outcome:?}"
    );
    assert_eq!(exchange.status, None);
    assert!(m.requests().is_empty(), "no request left");
}

#[tokio::test]
async fn unusable_credentials_send_nothing() {
    let m = start(config()).await;
    let c = client(&m);
    let mut creds = ty_creds();
    creds.api_key = None;
    let (outcome, exchange) = c
        .push(&creds, &prepare(Provider::Trendyol, &items(&[("A", 1)])))
        .await;
    assert!(
        matches!(outcome, PushOutcome::AuthRejected { status: 0, .. }),
        "{outcome:?}"
    );
    assert_eq!(exchange.status, None);
    assert!(m.requests().is_empty());
}

#[tokio::test]
async fn identical_body_within_window_is_refused() {
    for identical_status in [400, 409] {
        let m = start(MockConfig {
            identical_window: Duration::from_secs(60),
            identical_status,
            ..config()
        })
        .await;
        let c = client(&m);
        let its = items(&[("A", 1), ("B", 2)]);
        let req = prepare(Provider::Trendyol, &its);
        push_accepted(&c, &ty_creds(), &req).await;
        let again = prepare(Provider::Trendyol, &its);
        assert_eq!(again.body, req.body);
        let (outcome, exchange) = c.push(&ty_creds(), &again).await;
        assert_eq!(
            outcome,
            PushOutcome::IdenticalBody {
                status: identical_status,
                message: IDENTICAL_REQUEST_MESSAGE.to_string()
            }
        );
        assert_eq!(exchange.status, Some(identical_status));
        // Any change to the body is a new request.
        push_accepted(
            &c,
            &ty_creds(),
            &prepare(Provider::Trendyol, &items(&[("A", 1)])),
        )
        .await;
    }
}

#[tokio::test]
async fn validation_error_is_bad_request_with_message() {
    let m = start(config()).await;
    let c = client(&m);
    for p in BOTH {
        let (outcome, _) = c
            .push(&creds(p), &prepare(p, &items(&[("A", 1), ("A", -1)])))
            .await;
        match outcome {
            PushOutcome::BadRequest {
                status: 400,
                message,
            } => {
                assert!(message.contains("duplicate"), "{p:?}: {message}");
                assert!(message.contains("; "), "every error listed: {message}");
            }
            other => panic!("{p:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn throttle_fault_is_rate_limited_with_retry_after() {
    let m = start(config()).await;
    let c = client(&m);
    m.set_faults(Faults {
        throttle_for_ms: Some(30_000),
        retry_after_secs: Some(7),
        ..Faults::default()
    });
    for p in BOTH {
        let (outcome, exchange) = c.push(&creds(p), &prepare(p, &items(&[("A", 1)]))).await;
        assert_eq!(
            outcome,
            PushOutcome::RateLimited {
                retry_after: Some(Duration::from_secs(7))
            },
            "{p:?}"
        );
        assert_eq!(exchange.status, Some(429));
        let (status, _) = c.batch_status(&creds(p), "x", &["A".to_string()]).await;
        assert!(
            matches!(status, BatchStatus::Failed(PushOutcome::RateLimited { .. })),
            "{p:?}: {status:?}"
        );
    }
    assert_eq!(m.quantity(TY, "A"), None);
}

#[tokio::test]
async fn real_rate_limit_is_rate_limited() {
    let m = start(MockConfig {
        rate_limit: RateLimit {
            max_requests: 1,
            window: Duration::from_secs(10),
        },
        ..config()
    })
    .await;
    let c = client(&m);
    for p in BOTH {
        push_accepted(&c, &creds(p), &prepare(p, &items(&[("A", 1)]))).await;
        let (outcome, _) = c.push(&creds(p), &prepare(p, &items(&[("A", 2)]))).await;
        match outcome {
            PushOutcome::RateLimited {
                retry_after: Some(d),
            } => assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_secs(10),
                "{d:?}"
            ),
            other => panic!("{p:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn server_errors_are_server_error() {
    let m = start(config()).await;
    let c = client(&m);
    m.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    for p in BOTH {
        let (outcome, exchange) = c.push(&creds(p), &prepare(p, &items(&[("A", 1)]))).await;
        match outcome {
            PushOutcome::ServerError {
                status: 500,
                message,
            } => assert!(!message.is_empty()),
            other => panic!("{p:?}: {other:?}"),
        }
        assert_eq!(exchange.status, Some(500));
        let (status, _) = c.batch_status(&creds(p), "x", &["A".to_string()]).await;
        assert!(
            matches!(
                status,
                BatchStatus::Failed(PushOutcome::ServerError { status: 500, .. })
            ),
            "{p:?}: {status:?}"
        );
    }
}

// ------------------------------------------------------------------ transport

#[tokio::test]
async fn latency_beyond_timeout_is_transport() {
    let m = start(config()).await;
    m.set_faults(Faults {
        latency_ms: 1500,
        ..Faults::default()
    });
    let c = client_with_timeout(&m, Duration::from_millis(300));
    for p in BOTH {
        let (outcome, exchange) = c.push(&creds(p), &prepare(p, &items(&[("A", 1)]))).await;
        match outcome {
            PushOutcome::Transport { message } => {
                assert!(message.contains("timeout"), "{message}")
            }
            other => panic!("{p:?}: {other:?}"),
        }
        assert_eq!(exchange.status, None);
        assert!(exchange.duration >= Duration::from_millis(250));
        assert!(exchange.duration < Duration::from_millis(1400));
        let (status, _) = c.batch_status(&creds(p), "x", &["A".to_string()]).await;
        assert!(
            matches!(status, BatchStatus::Failed(PushOutcome::Transport { .. })),
            "{p:?}: {status:?}"
        );
    }
}

#[tokio::test]
async fn connection_reset_is_transport() {
    let m = start(config()).await;
    m.set_faults(Faults {
        reset_rate: 1.0,
        ..Faults::default()
    });
    let c = client(&m);
    for p in BOTH {
        let (outcome, exchange) = c.push(&creds(p), &prepare(p, &items(&[("A", 1)]))).await;
        assert!(
            matches!(outcome, PushOutcome::Transport { .. }),
            "{p:?}: {outcome:?}"
        );
        assert_eq!(exchange.status, None);
    }
}

/// A refused connection carried no body: `NotDelivered`, not a lost answer.
#[tokio::test]
async fn connection_refused_is_not_delivered() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let c = MarketplaceClient::new(ClientSettings {
        trendyol_url: url.clone(),
        hepsiburada_url: url,
        timeout: Duration::from_secs(5),
    });
    for p in BOTH {
        let (outcome, exchange) = c.push(&creds(p), &prepare(p, &items(&[("A", 1)]))).await;
        match outcome {
            PushOutcome::NotDelivered { message } => assert!(
                !message.contains(TY_SECRET) && !message.contains(HB_SECRET),
                "{message}"
            ),
            other => panic!("{p:?}: {other:?}"),
        }
        assert_eq!(exchange.status, None);
    }
}

// ------------------------------------------------------------------ encoding, bytes

#[tokio::test]
async fn seller_ids_are_percent_encoded() {
    let m = start(MockConfig {
        open: true,
        ..MockConfig::default()
    })
    .await;
    let c = client(&m);
    for (p, seller) in [
        (Provider::Trendyol, "seller 1"),
        (Provider::Hepsiburada, "m/1?x#y"),
    ] {
        let creds = StoreCredentials {
            provider: p,
            seller_id: seller.into(),
            api_key: Some("k".into()),
            api_secret: "s".into(),
            user_agent: format!("{seller} - SelfIntegration").replace(['?', '#', '/'], "-"),
        };
        let its = items(&[("Z", 9)]);
        let batch_ref = push_accepted(&c, &creds, &prepare(p, &its)).await;
        assert_eq!(
            m.quantity_in(mock_marketplace(p), seller, "Z"),
            Some(9),
            "{p:?}"
        );
        let results = wait_done(&c, &creds, &batch_ref, &keys(&its)).await;
        assert_all_success(&results, &keys(&its));
    }
}

#[test]
fn prepare_is_deterministic_with_exact_bytes() {
    let its = items(&[("8680000000017", 12), ("BC-ş\"2", 0)]);
    let ty = prepare(Provider::Trendyol, &its);
    assert_eq!(
        std::str::from_utf8(&ty.body).unwrap(),
        r#"{"items":[{"barcode":"8680000000017","quantity":12},{"barcode":"BC-ş\"2","quantity":0}]}"#
    );
    assert_eq!(ty.provider, Provider::Trendyol);
    assert_eq!(ty.item_count, 2);
    let hb = prepare(Provider::Hepsiburada, &its);
    assert_eq!(
        std::str::from_utf8(&hb.body).unwrap(),
        r#"[{"merchantSku":"8680000000017","availableStock":12},{"merchantSku":"BC-ş\"2","availableStock":0}]"#
    );
    for p in BOTH {
        let a = prepare(p, &its);
        let b = prepare(p, &its.clone());
        assert_eq!(a.body, b.body);
        assert_eq!(a.body_sha256, b.body_sha256);
        assert_eq!(a.body_sha256.len(), 64);
        assert!(a.body_sha256.bytes().all(|c| c.is_ascii_hexdigit()));
        // Order matters.
        let reversed: Vec<_> = its.iter().rev().cloned().collect();
        assert_ne!(prepare(p, &reversed).body_sha256, a.body_sha256);
    }
    assert_ne!(ty.body_sha256, hb.body_sha256);
    assert_eq!(prepare(Provider::Trendyol, &[]).body, br#"{"items":[]}"#);
    assert_eq!(prepare(Provider::Hepsiburada, &[]).body, b"[]");
}

#[test]
fn credentials_debug_hides_secrets() {
    let key = stocksync::marketplace::FingerprintKey::generate();
    for creds in [ty_creds(), hb_creds()] {
        let dbg = format!("{creds:?}");
        let pretty = format!("{creds:#?}");
        for s in [&dbg, &pretty] {
            assert!(!s.contains(TY_SECRET) && !s.contains(TY_KEY) && !s.contains(HB_SECRET));
            assert!(s.contains("***"), "{s}");
            assert!(s.contains(&creds.seller_id), "{s}");
        }
        let fp = creds.fingerprint(&key);
        assert_eq!(fp.len(), "hmac-sha256:".len() + 64);
        assert!(!fp.contains(&creds.api_secret));
        assert_eq!(fp, creds.clone().fingerprint(&key));
    }
    assert_ne!(ty_creds().fingerprint(&key), hb_creds().fingerprint(&key));
}

#[test]
fn provider_api() {
    assert_eq!(
        Provider::from_store_type("TRENDYOL"),
        Some(Provider::Trendyol)
    );
    assert_eq!(
        Provider::from_store_type("Hepsiburada"),
        Some(Provider::Hepsiburada)
    );
    assert_eq!(Provider::from_store_type("AMAZON"), None);
    assert_eq!(Provider::Trendyol.as_str(), "TRENDYOL");
    assert_eq!(Provider::Hepsiburada.as_str(), "HEPSIBURADA");
    assert_ne!(
        Provider::Trendyol.push_endpoint(),
        Provider::Hepsiburada.push_endpoint()
    );
    assert_eq!(Provider::Trendyol.max_batch(), 1000);
    assert!(Provider::Hepsiburada.max_batch() >= 1);
}

// ------------------------------------------------------------------ echoed credentials

/// Every spelling of `s` the echoing mock writes, and the first half of `s`.
fn spellings(s: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine;
    let escaped: String = s
        .encode_utf16()
        .map(|u| match u {
            0x2F => "\\/".to_string(),
            u => format!("\\u{u:04X}"),
        })
        .collect();
    let percent = |form: bool| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                b' ' if form => "+".to_string(),
                b => format!("%{b:02x}"),
            })
            .collect()
    };
    let half: String = s.chars().take(s.chars().count() / 2).collect();
    vec![
        s.to_string(),
        half,
        escaped[..escaped.len() / 2].to_string(),
        percent(false),
        percent(true),
        STANDARD.encode(s),
        URL_SAFE.encode(s),
        URL_SAFE_NO_PAD.encode(s),
    ]
}

/// A gateway echoes the credentials in every spelling a service may use (JSON `\uXXXX`
/// and `\/`, lower-case percent hex, form `+`, URL-safe base64, base64 of the secret alone,
/// a `Bearer` token), with filler putting a credential across the 1000-character cut of
/// the outcome's message. Neither the outcome (what `last_error` and status show) nor the
/// exchange (what the API log keeps) holds any of it, and a 401/403 body is not kept.
#[tokio::test]
async fn echoed_credentials_are_masked_in_every_spelling_and_across_the_cut() {
    const KEY: &str = "k3y+Alpha/Beta~z";
    const SECRET: &str = "s3cr3t+v@lue/with space~é";
    let m = start(
        MockConfig::default()
            .with_account(MockAccount::trendyol(TY, KEY, SECRET))
            .with_account(MockAccount::hepsiburada(HB, SECRET)),
    )
    .await;
    let c = client(&m);
    let prefix = "request refused by the gateway for ".chars().count();
    for p in BOTH {
        let creds = StoreCredentials {
            api_key: (p == Provider::Trendyol).then(|| KEY.to_string()),
            api_secret: SECRET.into(),
            ..creds(p)
        };
        let user = match p {
            Provider::Trendyol => KEY,
            Provider::Hepsiburada => HB,
        };
        let user_chars = user.chars().count();
        // The outcome's message is cut at 1000 characters: these paddings cut the echoed
        // `user:password` past the first half of the secret, and past the first half of the
        // user (the key, for Trendyol): a cut made before masking keeps that half.
        let paddings = [0, 1000 - prefix - user_chars - 1 - 14, 1000 - prefix - 9];
        let mut forbidden = spellings(SECRET);
        if p == Provider::Trendyol {
            forbidden.extend(spellings(KEY));
        }
        // The Basic token's forms (its first half names the user, no secret for Hepsiburada).
        forbidden.extend(spellings(&format!("{user}:{SECRET}")).into_iter().skip(3));
        for status in [400, 401, 403, 500] {
            for padding in paddings {
                m.set_faults(Faults {
                    status: Some(status),
                    echo: stocksync::mock::EchoMode {
                        encodings: true,
                        padding,
                    },
                    ..Faults::default()
                });
                let (outcome, exchange) = c.push(&creds, &prepare(p, &items(&[("A", 1)]))).await;
                let (read, read_exchange) = c.batch_status(&creds, "x", &["A".to_string()]).await;
                assert_eq!(exchange.status, Some(status));
                let texts = [
                    format!("{outcome:?}"),
                    exchange.response_body.clone(),
                    format!("{read:?}"),
                    read_exchange.response_body.clone(),
                ];
                for text in &texts {
                    for form in &forbidden {
                        assert!(
                            !text.contains(form.as_str()),
                            "{p:?} {status} padding {padding}: {form:?} in {text}"
                        );
                    }
                    assert!(
                        !text.contains("Bearer ") || text.contains("Bearer ***"),
                        "{p:?} {status}: a Bearer token in {text}"
                    );
                }
                if matches!(status, 401 | 403) {
                    assert!(
                        !exchange.response_body.contains("gateway"),
                        "a {status} body is not kept: {}",
                        exchange.response_body
                    );
                } else {
                    assert!(exchange.response_body.contains("gateway"), "{p:?} {status}");
                }
            }
        }
    }
}
