//! Trendyol: `POST .../price-and-inventory` and `GET .../batch-requests/{id}`.
//!
//! Order of checks on both endpoints: User-Agent (403), Basic credentials and seller
//! (401), rate limit (429). The push then checks Content-Type (415), the body (400),
//! and the identical-body window (configurable status, default 400).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

use super::config::Marketplace;
use super::limits::{retry_after_secs, Endpoint};
use super::state::{epoch_millis, json_integer, wall_after, Applied, AuthError, Batch, BatchItem};
use super::state::{Inner, Shared};
use super::{json_response, sha256, Outcome};

/// The real service's message for a repeated identical body.
pub const IDENTICAL_REQUEST_MESSAGE: &str =
    "15 dakika boyunca aynı isteği tekrarlı olarak atamazsınız!";

/// Failure reason of an item whose barcode the seller has not listed.
pub const UNKNOWN_BARCODE_REASON: &str = "Ürün bulunamadı: barcode is not listed by this seller";

/// One `{"key","message","errorCode"}` entry.
pub(crate) struct TyError {
    key: String,
    message: String,
    code: &'static str,
}

pub(crate) fn err(
    key: impl Into<String>,
    message: impl Into<String>,
    code: &'static str,
) -> TyError {
    TyError {
        key: key.into(),
        message: message.into(),
        code,
    }
}

/// A Trendyol-shaped error body: `{"timestamp","exception","errors":[...]}`.
pub(crate) fn error_response(
    status: StatusCode,
    exception: &str,
    errors: Vec<TyError>,
    outcome: Outcome,
) -> Response {
    let body = json!({
        "timestamp": epoch_millis(Utc::now()),
        "exception": exception,
        "errors": errors.iter().map(|e| json!({
            "key": e.key,
            "message": e.message,
            "errorCode": e.code,
        })).collect::<Vec<_>>(),
    });
    json_response(status, body, outcome)
}

pub(crate) fn too_many_requests(retry_after: u64, note: &str) -> Response {
    let mut resp = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "ClientApiTooManyRequestsException",
        vec![err(
            "too.many.requests",
            "too.many.requests: at most the allowed number of requests per window to the same endpoint",
            "too.many.requests",
        )],
        Outcome::note(note),
    );
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        retry_after.to_string().parse().unwrap(),
    );
    resp
}

pub(crate) fn internal_error(note: &str) -> Response {
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "TrendyolSystemException",
        vec![err(
            "generic.exception",
            "Exception occurred (mock: injected fault)",
            "generic.exception",
        )],
        Outcome::note(note),
    )
}

pub(crate) fn not_found(what: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "ClientApiNotFoundException",
        vec![err("not.found", format!("{what} not found"), "not.found")],
        Outcome::note("not_found"),
    )
}

/// `{sellerId} - Name`, sellerId equal to the path's, Name alphanumeric, 1..=30 chars.
fn check_user_agent(seller_id: &str, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let forbidden = |key: &str, message: String, note: &str| {
        Box::new(error_response(
            StatusCode::FORBIDDEN,
            "ClientApiForbiddenException",
            vec![err(key, message, "forbidden")],
            Outcome::note(note),
        ))
    };
    let Some(ua) = headers.get(header::USER_AGENT) else {
        return Err(forbidden(
            "user.agent.missing",
            format!("User-Agent header is required, e.g. \"{seller_id} - SelfIntegration\""),
            "user_agent_missing",
        ));
    };
    let ua = ua.to_str().unwrap_or("");
    let valid = match ua.split_once(" - ") {
        Some((id, name)) => {
            id == seller_id
                && !name.is_empty()
                && name.len() <= 30
                && name.chars().all(|c| c.is_ascii_alphanumeric())
        }
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(forbidden(
            "user.agent.invalid",
            format!(
                "User-Agent must be \"{seller_id} - {{IntegratorName}}\" (alphanumeric name, at most 30 characters), e.g. \"{seller_id} - SelfIntegration\""
            ),
            "user_agent_invalid",
        ))
    }
}

fn unauthorized(e: &AuthError) -> Response {
    let note = match e {
        AuthError::Missing => "auth_missing",
        AuthError::Malformed => "auth_malformed",
        AuthError::UnknownSeller => "unknown_seller",
        AuthError::WrongCredentials => "auth_wrong",
    };
    let mut resp = error_response(
        StatusCode::UNAUTHORIZED,
        "ClientApiAuthenticationException",
        vec![err(
            "ClientApiAuthenticationException",
            format!("Unauthorized: {e}"),
            "unauthorized",
        )],
        Outcome::note(note),
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        "Basic realm=\"trendyol\"".parse().unwrap(),
    );
    resp
}

/// User-Agent, credentials and rate limit, in that order.
pub(crate) fn gate(
    shared: &Shared,
    inner: &mut Inner,
    seller_id: &str,
    headers: &HeaderMap,
    endpoint: Endpoint,
) -> Result<(), Box<Response>> {
    check_user_agent(seller_id, headers)?;
    shared
        .authenticate(inner, Marketplace::Trendyol, seller_id, headers)
        .map_err(|e| Box::new(unauthorized(&e)))?;
    inner
        .limiter
        .check(Marketplace::Trendyol, seller_id, endpoint, Instant::now())
        .map_err(|wait| Box::new(too_many_requests(retry_after_secs(wait), "rate_limited")))
}

pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

struct PushItem {
    barcode: String,
    quantity: i64,
    raw: Value,
}

/// Validates a push body; every problem is reported.
fn validate(shared: &Shared, body: &[u8]) -> Result<Vec<PushItem>, (Vec<TyError>, usize)> {
    let max_items = shared.config.trendyol_max_items;
    let max_q = shared.config.max_quantity;
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        (
            vec![err(
                "request.body",
                format!("Malformed JSON request: {e}"),
                "malformed.request",
            )],
            0,
        )
    })?;
    let Some(items) = value.get("items").and_then(Value::as_array) else {
        return Err((
            vec![err(
                "items",
                "body must be an object with an \"items\" array",
                "items.required",
            )],
            0,
        ));
    };
    let n = items.len();
    if n == 0 {
        return Err((
            vec![err("items", "items must not be empty", "items.empty")],
            0,
        ));
    }
    if n > max_items {
        return Err((
            vec![err(
                "items",
                format!("at most {max_items} items per request, got {n}"),
                "items.max.size.exceeded",
            )],
            n,
        ));
    }
    let mut errors = Vec::new();
    let mut out = Vec::with_capacity(n);
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let Some(obj) = item.as_object() else {
            errors.push(err(
                format!("items[{i}]"),
                "item must be an object",
                "item.invalid",
            ));
            continue;
        };
        let barcode = match obj.get("barcode") {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            _ => {
                errors.push(err(
                    format!("items[{i}].barcode"),
                    "barcode is required and must be a non-empty string",
                    "barcode.required",
                ));
                None
            }
        };
        if let Some(b) = &barcode {
            if !seen.insert(b.clone()) {
                errors.push(err(
                    format!("items[{i}].barcode"),
                    format!("duplicate barcode {b:?} in one request"),
                    "barcode.duplicate",
                ));
            }
        }
        let quantity = match json_integer(obj.get("quantity")) {
            Some(q) if (0..=max_q).contains(&q) => Some(q),
            Some(q) => {
                errors.push(err(
                    format!("items[{i}].quantity"),
                    format!("quantity must be between 0 and {max_q}, got {q}"),
                    "quantity.out.of.range",
                ));
                None
            }
            None => {
                errors.push(err(
                    format!("items[{i}].quantity"),
                    format!(
                        "quantity must be an integer, got {}",
                        obj.get("quantity")
                            .map_or("nothing".to_string(), |v| v.to_string())
                    ),
                    "quantity.invalid",
                ));
                None
            }
        };
        for price in ["salePrice", "listPrice"] {
            match obj.get(price) {
                None => {}
                Some(Value::Number(p)) if p.as_f64().is_some_and(|p| p > 0.0) => {}
                Some(v) => errors.push(err(
                    format!("items[{i}].{price}"),
                    format!("{price} must be a positive number, got {v}"),
                    "price.invalid",
                )),
            }
        }
        if let (Some(barcode), Some(quantity)) = (barcode, quantity) {
            out.push(PushItem {
                barcode,
                quantity,
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

/// `POST /integration/inventory/sellers/{sellerId}/products/price-and-inventory`
pub(crate) async fn push(
    State(shared): State<Arc<Shared>>,
    Path(seller_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = shared.lock();
    if let Err(resp) = gate(&shared, &mut inner, &seller_id, &headers, Endpoint::Push) {
        return *resp;
    }
    if shared.config.require_json_content_type && !is_json(&headers) {
        return error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "HttpMediaTypeNotSupportedException",
            vec![err(
                "content.type",
                "Content-Type must be application/json",
                "unsupported.media.type",
            )],
            Outcome::note("unsupported_media_type"),
        );
    }
    let items = match validate(&shared, &body) {
        Ok(items) => items,
        Err((errors, n)) => {
            let mut outcome = Outcome::note("validation");
            outcome.item_count = Some(n);
            return error_response(
                StatusCode::BAD_REQUEST,
                "ClientApiValidationException",
                errors,
                outcome,
            );
        }
    };
    let now = Instant::now();
    let hash = sha256(&body);
    if inner.identical.is_repeat(&seller_id, &hash, now) {
        let status =
            StatusCode::from_u16(shared.config.identical_status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut outcome = Outcome::note("identical_request");
        outcome.item_count = Some(items.len());
        return error_response(
            status,
            "ClientApiBusinessException",
            vec![err(
                "identical.request",
                IDENTICAL_REQUEST_MESSAGE,
                "identical.request",
            )],
            outcome,
        );
    }
    inner.identical.remember(&seller_id, hash, now);

    // Accept: apply to the catalogue now, results become visible after the delay.
    let account = inner
        .accounts
        .get_mut(&(Marketplace::Trendyol, seller_id.clone()))
        .expect("authenticated account exists");
    let mut outcome = Outcome {
        item_count: Some(items.len()),
        ..Outcome::default()
    };
    let behaviour = shared.behaviour();
    let mut batch_items = Vec::with_capacity(items.len());
    for mut item in items {
        // Trendyol keeps (and reports) barcodes without spaces.
        let kept = behaviour.trendyol_barcode(&item.barcode);
        if kept != item.barcode {
            if let Some(obj) = item.raw.as_object_mut() {
                obj.insert("barcode".into(), Value::String(kept.clone()));
            }
        }
        let failure = match account.apply(&kept, &[], item.quantity) {
            Applied::Changed => None,
            Applied::Unchanged => {
                outcome.unchanged_items += 1;
                None
            }
            Applied::UnknownListing => {
                outcome.failed_items += 1;
                Some(UNKNOWN_BARCODE_REASON.to_string())
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
    let created_at = Utc::now();
    let id = format!("{}-{}", Uuid::new_v4(), created_at.timestamp());
    shared.prune_batches(&mut inner, now);
    inner.batches.insert(
        (Marketplace::Trendyol, seller_id, id.clone()),
        Batch {
            created_at,
            created: now,
            ready_at: now + shared.config.processing_delay,
            items: batch_items,
        },
    );
    outcome.batch_id = Some(id.clone());
    json_response(StatusCode::OK, json!({ "batchRequestId": id }), outcome)
}

/// `GET /integration/product/sellers/{sellerId}/products/batch-requests/{batchRequestId}`
pub(crate) async fn batch_result(
    State(shared): State<Arc<Shared>>,
    Path((seller_id, batch_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut inner = shared.lock();
    if let Err(resp) = gate(&shared, &mut inner, &seller_id, &headers, Endpoint::Status) {
        return *resp;
    }
    let now = Instant::now();
    shared.prune_batches(&mut inner, now);
    let key = (Marketplace::Trendyol, seller_id, batch_id.clone());
    let Some(batch) = inner.batches.get(&key) else {
        let mut resp = not_found(&format!("batch request {batch_id}"));
        if let Some(o) = resp.extensions_mut().get_mut::<Outcome>() {
            o.batch_id = Some(batch_id);
        }
        return resp;
    };
    let ready = now >= batch.ready_at;
    let created_ms = epoch_millis(batch.created_at);
    let items: Vec<Value> = if ready {
        batch
            .items
            .iter()
            .map(|i| {
                json!({
                    "requestItem": i.request_item,
                    "status": if i.failure.is_some() { "FAILED" } else { "SUCCESS" },
                    "failureReasons": i.failure.iter().collect::<Vec<_>>(),
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    let failed = if ready {
        batch.items.iter().filter(|i| i.failure.is_some()).count()
    } else {
        0
    };
    let last_modification = if ready {
        epoch_millis(wall_after(batch.created_at, batch.ready_at - batch.created))
    } else {
        created_ms
    };
    let body = json!({
        "batchRequestId": batch_id,
        "items": items,
        "itemCount": batch.items.len(),
        "failedItemCount": failed,
        "batchRequestType": "ProductInventoryUpdate",
        "creationDate": created_ms,
        "lastModification": last_modification,
    });
    let outcome = Outcome {
        batch_id: Some(batch_id),
        note: (!ready).then(|| "processing".to_string()),
        ..Outcome::default()
    };
    json_response(StatusCode::OK, body, outcome)
}
