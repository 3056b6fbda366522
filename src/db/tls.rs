//! TLS for both connections, as libpq does it: which certificates are trusted
//! (`sslrootcert`), what is checked (`sslmode`), SNI (`sslsni`) and protocol versions
//! (`ssl_min_protocol_version`, `ssl_max_protocol_version`).
//!
//! Trust anchors: `sslrootcert=PATH` is the *only* anchor (the system store is not loaded);
//! `sslrootcert=system` is the system store (and then `sslmode` must be `verify-full`, as in
//! libpq 16); without `sslrootcert`, `~/.postgresql/root.crt` when it exists. `verify-ca` and
//! `verify-full` without any anchor are refused when the URL is read. As in libpq, `prefer` and
//! `require` check the chain too when an anchor file is given or present (libpq's
//! compatibility rule), and otherwise encrypt without checking who answers.

use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{ChannelBinding, TlsConnect};

use super::auth::AuthGuard;
use super::{DbConfig, DbError, SslMode};

/// Where trusted certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// `sslrootcert=PATH`, or `~/.postgresql/root.crt` when present: only these.
    File(PathBuf),
    /// `sslrootcert=system`: the system store (`SSL_CERT_FILE`/`SSL_CERT_DIR` apply).
    System,
    /// Nothing trusted: only for `disable`, `prefer` and `require`, which then check nothing.
    None,
}

/// TLS protocol versions, as libpq spells them.
pub fn parse_protocol(text: &str) -> Option<native_tls::Protocol> {
    Some(match text {
        "TLSv1" => native_tls::Protocol::Tlsv10,
        "TLSv1.1" => native_tls::Protocol::Tlsv11,
        "TLSv1.2" => native_tls::Protocol::Tlsv12,
        "TLSv1.3" => native_tls::Protocol::Tlsv13,
        _ => return None,
    })
}

/// libpq's default trust anchor file, `~/.postgresql/root.crt`, if it exists.
pub fn default_root_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let path = PathBuf::from(home).join(".postgresql").join("root.crt");
    path.is_file().then_some(path)
}

/// What the handshake checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndHost,
}

fn check_of(config: &DbConfig) -> Check {
    match (config.sslmode, &config.roots) {
        (SslMode::VerifyFull, _) => Check::ChainAndHost,
        (SslMode::VerifyCa, _) => Check::Chain,
        (_, Roots::File(_)) => Check::Chain,
        _ => Check::Nothing,
    }
}

/// Builds the connector for `config` (called once per [`DbConfig`], when a server first
/// accepts TLS).
pub(super) fn build(config: &DbConfig) -> Result<native_tls::TlsConnector, DbError> {
    let mut builder = native_tls::TlsConnector::builder();
    builder
        .use_sni(config.sslsni)
        .min_protocol_version(Some(config.ssl_min_protocol))
        .max_protocol_version(config.ssl_max_protocol);
    match check_of(config) {
        Check::Nothing => {
            builder.danger_accept_invalid_certs(true);
            builder.danger_accept_invalid_hostnames(true);
        }
        Check::Chain => {
            builder.danger_accept_invalid_hostnames(true);
        }
        Check::ChainAndHost => {}
    }
    match &config.roots {
        Roots::System => {}
        Roots::None => {
            builder.disable_built_in_roots(true);
        }
        Roots::File(path) => {
            builder.disable_built_in_roots(true);
            let pem = std::fs::read(path).map_err(|source| DbError::RootCert {
                path: path.display().to_string(),
                source,
            })?;
            let mut any = false;
            for block in pem_certificates(&pem) {
                builder.add_root_certificate(native_tls::Certificate::from_pem(block)?);
                any = true;
            }
            if !any {
                return Err(DbError::RootCert {
                    path: path.display().to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "no PEM certificate in the file",
                    ),
                });
            }
        }
    }
    Ok(builder.build()?)
}

/// Each `-----BEGIN CERTIFICATE-----` block of a PEM bundle (a CA file often holds several).
fn pem_certificates(pem: &[u8]) -> Vec<&[u8]> {
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|i| i + from)
    };
    let mut blocks = Vec::new();
    let mut at = 0;
    while let Some(start) = find(pem, BEGIN, at) {
        let Some(end) = find(pem, END, start) else {
            break;
        };
        blocks.push(&pem[start..end + END.len()]);
        at = end + END.len();
    }
    blocks
}

/// TLS for tokio-postgres connections. The connector is built on first use (tokio-postgres
/// asks only after the server accepted the SSLRequest), and the TLS stream is wrapped in an
/// [`AuthGuard`] so `require_auth` is checked on the plaintext inside it.
pub struct PgTls {
    pub(super) config: DbConfig,
}

/// A TLS stream of a query connection.
pub type PgTlsStream<S> = AuthGuard<postgres_native_tls::TlsStream<S>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S> TlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Stream, BoxError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let connector = self
                .config
                .tls_connector()?
                .ok_or("TLS requested with sslmode=disable")?;
            let tls = postgres_native_tls::TlsConnector::new(connector, &self.config.host);
            let stream = TlsConnect::connect(tls, stream).await?;
            Ok(AuthGuard::inside_tls(
                stream,
                self.config.require_auth.clone(),
            ))
        })
    }
}

impl<S> tokio_postgres::tls::TlsStream for AuthGuard<postgres_native_tls::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        self.get_ref().channel_binding()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_pem_bundles() {
        let one = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n";
        let two = format!("# CA A\n{one}junk\n{one}");
        assert_eq!(pem_certificates(two.as_bytes()).len(), 2);
        assert!(pem_certificates(b"nothing").is_empty());
    }
}
