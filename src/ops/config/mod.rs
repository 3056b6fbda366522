//! Configuration: environment variables and an optional TOML file (`--config`) with the same
//! keys (lower case, without the `STOCKSYNC_` prefix).
//!
//! [`KEYS`] is the one table of keys. It drives, in this order of precedence:
//! 1. the environment — only the variables it names are read, each converted by its [`Kind`];
//! 2. the TOML file — a key it does not name is an error (`deny_unknown_fields`);
//! 3. the defaults — its `default` column;
//!
//! and `stocksync config --markdown`, which prints the README's table from it. The merged
//! values are deserialized with serde into one struct (durations with `humantime-serde`) and
//! then checked for ranges; every error names the key and its environment variable, and
//! never shows the value of a secret.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use uuid::Uuid;

use crate::db::{validate_identifier, DbConfig};
use crate::marketplace::TRENDYOL_MAX_QUANTITY;

mod table;
pub use table::{keys, markdown_table, Key, Kind, KEYS};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    File { path: String, message: String },
    #[error("unknown key {key:?} in config file {path}; known keys: {known}")]
    UnknownKey {
        path: String,
        key: String,
        known: String,
    },
    #[error("{key} ({env}) = {value}: {problem}")]
    Invalid {
        key: &'static str,
        env: &'static str,
        /// Quoted, or `(hidden)` for a secret.
        value: String,
        problem: String,
    },
    #[error("config file {path} holds a secret ({key}) and can be read by others than its owner (mode {mode:04o}): run `chmod 600 {path}`, or keep the secret in the environment (as libpq refuses such a password file)")]
    Exposed {
        path: String,
        key: &'static str,
        mode: u32,
    },
    #[error("DATABASE_URL is not set (environment, or `database_url` in the --config file)")]
    MissingDatabaseUrl,
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

impl ConfigError {
    fn invalid(key: &'static Key, value: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.name,
            env: key.env,
            value: if key.secret {
                "(hidden)".into()
            } else {
                format!("{value:?}")
            },
            problem: problem.into(),
        }
    }
}

/// A configuration value that is never shown: its `Debug` is `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Resolved configuration. Secrets are [`Secret`]s, so `{:?}` never shows them.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: Option<Secret>,
    pub slot: String,
    pub publication: String,
    pub http_addr: SocketAddr,
    /// Required by `/api/*`, the dashboard and (unless `metrics_public`) `/metrics`.
    pub http_token: Option<Secret>,
    pub metrics_public: bool,
    pub log_json: bool,
    pub log_filter: String,
    pub flush_interval: Duration,
    pub min_send_interval: Duration,
    pub identical_request_window: Duration,
    pub rate_limit_requests: u32,
    pub rate_limit_window: Duration,
    pub max_quantity: i32,
    pub safety_stock: i32,
    pub safety_stock_per_store: HashMap<Uuid, i32>,
    pub dry_run: bool,
    pub trendyol_url: String,
    pub hepsiburada_url: String,
    pub allow_insecure_marketplace: bool,
    pub hepsiburada_user_agent: Option<String>,
    pub hepsiburada_user_agent_per_store: HashMap<Uuid, String>,
    pub trendyol_integrator: Option<String>,
    pub trendyol_writes_per_minute: u32,
    pub trendyol_reads_per_minute: u32,
    pub forbidden_backoff: Duration,
    pub max_retry_after: Duration,
    pub hepsiburada_batch_size: usize,
    pub request_timeout: Duration,
    pub max_attempts: i32,
    pub streaming: bool,
    pub heartbeat_interval: Duration,
    pub safe_wal_size_warn: i64,
    pub reconcile_interval: Duration,
    pub reconcile_fix: bool,
    /// A lower marketplace quantity is repaired once it persisted this long.
    pub reconcile_confirm_after: Duration,
    /// Percent of the Trendyol read cap reconciliation may use.
    pub reconcile_read_share: u32,
    pub hepsiburada_reads_per_minute: u32,
    pub hepsiburada_page_limit: u32,
}

/// The merged values, typed; field names are the TOML keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    database_url: Option<String>,
    slot: String,
    publication: String,
    http_addr: String,
    http_token: Option<String>,
    metrics_public: bool,
    log_format: String,
    log: String,
    #[serde(with = "humantime_serde")]
    flush_interval: Duration,
    #[serde(with = "humantime_serde")]
    min_send_interval: Duration,
    #[serde(with = "humantime_serde")]
    identical_request_window: Duration,
    rate_limit_requests: i64,
    #[serde(with = "humantime_serde")]
    rate_limit_window: Duration,
    max_quantity: i64,
    safety_stock: i64,
    #[serde(default)]
    safety_stock_per_store: HashMap<String, i64>,
    dry_run: bool,
    trendyol_url: String,
    hepsiburada_url: String,
    allow_insecure_marketplace: bool,
    hepsiburada_user_agent: Option<String>,
    #[serde(default)]
    hepsiburada_user_agent_per_store: HashMap<String, String>,
    trendyol_integrator: Option<String>,
    trendyol_writes_per_minute: i64,
    trendyol_reads_per_minute: i64,
    #[serde(with = "humantime_serde")]
    forbidden_backoff: Duration,
    #[serde(with = "humantime_serde")]
    max_retry_after: Duration,
    hepsiburada_batch_size: i64,
    #[serde(with = "humantime_serde")]
    request_timeout: Duration,
    max_attempts: i64,
    streaming: bool,
    #[serde(with = "humantime_serde")]
    heartbeat_interval: Duration,
    safe_wal_size_warn: i64,
    #[serde(with = "humantime_serde")]
    reconcile_interval: Duration,
    reconcile_fix: bool,
    #[serde(with = "humantime_serde")]
    reconcile_confirm_after: Duration,
    reconcile_read_share: String,
    hepsiburada_reads_per_minute: i64,
    hepsiburada_page_limit: i64,
}

impl Config {
    /// Loads from the optional TOML file and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_from(file, |name| std::env::var(name).ok())
    }

    /// Same as [`Config::load`], with the environment given as a function (tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut merged = toml::Table::new();
        for key in KEYS {
            if let Some(default) = key.default_value() {
                merged.insert(key.name.into(), typed(key, default)?);
            }
        }
        if let Some(path) = file {
            merged.extend(read_file(path)?);
        }
        for key in KEYS {
            if let Some(value) = env(key.env) {
                merged.insert(key.name.into(), typed(key, &value)?);
            }
        }
        let raw: Raw = toml::Value::Table(merged)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::File {
                path: file.map_or("(environment)".into(), |p| p.display().to_string()),
                message: e.message().to_string(),
            })?;
        raw.resolve()
    }

    /// Connection settings; fails when `DATABASE_URL` is missing or malformed.
    pub fn db(&self) -> Result<DbConfig, ConfigError> {
        let url = self
            .database_url
            .as_ref()
            .ok_or(ConfigError::MissingDatabaseUrl)?;
        Ok(DbConfig::from_url(url.expose())?)
    }

    /// Safety stock of one store.
    pub fn safety_stock_for(&self, store: &Uuid) -> i32 {
        self.safety_stock_per_store
            .get(store)
            .copied()
            .unwrap_or(self.safety_stock)
    }
}

/// A key's text as the TOML value its field takes.
fn typed(key: &'static Key, text: &str) -> Result<toml::Value, ConfigError> {
    let bad = |problem: &str| ConfigError::invalid(key, text, problem);
    let trimmed = text.trim();
    Ok(match key.kind {
        Kind::Text => toml::Value::String(text.to_string()),
        Kind::Integer => toml::Value::Integer(trimmed.parse().map_err(|_| bad("not an integer"))?),
        Kind::Boolean => toml::Value::Boolean(match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err(bad("expected true or false")),
        }),
        Kind::Duration => {
            let canonical = if trimmed == "0" { "0s" } else { trimmed };
            humantime::parse_duration(canonical)
                .map_err(|e| bad(&format!("not a duration like 200ms, 5s or 15m ({e})")))?;
            toml::Value::String(canonical.to_string())
        }
        Kind::PerStoreInteger => {
            let mut table = toml::Table::new();
            for item in trimmed.split(',').filter(|i| !i.trim().is_empty()) {
                let (store, n) = item
                    .split_once('=')
                    .ok_or_else(|| bad(&format!("{item:?} is not STORE_UUID=N")))?;
                let n: i64 = n
                    .trim()
                    .parse()
                    .map_err(|_| bad(&format!("{n:?} is not an integer")))?;
                table.insert(store.trim().to_string(), toml::Value::Integer(n));
            }
            toml::Value::Table(table)
        }
        Kind::PerStoreText => {
            let mut table = toml::Table::new();
            for item in trimmed.split(',').filter(|i| !i.trim().is_empty()) {
                let (store, value) = item
                    .split_once('=')
                    .ok_or_else(|| bad(&format!("{item:?} is not STORE_UUID=value")))?;
                table.insert(
                    store.trim().to_string(),
                    toml::Value::String(value.trim().to_string()),
                );
            }
            toml::Value::Table(table)
        }
    })
}

/// The file's keys, each known; string values are read as their key's kind (so
/// `max_quantity = "500"` works as it does in the environment).
///
/// A file holding a secret (a database URL with a password, the HTTP token) is refused when
/// its group or others have any permission on it, as libpq refuses such a password file.
fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    use std::io::Read;
    let shown = path.display().to_string();
    let read_error = |source| ConfigError::Read {
        path: shown.clone(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    // The mode of the file read, not of whatever the path names a moment later.
    let metadata = file.metadata().map_err(read_error)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read_error)?;
    // The error's message and position only: its `Display` quotes the offending line, which
    // may hold a password or a token.
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::File {
            path: shown.clone(),
            message: match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("line {line}, column {column}: {}", e.message().trim())
                }
                None => e.message().trim().to_string(),
            },
        })?;
    if let Some(key) = secret_held(&table) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(ConfigError::Exposed {
                    path: shown,
                    key: key.name,
                    mode,
                });
            }
        }
        #[cfg(not(unix))]
        let _ = (key, &metadata);
    }
    let mut values = toml::Table::new();
    for (name, value) in table {
        let key = Key::named(&name).ok_or_else(|| ConfigError::UnknownKey {
            path: shown.clone(),
            key: name.clone(),
            known: KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
        })?;
        let value = match value {
            toml::Value::String(text) => typed(key, &text)?,
            // A secret given as a number or table would be quoted by the type error.
            _ if key.secret => return Err(ConfigError::invalid(key, "", "must be a string")),
            other => other,
        };
        values.insert(name, value);
    }
    Ok(values)
}

/// The first secret key the file gives a value: a database URL holding a password (or one
/// that cannot be read, which may), any other secret key that is not blank.
fn secret_held(table: &toml::Table) -> Option<&'static Key> {
    table.iter().find_map(|(name, value)| {
        let key = Key::named(name).filter(|k| k.secret)?;
        let held = match value {
            toml::Value::String(text) if key.name == keys::DATABASE_URL.name => {
                url::Url::parse(text).map_or(true, |u| u.password().is_some())
            }
            toml::Value::String(text) => !text.trim().is_empty(),
            _ => true,
        };
        held.then_some(key)
    })
}

/// A percentage `1%`..`100%` (the `%` may be left out).
fn percent(key: &'static Key, value: &str) -> Result<u32, ConfigError> {
    let n: i64 = value
        .trim()
        .trim_end_matches('%')
        .trim()
        .parse()
        .map_err(|_| ConfigError::invalid(key, value, "expected a percentage like 50%"))?;
    in_range(key, n, 1, 100)
}

/// Checks a number's range, naming the key.
fn in_range<T: TryFrom<i64>>(
    key: &'static Key,
    value: i64,
    min: i64,
    max: i64,
) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::invalid(
            key,
            &value.to_string(),
            format!("must be between {min} and {max}"),
        ));
    }
    T::try_from(value).map_err(|_| ConfigError::invalid(key, &value.to_string(), "out of range"))
}

/// `max_quantity`: clamping to more than a marketplace accepts would turn every large stock
/// into a refused item (Trendyol refuses above [`TRENDYOL_MAX_QUANTITY`]; Hepsiburada
/// publishes no limit, so Trendyol's bounds the key).
fn max_quantity(value: i64) -> Result<i32, ConfigError> {
    if value > TRENDYOL_MAX_QUANTITY {
        return Err(ConfigError::invalid(
            &keys::MAX_QUANTITY,
            &value.to_string(),
            format!(
                "must be at most {TRENDYOL_MAX_QUANTITY}: Trendyol refuses a larger stock quantity"
            ),
        ));
    }
    in_range(&keys::MAX_QUANTITY, value, 0, TRENDYOL_MAX_QUANTITY)
}

/// A marketplace base URL: `https://`, or `http://` to loopback (the mock), or `http://`
/// anywhere with `allow_insecure` (Basic credentials would travel in clear).
fn url(key: &'static Key, value: &str, allow_insecure: bool) -> Result<String, ConfigError> {
    let parsed =
        url::Url::parse(value).map_err(|e| ConfigError::invalid(key, value, e.to_string()))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_insecure || is_loopback_host(&parsed) => {}
        "http" => {
            return Err(ConfigError::invalid(
                key,
                value,
                format!(
                    "plain http:// to a host other than loopback would send the stores' credentials in clear; \
                     use https://, or set {}=true if this network is trusted",
                    keys::ALLOW_INSECURE_MARKETPLACE.env
                ),
            ))
        }
        _ => {
            return Err(ConfigError::invalid(
                key,
                value,
                "must be an http:// or https:// URL",
            ))
        }
    }
    Ok(value.trim_end_matches('/').to_string())
}

/// `localhost`, `*.localhost`, 127.0.0.0/8 or `[::1]`.
fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Minimum length of `STOCKSYNC_HTTP_TOKEN`.
const MIN_TOKEN_LEN: usize = 16;

/// The HTTP token (see [`Config::check_http_exposure`] for when one is needed).
fn http_token(token: Option<String>) -> Result<Option<Secret>, ConfigError> {
    let token = token.filter(|t| !t.is_empty());
    if let Some(t) = &token {
        if t.chars().count() < MIN_TOKEN_LEN || t.trim() != t {
            return Err(ConfigError::invalid(
                &keys::HTTP_TOKEN,
                t,
                format!("use at least {MIN_TOKEN_LEN} characters without surrounding spaces, e.g. `openssl rand -hex 32`"),
            ));
        }
    }
    Ok(token.map(Secret))
}

impl Config {
    /// `run` serves HTTP: anything but a loopback address needs `STOCKSYNC_HTTP_TOKEN`.
    /// (Checked for `run` and `check` only, so `setup` or `status` with the service's
    /// environment still work.)
    pub fn check_http_exposure(&self) -> Result<(), ConfigError> {
        if self.http_token.is_some() || self.http_addr.ip().is_loopback() {
            return Ok(());
        }
        Err(ConfigError::invalid(
            &keys::HTTP_ADDR,
            &self.http_addr.to_string(),
            format!(
                "this is not a loopback address, so the HTTP endpoints need a token: set {} \
                 (then /api/* and the dashboard require `Authorization: Bearer <token>`, and so does \
                 /metrics unless {}=true), or bind to 127.0.0.1",
                keys::HTTP_TOKEN.env,
                keys::METRICS_PUBLIC.env
            ),
        ))
    }
}

/// A value sent in an HTTP header: trimmed, not empty, visible ASCII and spaces.
fn header_text(key: &'static Key, value: String) -> Result<String, ConfigError> {
    let trimmed = value.trim();
    if trimmed.is_empty() || !trimmed.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
        return Err(ConfigError::invalid(
            key,
            &value,
            "must be a non-empty user name of visible ASCII characters",
        ));
    }
    Ok(trimmed.to_string())
}

fn at_least_a_second(key: &'static Key, value: Duration) -> Result<Duration, ConfigError> {
    if value < Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            key,
            &humantime::format_duration(value).to_string(),
            "must be at least 1s",
        ));
    }
    Ok(value)
}

fn identifier(key: &'static Key, value: String) -> Result<String, ConfigError> {
    validate_identifier(key.name, &value).map_err(|p| ConfigError::invalid(key, &value, p))?;
    Ok(value)
}

impl Raw {
    fn resolve(self) -> Result<Config, ConfigError> {
        let http_addr: SocketAddr = self.http_addr.parse().map_err(|_| {
            ConfigError::invalid(
                &keys::HTTP_ADDR,
                &self.http_addr,
                "expected HOST:PORT, e.g. 127.0.0.1:9187",
            )
        })?;
        let log_json = match self.log_format.as_str() {
            "human" => false,
            "json" => true,
            other => {
                return Err(ConfigError::invalid(
                    &keys::LOG_FORMAT,
                    other,
                    "expected human or json",
                ))
            }
        };
        if self.rate_limit_window.is_zero() {
            return Err(ConfigError::invalid(
                &keys::RATE_LIMIT_WINDOW,
                "0s",
                "must be longer than 0s",
            ));
        }
        let hepsiburada_user_agent = self
            .hepsiburada_user_agent
            .map(|ua| header_text(&keys::HEPSIBURADA_USER_AGENT, ua))
            .transpose()?;
        let mut hepsiburada_user_agent_per_store = HashMap::new();
        for (store, ua) in self.hepsiburada_user_agent_per_store {
            let key = &keys::HEPSIBURADA_USER_AGENT_PER_STORE;
            let id: Uuid = store.parse().map_err(|_| {
                ConfigError::invalid(key, &store, format!("{store:?} is not a store uuid"))
            })?;
            hepsiburada_user_agent_per_store.insert(id, header_text(key, ua)?);
        }
        let trendyol_integrator = match self.trendyol_integrator {
            Some(name)
                if name.is_empty()
                    || name.len() > 30
                    || !name.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                return Err(ConfigError::invalid(
                    &keys::TRENDYOL_INTEGRATOR,
                    &name,
                    "must be 1 to 30 letters or digits (Trendyol's rule for integrator names)",
                ))
            }
            other => other,
        };
        let mut safety_stock_per_store = HashMap::new();
        for (store, n) in &self.safety_stock_per_store {
            let key = &keys::SAFETY_STOCK_PER_STORE;
            let id: Uuid = store.parse().map_err(|_| {
                ConfigError::invalid(key, store, format!("{store:?} is not a store uuid"))
            })?;
            safety_stock_per_store.insert(
                id,
                in_range(&keys::SAFETY_STOCK_PER_STORE, *n, 0, 1_000_000)?,
            );
        }
        Ok(Config {
            database_url: self.database_url.map(Secret),
            slot: identifier(&keys::SLOT, self.slot)?,
            publication: identifier(&keys::PUBLICATION, self.publication)?,
            http_addr,
            http_token: http_token(self.http_token)?,
            metrics_public: self.metrics_public,
            log_json,
            log_filter: self.log,
            flush_interval: self.flush_interval,
            min_send_interval: self.min_send_interval,
            identical_request_window: self.identical_request_window,
            rate_limit_requests: in_range(
                &keys::RATE_LIMIT_REQUESTS,
                self.rate_limit_requests,
                1,
                100_000,
            )?,
            rate_limit_window: self.rate_limit_window,
            max_quantity: max_quantity(self.max_quantity)?,
            safety_stock: in_range(&keys::SAFETY_STOCK, self.safety_stock, 0, 1_000_000)?,
            safety_stock_per_store,
            dry_run: self.dry_run,
            trendyol_url: url(
                &keys::TRENDYOL_URL,
                &self.trendyol_url,
                self.allow_insecure_marketplace,
            )?,
            hepsiburada_url: url(
                &keys::HEPSIBURADA_URL,
                &self.hepsiburada_url,
                self.allow_insecure_marketplace,
            )?,
            allow_insecure_marketplace: self.allow_insecure_marketplace,
            hepsiburada_user_agent,
            hepsiburada_user_agent_per_store,
            trendyol_integrator,
            trendyol_writes_per_minute: in_range(
                &keys::TRENDYOL_WRITES_PER_MINUTE,
                self.trendyol_writes_per_minute,
                1,
                100_000,
            )?,
            trendyol_reads_per_minute: in_range(
                &keys::TRENDYOL_READS_PER_MINUTE,
                self.trendyol_reads_per_minute,
                1,
                100_000,
            )?,
            forbidden_backoff: at_least_a_second(&keys::FORBIDDEN_BACKOFF, self.forbidden_backoff)?,
            max_retry_after: at_least_a_second(&keys::MAX_RETRY_AFTER, self.max_retry_after)?,
            hepsiburada_batch_size: in_range(
                &keys::HEPSIBURADA_BATCH_SIZE,
                self.hepsiburada_batch_size,
                1,
                10_000,
            )?,
            request_timeout: self.request_timeout,
            max_attempts: in_range(&keys::MAX_ATTEMPTS, self.max_attempts, 1, 1000)?,
            streaming: self.streaming,
            heartbeat_interval: self.heartbeat_interval,
            safe_wal_size_warn: in_range(
                &keys::SAFE_WAL_SIZE_WARN,
                self.safe_wal_size_warn,
                0,
                i64::MAX,
            )?,
            reconcile_interval: self.reconcile_interval,
            reconcile_fix: self.reconcile_fix,
            reconcile_confirm_after: self.reconcile_confirm_after,
            reconcile_read_share: percent(&keys::RECONCILE_READ_SHARE, &self.reconcile_read_share)?,
            hepsiburada_reads_per_minute: in_range(
                &keys::HEPSIBURADA_READS_PER_MINUTE,
                self.hepsiburada_reads_per_minute,
                1,
                100_000,
            )?,
            hepsiburada_page_limit: in_range(
                &keys::HEPSIBURADA_PAGE_LIMIT,
                self.hepsiburada_page_limit,
                1,
                10_000,
            )?,
        })
    }
}

/// `200ms`, `5s`, `15m`, `1h`, `0s`, and combinations humantime accepts.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("not a duration like 200ms, 5s or 15m ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn defaults_match_the_contracts() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.slot, "stock_sync");
        assert_eq!(c.flush_interval, Duration::from_secs(5));
        assert_eq!(c.identical_request_window, Duration::from_secs(900));
        assert_eq!(
            (c.rate_limit_requests, c.rate_limit_window),
            (50, Duration::from_secs(10))
        );
        assert_eq!(c.max_quantity, 20000);
        assert!(!c.dry_run);
        assert!(c.streaming);
        let off = Config::load_from(None, env(&[("STOCKSYNC_STREAMING", "off")])).unwrap();
        assert!(!off.streaming);
        assert!(matches!(c.db(), Err(ConfigError::MissingDatabaseUrl)));
    }

    #[test]
    fn every_key_is_a_field_and_every_default_reads() {
        // A key missing from `Raw` would be refused as unknown; a field missing from KEYS
        // could never be set from the environment.
        for key in KEYS {
            let mut one = toml::Table::new();
            for k in KEYS {
                if let Some(d) = k.default_value() {
                    one.insert(k.name.into(), typed(k, d).unwrap());
                }
            }
            one.insert(
                key.name.into(),
                typed(key, key.default_value().unwrap_or("")).unwrap(),
            );
            let raw: Result<Raw, _> = toml::Value::Table(one).try_into();
            assert!(raw.is_ok(), "{}: {:?}", key.name, raw.err());
        }
    }

    #[test]
    fn file_then_env_and_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("stocksync-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        let store = Uuid::new_v4();
        std::fs::write(
            &file,
            format!("database_url = \"postgres://u@h/db\"\nflush_interval = \"200ms\"\nmax_quantity = 500\n[safety_stock_per_store]\n\"{store}\" = 3\n"),
        )
        .unwrap();
        let c = Config::load_from(Some(&file), env(&[("STOCKSYNC_MAX_QUANTITY", "700")])).unwrap();
        assert_eq!(c.flush_interval, Duration::from_millis(200));
        assert_eq!(c.max_quantity, 700, "environment wins over the file");
        assert_eq!(c.safety_stock_for(&store), 3);
        assert_eq!(c.db().unwrap().dbname, "db");

        std::fs::write(&file, "flush_intervall = \"1s\"\n").unwrap();
        let err = Config::load_from(Some(&file), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key \"flush_intervall\""), "{err}");

        std::fs::write(&file, "max_quantity = \"600\"\ndry_run = true\n").unwrap();
        let c = Config::load_from(Some(&file), env(&[])).unwrap();
        assert_eq!(c.max_quantity, 600, "a number given as a TOML string");
        assert!(c.dry_run);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn max_quantity_cannot_exceed_what_trendyol_accepts() {
        let err = Config::load_from(None, env(&[("STOCKSYNC_MAX_QUANTITY", "20001")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_quantity")
                && err.contains("STOCKSYNC_MAX_QUANTITY")
                && err.contains("at most 20000")
                && err.contains("Trendyol"),
            "{err}"
        );
        let c = Config::load_from(None, env(&[("STOCKSYNC_MAX_QUANTITY", "20000")])).unwrap();
        assert_eq!(c.max_quantity, 20_000);
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = Config::load_from(None, env(&[("STOCKSYNC_FLUSH_INTERVAL", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("STOCKSYNC_FLUSH_INTERVAL"), "{err}");
        let err = Config::load_from(None, env(&[("STOCKSYNC_SLOT", "Bad-Slot")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("STOCKSYNC_SLOT"), "{err}");
        let err = Config::load_from(None, env(&[("STOCKSYNC_SAFETY_STOCK_PER_STORE", "x=1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a store uuid"), "{err}");
        let err = Config::load_from(None, env(&[("STOCKSYNC_MAX_ATTEMPTS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("STOCKSYNC_MAX_ATTEMPTS") && err.contains("between 1 and 1000"),
            "{err}"
        );
        let c = Config::load_from(None, env(&[("STOCKSYNC_MIN_SEND_INTERVAL", "0")])).unwrap();
        assert_eq!(c.min_send_interval, Duration::ZERO);
    }

    const PASSWORD: &str = "pw-Hunter2-do-not-print";
    const TOKEN: &str = "tok-0123456789abcdef-do-not-print";

    fn assert_hidden(text: &str) {
        for secret in [PASSWORD, TOKEN, "do-not-print"] {
            assert!(!text.contains(secret), "a secret is shown: {text}");
        }
    }

    #[test]
    fn debug_and_errors_never_show_passwords_or_tokens() {
        let url = format!("postgres://svc:{PASSWORD}@db.example/shop?sslmode=require");
        let c = Config::load_from(
            None,
            env(&[
                ("DATABASE_URL", &url),
                ("STOCKSYNC_HTTP_TOKEN", TOKEN),
                ("STOCKSYNC_HTTP_ADDR", "0.0.0.0:9187"),
            ]),
        )
        .unwrap();
        assert_eq!(c.http_token.as_ref().map(Secret::expose), Some(TOKEN));
        let shown = format!("{c:?} {c:#?} {:?}", c.db().unwrap());
        assert_hidden(&shown);
        assert!(shown.contains("db.example"), "{shown}");

        let mut errors = Vec::new();
        // Values refused by the environment.
        for (key, value) in [
            ("STOCKSYNC_HTTP_TOKEN", "do-not-print"),
            (
                "DATABASE_URL",
                &format!("postgres://svc:{PASSWORD}@h/db?sslmode=maybe"),
            ),
            (
                "DATABASE_URL",
                &format!("postgres://svc:{PASSWORD}@h:notaport/db"),
            ),
            (
                "DATABASE_URL",
                &format!("postgres://svc:{PASSWORD}@h/db?require_auth=kerberos"),
            ),
        ] {
            let err = Config::load_from(None, env(&[(key, value)]))
                .and_then(|c| c.db().map(|_| c))
                .unwrap_err();
            errors.push(format!("{err} {err:?}"));
        }
        // TOML files: a syntax error on the secret's line, and a secret of the wrong type.
        let dir = std::env::temp_dir().join(format!("stocksync-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        for text in [
            format!("database_url = \"postgres://svc:{PASSWORD}@h/db\nslot = \"x\"\n"),
            format!("database_url = 'postgres://svc:{PASSWORD}@h/db' trailing\n"),
            format!("http_token = {{ value = \"{TOKEN}\" }}\n"),
            "http_token = 1234567890123456789\n".to_string(),
            format!("http_token = \"{TOKEN}\"\nhttp_token = \"{TOKEN}\"\n"),
        ] {
            std::fs::write(&file, &text).unwrap();
            let err = Config::load_from(Some(&file), env(&[])).unwrap_err();
            errors.push(format!("{err} {err:?}"));
        }
        std::fs::remove_dir_all(&dir).unwrap();
        for e in &errors {
            assert_hidden(e);
            assert!(!e.contains("1234567890123456789"), "{e}");
        }
        assert!(errors[4].contains("line 1"), "{}", errors[4]);
    }

    /// A file holding a secret is refused while its group or others may read it; one
    /// without a secret, or private to its owner, is read.
    #[cfg(unix)]
    #[test]
    fn a_file_holding_a_secret_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("stocksync-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        let chmod = |mode: u32| {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        for (text, key) in [
            (
                "database_url = \"postgres://svc:pw-1@h/db\"\n",
                "database_url",
            ),
            ("http_token = \"tok-0123456789abcdef\"\n", "http_token"),
        ] {
            std::fs::write(&file, text).unwrap();
            for mode in [0o644, 0o640, 0o604, 0o660, 0o610] {
                chmod(mode);
                let err = Config::load_from(Some(&file), env(&[])).unwrap_err();
                assert!(
                    matches!(err, ConfigError::Exposed { .. }),
                    "{mode:o}: {err}"
                );
                let text = err.to_string();
                assert!(
                    text.contains("chmod 600")
                        && text.contains(key)
                        && text.contains(&file.display().to_string()),
                    "{text}"
                );
                assert!(
                    !text.contains("pw-1") && !text.contains("tok-0123"),
                    "{text}"
                );
            }
            for mode in [0o600, 0o400] {
                chmod(mode);
                Config::load_from(Some(&file), env(&[])).unwrap();
            }
        }
        // No secret in it: any mode.
        std::fs::write(
            &file,
            "database_url = \"postgres://svc@h/db\"\nhttp_token = \"\"\n",
        )
        .unwrap();
        chmod(0o644);
        Config::load_from(Some(&file), env(&[])).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reconciliation_keys() {
        let c = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.reconcile_interval, Duration::from_secs(24 * 3600));
        assert!(c.reconcile_fix);
        assert_eq!(c.reconcile_confirm_after, Duration::from_secs(30 * 60));
        assert_eq!(c.reconcile_read_share, 50);
        assert_eq!(
            (c.hepsiburada_reads_per_minute, c.hepsiburada_page_limit),
            (240, 100)
        );
        let c = Config::load_from(
            None,
            env(&[
                ("STOCKSYNC_RECONCILE_INTERVAL", "0s"),
                ("STOCKSYNC_RECONCILE_READ_SHARE", "20"),
            ]),
        )
        .unwrap();
        assert!(c.reconcile_interval.is_zero());
        assert_eq!(c.reconcile_read_share, 20);
        for bad in ["0%", "101%", "half"] {
            let err = Config::load_from(None, env(&[("STOCKSYNC_RECONCILE_READ_SHARE", bad)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("STOCKSYNC_RECONCILE_READ_SHARE"), "{err}");
        }
    }

    #[test]
    fn non_loopback_http_needs_a_token() {
        let err = Config::load_from(None, env(&[("STOCKSYNC_HTTP_ADDR", "0.0.0.0:9187")]))
            .unwrap()
            .check_http_exposure()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("STOCKSYNC_HTTP_TOKEN") && err.contains("STOCKSYNC_METRICS_PUBLIC"),
            "{err}"
        );
        for addr in ["127.0.0.1:9187", "[::1]:9187", "127.0.0.2:1"] {
            let c = Config::load_from(None, env(&[("STOCKSYNC_HTTP_ADDR", addr)])).unwrap();
            assert!(c.http_token.is_none());
            c.check_http_exposure().unwrap();
        }
        let err = Config::load_from(None, env(&[("STOCKSYNC_HTTP_TOKEN", "short")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 16"), "{err}");
    }

    #[test]
    fn plain_http_marketplaces_only_on_loopback_unless_allowed() {
        for url in [
            "http://127.0.0.1:8089",
            "http://localhost:8089/",
            "http://[::1]:8089",
            "https://apigw.example",
        ] {
            let c = Config::load_from(None, env(&[("STOCKSYNC_TRENDYOL_URL", url)])).unwrap();
            assert_eq!(c.trendyol_url, url.trim_end_matches('/'));
        }
        for key in ["STOCKSYNC_TRENDYOL_URL", "STOCKSYNC_HEPSIBURADA_URL"] {
            let err = Config::load_from(None, env(&[(key, "http://mock.example:8089")]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key) && err.contains("STOCKSYNC_ALLOW_INSECURE_MARKETPLACE"),
                "{err}"
            );
            let c = Config::load_from(
                None,
                env(&[
                    (key, "http://mock.example:8089"),
                    ("STOCKSYNC_ALLOW_INSECURE_MARKETPLACE", "true"),
                ]),
            )
            .unwrap();
            assert!(c.allow_insecure_marketplace);
        }
    }
}
