//! What the demo shows once per second: per store the queue, the pushes the mock received
//! and how many listings show the quantity the database implies.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use tokio_postgres::Client;
use uuid::Uuid;

use super::catalogue::{Catalogue, Product};
use super::workload::Counters;
use crate::mock::{Marketplace, MockMarketplace, MockState};
use crate::stock::{compute_store, QuantityRules};

/// One store's line of the table.
#[derive(Debug, Default, Clone)]
pub(super) struct StoreView {
    pub(super) pending: i64,
    pub(super) dead: i64,
    pushes: usize,
    pub(super) refused: usize,
    pub(super) items: usize,
    pub(super) converged: usize,
    pub(super) listed: usize,
    pub(super) kis_db: Option<i32>,
    pub(super) kis_marketplace: Option<i64>,
    /// A few products whose marketplace quantity differs: (listing, db, marketplace).
    pub(super) differences: Vec<(String, i32, Option<i64>)>,
}

pub(super) async fn observe(
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

pub(super) fn all_converged(views: &[StoreView]) -> bool {
    views
        .iter()
        .all(|v| v.listed > 0 && v.converged == v.listed)
}

pub(super) fn opt(v: Option<impl std::fmt::Display>) -> String {
    v.map_or_else(|| "–".to_string(), |v| v.to_string())
}

pub(super) fn render_table(catalogue: &Catalogue, views: &[StoreView]) -> String {
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

pub(super) fn counters_line(counters: &Counters) -> String {
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
pub(super) struct Screen {
    pub(super) terminal: bool,
    pub(super) header: String,
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
    pub(super) fn show(&self, frame: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(self.render(frame).as_bytes());
        let _ = stdout.flush();
    }

    pub(super) fn render(&self, frame: &str) -> String {
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
pub(super) fn next_steps(dashboard: &str) -> String {
    format!(
        "\nstocksync demo: operating stocksync for real (see the README, \"Operating stocksync\"):\n  \
         dashboard:     / on STOCKSYNC_HTTP_ADDR (this run's was {dashboard}): status, API log, charts of the last hour\n  \
         Grafana board: deploy/grafana/stocksync.json\n  \
         alert rules:   deploy/prometheus/alerts.yml (runbooks in the annotations; tests in alerts_test.yml)\n  \
         systemd unit:  deploy/systemd/stocksync.service (+ stocksync.env.example)\n"
    )
}
