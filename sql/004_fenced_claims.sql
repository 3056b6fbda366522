-- stocksync 004: fenced claims.
-- Written by `stocksync setup`; the whole file runs in one transaction.
--
-- A claim names the cycle that made it (`claim_token`) and the backend that made it
-- (`claimed_backend`, pg_backend_pid() of the cycle's connection). Every move out of
-- `in_flight` checks the token, so a cycle whose claims another dispatcher released and
-- re-claimed changes nothing; claims are orphans (released by the next holder of the store's
-- lock) only when their backend is gone or their lease (`claimed_at`, renewed before every
-- request) ran out. Claims of earlier versions have neither and count as orphans.
ALTER TABLE stock_sync.queue
    ADD COLUMN IF NOT EXISTS claim_token uuid,
    ADD COLUMN IF NOT EXISTS claimed_backend integer;
