//! The SQLite file: schema, migrations, durability settings, and the reads that rebuild a key.
//!
//! One database per node (`<data_dir>/stockring.db`), WAL mode with `synchronous=FULL`, so a
//! transaction's commit returns only after its WAL frames are fsync'd. Tables:
//! - `journal(seq, key, version, event)`: the node's ordered journal; `version` is the key's
//!   version after the event, unique per key, so replay can check it has every event;
//! - `snapshots(key, version, state)`: a key's state as of `version`; journal rows of that key
//!   up to `version` are deleted in the same transaction that writes the snapshot;
//! - `orders(order_id, status, record, updated_at_ms)`: order records (C3 for orders, recovery).

use super::codec::{self, CodecError};
use crate::domain::order::Order;
use crate::domain::StockState;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};

/// The schema this binary writes. Older files are migrated forward on open; newer ones refused.
pub const SCHEMA_VERSION: i64 = 1;
pub const DB_FILE: &str = "stockring.db";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt data for {what}: {source}")]
    Corrupt { what: String, source: CodecError },
    #[error("journal of {key} has a gap: expected version {expected}, found {found}")]
    JournalGap {
        key: String,
        expected: u64,
        found: u64,
    },
    #[error(
        "database schema version {found} is newer than this binary supports ({SCHEMA_VERSION})"
    )]
    SchemaTooNew { found: i64 },
    #[error("the journal writer has stopped")]
    WriterStopped,
    #[error("commit failed: {0}")]
    CommitFailed(String),
    #[error("data directory {0} is in use by another stockring process")]
    Locked(PathBuf),
}

pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join(DB_FILE)
}

/// Opens (creating if needed) the node's database with explicit durability settings.
pub fn open(path: &Path) -> Result<Connection, StorageError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: in WAL mode, every commit fsyncs the WAL. NORMAL would only sync at checkpoints
    // and could lose acknowledged operations on power loss (C2).
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    migrate(&conn)?;
    Ok(conn)
}

fn migrate(conn: &Connection) -> Result<(), StorageError> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StorageError::SchemaTooNew { found });
    }
    if found < 1 {
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE journal (
                 seq INTEGER PRIMARY KEY,
                 key TEXT NOT NULL,
                 version INTEGER NOT NULL,
                 event BLOB NOT NULL
             );
             CREATE UNIQUE INDEX journal_by_key ON journal(key, version);
             CREATE TABLE snapshots (
                 key TEXT PRIMARY KEY,
                 version INTEGER NOT NULL,
                 state BLOB NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE orders (
                 order_id TEXT PRIMARY KEY,
                 status TEXT NOT NULL,
                 record BLOB NOT NULL,
                 updated_at_ms INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE INDEX orders_by_status ON orders(status);
             PRAGMA user_version = 1;
             COMMIT;",
        )?;
    }
    // Future migrations go here as `if found < N { ... PRAGMA user_version = N; }`.
    Ok(())
}

/// A key rebuilt from its snapshot and journal tail.
pub struct LoadedKey {
    pub state: StockState,
    /// Events replayed on top of the snapshot (drives the next snapshot).
    pub tail_events: u64,
}

/// Rebuilds one key: latest snapshot, then every later journal event in version order.
pub fn load_key(conn: &Connection, key: &str) -> Result<LoadedKey, StorageError> {
    let corrupt = |source| StorageError::Corrupt {
        what: key.to_owned(),
        source,
    };
    let snapshot: Option<Vec<u8>> = conn
        .prepare_cached("SELECT state FROM snapshots WHERE key = ?1")?
        .query_row(params![key], |r| r.get(0))
        .optional()?;
    let mut state = match snapshot {
        Some(blob) => codec::decode_snapshot(&blob).map_err(corrupt)?,
        None => StockState::default(),
    };
    let mut stmt = conn.prepare_cached(
        "SELECT version, event FROM journal WHERE key = ?1 AND version > ?2 ORDER BY version",
    )?;
    let mut rows = stmt.query(params![key, state.version() as i64])?;
    let mut tail_events = 0;
    while let Some(row) = rows.next()? {
        let version: i64 = row.get(0)?;
        let blob: Vec<u8> = row.get(1)?;
        let expected = state.version() + 1;
        if version as u64 != expected {
            return Err(StorageError::JournalGap {
                key: key.to_owned(),
                expected,
                found: version as u64,
            });
        }
        let event = codec::decode_event(&blob).map_err(corrupt)?;
        state.apply_event(&event);
        tail_events += 1;
    }
    Ok(LoadedKey { state, tail_events })
}

pub fn load_order(conn: &Connection, order_id: &str) -> Result<Option<Order>, StorageError> {
    let blob: Option<Vec<u8>> = conn
        .prepare_cached("SELECT record FROM orders WHERE order_id = ?1")?
        .query_row(params![order_id], |r| r.get(0))
        .optional()?;
    blob.map(|b| codec::decode_order(&b))
        .transpose()
        .map_err(|source| StorageError::Corrupt {
            what: format!("order {order_id}"),
            source,
        })
}

/// Orders a crash interrupted, for recovery to finish or undo.
pub fn orders_in_flight(conn: &Connection) -> Result<Vec<Order>, StorageError> {
    let mut stmt = conn.prepare(
        "SELECT order_id, record FROM orders WHERE status IN ('reserving', 'committing', 'releasing')",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, blob) = row?;
        let order = codec::decode_order(&blob).map_err(|source| StorageError::Corrupt {
            what: format!("order {id}"),
            source,
        })?;
        out.push(order);
    }
    Ok(out)
}

/// Warehouses with durable state for `sku`. Keys are `sku/warehouse`, and `0` is the byte
/// after `/`, so the range scan covers exactly this SKU's keys, using the primary keys' order.
pub fn warehouses_of(conn: &Connection, sku: &str) -> Result<Vec<String>, StorageError> {
    let (lo, hi) = (format!("{sku}/"), format!("{sku}0"));
    let mut stmt = conn.prepare_cached(
        "SELECT key FROM snapshots WHERE key >= ?1 AND key < ?2
         UNION SELECT DISTINCT key FROM journal WHERE key >= ?1 AND key < ?2 ORDER BY 1",
    )?;
    let keys = stmt.query_map(params![lo, hi], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for key in keys {
        let key = key?;
        if let Some((_, wh)) = key.split_once('/') {
            out.push(wh.to_owned());
        }
    }
    Ok(out)
}

/// Keys with any state on disk (for `stockring inspect` and tests; walks whole tables).
pub fn count_keys(conn: &Connection) -> Result<u64, StorageError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM (SELECT key FROM snapshots UNION SELECT key FROM journal)",
        [],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}
