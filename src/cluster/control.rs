//! The control state: membership and the ring map `vnode -> (epoch, owner)`, plus the moves in
//! progress. It is the state machine of the Raft group on the seeds, so it is pure and
//! deterministic: every replica applies the same commands in the same order and gets the same
//! state. Reservations never pass through here; only membership and ownership changes do.
//!
//! Ownership of a vnode changes in exactly one place, `CommitMove`, which bumps the vnode's
//! epoch. A move that is aborted never changes the owner. That single rule is what the handoff
//! protocol (`handoff.rs`) builds its "at most one writer per vnode" argument on.

use super::planner::{self, NO_OWNER};
use super::ring::{is_valid_vnode_count, Vnode};
use super::MemberId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Admitted; receiving its share of vnodes.
    Joining,
    Up,
    /// Decommissioning: handing every vnode to the others.
    Leaving,
    /// Holds nothing any more; may stop.
    Left,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Up => "up",
            MemberState::Leaving => "leaving",
            MemberState::Left => "left",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberSpec {
    pub name: String,
    pub http_addr: String,
    pub cluster_addr: String,
    /// Which start of the node's process sent this: larger for every later start (the start
    /// time in ms; 0 in the bootstrap list and in logs written before it existed). A `Join`
    /// can arrive late or twice (a retried, duplicated or delayed proposal); one from an
    /// earlier start than the member's, or from the start that has left since, is such a
    /// copy, not a request to come back.
    #[serde(default)]
    pub incarnation: u64,
    /// The identity of the node's database (`store::storage_id`; 0 where not reported: the
    /// bootstrap list, logs written before it existed). Once recorded it never changes: a
    /// `Join` under a known name with another one is a node whose disk was lost or replaced,
    /// and it is refused, so the node never serves its vnodes empty.
    #[serde(default)]
    pub storage_id: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: MemberId,
    pub spec: MemberSpec,
    pub state: MemberState,
    /// Missed heartbeats, as decided by the leader and committed here: a down member neither
    /// receives vnodes nor gives them away (its data is on its disk).
    pub down: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnodeEntry {
    pub epoch: u64,
    pub owner: MemberId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    pub id: u64,
    pub vnode: Vnode,
    pub from: MemberId,
    pub to: MemberId,
    /// The epoch the vnode has while the move runs; the target owns it at `epoch + 1`.
    pub epoch: u64,
    pub started_ms: u64,
    /// The state version this move appeared at. A source that has fenced the vnode for this
    /// move lifts the fence only from a map at least this new that no longer has the move
    /// (an older map simply has not heard of it yet).
    pub begun_at: u64,
    /// The source said its fence for this move is durable (`MoveFenced`): only then may the
    /// target commit it.
    #[serde(default)]
    pub fenced: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlState {
    /// Bumped by every command that changed something.
    pub version: u64,
    pub vnodes: u32,
    pub members: BTreeMap<MemberId, Member>,
    pub next_member: MemberId,
    /// Empty until `Bootstrap`.
    pub ring: Vec<VnodeEntry>,
    pub moves: BTreeMap<Vnode, Move>,
    pub next_move: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlCommand {
    /// Creates the ring over the first members (the seeds). Only once.
    Bootstrap {
        vnodes: u32,
        members: Vec<MemberSpec>,
    },
    /// Admits a node. A known name is a restart, not a join: its addresses are refreshed and
    /// nothing moves.
    Join(MemberSpec),
    Leave {
        name: String,
    },
    SetDown {
        member: MemberId,
        down: bool,
    },
    SetState {
        member: MemberId,
        state: MemberState,
    },
    BeginMove {
        vnode: Vnode,
        to: MemberId,
        now_ms: u64,
    },
    /// The move's source: its fence for the move is durable (it writes nothing to the vnode
    /// from now on). Proposed before it answers the target's last export.
    MoveFenced {
        vnode: Vnode,
        move_id: u64,
        by: MemberId,
    },
    /// The move's target: it holds everything the fenced source had; the vnode is its own.
    /// Refused from anyone but the target, and before the source's `MoveFenced`. (`by` is
    /// `None` only in logs written before it existed, which are replayed as they were.)
    CommitMove {
        vnode: Vnode,
        move_id: u64,
        #[serde(default)]
        by: Option<MemberId>,
    },
    AbortMove {
        vnode: Vnode,
        move_id: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    Done,
    Member(MemberId),
    /// The command did not apply, and changed nothing.
    Rejected(String),
}

impl ControlCommand {
    /// Whether the node named `from` may propose this command over the node-to-node
    /// transport (the Raft leader asks before proposing for a peer). A node joins as itself,
    /// fences the moves it is the source of, commits those it is the target of, and relays
    /// an operator's `Leave` (authenticated where it arrived); the leader alone decides
    /// everything else.
    pub fn proposable_by(&self, from: &str, state: &ControlState) -> Result<(), String> {
        let name_of = |id: &MemberId| state.members.get(id).map(|m| m.spec.name.as_str());
        match self {
            ControlCommand::Join(spec) if spec.name == from => Ok(()),
            ControlCommand::Join(spec) => Err(format!("{from} cannot join as {}", spec.name)),
            ControlCommand::Leave { .. } => Ok(()),
            ControlCommand::MoveFenced { by, .. }
            | ControlCommand::CommitMove { by: Some(by), .. }
                if name_of(by) == Some(from) =>
            {
                Ok(())
            }
            ControlCommand::MoveFenced { .. } | ControlCommand::CommitMove { .. } => {
                Err(format!("{from} proposed a move step for another member"))
            }
            _ => Err(format!("{from} proposed a command only the leader makes")),
        }
    }
}

impl ControlState {
    pub fn member_by_name(&self, name: &str) -> Option<&Member> {
        self.members.values().find(|m| m.spec.name == name)
    }

    pub fn owner_of(&self, vnode: Vnode) -> Option<VnodeEntry> {
        self.ring.get(vnode as usize).copied()
    }

    pub fn owned_by(&self, member: MemberId) -> usize {
        self.ring.iter().filter(|e| e.owner == member).count()
    }

    pub fn is_bootstrapped(&self) -> bool {
        !self.ring.is_empty()
    }

    pub fn apply(&mut self, cmd: &ControlCommand) -> ControlResponse {
        let response = self.apply_inner(cmd);
        if !matches!(response, ControlResponse::Rejected(_)) {
            self.version += 1;
        }
        self.check();
        response
    }

    fn apply_inner(&mut self, cmd: &ControlCommand) -> ControlResponse {
        use ControlResponse::{Done, Rejected};
        match cmd {
            ControlCommand::Bootstrap { vnodes, members } => {
                if self.is_bootstrapped() {
                    return Rejected("already bootstrapped".into());
                }
                if !is_valid_vnode_count(*vnodes) || members.is_empty() {
                    return Rejected("bad bootstrap".into());
                }
                self.vnodes = *vnodes;
                for spec in members {
                    if self.member_by_name(&spec.name).is_none() {
                        self.add_member(spec.clone(), MemberState::Up);
                    }
                }
                let receivers: Vec<MemberId> = self.members.keys().copied().collect();
                let owners = vec![NO_OWNER; *vnodes as usize];
                let pinned = vec![false; *vnodes as usize];
                let target = planner::target(&owners, &receivers, &pinned);
                self.ring = target
                    .into_iter()
                    .map(|owner| VnodeEntry { epoch: 1, owner })
                    .collect();
                Done
            }
            ControlCommand::Join(spec) => {
                if let Some(m) = self.members.values_mut().find(|m| m.spec.name == spec.name) {
                    let known = m.spec.storage_id;
                    let replaced = known != 0 && spec.storage_id != known;
                    if replaced && m.state != MemberState::Left {
                        // Its disk is not the one that acknowledged its vnodes' writes (C2,
                        // C3): it must not serve them as if it were.
                        return Rejected(format!(
                            "{}: storage replaced (the cluster knows disk {known:x}, this is \
                             {:x}); its data is gone: restore its data dir, or remove it",
                            spec.name, spec.storage_id
                        ));
                    }
                    let stale = spec.incarnation < m.spec.incarnation
                        || (spec.incarnation == m.spec.incarnation && m.state == MemberState::Left);
                    if stale {
                        // A late copy from an earlier start, or from the start that has left
                        // since: re-admitting it would leave a member no process stands
                        // behind, and its addresses may be outdated.
                        return ControlResponse::Member(m.id);
                    }
                    if m.state == MemberState::Left {
                        // A left node that comes back (a new start) joins again, empty.
                        m.state = MemberState::Joining;
                    }
                    m.spec = spec.clone();
                    return ControlResponse::Member(m.id);
                }
                ControlResponse::Member(self.add_member(spec.clone(), MemberState::Joining))
            }
            ControlCommand::Leave { name } => {
                let active = self
                    .members
                    .values()
                    .filter(|m| matches!(m.state, MemberState::Joining | MemberState::Up))
                    .count();
                let Some(m) = self.members.values_mut().find(|m| &m.spec.name == name) else {
                    return Rejected(format!("no member named {name}"));
                };
                match m.state {
                    MemberState::Leaving | MemberState::Left => Done,
                    _ if active <= 1 => Rejected("the last member cannot leave".into()),
                    _ => {
                        m.state = MemberState::Leaving;
                        Done
                    }
                }
            }
            ControlCommand::SetDown { member, down } => match self.members.get_mut(member) {
                Some(m) if m.down != *down => {
                    m.down = *down;
                    Done
                }
                Some(_) => Rejected("unchanged".into()),
                None => Rejected("no such member".into()),
            },
            ControlCommand::SetState { member, state } => match self.members.get_mut(member) {
                Some(m) if m.state != *state => {
                    m.state = *state;
                    Done
                }
                Some(_) => Rejected("unchanged".into()),
                None => Rejected("no such member".into()),
            },
            ControlCommand::BeginMove { vnode, to, now_ms } => {
                let Some(entry) = self.owner_of(*vnode) else {
                    return Rejected("no such vnode".into());
                };
                if self.moves.contains_key(vnode) {
                    return Rejected("vnode already moving".into());
                }
                let receiver_ok = self.members.get(to).is_some_and(|m| {
                    !m.down && matches!(m.state, MemberState::Joining | MemberState::Up)
                });
                let source_ok = self.members.get(&entry.owner).is_some_and(|m| !m.down);
                if !receiver_ok || !source_ok || entry.owner == *to {
                    return Rejected("move not allowed".into());
                }
                let id = self.next_move;
                self.next_move += 1;
                self.moves.insert(
                    *vnode,
                    Move {
                        id,
                        vnode: *vnode,
                        from: entry.owner,
                        to: *to,
                        epoch: entry.epoch,
                        started_ms: *now_ms,
                        begun_at: self.version + 1,
                        fenced: false,
                    },
                );
                Done
            }
            ControlCommand::MoveFenced { vnode, move_id, by } => match self.moves.get_mut(vnode) {
                Some(m) if m.id == *move_id && m.from == *by => {
                    if m.fenced {
                        return Rejected("unchanged".into());
                    }
                    m.fenced = true;
                    Done
                }
                Some(m) if m.id == *move_id => Rejected("only the move's source fences it".into()),
                _ => Rejected("no such move".into()),
            },
            ControlCommand::CommitMove { vnode, move_id, by } => {
                match self.moves.get(vnode) {
                    Some(m) if m.id == *move_id && by.is_some_and(|b| b != m.to) => {
                        Rejected("only the move's target commits it".into())
                    }
                    Some(m) if m.id == *move_id && by.is_some() && !m.fenced => {
                        Rejected("the source has not fenced the vnode".into())
                    }
                    Some(m) if m.id == *move_id => {
                        let m = *m;
                        self.moves.remove(vnode);
                        self.ring[*vnode as usize] = VnodeEntry {
                            epoch: m.epoch + 1,
                            owner: m.to,
                        };
                        Done
                    }
                    // Not (or no longer) this move: an aborted move never commits.
                    _ => Rejected("no such move".into()),
                }
            }
            ControlCommand::AbortMove { vnode, move_id } => match self.moves.get(vnode) {
                Some(m) if m.id == *move_id => {
                    self.moves.remove(vnode);
                    Done
                }
                _ => Rejected("no such move".into()),
            },
        }
    }

    fn add_member(&mut self, spec: MemberSpec, state: MemberState) -> MemberId {
        let id = self.next_member;
        self.next_member += 1;
        self.members.insert(
            id,
            Member {
                id,
                spec,
                state,
                down: false,
            },
        );
        id
    }

    /// Invariants, checked after every command (TigerBeetle style: in production too).
    fn check(&self) {
        if self.is_bootstrapped() {
            assert_eq!(self.ring.len(), self.vnodes as usize);
            for e in &self.ring {
                assert!(
                    self.members.contains_key(&e.owner),
                    "owner must be a member"
                );
                assert!(e.epoch >= 1);
            }
        }
        for (v, m) in &self.moves {
            assert_eq!(*v, m.vnode);
            let e = self.ring[*v as usize];
            assert_eq!(e.owner, m.from, "a move starts from the current owner");
            assert_eq!(e.epoch, m.epoch, "the epoch cannot change under a move");
            assert!(m.id < self.next_move);
        }
    }

    /// The leader's periodic decision: which moves to start or abort and which member states
    /// to advance. Pure; `now_ms` is the leader's clock and only times out stuck moves.
    pub fn rebalance(
        &self,
        now_ms: u64,
        max_moves: usize,
        move_timeout_ms: u64,
    ) -> Vec<ControlCommand> {
        let mut out = Vec::new();
        if !self.is_bootstrapped() {
            return out;
        }
        let mut in_flight: BTreeSet<Vnode> = BTreeSet::new();
        for m in self.moves.values() {
            let stuck = now_ms.saturating_sub(m.started_ms) > move_timeout_ms;
            let party_down = [m.from, m.to]
                .iter()
                .any(|id| self.members.get(id).is_none_or(|mm| mm.down));
            // A member that started leaving takes nothing more.
            let into_leaver = self
                .members
                .get(&m.to)
                .is_none_or(|mm| !matches!(mm.state, MemberState::Joining | MemberState::Up));
            if stuck || party_down || into_leaver {
                out.push(ControlCommand::AbortMove {
                    vnode: m.vnode,
                    move_id: m.id,
                });
            } else {
                in_flight.insert(m.vnode);
            }
        }
        let receivers: Vec<MemberId> = self
            .members
            .values()
            .filter(|m| !m.down && matches!(m.state, MemberState::Joining | MemberState::Up))
            .map(|m| m.id)
            .collect();
        if receivers.is_empty() {
            return out;
        }
        let owners: Vec<MemberId> = self.ring.iter().map(|e| e.owner).collect();
        let pinned: Vec<bool> = owners
            .iter()
            .map(|o| self.members.get(o).is_none_or(|m| m.down))
            .collect();
        let target = planner::target(&owners, &receivers, &pinned);
        let budget = max_moves.saturating_sub(in_flight.len());
        for mv in planner::next_moves(&owners, &target, &in_flight, budget) {
            out.push(ControlCommand::BeginMove {
                vnode: mv.vnode,
                to: mv.to,
                now_ms,
            });
        }
        for m in self.members.values() {
            let wanted = target.iter().filter(|o| **o == m.id).count();
            let incoming = self.moves.values().any(|mv| mv.to == m.id);
            let outgoing = self.moves.values().any(|mv| mv.from == m.id);
            match m.state {
                MemberState::Joining if !incoming && self.owned_by(m.id) >= wanted => {
                    out.push(ControlCommand::SetState {
                        member: m.id,
                        state: MemberState::Up,
                    })
                }
                MemberState::Leaving if !outgoing && !incoming && self.owned_by(m.id) == 0 => out
                    .push(ControlCommand::SetState {
                        member: m.id,
                        state: MemberState::Left,
                    }),
                _ => {}
            }
        }
        out
    }
}
