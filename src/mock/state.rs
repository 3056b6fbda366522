//! In-memory state: accounts with their catalogues, batches, the request log and the
//! limiter memories. One mutex guards it all (the mock is not a benchmark).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::behaviour::{Behaviour, ListingFlags};
use super::config::{Faults, Marketplace, MockAccount, MockConfig};
use super::limits::{IdenticalWindow, RateLimiter};
use super::reads::ReadState;

/// Snapshot of every account's catalogue (`GET /_mock/state`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MockState {
    pub accounts: Vec<AccountState>,
}

/// One account in a [`MockState`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccountState {
    pub marketplace: Marketplace,
    pub seller_id: String,
    /// `true` when the account came from the configuration, `false` when `--open`
    /// created it on first use.
    pub configured: bool,
    /// Known barcodes / merchant skus; `None` = every barcode/sku is known.
    pub listings: Option<Vec<String>>,
    /// Barcode (Trendyol) or merchant sku (Hepsiburada; hepsiburadaSku when no
    /// merchantSku was sent) -> quantity.
    pub stock: BTreeMap<String, i64>,
}

impl MockState {
    /// The account with this marketplace and seller id.
    pub fn account(&self, marketplace: Marketplace, seller_id: &str) -> Option<&AccountState> {
        self.accounts
            .iter()
            .find(|a| a.marketplace == marketplace && a.seller_id == seller_id)
    }

    /// Quantity of a barcode/sku at the first account with this seller id.
    pub fn quantity(&self, seller_id: &str, barcode_or_sku: &str) -> Option<i64> {
        self.accounts
            .iter()
            .filter(|a| a.seller_id == seller_id)
            .find_map(|a| a.stock.get(barcode_or_sku).copied())
    }
}

/// One request to a marketplace endpoint (`GET /_mock/requests`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// 1, 2, 3... in arrival order (restarts after reset).
    pub seq: u64,
    /// Arrival time, RFC 3339 with milliseconds (UTC).
    pub time: String,
    /// `None` for paths that are no marketplace endpoint (answered 404).
    pub marketplace: Option<Marketplace>,
    /// `"push"`, `"status"` (Trendyol batch result / Hepsiburada upload status) or `"read"`
    /// (Trendyol stock read / Hepsiburada listings).
    pub endpoint: Option<String>,
    pub seller_id: Option<String>,
    pub method: String,
    pub path: String,
    /// HTTP status sent; `0` when the connection was reset and nothing was sent.
    pub status: u16,
    /// Items in the request body (push only; 0 when the body is not parseable).
    pub item_count: usize,
    /// Accepted items whose quantity equalled the catalogue's already.
    pub unchanged_items: usize,
    /// Items that came back FAILED in the batch result (unknown listing).
    pub failed_items: usize,
    /// Hex SHA-256 of the raw request body.
    pub body_sha256: String,
    pub body_bytes: usize,
    pub user_agent: Option<String>,
    /// Why the request was refused or faulted (e.g. `identical_request`,
    /// `rate_limited`, `fault:error`, `fault:reset`).
    pub note: Option<String>,
    /// Trendyol batchRequestId / Hepsiburada upload id of an accepted push, or the id
    /// asked for by a status request.
    pub batch_id: Option<String>,
}

pub(crate) struct Account {
    pub marketplace: Marketplace,
    pub seller_id: String,
    pub api_key: String,
    pub api_secret: String,
    pub listings: Option<BTreeSet<String>>,
    pub stock: BTreeMap<String, i64>,
    /// When each listing's stock last changed (a push that changed it, a panel edit, an
    /// order): Trendyol's `stockLastModifiedDate`.
    pub stock_modified: BTreeMap<String, DateTime<Utc>>,
    /// Listings that refuse updates (by catalogue key).
    pub flags: BTreeMap<String, ListingFlags>,
    pub configured: bool,
}

/// Result of applying one item to a catalogue.
pub(crate) enum Applied {
    Changed,
    Unchanged,
    UnknownListing,
    /// The listing's flags refuse the update (the marketplace's code).
    Refused(&'static str),
}

impl Account {
    fn from_config(a: &MockAccount) -> Self {
        Account {
            marketplace: a.marketplace,
            seller_id: a.seller_id.clone(),
            api_key: a.api_key.clone(),
            api_secret: a.api_secret.clone(),
            listings: a.listings.clone(),
            stock: BTreeMap::new(),
            stock_modified: BTreeMap::new(),
            flags: BTreeMap::new(),
            configured: true,
        }
    }

    pub(crate) fn knows(&self, names: &[&str]) -> bool {
        match &self.listings {
            None => true,
            Some(set) => names.iter().any(|n| set.contains(*n)),
        }
    }

    /// Sets `key` to `quantity` if the listing is known and its flags allow it.
    pub(crate) fn apply(&mut self, key: &str, also_known_as: &[&str], quantity: i64) -> Applied {
        let mut names = vec![key];
        names.extend_from_slice(also_known_as);
        if !self.knows(&names) {
            return Applied::UnknownListing;
        }
        if let Some(code) = self
            .flags
            .get(key)
            .and_then(|f| f.refusal(self.stock.get(key).copied(), quantity))
        {
            return Applied::Refused(code);
        }
        if self.stock.get(key) == Some(&quantity) {
            return Applied::Unchanged;
        }
        self.set_stock(key, quantity);
        Applied::Changed
    }

    /// Sets the stock shown and, when it changes, when it last changed.
    pub(crate) fn set_stock(&mut self, key: &str, quantity: i64) {
        if self.stock.insert(key.to_string(), quantity) != Some(quantity) {
            self.stock_modified.insert(key.to_string(), Utc::now());
        }
    }

    /// An order of `units` on the marketplace's side: the stock shown drops by them (not
    /// below 0) and its change is dated now. `None` when the listing shows no stock.
    pub(crate) fn order(&mut self, key: &str, units: i64) -> Option<i64> {
        let left = (*self.stock.get(key)? - units.max(0)).max(0);
        self.stock.insert(key.to_string(), left);
        self.stock_modified.insert(key.to_string(), Utc::now());
        Some(left)
    }
}

/// A batch item: what was asked and, if it failed, why.
pub(crate) struct BatchItem {
    pub request_item: Value,
    pub failure: Option<String>,
}

pub(crate) struct Batch {
    pub created_at: DateTime<Utc>,
    pub created: Instant,
    pub ready_at: Instant,
    pub items: Vec<BatchItem>,
}

type BatchKey = (Marketplace, String, String);

pub(crate) struct Inner {
    pub accounts: BTreeMap<(Marketplace, String), Account>,
    pub batches: HashMap<BatchKey, Batch>,
    pub requests: VecDeque<RequestRecord>,
    pub next_seq: u64,
    pub limiter: RateLimiter,
    pub identical: IdenticalWindow,
    /// The read endpoints' memory and the seller panel's changes.
    pub reads: ReadState,
}

/// Why a request is not authenticated.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("no Authorization header")]
    Missing,
    #[error("Authorization is not Basic base64(user:password)")]
    Malformed,
    #[error("unknown seller")]
    UnknownSeller,
    #[error("wrong credentials")]
    WrongCredentials,
}

pub(crate) struct Shared {
    pub config: MockConfig,
    inner: Mutex<Inner>,
    faults: Mutex<Faults>,
    behaviour: Mutex<Behaviour>,
}

impl Shared {
    pub(crate) fn new(config: MockConfig) -> Self {
        let faults = config.faults.clone().normalized(Utc::now());
        let inner = Inner {
            accounts: config
                .accounts
                .iter()
                .map(|a| {
                    (
                        (a.marketplace, a.seller_id.clone()),
                        Account::from_config(a),
                    )
                })
                .collect(),
            batches: HashMap::new(),
            requests: VecDeque::new(),
            next_seq: 1,
            limiter: RateLimiter::new(config.rate_limit),
            identical: IdenticalWindow::new(config.identical_window),
            reads: ReadState::default(),
        };
        Shared {
            behaviour: Mutex::new(config.behaviour.clone()),
            config,
            inner: Mutex::new(inner),
            faults: Mutex::new(faults),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent-enough data for a mock.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_faults(&self, faults: Faults) -> Faults {
        let faults = faults.normalized(Utc::now());
        *self.faults.lock().unwrap_or_else(|e| e.into_inner()) = faults.clone();
        faults
    }

    pub(crate) fn behaviour(&self) -> Behaviour {
        self.behaviour
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_behaviour(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap_or_else(|e| e.into_inner()) = behaviour;
    }

    /// An order on the marketplace's side (see [`Account::order`]); `None` when the account
    /// or the listing's stock does not exist. A Trendyol barcode is looked up as Trendyol
    /// keeps it.
    pub(crate) fn order(
        &self,
        marketplace: Marketplace,
        seller_id: &str,
        key: &str,
        units: i64,
    ) -> Option<i64> {
        let key = match marketplace {
            Marketplace::Trendyol => self.behaviour().trendyol_barcode(key),
            Marketplace::Hepsiburada => key.to_string(),
        };
        let mut inner = self.lock();
        inner
            .accounts
            .get_mut(&(marketplace, seller_id.to_string()))?
            .order(&key, units)
    }

    /// Sets one listing's flags; false when the account does not exist.
    pub(crate) fn set_listing_flags(
        &self,
        marketplace: Marketplace,
        seller_id: &str,
        key: &str,
        flags: ListingFlags,
    ) -> bool {
        let mut inner = self.lock();
        match inner
            .accounts
            .get_mut(&(marketplace, seller_id.to_string()))
        {
            Some(account) => {
                account.flags.insert(key.to_string(), flags);
                true
            }
            None => false,
        }
    }

    /// Clears catalogues, batches, the request log, limiter memories and accounts
    /// created by `--open`. Faults and behaviour are kept.
    pub(crate) fn reset(&self) {
        let mut inner = self.lock();
        inner.accounts.retain(|_, a| a.configured);
        for a in inner.accounts.values_mut() {
            a.stock.clear();
            a.stock_modified.clear();
            a.flags.clear();
        }
        inner.batches.clear();
        inner.requests.clear();
        inner.next_seq = 1;
        inner.limiter.clear();
        inner.identical.clear();
        inner.reads.clear();
    }

    pub(crate) fn state(&self) -> MockState {
        let inner = self.lock();
        MockState {
            accounts: inner
                .accounts
                .values()
                .map(|a| AccountState {
                    marketplace: a.marketplace,
                    seller_id: a.seller_id.clone(),
                    configured: a.configured,
                    listings: a.listings.as_ref().map(|l| l.iter().cloned().collect()),
                    stock: a.stock.clone(),
                })
                .collect(),
        }
    }

    pub(crate) fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.iter().cloned().collect()
    }

    pub(crate) fn record(&self, mut rec: RequestRecord) {
        let mut inner = self.lock();
        rec.seq = inner.next_seq;
        inner.next_seq += 1;
        inner.requests.push_back(rec);
        while inner.requests.len() > self.config.request_log_limit.max(1) {
            inner.requests.pop_front();
        }
    }

    /// Checks Basic credentials for `seller_id` (creating the account in open mode).
    pub(crate) fn authenticate(
        &self,
        inner: &mut Inner,
        marketplace: Marketplace,
        seller_id: &str,
        headers: &HeaderMap,
    ) -> Result<(), AuthError> {
        let (user, password) = basic_credentials(headers)?;
        let key = (marketplace, seller_id.to_string());
        match inner.accounts.get(&key) {
            Some(account) => {
                let ok = match marketplace {
                    Marketplace::Trendyol => {
                        user == account.api_key && password == account.api_secret
                    }
                    Marketplace::Hepsiburada => {
                        user == account.seller_id && password == account.api_secret
                    }
                };
                if ok || !account.configured {
                    Ok(())
                } else {
                    Err(AuthError::WrongCredentials)
                }
            }
            None if self.config.open => {
                inner.accounts.insert(
                    key,
                    Account {
                        marketplace,
                        seller_id: seller_id.to_string(),
                        api_key: String::new(),
                        api_secret: String::new(),
                        listings: None,
                        stock: BTreeMap::new(),
                        stock_modified: BTreeMap::new(),
                        flags: BTreeMap::new(),
                        configured: false,
                    },
                );
                Ok(())
            }
            None => Err(AuthError::UnknownSeller),
        }
    }

    /// Forgets batches older than the retention time.
    pub(crate) fn prune_batches(&self, inner: &mut Inner, now: Instant) {
        let keep: Duration = self.config.batch_retention;
        inner
            .batches
            .retain(|_, b| now.saturating_duration_since(b.created) < keep);
    }
}

fn basic_credentials(headers: &HeaderMap) -> Result<(String, String), AuthError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Malformed)?
        .trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(AuthError::Malformed);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|_| AuthError::Malformed)?;
    let text = String::from_utf8(decoded).map_err(|_| AuthError::Malformed)?;
    let (user, password) = text.split_once(':').ok_or(AuthError::Malformed)?;
    Ok((user.to_string(), password.to_string()))
}

/// The JSON integer in `v`, if it is one (`1.5`, `"3"`, `null`, `1.0` are not).
pub(crate) fn json_integer(v: Option<&Value>) -> Option<i64> {
    match v {
        Some(Value::Number(n)) => n.as_i64(),
        _ => None,
    }
}

/// Epoch milliseconds.
pub(crate) fn epoch_millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The instant `t` plus `d` as a wall-clock time.
pub(crate) fn wall_after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero())
}
