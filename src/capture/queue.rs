//! The SQL capture runs: enqueue (with parent-set expansion), the capture log, the checkpoint,
//! the first-run snapshot and TRUNCATE handling. All run on capture's dedicated connection,
//! inside the capture batch's transaction.

use tokio_postgres::Client;

use crate::replication::Lsn;

/// Enqueues seeds and every set that contains them, directly or through nested sets.
///
/// * A seed with a store (a `product_stores` change) names its own pair, listed or not: a
///   deleted row must be pushed as 0 once. Only the sets above it (`via_set`) and
///   composition seeds need the listing lookup.
/// * Sets reached through `product_set_items`, and composition seeds (store NULL), are
///   enqueued only where the set is listed (has its own `product_stores` row).
/// * `UNION` (not `UNION ALL`) in the recursion makes a composition cycle terminate.
/// * Rows are written in (product, store) order, as every other multi-row upsert of the
///   queue does, so two of them cannot deadlock on each other's rows.
/// * One pending entry per pair: a new change raises the priority and keeps the original
///   enqueue time. It also lifts a deferral (`not_before`, set by retry backoff or the
///   identical-body rule): the new quantity is new information and must not wait behind a
///   stale one.
pub const ENQUEUE_SQL: &str = r#"
WITH RECURSIVE seed(product_id, store_id, priority, reason, commit_lsn) AS (
    SELECT p, s, pr, r, l::pg_lsn
    FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::text[]) AS u(p, s, pr, r, l)
),
reach(product_id, store_id, priority, reason, commit_lsn, via_set) AS (
    SELECT product_id, store_id, priority, reason, commit_lsn, false FROM seed
    UNION
    SELECT psi.set_product_id, r.store_id, r.priority, r.reason, r.commit_lsn, true
    FROM reach r
    JOIN product_set_items psi ON psi.component_product_id = r.product_id
),
target AS (
    SELECT product_id, store_id, priority, reason, commit_lsn FROM seed WHERE store_id IS NOT NULL
    UNION ALL
    SELECT r.product_id, ps.store_id, r.priority, r.reason, r.commit_lsn
    FROM reach r
    JOIN product_stores ps ON ps.product_id = r.product_id
    WHERE (r.via_set OR r.store_id IS NULL)
      AND (r.store_id IS NULL OR ps.store_id = r.store_id)
),
-- One row per pair: the highest priority (and its reason) and the newest commit, which may
-- come from different seeds.
best AS (
    SELECT product_id, store_id, max(priority) AS priority,
           (array_agg(reason ORDER BY priority DESC))[1] AS reason,
           max(commit_lsn) AS commit_lsn
    FROM target
    GROUP BY product_id, store_id
)
INSERT INTO stock_sync.queue AS q (product_id, store_id, reason, priority, commit_lsn)
SELECT product_id, store_id, reason, priority, commit_lsn FROM best
ORDER BY product_id, store_id
ON CONFLICT (product_id, store_id) WHERE state = 'pending' DO UPDATE
SET priority = GREATEST(q.priority, EXCLUDED.priority),
    reason = CASE WHEN EXCLUDED.priority > q.priority THEN EXCLUDED.reason ELSE q.reason END,
    commit_lsn = GREATEST(q.commit_lsn, EXCLUDED.commit_lsn),
    not_before = NULL
"#;

/// One row per captured WAL transaction (primary key: commit LSN).
pub const CAPTURE_LOG_SQL: &str = r#"
INSERT INTO stock_sync.capture_log (commit_lsn, end_lsn, xid, commit_time, row_changes)
SELECT c::pg_lsn, e::pg_lsn, x, t, n
FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[], $5::int[]) AS u(c, e, x, t, n)
"#;

/// The checkpoint never moves backwards.
pub const ADVANCE_CHECKPOINT_SQL: &str = r#"
INSERT INTO stock_sync.checkpoint (slot_name, lsn, updated_at) VALUES ($1, $2::text::pg_lsn, now())
ON CONFLICT (slot_name) DO UPDATE
SET lsn = GREATEST(stock_sync.checkpoint.lsn, EXCLUDED.lsn), updated_at = now()
"#;

pub const READ_CHECKPOINT_SQL: &str =
    "SELECT lsn::text FROM stock_sync.checkpoint WHERE slot_name = $1";

/// First run: the checkpoint row is created only if absent (another instance may have won).
pub const FIRST_CHECKPOINT_SQL: &str = r#"
INSERT INTO stock_sync.checkpoint (slot_name, lsn) VALUES ($1, $2::text::pg_lsn)
ON CONFLICT (slot_name) DO NOTHING
"#;

/// First run (and `resync`): every listed pair, once. `$1` is the reason, `$2` its priority,
/// `$3` an optional store filter.
pub const ENQUEUE_ALL_LISTED_SQL: &str = r#"
INSERT INTO stock_sync.queue AS q (product_id, store_id, reason, priority)
SELECT ps.product_id, ps.store_id, $1, $2 FROM product_stores ps
WHERE ps.product_id IS NOT NULL AND ps.store_id IS NOT NULL
  AND ($3::uuid IS NULL OR ps.store_id = $3)
ORDER BY ps.product_id, ps.store_id
ON CONFLICT (product_id, store_id) WHERE state = 'pending' DO UPDATE
SET priority = GREATEST(q.priority, EXCLUDED.priority), not_before = NULL
"#;

/// TRUNCATE product_stores: every pair the marketplaces were told about gets its 0.
pub const TRUNCATE_PRODUCT_STORES_SQL: &str = r#"
INSERT INTO stock_sync.queue AS q (product_id, store_id, reason, priority, commit_lsn)
SELECT ls.product_id, ls.store_id, 'STOCK_REMOVED', 80, $1::text::pg_lsn FROM stock_sync.listing_state ls
ON CONFLICT (product_id, store_id) WHERE state = 'pending' DO UPDATE
SET priority = GREATEST(q.priority, EXCLUDED.priority), commit_lsn = EXCLUDED.commit_lsn,
    not_before = NULL
"#;

/// TRUNCATE product_set_items: every set, wherever it is listed or was last told about.
pub const TRUNCATE_SET_ITEMS_SQL: &str = r#"
INSERT INTO stock_sync.queue AS q (product_id, store_id, reason, priority, commit_lsn)
SELECT DISTINCT pair.product_id, pair.store_id, 'COMPOSITION_CHANGED', 60, $1::text::pg_lsn
FROM (
    SELECT product_id, store_id FROM product_stores
    UNION SELECT product_id, store_id FROM stock_sync.listing_state
) pair
JOIN products p ON p.id = pair.product_id AND p.product_type = 'SET'
ON CONFLICT (product_id, store_id) WHERE state = 'pending' DO UPDATE
SET priority = GREATEST(q.priority, EXCLUDED.priority), commit_lsn = EXCLUDED.commit_lsn,
    not_before = NULL
"#;

/// Reads the checkpoint of `slot`, if any.
pub async fn read_checkpoint(
    client: &Client,
    slot: &str,
) -> Result<Option<Lsn>, tokio_postgres::Error> {
    let row = client.query_opt(READ_CHECKPOINT_SQL, &[&slot]).await?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|text| text.parse().ok()))
}
