//! Fault injection: the decision per request, and a listener whose connections can be
//! reset (TCP RST, no response bytes) from inside a handler.
//!
//! A reset works like this: every accepted stream is wrapped in [`ResetIo`], which
//! shares a flag with the [`ConnHandle`] handed to handlers as connect info. A
//! handler that wants the connection gone sets the flag and returns any response;
//! writing that response fails, hyper drops the connection, and dropping the
//! flagged stream first sets `SO_LINGER` to zero so the kernel sends RST instead of
//! an orderly FIN.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::config::{FaultScope, Faults};
use super::limits::{retry_after_secs, Endpoint};

/// What the faults decided for one request.
#[derive(Debug, Default)]
pub(crate) struct FaultPlan {
    pub latency: Duration,
    /// Reset the connection: `Some(false)` before processing, `Some(true)` after.
    pub reset: Option<bool>,
    /// Forced 429 with this Retry-After (seconds).
    pub throttle: Option<u64>,
    /// A forced 429's Retry-After / X-RateLimit-Reset text, verbatim.
    pub throttle_header: Option<String>,
    /// Forced answer with this status (body echoing the credentials).
    pub status: Option<u16>,
    pub error: bool,
}

pub(crate) fn plan(faults: &Faults, endpoint: Endpoint, now: DateTime<Utc>) -> FaultPlan {
    let applies = match faults.scope {
        FaultScope::All => true,
        FaultScope::Push => endpoint == Endpoint::Push,
        FaultScope::Status => endpoint == Endpoint::Status,
        FaultScope::Read => endpoint == Endpoint::Read,
    };
    if !applies {
        return FaultPlan::default();
    }
    let mut rng = rand::thread_rng();
    let mut roll = |rate: f64| rate > 0.0 && (rate >= 1.0 || rng.gen::<f64>() < rate);
    let reset = roll(faults.reset_rate).then_some(faults.reset_after_apply);
    let throttle =
        match faults.throttle_until {
            Some(until) if until > now => Some(faults.retry_after_secs.unwrap_or_else(|| {
                retry_after_secs((until - now).to_std().unwrap_or(Duration::ZERO))
            })),
            _ => None,
        };
    let error = roll(faults.error_rate);
    let status = faults
        .status
        .filter(|_| faults.status_until.is_none_or(|until| until > now));
    FaultPlan {
        latency: Duration::from_millis(faults.latency_ms),
        reset,
        throttle,
        throttle_header: faults.retry_after_header.clone(),
        status,
        error,
    }
}

/// Per-connection handle given to handlers as `ConnectInfo<ConnHandle>`.
#[derive(Clone, Debug)]
pub(crate) struct ConnHandle {
    reset: Arc<AtomicBool>,
    pub peer: SocketAddr,
}

impl ConnHandle {
    /// Marks the connection to be reset: the pending response is never written.
    pub(crate) fn reset(&self) {
        self.reset.store(true, Ordering::SeqCst);
    }
}

/// A TCP stream that fails all I/O once its connection is marked for reset and
/// closes with RST when dropped in that state.
pub(crate) struct ResetIo {
    inner: TcpStream,
    handle: ConnHandle,
}

impl ResetIo {
    fn flagged(&self) -> bool {
        self.handle.reset.load(Ordering::SeqCst)
    }
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "mock: injected reset")
}

impl Drop for ResetIo {
    fn drop(&mut self) {
        if self.flagged() {
            let _ = socket2::SockRef::from(&self.inner).set_linger(Some(Duration::ZERO));
        }
    }
}

impl AsyncRead for ResetIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.flagged() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResetIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.flagged() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.flagged() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.flagged() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.flagged() {
            return Poll::Ready(Err(reset_error()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The mock's listener: a TCP listener producing [`ResetIo`] streams.
pub(crate) struct MockListener {
    inner: TcpListener,
}

impl MockListener {
    pub(crate) fn new(inner: TcpListener) -> Self {
        MockListener { inner }
    }
}

impl Listener for MockListener {
    type Io = ResetIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let handle = ConnHandle {
                        reset: Arc::new(AtomicBool::new(false)),
                        peer,
                    };
                    return (
                        ResetIo {
                            inner: stream,
                            handle,
                        },
                        peer,
                    );
                }
                Err(e) => {
                    // Resource exhaustion (EMFILE etc.): back off instead of spinning.
                    tracing::warn!(error = %e, "mock marketplace: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl Connected<IncomingStream<'_, MockListener>> for ConnHandle {
    fn connect_info(stream: IncomingStream<'_, MockListener>) -> Self {
        stream.io().handle.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_limits_the_faults_to_its_endpoints() {
        let now = Utc::now();
        let held = |scope, endpoint| {
            let faults = Faults {
                latency_ms: 50,
                scope,
                ..Faults::default()
            };
            !plan(&faults, endpoint, now).latency.is_zero()
        };
        let endpoints = [Endpoint::Push, Endpoint::Status, Endpoint::Read];
        for (scope, hit) in [
            (FaultScope::All, [true, true, true]),
            (FaultScope::Push, [true, false, false]),
            (FaultScope::Status, [false, true, false]),
            (FaultScope::Read, [false, false, true]),
        ] {
            let got = endpoints.map(|e| held(scope, e));
            assert_eq!(got, hit, "{scope:?}");
        }
    }
}
