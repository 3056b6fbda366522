//! Rate-limited reporting of a background loop's failures: the first failure of a stretch is
//! a warning (visible at the default log level), repeats are debug lines until the loop
//! succeeds again, and the recovery is one info line. A loop that fails every tick therefore
//! neither floods the log nor fails silently.

use std::fmt::Display;

use tracing::{debug, info, warn};

/// The failure state of one background loop.
#[derive(Debug)]
pub struct FailureLog {
    what: &'static str,
    failing: bool,
}

impl FailureLog {
    /// `what` names the loop's work, e.g. "reading due stores".
    pub const fn new(what: &'static str) -> FailureLog {
        FailureLog {
            what,
            failing: false,
        }
    }

    pub fn failed(&mut self, error: &dyn Display) {
        if self.failing {
            debug!(error = %error, "{} still failing", self.what);
        } else {
            warn!(error = %error, "{} failed; will retry", self.what);
            self.failing = true;
        }
    }

    pub fn succeeded(&mut self) {
        if self.failing {
            info!("{} works again", self.what);
            self.failing = false;
        }
    }

    /// Reports `result`'s error, or its success.
    pub fn track<T, E: Display>(&mut self, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(value) => {
                self.succeeded();
                Some(value)
            }
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    pub fn is_failing(&self) -> bool {
        self.failing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_once_per_stretch() {
        let mut log = FailureLog::new("testing");
        assert_eq!(log.track::<(), _>(Err("x")), None);
        assert!(log.is_failing());
        assert_eq!(log.track::<(), _>(Err("y")), None);
        assert_eq!(log.track::<u8, &str>(Ok(3)), Some(3));
        assert!(!log.is_failing());
    }
}
