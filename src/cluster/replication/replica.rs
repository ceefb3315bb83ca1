//! One node's side of replication: for every vnode it holds a copy of, a log of records
//! numbered by `vseq` (1, 2, …), each tagged with the epoch of the primary that wrote it, and
//! the role the node plays for that vnode at the newest replica sets it has seen.
//!
//! Pure (quinn-proto style): inputs are `handle_*` calls, `append`, `read`, with the time as
//! an argument; outputs are [`ReplicaOutput`] values taken with `poll`; durability is the
//! shell's: [`ReplicaOutput::Sync`] asks it to make a vnode's log and seal durable, and
//! `handle_synced` says it did. Nothing here reads a clock, sleeps or does I/O.
//!
//! The rules, per vnode v:
//! - **Seal.** A node accepts records of epoch e only from the member that sealed it at e
//!   (`sealed`, `sealed_by`), and refuses anything from a lower epoch (`Stale`). Sealing
//!   persists before it is answered, so a refusal survives a crash.
//! - **Takeover.** The primary of e seals itself, then every other member of set(e); each
//!   answers with the part of its log beyond the primary's; the primary adopts the longest,
//!   and serves only once its own seal is durable and every member answered (or was shrunk
//!   out through the control plane). A restarted primary that finds its own seal at the
//!   current epoch does not resume: it asks for the next epoch (`Reclaim`).
//! - **Acknowledge.** A record is committed when it is durable on the primary and on every
//!   member it waits for: set(e), plus a member it proposed to shrink out until the shrink
//!   commits, plus a learner from the moment it proposed to add it (the maximal set).
//! - **Reads** wait until everything in the log when they arrived is committed, and for a
//!   `Confirm` round sent after they arrived to be answered by every member: a member that
//!   sealed a newer epoch answers `Stale`, so a deposed primary cannot answer a read.
//! - **Catch-up.** A learner (or any member) sealed by the primary keeps only the prefix that
//!   agrees with the primary's epoch history (same index and epoch ⇒ same record and same
//!   prefix, as in Raft), then takes records with a consistency check on the one before.

use super::set::{ReplicaSets, SetCommand};
use super::Mutant;
use crate::cluster::ring::Vnode;
use crate::cluster::MemberId;
use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<T> {
    pub epoch: u64,
    pub item: T,
}

#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    pub me: MemberId,
    /// This node's storage identity (created with its database).
    pub incarnation: u64,
    /// A member that owes an answer this long is proposed for removal from the set.
    pub ack_timeout_ms: u64,
    /// Unanswered messages are sent again after this long (the network may drop them).
    pub resend_ms: u64,
    /// Records per `Replicate`.
    pub max_batch: usize,
    /// Test hook for the simulator's mutants; `Mutant::None` in every real build.
    pub mutant: Mutant,
}

/// Node-to-node messages of the protocol (the shell carries them; FIFO is not assumed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaMsg<T> {
    /// From the primary of `epoch`: refuse every lower epoch from now on. `history` is the
    /// primary's epoch history (epoch, first vseq), so the receiver can find where its log
    /// stops agreeing; `adopt` (a takeover) asks for the records beyond `from_len`.
    Seal {
        vnode: Vnode,
        epoch: u64,
        from_len: u64,
        history: Vec<(u64, u64)>,
        adopt: bool,
    },
    /// `agreed`: the length of the prefix that agrees with the primary (a learner truncated
    /// its log to it); `tail`: its records beyond `from_len`, when asked to adopt.
    /// `from_len` echoes the `Seal` it answers (a takeover attempt); `len` is the
    /// member's log length before any truncation.
    Sealed {
        vnode: Vnode,
        epoch: u64,
        from_len: u64,
        len: u64,
        agreed: u64,
        tail: Vec<Record<T>>,
    },
    Replicate {
        vnode: Vnode,
        epoch: u64,
        prev_len: u64,
        prev_epoch: u64,
        records: Vec<Record<T>>,
    },
    /// Cumulative: the receiver's log agrees with the primary's up to `len`, durably.
    Replicated { vnode: Vnode, epoch: u64, len: u64 },
    /// The record before `prev_len` did not match: send from `len` or earlier.
    Mismatch { vnode: Vnode, epoch: u64, len: u64 },
    Confirm {
        vnode: Vnode,
        epoch: u64,
        round: u64,
    },
    Confirmed {
        vnode: Vnode,
        epoch: u64,
        round: u64,
    },
    /// The receiver is sealed at `epoch`, newer than the sender's.
    Stale { vnode: Vnode, epoch: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaOutput<T, Tag> {
    /// `incarnation`: the receiver's storage identity as the sender's sets name it; a node
    /// with another one (a new disk) drops the message (it is not the copy it was meant for).
    Send {
        to: MemberId,
        incarnation: u64,
        msg: ReplicaMsg<T>,
    },
    Propose(SetCommand),
    /// Make the vnode's log up to `len` (as it is now) and its seal durable, then call
    /// `handle_synced` with the same values.
    Sync {
        vnode: Vnode,
        generation: u64,
        len: u64,
        sealed: (u64, MemberId),
    },
    /// The write is committed at `vseq`.
    Committed {
        tag: Tag,
        vseq: u64,
    },
    /// This node lost the vnode before the write committed: it may or may not take effect.
    Unknown {
        tag: Tag,
    },
    /// The committed log as of the read's arrival.
    ReadDone {
        tag: Tag,
        items: Vec<T>,
    },
    /// Not served here (any more): nothing was applied; retry where the sets say.
    Refused {
        tag: Tag,
    },
}

/// Why `append` or `read` was refused: nothing was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotServing;

#[derive(Clone, Debug)]
struct Takeover<T, Tag> {
    epoch: u64,
    members: Vec<MemberId>,
    from_len: u64,
    /// Per member: the length of its agreeing prefix and its records beyond `from_len`.
    answers: BTreeMap<MemberId, (u64, u64, Vec<Record<T>>)>,
    started_ms: u64,
    last_sent_ms: u64,
    shrink_proposed_ms: Option<u64>,
    /// The seals went out: only once this node's own seal was durable, so that a crash in
    /// between can never lead to a second takeover of the same epoch that peers have seen.
    seals_sent: bool,
    /// Writes still waiting from this node's lead of the previous epoch (the same primary
    /// goes on after a shrink or an add): they commit in the new epoch.
    carried: Vec<(u64, Tag)>,
}

#[derive(Clone, Debug, Default)]
struct Peer {
    /// Durable and agreeing up to here (cumulative).
    matched: u64,
    /// Sent up to here.
    next: u64,
    confirmed: u64,
    last_sent_ms: u64,
    owing_since: Option<u64>,
    proposed_ms: Option<u64>,
}

#[derive(Clone, Debug)]
struct LearnerPeer {
    member: MemberId,
    incarnation: u64,
    since: u64,
    sealed: bool,
    peer: Peer,
    add_proposed: bool,
    /// When `AddReplica` was last proposed (proposals can be lost: sent again while the
    /// learner is still one).
    add_proposed_ms: u64,
}

#[derive(Clone, Debug)]
struct Lead<Tag> {
    epoch: u64,
    /// Every member the primary waits for (the maximal set, without itself).
    members: BTreeMap<MemberId, Peer>,
    learner: Option<LearnerPeer>,
    commit: u64,
    writes: Vec<(u64, Tag)>,
    reads: Vec<(u64, u64, Tag)>,
    round: u64,
}

#[derive(Clone, Debug)]
enum Role<T, Tag> {
    Backup,
    Sealing(Takeover<T, Tag>),
    Primary(Lead<Tag>),
}

#[derive(Clone, Debug)]
struct VnodeCopy<T, Tag> {
    log: Vec<Record<T>>,
    durable: u64,
    generation: u64,
    sealed: (u64, MemberId),
    sealed_durable: (u64, MemberId),
    role: Role<T, Tag>,
    /// Answers that leave once the log up to `.0` and the seal `.1` are durable.
    after_sync: Vec<(u64, u64, MemberId, ReplicaMsg<T>)>,
    reclaim_ms: Option<u64>,
}

/// The durable part of a vnode's copy: what survives a crash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurableCopy<T> {
    pub log: Vec<Record<T>>,
    pub sealed: (u64, MemberId),
}

pub struct Replica<T, Tag> {
    cfg: ReplicaConfig,
    sets: Option<ReplicaSets>,
    vnodes: BTreeMap<Vnode, VnodeCopy<T, Tag>>,
    out: Vec<ReplicaOutput<T, Tag>>,
    /// Protocol rules a peer's message broke (never expected; the simulator asserts zero).
    pub anomalies: Vec<String>,
}

const NOBODY: MemberId = MemberId::MAX;

/// Who must confirm the epoch for a read: every member waited for, and a learner from the
/// moment its `AddReplica` was proposed (it may be in a newer set this node has not seen, and
/// then even its primary).
fn confirmers<Tag>(lead: &Lead<Tag>) -> Vec<MemberId> {
    let learner = lead
        .learner
        .as_ref()
        .filter(|l| l.add_proposed)
        .map(|l| l.member);
    lead.members.keys().copied().chain(learner).collect()
}

/// A member owes records or a confirmation: true once it has owed them for `timeout` (and
/// again every `timeout` while it still does), the moment to propose its removal.
fn overdue(p: &mut Peer, len: u64, round: u64, now_ms: u64, timeout: u64) -> bool {
    let owes = p.matched < len || p.confirmed < round;
    if !owes {
        p.owing_since = None;
        return false;
    }
    let since = *p.owing_since.get_or_insert(now_ms);
    let due = p.proposed_ms.is_none_or(|t| now_ms >= t + timeout);
    if now_ms >= since + timeout && due {
        p.proposed_ms = Some(now_ms);
        return true;
    }
    false
}

fn epoch_at<T>(log: &[Record<T>], len: u64) -> u64 {
    if len == 0 {
        0
    } else {
        log[len as usize - 1].epoch
    }
}

/// (epoch, first vseq) for every epoch in the log, in order.
fn history<T>(log: &[Record<T>]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, r) in log.iter().enumerate() {
        if out.last().is_none_or(|(e, _)| *e != r.epoch) {
            out.push((r.epoch, i as u64 + 1));
        }
    }
    out
}

/// The epoch of record `vseq` in a log with this history.
fn epoch_in_history(history: &[(u64, u64)], vseq: u64) -> u64 {
    history
        .iter()
        .rev()
        .find(|(_, first)| *first <= vseq)
        .map_or(0, |(e, _)| *e)
}

impl<T: Clone + Eq + std::fmt::Debug, Tag: Clone + std::fmt::Debug> Replica<T, Tag> {
    pub fn new(cfg: ReplicaConfig) -> Self {
        Replica {
            cfg,
            sets: None,
            vnodes: BTreeMap::new(),
            out: Vec::new(),
            anomalies: Vec::new(),
        }
    }

    /// A node restarting from its disk: every vnode starts as a backup (a primary finds its
    /// role again from the sets, through `Reclaim`).
    pub fn restore(cfg: ReplicaConfig, disk: BTreeMap<Vnode, DurableCopy<T>>) -> Self {
        let mut r = Self::new(cfg);
        for (v, d) in disk {
            let copy = VnodeCopy {
                durable: d.log.len() as u64,
                log: d.log,
                generation: 0,
                sealed: d.sealed,
                sealed_durable: d.sealed,
                role: Role::Backup,
                after_sync: Vec::new(),
                reclaim_ms: None,
            };
            r.vnodes.insert(v, copy);
        }
        r
    }

    pub fn me(&self) -> MemberId {
        self.cfg.me
    }

    pub fn poll(&mut self) -> Vec<ReplicaOutput<T, Tag>> {
        std::mem::take(&mut self.out)
    }

    pub fn map_version(&self) -> u64 {
        self.sets.as_ref().map_or(0, |s| s.version)
    }

    /// The whole log of a vnode as this node has it (durable or not).
    pub fn log(&self, v: Vnode) -> &[Record<T>] {
        self.vnodes.get(&v).map_or(&[], |c| &c.log)
    }

    /// Whether this node serves writes and reads of `v` now, and at which epoch.
    pub fn serving(&self, v: Vnode) -> Option<u64> {
        match self.vnodes.get(&v).map(|c| &c.role) {
            Some(Role::Primary(l)) => Some(l.epoch),
            _ => None,
        }
    }

    /// The sealed epoch, in memory and on disk.
    pub fn sealed(&self, v: Vnode) -> ((u64, MemberId), (u64, MemberId)) {
        self.vnodes
            .get(&v)
            .map_or(((0, NOBODY), (0, NOBODY)), |c| (c.sealed, c.sealed_durable))
    }

    fn copy(&mut self, v: Vnode) -> &mut VnodeCopy<T, Tag> {
        self.vnodes.entry(v).or_insert_with(|| VnodeCopy {
            log: Vec::new(),
            durable: 0,
            generation: 0,
            sealed: (0, NOBODY),
            sealed_durable: (0, NOBODY),
            role: Role::Backup,
            after_sync: Vec::new(),
            reclaim_ms: None,
        })
    }

    fn request_sync(&mut self, v: Vnode) {
        let c = self.copy(v);
        let out = ReplicaOutput::Sync {
            vnode: v,
            generation: c.generation,
            len: c.log.len() as u64,
            sealed: c.sealed,
        };
        self.out.push(out);
    }

    fn send(&mut self, to: MemberId, msg: ReplicaMsg<T>) {
        let incarnation = self
            .sets
            .as_ref()
            .and_then(|s| s.members.get(&to))
            .map_or(0, |m| m.incarnation);
        self.out.push(ReplicaOutput::Send {
            to,
            incarnation,
            msg,
        });
    }

    // ---- the sets ------------------------------------------------------------------------

    /// A newer version of the replica sets (older ones are ignored).
    pub fn handle_sets(&mut self, sets: &ReplicaSets, now_ms: u64) {
        if sets.version <= self.map_version() {
            return;
        }
        self.sets = Some(sets.clone());
        let me = self.cfg.me;
        let current = sets
            .members
            .get(&me)
            .is_some_and(|m| m.incarnation == self.cfg.incarnation);
        let mutant = self.cfg.mutant;
        for (v, e) in sets.vnodes.iter().enumerate() {
            let v = v as Vnode;
            let leads = current && !e.lost && e.primary() == me;
            if !leads {
                if self.vnodes.contains_key(&v) {
                    self.depose(v);
                }
                continue;
            }
            let c = self.copy(v);
            let role_epoch = match &c.role {
                Role::Primary(l) => Some(l.epoch),
                Role::Sealing(t) => Some(t.epoch),
                Role::Backup => None,
            };
            if role_epoch == Some(e.epoch) {
                self.update_lead(v, now_ms);
            } else if c.sealed.0 < e.epoch {
                self.begin_takeover(v, e.epoch, now_ms);
            } else if c.sealed == (e.epoch, me) && mutant == Mutant::ResumeSameEpoch {
                self.become_primary(v, e.epoch, BTreeMap::new(), Vec::new(), now_ms);
            }
            // Sealed by itself at this epoch but not leading it: a restart (see `reclaim`).
            // Sealed newer than these sets: they are old news; wait for newer ones.
        }
        self.reclaim(now_ms);
    }

    /// A restarted primary that finds its own seal at the current epoch does not resume:
    /// what it acknowledged may be longer than its disk, and peers may still hold its old
    /// messages. It asks for the next epoch, for all such vnodes in one command (again
    /// after the ack timeout, as proposals can be lost).
    fn reclaim(&mut self, now_ms: u64) {
        let (me, timeout) = (self.cfg.me, self.cfg.ack_timeout_ms);
        let Some(sets) = self.sets.as_ref() else {
            return;
        };
        if sets
            .members
            .get(&me)
            .is_none_or(|m| m.incarnation != self.cfg.incarnation)
        {
            return;
        }
        let mut vnodes = Vec::new();
        for (v, c) in self.vnodes.iter_mut() {
            let e = sets.entry(*v);
            let idle = matches!(c.role, Role::Backup);
            if !idle || e.lost || e.primary() != me || c.sealed != (e.epoch, me) {
                continue;
            }
            if c.reclaim_ms.is_none_or(|t| now_ms >= t + timeout) {
                c.reclaim_ms = Some(now_ms);
                vnodes.push((*v, e.epoch));
            }
        }
        if !vnodes.is_empty() {
            let cmd = SetCommand::Reclaim { member: me, vnodes };
            self.out.push(ReplicaOutput::Propose(cmd));
        }
    }

    /// This node no longer leads `v`: pending writes have an unknown outcome, pending reads
    /// are refused (a read changes nothing).
    fn depose(&mut self, v: Vnode) {
        let c = self.copy(v);
        let role = std::mem::replace(&mut c.role, Role::Backup);
        if let Role::Primary(lead) = role {
            for (_, tag) in lead.writes {
                self.out.push(ReplicaOutput::Unknown { tag });
            }
            for (_, _, tag) in lead.reads {
                self.out.push(ReplicaOutput::Refused { tag });
            }
        }
    }

    fn begin_takeover(&mut self, v: Vnode, epoch: u64, now_ms: u64) {
        // The same primary going on (a shrink, an add) keeps its waiting writes: their
        // records stay in its log and commit in the new epoch. Reads are refused (retried).
        let carried = match &mut self.copy(v).role {
            Role::Primary(lead) => std::mem::take(&mut lead.writes),
            _ => Vec::new(),
        };
        self.depose(v);
        let me = self.cfg.me;
        let members: Vec<MemberId> = self.sets.as_ref().map_or(Vec::new(), |s| {
            s.entry(v)
                .replicas
                .iter()
                .copied()
                .filter(|m| *m != me)
                .collect()
        });
        if self.cfg.mutant == Mutant::TakeoverWithoutSeal {
            self.become_primary(v, epoch, BTreeMap::new(), carried, now_ms);
            return;
        }
        let c = self.copy(v);
        c.sealed = (epoch, me);
        let from_len = c.log.len() as u64;
        c.role = Role::Sealing(Takeover {
            epoch,
            members,
            from_len,
            answers: BTreeMap::new(),
            started_ms: now_ms,
            last_sent_ms: now_ms,
            shrink_proposed_ms: None,
            seals_sent: false,
            carried,
        });
        self.request_sync(v);
        self.send_seals_once_durable(v, now_ms);
    }

    /// Sends the takeover's seals once this node's own seal is on disk.
    fn send_seals_once_durable(&mut self, v: Vnode, now_ms: u64) {
        let c = self.copy(v);
        let durable = c.sealed_durable == c.sealed;
        let Role::Sealing(t) = &mut c.role else {
            return;
        };
        if t.seals_sent || !durable {
            return;
        }
        t.seals_sent = true;
        t.last_sent_ms = now_ms;
        let members = t.members.clone();
        for m in members {
            self.send_seal(v, m, true);
        }
        self.try_finish_takeover(v, now_ms);
    }

    fn send_seal(&mut self, v: Vnode, to: MemberId, adopt: bool) {
        let c = self.copy(v);
        let from_len = match &c.role {
            Role::Sealing(t) => t.from_len,
            _ => c.log.len() as u64,
        };
        let msg = ReplicaMsg::Seal {
            vnode: v,
            epoch: c.sealed.0,
            from_len,
            history: history(&c.log),
            adopt,
        };
        self.send(to, msg);
    }

    /// Every member answered and the own seal is durable: adopt the longest log, serve.
    fn try_finish_takeover(&mut self, v: Vnode, now_ms: u64) {
        let c = self.copy(v);
        let Role::Sealing(t) = &c.role else { return };
        let all = t.members.iter().all(|m| t.answers.contains_key(m));
        if !all || !t.seals_sent || c.sealed_durable != c.sealed {
            return;
        }
        let t = t.clone();
        // The longest tail wins; every other must be its prefix (in-set logs are prefixes of
        // one another).
        let longest = t
            .answers
            .values()
            .map(|(_, _, tail)| tail)
            .max_by_key(|tail| tail.len())
            .cloned()
            .unwrap_or_default();
        let mut matched = BTreeMap::new();
        for (m, (len, agreed, tail)) in &t.answers {
            let common = tail
                .iter()
                .zip(&longest)
                .take_while(|(a, b)| a == b)
                .count();
            // In-set logs are prefixes of one another: a member agrees up to the shorter.
            if common < tail.len() || *agreed != t.from_len.min(*len) {
                self.anomalies.push(format!(
                    "v{v}: m{m}'s log is no prefix of the longest in the set"
                ));
            }
            let agreed = if *agreed == t.from_len {
                agreed + common as u64
            } else {
                *agreed
            };
            matched.insert(*m, agreed);
        }
        let c = self.copy(v);
        if c.log.len() as u64 == t.from_len {
            c.log.extend(longest);
        }
        self.become_primary(v, t.epoch, matched, t.carried, now_ms);
        self.request_sync(v);
    }

    fn become_primary(
        &mut self,
        v: Vnode,
        epoch: u64,
        matched: BTreeMap<MemberId, u64>,
        carried: Vec<(u64, Tag)>,
        now_ms: u64,
    ) {
        let me = self.cfg.me;
        let members: Vec<MemberId> = self.sets.as_ref().map_or(Vec::new(), |s| {
            s.entry(v)
                .replicas
                .iter()
                .copied()
                .filter(|m| *m != me)
                .collect()
        });
        let c = self.copy(v);
        let peers = members
            .into_iter()
            .map(|m| {
                let at = matched.get(&m).copied().unwrap_or(0);
                let peer = Peer {
                    matched: at,
                    next: at,
                    confirmed: 0,
                    last_sent_ms: now_ms,
                    owing_since: None,
                    proposed_ms: None,
                };
                (m, peer)
            })
            .collect();
        c.role = Role::Primary(Lead {
            epoch,
            members: peers,
            learner: None,
            commit: 0,
            writes: carried,
            reads: Vec::new(),
            round: 0,
        });
        self.update_lead(v, now_ms);
        self.ship(v, now_ms, true);
    }

    /// The sets changed but not the epoch: a learner may have started or stopped.
    fn update_lead(&mut self, v: Vnode, now_ms: u64) {
        let learner = self.sets.as_ref().and_then(|s| s.learners.get(&v).copied());
        let c = self.copy(v);
        let Role::Primary(lead) = &mut c.role else {
            return;
        };
        let same = match (&lead.learner, learner) {
            (Some(l), Some(n)) => l.member == n.member && l.since == n.since,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        lead.learner = learner.map(|l| LearnerPeer {
            member: l.member,
            incarnation: l.incarnation,
            since: l.since,
            sealed: false,
            peer: Peer {
                last_sent_ms: now_ms,
                ..Peer::default()
            },
            add_proposed: false,
            add_proposed_ms: 0,
        });
        if let Some(l) = learner {
            self.send_seal(v, l.member, false);
        }
        self.advance(v, now_ms);
    }

    // ---- the client side -----------------------------------------------------------------

    /// Appends a record as the primary of `v`; `tag` is answered once it commits.
    pub fn append(&mut self, v: Vnode, item: T, tag: Tag, now_ms: u64) -> Result<u64, NotServing> {
        let c = self.copy(v);
        let Role::Primary(lead) = &mut c.role else {
            return Err(NotServing);
        };
        c.log.push(Record {
            epoch: lead.epoch,
            item,
        });
        let vseq = c.log.len() as u64;
        lead.writes.push((vseq, tag));
        self.request_sync(v);
        self.ship(v, now_ms, false);
        self.advance(v, now_ms);
        Ok(vseq)
    }

    /// Answers `tag` once record `vseq` (already in the log: a repeat) is committed.
    pub fn await_commit(
        &mut self,
        v: Vnode,
        vseq: u64,
        tag: Tag,
        now_ms: u64,
    ) -> Result<(), NotServing> {
        let c = self.copy(v);
        let Role::Primary(lead) = &mut c.role else {
            return Err(NotServing);
        };
        lead.writes.push((vseq, tag));
        self.advance(v, now_ms);
        Ok(())
    }

    /// A linearizable read of the log: answered with the committed records present when it
    /// arrived, once the epoch is confirmed by every member after its arrival.
    pub fn read(&mut self, v: Vnode, tag: Tag, now_ms: u64) -> Result<(), NotServing> {
        let mutant = self.cfg.mutant;
        let c = self.copy(v);
        let len = c.log.len() as u64;
        let Role::Primary(lead) = &mut c.role else {
            return Err(NotServing);
        };
        let to = confirmers(lead);
        let round = if mutant == Mutant::ReadWithoutConfirm || to.is_empty() {
            0
        } else {
            lead.round += 1;
            lead.round
        };
        lead.reads.push((len, round, tag));
        if round > 0 {
            let epoch = lead.epoch;
            for m in to {
                self.send(
                    m,
                    ReplicaMsg::Confirm {
                        vnode: v,
                        epoch,
                        round,
                    },
                );
            }
        }
        self.advance(v, now_ms);
        Ok(())
    }

    // ---- messages ------------------------------------------------------------------------

    /// A message from `from`, meant for the copy with storage identity `incarnation`.
    pub fn handle_message(
        &mut self,
        from: MemberId,
        incarnation: u64,
        msg: ReplicaMsg<T>,
        now_ms: u64,
    ) {
        if incarnation != self.cfg.incarnation {
            return;
        }
        match msg {
            ReplicaMsg::Seal {
                vnode,
                epoch,
                from_len,
                history,
                adopt,
            } => self.on_seal(from, vnode, epoch, from_len, &history, adopt),
            ReplicaMsg::Sealed {
                vnode,
                epoch,
                from_len,
                len,
                agreed,
                tail,
            } => self.on_sealed(from, vnode, epoch, (from_len, len, agreed), tail, now_ms),
            ReplicaMsg::Replicate {
                vnode,
                epoch,
                prev_len,
                prev_epoch,
                records,
            } => self.on_replicate(from, vnode, epoch, prev_len, prev_epoch, records),
            ReplicaMsg::Replicated { vnode, epoch, len } => {
                self.on_progress(from, vnode, epoch, Some(len), None, now_ms)
            }
            ReplicaMsg::Mismatch { vnode, epoch, len } => {
                self.on_mismatch(from, vnode, epoch, len, now_ms)
            }
            ReplicaMsg::Confirm {
                vnode,
                epoch,
                round,
            } => {
                let c = self.copy(vnode);
                if c.sealed == (epoch, from) {
                    self.send(
                        from,
                        ReplicaMsg::Confirmed {
                            vnode,
                            epoch,
                            round,
                        },
                    );
                } else if c.sealed.0 > epoch {
                    let newer = c.sealed.0;
                    self.send(
                        from,
                        ReplicaMsg::Stale {
                            vnode,
                            epoch: newer,
                        },
                    );
                }
            }
            ReplicaMsg::Confirmed {
                vnode,
                epoch,
                round,
            } => self.on_progress(from, vnode, epoch, None, Some(round), now_ms),
            ReplicaMsg::Stale { vnode, epoch } => {
                let c = self.copy(vnode);
                let mine = match &c.role {
                    Role::Primary(l) => l.epoch,
                    Role::Sealing(t) => t.epoch,
                    Role::Backup => return,
                };
                if epoch > mine {
                    self.depose(vnode);
                }
            }
        }
    }

    /// A message of `epoch` from `from` that this copy's seal supersedes (a lower epoch, or the
    /// same epoch from another sealer) is answered `Stale`; true if it was.
    fn refuse_if_superseded(&mut self, v: Vnode, from: MemberId, epoch: u64) -> bool {
        let sealed = self.copy(v).sealed;
        if epoch < sealed.0 || (epoch == sealed.0 && sealed.1 != from) {
            let stale = ReplicaMsg::Stale {
                vnode: v,
                epoch: sealed.0,
            };
            self.send(from, stale);
            return true;
        }
        false
    }

    fn on_seal(
        &mut self,
        from: MemberId,
        v: Vnode,
        epoch: u64,
        from_len: u64,
        primary_history: &[(u64, u64)],
        adopt: bool,
    ) {
        if self.refuse_if_superseded(v, from, epoch) {
            return;
        }
        if self.copy(v).sealed.0 < epoch {
            self.depose(v);
        }
        let c = self.copy(v);
        // A repeat of a seal already taken (resent, duplicated, late): since then this copy
        // took records from that primary only, so nothing is cut; a late repeat must not cut
        // records that arrived after the first one.
        let repeat = c.sealed == (epoch, from);
        c.sealed = (epoch, from);
        let len_before = c.log.len() as u64;
        // The longest prefix that agrees with the primary: same index and epoch.
        let mut agreed = (c.log.len() as u64).min(from_len);
        while agreed > 0 && epoch_at(&c.log, agreed) != epoch_in_history(primary_history, agreed) {
            agreed -= 1;
        }
        let tail = if adopt && agreed == from_len {
            c.log[from_len as usize..].to_vec()
        } else {
            // Not asked to adopt (a learner), or diverged: what is past the agreeing prefix
            // was never acknowledged (the primary has every acknowledged record).
            if (c.log.len() as u64) > agreed && !repeat {
                c.log.truncate(agreed as usize);
                c.generation += 1;
                c.durable = c.durable.min(agreed);
            }
            Vec::new()
        };
        let need_len = c.log.len() as u64;
        let reply = ReplicaMsg::Sealed {
            vnode: v,
            epoch,
            from_len,
            len: len_before,
            agreed,
            tail,
        };
        c.after_sync.push((need_len, epoch, from, reply));
        self.request_sync(v);
    }

    fn on_sealed(
        &mut self,
        from: MemberId,
        v: Vnode,
        epoch: u64,
        (from_len, len, agreed): (u64, u64, u64),
        tail: Vec<Record<T>>,
        now_ms: u64,
    ) {
        let c = self.copy(v);
        match &mut c.role {
            Role::Sealing(t)
                if t.epoch == epoch && t.members.contains(&from) && t.from_len == from_len =>
            {
                t.answers.insert(from, (len, agreed, tail));
                self.try_finish_takeover(v, now_ms);
            }
            Role::Primary(lead) if lead.epoch == epoch => {
                if let Some(l) = lead
                    .learner
                    .as_mut()
                    .filter(|l| l.member == from && !l.sealed)
                {
                    l.sealed = true;
                    l.peer.matched = agreed;
                    l.peer.next = agreed;
                    self.ship(v, now_ms, true);
                }
            }
            _ => {}
        }
    }

    fn on_replicate(
        &mut self,
        from: MemberId,
        v: Vnode,
        epoch: u64,
        prev_len: u64,
        prev_epoch: u64,
        records: Vec<Record<T>>,
    ) {
        let mutant = self.cfg.mutant;
        let c = self.copy(v);
        let accepts = c.sealed == (epoch, from)
            || (mutant == Mutant::AcceptLowerEpoch && epoch < c.sealed.0)
            || (mutant == Mutant::TakeoverWithoutSeal && epoch > c.sealed.0);
        if !accepts {
            self.refuse_if_superseded(v, from, epoch);
            // A newer epoch that has not sealed this node yet: its seal will come first.
            return;
        }
        if mutant == Mutant::TakeoverWithoutSeal && epoch > c.sealed.0 {
            c.sealed = (epoch, from);
        }
        if prev_len > c.log.len() as u64 || epoch_at(&c.log, prev_len) != prev_epoch {
            let len = (c.log.len() as u64).min(prev_len.saturating_sub(1));
            self.send(
                from,
                ReplicaMsg::Mismatch {
                    vnode: v,
                    epoch,
                    len,
                },
            );
            return;
        }
        let mut anomalies = Vec::new();
        for (i, r) in records.into_iter().enumerate() {
            let at = prev_len as usize + i;
            if at < c.log.len() {
                if c.log[at].epoch == r.epoch {
                    if c.log[at] != r {
                        anomalies.push(format!(
                            "v{v}: two records at vseq {} of epoch {}",
                            at + 1,
                            r.epoch
                        ));
                    }
                    continue;
                }
                c.log.truncate(at);
                c.generation += 1;
                c.durable = c.durable.min(at as u64);
            }
            c.log.push(r);
        }
        let len = c.log.len() as u64;
        let reply = ReplicaMsg::Replicated {
            vnode: v,
            epoch,
            len,
        };
        c.after_sync.push((len, epoch, from, reply));
        self.anomalies.extend(anomalies);
        self.request_sync(v);
        self.flush_after_sync(v);
    }

    fn on_progress(
        &mut self,
        from: MemberId,
        v: Vnode,
        epoch: u64,
        len: Option<u64>,
        round: Option<u64>,
        now_ms: u64,
    ) {
        let c = self.copy(v);
        let Role::Primary(lead) = &mut c.role else {
            return;
        };
        if lead.epoch != epoch {
            return;
        }
        let peer = match lead.members.get_mut(&from) {
            Some(p) => p,
            None => match lead
                .learner
                .as_mut()
                .filter(|l| l.member == from && l.sealed)
            {
                Some(l) => &mut l.peer,
                None => return,
            },
        };
        if let Some(len) = len {
            if len > peer.matched {
                // Progress on records; confirmations alone do not clear a member that owes
                // records (it could confirm for ever while never catching up).
                peer.owing_since = None;
            }
            peer.matched = peer.matched.max(len);
            peer.next = peer.next.max(len);
        }
        if let Some(round) = round {
            peer.confirmed = peer.confirmed.max(round);
        }
        self.advance(v, now_ms);
        self.ship(v, now_ms, false);
    }

    fn on_mismatch(&mut self, from: MemberId, v: Vnode, epoch: u64, len: u64, now_ms: u64) {
        let c = self.copy(v);
        let Role::Primary(lead) = &mut c.role else {
            return;
        };
        if lead.epoch != epoch {
            return;
        }
        let peer = match lead.members.get_mut(&from) {
            Some(p) => p,
            None => match lead.learner.as_mut().filter(|l| l.member == from) {
                Some(l) => &mut l.peer,
                None => return,
            },
        };
        // Messages may pass each other: a mismatch older than an acknowledgement changes
        // nothing below what is acknowledged.
        peer.next = len.min(peer.next.saturating_sub(1)).max(peer.matched);
        self.ship(v, now_ms, true);
    }

    /// Sends each waiting member what it lacks (everything unsent, or on `resend` everything
    /// unacknowledged, as the network may have dropped it).
    fn ship(&mut self, v: Vnode, now_ms: u64, resend: bool) {
        let max_batch = self.cfg.max_batch as u64;
        let resend_ms = self.cfg.resend_ms;
        let c = self.copy(v);
        let Role::Primary(lead) = &mut c.role else {
            return;
        };
        let epoch = lead.epoch;
        let len = c.log.len() as u64;
        let mut sends = Vec::new();
        let learner = lead
            .learner
            .as_mut()
            .filter(|l| l.sealed)
            .map(|l| (l.member, &mut l.peer));
        let peers = lead.members.iter_mut().map(|(m, p)| (*m, p)).chain(learner);
        for (m, peer) in peers {
            let stalled = now_ms >= peer.last_sent_ms + resend_ms && peer.matched < len;
            if resend || stalled {
                peer.next = peer.matched.min(peer.next);
            }
            if peer.next >= len && !(stalled && peer.matched < len) {
                continue;
            }
            let from = peer.next.min(len);
            let to = (from + max_batch).min(len);
            let records = c.log[from as usize..to as usize].to_vec();
            peer.next = to;
            peer.last_sent_ms = now_ms;
            sends.push((
                m,
                ReplicaMsg::Replicate {
                    vnode: v,
                    epoch,
                    prev_len: from,
                    prev_epoch: epoch_at(&c.log, from),
                    records,
                },
            ));
        }
        for (m, msg) in sends {
            self.send(m, msg);
        }
    }

    /// Moves the commit point and answers what it covers.
    fn advance(&mut self, v: Vnode, now_ms: u64) {
        let mutant = self.cfg.mutant;
        let c = self.copy(v);
        let durable = c.durable;
        let len = c.log.len() as u64;
        let Role::Primary(lead) = &mut c.role else {
            return;
        };
        let mut commit = durable;
        let mut confirmed = u64::MAX;
        if mutant != Mutant::AckAfterLocalSync {
            for p in lead.members.values() {
                let dropping = p.proposed_ms.is_some() && mutant == Mutant::DropBeforeShrinkCommits;
                if !dropping {
                    commit = commit.min(p.matched);
                    confirmed = confirmed.min(p.confirmed);
                }
            }
            if let Some(l) = &lead.learner {
                if l.add_proposed && mutant != Mutant::AddWithoutMaximalSet {
                    commit = commit.min(l.peer.matched);
                    confirmed = confirmed.min(l.peer.confirmed);
                }
            }
        }
        lead.commit = lead.commit.max(commit.min(len));
        let commit = lead.commit;
        let (done, waiting): (Vec<_>, Vec<_>) =
            lead.writes.drain(..).partition(|(vseq, _)| *vseq <= commit);
        lead.writes = waiting;
        let (ready, waiting): (Vec<_>, Vec<_>) = lead
            .reads
            .drain(..)
            .partition(|(at, round, _)| *at <= commit && *round <= confirmed);
        lead.reads = waiting;
        // The learner has everything acknowledged so far: propose it, wait for it from now on.
        let mut propose = None;
        if let Some(l) = lead.learner.as_mut() {
            if l.sealed && !l.add_proposed && l.peer.matched >= commit {
                l.add_proposed = true;
                l.add_proposed_ms = now_ms;
                propose = Some(SetCommand::AddReplica {
                    vnode: v,
                    epoch: lead.epoch,
                    member: l.member,
                    incarnation: l.incarnation,
                    since: l.since,
                });
            }
        }
        let items: Vec<T> = c.log.iter().map(|r| r.item.clone()).collect();
        for (vseq, tag) in done {
            self.out.push(ReplicaOutput::Committed { tag, vseq });
        }
        for (at, _, tag) in ready {
            let items = items[..at as usize].to_vec();
            self.out.push(ReplicaOutput::ReadDone { tag, items });
        }
        if let Some(cmd) = propose {
            self.out.push(ReplicaOutput::Propose(cmd));
        }
    }

    /// The shell made the log up to `len` (of `generation`) and the seal durable.
    pub fn handle_synced(
        &mut self,
        v: Vnode,
        generation: u64,
        len: u64,
        sealed: (u64, MemberId),
        now_ms: u64,
    ) {
        let c = self.copy(v);
        if generation == c.generation {
            c.durable = c.durable.max(len.min(c.log.len() as u64));
        }
        if sealed.0 >= c.sealed_durable.0 {
            c.sealed_durable = sealed;
        }
        self.send_seals_once_durable(v, now_ms);
        self.flush_after_sync(v);
        self.advance(v, now_ms);
        self.try_finish_takeover(v, now_ms);
    }

    fn flush_after_sync(&mut self, v: Vnode) {
        let c = self.copy(v);
        let (durable, sealed) = (c.durable, c.sealed_durable);
        let (ready, waiting): (Vec<_>, Vec<_>) = c
            .after_sync
            .drain(..)
            .partition(|(len, epoch, _, _)| *len <= durable && *epoch <= sealed.0);
        c.after_sync = waiting;
        for (_, _, to, msg) in ready {
            self.send(to, msg);
        }
    }

    // ---- time ----------------------------------------------------------------------------

    /// Resends what may have been lost and proposes to shrink out members that owe an answer
    /// for longer than the ack timeout.
    pub fn handle_tick(&mut self, now_ms: u64) {
        let vnodes: Vec<Vnode> = self.vnodes.keys().copied().collect();
        for v in vnodes {
            self.tick_vnode(v, now_ms);
        }
        self.reclaim(now_ms);
    }

    fn tick_vnode(&mut self, v: Vnode, now_ms: u64) {
        let (timeout, resend_ms) = (self.cfg.ack_timeout_ms, self.cfg.resend_ms);
        let c = self.copy(v);
        let len = c.log.len() as u64;
        let mut proposals = Vec::new();
        let mut seals = Vec::new();
        let mut confirms = Vec::new();
        match &mut c.role {
            Role::Backup => {}
            Role::Sealing(t) => {
                let silent: Vec<MemberId> = t
                    .members
                    .iter()
                    .copied()
                    .filter(|m| !t.answers.contains_key(m))
                    .collect();
                if now_ms >= t.last_sent_ms + resend_ms {
                    t.last_sent_ms = now_ms;
                    seals.extend(silent.iter().map(|m| (*m, true)));
                }
                let due = t.shrink_proposed_ms.is_none_or(|at| now_ms >= at + timeout);
                if now_ms >= t.started_ms + timeout && due && !silent.is_empty() {
                    t.shrink_proposed_ms = Some(now_ms);
                    for m in silent {
                        proposals.push(SetCommand::Shrink {
                            vnode: v,
                            epoch: t.epoch,
                            remove: m,
                        });
                    }
                }
            }
            Role::Primary(lead) => {
                let (epoch, round) = (lead.epoch, lead.round);
                for (m, p) in lead.members.iter_mut() {
                    if p.confirmed < round && now_ms >= p.last_sent_ms + resend_ms {
                        confirms.push((
                            *m,
                            ReplicaMsg::Confirm {
                                vnode: v,
                                epoch,
                                round,
                            },
                        ));
                    }
                    if overdue(p, len, round, now_ms, timeout) {
                        proposals.push(SetCommand::Shrink {
                            vnode: v,
                            epoch,
                            remove: *m,
                        });
                    }
                }
                if let Some(l) = lead.learner.as_mut() {
                    if l.add_proposed && now_ms >= l.add_proposed_ms + timeout {
                        l.add_proposed_ms = now_ms;
                        proposals.push(SetCommand::AddReplica {
                            vnode: v,
                            epoch,
                            member: l.member,
                            incarnation: l.incarnation,
                            since: l.since,
                        });
                    }
                    if !l.sealed && now_ms >= l.peer.last_sent_ms + resend_ms {
                        l.peer.last_sent_ms = now_ms;
                        seals.push((l.member, false));
                    }
                    // A learner that makes no progress for long gives its slot back.
                    if overdue(&mut l.peer, len, 0, now_ms, 4 * timeout) {
                        proposals.push(SetCommand::AbortLearner {
                            vnode: v,
                            member: l.member,
                        });
                    }
                }
            }
        }
        for (m, adopt) in seals {
            self.send_seal(v, m, adopt);
        }
        for (m, msg) in confirms {
            self.send(m, msg);
        }
        for cmd in proposals {
            self.out.push(ReplicaOutput::Propose(cmd));
        }
        self.ship(v, now_ms, false);
        self.advance(v, now_ms);
    }

    /// What a crash leaves of this node: the durable part of every copy.
    pub fn durable_image(&self) -> BTreeMap<Vnode, DurableCopy<T>> {
        self.vnodes
            .iter()
            .map(|(v, c)| {
                let copy = DurableCopy {
                    log: c.log[..c.durable as usize].to_vec(),
                    sealed: c.sealed_durable,
                };
                (*v, copy)
            })
            .collect()
    }
}
