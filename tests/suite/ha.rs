//! Two `stocksync run` processes (the real binary) on one database: exactly one streams the
//! slot, the other stands by; when the streaming one is killed with SIGKILL the other takes
//! over within seconds, the changes made meanwhile reach the marketplace with the right
//! quantities, and nothing is sent twice. A store whose dispatcher loses its lock in the
//! middle of a push is not sent twice either (claims are fenced).

use crate::common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use stocksync::mock::{MockAccount, MockConfig, MockMarketplace};
use tokio_postgres::Client;
use uuid::Uuid;

const SLOT: &str = "ha";
const SELLER: &str = "4001";

/// The `stocksync run` processes of the test; all are killed when it ends, pass or fail.
struct Instances {
    children: Vec<Option<Child>>,
}

impl Instances {
    /// SIGKILL, as a crash would.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap the killed process");
        }
    }

    fn assert_running(&mut self, i: usize) {
        let child = self.children[i].as_mut().expect("not killed");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("instance {i} exited with {status}");
        }
    }
}

impl Drop for Instances {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

/// Two distinct free loopback ports (both bound at once, then released).
fn free_addrs() -> [SocketAddr; 2] {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    [a.local_addr().unwrap(), b.local_addr().unwrap()]
}

fn spawn(url: &str, http_addr: SocketAddr, marketplace: &str) -> Child {
    spawn_with(url, http_addr, marketplace, "2s")
}

fn spawn_with(url: &str, http_addr: SocketAddr, marketplace: &str, timeout: &str) -> Child {
    Command::new(binary())
        .arg("run")
        .env_clear()
        .env("DATABASE_URL", url)
        .env("STOCKSYNC_SLOT", SLOT)
        .env("STOCKSYNC_PUBLICATION", SLOT)
        .env("STOCKSYNC_HTTP_ADDR", http_addr.to_string())
        .env("STOCKSYNC_TRENDYOL_URL", marketplace)
        .env("STOCKSYNC_HEPSIBURADA_URL", marketplace)
        .env("STOCKSYNC_FLUSH_INTERVAL", "100ms")
        .env("STOCKSYNC_HEARTBEAT_INTERVAL", "0s")
        .env("STOCKSYNC_IDENTICAL_REQUEST_WINDOW", "2s")
        .env("STOCKSYNC_REQUEST_TIMEOUT", timeout)
        .env("STOCKSYNC_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start stocksync run")
}

/// `/readyz` of an instance (`None` while it does not answer).
async fn readyz(http: &reqwest::Client, addr: SocketAddr) -> Option<Value> {
    let response = http
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .ok()?;
    response.json().await.ok()
}

/// The `stocksync_streaming` gauge of an instance.
async fn streaming_metric(http: &reqwest::Client, addr: SocketAddr) -> Option<i64> {
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("stocksync_streaming "))
        .and_then(|v| v.trim().parse().ok())
}

/// Which instance streams, once exactly one does and the other stands by.
async fn leader(http: &reqwest::Client, addrs: [SocketAddr; 2]) -> Option<usize> {
    let (a, b) = (readyz(http, addrs[0]).await?, readyz(http, addrs[1]).await?);
    match (
        a["streaming"].as_bool(),
        a["standby"].as_bool(),
        b["streaming"].as_bool(),
        b["standby"].as_bool(),
    ) {
        (Some(true), _, Some(false), Some(true)) => Some(0),
        (Some(false), Some(true), Some(true), _) => Some(1),
        _ => None,
    }
}

async fn set_quantity(client: &Client, product: Uuid, store: Uuid, sellable: i32) {
    client
        .execute(
            "UPDATE product_stores SET sellable_quantity = $1 WHERE product_id = $2 AND store_id = $3",
            &[&sellable, &product, &store],
        )
        .await
        .unwrap();
}

async fn wait_quantities(mock: &MockMarketplace, want: &[(&str, i64)]) {
    for (code, quantity) in want {
        eventually(
            Duration::from_secs(20),
            &format!("{code} = {quantity} at the marketplace"),
            || async { mock.quantity(SELLER, code) == Some(*quantity) },
        )
        .await;
    }
}

/// A database with one Trendyol store and four listed products HA-1..HA-4 (10, 20, 30, 40).
async fn catalogue(name: &str) -> (String, Client, Uuid, Vec<Uuid>) {
    let url = fresh_database(name);
    let client = connect(&url).await;
    let store = uuid();
    client
        .execute(
            "INSERT INTO stores (id, name, type, seller_id, api_key, api_secret) \
             VALUES ($1, 'HA', 'TRENDYOL', $2, 'ha-key', 'ha-secret')",
            &[&store, &SELLER],
        )
        .await
        .unwrap();
    let codes = ["HA-1", "HA-2", "HA-3", "HA-4"];
    let mut products = Vec::new();
    for (i, code) in codes.iter().enumerate() {
        let id = uuid();
        client
            .execute(
                "INSERT INTO products (id, barcode, sku, name) VALUES ($1, $2, $2, $2)",
                &[&id, code],
            )
            .await
            .unwrap();
        client
            .execute(
                "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity) VALUES ($1, $2, $3, $4)",
                &[&uuid(), &id, &store, &(10 * (i as i32 + 1))],
            )
            .await
            .unwrap();
        products.push(id);
    }
    (url, client, store, products)
}

async fn mock_marketplace() -> MockMarketplace {
    MockMarketplace::start(
        MockConfig {
            accounts: vec![MockAccount::trendyol(SELLER, "ha-key", "ha-secret")],
            identical_window: Duration::from_secs(2),
            ..MockConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_after_a_kill_and_nothing_is_sent_twice() {
    let (url, client, store, products) = catalogue(SLOT).await;
    setup(&url, SLOT, SLOT).await;
    let mock = mock_marketplace().await;

    let addrs = free_addrs();
    let mut instances = Instances {
        children: addrs
            .iter()
            .map(|addr| Some(spawn(&url, *addr, &mock.base_url())))
            .collect(),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();

    // Exactly one streams; the slot is held by one walsender.
    let first = std::sync::Mutex::new(None);
    eventually(
        Duration::from_secs(30),
        "one instance streaming, the other standing by",
        || async {
            let found = leader(&http, addrs).await;
            *first.lock().unwrap() = found;
            found.is_some()
        },
    )
    .await;
    let first = first.into_inner().unwrap().unwrap();
    let second = 1 - first;
    assert_eq!(streaming_metric(&http, addrs[first]).await, Some(1));
    assert_eq!(streaming_metric(&http, addrs[second]).await, Some(0));
    let walsender: i32 = client
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&SLOT],
        )
        .await
        .expect("the slot is active")
        .get(0);

    // The first run's snapshot reaches the marketplace; wait until everything is settled so
    // the kill interrupts no request.
    wait_quantities(
        &mock,
        &[("HA-1", 10), ("HA-2", 20), ("HA-3", 30), ("HA-4", 40)],
    )
    .await;
    eventually(Duration::from_secs(20), "a settled queue", || {
        common::workload::queue_idle(&client)
    })
    .await;
    instances.assert_running(second);

    instances.kill(first);
    let killed_at = Instant::now();
    // Changes while nobody streams: an order, a sell-out, and two edits of one row.
    set_quantity(&client, products[0], store, 7).await;
    set_quantity(&client, products[1], store, 0).await;
    set_quantity(&client, products[2], store, 31).await;
    set_quantity(&client, products[2], store, 33).await;

    eventually(Duration::from_secs(15), "the standby to stream", || async {
        readyz(&http, addrs[second])
            .await
            .is_some_and(|r| r["streaming"] == true)
    })
    .await;
    let takeover = killed_at.elapsed();
    assert_eq!(streaming_metric(&http, addrs[second]).await, Some(1));
    let new_walsender: i32 = client
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&SLOT],
        )
        .await
        .expect("the slot is active again")
        .get(0);
    assert_ne!(new_walsender, walsender, "a new walsender streams the slot");

    wait_quantities(
        &mock,
        &[("HA-1", 7), ("HA-2", 0), ("HA-3", 33), ("HA-4", 40)],
    )
    .await;
    eventually(Duration::from_secs(20), "a settled queue", || {
        common::workload::queue_idle(&client)
    })
    .await;
    instances.assert_running(second);

    let requests = mock.requests();
    assert!(
        requests.iter().all(|r| r.status == 200),
        "every request accepted: {requests:#?}"
    );
    let unchanged: usize = requests.iter().map(|r| r.unchanged_items).sum();
    assert_eq!(unchanged, 0, "a quantity was sent twice: {requests:#?}");
    let pushed: usize = requests
        .iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.item_count)
        .sum();
    // 4 items at first, then HA-1, HA-2 and HA-3 (whose two edits may or may not coalesce).
    assert!(
        (7..=8).contains(&pushed),
        "items pushed: {pushed}: {requests:#?}"
    );
    println!("takeover after the kill: {takeover:?}");
    drop(instances);
    mock.shutdown().await;
}

/// The connection holding a store's dispatch lock dies while that store's push is held up at
/// the marketplace, with a second instance running. The cycle in flight still owns its claims
/// (its own connection lives), so the other instance does not send them again; the first
/// cycle sends no further request and records its outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_store_lock_mid_push_sends_nothing_twice() {
    const SLOT_FENCE: &str = "ha_fence";
    let (url, client, store, products) = catalogue(SLOT_FENCE).await;
    setup(&url, SLOT_FENCE, SLOT_FENCE).await;
    let mock = mock_marketplace().await;
    let addrs = free_addrs();
    // A request timeout longer than the latency below, so the held push is answered.
    let spawn_one = |addr: &SocketAddr| {
        let mut child = Command::new(binary());
        child
            .arg("run")
            .env_clear()
            .env("DATABASE_URL", &url)
            .env("STOCKSYNC_SLOT", SLOT_FENCE)
            .env("STOCKSYNC_PUBLICATION", SLOT_FENCE)
            .env("STOCKSYNC_HTTP_ADDR", addr.to_string())
            .env("STOCKSYNC_TRENDYOL_URL", mock.base_url())
            .env("STOCKSYNC_HEPSIBURADA_URL", mock.base_url())
            .env("STOCKSYNC_FLUSH_INTERVAL", "100ms")
            .env("STOCKSYNC_HEARTBEAT_INTERVAL", "0s")
            .env("STOCKSYNC_IDENTICAL_REQUEST_WINDOW", "2s")
            .env("STOCKSYNC_REQUEST_TIMEOUT", "30s")
            .env("STOCKSYNC_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        Some(child.spawn().expect("start stocksync run"))
    };
    let mut instances = Instances {
        children: addrs.iter().map(spawn_one).collect(),
    };
    wait_quantities(
        &mock,
        &[("HA-1", 10), ("HA-2", 20), ("HA-3", 30), ("HA-4", 40)],
    )
    .await;
    eventually(Duration::from_secs(20), "a settled queue", || {
        common::workload::queue_idle(&client)
    })
    .await;

    // Pushes now take 15 s: longer than any "stale claim" grace a dispatcher might give
    // (claims used to count as orphans after 5 s, looked for every 5 s).
    mock.set_faults(stocksync::mock::Faults {
        latency_ms: 15_000,
        scope: stocksync::mock::FaultScope::Push,
        ..stocksync::mock::Faults::default()
    });
    let pushes_before = mock
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    set_quantity(&client, products[0], store, 5).await;
    // The pair is marked in doubt just before its request leaves.
    eventually(Duration::from_secs(20), "the push in flight", || async {
        client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM stock_sync.listing_state l \
                   JOIN stock_sync.queue q ON q.product_id = l.product_id AND q.store_id = l.store_id \
                  WHERE l.store_id = $1 AND l.product_id = $2 AND l.in_doubt AND q.state = 'in_flight')",
                &[&store, &products[0]],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    let key = i64::from(stocksync::locks::store_key(store) as u32);
    let class = i64::from(stocksync::locks::STORE_CYCLE as u32);
    let terminated: bool = client
        .query_one(
            "SELECT pg_terminate_backend(pid) FROM pg_locks \
             WHERE locktype = 'advisory' AND classid = $1::bigint::oid AND objid = $2::bigint::oid \
               AND objsubid = 2 AND granted",
            &[&class, &key],
        )
        .await
        .expect("the store's lock is held by a dispatcher")
        .get(0);
    assert!(terminated);

    wait_quantities(&mock, &[("HA-1", 5)]).await;
    eventually(Duration::from_secs(30), "a settled queue", || {
        common::workload::queue_idle(&client)
    })
    .await;
    let pushes: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .skip(pushes_before)
        .collect();
    assert_eq!(pushes.len(), 1, "HA-1 was pushed once: {pushes:#?}");
    let (outcome, sent): (String, Option<i32>) = {
        let r = client
            .query_one(
                "SELECT outcome, sent_quantity FROM stock_sync.queue \
                 WHERE product_id = $1 AND store_id = $2 ORDER BY id DESC LIMIT 1",
                &[&products[0], &store],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((outcome.as_str(), sent), ("sent", Some(5)));
    for i in 0..2 {
        instances.assert_running(i);
    }
    drop(instances);
    mock.shutdown().await;
}
