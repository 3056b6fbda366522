//! `stock_sync.store_state`, stocksync's row per store: pauses (and why, as a closed set),
//! the reason a store gets no requests, backoff and Retry-After (`not_before`, and why), the
//! last request and success, the batch size a 413 left.

use std::time::Duration;

use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::StoreError;
use crate::marketplace::FingerprintKey;

/// The install's fingerprint key (migration 013), written once when missing.
const FINGERPRINT_KEY_SQL: &str = "SELECT fingerprint_key FROM stock_sync.install";
const NEW_FINGERPRINT_KEY_SQL: &str =
    "INSERT INTO stock_sync.install (fingerprint_key) VALUES ($1) ON CONFLICT DO NOTHING";

/// A pause's fingerprint in an earlier version's form (`$2`), rewritten keyed (`$3`) once it
/// was found to name the same credentials.
const REWRITE_FINGERPRINT_SQL: &str = r#"
UPDATE stock_sync.store_state SET paused_credentials = $3
WHERE store_id = $1 AND paused_credentials = $2
"#;

const ENSURE_SQL: &str =
    "INSERT INTO stock_sync.store_state (store_id) VALUES ($1) ON CONFLICT DO NOTHING";

/// Pause and gates of a store: `$2` is min_send_interval in seconds.
const READ_SQL: &str = r#"
SELECT paused_reason, paused_credentials, pause_kind,
       COALESCE(not_before > now(), false) AS backing_off,
       COALESCE(last_request_at + make_interval(secs => $2::float8) > now(), false) AS too_soon,
       consecutive_failures, forbidden_count, batch_limit
FROM stock_sync.store_state WHERE store_id = $1
"#;

/// Remembers that a store's entries were closed without requests (`$2` why).
const MARK_GATED_SQL: &str = r#"
INSERT INTO stock_sync.store_state (store_id, gated_reason) VALUES ($1, $2)
ON CONFLICT (store_id) DO UPDATE SET gated_reason = EXCLUDED.gated_reason
"#;

const CLEAR_GATED_SQL: &str =
    "UPDATE stock_sync.store_state SET gated_reason = NULL WHERE store_id = $1";

/// Stores whose entries were closed as inactive / foreign / missing and that are now active
/// marketplace stores: their listings must be sent again.
const REOPENED_SQL: &str = r#"
SELECT st.store_id, st.gated_reason
FROM stock_sync.store_state st
JOIN stores s ON s.id = st.store_id
WHERE st.gated_reason IS NOT NULL
  AND s.is_active AND s.send_stock
  AND upper(btrim(s.type::text)) IN ('TRENDYOL', 'HEPSIBURADA')
"#;

/// Pauses a store (`$2` reason, `$3` kind, `$4` credential fingerprint): it is looked at again
/// after `$5` seconds (for changed credentials, or a forbidden store's probe). `$6` counts a
/// 403 (the probe's backoff doubles with it).
const PAUSE_SQL: &str = r#"
UPDATE stock_sync.store_state
SET paused_reason = $2, pause_kind = $3, paused_at = COALESCE(paused_at, now()),
    paused_credentials = $4, last_error = $2,
    not_before = now() + make_interval(secs => $5::float8),
    forbidden_count = forbidden_count + $6::int
WHERE store_id = $1
"#;

const RECHECK_LATER_SQL: &str = r#"
UPDATE stock_sync.store_state SET not_before = now() + make_interval(secs => $2::float8)
WHERE store_id = $1
"#;

/// Lifts pauses (of store `$1`, or all). The batch size a 413 left is kept: what a pause
/// was about (credentials, a 403, configuration) says nothing about the request size the
/// marketplace takes.
const UNPAUSE_SQL: &str = r#"
UPDATE stock_sync.store_state
SET paused_reason = NULL, pause_kind = NULL, paused_at = NULL, paused_credentials = NULL,
    not_before = NULL, consecutive_failures = 0, forbidden_count = 0
WHERE $1::uuid IS NULL OR store_id = $1
"#;

/// A failure the store waits out (`$4` why: a [`Problem`]): one more consecutive failure, no
/// request before now + `$2` seconds, `$3` the error shown in `status`.
const BACK_OFF_SQL: &str = r#"
UPDATE stock_sync.store_state
SET consecutive_failures = consecutive_failures + $5::int,
    not_before = GREATEST(COALESCE(not_before, now()), now() + make_interval(secs => $2::float8)),
    last_error = $3, problem_kind = $4
WHERE store_id = $1
"#;

/// A 413: requests of this store carry at most `$2` items from now on.
const LIMIT_BATCH_SQL: &str =
    "UPDATE stock_sync.store_state SET batch_limit = $2 WHERE store_id = $1";

const SUCCESS_SQL: &str = r#"
UPDATE stock_sync.store_state
SET consecutive_failures = 0, last_success_at = now(), last_error = NULL, problem_kind = NULL
WHERE store_id = $1
"#;

/// Paused stores and why (for `/metrics`).
const PAUSED_SQL: &str = r#"
SELECT store_id, pause_kind FROM stock_sync.store_state WHERE paused_reason IS NOT NULL
"#;

/// Stores waiting out a backoff and why (for `/metrics`).
const BACKING_OFF_SQL: &str = r#"
SELECT store_id, problem_kind FROM stock_sync.store_state
WHERE problem_kind IS NOT NULL AND not_before > now() AND paused_reason IS NULL
"#;

/// Why a store is paused, as a closed set (the `kind` label of `stocksync_store_paused`; the
/// reason's sentence, which may quote a marketplace, stays in the database and `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseKind {
    /// Credentials missing from `stores`, unusable, or refused with 401: until they change
    /// (or `retry-failed`).
    Credentials,
    /// 403: an IP block or overload; the store probes itself after a growing wait.
    Forbidden,
    /// stocksync's configuration lacks something the store needs (a Hepsiburada user agent):
    /// until it is configured and stocksync restarted.
    NotConfigured,
    /// A pause this binary does not know (written by another version or by hand).
    Other,
}

impl PauseKind {
    pub const ALL: [PauseKind; 4] = [
        PauseKind::Credentials,
        PauseKind::Forbidden,
        PauseKind::NotConfigured,
        PauseKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PauseKind::Credentials => "credentials",
            PauseKind::Forbidden => "forbidden",
            PauseKind::NotConfigured => "not_configured",
            PauseKind::Other => "other",
        }
    }

    /// The kind stored in `pause_kind` (NULL or unknown: `Other`).
    pub fn of(stored: Option<&str>) -> PauseKind {
        PauseKind::ALL
            .into_iter()
            .find(|k| Some(k.as_str()) == stored)
            .unwrap_or(PauseKind::Other)
    }
}

/// Why a store backs off, as a closed set (the `kind` label of `stocksync_store_backing_off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// 429, with or without a usable Retry-After.
    Throttled,
    /// 5xx or no answer.
    ServerError,
    /// A status the contract does not lead to expect (3xx, 404, 405, 408, 409, 415, 422,
    /// ...), or 413: a wrong base URL or a gateway, never the items.
    UnexpectedStatus,
}

impl Problem {
    pub const ALL: [Problem; 3] = [
        Problem::Throttled,
        Problem::ServerError,
        Problem::UnexpectedStatus,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Problem::Throttled => "throttled",
            Problem::ServerError => "server_error",
            Problem::UnexpectedStatus => "unexpected_status",
        }
    }

    fn of(stored: &str) -> Option<Problem> {
        Problem::ALL.into_iter().find(|p| p.as_str() == stored)
    }
}

/// Every paused store with its pause kind.
pub async fn paused(db: &impl GenericClient) -> Result<Vec<(Uuid, PauseKind)>, StoreError> {
    Ok(db
        .query(PAUSED_SQL, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), PauseKind::of(r.get::<_, Option<&str>>(1))))
        .collect())
}

/// Every store waiting out a backoff, with why.
pub async fn backing_off(db: &impl GenericClient) -> Result<Vec<(Uuid, Problem)>, StoreError> {
    Ok(db
        .query(BACKING_OFF_SQL, &[])
        .await?
        .iter()
        .filter_map(|r| Some((r.get(0), Problem::of(r.get::<_, &str>(1))?)))
        .collect())
}

/// How long a store paused for its credentials waits before its `stores` row is read again.
pub const PAUSE_RECHECK: Duration = Duration::from_secs(2);
/// How long a store paused for stocksync's configuration waits before it is looked at again
/// (the configuration changes only with a restart; the look keeps its entries from spinning).
pub const NOT_CONFIGURED_RECHECK: Duration = Duration::from_secs(30);

/// A store's row as the cycle needs it.
#[derive(Debug, Clone)]
pub struct StoreState {
    pub paused_reason: Option<String>,
    pub paused_credentials: Option<String>,
    pub pause_kind: PauseKind,
    /// A backoff, a Retry-After or a pause's wait is not over.
    pub backing_off: bool,
    /// `min_send_interval` since the last request is not over.
    pub too_soon: bool,
    pub consecutive_failures: i32,
    /// Consecutive 403 answers.
    pub forbidden_count: i32,
    /// Items per request after a 413.
    pub batch_limit: Option<i32>,
}

/// Reads (creating) the row of `store`.
pub async fn read(
    db: &impl GenericClient,
    store: Uuid,
    min_send_interval: Duration,
) -> Result<StoreState, StoreError> {
    db.execute(ENSURE_SQL, &[&store]).await?;
    let r = db
        .query_one(READ_SQL, &[&store, &min_send_interval.as_secs_f64()])
        .await?;
    let paused_reason: Option<String> = r.get(0);
    Ok(StoreState {
        pause_kind: PauseKind::of(r.get::<_, Option<&str>>(2)),
        paused_reason,
        paused_credentials: r.get(1),
        backing_off: r.get(3),
        too_soon: r.get(4),
        consecutive_failures: r.get(5),
        forbidden_count: r.get(6),
        batch_limit: r.get(7),
    })
}

pub async fn mark_gated(db: &impl GenericClient, store: Uuid, why: &str) -> Result<(), StoreError> {
    db.execute(MARK_GATED_SQL, &[&store, &why]).await?;
    Ok(())
}

pub async fn clear_gated(db: &impl GenericClient, store: Uuid) -> Result<(), StoreError> {
    db.execute(CLEAR_GATED_SQL, &[&store]).await?;
    Ok(())
}

/// Stores that were gated and are sendable again, with why they were gated.
pub async fn reopened(db: &impl GenericClient) -> Result<Vec<(Uuid, String)>, StoreError> {
    Ok(db
        .query(REOPENED_SQL, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// A pause: why (`kind` and the sentence shown), the fingerprint of the credentials it was
/// taken with, and when the store is looked at again.
#[derive(Debug, Clone)]
pub struct Pause<'a> {
    pub kind: PauseKind,
    pub reason: &'a str,
    pub fingerprint: &'a str,
    pub look_again_after: Duration,
    /// The pause counts one more 403 answer.
    pub forbidden: bool,
}

/// The key of this install's credential fingerprints; the first call makes one (32 random
/// bytes; concurrent first calls agree on whichever row was written first).
pub async fn fingerprint_key(db: &impl GenericClient) -> Result<FingerprintKey, StoreError> {
    if let Some(row) = db.query_opt(FINGERPRINT_KEY_SQL, &[]).await? {
        return Ok(FingerprintKey::from_bytes(row.get(0)));
    }
    let fresh = FingerprintKey::generate();
    db.execute(NEW_FINGERPRINT_KEY_SQL, &[&fresh.as_bytes()])
        .await?;
    let row = db.query_one(FINGERPRINT_KEY_SQL, &[]).await?;
    Ok(FingerprintKey::from_bytes(row.get(0)))
}

/// Replaces a pause's fingerprint `old` (an earlier version's form) by `new`.
pub async fn rewrite_fingerprint(
    db: &impl GenericClient,
    store: Uuid,
    old: &str,
    new: &str,
) -> Result<(), StoreError> {
    db.execute(REWRITE_FINGERPRINT_SQL, &[&store, &old, &new])
        .await?;
    Ok(())
}

pub async fn pause(db: &impl GenericClient, store: Uuid, p: &Pause<'_>) -> Result<(), StoreError> {
    db.execute(
        PAUSE_SQL,
        &[
            &store,
            &p.reason,
            &p.kind.as_str(),
            &p.fingerprint,
            &p.look_again_after.as_secs_f64(),
            &i32::from(p.forbidden),
        ],
    )
    .await?;
    Ok(())
}

pub async fn recheck_later(
    db: &impl GenericClient,
    store: Uuid,
    after: Duration,
) -> Result<(), StoreError> {
    db.execute(RECHECK_LATER_SQL, &[&store, &after.as_secs_f64()])
        .await?;
    Ok(())
}

/// Lifts the pause of one store, or of every store (`retry-failed`).
pub async fn unpause(db: &impl GenericClient, store: Option<Uuid>) -> Result<u64, StoreError> {
    Ok(db.execute(UNPAUSE_SQL, &[&store]).await?)
}

/// The store waits `wait` before its next request; `counts` says whether this is one more
/// consecutive failure (a throttle is not).
pub async fn back_off(
    db: &impl GenericClient,
    store: Uuid,
    wait: Duration,
    problem: Problem,
    error: &str,
    counts: bool,
) -> Result<(), StoreError> {
    db.execute(
        BACK_OFF_SQL,
        &[
            &store,
            &wait.as_secs_f64(),
            &error,
            &problem.as_str(),
            &i32::from(counts),
        ],
    )
    .await?;
    Ok(())
}

pub async fn limit_batch(
    db: &impl GenericClient,
    store: Uuid,
    items: i32,
) -> Result<(), StoreError> {
    db.execute(LIMIT_BATCH_SQL, &[&store, &items]).await?;
    Ok(())
}

pub async fn success(db: &impl GenericClient, store: Uuid) -> Result<(), StoreError> {
    db.execute(SUCCESS_SQL, &[&store]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_a_closed_set() {
        for kind in PauseKind::ALL {
            assert_eq!(PauseKind::of(Some(kind.as_str())), kind);
        }
        assert_eq!(PauseKind::of(None), PauseKind::Other);
        assert_eq!(PauseKind::of(Some("set by hand")), PauseKind::Other);
        for p in Problem::ALL {
            assert_eq!(Problem::of(p.as_str()), Some(p));
        }
    }
}
