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
use std::io::{self, Write};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

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
    /// Answer to [`FromCluster::DumpRetained`]: every retained message of the node.
    RetainedDump {
        /// The request's id.
        request: u64,
        /// The messages.
        msgs: Vec<Arc<Message>>,
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
}

/// Batches in flight per direction and shard before a sender waits.
pub const LINK_CAPACITY: usize = 1024;

/// The data plane's ends, handed to `Node::start`.
pub struct DataPlaneLink {
    uplink: tokio::sync::mpsc::Sender<Vec<ToCluster>>,
    inboxes: Vec<ShardInbox>,
}

impl DataPlaneLink {
    /// The sender of the shards' batches (cloned once per shard) and one inbox per shard.
    pub fn into_parts(self) -> (tokio::sync::mpsc::Sender<Vec<ToCluster>>, Vec<ShardInbox>) {
        (self.uplink, self.inboxes)
    }
}

impl std::fmt::Debug for DataPlaneLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlaneLink")
            .field("shards", &self.inboxes.len())
            .finish()
    }
}

/// One shard's inbound queue and the socket that wakes it.
pub struct ShardInbox {
    /// The batches, in the control plane's order.
    pub rx: crossbeam_channel::Receiver<Vec<FromCluster>>,
    /// Readable when a batch was queued; the shard reads it empty, then drains `rx`.
    pub wake: OwnedFd,
}

impl std::fmt::Debug for ShardInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardInbox")
            .field("queued", &self.rx.len())
            .finish()
    }
}

/// The control plane's ends.
pub struct ControlPlaneLink {
    /// Batches from every shard, in each shard's order.
    pub uplink: tokio::sync::mpsc::Receiver<Vec<ToCluster>>,
    outlets: Vec<ShardOutlet>,
}

struct ShardOutlet {
    tx: crossbeam_channel::Sender<Vec<FromCluster>>,
    wake: UnixStream,
}

/// Why a batch could not be queued for a shard.
#[derive(Debug)]
pub enum SendError {
    /// The shard's queue holds `LINK_CAPACITY` batches: retry later (the batch is returned).
    Full(Vec<FromCluster>),
    /// The shard is gone.
    Closed,
}

impl ControlPlaneLink {
    /// Takes the receiving end of the shards' batches out of the link, for its own task.
    pub fn take_uplink(
        mut self,
    ) -> (
        ControlPlaneLink,
        tokio::sync::mpsc::Receiver<Vec<ToCluster>>,
    ) {
        let (_, closed) = tokio::sync::mpsc::channel(1);
        let uplink = std::mem::replace(&mut self.uplink, closed);
        (self, uplink)
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.outlets.len()
    }

    /// Queues `batch` for `shard` and wakes it.
    pub fn try_send(&self, shard: ShardId, batch: Vec<FromCluster>) -> Result<(), SendError> {
        let out = &self.outlets[shard];
        match out.tx.try_send(batch) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(b)) => return Err(SendError::Full(b)),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Err(SendError::Closed),
        }
        // A full socket buffer means the shard has wake-ups it has not read yet: enough.
        match (&out.wake).write(&[1]) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(_) => Err(SendError::Closed),
        }
    }
}

/// Makes the link between a data plane of `shards` shards and the control plane.
pub fn link(shards: usize) -> io::Result<(DataPlaneLink, ControlPlaneLink)> {
    let (up_tx, up_rx) = tokio::sync::mpsc::channel(LINK_CAPACITY * shards.max(1));
    let mut inboxes = Vec::with_capacity(shards);
    let mut outlets = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = crossbeam_channel::bounded(LINK_CAPACITY);
        let (ours, theirs) = UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        theirs.set_nonblocking(true)?;
        // SAFETY: `into_raw_fd` gives up ownership of a valid, open socket.
        let wake =
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(theirs.into_raw_fd()) };
        inboxes.push(ShardInbox { rx, wake });
        outlets.push(ShardOutlet { tx, wake: ours });
    }
    Ok((
        DataPlaneLink {
            uplink: up_tx,
            inboxes,
        },
        ControlPlaneLink {
            uplink: up_rx,
            outlets,
        },
    ))
}
