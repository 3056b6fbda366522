-- stocksync 003: one capture-log row per capture batch instead of one per WAL transaction.
-- Written by `stocksync setup`; the whole file runs in one transaction.
--
-- A row per WAL transaction cost as much as the queue write it accompanied and grew without
-- bound. A batch row keeps the same facts (which transactions, by xid and commit LSN, were
-- captured when) in arrays, and an exclusion constraint on the batch's LSN span still makes a
-- second capture of any transaction fail loudly instead of passing unseen.

DO $$
BEGIN
    CREATE TYPE stock_sync.lsn_range AS RANGE (subtype = pg_lsn);
EXCEPTION WHEN duplicate_object THEN NULL;
END
$$;

CREATE TABLE IF NOT EXISTS stock_sync.capture_batches (
    id                bigserial PRIMARY KEY,
    -- [commit LSN of the first transaction, end LSN of the last): consecutive batches touch
    -- but never overlap.
    lsns              stock_sync.lsn_range NOT NULL,
    transactions      integer NOT NULL,
    row_changes       integer NOT NULL,
    -- Per transaction, in commit order: its xid and its commit LSN. Stored uncompressed:
    -- compressing them cost more than the rest of the batch's log.
    xids              bigint[] NOT NULL,
    commit_lsns       pg_lsn[] NOT NULL,
    last_commit_time  timestamptz,
    captured_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT capture_batches_captured_once EXCLUDE USING gist (lsns WITH &&)
);
ALTER TABLE stock_sync.capture_batches
    ALTER COLUMN xids SET STORAGE EXTERNAL,
    ALTER COLUMN commit_lsns SET STORAGE EXTERNAL;
CREATE INDEX IF NOT EXISTS capture_batches_captured_at ON stock_sync.capture_batches (captured_at);

-- One row per captured WAL transaction, for operators (and tests) asking "was it captured?".
CREATE OR REPLACE VIEW stock_sync.captured_transactions AS
SELECT b.id AS batch_id, t.xid, t.commit_lsn, b.captured_at
FROM stock_sync.capture_batches b
CROSS JOIN LATERAL unnest(b.xids, b.commit_lsns) AS t(xid, commit_lsn);

-- stock_sync.capture_log (one row per transaction, 001) is no longer written. It stays so a
-- rolled-back binary still runs; dispatch prunes its old rows with the same retention.
