//! Online backup and restore. Backup uses SQLite's backup API on its own read connection, so
//! it runs while the node serves and copies one consistent, committed state. Restore refuses
//! to touch a data directory a running node holds (see `DataDirLock`).

use super::store::{self, StorageError};
use rusqlite::{Connection, OpenFlags, MAIN_DB};
use std::fs::File;
use std::path::{Path, PathBuf};

/// An exclusive lock on a data directory, held for as long as a node serves from it.
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    pub fn acquire(data_dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(data_dir)?;
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(data_dir.join("LOCK"))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(StorageError::Locked(data_dir.to_owned()))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
        }
    }
}

/// Copies the node's database to `to` (a new file). Safe while the node is serving.
pub fn backup(data_dir: &Path, to: &Path) -> Result<(), StorageError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let src = Connection::open_with_flags(store::db_path(data_dir), flags)?;
    src.busy_timeout(std::time::Duration::from_secs(5))?;
    src.backup(MAIN_DB, to, None)?;
    verify(to)
}

/// Replaces the node's database with the backup `from`. The node must be stopped.
pub fn restore(from: &Path, data_dir: &Path) -> Result<(), StorageError> {
    verify(from)?;
    let _lock = DataDirLock::acquire(data_dir)?;
    let db = store::db_path(data_dir);
    for suffix in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{suffix}", db.display()));
        if side.exists() {
            std::fs::remove_file(side)?;
        }
    }
    let tmp = data_dir.join("restore.tmp");
    if tmp.exists() {
        std::fs::remove_file(&tmp)?;
    }
    let src = Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    src.backup(MAIN_DB, &tmp, None)?;
    drop(src);
    File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &db)?;
    File::open(data_dir)?.sync_all()?;
    store::open(&db).map(drop)
}

/// Checks that a file is a sound stockring database this binary can read.
fn verify(path: &Path) -> Result<(), StorageError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(StorageError::CommitFailed(format!(
            "integrity check of {}: {check}",
            path.display()
        )));
    }
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > store::SCHEMA_VERSION {
        return Err(StorageError::SchemaTooNew { found: version });
    }
    Ok(())
}
