//! Configuration of the mock marketplace: accounts, limits and faults.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Which marketplace an account (or a request) belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Marketplace {
    #[serde(alias = "Trendyol", alias = "TRENDYOL")]
    Trendyol,
    #[serde(alias = "Hepsiburada", alias = "HEPSIBURADA")]
    Hepsiburada,
}

impl Marketplace {
    pub fn as_str(self) -> &'static str {
        match self {
            Marketplace::Trendyol => "trendyol",
            Marketplace::Hepsiburada => "hepsiburada",
        }
    }
}

impl fmt::Display for Marketplace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Marketplace {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "trendyol" | "ty" => Ok(Marketplace::Trendyol),
            "hepsiburada" | "hb" => Ok(Marketplace::Hepsiburada),
            other => Err(ConfigError::UnknownMarketplace(other.to_string())),
        }
    }
}

/// One seller account on the mock.
///
/// * Trendyol: `seller_id` is the `sellerId` of the paths, requests carry
///   `Authorization: Basic base64(api_key:api_secret)`.
/// * Hepsiburada: `seller_id` is the `merchantId` of the paths, requests carry
///   `Authorization: Basic base64(merchantId:serviceKey)` where the service key is
///   `api_secret`; `api_key` is unused.
///
/// `listings`, when set, is the set of barcodes (Trendyol) or merchant skus
/// (Hepsiburada) the seller has listed; items naming anything else are accepted at
/// HTTP level but fail in the batch result. `None` means every barcode/sku is known.
///
/// `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockAccount {
    pub marketplace: Marketplace,
    #[serde(alias = "sellerId", alias = "merchant_id", alias = "merchantId")]
    pub seller_id: String,
    #[serde(default, alias = "apiKey")]
    pub api_key: String,
    #[serde(alias = "apiSecret", alias = "service_key", alias = "serviceKey")]
    pub api_secret: String,
    #[serde(default)]
    pub listings: Option<BTreeSet<String>>,
}

impl fmt::Debug for MockAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockAccount")
            .field("marketplace", &self.marketplace)
            .field("seller_id", &self.seller_id)
            .field("api_key", &self.api_key)
            .field("api_secret", &"<redacted>")
            .field("listings", &self.listings.as_ref().map(|l| l.len()))
            .finish()
    }
}

impl MockAccount {
    /// A Trendyol account authenticated by `Basic base64(api_key:api_secret)`.
    pub fn trendyol(
        seller_id: impl Into<String>,
        api_key: impl Into<String>,
        api_secret: impl Into<String>,
    ) -> Self {
        MockAccount {
            marketplace: Marketplace::Trendyol,
            seller_id: seller_id.into(),
            api_key: api_key.into(),
            api_secret: api_secret.into(),
            listings: None,
        }
    }

    /// A Hepsiburada account authenticated by `Basic base64(merchant_id:service_key)`.
    pub fn hepsiburada(merchant_id: impl Into<String>, service_key: impl Into<String>) -> Self {
        MockAccount {
            marketplace: Marketplace::Hepsiburada,
            seller_id: merchant_id.into(),
            api_key: String::new(),
            api_secret: service_key.into(),
            listings: None,
        }
    }

    /// Restricts the account to these barcodes (Trendyol) / merchant skus (Hepsiburada).
    pub fn with_listings<I, S>(mut self, listings: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.listings = Some(listings.into_iter().map(Into::into).collect());
        self
    }

    /// Parses a command-line account:
    ///
    /// * `trendyol:SELLER_ID:API_KEY:API_SECRET[:listings=B1,B2,...]`
    /// * `hepsiburada:MERCHANT_ID:SERVICE_KEY[:listings=SKU1,SKU2,...]`
    ///
    /// (`ty` and `hb` are accepted as marketplace names.)
    pub fn parse_spec(spec: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| ConfigError::BadAccountSpec {
            spec: redact_spec(spec),
            why: why.to_string(),
        };
        let mut fields: Vec<&str> = spec.split(':').collect();
        let listings = match fields.last() {
            Some(last) if last.starts_with("listings=") => {
                let list = &last["listings=".len()..];
                fields.pop();
                Some(
                    list.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect::<BTreeSet<_>>(),
                )
            }
            _ => None,
        };
        let marketplace: Marketplace = fields
            .first()
            .ok_or_else(|| bad("empty"))?
            .parse()
            .map_err(|_| bad("must start with trendyol: or hepsiburada:"))?;
        let mut account = match (marketplace, fields.as_slice()) {
            (Marketplace::Trendyol, [_, seller, key, secret]) => {
                MockAccount::trendyol(*seller, *key, *secret)
            }
            (Marketplace::Trendyol, _) => {
                return Err(bad(
                    "expected trendyol:SELLER_ID:API_KEY:API_SECRET[:listings=B1,B2]",
                ))
            }
            (Marketplace::Hepsiburada, [_, merchant, secret]) => {
                MockAccount::hepsiburada(*merchant, *secret)
            }
            (Marketplace::Hepsiburada, _) => {
                return Err(bad(
                    "expected hepsiburada:MERCHANT_ID:SERVICE_KEY[:listings=SKU1,SKU2]",
                ))
            }
        };
        account.listings = listings;
        account.validate()?;
        Ok(account)
    }

    /// Checks that the ids and credentials are present.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |why: &str| ConfigError::BadAccount {
            marketplace: self.marketplace,
            seller_id: self.seller_id.clone(),
            why: why.to_string(),
        };
        if self.seller_id.trim().is_empty() || self.seller_id.contains('/') {
            return Err(bad("seller id must be non-empty and contain no '/'"));
        }
        if self.marketplace == Marketplace::Trendyol && self.api_key.is_empty() {
            return Err(bad("a Trendyol account needs an api_key"));
        }
        if self.api_secret.is_empty() {
            return Err(bad(
                "api_secret (Hepsiburada: service key) must be non-empty",
            ));
        }
        Ok(())
    }
}

fn redact_spec(spec: &str) -> String {
    // Keep marketplace and seller id only: never echo credentials.
    let mut parts = spec.split(':');
    let a = parts.next().unwrap_or("");
    let b = parts.next().unwrap_or("");
    format!("{a}:{b}:<redacted>")
}

/// Reads accounts from a JSON or TOML file, picked by the file's extension.
///
/// JSON: either a bare array of accounts or `{"accounts": [...]}`.
/// TOML: `[[accounts]]` tables. Fields: `marketplace` (`"trendyol"` /
/// `"hepsiburada"`), `seller_id` (alias `merchant_id`), `api_key` (Trendyol only),
/// `api_secret` (alias `service_key`), optional `listings` (array of strings).
pub fn load_accounts_file(path: &Path) -> Result<Vec<MockAccount>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let parse_err = |why: String| ConfigError::Parse {
        path: path.display().to_string(),
        why,
    };
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        accounts: Vec<MockAccount>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum JsonFile {
        Bare(Vec<MockAccount>),
        Wrapped(File),
    }
    let accounts = match ext.as_str() {
        "json" => {
            // Try the wrapped form first for a better error message on typos.
            match serde_json::from_str::<File>(&text) {
                Ok(f) => f.accounts,
                Err(wrapped_err) => match serde_json::from_str::<JsonFile>(&text) {
                    Ok(JsonFile::Bare(v)) => v,
                    Ok(JsonFile::Wrapped(f)) => f.accounts,
                    Err(_) => return Err(parse_err(wrapped_err.to_string())),
                },
            }
        }
        "toml" => {
            toml::from_str::<File>(&text)
                .map_err(|e| parse_err(e.to_string()))?
                .accounts
        }
        other => {
            return Err(ConfigError::UnknownExtension {
                path: path.display().to_string(),
                ext: other.to_string(),
            })
        }
    };
    for a in &accounts {
        a.validate()?;
    }
    Ok(accounts)
}

/// At most `max_requests` requests per `window` per endpoint per seller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub max_requests: u32,
    pub window: Duration,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            max_requests: 50,
            window: Duration::from_secs(10),
        }
    }
}

impl FromStr for RateLimit {
    type Err = ConfigError;
    /// `N/DURATION`, e.g. `50/10s`, `240/1m`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::BadRateLimit(s.to_string());
        let (n, d) = s.split_once('/').ok_or_else(bad)?;
        let max_requests: u32 = n.trim().parse().map_err(|_| bad())?;
        let window = humantime::parse_duration(d.trim()).map_err(|_| bad())?;
        if max_requests == 0 || window.is_zero() {
            return Err(bad());
        }
        Ok(RateLimit {
            max_requests,
            window,
        })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.max_requests,
            humantime::format_duration(self.window)
        )
    }
}

/// Which marketplace endpoints the faults apply to. `/_mock/*` and `/` are never
/// affected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultScope {
    /// Every marketplace endpoint: push, status/batch result and read.
    #[default]
    All,
    /// Only the two push endpoints.
    Push,
    /// Only the Trendyol batch result and the Hepsiburada upload status.
    Status,
    /// Only the two read endpoints (Trendyol stock read, Hepsiburada listings).
    Read,
}

/// Injected faults. Set at start in [`MockConfig::faults`] and at run time with
/// `POST /_mock/faults` (the posted JSON replaces the whole set; absent fields take
/// their defaults) or [`crate::mock::MockMarketplace::set_faults`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Fraction (0..=1) of requests answered `500`.
    pub error_rate: f64,
    /// Delay added before every answer, in milliseconds.
    pub latency_ms: u64,
    /// Fraction (0..=1) of requests whose connection is reset (RST, no response).
    pub reset_rate: f64,
    /// `false` (default): a reset request is not processed. `true`: it is processed
    /// (stock applied, batch created) and then the response is lost.
    pub reset_after_apply: bool,
    /// Every request until this instant is answered `429`.
    pub throttle_until: Option<DateTime<Utc>>,
    /// Input convenience: sets `throttle_until` to now + this many milliseconds when
    /// the faults are installed (never reported back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttle_for_ms: Option<u64>,
    /// `Retry-After` of forced 429s; default: the seconds left in the window (>= 1).
    pub retry_after_secs: Option<u64>,
    /// Sent verbatim as `Retry-After` and `X-RateLimit-Reset` of forced 429s, however
    /// absurd (`-5`, `1e25`, `NaN`, a date in any form): what a client must survive.
    pub retry_after_header: Option<String>,
    /// Every request in scope is answered with this status (until `status_until`), its
    /// body echoing the credentials the request carried, decoded (as some gateways do).
    pub status: Option<u16>,
    pub status_until: Option<DateTime<Utc>>,
    /// Input convenience: sets `status_until` to now + this many milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_for_ms: Option<u64>,
    /// How the forced status's body echoes the credentials.
    pub echo: EchoMode,
    /// Which endpoints the faults hit.
    pub scope: FaultScope,
}

/// How a forced status (`Faults::status`) echoes the credentials the request carried.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EchoMode {
    /// `false` (default): the user and password, decoded, and the Authorization header, in a
    /// JSON message. `true`: also every spelling a service may use: JSON `\uXXXX` escapes of
    /// every character (upper-case hex, as .NET writes them) with `\/`, lower-case percent
    /// hex over the RFC 3986 unreserved set, form encoding (`+` for a space), URL-safe
    /// base64 of `user:password`, standard and URL-safe base64 of the password alone, and
    /// `Bearer <token>` of that base64.
    pub encodings: bool,
    /// Characters of filler before the echo in the message, so that a client cutting the
    /// message at a fixed length cuts through a credential.
    pub padding: usize,
}

impl Faults {
    /// Checks the rates.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("error_rate", self.error_rate),
            ("reset_rate", self.reset_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(ConfigError::BadFaults(format!(
                    "{name} must be within 0..=1, got {v}"
                )));
            }
        }
        if let Some(status) = self.status.filter(|s| !(100..=599).contains(s)) {
            return Err(ConfigError::BadFaults(format!(
                "status {status} is not an HTTP status"
            )));
        }
        Ok(())
    }

    /// Converts `throttle_for_ms` into `throttle_until` relative to `now`.
    pub fn normalized(mut self, now: DateTime<Utc>) -> Self {
        if let Some(ms) = self.throttle_for_ms.take() {
            self.throttle_until = Some(now + chrono::Duration::milliseconds(ms as i64));
        }
        if let Some(ms) = self.status_for_ms.take() {
            self.status_until = Some(now + chrono::Duration::milliseconds(ms as i64));
        }
        self
    }
}

/// Everything the mock enforces. `Default` gives the documented real limits:
/// not open, no accounts, identical-body window 15 min answered `400`,
/// 50 requests / 10 s, 1000 items per request, quantity 0..=20000, no faults,
/// no processing delay.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Accept any credentials for any seller id; unknown sellers are created on first
    /// use. Configured accounts still check their credentials.
    pub open: bool,
    pub accounts: Vec<MockAccount>,
    /// Trendyol refuses a byte-identical body from the same seller within this window
    /// (zero disables the rule).
    pub identical_window: Duration,
    /// Status of that refusal (unconfirmed in the contract; default 400).
    pub identical_status: u16,
    /// Per seller, per endpoint (push and status are separate endpoints).
    pub rate_limit: RateLimit,
    pub trendyol_max_items: usize,
    /// Unconfirmed in the contract; default 1000.
    pub hepsiburada_max_items: usize,
    /// Largest accepted quantity / availableStock (0 is the smallest).
    pub max_quantity: i64,
    /// Time between accepting a batch and its results being visible.
    pub processing_delay: Duration,
    /// How long batch results can be read (Trendyol keeps them 4 hours).
    pub batch_retention: Duration,
    /// Status for a Hepsiburada request without User-Agent (unconfirmed; default 403).
    pub hepsiburada_user_agent_status: u16,
    /// Refuse push bodies whose Content-Type is not `application/json` with 415.
    pub require_json_content_type: bool,
    /// Oldest request records are dropped beyond this many.
    pub request_log_limit: usize,
    pub faults: Faults,
    /// The read endpoints (paging, page window, variants, flags, per-minute cap).
    pub reads: super::reads::ReadsConfig,
    /// User agents, status words, barcode normalisation (also settable at run time).
    pub behaviour: super::Behaviour,
    /// Serve `/` and `/_mock/*` to peers that are not loopback too (a container whose
    /// published port is bound to the host's loopback); the `Host` check stays.
    pub admin_any_peer: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            open: false,
            accounts: Vec::new(),
            identical_window: Duration::from_secs(15 * 60),
            identical_status: 400,
            rate_limit: RateLimit::default(),
            trendyol_max_items: 1000,
            hepsiburada_max_items: 1000,
            max_quantity: 20_000,
            processing_delay: Duration::ZERO,
            batch_retention: Duration::from_secs(4 * 3600),
            hepsiburada_user_agent_status: 403,
            require_json_content_type: true,
            request_log_limit: 100_000,
            faults: Faults::default(),
            reads: super::reads::ReadsConfig::default(),
            behaviour: super::Behaviour::default(),
            admin_any_peer: false,
        }
    }
}

impl MockConfig {
    /// Adds an account (builder style).
    pub fn with_account(mut self, account: MockAccount) -> Self {
        self.accounts.push(account);
        self
    }

    /// Checks accounts, statuses and faults.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = BTreeSet::new();
        for a in &self.accounts {
            a.validate()?;
            if !seen.insert((a.marketplace, a.seller_id.clone())) {
                return Err(ConfigError::BadAccount {
                    marketplace: a.marketplace,
                    seller_id: a.seller_id.clone(),
                    why: "configured twice".into(),
                });
            }
        }
        for (name, s) in [
            ("identical_status", self.identical_status),
            (
                "hepsiburada_user_agent_status",
                self.hepsiburada_user_agent_status,
            ),
        ] {
            if !(100..=599).contains(&s) {
                return Err(ConfigError::BadStatus { name, status: s });
            }
        }
        if self.max_quantity < 0 {
            return Err(ConfigError::BadFaults("max_quantity must be >= 0".into()));
        }
        self.faults.validate()
    }
}

/// Configuration errors (never contain credentials).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown marketplace {0:?} (expected trendyol or hepsiburada)")]
    UnknownMarketplace(String),
    #[error("bad --account {spec:?}: {why}")]
    BadAccountSpec { spec: String, why: String },
    #[error("account {marketplace}:{seller_id}: {why}")]
    BadAccount {
        marketplace: Marketplace,
        seller_id: String,
        why: String,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {why}")]
    Parse { path: String, why: String },
    #[error("{path}: unknown extension {ext:?} (use .json or .toml)")]
    UnknownExtension { path: String, ext: String },
    #[error("bad rate limit {0:?} (expected N/DURATION, e.g. 50/10s)")]
    BadRateLimit(String),
    #[error("{name}: {status} is not an HTTP status")]
    BadStatus { name: &'static str, status: u16 },
    #[error("bad faults: {0}")]
    BadFaults(String),
}
