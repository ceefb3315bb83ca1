//! Who may write a vnode here, and how a vnode moves. Pure state machines: the node shell
//! feeds them maps, requests and time, and carries out the effects they return (export,
//! import, propose); the simulation in `simulations/` drives the very same code.
//!
//! Moving vnode v from A (source) to B (target), for a move `m` begun in the control state:
//! 1. **Copy.** B asks A for v's keys; A answers from its durable state while it keeps
//!    serving. B stores them (durably) but does not serve them.
//! 2. **Final.** B asks again, `final`. A fences v for `m` — from then on A refuses writes to
//!    v — waits until every write it accepted for v is durable, persists the fence, and only
//!    then exports what changed since the copy. B stores that, durably.
//! 3. **Commit.** B proposes `CommitMove(m)`; the control state makes B the owner of v at
//!    epoch + 1. B serves v once its map shows that; A, once its map shows it, forwards.
//!
//! Why at most one node accepts writes for v (C5), with no clock assumption:
//! - Ownership changes only by `CommitMove`, which B proposes only after A's final answer,
//!   which A sends only after its fence is durable. A fenced source writes nothing to v.
//! - A lifts a fence only when a map at least as new as the move shows the move gone with A
//!   still the owner at the same epoch — i.e. aborted; an aborted move never commits.
//! - Stale maps are harmless: a node writes v only if its map says it owns v *and* it holds
//!   no fence for v. A node whose map is behind a commit that took v away is fenced already.
//!
//! And why nothing acknowledged is lost (C2): A's final export is taken after the fence and
//! after every write it accepted is durable, so it contains every write A acknowledged; B has
//! it on disk before it proposes the commit that lets it serve.

use super::control::{ControlState, Move};
use super::ring::Vnode;
use super::MemberId;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How a request for a vnode is to be handled on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// This node owns the vnode at `epoch` and may apply writes.
    Local { epoch: u64 },
    /// The vnode is owned by `owner` (as far as this node knows): forward there.
    Remote { owner: MemberId, epoch: u64 },
    /// This node owns it but is handing it over: retry shortly.
    Fenced,
    /// No map yet (starting up, or the cluster is not bootstrapped).
    Unknown,
}

/// A durable promise not to write a vnode until a move resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    pub vnode: Vnode,
    pub move_id: u64,
    pub epoch: u64,
    pub begun_at: u64,
}

/// A request from a move's target to its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportRequest {
    pub mv: Move,
    /// `false`: the copy phase; `true`: fence and send the rest.
    pub last: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportDecision {
    /// Export from durable state; keep serving.
    Copy,
    /// The fence is set (in memory). The shell must: wait until every write already accepted
    /// for the vnode is durable, persist `Fence`, then export and answer.
    FenceThenExport(Fence),
    /// Not the owner at that epoch (as far as this node knows): the move is stale or this
    /// node has not caught up; the target retries or the leader aborts.
    Refuse,
}

/// One node's view: the newest map it has seen and the fences it holds.
///
/// Its map must never go backwards, not even across a restart (the simulation found why: a
/// source that lifted its fence on seeing a commit would own the vnode again, unfenced, on
/// an older map; a target would re-run a committed move over writes it acknowledged since).
/// So the shell persists the version of every map before acting on it (`floor`).
#[derive(Clone, Debug)]
pub struct Ownership {
    me: MemberId,
    map: Option<Arc<ControlState>>,
    fences: BTreeMap<Vnode, Fence>,
    floor: u64,
}

impl Ownership {
    /// `fences` and `floor` (the newest map version accepted) are the ones persisted before a
    /// restart.
    pub fn new(me: MemberId, fences: impl IntoIterator<Item = Fence>, floor: u64) -> Self {
        Self {
            me,
            map: None,
            fences: fences.into_iter().map(|f| (f.vnode, f)).collect(),
            floor,
        }
    }

    /// Would `on_map` take a map of this version?
    pub fn accepts_version(&self, version: u64) -> bool {
        version >= self.map_version().max(self.floor)
    }

    pub fn me(&self) -> MemberId {
        self.me
    }

    pub fn set_me(&mut self, me: MemberId) {
        self.me = me;
    }

    pub fn map(&self) -> Option<&Arc<ControlState>> {
        self.map.as_ref()
    }

    pub fn map_version(&self) -> u64 {
        self.map.as_ref().map_or(0, |m| m.version)
    }

    pub fn fences(&self) -> impl Iterator<Item = &Fence> {
        self.fences.values()
    }

    /// This node still holds `fence` (its move was not resolved, nor replaced by another).
    /// A fence's drain and persistence take time; once this turns false they must stop.
    pub fn holds_fence(&self, fence: &Fence) -> bool {
        self.fences.get(&fence.vnode) == Some(fence)
    }

    pub fn access(&self, vnode: Vnode) -> Access {
        let Some(entry) = self.map.as_ref().and_then(|m| m.owner_of(vnode)) else {
            return Access::Unknown;
        };
        if entry.owner != self.me {
            return Access::Remote {
                owner: entry.owner,
                epoch: entry.epoch,
            };
        }
        if self.fences.contains_key(&vnode) {
            return Access::Fenced;
        }
        Access::Local { epoch: entry.epoch }
    }

    /// Takes a map at least as new as every map taken before (the shell must have persisted
    /// its version first). Returns the fences it resolved, which the shell may delete from
    /// disk, or `None` if the map is older and was ignored (then the `Receiver` must not see
    /// it either: an old map can list a move that has committed since).
    pub fn on_map(&mut self, map: Arc<ControlState>) -> Option<Vec<Fence>> {
        if !self.accepts_version(map.version) {
            return None;
        }
        self.floor = map.version;
        let resolved: Vec<Fence> = self
            .fences
            .values()
            .filter(|f| fence_resolved(f, &map, self.me))
            .copied()
            .collect();
        for f in &resolved {
            self.fences.remove(&f.vnode);
        }
        self.map = Some(map);
        Some(resolved)
    }

    /// The source side of a move: decides how to answer a target's export request.
    pub fn on_export_request(&mut self, req: &ExportRequest) -> ExportDecision {
        let mv = &req.mv;
        if mv.from != self.me {
            return ExportDecision::Refuse;
        }
        // The request proves the move exists; the map may simply not have it yet. What must
        // hold is that this node still owns the vnode at the move's epoch.
        let owns = self
            .map
            .as_ref()
            .and_then(|m| m.owner_of(mv.vnode))
            .is_some_and(|e| e.owner == self.me && e.epoch == mv.epoch);
        if !owns {
            return ExportDecision::Refuse;
        }
        if let Some(map) = &self.map {
            // A map that already shows this move resolved: answering could only help a
            // commit that cannot happen.
            if map.version >= mv.begun_at && map.moves.get(&mv.vnode).is_none_or(|m| m.id != mv.id)
            {
                return ExportDecision::Refuse;
            }
        }
        if !req.last {
            return ExportDecision::Copy;
        }
        match self.fences.get(&mv.vnode) {
            Some(f) if f.move_id != mv.id => ExportDecision::Refuse,
            _ => {
                let fence = Fence {
                    vnode: mv.vnode,
                    move_id: mv.id,
                    epoch: mv.epoch,
                    begun_at: mv.begun_at,
                };
                self.fences.insert(mv.vnode, fence);
                ExportDecision::FenceThenExport(fence)
            }
        }
    }
}

fn fence_resolved(f: &Fence, map: &ControlState, me: MemberId) -> bool {
    match map.owner_of(f.vnode) {
        // Committed (or later history): this node is not the owner at that epoch any more.
        Some(e) if e.owner != me || e.epoch > f.epoch => true,
        Some(_) => {
            map.version >= f.begun_at && map.moves.get(&f.vnode).is_none_or(|m| m.id != f.move_id)
        }
        None => false,
    }
}

/// Where an incoming move stands on its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Copy,
    Last,
    Commit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Ask the source for an export (`last` as in `ExportRequest`).
    Export(ExportRequest),
    /// Propose `CommitMove` for this move to the control plane.
    ProposeCommit(Move),
}

#[derive(Clone, Copy, Debug)]
struct Incoming {
    mv: Move,
    phase: Phase,
    /// An effect is out; wait for its answer (or `on_failed`).
    busy: bool,
    retry_at_ms: u64,
    failures: u32,
}

/// The target side: every move into this node, driven to its commit.
#[derive(Clone, Debug, Default)]
pub struct Receiver {
    incoming: BTreeMap<u64, Incoming>,
}

impl Receiver {
    /// Adopts the moves into `me` the map lists and forgets those it no longer lists.
    pub fn on_map(&mut self, me: MemberId, map: &ControlState) {
        self.incoming
            .retain(|id, inc| map.moves.get(&inc.mv.vnode).is_some_and(|m| m.id == *id));
        for mv in map.moves.values().filter(|m| m.to == me) {
            self.incoming.entry(mv.id).or_insert(Incoming {
                mv: *mv,
                phase: Phase::Copy,
                busy: false,
                retry_at_ms: 0,
                failures: 0,
            });
        }
    }

    /// The effects due now. Each is handed out once; its answer comes back through
    /// `on_done` or `on_failed`.
    pub fn poll(&mut self, now_ms: u64, max_busy: usize) -> Vec<Effect> {
        let mut busy = self.incoming.values().filter(|i| i.busy).count();
        let mut out = Vec::new();
        for inc in self.incoming.values_mut() {
            if busy >= max_busy {
                break;
            }
            if inc.busy || inc.retry_at_ms > now_ms {
                continue;
            }
            inc.busy = true;
            busy += 1;
            out.push(match inc.phase {
                Phase::Copy => Effect::Export(ExportRequest {
                    mv: inc.mv,
                    last: false,
                }),
                Phase::Last => Effect::Export(ExportRequest {
                    mv: inc.mv,
                    last: true,
                }),
                Phase::Commit => Effect::ProposeCommit(inc.mv),
            });
        }
        out
    }

    /// The effect for `move_id` in `phase` succeeded (an export is stored durably).
    pub fn on_done(&mut self, move_id: u64, phase: Phase, now_ms: u64) {
        if let Some(inc) = self.incoming.get_mut(&move_id) {
            if inc.phase == phase {
                inc.busy = false;
                inc.failures = 0;
                // After a commit, give the new map time to arrive before proposing again.
                inc.retry_at_ms = if phase == Phase::Commit {
                    now_ms + 500
                } else {
                    now_ms
                };
                inc.phase = match phase {
                    Phase::Copy => Phase::Last,
                    // A commit that went through shows up in the map; until then, ask again.
                    Phase::Last | Phase::Commit => Phase::Commit,
                };
            }
        }
    }

    /// It failed (or its answer was lost): retry the same phase after a backoff.
    pub fn on_failed(&mut self, move_id: u64, phase: Phase, now_ms: u64) {
        if let Some(inc) = self.incoming.get_mut(&move_id) {
            if inc.phase == phase {
                inc.busy = false;
                inc.failures = inc.failures.saturating_add(1);
                inc.retry_at_ms = now_ms + backoff_ms(inc.failures);
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.incoming.len()
    }

    pub fn phase_of(&self, move_id: u64) -> Option<Phase> {
        self.incoming.get(&move_id).map(|i| i.phase)
    }
}

fn backoff_ms(failures: u32) -> u64 {
    (50u64 << failures.min(6)).min(2_000)
}

#[cfg(test)]
#[path = "handoff_tests.rs"]
mod tests;
