//! Authentication policy shared by both connections: libpq's `channel_binding` and
//! `require_auth` (libpq 16 syntax), and [`AuthGuard`], which enforces `require_auth` on the
//! query connections that tokio-postgres authenticates.
//!
//! The replication connection (`replication::wire`) authenticates itself and asks an
//! [`AuthTracker`] about every request of the server. tokio-postgres has no `require_auth`,
//! so its connections run over an [`AuthGuard`]: a stream wrapper that reads the server's
//! authentication requests *before* tokio-postgres sees them and fails the connection (an
//! I/O error holding an [`AuthError`]) when one is not allowed — so a forbidden cleartext or
//! MD5 request never gets an answer. It sits under TLS when TLS is used (it must see
//! plaintext), and stops looking once the server said `AuthenticationOk`.
//!
//! Two more rules hold on both connections, whatever `require_auth` says:
//! - The answer to the SSLRequest ([`ssl_answer`]): only `S` means TLS follows, `N` means
//!   plaintext (and the checks go on), any other byte fails the connection with an
//!   [`SslAnswerError`] (as libpq does). tokio-postgres alone would take any byte but `S` as
//!   "no TLS" and carry on in plaintext, while a guard that took it as "TLS" would stop
//!   checking: a middlebox answering `X` would get a cleartext password.
//! - Message lengths ([`check_message_length`]): before `AuthenticationOk` no message may claim
//!   more than [`MAX_PREAUTH_MESSAGE`] bytes, after it no more than [`MAX_MESSAGE`]; a longer
//!   claim fails with a [`MessageTooLong`] before any buffer of that size is reserved.
//!
//! With TLS, when the certificate gives no `tls-server-end-point` hash (see
//! `crate::db::tls::end_point_hash`) and the server offers SCRAM-SHA-256-PLUS, the connection
//! is refused unless `channel_binding=disable` ([`AuthError::ChannelBindingUnavailable`]):
//! plain SCRAM there would be exactly the downgrade a man in the middle wants.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// libpq `channel_binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelBinding {
    Disable,
    /// Use SCRAM-SHA-256-PLUS when TLS is in use and the server offers it (libpq's default).
    #[default]
    Prefer,
    /// Refuse to authenticate any other way than SCRAM-SHA-256-PLUS over TLS.
    Require,
}

/// An authentication method as `require_auth` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Password,
    Md5,
    Gss,
    Sspi,
    ScramSha256,
    /// The server let the client in without asking for anything (trust, peer, cert).
    None,
}

impl AuthMethod {
    const ALL: [AuthMethod; 6] = [
        AuthMethod::Password,
        AuthMethod::Md5,
        AuthMethod::Gss,
        AuthMethod::Sspi,
        AuthMethod::ScramSha256,
        AuthMethod::None,
    ];

    /// The `require_auth` keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            AuthMethod::Password => "password",
            AuthMethod::Md5 => "md5",
            AuthMethod::Gss => "gss",
            AuthMethod::Sspi => "sspi",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::None => "none",
        }
    }

    fn described(self) -> &'static str {
        match self {
            AuthMethod::Password => "a cleartext password",
            AuthMethod::Md5 => "an MD5 password hash",
            AuthMethod::Gss => "GSSAPI authentication",
            AuthMethod::Sspi => "SSPI authentication",
            AuthMethod::ScramSha256 => "SCRAM-SHA-256 authentication",
            AuthMethod::None => "no authentication",
        }
    }

    /// The method of an `AuthenticationXxx` request code; `None` for codes that continue an
    /// exchange (SASL continue/final, GSS continue) or end it (OK).
    fn of_request(code: i32) -> Option<AuthMethod> {
        match code {
            3 => Some(AuthMethod::Password),
            5 => Some(AuthMethod::Md5),
            2 | 7 => Some(AuthMethod::Gss),
            9 => Some(AuthMethod::Sspi),
            10 => Some(AuthMethod::ScramSha256),
            _ => None,
        }
    }
}

/// libpq 16 `require_auth`: the methods the server may use (`scram-sha-256,none`), or
/// those it may not (`!password,!md5`). Empty: any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequireAuth {
    /// As written, for messages; empty when not set.
    text: String,
    /// Methods allowed, in [`AuthMethod::ALL`] order.
    allowed: Vec<AuthMethod>,
}

/// A malformed `require_auth`.
#[derive(Debug, thiserror::Error)]
#[error("require_auth={text:?}: {problem}")]
pub struct RequireAuthError {
    text: String,
    problem: String,
}

impl RequireAuth {
    pub fn parse(text: &str) -> Result<RequireAuth, RequireAuthError> {
        let bad = |problem: String| RequireAuthError {
            text: text.to_string(),
            problem,
        };
        if text.is_empty() {
            return Ok(RequireAuth::default());
        }
        let mut listed = Vec::new();
        let mut negated = None;
        for item in text.split(',') {
            let (negative, name) = match item.strip_prefix('!') {
                Some(name) => (true, name),
                None => (false, item),
            };
            if *negated.get_or_insert(negative) != negative {
                return Err(bad("negative and positive methods cannot be mixed".into()));
            }
            let method = AuthMethod::ALL
                .into_iter()
                .find(|m| m.keyword() == name)
                .ok_or_else(|| {
                    bad(format!(
                        "unknown method {name:?} (use password, md5, gss, sspi, scram-sha-256 or none, optionally each with a leading !)"
                    ))
                })?;
            if listed.contains(&method) {
                return Err(bad(format!("{name} is listed more than once")));
            }
            listed.push(method);
        }
        let allowed = AuthMethod::ALL
            .into_iter()
            .filter(|m| listed.contains(m) != negated.unwrap_or(false))
            .collect();
        Ok(RequireAuth {
            text: text.to_string(),
            allowed,
        })
    }

    pub fn is_set(&self) -> bool {
        !self.text.is_empty()
    }

    pub fn allows(&self, method: AuthMethod) -> bool {
        !self.is_set() || self.allowed.contains(&method)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// An authentication the configuration does not allow. Permanent: a reconnect meets the
/// same server.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("the server asked for {}, which require_auth={required} does not allow", .requested.described())]
    MethodNotAllowed {
        requested: AuthMethod,
        required: String,
    },
    #[error("the server let stocksync in without authenticating it, which require_auth={required} does not allow")]
    NotAuthenticated { required: String },
    #[error("the server said authentication succeeded before the SCRAM exchange had finished (it never proved it knows the password)")]
    ScramUnfinished,
    #[error("channel_binding=require, but {0}")]
    ChannelBindingRequired(&'static str),
    /// libpq refuses here too: falling back to unbound SCRAM would let a man in the middle
    /// with any certificate relay the exchange.
    #[error("the server offers SCRAM-SHA-256-PLUS, but its certificate is signed with {algorithm}, for which no tls-server-end-point hash exists (RFC 5929), so stocksync cannot bind the authentication to this TLS connection; give the server a certificate signed with RSA (PKCS#1 v1.5) or ECDSA, or set channel_binding=disable")]
    ChannelBindingUnavailable { algorithm: String },
}

/// What an answer to the SSLRequest means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslAnswer {
    /// `S`: the TLS handshake follows.
    Tls,
    /// `N`: the server goes on in plaintext.
    Plain,
}

/// An answer to the SSLRequest that is neither `S` nor `N`: a broken server or a middlebox
/// trying to get a plaintext session past the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server answered the TLS request with {byte:#04x}, neither S nor N (a PostgreSQL server never does; something between stocksync and the server may be tampering with the connection)")]
pub struct SslAnswerError {
    pub byte: u8,
}

/// The meaning of the server's one-byte answer to the SSLRequest (libpq's rule).
pub fn ssl_answer(byte: u8) -> Result<SslAnswer, SslAnswerError> {
    match byte {
        b'S' => Ok(SslAnswer::Tls),
        b'N' => Ok(SslAnswer::Plain),
        byte => Err(SslAnswerError { byte }),
    }
}

/// The longest message (length field included) accepted before `AuthenticationOk`: libpq's
/// limit for messages during startup. Authentication requests and a startup ErrorResponse
/// are a few hundred bytes.
pub const MAX_PREAUTH_MESSAGE: u32 = 30_000;

/// The longest message (length field included) accepted after authentication. PostgreSQL
/// builds every message it sends in a StringInfo, which cannot grow past MaxAllocSize
/// (1 GiB - 1, `enlargeStringInfo` fails beyond); that holds for the walsender's CopyData
/// too (the output plugin writes into one StringInfo). So no real server's message claims more
/// than 1 GiB + the 4-byte length field.
pub const MAX_MESSAGE: u32 = (1 << 30) + 4;

/// A message header that claims more than a real server ever sends at that point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server sent a message (type {tag:?}) claiming {length} bytes, more than the {limit} bytes a PostgreSQL server sends {phase}; the connection is closed")]
pub struct MessageTooLong {
    pub tag: char,
    pub length: u32,
    pub limit: u32,
    pub phase: &'static str,
}

/// Checks the length field of a backend message header (`length` counts itself, not the
/// tag). `authenticated`: `AuthenticationOk` has been received.
pub fn check_message_length(
    tag: u8,
    length: u32,
    authenticated: bool,
) -> Result<(), MessageTooLong> {
    let (limit, phase) = if authenticated {
        (MAX_MESSAGE, "in any single message")
    } else {
        (MAX_PREAUTH_MESSAGE, "before authentication")
    };
    if length > limit {
        return Err(MessageTooLong {
            tag: tag as char,
            length,
            limit,
            phase,
        });
    }
    Ok(())
}

/// What an [`AuthGuard`] refused; each goes into the I/O error as its own type.
#[derive(Debug)]
enum GuardError {
    Auth(AuthError),
    SslAnswer(SslAnswerError),
    TooLong(MessageTooLong),
}

impl From<AuthError> for GuardError {
    fn from(e: AuthError) -> Self {
        GuardError::Auth(e)
    }
}

impl GuardError {
    fn into_io(self) -> std::io::Error {
        use std::io::{Error, ErrorKind};
        match self {
            GuardError::Auth(e) => Error::new(ErrorKind::PermissionDenied, e),
            GuardError::SslAnswer(e) => Error::new(ErrorKind::InvalidData, e),
            GuardError::TooLong(e) => Error::new(ErrorKind::InvalidData, e),
        }
    }
}

/// Follows one authentication exchange and checks it against `require_auth`.
#[derive(Debug)]
pub struct AuthTracker {
    policy: RequireAuth,
    requested: Option<AuthMethod>,
    sasl_finished: bool,
}

impl AuthTracker {
    pub fn new(policy: RequireAuth) -> AuthTracker {
        AuthTracker {
            policy,
            requested: None,
            sasl_finished: false,
        }
    }

    /// The server asks for `method`; refused before anything is answered.
    pub fn request(&mut self, method: AuthMethod) -> Result<(), AuthError> {
        if !self.policy.allows(method) {
            return Err(AuthError::MethodNotAllowed {
                requested: method,
                required: self.policy.as_str().to_string(),
            });
        }
        self.requested = Some(method);
        Ok(())
    }

    /// The server's SASL final message arrived (its signature is checked by the SCRAM code).
    pub fn sasl_finished(&mut self) {
        self.sasl_finished = true;
    }

    /// `AuthenticationOk`: the exchange must be complete and its method allowed.
    pub fn ok(&self) -> Result<(), AuthError> {
        match self.requested {
            None if !self.policy.allows(AuthMethod::None) => Err(AuthError::NotAuthenticated {
                required: self.policy.as_str().to_string(),
            }),
            Some(AuthMethod::ScramSha256) if !self.sasl_finished => Err(AuthError::ScramUnfinished),
            _ => Ok(()),
        }
    }
}

/// The bytes of an SSLRequest (length 8, code 80877103).
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

#[derive(Debug)]
enum GuardState {
    /// Raw socket, nothing written yet: an SSLRequest first means a one-byte answer follows.
    Start,
    /// The next byte read answers the SSLRequest.
    SslAnswer,
    /// Reading a backend message: tag, length and (for `R`) the request code.
    Header { bytes: [u8; 9], have: usize },
    /// Reading the mechanism list of an AuthenticationSASL request (`left` bytes to come).
    Mechanisms { list: Vec<u8>, left: usize },
    /// Skipping the rest of a message body.
    Skip(usize),
    /// Authentication is over (or TLS took over the stream): pass everything through.
    Done,
}

const HEADER: GuardState = GuardState::Header {
    bytes: [0; 9],
    have: 0,
};

/// A stream that checks the server's answers until authentication is over (see the module
/// doc): the SSLRequest answer, message lengths, `require_auth`, and channel binding. Wraps
/// the raw socket (which it stops watching when TLS starts) and, with TLS, the TLS stream.
#[derive(Debug)]
pub struct AuthGuard<S> {
    inner: S,
    tracker: AuthTracker,
    state: GuardState,
    /// With TLS: the `tls-server-end-point` hash for channel binding, if there is one.
    end_point: Option<Vec<u8>>,
    /// With TLS and channel binding wanted: the certificate's signature algorithm when it
    /// gives no hash (an offer of SCRAM-SHA-256-PLUS is then refused).
    binding_unavailable: Option<String>,
}

impl<S> AuthGuard<S> {
    /// Around the socket, before anything was sent.
    pub fn raw(inner: S, policy: RequireAuth) -> AuthGuard<S> {
        AuthGuard {
            inner,
            tracker: AuthTracker::new(policy),
            state: GuardState::Start,
            end_point: None,
            binding_unavailable: None,
        }
    }

    /// Around a TLS stream that has just been set up. `end_point`: the certificate's
    /// `tls-server-end-point` hash, or the name of its signature algorithm when it has none.
    pub fn inside_tls(
        inner: S,
        policy: RequireAuth,
        end_point: Result<Vec<u8>, String>,
        binding: ChannelBinding,
    ) -> AuthGuard<S> {
        let (end_point, binding_unavailable) = match end_point {
            _ if binding == ChannelBinding::Disable => (None, None),
            Ok(hash) => (Some(hash), None),
            Err(algorithm) => (None, Some(algorithm)),
        };
        AuthGuard {
            inner,
            tracker: AuthTracker::new(policy),
            state: HEADER,
            end_point,
            binding_unavailable,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The `tls-server-end-point` hash to bind SCRAM to (`None` without TLS, without a hash,
    /// or with `channel_binding=disable`).
    pub fn end_point(&self) -> Option<&[u8]> {
        self.end_point.as_deref()
    }

    /// Follows the bytes the server sent.
    fn inspect(&mut self, mut data: &[u8]) -> Result<(), GuardError> {
        while !data.is_empty() {
            match &mut self.state {
                GuardState::Done => return Ok(()),
                // Reading before writing: not the SSLRequest flow.
                GuardState::Start => self.state = HEADER,
                GuardState::SslAnswer => {
                    self.state = match ssl_answer(data[0]).map_err(GuardError::SslAnswer)? {
                        SslAnswer::Plain => HEADER,
                        // TLS follows, watched by the guard inside it.
                        SslAnswer::Tls => GuardState::Done,
                    };
                    data = &data[1..];
                }
                GuardState::Skip(n) => {
                    let k = (*n).min(data.len());
                    *n -= k;
                    data = &data[k..];
                    if *n == 0 {
                        self.state = HEADER;
                    }
                }
                GuardState::Mechanisms { list, left } => {
                    let k = (*left).min(data.len());
                    list.extend_from_slice(&data[..k]);
                    *left -= k;
                    data = &data[k..];
                    if *left == 0 {
                        let plus_offered =
                            list.split(|b| *b == 0).any(|m| m == b"SCRAM-SHA-256-PLUS");
                        if plus_offered {
                            if let Some(algorithm) = self.binding_unavailable.take() {
                                return Err(
                                    AuthError::ChannelBindingUnavailable { algorithm }.into()
                                );
                            }
                        }
                        self.state = HEADER;
                    }
                }
                GuardState::Header { bytes, have } => {
                    let want = if *have >= 1 && bytes[0] == b'R' { 9 } else { 5 };
                    let k = (want - *have).min(data.len());
                    bytes[*have..*have + k].copy_from_slice(&data[..k]);
                    *have += k;
                    data = &data[k..];
                    if *have < want {
                        continue;
                    }
                    let tag = bytes[0];
                    let length = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
                    if *have == 5 {
                        // Before tokio-postgres reserves a buffer of that size.
                        check_message_length(tag, length, false).map_err(GuardError::TooLong)?;
                        if tag == b'R' {
                            continue; // read the request code too
                        }
                    }
                    let body_left =
                        (length as usize).saturating_sub(if tag == b'R' { 8 } else { 4 });
                    let code = i32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
                    let mut next = if body_left == 0 {
                        HEADER
                    } else {
                        GuardState::Skip(body_left)
                    };
                    match tag {
                        b'R' => match code {
                            0 => {
                                self.tracker.ok()?;
                                self.state = GuardState::Done;
                                return Ok(());
                            }
                            12 => self.tracker.sasl_finished(),
                            _ => {
                                if let Some(method) = AuthMethod::of_request(code) {
                                    self.tracker.request(method)?;
                                }
                                if code == 10 && body_left > 0 {
                                    next = GuardState::Mechanisms {
                                        list: Vec::with_capacity(body_left),
                                        left: body_left,
                                    };
                                }
                            }
                        },
                        // An error ends the exchange; tokio-postgres reports it.
                        b'E' => {
                            self.state = GuardState::Done;
                            return Ok(());
                        }
                        _ => {}
                    }
                    self.state = next;
                }
            }
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if !matches!(this.state, GuardState::Done) {
                    let new = buf.filled()[before..].to_vec();
                    if let Err(e) = this.inspect(&new) {
                        // Nothing of this read reaches tokio-postgres: it never answers.
                        buf.set_filled(before);
                        this.state = GuardState::Done;
                        return Poll::Ready(Err(e.into_io()));
                    }
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if matches!(self.state, GuardState::Start) {
            // tokio-postgres writes the SSLRequest (or the startup message) in one piece.
            self.state = if data.starts_with(&SSL_REQUEST) {
                GuardState::SslAnswer
            } else {
                HEADER
            };
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The [`AuthError`] inside an I/O error raised by an [`AuthGuard`], if that is what it is.
pub fn auth_error_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a AuthError> {
    find_in(error)
}

/// The [`SslAnswerError`] inside an error of a query connection, if that is what it is.
pub fn ssl_answer_error_in<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a SslAnswerError> {
    find_in(error)
}

/// The [`MessageTooLong`] inside an error of a query connection, if that is what it is.
pub fn message_too_long_in<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a MessageTooLong> {
    find_in(error)
}

/// An error of type `T` in `error`'s chain, looking inside I/O errors too.
fn find_in<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(found) = io.get_ref().and_then(|inner| inner.downcast_ref::<T>()) {
                return Some(found);
            }
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_auth_follows_libpq_16() {
        let any = RequireAuth::parse("").unwrap();
        assert!(AuthMethod::ALL.iter().all(|m| any.allows(*m)));
        let scram = RequireAuth::parse("scram-sha-256").unwrap();
        assert!(scram.allows(AuthMethod::ScramSha256));
        assert!(!scram.allows(AuthMethod::Password) && !scram.allows(AuthMethod::None));
        let no_clear = RequireAuth::parse("!password,!md5").unwrap();
        assert!(no_clear.allows(AuthMethod::ScramSha256) && no_clear.allows(AuthMethod::None));
        assert!(!no_clear.allows(AuthMethod::Md5) && !no_clear.allows(AuthMethod::Password));
        let list = RequireAuth::parse("md5,none").unwrap();
        assert!(list.allows(AuthMethod::None) && !list.allows(AuthMethod::ScramSha256));
        for bad in [
            "scram",
            "md5,!password",
            "md5,md5",
            "!none,none",
            " md5",
            "md5,",
        ] {
            assert!(RequireAuth::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tracker_needs_a_finished_exchange() {
        let mut t = AuthTracker::new(RequireAuth::parse("scram-sha-256").unwrap());
        assert!(matches!(t.ok(), Err(AuthError::NotAuthenticated { .. })));
        t.request(AuthMethod::ScramSha256).unwrap();
        assert_eq!(t.ok(), Err(AuthError::ScramUnfinished));
        t.sasl_finished();
        t.ok().unwrap();
        let mut t = AuthTracker::new(RequireAuth::default());
        t.request(AuthMethod::ScramSha256).unwrap();
        assert_eq!(
            t.ok(),
            Err(AuthError::ScramUnfinished),
            "even without require_auth"
        );
    }

    #[test]
    fn guard_reads_requests_split_anywhere() {
        // N (no TLS), then AuthenticationCleartextPassword, byte by byte.
        let mut g = AuthGuard::raw((), RequireAuth::parse("!password").unwrap());
        g.state = GuardState::SslAnswer;
        let bytes = [b'N', b'R', 0, 0, 0, 8, 0, 0, 0, 3];
        let result = bytes.iter().try_for_each(|b| g.inspect(&[*b]));
        assert!(matches!(
            result,
            Err(GuardError::Auth(AuthError::MethodNotAllowed { .. }))
        ));
        // SASL with a mechanism list, continue, final, OK in one read: allowed.
        let mut g = tls_guard("scram-sha-256", Ok(vec![1; 32]), ChannelBinding::Prefer);
        let mut stream = vec![b'R', 0, 0, 0, 23, 0, 0, 0, 10];
        stream.extend_from_slice(b"SCRAM-SHA-256\0\0");
        stream.extend_from_slice(&[b'R', 0, 0, 0, 10, 0, 0, 0, 11, b'x', b'y']);
        stream.extend_from_slice(&[b'R', 0, 0, 0, 9, 0, 0, 0, 12, b'z']);
        stream.extend_from_slice(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
        g.inspect(&stream).unwrap();
        assert!(matches!(g.state, GuardState::Done));
        // Straight to OK when a method is required.
        let mut g = tls_guard("scram-sha-256", Ok(vec![1; 32]), ChannelBinding::Prefer);
        assert!(g.inspect(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]).is_err());
    }

    fn tls_guard(
        policy: &str,
        end_point: Result<Vec<u8>, String>,
        binding: ChannelBinding,
    ) -> AuthGuard<()> {
        AuthGuard::inside_tls((), RequireAuth::parse(policy).unwrap(), end_point, binding)
    }

    #[test]
    fn only_s_and_n_answer_the_ssl_request() {
        assert_eq!(ssl_answer(b'S'), Ok(SslAnswer::Tls));
        assert_eq!(ssl_answer(b'N'), Ok(SslAnswer::Plain));
        for byte in [b'X', b's', b'n', 0, b'E', 0xff] {
            assert_eq!(ssl_answer(byte), Err(SslAnswerError { byte }));
        }
        assert!(SslAnswerError { byte: b'X' }
            .to_string()
            .starts_with("the server answered the TLS request with 0x58, neither S nor N"));
        // Without any require_auth, the guard still refuses the odd answer.
        let mut g = AuthGuard::raw((), RequireAuth::default());
        g.state = GuardState::SslAnswer;
        assert!(matches!(
            g.inspect(&[b'X', b'R', 0, 0, 0, 8, 0, 0, 0, 3]),
            Err(GuardError::SslAnswer(SslAnswerError { byte: b'X' }))
        ));
    }

    #[test]
    fn message_lengths_are_bounded() {
        check_message_length(b'R', MAX_PREAUTH_MESSAGE, false).unwrap();
        let e = check_message_length(b'R', MAX_PREAUTH_MESSAGE + 1, false).unwrap_err();
        assert_eq!((e.tag, e.limit), ('R', MAX_PREAUTH_MESSAGE));
        check_message_length(b'd', MAX_PREAUTH_MESSAGE + 1, true).unwrap();
        check_message_length(b'd', MAX_MESSAGE, true).unwrap();
        assert!(check_message_length(b'd', MAX_MESSAGE + 1, true).is_err());
        assert!(check_message_length(b'd', i32::MAX as u32, true).is_err());
        // The guard stops a 2 GiB claim at its header, before authentication.
        let mut g = AuthGuard::raw((), RequireAuth::default());
        assert!(matches!(
            g.inspect(&[b'E', 0x7f, 0xff, 0xff, 0xff]),
            Err(GuardError::TooLong(MessageTooLong { tag: 'E', .. }))
        ));
    }

    #[test]
    fn an_unbindable_certificate_refuses_scram_plus_unless_disabled() {
        let mut sasl = vec![b'R', 0, 0, 0, 42, 0, 0, 0, 10];
        sasl.extend_from_slice(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        assert_eq!(sasl.len(), 43);
        for binding in [ChannelBinding::Prefer, ChannelBinding::Require] {
            let mut g = tls_guard("", Err("Ed25519".into()), binding);
            // Split anywhere: the list is read whole.
            let result = sasl.iter().try_for_each(|b| g.inspect(&[*b]));
            match result {
                Err(GuardError::Auth(AuthError::ChannelBindingUnavailable { algorithm })) => {
                    assert_eq!(algorithm, "Ed25519")
                }
                other => panic!("{binding:?}: {other:?}"),
            }
        }
        let mut g = tls_guard("", Err("Ed25519".into()), ChannelBinding::Disable);
        g.inspect(&sasl).unwrap();
        assert!(g.end_point().is_none());
        // Without the PLUS offer, plain SCRAM is what the server wants anyway.
        let mut g = tls_guard("", Err("Ed25519".into()), ChannelBinding::Prefer);
        let mut plain = vec![b'R', 0, 0, 0, 23, 0, 0, 0, 10];
        plain.extend_from_slice(b"SCRAM-SHA-256\0\0");
        g.inspect(&plain).unwrap();
        // With a hash, PLUS is fine.
        let mut g = tls_guard("", Ok(vec![7; 32]), ChannelBinding::Prefer);
        g.inspect(&sasl).unwrap();
        assert_eq!(g.end_point(), Some(&[7u8; 32][..]));
    }
}
