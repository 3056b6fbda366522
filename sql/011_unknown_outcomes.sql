-- stocksync 011: unknown upload outcomes in a row, per pair.
-- Written by `stocksync setup`; the whole file runs in one transaction.

-- An upload result that names no item of the request (an error row without a sku of ours)
-- leaves each of its items unknown: sent again, no attempt counted. Counting those outcomes
-- in a row lets dispatch start counting attempts after a few, so such an item ends in a dead
-- letter instead of being resent forever; a known outcome (accepted or refused) resets it.
ALTER TABLE stock_sync.listing_state
    ADD COLUMN IF NOT EXISTS unknown_outcomes integer NOT NULL DEFAULT 0;
