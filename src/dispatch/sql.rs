//! The statements dispatch runs. Durations are passed as seconds (`float8`) and turned into
//! intervals with `make_interval(secs => ..)`; every value is a bind parameter.

/// Stores with work that is due: pending entries that are not deferred, and either the oldest
/// of them is `$1` seconds old or `$2` of them (a full batch) are ready. A store whose entries
/// were last closed without requests (`gated_reason`: inactive, another type, missing) has no
/// batch to fill: it is due by age only, so a busy store nobody is told about costs one close
/// per `flush_interval` instead of one per tick (and repeated changes of a pair update one
/// pending row). Stores waiting out a backoff, a Retry-After or the pause re-check
/// (`not_before`), or the minimum gap since their last request (`$3` seconds), are left out.
///
/// The distinct store ids come from a loose index scan over `queue_pending_age` (one index
/// probe per store, not a scan of a large backlog), and each store looks at no more than
/// `$2` of its oldest entries.
pub const DUE_STORES_SQL: &str = r#"
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
        ORDER BY q.enqueued_at
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

/// Stores with entries claimed more than `$1` seconds ago. Claims live only while a dispatcher
/// holds the store's advisory lock, so one that can take the lock knows these are orphans of
/// a crashed or disconnected instance.
pub const STALE_CLAIM_STORES_SQL: &str = r#"
SELECT DISTINCT store_id FROM stock_sync.queue
WHERE state = 'in_flight' AND claimed_at < now() - make_interval(secs => $1::float8)
"#;

/// Session-level advisory lock per store (class, key): held for the whole store cycle on the
/// dispatcher's lock connection, released by unlock or when the connection ends.
pub const TRY_LOCK_SQL: &str = "SELECT pg_try_advisory_lock($1, $2)";
pub const UNLOCK_SQL: &str = "SELECT pg_advisory_unlock($1, $2)";

/// Every claimed entry of a store (run while holding its lock: they are orphans).
pub const CLAIMED_IDS_SQL: &str =
    "SELECT id FROM stock_sync.queue WHERE store_id = $1 AND state = 'in_flight'";

/// Puts claimed entries back to pending: `$1` ids, `$2` seconds to defer them (NULL = none), `$3` error
/// text (NULL keeps the old one), `$4` attempts to add. An entry whose pair got a new pending
/// entry meanwhile is closed as `superseded` (the pending one recomputes anyway). Pending rows
/// are only read, never locked: capture holds locks on pending rows while it may wait on the
/// index entries this statement creates, so locking them here could deadlock. A capture
/// committing a new pending entry between this statement's snapshot and its update makes it
/// fail with a unique violation; the caller retries.
pub const RELEASE_SQL: &str = r#"
WITH target AS (
    SELECT q.id, q.product_id, q.store_id
    FROM stock_sync.queue q
    WHERE q.id = ANY($1::bigint[]) AND q.state = 'in_flight'
    ORDER BY q.product_id, q.store_id
    FOR UPDATE
), superseded AS (
    SELECT t.id FROM target t
    WHERE EXISTS (
        SELECT 1 FROM stock_sync.queue p
        WHERE p.state = 'pending' AND p.product_id = t.product_id AND p.store_id = t.store_id)
)
UPDATE stock_sync.queue q
SET state = CASE WHEN q.id IN (SELECT id FROM superseded) THEN 'done' ELSE 'pending' END,
    outcome = CASE WHEN q.id IN (SELECT id FROM superseded) THEN 'superseded' END,
    finished_at = CASE WHEN q.id IN (SELECT id FROM superseded) THEN now() END,
    claimed_by = NULL,
    claimed_at = NULL,
    not_before = CASE WHEN $2::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $2::float8) END,
    last_error = COALESCE($3::text, q.last_error),
    attempts = q.attempts + $4::int
FROM target t
WHERE q.id = t.id
"#;

/// Claims up to `$3` due pending entries of store `$1` for instance `$2`, returned in the
/// order they are to be sent (priority, then age). SKIP LOCKED keeps capture's upserts and
/// other claimers from waiting on us.
pub const CLAIM_SQL: &str = r#"
WITH claimed AS (
    UPDATE stock_sync.queue q
    SET state = 'in_flight', claimed_by = $2, claimed_at = now()
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

/// Closes pending entries of a store that must never get requests (`$2` the reason). Rows
/// capture is updating are skipped (never waited for, so no deadlock) and closed next time.
pub const CLOSE_STORE_SQL: &str = r#"
UPDATE stock_sync.queue
SET state = 'done', outcome = $2, finished_at = now(), claimed_by = NULL
WHERE id IN (
    SELECT id FROM stock_sync.queue
    WHERE store_id = $1 AND state = 'pending'
    FOR UPDATE SKIP LOCKED
)
"#;

/// Marks claimed entries done: `$1` ids, `$2` outcome, `$3` the quantity each was sent or
/// found equal to (NULL when none applies).
pub const FINISH_SQL: &str = r#"
UPDATE stock_sync.queue q
SET state = 'done', outcome = $2, finished_at = now(), sent_quantity = u.quantity
FROM unnest($1::bigint[], $3::int[]) AS u(id, quantity)
WHERE q.id = u.id AND q.state = 'in_flight'
"#;

/// A claimed entry that failed for its own sake (`$3` error) with too many attempts.
pub const DEAD_LETTER_SQL: &str = r#"
UPDATE stock_sync.queue
SET state = 'dead', outcome = 'failed', finished_at = now(), attempts = attempts + 1,
    last_error = $2
WHERE id = $1 AND state = 'in_flight'
"#;

pub const STORE_SQL: &str = r#"
SELECT type, is_active, send_stock, seller_id, api_key, api_secret FROM stores WHERE id = $1
"#;

/// Remembers that a store's entries were closed without requests (`$2` why).
pub const MARK_GATED_SQL: &str = r#"
INSERT INTO stock_sync.store_state (store_id, gated_reason) VALUES ($1, $2)
ON CONFLICT (store_id) DO UPDATE SET gated_reason = EXCLUDED.gated_reason
"#;

/// Stores whose entries were closed as inactive / foreign / missing and that are now active
/// marketplace stores: their listings must be sent again.
pub const REOPENED_STORES_SQL: &str = r#"
SELECT st.store_id, st.gated_reason
FROM stock_sync.store_state st
JOIN stores s ON s.id = st.store_id
WHERE st.gated_reason IS NOT NULL
  AND s.is_active AND s.send_stock
  AND upper(btrim(s.type)) IN ('TRENDYOL', 'HEPSIBURADA')
"#;

pub const CLEAR_GATED_SQL: &str =
    "UPDATE stock_sync.store_state SET gated_reason = NULL WHERE store_id = $1";

pub const ENSURE_STORE_STATE_SQL: &str =
    "INSERT INTO stock_sync.store_state (store_id) VALUES ($1) ON CONFLICT DO NOTHING";

/// Pause and gates of a store: `$2` is min_send_interval in seconds. `waiting` is true while
/// a Retry-After, a backoff or the minimum gap since the last request is not over.
pub const STORE_STATE_SQL: &str = r#"
SELECT paused_reason, paused_credentials,
       COALESCE(not_before > now(), false) AS backing_off,
       COALESCE(last_request_at + make_interval(secs => $2::float8) > now(), false) AS too_soon
FROM stock_sync.store_state WHERE store_id = $1
"#;

/// A paused store is looked at again (for changed credentials) after [`PAUSE_RECHECK_SQL`]'s
/// delay, not on every tick.
pub const PAUSE_STORE_SQL: &str = r#"
UPDATE stock_sync.store_state
SET paused_reason = $2, paused_at = now(), paused_credentials = $3, last_error = $2,
    not_before = now() + interval '2 seconds'
WHERE store_id = $1
"#;

pub const PAUSE_RECHECK_SQL: &str = r#"
UPDATE stock_sync.store_state SET not_before = now() + interval '2 seconds' WHERE store_id = $1
"#;

pub const UNPAUSE_STORE_SQL: &str = r#"
UPDATE stock_sync.store_state
SET paused_reason = NULL, paused_at = NULL, paused_credentials = NULL, not_before = NULL,
    consecutive_failures = 0
WHERE store_id = $1
"#;

/// 5xx or no answer: exponential backoff with jitter, `$2` base and `$3` cap in seconds.
pub const BACKOFF_STORE_SQL: &str = r#"
UPDATE stock_sync.store_state
SET consecutive_failures = consecutive_failures + 1,
    not_before = now() + make_interval(secs =>
        LEAST($3::float8, $2::float8 * power(2, LEAST(consecutive_failures, 30)))
        * (0.5 + random())),
    last_error = $4
WHERE store_id = $1
"#;

/// 429: no request before now + `$2` seconds.
pub const THROTTLE_STORE_SQL: &str = r#"
UPDATE stock_sync.store_state
SET not_before = GREATEST(COALESCE(not_before, now()), now() + make_interval(secs => $2::float8)),
    last_error = $3
WHERE store_id = $1
"#;

pub const STORE_SUCCESS_SQL: &str = r#"
UPDATE stock_sync.store_state
SET consecutive_failures = 0, last_success_at = now(), last_error = NULL
WHERE store_id = $1
"#;

/// Requests of a store to an endpoint within the last `$3` seconds, and how many seconds until
/// the oldest of them leaves the window.
pub const RATE_WINDOW_SQL: &str = r#"
SELECT count(*),
       COALESCE(EXTRACT(EPOCH FROM min(sent_at) + make_interval(secs => $3::float8) - now())::float8, 0)
FROM stock_sync.sent_requests
WHERE store_id = $1 AND endpoint = $2 AND sent_at > now() - make_interval(secs => $3::float8)
"#;

/// Seconds until a body with this hash may be sent to the store again; no row when it may
/// be sent now.
pub const IDENTICAL_BODY_SQL: &str = r#"
SELECT EXTRACT(EPOCH FROM max(sent_at) + make_interval(secs => $3::float8) - now())::float8
FROM stock_sync.sent_requests
WHERE store_id = $1 AND body_sha256 = $2 AND sent_at > now() - make_interval(secs => $3::float8)
HAVING count(*) > 0
"#;

/// Written before the request goes out, so the limits hold across crashes and instances.
pub const RECORD_REQUEST_SQL: &str = r#"
WITH recorded AS (
    INSERT INTO stock_sync.sent_requests (store_id, endpoint, body_sha256) VALUES ($1, $2, $3)
    RETURNING id
), touched AS (
    UPDATE stock_sync.store_state SET last_request_at = now() WHERE store_id = $1
)
SELECT id FROM recorded
"#;

/// The marketplace answered that it did not take the body (429, 401/403, a 400, a 5xx): it
/// still counts for the rate limit, but not for the identical-body rule, so the retry of the
/// same body is not held back for a whole window.
pub const FORGET_BODY_SQL: &str =
    "UPDATE stock_sync.sent_requests SET body_sha256 = NULL WHERE id = $1";

/// A batch result read: counts against the status endpoint's window only (not the store's
/// minimum gap between pushes).
pub const RECORD_STATUS_REQUEST_SQL: &str =
    "INSERT INTO stock_sync.sent_requests (store_id, endpoint) VALUES ($1, $2)";

/// Marketplace keys of products (Trendyol barcode, Hepsiburada sku) and whether each is
/// still listed in store `$2` (has its own `product_stores` row there).
pub const PRODUCT_KEYS_SQL: &str = r#"
SELECT p.id, p.barcode, p.sku,
       EXISTS (SELECT 1 FROM product_stores ps WHERE ps.product_id = p.id AND ps.store_id = $2)
FROM products p WHERE p.id = ANY($1::uuid[])
"#;

/// The quantity the marketplace was last told (a push whose item result is still unknown
/// counts) per product of a store; NULL while a request's fate is in doubt.
pub const LAST_TOLD_SQL: &str = r#"
SELECT product_id,
       CASE WHEN in_doubt THEN NULL ELSE COALESCE(sent_quantity, accepted_quantity) END
FROM stock_sync.listing_state
WHERE store_id = $1 AND product_id = ANY($2::uuid[])
"#;

pub const INSERT_BATCH_SQL: &str = r#"
INSERT INTO stock_sync.batches (store_id, provider, batch_ref, items, next_poll_at)
VALUES ($1, $2, $3, $4::text::jsonb, now() + make_interval(secs => $5::float8))
RETURNING id
"#;

/// Before a push leaves: its pairs are in doubt until it is accepted (see migration 002).
pub const MARK_IN_DOUBT_SQL: &str = r#"
INSERT INTO stock_sync.listing_state AS l (store_id, product_id, in_doubt)
SELECT $1, u.product_id, true FROM unnest($2::uuid[]) AS u(product_id)
ON CONFLICT (store_id, product_id) DO UPDATE SET in_doubt = true
"#;

/// After a push was accepted: what was sent, per product, and by which batch.
pub const MARK_SENT_SQL: &str = r#"
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
pub const ITEM_ACCEPTED_SQL: &str = r#"
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
pub const SENT_IN_BATCH_SQL: &str = r#"
SELECT product_id, sent_quantity FROM stock_sync.listing_state
WHERE store_id = $1 AND sent_batch_id = $2 AND sent_quantity IS NOT NULL
ORDER BY product_id
"#;

/// Item failure in batch `$3`: the marketplace did not take the quantity, so it is no longer
/// "told".
pub const ITEM_FAILED_SQL: &str = r#"
UPDATE stock_sync.listing_state
SET sent_quantity = NULL, sent_batch_id = NULL
WHERE store_id = $1 AND product_id = ANY($2::uuid[]) AND sent_batch_id = $3
"#;

/// Re-enqueues failed items of a finished batch: `$2` max attempts; per item product,
/// priority, attempts so far (this failure included), delay in seconds, error. Items at the
/// limit become dead letters instead.
pub const REQUEUE_FAILED_ITEMS_SQL: &str = r#"
INSERT INTO stock_sync.queue AS q
    (product_id, store_id, reason, priority, attempts, not_before, state, outcome, finished_at, last_error)
SELECT u.product_id, $1, 'RETRY', u.priority, u.attempts,
       now() + make_interval(secs => u.delay),
       CASE WHEN u.attempts >= $2 THEN 'dead' ELSE 'pending' END,
       CASE WHEN u.attempts >= $2 THEN 'failed' END,
       CASE WHEN u.attempts >= $2 THEN now() END,
       u.error
FROM unnest($3::uuid[], $4::int[], $5::int[], $6::float8[], $7::text[])
     AS u(product_id, priority, attempts, delay, error)
ORDER BY u.product_id
ON CONFLICT (product_id, store_id) WHERE state = 'pending' DO UPDATE
SET priority = GREATEST(q.priority, EXCLUDED.priority),
    attempts = GREATEST(q.attempts, EXCLUDED.attempts),
    last_error = EXCLUDED.last_error
"#;

/// Batches whose result is due, leased by moving `next_poll_at` forward (1.5x per poll, from
/// `$1` to at most `$2` seconds), so other instances skip them meanwhile.
pub const DUE_BATCHES_SQL: &str = r#"
UPDATE stock_sync.batches b
SET next_poll_at = now() + make_interval(secs => LEAST($2::float8, $1::float8 * power(1.5, LEAST(b.polls, 40)))),
    polls = b.polls + 1
WHERE b.id IN (
    SELECT id FROM stock_sync.batches
    WHERE state = 'polling' AND next_poll_at <= now()
    ORDER BY next_poll_at
    LIMIT 16
    FOR UPDATE SKIP LOCKED
)
RETURNING b.id, b.store_id, b.provider, b.batch_ref, b.items::text,
          EXTRACT(EPOCH FROM now() - b.created_at)::float8
"#;

/// Locks a batch for finishing; only a batch still polling is finished (once).
pub const LOCK_BATCH_SQL: &str = "SELECT state FROM stock_sync.batches WHERE id = $1 FOR UPDATE";

pub const FINISH_BATCH_SQL: &str = r#"
UPDATE stock_sync.batches SET state = $2, finished_at = now() WHERE id = $1
"#;

/// Batches of a store whose result is still open (Hepsiburada allows only a few).
pub const OPEN_BATCHES_SQL: &str =
    "SELECT count(*) FROM stock_sync.batches WHERE store_id = $1 AND state = 'polling'";

pub const INSERT_API_LOG_SQL: &str = r#"
INSERT INTO stock_sync.api_log
    (provider, type, store_id, item_count, status_code, duration_ms, batch_id, success,
     request_body, response_body, error_message)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
"#;

/// Retention of finished queue entries (`$1` days).
pub const PRUNE_QUEUE_SQL: &str = "DELETE FROM stock_sync.queue WHERE state = 'done' AND finished_at < now() - make_interval(days => $1::int)";
/// Retention of finished batches (`$1` days).
pub const PRUNE_BATCHES_SQL: &str = "DELETE FROM stock_sync.batches WHERE state <> 'polling' AND finished_at < now() - make_interval(days => $1::int)";
/// Retention of capture's batch log (`$1` days). Its exclusion guard only has to cover what
/// the slot could still send again, which is never older than the checkpoint.
pub const PRUNE_CAPTURE_BATCHES_SQL: &str = "DELETE FROM stock_sync.capture_batches WHERE captured_at < now() - make_interval(days => $1::int)";
/// The per-transaction capture log of versions before migration 003 (kept for rollbacks).
pub const PRUNE_LEGACY_CAPTURE_LOG_SQL: &str =
    "DELETE FROM stock_sync.capture_log WHERE captured_at < now() - make_interval(days => $1::int)";
/// Retention of the API log (`$1` days).
pub const PRUNE_API_LOG_SQL: &str =
    "DELETE FROM stock_sync.api_log WHERE created_at < now() - make_interval(days => $1::int)";
/// Sent requests older than every limiter window (`$1` seconds) are no longer needed.
pub const PRUNE_SENT_REQUESTS_SQL: &str =
    "DELETE FROM stock_sync.sent_requests WHERE sent_at < now() - make_interval(secs => $1::float8)";
