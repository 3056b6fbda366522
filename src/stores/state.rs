//! `stock_sync.store_state`, stocksync's row per store: pauses, the reason a store gets no
//! requests, backoff and Retry-After (`not_before`), the last request and success.

use std::time::Duration;

use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::StoreError;

const ENSURE_SQL: &str =
    "INSERT INTO stock_sync.store_state (store_id) VALUES ($1) ON CONFLICT DO NOTHING";

/// Pause and gates of a store: `$2` is min_send_interval in seconds.
const READ_SQL: &str = r#"
SELECT paused_reason, paused_credentials,
       COALESCE(not_before > now(), false) AS backing_off,
       COALESCE(last_request_at + make_interval(secs => $2::float8) > now(), false) AS too_soon,
       consecutive_failures
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

/// A paused store is looked at again (for changed credentials) after [`PAUSE_RECHECK`], not
/// on every tick.
const PAUSE_SQL: &str = r#"
UPDATE stock_sync.store_state
SET paused_reason = $2, paused_at = now(), paused_credentials = $3, last_error = $2,
    not_before = now() + make_interval(secs => $4::float8)
WHERE store_id = $1
"#;

const RECHECK_LATER_SQL: &str = r#"
UPDATE stock_sync.store_state SET not_before = now() + make_interval(secs => $2::float8)
WHERE store_id = $1
"#;

/// Lifts pauses (of store `$1`, or all).
const UNPAUSE_SQL: &str = r#"
UPDATE stock_sync.store_state
SET paused_reason = NULL, paused_at = NULL, paused_credentials = NULL, not_before = NULL,
    consecutive_failures = 0
WHERE $1::uuid IS NULL OR store_id = $1
"#;

/// A failure the store waits out: one more consecutive failure, no request before now + `$2`
/// seconds, `$3` the error shown in `status`.
const BACK_OFF_SQL: &str = r#"
UPDATE stock_sync.store_state
SET consecutive_failures = consecutive_failures + 1,
    not_before = GREATEST(COALESCE(not_before, now()), now() + make_interval(secs => $2::float8)),
    last_error = $3
WHERE store_id = $1
"#;

/// A wait the marketplace asked for (429): no request before now + `$2` seconds.
const THROTTLE_SQL: &str = r#"
UPDATE stock_sync.store_state
SET not_before = GREATEST(COALESCE(not_before, now()), now() + make_interval(secs => $2::float8)),
    last_error = $3
WHERE store_id = $1
"#;

const SUCCESS_SQL: &str = r#"
UPDATE stock_sync.store_state
SET consecutive_failures = 0, last_success_at = now(), last_error = NULL
WHERE store_id = $1
"#;

/// Paused stores and why (for `/metrics`).
const PAUSED_SQL: &str =
    "SELECT store_id, paused_reason FROM stock_sync.store_state WHERE paused_reason IS NOT NULL";

/// Why a store is paused, as a closed set (the `kind` label of `stocksync_store_paused`; the
/// reason's text, which may quote a marketplace, stays in the database and `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseKind {
    /// The `stores` row lacks a credential the marketplace needs.
    CredentialsMissing,
    /// The marketplace answered 401/403.
    CredentialsRefused,
    /// The credentials cannot be used to build a request (e.g. not valid in a header).
    CredentialsUnusable,
    /// A reason this binary does not know (written by another version or by hand).
    Other,
}

impl PauseKind {
    pub const ALL: [PauseKind; 4] = [
        PauseKind::CredentialsMissing,
        PauseKind::CredentialsRefused,
        PauseKind::CredentialsUnusable,
        PauseKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PauseKind::CredentialsMissing => "credentials_missing",
            PauseKind::CredentialsRefused => "credentials_refused",
            PauseKind::CredentialsUnusable => "credentials_unusable",
            PauseKind::Other => "other",
        }
    }

    /// How a pause reason of this kind begins.
    fn prefix(self) -> &'static str {
        match self {
            PauseKind::CredentialsMissing => "credentials missing",
            PauseKind::CredentialsRefused => "credentials refused",
            PauseKind::CredentialsUnusable => "credentials unusable",
            PauseKind::Other => "",
        }
    }

    /// The pause reason stored and shown: the kind's words, then `detail`.
    pub fn reason(self, detail: &str) -> String {
        format!("{}{detail}", self.prefix())
    }

    /// The kind of a stored pause reason.
    pub fn of(reason: &str) -> PauseKind {
        PauseKind::ALL
            .into_iter()
            .find(|k| *k != PauseKind::Other && reason.starts_with(k.prefix()))
            .unwrap_or(PauseKind::Other)
    }
}

/// Every paused store with its stored reason.
pub async fn paused(db: &impl GenericClient) -> Result<Vec<(Uuid, String)>, StoreError> {
    Ok(db
        .query(PAUSED_SQL, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// How long a paused store waits before its `stores` row is read again.
pub const PAUSE_RECHECK: Duration = Duration::from_secs(2);

/// A store's row as the cycle needs it.
#[derive(Debug, Clone)]
pub struct StoreState {
    pub paused_reason: Option<String>,
    pub paused_credentials: Option<String>,
    /// A backoff or Retry-After is not over.
    pub backing_off: bool,
    /// `min_send_interval` since the last request is not over.
    pub too_soon: bool,
    pub consecutive_failures: i32,
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
    Ok(StoreState {
        paused_reason: r.get(0),
        paused_credentials: r.get(1),
        backing_off: r.get(2),
        too_soon: r.get(3),
        consecutive_failures: r.get(4),
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

pub async fn pause(
    db: &impl GenericClient,
    store: Uuid,
    reason: &str,
    fingerprint: &str,
) -> Result<(), StoreError> {
    db.execute(
        PAUSE_SQL,
        &[&store, &reason, &fingerprint, &PAUSE_RECHECK.as_secs_f64()],
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

pub async fn back_off(
    db: &impl GenericClient,
    store: Uuid,
    wait: Duration,
    error: &str,
) -> Result<(), StoreError> {
    db.execute(BACK_OFF_SQL, &[&store, &wait.as_secs_f64(), &error])
        .await?;
    Ok(())
}

pub async fn throttle(
    db: &impl GenericClient,
    store: Uuid,
    wait: Duration,
    error: &str,
) -> Result<(), StoreError> {
    db.execute(THROTTLE_SQL, &[&store, &wait.as_secs_f64(), &error])
        .await?;
    Ok(())
}

pub async fn success(db: &impl GenericClient, store: Uuid) -> Result<(), StoreError> {
    db.execute(SUCCESS_SQL, &[&store]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::PauseKind;

    #[test]
    fn pause_reasons_map_to_a_closed_set_of_kinds() {
        for kind in PauseKind::ALL {
            let reason = kind.reason(" (401): secret-free text from the marketplace");
            assert_eq!(PauseKind::of(&reason), kind, "{reason}");
        }
        assert_eq!(
            PauseKind::CredentialsMissing.reason(": stores.api_key is empty"),
            "credentials missing: stores.api_key is empty"
        );
        assert_eq!(PauseKind::of("set by hand"), PauseKind::Other);
        assert_eq!(PauseKind::of(""), PauseKind::Other);
        let labels: Vec<&str> = PauseKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            labels,
            [
                "credentials_missing",
                "credentials_refused",
                "credentials_unusable",
                "other"
            ]
        );
    }
}
