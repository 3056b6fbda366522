//! Pure interpretation of row changes: which (product, store) pairs a change makes stale, and
//! why. No IO; the expansion to parent sets happens in SQL (see `queue`), for the seeds whose
//! product [`Components`] says may be in a set.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::queue::capture::SeedColumns;
use crate::queue::Reason;
use crate::replication::pgoutput::{ColumnValue, Relation, TupleData};
use crate::replication::stream::{ChangeKind, RowChange};
use crate::replication::Lsn;

/// Reason of a `product_stores` change from old and new (sellable, committed) values.
/// `None` when sellable quantity did not change.
pub fn infer_reason(old: (i64, i64), new: (i64, i64)) -> Option<Reason> {
    let ((old_sellable, old_committed), (new_sellable, new_committed)) = (old, new);
    if old_sellable == new_sellable {
        return None;
    }
    let sellable_up = new_sellable > old_sellable;
    Some(if !sellable_up && new_committed > old_committed {
        Reason::OrderCreated
    } else if sellable_up && new_committed < old_committed {
        Reason::OrderCancelled
    } else if sellable_up {
        Reason::StockAdded
    } else {
        Reason::StockRemoved
    })
}

/// A pair to recompute. `store_id = None` means "every store where the product is listed"
/// (composition edits). Parent sets are added in SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed {
    pub product_id: Uuid,
    pub store_id: Option<Uuid>,
    pub reason: Reason,
    pub commit_lsn: Lsn,
}

/// The two published tables, with the positions of the columns capture reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchedTable {
    ProductStores {
        id: usize,
        product_id: usize,
        store_id: usize,
        sellable_quantity: usize,
        committed_quantity: usize,
    },
    ProductSetItems {
        id: usize,
        set_product_id: usize,
        component_product_id: usize,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    #[error(
        "table {table} no longer has column {column:?}, which stocksync reads; restore the column \
         (or upgrade stocksync) — refusing to guess quantities"
    )]
    MissingColumn { table: String, column: &'static str },
    #[error(
        "table {table} does not have REPLICA IDENTITY FULL (old row values are needed); run \
         `stocksync setup` or `ALTER TABLE {table} REPLICA IDENTITY FULL`"
    )]
    ReplicaIdentity { table: String },
    #[error("table {table} is published to the slot but is not one stocksync reads; remove it from the publication")]
    UnexpectedTable { table: String },
}

impl WatchedTable {
    /// Maps a Relation message to the columns capture needs. Extra columns are fine.
    pub fn from_relation(relation: &Relation) -> Result<WatchedTable, SchemaError> {
        let table = relation.qualified_name();
        let col = |column: &'static str| {
            relation
                .column_index(column)
                .ok_or_else(|| SchemaError::MissingColumn {
                    table: table.clone(),
                    column,
                })
        };
        let watched = match relation.name.as_str() {
            "product_stores" => WatchedTable::ProductStores {
                id: col("id")?,
                product_id: col("product_id")?,
                store_id: col("store_id")?,
                sellable_quantity: col("sellable_quantity")?,
                committed_quantity: col("committed_quantity")?,
            },
            "product_set_items" => WatchedTable::ProductSetItems {
                id: col("id")?,
                set_product_id: col("set_product_id")?,
                component_product_id: col("component_product_id")?,
            },
            _ => return Err(SchemaError::UnexpectedTable { table }),
        };
        if relation.replica_identity != b'f' {
            return Err(SchemaError::ReplicaIdentity { table });
        }
        Ok(watched)
    }

    pub fn table_name(&self) -> &'static str {
        match self {
            WatchedTable::ProductStores { .. } => "product_stores",
            WatchedTable::ProductSetItems { .. } => "product_set_items",
        }
    }
}

/// A row that cannot be interpreted (NULL key, malformed uuid or number). Reported with the
/// row's id and skipped; other rows go on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{table} row {row_id}: column {column} has {problem}")]
pub struct BadRow {
    pub table: &'static str,
    pub row_id: String,
    pub column: &'static str,
    pub problem: String,
}

fn text(tuple: &TupleData, idx: usize) -> Option<&str> {
    match tuple.get(idx) {
        Some(value @ ColumnValue::Text(_)) => value.as_str().and_then(Result::ok),
        _ => None,
    }
}

struct RowReader<'a> {
    table: &'static str,
    tuple: &'a TupleData,
    id_idx: usize,
}

impl RowReader<'_> {
    fn bad(&self, column: &'static str, problem: String) -> BadRow {
        BadRow {
            table: self.table,
            row_id: text(self.tuple, self.id_idx)
                .unwrap_or("(unknown id)")
                .to_string(),
            column,
            problem,
        }
    }

    fn uuid(&self, idx: usize, column: &'static str) -> Result<Uuid, BadRow> {
        match self.tuple.get(idx) {
            Some(ColumnValue::Null) | None => Err(self.bad(column, "NULL".into())),
            Some(ColumnValue::UnchangedToast) => {
                Err(self.bad(column, "an unchanged TOAST value".into()))
            }
            _ => {
                let value = text(self.tuple, idx).unwrap_or_default();
                value
                    .parse()
                    .map_err(|_| self.bad(column, format!("{value:?}, which is not a uuid")))
            }
        }
    }

    /// Integer columns; NULL counts as 0 (the application treats a missing quantity as none).
    fn int(&self, idx: usize, column: &'static str) -> Result<i64, BadRow> {
        match self.tuple.get(idx) {
            Some(ColumnValue::Null) | None => Ok(0),
            _ => {
                let value = text(self.tuple, idx).unwrap_or_default();
                value
                    .parse()
                    .map_err(|_| self.bad(column, format!("{value:?}, which is not an integer")))
            }
        }
    }
}

/// Products that may be components of a set: those of `product_set_items` when capture
/// started, plus every component a set item change named since (never removed: a product
/// that left its sets is only expanded for nothing). The set expansion is skipped for any
/// other product; that is safe because a change to `product_set_items` is seen (and enqueues
/// its set) before any later change of the component, and a transaction is only expanded at
/// its commit (see [`Components::expands`]). `None`: not known (too many to keep), every
/// product may be.
#[derive(Debug, Clone, Default)]
pub struct Components {
    known: Option<HashSet<Uuid>>,
    /// Moves whenever what is known changes (a product added, or the set given up): equal
    /// versions mean equal answers.
    version: u64,
}

impl Components {
    /// At most this many are kept (about 20 bytes each); past it, every product is expanded.
    pub const LIMIT: usize = 200_000;

    /// The components of `product_set_items`, if known.
    pub fn new(known: Option<Vec<Uuid>>) -> Components {
        Components {
            known: known.map(|k| k.into_iter().collect()),
            version: 0,
        }
    }

    /// Every product may be in a set (nothing known).
    pub fn unknown() -> Components {
        Components::new(None)
    }

    pub fn may_be_in_a_set(&self, product: &Uuid) -> bool {
        self.known.as_ref().is_none_or(|k| k.contains(product))
    }

    /// The one rule of both paths (exactly-once rule 8): whether a seed goes through the set
    /// expansion. A composition seed (`store_id` `None`) always does: its set is what it is
    /// about. A pair seed does when its product may be in a set. Asked when the seed's
    /// transaction commits — a non-streamed transaction arrives whole after its commit, so
    /// every set item committed before it has been seen; a streamed one's staged seeds are
    /// judged again at its commit by [`StagedExpansion`].
    pub fn expands(&self, product_id: &Uuid, store_id: Option<Uuid>) -> bool {
        store_id.is_none() || self.may_be_in_a_set(product_id)
    }

    fn add(&mut self, product: Uuid) {
        if let Some(known) = &mut self.known {
            if known.insert(product) {
                self.version += 1;
            }
            if known.len() > Self::LIMIT {
                self.known = None;
            }
        }
    }
}

/// Whether the staged seeds of a streamed transaction need the set expansion at its commit.
///
/// Seeds are staged chunk by chunk while the transaction runs, and each chunk is judged by
/// [`Components::expands`] as capture knows the components then. The decision belongs to the
/// commit (rule 8): a set item committed in between may have made a product of an earlier
/// chunk a component, and its set must be enqueued with the transaction's change. The staged
/// products are not kept in memory, so when the components changed since the first chunk, the
/// expansion runs; it joins `product_set_items` as they are at the commit and so enqueues
/// exactly the sets the staged products are in then (none, if the new components are not
/// among them).
#[derive(Debug, Default)]
pub struct StagedExpansion {
    /// A staged seed expanded when it was staged.
    expands: bool,
    /// [`Components`]' version when the first chunk was staged.
    first_staged: Option<u64>,
}

impl StagedExpansion {
    /// A seed is being staged.
    pub fn staged(&mut self, components: &Components, product_id: &Uuid, store_id: Option<Uuid>) {
        self.first_staged.get_or_insert(components.version);
        self.expands |= components.expands(product_id, store_id);
    }

    /// At the transaction's commit: whether its staged seeds go through the set expansion.
    /// Components only grow, so an unchanged version means every chunk was judged by the
    /// components of the commit.
    pub fn at_commit(&self, components: &Components) -> bool {
        self.expands
            || self
                .first_staged
                .is_some_and(|version| version != components.version)
    }
}

/// The seeds one row change produces (possibly none), or the row's problem. Components named
/// by a `product_set_items` change are added to `components`.
pub fn seeds_for_change(
    table: &WatchedTable,
    change: &RowChange,
    commit_lsn: Lsn,
    out: &mut Vec<Seed>,
    components: &mut Components,
) -> Result<(), BadRow> {
    match *table {
        WatchedTable::ProductStores {
            id,
            product_id,
            store_id,
            sellable_quantity,
            committed_quantity,
        } => {
            let read = |tuple: &TupleData| -> Result<(Uuid, Uuid, i64, i64), BadRow> {
                let r = RowReader {
                    table: "product_stores",
                    tuple,
                    id_idx: id,
                };
                Ok((
                    r.uuid(product_id, "product_id")?,
                    r.uuid(store_id, "store_id")?,
                    r.int(sellable_quantity, "sellable_quantity")?,
                    r.int(committed_quantity, "committed_quantity")?,
                ))
            };
            let pair = |p: Uuid, s: Uuid, reason: Reason| Seed {
                product_id: p,
                store_id: Some(s),
                reason,
                commit_lsn,
            };
            match (change.kind, &change.old, &change.new) {
                (ChangeKind::Insert, _, Some(new)) => {
                    let (p, s, _, _) = read(new)?;
                    out.push(pair(p, s, Reason::StockAdded));
                }
                (ChangeKind::Delete, Some(old), _) => {
                    let (p, s, _, _) = read(old)?;
                    out.push(pair(p, s, Reason::StockRemoved));
                }
                (ChangeKind::Update, Some(old), Some(new)) => {
                    let (op, os, osell, ocomm) = read(old)?;
                    let (np, ns, nsell, ncomm) = read(new)?;
                    if (op, os) != (np, ns) {
                        // The row moved to another product or store: both pairs are stale.
                        out.push(pair(op, os, Reason::StockRemoved));
                        out.push(pair(np, ns, Reason::StockAdded));
                    } else if let Some(reason) = infer_reason((osell, ocomm), (nsell, ncomm)) {
                        out.push(pair(np, ns, reason));
                    }
                }
                // Without an old tuple (identity not FULL) nothing safe can be said; the
                // relation check refuses such tables before we get here.
                _ => {}
            }
        }
        WatchedTable::ProductSetItems {
            id,
            set_product_id,
            component_product_id,
        } => {
            let mut sets = Vec::with_capacity(2);
            for tuple in [&change.old, &change.new].into_iter().flatten() {
                let r = RowReader {
                    table: "product_set_items",
                    tuple,
                    id_idx: id,
                };
                sets.push(r.uuid(set_product_id, "set_product_id")?);
                components.add(r.uuid(component_product_id, "component_product_id")?);
            }
            sets.dedup();
            for set in sets {
                out.push(Seed {
                    product_id: set,
                    store_id: None,
                    reason: Reason::CompositionChanged,
                    commit_lsn,
                });
            }
        }
    }
    Ok(())
}

/// Seeds of one capture batch, one per (product, store-or-all), keeping the highest priority
/// reason and the newest commit LSN.
#[derive(Debug, Default)]
pub struct SeedSet {
    seeds: HashMap<(Uuid, Option<Uuid>), (Reason, Lsn)>,
}

impl SeedSet {
    pub fn add(&mut self, seed: Seed) {
        self.seeds
            .entry((seed.product_id, seed.store_id))
            .and_modify(|(reason, lsn)| {
                if seed.reason.priority() > reason.priority() {
                    *reason = seed.reason;
                }
                *lsn = (*lsn).max(seed.commit_lsn);
            })
            .or_insert((seed.reason, seed.commit_lsn));
    }

    pub fn len(&self) -> usize {
        self.seeds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seeds.is_empty()
    }

    /// Empties the set into column arrays for the enqueue statements; the set expansion gets
    /// the seeds [`Components::expands`] says.
    pub fn drain_columns(&mut self, components: &Components) -> SeedColumns {
        let mut columns = SeedColumns::default();
        for ((product_id, store_id), (reason, lsn)) in self.seeds.drain() {
            let expand = components.expands(&product_id, store_id);
            columns.push(product_id, store_id, reason, lsn, expand);
        }
        columns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_follow_the_seed_rules() {
        // committed up, sellable down: an order reserved stock
        assert_eq!(infer_reason((10, 0), (8, 2)), Some(Reason::OrderCreated));
        // committed down, sellable up: an order was cancelled
        assert_eq!(infer_reason((8, 2), (10, 0)), Some(Reason::OrderCancelled));
        assert_eq!(infer_reason((8, 2), (20, 2)), Some(Reason::StockAdded));
        assert_eq!(infer_reason((8, 2), (5, 2)), Some(Reason::StockRemoved));
        // committed moved but sellable did not: nothing to tell the marketplace
        assert_eq!(infer_reason((8, 2), (8, 5)), None);
    }

    #[test]
    fn seed_set_keeps_highest_priority_and_newest_lsn() {
        let p = Uuid::new_v4();
        let s = Some(Uuid::new_v4());
        let mut set = SeedSet::default();
        set.add(Seed {
            product_id: p,
            store_id: s,
            reason: Reason::StockAdded,
            commit_lsn: Lsn(10),
        });
        set.add(Seed {
            product_id: p,
            store_id: s,
            reason: Reason::OrderCreated,
            commit_lsn: Lsn(5),
        });
        set.add(Seed {
            product_id: p,
            store_id: s,
            reason: Reason::StockRemoved,
            commit_lsn: Lsn(20),
        });
        assert_eq!(set.len(), 1);
        let cols = set.drain_columns(&Components::unknown()).pairs;
        assert_eq!(cols.reasons, vec!["ORDER_CREATED".to_string()]);
        assert_eq!(cols.priorities, vec![100]);
        assert_eq!(
            cols.commit_lsns,
            vec![tokio_postgres::types::PgLsn::from(20)]
        );
        assert!(set.is_empty());
    }

    #[test]
    fn only_seeds_of_possible_components_and_compositions_are_expanded() {
        let (component, plain, set) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let store = Some(Uuid::new_v4());
        let mut components = Components::new(Some(vec![component]));
        assert!(components.may_be_in_a_set(&component));
        assert!(!components.may_be_in_a_set(&plain));
        let mut seeds = SeedSet::default();
        for (product_id, store_id) in [(component, store), (plain, store), (set, None)] {
            seeds.add(Seed {
                product_id,
                store_id,
                reason: Reason::StockAdded,
                commit_lsn: Lsn(1),
            });
        }
        let cols = seeds.drain_columns(&components);
        let mut pairs = cols.pairs.product_ids.clone();
        pairs.sort();
        let mut want = vec![component, plain];
        want.sort();
        assert_eq!(pairs, want, "every seed naming a pair is enqueued");
        let mut sets = cols.sets.product_ids.clone();
        sets.sort();
        let mut want = vec![component, set];
        want.sort();
        assert_eq!(sets, want, "the plain product is not expanded");

        // A set item naming `plain` makes it a component from then on.
        components.add(plain);
        assert!(components.may_be_in_a_set(&plain));
        assert!(Components::unknown().may_be_in_a_set(&plain));
    }

    #[test]
    fn staged_seeds_are_expanded_by_the_components_at_commit() {
        let (component, plain, later) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let store = Some(Uuid::new_v4());
        let mut components = Components::new(Some(vec![component]));

        let mut chunks = StagedExpansion::default();
        assert!(!chunks.at_commit(&components), "nothing staged");
        chunks.staged(&components, &plain, store);
        assert!(
            !chunks.at_commit(&components),
            "a plain product, components unchanged"
        );
        // A set item committed while the transaction runs names an already known component:
        // nothing changes.
        components.add(component);
        assert!(!chunks.at_commit(&components));
        // One naming a new component (maybe `plain`, staged earlier): decided at commit.
        components.add(later);
        assert!(chunks.at_commit(&components));

        let mut chunks = StagedExpansion::default();
        chunks.staged(&components, &plain, None);
        assert!(chunks.at_commit(&components), "a composition seed always");
        let mut chunks = StagedExpansion::default();
        chunks.staged(&components, &component, store);
        assert!(chunks.at_commit(&components), "a known component");
        let mut chunks = StagedExpansion::default();
        chunks.staged(&Components::unknown(), &plain, store);
        assert!(
            chunks.at_commit(&Components::unknown()),
            "components not known"
        );
    }
}
