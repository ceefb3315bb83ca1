//! The cluster shell of one node: it keeps this node's view of the ring (`Ownership`), puts
//! every key operation where it belongs (here behind the vnode's gate, or forwarded to the
//! owner), answers the other nodes (gateway requests), and runs the loops that keep the view
//! fresh, admit this node, drive incoming handoffs and — on the Raft leader — rebalance.
//! Decisions are made by the pure state machines (`control`, `handoff`); this file only moves
//! their inputs and effects around.

use super::control::{ControlCommand, ControlResponse, ControlState, MemberSpec, MemberState};
use super::forward::Forwarder;
use super::gates::Gates;
use super::handoff::{Access, Fence, Ownership, Receiver};
use super::raft::{ControlError, ControlPlane, RaftTransport};
use super::ring::{vnode_of_key, Vnode};
use super::transport::{Transport, TransportError};
use super::wire::{self, ForwardItem, ForwardResult, PeerReply, PeerRequest, WireOp};
use super::MemberId;
use crate::actors::placement::{KeyAnswer, KeyOp, Placement};
use crate::actors::{Node, ServiceError};
use crate::config::ClusterConfig;
use crate::domain::{Command, StockKey};
use crate::persistence::Request;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// How long an operation waits for a moving vnode before the client gets a retryable 503.
const MOVE_PATIENCE: Duration = Duration::from_secs(3);
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Forward messages in flight per peer; operations queued meanwhile ride in the next one.
const FORWARD_CALLS_IN_FLIGHT: usize = 32;
const CONTROL_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Cluster {
    pub(super) config: ClusterConfig,
    pub(super) spec: MemberSpec,
    pub(super) seeds: Vec<(String, String)>,
    pub(super) node: Node,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) control: Option<Arc<ControlPlane>>,
    pub(super) ownership: RwLock<Ownership>,
    pub(super) gates: Gates,
    pub(super) receiver: Mutex<Receiver>,
    /// Fences this process has made durable (vnode, move id): later pages skip the drain.
    pub(super) durable_fences: Mutex<std::collections::HashSet<(Vnode, u64)>>,
    /// Per incoming move: the change number its copy is complete up to.
    pub(super) copy_marks: Mutex<HashMap<u64, i64>>,
    forwarders: Mutex<HashMap<String, Forwarder>>,
    /// Leader, term and commit index as last heard (from the local Raft, or from a seed).
    pub(super) raft_view: Mutex<(Option<String>, u64, u64)>,
    /// Bumped on every map this node takes; wakes the handoff driver.
    pub(super) map_changed: watch::Sender<u64>,
    /// The HTTP router, for order requests forwarded here (`PeerRequest::Http`).
    pub(super) http: OnceLock<axum::Router>,
    pub(super) started: Instant,
    /// Set when this node has handed everything away after a `leave`.
    pub left: watch::Sender<bool>,
    /// This process has seen itself `Leaving` (a restarted node that finds itself `Left`
    /// joins again instead of stopping).
    leaving: std::sync::atomic::AtomicBool,
    /// Itself, for the `'static` futures the node and the gateway need.
    me: std::sync::Weak<Cluster>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

/// Raft RPCs ride on the node-to-node transport.
struct RaftOverTransport(Arc<dyn Transport>);

impl RaftTransport for RaftOverTransport {
    fn call(
        &self,
        target: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let call = self.0.call(target, &PeerRequest::Raft(payload), timeout);
        Box::pin(async move {
            match call.await {
                Ok(PeerReply::Raft(bytes)) => Ok(bytes),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

impl Cluster {
    /// Joins the cluster: starts the control plane on a seed, takes the fences persisted
    /// before a restart, installs itself as the node's placement, and starts its loops.
    // What the node read from its disk (fences, map floor, storage id) comes in as is; a
    // struct for it is the next refactor of this shell.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        config: ClusterConfig,
        http_addr: String,
        data_dir: &std::path::Path,
        node: Node,
        transport: Arc<dyn Transport>,
        fences: Vec<Fence>,
        map_floor: u64,
        storage_id: u64,
    ) -> anyhow::Result<Arc<Self>> {
        let seeds = config.seed_list()?;
        for (name, addr) in &seeds {
            transport.add_peer(name, addr);
        }
        let control = if config.is_seed() {
            let names: Vec<String> = seeds.iter().map(|(n, _)| n.clone()).collect();
            let plane = ControlPlane::start(
                data_dir,
                &config.node_name,
                &names,
                Arc::new(RaftOverTransport(transport.clone())),
            )
            .await?;
            Some(Arc::new(plane))
        } else {
            None
        };
        let gates = Gates::default();
        for f in &fences {
            gates.close(f.vnode);
        }
        let advertise = if config.advertise_http.is_empty() {
            http_addr
        } else {
            config.advertise_http.clone()
        };
        let spec = MemberSpec {
            name: config.node_name.clone(),
            http_addr: advertise,
            cluster_addr: config.cluster_addr.clone(),
            // Larger on every start: tells this start's `Join` from a late copy of an older one.
            incarnation: node.now_ms().max(1),
            storage_id,
        };
        let cluster = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            spec,
            seeds,
            node: node.clone(),
            transport,
            control,
            ownership: RwLock::new(Ownership::new(MemberId::MAX, fences, map_floor)),
            leaving: std::sync::atomic::AtomicBool::new(false),
            gates,
            receiver: Mutex::default(),
            copy_marks: Mutex::default(),
            durable_fences: Mutex::default(),
            forwarders: Mutex::default(),
            raft_view: Mutex::default(),
            map_changed: watch::channel(0).0,
            http: OnceLock::new(),
            started: Instant::now(),
            left: watch::channel(false).0,
            config,
        });
        node.set_placement(cluster.clone());
        if let Some(plane) = &cluster.control {
            plane.initialize_if_first().await?;
            tokio::spawn(super::loops::follow_raft(
                cluster.clone(),
                plane.subscribe(),
            ));
            tokio::spawn(super::loops::lead(cluster.clone()));
        }
        tokio::spawn(super::loops::poll_map(cluster.clone()));
        tokio::spawn(super::loops::join(cluster.clone()));
        tokio::spawn(super::mover::drive(cluster.clone()));
        Ok(cluster)
    }

    pub fn set_http(&self, router: axum::Router) {
        let _ = self.http.set(router);
    }

    /// `token` is the cluster's secret (compared in constant time).
    pub fn is_admin_token(&self, token: &str) -> bool {
        let secret = self.config.cookie.as_bytes();
        let token = token.as_bytes();
        let differ = secret
            .iter()
            .zip(token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        secret.len() == token.len() && differ == 0
    }

    pub fn seeds_contain(&self, name: &str) -> bool {
        self.seeds.iter().any(|(n, _)| n == name)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn map(&self) -> Option<Arc<ControlState>> {
        read(&self.ownership).map().cloned()
    }

    /// This node is admitted and knows the ring: it can place requests.
    pub fn has_map(&self) -> bool {
        let o = read(&self.ownership);
        o.me() != MemberId::MAX && o.map().is_some_and(|m| m.is_bootstrapped())
    }

    pub(super) fn raft_view_mut(&self) -> std::sync::MutexGuard<'_, (Option<String>, u64, u64)> {
        lock(&self.raft_view)
    }

    pub(super) fn now_ms(&self) -> u64 {
        self.node.now_ms()
    }

    /// Takes a map (from the local Raft or a seed); older ones are ignored, also across a
    /// restart: its version is queued to the writer before anything acts on it, so whatever
    /// this node does on it becomes durable only after the floor does.
    pub(super) fn take_map(&self, map: Arc<ControlState>) {
        {
            let o = read(&self.ownership);
            let same = map.version == o.map_version() && self.has_map();
            if same || !o.accepts_version(map.version) {
                return;
            }
        }
        let floor = Request::SetMapFloor {
            version: map.version,
        };
        if self.node.writer().try_submit(floor).is_err() {
            return; // writer busy: the next poll brings the map again
        }
        // A member of this name whose recorded disk is another one is not this node: it
        // owns nothing here (its vnodes answer 503 until an operator decides).
        let me = map
            .member_by_name(&self.spec.name)
            .filter(|m| m.spec.storage_id == 0 || m.spec.storage_id == self.spec.storage_id)
            .map_or(MemberId::MAX, |m| m.id);
        {
            // One critical section for the map, the gates and the receiver: an export request
            // (which closes a gate under this lock) or a concurrent older map can then never
            // interleave with it (a stale reopen, or a receiver fed an older map).
            let mut o = write(&self.ownership);
            o.set_me(me);
            let Some(resolved) = o.on_map(map.clone()) else {
                return;
            };
            for f in &resolved {
                lock(&self.durable_fences).remove(&(f.vnode, f.move_id));
                self.gates.open(f.vnode);
                let lifted = Request::DeleteFence {
                    vnode: f.vnode,
                    move_id: f.move_id,
                };
                // Best effort: a fence left on disk is resolved again by the next map.
                let _ = self.node.writer().try_submit(lifted);
                tracing::info!(vnode = f.vnode, move_id = f.move_id, "fence lifted");
            }
            lock(&self.receiver).on_map(me, &map);
        }
        for m in map.members.values() {
            self.transport.add_peer(&m.spec.name, &m.spec.cluster_addr);
        }
        super::status::record_map_metrics(self, &map, me);
        use std::sync::atomic::Ordering::SeqCst;
        match map.members.get(&me).map(|m| m.state) {
            Some(MemberState::Leaving) => self.leaving.store(true, SeqCst),
            Some(MemberState::Left) if self.leaving.load(SeqCst) => {
                let _ = self.left.send(true);
            }
            _ => {}
        }
        self.map_changed.send_modify(|v| *v += 1);
    }

    /// Enters `vnode`'s gate if this node may write it, ownership read after the entry
    /// (see `Gates::enter_if_local`: a committed move reopens the gate of the vnode it took).
    pub(super) fn enter_owned(&self, vnode: Vnode) -> Result<super::gates::Guard<'_>, Access> {
        self.gates
            .enter_if_local(vnode, || read(&self.ownership).access(vnode))
    }

    /// This node owns the vnode and may write it now.
    pub(super) fn owns_now(&self, vnode: Vnode) -> bool {
        matches!(read(&self.ownership).access(vnode), Access::Local { .. })
    }

    /// Admitted as configured (a `Left` member that starts again must join again).
    pub(super) fn is_admitted(&self) -> bool {
        self.map().is_some_and(|m| {
            m.member_by_name(&self.spec.name)
                .is_some_and(|me| me.spec == self.spec && me.state != MemberState::Left)
        })
    }

    fn member_name(&self, map: &ControlState, id: MemberId) -> Option<String> {
        map.members.get(&id).map(|m| m.spec.name.clone())
    }

    fn forwarder(&self, peer: &str) -> Forwarder {
        let mut f = lock(&self.forwarders);
        f.entry(peer.to_owned())
            .or_insert_with(|| {
                Forwarder::spawn(
                    peer.to_owned(),
                    self.transport.clone(),
                    self.config
                        .max_in_flight_per_peer
                        .min(FORWARD_CALLS_IN_FLIGHT),
                    FORWARD_TIMEOUT,
                )
            })
            .clone()
    }

    /// Where this node would run an operation on `vnode` now.
    fn access(&self, key: &StockKey) -> (Vnode, Access, Option<Arc<ControlState>>) {
        let o = read(&self.ownership);
        match o.map() {
            Some(map) if map.is_bootstrapped() => {
                let v = vnode_of_key(key, map.vnodes);
                (v, o.access(v), Some(map.clone()))
            }
            _ => (0, Access::Unknown, None),
        }
    }

    async fn run_here(&self, key: StockKey, op: KeyOp) -> Result<KeyAnswer, ServiceError> {
        match op {
            KeyOp::Apply(cmd) => self
                .node
                .execute_here(key, cmd)
                .await
                .map(KeyAnswer::Applied),
            KeyOp::Read => self.node.read_here(key).await.map(KeyAnswer::View),
        }
    }

    /// Places one key operation: here, forwarded, or — after waiting out a move — a
    /// retryable `vnode_unavailable`.
    async fn place(self: Arc<Self>, key: StockKey, op: KeyOp) -> Result<KeyAnswer, ServiceError> {
        let deadline = Instant::now() + MOVE_PATIENCE;
        let mut pause = Duration::from_millis(2);
        let mut reason = "no ring map yet";
        loop {
            let (vnode, access, map) = self.access(&key);
            match access {
                Access::Local { .. } => match self.enter_owned(vnode) {
                    Ok(_inside) => return self.run_here(key, op).await,
                    // It moved between the look and the entry: look again at once.
                    Err(Access::Remote { .. }) => continue,
                    Err(_) => reason = "vnode moving",
                },
                Access::Remote { owner, epoch } => {
                    let Some(peer) = map.and_then(|m| self.member_name(&m, owner)) else {
                        return Err(ServiceError::Internal("owner not a member".into()));
                    };
                    if self.transport.is_down(&peer) {
                        // Missed heartbeats: answer now rather than after a forward timeout.
                        return Err(ServiceError::VnodeUnavailable {
                            retry_after_ms: 1_000,
                            reason: format!("owner {peer} is down"),
                        });
                    }
                    let item = ForwardItem {
                        key: key.storage_name(),
                        epoch,
                        op: match &op {
                            KeyOp::Apply(cmd) => WireOp::Apply(cmd.into()),
                            KeyOp::Read => WireOp::Read,
                        },
                    };
                    metrics::counter!("stockring_forwarded_total").increment(1);
                    match self.forwarder(&peer).send(item).await {
                        Ok(ForwardResult::Applied(o)) => return Ok(KeyAnswer::Applied(o.into())),
                        Ok(ForwardResult::View(v)) => return Ok(KeyAnswer::View(v.into())),
                        Ok(ForwardResult::NotOwner { .. }) => {
                            // Our map is behind (or theirs): fetch the newest and retry.
                            reason = "stale ring map";
                            super::loops::refresh_map(&self).await;
                        }
                        Ok(ForwardResult::Fenced) => reason = "vnode moving",
                        // The owner ran into an error after taking the request (a timeout
                        // of its key, say), or the request or its answer was lost on the
                        // way: either way it may have been applied.
                        Ok(ForwardResult::Failed(msg)) => {
                            return Err(ServiceError::OutcomeUnknown { reason: msg })
                        }
                        Err(TransportError::Overloaded(_)) => return Err(ServiceError::Overloaded),
                        Err(e) => {
                            return Err(ServiceError::OutcomeUnknown {
                                reason: format!("forward to {peer}: {e}"),
                            })
                        }
                    }
                }
                Access::Fenced => reason = "vnode moving",
                Access::Unknown => {}
            }
            if Instant::now() >= deadline {
                return Err(ServiceError::VnodeUnavailable {
                    retry_after_ms: 200,
                    reason: reason.into(),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// A forwarded operation: run it only if this node owns the key's vnode now.
    async fn serve_forward(self: Arc<Self>, item: ForwardItem) -> ForwardResult {
        let Ok(key) = wire::key_from_wire(&item.key) else {
            return ForwardResult::Failed("invalid key".into());
        };
        let op = match item.op {
            WireOp::Read => KeyOp::Read,
            WireOp::Apply(cmd) => match Command::try_from(cmd) {
                Ok(cmd) => KeyOp::Apply(cmd),
                Err(e) => return ForwardResult::Failed(e.to_string()),
            },
        };
        let (vnode, access, map) = self.access(&key);
        let version = map.map_or(0, |m| m.version);
        match access {
            Access::Local { .. } => {
                let _inside = match self.enter_owned(vnode) {
                    Ok(inside) => inside,
                    Err(Access::Fenced) => return ForwardResult::Fenced,
                    Err(_) => return ForwardResult::NotOwner { version },
                };
                match self.run_here(key, op).await {
                    Ok(KeyAnswer::Applied(o)) => ForwardResult::Applied(o.into()),
                    Ok(KeyAnswer::View(v)) => ForwardResult::View(v.into()),
                    Err(e) => ForwardResult::Failed(e.to_string()),
                }
            }
            Access::Fenced => ForwardResult::Fenced,
            Access::Remote { .. } | Access::Unknown => ForwardResult::NotOwner { version },
        }
    }

    /// Proposes a control command wherever the Raft leader is.
    pub async fn propose(&self, cmd: ControlCommand) -> Result<ControlResponse, String> {
        let mut hint = lock(&self.raft_view).0.clone();
        if let Some(plane) = &self.control {
            match plane.propose(cmd.clone()).await {
                Ok(r) => return Ok(r),
                Err(ControlError::NotLeader { leader }) => hint = leader.or(hint),
                Err(e) => return Err(e.to_string()),
            }
        }
        let mut targets: Vec<String> = hint.into_iter().collect();
        targets.extend(self.seeds.iter().map(|(n, _)| n.clone()));
        targets.dedup();
        let request = PeerRequest::Propose {
            from: self.spec.name.clone(),
            cmd,
        };
        for target in targets {
            if target == self.spec.name {
                continue;
            }
            let call = self.transport.call(&target, &request, CONTROL_TIMEOUT);
            match call.await {
                Ok(PeerReply::Proposed(r)) => return Ok(r),
                Ok(PeerReply::Error(why)) => return Err(why),
                Ok(PeerReply::NotLeader { leader: Some(l) }) if l != target => {
                    let again = self.transport.call(&l, &request, CONTROL_TIMEOUT);
                    if let Ok(PeerReply::Proposed(r)) = again.await {
                        return Ok(r);
                    }
                }
                _ => continue,
            }
        }
        Err("no Raft leader reachable".into())
    }

    /// Answers another node.
    pub(super) async fn serve(self: Arc<Self>, req: PeerRequest) -> PeerReply {
        match req {
            PeerRequest::Ping { .. } => PeerReply::Pong,
            PeerRequest::Forward(items) => {
                let runs = items
                    .into_iter()
                    .map(|item| self.clone().serve_forward(item));
                PeerReply::Forwarded(futures::future::join_all(runs).await)
            }
            PeerRequest::Export {
                mv,
                last,
                pass,
                since,
                after,
                max_bytes,
            } => super::mover::serve_export(&self, mv, last, pass, since, after, max_bytes).await,
            PeerRequest::Raft(bytes) => match &self.control {
                Some(plane) => PeerReply::Raft(plane.handle_rpc(&bytes).await),
                None => PeerReply::Error("not a seed".into()),
            },
            PeerRequest::GetMap { have } => {
                let map = match &self.control {
                    Some(plane) => Some(plane.state()),
                    None => self.map(),
                };
                let (leader, term, commit) = lock(&self.raft_view).clone();
                PeerReply::Map {
                    state: map
                        .filter(|m| m.version > have)
                        .map(|m| Box::new((*m).clone())),
                    leader,
                    term,
                    commit_index: commit,
                }
            }
            PeerRequest::Propose { from, cmd } => match &self.control {
                Some(plane) => {
                    if let Err(why) = cmd.proposable_by(&from, &plane.state()) {
                        tracing::warn!(peer = %from, ?cmd, why, "control command refused");
                        return PeerReply::Error(why);
                    }
                    match plane.propose(cmd).await {
                        Ok(r) => PeerReply::Proposed(r),
                        Err(ControlError::NotLeader { leader }) => PeerReply::NotLeader { leader },
                        Err(e) => PeerReply::Error(e.to_string()),
                    }
                }
                None => PeerReply::NotLeader {
                    leader: lock(&self.raft_view).0.clone(),
                },
            },
            PeerRequest::Http { method, path, body } => {
                super::http::serve_forwarded(&self, method, path, body).await
            }
            PeerRequest::Warehouses { sku } => {
                PeerReply::Warehouses(super::http::local_warehouses(&self, &sku).await)
            }
        }
    }
}

impl Placement for Cluster {
    fn run(&self, key: StockKey, op: KeyOp) -> BoxFuture<'static, Result<KeyAnswer, ServiceError>> {
        match self.me.upgrade() {
            Some(me) => Box::pin(me.place(key, op)),
            None => Box::pin(async { Err(ServiceError::ShuttingDown) }),
        }
    }
}

impl super::transport::Inbound for Cluster {
    fn handle(&self, req: PeerRequest) -> BoxFuture<'static, PeerReply> {
        match self.me.upgrade() {
            Some(me) => Box::pin(me.serve(req)),
            None => Box::pin(async { PeerReply::Error("stopping".into()) }),
        }
    }
}

/// A oneshot-backed `done` callback for writer requests.
pub(super) fn done_channel() -> (
    crate::persistence::writer::Done,
    oneshot::Receiver<Result<(), crate::persistence::StorageError>>,
) {
    let (tx, rx) = oneshot::channel();
    (
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
        rx,
    )
}
