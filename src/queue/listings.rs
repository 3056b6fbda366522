//! `stock_sync.listing_state`: what each marketplace was told per (store, product), so only
//! changes are sent; which pairs are in doubt; the key each was told under (so a pair whose
//! product row is gone can still be told 0); which listings the marketplace fulfils itself.

use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::QueueError;

/// Before a push leaves: its pairs are in doubt until it is accepted (see migration 002).
const MARK_IN_DOUBT_SQL: &str = r#"
INSERT INTO stock_sync.listing_state AS l (store_id, product_id, in_doubt)
SELECT $1, u.product_id, true FROM unnest($2::uuid[]) AS u(product_id)
ON CONFLICT (store_id, product_id) DO UPDATE SET in_doubt = true
"#;

/// Before a push leaves: its pairs are in doubt, and the key each is sent under (with its
/// marketplace spelling) is what the listing is known as from now on.
const MARK_LEAVING_SQL: &str = r#"
INSERT INTO stock_sync.listing_state AS l (store_id, product_id, in_doubt, told_key, told_key_form)
SELECT $1, u.product_id, true, u.key, u.form
FROM unnest($2::uuid[], $3::text[], $4::text[]) AS u(product_id, key, form)
ON CONFLICT (store_id, product_id) DO UPDATE
SET in_doubt = true, told_key = EXCLUDED.told_key, told_key_form = EXCLUDED.told_key_form
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
/// counts) per product of a store, NULL while a request's fate is in doubt; the key it was
/// told under; whether the marketplace fulfils the listing itself.
const LAST_TOLD_SQL: &str = r#"
SELECT product_id,
       CASE WHEN in_doubt THEN NULL ELSE COALESCE(sent_quantity, accepted_quantity) END,
       told_key,
       fulfilled_by_marketplace
FROM stock_sync.listing_state
WHERE store_id = $1 AND product_id = ANY($2::uuid[])
"#;

/// Listings of store `$1` the marketplace fulfils itself, as a read or a refusal showed.
const MARK_FULFILLED_SQL: &str = r#"
INSERT INTO stock_sync.listing_state AS l
    (store_id, product_id, fulfilled_by_marketplace, fulfilled_seen_at)
SELECT $1, u.product_id, true, now() FROM unnest($2::uuid[]) AS u(product_id)
ON CONFLICT (store_id, product_id) DO UPDATE
SET fulfilled_by_marketplace = true, fulfilled_seen_at = now()
WHERE NOT l.fulfilled_by_marketplace
"#;

/// Listings of store `$1` a read showed the seller's own again.
const UNMARK_FULFILLED_SQL: &str = r#"
UPDATE stock_sync.listing_state SET fulfilled_by_marketplace = false, fulfilled_seen_at = now()
WHERE store_id = $1 AND product_id = ANY($2::uuid[]) AND fulfilled_by_marketplace
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

/// Listings the marketplace fulfils itself, newest first, at most `$1`.
const FULFILLED_SQL: &str = r#"
SELECT store_id, product_id, told_key, fulfilled_seen_at FROM stock_sync.listing_state
WHERE fulfilled_by_marketplace
ORDER BY fulfilled_seen_at DESC NULLS LAST, store_id, product_id
LIMIT $1
"#;

/// A listing the marketplace keeps the stock of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FulfilledListing {
    pub store_id: Uuid,
    pub product_id: Uuid,
    /// The key it was last told under, if it ever was.
    pub key: Option<String>,
    pub seen_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Listings the marketplace fulfils itself (at most `limit`, newest first).
pub async fn fulfilled_listings(
    db: &impl GenericClient,
    limit: i64,
) -> Result<Vec<FulfilledListing>, QueueError> {
    Ok(db
        .query(FULFILLED_SQL, &[&limit])
        .await?
        .iter()
        .map(|r| FulfilledListing {
            store_id: r.get(0),
            product_id: r.get(1),
            key: r.get(2),
            seen_at: r.get(3),
        })
        .collect())
}

/// Marks pairs in doubt and records the key each is about to be sent under (`forms`: the
/// same keys in the marketplace's spelling), before the request leaves.
pub async fn mark_leaving(
    db: &impl GenericClient,
    store: Uuid,
    products: &[Uuid],
    keys: &[&str],
    forms: &[&str],
) -> Result<(), QueueError> {
    db.execute(MARK_LEAVING_SQL, &[&store, &products, &keys, &forms])
        .await?;
    Ok(())
}

/// Records whether the marketplace fulfils these listings itself (it keeps their stock, so
/// dispatch never pushes them). Returns the rows that changed.
pub async fn mark_fulfilled_by_marketplace(
    db: &impl GenericClient,
    store: Uuid,
    products: &[Uuid],
    fulfilled: bool,
) -> Result<u64, QueueError> {
    if products.is_empty() {
        return Ok(0);
    }
    let sql = if fulfilled {
        MARK_FULFILLED_SQL
    } else {
        UNMARK_FULFILLED_SQL
    };
    Ok(db.execute(sql, &[&store, &products]).await?)
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

/// What is known of one listing at the marketplace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Told {
    /// The quantity last told; `None` while a request's fate is in doubt or nothing is known.
    pub quantity: Option<i32>,
    /// The key it was last sent under (kept when the product row goes).
    pub key: Option<String>,
    /// The marketplace keeps this listing's stock itself (Hepsiburada `isFulfilledByHB`).
    pub fulfilled_by_marketplace: bool,
}

/// What is known of each listing of `products` in `store` (absent: never sent nor read).
pub async fn last_told(
    db: &impl GenericClient,
    store: Uuid,
    products: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, Told>, QueueError> {
    Ok(db
        .query(LAST_TOLD_SQL, &[&store, &products])
        .await?
        .iter()
        .map(|r| {
            let told = Told {
                quantity: r.get(1),
                key: r.get(2),
                fulfilled_by_marketplace: r.get(3),
            };
            (r.get(0), told)
        })
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
