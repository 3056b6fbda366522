-- stocksync 007: reconciliation — what each marketplace shows, compared with the database.
-- Written by `stocksync setup`; the whole file runs in one transaction.

-- One periodic audit of one store (`stocksync reconcile` on the command line only prints).
-- A running audit keeps where it is (`position`: the next page, or how far the listings no
-- page showed have been checked) and its counts so far, committed with each page and its
-- repairs, so a restarted process resumes it. The counts partition what was checked (see
-- the module doc of src/reconcile).
CREATE TABLE IF NOT EXISTS stock_sync.reconcile_runs (
    id                      bigserial PRIMARY KEY,
    store_id                uuid NOT NULL,
    state                   text NOT NULL DEFAULT 'running'
                            CHECK (state IN ('running', 'done', 'failed')),
    fix                     boolean NOT NULL,
    started_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    finished_at             timestamptz,
    position                jsonb,
    pages                   integer NOT NULL DEFAULT 0,
    reads                   integer NOT NULL DEFAULT 0,
    agree                   integer NOT NULL DEFAULT 0,
    drifted                 integer NOT NULL DEFAULT 0,
    missing_at_marketplace  integer NOT NULL DEFAULT 0,
    unknown_to_database     integer NOT NULL DEFAULT 0,
    not_repairable          integer NOT NULL DEFAULT 0,
    unknown                 integer NOT NULL DEFAULT 0,
    in_motion               integer NOT NULL DEFAULT 0,
    repaired                integer NOT NULL DEFAULT 0,
    bad_rows                integer NOT NULL DEFAULT 0,
    -- Why a failed audit stopped: a kind and an HTTP status or SQLSTATE, never a response body.
    error                   text
);
-- One audit of a store at a time (besides the advisory lock, which only lives with a session).
CREATE UNIQUE INDEX IF NOT EXISTS reconcile_runs_one_running
    ON stock_sync.reconcile_runs (store_id) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS reconcile_runs_store ON stock_sync.reconcile_runs (store_id, id DESC);

-- What an audit found that is not agreement, a sample (at most 1000 per kind and audit; the
-- counts above are complete). `key` is the listing's key, or the field of a row that could not
-- be read; `detail` says why a listing is not repairable or what is wrong with a row.
CREATE TABLE IF NOT EXISTS stock_sync.reconcile_drift (
    id                    bigserial PRIMARY KEY,
    run_id                bigint NOT NULL REFERENCES stock_sync.reconcile_runs (id) ON DELETE CASCADE,
    store_id              uuid NOT NULL,
    kind                  text NOT NULL CHECK (kind IN ('drifted', 'missing_at_marketplace',
                              'unknown_to_database', 'not_repairable', 'unknown', 'bad_row')),
    product_id            uuid,
    key                   text NOT NULL,
    marketplace_quantity  bigint,
    database_quantity     integer,
    detail                text,
    repaired              boolean NOT NULL DEFAULT false,
    found_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS reconcile_drift_run ON stock_sync.reconcile_drift (run_id, id);

-- Listing keys (in the marketplace's spelling) a running audit has read, so a resumed audit
-- still knows which listed products no page showed. Deleted when the audit ends.
CREATE TABLE IF NOT EXISTS stock_sync.reconcile_seen (
    run_id  bigint NOT NULL REFERENCES stock_sync.reconcile_runs (id) ON DELETE CASCADE,
    key     text NOT NULL,
    PRIMARY KEY (run_id, key)
);

-- The periodic audit's schedule per store: first seen, and when its next audit is due (one
-- interval after the last one ended, or after the store was first seen; sooner after a
-- failure). Kept up to date by the audit task, read by `status` and the dashboard.
CREATE TABLE IF NOT EXISTS stock_sync.reconcile_schedule (
    store_id       uuid PRIMARY KEY,
    first_seen_at  timestamptz NOT NULL DEFAULT now(),
    next_run_at    timestamptz NOT NULL
);
