//! Operations: the CLI, configuration, setup and preflight, status, the HTTP endpoints
//! (`/metrics`, `/healthz`, `/readyz`, `/api/status`, dashboard) and the long-running service
//! that ties capture and delivery together.

pub mod cli;
pub mod config;
pub mod demo;
pub mod http;
pub mod logging;
pub mod resync;
pub mod service;
pub mod setup;
pub mod status;

/// Exit codes of the binary (`cli` and the demo both return them).
pub const EXIT_RUNTIME: u8 = 1;
/// Configuration or preflight failure: a person must change something first.
pub const EXIT_CONFIG: u8 = 2;
/// The replication slot stocksync consumed is missing or lost: run `setup` and `resync`.
pub const EXIT_SLOT_LOST: u8 = 3;

/// Dispatch's settings from the configuration.
pub fn dispatch_settings(config: &config::Config) -> crate::dispatch::DispatchSettings {
    use crate::dispatch::DispatchSettings;
    use crate::marketplace::ClientSettings;
    DispatchSettings {
        flush_interval: config.flush_interval,
        min_send_interval: config.min_send_interval,
        identical_request_window: config.identical_request_window,
        rate_limit_requests: config.rate_limit_requests,
        rate_limit_window: config.rate_limit_window,
        max_quantity: config.max_quantity,
        safety_stock: config.safety_stock,
        safety_stock_per_store: config.safety_stock_per_store.clone(),
        dry_run: config.dry_run,
        client: ClientSettings {
            trendyol_url: config.trendyol_url.clone(),
            hepsiburada_url: config.hepsiburada_url.clone(),
            hepsiburada_user_agent: config.hepsiburada_user_agent.clone(),
            timeout: config.request_timeout,
        },
        hepsiburada_batch_size: config.hepsiburada_batch_size,
        max_attempts: config.max_attempts.max(1),
        ..DispatchSettings::default()
    }
}

/// Capture's settings from the configuration.
pub fn capture_settings(config: &config::Config) -> crate::capture::CaptureSettings {
    crate::capture::CaptureSettings {
        slot: config.slot.clone(),
        publication: config.publication.clone(),
        streaming: config.streaming,
        ..crate::capture::CaptureSettings::default()
    }
}
