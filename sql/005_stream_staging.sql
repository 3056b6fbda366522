-- stocksync 005: staging of streamed transactions.
-- Written by `stocksync setup`; the whole file runs in one transaction.
--
-- With protocol version 2 and streaming on, the server sends a transaction larger than its
-- logical_decoding_work_mem while the transaction is still in progress. Its seeds (the pairs
-- to recompute) wait here, outside the queue and so invisible to dispatch, until its Stream
-- Commit moves them into the queue in the same transaction as its capture_batches row and the
-- checkpoint; a Stream Abort (of the transaction, or of a subtransaction: `subxid`) deletes
-- them.
--
-- Nothing here outlives a capture session: after a reconnect the server streams a transaction
-- whose commit never arrived again from its start, so capture deletes its slot's rows at
-- start-up. Hence UNLOGGED: no WAL to write, nor for the walsender to decode, and a server
-- crash empties the table, which start-up would do anyway. No index: rows arrive by COPY at
-- the server's pace and are read once, by the move at commit.
CREATE UNLOGGED TABLE IF NOT EXISTS stock_sync.stream_staging (
    slot_name   text NOT NULL,
    -- The top-level transaction, and the (sub)transaction that made the change.
    xid         bigint NOT NULL,
    subxid      bigint NOT NULL,
    product_id  uuid NOT NULL,
    -- NULL: every store where the product is listed (a composition change).
    store_id    uuid,
    priority    integer NOT NULL,
    reason      text NOT NULL
);
