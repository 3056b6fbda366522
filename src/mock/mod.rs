//! A strict local mock of the Trendyol and Hepsiburada stock endpoints, for tests,
//! staging and the demo. Both marketplaces are served on one port with their real
//! paths (see `/work/shared/docs/marketplace-contracts.md`):
//!
//! | endpoint | path |
//! | --- | --- |
//! | Trendyol push | `POST /integration/inventory/sellers/{sellerId}/products/price-and-inventory` |
//! | Trendyol batch result | `GET /integration/product/sellers/{sellerId}/products/batch-requests/{batchRequestId}` |
//! | Hepsiburada push | `POST /listings/merchantid/{merchantId}/stock-uploads` |
//! | Hepsiburada upload status | `GET /listings/merchantid/{merchantId}/stock-uploads/id/{id}` |
//! | Trendyol stock read | `GET /integration/product/sellers/{sellerId}/products/approved/inventory-and-price` |
//! | Hepsiburada listings | `GET /listings/merchantid/{merchantId}` |
//!
//! The two reads, and the seller panel that changes stock without a push
//! (`POST /_mock/edit`), are described in [`reads`].
//!
//! # What is enforced
//!
//! Checks run in this order; the first failing one answers:
//!
//! 1. **Faults** (if configured): added latency, connection reset (TCP RST, nothing
//!    sent), forced `429` window with `Retry-After`, random `500`.
//! 2. **User-Agent**. Trendyol: missing, or not `{sellerId} - Name` with sellerId equal
//!    to the path's and Name alphanumeric of at most 30 characters -> `403`.
//!    Hepsiburada: missing or blank -> `403` (configurable).
//! 3. **Credentials**: `Authorization: Basic`; Trendyol `apiKey:apiSecret`, Hepsiburada
//!    `merchantId:serviceKey`. Missing, malformed, wrong, or an unknown seller -> `401`
//!    (Trendyol body carries `"exception":"ClientApiAuthenticationException"`). With
//!    `open`, unknown sellers are created on first use with any credentials (a Basic
//!    header is still required); configured accounts still check theirs.
//! 4. **Rate limit**: more than N requests per window per seller per endpoint (push and
//!    status count separately; default 50 / 10 s) -> `429` with `Retry-After` (seconds
//!    until a slot frees, at least 1). Refused requests do not use a slot.
//! 5. **Content-Type** of pushes must be `application/json` -> else `415`
//!    (can be switched off).
//! 6. **Body validation** -> `400`: malformed JSON, wrong shape, no items, more than the
//!    per-marketplace maximum (default 1000), duplicate barcodes (Trendyol) or duplicate
//!    merchantSku/hepsiburadaSku (Hepsiburada), quantity/availableStock that is not a
//!    JSON integer (`1.5`, `"3"`, `null`, `1.0`, missing) or outside `0..=max_quantity`
//!    (default 20000), Hepsiburada items naming neither sku. Trendyol bodies are
//!    `{"timestamp","exception","errors":[{"key","message","errorCode"}]}`, Hepsiburada
//!    bodies `{"errors":[{"message","code"}]}`. Every problem is listed.
//! 7. **Identical body** (Trendyol only): the raw bytes (SHA-256) equal to a body
//!    *accepted* for the same seller within the window (default 15 min) -> configurable
//!    status (default `400`) with the real message
//!    `15 dakika boyunca aynı isteği tekrarlı olarak atamazsınız!`.
//!
//! # Accepting a push
//!
//! Stock is applied to the in-memory catalogue **when the batch is accepted** (simplest
//! choice, documented): `GET /_mock/state` changes at once, only the batch *results*
//! wait for `processing_delay` (default 0). Until then a Trendyol batch result has
//! `"items": []` with the final `itemCount` (clients must poll until items appear) and a
//! Hepsiburada upload is `PROCESSING`. Afterwards Hepsiburada reports `COMPLETED`,
//! `COMPLETED_WITH_ERRORS` (some elements failed) or `FAILED` (all failed).
//!
//! Items naming a barcode/sku outside the account's known-listing set (when one is
//! configured) are accepted at HTTP level, come back `FAILED` (Trendyol
//! `failureReasons`, Hepsiburada an `errors` entry with the 0-based `elementNo`) and do
//! not change the catalogue. Items whose quantity equals the catalogue's already succeed
//! but are counted as `unchanged_items` in the request log, so tests can assert the
//! client only sends changes. Batch results are kept `batch_retention` (default 4 h,
//! as Trendyol), then `404`; unknown ids are `404`.
//!
//! # Contract rows that are unconfirmed, hence configurable
//!
//! * status of the identical-body refusal ([`MockConfig::identical_status`]);
//! * Hepsiburada without User-Agent ([`MockConfig::hepsiburada_user_agent_status`]);
//! * Hepsiburada items per request ([`MockConfig::hepsiburada_max_items`]) and its rate
//!   limit (the same [`MockConfig::rate_limit`] as Trendyol; the real one may be about
//!   240/min);
//! * Hepsiburada status values (the four above are used) and error texts;
//! * error `key`/`errorCode`/`exception` names other than
//!   `ClientApiAuthenticationException` and `too.many.requests` are the mock's own.
//!
//! Not modelled: Trendyol's per-minute tier caps, Hepsiburada's "at most 5 pending
//! uploads", prices (accepted and echoed, not stored).
//!
//! # Inspection and control (never faulted, never rate limited)
//!
//! `GET /_mock/state`, `GET /_mock/requests`, `POST /_mock/reset` (catalogues, batches,
//! request log, limiter and identical-body memories, open-mode accounts, panel changes;
//! faults are kept), `GET|POST /_mock/faults` (the posted [`Faults`] replaces the current
//! set), `POST /_mock/edit` (the seller panel, [`PanelEdit`]), `POST /_mock/order` (an order
//! lowering a listing's stock on the marketplace's side, [`MockMarketplace::order`]),
//! and an HTML page at `/` refreshing every 2 s. Credentials are never logged or shown.
//! State-changing `/_mock/*` requests must carry `Content-Type: application/json` (`415`
//! otherwise: no cross-site form posts) and at most 1 MiB of body (`413`). The page and
//! `/_mock/*` answer only loopback peers (unless [`MockConfig::admin_any_peer`]) asking for a
//! loopback `Host` (`403` otherwise: another machine, or a web page through a name that
//! resolves to 127.0.0.1, cannot read or change the mock's state).

mod behaviour;
mod cli;
mod config;
mod faults;
mod hepsiburada;
mod limits;
mod page;
pub mod reads;
mod state;
mod trendyol;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use behaviour::{Behaviour, ErrorRowSkus, ListingFlags};
pub use cli::{run_cli, MockArgs};
pub use config::{
    load_accounts_file, ConfigError, EchoMode, FaultScope, Faults, Marketplace, MockAccount,
    MockConfig, RateLimit,
};
pub use hepsiburada::UNKNOWN_SKU_ERROR;
pub use page::escape_html;
pub use reads::{PanelEdit, ReadsConfig};
pub use state::{AccountState, MockState, RequestRecord};
pub use trendyol::{IDENTICAL_REQUEST_MESSAGE, UNKNOWN_BARCODE_REASON};

use faults::{ConnHandle, MockListener};
use limits::Endpoint;
use state::Shared;

/// Largest request body read (1000 items are well below 1 MiB).
const MAX_BODY: usize = 32 * 1024 * 1024;

/// Largest body of a state-changing `/_mock/*` request (a faults document is a few hundred
/// bytes).
const MAX_ADMIN_BODY: usize = 1024 * 1024;

/// A running mock marketplace. Dropping it stops serving (in the background);
/// [`MockMarketplace::shutdown`] waits for that.
pub struct MockMarketplace {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl MockMarketplace {
    /// Binds `listen` (port 0 picks a free port) and starts serving.
    pub async fn start(config: MockConfig, listen: SocketAddr) -> io::Result<MockMarketplace> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config));
        let app = router(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let serve = axum::serve(
            MockListener::new(listener),
            app.into_make_service_with_connect_info::<ConnHandle>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
        let task = tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "mock marketplace server failed");
            }
        });
        tracing::info!(%addr, "mock marketplace listening");
        Ok(MockMarketplace {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (an unspecified listen address is given as loopback).
    pub fn base_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            });
        }
        format!("http://{addr}")
    }

    /// Current quantity of a barcode/sku at the first account with this seller id (a
    /// Trendyol barcode is looked up as Trendyol keeps it).
    pub fn quantity(&self, seller_id: &str, barcode_or_sku: &str) -> Option<i64> {
        let kept = self.shared.behaviour().trendyol_barcode(barcode_or_sku);
        let inner = self.shared.lock();
        inner
            .accounts
            .values()
            .filter(|a| a.seller_id == seller_id)
            .find_map(|a| {
                let key = match a.marketplace {
                    Marketplace::Trendyol => kept.as_str(),
                    Marketplace::Hepsiburada => barcode_or_sku,
                };
                a.stock.get(key).copied()
            })
    }

    /// Current quantity at one marketplace's account (seller ids may repeat across
    /// marketplaces).
    pub fn quantity_in(
        &self,
        marketplace: Marketplace,
        seller_id: &str,
        barcode_or_sku: &str,
    ) -> Option<i64> {
        let inner = self.shared.lock();
        inner
            .accounts
            .get(&(marketplace, seller_id.to_string()))
            .and_then(|a| a.stock.get(barcode_or_sku).copied())
    }

    /// Snapshot of all catalogues (as `GET /_mock/state`).
    pub fn state(&self) -> MockState {
        self.shared.state()
    }

    /// Every marketplace request so far (as `GET /_mock/requests`).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.requests()
    }

    /// Replaces the faults (as `POST /_mock/faults`). Rates are clamped to 0..=1.
    pub fn set_faults(&self, mut faults: Faults) {
        faults.error_rate = clamp_rate(faults.error_rate);
        faults.reset_rate = clamp_rate(faults.reset_rate);
        self.shared.set_faults(faults);
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.shared.faults()
    }

    /// Replaces the behaviour (as `POST /_mock/behaviour`).
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.shared.set_behaviour(behaviour);
    }

    /// The behaviour in force.
    pub fn behaviour(&self) -> Behaviour {
        self.shared.behaviour()
    }

    /// Sets the flags of one listing (as `POST /_mock/listing`); the account must exist.
    pub fn set_listing_flags(
        &self,
        marketplace: Marketplace,
        seller_id: &str,
        key: &str,
        flags: ListingFlags,
    ) -> bool {
        self.shared
            .set_listing_flags(marketplace, seller_id, key, flags)
    }

    /// An order on the marketplace's side, as a buyer's would be: the listing's stock drops
    /// by `units` (not below 0) and `stockLastModifiedDate` becomes now, while the seller's
    /// database learns of it only when its order import runs. Returns the stock left; `None`
    /// when the account or the listing's stock does not exist. As `POST /_mock/order`.
    pub fn order(
        &self,
        marketplace: Marketplace,
        seller_id: &str,
        key: &str,
        units: i64,
    ) -> Option<i64> {
        self.shared.order(marketplace, seller_id, key, units)
    }

    /// As `POST /_mock/reset`.
    pub fn reset(&self) {
        self.shared.reset();
    }

    /// Stops accepting, lets in-flight requests finish (at most 5 s), and returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for MockMarketplace {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn clamp_rate(r: f64) -> f64 {
    if r.is_nan() {
        0.0
    } else {
        r.clamp(0.0, 1.0)
    }
}

/// What a handler tells the request log about its answer (a response extension).
#[derive(Clone, Debug, Default)]
pub(crate) struct Outcome {
    pub item_count: Option<usize>,
    pub unchanged_items: usize,
    pub failed_items: usize,
    pub note: Option<String>,
    pub batch_id: Option<String>,
}

impl Outcome {
    pub(crate) fn note(note: &str) -> Self {
        Outcome {
            note: Some(note.to_string()),
            ..Outcome::default()
        }
    }
}

pub(crate) fn json_response(status: StatusCode, body: Value, outcome: Outcome) -> Response {
    let mut resp = (status, Json(body)).into_response();
    resp.extensions_mut().insert(outcome);
    resp
}

pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = Sha256::digest(bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(&digest);
    out
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn router(shared: Arc<Shared>) -> Router {
    let marketplaces = Router::new()
        .route(
            "/integration/inventory/sellers/{seller_id}/products/price-and-inventory",
            post(trendyol::push),
        )
        .route(
            "/integration/product/sellers/{seller_id}/products/batch-requests/{batch_id}",
            get(trendyol::batch_result),
        )
        .route(
            "/listings/merchantid/{merchant_id}/stock-uploads",
            post(hepsiburada::push),
        )
        .route(
            "/listings/merchantid/{merchant_id}/stock-uploads/id/{id}",
            get(hepsiburada::upload_status),
        )
        .route(
            "/integration/product/sellers/{seller_id}/products/approved/inventory-and-price",
            get(reads::trendyol_read),
        )
        .route(
            "/listings/merchantid/{merchant_id}",
            get(reads::hepsiburada_read),
        )
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            marketplace_layer,
        ));
    let admin = Router::new()
        .route("/", get(page))
        .route("/_mock/state", get(admin_state))
        .route("/_mock/requests", get(admin_requests))
        .route("/_mock/reset", post(admin_reset))
        .route(
            "/_mock/faults",
            get(admin_get_faults).post(admin_set_faults),
        )
        .route("/_mock/edit", post(reads::edit))
        .route(
            "/_mock/behaviour",
            get(admin_get_behaviour).post(admin_set_behaviour),
        )
        .route("/_mock/listing", post(admin_set_listing))
        .route("/_mock/order", post(admin_order))
        .route_layer(middleware::from_fn(admin_guard))
        .route_layer(middleware::from_fn_with_state(shared.clone(), admin_origin))
        .route_layer(DefaultBodyLimit::max(MAX_ADMIN_BODY));
    marketplaces
        .merge(admin)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

/// Which marketplace endpoint a path is, and its seller id.
fn classify(path: &str) -> Option<(Marketplace, Endpoint, String)> {
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match seg.as_slice() {
        ["integration", "inventory", "sellers", s, "products", "price-and-inventory"] => {
            Some((Marketplace::Trendyol, Endpoint::Push, s.to_string()))
        }
        ["integration", "product", "sellers", s, "products", "batch-requests", _] => {
            Some((Marketplace::Trendyol, Endpoint::Status, s.to_string()))
        }
        ["listings", "merchantid", m, "stock-uploads"] => {
            Some((Marketplace::Hepsiburada, Endpoint::Push, m.to_string()))
        }
        ["listings", "merchantid", m, "stock-uploads", "id", _] => {
            Some((Marketplace::Hepsiburada, Endpoint::Status, m.to_string()))
        }
        ["integration", "product", "sellers", s, "products", "approved", "inventory-and-price"] => {
            Some((Marketplace::Trendyol, Endpoint::Read, s.to_string()))
        }
        ["listings", "merchantid", m] => {
            Some((Marketplace::Hepsiburada, Endpoint::Read, m.to_string()))
        }
        _ => None,
    }
}

/// Items in a push body, for the log of requests refused before parsing.
fn count_items(marketplace: Marketplace, body: &[u8]) -> usize {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return 0;
    };
    match marketplace {
        Marketplace::Trendyol => v.get("items").and_then(Value::as_array).map_or(0, Vec::len),
        Marketplace::Hepsiburada => v.as_array().map_or(0, Vec::len),
    }
}

fn base_record(
    time: chrono::DateTime<Utc>,
    method: &Method,
    path: &str,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> RequestRecord {
    RequestRecord {
        seq: 0,
        time: time.to_rfc3339_opts(SecondsFormat::Millis, true),
        marketplace: None,
        endpoint: None,
        seller_id: None,
        method: method.to_string(),
        path: path.to_string(),
        status: 0,
        item_count: 0,
        unchanged_items: 0,
        failed_items: 0,
        body_sha256: hex(&sha256(body)),
        body_bytes: body.len(),
        user_agent: headers
            .get(header::USER_AGENT)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        note: None,
        batch_id: None,
    }
}

/// Around every marketplace endpoint: buffers the body, applies faults, and logs the
/// request with what the handler reported.
async fn marketplace_layer(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let time = Utc::now();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => Bytes::new(),
    };
    let mut rec = base_record(time, &parts.method, &path, &parts.headers, &body);
    let Some((marketplace, endpoint, seller_id)) = classify(&path) else {
        // Routes and classify agree; answer rather than panic if they ever do not.
        return next.run(Request::from_parts(parts, Body::from(body))).await;
    };
    rec.marketplace = Some(marketplace);
    rec.endpoint = Some(endpoint.as_str().to_string());
    rec.seller_id = Some(seller_id);
    if endpoint == Endpoint::Push {
        rec.item_count = count_items(marketplace, &body);
    }
    let conn = parts
        .extensions
        .get::<ConnectInfo<ConnHandle>>()
        .map(|c| c.0.clone());

    let plan = faults::plan(&shared.faults(), endpoint, time);
    if !plan.latency.is_zero() {
        tokio::time::sleep(plan.latency).await;
    }
    let faulted = if plan.reset == Some(false) {
        if let Some(conn) = &conn {
            tracing::debug!(peer = %conn.peer, %path, "mock: injected connection reset");
            conn.reset();
        }
        rec.note = Some("fault:reset".into());
        Some(internal_error(marketplace, "fault:reset"))
    } else if let Some(retry_after) = plan.throttle {
        let mut resp = match marketplace {
            Marketplace::Trendyol => trendyol::too_many_requests(retry_after, "fault:throttle"),
            Marketplace::Hepsiburada => hepsiburada::too_many_requests(
                retry_after,
                shared.config.rate_limit.max_requests,
                "fault:throttle",
            ),
        };
        if let Some(text) = plan
            .throttle_header
            .as_deref()
            .and_then(|t| HeaderValue::from_str(t).ok())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, text.clone());
            resp.headers_mut().insert("x-ratelimit-reset", text);
        }
        Some(resp)
    } else if let Some(status) = plan.status {
        Some(echoing_status(
            marketplace,
            status,
            &parts.headers,
            &shared.faults().echo,
        ))
    } else if plan.error {
        Some(internal_error(marketplace, "fault:error"))
    } else {
        None
    };
    let mut resp = match faulted {
        Some(resp) => resp,
        None => next.run(Request::from_parts(parts, Body::from(body))).await,
    };
    let outcome = resp
        .extensions_mut()
        .remove::<Outcome>()
        .unwrap_or_default();
    rec.status = resp.status().as_u16();
    if let Some(n) = outcome.item_count {
        rec.item_count = n;
    }
    rec.unchanged_items = outcome.unchanged_items;
    rec.failed_items = outcome.failed_items;
    rec.batch_id = outcome.batch_id;
    if rec.note.is_none() {
        rec.note = outcome.note;
    }
    if plan.reset == Some(true) {
        if let Some(conn) = &conn {
            conn.reset();
        }
        rec.note = Some(format!(
            "fault:reset_after_apply (handler answered {})",
            rec.status
        ));
    }
    if plan.reset.is_some() && conn.is_some() {
        rec.status = 0;
    }
    tracing::debug!(
        marketplace = %marketplace,
        method = %rec.method,
        path = %rec.path,
        status = rec.status,
        items = rec.item_count,
        note = rec.note.as_deref().unwrap_or(""),
        "mock marketplace request"
    );
    shared.record(rec);
    resp
}

/// A forced status whose body echoes the credentials the request carried, decoded, and the
/// Authorization header itself: what a misconfigured gateway may answer.
fn echoing_status(
    marketplace: Marketplace,
    status: u16,
    headers: &axum::http::HeaderMap,
    echo: &config::EchoMode,
) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let decoded = authorization
        .strip_prefix("Basic ")
        .and_then(|t| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(t.trim())
                .ok()
        })
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let message =
        format!("request refused by the gateway for {decoded} (Authorization: {authorization})");
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let outcome = Outcome::note("fault:status");
    if echo.encodings || echo.padding > 0 {
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            encoded_echo(marketplace, &message, &decoded, echo),
        )
            .into_response();
        resp.extensions_mut().insert(outcome);
        return resp;
    }
    match marketplace {
        Marketplace::Trendyol => json_response(
            status,
            json!({"errors": [{"key": "gateway", "message": message, "errorCode": "gateway"}]}),
            outcome,
        ),
        Marketplace::Hepsiburada => json_response(
            status,
            json!({"errors": [{"message": message, "code": "Gateway"}]}),
            outcome,
        ),
    }
}

/// The JSON body of an echo in [`config::EchoMode`]: written by hand, since a JSON library
/// escapes only what it must and a .NET service escapes far more (`+` as `\u002B`).
fn encoded_echo(
    marketplace: Marketplace,
    message: &str,
    decoded: &str,
    echo: &config::EchoMode,
) -> String {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine;
    let json = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let json = |s: &str| json(s).trim_matches('"').to_string();
    let mut text = ".".repeat(echo.padding);
    text.push_str(&json(message));
    if echo.encodings {
        let password = decoded.split_once(':').map(|(_, p)| p).unwrap_or("");
        // Every character as `\uXXXX` (upper-case hex), `/` as `\/`.
        let escaped: String = decoded
            .encode_utf16()
            .map(|u| match u {
                0x2F => "\\/".to_string(),
                u => format!("\\u{u:04X}"),
            })
            .collect();
        // Lower-case hex over the RFC 3986 unreserved set; form: `+` for a space.
        let percent = |s: &str, form: bool| -> String {
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
        text.push_str(&format!(
            "; escaped {escaped}; query user={}; form {}; url-safe {} / {}; alone {} {}; Bearer {}",
            percent(decoded, false),
            percent(decoded, true),
            URL_SAFE.encode(decoded),
            URL_SAFE_NO_PAD.encode(decoded),
            STANDARD.encode(password),
            URL_SAFE_NO_PAD.encode(password),
            STANDARD.encode(password),
        ));
    }
    match marketplace {
        Marketplace::Trendyol => format!(
            r#"{{"errors":[{{"key":"gateway","message":"{text}","errorCode":"gateway"}}]}}"#
        ),
        Marketplace::Hepsiburada => {
            format!(r#"{{"errors":[{{"message":"{text}","code":"Gateway"}}]}}"#)
        }
    }
}

fn internal_error(marketplace: Marketplace, note: &str) -> Response {
    match marketplace {
        Marketplace::Trendyol => trendyol::internal_error(note),
        Marketplace::Hepsiburada => hepsiburada::internal_error(note),
    }
}

async fn not_found(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let resp = if path.starts_with("/integration/") {
        Some((Marketplace::Trendyol, trendyol::not_found("resource")))
    } else if path.starts_with("/listings/") {
        Some((
            Marketplace::Hepsiburada,
            hepsiburada::error_response(
                StatusCode::NOT_FOUND,
                vec![("Not found".to_string(), "NotFound")],
                Outcome::default(),
            ),
        ))
    } else {
        None
    };
    match resp {
        Some((marketplace, mut resp)) => {
            resp.extensions_mut().remove::<Outcome>();
            let mut rec = base_record(Utc::now(), req.method(), &path, req.headers(), &[]);
            rec.marketplace = Some(marketplace);
            rec.status = resp.status().as_u16();
            rec.note = Some("not_found".into());
            shared.record(rec);
            resp
        }
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no such path: {path}") })),
        )
            .into_response(),
    }
}

/// The page and `/_mock/*`: a loopback peer (unless `admin_any_peer`) and a loopback `Host`.
async fn admin_origin(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let peer_ok = shared.config.admin_any_peer
        || req
            .extensions()
            .get::<ConnectInfo<ConnHandle>>()
            .is_some_and(|c| c.0.peer.ip().to_canonical().is_loopback());
    let host_ok = match req.headers().get(header::HOST) {
        None => true,
        Some(host) => host.to_str().is_ok_and(loopback_host),
    };
    if peer_ok && host_ok {
        return next.run(req).await;
    }
    (
        StatusCode::FORBIDDEN,
        Json(json!({ "error": "the mock's page and /_mock/* answer only loopback clients asking for localhost or a loopback address" })),
    )
        .into_response()
}

/// `localhost`, `*.localhost`, a 127.0.0.0/8 address or `[::1]`, any port (the rule of
/// stocksync's own HTTP surface, `ops::http`, which this lower module cannot import).
fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Every state-changing `/_mock/*` request (any method but GET/HEAD) must say its body is
/// `application/json` — even an empty one (`POST /_mock/reset`) — and be at most
/// [`MAX_ADMIN_BODY`]. A cross-site page can post a form (`application/x-www-form-urlencoded`,
/// `multipart/form-data`, `text/plain`) or a body-less `fetch` without asking, but not JSON:
/// that needs a CORS preflight, which the mock never grants.
async fn admin_guard(req: Request, next: Next) -> Response {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return next.run(req).await;
    }
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Json(json!({ "error": "state-changing /_mock/* requests must be sent with Content-Type: application/json" })),
        )
            .into_response();
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_ADMIN_BODY as u64) {
        return too_large();
    }
    // A chunked body is read here, within the cap, so the handler never sees more.
    let (parts, body) = req.into_parts();
    match axum::body::to_bytes(body, MAX_ADMIN_BODY).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(_) => too_large(),
    }
}

fn too_large() -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        Json(json!({ "error": format!("a /_mock/* request body is at most {MAX_ADMIN_BODY} bytes") })),
    )
        .into_response()
}

async fn admin_state(State(shared): State<Arc<Shared>>) -> Json<MockState> {
    Json(shared.state())
}

async fn admin_requests(State(shared): State<Arc<Shared>>) -> Json<Vec<RequestRecord>> {
    Json(shared.requests())
}

async fn admin_reset(State(shared): State<Arc<Shared>>) -> Json<Value> {
    shared.reset();
    Json(json!({ "reset": true }))
}

async fn admin_get_faults(State(shared): State<Arc<Shared>>) -> Json<Faults> {
    Json(shared.faults())
}

async fn admin_set_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": format!("bad faults: {e}") })),
            )
                .into_response()
        }
    };
    if let Err(e) = faults.validate() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response();
    }
    Json(shared.set_faults(faults)).into_response()
}

async fn admin_get_behaviour(State(shared): State<Arc<Shared>>) -> Json<Behaviour> {
    Json(shared.behaviour())
}

async fn admin_set_behaviour(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Behaviour>(&body) {
        Ok(b) => {
            shared.set_behaviour(b.clone());
            Json(b).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!("bad behaviour: {e}") })),
        )
            .into_response(),
    }
}

/// `POST /_mock/listing`: `{"marketplace","seller_id","key","flags":{...}}`.
async fn admin_set_listing(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SetListing {
        marketplace: Marketplace,
        seller_id: String,
        key: String,
        flags: ListingFlags,
    }
    match serde_json::from_slice::<SetListing>(&body) {
        Ok(l) if shared.set_listing_flags(l.marketplace, &l.seller_id, &l.key, l.flags) => {
            Json(json!({ "set": true })).into_response()
        }
        Ok(_) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "no such account" })),
        )
            .into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!("bad listing: {e}") })),
        )
            .into_response(),
    }
}

/// `POST /_mock/order` `{"marketplace","seller_id","key","units"}`: an order on the
/// marketplace's side (see [`MockMarketplace::order`]); answers the stock left.
async fn admin_order(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Order {
        marketplace: Marketplace,
        seller_id: String,
        key: String,
        units: i64,
    }
    match serde_json::from_slice::<Order>(&body) {
        Ok(o) => match shared.order(o.marketplace, &o.seller_id, &o.key, o.units) {
            Some(left) => Json(json!({ "stock": left })).into_response(),
            None => (
                StatusCode::NOT_FOUND,
                Json(json!({ "error": "no such account or listing stock" })),
            )
                .into_response(),
        },
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!("bad order: {e}") })),
        )
            .into_response(),
    }
}

async fn page(State(shared): State<Arc<Shared>>) -> Response {
    let state = shared.state();
    let requests = shared.requests();
    let recent = &requests[requests.len().saturating_sub(50)..];
    let mut resp = Html(page::render(&state, recent)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
