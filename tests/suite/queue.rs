//! The queue's state machine against a real PostgreSQL: fenced claims (a cycle whose claims
//! were taken over changes nothing), orphans (only claims whose backend is gone or whose lease
//! ran out), and one pending entry per pair.

use crate::common;

use std::time::Duration;

use common::*;
use stocksync::queue::{self, ClaimToken, Outcome, QueueError, Reason, Release};
use tokio_postgres::Client;
use uuid::Uuid;

const LONG_LEASE: Duration = Duration::from_secs(3600);

/// A migrated database with one listed pair; its URL, a client, and (product, store).
async fn one_pair(prefix: &str) -> (String, Client, Uuid, Uuid) {
    let url = fresh_database(prefix);
    let client = connect(&url).await;
    setup(&url, prefix, prefix).await;
    let (product, store) = (uuid(), uuid());
    client
        .execute(
            "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity) VALUES ($1, $2, $3, 5)",
            &[&uuid(), &product, &store],
        )
        .await
        .unwrap();
    queue::enqueue_all_listed(&client, Reason::Resync, Some(store))
        .await
        .unwrap();
    (url, client, product, store)
}

async fn entry(client: &Client, id: i64) -> (String, Option<String>, Option<i32>) {
    let r = client
        .query_one(
            "SELECT state, outcome, sent_quantity FROM stock_sync.queue WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

fn claim_lost(result: Result<(), QueueError>) -> bool {
    matches!(result, Err(QueueError::ClaimLost { .. }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_whose_claim_was_taken_over_changes_nothing() {
    let (_url, db, _product, store) = one_pair("queue_fence").await;
    let (first, second) = (ClaimToken::new(), ClaimToken::new());
    let claims = queue::claim(&db, store, "first", first, 10).await.unwrap();
    assert_eq!(claims.len(), 1);
    let id = claims[0].id;

    // The first cycle's claim outlived its lease: the next holder of the lock releases it
    // and claims the entry again.
    assert_eq!(
        queue::release_orphans(&db, store, Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    let again = queue::claim(&db, store, "second", second, 10)
        .await
        .unwrap();
    assert_eq!(again.iter().map(|c| c.id).collect::<Vec<_>>(), vec![id]);
    queue::finish(&db, second, &[id], Outcome::Sent, &[Some(7)])
        .await
        .unwrap();

    // The slower first cycle finishes late: every transition it tries changes nothing.
    assert!(claim_lost(
        queue::finish(&db, first, &[id], Outcome::Sent, &[Some(5)]).await
    ));
    assert!(claim_lost(
        queue::release(&db, first, &[id], Release::default()).await
    ));
    assert!(claim_lost(queue::dead_letter(&db, first, id, "late").await));
    assert!(claim_lost(queue::renew(&db, first, &[id]).await));
    assert_eq!(
        entry(&db, id).await,
        ("done".into(), Some("sent".into()), Some(7)),
        "the newer outcome stands"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_claims_of_a_gone_backend_or_past_their_lease_are_orphans() {
    let (url, db, _product, store) = one_pair("queue_orphans").await;
    // A cycle on its own connection claims the entry.
    let cycle = connect(&url).await;
    let token = ClaimToken::new();
    let claims = queue::claim(&cycle, store, "cycle", token, 10)
        .await
        .unwrap();
    assert_eq!(claims.len(), 1);

    // Its connection lives and the lease holds: not an orphan, whoever holds the lock.
    assert!(queue::stale_claim_stores(&db, LONG_LEASE)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        queue::release_orphans(&db, store, LONG_LEASE)
            .await
            .unwrap(),
        0
    );
    assert_eq!(entry(&db, claims[0].id).await.0, "in_flight");

    // The cycle's connection goes (its process died): now it is.
    drop(cycle);
    eventually(Duration::from_secs(10), "the backend gone", || async {
        queue::stale_claim_stores(&db, LONG_LEASE)
            .await
            .unwrap()
            .contains(&store)
    })
    .await;
    assert_eq!(
        queue::release_orphans(&db, store, LONG_LEASE)
            .await
            .unwrap(),
        1
    );
    assert_eq!(entry(&db, claims[0].id).await.0, "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_next_to_a_newer_pending_entry_supersedes_and_keeps_one_pending() {
    let (_url, db, product, store) = one_pair("queue_supersede").await;
    let token = ClaimToken::new();
    let claims = queue::claim(&db, store, "cycle", token, 10).await.unwrap();
    // A change arrives while the entry is in flight: a new pending entry for the pair.
    queue::enqueue_all_listed(&db, Reason::Resync, Some(store))
        .await
        .unwrap();
    queue::release(&db, token, &[claims[0].id], Release::default())
        .await
        .unwrap();
    assert_eq!(
        entry(&db, claims[0].id).await,
        ("done".into(), Some("superseded".into()), None)
    );
    let pending: i64 = db
        .query_one(
            "SELECT count(*) FROM stock_sync.queue WHERE product_id = $1 AND store_id = $2 AND state = 'pending'",
            &[&product, &store],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 1);
}

/// Instances killed one after the other can leave a pair in flight twice: the first died
/// holding the entry, a change enqueued the pair again, and the next instance claimed that
/// before the first one's claim counted as an orphan, then died too. Releasing both orphans
/// keeps the newer one as the pair's pending entry and closes the older one; before, the
/// release failed on the one-pending-per-pair index at every cycle and the store stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_of_one_pair_released_together_leave_one_pending_entry() {
    let (url, db, product, store) = one_pair("queue_twice").await;
    let first = connect(&url).await;
    let older = queue::claim(&first, store, "first", ClaimToken::new(), 10)
        .await
        .unwrap();
    queue::enqueue_all_listed(&db, Reason::Resync, Some(store))
        .await
        .unwrap();
    let second = connect(&url).await;
    let newer = queue::claim(&second, store, "second", ClaimToken::new(), 10)
        .await
        .unwrap();
    assert_eq!((older.len(), newer.len()), (1, 1));
    drop((first, second));
    eventually(Duration::from_secs(10), "both backends gone", || async {
        let live: i64 = db
            .query_one(
                "SELECT count(*) FROM stock_sync.queue q JOIN pg_stat_activity a \
                 ON a.pid = q.claimed_backend WHERE q.state = 'in_flight'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        live == 0
    })
    .await;
    assert_eq!(
        queue::release_orphans(&db, store, LONG_LEASE)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        entry(&db, older[0].id).await,
        ("done".into(), Some("superseded".into()), None)
    );
    assert_eq!(entry(&db, newer[0].id).await.0, "pending");
    let pending: i64 = db
        .query_one(
            "SELECT count(*) FROM stock_sync.queue WHERE product_id = $1 AND store_id = $2 AND state = 'pending'",
            &[&product, &store],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 1);
}

/// Capture commits its queue rows only once the captured transactions are visible. A
/// transaction whose xid is above the snapshot's xmax (an older one still runs) is not
/// visible yet, and becomes so when it completes, whatever the older one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_is_visible_only_once_it_has_completed() {
    let url = fresh_database("visibility");
    let observer = connect(&url).await;
    let (mut older, mut newer) = (connect(&url).await, connect(&url).await);
    let older = older.transaction().await.unwrap();
    let newer = newer.transaction().await.unwrap();
    let mut xids = Vec::new();
    for tx in [&older, &newer] {
        let txid: i64 = tx
            .query_one("SELECT txid_current()", &[])
            .await
            .unwrap()
            .get(0);
        // pgoutput names transactions by the low 32 bits.
        xids.push(txid as u32);
    }
    let (older_xid, newer_xid) = (xids[0], xids[1]);
    let visible = |xid: u32| {
        let observer = &observer;
        async move {
            queue::current_snapshot(observer)
                .await
                .unwrap()
                .all_visible(&[xid])
        }
    };
    assert!(!visible(older_xid).await);
    assert!(!visible(newer_xid).await, "above xmax while the older runs");
    newer.commit().await.unwrap();
    assert!(visible(newer_xid).await);
    assert!(!visible(older_xid).await);
    older.commit().await.unwrap();
    assert!(visible(older_xid).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_outcomes_in_a_row_are_counted_per_pair_and_a_known_one_ends_them() {
    let (_url, db, product, store) = one_pair("queue_unknown_streak").await;
    let other = uuid();
    for expected in 1..=3 {
        let streaks = queue::count_unknown_outcomes(&db, store, &[product])
            .await
            .unwrap();
        assert_eq!(streaks.get(&product), Some(&expected));
    }
    // Another pair's streak is its own.
    let streaks = queue::count_unknown_outcomes(&db, store, &[other])
        .await
        .unwrap();
    assert_eq!(streaks.get(&other), Some(&1));
    // A known outcome (accepted or refused) ends the streak: the next unknown is the first.
    queue::clear_unknown_outcomes(&db, store, &[product])
        .await
        .unwrap();
    let streaks = queue::count_unknown_outcomes(&db, store, &[product, other])
        .await
        .unwrap();
    assert_eq!(streaks.get(&product), Some(&1));
    assert_eq!(streaks.get(&other), Some(&2));
}
