//! Migrations, on files as older binaries wrote them.

use super::*;
use crate::domain::{Command, OpId, Outcome, Qty, ReservationId};

/// A schema-v3 file exactly as v3 binaries left it: the v1 tables, the v2 index drop, the v3
/// columns, tables and indexes.
const V3_SCHEMA: &str = "
    CREATE TABLE journal (seq INTEGER PRIMARY KEY, key TEXT NOT NULL, version INTEGER NOT NULL,
        event BLOB NOT NULL);
    CREATE TABLE snapshots (key TEXT PRIMARY KEY, version INTEGER NOT NULL, state BLOB NOT NULL)
        WITHOUT ROWID;
    CREATE TABLE orders (order_id TEXT PRIMARY KEY, status TEXT NOT NULL, record BLOB NOT NULL,
        updated_at_ms INTEGER NOT NULL) WITHOUT ROWID;
    CREATE INDEX orders_by_status ON orders(status);
    ALTER TABLE snapshots ADD COLUMN hash INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE snapshots ADD COLUMN changed INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE orders ADD COLUMN hash INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE orders ADD COLUMN changed INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE cluster_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    CREATE TABLE fences (vnode INTEGER PRIMARY KEY, move_id INTEGER NOT NULL,
        epoch INTEGER NOT NULL, begun_at INTEGER NOT NULL);
    CREATE INDEX snapshots_by_hash ON snapshots(hash, key);
    CREATE INDEX orders_by_hash ON orders(hash, order_id);
    PRAGMA user_version = 3;";

/// A key with `ids` remembered reservations: its snapshot grows with them (past 1 KB from ~20).
fn state_with(ids: u64) -> StockState {
    let mut state = StockState::default();
    let qty = |n| Qty::new(n).expect("qty");
    let receive = Command::Receive {
        op_id: OpId::parse("restock").expect("id"),
        qty: qty(1_000_000),
    };
    let (outcome, _) = state.apply(&receive, 1_000);
    assert!(matches!(outcome, Outcome::StockSet { .. }), "{outcome:?}");
    for i in 0..ids {
        let reserve = Command::Reserve {
            reservation_id: ReservationId::parse(&format!("order-{i}-line-1")).expect("id"),
            qty: qty(1 + i % 3),
            ttl_ms: 60_000,
            order_id: None,
        };
        let (outcome, _) = state.apply(&reserve, 1_000 + i);
        assert!(matches!(outcome, Outcome::Reserved { .. }), "{outcome:?}");
    }
    state
}

/// A v3 file goes through v4 (snapshots in a rowid table) and v5 (records out of the
/// snapshot, into segments): every key loads as it was, snapshots are small, and a handoff's
/// range scan still finds keys by hash with their change numbers kept.
#[test]
fn a_v3_file_migrates_to_snapshots_without_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_path(dir.path());
    let keys: Vec<(String, StockState)> = (0..60)
        .map(|i| (format!("sku-{i}/w1"), state_with(i)))
        .collect();
    {
        let conn = Connection::open(&path).expect("create v3");
        conn.execute_batch(V3_SCHEMA).expect("v3 schema");
        for (n, (key, state)) in keys.iter().enumerate() {
            conn.execute(
                "INSERT INTO snapshots (key, version, state, hash, changed)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    key,
                    state.version() as i64,
                    codec::encode_snapshot_v1(state),
                    stored_hash(key),
                    n as i64 + 1
                ],
            )
            .expect("v3 snapshot");
        }
    }
    for reopen in 0..2 {
        let conn = open(&path).expect("open migrates");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION, "open #{reopen}");
        let sql: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'snapshots'",
                [],
                |r| r.get(0),
            )
            .expect("snapshots table");
        assert!(!sql.to_uppercase().contains("WITHOUT ROWID"), "{sql}");
        for (key, state) in &keys {
            let loaded = load_key(&conn, key, &[]).expect("load");
            assert_eq!(&loaded.state, state, "{key} after the migration");
        }
        // The hash index answers a handoff's range scan, with the change numbers kept.
        let everything = PageQuery {
            range: (i64::MIN, None),
            since: 30,
            after: None,
            max_bytes: usize::MAX,
        };
        let (images, next) = export_page(&conn, &everything).expect("export");
        assert!(next.is_none());
        let mut exported: Vec<&str> = images.iter().map(|i| i.key.as_str()).collect();
        exported.sort();
        let mut expected: Vec<&str> = keys[30..].iter().map(|(k, _)| k.as_str()).collect();
        expected.sort();
        assert_eq!(exported, expected, "keys changed after change 30");
        assert!(keys
            .iter()
            .any(|(_, s)| codec::encode_snapshot_v1(s).len() > 1_500));
        let largest: i64 = conn
            .query_row("SELECT MAX(length(state)) FROM snapshots", [], |r| r.get(0))
            .expect("sizes");
        assert!(largest < 100, "a v5 snapshot of {largest} bytes");
        let (segments, _) = export_segments_page(&conn, &everything).expect("segments");
        assert!(segments.len() >= 29, "{} segments", segments.len());
    }
}
