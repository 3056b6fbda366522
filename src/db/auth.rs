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
    /// Skipping the rest of a message body.
    Skip(usize),
    /// Authentication is over (or TLS took over the stream): pass everything through.
    Done,
}

/// A stream that checks the server's authentication requests against `require_auth` (see the
/// module doc). Wraps the raw socket (which it stops watching when TLS starts) and, with TLS,
/// the TLS stream.
#[derive(Debug)]
pub struct AuthGuard<S> {
    inner: S,
    tracker: AuthTracker,
    state: GuardState,
}

impl<S> AuthGuard<S> {
    /// Around the socket, before anything was sent.
    pub fn raw(inner: S, policy: RequireAuth) -> AuthGuard<S> {
        Self::with_state(inner, policy, GuardState::Start)
    }

    /// Around a TLS stream that has just been set up.
    pub fn inside_tls(inner: S, policy: RequireAuth) -> AuthGuard<S> {
        Self::with_state(
            inner,
            policy,
            GuardState::Header {
                bytes: [0; 9],
                have: 0,
            },
        )
    }

    fn with_state(inner: S, policy: RequireAuth, state: GuardState) -> AuthGuard<S> {
        let state = if policy.is_set() {
            state
        } else {
            GuardState::Done
        };
        AuthGuard {
            inner,
            tracker: AuthTracker::new(policy),
            state,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Follows the bytes the server sent.
    fn inspect(&mut self, mut data: &[u8]) -> Result<(), AuthError> {
        while !data.is_empty() {
            match &mut self.state {
                GuardState::Done => return Ok(()),
                // Reading before writing: not the SSLRequest flow.
                GuardState::Start => {
                    self.state = GuardState::Header {
                        bytes: [0; 9],
                        have: 0,
                    }
                }
                GuardState::SslAnswer => {
                    self.state = if data[0] == b'N' {
                        GuardState::Header {
                            bytes: [0; 9],
                            have: 0,
                        }
                    } else {
                        // 'S': TLS follows, watched by the guard inside it. Anything else is
                        // a protocol error tokio-postgres reports.
                        GuardState::Done
                    };
                    data = &data[1..];
                }
                GuardState::Skip(n) => {
                    let k = (*n).min(data.len());
                    *n -= k;
                    data = &data[k..];
                    if *n == 0 {
                        self.state = GuardState::Header {
                            bytes: [0; 9],
                            have: 0,
                        };
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
                    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
                    if tag == b'R' && *have == 5 {
                        continue; // read the request code too
                    }
                    let body_left = len.saturating_sub(if tag == b'R' { 8 } else { 4 });
                    let code = i32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
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
                            }
                        },
                        // An error ends the exchange; tokio-postgres reports it.
                        b'E' => {
                            self.state = GuardState::Done;
                            return Ok(());
                        }
                        _ => {}
                    }
                    self.state = if body_left == 0 {
                        GuardState::Header {
                            bytes: [0; 9],
                            have: 0,
                        }
                    } else {
                        GuardState::Skip(body_left)
                    };
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
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::PermissionDenied,
                            e,
                        )));
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
                GuardState::Header {
                    bytes: [0; 9],
                    have: 0,
                }
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
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(auth) = e.downcast_ref::<AuthError>() {
            return Some(auth);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(auth) = inner.downcast_ref::<AuthError>() {
                    return Some(auth);
                }
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
        let result: Result<(), AuthError> = bytes.iter().try_for_each(|b| g.inspect(&[*b]));
        assert!(matches!(result, Err(AuthError::MethodNotAllowed { .. })));
        // SASL with a mechanism list, continue, final, OK in one read: allowed.
        let mut g = AuthGuard::inside_tls((), RequireAuth::parse("scram-sha-256").unwrap());
        let mut stream = vec![b'R', 0, 0, 0, 23, 0, 0, 0, 10];
        stream.extend_from_slice(b"SCRAM-SHA-256\0\0");
        stream.extend_from_slice(&[b'R', 0, 0, 0, 10, 0, 0, 0, 11, b'x', b'y']);
        stream.extend_from_slice(&[b'R', 0, 0, 0, 9, 0, 0, 0, 12, b'z']);
        stream.extend_from_slice(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]);
        g.inspect(&stream).unwrap();
        assert!(matches!(g.state, GuardState::Done));
        // Straight to OK when a method is required.
        let mut g = AuthGuard::inside_tls((), RequireAuth::parse("scram-sha-256").unwrap());
        assert!(g.inspect(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0]).is_err());
    }
}
