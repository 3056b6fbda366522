//! Every PostgreSQL advisory lock stocksync takes, in one place.
//!
//! All are session-level two-key locks `pg_try_advisory_lock(class, key)`: the class names the
//! purpose, so keys of different purposes can never collide. A lock vanishes with the session
//! that holds it, which is what makes each of them safe across crashes.
//!
//! | class | key | held by | for |
//! | --- | --- | --- | --- |
//! | [`CAPTURE_LEADER`] | `hashtext(slot)` | capture's connection, as long as it streams | one instance streams a slot; the others stand by |
//! | [`STORE_CYCLE`] | [`store_key`] | the dispatcher's lock connection, for one store cycle | one cycle (of any instance) works a store at a time |
//! | [`RECONCILE`] | [`store_key`] | a reconciliation run's connection, for one store | one audit of a store at a time |
//!
//! Row locks (`FOR UPDATE [SKIP LOCKED]`) on queue entries and batches are described where
//! they are taken ([`crate::queue`], the batch poller).

use uuid::Uuid;

/// "SSCL": which instance streams the replication slot.
pub const CAPTURE_LEADER: i32 = 0x5353_434C;
/// "SSSC": one dispatch cycle per store.
pub const STORE_CYCLE: i32 = 0x5353_5343;
/// "SSRC": one reconciliation per store.
pub const RECONCILE: i32 = 0x5353_5243;

/// `SELECT pg_try_advisory_lock(class, key)`.
pub const TRY_LOCK_SQL: &str = "SELECT pg_try_advisory_lock($1, $2)";
/// The same with the key hashed from text by the server (`hashtext`).
pub const TRY_LOCK_TEXT_SQL: &str = "SELECT pg_try_advisory_lock($1, hashtext($2))";
/// `SELECT pg_advisory_unlock(class, key)`.
pub const UNLOCK_SQL: &str = "SELECT pg_advisory_unlock($1, $2)";

/// The 32-bit key of a store (the uuid's four words folded together).
pub fn store_key(store_id: Uuid) -> i32 {
    let v = store_id.as_u128();
    (v ^ (v >> 32) ^ (v >> 64) ^ (v >> 96)) as u32 as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_distinct() {
        let classes = [CAPTURE_LEADER, STORE_CYCLE, RECONCILE];
        for (i, a) in classes.iter().enumerate() {
            for b in &classes[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn store_keys_spread_and_are_stable() {
        let a = Uuid::parse_str("6a1f0a8e-0000-4000-8000-000000000001").unwrap();
        let b = Uuid::parse_str("6a1f0a8e-0000-4000-8000-000000000002").unwrap();
        assert_eq!(store_key(a), store_key(a));
        assert_ne!(store_key(a), store_key(b));
    }
}
