//! `stocksync demo`: one command that shows stocksync working, for a person trying it.
//!
//! It starts everything it needs and removes it all when it ends:
//!
//! 1. a private PostgreSQL cluster ([`LocalCluster`], removed on exit, and by a watchdog
//!    even when the demo is killed with SIGKILL);
//! 2. a database with the application schema (`sql/app_schema.sql`) and a sample catalogue:
//!    300 products (292 simple, 8 sets, one of them nested) including the seed plan's
//!    "Kış Paketi" (SET-001 = Mont×1 + Eldiven×2 + Atkı×1 with 50 / 30 / 40 in stock, so
//!    15 sets), two Trendyol stores and one Hepsiburada store, every product listed in every
//!    store with a random but deterministic stock;
//! 3. the mock marketplace with accounts for those stores (same credentials, known listings
//!    = the catalogue's barcodes for Trendyol and skus for Hepsiburada);
//! 4. `stocksync setup` and the service (capture, delivery, HTTP dashboard), configured to
//!    talk to the mock;
//! 5. a workload for `--duration`: every ~200 ms an order, a cancellation or a restock, while
//!    a table shows once per second, per store, the pending queue, the requests the mock
//!    received and how many listed products the marketplace shows with the quantity the
//!    database implies ([`crate::stock::compute_store`]).
//!
//! After the workload (or on Ctrl-C / SIGTERM) it waits up to 15 s for the marketplaces to
//! converge, prints the result and exits 0 when every store converged, 1 otherwise. A second
//! Ctrl-C skips the wait.

use std::collections::{HashMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::config::{parse_duration, Config};
use super::{service, setup};
use crate::db::DbConfig;
use crate::localpg::{ClusterOptions, LocalCluster, LocalPgError};
use crate::mock::{Marketplace, MockAccount, MockConfig, MockMarketplace, MockState};
use crate::stock::{compute_store, QuantityRules};

/// The application schema the demo database is made with.
/// The developer user name the demo's Hepsiburada merchants authorised.
const DEMO_HEPSIBURADA_USER_AGENT: &str = "demo_dev";

const APP_SCHEMA: &str = include_str!("../../sql/app_schema.sql");

/// Name of the demo database inside the private cluster.
const DATABASE: &str = "stocksync_demo";

/// Seed of the catalogue; the workload uses `SEED + 1`.
const SEED: u64 = 20_240_601;

/// How long the demo waits for convergence once the workload stopped.
const CONVERGENCE_WAIT: Duration = Duration::from_secs(15);

/// How long the service gets to stop.
const SERVICE_STOP_WAIT: Duration = Duration::from_secs(15);

/// `stocksync demo` arguments.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// How long the sample workload (orders, cancellations, restocks) runs.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Where the stocksync dashboard and /metrics listen (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9187")]
    pub http_addr: SocketAddr,
    /// Where the mock Trendyol + Hepsiburada listen (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub mock_addr: SocketAddr,
}

// ---------------------------------------------------------------------------------------
// The sample catalogue
// ---------------------------------------------------------------------------------------

const NOUNS: &[&str] = &[
    "Kazak",
    "Gömlek",
    "Pantolon",
    "Etek",
    "Ceket",
    "Yelek",
    "Çorap",
    "Bot",
    "Terlik",
    "Şapka",
    "Çanta",
    "Kemer",
    "Fincan",
    "Kupa",
    "Tabak",
    "Tencere",
    "Tava",
    "Havlu",
    "Nevresim",
    "Yastık",
    "Battaniye",
    "Termos",
    "Matara",
    "Defter",
    "Kalem Kutusu",
    "Sırt Çantası",
    "Uyku Tulumu",
    "Çadır",
];

const MATERIALS: &[&str] = &[
    "Yün", "Pamuklu", "Deri", "Keten", "Polar", "Kaşmir", "Seramik", "Çelik", "Bambu", "Kadife",
];

const COLORS: &[&str] = &[
    "Siyah",
    "Beyaz",
    "Lacivert",
    "Kırmızı",
    "Yeşil",
    "Gri",
    "Bej",
    "Mor",
    "Hardal",
    "Bordo",
];

/// Simple products in the catalogue (the first four are fixed: Mont, Eldiven, Atkı, Bere).
const SIMPLE_PRODUCTS: usize = 292;

/// Index of the Bere used by the nested set.
const BERE: usize = 3;

/// The seed plan's "Kış Paketi": (component index, quantity in the set, initial stock).
const KIS_PAKETI: [(usize, i32, i32); 3] = [(0, 1, 50), (1, 2, 30), (2, 1, 40)];

/// Barcode of the "Kış Paketi" set.
const KIS_PAKETI_BARCODE: &str = "SET-001";

#[derive(Debug, Clone)]
struct Product {
    id: Uuid,
    barcode: String,
    sku: String,
    name: String,
    is_set: bool,
}

#[derive(Debug, Clone)]
struct Store {
    id: Uuid,
    name: String,
    marketplace: Marketplace,
    /// Trendyol seller id / Hepsiburada merchant id.
    seller_id: String,
    /// Trendyol only.
    api_key: Option<String>,
    /// Trendyol api secret / Hepsiburada service key.
    api_secret: String,
}

impl Store {
    /// The listing key the marketplace knows a product by: Trendyol barcode, Hepsiburada
    /// merchant sku.
    fn listing_key<'a>(&self, product: &'a Product) -> &'a str {
        match self.marketplace {
            Marketplace::Trendyol => &product.barcode,
            Marketplace::Hepsiburada => &product.sku,
        }
    }

    fn short_name(&self) -> String {
        match self.marketplace {
            Marketplace::Trendyol => format!("{} (seller {})", self.name, self.seller_id),
            Marketplace::Hepsiburada => {
                format!("{} (merchant {}…)", self.name, &self.seller_id[..8])
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Catalogue {
    products: Vec<Product>,
    /// (set index, component index, quantity)
    set_items: Vec<(usize, usize, i32)>,
    stores: Vec<Store>,
    /// (product index, store index, sellable quantity)
    stock: Vec<(usize, usize, i32)>,
    /// Index of the "Kış Paketi" set.
    kis_paketi: usize,
    by_id: HashMap<Uuid, usize>,
}

fn uuid_from(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.gen()).into_uuid()
}

impl Catalogue {
    /// The same catalogue every time.
    fn generate() -> Catalogue {
        let mut rng = StdRng::seed_from_u64(SEED);
        let mut products = Vec::new();
        let simple = |name: String, products: &mut Vec<Product>, rng: &mut StdRng| {
            let n = products.len() + 1;
            products.push(Product {
                id: uuid_from(rng),
                barcode: format!("8690{:09}", 100_000 + n),
                sku: format!("STK-{n:05}"),
                name,
                is_set: false,
            });
        };
        for name in ["Kışlık Mont", "Yün Eldiven", "Örgü Atkı", "Ponponlu Bere"] {
            simple(name.to_string(), &mut products, &mut rng);
        }
        let mut i = 0;
        while products.len() < SIMPLE_PRODUCTS {
            let noun = NOUNS[i % NOUNS.len()];
            let color = COLORS[(i / NOUNS.len()) % COLORS.len()];
            let material = MATERIALS[(i * 3 + i / NOUNS.len()) % MATERIALS.len()];
            simple(
                format!("{material} {noun} {color}"),
                &mut products,
                &mut rng,
            );
            i += 1;
        }

        // Sets: the seed's Kış Paketi, six sets of random components, one nested set.
        let mut set_items = Vec::new();
        let set_names = [
            "Kış Paketi",
            "Mutfak Başlangıç Seti",
            "Banyo Seti",
            "Kamp Paketi",
            "Okul Paketi",
            "Kahve Keyfi Seti",
            "Yaz Paketi",
            "Aile Kış Paketi",
        ];
        let mut set_indexes = Vec::new();
        for (k, name) in set_names.iter().enumerate() {
            let index = products.len();
            set_indexes.push(index);
            products.push(Product {
                id: uuid_from(&mut rng),
                barcode: format!("SET-{:03}", k + 1),
                sku: format!("STK-SET-{:03}", k + 1),
                name: (*name).to_string(),
                is_set: true,
            });
        }
        let kis_paketi = set_indexes[0];
        for (component, quantity, _) in KIS_PAKETI {
            set_items.push((kis_paketi, component, quantity));
        }
        for &set in &set_indexes[1..set_indexes.len() - 1] {
            let count = rng.gen_range(2..=4);
            let mut chosen: Vec<usize> = Vec::new();
            while chosen.len() < count {
                let c = rng.gen_range(4..SIMPLE_PRODUCTS);
                if !chosen.contains(&c) {
                    chosen.push(c);
                }
            }
            for c in chosen {
                set_items.push((set, c, rng.gen_range(1..=3)));
            }
        }
        // Nested: two Kış Paketi and two Bere.
        let aile = set_indexes[set_indexes.len() - 1];
        set_items.push((aile, kis_paketi, 2));
        set_items.push((aile, BERE, 2));

        let mut store_id = || uuid_from(&mut rng);
        let stores = vec![
            Store {
                id: store_id(),
                name: "Trendyol · Moda".into(),
                marketplace: Marketplace::Trendyol,
                seller_id: "104857".into(),
                api_key: Some("demo-trendyol-key-1".into()),
                api_secret: "demo-trendyol-secret-1".into(),
            },
            Store {
                id: store_id(),
                name: "Trendyol · Ev Yaşam".into(),
                marketplace: Marketplace::Trendyol,
                seller_id: "209715".into(),
                api_key: Some("demo-trendyol-key-2".into()),
                api_secret: "demo-trendyol-secret-2".into(),
            },
            Store {
                id: store_id(),
                name: "Hepsiburada".into(),
                marketplace: Marketplace::Hepsiburada,
                seller_id: store_id().to_string(),
                api_key: None,
                api_secret: "demo-hepsiburada-service-key".into(),
            },
        ];

        let mut stock = Vec::new();
        for s in 0..stores.len() {
            for (p, product) in products.iter().enumerate() {
                let quantity = if product.is_set {
                    0 // a set's own row is ignored by the rules
                } else if let Some(&(_, _, q)) = KIS_PAKETI.iter().find(|(c, _, _)| *c == p) {
                    q
                } else if p == BERE {
                    25
                } else if rng.gen_bool(0.06) {
                    0
                } else {
                    rng.gen_range(1..=120)
                };
                stock.push((p, s, quantity));
            }
        }
        let by_id = products
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id, i))
            .collect();
        Catalogue {
            products,
            set_items,
            stores,
            stock,
            kis_paketi,
            by_id,
        }
    }

    /// The mock marketplace's accounts for the catalogue's stores.
    fn mock_accounts(&self) -> Vec<MockAccount> {
        self.stores
            .iter()
            .map(|store| {
                let listings: Vec<String> = self
                    .products
                    .iter()
                    .map(|p| store.listing_key(p).to_string())
                    .collect();
                match store.marketplace {
                    Marketplace::Trendyol => MockAccount::trendyol(
                        store.seller_id.clone(),
                        store.api_key.clone().unwrap_or_default(),
                        store.api_secret.clone(),
                    ),
                    Marketplace::Hepsiburada => {
                        MockAccount::hepsiburada(store.seller_id.clone(), store.api_secret.clone())
                    }
                }
                .with_listings(listings)
            })
            .collect()
    }

    /// Inserts stores, products, set items and product_stores in one transaction.
    async fn load(&self, client: &mut Client) -> Result<(), tokio_postgres::Error> {
        let tx = client.transaction().await?;
        for store in &self.stores {
            let kind = match store.marketplace {
                Marketplace::Trendyol => "TRENDYOL",
                Marketplace::Hepsiburada => "HEPSIBURADA",
            };
            tx.execute(
                "INSERT INTO stores (id, name, type, is_active, send_stock, seller_id, api_key, api_secret) \
                 VALUES ($1, $2, $3, true, true, $4, $5, $6)",
                &[&store.id, &store.name, &kind, &store.seller_id, &store.api_key, &store.api_secret],
            )
            .await?;
        }
        let ids: Vec<Uuid> = self.products.iter().map(|p| p.id).collect();
        let barcodes: Vec<&str> = self.products.iter().map(|p| p.barcode.as_str()).collect();
        let skus: Vec<&str> = self.products.iter().map(|p| p.sku.as_str()).collect();
        let names: Vec<&str> = self.products.iter().map(|p| p.name.as_str()).collect();
        let types: Vec<&str> = self
            .products
            .iter()
            .map(|p| if p.is_set { "SET" } else { "SIMPLE" })
            .collect();
        tx.execute(
            "INSERT INTO products (id, barcode, sku, name, product_type) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])",
            &[&ids, &barcodes, &skus, &names, &types],
        )
        .await?;
        let item_ids: Vec<Uuid> = (0..self.set_items.len())
            .map(|i| Uuid::from_u128(0x5e7_0000 + i as u128))
            .collect();
        let sets: Vec<Uuid> = self
            .set_items
            .iter()
            .map(|(s, _, _)| self.products[*s].id)
            .collect();
        let components: Vec<Uuid> = self
            .set_items
            .iter()
            .map(|(_, c, _)| self.products[*c].id)
            .collect();
        let quantities: Vec<i32> = self.set_items.iter().map(|(_, _, q)| *q).collect();
        tx.execute(
            "INSERT INTO product_set_items (id, set_product_id, component_product_id, quantity) \
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int4[])",
            &[&item_ids, &sets, &components, &quantities],
        )
        .await?;
        let row_ids: Vec<Uuid> = (0..self.stock.len())
            .map(|i| Uuid::from_u128(0x0570_0000_0000 + i as u128))
            .collect();
        let products: Vec<Uuid> = self
            .stock
            .iter()
            .map(|(p, _, _)| self.products[*p].id)
            .collect();
        let stores: Vec<Uuid> = self
            .stock
            .iter()
            .map(|(_, s, _)| self.stores[*s].id)
            .collect();
        let sellable: Vec<i32> = self.stock.iter().map(|(_, _, q)| *q).collect();
        tx.execute(
            "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity, committed_quantity) \
             SELECT id, product_id, store_id, sellable, 0 \
             FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int4[]) AS t(id, product_id, store_id, sellable)",
            &[&row_ids, &products, &stores, &sellable],
        )
        .await?;
        tx.commit().await
    }
}

// ---------------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------------

/// Reserve stock for an order line; refused (0 rows) when not enough is sellable.
const ORDER_SQL: &str = "UPDATE product_stores \
     SET sellable_quantity = sellable_quantity - $3, committed_quantity = committed_quantity + $3 \
     WHERE product_id = $1 AND store_id = $2 AND sellable_quantity >= $3";

/// Release an order line.
const CANCEL_SQL: &str = "UPDATE product_stores \
     SET sellable_quantity = sellable_quantity + $3, \
         committed_quantity = GREATEST(committed_quantity - $3, 0) \
     WHERE product_id = $1 AND store_id = $2";

/// Goods arrive at the warehouse: every store of the product can sell more.
const RESTOCK_SQL: &str =
    "UPDATE product_stores SET sellable_quantity = sellable_quantity + $2 WHERE product_id = $1";

#[derive(Default)]
struct Counters {
    orders: AtomicU64,
    kis_orders: AtomicU64,
    out_of_stock: AtomicU64,
    cancellations: AtomicU64,
    restocks: AtomicU64,
    errors: AtomicU64,
}

struct Order {
    store: Uuid,
    lines: Vec<(Uuid, i32)>,
}

struct Workload {
    rng: StdRng,
    catalogue: Arc<Catalogue>,
    open_orders: VecDeque<Order>,
    counters: Arc<Counters>,
}

impl Workload {
    async fn run(mut self, mut client: Client, stop: CancellationToken) {
        loop {
            let pause = Duration::from_millis(self.rng.gen_range(150..=250));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            if let Err(e) = self.step(&mut client).await {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "demo workload step failed");
                if client.is_closed() {
                    return;
                }
            }
        }
    }

    async fn step(&mut self, client: &mut Client) -> Result<(), tokio_postgres::Error> {
        match self.rng.gen_range(0..10) {
            0..=5 => self.order(client).await,
            6 | 7 if !self.open_orders.is_empty() => self.cancel(client).await,
            _ => self.restock(client).await,
        }
    }

    async fn order(&mut self, client: &mut Client) -> Result<(), tokio_postgres::Error> {
        let c = &self.catalogue;
        let store = c.stores[self.rng.gen_range(0..c.stores.len())].id;
        let kis = self.rng.gen_ratio(1, 5);
        let lines: Vec<(Uuid, i32)> = if kis {
            KIS_PAKETI
                .iter()
                .map(|&(component, per_set, _)| (c.products[component].id, per_set))
                .collect()
        } else {
            let count = self.rng.gen_range(1..=3);
            let mut lines: Vec<(Uuid, i32)> = Vec::new();
            while lines.len() < count {
                let p = c.products[self.rng.gen_range(KIS_PAKETI.len()..SIMPLE_PRODUCTS)].id;
                if !lines.iter().any(|(id, _)| *id == p) {
                    lines.push((p, self.rng.gen_range(1..=3)));
                }
            }
            lines
        };
        let tx = client.transaction().await?;
        for (product, quantity) in &lines {
            if tx.execute(ORDER_SQL, &[product, &store, quantity]).await? == 0 {
                tx.rollback().await?;
                self.counters.out_of_stock.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        tx.commit().await?;
        self.counters.orders.fetch_add(1, Ordering::Relaxed);
        if kis {
            self.counters.kis_orders.fetch_add(1, Ordering::Relaxed);
        }
        self.open_orders.push_back(Order { store, lines });
        if self.open_orders.len() > 200 {
            self.open_orders.pop_front(); // shipped: stays committed
        }
        Ok(())
    }

    async fn cancel(&mut self, client: &mut Client) -> Result<(), tokio_postgres::Error> {
        let index = self.rng.gen_range(0..self.open_orders.len());
        let Some(order) = self.open_orders.remove(index) else {
            return Ok(());
        };
        let tx = client.transaction().await?;
        for (product, quantity) in &order.lines {
            tx.execute(CANCEL_SQL, &[product, &order.store, quantity])
                .await?;
        }
        tx.commit().await?;
        self.counters.cancellations.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn restock(&mut self, client: &mut Client) -> Result<(), tokio_postgres::Error> {
        let c = &self.catalogue;
        let product = if self.rng.gen_ratio(1, 4) {
            KIS_PAKETI[self.rng.gen_range(0..KIS_PAKETI.len())].0
        } else {
            self.rng.gen_range(0..SIMPLE_PRODUCTS)
        };
        let amount: i32 = self.rng.gen_range(5..=30);
        client
            .execute(RESTOCK_SQL, &[&c.products[product].id, &amount])
            .await?;
        self.counters.restocks.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// What the table shows
// ---------------------------------------------------------------------------------------

/// One store's line of the table.
#[derive(Debug, Default, Clone)]
struct StoreView {
    pending: i64,
    dead: i64,
    pushes: usize,
    refused: usize,
    items: usize,
    converged: usize,
    listed: usize,
    kis_db: Option<i32>,
    kis_marketplace: Option<i64>,
    /// A few products whose marketplace quantity differs: (listing, db, marketplace).
    differences: Vec<(String, i32, Option<i64>)>,
}

async fn observe(
    client: &Client,
    catalogue: &Catalogue,
    mock: &MockMarketplace,
) -> Result<Vec<StoreView>> {
    // The queue table exists once setup ran; before that everything is 0.
    let queue: HashMap<Uuid, crate::queue::QueueCounts> = crate::queue::queue_counts(client)
        .await
        .map(|counts| counts.into_iter().collect())
        .unwrap_or_default();
    let rules = QuantityRules {
        max_quantity: 20_000,
        safety_stock: 0,
    };
    let state: MockState = mock.state();
    let requests = mock.requests();
    let mut views = Vec::with_capacity(catalogue.stores.len());
    for store in &catalogue.stores {
        let expected = compute_store(client, store.id, &rules)
            .await
            .context("computing the expected quantities")?;
        let account = state.account(store.marketplace, &store.seller_id);
        let at_marketplace = |product: &Product| -> Option<i64> {
            let account = account?;
            account
                .stock
                .get(store.listing_key(product))
                .or_else(|| account.stock.get(&product.barcode))
                .copied()
        };
        let mut view = StoreView {
            listed: expected.len(),
            ..StoreView::default()
        };
        let counts = queue.get(&store.id).copied().unwrap_or_default();
        let (pending, dead) = (counts.pending, counts.dead);
        view.pending = pending;
        view.dead = dead;
        for r in requests.iter().filter(|r| {
            r.marketplace == Some(store.marketplace)
                && r.seller_id.as_deref() == Some(store.seller_id.as_str())
                && r.endpoint.as_deref() == Some("push")
        }) {
            view.pushes += 1;
            if (200..300).contains(&r.status) {
                view.items += r.item_count;
            } else {
                view.refused += 1;
            }
        }
        for computed in &expected {
            let Some(&index) = catalogue.by_id.get(&computed.product_id) else {
                continue;
            };
            let product = &catalogue.products[index];
            let shown = at_marketplace(product);
            if shown == Some(i64::from(computed.quantity)) {
                view.converged += 1;
            } else if view.differences.len() < 5 {
                let listing = match store.marketplace {
                    Marketplace::Trendyol => format!("barcode {}", product.barcode),
                    Marketplace::Hepsiburada => format!("merchantSku {}", product.sku),
                };
                view.differences.push((
                    format!("{listing} ({})", product.name),
                    computed.quantity,
                    shown,
                ));
            }
            if index == catalogue.kis_paketi {
                view.kis_db = Some(computed.quantity);
                view.kis_marketplace = shown;
            }
        }
        views.push(view);
    }
    Ok(views)
}

fn all_converged(views: &[StoreView]) -> bool {
    views
        .iter()
        .all(|v| v.listed > 0 && v.converged == v.listed)
}

fn opt(v: Option<impl std::fmt::Display>) -> String {
    v.map_or_else(|| "–".to_string(), |v| v.to_string())
}

fn render_table(catalogue: &Catalogue, views: &[StoreView]) -> String {
    let mut out = format!(
        "  {:<36} {:>7} {:>8} {:>7} {:>16}   {}\n",
        "store", "pending", "requests", "items", "converged", "Kış Paketi db / marketplace"
    );
    for (store, v) in catalogue.stores.iter().zip(views) {
        let requests = if v.refused > 0 {
            format!("{} ({} refused)", v.pushes, v.refused)
        } else {
            v.pushes.to_string()
        };
        let mark = if v.kis_db.map(i64::from) == v.kis_marketplace && v.kis_db.is_some() {
            "✓"
        } else {
            "…"
        };
        out.push_str(&format!(
            "  {:<36} {:>7} {:>8} {:>7} {:>16}   {} / {} {}\n",
            store.short_name(),
            v.pending,
            requests,
            v.items,
            format!("converged {}/{}", v.converged, v.listed),
            opt(v.kis_db),
            opt(v.kis_marketplace),
            mark,
        ));
    }
    out
}

fn counters_line(counters: &Counters) -> String {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut line = format!(
        "orders {} (Kış Paketi {}, {} refused: out of stock)   cancellations {}   restocks {}",
        get(&counters.orders),
        get(&counters.kis_orders),
        get(&counters.out_of_stock),
        get(&counters.cancellations),
        get(&counters.restocks),
    );
    let errors = get(&counters.errors);
    if errors > 0 {
        line.push_str(&format!("   errors {errors}"));
    }
    line
}

/// Prints a frame. On a terminal the frame is redrawn in place, like `top`: the cursor goes
/// home, every line overwrites the previous frame's and clears what is left of it, the rest
/// of the screen below is cleared, and the cursor is hidden meanwhile (shown again when the
/// screen is dropped). Piped or redirected, frames are appended line by line, no escape codes.
struct Screen {
    terminal: bool,
    header: String,
}

/// Cursor to the top left corner.
const HOME: &str = "\x1b[H";
/// Clear from the cursor to the end of the line.
const CLEAR_LINE: &str = "\x1b[K";
/// Clear from the cursor to the end of the screen.
const CLEAR_BELOW: &str = "\x1b[J";
const HIDE_CURSOR: &str = "\x1b[?25l";
const SHOW_CURSOR: &str = "\x1b[?25h";

impl Screen {
    fn show(&self, frame: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(self.render(frame).as_bytes());
        let _ = stdout.flush();
    }

    fn render(&self, frame: &str) -> String {
        if !self.terminal {
            return frame.to_string();
        }
        let mut out = format!("{HIDE_CURSOR}{HOME}");
        for line in self.header.lines().chain([""]).chain(frame.lines()) {
            out.push_str(line);
            out.push_str(CLEAR_LINE);
            out.push('\n');
        }
        out.push_str(CLEAR_BELOW);
        out
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        if self.terminal {
            let mut stdout = std::io::stdout().lock();
            let _ = write!(stdout, "{SHOW_CURSOR}");
            let _ = stdout.flush();
        }
    }
}

/// The demo's last words: where to look while stocksync runs for real.
fn next_steps(dashboard: &str) -> String {
    format!(
        "\nstocksync demo: operating stocksync for real (see the README, \"Operating stocksync\"):\n  \
         dashboard:     / on STOCKSYNC_HTTP_ADDR (this run's was {dashboard}): status, API log, charts of the last hour\n  \
         Grafana board: deploy/grafana/stocksync.json\n  \
         alert rules:   deploy/prometheus/alerts.yml (runbooks in the annotations; tests in alerts_test.yml)\n  \
         systemd unit:  deploy/systemd/stocksync.service (+ stocksync.env.example)\n"
    )
}

// ---------------------------------------------------------------------------------------
// Running it
// ---------------------------------------------------------------------------------------

/// Ctrl-C / SIGTERM: the first stops the workload (the demo then waits for convergence),
/// the second also skips that wait.
fn spawn_signal_handler(stop: CancellationToken, abort: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        for token in [stop, abort] {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            token.cancel();
        }
    });
}

/// A free port on `addr`'s interface when `addr` asks for port 0, so the dashboard URL that
/// is printed is the one the service binds.
fn resolve_port(addr: SocketAddr) -> Result<SocketAddr> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} (--http-addr)"))?;
    let bound = listener.local_addr()?;
    drop(listener);
    Ok(bound)
}

fn browsable(addr: SocketAddr) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    format!("http://{addr}/")
}

/// `stocksync demo`.
pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    let stop = CancellationToken::new();
    let abort = CancellationToken::new();
    spawn_signal_handler(stop.clone(), abort.clone());
    let http_addr = resolve_port(args.http_addr)?;

    println!("stocksync demo: starting a private PostgreSQL cluster …");
    let cluster =
        match tokio::task::spawn_blocking(|| LocalCluster::start(ClusterOptions::default()))
            .await
            .context("starting PostgreSQL")?
        {
            Ok(cluster) => cluster,
            Err(e @ LocalPgError::BinariesNotFound) => {
                eprintln!("stocksync demo: {e}");
                return Ok(ExitCode::from(super::EXIT_CONFIG));
            }
            Err(e) => return Err(e).context("starting a private PostgreSQL cluster"),
        };
    cluster
        .remove_when_process_exits(std::process::id())
        .context("starting the cluster watchdog")?;

    let outcome = with_cluster(&cluster, &args, http_addr, stop, abort).await;

    // The cluster goes last, after every connection to it closed.
    let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
    outcome
}

async fn with_cluster(
    cluster: &LocalCluster,
    args: &DemoArgs,
    http_addr: SocketAddr,
    stop: CancellationToken,
    abort: CancellationToken,
) -> Result<ExitCode> {
    let url = cluster.url_for("postgres", DATABASE);
    {
        let admin = DbConfig::from_url(&cluster.url())?.connect().await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
            .await
            .context("creating the demo database")?;
    }
    let db = DbConfig::from_url(&url)?;
    let mut client = db.connect().await?;
    client
        .batch_execute(APP_SCHEMA)
        .await
        .context("loading sql/app_schema.sql")?;
    let catalogue = Arc::new(Catalogue::generate());
    catalogue
        .load(&mut client)
        .await
        .context("loading the sample catalogue")?;
    let sets = catalogue.products.iter().filter(|p| p.is_set).count();
    println!(
        "stocksync demo: database {DATABASE} on 127.0.0.1:{} with {} products ({} sets), {} stores, {} listings",
        cluster.port(),
        catalogue.products.len(),
        sets,
        catalogue.stores.len(),
        catalogue.stock.len(),
    );

    let mock_config = MockConfig {
        accounts: catalogue.mock_accounts(),
        // As a live merchant account: only the authorised developer user name is accepted.
        behaviour: crate::mock::Behaviour {
            hepsiburada_user_agent: Some(DEMO_HEPSIBURADA_USER_AGENT.into()),
            ..crate::mock::Behaviour::default()
        },
        ..MockConfig::default()
    };
    let mock = MockMarketplace::start(mock_config, args.mock_addr)
        .await
        .with_context(|| {
            format!(
                "starting the mock marketplace on {} (--mock-addr)",
                args.mock_addr
            )
        })?;

    let outcome = with_mock(
        &client, &catalogue, &mock, &url, args, http_addr, stop, abort,
    )
    .await;
    drop(client);
    mock.shutdown().await;
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn with_mock(
    client: &Client,
    catalogue: &Arc<Catalogue>,
    mock: &MockMarketplace,
    url: &str,
    args: &DemoArgs,
    http_addr: SocketAddr,
    stop: CancellationToken,
    abort: CancellationToken,
) -> Result<ExitCode> {
    let values: HashMap<&str, String> = [
        ("DATABASE_URL", url.to_string()),
        ("STOCKSYNC_TRENDYOL_URL", mock.base_url()),
        ("STOCKSYNC_HEPSIBURADA_URL", mock.base_url()),
        (
            "STOCKSYNC_HEPSIBURADA_USER_AGENT",
            DEMO_HEPSIBURADA_USER_AGENT.to_string(),
        ),
        ("STOCKSYNC_FLUSH_INTERVAL", "1s".to_string()),
        ("STOCKSYNC_HTTP_ADDR", http_addr.to_string()),
        ("STOCKSYNC_IDENTICAL_REQUEST_WINDOW", "15m".to_string()),
    ]
    .into_iter()
    .collect();
    let config = Config::load_from(None, |name| values.get(name).cloned())
        .context("building the demo configuration")?;

    let steps = setup::plan(client, &config.slot, &config.publication)
        .await
        .context("planning setup")?;
    setup::apply(client, &steps)
        .await
        .context("running setup")?;
    let problems = setup::preflight(client, &config.slot, &config.publication, true)
        .await
        .context("running preflight checks")?;
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("stocksync demo: {}", p.0);
        }
        return Ok(ExitCode::from(super::EXIT_CONFIG));
    }
    println!("stocksync demo: setup complete ({} steps)", steps.len());

    let header = format!(
        "stocksync demo\n  dashboard:          {}\n  mock marketplaces:  {}/\n  stop:               Ctrl-C (a second Ctrl-C skips the final wait)\n",
        browsable(http_addr),
        mock.base_url(),
    );
    println!("{header}");
    let screen = Screen {
        terminal: std::io::stdout().is_terminal(),
        header,
    };

    let service_stop = CancellationToken::new();
    let service: JoinHandle<Result<Result<(), crate::capture::CaptureError>>> =
        tokio::spawn(service::run_until(config, service_stop.clone()));

    let outcome = play(
        client, url, catalogue, mock, args, &screen, &service, stop, abort,
    )
    .await;

    service_stop.cancel();
    let service_result = match tokio::time::timeout(SERVICE_STOP_WAIT, service).await {
        Ok(Ok(Ok(Ok(())))) => Ok(()),
        Ok(Ok(Ok(Err(capture)))) => Err(format!("capture stopped: {capture}")),
        Ok(Ok(Err(start))) => Err(format!("the service did not start: {start:#}")),
        Ok(Err(join)) => Err(format!("the service task failed: {join}")),
        Err(_) => Err("the service did not stop within 15 s".to_string()),
    };
    if let Err(problem) = &service_result {
        eprintln!("stocksync demo: {problem}");
    }
    let converged = outcome?;
    let ok = converged && service_result.is_ok();
    if ok {
        println!("stocksync demo: done; everything it started is stopped and removed.");
    } else {
        println!(
            "stocksync demo: done (not converged); everything it started is stopped and removed."
        );
    }
    print!("{}", next_steps(&browsable(http_addr)));
    let _ = std::io::stdout().flush();
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_RUNTIME)
    })
}

/// Runs the workload and the live table, then waits for convergence. Returns whether every
/// store converged.
#[allow(clippy::too_many_arguments)]
async fn play(
    client: &Client,
    url: &str,
    catalogue: &Arc<Catalogue>,
    mock: &MockMarketplace,
    args: &DemoArgs,
    screen: &Screen,
    service: &JoinHandle<Result<Result<(), crate::capture::CaptureError>>>,
    stop: CancellationToken,
    abort: CancellationToken,
) -> Result<bool> {
    let counters = Arc::new(Counters::default());
    let workload_stop = stop.child_token();
    let workload_client = DbConfig::from_url(url)?.connect().await?;
    let workload = tokio::spawn(
        Workload {
            rng: StdRng::seed_from_u64(SEED + 1),
            catalogue: catalogue.clone(),
            open_orders: VecDeque::new(),
            counters: counters.clone(),
        }
        .run(workload_client, workload_stop.clone()),
    );

    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut service_died = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let elapsed = started.elapsed();
        let views = observe(client, catalogue, mock).await?;
        screen.show(&format!(
            "[{:>3}s/{}s] {}\n{}\n",
            elapsed.as_secs(),
            args.duration.as_secs(),
            counters_line(&counters),
            render_table(catalogue, &views)
        ));
        if service.is_finished() {
            service_died = true;
            break;
        }
        if elapsed >= args.duration {
            break;
        }
    }
    workload_stop.cancel();
    let _ = workload.await;
    if service_died {
        println!("stocksync demo: the service stopped unexpectedly (see the log above)");
    }

    println!(
        "stocksync demo: workload stopped ({}); waiting up to {}s for the marketplaces to converge …",
        counters_line(&counters),
        CONVERGENCE_WAIT.as_secs()
    );
    let waiting = Instant::now();
    let mut views = observe(client, catalogue, mock).await?;
    let mut last_shown = Instant::now();
    while !all_converged(&views) && waiting.elapsed() < CONVERGENCE_WAIT && !service_died {
        tokio::select! {
            _ = abort.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        views = observe(client, catalogue, mock).await?;
        if last_shown.elapsed() >= Duration::from_secs(1) {
            last_shown = Instant::now();
            screen.show(&format!(
                "[waiting {:>2}s/{}s]\n{}\n",
                waiting.elapsed().as_secs(),
                CONVERGENCE_WAIT.as_secs(),
                render_table(catalogue, &views)
            ));
        }
        service_died = service.is_finished();
    }

    let converged = all_converged(&views);
    let mut out = String::from("\nstocksync demo: final result\n");
    out.push_str(&render_table(catalogue, &views));
    for (store, v) in catalogue.stores.iter().zip(&views) {
        out.push_str(&format!(
            "  {}: converged {}/{}{}\n",
            store.short_name(),
            v.converged,
            v.listed,
            if v.dead > 0 {
                format!(", {} dead-lettered", v.dead)
            } else {
                String::new()
            }
        ));
        for (listing, db, shown) in &v.differences {
            out.push_str(&format!(
                "      {listing}: database {db}, marketplace {}\n",
                opt(*shown)
            ));
        }
    }
    let kis = &catalogue.products[catalogue.kis_paketi];
    out.push_str(&format!(
        "  {} ({KIS_PAKETI_BARCODE}, Mont×1 + Eldiven×2 + Atkı×1): {}\n",
        kis.name,
        catalogue
            .stores
            .iter()
            .zip(&views)
            .map(|(s, v)| format!(
                "{} db {} / marketplace {}",
                s.name,
                opt(v.kis_db),
                opt(v.kis_marketplace)
            ))
            .collect::<Vec<_>>()
            .join("; ")
    ));
    if converged {
        out.push_str(&format!(
            "  all stores converged {:.1}s after the workload stopped\n",
            waiting.elapsed().as_secs_f64()
        ));
    } else {
        out.push_str(
            "  NOT converged: the marketplaces still differ from the database (see above)\n",
        );
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
    Ok(converged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_is_deterministic_and_holds_the_seed_set() {
        let a = Catalogue::generate();
        let b = Catalogue::generate();
        assert_eq!(a.products.len(), 300);
        assert_eq!(
            a.products.iter().map(|p| p.id).collect::<Vec<_>>(),
            b.products.iter().map(|p| p.id).collect::<Vec<_>>()
        );
        assert_eq!(a.stock, b.stock);
        assert_eq!(a.stores.len(), 3);
        assert_eq!(a.stock.len(), 300 * 3);
        let kis = &a.products[a.kis_paketi];
        assert_eq!(kis.barcode, KIS_PAKETI_BARCODE);
        let items: Vec<(&str, i32)> = a
            .set_items
            .iter()
            .filter(|(s, _, _)| *s == a.kis_paketi)
            .map(|(_, c, q)| (a.products[*c].name.as_str(), *q))
            .collect();
        assert_eq!(
            items,
            [("Kışlık Mont", 1), ("Yün Eldiven", 2), ("Örgü Atkı", 1)]
        );
        // 50 / 30 / 40 in every store: 15 sets.
        for s in 0..a.stores.len() {
            for (component, _, stock) in KIS_PAKETI {
                assert!(a.stock.contains(&(component, s, stock)));
            }
        }
        // One nested set.
        assert!(a
            .set_items
            .iter()
            .any(|(s, c, _)| *s != *c && a.products[*c].is_set));
        // Unique barcodes and skus.
        let mut keys: Vec<&str> = a.products.iter().map(|p| p.barcode.as_str()).collect();
        keys.extend(a.products.iter().map(|p| p.sku.as_str()));
        let n = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), n);
    }

    #[test]
    fn a_terminal_frame_overwrites_the_last_one_and_a_pipe_gets_plain_lines() {
        let header = "stocksync demo\n  dashboard: http://127.0.0.1:9187/\n".to_string();
        let frame = "[  1s/60s] orders 1\n  store   pending\n";
        let piped = Screen {
            terminal: false,
            header: header.clone(),
        };
        assert_eq!(piped.render(frame), frame, "no escape codes in a pipe");
        let tty = Screen {
            terminal: true,
            header,
        };
        let drawn = tty.render(frame);
        assert!(drawn.starts_with("\x1b[?25l\x1b[H"), "{drawn:?}");
        assert!(drawn.ends_with("\x1b[J"), "{drawn:?}");
        // Every line clears what a longer line of the previous frame left.
        assert_eq!(drawn.matches("\x1b[K\n").count(), 2 + 1 + 2);
        assert!(!drawn.contains("\x1b[2J"), "no full clear: no flicker");
        std::mem::forget(tty); // its Drop would write to the test's stdout
    }

    #[test]
    fn the_last_words_point_at_the_kit() {
        let text = next_steps("http://127.0.0.1:9187/");
        for wanted in [
            "http://127.0.0.1:9187/",
            "deploy/grafana/stocksync.json",
            "deploy/prometheus/alerts.yml",
            "deploy/systemd/stocksync.service",
        ] {
            assert!(text.contains(wanted), "{wanted} in {text}");
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
            if let Some(file) = wanted.strip_prefix("deploy/") {
                assert!(path.join("deploy").join(file).is_file(), "{wanted} exists");
            }
        }
    }

    #[test]
    fn mock_accounts_match_the_stores() {
        let c = Catalogue::generate();
        let accounts = c.mock_accounts();
        let config = MockConfig {
            accounts,
            ..MockConfig::default()
        };
        config.validate().unwrap();
        assert_eq!(
            config
                .accounts
                .iter()
                .filter(|a| a.marketplace == Marketplace::Trendyol)
                .count(),
            2
        );
    }
}
