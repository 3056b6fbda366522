//! Errors by kind, not by message text: slot loss from the slot's state and SQLSTATE on a
//! server whose messages are German (`lc_messages = de_DE.UTF-8`), and `stocksync run`
//! stopping with exit code 2 and one sentence on permanent refusals (at start and while
//! running) while waiting out a database it cannot reach.

use crate::common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use stocksync::capture::{self, CaptureError, CaptureHealth, CaptureSettings};
use stocksync::db::DbConfig;
use stocksync::localpg::{ClusterOptions, LocalCluster};
use stocksync::replication::stream::{self, StreamError, StreamSettings};
use stocksync::replication::wire::WireError;
use stocksync::replication::Lsn;
use tokio_util::sync::CancellationToken;

const LOCALE: &str = "de_DE.UTF-8";

/// A cluster speaking German that keeps at most 1 MB of WAL for slots.
fn german_cluster() -> LocalCluster {
    let locales = std::process::Command::new("locale")
        .arg("-a")
        .output()
        .expect("locale -a");
    let locales = String::from_utf8_lossy(&locales.stdout).to_lowercase();
    assert!(
        locales.contains("de_de.utf8"),
        "the {LOCALE} locale is missing: `apt-get install locales` and enable it in /etc/locale.gen \
         (.ci/run does both)"
    );
    LocalCluster::start(ClusterOptions {
        settings: vec![
            ("lc_messages".into(), format!("'{LOCALE}'")),
            ("max_slot_wal_keep_size".into(), "'1MB'".into()),
            ("max_wal_size".into(), "'32MB'".into()),
            ("min_wal_size".into(), "'32MB'".into()),
        ],
        ..ClusterOptions::default()
    })
    .expect("cluster")
}

#[tokio::test]
async fn slot_loss_is_recognised_by_state_and_sqlstate_in_german() {
    let cluster = german_cluster();
    cluster.psql("postgres", "CREATE DATABASE shop").unwrap();
    cluster.psql("shop", APP_SCHEMA).unwrap();
    let url = cluster.url_for("postgres", "shop");
    setup(&url, "lost_slot", "lost_slot").await;
    // Move WAL on until the server invalidates the idle slot.
    let client = connect(&url).await;
    client
        .batch_execute("CREATE TABLE filler (x int)")
        .await
        .unwrap();
    let mut lost = false;
    for _ in 0..40 {
        client
            .batch_execute("INSERT INTO filler VALUES (1); SELECT pg_switch_wal(); CHECKPOINT;")
            .await
            .unwrap();
        let state = capture::slot_state(&client, "lost_slot")
            .await
            .unwrap()
            .unwrap();
        if state.is_invalidated() {
            lost = true;
            break;
        }
    }
    assert!(lost, "the slot never became lost");

    // START_REPLICATION answers in German with SQLSTATE 55000; the slot's state says lost.
    let db = DbConfig::from_url(&url).unwrap();
    let err = stream::open(
        &db,
        &StreamSettings {
            slot: "lost_slot".into(),
            publication: "lost_slot".into(),
            start: Lsn::ZERO,
            streaming: true,
            status_interval: Duration::from_secs(1),
            channel_capacity: 16,
        },
    )
    .await
    .err()
    .expect("a lost slot cannot stream");
    let StreamError::Wire(WireError::Server { code, message, .. }) = &err else {
        panic!("expected a server error, got {err}");
    };
    assert_eq!(code, "55000");
    assert!(
        !message.contains("can no longer get changes"),
        "the server should speak German: {message}"
    );
    let classified = capture::open_failure(err, "lost_slot", &client).await;
    assert!(
        matches!(classified, CaptureError::SlotLost { .. }) && classified.is_slot_loss(),
        "{classified}"
    );

    // Capture itself stops with the slot loss.
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        capture::run(
            db,
            CaptureSettings {
                slot: "lost_slot".into(),
                publication: "lost_slot".into(),
                ..CaptureSettings::default()
            },
            CancellationToken::new(),
            Arc::new(CaptureHealth::default()),
        ),
    )
    .await
    .expect("capture stops by itself");
    assert!(
        matches!(result, Err(CaptureError::SlotLost { .. })),
        "{result:?}"
    );

    // And so does the binary, with exit code 3.
    let out = tokio::process::Command::new(binary())
        .arg("run")
        .env_clear()
        .env("DATABASE_URL", &url)
        .env("STOCKSYNC_SLOT", "lost_slot")
        .env("STOCKSYNC_PUBLICATION", "lost_slot")
        .env("STOCKSYNC_HTTP_ADDR", free_addr().to_string())
        .env("STOCKSYNC_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn run_binary(url: &str, slot: &str) -> tokio::process::Child {
    tokio::process::Command::new(binary())
        .arg("run")
        .env_clear()
        .env("DATABASE_URL", url)
        .env("STOCKSYNC_SLOT", slot)
        .env("STOCKSYNC_PUBLICATION", slot)
        .env("STOCKSYNC_HTTP_ADDR", free_addr().to_string())
        .env("STOCKSYNC_LOG", "warn")
        .env("STOCKSYNC_TRENDYOL_URL", "http://127.0.0.1:9")
        .env("STOCKSYNC_HEPSIBURADA_URL", "http://127.0.0.1:9")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn stocksync")
}

async fn finished(child: tokio::process::Child, within: Duration) -> (Option<i32>, String) {
    let out = tokio::time::timeout(within, child.wait_with_output())
        .await
        .expect("stocksync run should have stopped by itself")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The one line `run` prints for a permanent refusal (logs are `warn` and go to stdout).
fn sentence(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("stocksync: "))
        .collect();
    assert_eq!(lines.len(), 1, "one sentence expected:\n{stderr}");
    lines[0].to_string()
}

#[tokio::test]
async fn run_stops_with_exit_2_on_permanent_refusals_and_waits_out_outages() {
    let url = fresh_database("perm");
    setup(&url, "perm", "perm").await;
    let admin = connect(&url).await;
    let port = cluster().port();
    let dbname = url.rsplit('/').next().unwrap().to_string();
    admin
        .batch_execute(
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE perm_user LOGIN REPLICATION SUPERUSER PASSWORD 'right-pass';",
        )
        .await
        .unwrap();
    // The shared cluster trusts 127.0.0.1 (a wrong password would pass; tests/tls.rs has
    // password rules), so the refusals here are a missing database (3D000) and a missing
    // role (28000): both permanent.
    let missing_db = format!("postgres://postgres@127.0.0.1:{port}/no_such_database");
    let (code, stderr) = finished(run_binary(&missing_db, "perm"), Duration::from_secs(30)).await;
    assert_eq!(code, Some(2), "{stderr}");
    let line = sentence(&stderr);
    assert!(
        line.contains("3D000") && line.contains("does not exist"),
        "{line}"
    );

    let missing_role = format!("postgres://nobody_here@127.0.0.1:{port}/{dbname}");
    let (code, stderr) = finished(run_binary(&missing_role, "perm"), Duration::from_secs(30)).await;
    assert_eq!(code, Some(2), "{stderr}");
    let line = sentence(&stderr);
    assert!(
        line.contains("28000") && line.contains("DATABASE_URL"),
        "{line}"
    );

    // Nothing listens: transient, waited out until SIGTERM.
    let closed = free_addr();
    let mut child = run_binary(&format!("postgres://postgres@{closed}/x"), "perm");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "run must keep retrying an unreachable server"
    );
    let pid = child.id().unwrap() as i32;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let (code, _) = finished(child, Duration::from_secs(15)).await;
    assert_eq!(code, Some(0));

    // While running: the role loses its right to log in; capture's reconnect is refused
    // (SQLSTATE 28000) and run stops with exit 2 instead of retrying forever.
    let user_url = format!("postgres://perm_user:right-pass@127.0.0.1:{port}/{dbname}");
    let child = run_binary(&user_url, "perm");
    eventually(Duration::from_secs(30), "capture streams", || {
        slot_active(&admin, "perm")
    })
    .await;
    let started = Instant::now();
    admin
        .batch_execute(
            "ALTER ROLE perm_user NOLOGIN; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'perm_user';",
        )
        .await
        .unwrap();
    let (code, stderr) = finished(child, Duration::from_secs(60)).await;
    assert_eq!(code, Some(2), "{stderr}");
    let line = sentence(&stderr);
    assert!(line.contains("28000"), "{line}");
    assert!(!stderr.contains("right-pass"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60));
}
