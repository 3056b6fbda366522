//! Configuration: environment variables and an optional TOML file (`--config`) with the same
//! keys (lower case, without the `STOCKSYNC_` prefix). Environment wins over the file, the
//! file over defaults. Unknown keys in the file are an error. [`KEYS`] is the single list the
//! README's configuration table is generated from (`stocksync config --markdown`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use uuid::Uuid;

use crate::db::{validate_identifier, DbConfig};

/// One configuration key: TOML name, environment variable, default, meaning.
pub struct Key {
    pub name: &'static str,
    pub env: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

pub const KEYS: &[Key] = &[
    Key { name: "database_url", env: "DATABASE_URL", default: "(required)", meaning: "libpq-style URL `postgres://user:password@host:port/db?sslmode=verify-full&sslrootcert=/path/ca.pem`; sslmode disable, prefer, require, verify-ca, verify-full" },
    Key { name: "slot", env: "STOCKSYNC_SLOT", default: "stock_sync", meaning: "logical replication slot (pgoutput)" },
    Key { name: "publication", env: "STOCKSYNC_PUBLICATION", default: "stock_sync", meaning: "publication of `product_stores` and `product_set_items`" },
    Key { name: "http_addr", env: "STOCKSYNC_HTTP_ADDR", default: "127.0.0.1:9187", meaning: "`/metrics`, `/healthz`, `/readyz`, `/api/status` and the dashboard" },
    Key { name: "log_format", env: "STOCKSYNC_LOG_FORMAT", default: "human", meaning: "`human` or `json`" },
    Key { name: "log", env: "STOCKSYNC_LOG", default: "info,tokio_postgres=warn", meaning: "log filter (tracing `EnvFilter` syntax, e.g. `info,stocksync::dispatch=debug`)" },
    Key { name: "flush_interval", env: "STOCKSYNC_FLUSH_INTERVAL", default: "5s", meaning: "a store's batch is sent when its oldest pending entry is this old (or the batch is full)" },
    Key { name: "min_send_interval", env: "STOCKSYNC_MIN_SEND_INTERVAL", default: "0s", meaning: "minimum gap between two requests to one store (the seed's fixed gate is `15m`)" },
    Key { name: "identical_request_window", env: "STOCKSYNC_IDENTICAL_REQUEST_WINDOW", default: "15m", meaning: "never send a byte-identical body to a store within this window" },
    Key { name: "rate_limit_requests", env: "STOCKSYNC_RATE_LIMIT_REQUESTS", default: "50", meaning: "requests per `rate_limit_window` per store and endpoint" },
    Key { name: "rate_limit_window", env: "STOCKSYNC_RATE_LIMIT_WINDOW", default: "10s", meaning: "window of the request limit" },
    Key { name: "max_quantity", env: "STOCKSYNC_MAX_QUANTITY", default: "20000", meaning: "quantities are clamped to 0..max_quantity" },
    Key { name: "safety_stock", env: "STOCKSYNC_SAFETY_STOCK", default: "0", meaning: "subtracted from every computed quantity (floor 0)" },
    Key { name: "safety_stock_per_store", env: "STOCKSYNC_SAFETY_STOCK_PER_STORE", default: "(none)", meaning: "per-store override: `STORE_UUID=N,STORE_UUID=N` (TOML: a table `{ \"uuid\" = N }`)" },
    Key { name: "dry_run", env: "STOCKSYNC_DRY_RUN", default: "false", meaning: "compute and log the payloads, send nothing" },
    Key { name: "trendyol_url", env: "STOCKSYNC_TRENDYOL_URL", default: "https://apigw.trendyol.com", meaning: "Trendyol API base URL" },
    Key { name: "hepsiburada_url", env: "STOCKSYNC_HEPSIBURADA_URL", default: "https://listing-external.hepsiburada.com", meaning: "Hepsiburada listing API base URL" },
    Key { name: "hepsiburada_user_agent", env: "STOCKSYNC_HEPSIBURADA_USER_AGENT", default: "stocksync", meaning: "User-Agent sent to Hepsiburada (your integrator user name)" },
    Key { name: "hepsiburada_batch_size", env: "STOCKSYNC_HEPSIBURADA_BATCH_SIZE", default: "1000", meaning: "items per Hepsiburada upload" },
    Key { name: "request_timeout", env: "STOCKSYNC_REQUEST_TIMEOUT", default: "30s", meaning: "marketplace request timeout" },
    Key { name: "max_attempts", env: "STOCKSYNC_MAX_ATTEMPTS", default: "8", meaning: "failed sends of one item before it is dead-lettered" },
    Key { name: "heartbeat_interval", env: "STOCKSYNC_HEARTBEAT_INTERVAL", default: "60s", meaning: "transactional `pg_logical_emit_message` so an idle slot advances (`0s` = off)" },
    Key { name: "safe_wal_size_warn", env: "STOCKSYNC_SAFE_WAL_SIZE_WARN", default: "1073741824", meaning: "warn when the slot's `safe_wal_size` falls under this many bytes" },
];

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
    #[error("{key} ({env}) = {value:?}: {problem}")]
    Invalid {
        key: &'static str,
        env: &'static str,
        value: String,
        problem: String,
    },
    #[error("DATABASE_URL is not set (environment, or `database_url` in the --config file)")]
    MissingDatabaseUrl,
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
}

/// Resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: Option<String>,
    pub slot: String,
    pub publication: String,
    pub http_addr: SocketAddr,
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
    pub hepsiburada_user_agent: String,
    pub hepsiburada_batch_size: usize,
    pub request_timeout: Duration,
    pub max_attempts: i32,
    pub heartbeat_interval: Duration,
    pub safe_wal_size_warn: i64,
}

/// Raw values by key name, from file then environment.
struct Sources {
    values: HashMap<&'static str, String>,
    per_store_table: Option<HashMap<String, i64>>,
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
        let mut sources = Sources {
            values: HashMap::new(),
            per_store_table: None,
        };
        if let Some(path) = file {
            read_file(path, &mut sources)?;
        }
        for key in KEYS {
            if let Some(value) = env(key.env) {
                sources.values.insert(key.name, value);
                if key.name == "safety_stock_per_store" {
                    sources.per_store_table = None;
                }
            }
        }
        sources.resolve()
    }

    /// Connection settings; fails when `DATABASE_URL` is missing or malformed.
    pub fn db(&self) -> Result<DbConfig, ConfigError> {
        let url = self
            .database_url
            .as_deref()
            .ok_or(ConfigError::MissingDatabaseUrl)?;
        Ok(DbConfig::from_url(url)?)
    }

    /// Safety stock of one store.
    pub fn safety_stock_for(&self, store: &Uuid) -> i32 {
        self.safety_stock_per_store
            .get(store)
            .copied()
            .unwrap_or(self.safety_stock)
    }
}

fn read_file(path: &Path, sources: &mut Sources) -> Result<(), ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: shown.clone(),
        source,
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::File {
            path: shown.clone(),
            message: e.to_string(),
        })?;
    for (name, value) in table {
        let key = KEYS
            .iter()
            .find(|k| k.name == name)
            .ok_or_else(|| ConfigError::UnknownKey {
                path: shown.clone(),
                key: name.clone(),
                known: KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", "),
            })?;
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Table(t) if key.name == "safety_stock_per_store" => {
                let mut map = HashMap::new();
                for (store, n) in t {
                    let n = n.as_integer().ok_or_else(|| ConfigError::File {
                        path: shown.clone(),
                        message: format!("safety_stock_per_store.{store} must be an integer"),
                    })?;
                    map.insert(store, n);
                }
                sources.per_store_table = Some(map);
                continue;
            }
            other => {
                return Err(ConfigError::File {
                    path: shown.clone(),
                    message: format!(
                        "{} must be a string, integer or boolean, not {}",
                        key.name,
                        other.type_str()
                    ),
                })
            }
        };
        sources.values.insert(key.name, text);
    }
    Ok(())
}

impl Sources {
    fn raw(&self, name: &'static str) -> (&'static Key, String) {
        let key = KEYS.iter().find(|k| k.name == name).expect("known key");
        let value = self
            .values
            .get(name)
            .cloned()
            .unwrap_or_else(|| key.default.to_string());
        (key, value)
    }

    fn invalid(key: &'static Key, value: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.name,
            env: key.env,
            value: value.to_string(),
            problem: problem.into(),
        }
    }

    fn string(&self, name: &'static str) -> String {
        self.raw(name).1
    }

    fn duration(&self, name: &'static str) -> Result<Duration, ConfigError> {
        let (key, value) = self.raw(name);
        parse_duration(&value).map_err(|p| Self::invalid(key, &value, p))
    }

    fn number<T: std::str::FromStr>(
        &self,
        name: &'static str,
        min: i64,
        max: i64,
    ) -> Result<T, ConfigError> {
        let (key, value) = self.raw(name);
        let n: i64 = value
            .trim()
            .parse()
            .map_err(|_| Self::invalid(key, &value, "not an integer"))?;
        if n < min || n > max {
            return Err(Self::invalid(
                key,
                &value,
                format!("must be between {min} and {max}"),
            ));
        }
        value
            .trim()
            .parse()
            .map_err(|_| Self::invalid(key, &value, "out of range"))
    }

    fn boolean(&self, name: &'static str) -> Result<bool, ConfigError> {
        let (key, value) = self.raw(name);
        match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(Self::invalid(key, &value, "expected true or false")),
        }
    }

    fn identifier(&self, name: &'static str) -> Result<String, ConfigError> {
        let (key, value) = self.raw(name);
        validate_identifier(name, &value).map_err(|p| Self::invalid(key, &value, p))?;
        Ok(value)
    }

    fn url(&self, name: &'static str) -> Result<String, ConfigError> {
        let (key, value) = self.raw(name);
        let parsed =
            url::Url::parse(&value).map_err(|e| Self::invalid(key, &value, e.to_string()))?;
        if parsed.scheme() != "http" && parsed.scheme() != "https" {
            return Err(Self::invalid(
                key,
                &value,
                "must be an http:// or https:// URL",
            ));
        }
        Ok(value.trim_end_matches('/').to_string())
    }

    fn per_store(&self) -> Result<HashMap<Uuid, i32>, ConfigError> {
        let (key, value) = self.raw("safety_stock_per_store");
        let pairs: Vec<(String, i64)> = match &self.per_store_table {
            Some(table) => table.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            None if value == key.default || value.trim().is_empty() => Vec::new(),
            None => value
                .split(',')
                .map(|item| {
                    let (store, n) = item.split_once('=').ok_or_else(|| {
                        Self::invalid(key, &value, format!("{item:?} is not STORE_UUID=N"))
                    })?;
                    let n = n.trim().parse().map_err(|_| {
                        Self::invalid(key, &value, format!("{n:?} is not an integer"))
                    })?;
                    Ok((store.trim().to_string(), n))
                })
                .collect::<Result<_, ConfigError>>()?,
        };
        let mut map = HashMap::new();
        for (store, n) in pairs {
            let id: Uuid = store.parse().map_err(|_| {
                Self::invalid(key, &value, format!("{store:?} is not a store uuid"))
            })?;
            if !(0..=1_000_000).contains(&n) {
                return Err(Self::invalid(
                    key,
                    &value,
                    format!("{n} must be between 0 and 1000000"),
                ));
            }
            map.insert(id, n as i32);
        }
        Ok(map)
    }

    fn resolve(self) -> Result<Config, ConfigError> {
        let (key, addr) = self.raw("http_addr");
        let http_addr = addr
            .parse()
            .map_err(|_| Self::invalid(key, &addr, "expected HOST:PORT, e.g. 127.0.0.1:9187"))?;
        let (key, format) = self.raw("log_format");
        let log_json = match format.as_str() {
            "human" => false,
            "json" => true,
            _ => return Err(Self::invalid(key, &format, "expected human or json")),
        };
        let rate_limit_window = self.duration("rate_limit_window")?;
        if rate_limit_window.is_zero() {
            let (key, value) = self.raw("rate_limit_window");
            return Err(Self::invalid(key, &value, "must be longer than 0s"));
        }
        Ok(Config {
            database_url: self.values.get("database_url").cloned(),
            slot: self.identifier("slot")?,
            publication: self.identifier("publication")?,
            http_addr,
            log_json,
            log_filter: self.string("log"),
            flush_interval: self.duration("flush_interval")?,
            min_send_interval: self.duration("min_send_interval")?,
            identical_request_window: self.duration("identical_request_window")?,
            rate_limit_requests: self.number("rate_limit_requests", 1, 100_000)?,
            rate_limit_window,
            max_quantity: self.number("max_quantity", 0, 1_000_000_000)?,
            safety_stock: self.number("safety_stock", 0, 1_000_000)?,
            safety_stock_per_store: self.per_store()?,
            dry_run: self.boolean("dry_run")?,
            trendyol_url: self.url("trendyol_url")?,
            hepsiburada_url: self.url("hepsiburada_url")?,
            hepsiburada_user_agent: {
                let ua = self.string("hepsiburada_user_agent");
                if ua.trim().is_empty() {
                    let (key, value) = self.raw("hepsiburada_user_agent");
                    return Err(Self::invalid(
                        key,
                        &value,
                        "must not be empty (Hepsiburada requires a User-Agent)",
                    ));
                }
                ua
            },
            hepsiburada_batch_size: self.number("hepsiburada_batch_size", 1, 10_000)?,
            request_timeout: self.duration("request_timeout")?,
            max_attempts: self.number("max_attempts", 1, 1000)?,
            heartbeat_interval: self.duration("heartbeat_interval")?,
            safe_wal_size_warn: self.number("safe_wal_size_warn", 0, i64::MAX)?,
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

/// The README's configuration table.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| key (TOML) | environment | default | meaning |\n| --- | --- | --- | --- |\n",
    );
    for k in KEYS {
        out.push_str(&format!(
            "| `{}` | `{}` | `{}` | {} |\n",
            k.name, k.env, k.default, k.meaning
        ));
    }
    out
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
        assert!(matches!(c.db(), Err(ConfigError::MissingDatabaseUrl)));
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
        std::fs::remove_dir_all(&dir).unwrap();
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
    }
}
