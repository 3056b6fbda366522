//! The one table of configuration keys ([`KEYS`]): name, environment variable, default,
//! how the text is read ([`Kind`]) and what it means. Loading and validation are in the
//! parent module; `stocksync config --markdown` prints the README's table from here.

/// How a key's text (from the environment, a TOML string or the default) is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Integer,
    Boolean,
    /// `200ms`, `5s`, `15m`, `1h`, `0s` (humantime).
    Duration,
    /// `STORE_UUID=N,STORE_UUID=N`; in TOML a table `{ "uuid" = N }`.
    PerStoreInteger,
    /// `STORE_UUID=text,STORE_UUID=text`; in TOML a table `{ "uuid" = "text" }`.
    PerStoreText,
}

/// One configuration key: TOML name, environment variable, default, how it is read, meaning.
pub struct Key {
    pub name: &'static str,
    pub env: &'static str,
    /// The default as text; `(required)` and `(none)` mean there is none.
    pub default: &'static str,
    pub kind: Kind,
    /// Its value is never shown (errors, `Debug`).
    pub secret: bool,
    pub meaning: &'static str,
}

impl Key {
    const fn new(
        name: &'static str,
        env: &'static str,
        default: &'static str,
        kind: Kind,
        meaning: &'static str,
    ) -> Key {
        Key {
            name,
            env,
            default,
            kind,
            secret: false,
            meaning,
        }
    }

    const fn secret(mut self) -> Key {
        self.secret = true;
        self
    }

    pub(super) fn default_value(&self) -> Option<&'static str> {
        (!self.default.starts_with('(')).then_some(self.default)
    }

    /// The key of a TOML name.
    pub fn named(name: &str) -> Option<&'static Key> {
        KEYS.iter().find(|k| k.name == name)
    }
}

/// The keys, one constant each (validation names them directly).
pub mod keys {
    use super::Key;
    use super::Kind::*;

    pub const DATABASE_URL: Key = Key::new("database_url", "DATABASE_URL", "(required)", Text, "libpq-style URL `postgres://user:password@host:port/db?sslmode=verify-full&sslrootcert=/path/ca.pem`; `sslmode`, `sslrootcert`, `channel_binding`, `require_auth` and the other parameters in the README's TLS section, as in libpq").secret();
    pub const SLOT: Key = Key::new(
        "slot",
        "STOCKSYNC_SLOT",
        "stock_sync",
        Text,
        "logical replication slot (pgoutput)",
    );
    pub const PUBLICATION: Key = Key::new(
        "publication",
        "STOCKSYNC_PUBLICATION",
        "stock_sync",
        Text,
        "publication of `product_stores` and `product_set_items`",
    );
    pub const HTTP_ADDR: Key = Key::new(
        "http_addr",
        "STOCKSYNC_HTTP_ADDR",
        "127.0.0.1:9187",
        Text,
        "`/metrics`, `/healthz`, `/readyz`, `/api/status` and the dashboard",
    );
    pub const LOG_FORMAT: Key = Key::new(
        "log_format",
        "STOCKSYNC_LOG_FORMAT",
        "human",
        Text,
        "`human` or `json`",
    );
    pub const LOG: Key = Key::new(
        "log",
        "STOCKSYNC_LOG",
        "info,tokio_postgres=warn",
        Text,
        "log filter (tracing `EnvFilter` syntax, e.g. `info,stocksync::dispatch=debug`)",
    );
    pub const FLUSH_INTERVAL: Key = Key::new(
        "flush_interval",
        "STOCKSYNC_FLUSH_INTERVAL",
        "5s",
        Duration,
        "a store's batch is sent when its oldest pending entry is this old (or the batch is full)",
    );
    pub const MIN_SEND_INTERVAL: Key = Key::new(
        "min_send_interval",
        "STOCKSYNC_MIN_SEND_INTERVAL",
        "0s",
        Duration,
        "minimum gap between two requests to one store (the seed's fixed gate is `15m`)",
    );
    pub const IDENTICAL_REQUEST_WINDOW: Key = Key::new(
        "identical_request_window",
        "STOCKSYNC_IDENTICAL_REQUEST_WINDOW",
        "15m",
        Duration,
        "never send a byte-identical body to a store within this window",
    );
    pub const RATE_LIMIT_REQUESTS: Key = Key::new(
        "rate_limit_requests",
        "STOCKSYNC_RATE_LIMIT_REQUESTS",
        "50",
        Integer,
        "requests per `rate_limit_window` per store and endpoint",
    );
    pub const RATE_LIMIT_WINDOW: Key = Key::new(
        "rate_limit_window",
        "STOCKSYNC_RATE_LIMIT_WINDOW",
        "10s",
        Duration,
        "window of the request limit",
    );
    pub const MAX_QUANTITY: Key = Key::new(
        "max_quantity",
        "STOCKSYNC_MAX_QUANTITY",
        "20000",
        Integer,
        "quantities are clamped to 0..max_quantity (at most 20000: Trendyol refuses more; Hepsiburada publishes no limit)",
    );
    pub const SAFETY_STOCK: Key = Key::new(
        "safety_stock",
        "STOCKSYNC_SAFETY_STOCK",
        "0",
        Integer,
        "subtracted from every computed quantity (floor 0)",
    );
    pub const SAFETY_STOCK_PER_STORE: Key = Key::new(
        "safety_stock_per_store",
        "STOCKSYNC_SAFETY_STOCK_PER_STORE",
        "(none)",
        PerStoreInteger,
        "per-store override: `STORE_UUID=N,STORE_UUID=N` (TOML: a table `{ \"uuid\" = N }`)",
    );
    pub const DRY_RUN: Key = Key::new(
        "dry_run",
        "STOCKSYNC_DRY_RUN",
        "false",
        Boolean,
        "compute and log the payloads, send nothing",
    );
    pub const TRENDYOL_URL: Key = Key::new(
        "trendyol_url",
        "STOCKSYNC_TRENDYOL_URL",
        "https://apigw.trendyol.com",
        Text,
        "Trendyol API base URL",
    );
    pub const HEPSIBURADA_URL: Key = Key::new(
        "hepsiburada_url",
        "STOCKSYNC_HEPSIBURADA_URL",
        "https://listing-external.hepsiburada.com",
        Text,
        "Hepsiburada listing API base URL",
    );
    pub const HEPSIBURADA_USER_AGENT: Key = Key::new(
        "hepsiburada_user_agent",
        "STOCKSYNC_HEPSIBURADA_USER_AGENT",
        "(none)",
        Text,
        "User-Agent of Hepsiburada requests: the bare developer user name the merchant authorised (e.g. `acme_dev`); a Hepsiburada store without one (here or per store) is paused and sent nothing",
    );
    pub const HEPSIBURADA_USER_AGENT_PER_STORE: Key = Key::new(
        "hepsiburada_user_agent_per_store",
        "STOCKSYNC_HEPSIBURADA_USER_AGENT_PER_STORE",
        "(none)",
        PerStoreText,
        "per-store Hepsiburada user agent: `STORE_UUID=name,STORE_UUID=name` (TOML: a table `{ \"uuid\" = \"name\" }`)",
    );
    pub const TRENDYOL_INTEGRATOR: Key = Key::new(
        "trendyol_integrator",
        "STOCKSYNC_TRENDYOL_INTEGRATOR",
        "(none)",
        Text,
        "integrator name for the Trendyol User-Agent `{sellerId} - {name}` (alphanumeric, at most 30 characters); unset: `SelfIntegration`",
    );
    pub const TRENDYOL_WRITES_PER_MINUTE: Key = Key::new(
        "trendyol_writes_per_minute",
        "STOCKSYNC_TRENDYOL_WRITES_PER_MINUTE",
        "350",
        Integer,
        "Trendyol \"Inventory & Price Write\" requests per minute per store (your seller tier: 350, 500, 1000, 1500 or 2000), on top of the per-window limit",
    );
    pub const TRENDYOL_READS_PER_MINUTE: Key = Key::new(
        "trendyol_reads_per_minute",
        "STOCKSYNC_TRENDYOL_READS_PER_MINUTE",
        "1000",
        Integer,
        "Trendyol \"Product Integration Read\" requests per minute per store (batch results and stock reads; tier 1000 to 2000)",
    );
    pub const FORBIDDEN_BACKOFF: Key = Key::new(
        "forbidden_backoff",
        "STOCKSYNC_FORBIDDEN_BACKOFF",
        "1m",
        Duration,
        "a store answered 403 (an IP block or overload) is paused and probes itself after this, doubling per 403 up to 1h",
    );
    pub const MAX_RETRY_AFTER: Key = Key::new(
        "max_retry_after",
        "STOCKSYNC_MAX_RETRY_AFTER",
        "10m",
        Duration,
        "a Retry-After or X-RateLimit-Reset further away than this is ignored as garbage (the store waits as for a 429 without a hint)",
    );
    pub const HEPSIBURADA_BATCH_SIZE: Key = Key::new(
        "hepsiburada_batch_size",
        "STOCKSYNC_HEPSIBURADA_BATCH_SIZE",
        "1000",
        Integer,
        "items per Hepsiburada upload",
    );
    pub const REQUEST_TIMEOUT: Key = Key::new(
        "request_timeout",
        "STOCKSYNC_REQUEST_TIMEOUT",
        "30s",
        Duration,
        "marketplace request timeout",
    );
    pub const MAX_ATTEMPTS: Key = Key::new(
        "max_attempts",
        "STOCKSYNC_MAX_ATTEMPTS",
        "8",
        Integer,
        "failed sends of one item before it is dead-lettered",
    );
    pub const STREAMING: Key = Key::new(
        "streaming",
        "STOCKSYNC_STREAMING",
        "on",
        Boolean,
        "`on`: the server streams a transaction larger than its `logical_decoding_work_mem` while it runs (pgoutput protocol 2, PostgreSQL 14+), stocksync stages it and enqueues it at its commit; `off`: protocol 1, the server spills it to disk and sends it at commit",
    );
    pub const HEARTBEAT_INTERVAL: Key = Key::new(
        "heartbeat_interval",
        "STOCKSYNC_HEARTBEAT_INTERVAL",
        "60s",
        Duration,
        "transactional `pg_logical_emit_message` so an idle slot advances (`0s` = off)",
    );
    pub const HTTP_TOKEN: Key = Key::new(
        "http_token",
        "STOCKSYNC_HTTP_TOKEN",
        "(none)",
        Text,
        "bearer token for `/api/*`, the dashboard and (unless `metrics_public`) `/metrics`; required when `http_addr` is not loopback (at least 16 characters, e.g. `openssl rand -hex 32`)",
    )
    .secret();
    pub const METRICS_PUBLIC: Key = Key::new(
        "metrics_public",
        "STOCKSYNC_METRICS_PUBLIC",
        "false",
        Boolean,
        "serve `/metrics` without the token (Prometheus convention); `/healthz` and `/readyz` are always open",
    );
    pub const ALLOW_INSECURE_MARKETPLACE: Key = Key::new(
        "allow_insecure_marketplace",
        "STOCKSYNC_ALLOW_INSECURE_MARKETPLACE",
        "false",
        Boolean,
        "allow an `http://` marketplace URL to a host other than loopback (credentials would travel in clear)",
    );
    pub const SAFE_WAL_SIZE_WARN: Key = Key::new(
        "safe_wal_size_warn",
        "STOCKSYNC_SAFE_WAL_SIZE_WARN",
        "1073741824",
        Integer,
        "warn when the slot's `safe_wal_size` falls under this many bytes",
    );
    pub const RECONCILE_INTERVAL: Key = Key::new(
        "reconcile_interval",
        "STOCKSYNC_RECONCILE_INTERVAL",
        "24h",
        Duration,
        "`run` audits each store against what its marketplace shows this often, one store at a time (`0s` = off; `stocksync reconcile` audits now)",
    );
    pub const RECONCILE_FIX: Key = Key::new(
        "reconcile_fix",
        "STOCKSYNC_RECONCILE_FIX",
        "true",
        Boolean,
        "the periodic audit enqueues a repair (reason `RECONCILE`) for every drifted listing (never in dry run)",
    );
    pub const RECONCILE_CONFIRM_AFTER: Key = Key::new(
        "reconcile_confirm_after",
        "STOCKSYNC_RECONCILE_CONFIRM_AFTER",
        "30m",
        Duration,
        "a listing a marketplace shows *lower* than the database (an order it applied that the database has not imported yet) is repaired only once the difference has persisted across audits this far apart, or at once where Trendyol's `stockLastModifiedDate` shows no change since the last accepted push; higher is repaired at once (`0s` = no holding back)",
    );
    pub const RECONCILE_READ_SHARE: Key = Key::new(
        "reconcile_read_share",
        "STOCKSYNC_RECONCILE_READ_SHARE",
        "50%",
        Text,
        "part of the Trendyol read cap per minute reconciliation may use (`1%`..`100%`); batch-result polling keeps the rest",
    );
    pub const HEPSIBURADA_READS_PER_MINUTE: Key = Key::new(
        "hepsiburada_reads_per_minute",
        "STOCKSYNC_HEPSIBURADA_READS_PER_MINUTE",
        "240",
        Integer,
        "requests per minute to Hepsiburada's listing reads (reconciliation; unpublished, about 240)",
    );
    pub const HEPSIBURADA_PAGE_LIMIT: Key = Key::new(
        "hepsiburada_page_limit",
        "STOCKSYNC_HEPSIBURADA_PAGE_LIMIT",
        "100",
        Integer,
        "listings per Hepsiburada read (`limit`; its maximum is unconfirmed, clients use 100 to 2000)",
    );
}

/// Every key, in the README's order.
pub const KEYS: &[Key] = &[
    keys::DATABASE_URL,
    keys::SLOT,
    keys::PUBLICATION,
    keys::HTTP_ADDR,
    keys::HTTP_TOKEN,
    keys::METRICS_PUBLIC,
    keys::LOG_FORMAT,
    keys::LOG,
    keys::FLUSH_INTERVAL,
    keys::MIN_SEND_INTERVAL,
    keys::IDENTICAL_REQUEST_WINDOW,
    keys::RATE_LIMIT_REQUESTS,
    keys::RATE_LIMIT_WINDOW,
    keys::MAX_QUANTITY,
    keys::SAFETY_STOCK,
    keys::SAFETY_STOCK_PER_STORE,
    keys::DRY_RUN,
    keys::TRENDYOL_URL,
    keys::HEPSIBURADA_URL,
    keys::ALLOW_INSECURE_MARKETPLACE,
    keys::HEPSIBURADA_USER_AGENT,
    keys::HEPSIBURADA_USER_AGENT_PER_STORE,
    keys::TRENDYOL_INTEGRATOR,
    keys::TRENDYOL_WRITES_PER_MINUTE,
    keys::TRENDYOL_READS_PER_MINUTE,
    keys::FORBIDDEN_BACKOFF,
    keys::MAX_RETRY_AFTER,
    keys::HEPSIBURADA_BATCH_SIZE,
    keys::REQUEST_TIMEOUT,
    keys::MAX_ATTEMPTS,
    keys::STREAMING,
    keys::HEARTBEAT_INTERVAL,
    keys::SAFE_WAL_SIZE_WARN,
    keys::RECONCILE_INTERVAL,
    keys::RECONCILE_FIX,
    keys::RECONCILE_CONFIRM_AFTER,
    keys::RECONCILE_READ_SHARE,
    keys::HEPSIBURADA_READS_PER_MINUTE,
    keys::HEPSIBURADA_PAGE_LIMIT,
];

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
