//! The limits a store's requests obey, in one place, kept in the database so they hold across
//! restarts and instances:
//!
//! * `not_before` (a Retry-After, or a backoff after failures) and `min_send_interval`
//!   since the last push: checked before anything is claimed ([`Limiter::admit`]);
//! * at most [`MAX_OPEN_HEPSIBURADA_BATCHES`] Hepsiburada uploads with an open result;
//! * `rate_limit_requests` per `rate_limit_window` per endpoint ([`Limiter::wait_for_slot`]),
//!   counted in `stock_sync.sent_requests`, written *before* the request leaves;
//! * no byte-identical body within `identical_request_window` ([`Limiter::identical_body_wait`]);
//!   a body the marketplace answered with a refusal stops counting for this rule
//!   ([`Limiter::forget_body`]), a lost answer keeps counting (it may have been taken).

use std::time::Duration;

use tokio_postgres::GenericClient;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::gates::OpenStore;
use super::{batches, DispatchError, DispatchSettings};
use crate::marketplace::Provider;
use crate::metrics::metrics;

/// The rules a send can wait for (the `rule` label of `stocksync_rate_limit_waits_total`).
pub const RULES: [&str; 4] = [
    "min_send_interval",
    "open_uploads",
    "rate_limit",
    "identical_body",
];

/// Hepsiburada is said to keep at most five uploads per merchant in processing.
pub const MAX_OPEN_HEPSIBURADA_BATCHES: i64 = 5;

/// Slack added to the rate and identical-body windows: a request is recorded a moment before
/// it arrives, so without it the marketplace could count one more in its window.
const WINDOW_SLACK: Duration = Duration::from_millis(250);

/// Requests of a store to an endpoint within the last `$3` seconds, and how many seconds until
/// the oldest of them leaves the window.
const RATE_WINDOW_SQL: &str = r#"
SELECT count(*),
       COALESCE(EXTRACT(EPOCH FROM min(sent_at) + make_interval(secs => $3::float8) - now())::float8, 0)
FROM stock_sync.sent_requests
WHERE store_id = $1 AND endpoint = $2 AND sent_at > now() - make_interval(secs => $3::float8)
"#;

/// Seconds until a body with this hash may be sent to the store again; no row when it may
/// be sent now.
const IDENTICAL_BODY_SQL: &str = r#"
SELECT EXTRACT(EPOCH FROM max(sent_at) + make_interval(secs => $3::float8) - now())::float8
FROM stock_sync.sent_requests
WHERE store_id = $1 AND body_sha256 = $2 AND sent_at > now() - make_interval(secs => $3::float8)
HAVING count(*) > 0
"#;

/// Written before the request goes out, so the limits hold across crashes and instances. A
/// push (`$4`) also moves the store's last request time (for `min_send_interval`).
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
/// still counts for the rate limit, but not for the identical-body rule, so the retry of the
/// same body is not held back for a whole window.
const FORGET_BODY_SQL: &str =
    "UPDATE stock_sync.sent_requests SET body_sha256 = NULL WHERE id = $1";

/// Sent requests older than every limiter window (`$1` seconds) are no longer needed.
const PRUNE_SQL: &str =
    "DELETE FROM stock_sync.sent_requests WHERE sent_at < now() - make_interval(secs => $1::float8)";

/// The limits of one store.
pub(super) struct Limiter<'a> {
    settings: &'a DispatchSettings,
    store: Uuid,
    label: String,
}

/// Which kind of request is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestKind {
    /// A stock push: also the store's last request (min_send_interval).
    Push,
    /// A batch-result read.
    Status,
}

impl<'a> Limiter<'a> {
    pub fn new(settings: &'a DispatchSettings, store: Uuid) -> Limiter<'a> {
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

    fn waited(&self, rule: &str) {
        debug_assert!(RULES.contains(&rule), "rule {rule} missing from RULES");
        metrics()
            .rate_limit_waits
            .with_label_values(&[&self.label, rule])
            .inc();
    }

    /// Whether the store may be sent to now: no backoff or Retry-After running, the minimum
    /// gap since the last push over, and (Hepsiburada) room for another open upload.
    pub async fn admit(
        &self,
        db: &impl GenericClient,
        store: &OpenStore,
    ) -> Result<bool, DispatchError> {
        if store.state.backing_off {
            return Ok(false);
        }
        if store.state.too_soon {
            self.waited("min_send_interval");
            return Ok(false);
        }
        if store.provider == Provider::Hepsiburada
            && batches::open_batches(db, self.store).await? >= MAX_OPEN_HEPSIBURADA_BATCHES
        {
            self.waited("open_uploads");
            return Ok(false);
        }
        Ok(true)
    }

    /// `None` when one more request to `endpoint` fits the rate window now, else how long
    /// until the oldest request in the window leaves it.
    pub async fn window_wait(
        &self,
        db: &impl GenericClient,
        endpoint: &str,
    ) -> Result<Option<Duration>, DispatchError> {
        let window = (self.settings.rate_limit_window + WINDOW_SLACK).as_secs_f64();
        let limit = i64::from(self.settings.rate_limit_requests.max(1));
        let row = db
            .query_one(RATE_WINDOW_SQL, &[&self.store, &endpoint, &window])
            .await?;
        let count: i64 = row.get(0);
        Ok((count >= limit)
            .then(|| Duration::from_secs_f64(row.get::<_, f64>(1).clamp(0.01, window))))
    }

    /// Waits until one more request to `endpoint` fits. False when stopped first.
    pub async fn wait_for_slot(
        &self,
        db: &impl GenericClient,
        endpoint: &str,
        stop: &CancellationToken,
    ) -> Result<bool, DispatchError> {
        while let Some(wait) = self.window_wait(db, endpoint).await? {
            self.waited("rate_limit");
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
    ) -> Result<Option<Duration>, DispatchError> {
        let window = self.identical_window().as_secs_f64();
        let wait: Option<f64> = db
            .query_opt(IDENTICAL_BODY_SQL, &[&self.store, &body_sha256, &window])
            .await?
            .and_then(|r| r.get(0));
        Ok(wait.map(|w| Duration::from_secs_f64(w.max(0.0) + 0.01)))
    }

    /// Counts an identical-body deferral.
    pub fn deferred_identical(&self) {
        self.waited("identical_body");
    }

    /// The identical-body window, with the slack our early record needs.
    pub fn identical_window(&self) -> Duration {
        self.settings.identical_request_window + WINDOW_SLACK
    }

    /// Records a request about to leave. Returns its id (for [`Limiter::forget_body`]).
    pub async fn record(
        &self,
        db: &impl GenericClient,
        endpoint: &str,
        kind: RequestKind,
        body_sha256: Option<&str>,
    ) -> Result<i64, DispatchError> {
        let push = kind == RequestKind::Push;
        Ok(db
            .query_one(RECORD_SQL, &[&self.store, &endpoint, &body_sha256, &push])
            .await?
            .get(0))
    }

    /// The marketplace did not take request `id`'s body: it no longer counts as identical.
    pub async fn forget_body(&self, db: &impl GenericClient, id: i64) -> Result<(), DispatchError> {
        db.execute(FORGET_BODY_SQL, &[&id]).await?;
        Ok(())
    }
}

/// Deletes request records older than every window.
pub(super) async fn prune(
    db: &impl GenericClient,
    settings: &DispatchSettings,
) -> Result<u64, DispatchError> {
    let kept = settings
        .identical_request_window
        .max(settings.rate_limit_window)
        .max(settings.min_send_interval)
        + Duration::from_secs(3600);
    Ok(db.execute(PRUNE_SQL, &[&kept.as_secs_f64()]).await?)
}
