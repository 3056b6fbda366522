//! Dispatch's side of the queue: which stores are due, claims (fenced by a [`ClaimToken`]),
//! and every transition out of `in_flight`.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::{Outcome, QueueError, Reason};

/// Stores with work that is due: pending entries that are not deferred, and either the oldest
/// of them is `$1` seconds old or `$2` of them (a full batch) are ready. A store whose entries
/// were last closed without requests (`gated_reason`: inactive, another type, missing) has no
/// batch to fill: it is due by age only, so a busy store nobody is told about costs one close
/// per `flush_interval` instead of one per tick (and repeated changes of a pair update one
/// pending row). Stores waiting out a backoff, a Retry-After or the pause re-check
/// (`not_before`), or the minimum gap since their last request (`$3` seconds), are left out.
///
/// Everything is read from the claim-order index (`queue_claim_order_v2`): the distinct
/// store ids by a loose index scan (one probe per store, not a scan of a large backlog), and
/// per store no more than the first `$2` entries in claim order. When fewer are ready, all
/// were seen and their oldest is exact; when `$2` are, the store is due for a full batch
/// anyway, except a gated one, which is then due once the oldest entry of its highest
/// priority is `$1` old (at most `$1` later than by its very oldest entry).
const DUE_STORES_SQL: &str = r#"
WITH RECURSIVE stores_with_work(store_id) AS (
    (SELECT store_id FROM stock_sync.queue WHERE state = 'pending' ORDER BY store_id LIMIT 1)
    UNION ALL
    SELECT (SELECT q.store_id FROM stock_sync.queue q
            WHERE q.state = 'pending' AND q.store_id > s.store_id
            ORDER BY q.store_id LIMIT 1)
    FROM stores_with_work s
    WHERE s.store_id IS NOT NULL
)
SELECT s.store_id
FROM stores_with_work s
CROSS JOIN LATERAL (
    SELECT min(w.enqueued_at) AS oldest, count(*) AS ready
    FROM (
        SELECT q.enqueued_at FROM stock_sync.queue q
        WHERE q.store_id = s.store_id AND q.state = 'pending'
          AND (q.not_before IS NULL OR q.not_before <= now())
        ORDER BY q.priority DESC, q.enqueued_at, q.id
        LIMIT $2
    ) w
) ready
LEFT JOIN stock_sync.store_state st ON st.store_id = s.store_id
WHERE s.store_id IS NOT NULL
  AND ready.ready > 0
  AND (ready.oldest <= now() - make_interval(secs => $1::float8)
       OR (ready.ready >= $2 AND st.gated_reason IS NULL))
  AND COALESCE(st.not_before > now(), false) IS FALSE
  AND COALESCE(st.last_request_at > now() - make_interval(secs => $3::float8), false) IS FALSE
"#;

/// When a claim is an orphan: its cycle's connection (the backend that claimed it) is gone,
/// or the claim is older than the lease (`$N` seconds; a live cycle renews it before every
/// request). Claims written before claims were fenced have no backend and are orphans.
macro_rules! orphan {
    ($lease:literal) => {
        concat!(
            "(q.claimed_backend IS NULL OR q.claimed_at < now() - make_interval(secs => ",
            $lease,
            "::float8) OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = q.claimed_backend))"
        )
    };
}

/// Stores with orphaned claims (`$1` lease seconds): a dispatcher that can take the store's
/// lock releases them.
const STALE_CLAIM_STORES_SQL: &str = concat!(
    "SELECT DISTINCT q.store_id FROM stock_sync.queue q WHERE q.state = 'in_flight' AND ",
    orphan!("$1")
);

/// Whether store `$1` has any claim at all (an index probe: the orphan test below reads
/// `pg_stat_activity`, which is not free, and a store held by its lock usually has none).
const ANY_CLAIM_SQL: &str =
    "SELECT EXISTS (SELECT 1 FROM stock_sync.queue WHERE store_id = $1 AND state = 'in_flight')";

/// Orphaned claims of store `$1` (`$2` lease seconds), run by the holder of its lock.
const ORPHANS_SQL: &str = concat!(
    "SELECT q.id FROM stock_sync.queue q WHERE q.store_id = $1 AND q.state = 'in_flight' AND ",
    orphan!("$2")
);

/// Claims up to `$3` due pending entries of store `$1` for instance `$2` under token `$4`,
/// returned in the order they are to be sent (priority, then age). The claiming backend is
/// recorded: while it lives (and the lease `claimed_at` holds), the claim is not an orphan.
/// SKIP LOCKED keeps capture's upserts and other claimers from waiting on us.
const CLAIM_SQL: &str = r#"
WITH claimed AS (
    UPDATE stock_sync.queue q
    SET state = 'in_flight', claimed_by = $2, claimed_at = now(), claim_token = $4,
        claimed_backend = pg_backend_pid()
    WHERE q.id IN (
        SELECT id FROM stock_sync.queue
        WHERE store_id = $1 AND state = 'pending' AND (not_before IS NULL OR not_before <= now())
        ORDER BY priority DESC, enqueued_at, id
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    )
    RETURNING q.id, q.product_id, q.priority, q.attempts, q.enqueued_at
)
SELECT id, product_id, priority, attempts FROM claimed
ORDER BY priority DESC, enqueued_at, id
"#;

/// Renews the lease of claims `$2` held under token `$1` (before each request).
const RENEW_SQL: &str = r#"
UPDATE stock_sync.queue SET claimed_at = now()
WHERE id = ANY($2::bigint[]) AND state = 'in_flight' AND claim_token = $1
"#;

/// Puts claimed entries back to pending: `$1` token (NULL: orphans, any token), `$2` ids,
/// `$3` seconds to defer them (NULL = none), `$4` error text (NULL keeps the old one), `$5`
/// attempts to add. An entry whose pair got a new pending entry meanwhile is closed as
/// `superseded` (the pending one recomputes anyway), and so is every released entry but the
/// newest of a pair: orphans of instances killed one after the other can hold a pair twice
/// in flight, and only one of them may become its pending entry. Pending rows are only read, never
/// locked: capture holds locks on pending rows while it may wait on the index entries this
/// statement creates, so locking them here could deadlock. A capture committing a new pending
/// entry between this statement's snapshot and its update makes it fail with a unique
/// violation; the caller retries.
const RELEASE_SQL: &str = r#"
WITH target AS (
    SELECT q.id, q.product_id, q.store_id
    FROM stock_sync.queue q
    WHERE q.id = ANY($2::bigint[]) AND q.state = 'in_flight'
      AND ($1::uuid IS NULL OR q.claim_token = $1)
    ORDER BY q.product_id, q.store_id
    FOR UPDATE
), superseded AS (
    SELECT t.id FROM target t
    WHERE EXISTS (
        SELECT 1 FROM stock_sync.queue p
        WHERE p.state = 'pending' AND p.product_id = t.product_id AND p.store_id = t.store_id)
       OR EXISTS (
        SELECT 1 FROM target n
        WHERE n.product_id = t.product_id AND n.store_id = t.store_id AND n.id > t.id)
)
UPDATE stock_sync.queue q
SET state = CASE WHEN q.id IN (SELECT id FROM superseded) THEN 'done' ELSE 'pending' END,
    outcome = CASE WHEN q.id IN (SELECT id FROM superseded) THEN 'superseded' END,
    finished_at = CASE WHEN q.id IN (SELECT id FROM superseded) THEN now() END,
    claimed_by = NULL,
    claimed_at = NULL,
    claim_token = NULL,
    claimed_backend = NULL,
    not_before = CASE WHEN $3::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $3::float8) END,
    last_error = COALESCE($4::text, q.last_error),
    attempts = q.attempts + $5::int
FROM target t
WHERE q.id = t.id
"#;

/// Closes pending entries of a store that must never get requests (`$2` the outcome). Rows
/// capture is updating are skipped (never waited for, so no deadlock) and closed next time.
const CLOSE_STORE_SQL: &str = r#"
UPDATE stock_sync.queue
SET state = 'done', outcome = $2, finished_at = now(), claimed_by = NULL
WHERE id IN (
    SELECT id FROM stock_sync.queue
    WHERE store_id = $1 AND state = 'pending'
    FOR UPDATE SKIP LOCKED
)
"#;

/// Marks claimed entries done: `$1` token, `$2` ids, `$3` outcome, `$4` the quantity each was
/// sent or found equal to (NULL when none applies), in the order of `$2`.
///
/// The token alone says the entry is still this cycle's claim (it is cleared on every move
/// out of `in_flight`). The entries are found by primary key (`id = ANY`) and each takes its
/// quantity by position, with no join: joined to `unnest($2, $4)`, the planner believed the
/// token matched no row (statistics see it NULL everywhere) and scanned the whole queue
/// once, then compared every claim with every id (1,000,000 comparisons for a batch of
/// 1000): 250 ms a batch on an 80,000-row queue, growing with the queue. By position it is
/// 1000 primary-key probes, about 16 ms.
const FINISH_SQL: &str = r#"
UPDATE stock_sync.queue q
SET state = 'done', outcome = $3, finished_at = now(),
    sent_quantity = ($4::int[])[array_position($2::bigint[], q.id)],
    claim_token = NULL
WHERE q.id = ANY($2::bigint[]) AND q.claim_token = $1
"#;

/// A claimed entry (`$2`, token `$1`) that failed for its own sake (`$3` error) too often.
const DEAD_LETTER_SQL: &str = r#"
UPDATE stock_sync.queue
SET state = 'dead', outcome = 'failed', finished_at = now(), attempts = attempts + 1,
    last_error = $3, claim_token = NULL
WHERE id = $2 AND claim_token = $1
"#;

/// Re-enqueues failed items of a finished batch (`$1` store, `$2` max attempts, `$3` the
/// reason); per item product, priority, attempts so far (this failure included), delay in
/// seconds, error. Items at the limit become dead letters instead.
const REQUEUE_FAILED_ITEMS_SQL: &str = r#"
INSERT INTO stock_sync.queue AS q
    (product_id, store_id, reason, priority, attempts, not_before, state, outcome, finished_at, last_error)
SELECT u.product_id, $1, $3, u.priority, u.attempts,
       now() + make_interval(secs => u.delay),
       CASE WHEN u.attempts >= $2 THEN 'dead' ELSE 'pending' END,
       CASE WHEN u.attempts >= $2 THEN 'failed' END,
       CASE WHEN u.attempts >= $2 THEN now() END,
       u.error
FROM unnest($4::uuid[], $5::int[], $6::int[], $7::float8[], $8::text[])
     AS u(product_id, priority, attempts, delay, error)
ORDER BY u.product_id
ON CONFLICT (product_id, store_id) WHERE state = 'pending' DO UPDATE
SET priority = GREATEST(q.priority, EXCLUDED.priority),
    attempts = GREATEST(q.attempts, EXCLUDED.attempts),
    last_error = EXCLUDED.last_error
"#;

/// Tries of a release that loses a race with capture (a unique violation, see RELEASE_SQL).
const RELEASE_RETRIES: usize = 5;

/// Names one cycle's claims. Every transition out of `in_flight` names it, so a cycle whose
/// claims were taken over changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimToken(Uuid);

impl ClaimToken {
    pub fn new() -> ClaimToken {
        ClaimToken(Uuid::new_v4())
    }
}

impl Default for ClaimToken {
    fn default() -> Self {
        ClaimToken::new()
    }
}

/// A claimed queue entry.
#[derive(Debug, Clone)]
pub struct Claim {
    pub id: i64,
    pub product_id: Uuid,
    pub priority: i32,
    pub attempts: i32,
}

/// How claims go back to pending.
#[derive(Debug, Clone, Copy, Default)]
pub struct Release<'a> {
    /// Not claimable again before this long (a retry delay, the identical-body window).
    pub defer: Option<Duration>,
    /// Replaces the entries' last error.
    pub error: Option<&'a str>,
    /// Counted as failed attempts.
    pub add_attempts: i32,
}

/// Stores whose work is due (see [`DUE_STORES_SQL`]); `batch` is the largest batch.
pub async fn due_stores(
    db: &impl GenericClient,
    flush_interval: Duration,
    batch: usize,
    min_send_interval: Duration,
) -> Result<Vec<Uuid>, QueueError> {
    let rows = db
        .query(
            DUE_STORES_SQL,
            &[
                &flush_interval.as_secs_f64(),
                &(batch as i64),
                &min_send_interval.as_secs_f64(),
            ],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Stores holding orphaned claims (claims older than `lease`, or of a backend that is gone).
pub async fn stale_claim_stores(
    db: &impl GenericClient,
    lease: Duration,
) -> Result<Vec<Uuid>, QueueError> {
    let rows = db
        .query(STALE_CLAIM_STORES_SQL, &[&lease.as_secs_f64()])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Releases the orphaned claims of `store` (run while holding its lock). Returns how many.
pub async fn release_orphans(
    db: &impl GenericClient,
    store: Uuid,
    lease: Duration,
) -> Result<usize, QueueError> {
    if !db
        .query_one(ANY_CLAIM_SQL, &[&store])
        .await?
        .get::<_, bool>(0)
    {
        return Ok(0);
    }
    let ids: Vec<i64> = db
        .query(ORPHANS_SQL, &[&store, &lease.as_secs_f64()])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    release_as(db, None, &ids, Release::default()).await?;
    Ok(ids.len())
}

/// Claims up to `limit` due entries of `store`, in send order.
pub async fn claim(
    db: &impl GenericClient,
    store: Uuid,
    instance: &str,
    token: ClaimToken,
    limit: usize,
) -> Result<Vec<Claim>, QueueError> {
    let rows = db
        .query(CLAIM_SQL, &[&store, &instance, &(limit as i64), &token.0])
        .await?;
    Ok(rows
        .iter()
        .map(|r| Claim {
            id: r.get(0),
            product_id: r.get(1),
            priority: r.get(2),
            attempts: r.get(3),
        })
        .collect())
}

/// Renews the lease of claims (a live cycle does so before each request).
pub async fn renew(
    db: &impl GenericClient,
    token: ClaimToken,
    ids: &[i64],
) -> Result<(), QueueError> {
    let n = db.execute(RENEW_SQL, &[&token.0, &ids]).await?;
    expect_all(ids.len(), n)
}

/// Finishes claims with `outcome`; `quantities[i]` is what `ids[i]` was sent or found equal to.
pub async fn finish(
    db: &impl GenericClient,
    token: ClaimToken,
    ids: &[i64],
    outcome: Outcome,
    quantities: &[Option<i32>],
) -> Result<(), QueueError> {
    if ids.is_empty() {
        return Ok(());
    }
    let n = db
        .execute(
            FINISH_SQL,
            &[&token.0, &ids, &outcome.as_str(), &quantities],
        )
        .await?;
    expect_all(ids.len(), n)
}

/// Dead-letters one claim with `error`.
pub async fn dead_letter(
    db: &impl GenericClient,
    token: ClaimToken,
    id: i64,
    error: &str,
) -> Result<(), QueueError> {
    let n = db
        .execute(DEAD_LETTER_SQL, &[&token.0, &id, &error])
        .await?;
    expect_all(1, n)
}

/// Puts claims back to pending; every one of them must still be this cycle's.
pub async fn release(
    db: &impl GenericClient,
    token: ClaimToken,
    ids: &[i64],
    how: Release<'_>,
) -> Result<(), QueueError> {
    let n = release_as(db, Some(token), ids, how).await?;
    expect_all(ids.len(), n)
}

/// Puts back whichever of `ids` this cycle still holds (after a failure mid-cycle, when some
/// were already finished).
pub async fn release_unfinished(
    db: &impl GenericClient,
    token: ClaimToken,
    ids: &[i64],
) -> Result<(), QueueError> {
    release_as(db, Some(token), ids, Release::default()).await?;
    Ok(())
}

async fn release_as(
    db: &impl GenericClient,
    token: Option<ClaimToken>,
    ids: &[i64],
    how: Release<'_>,
) -> Result<u64, QueueError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let token = token.map(|t| t.0);
    let defer = how.defer.map(|d| d.as_secs_f64());
    let mut tries = 0;
    loop {
        match db
            .execute(
                RELEASE_SQL,
                &[&token, &ids, &defer, &how.error, &how.add_attempts],
            )
            .await
        {
            Ok(n) => return Ok(n),
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) && tries < RELEASE_RETRIES => {
                tries += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn expect_all(expected: usize, changed: u64) -> Result<(), QueueError> {
    if changed as usize == expected {
        Ok(())
    } else {
        Err(QueueError::ClaimLost {
            expected,
            lost: expected.saturating_sub(changed as usize),
        })
    }
}

/// Closes every pending entry of a store that gets no requests (`outcome` is a gate).
pub async fn close_store(
    db: &impl GenericClient,
    store: Uuid,
    outcome: Outcome,
) -> Result<u64, QueueError> {
    debug_assert!(outcome.is_gate());
    Ok(db
        .execute(CLOSE_STORE_SQL, &[&store, &outcome.as_str()])
        .await?)
}

/// An item a batch result refused, to be tried again (or dead-lettered at the limit).
#[derive(Debug, Clone)]
pub struct RequeuedItem {
    pub product_id: Uuid,
    pub priority: i32,
    /// Attempts so far, this failure included.
    pub attempts: i32,
    pub delay: Duration,
    pub error: String,
}

/// Re-enqueues refused items of a batch with reason `RETRY` (their own priority), or
/// dead-letters those with `max_attempts` attempts.
pub async fn requeue_failed_items(
    db: &impl GenericClient,
    store: Uuid,
    max_attempts: i32,
    items: &[RequeuedItem],
) -> Result<(), QueueError> {
    if items.is_empty() {
        return Ok(());
    }
    let products: Vec<Uuid> = items.iter().map(|i| i.product_id).collect();
    let priorities: Vec<i32> = items
        .iter()
        .map(|i| i.priority.max(Reason::Retry.priority()))
        .collect();
    let attempts: Vec<i32> = items.iter().map(|i| i.attempts).collect();
    let delays: Vec<f64> = items.iter().map(|i| i.delay.as_secs_f64()).collect();
    let errors: Vec<&str> = items.iter().map(|i| i.error.as_str()).collect();
    db.execute(
        REQUEUE_FAILED_ITEMS_SQL,
        &[
            &store,
            &max_attempts,
            &Reason::Retry.as_str(),
            &products,
            &priorities,
            &attempts,
            &delays,
            &errors,
        ],
    )
    .await?;
    Ok(())
}
