//! Raft RPCs over the QUIC transport: one `Raft`-kind stream per RPC, one request frame and one
//! response frame, bounded by the RPC's hard TTL.

use std::net::SocketAddr;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use serde::{Deserialize, Serialize};
use tracing::trace;

use super::{NodeId, TypeConfig};
use crate::transport::{StreamKind, Transport, TransportError};

/// A Raft RPC request, the first frame of a `Raft` stream.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum RaftRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The answer to a [`RaftRequest`].
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum RaftResponse {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// The request did not decode or the kind did not match.
    Refused(String),
}

/// Makes one [`PeerClient`] per target.
pub(crate) struct NetworkFactory {
    pub(crate) transport: Transport,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            transport: self.transport.clone(),
            target,
            addr: node.addr.parse().ok(),
        }
    }
}

/// Sends Raft RPCs to one peer.
pub(crate) struct PeerClient {
    transport: Transport,
    target: NodeId,
    addr: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

enum CallError {
    Unreachable(Unreachable),
    Network(NetworkError),
    /// The request frame exceeded the transport's frame limit.
    TooLarge,
}

impl<E: std::error::Error> From<CallError> for RPCError<NodeId, BasicNode, E> {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Unreachable(u) => RPCError::Unreachable(u),
            CallError::Network(n) => RPCError::Network(n),
            CallError::TooLarge => RPCError::Network(NetworkError::new(&Msg(
                "raft request over frame_max_bytes".into(),
            ))),
        }
    }
}

impl PeerClient {
    async fn call(&self, req: RaftRequest, option: &RPCOption) -> Result<RaftResponse, CallError> {
        let Some(addr) = self.addr else {
            return Err(CallError::Unreachable(Unreachable::new(&Msg(format!(
                "node {} has no valid address",
                self.target
            )))));
        };
        let exchange = async {
            let mut s = self
                .transport
                .open(addr, StreamKind::Raft)
                .await
                .map_err(|e| match e {
                    TransportError::Connect { .. }
                    | TransportError::Timeout
                    | TransportError::Connection(_) => CallError::Unreachable(Unreachable::new(&e)),
                    e => CallError::Network(NetworkError::new(&e)),
                })?;
            s.send(&req).await.map_err(|e| match e {
                TransportError::FrameTooLarge { .. } => CallError::TooLarge,
                e => CallError::Network(NetworkError::new(&e)),
            })?;
            let _ = s.finish();
            match s.recv::<RaftResponse>().await {
                Ok(Some(r)) => Ok(r),
                Ok(None) => Err(CallError::Network(NetworkError::new(&Msg(
                    "peer closed the stream".into(),
                )))),
                Err(e) => Err(CallError::Network(NetworkError::new(&e))),
            }
        };
        match tokio::time::timeout(option.hard_ttl(), exchange).await {
            Ok(r) => r,
            Err(_) => {
                trace!(target = self.target, "raft rpc timed out");
                Err(CallError::Network(NetworkError::new(
                    &TransportError::Timeout,
                )))
            }
        }
    }

    fn unexpected(&self, r: RaftResponse) -> CallError {
        CallError::Network(NetworkError::new(&Msg(format!(
            "unexpected raft response from {}: {r:?}",
            self.target
        ))))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let entries = rpc.entries.len() as u64;
        let resp = match self.call(RaftRequest::Append(rpc), &option).await {
            Ok(r) => r,
            // Too many entries for one frame: openraft retries with fewer.
            Err(CallError::TooLarge) if entries > 1 => {
                return Err(RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint(entries / 2),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        match resp {
            RaftResponse::Append(Ok(r)) => Ok(r),
            RaftResponse::Append(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            r => Err(self.unexpected(r).into()),
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
        match self.call(RaftRequest::Snapshot(rpc), &option).await? {
            RaftResponse::Snapshot(Ok(r)) => Ok(r),
            RaftResponse::Snapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            r => Err(self.unexpected(r).into()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self.call(RaftRequest::Vote(rpc), &option).await? {
            RaftResponse::Vote(Ok(r)) => Ok(r),
            RaftResponse::Vote(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            r => Err(self.unexpected(r).into()),
        }
    }
}
