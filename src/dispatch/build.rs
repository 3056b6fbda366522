//! Building a batch: the claimed entries' quantities (one set-based statement,
//! [`crate::stock`]), their marketplace keys, and what the marketplace was last told, sorted
//! into what is sent and what is closed without a request.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use tokio_postgres::GenericClient;
use tracing::warn;
use uuid::Uuid;

use super::apilog::{self, kind, Entry};
use super::DispatchError;
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
    pub key: String,
    pub quantity: i32,
}

/// Claims sorted by what happens to them.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Equal to what the marketplace was last told: closed as `unchanged`.
    pub unchanged: Vec<(Claim, i32)>,
    /// No barcode / sku, or no product row: closed as `no_key` (reported).
    pub without_key: Vec<Claim>,
    /// Another product of this batch has the same key: closed as `duplicate_key` (reported).
    pub duplicate_key: Vec<(Claim, String)>,
    /// To send, in claim order.
    pub outgoing: Vec<Outgoing>,
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
    let mut keys: HashMap<Uuid, Option<String>> = HashMap::with_capacity(product_ids.len());
    for r in db
        .query(PRODUCT_KEYS_SQL, &[&product_ids, &store_id])
        .await?
    {
        let id: Uuid = r.get(0);
        let key: Option<String> = match provider {
            Provider::Trendyol => r.get(1),
            Provider::Hepsiburada => r.get(2),
        };
        keys.insert(id, key.filter(|k| !k.trim().is_empty()));
        // A listing that was deleted is told 0 (a set's quantity would otherwise still be
        // computed from its components).
        if !r.get::<_, bool>(3) {
            quantity_of.insert(id, 0);
        }
    }
    let told = queue::last_told(db, store_id, &product_ids).await?;

    let mut plan = Plan::default();
    let mut keys_in_request: HashSet<String> = HashSet::new();
    for claim in claims {
        let quantity = quantity_of.get(&claim.product_id).copied().unwrap_or(0);
        let Some(key) = keys.get(&claim.product_id).cloned().flatten() else {
            plan.without_key.push(claim);
            continue;
        };
        if told.get(&claim.product_id).copied().flatten() == Some(quantity) {
            plan.unchanged.push((claim, quantity));
            continue;
        }
        if !keys_in_request.insert(key.clone()) {
            plan.duplicate_key.push((claim, key));
            continue;
        }
        plan.outgoing.push(Outgoing {
            claim,
            key,
            quantity,
        });
    }
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
