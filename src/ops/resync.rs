//! `resync` and `retry-failed`: put work back in the queue on an operator's word.

use tokio_postgres::Client;
use uuid::Uuid;

use crate::queue::{self, QueueError, Reason};

/// Stores with listings (one, or all), for a store-by-store resync.
const LISTED_STORES_SQL: &str = r#"
SELECT DISTINCT store_id FROM product_stores
WHERE store_id IS NOT NULL AND ($1::uuid IS NULL OR store_id = $1)
ORDER BY store_id
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
    let stores: Vec<Uuid> = client
        .query(LISTED_STORES_SQL, &[&store])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut pairs = 0;
    for (i, store) in stores.iter().enumerate() {
        pairs += queue::enqueue_all_listed(client, Reason::Resync, Some(*store)).await?;
        progress(i + 1, stores.len(), pairs);
    }
    Ok(pairs)
}

/// Entries not yet delivered (of one store, or all), and those of them held by paused stores.
pub async fn outstanding(client: &Client, store: Option<Uuid>) -> Result<(i64, i64), QueueError> {
    queue::outstanding(client, store).await
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
) -> Result<u64, crate::dispatch::DispatchError> {
    let tx = client.transaction().await?;
    let n = queue::retry_dead_letters(&tx, store).await?;
    crate::stores::state::unpause(&tx, store).await?;
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
