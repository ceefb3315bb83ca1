//! The core's rules one at a time, on three replicas wired by hand (messages delivered in
//! order, fsyncs done at once unless held). Each test also runs its scenario with the mutant
//! that breaks its rule and asserts the rule then fails: the test can see the breakage. The
//! simulator (`simulations/replication/`) checks the same rules under random faults.

use super::replica::{Replica, ReplicaConfig, ReplicaMsg, ReplicaOutput};
use super::set::{ReplicaSets, SetCommand};
use super::Mutant;
use crate::cluster::MemberId;
use std::collections::{BTreeMap, BTreeSet};

type Node = Replica<u64, u64>;

struct Net {
    nodes: BTreeMap<MemberId, Node>,
    /// Nodes whose fsyncs do not complete until released.
    slow_disks: BTreeSet<MemberId>,
    held_syncs: Vec<(MemberId, ReplicaOutput<u64, u64>)>,
    /// Every answer and proposal, in order.
    answers: Vec<(MemberId, ReplicaOutput<u64, u64>)>,
    now: u64,
}

fn config(me: MemberId, mutant: Mutant) -> ReplicaConfig {
    ReplicaConfig {
        me,
        incarnation: 100 + me as u64,
        ack_timeout_ms: 200,
        resend_ms: 30,
        max_batch: 8,
        mutant,
    }
}

fn sets(factor: usize) -> ReplicaSets {
    let members: Vec<(MemberId, u64)> = (0..3).map(|m| (m, 100 + m as u64)).collect();
    ReplicaSets::new(1, factor, &members)
}

impl Net {
    fn new(mutant: Mutant) -> Net {
        let nodes = (0..3)
            .map(|m| (m, Replica::new(config(m, mutant))))
            .collect();
        Net {
            nodes,
            slow_disks: BTreeSet::new(),
            held_syncs: Vec::new(),
            answers: Vec::new(),
            now: 1,
        }
    }

    fn publish(&mut self, sets: &ReplicaSets, to: &[MemberId]) {
        for m in to {
            let now = self.now;
            self.nodes.get_mut(m).expect("node").handle_sets(sets, now);
        }
        self.pump();
    }

    fn sync(&mut self, m: MemberId, out: ReplicaOutput<u64, u64>) {
        if let ReplicaOutput::Sync {
            vnode,
            generation,
            len,
            sealed,
        } = out
        {
            let now = self.now;
            let node = self.nodes.get_mut(&m).expect("node");
            node.handle_synced(vnode, generation, len, sealed, now);
        }
    }

    /// Delivers everything until nothing moves.
    fn pump(&mut self) {
        for _ in 0..1_000 {
            let mut moved = false;
            let ids: Vec<MemberId> = self.nodes.keys().copied().collect();
            for m in ids {
                let outs = self.nodes.get_mut(&m).expect("node").poll();
                for out in outs {
                    moved = true;
                    match out {
                        ReplicaOutput::Send {
                            to,
                            incarnation,
                            msg,
                        } => {
                            let now = self.now;
                            if let Some(n) = self.nodes.get_mut(&to) {
                                n.handle_message(m, incarnation, msg, now);
                            }
                        }
                        ReplicaOutput::Sync { .. } if self.slow_disks.contains(&m) => {
                            self.held_syncs.push((m, out));
                        }
                        ReplicaOutput::Sync { .. } => self.sync(m, out),
                        other => self.answers.push((m, other)),
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the replicas did not quiesce");
    }

    fn release_disks(&mut self) {
        self.slow_disks.clear();
        for (m, out) in std::mem::take(&mut self.held_syncs) {
            self.sync(m, out);
        }
        self.pump();
    }

    fn committed(&self, tag: u64) -> bool {
        self.answers
            .iter()
            .any(|(_, a)| matches!(a, ReplicaOutput::Committed { tag: t, .. } if *t == tag))
    }
}

/// R=3, vnode 0 led by member 0 at epoch 1, the takeover done.
fn led(mutant: Mutant) -> (Net, ReplicaSets) {
    let mut net = Net::new(mutant);
    let s = sets(3);
    net.publish(&s, &[0, 1, 2]);
    assert_eq!(net.nodes[&0].serving(0), Some(1));
    (net, s)
}

fn commits_before_every_member_has_it(mutant: Mutant) -> bool {
    let (mut net, _) = led(mutant);
    net.slow_disks.insert(2);
    net.nodes
        .get_mut(&0)
        .expect("node")
        .append(0, 7, 1, 1)
        .expect("primary");
    net.pump();
    let early = net.committed(1);
    net.release_disks();
    assert!(net.committed(1), "committed once every member has it");
    early
}

#[test]
fn a_write_commits_only_when_every_member_has_it_on_disk() {
    assert!(!commits_before_every_member_has_it(Mutant::None));
    assert!(commits_before_every_member_has_it(
        Mutant::AckAfterLocalSync
    ));
}

/// Member 0 led at epoch 1; the control plane failed it over to member 1 (epoch 2), and
/// member 0 has not heard. Returns what its read got.
fn read_on_a_deposed_primary(mutant: Mutant) -> ReplicaOutput<u64, u64> {
    let (mut net, mut s) = led(mutant);
    net.nodes
        .get_mut(&0)
        .expect("node")
        .append(0, 7, 1, 1)
        .expect("primary");
    net.pump();
    assert!(net.committed(1));
    assert!(s.apply(&SetCommand::MemberDown { member: 0 }));
    net.publish(&s, &[1, 2]);
    assert_eq!(net.nodes[&1].serving(0), Some(2));
    net.nodes
        .get_mut(&1)
        .expect("node")
        .append(0, 8, 2, 2)
        .expect("new primary");
    net.pump();
    assert!(net.committed(2), "the new primary took a write");
    net.answers.clear();
    net.nodes
        .get_mut(&0)
        .expect("node")
        .read(0, 3, 3)
        .expect("thinks it leads");
    net.pump();
    net.answers
        .pop()
        .map(|(_, a)| a)
        .expect("the read is answered")
}

#[test]
fn a_deposed_primary_answers_no_read() {
    match read_on_a_deposed_primary(Mutant::None) {
        ReplicaOutput::Refused { tag: 3 } => {}
        other => panic!("a deposed primary answered {other:?}"),
    }
    match read_on_a_deposed_primary(Mutant::ReadWithoutConfirm) {
        ReplicaOutput::ReadDone { tag: 3, items } => assert_eq!(items, vec![7], "stale"),
        other => panic!("the mutant should serve a stale read, got {other:?}"),
    }
}

/// The primary of epoch 1 crashes and restarts from its disk; the sets still name it.
fn restarted_primary(mutant: Mutant) -> (Option<u64>, Vec<SetCommand>) {
    let (mut net, s) = led(mutant);
    net.nodes
        .get_mut(&0)
        .expect("node")
        .append(0, 7, 1, 1)
        .expect("primary");
    net.pump();
    let disk = net.nodes[&0].durable_image();
    net.nodes
        .insert(0, Replica::restore(config(0, mutant), disk));
    net.answers.clear();
    net.publish(&s, &[0]);
    let proposals = net
        .answers
        .iter()
        .filter_map(|(_, a)| match a {
            ReplicaOutput::Propose(cmd) => Some(cmd.clone()),
            _ => None,
        })
        .collect();
    (net.nodes[&0].serving(0), proposals)
}

#[test]
fn a_restarted_primary_asks_for_the_next_epoch_instead_of_resuming() {
    let (serving, proposals) = restarted_primary(Mutant::None);
    assert_eq!(serving, None);
    assert_eq!(
        proposals,
        vec![SetCommand::Reclaim {
            member: 0,
            vnodes: vec![(0, 1)]
        }]
    );
    let (serving, _) = restarted_primary(Mutant::ResumeSameEpoch);
    assert_eq!(serving, Some(1), "the mutant resumes at its old epoch");
}

/// Member 1 was sealed at epoch 2 by member 2; a late `Replicate` of epoch 1 from member 0
/// arrives. Returns member 1's log length after it and what it answered.
fn late_replicate(mutant: Mutant) -> (usize, Vec<ReplicaMsg<u64>>) {
    let mut b: Node = Replica::new(config(1, mutant));
    let seal = ReplicaMsg::Seal {
        vnode: 0,
        epoch: 2,
        from_len: 0,
        history: Vec::new(),
        adopt: true,
    };
    b.handle_message(2, 101, seal, 1);
    let late = ReplicaMsg::Replicate {
        vnode: 0,
        epoch: 1,
        prev_len: 0,
        prev_epoch: 0,
        records: vec![super::replica::Record { epoch: 1, item: 9 }],
    };
    b.handle_message(0, 101, late, 2);
    let sent = b
        .poll()
        .into_iter()
        .filter_map(|o| match o {
            ReplicaOutput::Send { to: 0, msg, .. } => Some(msg),
            _ => None,
        })
        .collect();
    (b.log(0).len(), sent)
}

#[test]
fn a_member_refuses_records_of_an_epoch_below_its_seal() {
    let (len, sent) = late_replicate(Mutant::None);
    assert_eq!(len, 0);
    assert_eq!(sent, vec![ReplicaMsg::Stale { vnode: 0, epoch: 2 }]);
    let (len, _) = late_replicate(Mutant::AcceptLowerEpoch);
    assert_eq!(len, 1, "the mutant takes them");
}

#[test]
fn a_message_for_another_disk_is_dropped() {
    let mut b: Node = Replica::new(config(1, Mutant::None));
    let seal = ReplicaMsg::Seal {
        vnode: 0,
        epoch: 2,
        from_len: 0,
        history: Vec::new(),
        adopt: true,
    };
    // Meant for incarnation 55 of member 1: this node (101) has a new disk.
    b.handle_message(2, 55, seal, 1);
    assert!(b.poll().is_empty());
    assert_eq!(b.sealed(0).0 .0, 0);
}

#[test]
fn a_new_primary_adopts_the_longest_log_of_its_set() {
    let (mut net, mut s) = led(Mutant::None);
    // Member 2's disk is slow: the record reaches member 1 durably but not member 2, so it
    // is not committed; then member 0 dies.
    net.slow_disks.insert(2);
    net.nodes
        .get_mut(&0)
        .expect("node")
        .append(0, 7, 1, 1)
        .expect("primary");
    net.pump();
    assert!(!net.committed(1));
    net.nodes.remove(&0);
    net.release_disks();
    assert!(s.apply(&SetCommand::MemberDown { member: 0 }));
    let new_primary = s.entry(0).primary();
    net.publish(&s, &[1, 2]);
    assert_eq!(net.nodes[&new_primary].serving(0), Some(2));
    for m in [1, 2] {
        let items: Vec<u64> = net.nodes[&m].log(0).iter().map(|r| r.item).collect();
        assert_eq!(items, vec![7], "m{m}: the longest log was adopted");
    }
}

#[test]
fn a_takeover_seals_no_peer_before_its_own_seal_is_on_disk() {
    let (mut net, mut s) = led(Mutant::None);
    assert!(s.apply(&SetCommand::MemberDown { member: 0 }));
    let new_primary = s.entry(0).primary();
    let other = s.entry(0).replicas[1];
    net.slow_disks.insert(new_primary);
    net.publish(&s, &[1, 2]);
    // Had it sealed the other member first, a crash now would restart it below the epoch the
    // other member already refuses others at, and it would take the same epoch over twice.
    assert_eq!(net.nodes[&other].sealed(0).0 .0, 1, "no seal sent yet");
    assert_eq!(net.nodes[&new_primary].serving(0), None);
    net.release_disks();
    assert_eq!(net.nodes[&other].sealed(0).0, (2, new_primary));
    assert_eq!(net.nodes[&new_primary].serving(0), Some(2));
}

#[test]
fn a_late_repeat_of_a_seal_cuts_no_record_that_came_after_it() {
    let mut learner: Node = Replica::new(config(1, Mutant::None));
    let seal = ReplicaMsg::Seal {
        vnode: 0,
        epoch: 2,
        from_len: 0,
        history: Vec::new(),
        adopt: false,
    };
    learner.handle_message(0, 101, seal.clone(), 1);
    let records = (1..=3)
        .map(|item| super::replica::Record { epoch: 2, item })
        .collect();
    let replicate = ReplicaMsg::Replicate {
        vnode: 0,
        epoch: 2,
        prev_len: 0,
        prev_epoch: 0,
        records,
    };
    learner.handle_message(0, 101, replicate, 2);
    // The primary resent its seal before the first answer reached it; the copy comes late.
    learner.handle_message(0, 101, seal, 3);
    assert_eq!(learner.log(0).len(), 3);
}

/// R=2, vnode 0 down to its primary (member 0) with member 2 catching up as a learner; member
/// 0 proposes the add, the add commits and then member 0 is failed over to member 2, all
/// before member 0 hears of any of it. A read on member 0 must not be answered.
#[test]
fn a_primary_that_proposed_an_add_confirms_reads_with_the_learner() {
    let mut net = Net::new(Mutant::None);
    let mut s = sets(2);
    net.publish(&s, &[0, 1, 2]);
    let remove = s.entry(0).replicas[1];
    assert!(s.apply(&SetCommand::Shrink {
        vnode: 0,
        epoch: 1,
        remove
    }));
    let learner = if remove == 1 { 2 } else { 1 };
    assert!(s.apply(&SetCommand::BeginLearner {
        vnode: 0,
        member: learner
    }));
    net.publish(&s, &[0, 1, 2]);
    net.nodes
        .get_mut(&0)
        .expect("node")
        .append(0, 7, 1, 1)
        .expect("primary");
    net.pump();
    assert!(net.committed(1));
    let add = net
        .answers
        .iter()
        .find_map(|(_, a)| match a {
            ReplicaOutput::Propose(cmd @ SetCommand::AddReplica { .. }) => Some(cmd.clone()),
            _ => None,
        })
        .expect("the caught-up learner is proposed");
    assert!(s.apply(&add));
    assert!(s.apply(&SetCommand::MemberDown { member: 0 }));
    assert_eq!(s.entry(0).replicas, vec![learner]);
    net.publish(&s, &[learner]);
    net.nodes
        .get_mut(&learner)
        .expect("node")
        .append(0, 8, 2, 2)
        .expect("new primary");
    net.pump();
    assert!(net.committed(2), "the new primary took a write");
    net.answers.clear();
    net.nodes
        .get_mut(&0)
        .expect("node")
        .read(0, 3, 3)
        .expect("thinks it leads");
    net.pump();
    match net.answers.pop() {
        Some((_, ReplicaOutput::Refused { tag: 3 })) => {}
        other => panic!("a deposed primary answered {other:?}"),
    }
}
