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
//!
//! Channel binding (`tls-server-end-point`, RFC 5929) is computed here for both connections:
//! [`end_point_hash`] decides, from the certificate's signature algorithm alone, which hash
//! applies (none for Ed25519, Ed448, RSA-PSS), and [`end_point`] hashes the certificate.

use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{ChannelBinding, TlsConnect};

use sha2::Digest;

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

/// The hash `tls-server-end-point` uses for a certificate signed with `signature_oid`
/// (dotted form), per RFC 5929 section 4.1: SHA-256 when the signature uses MD5 or SHA-1,
/// otherwise the signature's own hash; `None` when the signature has no single hash
/// (Ed25519, Ed448) or names it only in parameters (RSA-PSS, which neither libpq with OpenSSL
/// nor native-tls handle) or the algorithm is unknown. Pure, so it does not depend on the TLS
/// library.
pub fn end_point_hash(signature_oid: &str) -> Option<EndPointHash> {
    Some(match signature_oid {
        // md5WithRSAEncryption, sha1WithRSAEncryption, ecdsa-with-SHA1, dsa-with-sha1
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.10045.4.1"
        | "1.2.840.10040.4.3" => EndPointHash::Sha256,
        // sha224WithRSAEncryption, ecdsa-with-SHA224, dsa-with-sha224
        "1.2.840.113549.1.1.14" | "1.2.840.10045.4.3.1" | "2.16.840.1.101.3.4.3.1" => {
            EndPointHash::Sha224
        }
        // sha256WithRSAEncryption, ecdsa-with-SHA256, dsa-with-sha256
        "1.2.840.113549.1.1.11" | "1.2.840.10045.4.3.2" | "2.16.840.1.101.3.4.3.2" => {
            EndPointHash::Sha256
        }
        // sha384WithRSAEncryption, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => EndPointHash::Sha384,
        // sha512WithRSAEncryption, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => EndPointHash::Sha512,
        _ => return None,
    })
}

/// A hash for `tls-server-end-point`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndPointHash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl EndPointHash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            EndPointHash::Sha224 => sha2::Sha224::digest(data).to_vec(),
            EndPointHash::Sha256 => sha2::Sha256::digest(data).to_vec(),
            EndPointHash::Sha384 => sha2::Sha384::digest(data).to_vec(),
            EndPointHash::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

/// A readable name of a signature algorithm, for messages.
pub fn signature_algorithm_name(oid: &str) -> String {
    match oid {
        "1.3.101.112" => "Ed25519".into(),
        "1.3.101.113" => "Ed448".into(),
        "1.2.840.113549.1.1.10" => "RSA-PSS".into(),
        other => format!("the signature algorithm {other}"),
    }
}

/// The `tls-server-end-point` value of a DER certificate, or (`Err`) a description of its
/// signature algorithm when none can be computed.
pub fn end_point(certificate_der: &[u8]) -> Result<Vec<u8>, String> {
    let oid = signature_oid(certificate_der)
        .ok_or_else(|| "a signature algorithm stocksync cannot read".to_string())?;
    match end_point_hash(&oid) {
        Some(hash) => Ok(hash.digest(certificate_der)),
        None => Err(signature_algorithm_name(&oid)),
    }
}

/// [`end_point`] of the certificate a TLS server presented.
pub fn end_point_of<S: std::io::Read + std::io::Write>(
    stream: &native_tls::TlsStream<S>,
) -> Result<Vec<u8>, String> {
    match stream.peer_certificate() {
        Ok(Some(certificate)) => {
            let der = certificate
                .to_der()
                .map_err(|_| "a certificate stocksync cannot read".to_string())?;
            end_point(&der)
        }
        _ => Err("no certificate (the server presented none)".into()),
    }
}

/// The signature algorithm OID (dotted) of a DER X.509 certificate: `Certificate ::=
/// SEQUENCE { tbsCertificate, signatureAlgorithm SEQUENCE { OID, ... }, signature }`.
fn signature_oid(der: &[u8]) -> Option<String> {
    let (tag, certificate, _) = der_element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, after_tbs) = der_element(certificate)?;
    let (tag, algorithm, _) = der_element(after_tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der_element(algorithm)?;
    if tag != 0x06 || oid.is_empty() {
        return None;
    }
    let mut arcs = vec![u64::from(oid[0] / 40).min(2)];
    arcs.push(u64::from(oid[0]) - arcs[0] * 40);
    let mut value: u64 = 0;
    for byte in &oid[1..] {
        value = value.checked_mul(128)? | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            arcs.push(value);
            value = 0;
        }
    }
    Some(
        arcs.iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// One DER element: (tag, contents, the bytes after it).
fn der_element(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let length = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (length, &rest[n..])
    };
    if rest.len() < length {
        return None;
    }
    Some((tag, &rest[..length], &rest[length..]))
}

/// TLS for tokio-postgres connections. The connector is built on first use (tokio-postgres
/// asks only after the server accepted the SSLRequest), and the TLS stream is wrapped in an
/// [`AuthGuard`] so `require_auth` and channel binding are checked on the plaintext inside it.
pub struct PgTls {
    pub(super) config: DbConfig,
}

/// A TLS stream of a query connection.
pub type PgTlsStream<S> = AuthGuard<tokio_native_tls::TlsStream<S>>;

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
            let connector = tokio_native_tls::TlsConnector::from(connector);
            let stream = connector.connect(&self.config.host, stream).await?;
            let end_point = end_point_of(stream.get_ref());
            Ok(AuthGuard::inside_tls(
                stream,
                self.config.require_auth.clone(),
                end_point,
                self.config.channel_binding,
            ))
        })
    }
}

impl<S> tokio_postgres::tls::TlsStream for AuthGuard<tokio_native_tls::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        match self.end_point() {
            Some(hash) => ChannelBinding::tls_server_end_point(hash.to_vec()),
            None => ChannelBinding::none(),
        }
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

    #[test]
    fn end_point_hash_follows_rfc_5929() {
        use EndPointHash::*;
        for (oid, hash) in [
            ("1.2.840.113549.1.1.4", Some(Sha256)), // MD5 with RSA: upgraded
            ("1.2.840.113549.1.1.5", Some(Sha256)), // SHA-1 with RSA: upgraded
            ("1.2.840.10045.4.1", Some(Sha256)),    // ECDSA with SHA-1: upgraded
            ("1.2.840.113549.1.1.11", Some(Sha256)), // SHA-256 with RSA
            ("1.2.840.10045.4.3.2", Some(Sha256)),  // ECDSA with SHA-256
            ("1.2.840.113549.1.1.12", Some(Sha384)), // SHA-384 with RSA
            ("1.2.840.10045.4.3.3", Some(Sha384)),  // ECDSA with SHA-384
            ("1.2.840.113549.1.1.13", Some(Sha512)), // SHA-512 with RSA
            ("1.2.840.10045.4.3.4", Some(Sha512)),  // ECDSA with SHA-512
            ("1.2.840.113549.1.1.14", Some(Sha224)), // SHA-224 with RSA
            ("1.3.101.112", None),                  // Ed25519
            ("1.3.101.113", None),                  // Ed448
            ("1.2.840.113549.1.1.10", None),        // RSA-PSS
            ("1.2.3.4", None),                      // unknown
        ] {
            assert_eq!(end_point_hash(oid), hash, "{oid}");
        }
        assert_eq!(signature_algorithm_name("1.3.101.112"), "Ed25519");
        assert_eq!(signature_algorithm_name("1.3.101.113"), "Ed448");
        assert_eq!(signature_algorithm_name("1.2.840.113549.1.1.10"), "RSA-PSS");
    }

    #[test]
    fn reads_the_signature_algorithm_of_a_certificate() {
        // A minimal certificate shape: SEQUENCE { tbs SEQUENCE {}, SEQUENCE { OID }, BIT STRING }.
        let build = |oid: &[u8]| {
            let mut algorithm = vec![0x30, (oid.len() + 2) as u8, 0x06, oid.len() as u8];
            algorithm.extend_from_slice(oid);
            let mut body = vec![0x30, 0x00];
            body.extend_from_slice(&algorithm);
            body.extend_from_slice(&[0x03, 0x01, 0x00]);
            let mut der = vec![0x30, body.len() as u8];
            der.extend_from_slice(&body);
            der
        };
        let ed25519 = build(&[0x2b, 0x65, 0x70]);
        assert_eq!(signature_oid(&ed25519).as_deref(), Some("1.3.101.112"));
        assert_eq!(end_point(&ed25519), Err("Ed25519".to_string()));
        let ecdsa_sha384 = build(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]);
        assert_eq!(
            signature_oid(&ecdsa_sha384).as_deref(),
            Some("1.2.840.10045.4.3.3")
        );
        assert_eq!(end_point(&ecdsa_sha384).unwrap().len(), 48);
        assert!(end_point(&ecdsa_sha384[..5]).is_err(), "truncated");
    }
}
