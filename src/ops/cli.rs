//! The command line: one binary, subcommands for every operation. Errors are reported here
//! with context; exit codes: 0 success, 1 runtime failure, 2 configuration or preflight
//! failure, or a permanent refusal by the database (authentication, privilege, missing table
//! or database), 3 replication slot missing or lost (run `setup` and `resync`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::config::{markdown_table, Config};
use super::{setup, EXIT_CONFIG, EXIT_RUNTIME, EXIT_SLOT_LOST};
use crate::backoff::BackoffPolicy;
use crate::capture::CaptureError;
use crate::db::DbError;

/// `run` waiting for an unreachable database at start: from one second, doubling to 30 s.
const STARTUP_RETRY: BackoffPolicy = BackoffPolicy::new(
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(30),
);

#[derive(Parser, Debug)]
#[command(
    name = "stocksync",
    version,
    about = "Keeps Trendyol and Hepsiburada stock equal to your PostgreSQL database"
)]
pub struct Cli {
    /// TOML file with the same keys as the environment variables (see `stocksync config`).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the stock_sync schema, replica identity, publication and slot (idempotent).
    Setup {
        /// Print the SQL that would run and change nothing.
        #[arg(long)]
        print_sql: bool,
    },
    /// Drop the slot and the publication (`--purge` also drops the stock_sync schema).
    Teardown {
        #[arg(long)]
        purge: bool,
        /// Print the SQL that would run and change nothing.
        #[arg(long)]
        print_sql: bool,
    },
    /// Run capture and delivery until SIGTERM/SIGINT.
    Run,
    /// Validate configuration and database setup (the preflight alone), then exit.
    Check,
    /// Slot, checkpoint, lag, queue per store, paused stores, dead letters.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Enqueue every listed product of one store or all stores.
    Resync {
        #[arg(long)]
        store: Option<uuid::Uuid>,
        /// Then follow delivery until the queue (of that store) is empty.
        #[arg(long)]
        wait: bool,
    },
    /// Compare what each marketplace shows with the database (drift, missing and unknown
    /// listings); exit code 1 while drift remains.
    Reconcile {
        #[arg(long)]
        store: Option<uuid::Uuid>,
        /// Enqueue a repair (reason RECONCILE) for every drifted listing; the running service
        /// pushes it. Without it nothing is changed.
        #[arg(long)]
        fix: bool,
        #[arg(long)]
        json: bool,
    },
    /// Re-enqueue dead-lettered items and lift credential pauses.
    RetryFailed {
        #[arg(long)]
        store: Option<uuid::Uuid>,
    },
    /// Serve the local Trendyol + Hepsiburada stand-in (tests, staging, the demo).
    MockMarketplace(Box<crate::mock::MockArgs>),
    /// Private PostgreSQL + sample catalogue + mock marketplaces + a live workload, then the result.
    Demo(super::demo::DemoArgs),
    /// Print the configuration keys (`--markdown` for the README table).
    Config {
        #[arg(long)]
        markdown: bool,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("stocksync: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    super::logging::init(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("stocksync: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(execute(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            error!("{e:#}");
            eprintln!("stocksync: {e:#}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

async fn execute(command: Command, config: Config) -> Result<ExitCode> {
    match command {
        Command::Config { markdown } => {
            if markdown {
                print!("{}", markdown_table());
            } else {
                for k in super::config::KEYS {
                    println!("{:<28} {:<38} default {}", k.name, k.env, k.default);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Setup { print_sql } => cmd_setup(&config, print_sql).await,
        Command::Teardown { purge, print_sql } => cmd_teardown(&config, purge, print_sql).await,
        Command::Check => cmd_check(&config).await,
        Command::Status { json } => {
            let client = connect(&config).await?;
            let status = super::status::read(&client, &config.slot)
                .await
                .context("reading status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", super::status::render(&status));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Resync { store, wait } => cmd_resync(&config, store, wait).await,
        Command::Reconcile { store, fix, json } => {
            super::reconcile::command(&config, store, fix, json).await
        }
        Command::RetryFailed { store } => {
            let mut client = connect(&config).await?;
            let n = super::resync::retry_failed(&mut client, store)
                .await
                .context("re-enqueueing dead letters and lifting store pauses")?;
            println!("re-enqueued {n} dead-lettered (product, store) pairs; store pauses lifted");
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => cmd_run(config).await,
        Command::Demo(args) => super::demo::run(args).await,
        Command::MockMarketplace(args) => {
            crate::mock::run_cli(*args).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn connect(config: &Config) -> Result<tokio_postgres::Client> {
    let db = config.db()?;
    db.connect().await.context("connecting to PostgreSQL")
}

async fn cmd_setup(config: &Config, print_sql: bool) -> Result<ExitCode> {
    let db = config.db()?;
    let client = match db.connect().await {
        Ok(client) => client,
        Err(e) if print_sql => {
            println!("-- could not inspect the database ({e}); this is the full plan for an empty database.");
            print!(
                "{}",
                setup::render(&setup::full_plan(&config.slot, &config.publication, None))
            );
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e).context("connecting to PostgreSQL"),
    };
    let steps = match setup::plan(&client, &config.slot, &config.publication).await {
        Ok(steps) => steps,
        Err(e) => {
            eprintln!("stocksync setup: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    if print_sql {
        print!("{}", setup::render(&steps));
        return Ok(ExitCode::SUCCESS);
    }
    if let Err(e) = setup::apply(&client, &steps).await {
        eprintln!("stocksync setup: {e}");
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    println!("setup complete ({} steps run)", steps.len());
    Ok(ExitCode::SUCCESS)
}

async fn cmd_teardown(config: &Config, purge: bool, print_sql: bool) -> Result<ExitCode> {
    let steps = setup::teardown_plan(&config.slot, &config.publication, purge);
    if print_sql {
        print!("{}", setup::render(&steps));
        return Ok(ExitCode::SUCCESS);
    }
    let client = connect(config).await?;
    setup::apply(&client, &steps).await?;
    println!("teardown complete");
    Ok(ExitCode::SUCCESS)
}

/// Preflight; prints each problem as one sentence. The exit code for the problems found:
/// 3 when the slot stocksync consumed is gone or lost, else 2; `None` when there are none.
async fn preflight_exit(config: &Config, allow_active_slot: bool) -> Result<Option<u8>> {
    let client = connect(config).await?;
    let problems = setup::preflight(
        &client,
        &config.slot,
        &config.publication,
        allow_active_slot,
    )
    .await
    .context("running preflight checks")?;
    for p in &problems {
        eprintln!("stocksync: {}", p.0);
        error!(problem = %p.0, "preflight");
    }
    // `check` refuses a setting that would hang capture; `run` (allowed an active slot)
    // says so loudly and goes on, because the DBA may be changing it.
    let replication_name = config.db()?.application_name;
    let hang = setup::synchronous_standby_problem(&client, &replication_name)
        .await
        .context("reading synchronous_standby_names")?;
    if let Some(hang) = &hang {
        eprintln!("stocksync: {hang}");
        error!(problem = %hang, "preflight");
    }
    let refuses_hang = hang.is_some() && !allow_active_slot;
    if problems.is_empty() {
        for w in setup::failover_warnings(&client, &config.slot)
            .await
            .context("checking whether the slot survives a failover")?
        {
            // `check` says it on the terminal; `run` in its log.
            if !allow_active_slot {
                eprintln!("stocksync: warning: {w}");
            }
            warn!(warning = %w, "preflight");
        }
    }
    Ok(match problems.iter().any(setup::Problem::slot_gone) {
        true => Some(EXIT_SLOT_LOST),
        false if !problems.is_empty() || refuses_hang => Some(EXIT_CONFIG),
        false => None,
    })
}

async fn cmd_check(config: &Config) -> Result<ExitCode> {
    if let Err(e) = config.check_http_exposure() {
        eprintln!("stocksync: configuration error: {e}");
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    if let Some(code) = preflight_exit(config, false).await? {
        return Ok(ExitCode::from(code));
    }
    let unconfigured = stores_without_user_agent(config).await?;
    for store in &unconfigured {
        eprintln!("stocksync: {store}");
    }
    if !unconfigured.is_empty() {
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    println!("configuration and database setup are valid");
    Ok(ExitCode::SUCCESS)
}

/// A sentence for each Hepsiburada store that would be sent to but has no user agent
/// configured (`run` pauses such stores; `check` fails on them).
async fn stores_without_user_agent(config: &Config) -> Result<Vec<String>> {
    let client = connect(config).await?;
    let agents = super::user_agents(config);
    Ok(crate::stores::row::sendable_stores(&client)
        .await
        .context("reading the stores")?
        .into_iter()
        .filter(|s| agents.for_store(s.provider, s.id, &s.seller_id).is_none())
        .map(|s| {
            format!(
                "Hepsiburada store {} ({}) has no user agent: set STOCKSYNC_HEPSIBURADA_USER_AGENT, \
                 or add it to STOCKSYNC_HEPSIBURADA_USER_AGENT_PER_STORE, to the developer user name \
                 the merchant authorised (until then it is paused and sent nothing)",
                s.id,
                s.name.as_deref().unwrap_or("no name")
            )
        })
        .collect())
}

/// `run`: the preflight (waiting for a database that cannot be reached yet, stopping at once
/// when it refuses stocksync for good), then the service until a signal or a fatal error.
async fn cmd_run(config: Config) -> Result<ExitCode> {
    if let Err(e) = config.check_http_exposure() {
        eprintln!("stocksync: configuration error: {e}");
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let mut retry = STARTUP_RETRY.start();
    loop {
        match preflight_exit(&config, true).await {
            Ok(None) => break,
            Ok(Some(code)) => return Ok(ExitCode::from(code)),
            Err(e) => match e.downcast_ref::<DbError>() {
                Some(db) if !db.is_permanent() => {
                    let wait = retry.next_delay();
                    warn!(error = %db, retry_in = ?wait, "PostgreSQL cannot be reached; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(ExitCode::SUCCESS),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Some(db) => {
                    let fix = db.sqlstate().map_or(
                        "change DATABASE_URL or the server's pg_hba.conf",
                        crate::db::permanent_fix,
                    );
                    error!(error = %db, "cannot start");
                    eprintln!("stocksync: {db}; {fix}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
                None => {
                    eprintln!("stocksync: {e:#}");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            },
        }
    }
    match super::service::run_until(config, shutdown).await? {
        Ok(()) => {
            info!("stopped cleanly");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(report_capture_error(&e)),
    }
}

fn report_capture_error(e: &CaptureError) -> ExitCode {
    error!(error = %e, "capture stopped");
    if e.is_slot_loss() {
        eprintln!("stocksync: {e}");
        ExitCode::from(EXIT_SLOT_LOST)
    } else if let Some(reason) = e.permanent_reason() {
        eprintln!("stocksync: {reason}");
        ExitCode::from(EXIT_CONFIG)
    } else {
        eprintln!("stocksync: {e}");
        ExitCode::from(EXIT_RUNTIME)
    }
}

fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
        }
        shutdown.cancel();
    });
}

/// `resync`: store by store with a progress bar on a terminal; `--wait` follows delivery.
async fn cmd_resync(config: &Config, store: Option<uuid::Uuid>, wait: bool) -> Result<ExitCode> {
    use std::io::{IsTerminal, Write};
    let client = connect(config).await?;
    let terminal = std::io::stderr().is_terminal();
    let n = super::resync::resync_with_progress(&client, store, |done, total, pairs| {
        if terminal {
            let label = format!("{done}/{total} stores, {pairs} pairs enqueued");
            eprint!(
                "\r{}",
                super::resync::progress_bar(done as u64, total as u64, &label)
            );
            let _ = std::io::stderr().flush();
        }
    })
    .await
    .context("enqueueing listed pairs")?;
    if terminal {
        eprintln!();
    }
    println!("enqueued {n} listed (product, store) pairs");
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let total = n.max(1);
    loop {
        let (left, paused) = super::resync::outstanding(&client, store)
            .await
            .context("reading the queue")?;
        let sent = total.saturating_sub(left as u64);
        let label = format!("{left} entries left");
        if terminal {
            eprint!("\r{}   ", super::resync::progress_bar(sent, total, &label));
            let _ = std::io::stderr().flush();
        }
        if left == 0 {
            if terminal {
                eprintln!();
            }
            println!("delivered");
            return Ok(ExitCode::SUCCESS);
        }
        if left == paused {
            if terminal {
                eprintln!();
            }
            println!(
                "{paused} entries wait for paused stores (see `stocksync status`; fix the credentials or run `stocksync retry-failed`)"
            );
            return Ok(ExitCode::from(1));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
