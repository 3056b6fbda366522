//! The demo's workload: orders, cancellations and restocks against `product_stores`, as
//! the seller's application would write them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::catalogue::{Catalogue, KIS_PAKETI, SIMPLE_PRODUCTS};

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
pub(super) struct Counters {
    pub(super) orders: AtomicU64,
    pub(super) kis_orders: AtomicU64,
    pub(super) out_of_stock: AtomicU64,
    pub(super) cancellations: AtomicU64,
    pub(super) restocks: AtomicU64,
    pub(super) errors: AtomicU64,
}

pub(super) struct Order {
    pub(super) store: Uuid,
    pub(super) lines: Vec<(Uuid, i32)>,
}

pub(super) struct Workload {
    pub(super) rng: StdRng,
    pub(super) catalogue: Arc<Catalogue>,
    pub(super) open_orders: VecDeque<Order>,
    pub(super) counters: Arc<Counters>,
}

impl Workload {
    pub(super) async fn run(mut self, mut client: Client, stop: CancellationToken) {
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

    pub(super) async fn order(&mut self, client: &mut Client) -> Result<(), tokio_postgres::Error> {
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

    pub(super) async fn cancel(
        &mut self,
        client: &mut Client,
    ) -> Result<(), tokio_postgres::Error> {
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

    pub(super) async fn restock(
        &mut self,
        client: &mut Client,
    ) -> Result<(), tokio_postgres::Error> {
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
