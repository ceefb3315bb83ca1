//! The simulated world: a control plane (one linearizable `ControlState` plus its leader), the
//! nodes (each a thin shell around the real `Ownership` and `Receiver`, with a durable store),
//! the clients and the nemesis, all driven by one seeded PRNG over simulated time.
//!
//! One step handles one event (a message delivery or a timer); the invariants in `checks.rs`
//! run after every step.

use crate::network::{Addr, Envelope, Msg, NetFaults, Network, Tag};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use stockring::cluster::control::{
    ControlCommand, ControlResponse, ControlState, MemberSpec, MemberState,
};
use stockring::cluster::handoff::{
    Access, Effect, ExportDecision, ExportRequest, Fence, Ownership, Phase, Receiver,
};
use stockring::cluster::ring::Vnode;
use stockring::cluster::MemberId;

/// A node's member id before the control plane has admitted it.
pub const UNKNOWN_ME: MemberId = MemberId::MAX - 1;

const NODE_TICK_MS: u64 = 25;
const HEARTBEAT_MS: u64 = 100;
const JOIN_RETRY_MS: u64 = 300;
const LEADER_TICK_MS: u64 = 100;
/// The leader marks a member down after this long without a heartbeat.
const DOWN_AFTER_MS: u64 = 1_000;
/// How long a node waits for the answer to an export request or a commit proposal.
const EFFECT_TIMEOUT_MS: u64 = 400;
const MAX_BUSY: usize = 2;
/// After the faults stop, the cluster must settle within this much simulated time.
const SETTLE_LIMIT_MS: u64 = 60_000;
/// Belt and braces for the incremental lost-write check: a full check this often.
const FULL_CHECK_EVERY: u64 = 512;

/// Deliberately broken shells, to show the simulation can fail (see `main.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mutation {
    #[default]
    None,
    /// Fences are not reloaded after a restart: a restarted source forgets its promise.
    VolatileFences,
    /// An export reply is imported whatever phase the move is in (a late copy overwrites the
    /// final export).
    ImportAnyPhase,
    /// The receiver is fed every map, also those older than the node's (which `Ownership`
    /// ignores): a move that already committed is adopted again.
    StaleMapsToReceiver,
    /// Not the shell but its environment: maps are read from a lagging follower, so a node
    /// that restarts may get an older map than it had before the crash.
    LaggingMapReads,
    /// The fence task does not re-check that its fence is still current once the drain is
    /// over: it persists the fence (over whatever fence the vnode has on disk) and answers,
    /// although the move was aborted meanwhile (the shell before this check).
    FenceOutlivesMove,
    /// A target that proposes its commit right after the copy, without the last export:
    /// the control plane must refuse it (the source never fenced), or writes are lost.
    CommitAfterCopy,
    /// `CommitAfterCopy`, with the control plane as it was before `MoveFenced`: commits
    /// proposed as old logs recorded them (`by: None`, applied unchecked) and peers' proposals
    /// taken unchecked. Shows that the checks are what keep `CommitAfterCopy` safe.
    CommitAfterCopyUnchecked,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    /// Keep the last `trace` trace lines (0: no tracing, the fast default).
    pub trace: usize,
    pub mutation: Mutation,
    /// The shell persists the version of every map it accepts and, after a restart, ignores
    /// older ones (the fix proposed for `Mutation::LaggingMapReads`; see `main.rs`). Off by
    /// default: the shell as specified keeps no map on disk.
    pub map_floor: bool,
}

impl Config {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            trace: 0,
            mutation: Mutation::None,
            map_floor: false,
        }
    }
}

/// Everything about a run that the seed decides up front (swarm testing: each seed gets its
/// own mix and intensity of faults).
#[derive(Clone, Debug)]
pub struct Params {
    pub vnodes: u32,
    pub seeds: usize,
    pub max_nodes: usize,
    pub net: NetFaults,
    pub max_moves: usize,
    pub move_timeout_ms: u64,
    pub fault_ms: u64,
    pub nemesis_gap_ms: u64,
    pub client_gap_ms: u64,
    /// Weights of the nemesis actions: crash, partition, join, leave, rejoin, control outage.
    pub weights: [u32; 6],
    /// Probability of crashing at an interesting point (after fencing, after an import, after
    /// proposing a commit, after acknowledging a write).
    pub buggify: f64,
}

impl Params {
    fn draw(rng: &mut StdRng) -> Self {
        let pick = |rng: &mut StdRng, xs: &[f64]| xs[rng.gen_range(0..xs.len())];
        let seeds = rng.gen_range(2..=3);
        let mut weights = [0u32; 6];
        for w in weights.iter_mut() {
            if rng.gen_bool(0.75) {
                *w = rng.gen_range(1..=4);
            }
        }
        Params {
            vnodes: [8, 16, 32][rng.gen_range(0..3)],
            seeds,
            max_nodes: rng.gen_range(seeds + 1..=6),
            net: NetFaults {
                loss: pick(rng, &[0.0, 0.02, 0.1, 0.2]),
                dup: pick(rng, &[0.0, 0.05, 0.2]),
                slow: pick(rng, &[0.0, 0.05, 0.2]),
                max_delay_ms: rng.gen_range(2..=40),
                slow_max_ms: rng.gen_range(200..=3_000),
            },
            max_moves: rng.gen_range(1..=4),
            move_timeout_ms: rng.gen_range(1_000..=6_000),
            fault_ms: rng.gen_range(3_000..=8_000),
            nemesis_gap_ms: rng.gen_range(50..=500),
            client_gap_ms: rng.gen_range(4..=30),
            weights,
            buggify: pick(rng, &[0.0, 0.1, 0.3]),
        }
    }
}

/// One vnode's data on one node's disk: the acknowledged operation ids it holds. `gen` changes
/// whenever the set is replaced by an import (appends keep it).
#[derive(Clone, Debug, Default)]
pub struct VStore {
    pub ops: Arc<BTreeSet<u64>>,
    pub gen: u64,
}

/// What survives a crash.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    pub member: Option<MemberId>,
    /// The newest map version accepted (only with `Config::map_floor`).
    pub map_floor: u64,
    pub fences: BTreeMap<Vnode, Fence>,
    pub store: BTreeMap<Vnode, VStore>,
}

/// What a crash loses.
pub struct Proc {
    /// Which start of the node this is (sent with every `Join`, as the real shell does).
    pub incarnation: u64,
    pub own: Ownership,
    pub recv: Receiver,
    /// Every start sends `Join` (a restart refreshes the member) until it is answered.
    pub join_pending: bool,
    /// The control state version this start's `Join` applied at: a map older than that may
    /// show the member as it was before (say `Left`, when the join re-admitted it).
    pub joined_at: Option<u64>,
    next_join_ms: u64,
    next_heartbeat_ms: u64,
    /// Effects handed out by the receiver and not answered yet: (move id, phase) -> deadline.
    pub pending: BTreeMap<(u64, u8), u64>,
    /// Fences set in memory whose drain is not over yet (not on disk yet).
    pub draining: BTreeSet<(Vnode, u64)>,
    /// Last exports waiting for the control plane to record their fence (`MoveFenced`):
    /// move id -> (the request, who asked).
    pub fencing: BTreeMap<u64, (ExportRequest, Addr)>,
    /// Moves whose fence the control plane has recorded, as this process heard (the real
    /// shell's `durable_fences`): their last exports are answered at once.
    pub fenced: BTreeSet<u64>,
}

impl Proc {
    /// `floor`: the persisted map version (0 when the shell under test keeps none).
    fn new(
        me: Option<MemberId>,
        fences: Vec<Fence>,
        floor: u64,
        now: u64,
        incarnation: u64,
    ) -> Self {
        Proc {
            incarnation,
            own: Ownership::new(me.unwrap_or(UNKNOWN_ME), fences, floor),
            recv: Receiver::default(),
            join_pending: true,
            joined_at: None,
            next_join_ms: now,
            next_heartbeat_ms: now,
            pending: BTreeMap::new(),
            draining: BTreeSet::new(),
            fencing: BTreeMap::new(),
            fenced: BTreeSet::new(),
        }
    }
}

pub struct Node {
    pub name: String,
    pub disk: Disk,
    pub proc_: Option<Proc>,
    /// Left the cluster holding nothing, and stopped.
    pub decommissioned: bool,
}

pub struct Control {
    pub state: ControlState,
    /// The state as last published (what `Map` messages carry).
    pub map: Arc<ControlState>,
    pub last_heartbeat: BTreeMap<MemberId, u64>,
    /// Every published map (for `Mutation::LaggingMapReads`).
    pub history: Vec<Arc<ControlState>>,
    pub pushed_version: u64,
    /// The control plane is unavailable (no leader) until then.
    pub down_until: u64,
}

#[derive(Clone, Copy, Debug)]
enum Timer {
    NodeTick(usize),
    LeaderTick,
    ClientTick,
    NemesisTick,
    Restart(usize),
    /// A source's drain for a fence is over: persist the fence, then answer the final export
    /// (the real shell waits for the vnode's operations and actors first; the two are
    /// separate steps, and the move can be resolved in between).
    FenceDrained {
        node: usize,
        incarnation: u64,
        req: ExportRequest,
        to: Addr,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Crash before what this event produced is sent.
    Crash,
    /// Crash right after it is on the wire (it may still arrive).
    CrashAfterSend,
    Decommission,
}

/// Counters, to show what a run (and a batch of runs) exercised.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub steps: u64,
    pub sim_ms: u64,
    pub settle_ms: u64,
    pub writes: u64,
    pub acks: u64,
    pub client_acks: u64,
    pub refused_fenced: u64,
    pub begins: u64,
    pub commits: u64,
    pub aborts: u64,
    pub joins: u64,
    pub leaves: u64,
    pub crashes: u64,
    pub crashes_mid_move: u64,
    pub buggify_crashes: u64,
    pub partitions: u64,
    pub outages: u64,
    pub fences_set: u64,
    pub fences_lifted_on_abort: u64,
    /// A fence's drain ended after its move was resolved: nothing persisted, no answer.
    pub fences_dropped_while_draining: u64,
    pub stale_replies_ignored: u64,
    pub imports: u64,
    pub lost: u64,
    pub duplicated: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.steps += o.steps;
        self.sim_ms += o.sim_ms;
        self.settle_ms = self.settle_ms.max(o.settle_ms);
        self.writes += o.writes;
        self.acks += o.acks;
        self.client_acks += o.client_acks;
        self.refused_fenced += o.refused_fenced;
        self.begins += o.begins;
        self.commits += o.commits;
        self.aborts += o.aborts;
        self.joins += o.joins;
        self.leaves += o.leaves;
        self.crashes += o.crashes;
        self.crashes_mid_move += o.crashes_mid_move;
        self.buggify_crashes += o.buggify_crashes;
        self.partitions += o.partitions;
        self.outages += o.outages;
        self.fences_set += o.fences_set;
        self.fences_lifted_on_abort += o.fences_lifted_on_abort;
        self.fences_dropped_while_draining += o.fences_dropped_while_draining;
        self.stale_replies_ignored += o.stale_replies_ignored;
        self.imports += o.imports;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
    }
}

/// The trace: off by default (formatting costs), on when replaying a seed.
pub struct Trace {
    cap: usize,
    pub lines: VecDeque<String>,
    /// FNV-1a over every line, for the determinism test.
    pub hash: u64,
}

impl Trace {
    fn new(cap: usize) -> Self {
        Trace {
            cap,
            lines: VecDeque::new(),
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }

    pub fn line(&mut self, now: u64, f: impl FnOnce() -> String) {
        if self.cap == 0 {
            return;
        }
        let s = format!("{now:>7}ms {}", f());
        for b in s.bytes() {
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        if self.lines.len() == self.cap {
            self.lines.pop_front();
        }
        self.lines.push_back(s);
    }
}

pub(crate) struct CheckCache {
    pub owner_node: usize,
    pub gen: u64,
    pub upto: usize,
}

pub struct World {
    pub cfg: Config,
    pub p: Params,
    rng: StdRng,
    pub now: u64,
    pub steps: u64,
    pub net: Network,
    timers: BTreeMap<(u64, u64), Timer>,
    timer_seq: u64,
    pub control: Control,
    pub nodes: Vec<Node>,
    pub name_to_node: BTreeMap<String, usize>,
    pub member_node: BTreeMap<MemberId, usize>,
    next_op: u64,
    next_gen: u64,
    /// Process starts so far (each start's incarnation; not drawn from the PRNG, so adding it
    /// changed no seed's schedule).
    starts: u64,
    /// Acknowledged op ids per vnode, in acknowledgement order.
    pub acked: Vec<Vec<u64>>,
    pub(crate) check_cache: Vec<Option<CheckCache>>,
    pub(crate) writers_scratch: Vec<Option<(usize, u64)>>,
    pub(crate) owner_nodes: Vec<usize>,
    pub(crate) owner_nodes_version: Option<u64>,
    /// Vnodes whose acks or stores changed since the last C2 check.
    pub(crate) c2_dirty: BTreeSet<Vnode>,
    /// Some node's ownership view (map, fences, id, process) changed since the last C5 check.
    pub(crate) c5_dirty: bool,
    pub(crate) c5_version: u64,
    pub stats: Stats,
    pub log: Trace,
    outbox: Vec<(Addr, Addr, Msg)>,
    stop: Option<(usize, Stop)>,
    faults_on: bool,
    settling_since: Option<u64>,
    settled: bool,
    pub last_unsettled: String,
}

fn spec(name: &str, incarnation: u64) -> MemberSpec {
    MemberSpec {
        name: name.into(),
        http_addr: format!("{name}:8080"),
        cluster_addr: format!("{name}:9090"),
        incarnation,
        storage_id: 0,
    }
}

fn phase_code(p: Phase) -> u8 {
    match p {
        Phase::Copy => 0,
        Phase::Last => 1,
        Phase::Commit => 2,
    }
}

fn code_phase(c: u8) -> Phase {
    match c {
        0 => Phase::Copy,
        1 => Phase::Last,
        _ => Phase::Commit,
    }
}

impl World {
    pub fn new(cfg: Config) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let p = Params::draw(&mut rng);
        let mut state = ControlState::default();
        let boot = ControlCommand::Bootstrap {
            vnodes: p.vnodes,
            members: (0..p.seeds).map(|i| spec(&format!("n{i}"), 0)).collect(),
        };
        assert_eq!(state.apply(&boot), ControlResponse::Done);
        let mut w = World {
            log: Trace::new(cfg.trace),
            cfg,
            net: Network::new(p.net),
            rng,
            now: 0,
            steps: 0,
            timers: BTreeMap::new(),
            timer_seq: 0,
            control: Control {
                map: Arc::new(state.clone()),
                state,
                last_heartbeat: BTreeMap::new(),
                history: Vec::new(),
                pushed_version: 0,
                down_until: 0,
            },
            nodes: Vec::new(),
            name_to_node: BTreeMap::new(),
            member_node: BTreeMap::new(),
            next_op: 1,
            next_gen: 1,
            starts: 0,
            acked: vec![Vec::new(); p.vnodes as usize],
            check_cache: (0..p.vnodes).map(|_| None).collect(),
            writers_scratch: Vec::new(),
            owner_nodes: Vec::new(),
            owner_nodes_version: None,
            c2_dirty: BTreeSet::new(),
            c5_dirty: true,
            c5_version: 0,
            stats: Stats::default(),
            outbox: Vec::new(),
            stop: None,
            faults_on: true,
            settling_since: None,
            settled: false,
            last_unsettled: String::new(),
            p,
        };
        let p = w.p.clone();
        w.log.line(0, || format!("params {p:?}"));
        for i in 0..p.seeds {
            let n = w.add_node();
            let id = w.control.state.member_by_name(&w.nodes[n].name).unwrap().id;
            debug_assert_eq!(n, i);
            // The seeds know who they are from the bootstrap configuration.
            w.nodes[n].disk.member = Some(id);
            let incarnation = w.next_incarnation();
            w.nodes[n].proc_ = Some(Proc::new(Some(id), Vec::new(), 0, 0, incarnation));
            w.member_node.insert(id, n);
            w.control.last_heartbeat.insert(id, 0);
        }
        w.schedule(0, Timer::LeaderTick);
        w.schedule(1, Timer::ClientTick);
        w.schedule(p.nemesis_gap_ms, Timer::NemesisTick);
        w
    }

    /// Runs the fault phase, then heals everything and waits for the cluster to settle.
    pub fn run(&mut self) -> Stats {
        while self.now < self.p.fault_ms {
            self.step();
        }
        self.start_settling();
        while !self.settled {
            self.step();
            if let Some(since) = self.settling_since {
                if !self.settled && self.now > since + SETTLE_LIMIT_MS {
                    let why = self.last_unsettled.clone();
                    self.fail(&format!(
                        "liveness: not settled {SETTLE_LIMIT_MS}ms after the faults stopped: {why}\n{}",
                        self.describe()
                    ));
                }
            }
        }
        self.check_final();
        self.stats.steps = self.steps;
        self.stats.sim_ms = self.now;
        self.stats.lost = self.net.stats.lost;
        self.stats.duplicated = self.net.stats.duplicated;
        self.stats.clone()
    }

    pub fn fail(&self, msg: &str) -> ! {
        panic!(
            "seed {} (t={}ms, step {}): {msg}",
            self.cfg.seed, self.now, self.steps
        );
    }

    fn next_incarnation(&mut self) -> u64 {
        self.starts += 1;
        self.starts
    }

    fn schedule(&mut self, at: u64, t: Timer) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), t);
    }

    fn add_node(&mut self) -> usize {
        self.c5_dirty = true;
        let i = self.nodes.len();
        let name = format!("n{i}");
        let incarnation = self.next_incarnation();
        self.name_to_node.insert(name.clone(), i);
        self.nodes.push(Node {
            name,
            disk: Disk::default(),
            proc_: Some(Proc::new(None, Vec::new(), 0, self.now, incarnation)),
            decommissioned: false,
        });
        let at = self.now + self.rng.gen_range(1..=NODE_TICK_MS);
        self.schedule(at, Timer::NodeTick(i));
        i
    }

    fn step(&mut self) {
        let next_timer = self.timers.keys().next().copied();
        let use_net = match (self.net.next_time(), next_timer) {
            (Some(m), Some((t, _))) => m <= t,
            (Some(_), None) => true,
            _ => false,
        };
        if use_net {
            let (at, env) = self.net.pop().expect("a message is due");
            self.now = at;
            if let Some(env) = env {
                self.deliver(env);
            }
        } else {
            let ((at, _), timer) = self.timers.pop_first().expect("ticks never stop");
            self.now = at;
            self.fire(timer);
        }
        self.steps += 1;
        self.after_event();
        self.check_step();
        if self.steps.is_multiple_of(FULL_CHECK_EVERY) {
            self.check_acked_full();
        }
    }

    fn send(&mut self, from: Addr, to: Addr, msg: Msg) {
        self.outbox.push((from, to, msg));
    }

    /// Sends what the event produced, carries out a stop it asked for, publishes the map.
    fn after_event(&mut self) {
        let stop = self.stop.take();
        for (from, to, msg) in std::mem::take(&mut self.outbox) {
            if let Addr::Node(i) = from {
                // Nothing leaves a node that stopped before sending.
                let stopped = matches!(stop, Some((j, Stop::Crash | Stop::Decommission)) if j == i);
                if stopped || self.nodes[i].proc_.is_none() {
                    continue;
                }
            }
            self.net.send(&mut self.rng, self.now, from, to, msg);
        }
        match stop {
            Some((i, Stop::Crash)) => {
                self.stats.buggify_crashes += 1;
                self.crash(i, false);
            }
            Some((i, Stop::CrashAfterSend)) => {
                self.stats.buggify_crashes += 1;
                self.crash(i, true);
            }
            Some((i, Stop::Decommission)) => self.decommission(i),
            None => {}
        }
        if self.control.state.version != self.control.pushed_version
            && self.now >= self.control.down_until
        {
            self.control.pushed_version = self.control.state.version;
            let map = self.control.map.clone();
            for i in 0..self.nodes.len() {
                if !self.nodes[i].decommissioned {
                    self.net.send(
                        &mut self.rng,
                        self.now,
                        Addr::Control,
                        Addr::Node(i),
                        Msg::Map(map.clone()),
                    );
                }
            }
        }
    }

    fn deliver(&mut self, env: Envelope) {
        let Envelope { from, to, msg } = env;
        match to {
            Addr::Control => {
                if self.now < self.control.down_until {
                    return;
                }
                self.control_recv(from, msg);
            }
            Addr::Node(i) => {
                if self.nodes[i].proc_.is_none() {
                    return;
                }
                self.log.line(self.now, || {
                    format!("n{i} <- {from:?} {}", describe_msg(&msg))
                });
                self.node_recv(i, from, msg);
            }
            Addr::Client => {
                if let Msg::WriteReply { op, ok: true } = msg {
                    self.stats.client_acks += 1;
                    self.log
                        .line(self.now, || format!("client: op {op} acknowledged"));
                }
            }
            Addr::Admin => {}
        }
    }

    fn fire(&mut self, t: Timer) {
        match t {
            Timer::NodeTick(i) => {
                self.node_tick(i);
                let at = self.now + NODE_TICK_MS + self.rng.gen_range(0..5);
                self.schedule(at, Timer::NodeTick(i));
            }
            Timer::LeaderTick => {
                self.leader_tick();
                self.schedule(self.now + LEADER_TICK_MS, Timer::LeaderTick);
            }
            Timer::ClientTick => {
                self.client_write();
                let at = self.now + self.rng.gen_range(1..=self.p.client_gap_ms);
                self.schedule(at, Timer::ClientTick);
            }
            Timer::NemesisTick => {
                if self.faults_on {
                    self.nemesis();
                }
                let at = self.now + self.rng.gen_range(1..=self.p.nemesis_gap_ms);
                self.schedule(at, Timer::NemesisTick);
            }
            Timer::Restart(i) => self.restart(i),
            Timer::FenceDrained {
                node,
                incarnation,
                req,
                to,
            } => self.fence_drained(node, incarnation, req, to),
        }
    }

    // ---- the control plane -------------------------------------------------------------

    /// Appends a command to the (single, linearizable) log and applies it.
    fn apply(&mut self, cmd: &ControlCommand, origin: &str) -> ControlResponse {
        let before = self.control.state.version;
        let resp = self.control.state.apply(cmd);
        if self.control.state.version != before {
            self.control.map = Arc::new(self.control.state.clone());
            if self.cfg.mutation == Mutation::LaggingMapReads {
                self.control.history.push(self.control.map.clone());
            }
        }
        let ok = !matches!(resp, ControlResponse::Rejected(_));
        match cmd {
            ControlCommand::BeginMove { .. } if ok => self.stats.begins += 1,
            ControlCommand::CommitMove { .. } if ok => self.stats.commits += 1,
            ControlCommand::AbortMove { .. } if ok => self.stats.aborts += 1,
            ControlCommand::Leave { .. } if ok => self.stats.leaves += 1,
            _ => {}
        }
        if let (ControlCommand::Join(spec), ControlResponse::Member(id)) = (cmd, &resp) {
            let n = self.name_to_node[&spec.name];
            self.member_node.insert(*id, n);
            self.control.last_heartbeat.entry(*id).or_insert(self.now);
        }
        let version = self.control.state.version;
        self.log.line(self.now, || {
            format!(
                "control v{version}: {origin} {} -> {resp:?}",
                describe_cmd(cmd)
            )
        });
        resp
    }

    fn control_recv(&mut self, from: Addr, msg: Msg) {
        match msg {
            Msg::Propose { tag, cmd } => {
                // The leader checks what a node may propose, as the real one does.
                let checked = self.cfg.mutation != Mutation::CommitAfterCopyUnchecked;
                if let (Addr::Node(n), true) = (from, checked) {
                    if let Err(why) = cmd.proposable_by(&self.nodes[n].name, &self.control.state) {
                        let resp = ControlResponse::Rejected(why);
                        let version = self.control.state.version;
                        self.send(
                            Addr::Control,
                            from,
                            Msg::ProposeReply { tag, resp, version },
                        );
                        return;
                    }
                }
                let resp = self.apply(&cmd, &format!("{from:?}"));
                let version = self.control.state.version;
                let reply = Msg::ProposeReply { tag, resp, version };
                self.send(Addr::Control, from, reply);
            }
            Msg::Heartbeat { map_version } => {
                let Addr::Node(i) = from else { return };
                if let Some(m) = self.control.state.member_by_name(&self.nodes[i].name) {
                    self.control.last_heartbeat.insert(m.id, self.now);
                }
                if self.control.state.version > map_version {
                    let mut map = self.control.map.clone();
                    let h = &self.control.history;
                    if self.cfg.mutation == Mutation::LaggingMapReads && !h.is_empty() {
                        let lag = self.rng.gen_range(0..h.len().min(30));
                        map = h[h.len() - 1 - lag].clone();
                    }
                    self.send(Addr::Control, from, Msg::Map(map));
                }
            }
            _ => {}
        }
    }

    /// The Raft leader: failure detection, then `rebalance` and its commands.
    fn leader_tick(&mut self) {
        if self.now < self.control.down_until {
            return;
        }
        let now = self.now;
        let mut set_down = Vec::new();
        for m in self.control.state.members.values() {
            let last = self.control.last_heartbeat.get(&m.id).copied().unwrap_or(0);
            let silent = now.saturating_sub(last) > DOWN_AFTER_MS;
            if silent != m.down {
                set_down.push(ControlCommand::SetDown {
                    member: m.id,
                    down: silent,
                });
            }
        }
        for cmd in set_down {
            self.apply(&cmd, "leader");
        }
        let cmds = self
            .control
            .state
            .rebalance(now, self.p.max_moves, self.p.move_timeout_ms);
        for cmd in cmds {
            self.apply(&cmd, "leader");
        }
        if self.settling_since.is_some() {
            match self.settled_check() {
                Ok(()) => self.settled = true,
                Err(why) => self.last_unsettled = why,
            }
        }
    }

    // ---- nodes ---------------------------------------------------------------------------

    fn node_tick(&mut self, i: usize) {
        let now = self.now;
        let World {
            nodes,
            outbox,
            name_to_node,
            log,
            ..
        } = self;
        let node = &mut nodes[i];
        let Some(p) = node.proc_.as_mut() else { return };
        let me = Addr::Node(i);
        if p.join_pending && now >= p.next_join_ms {
            p.next_join_ms = now + JOIN_RETRY_MS;
            let cmd = ControlCommand::Join(spec(&node.name, p.incarnation));
            outbox.push((
                me,
                Addr::Control,
                Msg::Propose {
                    tag: Tag::Join,
                    cmd,
                },
            ));
        }
        if now >= p.next_heartbeat_ms {
            p.next_heartbeat_ms = now + HEARTBEAT_MS;
            let map_version = p.own.map_version();
            outbox.push((me, Addr::Control, Msg::Heartbeat { map_version }));
        }
        let expired: Vec<(u64, u8)> = p
            .pending
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for (move_id, code) in expired {
            p.pending.remove(&(move_id, code));
            log.line(now, || {
                format!("n{i} timeout move {move_id} {:?}", code_phase(code))
            });
            p.recv.on_failed(move_id, code_phase(code), now);
        }
        if p.own.me() == UNKNOWN_ME {
            return;
        }
        for effect in p.recv.poll(now, MAX_BUSY) {
            match effect {
                Effect::Export(req) => {
                    let phase = if req.last { Phase::Last } else { Phase::Copy };
                    p.pending
                        .insert((req.mv.id, phase_code(phase)), now + EFFECT_TIMEOUT_MS);
                    let source = p
                        .own
                        .map()
                        .and_then(|m| m.members.get(&req.mv.from))
                        .and_then(|m| name_to_node.get(&m.spec.name).copied());
                    if let Some(s) = source {
                        outbox.push((me, Addr::Node(s), Msg::ExportReq(req)));
                    }
                }
                Effect::ProposeCommit(mv) => {
                    p.pending
                        .insert((mv.id, phase_code(Phase::Commit)), now + EFFECT_TIMEOUT_MS);
                    let by = match self.cfg.mutation {
                        Mutation::CommitAfterCopyUnchecked => None,
                        _ => Some(p.own.me()),
                    };
                    let cmd = ControlCommand::CommitMove {
                        vnode: mv.vnode,
                        move_id: mv.id,
                        by,
                    };
                    let tag = Tag::Commit { move_id: mv.id };
                    outbox.push((me, Addr::Control, Msg::Propose { tag, cmd }));
                    if self.rng.gen_bool(self.p.buggify / 4.0) && self.faults_on {
                        // Crash with the commit proposal on the wire.
                        self.stop = Some((i, Stop::CrashAfterSend));
                    }
                }
            }
        }
    }

    fn node_recv(&mut self, i: usize, from: Addr, msg: Msg) {
        match msg {
            Msg::Map(map) => self.node_map(i, map),
            Msg::ExportReq(req) => self.node_export_request(i, from, req),
            Msg::ExportReply { mv, last, data } => self.node_export_reply(i, mv, last, data),
            Msg::Write { op, vnode } => self.node_write(i, from, op, vnode),
            Msg::ProposeReply { tag, resp, version } => {
                self.node_propose_reply(i, tag, resp, version)
            }
            Msg::Heartbeat { .. } | Msg::Propose { .. } | Msg::WriteReply { .. } => {}
        }
    }

    /// The node learns its member id (from a `Join` answer or from a map listing its name).
    fn learn_id(&mut self, i: usize, id: MemberId) {
        self.c5_dirty = true;
        let node = &mut self.nodes[i];
        if let Some(known) = node.disk.member {
            if known != id {
                let name = node.name.clone();
                self.fail(&format!("{name} was member {known}, now told {id}"));
            }
        }
        node.disk.member = Some(id);
        let p = node.proc_.as_mut().expect("running");
        if p.own.me() != id {
            p.own.set_me(id);
            if let Some(map) = p.own.map().cloned() {
                p.recv.on_map(id, &map);
            }
        }
    }

    fn node_map(&mut self, i: usize, map: Arc<ControlState>) {
        self.c5_dirty = true;
        let now = self.now;
        let mutation = self.cfg.mutation;
        if let Some(m) = map.member_by_name(&self.nodes[i].name) {
            let id = m.id;
            self.learn_id(i, id);
        }
        let node = &mut self.nodes[i];
        let p = node.proc_.as_mut().expect("running");
        let me = p.own.me();
        if map.version < p.own.map_version().max(node.disk.map_floor) {
            // Older than what this node has: `Ownership` would ignore it, and so must the
            // receiver (an old map can list a move that has committed since).
            if mutation == Mutation::StaleMapsToReceiver && me != UNKNOWN_ME {
                p.recv.on_map(me, &map);
            }
            return;
        }
        if self.cfg.map_floor {
            node.disk.map_floor = map.version;
        }
        let before: Vec<Fence> = p.own.fences().copied().collect();
        let Some(resolved) = p.own.on_map(map.clone()) else {
            return;
        };
        for f in &resolved {
            node.disk.fences.remove(&f.vnode);
            let still_mine = map
                .owner_of(f.vnode)
                .is_some_and(|e| e.owner == me && e.epoch == f.epoch);
            if still_mine {
                self.stats.fences_lifted_on_abort += 1;
            }
        }
        if !resolved.is_empty() {
            self.log.line(now, || {
                format!("n{i} lifts fences {resolved:?} (had {before:?})")
            });
        }
        if me == UNKNOWN_ME {
            return;
        }
        p.recv.on_map(me, &map);
        let left = map
            .members
            .get(&me)
            .is_some_and(|m| m.state == MemberState::Left);
        let involved = map.moves.values().any(|m| m.from == me || m.to == me);
        let after_join = p.joined_at.is_some_and(|v| map.version >= v);
        if left && after_join && map.owned_by(me) == 0 && !involved {
            self.stop = Some((i, Stop::Decommission));
        }
    }

    fn node_export_request(&mut self, i: usize, from: Addr, req: ExportRequest) {
        self.c5_dirty = true;
        let now = self.now;
        let node = &mut self.nodes[i];
        let p = node.proc_.as_mut().expect("running");
        let decision = p.own.on_export_request(&req);
        self.log.line(now, || {
            format!("n{i} export request {req:?} -> {decision:?}")
        });
        let data = match decision {
            ExportDecision::Refuse => None,
            ExportDecision::Copy => Some(
                node.disk
                    .store
                    .get(&req.mv.vnode)
                    .map(|s| s.ops.clone())
                    .unwrap_or_default(),
            ),
            ExportDecision::FenceThenExport(fence)
                if node.disk.fences.get(&fence.vnode) == Some(&fence) =>
            {
                // A later request of the same last phase: the fence is durable already.
                if !p.fenced.contains(&fence.move_id) {
                    // Not yet known to be recorded: ask the control plane (again).
                    self.propose_fenced(i, req, from);
                    return;
                }
                Some(
                    node.disk
                        .store
                        .get(&req.mv.vnode)
                        .map(|s| s.ops.clone())
                        .unwrap_or_default(),
                )
            }
            ExportDecision::FenceThenExport(fence) => {
                // The fence holds in memory from now on; the drain (operations in flight,
                // actors) takes a while, then `fence_drained` persists it and answers.
                p.draining.insert((fence.vnode, fence.move_id));
                let drain = self.rng.gen_range(0..=40);
                let incarnation = p.incarnation;
                let timer = Timer::FenceDrained {
                    node: i,
                    incarnation,
                    req,
                    to: from,
                };
                self.schedule(now + drain, timer);
                return;
            }
        };
        let reply = Msg::ExportReply {
            mv: req.mv,
            last: req.last,
            data,
        };
        self.send(Addr::Node(i), from, reply);
    }

    /// The drain behind a fence is over. The fence belongs to its move: if this process no
    /// longer holds it (the move was resolved meanwhile, or another move fenced the vnode),
    /// nothing is persisted and nothing answered; else it is persisted, then the last export
    /// answered.
    fn fence_drained(&mut self, i: usize, incarnation: u64, req: ExportRequest, to: Addr) {
        self.c5_dirty = true;
        let node = &mut self.nodes[i];
        let Some(p) = node.proc_.as_mut() else { return };
        if p.incarnation != incarnation {
            return; // a task of a process that crashed since
        }
        let mv = req.mv;
        p.draining.remove(&(mv.vnode, mv.id));
        let fence = Fence {
            vnode: mv.vnode,
            move_id: mv.id,
            epoch: mv.epoch,
            begun_at: mv.begun_at,
        };
        let current = p.own.fences().any(|f| *f == fence);
        if !current && self.cfg.mutation != Mutation::FenceOutlivesMove {
            self.stats.fences_dropped_while_draining += 1;
            self.log.line(self.now, || {
                format!("n{i} drops the fence of move {} (resolved)", mv.id)
            });
            return;
        }
        node.disk.fences.insert(fence.vnode, fence);
        self.stats.fences_set += 1;
        if self.faults_on && self.rng.gen_bool(self.p.buggify) {
            // Crash with the fence on disk, before the control plane hears of it.
            self.stop = Some((i, Stop::Crash));
            return;
        }
        self.propose_fenced(i, req, to);
    }

    /// The source asks the control plane to record its fence; the last export is answered
    /// once it has (`node_propose_reply`).
    fn propose_fenced(&mut self, i: usize, req: ExportRequest, to: Addr) {
        let p = self.nodes[i].proc_.as_mut().expect("running");
        let mv = req.mv;
        p.fencing.insert(mv.id, (req, to));
        let cmd = ControlCommand::MoveFenced {
            vnode: mv.vnode,
            move_id: mv.id,
            by: p.own.me(),
        };
        let tag = Tag::Fenced { move_id: mv.id };
        self.send(Addr::Node(i), Addr::Control, Msg::Propose { tag, cmd });
    }

    /// The control plane recorded the fence: answer the last export (if the move is still
    /// this process's to answer).
    fn fence_recorded(&mut self, i: usize, move_id: u64) {
        let node = &mut self.nodes[i];
        let p = node.proc_.as_mut().expect("running");
        let Some((req, to)) = p.fencing.remove(&move_id) else {
            return;
        };
        let fence = Fence {
            vnode: req.mv.vnode,
            move_id,
            epoch: req.mv.epoch,
            begun_at: req.mv.begun_at,
        };
        if !p.own.fences().any(|f| *f == fence) {
            return;
        }
        p.fenced.insert(move_id);
        let data = Some(
            node.disk
                .store
                .get(&req.mv.vnode)
                .map(|s| s.ops.clone())
                .unwrap_or_default(),
        );
        if self.faults_on && self.rng.gen_bool(self.p.buggify / 2.0) {
            // Crash with the answer on the wire.
            self.stop = Some((i, Stop::CrashAfterSend));
        }
        let reply = Msg::ExportReply {
            mv: req.mv,
            last: true,
            data,
        };
        self.send(Addr::Node(i), to, reply);
    }

    fn node_export_reply(
        &mut self,
        i: usize,
        mv: stockring::cluster::control::Move,
        last: bool,
        data: Option<Arc<BTreeSet<u64>>>,
    ) {
        let now = self.now;
        let phase = if last { Phase::Last } else { Phase::Copy };
        let node = &mut self.nodes[i];
        let p = node.proc_.as_mut().expect("running");
        p.pending.remove(&(mv.id, phase_code(phase)));
        let current = p.recv.phase_of(mv.id);
        let importable = match self.cfg.mutation {
            Mutation::ImportAnyPhase => current.is_some(),
            _ => current == Some(phase),
        };
        if !importable {
            // A late or duplicated answer for a phase this move is past (or a move this node
            // no longer runs): importing it could overwrite newer data.
            self.stats.stale_replies_ignored += 1;
            return;
        }
        match data {
            Some(ops) => {
                let n = ops.len();
                node.disk.store.insert(
                    mv.vnode,
                    VStore {
                        ops,
                        gen: self.next_gen,
                    },
                );
                self.next_gen += 1;
                self.c2_dirty.insert(mv.vnode);
                self.stats.imports += 1;
                self.log.line(now, || {
                    format!(
                        "n{i} imports v{} ({n} ops) for move {} {phase:?}",
                        mv.vnode, mv.id
                    )
                });
                if self.faults_on && self.rng.gen_bool(self.p.buggify / 2.0) {
                    // Crash with the import on disk, before the receiver hears of it.
                    self.stop = Some((i, Stop::Crash));
                    return;
                }
                p.recv.on_done(mv.id, phase, now);
                let skips = matches!(
                    self.cfg.mutation,
                    Mutation::CommitAfterCopy | Mutation::CommitAfterCopyUnchecked
                );
                if skips && phase == Phase::Copy {
                    // A broken target: as if the last export had come back too.
                    p.recv.on_done(mv.id, Phase::Last, now);
                }
            }
            None => p.recv.on_failed(mv.id, phase, now),
        }
    }

    fn node_write(&mut self, i: usize, from: Addr, op: u64, vnode: Vnode) {
        let now = self.now;
        let node = &mut self.nodes[i];
        let p = node.proc_.as_mut().expect("running");
        let access = p.own.access(vnode);
        let ok = match access {
            Access::Local { epoch } => {
                // Durable first, then acknowledged.
                let me = p.own.me();
                let entry = node.disk.store.entry(vnode).or_default();
                Arc::make_mut(&mut entry.ops).insert(op);
                self.acked[vnode as usize].push(op);
                self.c2_dirty.insert(vnode);
                self.stats.acks += 1;
                self.log.line(now, || {
                    format!("n{i} acks op {op} on v{vnode} at epoch {epoch}")
                });
                self.check_ack(i, me, vnode, epoch, op);
                if self.faults_on && self.rng.gen_bool(self.p.buggify / 20.0) {
                    self.stop = Some((i, Stop::Crash));
                }
                true
            }
            Access::Fenced => {
                self.stats.refused_fenced += 1;
                false
            }
            Access::Remote { .. } | Access::Unknown => false,
        };
        self.send(Addr::Node(i), from, Msg::WriteReply { op, ok });
    }

    fn node_propose_reply(&mut self, i: usize, tag: Tag, resp: ControlResponse, version: u64) {
        let now = self.now;
        match tag {
            Tag::Join => {
                if let ControlResponse::Member(id) = resp {
                    self.learn_id(i, id);
                    let p = self.nodes[i].proc_.as_mut().expect("running");
                    p.join_pending = false;
                    p.joined_at.get_or_insert(version);
                }
            }
            Tag::Commit { move_id } => {
                let p = self.nodes[i].proc_.as_mut().expect("running");
                p.pending.remove(&(move_id, phase_code(Phase::Commit)));
                match resp {
                    ControlResponse::Rejected(_) => p.recv.on_failed(move_id, Phase::Commit, now),
                    _ => p.recv.on_done(move_id, Phase::Commit, now),
                }
            }
            Tag::Fenced { move_id } => match resp {
                ControlResponse::Rejected(why) if why != "unchanged" => {
                    let p = self.nodes[i].proc_.as_mut().expect("running");
                    p.fencing.remove(&move_id);
                }
                _ => self.fence_recorded(i, move_id),
            },
            Tag::Admin => {}
        }
    }

    // ---- clients, faults -----------------------------------------------------------------

    fn client_write(&mut self) {
        let op = self.next_op;
        self.next_op += 1;
        let vnode = self.rng.gen_range(0..self.p.vnodes);
        // Mostly to the owner (as a client with a fresh routing table would), else anywhere.
        let target = if self.rng.gen_bool(0.7) {
            let owner = self.control.state.ring[vnode as usize].owner;
            self.member_node[&owner]
        } else {
            self.rng.gen_range(0..self.nodes.len())
        };
        self.stats.writes += 1;
        self.send(Addr::Client, Addr::Node(target), Msg::Write { op, vnode });
    }

    fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].proc_.is_some())
            .collect()
    }

    fn nemesis(&mut self) {
        self.net.expire_partitions(self.now);
        let total: u32 = self.p.weights.iter().sum();
        if total == 0 {
            return;
        }
        let mut roll = self.rng.gen_range(0..total);
        let mut action = 0;
        for (k, w) in self.p.weights.iter().enumerate() {
            if roll < *w {
                action = k;
                break;
            }
            roll -= w;
        }
        let now = self.now;
        match action {
            0 => {
                // Crash a node, preferably one in the middle of a handoff.
                let running = self.running();
                let in_moves: Vec<usize> = running
                    .iter()
                    .copied()
                    .filter(|i| {
                        self.nodes[*i].disk.member.is_some_and(|id| {
                            self.control
                                .state
                                .moves
                                .values()
                                .any(|m| m.from == id || m.to == id)
                        })
                    })
                    .collect();
                let pool = if !in_moves.is_empty() && self.rng.gen_bool(0.6) {
                    in_moves
                } else {
                    running
                };
                if pool.is_empty() {
                    return;
                }
                let i = pool[self.rng.gen_range(0..pool.len())];
                self.crash(i, false);
            }
            1 => {
                let mut ends: Vec<Addr> = vec![Addr::Control];
                ends.extend((0..self.nodes.len()).map(Addr::Node));
                let a = ends[self.rng.gen_range(0..ends.len())];
                let b = ends[self.rng.gen_range(0..ends.len())];
                if a != b {
                    let until = now + self.rng.gen_range(100..=3_000);
                    self.net.partition(a, b, until);
                    self.stats.partitions += 1;
                    self.log.line(now, || {
                        format!("nemesis: partition {a:?} | {b:?} until {until}")
                    });
                }
            }
            2 => {
                if self.nodes.len() < self.p.max_nodes {
                    let i = self.add_node();
                    self.stats.joins += 1;
                    self.log.line(now, || format!("nemesis: new node n{i}"));
                }
            }
            3 => {
                let active: Vec<String> = self
                    .control
                    .state
                    .members
                    .values()
                    .filter(|m| matches!(m.state, MemberState::Joining | MemberState::Up))
                    .map(|m| m.spec.name.clone())
                    .collect();
                if active.len() > 2 {
                    let name = active[self.rng.gen_range(0..active.len())].clone();
                    self.log
                        .line(now, || format!("nemesis: admin asks {name} to leave"));
                    let cmd = ControlCommand::Leave { name };
                    self.send(
                        Addr::Admin,
                        Addr::Control,
                        Msg::Propose {
                            tag: Tag::Admin,
                            cmd,
                        },
                    );
                }
            }
            4 => {
                let gone: Vec<usize> = (0..self.nodes.len())
                    .filter(|i| self.nodes[*i].decommissioned)
                    .collect();
                if !gone.is_empty() {
                    let i = gone[self.rng.gen_range(0..gone.len())];
                    self.nodes[i].decommissioned = false;
                    self.stats.joins += 1;
                    self.log
                        .line(now, || format!("nemesis: n{i} comes back (rejoins)"));
                    self.restart(i);
                }
            }
            _ => {
                if now >= self.control.down_until {
                    self.control.down_until = now + self.rng.gen_range(100..=2_000);
                    self.stats.outages += 1;
                    let until = self.control.down_until;
                    self.log
                        .line(now, || format!("nemesis: control plane down until {until}"));
                    // A new leader starts its failure detector afresh.
                    let ids: Vec<MemberId> = self.control.state.members.keys().copied().collect();
                    for id in ids {
                        self.control.last_heartbeat.insert(id, until);
                    }
                }
            }
        }
    }

    /// A crash loses the process and what is in flight to it (its connections reset), and
    /// what it sent unless `keep_sent` (already on the wire: it may still arrive).
    fn crash(&mut self, i: usize, keep_sent: bool) {
        if self.nodes[i].proc_.is_none() {
            return;
        }
        self.nodes[i].proc_ = None;
        self.c5_dirty = true;
        if keep_sent {
            self.net.drop_to(Addr::Node(i));
        } else {
            self.net.drop_involving(Addr::Node(i));
        }
        self.stats.crashes += 1;
        let mid_move = self.nodes[i].disk.member.is_some_and(|id| {
            self.control
                .state
                .moves
                .values()
                .any(|m| m.from == id || m.to == id)
        }) || !self.nodes[i].disk.fences.is_empty();
        if mid_move {
            self.stats.crashes_mid_move += 1;
        }
        // Sometimes back at once (racing the handoff it was in), sometimes long enough to be
        // marked down.
        let at = self.now
            + match (self.faults_on, self.rng.gen_bool(0.5)) {
                (false, _) => 1,
                (true, true) => self.rng.gen_range(5..=200),
                (true, false) => self.rng.gen_range(200..=4_000),
            };
        self.schedule(at, Timer::Restart(i));
        self.log.line(self.now, || {
            format!("n{i} CRASHES (mid-move: {mid_move}); restart at {at}")
        });
    }

    fn decommission(&mut self, i: usize) {
        self.c5_dirty = true;
        self.nodes[i].proc_ = None;
        self.nodes[i].decommissioned = true;
        self.net.drop_involving(Addr::Node(i));
        self.log.line(self.now, || format!("n{i} has left: stops"));
    }

    fn restart(&mut self, i: usize) {
        self.c5_dirty = true;
        let node = &mut self.nodes[i];
        if node.proc_.is_some() || node.decommissioned {
            return;
        }
        let fences: Vec<Fence> = match self.cfg.mutation {
            Mutation::VolatileFences => Vec::new(),
            _ => node.disk.fences.values().copied().collect(),
        };
        if self.cfg.mutation == Mutation::VolatileFences {
            node.disk.fences.clear();
        }
        let n = fences.len();
        let floor = if self.cfg.map_floor {
            node.disk.map_floor
        } else {
            0
        };
        let member = node.disk.member;
        let incarnation = self.next_incarnation();
        let node = &mut self.nodes[i];
        node.proc_ = Some(Proc::new(member, fences, floor, self.now, incarnation));
        self.log.line(self.now, || {
            format!("n{i} restarts with {n} durable fences")
        });
    }

    fn start_settling(&mut self) {
        self.faults_on = false;
        self.net.heal();
        if self.now < self.control.down_until {
            self.control.down_until = self.now;
        }
        self.settling_since = Some(self.now);
        self.log
            .line(self.now, || "--- faults stop; settling".into());
        for i in 0..self.nodes.len() {
            self.restart(i);
        }
    }

    pub(crate) fn settled_at(&mut self) {
        if let Some(since) = self.settling_since {
            self.stats.settle_ms = self.now - since;
        }
    }

    /// A human-readable dump of the cluster, for failures.
    pub fn describe(&self) -> String {
        let s = &self.control.state;
        let mut out = String::new();
        let _ = writeln!(out, "control v{}:", s.version);
        for m in s.members.values() {
            let _ = writeln!(
                out,
                "  member {} {} {:?} down={} owns {}",
                m.id,
                m.spec.name,
                m.state,
                m.down,
                s.owned_by(m.id)
            );
        }
        let ring: Vec<String> = s
            .ring
            .iter()
            .enumerate()
            .map(|(v, e)| format!("v{v}:{}@{}", e.owner, e.epoch))
            .collect();
        let _ = writeln!(out, "  ring {}", ring.join(" "));
        for m in s.moves.values() {
            let _ = writeln!(out, "  move {m:?}");
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let _ = write!(
                out,
                "  n{i}: member {:?} decommissioned={} fences {:?}",
                n.disk.member,
                n.decommissioned,
                n.disk.fences.values().collect::<Vec<_>>()
            );
            match &n.proc_ {
                None => {
                    let _ = writeln!(out, " (down)");
                }
                Some(p) => {
                    let phases: Vec<String> = s
                        .moves
                        .values()
                        .filter_map(|m| p.recv.phase_of(m.id).map(|ph| format!("{}:{ph:?}", m.id)))
                        .collect();
                    let _ = writeln!(
                        out,
                        " map v{} incoming {} {phases:?} pending {:?}",
                        p.own.map_version(),
                        p.recv.in_flight(),
                        p.pending
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "  partitions {:?}, control down until {}",
            self.net.partitions(),
            self.control.down_until
        );
        out
    }
}

fn describe_cmd(cmd: &ControlCommand) -> String {
    match cmd {
        ControlCommand::Join(spec) => format!("Join({})", spec.name),
        ControlCommand::Bootstrap { vnodes, .. } => format!("Bootstrap({vnodes})"),
        other => format!("{other:?}"),
    }
}

fn describe_msg(msg: &Msg) -> String {
    match msg {
        Msg::Map(m) => format!("map v{} moves {:?}", m.version, m.moves.keys()),
        Msg::ExportReply { mv, last, data } => format!(
            "export-reply move {} v{} last={last} {}",
            mv.id,
            mv.vnode,
            data.as_ref()
                .map_or("REFUSED".to_string(), |d| format!("{} ops", d.len()))
        ),
        Msg::ExportReq(r) => format!(
            "export-req move {} v{} last={}",
            r.mv.id, r.mv.vnode, r.last
        ),
        Msg::ProposeReply { tag, resp, version } => {
            format!("propose-reply {tag:?} {resp:?} at v{version}")
        }
        Msg::Write { op, vnode } => format!("write op {op} v{vnode}"),
        other => other.kind().to_string(),
    }
}
