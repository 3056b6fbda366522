//! The SQL capture runs: enqueue (with parent-set expansion), the capture log, the checkpoint,
//! the first-run snapshot and TRUNCATE handling. All run on capture's dedicated connection,
//! inside the capture batch's transaction.

use tokio_postgres::Client;

use crate::replication::Lsn;

/// The upsert shared by every statement that writes capture's queue rows: one pending entry
/// per pair; a new change raises the priority and keeps the original enqueue time. It also
/// lifts a deferral (`not_before`, set by retry backoff or the identical-body rule): the new
/// quantity is new information and must not wait behind a stale one.
macro_rules! upsert_pending {
    () => {
        r#"
ON CONFLICT (product_id, store_id) WHERE state = 'pending' DO UPDATE
SET priority = GREATEST(q.priority, EXCLUDED.priority),
    reason = CASE WHEN EXCLUDED.priority > q.priority THEN EXCLUDED.reason ELSE q.reason END,
    commit_lsn = GREATEST(q.commit_lsn, EXCLUDED.commit_lsn),
    not_before = NULL
"#
    };
}

/// The seeds that name their own pair (`product_stores` changes), listed or not: a deleted
/// row must be pushed as 0 once. The seeds are unique per pair (see `SeedSet`), so a plain
/// upsert suffices. Rows are written in (product, store) order, as every other multi-row
/// upsert of the queue does, so two of them cannot deadlock on each other's rows.
///
/// Parameters (one element per seed, shared with [`ENQUEUE_SETS_SQL`]): `$1` product,
/// `$2` store (NULL for a composition seed), `$3` priority, `$4` reason, `$5` commit LSN.
pub const ENQUEUE_PAIRS_SQL: &str = concat!(
    r#"
INSERT INTO stock_sync.queue AS q (product_id, store_id, reason, priority, commit_lsn)
SELECT p, s, r, pr, l
FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::pg_lsn[]) AS u(p, s, pr, r, l)
WHERE s IS NOT NULL
ORDER BY p, s"#,
    upsert_pending!()
);

/// Every set above the seeds, directly or through nested sets, and the sets of composition
/// seeds (store NULL), where they are listed (have their own `product_stores` row): in the
/// seed's store, or in every store for a composition seed.
///
/// * A separate statement from [`ENQUEUE_PAIRS_SQL`] so the common seed — a product in no
///   set — costs one index probe here instead of a trip through the recursion and grouping.
/// * `UNION` (not `UNION ALL`) in the recursion makes a composition cycle terminate.
/// * One row per pair: the highest priority (and its reason) and the newest commit, which may
///   come from different seeds.
pub const ENQUEUE_SETS_SQL: &str = concat!(
    r#"
WITH RECURSIVE seed(product_id, store_id, priority, reason, commit_lsn) AS (
    SELECT p, s, pr, r, l
    FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::pg_lsn[]) AS u(p, s, pr, r, l)
),
reach(product_id, store_id, priority, reason, commit_lsn) AS (
    SELECT product_id, store_id, priority, reason, commit_lsn FROM seed WHERE store_id IS NULL
    UNION
    SELECT psi.set_product_id, sd.store_id, sd.priority, sd.reason, sd.commit_lsn
    FROM seed sd
    JOIN product_set_items psi ON psi.component_product_id = sd.product_id
    UNION
    SELECT psi.set_product_id, r.store_id, r.priority, r.reason, r.commit_lsn
    FROM reach r
    JOIN product_set_items psi ON psi.component_product_id = r.product_id
),
best AS (
    SELECT r.product_id, ps.store_id, max(r.priority) AS priority,
           (array_agg(r.reason ORDER BY r.priority DESC))[1] AS reason,
           max(r.commit_lsn) AS commit_lsn
    FROM reach r
    JOIN product_stores ps ON ps.product_id = r.product_id
    WHERE r.store_id IS NULL OR ps.store_id = r.store_id
    GROUP BY r.product_id, ps.store_id
)
INSERT INTO stock_sync.queue AS q (product_id, store_id, reason, priority, commit_lsn)
SELECT product_id, store_id, reason, priority, commit_lsn FROM best
ORDER BY product_id, store_id"#,
    upsert_pending!()
);

/// One row per capture batch: its LSN span `[$1, $2)` (first commit, last end), and per
/// transaction its xid (`$3`) and commit LSN (`$5`). The span's exclusion constraint rejects
/// a second capture of any transaction (SQLSTATE 23P01).
pub const CAPTURE_BATCH_SQL: &str = r#"
INSERT INTO stock_sync.capture_batches
    (lsns, transactions, row_changes, xids, commit_lsns, last_commit_time)
VALUES (stock_sync.lsn_range($1::pg_lsn, $2::pg_lsn), cardinality($3::bigint[]), $4,
        $3, $5::pg_lsn[], $6)
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
