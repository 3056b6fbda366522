//! The `stores` row: the application's table of stores, read defensively (an enum or varchar
//! `type`, NULLs, other columns), and the credentials it holds.

use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::StoreError;
use crate::marketplace::{Provider, StoreCredentials, UserAgents};

/// The credentials of a store for reading (batch results, listings), if it has usable ones
/// and a user agent.
pub async fn store_credentials(
    db: &impl GenericClient,
    store_id: Uuid,
    provider: Provider,
    agents: &UserAgents,
) -> Result<Option<StoreCredentials>, StoreError> {
    Ok(load_store(db, store_id).await?.and_then(|store| {
        let seller = store.seller_id.clone().unwrap_or_default();
        let agent = agents.for_store(provider, store_id, &seller)?;
        store.credentials(provider, agent).ok()
    }))
}

/// Every store that would be sent to (active, `send_stock`, a marketplace type).
const SENDABLE_STORES_SQL: &str = r#"
SELECT id, name::text, type::text, seller_id::text FROM stores
WHERE COALESCE(is_active::boolean, false) AND COALESCE(send_stock::boolean, false)
  AND upper(btrim(type::text)) IN ('TRENDYOL', 'HEPSIBURADA')
ORDER BY id
"#;

/// A store that would be sent to.
#[derive(Debug, Clone)]
pub struct SendableStore {
    pub id: Uuid,
    pub name: Option<String>,
    pub provider: Provider,
    pub seller_id: String,
}

/// Every store that would be sent to.
pub async fn sendable_stores(db: &impl GenericClient) -> Result<Vec<SendableStore>, StoreError> {
    Ok(db
        .query(SENDABLE_STORES_SQL, &[])
        .await?
        .iter()
        .filter_map(|r| {
            Some(SendableStore {
                id: r.get(0),
                name: r.get(1),
                provider: Provider::from_store_type(r.get::<_, Option<&str>>(2)?)?,
                seller_id: r.get::<_, Option<String>>(3).unwrap_or_default(),
            })
        })
        .collect())
}

/// The columns of `stores` stocksync reads, cast so an enum or varchar `type`, a numeric
/// seller id or an integer flag read the same.
const STORE_SQL: &str = r#"
SELECT type::text, is_active::boolean, send_stock::boolean, seller_id::text, api_key::text,
       api_secret::text
FROM stores WHERE id = $1
"#;

/// The `stores` row as dispatch needs it. `Debug` shows whether the key and secret are
/// there, never what they are.
#[derive(Clone)]
pub struct StoreRow {
    pub store_type: String,
    pub active: bool,
    pub seller_id: Option<String>,
    pub api_key: Option<String>,
    pub api_secret: Option<String>,
}

impl std::fmt::Debug for StoreRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("StoreRow")
            .field("store_type", &self.store_type)
            .field("active", &self.active)
            .field("seller_id", &self.seller_id)
            .field("api_key", &hidden(&self.api_key))
            .field("api_secret", &hidden(&self.api_secret))
            .finish()
    }
}

impl StoreRow {
    /// The credentials (sent with `user_agent`), or which field is missing.
    pub fn credentials(
        &self,
        provider: Provider,
        user_agent: String,
    ) -> Result<StoreCredentials, &'static str> {
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
        Ok(StoreCredentials {
            user_agent,
            ..self.credentials_as_is(provider)
        })
    }

    /// Whatever is there (empty for missing fields): its fingerprint notices any change.
    pub fn credentials_as_is(&self, provider: Provider) -> StoreCredentials {
        StoreCredentials {
            provider,
            seller_id: self.seller_id.clone().unwrap_or_default(),
            api_key: self.api_key.clone(),
            api_secret: self.api_secret.clone().unwrap_or_default(),
            user_agent: String::new(),
        }
    }
}

/// Reads the `stores` row. Columns are read with `try_get`, so a NULL or an unexpected type
/// is reported with the row and column instead of a panic.
pub async fn load_store(
    db: &impl GenericClient,
    store_id: Uuid,
) -> Result<Option<StoreRow>, StoreError> {
    let Some(row) = db.query_opt(STORE_SQL, &[&store_id]).await? else {
        return Ok(None);
    };
    let column = |e: tokio_postgres::Error, column: &'static str| StoreError::BadStoreRow {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_key_or_secret() {
        let row = StoreRow {
            store_type: "TRENDYOL".into(),
            active: true,
            seller_id: Some("1001".into()),
            api_key: Some("the-api-key".into()),
            api_secret: Some("the-api-secret".into()),
        };
        let text = format!("{row:?} {row:#?}");
        assert!(!text.contains("the-api-key"), "{text}");
        assert!(!text.contains("the-api-secret"), "{text}");
        assert!(
            text.contains("1001") && text.contains("<redacted>"),
            "{text}"
        );
    }

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
            row.credentials(Provider::Trendyol, "ua".into())
                .unwrap_err(),
            "stores.api_key is empty"
        );
        // Hepsiburada authenticates with merchant id and secret only.
        assert!(row.credentials(Provider::Hepsiburada, "ua".into()).is_ok());
        let blank = StoreRow {
            api_secret: Some("  ".into()),
            ..row
        };
        assert_eq!(
            blank
                .credentials(Provider::Hepsiburada, "ua".into())
                .unwrap_err(),
            "stores.api_secret is empty"
        );
        // Filling a field changes the fingerprint, so a pause for it lifts.
        let key = crate::marketplace::FingerprintKey::from_bytes(vec![1; 32]);
        let filled = StoreRow {
            api_secret: Some("new".into()),
            ..blank
        };
        assert_ne!(
            filled
                .credentials_as_is(Provider::Hepsiburada)
                .fingerprint(&key),
            StoreRow {
                api_secret: None,
                ..filled
            }
            .credentials_as_is(Provider::Hepsiburada)
            .fingerprint(&key)
        );
    }
}
