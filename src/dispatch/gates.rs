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

use super::store_state::{self, PauseKind, StoreState};
use super::{DispatchError, Dispatcher};
use crate::marketplace::{Provider, StoreCredentials};
use crate::metrics::metrics;
use crate::queue::{self, Outcome};

/// The columns of `stores` dispatch reads, cast to text so an enum or varchar `type` reads.
const STORE_SQL: &str = r#"
SELECT type::text, is_active, send_stock, seller_id::text, api_key::text, api_secret::text
FROM stores WHERE id = $1
"#;

/// The `stores` row as dispatch needs it.
#[derive(Debug, Clone)]
pub(super) struct StoreRow {
    pub store_type: String,
    pub active: bool,
    pub seller_id: Option<String>,
    pub api_key: Option<String>,
    pub api_secret: Option<String>,
}

impl StoreRow {
    /// The credentials, or which field is missing.
    pub fn credentials(&self, provider: Provider) -> Result<StoreCredentials, &'static str> {
        let present = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        if !present(&self.seller_id) {
            return Err("stores.seller_id is empty");
        }
        if !present(&self.api_secret) {
            return Err("stores.api_secret is empty");
        }
        if provider == Provider::Trendyol && !present(&self.api_key) {
            return Err("stores.api_key is empty");
        }
        Ok(self.credentials_as_is(provider))
    }

    /// Whatever is there (empty for missing fields): its fingerprint notices any change.
    pub fn credentials_as_is(&self, provider: Provider) -> StoreCredentials {
        StoreCredentials {
            provider,
            seller_id: self.seller_id.clone().unwrap_or_default(),
            api_key: self.api_key.clone(),
            api_secret: self.api_secret.clone().unwrap_or_default(),
        }
    }
}

/// Reads the `stores` row. Columns are read with `try_get`, so a NULL or an unexpected type
/// is reported with the row and column instead of a panic.
pub(super) async fn load_store(
    db: &impl GenericClient,
    store_id: Uuid,
) -> Result<Option<StoreRow>, DispatchError> {
    let Some(row) = db.query_opt(STORE_SQL, &[&store_id]).await? else {
        return Ok(None);
    };
    let column = |e: tokio_postgres::Error, column: &'static str| DispatchError::BadStoreRow {
        store: store_id,
        column,
        problem: e.to_string(),
    };
    let is_active: Option<bool> = row.try_get(1).map_err(|e| column(e, "is_active"))?;
    let send_stock: Option<bool> = row.try_get(2).map_err(|e| column(e, "send_stock"))?;
    Ok(Some(StoreRow {
        store_type: row
            .try_get::<_, Option<String>>(0)
            .map_err(|e| column(e, "type"))?
            .unwrap_or_default(),
        active: is_active == Some(true) && send_stock == Some(true),
        seller_id: row.try_get(3).map_err(|e| column(e, "seller_id"))?,
        api_key: row.try_get(4).map_err(|e| column(e, "api_key"))?,
        api_secret: row.try_get(5).map_err(|e| column(e, "api_secret"))?,
    }))
}

/// The credentials of a store for reading batch results (any active state), if usable.
pub(super) async fn store_credentials(
    db: &impl GenericClient,
    store_id: Uuid,
    provider: Provider,
) -> Result<Option<StoreCredentials>, DispatchError> {
    Ok(load_store(db, store_id)
        .await?
        .and_then(|store| store.credentials(provider).ok()))
}

/// A store that may be sent to.
#[derive(Debug, Clone)]
pub(super) struct OpenStore {
    pub provider: Provider,
    pub creds: StoreCredentials,
    /// Of the credentials in `stores` now: a pause for refused credentials names it.
    pub fingerprint: String,
    pub state: StoreState,
}

/// What the gates decided.
pub(super) enum Gate {
    /// Nothing to send now (closed, paused, or a pause was just taken).
    Shut,
    Open(Box<OpenStore>),
}

/// Checks a store's gates: closes the entries of a store that gets no requests, keeps a
/// paused store paused unless its credentials changed, pauses one without credentials.
pub(super) async fn check(
    d: &Dispatcher,
    db: &impl GenericClient,
    store_id: Uuid,
) -> Result<Gate, DispatchError> {
    let Some(store) = load_store(db, store_id).await? else {
        return close(db, store_id, Outcome::StoreMissing).await;
    };
    let Some(provider) = Provider::from_store_type(&store.store_type) else {
        return close(db, store_id, Outcome::StoreTypeIgnored).await;
    };
    if !store.active {
        return close(db, store_id, Outcome::StoreInactive).await;
    }
    let state = store_state::read(db, store_id, d.settings.min_send_interval).await?;
    let fingerprint = store.credentials_as_is(provider).fingerprint();
    if let Some(reason) = &state.paused_reason {
        if state.paused_credentials.as_deref() == Some(fingerprint.as_str()) {
            store_state::recheck_later(db, store_id, store_state::PAUSE_RECHECK).await?;
            return Ok(Gate::Shut);
        }
        info!(store = %store_id, previous = %reason, "store credentials changed; resuming the store");
        store_state::unpause(db, Some(store_id)).await?;
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
) -> Result<Gate, DispatchError> {
    store_state::mark_gated(db, store_id, outcome.as_str()).await?;
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
pub(super) async fn pause(
    db: &impl GenericClient,
    store_id: Uuid,
    reason: &str,
    fingerprint: &str,
) -> Result<(), DispatchError> {
    warn!(store = %store_id, reason, "store paused until its credentials change (or `stocksync retry-failed`)");
    store_state::pause(db, store_id, reason, fingerprint).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_credentials_name_the_missing_field() {
        let row = StoreRow {
            store_type: "TRENDYOL".into(),
            active: true,
            seller_id: Some("1".into()),
            api_key: None,
            api_secret: Some("s".into()),
        };
        assert_eq!(
            row.credentials(Provider::Trendyol).unwrap_err(),
            "stores.api_key is empty"
        );
        // Hepsiburada authenticates with merchant id and secret only.
        assert!(row.credentials(Provider::Hepsiburada).is_ok());
        let blank = StoreRow {
            api_secret: Some("  ".into()),
            ..row
        };
        assert_eq!(
            blank.credentials(Provider::Hepsiburada).unwrap_err(),
            "stores.api_secret is empty"
        );
        // Filling a field changes the fingerprint, so a pause for it lifts.
        let filled = StoreRow {
            api_secret: Some("new".into()),
            ..blank
        };
        assert_ne!(
            filled
                .credentials_as_is(Provider::Hepsiburada)
                .fingerprint(),
            StoreRow {
                api_secret: None,
                ..filled
            }
            .credentials_as_is(Provider::Hepsiburada)
            .fingerprint()
        );
    }
}
