//! The SQLite file: schema, migrations, durability settings, and the reads that rebuild a key.
//!
//! One database per node (`<data_dir>/stockring.db`), WAL mode with `synchronous=FULL`, so a
//! transaction's commit returns only after its WAL frames are fsync'd. Tables:
//! - `journal(seq, key, version, event)`: the node's journal, append-only in `seq` order, with
//!   no per-key index (a group commit then writes a few sequential pages, not one random index
//!   page per event); `version` is the key's version after the event, so a load can check it
//!   has every event. Which rows belong to which key is kept in memory (`tails.rs`);
//! - `snapshots(key, version, state, hash, changed, gen, segments, gen_records, gen_bytes)`
//!   and `segments(key, gen, seg, records, hash, changed)`: a key's state as of `version`,
//!   its scalars in the row and its remembered records in segments (see `keys.rs`); a
//!   snapshot never replaces a newer one; `hash` (indexed) finds a vnode's keys and segments,
//!   `changed` what a handoff must resend. Journal rows below the oldest row any key still
//!   needs are deleted in ranges;
//! - `orders(order_id, status, record, updated_at_ms)`: order records (C3 for orders, recovery).

use super::codec::{self, CodecError};
use super::tails::{Row, Tails};
use crate::domain::ledger::RecordKey;
use crate::domain::order::Order;
use crate::domain::placement::stored_hash;
use crate::domain::StockState;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The schema this binary writes. Older files are migrated forward on open; newer ones refused.
pub const SCHEMA_VERSION: i64 = 5;
pub const DB_FILE: &str = "stockring.db";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt data for {what}: {source}")]
    Corrupt { what: String, source: CodecError },
    #[error("segment {seg} of generation {gen} of {key} is missing")]
    MissingSegment { key: String, gen: u64, seg: u64 },
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

/// SQLite page cache of the node's connections, in KiB.
const PAGE_CACHE_KIB: i64 = 64 * 1024;

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
    // The default page cache (2 MiB) is smaller than the hot part of the journal and the
    // snapshot index under load: key loads and compaction then re-read pages from the OS.
    conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)?;
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
    if found < 2 {
        // v2: the per-key journal index moved into memory (see tails.rs).
        conn.execute_batch(
            "BEGIN; DROP INDEX IF EXISTS journal_by_key; PRAGMA user_version = 2; COMMIT;",
        )?;
    }
    if found < 3 {
        // v3 (cluster): snapshots know their placement hash (a vnode's keys are one hash
        // range, see domain::placement) and when they last changed (a handoff sends what
        // changed since its copy; rows from before the upgrade count as change 1, so a copy,
        // which asks for everything after 0, includes them); fences are a source's durable promise not to write a
        // vnode it is handing over.
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE snapshots ADD COLUMN hash INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE snapshots ADD COLUMN changed INTEGER NOT NULL DEFAULT 1;
             ALTER TABLE orders ADD COLUMN hash INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE orders ADD COLUMN changed INTEGER NOT NULL DEFAULT 1;
             CREATE TABLE cluster_meta (
                 name TEXT PRIMARY KEY,
                 value INTEGER NOT NULL
             );
             CREATE TABLE fences (
                 vnode INTEGER PRIMARY KEY,
                 move_id INTEGER NOT NULL,
                 epoch INTEGER NOT NULL,
                 begun_at INTEGER NOT NULL
             );",
        )?;
        let keys: Vec<String> = conn
            .prepare("SELECT key FROM snapshots")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut set = conn.prepare("UPDATE snapshots SET hash = ?2 WHERE key = ?1")?;
        for key in keys {
            set.execute(params![key, stored_hash(&key)])?;
        }
        drop(set);
        let ids: Vec<String> = conn
            .prepare("SELECT order_id FROM orders")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut set = conn.prepare("UPDATE orders SET hash = ?2 WHERE order_id = ?1")?;
        for id in ids {
            set.execute(params![id, stored_hash(&id)])?;
        }
        drop(set);
        conn.execute_batch(
            "CREATE INDEX snapshots_by_hash ON snapshots(hash, key);
             CREATE INDEX orders_by_hash ON orders(hash, order_id);
             PRAGMA user_version = 3;
             COMMIT;",
        )?;
    }
    if found < 4 {
        // v4: snapshots in a rowid table. In a `WITHOUT ROWID` table a row over ~1 KB (a
        // typical snapshot: it carries the key's remembered ids) spills into an overflow page,
        // so every snapshot write dirtied two pages; a rowid table keeps rows up to ~4 KB on
        // their leaf. Measured with a WAL dump: snapshot pages were most of a commit's frames
        // whenever the writer compacted.
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE snapshots_v4 (
                 key TEXT PRIMARY KEY,
                 version INTEGER NOT NULL,
                 state BLOB NOT NULL,
                 hash INTEGER NOT NULL,
                 changed INTEGER NOT NULL
             );
             INSERT INTO snapshots_v4 (key, version, state, hash, changed)
                 SELECT key, version, state, hash, changed FROM snapshots ORDER BY key;
             DROP TABLE snapshots;
             ALTER TABLE snapshots_v4 RENAME TO snapshots;
             CREATE INDEX snapshots_by_hash ON snapshots(hash, key);
             PRAGMA user_version = 4;
             COMMIT;",
        )?;
    }
    if found < 5 {
        migrate_to_segments(conn)?;
    }
    // Future migrations go here as `if found < N { ... PRAGMA user_version = N; }`.
    Ok(())
}

/// v5: a snapshot holds the key's scalars only; its remembered records (every id within the
/// retention, held or finished) move to segments. A v4 snapshot carried them all, so a
/// flash-sale key's snapshot grew with every refused id (4 MB after 100,000 attempts), and
/// every snapshot rewrote it whole. Each v4 snapshot becomes a v5 row of generation 0 and its
/// records; one transaction, so a crash leaves the file at v4.
fn migrate_to_segments(conn: &Connection) -> Result<(), StorageError> {
    conn.execute_batch(
        "BEGIN;
         ALTER TABLE snapshots ADD COLUMN gen INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE snapshots ADD COLUMN segments INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE snapshots ADD COLUMN gen_records INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE snapshots ADD COLUMN gen_bytes INTEGER NOT NULL DEFAULT 0;
         CREATE TABLE segments (
             key TEXT NOT NULL,
             gen INTEGER NOT NULL,
             seg INTEGER NOT NULL,
             records BLOB NOT NULL,
             hash INTEGER NOT NULL,
             changed INTEGER NOT NULL,
             PRIMARY KEY (key, gen, seg)
         );
         CREATE INDEX segments_by_hash ON segments(hash, key, gen, seg);",
    )?;
    let converted = (|| {
        let mut rows = Vec::new();
        {
            let mut stmt = conn.prepare("SELECT key, state, changed FROM snapshots")?;
            let mut q = stmt.query([])?;
            while let Some(r) = q.next()? {
                rows.push((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                ));
            }
        }
        for (key, blob, changed) in rows {
            let state =
                codec::decode_snapshot_v1(&blob).map_err(|source| StorageError::Corrupt {
                    what: key.clone(),
                    source,
                })?;
            let segments = codec::encode_segments(state.records());
            let mut log = super::keys::SegmentLog {
                records: state.record_count(),
                ..Default::default()
            };
            for blob in &segments {
                conn.prepare_cached(
                    "INSERT INTO segments (key, gen, seg, records, hash, changed)
                     VALUES (?1, 0, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![
                    key,
                    log.count as i64,
                    blob,
                    stored_hash(&key),
                    changed
                ])?;
                log.count += 1;
                log.bytes += blob.len() as u64;
            }
            let scalars = codec::encode_scalars(&state.scalars());
            super::keys::put_row(conn, &key, state.version(), &scalars, &log, changed)?;
        }
        conn.execute_batch("PRAGMA user_version = 5; COMMIT;")?;
        Ok::<(), StorageError>(())
    })();
    if converted.is_err() {
        let _ = conn.execute_batch("ROLLBACK;");
    }
    converted
}

/// A key rebuilt from its snapshot, segments and journal tail (see `keys.rs`).
pub struct LoadedKey {
    pub state: StockState,
    /// Events replayed on top of the snapshot (drives the next snapshot).
    pub tail_events: u64,
    /// The records those events touched: what the next snapshot must store again.
    pub touched: BTreeSet<RecordKey>,
    /// Record states the key's segment generation holds (live or dead).
    pub stored_records: u64,
}

pub use super::keys::load_key;

/// Rebuilds the tail index: every journal row not covered by its key's snapshot.
pub fn scan_tails(conn: &Connection) -> Result<Tails, StorageError> {
    let mut stmt = conn.prepare(
        "SELECT j.seq, j.key, j.version, j.event FROM journal j LEFT JOIN snapshots s ON s.key = j.key
         WHERE s.version IS NULL OR j.version > s.version ORDER BY j.seq",
    )?;
    let mut rows = stmt.query([])?;
    let mut tails = Tails::default();
    let mut keys: std::collections::HashMap<String, Arc<str>> = std::collections::HashMap::new();
    while let Some(row) = rows.next()? {
        let (seq, key, version, event): (i64, String, i64, Vec<u8>) =
            (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
        let key = keys
            .entry(key)
            .or_insert_with_key(|k| Arc::from(k.as_str()))
            .clone();
        let row = Row {
            seq,
            version: version as u64,
            event: event.into_boxed_slice(),
        };
        tails.append(&key, [row]);
    }
    Ok(tails)
}

/// The next rowid the journal will hand out.
pub fn next_journal_rowid(conn: &Connection) -> Result<i64, StorageError> {
    Ok(
        conn.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM journal", [], |r| {
            r.get(0)
        })?,
    )
}

/// Every journal row below this one has been deleted.
pub fn first_journal_rowid(conn: &Connection) -> Result<i64, StorageError> {
    Ok(
        conn.query_row("SELECT COALESCE(MIN(seq), 0) FROM journal", [], |r| {
            r.get(0)
        })?,
    )
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

/// Orders in flight (`reserving`, `committing`, `releasing`) last written before
/// `updated_before_ms`: at start, the ones a crash interrupted; on a live node, the ones no
/// request finished (the sweep's safety net).
pub fn orders_in_flight(
    conn: &Connection,
    updated_before_ms: u64,
) -> Result<Vec<Order>, StorageError> {
    let mut stmt = conn.prepare_cached(
        "SELECT order_id, record FROM orders
         WHERE status IN ('reserving', 'committing', 'releasing') AND updated_at_ms < ?1",
    )?;
    let before = i64::try_from(updated_before_ms).unwrap_or(i64::MAX);
    let rows = stmt.query_map(params![before], |r| {
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

/// Keys of `sku` that have a snapshot. Keys are `sku/warehouse`, and `0` is the byte after
/// `/`, so the range scan covers exactly this SKU's keys. The writer adds keys that so far
/// have only journal rows, from its tail index.
pub fn snapshot_keys_of(conn: &Connection, sku: &str) -> Result<Vec<String>, StorageError> {
    let (lo, hi) = (format!("{sku}/"), format!("{sku}0"));
    let mut stmt = conn.prepare_cached("SELECT key FROM snapshots WHERE key >= ?1 AND key < ?2")?;
    let keys = stmt.query_map(params![lo, hi], |r| r.get::<_, String>(0))?;
    Ok(keys.collect::<Result<_, _>>()?)
}

/// The fences this node holds (see cluster::handoff), as `(vnode, move_id, epoch, begun_at)`.
pub fn load_fences(conn: &Connection) -> Result<Vec<(u32, u64, u64, u64)>, StorageError> {
    let mut stmt = conn.prepare("SELECT vnode, move_id, epoch, begun_at FROM fences")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)? as u32,
            r.get::<_, i64>(1)? as u64,
            r.get::<_, i64>(2)? as u64,
            r.get::<_, i64>(3)? as u64,
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A named counter in `cluster_meta`, if stored.
pub fn meta_value(conn: &Connection, name: &str) -> Result<Option<i64>, StorageError> {
    Ok(conn
        .prepare_cached("SELECT value FROM cluster_meta WHERE name = ?1")?
        .query_row(params![name], |r| r.get(0))
        .optional()?)
}

/// Sets a named counter in `cluster_meta`.
pub fn set_meta(conn: &Connection, name: &str, value: i64) -> Result<(), StorageError> {
    conn.prepare_cached("INSERT OR REPLACE INTO cluster_meta (name, value) VALUES (?1, ?2)")?
        .execute(params![name, value])?;
    Ok(())
}

/// Raises a named counter in `cluster_meta` to `value`; never lowers it.
pub fn raise_meta(conn: &Connection, name: &str, value: i64) -> Result<(), StorageError> {
    conn.prepare_cached(
        "INSERT INTO cluster_meta (name, value) VALUES (?1, ?2)
         ON CONFLICT(name) DO UPDATE SET value = MAX(value, excluded.value)",
    )?
    .execute(params![name, value])?;
    Ok(())
}

/// The version of the newest ring map this node accepted (0 if none): a restarted node never
/// takes an older one (see cluster::handoff::Ownership).
pub fn load_map_floor(conn: &Connection) -> Result<u64, StorageError> {
    Ok(meta_value(conn, MAP_FLOOR)?.unwrap_or(0) as u64)
}

pub const MAP_FLOOR: &str = "map_floor";
pub const STORAGE_ID: &str = "storage_id";

/// This database's identity: a random number made the first time a node opens it and kept in
/// it for good. The cluster knows each member by name *and* by this, so a node restarted
/// under its old name on an empty or replaced disk is recognised (a new identity), not
/// trusted to hold what its name acknowledged (`ControlCommand::Join`). A backup carries it:
/// restoring one is the operator's decision to take that copy as the node's disk.
pub fn storage_id(conn: &Connection) -> Result<u64, StorageError> {
    if let Some(id) = meta_value(conn, STORAGE_ID)? {
        return Ok(id as u64);
    }
    // Positive and non-zero (0 means "not reported" in the control state).
    let id = rand::random::<u64>() >> 2 | 1;
    set_meta(conn, STORAGE_ID, id as i64)?;
    Ok(id)
}
pub const TIME_FLOOR: &str = "time_floor";

/// The node's stored time floor (0 if none): no time above it was served before.
pub fn load_time_floor(conn: &Connection) -> Result<u64, StorageError> {
    Ok(meta_value(conn, TIME_FLOOR)?.unwrap_or(0) as u64)
}
pub const CHANGE_CEILING: &str = "change_ceiling";

/// Change numbers (see `export_page`) are handed out in blocks: before a transaction uses a
/// number above the stored ceiling, it raises the ceiling by this much in the same transaction.
/// So every durable change number is below the stored ceiling, and a start reads one row
/// instead of scanning every snapshot and order for the largest (that scan took ~160 ms and
/// filled the page cache with a million snapshots).
pub const CHANGE_BLOCK: i64 = 1_000_000;

/// Where the next change numbers start: the stored ceiling, or, in a file written before the
/// ceiling existed, the largest change number stored (a scan, once).
pub fn change_ceiling(conn: &Connection) -> Result<i64, StorageError> {
    match meta_value(conn, CHANGE_CEILING)? {
        Some(ceiling) => Ok(ceiling),
        None => Ok(conn.query_row(
            "SELECT MAX((SELECT COALESCE(MAX(changed), 0) FROM snapshots),
                        (SELECT COALESCE(MAX(changed), 0) FROM segments),
                        (SELECT COALESCE(MAX(changed), 0) FROM orders))",
            [],
            |r| r.get(0),
        )?),
    }
}

/// A key's snapshot row, as a handoff carries it (its records travel as `SegmentImage`s).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyImage {
    pub key: String,
    pub version: u64,
    /// The key's scalars (`codec::encode_scalars`).
    pub state: Vec<u8>,
    /// Where its records are.
    pub log: super::keys::SegmentLog,
}

/// One segment of a key's records, as a handoff carries it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SegmentImage {
    pub key: String,
    pub gen: u64,
    pub seg: u64,
    pub records: Vec<u8>,
}

/// An order record, as a handoff carries it (orders live with their order id's vnode).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderImage {
    pub order_id: String,
    pub status: String,
    pub record: Vec<u8>,
    pub updated_at_ms: u64,
}

/// Where an export page continues: after this (hash, id) and, for segments, (gen, seg).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExportCursor {
    pub hash: i64,
    pub id: String,
    pub gen: i64,
    pub seg: i64,
}

/// What an export pass carries: a vnode's key snapshots, their record segments, or its
/// order records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExportPass {
    Keys,
    Segments,
    Orders,
}

/// The bounds of one page: `[lo, hi)` of the hash (`hi` None: to the end), changes after
/// `since`, items after `after`, until about `max_bytes`.
pub struct PageQuery<'a> {
    pub range: (i64, Option<i64>),
    pub since: i64,
    pub after: Option<&'a ExportCursor>,
    pub max_bytes: usize,
}

/// Snapshot rows of a page, in (hash, key) order.
pub fn export_page(
    conn: &Connection,
    q: &PageQuery<'_>,
) -> Result<(Vec<KeyImage>, Option<ExportCursor>), StorageError> {
    page(
        conn,
        "SELECT hash, key, version, state, gen, segments, gen_records, gen_bytes FROM snapshots
         WHERE hash >= ?1 AND hash <= ?2 AND changed > ?3 AND (hash, key) > (?4, ?5)
         ORDER BY hash, key",
        q,
        |row| {
            let (hash, key, version, state): (i64, String, i64, Vec<u8>) =
                (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?);
            let log = super::keys::SegmentLog {
                gen: row.get::<_, i64>(4)? as u64,
                count: row.get::<_, i64>(5)? as u64,
                records: row.get::<_, i64>(6)? as u64,
                bytes: row.get::<_, i64>(7)? as u64,
            };
            let size = key.len() + state.len() + 48;
            let cursor = ExportCursor {
                hash,
                id: key.clone(),
                ..ExportCursor::default()
            };
            let image = KeyImage {
                key,
                version: version as u64,
                state,
                log,
            };
            Ok((image, size, cursor))
        },
    )
}

/// Record segments of a page, in (hash, key, gen, seg) order.
pub fn export_segments_page(
    conn: &Connection,
    q: &PageQuery<'_>,
) -> Result<(Vec<SegmentImage>, Option<ExportCursor>), StorageError> {
    page(
        conn,
        "SELECT hash, key, gen, seg, records FROM segments
         WHERE hash >= ?1 AND hash <= ?2 AND changed > ?3
           AND (hash, key, gen, seg) > (?4, ?5, ?6, ?7)
         ORDER BY hash, key, gen, seg",
        q,
        |row| {
            let (hash, key, gen, seg, records): (i64, String, i64, i64, Vec<u8>) = (
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            );
            let size = key.len() + records.len() + 32;
            let cursor = ExportCursor {
                hash,
                id: key.clone(),
                gen,
                seg,
            };
            let image = SegmentImage {
                key,
                gen: gen as u64,
                seg: seg as u64,
                records,
            };
            Ok((image, size, cursor))
        },
    )
}

/// Order records of a page, in (hash, order id) order.
pub fn export_orders_page(
    conn: &Connection,
    q: &PageQuery<'_>,
) -> Result<(Vec<OrderImage>, Option<ExportCursor>), StorageError> {
    page(
        conn,
        "SELECT hash, order_id, status, record, updated_at_ms FROM orders
         WHERE hash >= ?1 AND hash <= ?2 AND changed > ?3 AND (hash, order_id) > (?4, ?5)
         ORDER BY hash, order_id",
        q,
        |row| {
            let (hash, order_id, status, record, at): (i64, String, String, Vec<u8>, i64) = (
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            );
            let size = order_id.len() + record.len() + 32;
            let cursor = ExportCursor {
                hash,
                id: order_id.clone(),
                ..ExportCursor::default()
            };
            let image = OrderImage {
                order_id,
                status,
                record,
                updated_at_ms: at as u64,
            };
            Ok((image, size, cursor))
        },
    )
}

/// One page of a hash-range export: `sql` selects `hash` first and takes (lo, hi inclusive,
/// since, cursor hash, cursor id) and, if it names them, (cursor gen, cursor seg); `read`
/// turns a row into an item, its size and its cursor.
fn page<T>(
    conn: &Connection,
    sql: &str,
    q: &PageQuery<'_>,
    read: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<(T, usize, ExportCursor)>,
) -> Result<(Vec<T>, Option<ExportCursor>), StorageError> {
    let (lo, hi) = q.range;
    let start = ExportCursor {
        hash: lo,
        id: String::new(),
        gen: -1,
        seg: -1,
    };
    let after = q.after.unwrap_or(&start);
    // `hash <= hi - 1` spelled out so SQLite bounds the index range on both ends (an
    // `?2 IS NULL OR` would make it scan to the end of the index).
    let hi = hi.map_or(i64::MAX, |h| h - 1);
    let mut stmt = conn.prepare_cached(sql)?;
    let binds: [&dyn rusqlite::ToSql; 7] = [
        &lo,
        &hi,
        &q.since,
        &after.hash,
        &after.id,
        &after.gen,
        &after.seg,
    ];
    let used = stmt.parameter_count();
    let mut rows = stmt.query(&binds[..used])?;
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = rows.next()? {
        let (item, size, cursor) = read(row)?;
        bytes += size;
        out.push(item);
        if bytes >= q.max_bytes {
            return Ok((out, Some(cursor)));
        }
    }
    Ok((out, None))
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
