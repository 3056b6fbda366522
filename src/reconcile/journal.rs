//! The periodic audit's record in `stock_sync` (migration 007): one `reconcile_runs` row per
//! audit with its position and counts, a sample of its findings in `reconcile_drift`, the keys
//! it has read in `reconcile_seen` (while it runs), and the schedule per store in
//! `reconcile_schedule`. Every statement on those tables is here.
//!
//! A page's record (position, counts, seen keys, findings) is written in the transaction that
//! enqueues the page's repairs ([`save`]), so a process killed at any point resumes at the
//! first page whose repairs are not committed, and no repair is counted twice.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::audit::{Memory, Position};
use super::compare::{Examples, Finding, Kind, Tally};
use super::ReconcileError;
use crate::marketplace::Provider;

/// Findings kept per kind and audit (the counts are complete).
pub const MAX_STORED_PER_KIND: u64 = 1000;

/// The running audit of store `$1`, if any.
const RUNNING_SQL: &str = r#"
SELECT id, position::text, pages, reads,
       ARRAY[agree, drifted, missing_at_marketplace, unknown_to_database, not_repairable,
             unknown, in_motion, repaired, bad_rows, held_back]
FROM stock_sync.reconcile_runs WHERE store_id = $1 AND state = 'running'
"#;

const START_SQL: &str =
    "INSERT INTO stock_sync.reconcile_runs (store_id, fix) VALUES ($1, $2) RETURNING id";

const SEEN_SQL: &str = "SELECT key FROM stock_sync.reconcile_seen WHERE run_id = $1";

/// The first `$2` findings of each kind of audit `$1`.
const EXAMPLES_SQL: &str = r#"
SELECT kind, product_id, key, marketplace_quantity, database_quantity, detail, repaired,
       held_until
FROM (SELECT d.*, row_number() OVER (PARTITION BY kind ORDER BY id) AS n
      FROM stock_sync.reconcile_drift d WHERE run_id = $1) ranked
WHERE n <= $2 ORDER BY id
"#;

/// A page done: position, figures and counts (`$5`, in [`counts`] order).
const SAVE_SQL: &str = r#"
UPDATE stock_sync.reconcile_runs
SET position = $2::text::jsonb, pages = $3, reads = $4,
    agree = ($5::int[])[1], drifted = ($5::int[])[2], missing_at_marketplace = ($5::int[])[3],
    unknown_to_database = ($5::int[])[4], not_repairable = ($5::int[])[5],
    unknown = ($5::int[])[6], in_motion = ($5::int[])[7], repaired = ($5::int[])[8],
    bad_rows = ($5::int[])[9], held_back = ($5::int[])[10],
    updated_at = now()
WHERE id = $1 AND state = 'running'
"#;

const SEEN_INSERT_SQL: &str = r#"
INSERT INTO stock_sync.reconcile_seen (run_id, key)
SELECT $1, k FROM unnest($2::text[]) AS k ON CONFLICT DO NOTHING
"#;

const FINDINGS_SQL: &str = r#"
INSERT INTO stock_sync.reconcile_drift
    (run_id, store_id, kind, product_id, key, marketplace_quantity, database_quantity, detail,
     repaired, held_until)
SELECT $1, $2, u.kind, u.product_id, u.key, u.shown, u.truth, u.detail, u.repaired, u.held_until
FROM unnest($3::text[], $4::uuid[], $5::text[], $6::bigint[], $7::int[], $8::text[], $9::bool[],
            $10::timestamptz[])
     AS u(kind, product_id, key, shown, truth, detail, repaired, held_until)
"#;

/// An audit ends (`$2` done or failed, `$3` why it failed); its seen keys go.
const END_SQL: &str = r#"
WITH ended AS (
    UPDATE stock_sync.reconcile_runs
    SET state = $2, error = $3, finished_at = now(), updated_at = now()
    WHERE id = $1 AND state = 'running'
    RETURNING id
)
DELETE FROM stock_sync.reconcile_seen WHERE run_id IN (SELECT id FROM ended)
"#;

/// The running audit of store `$1` ends as failed (`$2` why): the store is no longer read.
const ABANDON_SQL: &str = r#"
WITH ended AS (
    UPDATE stock_sync.reconcile_runs
    SET state = 'failed', error = $2, finished_at = now(), updated_at = now()
    WHERE store_id = $1 AND state = 'running'
    RETURNING id
)
DELETE FROM stock_sync.reconcile_seen WHERE run_id IN (SELECT id FROM ended)
"#;

/// Stores `$1` enter the schedule: their first audit is one interval (`$2` s) away.
const SCHEDULE_NEW_SQL: &str = r#"
INSERT INTO stock_sync.reconcile_schedule (store_id, next_run_at)
SELECT s, now() + make_interval(secs => $2::float8) FROM unnest($1::uuid[]) AS s
ON CONFLICT (store_id) DO NOTHING
"#;

/// The next audit of stores `$1`: an interval (`$2` s) after the last one ended, `$3` s after
/// a failed one, an interval after the store was first seen; and whether each is due now (an
/// audit left running by a stopped process is due at once: it resumes).
const SCHEDULE_SQL: &str = r#"
UPDATE stock_sync.reconcile_schedule sc
SET next_run_at = COALESCE(
    (SELECT r.finished_at + make_interval(secs => CASE WHEN r.state = 'failed' THEN $3::float8 ELSE $2::float8 END)
     FROM stock_sync.reconcile_runs r
     WHERE r.store_id = sc.store_id AND r.state <> 'running'
     ORDER BY r.id DESC LIMIT 1),
    sc.first_seen_at + make_interval(secs => $2::float8))
WHERE sc.store_id = ANY($1::uuid[])
RETURNING sc.store_id,
          EXISTS (SELECT 1 FROM stock_sync.reconcile_runs r
                  WHERE r.store_id = sc.store_id AND r.state = 'running') AS resumes,
          sc.next_run_at <= now() AS due,
          sc.next_run_at
"#;

/// Finished audits older than `$1` days go, except each store's last one.
const PRUNE_SQL: &str = r#"
DELETE FROM stock_sync.reconcile_runs r
WHERE r.state <> 'running' AND r.finished_at < now() - make_interval(days => $1::int)
  AND r.id <> (SELECT max(x.id) FROM stock_sync.reconcile_runs x
               WHERE x.store_id = r.store_id AND x.state <> 'running')
"#;

/// Each store's last finished audit (for `/metrics`): drifted listings and when it ended.
const LAST_DONE_SQL: &str = r#"
SELECT DISTINCT ON (store_id) store_id, drifted::bigint,
       EXTRACT(EPOCH FROM finished_at)::float8
FROM stock_sync.reconcile_runs WHERE state = 'done'
ORDER BY store_id, id DESC
"#;

/// Each store's latest audit (any state) and its schedule, for `status`.
const SUMMARY_SQL: &str = r#"
WITH latest AS (
    SELECT DISTINCT ON (store_id) * FROM stock_sync.reconcile_runs ORDER BY store_id, id DESC
)
SELECT COALESCE(l.store_id, sc.store_id), l.id, l.state,
       to_char(l.started_at, 'YYYY-MM-DD"T"HH24:MI:SS.MSOF'),
       to_char(l.finished_at, 'YYYY-MM-DD"T"HH24:MI:SS.MSOF'),
       to_char(sc.next_run_at, 'YYYY-MM-DD"T"HH24:MI:SS.MSOF'),
       COALESCE(l.pages, 0), COALESCE(l.reads, 0),
       ARRAY[COALESCE(l.agree, 0), COALESCE(l.drifted, 0), COALESCE(l.missing_at_marketplace, 0),
             COALESCE(l.unknown_to_database, 0), COALESCE(l.not_repairable, 0),
             COALESCE(l.unknown, 0), COALESCE(l.in_motion, 0), COALESCE(l.repaired, 0),
             COALESCE(l.bad_rows, 0), COALESCE(l.held_back, 0)],
       l.error, COALESCE(l.fix, false)
FROM latest l FULL JOIN stock_sync.reconcile_schedule sc ON sc.store_id = l.store_id
ORDER BY 1
"#;

/// The counts in the order the statements above list them.
fn counts(t: &Tally) -> Vec<i32> {
    [
        t.agree,
        t.drifted,
        t.missing_at_marketplace,
        t.unknown_to_database,
        t.not_repairable,
        t.unknown,
        t.in_motion,
        t.repaired,
        t.bad_rows,
        t.held_back,
    ]
    .iter()
    .map(|n| i32::try_from(*n).unwrap_or(i32::MAX))
    .collect()
}

fn tally(c: &[i32]) -> Tally {
    let at = |i: usize| c.get(i).map_or(0, |n| u64::try_from(*n).unwrap_or(0));
    Tally {
        agree: at(0),
        drifted: at(1),
        missing_at_marketplace: at(2),
        unknown_to_database: at(3),
        not_repairable: at(4),
        unknown: at(5),
        in_motion: at(6),
        repaired: at(7),
        bad_rows: at(8),
        held_back: at(9),
    }
}

/// The store's running audit to resume, or a new one. Returns its id and memory.
pub async fn begin(
    db: &impl GenericClient,
    store: Uuid,
    provider: Provider,
    fix: bool,
) -> Result<(i64, Memory, bool), ReconcileError> {
    let Some(row) = db.query_opt(RUNNING_SQL, &[&store]).await? else {
        let id: i64 = db.query_one(START_SQL, &[&store, &fix]).await?.get(0);
        return Ok((id, Memory::new(provider), false));
    };
    let id: i64 = row.get(0);
    let position: Option<String> = row.get(1);
    // A position this version cannot read starts the scan over (nothing is lost but reads).
    let position = position
        .and_then(|p| serde_json::from_str::<Position>(&p).ok())
        .unwrap_or_else(|| Position::start(provider));
    let seen: HashSet<String> = db
        .query(SEEN_SQL, &[&id])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut examples = Examples::default();
    for f in findings(db, id, Examples::PER_KIND as i64).await? {
        examples.offer(&f);
    }
    let memory = Memory {
        position,
        tally: tally(&row.get::<_, Vec<i32>>(4)),
        pages: u64::try_from(row.get::<_, i32>(2)).unwrap_or(0),
        reads: u64::try_from(row.get::<_, i32>(3)).unwrap_or(0),
        seen,
        examples,
    };
    Ok((id, memory, true))
}

async fn findings(
    db: &impl GenericClient,
    run: i64,
    per_kind: i64,
) -> Result<Vec<Finding>, ReconcileError> {
    Ok(db
        .query(EXAMPLES_SQL, &[&run, &per_kind])
        .await?
        .iter()
        .filter_map(|r| {
            Some(Finding {
                kind: Kind::parse(r.get(0))?,
                product_id: r.get(1),
                key: r.get(2),
                marketplace: r.get(3),
                database: r.get(4),
                detail: r.get(5),
                repaired: r.get(6),
                held_until: r.get(7),
            })
        })
        .collect())
}

/// Records a page (or a batch of listings no page showed): position, counts, the keys read
/// and the findings to keep. Run inside the transaction of the page's repairs.
pub async fn save(
    db: &impl GenericClient,
    run: i64,
    store: Uuid,
    memory: &Memory,
    seen: &[String],
    kept: &[Finding],
) -> Result<(), ReconcileError> {
    let position = serde_json::to_string(&memory.position).expect("positions serialise");
    let pages = i32::try_from(memory.pages).unwrap_or(i32::MAX);
    let reads = i32::try_from(memory.reads).unwrap_or(i32::MAX);
    db.execute(
        SAVE_SQL,
        &[&run, &position, &pages, &reads, &counts(&memory.tally)],
    )
    .await?;
    if !seen.is_empty() {
        db.execute(SEEN_INSERT_SQL, &[&run, &seen]).await?;
    }
    if !kept.is_empty() {
        let kinds: Vec<&str> = kept.iter().map(|f| f.kind.as_str()).collect();
        let products: Vec<Option<Uuid>> = kept.iter().map(|f| f.product_id).collect();
        let keys: Vec<&str> = kept.iter().map(|f| f.key.as_str()).collect();
        let shown: Vec<Option<i64>> = kept.iter().map(|f| f.marketplace).collect();
        let truth: Vec<Option<i32>> = kept.iter().map(|f| f.database).collect();
        let detail: Vec<Option<&str>> = kept.iter().map(|f| f.detail.as_deref()).collect();
        let repaired: Vec<bool> = kept.iter().map(|f| f.repaired).collect();
        let held_until: Vec<Option<chrono::DateTime<chrono::Utc>>> =
            kept.iter().map(|f| f.held_until).collect();
        db.execute(
            FINDINGS_SQL,
            &[
                &run,
                &store,
                &kinds,
                &products,
                &keys,
                &shown,
                &truth,
                &detail,
                &repaired,
                &held_until,
            ],
        )
        .await?;
    }
    Ok(())
}

/// The audit ended; `error` says why it failed (`None`: done).
pub async fn end(
    db: &impl GenericClient,
    run: i64,
    error: Option<&str>,
) -> Result<(), ReconcileError> {
    let state = if error.is_some() { "failed" } else { "done" };
    db.execute(END_SQL, &[&run, &state, &error]).await?;
    Ok(())
}

/// Ends the running audit of a store that is no longer read (inactive, paused, gone), so
/// `status` does not show it running. Returns whether there was one.
pub async fn abandon(
    db: &impl GenericClient,
    store: Uuid,
    why: &str,
) -> Result<bool, ReconcileError> {
    Ok(db.execute(ABANDON_SQL, &[&store, &why]).await? > 0)
}

/// A store's place in the schedule.
#[derive(Debug, Clone)]
pub struct Due {
    pub store: Uuid,
    /// An audit of it was left running: it resumes now.
    pub resumes: bool,
    pub due: bool,
}

/// Brings the schedule of `stores` up to date and says which are due, those that resume
/// first, then the longest due.
pub async fn schedule(
    db: &impl GenericClient,
    stores: &[Uuid],
    interval: Duration,
    after_failure: Duration,
) -> Result<Vec<Due>, ReconcileError> {
    let every = interval.as_secs_f64();
    db.execute(SCHEDULE_NEW_SQL, &[&stores, &every]).await?;
    let mut rows: Vec<(Due, chrono::DateTime<chrono::Utc>)> = db
        .query(
            SCHEDULE_SQL,
            &[&stores, &every, &after_failure.as_secs_f64()],
        )
        .await?
        .iter()
        .map(|r| {
            (
                Due {
                    store: r.get(0),
                    resumes: r.get(1),
                    due: r.get(2),
                },
                r.get(3),
            )
        })
        .collect();
    rows.sort_by_key(|(d, at)| (!d.resumes, *at));
    Ok(rows.into_iter().map(|(d, _)| d).collect())
}

/// Deletes finished audits older than `days` (each store keeps its last).
pub async fn prune(db: &impl GenericClient, days: i32) -> Result<u64, ReconcileError> {
    Ok(db.execute(PRUNE_SQL, &[&days]).await?)
}

/// Each store's last finished audit: (store, drifted listings, end as Unix seconds).
pub async fn last_done(db: &impl GenericClient) -> Result<Vec<(Uuid, i64, f64)>, ReconcileError> {
    Ok(db
        .query(LAST_DONE_SQL, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// A store's latest audit and its next one, as `status` and the dashboard show them.
#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    pub store_id: String,
    /// `running`, `done` or `failed`; `None` before the first audit.
    pub state: Option<String>,
    pub repairs: bool,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub next_run_at: Option<String>,
    pub pages: i32,
    pub reads: i32,
    pub checked: u64,
    #[serde(flatten)]
    pub tally: Tally,
    pub error: Option<String>,
    pub examples: Vec<Finding>,
}

/// Every store's latest audit (with a few findings) and next audit.
pub async fn summaries(db: &impl GenericClient) -> Result<Vec<RunStatus>, ReconcileError> {
    let mut out = Vec::new();
    for r in db.query(SUMMARY_SQL, &[]).await? {
        let run: Option<i64> = r.get(1);
        let tally = tally(&r.get::<_, Vec<i32>>(8));
        let mut examples = Examples::default();
        if let Some(run) = run {
            for f in findings(db, run, 2).await? {
                examples.offer(&f);
            }
        }
        out.push(RunStatus {
            store_id: r.get::<_, Uuid>(0).to_string(),
            state: r.get(2),
            repairs: r.get(10),
            started_at: r.get(3),
            finished_at: r.get(4),
            next_run_at: r.get(5),
            pages: r.get(6),
            reads: r.get(7),
            checked: tally.checked(),
            tally,
            error: r.get(9),
            examples: examples.into_vec(),
        });
    }
    Ok(out)
}
