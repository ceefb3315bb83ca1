//! The control plane: Raft (openraft 0.9) on the seeds, with [`ControlState`] as its state
//! machine and SQLite (`raft.db` in the node's data dir) as its disk.
//!
//! - `store`: the log, the vote, the committed and purged log ids (durable before openraft is
//!   told they are);
//! - `state_machine`: the applied `ControlState`, written in the same transaction as each apply
//!   batch, and its snapshots;
//! - `network`: openraft's RPCs over a [`RaftTransport`] (ractor_cluster on a real node, memory
//!   in tests);
//! - `plane`: [`ControlPlane`], the façade the rest of the node calls.
//!
//! Seeds are named; a seed's Raft node id is the stable hash of its name, and its
//! `BasicNode::addr` holds the name (the transport resolves names to connections).
//!
//! [`ControlState`]: super::control::ControlState

mod network;
mod plane;
mod state_machine;
mod store;
#[cfg(test)]
mod tests;

use super::control::{ControlCommand, ControlResponse};
use std::io::Cursor;

pub use network::RaftTransport;
pub use plane::{ControlError, ControlPlane};

/// A seed's Raft node id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The openraft type configuration of the control plane.
    pub TypeConfig:
        D = ControlCommand,
        R = ControlResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The Raft node id of the seed named `name`: stable across versions and machines.
pub fn node_id(name: &str) -> NodeId {
    super::ring::hash_name(name)
}
