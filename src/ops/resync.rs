//! `resync` and `retry-failed`: put work back in the queue on an operator's word.

use tokio_postgres::Client;
use uuid::Uuid;

use crate::capture::queue::ENQUEUE_ALL_LISTED_SQL;
use crate::capture::seeds::Reason;

/// Re-enqueues dead letters (of store `$1`, or all), one pending entry per pair.
///
/// A pair can have several dead entries (an item can be dead-lettered more than once, each
/// time as a new row), and at most one pending entry may exist per pair
/// (`queue_one_pending_per_pair`). So every selected dead entry is closed as
/// `done`/`retried` (its attempts and last error stay as history) and each distinct pair gets
/// one fresh pending entry (`$2` reason, priority the highest of its dead entries and `$3`).
/// A pair that already has a pending entry keeps that one (its priority is raised if needed):
/// `ON CONFLICT` on the partial unique index makes this safe against capture or dispatch
/// enqueueing the same pair concurrently. `FOR UPDATE` on the dead rows makes two concurrent
/// runs re-enqueue each dead letter once. Returns the number of pairs re-enqueued.
const RETRY_FAILED_SQL: &str = r#"
WITH dead AS (
    SELECT id, product_id, store_id, priority FROM stock_sync.queue
    WHERE state = 'dead' AND ($1::uuid IS NULL OR store_id = $1)
    FOR UPDATE
), closed AS (
    UPDATE stock_sync.queue q
    SET state = 'done', outcome = 'retried', finished_at = now()
    FROM dead d
    WHERE q.id = d.id
    RETURNING q.id
), pairs AS (
    SELECT product_id, store_id, GREATEST(max(priority), $3::int) AS priority
    FROM dead GROUP BY product_id, store_id
)
INSERT INTO stock_sync.queue AS q (product_id, store_id, reason, priority)
SELECT product_id, store_id, $2::text, priority FROM pairs
ON CONFLICT (product_id, store_id) WHERE state = 'pending' DO UPDATE
SET priority = GREATEST(q.priority, EXCLUDED.priority), not_before = NULL
"#;

const LIFT_PAUSES_SQL: &str = r#"
UPDATE stock_sync.store_state
SET paused_reason = NULL, paused_at = NULL, paused_credentials = NULL, not_before = NULL,
    consecutive_failures = 0
WHERE $1::uuid IS NULL OR store_id = $1
"#;

/// Enqueues every listed pair (of one store, or all). Returns the number of pairs.
pub async fn resync(client: &Client, store: Option<Uuid>) -> Result<u64, tokio_postgres::Error> {
    let reason = Reason::Resync;
    client
        .execute(
            ENQUEUE_ALL_LISTED_SQL,
            &[&reason.as_str(), &reason.priority(), &store],
        )
        .await
}

/// Re-enqueues dead letters (one pending entry per pair) and lifts store pauses, in one
/// transaction. Returns the number of (product, store) pairs re-enqueued.
pub async fn retry_failed(
    client: &mut Client,
    store: Option<Uuid>,
) -> Result<u64, tokio_postgres::Error> {
    let reason = Reason::Resync;
    let tx = client.transaction().await?;
    let n = tx
        .execute(
            RETRY_FAILED_SQL,
            &[&store, &reason.as_str(), &reason.priority()],
        )
        .await?;
    tx.execute(LIFT_PAUSES_SQL, &[&store]).await?;
    tx.commit().await?;
    Ok(n)
}
