//! The per-vnode write gate behind a fence. Every local operation on a vnode holds a guard
//! from before it reaches the key's actor until its durable reply; a fence closes the gate and
//! then waits for the guards to drain. Once drained, everything this node ever acknowledged
//! for the vnode is on disk, and nothing new can start — which is what a handoff's final
//! export needs.
//!
//! `enter` increments, then checks the flag; `close` sets the flag, then waits for zero. With
//! sequentially consistent atomics one of the two always sees the other, so no operation
//! slips past a closing gate unseen.
//!
//! An open gate alone does not mean this node may write: a move that committed reopens the
//! gate of the vnode it took away (its fence is lifted once the map shows the vnode gone).
//! So ownership is read again *after* entering (`enter_if_local`): the map is updated in the
//! same critical section that reopens the gate, before it, so a look taken after the entry
//! sees the new owner; and while an operation is inside, no fence can finish draining, so no
//! move can commit under it.

use super::handoff::Access;
use super::ring::{Vnode, MAX_VNODES};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};

pub struct Gates {
    closed: Vec<AtomicBool>,
    inside: Vec<AtomicU32>,
}

pub struct Guard<'a> {
    count: &'a AtomicU32,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, SeqCst);
    }
}

impl Default for Gates {
    fn default() -> Self {
        Self {
            closed: (0..MAX_VNODES).map(|_| AtomicBool::new(false)).collect(),
            inside: (0..MAX_VNODES).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl Gates {
    pub fn enter(&self, vnode: Vnode) -> Option<Guard<'_>> {
        let count = &self.inside[vnode as usize];
        count.fetch_add(1, SeqCst);
        let guard = Guard { count };
        if self.closed[vnode as usize].load(SeqCst) {
            return None;
        }
        Some(guard)
    }

    /// Enters the gate if, looked at after the entry, `access` says this node may write the
    /// vnode; otherwise leaves it and returns what `access` said (`Fenced` for a closed gate).
    pub fn enter_if_local(
        &self,
        vnode: Vnode,
        access: impl FnOnce() -> Access,
    ) -> Result<Guard<'_>, Access> {
        let Some(guard) = self.enter(vnode) else {
            return Err(Access::Fenced);
        };
        match access() {
            Access::Local { .. } => Ok(guard),
            other => Err(other),
        }
    }

    pub fn close(&self, vnode: Vnode) {
        self.closed[vnode as usize].store(true, SeqCst);
    }

    pub fn open(&self, vnode: Vnode) {
        self.closed[vnode as usize].store(false, SeqCst);
    }

    /// No operation is inside the gate.
    pub fn is_drained(&self, vnode: Vnode) -> bool {
        self.inside[vnode as usize].load(SeqCst) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_gate_refuses_and_counts_drain() {
        let g = Gates::default();
        let inside = g.enter(3);
        assert!(inside.is_some());
        g.close(3);
        assert!(g.enter(3).is_none());
        assert_eq!(
            g.inside[3].load(SeqCst),
            1,
            "a refused enter leaves no count"
        );
        drop(inside);
        assert_eq!(g.inside[3].load(SeqCst), 0);
        g.open(3);
        assert!(g.enter(3).is_some());
    }

    /// A request looks at the map (owner: this node), then a move commits: the source's
    /// fence is lifted on the new map and the gate reopens. The request's entry must see the
    /// new owner, not the old look.
    #[test]
    fn an_entry_after_a_committed_move_sees_the_new_owner() {
        use crate::cluster::control::{ControlCommand, ControlState, MemberSpec};
        use crate::cluster::handoff::{ExportRequest, Ownership};
        use std::sync::Arc;
        let spec = |name: &str| MemberSpec {
            name: name.into(),
            http_addr: String::new(),
            cluster_addr: String::new(),
            incarnation: 0,
            storage_id: 0,
        };
        let mut map = ControlState::default();
        map.apply(&ControlCommand::Bootstrap {
            vnodes: 1,
            members: vec![spec("a"), spec("b")],
        });
        let me = map.ring[0].owner;
        let other = 1 - me;
        let mut own = Ownership::new(me, [], 0);
        own.on_map(Arc::new(map.clone()));
        let gates = Gates::default();
        // The request's look at the map, before the move.
        assert!(matches!(own.access(0), Access::Local { .. }));
        // The move: begin, the source fences (the gate closes), commit, the new map.
        map.apply(&ControlCommand::BeginMove {
            vnode: 0,
            to: other,
            now_ms: 0,
        });
        let mv = map.moves[&0];
        own.on_export_request(&ExportRequest { mv, last: true });
        gates.close(0);
        map.apply(&ControlCommand::MoveFenced {
            vnode: 0,
            move_id: mv.id,
            by: me,
        });
        map.apply(&ControlCommand::CommitMove {
            vnode: 0,
            move_id: mv.id,
            by: Some(other),
        });
        let lifted = own.on_map(Arc::new(map)).expect("a newer map");
        assert_eq!(lifted.len(), 1, "the commit resolves the fence");
        gates.open(0);
        // Now the request enters.
        let entered = gates.enter_if_local(0, || own.access(0));
        assert!(
            matches!(entered, Err(Access::Remote { owner, .. }) if owner == other),
            "a request entered a vnode this node no longer owns"
        );
        assert_eq!(
            gates.inside[0].load(SeqCst),
            0,
            "a refused entry leaves no count"
        );
    }
}
