//! Window compaction off the commit path. A key whose oldest journal row falls `window` rows
//! behind is rebuilt from durable data (its stored snapshot plus its committed tail) and its
//! snapshot rewritten, so the journal can be trimmed. The rebuild costs O(remembered ids): on a
//! flash-sale key that remembers every refused id it took ~200 ms, and when the writer did it
//! inside a group commit, every client of the node waited for it (a 312 ms commit, measured).
//!
//! So for a key with a large snapshot the writer only hands out a job (the key and a copy of
//! its committed tail rows); this thread rebuilds it on its own read connection and sends the
//! encoded snapshot back to the writer as `Request::Compacted`. The result names the stored
//! snapshot it was built on (its change number): the writer stores it only if that snapshot is
//! still the stored one. Otherwise an
//! actor's newer snapshot landed meanwhile, perhaps one that forgot ids past retention, and a
//! result built on the older one would bring those ids back.

use super::keys;
use super::store::{self, StorageError};
use super::tails::Row;
use super::writer::{Request, WriterHandle};
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

/// Jobs waiting for the compactor at most; beyond it the writer hands out no more until some
/// come back (the keys stay in the journal a little longer).
const QUEUE: usize = 256;

pub struct Job {
    pub key: Arc<str>,
    /// The key's committed journal rows when the job was handed out.
    pub rows: Vec<Row>,
}

/// What came of a job.
pub enum Compaction {
    /// The key rebuilt at `version` on the stored snapshot with change number `based_on`
    /// (`None`: the key had no snapshot).
    Image {
        version: u64,
        write: super::keys::KeyWrite,
        based_on: Option<i64>,
    },
    /// A snapshot at least as new as the rows was stored meanwhile.
    NothingToDo,
    /// The key could not be rebuilt (logged). It is not handed out again before a restart,
    /// so its rows stay in the journal.
    Failed,
}

pub struct Compactor {
    jobs: SyncSender<Job>,
    thread: std::thread::JoinHandle<()>,
}

impl Compactor {
    /// Opens its own connection to `db` (WAL: it reads while the writer writes) and starts the
    /// thread. Results go to `writer`, held weakly so the compactor never keeps the writer's
    /// queue open by itself.
    pub fn start(db: PathBuf, writer: &WriterHandle) -> Result<Self, StorageError> {
        let conn = store::open(&db)?;
        let writer = writer.downgrade();
        let (jobs, rx) = mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("stockring-compact".into())
            .spawn(move || run(conn, rx, writer))?;
        Ok(Self { jobs, thread })
    }

    /// Hands out a job unless the queue is full (then the job comes back).
    pub fn offer(&self, job: Job) -> Result<(), Job> {
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => Err(job),
        }
    }

    /// Stops taking jobs and waits for the thread (its last results may be dropped: the keys
    /// are compacted again after the next start).
    pub fn join(self) {
        drop(self.jobs);
        if self.thread.join().is_err() {
            tracing::error!("compactor thread panicked");
        }
    }
}

/// Nice value of the compactor thread. Its work is background: on a busy node it would
/// otherwise take a full share of a core for hundreds of ms (one large key) from the request
/// path. At nice 10 it still gets about a tenth of a busy core, so the journal stays bounded.
const NICE: libc::c_int = 10;

fn run(conn: Connection, jobs: Receiver<Job>, writer: super::writer::WeakWriterHandle) {
    lower_priority();
    while let Ok(job) = jobs.recv() {
        let outcome = match rebuild(&conn, &job) {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(key = %job.key, error = %e, "compaction failed; the key's rows stay in the journal");
                Compaction::Failed
            }
        };
        let Some(writer) = writer.upgrade() else {
            return;
        };
        let request = Request::Compacted {
            key: job.key,
            outcome,
        };
        if writer.blocking_submit(request).is_err() {
            return;
        }
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // On Linux the nice value is per thread, and `who = 0` names the calling thread.
    // SAFETY: setpriority takes no pointers; a failure only leaves the priority as it was.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "compactor priority unchanged");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

fn rebuild(conn: &Connection, job: &Job) -> Result<Compaction, StorageError> {
    rebuild_between(conn, job, || {})
}

/// `rebuild`, with `between` run after the snapshot row is read and before its segments are
/// (where a test puts the writer's concurrent rewrite).
///
/// Both reads are in one read transaction: in WAL mode it sees the file as of its first read.
/// Read separately, a rewrite committed between them (a new generation, the old one deleted)
/// left the row naming segments that no longer exist: `MissingSegment`, the job `Failed`, and
/// the key kept out of compaction until a restart while its rows pinned the journal.
fn rebuild_between(
    conn: &Connection,
    job: &Job,
    between: impl FnOnce(),
) -> Result<Compaction, StorageError> {
    let read = conn.unchecked_transaction()?;
    let snapshot = keys::read_key(&read, &job.key)?;
    between();
    let segments = match &snapshot {
        Some(s) => keys::read_segments(&read, &job.key, &s.log)?,
        None => Vec::new(),
    };
    drop(read);
    let stored = snapshot.as_ref().map(|s| (s, segments.as_slice()));
    let loaded = keys::rebuild(&job.key, stored, &job.rows)?;
    if loaded.tail_events == 0 {
        return Ok(Compaction::NothingToDo);
    }
    Ok(Compaction::Image {
        version: loaded.state.version(),
        write: super::writer::compaction_write(&loaded),
        based_on: snapshot.map(|s| s.changed),
    })
}

#[cfg(test)]
#[path = "compactor_tests.rs"]
mod tests;
