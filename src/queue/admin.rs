//! The queue as operators see it: resync and retry-failed, what is outstanding, summaries
//! for `status`, `/metrics` and the demo, the checkpoint's lag, and retention.

use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::{Outcome, QueueError, Reason};

/// Every listed pair (of store `$3`, or all) gets a pending entry (`$1` reason, `$2` priority).
const ENQUEUE_ALL_LISTED_SQL: &str = r#"
INSERT INTO stock_sync.queue AS q (product_id, store_id, reason, priority)
SELECT ps.product_id, ps.store_id, $1, $2 FROM product_stores ps
WHERE ps.product_id IS NOT NULL AND ps.store_id IS NOT NULL
  AND ($3::uuid IS NULL OR ps.store_id = $3)
ORDER BY ps.product_id, ps.store_id
ON CONFLICT (product_id, store_id) WHERE state = 'pending' DO UPDATE
SET priority = GREATEST(q.priority, EXCLUDED.priority), not_before = NULL
"#;

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
const RETRY_DEAD_LETTERS_SQL: &str = r#"
WITH dead AS (
    SELECT id, product_id, store_id, priority FROM stock_sync.queue
    WHERE state = 'dead' AND ($1::uuid IS NULL OR store_id = $1)
    FOR UPDATE
), closed AS (
    UPDATE stock_sync.queue q
    SET state = 'done', outcome = $4, finished_at = now()
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

/// Entries still to deliver (of one store, or all), and how many of them wait for a paused
/// store (those need an operator, not patience).
const OUTSTANDING_SQL: &str = r#"
SELECT count(*),
       count(*) FILTER (WHERE q.store_id IN (
           SELECT store_id FROM stock_sync.store_state WHERE paused_reason IS NOT NULL))
FROM stock_sync.queue q
WHERE q.state IN ('pending', 'in_flight') AND ($1::uuid IS NULL OR q.store_id = $1)
"#;

/// Per store: entries by state, the oldest pending entry's age, and entries sent in the last
/// hour.
const STORE_SUMMARIES_SQL: &str = r#"
WITH q AS (
    SELECT store_id,
           count(*) FILTER (WHERE state = 'pending') AS pending,
           count(*) FILTER (WHERE state = 'in_flight') AS in_flight,
           count(*) FILTER (WHERE state = 'dead') AS dead,
           EXTRACT(EPOCH FROM now() - min(enqueued_at) FILTER (WHERE state = 'pending'))::float8 AS oldest
    FROM stock_sync.queue WHERE state <> 'done' GROUP BY store_id
), sent AS (
    SELECT store_id, count(*) AS sent
    FROM stock_sync.queue
    WHERE state = 'done' AND finished_at > now() - interval '1 hour' AND outcome = $1
    GROUP BY store_id
)
SELECT COALESCE(q.store_id, sent.store_id), COALESCE(q.pending, 0), COALESCE(q.in_flight, 0),
       COALESCE(q.dead, 0), q.oldest, COALESCE(sent.sent, 0)
FROM q FULL JOIN sent ON sent.store_id = q.store_id
"#;

const DEAD_LETTERS_SQL: &str = r#"
SELECT store_id, product_id, attempts, last_error,
       to_char(finished_at, 'YYYY-MM-DD"T"HH24:MI:SS.MSOF')
FROM stock_sync.queue WHERE state = 'dead' ORDER BY finished_at DESC LIMIT $1
"#;

/// Pending entries and the oldest one's age per store (for `/metrics`).
const PENDING_BY_STORE_SQL: &str = r#"
SELECT store_id, count(*), EXTRACT(EPOCH FROM now() - min(enqueued_at))::float8
FROM stock_sync.queue WHERE state = 'pending' GROUP BY store_id
"#;

/// Dead-lettered entries per store, 0 for every store dispatch has seen (for `/metrics`).
/// No index covers `state = 'dead'`: the caller runs it seldom.
const DEAD_BY_STORE_SQL: &str = r#"
SELECT store_id, count(*) FILTER (WHERE dead)
FROM (SELECT store_id, true AS dead FROM stock_sync.queue WHERE state = 'dead'
      UNION ALL
      SELECT store_id, false FROM stock_sync.store_state) entries
GROUP BY store_id
"#;

/// Pending and dead entries per store (the demo's table).
const QUEUE_COUNTS_SQL: &str = r#"
SELECT store_id, count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'dead')
FROM stock_sync.queue GROUP BY store_id
"#;

/// The server's WAL position, the checkpoint, the bytes between them, and how long the
/// checkpoint has been behind (0 when caught up).
const CHECKPOINT_LAG_SQL: &str = r#"
SELECT pg_current_wal_lsn()::text,
       c.lsn::text,
       (pg_current_wal_lsn() - c.lsn)::bigint,
       CASE WHEN pg_current_wal_lsn() > c.lsn
            THEN EXTRACT(EPOCH FROM now() - c.updated_at)::float8 ELSE 0 END
FROM (SELECT NULL) dummy
LEFT JOIN stock_sync.checkpoint c ON c.slot_name = $1
"#;

/// Retention (`$1` days) of finished queue entries.
const PRUNE_QUEUE_SQL: &str = "DELETE FROM stock_sync.queue WHERE state = 'done' AND finished_at < now() - make_interval(days => $1::int)";
/// Retention of capture's batch log. Its exclusion guard only has to cover what the slot
/// could still send again, which is never older than the checkpoint.
const PRUNE_CAPTURE_BATCHES_SQL: &str = "DELETE FROM stock_sync.capture_batches WHERE captured_at < now() - make_interval(days => $1::int)";
/// The per-transaction capture log of versions before migration 003 (kept for rollbacks).
const PRUNE_LEGACY_CAPTURE_LOG_SQL: &str =
    "DELETE FROM stock_sync.capture_log WHERE captured_at < now() - make_interval(days => $1::int)";

/// Enqueues every listed pair (of one store, or all) with `reason`. Returns the pairs.
pub async fn enqueue_all_listed(
    db: &impl GenericClient,
    reason: Reason,
    store: Option<Uuid>,
) -> Result<u64, tokio_postgres::Error> {
    db.execute(
        ENQUEUE_ALL_LISTED_SQL,
        &[&reason.as_str(), &reason.priority(), &store],
    )
    .await
}

/// Closes dead letters (of one store, or all) as `retried` and gives each of their pairs one
/// pending entry. Returns the pairs.
pub async fn retry_dead_letters(
    db: &impl GenericClient,
    store: Option<Uuid>,
) -> Result<u64, QueueError> {
    let reason = Reason::Resync;
    Ok(db
        .execute(
            RETRY_DEAD_LETTERS_SQL,
            &[
                &store,
                &reason.as_str(),
                &reason.priority(),
                &Outcome::Retried.as_str(),
            ],
        )
        .await?)
}

/// Entries not yet delivered (of one store, or all), and those of them held by paused stores.
pub async fn outstanding(
    db: &impl GenericClient,
    store: Option<Uuid>,
) -> Result<(i64, i64), QueueError> {
    let row = db.query_one(OUTSTANDING_SQL, &[&store]).await?;
    Ok((row.get(0), row.get(1)))
}

/// One store's queue at a glance.
#[derive(Debug, Clone, Default)]
pub struct StoreSummary {
    pub store_id: Uuid,
    pub pending: i64,
    pub in_flight: i64,
    pub dead: i64,
    pub oldest_pending_age_seconds: Option<f64>,
    /// Entries pushed (outcome `sent`) in the last hour.
    pub sent_last_hour: i64,
}

/// Every store with unfinished entries or sends in the last hour.
pub async fn store_summaries(db: &impl GenericClient) -> Result<Vec<StoreSummary>, QueueError> {
    Ok(db
        .query(STORE_SUMMARIES_SQL, &[&Outcome::Sent.as_str()])
        .await?
        .iter()
        .map(|r| StoreSummary {
            store_id: r.get(0),
            pending: r.get(1),
            in_flight: r.get(2),
            dead: r.get(3),
            oldest_pending_age_seconds: r.get(4),
            sent_last_hour: r.get(5),
        })
        .collect())
}

/// A dead-lettered entry.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub store_id: Uuid,
    pub product_id: Uuid,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub finished_at: Option<String>,
}

/// The newest `limit` dead letters.
pub async fn dead_letters(
    db: &impl GenericClient,
    limit: i64,
) -> Result<Vec<DeadLetter>, QueueError> {
    Ok(db
        .query(DEAD_LETTERS_SQL, &[&limit])
        .await?
        .iter()
        .map(|r| DeadLetter {
            store_id: r.get(0),
            product_id: r.get(1),
            attempts: r.get(2),
            last_error: r.get(3),
            finished_at: r.get(4),
        })
        .collect())
}

/// Pending entries of a store and the oldest one's age in seconds.
#[derive(Debug, Clone)]
pub struct PendingByStore {
    pub store_id: Uuid,
    pub pending: i64,
    pub oldest_age_seconds: f64,
}

pub async fn pending_by_store(db: &impl GenericClient) -> Result<Vec<PendingByStore>, QueueError> {
    Ok(db
        .query(PENDING_BY_STORE_SQL, &[])
        .await?
        .iter()
        .map(|r| PendingByStore {
            store_id: r.get(0),
            pending: r.get(1),
            oldest_age_seconds: r.get::<_, Option<f64>>(2).unwrap_or(0.0),
        })
        .collect())
}

/// Dead letters per store, including 0 for the stores dispatch has a state row for.
pub async fn dead_by_store(db: &impl GenericClient) -> Result<Vec<(Uuid, i64)>, QueueError> {
    Ok(db
        .query(DEAD_BY_STORE_SQL, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Pending and dead entries of a store.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueCounts {
    pub pending: i64,
    pub dead: i64,
}

pub async fn queue_counts(db: &impl GenericClient) -> Result<Vec<(Uuid, QueueCounts)>, QueueError> {
    Ok(db
        .query(QUEUE_COUNTS_SQL, &[])
        .await?
        .iter()
        .map(|r| {
            (
                r.get(0),
                QueueCounts {
                    pending: r.get(1),
                    dead: r.get(2),
                },
            )
        })
        .collect())
}

/// How far the checkpoint is behind the server.
#[derive(Debug, Clone)]
pub struct CheckpointLag {
    pub server_lsn: String,
    pub checkpoint_lsn: Option<String>,
    pub lag_bytes: Option<i64>,
    pub lag_seconds: Option<f64>,
}

pub async fn checkpoint_lag(
    db: &impl GenericClient,
    slot: &str,
) -> Result<CheckpointLag, QueueError> {
    let row = db.query_one(CHECKPOINT_LAG_SQL, &[&slot]).await?;
    Ok(CheckpointLag {
        server_lsn: row.get(0),
        checkpoint_lsn: row.get(1),
        lag_bytes: row.get(2),
        lag_seconds: row.get(3),
    })
}

/// The tables whose size changes by hundreds of thousands of rows in minutes (a first sync,
/// an ERP import, a resync), with the statement that analyses each.
const FAST_CHANGING_TABLES: [(&str, &str); 2] = [
    ("stock_sync.queue", "ANALYZE stock_sync.queue"),
    (
        "stock_sync.listing_state",
        "ANALYZE stock_sync.listing_state",
    ),
];

/// Which of the tables `$2` have planner statistics that describe another table than the one
/// there is: at least `$1` rows and at least as many as the table had were changed since its
/// last ANALYZE, and this role may analyse it (it owns the table).
const STALE_STATISTICS_SQL: &str = r#"
SELECT c.oid::regclass::text
FROM pg_stat_user_tables s
JOIN pg_class c ON c.oid = s.relid
WHERE s.relid = ANY($2::text[]::regclass[])
  AND s.n_mod_since_analyze >= GREATEST($1::bigint, c.reltuples::bigint)
  AND pg_has_role(c.relowner, 'USAGE')
"#;

/// Fewer changed rows than this never make statistics stale (autovacuum's analyse catches
/// up with those).
pub const STALE_STATISTICS_ROWS: i64 = 10_000;

/// Analyses the queue and `listing_state` where their statistics are stale (see
/// `STALE_STATISTICS_SQL`). Returns the tables analysed.
///
/// Why dispatch cares: with the statistics of an empty queue the planner expects a handful
/// of pending rows per store and reads and sorts a store's whole backlog for every claim and
/// due check instead of following the claim-order index; with those of an empty
/// `listing_state` it reads a store's every row to find a batch's 1000. Autovacuum's analyse
/// comes a minute or more later: an initial sync ran at half its possible pace until then.
pub async fn refresh_statistics(db: &impl GenericClient) -> Result<Vec<String>, QueueError> {
    let names: Vec<&str> = FAST_CHANGING_TABLES.iter().map(|(t, _)| *t).collect();
    let stale: Vec<String> = db
        .query(STALE_STATISTICS_SQL, &[&STALE_STATISTICS_ROWS, &names])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (table, analyze) in FAST_CHANGING_TABLES {
        if stale.iter().any(|s| s == table) {
            db.batch_execute(analyze).await?;
        }
    }
    Ok(stale)
}

/// Deletes finished entries and capture logs older than `retention_days`. Returns rows.
pub async fn prune(db: &impl GenericClient, retention_days: i32) -> Result<u64, QueueError> {
    let mut rows = 0;
    for sql in [
        PRUNE_QUEUE_SQL,
        PRUNE_CAPTURE_BATCHES_SQL,
        PRUNE_LEGACY_CAPTURE_LOG_SQL,
    ] {
        rows += db.execute(sql, &[&retention_days]).await?;
    }
    Ok(rows)
}
