//! Cluster control plane for shardmq: the QUIC transport between nodes ([`transport`]), the
//! openraft group of the core nodes ([`raft`]) and the control requests between them ([`rpc`]).
//!
//! Everything here runs on the node's control-plane thread (a tokio runtime), never on a shard
//! core.
#![warn(missing_docs, unreachable_pub)]

mod forward;
pub mod node;
pub mod raft;
mod replica;
pub mod rpc;
pub mod timeouts;
pub mod transport;

pub use forward::ForwardStats;

/// `Mutex::lock` that takes over a poisoned lock: the control plane's mutexes guard tables
/// that every holder leaves consistent between statements, so a panic elsewhere must not
/// wedge the node.
trait Locked<T> {
    fn locked(&self) -> std::sync::MutexGuard<'_, T>;
}

impl<T> Locked<T> for std::sync::Mutex<T> {
    fn locked(&self) -> std::sync::MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|p| p.into_inner())
    }
}
pub use node::{ClientFacing, ClientNode, ClusterNode, ClusterSettings};
pub use raft::{
    ClusterError, CoreConfig, CoreGroup, CoreMetrics, EntrySubscription, WriteBatch, WriteResult,
};
pub use rpc::{RpcRequest, RpcResponse};
pub use transport::{
    Accepted, FramedStream, StreamKind, Transport, TransportConfig, TransportError,
};
