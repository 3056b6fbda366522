//! Which stores are audited, decided without writing anything: a store is read only when
//! dispatch would send to it (a `stores` row of a marketplace type, `is_active` and
//! `send_stock`, not paused, with credentials and a User-Agent). Dispatch's own gate check
//! ([`crate::stores::gates::check`]) also closes entries and takes pauses; an audit must not,
//! so it looks at the same facts read-only: a store dispatch has not paused yet (it will at
//! its next cycle) may be read once and refused, which only fails that audit.
//!
//! One audit of a store at a time: the [`crate::locks::RECONCILE`] advisory lock, held by the
//! audit's connection (it vanishes with the session, so a killed audit never blocks the next).

use std::time::Duration;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::ReconcileError;
use crate::locks;
use crate::marketplace::{Provider, StoreCredentials, UserAgents};
use crate::stores::{row, state};

/// Stores of a marketplace type, by name.
const MARKETPLACE_STORES_SQL: &str = r#"
SELECT id, name::text FROM stores
WHERE upper(btrim(type::text)) IN ('TRENDYOL', 'HEPSIBURADA')
ORDER BY name, id
"#;

/// A store that may be read.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: Uuid,
    pub name: String,
    pub provider: Provider,
    pub creds: StoreCredentials,
}

/// Why a store is not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skipped {
    #[error("no stores row")]
    NoRow,
    #[error("its type {0:?} is not a marketplace stocksync serves")]
    NotMarketplace(String),
    #[error("it is inactive or has send_stock = false")]
    Inactive,
    #[error("it is paused ({0}; `stocksync status` says why)")]
    Paused(&'static str),
    #[error("no User-Agent is configured for it (STOCKSYNC_HEPSIBURADA_USER_AGENT)")]
    NoUserAgent,
    #[error("credentials missing: {0}")]
    NoCredentials(&'static str),
}

/// Every store of a marketplace type, with its name.
pub async fn marketplace_stores(db: &Client) -> Result<Vec<(Uuid, String)>, ReconcileError> {
    Ok(db
        .query(MARKETPLACE_STORES_SQL, &[])
        .await?
        .iter()
        .map(|r| {
            let id: Uuid = r.get(0);
            let name: Option<String> = r.get(1);
            (id, name.unwrap_or_else(|| id.to_string()))
        })
        .collect())
}

/// The store as an audit target, or why it is not read.
pub async fn open(
    db: &Client,
    id: Uuid,
    name: &str,
    agents: &UserAgents,
) -> Result<Result<Target, Skipped>, ReconcileError> {
    let Some(store) = row::load_store(db, id).await? else {
        return Ok(Err(Skipped::NoRow));
    };
    let Some(provider) = Provider::from_store_type(&store.store_type) else {
        return Ok(Err(Skipped::NotMarketplace(store.store_type)));
    };
    if !store.active {
        return Ok(Err(Skipped::Inactive));
    }
    if let Some((_, kind)) = state::paused(db).await?.into_iter().find(|(s, _)| *s == id) {
        return Ok(Err(Skipped::Paused(kind.as_str())));
    }
    let seller = store.seller_id.clone().unwrap_or_default();
    let Some(user_agent) = agents.for_store(provider, id, &seller) else {
        return Ok(Err(Skipped::NoUserAgent));
    };
    Ok(match store.credentials(provider, user_agent) {
        Ok(creds) => Ok(Target {
            id,
            name: name.to_string(),
            provider,
            creds,
        }),
        Err(missing) => Err(Skipped::NoCredentials(missing)),
    })
}

/// Takes the store's audit lock on `db`'s session if it is free.
pub async fn try_lock(db: &Client, store: Uuid) -> Result<bool, ReconcileError> {
    Ok(db
        .query_one(
            locks::TRY_LOCK_SQL,
            &[&locks::RECONCILE, &locks::store_key(store)],
        )
        .await?
        .get(0))
}

/// Waits for the store's audit lock (another audit of it is running), checking every
/// `every`. False when stopped first.
pub async fn lock(
    db: &Client,
    store: Uuid,
    every: Duration,
    stop: &CancellationToken,
) -> Result<bool, ReconcileError> {
    while !try_lock(db, store).await? {
        tokio::select! {
            _ = stop.cancelled() => return Ok(false),
            _ = tokio::time::sleep(every) => {}
        }
    }
    Ok(true)
}

/// Releases the store's audit lock.
pub async fn unlock(db: &Client, store: Uuid) -> Result<(), ReconcileError> {
    db.query_one(
        locks::UNLOCK_SQL,
        &[&locks::RECONCILE, &locks::store_key(store)],
    )
    .await?;
    Ok(())
}
