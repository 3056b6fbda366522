//! Proof of reliability: random workloads, kill -9, marketplace faults and bad data, each
//! ending with the convergence oracle (tests/suite/common/oracle.rs) agreeing with the mock
//! marketplace for every pair, and the mock having refused nothing stocksync could have
//! avoided. `STOCKSYNC_SOAK_SCALE=N` multiplies the workload (the soak run), and
//! `STOCKSYNC_TEST_SEED` replays a printed seed. The service streams large transactions
//! (`STOCKSYNC_STREAMING=on`, its default) unless the test run sets `STOCKSYNC_STREAMING`,
//! which every scenario then uses; the kill -9 scenario switches between the two protocols
//! at every restart otherwise.

use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::oracle::{avoidable_refusals, Oracle};
use common::workload::*;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stocksync::localpg::{ClusterOptions, LocalCluster};
use stocksync::mock::{Faults, MockMarketplace};
use tokio_postgres::Client;

struct Rig {
    url: String,
    client: Client,
    mock: MockMarketplace,
    service: Service,
}

/// A database with a random catalogue, setup done, the mock started, and the service
/// configured (not started).
async fn rig(prefix: &str, rng: &mut StdRng, extra: &[(&str, &str)]) -> (Rig, Arc<Catalogue>) {
    let url = fresh_database(prefix);
    let client = connect(&url).await;
    let catalogue = Arc::new(load_catalogue(&client, rng, 60, 12).await);
    setup(&url, prefix, prefix).await;
    (rig_on(url, client, prefix, extra).await, catalogue)
}

/// The mock and the (not started) service for a database that is set up already.
async fn rig_on(url: String, client: Client, prefix: &str, extra: &[(&str, &str)]) -> Rig {
    let mock = MockMarketplace::start(
        mock_config(Duration::from_secs(2)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let mut env: Vec<(String, String)> = [
        ("DATABASE_URL", url.as_str()),
        ("STOCKSYNC_SLOT", prefix),
        ("STOCKSYNC_PUBLICATION", prefix),
        ("STOCKSYNC_HTTP_ADDR", "127.0.0.1:0"),
        ("STOCKSYNC_TRENDYOL_URL", &mock.base_url()),
        ("STOCKSYNC_HEPSIBURADA_URL", &mock.base_url()),
        ("STOCKSYNC_HEPSIBURADA_USER_AGENT", "test_dev"),
        ("STOCKSYNC_FLUSH_INTERVAL", "100ms"),
        ("STOCKSYNC_IDENTICAL_REQUEST_WINDOW", "2s"),
        ("STOCKSYNC_HEARTBEAT_INTERVAL", "0s"),
        ("STOCKSYNC_REQUEST_TIMEOUT", "2s"),
        ("STOCKSYNC_LOG", "info,stocksync=debug,tokio_postgres=warn"),
        (
            "STOCKSYNC_STREAMING",
            forced_streaming().as_deref().unwrap_or("on"),
        ),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    let log = std::env::temp_dir().join(format!("stocksync-{prefix}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let service = Service::new(env, log);
    Rig {
        url,
        client,
        mock,
        service,
    }
}

/// Starts `count` workload clients of `transactions` each, pausing up to `pace_ms` between
/// transactions; client `i` uses seed `seed + 1 + i`.
fn spawn_clients(
    rig: &Rig,
    catalogue: &Arc<Catalogue>,
    seed: u64,
    count: u64,
    transactions: u64,
    pace_ms: u64,
) -> Vec<tokio::task::JoinHandle<WorkloadStats>> {
    (0..count)
        .map(|i| {
            tokio::spawn(run_client(
                rig.url.clone(),
                catalogue.clone(),
                seed + 1 + i,
                transactions,
                Duration::from_millis(pace_ms),
            ))
        })
        .collect()
}

/// Waits until the queue is idle and the oracle agrees with the mock; panics with the
/// differences, the seed and the service's log otherwise. Returns the pairs checked.
async fn converged(rig: &mut Rig, seed: u64, timeout: Duration) -> usize {
    let started = Instant::now();
    loop {
        if let Some(status) = rig.service.exited() {
            panic!(
                "seed {seed}: the service exited with {status}:\n{}",
                rig.service.log_tail(40)
            );
        }
        let idle = queue_idle(&rig.client).await;
        let timed_out = started.elapsed() > timeout;
        // Recomputing every quantity is the costly part of a poll: only when it can end it.
        if !idle && !timed_out {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let oracle = Oracle::load(&rig.client).await;
        let (checked, mismatches) = oracle.mismatches(&rig.mock);
        if idle && mismatches.is_empty() {
            return checked;
        }
        if timed_out {
            let queue = rig
                .client
                .query("SELECT state, outcome, count(*)::int FROM stock_sync.queue GROUP BY 1, 2 ORDER BY 1, 2", &[])
                .await
                .unwrap()
                .iter()
                .map(|r| format!("{}/{:?}={}", r.get::<_, String>(0), r.get::<_, Option<String>>(1), r.get::<_, i32>(2)))
                .collect::<Vec<_>>();
            let history = match mismatches.first().and_then(|m| Some((m.store, m.product?))) {
                Some((store, product)) => pair_history(&rig.client, store, product).await,
                None => String::new(),
            };
            panic!(
                "seed {seed}: not converged after {timeout:?} (idle: {idle}); {} of {checked} pairs differ, first: {:#?}\nqueue: {queue:?}\nfirst pair's history:\n{history}\nservice log:\n{}",
                mismatches.len(),
                &mismatches[..mismatches.len().min(10)],
                rig.service.log_tail(60)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn assert_no_secrets(rig: &Rig) {
    let log = std::fs::read_to_string(&rig.service.log).unwrap_or_default();
    assert!(!log.is_empty(), "the service wrote a log");
    for secret in secret_forms() {
        assert!(
            !log.contains(&secret),
            "a credential appears in the service's log"
        );
    }
}

/// No credential in any text column stocksync writes: every column of the API log, the
/// stores' pause reasons and errors, the queue's errors.
async fn assert_no_secrets_in_db(client: &Client) {
    for secret in secret_forms() {
        for (what, sql) in [
            (
                "the API log",
                "SELECT count(*) FROM stock_sync.api_log WHERE strpos(concat_ws(' ', provider, type, \
                 store_id, item_count, status_code, batch_id, request_body, response_body, error_message), $1) > 0",
            ),
            (
                "store_state",
                "SELECT count(*) FROM stock_sync.store_state \
                 WHERE strpos(concat_ws(' ', paused_reason, last_error, gated_reason, pause_kind, problem_kind), $1) > 0",
            ),
            (
                "the queue's errors",
                "SELECT count(*) FROM stock_sync.queue WHERE strpos(coalesce(last_error, ''), $1) > 0",
            ),
        ] {
            let n: i64 = client.query_one(sql, &[&secret]).await.unwrap().get(0);
            assert_eq!(n, 0, "a credential appears in {what}");
        }
    }
}

/// The product's own record of every request (written before it leaves) never shows more
/// than `limit` requests to one store and endpoint within `window`.
async fn assert_send_side_window(client: &Client, limit: usize, window: chrono::Duration) {
    let mut sent: std::collections::HashMap<
        (uuid::Uuid, String),
        Vec<chrono::DateTime<chrono::Utc>>,
    > = Default::default();
    for r in client
        .query(
            "SELECT store_id, endpoint, sent_at FROM stock_sync.sent_requests ORDER BY sent_at",
            &[],
        )
        .await
        .unwrap()
    {
        sent.entry((r.get(0), r.get(1))).or_default().push(r.get(2));
    }
    assert!(!sent.is_empty(), "requests were recorded");
    for ((store, endpoint), times) in sent {
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..].iter().take_while(|o| **o - *t < window).count();
            assert!(
                in_window <= limit,
                "{store} {endpoint}: {in_window} requests within {window} from {t}"
            );
        }
    }
}

/// Scenarios 1 and 2: several clients commit random transactions while the service is
/// SIGKILLed at random moments at least 20 times; it converges, and nothing was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_workload_under_kill_nine_converges() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut rig, catalogue) = rig("rel_kill", &mut rng, &[]).await;
    // Transactions over 64 kB of changes are streamed: the bulk client's always are, so
    // kills land in streamed transactions and in their commits too.
    set_logical_decoding_work_mem(&rig.client, &rig.url, "64kB").await;
    rig.service.start();
    let per_client = 300 * soak_scale();
    let clients = spawn_clients(&rig, &catalogue, seed, 3, per_client, 60);
    let bulk = tokio::spawn(bulk_client(rig.url.clone(), seed, 15 * soak_scale()));
    let mut kills = 0;
    while kills < 20 || clients.iter().any(|c| !c.is_finished()) || !bulk.is_finished() {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(150..900))).await;
        if let Some(status) = rig.service.exited() {
            panic!(
                "seed {seed}: the service exited by itself with {status}:\n{}",
                rig.service.log_tail(40)
            );
        }
        rig.service.kill9();
        kills += 1;
        if forced_streaming().is_none() {
            // Protocol 1 and 2 in turn: a restart may change it (upgrade, rollback, setting).
            let streaming = if kills % 2 == 0 { "on" } else { "off" };
            rig.service.set_env("STOCKSYNC_STREAMING", streaming);
        }
        rig.service.start();
    }
    let mut committed = bulk.await.unwrap();
    for c in clients {
        committed += c.await.unwrap().committed;
    }
    let checked = converged(&mut rig, seed, Duration::from_secs(120)).await;
    let refused = avoidable_refusals(&rig.mock);
    assert!(
        refused.is_empty(),
        "seed {seed}: avoidable refusals: {refused:#?}"
    );
    assert_no_secrets(&rig);
    assert_no_secrets_in_db(&rig.client).await;
    println!(
        "kill -9 soak: {committed} transactions, {kills} kills, {checked} pairs checked, 0 mismatches, {} requests",
        rig.mock.requests().len()
    );
    rig.service.kill9();
    rig.mock.shutdown().await;
}

/// `transactions` large transactions, one every second or so: every listing's sellable
/// quantity moves by a random amount (some are rolled back, some roll a savepoint back).
/// Returns those committed.
async fn bulk_client(url: String, seed: u64, transactions: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xb01c);
    let mut committed = 0;
    for _ in 0..transactions {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
        let client = match stocksync::db::DbConfig::from_url(&url)
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => c,
            Err(_) => continue,
        };
        let delta: i32 = rng.gen_range(-5..=5);
        let end = match rng.gen_range(0..4) {
            0 => "ROLLBACK;",
            1 => "ROLLBACK TO SAVEPOINT s; COMMIT;",
            _ => "COMMIT;",
        };
        let sql = format!(
            "BEGIN; SAVEPOINT s; \
             UPDATE product_stores SET sellable_quantity = sellable_quantity + ({delta}) \
             WHERE sellable_quantity BETWEEN 10 AND 1000; {end}"
        );
        if client.batch_execute(&sql).await.is_ok() && end != "ROLLBACK;" {
            committed += 1;
        }
    }
    committed
}

/// Scenario 4: 30% 500s, then a burst of 429 with Retry-After, then latency beyond the
/// client timeout, then connection resets; the workload goes on throughout. Everything
/// converges after the faults stop, and the requests stayed within the rate limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn marketplace_faults_converge_within_limits() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut rig, catalogue) = rig(
        "rel_faults",
        &mut rng,
        &[
            ("STOCKSYNC_REQUEST_TIMEOUT", "1s"),
            ("STOCKSYNC_RATE_LIMIT_REQUESTS", "8"),
            ("STOCKSYNC_RATE_LIMIT_WINDOW", "2s"),
        ],
    )
    .await;
    rig.service.start();
    let clients = spawn_clients(&rig, &catalogue, seed, 2, 200 * soak_scale(), 100);
    let phases = [
        Faults {
            error_rate: 0.3,
            ..Faults::default()
        },
        Faults {
            throttle_for_ms: Some(2500),
            retry_after_secs: Some(1),
            ..Faults::default()
        },
        Faults {
            latency_ms: 1500,
            ..Faults::default()
        },
        Faults {
            reset_rate: 0.5,
            ..Faults::default()
        },
        Faults {
            reset_rate: 0.3,
            reset_after_apply: true,
            ..Faults::default()
        },
    ];
    for faults in phases {
        rig.mock.set_faults(faults);
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    rig.mock.set_faults(Faults::default());
    for c in clients {
        c.await.unwrap();
    }
    let checked = converged(&mut rig, seed, Duration::from_secs(120)).await;
    let requests = rig.mock.requests();
    let faults = requests
        .iter()
        .filter(|r| r.note.as_deref().is_some_and(|n| n.starts_with("fault")))
        .count();
    assert!(faults >= 5, "the faults were exercised ({faults})");
    // The client-side limit (8 per 2 s per store and endpoint) held throughout, faults
    // included, by the product's send-side record of each request.
    assert_send_side_window(&rig.client, 8, chrono::Duration::milliseconds(2000)).await;
    let refused = avoidable_refusals(&rig.mock);
    assert!(
        refused.is_empty(),
        "seed {seed}: avoidable refusals: {refused:#?}"
    );
    println!(
        "faults: {faults} injected, {} requests, {checked} pairs checked, 0 mismatches",
        requests.len()
    );
    rig.service.kill9();
    rig.mock.shutdown().await;
}

/// Credentials appear nowhere an operator looks: `/metrics`, `/api/status`, `/api/log`, the
/// dashboard, and `stocksync status`.
async fn assert_no_secrets_in_outputs(rig: &Rig, http: &str) {
    let mut outputs = Vec::new();
    for path in ["/metrics", "/api/status", "/api/log", "/"] {
        let body = reqwest::get(format!("http://{http}{path}"))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .text()
            .await
            .unwrap();
        outputs.push((path.to_string(), body));
    }
    for args in [&["status"][..], &["status", "--json"][..]] {
        let out = std::process::Command::new(binary())
            .args(args)
            .envs(
                rig.service
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "stocksync {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        outputs.push((
            format!("stocksync {args:?}"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ));
    }
    assert!(
        outputs[0].1.contains("stocksync_requests_total"),
        "metrics served"
    );
    for (what, text) in outputs {
        for secret in secret_forms() {
            assert!(!text.contains(&secret), "a credential appears in {what}");
        }
    }
}

/// Scenario 6 (live accounts): a seller's first day with a real account, while the workload
/// runs. In sequence: the gateway answers 403 (an IP block), then 404 (a wrong path), then
/// 500, then 413, each body echoing the credentials it was sent; 429s with absurd reset
/// headers; upload status words nobody has seen, then in another case; a 401 that needs
/// `retry-failed`. After each phase everything converges; nothing refused was avoidable, and
/// no credential appears in the log, the database, `/metrics`, `/api/*`, the dashboard or
/// `stocksync status`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_account_faults_in_sequence_converge_and_leak_nothing() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let http = free_addr().to_string();
    let (mut rig, catalogue) = rig(
        "rel_live",
        &mut rng,
        &[
            ("STOCKSYNC_HTTP_ADDR", http.as_str()),
            ("STOCKSYNC_FORBIDDEN_BACKOFF", "1s"),
            ("STOCKSYNC_REQUEST_TIMEOUT", "2s"),
            // A 429 whose Retry-After is garbage waits one rate window: 2 s, not the
            // default 10 s, for each of the four such phases (the mock allows 50 in 10 s;
            // 8 in any 2 s is at most 40).
            ("STOCKSYNC_RATE_LIMIT_REQUESTS", "8"),
            ("STOCKSYNC_RATE_LIMIT_WINDOW", "2s"),
        ],
    )
    .await;
    rig.service.start();
    converged(&mut rig, seed, Duration::from_secs(120)).await;
    let echo = |status: u16| Faults {
        status: Some(status),
        status_for_ms: Some(2500),
        scope: stocksync::mock::FaultScope::Push,
        ..Faults::default()
    };
    let throttle = |header: &str| Faults {
        throttle_for_ms: Some(2000),
        retry_after_header: Some(header.to_string()),
        ..Faults::default()
    };
    let words = |done: &str| stocksync::mock::Behaviour {
        hepsiburada_user_agent: Some("test_dev".into()),
        upload_done_word: done.into(),
        ..stocksync::mock::Behaviour::default()
    };
    enum Phase {
        Faults(&'static str, Faults),
        Words(&'static str, stocksync::mock::Behaviour),
    }
    let phases = vec![
        Phase::Faults("403 block", echo(403)),
        Phase::Faults("404 wrong path", echo(404)),
        Phase::Faults("500", echo(500)),
        Phase::Faults("413", echo(413)),
        Phase::Faults("429 Retry-After 1e25", throttle("1e25")),
        Phase::Faults("429 Retry-After NaN", throttle("NaN")),
        Phase::Faults(
            "429 Retry-After in 9999",
            throttle("Fri, 31 Dec 9999 23:59:59 GMT"),
        ),
        Phase::Faults("429 Retry-After -5", throttle("-5")),
        Phase::Words("unknown upload word", words("Tamamlanmadı")),
        Phase::Words("COMPLETED_WITH_ERRORS", words("COMPLETED_WITH_ERRORS")),
        Phase::Faults("401", echo(401)),
    ];
    let mut transactions = 0;
    for (i, phase) in phases.into_iter().enumerate() {
        let clients = spawn_clients(
            &rig,
            &catalogue,
            seed + 100 * i as u64,
            2,
            40 * soak_scale(),
            60,
        );
        let name = match phase {
            Phase::Faults(name, faults) => {
                rig.mock.set_faults(faults);
                tokio::time::sleep(Duration::from_millis(2500)).await;
                rig.mock.set_faults(Faults::default());
                name
            }
            Phase::Words(name, behaviour) => {
                rig.mock.set_behaviour(behaviour);
                tokio::time::sleep(Duration::from_millis(2500)).await;
                // Back to production's word: uploads pending on an unknown word now finish.
                rig.mock.set_behaviour(words("Done"));
                name
            }
        };
        for c in clients {
            transactions += c.await.unwrap().committed;
        }
        if name == "401" {
            // Refused credentials wait for a person: the operator runs retry-failed.
            let mut admin = connect(&rig.url).await;
            stocksync::ops::resync::retry_failed(&mut admin, None)
                .await
                .unwrap();
        }
        let checked = converged(&mut rig, seed, Duration::from_secs(120)).await;
        println!("live account, {name}: converged, {checked} pairs checked");
    }
    let requests = rig.mock.requests();
    let injected = requests
        .iter()
        .filter(|r| r.note.as_deref().is_some_and(|n| n.starts_with("fault")))
        .count();
    assert!(injected >= 10, "the faults were exercised ({injected})");
    let dead: i64 = rig
        .client
        .query_one(
            "SELECT count(*) FROM stock_sync.queue WHERE state = 'dead'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 0, "no store-level answer dead-lettered an item");
    let refused = avoidable_refusals(&rig.mock);
    assert!(
        refused.is_empty(),
        "seed {seed}: avoidable refusals: {refused:#?}"
    );
    assert_no_secrets(&rig);
    assert_no_secrets_in_db(&rig.client).await;
    assert_no_secrets_in_outputs(&rig, &http).await;
    println!(
        "live account: {transactions} transactions, {injected} injected faults, {} requests, 0 mismatches, nothing leaked",
        requests.len()
    );
    rig.service.kill9();
    rig.mock.shutdown().await;
}

/// Scenario 5: bad rows are reported specifically and never block the good ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_data_is_reported_and_blocks_nothing() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let http = free_addr().to_string();
    let (mut rig, catalogue) = rig(
        "rel_bad",
        &mut rng,
        &[("STOCKSYNC_HTTP_ADDR", http.as_str())],
    )
    .await;
    let c = &rig.client;
    let ty = catalogue.stores[0].id;
    let hb = catalogue.stores[2].id;
    let id = || uuid();
    let (negative, huge, no_barcode, zero_set, cycle_a, cycle_b, missing_component_set, long_code) =
        (id(), id(), id(), id(), id(), id(), id(), id());
    let long_barcode: String = format!("ÇĞİÖŞÜ-{}", "x".repeat(110));
    let statements: Vec<(&str, Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>)> = vec![
        ("INSERT INTO products (id, barcode, sku, name, product_type) VALUES ($1, 'NEG-1', 'NEG-1', 'Eksi', 'SIMPLE')", vec![Box::new(negative)]),
        ("INSERT INTO products (id, barcode, sku, name, product_type) VALUES ($1, 'HUGE-1', 'HUGE-1', 'Çok', 'SIMPLE')", vec![Box::new(huge)]),
        ("INSERT INTO products (id, barcode, sku, name, product_type) VALUES ($1, NULL, '', 'Barkodsuz', 'SIMPLE')", vec![Box::new(no_barcode)]),
        ("INSERT INTO products (id, barcode, sku, name, product_type) VALUES ($1, 'ZERO-SET', 'ZERO-SET', 'Sıfır', 'SET')", vec![Box::new(zero_set)]),
        ("INSERT INTO products (id, barcode, sku, name, product_type) VALUES ($1, 'CYC-A', 'CYC-A', 'Döngü A', 'SET')", vec![Box::new(cycle_a)]),
        ("INSERT INTO products (id, barcode, sku, name, product_type) VALUES ($1, 'CYC-B', 'CYC-B', 'Döngü B', 'SET')", vec![Box::new(cycle_b)]),
        ("INSERT INTO products (id, barcode, sku, name, product_type) VALUES ($1, 'MISS-SET', 'MISS-SET', 'Eksik', 'SET')", vec![Box::new(missing_component_set)]),
        ("INSERT INTO products (id, barcode, sku, name, product_type) VALUES ($1, $2, $2, 'Uzun barkod ğüşiöç', 'SIMPLE')", vec![Box::new(long_code), Box::new(long_barcode.clone())]),
    ];
    for (sql, params) in &statements {
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        c.execute(*sql, &refs).await.unwrap();
    }
    let item = "INSERT INTO product_set_items (id, set_product_id, component_product_id, quantity) VALUES ($1, $2, $3, $4)";
    let simple = catalogue.simple[0];
    for (set, component, q) in [
        (zero_set, simple, 0i32),
        (zero_set, catalogue.simple[1], 1),
        (cycle_a, cycle_b, 1),
        (cycle_b, cycle_a, 1),
        (cycle_b, simple, 1),
        (missing_component_set, negative, 1),
        (missing_component_set, huge, 1),
    ] {
        c.execute(item, &[&id(), &set, &component, &q])
            .await
            .unwrap();
    }
    let listing = "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity, committed_quantity) VALUES ($1, $2, $3, $4, 0) ON CONFLICT (product_id, store_id) DO UPDATE SET sellable_quantity = EXCLUDED.sellable_quantity";
    for store in [ty, hb] {
        for (product, q) in [
            (negative, -7i32),
            (huge, 50_000),
            (no_barcode, 5),
            (zero_set, 0),
            (cycle_a, 0),
            (cycle_b, 0),
            (missing_component_set, 0),
            (long_code, 12),
            (simple, 40),
            (catalogue.simple[1], 40),
        ] {
            c.execute(listing, &[&id(), &product, &store, &q])
                .await
                .unwrap();
        }
    }
    // `huge` is listed only in Trendyol: the set's component is missing in Hepsiburada.
    c.execute(
        "DELETE FROM product_stores WHERE product_id = $1 AND store_id = $2",
        &[&huge, &hb],
    )
    .await
    .unwrap();
    // A listing of a product that does not exist, a store with NULL credentials.
    let ghost = id();
    c.execute(listing, &[&id(), &ghost, &ty, &3i32])
        .await
        .unwrap();
    let no_creds = id();
    c.execute(
        "INSERT INTO stores (id, name, type, is_active, send_stock, seller_id, api_key, api_secret) VALUES ($1, 'Keyless', 'TRENDYOL', true, true, '3005', NULL, NULL)",
        &[&no_creds],
    )
    .await
    .unwrap();
    c.execute(listing, &[&id(), &simple, &no_creds, &9i32])
        .await
        .unwrap();

    rig.service.start();
    let checked = converged(&mut rig, seed, Duration::from_secs(60)).await;
    let (c, mock) = (&rig.client, &rig.mock);
    assert_eq!(
        mock.quantity("3001", "NEG-1"),
        Some(0),
        "negative sellable is 0"
    );
    assert_eq!(mock.quantity("3001", "HUGE-1"), Some(20_000), "clamped");
    assert_eq!(mock.quantity("3001", "ZERO-SET"), Some(0));
    assert_eq!(mock.quantity("3001", "CYC-A"), Some(0));
    assert_eq!(mock.quantity("3001", "CYC-B"), Some(0));
    assert_eq!(
        mock.quantity("3001", "MISS-SET"),
        Some(0),
        "min(0 [negative], 20000) = 0"
    );
    assert_eq!(
        mock.quantity("hb-merchant-1", "MISS-SET"),
        Some(0),
        "a component missing in the store counts 0"
    );
    assert_eq!(
        mock.quantity("3001", &long_barcode),
        Some(12),
        "long non-ASCII barcodes go through"
    );
    assert!(
        mock.requests()
            .iter()
            .all(|r| !matches!(r.seller_id.as_deref(), Some("3005" | "3009" | "n11"))),
        "no requests for stores without credentials, inactive or of a foreign type"
    );

    // The reports name the rows.
    let problems: Vec<String> = c
        .query(
            "SELECT error_message FROM stock_sync.api_log WHERE type = 'STOCK_PROBLEM'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (what, product) in [
        ("no barcode", no_barcode),
        ("zero quantity", zero_set),
        ("cycle", cycle_a),
        ("cycle", cycle_b),
        ("missing product", ghost),
    ] {
        assert!(
            problems.iter().any(|p| p.contains(&product.to_string())),
            "the {what} problem names {product}: {problems:#?}"
        );
    }
    let paused: Option<String> = c
        .query_opt(
            "SELECT paused_reason FROM stock_sync.store_state WHERE store_id = $1",
            &[&no_creds],
        )
        .await
        .unwrap()
        .and_then(|r| r.get(0));
    assert!(
        paused
            .as_deref()
            .is_some_and(|p| p.contains("credentials missing: stores.")),
        "store without credentials paused with a reason: {paused:?}"
    );
    let foreign: i64 = c
        .query_one("SELECT count(*) FROM stock_sync.queue WHERE store_id = $1 AND outcome = 'store_type_ignored'", &[&catalogue.stores[4].id])
        .await
        .unwrap()
        .get(0);
    assert!(
        foreign > 0,
        "the foreign store's entries are closed with a reason"
    );
    let refused = avoidable_refusals(mock);
    assert!(refused.is_empty(), "avoidable refusals: {refused:#?}");
    assert_no_secrets(&rig);
    assert_no_secrets_in_db(c).await;
    assert_no_secrets_in_outputs(&rig, &http).await;
    println!("bad data: {checked} pairs checked, 0 mismatches");
    rig.service.kill9();
    rig.mock.shutdown().await;
}

/// Scenario 3: PostgreSQL is restarted twice (fast, then immediate) during the workload; the
/// service reconnects (capture and dispatch) and converges. Runs on its own cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_restarts_during_workload_converge() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let cluster = LocalCluster::start(ClusterOptions::default()).expect("private cluster");
    cluster
        .psql("postgres", "CREATE DATABASE restarts")
        .unwrap();
    cluster.psql("restarts", APP_SCHEMA).unwrap();
    let url = cluster.url_for("postgres", "restarts");
    let client = connect(&url).await;
    let catalogue = Arc::new(load_catalogue(&client, &mut rng, 60, 12).await);
    setup(&url, "restarts", "restarts").await;
    let mut rig = rig_on(url, client, "restarts", &[]).await;
    rig.service.start();
    let clients = spawn_clients(&rig, &catalogue, seed, 2, 200 * soak_scale(), 40);
    for mode in ["fast", "immediate"] {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1500..3000))).await;
        tokio::task::block_in_place(|| cluster.restart(mode)).expect("restart PostgreSQL");
    }
    let mut stats = WorkloadStats::default();
    for c in clients {
        let s = c.await.unwrap();
        stats.committed += s.committed;
        stats.failed += s.failed;
    }
    rig.client = connect(&rig.url).await;
    let checked = converged(&mut rig, seed, Duration::from_secs(120)).await;
    let refused = avoidable_refusals(&rig.mock);
    assert!(
        refused.is_empty(),
        "seed {seed}: avoidable refusals: {refused:#?}"
    );
    println!(
        "database restarts: 2 restarts, {} transactions ({} failed by the restarts), {checked} pairs checked, 0 mismatches",
        stats.committed, stats.failed
    );
    rig.service.kill9();
    rig.mock.shutdown().await;
}

/// Scenario 7: one UPDATE of every `product_stores` row (40,000 here; 400,000 with
/// STOCKSYNC_SOAK_SCALE=10) converges, and the service's peak memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_transaction_converges_with_bounded_memory() {
    let rows = 40_000 * soak_scale() as i64;
    let products = rows / 2;
    let url = fresh_database("rel_large");
    let client = connect(&url).await;
    client
        .batch_execute(&format!(
            "INSERT INTO stores (id, name, type, is_active, send_stock, seller_id, api_key, api_secret) VALUES
               ('00000000-0000-4000-8000-000000000001', 'Trendyol A', 'TRENDYOL', true, true, '3001', '{k}', '{s}'),
               ('00000000-0000-4000-8000-000000000003', 'Hepsiburada', 'HEPSIBURADA', true, true, 'hb-merchant-1', NULL, '{h}');
             INSERT INTO products (id, barcode, sku, name, product_type)
               SELECT gen_random_uuid(), 'BC-' || n, 'SKU-' || n, 'Ürün ' || n, 'SIMPLE' FROM generate_series(1, {products}) n;
             INSERT INTO product_stores (id, product_id, store_id, sellable_quantity, committed_quantity)
               SELECT gen_random_uuid(), p.id, s.id, 10, 0 FROM products p CROSS JOIN stores s;",
            k = SECRETS[0],
            s = SECRETS[1],
            h = SECRETS[2],
        ))
        .await
        .unwrap();
    // The server streams anything over 1 MB of changes: this transaction is streamed (when
    // streaming is on) and, like every transaction capture writes for it, never spilled.
    set_logical_decoding_work_mem(&client, &url, "1MB").await;
    setup(&url, "rel_large", "rel_large").await;
    let mut rig = rig_on(url, client, "rel_large", &[("STOCKSYNC_LOG", "info")]).await;
    rig.service.start();
    converged(&mut rig, 0, Duration::from_secs(300)).await;
    let (spilled, streamed) = slot_stats(&rig.client, "rel_large").await;
    let updated = rig
        .client
        .execute(
            "UPDATE product_stores SET sellable_quantity = sellable_quantity + 7",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(updated as i64, rows);
    let checked = converged(&mut rig, 0, Duration::from_secs(300)).await;
    assert_eq!(checked as i64, rows);
    if forced_streaming().as_deref() != Some("off") {
        let (spilled_after, streamed_after) = slot_stats(&rig.client, "rel_large").await;
        assert!(streamed_after > streamed, "the transaction was streamed");
        assert_eq!(
            spilled_after, spilled,
            "the server spilled changes to disk for the slot"
        );
    }
    let peak_kib = rig.service.peak_rss_kib().expect("VmHWM of the service");
    // A memory bound holds for the release build operators run (the benchmark measures it
    // at full scale); a debug build only reports it.
    if !cfg!(debug_assertions) {
        assert!(
            peak_kib < 256 * 1024,
            "peak RSS {peak_kib} KiB for a {rows}-row transaction"
        );
    }
    println!(
        "large transaction: {rows} rows converged, service peak RSS {} MiB",
        peak_kib / 1024
    );
    rig.service.kill9();
    rig.mock.shutdown().await;
}

/// The server's spill bytes and streamed transactions for `slot`.
async fn slot_stats(client: &Client, slot: &str) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT spill_bytes, stream_txns FROM pg_stat_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Security: the role and grants the README tells DBAs to create are enough to run setup and
/// the pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_privilege_role_from_the_readme_runs_the_pipeline() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("```sql\nCREATE ROLE stocksync")
        .expect("README has the role SQL");
    let block = &readme[start + 7..];
    let sql = &block[..block.find("```").unwrap()];
    let url = fresh_database("rel_role");
    let database = url.rsplit('/').next().unwrap().to_string();
    cluster()
        .psql(&database, &sql.replace(":'password'", "'role-pw'"))
        .expect("the README's SQL runs");
    let admin = connect(&url).await;
    let mut rng = StdRng::seed_from_u64(1);
    let catalogue = load_catalogue(&admin, &mut rng, 20, 4).await;
    let role_url = url.replacen("postgres@", "stocksync:role-pw@", 1);
    assert_ne!(role_url, url, "URL has the user part to replace: {url}");
    let setup = std::process::Command::new(binary())
        .args(["setup"])
        .env("DATABASE_URL", &role_url)
        .env("STOCKSYNC_SLOT", "rel_role")
        .env("STOCKSYNC_PUBLICATION", "stock_sync")
        .output()
        .unwrap();
    assert!(
        setup.status.success(),
        "setup as the least-privilege role: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let mut rig = rig_on(
        role_url,
        admin,
        "rel_role",
        &[
            ("STOCKSYNC_PUBLICATION", "stock_sync"),
            ("STOCKSYNC_HEARTBEAT_INTERVAL", "1s"),
        ],
    )
    .await;
    rig.service.start();
    converged(&mut rig, 1, Duration::from_secs(60)).await;
    let product = catalogue.simple[0];
    rig.client
        .execute(
            "UPDATE product_stores SET sellable_quantity = 77 WHERE product_id = $1",
            &[&product],
        )
        .await
        .unwrap();
    let checked = converged(&mut rig, 1, Duration::from_secs(60)).await;
    let log = std::fs::read_to_string(&rig.service.log).unwrap_or_default();
    assert!(
        !log.contains("permission denied"),
        "no permission errors:\n{}",
        rig.service.log_tail(30)
    );
    println!("least privilege: {checked} pairs checked, 0 mismatches");
    rig.service.kill9();
    rig.mock.shutdown().await;
}

/// Orders the marketplace applies before the database imports them, while the random
/// workload runs and the periodic audit repairs every couple of seconds. Quiet products
/// (listed in the three active stores, touched by nothing but the "order import") take
/// orders at the mock: each listing drops by one there at once, and the database learns of
/// it only after a full audit of the store has read it lower. Until the import no listing is
/// pushed above what the database says after it (the mock still shows the ordered figure,
/// and no queue entry for the pair was made in between): the difference was held back, not
/// repaired. After the imports everything converges, and every held-back sighting is
/// forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_the_marketplace_applied_first_are_never_pushed_over() {
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let prefix = "rel_orders";
    let url = fresh_database(prefix);
    let client = connect(&url).await;
    let catalogue = Arc::new(load_catalogue(&client, &mut rng, 60, 12).await);
    let stores: Vec<(uuid::Uuid, &str, stocksync::mock::Marketplace)> = catalogue
        .stores
        .iter()
        .filter(|s| s.active && (s.kind == "TRENDYOL" || s.kind == "HEPSIBURADA"))
        .map(|s| {
            let marketplace = if s.kind == "TRENDYOL" {
                stocksync::mock::Marketplace::Trendyol
            } else {
                stocksync::mock::Marketplace::Hepsiburada
            };
            (s.id, s.seller_id, marketplace)
        })
        .collect();
    assert_eq!(stores.len(), 3);
    // Quiet products ORD-i (barcode and sku), sellable 20 in every active marketplace store.
    let quiet: Vec<uuid::Uuid> = (0..4).map(|_| uuid()).collect();
    let keys: Vec<String> = (0..quiet.len()).map(|i| format!("ORD-{i}")).collect();
    client
        .execute(
            "INSERT INTO products (id, barcode, sku, name) SELECT p, k, k, 'quiet' FROM unnest($1::uuid[], $2::text[]) AS u(p, k)",
            &[&quiet, &keys],
        )
        .await
        .unwrap();
    for (store, _, _) in &stores {
        client
            .execute(
                "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity) \
                 SELECT gen_random_uuid(), p, $2, 20 FROM unnest($1::uuid[]) AS p",
                &[&quiet, store],
            )
            .await
            .unwrap();
    }
    setup(&url, prefix, prefix).await;
    let mut rig = rig_on(
        url,
        client,
        prefix,
        &[
            ("STOCKSYNC_RECONCILE_INTERVAL", "2s"),
            ("STOCKSYNC_RECONCILE_FIX", "true"),
            // Far longer than any import below takes: nothing is confirmed while waiting.
            ("STOCKSYNC_RECONCILE_CONFIRM_AFTER", "10m"),
        ],
    )
    .await;
    rig.service.start();
    let shown = |rig: &Rig, marketplace, seller: &str, key: &str| {
        let kept: String = key.chars().filter(|c| !c.is_whitespace()).collect();
        rig.mock.quantity_in(marketplace, seller, &kept)
    };
    eventually(
        Duration::from_secs(120),
        "the quiet listings are delivered",
        || async {
            stores
                .iter()
                .all(|(_, seller, m)| keys.iter().all(|k| shown(&rig, *m, seller, k).is_some()))
                && queue_idle(&rig.client).await
        },
    )
    .await;

    let mut initial = std::collections::HashMap::new();
    for (_, seller, m) in &stores {
        for key in &keys {
            initial.insert(
                (*seller, key.clone()),
                shown(&rig, *m, seller, key).unwrap(),
            );
        }
    }
    let per_client = 150 * soak_scale();
    let clients = spawn_clients(&rig, &catalogue, seed, 3, per_client, 60);
    let mut orders = 0;
    for round in 0..2 {
        // One order per quiet listing, on the marketplace's side.
        let placed_at: chrono::DateTime<chrono::Utc> = rig
            .client
            .query_one("SELECT clock_timestamp()", &[])
            .await
            .unwrap()
            .get(0);
        let mut expected = Vec::new();
        for (store, seller, m) in &stores {
            for (product, key) in quiet.iter().zip(&keys) {
                let left = rig
                    .mock
                    .order(*m, seller, key, 1)
                    .unwrap_or_else(|| panic!("{seller} lists {key}"));
                orders += 1;
                expected.push((*store, *seller, *m, *product, key.clone(), left));
            }
        }
        // The database learns of the orders only after a full audit of each store has read
        // the listings lower (and, repairs on, has done whatever it would do with them).
        for (store, _, _) in &stores {
            eventually(
                Duration::from_secs(120),
                &format!("round {round}: an audit of {store} after the orders"),
                || async {
                    rig.client
                        .query_one(
                            "SELECT EXISTS (SELECT 1 FROM stock_sync.reconcile_runs \
                             WHERE store_id = $1 AND state = 'done' AND started_at > $2)",
                            &[store, &placed_at],
                        )
                        .await
                        .unwrap()
                        .get::<_, bool>(0)
                },
            )
            .await;
        }
        // Nothing was pushed over the orders: the mock shows what the orders left, and no
        // queue entry for a quiet pair was made since they were placed.
        for (store, seller, m, product, key, left) in &expected {
            assert_eq!(
                shown(&rig, *m, seller, key),
                Some(*left),
                "seed {seed}: {seller}/{key} was pushed over an order not imported yet"
            );
            let entries: i64 = rig
                .client
                .query_one(
                    "SELECT count(*) FROM stock_sync.queue \
                     WHERE store_id = $1 AND product_id = $2 AND enqueued_at >= $3",
                    &[store, product, &placed_at],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(
                entries,
                0,
                "seed {seed}: {seller}/{key} was repaired before its order was imported:\n{}",
                pair_history(&rig.client, *store, *product).await
            );
        }
        // The import, delivered before the next orders (a push of it landing after them
        // would be dispatch's, not reconciliation's).
        let imported_at: chrono::DateTime<chrono::Utc> = rig
            .client
            .query_one("SELECT clock_timestamp()", &[])
            .await
            .unwrap()
            .get(0);
        rig.client
            .execute(
                "UPDATE product_stores SET sellable_quantity = sellable_quantity - 1 \
                 WHERE product_id = ANY($1::uuid[])",
                &[&quiet],
            )
            .await
            .unwrap();
        let store_ids: Vec<uuid::Uuid> = stores.iter().map(|s| s.0).collect();
        eventually(
            Duration::from_secs(120),
            &format!("round {round}: the import is delivered"),
            || async {
                rig.client
                    .query_one(
                        "SELECT count(DISTINCT (store_id, product_id)) = $3 \
                                AND NOT EXISTS (SELECT 1 FROM stock_sync.queue \
                                    WHERE product_id = ANY($1::uuid[]) AND state <> 'done') \
                         FROM stock_sync.queue WHERE product_id = ANY($1::uuid[]) \
                           AND store_id = ANY($2::uuid[]) AND state = 'done' AND enqueued_at >= $4",
                        &[
                            &quiet,
                            &store_ids,
                            &((quiet.len() * stores.len()) as i64),
                            &imported_at,
                        ],
                    )
                    .await
                    .unwrap()
                    .get::<_, bool>(0)
            },
        )
        .await;
    }
    let held: i64 = rig
        .client
        .query_one(
            "SELECT COALESCE(sum(held_back), 0)::bigint FROM stock_sync.reconcile_runs",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(held > 0, "seed {seed}: the audits held the orders back");
    let mut committed = 0;
    for c in clients {
        committed += c.await.unwrap().committed;
    }
    let checked = converged(&mut rig, seed, Duration::from_secs(120)).await;
    for (_, seller, m) in &stores {
        for key in &keys {
            let before = initial[&(*seller, key.clone())];
            assert_eq!(
                shown(&rig, *m, seller, key),
                Some(before - 2),
                "{seller}/{key}: two orders, both imported"
            );
        }
    }
    eventually(
        Duration::from_secs(120),
        "every held-back sighting is forgotten once the imports agree",
        || async {
            rig.client
                .query_one("SELECT count(*) FROM stock_sync.reconcile_held", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 0
        },
    )
    .await;
    let refused = avoidable_refusals(&rig.mock);
    assert!(
        refused.is_empty(),
        "seed {seed}: avoidable refusals: {refused:#?}"
    );
    println!(
        "orders first: {committed} transactions, {orders} orders, {held} held back, {checked} pairs checked, 0 mismatches"
    );
    rig.service.kill9();
    rig.mock.shutdown().await;
}
