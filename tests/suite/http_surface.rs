//! The HTTP surface against the real service and real HTTP clients: the bearer token, the
//! open health endpoints, `STOCKSYNC_METRICS_PUBLIC`, refusing non-loopback binds without a
//! token, DNS rebinding (`Host`), no bodies, the header-read timeout, idle connections that
//! cannot hold the surface, one request per connection, a trickle of slow connections,
//! readiness answered from memory,
//! its own small pool, and no connection strings in `/readyz` or `/api/status`.

use crate::common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use stocksync::ops::config::Config;
use stocksync::ops::http;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "tok-4f9c2a77e1b84d0c9a3e";

struct Service {
    addr: SocketAddr,
    url: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<Result<(), stocksync::capture::CaptureError>>>,
}

impl Service {
    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }

    fn at(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.addr.port())
    }
}

/// `run_until` on a prepared database, HTTP on `bind` (port chosen here) with `extra` settings.
async fn start(name: &str, bind: &str, extra: &[(&str, &str)]) -> Service {
    let url = fresh_database(name);
    setup(&url, name, name).await;
    let port = free_addr().port();
    let addr: SocketAddr = format!("{bind}:{port}").parse().unwrap();
    let mut env: HashMap<String, String> = [
        ("DATABASE_URL", url.clone()),
        ("STOCKSYNC_SLOT", name.to_string()),
        ("STOCKSYNC_PUBLICATION", name.to_string()),
        ("STOCKSYNC_HTTP_ADDR", addr.to_string()),
        ("STOCKSYNC_HEARTBEAT_INTERVAL", "0s".into()),
        ("STOCKSYNC_TRENDYOL_URL", "http://127.0.0.1:9".into()),
        ("STOCKSYNC_HEPSIBURADA_URL", "http://127.0.0.1:9".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    let config = Config::load_from(None, |k| env.get(k).cloned()).expect("config");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(stocksync::ops::service::run_until(config, shutdown.clone()));
    let service = Service {
        addr,
        url,
        shutdown,
        task,
    };
    let probe = reqwest::Client::new();
    eventually(Duration::from_secs(30), "HTTP answers", || async {
        probe.get(service.at("/healthz")).send().await.is_ok()
    })
    .await;
    service
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn status(request: reqwest::RequestBuilder) -> StatusCode {
    request.send().await.expect("request").status()
}

#[tokio::test]
async fn the_token_guards_api_dashboard_and_metrics_but_not_health() {
    let s = start(
        "http_token",
        "127.0.0.1",
        &[("STOCKSYNC_HTTP_TOKEN", TOKEN)],
    )
    .await;
    let c = client();
    for path in ["/api/status", "/api/log", "/metrics", "/"] {
        assert_eq!(
            status(c.get(s.at(path))).await,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        let wrong = c.get(s.at(path)).bearer_auth("tok-4f9c2a77e1b84d0c9a3f");
        assert_eq!(status(wrong).await, StatusCode::UNAUTHORIZED, "{path}");
        let prefix = c.get(s.at(path)).bearer_auth(&TOKEN[..TOKEN.len() - 1]);
        assert_eq!(status(prefix).await, StatusCode::UNAUTHORIZED, "{path}");
        let right = c.get(s.at(path)).bearer_auth(TOKEN);
        assert_eq!(status(right).await, StatusCode::OK, "{path}");
    }
    // The dashboard page without the token is the page that asks for it.
    let page = c.get(s.at("/")).send().await.unwrap();
    assert_eq!(page.headers()["www-authenticate"], "Bearer");
    let html = page.text().await.unwrap();
    assert!(html.contains("sessionStorage") && html.contains("id=\"token\""));
    assert_eq!(status(c.get(s.at("/healthz"))).await, StatusCode::OK);
    eventually(
        Duration::from_secs(30),
        "/readyz open and ready",
        || async { status(c.get(s.at("/readyz"))).await == StatusCode::OK },
    )
    .await;
    s.stop().await;

    // Prometheus convention: /metrics may be opened alone.
    let s = start(
        "http_metrics",
        "127.0.0.1",
        &[
            ("STOCKSYNC_HTTP_TOKEN", TOKEN),
            ("STOCKSYNC_METRICS_PUBLIC", "true"),
        ],
    )
    .await;
    assert_eq!(status(c.get(s.at("/metrics"))).await, StatusCode::OK);
    assert_eq!(
        status(c.get(s.at("/api/status"))).await,
        StatusCode::UNAUTHORIZED
    );
    s.stop().await;
}

#[tokio::test]
async fn non_loopback_needs_a_token() {
    // Refused at start, by the binary, with the sentence naming both settings.
    let out = tokio::process::Command::new(binary())
        .arg("run")
        .env_clear()
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")
        .env("STOCKSYNC_HTTP_ADDR", "0.0.0.0:0")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("STOCKSYNC_HTTP_TOKEN") && stderr.contains("STOCKSYNC_METRICS_PUBLIC"),
        "{stderr}"
    );
    // With a token it serves on every address; requests name any host (no loopback rule).
    let s = start("http_any", "0.0.0.0", &[("STOCKSYNC_HTTP_TOKEN", TOKEN)]).await;
    let c = client();
    let api = c
        .get(s.at("/api/status"))
        .header("host", "stocksync.internal.example")
        .bearer_auth(TOKEN);
    assert_eq!(status(api).await, StatusCode::OK);
    let anonymous = c
        .get(s.at("/api/status"))
        .header("host", "stocksync.internal.example");
    assert_eq!(status(anonymous).await, StatusCode::UNAUTHORIZED);
    s.stop().await;
}

#[tokio::test]
async fn loopback_refuses_foreign_hosts_bodies_and_slow_clients_and_serves_beside_idle_ones() {
    let s = start("http_guard", "127.0.0.1", &[]).await;
    let c = client();
    let port = s.addr.port();
    // DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1.
    for host in [
        "evil.example",
        &format!("evil.example:{port}"),
        "localhost.evil.example",
    ] {
        let r = c.get(s.at("/api/status")).header("host", host);
        assert_eq!(status(r).await, StatusCode::MISDIRECTED_REQUEST, "{host}");
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "[::1]".to_string(),
    ] {
        let r = c.get(s.at("/api/status")).header("host", &host);
        assert_eq!(status(r).await, StatusCode::OK, "{host}");
    }
    // No bodies, read-only.
    assert_eq!(
        status(c.post(s.at("/api/status")).body("{}")).await,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        status(c.get(s.at("/api/status")).body("x=1")).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    // Status and readiness carry no connection string, even redacted.
    for path in ["/readyz", "/api/status"] {
        let body = c
            .get(s.at(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !body.contains("postgres://") && !body.contains(&s.url),
            "{path}: {body}"
        );
    }

    // The HTTP pool: at most 2 sessions of its own, whatever the burst, with a 5 s
    // statement_timeout.
    let admin = connect(&s.url).await;
    let burst: Vec<_> = (0..24)
        .map(|_| {
            let c = c.clone();
            let url = s.at("/api/status");
            tokio::spawn(async move { c.get(url).send().await.map(|r| r.status()) })
        })
        .collect();
    let mut most = 0i64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(500) {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = $1 AND datname = current_database()",
                &[&http::POOL_APPLICATION_NAME],
            )
            .await
            .unwrap()
            .get(0);
        most = most.max(n);
    }
    for r in burst {
        assert_eq!(r.await.unwrap().unwrap(), StatusCode::OK);
    }
    assert!((1..=2).contains(&most), "HTTP sessions seen: {most}");
    let pool = stocksync::db::DbConfig::from_url(&s.url)
        .unwrap()
        .pool_with(http::POOL)
        .unwrap();
    let timeout: String = pool
        .get()
        .await
        .unwrap()
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(timeout, "5s");

    // A client that never finishes its headers is dropped after the header-read timeout.
    let mut slow = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_secs(15), slow.read(&mut buf))
        .await
        .expect("the slow client is dropped");
    let waited = started.elapsed();
    assert!(
        waited >= http::HEADER_READ_TIMEOUT - Duration::from_millis(500)
            && waited < http::HEADER_READ_TIMEOUT + Duration::from_secs(3),
        "{waited:?}"
    );

    // Idle connections do not hold the surface: with far more open than the old cap of
    // 32 slots, a request is served at once (before the idle ones time out).
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(s.addr).await.unwrap());
    }
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert_eq!(
        status(quick.get(s.at("/healthz"))).await,
        StatusCode::OK,
        "served while 200 idle connections are open"
    );
    // One request per connection: the answer closes it.
    let mut once = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    once.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), once.read_to_end(&mut answer))
        .await
        .expect("the connection is closed after its one answer")
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    drop(idle);
    s.stop().await;
}

/// A trickle of slow connections cannot starve the surface (issue 25, item 8): 60 new
/// connections a second from 127.0.0.1 (the probe's own address), each sending one header
/// byte a second and never finishing, for 10 s; meanwhile `/metrics` and `/readyz`, probed
/// every 200 ms on fresh connections, each answer within a second (the contract;
/// only the probe's own request is timed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_of_slow_connections_cannot_starve_metrics_and_readiness() {
    const PER_SECOND: u32 = 60;
    const FLOOD: Duration = Duration::from_secs(10);
    const BOUND: Duration = Duration::from_secs(1);
    let s = start("http_flood", "127.0.0.1", &[]).await;
    let c = client();
    eventually(
        Duration::from_secs(30),
        "/readyz ready before the flood",
        || async { status(c.get(s.at("/readyz"))).await == StatusCode::OK },
    )
    .await;

    let stop = CancellationToken::new();
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let flood = {
        let (addr, stop, opened) = (s.addr, stop.clone(), opened.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1) / PER_SECOND);
            let mut tricklers = tokio::task::JoinSet::new();
            for _ in 0..PER_SECOND * FLOOD.as_secs() as u32 {
                every.tick().await;
                let (stop, opened) = (stop.clone(), opened.clone());
                tricklers.spawn(async move {
                    let Ok(mut tcp) = tokio::net::TcpStream::connect(addr).await else {
                        return;
                    };
                    opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // A request line and headers that never end, a byte a second.
                    let header = b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
                    for byte in header.iter().chain(std::iter::repeat(&b'a')) {
                        if tcp.write_all(&[*byte]).await.is_err() {
                            return;
                        }
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                });
            }
            stop.cancel();
            while tricklers.join_next().await.is_some() {}
        })
    };

    // Fresh connections (no pooling), a bound per request: a request refused, failed or
    // slower than the bound is recorded with its time.
    let probe = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(BOUND)
        .build()
        .unwrap();
    let begun = Instant::now();
    let mut late = Vec::new();
    let mut probes = 0;
    while !stop.is_cancelled() {
        for path in ["/metrics", "/readyz"] {
            let sent = Instant::now();
            let answer = match probe.get(s.at(path)).send().await {
                Ok(r) => {
                    let code = r.status();
                    r.bytes().await.map(|_| code)
                }
                Err(e) => Err(e),
            };
            let took = sent.elapsed();
            probes += 1;
            match answer {
                Ok(StatusCode::OK) if took < BOUND => {}
                other => late.push(format!(
                    "{path} at {:?}: {other:?} after {took:?}",
                    sent - begun
                )),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    flood.await.unwrap();
    let opened = opened.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        opened >= PER_SECOND * 9,
        "the flood opened {opened} connections"
    );
    assert!(
        late.is_empty(),
        "{} of {probes} probes failed: {late:#?}",
        late.len()
    );
    assert!(probes >= 20, "{probes} probes");
    s.stop().await;
}

/// `/readyz` answers from the last background check, not from a query of its own: while
/// the queue is locked (every readiness query would wait on it until its 5 s
/// `statement_timeout`), an anonymous `/readyz` still answers ready, from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_answered_from_memory_without_a_query() {
    let s = start(
        "http_ready_memory",
        "127.0.0.1",
        &[("STOCKSYNC_HTTP_TOKEN", TOKEN)],
    )
    .await;
    let c = client();
    eventually(Duration::from_secs(30), "/readyz ready", || async {
        status(c.get(s.at("/readyz"))).await == StatusCode::OK
    })
    .await;
    let mut admin = connect(&s.url).await;
    let tx = admin.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE stock_sync.queue IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let answer = c.get(s.at("/readyz")).send().await.unwrap();
    let code = answer.status();
    let body: serde_json::Value = answer.json().await.unwrap();
    // Still holding the lock: a query of the request's own could not have finished.
    let held: bool = tx
        .query_one(
            "SELECT count(*) = 1 FROM pg_locks WHERE locktype = 'relation' \
             AND relation = 'stock_sync.queue'::regclass AND mode = 'AccessExclusiveLock' \
             AND granted AND pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(held);
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["database"], true, "{body}");
    tx.rollback().await.unwrap();
    s.stop().await;
}
