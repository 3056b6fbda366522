-- stocksync 001: change capture — the durable queue and the checkpoint.
-- Written by `stocksync setup`; the whole file runs in one transaction.

-- The schema itself is created by setup's first step when it does not exist yet.

CREATE TABLE IF NOT EXISTS stock_sync.schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- Last fully captured position per slot: the end LSN of the last captured commit, or a
-- keepalive position reached with nothing in flight. Only ever moves forward.
CREATE TABLE IF NOT EXISTS stock_sync.checkpoint (
    slot_name   text PRIMARY KEY,
    lsn         pg_lsn NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per captured WAL transaction. The primary key makes a second capture of the same
-- transaction fail loudly instead of passing unseen.
CREATE TABLE IF NOT EXISTS stock_sync.capture_log (
    commit_lsn   pg_lsn PRIMARY KEY,
    end_lsn      pg_lsn NOT NULL,
    xid          bigint NOT NULL,
    commit_time  timestamptz,
    row_changes  integer NOT NULL,
    captured_at  timestamptz NOT NULL DEFAULT now()
);

-- Work: "recompute (product, store) and tell the marketplace if it changed". An entry never
-- carries a quantity, so replays and snapshots can only cause extra work.
--   pending   waiting to be sent (at most one per pair)
--   in_flight claimed by a dispatcher (claimed_by/claimed_at), being sent
--   done      finished; outcome says how (sent, unchanged, store_inactive, ...)
--   dead      kept failing; listed by `status`, re-enqueued by `retry-failed`
CREATE TABLE IF NOT EXISTS stock_sync.queue (
    id             bigserial PRIMARY KEY,
    product_id     uuid NOT NULL,
    store_id       uuid NOT NULL,
    reason         text NOT NULL,
    priority       integer NOT NULL,
    enqueued_at    timestamptz NOT NULL DEFAULT now(),
    commit_lsn     pg_lsn,
    state          text NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'in_flight', 'done', 'dead')),
    attempts       integer NOT NULL DEFAULT 0,
    not_before     timestamptz,
    claimed_by     text,
    claimed_at     timestamptz,
    finished_at    timestamptz,
    outcome        text,
    sent_quantity  integer,
    last_error     text
);
CREATE UNIQUE INDEX IF NOT EXISTS queue_one_pending_per_pair
    ON stock_sync.queue (product_id, store_id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS queue_claim_order
    ON stock_sync.queue (store_id, priority DESC, enqueued_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS queue_in_flight
    ON stock_sync.queue (claimed_at) WHERE state = 'in_flight';
CREATE INDEX IF NOT EXISTS queue_finished
    ON stock_sync.queue (finished_at) WHERE state = 'done';

-- What each marketplace last accepted per pair (item-level success only). Dispatch sends a
-- quantity only when it differs; TRUNCATE of product_stores re-enqueues every pair here.
CREATE TABLE IF NOT EXISTS stock_sync.listing_state (
    store_id            uuid NOT NULL,
    product_id          uuid NOT NULL,
    accepted_quantity   integer NOT NULL,
    accepted_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store_id, product_id)
);
