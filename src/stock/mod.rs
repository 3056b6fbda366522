//! Stock computation: the quantity of each product of one store that is sent to the
//! marketplaces, computed by PostgreSQL in one statement per call.
//!
//! # Rules
//!
//! The quantity of product `P` in store `S`:
//!
//! * **Simple product** (`products.product_type` is anything but `'SET'`, or `P` has no
//!   `products` row at all): `max(0, sellable_quantity)` of its `product_stores` row for `S`;
//!   no row means 0. `committed_quantity` is not used.
//! * **Set** (`product_type = 'SET'`): the minimum over its `product_set_items` rows of
//!   `floor(available(component, S) / quantity)`, where `available` is the simple quantity
//!   above (0 when the component has no `product_stores` row in `S`, also when it is negative)
//!   or, for a component that is itself a set, that set's computed quantity (nested sets, any
//!   depth). A set's own `sellable_quantity` is ignored, at the top and when nested.
//!   Every item row is one constraint: a component listed twice counts as the stricter of the
//!   two rows, not their sum.
//! * A set is **0 and reported as a [`SetProblem`]** when, anywhere in its expansion, an item
//!   has `quantity <= 0` ([`SetProblem::NonPositiveComponentQuantity`]), a set contains itself
//!   directly or through other sets ([`SetProblem::Cycle`]; a set that merely contains a
//!   cyclic set is also 0 with that problem), or a set has no items at all
//!   ([`SetProblem::NoComponents`]). When several problems exist the one reported is the one
//!   closest to the top set (shortest path), ties broken by the path's ids and then the item
//!   quantity, so the choice is deterministic.
//! * The result (`raw_quantity`) is then reduced by the store's safety stock and clamped to
//!   `0..=max_quantity` ([`QuantityRules`]) to give `quantity`.
//!
//! # Invariants
//!
//! * Every distinct product id asked for comes back exactly once (unknown ids give 0); the
//!   database never divides by zero, never recurses forever and never overflows (multiplied
//!   item quantities are capped, see [`FACTOR_CAP`]).
//! * Because `floor(floor(a / m) / k) = floor(a / (m * k))` for positive integers, a set is
//!   evaluated by expanding it to its leaf (non-set) components with the item quantities
//!   multiplied along the path, which is equal to evaluating the nested sets one by one.
//!   `tests/suite/common/reference.rs` implements the nested evaluation directly in Rust and is
//!   the oracle the tests compare the SQL with.
//! * Out-of-stock components are **not** filtered out before the minimum: a set with one
//!   component at 0 is 0 (filtering `sellable_quantity > 0` hid such components and oversold
//!   sets).
//!
//! # Use
//!
//! [`compute_quantities`] serves batches (any size; ids are deduplicated, order kept) and
//! [`compute_store`] every product listed in a store. Both take any
//! [`tokio_postgres::GenericClient`], i.e. `&tokio_postgres::Client` or
//! `&tokio_postgres::Transaction<'_>`; with a `deadpool_postgres::Client` pass `&**client`
//! (and `&*transaction` for a deadpool transaction). The caller picks the store's safety stock
//! for [`QuantityRules`].
//!
//! # Performance
//!
//! Measured on PostgreSQL 15 with the app schema's indexes only (no extra index needed):
//! 250,000 products of which 20,000 sets of 2-5 items (some nested) in 4 stores, 1,000,000
//! listed pairs: [`compute_store`] takes 0.6-0.9 s per store, 2.7 s for all four (release
//! build; the statement alone is ~0.7 s). A batch of 2,000 products takes 30-180 ms (more
//! sets, more lookups), one product ~3 ms. The comment on the SQL (above `quantity_sql_tail!`
//! in the source) explains why the statements are shaped as they are.

use std::collections::HashSet;
use std::fmt;

use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

/// Upper bound of a multiplied item quantity along a path (2^31). Any available quantity is
/// an `integer` (< 2^31), so dividing it by a factor of 2^31 or more gives 0 whatever the
/// exact factor is; capping keeps `factor * quantity` below 2^62, inside `bigint`.
pub const FACTOR_CAP: i64 = 2_147_483_648;

/// Default upper bound of a sent quantity.
pub const DEFAULT_MAX_QUANTITY: i32 = 20_000;

/// A computed quantity of one product in one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputedQuantity {
    pub product_id: Uuid,
    /// The quantity to send: `raw_quantity` minus safety stock, clamped to `0..=max_quantity`.
    pub quantity: i32,
    /// The quantity by the rules before safety stock and clamping (never negative).
    pub raw_quantity: i64,
    /// Why a set is 0 because its composition is broken; `None` for simple products and sound sets.
    pub problem: Option<SetProblem>,
}

/// A broken set composition; the set's quantity is 0 and the caller should log this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetProblem {
    /// `set_product_id` lists a component that is already on the `path` of sets being
    /// expanded. `path` runs from the product asked for to the repeated id, e.g. `[A, B, A]`.
    Cycle {
        set_product_id: Uuid,
        path: Vec<Uuid>,
    },
    /// `set_product_id` (the product asked for or a set nested in it) lists
    /// `component_product_id` with a quantity of 0 or less.
    NonPositiveComponentQuantity {
        set_product_id: Uuid,
        component_product_id: Uuid,
        quantity: i64,
    },
    /// The set asked for, or a set nested in it, has no `product_set_items` rows.
    NoComponents,
}

impl fmt::Display for SetProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetProblem::Cycle {
                set_product_id,
                path,
            } => {
                let path: Vec<String> = path.iter().map(Uuid::to_string).collect();
                write!(
                    f,
                    "set {set_product_id} closes a cycle in the set composition ({}), so the set counts 0",
                    path.join(" -> ")
                )
            }
            SetProblem::NonPositiveComponentQuantity {
                set_product_id,
                component_product_id,
                quantity,
            } => write!(
                f,
                "set {set_product_id} lists component {component_product_id} with quantity \
                 {quantity} (must be at least 1), so the set counts 0"
            ),
            SetProblem::NoComponents => write!(
                f,
                "the set, or a set nested in it, has no components, so the set counts 0"
            ),
        }
    }
}

impl std::error::Error for SetProblem {}

/// How a raw quantity becomes the sent quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantityRules {
    /// Upper bound of the sent quantity (negative values act as 0).
    pub max_quantity: i32,
    /// Subtracted from every raw quantity of the store (negative values act as 0).
    pub safety_stock: i32,
}

impl Default for QuantityRules {
    fn default() -> Self {
        QuantityRules {
            max_quantity: DEFAULT_MAX_QUANTITY,
            safety_stock: 0,
        }
    }
}

impl QuantityRules {
    /// `raw - safety_stock`, clamped to `0..=max_quantity`.
    pub fn apply(&self, raw_quantity: i64) -> i32 {
        let max = i64::from(self.max_quantity.max(0));
        let after_safety = raw_quantity.saturating_sub(i64::from(self.safety_stock.max(0)));
        after_safety.clamp(0, max) as i32
    }
}

// The SQL is one statement: a recursive CTE that expands every requested set to its leaf
// components, then two aggregates over that expansion (the first problem per set, the minimum
// over the leaves) joined back to the requested products. Why it is shaped so:
//
// * One statement for a batch or a whole store instead of one query per product: a store of
//   250,000 products is a few hash joins, not 250,000 round trips.
// * Only sets are expanded (`set_roots`); simple products take their own `product_stores` row,
//   so the recursion is as large as the sets' items, not the catalogue.
// * `path` (the ids from the requested set down to the current component) detects cycles: a
//   component already on the path gets problem 'cycle' and is not expanded, so the recursion
//   ends on any data. Items with `quantity <= 0` get 'quantity' and are not expanded either.
//   The items are LEFT JOINed so that a set without items yields one row with problem
//   'empty' (no NOT EXISTS subplan, and every requested set has at least one walk row).
// * `factor` multiplies the item quantities along the path, capped at FACTOR_CAP so bigint
//   cannot overflow; `available / factor` at a leaf equals the nested floor divisions.
// * The leaves' stock is a LEFT JOIN: a component without a row in the store, or with a
//   negative quantity, takes part in the minimum as 0. Nothing is filtered on
//   `sellable_quantity > 0` (that hid out-of-stock components and oversold sets). The
//   divisor is also clamped to >= 1, so no evaluation order can divide by zero.
// * A requested product is a set exactly when it has a problem or a leaves row (every set's
//   expansion ends in one of them), so the final join needs no second look at `products`.
// * Problems are picked with DISTINCT ON ordered by (path length, path, quantity) so the
//   report does not depend on the plan; the Rust reference uses the same order.
// * Estimates matter more than usual: an inflated estimate of the recursive CTE pushes the
//   plan's cost past `jit_optimize_above_cost`, and LLVM then spends ~0.8 s compiling. The
//   recursion and leaf filters are therefore written on the plain columns (`problem IS NULL`)
//   which the planner estimates as small, keeping a whole store at a cost of ~150k (JIT without
//   optimisation, ~50 ms) and a batch far below `jit_above_cost`.
// * The two entry points differ only in the head (`set_ids`, `roots`, `set_roots`):
//   - a batch (`$2` uuid[], distinct ids: `compute_quantities` deduplicates them in Rust,
//     because a GROUP BY here makes the planner guess 200 rows whatever the array holds, and
//     250,000 ids then run as nested loops, 3.7 s instead of 1.4 s). Whether a requested
//     product is a set is a scalar subquery, one `products` primary-key probe per id, which
//     the planner cannot turn into a join: as a join it read every product of the catalogue
//     (a sequential scan for `product_type = 'SET'` is cheaper than 1000 index probes by its
//     cost model, 40 ms instead of 2 ms at 250,000 products, for every batch sent). `set_ids`
//     stays NOT MATERIALIZED for the components the walk meets, so a small batch is all
//     index lookups;
//   - a whole store reads its `product_stores` rows by `product_stores (store_id)` and the
//     set ids once (MATERIALIZED, ~8% of products), then hash joins.
macro_rules! quantity_sql_tail {
    () => {
        r#"walk AS (
    SELECT r.product_id AS root,
           r.product_id AS set_product_id,
           i.component_product_id AS component,
           i.quantity::bigint AS quantity,
           i.quantity::bigint AS factor,
           CASE WHEN i.set_product_id IS NULL THEN ARRAY[r.product_id]
                ELSE ARRAY[r.product_id, i.component_product_id] END AS path,
           CASE WHEN i.set_product_id IS NULL THEN 'empty'
                WHEN i.quantity <= 0 THEN 'quantity'
                WHEN i.component_product_id = r.product_id THEN 'cycle' END AS problem,
           c.id IS NOT NULL AS component_is_set
    FROM set_roots r
    LEFT JOIN product_set_items i ON i.set_product_id = r.product_id
    LEFT JOIN set_ids c ON c.id = i.component_product_id
  UNION ALL
    SELECT w.root,
           w.component,
           i.component_product_id,
           COALESCE(i.quantity::bigint, w.quantity),
           LEAST(w.factor * i.quantity, 2147483648),
           CASE WHEN i.set_product_id IS NULL THEN w.path
                ELSE w.path || i.component_product_id END,
           CASE WHEN i.set_product_id IS NULL THEN 'empty'
                WHEN i.quantity <= 0 THEN 'quantity'
                WHEN i.component_product_id = ANY (w.path) THEN 'cycle' END,
           c.id IS NOT NULL
    FROM walk w
    LEFT JOIN product_set_items i ON i.set_product_id = w.component
    LEFT JOIN set_ids c ON c.id = i.component_product_id
    WHERE w.problem IS NULL AND w.component_is_set
),
problems AS (
    SELECT DISTINCT ON (w.root)
           w.root, w.problem, w.set_product_id, w.component, w.quantity, w.path
    FROM walk w
    WHERE w.problem IS NOT NULL
    ORDER BY w.root, cardinality(w.path), w.path, w.quantity
),
leaves AS (
    SELECT w.root,
           MIN(GREATEST(COALESCE(s.sellable_quantity, 0), 0)::bigint / GREATEST(w.factor, 1))
               FILTER (WHERE w.problem IS NULL AND NOT w.component_is_set) AS quantity
    FROM walk w
    LEFT JOIN product_stores s ON s.product_id = w.component AND s.store_id = $1
    GROUP BY w.root
)
SELECT r.product_id,
       CASE WHEN p.root IS NOT NULL THEN 0::bigint
            WHEN l.root IS NOT NULL THEN COALESCE(l.quantity, 0)
            ELSE GREATEST(COALESCE(r.own_quantity, 0), 0)::bigint END AS raw_quantity,
       p.problem AS problem_kind,
       p.set_product_id AS problem_set,
       p.component AS problem_component,
       p.quantity AS problem_quantity,
       p.path AS problem_path
FROM roots r
LEFT JOIN problems p ON p.root = r.product_id
LEFT JOIN leaves l ON l.root = r.product_id
"#
    };
}

/// Quantities of the products in `$2` (uuid[], **distinct** ids) in store `$1`, one row per
/// id in the order of the array; ids without rows come out as 0.
pub const COMPUTE_QUANTITIES_SQL: &str = concat!(
    r#"WITH RECURSIVE
set_ids AS NOT MATERIALIZED (
    SELECT p.id FROM products p WHERE p.product_type = 'SET'
),
requested AS (
    SELECT u.product_id, u.ord
    FROM unnest($2::uuid[]) WITH ORDINALITY AS u(product_id, ord)
),
roots AS (
    SELECT q.product_id, q.ord, s.sellable_quantity AS own_quantity,
           (SELECT p.product_type FROM products p WHERE p.id = q.product_id) = 'SET' AS is_set
    FROM requested q
    LEFT JOIN product_stores s ON s.product_id = q.product_id AND s.store_id = $1
),
set_roots AS (
    SELECT r.product_id FROM roots r WHERE r.is_set
),
"#,
    quantity_sql_tail!(),
    "ORDER BY r.ord"
);

/// Quantities of every product listed in store `$1` (every `product_stores` row of the
/// store), unordered (the caller sorts).
pub const COMPUTE_STORE_SQL: &str = concat!(
    r#"WITH RECURSIVE
set_ids AS MATERIALIZED (
    SELECT p.id FROM products p WHERE p.product_type = 'SET'
),
roots AS (
    SELECT s.product_id, s.sellable_quantity AS own_quantity
    FROM product_stores s
    WHERE s.store_id = $1
),
set_roots AS (
    SELECT s.product_id
    FROM product_stores s
    JOIN set_ids p ON p.id = s.product_id
    WHERE s.store_id = $1
),
"#,
    quantity_sql_tail!()
);

/// Computes the quantities of `product_ids` in `store_id` with one statement. Every distinct
/// id comes back exactly once, in the order of its first occurrence; unknown products are 0.
///
/// # Errors
///
/// Only database errors; bad catalogue data is reported in [`ComputedQuantity::problem`].
pub async fn compute_quantities(
    client: &impl GenericClient,
    store_id: Uuid,
    product_ids: &[Uuid],
    rules: &QuantityRules,
) -> Result<Vec<ComputedQuantity>, tokio_postgres::Error> {
    if product_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut seen = HashSet::with_capacity(product_ids.len());
    let distinct: Vec<Uuid> = product_ids
        .iter()
        .copied()
        .filter(|id| seen.insert(*id))
        .collect();
    let rows = client
        .query(COMPUTE_QUANTITIES_SQL, &[&store_id, &distinct])
        .await?;
    rows.iter().map(|row| decode(row, rules)).collect()
}

/// Computes the quantities of every product listed in `store_id` (every product with a
/// `product_stores` row there), sorted by product id.
///
/// # Errors
///
/// Only database errors; bad catalogue data is reported in [`ComputedQuantity::problem`].
pub async fn compute_store(
    client: &impl GenericClient,
    store_id: Uuid,
    rules: &QuantityRules,
) -> Result<Vec<ComputedQuantity>, tokio_postgres::Error> {
    let rows = client.query(COMPUTE_STORE_SQL, &[&store_id]).await?;
    let mut out = rows
        .iter()
        .map(|row| decode(row, rules))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_unstable_by_key(|q| q.product_id);
    Ok(out)
}

fn decode(row: &Row, rules: &QuantityRules) -> Result<ComputedQuantity, tokio_postgres::Error> {
    let product_id: Uuid = row.try_get(0)?;
    let raw_quantity: i64 = row.try_get(1)?;
    let kind: Option<&str> = row.try_get(2)?;
    let problem = match kind {
        None => None,
        Some("quantity") => Some(SetProblem::NonPositiveComponentQuantity {
            set_product_id: row.try_get(3)?,
            component_product_id: row.try_get(4)?,
            quantity: row.try_get(5)?,
        }),
        Some("cycle") => Some(SetProblem::Cycle {
            set_product_id: row.try_get(3)?,
            path: row.try_get(6)?,
        }),
        // "empty"; the SQL produces no other kind.
        Some(_) => Some(SetProblem::NoComponents),
    };
    Ok(ComputedQuantity {
        product_id,
        quantity: rules.apply(raw_quantity),
        raw_quantity,
        problem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_clamp_and_subtract_safety_stock() {
        let rules = QuantityRules::default();
        assert_eq!(rules.apply(0), 0);
        assert_eq!(rules.apply(15), 15);
        assert_eq!(rules.apply(50_000), 20_000);
        assert_eq!(rules.apply(i64::MAX), 20_000);
        assert_eq!(rules.apply(-5), 0);
        let safety = QuantityRules {
            max_quantity: 100,
            safety_stock: 3,
        };
        assert_eq!(safety.apply(2), 0);
        assert_eq!(safety.apply(3), 0);
        assert_eq!(safety.apply(10), 7);
        assert_eq!(safety.apply(1_000), 100);
        let odd = QuantityRules {
            max_quantity: -1,
            safety_stock: -10,
        };
        assert_eq!(odd.apply(10), 0);
        let no_cap_hit = QuantityRules {
            max_quantity: i32::MAX,
            safety_stock: 0,
        };
        assert_eq!(no_cap_hit.apply(i64::MAX), i32::MAX);
    }

    #[test]
    fn problems_display_one_sentence_with_ids() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        let cycle = SetProblem::Cycle {
            set_product_id: b,
            path: vec![a, b, a],
        };
        let text = cycle.to_string();
        assert!(text.contains(&format!("{a} -> {b} -> {a}")), "{text}");
        assert!(text.starts_with(&format!("set {b} ")), "{text}");
        let quantity = SetProblem::NonPositiveComponentQuantity {
            set_product_id: a,
            component_product_id: b,
            quantity: -1,
        }
        .to_string();
        assert!(
            quantity.contains(&a.to_string())
                && quantity.contains(&b.to_string())
                && quantity.contains("-1"),
            "{quantity}"
        );
        assert!(!SetProblem::NoComponents.to_string().contains('\n'));
    }

    #[test]
    fn sql_is_parameterised_and_complete() {
        for sql in [COMPUTE_QUANTITIES_SQL, COMPUTE_STORE_SQL] {
            assert!(sql.starts_with("WITH RECURSIVE"));
            assert!(sql.contains("$1"));
            assert!(!sql.contains("sellable_quantity > 0"));
        }
        assert!(COMPUTE_QUANTITIES_SQL.contains("$2"));
        assert!(!COMPUTE_STORE_SQL.contains("$2"));
        assert!(COMPUTE_QUANTITIES_SQL
            .trim_end()
            .ends_with("ORDER BY r.ord"));
        assert!(COMPUTE_QUANTITIES_SQL.contains(&FACTOR_CAP.to_string()));
    }

    /// The futures must be `Send` so the dispatcher can spawn them.
    #[allow(dead_code)]
    fn futures_are_send(client: &tokio_postgres::Client, tx: &tokio_postgres::Transaction<'_>) {
        fn is_send<T: Send>(_: T) {}
        let rules = QuantityRules::default();
        is_send(compute_quantities(client, Uuid::nil(), &[], &rules));
        is_send(compute_store(tx, Uuid::nil(), &rules));
    }
}
