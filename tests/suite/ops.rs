//! The operator commands through the real binary: `check`, `status --json`, `resync --store`
//! and `retry-failed` against a real database (no service running: each command works on
//! the database alone).

use crate::common;

use std::process::Output;

use common::*;
use serde_json::Value;
use tokio_postgres::Client;
use uuid::Uuid;

/// Runs `stocksync ARGS` with only the settings given here (nothing from the environment).
async fn stocksync(url: &str, slot: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(binary())
        .args(args)
        .env_clear()
        .env("DATABASE_URL", url)
        .env("STOCKSYNC_SLOT", slot)
        .env("STOCKSYNC_PUBLICATION", slot)
        .env("STOCKSYNC_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run the stocksync binary")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr)
    )
}

/// A database with the stock_sync setup done under `slot` (slot and publication share it).
async fn prepared(slot: &str) -> (String, Client) {
    let url = fresh_database(slot);
    setup(&url, slot, slot).await;
    let client = connect(&url).await;
    (url, client)
}

async fn store(client: &Client, name: &str, kind: &str) -> Uuid {
    let id = uuid();
    client
        .execute(
            "INSERT INTO stores (id, name, type, seller_id, api_key, api_secret) \
             VALUES ($1, $2, $3, 'seller', 'key', 'secret')",
            &[&id, &name, &kind],
        )
        .await
        .unwrap();
    id
}

async fn product(client: &Client, code: &str) -> Uuid {
    let id = uuid();
    client
        .execute(
            "INSERT INTO products (id, barcode, sku, name) VALUES ($1, $2, $2, $2)",
            &[&id, &code],
        )
        .await
        .unwrap();
    id
}

async fn list(client: &Client, product: Uuid, store: Uuid, sellable: i32) {
    client
        .execute(
            "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity) VALUES ($1, $2, $3, $4)",
            &[&uuid(), &product, &store, &sellable],
        )
        .await
        .unwrap();
}

/// A queue row in any state, as dispatch or capture would have left it. Returns its id.
async fn queue_row(
    client: &Client,
    product: Uuid,
    store: Uuid,
    state: &str,
    priority: i32,
    attempts: i32,
    last_error: Option<&str>,
) -> i64 {
    client
        .query_one(
            "INSERT INTO stock_sync.queue (product_id, store_id, reason, priority, state, attempts, \
             last_error, outcome, finished_at) \
             VALUES ($1, $2, 'STOCK_ADDED', $3, $4, $5, $6, \
                     CASE WHEN $4 = 'dead' THEN 'failed' END, CASE WHEN $4 = 'dead' THEN now() END) \
             RETURNING id",
            &[&product, &store, &priority, &state, &attempts, &last_error],
        )
        .await
        .unwrap()
        .get(0)
}

async fn pause(client: &Client, store: Uuid, reason: &str) {
    client
        .execute(
            "INSERT INTO stock_sync.store_state (store_id, paused_reason, paused_at, last_error) \
             VALUES ($1, $2, now(), $2)",
            &[&store, &reason],
        )
        .await
        .unwrap();
}

async fn paused_reason(client: &Client, store: Uuid) -> Option<String> {
    client
        .query_one(
            "SELECT paused_reason FROM stock_sync.store_state WHERE store_id = $1",
            &[&store],
        )
        .await
        .unwrap()
        .get(0)
}

/// (state, outcome, priority, reason, attempts) of every queue row of a pair, by id.
async fn pair_rows(
    client: &Client,
    product: Uuid,
    store: Uuid,
) -> Vec<(i64, String, Option<String>, i32, String, i32)> {
    client
        .query(
            "SELECT id, state, outcome, priority, reason, attempts FROM stock_sync.queue \
             WHERE product_id = $1 AND store_id = $2 ORDER BY id",
            &[&product, &store],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_a_good_setup_and_names_the_fix_for_a_missing_publication() {
    let slot = "ops_check";
    let (url, client) = prepared(slot).await;

    let ok = stocksync(&url, slot, &["check"]).await;
    assert_eq!(ok.status.code(), Some(0), "{}", describe(&ok));
    assert!(
        text(&ok.stdout).contains("configuration and database setup are valid"),
        "{}",
        describe(&ok)
    );

    client
        .batch_execute(&format!("DROP PUBLICATION {slot}"))
        .await
        .unwrap();
    let bad = stocksync(&url, slot, &["check"]).await;
    assert_eq!(
        bad.status.code(),
        Some(2),
        "a missing publication is a setup problem: {}",
        describe(&bad)
    );
    // The problem lines the operator reads (the rest of stderr is the log).
    let stderr = text(&bad.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("stocksync: "))
        .collect();
    assert_eq!(problems.len(), 1, "exactly one problem: {}", describe(&bad));
    let problem = problems[0];
    assert!(
        problem.contains(&format!("publication \"{slot}\" does not exist")),
        "names what is wrong: {problem}"
    );
    assert!(
        problem.contains("run `stocksync setup`"),
        "names the fix: {problem}"
    );
    assert!(
        !problem.trim_end_matches('.').contains(". "),
        "one sentence: {problem}"
    );
    assert!(text(&bad.stdout).is_empty(), "{}", describe(&bad));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_reports_slot_queue_per_store_pauses_and_dead_letters() {
    let slot = "ops_status";
    let (url, client) = prepared(slot).await;
    let ty = store(&client, "Ops Trendyol", "TRENDYOL").await;
    let hb = store(&client, "Ops Hepsiburada", "HEPSIBURADA").await;
    let a = product(&client, "OPS-A").await;
    let b = product(&client, "OPS-B").await;
    let c = product(&client, "OPS-C").await;
    queue_row(&client, a, ty, "pending", 70, 0, None).await;
    queue_row(&client, b, ty, "pending", 100, 0, None).await;
    queue_row(&client, c, hb, "pending", 80, 0, None).await;
    let sent = queue_row(&client, c, ty, "done", 80, 0, None).await;
    client
        .execute(
            "UPDATE stock_sync.queue SET outcome = 'sent', finished_at = now() WHERE id = $1",
            &[&sent],
        )
        .await
        .unwrap();
    queue_row(&client, a, hb, "dead", 70, 8, Some("barcode not found")).await;
    let reason = "credentials refused (401): fix the store's api_key/api_secret";
    pause(&client, hb, reason).await;

    let out = stocksync(&url, slot, &["status", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let status: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json is JSON ({e}): {}", describe(&out)));

    let slot_row = client
        .query_one(
            "SELECT confirmed_flush_lsn::text, restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    let s = &status["slot"];
    assert_eq!(s["name"], slot);
    assert_eq!(s["exists"], true);
    assert_eq!(s["active_pid"], Value::Null, "nobody streams");
    assert_eq!(
        s["confirmed_flush_lsn"].as_str(),
        slot_row.get::<_, Option<&str>>(0)
    );
    assert_eq!(
        s["restart_lsn"].as_str(),
        slot_row.get::<_, Option<&str>>(1)
    );
    assert!(s["wal_status"].is_string(), "{s}");
    assert!(status["server_lsn"].is_string(), "{status}");

    let stores = status["stores"].as_array().expect("stores");
    let find = |id: Uuid| {
        stores
            .iter()
            .find(|st| st["store_id"] == id.to_string())
            .unwrap_or_else(|| panic!("store {id} in {stores:#?}"))
    };
    let t = find(ty);
    assert_eq!(t["name"], "Ops Trendyol");
    assert_eq!(t["store_type"], "TRENDYOL");
    assert_eq!(t["pending"], 2);
    assert_eq!(t["dead"], 0);
    assert_eq!(t["sent_last_hour"], 1);
    assert_eq!(t["paused_reason"], Value::Null);
    assert!(t["oldest_pending_age_seconds"].as_f64().unwrap() >= 0.0);
    let h = find(hb);
    assert_eq!(h["name"], "Ops Hepsiburada");
    assert_eq!(h["pending"], 1);
    assert_eq!(h["dead"], 1);
    assert_eq!(h["paused_reason"], reason);
    assert_eq!(h["sent_last_hour"], 0);
    assert_eq!(status["pending_total"], 3);

    let dead = status["dead_letters"].as_array().expect("dead_letters");
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(dead[0]["store_id"], hb.to_string());
    assert_eq!(dead[0]["product_id"], a.to_string());
    assert_eq!(dead[0]["attempts"], 8);
    assert_eq!(dead[0]["last_error"], "barcode not found");

    // The human rendering says the same.
    let human = stocksync(&url, slot, &["status"]).await;
    assert_eq!(human.status.code(), Some(0), "{}", describe(&human));
    let human = text(&human.stdout);
    assert!(human.contains(&format!("PAUSED: {reason}")), "{human}");
    assert!(human.contains("pending entries: 3"), "{human}");
    assert!(human.contains("barcode not found"), "{human}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_of_one_store_enqueues_exactly_its_listed_pairs() {
    let slot = "ops_resync";
    let (url, client) = prepared(slot).await;
    let target = store(&client, "Resync target", "TRENDYOL").await;
    let other = store(&client, "Untouched", "TRENDYOL").await;
    let p: Vec<Uuid> = futures_util::future::join_all(
        ["RS-1", "RS-2", "RS-3", "RS-4"].map(|c| product(&client, c)),
    )
    .await;
    for product in &p[..3] {
        list(&client, *product, target, 5).await;
    }
    list(&client, p[0], other, 5).await;
    list(&client, p[3], other, 5).await;
    // An order was already waiting for one pair: it stays the only pending entry, with its
    // higher priority.
    let waiting = queue_row(&client, p[0], target, "pending", 100, 0, None).await;

    let out = stocksync(&url, slot, &["resync", "--store", &target.to_string()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        text(&out.stdout).contains("enqueued 3 listed (product, store) pairs"),
        "{}",
        describe(&out)
    );

    let mut pending: Vec<(Uuid, Uuid, String, i32)> = client
        .query(
            "SELECT product_id, store_id, reason, priority FROM stock_sync.queue WHERE state = 'pending'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    pending.sort();
    let mut want = vec![
        (p[0], target, "STOCK_ADDED".to_string(), 100),
        (p[1], target, "RESYNC".to_string(), 50),
        (p[2], target, "RESYNC".to_string(), 50),
    ];
    want.sort();
    assert_eq!(pending, want);
    let rows: i64 = client
        .query_one("SELECT count(*) FROM stock_sync.queue", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 3, "one entry per pair, the waiting one reused");
    assert_eq!(pair_rows(&client, p[0], target).await[0].0, waiting);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_revives_one_entry_per_pair_even_with_duplicate_dead_letters_and_lifts_pauses()
{
    let slot = "ops_retry";
    let (url, client) = prepared(slot).await;
    let ty = store(&client, "Retry Trendyol", "TRENDYOL").await;
    let hb = store(&client, "Retry Hepsiburada", "HEPSIBURADA").await;
    let p1 = product(&client, "RT-1").await;
    let p2 = product(&client, "RT-2").await;
    let p3 = product(&client, "RT-3").await;
    // p1 was dead-lettered three times in the Trendyol store (each a new row).
    for (priority, error) in [(70, "first"), (100, "second"), (80, "third")] {
        queue_row(&client, p1, ty, "dead", priority, 8, Some(error)).await;
    }
    // p2 has a dead letter and a newer pending entry already.
    queue_row(&client, p2, ty, "dead", 90, 8, Some("old failure")).await;
    let p2_pending = queue_row(&client, p2, ty, "pending", 70, 0, None).await;
    // p3 is dead in the other store, which is paused too.
    queue_row(&client, p3, hb, "dead", 80, 8, Some("hb failure")).await;
    pause(&client, ty, "credentials refused (401)").await;
    pause(&client, hb, "credentials missing: api_secret").await;

    // One store: only its dead letters and its pause.
    let out = stocksync(&url, slot, &["retry-failed", "--store", &ty.to_string()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        text(&out.stdout).contains("re-enqueued 2 dead-lettered"),
        "{}",
        describe(&out)
    );

    let p1_rows = pair_rows(&client, p1, ty).await;
    assert_eq!(p1_rows.len(), 4, "{p1_rows:#?}");
    for (_, state, outcome, ..) in &p1_rows[..3] {
        assert_eq!(
            (state.as_str(), outcome.as_deref()),
            ("done", Some("retried")),
            "{p1_rows:#?}"
        );
    }
    let (_, state, _, priority, reason, attempts) = &p1_rows[3];
    assert_eq!(
        (state.as_str(), *priority, reason.as_str(), *attempts),
        ("pending", 100, "RESYNC", 0),
        "one fresh entry with the highest priority of its dead letters: {p1_rows:#?}"
    );

    let p2_rows = pair_rows(&client, p2, ty).await;
    assert_eq!(
        p2_rows.len(),
        2,
        "no new entry next to the pending one: {p2_rows:#?}"
    );
    assert_eq!(
        (p2_rows[0].1.as_str(), p2_rows[0].2.as_deref()),
        ("done", Some("retried"))
    );
    assert_eq!(p2_rows[1].0, p2_pending);
    assert_eq!(p2_rows[1].1, "pending");
    assert_eq!(
        p2_rows[1].3, 90,
        "the pending entry takes the dead letter's priority"
    );

    assert_eq!(paused_reason(&client, ty).await, None, "pause lifted");
    assert_eq!(
        paused_reason(&client, hb).await.as_deref(),
        Some("credentials missing: api_secret"),
        "the other store is untouched"
    );
    assert_eq!(pair_rows(&client, p3, hb).await[0].1, "dead");

    // All stores.
    let out = stocksync(&url, slot, &["retry-failed"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        text(&out.stdout).contains("re-enqueued 1 dead-lettered"),
        "{}",
        describe(&out)
    );
    let p3_rows = pair_rows(&client, p3, hb).await;
    assert_eq!(p3_rows.len(), 2, "{p3_rows:#?}");
    assert_eq!(p3_rows[0].1, "done");
    assert_eq!(p3_rows[1].1, "pending");
    assert_eq!(paused_reason(&client, hb).await, None);

    // Nothing left to retry: a no-op that still succeeds.
    let out = stocksync(&url, slot, &["retry-failed"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(text(&out.stdout).contains("re-enqueued 0 dead-lettered"));
    let (dead, pending): (i64, i64) = {
        let r = client
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'dead'), count(*) FILTER (WHERE state = 'pending') FROM stock_sync.queue",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((dead, pending), (0, 3));
}

/// A slot that existed (there is a checkpoint) but is gone: `run` stops with exit code 3 and
/// says to run setup and resync, and does not recreate the slot (that would hide lost changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_with_exit_code_3_when_the_slot_is_gone() {
    let (url, client) = prepared("ops_lost").await;
    client
        .execute(
            "INSERT INTO stock_sync.checkpoint (slot_name, lsn) VALUES ('ops_lost', pg_current_wal_lsn())",
            &[],
        )
        .await
        .unwrap();
    client
        .execute("SELECT pg_drop_replication_slot('ops_lost')", &[])
        .await
        .unwrap();
    let mut command = tokio::process::Command::new(binary());
    command
        .arg("run")
        .env_clear()
        .env("DATABASE_URL", &url)
        .env("STOCKSYNC_SLOT", "ops_lost")
        .env("STOCKSYNC_PUBLICATION", "ops_lost")
        .env("STOCKSYNC_HTTP_ADDR", "127.0.0.1:0")
        .env("STOCKSYNC_LOG", "warn")
        .stdin(std::process::Stdio::null());
    let output = tokio::time::timeout(std::time::Duration::from_secs(30), command.output())
        .await
        .expect("run stops by itself within seconds")
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("stocksync setup") && stderr.contains("stocksync resync"),
        "{}",
        describe(&output)
    );
    let recreated: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'ops_lost'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(recreated, 0, "the slot must not be recreated silently");
}

/// The log reader going away (a pipe to a collector that died, `stocksync run | head`) must
/// not cost the ability to stop: log lines that cannot be written are dropped, and SIGTERM
/// still ends `run` cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_stops_on_sigterm_after_its_log_reader_went_away() {
    use tokio::io::AsyncBufReadExt;
    let (url, _client) = prepared("ops_closed_log").await;
    let mut child = tokio::process::Command::new(binary())
        .arg("run")
        .env_clear()
        .env("DATABASE_URL", &url)
        .env("STOCKSYNC_SLOT", "ops_closed_log")
        .env("STOCKSYNC_PUBLICATION", "ops_closed_log")
        .env("STOCKSYNC_HTTP_ADDR", "127.0.0.1:0")
        .env("STOCKSYNC_LOG", "debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("streaming") {
                return;
            }
        }
        panic!("stocksync ended before streaming");
    })
    .await
    .expect("streaming within 30 s");
    // Both ends of its output are gone now.
    drop(lines);
    drop(child.stdout.take());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let pid = child.id().expect("still running").to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), child.wait())
        .await
        .expect("run stops within 20 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "clean stop expected, got {status:?}");
}

/// From PostgreSQL 17 the slot is created with `failover = true` (and `--print-sql` says
/// so); `check` warns, without failing, when the slot would not survive a failover: before 17
/// always, from 17 while `synchronized_standby_slots` is empty. Runs on every version of the
/// CI matrix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_slots_are_created_where_the_server_has_them_and_check_warns() {
    let slot = "ops_failover";
    let url = fresh_database(slot);
    let client = connect(&url).await;
    let version: i32 = client
        .query_one("SHOW server_version_num", &[])
        .await
        .unwrap()
        .get::<_, String>(0)
        .parse()
        .unwrap();
    let printed = stocksync(&url, slot, &["setup", "--print-sql"]).await;
    assert!(printed.status.success(), "{}", describe(&printed));
    let sql = text(&printed.stdout);
    let has_failover_slots = version >= stocksync::ops::setup::FAILOVER_SLOTS_FROM;
    assert_eq!(
        sql.contains("'pgoutput', false, false, true)"),
        has_failover_slots,
        "{sql}"
    );
    setup(&url, slot, slot).await;
    if has_failover_slots {
        let failover: bool = client
            .query_one(
                "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get(0);
        assert!(failover, "the slot survives a failover");
    }
    let checked = stocksync(&url, slot, &["check"]).await;
    assert!(checked.status.success(), "{}", describe(&checked));
    let stderr = text(&checked.stderr);
    let expected = if has_failover_slots {
        "synchronized_standby_slots is empty"
    } else {
        "keeps logical replication slots on the primary only"
    };
    assert!(
        stderr.contains("warning:") && stderr.contains(expected),
        "{}",
        describe(&checked)
    );
}

/// `synchronous_standby_names = '*'` would make stocksync's own walsender a synchronous
/// standby of stocksync's commits (capture and the application hang): `check` refuses it,
/// naming the setting and the fix. A private cluster, because the setting is cluster-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_a_synchronous_standby_setting_that_would_hang_capture() {
    use stocksync::localpg::{ClusterOptions, LocalCluster};
    let cluster = LocalCluster::start(ClusterOptions::default()).expect("cluster");
    cluster.psql("postgres", "CREATE DATABASE shop").unwrap();
    cluster.psql("shop", APP_SCHEMA).unwrap();
    let url = cluster.url_for("postgres", "shop");
    let slot = "sync_standby";
    setup(&url, slot, slot).await;
    let before = stocksync(&url, slot, &["check"]).await;
    assert!(before.status.success(), "{}", describe(&before));
    // Set after setup: with no standby every commit would wait from now on.
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
        "SELECT pg_reload_conf()",
    ] {
        cluster.psql("postgres", sql).unwrap();
    }
    let client = connect(&url).await;
    eventually(
        std::time::Duration::from_secs(10),
        "the setting reloaded",
        || async {
            client
                .query_one("SHOW synchronous_standby_names", &[])
                .await
                .unwrap()
                .get::<_, String>(0)
                == "*"
        },
    )
    .await;
    let after = stocksync(&url, slot, &["check"]).await;
    assert_eq!(after.status.code(), Some(2), "{}", describe(&after));
    let stderr = text(&after.stderr);
    assert!(
        stderr.contains("synchronous_standby_names") && stderr.contains("hang"),
        "{}",
        describe(&after)
    );
}
