//! Building a batch: the claimed entries' quantities (one set-based statement,
//! [`crate::stock`]), their marketplace keys, and what the marketplace was last told, sorted
//! into what is sent and what is closed without a request.
//!
//! Rules, in order: a listing the marketplace fulfils itself is never sent; a listing that
//! is gone is told 0, under the key it was last told if its product row went with it (no
//! key and never told: `no_key`); a quantity equal to the last told is not sent; two
//! products whose keys the marketplace spells the same ([`match_key`]) name one listing, and
//! neither is sent while that lasts (`duplicate_key`, recorded for `status`).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use tokio_postgres::GenericClient;
use tracing::warn;
use uuid::Uuid;

use super::apilog::{self, kind, Entry};
use super::DispatchError;
use crate::marketplace::read::match_key;
use crate::marketplace::{Provider, StockItem};
use crate::metrics::metrics;
use crate::queue::{self, Claim};
use crate::stock::QuantityRules;

/// Marketplace keys of products (Trendyol barcode, Hepsiburada sku) and whether each is
/// still listed in store `$2` (has its own `product_stores` row there).
const PRODUCT_KEYS_SQL: &str = r#"
SELECT p.id, p.barcode::text, p.sku::text,
       EXISTS (SELECT 1 FROM product_stores ps WHERE ps.product_id = p.id AND ps.store_id = $2)
FROM products p WHERE p.id = ANY($1::uuid[])
"#;

/// A claimed entry on its way to the marketplace.
#[derive(Debug, Clone)]
pub(super) struct Outgoing {
    pub claim: Claim,
    /// The key it is sent under, as the database spells it (or as it was last told, for a
    /// product whose row is gone).
    pub key: String,
    /// `key` as the marketplace spells it ([`match_key`]).
    pub form: String,
    pub quantity: i32,
}

/// Claims sorted by what happens to them.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Equal to what the marketplace was last told: closed as `unchanged`.
    pub unchanged: Vec<(Claim, i32)>,
    /// No barcode / sku, or no product row, and never told: closed as `no_key` (reported).
    pub without_key: Vec<Claim>,
    /// Another product listed in the store names the same listing at the marketplace:
    /// closed as `duplicate_key` (reported, recorded in `key_collisions`), not sent.
    pub duplicate_key: Vec<(Claim, String)>,
    /// The marketplace keeps the listing's stock itself: closed, never sent.
    pub fulfilled: Vec<Claim>,
    /// To send, in claim order.
    pub outgoing: Vec<Outgoing>,
}

/// A product's key in the store and whether it is still listed there.
#[derive(Debug, Clone, Default)]
pub(super) struct CurrentKey {
    /// Barcode (Trendyol) or sku (Hepsiburada); `None` when empty or the product row is gone.
    pub key: Option<String>,
    pub listed: bool,
}

/// Current keys of `products` in `store` (absent: no product row).
pub(super) async fn current_keys(
    db: &impl GenericClient,
    store_id: Uuid,
    provider: Provider,
    products: &[Uuid],
) -> Result<HashMap<Uuid, CurrentKey>, DispatchError> {
    let mut keys = HashMap::with_capacity(products.len());
    for r in db.query(PRODUCT_KEYS_SQL, &[&products, &store_id]).await? {
        let key: Option<String> = match provider {
            Provider::Trendyol => r.get(1),
            Provider::Hepsiburada => r.get(2),
        };
        let current = CurrentKey {
            key: key.filter(|k| !k.trim().is_empty()),
            listed: r.get(3),
        };
        keys.insert(r.get::<_, Uuid>(0), current);
    }
    Ok(keys)
}

/// Of `keyed` (product, its key as the marketplace spells it) listed in `store`, the
/// products whose key names the same listing at the marketplace as another product listed
/// there — within `keyed`, or a product told under that spelling or already recorded as
/// colliding (and still keyed so) — each with the others it collides with.
pub(super) async fn collisions(
    db: &impl GenericClient,
    store_id: Uuid,
    provider: Provider,
    keyed: &[(Uuid, String)],
) -> Result<HashMap<Uuid, Vec<Uuid>>, DispatchError> {
    let mut by_form: HashMap<String, HashSet<Uuid>> = HashMap::new();
    for (product, form) in keyed {
        by_form.entry(form.clone()).or_default().insert(*product);
    }
    let forms: Vec<&str> = by_form.keys().map(String::as_str).collect();
    let candidates = queue::key_candidates(db, store_id, &forms).await?;
    let others: Vec<Uuid> = candidates
        .iter()
        .filter(|(p, form)| !by_form.get(form).is_some_and(|ps| ps.contains(p)))
        .map(|(p, _)| *p)
        .collect();
    // A candidate counts only while it is still listed under a key spelt the same.
    let current = current_keys(db, store_id, provider, &others).await?;
    for (product, form) in candidates {
        let Some(CurrentKey {
            key: Some(key),
            listed: true,
        }) = current.get(&product)
        else {
            continue;
        };
        if match_key(provider, key) == form {
            if let Some(products) = by_form.get_mut(&form) {
                products.insert(product);
            }
        }
    }
    let mut colliding = HashMap::new();
    for products in by_form.values().filter(|ps| ps.len() > 1) {
        for (product, _) in keyed.iter().filter(|(p, _)| products.contains(p)) {
            let mut with: Vec<Uuid> = products.iter().copied().filter(|p| p != product).collect();
            with.sort_unstable();
            colliding.insert(*product, with);
        }
    }
    Ok(colliding)
}

/// Computes the claims' quantities and sorts them.
pub(super) async fn plan(
    db: &impl GenericClient,
    store_id: Uuid,
    provider: Provider,
    rules: &QuantityRules,
    claims: Vec<Claim>,
) -> Result<Plan, DispatchError> {
    let m = metrics();
    let product_ids: Vec<Uuid> = claims.iter().map(|c| c.product_id).collect();
    let started = Instant::now();
    let computed = crate::stock::compute_quantities(db, store_id, &product_ids, rules).await?;
    m.quantity_computation_seconds
        .observe(started.elapsed().as_secs_f64());
    m.set_computations.inc_by(computed.len() as u64);
    let mut quantity_of: HashMap<Uuid, i32> = HashMap::with_capacity(computed.len());
    for q in &computed {
        if let Some(problem) = &q.problem {
            warn!(store = %store_id, product = %q.product_id, problem = %problem, "set composition problem");
            let message = format!("product {}: {problem}", q.product_id);
            apilog::write(
                db,
                Entry {
                    provider: apilog::STOCKSYNC,
                    kind: kind::STOCK_PROBLEM,
                    store_id: Some(store_id),
                    item_count: Some(1),
                    error_message: Some(&message),
                    ..Entry::default()
                },
            )
            .await;
        }
        quantity_of.insert(q.product_id, q.quantity);
    }
    let keys = current_keys(db, store_id, provider, &product_ids).await?;
    let told = queue::last_told(db, store_id, &product_ids).await?;

    let mut plan = Plan::default();
    let mut keyed: Vec<Outgoing> = Vec::with_capacity(claims.len());
    for claim in claims {
        let current = keys.get(&claim.product_id).cloned().unwrap_or_default();
        let told = told.get(&claim.product_id).cloned().unwrap_or_default();
        if told.fulfilled_by_marketplace {
            plan.fulfilled.push(claim);
            continue;
        }
        // A deleted listing is told 0 (a set's quantity would otherwise still be computed
        // from its components), under the key it was last told if its product row went too.
        let quantity = if current.listed {
            quantity_of.get(&claim.product_id).copied().unwrap_or(0)
        } else {
            0
        };
        let key = match (current.key, told.key) {
            (Some(key), _) => key,
            (None, Some(told_key)) if !current.listed => told_key,
            _ => {
                plan.without_key.push(claim);
                continue;
            }
        };
        if told.quantity == Some(quantity) {
            plan.unchanged.push((claim, quantity));
            continue;
        }
        let form = match_key(provider, &key);
        keyed.push(Outgoing {
            claim,
            key,
            form,
            quantity,
        });
    }
    let pairs: Vec<(Uuid, String)> = keyed
        .iter()
        .map(|o| (o.claim.product_id, o.form.clone()))
        .collect();
    let colliding = collisions(db, store_id, provider, &pairs).await?;
    let (collided, outgoing): (Vec<Outgoing>, Vec<Outgoing>) = keyed
        .into_iter()
        .partition(|o| colliding.contains_key(&o.claim.product_id));
    let rows: Vec<(Uuid, &str, &str)> = collided
        .iter()
        .map(|o| (o.claim.product_id, o.key.as_str(), o.form.as_str()))
        .collect();
    queue::record_key_collisions(db, store_id, &rows).await?;
    let clear: Vec<Uuid> = outgoing.iter().map(|o| o.claim.product_id).collect();
    queue::clear_key_collisions(db, store_id, &clear).await?;
    for o in collided {
        let names: Vec<String> = colliding[&o.claim.product_id]
            .iter()
            .map(Uuid::to_string)
            .collect();
        let why = format!(
            "{}, one listing {:?} with {}",
            o.key,
            o.form,
            names.join(", ")
        );
        plan.duplicate_key.push((o.claim, why));
    }
    plan.outgoing = outgoing;
    Ok(plan)
}

/// The stock items of a group, in its order.
pub(super) fn stock_items(group: &[Outgoing]) -> Vec<StockItem> {
    group
        .iter()
        .map(|o| StockItem {
            key: o.key.clone(),
            quantity: o.quantity,
        })
        .collect()
}

/// Queue ids and quantities of a group (for finishing it).
pub(super) fn ids_and_quantities(group: &[Outgoing]) -> (Vec<i64>, Vec<Option<i32>>) {
    group.iter().map(|o| (o.claim.id, Some(o.quantity))).unzip()
}
