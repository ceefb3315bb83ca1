//! The ring planner: which member should own each vnode. Pure and deterministic (same input,
//! same map), balanced (the receivers' counts differ by at most one: each gets floor or ceil
//! of movable/N) and minimal (only the vnodes that must change owner for that balance move:
//! a receiver keeps as many of its vnodes as its quota allows, and the ceil quotas go to the
//! receivers that already hold the most).
//!
//! "Within ±10 % of V/N" follows from floor/ceil whenever V/N >= 10; below that no integer
//! assignment can do it (V = 1024, N = 1000: some node must hold 2 = V/N + 95 %), and
//! floor/ceil is the best there is.

use super::ring::Vnode;
use super::MemberId;
use std::collections::{BTreeMap, BTreeSet};

/// The owner of a vnode nobody holds yet (before bootstrap).
pub const NO_OWNER: MemberId = MemberId::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlannedMove {
    pub vnode: Vnode,
    pub from: MemberId,
    pub to: MemberId,
}

/// The balanced owner of every vnode. `owners[v]` is the current owner, `receivers` the members
/// that may own vnodes (any order; duplicates ignored), `pinned[v]` marks vnodes that must keep
/// their owner (it is down: its data is on its disk). Pinned vnodes do not count towards any
/// receiver's quota.
pub fn target(owners: &[MemberId], receivers: &[MemberId], pinned: &[bool]) -> Vec<MemberId> {
    assert_eq!(owners.len(), pinned.len());
    let receivers: BTreeSet<MemberId> = receivers.iter().copied().collect();
    let mut out = owners.to_vec();
    if receivers.is_empty() {
        return out;
    }
    let movable = pinned.iter().filter(|p| !**p).count();
    let n = receivers.len();
    let (base, extra) = (movable / n, movable % n);

    let mut held: BTreeMap<MemberId, Vec<Vnode>> = receivers.iter().map(|r| (*r, vec![])).collect();
    let mut pool: Vec<Vnode> = Vec::new();
    for (v, owner) in owners.iter().enumerate() {
        if pinned[v] {
            continue;
        }
        match held.get_mut(owner) {
            Some(list) => list.push(v as Vnode),
            None => pool.push(v as Vnode),
        }
    }
    // The `extra` ceil quotas go to those holding the most (ties: lower id), so fewest move.
    let mut by_load: Vec<(MemberId, usize)> = held.iter().map(|(r, l)| (*r, l.len())).collect();
    by_load.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let quota: BTreeMap<MemberId, usize> = by_load
        .iter()
        .enumerate()
        .map(|(i, (r, _))| (*r, base + usize::from(i < extra)))
        .collect();
    for (r, list) in held.iter_mut() {
        let q = quota[r];
        if list.len() > q {
            // Give away the highest-numbered surplus; keep the rest where it is.
            pool.extend(list.drain(q..));
        }
    }
    pool.sort_unstable();
    let mut pool = pool.into_iter();
    for (r, list) in &held {
        for _ in list.len()..quota[r] {
            let v = pool.next().expect("quotas add up to the movable vnodes");
            out[v as usize] = *r;
        }
    }
    debug_assert!(pool.next().is_none());
    out
}

/// Up to `budget` moves from `owners` towards `target`, skipping vnodes already moving.
/// Interleaved over the receivers, so a joining node starts getting data from every source at
/// once and several joiners progress together.
pub fn next_moves(
    owners: &[MemberId],
    target: &[MemberId],
    in_flight: &BTreeSet<Vnode>,
    budget: usize,
) -> Vec<PlannedMove> {
    let mut per_receiver: BTreeMap<MemberId, Vec<PlannedMove>> = BTreeMap::new();
    for (v, (from, to)) in owners.iter().zip(target).enumerate() {
        let vnode = v as Vnode;
        if from != to && !in_flight.contains(&vnode) {
            per_receiver.entry(*to).or_default().push(PlannedMove {
                vnode,
                from: *from,
                to: *to,
            });
        }
    }
    let mut queues: Vec<std::vec::IntoIter<PlannedMove>> =
        per_receiver.into_values().map(Vec::into_iter).collect();
    let mut out = Vec::new();
    while out.len() < budget {
        let before = out.len();
        for q in queues.iter_mut() {
            if out.len() == budget {
                break;
            }
            if let Some(m) = q.next() {
                out.push(m);
            }
        }
        if out.len() == before {
            break;
        }
    }
    out
}

#[cfg(test)]
#[path = "planner_tests.rs"]
mod tests;
