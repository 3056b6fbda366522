//! The mock marketplace over real HTTP on 127.0.0.1: every refusal (status and body),
//! the accepted paths, limits, faults, inspection and configuration.

use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};
use stocksync::mock::{
    load_accounts_file, Faults, Marketplace, MockAccount, MockArgs, MockConfig, MockMarketplace,
    MockState, RateLimit, RequestRecord, IDENTICAL_REQUEST_MESSAGE,
};

const TY: &str = "123456";
const TY_KEY: &str = "ty-key";
const TY_SECRET: &str = "ty-secret";
const TY_UA: &str = "123456 - SelfIntegration";
const HB: &str = "0c3f1a52-6a42-4c1e-9a43-5b2d1c0e9f11";
const HB_KEY: &str = "hb-service-key";
const HB_UA: &str = "stocksync-dev";

fn config() -> MockConfig {
    MockConfig::default()
        .with_account(MockAccount::trendyol(TY, TY_KEY, TY_SECRET))
        .with_account(MockAccount::hepsiburada(HB, HB_KEY))
}

async fn start(config: MockConfig) -> MockMarketplace {
    MockMarketplace::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("mock starts")
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn ty_push_url(m: &MockMarketplace, seller: &str) -> String {
    format!(
        "{}/integration/inventory/sellers/{seller}/products/price-and-inventory",
        m.base_url()
    )
}

fn ty_batch_url(m: &MockMarketplace, seller: &str, id: &str) -> String {
    format!(
        "{}/integration/product/sellers/{seller}/products/batch-requests/{id}",
        m.base_url()
    )
}

fn hb_push_url(m: &MockMarketplace, merchant: &str) -> String {
    format!(
        "{}/listings/merchantid/{merchant}/stock-uploads",
        m.base_url()
    )
}

fn hb_status_url(m: &MockMarketplace, merchant: &str, id: &str) -> String {
    format!(
        "{}/listings/merchantid/{merchant}/stock-uploads/id/{id}",
        m.base_url()
    )
}

/// A Trendyol push with correct headers and this raw body.
async fn ty_push_raw(m: &MockMarketplace, body: &str) -> reqwest::Response {
    client()
        .post(ty_push_url(m, TY))
        .header("User-Agent", TY_UA)
        .header("Authorization", basic(TY_KEY, TY_SECRET))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn ty_push(m: &MockMarketplace, body: &Value) -> (StatusCode, Value) {
    read(ty_push_raw(m, &body.to_string()).await).await
}

async fn ty_batch(m: &MockMarketplace, id: &str) -> (StatusCode, Value) {
    read(
        client()
            .get(ty_batch_url(m, TY, id))
            .header("User-Agent", TY_UA)
            .header("Authorization", basic(TY_KEY, TY_SECRET))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn hb_push_raw(m: &MockMarketplace, body: &str) -> reqwest::Response {
    client()
        .post(hb_push_url(m, HB))
        .header("User-Agent", HB_UA)
        .header("Authorization", basic(HB, HB_KEY))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn hb_push(m: &MockMarketplace, body: &Value) -> (StatusCode, Value) {
    read(hb_push_raw(m, &body.to_string()).await).await
}

async fn hb_status(m: &MockMarketplace, id: &str) -> (StatusCode, Value) {
    read(
        client()
            .get(hb_status_url(m, HB, id))
            .header("User-Agent", HB_UA)
            .header("Authorization", basic(HB, HB_KEY))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn read(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("body is not JSON ({e}): {text:?}"));
    (status, value)
}

/// Asserts a Trendyol error body: `errors[*]` with string key/message/errorCode, and
/// returns the first error.
fn ty_error(body: &Value) -> &Value {
    let errors = body["errors"].as_array().expect("errors array");
    assert!(!errors.is_empty(), "{body}");
    for e in errors {
        for field in ["key", "message", "errorCode"] {
            assert!(e[field].is_string(), "{field} missing in {body}");
        }
    }
    &errors[0]
}

/// Asserts a Hepsiburada error body `{"errors":[{"message","code"}]}`, returns the first.
fn hb_error(body: &Value) -> &Value {
    let errors = body["errors"].as_array().expect("errors array");
    assert!(!errors.is_empty(), "{body}");
    for e in errors {
        assert!(e["message"].is_string(), "{body}");
        assert!(e["code"].is_string(), "{body}");
    }
    &errors[0]
}

fn last_request(m: &MockMarketplace) -> RequestRecord {
    m.requests().last().cloned().expect("a request was logged")
}

// ---------------------------------------------------------------- Trendyol accepted

#[tokio::test]
async fn trendyol_push_applies_stock_and_batch_reports_success() {
    let m = start(config()).await;
    let (status, body) = ty_push(
        &m,
        &json!({"items":[
            {"barcode":"BC-1","quantity":5},
            {"barcode":"BC-2","quantity":0,"salePrice":99.9,"listPrice":120}
        ]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["batchRequestId"].as_str().unwrap().to_string();
    // "<uuid>-<epoch seconds>"
    let (uuid, secs) = id.rsplit_once('-').unwrap();
    assert!(uuid::Uuid::parse_str(uuid).is_ok(), "{id}");
    let secs: i64 = secs.parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - secs).abs() < 60);

    assert_eq!(m.quantity(TY, "BC-1"), Some(5));
    assert_eq!(m.quantity(TY, "BC-2"), Some(0));
    assert_eq!(m.quantity_in(Marketplace::Trendyol, TY, "BC-1"), Some(5));
    assert_eq!(m.quantity_in(Marketplace::Hepsiburada, TY, "BC-1"), None);

    let (status, batch) = ty_batch(&m, &id).await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    assert_eq!(batch["batchRequestId"], id.as_str());
    assert_eq!(batch["batchRequestType"], "ProductInventoryUpdate");
    assert_eq!(batch["itemCount"], 2);
    assert_eq!(batch["failedItemCount"], 0);
    assert!(batch["creationDate"].is_i64());
    assert!(batch["lastModification"].is_i64());
    let items = batch["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["requestItem"]["barcode"], "BC-1");
    assert_eq!(items[0]["requestItem"]["quantity"], 5);
    assert_eq!(items[1]["requestItem"]["salePrice"], 99.9);
    for item in items {
        assert_eq!(item["status"], "SUCCESS");
        assert_eq!(item["failureReasons"], json!([]));
    }

    let rec = m.requests()[0].clone();
    assert_eq!(rec.status, 200);
    assert_eq!(rec.marketplace, Some(Marketplace::Trendyol));
    assert_eq!(rec.endpoint.as_deref(), Some("push"));
    assert_eq!(rec.item_count, 2);
    assert_eq!(rec.batch_id.as_deref(), Some(id.as_str()));
    m.shutdown().await;
}

#[tokio::test]
async fn trendyol_unknown_barcode_fails_in_batch_and_keeps_catalogue() {
    let cfg = MockConfig::default()
        .with_account(MockAccount::trendyol(TY, TY_KEY, TY_SECRET).with_listings(["KNOWN"]));
    let m = start(cfg).await;
    let (status, body) = ty_push(
        &m,
        &json!({"items":[{"barcode":"KNOWN","quantity":3},{"barcode":"NOPE","quantity":4}]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["batchRequestId"].as_str().unwrap();
    assert_eq!(m.quantity(TY, "KNOWN"), Some(3));
    assert_eq!(m.quantity(TY, "NOPE"), None);

    let (_, batch) = ty_batch(&m, id).await;
    assert_eq!(batch["itemCount"], 2);
    assert_eq!(batch["failedItemCount"], 1);
    let items = batch["items"].as_array().unwrap();
    assert_eq!(items[0]["status"], "SUCCESS");
    assert_eq!(items[1]["status"], "FAILED");
    assert_eq!(items[1]["requestItem"]["barcode"], "NOPE");
    let reasons = items[1]["failureReasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1);
    assert!(reasons[0].as_str().unwrap().contains("barcode"));

    let rec = m.requests()[0].clone();
    assert_eq!(rec.failed_items, 1);
    assert_eq!(rec.unchanged_items, 0);
}

#[tokio::test]
async fn trendyol_batch_unknown_id_is_404() {
    let m = start(config()).await;
    let (status, body) = ty_batch(&m, "00000000-0000-0000-0000-000000000000-1700000000").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(ty_error(&body)["errorCode"], "not.found");

    // Another seller's batch is not visible.
    let cfg = config().with_account(MockAccount::trendyol("999", "k9", "s9"));
    let m = start(cfg).await;
    let (_, body) = ty_push(&m, &json!({"items":[{"barcode":"A","quantity":1}]})).await;
    let id = body["batchRequestId"].as_str().unwrap();
    let resp = client()
        .get(ty_batch_url(&m, "999", id))
        .header("User-Agent", "999 - SelfIntegration")
        .header("Authorization", basic("k9", "s9"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn trendyol_unchanged_quantities_are_counted() {
    let m = start(config()).await;
    let (s, _) = ty_push(&m, &json!({"items":[{"barcode":"A","quantity":5}]})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = ty_push(
        &m,
        &json!({"items":[{"barcode":"A","quantity":5},{"barcode":"B","quantity":1}]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, batch) = ty_batch(&m, body["batchRequestId"].as_str().unwrap()).await;
    assert_eq!(batch["items"][0]["status"], "SUCCESS");
    let recs = m.requests();
    assert_eq!(recs[0].unchanged_items, 0);
    assert_eq!(recs[1].unchanged_items, 1);
    assert_eq!(recs[1].item_count, 2);
}

// ---------------------------------------------------------------- Trendyol refusals

#[tokio::test]
async fn trendyol_user_agent_refusals_are_403() {
    let m = start(config()).await;
    let body = json!({"items":[{"barcode":"A","quantity":1}]}).to_string();
    // Missing (reqwest sends no User-Agent by default).
    let resp = client()
        .post(ty_push_url(&m, TY))
        .header("Authorization", basic(TY_KEY, TY_SECRET))
        .header("Content-Type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let (status, err) = read(resp).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(ty_error(&err)["key"], "user.agent.missing");

    let malformed = [
        "SelfIntegration".to_string(),
        "999 - SelfIntegration".to_string(), // other seller
        format!("{TY} - Self Integration"),  // not alphanumeric
        format!("{TY} - Self-Integration"),
        format!("{TY} - {}", "A".repeat(31)), // too long
        format!("{TY} -SelfIntegration"),
        format!("{TY} - "),
    ];
    for ua in malformed {
        let resp = client()
            .post(ty_push_url(&m, TY))
            .header("User-Agent", &ua)
            .header("Authorization", basic(TY_KEY, TY_SECRET))
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (status, err) = read(resp).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{ua}");
        assert_eq!(ty_error(&err)["key"], "user.agent.invalid", "{ua}");
    }
    // Also on the batch endpoint.
    let resp = client()
        .get(ty_batch_url(&m, TY, "x"))
        .header("Authorization", basic(TY_KEY, TY_SECRET))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // 30 characters is fine.
    let resp = client()
        .post(ty_push_url(&m, TY))
        .header("User-Agent", format!("{TY} - {}", "A".repeat(30)))
        .header("Authorization", basic(TY_KEY, TY_SECRET))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(m
        .requests()
        .iter()
        .all(|r| r.user_agent.is_some() || r.status == 403));
}

#[tokio::test]
async fn trendyol_credential_refusals_are_401() {
    let m = start(config().with_account(MockAccount::trendyol("777", "k7", "s7"))).await;
    let body = json!({"items":[{"barcode":"A","quantity":1}]}).to_string();
    let cases: Vec<(&str, Option<String>)> = vec![
        (TY, None),
        (TY, Some(basic(TY_KEY, "wrong"))),
        (TY, Some(basic("wrong", TY_SECRET))),
        (TY, Some(basic("k7", "s7"))), // another seller's credentials
        (TY, Some("Bearer abc".to_string())),
        (TY, Some("Basic !!!notbase64".to_string())),
        ("424242", Some(basic(TY_KEY, TY_SECRET))), // unknown seller
    ];
    for (seller, auth) in cases {
        let mut req = client()
            .post(ty_push_url(&m, seller))
            .header("User-Agent", format!("{seller} - SelfIntegration"))
            .header("Content-Type", "application/json")
            .body(body.clone());
        if let Some(a) = &auth {
            req = req.header("Authorization", a);
        }
        let (status, err) = read(req.send().await.unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{seller} {auth:?}");
        assert_eq!(err["exception"], "ClientApiAuthenticationException");
        ty_error(&err);
    }
    // Batch endpoint too.
    let resp = client()
        .get(ty_batch_url(&m, TY, "x"))
        .header("User-Agent", TY_UA)
        .header("Authorization", basic(TY_KEY, "wrong"))
        .send()
        .await
        .unwrap();
    let (status, err) = read(resp).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(err["exception"], "ClientApiAuthenticationException");
    assert!(m.state().account(Marketplace::Trendyol, "424242").is_none());
    assert_eq!(m.quantity(TY, "A"), None);
}

#[tokio::test]
async fn trendyol_validation_refusals_are_400() {
    let m = start(config()).await;
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"barcode": format!("B{i}"), "quantity": 1}))
        .collect();
    let too_many = json!({ "items": too_many }).to_string();
    let cases: Vec<(&str, String, &str)> = vec![
        ("malformed json", "{\"items\":[".into(), "malformed.request"),
        ("not an object", "[1,2]".into(), "items.required"),
        ("no items", "{}".into(), "items.required"),
        ("empty items", r#"{"items":[]}"#.into(), "items.empty"),
        ("1001 items", too_many, "items.max.size.exceeded"),
        (
            "duplicate",
            r#"{"items":[{"barcode":"A","quantity":1},{"barcode":"A","quantity":2}]}"#.into(),
            "barcode.duplicate",
        ),
        (
            "fraction",
            r#"{"items":[{"barcode":"A","quantity":1.5}]}"#.into(),
            "quantity.invalid",
        ),
        (
            "1.0",
            r#"{"items":[{"barcode":"A","quantity":1.0}]}"#.into(),
            "quantity.invalid",
        ),
        (
            "string",
            r#"{"items":[{"barcode":"A","quantity":"3"}]}"#.into(),
            "quantity.invalid",
        ),
        (
            "null",
            r#"{"items":[{"barcode":"A","quantity":null}]}"#.into(),
            "quantity.invalid",
        ),
        (
            "missing quantity",
            r#"{"items":[{"barcode":"A"}]}"#.into(),
            "quantity.invalid",
        ),
        (
            "negative",
            r#"{"items":[{"barcode":"A","quantity":-1}]}"#.into(),
            "quantity.out.of.range",
        ),
        (
            "too large",
            r#"{"items":[{"barcode":"A","quantity":20001}]}"#.into(),
            "quantity.out.of.range",
        ),
        (
            "no barcode",
            r#"{"items":[{"quantity":1}]}"#.into(),
            "barcode.required",
        ),
        (
            "bad price",
            r#"{"items":[{"barcode":"A","quantity":1,"salePrice":"x"}]}"#.into(),
            "price.invalid",
        ),
    ];
    for (name, body, code) in cases {
        let (status, err) = read(ty_push_raw(&m, &body).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {err}");
        let first = ty_error(&err);
        assert_eq!(first["errorCode"], code, "{name}: {err}");
        let rec = last_request(&m);
        assert_eq!(rec.status, 400);
        assert_eq!(rec.note.as_deref(), Some("validation"));
    }
    // The maximum is inclusive: 20000 and 0 are fine, and 1000 items are fine.
    let (s, _) = ty_push(
        &m,
        &json!({"items":[{"barcode":"A","quantity":20000},{"barcode":"B","quantity":0}]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let thousand: Vec<Value> = (0..1000)
        .map(|i| json!({"barcode": format!("B{i}"), "quantity": 2}))
        .collect();
    let (s, _) = ty_push(&m, &json!({ "items": thousand })).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(m.quantity(TY, "A"), Some(20000));
    assert_eq!(m.quantity(TY, "B999"), Some(2));
}

#[tokio::test]
async fn limits_are_configurable() {
    let cfg = MockConfig {
        trendyol_max_items: 2,
        hepsiburada_max_items: 1,
        max_quantity: 10,
        ..config()
    };
    let m = start(cfg).await;
    let (s, err) = ty_push(
        &m,
        &json!({"items":[{"barcode":"A","quantity":1},{"barcode":"B","quantity":1},{"barcode":"C","quantity":1}]}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(ty_error(&err)["errorCode"], "items.max.size.exceeded");
    let (s, err) = ty_push(&m, &json!({"items":[{"barcode":"A","quantity":11}]})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(ty_error(&err)["errorCode"], "quantity.out.of.range");
    let (s, err) = hb_push(
        &m,
        &json!([{"merchantSku":"A","availableStock":1},{"merchantSku":"B","availableStock":1}]),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(hb_error(&err)["code"], "TooManyItems");
}

#[tokio::test]
async fn trendyol_content_type_must_be_json() {
    let m = start(config()).await;
    let resp = client()
        .post(ty_push_url(&m, TY))
        .header("User-Agent", TY_UA)
        .header("Authorization", basic(TY_KEY, TY_SECRET))
        .body(r#"{"items":[{"barcode":"A","quantity":1}]}"#)
        .send()
        .await
        .unwrap();
    let (status, err) = read(resp).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    ty_error(&err);
    // With a charset parameter it is fine.
    let resp = client()
        .post(ty_push_url(&m, TY))
        .header("User-Agent", TY_UA)
        .header("Authorization", basic(TY_KEY, TY_SECRET))
        .header("Content-Type", "application/json; charset=utf-8")
        .body(r#"{"items":[{"barcode":"A","quantity":1}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn trendyol_identical_body_refused_within_window() {
    let cfg = MockConfig {
        identical_window: Duration::from_millis(1200),
        ..config()
    };
    let m = start(cfg).await;
    let body = r#"{"items":[{"barcode":"A","quantity":1}]}"#;
    let (s, _) = read(ty_push_raw(&m, body).await).await;
    assert_eq!(s, StatusCode::OK);
    let (s, err) = read(ty_push_raw(&m, body).await).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let first = ty_error(&err);
    assert_eq!(first["message"], IDENTICAL_REQUEST_MESSAGE);
    assert_eq!(
        first["message"],
        "15 dakika boyunca aynı isteği tekrarlı olarak atamazsınız!"
    );
    assert_eq!(last_request(&m).note.as_deref(), Some("identical_request"));
    // Same JSON, different bytes: not identical.
    let (s, _) = read(ty_push_raw(&m, r#"{"items":[{"barcode":"A", "quantity":1}]}"#).await).await;
    assert_eq!(s, StatusCode::OK);
    // Another seller with the same bytes is unaffected.
    let m2 = start(config().with_account(MockAccount::trendyol("555", "k5", "s5"))).await;
    let (s, _) = read(ty_push_raw(&m2, body).await).await;
    assert_eq!(s, StatusCode::OK);
    let resp = client()
        .post(ty_push_url(&m2, "555"))
        .header("User-Agent", "555 - SelfIntegration")
        .header("Authorization", basic("k5", "s5"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // After the window it is accepted again.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (s, _) = read(ty_push_raw(&m, body).await).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn identical_status_is_configurable() {
    let m = start(MockConfig {
        identical_status: 429,
        ..config()
    })
    .await;
    let body = r#"{"items":[{"barcode":"A","quantity":2}]}"#;
    assert_eq!(ty_push_raw(&m, body).await.status(), StatusCode::OK);
    let (s, err) = read(ty_push_raw(&m, body).await).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(ty_error(&err)["message"], IDENTICAL_REQUEST_MESSAGE);
}

// ---------------------------------------------------------------- rate limit

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let cfg = MockConfig {
        rate_limit: RateLimit {
            max_requests: 3,
            window: Duration::from_millis(1500),
        },
        ..config()
    };
    let m = start(cfg).await;
    for i in 0..3 {
        let (s, _) = ty_push(&m, &json!({"items":[{"barcode":"A","quantity":i}]})).await;
        assert_eq!(s, StatusCode::OK);
    }
    let resp = ty_push_raw(&m, r#"{"items":[{"barcode":"A","quantity":9}]}"#).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let (_, err) = read(resp).await;
    assert_eq!(ty_error(&err)["key"], "too.many.requests");
    assert_eq!(m.quantity(TY, "A"), Some(2));
    assert_eq!(last_request(&m).note.as_deref(), Some("rate_limited"));

    // The batch endpoint is another endpoint with its own budget.
    let (s, _) = ty_batch(&m, "nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Hepsiburada, per merchant.
    for i in 0..3 {
        let (s, _) = hb_push(&m, &json!([{"merchantSku":"S","availableStock":i}])).await;
        assert_eq!(s, StatusCode::OK);
    }
    let resp = hb_push_raw(&m, r#"[{"merchantSku":"S","availableStock":9}]"#).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    let (_, err) = read(resp).await;
    assert_eq!(hb_error(&err)["code"], "TooManyRequests");

    // A slot frees when the window passes.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (s, _) = ty_push(&m, &json!({"items":[{"barcode":"A","quantity":7}]})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(m.quantity(TY, "A"), Some(7));
}

// ---------------------------------------------------------------- Hepsiburada

#[tokio::test]
async fn hepsiburada_upload_applies_and_completes() {
    let m = start(config()).await;
    let (s, body) = hb_push(
        &m,
        &json!([
            {"merchantSku":"SKU-1","availableStock":4},
            {"hepsiburadaSku":"HBV0001","availableStock":2,"maximumPurchasableQuantity":2},
            {"merchantSku":"SKU-3","hepsiburadaSku":"HBV0003","availableStock":0}
        ]),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let id = body["id"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok());
    assert_eq!(m.quantity(HB, "SKU-1"), Some(4));
    assert_eq!(m.quantity(HB, "HBV0001"), Some(2));
    assert_eq!(m.quantity(HB, "SKU-3"), Some(0));

    let (s, st) = hb_status(&m, id).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(st["id"], id);
    assert_eq!(st["status"], "Done", "what production answers");
    assert_eq!(st["total"], 3);
    assert_eq!(st["errors"], json!([]));
    assert!(chrono::DateTime::parse_from_rfc3339(st["createdAt"].as_str().unwrap()).is_ok());

    let state: MockState = m.state();
    let acc = state.account(Marketplace::Hepsiburada, HB).unwrap();
    assert_eq!(acc.stock.len(), 3);
}

#[tokio::test]
async fn hepsiburada_unknown_skus_are_element_errors() {
    let cfg = MockConfig::default()
        .with_account(MockAccount::hepsiburada(HB, HB_KEY).with_listings(["SKU-1", "SKU-2"]));
    let m = start(cfg).await;
    let (_, body) = hb_push(
        &m,
        &json!([
            {"merchantSku":"SKU-1","availableStock":4},
            {"merchantSku":"GHOST","hepsiburadaSku":"HBVX","availableStock":1},
            {"merchantSku":"SKU-2","availableStock":6}
        ]),
    )
    .await;
    let (_, st) = hb_status(&m, body["id"].as_str().unwrap()).await;
    assert_eq!(st["status"], "Done", "done, with the failed rows listed");
    assert_eq!(st["total"], 3);
    let errors = st["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["elementNo"], 1);
    assert_eq!(errors[0]["merchantSku"], "GHOST");
    assert_eq!(errors[0]["hepsiburadaSku"], "HBVX");
    assert!(errors[0]["errors"][0].is_string());
    assert_eq!(m.quantity(HB, "GHOST"), None);
    assert_eq!(m.quantity(HB, "SKU-2"), Some(6));
    assert_eq!(last_request(&m).failed_items, 0); // the status request
    assert_eq!(m.requests()[0].failed_items, 1);

    let (_, body) = hb_push(&m, &json!([{"merchantSku":"GHOST","availableStock":1}])).await;
    let (_, st) = hb_status(&m, body["id"].as_str().unwrap()).await;
    assert_eq!(st["status"], "Failed");
    assert_eq!(st["errors"][0]["elementNo"], 0);
    assert_eq!(st["errors"][0]["hepsiburadaSku"], Value::Null);
}

#[tokio::test]
async fn processing_delay_hides_results_until_it_elapses() {
    let cfg = MockConfig {
        // Long enough that a loaded machine still reads both results before it elapses.
        processing_delay: Duration::from_millis(3000),
        ..config()
    };
    let m = start(cfg).await;
    let (_, ty) = ty_push(
        &m,
        &json!({"items":[{"barcode":"A","quantity":1},{"barcode":"B","quantity":2}]}),
    )
    .await;
    let ty_id = ty["batchRequestId"].as_str().unwrap().to_string();
    let (_, hb) = hb_push(&m, &json!([{"merchantSku":"S","availableStock":3}])).await;
    let hb_id = hb["id"].as_str().unwrap().to_string();
    // Stock is applied on accept.
    assert_eq!(m.quantity(TY, "A"), Some(1));
    assert_eq!(m.quantity(HB, "S"), Some(3));

    let (s, batch) = ty_batch(&m, &ty_id).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(batch["items"], json!([]));
    assert_eq!(batch["itemCount"], 2);
    let (_, st) = hb_status(&m, &hb_id).await;
    assert_eq!(st["status"], "InProgress");
    assert_eq!(st["total"], 1);

    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (_, batch) = ty_batch(&m, &ty_id).await;
    assert_eq!(batch["items"].as_array().unwrap().len(), 2);
    assert!(batch["lastModification"].as_i64() > batch["creationDate"].as_i64());
    let (_, st) = hb_status(&m, &hb_id).await;
    assert_eq!(st["status"], "Done");
}

#[tokio::test]
async fn hepsiburada_refusals() {
    let m = start(config().with_account(MockAccount::hepsiburada("other-merchant", "ok"))).await;
    let body = r#"[{"merchantSku":"S","availableStock":1}]"#;
    // User-Agent missing or blank -> 403.
    for ua in [None, Some("  ")] {
        let mut req = client()
            .post(hb_push_url(&m, HB))
            .header("Authorization", basic(HB, HB_KEY))
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(ua) = ua {
            req = req.header("User-Agent", ua);
        }
        let (s, err) = read(req.send().await.unwrap()).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert_eq!(hb_error(&err)["code"], "UserAgentRequired");
    }
    // Credentials.
    let cases: Vec<(&str, Option<String>)> = vec![
        (HB, None),
        (HB, Some(basic(HB, "wrong"))),
        (HB, Some(basic("other-merchant", "ok"))), // someone else's pair
        (HB, Some(basic("someone", HB_KEY))),      // user is not the merchant id
        ("unknown-merchant", Some(basic("unknown-merchant", HB_KEY))),
    ];
    for (merchant, auth) in cases {
        let mut req = client()
            .post(hb_push_url(&m, merchant))
            .header("User-Agent", HB_UA)
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(a) = &auth {
            req = req.header("Authorization", a);
        }
        let (s, err) = read(req.send().await.unwrap()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{merchant} {auth:?}");
        assert_eq!(hb_error(&err)["code"], "Unauthorized");
    }
    // Status endpoint is guarded the same way.
    let resp = client()
        .get(hb_status_url(&m, HB, "x"))
        .header("User-Agent", HB_UA)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Validation.
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"merchantSku": format!("S{i}"), "availableStock": 1}))
        .collect();
    let cases: Vec<(&str, String, &str)> = vec![
        ("malformed", "[{".into(), "InvalidRequest"),
        (
            "object",
            r#"{"items":[{"merchantSku":"S","availableStock":1}]}"#.into(),
            "InvalidRequest",
        ),
        ("empty", "[]".into(), "EmptyRequest"),
        ("1001", Value::from(too_many).to_string(), "TooManyItems"),
        ("no sku", r#"[{"availableStock":1}]"#.into(), "SkuRequired"),
        (
            "blank sku",
            r#"[{"merchantSku":"","availableStock":1}]"#.into(),
            "SkuRequired",
        ),
        (
            "dup merchant",
            r#"[{"merchantSku":"S","availableStock":1},{"merchantSku":"S","availableStock":2}]"#
                .into(),
            "DuplicateSku",
        ),
        (
            "dup hb",
            r#"[{"hepsiburadaSku":"H","availableStock":1},{"hepsiburadaSku":"H","availableStock":2}]"#
                .into(),
            "DuplicateSku",
        ),
        (
            "fraction",
            r#"[{"merchantSku":"S","availableStock":1.5}]"#.into(),
            "InvalidAvailableStock",
        ),
        (
            "string",
            r#"[{"merchantSku":"S","availableStock":"3"}]"#.into(),
            "InvalidAvailableStock",
        ),
        (
            "null",
            r#"[{"merchantSku":"S","availableStock":null}]"#.into(),
            "InvalidAvailableStock",
        ),
        (
            "negative",
            r#"[{"merchantSku":"S","availableStock":-1}]"#.into(),
            "InvalidAvailableStock",
        ),
        (
            "too large",
            r#"[{"merchantSku":"S","availableStock":20001}]"#.into(),
            "InvalidAvailableStock",
        ),
        (
            "max purchasable",
            r#"[{"merchantSku":"S","availableStock":1,"maximumPurchasableQuantity":1.5}]"#.into(),
            "InvalidMaximumPurchasableQuantity",
        ),
    ];
    for (name, body, code) in cases {
        let (s, err) = read(hb_push_raw(&m, &body).await).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{name}: {err}");
        assert_eq!(hb_error(&err)["code"], code, "{name}: {err}");
    }
    assert!(m
        .state()
        .account(Marketplace::Hepsiburada, HB)
        .unwrap()
        .stock
        .is_empty());
}

#[tokio::test]
async fn hepsiburada_user_agent_status_is_configurable_and_unknown_id_is_404() {
    let m = start(MockConfig {
        hepsiburada_user_agent_status: 401,
        ..config()
    })
    .await;
    let resp = client()
        .post(hb_push_url(&m, HB))
        .header("Authorization", basic(HB, HB_KEY))
        .header("Content-Type", "application/json")
        .body(r#"[{"merchantSku":"S","availableStock":1}]"#)
        .send()
        .await
        .unwrap();
    let (s, err) = read(resp).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(hb_error(&err)["code"], "UserAgentRequired");

    let (s, err) = hb_status(&m, "5e0b4c1f-0000-0000-0000-000000000000").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(hb_error(&err)["code"], "NotFound");
}

// ---------------------------------------------------------------- faults

async fn post_faults(m: &MockMarketplace, faults: Value) -> (StatusCode, Value) {
    read(
        client()
            .post(format!("{}/_mock/faults", m.base_url()))
            .json(&faults)
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn fault_error_rate_answers_500() {
    let m = start(config()).await;
    let (s, f) = post_faults(&m, json!({"error_rate": 1.0})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(f["error_rate"], 1.0);
    let (s, f) = read(
        client()
            .get(format!("{}/_mock/faults", m.base_url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(f["error_rate"], 1.0);

    let (s, err) = ty_push(&m, &json!({"items":[{"barcode":"A","quantity":1}]})).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    ty_error(&err);
    let (s, _) = ty_batch(&m, "x").await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    let (s, err) = hb_push(&m, &json!([{"merchantSku":"S","availableStock":1}])).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    hb_error(&err);
    assert_eq!(m.quantity(TY, "A"), None);
    assert_eq!(last_request(&m).note.as_deref(), Some("fault:error"));
    assert_eq!(last_request(&m).item_count, 1);

    // /_mock/* is never faulted.
    let resp = client()
        .get(format!("{}/_mock/state", m.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    // Scope: push only.
    m.set_faults(Faults {
        error_rate: 1.0,
        scope: stocksync::mock::FaultScope::Push,
        ..Faults::default()
    });
    let (s, _) = ty_batch(&m, "x").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Bad faults are refused.
    let (s, _) = post_faults(&m, json!({"error_rate": 2.0})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = post_faults(&m, json!({"eror_rate": 0.5})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Clearing.
    let (s, _) = post_faults(&m, json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = ty_push(&m, &json!({"items":[{"barcode":"A","quantity":1}]})).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn faults_from_config_apply_at_start() {
    let m = start(MockConfig {
        faults: Faults {
            error_rate: 1.0,
            ..Faults::default()
        },
        ..config()
    })
    .await;
    let (s, _) = hb_push(&m, &json!([{"merchantSku":"S","availableStock":1}])).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn fault_latency_delays_answers() {
    let m = start(config()).await;
    m.set_faults(Faults {
        latency_ms: 300,
        ..Faults::default()
    });
    let t = Instant::now();
    let (s, _) = ty_push(&m, &json!({"items":[{"barcode":"A","quantity":1}]})).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    // Not on /_mock/* (an upper bound on time: checked on release builds only, where a
    // loaded machine cannot stretch an unhindered request to 300 ms).
    let t = Instant::now();
    client()
        .get(format!("{}/_mock/requests", m.base_url()))
        .send()
        .await
        .unwrap();
    if !cfg!(debug_assertions) {
        assert!(t.elapsed() < Duration::from_millis(300));
    }
}

#[tokio::test]
async fn fault_throttle_window_answers_429_then_recovers() {
    let m = start(config()).await;
    let (s, f) = post_faults(&m, json!({"throttle_for_ms": 1000, "retry_after_secs": 1})).await;
    assert_eq!(s, StatusCode::OK);
    assert!(f["throttle_until"].is_string());
    assert!(f.get("throttle_for_ms").is_none());
    let resp = ty_push_raw(&m, r#"{"items":[{"barcode":"A","quantity":1}]}"#).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "1");
    let (_, err) = read(resp).await;
    assert_eq!(ty_error(&err)["key"], "too.many.requests");
    let resp = hb_push_raw(&m, r#"[{"merchantSku":"S","availableStock":1}]"#).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(last_request(&m).note.as_deref(), Some("fault:throttle"));

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = ty_push_raw(&m, r#"{"items":[{"barcode":"A","quantity":1}]}"#).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // Without retry_after_secs the header counts the seconds left.
    m.set_faults(Faults {
        throttle_for_ms: Some(2500),
        ..Faults::default()
    });
    let resp = ty_push_raw(&m, r#"{"items":[{"barcode":"A","quantity":2}]}"#).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "3");
}

#[tokio::test]
async fn fault_reset_drops_the_connection() {
    let m = start(config()).await;
    m.set_faults(Faults {
        reset_rate: 1.0,
        ..Faults::default()
    });
    let err = client()
        .post(ty_push_url(&m, TY))
        .header("User-Agent", TY_UA)
        .header("Authorization", basic(TY_KEY, TY_SECRET))
        .header("Content-Type", "application/json")
        .body(r#"{"items":[{"barcode":"A","quantity":1}]}"#)
        .send()
        .await
        .expect_err("the connection is reset");
    assert!(!err.is_status(), "{err:?}");
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(m.quantity(TY, "A"), None, "not processed");
    let rec = last_request(&m);
    assert_eq!(rec.status, 0);
    assert_eq!(rec.note.as_deref(), Some("fault:reset"));

    // On the wire it is a real reset (RST), not an orderly close.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(m.addr()).await.unwrap();
        let body = r#"{"items":[{"barcode":"A","quantity":1}]}"#;
        let req = format!(
            "POST /integration/inventory/sellers/{TY}/products/price-and-inventory HTTP/1.1\r\n\
             Host: x\r\nUser-Agent: {TY_UA}\r\nAuthorization: {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            basic(TY_KEY, TY_SECRET),
            body.len()
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
            .await
            .expect("closed promptly");
        let err = read.expect_err("reset, not EOF");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
        assert!(buf.is_empty(), "no response bytes");
    }

    let err = client()
        .get(hb_status_url(&m, HB, "x"))
        .header("User-Agent", HB_UA)
        .header("Authorization", basic(HB, HB_KEY))
        .send()
        .await;
    assert!(err.is_err());

    // After apply: the stock changes but the answer is lost.
    m.set_faults(Faults {
        reset_rate: 1.0,
        reset_after_apply: true,
        ..Faults::default()
    });
    let res = client()
        .post(hb_push_url(&m, HB))
        .header("User-Agent", HB_UA)
        .header("Authorization", basic(HB, HB_KEY))
        .header("Content-Type", "application/json")
        .body(r#"[{"merchantSku":"S","availableStock":8}]"#)
        .send()
        .await;
    assert!(res.is_err());
    assert_eq!(m.quantity(HB, "S"), Some(8));
    let rec = last_request(&m);
    assert_eq!(rec.status, 0);
    assert!(rec.note.unwrap().starts_with("fault:reset_after_apply"));
    assert!(rec.batch_id.is_some());

    // The server keeps serving.
    m.set_faults(Faults::default());
    let (s, _) = ty_push(&m, &json!({"items":[{"barcode":"A","quantity":1}]})).await;
    assert_eq!(s, StatusCode::OK);
}

// ---------------------------------------------------------------- inspection

#[tokio::test]
async fn inspection_endpoints_and_reset() {
    let m = start(MockConfig {
        identical_window: Duration::from_secs(600),
        ..config()
    })
    .await;
    let body = r#"{"items":[{"barcode":"A","quantity":4}]}"#;
    let (_, pushed) = read(ty_push_raw(&m, body).await).await;
    let id = pushed["batchRequestId"].as_str().unwrap().to_string();
    hb_push(&m, &json!([{"merchantSku":"S","availableStock":6}])).await;

    let (s, state) = read(
        client()
            .get(format!("{}/_mock/state", m.base_url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let state: MockState = serde_json::from_value(state).unwrap();
    assert_eq!(state, m.state());
    assert_eq!(state.quantity(TY, "A"), Some(4));
    assert_eq!(
        state.account(Marketplace::Hepsiburada, HB).unwrap().stock["S"],
        6
    );
    assert!(!serde_json::to_string(&state).unwrap().contains(TY_SECRET));

    let (s, reqs) = read(
        client()
            .get(format!("{}/_mock/requests", m.base_url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let reqs: Vec<RequestRecord> = serde_json::from_value(reqs).unwrap();
    assert_eq!(reqs, m.requests());
    assert_eq!(reqs.len(), 2);
    let r = &reqs[0];
    assert_eq!(r.seq, 1);
    assert!(chrono::DateTime::parse_from_rfc3339(&r.time).is_ok());
    assert_eq!(r.time.len(), "2024-01-01T00:00:00.000Z".len(), "{}", r.time);
    assert_eq!(r.method, "POST");
    assert_eq!(
        r.path,
        format!("/integration/inventory/sellers/{TY}/products/price-and-inventory")
    );
    assert_eq!(r.seller_id.as_deref(), Some(TY));
    assert_eq!(r.user_agent.as_deref(), Some(TY_UA));
    assert_eq!(r.body_sha256.len(), 64);
    assert_eq!(r.body_bytes, body.len());
    assert_eq!(reqs[1].marketplace, Some(Marketplace::Hepsiburada));
    assert_eq!(reqs[1].item_count, 1);
    let log = serde_json::to_string(&reqs).unwrap();
    assert!(!log.contains(TY_SECRET) && !log.contains(HB_KEY));

    // Unknown marketplace paths are 404 and logged.
    let resp = client()
        .get(format!("{}/integration/nope", m.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(last_request(&m).note.as_deref(), Some("not_found"));

    let resp = client()
        .post(format!("{}/_mock/reset", m.base_url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(m.requests().is_empty());
    assert_eq!(m.quantity(TY, "A"), None);
    assert_eq!(m.state().accounts.len(), 2);
    let (s, _) = ty_batch(&m, &id).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // The identical-body memory is gone too.
    let (s, _) = read(ty_push_raw(&m, body).await).await;
    assert_eq!(s, StatusCode::OK);
    m.reset();
    assert!(m.requests().is_empty());
}

#[tokio::test]
async fn html_page_lists_stock_escaped() {
    let m = start(config()).await;
    ty_push(
        &m,
        &json!({"items":[{"barcode":"BC-777","quantity":12},{"barcode":"<script>x</script>","quantity":1}]}),
    )
    .await;
    let resp = client().get(m.base_url() + "/").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = resp.text().await.unwrap();
    assert!(html.contains("BC-777"));
    assert!(html.contains(TY));
    assert!(html.contains("http-equiv=\"refresh\""));
    assert!(html.contains("&lt;script&gt;x&lt;/script&gt;"));
    assert!(!html.contains("<script>"));
    assert!(!html.contains(TY_SECRET));
}

#[tokio::test]
async fn open_mode_accepts_any_credentials() {
    let m = start(MockConfig {
        open: true,
        ..config()
    })
    .await;
    let resp = client()
        .post(ty_push_url(&m, "31337"))
        .header("User-Agent", "31337 - SelfIntegration")
        .header("Authorization", basic("anything", "goes"))
        .header("Content-Type", "application/json")
        .body(r#"{"items":[{"barcode":"Z","quantity":3}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = client()
        .post(hb_push_url(&m, "new-merchant"))
        .header("User-Agent", HB_UA)
        .header("Authorization", basic("x", "y"))
        .header("Content-Type", "application/json")
        .body(r#"[{"merchantSku":"Q","availableStock":2}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(m.quantity("31337", "Z"), Some(3));
    assert_eq!(m.quantity("new-merchant", "Q"), Some(2));
    let state = m.state();
    assert!(
        !state
            .account(Marketplace::Trendyol, "31337")
            .unwrap()
            .configured
    );
    // Configured accounts still check their credentials; a Basic header is required.
    let resp = client()
        .post(ty_push_url(&m, TY))
        .header("User-Agent", TY_UA)
        .header("Authorization", basic(TY_KEY, "wrong"))
        .header("Content-Type", "application/json")
        .body(r#"{"items":[{"barcode":"Z","quantity":3}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = client()
        .post(ty_push_url(&m, "4040"))
        .header("User-Agent", "4040 - SelfIntegration")
        .header("Content-Type", "application/json")
        .body(r#"{"items":[{"barcode":"Z","quantity":3}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Reset forgets open-mode accounts.
    m.reset();
    assert!(m.state().account(Marketplace::Trendyol, "31337").is_none());
}

// ---------------------------------------------------------------- configuration

#[test]
fn account_specs_and_files() {
    let a = MockAccount::parse_spec("trendyol:123:key:secret").unwrap();
    assert_eq!(a, MockAccount::trendyol("123", "key", "secret"));
    let a = MockAccount::parse_spec("hepsiburada:m-1:sk:listings=A, B,C").unwrap();
    assert_eq!(
        a,
        MockAccount::hepsiburada("m-1", "sk").with_listings(["A", "B", "C"])
    );
    let a = MockAccount::parse_spec("ty:9:k:s:listings=X").unwrap();
    assert_eq!(a.marketplace, Marketplace::Trendyol);
    for bad in [
        "",
        "amazon:1:k:s",
        "trendyol:1:k",
        "hepsiburada:m",
        "trendyol::k:s",
        "trendyol:1:k:s:extra",
    ] {
        let err = MockAccount::parse_spec(bad).expect_err(bad);
        // Errors never echo secrets.
        assert!(!err.to_string().contains(":s:"), "{err}");
    }
    assert!(!format!("{:?}", MockAccount::trendyol("1", "k", "topsecret")).contains("topsecret"));

    let dir = std::env::temp_dir().join(format!("stocksync-mock-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("accounts.json");
    std::fs::write(
        &json_path,
        r#"{"accounts":[
            {"marketplace":"trendyol","seller_id":"1","api_key":"k","api_secret":"s","listings":["A"]},
            {"marketplace":"Hepsiburada","merchant_id":"m","service_key":"sk"}
        ]}"#,
    )
    .unwrap();
    let accounts = load_accounts_file(&json_path).unwrap();
    assert_eq!(
        accounts,
        vec![
            MockAccount::trendyol("1", "k", "s").with_listings(["A"]),
            MockAccount::hepsiburada("m", "sk")
        ]
    );
    let bare = dir.join("bare.json");
    std::fs::write(
        &bare,
        r#"[{"marketplace":"trendyol","seller_id":"1","api_key":"k","api_secret":"s"}]"#,
    )
    .unwrap();
    assert_eq!(load_accounts_file(&bare).unwrap().len(), 1);
    let toml_path = dir.join("accounts.toml");
    std::fs::write(
        &toml_path,
        r#"
[[accounts]]
marketplace = "trendyol"
seller_id = "1"
api_key = "k"
api_secret = "s"

[[accounts]]
marketplace = "hepsiburada"
seller_id = "m"
api_secret = "sk"
listings = ["X", "Y"]
"#,
    )
    .unwrap();
    let accounts = load_accounts_file(&toml_path).unwrap();
    assert_eq!(accounts.len(), 2);
    assert_eq!(accounts[1].listings.as_ref().unwrap().len(), 2);
    let yaml = dir.join("accounts.yaml");
    std::fs::write(&yaml, "").unwrap();
    assert!(load_accounts_file(&yaml).is_err());
    let broken = dir.join("broken.json");
    std::fs::write(&broken, r#"{"accounts":[{"marketplace":"trendyol"}]}"#).unwrap();
    assert!(load_accounts_file(&broken).is_err());
    std::fs::remove_dir_all(&dir).unwrap();

    assert_eq!(
        "50/10s".parse::<RateLimit>().unwrap(),
        RateLimit {
            max_requests: 50,
            window: Duration::from_secs(10)
        }
    );
    assert!("0/10s".parse::<RateLimit>().is_err());
    assert!("50".parse::<RateLimit>().is_err());
}

#[test]
fn cli_flags_build_a_config() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mock: MockArgs,
    }
    let cli = Cli::try_parse_from([
        "mock",
        "--account",
        "trendyol:123:k:s",
        "--account",
        "hepsiburada:m:sk:listings=A,B",
        "--identical-window",
        "2s",
        "--identical-status",
        "429",
        "--rate-limit",
        "240/1m",
        "--processing-delay",
        "500ms",
        "--error-rate",
        "0.25",
        "--latency",
        "20ms",
        "--throttle-for",
        "3s",
        "--retry-after-secs",
        "1",
    ])
    .unwrap();
    assert_eq!(cli.mock.listen.to_string(), "127.0.0.1:8089");
    let cfg = cli.mock.to_config().unwrap();
    assert_eq!(cfg.accounts.len(), 2);
    assert_eq!(cfg.identical_window, Duration::from_secs(2));
    assert_eq!(cfg.identical_status, 429);
    assert_eq!(cfg.rate_limit.max_requests, 240);
    assert_eq!(cfg.rate_limit.window, Duration::from_secs(60));
    assert_eq!(cfg.processing_delay, Duration::from_millis(500));
    assert_eq!(cfg.faults.error_rate, 0.25);
    assert_eq!(cfg.faults.latency_ms, 20);
    assert_eq!(cfg.faults.throttle_for_ms, Some(3000));
    assert!(!cfg.open);

    let defaults = Cli::try_parse_from(["mock", "--open"]).unwrap().mock;
    let cfg = defaults.to_config().unwrap();
    let d = MockConfig::default();
    assert!(cfg.open);
    assert_eq!(cfg.identical_window, d.identical_window);
    assert_eq!(cfg.identical_window, Duration::from_secs(900));
    assert_eq!(cfg.rate_limit, d.rate_limit);
    assert_eq!(cfg.trendyol_max_items, 1000);
    assert_eq!(cfg.max_quantity, 20000);
    assert_eq!(cfg.faults, Faults::default());

    assert!(Cli::try_parse_from(["mock", "--account", "trendyol:1"]).is_err());
    assert!(Cli::try_parse_from(["mock", "--error-rate", "1.5"]).is_err());
    assert!(Cli::try_parse_from(["mock", "--rate-limit", "fast"]).is_err());
}

#[tokio::test]
async fn start_refuses_bad_config_and_binds_port_zero() {
    let bad = MockConfig::default()
        .with_account(MockAccount::trendyol("1", "k", "s"))
        .with_account(MockAccount::trendyol("1", "k2", "s2"));
    let err = MockMarketplace::start(bad, "127.0.0.1:0".parse().unwrap())
        .await
        .err()
        .expect("duplicate account refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);

    let m = start(config()).await;
    assert_ne!(m.addr().port(), 0);
    assert_eq!(
        m.base_url(),
        format!("http://127.0.0.1:{}", m.addr().port())
    );
    let url = m.base_url();
    m.shutdown().await;
    assert!(client().get(url).send().await.is_err());
}

/// State-changing admin endpoints take JSON only (no cross-site form posts) and at most 1 MiB.
#[tokio::test]
async fn admin_posts_take_only_json_up_to_one_mebibyte() {
    let m = start(config()).await;
    let (s, _) = post_faults(&m, json!({"error_rate": 0.5})).await;
    assert_eq!(s, StatusCode::OK);
    for path in ["/_mock/reset", "/_mock/faults"] {
        let url = format!("{}{path}", m.base_url());
        // What a cross-site page can send without a CORS preflight: forms, text/plain, and a
        // body-less POST without any Content-Type.
        for (content_type, body) in [
            (Some("application/x-www-form-urlencoded"), "error_rate=0"),
            (Some("multipart/form-data; boundary=x"), "--x--"),
            (Some("text/plain"), "{\"error_rate\": 0}"),
            (None, ""),
        ] {
            let mut request = client().post(&url).body(body.to_string());
            if let Some(t) = content_type {
                request = request.header("content-type", t);
            }
            let resp = request.send().await.unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{path} with {content_type:?}"
            );
        }
        // More than 1 MiB, declared or streamed (chunked, no Content-Length).
        let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(1024 * 1024));
        let resp = client()
            .post(&url)
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        let status = post_chunked(m.addr(), path, big.as_bytes()).await;
        assert_eq!(status, 413, "{path} chunked");
    }
    assert_eq!(
        m.faults().error_rate,
        0.5,
        "no refused request changed anything"
    );
    let resp = client()
        .post(format!("{}/_mock/faults", m.base_url()))
        .header("content-type", "application/json; charset=utf-8")
        .body("{\"error_rate\": 0}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(m.faults().error_rate, 0.0);
}

/// A JSON POST with a chunked body (no Content-Length) over a plain socket; the status code.
async fn post_chunked(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(64 * 1024) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        // The server may answer and close before all of it is read.
        if tcp.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// This host's address on its default route (not loopback): a UDP "connect" sends nothing.
fn non_loopback_ip() -> std::net::IpAddr {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp socket");
    probe
        .connect("198.51.100.1:9")
        .expect("this test needs a non-loopback route");
    let ip = probe.local_addr().unwrap().ip();
    assert!(
        !ip.is_loopback() && !ip.is_unspecified(),
        "this test needs a non-loopback address, got {ip}"
    );
    ip
}

/// The page and `/_mock/*` answer only loopback peers asking for a loopback `Host`
/// (issue 25, item 9); the marketplace endpoints answer anyone. `--admin-any-peer` (the
/// compose file's container) lifts the peer rule, never the `Host` rule.
#[tokio::test]
async fn admin_endpoints_are_loopback_only_with_a_host_check() {
    let m = MockMarketplace::start(config(), "0.0.0.0:0".parse().unwrap())
        .await
        .expect("mock starts");
    let port = m.addr().port();
    let outside = format!("http://{}:{port}", non_loopback_ip());
    let c = reqwest::Client::new();
    let get = |base: &str, path: &str, host: Option<&str>| {
        let mut r = c.get(format!("{base}{path}"));
        if let Some(host) = host {
            r = r.header("host", host);
        }
        r.send()
    };
    for path in ["/", "/_mock/state", "/_mock/faults"] {
        // From this machine's own non-loopback address: another machine, as the mock sees it.
        let r = get(&outside, path, Some("localhost")).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path} from outside");
        // DNS rebinding: a page whose name resolves to 127.0.0.1.
        for host in ["evil.example", "evil.example:8089", "127.0.0.1.nip.io"] {
            let r = get(&m.base_url(), path, Some(host)).await.unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path} Host {host}");
        }
        for host in [
            None,
            Some("localhost:8089"),
            Some("127.0.0.1"),
            Some("[::1]:1"),
        ] {
            let r = get(&m.base_url(), path, host).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path} Host {host:?}");
        }
    }
    let reset = c
        .post(format!("{outside}/_mock/reset"))
        .header("content-type", "application/json")
        .header("host", "localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), StatusCode::FORBIDDEN);
    // The marketplace endpoints stay open to any peer (stocksync in another container).
    let batch = c
        .get(format!(
            "{outside}/integration/product/sellers/{TY}/products/batch-requests/nope"
        ))
        .header("authorization", basic(TY_KEY, TY_SECRET))
        .header("user-agent", TY_UA)
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), StatusCode::NOT_FOUND);
    m.shutdown().await;

    let m = MockMarketplace::start(
        MockConfig {
            admin_any_peer: true,
            ..config()
        },
        "0.0.0.0:0".parse().unwrap(),
    )
    .await
    .expect("mock starts");
    let outside = format!("http://{}:{}", non_loopback_ip(), m.addr().port());
    let r = get(&outside, "/_mock/state", Some("localhost:8089"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = get(&outside, "/_mock/state", None).await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "Host is the outside address"
    );
    m.shutdown().await;
}
