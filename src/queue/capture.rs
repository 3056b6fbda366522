//! What capture writes: queue entries (with parent-set expansion), the capture batch log and
//! the checkpoint, all in one transaction on capture's dedicated connection
//! ([`CaptureWriter`]); the staging of streamed transactions (`stream_staging`) and its move
//! into the queue at their commit; the first-run snapshot; TRUNCATE handling.

use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{PgLsn, ToSql, Type};
use tokio_postgres::{Client, Statement};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::admin::enqueue_all_listed;
use super::visibility::current_snapshot;
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

/// Every set above the seeds in the relation `seed(product_id, store_id, priority, reason,
/// commit_lsn)` (defined before it by the statement), directly or through nested sets, and the
/// sets of composition seeds (store NULL), where they are listed (have their own
/// `product_stores` row): in the seed's store, or in every store for a composition seed.
///
/// * `UNION` (not `UNION ALL`) in the recursion makes a composition cycle terminate.
/// * One row per pair: the highest priority (and its reason) and the newest commit, which may
///   come from different seeds.
macro_rules! enqueue_sets_of_seed {
    () => {
        concat!(
            r#"
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
        )
    };
}

/// The sets above the seeds ([`enqueue_sets_of_seed`]), for the seeds given as arrays like
/// [`ENQUEUE_PAIRS_SQL`]'s. A separate statement so that a seed of a product in no set costs
/// nothing here: capture only passes composition seeds and seeds of products it knows to be
/// components of some set (see `SeedColumns`).
pub const ENQUEUE_SETS_SQL: &str = concat!(
    r#"
WITH RECURSIVE seed(product_id, store_id, priority, reason, commit_lsn) AS (
    SELECT p, s, pr, r, l
    FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::pg_lsn[]) AS u(p, s, pr, r, l)
),"#,
    enqueue_sets_of_seed!()
);

/// Staged seeds of a streamed transaction, one COPY per chunk (binary format; the column
/// types are [`STAGE_TYPES`]).
const STAGE_COPY_SQL: &str = "COPY stock_sync.stream_staging \
     (slot_name, xid, subxid, product_id, store_id, priority, reason) FROM STDIN (FORMAT binary)";

const STAGE_TYPES: [Type; 7] = [
    Type::TEXT,
    Type::INT8,
    Type::INT8,
    Type::UUID,
    Type::UUID,
    Type::INT4,
    Type::TEXT,
];

/// The staged pairs of transaction `$2` of slot `$1`, committed at `$3`, into the queue: one
/// row per pair (staged rows of one pair may come from several chunks or subtransactions),
/// with the highest priority.
///
/// An update of the pending entries the pairs already have, then a plain insert of the
/// others, not an `INSERT ... ON CONFLICT`: a speculative insertion is an incomplete change
/// in the server's reorder buffer until its confirmation, and the server cannot stream a
/// transaction holding one when its memory runs over, so it spills the whole transaction to
/// disk instead; the move is the largest transaction capture writes. A pending entry that
/// another writer commits between this statement's snapshot and its insert makes it fail
/// with a unique violation: [`CaptureWriter::move_staged`] then runs
/// [`ENQUEUE_STAGED_PAIRS_UPSERT_SQL`] instead. New rows are written in (product, store)
/// order (locality in the pair index); pending entries are updated in the plan's order, and a
/// deadlock with another writer of them ends the capture transaction like any lock conflict
/// (retried at once, see `CaptureError::is_lock_conflict`).
const ENQUEUE_STAGED_PAIRS_SQL: &str = r#"
WITH staged AS MATERIALIZED (
    SELECT DISTINCT ON (product_id, store_id) product_id, store_id, reason, priority
    FROM stock_sync.stream_staging
    WHERE slot_name = $1 AND xid = $2 AND store_id IS NOT NULL
    ORDER BY product_id, store_id, priority DESC
), updated AS (
    UPDATE stock_sync.queue q
    SET priority = GREATEST(q.priority, s.priority),
        reason = CASE WHEN s.priority > q.priority THEN s.reason ELSE q.reason END,
        commit_lsn = GREATEST(q.commit_lsn, $3::pg_lsn),
        not_before = NULL
    FROM staged s
    WHERE q.state = 'pending' AND q.product_id = s.product_id AND q.store_id = s.store_id
    RETURNING q.product_id, q.store_id
)
INSERT INTO stock_sync.queue (product_id, store_id, reason, priority, commit_lsn)
SELECT s.product_id, s.store_id, s.reason, s.priority, $3::pg_lsn
FROM staged s
WHERE NOT EXISTS (
    SELECT 1 FROM updated u WHERE u.product_id = s.product_id AND u.store_id = s.store_id)
ORDER BY s.product_id, s.store_id
"#;

/// [`ENQUEUE_STAGED_PAIRS_SQL`] as an upsert: right whatever other writers do meanwhile.
const ENQUEUE_STAGED_PAIRS_UPSERT_SQL: &str = concat!(
    r#"
INSERT INTO stock_sync.queue AS q (product_id, store_id, reason, priority, commit_lsn)
SELECT DISTINCT ON (product_id, store_id) product_id, store_id, reason, priority, $3::pg_lsn
FROM stock_sync.stream_staging
WHERE slot_name = $1 AND xid = $2 AND store_id IS NOT NULL
ORDER BY product_id, store_id, priority DESC"#,
    upsert_pending!()
);

/// The sets above the staged seeds of transaction `$2` of slot `$1`, committed at `$3`.
const ENQUEUE_STAGED_SETS_SQL: &str = concat!(
    r#"
WITH RECURSIVE seed(product_id, store_id, priority, reason, commit_lsn) AS (
    SELECT product_id, store_id, priority, reason, $3::pg_lsn
    FROM stock_sync.stream_staging
    WHERE slot_name = $1 AND xid = $2
),"#,
    enqueue_sets_of_seed!()
);

/// For the rest of the capture transaction that moves staged rows (see `move_staged`).
const MOVE_WORK_MEM_SQL: &str = "SET LOCAL work_mem = '128MB'";

/// A streamed transaction (`$3` NULL) or one of its subtransactions (`$3`) is void.
const DISCARD_STAGED_SQL: &str = "DELETE FROM stock_sync.stream_staging \
     WHERE slot_name = $1 AND xid = $2 AND ($3::bigint IS NULL OR subxid = $3)";

/// Start-up: whatever the previous session staged belongs to transactions whose commit it
/// never saw; the server streams them again from their start.
const DISCARD_ALL_STAGED_SQL: &str = "DELETE FROM stock_sync.stream_staging WHERE slot_name = $1";

/// Products that are components of some set, if there are at most `$1` of them (capture keeps
/// them in memory to skip the set expansion for every other product).
const COMPONENTS_SQL: &str = r#"
SELECT DISTINCT component_product_id FROM product_set_items
LIMIT $1
"#;

/// How long capture waits between looks while a committed transaction is not visible yet
/// (it becomes so within microseconds, longer only on a starved server).
const VISIBILITY_POLL: std::time::Duration = std::time::Duration::from_millis(2);

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

/// One seed's columns as arrays, one element per seed.
#[derive(Debug, Default)]
pub struct Columns {
    pub product_ids: Vec<Uuid>,
    /// `None`: every store where the product is listed (a composition seed).
    pub store_ids: Vec<Option<Uuid>>,
    pub priorities: Vec<i32>,
    pub reasons: Vec<String>,
    pub commit_lsns: Vec<PgLsn>,
}

impl Columns {
    fn push(&mut self, product_id: Uuid, store_id: Option<Uuid>, reason: Reason, lsn: PgLsn) {
        self.product_ids.push(product_id);
        self.store_ids.push(store_id);
        self.priorities.push(reason.priority());
        self.reasons.push(reason.as_str().to_string());
        self.commit_lsns.push(lsn);
    }

    pub fn len(&self) -> usize {
        self.product_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.product_ids.is_empty()
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 5] {
        [
            &self.product_ids,
            &self.store_ids,
            &self.priorities,
            &self.reasons,
            &self.commit_lsns,
        ]
    }
}

/// Seeds for the enqueue statements: `pairs` (seeds that name their own pair) for
/// [`ENQUEUE_PAIRS_SQL`], `sets` (composition seeds, and seeds whose product may be in a set)
/// for [`ENQUEUE_SETS_SQL`].
#[derive(Debug, Default)]
pub struct SeedColumns {
    pub pairs: Columns,
    pub sets: Columns,
}

impl SeedColumns {
    /// Adds a seed; `expand`: it goes through the set expansion (capture decides, by one
    /// rule; a composition seed, which names no pair, must).
    pub fn push(
        &mut self,
        product_id: Uuid,
        store_id: Option<Uuid>,
        reason: Reason,
        commit_lsn: Lsn,
        expand: bool,
    ) {
        debug_assert!(
            expand || store_id.is_some(),
            "a composition seed not expanded"
        );
        let lsn = PgLsn::from(commit_lsn);
        if store_id.is_some() {
            self.pairs.push(product_id, store_id, reason, lsn);
        }
        if expand {
            self.sets.push(product_id, store_id, reason, lsn);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty() && self.sets.is_empty()
    }
}

/// A seed of a streamed transaction, staged until the transaction's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagedSeed {
    /// The (sub)transaction that made the change.
    pub subxid: u32,
    pub product_id: Uuid,
    /// `None`: every store where the product is listed (a composition seed).
    pub store_id: Option<Uuid>,
    pub reason: Reason,
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
    stage_copy: Statement,
    enqueue_staged_pairs: Statement,
    enqueue_staged_sets: Statement,
    discard_staged: Statement,
}

impl CaptureWriter {
    pub async fn new(client: Client, slot: String) -> Result<CaptureWriter, tokio_postgres::Error> {
        let (
            enqueue_pairs,
            enqueue_sets,
            capture_batch,
            advance,
            stage_copy,
            enqueue_staged_pairs,
            enqueue_staged_sets,
            discard_staged,
        ) = futures_util::try_join!(
            client.prepare(ENQUEUE_PAIRS_SQL),
            client.prepare(ENQUEUE_SETS_SQL),
            client.prepare(CAPTURE_BATCH_SQL),
            client.prepare(ADVANCE_CHECKPOINT_SQL),
            client.prepare(STAGE_COPY_SQL),
            client.prepare(ENQUEUE_STAGED_PAIRS_SQL),
            client.prepare(ENQUEUE_STAGED_SETS_SQL),
            client.prepare(DISCARD_STAGED_SQL),
        )?;
        Ok(CaptureWriter {
            client,
            slot,
            in_transaction: false,
            enqueue_pairs,
            enqueue_sets,
            capture_batch,
            advance,
            stage_copy,
            enqueue_staged_pairs,
            enqueue_staged_sets,
            discard_staged,
        })
    }

    /// The connection, for capture's own reads (slot state, leadership).
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn begin(&mut self) -> Result<(), tokio_postgres::Error> {
        if !self.in_transaction {
            // Explicit: the visibility wait takes a new snapshot per statement, which a
            // server defaulting to repeatable read would not give.
            self.client
                .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                .await?;
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
        let (pair_params, set_params) = (c.pairs.params(), c.sets.params());
        let client = &self.client;
        let execute = |statement, params, columns: &Columns| {
            let skip = columns.is_empty();
            async move {
                match skip {
                    true => Ok(0),
                    false => client.execute(statement, params).await,
                }
            }
        };
        // Both statements are sent at once (the connection pipelines them); they run in order.
        let (pairs, sets) = futures_util::try_join!(
            execute(&self.enqueue_pairs, &pair_params[..], &c.pairs),
            execute(&self.enqueue_sets, &set_params[..], &c.sets),
        )?;
        let written = pairs + sets;
        metrics().queue_entries_written.inc_by(written);
        Ok(written)
    }

    /// Stages seeds of the in-progress streamed transaction `xid` (one COPY; in the open
    /// transaction if there is one, else on its own). Returns rows staged.
    pub async fn stage(
        &mut self,
        xid: u32,
        seeds: &[StagedSeed],
    ) -> Result<u64, tokio_postgres::Error> {
        if seeds.is_empty() {
            return Ok(0);
        }
        let sink = self.client.copy_in(&self.stage_copy).await?;
        let writer = BinaryCopyInWriter::new(sink, &STAGE_TYPES);
        futures_util::pin_mut!(writer);
        let xid = i64::from(xid);
        for seed in seeds {
            let subxid = i64::from(seed.subxid);
            let row: [&(dyn ToSql + Sync); 7] = [
                &self.slot,
                &xid,
                &subxid,
                &seed.product_id,
                &seed.store_id,
                &seed.reason.priority(),
                &seed.reason.as_str(),
            ];
            writer.as_mut().write(&row).await?;
        }
        writer.finish().await
    }

    /// Deletes what was staged of the streamed transaction `xid` (`subxid: None`), or of one
    /// of its subtransactions. Returns rows deleted.
    pub async fn discard_staged(
        &mut self,
        xid: u32,
        subxid: Option<u32>,
    ) -> Result<u64, tokio_postgres::Error> {
        let (xid, subxid) = (i64::from(xid), subxid.map(i64::from));
        self.client
            .execute(&self.discard_staged, &[&self.slot, &xid, &subxid])
            .await
    }

    /// Start-up: deletes everything staged for this slot (autocommit; nothing may be open).
    pub async fn discard_all_staged(&mut self) -> Result<u64, tokio_postgres::Error> {
        debug_assert!(!self.in_transaction);
        self.client
            .execute(DISCARD_ALL_STAGED_SQL, &[&self.slot])
            .await
    }

    /// The streamed transaction `xid` committed at `commit_lsn`: its staged seeds become queue
    /// entries (with the sets they are in now when `expand_sets`, which capture decides at the
    /// commit), in the open transaction (opening one),
    /// which [`CaptureWriter::commit`] ends with the checkpoint. The staged rows are deleted
    /// after that commit ([`CaptureWriter::discard_staged`]), off the path to the checkpoint:
    /// rows of a captured transaction are never moved again (a session moves a transaction
    /// once, and start-up deletes everything staged). Returns queue rows written.
    pub async fn move_staged(
        &mut self,
        xid: u32,
        commit_lsn: Lsn,
        expand_sets: bool,
    ) -> Result<u64, tokio_postgres::Error> {
        self.begin().await?;
        // The move sorts the staged rows by pair: in memory, not in temporary files, for the
        // size a transaction streams in (one sort of some 50 bytes a row).
        self.client.batch_execute(MOVE_WORK_MEM_SQL).await?;
        let (xid, lsn) = (i64::from(xid), PgLsn::from(commit_lsn));
        let params: [&(dyn ToSql + Sync); 3] = [&self.slot, &xid, &lsn];
        self.client.batch_execute("SAVEPOINT move_staged").await?;
        let pairs = match self
            .client
            .execute(&self.enqueue_staged_pairs, &params)
            .await
        {
            Ok(n) => n,
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                debug!("a pending entry appeared during the move; moving again as an upsert");
                self.client
                    .batch_execute("ROLLBACK TO SAVEPOINT move_staged")
                    .await?;
                self.client
                    .execute(ENQUEUE_STAGED_PAIRS_UPSERT_SQL, &params)
                    .await?
            }
            Err(e) => return Err(e),
        };
        let sets = if expand_sets {
            self.client
                .execute(&self.enqueue_staged_sets, &params)
                .await?
        } else {
            0
        };
        metrics().queue_entries_written.inc_by(pairs + sets);
        Ok(pairs + sets)
    }

    /// Products that are components of some set, or `None` when there are more than
    /// `limit` (too many to keep in memory).
    pub async fn components(
        &self,
        limit: usize,
    ) -> Result<Option<Vec<Uuid>>, tokio_postgres::Error> {
        let over = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
        let rows = self.client.query(COMPONENTS_SQL, &[&over]).await?;
        Ok((rows.len() <= limit).then(|| rows.iter().map(|r| r.get(0)).collect()))
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
        let xids: Vec<u32> = transactions.iter().map(|t| t.xid).collect();
        let logged_xids: Vec<i64> = xids.iter().map(|&x| i64::from(x)).collect();
        if let (Some(first), Some(last)) = (transactions.first(), transactions.last()) {
            let span = (PgLsn::from(first.commit_lsn), PgLsn::from(last.end_lsn));
            let commit_lsns: Vec<PgLsn> =
                transactions.iter().map(|t| t.commit_lsn.into()).collect();
            let row_changes: i32 = transactions.iter().map(|t| t.row_changes).sum();
            let log_params: [&(dyn ToSql + Sync); 6] = [
                &span.0,
                &span.1,
                &logged_xids,
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
        // Rows this batch enqueued become visible to dispatch at COMMIT; the changes they
        // stand for must be visible by then, or dispatch may read the quantities before them.
        if !xids.is_empty() {
            self.wait_until_visible(&xids).await?;
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

    /// Waits until every transaction `xids` is visible to new snapshots (see
    /// [`super::visibility`]). Read committed: each look takes a new snapshot.
    async fn wait_until_visible(&self, xids: &[u32]) -> Result<(), tokio_postgres::Error> {
        let started = Instant::now();
        let mut warned = false;
        while !current_snapshot(&self.client).await?.all_visible(xids) {
            if !warned && started.elapsed() >= std::time::Duration::from_secs(5) {
                warn!(
                    xids = ?xids,
                    "captured transactions are still not visible to other sessions after 5 s; waiting"
                );
                warned = true;
            }
            tokio::time::sleep(VISIBILITY_POLL).await;
        }
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
