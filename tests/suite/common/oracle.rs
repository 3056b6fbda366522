//! The convergence oracle: what every marketplace listing should show, computed in plain
//! Rust from the four application tables (independently of stocksync's quantity SQL and of
//! `stocksync::stock::reference`), and compared with the mock marketplace's catalogues.
//!
//! Rules (issue 3): a simple product shows `max(0, sellable_quantity)` of its row in the store
//! (no row: 0); a set shows `MIN(floor(available(component) / quantity))` over its items, a
//! component set using its own computed quantity; no items, a quantity <= 0 or a cycle make
//! the set 0; the set's own row only lists it. Then `min(max_quantity, max(0, q - safety))`.
//! Only active stores (`is_active AND send_stock`) of type TRENDYOL / HEPSIBURADA with
//! credentials are expected at the marketplace; the key is the barcode (Trendyol) or the sku
//! (Hepsiburada). A key the mock knows that no listed product of the store has any more must
//! show 0 (a deleted listing is pushed as 0).

use std::collections::{HashMap, HashSet};

use stocksync::mock::{Marketplace, MockMarketplace};
use tokio_postgres::Client;
use uuid::Uuid;

pub struct Store {
    pub id: Uuid,
    pub marketplace: Marketplace,
    pub seller_id: String,
}

pub struct Oracle {
    products: HashMap<Uuid, (bool, Option<String>, Option<String>)>,
    items: HashMap<Uuid, Vec<(Uuid, i64)>>,
    stock: HashMap<(Uuid, Uuid), i64>,
    pub stores: Vec<Store>,
    pub max_quantity: i64,
}

/// One disagreement between the database and the marketplace.
#[derive(Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub store: Uuid,
    /// `None` for a key no listed product of the store has.
    pub product: Option<Uuid>,
    pub key: String,
    pub expected: i64,
    pub actual: Option<i64>,
}

impl Oracle {
    pub async fn load(client: &Client) -> Oracle {
        let mut products = HashMap::new();
        for r in client
            .query("SELECT id, product_type, barcode, sku FROM products", &[])
            .await
            .unwrap()
        {
            let kind: Option<String> = r.get(1);
            products.insert(
                r.get::<_, Uuid>(0),
                (kind.as_deref() == Some("SET"), r.get(2), r.get(3)),
            );
        }
        let mut items: HashMap<Uuid, Vec<(Uuid, i64)>> = HashMap::new();
        for r in client
            .query(
                "SELECT set_product_id, component_product_id, quantity FROM product_set_items \
                 WHERE set_product_id IS NOT NULL AND component_product_id IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
        {
            let quantity: Option<i32> = r.get(2);
            items
                .entry(r.get(0))
                .or_default()
                .push((r.get(1), i64::from(quantity.unwrap_or(0))));
        }
        let mut stock = HashMap::new();
        for r in client
            .query(
                "SELECT product_id, store_id, sellable_quantity FROM product_stores \
                 WHERE product_id IS NOT NULL AND store_id IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
        {
            let q: Option<i32> = r.get(2);
            stock.insert((r.get(0), r.get(1)), i64::from(q.unwrap_or(0)));
        }
        let mut stores = Vec::new();
        for r in client
            .query(
                "SELECT id, type, seller_id FROM stores WHERE is_active AND send_stock \
                 AND seller_id <> '' AND api_secret <> '' \
                 AND (type = 'HEPSIBURADA' OR (type = 'TRENDYOL' AND api_key <> ''))",
                &[],
            )
            .await
            .unwrap()
        {
            let kind: String = r.get(1);
            stores.push(Store {
                id: r.get(0),
                marketplace: if kind == "TRENDYOL" {
                    Marketplace::Trendyol
                } else {
                    Marketplace::Hepsiburada
                },
                seller_id: r.get(2),
            });
        }
        Oracle {
            products,
            items,
            stock,
            stores,
            max_quantity: 20_000,
        }
    }

    /// Available quantity of `product` in `store` before clamping.
    pub fn available(&self, product: Uuid, store: Uuid) -> i64 {
        self.available_on_path(product, store, &mut Vec::new())
    }

    fn available_on_path(&self, product: Uuid, store: Uuid, path: &mut Vec<Uuid>) -> i64 {
        let is_set = self.products.get(&product).is_some_and(|p| p.0);
        if !is_set {
            return self
                .stock
                .get(&(product, store))
                .copied()
                .unwrap_or(0)
                .max(0);
        }
        if path.contains(&product) {
            return 0; // a cycle: the set counts 0
        }
        let Some(items) = self.items.get(&product).filter(|i| !i.is_empty()) else {
            return 0;
        };
        if items.iter().any(|(_, q)| *q <= 0) {
            return 0;
        }
        path.push(product);
        let mut min = i64::MAX;
        for (component, quantity) in items {
            let available = self.available_on_path(*component, store, path);
            min = min.min(available / quantity);
        }
        path.pop();
        // A cycle anywhere below makes this set 0 as well (its expansion never ends).
        if self.has_cycle(product, &mut Vec::new()) {
            return 0;
        }
        min
    }

    fn has_cycle(&self, product: Uuid, path: &mut Vec<Uuid>) -> bool {
        if path.contains(&product) {
            return true;
        }
        let Some(items) = self.items.get(&product) else {
            return false;
        };
        path.push(product);
        let found = items
            .iter()
            .filter(|(c, _)| self.products.get(c).is_some_and(|p| p.0))
            .any(|(c, _)| self.has_cycle(*c, path));
        path.pop();
        found
    }

    /// The quantity the marketplace should show.
    pub fn expected(&self, product: Uuid, store: Uuid) -> i64 {
        self.available(product, store).clamp(0, self.max_quantity)
    }

    fn key(&self, product: Uuid, marketplace: Marketplace) -> Option<String> {
        let p = self.products.get(&product)?;
        let key = match marketplace {
            Marketplace::Trendyol => p.1.clone(),
            Marketplace::Hepsiburada => p.2.clone(),
        };
        key.filter(|k| !k.trim().is_empty())
    }

    /// Every pair the marketplace should show, with what it shows.
    pub fn mismatches(&self, mock: &MockMarketplace) -> (usize, Vec<Mismatch>) {
        let state = mock.state();
        let mut checked = 0;
        let mut out = Vec::new();
        for store in &self.stores {
            let account = state.account(store.marketplace, &store.seller_id);
            let mut listed_keys = HashSet::new();
            for (product, _) in self
                .stock
                .keys()
                .filter(|(_, s)| *s == store.id)
                .map(|(p, s)| (*p, *s))
            {
                let Some(key) = self.key(product, store.marketplace) else {
                    continue;
                };
                listed_keys.insert(key.clone());
                let expected = self.expected(product, store.id);
                let actual = account.and_then(|a| a.stock.get(&key).copied());
                checked += 1;
                if actual != Some(expected) {
                    out.push(Mismatch {
                        store: store.id,
                        product: Some(product),
                        key,
                        expected,
                        actual,
                    });
                }
            }
            // Delisted: what the marketplace still shows must be 0.
            if let Some(account) = account {
                for (key, actual) in &account.stock {
                    if !listed_keys.contains(key) && *actual != 0 {
                        checked += 1;
                        out.push(Mismatch {
                            store: store.id,
                            product: None,
                            key: key.clone(),
                            expected: 0,
                            actual: Some(*actual),
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| (a.store, &a.key).cmp(&(b.store, &b.key)));
        (checked, out)
    }
}

/// Requests the mock refused for a reason stocksync could have avoided (auth, identical
/// body, validation, rate limit), ignoring injected faults.
pub fn avoidable_refusals(mock: &MockMarketplace) -> Vec<String> {
    mock.requests()
        .into_iter()
        .filter(|r| !(200..300).contains(&r.status))
        .filter(|r| !r.note.as_deref().is_some_and(|n| n.starts_with("fault")))
        .map(|r| format!("{} {} -> {} ({:?})", r.method, r.path, r.status, r.note))
        .collect()
}
