//! The writer with a tiny compaction window: keys are compacted and the journal trimmed all the
//! time, and every key must still load to exactly its live state, through the running writer
//! and again after a restart (tail index rebuilt from disk).

use super::*;
use crate::domain::{Command, OpId, Qty, ReservationId, StockState};
use rand::{Rng, SeedableRng};
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
    match rng.gen_range(0..4) {
        0 => Command::Receive {
            op_id: OpId::parse(&format!("op{step}")).expect("id"),
            qty,
        },
        1 => Command::Commit { reservation_id },
        2 => Command::Release { reservation_id },
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
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for step in 0..4_000usize {
        let k = rng.gen_range(0..keys.len());
        let (_, events) = states[k].apply(&command(&mut rng, step), 1_000 + step as u64);
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
        if rng.gen_range(0..300) == 0 {
            let state = codec::encode_snapshot(&states[k]);
            let request = Request::Snapshot {
                key: keys[k].clone(),
                version: states[k].version(),
                state,
                done: None,
            };
            writer.handle.blocking_submit(request).expect("submit");
        }
    }
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

/// The actor prunes forgotten ids just before writing its snapshot; the writer may already have
/// compacted the key at that same version from the unpruned durable state. The actor's pruned
/// snapshot must win, or a later reuse of a forgotten id makes the key unloadable.
#[test]
fn a_pruned_snapshot_replaces_a_compaction_at_the_same_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store::db_path(dir.path());
    let writer =
        Writer::start_with_window(store::open(&path).expect("open"), 1, 8, 5).expect("start");
    let submit = |key: &Arc<str>, state: &StockState, events: Vec<crate::domain::Event>| {
        let first_version = state.version() - events.len() as u64 + 1;
        let events = events.iter().map(codec::encode_event).collect();
        let done = Box::new(|r: Result<(), StorageError>| r.expect("durable"));
        writer
            .handle
            .blocking_submit(Request::Append {
                key: key.clone(),
                first_version,
                events,
                done,
            })
            .expect("submit");
    };
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
    for (cmd, now) in [
        (&receive, 1),
        (&reserve, 2),
        (
            &Command::Release {
                reservation_id: id.clone(),
            },
            3,
        ),
    ] {
        let (_, events) = state.apply(cmd, now);
        submit(&hot, &state, events);
    }
    // Traffic on another key pushes the hot key's rows out of the window: the writer compacts
    // it (unpruned) at its current version.
    let mut other_state = StockState::default();
    for step in 0..20 {
        let cmd = Command::Receive {
            op_id: OpId::parse(&format!("o{step}")).expect("id"),
            qty: Qty::new(1).expect("qty"),
        };
        let (_, events) = other_state.apply(&cmd, 4 + step);
        submit(&other, &other_state, events);
    }
    assert_eq!(
        load(&writer.handle, &hot),
        state,
        "compaction kept the state"
    );
    // The actor forgets r1 (retention over) and snapshots at the same version.
    assert_eq!(state.prune(1_000_000, 1_000), 2);
    let request = Request::Snapshot {
        key: hot.clone(),
        version: state.version(),
        state: codec::encode_snapshot(&state),
        done: None,
    };
    writer.handle.blocking_submit(request).expect("submit");
    // A client reuses the forgotten id: a new reservation.
    let (outcome, events) = state.apply(&reserve, 1_000_001);
    assert!(matches!(
        outcome,
        crate::domain::Outcome::Reserved { replay: false, .. }
    ));
    submit(&hot, &state, events);
    assert_eq!(load(&writer.handle, &hot), state);
    writer.join();
}
