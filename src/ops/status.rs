//! `stocksync status`: what an operator needs to see at a glance, read from the database
//! (so it works from any machine, whichever instance is streaming).

use std::collections::BTreeMap;

use serde::Serialize;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::queue;

#[derive(Debug, Serialize)]
pub struct Status {
    pub slot: SlotStatus,
    pub checkpoint_lsn: Option<String>,
    pub server_lsn: String,
    /// Server WAL position minus checkpoint, in bytes.
    pub lag_bytes: Option<i64>,
    /// Seconds since the newest captured commit when the queue has work; 0 when caught up.
    pub lag_seconds: Option<f64>,
    pub stores: Vec<StoreStatus>,
    pub dead_letters: Vec<DeadLetter>,
    pub pending_total: i64,
    /// Each store's latest reconciliation audit and its next one.
    pub reconcile: Vec<crate::reconcile::RunStatus>,
    /// Products held back because their keys name one listing with another product's.
    pub key_collisions: Vec<KeyCollision>,
    /// Listings the marketplace fulfils itself (never pushed), newest first, at most 100.
    pub fulfilled_by_marketplace: Vec<FulfilledListing>,
}

#[derive(Debug, Serialize)]
pub struct KeyCollision {
    pub store_id: String,
    pub product_id: String,
    pub key: String,
    /// The listing at the marketplace (its spelling of the key).
    pub listing: String,
    pub since: String,
}

#[derive(Debug, Serialize)]
pub struct FulfilledListing {
    pub store_id: String,
    pub product_id: String,
    pub key: Option<String>,
    pub seen_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SlotStatus {
    pub name: String,
    pub exists: bool,
    pub active_pid: Option<i32>,
    pub confirmed_flush_lsn: Option<String>,
    pub restart_lsn: Option<String>,
    pub wal_status: Option<String>,
    pub safe_wal_size: Option<i64>,
}

#[derive(Debug, Default, Serialize)]
pub struct StoreStatus {
    pub store_id: String,
    pub name: Option<String>,
    pub store_type: Option<String>,
    pub pending: i64,
    pub in_flight: i64,
    pub dead: i64,
    pub oldest_pending_age_seconds: Option<f64>,
    /// Queue entries pushed to the marketplace (outcome `sent`) in the last hour.
    pub sent_last_hour: i64,
    pub paused_reason: Option<String>,
    /// Why it is paused, as a closed set: `credentials`, `forbidden`, `not_configured`.
    pub pause_kind: Option<String>,
    /// When a store paused for a 403 sends its next probe request.
    pub next_probe_at: Option<String>,
    /// Why the store waits out a backoff now: `throttled`, `server_error`, `unexpected_status`.
    pub backing_off: Option<String>,
    pub last_request_at: Option<String>,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DeadLetter {
    pub store_id: String,
    pub product_id: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub finished_at: Option<String>,
}

const SLOT_SQL: &str = r#"
SELECT active_pid, confirmed_flush_lsn::text, restart_lsn::text, wal_status, safe_wal_size
FROM pg_replication_slots WHERE slot_name = $1
"#;

/// Every store stocksync knows of (a `stores` row or dispatch state), with its name, type,
/// pause and last request / success / error.
const STORES_SQL: &str = r#"
SELECT COALESCE(s.id, st.store_id), s.name::text, s.type::text, st.paused_reason,
       to_char(st.last_success_at, 'YYYY-MM-DD"T"HH24:MI:SS.MSOF'), st.last_error,
       to_char(st.last_request_at, 'YYYY-MM-DD"T"HH24:MI:SS.MSOF'),
       CASE WHEN st.paused_reason IS NOT NULL THEN st.pause_kind END,
       CASE WHEN st.pause_kind = 'forbidden' AND st.paused_reason IS NOT NULL
            THEN to_char(st.not_before, 'YYYY-MM-DD"T"HH24:MI:SS.MSOF') END,
       CASE WHEN st.paused_reason IS NULL AND st.not_before > now() THEN st.problem_kind END
FROM stores s FULL JOIN stock_sync.store_state st ON st.store_id = s.id
"#;

/// Reads the status. The caught-up case reports 0 s of lag.
pub async fn read(client: &Client, slot: &str) -> Result<Status, StatusError> {
    let slot_row = client.query_opt(SLOT_SQL, &[&slot]).await?;
    let slot_status = SlotStatus {
        name: slot.to_string(),
        exists: slot_row.is_some(),
        active_pid: slot_row.as_ref().and_then(|r| r.get(0)),
        confirmed_flush_lsn: slot_row.as_ref().and_then(|r| r.get(1)),
        restart_lsn: slot_row.as_ref().and_then(|r| r.get(2)),
        wal_status: slot_row.as_ref().and_then(|r| r.get(3)),
        safe_wal_size: slot_row.as_ref().and_then(|r| r.get(4)),
    };
    let lag = queue::checkpoint_lag(client, slot).await?;
    let mut stores: BTreeMap<Uuid, StoreStatus> = BTreeMap::new();
    for r in client.query(STORES_SQL, &[]).await? {
        let id: Uuid = r.get(0);
        stores.insert(
            id,
            StoreStatus {
                store_id: id.to_string(),
                name: r.get(1),
                store_type: r.get(2),
                paused_reason: r.get(3),
                last_success_at: r.get(4),
                last_error: r.get(5),
                last_request_at: r.get(6),
                pause_kind: r.get(7),
                next_probe_at: r.get(8),
                backing_off: r.get(9),
                ..StoreStatus::default()
            },
        );
    }
    for q in queue::store_summaries(client).await? {
        let st = stores.entry(q.store_id).or_insert_with(|| StoreStatus {
            store_id: q.store_id.to_string(),
            ..StoreStatus::default()
        });
        st.pending = q.pending;
        st.in_flight = q.in_flight;
        st.dead = q.dead;
        st.oldest_pending_age_seconds = q.oldest_pending_age_seconds;
        st.sent_last_hour = q.sent_last_hour;
    }
    let mut stores: Vec<StoreStatus> = stores.into_values().collect();
    stores.sort_by(|a, b| {
        (a.name.is_none(), &a.name, &a.store_id).cmp(&(b.name.is_none(), &b.name, &b.store_id))
    });
    let dead_letters = queue::dead_letters(client, 100)
        .await?
        .into_iter()
        .map(|d| DeadLetter {
            store_id: d.store_id.to_string(),
            product_id: d.product_id.to_string(),
            attempts: d.attempts,
            last_error: d.last_error,
            finished_at: d.finished_at,
        })
        .collect();
    let reconcile = crate::reconcile::journal::summaries(client).await?;
    let key_collisions = queue::key_collisions(client)
        .await?
        .into_iter()
        .map(|c| KeyCollision {
            store_id: c.store_id.to_string(),
            product_id: c.product_id.to_string(),
            key: c.key,
            listing: c.key_form,
            since: c
                .first_seen
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
        .collect();
    let fulfilled_by_marketplace = queue::fulfilled_listings(client, 100)
        .await?
        .into_iter()
        .map(|f| FulfilledListing {
            store_id: f.store_id.to_string(),
            product_id: f.product_id.to_string(),
            key: f.key,
            seen_at: f
                .seen_at
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        })
        .collect();
    Ok(Status {
        key_collisions,
        fulfilled_by_marketplace,
        reconcile,
        slot: slot_status,
        server_lsn: lag.server_lsn,
        checkpoint_lsn: lag.checkpoint_lsn,
        lag_bytes: lag.lag_bytes,
        lag_seconds: lag.lag_seconds,
        pending_total: stores.iter().map(|s| s.pending).sum(),
        stores,
        dead_letters,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("database: {}", crate::db::describe(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Queue(#[from] queue::QueueError),
    #[error(transparent)]
    Reconcile(#[from] crate::reconcile::ReconcileError),
}

/// Human rendering for the terminal.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let s = &status.slot;
    out.push_str(&format!(
        "slot {}: {}  active pid {}  confirmed_flush {}  restart {}  wal_status {}  safe_wal_size {}\n",
        s.name,
        if s.exists { "present" } else { "MISSING" },
        s.active_pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        s.confirmed_flush_lsn.as_deref().unwrap_or("-"),
        s.restart_lsn.as_deref().unwrap_or("-"),
        s.wal_status.as_deref().unwrap_or("-"),
        s.safe_wal_size.map(|b| format!("{b} bytes")).unwrap_or_else(|| "unlimited".into()),
    ));
    out.push_str(&format!(
        "checkpoint {}  server {}  lag {} bytes, {} s\n",
        status.checkpoint_lsn.as_deref().unwrap_or("(none yet)"),
        status.server_lsn,
        status
            .lag_bytes
            .map(|b| b.to_string())
            .unwrap_or_else(|| "-".into()),
        status
            .lag_seconds
            .map(|s| format!("{s:.1}"))
            .unwrap_or_else(|| "-".into()),
    ));
    out.push_str(&format!("pending entries: {}\n\n", status.pending_total));
    out.push_str(&format!(
        "{:<38} {:<20} {:<12} {:>8} {:>9} {:>5} {:>10} {:>8}  {}\n",
        "store", "name", "type", "pending", "in_flight", "dead", "oldest_s", "sent_1h", "state"
    ));
    for st in &status.stores {
        let state = match (&st.paused_reason, &st.last_error) {
            (Some(p), _) => match &st.next_probe_at {
                Some(at) => format!("PAUSED: {p}; next probe {at}"),
                None => format!("PAUSED: {p}"),
            },
            (None, Some(e)) => format!("last error: {e}"),
            (None, None) => st
                .last_success_at
                .as_ref()
                .map(|t| format!("last success {t}"))
                .unwrap_or_else(|| "ok".into()),
        };
        out.push_str(&format!(
            "{:<38} {:<20} {:<12} {:>8} {:>9} {:>5} {:>10} {:>8}  {}\n",
            st.store_id,
            st.name.as_deref().unwrap_or("(no stores row)"),
            st.store_type.as_deref().unwrap_or("-"),
            st.pending,
            st.in_flight,
            st.dead,
            st.oldest_pending_age_seconds
                .map(|a| format!("{a:.1}"))
                .unwrap_or_else(|| "-".into()),
            st.sent_last_hour,
            state
        ));
    }
    if !status.reconcile.is_empty() {
        out.push_str(
            "\nreconciliation (latest audit per store; `stocksync reconcile` audits now):\n",
        );
        let names: std::collections::HashMap<&str, &str> = status
            .stores
            .iter()
            .filter_map(|s| Some((s.store_id.as_str(), s.name.as_deref()?)))
            .collect();
        for r in &status.reconcile {
            let name = names.get(r.store_id.as_str()).copied().unwrap_or("");
            let state = match (&r.state, &r.finished_at, &r.error) {
                (None, _, _) => "not audited yet".to_string(),
                (Some(s), _, Some(e)) => format!("{s}: {e}"),
                (Some(s), Some(at), None) => format!("{s} {at}"),
                (Some(s), None, None) => {
                    format!("{s} since {}", r.started_at.as_deref().unwrap_or("-"))
                }
            };
            out.push_str(&format!(
                "  {} {:<20} {}: checked {}, {}; next audit {}\n",
                r.store_id,
                name,
                state,
                r.checked,
                r.tally.summary(),
                r.next_run_at.as_deref().unwrap_or("-"),
            ));
            for e in r.examples.iter().take(5) {
                out.push_str(&format!("      {} {}\n", e.kind.as_str(), e.describe()));
            }
        }
    }
    if !status.key_collisions.is_empty() {
        out.push_str(
            "\nkeys naming one listing (neither product is sent until one key is changed):\n",
        );
        for c in &status.key_collisions {
            out.push_str(&format!(
                "  store {} product {} key {:?} = listing {:?} since {}\n",
                c.store_id, c.product_id, c.key, c.listing, c.since
            ));
        }
    }
    if !status.fulfilled_by_marketplace.is_empty() {
        out.push_str("\nlistings the marketplace fulfils itself (never sent):\n");
        for f in &status.fulfilled_by_marketplace {
            out.push_str(&format!(
                "  store {} product {} key {} seen {}\n",
                f.store_id,
                f.product_id,
                f.key.as_deref().unwrap_or("-"),
                f.seen_at.as_deref().unwrap_or("-")
            ));
        }
    }
    if !status.dead_letters.is_empty() {
        out.push_str("\ndead letters (retry with `stocksync retry-failed [--store ID]`):\n");
        for d in &status.dead_letters {
            out.push_str(&format!(
                "  store {} product {} after {} attempts: {}\n",
                d.store_id,
                d.product_id,
                d.attempts,
                d.last_error.as_deref().unwrap_or("-")
            ));
        }
    }
    out
}
