//! Operations: the CLI, configuration, setup and preflight, status, the HTTP endpoints
//! (`/metrics`, `/healthz`, `/readyz`, `/api/status`, dashboard) and the long-running service
//! that ties capture and delivery together.

pub mod cli;
pub mod config;
pub mod demo;
pub mod history;
pub mod http;
pub mod logging;
pub mod notify;
pub mod reconcile;
pub mod resync;
pub mod service;
pub mod setup;
pub mod status;
pub mod supervise;

/// Exit codes of the binary (`cli` and the demo both return them).
pub const EXIT_RUNTIME: u8 = 1;
/// Configuration or preflight failure: a person must change something first.
pub const EXIT_CONFIG: u8 = 2;
/// The replication slot stocksync consumed is missing or lost: run `setup` and `resync`.
pub const EXIT_SLOT_LOST: u8 = 3;

/// The request limits from the configuration (shared by dispatch and reconciliation).
pub fn limit_settings(config: &config::Config) -> crate::stores::LimitSettings {
    use crate::marketplace::ServiceGroup;
    let mut limits = crate::stores::LimitSettings {
        rate_limit_requests: config.rate_limit_requests,
        rate_limit_window: config.rate_limit_window,
        identical_request_window: config.identical_request_window,
        min_send_interval: config.min_send_interval,
        ..crate::stores::LimitSettings::default()
    };
    limits.per_minute.insert(
        ServiceGroup::TrendyolWrite,
        config.trendyol_writes_per_minute,
    );
    limits
        .per_minute
        .insert(ServiceGroup::TrendyolRead, config.trendyol_reads_per_minute);
    limits.per_minute.insert(
        ServiceGroup::HepsiburadaRead,
        config.hepsiburada_reads_per_minute,
    );
    limits
}

/// Dispatch's settings from the configuration.
pub fn dispatch_settings(config: &config::Config) -> crate::dispatch::DispatchSettings {
    use crate::dispatch::DispatchSettings;
    use crate::marketplace::ClientSettings;
    DispatchSettings {
        flush_interval: config.flush_interval,
        limits: limit_settings(config),
        user_agents: user_agents(config),
        max_retry_after: config.max_retry_after,
        forbidden_backoff: config.forbidden_backoff,
        max_quantity: config.max_quantity,
        safety_stock: config.safety_stock,
        safety_stock_per_store: config.safety_stock_per_store.clone(),
        dry_run: config.dry_run,
        client: ClientSettings {
            trendyol_url: config.trendyol_url.clone(),
            hepsiburada_url: config.hepsiburada_url.clone(),
            timeout: config.request_timeout,
        },
        hepsiburada_batch_size: config.hepsiburada_batch_size,
        max_attempts: config.max_attempts.max(1),
        ..DispatchSettings::default()
    }
}

/// Who stocksync says it is to the marketplaces, from the configuration.
pub fn user_agents(config: &config::Config) -> crate::marketplace::UserAgents {
    crate::marketplace::UserAgents {
        trendyol_integrator: config.trendyol_integrator.clone(),
        hepsiburada_default: config.hepsiburada_user_agent.clone(),
        hepsiburada_per_store: config.hepsiburada_user_agent_per_store.clone(),
    }
}

/// Reconciliation's settings from the configuration: dispatch's limits, user agents and
/// quantity rules, its share of the Trendyol read cap, all of the Hepsiburada listings cap.
pub fn reconcile_settings(config: &config::Config) -> crate::reconcile::ReconcileSettings {
    use crate::marketplace::ServiceGroup;
    let dispatch = dispatch_settings(config);
    let cap = |group| {
        dispatch
            .limits
            .per_minute
            .get(&group)
            .copied()
            .unwrap_or(u32::MAX)
    };
    let share =
        u64::from(cap(ServiceGroup::TrendyolRead)) * u64::from(config.reconcile_read_share) / 100;
    crate::reconcile::ReconcileSettings {
        client: dispatch.client.clone(),
        user_agents: dispatch.user_agents.clone(),
        trendyol_reads_per_minute: u32::try_from(share).unwrap_or(u32::MAX).max(1),
        hepsiburada_reads_per_minute: cap(ServiceGroup::HepsiburadaRead),
        hepsiburada_page_limit: config.hepsiburada_page_limit,
        rules: crate::stock::QuantityRules {
            max_quantity: config.max_quantity,
            safety_stock: config.safety_stock,
        },
        rules_per_store: config
            .safety_stock_per_store
            .keys()
            .map(|store| (*store, dispatch.rules_for(*store)))
            .collect(),
        motion_window: config.flush_interval,
        slot: config.slot.clone(),
        capture_wait: std::time::Duration::from_secs(60),
        interval: config.reconcile_interval,
        fix: config.reconcile_fix && !config.dry_run,
        confirm_after: config.reconcile_confirm_after,
        limits: dispatch.limits,
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
