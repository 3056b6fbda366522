//! The database's side of a comparison: the store's listed products by marketplace key, and
//! the quantity each should show (the quantity SQL, [`crate::stock`]).
//!
//! The keys are loaded once per audit (a store of 250,000 listings is ~20 MB here) and looked
//! up in the marketplace's spelling ([`match_key`]). A product without a key is never sent
//! (dispatch closes it as `no_key`) and is not compared. Two listed products with the same
//! key are ambiguous (dispatch sends one of them per batch): their listing is not compared
//! either, and the audit counts it apart.

use std::collections::{HashMap, HashSet};

use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::ReconcileError;
use crate::marketplace::read::match_key;
use crate::marketplace::Provider;
use crate::stock::QuantityRules;

/// The store's listed products and their marketplace keys (Trendyol barcode, Hepsiburada
/// sku), as dispatch reads them.
const LISTED_KEYS_SQL: &str = r#"
SELECT ps.product_id, p.barcode::text, p.sku::text
FROM product_stores ps JOIN products p ON p.id = ps.product_id
WHERE ps.store_id = $1
"#;

#[derive(Debug, Clone)]
enum Slot {
    One { product: Uuid, key: String },
    Ambiguous,
}

/// What a marketplace key names in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// A listed product, with its key as the database spells it.
    Product(Uuid, &'a str),
    /// Several listed products share the key.
    Ambiguous,
    /// No listed product of the store has it.
    Unknown,
}

/// The store's listed products by key.
#[derive(Debug)]
pub struct Listed {
    provider: Provider,
    by_key: HashMap<String, Slot>,
}

impl Listed {
    pub async fn load(
        db: &impl GenericClient,
        store: Uuid,
        provider: Provider,
    ) -> Result<Listed, ReconcileError> {
        let rows = db.query(LISTED_KEYS_SQL, &[&store]).await?;
        Ok(Listed::from_rows(
            provider,
            rows.iter().map(|r| {
                let key: Option<String> = match provider {
                    Provider::Trendyol => r.get(1),
                    Provider::Hepsiburada => r.get(2),
                };
                (r.get(0), key)
            }),
        ))
    }

    fn from_rows(provider: Provider, rows: impl Iterator<Item = (Uuid, Option<String>)>) -> Listed {
        let mut by_key = HashMap::new();
        for (product, key) in rows {
            let Some(key) = key.filter(|k| !k.trim().is_empty()) else {
                continue;
            };
            by_key
                .entry(match_key(provider, &key))
                .and_modify(|slot| *slot = Slot::Ambiguous)
                .or_insert(Slot::One { product, key });
        }
        Listed { provider, by_key }
    }

    /// What the marketplace key `key` names.
    pub fn find(&self, key: &str) -> Lookup<'_> {
        match self.by_key.get(&match_key(self.provider, key)) {
            Some(Slot::One { product, key }) => Lookup::Product(*product, key),
            Some(Slot::Ambiguous) => Lookup::Ambiguous,
            None => Lookup::Unknown,
        }
    }

    /// Listed products whose key (in the marketplace's spelling) is not in `seen`, in
    /// product order (so a resumed audit goes on after the last one it checked).
    pub fn not_seen(&self, seen: &HashSet<String>) -> Vec<(Uuid, String)> {
        let mut out: Vec<(Uuid, String)> = self
            .by_key
            .iter()
            .filter(|(k, _)| !seen.contains(*k))
            .filter_map(|(_, slot)| match slot {
                Slot::One { product, key } => Some((*product, key.clone())),
                Slot::Ambiguous => None,
            })
            .collect();
        out.sort();
        out
    }
}

/// The quantity each product should show in the store (every one asked for comes back).
pub async fn truth(
    db: &impl GenericClient,
    store: Uuid,
    products: &[Uuid],
    rules: &QuantityRules,
) -> Result<HashMap<Uuid, i32>, ReconcileError> {
    Ok(crate::stock::compute_quantities(db, store, products, rules)
        .await?
        .into_iter()
        .map(|q| (q.product_id, q.quantity))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_the_marketplace_spelling_and_ambiguity() {
        let (a, b, c, d) = (
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Uuid::from_u128(3),
            Uuid::from_u128(4),
        );
        let listed = Listed::from_rows(
            Provider::Hepsiburada,
            [
                (a, Some("sku-a".to_string())),
                (b, Some("SKU-B".to_string())),
                (c, Some("sku-b".to_string())),
                (d, Some("  ".to_string())),
            ]
            .into_iter(),
        );
        assert_eq!(listed.find("SKU-A"), Lookup::Product(a, "sku-a"));
        assert_eq!(listed.find("sku-b"), Lookup::Ambiguous);
        assert_eq!(listed.find("nope"), Lookup::Unknown);
        let seen: HashSet<String> = HashSet::new();
        assert_eq!(listed.not_seen(&seen), vec![(a, "sku-a".to_string())]);
        let seen: HashSet<String> = [match_key(Provider::Hepsiburada, "SKU-A")].into();
        assert!(listed.not_seen(&seen).is_empty());

        let ty = Listed::from_rows(
            Provider::Trendyol,
            [(a, Some("869 001".into()))].into_iter(),
        );
        assert_eq!(ty.find("869001"), Lookup::Product(a, "869 001"));
        assert_eq!(ty.find("869 001"), Lookup::Product(a, "869 001"));
    }
}
