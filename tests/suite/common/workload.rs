//! A random catalogue, a random multi-client workload over the application tables, and the
//! real `stocksync run` binary as a child process that can be SIGKILLed and restarted.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stocksync::mock::{MockAccount, MockConfig};
use tokio_postgres::Client;
use uuid::Uuid;

use super::{binary, connect};

/// Credentials the tests grep for in logs afterwards.
pub const SECRETS: &[&str] = &["ty-key-9f2c", "ty-secret-51ab", "hb-secret-77de"];

/// The Hepsiburada merchant of the catalogue (its id is the Basic user name).
pub const HB_MERCHANT: &str = "hb-merchant-1";

/// Every form in which a credential could leak: the secrets themselves and the Basic tokens
/// the requests carried.
pub fn secret_forms() -> Vec<String> {
    use base64::Engine;
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let mut forms: Vec<String> = SECRETS.iter().map(|s| s.to_string()).collect();
    forms.push(b64(format!("{}:{}", SECRETS[0], SECRETS[1])));
    forms.push(b64(format!("{HB_MERCHANT}:{}", SECRETS[2])));
    forms
}

pub struct StoreSeed {
    pub id: Uuid,
    pub name: &'static str,
    pub kind: &'static str,
    pub active: bool,
    pub seller_id: &'static str,
}

pub struct Catalogue {
    pub stores: Vec<StoreSeed>,
    pub simple: Vec<Uuid>,
    pub sets: Vec<Uuid>,
}

/// Two Trendyol stores and one Hepsiburada store (mock accounts exist for them), an inactive
/// Trendyol store and one of a foreign type; `simple` products and `sets` sets of 2-4
/// simple components, every other set also containing the previous set (nested, acyclic);
/// each product listed in each store with probability 0.85.
pub async fn load_catalogue(
    client: &Client,
    rng: &mut StdRng,
    simple: usize,
    sets: usize,
) -> Catalogue {
    let stores = vec![
        StoreSeed {
            id: Uuid::new_v4(),
            name: "Trendyol A",
            kind: "TRENDYOL",
            active: true,
            seller_id: "3001",
        },
        StoreSeed {
            id: Uuid::new_v4(),
            name: "Trendyol B",
            kind: "TRENDYOL",
            active: true,
            seller_id: "3002",
        },
        StoreSeed {
            id: Uuid::new_v4(),
            name: "Hepsiburada",
            kind: "HEPSIBURADA",
            active: true,
            seller_id: "hb-merchant-1",
        },
        StoreSeed {
            id: Uuid::new_v4(),
            name: "Trendyol closed",
            kind: "TRENDYOL",
            active: false,
            seller_id: "3009",
        },
        StoreSeed {
            id: Uuid::new_v4(),
            name: "Other shop",
            kind: "N11",
            active: true,
            seller_id: "n11",
        },
    ];
    for s in &stores {
        let (key, secret) = match s.kind {
            "HEPSIBURADA" => (None, SECRETS[2]),
            _ => (Some(SECRETS[0]), SECRETS[1]),
        };
        client
            .execute(
                "INSERT INTO stores (id, name, type, is_active, send_stock, seller_id, api_key, api_secret) \
                 VALUES ($1, $2, $3, $4, true, $5, $6, $7)",
                &[&s.id, &s.name, &s.kind, &s.active, &s.seller_id, &key, &secret],
            )
            .await
            .unwrap();
    }
    let simple_ids: Vec<Uuid> = (0..simple).map(|_| Uuid::new_v4()).collect();
    let set_ids: Vec<Uuid> = (0..sets).map(|_| Uuid::new_v4()).collect();
    for (i, id) in simple_ids.iter().enumerate() {
        client
            .execute(
                "INSERT INTO products (id, barcode, sku, name, product_type) VALUES ($1, $2, $3, $4, 'SIMPLE')",
                &[id, &format!("BC-{i:04}"), &format!("SKU-{i:04}"), &format!("Ürün {i} (çğış)")],
            )
            .await
            .unwrap();
    }
    for (j, id) in set_ids.iter().enumerate() {
        client
            .execute(
                "INSERT INTO products (id, barcode, sku, name, product_type) VALUES ($1, $2, $3, $4, 'SET')",
                &[id, &format!("SET-BC-{j:03}"), &format!("SET-SKU-{j:03}"), &format!("Paket {j}")],
            )
            .await
            .unwrap();
        let components = rng.gen_range(2..=4);
        for _ in 0..components {
            let c = simple_ids[rng.gen_range(0..simple_ids.len())];
            let q: i32 = rng.gen_range(1..=3);
            add_item(client, *id, c, q).await;
        }
        if j % 2 == 1 {
            add_item(client, *id, set_ids[j - 1], 1).await;
        }
    }
    for s in &stores {
        for p in simple_ids.iter().chain(&set_ids) {
            if rng.gen_bool(0.85) {
                let q: i32 = rng.gen_range(0..60);
                client
                    .execute(
                        "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity, committed_quantity) \
                         VALUES ($1, $2, $3, $4, 0)",
                        &[&Uuid::new_v4(), p, &s.id, &q],
                    )
                    .await
                    .unwrap();
            }
        }
    }
    Catalogue {
        stores,
        simple: simple_ids,
        sets: set_ids,
    }
}

async fn add_item(client: &Client, set: Uuid, component: Uuid, quantity: i32) {
    client
        .execute(
            "INSERT INTO product_set_items (id, set_product_id, component_product_id, quantity) VALUES ($1, $2, $3, $4)",
            &[&Uuid::new_v4(), &set, &component, &quantity],
        )
        .await
        .unwrap();
}

/// Mock accounts for the catalogue's active marketplace stores.
pub fn mock_config(identical_window: Duration) -> MockConfig {
    MockConfig {
        accounts: vec![
            MockAccount::trendyol("3001", SECRETS[0], SECRETS[1]),
            MockAccount::trendyol("3002", SECRETS[0], SECRETS[1]),
            MockAccount::hepsiburada(HB_MERCHANT, SECRETS[2]),
        ],
        identical_window,
        // As a live merchant account: only the authorised user agent is accepted.
        behaviour: stocksync::mock::Behaviour {
            hepsiburada_user_agent: Some("test_dev".into()),
            ..stocksync::mock::Behaviour::default()
        },
        ..MockConfig::default()
    }
}

/// Counts of what a workload client did.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkloadStats {
    pub committed: u64,
    pub failed: u64,
}

/// One workload client: `transactions` random transactions (orders reserve and release,
/// restocks, removals, composition edits, new and deleted listings, products moving between
/// sets; some multi-statement). Failed transactions (deadlocks, a dropped connection) are
/// counted and skipped; the client reconnects when its connection is gone. Between two
/// transactions it pauses up to `pace` (spreading the workload over the scenario's faults).
pub async fn run_client(
    url: String,
    cat: std::sync::Arc<Catalogue>,
    seed: u64,
    transactions: u64,
    pace: Duration,
) -> WorkloadStats {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut client = connect_retrying(&url).await;
    let mut stats = WorkloadStats::default();
    let stores: Vec<Uuid> = cat.stores.iter().map(|s| s.id).collect();
    for _ in 0..transactions {
        if client.is_closed() {
            client = connect_retrying(&url).await;
        }
        let ops = if rng.gen_bool(0.1) {
            rng.gen_range(2..=5)
        } else {
            1
        };
        let mut sql = String::from("BEGIN;");
        for _ in 0..ops {
            sql.push_str(&random_statement(&mut rng, &cat, &stores));
        }
        sql.push_str("COMMIT;");
        match client.batch_execute(&sql).await {
            Ok(()) => stats.committed += 1,
            Err(_) => {
                stats.failed += 1;
                let _ = client.batch_execute("ROLLBACK").await;
            }
        }
        if !pace.is_zero() {
            tokio::time::sleep(pace.mul_f64(rng.gen_range(0.0..1.0))).await;
        }
    }
    stats
}

async fn connect_retrying(url: &str) -> Client {
    for _ in 0..600 {
        if let Ok(config) = stocksync::db::DbConfig::from_url(url) {
            if let Ok(c) = config.connect().await {
                return c;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    connect(url).await
}

/// One random statement; ids are generated values, never user text.
fn random_statement(rng: &mut StdRng, cat: &Catalogue, stores: &[Uuid]) -> String {
    let all = cat.simple.len() + cat.sets.len();
    let pick_any = |rng: &mut StdRng| {
        let i = rng.gen_range(0..all);
        if i < cat.simple.len() {
            cat.simple[i]
        } else {
            cat.sets[i - cat.simple.len()]
        }
    };
    let simple = cat.simple[rng.gen_range(0..cat.simple.len())];
    let set = cat.sets[rng.gen_range(0..cat.sets.len())];
    let store = stores[rng.gen_range(0..stores.len())];
    let roll = rng.gen_range(0..100);
    let k: i32 = rng.gen_range(1..=4);
    match roll {
        0..=34 => format!(
            "UPDATE product_stores SET sellable_quantity = sellable_quantity - {k}, committed_quantity = committed_quantity + {k} \
             WHERE product_id = '{simple}' AND store_id = '{store}';"
        ),
        35..=49 => format!(
            "UPDATE product_stores SET sellable_quantity = sellable_quantity + {k}, committed_quantity = committed_quantity - {k} \
             WHERE product_id = '{simple}' AND store_id = '{store}';"
        ),
        50..=62 => format!(
            "UPDATE product_stores SET sellable_quantity = sellable_quantity + {} WHERE product_id = '{simple}' AND store_id = '{store}';",
            rng.gen_range(5..50)
        ),
        63..=66 => format!(
            "UPDATE product_stores SET sellable_quantity = {} WHERE product_id = '{simple}' AND store_id = '{store}';",
            rng.gen_range(-3..=0)
        ),
        67..=73 => format!(
            "UPDATE product_set_items SET quantity = {} WHERE id = (SELECT id FROM product_set_items \
             WHERE set_product_id = '{set}' AND component_product_id <> ALL (SELECT id FROM products WHERE product_type = 'SET') \
             ORDER BY id LIMIT 1);",
            rng.gen_range(1..=3)
        ),
        74..=77 => format!(
            "INSERT INTO product_set_items (id, set_product_id, component_product_id, quantity) \
             VALUES ('{}', '{set}', '{simple}', {});",
            Uuid::new_v4(),
            rng.gen_range(1..=2)
        ),
        78..=80 => format!(
            "DELETE FROM product_set_items WHERE id = (SELECT id FROM product_set_items \
             WHERE set_product_id = '{set}' AND component_product_id <> ALL (SELECT id FROM products WHERE product_type = 'SET') \
             ORDER BY id DESC LIMIT 1);"
        ),
        81..=87 => format!(
            "INSERT INTO product_stores (id, product_id, store_id, sellable_quantity, committed_quantity) \
             VALUES ('{}', '{}', '{store}', {}, 0) ON CONFLICT (product_id, store_id) DO NOTHING;",
            Uuid::new_v4(),
            pick_any(rng),
            rng.gen_range(0..40)
        ),
        88..=92 => format!(
            "DELETE FROM product_stores WHERE product_id = '{}' AND store_id = '{store}';",
            pick_any(rng)
        ),
        _ => format!(
            "UPDATE product_set_items SET set_product_id = '{set}' WHERE id = (SELECT id FROM product_set_items \
             WHERE component_product_id = '{simple}' ORDER BY id LIMIT 1);"
        ),
    }
}

/// The real `stocksync run` as a child process, logging to a file.
pub struct Service {
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    child: Option<Child>,
    pub starts: u32,
}

impl Service {
    pub fn new(env: Vec<(String, String)>, log: PathBuf) -> Service {
        Service {
            env,
            log,
            child: None,
            starts: 0,
        }
    }

    /// Sets (or replaces) one variable of the environment the next start uses.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(binary())
            .arg("run")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn stocksync run");
        self.child = Some(child);
        self.starts += 1;
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Exit status if the process ended by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Peak resident memory (VmHWM) of the running process, in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// True when nothing is left to do: no pending or in-flight entries (but those of paused
/// stores, which wait for an operator), no open batches.
pub async fn queue_idle(client: &Client) -> bool {
    let row = client
        .query_one(
            // One probe per state, each through its partial index: counting both states
            // read the whole queue, 60 ms a poll at 80,000 rows.
            "WITH paused AS (SELECT store_id FROM stock_sync.store_state WHERE paused_reason IS NOT NULL) \
             SELECT EXISTS (SELECT 1 FROM stock_sync.queue WHERE state = 'pending' \
                                AND store_id NOT IN (SELECT store_id FROM paused)) \
                 OR EXISTS (SELECT 1 FROM stock_sync.queue WHERE state = 'in_flight' \
                                AND store_id NOT IN (SELECT store_id FROM paused)) \
                 OR EXISTS (SELECT 1 FROM stock_sync.batches WHERE state = 'polling')",
            &[],
        )
        .await;
    matches!(row, Ok(r) if !r.get::<_, bool>(0))
}

/// `STOCKSYNC_STREAMING` for the service, when the test run sets it (`on` or `off`): the
/// reliability suite runs with either protocol (`STOCKSYNC_STREAMING=off cargo test --test
/// suite reliability::`); unset, each scenario picks (the default `on`, or both in turn).
pub fn forced_streaming() -> Option<String> {
    std::env::var("STOCKSYNC_STREAMING").ok()
}

/// Makes the server stream transactions of more than `size` of decoded changes (e.g.
/// `64kB`, its minimum), so ordinary test transactions exercise streaming. Walsenders read it
/// when they connect.
pub async fn set_logical_decoding_work_mem(client: &Client, url: &str, size: &str) {
    let database = url.rsplit('/').next().unwrap();
    client
        .batch_execute(&format!(
            "ALTER DATABASE {database} SET logical_decoding_work_mem = '{size}'"
        ))
        .await
        .unwrap();
}

/// Scale of the workload: `STOCKSYNC_SOAK_SCALE` (default 1) multiplies transactions.
pub fn soak_scale() -> u64 {
    std::env::var("STOCKSYNC_SOAK_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// What the database says about one pair: its queue entries, `listing_state` row, stock and
/// (where the test keeps it) the journal of its changes.
pub async fn pair_history(client: &Client, store: uuid::Uuid, product: uuid::Uuid) -> String {
    // The rows of a one-column `format()` query about the pair, a line each.
    let lines = |sql: &'static str| async move {
        client.query(sql, &[&store, &product]).await.map(|rows| {
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n")
        })
    };
    let entries = lines(
        "SELECT format('%s %s %s reason=%s prio=%s sent=%s attempts=%s enq=%s fin=%s err=%s', \
                id, state, outcome, reason, priority, sent_quantity, attempts, enqueued_at, finished_at, last_error) \
         FROM stock_sync.queue WHERE store_id = $1 AND product_id = $2 ORDER BY id",
    )
    .await
    .unwrap_or_else(|e| e.to_string());
    let listing = lines(
        "SELECT format('accepted=%s at %s (batch %s) sent=%s (batch %s) in_doubt=%s', \
                accepted_quantity, accepted_at, accepted_batch_id, sent_quantity, sent_batch_id, in_doubt) \
         FROM stock_sync.listing_state WHERE store_id = $1 AND product_id = $2",
    )
    .await
    .unwrap_or_else(|e| e.to_string());
    let stock = lines(
        "SELECT format('%s sellable=%s committed=%s', p.product_type, ps.sellable_quantity, ps.committed_quantity) \
         FROM products p LEFT JOIN product_stores ps ON ps.product_id = p.id AND ps.store_id = $1 \
         WHERE p.id = $2",
    )
    .await
    .unwrap_or_else(|e| e.to_string());
    // Absent (an error) unless the test keeps it (see `journal_stock_changes`).
    let journal = lines(
        "SELECT format('xid %s at %s: %s -> %s; captured in batch %s at %s (commit %s)', \
                j.xid, j.at, j.old_quantity, j.new_quantity, c.batch_id, c.captured_at, c.commit_lsn) \
         FROM test_stock_journal j \
         LEFT JOIN stock_sync.captured_transactions c ON c.xid = j.xid % 4294967296 \
         WHERE j.store_id = $1 AND j.product_id = $2 ORDER BY j.id",
    )
    .await
    .unwrap_or_default();
    format!("{entries}\nlisting_state: {listing}\nnow: {stock}\nchanges:\n{journal}")
}

/// Test-only: every change of `product_stores.sellable_quantity` is journaled with its
/// transaction's xid, so a drift's history shows which capture batch carried each change.
pub async fn journal_stock_changes(client: &Client) {
    client
        .batch_execute(
            "CREATE TABLE test_stock_journal (id bigserial PRIMARY KEY, xid bigint, at timestamptz, \
                 store_id uuid, product_id uuid, old_quantity int, new_quantity int);
             CREATE FUNCTION test_journal_stock() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO test_stock_journal (xid, at, store_id, product_id, old_quantity, new_quantity)
                 VALUES (txid_current(), clock_timestamp(), COALESCE(NEW.store_id, OLD.store_id),
                         COALESCE(NEW.product_id, OLD.product_id), OLD.sellable_quantity, NEW.sellable_quantity);
                 RETURN NULL;
             END $$;
             CREATE TRIGGER test_journal_stock AFTER INSERT OR UPDATE OR DELETE ON product_stores
                 FOR EACH ROW EXECUTE FUNCTION test_journal_stock();",
        )
        .await
        .unwrap();
}
