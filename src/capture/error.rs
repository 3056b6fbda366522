//! Capture's errors and what each means: retry, stop (exit 2: a person must fix the
//! configuration or the grants), or the slot is gone (exit 3).
//!
//! Everything is decided by kind — the SQLSTATE, the slot's state in `pg_replication_slots`,
//! stocksync's own typed errors — never by the server's message text, which follows the
//! server's `lc_messages`.

use serde::Serialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::seeds::SchemaError;
use crate::db::{is_permanent_sqlstate, permanent_fix, DbError};
use crate::replication::stream::StreamError;
use crate::replication::wire::{WireError, SQLSTATE_UNDEFINED_OBJECT};

/// SQLSTATE 55000 (object not in prerequisite state): what `START_REPLICATION` answers for
/// an invalidated slot, among other things — the slot's state says which.
const SQLSTATE_NOT_IN_PREREQUISITE_STATE: &str = "55000";

/// The slot's state. `conflicting` (PostgreSQL 16) and `invalidation_reason` (17) are read
/// through `to_jsonb` so one statement serves every version.
const SLOT_STATE_SQL: &str = r#"
SELECT wal_status, to_jsonb(s) ->> 'conflicting', to_jsonb(s) ->> 'invalidation_reason'
FROM pg_replication_slots s WHERE slot_name = $1
"#;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("database error in capture: {}", crate::db::describe(.0))]
    Database(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Connect(#[from] DbError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(
        "replication slot {slot:?} does not exist (it existed before, so changes may have been \
         lost): run `stocksync setup` to recreate it, then `stocksync resync`"
    )]
    SlotMissing { slot: String },
    #[error(
        "replication slot {slot:?} is lost (the server removed WAL it still needed: {detail}); run \
         `stocksync teardown`, `stocksync setup`, then `stocksync resync`"
    )]
    SlotLost { slot: String, detail: String },
    #[error("replication slot {slot:?} uses plugin {plugin:?}, not pgoutput; drop it and run `stocksync setup`")]
    WrongPlugin { slot: String, plugin: String },
    #[error("capture invariant broken: {0}")]
    Invariant(String),
}

/// A failure as `/readyz` and the dashboard show it: a short kind and the server's message
/// (or stocksync's own), never a connection string.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorSummary {
    pub kind: &'static str,
    pub message: String,
}

impl std::fmt::Display for ErrorSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl CaptureError {
    /// Errors a reconnect cannot fix.
    pub fn is_fatal(&self) -> bool {
        match self {
            CaptureError::Schema(_)
            | CaptureError::SlotMissing { .. }
            | CaptureError::SlotLost { .. }
            | CaptureError::WrongPlugin { .. }
            | CaptureError::Invariant(_) => true,
            // The capture log's exclusion constraint: a transaction captured twice.
            CaptureError::Database(e) if e.code() == Some(&SqlState::EXCLUSION_VIOLATION) => true,
            _ => self.is_permanent(),
        }
    }

    /// The slot is gone or unusable: the process exits with a distinct code.
    pub fn is_slot_loss(&self) -> bool {
        matches!(
            self,
            CaptureError::SlotMissing { .. } | CaptureError::SlotLost { .. }
        )
    }

    /// A person must change the configuration or the grants: authentication (class 28 or
    /// the `require_auth`/`channel_binding` policy), privilege (42501), a missing table
    /// (42P01) or database (3D000). `run` stops with exit code 2.
    pub fn is_permanent(&self) -> bool {
        match self {
            CaptureError::Connect(e) => e.is_permanent(),
            CaptureError::Stream(StreamError::Wire(WireError::Auth(_))) => true,
            _ => self.sqlstate().is_some_and(is_permanent_sqlstate),
        }
    }

    /// The one sentence `run` stops with for a permanent failure.
    pub fn permanent_reason(&self) -> Option<String> {
        if !self.is_permanent() {
            return None;
        }
        Some(match self.sqlstate() {
            Some(code) => format!("{self}; {}", permanent_fix(code)),
            None => format!("{self}; change DATABASE_URL or the server's pg_hba.conf"),
        })
    }

    /// The server's SQLSTATE, wherever it came from.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            CaptureError::Database(e) => e.code().map(SqlState::code),
            CaptureError::Connect(e) => e.sqlstate(),
            CaptureError::Stream(StreamError::Wire(e)) => e.sqlstate(),
            _ => None,
        }
    }

    /// A deadlock or serialization failure: the batch lost a lock conflict with the
    /// dispatcher or an operator command. Not an outage: retried without growing the backoff.
    pub fn is_lock_conflict(&self) -> bool {
        matches!(self, CaptureError::Database(e) if e.code().is_some_and(|c| {
            *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
        }))
    }

    /// Kind and message for `/readyz` (no connection string, no password).
    pub fn summary(&self) -> ErrorSummary {
        let (kind, message) = match self {
            CaptureError::SlotMissing { .. } => ("slot_missing", self.to_string()),
            CaptureError::SlotLost { .. } => ("slot_lost", self.to_string()),
            CaptureError::WrongPlugin { .. } => ("slot_plugin", self.to_string()),
            CaptureError::Schema(e) => ("schema", e.to_string()),
            CaptureError::Invariant(e) => ("invariant", e.clone()),
            CaptureError::Database(e) => (
                sqlstate_kind(e.code().map(SqlState::code)),
                server_message(e),
            ),
            CaptureError::Connect(DbError::Connect { source, .. }) => match source.as_db_error() {
                Some(_) => (sqlstate_kind(self.sqlstate()), server_message(source)),
                None if crate::db::auth::auth_error_in(source).is_some() => (
                    "authentication",
                    crate::db::auth::auth_error_in(source)
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                ),
                None => ("connection", crate::db::describe(source)),
            },
            CaptureError::Connect(DbError::Timeout { after, .. }) => {
                ("connection", format!("no answer within {after:?}"))
            }
            CaptureError::Connect(e) => ("configuration", e.to_string()),
            CaptureError::Stream(StreamError::Wire(e)) => match e {
                WireError::Server {
                    code,
                    message,
                    detail,
                } => (
                    sqlstate_kind(Some(code)),
                    match detail {
                        Some(d) => format!("{message} ({d}) [SQLSTATE {code}]"),
                        None => format!("{message} [SQLSTATE {code}]"),
                    },
                ),
                WireError::Io { source, .. } => ("connection", source.to_string()),
                WireError::Auth(a) => ("authentication", a.to_string()),
                WireError::Tls(t) => ("tls", t.to_string()),
                other => ("replication", other.to_string()),
            },
            CaptureError::Stream(e) => ("replication", e.to_string()),
        };
        ErrorSummary { kind, message }
    }
}

/// A short kind for a SQLSTATE.
fn sqlstate_kind(code: Option<&str>) -> &'static str {
    match code {
        Some(c) if c.starts_with("28") => "authentication",
        Some("42501") => "privilege",
        Some("42P01") => "missing_table",
        Some("3D000") => "missing_database",
        Some(c) if c.starts_with("08") || c.starts_with("57P") => "connection",
        Some(c) if c.starts_with("40") => "conflict",
        Some(c) if c.starts_with("53") => "resources",
        _ => "database",
    }
}

/// The server's message with its SQLSTATE, or tokio-postgres's description.
fn server_message(e: &tokio_postgres::Error) -> String {
    crate::db::describe(e)
}

/// What failed `START_REPLICATION` means: the slot is missing (42704), lost (55000 with the
/// slot invalidated in `pg_replication_slots`), or something a reconnect may fix.
pub async fn open_failure(error: StreamError, slot: &str, client: &Client) -> CaptureError {
    let code = match &error {
        StreamError::Wire(e) => e.sqlstate().map(str::to_string),
        _ => None,
    };
    match code.as_deref() {
        Some(SQLSTATE_UNDEFINED_OBJECT) => CaptureError::SlotMissing {
            slot: slot.to_string(),
        },
        Some(SQLSTATE_NOT_IN_PREREQUISITE_STATE) => match slot_state(client, slot).await {
            Ok(Some(state)) if state.is_invalidated() => CaptureError::SlotLost {
                slot: slot.to_string(),
                detail: match &error {
                    StreamError::Wire(WireError::Server { message, .. }) => message.clone(),
                    other => other.to_string(),
                },
            },
            Ok(None) => CaptureError::SlotMissing {
                slot: slot.to_string(),
            },
            _ => error.into(),
        },
        _ => error.into(),
    }
}

/// A slot's invalidation state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    pub wal_status: Option<String>,
    /// PostgreSQL 16+: invalidated by a recovery conflict (standbys).
    pub conflicting: Option<bool>,
    /// PostgreSQL 17+: why it was invalidated.
    pub invalidation_reason: Option<String>,
}

impl SlotState {
    /// The slot can no longer stream: its WAL is gone or it was invalidated.
    pub fn is_invalidated(&self) -> bool {
        self.wal_status.as_deref() == Some("lost")
            || self.conflicting == Some(true)
            || self.invalidation_reason.is_some()
    }
}

/// The slot's state; `None` when there is no such slot.
pub async fn slot_state(
    client: &Client,
    slot: &str,
) -> Result<Option<SlotState>, tokio_postgres::Error> {
    Ok(client
        .query_opt(SLOT_STATE_SQL, &[&slot])
        .await?
        .map(|r| SlotState {
            wal_status: r.get(0),
            conflicting: r.get::<_, Option<String>>(1).map(|c| c == "true"),
            invalidation_reason: r.get(2),
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, message: &str) -> CaptureError {
        CaptureError::Stream(StreamError::Wire(WireError::Server {
            code: code.into(),
            message: message.into(),
            detail: None,
        }))
    }

    #[test]
    fn permanence_comes_from_the_sqlstate_in_any_language() {
        // German and Turkish server messages; only the SQLSTATE decides.
        for (code, message) in [
            (
                "28P01",
                "Passwort-Authentifizierung für Benutzer »u« fehlgeschlagen",
            ),
            ("28000", "kein pg_hba.conf-Eintrag für Host »127.0.0.1«"),
            ("42501", "keine Berechtigung für Tabelle stores"),
            ("42P01", "Relation »stock_sync.queue« existiert nicht"),
            ("3D000", "\"shop\" veritabanı mevcut değil"),
        ] {
            let e = server(code, message);
            assert!(e.is_permanent() && e.is_fatal(), "{code}");
            let reason = e.permanent_reason().unwrap();
            assert!(
                reason.contains(code) || reason.contains(message),
                "{reason}"
            );
        }
        for code in [
            "08006", "40001", "40P01", "53300", "57P01", "57P03", "55006", "XX000",
        ] {
            let e = server(code, "irgendetwas");
            assert!(!e.is_permanent() && !e.is_fatal(), "{code}");
        }
        assert_eq!(server("28P01", "x").summary().kind, "authentication");
        assert_eq!(server("57P01", "x").summary().kind, "connection");
    }

    #[test]
    fn summaries_carry_no_connection_string() {
        let url = "postgres://svc:***@db.example:5432/shop";
        let io = CaptureError::Stream(StreamError::Wire(WireError::Io {
            url: url.into(),
            source: std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"),
        }));
        let timeout = CaptureError::Connect(DbError::Timeout {
            url: url.into(),
            after: std::time::Duration::from_secs(10),
        });
        for e in [io, timeout] {
            let summary = e.summary();
            assert_eq!(summary.kind, "connection");
            assert!(!summary.to_string().contains("postgres://"), "{summary}");
            assert!(!summary.to_string().contains("db.example"), "{summary}");
        }
    }

    #[test]
    fn invalidation_from_the_slot_state() {
        let state = |w: &str, c: Option<bool>, r: Option<&str>| SlotState {
            wal_status: Some(w.into()),
            conflicting: c,
            invalidation_reason: r.map(Into::into),
        };
        assert!(state("lost", None, None).is_invalidated());
        assert!(state("reserved", Some(true), None).is_invalidated());
        assert!(state("lost", Some(false), Some("wal_removed")).is_invalidated());
        assert!(!state("reserved", Some(false), None).is_invalidated());
        assert!(!state("unreserved", None, None).is_invalidated());
    }
}
