//! Database connection settings shared by every stage: the libpq-style URL, TLS, the
//! authentication policy, the query pools (deadpool-postgres) and dedicated connections, and
//! what a database error means for a retry loop ([`is_permanent_sqlstate`]).
//!
//! The URL is parsed here rather than by tokio-postgres because tokio-postgres does not know
//! `verify-ca`/`verify-full`, `sslrootcert` or `require_auth`, and the replication connection
//! (written on postgres-protocol) must use the very same values: both connections are built
//! from one [`DbConfig`], so they cannot disagree about TLS or authentication. Query
//! connections open their socket here and hand it to tokio-postgres (`connect_raw`) inside an
//! [`auth::AuthGuard`], which enforces `require_auth`; TLS is [`tls`]'s. Parameters stocksync
//! does not honour are refused, never silently ignored. Passwords never leave this module in
//! printable form: use [`DbConfig::redacted_url`] for messages.

pub mod auth;
pub mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::{ChannelBinding as PgChannelBinding, SslMode as PgSslMode};

pub use auth::{AuthError, AuthMethod, ChannelBinding, RequireAuth};
pub use tls::Roots;

/// The connection parameters stocksync honours (the README's TLS section lists them too).
pub const HONOURED_PARAMETERS: &str = "host, port, dbname, user, password, sslmode, sslrootcert, \
sslsni, ssl_min_protocol_version, ssl_max_protocol_version, channel_binding, require_auth, \
application_name, connect_timeout";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid postgres:// URL: {0}")]
    InvalidUrl(String),
    /// Says nothing of the URL: any part of it may be part of the password.
    #[error("DATABASE_URL's password seems to hold an unescaped '/', '?' or '#', which ends the host part of a URL: percent-encode them in the password (%2F, %3F, %23; '%' itself as %25)")]
    UnescapedPassword,
    #[error("DATABASE_URL has an unsupported sslmode {0:?} (use disable, prefer, require, verify-ca or verify-full)")]
    InvalidSslMode(String),
    #[error("DATABASE_URL parameter {name}={value:?} is invalid: {expected}")]
    InvalidParameter {
        name: String,
        value: String,
        expected: &'static str,
    },
    #[error("DATABASE_URL parameter {0:?} is not supported by stocksync, which honours {HONOURED_PARAMETERS}; remove it")]
    UnsupportedParameter(String),
    #[error("DATABASE_URL: {0}")]
    RequireAuth(#[from] auth::RequireAuthError),
    #[error("sslmode={0} needs a certificate authority to check the server against: set sslrootcert=/path/to/ca.pem in DATABASE_URL (then only that CA is trusted) or sslrootcert=system (the system's CAs), or put the CA at ~/.postgresql/root.crt")]
    NoTrustAnchor(&'static str),
    #[error("sslrootcert=system needs sslmode=verify-full (DATABASE_URL has sslmode={0}): any publicly trusted certificate would pass a weaker check")]
    WeakSslModeForSystemRoots(&'static str),
    #[error("channel_binding=require needs TLS, but DATABASE_URL connects {0}")]
    ChannelBindingWithoutTls(&'static str),
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
    #[error("cannot connect to PostgreSQL at {url}: {}", describe(.source))]
    Connect {
        url: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("cannot connect to PostgreSQL at {url}: no answer within {after:?} (connect_timeout)")]
    Timeout { url: String, after: Duration },
}

impl DbError {
    /// The server's SQLSTATE, if the server refused.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            DbError::Connect { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }

    /// The authentication policy the server's requests broke, if that is what happened.
    pub fn auth_error(&self) -> Option<&AuthError> {
        match self {
            DbError::Connect { source, .. } => auth::auth_error_in(source),
            _ => None,
        }
    }

    /// A person must change something (configuration, certificates, grants) before a retry
    /// can succeed. Everything else — network, server restarts, timeouts — is worth retrying.
    pub fn is_permanent(&self) -> bool {
        match self {
            DbError::Connect { source, .. } => {
                // A TLS failure is retried: native-tls does not say whether it was the
                // certificate or the network.
                source
                    .code()
                    .is_some_and(|c| is_permanent_sqlstate(c.code()))
                    || auth::auth_error_in(source).is_some()
            }
            DbError::Pool(_) | DbError::Timeout { .. } => false,
            _ => true,
        }
    }
}

/// SQLSTATEs no retry can fix: class 28 (authentication: wrong password, no `pg_hba.conf`
/// entry), 42501 (insufficient privilege), 42P01 (undefined table), 3D000 (no such database).
/// Classes 08 (connection), 40 (rollback: deadlock, serialization), 53 (insufficient
/// resources), 57P (operator intervention: shutdown, crash, not yet accepting) and all others
/// are retried.
pub fn is_permanent_sqlstate(code: &str) -> bool {
    code.starts_with("28") || matches!(code, "42501" | "42P01" | "3D000")
}

/// What to do about a permanent SQLSTATE, for the one sentence `run` stops with.
pub fn permanent_fix(code: &str) -> &'static str {
    match code {
        c if c.starts_with("28") => {
            "check the user and password in DATABASE_URL and the server's pg_hba.conf"
        }
        "42501" => "grant the role the privileges listed in the README (least-privilege role)",
        "42P01" => "a table stocksync needs is missing: check the application schema and run `stocksync setup`",
        "3D000" => "the database named in DATABASE_URL does not exist",
        _ => "fix the configuration",
    }
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

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
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

/// Where and how to connect: one parsed URL for the pools and the replication connection.
#[derive(Clone)]
pub struct DbConfig {
    /// Host name, IP address, or a directory holding the Unix socket (starts with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub sslmode: SslMode,
    /// Trust anchors of the server's certificate (`sslrootcert`).
    pub roots: Roots,
    pub sslsni: bool,
    pub ssl_min_protocol: native_tls::Protocol,
    pub ssl_max_protocol: Option<native_tls::Protocol>,
    pub channel_binding: ChannelBinding,
    pub require_auth: RequireAuth,
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

/// A query pool's size and limits.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub max_size: usize,
    /// `statement_timeout` of its sessions (none: no timeout, whatever the server's or the
    /// role's default).
    pub statement_timeout: Option<Duration>,
    /// How long a caller waits for a free connection.
    pub wait_timeout: Duration,
}

impl PoolSettings {
    pub fn new(max_size: usize) -> PoolSettings {
        PoolSettings {
            max_size,
            statement_timeout: None,
            wait_timeout: Duration::from_secs(30),
        }
    }
}

impl DbConfig {
    /// Parses `postgres://user:password@host:port/dbname?sslmode=..&sslrootcert=..`.
    /// A missing user defaults to `postgres`, a missing database to the user name. Every
    /// problem is reported without the password.
    pub fn from_url(text: &str) -> Result<DbConfig, DbError> {
        if password_unescaped(text) {
            return Err(DbError::UnescapedPassword);
        }
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
        let invalid = |name: &str, value: &str, expected: &'static str| DbError::InvalidParameter {
            name: name.to_string(),
            value: value.to_string(),
            expected,
        };
        let mut sslmode = None;
        let mut sslrootcert = None;
        let mut sslsni = true;
        let mut ssl_min_protocol = native_tls::Protocol::Tlsv12;
        let mut ssl_max_protocol = None;
        let mut channel_binding = ChannelBinding::Prefer;
        let mut require_auth = RequireAuth::default();
        let mut application_name = "stocksync".to_string();
        let mut connect_timeout = Duration::from_secs(10);
        for (key, value) in url.query_pairs() {
            let value = value.as_ref();
            match key.as_ref() {
                "sslmode" => sslmode = Some(value.parse::<SslMode>()?),
                "sslrootcert" => sslrootcert = Some(value.to_string()),
                "sslsni" => {
                    sslsni = match value {
                        "1" => true,
                        "0" => false,
                        _ => return Err(invalid("sslsni", value, "use 0 or 1")),
                    }
                }
                "ssl_min_protocol_version" => {
                    ssl_min_protocol = tls::parse_protocol(value).ok_or_else(|| {
                        invalid(
                            "ssl_min_protocol_version",
                            value,
                            "use TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3",
                        )
                    })?
                }
                "ssl_max_protocol_version" => {
                    ssl_max_protocol = Some(tls::parse_protocol(value).ok_or_else(|| {
                        invalid(
                            "ssl_max_protocol_version",
                            value,
                            "use TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3",
                        )
                    })?)
                }
                "channel_binding" => {
                    channel_binding = match value {
                        "disable" => ChannelBinding::Disable,
                        "prefer" => ChannelBinding::Prefer,
                        "require" => ChannelBinding::Require,
                        _ => {
                            return Err(invalid(
                                "channel_binding",
                                value,
                                "use disable, prefer or require",
                            ))
                        }
                    }
                }
                "require_auth" => require_auth = RequireAuth::parse(value)?,
                "host" => host = value.to_string(),
                "port" => {
                    port = value
                        .parse()
                        .map_err(|_| invalid("port", value, "a port number"))?
                }
                "dbname" => dbname = value.to_string(),
                "user" | "password" => {
                    // In the query they would bypass the decoding rules above; libpq allows
                    // it, stocksync keeps one place for credentials.
                    return Err(DbError::InvalidUrl(format!(
                        "give the {key} before the host (postgres://user:password@host/db), not as a parameter"
                    )));
                }
                "application_name" => application_name = value.to_string(),
                "connect_timeout" => {
                    let secs: u64 = value
                        .parse()
                        .map_err(|_| invalid("connect_timeout", value, "a number of seconds"))?;
                    connect_timeout = Duration::from_secs(secs.max(2));
                }
                other => return Err(DbError::UnsupportedParameter(other.to_string())),
            }
        }
        if host.is_empty() {
            host = "localhost".into();
        }
        if host.contains(',') {
            return Err(DbError::InvalidUrl(
                "several hosts are not supported: give one host".into(),
            ));
        }
        let roots = match sslrootcert.as_deref() {
            Some("system") => Roots::System,
            Some(path) => Roots::File(PathBuf::from(path)),
            None => tls::default_root_file().map_or(Roots::None, Roots::File),
        };
        // libpq 16: sslrootcert=system defaults to verify-full and refuses weaker modes.
        let sslmode = match (sslmode, &roots) {
            (None, Roots::System) => SslMode::VerifyFull,
            (Some(mode), Roots::System) if mode != SslMode::VerifyFull => {
                return Err(DbError::WeakSslModeForSystemRoots(mode.as_str()))
            }
            (mode, _) => mode.unwrap_or(SslMode::Prefer),
        };
        if matches!(sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && roots == Roots::None {
            return Err(DbError::NoTrustAnchor(sslmode.as_str()));
        }
        if channel_binding == ChannelBinding::Require {
            if sslmode == SslMode::Disable {
                return Err(DbError::ChannelBindingWithoutTls("with sslmode=disable"));
            }
            if host.starts_with('/') {
                return Err(DbError::ChannelBindingWithoutTls("over a Unix socket"));
            }
        }
        Ok(DbConfig {
            host,
            port,
            user,
            password,
            dbname,
            sslmode,
            roots,
            sslsni,
            ssl_min_protocol,
            ssl_max_protocol,
            channel_binding,
            require_auth,
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

    /// The TLS connector for this configuration, or `None` for `disable` and Unix sockets.
    /// Call it only once the server has accepted TLS: the first call may load the system
    /// trust store.
    pub fn tls_connector(&self) -> Result<Option<native_tls::TlsConnector>, DbError> {
        if self.sslmode == SslMode::Disable || self.is_unix_socket() {
            return Ok(None);
        }
        if let Some(connector) = self.tls_cache.get() {
            return Ok(Some(connector.clone()));
        }
        let connector = tls::build(self)?;
        Ok(Some(self.tls_cache.get_or_init(|| connector).clone()))
    }

    /// Whether TLS is mandatory (no fallback to plain text).
    pub fn tls_required(&self) -> bool {
        matches!(
            self.sslmode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    /// Opens the socket (TCP with keepalives and no delay, or the Unix socket), unencrypted.
    pub async fn open_socket(&self) -> std::io::Result<Socket> {
        if self.is_unix_socket() {
            let path = format!("{}/.s.PGSQL.{}", self.host, self.port);
            return Ok(Socket(Box::new(UnixStream::connect(path).await?)));
        }
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        socket2::SockRef::from(&tcp)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(30)))?;
        Ok(Socket(Box::new(tcp)))
    }

    /// Settings for tokio-postgres (query connections): the fields `connect_raw` reads.
    fn pg_config(&self, statement_timeout: Option<Duration>) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        // stocksync's statements are short and run with array parameters the planner
        // cannot size; JIT compilation (hundreds of ms when estimates are off, e.g. on
        // tables without statistics yet) would dwarf their run time.
        let mut options = "-c jit=off".to_string();
        // A DBA's default `statement_timeout` or `idle_in_transaction_session_timeout` (for
        // the database or the role, often set with the application in mind) would cut
        // capture's large moves or its batch transaction, which stays open while the stream
        // delivers: every session says what it can live with (none, unless its pool sets one).
        let statement_ms = statement_timeout.map_or(0, |t| t.as_millis().max(1));
        options.push_str(&format!(
            " -c statement_timeout={statement_ms} -c idle_in_transaction_session_timeout=0"
        ));
        config
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            .options(&options)
            .ssl_mode(match self.sslmode {
                _ if self.is_unix_socket() => PgSslMode::Disable,
                SslMode::Disable => PgSslMode::Disable,
                SslMode::Prefer => PgSslMode::Prefer,
                _ => PgSslMode::Require,
            })
            .channel_binding(match self.channel_binding {
                ChannelBinding::Disable => PgChannelBinding::Disable,
                ChannelBinding::Prefer => PgChannelBinding::Prefer,
                ChannelBinding::Require => PgChannelBinding::Require,
            });
        if let Some(password) = &self.password {
            config.password(password);
        }
        config
    }

    /// A pool of query connections.
    pub fn pool(&self, max_size: usize) -> Result<Pool, DbError> {
        self.pool_with(PoolSettings::new(max_size))
    }

    /// A pool of query connections with its own limits.
    pub fn pool_with(&self, settings: PoolSettings) -> Result<Pool, DbError> {
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = Manager::from_connect(
            self.pg_config(settings.statement_timeout),
            PoolConnect(self.clone()),
            manager_config,
        );
        Pool::builder(manager)
            .max_size(settings.max_size)
            .wait_timeout(Some(settings.wait_timeout))
            .create_timeout(Some(self.connect_timeout))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| DbError::Pool(e.to_string()))
    }

    /// One dedicated query connection (its driver task is spawned on the current runtime).
    pub async fn connect(&self) -> Result<tokio_postgres::Client, DbError> {
        let url = self.redacted_url();
        let pg_config = self.pg_config(None);
        let connecting = self.connect_raw(&pg_config);
        let (client, _task) = tokio::time::timeout(self.connect_timeout, connecting)
            .await
            .map_err(|_| DbError::Timeout {
                url: url.clone(),
                after: self.connect_timeout,
            })?
            .map_err(|source| DbError::Connect { url, source })?;
        Ok(client)
    }

    /// Socket, TLS and authentication for a query connection; spawns its driver.
    async fn connect_raw(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        let socket = auth::AuthGuard::raw(LazySocket::new(self.clone()), self.require_auth.clone());
        let tls = tls::PgTls {
            config: self.clone(),
        };
        let (client, connection) = pg_config.connect_raw(socket, tls).await?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "database connection closed");
            }
        });
        Ok((client, task))
    }
}

/// deadpool's way to open a connection: the same path as [`DbConfig::connect`].
struct PoolConnect(DbConfig);

impl deadpool_postgres::Connect for PoolConnect {
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> Pin<
        Box<
            dyn Future<
                    Output = Result<
                        (tokio_postgres::Client, tokio::task::JoinHandle<()>),
                        tokio_postgres::Error,
                    >,
                > + Send
                + '_,
        >,
    > {
        let pg_config = pg_config.clone();
        Box::pin(async move { self.0.connect_raw(&pg_config).await })
    }
}

trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// A connected socket, TCP or Unix, or a TLS stream over one.
pub struct Socket(Box<dyn Transport>);

impl Socket {
    pub fn boxed(transport: impl AsyncRead + AsyncWrite + Unpin + Send + 'static) -> Socket {
        Socket(Box::new(transport))
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<Socket>> + Send>>;

/// A socket that connects on first use, so that tokio-postgres (which cannot be handed an
/// error of ours) reports a refused connection as its own I/O error, and deadpool can open
/// connections through `connect_raw`.
struct LazySocket {
    state: LazyState,
}

enum LazyState {
    Connecting(Connecting),
    Ready(Socket),
}

impl LazySocket {
    fn new(config: DbConfig) -> LazySocket {
        LazySocket {
            state: LazyState::Connecting(Box::pin(async move { config.open_socket().await })),
        }
    }

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<&mut Socket>> {
        if let LazyState::Connecting(connecting) = &mut self.state {
            let socket = std::task::ready!(connecting.as_mut().poll(cx))?;
            self.state = LazyState::Ready(socket);
        }
        match &mut self.state {
            LazyState::Ready(socket) => Poll::Ready(Ok(socket)),
            LazyState::Connecting(_) => unreachable!("connected above"),
        }
    }
}

impl AsyncRead for LazySocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let socket = std::task::ready!(self.poll_ready(cx))?;
        Pin::new(socket).poll_read(cx, buf)
    }
}

impl AsyncWrite for LazySocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let socket = std::task::ready!(self.poll_ready(cx))?;
        Pin::new(socket).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let socket = std::task::ready!(self.poll_ready(cx))?;
        Pin::new(socket).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.state {
            LazyState::Ready(socket) => Pin::new(socket).poll_shutdown(cx),
            LazyState::Connecting(_) => Poll::Ready(Ok(())),
        }
    }
}

/// Percent-decoding of URL parts (a `%` not followed by two hex digits stays as it is); the
/// result must be UTF-8.
/// Whether `text` looks like `scheme://user:pass/word@host...`: a password holding `/`, `?`
/// or `#` unescaped, which a URL parser splits into a host, a port and a path (so the
/// password would be cut, and its rest taken for a database name or a parameter). The
/// authority ends at the first of those characters; it is a password's doing when an `@`
/// follows, and either the authority's "port" is not a number or what lies between the end
/// and that `@` is no query parameter (no `=`; an `@` in a parameter value stays allowed).
fn password_unescaped(text: &str) -> bool {
    let Some((_, rest)) = text.split_once("://") else {
        return false;
    };
    let Some(end) = rest.find(['/', '?', '#']) else {
        return false;
    };
    let (authority, after) = rest.split_at(end);
    if authority.contains('@') {
        return false;
    }
    let Some((_, port)) = authority.split_once(':') else {
        return false;
    };
    let Some(at) = after.find('@') else {
        return false;
    };
    let numeric_port = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
    !numeric_port || !after[..at].contains('=')
}

fn percent_decode(s: &str) -> Result<String, std::str::Utf8Error> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
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
        assert_eq!(c.roots, Roots::File(PathBuf::from("/etc/ca.pem")));
        assert!(!c.redacted_url().contains("p@ss"));
        assert!(!format!("{c:?}").contains("p@ss"));
    }

    #[test]
    fn a_password_with_an_unescaped_slash_question_mark_or_hash_is_refused_unquoted() {
        for url in [
            "postgres://svc:pq7/ssw0rd@db.example:5432/shop",
            "postgres://svc:pq7?ssw0rd@db.example/shop",
            "postgres://svc:pq7#ssw0rd@db.example/shop",
            "postgres://svc:1234/ssw0rd@db.example/shop",
            "postgresql://svc:1234?ssw0rd@db.example/shop?sslmode=require",
        ] {
            let err = DbConfig::from_url(url).unwrap_err();
            assert!(matches!(err, DbError::UnescapedPassword), "{url}: {err:?}");
            let text = err.to_string();
            assert!(text.contains("percent-encode"), "{text}");
            for part in ["svc", "pq7", "ssw0rd", "1234", "db.example", "shop"] {
                assert!(!text.contains(part), "{part:?} in {text}");
            }
        }
        // An escaped one, and an `@` in a parameter value, are fine.
        let ok = DbConfig::from_url("postgres://svc:pa%2Fss%3Fw%23@db.example/shop").unwrap();
        assert_eq!(ok.password.as_deref(), Some("pa/ss?w#"));
        let ok =
            DbConfig::from_url("postgres://db.example:5432/shop?application_name=a@b").unwrap();
        assert_eq!((ok.host.as_str(), ok.port), ("db.example", 5432));
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
    fn trust_anchors_and_auth_parameters_as_libpq() {
        let parse = |q: &str| DbConfig::from_url(&format!("postgres://u:secret@h/db?{q}"));
        // verify-* without any anchor: one sentence saying what to set (HOME has no root.crt
        // in the test environment unless someone put one there).
        if tls::default_root_file().is_none() {
            let err = parse("sslmode=verify-full").unwrap_err().to_string();
            assert!(
                err.contains("sslrootcert=") && err.contains("system"),
                "{err}"
            );
            assert!(matches!(
                parse("sslmode=verify-ca"),
                Err(DbError::NoTrustAnchor(_))
            ));
        }
        let system = parse("sslrootcert=system").unwrap();
        assert_eq!(
            (system.sslmode, system.roots),
            (SslMode::VerifyFull, Roots::System)
        );
        assert!(matches!(
            parse("sslrootcert=system&sslmode=require"),
            Err(DbError::WeakSslModeForSystemRoots("require"))
        ));
        let c = parse("channel_binding=require&require_auth=!password,!md5").unwrap();
        assert_eq!(c.channel_binding, ChannelBinding::Require);
        assert!(!c.require_auth.allows(AuthMethod::Md5));
        assert!(c.require_auth.allows(AuthMethod::ScramSha256));
        assert_eq!(parse("").unwrap().channel_binding, ChannelBinding::Prefer);
        assert!(matches!(
            parse("channel_binding=require&sslmode=disable"),
            Err(DbError::ChannelBindingWithoutTls(_))
        ));
        assert!(matches!(
            parse("require_auth=md5,!none"),
            Err(DbError::RequireAuth(_))
        ));
        for unsupported in [
            "sslcert=/c.pem",
            "target_session_attrs=read-write",
            "passfile=/p",
        ] {
            let err = parse(unsupported).unwrap_err();
            assert!(
                matches!(err, DbError::UnsupportedParameter(_)),
                "{unsupported}: {err}"
            );
            assert!(!err.to_string().contains("secret"));
        }
    }

    #[test]
    fn identifiers() {
        assert!(validate_identifier("slot", "stock_sync").is_ok());
        assert!(validate_identifier("slot", "Stock").is_err());
        assert!(validate_identifier("slot", "a; drop").is_err());
        assert!(validate_identifier("slot", "").is_err());
    }
}
