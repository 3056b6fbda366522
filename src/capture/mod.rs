//! Capture: committed row changes of `product_stores` and `product_set_items` become durable
//! queue entries, exactly once across crashes and restarts.
//!
//! # Exactly-once rules (tested in `tests/suite/capture.rs`, except where rule 7 says)
//! 1. A WAL transaction is *captured* when its queue rows, its batch's `capture_batches` row
//!    and the new checkpoint (its commit end LSN) are committed in one database transaction.
//!    Nothing else counts. Many small WAL transactions share one such transaction (bounded by
//!    `batch_max_transactions` and `batch_max_delay`); a large one that arrives whole is
//!    written in chunks (`spill_threshold` seeds) inside the same open transaction, so memory
//!    stays bounded and a crash mid-way leaves nothing behind.
//! 2. The slot is confirmed (flush LSN) only up to a committed checkpoint, or — when no
//!    transaction is in flight and nothing is uncommitted — up to a keepalive's WAL end
//!    (every transaction committed before it has already been delivered; a streamed
//!    transaction still open has not committed, and the server sends it again, whole, to a
//!    session that starts past its beginning).
//! 3. On start, streaming begins at max(checkpoint, slot `confirmed_flush_lsn`), and any
//!    transaction whose commit LSN is below the checkpoint (so its end is at or below it) is
//!    dropped: it was captured before the crash.
//! 4. The checkpoint never moves backwards (`GREATEST` in the upsert).
//! 5. A queue entry names a pair to recompute, never a quantity; replays and the first-run
//!    snapshot can only cause extra work, never wrong numbers.
//! 6. A *streamed* transaction (`streaming` on: protocol version 2, PostgreSQL 14+; the
//!    server streams a transaction while it runs once its decoded changes outgrow
//!    `logical_decoding_work_mem`) is staged, not enqueued: its seeds are kept per
//!    subtransaction and written to `stock_sync.stream_staging` by COPY every
//!    `spill_threshold` seeds, outside the queue and invisible to dispatch. Its Stream
//!    Commit moves them into the queue (with the seeds still in memory, its TRUNCATEs and
//!    the set expansion, decided then: rule 8) in the database transaction that writes
//!    its `capture_batches` row and the checkpoint (rule 1), and deletes them once that
//!    committed; a Stream Abort of the transaction or of a subtransaction deletes what
//!    that one staged. Staging is not part of any checkpoint: at start-up everything
//!    staged for the slot is deleted, because a transaction whose commit was not captured
//!    is streamed again from its start (rule 3 drops one whose commit was). A streamed
//!    transaction with no published change (capture's own large writes come back so) is
//!    not logged.
//! 7. Queue rows become visible no earlier than the changes they stand for: the server sends
//!    a commit once its WAL record is written, a moment before other sessions can see the
//!    transaction, so capture commits a batch only after every one of its transactions is
//!    visible to a new snapshot. Otherwise dispatch could read the old quantity and close the
//!    entry as unchanged. The check ([`crate::queue::Snapshot`]) is tested on open
//!    transactions and, for every epoch, on snapshots; the race itself is not reproduced by a
//!    test (on an idle server the window is microseconds wide; under load in the read-budget
//!    test capture was seen waiting up to about 50 ms).
//! 8. Whether a change expands to its sets (every set containing its product, recursively)
//!    is decided when its transaction commits, from the compositions as they are then — not
//!    when a streamed chunk of it arrived. A set item committed while a streamed transaction
//!    ran, making one of its already staged products a component, enqueues that set (and the
//!    sets above it) with the transaction's commit; a set item deleted meanwhile enqueued its
//!    set at its own commit, and the set's quantity no longer depends on the component. Both
//!    paths ask one rule ([`seeds::Components::expands`]) at the commit, and one SQL
//!    expansion reads `product_set_items` in the capture transaction, which sees every set
//!    item committed before the transaction (they come first in the stream). Later
//!    composition changes enqueue their own sets when they are captured.
//!
//! First run (no checkpoint for the slot): every listed pair is enqueued in the same
//! transaction that writes the first checkpoint (the slot's `confirmed_flush_lsn`).
//!
//! The set expansion runs in SQL only for seeds whose product may be in a set: capture keeps
//! the components of `product_set_items` in memory ([`seeds::Components`]), so the common
//! seed costs no probe. A streamed transaction's staged seeds are not kept in memory: each
//! chunk is judged when staged, and the commit runs the expansion over all of them when one
//! was a possible component or the known components grew since the first chunk
//! ([`seeds::StagedExpansion`]).
//!
//! Only the process holding the PostgreSQL advisory lock for the slot streams; others wait as
//! hot standbys. Transient failures reconnect with capped exponential backoff and resume from
//! the checkpoint; schema drift, a missing or lost slot and broken invariants stop capture
//! with a [`CaptureError`] that says what to do.

mod error;
pub mod seeds;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::BackoffPolicy;
use crate::db::DbConfig;
use crate::metrics::metrics;
use crate::queue::capture::{
    CaptureWriter, CapturedTransaction, FirstRun, StagedSeed, TruncatedTable,
};
use crate::queue::Reason;
use crate::replication::stream::{
    self, ReplicationStream, RowChange, StreamError, StreamEvent, StreamSettings,
};
use crate::replication::wire::{WireError, SQLSTATE_OBJECT_IN_USE};
use crate::replication::Lsn;
pub use error::{open_failure, slot_state, CaptureError, ErrorSummary, SlotState};
use seeds::{Components, SchemaError, SeedSet, StagedExpansion, WatchedTable};
use uuid::Uuid;

const SLOT_INFO_SQL: &str = r#"
SELECT plugin, active, active_pid, confirmed_flush_lsn::text, wal_status
FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()
"#;

const SERVER_VERSION_SQL: &str = "SELECT current_setting('server_version_num')::int";

/// Streaming of in-progress transactions (pgoutput protocol version 2) needs PostgreSQL 14.
const STREAMING_MIN_SERVER_VERSION: i32 = 140_000;

#[derive(Debug, Clone)]
pub struct CaptureSettings {
    pub slot: String,
    pub publication: String,
    /// At most this many WAL transactions per queue transaction.
    pub batch_max_transactions: usize,
    /// A batch is committed at most this long after its first transaction arrived.
    pub batch_max_delay: Duration,
    /// Seeds buffered before they are written (inside the open transaction), or staged (a
    /// streamed transaction).
    pub spill_threshold: usize,
    /// Ask the server to stream large in-progress transactions (protocol version 2,
    /// PostgreSQL 14+; older servers get protocol version 1 whatever this says).
    pub streaming: bool,
    /// Standby status update interval.
    pub status_interval: Duration,
    /// How often an idle keepalive position is also persisted as the checkpoint.
    pub idle_checkpoint_interval: Duration,
    /// Longest wait between reconnect attempts before jitter (which may double it).
    pub max_backoff: Duration,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        CaptureSettings {
            slot: "stock_sync".into(),
            publication: "stock_sync".into(),
            batch_max_transactions: 5000,
            batch_max_delay: Duration::from_millis(5),
            spill_threshold: 10_000,
            streaming: true,
            status_interval: Duration::from_secs(10),
            idle_checkpoint_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Health of capture for `/readyz` and `status`.
#[derive(Debug, Default)]
pub struct CaptureHealth {
    pub streaming: AtomicBool,
    pub standby: AtomicBool,
    /// Kind and server message of the last failure; never a connection string.
    pub last_error: Mutex<Option<ErrorSummary>>,
}

/// Runs capture until `shutdown` is cancelled (returns `Ok`) or a fatal error.
pub async fn run(
    db: DbConfig,
    settings: CaptureSettings,
    shutdown: CancellationToken,
    health: Arc<CaptureHealth>,
) -> Result<(), CaptureError> {
    // Reconnects start at a quarter second (a restarted server or a killed walsender is
    // usually back at once) and double up to `max_backoff` (jittered, so standbys and the
    // dispatcher do not reconnect in lockstep).
    let mut backoff = BackoffPolicy::new(Duration::from_millis(250), settings.max_backoff).start();
    loop {
        let started = Instant::now();
        let result = session(&db, &settings, &shutdown, &health).await;
        health.streaming.store(false, Ordering::Release);
        metrics().streaming.set(0);
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_fatal() => {
                *health.last_error.lock().expect("health lock") = Some(e.summary());
                return Err(e);
            }
            Err(e) => {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                if started.elapsed() > Duration::from_secs(30) || e.is_lock_conflict() {
                    backoff.reset();
                }
                let wait = backoff.next_delay();
                warn!(error = %e, retry_in = ?wait, "capture interrupted; reconnecting");
                *health.last_error.lock().expect("health lock") = Some(e.summary());
                metrics().capture_reconnects.inc();
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

struct SlotInfo {
    plugin: String,
    active_pid: Option<i32>,
    confirmed_flush: Option<Lsn>,
    wal_status: Option<String>,
}

async fn slot_info(client: &Client, slot: &str) -> Result<Option<SlotInfo>, tokio_postgres::Error> {
    let row = client.query_opt(SLOT_INFO_SQL, &[&slot]).await?;
    Ok(row.map(|r| SlotInfo {
        plugin: r.get(0),
        active_pid: r.get::<_, Option<i32>>(2).filter(|_| r.get::<_, bool>(1)),
        confirmed_flush: r.get::<_, Option<String>>(3).and_then(|t| t.parse().ok()),
        wal_status: r.get(4),
    }))
}

/// One connection's worth of capture: lock, prepare, stream until error or shutdown.
async fn session(
    db: &DbConfig,
    settings: &CaptureSettings,
    shutdown: &CancellationToken,
    health: &CaptureHealth,
) -> Result<(), CaptureError> {
    let client = db.connect().await?;
    // Leadership: the session-level advisory lock lives as long as this connection.
    let mut waiting_logged = false;
    loop {
        let locked: bool = client
            .query_one(
                crate::locks::TRY_LOCK_TEXT_SQL,
                &[&crate::locks::CAPTURE_LEADER, &settings.slot],
            )
            .await?
            .get(0);
        if locked {
            break;
        }
        health.standby.store(true, Ordering::Release);
        if !waiting_logged {
            info!(slot = %settings.slot, "another stocksync instance streams this slot; standing by");
            waiting_logged = true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    health.standby.store(false, Ordering::Release);

    let slot = match slot_info(&client, &settings.slot).await? {
        Some(slot) => slot,
        None => {
            return Err(CaptureError::SlotMissing {
                slot: settings.slot.clone(),
            })
        }
    };
    if slot.plugin != "pgoutput" {
        return Err(CaptureError::WrongPlugin {
            slot: settings.slot.clone(),
            plugin: slot.plugin,
        });
    }
    if slot.wal_status.as_deref() == Some("lost") {
        return Err(CaptureError::SlotLost {
            slot: settings.slot.clone(),
            detail: "wal_status = lost".into(),
        });
    }
    if let Some(pid) = slot.active_pid {
        // Usually the walsender of a killed predecessor that the server has not reaped yet.
        return Err(CaptureError::Stream(StreamError::Wire(WireError::Server {
            code: SQLSTATE_OBJECT_IN_USE.into(),
            message: format!(
                "replication slot {:?} is active for PID {pid}",
                settings.slot
            ),
            detail: None,
        })));
    }

    let server_version: i32 = client.query_one(SERVER_VERSION_SQL, &[]).await?.get(0);
    let streaming = settings.streaming && server_version >= STREAMING_MIN_SERVER_VERSION;
    if settings.streaming && !streaming {
        warn!(
            server_version,
            "the server cannot stream in-progress transactions (PostgreSQL 14+ can): large \
             transactions arrive at their commit"
        );
    }

    let mut writer = CaptureWriter::new(client, settings.slot.clone()).await?;
    // Rule 6: what an earlier session staged belongs to transactions whose commit it did not
    // capture; the server streams them again from their start.
    let discarded = writer.discard_all_staged().await?;
    if discarded > 0 {
        info!(
            rows = discarded,
            "discarded the staging of streamed transactions whose commit was not captured"
        );
    }
    let components = Components::new(writer.components(Components::LIMIT).await?);
    let checkpoint = match crate::queue::read_checkpoint(writer.client(), &settings.slot).await? {
        Some(lsn) => lsn,
        None => match writer.first_run().await? {
            FirstRun::Snapshot { checkpoint, .. } => checkpoint,
            FirstRun::AlreadyDone(Some(checkpoint)) => checkpoint,
            FirstRun::AlreadyDone(None) => {
                return Err(CaptureError::Invariant(
                    "checkpoint vanished during first run".into(),
                ))
            }
            FirstRun::SlotMissing => {
                return Err(CaptureError::SlotMissing {
                    slot: settings.slot.clone(),
                })
            }
        },
    };
    let start = checkpoint.max(slot.confirmed_flush.unwrap_or(Lsn::ZERO));
    let stream_settings = StreamSettings {
        slot: settings.slot.clone(),
        publication: settings.publication.clone(),
        start,
        streaming,
        status_interval: settings.status_interval,
        channel_capacity: 8192,
    };
    let stream = match stream::open(db, &stream_settings).await {
        Ok(stream) => stream,
        Err(e) => return Err(error::open_failure(e, &settings.slot, writer.client()).await),
    };
    info!(slot = %settings.slot, %checkpoint, %start, pid = stream.backend_pid, streaming, "streaming");
    health.streaming.store(true, Ordering::Release);
    *health.last_error.lock().expect("health lock") = None;
    metrics().streaming.set(1);
    metrics().checkpoint_lsn.set(checkpoint.0 as i64);

    let mut capture = Capture {
        settings,
        writer,
        checkpoint,
        watched: HashMap::new(),
        current: None,
        batch: Batch::default(),
        last_idle_persist: Instant::now() - settings.idle_checkpoint_interval,
        seeds_scratch: Vec::new(),
        streams: HashMap::new(),
        block: None,
        components,
    };
    capture.consume(stream, shutdown).await
}

/// Work received but not yet committed.
#[derive(Default)]
struct Batch {
    seeds: SeedSet,
    transactions: Vec<CapturedTransaction>,
    /// Position the checkpoint moves to when the batch commits.
    position: Lsn,
    opened_at: Option<Instant>,
    /// A spill or truncate already wrote rows in the open database transaction.
    wrote: bool,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.transactions.is_empty() && self.seeds.is_empty() && !self.wrote
    }
}

/// The WAL transaction being received.
struct Current {
    final_lsn: Lsn,
    xid: u32,
    commit_time_us: i64,
    row_changes: i32,
    /// Captured before a restart (commit LSN below the checkpoint): dropped.
    skip: bool,
}

/// A streamed transaction in progress (rule 6).
#[derive(Default)]
struct Streamed {
    /// Seeds not staged yet, one per (subtransaction, product, store-or-all): a seed must go
    /// with its subtransaction if that aborts.
    buffer: HashMap<(u32, Uuid, Option<Uuid>), Reason>,
    /// Subtransactions (and the transaction itself) with staged rows.
    staged: HashSet<u32>,
    /// Whether the staged seeds need the set expansion, decided at commit.
    expansion: StagedExpansion,
    row_changes: i32,
    /// TRUNCATEs, by subtransaction: run at commit.
    truncates: Vec<(u32, TruncatedTable)>,
    /// Relations described in this stream, `None` when unreadable: their changes are skipped
    /// and the error (kept with the subtransaction that described it) stops capture if it
    /// commits.
    watched: HashMap<u32, Option<WatchedTable>>,
    schema_errors: Vec<(u32, SchemaError)>,
}

impl Streamed {
    /// Forgets what subtransaction `subxid` did; whether it had staged rows.
    fn abort_subtransaction(&mut self, subxid: u32) -> bool {
        self.buffer.retain(|(sub, _, _), _| *sub != subxid);
        self.truncates.retain(|(sub, _)| *sub != subxid);
        self.schema_errors.retain(|(sub, _)| *sub != subxid);
        self.staged.remove(&subxid)
    }
}

struct Capture<'a> {
    settings: &'a CaptureSettings,
    writer: CaptureWriter,
    checkpoint: Lsn,
    watched: HashMap<u32, WatchedTable>,
    current: Option<Current>,
    batch: Batch,
    last_idle_persist: Instant,
    seeds_scratch: Vec<seeds::Seed>,
    /// Streamed transactions in progress, by top-level xid.
    streams: HashMap<u32, Streamed>,
    /// The transaction whose stream block is being received.
    block: Option<u32>,
    components: Components,
}

impl Capture<'_> {
    async fn consume(
        &mut self,
        mut stream: ReplicationStream,
        shutdown: &CancellationToken,
    ) -> Result<(), CaptureError> {
        loop {
            let deadline = self
                .batch
                .opened_at
                .filter(|_| self.current.is_none())
                .map(|t| t + self.settings.batch_max_delay);
            let chunk = tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    if self.current.is_none() {
                        if !self.batch.is_empty() {
                            self.commit_batch(&stream).await?;
                        }
                        // Persist an idle position already confirmed to the server.
                        let confirmed = stream.feedback.confirmed();
                        if self.batch.is_empty() && confirmed > self.checkpoint {
                            self.writer.advance_idle(confirmed).await?;
                            self.set_checkpoint(confirmed);
                        }
                    }
                    // A half-received transaction is abandoned: it is streamed again next time.
                    stream.finish().await?;
                    return Ok(());
                }
                _ = sleep_until_opt(deadline), if deadline.is_some() => {
                    self.commit_batch(&stream).await?;
                    continue;
                }
                chunk = stream.events.recv() => chunk,
            };
            let Some(chunk) = chunk else {
                // The pump ended: report its error.
                stream.pump_result().await?;
                return Err(StreamError::Ended.into());
            };
            for event in chunk {
                self.handle(event, &stream).await?;
            }
        }
    }

    async fn handle(
        &mut self,
        event: StreamEvent,
        stream: &ReplicationStream,
    ) -> Result<(), CaptureError> {
        match event {
            StreamEvent::Begin {
                final_lsn,
                xid,
                commit_time_us,
            } => {
                self.current = Some(Current {
                    final_lsn,
                    xid,
                    commit_time_us,
                    row_changes: 0,
                    skip: final_lsn < self.checkpoint,
                });
                if self.batch.opened_at.is_none() {
                    self.batch.opened_at = Some(Instant::now());
                }
            }
            StreamEvent::Relation {
                relation,
                streamed_xid: Some(subxid),
            } => {
                let stream = self.stream_of_block()?;
                let watched = match WatchedTable::from_relation(&relation) {
                    Ok(watched) => Some(watched),
                    Err(e) => {
                        stream.schema_errors.push((subxid, e));
                        None
                    }
                };
                stream.watched.insert(relation.id, watched);
            }
            StreamEvent::Relation {
                relation,
                streamed_xid: None,
            } => {
                let watched = WatchedTable::from_relation(&relation)?;
                self.watched.insert(relation.id, watched);
            }
            StreamEvent::Change(change) if change.streamed_xid.is_some() => {
                self.streamed_change(change).await?;
            }
            StreamEvent::Change(change) => {
                let current = self.current.as_mut().ok_or_else(|| {
                    CaptureError::Invariant("row change outside a transaction".into())
                })?;
                if current.skip {
                    return Ok(());
                }
                current.row_changes += 1;
                let commit_lsn = current.final_lsn;
                let table = match self.watched.get(&change.relation.id) {
                    Some(table) => table,
                    None => {
                        let table = WatchedTable::from_relation(&change.relation)?;
                        self.watched.entry(change.relation.id).or_insert(table)
                    }
                };
                change_seeds(
                    table,
                    &change,
                    commit_lsn,
                    &mut self.seeds_scratch,
                    &mut self.components,
                );
                for seed in self.seeds_scratch.drain(..) {
                    self.batch.seeds.add(seed);
                }
                if self.batch.seeds.len() >= self.settings.spill_threshold {
                    let started = Instant::now();
                    self.writer
                        .write_seeds(&self.batch.seeds.drain_columns(&self.components))
                        .await?;
                    debug!(
                        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                        "seeds spilled"
                    );
                    self.batch.wrote = true;
                }
            }
            StreamEvent::Truncate {
                relations,
                streamed_xid: Some(subxid),
            } => {
                let stream = self.stream_of_block()?;
                stream.row_changes += 1;
                for relation in relations {
                    match WatchedTable::from_relation(&relation) {
                        Ok(table) => stream.truncates.push((subxid, truncated(&table))),
                        Err(e) => stream.schema_errors.push((subxid, e)),
                    }
                }
            }
            StreamEvent::Truncate {
                relations,
                streamed_xid: None,
            } => {
                let Some(current) = self.current.as_mut().filter(|c| !c.skip) else {
                    return Ok(());
                };
                current.row_changes += 1;
                let lsn = current.final_lsn;
                self.writer
                    .write_seeds(&self.batch.seeds.drain_columns(&self.components))
                    .await?;
                for relation in relations {
                    let table = truncated(&WatchedTable::from_relation(&relation)?);
                    let n = self.writer.truncate(table, lsn).await?;
                    info!(table = %relation.qualified_name(), enqueued = n, "TRUNCATE captured");
                }
                self.batch.wrote = true;
            }
            StreamEvent::StreamStart { xid, first_segment } => {
                self.block = Some(xid);
                if first_segment {
                    if let Some(earlier) = self.streams.remove(&xid) {
                        // Streamed again from its start (not expected within one session).
                        if !earlier.staged.is_empty() {
                            self.writer.discard_staged(xid, None).await?;
                        }
                    }
                }
                self.streams.entry(xid).or_default();
            }
            StreamEvent::StreamStop => self.block = None,
            StreamEvent::StreamAbort { xid, subxid } => {
                if subxid == xid {
                    let staged = self
                        .streams
                        .remove(&xid)
                        .is_some_and(|s| !s.staged.is_empty());
                    if staged {
                        self.writer.discard_staged(xid, None).await?;
                    }
                    debug!(xid, "streamed transaction aborted");
                } else if let Some(stream) = self.streams.get_mut(&xid) {
                    if stream.abort_subtransaction(subxid) {
                        self.writer.discard_staged(xid, Some(subxid)).await?;
                    }
                }
            }
            StreamEvent::StreamCommit {
                xid,
                commit_lsn,
                end_lsn,
                commit_time_us,
            } => {
                self.stream_commit(xid, commit_lsn, end_lsn, commit_time_us, stream)
                    .await?
            }
            StreamEvent::Commit {
                commit_lsn,
                end_lsn,
                commit_time_us,
            } => {
                let current = self
                    .current
                    .take()
                    .ok_or_else(|| CaptureError::Invariant("COMMIT without BEGIN".into()))?;
                if current.final_lsn != commit_lsn {
                    return Err(CaptureError::Invariant(format!(
                        "BEGIN announced commit {} but COMMIT says {commit_lsn}",
                        current.final_lsn
                    )));
                }
                if current.skip {
                    if end_lsn > self.checkpoint {
                        return Err(CaptureError::Invariant(format!(
                            "transaction {commit_lsn} skipped as captured but ends after the checkpoint {}",
                            self.checkpoint
                        )));
                    }
                    debug!(%commit_lsn, "already captured before restart; dropped");
                } else if current.row_changes == 0 {
                    // PostgreSQL 14 and older send Begin/Commit for transactions that changed
                    // no published table (capture's own batch commits, the heartbeat): there
                    // is nothing to capture, and a batch for it would come back as another
                    // empty transaction, forever. Like a keepalive (rule 2), its end is safe
                    // to confirm when nothing is in flight; otherwise the batch covers it.
                    if self.batch.is_empty() {
                        stream.feedback.confirm(end_lsn.max(self.checkpoint));
                    } else {
                        self.batch.position = self.batch.position.max(end_lsn);
                    }
                    return Ok(());
                } else {
                    self.batch.transactions.push(CapturedTransaction {
                        commit_lsn,
                        end_lsn,
                        xid: current.xid,
                        commit_time: pg_time(commit_time_us.max(current.commit_time_us)),
                        row_changes: current.row_changes,
                    });
                }
                self.batch.position = self.batch.position.max(end_lsn);
                if self.batch.transactions.len() >= self.settings.batch_max_transactions {
                    self.commit_batch(stream).await?;
                }
            }
            StreamEvent::Keepalive { wal_end } => {
                if self.current.is_some() {
                    return Ok(());
                }
                if self.batch.is_empty() {
                    // Rule 2: nothing in flight, so the keepalive position is safe to confirm.
                    let position = wal_end.max(self.checkpoint);
                    stream.feedback.confirm(position);
                    if position > self.checkpoint
                        && self.last_idle_persist.elapsed()
                            >= self.settings.idle_checkpoint_interval
                    {
                        self.writer.advance_idle(position).await?;
                        self.set_checkpoint(position);
                        self.last_idle_persist = Instant::now();
                    }
                    metrics().replication_lag_seconds.set(0.0);
                } else {
                    self.batch.position = self.batch.position.max(wal_end);
                    self.commit_batch(stream).await?;
                }
            }
        }
        Ok(())
    }

    /// The stream whose block is being received.
    fn stream_of_block(&mut self) -> Result<&mut Streamed, CaptureError> {
        let xid = self.block.ok_or_else(|| {
            CaptureError::Invariant("streamed message outside a stream block".into())
        })?;
        Ok(self.streams.entry(xid).or_default())
    }

    /// A change of a streamed transaction: its seeds are buffered with their subtransaction,
    /// and staged every `spill_threshold` seeds.
    async fn streamed_change(&mut self, change: RowChange) -> Result<(), CaptureError> {
        let subxid = change.streamed_xid.unwrap_or_default();
        let top = self.block.ok_or_else(|| {
            CaptureError::Invariant("streamed change outside a stream block".into())
        })?;
        let stream = self.streams.entry(top).or_default();
        stream.row_changes += 1;
        let id = change.relation.id;
        let table = match stream.watched.get(&id) {
            Some(Some(table)) => table,
            // Described unreadable in this stream: the error waits for the commit.
            Some(None) => return Ok(()),
            None => match self.watched.get(&id) {
                Some(table) => table,
                None => {
                    let table = WatchedTable::from_relation(&change.relation)?;
                    self.watched.entry(id).or_insert(table)
                }
            },
        };
        // The commit LSN is not known yet; the move gives the seeds theirs.
        change_seeds(
            table,
            &change,
            Lsn::ZERO,
            &mut self.seeds_scratch,
            &mut self.components,
        );
        for seed in self.seeds_scratch.drain(..) {
            stream
                .buffer
                .entry((subxid, seed.product_id, seed.store_id))
                .and_modify(|reason| {
                    if seed.reason.priority() > reason.priority() {
                        *reason = seed.reason;
                    }
                })
                .or_insert(seed.reason);
        }
        if stream.buffer.len() >= self.settings.spill_threshold {
            let mut stream = self.streams.remove(&top).unwrap_or_default();
            let staged = self.stage_buffer(top, &mut stream).await;
            self.streams.insert(top, stream);
            staged?;
        }
        Ok(())
    }

    /// Writes a streamed transaction's buffered seeds to the staging table.
    async fn stage_buffer(&mut self, xid: u32, stream: &mut Streamed) -> Result<(), CaptureError> {
        let started = Instant::now();
        let rows: Vec<StagedSeed> = stream
            .buffer
            .drain()
            .map(|((subxid, product_id, store_id), reason)| StagedSeed {
                subxid,
                product_id,
                store_id,
                reason,
            })
            .collect();
        for row in &rows {
            stream.staged.insert(row.subxid);
            stream
                .expansion
                .staged(&self.components, &row.product_id, row.store_id);
        }
        self.writer.stage(xid, &rows).await?;
        debug!(
            xid,
            rows = rows.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "seeds of a streamed transaction staged"
        );
        Ok(())
    }

    /// A streamed transaction committed: its staged seeds move into the queue, its buffered
    /// ones join the batch, and the batch commits with its log row and checkpoint (rule 6).
    async fn stream_commit(
        &mut self,
        xid: u32,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time_us: i64,
        stream: &ReplicationStream,
    ) -> Result<(), CaptureError> {
        let mut streamed = self.streams.remove(&xid).unwrap_or_default();
        if commit_lsn < self.checkpoint {
            if end_lsn > self.checkpoint {
                return Err(CaptureError::Invariant(format!(
                    "streamed transaction {commit_lsn} skipped as captured but ends after the checkpoint {}",
                    self.checkpoint
                )));
            }
            if !streamed.staged.is_empty() {
                self.writer.discard_staged(xid, None).await?;
            }
            debug!(%commit_lsn, "streamed transaction already captured before restart; dropped");
            self.batch.position = self.batch.position.max(end_lsn);
            return Ok(());
        }
        if let Some((_, e)) = std::mem::take(&mut streamed.schema_errors)
            .into_iter()
            .next()
        {
            return Err(e.into());
        }
        if streamed.row_changes == 0 {
            // Nothing published in it (capture's own large transactions come back like this:
            // the server streams whatever outgrows its memory, and pgoutput filters later).
            self.batch.position = self.batch.position.max(end_lsn);
            return Ok(());
        }
        // Its relations are the session's from now on, as the server assumes.
        self.watched.extend(
            std::mem::take(&mut streamed.watched)
                .into_iter()
                .filter_map(|(id, table)| Some((id, table?))),
        );
        let started = Instant::now();
        if !streamed.staged.is_empty() && !streamed.buffer.is_empty() {
            // All of a staged transaction goes through the move (one statement, no
            // speculative insertion: see `move_staged`).
            self.stage_buffer(xid, &mut streamed).await?;
        }
        if !streamed.staged.is_empty() {
            // Rule 8: from the components as they are now, not as they were at each chunk.
            let expand_sets = streamed.expansion.at_commit(&self.components);
            let n = self
                .writer
                .move_staged(xid, commit_lsn, expand_sets)
                .await?;
            self.batch.wrote = true;
            debug!(
                xid,
                enqueued = n,
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                "staged seeds moved into the queue"
            );
        }
        for (_, table) in streamed.truncates {
            let n = self.writer.truncate(table, commit_lsn).await?;
            info!(
                ?table,
                enqueued = n,
                "TRUNCATE captured (streamed transaction)"
            );
            self.batch.wrote = true;
        }
        for ((_, product_id, store_id), reason) in streamed.buffer {
            self.batch.seeds.add(seeds::Seed {
                product_id,
                store_id,
                reason,
                commit_lsn,
            });
        }
        self.batch.transactions.push(CapturedTransaction {
            commit_lsn,
            end_lsn,
            xid,
            commit_time: pg_time(commit_time_us),
            row_changes: streamed.row_changes,
        });
        self.batch.position = self.batch.position.max(end_lsn);
        // A streamed transaction is large: nothing is gained by waiting for more.
        self.commit_batch(stream).await?;
        if !streamed.staged.is_empty() {
            self.writer.discard_staged(xid, None).await?;
        }
        Ok(())
    }

    async fn commit_batch(&mut self, stream: &ReplicationStream) -> Result<(), CaptureError> {
        if self.batch.is_empty() {
            self.batch.opened_at = None;
            return Ok(());
        }
        self.batch.position = self.batch.position.max(self.checkpoint);
        let started = Instant::now();
        let seeds = self.batch.seeds.len();
        let seed_columns = self.batch.seeds.drain_columns(&self.components);
        self.writer
            .commit(&seed_columns, &self.batch.transactions, self.batch.position)
            .await?;
        debug!(
            transactions = self.batch.transactions.len(),
            seeds,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            position = %self.batch.position,
            "capture batch committed"
        );
        let m = metrics();
        m.capture_batches.inc();
        m.transactions_captured
            .inc_by(self.batch.transactions.len() as u64);
        if let Some(last) = self.batch.transactions.last() {
            let lag = (Utc::now() - last.commit_time).num_milliseconds().max(0) as f64 / 1000.0;
            m.replication_lag_seconds.set(lag);
        }
        let position = self.batch.position;
        self.set_checkpoint(position);
        stream.feedback.confirm(position);
        self.batch = Batch {
            position,
            ..Batch::default()
        };
        Ok(())
    }

    fn set_checkpoint(&mut self, position: Lsn) {
        self.checkpoint = self.checkpoint.max(position);
        metrics().checkpoint_lsn.set(self.checkpoint.0 as i64);
    }
}

/// The seeds of one row change, into `out` (emptied first); a row that cannot be read is
/// reported and skipped.
fn change_seeds(
    table: &WatchedTable,
    change: &RowChange,
    commit_lsn: Lsn,
    out: &mut Vec<seeds::Seed>,
    components: &mut Components,
) {
    metrics()
        .changes_captured
        .with_label_values(&[table.table_name()])
        .inc();
    out.clear();
    if let Err(bad) = seeds::seeds_for_change(table, change, commit_lsn, out, components) {
        warn!(error = %bad, "skipping a row stocksync cannot read");
        metrics().bad_rows.with_label_values(&[bad.table]).inc();
    }
}

/// Which table a TRUNCATE of a watched relation empties.
fn truncated(table: &WatchedTable) -> TruncatedTable {
    match table {
        WatchedTable::ProductStores { .. } => TruncatedTable::ProductStores,
        WatchedTable::ProductSetItems { .. } => TruncatedTable::ProductSetItems,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// PostgreSQL timestamps count microseconds from 2000-01-01 UTC.
fn pg_time(micros: i64) -> DateTime<Utc> {
    let epoch = Utc
        .with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
        .single()
        .expect("valid epoch");
    epoch + chrono::Duration::microseconds(micros)
}
