//! When the marketplace moved first: a listing it shows *lower* than the database.
//!
//! An order lowers a listing at the marketplace at once (Trendyol 5 -> 4) while the database
//! says 5 until the seller's order import runs. Repairing that difference pushes 5 over the
//! correct 4: oversold until the import lands. So a lower difference is repaired only once it
//! has *persisted*: the same two figures (marketplace, database) seen by reads at least
//! `confirm_after` apart ([`decide`]); until then it is reported as held back, with the time
//! it may be repaired. Sooner only where the marketplace itself shows that nothing changed on
//! its side since stocksync's last accepted push ([`unchanged_since_push`]: Trendyol's
//! `stockLastModifiedDate` not later than that push, and the listing showing what that push
//! set). A listing shown *higher* than the database (the overselling side) is not held.
//!
//! The first sighting is kept in `stock_sync.reconcile_held` (migration 010; every statement
//! on it is here), written in the transaction of the audit step that saw it, so it survives
//! restarts and spans audits. A pair that agrees again, is in motion, is repaired or shows
//! other figures forgets its row (other figures start a new one: a second order needs its
//! own import). Times are the database's clock: the first sighting is dated after its read,
//! the confirming read before its read, so the reads are at least `confirm_after` apart.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::ReconcileError;
use crate::marketplace::read::Listing;

/// The store's remembered first sightings.
const LOAD_SQL: &str = r#"
SELECT product_id, marketplace_quantity, database_quantity, first_seen_at
FROM stock_sync.reconcile_held WHERE store_id = $1
"#;

/// First sightings `$2..$5` of store `$1` (a new sighting replaces an old one).
const REMEMBER_SQL: &str = r#"
INSERT INTO stock_sync.reconcile_held
    (store_id, product_id, marketplace_quantity, database_quantity, first_seen_at)
SELECT $1, u.p, u.shown, u.truth, u.seen
FROM unnest($2::uuid[], $3::bigint[], $4::int[], $5::timestamptz[]) AS u(p, shown, truth, seen)
ON CONFLICT (store_id, product_id) DO UPDATE
SET marketplace_quantity = EXCLUDED.marketplace_quantity,
    database_quantity = EXCLUDED.database_quantity,
    first_seen_at = EXCLUDED.first_seen_at
"#;

const FORGET_SQL: &str =
    "DELETE FROM stock_sync.reconcile_held WHERE store_id = $1 AND product_id = ANY($2::uuid[])";

/// Sightings older than `$1` days (pairs no audit looked at since: no longer listed).
const PRUNE_SQL: &str = "DELETE FROM stock_sync.reconcile_held \
     WHERE first_seen_at < now() - make_interval(days => $1::int)";

/// The database's clock now (not the transaction's start).
const CLOCK_SQL: &str = "SELECT clock_timestamp()";

/// A remembered first sighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    pub shown: i64,
    pub truth: i32,
    pub first_seen: DateTime<Utc>,
}

/// What to do with a pair the marketplace shows lower than the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Repair,
    /// Not before `until`; `remember` is a new first sighting to keep.
    Hold {
        until: DateTime<Utc>,
        remember: Option<DateTime<Utc>>,
    },
}

/// The rule: repair at once when holding is off; repair when the same figures were first
/// seen at least `confirm_after` before this read started (`read_started`); otherwise hold,
/// remembering this read (dated `read_done`) as the first sighting unless the same figures
/// are remembered already.
pub fn decide(
    confirm_after: Duration,
    prior: Option<&Sighting>,
    shown: i64,
    truth: i32,
    read_started: DateTime<Utc>,
    read_done: DateTime<Utc>,
) -> Decision {
    if confirm_after.is_zero() {
        return Decision::Repair;
    }
    let wait = chrono::Duration::from_std(confirm_after).unwrap_or(chrono::Duration::MAX);
    match prior.filter(|p| p.shown == shown && p.truth == truth) {
        Some(p) if p.first_seen + wait <= read_started => Decision::Repair,
        Some(p) => Decision::Hold {
            until: p.first_seen + wait,
            remember: None,
        },
        None => Decision::Hold {
            until: read_done + wait,
            remember: Some(read_done),
        },
    }
}

/// Whether the marketplace shows that nothing changed on its side since stocksync's last
/// accepted push (`accepted`: its quantity and when it was accepted): the listing's stock was
/// last modified no later than that acceptance and still shows what the push set. Only
/// Trendyol dates its stock; without a date nothing is known.
pub fn unchanged_since_push(listing: &Listing, accepted: Option<&(i32, DateTime<Utc>)>) -> bool {
    match (listing.stock_modified_at, listing.quantity, accepted) {
        (Some(modified), Some(shown), Some((quantity, at))) => {
            modified <= *at && shown == i64::from(*quantity)
        }
        _ => false,
    }
}

/// The store's remembered first sightings.
pub async fn load(
    db: &impl GenericClient,
    store: Uuid,
) -> Result<HashMap<Uuid, Sighting>, ReconcileError> {
    Ok(db
        .query(LOAD_SQL, &[&store])
        .await?
        .iter()
        .map(|r| {
            (
                r.get(0),
                Sighting {
                    shown: r.get(1),
                    truth: r.get(2),
                    first_seen: r.get(3),
                },
            )
        })
        .collect())
}

/// Keeps first sightings `(product, sighting)`.
pub async fn remember(
    db: &impl GenericClient,
    store: Uuid,
    sightings: &[(Uuid, Sighting)],
) -> Result<(), ReconcileError> {
    if sightings.is_empty() {
        return Ok(());
    }
    let products: Vec<Uuid> = sightings.iter().map(|(p, _)| *p).collect();
    let shown: Vec<i64> = sightings.iter().map(|(_, s)| s.shown).collect();
    let truth: Vec<i32> = sightings.iter().map(|(_, s)| s.truth).collect();
    let seen: Vec<DateTime<Utc>> = sightings.iter().map(|(_, s)| s.first_seen).collect();
    db.execute(REMEMBER_SQL, &[&store, &products, &shown, &truth, &seen])
        .await?;
    Ok(())
}

/// Forgets the sightings of `products`.
pub async fn forget(
    db: &impl GenericClient,
    store: Uuid,
    products: &[Uuid],
) -> Result<(), ReconcileError> {
    if !products.is_empty() {
        db.execute(FORGET_SQL, &[&store, &products]).await?;
    }
    Ok(())
}

/// Deletes sightings older than `days`.
pub async fn prune(db: &impl GenericClient, days: i32) -> Result<u64, ReconcileError> {
    Ok(db.execute(PRUNE_SQL, &[&days]).await?)
}

/// The database's clock.
pub async fn clock(db: &impl GenericClient) -> Result<DateTime<Utc>, ReconcileError> {
    Ok(db.query_one(CLOCK_SQL, &[]).await?.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marketplace::read::ListingFlags;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn a_lower_difference_is_repaired_only_once_it_persisted() {
        let wait = Duration::from_secs(600);
        // First sighting: held until one wait after this read, remembered.
        assert_eq!(
            decide(wait, None, 4, 5, at(0), at(2)),
            Decision::Hold {
                until: at(602),
                remember: Some(at(2))
            }
        );
        let seen = Sighting {
            shown: 4,
            truth: 5,
            first_seen: at(2),
        };
        // The same figures, too soon: held until the same time, nothing new remembered.
        assert_eq!(
            decide(wait, Some(&seen), 4, 5, at(601), at(603)),
            Decision::Hold {
                until: at(602),
                remember: None
            }
        );
        // The same figures, a wait later: repaired.
        assert_eq!(
            decide(wait, Some(&seen), 4, 5, at(602), at(603)),
            Decision::Repair
        );
        // Other figures (another order, or the database moved): a new first sighting.
        assert_eq!(
            decide(wait, Some(&seen), 3, 5, at(900), at(901)),
            Decision::Hold {
                until: at(1501),
                remember: Some(at(901))
            }
        );
        // Holding off.
        assert_eq!(
            decide(Duration::ZERO, None, 4, 5, at(0), at(0)),
            Decision::Repair
        );
    }

    #[test]
    fn only_a_dated_unchanged_listing_counts_as_untouched_since_the_push() {
        let listing = |quantity, modified| Listing {
            key: "K".into(),
            quantity: Some(quantity),
            listing_id: None,
            stock_modified_at: modified,
            flags: ListingFlags::default(),
        };
        let pushed = (5, at(100));
        assert!(unchanged_since_push(
            &listing(5, Some(at(99))),
            Some(&pushed)
        ));
        assert!(unchanged_since_push(
            &listing(5, Some(at(100))),
            Some(&pushed)
        ));
        assert!(
            !unchanged_since_push(&listing(5, Some(at(101))), Some(&pushed)),
            "changed after the push"
        );
        assert!(
            !unchanged_since_push(&listing(4, Some(at(99))), Some(&pushed)),
            "not what the push set"
        );
        assert!(
            !unchanged_since_push(&listing(5, None), Some(&pushed)),
            "no date"
        );
        assert!(!unchanged_since_push(&listing(5, Some(at(99))), None));
    }
}
