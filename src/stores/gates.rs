//! Gates and pauses: may this store be sent to (or read) at all, and with which credentials?
//!
//! * No `stores` row, a type other than TRENDYOL/HEPSIBURADA, `is_active = false` or
//!   `send_stock = false`: the store's pending entries are closed with that outcome and no
//!   request is ever sent; the reason is remembered so the store is resynced when it
//!   becomes sendable again (the `stores` table is not replicated).
//! * A Hepsiburada store with no user agent configured: paused (`not_configured`) and never
//!   sent a request; the pause lifts when stocksync runs with one configured.
//! * Missing credentials, or credentials the marketplace refused (401): paused
//!   (`credentials`) until the credentials change in `stores` (or `retry-failed`). Which
//!   credentials were refused is kept as a fingerprint keyed with the install's key
//!   ([`StoreCredentials::fingerprint`]); one an earlier version wrote (a bare SHA-256) is
//!   compared by its own rule once and rewritten keyed.
//! * A 403 (an IP block or overload, not necessarily the credentials): paused (`forbidden`);
//!   when its wait is over the store is opened for one probe request, whose answer lifts the
//!   pause or doubles the wait (see [`crate::dispatch`]).

use std::time::Duration;

use tokio_postgres::GenericClient;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::row::load_store;
use super::state::{self, Pause, PauseKind, StoreState};
use super::StoreError;
use crate::marketplace::{
    FingerprintKey, Provider, StoreCredentials, UserAgents, FINGERPRINT_PREFIX,
};
use crate::metrics::metrics;
use crate::queue::{self, Outcome};

/// A store that may be sent to.
#[derive(Debug, Clone)]
pub struct OpenStore {
    pub provider: Provider,
    pub creds: StoreCredentials,
    /// Of the credentials in `stores` now: a pause for refused credentials names it.
    pub fingerprint: String,
    pub state: StoreState,
    /// A forbidden store whose wait is over: one request decides whether the block lifted.
    pub probe: bool,
}

/// What the gates decided.
pub enum Gate {
    /// Nothing to send now (closed, paused, or a pause was just taken).
    Shut,
    Open(Box<OpenStore>),
}

/// What the gates need from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct GateSettings<'a> {
    pub min_send_interval: Duration,
    pub user_agents: &'a UserAgents,
    /// This install's fingerprint key ([`state::fingerprint_key`], read once by the caller:
    /// it never changes, and the gates run before every cycle).
    pub fingerprint_key: &'a FingerprintKey,
}

/// Checks a store's gates: closes the entries of a store that gets no requests, keeps a
/// paused store paused unless what paused it changed, pauses one without credentials or
/// without a user agent.
pub async fn check(
    db: &impl GenericClient,
    store_id: Uuid,
    settings: GateSettings<'_>,
) -> Result<Gate, StoreError> {
    let Some(store) = load_store(db, store_id).await? else {
        return close(db, store_id, Outcome::StoreMissing).await;
    };
    let Some(provider) = Provider::from_store_type(&store.store_type) else {
        return close(db, store_id, Outcome::StoreTypeIgnored).await;
    };
    if !store.active {
        return close(db, store_id, Outcome::StoreInactive).await;
    }
    let state = state::read(db, store_id, settings.min_send_interval).await?;
    let as_is = store.credentials_as_is(provider);
    let fingerprint = as_is.fingerprint(settings.fingerprint_key);
    let seller = store.seller_id.clone().unwrap_or_default();
    let user_agent = settings.user_agents.for_store(provider, store_id, &seller);
    let mut probe = false;
    if let Some(reason) = &state.paused_reason {
        let lifted = match state.pause_kind {
            PauseKind::NotConfigured => user_agent.is_some(),
            PauseKind::Credentials | PauseKind::Forbidden | PauseKind::Other => {
                match state.paused_credentials.as_deref() {
                    // Written by a version before keyed fingerprints: compared by its rule
                    // once, then rewritten, so an upgrade lifts no pause by itself.
                    Some(old)
                        if !old.starts_with(FINGERPRINT_PREFIX)
                            && old == as_is.legacy_fingerprint() =>
                    {
                        state::rewrite_fingerprint(db, store_id, old, &fingerprint).await?;
                        false
                    }
                    stored => stored != Some(fingerprint.as_str()),
                }
            }
        };
        if lifted {
            info!(store = %store_id, previous = %reason, "what paused the store changed; resuming it");
            state::unpause(db, Some(store_id)).await?;
        } else {
            match state.pause_kind {
                PauseKind::Forbidden if !state.backing_off => probe = true,
                // Not yet time to probe: the store is not due before then anyway.
                PauseKind::Forbidden => return Ok(Gate::Shut),
                PauseKind::NotConfigured => {
                    state::recheck_later(db, store_id, state::NOT_CONFIGURED_RECHECK).await?;
                    return Ok(Gate::Shut);
                }
                PauseKind::Credentials | PauseKind::Other => {
                    state::recheck_later(db, store_id, state::PAUSE_RECHECK).await?;
                    return Ok(Gate::Shut);
                }
            }
        }
    }
    let Some(user_agent) = user_agent else {
        let reason = "no Hepsiburada user agent configured: set STOCKSYNC_HEPSIBURADA_USER_AGENT, \
                      or this store in STOCKSYNC_HEPSIBURADA_USER_AGENT_PER_STORE, to the developer \
                      user name the merchant authorised";
        let pause = Pause {
            kind: PauseKind::NotConfigured,
            reason,
            fingerprint: &fingerprint,
            look_again_after: state::NOT_CONFIGURED_RECHECK,
            forbidden: false,
        };
        self::pause(db, store_id, &pause).await?;
        return Ok(Gate::Shut);
    };
    let creds = match store.credentials(provider, user_agent) {
        Ok(c) => c,
        Err(missing) => {
            let reason = format!("credentials missing: {missing}");
            let pause = Pause {
                kind: PauseKind::Credentials,
                reason: &reason,
                fingerprint: &fingerprint,
                look_again_after: state::PAUSE_RECHECK,
                forbidden: false,
            };
            self::pause(db, store_id, &pause).await?;
            return Ok(Gate::Shut);
        }
    };
    Ok(Gate::Open(Box::new(OpenStore {
        provider,
        creds,
        fingerprint,
        state,
        probe,
    })))
}

async fn close(
    db: &impl GenericClient,
    store_id: Uuid,
    outcome: Outcome,
) -> Result<Gate, StoreError> {
    state::mark_gated(db, store_id, outcome.as_str()).await?;
    let n = queue::close_store(db, store_id, outcome).await?;
    if n > 0 {
        debug!(store = %store_id, entries = n, %outcome, "entries closed without a request");
        metrics()
            .items_sent
            .with_label_values(&[&store_id.to_string(), outcome.as_str()])
            .inc_by(n);
    }
    Ok(Gate::Shut)
}

/// Pauses a store (one warning line). `/metrics` shows it (`stocksync_store_paused`, by kind)
/// from the database, whichever instance paused it.
pub async fn pause(
    db: &impl GenericClient,
    store_id: Uuid,
    pause: &Pause<'_>,
) -> Result<(), StoreError> {
    let until = match pause.kind {
        PauseKind::Forbidden => format!(
            "the store probes itself in {}",
            humantime::format_duration(Duration::from_secs(pause.look_again_after.as_secs()))
        ),
        PauseKind::NotConfigured => "until stocksync runs with it configured".to_string(),
        PauseKind::Credentials | PauseKind::Other => {
            "until its credentials change (or `stocksync retry-failed`)".to_string()
        }
    };
    warn!(store = %store_id, kind = pause.kind.as_str(), reason = pause.reason, "store paused {until}");
    state::pause(db, store_id, pause).await
}
