//! The demo's sample catalogue: the same 300 products, sets, stores and stock every run,
//! written to the demo database and mirrored as mock marketplace accounts.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::Client;
use uuid::Uuid;

use super::SEED;
use crate::mock::{Marketplace, MockAccount};

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
pub(super) const SIMPLE_PRODUCTS: usize = 292;

/// Index of the Bere used by the nested set.
const BERE: usize = 3;

/// The seed plan's "Kış Paketi": (component index, quantity in the set, initial stock).
pub(super) const KIS_PAKETI: [(usize, i32, i32); 3] = [(0, 1, 50), (1, 2, 30), (2, 1, 40)];

/// Barcode of the "Kış Paketi" set.
pub(super) const KIS_PAKETI_BARCODE: &str = "SET-001";

#[derive(Debug, Clone)]
pub(super) struct Product {
    pub(super) id: Uuid,
    pub(super) barcode: String,
    pub(super) sku: String,
    pub(super) name: String,
    pub(super) is_set: bool,
}

#[derive(Debug, Clone)]
pub(super) struct Store {
    pub(super) id: Uuid,
    pub(super) name: String,
    pub(super) marketplace: Marketplace,
    /// Trendyol seller id / Hepsiburada merchant id.
    pub(super) seller_id: String,
    /// Trendyol only.
    api_key: Option<String>,
    /// Trendyol api secret / Hepsiburada service key.
    api_secret: String,
}

impl Store {
    /// The listing key the marketplace knows a product by: Trendyol barcode, Hepsiburada
    /// merchant sku.
    pub(super) fn listing_key<'a>(&self, product: &'a Product) -> &'a str {
        match self.marketplace {
            Marketplace::Trendyol => &product.barcode,
            Marketplace::Hepsiburada => &product.sku,
        }
    }

    pub(super) fn short_name(&self) -> String {
        match self.marketplace {
            Marketplace::Trendyol => format!("{} (seller {})", self.name, self.seller_id),
            Marketplace::Hepsiburada => {
                format!("{} (merchant {}…)", self.name, &self.seller_id[..8])
            }
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Catalogue {
    pub(super) products: Vec<Product>,
    /// (set index, component index, quantity)
    pub(super) set_items: Vec<(usize, usize, i32)>,
    pub(super) stores: Vec<Store>,
    /// (product index, store index, sellable quantity)
    pub(super) stock: Vec<(usize, usize, i32)>,
    /// Index of the "Kış Paketi" set.
    pub(super) kis_paketi: usize,
    pub(super) by_id: HashMap<Uuid, usize>,
}

fn uuid_from(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.gen()).into_uuid()
}

impl Catalogue {
    /// The same catalogue every time.
    pub(super) fn generate() -> Catalogue {
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
    pub(super) fn mock_accounts(&self) -> Vec<MockAccount> {
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
    pub(super) async fn load(&self, client: &mut Client) -> Result<(), tokio_postgres::Error> {
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
