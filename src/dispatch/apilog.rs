//! The API log (`stock_sync.api_log`), after the seed's `OrderApiLog`: one row per marketplace
//! request, dry-run payload and stock problem. Bodies are cut to [`BODY_LIMIT`] characters.
//! Credentials never reach it: request bodies hold only keys and quantities, and response
//! bodies come from the marketplace client with credentials masked.
//!
//! Writing the log never fails dispatch: an error is logged and the work goes on.

use tokio_postgres::GenericClient;
use tracing::warn;
use uuid::Uuid;

const INSERT_SQL: &str = r#"
INSERT INTO stock_sync.api_log
    (provider, type, store_id, item_count, status_code, duration_ms, batch_id, success,
     request_body, response_body, error_message)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
"#;

/// Retention of the API log (`$1` days).
const PRUNE_SQL: &str =
    "DELETE FROM stock_sync.api_log WHERE created_at < now() - make_interval(days => $1::int)";

/// Longest body kept, in characters.
pub const BODY_LIMIT: usize = 4000;

/// Provider of entries stocksync writes itself (problems, dry runs of unknown providers).
pub const STOCKSYNC: &str = "STOCKSYNC";

/// `api_log.type` values.
pub mod kind {
    pub const UPDATE_STOCK: &str = "UPDATE_STOCK";
    pub const GET_BATCH_STATUS: &str = "GET_BATCH_STATUS";
    pub const DRY_RUN: &str = "DRY_RUN";
    pub const STOCK_PROBLEM: &str = "STOCK_PROBLEM";
}

/// One API log row.
#[derive(Debug, Default)]
pub struct Entry<'a> {
    pub provider: &'a str,
    pub kind: &'a str,
    pub store_id: Option<Uuid>,
    pub item_count: Option<usize>,
    pub status_code: Option<u16>,
    pub duration: Option<std::time::Duration>,
    pub batch_id: Option<&'a str>,
    pub success: bool,
    pub request_body: Option<&'a str>,
    pub response_body: Option<&'a str>,
    pub error_message: Option<&'a str>,
}

/// Writes `entry`; failures are logged, not returned.
pub async fn write(client: &impl GenericClient, entry: Entry<'_>) {
    let item_count = entry
        .item_count
        .map(|n| i32::try_from(n).unwrap_or(i32::MAX));
    let status = entry.status_code.map(i32::from);
    let duration_ms = entry
        .duration
        .map(|d| i32::try_from(d.as_millis()).unwrap_or(i32::MAX));
    let request = entry.request_body.map(|b| cut(b, BODY_LIMIT));
    let response = entry.response_body.map(|b| cut(b, BODY_LIMIT));
    let error = entry.error_message.map(|b| cut(b, BODY_LIMIT));
    if let Err(e) = client
        .execute(
            INSERT_SQL,
            &[
                &entry.provider,
                &entry.kind,
                &entry.store_id,
                &item_count,
                &status,
                &duration_ms,
                &entry.batch_id,
                &entry.success,
                &request,
                &response,
                &error,
            ],
        )
        .await
    {
        warn!(error = %e, kind = entry.kind, "could not write the API log");
    }
}

/// Deletes entries older than `days`.
pub async fn prune(client: &impl GenericClient, days: i32) -> Result<u64, tokio_postgres::Error> {
    client.execute(PRUNE_SQL, &[&days]).await
}

/// At most `limit` characters, marked when cut.
pub fn cut(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        None => text.to_string(),
        Some((at, _)) => format!("{}…[{} bytes cut]", &text[..at], text.len() - at),
    }
}

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn cut_counts_characters_not_bytes() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("çağrı", 2), "ça…[5 bytes cut]");
        assert_eq!(cut("", 0), "");
    }
}
