//! Control requests on `Rpc`-kind streams: writes and membership changes sent to a core, which
//! executes them if it leads the core group and forwards them to the leader otherwise.
//!
//! A stream carries any number of request/response pairs, in order: one [`RpcRequest`] frame,
//! then one [`RpcResponse`] frame.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use shardmq_rlog::{NodeId, Op};

use crate::raft::WriteResult;

/// A request to a core node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum RpcRequest {
    /// Apply these ops, in order, in one Raft entry. Answered by [`RpcResponse::Written`].
    Write(Vec<Op>),
    /// Add a core: as a learner, then as a voter. Answered by [`RpcResponse::Done`].
    AddMember {
        /// The new core's id.
        id: NodeId,
        /// Its cluster (QUIC) address.
        addr: SocketAddr,
    },
    /// Remove a core from the voters. Answered by [`RpcResponse::Done`].
    RemoveMember {
        /// The core's id.
        id: NodeId,
    },
    /// Who leads, as the receiver knows it. Answered by [`RpcResponse::Leader`].
    Leader,
    /// Core to leader: execute the inner request only if you lead, else answer
    /// [`RpcResponse::NotLeader`]. Keeps forwarding to one hop.
    ToLeader(Box<RpcRequest>),
}

/// The answer to an [`RpcRequest`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum RpcResponse {
    /// The write was committed and applied on the leader; its per-shard seqs.
    Written(WriteResult),
    /// The membership change was committed.
    Done,
    /// The leader and its address, if known.
    Leader(Option<(NodeId, SocketAddr)>),
    /// Answer to [`RpcRequest::ToLeader`] on a node that does not lead; the leader it knows.
    NotLeader(Option<(NodeId, SocketAddr)>),
    /// The request failed (timeout, rejected change, shutting down).
    Failed(String),
}
