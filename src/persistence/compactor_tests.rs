//! The compactor's rebuild against a writer that rewrites the key while it reads.

use super::*;
use crate::domain::ledger::StockState;
use crate::domain::{Command, OpId, Qty, ReservationId};
use crate::persistence::codec;
use crate::persistence::keys::KeyWrite;

fn qty(n: u64) -> Qty {
    Qty::new(n).expect("qty")
}

/// A key that has seen `ids` reservations.
fn state_with(ids: u64) -> StockState {
    let mut state = StockState::default();
    let receive = Command::Receive {
        op_id: OpId::parse("restock").expect("id"),
        qty: qty(1_000_000),
    };
    let _ = state.apply(&receive, 1_000);
    for i in 0..ids {
        let reserve = Command::Reserve {
            reservation_id: ReservationId::parse(&format!("r-{i}")).expect("id"),
            qty: qty(1),
            ttl_ms: 60_000,
            order_id: None,
        };
        let _ = state.apply(&reserve, 1_000 + i);
    }
    state
}

/// The writer rewrites a key (a new generation; the old one's segments deleted) between the
/// compactor's read of the key's row and its read of the segments that row names. The
/// compactor must still see one consistent key: the old row with the old segments, giving a
/// result built on the old row (which the writer then discards as superseded), not a
/// `MissingSegment` that left the key out of compaction until a restart.
#[test]
fn a_rewrite_between_the_compactors_reads_does_not_fail_the_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store::db_path(dir.path());
    let writer = store::open(&path).expect("open writer connection");
    let reader = store::open(&path).expect("open compactor connection");
    let key: Arc<str> = Arc::from("sku-1/w1");

    let mut state = state_with(50);
    let mut changed = 0;
    keys::put_key(
        &writer,
        &key,
        state.version(),
        &KeyWrite::full(&state),
        &mut changed,
    )
    .expect("store the first generation");
    let based_on = keys::read_key(&writer, &key)
        .expect("read")
        .expect("stored")
        .changed;

    // One committed row past the snapshot: what the compactor is asked to fold in.
    let (_, events) = state.apply(
        &Command::Reserve {
            reservation_id: ReservationId::parse("late").expect("id"),
            qty: qty(1),
            ttl_ms: 60_000,
            order_id: None,
        },
        5_000,
    );
    let rows: Vec<Row> = events
        .iter()
        .enumerate()
        .map(|(i, e)| Row {
            seq: 100 + i as i64,
            version: state.version() - (events.len() - 1 - i) as u64,
            event: codec::encode_event(e).into_boxed_slice(),
        })
        .collect();
    let job = Job {
        key: key.clone(),
        rows,
    };

    let rewrite = || {
        keys::put_key(
            &writer,
            &key,
            state.version(),
            &KeyWrite::full(&state),
            &mut changed,
        )
        .expect("rewrite as a new generation");
    };
    let outcome = rebuild_between(&reader, &job, rewrite).expect("the rebuild read one key");
    match outcome {
        Compaction::Image {
            version,
            based_on: built_on,
            ..
        } => {
            assert_eq!(version, state.version(), "the rebuild folded in the row");
            assert_eq!(built_on, Some(based_on), "built on the row it read first");
        }
        Compaction::NothingToDo => panic!("the row past the snapshot was not folded in"),
        Compaction::Failed => panic!("unexpected Failed"),
    }
}
