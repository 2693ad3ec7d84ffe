//! The core group: one openraft group of the core nodes, replicating the RLOG [`Tables`].
//!
//! Each committed Raft entry is a [`WriteBatch`] of [`Op`]s. Every core applies it to its
//! [`Tables`] (which numbers each op per RLOG shard), appends the resulting [`Entry`]s to that
//! shard's [`ShardTail`], broadcasts them to the RLOG servers, and sends the effective
//! [`Change`]s to the node's data plane.
//!
//! Storage under `data_dir`: `raft-log.redb` (log, vote, committed, purge point; see
//! `log_store`) and `snapshot.bin` (the last snapshot, replaced atomically; see
//! `state_machine`).

mod log_store;
mod network;
mod state_machine;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, ForwardToLeader, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use shardmq_rlog::{Change, Entry, Op, RlogShard, ShardTail, Tables};
use tokio::sync::broadcast;
use tracing::{debug, info, warn};

use crate::rpc::{RpcRequest, RpcResponse};
use crate::transport::{Accepted, FramedStream, StreamKind, Transport, TransportError};
use network::{NetworkFactory, RaftRequest, RaftResponse};
use state_machine::{Hub, StateMachine};

pub use shardmq_rlog::NodeId;

/// The payload of one Raft log entry: ops applied in order, atomically.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WriteBatch {
    /// The ops.
    pub ops: Vec<Op>,
}

/// The result of applying one log entry: every RLOG shard's seq right after it. A writer
/// that waits until its local tables reach these seqs reads its own write.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteResult {
    /// Seq per shard, by [`RlogShard::index`].
    pub seqs: [u64; RlogShard::COUNT],
}

openraft::declare_raft_types!(
    /// openraft type configuration of the core group.
    pub TypeConfig:
        D = WriteBatch,
        R = WriteResult,
        NodeId = NodeId,
        Node = BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// Entries a lagging RLOG subscriber may fall behind before it sees `Lagged`.
const ENTRIES_CHANNEL_CAP: usize = 16 * 1024;
/// Change batches a lagging data-plane subscriber may fall behind.
const CHANGES_CHANNEL_CAP: usize = 1024;
/// Longest wait for one forwarded request's answer.
const FORWARD_TIMEOUT_MS: u64 = 3_000;
/// Retry pause bounds while there is no reachable leader.
const RETRY_MIN_MS: u64 = 20;
const RETRY_MAX_MS: u64 = 200;

/// Settings of one core node's Raft group.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This core's id.
    pub node_id: NodeId,
    /// This core's cluster (QUIC) address, as peers dial it.
    pub addr: SocketAddr,
    /// Where the Raft log and snapshots live.
    pub data_dir: PathBuf,
    /// Initial voters (from `cluster.seeds`); the lowest id initializes a new cluster.
    pub members: BTreeMap<NodeId, SocketAddr>,
    /// Entries kept per RLOG shard tail for resuming replicants.
    pub tail_len: usize,
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Election timeout range (min, max).
    pub election_timeout_ms: (u64, u64),
    /// A snapshot is taken every this many applied logs.
    pub snapshot_logs: u64,
    /// How long [`CoreGroup::write`] and membership changes retry before giving up.
    pub write_timeout_ms: u64,
}

impl CoreConfig {
    /// Settings with the defaults: tail 10,000, heartbeat 100 ms, elections 400–800 ms,
    /// a snapshot every 10,000 logs, writes time out after 5 s.
    pub fn new(
        node_id: NodeId,
        addr: SocketAddr,
        data_dir: PathBuf,
        members: BTreeMap<NodeId, SocketAddr>,
    ) -> Self {
        CoreConfig {
            node_id,
            addr,
            data_dir,
            members,
            tail_len: 10_000,
            heartbeat_ms: 100,
            election_timeout_ms: (400, 800),
            snapshot_logs: 10_000,
            write_timeout_ms: 5_000,
        }
    }
}

/// Errors of the core group.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The settings are inconsistent.
    #[error("invalid config: {0}")]
    Config(String),
    /// The Raft log or snapshot store failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// No leader could execute the request in time.
    #[error("no leader executed the request within {0} ms")]
    Timeout(u64),
    /// The leader refused the request (e.g. a membership change already in progress).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The Raft group is shut down.
    #[error("core group stopped: {0}")]
    Stopped(String),
}

/// Raft state of this core, from openraft's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreMetrics {
    /// Leader, follower, candidate, learner or shutdown.
    pub state: ServerState,
    /// The leader this core knows.
    pub current_leader: Option<NodeId>,
    /// Current term.
    pub current_term: u64,
    /// Index of the last applied log.
    pub last_applied: Option<u64>,
    /// Index of the last log.
    pub last_log_index: Option<u64>,
    /// Index of the last snapshot.
    pub snapshot: Option<u64>,
    /// Index of the last log purged (covered by the snapshot).
    pub purged: Option<u64>,
    /// Voter ids of the effective membership.
    pub voters: BTreeSet<NodeId>,
    /// Every member (voters and learners) and its address.
    pub nodes: BTreeMap<NodeId, String>,
}

/// A consistent start point for an RLOG subscriber: the tables and tails at some moment, and the
/// entries applied after that moment.
#[derive(Debug)]
pub struct EntrySubscription {
    /// Tables as of the subscription.
    pub tables: Tables,
    /// One tail per shard, by [`RlogShard::index`], at the same seqs as `tables`.
    pub tails: Vec<ShardTail>,
    /// Every entry applied afterwards, in order. A receiver that lags by more than the channel
    /// holds gets `Lagged` and must start over.
    pub entries: broadcast::Receiver<Entry>,
}

/// A core node's membership in the Raft group. Cheap to clone.
#[derive(Clone)]
pub struct CoreGroup {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: CoreConfig,
    raft: Raft<TypeConfig>,
    hub: Arc<Hub>,
    transport: Transport,
}

enum Attempt {
    Done(RpcResponse),
    Forward(Option<(NodeId, SocketAddr)>),
}

fn leader_hint(f: &ForwardToLeader<NodeId, BasicNode>) -> Option<(NodeId, SocketAddr)> {
    let id = f.leader_id?;
    let addr = f.leader_node.as_ref()?.addr.parse().ok()?;
    Some((id, addr))
}

impl CoreGroup {
    /// Opens the store under `data_dir`, starts Raft, and, on the lowest id of `members`,
    /// initializes the cluster if this core has never been part of one.
    pub async fn start(cfg: CoreConfig, transport: Transport) -> Result<CoreGroup, ClusterError> {
        let (emin, emax) = cfg.election_timeout_ms;
        if cfg.heartbeat_ms == 0 || emin <= cfg.heartbeat_ms || emax <= emin {
            return Err(ClusterError::Config(format!(
                "need 0 < heartbeat_ms ({}) < election_timeout_ms.0 ({emin}) < .1 ({emax})",
                cfg.heartbeat_ms
            )));
        }
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| ClusterError::Storage(e.to_string()))?;
        let log = log_store::LogStore::open(&cfg.data_dir)
            .map_err(|e| ClusterError::Storage(e.to_string()))?;
        let (sm, hub) = StateMachine::open(
            &cfg.data_dir,
            cfg.tail_len,
            ENTRIES_CHANNEL_CAP,
            CHANGES_CHANNEL_CAP,
        )
        .map_err(|e| ClusterError::Storage(e.to_string()))?;
        let raft_config = openraft::Config {
            cluster_name: "shardmq".into(),
            heartbeat_interval: cfg.heartbeat_ms,
            election_timeout_min: emin,
            election_timeout_max: emax,
            install_snapshot_timeout: emax.max(1_000),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs.max(1)),
            max_in_snapshot_log_to_keep: cfg.snapshot_logs / 10,
            // A snapshot chunk, with its envelope, must fit in one transport frame.
            snapshot_max_chunk_size: (transport.frame_max_bytes() as u64 / 2).clamp(1, 3 << 20),
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Config(e.to_string()))?;
        let network = NetworkFactory {
            transport: transport.clone(),
        };
        let raft = Raft::new(cfg.node_id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| ClusterError::Stopped(e.to_string()))?;
        let group = CoreGroup {
            inner: Arc::new(Inner {
                cfg,
                raft,
                hub,
                transport,
            }),
        };
        group.initialize_if_first().await?;
        Ok(group)
    }

    async fn initialize_if_first(&self) -> Result<(), ClusterError> {
        let cfg = &self.inner.cfg;
        if cfg.members.keys().next() != Some(&cfg.node_id) {
            return Ok(());
        }
        let raft = &self.inner.raft;
        if raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Stopped(e.to_string()))?
        {
            return Ok(());
        }
        let members: BTreeMap<NodeId, BasicNode> = cfg
            .members
            .iter()
            .map(|(&id, addr)| (id, BasicNode::new(addr.to_string())))
            .collect();
        info!(node = cfg.node_id, ?members, "initializing the core group");
        match raft.initialize(members).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(ClusterError::Config(e.to_string())),
        }
    }

    /// This core's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.cfg.node_id
    }

    /// The transport this group talks over.
    pub fn transport(&self) -> &Transport {
        &self.inner.transport
    }

    /// Serves a `Raft`-kind stream until the peer finishes it.
    pub async fn handle_raft_stream(&self, mut stream: FramedStream) {
        let raft = &self.inner.raft;
        loop {
            let req = match stream.recv::<RaftRequest>().await {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    warn!(error = %e, "bad raft stream");
                    let _ = stream.send(&RaftResponse::Refused(e.to_string())).await;
                    return;
                }
            };
            let resp = match req {
                RaftRequest::Append(r) => RaftResponse::Append(raft.append_entries(r).await),
                RaftRequest::Vote(r) => RaftResponse::Vote(raft.vote(r).await),
                RaftRequest::Snapshot(r) => RaftResponse::Snapshot(raft.install_snapshot(r).await),
            };
            if let Err(e) = stream.send(&resp).await {
                debug!(error = %e, "raft response not sent");
                return;
            }
        }
    }

    /// Serves an `Rpc`-kind stream until the peer finishes it.
    pub async fn handle_rpc_stream(&self, mut stream: FramedStream) {
        loop {
            let req = match stream.recv::<RpcRequest>().await {
                Ok(Some(r)) => r,
                Ok(None) => return,
                Err(e) => {
                    warn!(error = %e, "bad rpc stream");
                    let _ = stream.send(&RpcResponse::Failed(e.to_string())).await;
                    return;
                }
            };
            let resp = match req {
                RpcRequest::ToLeader(inner) => match self.local(&inner).await {
                    Ok(Attempt::Done(r)) => r,
                    Ok(Attempt::Forward(hint)) => RpcResponse::NotLeader(hint),
                    Err(e) => RpcResponse::Failed(e.to_string()),
                },
                req => self
                    .execute(req)
                    .await
                    .unwrap_or_else(|e| RpcResponse::Failed(e.to_string())),
            };
            if let Err(e) = stream.send(&resp).await {
                debug!(error = %e, "rpc response not sent");
                return;
            }
        }
    }

    /// Hands `Raft` and `Rpc` streams to a spawned handler and gives any other stream back.
    pub fn dispatch(&self, accepted: Accepted) -> Option<Accepted> {
        match accepted.kind {
            StreamKind::Raft => {
                let g = self.clone();
                tokio::spawn(async move { g.handle_raft_stream(accepted.stream).await });
                None
            }
            StreamKind::Rpc => {
                let g = self.clone();
                tokio::spawn(async move { g.handle_rpc_stream(accepted.stream).await });
                None
            }
            _ => Some(accepted),
        }
    }

    /// Accepts streams from the transport until it closes, serving `Raft` and `Rpc` streams and
    /// dropping the others: for a node that runs nothing but the core group (tests, tools).
    pub async fn serve(&self) {
        while let Some(acc) = self.inner.transport.accept().await {
            if let Some(other) = self.dispatch(acc) {
                debug!(kind = ?other.kind, peer = other.peer_node, "stream kind not served here, dropped");
            }
        }
    }

    /// Commits `ops` as one entry: on the leader directly, else forwarded to it, retried until
    /// `write_timeout_ms`. A write whose answer was lost may be applied twice (ops are
    /// idempotent on the tables; their seqs advance twice).
    /// A batch whose encoding exceeds a quarter of the transport's `frame_max_bytes` is refused
    /// (it could not be replicated).
    pub async fn write(&self, ops: Vec<Op>) -> Result<WriteResult, ClusterError> {
        let size = postcard::experimental::serialized_size(&ops).unwrap_or(usize::MAX);
        let max = self.inner.transport.frame_max_bytes() / 4;
        if size > max {
            return Err(ClusterError::Rejected(format!(
                "write batch of {size} bytes is over {max} bytes"
            )));
        }
        match self.execute(RpcRequest::Write(ops)).await? {
            RpcResponse::Written(r) => Ok(r),
            other => Err(ClusterError::Rejected(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    /// Adds core `id` at `addr`: as a learner (it catches up), then as a voter.
    pub async fn add_member(&self, id: NodeId, addr: SocketAddr) -> Result<(), ClusterError> {
        self.execute(RpcRequest::AddMember { id, addr })
            .await
            .map(|_| ())
    }

    /// Removes core `id` from the voters.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), ClusterError> {
        self.execute(RpcRequest::RemoveMember { id })
            .await
            .map(|_| ())
    }

    /// Waits until the local tables reach `seqs` on every shard (read-your-writes after a
    /// [`CoreGroup::write`] that the leader applied first). `false` on timeout.
    pub async fn wait_applied(&self, seqs: [u64; RlogShard::COUNT], timeout: Duration) -> bool {
        let mut rx = self.inner.hub.seqs.subscribe();
        let reached = async {
            rx.wait_for(|cur| cur.iter().zip(seqs.iter()).all(|(c, s)| c >= s))
                .await
                .is_ok()
        };
        tokio::time::timeout(timeout, reached)
            .await
            .unwrap_or(false)
    }

    async fn execute(&self, req: RpcRequest) -> Result<RpcResponse, ClusterError> {
        let timeout_ms = self.inner.cfg.write_timeout_ms;
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let mut pause = Duration::from_millis(RETRY_MIN_MS);
        let mut forward: Option<RpcRequest> = None;
        loop {
            let hint = match self.local(&req).await? {
                Attempt::Done(r) => return Ok(r),
                Attempt::Forward(hint) => hint,
            };
            if let Some((leader, addr)) = hint {
                let fwd =
                    forward.get_or_insert_with(|| RpcRequest::ToLeader(Box::new(req.clone())));
                let left = deadline.saturating_duration_since(Instant::now());
                let wait = left.min(Duration::from_millis(FORWARD_TIMEOUT_MS));
                match self.forward(addr, fwd, wait).await {
                    Ok(RpcResponse::NotLeader(_)) => {
                        debug!(leader, "forward target no longer leads")
                    }
                    Ok(RpcResponse::Failed(e)) => return Err(ClusterError::Rejected(e)),
                    Ok(r) => return Ok(r),
                    Err(e) => debug!(leader, error = %e, "forward to leader failed"),
                }
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Timeout(timeout_ms));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(RETRY_MAX_MS));
        }
    }

    async fn forward(
        &self,
        addr: SocketAddr,
        req: &RpcRequest,
        wait: Duration,
    ) -> Result<RpcResponse, TransportError> {
        let exchange = async {
            let mut s = self.inner.transport.open(addr, StreamKind::Rpc).await?;
            s.send(req).await?;
            let _ = s.finish();
            s.recv::<RpcResponse>()
                .await?
                .ok_or(TransportError::Truncated)
        };
        tokio::time::timeout(wait, exchange)
            .await
            .map_err(|_| TransportError::Timeout)?
    }

    /// Executes `req` here if this core leads.
    async fn local(&self, req: &RpcRequest) -> Result<Attempt, ClusterError> {
        let raft = &self.inner.raft;
        let r = match req {
            RpcRequest::Write(ops) => raft
                .client_write(WriteBatch { ops: ops.clone() })
                .await
                .map(|r| RpcResponse::Written(r.data)),
            RpcRequest::AddMember { id, addr } => {
                match raft
                    .add_learner(*id, BasicNode::new(addr.to_string()), true)
                    .await
                {
                    Ok(_) => raft
                        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*id])), false)
                        .await
                        .map(|_| RpcResponse::Done),
                    Err(e) => Err(e),
                }
            }
            RpcRequest::RemoveMember { id } => raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([*id])), false)
                .await
                .map(|_| RpcResponse::Done),
            RpcRequest::Leader => {
                let leader = self.leader();
                let addr = leader.and_then(|l| self.member_addr(l));
                return Ok(Attempt::Done(RpcResponse::Leader(leader.zip(addr))));
            }
            RpcRequest::ToLeader(_) => {
                return Ok(Attempt::Done(RpcResponse::Failed("nested ToLeader".into())));
            }
        };
        match r {
            Ok(resp) => Ok(Attempt::Done(resp)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Ok(Attempt::Forward(leader_hint(&f)))
            }
            Err(RaftError::APIError(e)) => Err(ClusterError::Rejected(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ClusterError::Stopped(e.to_string())),
        }
    }

    fn member_addr(&self, id: NodeId) -> Option<SocketAddr> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let addr = m
            .membership_config
            .nodes()
            .find(|(n, _)| **n == id)
            .map(|(_, node)| node.addr.clone());
        addr.and_then(|a| a.parse().ok())
    }

    /// The leader this core knows, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    /// Raft state of this core.
    pub fn metrics(&self) -> CoreMetrics {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        CoreMetrics {
            state: m.state,
            current_leader: m.current_leader,
            current_term: m.current_term,
            last_applied: m.last_applied.map(|l| l.index),
            last_log_index: m.last_log_index,
            snapshot: m.snapshot.map(|l| l.index),
            purged: m.purged.map(|l| l.index),
            voters: m.membership_config.voter_ids().collect(),
            nodes: m
                .membership_config
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
        }
    }

    /// A copy of the applied tables.
    pub fn tables(&self) -> Tables {
        self.inner.hub.lock().data.tables.clone()
    }

    /// Runs `f` on the applied tables under the state machine's lock (keep it short).
    pub fn with_tables<R>(&self, f: impl FnOnce(&Tables) -> R) -> R {
        f(&self.inner.hub.lock().data.tables)
    }

    /// Every shard's seq in the local tables.
    pub fn seqs(&self) -> [u64; RlogShard::COUNT] {
        *self.inner.hub.seqs.borrow()
    }

    /// The tables, the tails and a receiver of every entry applied after them, taken atomically.
    pub fn subscribe_entries(&self) -> EntrySubscription {
        let st = self.inner.hub.lock();
        EntrySubscription {
            tables: st.data.tables.clone(),
            tails: st.tails.clone(),
            entries: self.inner.hub.entries.subscribe(),
        }
    }

    /// Runs `f` on the tables and `shard`'s tail, and subscribes to the entries applied after
    /// them, atomically; no copy of the tables is made (for `RlogServer::open`).
    pub fn subscribe_shard<R>(
        &self,
        shard: RlogShard,
        f: impl FnOnce(&Tables, &ShardTail) -> R,
    ) -> (R, broadcast::Receiver<Entry>) {
        let st = self.inner.hub.lock();
        let r = f(&st.data.tables, &st.tails[shard.index()]);
        (r, self.inner.hub.entries.subscribe())
    }

    /// Effective changes of every applied batch (and the full diff of an installed snapshot),
    /// for the data plane. A receiver that lags gets `Lagged` and must resync from
    /// [`CoreGroup::tables`].
    pub fn subscribe_changes(&self) -> broadcast::Receiver<Vec<Change>> {
        self.inner.hub.changes.subscribe()
    }

    /// Stops Raft on this core (the transport stays open; close it separately).
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.raft.shutdown().await {
            warn!(error = %e, "raft shutdown");
        }
    }
}

impl std::fmt::Debug for CoreGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreGroup")
            .field("node_id", &self.inner.cfg.node_id)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};

    use openraft::testing::{StoreBuilder, Suite};
    use openraft::StorageError;

    use super::log_store::LogStore;
    use super::state_machine::StateMachine;
    use super::{NodeId, TypeConfig};

    /// Removes its directory when the test is done.
    struct DirGuard(PathBuf);

    impl Drop for DirGuard {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Builder;

    static N: AtomicU64 = AtomicU64::new(0);

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, DirGuard> for Builder {
        async fn build(&self) -> Result<(DirGuard, LogStore, StateMachine), StorageError<NodeId>> {
            let dir = std::env::temp_dir().join(format!(
                "shardmq-raft-suite-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let log = LogStore::open(&dir).unwrap();
            let (sm, _hub) = StateMachine::open(&dir, 16, 16, 16)?;
            Ok((DirGuard(dir), log, sm))
        }
    }

    /// openraft's own conformance suite for log storage and state machine.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }
}
