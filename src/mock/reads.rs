//! The read endpoints (what reconciliation reads back) and the seller panel.
//!
//! | endpoint | path |
//! | --- | --- |
//! | Trendyol stock read | `GET /integration/product/sellers/{sellerId}/products/approved/inventory-and-price` |
//! | Hepsiburada listings | `GET /listings/merchantid/{merchantId}` |
//! | seller panel | `POST /_mock/edit` (JSON; see [`PanelEdit`]) |
//!
//! Both reads pass the same gates as the pushes (User-Agent, credentials, the per-endpoint
//! rate limit; reads count as their own endpoint) and, when [`ReadsConfig::per_minute`] is
//! set, a per-minute cap per seller (`429` beyond it).
//!
//! # The catalogue as read
//! A listing exists when the account's `listings` name it, when it has stock (a push set
//! it), or when the panel created it; the panel's `delete` hides it (and drops it from a
//! configured `listings` set, so pushes to it fail as they would). Its quantity is the
//! pushed or edited stock; a listing without one (listed, never pushed, or set to `null` in
//! the panel) shows `null`.
//!
//! * Trendyol: listings are grouped into contents (product groups) when first read, in key
//!   order, with 1, 2, ..., [`ReadsConfig::trendyol_max_variants`] variants in turn; content
//!   ids only grow, so a `nextPageToken` (a content-id cursor) stays valid while listings are
//!   added. `size` counts contents (at most 100). A page past
//!   [`ReadsConfig::trendyol_page_window`] (`(page + 1) × size`) is refused with `400`;
//!   `nextPageToken` is given on every page with a next one, or (with
//!   `trendyol_token_always = false`) only where the next page number would be refused, so
//!   a scan must switch to the token there. `barcodes` (at most 50) or `barcode` filter by
//!   barcode as Trendyol keeps it (without the spaces it removed: a filter spelled with
//!   spaces finds nothing), and return whole contents (the window is not applied to them:
//!   the real one, 10,000, is far above one filtered page). Each variant's
//!   `stockLastModifiedDate` (epoch milliseconds) is when its stock last changed: a push
//!   that changed it, a panel edit of its quantity, an order ([`super::MockMarketplace::order`],
//!   `POST /_mock/order`); `null` before any.
//! * Hepsiburada: listings in `listingId` order (an id derived from the merchant and sku);
//!   `offset` and `limit` are required (`limit` at most
//!   [`ReadsConfig::hepsiburada_max_limit`]; [`ReadsConfig::hepsiburada_page_cap`] returns
//!   fewer rows than asked for); [`ReadsConfig::hepsiburada_page_overlap`]
//!   repeats the last listings of the previous page on every page (callers must deduplicate
//!   by `listingId`); merchantSku comes back upper-cased
//!   ([`ReadsConfig::hepsiburada_uppercase_sku`]); `merchantSkuList` (at most 50) matches
//!   case-insensitively; an empty page is `"listings": null`. Flags are set in the panel; locked,
//!   frozen and the campaign are the account's listing flags (`POST /_mock/listing` sets them
//!   too), so a push to such a listing is refused as the marketplace would.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use super::config::Marketplace;
use super::limits::{retry_after_secs, Endpoint};
use super::state::{Account, Inner, Shared};
use super::{hepsiburada, json_response, sha256, trendyol, Outcome};

/// How the read endpoints behave. `Default` follows the contract where it is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadsConfig {
    /// Trendyol refuses a page whose `(page + 1) × size` exceeds this (10,000 documented).
    pub trendyol_page_window: usize,
    /// `nextPageToken` on every Trendyol page that has a next one (`true`), or only where the
    /// next page number would be past the window.
    pub trendyol_token_always: bool,
    /// Variants per Trendyol content cycle through 1..=this.
    pub trendyol_max_variants: usize,
    /// Largest Hepsiburada `limit` (unconfirmed; clients use 100 to 2000).
    pub hepsiburada_max_limit: usize,
    /// Hepsiburada merchantSku comes back upper-cased (unconfirmed; the hard case).
    pub hepsiburada_uppercase_sku: bool,
    /// Every Hepsiburada page also repeats this many listings before its offset.
    pub hepsiburada_page_overlap: usize,
    /// Hepsiburada answers at most this many listings per page, whatever `limit` asks (a
    /// server's own cap; `totalCount` still counts them all); `None`: `limit` rows.
    pub hepsiburada_page_cap: Option<usize>,
    /// Reads per minute per seller and marketplace; `None`: not capped.
    pub per_minute: Option<u32>,
}

impl Default for ReadsConfig {
    fn default() -> Self {
        ReadsConfig {
            trendyol_page_window: 10_000,
            trendyol_token_always: true,
            trendyol_max_variants: 3,
            hepsiburada_max_limit: 1000,
            hepsiburada_uppercase_sku: true,
            hepsiburada_page_overlap: 0,
            hepsiburada_page_cap: None,
            per_minute: None,
        }
    }
}

/// One change "in the seller panel" (`POST /_mock/edit` takes one or an array). Absent
/// fields are left as they are; `"quantity": null` makes the stock unknown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PanelEdit {
    pub marketplace: Marketplace,
    pub seller_id: String,
    /// Trendyol barcode / Hepsiburada merchantSku, as pushed. A key not listed yet is
    /// created.
    pub key: String,
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub quantity: Option<Option<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fulfilled_by_hb: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stock_decrease_disabled: Option<bool>,
    /// Locked with these reasons; `null` unlocks.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub locked: Option<Option<Vec<String>>>,
    /// Frozen with these reasons; `null` unfreezes.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub frozen: Option<Option<Vec<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<bool>,
    /// Removes the listing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete: bool,
}

impl PanelEdit {
    /// An edit of one listing that changes nothing yet (set the fields to change).
    pub fn new(marketplace: Marketplace, seller_id: &str, key: &str) -> PanelEdit {
        PanelEdit {
            marketplace,
            seller_id: seller_id.to_string(),
            key: key.to_string(),
            quantity: None,
            fulfilled_by_hb: None,
            stock_decrease_disabled: None,
            locked: None,
            frozen: None,
            suspended: None,
            delete: false,
        }
    }

    /// The same edit, setting the stock shown.
    pub fn quantity(mut self, quantity: Option<i64>) -> PanelEdit {
        self.quantity = Some(quantity);
        self
    }
}

/// A field that is present (even `null`) is `Some`; an absent one stays `None` (default).
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// What the read shows of a listing besides the flags pushes obey (locked, frozen, a
/// campaign: the account's [`super::ListingFlags`], shared with `POST /_mock/listing`).
#[derive(Clone, Debug, Default)]
struct Shown {
    fulfilled_by_hb: bool,
    suspended: bool,
    lock_reasons: Vec<String>,
    freeze_reasons: Vec<String>,
}

/// What identifies a catalogue's key set: it only grows between panel edits and resets.
type Fingerprint = (usize, Option<usize>, u64);

/// A Trendyol content: id and its variants' barcodes (existing ones, key order).
struct Content {
    id: u64,
    variants: Vec<String>,
}

/// Hepsiburada's listings in `listingId` order.
struct HbView {
    /// (listingId, key)
    listings: Vec<(String, String)>,
}

#[derive(Default)]
struct AccountReads {
    /// Created in the panel.
    listed: BTreeSet<String>,
    /// Deleted in the panel.
    delisted: BTreeSet<String>,
    shown: HashMap<String, Shown>,
    content_of: HashMap<String, u64>,
    next_content: u64,
    /// Bumped by every panel edit.
    generation: u64,
    trendyol: Option<(Fingerprint, Arc<Vec<Content>>)>,
    hepsiburada: Option<(Fingerprint, Arc<HbView>)>,
}

/// The read side's memory (in [`Inner`]; cleared by reset).
#[derive(Default)]
pub(crate) struct ReadState {
    accounts: HashMap<(Marketplace, String), AccountReads>,
    minute: HashMap<(Marketplace, String), VecDeque<Instant>>,
}

impl ReadState {
    pub(crate) fn clear(&mut self) {
        *self = ReadState::default();
    }
}

impl AccountReads {
    fn fingerprint(&self, account: &Account) -> Fingerprint {
        (
            account.stock.len(),
            account.listings.as_ref().map(BTreeSet::len),
            self.generation,
        )
    }

    /// Every existing listing, in key order.
    fn keys(&self, account: &Account) -> Vec<String> {
        let mut keys: BTreeSet<&String> = account.stock.keys().collect();
        keys.extend(account.listings.iter().flatten());
        keys.extend(&self.listed);
        keys.into_iter()
            .filter(|k| !self.delisted.contains(*k))
            .cloned()
            .collect()
    }

    /// Contents in id order; new listings get new contents.
    fn trendyol_view(&mut self, account: &Account, max_variants: usize) -> Arc<Vec<Content>> {
        let print = self.fingerprint(account);
        if let Some((p, view)) = &self.trendyol {
            if *p == print {
                return view.clone();
            }
        }
        let keys = self.keys(account);
        let new: Vec<&String> = keys
            .iter()
            .filter(|k| !self.content_of.contains_key(*k))
            .collect();
        let mut rest = new.as_slice();
        while !rest.is_empty() {
            let size = (self.next_content as usize % max_variants.max(1)) + 1;
            let (group, tail) = rest.split_at(size.min(rest.len()));
            self.next_content += 1;
            for key in group {
                self.content_of.insert((*key).clone(), self.next_content);
            }
            rest = tail;
        }
        let mut by_content: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
        for key in keys {
            by_content
                .entry(self.content_of[&key])
                .or_default()
                .push(key);
        }
        let view = Arc::new(
            by_content
                .into_iter()
                .map(|(id, variants)| Content { id, variants })
                .collect::<Vec<_>>(),
        );
        self.trendyol = Some((print, view.clone()));
        view
    }

    fn hepsiburada_view(&mut self, account: &Account) -> Arc<HbView> {
        let print = self.fingerprint(account);
        if let Some((p, view)) = &self.hepsiburada {
            if *p == print {
                return view.clone();
            }
        }
        let mut listings: Vec<(String, String)> = self
            .keys(account)
            .into_iter()
            .map(|k| (listing_id(&account.seller_id, &k), k))
            .collect();
        listings.sort();
        let view = Arc::new(HbView { listings });
        self.hepsiburada = Some((print, view.clone()));
        view
    }
}

/// A stable UUID-shaped id of a listing.
fn listing_id(seller: &str, key: &str) -> String {
    let h = sha256(format!("{seller}\0{key}").as_bytes());
    let hex: String = h[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The query's parameters (the last value of a repeated one wins).
fn params(query: Option<String>) -> HashMap<String, String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The per-minute read cap: `Err(wait)` when full.
fn per_minute(
    shared: &Shared,
    inner: &mut Inner,
    marketplace: Marketplace,
    seller: &str,
) -> Result<(), Duration> {
    let Some(cap) = shared.config.reads.per_minute else {
        return Ok(());
    };
    let now = Instant::now();
    let window = Duration::from_secs(60);
    let q = inner
        .reads
        .minute
        .entry((marketplace, seller.to_string()))
        .or_default();
    while q
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
    {
        q.pop_front();
    }
    if q.len() >= cap.max(1) as usize {
        return Err((q[0] + window).saturating_duration_since(now));
    }
    q.push_back(now);
    Ok(())
}

fn ty_bad_request(key: &str, message: String) -> Response {
    trendyol::error_response(
        StatusCode::BAD_REQUEST,
        "ClientApiValidationException",
        vec![trendyol::err(key, message, "validation")],
        Outcome::note("validation"),
    )
}

fn hb_bad_request(message: String) -> Response {
    hepsiburada::error_response(
        StatusCode::BAD_REQUEST,
        vec![(message, "InvalidRequest")],
        Outcome::note("validation"),
    )
}

/// A list filter: comma-separated, at most 50.
fn list(value: Option<&String>) -> Result<Option<Vec<String>>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let items: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if items.len() > 50 {
        return Err(format!("at most 50 values, got {}", items.len()));
    }
    Ok(Some(items))
}

fn number(params: &HashMap<String, String>, name: &str) -> Result<Option<usize>, String> {
    params
        .get(name)
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("{name} must be a non-negative integer"))
        })
        .transpose()
}

/// `nextPageToken`: an opaque cursor after a content id.
fn encode_token(after: u64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("after:{after}"))
}

fn decode_token(token: &str) -> Option<u64> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim())
        .ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("after:")?
        .parse()
        .ok()
}

/// `GET /integration/product/sellers/{sellerId}/products/approved/inventory-and-price`
pub(crate) async fn trendyol_read(
    State(shared): State<Arc<Shared>>,
    Path(seller_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let mut inner = shared.lock();
    if let Err(resp) = trendyol::gate(&shared, &mut inner, &seller_id, &headers, Endpoint::Read) {
        return *resp;
    }
    if let Err(wait) = per_minute(&shared, &mut inner, Marketplace::Trendyol, &seller_id) {
        return trendyol::too_many_requests(retry_after_secs(wait), "rate_limited_per_minute");
    }
    let p = params(query);
    let config = &shared.config.reads;
    let size = match number(&p, "size") {
        Ok(Some(s)) if (1..=100).contains(&s) => s,
        Ok(None) => 50,
        Ok(Some(_)) => return ty_bad_request("size", "size must be within 1..=100".into()),
        Err(e) => return ty_bad_request("size", e),
    };
    let page = match number(&p, "page") {
        Ok(page) => page,
        Err(e) => return ty_bad_request("page", e),
    };
    let filter = match list(p.get("barcodes")) {
        Ok(Some(b)) => Some(b),
        Ok(None) => p.get("barcode").map(|b| vec![b.clone()]),
        Err(e) => return ty_bad_request("barcodes", e),
    };
    let token = p.get("nextPageToken").filter(|t| !t.is_empty());
    let after = match (token, page) {
        (Some(_), Some(_)) => {
            return ty_bad_request("page", "send nextPageToken without page".into())
        }
        (Some(t), None) => match decode_token(t) {
            Some(after) => Some(after),
            None => return ty_bad_request("nextPageToken", "invalid nextPageToken".into()),
        },
        (None, page) => {
            let page = page.unwrap_or(0);
            // The window is tried only by the scan (a read by barcode is one short page).
            if filter.is_none() && (page + 1).saturating_mul(size) > config.trendyol_page_window {
                return ty_bad_request(
                    "page",
                    format!(
                        "page × size must stay within {}: page on with nextPageToken",
                        config.trendyol_page_window
                    ),
                );
            }
            None
        }
    };
    let Inner {
        accounts, reads, ..
    } = &mut *inner;
    let key = (Marketplace::Trendyol, seller_id.clone());
    let Some(account) = accounts.get(&key) else {
        return ty_bad_request("sellerId", "unknown seller".into());
    };
    let state = reads.accounts.entry(key).or_default();
    let view = state.trendyol_view(account, config.trendyol_max_variants);
    let chosen: Vec<&Content> = match &filter {
        // The barcode as Trendyol keeps it: a filter spelled with spaces finds nothing when
        // Trendyol removed them (as the real one does).
        Some(barcodes) => {
            let wanted: HashSet<&String> = barcodes.iter().collect();
            view.iter()
                .filter(|c| c.variants.iter().any(|v| wanted.contains(v)))
                .collect()
        }
        None => view.iter().collect(),
    };
    let start = match (after, page) {
        (Some(after), _) => chosen.partition_point(|c| c.id <= after),
        (None, page) => page.unwrap_or(0) * size,
    };
    let slice = &chosen[start.min(chosen.len())..(start + size).min(chosen.len())];
    let has_next = start + size < chosen.len();
    // Where the next page number would be refused, the token is the only way on.
    let next_by_number_refused = (start / size + 2) * size > config.trendyol_page_window;
    let next_token = (has_next
        && (config.trendyol_token_always || after.is_some() || next_by_number_refused))
        .then(|| slice.last().map(|c| encode_token(c.id)))
        .flatten();
    let mut variants_shown = 0;
    let content: Vec<Value> = slice
        .iter()
        .map(|c| {
            variants_shown += c.variants.len();
            json!({
                "contentId": c.id,
                "productMainId": format!("PM-{}", c.id),
                "variants": c.variants.iter().enumerate().map(|(i, barcode)| json!({
                    "variantId": c.id * 100 + i as u64,
                    "barcode": barcode,
                    "stockCode": barcode,
                    "salePrice": 100.0,
                    "listPrice": 120.0,
                    "quantity": account.stock.get(barcode),
                    "stockLastModifiedDate": account.stock_modified.get(barcode).map(|t| t.timestamp_millis()),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let total = chosen.len();
    let body = json!({
        "totalElements": total,
        "totalPages": total.div_ceil(size),
        "page": start / size,
        "size": size,
        "nextPageToken": next_token,
        "content": content,
    });
    let note = match (&filter, after) {
        (Some(_), _) => "read barcodes".to_string(),
        (None, Some(_)) => "read token".to_string(),
        (None, None) => format!("read page={}", page.unwrap_or(0)),
    };
    let outcome = Outcome {
        item_count: Some(variants_shown),
        note: Some(note),
        ..Outcome::default()
    };
    json_response(StatusCode::OK, body, outcome)
}

/// `GET /listings/merchantid/{merchantId}`
pub(crate) async fn hepsiburada_read(
    State(shared): State<Arc<Shared>>,
    Path(merchant_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let mut inner = shared.lock();
    if let Err(resp) =
        hepsiburada::gate(&shared, &mut inner, &merchant_id, &headers, Endpoint::Read)
    {
        return *resp;
    }
    if let Err(wait) = per_minute(&shared, &mut inner, Marketplace::Hepsiburada, &merchant_id) {
        let cap = shared.config.reads.per_minute.unwrap_or(0);
        return hepsiburada::too_many_requests(
            retry_after_secs(wait),
            cap,
            "rate_limited_per_minute",
        );
    }
    let p = params(query);
    let config = &shared.config.reads;
    let (offset, limit) = match (number(&p, "offset"), number(&p, "limit")) {
        (Ok(Some(o)), Ok(Some(l))) if (1..=config.hepsiburada_max_limit).contains(&l) => (o, l),
        (Ok(Some(_)), Ok(Some(_))) => {
            return hb_bad_request(format!(
                "limit must be within 1..={}",
                config.hepsiburada_max_limit
            ))
        }
        (Err(e), _) | (_, Err(e)) => return hb_bad_request(e),
        _ => return hb_bad_request("offset and limit are required".into()),
    };
    let filter = match list(p.get("merchantSkuList")) {
        Ok(f) => f,
        Err(e) => return hb_bad_request(format!("merchantSkuList: {e}")),
    };
    let Inner {
        accounts, reads, ..
    } = &mut *inner;
    let key = (Marketplace::Hepsiburada, merchant_id.clone());
    let Some(account) = accounts.get(&key) else {
        return hb_bad_request("unknown merchant".into());
    };
    let state = reads.accounts.entry(key).or_default();
    let view = state.hepsiburada_view(account);
    let chosen: Vec<&(String, String)> = match &filter {
        Some(skus) => {
            let wanted: HashSet<String> = skus.iter().map(|s| s.to_lowercase()).collect();
            view.listings
                .iter()
                .filter(|(_, k)| wanted.contains(&k.to_lowercase()))
                .collect()
        }
        None => view.listings.iter().collect(),
    };
    let from = offset
        .saturating_sub(config.hepsiburada_page_overlap)
        .min(chosen.len());
    let rows = config
        .hepsiburada_page_cap
        .map_or(limit, |cap| limit.min(cap.max(1)));
    let to = (offset + rows).min(chosen.len());
    let slice = &chosen[from..to.max(from)];
    let rows: Vec<Value> = slice
        .iter()
        .map(|(id, k)| {
            let f = state.shown.get(k).cloned().unwrap_or_default();
            let refuses = account.flags.get(k).copied().unwrap_or_default();
            let stock = account.stock.get(k);
            let sku = if config.hepsiburada_uppercase_sku {
                k.to_uppercase()
            } else {
                k.clone()
            };
            json!({
                "listingId": id,
                "hepsiburadaSku": format!("HBV{}", id.replace('-', "")[..11].to_uppercase()),
                "merchantSku": sku,
                "price": 100.0,
                "availableStock": stock,
                "dispatchTime": 1,
                "isSalable": !refuses.locked && !refuses.frozen && !f.suspended
                    && stock.is_some_and(|s| *s > 0),
                "isLocked": refuses.locked,
                "lockReasons": if refuses.locked { f.lock_reasons.clone() } else { Vec::new() },
                "isFrozen": refuses.frozen,
                "freezeReasons": if refuses.frozen { f.freeze_reasons.clone() } else { Vec::new() },
                "isSuspended": f.suspended,
                "isFulfilledByHB": f.fulfilled_by_hb || refuses.fulfilled_by_hb,
                "stockDecreaseDisabled": refuses.stock_decrease_disabled,
            })
        })
        .collect();
    let outcome = Outcome {
        item_count: Some(rows.len()),
        note: Some(match filter {
            Some(_) => "read merchantSkuList".to_string(),
            None => format!("read offset={offset}"),
        }),
        ..Outcome::default()
    };
    let body = json!({
        "listings": if rows.is_empty() { Value::Null } else { Value::Array(rows) },
        "totalCount": chosen.len(),
        "limit": limit,
        "offset": offset,
    });
    json_response(StatusCode::OK, body, outcome)
}

fn admin_error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// `POST /_mock/edit`: one [`PanelEdit`] or an array of them, applied together (all or
/// none).
pub(crate) async fn edit(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return admin_error(StatusCode::BAD_REQUEST, format!("bad edit: {e}")),
    };
    let edits: Result<Vec<PanelEdit>, _> = match value {
        Value::Array(_) => serde_json::from_value(value),
        one => serde_json::from_value(one).map(|e| vec![e]),
    };
    let edits = match edits {
        Ok(e) => e,
        Err(e) => return admin_error(StatusCode::BAD_REQUEST, format!("bad edit: {e}")),
    };
    let mut inner = shared.lock();
    for e in &edits {
        if !inner
            .accounts
            .contains_key(&(e.marketplace, e.seller_id.clone()))
        {
            return admin_error(
                StatusCode::NOT_FOUND,
                format!("no account {}:{}", e.marketplace, e.seller_id),
            );
        }
        if e.key.trim().is_empty() {
            return admin_error(StatusCode::BAD_REQUEST, "key must not be empty".into());
        }
        if let Some(Some(q)) = e.quantity {
            if !(0..=shared.config.max_quantity).contains(&q) {
                return admin_error(
                    StatusCode::BAD_REQUEST,
                    format!("quantity must be within 0..={}", shared.config.max_quantity),
                );
            }
        }
    }
    let Inner {
        accounts, reads, ..
    } = &mut *inner;
    for e in &edits {
        let key = (e.marketplace, e.seller_id.clone());
        let account = accounts.get_mut(&key).expect("checked above");
        let state = reads.accounts.entry(key).or_default();
        state.generation += 1;
        if e.delete {
            account.stock.remove(&e.key);
            account.stock_modified.remove(&e.key);
            if let Some(listings) = &mut account.listings {
                listings.remove(&e.key);
            }
            state.listed.remove(&e.key);
            state.shown.remove(&e.key);
            account.flags.remove(&e.key);
            state.delisted.insert(e.key.clone());
            continue;
        }
        state.delisted.remove(&e.key);
        state.listed.insert(e.key.clone());
        if let Some(listings) = &mut account.listings {
            listings.insert(e.key.clone());
        }
        match e.quantity {
            Some(Some(q)) => {
                account.set_stock(&e.key, q);
            }
            Some(None) => {
                account.stock.remove(&e.key);
                account
                    .stock_modified
                    .insert(e.key.clone(), chrono::Utc::now());
            }
            None => {}
        }
        let shown = state.shown.entry(e.key.clone()).or_default();
        let refuses = account.flags.entry(e.key.clone()).or_default();
        if let Some(v) = e.fulfilled_by_hb {
            shown.fulfilled_by_hb = v;
        }
        if let Some(v) = e.suspended {
            shown.suspended = v;
        }
        if let Some(v) = e.stock_decrease_disabled {
            refuses.stock_decrease_disabled = v;
        }
        if let Some(reasons) = &e.locked {
            refuses.locked = reasons.is_some();
            shown.lock_reasons = reasons.clone().unwrap_or_default();
        }
        if let Some(reasons) = &e.frozen {
            refuses.frozen = reasons.is_some();
            shown.freeze_reasons = reasons.clone().unwrap_or_default();
        }
    }
    Json(json!({ "edited": edits.len() })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_junk() {
        assert_eq!(decode_token(&encode_token(42)), Some(42));
        assert_eq!(decode_token("nonsense"), None);
        assert_eq!(decode_token(""), None);
    }

    #[test]
    fn panel_edits_tell_absent_from_null() {
        let e: PanelEdit = serde_json::from_str(
            r#"{"marketplace":"hepsiburada","seller_id":"m","key":"k","quantity":null,"locked":["r"]}"#,
        )
        .unwrap();
        assert_eq!(e.quantity, Some(None));
        assert_eq!(e.locked, Some(Some(vec!["r".to_string()])));
        assert_eq!(e.frozen, None);
        let e: PanelEdit = serde_json::from_str(
            r#"{"marketplace":"trendyol","seller_id":"s","key":"k","quantity":4}"#,
        )
        .unwrap();
        assert_eq!(e.quantity, Some(Some(4)));
        assert!(serde_json::from_str::<PanelEdit>(
            r#"{"marketplace":"trendyol","seller_id":"s","key":"k","qty":4}"#
        )
        .is_err());
    }

    #[test]
    fn listing_ids_are_stable_and_uuid_shaped() {
        let a = listing_id("m", "SKU-1");
        assert_eq!(a, listing_id("m", "SKU-1"));
        assert_ne!(a, listing_id("m", "SKU-2"));
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }
}
