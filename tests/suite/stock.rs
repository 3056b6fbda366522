//! `stocksync::stock` against a real PostgreSQL: the rules case by case, a randomized
//! comparison with the Rust reference (`tests/suite/common/reference.rs`), and timing prints.
//!
//! One private cluster per test binary, one database per test.

use crate::common;

use common::reference::Catalogue;
use common::{connect, fresh_database};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stocksync::stock::{
    compute_quantities, compute_store, ComputedQuantity, QuantityRules, SetProblem,
};
use tokio_postgres::Client;
use uuid::Uuid;

/// Writes catalogue rows for one test.
struct Db {
    url: String,
    client: Client,
    store: Uuid,
}

impl Db {
    async fn new(prefix: &str) -> Db {
        let url = fresh_database(&format!("stock_{prefix}"));
        let client = connect(&url).await;
        let db = Db {
            url,
            client,
            store: Uuid::new_v4(),
        };
        db.add_store(db.store).await;
        db
    }

    async fn add_store(&self, store: Uuid) {
        self.client
            .execute(
                "INSERT INTO stores (id, name, type) VALUES ($1, 'store', 'TRENDYOL')",
                &[&store],
            )
            .await
            .unwrap();
    }

    async fn product(&self, name: &str, product_type: &str) -> Uuid {
        let id = Uuid::new_v4();
        self.client
            .execute(
                "INSERT INTO products (id, barcode, sku, name, product_type) \
                 VALUES ($1, $2, $2, $3, $4)",
                &[&id, &format!("B-{id}"), &name, &product_type],
            )
            .await
            .unwrap();
        id
    }

    /// A simple product listed in the test's store.
    async fn simple(&self, name: &str, sellable: i32) -> Uuid {
        let id = self.product(name, "SIMPLE").await;
        self.stock(id, sellable).await;
        id
    }

    /// A set listed in the test's store (own sellable 0 unless changed).
    async fn set(&self, name: &str, items: &[(Uuid, i32)]) -> Uuid {
        let id = self.product(name, "SET").await;
        self.stock(id, 0).await;
        for (component, quantity) in items {
            self.item(id, *component, *quantity).await;
        }
        id
    }

    async fn item(&self, set: Uuid, component: Uuid, quantity: i32) {
        self.client
            .execute(
                "INSERT INTO product_set_items (id, set_product_id, component_product_id, quantity) \
                 VALUES ($1, $2, $3, $4)",
                &[&Uuid::new_v4(), &set, &component, &quantity],
            )
            .await
            .unwrap();
    }

    async fn stock(&self, product: Uuid, sellable: i32) {
        self.stock_in(product, self.store, sellable).await;
    }

    async fn stock_in(&self, product: Uuid, store: Uuid, sellable: i32) {
        self.client
            .execute(
                "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (product_id, store_id) DO UPDATE SET sellable_quantity = EXCLUDED.sellable_quantity",
                &[&Uuid::new_v4(), &product, &store, &sellable],
            )
            .await
            .unwrap();
    }

    async fn compute_with(&self, ids: &[Uuid], rules: &QuantityRules) -> Vec<ComputedQuantity> {
        let out = compute_quantities(&self.client, self.store, ids, rules)
            .await
            .expect("compute_quantities");
        // The oracle agrees on every test's data.
        let reference = Catalogue::load(&self.client).await.unwrap();
        assert_eq!(out, reference.compute(self.store, ids, rules), "reference");
        out
    }

    async fn one(&self, id: Uuid) -> ComputedQuantity {
        let mut out = self.compute_with(&[id], &QuantityRules::default()).await;
        assert_eq!(out.len(), 1);
        out.pop().unwrap()
    }

    /// (quantity, raw_quantity, problem) of one product with the default rules.
    async fn q(&self, id: Uuid) -> (i32, i64, Option<SetProblem>) {
        let c = self.one(id).await;
        assert_eq!(c.product_id, id);
        (c.quantity, c.raw_quantity, c.problem)
    }
}

/// Mont×1 (50), Eldiven×2 (30), Atkı×1 (40).
async fn kis_paketi(db: &Db) -> (Uuid, Uuid, Uuid, Uuid) {
    let mont = db.simple("Mont", 50).await;
    let eldiven = db.simple("Eldiven", 30).await;
    let atki = db.simple("Atkı", 40).await;
    let set = db
        .set("Kış Paketi", &[(mont, 1), (eldiven, 2), (atki, 1)])
        .await;
    (set, mont, eldiven, atki)
}

#[tokio::test]
async fn seed_example_and_out_of_stock_component() {
    let db = Db::new("seed").await;
    let (set, mont, eldiven, atki) = kis_paketi(&db).await;
    assert_eq!(db.q(set).await, (15, 15, None));
    for (id, expected) in [(mont, 50), (eldiven, 30), (atki, 40)] {
        assert_eq!(db.q(id).await, (expected, expected as i64, None));
    }
    db.stock(eldiven, 0).await;
    assert_eq!(db.q(set).await, (0, 0, None));
    db.stock(eldiven, 1).await;
    assert_eq!(db.q(set).await, (0, 0, None), "1 / 2 = 0");
    db.stock(eldiven, 2).await;
    assert_eq!(db.q(set).await, (1, 1, None));
}

/// The seed plan filtered `sellable_quantity > 0` before the MIN, so a component at 0
/// vanished from the minimum and the set was sold although it could not be assembled.
#[tokio::test]
async fn seed_bug_component_at_zero_makes_the_set_zero() {
    let db = Db::new("seedbug").await;
    let a = db.simple("A", 10).await;
    let zero = db.simple("Zero", 0).await;
    let set = db.set("Set", &[(a, 1), (zero, 1)]).await;
    // What the seed's filtered SQL computed for this set: 10 (wrong).
    let seed_sql = "SELECT MIN(ps.sellable_quantity / i.quantity)::bigint \
                    FROM product_set_items i \
                    JOIN product_stores ps ON ps.product_id = i.component_product_id AND ps.store_id = $2 \
                    WHERE i.set_product_id = $1 AND ps.sellable_quantity > 0";
    let seed: Option<i64> = db
        .client
        .query_one(seed_sql, &[&set, &db.store])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seed, Some(10), "the seed query oversold the set");
    assert_eq!(db.q(set).await, (0, 0, None));
    let store = compute_store(&db.client, db.store, &QuantityRules::default())
        .await
        .unwrap();
    assert_eq!(
        store.iter().find(|c| c.product_id == set).unwrap().quantity,
        0
    );
}

#[tokio::test]
async fn nested_sets() {
    let db = Db::new("nested").await;
    let (kis, _, eldiven, _) = kis_paketi(&db).await;
    let bere = db.simple("Bere", 10).await;
    let big = db.set("Büyük Paket", &[(kis, 2), (bere, 1)]).await;
    // min(floor(15 / 2), 10) = 7
    assert_eq!(db.q(big).await, (7, 7, None));
    let bigger = db.set("Dev Paket", &[(big, 3), (bere, 1)]).await;
    assert_eq!(db.q(bigger).await, (2, 2, None), "floor(7 / 3)");
    db.stock(bere, 5).await;
    assert_eq!(db.q(big).await, (5, 5, None));
    db.stock(eldiven, 0).await;
    assert_eq!(db.q(big).await, (0, 0, None));
    assert_eq!(db.q(bigger).await, (0, 0, None));
    // The multiplied path: Eldiven appears at 2 × 2 × 3 = 12 per Dev Paket.
    db.stock(eldiven, 1000).await;
    db.stock(bere, 1000).await;
    // Kış: min(50, 500, 40) = 40; Büyük: min(20, 1000) = 20; Dev: min(6, 1000) = 6.
    assert_eq!(db.q(bigger).await, (6, 6, None));
}

#[tokio::test]
async fn component_missing_in_store_or_unknown_counts_zero() {
    let db = Db::new("missing").await;
    let a = db.simple("A", 10).await;
    let unlisted = db.product("Unlisted", "SIMPLE").await;
    let set = db.set("Set", &[(a, 1), (unlisted, 1)]).await;
    assert_eq!(db.q(set).await, (0, 0, None));
    // Listed only in another store.
    let other = Uuid::new_v4();
    db.add_store(other).await;
    db.stock_in(unlisted, other, 100).await;
    assert_eq!(db.q(set).await, (0, 0, None));
    // A component id without a products row is a simple product.
    let ghost = Uuid::new_v4();
    let set2 = db.set("Set2", &[(a, 1), (ghost, 1)]).await;
    assert_eq!(db.q(set2).await, (0, 0, None));
    db.stock(ghost, 4).await;
    assert_eq!(db.q(set2).await, (4, 4, None));
}

#[tokio::test]
async fn non_positive_component_quantity_is_a_problem() {
    let db = Db::new("nonpos").await;
    let a = db.simple("A", 10).await;
    let b = db.simple("B", 10).await;
    for bad in [0, -1] {
        let set = db.set("Bad", &[(a, 1), (b, bad)]).await;
        let expected = SetProblem::NonPositiveComponentQuantity {
            set_product_id: set,
            component_product_id: b,
            quantity: bad.into(),
        };
        assert_eq!(db.q(set).await, (0, 0, Some(expected.clone())));
        // Nested: the outer set reports the inner set's item.
        let outer = db.set("Outer", &[(a, 1), (set, 1)]).await;
        assert_eq!(db.q(outer).await, (0, 0, Some(expected)));
        let text = db.q(outer).await.2.unwrap().to_string();
        assert!(
            text.contains(&set.to_string()) && text.contains(&b.to_string()),
            "{text}"
        );
    }
}

#[tokio::test]
async fn cycles_are_zero_and_reported() {
    let db = Db::new("cycle").await;
    let x = db.simple("X", 10).await;
    let a = db.set("A", &[(x, 1)]).await;
    let b = db.set("B", &[(a, 1), (x, 1)]).await;
    db.item(a, b, 1).await;
    assert_eq!(
        db.q(a).await,
        (
            0,
            0,
            Some(SetProblem::Cycle {
                set_product_id: b,
                path: vec![a, b, a]
            })
        )
    );
    assert_eq!(
        db.q(b).await,
        (
            0,
            0,
            Some(SetProblem::Cycle {
                set_product_id: a,
                path: vec![b, a, b]
            })
        )
    );
    let c = db.set("C", &[(x, 1), (a, 1)]).await;
    let (quantity, raw, problem) = db.q(c).await;
    assert_eq!((quantity, raw), (0, 0));
    assert_eq!(
        problem,
        Some(SetProblem::Cycle {
            set_product_id: b,
            path: vec![c, a, b, a]
        })
    );
    // A set containing itself.
    let selfish = db.set("Self", &[(x, 1)]).await;
    db.item(selfish, selfish, 1).await;
    assert_eq!(
        db.q(selfish).await.2,
        Some(SetProblem::Cycle {
            set_product_id: selfish,
            path: vec![selfish, selfish]
        })
    );
    // The whole store computes (no endless recursion) and the simple product is untouched.
    let all = compute_store(&db.client, db.store, &QuantityRules::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    assert!(all
        .iter()
        .all(|c| (c.product_id == x) == (c.quantity == 10)));
}

#[tokio::test]
async fn sets_without_components() {
    let db = Db::new("empty").await;
    let x = db.simple("X", 10).await;
    let empty = db.set("Empty", &[]).await;
    db.stock(empty, 50).await;
    assert_eq!(db.q(empty).await, (0, 0, Some(SetProblem::NoComponents)));
    let outer = db.set("Outer", &[(x, 1), (empty, 1)]).await;
    assert_eq!(db.q(outer).await, (0, 0, Some(SetProblem::NoComponents)));
}

#[tokio::test]
async fn negative_sellable_counts_zero() {
    let db = Db::new("negative").await;
    let neg = db.simple("Neg", -5).await;
    let a = db.simple("A", 10).await;
    assert_eq!(db.q(neg).await, (0, 0, None));
    let set = db.set("Set", &[(a, 1), (neg, 1)]).await;
    assert_eq!(db.q(set).await, (0, 0, None));
    let nested = db.set("Nested", &[(set, 1)]).await;
    assert_eq!(db.q(nested).await, (0, 0, None));
}

#[tokio::test]
async fn clamp_and_safety_stock() {
    let db = Db::new("clamp").await;
    let big = db.simple("Big", 50_000).await;
    assert_eq!(db.q(big).await, (20_000, 50_000, None));
    let max = db.simple("Max", i32::MAX).await;
    let set = db.set("BigSet", &[(max, 1)]).await;
    assert_eq!(db.q(set).await, (20_000, i32::MAX as i64, None));
    let (kis, ..) = kis_paketi(&db).await;
    let small = db.simple("Small", 3).await;
    let rules = QuantityRules {
        max_quantity: 20_000,
        safety_stock: 5,
    };
    let out = db.compute_with(&[big, kis, small], &rules).await;
    let got: Vec<(i32, i64)> = out.iter().map(|c| (c.quantity, c.raw_quantity)).collect();
    assert_eq!(got, vec![(20_000, 50_000), (10, 15), (0, 3)]);
    let tight = QuantityRules {
        max_quantity: 12,
        safety_stock: 0,
    };
    let out = db.compute_with(&[kis], &tight).await;
    assert_eq!((out[0].quantity, out[0].raw_quantity), (12, 15));
}

#[tokio::test]
async fn huge_item_quantities_do_not_overflow() {
    let db = Db::new("overflow").await;
    let x = db.simple("X", i32::MAX).await;
    let inner = db.set("Inner", &[(x, i32::MAX)]).await;
    assert_eq!(db.q(inner).await, (1, 1, None));
    let mut set = inner;
    for _ in 0..4 {
        set = db.set("Outer", &[(set, i32::MAX)]).await;
    }
    assert_eq!(db.q(set).await, (0, 0, None));
    let one = db.set("One", &[(x, 1)]).await;
    let mut nested = one;
    for _ in 0..5 {
        nested = db.set("Wrap", &[(nested, 1)]).await;
    }
    assert_eq!(db.q(nested).await.1, i32::MAX as i64);
}

#[tokio::test]
async fn own_sellable_of_a_set_is_ignored() {
    let db = Db::new("ownsellable").await;
    let (kis, ..) = kis_paketi(&db).await;
    db.stock(kis, 1_000).await;
    assert_eq!(db.q(kis).await, (15, 15, None));
    db.stock(kis, -1_000).await;
    assert_eq!(db.q(kis).await, (15, 15, None));
    let outer = db.set("Outer", &[(kis, 1)]).await;
    db.stock(outer, 3).await;
    assert_eq!(db.q(outer).await, (15, 15, None));
    // A set not listed in the store still computes from its components.
    let unlisted = db.product("Unlisted set", "SET").await;
    let (_, mont, ..) = kis_paketi(&db).await;
    db.item(unlisted, mont, 5).await;
    assert_eq!(db.q(unlisted).await, (10, 10, None));
}

#[tokio::test]
async fn product_type_other_than_set_is_simple() {
    let db = Db::new("types").await;
    let a = db.simple("A", 10).await;
    for kind in ["set", "BUNDLE", "SET "] {
        let p = db.product("Odd", kind).await;
        db.stock(p, 7).await;
        db.item(p, a, 1).await;
        assert_eq!(db.q(p).await, (7, 7, None), "product_type {kind:?}");
    }
}

#[tokio::test]
async fn every_id_exactly_once_in_order() {
    let db = Db::new("ids").await;
    let (kis, mont, ..) = kis_paketi(&db).await;
    let unknown = Uuid::new_v4();
    assert_eq!(db.q(unknown).await, (0, 0, None));
    let ids = [unknown, kis, mont, unknown, kis];
    let out = db.compute_with(&ids, &QuantityRules::default()).await;
    let got: Vec<(Uuid, i32)> = out.iter().map(|c| (c.product_id, c.quantity)).collect();
    assert_eq!(got, vec![(unknown, 0), (kis, 15), (mont, 50)]);
    assert!(
        compute_quantities(&db.client, db.store, &[], &QuantityRules::default())
            .await
            .unwrap()
            .is_empty()
    );
    // An unknown store: everything 0, still once each.
    let out = compute_quantities(&db.client, Uuid::new_v4(), &ids, &QuantityRules::default())
        .await
        .unwrap();
    assert_eq!(out.len(), 3);
    assert!(out.iter().all(|c| c.quantity == 0 && c.problem.is_none()));
}

#[tokio::test]
async fn compute_store_lists_every_listed_product_and_works_in_a_transaction() {
    let mut db = Db::new("store").await;
    let (kis, mont, eldiven, atki) = kis_paketi(&db).await;
    let other = Uuid::new_v4();
    db.add_store(other).await;
    db.stock_in(mont, other, 3).await;
    let unlisted = db.product("Unlisted", "SIMPLE").await;
    let rules = QuantityRules::default();
    let all = compute_store(&db.client, db.store, &rules).await.unwrap();
    let mut expected = vec![(kis, 15), (mont, 50), (eldiven, 30), (atki, 40)];
    expected.sort();
    let got: Vec<(Uuid, i32)> = all.iter().map(|c| (c.product_id, c.quantity)).collect();
    assert_eq!(got, expected);
    assert!(!got.iter().any(|(id, _)| *id == unlisted));
    let tx = db.client.transaction().await.unwrap();
    let in_other = compute_store(&tx, other, &rules).await.unwrap();
    assert_eq!(in_other.len(), 1);
    assert_eq!((in_other[0].product_id, in_other[0].quantity), (mont, 3));
    let batch = compute_quantities(&tx, other, &[kis, mont], &rules)
        .await
        .unwrap();
    assert_eq!(batch[0].quantity, 0);
    assert_eq!(batch[1].quantity, 3);
    tx.commit().await.unwrap();
}

/// The dispatcher's pooled connections: `&**object` is a `tokio_postgres::Client`, and a
/// deadpool transaction derefs to a `tokio_postgres::Transaction`.
#[tokio::test]
async fn works_with_deadpool_clients_and_transactions() {
    let db = Db::new("pool").await;
    let (kis, ..) = kis_paketi(&db).await;
    let pool = stocksync::db::DbConfig::from_url(&db.url)
        .unwrap()
        .pool(2)
        .unwrap();
    let mut object = pool.get().await.unwrap();
    let rules = QuantityRules::default();
    let out = compute_quantities(&**object, db.store, &[kis], &rules)
        .await
        .unwrap();
    assert_eq!(out[0].quantity, 15);
    let tx = object.transaction().await.unwrap();
    let all = compute_store(&*tx, db.store, &rules).await.unwrap();
    assert_eq!(all.len(), 4);
    tx.rollback().await.unwrap();
    // The futures are Send, so they can run in spawned tasks.
    let handle = tokio::spawn(async move {
        let object = pool.get().await.unwrap();
        compute_quantities(&**object, Uuid::nil(), &[kis], &QuantityRules::default())
            .await
            .unwrap()
    });
    assert_eq!(handle.await.unwrap()[0].quantity, 0);
}

/// Inserts rows through unnest arrays (one statement per table).
async fn bulk_insert(
    client: &Client,
    products: &[(Uuid, String)],
    items: &[(Uuid, Uuid, i32)],
    stock: &[(Uuid, Uuid, i32)],
) {
    let ids: Vec<Uuid> = products.iter().map(|p| p.0).collect();
    let types: Vec<String> = products.iter().map(|p| p.1.clone()).collect();
    client
        .execute(
            "INSERT INTO products (id, name, product_type) \
             SELECT id, 'p', t FROM unnest($1::uuid[], $2::text[]) AS u(id, t)",
            &[&ids, &types],
        )
        .await
        .unwrap();
    let sets: Vec<Uuid> = items.iter().map(|i| i.0).collect();
    let comps: Vec<Uuid> = items.iter().map(|i| i.1).collect();
    let qs: Vec<i32> = items.iter().map(|i| i.2).collect();
    client
        .execute(
            "INSERT INTO product_set_items (id, set_product_id, component_product_id, quantity) \
             SELECT gen_random_uuid(), s, c, q FROM unnest($1::uuid[], $2::uuid[], $3::int[]) AS u(s, c, q)",
            &[&sets, &comps, &qs],
        )
        .await
        .unwrap();
    let pids: Vec<Uuid> = stock.iter().map(|s| s.0).collect();
    let sids: Vec<Uuid> = stock.iter().map(|s| s.1).collect();
    let sellable: Vec<i32> = stock.iter().map(|s| s.2).collect();
    client
        .execute(
            "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity) \
             SELECT gen_random_uuid(), p, s, q FROM unnest($1::uuid[], $2::uuid[], $3::int[]) AS u(p, s, q)",
            &[&pids, &sids, &sellable],
        )
        .await
        .unwrap();
    client.execute("ANALYZE", &[]).await.unwrap();
}

/// A version-4 UUID from the seeded generator, so a seed reproduces the ids (and with them
/// the order problems are picked in).
fn seeded_uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.gen()).into_uuid()
}

/// A random catalogue: simple products, sets on four levels (components from lower levels,
/// so nesting is bounded), component ids without a products row, odd product types, empty
/// sets, zero and negative item quantities, duplicate items, a few back edges (cycles) and
/// stock in two stores with negative, zero, missing and huge quantities.
#[tokio::test]
async fn randomized_against_reference() {
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let db = Db::new("random").await;
    let stores = [db.store, seeded_uuid(&mut rng)];
    db.add_store(stores[1]).await;

    let mut products: Vec<(Uuid, String)> = Vec::new();
    let mut simples: Vec<Uuid> = Vec::new();
    for i in 0..180 {
        let id = seeded_uuid(&mut rng);
        let kind = match i % 30 {
            0 => "BUNDLE",
            1 => "set",
            _ => "SIMPLE",
        };
        products.push((id, kind.to_string()));
        simples.push(id);
    }
    // Component ids that have no products row (simple by the rules).
    let ghosts: Vec<Uuid> = (0..10).map(|_| seeded_uuid(&mut rng)).collect();
    let mut levels: Vec<Vec<Uuid>> = vec![simples.iter().chain(&ghosts).copied().collect()];
    let mut items: Vec<(Uuid, Uuid, i32)> = Vec::new();
    let mut sets: Vec<Uuid> = Vec::new();
    for level in 1..=4 {
        let mut this_level = Vec::new();
        for _ in 0..30 {
            let id = seeded_uuid(&mut rng);
            products.push((id, "SET".to_string()));
            let n = if rng.gen_bool(0.05) {
                0
            } else {
                rng.gen_range(1..=5)
            };
            for _ in 0..n {
                let from = &levels[rng.gen_range(0..level)];
                let component = from[rng.gen_range(0..from.len())];
                let quantity = match rng.gen_range(0..200) {
                    0..=2 => 0,
                    3..=4 => -1,
                    5..=9 => rng.gen_range(5..50),
                    _ => rng.gen_range(1..=3),
                };
                items.push((id, component, quantity));
                if rng.gen_bool(0.03) {
                    items.push((id, component, rng.gen_range(1..=4)));
                }
            }
            this_level.push(id);
            sets.push(id);
        }
        levels.push(this_level);
    }
    // A deliberate cycle A -> B -> A, a set containing it, and a few random back edges.
    let (a, b, c) = (levels[1][0], levels[2][0], levels[3][0]);
    items.push((a, b, 1));
    items.push((b, a, 2));
    items.push((c, b, 1));
    for _ in 0..2 {
        let low = levels[1][rng.gen_range(1..30)];
        let high = levels[4][rng.gen_range(0..30)];
        items.push((low, high, 1));
    }
    let mut stock: Vec<(Uuid, Uuid, i32)> = Vec::new();
    for id in products.iter().map(|p| p.0).chain(ghosts.iter().copied()) {
        for store in stores {
            if rng.gen_bool(0.9) {
                let sellable = match rng.gen_range(0..100) {
                    0..=3 => rng.gen_range(-10..0),
                    4..=7 => 0,
                    15..=17 => rng.gen_range(20_000..100_000),
                    _ => rng.gen_range(1..200),
                };
                stock.push((id, store, sellable));
            }
        }
    }
    bulk_insert(&db.client, &products, &items, &stock).await;

    let reference = Catalogue::load(&db.client).await.unwrap();
    let mut asked: Vec<Uuid> = products.iter().map(|p| p.0).collect();
    asked.extend(&ghosts);
    asked.extend((0..5).map(|_| seeded_uuid(&mut rng)));
    asked.push(asked[3]);
    let mut problems = 0;
    let mut positive_sets = 0;
    for (n, store) in stores.into_iter().enumerate() {
        let rules = QuantityRules {
            max_quantity: 20_000,
            safety_stock: n as i32 * 2,
        };
        let sql = compute_quantities(&db.client, store, &asked, &rules)
            .await
            .unwrap();
        let expected = reference.compute(store, &asked, &rules);
        assert_eq!(sql.len(), asked.len() - 1);
        for (got, want) in sql.iter().zip(&expected) {
            assert_eq!(got, want, "seed {seed}, store {store}");
        }
        problems += sql.iter().filter(|c| c.problem.is_some()).count();
        positive_sets += sql
            .iter()
            .filter(|c| sets.contains(&c.product_id) && c.quantity > 0)
            .count();
        let whole = compute_store(&db.client, store, &rules).await.unwrap();
        let listed = reference.listed_products(store);
        assert_eq!(whole, reference.compute(store, &listed, &rules));
    }
    println!(
        "randomized: {} products, {} items, {} stock rows; {problems} problems, {positive_sets} sets above 0",
        products.len(),
        items.len(),
        stock.len()
    );
    assert!(
        problems > 0 && positive_sets > 0,
        "the catalogue exercises both paths"
    );
}

/// Builds `products` products (8% of them sets of 2-5 components, some nested) listed in
/// `stores` stores, with SQL on the server.
async fn generate_scale(client: &Client, products: i64, stores: i64) -> Vec<Uuid> {
    let sets = products * 2 / 25; // 8% sets, like 20,000 of 250,000
    let sql = format!(
        "INSERT INTO stores (id, name, type)
           SELECT gen_random_uuid(), 'store ' || s, 'TRENDYOL' FROM generate_series(1, {stores}) s;
         CREATE TEMP TABLE gen AS
           SELECT n, gen_random_uuid() AS id, n <= {sets} AS is_set FROM generate_series(1, {products}) n;
         INSERT INTO products (id, barcode, sku, name, product_type)
           SELECT id, 'B' || n, 'S' || n, 'P' || n, CASE WHEN is_set THEN 'SET' ELSE 'SIMPLE' END FROM gen;
         -- Components: mostly simple products, one in ten a set with a higher number (nested, acyclic).
         INSERT INTO product_set_items (id, set_product_id, component_product_id, quantity)
           SELECT gen_random_uuid(), s.id, c.id, 1 + (hashint4(s.n * 7 + k) & 3)
           FROM gen s
           CROSS JOIN LATERAL generate_series(1, 2 + (hashint4(s.n) & 3)) k
           JOIN gen c ON c.n = CASE
               WHEN k = 1 AND s.n % 10 = 0 AND s.n < {sets}
                 THEN s.n + 1 + ((hashint4(s.n * 13) & 2147483647) % ({sets} - s.n))
               ELSE {sets} + 1 + ((hashint4(s.n * 31 + k) & 2147483647) % ({products} - {sets})) END
           WHERE s.is_set;
         INSERT INTO product_stores (id, product_id, store_id, sellable_quantity)
           SELECT gen_random_uuid(), g.id, st.id, (hashint4(g.n * 5 + 1) & 2147483647) % 300 - 20
           FROM gen g CROSS JOIN stores st;
         ANALYZE;"
    );
    client.batch_execute(&sql).await.unwrap();
    client
        .query("SELECT id FROM stores ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A generated store of 20,000 products (1,600 sets, some nested): the whole-store and the
/// batch statements agree with the reference. (Speed at full scale: `cargo bench`.)
#[tokio::test]
async fn generated_store_of_20000_matches_reference() {
    let client = connect(&fresh_database("stock_generated")).await;
    let stores = generate_scale(&client, 20_000, 1).await;
    let rules = QuantityRules::default();
    let all = compute_store(&client, stores[0], &rules).await.unwrap();
    assert_eq!(all.len(), 20_000);
    let batch: Vec<Uuid> = all.iter().step_by(10).map(|c| c.product_id).collect();
    let out = compute_quantities(&client, stores[0], &batch, &rules)
        .await
        .unwrap();
    let expected: Vec<_> = all.iter().step_by(10).cloned().collect();
    assert_eq!(out, expected);
    let single = compute_quantities(&client, stores[0], &batch[..1], &rules)
        .await
        .unwrap();
    assert_eq!(single, expected[..1]);
    let reference = Catalogue::load(&client).await.unwrap();
    let ids = reference.listed_products(stores[0]);
    assert_eq!(all, reference.compute(stores[0], &ids, &rules));
}

/// The reference model on its own, before it judges the SQL.
mod reference_model {
    use super::common::reference::*;
    use stocksync::stock::{QuantityRules, SetProblem};
    use uuid::Uuid;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    struct Builder {
        products: Vec<ProductRow>,
        items: Vec<SetItemRow>,
        stock: Vec<ProductStoreRow>,
    }

    const STORE: u128 = 1000;

    impl Builder {
        fn new() -> Self {
            Builder {
                products: Vec::new(),
                items: Vec::new(),
                stock: Vec::new(),
            }
        }
        fn simple(mut self, n: u128, sellable: i32) -> Self {
            self.products.push(ProductRow {
                id: id(n),
                product_type: "SIMPLE".into(),
            });
            self.stock.push(ProductStoreRow {
                product_id: id(n),
                store_id: id(STORE),
                sellable_quantity: sellable,
            });
            self
        }
        fn set(mut self, n: u128, items: &[(u128, i32)]) -> Self {
            self.products.push(ProductRow {
                id: id(n),
                product_type: "SET".into(),
            });
            self.stock.push(ProductStoreRow {
                product_id: id(n),
                store_id: id(STORE),
                sellable_quantity: 999,
            });
            for &(c, q) in items {
                self.items.push(SetItemRow {
                    set_product_id: id(n),
                    component_product_id: id(c),
                    quantity: q,
                });
            }
            self
        }
        fn build(self) -> Catalogue {
            Catalogue::new(self.products, self.items, self.stock)
        }
    }

    fn q(c: &Catalogue, n: u128) -> (i64, Option<SetProblem>) {
        c.quantity(id(n), id(STORE))
    }

    #[test]
    fn simple_products() {
        let c = Builder::new().simple(1, 7).simple(2, -3).build();
        assert_eq!(q(&c, 1), (7, None));
        assert_eq!(q(&c, 2), (0, None));
        assert_eq!(q(&c, 3), (0, None), "unknown product");
        assert_eq!(
            c.quantity(id(1), id(9)),
            (0, None),
            "not listed in that store"
        );
    }

    #[test]
    fn sets_nested_and_out_of_stock() {
        let c = Builder::new()
            .simple(1, 50)
            .simple(2, 30)
            .simple(3, 40)
            .simple(4, 0)
            .simple(5, 9)
            .set(10, &[(1, 1), (2, 2), (3, 1)])
            .set(11, &[(1, 1), (4, 1)])
            .set(12, &[(10, 2), (5, 1)])
            .set(13, &[(1, 1), (99, 1)])
            .set(14, &[(2, 4), (2, 1)])
            .build();
        assert_eq!(q(&c, 10), (15, None));
        assert_eq!(q(&c, 11), (0, None), "one component out of stock");
        assert_eq!(q(&c, 12), (7, None), "15 / 2 = 7 < 9");
        assert_eq!(q(&c, 13), (0, None), "unknown component");
        assert_eq!(q(&c, 14), (7, None), "duplicate rows: the stricter one");
    }

    #[test]
    fn problems() {
        let c = Builder::new()
            .simple(1, 50)
            .set(10, &[(1, 0)])
            .set(11, &[(1, 1), (20, 1)])
            .set(20, &[(21, 1)])
            .set(21, &[(20, 1), (1, -1)])
            .set(30, &[])
            .set(31, &[(1, 1), (30, 1)])
            .build();
        assert_eq!(
            q(&c, 10),
            (
                0,
                Some(SetProblem::NonPositiveComponentQuantity {
                    set_product_id: id(10),
                    component_product_id: id(1),
                    quantity: 0
                })
            )
        );
        // 20 -> 21 -> {20 (cycle), 1 (quantity -1)}: same depth; path order picks id(1).
        assert_eq!(
            q(&c, 20),
            (
                0,
                Some(SetProblem::NonPositiveComponentQuantity {
                    set_product_id: id(21),
                    component_product_id: id(1),
                    quantity: -1
                })
            )
        );
        assert!(matches!(
            q(&c, 11),
            (0, Some(SetProblem::NonPositiveComponentQuantity { .. }))
        ));
        assert_eq!(q(&c, 30), (0, Some(SetProblem::NoComponents)));
        assert_eq!(q(&c, 31), (0, Some(SetProblem::NoComponents)));
    }

    #[test]
    fn cycle_path() {
        let c = Builder::new()
            .simple(1, 50)
            .set(20, &[(21, 1), (1, 1)])
            .set(21, &[(20, 2)])
            .set(22, &[(20, 1)])
            .build();
        assert_eq!(
            q(&c, 20),
            (
                0,
                Some(SetProblem::Cycle {
                    set_product_id: id(21),
                    path: vec![id(20), id(21), id(20)]
                })
            )
        );
        assert_eq!(
            q(&c, 22),
            (
                0,
                Some(SetProblem::Cycle {
                    set_product_id: id(21),
                    path: vec![id(22), id(20), id(21), id(20)]
                })
            )
        );
        let rules = QuantityRules::default();
        let out = c.compute(id(STORE), &[id(1), id(22), id(1)], &rules);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].quantity, 50);
        assert_eq!(out[1].quantity, 0);
    }
}
