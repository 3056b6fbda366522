//! `stock_sync.key_collisions`: products of one store whose marketplace keys name one
//! listing there ("869 0001" and "8690001" at Trendyol, which removes spaces). Dispatch
//! records each product of a collision here, pushes none of them while it lasts, and clears
//! the rows (re-enqueueing the pairs) once the data no longer collides. `status` lists them.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::QueueError;

/// Products of store `$1` known under one of the marketplace spellings `$2`: told under it,
/// or recorded in a collision. Whether each still has that key is the caller's to check.
const CANDIDATES_SQL: &str = r#"
SELECT product_id, told_key_form FROM stock_sync.listing_state
WHERE store_id = $1 AND told_key_form = ANY($2::text[])
UNION
SELECT product_id, key_form FROM stock_sync.key_collisions
WHERE store_id = $1 AND key_form = ANY($2::text[])
"#;

const RECORD_SQL: &str = r#"
INSERT INTO stock_sync.key_collisions AS c (store_id, product_id, key, key_form)
SELECT $1, u.product_id, u.key, u.form
FROM unnest($2::uuid[], $3::text[], $4::text[]) AS u(product_id, key, form)
ON CONFLICT (store_id, product_id) DO UPDATE
SET key = EXCLUDED.key, key_form = EXCLUDED.key_form, last_seen = now(),
    first_seen = CASE WHEN c.key_form = EXCLUDED.key_form THEN c.first_seen ELSE now() END
"#;

const CLEAR_SQL: &str =
    "DELETE FROM stock_sync.key_collisions WHERE store_id = $1 AND product_id = ANY($2::uuid[])";

const LIST_SQL: &str = r#"
SELECT store_id, product_id, key, key_form, first_seen FROM stock_sync.key_collisions
ORDER BY store_id, key_form, product_id
"#;

/// One product of a recorded collision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCollision {
    pub store_id: Uuid,
    pub product_id: Uuid,
    /// The product's key as the database spells it.
    pub key: String,
    /// The listing it names at the marketplace.
    pub key_form: String,
    pub first_seen: DateTime<Utc>,
}

/// `(product, form)` of products of `store` known under one of `forms`.
pub async fn key_candidates(
    db: &impl GenericClient,
    store: Uuid,
    forms: &[&str],
) -> Result<Vec<(Uuid, String)>, QueueError> {
    if forms.is_empty() {
        return Ok(Vec::new());
    }
    Ok(db
        .query(CANDIDATES_SQL, &[&store, &forms])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Records products of `store` as colliding: `(product, key, form)`.
pub async fn record_key_collisions(
    db: &impl GenericClient,
    store: Uuid,
    colliding: &[(Uuid, &str, &str)],
) -> Result<(), QueueError> {
    if colliding.is_empty() {
        return Ok(());
    }
    let products: Vec<Uuid> = colliding.iter().map(|c| c.0).collect();
    let keys: Vec<&str> = colliding.iter().map(|c| c.1).collect();
    let forms: Vec<&str> = colliding.iter().map(|c| c.2).collect();
    db.execute(RECORD_SQL, &[&store, &products, &keys, &forms])
        .await?;
    Ok(())
}

/// Forgets collisions of these products of `store` (their keys no longer collide). Returns
/// how many were recorded.
pub async fn clear_key_collisions(
    db: &impl GenericClient,
    store: Uuid,
    products: &[Uuid],
) -> Result<u64, QueueError> {
    if products.is_empty() {
        return Ok(0);
    }
    Ok(db.execute(CLEAR_SQL, &[&store, &products]).await?)
}

/// Every recorded collision, by store and listing.
pub async fn key_collisions(db: &impl GenericClient) -> Result<Vec<KeyCollision>, QueueError> {
    Ok(db
        .query(LIST_SQL, &[])
        .await?
        .iter()
        .map(|r| KeyCollision {
            store_id: r.get(0),
            product_id: r.get(1),
            key: r.get(2),
            key_form: r.get(3),
            first_seen: r.get(4),
        })
        .collect())
}
