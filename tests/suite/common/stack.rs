//! An in-process `stocksync` service (`run_until`) against a fresh database and the mock
//! marketplace, for end-to-end tests that need no child process.

use std::collections::HashMap;
use std::time::Duration;

use stocksync::mock::{MockConfig, MockMarketplace};
use stocksync::ops::config::Config;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::workload::queue_idle;
use super::{capture_caught_up, connect, eventually, fresh_database, setup, slot_active};

pub struct Stack {
    pub url: String,
    pub client: Client,
    pub mock: MockMarketplace,
    slot: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Stack {
    /// Stops the service and the mock. Returns once the server has released the slot: its
    /// walsender outlives the connection a little, and a command run next (`check`, a second
    /// service) must find the slot free.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
        self.mock.shutdown().await;
        eventually(Duration::from_secs(20), "the slot released", || async {
            !slot_active(&self.client, &self.slot).await
        })
        .await;
    }

    pub async fn exec(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) {
        self.client.execute(sql, params).await.unwrap();
    }
}

/// Starts the mock and `run_until` with the given extra settings.
pub async fn start(
    prefix: &str,
    mock_config: MockConfig,
    extra: &[(&str, String)],
    load: impl AsyncFnOnce(&Client),
) -> Stack {
    start_after(prefix, mock_config, extra, load, async |_: &Client| {}).await
}

/// As [`start`], with `after_setup` run on the database once setup is done and before the
/// service starts (settings the service's sessions must meet, say).
pub async fn start_after(
    prefix: &str,
    mock_config: MockConfig,
    extra: &[(&str, String)],
    load: impl AsyncFnOnce(&Client),
    after_setup: impl AsyncFnOnce(&Client),
) -> Stack {
    let url = fresh_database(prefix);
    let client = connect(&url).await;
    load(&client).await;
    // Slot names are cluster-wide: one per test database.
    setup(&url, prefix, prefix).await;
    after_setup(&client).await;
    let mock = MockMarketplace::start(mock_config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut env: HashMap<String, String> = [
        ("DATABASE_URL", url.clone()),
        ("STOCKSYNC_SLOT", prefix.to_string()),
        ("STOCKSYNC_PUBLICATION", prefix.to_string()),
        ("STOCKSYNC_HTTP_ADDR", "127.0.0.1:0".into()),
        ("STOCKSYNC_TRENDYOL_URL", mock.base_url()),
        ("STOCKSYNC_HEPSIBURADA_URL", mock.base_url()),
        ("STOCKSYNC_HEPSIBURADA_USER_AGENT", "test_dev".into()),
        ("STOCKSYNC_FLUSH_INTERVAL", "100ms".into()),
        ("STOCKSYNC_IDENTICAL_REQUEST_WINDOW", "2s".into()),
        ("STOCKSYNC_HEARTBEAT_INTERVAL", "0s".into()),
        ("STOCKSYNC_REQUEST_TIMEOUT", "2s".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // An empty value removes a default.
    for (k, v) in extra {
        if v.is_empty() {
            env.remove(*k);
        } else {
            env.insert(k.to_string(), v.clone());
        }
    }
    let config = Config::load_from(None, |k| env.get(k).cloned()).unwrap();
    let shutdown = CancellationToken::new();
    let task = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let result = stocksync::ops::service::run_until(config, shutdown)
                .await
                .expect("service starts");
            result.expect("capture ends cleanly");
        })
    };
    Stack {
        url,
        client,
        mock,
        slot: prefix.to_string(),
        shutdown,
        task,
    }
}

/// Capture has passed everything committed so far and dispatch has decided about every
/// entry (none pending or in flight, but those of paused stores; no open batch result).
pub async fn settled(stack: &Stack) {
    capture_caught_up(&stack.client, &stack.slot).await;
    eventually(Duration::from_secs(60), "the queue settled", || async {
        queue_idle(&stack.client).await
    })
    .await;
}

pub async fn wait_quantity(mock: &MockMarketplace, seller: &str, key: &str, want: i64) {
    eventually(
        Duration::from_secs(60),
        &format!("{seller}/{key} to show {want}"),
        || async { mock.quantity(seller, key) == Some(want) },
    )
    .await;
}
