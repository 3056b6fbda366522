//! `stocksync demo`: one command that shows stocksync working, for a person trying it.
//!
//! It starts everything it needs and removes it all when it ends:
//!
//! 1. a private PostgreSQL cluster ([`LocalCluster`], removed on exit, and by a watchdog
//!    even when the demo is killed with SIGKILL);
//! 2. a database with the application schema (`sql/app_schema.sql`) and a sample catalogue:
//!    300 products (292 simple, 8 sets, one of them nested) including the seed plan's
//!    "Kış Paketi" (SET-001 = Mont×1 + Eldiven×2 + Atkı×1 with 50 / 30 / 40 in stock, so
//!    15 sets), two Trendyol stores and one Hepsiburada store, every product listed in every
//!    store with a random but deterministic stock;
//! 3. the mock marketplace with accounts for those stores (same credentials, known listings
//!    = the catalogue's barcodes for Trendyol and skus for Hepsiburada);
//! 4. `stocksync setup` and the service (capture, delivery, HTTP dashboard), configured to
//!    talk to the mock;
//! 5. a workload for `--duration`: every ~200 ms an order, a cancellation or a restock, while
//!    a table shows once per second, per store, the pending queue, the requests the mock
//!    received and how many listed products the marketplace shows with the quantity the
//!    database implies ([`crate::stock::compute_store`]).
//!
//! After the workload (or on Ctrl-C / SIGTERM) it waits up to 15 s for the marketplaces to
//! converge, prints the result and exits 0 when every store converged, 1 otherwise. A second
//! Ctrl-C skips the wait.
//!
//! This file runs the steps; the sample data is in [`catalogue`], the orders, cancellations
//! and restocks in [`workload`], and the once-per-second table in [`screen`].

use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::config::{parse_duration, Config};
use super::{service, setup};
use crate::db::DbConfig;
use crate::localpg::{ClusterOptions, LocalCluster, LocalPgError};
use crate::mock::{MockConfig, MockMarketplace};

mod catalogue;
mod screen;
mod workload;

use catalogue::{Catalogue, KIS_PAKETI_BARCODE};
use screen::{all_converged, counters_line, next_steps, observe, opt, render_table, Screen};
use workload::{Counters, Workload};

/// The developer user name the demo's Hepsiburada merchants authorised.
const DEMO_HEPSIBURADA_USER_AGENT: &str = "demo_dev";

/// The application schema the demo database is made with.
const APP_SCHEMA: &str = include_str!("../../../sql/app_schema.sql");

/// Name of the demo database inside the private cluster.
const DATABASE: &str = "stocksync_demo";

/// Seed of the catalogue; the workload uses `SEED + 1`.
const SEED: u64 = 20_240_601;

/// How long the demo waits for convergence once the workload stopped.
const CONVERGENCE_WAIT: Duration = Duration::from_secs(15);

/// How long the service gets to stop.
const SERVICE_STOP_WAIT: Duration = Duration::from_secs(15);

/// `stocksync demo` arguments.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// How long the sample workload (orders, cancellations, restocks) runs.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Where the stocksync dashboard and /metrics listen (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9187")]
    pub http_addr: SocketAddr,
    /// Where the mock Trendyol + Hepsiburada listen (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub mock_addr: SocketAddr,
}

/// Ctrl-C / SIGTERM: the first stops the workload (the demo then waits for convergence),
/// the second also skips that wait.
fn spawn_signal_handler(stop: CancellationToken, abort: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        for token in [stop, abort] {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            token.cancel();
        }
    });
}

/// A free port on `addr`'s interface when `addr` asks for port 0, so the dashboard URL that
/// is printed is the one the service binds.
fn resolve_port(addr: SocketAddr) -> Result<SocketAddr> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} (--http-addr)"))?;
    let bound = listener.local_addr()?;
    drop(listener);
    Ok(bound)
}

fn browsable(addr: SocketAddr) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    format!("http://{addr}/")
}

/// `stocksync demo`.
pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    spawn_signal_handler(stop.clone(), abort.clone());
    let http_addr = resolve_port(args.http_addr)?;

    println!("stocksync demo: starting a private PostgreSQL cluster …");
    let cluster =
        match tokio::task::spawn_blocking(|| LocalCluster::start(ClusterOptions::default()))
            .await
            .context("starting PostgreSQL")?
        {
            Ok(cluster) => cluster,
            Err(e @ LocalPgError::BinariesNotFound) => {
                eprintln!("stocksync demo: {e}");
                return Ok(ExitCode::from(super::EXIT_CONFIG));
            }
            Err(e) => return Err(e).context("starting a private PostgreSQL cluster"),
        };
    cluster
        .remove_when_process_exits(std::process::id())
        .context("starting the cluster watchdog")?;

    let outcome = with_cluster(&cluster, &args, http_addr, stop, abort).await;

    // The cluster goes last, after every connection to it closed.
    let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
    outcome
}

async fn with_cluster(
    cluster: &LocalCluster,
    args: &DemoArgs,
    http_addr: SocketAddr,
    stop: CancellationToken,
    abort: CancellationToken,
) -> Result<ExitCode> {
    let url = cluster.url_for("postgres", DATABASE);
    {
        let admin = DbConfig::from_url(&cluster.url())?.connect().await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
            .await
            .context("creating the demo database")?;
    }
    let db = DbConfig::from_url(&url)?;
    let mut client = db.connect().await?;
    client
        .batch_execute(APP_SCHEMA)
        .await
        .context("loading sql/app_schema.sql")?;
    let catalogue = Arc::new(Catalogue::generate());
    catalogue
        .load(&mut client)
        .await
        .context("loading the sample catalogue")?;
    let sets = catalogue.products.iter().filter(|p| p.is_set).count();
    println!(
        "stocksync demo: database {DATABASE} on 127.0.0.1:{} with {} products ({} sets), {} stores, {} listings",
        cluster.port(),
        catalogue.products.len(),
        sets,
        catalogue.stores.len(),
        catalogue.stock.len(),
    );

    let mock_config = MockConfig {
        accounts: catalogue.mock_accounts(),
        // As a live merchant account: only the authorised developer user name is accepted.
        behaviour: crate::mock::Behaviour {
            hepsiburada_user_agent: Some(DEMO_HEPSIBURADA_USER_AGENT.into()),
            ..crate::mock::Behaviour::default()
        },
        ..MockConfig::default()
    };
    let mock = MockMarketplace::start(mock_config, args.mock_addr)
        .await
        .with_context(|| {
            format!(
                "starting the mock marketplace on {} (--mock-addr)",
                args.mock_addr
            )
        })?;

    let outcome = with_mock(
        &client, &catalogue, &mock, &url, args, http_addr, stop, abort,
    )
    .await;
    drop(client);
    mock.shutdown().await;
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn with_mock(
    client: &Client,
    catalogue: &Arc<Catalogue>,
    mock: &MockMarketplace,
    url: &str,
    args: &DemoArgs,
    http_addr: SocketAddr,
    stop: CancellationToken,
    abort: CancellationToken,
) -> Result<ExitCode> {
    let values: HashMap<&str, String> = [
        ("DATABASE_URL", url.to_string()),
        ("STOCKSYNC_TRENDYOL_URL", mock.base_url()),
        ("STOCKSYNC_HEPSIBURADA_URL", mock.base_url()),
        (
            "STOCKSYNC_HEPSIBURADA_USER_AGENT",
            DEMO_HEPSIBURADA_USER_AGENT.to_string(),
        ),
        ("STOCKSYNC_FLUSH_INTERVAL", "1s".to_string()),
        ("STOCKSYNC_HTTP_ADDR", http_addr.to_string()),
        ("STOCKSYNC_IDENTICAL_REQUEST_WINDOW", "15m".to_string()),
    ]
    .into_iter()
    .collect();
    let config = Config::load_from(None, |name| values.get(name).cloned())
        .context("building the demo configuration")?;

    let steps = setup::plan(client, &config.slot, &config.publication)
        .await
        .context("planning setup")?;
    setup::apply(client, &steps)
        .await
        .context("running setup")?;
    let problems = setup::preflight(client, &config.slot, &config.publication, true)
        .await
        .context("running preflight checks")?;
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("stocksync demo: {}", p.0);
        }
        return Ok(ExitCode::from(super::EXIT_CONFIG));
    }
    println!("stocksync demo: setup complete ({} steps)", steps.len());

    let header = format!(
        "stocksync demo\n  dashboard:          {}\n  mock marketplaces:  {}/\n  stop:               Ctrl-C (a second Ctrl-C skips the final wait)\n",
        browsable(http_addr),
        mock.base_url(),
    );
    println!("{header}");
    let screen = Screen {
        terminal: std::io::stdout().is_terminal(),
        header,
    };

    let service_stop = CancellationToken::new();
    let service: JoinHandle<Result<Result<(), crate::capture::CaptureError>>> =
        tokio::spawn(service::run_until(config, service_stop.clone()));

    let outcome = play(
        client, url, catalogue, mock, args, &screen, &service, stop, abort,
    )
    .await;

    service_stop.cancel();
    let service_result = match tokio::time::timeout(SERVICE_STOP_WAIT, service).await {
        Ok(Ok(Ok(Ok(())))) => Ok(()),
        Ok(Ok(Ok(Err(capture)))) => Err(format!("capture stopped: {capture}")),
        Ok(Ok(Err(start))) => Err(format!("the service did not start: {start:#}")),
        Ok(Err(join)) => Err(format!("the service task failed: {join}")),
        Err(_) => Err("the service did not stop within 15 s".to_string()),
    };
    if let Err(problem) = &service_result {
        eprintln!("stocksync demo: {problem}");
    }
    let converged = outcome?;
    let ok = converged && service_result.is_ok();
    if ok {
        println!("stocksync demo: done; everything it started is stopped and removed.");
    } else {
        println!(
            "stocksync demo: done (not converged); everything it started is stopped and removed."
        );
    }
    print!("{}", next_steps(&browsable(http_addr)));
    let _ = std::io::stdout().flush();
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_RUNTIME)
    })
}

/// Runs the workload and the live table, then waits for convergence. Returns whether every
/// store converged.
#[allow(clippy::too_many_arguments)]
async fn play(
    client: &Client,
    url: &str,
    catalogue: &Arc<Catalogue>,
    mock: &MockMarketplace,
    args: &DemoArgs,
    screen: &Screen,
    service: &JoinHandle<Result<Result<(), crate::capture::CaptureError>>>,
    stop: CancellationToken,
    abort: CancellationToken,
) -> Result<bool> {
    let counters = Arc::new(Counters::default());
    let workload_stop = stop.child_token();
    let workload_client = DbConfig::from_url(url)?.connect().await?;
    let workload = tokio::spawn(
        Workload {
            rng: StdRng::seed_from_u64(SEED + 1),
            catalogue: catalogue.clone(),
            open_orders: VecDeque::new(),
            counters: counters.clone(),
        }
        .run(workload_client, workload_stop.clone()),
    );

    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut service_died = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let elapsed = started.elapsed();
        let views = observe(client, catalogue, mock).await?;
        screen.show(&format!(
            "[{:>3}s/{}s] {}\n{}\n",
            elapsed.as_secs(),
            args.duration.as_secs(),
            counters_line(&counters),
            render_table(catalogue, &views)
        ));
        if service.is_finished() {
            service_died = true;
            break;
        }
        if elapsed >= args.duration {
            break;
        }
    }
    workload_stop.cancel();
    let _ = workload.await;
    if service_died {
        println!("stocksync demo: the service stopped unexpectedly (see the log above)");
    }

    println!(
        "stocksync demo: workload stopped ({}); waiting up to {}s for the marketplaces to converge …",
        counters_line(&counters),
        CONVERGENCE_WAIT.as_secs()
    );
    let waiting = Instant::now();
    let mut views = observe(client, catalogue, mock).await?;
    let mut last_shown = Instant::now();
    while !all_converged(&views) && waiting.elapsed() < CONVERGENCE_WAIT && !service_died {
        tokio::select! {
            _ = abort.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        views = observe(client, catalogue, mock).await?;
        if last_shown.elapsed() >= Duration::from_secs(1) {
            last_shown = Instant::now();
            screen.show(&format!(
                "[waiting {:>2}s/{}s]\n{}\n",
                waiting.elapsed().as_secs(),
                CONVERGENCE_WAIT.as_secs(),
                render_table(catalogue, &views)
            ));
        }
        service_died = service.is_finished();
    }

    let converged = all_converged(&views);
    let mut out = String::from("\nstocksync demo: final result\n");
    out.push_str(&render_table(catalogue, &views));
    for (store, v) in catalogue.stores.iter().zip(&views) {
        out.push_str(&format!(
            "  {}: converged {}/{}{}\n",
            store.short_name(),
            v.converged,
            v.listed,
            if v.dead > 0 {
                format!(", {} dead-lettered", v.dead)
            } else {
                String::new()
            }
        ));
        for (listing, db, shown) in &v.differences {
            out.push_str(&format!(
                "      {listing}: database {db}, marketplace {}\n",
                opt(*shown)
            ));
        }
    }
    let kis = &catalogue.products[catalogue.kis_paketi];
    out.push_str(&format!(
        "  {} ({KIS_PAKETI_BARCODE}, Mont×1 + Eldiven×2 + Atkı×1): {}\n",
        kis.name,
        catalogue
            .stores
            .iter()
            .zip(&views)
            .map(|(s, v)| format!(
                "{} db {} / marketplace {}",
                s.name,
                opt(v.kis_db),
                opt(v.kis_marketplace)
            ))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    if converged {
        out.push_str(&format!(
            "  all stores converged {:.1}s after the workload stopped\n",
            waiting.elapsed().as_secs_f64()
        ));
    } else {
        out.push_str(
            "  NOT converged: the marketplaces still differ from the database (see above)\n",
        );
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
    Ok(converged)
}

#[cfg(test)]
mod tests {
    use super::catalogue::KIS_PAKETI;
    use super::*;
    use crate::mock::Marketplace;

    #[test]
    fn the_catalogue_is_deterministic_and_holds_the_seed_set() {
        let a = Catalogue::generate();
        let b = Catalogue::generate();
        assert_eq!(a.products.len(), 300);
        assert_eq!(
            a.products.iter().map(|p| p.id).collect::<Vec<_>>(),
            b.products.iter().map(|p| p.id).collect::<Vec<_>>()
        );
        assert_eq!(a.stock, b.stock);
        assert_eq!(a.stores.len(), 3);
        assert_eq!(a.stock.len(), 300 * 3);
        let kis = &a.products[a.kis_paketi];
        assert_eq!(kis.barcode, KIS_PAKETI_BARCODE);
        let items: Vec<(&str, i32)> = a
            .set_items
            .iter()
            .filter(|(s, _, _)| *s == a.kis_paketi)
            .map(|(_, c, q)| (a.products[*c].name.as_str(), *q))
            .collect();
        assert_eq!(
            items,
            [("Kışlık Mont", 1), ("Yün Eldiven", 2), ("Örgü Atkı", 1)]
        );
        // 50 / 30 / 40 in every store: 15 sets.
        for s in 0..a.stores.len() {
            for (component, _, stock) in KIS_PAKETI {
                assert!(a.stock.contains(&(component, s, stock)));
            }
        }
        // One nested set.
        assert!(a
            .set_items
            .iter()
            .any(|(s, c, _)| *s != *c && a.products[*c].is_set));
        // Unique barcodes and skus.
        let mut keys: Vec<&str> = a.products.iter().map(|p| p.barcode.as_str()).collect();
        keys.extend(a.products.iter().map(|p| p.sku.as_str()));
        let n = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), n);
    }

    #[test]
    fn a_terminal_frame_overwrites_the_last_one_and_a_pipe_gets_plain_lines() {
        let header = "stocksync demo\n  dashboard: http://127.0.0.1:9187/\n".to_string();
        let frame = "[  1s/60s] orders 1\n  store   pending\n";
        let piped = Screen {
            terminal: false,
            header: header.clone(),
        };
        assert_eq!(piped.render(frame), frame, "no escape codes in a pipe");
        let tty = Screen {
            terminal: true,
            header,
        };
        let drawn = tty.render(frame);
        assert!(drawn.starts_with("\x1b[?25l\x1b[H"), "{drawn:?}");
        assert!(drawn.ends_with("\x1b[J"), "{drawn:?}");
        // Every line clears what a longer line of the previous frame left.
        assert_eq!(drawn.matches("\x1b[K\n").count(), 2 + 1 + 2);
        assert!(!drawn.contains("\x1b[2J"), "no full clear: no flicker");
        std::mem::forget(tty); // its Drop would write to the test's stdout
    }

    #[test]
    fn the_last_words_point_at_the_kit() {
        let text = next_steps("http://127.0.0.1:9187/");
        for wanted in [
            "http://127.0.0.1:9187/",
            "deploy/grafana/stocksync.json",
            "deploy/prometheus/alerts.yml",
            "deploy/systemd/stocksync.service",
        ] {
            assert!(text.contains(wanted), "{wanted} in {text}");
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            if let Some(file) = wanted.strip_prefix("deploy/") {
                assert!(path.join("deploy").join(file).is_file(), "{wanted} exists");
            }
        }
    }

    #[test]
    fn mock_accounts_match_the_stores() {
        let c = Catalogue::generate();
        let accounts = c.mock_accounts();
        let config = MockConfig {
            accounts,
            ..MockConfig::default()
        };
        config.validate().unwrap();
        assert_eq!(
            config
                .accounts
                .iter()
                .filter(|a| a.marketplace == Marketplace::Trendyol)
                .count(),
            2
        );
    }
}
