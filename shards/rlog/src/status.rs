//! Status types for the HTTP API and `shardmq ctl`.

use serde::{Deserialize, Serialize};

use crate::{NodeId, ReplicantShard, RlogServer, RlogShard, Role, Tables};

/// One RLOG shard as seen by this node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardStatus {
    /// Shard name (`route`, `session`, …).
    pub shard: String,
    /// `core` on cores; on replicants `bootstrap`, `local_replay`, `normal` or `disconnected`.
    pub state: String,
    /// Last applied seq.
    pub seq: u64,
    /// Replicants: entries behind the upstream core (0 on cores).
    pub lag: u64,
    /// Cores: replicant streams served on this shard.
    pub replicants: u64,
    /// Cores: entries and snapshot ops queued for replicants, summed over streams.
    pub pending: u64,
    /// Replicants: duration of the last bootstrap.
    pub bootstrap_time_ms: u64,
    /// Replicants: ops of the last bootstrap.
    pub bootstrap_keys: u64,
    /// Replicants: live entries buffered by the bootstrap in progress.
    pub replay_queue_len: u64,
    /// Replicants: completed bootstraps.
    pub bootstraps: u64,
    /// Replicants: streams resumed from a checkpoint.
    pub resumes: u64,
    /// Replicants: the core this shard follows.
    pub upstream: Option<NodeId>,
}

/// RLOG status of one node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RlogStatus {
    /// This node.
    pub node: NodeId,
    /// Its role.
    pub role: Role,
    /// Raft leader, as known here.
    pub leader: Option<NodeId>,
    /// One per shard, in [`crate::RlogShard::ALL`] order.
    pub shards: Vec<ShardStatus>,
}

/// A cluster member and whether it is reachable.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// Node id.
    pub node: NodeId,
    /// QUIC `host:port`.
    pub addr: String,
    /// Core or replicant.
    pub role: Role,
    /// HTTP API `host:port`, or `""`.
    pub api: String,
    /// `running`, `stopped` or `unknown`.
    pub status: String,
}

/// Cluster view of one node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This node.
    pub node: NodeId,
    /// Its role.
    pub role: Role,
    /// Raft leader, as known here.
    pub leader: Option<NodeId>,
    /// Members from the config shard.
    pub members: Vec<MemberStatus>,
    /// Route filters.
    pub routes: u64,
    /// Registered sessions.
    pub sessions: u64,
    /// Ops this node has queued or is writing to the tables and that are not committed yet
    /// (0: everything it wrote is in; a partitioned node keeps them until it can write).
    #[serde(default)]
    pub pending_writes: u64,
}

impl ShardStatus {
    /// Status of `shard` on a core serving `servers` (its replicant streams on that shard).
    pub fn core<'a>(
        shard: RlogShard,
        tables: &Tables,
        servers: impl IntoIterator<Item = &'a RlogServer>,
    ) -> Self {
        let (mut replicants, mut pending) = (0, 0);
        for s in servers {
            replicants += 1;
            pending += s.pending() as u64;
        }
        ShardStatus {
            shard: shard.name().to_string(),
            state: "core".to_string(),
            seq: tables.seq(shard),
            replicants,
            pending,
            ..ShardStatus::default()
        }
    }

    /// Status of a replicant's shard; the shell measures `bootstrap_time_ms` and knows the
    /// `upstream` core.
    pub fn replicant(
        rs: &ReplicantShard,
        tables: &Tables,
        upstream: Option<NodeId>,
        bootstrap_time_ms: u64,
    ) -> Self {
        let seq = tables.seq(rs.shard());
        ShardStatus {
            shard: rs.shard().name().to_string(),
            state: rs.state().name().to_string(),
            seq,
            lag: rs.upstream_seq().saturating_sub(seq),
            bootstrap_time_ms,
            bootstrap_keys: rs.bootstrap_keys(),
            replay_queue_len: rs.replay_queue_len() as u64,
            bootstraps: rs.bootstraps(),
            resumes: rs.resumes(),
            upstream,
            ..ShardStatus::default()
        }
    }
}
