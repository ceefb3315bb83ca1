//! The simulated network: every message between the control plane, the nodes, the clients and
//! the admin goes through here. Seeded loss, duplication, random delays (so reordering), and
//! two-way partitions between a pair of endpoints for a while. No wall clock: delivery times
//! are simulated milliseconds, and ties are broken by send order.

use rand::rngs::StdRng;
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use stockring::cluster::control::{ControlCommand, ControlResponse, ControlState, Move};
use stockring::cluster::handoff::ExportRequest;
use stockring::cluster::ring::Vnode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Addr {
    /// The Raft group on the seeds, modelled as one linearizable log (and its leader).
    Control,
    /// The operator: sends `Leave`.
    Admin,
    Client,
    Node(usize),
}

/// What a proposal is for, echoed in its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    Join,
    Commit {
        move_id: u64,
    },
    /// A source's `MoveFenced`: on its answer, the last export of the move is sent.
    Fenced {
        move_id: u64,
    },
    Admin,
}

#[derive(Clone, Debug)]
pub enum Msg {
    Propose {
        tag: Tag,
        cmd: ControlCommand,
    },
    /// `version`: the control state's version once the command is applied (Raft answers a
    /// client write with the log index it applied at).
    ProposeReply {
        tag: Tag,
        resp: ControlResponse,
        version: u64,
    },
    /// Node -> control: "alive, and my map is at this version" (the control plane answers with
    /// its map if it is newer: the map subscription).
    Heartbeat {
        map_version: u64,
    },
    /// Control -> node: the whole control state at some version.
    Map(Arc<ControlState>),
    /// Target -> source.
    ExportReq(ExportRequest),
    /// Source -> target: the vnode's data, or `None` for a refusal.
    ExportReply {
        mv: Move,
        last: bool,
        data: Option<Arc<BTreeSet<u64>>>,
    },
    Write {
        op: u64,
        vnode: Vnode,
    },
    WriteReply {
        op: u64,
        ok: bool,
    },
}

impl Msg {
    /// A short name for traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Propose { .. } => "propose",
            Msg::ProposeReply { .. } => "propose-reply",
            Msg::Heartbeat { .. } => "heartbeat",
            Msg::Map(_) => "map",
            Msg::ExportReq(_) => "export-req",
            Msg::ExportReply { .. } => "export-reply",
            Msg::Write { .. } => "write",
            Msg::WriteReply { .. } => "write-reply",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Envelope {
    pub from: Addr,
    pub to: Addr,
    pub msg: Msg,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct NetFaults {
    pub loss: f64,
    pub dup: f64,
    /// Probability that a message takes the slow path (up to `slow_max_ms`).
    pub slow: f64,
    pub max_delay_ms: u64,
    pub slow_max_ms: u64,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct NetStats {
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub cut: u64,
}

#[derive(Default)]
pub struct Network {
    queue: BTreeMap<(u64, u64), Envelope>,
    seq: u64,
    pub faults: NetFaults,
    /// Two-way cuts: (a, b, until_ms).
    partitions: Vec<(Addr, Addr, u64)>,
    pub stats: NetStats,
}

impl Network {
    pub fn new(faults: NetFaults) -> Self {
        Self {
            faults,
            ..Self::default()
        }
    }

    pub fn is_cut(&self, a: Addr, b: Addr, now: u64) -> bool {
        self.partitions
            .iter()
            .any(|&(x, y, until)| now < until && ((x == a && y == b) || (x == b && y == a)))
    }

    pub fn send(&mut self, rng: &mut StdRng, now: u64, from: Addr, to: Addr, msg: Msg) {
        self.stats.sent += 1;
        if self.is_cut(from, to, now) {
            self.stats.cut += 1;
            return;
        }
        if rng.gen_bool(self.faults.loss) {
            self.stats.lost += 1;
            return;
        }
        let copies = if rng.gen_bool(self.faults.dup) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if rng.gen_bool(self.faults.slow) {
                rng.gen_range(1..=self.faults.slow_max_ms.max(1))
            } else {
                rng.gen_range(1..=self.faults.max_delay_ms.max(1))
            };
            self.seq += 1;
            let env = Envelope {
                from,
                to,
                msg: msg.clone(),
            };
            self.queue.insert((now + delay, self.seq), env);
        }
    }

    pub fn next_time(&self) -> Option<u64> {
        self.queue.keys().next().map(|k| k.0)
    }

    /// Takes the next message off the wire: its delivery time, and the message unless a
    /// partition cut it on the way.
    pub fn pop(&mut self) -> Option<(u64, Option<Envelope>)> {
        let ((at, _), env) = self.queue.pop_first()?;
        if self.is_cut(env.from, env.to, at) {
            self.stats.cut += 1;
            return Some((at, None));
        }
        Some((at, Some(env)))
    }

    pub fn partition(&mut self, a: Addr, b: Addr, until: u64) {
        self.partitions.push((a, b, until));
    }

    pub fn expire_partitions(&mut self, now: u64) {
        self.partitions.retain(|p| p.2 > now);
    }

    pub fn partitions(&self) -> &[(Addr, Addr, u64)] {
        &self.partitions
    }

    /// No more loss, duplication, slow paths or partitions (messages already in flight keep
    /// their delivery time).
    pub fn heal(&mut self) {
        self.partitions.clear();
        self.faults.loss = 0.0;
        self.faults.dup = 0.0;
        self.faults.slow = 0.0;
    }

    /// A crash resets the node's connections: what was in flight to or from it is gone.
    pub fn drop_involving(&mut self, addr: Addr) {
        self.queue.retain(|_, e| e.from != addr && e.to != addr);
    }

    pub fn drop_to(&mut self, addr: Addr) {
        self.queue.retain(|_, e| e.to != addr);
    }
}
