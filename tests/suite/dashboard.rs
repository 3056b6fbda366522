//! The dashboard as an operator sees it: the service runs in-process against a real database
//! and the project's mock marketplace, headless Chromium loads `/` and runs its script, and
//! the rendered DOM must show the figures the database holds (store names, queue depth, items
//! sent, pause reasons, the slot's streaming pid, API log rows), not just the static page;
//! after a short workload the charts of the last hour are drawn with that workload in them
//! (a screenshot is kept in `target/test-artifacts/`).

use crate::common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use stocksync::mock::MockMarketplace;
use stocksync::ops::config::Config;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SLOT: &str = "dashboard";
const TRENDYOL_SELLER: &str = "3001";
const HB_MERCHANT: &str = "6a1f0a8e-0000-4000-8000-000000000003";
const TY_NAME: &str = "Dashboard Trendyol <Outlet>";
const HB_NAME: &str = "Dashboard Hepsiburada";

fn chromium() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("chromium"))
        .chain([PathBuf::from("/usr/bin/chromium")])
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "chromium is not installed (looked in PATH and /usr/bin/chromium): \
             run `apt-get install chromium` (CI installs it)"
        )
    })
}

/// Runs headless Chromium on `url` with `extra` flags, its scripts given 5 s of virtual time.
async fn run_chromium(url: &str, extra: &[String]) -> std::process::Output {
    let profile = std::env::temp_dir().join(format!("stocksync-dashboard-{}", uuid()));
    let child = tokio::process::Command::new(chromium())
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--virtual-time-budget=5000",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start chromium ({e}): run `apt-get install chromium`"));
    let output = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("chromium finished within 90 s")
        .expect("chromium output");
    let _ = std::fs::remove_dir_all(&profile);
    output
}

/// Loads `url` in headless Chromium, lets its scripts run for 5 s of virtual time and
/// returns the serialised DOM.
async fn rendered_dom(url: &str) -> String {
    let output = run_chromium(url, &["--dump-dom".to_string()]).await;
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && dom.contains("</html>"),
        "chromium failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        dom
    );
    dom
}

type ServiceTask =
    tokio::task::JoinHandle<anyhow::Result<Result<(), stocksync::capture::CaptureError>>>;

/// The service in-process against `url` and `mock`, answering HTTP on `http_addr`.
fn start_service(
    url: &str,
    slot: &str,
    http_addr: std::net::SocketAddr,
    mock: &MockMarketplace,
) -> (CancellationToken, ServiceTask) {
    let env: HashMap<&str, String> = [
        ("DATABASE_URL", url.to_string()),
        ("STOCKSYNC_SLOT", slot.to_string()),
        ("STOCKSYNC_PUBLICATION", slot.to_string()),
        ("STOCKSYNC_HTTP_ADDR", http_addr.to_string()),
        ("STOCKSYNC_TRENDYOL_URL", mock.base_url()),
        ("STOCKSYNC_HEPSIBURADA_URL", mock.base_url()),
        ("STOCKSYNC_HEPSIBURADA_USER_AGENT", "test_dev".to_string()),
        ("STOCKSYNC_FLUSH_INTERVAL", "100ms".into()),
        ("STOCKSYNC_HEARTBEAT_INTERVAL", "0s".into()),
        ("STOCKSYNC_REQUEST_TIMEOUT", "2s".into()),
    ]
    .into_iter()
    .collect();
    let config = Config::load_from(None, |k| env.get(k).cloned()).unwrap();
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(stocksync::ops::service::run_until(config, shutdown.clone()));
    (shutdown, service)
}

/// Stops the service (capture must end cleanly) and the mock.
async fn stop_service(shutdown: CancellationToken, service: ServiceTask, mock: MockMarketplace) {
    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(20), service)
        .await
        .expect("service stops")
        .unwrap()
        .expect("service starts");
    result.expect("capture ends cleanly");
    mock.shutdown().await;
}

/// Text as Chromium serialises it in the DOM (only &, < and > are escaped in text nodes).
fn html_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The inner HTML of the element opened by `open` (up to its closing `close`).
fn section<'a>(dom: &'a str, open: &str, close: &str) -> &'a str {
    let start = dom
        .find(open)
        .unwrap_or_else(|| panic!("{open} in the DOM:\n{dom}"));
    let rest = &dom[start + open.len()..];
    &rest[..rest.find(close).unwrap_or(rest.len())]
}

/// The `<tr>` of `tbody` whose `data-store` is `store`.
fn store_row(tbody: &str, store: Uuid) -> &str {
    let marker = format!("data-store=\"{store}\"");
    tbody
        .split("<tr")
        .find(|row| row.contains(&marker))
        .unwrap_or_else(|| panic!("a row for store {store} in:\n{tbody}"))
}

/// The text of the cell marked `data-field="field"` (up to its closing tag).
fn field<'a>(row: &'a str, field: &str) -> &'a str {
    let marker = format!("data-field=\"{field}\"");
    let start = row
        .find(&marker)
        .unwrap_or_else(|| panic!("{marker} in:\n{row}"));
    let rest = &row[start..];
    let rest = &rest[rest.find('>').unwrap() + 1..];
    &rest[..rest.find("</td>").unwrap_or(rest.len())]
}

/// The value (`<b>`) of the replication card marked `data-field="field"`.
fn card<'a>(cards: &'a str, field: &str) -> &'a str {
    let marker = format!("data-field=\"{field}\"");
    let start = cards
        .find(&marker)
        .unwrap_or_else(|| panic!("{marker} in:\n{cards}"));
    let rest = &cards[start..];
    let rest = &rest[rest.find("<b").unwrap()..];
    let rest = &rest[rest.find('>').unwrap() + 1..];
    &rest[..rest.find("</b>").unwrap_or(rest.len())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_the_figures_in_the_database() {
    // Fail first, before anything starts, when the browser is missing.
    chromium();
    let url = fresh_database(SLOT);
    let client = connect(&url).await;
    let products = [("DSH-1", 7i32), ("DSH-2", 0), ("DSH-3", 25)];
    let (ty, hb) = trendyol_and_refused_hepsiburada(
        &client,
        (TY_NAME, HB_NAME),
        (TRENDYOL_SELLER, HB_MERCHANT),
        &products,
    )
    .await;
    setup(&url, SLOT, SLOT).await;

    // The Hepsiburada store's key is refused: it is paused and its entries wait.
    let mock = mock_refusing_hepsiburada(TRENDYOL_SELLER, HB_MERCHANT).await;
    let http_addr = free_addr();
    let (shutdown, service) = start_service(&url, SLOT, http_addr, &mock);

    // Wait for a settled state: Trendyol has every quantity and no open work or batch; the
    // Hepsiburada store is paused with all its entries pending.
    for (code, sellable) in products {
        eventually(
            Duration::from_secs(30),
            &format!("Trendyol {code} = {sellable}"),
            || async { mock.quantity(TRENDYOL_SELLER, code) == Some(sellable as i64) },
        )
        .await;
    }
    eventually(Duration::from_secs(30), "a settled queue", || async {
        let open_ty = count(
            &client,
            "SELECT count(*) FROM stock_sync.queue WHERE store_id = $1 AND state <> 'done'",
            &[&ty],
        )
        .await;
        let polling = count(
            &client,
            "SELECT count(*) FROM stock_sync.batches WHERE state = 'polling'",
            &[],
        )
        .await;
        let hb_pending = count(
            &client,
            "SELECT count(*) FROM stock_sync.queue q JOIN stock_sync.store_state s USING (store_id) \
             WHERE q.store_id = $1 AND q.state = 'pending' AND s.paused_reason IS NOT NULL",
            &[&hb],
        )
        .await;
        open_ty == 0 && polling == 0 && hb_pending == products.len() as i64
    })
    .await;

    // The figures, read with SQL.
    let sent_ty = count(
        &client,
        "SELECT count(*) FROM stock_sync.queue WHERE store_id = $1 AND state = 'done' AND outcome = 'sent'",
        &[&ty],
    )
    .await;
    let pending_hb = count(
        &client,
        "SELECT count(*) FROM stock_sync.queue WHERE store_id = $1 AND state = 'pending'",
        &[&hb],
    )
    .await;
    let pending_total = count(
        &client,
        "SELECT count(*) FROM stock_sync.queue WHERE state = 'pending'",
        &[],
    )
    .await;
    let api_log_rows = count(&client, "SELECT count(*) FROM stock_sync.api_log", &[]).await;
    let refused = count(
        &client,
        "SELECT count(*) FROM stock_sync.api_log WHERE store_id = $1 AND status_code = 401",
        &[&hb],
    )
    .await;
    let paused_reason: String = client
        .query_one(
            "SELECT paused_reason FROM stock_sync.store_state WHERE store_id = $1",
            &[&hb],
        )
        .await
        .unwrap()
        .get(0);
    let active_pid: i32 = client
        .query_one(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active",
            &[&SLOT],
        )
        .await
        .expect("the service streams the slot")
        .get(0);
    assert_eq!(
        sent_ty,
        products.len() as i64,
        "each Trendyol item sent once"
    );
    assert!(refused >= 1 && api_log_rows > refused);

    let dom = rendered_dom(&format!("http://{http_addr}/")).await;

    assert!(
        dom.contains("<span id=\"error\" class=\"bad\"></span>"),
        "the page could not read the API:\n{dom}"
    );
    assert!(dom.contains("<span id=\"updated\">Updated "), "{dom}");
    let replication = section(&dom, "id=\"replication\">", "<h2>");
    assert!(
        replication.contains(&format!("streaming (pid {active_pid})")),
        "the slot's walsender pid {active_pid}:\n{replication}"
    );
    assert_eq!(
        card(replication, "pending_total"),
        pending_total.to_string()
    );
    assert_eq!(card(replication, "instance"), "streaming");

    let stores = section(&dom, "<tbody id=\"stores\">", "</tbody>");
    let row = store_row(stores, ty);
    assert!(
        field(row, "name").contains(&html_text(TY_NAME)),
        "store name (escaped, not interpreted):\n{row}"
    );
    assert_eq!(field(row, "type"), "TRENDYOL");
    assert_eq!(field(row, "pending"), "0");
    assert_eq!(field(row, "sent"), sent_ty.to_string(), "{row}");
    assert_eq!(field(row, "state"), "active");
    assert!(!field(row, "last_success").is_empty(), "{row}");
    let row = store_row(stores, hb);
    assert!(field(row, "name").contains(HB_NAME), "{row}");
    assert_eq!(field(row, "pending"), pending_hb.to_string(), "{row}");
    assert_eq!(field(row, "sent"), "0", "{row}");
    assert_eq!(
        field(row, "state"),
        format!("PAUSED: {}", html_text(&paused_reason)),
        "{row}"
    );

    let log = section(&dom, "<tbody id=\"log\">", "</tbody>");
    let rows = log.matches("<tr data-store=").count() as i64;
    assert_eq!(rows, api_log_rows.min(50), "API log rows:\n{log}");
    assert!(log.contains("UPDATE_STOCK"), "{log}");
    let hb_rows: Vec<&str> = log
        .split("<tr")
        .filter(|r| r.contains(&format!("data-store=\"{hb}\"")))
        .collect();
    assert!(
        hb_rows
            .iter()
            .any(|r| field(r, "status") == "401" && r.contains(HB_NAME)),
        "the refused request, with the store's name:\n{log}"
    );

    stop_service(shutdown, service, mock).await;
}

/// The `<g class="series">` of `store` in the chart `chart`: its attributes.
fn chart_series<'a>(dom: &'a str, chart: &str, series: &str) -> &'a str {
    let svg = section(dom, &format!("data-chart=\"{chart}\""), "</svg>");
    let marker = format!("data-series=\"{series}\"");
    let start = svg
        .find(&marker)
        .unwrap_or_else(|| panic!("series {series} in chart {chart}:\n{svg}"));
    &svg[start..start + svg[start..].find('>').unwrap()]
}

/// The number in attribute `name="..."` of `tag`.
fn attr(tag: &str, name: &str) -> f64 {
    let marker = format!("{name}=\"");
    let start = tag
        .find(&marker)
        .unwrap_or_else(|| panic!("{name} in {tag}"))
        + marker.len();
    let value = &tag[start..start + tag[start..].find('"').unwrap()];
    value
        .parse()
        .unwrap_or_else(|_| panic!("{name}={value:?} is a number"))
}

/// Headless Chromium's screenshot of `url` (after 5 s of virtual time) into `path`.
async fn screenshot(url: &str, path: &std::path::Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(path);
    let output = run_chromium(
        url,
        &[
            "--hide-scrollbars".to_string(),
            "--window-size=1400,2000".to_string(),
            format!("--screenshot={}", path.display()),
        ],
    )
    .await;
    let png = std::fs::read(path).unwrap_or_default();
    assert!(
        output.status.success() && png.starts_with(b"\x89PNG"),
        "no screenshot at {} ({}):\n{}",
        path.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_charts_the_last_hour_after_a_workload() {
    chromium();
    let slot = "dashboard_charts";
    let url = fresh_database(slot);
    let client = connect(&url).await;
    let (ty_seller, hb_merchant) = ("3002", "6a1f0a8e-0000-4000-8000-000000000005");
    let (ty, hb) = trendyol_and_refused_hepsiburada(
        &client,
        ("Charts Trendyol", "Charts Hepsiburada"),
        (ty_seller, hb_merchant),
        &[("CHART-1", 1)],
    )
    .await;
    let product: Uuid = client
        .query_one("SELECT id FROM products WHERE barcode = 'CHART-1'", &[])
        .await
        .unwrap()
        .get(0);
    setup(&url, slot, slot).await;
    let mock = mock_refusing_hepsiburada(ty_seller, hb_merchant).await;
    let http_addr = free_addr();
    let (shutdown, service) = start_service(&url, slot, http_addr, &mock);
    eventually(Duration::from_secs(30), "the service streams", || {
        slot_active(&client, slot)
    })
    .await;

    // The workload: stock changes, each a new quantity (never an identical body), until the
    // history holds captured changes, items sent to Trendyol and the paused store's queue.
    let history_url = format!("http://{http_addr}/api/history");
    let mut quantity = 1;
    eventually(
        Duration::from_secs(90),
        "the history shows the workload",
        || {
            quantity += 1;
            let (client, history_url) = (&client, &history_url);
            let q = quantity;
            async move {
                client
                    .execute(
                        "UPDATE product_stores SET sellable_quantity = $1 WHERE product_id = $2",
                        &[&q, &product],
                    )
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let h: serde_json::Value = reqwest::get(history_url.as_str())
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let samples = h["samples"].as_array().unwrap();
                let any = |f: &dyn Fn(&serde_json::Value) -> bool| samples.iter().any(f);
                samples.len() >= 3
                    && any(&|s| s["changes_per_second"].as_f64().unwrap_or(0.0) > 0.0)
                    && any(&|s| {
                        s["items_sent_per_second"][ty.to_string()]
                            .as_f64()
                            .unwrap_or(0.0)
                            > 0.0
                    })
                    && any(&|s| s["queue_depth"][hb.to_string()].as_i64().unwrap_or(0) > 0)
            }
        },
    )
    .await;

    let page = format!("http://{http_addr}/");
    let dom = rendered_dom(&page).await;
    assert!(
        dom.contains("<span id=\"charts-error\" class=\"bad\"></span>"),
        "the page could not read the history:\n{dom}"
    );
    for chart in ["lag", "changes", "items", "depth"] {
        assert!(
            dom.contains(&format!("data-chart=\"{chart}\"")),
            "chart {chart}:\n{dom}"
        );
    }
    let lag = chart_series(&dom, "lag", "lag");
    assert!(attr(lag, "data-points") >= 3.0, "{lag}");
    let changes = chart_series(&dom, "changes", "changes");
    assert!(attr(changes, "data-max") > 0.0, "{changes}");
    let items = chart_series(&dom, "items", &ty.to_string());
    assert!(attr(items, "data-max") > 0.0, "{items}");
    let depth = chart_series(&dom, "depth", &hb.to_string());
    assert!(attr(depth, "data-max") >= 1.0, "{depth}");
    assert!(
        section(&dom, "data-chart=\"items\"", "</svg>").contains("<polyline"),
        "a line is drawn"
    );
    // The legend names stores, not only ids.
    assert!(
        section(&dom, "id=\"chart-items\"", "</div></div>").contains("Charts Trendyol"),
        "{dom}"
    );

    // The paused store stands out: a banner with its name and reason, and its row.
    let banner = section(&dom, "<div id=\"paused\" class=\"banner\">", "</div>\n");
    assert!(
        banner.contains("PAUSED (credentials): Charts Hepsiburada")
            && banner.contains("credentials refused"),
        "{banner}"
    );
    let stores = section(&dom, "<tbody id=\"stores\">", "</tbody>");
    assert!(
        stores.contains(&format!("data-store=\"{hb}\" class=\"paused\"")),
        "{stores}"
    );
    // Relative times, the absolute time on hover.
    let row = store_row(stores, ty);
    let success = field(row, "last_success");
    assert!(
        success.starts_with("<time datetime=\"") && success.contains(" title=\""),
        "{success}"
    );
    let shown = &success[success.find('>').unwrap() + 1..success.find("</time>").unwrap()];
    assert!(
        shown.ends_with(" s ago") || shown.ends_with(" min ago"),
        "{shown}"
    );

    let artifact = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("test-artifacts")
        .join("dashboard.png");
    screenshot(&page, &artifact).await;
    eprintln!("dashboard screenshot: {}", artifact.display());

    stop_service(shutdown, service, mock).await;
}
