//! Replication of vnodes over R nodes: the pure cores (no I/O, no async, no clock reads).
//!
//! This is phase 1 of the design in `../shared/notes/replication.md` §4.14: the protocol as
//! plain state machines, driven by the deterministic simulator (`simulations/replication/`)
//! before any shell exists. Nothing in the request path uses it yet; the next phase embeds
//! [`ReplicaSets`] in the Raft control state and drives [`Replica`] from the writer and the
//! transport.
//!
//! - [`set`]: what the control plane decides. Per vnode an epoch and an ordered replica set
//!   (primary first); members with their storage incarnation and liveness. Every change is
//!   one command, compare-and-set on the epoch, and bumps it: `MemberDown` (every failover and
//!   shrink for one member in one command), `Shrink`, `AddReplica`, `Reclaim`, learners.
//!   Promotion only from the set; a set never becomes empty.
//! - [`replica`]: what one node does for the vnodes it holds a copy of. A per-vnode log of
//!   `(epoch, record)` numbered by `vseq`; the primary acknowledges a record only when every
//!   member of the (maximal) set has it durably; a new epoch starts with a takeover (seal the
//!   other members, adopt the longest log); a backup refuses any epoch below the one it was
//!   sealed at; reads wait for the commit point and an epoch confirmation round; learners
//!   catch up Kafka-style (truncate to the end of their last epoch in the primary's log) and
//!   join through `AddReplica`.
//!
//! Why nobody but the current primary can acknowledge, without clocks (the simulator checks
//! it after every step): an acknowledgement at epoch e needs every member of set(e); a new
//! primary of e+1 was a member of set(e) and persisted its seal at e+1 before anything else,
//! so the old primary can no longer collect a full set of acknowledgements; the new primary
//! adopts the longest log of set(e+1), which holds every acknowledged record.

pub mod replica;
#[cfg(test)]
mod replica_tests;
pub mod set;

pub use replica::{Replica, ReplicaConfig, ReplicaMsg, ReplicaOutput};
pub use set::{ReplicaSets, SetCommand, SetEntry};

/// Deliberate breakages the simulator must catch (`simulations/replication/`). `None` in every
/// real build; each variant names the rule it breaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mutant {
    #[default]
    None,
    /// The primary acknowledges once its own copy is durable.
    AckAfterLocalSync,
    /// A backup accepts records of an epoch below the one it was sealed at.
    AcceptLowerEpoch,
    /// The primary stops waiting for a member as soon as it proposes to shrink it out.
    DropBeforeShrinkCommits,
    /// `MemberDown` promotes any live member, in the set or not.
    PromoteOutOfSet,
    /// A new primary serves without sealing the other members or adopting their logs.
    TakeoverWithoutSeal,
    /// A restarted primary resumes at the epoch it had before the crash.
    ResumeSameEpoch,
    /// Reads answer at the commit point without confirming the epoch with the set.
    ReadWithoutConfirm,
    /// A learner is added without the primary waiting for it from the proposal on.
    AddWithoutMaximalSet,
}
