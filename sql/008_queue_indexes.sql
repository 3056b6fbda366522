-- stocksync 008: queue indexes that keep a store's cycle independent of its backlog.
-- Written by `stocksync setup`; the whole file runs in one transaction.

-- Claims are taken in (priority DESC, enqueued_at, id) order. Without `id` in the index,
-- entries of one transaction (an initial sync, an ERP import: one enqueued_at) were read
-- and sorted in full for every claim of 1000: a cost growing with the backlog.
CREATE INDEX IF NOT EXISTS queue_claim_order_v2
    ON stock_sync.queue (store_id, priority DESC, enqueued_at, id) WHERE state = 'pending';
DROP INDEX IF EXISTS stock_sync.queue_claim_order;

-- A store's claims are found by store (the orphan check of its cycle); the lease check
-- across stores still reads claimed_at from the same small index.
CREATE INDEX IF NOT EXISTS queue_in_flight_store
    ON stock_sync.queue (store_id, claimed_at) WHERE state = 'in_flight';
DROP INDEX IF EXISTS stock_sync.queue_in_flight;

-- The due check reads the claim-order index too (its leading store_id serves the loose scan
-- for stores with work): one index less to write for every entry capture enqueues.
DROP INDEX IF EXISTS stock_sync.queue_pending_age;
