//! The durable null server's log (`bench-null-server --durable-dir D`): every change the null
//! server makes is appended to a SQLite table (WAL, `synchronous=FULL`) by one thread that
//! group-commits whatever is waiting, and the answer leaves only after its commit.
//!
//! A **floor reference, not an implementation**: no actors, no ledger, no idempotency, no
//! recovery. It measures what HTTP plus a group-committed, fsynced SQLite append costs on this
//! machine, so the gap between the null server and a node can be split into "durability by
//! SQLite" and "everything else stockring does".

use rusqlite::{params, Connection};
use std::path::Path;
use tokio::sync::{mpsc, oneshot};

type Entry = (Vec<u8>, oneshot::Sender<()>);

#[derive(Clone)]
pub struct DurableLog {
    tx: mpsc::Sender<Entry>,
}

impl DurableLog {
    /// Opens (or creates) `dir/null.db` and starts the committing thread.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let conn = Connection::open(dir.join("null.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch("CREATE TABLE IF NOT EXISTS log (seq INTEGER PRIMARY KEY, entry BLOB)")?;
        let (tx, rx) = mpsc::channel(65_536);
        std::thread::Builder::new()
            .name("null-log".into())
            .spawn(move || commit_loop(conn, rx))?;
        Ok(Self { tx })
    }

    /// Returns once `entry` is committed and fsynced.
    pub async fn append(&self, entry: Vec<u8>) -> anyhow::Result<()> {
        let (done, durable) = oneshot::channel();
        self.tx
            .send((entry, done))
            .await
            .map_err(|_| anyhow::anyhow!("log stopped"))?;
        durable.await.map_err(|_| anyhow::anyhow!("commit failed"))
    }
}

fn commit_loop(mut conn: Connection, mut rx: mpsc::Receiver<Entry>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        if let Err(e) = write(&mut conn, &batch) {
            // Dropping the reply ports fails every waiting request.
            tracing::error!(error = %e, "null log commit failed");
            batch.clear();
            continue;
        }
        for (_, done) in batch.drain(..) {
            let _ = done.send(());
        }
    }
}

fn write(conn: &mut Connection, batch: &[Entry]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached("INSERT INTO log (entry) VALUES (?1)")?;
        for (entry, _) in batch {
            insert.execute(params![entry])?;
        }
    }
    tx.commit()
}
