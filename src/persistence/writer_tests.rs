//! The writer with a tiny compaction window: keys are compacted and the journal trimmed all the
//! time, and every key must still load to exactly its live state, through the running writer
//! and again after a restart (tail index rebuilt from disk).

use super::*;
use crate::domain::ledger::RecordKey;
use crate::domain::{Command, OpId, Qty, ReservationId, StockState};
use crate::persistence::codec;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::sync::mpsc as std_mpsc;

fn load(handle: &WriterHandle, key: &Arc<str>) -> StockState {
    let (tx, rx) = std_mpsc::channel();
    let reply = Box::new(move |r| {
        let _ = tx.send(r);
    });
    handle
        .blocking_submit(Request::LoadKey {
            key: key.clone(),
            reply,
        })
        .expect("submit");
    let loaded: Result<LoadedKey, StorageError> = rx.recv().expect("reply");
    loaded.expect("load").state
}

fn command(rng: &mut impl Rng, step: usize) -> Command {
    let qty = Qty::new(rng.gen_range(1..5)).expect("qty");
    let reservation_id = ReservationId::parse(&format!("r{}", rng.gen_range(0..40))).expect("id");
    match rng.gen_range(0..5) {
        0 => Command::Receive {
            op_id: OpId::parse(&format!("op{step}")).expect("id"),
            qty,
        },
        1 => Command::Commit { reservation_id },
        2 => Command::Release { reservation_id },
        3 if step.is_multiple_of(7) => Command::Cancel { reservation_id },
        _ => Command::Reserve {
            reservation_id,
            qty,
            ttl_ms: rng.gen_range(1..500),
            order_id: None,
        },
    }
}

#[test]
fn compaction_and_trim_keep_every_key_loadable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store::db_path(dir.path());
    let writer =
        Writer::start_with_window(store::open(&path).expect("open"), 16, 64, 50).expect("start");
    let keys: Vec<Arc<str>> = (0..20)
        .map(|i| Arc::from(format!("s{i}/w1").as_str()))
        .collect();
    let mut states = vec![StockState::default(); keys.len()];
    // What an actor keeps to write its snapshots: the records touched since the last one,
    // and how many record states the key's generation holds.
    let mut touched = vec![BTreeSet::<RecordKey>::new(); keys.len()];
    let mut stored = vec![0u64; keys.len()];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut rewrites = 0;
    for step in 0..4_000usize {
        let k = rng.gen_range(0..keys.len());
        let now = 1_000 + step as u64;
        let (_, mut events) = states[k].apply(&command(&mut rng, step), now);
        if rng.gen_range(0..50) == 0 {
            events.extend(states[k].forget_due(now, 200));
        }
        for e in &events {
            e.touched(|key| {
                touched[k].insert(key);
            });
        }
        if !events.is_empty() {
            let first_version = states[k].version() - events.len() as u64 + 1;
            let events = events.iter().map(codec::encode_event).collect();
            let done = Box::new(|r: Result<(), StorageError>| r.expect("durable"));
            let request = Request::Append {
                key: keys[k].clone(),
                first_version,
                events,
                done,
            };
            writer.handle.blocking_submit(request).expect("submit");
        }
        if rng.gen_range(0..30) == 0 {
            let write = KeyWrite::of(&states[k], &touched[k], stored[k]);
            stored[k] = match write.rewrites() {
                true => write.records(),
                false => stored[k] + write.records(),
            };
            rewrites += usize::from(write.rewrites());
            touched[k].clear();
            let request = Request::Snapshot {
                key: keys[k].clone(),
                version: states[k].version(),
                write,
                done: None,
            };
            writer.handle.blocking_submit(request).expect("submit");
        }
    }
    assert!(rewrites > 0, "no generation was rewritten");
    for (key, state) in keys.iter().zip(&states) {
        assert_eq!(
            &load(&writer.handle, key),
            state,
            "{key} through the running writer"
        );
    }
    writer.join();

    let conn = store::open(&path).expect("reopen");
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM journal", [], |r| r.get(0))
        .expect("count");
    assert!(rows < 1_000, "the journal was not trimmed: {rows} rows");
    let tails = store::scan_tails(&conn).expect("scan");
    for (key, state) in keys.iter().zip(&states) {
        let loaded = store::load_key(&conn, key, tails.rows_of(key)).expect("load");
        assert_eq!(&loaded.state, state, "{key} after restart");
    }
}

/// Forgetting is a journaled event: the writer's compaction, which rebuilds the key from its
/// journal rows, forgets exactly what the actor forgot, and a later reuse of a forgotten id
/// (a new reservation) loads.
#[test]
fn a_forgotten_id_is_forgotten_by_compaction_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store::db_path(dir.path());
    let writer =
        Writer::start_with_window(store::open(&path).expect("open"), 1, 8, 5).expect("start");
    let (hot, other): (Arc<str>, Arc<str>) = ("s/hot".into(), "s/other".into());
    let mut state = StockState::default();
    let id = ReservationId::parse("r1").expect("id");
    let receive = Command::Receive {
        op_id: OpId::parse("op").expect("id"),
        qty: Qty::new(9).expect("qty"),
    };
    let reserve = Command::Reserve {
        reservation_id: id.clone(),
        qty: Qty::new(2).expect("qty"),
        ttl_ms: 10,
        order_id: None,
    };
    let release = Command::Release {
        reservation_id: id.clone(),
    };
    append(&writer.handle, &hot, &mut state, &receive, 1);
    append(&writer.handle, &hot, &mut state, &reserve, 2);
    append(&writer.handle, &hot, &mut state, &release, 3);
    // The actor forgets r1 and the op (retention over): an event in the journal.
    let forgot = state.forget_due(1_000_000, 1_000).expect("due");
    journal(&writer.handle, &hot, &state, vec![forgot]);
    assert!(state.reservation(&id).is_none());
    // Traffic on another key pushes the hot key's rows out of the window: the writer
    // compacts it from its rows, the `Forgot` included.
    let mut other_state = StockState::default();
    for step in 0..20 {
        let cmd = Command::Receive {
            op_id: OpId::parse(&format!("o{step}")).expect("id"),
            qty: Qty::new(1).expect("qty"),
        };
        append(
            &writer.handle,
            &other,
            &mut other_state,
            &cmd,
            1_000_001 + step,
        );
    }
    assert_eq!(
        load(&writer.handle, &hot),
        state,
        "compaction forgot the same"
    );
    // A client reuses the forgotten id: a new reservation, which loads.
    let (outcome, events) = state.apply(&reserve, 1_000_100);
    assert!(matches!(
        outcome,
        crate::domain::Outcome::Reserved { replay: false, .. }
    ));
    journal(&writer.handle, &hot, &state, events);
    assert_eq!(load(&writer.handle, &hot), state);
    writer.join();
    let conn = store::open(&path).expect("reopen");
    let tails = store::scan_tails(&conn).expect("scan");
    let loaded = store::load_key(&conn, &hot, tails.rows_of(&hot)).expect("load");
    assert_eq!(loaded.state, state, "after restart");
}

fn snapshot_now(handle: &WriterHandle, key: &Arc<str>, state: &StockState) {
    let (tx, rx) = std_mpsc::channel();
    let done: Done = Box::new(move |r| {
        let _ = tx.send(r);
    });
    let request = Request::Snapshot {
        key: key.clone(),
        version: state.version(),
        write: KeyWrite::full(state),
        done: Some(done),
    };
    handle.blocking_submit(request).expect("submit");
    rx.recv().expect("reply").expect("durable");
}

fn stored(conn: &Connection, key: &str) -> (i64, i64) {
    conn.query_row(
        "SELECT version, changed FROM snapshots WHERE key = ?1",
        params![key],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .expect("snapshot row")
}

fn compacted(handle: &WriterHandle, key: &Arc<str>, state: &StockState, based_on: i64) {
    let request = Request::Compacted {
        key: key.clone(),
        outcome: Compaction::Image {
            version: state.version(),
            write: KeyWrite::full(state),
            based_on: Some(based_on),
        },
    };
    handle.blocking_submit(request).expect("submit");
}

/// The compactor rebuilds a key on the snapshot it read; while it works, the actor may
/// store a newer snapshot. The compactor's result, built on the older one, is dropped (it
/// could only repeat or undo what is stored); one built on the stored snapshot is stored.
#[test]
fn a_compaction_built_on_a_replaced_snapshot_is_discarded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store::db_path(dir.path());
    let writer =
        Writer::start_with_window(store::open(&path).expect("open"), 1, 8, 1_000).expect("start");
    let reader = store::open(&path).expect("reader");
    let hot: Arc<str> = "s/hot".into();
    let mut state = StockState::default();
    let id = ReservationId::parse("r1").expect("id");
    let reserve = Command::Reserve {
        reservation_id: id.clone(),
        qty: Qty::new(2).expect("qty"),
        ttl_ms: 10,
        order_id: None,
    };
    let receive = Command::Receive {
        op_id: OpId::parse("op").expect("id"),
        qty: Qty::new(9).expect("qty"),
    };
    append(&writer.handle, &hot, &mut state, &receive, 1);
    snapshot_now(&writer.handle, &hot, &state);
    let (_, base) = stored(&reader, &hot);
    append(&writer.handle, &hot, &mut state, &reserve, 2);
    // What the compactor builds from `base` and the new row.
    let built = state.clone();
    let release = Command::Release {
        reservation_id: id.clone(),
    };
    append(&writer.handle, &hot, &mut state, &release, 3);
    snapshot_now(&writer.handle, &hot, &state);
    let (version, current) = stored(&reader, &hot);
    compacted(&writer.handle, &hot, &built, base);
    assert_eq!(
        load(&writer.handle, &hot),
        state,
        "a stale compaction was stored"
    );
    assert_eq!(
        stored(&reader, &hot),
        (version, current),
        "the snapshot was replaced"
    );

    append(&writer.handle, &hot, &mut state, &receive, 4);
    let more = Command::Receive {
        op_id: OpId::parse("op2").expect("id"),
        qty: Qty::new(1).expect("qty"),
    };
    append(&writer.handle, &hot, &mut state, &more, 5);
    compacted(&writer.handle, &hot, &state, current);
    assert_eq!(load(&writer.handle, &hot), state);
    assert_eq!(
        stored(&reader, &hot).0,
        state.version() as i64,
        "a current compaction was not stored"
    );
    writer.join();
    let conn = store::open(&path).expect("reopen");
    let tails = store::scan_tails(&conn).expect("scan");
    let loaded = store::load_key(&conn, &hot, tails.rows_of(&hot)).expect("load");
    assert_eq!(loaded.state, state, "after restart");
}

/// A key whose snapshot is too large to rebuild inside a commit goes to the compactor thread;
/// its result is stored by a later commit and covers the key's rows.
#[test]
fn a_large_key_is_compacted_off_the_commit_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store::db_path(dir.path());
    let writer =
        Writer::start_with_window(store::open(&path).expect("open"), 16, 64, 100).expect("start");
    let reader = store::open(&path).expect("reader");
    let big: Arc<str> = "s/big".into();
    let mut state = StockState::default();
    let receive = Command::Receive {
        op_id: OpId::parse("op").expect("id"),
        qty: Qty::new(1).expect("qty"),
    };
    append(&writer.handle, &big, &mut state, &receive, 1);
    // Thousands of remembered ids (one hold, the rest refused), journaled in one request.
    let mut events = Vec::new();
    for i in 0..3_000 {
        let reserve = Command::Reserve {
            reservation_id: ReservationId::parse(&format!("flash-sale-attempt-{i}")).expect("id"),
            qty: Qty::new(1).expect("qty"),
            ttl_ms: 3_600_000,
            order_id: None,
        };
        events.extend(state.apply(&reserve, 2).1);
    }
    let (tx, rx) = std_mpsc::channel();
    let request = Request::Append {
        key: big.clone(),
        first_version: 2,
        events: events.iter().map(codec::encode_event).collect(),
        done: Box::new(move |r| {
            let _ = tx.send(r);
        }),
    };
    writer.handle.blocking_submit(request).expect("submit");
    rx.recv().expect("reply").expect("durable");
    snapshot_now(&writer.handle, &big, &state);
    let size: i64 = reader
        .query_row(
            "SELECT gen_bytes FROM snapshots WHERE key = ?1",
            params![&*big],
            |r| r.get(0),
        )
        .expect("size");
    assert!(
        size as u64 > INLINE_COMPACTION_BYTES,
        "the records are small: {size} bytes"
    );
    let more = Command::Receive {
        op_id: OpId::parse("op2").expect("id"),
        qty: Qty::new(5).expect("qty"),
    };
    append(&writer.handle, &big, &mut state, &more, 3);
    // Traffic on another key pushes the big key's row out of the window.
    let other: Arc<str> = "s/other".into();
    let mut other_state = StockState::default();
    for step in 0..150 {
        let cmd = Command::Receive {
            op_id: OpId::parse(&format!("o{step}")).expect("id"),
            qty: Qty::new(1).expect("qty"),
        };
        append(&writer.handle, &other, &mut other_state, &cmd, 4 + step);
    }
    // The compactor works in the background: wait (bounded) for its snapshot to be stored.
    // Each appended row is a commit, which is when the writer hands out and stores results.
    let mut step = 150;
    while stored(&reader, &big).0 < state.version() as i64 {
        assert!(step < 2_000, "the compactor's snapshot was never stored");
        std::thread::sleep(std::time::Duration::from_millis(5));
        let cmd = Command::Receive {
            op_id: OpId::parse(&format!("o{step}")).expect("id"),
            qty: Qty::new(1).expect("qty"),
        };
        append(&writer.handle, &other, &mut other_state, &cmd, 4 + step);
        step += 1;
    }
    assert_eq!(load(&writer.handle, &big), state);
    writer.join();
    let conn = store::open(&path).expect("reopen");
    let tails = store::scan_tails(&conn).expect("scan");
    assert!(
        tails.rows_of(&big).is_empty(),
        "the compaction did not cover the rows"
    );
    let loaded = store::load_key(&conn, &big, tails.rows_of(&big)).expect("load");
    assert_eq!(loaded.state, state, "after restart");
}

/// Every page of every pass of an export, and the change number the first page is complete
/// up to.
fn export_all(handle: &WriterHandle, range: (i64, Option<i64>), since: i64) -> (ExportPage, i64) {
    let mut all = ExportPage {
        images: Vec::new(),
        segments: Vec::new(),
        orders: Vec::new(),
        next: None,
        changed_upto: 0,
    };
    let mut mark = None;
    for pass in [ExportPass::Keys, ExportPass::Segments, ExportPass::Orders] {
        let mut after = None;
        loop {
            let (tx, rx) = std_mpsc::channel();
            let reply = Box::new(move |r| {
                let _ = tx.send(r);
            });
            let request = Request::Export {
                range,
                pass,
                since,
                after: after.clone(),
                max_bytes: 300,
                reply,
            };
            handle.blocking_submit(request).expect("submit");
            let page: ExportPage = rx.recv().expect("reply").expect("export");
            mark.get_or_insert(page.changed_upto);
            all.images.extend(page.images);
            all.segments.extend(page.segments);
            all.orders.extend(page.orders);
            match page.next {
                Some(c) => after = Some(c),
                None => break,
            }
        }
    }
    (all, mark.unwrap_or(0))
}

fn append(handle: &WriterHandle, key: &Arc<str>, state: &mut StockState, cmd: &Command, now: u64) {
    let (_, events) = state.apply(cmd, now);
    journal(handle, key, state, events);
}

/// Journals `events`, just applied to `state`, and waits until they are durable.
fn journal(
    handle: &WriterHandle,
    key: &Arc<str>,
    state: &StockState,
    events: Vec<crate::domain::Event>,
) {
    if events.is_empty() {
        return;
    }
    let first_version = state.version() - events.len() as u64 + 1;
    let (tx, rx) = std_mpsc::channel();
    let request = Request::Append {
        key: key.clone(),
        first_version,
        events: events.iter().map(codec::encode_event).collect(),
        done: Box::new(move |r| {
            let _ = tx.send(r);
        }),
    };
    handle.blocking_submit(request).expect("submit");
    rx.recv().expect("reply").expect("durable");
}

/// A handoff through storage: export a hash range from one node (journal tails folded in,
/// paged), import it on another that holds stale rows of the same keys (from when it owned
/// them), then a delta export since the copy's mark, then a late stale page. The target must
/// load every key exactly as the source has it, also after a restart.
#[test]
fn export_import_moves_keys_exactly() {
    let src_dir = tempfile::tempdir().expect("tempdir");
    let dst_dir = tempfile::tempdir().expect("tempdir");
    let open = |d: &std::path::Path| {
        Writer::start_with_window(
            store::open(&store::db_path(d)).expect("open"),
            16,
            64,
            1_000,
        )
        .expect("start")
    };
    let src = open(src_dir.path());
    let dst = open(dst_dir.path());
    let keys: Vec<Arc<str>> = (0..40)
        .map(|i| Arc::from(format!("s{i}/w1").as_str()))
        .collect();
    let mut states = vec![StockState::default(); keys.len()];
    let mut stale = vec![StockState::default(); keys.len()];
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for step in 0..600usize {
        let k = rng.gen_range(0..keys.len());
        let cmd = command(&mut rng, step);
        append(
            &src.handle,
            &keys[k],
            &mut states[k],
            &cmd,
            1_000 + step as u64,
        );
        // The target owned some keys earlier and kept their history up to the version it
        // handed over (a prefix: a key's version only grows, also across owners).
        if k % 3 == 0 && step < 300 {
            append(
                &dst.handle,
                &keys[k],
                &mut stale[k],
                &cmd,
                1_000 + step as u64,
            );
        }
    }
    // Some keys have snapshots (records in segments, a rewrite among them), some only rows.
    for (k, key) in keys.iter().enumerate().filter(|(k, _)| k % 2 == 0) {
        snapshot_now(&src.handle, key, &states[k]);
    }
    let all = (0, None);
    let (copy, mark) = export_all(&src.handle, all, 0);
    assert_eq!(copy.images.len(), keys.len(), "every key exported once");
    assert!(
        copy.segments.len() >= keys.len(),
        "records travel in segments"
    );
    let import = |page: ExportPage| {
        let (tx, rx) = std_mpsc::channel();
        let request = Request::Import {
            images: page.images,
            segments: page.segments,
            orders: page.orders,
            done: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        };
        dst.handle.blocking_submit(request).expect("submit");
        rx.recv().expect("reply").expect("durable");
    };
    let copy_again = || ExportPage {
        images: copy.images.clone(),
        segments: copy.segments.clone(),
        orders: Vec::new(),
        next: None,
        changed_upto: 0,
    };
    import(copy_again());
    // The source keeps serving a few keys after the copy.
    let mut touched = std::collections::BTreeSet::new();
    for step in 600..700usize {
        let k = rng.gen_range(0..keys.len());
        let cmd = command(&mut rng, step);
        let before = states[k].version();
        append(
            &src.handle,
            &keys[k],
            &mut states[k],
            &cmd,
            1_000 + step as u64,
        );
        if states[k].version() != before {
            touched.insert(keys[k].to_string());
        }
    }
    // Snapshots after the copy: new segments (and a new generation for one key) in the delta.
    for key in &touched {
        let k = keys.iter().position(|x| &**x == key).expect("a key");
        snapshot_now(&src.handle, &keys[k], &states[k]);
    }
    let (delta, _) = export_all(&src.handle, all, mark);
    let delta_keys: std::collections::BTreeSet<String> =
        delta.images.iter().map(|i| i.key.clone()).collect();
    assert!(
        touched.is_subset(&delta_keys),
        "the delta has every key changed since the copy"
    );
    assert!(
        delta.images.len() < keys.len(),
        "the delta is not a full copy"
    );
    import(delta);
    for (k, key) in keys.iter().enumerate() {
        assert_eq!(load(&dst.handle, key), states[k], "{key} after import");
    }
    // A late page of the (older) copy arriving now changes nothing: versions only grow.
    import(copy_again());
    for (k, key) in keys.iter().enumerate() {
        assert_eq!(
            load(&dst.handle, key),
            states[k],
            "{key} after a stale page"
        );
    }
    // A key range that holds none of these keys exports nothing.
    let h = crate::domain::placement::stored_hash(&keys[0]);
    let (none, _) = export_all(&src.handle, (h + 1, Some(h + 2)), 0);
    assert!(none.images.iter().all(|i| i.key != *keys[0]));
    assert!(none.segments.iter().all(|i| i.key != *keys[0]));
    src.join();
    dst.join();
    let dst = open(dst_dir.path());
    for (k, key) in keys.iter().enumerate() {
        assert_eq!(load(&dst.handle, key), states[k], "{key} after restart");
    }
    dst.join();
}

/// Change numbers only grow, across restarts too (a handoff's catch-up asks for what changed
/// after a number it saw and must not miss a change made after the source restarted), whether
/// the start reads the stored ceiling or, in an older file without one, scans for the largest.
#[test]
fn change_numbers_keep_growing_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store::db_path(dir.path());
    let mut state = StockState::default();
    let receive = Command::Receive {
        op_id: OpId::parse("op").expect("id"),
        qty: Qty::new(5).expect("qty"),
    };
    let (_, events) = state.apply(&receive, 1);
    assert_eq!(events.len(), 1);
    let mut previous_max = 0i64;
    for round in 0..4 {
        if round == 2 {
            let conn = store::open(&path).expect("open");
            conn.execute("DELETE FROM cluster_meta WHERE name = 'change_ceiling'", [])
                .expect("forget the ceiling");
        }
        let writer = Writer::start_with_window(store::open(&path).expect("open"), 4, 16, 1_000)
            .expect("start");
        for i in 0..5 {
            let request = Request::Snapshot {
                key: Arc::from(format!("r{round}-k{i}/w1").as_str()),
                version: state.version(),
                write: KeyWrite::full(&state),
                done: None,
            };
            writer.handle.blocking_submit(request).expect("submit");
        }
        writer.join();
        let conn = store::open(&path).expect("reopen");
        let (low, high): (i64, i64) = conn
            .query_row(
                "SELECT MIN(changed), MAX(changed) FROM snapshots WHERE key LIKE ?1",
                params![format!("r{round}-%")],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("changes");
        assert!(
            low > previous_max,
            "round {round}: change {low} not after {previous_max}"
        );
        let stored = store::meta_value(&conn, store::CHANGE_CEILING)
            .expect("read")
            .expect("a start reads the ceiling, not a scan");
        let ceiling = store::change_ceiling(&conn).expect("ceiling");
        assert_eq!(ceiling, stored);
        assert!(
            ceiling >= high,
            "ceiling {ceiling} below a stored change {high}"
        );
        previous_max = high;
    }
}

/// A flash-sale key: thousands of refused 100-character ids and open holds, snapshotted the
/// way its actor does (every 1,000 events, the records touched since). Its snapshot row stays
/// a few dozen bytes, no stored value grows past a segment, and it loads exactly, also after
/// a restart.
#[test]
fn a_key_that_has_seen_many_ids_keeps_a_small_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store::db_path(dir.path());
    let writer = Writer::start_with_window(store::open(&path).expect("open"), 64, 256, 100_000)
        .expect("start");
    let reader = store::open(&path).expect("reader");
    let flash: Arc<str> = "s/flash".into();
    let mut state = StockState::default();
    let receive = Command::Receive {
        op_id: OpId::parse("stock").expect("id"),
        qty: Qty::new(2_000).expect("qty"),
    };
    let (_, events) = state.apply(&receive, 1);
    let mut touched: BTreeSet<RecordKey> = BTreeSet::new();
    for e in &events {
        e.touched(|k| {
            touched.insert(k);
        });
    }
    journal(&writer.handle, &flash, &state, events);
    let mut stored_records = 0;
    let mut pending = Vec::new();
    let prefix = "a".repeat(90);
    for i in 0..20_000u64 {
        let reserve = Command::Reserve {
            reservation_id: ReservationId::parse(&format!("{prefix}-{i:09}")).expect("id"),
            qty: Qty::new(1).expect("qty"),
            ttl_ms: 3_600_000,
            order_id: None,
        };
        let (_, events) = state.apply(&reserve, 2 + i / 100);
        for e in &events {
            e.touched(|k| {
                touched.insert(k);
            });
        }
        pending.extend(events);
        if i % 1_000 == 999 {
            journal(&writer.handle, &flash, &state, std::mem::take(&mut pending));
            let write = KeyWrite::of(&state, &touched, stored_records);
            stored_records += write.records();
            touched.clear();
            let (tx, rx) = std_mpsc::channel();
            let request = Request::Snapshot {
                key: flash.clone(),
                version: state.version(),
                write,
                done: Some(Box::new(move |r| {
                    let _ = tx.send(r);
                })),
            };
            writer.handle.blocking_submit(request).expect("submit");
            rx.recv().expect("reply").expect("durable");
        }
    }
    assert_eq!(state.held_count(), 2_000);
    let (row, largest, segments): (i64, i64, i64) = reader
        .query_row(
            "SELECT length(s.state), (SELECT MAX(length(records)) FROM segments),
                    (SELECT COUNT(*) FROM segments)
             FROM snapshots s WHERE s.key = ?1",
            params![&*flash],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("sizes");
    assert!(row < 100, "the snapshot row has {row} bytes");
    assert!(
        largest < 2 * codec::SEGMENT_BYTES as i64,
        "a segment of {largest} bytes"
    );
    assert!(segments >= 10, "{segments} segments");
    assert_eq!(load(&writer.handle, &flash), state);
    writer.join();
    let conn = store::open(&path).expect("reopen");
    let tails = store::scan_tails(&conn).expect("scan");
    let loaded = store::load_key(&conn, &flash, tails.rows_of(&flash)).expect("load");
    assert_eq!(loaded.state, state, "after restart");
}

/// A fence of an older move written late (its task outlived its move) never replaces the
/// fence of a newer move of the same vnode: a restarted source would lift the wrong one.
#[test]
fn a_late_fence_of_an_older_move_does_not_replace_a_newer_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store::db_path(dir.path());
    let writer =
        Writer::start_with_window(store::open(&path).expect("open"), 4, 16, 1_000).expect("start");
    let put = |fence: (u32, u64, u64, u64)| {
        let (tx, rx) = std_mpsc::channel();
        let request = Request::PutFence {
            fence,
            done: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        };
        writer.handle.blocking_submit(request).expect("submit");
        rx.recv().expect("reply").expect("durable");
    };
    put((7, 12, 3, 40));
    put((7, 11, 3, 35));
    writer.join();
    let conn = store::open(&path).expect("reopen");
    assert_eq!(
        store::load_fences(&conn).expect("fences"),
        [(7, 12, 3, 40)],
        "an older move's fence replaced a newer one"
    );
}
