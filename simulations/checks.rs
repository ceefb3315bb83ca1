//! The invariants, checked after every step, and the liveness condition checked once the
//! faults stop. (`ControlState::check` runs inside every `apply` on its own.)

use crate::world::{CheckCache, World, UNKNOWN_ME};
use stockring::cluster::control::MemberState;
use stockring::cluster::handoff::{Access, Fence};
use stockring::cluster::planner;
use stockring::cluster::ring::Vnode;
use stockring::cluster::MemberId;

impl World {
    /// After every step.
    pub(crate) fn check_step(&mut self) {
        // What C5 and the fence check read (a node's map, fences, member id, process) changes
        // only in the handlers that set `c5_dirty`; the stale-writer part also reads the
        // control state.
        if self.c5_dirty || self.c5_version != self.control.state.version {
            self.c5_dirty = false;
            self.c5_version = self.control.state.version;
            self.check_one_writer();
            self.check_fences_durable();
        }
        self.check_acked_incremental();
    }

    /// C5: at most one node may write a vnode, and a node that may write it is its owner per
    /// the control state, at the control state's epoch (a stale writer is a second writer in
    /// waiting).
    fn check_one_writer(&mut self) {
        let state = &self.control.state;
        let writers = &mut self.writers_scratch;
        writers.clear();
        writers.resize(self.p.vnodes as usize, None);
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(p) = &n.proc_ else { continue };
            let Some(map) = p.own.map() else { continue };
            let me = p.own.me();
            // Only a vnode this node's map says it owns can be `Local` here.
            for (v, e) in map.ring.iter().enumerate() {
                if e.owner != me {
                    continue;
                }
                let Access::Local { epoch } = p.own.access(v as Vnode) else {
                    continue;
                };
                if let Some((j, other)) = writers[v] {
                    self.fail(&format!(
                        "C5 violated: v{v} is writable on n{j} (epoch {other}) and on n{i} \
                         (epoch {epoch})\n{}",
                        self.describe()
                    ));
                }
                writers[v] = Some((i, epoch));
                let entry = state.ring[v];
                if me != entry.owner || epoch != entry.epoch {
                    self.fail(&format!(
                        "stale writer: n{i} (member {me}) may write v{v} at epoch {epoch}, \
                         but the control state says {entry:?}\n{}",
                        self.describe()
                    ));
                }
            }
        }
    }

    /// At the moment of an acknowledgement: the writer is the owner per the control state.
    pub(crate) fn check_ack(&self, i: usize, me: MemberId, v: Vnode, epoch: u64, op: u64) {
        let entry = self.control.state.ring[v as usize];
        if entry.owner != me || entry.epoch != epoch {
            self.fail(&format!(
                "n{i} (member {me}) acknowledged op {op} on v{v} at epoch {epoch}, but the \
                 control state says {entry:?}"
            ));
        }
    }

    fn owner_node(&self, v: Vnode) -> usize {
        let owner = self.control.state.ring[v as usize].owner;
        self.member_node[&owner]
    }

    /// The node of every vnode's owner, recomputed when the control state changes.
    fn refresh_owner_nodes(&mut self) {
        if self.owner_nodes_version != Some(self.control.state.version) {
            self.owner_nodes = (0..self.p.vnodes).map(|v| self.owner_node(v)).collect();
            self.owner_nodes_version = Some(self.control.state.version);
        }
    }

    /// C2: every acknowledged write of v is in the store of v's owner (per the control state).
    /// Incremental: a store only grows, except when an import replaces it (new `gen`), and the
    /// owner only changes with the control state, so a vnode needs a look only after an ack or
    /// an import touched it (`c2_dirty`) or the control state changed; and while its (owner,
    /// gen) stay the same, only at the acks that are new since the last look.
    fn check_acked_incremental(&mut self) {
        if self.owner_nodes_version != Some(self.control.state.version) {
            self.refresh_owner_nodes();
            self.c2_dirty.extend(0..self.p.vnodes);
        }
        while let Some(v) = self.c2_dirty.pop_first() {
            let owner_node = self.owner_nodes[v as usize];
            let store = self.nodes[owner_node].disk.store.get(&v);
            let gen = store.map_or(0, |s| s.gen);
            let from = match &self.check_cache[v as usize] {
                Some(c) if c.owner_node == owner_node && c.gen == gen => c.upto,
                _ => 0,
            };
            let acked = &self.acked[v as usize];
            if let Some(op) = acked[from..]
                .iter()
                .find(|op| !store.is_some_and(|s| s.ops.contains(op)))
            {
                self.lost_write(v, owner_node, *op);
            }
            self.check_cache[v as usize] = Some(CheckCache {
                owner_node,
                gen,
                upto: acked.len(),
            });
        }
    }

    pub(crate) fn check_acked_full(&self) {
        for v in 0..self.p.vnodes {
            let owner_node = self.owner_node(v);
            let store = self.nodes[owner_node].disk.store.get(&v);
            if let Some(op) = self.acked[v as usize]
                .iter()
                .find(|op| !store.is_some_and(|s| s.ops.contains(op)))
            {
                self.lost_write(v, owner_node, *op);
            }
        }
    }

    fn lost_write(&self, v: Vnode, owner_node: usize, op: u64) -> ! {
        let holders: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                self.nodes[*i]
                    .disk
                    .store
                    .get(&v)
                    .is_some_and(|s| s.ops.contains(&op))
            })
            .collect();
        self.fail(&format!(
            "C2 violated: acknowledged op {op} on v{v} is not in the store of its owner \
             n{owner_node} (control state {:?}); nodes holding it: {holders:?}\n{}",
            self.control.state.ring[v as usize],
            self.describe()
        ));
    }

    /// The shell persists exactly the fences `Ownership` holds, but for those whose drain is
    /// not over yet (held in memory, not on disk yet). A fence on disk that the process does
    /// not hold is a promise nobody keeps: after a restart it would be taken up again, or it
    /// stands in place of the fence the process does hold.
    fn check_fences_durable(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(p) = &n.proc_ {
                let settled = p
                    .own
                    .fences()
                    .filter(|f| !p.draining.contains(&(f.vnode, f.move_id)));
                if !settled.eq(n.disk.fences.values()) {
                    let mem: Vec<&Fence> = p.own.fences().collect();
                    let disk: Vec<&Fence> = n.disk.fences.values().collect();
                    self.fail(&format!(
                        "n{i}: fences in memory {mem:?} (draining {:?}) differ from fences on \
                         disk {disk:?}",
                        p.draining
                    ));
                }
            }
        }
    }

    /// Liveness, once the faults have stopped: `Ok` when the cluster has converged.
    pub(crate) fn settled_check(&mut self) -> Result<(), String> {
        let s = &self.control.state;
        if !s.moves.is_empty() {
            return Err(format!("moves in flight: {:?}", s.moves.values()));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if n.decommissioned {
                continue;
            }
            let Some(p) = &n.proc_ else {
                return Err(format!("n{i} is not running"));
            };
            let me = p.own.me();
            if me == UNKNOWN_ME {
                return Err(format!("n{i} has no member id"));
            }
            if s.members.get(&me).is_none_or(|m| m.down) {
                return Err(format!("n{i} (member {me}) is down in the control state"));
            }
            if p.own.map_version() != s.version {
                return Err(format!(
                    "n{i} has map v{}, control is at v{}",
                    p.own.map_version(),
                    s.version
                ));
            }
            if p.recv.in_flight() != 0 {
                return Err(format!(
                    "n{i} still runs {} incoming moves",
                    p.recv.in_flight()
                ));
            }
        }
        for m in s.members.values() {
            if matches!(m.state, MemberState::Joining | MemberState::Leaving) {
                return Err(format!("member {} is still {:?}", m.id, m.state));
            }
        }
        let receivers: Vec<MemberId> = s
            .members
            .values()
            .filter(|m| !m.down && m.state == MemberState::Up)
            .map(|m| m.id)
            .collect();
        let owners: Vec<MemberId> = s.ring.iter().map(|e| e.owner).collect();
        let pinned: Vec<bool> = owners
            .iter()
            .map(|o| s.members.get(o).is_none_or(|m| m.down))
            .collect();
        if pinned.iter().any(|p| *p) {
            return Err("a vnode is owned by a down member".into());
        }
        let target = planner::target(&owners, &receivers, &pinned);
        if target != owners {
            return Err(format!(
                "ring not balanced: {owners:?}, planner wants {target:?}"
            ));
        }
        for v in 0..self.p.vnodes {
            let writers: Vec<usize> = (0..self.nodes.len())
                .filter(|i| {
                    self.nodes[*i]
                        .proc_
                        .as_ref()
                        .is_some_and(|p| matches!(p.own.access(v), Access::Local { .. }))
                })
                .collect();
            if writers != [self.owner_node(v)] {
                return Err(format!(
                    "v{v} is writable on {writers:?}, its owner is n{}",
                    self.owner_node(v)
                ));
            }
        }
        self.settled_at();
        Ok(())
    }

    /// At the very end.
    pub(crate) fn check_final(&self) {
        self.check_acked_full();
        let s = &self.control.state;
        // The balance the planner promises: counts differ by at most one.
        let counts: Vec<usize> = s
            .members
            .values()
            .filter(|m| m.state == MemberState::Up)
            .map(|m| s.owned_by(m.id))
            .collect();
        let (lo, hi) = (counts.iter().min(), counts.iter().max());
        if let (Some(lo), Some(hi)) = (lo, hi) {
            if hi - lo > 1 {
                self.fail(&format!("unbalanced at the end: {counts:?}"));
            }
        }
        let owned: usize = counts.iter().sum();
        if owned != self.p.vnodes as usize {
            self.fail(&format!(
                "{owned} of {} vnodes owned by Up members at the end",
                self.p.vnodes
            ));
        }
    }
}
