-- stocksync 010: reconciliation holds back a listing a marketplace shows *lower* than the
-- database (an order the marketplace applied that the database has not imported yet) until
-- the difference has persisted `reconcile_confirm_after`.
-- Written by `stocksync setup`; the whole file runs in one transaction.

-- The first time an audit saw a pair's marketplace show less than the database, with both
-- figures. A later audit that sees the same two figures at least `reconcile_confirm_after`
-- after `first_seen_at` repairs the pair; a pair that agrees again, is in motion, or shows
-- other figures forgets (or restarts) its row. Kept across restarts and audits.
CREATE TABLE IF NOT EXISTS stock_sync.reconcile_held (
    store_id              uuid NOT NULL,
    product_id            uuid NOT NULL,
    marketplace_quantity  bigint NOT NULL,
    database_quantity     integer NOT NULL,
    first_seen_at         timestamptz NOT NULL,
    PRIMARY KEY (store_id, product_id)
);

-- The held-back count of an audit, and until when each held-back finding waits.
ALTER TABLE stock_sync.reconcile_runs
    ADD COLUMN IF NOT EXISTS held_back integer NOT NULL DEFAULT 0;
ALTER TABLE stock_sync.reconcile_drift
    ADD COLUMN IF NOT EXISTS held_until timestamptz;
ALTER TABLE stock_sync.reconcile_drift DROP CONSTRAINT IF EXISTS reconcile_drift_kind_check;
ALTER TABLE stock_sync.reconcile_drift ADD CONSTRAINT reconcile_drift_kind_check
    CHECK (kind IN ('drifted', 'held_back', 'missing_at_marketplace', 'unknown_to_database',
                    'not_repairable', 'unknown', 'bad_row'));
