//! [`ControlPlane`]: the Raft group of the seeds, as the rest of the node sees it.

use super::network::{self, NetworkFactory, RaftTransport};
use super::state_machine::StateMachineStore;
use super::store::{Db, LogStore};
use super::{node_id, NodeId, TypeConfig};
use crate::cluster::control::{ControlCommand, ControlResponse, ControlState};
use openraft::error::{ClientWriteError, Fatal, ForwardToLeader, InitializeError, RaftError};
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a proposal may wait to be committed and applied before the caller hears
/// [`ControlError::Timeout`] (the leader lost its quorum, for instance).
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `is_leader` waits for a quorum to confirm the leadership.
const LINEARIZE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `shutdown` waits for openraft's tasks to let go of `raft.db`.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Only the leader proposes; `leader` is its seed name when this seed knows it.
    #[error("not the control-plane leader (leader: {leader:?})")]
    NotLeader { leader: Option<String> },
    /// The seed list is unusable (this seed not in it, two names with one id).
    #[error("bad seed list: {0}")]
    Seeds(String),
    /// `raft.db` could not be opened or written; Raft stops on this seed.
    #[error("control-plane storage: {0}")]
    Storage(String),
    /// The proposal was not answered in time: it may or may not be applied later.
    #[error("the proposal was not answered in time")]
    Timeout,
    /// Another refusal from openraft (a membership change in progress, ...).
    #[error("raft: {0}")]
    Raft(String),
    /// Raft is not running on this seed any more (shut down, or stopped by an error).
    #[error("raft stopped: {0}")]
    Fatal(String),
}

impl From<Fatal<NodeId>> for ControlError {
    fn from(f: Fatal<NodeId>) -> ControlError {
        match f {
            Fatal::StorageError(e) => ControlError::Storage(e.to_string()),
            other => ControlError::Fatal(other.to_string()),
        }
    }
}

/// Tuning that tests change to exercise snapshots and log purging on a few entries.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tuning {
    /// Build a snapshot after this many applied entries since the last one.
    pub(super) snapshot_every: u64,
    /// How many entries already in a snapshot stay in the log (for slightly lagging followers).
    pub(super) keep_in_log: u64,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            snapshot_every: 500,
            keep_in_log: 200,
        }
    }
}

fn raft_config(tuning: Tuning) -> Result<Config, ControlError> {
    Config {
        cluster_name: "stockring-control".into(),
        heartbeat_interval: 200,
        // A frozen leader is replaced after 0.8–1.6 s of silence (plus an election).
        election_timeout_min: 800,
        election_timeout_max: 1600,
        install_snapshot_timeout: 5_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_every),
        max_in_snapshot_log_to_keep: tuning.keep_in_log,
        // Farther behind than this, a follower gets a snapshot instead of entries.
        replication_lag_threshold: tuning.snapshot_every * 2,
        ..Config::default()
    }
    .validate()
    .map_err(|e| ControlError::Raft(format!("bad raft config: {e}")))
}

/// The seeds' names by Raft node id.
#[derive(Clone, Debug)]
struct Seeds(BTreeMap<NodeId, String>);

impl Seeds {
    fn new(me: &str, names: &[String]) -> Result<Seeds, ControlError> {
        let mut by_id = BTreeMap::new();
        for name in names {
            if let Some(other) = by_id.insert(node_id(name), name.clone()) {
                if &other != name {
                    return Err(ControlError::Seeds(format!(
                        "seeds {other} and {name} hash to the same node id"
                    )));
                }
            }
        }
        if !by_id.values().any(|n| n == me) {
            return Err(ControlError::Seeds(format!("{me} is not in the seed list")));
        }
        Ok(Seeds(by_id))
    }

    fn name(&self, id: NodeId) -> Option<&String> {
        self.0.get(&id)
    }

    fn first(&self) -> Option<&String> {
        self.0.values().min()
    }

    fn members(&self) -> BTreeMap<NodeId, BasicNode> {
        self.0
            .iter()
            .map(|(id, name)| (*id, BasicNode::new(name)))
            .collect()
    }
}

/// One seed's member of the control-plane Raft group.
pub struct ControlPlane {
    pub(super) raft: Raft<TypeConfig>,
    me: String,
    seeds: Seeds,
    published: Arc<watch::Sender<Arc<ControlState>>>,
    /// To wait, on shutdown, until openraft's tasks have closed `raft.db`.
    db: std::sync::Weak<std::sync::Mutex<rusqlite::Connection>>,
}

impl ControlPlane {
    /// Opens (or recovers) raft.db in `data_dir`, starts Raft. `me` is this seed's name, `seeds`
    /// all seed names (including me; identical list on every seed).
    pub async fn start(
        data_dir: &Path,
        me: &str,
        seeds: &[String],
        transport: Arc<dyn RaftTransport>,
    ) -> Result<Self, ControlError> {
        Self::start_tuned(data_dir, me, seeds, transport, Tuning::default()).await
    }

    pub(super) async fn start_tuned(
        data_dir: &Path,
        me: &str,
        seeds: &[String],
        transport: Arc<dyn RaftTransport>,
        tuning: Tuning,
    ) -> Result<Self, ControlError> {
        let seeds = Seeds::new(me, seeds)?;
        let config = Arc::new(raft_config(tuning)?);
        let dir = data_dir.to_path_buf();
        let (db, sm) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir)
                .map_err(|e| ControlError::Storage(format!("create {}: {e}", dir.display())))?;
            let db = Db::open(&dir).map_err(|e| ControlError::Storage(e.to_string()))?;
            let sm = db.with_conn(|conn| StateMachineStore::open(db.clone(), conn));
            let sm = sm.map_err(|e| ControlError::Storage(e.to_string()))?;
            Ok::<_, ControlError>((db, sm))
        })
        .await
        .map_err(|e| ControlError::Storage(format!("open raft.db: {e}")))??;
        let published = sm.publisher();
        let weak = db.downgrade();
        let raft = Raft::new(
            node_id(me),
            config,
            NetworkFactory::new(transport),
            LogStore::new(db),
            sm,
        )
        .await?;
        tracing::info!(seed = me, id = node_id(me), "control plane started");
        Ok(ControlPlane {
            raft,
            me: me.to_string(),
            seeds,
            published,
            db: weak,
        })
    }

    /// If the group has never been initialised and `me` is the lexicographically smallest seed,
    /// initialise membership = all seeds (voters). Safe to call repeatedly/on restart (an
    /// "already initialised" answer is fine).
    pub async fn initialize_if_first(&self) -> Result<(), ControlError> {
        if self.seeds.first() != Some(&self.me) || self.raft.is_initialized().await? {
            return Ok(());
        }
        match self.raft.initialize(self.seeds.members()).await {
            Ok(()) => {
                tracing::info!(seed = %self.me, "control plane initialised");
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(RaftError::APIError(e @ InitializeError::NotInMembers(_))) => {
                Err(ControlError::Raft(e.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(f.into()),
        }
    }

    /// The latest applied state (cheap clone of an Arc).
    pub fn state(&self) -> Arc<ControlState> {
        self.published.borrow().clone()
    }

    /// A watch receiver that fires on every apply.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ControlState>> {
        self.published.subscribe()
    }

    /// Proposes a command; only the leader can. Err(ControlError::NotLeader{leader}) otherwise.
    pub async fn propose(&self, cmd: ControlCommand) -> Result<ControlResponse, ControlError> {
        let written = tokio::time::timeout(PROPOSE_TIMEOUT, self.raft.client_write(cmd))
            .await
            .map_err(|_| ControlError::Timeout)?;
        match written {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(self.not_leader(&f))
            }
            Err(RaftError::APIError(e @ ClientWriteError::ChangeMembershipError(_))) => {
                Err(ControlError::Raft(e.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(f.into()),
        }
    }

    /// Whether this seed is the leader, confirmed by a quorum; and if so, makes sure the local
    /// state has applied everything committed before the call (openraft's
    /// `ensure_linearizable`). Used before answering "who owns what" authoritatively.
    pub async fn is_leader(&self) -> bool {
        matches!(
            tokio::time::timeout(LINEARIZE_TIMEOUT, self.raft.ensure_linearizable()).await,
            Ok(Ok(_))
        )
    }

    /// The current leader's seed name, as far as this seed knows.
    pub fn leader(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let id = metrics.current_leader?;
        self.seeds.name(id).cloned().or_else(|| {
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
        })
    }

    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// The index of the last log entry applied to the local state.
    pub fn commit_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index)
    }

    /// Handles an RPC received from another seed (the inverse of the transport's call).
    pub async fn handle_rpc(&self, payload: &[u8]) -> Vec<u8> {
        network::serve(&self.raft, payload).await
    }

    /// Stops Raft and waits (a few seconds at most) until `raft.db` is closed, so the same data
    /// dir can be opened again at once.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "control plane: raft did not stop cleanly");
        }
        let deadline = Instant::now() + RELEASE_TIMEOUT;
        while self.db.strong_count() > 0 {
            if Instant::now() >= deadline {
                tracing::warn!("control plane: raft.db still in use after shutdown");
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(seed = %self.me, "control plane stopped");
    }

    fn not_leader(&self, f: &ForwardToLeader<NodeId, BasicNode>) -> ControlError {
        let leader = f
            .leader_id
            .and_then(|id| self.seeds.name(id).cloned())
            .or_else(|| f.leader_node.as_ref().map(|n| n.addr.clone()));
        ControlError::NotLeader { leader }
    }
}
