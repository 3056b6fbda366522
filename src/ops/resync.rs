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
SELECT product_id, store_id, $2::text, priority FROM pairs ORDER BY product_id, store_id
ON CONFLICT (product_id, store_id) WHERE state = 'pending' DO UPDATE
SET priority = GREATEST(q.priority, EXCLUDED.priority), not_before = NULL
"#;

const LIFT_PAUSES_SQL: &str = r#"
UPDATE stock_sync.store_state
SET paused_reason = NULL, paused_at = NULL, paused_credentials = NULL, not_before = NULL,
    consecutive_failures = 0
WHERE $1::uuid IS NULL OR store_id = $1
"#;

/// Stores with listings (one, or all), for a store-by-store resync.
const LISTED_STORES_SQL: &str = r#"
SELECT DISTINCT store_id FROM product_stores
WHERE store_id IS NOT NULL AND ($1::uuid IS NULL OR store_id = $1)
ORDER BY store_id
"#;

/// Entries still to deliver (of one store, or all), and how many of them wait for a paused
/// store (those need an operator, not patience).
const OUTSTANDING_SQL: &str = r#"
SELECT count(*),
       count(*) FILTER (WHERE q.store_id IN (
           SELECT store_id FROM stock_sync.store_state WHERE paused_reason IS NOT NULL))
FROM stock_sync.queue q
WHERE q.state IN ('pending', 'in_flight') AND ($1::uuid IS NULL OR q.store_id = $1)
"#;

/// Enqueues every listed pair (of one store, or all). Returns the number of pairs.
pub async fn resync(client: &Client, store: Option<Uuid>) -> Result<u64, tokio_postgres::Error> {
    resync_with_progress(client, store, |_, _, _| {}).await
}

/// As [`resync`], store by store, calling `progress(stores_done, stores_total, pairs)` after
/// each (a store's pairs are one statement, so a large catalogue shows where it is).
pub async fn resync_with_progress(
    client: &Client,
    store: Option<Uuid>,
    mut progress: impl FnMut(usize, usize, u64),
) -> Result<u64, tokio_postgres::Error> {
    let reason = Reason::Resync;
    let stores: Vec<Uuid> = client
        .query(LISTED_STORES_SQL, &[&store])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut pairs = 0;
    for (i, store) in stores.iter().enumerate() {
        pairs += client
            .execute(
                ENQUEUE_ALL_LISTED_SQL,
                &[&reason.as_str(), &reason.priority(), &Some(*store)],
            )
            .await?;
        progress(i + 1, stores.len(), pairs);
    }
    Ok(pairs)
}

/// Entries not yet delivered (of one store, or all), and those of them held by paused stores.
pub async fn outstanding(
    client: &Client,
    store: Option<Uuid>,
) -> Result<(i64, i64), tokio_postgres::Error> {
    let row = client.query_one(OUTSTANDING_SQL, &[&store]).await?;
    Ok((row.get(0), row.get(1)))
}

/// A text progress bar: `[#####.....] 50% label`.
pub fn progress_bar(done: u64, total: u64, label: &str) -> String {
    const WIDTH: u64 = 30;
    let filled = (done.min(total) * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH);
    let percent = (done.min(total) * 100).checked_div(total).unwrap_or(100);
    format!(
        "[{}{}] {percent:>3}% {label}",
        "#".repeat(filled as usize),
        ".".repeat((WIDTH - filled) as usize)
    )
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

#[cfg(test)]
mod tests {
    use super::progress_bar;

    #[test]
    fn progress_bar_fills_with_progress() {
        assert_eq!(
            progress_bar(0, 4, "x"),
            format!("[{}]   0% x", ".".repeat(30))
        );
        assert_eq!(
            progress_bar(2, 4, "x"),
            format!("[{}{}]  50% x", "#".repeat(15), ".".repeat(15))
        );
        assert_eq!(
            progress_bar(9, 4, ""),
            format!("[{}] 100% ", "#".repeat(30))
        );
        assert_eq!(
            progress_bar(0, 0, ""),
            format!("[{}] 100% ", "#".repeat(30))
        );
    }
}
