//! The group-commit writer: one thread owns the write connection. It takes every request that
//! is waiting (up to `max_batch`), writes them all in one transaction, commits (one fsync), and
//! only then runs their completion callbacks, which release the clients' replies (C2). While it
//! fsyncs, new requests queue up, so the batch grows with the load by itself.
//!
//! Key loads run on this thread too, after the batch's commit: a load queued behind a key's
//! last events (from a passivated actor) therefore always sees them, and never sees anything
//! that is not yet durable.
//!
//! The journal is append-only; the writer keeps each key's live rows in memory (`Tails`),
//! compacts keys whose rows fall `window` rows behind the newest (rebuilds the key from durable
//! data and writes its snapshot: in the commit for a small key, on the compactor thread for a
//! large one, see `compactor.rs`), and deletes journal rows in ranges once every key's
//! snapshot covers them.
//!
//! A failed commit leaves the actors' memory ahead of the disk. There is no safe way to go on,
//! so the writer fails every pending request and aborts the process (fail-stop); restart
//! recovers from what is durable.

use super::compactor::{Compaction, Compactor, Job};
use super::keys::{self, KeyWrite};
use super::store::{
    self, ExportCursor, ExportPass, KeyImage, LoadedKey, OrderImage, PageQuery, SegmentImage,
    StorageError,
};
use super::tails::{Row, Tails};
use crate::domain::order::Order;
use crate::domain::placement::stored_hash;
use rusqlite::{params, Connection};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Runs on the writer thread once the request is durable (or has failed).
pub type Done = Box<dyn FnOnce(Result<(), StorageError>) + Send>;
pub type KeyReply = Box<dyn FnOnce(Result<LoadedKey, StorageError>) + Send>;
pub type OrderReply = Box<dyn FnOnce(Result<Option<Order>, StorageError>) + Send>;
pub type ListReply = Box<dyn FnOnce(Result<Vec<String>, StorageError>) + Send>;
pub type OrdersReply = Box<dyn FnOnce(Result<Vec<Order>, StorageError>) + Send>;

pub enum Request {
    /// Events of one key, versions `first_version..`, in order.
    Append {
        key: Arc<str>,
        first_version: u64,
        events: Vec<Vec<u8>>,
        done: Done,
    },
    /// A key's state as of `version` (see `keys.rs`); covers the key's journal rows up to it.
    Snapshot {
        key: Arc<str>,
        version: u64,
        write: KeyWrite,
        done: Option<Done>,
    },
    PutOrder {
        order_id: String,
        status: &'static str,
        record: Vec<u8>,
        at_ms: u64,
        done: Done,
    },
    /// Writes nothing; completes once everything queued before it is durable.
    Barrier {
        done: Done,
    },
    LoadKey {
        key: Arc<str>,
        reply: KeyReply,
    },
    LoadOrder {
        order_id: String,
        reply: OrderReply,
    },
    /// Orders in flight last written before `updated_before_ms` (see `store::orders_in_flight`).
    OrdersInFlight {
        updated_before_ms: u64,
        reply: OrdersReply,
    },
    /// The warehouses with durable state for a SKU.
    ListWarehouses {
        sku: String,
        reply: ListReply,
    },
    /// Handoff, source side: one page of what the vnode whose placement hashes are `range`
    /// holds (key snapshots, their record segments, or order records), changed after
    /// `since`. The first page of keys (`after` None) first folds those keys' journal tails
    /// into snapshots and segments, so that those are the whole durable state.
    Export {
        range: (i64, Option<i64>),
        pass: ExportPass,
        since: i64,
        after: Option<ExportCursor>,
        max_bytes: usize,
        reply: ExportReply,
    },
    /// Handoff, target side: keys' state from their previous owner. A key image replaces
    /// whatever this node had of the key (stale journal rows and segments from an earlier
    /// ownership included); segments are stored as they come.
    Import {
        images: Vec<KeyImage>,
        segments: Vec<SegmentImage>,
        orders: Vec<OrderImage>,
        done: Done,
    },
    /// A durable fence (see cluster::handoff): `(vnode, move_id, epoch, begun_at)`.
    PutFence {
        fence: (u32, u64, u64, u64),
        done: Done,
    },
    /// Deletes the fence of that move (not a newer one on the same vnode).
    DeleteFence {
        vnode: u32,
        move_id: u64,
    },
    /// The newest ring map version this node accepted (never lowered).
    SetMapFloor {
        version: u64,
    },
    /// The node's time floor: no time above it has been served (see `actors::clock`).
    /// Raised, never lowered, unless `exact`: at a clean stop, set to the largest time
    /// served (then a restart has nothing to wait out).
    SetTimeFloor {
        floor: u64,
        exact: bool,
        done: Done,
    },
    /// A key rebuilt by the compactor; stored only if the snapshot it was built on is still
    /// the stored one.
    Compacted {
        key: Arc<str>,
        outcome: Compaction,
    },
    /// Commit everything queued before this, then stop; later submits fail `WriterStopped`.
    Close,
}

/// A page of an export and the change number it is complete up to (for the first page: every
/// snapshot change up to it is in this export; later changes have larger numbers).
pub struct ExportPage {
    pub images: Vec<KeyImage>,
    pub segments: Vec<SegmentImage>,
    pub orders: Vec<OrderImage>,
    pub next: Option<ExportCursor>,
    pub changed_upto: i64,
}

pub type ExportReply = Box<dyn FnOnce(Result<ExportPage, StorageError>) + Send>;

impl Request {
    fn is_read(&self) -> bool {
        matches!(
            self,
            Request::LoadKey { .. }
                | Request::LoadOrder { .. }
                | Request::ListWarehouses { .. }
                | Request::OrdersInFlight { .. }
                | Request::Close
                | Request::Compacted {
                    outcome: Compaction::NothingToDo | Compaction::Failed,
                    ..
                }
        )
    }
}

#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Request>,
}

/// A handle that does not keep the writer's queue open.
pub struct WeakWriterHandle(mpsc::WeakSender<Request>);

impl WeakWriterHandle {
    pub fn upgrade(&self) -> Option<WriterHandle> {
        self.0.upgrade().map(|tx| WriterHandle { tx })
    }
}

impl WriterHandle {
    pub async fn submit(&self, request: Request) -> Result<(), StorageError> {
        self.tx
            .send(request)
            .await
            .map_err(|_| StorageError::WriterStopped)
    }

    /// Queues without waiting; fails if the queue is full (the caller retries later).
    pub fn try_submit(&self, request: Request) -> Result<(), StorageError> {
        self.tx
            .try_send(request)
            .map_err(|_| StorageError::WriterStopped)
    }

    pub fn blocking_submit(&self, request: Request) -> Result<(), StorageError> {
        self.tx
            .blocking_send(request)
            .map_err(|_| StorageError::WriterStopped)
    }

    pub fn downgrade(&self) -> WeakWriterHandle {
        WeakWriterHandle(self.tx.downgrade())
    }

    /// A handle whose requests go to the returned queue and nowhere else: for tests that
    /// play the writer (or a writer that never answers).
    #[cfg(test)]
    pub(crate) fn detached(queue: usize) -> (Self, mpsc::Receiver<Request>) {
        let (tx, rx) = mpsc::channel(queue);
        (Self { tx }, rx)
    }
}

/// Most keys compacted (or handed to the compactor) per group commit, so compaction never
/// stalls the commit loop for long.
const COMPACT_PER_COMMIT: usize = 64;
/// Keys with a larger stored snapshot are rebuilt on the compactor thread; smaller ones in the
/// commit, where their pages are hot (handing out every key cost up to ~8 % more CPU per
/// request under uniform load, in two of three measured runs). A 4 MB snapshot took ~200 ms
/// to rebuild.
const INLINE_COMPACTION_BYTES: u64 = 64 * 1024;
/// Covered journal rows are deleted once at least this many have accumulated.
const TRIM_MIN_ROWS: i64 = 10_000;
/// Most journal rows deleted by one commit. Compacting one large key can move the horizon by
/// the whole window at once: deleting 100,000 rows in one commit took ~125 ms (measured), and
/// every client waited for it; spread over commits, each pays ~10 ms at most.
const TRIM_MAX_ROWS: i64 = 10_000;

pub struct Writer {
    pub handle: WriterHandle,
    thread: std::thread::JoinHandle<()>,
}

/// The writer thread's state: the connection and the in-memory index of live journal rows.
struct Journal {
    conn: Connection,
    tails: Tails,
    next_rowid: i64,
    trimmed_below: i64,
    window: i64,
    /// The last snapshot change number handed out.
    changed: i64,
    /// Every change number up to this one may be used without storing a new ceiling.
    change_ceiling: i64,
    compactor: Compactor,
    /// Keys handed to the compactor and not back yet (or failed: never handed out again).
    compacting: HashSet<Arc<str>>,
}

/// What a committed transaction changed in the tail index, applied only after the commit.
enum TailChange {
    Appended(Arc<str>, Vec<Row>),
    Covered(Arc<str>, u64),
}

impl Writer {
    /// Starts the writer on an opened connection. `queue` bounds the requests waiting, so
    /// producers feel backpressure instead of growing memory without limit; `window` is the
    /// compaction window in journal rows (`journal_compact_window_rows` in the config).
    pub fn start_with_window(
        conn: Connection,
        max_batch: usize,
        queue: usize,
        window: i64,
    ) -> Result<Self, StorageError> {
        assert!(max_batch > 0 && queue >= max_batch && window > 0);
        let tails = store::scan_tails(&conn)?;
        let next_rowid = store::next_journal_rowid(&conn)?;
        let trimmed_below = store::first_journal_rowid(&conn)?;
        let changed = store::change_ceiling(&conn)?;
        tracing::info!(
            live_rows = tails.live_rows(),
            keys = tails.keys(),
            "journal tail index rebuilt"
        );
        let db = match conn.path() {
            Some(path) if !path.is_empty() => std::path::PathBuf::from(path),
            _ => {
                return Err(StorageError::Io(std::io::Error::other(
                    "the journal must be a file (the compactor opens its own connection)",
                )))
            }
        };
        let (tx, rx) = mpsc::channel(queue);
        let handle = WriterHandle { tx };
        let journal = Journal {
            conn,
            tails,
            next_rowid,
            trimmed_below,
            window,
            changed,
            change_ceiling: changed,
            compactor: Compactor::start(db, &handle)?,
            compacting: HashSet::new(),
        };
        let thread = std::thread::Builder::new()
            .name("stockring-writer".into())
            .spawn(move || run(journal, rx, max_batch))?;
        Ok(Self { handle, thread })
    }

    /// Commits everything queued so far, stops the thread and waits for it. Blocking.
    pub fn join(self) {
        let _ = self.handle.blocking_submit(Request::Close);
        drop(self.handle);
        if self.thread.join().is_err() {
            tracing::error!("journal writer thread panicked");
        }
    }
}

fn run(mut j: Journal, mut rx: mpsc::Receiver<Request>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut closing = false;
    while let Some(first) = rx.blocking_recv() {
        closing |= matches!(first, Request::Close);
        batch.push(first);
        while batch.len() < max_batch && !closing {
            match rx.try_recv() {
                Ok(r) => {
                    closing |= matches!(r, Request::Close);
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        commit_batch(&mut j, &mut batch);
        if closing {
            break;
        }
    }
    drop(rx);
    let Journal {
        conn,
        tails,
        next_rowid,
        compactor,
        ..
    } = j;
    // Its connection closes before the checkpoint below, which must not wait for a reader.
    compactor.join();
    // Every actor snapshotted on drain: leave no covered rows for the next start to scan.
    let horizon = tails.trim_horizon(next_rowid);
    if let Err(e) = conn.execute("DELETE FROM journal WHERE seq < ?1", params![horizon]) {
        tracing::warn!(error = %e, "final journal trim failed; the next start scans more");
    }
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "final checkpoint failed; the WAL will be replayed on open");
    }
    tracing::info!("journal writer drained and stopped");
}

fn commit_batch(j: &mut Journal, batch: &mut Vec<Request>) {
    let started = Instant::now();
    let writes = batch.iter().filter(|r| !r.is_read()).count();
    match write_all(j, batch) {
        Ok((events, changes)) => {
            for change in changes {
                match change {
                    TailChange::Appended(key, rows) => j.tails.append(&key, rows),
                    TailChange::Covered(key, version) => j.tails.covered(&key, version),
                }
            }
            if writes > 0 {
                metrics::histogram!("stockring_group_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("stockring_group_commit_batch_size").record(writes as f64);
                metrics::counter!("stockring_group_commits_total").increment(1);
                metrics::counter!("stockring_journal_events_total").increment(events);
            }
            metrics::gauge!("stockring_journal_live_rows").set(j.tails.live_rows() as f64);
            for request in batch.drain(..) {
                finish(j, request);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "group commit failed; failing the batch and aborting");
            for request in batch.drain(..) {
                fail(request, &e);
            }
            std::process::abort();
        }
    }
}

/// Writes the batch (with any compactions that came back), a little compaction and a trim in
/// one transaction. Returns the number of
/// events and the tail-index changes to apply once the commit succeeded.
fn write_all(
    j: &mut Journal,
    batch: &mut [Request],
) -> Result<(u64, Vec<TailChange>), StorageError> {
    let compact = j
        .tails
        .older_than(j.next_rowid - j.window, COMPACT_PER_COMMIT, |k| {
            j.compacting.contains(k)
        });
    let horizon = j.tails.trim_horizon(j.next_rowid);
    let trim = horizon - j.trimmed_below >= TRIM_MIN_ROWS.min(j.window);
    if batch.iter().all(Request::is_read) && compact.is_empty() && !trim {
        return Ok((0, Vec::new()));
    }
    let mut changes = Vec::new();
    let mut events = 0u64;
    let tx = j.conn.transaction()?;
    {
        let mut append = tx.prepare_cached(
            "INSERT INTO journal (seq, key, version, event) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut order = tx.prepare_cached(
            "INSERT INTO orders (order_id, status, record, updated_at_ms, hash, changed)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(order_id) DO UPDATE SET status = excluded.status, record = excluded.record,
             updated_at_ms = excluded.updated_at_ms, changed = excluded.changed",
        )?;
        for request in batch {
            match request {
                Request::Append {
                    key,
                    first_version,
                    events: blobs,
                    ..
                } => {
                    let mut rows = Vec::with_capacity(blobs.len());
                    // The bytes move into the tail index; `done` is all the request still needs.
                    for (i, blob) in std::mem::take(blobs).into_iter().enumerate() {
                        let version = *first_version + i as u64;
                        append.execute(params![j.next_rowid, &**key, version as i64, blob])?;
                        rows.push(Row {
                            seq: j.next_rowid,
                            version,
                            event: blob.into_boxed_slice(),
                        });
                        j.next_rowid += 1;
                    }
                    events += rows.len() as u64;
                    changes.push(TailChange::Appended(key.clone(), rows));
                }
                Request::Snapshot {
                    key,
                    version,
                    write,
                    ..
                } => {
                    if keys::put_key(&tx, key, *version, write, &mut j.changed)? {
                        changes.push(TailChange::Covered(key.clone(), *version));
                    }
                }
                Request::Export {
                    range,
                    pass: ExportPass::Keys,
                    after: None,
                    ..
                } => {
                    for key in j.tails.keys_in_hash_range(*range) {
                        let loaded = keys::load_key(&tx, &key, j.tails.rows_of(&key))?;
                        let version = loaded.state.version();
                        let write = compaction_write(&loaded);
                        if keys::put_key(&tx, &key, version, &write, &mut j.changed)? {
                            changes.push(TailChange::Covered(key, version));
                        }
                    }
                }
                Request::Import {
                    images,
                    segments,
                    orders,
                    ..
                } => {
                    for o in orders {
                        j.changed += 1;
                        order.execute(params![
                            o.order_id,
                            o.status,
                            o.record,
                            o.updated_at_ms as i64,
                            stored_hash(&o.order_id),
                            j.changed
                        ])?;
                    }
                    let mut drop_row = tx.prepare_cached("DELETE FROM journal WHERE seq = ?1")?;
                    for image in images {
                        // A key's version only grows, also across owners: an image older
                        // than what is here is a late page of a superseded move. Skip it. At
                        // an equal version, the later generation of its records wins (a
                        // rewrite keeps the version).
                        let stored = keys::read_key(&tx, &image.key)?;
                        let tail = j.tails.rows_of(&image.key).last().map_or(0, |r| r.version);
                        let newer_here = tail > image.version
                            || stored.is_some_and(|s| {
                                (s.version, s.log.gen) > (image.version, image.log.gen)
                            });
                        if newer_here {
                            continue;
                        }
                        for row in j.tails.rows_of(&image.key) {
                            drop_row.execute(params![row.seq])?;
                        }
                        // Segments of other generations are stale copies (from an earlier
                        // ownership, or replaced since): the image's own come in its pages.
                        tx.prepare_cached("DELETE FROM segments WHERE key = ?1 AND gen <> ?2")?
                            .execute(params![image.key, image.log.gen as i64])?;
                        j.changed += 1;
                        keys::put_row(
                            &tx,
                            &image.key,
                            image.version,
                            &image.state,
                            &image.log,
                            j.changed,
                        )?;
                        changes.push(TailChange::Covered(Arc::from(image.key.as_str()), u64::MAX));
                    }
                    for segment in segments {
                        j.changed += 1;
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO segments (key, gen, seg, records, hash, changed)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )?
                        .execute(params![
                            segment.key,
                            segment.gen as i64,
                            segment.seg as i64,
                            segment.records,
                            stored_hash(&segment.key),
                            j.changed
                        ])?;
                    }
                }
                Request::PutFence { fence, .. } => {
                    let (vnode, move_id, epoch, begun_at) = *fence;
                    // Never over a newer move's fence (move ids only grow): a late write
                    // of an older move's fence would make a restarted source lift the
                    // wrong one.
                    tx.prepare_cached(
                        "INSERT INTO fences (vnode, move_id, epoch, begun_at)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT(vnode) DO UPDATE SET move_id = excluded.move_id,
                             epoch = excluded.epoch, begun_at = excluded.begun_at
                         WHERE excluded.move_id > fences.move_id",
                    )?
                    .execute(params![
                        vnode,
                        move_id as i64,
                        epoch as i64,
                        begun_at as i64
                    ])?;
                }
                Request::SetMapFloor { version } => {
                    store::raise_meta(&tx, store::MAP_FLOOR, *version as i64)?;
                }
                Request::SetTimeFloor { floor, exact, .. } => {
                    let floor = i64::try_from(*floor).unwrap_or(i64::MAX);
                    if *exact {
                        store::set_meta(&tx, store::TIME_FLOOR, floor)?;
                    } else {
                        store::raise_meta(&tx, store::TIME_FLOOR, floor)?;
                    }
                }
                Request::DeleteFence { vnode, move_id } => {
                    tx.prepare_cached("DELETE FROM fences WHERE vnode = ?1 AND move_id = ?2")?
                        .execute(params![*vnode, *move_id as i64])?;
                }
                Request::PutOrder {
                    order_id,
                    status,
                    record,
                    at_ms,
                    ..
                } => {
                    j.changed += 1;
                    order.execute(params![
                        &*order_id,
                        *status,
                        &*record,
                        *at_ms as i64,
                        stored_hash(order_id),
                        j.changed
                    ])?;
                }
                Request::Compacted {
                    key,
                    outcome:
                        Compaction::Image {
                            version,
                            write,
                            based_on,
                        },
                } => {
                    if put_compaction(&tx, key, *version, write, *based_on, &mut j.changed)? {
                        changes.push(TailChange::Covered(key.clone(), *version));
                        metrics::counter!("stockring_journal_compactions_total").increment(1);
                    } else {
                        metrics::counter!("stockring_journal_compactions_superseded_total")
                            .increment(1);
                    }
                }
                Request::Export { .. }
                | Request::Compacted { .. }
                | Request::Barrier { .. }
                | Request::LoadKey { .. }
                | Request::LoadOrder { .. }
                | Request::ListWarehouses { .. }
                | Request::OrdersInFlight { .. }
                | Request::Close => {}
            }
        }
        for key in compact {
            let offload = (&j.compactor, &mut j.compacting);
            compact_key(&tx, &j.tails, offload, &mut j.changed, key, &mut changes)?;
        }
        if trim {
            // Every row below the horizon is covered by a committed snapshot.
            let below = horizon.min(j.trimmed_below + TRIM_MAX_ROWS);
            tx.prepare_cached("DELETE FROM journal WHERE seq < ?1")?
                .execute(params![below])?;
            j.trimmed_below = below;
        }
    }
    let ceiling = (j.changed > j.change_ceiling).then(|| j.changed + store::CHANGE_BLOCK);
    if let Some(ceiling) = ceiling {
        // Stored in the transaction that is about to use numbers up to it.
        store::raise_meta(&tx, store::CHANGE_CEILING, ceiling)?;
    }
    tx.commit()?;
    if let Some(ceiling) = ceiling {
        j.change_ceiling = ceiling;
    }
    Ok((events, changes))
}

/// The snapshot write of a key rebuilt from durable data: the records its journal tail
/// touched, appended (or its live records as a new generation, when the stored ones are
/// mostly dead).
pub(super) fn compaction_write(loaded: &LoadedKey) -> KeyWrite {
    KeyWrite::of(&loaded.state, &loaded.touched, loaded.stored_records)
}

/// Compacts a key that fell out of the window: in this transaction if its records are
/// small, else hands it to the compactor (if that is busy, a later commit tries again).
fn compact_key(
    tx: &Connection,
    tails: &Tails,
    (compactor, compacting): (&Compactor, &mut HashSet<Arc<str>>),
    changed: &mut i64,
    key: Arc<str>,
    changes: &mut Vec<TailChange>,
) -> Result<(), StorageError> {
    if keys::stored_bytes(tx, &key)?.is_some_and(|b| b > INLINE_COMPACTION_BYTES) {
        let job = Job {
            rows: tails.rows_of(&key).to_vec(),
            key: key.clone(),
        };
        if compactor.offer(job).is_ok() {
            compacting.insert(key);
        }
        return Ok(());
    }
    // Rebuilt from durable data only: the stored snapshot (maybe just written by this batch)
    // plus the rows committed before this batch. A newer one is never replaced.
    let loaded = keys::load_key(tx, &key, tails.rows_of(&key))?;
    let version = loaded.state.version();
    if keys::put_key(tx, &key, version, &compaction_write(&loaded), changed)? {
        changes.push(TailChange::Covered(key, version));
        metrics::counter!("stockring_journal_compactions_total").increment(1);
    }
    Ok(())
}

/// Stores a compacted key if the snapshot it was built on (`based_on`, a change number;
/// `None`: no snapshot) is still the stored one: an actor may have written a newer one
/// meanwhile, and the result would undo it. Returns whether it was stored.
fn put_compaction(
    tx: &Connection,
    key: &str,
    version: u64,
    write: &KeyWrite,
    based_on: Option<i64>,
    changed: &mut i64,
) -> Result<bool, StorageError> {
    let current = keys::read_key(tx, key)?.map(|k| k.changed);
    if current != based_on {
        return Ok(false);
    }
    keys::put_key(tx, key, version, write, changed)
}

fn finish(j: &mut Journal, request: Request) {
    match request {
        Request::Append { done, .. }
        | Request::PutOrder { done, .. }
        | Request::Import { done, .. }
        | Request::PutFence { done, .. }
        | Request::SetTimeFloor { done, .. }
        | Request::Barrier { done } => done(Ok(())),
        Request::Export {
            range,
            pass,
            since,
            after,
            max_bytes,
            reply,
        } => {
            let q = PageQuery {
                range,
                since,
                after: after.as_ref(),
                max_bytes,
            };
            let mut page = ExportPage {
                images: Vec::new(),
                segments: Vec::new(),
                orders: Vec::new(),
                next: None,
                changed_upto: j.changed,
            };
            let next = match pass {
                ExportPass::Keys => store::export_page(&j.conn, &q).map(|(items, next)| {
                    page.images = items;
                    next
                }),
                ExportPass::Segments => {
                    store::export_segments_page(&j.conn, &q).map(|(items, next)| {
                        page.segments = items;
                        next
                    })
                }
                ExportPass::Orders => {
                    store::export_orders_page(&j.conn, &q).map(|(items, next)| {
                        page.orders = items;
                        next
                    })
                }
            };
            reply(next.map(|next| ExportPage { next, ..page }))
        }
        Request::DeleteFence { .. } | Request::SetMapFloor { .. } => {}
        Request::Compacted { key, outcome } => {
            if !matches!(outcome, Compaction::Failed) {
                j.compacting.remove(&key);
            }
        }
        Request::Snapshot { done, .. } => {
            if let Some(done) = done {
                done(Ok(()));
            }
        }
        Request::LoadKey { key, reply } => {
            reply(keys::load_key(&j.conn, &key, j.tails.rows_of(&key)))
        }
        Request::LoadOrder { order_id, reply } => reply(store::load_order(&j.conn, &order_id)),
        Request::ListWarehouses { sku, reply } => reply(warehouses_of(j, &sku)),
        Request::OrdersInFlight {
            updated_before_ms,
            reply,
        } => reply(store::orders_in_flight(&j.conn, updated_before_ms)),
        Request::Close => {}
    }
}

/// Warehouses with durable state for `sku`: keys with a snapshot or with live journal rows.
fn warehouses_of(j: &Journal, sku: &str) -> Result<Vec<String>, StorageError> {
    let mut keys = store::snapshot_keys_of(&j.conn, sku)?;
    let prefix = format!("{sku}/");
    keys.extend(j.tails.keys_with_prefix(&prefix).map(|k| k.to_string()));
    keys.sort();
    keys.dedup();
    Ok(keys
        .iter()
        .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
        .collect())
}

fn fail(request: Request, e: &StorageError) {
    let err = || StorageError::CommitFailed(e.to_string());
    match request {
        Request::Append { done, .. }
        | Request::PutOrder { done, .. }
        | Request::Import { done, .. }
        | Request::PutFence { done, .. }
        | Request::SetTimeFloor { done, .. }
        | Request::Barrier { done } => done(Err(err())),
        Request::Export { reply, .. } => reply(Err(err())),
        Request::DeleteFence { .. } | Request::SetMapFloor { .. } | Request::Compacted { .. } => {}
        Request::Snapshot { done, .. } => {
            if let Some(done) = done {
                done(Err(err()));
            }
        }
        Request::LoadKey { reply, .. } => reply(Err(err())),
        Request::LoadOrder { reply, .. } => reply(Err(err())),
        Request::ListWarehouses { reply, .. } => reply(Err(err())),
        Request::OrdersInFlight { reply, .. } => reply(Err(err())),
        Request::Close => {}
    }
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;
