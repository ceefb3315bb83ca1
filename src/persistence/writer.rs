//! The group-commit writer: one thread owns the write connection. It takes every request that
//! is waiting (up to `max_batch`), writes them all in one transaction, commits (one fsync), and
//! only then runs their completion callbacks, which release the clients' replies (C2). While it
//! fsyncs, new requests queue up, so the batch grows with the load by itself.
//!
//! Key loads run on this thread too, after the batch's commit: a load queued behind a key's
//! last events (from a passivated actor) therefore always sees them, and never sees anything
//! that is not yet durable.
//!
//! A failed commit leaves the actors' memory ahead of the disk. There is no safe way to go on,
//! so the writer fails every pending request and aborts the process (fail-stop); restart
//! recovers from what is durable.

use super::store::{self, LoadedKey, StorageError};
use crate::domain::order::Order;
use rusqlite::{params, Connection};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Runs on the writer thread once the request is durable (or has failed).
pub type Done = Box<dyn FnOnce(Result<(), StorageError>) + Send>;
pub type KeyReply = Box<dyn FnOnce(Result<LoadedKey, StorageError>) + Send>;
pub type OrderReply = Box<dyn FnOnce(Result<Option<Order>, StorageError>) + Send>;
pub type ListReply = Box<dyn FnOnce(Result<Vec<String>, StorageError>) + Send>;

pub enum Request {
    /// Events of one key, versions `first_version..`, in order.
    Append {
        key: Arc<str>,
        first_version: u64,
        events: Vec<Vec<u8>>,
        done: Done,
    },
    /// A key's state as of `version`; drops the journal rows it covers.
    Snapshot {
        key: Arc<str>,
        version: u64,
        state: Vec<u8>,
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
    /// The warehouses with durable state for a SKU.
    ListWarehouses {
        sku: String,
        reply: ListReply,
    },
    /// Commit everything queued before this, then stop; later submits fail `WriterStopped`.
    Close,
}

impl Request {
    fn is_read(&self) -> bool {
        matches!(
            self,
            Request::LoadKey { .. }
                | Request::LoadOrder { .. }
                | Request::ListWarehouses { .. }
                | Request::Close
        )
    }
}

#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<Request>,
}

impl WriterHandle {
    pub async fn submit(&self, request: Request) -> Result<(), StorageError> {
        self.tx
            .send(request)
            .await
            .map_err(|_| StorageError::WriterStopped)
    }

    pub fn blocking_submit(&self, request: Request) -> Result<(), StorageError> {
        self.tx
            .blocking_send(request)
            .map_err(|_| StorageError::WriterStopped)
    }
}

pub struct Writer {
    pub handle: WriterHandle,
    thread: std::thread::JoinHandle<()>,
}

impl Writer {
    /// Starts the writer on an opened connection. `queue` bounds the requests waiting, so
    /// producers feel backpressure instead of growing memory without limit.
    pub fn start(conn: Connection, max_batch: usize, queue: usize) -> std::io::Result<Self> {
        assert!(max_batch > 0 && queue >= max_batch);
        let (tx, rx) = mpsc::channel(queue);
        let thread = std::thread::Builder::new()
            .name("stockring-writer".into())
            .spawn(move || run(conn, rx, max_batch))?;
        Ok(Self {
            handle: WriterHandle { tx },
            thread,
        })
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

fn run(mut conn: Connection, mut rx: mpsc::Receiver<Request>, max_batch: usize) {
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
        commit_batch(&mut conn, &mut batch);
        if closing {
            break;
        }
    }
    drop(rx);
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "final checkpoint failed; the WAL will be replayed on open");
    }
    tracing::info!("journal writer drained and stopped");
}

fn commit_batch(conn: &mut Connection, batch: &mut Vec<Request>) {
    let started = Instant::now();
    let writes = batch.iter().filter(|r| !r.is_read()).count();
    let result = if writes > 0 {
        write_all(conn, batch)
    } else {
        Ok(0)
    };
    match result {
        Ok(events) => {
            if writes > 0 {
                metrics::histogram!("stockring_group_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("stockring_group_commit_batch_size").record(writes as f64);
                metrics::counter!("stockring_group_commits_total").increment(1);
                metrics::counter!("stockring_journal_events_total").increment(events);
            }
            for request in batch.drain(..) {
                finish(conn, request);
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

/// Writes every request of the batch in one transaction; returns the number of events.
fn write_all(conn: &mut Connection, batch: &[Request]) -> Result<u64, StorageError> {
    let tx = conn.transaction()?;
    let mut events = 0u64;
    {
        let mut append =
            tx.prepare_cached("INSERT INTO journal (key, version, event) VALUES (?1, ?2, ?3)")?;
        let mut snapshot = tx.prepare_cached(
            "INSERT INTO snapshots (key, version, state) VALUES (?1, ?2, ?3)
             ON CONFLICT(key) DO UPDATE SET version = excluded.version, state = excluded.state",
        )?;
        let mut trim = tx.prepare_cached("DELETE FROM journal WHERE key = ?1 AND version <= ?2")?;
        let mut order = tx.prepare_cached(
            "INSERT INTO orders (order_id, status, record, updated_at_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(order_id) DO UPDATE SET status = excluded.status, record = excluded.record,
             updated_at_ms = excluded.updated_at_ms",
        )?;
        for request in batch {
            match request {
                Request::Append {
                    key,
                    first_version,
                    events: blobs,
                    ..
                } => {
                    for (i, blob) in blobs.iter().enumerate() {
                        append.execute(params![
                            &**key,
                            (*first_version + i as u64) as i64,
                            blob
                        ])?;
                    }
                    events += blobs.len() as u64;
                }
                Request::Snapshot {
                    key,
                    version,
                    state,
                    ..
                } => {
                    snapshot.execute(params![&**key, *version as i64, state])?;
                    trim.execute(params![&**key, *version as i64])?;
                }
                Request::PutOrder {
                    order_id,
                    status,
                    record,
                    at_ms,
                    ..
                } => {
                    order.execute(params![order_id, status, record, *at_ms as i64])?;
                }
                Request::Barrier { .. }
                | Request::LoadKey { .. }
                | Request::LoadOrder { .. }
                | Request::ListWarehouses { .. }
                | Request::Close => {}
            }
        }
    }
    tx.commit()?;
    Ok(events)
}

fn finish(conn: &Connection, request: Request) {
    match request {
        Request::Append { done, .. }
        | Request::PutOrder { done, .. }
        | Request::Barrier { done } => done(Ok(())),
        Request::Snapshot { done, .. } => {
            if let Some(done) = done {
                done(Ok(()));
            }
        }
        Request::LoadKey { key, reply } => reply(store::load_key(conn, &key)),
        Request::LoadOrder { order_id, reply } => reply(store::load_order(conn, &order_id)),
        Request::ListWarehouses { sku, reply } => reply(store::warehouses_of(conn, &sku)),
        Request::Close => {}
    }
}

fn fail(request: Request, e: &StorageError) {
    let err = || StorageError::CommitFailed(e.to_string());
    match request {
        Request::Append { done, .. }
        | Request::PutOrder { done, .. }
        | Request::Barrier { done } => done(Err(err())),
        Request::Snapshot { done, .. } => {
            if let Some(done) = done {
                done(Err(err()));
            }
        }
        Request::LoadKey { reply, .. } => reply(Err(err())),
        Request::LoadOrder { reply, .. } => reply(Err(err())),
        Request::ListWarehouses { reply, .. } => reply(Err(err())),
        Request::Close => {}
    }
}
