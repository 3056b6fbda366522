//! What capture writes: queue entries (with parent-set expansion), the capture batch log and
//! the checkpoint, all in one transaction on capture's dedicated connection
//! ([`CaptureWriter`]); the first-run snapshot; TRUNCATE handling.

use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio_postgres::types::{PgLsn, ToSql};
use tokio_postgres::{Client, Statement};
use tracing::{debug, info};
use uuid::Uuid;

use super::admin::enqueue_all_listed;
use super::Reason;
use crate::metrics::metrics;
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
const CAPTURE_BATCH_SQL: &str = r#"
INSERT INTO stock_sync.capture_batches
    (lsns, transactions, row_changes, xids, commit_lsns, last_commit_time)
VALUES (stock_sync.lsn_range($1::pg_lsn, $2::pg_lsn), cardinality($3::bigint[]), $4,
        $3, $5::pg_lsn[], $6)
"#;

/// The checkpoint never moves backwards.
const ADVANCE_CHECKPOINT_SQL: &str = r#"
INSERT INTO stock_sync.checkpoint (slot_name, lsn, updated_at) VALUES ($1, $2::text::pg_lsn, now())
ON CONFLICT (slot_name) DO UPDATE
SET lsn = GREATEST(stock_sync.checkpoint.lsn, EXCLUDED.lsn), updated_at = now()
"#;

const READ_CHECKPOINT_SQL: &str =
    "SELECT lsn::text FROM stock_sync.checkpoint WHERE slot_name = $1";

/// First run: the checkpoint row is created only if absent (another instance may have won).
const FIRST_CHECKPOINT_SQL: &str = r#"
INSERT INTO stock_sync.checkpoint (slot_name, lsn) VALUES ($1, $2::text::pg_lsn)
ON CONFLICT (slot_name) DO NOTHING
"#;

const SLOT_CONFIRMED_SQL: &str =
    "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1";

/// TRUNCATE product_stores: every pair the marketplaces were told about gets its 0.
const TRUNCATE_PRODUCT_STORES_SQL: &str = r#"
INSERT INTO stock_sync.queue AS q (product_id, store_id, reason, priority, commit_lsn)
SELECT ls.product_id, ls.store_id, $2::text, $3::int, $1::text::pg_lsn FROM stock_sync.listing_state ls
ON CONFLICT (product_id, store_id) WHERE state = 'pending' DO UPDATE
SET priority = GREATEST(q.priority, EXCLUDED.priority), commit_lsn = EXCLUDED.commit_lsn,
    not_before = NULL
"#;

/// TRUNCATE product_set_items: every set, wherever it is listed or was last told about.
const TRUNCATE_SET_ITEMS_SQL: &str = r#"
INSERT INTO stock_sync.queue AS q (product_id, store_id, reason, priority, commit_lsn)
SELECT DISTINCT pair.product_id, pair.store_id, $2::text, $3::int, $1::text::pg_lsn
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
    client: &impl tokio_postgres::GenericClient,
    slot: &str,
) -> Result<Option<Lsn>, tokio_postgres::Error> {
    let row = client.query_opt(READ_CHECKPOINT_SQL, &[&slot]).await?;
    Ok(row
        .and_then(|r| r.get::<_, Option<String>>(0))
        .and_then(|text| text.parse().ok()))
}

/// Seeds as column arrays, one element per (product, store-or-every-store) pair.
#[derive(Debug, Default)]
pub struct SeedColumns {
    pub product_ids: Vec<Uuid>,
    /// `None`: every store where the product is listed (a composition seed).
    pub store_ids: Vec<Option<Uuid>>,
    pub priorities: Vec<i32>,
    pub reasons: Vec<String>,
    pub commit_lsns: Vec<PgLsn>,
}

impl SeedColumns {
    pub fn push(
        &mut self,
        product_id: Uuid,
        store_id: Option<Uuid>,
        reason: Reason,
        commit_lsn: Lsn,
    ) {
        self.product_ids.push(product_id);
        self.store_ids.push(store_id);
        self.priorities.push(reason.priority());
        self.reasons.push(reason.as_str().to_string());
        self.commit_lsns.push(commit_lsn.into());
    }

    pub fn is_empty(&self) -> bool {
        self.product_ids.is_empty()
    }
}

/// One WAL transaction of a capture batch, for the batch log.
#[derive(Debug, Clone)]
pub struct CapturedTransaction {
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub xid: u32,
    pub commit_time: DateTime<Utc>,
    pub row_changes: i32,
}

/// Which published table a TRUNCATE emptied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TruncatedTable {
    ProductStores,
    ProductSetItems,
}

/// How the first run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstRun {
    /// Every listed pair was enqueued with the first checkpoint (the slot's confirmed LSN).
    Snapshot { checkpoint: Lsn, pairs: u64 },
    /// Another instance finished its first run meanwhile; its checkpoint.
    AlreadyDone(Option<Lsn>),
    /// The slot does not exist.
    SlotMissing,
}

/// Capture's connection with its prepared statements and transaction state. One open
/// database transaction at a time: seeds may be written into it in several spills, and
/// [`CaptureWriter::commit`] ends it with the batch log and the checkpoint.
pub struct CaptureWriter {
    client: Client,
    slot: String,
    in_transaction: bool,
    enqueue_pairs: Statement,
    enqueue_sets: Statement,
    capture_batch: Statement,
    advance: Statement,
}

impl CaptureWriter {
    pub async fn new(client: Client, slot: String) -> Result<CaptureWriter, tokio_postgres::Error> {
        let (enqueue_pairs, enqueue_sets, capture_batch, advance) = futures_util::try_join!(
            client.prepare(ENQUEUE_PAIRS_SQL),
            client.prepare(ENQUEUE_SETS_SQL),
            client.prepare(CAPTURE_BATCH_SQL),
            client.prepare(ADVANCE_CHECKPOINT_SQL),
        )?;
        Ok(CaptureWriter {
            client,
            slot,
            in_transaction: false,
            enqueue_pairs,
            enqueue_sets,
            capture_batch,
            advance,
        })
    }

    /// The connection, for capture's own reads (slot state, leadership).
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn begin(&mut self) -> Result<(), tokio_postgres::Error> {
        if !self.in_transaction {
            self.client.batch_execute("BEGIN").await?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Writes seeds into the open transaction (opening one). Returns queue rows written.
    pub async fn write_seeds(&mut self, c: &SeedColumns) -> Result<u64, tokio_postgres::Error> {
        if c.is_empty() {
            return Ok(0);
        }
        self.begin().await?;
        let params: [&(dyn ToSql + Sync); 5] = [
            &c.product_ids,
            &c.store_ids,
            &c.priorities,
            &c.reasons,
            &c.commit_lsns,
        ];
        // Both statements are sent at once (the connection pipelines them); they run in order.
        let (pairs, sets) = futures_util::try_join!(
            self.client.execute(&self.enqueue_pairs, &params),
            self.client.execute(&self.enqueue_sets, &params),
        )?;
        metrics().queue_entries_written.inc_by(pairs + sets);
        Ok(pairs + sets)
    }

    /// A TRUNCATE of a published table, in the open transaction: every pair it may have
    /// touched is enqueued. Returns queue rows written.
    pub async fn truncate(
        &mut self,
        table: TruncatedTable,
        commit_lsn: Lsn,
    ) -> Result<u64, tokio_postgres::Error> {
        self.begin().await?;
        let (sql, reason) = match table {
            TruncatedTable::ProductStores => (TRUNCATE_PRODUCT_STORES_SQL, Reason::StockRemoved),
            TruncatedTable::ProductSetItems => (TRUNCATE_SET_ITEMS_SQL, Reason::CompositionChanged),
        };
        let lsn = commit_lsn.to_string();
        self.client
            .execute(sql, &[&lsn, &reason.as_str(), &reason.priority()])
            .await
    }

    /// Commits the batch: its last seeds, its log row (when it holds transactions) and the
    /// checkpoint `position` — one transaction.
    pub async fn commit(
        &mut self,
        seeds: &SeedColumns,
        transactions: &[CapturedTransaction],
        position: Lsn,
    ) -> Result<(), tokio_postgres::Error> {
        let started = Instant::now();
        self.write_seeds(seeds).await?;
        let seeds_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.begin().await?;
        let position = position.to_string();
        let advance_params: [&(dyn ToSql + Sync); 2] = [&self.slot, &position];
        let advance = self.client.execute(&self.advance, &advance_params);
        if let (Some(first), Some(last)) = (transactions.first(), transactions.last()) {
            let span = (PgLsn::from(first.commit_lsn), PgLsn::from(last.end_lsn));
            let xids: Vec<i64> = transactions.iter().map(|t| i64::from(t.xid)).collect();
            let commit_lsns: Vec<PgLsn> =
                transactions.iter().map(|t| t.commit_lsn.into()).collect();
            let row_changes: i32 = transactions.iter().map(|t| t.row_changes).sum();
            let log_params: [&(dyn ToSql + Sync); 6] = [
                &span.0,
                &span.1,
                &xids,
                &row_changes,
                &commit_lsns,
                &last.commit_time,
            ];
            // Sent together; they run in order.
            let logged = self.client.execute(&self.capture_batch, &log_params);
            futures_util::try_join!(logged, advance)?;
        } else {
            advance.await?;
        }
        let before_commit = Instant::now();
        self.client.batch_execute("COMMIT").await?;
        self.in_transaction = false;
        debug!(
            seeds_ms,
            commit_ms = before_commit.elapsed().as_secs_f64() * 1000.0,
            total_ms = started.elapsed().as_secs_f64() * 1000.0,
            "capture transaction written"
        );
        Ok(())
    }

    /// Persists an idle keepalive position (autocommit; nothing may be open).
    pub async fn advance_idle(&mut self, position: Lsn) -> Result<(), tokio_postgres::Error> {
        debug_assert!(!self.in_transaction);
        let position = position.to_string();
        self.client
            .execute(&self.advance, &[&self.slot, &position])
            .await?;
        Ok(())
    }

    /// No checkpoint yet: snapshot every listed pair and write the first checkpoint together.
    pub async fn first_run(&mut self) -> Result<FirstRun, tokio_postgres::Error> {
        debug_assert!(!self.in_transaction);
        self.client.batch_execute("BEGIN").await?;
        let confirmed: Option<String> = self
            .client
            .query_opt(SLOT_CONFIRMED_SQL, &[&self.slot])
            .await?
            .and_then(|r| r.get(0));
        let Some(confirmed) = confirmed.and_then(|t| t.parse::<Lsn>().ok()) else {
            self.client.batch_execute("ROLLBACK").await?;
            return Ok(FirstRun::SlotMissing);
        };
        let pairs = enqueue_all_listed(&self.client, Reason::InitialSync, None).await?;
        let position = confirmed.to_string();
        let created = self
            .client
            .execute(FIRST_CHECKPOINT_SQL, &[&self.slot, &position])
            .await?;
        if created == 0 {
            self.client.batch_execute("ROLLBACK").await?;
            return Ok(FirstRun::AlreadyDone(
                read_checkpoint(&self.client, &self.slot).await?,
            ));
        }
        self.client.batch_execute("COMMIT").await?;
        info!(pairs, checkpoint = %confirmed, "first run: every listed pair enqueued");
        Ok(FirstRun::Snapshot {
            checkpoint: confirmed,
            pairs,
        })
    }
}
