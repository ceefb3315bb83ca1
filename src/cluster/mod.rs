//! The cluster: the vnode ring, the control plane that decides ownership (Raft on the seeds),
//! the handoff protocol that moves vnodes between nodes, and the node-to-node transport.
//!
//! The pure parts (`ring`, `planner`, `control`, `handoff`) take input and time in and give
//! decisions out; the simulation in `simulations/` drives them from a seed. The rest is shell.

pub mod control;
pub mod planner;
pub mod raft;
pub mod ring;

/// A member's compact id, assigned by the control plane when it is admitted.
pub type MemberId = u32;
