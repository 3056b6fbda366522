-- stocksync 002: delivery — per-store state, the request limiter, batch polling, the API log.
-- Written by `stocksync setup`; the whole file runs in one transaction.

-- Per-store dispatch state. A paused store gets no requests until the reason is cleared
-- (credentials fixed: the pause is lifted when the stores row changes or by `retry-failed`).
CREATE TABLE IF NOT EXISTS stock_sync.store_state (
    store_id           uuid PRIMARY KEY,
    paused_reason      text,
    paused_at          timestamptz,
    paused_credentials text,          -- sha256 of the credentials that were refused
    not_before         timestamptz,   -- 429 Retry-After / 5xx backoff: no request before this
    consecutive_failures integer NOT NULL DEFAULT 0,
    last_request_at    timestamptz,
    last_success_at    timestamptz,
    last_error         text,
    -- Why the store's entries were last closed without requests (store_inactive,
    -- store_type_ignored, store_missing). The stores table is not replicated, so dispatch
    -- looks for such stores becoming sendable and resyncs them.
    gated_reason       text
);

-- Every request sent (or about to be sent), for the rate limit and the identical-body rule.
-- Rows are written before the request goes out, so limits hold across crashes and instances.
CREATE TABLE IF NOT EXISTS stock_sync.sent_requests (
    id           bigserial PRIMARY KEY,
    store_id     uuid NOT NULL,
    endpoint     text NOT NULL,
    sent_at      timestamptz NOT NULL DEFAULT now(),
    body_sha256  text
);
CREATE INDEX IF NOT EXISTS sent_requests_window ON stock_sync.sent_requests (store_id, endpoint, sent_at);
CREATE INDEX IF NOT EXISTS sent_requests_body ON stock_sync.sent_requests (store_id, body_sha256, sent_at);

-- Accepted pushes whose per-item result is not known yet (Trendyol batchRequestId,
-- Hepsiburada upload id). `items` maps request position to queue entry, product and quantity.
CREATE TABLE IF NOT EXISTS stock_sync.batches (
    id            bigserial PRIMARY KEY,
    store_id      uuid NOT NULL,
    provider      text NOT NULL,
    batch_ref     text NOT NULL,
    state         text NOT NULL DEFAULT 'polling' CHECK (state IN ('polling', 'done', 'expired')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    next_poll_at  timestamptz NOT NULL DEFAULT now(),
    polls         integer NOT NULL DEFAULT 0,
    items         jsonb NOT NULL,
    finished_at   timestamptz
);
CREATE INDEX IF NOT EXISTS batches_polling ON stock_sync.batches (next_poll_at) WHERE state = 'polling';

-- Every marketplace request and response, after the seed's OrderApiLog. Credentials are never
-- written; bodies are truncated.
CREATE TABLE IF NOT EXISTS stock_sync.api_log (
    id             bigserial PRIMARY KEY,
    created_at     timestamptz NOT NULL DEFAULT now(),
    provider       text NOT NULL,       -- TRENDYOL | HEPSIBURADA | STOCKSYNC
    type           text NOT NULL,       -- UPDATE_STOCK | GET_BATCH_STATUS | DRY_RUN | STOCK_PROBLEM
    store_id       uuid,
    item_count     integer,
    status_code    integer,
    duration_ms    integer,
    batch_id       text,
    success        boolean NOT NULL,
    request_body   text,
    response_body  text,
    error_message  text
);
CREATE INDEX IF NOT EXISTS api_log_recent ON stock_sync.api_log (created_at DESC);
CREATE INDEX IF NOT EXISTS api_log_store ON stock_sync.api_log (store_id, created_at DESC);

-- A push accepted at request level but whose item result is not known yet: dispatch compares
-- against sent_quantity while it is set, so the same quantity is not sent twice meanwhile.
-- Item success moves it to accepted_quantity; batch ids keep out-of-order results harmless.
-- `in_doubt`: a request carrying the pair left (or was about to) and its answer is not
-- known: a crash, a timeout or a 5xx may hide that the marketplace applied it. Until a push
-- of the pair is accepted, nothing is known to be "told", so nothing is skipped as unchanged.
ALTER TABLE stock_sync.listing_state
    ADD COLUMN IF NOT EXISTS sent_quantity integer,
    ADD COLUMN IF NOT EXISTS sent_batch_id bigint,
    ADD COLUMN IF NOT EXISTS accepted_batch_id bigint,
    ADD COLUMN IF NOT EXISTS in_doubt boolean NOT NULL DEFAULT false;
ALTER TABLE stock_sync.listing_state
    ALTER COLUMN accepted_quantity DROP NOT NULL,
    ALTER COLUMN accepted_at DROP NOT NULL,
    ALTER COLUMN accepted_at DROP DEFAULT;

-- The dispatcher's "is this store due?" check reads the oldest pending entries per store.
CREATE INDEX IF NOT EXISTS queue_pending_age
    ON stock_sync.queue (store_id, enqueued_at) WHERE state = 'pending';

-- The queue is a hot table: a new change of a pending pair rewrites its row (priority,
-- commit_lsn). Free space on each page lets those updates stay HOT (no new index entries),
-- and vacuum keeps up with the churn of done entries.
ALTER TABLE stock_sync.queue SET (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.05,
                                  autovacuum_analyze_scale_factor = 0.05);
