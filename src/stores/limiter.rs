//! The limits a store's requests obey, in one place, kept in the database (every request is
//! recorded in `stock_sync.sent_requests` *before* it leaves) so they hold across restarts,
//! crashes and instances:
//!
//! * `not_before` (a Retry-After, or a backoff after failures) and `min_send_interval`
//!   since the last push: checked before anything is claimed ([`Limiter::admit`]);
//! * `rate_limit_requests` per `rate_limit_window` per endpoint;
//! * the marketplace's per-minute caps per service group ([`ServiceGroup`]: Trendyol writes
//!   and reads, Hepsiburada listing reads), shared by every endpoint of the group;
//! * an optional share of a group's cap for one endpoint (reconciliation reads leave the rest
//!   of the read budget to batch-result polling);
//! * no byte-identical body within `identical_request_window` ([`Limiter::identical_body_wait`]);
//!   a body the marketplace answered with a refusal stops counting for this rule
//!   ([`Limiter::forget_body`]), a lost answer keeps counting (it may have been taken).

use std::collections::HashMap;
use std::time::Duration;

use tokio_postgres::GenericClient;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::gates::OpenStore;
use super::StoreError;
use crate::marketplace::{Endpoint, ServiceGroup};
use crate::metrics::metrics;

/// The rules a request can wait for (the `rule` label of `stocksync_rate_limit_waits_total`).
pub const RULES: [&str; 6] = [
    "min_send_interval",
    "open_uploads",
    "rate_limit",
    "per_minute_cap",
    "read_share",
    "identical_body",
];

/// Slack added to every window: a request is recorded a moment before it arrives, so
/// without it the marketplace could count one more in its window.
const WINDOW_SLACK: Duration = Duration::from_millis(250);
/// The window of the per-minute caps.
const MINUTE: Duration = Duration::from_secs(60);

/// Requests of store `$1` to any of the endpoints `$2` within the last `$3` seconds, and how
/// many seconds until the oldest of them leaves the window.
const WINDOW_SQL: &str = r#"
SELECT count(*),
       COALESCE(EXTRACT(EPOCH FROM min(sent_at) + make_interval(secs => $3::float8) - now())::float8, 0)
FROM stock_sync.sent_requests
WHERE store_id = $1 AND endpoint = ANY($2::text[])
  AND sent_at > now() - make_interval(secs => $3::float8)
"#;

/// Seconds until a body with this hash may be sent to the store again; no row when it may
/// be sent now.
const IDENTICAL_BODY_SQL: &str = r#"
SELECT EXTRACT(EPOCH FROM max(sent_at) + make_interval(secs => $3::float8) - now())::float8
FROM stock_sync.sent_requests
WHERE store_id = $1 AND body_sha256 = $2 AND sent_at > now() - make_interval(secs => $3::float8)
HAVING count(*) > 0
"#;

/// Written before the request goes out. A push (`$4`) also moves the store's last request
/// time (for `min_send_interval`).
const RECORD_SQL: &str = r#"
WITH recorded AS (
    INSERT INTO stock_sync.sent_requests (store_id, endpoint, body_sha256) VALUES ($1, $2, $3)
    RETURNING id
), touched AS (
    UPDATE stock_sync.store_state SET last_request_at = now() WHERE store_id = $1 AND $4
)
SELECT id FROM recorded
"#;

/// The marketplace answered that it did not take the body (429, 401/403, a 400, a 5xx): it
/// still counts for the rate limits, but not for the identical-body rule, so the retry of the
/// same body is not held back for a whole window.
const FORGET_BODY_SQL: &str =
    "UPDATE stock_sync.sent_requests SET body_sha256 = NULL WHERE id = $1";

/// Sent requests older than every limiter window (`$1` seconds) are no longer needed.
const PRUNE_SQL: &str =
    "DELETE FROM stock_sync.sent_requests WHERE sent_at < now() - make_interval(secs => $1::float8)";

/// The limits, from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSettings {
    pub rate_limit_requests: u32,
    pub rate_limit_window: Duration,
    pub identical_request_window: Duration,
    pub min_send_interval: Duration,
    /// Requests per minute per service group (absent: not capped).
    pub per_minute: HashMap<ServiceGroup, u32>,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            rate_limit_requests: 50,
            rate_limit_window: Duration::from_secs(10),
            identical_request_window: Duration::from_secs(15 * 60),
            min_send_interval: Duration::ZERO,
            per_minute: HashMap::from([
                (ServiceGroup::TrendyolWrite, 350),
                (ServiceGroup::TrendyolRead, 1000),
                (ServiceGroup::HepsiburadaRead, 240),
            ]),
        }
    }
}

/// Which kind of request is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A stock push: also the store's last request (`min_send_interval`).
    Push,
    /// A batch-result or listing read.
    Read,
}

/// A part of a group's per-minute cap one endpoint may use (e.g. reconciliation's reads).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    pub endpoint: Endpoint,
    pub per_minute: u32,
}

/// One limit to check: requests to `endpoints` within `window`, at most `max`.
struct Limit<'a> {
    rule: &'static str,
    endpoints: Vec<&'a str>,
    max: u32,
    window: Duration,
}

/// The limits of one store.
pub struct Limiter<'a> {
    settings: &'a LimitSettings,
    store: Uuid,
    label: String,
}

impl<'a> Limiter<'a> {
    pub fn new(settings: &'a LimitSettings, store: Uuid) -> Limiter<'a> {
        let label = store.to_string();
        // Every rule's series exists (at 0) once the store is dispatched to.
        for rule in RULES {
            metrics()
                .rate_limit_waits
                .with_label_values(&[&label, rule]);
        }
        Limiter {
            settings,
            store,
            label,
        }
    }

    /// Counts a wait for `rule` in `stocksync_rate_limit_waits_total`.
    pub fn waited(&self, rule: &str) {
        debug_assert!(RULES.contains(&rule), "rule {rule} missing from RULES");
        metrics()
            .rate_limit_waits
            .with_label_values(&[&self.label, rule])
            .inc();
    }

    /// Whether the store may be sent to now: no backoff or Retry-After running, and the
    /// minimum gap since the last push over.
    pub fn admit(&self, store: &OpenStore) -> bool {
        if store.state.backing_off {
            return false;
        }
        if store.state.too_soon {
            self.waited("min_send_interval");
            return false;
        }
        true
    }

    fn limits(&self, endpoint: Endpoint, share: Option<Share>) -> Vec<Limit<'static>> {
        let mut limits = vec![Limit {
            rule: "rate_limit",
            endpoints: vec![endpoint.as_str()],
            max: self.settings.rate_limit_requests,
            window: self.settings.rate_limit_window,
        }];
        if let Some(group) = endpoint.group() {
            if let Some(cap) = self.settings.per_minute.get(&group) {
                limits.push(Limit {
                    rule: "per_minute_cap",
                    endpoints: group.endpoints(),
                    max: *cap,
                    window: MINUTE,
                });
            }
        }
        if let Some(share) = share.filter(|s| s.endpoint == endpoint) {
            limits.push(Limit {
                rule: "read_share",
                endpoints: vec![endpoint.as_str()],
                max: share.per_minute,
                window: MINUTE,
            });
        }
        limits
    }

    /// `None` when one more request to `endpoint` fits every limit now, else how long until
    /// it may (the longest wait of the limits that are full) and which rule said so.
    pub async fn slot_wait(
        &self,
        db: &impl GenericClient,
        endpoint: Endpoint,
        share: Option<Share>,
    ) -> Result<Option<(Duration, &'static str)>, StoreError> {
        let mut longest: Option<(Duration, &'static str)> = None;
        for limit in self.limits(endpoint, share) {
            let window = (limit.window + WINDOW_SLACK).as_secs_f64();
            let row = db
                .query_one(WINDOW_SQL, &[&self.store, &limit.endpoints, &window])
                .await?;
            let count: i64 = row.get(0);
            if count >= i64::from(limit.max.max(1)) {
                let wait = Duration::from_secs_f64(row.get::<_, f64>(1).clamp(0.01, window));
                if longest.is_none_or(|(w, _)| wait > w) {
                    longest = Some((wait, limit.rule));
                }
            }
        }
        Ok(longest)
    }

    /// Waits until one more request to `endpoint` fits every limit. False when stopped first.
    pub async fn wait_for_slot(
        &self,
        db: &impl GenericClient,
        endpoint: Endpoint,
        share: Option<Share>,
        stop: &CancellationToken,
    ) -> Result<bool, StoreError> {
        while let Some((wait, rule)) = self.slot_wait(db, endpoint, share).await? {
            self.waited(rule);
            tokio::select! {
                _ = stop.cancelled() => return Ok(false),
                _ = tokio::time::sleep(wait) => {}
            }
        }
        Ok(true)
    }

    /// `None` when a body with this hash may be sent now, else how long until it may.
    pub async fn identical_body_wait(
        &self,
        db: &impl GenericClient,
        body_sha256: &str,
    ) -> Result<Option<Duration>, StoreError> {
        let window = self.identical_window().as_secs_f64();
        let wait: Option<f64> = db
            .query_opt(IDENTICAL_BODY_SQL, &[&self.store, &body_sha256, &window])
            .await?
            .and_then(|r| r.get(0));
        Ok(wait.map(|w| Duration::from_secs_f64(w.max(0.0) + 0.01)))
    }

    /// The identical-body window, with the slack our early record needs.
    pub fn identical_window(&self) -> Duration {
        self.settings.identical_request_window + WINDOW_SLACK
    }

    /// Records a request about to leave. Returns its id (for [`Limiter::forget_body`]).
    pub async fn record(
        &self,
        db: &impl GenericClient,
        endpoint: Endpoint,
        kind: RequestKind,
        body_sha256: Option<&str>,
    ) -> Result<i64, StoreError> {
        let push = kind == RequestKind::Push;
        Ok(db
            .query_one(
                RECORD_SQL,
                &[&self.store, &endpoint.as_str(), &body_sha256, &push],
            )
            .await?
            .get(0))
    }

    /// The marketplace did not take request `id`'s body: it no longer counts as identical.
    pub async fn forget_body(&self, db: &impl GenericClient, id: i64) -> Result<(), StoreError> {
        db.execute(FORGET_BODY_SQL, &[&id]).await?;
        Ok(())
    }
}

/// Deletes request records older than every window.
pub async fn prune(db: &impl GenericClient, settings: &LimitSettings) -> Result<u64, StoreError> {
    let kept = settings
        .identical_request_window
        .max(settings.rate_limit_window)
        .max(settings.min_send_interval)
        .max(MINUTE)
        + Duration::from_secs(3600);
    Ok(db.execute(PRUNE_SQL, &[&kept.as_secs_f64()]).await?)
}
