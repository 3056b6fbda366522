//! Reconciliation's side of the queue: which pairs are in motion (so a difference is not
//! drift), repairs, and whether capture has passed a WAL position.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::{QueueError, Reason};

/// Of products `$2` in store `$1`, those in motion: a pending or in-flight entry, a push
/// whose item result is still open (`sent_quantity`), an entry closed (whatever its outcome)
/// or a push accepted within the last `$3` seconds. An entry closed as `unchanged` counts: the
/// quantity it computed equalled what the marketplace was told, so a truth computed before it
/// (the pair changed and changed back while capture was waited for) is out of date. Each
/// branch is answered by an index: the pending pair index, the in-flight and finished
/// partial indexes (few rows each), the `listing_state` primary key.
const IN_MOTION_SQL: &str = r#"
SELECT u.product_id FROM unnest($2::uuid[]) AS u(product_id)
WHERE EXISTS (SELECT 1 FROM stock_sync.queue q
              WHERE q.product_id = u.product_id AND q.store_id = $1 AND q.state = 'pending')
   OR u.product_id IN (SELECT q.product_id FROM stock_sync.queue q
                       WHERE q.state = 'in_flight' AND q.store_id = $1)
   OR u.product_id IN (SELECT q.product_id FROM stock_sync.queue q
                       WHERE q.state = 'done' AND q.store_id = $1
                         AND q.finished_at > now() - make_interval(secs => $3::float8))
   OR EXISTS (SELECT 1 FROM stock_sync.listing_state l
              WHERE l.store_id = $1 AND l.product_id = u.product_id
                AND (l.sent_quantity IS NOT NULL
                     OR l.accepted_at > now() - make_interval(secs => $3::float8)))
"#;

/// Products `$2` of store `$1` get a pending entry (`$3` reason, `$4` priority); an existing
/// pending entry keeps its age, takes the higher priority (and its reason) and is no longer
/// deferred, as every writer's upsert does.
const ENQUEUE_PAIRS_SQL: &str = r#"
INSERT INTO stock_sync.queue AS q (product_id, store_id, reason, priority)
SELECT u.product_id, $1, $3, $4 FROM unnest($2::uuid[]) AS u(product_id)
ORDER BY u.product_id
ON CONFLICT (product_id, store_id) WHERE state = 'pending' DO UPDATE
SET priority = GREATEST(q.priority, EXCLUDED.priority),
    reason = CASE WHEN EXCLUDED.priority > q.priority THEN EXCLUDED.reason ELSE q.reason END,
    not_before = NULL
"#;

/// Of products `$2` in store `$1`, the last quantity the marketplace accepted and when (both
/// known only).
const LAST_ACCEPTED_SQL: &str = r#"
SELECT product_id, accepted_quantity, accepted_at FROM stock_sync.listing_state
WHERE store_id = $1 AND product_id = ANY($2::uuid[])
  AND accepted_quantity IS NOT NULL AND accepted_at IS NOT NULL
"#;

/// Whether slot `$1`'s checkpoint is at or past WAL position `$2` (false without one).
const CHECKPOINT_REACHED_SQL: &str = r#"
SELECT COALESCE((SELECT lsn >= $2::text::pg_lsn FROM stock_sync.checkpoint WHERE slot_name = $1), false)
"#;

/// Which of `products` (store `store`) are in motion: a pending or in-flight entry, an open
/// item result, or an entry closed or a push accepted within `window` (see
/// [`IN_MOTION_SQL`]).
pub async fn in_motion(
    db: &impl GenericClient,
    store: Uuid,
    products: &[Uuid],
    window: Duration,
) -> Result<HashSet<Uuid>, QueueError> {
    if products.is_empty() {
        return Ok(HashSet::new());
    }
    Ok(db
        .query(IN_MOTION_SQL, &[&store, &products, &window.as_secs_f64()])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Of `products` (store `store`), the last quantity the marketplace accepted and when it
/// was accepted, where both are known.
pub async fn last_accepted(
    db: &impl GenericClient,
    store: Uuid,
    products: &[Uuid],
) -> Result<HashMap<Uuid, (i32, DateTime<Utc>)>, QueueError> {
    if products.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(db
        .query(LAST_ACCEPTED_SQL, &[&store, &products])
        .await?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// Gives each of `products` of `store` a pending entry with `reason`. Returns the rows
/// written (new or raised).
pub async fn enqueue_pairs(
    db: &impl GenericClient,
    store: Uuid,
    products: &[Uuid],
    reason: Reason,
) -> Result<u64, QueueError> {
    if products.is_empty() {
        return Ok(0);
    }
    Ok(db
        .execute(
            ENQUEUE_PAIRS_SQL,
            &[&store, &products, &reason.as_str(), &reason.priority()],
        )
        .await?)
}

/// Whether capture's checkpoint for `slot` has reached `lsn` (text form, e.g. `0/16B3748`):
/// every transaction committed before it is in the queue.
pub async fn checkpoint_reached(
    db: &impl GenericClient,
    slot: &str,
    lsn: &str,
) -> Result<bool, QueueError> {
    Ok(db
        .query_one(CHECKPOINT_REACHED_SQL, &[&slot, &lsn])
        .await?
        .get(0))
}
