-- stocksync 006: what live marketplace accounts need of a store's state.
-- Written by `stocksync setup`; the whole file runs in one transaction.

ALTER TABLE stock_sync.store_state
    -- Why the store is paused, as a closed set (credentials | forbidden | not_configured);
    -- `paused_reason` keeps the sentence.
    ADD COLUMN IF NOT EXISTS pause_kind text,
    -- While a store backs off: why (throttled | server_error | unexpected_status). Cleared
    -- by the next accepted request.
    ADD COLUMN IF NOT EXISTS problem_kind text,
    -- Consecutive 403 answers: the self-probe of a forbidden store waits
    -- STOCKSYNC_FORBIDDEN_BACKOFF, doubling per answer up to an hour.
    ADD COLUMN IF NOT EXISTS forbidden_count integer NOT NULL DEFAULT 0,
    -- Items per request after a 413 (halved each time, at least 50); NULL: the default.
    ADD COLUMN IF NOT EXISTS batch_limit integer;
