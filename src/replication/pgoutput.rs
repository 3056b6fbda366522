//! Decoder for the messages of the `pgoutput` logical decoding plugin, protocol versions 1
//! and 2 (PostgreSQL's "Logical Replication Message Formats").
//!
//! # Contract
//!
//! Pure: bytes in, values out. No IO, no clock, no global state. [`decode`] takes the data of
//! one XLogData message (one pgoutput message) outside a stream block, [`decode_streamed`]
//! one inside a stream block, and [`Decoder`] tracks which of the two applies; none of them
//! panics: malformed, truncated or over-long input gives a [`DecodeError`] that names what was
//! being read. Column values are [`Bytes`] slices of the input (no copy); names are copied
//! into `String`s.
//!
//! Message kinds of protocol version 3 (two-phase commit) are recognised and rejected with
//! [`DecodeError::Unsupported`]; a session that does not ask for `two_phase` never gets them.
//!
//! # What the messages mean for a consumer
//!
//! A committed transaction arrives as `Begin`, then its changes, then `Commit`; such
//! transactions are never interleaved with each other and only committed ones are sent.
//!
//! With protocol version 2 and `streaming 'on'` (PostgreSQL 14+), a transaction whose decoded
//! changes outgrow the server's `logical_decoding_work_mem` is sent *while it is still in
//! progress*, in stream blocks:
//!
//! * [`StreamStart`] opens a block of one transaction (`first_segment` on its first block);
//!   [`StreamStop`](PgOutputMessage::StreamStop) closes it. Inside a block, `Relation`,
//!   `Type`, `Insert`, `Update`, `Delete`, `Truncate` and `Message` carry the xid of the
//!   (sub)transaction that made them before their usual fields ([`decode_streamed`] returns
//!   it in [`Streamed::xid`]); `Origin` may follow `StreamStart`, without one.
//! * Blocks of several transactions, and whole `Begin` ... `Commit` transactions, may come
//!   between the blocks of one transaction, in WAL order.
//! * [`StreamCommit`] ends a streamed transaction that committed (same fields as `Commit`,
//!   plus its xid); it is not inside a block.
//! * [`StreamAbort`] discards what was streamed: of the whole transaction when `subxid ==
//!   xid`, else of that subtransaction only (one message per aborted subtransaction whose
//!   changes were streamed). The server also sends it when, decoding again from the slot's
//!   restart LSN after a reconnect, it streamed a transaction whose commit turns out to lie
//!   before the confirmed position: what a consumer staged must go then too.
//!
//! * [`Begin`]: `final_lsn` is the LSN of the transaction's commit record (equal to the
//!   following [`Commit::commit_lsn`]); `commit_time_us` is microseconds since 2000-01-01 UTC.
//! * [`Commit`]: `end_lsn` is the end of the commit record — the position to confirm (as
//!   flushed) in the standby status update once the transaction's effects are durably
//!   handled. After a restart the server resends every transaction whose `end_lsn` is after the
//!   confirmed position.
//! * [`Origin`]: follows `Begin` when the transaction was replayed from another node (through a
//!   replication origin).
//! * [`Relation`]: describes a table (id, schema, name, replica identity, columns). It is sent
//!   before the first change of that relation in the session and again whenever its
//!   description may have changed (e.g. after `ALTER TABLE`), always before the change that
//!   needs it; keep the latest per id ([`RelationCache`]) and interpret tuples by column
//!   position against it.
//! * [`TypeMessage`]: describes a non built-in data type (e.g. an enum) used by a column; sent
//!   before the `Relation` that uses it.
//! * [`Insert`], [`Update`], [`Delete`]: row changes. Which old values come with them depends
//!   on the table's REPLICA IDENTITY: with `FULL` an update or delete carries the whole old row
//!   (`'O'`); with the default (primary key) or an index, a delete carries only the key columns
//!   (`'K'`, other columns null) and an update carries them only if a key column changed.
//! * [`Truncate`]: the listed relations were emptied (`options`: 1 = CASCADE, 2 = RESTART
//!   IDENTITY).
//! * [`LogicalMessage`]: written by `pg_logical_emit_message`; only sent when the slot is read
//!   with `messages 'true'`. A transactional one arrives inside its transaction, a
//!   non-transactional one on its own, immediately, even if its transaction later aborts.
//!
//! In tuples, a column is [`ColumnValue::Null`], text ([`ColumnValue::Text`], the type's
//! output function format), binary (with the `binary` option), or
//! [`ColumnValue::UnchangedToast`] (`'u'`): an out-of-line (TOASTed) value that the update did
//! not change and that is therefore not in the WAL. It only occurs in new tuples of updates.
//! Under REPLICA IDENTITY FULL the old tuple of the same message carries the full value, so
//! [`Update::resolved_new`] / [`TupleData::with_unchanged_from`] can fill it in; otherwise the
//! value is unknown to the consumer and must be left as it was.

use std::collections::HashMap;

use bytes::Bytes;

use super::Lsn;

/// `Relation::replica_identity` for REPLICA IDENTITY DEFAULT (primary key).
pub const REPLICA_IDENTITY_DEFAULT: u8 = b'd';
/// `Relation::replica_identity` for REPLICA IDENTITY NOTHING.
pub const REPLICA_IDENTITY_NOTHING: u8 = b'n';
/// `Relation::replica_identity` for REPLICA IDENTITY FULL.
pub const REPLICA_IDENTITY_FULL: u8 = b'f';
/// `Relation::replica_identity` for REPLICA IDENTITY USING INDEX.
pub const REPLICA_IDENTITY_INDEX: u8 = b'i';

/// `Column::flags` bit: the column is part of the replica identity key.
pub const COLUMN_FLAG_KEY: u8 = 1;
/// `Truncate::options` bit: TRUNCATE ... CASCADE.
pub const TRUNCATE_CASCADE: u8 = 1;
/// `Truncate::options` bit: TRUNCATE ... RESTART IDENTITY.
pub const TRUNCATE_RESTART_IDENTITY: u8 = 2;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgOutputMessage {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeMessage),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(LogicalMessage),
    StreamStart(StreamStart),
    /// `'E'`: end of a stream block (no fields).
    StreamStop,
    StreamCommit(StreamCommit),
    StreamAbort(StreamAbort),
}

impl PgOutputMessage {
    /// The message name, for logs ("Begin", "Insert", ...).
    pub fn kind_name(&self) -> &'static str {
        match self {
            PgOutputMessage::Begin(_) => "Begin",
            PgOutputMessage::Commit(_) => "Commit",
            PgOutputMessage::Origin(_) => "Origin",
            PgOutputMessage::Relation(_) => "Relation",
            PgOutputMessage::Type(_) => "Type",
            PgOutputMessage::Insert(_) => "Insert",
            PgOutputMessage::Update(_) => "Update",
            PgOutputMessage::Delete(_) => "Delete",
            PgOutputMessage::Truncate(_) => "Truncate",
            PgOutputMessage::Message(_) => "Message",
            PgOutputMessage::StreamStart(_) => "Stream Start",
            PgOutputMessage::StreamStop => "Stream Stop",
            PgOutputMessage::StreamCommit(_) => "Stream Commit",
            PgOutputMessage::StreamAbort(_) => "Stream Abort",
        }
    }
}

/// `'S'`: a stream block of an in-progress transaction begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStart {
    /// The top-level transaction's xid.
    pub xid: u32,
    /// The transaction's first block (in this replication session).
    pub first_segment: bool,
}

/// `'c'`: a streamed transaction committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCommit {
    pub xid: u32,
    /// Currently always 0.
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to confirm once the transaction is handled.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time_us: i64,
}

/// `'A'`: a streamed transaction, or one of its subtransactions, aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAbort {
    /// The top-level transaction's xid.
    pub xid: u32,
    /// The aborted (sub)transaction: equal to `xid` when the whole transaction aborted.
    pub subxid: u32,
}

impl StreamAbort {
    /// The whole transaction aborted (not only a subtransaction).
    pub fn is_whole_transaction(&self) -> bool {
        self.xid == self.subxid
    }
}

/// A message decoded inside a stream block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streamed {
    /// The (sub)transaction that made a data message (`Relation`, `Type`, `Insert`, `Update`,
    /// `Delete`, `Truncate`, `Message`); `None` for `Origin` and `StreamStop`.
    pub xid: Option<u32>,
    pub message: PgOutputMessage,
}

/// `'B'`: start of a committed transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the commit record (same as the transaction's [`Commit::commit_lsn`]).
    pub final_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time_us: i64,
    pub xid: u32,
}

/// `'C'`: end of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Currently always 0.
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// End of the commit record: the position to confirm once the transaction is handled.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since 2000-01-01 UTC.
    pub commit_time_us: i64,
}

/// `'O'`: the transaction was replayed from another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Commit LSN on the origin server.
    pub commit_lsn: Lsn,
    pub name: String,
}

/// `'R'`: a table's description; tuples of that relation are interpreted against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The table's OID; the `relation_id` of changes.
    pub id: u32,
    /// Schema name (empty for `pg_catalog`).
    pub namespace: String,
    pub name: String,
    /// `pg_class.relreplident`: [`REPLICA_IDENTITY_DEFAULT`], [`REPLICA_IDENTITY_NOTHING`],
    /// [`REPLICA_IDENTITY_FULL`] or [`REPLICA_IDENTITY_INDEX`].
    pub replica_identity: u8,
    /// The published columns in tuple order (generated columns are not included).
    pub columns: Vec<Column>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// [`COLUMN_FLAG_KEY`] if the column is part of the replica identity (all columns under
    /// REPLICA IDENTITY FULL), else 0.
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    /// `atttypmod`; -1 when the type has none.
    pub type_modifier: i32,
}

impl Column {
    /// The column is part of the replica identity key.
    pub fn is_key(&self) -> bool {
        self.flags & COLUMN_FLAG_KEY != 0
    }
}

impl Relation {
    /// Position of the column called `name` (exact, case-sensitive) in this relation's tuples.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// `schema.table`, unquoted, e.g. `public.product_stores` (`pg_catalog` for an empty
    /// namespace).
    pub fn qualified_name(&self) -> String {
        let namespace = if self.namespace.is_empty() {
            "pg_catalog"
        } else {
            &self.namespace
        };
        format!("{namespace}.{}", self.name)
    }

    /// The table has REPLICA IDENTITY FULL (updates and deletes carry the whole old row).
    pub fn is_replica_identity_full(&self) -> bool {
        self.replica_identity == REPLICA_IDENTITY_FULL
    }
}

/// `'Y'`: a data type used by a published column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeMessage {
    /// The type's OID (matches [`Column::type_oid`]).
    pub id: u32,
    /// Schema name (empty for `pg_catalog`).
    pub namespace: String,
    pub name: String,
}

/// `'I'`: a row was inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub relation_id: u32,
    pub new: TupleData,
}

/// `'U'`: a row was updated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub relation_id: u32,
    /// `'O'`: the whole old row (REPLICA IDENTITY FULL).
    pub old: Option<TupleData>,
    /// `'K'`: the old key columns (other columns null), when the update changed the key.
    pub key: Option<TupleData>,
    /// `'N'`: the new row; may contain [`ColumnValue::UnchangedToast`].
    pub new: TupleData,
}

impl Update {
    /// The new row with unchanged TOAST values taken from the old row when it is present
    /// (see [`TupleData::with_unchanged_from`]).
    pub fn resolved_new(&self) -> TupleData {
        match &self.old {
            Some(old) => self.new.clone().with_unchanged_from(old),
            None => self.new.clone(),
        }
    }
}

/// `'D'`: a row was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub relation_id: u32,
    /// `'O'`: the whole old row (REPLICA IDENTITY FULL).
    pub old: Option<TupleData>,
    /// `'K'`: the key columns (other columns null).
    pub key: Option<TupleData>,
}

/// `'T'`: relations were truncated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Bits [`TRUNCATE_CASCADE`], [`TRUNCATE_RESTART_IDENTITY`].
    pub options: u8,
    pub relation_ids: Vec<u32>,
}

impl Truncate {
    pub fn cascade(&self) -> bool {
        self.options & TRUNCATE_CASCADE != 0
    }

    pub fn restart_identity(&self) -> bool {
        self.options & TRUNCATE_RESTART_IDENTITY != 0
    }
}

/// `'M'`: a message written with `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    pub transactional: bool,
    /// LSN of the message record.
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

/// The columns of a row, in [`Relation::columns`] order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TupleData(pub Vec<ColumnValue>);

/// One column of a [`TupleData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnValue {
    /// `'n'`: SQL NULL (also the non-key columns of a `'K'` key tuple).
    Null,
    /// `'u'`: an unchanged out-of-line (TOAST) value whose content is not in the message.
    UnchangedToast,
    /// `'t'`: the value in text format.
    Text(Bytes),
    /// `'b'`: the value in binary (send/recv) format, with the `binary` option.
    Binary(Bytes),
}

impl ColumnValue {
    /// The text of a [`ColumnValue::Text`]; `None` for any other kind.
    pub fn as_str(&self) -> Option<Result<&str, DecodeError>> {
        match self {
            ColumnValue::Text(raw) => {
                Some(
                    std::str::from_utf8(raw).map_err(|_| DecodeError::InvalidUtf8 {
                        what: "text column value",
                    }),
                )
            }
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, ColumnValue::Null)
    }

    pub fn is_unchanged_toast(&self) -> bool {
        matches!(self, ColumnValue::UnchangedToast)
    }
}

impl TupleData {
    /// The value at column position `idx`.
    pub fn get(&self, idx: usize) -> Option<&ColumnValue> {
        self.0.get(idx)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ColumnValue> {
        self.0.iter()
    }

    /// Whether any column is [`ColumnValue::UnchangedToast`].
    pub fn has_unchanged_toast(&self) -> bool {
        self.0.iter().any(ColumnValue::is_unchanged_toast)
    }

    /// Replaces every [`ColumnValue::UnchangedToast`] of this (new) tuple with the value at the
    /// same position in `old` (the old tuple of the same update, complete under REPLICA
    /// IDENTITY FULL). Positions `old` does not know (missing, or itself unchanged) stay
    /// `UnchangedToast`. Values are shared, not copied.
    pub fn with_unchanged_from(mut self, old: &TupleData) -> TupleData {
        for (idx, value) in self.0.iter_mut().enumerate() {
            if value.is_unchanged_toast() {
                if let Some(known) = old.get(idx).filter(|v| !v.is_unchanged_toast()) {
                    *value = known.clone();
                }
            }
        }
        self
    }
}

/// Keeps the latest [`Relation`] per relation id, as announced by `Relation` messages.
#[derive(Debug, Clone, Default)]
pub struct RelationCache {
    relations: HashMap<u32, Relation>,
}

impl RelationCache {
    pub fn new() -> RelationCache {
        RelationCache::default()
    }

    /// Stores `r`, replacing any earlier description of the same relation id.
    pub fn insert(&mut self, r: Relation) {
        self.relations.insert(r.id, r);
    }

    pub fn get(&self, id: u32) -> Option<&Relation> {
        self.relations.get(&id)
    }

    /// The relation with this schema and table name, if one has been announced.
    pub fn find(&self, namespace: &str, name: &str) -> Option<&Relation> {
        self.relations
            .values()
            .find(|r| r.namespace == namespace && r.name == name)
    }

    pub fn len(&self) -> usize {
        self.relations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }

    /// Forgets everything (relations are announced again in a new replication session).
    pub fn clear(&mut self) {
        self.relations.clear();
    }
}

/// Why a pgoutput message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error(
        "truncated pgoutput {message} message: reading {what} at offset {offset} needs \
         {needed} bytes, {available} left"
    )]
    Truncated {
        message: &'static str,
        what: &'static str,
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("truncated pgoutput {message} message: {what} at offset {offset} has no terminator")]
    UnterminatedString {
        message: &'static str,
        what: &'static str,
        offset: usize,
    },
    #[error("unknown pgoutput message kind 0x{0:02x}")]
    UnknownMessage(u8),
    #[error("unknown tuple column kind 0x{0:02x} (expected 'n', 'u', 't' or 'b')")]
    UnknownTupleKind(u8),
    #[error(
        "pgoutput {message} message: expected {expected} at offset {offset}, found 0x{found:02x}"
    )]
    UnexpectedTupleMarker {
        message: &'static str,
        expected: &'static str,
        offset: usize,
        found: u8,
    },
    #[error("pgoutput {message} message: negative {what} ({value})")]
    NegativeLength {
        message: &'static str,
        what: &'static str,
        value: i64,
    },
    #[error("invalid UTF-8 in {what}")]
    InvalidUtf8 { what: &'static str },
    #[error(
        "pgoutput {name} message ('{}') needs protocol version {min_protocol_version}; \
         this decoder supports versions 1 and 2",
        char::from(*kind)
    )]
    Unsupported {
        kind: u8,
        name: &'static str,
        min_protocol_version: u32,
    },
    #[error("{count} trailing bytes after a pgoutput {message} message")]
    TrailingBytes { message: &'static str, count: usize },
    #[error("pgoutput {name} message {}", if *inside_stream { "inside a stream block" } else { "outside a stream block" })]
    OutOfPlace {
        name: &'static str,
        /// Where it came: a message only valid outside a block came inside one, or the reverse.
        inside_stream: bool,
    },
}

/// Decodes one pgoutput message that is not inside a stream block: the data of one XLogData
/// message. A data message carries no xid here; `StreamStop` is refused (it only closes a
/// block).
///
/// Text and binary column values and logical message content are slices of `buf`.
pub fn decode(buf: Bytes) -> Result<PgOutputMessage, DecodeError> {
    decode_message(buf, false).map(|streamed| streamed.message)
}

/// Decodes one pgoutput message inside a stream block (after `StreamStart`, up to and
/// including `StreamStop`): data messages start with their (sub)transaction's xid.
/// `Begin`, `Commit` and the other stream control messages are refused.
pub fn decode_streamed(buf: Bytes) -> Result<Streamed, DecodeError> {
    decode_message(buf, true)
}

/// Decodes a session's messages in order, knowing from `StreamStart` / `StreamStop` whether
/// a message is inside a stream block. Pure state: one flag.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    in_stream: bool,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Whether the last message decoded opened a stream block that is not closed yet.
    pub fn in_stream(&self) -> bool {
        self.in_stream
    }

    /// Decodes the next message of the session.
    pub fn decode(&mut self, buf: Bytes) -> Result<Streamed, DecodeError> {
        let streamed = decode_message(buf, self.in_stream)?;
        match streamed.message {
            PgOutputMessage::StreamStart(_) => self.in_stream = true,
            PgOutputMessage::StreamStop => self.in_stream = false,
            _ => {}
        }
        Ok(streamed)
    }
}

fn decode_message(buf: Bytes, in_stream: bool) -> Result<Streamed, DecodeError> {
    let kind = *buf.first().ok_or(DecodeError::Empty)?;
    let (message, allowed) = match kind {
        b'B' => ("Begin", Place::Outside),
        b'C' => ("Commit", Place::Outside),
        b'O' => ("Origin", Place::Anywhere),
        b'R' => ("Relation", Place::Anywhere),
        b'Y' => ("Type", Place::Anywhere),
        b'I' => ("Insert", Place::Anywhere),
        b'U' => ("Update", Place::Anywhere),
        b'D' => ("Delete", Place::Anywhere),
        b'T' => ("Truncate", Place::Anywhere),
        b'M' => ("Message", Place::Anywhere),
        b'S' => ("Stream Start", Place::Outside),
        b'E' => ("Stream Stop", Place::Inside),
        b'c' => ("Stream Commit", Place::Outside),
        b'A' => ("Stream Abort", Place::Outside),
        other => return Err(unsupported_or_unknown(other)),
    };
    let misplaced = match allowed {
        Place::Anywhere => false,
        Place::Outside => in_stream,
        Place::Inside => !in_stream,
    };
    if misplaced {
        return Err(DecodeError::OutOfPlace {
            name: message,
            inside_stream: in_stream,
        });
    }
    let mut r = Reader {
        buf,
        pos: 1,
        message,
    };
    // Inside a block every data message names its (sub)transaction first.
    let xid = if in_stream && !matches!(kind, b'O' | b'E') {
        Some(r.u32("xid")?)
    } else {
        None
    };
    let decoded = match kind {
        b'B' => PgOutputMessage::Begin(Begin {
            final_lsn: r.lsn("final LSN")?,
            commit_time_us: r.i64("commit timestamp")?,
            xid: r.u32("xid")?,
        }),
        b'C' => PgOutputMessage::Commit(Commit {
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_time_us: r.i64("commit timestamp")?,
        }),
        b'O' => PgOutputMessage::Origin(Origin {
            commit_lsn: r.lsn("origin commit LSN")?,
            name: r.string("origin name")?,
        }),
        b'R' => PgOutputMessage::Relation(decode_relation(&mut r)?),
        b'Y' => PgOutputMessage::Type(TypeMessage {
            id: r.u32("type id")?,
            namespace: r.string("type namespace")?,
            name: r.string("type name")?,
        }),
        b'I' => {
            let relation_id = r.u32("relation id")?;
            r.expect_marker(b'N', "'N' (new tuple)")?;
            PgOutputMessage::Insert(Insert {
                relation_id,
                new: r.tuple()?,
            })
        }
        b'U' => {
            let relation_id = r.u32("relation id")?;
            let (mut old, mut key) = (None, None);
            match r.peek_u8("tuple marker")? {
                b'O' => {
                    r.pos += 1;
                    old = Some(r.tuple()?);
                }
                b'K' => {
                    r.pos += 1;
                    key = Some(r.tuple()?);
                }
                _ => {}
            }
            r.expect_marker(b'N', "'N' (new tuple)")?;
            PgOutputMessage::Update(Update {
                relation_id,
                old,
                key,
                new: r.tuple()?,
            })
        }
        b'D' => {
            let relation_id = r.u32("relation id")?;
            let offset = r.pos;
            let (old, key) = match r.u8("tuple marker")? {
                b'O' => (Some(r.tuple()?), None),
                b'K' => (None, Some(r.tuple()?)),
                found => {
                    return Err(DecodeError::UnexpectedTupleMarker {
                        message,
                        expected: "'O' (old tuple) or 'K' (key)",
                        offset,
                        found,
                    })
                }
            };
            PgOutputMessage::Delete(Delete {
                relation_id,
                old,
                key,
            })
        }
        b'T' => {
            let count = r.count_i32("number of relations")?;
            let options = r.u8("options")?;
            r.need(count.saturating_mul(4), "relation ids")?;
            let mut relation_ids = Vec::with_capacity(count);
            for _ in 0..count {
                relation_ids.push(r.u32("relation id")?);
            }
            PgOutputMessage::Truncate(Truncate {
                options,
                relation_ids,
            })
        }
        b'M' => {
            let flags = r.u8("flags")?;
            let lsn = r.lsn("message LSN")?;
            let prefix = r.string("message prefix")?;
            let len = r.count_i32("message content length")?;
            PgOutputMessage::Message(LogicalMessage {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content: r.take(len, "message content")?,
            })
        }
        b'S' => PgOutputMessage::StreamStart(StreamStart {
            xid: r.u32("xid")?,
            first_segment: r.u8("first segment flag")? == 1,
        }),
        b'E' => PgOutputMessage::StreamStop,
        b'c' => PgOutputMessage::StreamCommit(StreamCommit {
            xid: r.u32("xid")?,
            flags: r.u8("flags")?,
            commit_lsn: r.lsn("commit LSN")?,
            end_lsn: r.lsn("end LSN")?,
            commit_time_us: r.i64("commit timestamp")?,
        }),
        // Protocol version 4 (`streaming 'parallel'`) appends the abort LSN and time; this
        // decoder asks for version 2, so they are trailing bytes here.
        b'A' => PgOutputMessage::StreamAbort(StreamAbort {
            xid: r.u32("xid")?,
            subxid: r.u32("subtransaction xid")?,
        }),
        _ => unreachable!("kind already matched above"),
    };
    let left = r.remaining();
    if left != 0 {
        return Err(DecodeError::TrailingBytes {
            message,
            count: left,
        });
    }
    Ok(Streamed {
        xid,
        message: decoded,
    })
}

/// Where a message kind may come relative to stream blocks.
enum Place {
    Anywhere,
    Outside,
    Inside,
}

fn unsupported_or_unknown(kind: u8) -> DecodeError {
    let (name, min_protocol_version) = match kind {
        b'b' => ("Begin Prepare", 3),
        b'P' => ("Prepare", 3),
        b'K' => ("Commit Prepared", 3),
        b'r' => ("Rollback Prepared", 3),
        b'p' => ("Stream Prepare", 3),
        other => return DecodeError::UnknownMessage(other),
    };
    DecodeError::Unsupported {
        kind,
        name,
        min_protocol_version,
    }
}

fn decode_relation(r: &mut Reader) -> Result<Relation, DecodeError> {
    let id = r.u32("relation id")?;
    let namespace = r.string("relation namespace")?;
    let name = r.string("relation name")?;
    let replica_identity = r.u8("replica identity")?;
    let count = r.count_i16("number of columns")?;
    // Each column takes at least 10 bytes (flags, empty name, type oid, modifier).
    r.need(count.saturating_mul(10), "columns")?;
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        columns.push(Column {
            flags: r.u8("column flags")?,
            name: r.string("column name")?,
            type_oid: r.u32("column type oid")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

/// A cursor over one message; every read checks the length first.
struct Reader {
    buf: Bytes,
    pos: usize,
    message: &'static str,
}

impl Reader {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn need(&self, needed: usize, what: &'static str) -> Result<(), DecodeError> {
        let available = self.remaining();
        if available < needed {
            return Err(DecodeError::Truncated {
                message: self.message,
                what,
                offset: self.pos,
                needed,
                available,
            });
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        self.need(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        Ok(out)
    }

    fn peek_u8(&self, what: &'static str) -> Result<u8, DecodeError> {
        self.need(1, what)?;
        Ok(self.buf[self.pos])
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(what)?)))
    }

    fn negative(&self, what: &'static str, value: i64) -> DecodeError {
        DecodeError::NegativeLength {
            message: self.message,
            what,
            value,
        }
    }

    /// An `Int16` count that must not be negative.
    fn count_i16(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let value = self.i16(what)?;
        usize::try_from(value).map_err(|_| self.negative(what, value.into()))
    }

    /// An `Int32` count or length that must not be negative.
    fn count_i32(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let value = self.i32(what)?;
        usize::try_from(value).map_err(|_| self.negative(what, value.into()))
    }

    fn take(&mut self, len: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        self.need(len, what)?;
        let out = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(out)
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::UnterminatedString {
                message: self.message,
                what,
                offset: self.pos,
            });
        };
        let text = std::str::from_utf8(&rest[..len])
            .map_err(|_| DecodeError::InvalidUtf8 { what })?
            .to_owned();
        self.pos += len + 1;
        Ok(text)
    }

    fn expect_marker(&mut self, marker: u8, expected: &'static str) -> Result<(), DecodeError> {
        let offset = self.pos;
        let found = self.u8("tuple marker")?;
        if found != marker {
            return Err(DecodeError::UnexpectedTupleMarker {
                message: self.message,
                expected,
                offset,
                found,
            });
        }
        Ok(())
    }

    /// A TupleData part: `Int16` column count, then each column.
    fn tuple(&mut self) -> Result<TupleData, DecodeError> {
        let count = self.count_i16("number of tuple columns")?;
        // Each column takes at least its kind byte.
        self.need(count, "tuple columns")?;
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            let value = match self.u8("tuple column kind")? {
                b'n' => ColumnValue::Null,
                b'u' => ColumnValue::UnchangedToast,
                b't' => {
                    let len = self.count_i32("text value length")?;
                    ColumnValue::Text(self.take(len, "text value")?)
                }
                b'b' => {
                    let len = self.count_i32("binary value length")?;
                    ColumnValue::Binary(self.take(len, "binary value")?)
                }
                other => return Err(DecodeError::UnknownTupleKind(other)),
            };
            values.push(value);
        }
        Ok(TupleData(values))
    }
}

#[cfg(test)]
mod tests;
