//! openraft's RPCs over a [`RaftTransport`].
//!
//! A request is one rmp-serde [`RaftRpc`]; its answer one [`RaftReply`], which carries the
//! receiver's `Result` as openraft returned it (openraft's errors are serde types). On the
//! sender's side:
//! - a transport failure, an undecodable reply, or a receiver whose Raft is not running (a
//!   remote `Fatal`) is `Unreachable`, so openraft backs off before trying that seed again;
//! - a remote API error (a snapshot chunk out of order) is a `RemoteError`, which openraft
//!   knows how to act on.

use super::store::{decode, encode};
use super::{NodeId, TypeConfig};
use futures::future::BoxFuture;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, Raft, RaftNetwork, RaftNetworkFactory};
use serde::{Deserialize, Serialize};
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

/// How Raft RPCs reach the other seeds: ractor_cluster on a real node, memory in tests.
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends one encoded Raft RPC to the seed named `target` and returns its encoded reply.
    fn call(
        &self,
        target: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>>;
}

/// A Raft RPC on the wire.
#[derive(Serialize, Deserialize)]
pub(super) enum RaftRpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The answer to a [`RaftRpc`], variant for variant.
#[derive(Serialize, Deserialize)]
pub(super) enum RaftReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// The request could not be decoded.
    Refused(String),
}

/// The receiving side: runs one encoded RPC against the local Raft, returns the encoded reply.
pub(super) async fn serve(raft: &Raft<TypeConfig>, payload: &[u8]) -> Vec<u8> {
    let reply = match decode::<RaftRpc>(payload) {
        Err(e) => RaftReply::Refused(format!("undecodable raft rpc: {e}")),
        Ok(RaftRpc::Append(req)) => RaftReply::Append(raft.append_entries(req).await),
        Ok(RaftRpc::Vote(req)) => RaftReply::Vote(raft.vote(req).await),
        Ok(RaftRpc::Snapshot(req)) => RaftReply::Snapshot(raft.install_snapshot(req).await),
    };
    match encode(&reply) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a raft reply");
            // An empty reply does not decode: the sender sees this seed as unreachable.
            Vec::new()
        }
    }
}

/// Makes one [`Peer`] per target seed for openraft.
pub(super) struct NetworkFactory {
    transport: Arc<dyn RaftTransport>,
}

impl NetworkFactory {
    pub(super) fn new(transport: Arc<dyn RaftTransport>) -> NetworkFactory {
        NetworkFactory { transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            node: node.clone(),
            transport: self.transport.clone(),
        }
    }
}

/// The client end of the RPCs to one seed (`node.addr` is the seed's name).
pub(super) struct Peer {
    target: NodeId,
    node: BasicNode,
    transport: Arc<dyn RaftTransport>,
}

fn unreachable(msg: String) -> Unreachable {
    Unreachable::from(AnyError::error(msg))
}

impl Peer {
    async fn call(&self, rpc: &RaftRpc, option: &RPCOption) -> Result<RaftReply, Unreachable> {
        let name = &self.node.addr;
        let payload = encode(rpc).map_err(|e| unreachable(format!("encode rpc to {name}: {e}")))?;
        let bytes = self
            .transport
            .call(name, payload, option.hard_ttl())
            .await
            .map_err(|e| unreachable(format!("{name}: {e}")))?;
        match decode::<RaftReply>(&bytes) {
            Ok(RaftReply::Refused(e)) => Err(unreachable(format!("{name} refused: {e}"))),
            Ok(reply) => Ok(reply),
            Err(e) => Err(unreachable(format!("undecodable reply from {name}: {e}"))),
        }
    }

    /// A remote error: `Fatal` (its Raft is not running) is unreachable; an API error is the
    /// remote's answer.
    fn remote<E: Error>(
        &self,
        e: RaftError<NodeId, E>,
    ) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        match e {
            RaftError::Fatal(f) => RPCError::Unreachable(unreachable(format!(
                "raft on {} is not running: {f}",
                self.node.addr
            ))),
            api => RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                api,
            )),
        }
    }

    fn mismatched<E: Error>(&self) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
        RPCError::Unreachable(unreachable(format!(
            "{} answered another rpc",
            self.node.addr
        )))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(&RaftRpc::Append(rpc), &option).await? {
            RaftReply::Append(res) => res.map_err(|e| self.remote(e)),
            _ => Err(self.mismatched()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(&RaftRpc::Vote(rpc), &option).await? {
            RaftReply::Vote(res) => res.map_err(|e| self.remote(e)),
            _ => Err(self.mismatched()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(&RaftRpc::Snapshot(rpc), &option).await? {
            RaftReply::Snapshot(res) => res.map_err(|e| self.remote(e)),
            _ => Err(self.mismatched()),
        }
    }
}
