//! `stocksync status`: what an operator needs to see at a glance, read from the database
//! (so it works from any machine, whichever instance is streaming).

use serde::Serialize;
use tokio_postgres::Client;

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

#[derive(Debug, Serialize)]
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

/// Lag in seconds: how long the checkpoint has been behind the server's WAL position (the
/// checkpoint moves with every capture batch and, when idle, with keepalives).
const LAG_SQL: &str = r#"
SELECT pg_current_wal_lsn()::text,
       c.lsn::text,
       (pg_current_wal_lsn() - c.lsn)::bigint,
       CASE WHEN pg_current_wal_lsn() > c.lsn
            THEN EXTRACT(EPOCH FROM now() - c.updated_at)::float8 ELSE 0 END
FROM (SELECT NULL) dummy
LEFT JOIN stock_sync.checkpoint c ON c.slot_name = $1
"#;

const STORES_SQL: &str = r#"
WITH q AS (
    SELECT store_id,
           count(*) FILTER (WHERE state = 'pending') AS pending,
           count(*) FILTER (WHERE state = 'in_flight') AS in_flight,
           count(*) FILTER (WHERE state = 'dead') AS dead,
           EXTRACT(EPOCH FROM now() - min(enqueued_at) FILTER (WHERE state = 'pending'))::float8 AS oldest
    FROM stock_sync.queue WHERE state <> 'done' GROUP BY store_id
), sent AS (
    SELECT store_id, count(*) AS sent
    FROM stock_sync.queue
    WHERE state = 'done' AND finished_at > now() - interval '1 hour' AND outcome = 'sent'
    GROUP BY store_id
), ids AS (
    SELECT store_id FROM q UNION SELECT id FROM stores UNION SELECT store_id FROM stock_sync.store_state
)
SELECT ids.store_id::text, s.name, s.type,
       coalesce(q.pending, 0), coalesce(q.in_flight, 0), coalesce(q.dead, 0), q.oldest,
       st.paused_reason, to_char(st.last_success_at, 'YYYY-MM-DD"T"HH24:MI:SS.MSOF'), st.last_error,
       coalesce(sent.sent, 0), to_char(st.last_request_at, 'YYYY-MM-DD"T"HH24:MI:SS.MSOF')
FROM ids
LEFT JOIN q ON q.store_id = ids.store_id
LEFT JOIN sent ON sent.store_id = ids.store_id
LEFT JOIN stores s ON s.id = ids.store_id
LEFT JOIN stock_sync.store_state st ON st.store_id = ids.store_id
ORDER BY s.name NULLS LAST, ids.store_id
"#;

const DEAD_SQL: &str = r#"
SELECT store_id::text, product_id::text, attempts, last_error,
       to_char(finished_at, 'YYYY-MM-DD"T"HH24:MI:SS.MSOF')
FROM stock_sync.queue WHERE state = 'dead' ORDER BY finished_at DESC LIMIT 100
"#;

/// Reads the status. The caught-up case reports 0 s of lag.
pub async fn read(client: &Client, slot: &str) -> Result<Status, tokio_postgres::Error> {
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
    let lag = client.query_one(LAG_SQL, &[&slot]).await?;
    let stores: Vec<StoreStatus> = client
        .query(STORES_SQL, &[])
        .await?
        .iter()
        .map(|r| StoreStatus {
            store_id: r.get(0),
            name: r.get(1),
            store_type: r.get(2),
            pending: r.get(3),
            in_flight: r.get(4),
            dead: r.get(5),
            oldest_pending_age_seconds: r.get(6),
            sent_last_hour: r.get(10),
            paused_reason: r.get(7),
            last_request_at: r.get(11),
            last_success_at: r.get(8),
            last_error: r.get(9),
        })
        .collect();
    let dead_letters = client
        .query(DEAD_SQL, &[])
        .await?
        .iter()
        .map(|r| DeadLetter {
            store_id: r.get(0),
            product_id: r.get(1),
            attempts: r.get(2),
            last_error: r.get(3),
            finished_at: r.get(4),
        })
        .collect();
    let lag_bytes: Option<i64> = lag.get(2);
    let lag_seconds: Option<f64> = lag.get(3);
    Ok(Status {
        slot: slot_status,
        server_lsn: lag.get(0),
        checkpoint_lsn: lag.get(1),
        lag_bytes,
        lag_seconds,
        pending_total: stores.iter().map(|s| s.pending).sum(),
        stores,
        dead_letters,
    })
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
            (Some(p), _) => format!("PAUSED: {p}"),
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
