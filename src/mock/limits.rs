//! Request-rate limiter (sliding window log) and Trendyol's identical-body window.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::config::{Marketplace, RateLimit};

/// The endpoints the limiter tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Endpoint {
    Push,
    Status,
    /// Listings read back (Trendyol stock read, Hepsiburada listings).
    Read,
}

impl Endpoint {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Endpoint::Push => "push",
            Endpoint::Status => "status",
            Endpoint::Read => "read",
        }
    }
}

type LimitKey = (Marketplace, String, Endpoint);

/// At most `max_requests` admitted requests in any `window` per key. Refused requests
/// are not counted, so `Retry-After` is exact.
pub(crate) struct RateLimiter {
    limit: RateLimit,
    hits: HashMap<LimitKey, VecDeque<Instant>>,
}

impl RateLimiter {
    pub(crate) fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            hits: HashMap::new(),
        }
    }

    /// Admits the request, or returns how long until a slot frees.
    pub(crate) fn check(
        &mut self,
        marketplace: Marketplace,
        seller_id: &str,
        endpoint: Endpoint,
        now: Instant,
    ) -> Result<(), Duration> {
        let window = self.limit.window;
        let q = self
            .hits
            .entry((marketplace, seller_id.to_string(), endpoint))
            .or_default();
        while q
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            q.pop_front();
        }
        if q.len() >= self.limit.max_requests as usize {
            let oldest = *q.front().expect("non-empty when full");
            return Err((oldest + window).saturating_duration_since(now));
        }
        q.push_back(now);
        Ok(())
    }

    pub(crate) fn clear(&mut self) {
        self.hits.clear();
    }
}

/// Seconds for a `Retry-After` header: rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// Remembers accepted Trendyol bodies (by SHA-256 of the raw bytes) per seller; the
/// window starts at the last *accepted* identical body (refused repeats do not
/// extend it).
pub(crate) struct IdenticalWindow {
    window: Duration,
    seen: HashMap<String, HashMap<[u8; 32], Instant>>,
}

impl IdenticalWindow {
    pub(crate) fn new(window: Duration) -> Self {
        IdenticalWindow {
            window,
            seen: HashMap::new(),
        }
    }

    /// Is this body a repeat of one accepted within the window?
    pub(crate) fn is_repeat(&mut self, seller_id: &str, hash: &[u8; 32], now: Instant) -> bool {
        if self.window.is_zero() {
            return false;
        }
        let window = self.window;
        let Some(per_seller) = self.seen.get_mut(seller_id) else {
            return false;
        };
        per_seller.retain(|_, t| now.saturating_duration_since(*t) < window);
        per_seller.contains_key(hash)
    }

    pub(crate) fn remember(&mut self, seller_id: &str, hash: [u8; 32], now: Instant) {
        if self.window.is_zero() {
            return;
        }
        self.seen
            .entry(seller_id.to_string())
            .or_default()
            .insert(hash, now);
    }

    pub(crate) fn clear(&mut self) {
        self.seen.clear();
    }
}
