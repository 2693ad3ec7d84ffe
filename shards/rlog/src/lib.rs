//! RLOG: the replicated control-plane tables of a shardmq cluster and the protocol that streams
//! them from core nodes to replicant nodes.
//!
//! Pure, in the style of `quinn-proto`: no I/O, no clock, no async. The cluster transport drives
//! these types and moves their messages ([`ToCore`], [`ToReplicant`]) over one stream per
//! [`RlogShard`].
//!
//! # Pieces
//!
//! - [`Op`]: one change to the tables, carried (in batches) by committed Raft entries.
//! - [`Tables`]: the deterministic state machine. Every core applies the committed log in order
//!   with [`Tables::apply`], which assigns each op a per-shard sequence number; because every
//!   core applies the same log, an op gets the same `(shard, seq)` on every core. Replicants
//!   apply the resulting [`Entry`]s with [`Tables::apply_entry`].
//! - [`ShardTail`]: a core's bounded tail of recent entries of one shard, from which a
//!   reconnecting replicant resumes.
//! - [`RlogServer`]: the core side of one replicant stream (resume or bootstrap).
//! - [`ReplicantShard`]: the replicant side of one shard stream:
//!   `bootstrap → local_replay → normal`.
//! - [`status`]: status types for the HTTP API and `shardmq ctl`.
//!
//! # Driving a stream
//!
//! Replicant: send [`ReplicantShard::hello`]; feed every received message to
//! [`ReplicantShard::on_message`] and send what it pushes to `out`; on `Err` drop the stream,
//! call [`ReplicantShard::on_disconnect`] and reconnect (to any core).
//!
//! Core: on `Hello` create an [`RlogServer`] with [`RlogServer::open`] from the shard's
//! [`Tables`] and [`ShardTail`] (both at the same seq); for each entry the core commits on that
//! shard afterwards call [`RlogServer::on_live`]; on `BootstrapAck` call [`RlogServer::on_ack`];
//! after each input drain [`RlogServer::poll_transmit`] until `None`.
//!
//! # Guarantees (checked by `tests/sim.rs`)
//!
//! - A replicant's shard at seq `s` equals every core's shard at seq `s`: entries are applied
//!   only contiguously, a snapshot replaces the whole shard atomically at `BootstrapEnd`.
//! - Loss, reordering or duplication on a stream is either harmless (a duplicate entry is
//!   skipped) or detected (`Err`: gap, batch out of order, op count mismatch, message out of
//!   place); it never makes a replicant diverge.
//! - A replicant whose checkpoint is still in a core's tail resumes without bootstrap, on any
//!   core: every core assigns the same `(shard, seq)` to the same op. A replicant ahead of a
//!   lagging core resumes too and waits for the core to catch up.
//! - The [`Change`]s reported while following, resuming or bootstrapping, applied in order to
//!   the data plane's view, give exactly the tables' content.
#![warn(missing_docs, unreachable_pub)]

mod replicant;
mod server;
pub mod status;
mod tables;
mod tail;

use serde::{Deserialize, Serialize};

pub use replicant::{ReplicantShard, ShardState};
pub use server::RlogServer;
pub use tables::{ShardSnapshot, Tables};
pub use tail::ShardTail;

/// A cluster node's id.
pub type NodeId = u64;

/// One independent replication stream: a group of tables.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RlogShard {
    /// Routes: filter → nodes with subscribers.
    Route,
    /// Session registry: client id → node.
    Session,
    /// Retained-message index: topic → node holding the latest.
    Retain,
    /// Cluster membership and configuration.
    Config,
}

impl RlogShard {
    /// Every shard, in index order.
    pub const ALL: [RlogShard; 4] = [
        RlogShard::Route,
        RlogShard::Session,
        RlogShard::Retain,
        RlogShard::Config,
    ];
    /// Number of shards.
    pub const COUNT: usize = 4;

    /// Position in [`RlogShard::ALL`] (and in [`Tables::seqs`]).
    pub fn index(self) -> usize {
        match self {
            RlogShard::Route => 0,
            RlogShard::Session => 1,
            RlogShard::Retain => 2,
            RlogShard::Config => 3,
        }
    }

    /// Inverse of [`RlogShard::index`].
    pub fn from_index(i: usize) -> Option<Self> {
        Self::ALL.get(i).copied()
    }

    /// Lower-case name used in metrics, logs and the API: `route`, `session`, `retain`,
    /// `config`.
    pub fn name(self) -> &'static str {
        match self {
            RlogShard::Route => "route",
            RlogShard::Session => "session",
            RlogShard::Retain => "retain",
            RlogShard::Config => "config",
        }
    }
}

impl std::fmt::Display for RlogShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A node's role in the cluster.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Raft member: holds the log, serves replicants.
    Core,
    /// Follows the cores' RLOG streams; not a Raft member.
    Replicant,
}

/// A cluster member, as recorded in the config shard.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// QUIC `host:port`.
    pub addr: String,
    /// Core or replicant.
    pub role: Role,
    /// HTTP API `host:port`, or `""` when the node serves none.
    pub api: String,
}

/// One change to the replicated tables.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Adds `node` to the nodes of `filter` (idempotent).
    RouteAdd {
        /// Topic filter.
        filter: String,
        /// Node with a subscriber.
        node: NodeId,
    },
    /// Removes `node` from the nodes of `filter` (idempotent).
    RouteDel {
        /// Topic filter.
        filter: String,
        /// Node that lost its last subscriber.
        node: NodeId,
    },
    /// Removes `node` from every filter.
    RoutePurge {
        /// Node that left or died.
        node: NodeId,
    },
    /// Registers `client_id` at `node` (last writer wins).
    SessionSet {
        /// MQTT client id.
        client_id: String,
        /// Node holding the session.
        node: NodeId,
    },
    /// Unregisters `client_id`, only if it is currently registered at `node`.
    SessionDel {
        /// MQTT client id.
        client_id: String,
        /// Node that held the session.
        node: NodeId,
    },
    /// Unregisters every session of `node`.
    SessionPurge {
        /// Node that left or died.
        node: NodeId,
    },
    /// Records `node` as the holder of the latest retained message of `topic`.
    RetainSet {
        /// Topic name.
        topic: String,
        /// Node holding the message.
        node: NodeId,
    },
    /// Forgets the retained message of `topic`.
    RetainDel {
        /// Topic name.
        topic: String,
    },
    /// Forgets every retained message held by `node`.
    RetainPurge {
        /// Node that left or died.
        node: NodeId,
    },
    /// Adds or updates a cluster member.
    MemberSet {
        /// Node id.
        node: NodeId,
        /// Its addresses and role.
        member: Member,
    },
    /// Removes a cluster member.
    MemberDel {
        /// Node id.
        node: NodeId,
    },
    /// Sets a cluster-wide configuration key.
    ConfigSet {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Records how many members of the shared group `filter` (`$share/{group}/{filter}`) are
    /// online at `node`: the weight of `node` when a message of the group picks its node.
    /// Applied only while `node` has the route `filter` (a route removed or purged takes its
    /// weight with it); 0 forgets the weight.
    ShareWeight {
        /// The shared subscription filter, as routed.
        filter: String,
        /// Node with members.
        node: NodeId,
        /// Members online there.
        online: u32,
    },
}

impl Op {
    /// The shard whose table this op changes.
    pub fn shard(&self) -> RlogShard {
        match self {
            Op::RouteAdd { .. }
            | Op::RouteDel { .. }
            | Op::RoutePurge { .. }
            | Op::ShareWeight { .. } => RlogShard::Route,
            Op::SessionSet { .. } | Op::SessionDel { .. } | Op::SessionPurge { .. } => {
                RlogShard::Session
            }
            Op::RetainSet { .. } | Op::RetainDel { .. } | Op::RetainPurge { .. } => {
                RlogShard::Retain
            }
            Op::MemberSet { .. } | Op::MemberDel { .. } | Op::ConfigSet { .. } => RlogShard::Config,
        }
    }

    /// The ops that remove every trace of `node`: its routes, sessions, retained messages and
    /// its membership.
    pub fn purge_node(node: NodeId) -> Vec<Op> {
        vec![
            Op::RoutePurge { node },
            Op::SessionPurge { node },
            Op::RetainPurge { node },
            Op::MemberDel { node },
        ]
    }
}

/// An op with the per-shard sequence number it got when a core applied it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Equal to `op.shard()`.
    pub shard: RlogShard,
    /// 1 for the shard's first op, then contiguous.
    pub seq: u64,
    /// The change.
    pub op: Op,
}

/// What applying changed, for the data plane. Only effective changes are reported: adding an
/// existing route or setting a session to its current owner emits nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `node` now has `filter`.
    RouteAdded {
        /// Topic filter.
        filter: String,
        /// Node.
        node: NodeId,
    },
    /// `node` no longer has `filter`.
    RouteRemoved {
        /// Topic filter.
        filter: String,
        /// Node.
        node: NodeId,
    },
    /// `node`, which has the shared route `filter`, now has `online` members of it online
    /// (0 after [`Change::RouteAdded`] until told otherwise; a removed route has none).
    ShareWeight {
        /// Shared subscription filter.
        filter: String,
        /// Node.
        node: NodeId,
        /// Members online there.
        online: u32,
    },
    /// The session of `client_id` is now at `node` (`None`: registered nowhere).
    SessionOwner {
        /// MQTT client id.
        client_id: String,
        /// New owner.
        node: Option<NodeId>,
        /// Owner before (`None`: registered nowhere). A node that finds itself here with
        /// `node: None` and has not ended the session was purged (it was down or cut off for
        /// `cluster.node_down_purge_ms`) and registers it again.
        previous: Option<NodeId>,
    },
    /// Member `node` was added or changed (`Some`) or removed (`None`).
    MemberChanged {
        /// Node id.
        node: NodeId,
        /// New record.
        member: Option<Member>,
    },
}

/// Messages from a replicant to a core, on one shard stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ToCore {
    /// First message of a stream. `checkpoint`: the replicant's seq of this shard, `None` if it
    /// never synced it.
    Hello {
        /// Replicant's node id.
        node: NodeId,
        /// Shard of this stream.
        shard: RlogShard,
        /// Last applied seq, if any.
        checkpoint: Option<u64>,
    },
    /// Bootstrap batch `batch` (and every one before it) was applied to the staging table.
    BootstrapAck {
        /// Batch number (1-based).
        batch: u64,
    },
}

/// Messages from a core to a replicant, on one shard stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ToReplicant {
    /// The checkpoint is covered: entries after `from` follow.
    Resume {
        /// Echo of the replicant's checkpoint.
        from: u64,
    },
    /// A snapshot valid at `seq` follows, `keys` ops in all.
    BootstrapBegin {
        /// Seq the snapshot is valid at.
        seq: u64,
        /// Total number of ops in the snapshot.
        keys: u64,
    },
    /// Snapshot ops; batches are numbered from 1 and each must be acknowledged.
    BootstrapBatch {
        /// Batch number (1-based, contiguous).
        batch: u64,
        /// Ops of the snapshot (all of the stream's shard).
        ops: Vec<Op>,
    },
    /// The snapshot is complete.
    BootstrapEnd,
    /// Live entries, contiguous, in seq order.
    Entries(Vec<Entry>),
}

/// Errors of the RLOG stream protocol. Any of them ends the stream: the replicant reconnects.
#[derive(thiserror::Error, Debug, PartialEq, Eq)]
pub enum RlogError {
    /// An entry skipped seqs: the stream lost or reordered something.
    #[error("gap in rlog shard {shard}: have seq {have}, got {got}")]
    Gap {
        /// Shard.
        shard: RlogShard,
        /// Last applied (or buffered) seq.
        have: u64,
        /// Seq received.
        got: u64,
    },
    /// Live entries buffered during bootstrap exceeded the replay limit.
    #[error("rlog shard {shard}: replay buffer over {replay_max} entries")]
    ReplayOverflow {
        /// Shard.
        shard: RlogShard,
        /// The limit.
        replay_max: usize,
    },
    /// A message that is not allowed in the stream's state.
    #[error("rlog protocol violation: {0}")]
    Protocol(&'static str),
}
