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
