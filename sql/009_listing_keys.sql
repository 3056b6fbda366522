-- stocksync 009: what each listing is known as at the marketplace.
-- Written by `stocksync setup`; the whole file runs in one transaction.

-- The key a pair was last sent under (`told_key`, set before the request leaves) and that
-- key in the marketplace's spelling (`told_key_form`: Trendyol removes spaces, Hepsiburada
-- skus compare case-insensitively). A product deleted with its listings has no key to read
-- any more: its pair is told 0 once under `told_key`. Two products whose keys are one
-- listing at the marketplace are found by `told_key_form`.
ALTER TABLE stock_sync.listing_state
    ADD COLUMN IF NOT EXISTS told_key text,
    ADD COLUMN IF NOT EXISTS told_key_form text,
    -- Hepsiburada keeps the stock of listings it fulfils itself (`isFulfilledByHB`):
    -- learnt from reads and from the marketplace's refusal, such a listing is never pushed.
    ADD COLUMN IF NOT EXISTS fulfilled_by_marketplace boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS fulfilled_seen_at timestamptz;
CREATE INDEX IF NOT EXISTS listing_state_told_key_form
    ON stock_sync.listing_state (store_id, told_key_form) WHERE told_key_form IS NOT NULL;

-- Products of a store whose keys are one listing at the marketplace ("869 0001" and
-- "8690001" at Trendyol). Neither is pushed while the collision lasts; dispatch looks at
-- each again and enqueues the pairs once the data is fixed. Shown by `status`.
CREATE TABLE IF NOT EXISTS stock_sync.key_collisions (
    store_id    uuid NOT NULL,
    product_id  uuid NOT NULL,
    key         text NOT NULL,
    key_form    text NOT NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store_id, product_id)
);
CREATE INDEX IF NOT EXISTS key_collisions_form ON stock_sync.key_collisions (store_id, key_form);
