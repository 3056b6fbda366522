//! `stocksync mock-marketplace`: command-line flags and the serving loop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::behaviour::Behaviour;
use super::config::{load_accounts_file, Faults, MockAccount, MockConfig, RateLimit};
use super::MockMarketplace;

fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not within 0..=1"))
    }
}

/// Flags of the mock marketplace.
#[derive(Clone, Debug, clap::Args)]
pub struct MockArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,

    /// Accounts file, JSON or TOML by extension (`[[accounts]]` / `{"accounts":[...]}`
    /// with marketplace, seller_id, api_key, api_secret, listings).
    #[arg(long, value_name = "FILE")]
    pub accounts: Option<PathBuf>,

    /// An account, repeatable: `trendyol:SELLER_ID:API_KEY:API_SECRET[:listings=B1,B2]`
    /// or `hepsiburada:MERCHANT_ID:SERVICE_KEY[:listings=SKU1,SKU2]`.
    #[arg(long = "account", value_name = "SPEC", value_parser = MockAccount::parse_spec)]
    pub account: Vec<MockAccount>,

    /// Accept any credentials for any seller id (accounts are created on first use).
    #[arg(long)]
    pub open: bool,

    /// Trendyol refuses a byte-identical body within this window (0s disables).
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub identical_window: Duration,

    /// HTTP status of the identical-body refusal.
    #[arg(long, default_value_t = 400)]
    pub identical_status: u16,

    /// Requests per window per seller per endpoint, e.g. `50/10s`.
    #[arg(long, default_value = "50/10s")]
    pub rate_limit: RateLimit,

    /// Most items in one Trendyol push.
    #[arg(long, default_value_t = 1000)]
    pub trendyol_max_items: usize,

    /// Most items in one Hepsiburada stock upload.
    #[arg(long, default_value_t = 1000)]
    pub hepsiburada_max_items: usize,

    /// Largest accepted quantity / availableStock.
    #[arg(long, default_value_t = 20_000)]
    pub max_quantity: i64,

    /// Time before batch results are visible (Trendyol items empty, Hepsiburada PROCESSING).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub processing_delay: Duration,

    /// How long batch results can be read.
    #[arg(long, default_value = "4h", value_parser = parse_duration)]
    pub batch_retention: Duration,

    /// HTTP status for a Hepsiburada request without the authorised User-Agent.
    #[arg(long, default_value_t = 403)]
    pub hepsiburada_user_agent_status: u16,

    /// The Hepsiburada user agent every merchant authorised (others are refused); unset:
    /// any non-empty one.
    #[arg(long)]
    pub hepsiburada_user_agent: Option<String>,

    /// Status word of a finished Hepsiburada upload (production answers `Done`).
    #[arg(long, default_value = "Done")]
    pub upload_status_word: String,

    /// Keep Trendyol barcodes with their spaces (the real service removes them).
    #[arg(long)]
    pub keep_barcode_spaces: bool,

    /// Accept push bodies whatever their Content-Type.
    #[arg(long)]
    pub any_content_type: bool,

    /// Fault: fraction (0..=1) of marketplace requests answered 500.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,

    /// Fault: delay added before every marketplace answer, e.g. `200ms`.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub latency: Duration,

    /// Fault: fraction (0..=1) of marketplace requests whose connection is reset.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub reset_rate: f64,

    /// Fault: reset connections after processing the request (stock applied, answer lost).
    #[arg(long)]
    pub reset_after_apply: bool,

    /// Fault: answer every marketplace request 429 for this long after start, e.g. `30s`.
    #[arg(long, value_parser = parse_duration)]
    pub throttle_for: Option<Duration>,

    /// Fault: Retry-After of those forced 429s (default: seconds left in the window).
    #[arg(long)]
    pub retry_after_secs: Option<u64>,

    /// Serve the page and `/_mock/*` to peers that are not loopback (only for a container
    /// whose published port is bound to the host's 127.0.0.1); requests must still name a
    /// loopback `Host`.
    #[arg(long)]
    pub admin_any_peer: bool,
}

impl MockArgs {
    /// The configuration these flags describe (reads `--accounts`).
    pub fn to_config(&self) -> anyhow::Result<MockConfig> {
        let mut accounts = Vec::new();
        if let Some(path) = &self.accounts {
            accounts.extend(load_accounts_file(path)?);
        }
        accounts.extend(self.account.iter().cloned());
        let config = MockConfig {
            open: self.open,
            admin_any_peer: self.admin_any_peer,
            accounts,
            identical_window: self.identical_window,
            identical_status: self.identical_status,
            rate_limit: self.rate_limit,
            trendyol_max_items: self.trendyol_max_items,
            hepsiburada_max_items: self.hepsiburada_max_items,
            max_quantity: self.max_quantity,
            processing_delay: self.processing_delay,
            batch_retention: self.batch_retention,
            hepsiburada_user_agent_status: self.hepsiburada_user_agent_status,
            require_json_content_type: !self.any_content_type,
            faults: Faults {
                error_rate: self.error_rate,
                latency_ms: u64::try_from(self.latency.as_millis()).unwrap_or(u64::MAX),
                reset_rate: self.reset_rate,
                reset_after_apply: self.reset_after_apply,
                throttle_for_ms: self
                    .throttle_for
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                retry_after_secs: self.retry_after_secs,
                ..Faults::default()
            },
            behaviour: Behaviour {
                hepsiburada_user_agent: self.hepsiburada_user_agent.clone(),
                upload_done_word: self.upload_status_word.clone(),
                trendyol_strips_barcode_spaces: !self.keep_barcode_spaces,
                ..Behaviour::default()
            },
            ..MockConfig::default()
        };
        config.validate()?;
        Ok(config)
    }
}

/// Runs the mock until Ctrl-C (or SIGTERM on Unix).
pub async fn run_cli(args: MockArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    if config.accounts.is_empty() && !config.open {
        tracing::warn!("no accounts and not --open: every request will be refused with 401");
    }
    let summary: Vec<String> = config
        .accounts
        .iter()
        .map(|a| format!("{}:{}", a.marketplace, a.seller_id))
        .collect();
    let mock = MockMarketplace::start(config, args.listen)
        .await
        .with_context(|| format!("starting the mock marketplace on {}", args.listen))?;
    println!("mock marketplace listening on {}", mock.base_url());
    tracing::info!(
        url = %mock.base_url(),
        accounts = ?summary,
        open = args.open,
        "mock marketplace ready"
    );
    wait_for_signal().await;
    tracing::info!("mock marketplace stopping");
    mock.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
