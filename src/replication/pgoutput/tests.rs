//! The decoder's tests, on frames captured from a PostgreSQL 15 server.

use super::*;

const FRAMES: &str = include_str!("../../../tests/fixtures/pgoutput/frames.txt");

/// One captured row of `pg_logical_slot_peek_binary_changes`.
#[derive(Debug, Clone)]
struct Frame {
    name: &'static str,
    /// The `lsn` column.
    lsn: Lsn,
    /// The `xid` column (0 for a non-transactional message).
    xid: u32,
    data: Bytes,
}

fn unhex(hex: &str) -> Vec<u8> {
    assert!(hex.len().is_multiple_of(2), "odd hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn frames() -> Vec<Frame> {
    FRAMES
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let mut parts = line.split(' ');
            let mut next = || parts.next().expect("four columns");
            Frame {
                name: next(),
                lsn: next().parse().expect("lsn"),
                xid: next().parse().expect("xid"),
                data: Bytes::from(unhex(next())),
            }
        })
        .collect()
}

/// All frames of one capture scenario, in order.
fn scenario(name: &str) -> Vec<Frame> {
    let prefix = format!("{name}.");
    let found: Vec<Frame> = frames()
        .into_iter()
        .filter(|f| f.name.starts_with(&prefix))
        .collect();
    assert!(!found.is_empty(), "scenario {name} missing from fixtures");
    found
}

fn decode_all(name: &str) -> Vec<(Frame, PgOutputMessage)> {
    scenario(name)
        .into_iter()
        .map(|f| {
            let msg = decode(f.data.clone())
                .unwrap_or_else(|e| panic!("{} does not decode: {e}", f.name));
            (f, msg)
        })
        .collect()
}

fn text(value: Option<&ColumnValue>) -> &str {
    match value {
        Some(v) => v
            .as_str()
            .unwrap_or_else(|| panic!("not text: {v:?}"))
            .unwrap(),
        None => panic!("no such column"),
    }
}

/// Value of column `name` of `tuple`, located through the relation.
fn col<'a>(rel: &Relation, tuple: &'a TupleData, name: &str) -> &'a ColumnValue {
    let idx = rel.column_index(name).expect("column exists");
    tuple.get(idx).expect("tuple has the column")
}

fn col_text<'a>(rel: &Relation, tuple: &'a TupleData, name: &str) -> &'a str {
    text(Some(col(rel, tuple, name)))
}

macro_rules! unwrap_msg {
    ($msg:expr, $variant:ident) => {
        match $msg {
            PgOutputMessage::$variant(inner) => inner.clone(),
            other => panic!("expected {}, got {other:?}", stringify!($variant)),
        }
    };
}

/// Checks the Begin/Commit frame of a scenario against each other and the slot columns.
fn check_transaction(msgs: &[(Frame, PgOutputMessage)]) -> (Begin, Commit) {
    let (first, begin) = msgs.first().unwrap();
    let (last, commit) = msgs.last().unwrap();
    let begin = unwrap_msg!(begin, Begin);
    let commit = unwrap_msg!(commit, Commit);
    assert_eq!(begin.xid, first.xid);
    assert!(msgs.iter().all(|(f, _)| f.xid == begin.xid));
    assert_eq!(begin.final_lsn, commit.commit_lsn);
    assert!(commit.end_lsn > commit.commit_lsn);
    // The slot function reports a commit at the end of its record.
    assert_eq!(commit.end_lsn, last.lsn);
    assert_eq!(commit.flags, 0);
    assert_eq!(begin.commit_time_us, commit.commit_time_us);
    // Captured after 2020.
    assert!(begin.commit_time_us > 20 * 365 * 86_400 * 1_000_000);
    (begin, commit)
}

const PRODUCT_STORES_COLUMNS: [&str; 5] = [
    "id",
    "product_id",
    "store_id",
    "sellable_quantity",
    "committed_quantity",
];
const UUID_OID: u32 = 2950;
const INT4_OID: u32 = 23;
const TEXT_OID: u32 = 25;

fn check_product_stores(rel: &Relation) {
    assert_eq!(rel.namespace, "public");
    assert_eq!(rel.name, "product_stores");
    assert_eq!(rel.qualified_name(), "public.product_stores");
    assert_eq!(rel.replica_identity, REPLICA_IDENTITY_FULL);
    assert!(rel.is_replica_identity_full());
    let names: Vec<&str> = rel.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, PRODUCT_STORES_COLUMNS);
    let oids: Vec<u32> = rel.columns.iter().map(|c| c.type_oid).collect();
    assert_eq!(oids, [UUID_OID, UUID_OID, UUID_OID, INT4_OID, INT4_OID]);
    // Under REPLICA IDENTITY FULL every column is part of the identity.
    assert!(rel.columns.iter().all(Column::is_key));
    assert!(rel.columns.iter().all(|c| c.type_modifier == -1));
    assert_eq!(rel.column_index("sellable_quantity"), Some(3));
    assert_eq!(rel.column_index("Sellable_Quantity"), None);
}

/// Every frame with whether it lies inside a stream block (tracked per scenario by a
/// [`Decoder`]), so it can be decoded on its own in the right place.
fn placed_frames() -> Vec<(Frame, bool)> {
    let mut out = Vec::new();
    let mut scenario = "";
    let mut decoder = Decoder::new();
    for f in frames() {
        let name = f.name.split('.').next().unwrap();
        if name != scenario {
            assert!(
                !decoder.in_stream(),
                "{scenario} ends inside a stream block"
            );
            scenario = name;
            decoder = Decoder::new();
        }
        let in_stream = decoder.in_stream();
        decoder
            .decode(f.data.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", f.name));
        out.push((f, in_stream));
    }
    out
}

#[test]
fn every_captured_frame_decodes_as_its_kind() {
    let all = placed_frames();
    assert!(all.len() > 100);
    for (f, in_stream) in &all {
        let streamed = decode_message(f.data.clone(), *in_stream)
            .unwrap_or_else(|e| panic!("{}: {e}", f.name));
        let kind = f.name.rsplit('.').next().unwrap();
        assert_eq!(
            streamed
                .message
                .kind_name()
                .to_lowercase()
                .replace(' ', "_"),
            kind,
            "{}",
            f.name
        );
        // Data messages name their transaction exactly inside stream blocks.
        let data = !matches!(
            streamed.message,
            PgOutputMessage::Origin(_) | PgOutputMessage::StreamStop
        );
        assert_eq!(streamed.xid.is_some(), *in_stream && data, "{}", f.name);
        if !*in_stream {
            assert_eq!(decode(f.data.clone()).unwrap(), streamed.message);
        }
    }
}

#[test]
fn every_truncation_of_every_captured_frame_is_an_error() {
    for (f, in_stream) in placed_frames() {
        for len in 0..f.data.len() {
            let result = decode_message(f.data.slice(..len), in_stream);
            assert!(result.is_err(), "{} cut to {len} bytes: {result:?}", f.name);
        }
    }
}

#[test]
fn extra_bytes_after_a_captured_frame_are_an_error() {
    for (f, in_stream) in placed_frames() {
        let mut long = f.data.to_vec();
        long.push(0);
        let err = decode_message(Bytes::from(long), in_stream).unwrap_err();
        // A Message's content is length-prefixed, a Relation's columns are counted, ...:
        // whatever the kind, an extra byte is noticed.
        assert!(
            matches!(err, DecodeError::TrailingBytes { count: 1, .. }),
            "{}: {err}",
            f.name
        );
    }
}

#[test]
fn insert_into_product_stores() {
    let msgs = decode_all("insert");
    assert_eq!(msgs.len(), 4);
    check_transaction(&msgs);
    let rel = unwrap_msg!(&msgs[1].1, Relation);
    check_product_stores(&rel);
    let insert = unwrap_msg!(&msgs[2].1, Insert);
    assert_eq!(insert.relation_id, rel.id);
    assert_eq!(insert.new.len(), 5);
    assert_eq!(
        col_text(&rel, &insert.new, "id"),
        "11111111-1111-1111-1111-111111111111"
    );
    assert_eq!(
        col_text(&rel, &insert.new, "product_id"),
        "aaaaaaaa-0000-0000-0000-000000000001"
    );
    assert_eq!(col_text(&rel, &insert.new, "sellable_quantity"), "50");
    assert_eq!(col_text(&rel, &insert.new, "committed_quantity"), "3");
    assert!(!insert.new.has_unchanged_toast());
}

#[test]
fn update_with_full_old_tuple() {
    let msgs = decode_all("update_full");
    assert_eq!(msgs.len(), 4);
    check_transaction(&msgs);
    let rel = unwrap_msg!(&msgs[1].1, Relation);
    check_product_stores(&rel);
    let update = unwrap_msg!(&msgs[2].1, Update);
    assert_eq!(update.relation_id, rel.id);
    assert!(update.key.is_none());
    let old = update.old.as_ref().expect("old tuple under FULL");
    assert_eq!(col_text(&rel, old, "sellable_quantity"), "50");
    assert_eq!(col_text(&rel, &update.new, "sellable_quantity"), "49");
    assert_eq!(col_text(&rel, old, "committed_quantity"), "3");
    assert_eq!(col_text(&rel, &update.new, "committed_quantity"), "3");
    assert_eq!(
        col_text(&rel, &update.new, "store_id"),
        "bbbbbbbb-0000-0000-0000-000000000001"
    );
    assert_eq!(update.resolved_new(), update.new);
}

#[test]
fn delete_with_full_old_tuple() {
    let msgs = decode_all("delete_full");
    check_transaction(&msgs);
    let rel = unwrap_msg!(&msgs[1].1, Relation);
    check_product_stores(&rel);
    let delete = unwrap_msg!(&msgs[2].1, Delete);
    assert_eq!(delete.relation_id, rel.id);
    assert!(delete.key.is_none());
    let old = delete.old.expect("old tuple under FULL");
    assert_eq!(
        col_text(&rel, &old, "id"),
        "11111111-1111-1111-1111-111111111111"
    );
    assert_eq!(col_text(&rel, &old, "sellable_quantity"), "49");
}

#[test]
fn transaction_touching_two_relations() {
    let msgs = decode_all("multi");
    assert_eq!(msgs.len(), 6);
    check_transaction(&msgs);
    let stores = unwrap_msg!(&msgs[1].1, Relation);
    let first = unwrap_msg!(&msgs[2].1, Insert);
    let items = unwrap_msg!(&msgs[3].1, Relation);
    let second = unwrap_msg!(&msgs[4].1, Insert);
    check_product_stores(&stores);
    assert_eq!(items.qualified_name(), "public.product_set_items");
    let names: Vec<&str> = items.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["id", "set_product_id", "component_product_id", "quantity"]
    );
    assert_ne!(stores.id, items.id);
    assert_eq!(first.relation_id, stores.id);
    assert_eq!(second.relation_id, items.id);
    assert_eq!(col_text(&stores, &first.new, "sellable_quantity"), "7");
    assert_eq!(col_text(&items, &second.new, "quantity"), "2");
    assert_eq!(
        col_text(&items, &second.new, "component_product_id"),
        "aaaaaaaa-0000-0000-0000-000000000002"
    );
}

#[test]
fn enum_column_gives_a_type_message_and_nulls_decode() {
    let msgs = decode_all("enum_nulls");
    assert_eq!(msgs.len(), 6);
    check_transaction(&msgs);
    let ty = unwrap_msg!(&msgs[1].1, Type);
    let rel = unwrap_msg!(&msgs[2].1, Relation);
    assert_eq!(ty.namespace, "public");
    assert_eq!(ty.name, "stock_state");
    assert_eq!(rel.qualified_name(), "public.product_notes");
    let state = &rel.columns[rel.column_index("state").unwrap()];
    assert_eq!(state.type_oid, ty.id);
    assert_eq!(
        rel.columns[rel.column_index("big").unwrap()].type_oid,
        TEXT_OID
    );

    let nulls = unwrap_msg!(&msgs[3].1, Insert);
    assert_eq!(col_text(&rel, &nulls.new, "id"), "1");
    for name in ["state", "qty", "big"] {
        assert_eq!(col(&rel, &nulls.new, name), &ColumnValue::Null, "{name}");
        assert!(col(&rel, &nulls.new, name).as_str().is_none());
    }
    let values = unwrap_msg!(&msgs[4].1, Insert);
    assert_eq!(col_text(&rel, &values.new, "state"), "out_of_stock");
    assert_eq!(col_text(&rel, &values.new, "qty"), "5");
    assert_eq!(col_text(&rel, &values.new, "big"), "short");
}

#[test]
fn unchanged_toast_value_is_resolved_from_the_full_old_tuple() {
    let inserted = decode_all("toast_insert");
    check_transaction(&inserted);
    let rel = unwrap_msg!(&inserted[2].1, Relation);
    let insert = unwrap_msg!(&inserted[3].1, Insert);
    let big = col_text(&rel, &insert.new, "big").to_owned();
    assert_eq!(big.len(), 10_240);

    let msgs = decode_all("toast_update");
    check_transaction(&msgs);
    let rel = unwrap_msg!(&msgs[2].1, Relation);
    let update = unwrap_msg!(&msgs[3].1, Update);
    let big_idx = rel.column_index("big").unwrap();
    let old = update.old.as_ref().expect("old tuple under FULL");
    // The old tuple carries the whole value, the new one only the 'u' marker.
    assert_eq!(col_text(&rel, old, "big"), big);
    assert_eq!(update.new.get(big_idx), Some(&ColumnValue::UnchangedToast));
    assert!(update.new.has_unchanged_toast());
    assert!(update.new.get(big_idx).unwrap().as_str().is_none());
    assert_eq!(col_text(&rel, &update.new, "qty"), "2");
    assert_eq!(col_text(&rel, old, "qty"), "1");

    let resolved = update.resolved_new();
    assert!(!resolved.has_unchanged_toast());
    assert_eq!(col_text(&rel, &resolved, "big"), big);
    assert_eq!(col_text(&rel, &resolved, "qty"), "2");
    assert_eq!(resolved, update.new.clone().with_unchanged_from(old));
    // Resolution shares the old tuple's bytes.
    let (ColumnValue::Text(a), ColumnValue::Text(b)) =
        (resolved.get(big_idx).unwrap(), old.get(big_idx).unwrap())
    else {
        panic!("text expected");
    };
    assert_eq!(a.as_ptr(), b.as_ptr());

    // Without a usable old value the marker stays.
    let unresolved = update
        .new
        .clone()
        .with_unchanged_from(&TupleData::default());
    assert_eq!(unresolved, update.new);
}

#[test]
fn default_replica_identity_gives_key_tuples() {
    let msgs = decode_all("stores_insert");
    check_transaction(&msgs);
    let rel = unwrap_msg!(&msgs[1].1, Relation);
    assert_eq!(rel.qualified_name(), "public.stores");
    assert_eq!(rel.replica_identity, REPLICA_IDENTITY_DEFAULT);
    let keys: Vec<bool> = rel.columns.iter().map(Column::is_key).collect();
    assert_eq!(keys, [true, false, false]);

    let msgs = decode_all("update_nokey");
    check_transaction(&msgs);
    let update = unwrap_msg!(&msgs[2].1, Update);
    assert!(update.old.is_none() && update.key.is_none());
    assert_eq!(col_text(&rel, &update.new, "name"), "Main shop");

    let msgs = decode_all("update_key");
    check_transaction(&msgs);
    let update = unwrap_msg!(&msgs[2].1, Update);
    assert!(update.old.is_none());
    let key = update.key.as_ref().expect("key changed");
    assert_eq!(
        col_text(&rel, key, "id"),
        "44444444-4444-4444-4444-444444444444"
    );
    assert!(col(&rel, key, "name").is_null());
    assert_eq!(
        col_text(&rel, &update.new, "id"),
        "55555555-5555-5555-5555-555555555555"
    );
    assert_eq!(col_text(&rel, &update.new, "type"), "TRENDYOL");

    let msgs = decode_all("delete_key");
    check_transaction(&msgs);
    let delete = unwrap_msg!(&msgs[2].1, Delete);
    assert!(delete.old.is_none());
    let key = delete.key.expect("key tuple");
    assert_eq!(
        col_text(&rel, &key, "id"),
        "55555555-5555-5555-5555-555555555555"
    );
    assert!(col(&rel, &key, "type").is_null());
}

#[test]
fn truncate_lists_relation_ids_and_options() {
    let msgs = decode_all("truncate");
    check_transaction(&msgs);
    let items = unwrap_msg!(&msgs[1].1, Relation);
    assert_eq!(items.name, "product_set_items");
    let truncate = unwrap_msg!(&msgs[2].1, Truncate);
    assert_eq!(truncate.options, 0);
    assert!(!truncate.cascade() && !truncate.restart_identity());
    assert_eq!(truncate.relation_ids, [items.id]);

    let msgs = decode_all("truncate_cascade");
    assert_eq!(msgs.len(), 6);
    check_transaction(&msgs);
    let stores = unwrap_msg!(&msgs[1].1, Relation);
    let ty = unwrap_msg!(&msgs[2].1, Type);
    let notes = unwrap_msg!(&msgs[3].1, Relation);
    assert_eq!(stores.name, "product_stores");
    assert_eq!(ty.name, "stock_state");
    assert_eq!(notes.name, "product_notes");
    let truncate = unwrap_msg!(&msgs[4].1, Truncate);
    assert_eq!(
        truncate.options,
        TRUNCATE_CASCADE | TRUNCATE_RESTART_IDENTITY
    );
    assert!(truncate.cascade() && truncate.restart_identity());
    assert_eq!(truncate.relation_ids, [stores.id, notes.id]);
}

#[test]
fn logical_messages() {
    let msgs = decode_all("message_tx");
    assert_eq!(msgs.len(), 5);
    check_transaction(&msgs);
    let (frame, msg) = &msgs[1];
    let message = unwrap_msg!(msg, Message);
    assert!(message.transactional);
    assert_eq!(message.prefix, "stocksync");
    assert_eq!(&message.content[..], b"hello");
    assert_eq!(message.lsn, frame.lsn);
    let rel = unwrap_msg!(&msgs[2].1, Relation);
    let insert = unwrap_msg!(&msgs[3].1, Insert);
    assert_eq!(col_text(&rel, &insert.new, "quantity"), "1");

    let msgs = decode_all("message_nontx");
    assert_eq!(msgs.len(), 1, "a non-transactional message comes alone");
    let (frame, msg) = &msgs[0];
    let message = unwrap_msg!(msg, Message);
    assert!(!message.transactional);
    assert_eq!(message.prefix, "stocksync.ping");
    assert_eq!(&message.content[..], [0x00, 0xff, 0x01]);
    assert_eq!(message.lsn, frame.lsn);
    assert_eq!(frame.xid, 0);
}

#[test]
fn origin_follows_begin() {
    let msgs = decode_all("origin");
    assert_eq!(msgs.len(), 5);
    check_transaction(&msgs);
    let origin = unwrap_msg!(&msgs[1].1, Origin);
    assert_eq!(origin.name, "upstream");
    assert_eq!(origin.commit_lsn, "0/ABCDEF01".parse().unwrap());
    let insert = unwrap_msg!(&msgs[3].1, Insert);
    let rel = unwrap_msg!(&msgs[2].1, Relation);
    assert_eq!(insert.relation_id, rel.id);
}

#[test]
fn binary_values() {
    let msgs = decode_all("binary");
    check_transaction(&msgs);
    let rel = unwrap_msg!(&msgs[1].1, Relation);
    let insert = unwrap_msg!(&msgs[2].1, Insert);
    assert_eq!(
        col(&rel, &insert.new, "id"),
        &ColumnValue::Binary(Bytes::from_static(&[0x88; 16]))
    );
    assert_eq!(
        col(&rel, &insert.new, "sellable_quantity"),
        &ColumnValue::Binary(Bytes::copy_from_slice(&50i32.to_be_bytes()))
    );
    assert!(col(&rel, &insert.new, "sellable_quantity")
        .as_str()
        .is_none());
}

/// A scenario decoded in order by one [`Decoder`].
fn decode_session(name: &str) -> Vec<(Frame, Streamed)> {
    let mut decoder = Decoder::new();
    scenario(name)
        .into_iter()
        .map(|f| {
            let streamed = decoder
                .decode(f.data.clone())
                .unwrap_or_else(|e| panic!("{}: {e}", f.name));
            (f, streamed)
        })
        .collect()
}

#[test]
fn streamed_transaction_comes_in_blocks_then_commits() {
    let msgs = decode_session("stream");
    let (first, start) = &msgs[0];
    let start = unwrap_msg!(&start.message, StreamStart);
    let xid = start.xid;
    assert_eq!(xid, first.xid);
    assert!(start.first_segment);
    // Every data message of every block belongs to the transaction (no subtransactions).
    let mut blocks = 0;
    let mut in_block = false;
    for (f, m) in &msgs {
        match &m.message {
            PgOutputMessage::StreamStart(s) => {
                assert!(!in_block);
                in_block = true;
                assert_eq!(s.xid, xid);
                assert_eq!(s.first_segment, blocks == 0, "{}", f.name);
                blocks += 1;
            }
            PgOutputMessage::StreamStop => {
                assert!(in_block);
                in_block = false;
            }
            PgOutputMessage::StreamCommit(_) => assert!(!in_block),
            _ => {
                assert!(in_block, "{}", f.name);
                assert_eq!(m.xid, Some(xid), "{}", f.name);
            }
        }
    }
    assert!(blocks >= 3, "{blocks} blocks");

    let items = unwrap_msg!(&msgs[1].1.message, Relation);
    assert_eq!(items.name, "product_set_items");
    let insert = unwrap_msg!(&msgs[2].1.message, Insert);
    assert_eq!(insert.relation_id, items.id);
    assert_eq!(
        col_text(&items, &insert.new, "set_product_id"),
        "aaaaaaaa-0000-0000-0000-000000000010"
    );

    // The last block: what the transaction did after its big insert.
    let find = |kind: &str| {
        msgs.iter()
            .rev()
            .find(|(f, _)| f.name.ends_with(kind))
            .map(|(_, m)| m.message.clone())
            .unwrap()
    };
    let update = unwrap_msg!(&find(".update"), Update);
    let delete = unwrap_msg!(&find(".delete"), Delete);
    let truncate = unwrap_msg!(&find(".truncate"), Truncate);
    let relations: Vec<Relation> = msgs
        .iter()
        .filter_map(|(_, m)| match &m.message {
            PgOutputMessage::Relation(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    let product_stores = relations
        .iter()
        .find(|r| r.name == "product_stores")
        .unwrap();
    let notes = relations
        .iter()
        .find(|r| r.name == "product_notes")
        .unwrap();
    check_product_stores(product_stores);
    let old = update.old.as_ref().expect("old tuple under FULL");
    assert_eq!(col_text(product_stores, old, "sellable_quantity"), "5");
    assert_eq!(
        col_text(product_stores, &update.new, "sellable_quantity"),
        "4"
    );
    assert_eq!(
        col_text(product_stores, delete.old.as_ref().unwrap(), "id"),
        "99999999-9999-9999-9999-999999999999"
    );
    assert_eq!(truncate.relation_ids, [notes.id]);

    let (last, commit) = msgs.last().unwrap();
    let commit = unwrap_msg!(&commit.message, StreamCommit);
    assert_eq!(commit.xid, xid);
    assert_eq!(commit.flags, 0);
    assert!(commit.commit_lsn < commit.end_lsn);
    assert_eq!(commit.end_lsn, last.lsn);
    assert!(commit.commit_time_us > 20 * 365 * 86_400 * 1_000_000);
}

#[test]
fn a_stream_decoded_again_below_the_confirmed_position_is_aborted() {
    let committed = decode_session("stream");
    let xid = unwrap_msg!(&committed[0].1.message, StreamStart).xid;
    let msgs = decode_session("stream_replayed");
    let start = unwrap_msg!(&msgs[0].1.message, StreamStart);
    assert_eq!(start.xid, xid, "the same transaction, streamed again");
    assert!(start.first_segment, "from its beginning");
    let abort = unwrap_msg!(&msgs.last().unwrap().1.message, StreamAbort);
    assert_eq!(abort, StreamAbort { xid, subxid: xid });
    assert!(abort.is_whole_transaction());
    assert!(!msgs
        .iter()
        .any(|(_, m)| matches!(m.message, PgOutputMessage::StreamCommit(_))));
}

#[test]
fn rolled_back_stream_ends_with_an_abort_of_the_whole_transaction() {
    let msgs = decode_session("stream_abort");
    let aborts: Vec<StreamAbort> = msgs
        .iter()
        .filter_map(|(_, m)| match m.message {
            PgOutputMessage::StreamAbort(a) => Some(a),
            _ => None,
        })
        .collect();
    // The replayed transaction of the previous scenario first, then the rolled back one.
    assert_eq!(aborts.len(), 2);
    let rolled_back = aborts[1];
    assert!(rolled_back.is_whole_transaction());
    let (last, _) = msgs.last().unwrap();
    assert_eq!(last.xid, rolled_back.xid);
    let blocks = msgs
        .iter()
        .filter(|(_, m)| {
            matches!(m.message, PgOutputMessage::StreamStart(s) if s.xid == rolled_back.xid)
        })
        .count();
    assert!(blocks >= 2, "{blocks} blocks before the rollback");
}

#[test]
fn subtransaction_abort_names_the_subtransaction() {
    let msgs = decode_session("stream_subabort");
    let top = unwrap_msg!(&msgs[0].1.message, StreamStart).xid;
    let kinds: Vec<&str> = msgs.iter().map(|(_, m)| m.message.kind_name()).collect();
    assert_eq!(
        kinds,
        [
            "Stream Start",
            "Relation",
            "Insert",
            "Stream Stop",
            "Stream Abort",
            "Stream Start",
            "Relation",
            "Insert",
            "Stream Stop",
            "Stream Commit"
        ]
    );
    // The insert before the savepoint belongs to the transaction itself.
    assert_eq!(msgs[2].1.xid, Some(top));
    let abort = unwrap_msg!(&msgs[4].1.message, StreamAbort);
    assert_eq!(abort.xid, top);
    assert_ne!(abort.subxid, top);
    assert!(!abort.is_whole_transaction());
    assert_eq!(msgs[4].0.xid, abort.subxid);
    // After ROLLBACK TO the savepoint is set again: a new subtransaction made the insert.
    let after = msgs[7].1.xid.unwrap();
    assert!(after != top && after != abort.subxid);
    let rel = unwrap_msg!(&msgs[6].1.message, Relation);
    let insert = unwrap_msg!(&msgs[7].1.message, Insert);
    assert_eq!(
        col_text(&rel, &insert.new, "id"),
        "13131313-1313-1313-1313-131313131313"
    );
    let commit = unwrap_msg!(&msgs[9].1.message, StreamCommit);
    assert_eq!(commit.xid, top);
}

#[test]
fn small_transactions_under_protocol_2_are_not_streamed() {
    let msgs = decode_all("small_v2");
    assert_eq!(msgs.len(), 4);
    check_transaction(&msgs);
    let update = unwrap_msg!(&msgs[2].1, Update);
    assert!(update.old.is_some());
}

#[test]
fn stream_messages_out_of_place_and_two_phase_messages_are_errors() {
    let stop = Bytes::from_static(b"E");
    assert_eq!(
        decode(stop.clone()),
        Err(DecodeError::OutOfPlace {
            name: "Stream Stop",
            inside_stream: false
        })
    );
    let mut decoder = Decoder::new();
    assert!(decoder.decode(stop.clone()).is_err());
    decoder
        .decode(Bytes::from_static(b"S\0\0\0\x07\x01"))
        .unwrap();
    assert!(decoder.in_stream());
    // A Begin cannot come inside a block, nor a second Stream Start.
    let begin = scenario("insert")[0].data.clone();
    let err = decoder.decode(begin).unwrap_err();
    assert_eq!(
        err,
        DecodeError::OutOfPlace {
            name: "Begin",
            inside_stream: true
        }
    );
    assert!(err.to_string().contains("inside a stream block"));
    assert!(decoder
        .decode(Bytes::from_static(b"S\0\0\0\x07\0"))
        .is_err());
    assert_eq!(
        decoder.decode(stop).unwrap().message,
        PgOutputMessage::StreamStop
    );
    assert!(!decoder.in_stream());
    // Protocol version 4's longer Stream Abort is refused as trailing bytes.
    let err = decode(Bytes::from(
        [&b"A\0\0\0\x07\0\0\0\x08"[..], &[0u8; 16]].concat(),
    ))
    .unwrap_err();
    assert!(matches!(err, DecodeError::TrailingBytes { count: 16, .. }));
    for (kind, name) in [
        (b'b', "Begin Prepare"),
        (b'P', "Prepare"),
        (b'K', "Commit Prepared"),
    ] {
        let err = decode(Bytes::from(vec![kind, 0, 0])).unwrap_err();
        assert!(
            matches!(err, DecodeError::Unsupported { name: n, min_protocol_version: 3, .. } if n == name)
        );
        assert!(err.to_string().contains(name));
    }
}

#[test]
fn decoded_stream_is_consistent_with_the_relation_cache() {
    let mut cache = RelationCache::new();
    let mut in_transaction = false;
    let mut changes = 0;
    for f in frames()
        .into_iter()
        .filter(|f| !f.name.starts_with("stream"))
    {
        let msg = decode(f.data.clone()).unwrap();
        let check = |cache: &RelationCache, id: u32, tuples: &[Option<&TupleData>]| {
            let rel = cache.get(id).expect("Relation precedes its changes");
            for t in tuples.iter().flatten() {
                assert_eq!(t.len(), rel.columns.len(), "{}", f.name);
            }
        };
        match &msg {
            PgOutputMessage::Begin(_) => {
                assert!(!in_transaction);
                in_transaction = true;
            }
            PgOutputMessage::Commit(_) => {
                assert!(in_transaction);
                in_transaction = false;
            }
            PgOutputMessage::Relation(r) => cache.insert(r.clone()),
            PgOutputMessage::Insert(i) => check(&cache, i.relation_id, &[Some(&i.new)]),
            PgOutputMessage::Update(u) => check(
                &cache,
                u.relation_id,
                &[u.old.as_ref(), u.key.as_ref(), Some(&u.new)],
            ),
            PgOutputMessage::Delete(d) => {
                check(&cache, d.relation_id, &[d.old.as_ref(), d.key.as_ref()])
            }
            PgOutputMessage::Truncate(t) => {
                for id in &t.relation_ids {
                    assert!(cache.get(*id).is_some());
                }
            }
            PgOutputMessage::Origin(_) | PgOutputMessage::Type(_) => assert!(in_transaction),
            PgOutputMessage::Message(m) => assert_eq!(m.transactional, in_transaction),
            other => panic!("{}: {other:?} outside a stream", f.name),
        }
        if matches!(
            msg,
            PgOutputMessage::Insert(_) | PgOutputMessage::Update(_) | PgOutputMessage::Delete(_)
        ) {
            assert!(in_transaction);
            changes += 1;
        }
    }
    assert!(!in_transaction);
    assert!(changes >= 15);
    assert_eq!(cache.len(), 4);
    let stores = cache.find("public", "product_stores").unwrap();
    assert_eq!(stores.qualified_name(), "public.product_stores");
}

#[test]
fn relation_cache_keeps_the_latest_relation() {
    let rel = unwrap_msg!(&decode_all("insert")[1].1, Relation);
    let mut cache = RelationCache::new();
    assert!(cache.is_empty());
    assert!(cache.get(rel.id).is_none());
    cache.insert(rel.clone());
    assert_eq!(cache.get(rel.id), Some(&rel));

    // After ALTER TABLE the server sends the relation again; the new shape wins.
    let mut altered = rel.clone();
    altered.columns.push(Column {
        flags: COLUMN_FLAG_KEY,
        name: "reserved_quantity".into(),
        type_oid: INT4_OID,
        type_modifier: -1,
    });
    cache.insert(altered.clone());
    assert_eq!(cache.len(), 1);
    let got = cache.get(rel.id).unwrap();
    assert_eq!(got, &altered);
    assert_eq!(got.column_index("reserved_quantity"), Some(5));
    assert!(cache.find("public", "product_stores").is_some());
    assert!(cache.find("other", "product_stores").is_none());
    cache.clear();
    assert!(cache.get(rel.id).is_none());

    let catalog = Relation {
        namespace: String::new(),
        name: "pg_class".into(),
        ..rel
    };
    assert_eq!(catalog.qualified_name(), "pg_catalog.pg_class");
}

#[test]
fn malformed_messages_are_typed_errors() {
    assert_eq!(decode(Bytes::new()), Err(DecodeError::Empty));
    assert_eq!(
        decode(Bytes::from_static(b"Z")),
        Err(DecodeError::UnknownMessage(b'Z'))
    );

    // Insert into relation 1 with one column of unknown kind 'x'.
    let err = decode(Bytes::from_static(b"I\0\0\0\x01N\0\x01x")).unwrap_err();
    assert_eq!(err, DecodeError::UnknownTupleKind(b'x'));
    // Insert without the 'N' marker.
    let err = decode(Bytes::from_static(b"I\0\0\0\x01O\0\0")).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::UnexpectedTupleMarker {
                found: b'O',
                offset: 5,
                ..
            }
        ),
        "{err}"
    );
    // Delete needs 'O' or 'K'.
    let err = decode(Bytes::from_static(b"D\0\0\0\x01N\0\0")).unwrap_err();
    assert!(matches!(
        err,
        DecodeError::UnexpectedTupleMarker { found: b'N', .. }
    ));
    // Negative text length.
    let err = decode(Bytes::from_static(b"I\0\0\0\x01N\0\x01t\xff\xff\xff\xff")).unwrap_err();
    assert!(
        matches!(err, DecodeError::NegativeLength { value: -1, .. }),
        "{err}"
    );
    // Negative column count.
    let err = decode(Bytes::from_static(b"I\0\0\0\x01N\xff\xff")).unwrap_err();
    assert!(matches!(err, DecodeError::NegativeLength { .. }), "{err}");
    // A huge relation count must not allocate, just fail.
    let err = decode(Bytes::from_static(b"T\x7f\xff\xff\xff\0\0\0\0\x01")).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Truncated {
                what: "relation ids",
                ..
            }
        ),
        "{err}"
    );
    // Invalid UTF-8 in a name.
    let err = decode(Bytes::from_static(b"Y\0\0\0\x01\xff\0t\0")).unwrap_err();
    assert_eq!(
        err,
        DecodeError::InvalidUtf8 {
            what: "type namespace"
        }
    );
    // Error messages say what was being read.
    let err = decode(Bytes::from_static(b"B\0\0\0\0\0\0\0\x01\0\0")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "truncated pgoutput Begin message: reading commit timestamp at offset 9 needs 8 \
         bytes, 2 left"
    );
    let err = decode(Bytes::from_static(b"O\0\0\0\0\0\0\0\x01abc")).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::UnterminatedString {
                what: "origin name",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn as_str_reports_invalid_utf8() {
    let value = ColumnValue::Text(Bytes::from_static(b"\xff50"));
    assert_eq!(
        value.as_str(),
        Some(Err(DecodeError::InvalidUtf8 {
            what: "text column value"
        }))
    );
    assert_eq!(
        ColumnValue::Text(Bytes::from_static(b"50")).as_str(),
        Some(Ok("50"))
    );
    assert_eq!(ColumnValue::Null.as_str(), None);
    assert_eq!(ColumnValue::UnchangedToast.as_str(), None);
}
