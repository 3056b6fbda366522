//! Unknown upload outcomes in a row, per pair (`listing_state.unknown_outcomes`, migration
//! 011): a batch result that cannot be read item by item leaves its items unknown, and a pair
//! that keeps getting such results must not be resent forever. Dispatch decides what a streak
//! means; this file only counts, in the transaction that applies the result.

use std::collections::HashMap;

use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::QueueError;

/// One more unknown outcome for each pair of store `$1` in `$2`; returns the streaks.
const COUNT_UNKNOWN_SQL: &str = r#"
INSERT INTO stock_sync.listing_state AS l (store_id, product_id, unknown_outcomes)
SELECT $1, u.product_id, 1 FROM unnest($2::uuid[]) AS u(product_id)
ORDER BY u.product_id
ON CONFLICT (store_id, product_id) DO UPDATE SET unknown_outcomes = l.unknown_outcomes + 1
RETURNING product_id, unknown_outcomes
"#;

/// A known outcome (accepted or refused) ends the streaks of store `$1`'s pairs `$2`.
const CLEAR_UNKNOWN_SQL: &str = r#"
UPDATE stock_sync.listing_state SET unknown_outcomes = 0
WHERE store_id = $1 AND product_id = ANY($2::uuid[]) AND unknown_outcomes <> 0
"#;

/// Counts one more unknown outcome in a row for each of `products`; returns each one's streak
/// (this outcome included).
pub async fn count_unknown_outcomes(
    db: &impl GenericClient,
    store: Uuid,
    products: &[Uuid],
) -> Result<HashMap<Uuid, i32>, QueueError> {
    if products.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(db
        .query(COUNT_UNKNOWN_SQL, &[&store, &products])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// `products` had a known outcome: their streaks of unknown ones end.
pub async fn clear_unknown_outcomes(
    db: &impl GenericClient,
    store: Uuid,
    products: &[Uuid],
) -> Result<(), QueueError> {
    if products.is_empty() {
        return Ok(());
    }
    db.execute(CLEAR_UNKNOWN_SQL, &[&store, &products]).await?;
    Ok(())
}
