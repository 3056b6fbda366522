//! Marketplace clients: one small API over Trendyol and Hepsiburada stock pushes and reads.
//!
//! The wire contracts are in `/work/shared/docs/marketplace-contracts.md`. Everything
//! except [`MarketplaceClient::push`], [`MarketplaceClient::batch_status`] and
//! [`MarketplaceClient::read_listings`] is pure:
//!
//! * [`prepare`] turns stock items into the exact bytes that will be sent (identical
//!   items in identical order always give identical bytes, so the dispatcher can see
//!   in advance whether Trendyol's 15-minute identical-body rule applies);
//! * [`classify`] turns a push answer (status, headers, body) into a [`PushOutcome`];
//! * [`parse_batch_status`] turns a Trendyol batch result / Hepsiburada upload status
//!   into one [`ItemResult`] per request item, in request order;
//! * [`read`] builds the reads of listings (reconciliation) and parses their answers.
//!
//! Credentials never appear in `Debug` output, logs, or [`Exchange::response_body`].
//!
//! # Choices where the contract is unconfirmed
//!
//! * Hepsiburada error rows are matched by `merchantSku` ([`fold_sku`]), never by
//!   `elementNo` (its base is unconfirmed). A row that names no sku of the request (none,
//!   or only Hepsiburada's own `hepsiburadaSku`) cannot be attributed: the whole upload's
//!   outcome is unknown ([`BatchStatus::OutcomeUnknown`]; resending a stock value is
//!   harmless, believing a failed one succeeded is not).
//! * The identical-body refusal is recognised by its Turkish message whatever the
//!   status code.

mod batch;
mod classify;
mod client;
pub mod read;
mod redact;

use std::fmt;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use batch::{is_fulfilled_by_marketplace, parse_batch_status, UploadWord};
pub use classify::classify;
pub use client::{ClientSettings, Exchange, MarketplaceClient};

/// Trendyol's production API gateway.
pub const TRENDYOL_PRODUCTION_URL: &str = "https://apigw.trendyol.com";
/// Hepsiburada's production listing service.
pub const HEPSIBURADA_PRODUCTION_URL: &str = "https://listing-external.hepsiburada.com";

/// The largest stock quantity Trendyol accepts for an item (a larger one is refused with a
/// 400). Hepsiburada publishes no limit.
pub const TRENDYOL_MAX_QUANTITY: i64 = 20_000;

/// A Hepsiburada merchant sku as it is compared wherever stocksync matches one (upload
/// results, reads of listings): trimmed and case-insensitive, Turkish letters included.
/// Hepsiburada may answer a sku upper-cased, and a Turkish upper-casing turns `i` into `İ`
/// and `ı` into `I`, while Unicode lower-casing turns `İ` into `i` plus a combining dot and
/// leaves `ı` alone; so `İ`, `I`, `ı` and `i` all fold to `i` (and the stray dot goes).
pub fn fold_sku(sku: &str) -> String {
    sku.trim()
        .chars()
        .flat_map(|c| match c {
            'İ' | 'I' | 'ı' => 'i'.to_lowercase(),
            c => c.to_lowercase(),
        })
        .filter(|c| *c != '\u{307}')
        .collect()
}

/// A marketplace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    Trendyol,
    Hepsiburada,
}

impl Provider {
    /// `"TRENDYOL"` / `"HEPSIBURADA"` (case-insensitive, surrounding blanks ignored).
    pub fn from_store_type(t: &str) -> Option<Provider> {
        let t = t.trim();
        if t.eq_ignore_ascii_case("TRENDYOL") {
            Some(Provider::Trendyol)
        } else if t.eq_ignore_ascii_case("HEPSIBURADA") {
            Some(Provider::Hepsiburada)
        } else {
            None
        }
    }

    /// `"TRENDYOL"` / `"HEPSIBURADA"` (the api_log provider).
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Trendyol => "TRENDYOL",
            Provider::Hepsiburada => "HEPSIBURADA",
        }
    }

    /// The push endpoint.
    pub fn push_endpoint(self) -> Endpoint {
        match self {
            Provider::Trendyol => Endpoint::TrendyolPush,
            Provider::Hepsiburada => Endpoint::HepsiburadaPush,
        }
    }

    /// The batch result / upload status endpoint (the marketplaces count it apart from the
    /// push).
    pub fn status_endpoint(self) -> Endpoint {
        match self {
            Provider::Trendyol => Endpoint::TrendyolBatchResult,
            Provider::Hepsiburada => Endpoint::HepsiburadaUploadStatus,
        }
    }

    /// The endpoint that reads back the listings' stock (reconciliation).
    pub fn read_endpoint(self) -> Endpoint {
        match self {
            Provider::Trendyol => Endpoint::TrendyolStockRead,
            Provider::Hepsiburada => Endpoint::HepsiburadaListings,
        }
    }

    /// Most items in one push: Trendyol documents 1000; Hepsiburada's limit is
    /// unconfirmed (public clients use 1000 to 4000), 1000 is the safe choice.
    pub fn max_batch(self) -> usize {
        match self {
            Provider::Trendyol => 1000,
            Provider::Hepsiburada => 1000,
        }
    }
}

/// An endpoint stocksync calls, as the request limits count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    TrendyolPush,
    TrendyolBatchResult,
    TrendyolStockRead,
    HepsiburadaPush,
    HepsiburadaUploadStatus,
    HepsiburadaListings,
}

impl Endpoint {
    pub const ALL: [Endpoint; 6] = [
        Endpoint::TrendyolPush,
        Endpoint::TrendyolBatchResult,
        Endpoint::TrendyolStockRead,
        Endpoint::HepsiburadaPush,
        Endpoint::HepsiburadaUploadStatus,
        Endpoint::HepsiburadaListings,
    ];

    /// Stable key (stored in `stock_sync.sent_requests.endpoint`).
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::TrendyolPush => "trendyol.price-and-inventory",
            Endpoint::TrendyolBatchResult => "trendyol.batch-requests",
            Endpoint::TrendyolStockRead => "trendyol.inventory-read",
            Endpoint::HepsiburadaPush => "hepsiburada.stock-uploads",
            Endpoint::HepsiburadaUploadStatus => "hepsiburada.stock-uploads.status",
            Endpoint::HepsiburadaListings => "hepsiburada.listings",
        }
    }

    /// The per-minute service group the marketplace counts this endpoint in, if any.
    pub fn group(self) -> Option<ServiceGroup> {
        match self {
            Endpoint::TrendyolPush => Some(ServiceGroup::TrendyolWrite),
            Endpoint::TrendyolBatchResult | Endpoint::TrendyolStockRead => {
                Some(ServiceGroup::TrendyolRead)
            }
            Endpoint::HepsiburadaListings => Some(ServiceGroup::HepsiburadaRead),
            Endpoint::HepsiburadaPush | Endpoint::HepsiburadaUploadStatus => None,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Requests a marketplace caps per seller and minute, across endpoints.
///
/// Trendyol (since 14 Sep 2026): "Inventory & Price Write" (the push) at 350 to 2000 per
/// minute by the seller's tier, "Product Integration Read" (batch results and the stock read)
/// at 1000 to 2000. Hepsiburada: about 240 per minute on the listing endpoints (unpublished
/// for stock uploads, which have no group here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceGroup {
    TrendyolWrite,
    TrendyolRead,
    HepsiburadaRead,
}

impl ServiceGroup {
    /// The endpoint keys counted in this group.
    pub fn endpoints(self) -> Vec<&'static str> {
        Endpoint::ALL
            .into_iter()
            .filter(|e| e.group() == Some(self))
            .map(Endpoint::as_str)
            .collect()
    }

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceGroup::TrendyolWrite => "trendyol_write",
            ServiceGroup::TrendyolRead => "trendyol_read",
            ServiceGroup::HepsiburadaRead => "hepsiburada_read",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A store's credentials, and who stocksync says it is to the marketplace. Trendyol:
/// `api_key` and `api_secret` (Basic `api_key:api_secret`). Hepsiburada: merchant id as
/// `seller_id` and the service key as `api_secret` (Basic `seller_id:api_secret`); `api_key`
/// is not used.
///
/// `Debug` prints the secrets as `"***"`.
#[derive(Clone)]
pub struct StoreCredentials {
    pub provider: Provider,
    pub seller_id: String,
    pub api_key: Option<String>,
    pub api_secret: String,
    /// The `User-Agent` of every request ([`UserAgents::for_store`]); not a credential.
    pub user_agent: String,
}

impl fmt::Debug for StoreCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreCredentials")
            .field("provider", &self.provider)
            .field("seller_id", &self.seller_id)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("api_secret", &"***")
            .field("user_agent", &self.user_agent)
            .finish()
    }
}

impl StoreCredentials {
    /// The credential fingerprint kept in `store_state` (to notice when an operator changed
    /// the credentials): `hmac-sha256:` and the hex HMAC-SHA256, keyed with the install's
    /// [`FingerprintKey`], of the credential material (provider, seller id, key, secret;
    /// length-prefixed and domain-separated). Keyed, so that whoever reads `store_state`
    /// cannot test guesses of a short secret against it offline.
    pub fn fingerprint(&self, key: &FingerprintKey) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key.0)
            .expect("HMAC takes a key of any length");
        self.material(|bytes| mac.update(bytes));
        format!("{FINGERPRINT_PREFIX}{}", hex(&mac.finalize().into_bytes()))
    }

    /// The fingerprint versions before 013 kept: the bare hex SHA-256 of the same material.
    /// Only compared with a fingerprint they stored, which is then rewritten keyed.
    pub fn legacy_fingerprint(&self) -> String {
        let mut h = Sha256::new();
        self.material(|bytes| h.update(bytes));
        hex(&h.finalize())
    }

    fn material(&self, mut out: impl FnMut(&[u8])) {
        out(b"stocksync.store-credentials.v1\0");
        let mut field = |bytes: &[u8]| {
            out(&(bytes.len() as u64).to_be_bytes());
            out(bytes);
        };
        field(self.provider.as_str().as_bytes());
        field(self.seller_id.as_bytes());
        match &self.api_key {
            Some(k) => {
                field(b"key");
                field(k.as_bytes());
            }
            None => field(b"nokey"),
        }
        field(self.api_secret.as_bytes());
    }

    /// Text that came from the marketplace (an error body, a status word, a failure reason)
    /// with every credential of this store masked as `***`: the api key and secret, the Basic
    /// token, base64 of the key and of the secret alone (standard and URL-safe alphabets,
    /// padded or not), each in any mix of JSON escapes, percent-encoding and form encoding
    /// ([`redact::mask`]), and the token after any `Basic`/`Bearer`. Every such text passes
    /// through here whole, before it is cut, logged, stored or shown. The seller (merchant)
    /// id is not a secret: it is in every request's path, and an error naming it must stay
    /// readable.
    pub fn redact(&self, text: &str) -> String {
        use base64::engine::general_purpose::{
            STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD,
        };
        let user = match self.provider {
            Provider::Trendyol => self.api_key.clone().unwrap_or_default(),
            Provider::Hepsiburada => self.seller_id.clone(),
        };
        let plain: Vec<String> = std::iter::once(self.api_secret.clone())
            .chain(self.api_key.clone())
            .filter(|s| !s.is_empty())
            .collect();
        let mut encoded: Vec<Vec<u8>> = plain.iter().map(|s| s.as_bytes().to_vec()).collect();
        encoded.push(format!("{user}:{}", self.api_secret).into_bytes());
        let mut secrets = plain;
        for bytes in &encoded {
            for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
                secrets.push(engine.encode(bytes));
            }
        }
        secrets.sort();
        secrets.dedup();
        redact::mask(text, &secrets)
    }
}

/// How a keyed fingerprint begins ([`StoreCredentials::fingerprint`]); one without it was
/// written by an earlier version ([`StoreCredentials::legacy_fingerprint`]).
pub const FINGERPRINT_PREFIX: &str = "hmac-sha256:";

/// The per-install key of credential fingerprints (kept in `stock_sync.install`). `Debug`
/// does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct FingerprintKey(Vec<u8>);

impl FingerprintKey {
    /// Bytes of a new key.
    pub const LEN: usize = 32;

    pub fn from_bytes(bytes: Vec<u8>) -> FingerprintKey {
        FingerprintKey(bytes)
    }

    /// A new random key (the operating system's generator).
    pub fn generate() -> FingerprintKey {
        use rand::RngCore;
        let mut bytes = vec![0u8; Self::LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        FingerprintKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintKey(<redacted>)")
    }
}

/// Who stocksync says it is (`User-Agent`), per marketplace and store.
///
/// * Trendyol: `{sellerId} - SelfIntegration`, or `{sellerId} - {integrator}` for sellers
///   whose integration runs under an integrator name (alphanumeric, at most 30 characters).
/// * Hepsiburada: the bare developer user name the merchant authorised (e.g. `acme_dev`);
///   there is no value that works for everyone, so a store without one is not sent anything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserAgents {
    pub trendyol_integrator: Option<String>,
    pub hepsiburada_default: Option<String>,
    pub hepsiburada_per_store: std::collections::HashMap<uuid::Uuid, String>,
}

impl UserAgents {
    /// The User-Agent of a store, or `None` when it has none configured (Hepsiburada).
    pub fn for_store(
        &self,
        provider: Provider,
        store_id: uuid::Uuid,
        seller_id: &str,
    ) -> Option<String> {
        match provider {
            Provider::Trendyol => Some(format!(
                "{} - {}",
                seller_id.trim(),
                self.trendyol_integrator
                    .as_deref()
                    .unwrap_or("SelfIntegration")
            )),
            Provider::Hepsiburada => self
                .hepsiburada_per_store
                .get(&store_id)
                .or(self.hepsiburada_default.as_ref())
                .map(|ua| ua.trim().to_string())
                .filter(|ua| !ua.is_empty()),
        }
    }
}

/// One stock value to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockItem {
    /// Trendyol barcode, Hepsiburada merchantSku.
    pub key: String,
    pub quantity: i32,
}

/// The exact bytes that will be sent; identical items in identical order give
/// identical bytes.
#[derive(Debug, Clone)]
pub struct PreparedRequest {
    pub provider: Provider,
    pub body: Vec<u8>,
    /// Lower-case hex SHA-256 of `body`.
    pub body_sha256: String,
    pub item_count: usize,
}

#[derive(Serialize)]
struct TrendyolBody<'a> {
    items: Vec<TrendyolItem<'a>>,
}

#[derive(Serialize)]
struct TrendyolItem<'a> {
    barcode: &'a str,
    quantity: i32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HepsiburadaItem<'a> {
    merchant_sku: &'a str,
    available_stock: i32,
}

/// Builds the push body: Trendyol `{"items":[{"barcode":..,"quantity":..}]}`,
/// Hepsiburada `[{"merchantSku":..,"availableStock":..}]`, compact JSON, fields in
/// that order, items in the given order.
///
/// Nothing is validated here (batch size, duplicates, quantity range are the caller's
/// business; the marketplace refuses violations with a 400).
pub fn prepare(provider: Provider, items: &[StockItem]) -> PreparedRequest {
    let body = match provider {
        Provider::Trendyol => serde_json::to_vec(&TrendyolBody {
            items: items
                .iter()
                .map(|i| TrendyolItem {
                    barcode: &i.key,
                    quantity: i.quantity,
                })
                .collect(),
        }),
        Provider::Hepsiburada => serde_json::to_vec(
            &items
                .iter()
                .map(|i| HepsiburadaItem {
                    merchant_sku: &i.key,
                    available_stock: i.quantity,
                })
                .collect::<Vec<_>>(),
        ),
    }
    .expect("serialising strings and integers cannot fail");
    PreparedRequest {
        provider,
        body_sha256: sha256_hex(&body),
        body,
        item_count: items.len(),
    }
}

/// What a push produced.
#[derive(Debug, Clone, PartialEq)]
pub enum PushOutcome {
    /// 2xx with a Trendyol `batchRequestId` / Hepsiburada `id`.
    Accepted { batch_ref: String },
    /// 429; `Retry-After` (seconds or HTTP-date), else `X-RateLimit-Reset`.
    RateLimited {
        retry_after: Option<std::time::Duration>,
    },
    /// The credentials were refused (401), or (status `0`) cannot be used at all: an empty
    /// or unusable seller id, a missing Trendyol api key, no user agent; nothing was sent.
    AuthRejected { status: u16, message: String },
    /// Trendyol's "15 dakika boyunca aynı isteği tekrarlı olarak atamazsınız!" refusal
    /// (any status).
    IdenticalBody { status: u16, message: String },
    /// 403: an IP block or overload (Hepsiburada, Trendyol), not necessarily credentials.
    Forbidden { message: String },
    /// 400: a validation answer; split the batch to find the bad items.
    BadRequest { status: u16, message: String },
    /// 413: the body is too large for the marketplace.
    TooLarge { message: String },
    /// Any other status (3xx, 404, 405, 408, 409, 415, 422, ...): the store's problem (a
    /// wrong base URL, a gateway), never the items'.
    Unexpected { status: u16, message: String },
    /// 5xx.
    ServerError { status: u16, message: String },
    /// No usable answer: timeout, connection reset, a 2xx without valid JSON or without an
    /// id. The request may have reached the marketplace (and been applied).
    Transport { message: String },
    /// The request never left: the connection could not be made (refused, DNS, TLS
    /// handshake). The marketplace cannot have seen the body.
    NotDelivered { message: String },
}

impl PushOutcome {
    /// The same outcome with every text the marketplace wrote masked of `creds`.
    pub fn redacted(self, creds: &StoreCredentials) -> PushOutcome {
        let r = |m: String| creds.redact(&m);
        match self {
            PushOutcome::Accepted { batch_ref } => PushOutcome::Accepted {
                batch_ref: r(batch_ref),
            },
            PushOutcome::RateLimited { retry_after } => PushOutcome::RateLimited { retry_after },
            PushOutcome::AuthRejected { status, message } => PushOutcome::AuthRejected {
                status,
                message: r(message),
            },
            PushOutcome::IdenticalBody { status, message } => PushOutcome::IdenticalBody {
                status,
                message: r(message),
            },
            PushOutcome::Forbidden { message } => PushOutcome::Forbidden {
                message: r(message),
            },
            PushOutcome::BadRequest { status, message } => PushOutcome::BadRequest {
                status,
                message: r(message),
            },
            PushOutcome::TooLarge { message } => PushOutcome::TooLarge {
                message: r(message),
            },
            PushOutcome::Unexpected { status, message } => PushOutcome::Unexpected {
                status,
                message: r(message),
            },
            PushOutcome::ServerError { status, message } => PushOutcome::ServerError {
                status,
                message: r(message),
            },
            PushOutcome::Transport { message } => PushOutcome::Transport {
                message: r(message),
            },
            PushOutcome::NotDelivered { message } => PushOutcome::NotDelivered {
                message: r(message),
            },
        }
    }
}

/// How long a 429 holds the caller back: the marketplace's hint when it names a moment
/// still ahead and no further than `longest`, else `floor` (the rate window). A hint of
/// zero (`Retry-After: 0`, a date or reset time already past) would mean retrying at once
/// into the same throttle, so it counts as no hint.
pub fn throttle_wait(
    retry_after: Option<Duration>,
    floor: Duration,
    longest: Duration,
) -> Throttle {
    match retry_after {
        Some(hint) if hint.is_zero() => Throttle::Floor(floor),
        Some(hint) if hint > longest => Throttle::HintTooLong(floor),
        Some(hint) => Throttle::Hint(hint),
        None => Throttle::Floor(floor),
    }
}

/// The wait a 429 asks for, and where it came from (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// The marketplace's own hint.
    Hint(Duration),
    /// No usable hint: none, zero or in the past.
    Floor(Duration),
    /// A hint further away than allowed, ignored for the floor.
    HintTooLong(Duration),
}

impl Throttle {
    pub fn wait(self) -> Duration {
        match self {
            Throttle::Hint(d) | Throttle::Floor(d) | Throttle::HintTooLong(d) => d,
        }
    }
}

/// The outcome of one request item in a finished batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemResult {
    /// Position in the request.
    pub index: usize,
    pub key: String,
    pub success: bool,
    /// Failure reasons as the marketplace gave them (empty on success).
    pub reasons: Vec<String>,
    /// The listing refuses updates until a person acts (a campaign forbidding decreases, a
    /// locked, frozen or suspended listing): retrying is pointless.
    pub permanent: bool,
}

/// A batch result / upload status.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchStatus {
    /// Not processed yet: poll again later.
    Pending,
    /// A status word no client has seen: treated as pending, never as success.
    UnknownStatus(String),
    /// The result cannot be attributed item by item (an error row naming no request
    /// item): whether any item was applied is unknown.
    OutcomeUnknown(String),
    /// Exactly one result per request item, in request order.
    Done(Vec<ItemResult>),
    /// The marketplace does not know the id (unknown, or older than its retention).
    NotFound,
    /// The status could not be read (401/403, 429, 5xx, transport, unreadable body).
    Failed(PushOutcome),
}

impl BatchStatus {
    /// The same status with every text the marketplace wrote masked of `creds`.
    pub fn redacted(self, creds: &StoreCredentials) -> BatchStatus {
        match self {
            BatchStatus::Pending => BatchStatus::Pending,
            BatchStatus::NotFound => BatchStatus::NotFound,
            BatchStatus::UnknownStatus(word) => BatchStatus::UnknownStatus(creds.redact(&word)),
            BatchStatus::OutcomeUnknown(why) => BatchStatus::OutcomeUnknown(creds.redact(&why)),
            BatchStatus::Failed(outcome) => BatchStatus::Failed(outcome.redacted(creds)),
            BatchStatus::Done(items) => BatchStatus::Done(
                items
                    .into_iter()
                    .map(|i| ItemResult {
                        key: creds.redact(&i.key),
                        reasons: i.reasons.iter().map(|r| creds.redact(r)).collect(),
                        ..i
                    })
                    .collect(),
            ),
        }
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skus_fold_case_and_turkish_i() {
        for sku in ["iğne-i", "İĞNE-I", "IĞNE-ı", "ığne-İ", " i\u{307}ğne-i "] {
            assert_eq!(fold_sku(sku), "iğne-i", "{sku:?}");
        }
        assert_eq!(fold_sku("ÇANTA-Ş"), "çanta-ş");
        assert_ne!(fold_sku("a-1"), fold_sku("a_1"));
    }

    #[test]
    fn provider_names() {
        assert_eq!(
            Provider::from_store_type("TRENDYOL"),
            Some(Provider::Trendyol)
        );
        assert_eq!(
            Provider::from_store_type("hepsiburada"),
            Some(Provider::Hepsiburada)
        );
        assert_eq!(Provider::from_store_type("N11"), None);
        assert_eq!(Provider::from_store_type(""), None);
        for p in [Provider::Trendyol, Provider::Hepsiburada] {
            assert_eq!(Provider::from_store_type(p.as_str()), Some(p));
            assert_ne!(p.push_endpoint(), p.status_endpoint());
            assert_ne!(p.push_endpoint(), p.read_endpoint());
        }
        assert_eq!(Provider::Trendyol.max_batch(), 1000);
    }

    #[test]
    fn prepare_bytes() {
        let items = [
            StockItem {
                key: "A\"1".into(),
                quantity: 3,
            },
            StockItem {
                key: "ç".into(),
                quantity: 0,
            },
        ];
        let t = prepare(Provider::Trendyol, &items);
        assert_eq!(
            String::from_utf8(t.body.clone()).unwrap(),
            r#"{"items":[{"barcode":"A\"1","quantity":3},{"barcode":"ç","quantity":0}]}"#
        );
        assert_eq!(t.item_count, 2);
        assert_eq!(t.body_sha256, sha256_hex(&t.body));
        let h = prepare(Provider::Hepsiburada, &items);
        assert_eq!(
            String::from_utf8(h.body).unwrap(),
            r#"[{"merchantSku":"A\"1","availableStock":3},{"merchantSku":"ç","availableStock":0}]"#
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn fingerprint_changes_with_every_field_and_hides_secret() {
        let c = StoreCredentials {
            provider: Provider::Trendyol,
            seller_id: "1".into(),
            api_key: Some("k".into()),
            api_secret: "s3cr3t".into(),
            user_agent: "1 - SelfIntegration".into(),
        };
        let key = FingerprintKey::from_bytes(vec![7; 32]);
        let f = c.fingerprint(&key);
        assert!(f.starts_with(FINGERPRINT_PREFIX) && f.len() == FINGERPRINT_PREFIX.len() + 64);
        // Keyed: another install's key gives another fingerprint, and none is the bare
        // SHA-256 earlier versions stored.
        assert_ne!(f, c.fingerprint(&FingerprintKey::from_bytes(vec![8; 32])));
        let legacy = c.legacy_fingerprint();
        assert_eq!(legacy.len(), 64);
        assert!(!f.contains(&legacy));
        assert!(!format!("{key:?}").contains("7"));
        assert_eq!(f, c.clone().fingerprint(&key));
        let mut d = c.clone();
        d.api_secret = "other".into();
        assert_ne!(f, d.fingerprint(&key));
        let mut d = c.clone();
        d.api_key = None;
        assert_ne!(f, d.fingerprint(&key));
        let mut d = c.clone();
        d.seller_id = "2".into();
        assert_ne!(f, d.fingerprint(&key));
        // Field boundaries matter.
        let a = StoreCredentials {
            api_key: Some("ab".into()),
            api_secret: "c".into(),
            ..c.clone()
        };
        let b = StoreCredentials {
            api_key: Some("a".into()),
            api_secret: "bc".into(),
            ..c.clone()
        };
        assert_ne!(a.fingerprint(&key), b.fingerprint(&key));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cr3t") && dbg.contains("***"), "{dbg}");
    }
}
