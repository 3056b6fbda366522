//! A stream of decoded, committed-order replication events, with the keepalive and feedback
//! policy.
//!
//! [`open`] connects, issues `START_REPLICATION` and spawns a pump task that reads CopyData,
//! decodes pgoutput, resolves relations through its relation cache and hands
//! [`StreamEvent`]s to the consumer over a bounded channel, in chunks of what one socket read
//! brought (one channel operation and wake-up per chunk, not per event; back-pressure reaches
//! the server through TCP). Events arrive in WAL order: Begin, changes, Commit, with
//! keepalives only between transactions as far as the consumer is concerned (a keepalive that
//! arrives inside a transaction is still forwarded, and the consumer ignores it).
//!
//! With [`StreamSettings::streaming`] (protocol version 2, `streaming 'on'`), a large
//! in-progress transaction also arrives in stream blocks ([`StreamEvent::StreamStart`] ...
//! [`StreamEvent::StreamStop`], its changes carrying their (sub)transaction's xid), between
//! which other transactions and keepalives may come; it ends with
//! [`StreamEvent::StreamCommit`] or [`StreamEvent::StreamAbort`] (see
//! [`super::pgoutput`]). Relations described inside a streamed transaction resolve that
//! transaction's changes only, and become the session's description when it commits (as the
//! server assumes: it sends them again in the next transaction otherwise).
//!
//! Feedback rule: the pump reports to the server `flush = apply =` the position the consumer
//! confirmed through [`Feedback::confirm`] — never anything the consumer has not durably
//! processed — and `write =` the highest position received. It sends a status update every
//! `status_interval`, at once when the server asks for a reply, and soon after each
//! confirmation; it keeps doing so while the consumer is slow, so the server's
//! `wal_sender_timeout` never fires because of back-pressure.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::copy::{self, ReplicationMessage};
use super::pgoutput::{self, PgOutputMessage, Relation, Streamed, TupleData};
use super::wire::{Received, ReplicationConnection, WireError};
use super::Lsn;
use crate::db::DbConfig;

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("cannot decode the replication stream at {at}: {source}")]
    Decode {
        at: Lsn,
        #[source]
        source: pgoutput::DecodeError,
    },
    #[error("malformed replication frame: {0}")]
    Frame(String),
    #[error("a change refers to relation {0}, which the server never described")]
    UnknownRelation(u32),
    #[error("the server ended the replication stream")]
    Ended,
}

/// What a row change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

/// One row change with its relation resolved. `old` is present for UPDATE and DELETE when the
/// table has REPLICA IDENTITY FULL (or a key-only old tuple otherwise); `new` for INSERT and
/// UPDATE, with unchanged-TOAST values already filled in from `old` where possible.
#[derive(Debug, Clone)]
pub struct RowChange {
    pub relation: Arc<Relation>,
    pub kind: ChangeKind,
    pub old: Option<TupleData>,
    pub new: Option<TupleData>,
    /// Inside a stream block: the (sub)transaction that made the change.
    pub streamed_xid: Option<u32>,
}

#[derive(Debug, Clone)]
pub enum StreamEvent {
    Begin {
        final_lsn: Lsn,
        xid: u32,
        commit_time_us: i64,
    },
    Change(RowChange),
    Truncate {
        relations: Vec<Arc<Relation>>,
        /// Inside a stream block: the (sub)transaction that truncated.
        streamed_xid: Option<u32>,
    },
    /// A relation was (re)described: schema changes show up here before the next change.
    /// Inside a stream block `streamed_xid` names the (sub)transaction it was sent for.
    Relation {
        relation: Arc<Relation>,
        streamed_xid: Option<u32>,
    },
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time_us: i64,
    },
    /// A stream block of the in-progress transaction `xid` begins.
    StreamStart {
        xid: u32,
        first_segment: bool,
    },
    /// The current stream block ends.
    StreamStop,
    /// The streamed transaction `xid` committed.
    StreamCommit {
        xid: u32,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time_us: i64,
    },
    /// What was streamed of `subxid` (the whole transaction when it equals `xid`) is void.
    StreamAbort {
        xid: u32,
        subxid: u32,
    },
    /// The server's position when nothing else was sent: every transaction that committed
    /// before it has already been delivered.
    Keepalive {
        wal_end: Lsn,
    },
}

/// Shared between consumer and pump: the confirmed position and a wake-up.
#[derive(Debug, Default)]
pub struct Feedback {
    confirmed: AtomicU64,
    received: AtomicU64,
    wake: Notify,
}

impl Feedback {
    /// The consumer has durably processed everything up to `lsn`. Never moves backwards.
    pub fn confirm(&self, lsn: Lsn) {
        let previous = self.confirmed.fetch_max(lsn.0, Ordering::AcqRel);
        if lsn.0 > previous {
            self.wake.notify_one();
        }
    }

    pub fn confirmed(&self) -> Lsn {
        Lsn(self.confirmed.load(Ordering::Acquire))
    }

    /// Highest WAL position received from the server so far.
    pub fn received(&self) -> Lsn {
        Lsn(self.received.load(Ordering::Acquire))
    }
}

#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub slot: String,
    pub publication: String,
    pub start: Lsn,
    /// Protocol version 2 with `streaming 'on'` (PostgreSQL 14+): large transactions arrive
    /// while in progress instead of being spilled to disk by the server and sent at commit.
    pub streaming: bool,
    pub status_interval: Duration,
    /// Events buffered between the pump and the consumer (rounded to whole chunks).
    pub channel_capacity: usize,
}

/// Events are handed over in chunks of at most this many: whatever the frames already read
/// from the socket decode to.
const MAX_CHUNK: usize = 512;

/// A running stream: events (in WAL order, chunked), feedback, and the pump task.
pub struct ReplicationStream {
    pub events: mpsc::Receiver<Vec<StreamEvent>>,
    pub feedback: Arc<Feedback>,
    pump: JoinHandle<Result<(), StreamError>>,
    stop: CancellationToken,
    pub backend_pid: i32,
}

impl ReplicationStream {
    /// Asks the pump to send a last status update (with the confirmed position) and close
    /// the connection; returns the pump's result.
    pub async fn finish(mut self) -> Result<(), StreamError> {
        self.stop.cancel();
        self.events.close();
        match (&mut self.pump).await {
            Ok(result) => result,
            Err(join) => Err(StreamError::Frame(format!(
                "replication task failed: {join}"
            ))),
        }
    }

    /// Waits for the pump to end by itself (an error, or the server closing the stream).
    pub async fn pump_result(&mut self) -> Result<(), StreamError> {
        match (&mut self.pump).await {
            Ok(result) => result,
            Err(join) => Err(StreamError::Frame(format!(
                "replication task failed: {join}"
            ))),
        }
    }
}

/// A stream dropped without [`ReplicationStream::finish`] (the consumer failed) must not
/// leave its pump behind: a detached pump keeps the replication connection open, answering
/// the server's keepalives with a position that no longer moves, and the walsender then
/// waits for it forever (a fast shutdown of the server hangs).
impl Drop for ReplicationStream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Connects and starts streaming from `settings.start`.
pub async fn open(
    config: &DbConfig,
    settings: &StreamSettings,
) -> Result<ReplicationStream, StreamError> {
    let mut connection = ReplicationConnection::connect(config).await?;
    let mut options = vec![
        ("proto_version", "1".to_string()),
        ("publication_names", format!("\"{}\"", settings.publication)),
    ];
    if settings.streaming {
        options[0].1 = "2".into();
        options.push(("streaming", "on".into()));
    }
    connection
        .start_replication(&settings.slot, settings.start, &options)
        .await?;
    let backend_pid = connection.backend_pid;
    let (sender, events) = mpsc::channel((settings.channel_capacity / MAX_CHUNK).max(4));
    let feedback = Arc::new(Feedback::default());
    feedback.confirm(settings.start);
    feedback.received.store(settings.start.0, Ordering::Release);
    let stop = CancellationToken::new();
    let pump = Pump {
        connection,
        sender,
        feedback: feedback.clone(),
        decoder: pgoutput::Decoder::new(),
        relations: HashMap::new(),
        streamed_relations: HashMap::new(),
        stream_xid: None,
        pending: Vec::with_capacity(MAX_CHUNK),
        status_interval: settings.status_interval,
        stop: stop.clone(),
    };
    let pump = tokio::spawn(pump.run());
    Ok(ReplicationStream {
        events,
        feedback,
        pump,
        stop,
        backend_pid,
    })
}

struct Pump {
    connection: ReplicationConnection,
    sender: mpsc::Sender<Vec<StreamEvent>>,
    feedback: Arc<Feedback>,
    decoder: pgoutput::Decoder,
    /// The session's relations (described outside streams, or by committed streams).
    relations: HashMap<u32, Arc<Relation>>,
    /// Relations described inside each in-progress streamed transaction (by top-level xid).
    streamed_relations: HashMap<u32, HashMap<u32, Arc<Relation>>>,
    /// The transaction of the stream block being received.
    stream_xid: Option<u32>,
    /// Decoded events not handed over yet.
    pending: Vec<StreamEvent>,
    status_interval: Duration,
    stop: CancellationToken,
}

impl Pump {
    async fn run(mut self) -> Result<(), StreamError> {
        let mut ticker = tokio::time::interval(self.status_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let feedback = self.feedback.clone();
        let stop = self.stop.clone();
        let result = loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break Ok(()),
                _ = ticker.tick() => self.send_status(false).await?,
                _ = feedback.wake.notified() => self.send_status(false).await?,
                frame = self.connection.recv() => {
                    let Some(frame) = frame? else {
                        break Err(StreamError::Ended);
                    };
                    self.handle_frame(frame).await?;
                    // Everything else the same read brought, without a trip through select.
                    let mut ended = false;
                    while self.pending.len() < MAX_CHUNK {
                        match self.connection.recv_buffered()? {
                            Some(Received::Data(frame)) => self.handle_frame(frame).await?,
                            Some(Received::Ended) => {
                                ended = true;
                                break;
                            }
                            None => break,
                        }
                    }
                    self.deliver_pending(&mut ticker).await?;
                    if ended {
                        break Err(StreamError::Ended);
                    }
                }
            }
        };
        if result.is_ok() {
            // Last word: tell the server how far we got, then leave.
            let _ = self.send_status(false).await;
            self.connection.close().await;
        }
        result
    }

    async fn send_status(&mut self, reply_requested: bool) -> Result<(), WireError> {
        let confirmed = self.feedback.confirmed();
        let written = self.feedback.received().max(confirmed);
        let body = copy::encode_standby_status_update(
            written,
            confirmed,
            confirmed,
            copy::pg_epoch_micros(chrono::Utc::now()),
            reply_requested,
        );
        self.connection.send_copy_data(&body).await
    }

    /// Decodes one CopyData frame into `pending` (answering a keepalive that asks for it).
    async fn handle_frame(&mut self, frame: Bytes) -> Result<(), StreamError> {
        let message =
            copy::parse_copy_data(frame).map_err(|e| StreamError::Frame(e.to_string()))?;
        match message {
            ReplicationMessage::PrimaryKeepalive {
                wal_end,
                reply_requested,
                ..
            } => {
                self.feedback
                    .received
                    .fetch_max(wal_end.0, Ordering::AcqRel);
                if reply_requested {
                    self.send_status(false).await?;
                }
                self.pending.push(StreamEvent::Keepalive { wal_end });
                Ok(())
            }
            ReplicationMessage::XLogData {
                wal_start, data, ..
            } => {
                let decoded = self
                    .decoder
                    .decode(data)
                    .map_err(|source| StreamError::Decode {
                        at: wal_start,
                        source,
                    })?;
                if let Some(event) = self.event_of(decoded)? {
                    if let StreamEvent::Commit { end_lsn, .. }
                    | StreamEvent::StreamCommit { end_lsn, .. } = &event
                    {
                        self.feedback
                            .received
                            .fetch_max(end_lsn.0, Ordering::AcqRel);
                    }
                    self.pending.push(event);
                }
                Ok(())
            }
        }
    }

    /// The relation a change refers to: as described in its stream, if it is streamed and
    /// the stream described it, else as described for the session.
    fn relation(&self, id: u32, streamed: Option<u32>) -> Result<Arc<Relation>, StreamError> {
        streamed
            .and(self.stream_xid)
            .and_then(|top| self.streamed_relations.get(&top))
            .and_then(|relations| relations.get(&id))
            .or_else(|| self.relations.get(&id))
            .cloned()
            .ok_or(StreamError::UnknownRelation(id))
    }

    fn event_of(&mut self, decoded: Streamed) -> Result<Option<StreamEvent>, StreamError> {
        let xid = decoded.xid;
        Ok(Some(match decoded.message {
            PgOutputMessage::Begin(begin) => StreamEvent::Begin {
                final_lsn: begin.final_lsn,
                xid: begin.xid,
                commit_time_us: begin.commit_time_us,
            },
            PgOutputMessage::Commit(commit) => StreamEvent::Commit {
                commit_lsn: commit.commit_lsn,
                end_lsn: commit.end_lsn,
                commit_time_us: commit.commit_time_us,
            },
            PgOutputMessage::Relation(relation) => {
                let relation = Arc::new(relation);
                match (xid, self.stream_xid) {
                    (Some(_), Some(top)) => {
                        self.streamed_relations
                            .entry(top)
                            .or_default()
                            .insert(relation.id, relation.clone());
                    }
                    _ => {
                        self.relations.insert(relation.id, relation.clone());
                    }
                }
                StreamEvent::Relation {
                    relation,
                    streamed_xid: xid,
                }
            }
            PgOutputMessage::Insert(insert) => StreamEvent::Change(RowChange {
                relation: self.relation(insert.relation_id, xid)?,
                kind: ChangeKind::Insert,
                old: None,
                new: Some(insert.new),
                streamed_xid: xid,
            }),
            PgOutputMessage::Update(update) => {
                let old = update.old.or(update.key);
                let new = match &old {
                    Some(old) => update.new.with_unchanged_from(old),
                    None => update.new,
                };
                StreamEvent::Change(RowChange {
                    relation: self.relation(update.relation_id, xid)?,
                    kind: ChangeKind::Update,
                    old,
                    new: Some(new),
                    streamed_xid: xid,
                })
            }
            PgOutputMessage::Delete(delete) => StreamEvent::Change(RowChange {
                relation: self.relation(delete.relation_id, xid)?,
                kind: ChangeKind::Delete,
                old: delete.old.or(delete.key),
                new: None,
                streamed_xid: xid,
            }),
            PgOutputMessage::Truncate(truncate) => StreamEvent::Truncate {
                relations: truncate
                    .relation_ids
                    .iter()
                    .map(|id| self.relation(*id, xid))
                    .collect::<Result<_, _>>()?,
                streamed_xid: xid,
            },
            PgOutputMessage::StreamStart(start) => {
                self.stream_xid = Some(start.xid);
                StreamEvent::StreamStart {
                    xid: start.xid,
                    first_segment: start.first_segment,
                }
            }
            PgOutputMessage::StreamStop => {
                self.stream_xid = None;
                StreamEvent::StreamStop
            }
            PgOutputMessage::StreamCommit(commit) => {
                // What the stream described is now the session's description too.
                if let Some(relations) = self.streamed_relations.remove(&commit.xid) {
                    self.relations.extend(relations);
                }
                StreamEvent::StreamCommit {
                    xid: commit.xid,
                    commit_lsn: commit.commit_lsn,
                    end_lsn: commit.end_lsn,
                    commit_time_us: commit.commit_time_us,
                }
            }
            PgOutputMessage::StreamAbort(abort) => {
                if abort.is_whole_transaction() {
                    self.streamed_relations.remove(&abort.xid);
                }
                StreamEvent::StreamAbort {
                    xid: abort.xid,
                    subxid: abort.subxid,
                }
            }
            // Type, Origin and logical messages carry nothing capture needs.
            PgOutputMessage::Type(_) | PgOutputMessage::Origin(_) | PgOutputMessage::Message(_) => {
                return Ok(None)
            }
        }))
    }

    /// Hands the pending events to the consumer, still answering the server while the
    /// consumer is busy.
    async fn deliver_pending(
        &mut self,
        ticker: &mut tokio::time::Interval,
    ) -> Result<(), StreamError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(MAX_CHUNK));
        let mut chunk = match self.sender.try_send(chunk) {
            // Closed: the consumer is gone (shutting down): nothing more to deliver.
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
            Err(mpsc::error::TrySendError::Full(chunk)) => Some(chunk),
        };
        let sender = self.sender.clone();
        loop {
            tokio::select! {
                permit = sender.reserve() => {
                    if let Ok(permit) = permit {
                        permit.send(chunk.take().expect("chunk sent once"));
                    }
                    return Ok(());
                }
                _ = ticker.tick() => self.send_status(false).await?,
                _ = self.stop.cancelled() => return Ok(()),
            }
        }
    }
}
