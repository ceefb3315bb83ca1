//! `raft.db`: the Raft log, vote, committed and purged log ids (this file), and the applied
//! state machine with its snapshot (`state_machine.rs`), in one SQLite file.
//!
//! WAL with `synchronous=FULL`: a statement that returned has been fsync'd, so a vote is saved
//! and a batch of entries is appended (and only then `LogFlushed` is called) before openraft acts
//! on it. One connection behind a mutex serves the log store, its readers and the state machine;
//! every statement runs on tokio's blocking pool, so the runtime threads never wait on a fsync.
//! Calls are awaited one at a time by openraft, which keeps writes in the order it issued them.
//!
//! No disk error panics: each becomes an openraft `StorageError` (`StorageIOError`), which stops
//! Raft on this seed (fail-stop) instead of letting it run on a state it could not persist.

use super::{NodeId, TypeConfig};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

/// The file name of the control plane's database in a node's data dir.
pub(super) const DB_FILE: &str = "raft.db";

/// The schema version this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;

pub(super) type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// What can go wrong inside a database call, before it is mapped to openraft's error.
#[derive(Debug, thiserror::Error)]
pub(super) enum DbError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("{0}")]
    Corrupt(String),
    #[error("the database mutex is poisoned")]
    Poisoned,
    #[error("the blocking task failed: {0}")]
    Join(String),
}

/// MessagePack with field names: a little larger, but tolerant of reordered fields.
pub(super) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, DbError> {
    Ok(rmp_serde::to_vec_named(value)?)
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DbError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

/// The shared connection to `raft.db`.
#[derive(Clone)]
pub(super) struct Db(Arc<Mutex<Connection>>);

impl Db {
    /// Opens (or creates) `raft.db` in `dir`. Blocking.
    pub(super) fn open(dir: &Path) -> Result<Db, DbError> {
        let conn = Connection::open(dir.join(DB_FILE))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(DbError::Corrupt(format!(
                "{DB_FILE} has schema version {version}, newer than this build's {SCHEMA_VERSION}"
            )));
        }
        conn.execute_batch(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS log (
                 idx   INTEGER PRIMARY KEY,
                 term  INTEGER NOT NULL,
                 entry BLOB    NOT NULL
             );
             -- 'vote', 'committed', 'last_purged': one rmp-encoded value each.
             CREATE TABLE IF NOT EXISTS meta (
                 key   TEXT PRIMARY KEY,
                 value BLOB NOT NULL
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS state_machine (
                 id              INTEGER PRIMARY KEY CHECK (id = 1),
                 last_applied    BLOB NOT NULL,
                 last_membership BLOB NOT NULL,
                 state           BLOB NOT NULL
             );
             CREATE TABLE IF NOT EXISTS snapshot (
                 id   INTEGER PRIMARY KEY CHECK (id = 1),
                 meta BLOB NOT NULL,
                 data BLOB NOT NULL
             );
             PRAGMA user_version = 1;
             COMMIT;",
        )?;
        Ok(Db(Arc::new(Mutex::new(conn))))
    }

    /// Runs `f` on the connection, here and now (blocking).
    pub(super) fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let conn = self.0.lock().map_err(|_| DbError::Poisoned)?;
        f(&conn)
    }

    /// A handle that does not keep the connection open (to see when every user has let go).
    pub(super) fn downgrade(&self) -> Weak<Mutex<Connection>> {
        Arc::downgrade(&self.0)
    }

    /// Runs `f` on the connection, on the blocking pool, without holding a runtime thread.
    pub(super) async fn call<T, F>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = db.lock().map_err(|_| DbError::Poisoned)?;
            f(&mut conn)
        })
        .await
        .map_err(|e| DbError::Join(e.to_string()))?
    }

    /// [`Db::call`], with a failure mapped to openraft's storage error about `subject`.
    pub(super) async fn run<T, F>(
        &self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
        f: F,
    ) -> StorageResult<T>
    where
        F: FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        self.call(f)
            .await
            .map_err(|e| storage_error(subject, verb, &e))
    }
}

pub(super) fn storage_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: &DbError,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

fn get_meta<T: DeserializeOwned>(conn: &Connection, key: &str) -> Result<Option<T>, DbError> {
    let blob: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?;
    blob.map(|b| decode(&b)).transpose()
}

fn put_meta<T: Serialize>(conn: &Connection, key: &str, value: &T) -> Result<(), DbError> {
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
        params![key, encode(value)?],
    )?;
    Ok(())
}

/// SQLite integers are signed; a log index never gets near 2^63.
fn sql_index(index: u64) -> i64 {
    i64::try_from(index).unwrap_or(i64::MAX)
}

/// `[start, end)` of a range of log indexes.
fn index_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

/// The Raft log (and the vote): openraft's `RaftLogStorage`, and its own `LogReader`.
#[derive(Clone)]
pub(super) struct LogStore {
    db: Db,
}

impl LogStore {
    pub(super) fn new(db: Db) -> LogStore {
        LogStore { db }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let (start, end) = index_bounds(&range);
        if start >= end {
            return Ok(Vec::new());
        }
        self.db
            .run(ErrorSubject::Logs, ErrorVerb::Read, move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT entry FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
                )?;
                let rows = stmt.query_map(params![sql_index(start), sql_index(end)], |r| {
                    r.get::<_, Vec<u8>>(0)
                })?;
                let mut entries = Vec::new();
                for row in rows {
                    entries.push(decode::<Entry<TypeConfig>>(&row?)?);
                }
                Ok(entries)
            })
            .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        self.db
            .run(ErrorSubject::Logs, ErrorVerb::Read, |conn| {
                let last_purged_log_id: Option<LogId<NodeId>> = get_meta(conn, "last_purged")?;
                let last: Option<Vec<u8>> = conn
                    .query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| {
                        r.get(0)
                    })
                    .optional()?;
                let last_log_id = match last {
                    Some(blob) => Some(decode::<Entry<TypeConfig>>(&blob)?.log_id),
                    None => last_purged_log_id,
                };
                Ok(LogState {
                    last_purged_log_id,
                    last_log_id,
                })
            })
            .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let vote = *vote;
        self.db
            .run(ErrorSubject::Vote, ErrorVerb::Write, move |conn| {
                put_meta(conn, "vote", &vote)
            })
            .await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.db
            .run(ErrorSubject::Vote, ErrorVerb::Read, |conn| {
                get_meta(conn, "vote")
            })
            .await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        self.db
            .run(ErrorSubject::Store, ErrorVerb::Write, move |conn| {
                put_meta(conn, "committed", &committed)
            })
            .await
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        self.db
            .run(ErrorSubject::Store, ErrorVerb::Read, |conn| {
                Ok(get_meta::<Option<LogId<NodeId>>>(conn, "committed")?.flatten())
            })
            .await
    }

    /// Appends in one transaction; `callback` is called only once it has committed (fsync'd).
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        self.db
            .run(ErrorSubject::Logs, ErrorVerb::Write, move |conn| {
                let tx = conn.transaction()?;
                {
                    let mut stmt = tx.prepare_cached(
                        "INSERT OR REPLACE INTO log (idx, term, entry) VALUES (?1, ?2, ?3)",
                    )?;
                    for entry in &entries {
                        stmt.execute(params![
                            sql_index(entry.log_id.index),
                            sql_index(entry.log_id.leader_id.term),
                            encode(entry)?
                        ])?;
                    }
                }
                tx.commit()?;
                Ok(())
            })
            .await?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    /// Deletes the entries from `log_id.index` on (a follower's conflicting suffix).
    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.db
            .run(ErrorSubject::Logs, ErrorVerb::Delete, move |conn| {
                conn.execute("DELETE FROM log WHERE idx >= ?1", [sql_index(log_id.index)])?;
                Ok(())
            })
            .await
    }

    /// Deletes the entries up to `log_id.index` (they are in a snapshot) and remembers the last
    /// one deleted, in one transaction.
    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.db
            .run(ErrorSubject::Logs, ErrorVerb::Delete, move |conn| {
                let tx = conn.transaction()?;
                put_meta(&tx, "last_purged", &log_id)?;
                tx.execute("DELETE FROM log WHERE idx <= ?1", [sql_index(log_id.index)])?;
                tx.commit()?;
                Ok(())
            })
            .await
    }
}
