//! `resync` and `retry-failed`: put work back in the queue on an operator's word.

use anyhow::{Context, Result};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::capture::queue::ENQUEUE_ALL_LISTED_SQL;
use crate::capture::seeds::Reason;

/// Dead letters go back to pending unless the pair already has a pending entry (then the
/// dead one is closed as superseded). Credential pauses are lifted so the store is tried again.
const RETRY_FAILED_SQL: &str = r#"
WITH dead AS (
    SELECT id, product_id, store_id FROM stock_sync.queue
    WHERE state = 'dead' AND ($1::uuid IS NULL OR store_id = $1)
    FOR UPDATE
), superseded AS (
    UPDATE stock_sync.queue q SET state = 'done', outcome = 'retried', finished_at = now()
    FROM dead d
    WHERE q.id = d.id AND EXISTS (
        SELECT 1 FROM stock_sync.queue p
        WHERE p.state = 'pending' AND p.product_id = d.product_id AND p.store_id = d.store_id)
    RETURNING q.id
)
UPDATE stock_sync.queue q
SET state = 'pending', attempts = 0, not_before = NULL, last_error = NULL, reason = 'RESYNC',
    finished_at = NULL, enqueued_at = now()
FROM dead d
WHERE q.id = d.id AND q.id NOT IN (SELECT id FROM superseded)
  AND NOT EXISTS (
    SELECT 1 FROM stock_sync.queue p
    WHERE p.state = 'pending' AND p.product_id = d.product_id AND p.store_id = d.store_id)
"#;

const LIFT_PAUSES_SQL: &str = r#"
UPDATE stock_sync.store_state
SET paused_reason = NULL, paused_at = NULL, paused_credentials = NULL, not_before = NULL,
    consecutive_failures = 0
WHERE $1::uuid IS NULL OR store_id = $1
"#;

/// Enqueues every listed pair (of one store, or all). Returns the number of pairs.
pub async fn resync(client: &Client, store: Option<Uuid>) -> Result<u64> {
    let reason = Reason::Resync;
    let n = client
        .execute(
            ENQUEUE_ALL_LISTED_SQL,
            &[&reason.as_str(), &reason.priority(), &store],
        )
        .await
        .context("enqueueing listed pairs")?;
    Ok(n)
}

pub async fn retry_failed(client: &Client, store: Option<Uuid>) -> Result<u64> {
    let n = client
        .execute(RETRY_FAILED_SQL, &[&store])
        .await
        .context("re-enqueueing dead letters")?;
    client
        .execute(LIFT_PAUSES_SQL, &[&store])
        .await
        .context("lifting store pauses")?;
    Ok(n)
}
