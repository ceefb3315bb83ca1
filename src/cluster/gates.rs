//! The per-vnode write gate behind a fence. Every local operation on a vnode holds a guard
//! from before it reaches the key's actor until its durable reply; a fence closes the gate and
//! then waits for the guards to drain. Once drained, everything this node ever acknowledged
//! for the vnode is on disk, and nothing new can start — which is what a handoff's final
//! export needs.
//!
//! `enter` increments, then checks the flag; `close` sets the flag, then waits for zero. With
//! sequentially consistent atomics one of the two always sees the other, so no operation
//! slips past a closing gate unseen.

use super::ring::{Vnode, MAX_VNODES};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::time::Duration;

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

    pub fn close(&self, vnode: Vnode) {
        self.closed[vnode as usize].store(true, SeqCst);
    }

    pub fn open(&self, vnode: Vnode) {
        self.closed[vnode as usize].store(false, SeqCst);
    }

    /// Waits until no operation is inside the (closed) gate.
    pub async fn drained(&self, vnode: Vnode) {
        while self.inside[vnode as usize].load(SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
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
}
