-- stocksync 013: a per-install key for credential fingerprints.
-- Written by `stocksync setup`; the whole file runs in one transaction.

-- store_state.paused_credentials remembers which credentials were refused, to notice when an
-- operator changes them. A bare SHA-256 of short credentials can be brute-forced offline by
-- anyone who reads that table; an HMAC keyed with this row's random key cannot without the
-- key. The row is written by stocksync (32 random bytes) the first time it needs it.
CREATE TABLE IF NOT EXISTS stock_sync.install (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    fingerprint_key bytea NOT NULL CHECK (octet_length(fingerprint_key) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON COLUMN stock_sync.install.fingerprint_key IS
    'HMAC-SHA256 key of the credential fingerprints in store_state.paused_credentials; a secret';
