//! The replica sets, as the control plane decides them: pure and deterministic, applied by
//! every Raft replica in the same order (the next phase makes it part of `ControlState`).
//!
//! Rules (checked by [`ReplicaSets::check`] after every command, in production too):
//! - a vnode's set holds 1..=R distinct members, the primary first;
//! - every change of the set or of its primary bumps the vnode's epoch by exactly one, and a
//!   command that names an epoch applies only at that epoch (compare-and-set: a late or
//!   duplicated proposal changes nothing);
//! - a new primary comes from the set (all-acknowledgement means any member has every
//!   acknowledged record); a set never becomes empty: a vnode whose members are all down
//!   waits for one of them, and one whose only copy came back empty is `lost`, never served;
//! - a member that returns with another storage incarnation (a new disk) leaves every set
//!   (it holds none of what it acknowledged); it comes back as a learner.

use super::Mutant;
use crate::cluster::ring::Vnode;
use crate::cluster::MemberId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The largest replication factor (the design allows 1, 2 and 3).
pub const MAX_REPLICATION_FACTOR: usize = 3;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetEntry {
    pub epoch: u64,
    /// `replicas[0]` is the primary; every member has every record acknowledged at `epoch`.
    pub replicas: Vec<MemberId>,
    /// The only copy came back empty: acknowledged records are gone; the vnode is not served
    /// until an operator decides (never automatically).
    pub lost: bool,
}

impl SetEntry {
    pub fn primary(&self) -> MemberId {
        self.replicas[0]
    }
    pub fn contains(&self, m: MemberId) -> bool {
        self.replicas.contains(&m)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetMember {
    /// The storage identity the member last reported: created with its database, so a node
    /// restarted on an empty or replaced disk has another one.
    pub incarnation: u64,
    pub down: bool,
}

/// A member catching up to join a vnode's set; not in the set, so never promoted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learner {
    pub member: MemberId,
    pub incarnation: u64,
    /// The sets' version this attempt began at: an `AddReplica` names it, so a late proposal
    /// from an earlier attempt (whose primary may not have waited for this one) is refused.
    pub since: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetCommand {
    /// The member missed its heartbeats. In one command: every vnode it leads gets the first
    /// live member of its set as primary, and it leaves every set it is in (epoch + 1 each);
    /// a vnode with no other live member keeps its set and waits.
    MemberDown {
        member: MemberId,
    },
    /// The member answers again, with its storage incarnation. The same incarnation: it is up
    /// (and a vnode that waited for it gets it back as primary, epoch + 1). Another one: its
    /// disk is new, it leaves every set and learner slot, and a vnode it was the only copy of
    /// is lost.
    MemberUp {
        member: MemberId,
        incarnation: u64,
    },
    /// Proposed by a primary whose member stopped acknowledging. CAS on `epoch`.
    Shrink {
        vnode: Vnode,
        epoch: u64,
        remove: MemberId,
    },
    /// The planner: `member` starts catching up to join the set.
    BeginLearner {
        vnode: Vnode,
        member: MemberId,
    },
    AbortLearner {
        vnode: Vnode,
        member: MemberId,
    },
    /// Proposed by the primary once the learner has everything it acknowledged (and from
    /// then on it waits for the learner too). CAS on `epoch`.
    AddReplica {
        vnode: Vnode,
        epoch: u64,
        member: MemberId,
        incarnation: u64,
        since: u64,
    },
    /// A restarted primary never resumes at its old epoch: it asks for the next one for the
    /// vnodes it leads (each CAS on the epoch it had).
    Reclaim {
        member: MemberId,
        vnodes: Vec<(Vnode, u64)>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSets {
    /// R: the set size the planner aims for.
    pub factor: usize,
    /// Bumped by every command that changed something.
    pub version: u64,
    pub members: BTreeMap<MemberId, SetMember>,
    pub vnodes: Vec<SetEntry>,
    pub learners: BTreeMap<Vnode, Learner>,
    /// Test hook for the simulator's mutants; `Mutant::None` in every real build.
    #[serde(skip)]
    pub mutant: Mutant,
}

impl ReplicaSets {
    /// Sets over `members` (all up, with their incarnations): vnode v's primary is member
    /// `v mod n` and its backups the next ones in member order, so primaries and copies are
    /// balanced.
    pub fn new(vnodes: u32, factor: usize, members: &[(MemberId, u64)]) -> ReplicaSets {
        assert!((1..=MAX_REPLICATION_FACTOR).contains(&factor));
        assert!(!members.is_empty());
        let ids: Vec<MemberId> = members.iter().map(|(m, _)| *m).collect();
        let r = factor.min(ids.len());
        let vnodes = (0..vnodes as usize)
            .map(|v| SetEntry {
                epoch: 1,
                replicas: (0..r).map(|i| ids[(v + i) % ids.len()]).collect(),
                lost: false,
            })
            .collect();
        let sets = ReplicaSets {
            factor,
            version: 1,
            members: members
                .iter()
                .map(|(m, inc)| {
                    let member = SetMember {
                        incarnation: *inc,
                        down: false,
                    };
                    (*m, member)
                })
                .collect(),
            vnodes,
            learners: BTreeMap::new(),
            mutant: Mutant::None,
        };
        sets.check();
        sets
    }

    pub fn entry(&self, v: Vnode) -> &SetEntry {
        &self.vnodes[v as usize]
    }

    fn live_members(&self) -> Vec<MemberId> {
        let live = self.members.iter().filter(|(_, m)| !m.down);
        live.map(|(id, _)| *id).collect()
    }

    pub fn is_live(&self, m: MemberId) -> bool {
        self.members.get(&m).is_some_and(|x| !x.down)
    }

    /// Applies a command; `false` when it changed nothing (rejected or already so).
    pub fn apply(&mut self, cmd: &SetCommand) -> bool {
        let changed = self.apply_inner(cmd);
        if changed {
            self.version += 1;
        }
        self.check();
        changed
    }

    fn apply_inner(&mut self, cmd: &SetCommand) -> bool {
        match cmd {
            SetCommand::MemberDown { member } => self.member_down(*member),
            SetCommand::MemberUp {
                member,
                incarnation,
            } => self.member_up(*member, *incarnation),
            SetCommand::Shrink {
                vnode,
                epoch,
                remove,
            } => {
                let Some(e) = self.vnodes.get(*vnode as usize) else {
                    return false;
                };
                // The primary cannot shrink itself out; a set keeps at least one member.
                if e.epoch != *epoch || e.primary() == *remove || !e.contains(*remove) {
                    return false;
                }
                let e = &mut self.vnodes[*vnode as usize];
                e.replicas.retain(|m| m != remove);
                e.epoch += 1;
                true
            }
            SetCommand::BeginLearner { vnode, member } => {
                let Some(e) = self.vnodes.get(*vnode as usize) else {
                    return false;
                };
                let wanted = e.replicas.len() < self.factor && !e.lost;
                if !wanted || e.contains(*member) || self.learners.contains_key(vnode) {
                    return false;
                }
                let Some(m) = self.members.get(member).filter(|m| !m.down) else {
                    return false;
                };
                let learner = Learner {
                    member: *member,
                    incarnation: m.incarnation,
                    since: self.version + 1,
                };
                self.learners.insert(*vnode, learner);
                true
            }
            SetCommand::AbortLearner { vnode, member } => {
                if self
                    .learners
                    .get(vnode)
                    .is_some_and(|l| l.member == *member)
                {
                    self.learners.remove(vnode);
                    return true;
                }
                false
            }
            SetCommand::AddReplica {
                vnode,
                epoch,
                member,
                incarnation,
                since,
            } => self.add_replica(*vnode, *epoch, (*member, *incarnation, *since)),
            SetCommand::Reclaim { member, vnodes } => {
                let mut changed = false;
                for (v, epoch) in vnodes {
                    let Some(e) = self.vnodes.get_mut(*v as usize) else {
                        continue;
                    };
                    if e.epoch == *epoch && e.primary() == *member && !e.lost {
                        e.epoch += 1;
                        changed = true;
                    }
                }
                changed
            }
        }
    }

    fn member_down(&mut self, member: MemberId) -> bool {
        match self.members.get_mut(&member) {
            Some(m) if !m.down => m.down = true,
            _ => return false,
        }
        self.learners.retain(|_, l| l.member != member);
        let live = self.live_members();
        for e in self.vnodes.iter_mut() {
            if !e.contains(member) || e.lost {
                continue;
            }
            let others: Vec<MemberId> = e
                .replicas
                .iter()
                .copied()
                .filter(|m| *m != member)
                .collect();
            if e.primary() == member {
                let next = if self.mutant == Mutant::PromoteOutOfSet {
                    live.first().copied()
                } else {
                    others.iter().copied().find(|m| live.contains(m))
                };
                // No live member: keep the set, wait for one of them to come back.
                let Some(next) = next else { continue };
                let mut replicas = vec![next];
                replicas.extend(others.into_iter().filter(|m| *m != next));
                e.replicas = replicas;
                e.epoch += 1;
            } else if live.contains(&e.primary()) {
                e.replicas = others;
                e.epoch += 1;
            }
            // A backup of a down primary stays: if it comes back first, it may lead.
        }
        true
    }

    fn member_up(&mut self, member: MemberId, incarnation: u64) -> bool {
        let Some(m) = self.members.get_mut(&member) else {
            return false;
        };
        if m.incarnation != incarnation {
            // A new disk: none of what this member acknowledged is on it.
            m.incarnation = incarnation;
            m.down = false;
            self.learners.retain(|_, l| l.member != member);
            for e in self.vnodes.iter_mut() {
                if !e.contains(member) {
                    continue;
                }
                if e.replicas.len() == 1 {
                    e.lost = true;
                } else {
                    e.replicas.retain(|x| *x != member);
                    e.epoch += 1;
                }
            }
            return true;
        }
        if !m.down {
            return false;
        }
        m.down = false;
        let live = self.live_members();
        for e in self.vnodes.iter_mut() {
            // Its primary is down and no shrink happened while it was: this member has every
            // acknowledged record; it leads now (and takes over the next epoch).
            if e.contains(member) && !live.contains(&e.primary()) && !e.lost {
                let others: Vec<MemberId> = e
                    .replicas
                    .iter()
                    .copied()
                    .filter(|x| *x != member)
                    .collect();
                e.replicas = std::iter::once(member).chain(others).collect();
                e.epoch += 1;
            }
        }
        true
    }

    fn add_replica(&mut self, v: Vnode, epoch: u64, learner: (MemberId, u64, u64)) -> bool {
        let (member, incarnation, since) = learner;
        let Some(e) = self.vnodes.get(v as usize) else {
            return false;
        };
        let is_learner = self.learners.get(&v).is_some_and(|l| {
            l.member == member && l.incarnation == incarnation && l.since == since
        });
        let current = self
            .members
            .get(&member)
            .is_some_and(|m| !m.down && m.incarnation == incarnation);
        if e.epoch != epoch || !is_learner || !current || e.contains(member) {
            return false;
        }
        self.learners.remove(&v);
        let e = &mut self.vnodes[v as usize];
        e.replicas.push(member);
        e.epoch += 1;
        true
    }

    /// The planner's learners: for each vnode below R with a live primary and no learner,
    /// the live member outside its set that holds the fewest copies. Pure.
    pub fn plan(&self) -> Vec<SetCommand> {
        let mut copies: BTreeMap<MemberId, usize> = self
            .members
            .iter()
            .filter(|(_, m)| !m.down)
            .map(|(id, _)| (*id, 0))
            .collect();
        for e in &self.vnodes {
            for m in &e.replicas {
                if let Some(c) = copies.get_mut(m) {
                    *c += 1;
                }
            }
        }
        let mut out = Vec::new();
        for (v, e) in self.vnodes.iter().enumerate() {
            let v = v as Vnode;
            let below = e.replicas.len() < self.factor;
            if !below || e.lost || !self.is_live(e.primary()) || self.learners.contains_key(&v) {
                continue;
            }
            let pick = copies
                .iter()
                .filter(|(m, _)| !e.contains(**m))
                .min_by_key(|(m, c)| (**c, **m))
                .map(|(m, _)| *m);
            if let Some(member) = pick {
                *copies.entry(member).or_default() += 1;
                out.push(SetCommand::BeginLearner { vnode: v, member });
            }
        }
        out
    }

    /// Invariants, after every command (TigerBeetle style: in production too).
    pub fn check(&self) {
        assert!((1..=MAX_REPLICATION_FACTOR).contains(&self.factor));
        for (v, e) in self.vnodes.iter().enumerate() {
            assert!(e.epoch >= 1);
            assert!(!e.replicas.is_empty(), "v{v}: a set never becomes empty");
            assert!(e.replicas.len() <= self.factor, "v{v}: more than R members");
            for (i, m) in e.replicas.iter().enumerate() {
                assert!(self.members.contains_key(m), "v{v}: m{m} is not a member");
                assert!(!e.replicas[..i].contains(m), "v{v}: m{m} twice in the set");
            }
            if let Some(l) = self.learners.get(&(v as Vnode)) {
                assert!(!e.contains(l.member), "v{v}: a learner is not in the set");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sets(factor: usize, n: u32) -> ReplicaSets {
        let members: Vec<(MemberId, u64)> = (0..n).map(|m| (m, 100 + m as u64)).collect();
        ReplicaSets::new(8, factor, &members)
    }

    #[test]
    fn member_down_fails_over_and_shrinks_in_one_command() {
        let mut s = sets(2, 3);
        let before = s.clone();
        assert!(s.apply(&SetCommand::MemberDown { member: 0 }));
        for (v, (old, new)) in before.vnodes.iter().zip(&s.vnodes).enumerate() {
            if !old.contains(0) {
                assert_eq!(old, new, "v{v} untouched");
                continue;
            }
            assert_eq!(new.epoch, old.epoch + 1, "v{v}");
            assert!(!new.contains(0), "v{v}");
            assert!(old.contains(new.primary()), "v{v}: promoted from the set");
        }
        // A second copy of the command changes nothing.
        assert!(!s.apply(&SetCommand::MemberDown { member: 0 }));
    }

    #[test]
    fn a_set_never_empties_and_waits_for_its_member() {
        let mut s = sets(1, 2);
        let v0 = s.entry(0).clone();
        s.apply(&SetCommand::MemberDown {
            member: v0.primary(),
        });
        assert_eq!(s.entry(0), &v0, "no other copy: the set waits");
        s.apply(&SetCommand::MemberUp {
            member: v0.primary(),
            incarnation: 100 + v0.primary() as u64,
        });
        // It leads again; a restarted process asks for the next epoch itself (`Reclaim`),
        // a resumed one (paused, cut off) still has its log and goes on.
        assert_eq!(s.entry(0), &v0);
    }

    #[test]
    fn a_new_disk_leaves_every_set_and_an_only_copy_is_lost() {
        let mut s = sets(1, 2);
        let p = s.entry(0).primary();
        s.apply(&SetCommand::MemberUp {
            member: p,
            incarnation: 7,
        });
        assert!(s.entry(0).lost, "the only copy came back empty");
        let mut s = sets(2, 3);
        let v0 = s.entry(0).clone();
        s.apply(&SetCommand::MemberUp {
            member: v0.primary(),
            incarnation: 7,
        });
        assert!(!s.entry(0).contains(v0.primary()));
        assert_eq!(s.entry(0).epoch, v0.epoch + 1);
        assert!(!s.entry(0).lost);
    }

    #[test]
    fn set_changes_are_compare_and_set_on_the_epoch() {
        let mut s = sets(2, 3);
        let e = s.entry(0).clone();
        let backup = e.replicas[1];
        let shrink = SetCommand::Shrink {
            vnode: 0,
            epoch: e.epoch,
            remove: backup,
        };
        assert!(s.apply(&shrink));
        assert!(!s.apply(&shrink), "a repeat at the old epoch is refused");
        assert_eq!(s.entry(0).replicas, vec![e.primary()]);
        // Add back only through a learner of the current incarnation, at the current epoch.
        let add = |since| SetCommand::AddReplica {
            vnode: 0,
            epoch: e.epoch + 1,
            member: backup,
            incarnation: 100 + backup as u64,
            since,
        };
        assert!(!s.apply(&add(s.version + 1)), "not a learner yet");
        let plan = s.plan();
        assert!(
            plan.iter().any(
                |c| matches!(c, SetCommand::BeginLearner { vnode: 0, member }
                if !s.entry(0).contains(*member))
            ),
            "{plan:?}"
        );
        assert!(s.apply(&SetCommand::BeginLearner {
            vnode: 0,
            member: backup
        }));
        let since = s.learners[&0].since;
        let stale = SetCommand::AddReplica {
            vnode: 0,
            epoch: e.epoch,
            member: backup,
            incarnation: 100 + backup as u64,
            since,
        };
        assert!(!s.apply(&stale), "an older epoch is refused");
        assert!(
            !s.apply(&add(since - 1)),
            "another learner attempt is refused"
        );
        assert!(s.apply(&add(since)));
        assert_eq!(s.entry(0).replicas, vec![e.primary(), backup]);
        assert_eq!(s.entry(0).epoch, e.epoch + 2);
    }

    #[test]
    fn reclaim_moves_a_restarted_primary_to_the_next_epoch_once() {
        let mut s = sets(2, 3);
        let e = s.entry(1).clone();
        let cmd = SetCommand::Reclaim {
            member: e.primary(),
            vnodes: vec![(1, e.epoch)],
        };
        assert!(s.apply(&cmd));
        assert!(!s.apply(&cmd));
        assert_eq!(s.entry(1).epoch, e.epoch + 1);
        assert_eq!(s.entry(1).replicas, e.replicas);
    }
}
