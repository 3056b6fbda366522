//! The replication connection, written on postgres-protocol (tokio-postgres has no
//! replication support).
//!
//! Contract: [`ReplicationConnection::connect`] performs the startup handshake with
//! `replication=database` (so both SQL and replication commands are accepted), TLS as the
//! query connections do it (`crate::db::tls`: the same trust anchors and checks), and trust,
//! cleartext, MD5 or SCRAM-SHA-256 authentication — SCRAM-SHA-256-PLUS (channel binding
//! `tls-server-end-point`) over TLS per `channel_binding` — checked against `require_auth`
//! before anything is answered (`crate::db::auth`). `AuthenticationOk` before the SCRAM
//! exchange finished (the server never proved it knows the password) is an error. As on the
//! query connections, only `S` answers the SSLRequest with TLS and `N` without; any other
//! byte fails ([`WireError::SslAnswer`]); an offer of SCRAM-SHA-256-PLUS over TLS whose
//! certificate gives no `tls-server-end-point` hash is refused unless `channel_binding=disable`.
//! No message may claim more than `crate::db::auth::check_message_length` allows (30,000
//! bytes before `AuthenticationOk`, 1 GiB after), and the read buffer grows with the bytes
//! that arrive, never to a length a header merely claims.
//! [`ReplicationConnection::start_replication`] enters CopyBoth mode; after that
//! [`ReplicationConnection::recv`] yields CopyData payloads (cancel-safe: bytes read are kept
//! in the connection's buffer) and [`ReplicationConnection::send_copy_data`] writes standby
//! status updates. Server errors keep their SQLSTATE so callers can tell "slot in use"
//! (55006) from "slot missing" (42704).

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::backend::{self, ErrorFields, Header, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Lsn;
use crate::db::auth::{
    check_message_length, ssl_answer, AuthError, AuthMethod, AuthTracker, ChannelBinding,
    MessageTooLong, SslAnswer, SslAnswerError,
};
use crate::db::{DbConfig, Socket, SslMode};

/// SQLSTATE 55006: the slot is active for another process.
pub const SQLSTATE_OBJECT_IN_USE: &str = "55006";
/// SQLSTATE 42704: the slot does not exist.
pub const SQLSTATE_UNDEFINED_OBJECT: &str = "42704";

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection to {url} failed: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("server error {code}: {message}{}", detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Server {
        code: String,
        message: String,
        detail: Option<String>,
    },
    #[error("the server does not offer TLS, but sslmode requires it")]
    TlsNotOffered,
    #[error(transparent)]
    SslAnswer(#[from] SslAnswerError),
    #[error(transparent)]
    MessageTooLong(#[from] MessageTooLong),
    #[error("TLS handshake failed: {0}")]
    Tls(#[from] native_tls::Error),
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    #[error("the server asks for a password and none is configured in DATABASE_URL")]
    PasswordRequired,
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("the server asks for an authentication method stocksync does not support ({0}); use scram-sha-256, md5 or trust")]
    UnsupportedAuth(&'static str),
    #[error("SCRAM authentication failed: {0}")]
    Scram(std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the server closed the replication connection")]
    Closed,
    #[error("connecting timed out after {0:?}")]
    Timeout(std::time::Duration),
}

impl WireError {
    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            WireError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Either a plain or a TLS stream.
type Stream = Socket;

/// Spare room kept in the read buffer before each socket read.
const READ_CHUNK: usize = 64 * 1024;

/// What the replication stream delivered.
#[derive(Debug)]
pub enum Received {
    /// A CopyData payload (XLogData or a keepalive).
    Data(Bytes),
    /// The server ended the copy.
    Ended,
}

/// A backend message of interest, parsed from the read buffer.
enum Incoming {
    Message(Message),
    CopyBothResponse,
}

/// Rows of a simple query, as text.
pub type TextRows = Vec<Vec<Option<String>>>;

pub struct ReplicationConnection {
    stream: Stream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    url: String,
    /// `server_version_num`, from the startup parameters.
    pub server_version_num: u32,
    /// Backend process id of this walsender.
    pub backend_pid: i32,
    in_copy: bool,
    /// `AuthenticationOk` arrived: the longer message limit applies.
    authenticated: bool,
}

impl ReplicationConnection {
    /// Opens a `replication=database` connection and authenticates.
    pub async fn connect(config: &DbConfig) -> Result<ReplicationConnection, WireError> {
        let timeout = config.connect_timeout;
        tokio::time::timeout(timeout, Self::connect_inner(config))
            .await
            .map_err(|_| WireError::Timeout(timeout))?
    }

    async fn connect_inner(config: &DbConfig) -> Result<ReplicationConnection, WireError> {
        let url = config.redacted_url();
        let io_err = |source| WireError::Io {
            url: url.clone(),
            source,
        };
        let socket = config.open_socket().await.map_err(io_err)?;
        let (stream, end_point) = if config.is_unix_socket() || config.sslmode == SslMode::Disable {
            (Socket::boxed(socket), None)
        } else {
            negotiate_tls(socket, config, &url).await?
        };
        let mut conn = ReplicationConnection {
            stream,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(1024),
            url,
            server_version_num: 0,
            backend_pid: 0,
            in_copy: false,
            authenticated: false,
        };
        conn.startup(config, end_point).await?;
        Ok(conn)
    }

    /// `end_point`: with TLS, the server certificate's hash for channel binding or (`Err`) the
    /// name of its signature algorithm when it has none; `None`: no TLS.
    async fn startup(
        &mut self,
        config: &DbConfig,
        end_point: Option<Result<Vec<u8>, String>>,
    ) -> Result<(), WireError> {
        let params = [
            ("user", config.user.as_str()),
            ("database", config.dbname.as_str()),
            ("replication", "database"),
            ("application_name", config.application_name.as_str()),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params.iter().copied(), &mut self.write_buf)
            .map_err(|e| WireError::Protocol(e.to_string()))?;
        self.flush().await?;
        self.authenticate(config, end_point).await?;
        // Parameter status, backend key data, then ReadyForQuery.
        loop {
            match self.next_message().await? {
                Incoming::Message(Message::ReadyForQuery(_)) => return Ok(()),
                Incoming::Message(Message::ParameterStatus(body)) => {
                    let name = body.name().map_err(proto)?;
                    if name == "server_version" {
                        self.server_version_num =
                            parse_server_version(body.value().map_err(proto)?);
                    }
                }
                Incoming::Message(Message::BackendKeyData(body)) => {
                    self.backend_pid = body.process_id();
                }
                Incoming::Message(Message::NoticeResponse(_)) => {}
                Incoming::Message(Message::ErrorResponse(body)) => {
                    return Err(server_error(body.fields()))
                }
                _ => {
                    return Err(WireError::Protocol(
                        "unexpected message during startup".into(),
                    ))
                }
            }
        }
    }

    async fn authenticate(
        &mut self,
        config: &DbConfig,
        end_point: Option<Result<Vec<u8>, String>>,
    ) -> Result<(), WireError> {
        let mut tracker = AuthTracker::new(config.require_auth.clone());
        let require_binding = config.channel_binding == ChannelBinding::Require;
        let mut bound = false;
        let password = || config.password.as_ref().ok_or(WireError::PasswordRequired);
        loop {
            let message = match self.next_message().await? {
                Incoming::Message(m) => m,
                Incoming::CopyBothResponse => {
                    return Err(WireError::Protocol("CopyBoth during authentication".into()))
                }
            };
            match message {
                Message::AuthenticationOk => {
                    tracker.ok()?;
                    self.authenticated = true;
                    if require_binding && !bound {
                        return Err(AuthError::ChannelBindingRequired(
                            "the server let stocksync in without SCRAM-SHA-256-PLUS",
                        )
                        .into());
                    }
                    return Ok(());
                }
                Message::AuthenticationCleartextPassword => {
                    tracker.request(AuthMethod::Password)?;
                    if require_binding {
                        return Err(AuthError::ChannelBindingRequired(
                            "the server asked for a cleartext password",
                        )
                        .into());
                    }
                    frontend::password_message(password()?.as_bytes(), &mut self.write_buf)
                        .map_err(|e| WireError::Protocol(e.to_string()))?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    tracker.request(AuthMethod::Md5)?;
                    if require_binding {
                        return Err(AuthError::ChannelBindingRequired(
                            "the server asked for an MD5 password hash",
                        )
                        .into());
                    }
                    let hash =
                        md5_hash(config.user.as_bytes(), password()?.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)
                        .map_err(|e| WireError::Protocol(e.to_string()))?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    tracker.request(AuthMethod::ScramSha256)?;
                    let (mut scram_offered, mut plus_offered) = (false, false);
                    let mut mechanisms = body.mechanisms();
                    while let Some(mechanism) =
                        fallible_iterator::FallibleIterator::next(&mut mechanisms).map_err(proto)?
                    {
                        scram_offered |= mechanism == sasl::SCRAM_SHA_256;
                        plus_offered |= mechanism == sasl::SCRAM_SHA_256_PLUS;
                    }
                    // As libpq: bind when TLS is in use and the server offers it (unless
                    // disabled); "y" tells a server that offers no binding that we could have.
                    let (mechanism, binding) = match (&end_point, config.channel_binding) {
                        (Some(Ok(hash)), ChannelBinding::Prefer | ChannelBinding::Require)
                            if plus_offered =>
                        {
                            bound = true;
                            (
                                sasl::SCRAM_SHA_256_PLUS,
                                sasl::ChannelBinding::tls_server_end_point(hash.clone()),
                            )
                        }
                        // As libpq: no falling back to unbound SCRAM when the server offers
                        // binding but this certificate cannot give it.
                        (
                            Some(Err(algorithm)),
                            ChannelBinding::Prefer | ChannelBinding::Require,
                        ) if plus_offered => {
                            return Err(AuthError::ChannelBindingUnavailable {
                                algorithm: algorithm.clone(),
                            }
                            .into())
                        }
                        (_, ChannelBinding::Require) => {
                            return Err(AuthError::ChannelBindingRequired(if end_point.is_none() {
                                "the connection is not encrypted"
                            } else {
                                "the server does not offer SCRAM-SHA-256-PLUS"
                            })
                            .into())
                        }
                        (Some(Ok(_)), ChannelBinding::Prefer) => {
                            (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested())
                        }
                        _ => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
                    };
                    if mechanism == sasl::SCRAM_SHA_256 && !scram_offered {
                        return Err(WireError::UnsupportedAuth("SASL without SCRAM-SHA-256"));
                    }
                    self.scram(password()?, mechanism, binding).await?;
                    tracker.sasl_finished();
                }
                Message::AuthenticationKerberosV5 | Message::AuthenticationGss => {
                    tracker.request(AuthMethod::Gss)?;
                    return Err(WireError::UnsupportedAuth("GSSAPI"));
                }
                Message::AuthenticationSspi => {
                    tracker.request(AuthMethod::Sspi)?;
                    return Err(WireError::UnsupportedAuth("SSPI"));
                }
                Message::ErrorResponse(body) => return Err(server_error(body.fields())),
                _ => {
                    return Err(WireError::Protocol(
                        "unexpected message during authentication".into(),
                    ))
                }
            }
        }
    }

    async fn scram(
        &mut self,
        password: &str,
        mechanism: &str,
        binding: sasl::ChannelBinding,
    ) -> Result<(), WireError> {
        let mut scram = sasl::ScramSha256::new(password.as_bytes(), binding);
        frontend::sasl_initial_response(mechanism, scram.message(), &mut self.write_buf)
            .map_err(|e| WireError::Protocol(e.to_string()))?;
        self.flush().await?;
        match self.next_message().await? {
            Incoming::Message(Message::AuthenticationSaslContinue(body)) => {
                scram.update(body.data()).map_err(WireError::Scram)?;
            }
            Incoming::Message(Message::ErrorResponse(body)) => {
                return Err(server_error(body.fields()))
            }
            Incoming::Message(Message::AuthenticationOk) => {
                return Err(AuthError::ScramUnfinished.into())
            }
            _ => return Err(WireError::Protocol("expected SASL continue".into())),
        }
        frontend::sasl_response(scram.message(), &mut self.write_buf)
            .map_err(|e| WireError::Protocol(e.to_string()))?;
        self.flush().await?;
        match self.next_message().await? {
            Incoming::Message(Message::AuthenticationSaslFinal(body)) => {
                // Checks the server's signature: it proves the server knows the password.
                scram.finish(body.data()).map_err(WireError::Scram)?;
                Ok(())
            }
            Incoming::Message(Message::ErrorResponse(body)) => Err(server_error(body.fields())),
            Incoming::Message(Message::AuthenticationOk) => Err(AuthError::ScramUnfinished.into()),
            _ => Err(WireError::Protocol("expected SASL final".into())),
        }
    }

    /// Runs a simple query (e.g. `IDENTIFY_SYSTEM`) and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<TextRows, WireError> {
        frontend::query(sql, &mut self.write_buf)
            .map_err(|e| WireError::Protocol(e.to_string()))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next_message().await? {
                Incoming::Message(Message::DataRow(row)) => {
                    let buf = row.buffer();
                    let mut values = Vec::new();
                    let mut ranges = row.ranges();
                    while let Some(range) =
                        fallible_iterator::FallibleIterator::next(&mut ranges).map_err(proto)?
                    {
                        values.push(range.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(values);
                }
                Incoming::Message(Message::ErrorResponse(body)) => {
                    error = Some(server_error(body.fields()))
                }
                Incoming::Message(Message::ReadyForQuery(_)) => {
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    }
                }
                _ => {}
            }
        }
    }

    /// `START_REPLICATION SLOT slot LOGICAL start (options)`; returns once the server has
    /// entered CopyBoth mode. `slot` and option names must already be validated identifiers.
    pub async fn start_replication(
        &mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, String)],
    ) -> Result<(), WireError> {
        let options = options
            .iter()
            .map(|(k, v)| format!("\"{k}\" '{}'", v.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(", ");
        let command = format!("START_REPLICATION SLOT \"{slot}\" LOGICAL {start} ({options})");
        frontend::query(&command, &mut self.write_buf)
            .map_err(|e| WireError::Protocol(e.to_string()))?;
        self.flush().await?;
        loop {
            match self.next_message().await? {
                Incoming::CopyBothResponse => {
                    self.in_copy = true;
                    return Ok(());
                }
                Incoming::Message(Message::ErrorResponse(body)) => {
                    let err = server_error(body.fields());
                    // Drain to ReadyForQuery so the connection stays usable.
                    loop {
                        if let Incoming::Message(Message::ReadyForQuery(_)) =
                            self.next_message().await?
                        {
                            break;
                        }
                    }
                    return Err(err);
                }
                Incoming::Message(Message::NoticeResponse(_)) => {}
                _ => {
                    return Err(WireError::Protocol(
                        "unexpected reply to START_REPLICATION".into(),
                    ))
                }
            }
        }
    }

    /// The next CopyData payload of the replication stream; `None` when the server ends the
    /// copy. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, WireError> {
        loop {
            if let Some(received) = self.recv_buffered()? {
                return Ok(match received {
                    Received::Data(body) => Some(body),
                    Received::Ended => None,
                });
            }
            self.fill().await?;
        }
    }

    /// Like [`recv`](Self::recv), but only from bytes already read: `None` when the next
    /// message is not complete yet. Lets a reader take everything one socket read brought
    /// without going back to the runtime for each message.
    pub fn recv_buffered(&mut self) -> Result<Option<Received>, WireError> {
        while let Some(incoming) = self.parse_buffered()? {
            match incoming {
                Incoming::Message(Message::CopyData(body)) => {
                    return Ok(Some(Received::Data(body.into_bytes())))
                }
                Incoming::Message(Message::CopyDone) => {
                    self.in_copy = false;
                    return Ok(Some(Received::Ended));
                }
                Incoming::Message(Message::ErrorResponse(body)) => {
                    return Err(server_error(body.fields()))
                }
                Incoming::Message(Message::NoticeResponse(_))
                | Incoming::Message(Message::ParameterStatus(_)) => {}
                Incoming::Message(Message::CommandComplete(_))
                | Incoming::Message(Message::ReadyForQuery(_)) => {
                    if !self.in_copy {
                        return Ok(Some(Received::Ended));
                    }
                }
                _ => {
                    return Err(WireError::Protocol(
                        "unexpected message in the replication stream".into(),
                    ))
                }
            }
        }
        Ok(None)
    }

    /// Sends one CopyData message (a standby status update) and flushes it.
    pub async fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), WireError> {
        frontend::CopyData::new(payload)
            .map_err(|e| WireError::Protocol(e.to_string()))?
            .write(&mut self.write_buf);
        self.flush().await
    }

    /// Ends the copy and the session politely (CopyDone + Terminate).
    pub async fn close(mut self) {
        if self.in_copy {
            frontend::copy_done(&mut self.write_buf);
        }
        frontend::terminate(&mut self.write_buf);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }

    async fn flush(&mut self) -> Result<(), WireError> {
        let buf = self.write_buf.split();
        self.stream
            .write_all(&buf)
            .await
            .map_err(|source| WireError::Io {
                url: self.url.clone(),
                source,
            })?;
        self.stream.flush().await.map_err(|source| WireError::Io {
            url: self.url.clone(),
            source,
        })
    }

    async fn next_message(&mut self) -> Result<Incoming, WireError> {
        loop {
            if let Some(message) = self.parse_buffered()? {
                return Ok(message);
            }
            self.fill().await?;
        }
    }

    /// Reads what the socket has (at least one byte) into the read buffer.
    async fn fill(&mut self) -> Result<(), WireError> {
        // Room for a large read: a full buffer would make `read_buf` read a few bytes at a time.
        if self.read_buf.capacity() - self.read_buf.len() < READ_CHUNK / 4 {
            self.read_buf.reserve(READ_CHUNK);
        }
        let n = self
            .stream
            .read_buf(&mut self.read_buf)
            .await
            .map_err(|source| WireError::Io {
                url: self.url.clone(),
                source,
            })?;
        if n == 0 {
            return Err(WireError::Closed);
        }
        Ok(())
    }

    fn parse_buffered(&mut self) -> Result<Option<Incoming>, WireError> {
        let Some(header) = Header::parse(&self.read_buf).map_err(proto)? else {
            return Ok(None);
        };
        check_message_length(header.tag(), header.len() as u32, self.authenticated)?;
        let total = header.len() as usize + 1;
        // The buffer grows as bytes arrive (`fill`), never to the length a header claims:
        // postgres-protocol's parser would reserve it all at once.
        if self.read_buf.len() < total {
            return Ok(None);
        }
        // CopyBothResponse ('W') is not known to postgres-protocol's parser.
        if header.tag() == b'W' {
            self.read_buf.advance(total);
            return Ok(Some(Incoming::CopyBothResponse));
        }
        match backend::Message::parse(&mut self.read_buf).map_err(proto)? {
            Some(message) => Ok(Some(Incoming::Message(message))),
            None => Ok(None),
        }
    }
}

/// SSLRequest; the TLS connector (and with it the system trust store) is loaded only when
/// the server accepts. Returns the stream and, with TLS, the certificate hash for channel
/// binding.
async fn negotiate_tls(
    mut socket: Socket,
    config: &DbConfig,
    url: &str,
) -> Result<(Stream, Option<Result<Vec<u8>, String>>), WireError> {
    let io_err = |source| WireError::Io {
        url: url.to_string(),
        source,
    };
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    socket.write_all(&buf).await.map_err(io_err)?;
    let mut answer = [0u8; 1];
    socket.read_exact(&mut answer).await.map_err(io_err)?;
    match ssl_answer(answer[0])? {
        SslAnswer::Tls => {
            let connector = config
                .tls_connector()
                .map_err(|e| WireError::TlsConfig(e.to_string()))?
                .ok_or_else(|| WireError::TlsConfig("TLS with sslmode=disable".into()))?;
            let connector = tokio_native_tls::TlsConnector::from(connector);
            let tls = connector.connect(&config.host, socket).await?;
            let end_point = crate::db::tls::end_point_of(tls.get_ref());
            Ok((Socket::boxed(tls), Some(end_point)))
        }
        SslAnswer::Plain if !config.tls_required() => Ok((Socket::boxed(socket), None)),
        SslAnswer::Plain => Err(WireError::TlsNotOffered),
    }
}

fn proto(e: std::io::Error) -> WireError {
    WireError::Protocol(e.to_string())
}

fn server_error(mut fields: ErrorFields<'_>) -> WireError {
    let mut code = String::new();
    let mut message = String::new();
    let mut detail = None;
    while let Ok(Some(field)) = fallible_iterator::FallibleIterator::next(&mut fields) {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'C' => code = value,
            b'M' => message = value,
            b'D' => detail = Some(value),
            _ => {}
        }
    }
    WireError::Server {
        code,
        message,
        detail,
    }
}

/// `"15.18 (Debian 15.18-0+deb12u1)"` -> 150018.
fn parse_server_version(text: &str) -> u32 {
    let numeric: String = text
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = numeric.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    if major >= 10 {
        major * 10000 + minor
    } else {
        major * 10000 + minor * 100 + parts.next().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions() {
        assert_eq!(
            parse_server_version("15.18 (Debian 15.18-0+deb12u1)"),
            150018
        );
        assert_eq!(parse_server_version("17devel"), 170000);
        assert_eq!(parse_server_version("9.6.24"), 90624);
    }
}
