//! The Raft state machine: the applied [`ControlState`], persisted in `raft.db`.
//!
//! Each apply batch writes `(last_applied, last_membership, ControlState)` in one transaction,
//! so after a restart the state machine is exactly what was applied, and openraft re-applies
//! only the committed entries after it. A snapshot is the rmp encoding of that same triple; the
//! current one is kept in the `snapshot` table (built here, or received from the leader).

use super::store::{decode, encode, storage_error, Db, DbError, StorageResult};
use super::{NodeId, TypeConfig};
use crate::cluster::control::{ControlResponse, ControlState};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftSnapshotBuilder, SnapshotMeta, StoredMembership,
};
use rusqlite::{params, Connection, OptionalExtension};
use std::io::Cursor;
use std::sync::Arc;
use tokio::sync::watch;

type Membership = StoredMembership<NodeId, BasicNode>;

/// The snapshot payload, as encoded (the borrowed twin of [`SnapshotData`]).
type SnapshotDataRef<'a> = (&'a Option<LogId<NodeId>>, &'a Membership, &'a ControlState);
type SnapshotData = (Option<LogId<NodeId>>, Membership, ControlState);

/// What the state machine has applied.
#[derive(Clone, Default)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    state: Arc<ControlState>,
}

impl Applied {
    fn encode_snapshot(&self) -> Result<Vec<u8>, DbError> {
        let data: SnapshotDataRef = (&self.last_applied, &self.membership, &self.state);
        encode(&data)
    }

    /// Writes the applied state (the single row of `state_machine`); inside the caller's
    /// transaction.
    fn save(&self, conn: &Connection) -> Result<(), DbError> {
        conn.execute(
            "INSERT OR REPLACE INTO state_machine (id, last_applied, last_membership, state)
             VALUES (1, ?1, ?2, ?3)",
            params![
                encode(&self.last_applied)?,
                encode(&self.membership)?,
                encode(&*self.state)?
            ],
        )?;
        Ok(())
    }

    fn load(conn: &Connection) -> Result<Applied, DbError> {
        let row: Option<(Vec<u8>, Vec<u8>, Vec<u8>)> = conn
            .query_row(
                "SELECT last_applied, last_membership, state FROM state_machine WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((last_applied, membership, state)) = row else {
            return Ok(Applied::default());
        };
        Ok(Applied {
            last_applied: decode(&last_applied)?,
            membership: decode(&membership)?,
            state: Arc::new(decode(&state)?),
        })
    }
}

fn save_snapshot(
    conn: &Connection,
    meta: &SnapshotMeta<NodeId, BasicNode>,
    data: &[u8],
) -> Result<(), DbError> {
    conn.execute(
        "INSERT OR REPLACE INTO snapshot (id, meta, data) VALUES (1, ?1, ?2)",
        params![encode(meta)?, data],
    )?;
    Ok(())
}

pub(super) struct StateMachineStore {
    db: Db,
    applied: Applied,
    /// Every apply batch publishes the new state here.
    published: Arc<watch::Sender<Arc<ControlState>>>,
}

impl StateMachineStore {
    /// Loads the applied state from `raft.db`. Blocking.
    pub(super) fn open(db: Db, conn: &Connection) -> Result<StateMachineStore, DbError> {
        let applied = Applied::load(conn)?;
        let (published, _) = watch::channel(applied.state.clone());
        Ok(StateMachineStore {
            db,
            applied,
            published: Arc::new(published),
        })
    }

    /// Where the applied state is published: the façade reads and subscribes through it.
    pub(super) fn publisher(&self) -> Arc<watch::Sender<Arc<ControlState>>> {
        self.published.clone()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<ControlResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut next = self.applied.clone();
        let mut responses = Vec::new();
        let mut changed = false;
        for entry in entries {
            next.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => ControlResponse::Done,
                EntryPayload::Normal(cmd) => {
                    changed = true;
                    Arc::make_mut(&mut next.state).apply(&cmd)
                }
                EntryPayload::Membership(m) => {
                    next.membership = StoredMembership::new(Some(entry.log_id), m);
                    ControlResponse::Done
                }
            };
            responses.push(response);
        }
        if responses.is_empty() {
            return Ok(responses);
        }
        let subject = match next.last_applied {
            Some(log_id) => ErrorSubject::Apply(log_id),
            None => ErrorSubject::StateMachine,
        };
        let to_save = next.clone();
        self.db
            .run(subject, ErrorVerb::Write, move |conn| {
                let tx = conn.transaction()?;
                to_save.save(&tx)?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        if changed {
            self.published.send_replace(next.state.clone());
        }
        self.applied = next;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            applied: self.applied.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// Replaces the state with the leader's snapshot and keeps the snapshot as the current one,
    /// in one transaction.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_inner();
        let (last_applied, membership, state): SnapshotData =
            decode(&data).map_err(|e| storage_error(subject.clone(), ErrorVerb::Read, &e))?;
        if last_applied != meta.last_log_id || membership != meta.last_membership {
            let e = DbError::Corrupt(format!(
                "snapshot {} does not match its meta: applied {last_applied:?}, membership {membership:?}",
                meta.snapshot_id
            ));
            return Err(storage_error(subject, ErrorVerb::Read, &e));
        }
        let next = Applied {
            last_applied,
            membership,
            state: Arc::new(state),
        };
        let to_save = next.clone();
        let meta = meta.clone();
        self.db
            .run(subject, ErrorVerb::Write, move |conn| {
                let tx = conn.transaction()?;
                to_save.save(&tx)?;
                save_snapshot(&tx, &meta, &data)?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        self.published.send_replace(next.state.clone());
        self.applied = next;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        self.db
            .run(ErrorSubject::Snapshot(None), ErrorVerb::Read, |conn| {
                let row: Option<(Vec<u8>, Vec<u8>)> = conn
                    .query_row("SELECT meta, data FROM snapshot WHERE id = 1", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?;
                let Some((meta, data)) = row else {
                    return Ok(None);
                };
                Ok(Some(Snapshot {
                    meta: decode(&meta)?,
                    snapshot: Box::new(Cursor::new(data)),
                }))
            })
            .await
    }
}

/// Builds a snapshot of the state as it was when openraft asked for the builder.
pub(super) struct SnapshotBuilder {
    db: Db,
    applied: Applied,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let applied = self.applied.clone();
        self.db
            .run(
                ErrorSubject::Snapshot(None),
                ErrorVerb::Write,
                move |conn| {
                    let data = applied.encode_snapshot()?;
                    let tx = conn.transaction()?;
                    // A sequence number makes ids unique even for two snapshots at the same log id.
                    let seq: i64 = tx
                        .query_row(
                            "SELECT value FROM meta WHERE key = 'snapshot_seq'",
                            [],
                            |r| r.get::<_, Vec<u8>>(0),
                        )
                        .optional()?
                        .map(|b| decode::<i64>(&b))
                        .transpose()?
                        .unwrap_or(0)
                        + 1;
                    tx.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('snapshot_seq', ?1)",
                        [encode(&seq)?],
                    )?;
                    let snapshot_id = match applied.last_applied {
                        Some(l) => format!(
                            "{}-{}-{}-{seq}",
                            l.leader_id.term, l.leader_id.node_id, l.index
                        ),
                        None => format!("--{seq}"),
                    };
                    let meta = SnapshotMeta {
                        last_log_id: applied.last_applied,
                        last_membership: applied.membership.clone(),
                        snapshot_id,
                    };
                    // Never replace a newer snapshot (one installed from the leader meanwhile).
                    let current: Option<Vec<u8>> = tx
                        .query_row("SELECT meta FROM snapshot WHERE id = 1", [], |r| r.get(0))
                        .optional()?;
                    let current = current
                        .map(|b| decode::<SnapshotMeta<NodeId, BasicNode>>(&b))
                        .transpose()?;
                    if current.is_none_or(|c| c.last_log_id <= meta.last_log_id) {
                        save_snapshot(&tx, &meta, &data)?;
                    }
                    tx.commit()?;
                    Ok(Snapshot {
                        meta,
                        snapshot: Box::new(Cursor::new(data)),
                    })
                },
            )
            .await
    }
}
