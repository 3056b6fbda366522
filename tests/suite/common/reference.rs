//! A pure-Rust implementation of the stock rules over rows of the application tables: the
//! oracle `tests/stock.rs` tests the SQL of `stocksync::stock` against.
//!
//! It evaluates nested sets one level at a time (`floor(available / quantity)` per item,
//! recursing into component sets) rather than expanding to leaves with multiplied quantities
//! as the SQL does, so agreement between the two also checks that the expansion is equivalent.
//! Problems are collected over the whole composition and the reported one is chosen with the
//! same order as the SQL: shortest path, then path ids, then item quantity.

use std::collections::HashMap;

use tokio_postgres::GenericClient;
use uuid::Uuid;

use stocksync::stock::{ComputedQuantity, QuantityRules, SetProblem};

/// A `products` row (the columns the rules read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRow {
    pub id: Uuid,
    pub product_type: String,
}

/// A `product_set_items` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetItemRow {
    pub set_product_id: Uuid,
    pub component_product_id: Uuid,
    pub quantity: i32,
}

/// A `product_stores` row (the columns the rules read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductStoreRow {
    pub product_id: Uuid,
    pub store_id: Uuid,
    pub sellable_quantity: i32,
}

/// The catalogue and stock of every store, indexed for the rules.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    sets: std::collections::HashSet<Uuid>,
    items: HashMap<Uuid, Vec<(Uuid, i64)>>,
    stock: HashMap<(Uuid, Uuid), i64>,
    listed: HashMap<Uuid, Vec<Uuid>>,
}

/// A problem found during evaluation with its sort key (path, item quantity).
struct Found {
    path: Vec<Uuid>,
    quantity: i64,
    problem: SetProblem,
}

impl Catalogue {
    /// Builds the catalogue from table rows (in any order; items keep their order).
    pub fn new(
        products: Vec<ProductRow>,
        set_items: Vec<SetItemRow>,
        product_stores: Vec<ProductStoreRow>,
    ) -> Catalogue {
        let mut catalogue = Catalogue::default();
        for product in products {
            if product.product_type == "SET" {
                catalogue.sets.insert(product.id);
            }
        }
        for item in set_items {
            catalogue
                .items
                .entry(item.set_product_id)
                .or_default()
                .push((item.component_product_id, i64::from(item.quantity)));
        }
        for row in product_stores {
            let previous = catalogue.stock.insert(
                (row.product_id, row.store_id),
                i64::from(row.sellable_quantity),
            );
            if previous.is_none() {
                catalogue
                    .listed
                    .entry(row.store_id)
                    .or_default()
                    .push(row.product_id);
            }
        }
        catalogue
    }

    /// Reads `products`, `product_set_items` and `product_stores` whole.
    pub async fn load(client: &impl GenericClient) -> Result<Catalogue, tokio_postgres::Error> {
        let products = client
            .query("SELECT id, product_type FROM products", &[])
            .await?
            .iter()
            .map(|r| {
                Ok(ProductRow {
                    id: r.try_get(0)?,
                    product_type: r.try_get(1)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        let items = client
            .query(
                "SELECT set_product_id, component_product_id, quantity FROM product_set_items",
                &[],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(SetItemRow {
                    set_product_id: r.try_get(0)?,
                    component_product_id: r.try_get(1)?,
                    quantity: r.try_get(2)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        let stock = client
            .query(
                "SELECT product_id, store_id, sellable_quantity FROM product_stores",
                &[],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(ProductStoreRow {
                    product_id: r.try_get(0)?,
                    store_id: r.try_get(1)?,
                    sellable_quantity: r.try_get(2)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        Ok(Catalogue::new(products, items, stock))
    }

    /// Products with a `product_stores` row in `store`, sorted by id.
    pub fn listed_products(&self, store: Uuid) -> Vec<Uuid> {
        let mut ids = self.listed.get(&store).cloned().unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    /// The raw quantity of `product` in `store` by the rules (before safety stock and
    /// clamping) and, for a broken set, the problem that made it 0.
    pub fn quantity(&self, product: Uuid, store: Uuid) -> (i64, Option<SetProblem>) {
        if !self.sets.contains(&product) {
            return (self.simple(product, store), None);
        }
        let mut path = vec![product];
        let mut found = Vec::new();
        let value = self.evaluate_set(product, store, &mut path, 0, &mut found);
        match found.into_iter().min_by(|a, b| {
            (a.path.len(), &a.path, a.quantity).cmp(&(b.path.len(), &b.path, b.quantity))
        }) {
            Some(first) => (0, Some(first.problem)),
            None => (value, None),
        }
    }

    /// Like [`super::compute_quantities`]: every distinct id once, in first-occurrence order.
    pub fn compute(
        &self,
        store: Uuid,
        product_ids: &[Uuid],
        rules: &QuantityRules,
    ) -> Vec<ComputedQuantity> {
        let mut seen = std::collections::HashSet::new();
        product_ids
            .iter()
            .filter(|id| seen.insert(**id))
            .map(|&product_id| {
                let (raw_quantity, problem) = self.quantity(product_id, store);
                ComputedQuantity {
                    product_id,
                    quantity: rules.apply(raw_quantity),
                    raw_quantity,
                    problem,
                }
            })
            .collect()
    }

    /// Available quantity of a simple product: `max(0, sellable)`, 0 without a row.
    fn simple(&self, product: Uuid, store: Uuid) -> i64 {
        self.stock
            .get(&(product, store))
            .copied()
            .unwrap_or(0)
            .max(0)
    }

    /// Quantity of `set` (the last id of `path`), reached by an item of `edge_quantity`.
    /// Pushes every problem below it to `found`; returns 0 if there is any.
    fn evaluate_set(
        &self,
        set: Uuid,
        store: Uuid,
        path: &mut Vec<Uuid>,
        edge_quantity: i64,
        found: &mut Vec<Found>,
    ) -> i64 {
        let items = match self.items.get(&set) {
            Some(items) if !items.is_empty() => items,
            _ => {
                found.push(Found {
                    path: path.clone(),
                    quantity: edge_quantity,
                    problem: SetProblem::NoComponents,
                });
                return 0;
            }
        };
        let problems_before = found.len();
        let mut min: Option<i64> = None;
        for &(component, quantity) in items {
            let on_path = path.contains(&component);
            path.push(component);
            if quantity <= 0 {
                found.push(Found {
                    path: path.clone(),
                    quantity,
                    problem: SetProblem::NonPositiveComponentQuantity {
                        set_product_id: set,
                        component_product_id: component,
                        quantity,
                    },
                });
            } else if on_path {
                found.push(Found {
                    path: path.clone(),
                    quantity,
                    problem: SetProblem::Cycle {
                        set_product_id: set,
                        path: path.clone(),
                    },
                });
            } else {
                let available = if self.sets.contains(&component) {
                    self.evaluate_set(component, store, path, quantity, found)
                } else {
                    self.simple(component, store)
                };
                let value = available / quantity;
                min = Some(min.map_or(value, |m| m.min(value)));
            }
            path.pop();
        }
        if found.len() > problems_before {
            0
        } else {
            min.unwrap_or(0)
        }
    }
}
