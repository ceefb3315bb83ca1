//! The simulated world for replication: nodes running the library's `Replica` core with
//! simulated disks (a FIFO of fsyncs; a crash loses what was not yet synced), a control
//! plane applying the library's `ReplicaSets` (Raft modelled as one linearizable log that can
//! be cut off), a lossy network that delays, reorders, duplicates and partitions (also one
//! way), clients that write and read with retries, and a nemesis: crash and restart, pause
//! and resume (messages wait in the socket), a lost disk, partitions, the control plane
//! isolated. Everything from one seed; no wall clock.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use stockring::cluster::replication::replica::{DurableCopy, Record};
use stockring::cluster::replication::{
    Mutant, Replica, ReplicaConfig, ReplicaMsg, ReplicaOutput, ReplicaSets, SetCommand,
};
use stockring::cluster::ring::Vnode;
use stockring::cluster::MemberId;

/// Faults happen in `[FAULTS_FROM_MS, faults_until_ms)`; then everything heals.
const FAULTS_FROM_MS: u64 = 100;
/// After the faults: every client operation answered and the cluster converged by then.
const SETTLE_LIMIT_MS: u64 = 30_000;
const TICK_MS: u64 = 10;
const PING_MS: u64 = 40;
const DOWN_AFTER_MS: u64 = 250;
const PLAN_MS: u64 = 100;
const CLIENT_TIMEOUT_MS: u64 = 150;
const CLIENT_RETRY_MS: u64 = 15;
/// The `Heal` of the control plane's isolation.
const CONTROL_CUT: u64 = u64::MAX;

#[derive(Clone, Debug)]
pub struct Config {
    pub seed: u64,
    pub mutant: Mutant,
    pub trace: usize,
}

impl Config {
    pub fn new(seed: u64) -> Config {
        Config {
            seed,
            mutant: Mutant::None,
            trace: 0,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub seeds: u64,
    pub writes_acked: u64,
    pub reads_answered: u64,
    pub failovers: u64,
    pub shrinks: u64,
    pub adds: u64,
    pub reclaims: u64,
    pub crashes: u64,
    pub buggify_crashes: u64,
    pub pauses: u64,
    pub partitions: u64,
    pub wipes: u64,
    pub lost_vnodes: u64,
    pub unknown_outcomes: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.seeds += o.seeds;
        self.writes_acked += o.writes_acked;
        self.reads_answered += o.reads_answered;
        self.failovers += o.failovers;
        self.shrinks += o.shrinks;
        self.adds += o.adds;
        self.reclaims += o.reclaims;
        self.crashes += o.crashes;
        self.buggify_crashes += o.buggify_crashes;
        self.pauses += o.pauses;
        self.partitions += o.partitions;
        self.wipes += o.wipes;
        self.lost_vnodes += o.lost_vnodes;
        self.unknown_outcomes += o.unknown_outcomes;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Addr {
    Control,
    Node(MemberId),
    Client(usize),
}

type Tag = u64;

#[derive(Clone, Debug)]
enum Payload {
    Replica(u64, ReplicaMsg<u64>),
    Propose(SetCommand),
    Sets(Box<ReplicaSets>),
    Pong { incarnation: u64 },
    Write { req: Tag, vnode: Vnode, op: u64 },
    Read { req: Tag, vnode: Vnode },
    Answer { req: Tag, answer: ClientAnswer },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ClientAnswer {
    Committed,
    Refused,
    Unknown,
    Read(Vec<u64>),
}

#[derive(Clone, Debug)]
enum Event {
    Deliver {
        from: Addr,
        to: Addr,
        payload: Payload,
    },
    /// A node's fsync completes (only for the run it was issued in).
    Synced {
        node: MemberId,
        run: u64,
        vnode: Vnode,
        generation: u64,
        len: u64,
        sealed: (u64, MemberId),
        log: Vec<Record<u64>>,
    },
    Tick {
        node: MemberId,
        run: u64,
    },
    ControlTick,
    ClientStep {
        client: usize,
    },
    ClientTimeout {
        client: usize,
        req: Tag,
    },
    ClientResend {
        client: usize,
        req: Tag,
    },
    Restart {
        node: MemberId,
        wipe: bool,
    },
    Resume {
        node: MemberId,
    },
    Heal {
        partition: u64,
    },
    Nemesis,
}

struct Node {
    replica: Replica<u64, Tag>,
    /// Each start of the process; events of an earlier run are ignored.
    run: u64,
    incarnation: u64,
    up: bool,
    paused: bool,
    held: Vec<(Addr, Payload)>,
    disk: BTreeMap<Vnode, DurableCopy<u64>>,
    sync_busy_until: u64,
    /// Client requests waiting for the replica's answer: replica tag -> (client, request).
    asks: BTreeMap<Tag, (usize, Tag)>,
    next_tag: Tag,
}

struct Control {
    sets: ReplicaSets,
    last_pong: BTreeMap<MemberId, u64>,
    /// (vnode, epoch) -> its primary, for every epoch ever decided.
    primaries: BTreeMap<(Vnode, u64), MemberId>,
}

#[derive(Clone, Debug)]
enum Op {
    Write { op: u64 },
    Read { invoked_ms: u64 },
}

struct Client {
    pending: Option<(Tag, Vnode, Op)>,
    next_req: Tag,
    /// The primaries as this client last looked them up (refreshed now and then: clients
    /// route by a stale map, as real ones do).
    primaries: Vec<MemberId>,
    refreshed_ms: u64,
    /// How long it waits for an answer (clients differ).
    timeout_ms: u64,
}

pub struct Trace {
    pub lines: Vec<String>,
    keep: usize,
}

impl Trace {
    fn push(&mut self, line: String) {
        if self.keep == 0 {
            return;
        }
        if self.lines.len() >= self.keep {
            self.lines.remove(0);
        }
        self.lines.push(line);
    }
}

pub struct World {
    cfg: Config,
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Event>>,
    nodes: BTreeMap<MemberId, Node>,
    control: Control,
    clients: Vec<Client>,
    replication_factor: usize,
    vnodes: u32,
    faults_until_ms: u64,
    drop_per_mille: u32,
    blocked: BTreeMap<u64, BTreeSet<(Addr, Addr)>>,
    next_partition: u64,
    control_cut: bool,
    next_op: u64,
    /// Per vnode, the committed log as every answer so far has shown it.
    committed: BTreeMap<Vnode, Vec<u64>>,
    /// Per vnode, each op's first acknowledgement as a client saw it (ms).
    acked_at: BTreeMap<Vnode, BTreeMap<u64, u64>>,
    /// Every read sent: (client, request) -> when it was invoked; checked when a node
    /// answers it, whether or not its client still waits.
    reads_invoked: BTreeMap<(usize, Tag), u64>,
    /// Ops of vnodes whose every copy was wiped (reported `lost`): excused from C2.
    lost: BTreeSet<Vnode>,
    pub stats: Stats,
    pub trace: Trace,
}

impl World {
    pub fn new(cfg: Config) -> World {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let n: MemberId = rng.gen_range(3..=5);
        let replication_factor = match rng.gen_range(0..10) {
            0 => 1,
            1..=5 => 2,
            _ => 3,
        };
        let vnodes = [4u32, 8][rng.gen_range(0..2)];
        let members: Vec<(MemberId, u64)> = (0..n).map(|m| (m, 1_000 + m as u64)).collect();
        let mut sets = ReplicaSets::new(vnodes, replication_factor, &members);
        sets.mutant = cfg.mutant;
        let mut primaries = BTreeMap::new();
        for (v, e) in sets.vnodes.iter().enumerate() {
            primaries.insert((v as Vnode, e.epoch), e.primary());
        }
        let trace = Trace {
            lines: Vec::new(),
            keep: cfg.trace,
        };
        let faults_until_ms = rng.gen_range(1_500..4_000);
        let drop_per_mille = rng.gen_range(0..40);
        let clients = (0..rng.gen_range(2..6))
            .map(|_| Client {
                pending: None,
                next_req: 1,
                primaries: Vec::new(),
                refreshed_ms: 0,
                timeout_ms: rng.gen_range(CLIENT_TIMEOUT_MS..8 * CLIENT_TIMEOUT_MS),
            })
            .collect();
        let mut w = World {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            nodes: BTreeMap::new(),
            control: Control {
                sets,
                last_pong: BTreeMap::new(),
                primaries,
            },
            clients,
            replication_factor,
            vnodes,
            faults_until_ms,
            drop_per_mille,
            blocked: BTreeMap::new(),
            next_partition: 0,
            control_cut: false,
            next_op: 1,
            committed: BTreeMap::new(),
            acked_at: BTreeMap::new(),
            reads_invoked: BTreeMap::new(),
            lost: BTreeSet::new(),
            stats: Stats {
                seeds: 1,
                ..Stats::default()
            },
            trace,
            cfg,
        };
        for (m, inc) in members {
            let node = w.fresh_node(m, inc, BTreeMap::new());
            w.nodes.insert(m, node);
            w.schedule(0, Event::Tick { node: m, run: 0 });
        }
        w.schedule(0, Event::ControlTick);
        for c in 0..w.clients.len() {
            w.schedule(1 + c as u64, Event::ClientStep { client: c });
        }
        w.schedule(FAULTS_FROM_MS, Event::Nemesis);
        w
    }

    fn fresh_node(
        &self,
        me: MemberId,
        incarnation: u64,
        disk: BTreeMap<Vnode, DurableCopy<u64>>,
    ) -> Node {
        let cfg = ReplicaConfig {
            me,
            incarnation,
            ack_timeout_ms: 200,
            resend_ms: 30,
            max_batch: 8,
            mutant: self.cfg.mutant,
        };
        Node {
            replica: Replica::restore(cfg, disk.clone()),
            run: 0,
            incarnation,
            up: true,
            paused: false,
            held: Vec::new(),
            disk,
            sync_busy_until: 0,
            asks: BTreeMap::new(),
            next_tag: 1,
        }
    }

    fn schedule(&mut self, at: u64, ev: Event) {
        self.seq += 1;
        self.events.push(Some(ev));
        self.queue
            .push(Reverse((at, self.seq, self.events.len() - 1)));
    }

    fn send(&mut self, from: Addr, to: Addr, payload: Payload) {
        let cut = self.blocked.values().any(|b| b.contains(&(from, to)))
            || (self.control_cut
                && (from == Addr::Control || to == Addr::Control)
                && !matches!((from, to), (Addr::Client(_), _) | (_, Addr::Client(_))));
        if cut || self.rng.gen_range(0..1000) < self.drop_per_mille {
            return;
        }
        let copies = if self.rng.gen_range(0..100) == 0 {
            2
        } else {
            1
        };
        for _ in 0..copies {
            // Mostly a LAN's few ms; now and then very late (a retransmission after a stall,
            // a message from before a pause or a restart).
            let delay = if self.rng.gen_range(0..100) == 0 {
                self.rng.gen_range(100..1_000)
            } else {
                self.rng.gen_range(1..6)
            };
            let at = self.now + delay;
            self.schedule(
                at,
                Event::Deliver {
                    from,
                    to,
                    payload: payload.clone(),
                },
            );
        }
    }

    /// Runs the seed: faults, then healing, then the end checks. Panics on a violation.
    pub fn run(&mut self) -> Stats {
        let limit = self.faults_until_ms + SETTLE_LIMIT_MS;
        while let Some(Reverse((at, _, idx))) = self.queue.pop() {
            self.now = at;
            let Some(ev) = self.events[idx].take() else {
                continue;
            };
            self.step(ev);
            self.check_always();
            if self.now >= self.faults_until_ms && self.settled() {
                self.check_end();
                return self.stats.clone();
            }
            assert!(
                self.now < limit,
                "liveness: not settled {} ms after the faults: {}",
                SETTLE_LIMIT_MS,
                self.unsettled()
            );
        }
        panic!("the event queue ran dry");
    }

    fn step(&mut self, ev: Event) {
        match ev {
            Event::Deliver { from, to, payload } => self.deliver(from, to, payload),
            Event::Synced {
                node,
                run,
                vnode,
                generation,
                len,
                sealed,
                log,
            } => {
                let now = self.now;
                let Some(n) = self.nodes.get_mut(&node) else {
                    return;
                };
                if n.run != run || !n.up {
                    return;
                }
                if let Some(old) = n.disk.get(&vnode) {
                    assert!(
                        sealed.0 >= old.sealed.0,
                        "seal went back on n{node}'s disk: v{vnode} {:?} -> {sealed:?}",
                        old.sealed
                    );
                }
                n.disk.insert(vnode, DurableCopy { log, sealed });
                n.replica.handle_synced(vnode, generation, len, sealed, now);
                self.drain(node);
            }
            Event::Tick { node, run } => {
                let now = self.now;
                let Some(n) = self.nodes.get_mut(&node) else {
                    return;
                };
                if n.run != run || !n.up {
                    return;
                }
                if !n.paused {
                    n.replica.handle_tick(now);
                    let _ = n;
                    self.drain(node);
                    self.send(
                        Addr::Node(node),
                        Addr::Control,
                        Payload::Pong {
                            incarnation: self.nodes[&node].incarnation,
                        },
                    );
                }
                self.schedule(now + TICK_MS, Event::Tick { node, run });
            }
            Event::ControlTick => self.control_tick(),
            Event::ClientStep { client } => self.client_step(client),
            Event::ClientTimeout { client, req } => {
                let c = &mut self.clients[client];
                if c.pending.as_ref().is_some_and(|(r, _, _)| *r == req) {
                    self.client_answer(client, req, ClientAnswer::Unknown);
                }
            }
            Event::ClientResend { client, req } => {
                if self.clients[client]
                    .pending
                    .as_ref()
                    .is_some_and(|(r, _, _)| *r == req)
                {
                    self.client_send(client);
                }
            }
            Event::Restart { node, wipe } => self.restart(node, wipe),
            Event::Resume { node } => {
                let n = self.nodes.get_mut(&node).expect("node");
                if !n.paused {
                    return;
                }
                n.paused = false;
                let held = std::mem::take(&mut n.held);
                self.trace
                    .push(format!("{} resume n{node} ({} held)", self.now, held.len()));
                // A resumed process works through its sockets before its map loop runs: the
                // requests that waited meet the old map first.
                let (sets, rest): (Vec<_>, Vec<_>) = held
                    .into_iter()
                    .partition(|(_, p)| matches!(p, Payload::Sets(_)));
                for (from, payload) in rest.into_iter().chain(sets) {
                    self.deliver(from, Addr::Node(node), payload);
                }
            }
            Event::Heal { partition } => {
                if partition == CONTROL_CUT {
                    self.control_cut = false;
                }
                self.blocked.remove(&partition);
                self.trace.push(format!("{} heal p{partition}", self.now));
            }
            Event::Nemesis => self.nemesis(),
        }
    }

    fn deliver(&mut self, from: Addr, to: Addr, payload: Payload) {
        let now = self.now;
        match to {
            Addr::Control => self.control_receive(from, payload),
            Addr::Client(c) => {
                if let Payload::Answer { req, answer } = payload {
                    self.client_answer(c, req, answer);
                }
            }
            Addr::Node(m) => {
                let Some(n) = self.nodes.get_mut(&m) else {
                    return;
                };
                if !n.up {
                    return;
                }
                if n.paused {
                    n.held.push((from, payload));
                    return;
                }
                match payload {
                    Payload::Replica(incarnation, msg) => {
                        let Addr::Node(peer) = from else { return };
                        n.replica.handle_message(peer, incarnation, msg, now);
                    }
                    Payload::Sets(sets) => n.replica.handle_sets(&sets, now),
                    Payload::Write { req, vnode, op } => {
                        let Addr::Client(c) = from else { return };
                        let tag = n.next_tag;
                        n.next_tag += 1;
                        n.asks.insert(tag, (c, req));
                        let existing = n.replica.log(vnode).iter().position(|r| r.item == op);
                        let result = match existing {
                            Some(i) => n.replica.await_commit(vnode, i as u64 + 1, tag, now),
                            None => n.replica.append(vnode, op, tag, now).map(|_| ()),
                        };
                        if result.is_err() {
                            n.asks.remove(&tag);
                            self.send(
                                to,
                                from,
                                Payload::Answer {
                                    req,
                                    answer: ClientAnswer::Refused,
                                },
                            );
                        }
                    }
                    Payload::Read { req, vnode } => {
                        let Addr::Client(c) = from else { return };
                        let tag = n.next_tag;
                        n.next_tag += 1;
                        n.asks.insert(tag, (c, req));
                        if n.replica.read(vnode, tag, now).is_err() {
                            n.asks.remove(&tag);
                            self.send(
                                to,
                                from,
                                Payload::Answer {
                                    req,
                                    answer: ClientAnswer::Refused,
                                },
                            );
                        }
                    }
                    _ => {}
                }
                self.drain(m);
            }
        }
    }

    /// Acts on everything the node's replica produced.
    fn drain(&mut self, m: MemberId) {
        let now = self.now;
        let outputs = self.nodes.get_mut(&m).expect("node").replica.poll();
        let mut die = false;
        for out in outputs {
            match out {
                ReplicaOutput::Send {
                    to,
                    incarnation,
                    msg,
                } => {
                    self.trace
                        .push(format!("{now} n{m} -> n{to} {}", describe(&msg)));
                    self.send(
                        Addr::Node(m),
                        Addr::Node(to),
                        Payload::Replica(incarnation, msg),
                    );
                }
                ReplicaOutput::Propose(cmd) => {
                    self.trace.push(format!("{now} n{m} proposes {cmd:?}"));
                    self.send(Addr::Node(m), Addr::Control, Payload::Propose(cmd));
                }
                ReplicaOutput::Sync {
                    vnode,
                    generation,
                    len,
                    sealed,
                } => {
                    // Buggify: now and then the process dies with this fsync in flight (what
                    // it already sent stays sent) and a supervisor restarts it at once.
                    let faulting = now >= FAULTS_FROM_MS && now < self.faults_until_ms;
                    if faulting && self.rng.gen_range(0..400) == 0 {
                        die = true;
                        continue;
                    }
                    let lat = self.rng.gen_range(1..5);
                    let n = self.nodes.get_mut(&m).expect("node");
                    let log = n.replica.log(vnode)[..len as usize].to_vec();
                    let at = n.sync_busy_until.max(now) + lat;
                    n.sync_busy_until = at;
                    let run = n.run;
                    self.schedule(
                        at,
                        Event::Synced {
                            node: m,
                            run,
                            vnode,
                            generation,
                            len,
                            sealed,
                            log,
                        },
                    );
                }
                ReplicaOutput::Committed { tag, vseq } => {
                    let n = self.nodes.get_mut(&m).expect("node");
                    let Some((c, req)) = n.asks.remove(&tag) else {
                        continue;
                    };
                    let vnode = request_vnode(req);
                    let epoch = n
                        .replica
                        .serving(vnode)
                        .expect("a commit comes from a primary");
                    let items: Vec<u64> = n.replica.log(vnode)[..vseq as usize]
                        .iter()
                        .map(|r| r.item)
                        .collect();
                    self.check_primary(vnode, epoch, m, "acknowledged a write");
                    self.observe_committed(vnode, &items, m, "write");
                    self.send(
                        Addr::Node(m),
                        Addr::Client(c),
                        Payload::Answer {
                            req,
                            answer: ClientAnswer::Committed,
                        },
                    );
                }
                ReplicaOutput::ReadDone { tag, items } => {
                    let n = self.nodes.get_mut(&m).expect("node");
                    let Some((c, req)) = n.asks.remove(&tag) else {
                        continue;
                    };
                    let vnode = request_vnode(req);
                    let epoch = n
                        .replica
                        .serving(vnode)
                        .expect("a read is answered by a primary");
                    self.check_primary(vnode, epoch, m, "answered a read");
                    self.observe_committed(vnode, &items, m, "read");
                    let invoked = self
                        .reads_invoked
                        .get(&(c, req))
                        .copied()
                        .expect("a sent read");
                    self.check_read(vnode, invoked, &items, m);
                    self.send(
                        Addr::Node(m),
                        Addr::Client(c),
                        Payload::Answer {
                            req,
                            answer: ClientAnswer::Read(items),
                        },
                    );
                }
                ReplicaOutput::Unknown { tag } | ReplicaOutput::Refused { tag } => {
                    let n = self.nodes.get_mut(&m).expect("node");
                    let Some((c, req)) = n.asks.remove(&tag) else {
                        continue;
                    };
                    self.send(
                        Addr::Node(m),
                        Addr::Client(c),
                        Payload::Answer {
                            req,
                            answer: ClientAnswer::Unknown,
                        },
                    );
                }
            }
        }
        if die {
            self.stats.buggify_crashes += 1;
            self.crash(m);
            let back = now + self.rng.gen_range(5..60);
            self.schedule(
                back,
                Event::Restart {
                    node: m,
                    wipe: false,
                },
            );
        }
    }

    /// An answer carried these committed records: they must extend, or be a prefix of, every
    /// committed log seen before (C2, and one history per vnode: C5).
    fn observe_committed(&mut self, vnode: Vnode, items: &[u64], by: MemberId, what: &str) {
        let seen = self.committed.entry(vnode).or_default();
        let common = seen.len().min(items.len());
        assert!(
            seen[..common] == items[..common],
            "C2/C5 violated: v{vnode}: n{by} {what} committed log {:?}, but {:?} was committed before",
            &items[..common],
            &seen[..common]
        );
        if items.len() > seen.len() {
            seen.extend_from_slice(&items[seen.len()..]);
        }
        let mut ids = BTreeSet::new();
        for op in seen.iter() {
            assert!(
                ids.insert(*op),
                "C3 violated: v{vnode}: op {op} committed twice"
            );
        }
    }

    /// No stale read: a read shows every write a client saw acknowledged before the read was
    /// invoked (C4).
    fn check_read(&self, vnode: Vnode, invoked_ms: u64, items: &[u64], by: MemberId) {
        let present: BTreeSet<u64> = items.iter().copied().collect();
        for (op, at) in self.acked_at.get(&vnode).into_iter().flatten() {
            assert!(
                *at >= invoked_ms || present.contains(op),
                "C4 violated: stale read of v{vnode} by n{by}, invoked at {invoked_ms} ms, misses op {op}, acknowledged at {at} ms"
            );
        }
    }

    fn check_primary(&self, vnode: Vnode, epoch: u64, m: MemberId, what: &str) {
        let primary = self.control.primaries.get(&(vnode, epoch));
        assert!(
            primary == Some(&m),
            "C5 violated: n{m} {what} for v{vnode} at epoch {epoch}, whose primary is {primary:?}"
        );
    }

    // ---- control plane -------------------------------------------------------------------

    fn control_receive(&mut self, from: Addr, payload: Payload) {
        let now = self.now;
        match payload {
            Payload::Pong { incarnation } => {
                let Addr::Node(m) = from else { return };
                self.control.last_pong.insert(m, now);
                let member = self.control.sets.members[&m];
                if member.down || member.incarnation != incarnation {
                    self.control_apply(SetCommand::MemberUp {
                        member: m,
                        incarnation,
                    });
                }
            }
            Payload::Propose(cmd) => self.control_apply(cmd),
            _ => {}
        }
    }

    fn control_apply(&mut self, cmd: SetCommand) {
        let before = self.control.sets.clone();
        if !self.control.sets.apply(&cmd) {
            return;
        }
        self.trace.push(format!(
            "{} ctl applied {cmd:?} -> v{}",
            self.now, self.control.sets.version
        ));
        match &cmd {
            SetCommand::Shrink { .. } => self.stats.shrinks += 1,
            SetCommand::AddReplica { .. } => self.stats.adds += 1,
            SetCommand::Reclaim { .. } => self.stats.reclaims += 1,
            _ => {}
        }
        let after = self.control.sets.clone();
        for (v, (old, new)) in before.vnodes.iter().zip(&after.vnodes).enumerate() {
            let v = v as Vnode;
            if new.lost && !old.lost {
                self.stats.lost_vnodes += 1;
                self.lost.insert(v);
            }
            if new.epoch == old.epoch {
                continue;
            }
            assert_eq!(new.epoch, old.epoch + 1, "v{v}: an epoch moves by one");
            if new.primary() != old.primary() {
                self.stats.failovers += 1;
                let added = matches!(&cmd, SetCommand::AddReplica { member, .. } if *member == new.primary());
                assert!(
                    old.contains(new.primary()) || added,
                    "promotion from outside the set: v{v} {:?} -> {:?} by {cmd:?}",
                    old.replicas,
                    new.replicas
                );
            }
            self.control.primaries.insert((v, new.epoch), new.primary());
        }
        self.publish();
    }

    fn publish(&mut self) {
        let sets = Box::new(self.control.sets.clone());
        let members: Vec<MemberId> = self.nodes.keys().copied().collect();
        for m in members {
            self.send(Addr::Control, Addr::Node(m), Payload::Sets(sets.clone()));
        }
    }

    fn control_tick(&mut self) {
        let now = self.now;
        if !self.control_cut {
            let members: Vec<MemberId> = self.control.sets.members.keys().copied().collect();
            for m in members {
                let last = self.control.last_pong.get(&m).copied().unwrap_or(0);
                if now >= last + DOWN_AFTER_MS && now > DOWN_AFTER_MS {
                    self.control_apply(SetCommand::MemberDown { member: m });
                }
            }
            if now % PLAN_MS < PING_MS {
                for cmd in self.control.sets.plan() {
                    self.control_apply(cmd);
                }
            }
            self.publish();
        }
        self.schedule(now + PING_MS, Event::ControlTick);
    }

    // ---- clients -------------------------------------------------------------------------

    fn client_step(&mut self, c: usize) {
        if self.clients[c].pending.is_some() {
            return;
        }
        let faulting = self.now < self.faults_until_ms;
        let vnode = self.rng.gen_range(0..self.vnodes);
        let seq = self.clients[c].next_req;
        self.clients[c].next_req += 1;
        let req = (seq << 16) | vnode as u64;
        let op = if self.rng.gen_range(0..10) < 6 && faulting {
            let op = self.next_op;
            self.next_op += 1;
            Op::Write { op }
        } else {
            Op::Read {
                invoked_ms: self.now,
            }
        };
        if !faulting && matches!(op, Op::Read { .. }) && self.rng.gen_range(0..4) != 0 {
            // After the faults, clients only finish what they started (and read a little).
            self.schedule(self.now + 20, Event::ClientStep { client: c });
            return;
        }
        self.clients[c].pending = Some((req, vnode, op));
        self.client_send(c);
    }

    fn client_send(&mut self, c: usize) {
        let Some((req, vnode, op)) = self.clients[c].pending.clone() else {
            return;
        };
        // Mostly the primary of the client's map (refreshed every 100-400 ms, and after a
        // refusal); sometimes any node.
        let now = self.now;
        let stale = now >= self.clients[c].refreshed_ms + self.rng.gen_range(100..400);
        if stale || self.clients[c].primaries.is_empty() {
            let sets = &self.control.sets;
            self.clients[c].primaries = sets.vnodes.iter().map(|e| e.primary()).collect();
            self.clients[c].refreshed_ms = now;
        }
        let to = if self.rng.gen_range(0..5) == 0 {
            let n = self.nodes.len() as MemberId;
            self.rng.gen_range(0..n)
        } else {
            self.clients[c].primaries[vnode as usize]
        };
        let payload = match op {
            Op::Write { op } => Payload::Write { req, vnode, op },
            Op::Read { invoked_ms } => {
                self.reads_invoked.insert((c, req), invoked_ms);
                Payload::Read { req, vnode }
            }
        };
        self.send(Addr::Client(c), Addr::Node(to), payload);
        let timeout = self.clients[c].timeout_ms;
        self.schedule(self.now + timeout, Event::ClientTimeout { client: c, req });
    }

    fn client_answer(&mut self, c: usize, req: Tag, answer: ClientAnswer) {
        let Some((pending, vnode, op)) = self.clients[c].pending.clone() else {
            return;
        };
        if pending != req {
            return;
        }
        let now = self.now;
        match (&op, answer) {
            (Op::Write { op }, ClientAnswer::Committed) => {
                self.acked_at
                    .entry(vnode)
                    .or_default()
                    .entry(*op)
                    .or_insert(now);
                self.stats.writes_acked += 1;
            }
            (Op::Read { .. }, ClientAnswer::Read(_)) => {
                // Checked when the node answered (`check_read`).
                self.stats.reads_answered += 1;
            }
            (Op::Read { .. }, _) => {}
            (Op::Write { .. }, answer) => {
                // Not (known to be) applied: retry with the same op id, after a moment.
                if answer == ClientAnswer::Unknown {
                    self.stats.unknown_outcomes += 1;
                }
                let fresh = (self.clients[c].next_req << 16) | vnode as u64;
                self.clients[c].next_req += 1;
                self.clients[c].pending = Some((fresh, vnode, op));
                let at = now + CLIENT_RETRY_MS;
                self.schedule(
                    at,
                    Event::ClientResend {
                        client: c,
                        req: fresh,
                    },
                );
                return;
            }
        }
        self.clients[c].pending = None;
        let next = now + self.rng.gen_range(1..20);
        self.schedule(next, Event::ClientStep { client: c });
    }

    // ---- nemesis -------------------------------------------------------------------------

    fn nemesis(&mut self) {
        let now = self.now;
        if now >= self.faults_until_ms {
            self.heal_all();
            return;
        }
        let n = self.nodes.len() as MemberId;
        let victim = self.rng.gen_range(0..n);
        match self.rng.gen_range(0..100) {
            0..=24 => {
                // kill -9, restart later
                if self.nodes[&victim].up {
                    self.crash(victim);
                    // Half of the restarts are quick (a supervisor), before anyone noticed.
                    let back = if self.rng.gen_range(0..2) == 0 {
                        now + self.rng.gen_range(5..100)
                    } else {
                        now + self.rng.gen_range(30..600)
                    };
                    self.schedule(
                        back,
                        Event::Restart {
                            node: victim,
                            wipe: false,
                        },
                    );
                }
            }
            25..=29 if self.replication_factor > 1 => {
                if self.nodes[&victim].up {
                    self.stats.wipes += 1;
                    self.crash(victim);
                    let back = now + self.rng.gen_range(30..600);
                    self.schedule(
                        back,
                        Event::Restart {
                            node: victim,
                            wipe: true,
                        },
                    );
                }
            }
            30..=49 => {
                let n = self.nodes.get_mut(&victim).expect("node");
                if n.up && !n.paused {
                    n.paused = true;
                    self.stats.pauses += 1;
                    self.trace.push(format!("{now} pause n{victim}"));
                    let back = now + self.rng.gen_range(20..1_200);
                    self.schedule(back, Event::Resume { node: victim });
                }
            }
            50..=84 => {
                // Partitions: one node cut from everyone (and maybe the control plane), a
                // split, or one direction only.
                let mut side: BTreeSet<Addr> = BTreeSet::new();
                side.insert(Addr::Node(victim));
                for m in 0..n {
                    if m != victim && self.rng.gen_range(0..3) == 0 {
                        side.insert(Addr::Node(m));
                    }
                }
                if self.rng.gen_range(0..2) == 0 {
                    side.insert(Addr::Control);
                }
                let one_way = self.rng.gen_range(0..4) == 0;
                let everyone: Vec<Addr> = (0..n).map(Addr::Node).chain([Addr::Control]).collect();
                let mut cut = BTreeSet::new();
                for a in &everyone {
                    for b in &everyone {
                        if side.contains(a) && !side.contains(b) {
                            cut.insert((*a, *b));
                            if !one_way {
                                cut.insert((*b, *a));
                            }
                        }
                    }
                }
                let id = self.next_partition;
                self.next_partition += 1;
                self.stats.partitions += 1;
                self.trace
                    .push(format!("{now} partition p{id} {side:?} one_way={one_way}"));
                self.blocked.insert(id, cut);
                let back = now + self.rng.gen_range(50..1_000);
                self.schedule(back, Event::Heal { partition: id });
            }
            _ => {
                if !self.control_cut {
                    self.control_cut = true;
                    self.trace.push(format!("{now} control plane unreachable"));
                    let back = now + self.rng.gen_range(50..800);
                    self.schedule(
                        back,
                        Event::Heal {
                            partition: CONTROL_CUT,
                        },
                    );
                }
            }
        }
        let next = now + self.rng.gen_range(50..400);
        self.schedule(next, Event::Nemesis);
    }

    fn crash(&mut self, m: MemberId) {
        self.stats.crashes += 1;
        self.trace.push(format!("{} crash n{m}", self.now));
        let n = self.nodes.get_mut(&m).expect("node");
        n.up = false;
        n.paused = false;
        n.held.clear();
        n.asks.clear();
    }

    fn restart(&mut self, m: MemberId, wipe: bool) {
        let now = self.now;
        let old = self.nodes.get(&m).expect("node");
        if old.up {
            return;
        }
        let (incarnation, disk) = if wipe {
            (old.incarnation + 100, BTreeMap::new())
        } else {
            (old.incarnation, old.disk.clone())
        };
        // The seal on disk never goes backwards (across restarts).
        let run = old.run + 1;
        let mut node = self.fresh_node(m, incarnation, disk);
        node.run = run;
        node.sync_busy_until = now;
        self.trace.push(format!("{now} restart n{m} wipe={wipe}"));
        self.nodes.insert(m, node);
        self.schedule(now + 1, Event::Tick { node: m, run });
    }

    fn heal_all(&mut self) {
        self.blocked.clear();
        if self.control_cut {
            self.control_cut = false;
        }
        let now = self.now;
        let ids: Vec<MemberId> = self.nodes.keys().copied().collect();
        for m in ids {
            let n = &self.nodes[&m];
            if !n.up {
                self.schedule(
                    now + 1,
                    Event::Restart {
                        node: m,
                        wipe: false,
                    },
                );
            } else if n.paused {
                self.schedule(now + 1, Event::Resume { node: m });
            }
        }
        self.drop_per_mille = 0;
        self.trace.push(format!("{now} heal everything"));
    }

    // ---- checks --------------------------------------------------------------------------

    /// After every step: every record a client saw committed is durable on every member of
    /// its vnode's current set (C2), no node broke a protocol rule, seals on disk never drop.
    fn check_always(&mut self) {
        for (m, n) in &self.nodes {
            assert!(
                n.replica.anomalies.is_empty(),
                "protocol anomaly on n{m}: {:?}",
                n.replica.anomalies
            );
        }
        for (v, committed) in &self.committed {
            if self.lost.contains(v) {
                continue;
            }
            let entry = self.control.sets.entry(*v);
            for m in &entry.replicas {
                let n = &self.nodes[m];
                // A member whose disk was replaced is not the one the control plane means
                // until it says so (`MemberUp` with the new incarnation).
                if n.incarnation != self.control.sets.members[m].incarnation {
                    continue;
                }
                let disk: Vec<u64> = n
                    .disk
                    .get(v)
                    .map_or(Vec::new(), |d| d.log.iter().map(|r| r.item).collect());
                let common = disk.len().min(committed.len());
                assert!(
                    disk.len() >= committed.len() && disk[..common] == committed[..common],
                    "C2 violated: v{v}: member n{m} (epoch {}) has {:?} on disk, committed were {:?}",
                    entry.epoch,
                    disk,
                    committed
                );
            }
        }
    }

    fn settled(&self) -> bool {
        self.unsettled().is_empty()
    }

    /// Why the cluster has not settled yet ("" when it has).
    fn unsettled(&self) -> String {
        // A write to a vnode whose only copy was lost is refused for ever (nothing applied).
        let unanswered: Vec<&(Tag, Vnode, Op)> = self
            .clients
            .iter()
            .filter_map(|c| c.pending.as_ref())
            .filter(|(_, v, op)| matches!(op, Op::Write { .. }) && !self.lost.contains(v))
            .collect();
        if !unanswered.is_empty() {
            let pending: Vec<String> = unanswered
                .iter()
                .map(|(_, v, op)| {
                    let e = self.control.sets.entry(*v);
                    let p = &self.nodes[&e.primary()];
                    format!(
                        "{op:?} on v{v} (set {:?} e{} lost={}; primary serves {:?}, sealed {:?}, map v{} of v{})",
                        e.replicas,
                        e.epoch,
                        e.lost,
                        p.replica.serving(*v),
                        p.replica.sealed(*v),
                        p.replica.map_version(),
                        self.control.sets.version
                    )
                })
                .collect();
            return format!("{} writes unanswered: {pending:?}", pending.len());
        }
        if self.nodes.values().any(|n| !n.up || n.paused) {
            return "a node is down".into();
        }
        let sets = &self.control.sets;
        let up = sets.members.values().filter(|m| !m.down).count();
        if up < self.nodes.len() {
            return "a member is down".into();
        }
        for (v, e) in sets.vnodes.iter().enumerate() {
            let v = v as Vnode;
            if e.lost {
                continue;
            }
            if e.replicas.len() < self.replication_factor.min(up) {
                return format!(
                    "v{v} has {} of {} copies",
                    e.replicas.len(),
                    self.replication_factor
                );
            }
            let p = &self.nodes[&e.primary()];
            if p.replica.serving(v) != Some(e.epoch) || p.replica.map_version() < sets.version {
                return format!("v{v}: n{} does not serve epoch {}", e.primary(), e.epoch);
            }
            let log = p.replica.log(v);
            for m in &e.replicas {
                let d = self.nodes[m].disk.get(&v).map_or(&[][..], |d| &d.log[..]);
                if d != log {
                    return format!("v{v}: n{m}'s disk differs from the primary's log");
                }
            }
        }
        String::new()
    }

    fn check_end(&mut self) {
        // Every acknowledged write is in its vnode's final log (C2), once (C3).
        for (v, acked) in &self.acked_at {
            if self.lost.contains(v) {
                continue;
            }
            let e = self.control.sets.entry(*v);
            let log: Vec<u64> = self.nodes[&e.primary()]
                .replica
                .log(*v)
                .iter()
                .map(|r| r.item)
                .collect();
            let mut seen = BTreeSet::new();
            for op in &log {
                assert!(
                    seen.insert(*op),
                    "C3 violated: v{v}: op {op} twice in the final log"
                );
            }
            for op in acked.keys() {
                assert!(
                    seen.contains(op),
                    "C2 violated: v{v}: acknowledged op {op} is not in the final log"
                );
            }
        }
    }
}

/// Requests carry their vnode in their low bits: `(sequence << 16) | vnode`.
fn request_vnode(req: Tag) -> Vnode {
    (req & 0xffff) as Vnode
}

fn describe(msg: &ReplicaMsg<u64>) -> String {
    match msg {
        ReplicaMsg::Seal {
            vnode,
            epoch,
            from_len,
            adopt,
            ..
        } => format!("Seal v{vnode} e{epoch} from {from_len} adopt={adopt}"),
        ReplicaMsg::Sealed {
            vnode,
            epoch,
            agreed,
            tail,
            ..
        } => format!(
            "Sealed v{vnode} e{epoch} agreed {agreed} tail {}",
            tail.len()
        ),
        ReplicaMsg::Replicate {
            vnode,
            epoch,
            prev_len,
            records,
            ..
        } => format!(
            "Replicate v{vnode} e{epoch} after {prev_len} +{}",
            records.len()
        ),
        other => format!("{other:?}"),
    }
}
