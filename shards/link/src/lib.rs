//! The data plane's link to the control plane, which runs the cluster on its own thread: the
//! messages both sides exchange and the bounded queues that carry them. Both the shards
//! (`shardmq-shards`) and the cluster (`shardmq-cluster`) depend on this crate, and on no
//! executor through it.
//!
//! Shards send [`ToCluster`] batches over one bounded tokio channel (`try_send` never blocks a
//! shard; a full channel is backpressure, see `Shard::cluster_out`). The control plane sends
//! each shard [`FromCluster`] batches over a bounded crossbeam channel and then writes one byte
//! to that shard's wake socket: the shard's link task awaits the socket through io_uring, so a
//! shard sleeps in the kernel like it does for client sockets, and a batch costs one wake-up.
//! A byte is written after the batch is queued, and the shard drains the whole queue after each
//! read, so no batch waits for a later wake-up.

#![warn(missing_docs, unreachable_pub)]

use shardmq_broker::Message;
use shardmq_codec::ByteStr;
use smallvec::SmallVec;
use std::sync::Arc;

#[cfg(feature = "queues")]
mod queues;
#[cfg(feature = "queues")]
pub use queues::*;

/// Index of a shard in its node, `0..shards`.
pub type ShardId = usize;

/// Identifier of a node in the cluster.
pub type NodeId = u64;

/// Nodes a forwarded message goes to.
pub type NodeSet = SmallVec<[NodeId; 4]>;

/// From a shard to the control plane.
#[derive(Debug)]
pub enum ToCluster {
    /// The shard has its first subscriber to `filter` (a plain filter, not `$share/`). The node
    /// writes the cluster route on the node's first; with `sync`, answer
    /// [`FromCluster::RouteCommitted`] once the route is committed and applied here.
    RouteAdd {
        /// The filter.
        filter: ByteStr,
        /// Shard subscribing.
        shard: ShardId,
        /// Token the shard's SUBACK waits for.
        sync: Option<u64>,
    },
    /// The shard has no subscriber to `filter` any more.
    RouteDel {
        /// The filter.
        filter: ByteStr,
        /// Shard unsubscribing.
        shard: ShardId,
    },
    /// The shard's members online of the shared group routed as `share`
    /// (`$share/{group}/{filter}`) changed: now `online`. The node sums its shards' and writes
    /// the sum as its weight of the group (at most once per `SHARE_WEIGHT_PERIOD` a group).
    ShareOnline {
        /// The shared route.
        share: ByteStr,
        /// Shard reporting.
        shard: ShardId,
        /// Its members online.
        online: u32,
    },
    /// Forward `msg` to `nodes`, once per node.
    Forward {
        /// Destination nodes (never this one).
        nodes: NodeSet,
        /// The message.
        msg: Arc<Message>,
    },
    /// Forward `msg` to `node` for its members of the shared subscription `share`
    /// (`$share/{group}/{filter}`) only.
    ForwardShared {
        /// Destination node.
        node: NodeId,
        /// The shared subscription.
        share: ByteStr,
        /// The message.
        msg: Arc<Message>,
    },
    /// This node holds the latest retained message of `topic` (the cluster's retained index).
    RetainSet {
        /// The topic.
        topic: ByteStr,
    },
    /// The retained message of `topic` was cleared here.
    RetainDel {
        /// The topic.
        topic: ByteStr,
    },
    /// Answer to [`FromCluster::DumpRetained`], in parts: the shard walks its retained
    /// replica a bounded number of nodes per turn and sends what each step found.
    RetainedDump {
        /// The request's id.
        request: u64,
        /// The messages of this part.
        msgs: Vec<Arc<Message>>,
        /// The last part: together they are every retained message of the node.
        done: bool,
    },
    /// A session for `client_id` now lives on this node (the cluster's session registry).
    SessionSet {
        /// Client identifier.
        client_id: ByteStr,
    },
    /// The session for `client_id` ended on this node.
    SessionDel {
        /// Client identifier.
        client_id: ByteStr,
    },
    /// A Clean Start 0 CONNECT for `client_id` that this node holds no session for: if the
    /// cluster's session registry places one on another node, fetch it from there (that node
    /// ends its connection and hands the session over). Always answered, within the node's
    /// session move timeout, by [`FromCluster::SessionFetched`] to `shard`.
    SessionFetch {
        /// Client identifier.
        client_id: ByteStr,
        /// Shard of the connection, which gets the answer.
        shard: ShardId,
        /// The claim's token, given back in the answer.
        token: u64,
    },
    /// The shard restored `client_id`'s session from storage at start-up. Once this node's
    /// tables are synced, the node registers it ([`ToCluster::SessionSet`]) unless the tables
    /// place the session on another node (its client moved on while this node was down): then
    /// it answers [`FromCluster::SessionStale`].
    SessionRestored {
        /// Client identifier.
        client_id: ByteStr,
        /// Shard holding the restored session.
        shard: ShardId,
    },
    /// Answer to [`FromCluster::SessionMoveOut`]: the session, encoded for the wire (`None`:
    /// this shard does not hold it).
    SessionMovedOut {
        /// The request's id.
        request: u64,
        /// The session's wire image (`shardmq_core::store::encode_session`).
        image: Option<bytes::Bytes>,
    },
}

/// From the control plane to a shard.
#[derive(Debug)]
pub enum FromCluster {
    /// `node` has subscribers to `filter`.
    RouteAdded {
        /// The filter.
        filter: ByteStr,
        /// The node.
        node: NodeId,
    },
    /// `node` has no subscriber to `filter` any more.
    RouteRemoved {
        /// The filter.
        filter: ByteStr,
        /// The node.
        node: NodeId,
    },
    /// `node`, which has the shared route `share`, has `online` members of it online: its
    /// weight when a message of the group picks its node.
    ShareWeight {
        /// The shared route (`$share/{group}/{filter}`).
        share: ByteStr,
        /// The node.
        node: NodeId,
        /// Its members online.
        online: u32,
    },
    /// The other nodes of the cluster (retained messages go to all of them).
    Peers(Vec<NodeId>),
    /// Forget every other node's routes (a full set follows).
    ClearRoutes,
    /// Answer with [`ToCluster::RetainedDump`].
    DumpRetained {
        /// Request id to answer with.
        request: u64,
    },
    /// Retained messages fetched from other nodes (after this node started): stored where the
    /// topic has none yet, delivered to nobody.
    StoreRetained(Vec<Arc<Message>>),
    /// A message published on another node: deliver to this node's subscribers, shared
    /// groups excepted (they get theirs through `SharedPublish`); never forwarded again.
    Publish(Arc<Message>),
    /// A message published on another node for this node's members of the shared
    /// subscription `share`.
    SharedPublish {
        /// `$share/{group}/{filter}`.
        share: ByteStr,
        /// The message.
        msg: Arc<Message>,
    },
    /// The route a SUBACK waits for is committed (or the wait timed out).
    RouteCommitted {
        /// The shard's token.
        token: u64,
    },
    /// `client_id` connected on another node: end its session here (MQTT 5.0: DISCONNECT
    /// 0x8E Session taken over).
    SessionTakenOver {
        /// Client identifier.
        client_id: ByteStr,
    },
    /// The tables no longer place `client_id` anywhere although this node registered it last
    /// (it was purged while down or cut off): register it again if this shard still holds it.
    SessionUnclaimed {
        /// Client identifier.
        client_id: ByteStr,
    },
    /// Answer to [`ToCluster::SessionRestored`]: the session lives on another node now; drop
    /// the restored copy without publishing its will (its client is alive elsewhere).
    SessionStale {
        /// Client identifier.
        client_id: ByteStr,
    },
    /// Answer to [`ToCluster::SessionFetch`]: the session another node handed over, if one
    /// did (`None`: no other node holds it, or it did not answer in time).
    SessionFetched {
        /// Client identifier.
        client_id: ByteStr,
        /// The claim's token.
        token: u64,
        /// The session's wire image.
        image: Option<bytes::Bytes>,
    },
    /// Another node has a CONNECT for `client_id`: if this shard holds its session, close its
    /// connection (MQTT 5.0: DISCONNECT 0x8E), end the session here and answer
    /// [`ToCluster::SessionMovedOut`] with it; else answer with `None`.
    SessionMoveOut {
        /// The request's id.
        request: u64,
        /// Client identifier.
        client_id: ByteStr,
    },
}
