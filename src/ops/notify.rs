//! systemd's notification protocol (`sd_notify(3)`), for `Type=notify` units: `READY=1` once
//! the service can do its work, `STOPPING=1` when it begins to stop, `STATUS=` a line for
//! `systemctl status`, and `WATCHDOG=1` keep-alives when the unit sets `WatchdogSec=`.
//!
//! The protocol is one datagram per message to the unix socket named by `NOTIFY_SOCKET`
//! (a path, or `@name` for the abstract namespace). Without that variable (not under systemd,
//! tests, the demo) every call does nothing. Sending never blocks and its errors are ignored:
//! a notification is advice to the service manager, never a reason to fail.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where notifications go, if anywhere.
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
}

impl Notifier {
    /// The notifier for this process (`NOTIFY_SOCKET`); a no-op one outside systemd.
    pub fn from_env() -> Notifier {
        Notifier {
            socket: std::env::var("NOTIFY_SOCKET")
                .ok()
                .filter(|path| !path.is_empty())
                .and_then(|path| Some((UnixDatagram::unbound().ok()?, path))),
        }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends `state` (newline-separated `KEY=VALUE` assignments).
    pub fn notify(&self, state: &str) {
        let Some((socket, path)) = &self.socket else {
            return;
        };
        let _ = socket.set_nonblocking(true);
        let sent = match path.strip_prefix('@') {
            Some(name) => send_abstract(socket, name, state.as_bytes()),
            None => socket.send_to(state.as_bytes(), path).map(|_| ()),
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "telling systemd (sd_notify) failed");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// A status line for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }

    /// A watchdog keep-alive.
    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }
}

/// How often to send `WATCHDOG=1`: half the interval the unit asks for (`WATCHDOG_USEC`,
/// when `WATCHDOG_PID` is unset or names this process), as `sd_watchdog_enabled(3)` advises.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec) / 2)
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, name: &str, message: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    socket.send_to_addr(message, &addr).map(|_| ())
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &str, _: &[u8]) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets are Linux only",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_on_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("stocksync-notify-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            socket: Some((
                UnixDatagram::unbound().unwrap(),
                path.to_string_lossy().into_owned(),
            )),
        };
        notifier.ready("streaming slot\nstock_sync");
        notifier.watchdog();
        notifier.stopping("stopping");
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for _ in 0..3 {
            let n = listener.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(
            got,
            [
                "READY=1\nSTATUS=streaming slot stock_sync",
                "WATCHDOG=1",
                "STOPPING=1\nSTATUS=stopping"
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn messages_arrive_on_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("stocksync-notify-{}", uuid::Uuid::new_v4());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier {
            socket: Some((UnixDatagram::unbound().unwrap(), format!("@{name}"))),
        };
        notifier.status("standing by");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=standing by");
    }

    #[test]
    fn the_watchdog_interval_is_half_the_units() {
        assert_eq!(
            watchdog_interval_from(Some("60000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval_from(Some("60000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(watchdog_interval_from(Some("60000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
    }

    #[test]
    fn nothing_happens_without_a_socket() {
        let notifier = Notifier { socket: None };
        assert!(!notifier.enabled());
        notifier.ready("x");
    }
}
