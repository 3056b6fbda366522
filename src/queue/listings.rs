//! `stock_sync.listing_state`: what each marketplace was told per (store, product), so only
//! changes are sent, and which pairs are in doubt.

use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::QueueError;

/// Before a push leaves: its pairs are in doubt until it is accepted (see migration 002).
const MARK_IN_DOUBT_SQL: &str = r#"
INSERT INTO stock_sync.listing_state AS l (store_id, product_id, in_doubt)
SELECT $1, u.product_id, true FROM unnest($2::uuid[]) AS u(product_id)
ON CONFLICT (store_id, product_id) DO UPDATE SET in_doubt = true
"#;

/// After a push was accepted: what was sent, per product, and by which batch.
const MARK_SENT_SQL: &str = r#"
INSERT INTO stock_sync.listing_state AS l (store_id, product_id, sent_quantity, sent_batch_id)
SELECT $1, u.product_id, u.quantity, $4
FROM unnest($2::uuid[], $3::int[]) AS u(product_id, quantity)
ON CONFLICT (store_id, product_id) DO UPDATE
SET sent_quantity = EXCLUDED.sent_quantity, sent_batch_id = EXCLUDED.sent_batch_id,
    in_doubt = false
"#;

/// Item success in batch `$4`. A result of an older batch than the one already applied is
/// ignored (results may arrive out of order); the pending "sent" mark is cleared only when it
/// belongs to this batch.
const ITEM_ACCEPTED_SQL: &str = r#"
INSERT INTO stock_sync.listing_state AS l
    (store_id, product_id, accepted_quantity, accepted_at, accepted_batch_id)
SELECT $1, u.product_id, u.quantity, now(), $4
FROM unnest($2::uuid[], $3::int[]) AS u(product_id, quantity)
ON CONFLICT (store_id, product_id) DO UPDATE
SET accepted_quantity = EXCLUDED.accepted_quantity,
    accepted_at = now(),
    accepted_batch_id = EXCLUDED.accepted_batch_id,
    sent_quantity = CASE WHEN l.sent_batch_id = EXCLUDED.accepted_batch_id THEN NULL ELSE l.sent_quantity END,
    sent_batch_id = CASE WHEN l.sent_batch_id = EXCLUDED.accepted_batch_id THEN NULL ELSE l.sent_batch_id END
WHERE l.accepted_batch_id IS NULL OR l.accepted_batch_id <= EXCLUDED.accepted_batch_id
"#;

/// Listings of store `$1` whose last push was batch `$2`, with the quantity sent.
const SENT_IN_BATCH_SQL: &str = r#"
SELECT product_id, sent_quantity FROM stock_sync.listing_state
WHERE store_id = $1 AND sent_batch_id = $2 AND sent_quantity IS NOT NULL
ORDER BY product_id
"#;

/// Item failure in batch `$3`: the marketplace did not take the quantity, so it is no longer
/// "told".
const ITEM_FAILED_SQL: &str = r#"
UPDATE stock_sync.listing_state
SET sent_quantity = NULL, sent_batch_id = NULL
WHERE store_id = $1 AND product_id = ANY($2::uuid[]) AND sent_batch_id = $3
"#;

/// The quantity the marketplace was last told (a push whose item result is still unknown
/// counts) per product of a store; NULL while a request's fate is in doubt.
const LAST_TOLD_SQL: &str = r#"
SELECT product_id,
       CASE WHEN in_doubt THEN NULL ELSE COALESCE(sent_quantity, accepted_quantity) END
FROM stock_sync.listing_state
WHERE store_id = $1 AND product_id = ANY($2::uuid[])
"#;

/// Reconciliation saw the marketplace show something else: nothing is known to be told any
/// more, so the repair cannot be skipped as unchanged.
const FORGET_TOLD_SQL: &str = r#"
UPDATE stock_sync.listing_state
SET accepted_quantity = NULL, sent_quantity = NULL, sent_batch_id = NULL
WHERE store_id = $1 AND product_id = ANY($2::uuid[])
"#;

/// Marks pairs in doubt (before a request carrying them leaves).
pub async fn mark_in_doubt(
    db: &impl GenericClient,
    store: Uuid,
    products: &[Uuid],
) -> Result<(), QueueError> {
    db.execute(MARK_IN_DOUBT_SQL, &[&store, &products]).await?;
    Ok(())
}

/// Records an accepted push: `quantities[i]` sent for `products[i]` in `batch_id`.
pub async fn mark_sent(
    db: &impl GenericClient,
    store: Uuid,
    products: &[Uuid],
    quantities: &[i32],
    batch_id: i64,
) -> Result<(), QueueError> {
    db.execute(MARK_SENT_SQL, &[&store, &products, &quantities, &batch_id])
        .await?;
    Ok(())
}

/// Item-level success read from batch `batch_id`'s result.
pub async fn item_accepted(
    db: &impl GenericClient,
    store: Uuid,
    products: &[Uuid],
    quantities: &[i32],
    batch_id: i64,
) -> Result<(), QueueError> {
    if products.is_empty() {
        return Ok(());
    }
    db.execute(
        ITEM_ACCEPTED_SQL,
        &[&store, &products, &quantities, &batch_id],
    )
    .await?;
    Ok(())
}

/// Item-level failure read from batch `batch_id`'s result.
pub async fn item_failed(
    db: &impl GenericClient,
    store: Uuid,
    products: &[Uuid],
    batch_id: i64,
) -> Result<(), QueueError> {
    if products.is_empty() {
        return Ok(());
    }
    db.execute(ITEM_FAILED_SQL, &[&store, &products, &batch_id])
        .await?;
    Ok(())
}

/// Pairs whose last push was `batch_id`, with the quantity sent.
pub async fn sent_in_batch(
    db: &impl GenericClient,
    store: Uuid,
    batch_id: i64,
) -> Result<Vec<(Uuid, i32)>, QueueError> {
    Ok(db
        .query(SENT_IN_BATCH_SQL, &[&store, &batch_id])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// What the marketplace was last told per product (`None` while in doubt; absent when never).
pub async fn last_told(
    db: &impl GenericClient,
    store: Uuid,
    products: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Option<i32>>, QueueError> {
    Ok(db
        .query(LAST_TOLD_SQL, &[&store, &products])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Forgets what the marketplace was told for these pairs (reconciliation saw otherwise).
pub async fn forget_told(
    db: &impl GenericClient,
    store: Uuid,
    products: &[Uuid],
) -> Result<u64, QueueError> {
    Ok(db.execute(FORGET_TOLD_SQL, &[&store, &products]).await?)
}
