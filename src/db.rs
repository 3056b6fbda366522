//! Database connection settings shared by every stage: the libpq-style URL, TLS (`sslmode`),
//! the query pool (deadpool-postgres) and dedicated connections.
//!
//! The URL is parsed here rather than by tokio-postgres because tokio-postgres does not know
//! `verify-ca`/`verify-full`, and the replication connection (written on postgres-protocol)
//! needs the same values. Passwords never leave this module in printable form: use
//! [`DbConfig::redacted_url`] for messages.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid postgres:// URL: {0}")]
    InvalidUrl(String),
    #[error("DATABASE_URL has an unsupported sslmode {0:?} (use disable, prefer, require, verify-ca or verify-full)")]
    InvalidSslMode(String),
    #[error("cannot read sslrootcert {path}: {source}")]
    RootCert {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(#[from] native_tls::Error),
    #[error("cannot build the connection pool: {0}")]
    Pool(String),
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// libpq `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = DbError;
    fn from_str(s: &str) -> Result<Self, DbError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => return Err(DbError::InvalidSslMode(other.to_string())),
        })
    }
}

/// Where and how to connect.
#[derive(Clone)]
pub struct DbConfig {
    /// Host name, IP address, or a directory holding the Unix socket (starts with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub application_name: String,
    pub connect_timeout: Duration,
    /// Built once, on first use: loading the system trust store costs tens of milliseconds.
    tls_cache: Arc<OnceLock<native_tls::TlsConnector>>,
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted_url())
    }
}

impl DbConfig {
    /// Parses `postgres://user:password@host:port/dbname?sslmode=..&sslrootcert=..`.
    /// A missing user defaults to `postgres`, a missing database to the user name.
    pub fn from_url(text: &str) -> Result<DbConfig, DbError> {
        let url = match url::Url::parse(text) {
            // `postgres://user@/db?host=/run/postgresql` (a socket directory in the query) is
            // valid libpq but has an empty authority host; parse it with a placeholder that
            // the `host` parameter then replaces.
            Err(url::ParseError::EmptyHost) if text.contains("@/") => {
                url::Url::parse(&text.replacen("@/", "@localhost/", 1))
            }
            other => other,
        }
        .map_err(|e| DbError::InvalidUrl(e.to_string()))?;
        if url.scheme() != "postgres" && url.scheme() != "postgresql" {
            return Err(DbError::InvalidUrl(format!(
                "scheme must be postgres:// or postgresql://, not {}://",
                url.scheme()
            )));
        }
        let decode = |s: &str| {
            percent_decode(s).map_err(|_| DbError::InvalidUrl("bad percent-encoding".into()))
        };
        let user = if url.username().is_empty() {
            "postgres".to_string()
        } else {
            decode(url.username())?
        };
        let password = url.password().map(decode).transpose()?;
        let mut host = url
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .unwrap_or_default();
        let mut port = url.port().unwrap_or(5432);
        let path = url.path().trim_start_matches('/');
        let mut dbname = if path.is_empty() {
            user.clone()
        } else {
            decode(path)?
        };
        let mut sslmode = SslMode::Prefer;
        let mut sslrootcert = None;
        let mut application_name = "stocksync".to_string();
        let mut connect_timeout = Duration::from_secs(10);
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "sslmode" => sslmode = value.parse()?,
                "sslrootcert" => sslrootcert = Some(PathBuf::from(value.as_ref())),
                "host" => host = value.into_owned(),
                "port" => {
                    port = value.parse().map_err(|_| {
                        DbError::InvalidUrl(format!("port {value:?} is not a number"))
                    })?
                }
                "dbname" => dbname = value.into_owned(),
                "application_name" => application_name = value.into_owned(),
                "connect_timeout" => {
                    let secs: u64 = value.parse().map_err(|_| {
                        DbError::InvalidUrl(format!("connect_timeout {value:?} is not a number"))
                    })?;
                    connect_timeout = Duration::from_secs(secs.max(1));
                }
                // Other libpq parameters (options, target_session_attrs, ...) do not apply.
                _ => {}
            }
        }
        if host.is_empty() {
            host = "localhost".into();
        }
        Ok(DbConfig {
            host,
            port,
            user,
            password,
            dbname,
            sslmode,
            sslrootcert,
            application_name,
            connect_timeout,
            tls_cache: Arc::default(),
        })
    }

    /// The URL with the password replaced by `***`, for logs and error messages.
    pub fn redacted_url(&self) -> String {
        let password = if self.password.is_some() { ":***" } else { "" };
        format!(
            "postgres://{}{}@{}:{}/{}",
            self.user, password, self.host, self.port, self.dbname
        )
    }

    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// The TLS connector for this sslmode, or `None` for `disable`. Call it only once the
    /// server has accepted TLS: the first call loads the system trust store.
    pub fn tls_connector(&self) -> Result<Option<native_tls::TlsConnector>, DbError> {
        if self.sslmode == SslMode::Disable || self.is_unix_socket() {
            return Ok(None);
        }
        if let Some(connector) = self.tls_cache.get() {
            return Ok(Some(connector.clone()));
        }
        let mut builder = native_tls::TlsConnector::builder();
        match self.sslmode {
            // libpq's require/prefer encrypt without checking who answers.
            SslMode::Prefer | SslMode::Require => {
                builder.danger_accept_invalid_certs(true);
                builder.danger_accept_invalid_hostnames(true);
            }
            SslMode::VerifyCa => {
                builder.danger_accept_invalid_hostnames(true);
            }
            SslMode::VerifyFull | SslMode::Disable => {}
        }
        if let Some(path) = &self.sslrootcert {
            let pem = std::fs::read(path).map_err(|source| DbError::RootCert {
                path: path.display().to_string(),
                source,
            })?;
            builder.add_root_certificate(native_tls::Certificate::from_pem(&pem)?);
        }
        let connector = builder.build()?;
        Ok(Some(self.tls_cache.get_or_init(|| connector).clone()))
    }

    /// Whether TLS is mandatory (no fallback to plain text).
    pub fn tls_required(&self) -> bool {
        matches!(
            self.sslmode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    /// Settings for tokio-postgres (normal, non-replication connections).
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        if self.is_unix_socket() {
            config.host_path(&self.host);
        } else {
            config.host(&self.host);
        }
        config
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            // stocksync's statements are short and run with array parameters the planner
            // cannot size; JIT compilation (hundreds of ms when estimates are off, e.g. on
            // tables without statistics yet) would dwarf their run time.
            .options("-c jit=off")
            .ssl_mode(match self.sslmode {
                SslMode::Disable => PgSslMode::Disable,
                SslMode::Prefer => PgSslMode::Prefer,
                _ => PgSslMode::Require,
            });
        if let Some(password) = &self.password {
            config.password(password);
        }
        config
    }

    /// A pool of normal connections.
    pub fn pool(&self, max_size: usize) -> Result<Pool, DbError> {
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = Manager::from_config(self.pg_config(), self.lazy_tls(), manager_config);
        Pool::builder(manager)
            .max_size(max_size)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(self.connect_timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| DbError::Pool(e.to_string()))
    }

    /// One dedicated connection (its driver task is spawned on the current runtime).
    pub async fn connect(&self) -> Result<tokio_postgres::Client, DbError> {
        let err = |source| DbError::Connect {
            url: self.redacted_url(),
            source,
        };
        let (client, connection) = self
            .pg_config()
            .connect(self.lazy_tls())
            .await
            .map_err(err)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "database connection closed");
            }
        });
        Ok(client)
    }

    /// TLS for tokio-postgres, set up only when a server accepts it (see [`LazyTls`]).
    fn lazy_tls(&self) -> LazyTls {
        LazyTls(self.clone())
    }
}

/// TLS for tokio-postgres connections whose connector is built on first use. tokio-postgres
/// asks for it only after the server answered the SSLRequest with yes, so with
/// `sslmode=prefer` against a server without TLS (and with `disable`) the system trust
/// store — tens of milliseconds of CPU — is never loaded. Built once per [`DbConfig`].
#[derive(Clone)]
pub struct LazyTls(DbConfig);

/// The per-connection half of [`LazyTls`].
pub struct LazyTlsConnect {
    config: DbConfig,
    domain: String,
}

type TlsBoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S> MakeTlsConnect<S> for LazyTls
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = postgres_native_tls::TlsStream<S>;
    type TlsConnect = LazyTlsConnect;
    type Error = TlsBoxError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<LazyTlsConnect, TlsBoxError> {
        Ok(LazyTlsConnect {
            config: self.0.clone(),
            domain: domain.to_string(),
        })
    }
}

impl<S> TlsConnect<S> for LazyTlsConnect
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = postgres_native_tls::TlsStream<S>;
    type Error = TlsBoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Stream, TlsBoxError>> + Send>,
    >;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = self
                .config
                .tls_connector()?
                .ok_or("TLS requested with sslmode=disable")?;
            let tls = postgres_native_tls::TlsConnector::new(connector, &self.domain);
            Ok(TlsConnect::connect(tls, stream).await?)
        })
    }
}

fn percent_decode(s: &str) -> Result<String, ()> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or(())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

/// Validates a slot or publication name so it can be written into SQL and replication
/// commands as an identifier (PostgreSQL's own rule for slot names, applied to both).
pub fn validate_identifier(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{kind} name {name:?} is invalid: use 1 to 63 lower-case letters, digits and underscores"
        ))
    }
}

/// A database error as operators should see it: the server's message with its detail, hint,
/// SQLSTATE and context (`tokio_postgres::Error`'s own `Display` says only "db error").
pub fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_string();
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(hint) = db.hint() {
                text.push_str(&format!(" Hint: {hint}"));
            }
            text.push_str(&format!(" [SQLSTATE {}", db.code().code()));
            if let Some(where_) = db.where_() {
                text.push_str(&format!("; {where_}"));
            }
            text.push(']');
            text
        }
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_url_with_tls_and_escapes() {
        let c = DbConfig::from_url(
            "postgres://svc%40shop:p%40ss@db.example:6432/shop?sslmode=verify-full&sslrootcert=/etc/ca.pem",
        )
        .unwrap();
        assert_eq!(c.user, "svc@shop");
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!(c.host, "db.example");
        assert_eq!(c.port, 6432);
        assert_eq!(c.dbname, "shop");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
        assert!(!c.redacted_url().contains("p@ss"));
        assert!(!format!("{c:?}").contains("p@ss"));
    }

    #[test]
    fn defaults_and_errors() {
        let c = DbConfig::from_url("postgres://localhost").unwrap();
        assert_eq!(
            (c.user.as_str(), c.dbname.as_str(), c.port),
            ("postgres", "postgres", 5432)
        );
        assert_eq!(c.sslmode, SslMode::Prefer);
        assert!(matches!(
            DbConfig::from_url("postgres://h/db?sslmode=sometimes"),
            Err(DbError::InvalidSslMode(_))
        ));
        assert!(DbConfig::from_url("mysql://h/db").is_err());
        let unix = DbConfig::from_url("postgres://u@/db?host=/var/run/postgresql").unwrap();
        assert!(unix.is_unix_socket());
    }

    #[test]
    fn identifiers() {
        assert!(validate_identifier("slot", "stock_sync").is_ok());
        assert!(validate_identifier("slot", "Stock").is_err());
        assert!(validate_identifier("slot", "a; drop").is_err());
        assert!(validate_identifier("slot", "").is_err());
    }
}
