//! Gates and pauses: may this store be sent to at all, and with which credentials?
//!
//! * No `stores` row, a type other than TRENDYOL/HEPSIBURADA, `is_active = false` or
//!   `send_stock = false`: the store's pending entries are closed with that outcome and no
//!   request is ever sent; the reason is remembered so the store is resynced when it
//!   becomes sendable again (the `stores` table is not replicated).
//! * Missing credentials, or credentials the marketplace refused (401): the store is paused
//!   until its credentials change in `stores` (or `retry-failed`).

use tokio_postgres::GenericClient;
use tracing::{debug, info, warn};
use uuid::Uuid;

use std::time::Duration;

use super::row::load_store;
use super::state::{self, PauseKind, StoreState};
use super::StoreError;
use crate::marketplace::{Provider, StoreCredentials};
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
}

/// What the gates decided.
pub enum Gate {
    /// Nothing to send now (closed, paused, or a pause was just taken).
    Shut,
    Open(Box<OpenStore>),
}

/// Checks a store's gates: closes the entries of a store that gets no requests, keeps a
/// paused store paused unless its credentials changed, pauses one without credentials.
pub async fn check(
    db: &impl GenericClient,
    store_id: Uuid,
    min_send_interval: Duration,
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
    let state = state::read(db, store_id, min_send_interval).await?;
    let fingerprint = store.credentials_as_is(provider).fingerprint();
    if let Some(reason) = &state.paused_reason {
        if state.paused_credentials.as_deref() == Some(fingerprint.as_str()) {
            state::recheck_later(db, store_id, state::PAUSE_RECHECK).await?;
            return Ok(Gate::Shut);
        }
        info!(store = %store_id, previous = %reason, "store credentials changed; resuming the store");
        state::unpause(db, Some(store_id)).await?;
    }
    let creds = match store.credentials(provider) {
        Ok(c) => c,
        Err(missing) => {
            let reason = PauseKind::CredentialsMissing.reason(&format!(": {missing}"));
            pause(db, store_id, &reason, &fingerprint).await?;
            return Ok(Gate::Shut);
        }
    };
    Ok(Gate::Open(Box::new(OpenStore {
        provider,
        creds,
        fingerprint,
        state,
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

/// Pauses a store until its credentials change (or `retry-failed`). `/metrics` shows it
/// (`stocksync_store_paused`, by kind) from the database, whichever instance paused it.
pub async fn pause(
    db: &impl GenericClient,
    store_id: Uuid,
    reason: &str,
    fingerprint: &str,
) -> Result<(), StoreError> {
    warn!(store = %store_id, reason, "store paused until its credentials change (or `stocksync retry-failed`)");
    state::pause(db, store_id, reason, fingerprint).await?;
    Ok(())
}
