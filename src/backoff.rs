//! One exponential backoff for every retry loop (capture and dispatch reconnects, a store's
//! marketplace failures, the batch poller, the limiter's waits), on the `backon` crate.
//!
//! A [`BackoffPolicy`] is a named constant where it is used (its first delay and cap say
//! why); a [`Backoff`] is one running sequence of delays. Delays double from `first` up to
//! `cap`; with jitter each is stretched by a random factor in [1, 2), so instances that failed
//! together do not retry together (a jittered delay is therefore at most twice the cap).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// How delays grow.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    pub first: Duration,
    pub cap: Duration,
    pub jitter: bool,
}

impl BackoffPolicy {
    /// Doubling from `first` to `cap`, jittered.
    pub const fn new(first: Duration, cap: Duration) -> BackoffPolicy {
        BackoffPolicy {
            first,
            cap,
            jitter: true,
        }
    }

    /// The same without jitter (deterministic; for waits that only one party takes).
    pub const fn exact(first: Duration, cap: Duration) -> BackoffPolicy {
        BackoffPolicy {
            first,
            cap,
            jitter: false,
        }
    }

    fn builder(self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::new()
            .with_min_delay(self.first)
            .with_max_delay(self.cap)
            .with_factor(2.0)
            .without_max_times();
        if self.jitter {
            builder.with_jitter()
        } else {
            builder
        }
    }

    /// A new sequence, starting at `first`.
    pub fn start(self) -> Backoff {
        Backoff {
            policy: self,
            delays: self.builder().build(),
        }
    }

    /// The delay after `failures` consecutive failures (1 = the first delay), for state kept
    /// elsewhere (a store's failure count lives in the database).
    pub fn delay_after(self, failures: u32) -> Duration {
        let mut delays = self.builder().build();
        let mut delay = self.first;
        // Past 64 doublings every delay is the cap; no need to walk further.
        for _ in 0..failures.clamp(1, 64) {
            delay = delays.next().unwrap_or(self.cap);
        }
        delay
    }
}

/// A running sequence of delays.
#[derive(Debug)]
pub struct Backoff {
    policy: BackoffPolicy,
    delays: ExponentialBackoff,
}

impl Backoff {
    /// The next delay (the sequence never ends; it stays at the cap).
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.policy.cap)
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.delays = self.policy.builder().build();
    }

    pub fn policy(&self) -> BackoffPolicy {
        self.policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn exact_delays_double_up_to_the_cap_and_reset() {
        let mut b = BackoffPolicy::exact(S, 8 * S).start();
        let delays: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        assert_eq!(delays, vec![S, 2 * S, 4 * S, 8 * S, 8 * S, 8 * S]);
        b.reset();
        assert_eq!(b.next_delay(), S);
    }

    #[test]
    fn jitter_stays_within_one_extra_delay() {
        let policy = BackoffPolicy::new(S, 8 * S);
        for failures in 1..10u32 {
            let base = BackoffPolicy::exact(S, 8 * S).delay_after(failures);
            let d = policy.delay_after(failures);
            assert!(d >= base && d <= 2 * base, "{failures}: {d:?} vs {base:?}");
        }
    }

    #[test]
    fn delay_after_counts_failures() {
        let p = BackoffPolicy::exact(S, 120 * S);
        assert_eq!(p.delay_after(0), S);
        assert_eq!(p.delay_after(1), S);
        assert_eq!(p.delay_after(3), 4 * S);
        assert_eq!(p.delay_after(u32::MAX), 120 * S);
    }
}
