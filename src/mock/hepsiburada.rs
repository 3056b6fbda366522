//! Hepsiburada listing service: `POST .../stock-uploads` and
//! `GET .../stock-uploads/id/{id}`.
//!
//! Order of checks on both endpoints: User-Agent (the one the merchant authorised, see
//! [`super::Behaviour`]; configurable status, default 403),
//! Basic `merchantId:serviceKey` (401), rate limit (429). The push then checks
//! Content-Type (415) and the body (400). Error bodies are `{"errors":[{"message","code"}]}`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::config::Marketplace;
use super::limits::{retry_after_secs, Endpoint};
use super::state::{json_integer, Applied, AuthError, Batch, BatchItem, Inner, Shared};
use super::trendyol::is_json;
use super::{json_response, Outcome};

/// Error text of an element whose sku the merchant has not listed.
pub const UNKNOWN_SKU_ERROR: &str = "Listing not found for this merchant";

pub(crate) fn error_response(
    status: StatusCode,
    errors: Vec<(String, &'static str)>,
    outcome: Outcome,
) -> Response {
    let body = json!({
        "errors": errors
            .iter()
            .map(|(message, code)| json!({ "message": message, "code": code }))
            .collect::<Vec<_>>(),
    });
    json_response(status, body, outcome)
}

pub(crate) fn too_many_requests(retry_after: u64, limit: u32, note: &str) -> Response {
    let mut resp = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        vec![("Too many requests".to_string(), "TooManyRequests")],
        Outcome::note(note),
    );
    let h = resp.headers_mut();
    let num = |n: u64| HeaderValue::from_str(&n.to_string()).expect("digits");
    h.insert(header::RETRY_AFTER, num(retry_after));
    h.insert("x-ratelimit-limit", num(u64::from(limit)));
    h.insert("x-ratelimit-remaining", num(0));
    h.insert("x-ratelimit-reset", num(retry_after));
    resp
}

pub(crate) fn internal_error(note: &str) -> Response {
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        vec![(
            "Internal server error (mock: injected fault)".to_string(),
            "InternalServerError",
        )],
        Outcome::note(note),
    )
}

pub(crate) fn gate(
    shared: &Shared,
    inner: &mut Inner,
    merchant_id: &str,
    headers: &HeaderMap,
    endpoint: Endpoint,
) -> Result<(), Box<Response>> {
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim();
    if !shared.behaviour().hepsiburada_accepts(merchant_id, ua) {
        let status = StatusCode::from_u16(shared.config.hepsiburada_user_agent_status)
            .unwrap_or(StatusCode::FORBIDDEN);
        let note = if ua.is_empty() {
            "user_agent_missing"
        } else {
            "user_agent_refused"
        };
        return Err(Box::new(error_response(
            status,
            vec![(
                "User-Agent must be the developer user name the merchant authorised".to_string(),
                "UserAgentRequired",
            )],
            Outcome::note(note),
        )));
    }
    if let Err(e) = shared.authenticate(inner, Marketplace::Hepsiburada, merchant_id, headers) {
        let note = match e {
            AuthError::Missing => "auth_missing",
            AuthError::Malformed => "auth_malformed",
            AuthError::UnknownSeller => "unknown_seller",
            AuthError::WrongCredentials => "auth_wrong",
        };
        let mut resp = error_response(
            StatusCode::UNAUTHORIZED,
            vec![(format!("Unauthorized: {e}"), "Unauthorized")],
            Outcome::note(note),
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"hepsiburada\""),
        );
        return Err(Box::new(resp));
    }
    let limit = shared.config.rate_limit.max_requests;
    inner
        .limiter
        .check(
            Marketplace::Hepsiburada,
            merchant_id,
            endpoint,
            Instant::now(),
        )
        .map_err(|wait| {
            Box::new(too_many_requests(
                retry_after_secs(wait),
                limit,
                "rate_limited",
            ))
        })
}

struct UploadItem {
    /// Catalogue key: merchantSku, else hepsiburadaSku.
    key: String,
    other_sku: Option<String>,
    stock: i64,
    raw: Value,
}

fn sku(obj: &serde_json::Map<String, Value>, name: &str) -> Result<Option<String>, ()> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(()),
    }
}

type Problems = (Vec<(String, &'static str)>, usize);

fn validate(shared: &Shared, body: &[u8]) -> Result<Vec<UploadItem>, Problems> {
    let max_items = shared.config.hepsiburada_max_items;
    let max_q = shared.config.max_quantity;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| (vec![(format!("Malformed JSON: {e}"), "InvalidRequest")], 0))?;
    let Some(items) = value.as_array() else {
        return Err((
            vec![(
                "Request body must be a JSON array of stock items".to_string(),
                "InvalidRequest",
            )],
            0,
        ));
    };
    let n = items.len();
    if n == 0 {
        return Err((
            vec![(
                "Request must contain at least one item".to_string(),
                "EmptyRequest",
            )],
            0,
        ));
    }
    if n > max_items {
        return Err((
            vec![(
                format!("At most {max_items} items per request, got {n}"),
                "TooManyItems",
            )],
            n,
        ));
    }
    let mut errors = Vec::new();
    let mut out = Vec::with_capacity(n);
    let mut seen_merchant = HashSet::new();
    let mut seen_hb = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let Some(obj) = item.as_object() else {
            errors.push((format!("Element {i}: must be an object"), "InvalidItem"));
            continue;
        };
        let (merchant_sku, hb_sku) = match (sku(obj, "merchantSku"), sku(obj, "hepsiburadaSku")) {
            (Ok(m), Ok(h)) => (m, h),
            _ => {
                errors.push((
                    format!("Element {i}: merchantSku and hepsiburadaSku must be strings"),
                    "InvalidSku",
                ));
                continue;
            }
        };
        if merchant_sku.is_none() && hb_sku.is_none() {
            errors.push((
                format!("Element {i}: hepsiburadaSku or merchantSku is required"),
                "SkuRequired",
            ));
        }
        if let Some(m) = &merchant_sku {
            if !seen_merchant.insert(m.clone()) {
                errors.push((
                    format!("Element {i}: duplicate merchantSku {m:?} in one request"),
                    "DuplicateSku",
                ));
            }
        }
        if let Some(h) = &hb_sku {
            if !seen_hb.insert(h.clone()) {
                errors.push((
                    format!("Element {i}: duplicate hepsiburadaSku {h:?} in one request"),
                    "DuplicateSku",
                ));
            }
        }
        let stock = match json_integer(obj.get("availableStock")) {
            Some(q) if (0..=max_q).contains(&q) => Some(q),
            Some(q) => {
                errors.push((
                    format!("Element {i}: availableStock must be between 0 and {max_q}, got {q}"),
                    "InvalidAvailableStock",
                ));
                None
            }
            None => {
                errors.push((
                    format!(
                        "Element {i}: availableStock must be an integer, got {}",
                        obj.get("availableStock")
                            .map_or("nothing".to_string(), |v| v.to_string())
                    ),
                    "InvalidAvailableStock",
                ));
                None
            }
        };
        match obj.get("maximumPurchasableQuantity") {
            None | Some(Value::Null) => {}
            v => {
                if !matches!(json_integer(v), Some(q) if q >= 0) {
                    errors.push((
                        format!(
                            "Element {i}: maximumPurchasableQuantity must be a non-negative integer"
                        ),
                        "InvalidMaximumPurchasableQuantity",
                    ));
                }
            }
        }
        if let (Some(stock), Some(key)) = (stock, merchant_sku.clone().or(hb_sku.clone())) {
            let other_sku = if merchant_sku.is_some() { hb_sku } else { None };
            out.push(UploadItem {
                key,
                other_sku,
                stock,
                raw: item.clone(),
            });
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err((errors, n))
    }
}

/// `POST /listings/merchantid/{merchantId}/stock-uploads`
pub(crate) async fn push(
    State(shared): State<Arc<Shared>>,
    Path(merchant_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = shared.lock();
    if let Err(resp) = gate(&shared, &mut inner, &merchant_id, &headers, Endpoint::Push) {
        return *resp;
    }
    if shared.config.require_json_content_type && !is_json(&headers) {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            vec![(
                "Content-Type must be application/json".to_string(),
                "UnsupportedMediaType",
            )],
            Outcome::note("unsupported_media_type"),
        );
    }
    let items = match validate(&shared, &body) {
        Ok(items) => items,
        Err((errors, n)) => {
            let mut outcome = Outcome::note("validation");
            outcome.item_count = Some(n);
            return error_response(StatusCode::BAD_REQUEST, errors, outcome);
        }
    };
    let account = inner
        .accounts
        .get_mut(&(Marketplace::Hepsiburada, merchant_id.clone()))
        .expect("authenticated account exists");
    let mut outcome = Outcome {
        item_count: Some(items.len()),
        ..Outcome::default()
    };
    let mut batch_items = Vec::with_capacity(items.len());
    for item in items {
        let also: Vec<&str> = item.other_sku.iter().map(String::as_str).collect();
        let failure = match account.apply(&item.key, &also, item.stock) {
            Applied::Changed => None,
            Applied::Unchanged => {
                outcome.unchanged_items += 1;
                None
            }
            Applied::UnknownListing => {
                outcome.failed_items += 1;
                Some(UNKNOWN_SKU_ERROR.to_string())
            }
            Applied::Refused(code) => {
                outcome.failed_items += 1;
                Some(code.to_string())
            }
        };
        batch_items.push(BatchItem {
            request_item: item.raw,
            failure,
        });
    }
    let now = Instant::now();
    let id = Uuid::new_v4().to_string();
    shared.prune_batches(&mut inner, now);
    inner.batches.insert(
        (Marketplace::Hepsiburada, merchant_id, id.clone()),
        Batch {
            created_at: Utc::now(),
            created: now,
            ready_at: now + shared.config.processing_delay,
            items: batch_items,
        },
    );
    outcome.batch_id = Some(id.clone());
    json_response(StatusCode::OK, json!({ "id": id }), outcome)
}

/// `GET /listings/merchantid/{merchantId}/stock-uploads/id/{id}`
pub(crate) async fn upload_status(
    State(shared): State<Arc<Shared>>,
    Path((merchant_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut inner = shared.lock();
    if let Err(resp) = gate(
        &shared,
        &mut inner,
        &merchant_id,
        &headers,
        Endpoint::Status,
    ) {
        return *resp;
    }
    let now = Instant::now();
    shared.prune_batches(&mut inner, now);
    let key = (Marketplace::Hepsiburada, merchant_id, id.clone());
    let Some(batch) = inner.batches.get(&key) else {
        let mut outcome = Outcome::note("not_found");
        outcome.batch_id = Some(id.clone());
        return error_response(
            StatusCode::NOT_FOUND,
            vec![(format!("Stock upload {id} not found"), "NotFound")],
            outcome,
        );
    };
    let ready = now >= batch.ready_at;
    let row_skus = shared.behaviour().upload_error_row_skus;
    let errors: Vec<Value> = if ready {
        batch
            .items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let reason = item.failure.as_ref()?;
                let sent = |name: &str| item.request_item.get(name).and_then(Value::as_str);
                let (merchant_sku, hepsiburada_sku) =
                    row_skus.of(i, sent("merchantSku"), sent("hepsiburadaSku"));
                Some(json!({
                    "elementNo": i,
                    "hepsiburadaSku": hepsiburada_sku,
                    "merchantSku": merchant_sku,
                    "errors": [reason],
                }))
            })
            .collect()
    } else {
        Vec::new()
    };
    let total = batch.items.len();
    let words = shared.behaviour();
    let status = if !ready {
        words.upload_pending_word
    } else if !errors.is_empty() && errors.len() == total {
        words.upload_failed_word
    } else {
        words.upload_done_word
    };
    let body = json!({
        "id": id,
        "status": status,
        "createdAt": batch.created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "total": total,
        "errors": errors,
    });
    let outcome = Outcome {
        batch_id: Some(id),
        note: (!ready).then(|| "processing".to_string()),
        ..Outcome::default()
    };
    json_response(StatusCode::OK, body, outcome)
}
