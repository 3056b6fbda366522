//! One audit of one store, the steps of [`crate::reconcile`]'s module doc: pages, compare,
//! confirm, repair, then the listed products no page showed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use super::catalogue::{self, Listed, Lookup};
use super::compare::{judge, Examples, Finding, Kind, Tally, Verdict};
use super::held::{self, Decision, Sighting};
use super::journal::{self, MAX_STORED_PER_KIND};
use super::scan::Reader;
use super::targets::Target;
use super::{ReconcileError, ReconcileSettings};
use crate::marketplace::read::{
    key_groups, match_key, Cursor, Listing, ReadQuery, MAX_KEYS_PER_READ, TRENDYOL_PAGE_SIZE,
};
use crate::marketplace::{MarketplaceClient, Provider};
use crate::queue::{self, Reason};
use crate::stores::Limiter;

/// The server's WAL position now: capture must pass it before a difference is judged.
const WAL_POSITION_SQL: &str = "SELECT pg_current_wal_lsn()::text";
/// Whether some process streams the slot (otherwise nothing more will be captured).
const SLOT_ACTIVE_SQL: &str =
    "SELECT COALESCE((SELECT active FROM pg_replication_slots WHERE slot_name = $1), false)";
/// How often the checkpoint is looked at while waiting for capture.
const CAPTURE_POLL: Duration = Duration::from_millis(100);
/// An empty committed transaction: its commit record is WAL the walsender decodes (and skips),
/// after which it sends a keepalive capture persists as its checkpoint. On an idle database
/// nothing else would move the checkpoint past the position waited for (capture persists an
/// idle position at most once a second, and the walsender pings only when it has sent WAL
/// the client has not confirmed). No data changes; no privilege is needed.
const NUDGE_SQL: &str = "SELECT txid_current()";
/// How often a wait for capture nudges it.
const NUDGE_EVERY: Duration = Duration::from_secs(1);

/// Where an audit is (kept by a periodic audit's journal, so it must stay readable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Position {
    /// Paging the marketplace's catalogue: the next page.
    Pages { cursor: Cursor },
    /// Reading by key the listed products no page showed, after this product (product
    /// order).
    NotSeen { after: Option<Uuid> },
}

impl Position {
    pub fn start(provider: Provider) -> Position {
        Position::Pages {
            cursor: Cursor::first(provider),
        }
    }
}

/// What an audit carries from page to page, and a periodic audit's journal across restarts.
#[derive(Debug, Clone)]
pub struct Memory {
    pub position: Position,
    pub tally: Tally,
    pub pages: u64,
    pub reads: u64,
    /// Keys read so far, in the marketplace's spelling.
    pub seen: HashSet<String>,
    pub examples: Examples,
}

impl Memory {
    pub fn new(provider: Provider) -> Memory {
        Memory {
            position: Position::start(provider),
            tally: Tally::default(),
            pages: 0,
            reads: 0,
            seen: HashSet::new(),
            examples: Examples::default(),
        }
    }
}

/// Where an audit is, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub pages: u64,
    /// As the marketplace counts them (when it says).
    pub total_pages: Option<u64>,
    /// True once the pages are done and the listings no page showed are read by key.
    pub not_seen_phase: bool,
    pub tally: Tally,
}

/// What an audit found.
#[derive(Debug, Clone)]
pub struct StoreReport {
    pub store_id: Uuid,
    pub name: String,
    pub provider: Provider,
    pub tally: Tally,
    pub examples: Vec<Finding>,
    pub pages: u64,
    pub reads: u64,
    /// Listings whose key several listed products share (not compared).
    pub ambiguous: u64,
}

/// A listed product to confirm: its key as the database spells it (for the report), the key
/// to read it back by, and what a page showed.
struct Candidate {
    product: Uuid,
    key: String,
    /// The key as the marketplace spells it: the listing's own key when a page showed it,
    /// else the database's key as the marketplace keeps it (Trendyol removes spaces inside
    /// barcodes, so a filter by the database's spelling would find nothing).
    read_key: String,
    shown: Option<Listing>,
}

impl Candidate {
    fn shown(product: Uuid, key: &str, listing: Listing) -> Candidate {
        Candidate {
            product,
            key: key.to_string(),
            read_key: listing.key.clone(),
            shown: Some(listing),
        }
    }

    fn not_seen(provider: Provider, product: Uuid, key: String) -> Candidate {
        let read_key = match provider {
            Provider::Trendyol => match_key(provider, &key),
            // Case does not matter to its filter; the sku as the database spells it.
            Provider::Hepsiburada => key.trim().to_string(),
        };
        Candidate {
            product,
            key,
            read_key,
            shown: None,
        }
    }
}

/// What one step (a page, or a batch of listings no page showed) commits together.
#[derive(Default)]
struct Step {
    seen: Vec<String>,
    kept: Vec<Finding>,
    repairs: Vec<Uuid>,
    /// First sightings of lower differences to keep ([`held`]).
    remember: Vec<(Uuid, Sighting)>,
    /// Pairs whose kept sighting goes (they agree, moved, or are repaired).
    forget: Vec<Uuid>,
    /// Hepsiburada listings the page showed fulfilled by Hepsiburada, and not: dispatch
    /// never pushes the former ([`queue::mark_fulfilled_by_marketplace`]).
    fulfilled: Vec<Uuid>,
    not_fulfilled: Vec<Uuid>,
}

/// One audit of one store.
pub struct Audit<'a> {
    pub settings: &'a ReconcileSettings,
    pub client: &'a MarketplaceClient,
    pub target: &'a Target,
    /// Enqueue repairs (else nothing but the limiter's records of the reads is written, and
    /// only a journal's own rows).
    pub fix: bool,
    pub stop: &'a CancellationToken,
}

/// The store's first sightings of lower differences, as the audit goes ([`held`]); written
/// only when `write` (an audit that repairs or keeps a journal).
struct HeldState {
    sightings: HashMap<Uuid, Sighting>,
    write: bool,
}

impl Audit<'_> {
    /// Runs the audit from `memory` (new, or resumed from the journal of audit `journal`)
    /// to its end, calling `progress` after every step.
    pub async fn run(
        &self,
        db: &mut Client,
        mut memory: Memory,
        journal: Option<i64>,
        progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<StoreReport, ReconcileError> {
        let t = self.target;
        let started = Instant::now();
        let listed = Listed::load(&*db, t.id, t.provider).await?;
        let limiter = Limiter::new(&self.settings.limits, t.id);
        let share = self.settings.share(t.provider);
        let mut reader = Reader::new(
            self.client,
            &t.creds,
            limiter,
            share,
            self.stop,
            t.id.to_string(),
        );
        let mut held = HeldState {
            sightings: held::load(&*db, t.id).await?,
            write: self.fix || journal.is_some(),
        };
        let reads_before = memory.reads;
        let mut listing_ids: HashSet<String> = HashSet::new();
        let mut ambiguous = 0;
        let mut total_pages = None;
        let mut not_seen: Option<VecDeque<(Uuid, String)>> = None;
        loop {
            let mut step = Step::default();
            match memory.position.clone() {
                Position::Pages { cursor } => {
                    let size = match t.provider {
                        Provider::Trendyol => TRENDYOL_PAGE_SIZE,
                        Provider::Hepsiburada => self.settings.hepsiburada_page_limit,
                    };
                    let page = reader
                        .read(
                            db,
                            &ReadQuery::Page {
                                cursor: &cursor,
                                size,
                            },
                        )
                        .await?;
                    memory.pages += 1;
                    total_pages = page.total_pages.or(total_pages);
                    for bad in &page.bad_rows {
                        warn!(store = %t.id, row = %bad, "a listing the marketplace returned cannot be read; it is skipped");
                        let finding = Finding {
                            kind: Kind::BadRow,
                            product_id: None,
                            key: bad.field.clone(),
                            marketplace: None,
                            database: None,
                            detail: Some(bad.problem.to_string()),
                            repaired: false,
                            held_until: None,
                        };
                        found(&mut memory, &mut step, finding);
                    }
                    let mut compared = Vec::new();
                    for listing in page.listings {
                        // Pages may repeat a listing (Hepsiburada's order is undocumented).
                        if let Some(id) = &listing.listing_id {
                            if !listing_ids.insert(id.clone()) {
                                continue;
                            }
                        }
                        let key = match_key(t.provider, &listing.key);
                        if !memory.seen.insert(key.clone()) {
                            continue;
                        }
                        step.seen.push(key);
                        match listed.find(&listing.key) {
                            Lookup::Product(product, key) => {
                                compared.push(Candidate::shown(product, key, listing))
                            }
                            Lookup::Ambiguous => ambiguous += 1,
                            Lookup::Unknown => {
                                let finding = Finding {
                                    kind: Kind::UnknownToDatabase,
                                    product_id: None,
                                    marketplace: listing.quantity,
                                    key: listing.key,
                                    database: None,
                                    detail: None,
                                    repaired: false,
                                    held_until: None,
                                };
                                found(&mut memory, &mut step, finding);
                            }
                        }
                    }
                    let doubtful = self
                        .first_look(db, &mut memory, &mut step, &mut held, compared)
                        .await?;
                    self.confirm(db, &mut reader, doubtful, &mut memory, &mut step, &mut held)
                        .await?;
                    memory.position = match page.next {
                        Some(cursor) => Position::Pages { cursor },
                        None => Position::NotSeen { after: None },
                    };
                }
                Position::NotSeen { after } => {
                    let queue = not_seen.get_or_insert_with(|| {
                        listed
                            .not_seen(&memory.seen)
                            .into_iter()
                            .filter(|(p, _)| after.is_none_or(|a| *p > a))
                            .collect()
                    });
                    if queue.is_empty() {
                        break;
                    }
                    let batch: Vec<Candidate> = queue
                        .drain(..queue.len().min(MAX_KEYS_PER_READ))
                        .map(|(product, key)| Candidate::not_seen(t.provider, product, key))
                        .collect();
                    let last = batch.last().map(|c| c.product);
                    self.confirm(db, &mut reader, batch, &mut memory, &mut step, &mut held)
                        .await?;
                    memory.position = Position::NotSeen { after: last };
                }
            }
            memory.reads = reads_before + reader.reads;
            self.commit(db, journal, &mut memory, step).await?;
            progress(&Progress {
                pages: memory.pages,
                total_pages,
                not_seen_phase: matches!(memory.position, Position::NotSeen { .. }),
                tally: memory.tally,
            });
        }
        if ambiguous > 0 {
            warn!(store = %t.id, listings = ambiguous, "listings whose key several listed products of the store share were not compared");
        }
        let tally = memory.tally;
        info!(
            store = %t.id, pages = memory.pages, reads = memory.reads,
            checked = tally.checked(), agree = tally.agree, drifted = tally.drifted,
            repaired = tally.repaired, held_back = tally.held_back, missing = tally.missing_at_marketplace,
            unknown_to_database = tally.unknown_to_database, not_repairable = tally.not_repairable,
            unknown = tally.unknown, in_motion = tally.in_motion, bad_rows = tally.bad_rows,
            seconds = started.elapsed().as_secs_f64(),
            "reconciliation audit done"
        );
        Ok(StoreReport {
            store_id: t.id,
            name: t.name.clone(),
            provider: t.provider,
            tally,
            examples: memory.examples.into_vec(),
            pages: memory.pages,
            reads: memory.reads,
            ambiguous,
        })
    }

    /// A page's listings against the truth: agreement and unknown quantities are settled here;
    /// the rest is returned for confirmation.
    async fn first_look(
        &self,
        db: &Client,
        memory: &mut Memory,
        step: &mut Step,
        held: &mut HeldState,
        compared: Vec<Candidate>,
    ) -> Result<Vec<Candidate>, ReconcileError> {
        let t = self.target;
        let products: Vec<Uuid> = compared.iter().map(|c| c.product).collect();
        let rules = self.settings.rules_for(t.id);
        let truth = catalogue::truth(db, t.id, &products, &rules).await?;
        let mut doubtful = Vec::new();
        for c in compared {
            let want = truth.get(&c.product).copied().unwrap_or(0);
            let Some(shown) = &c.shown else { continue };
            if held.write && t.provider == Provider::Hepsiburada {
                match shown.flags.fulfilled_by_hb {
                    true => step.fulfilled.push(c.product),
                    false => step.not_fulfilled.push(c.product),
                }
            }
            match judge(shown, want) {
                Verdict::Agree => {
                    memory.tally.add(Kind::Agree);
                    held.forget(step, c.product);
                }
                Verdict::Unknown => {
                    let finding = Finding {
                        kind: Kind::Unknown,
                        product_id: Some(c.product),
                        key: c.key,
                        marketplace: None,
                        database: Some(want),
                        detail: None,
                        repaired: false,
                        held_until: None,
                    };
                    found(memory, step, finding);
                }
                Verdict::Drifted | Verdict::NotRepairable(_) => doubtful.push(c),
            }
        }
        Ok(doubtful)
    }

    /// Before anything is reported or repaired: the listings are read again by key, the truth
    /// is computed after that read, capture is waited for until it has passed the truth's
    /// WAL position (so every change the truth saw is in the queue), and pairs in motion are
    /// set apart. Listings absent on the re-read are missing at the marketplace. A listing
    /// shown lower than the truth is held back until the difference has persisted
    /// ([`held`]).
    #[allow(clippy::too_many_arguments)]
    async fn confirm(
        &self,
        db: &Client,
        reader: &mut Reader<'_>,
        candidates: Vec<Candidate>,
        memory: &mut Memory,
        step: &mut Step,
        held: &mut HeldState,
    ) -> Result<(), ReconcileError> {
        if candidates.is_empty() {
            return Ok(());
        }
        let t = self.target;
        // Read back by the marketplace's spelling of each key.
        let keys: Vec<String> = candidates.iter().map(|c| c.read_key.clone()).collect();
        let (groups, unreadable) = key_groups(t.provider, &keys);
        let read_at = Instant::now();
        let read_started = held::clock(db).await?;
        let mut fresh: HashMap<String, Listing> = HashMap::new();
        for group in groups {
            let page = reader.read(db, &ReadQuery::Keys(&group)).await?;
            for listing in page.listings {
                fresh
                    .entry(match_key(t.provider, &listing.key))
                    .or_insert(listing);
            }
        }
        let read_done = held::clock(db).await?;
        let products: Vec<Uuid> = candidates.iter().map(|c| c.product).collect();
        let rules = self.settings.rules_for(t.id);
        let truth = catalogue::truth(db, t.id, &products, &rules).await?;
        let settled = self.capture_settled(db).await?;
        let accepted = queue::last_accepted(db, t.id, &products).await?;
        // The motion window reaches back to the re-read, not only from now: a push accepted,
        // or an entry closed, while capture was waited for is newer than what the read showed
        // (and than the truth).
        let window = self.settings.motion_window + read_at.elapsed();
        let moving = queue::in_motion(db, t.id, &products, window).await?;
        for c in candidates {
            let want = truth.get(&c.product).copied().unwrap_or(0);
            let shown = match fresh.remove(&match_key(t.provider, &c.read_key)) {
                Some(listing) => Some(listing),
                // Keys the marketplace cannot filter by keep what the page showed.
                None if unreadable.contains(&c.read_key) => c.shown,
                None => None,
            };
            let (kind, detail) = match &shown {
                None => (Kind::MissingAtMarketplace, None),
                Some(listing) => match judge(listing, want) {
                    Verdict::Agree => (Kind::Agree, None),
                    Verdict::Unknown => (Kind::Unknown, None),
                    Verdict::Drifted => (Kind::Drifted, None),
                    Verdict::NotRepairable(why) => (Kind::NotRepairable, Some(why)),
                },
            };
            let disputed = matches!(
                kind,
                Kind::Drifted | Kind::NotRepairable | Kind::MissingAtMarketplace
            );
            let kind = if disputed && (!settled || moving.contains(&c.product)) {
                Kind::InMotion
            } else {
                kind
            };
            // The marketplace shows less: an order it applied may not be imported yet.
            let mut held_until = None;
            let kind = match &shown {
                Some(listing)
                    if kind == Kind::Drifted
                        && listing.quantity.is_some_and(|q| q < i64::from(want))
                        && !held::unchanged_since_push(listing, accepted.get(&c.product)) =>
                {
                    let shown_q = listing.quantity.unwrap_or_default();
                    match held::decide(
                        self.settings.confirm_after,
                        held.sightings.get(&c.product),
                        shown_q,
                        want,
                        read_started,
                        read_done,
                    ) {
                        Decision::Repair => Kind::Drifted,
                        Decision::Hold { until, remember } => {
                            if let Some(first_seen) = remember {
                                held.remember(
                                    step,
                                    c.product,
                                    Sighting {
                                        shown: shown_q,
                                        truth: want,
                                        first_seen,
                                    },
                                );
                            }
                            held_until = Some(until);
                            Kind::HeldBack
                        }
                    }
                }
                _ => kind,
            };
            if kind != Kind::HeldBack {
                held.forget(step, c.product);
            }
            if matches!(kind, Kind::Agree | Kind::InMotion) {
                memory.tally.add(kind);
                continue;
            }
            let repair = self.fix && kind == Kind::Drifted;
            if repair {
                step.repairs.push(c.product);
            }
            let finding = Finding {
                kind,
                product_id: Some(c.product),
                key: c.key,
                marketplace: shown.and_then(|l| l.quantity),
                database: Some(want),
                detail,
                repaired: repair,
                held_until,
            };
            found(memory, step, finding);
        }
        Ok(())
    }

    /// Waits until capture's checkpoint passes the server's WAL position now (bounded by
    /// `capture_wait`). True when it did, or when no process streams the slot (nothing more
    /// will be captured: the queue is all there is); false when capture is behind.
    async fn capture_settled(&self, db: &Client) -> Result<bool, ReconcileError> {
        let slot = &self.settings.slot;
        let target: String = db.query_one(WAL_POSITION_SQL, &[]).await?.get(0);
        let deadline = Instant::now() + self.settings.capture_wait;
        let mut nudged: Option<Instant> = None;
        loop {
            if queue::checkpoint_reached(db, slot, &target).await? {
                return Ok(true);
            }
            if !db
                .query_one(SLOT_ACTIVE_SQL, &[slot])
                .await?
                .get::<_, bool>(0)
            {
                return Ok(true);
            }
            if nudged.is_none_or(|at| at.elapsed() >= NUDGE_EVERY) {
                db.query_one(NUDGE_SQL, &[]).await?;
                nudged = Some(Instant::now());
            }
            if Instant::now() >= deadline {
                warn!(store = %self.target.id, wait = ?self.settings.capture_wait,
                    "capture has not caught up: differences are counted as in motion, not drift");
                return Ok(false);
            }
            tokio::select! {
                _ = self.stop.cancelled() => return Err(ReconcileError::Stopped),
                _ = tokio::time::sleep(CAPTURE_POLL) => {}
            }
        }
    }

    /// Repairs (the last accepted quantity forgotten, so the only-changed rule cannot skip
    /// them, and a `RECONCILE` entry) and the journal's record of the step, in one
    /// transaction.
    async fn commit(
        &self,
        db: &mut Client,
        journal: Option<i64>,
        memory: &mut Memory,
        step: Step,
    ) -> Result<(), ReconcileError> {
        if journal.is_none()
            && step.repairs.is_empty()
            && step.remember.is_empty()
            && step.forget.is_empty()
            && step.fulfilled.is_empty()
            && step.not_fulfilled.is_empty()
        {
            return Ok(());
        }
        let store = self.target.id;
        memory.tally.repaired += step.repairs.len() as u64;
        let tx = db.transaction().await?;
        if !step.repairs.is_empty() {
            queue::forget_told(&tx, store, &step.repairs).await?;
            queue::enqueue_pairs(&tx, store, &step.repairs, Reason::Reconcile).await?;
        }
        held::forget(&tx, store, &step.forget).await?;
        held::remember(&tx, store, &step.remember).await?;
        queue::mark_fulfilled_by_marketplace(&tx, store, &step.fulfilled, true).await?;
        queue::mark_fulfilled_by_marketplace(&tx, store, &step.not_fulfilled, false).await?;
        if let Some(run) = journal {
            journal::save(&tx, run, store, memory, &step.seen, &step.kept).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

impl HeldState {
    /// Keeps a first sighting (when writing).
    fn remember(&mut self, step: &mut Step, product: Uuid, sighting: Sighting) {
        if self.write {
            self.sightings.insert(product, sighting);
            step.remember.push((product, sighting));
        }
    }

    /// Forgets a kept sighting, if there is one.
    fn forget(&mut self, step: &mut Step, product: Uuid) {
        if self.write && self.sightings.remove(&product).is_some() {
            step.forget.push(product);
        }
    }
}

/// Counts a finding, keeps it for the journal (up to [`MAX_STORED_PER_KIND`]) and as an
/// example.
fn found(memory: &mut Memory, step: &mut Step, finding: Finding) {
    if memory.tally.count(finding.kind) < MAX_STORED_PER_KIND {
        step.kept.push(finding.clone());
    }
    memory.tally.add(finding.kind);
    memory.examples.offer(&finding);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_stored_as_tagged_json() {
        let p = Position::start(Provider::Hepsiburada);
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(
            text,
            r#"{"phase":"pages","cursor":{"kind":"hepsiburada_offset","offset":0}}"#
        );
        assert_eq!(serde_json::from_str::<Position>(&text).unwrap(), p);
        let n = Position::NotSeen { after: None };
        assert_eq!(
            serde_json::from_str::<Position>(&serde_json::to_string(&n).unwrap()).unwrap(),
            n
        );
    }
}
