//! A node in the cluster: the control plane's side of the data plane link, the route
//! reference counts, the write batcher with read-your-writes waits, change fan-out to the
//! shards, forwarding, RLOG streams, liveness and status.
//!
//! Runs on the control-plane thread's tokio runtime; nothing here is on a shard core.

use crate::forward::{Deliver, Forwarder};
use crate::raft::{ClusterError, CoreConfig, CoreGroup};
use crate::replica::{self, EntrySource, PickFuture, Replica, ServeStats};
use crate::rpc::{RpcRequest, RpcResponse};
use crate::transport::{FramedStream, StreamKind, Transport, TransportConfig};
use crate::Locked;
use serde::{Deserialize, Serialize};
use shardmq_broker::shared::is_shared;
use shardmq_codec::ByteStr;
use shardmq_link::{ControlPlaneLink, FromCluster, SendError, ShardId, ToCluster};
use shardmq_rlog::status::{ClusterStatus, MemberStatus, RlogStatus, ShardStatus};
use shardmq_rlog::{Change, Member, NodeId, Op, RlogShard, Role, Tables};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, warn};

mod clients;
mod session_move;
mod share_weights;

pub use clients::{ClientFacing, ClientNode};

/// A node's cluster settings (the `[cluster]` section and `node.role`).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// This node's id.
    pub node_id: NodeId,
    /// Core or replicant.
    pub role: Role,
    /// QUIC address.
    pub listen: SocketAddr,
    /// Core nodes to start from.
    pub seeds: Vec<(NodeId, SocketAddr)>,
    /// Shared secret.
    pub cookie: String,
    /// Raft log and snapshots, or the replica's snapshot.
    pub data_dir: PathBuf,
    /// Entries a core keeps per RLOG shard.
    pub tail_len: usize,
    /// Keys per bootstrap batch (and live entries per message).
    pub bootstrap_batch: usize,
    /// Ops per raft write.
    pub write_batch_max: usize,
    /// Longest a SUBACK waits for its route to commit.
    pub write_timeout: Duration,
    /// Ordered forwarding streams per peer.
    pub forward_lanes: usize,
    /// Forwarded messages held per peer.
    pub forward_pending_max: usize,
    /// Raft heartbeat.
    pub heartbeat_ms: u64,
    /// Raft election timeout (minimum; maximum is twice).
    pub election_timeout_ms: u64,
    /// How often a replicant saves its tables.
    pub replica_persist: Duration,
    /// This node's HTTP API address, for status (may be empty).
    pub api: String,
    /// A node silent this long has its routes, sessions and retained index entries purged by
    /// the leader; `None` = never.
    pub node_down_purge: Option<Duration>,
    /// Longest a session fetch from another node takes (`cluster.session_move_timeout_ms`).
    pub session_move_timeout: Duration,
    /// What this node's pings tell the others about its clients (`cluster.client_address`).
    pub clients: ClientFacing,
}

/// How often a node checks that the tables hold exactly its own routes, and repairs them.
const ROUTE_AUDIT_INTERVAL: Duration = Duration::from_secs(15);
/// Filters the route audit looks at between two yields of the control thread.
const AUDIT_CHUNK: usize = 10_000;

/// Requests between nodes on `Node` streams: liveness and what a replicant needs to pick a
/// core. One request, one response, per stream.
#[derive(Debug, Serialize, Deserialize)]
enum NodeRequest {
    Ping {
        from: NodeId,
    },
    /// The retained messages the receiver holds as the index's owner, as `RetainedChunk`s and
    /// a final `RetainedEnd`.
    Retained,
    /// Hand this client's session over to the asking node (its connection there has Clean
    /// Start 0), as `SessionFrame`s.
    TakeSession {
        client_id: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
enum RetainedFrame {
    Chunk {
        #[serde(with = "serde_bytes")]
        packets: Vec<u8>,
    },
    End,
}

/// Longest a restarted node waits for its tables to catch up with the cores before checking
/// the sessions it restored against them.
const RESTORE_CHECK_WAIT: Duration = Duration::from_secs(5);
/// How long `leave` waits for this node's own queued and in-flight writes before it purges
/// the node: a route write retried after a lost answer would otherwise land after the purge
/// and put the node's routes back.
const LEAVE_DRAIN_WAIT: Duration = Duration::from_secs(10);

/// Bytes of retained PUBLISH packets per frame when a node hands its retained messages over.
const RETAINED_CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
struct Pong {
    role: Role,
    leader: Option<NodeId>,
    replicants: u64,
    seqs: [u64; RlogShard::COUNT],
    clients: clients::ClientsPong,
}

enum Backend {
    Core(CoreGroup),
    Replicant(Arc<Replica>),
}

/// A route this node has subscribers for: how many shards, and the write that adds it while
/// it is in flight.
struct RouteRef {
    shards: u32,
    pending_write: Option<u64>,
}

struct Writer {
    queue: Mutex<VecDeque<(u64, Op)>>,
    notify: Notify,
    next_id: AtomicU64,
    /// Write id → SUBACKs waiting for it.
    waiters: Mutex<HashMap<u64, Vec<(ShardId, u64)>>>,
    /// Write id → the filter whose first `RouteAdd` it is, until committed.
    pending_routes: Mutex<HashMap<u64, String>>,
    /// Ops of the batch being written (0 between batches).
    in_flight: AtomicU64,
    writes: AtomicU64,
    ops: AtomicU64,
    failures: AtomicU64,
    timeouts: AtomicU64,
    dropped: AtomicU64,
}

/// Most ops queued for raft writes before session and retained-index updates are dropped.
const WRITE_QUEUE_MAX: usize = 1_000_000;

struct Inner {
    s: ClusterSettings,
    transport: Transport,
    backend: Backend,
    link: ControlPlaneLink,
    forwarder: Forwarder,
    writer: Writer,
    routes: Mutex<HashMap<String, RouteRef>>,
    /// Last time each node answered a ping.
    seen: Mutex<HashMap<NodeId, (Instant, Pong)>>,
    /// Nodes this leader purged while they were down (purged once per absence).
    purged: Mutex<std::collections::HashSet<NodeId>>,
    /// When this node first saw each member listed in the tables.
    noticed: Mutex<HashMap<NodeId, Instant>>,
    serve_stats: ServeStats,
    left: watch::Sender<bool>,
    started: Instant,
    extra_cores: Mutex<Vec<(NodeId, SocketAddr)>>,
    /// Retained dumps asked of the data plane, by request id.
    /// The parts received so far, and where the whole goes once the last part came.
    #[allow(clippy::type_complexity)]
    dumps: Mutex<
        HashMap<
            u64,
            (
                Vec<Arc<shardmq_broker::Message>>,
                tokio::sync::oneshot::Sender<Vec<Arc<shardmq_broker::Message>>>,
            ),
        >,
    >,
    next_dump: AtomicU64,
    /// Session move-outs asked of the data plane, by request id.
    moves: Mutex<HashMap<u64, session_move::MoveOut>>,
    /// Sessions restored from storage before this node's tables were synced, waiting for
    /// the check against the tables; `None` once synced (restores are then checked at once).
    restored: Mutex<Option<Vec<(ShardId, ByteStr)>>>,
    next_move: AtomicU64,
    move_stats: session_move::MoveStats,
}

/// A running cluster member. Cheap to clone.
#[derive(Clone)]
pub struct ClusterNode {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClusterNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterNode")
            .field("node", &self.inner.s.node_id)
            .finish()
    }
}

impl ClusterNode {
    /// Joins the cluster: binds QUIC, starts the core group or the replica, and serves the
    /// data plane's link. Must run inside the control thread's tokio runtime.
    pub async fn start(
        s: ClusterSettings,
        link: ControlPlaneLink,
    ) -> Result<ClusterNode, ClusterError> {
        let (link, uplink) = link.take_uplink();
        let transport =
            Transport::bind(TransportConfig::new(s.node_id, s.listen, s.cookie.clone()))?;
        let forwarder = Forwarder::new(
            s.node_id,
            transport.clone(),
            s.forward_lanes,
            s.forward_pending_max,
        );
        let backend = match s.role {
            Role::Core => {
                let mut members: BTreeMap<NodeId, SocketAddr> = s.seeds.iter().copied().collect();
                if members.is_empty() {
                    members.insert(s.node_id, transport.local_addr());
                }
                let cfg = CoreConfig {
                    node_id: s.node_id,
                    addr: transport.local_addr(),
                    data_dir: s.data_dir.clone(),
                    members,
                    tail_len: s.tail_len,
                    heartbeat_ms: s.heartbeat_ms,
                    election_timeout_ms: (s.election_timeout_ms, s.election_timeout_ms * 2),
                    snapshot_logs: 10_000,
                    write_timeout_ms: s.write_timeout.as_millis() as u64,
                };
                Backend::Core(CoreGroup::start(cfg, transport.clone()).await?)
            }
            Role::Replicant => Backend::Replicant(Arc::new(Replica::open(s.node_id, &s.data_dir))),
        };
        let (left, _) = watch::channel(false);
        let node = ClusterNode {
            inner: Arc::new(Inner {
                transport,
                backend,
                link,
                forwarder,
                writer: Writer {
                    queue: Mutex::new(VecDeque::new()),
                    notify: Notify::new(),
                    next_id: AtomicU64::new(1),
                    waiters: Mutex::new(HashMap::new()),
                    pending_routes: Mutex::new(HashMap::new()),
                    in_flight: AtomicU64::new(0),
                    writes: AtomicU64::new(0),
                    ops: AtomicU64::new(0),
                    failures: AtomicU64::new(0),
                    timeouts: AtomicU64::new(0),
                    dropped: AtomicU64::new(0),
                },
                routes: Mutex::new(HashMap::new()),
                seen: Mutex::new(HashMap::new()),
                purged: Mutex::new(Default::default()),
                noticed: Mutex::new(HashMap::new()),
                serve_stats: ServeStats::default(),
                left,
                started: Instant::now(),
                extra_cores: Mutex::new(Vec::new()),
                dumps: Mutex::new(HashMap::new()),
                next_dump: AtomicU64::new(1),
                moves: Mutex::new(HashMap::new()),
                restored: Mutex::new(Some(Vec::new())),
                next_move: AtomicU64::new(1),
                move_stats: Default::default(),
                s,
            }),
        };
        node.run(uplink).await;
        Ok(node)
    }

    fn me(&self) -> NodeId {
        self.inner.s.node_id
    }

    /// The QUIC address this node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.transport.local_addr()
    }

    async fn run(&self, uplink: mpsc::Receiver<Vec<ToCluster>>) {
        let (changes_tx, changes_rx) = mpsc::unbounded_channel::<Vec<Change>>();
        // Tables already there (a core's log, a replicant's snapshot) reach the shards first;
        // later changes are idempotent on top of them.
        match &self.inner.backend {
            Backend::Core(core) => {
                let mut rx = core.subscribe_changes();
                let initial = core.with_tables(initial_changes);
                let _ = changes_tx.send(initial);
                let tx = changes_tx.clone();
                let me = self.clone();
                tokio::spawn(async move {
                    loop {
                        match rx.recv().await {
                            Ok(ch) => {
                                if tx.send(ch).is_err() {
                                    return;
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                                warn!(
                                    missed = n,
                                    "change stream lagged; resyncing the shards' routes"
                                );
                                let Backend::Core(core) = &me.inner.backend else {
                                    return;
                                };
                                let full = core.with_tables(initial_changes);
                                me.broadcast(|| vec![FromCluster::ClearRoutes]).await;
                                if tx.send(full).is_err() {
                                    return;
                                }
                            }
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        }
                    }
                });
            }
            Backend::Replicant(replica) => {
                let initial = initial_changes(&replica.tables.locked());
                let _ = changes_tx.send(initial);
                for &shard in &RlogShard::ALL {
                    let me = self.clone();
                    let pick: Arc<dyn Fn() -> PickFuture + Send + Sync> = Arc::new(move || {
                        let me = me.clone();
                        Box::pin(async move { me.pick_core().await })
                    });
                    tokio::spawn(replica.clone().follow(
                        shard,
                        self.inner.transport.clone(),
                        pick,
                        changes_tx.clone(),
                        self.inner.left.subscribe(),
                    ));
                }
                // SIGTERM/SIGINT: the replica is saved first, so a restart resumes from it.
                let r = replica.clone();
                tokio::spawn(async move {
                    use tokio::signal::unix::{signal, SignalKind};
                    let (Ok(mut term), Ok(mut int)) = (
                        signal(SignalKind::terminate()),
                        signal(SignalKind::interrupt()),
                    ) else {
                        warn!(
                            "cannot watch SIGTERM/SIGINT: the replica is saved only periodically"
                        );
                        return;
                    };
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                    r.mark_dirty();
                    match r.persist() {
                        Ok(()) => info!("replica saved; exiting"),
                        Err(e) => warn!(error = %e, "cannot save the replica snapshot; exiting"),
                    }
                    std::process::exit(0);
                });
                let r = replica.clone();
                let every = self.inner.s.replica_persist;
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        if let Err(e) = r.persist() {
                            warn!(error = %e, "cannot save the replica snapshot");
                        }
                    }
                });
            }
        }
        tokio::spawn(self.clone().apply_changes(changes_rx));
        tokio::spawn(self.clone().accept_loop());
        tokio::spawn(self.clone().uplink_loop(uplink));
        tokio::spawn(self.clone().write_loop());
        tokio::spawn(self.clone().ping_loop());
        tokio::spawn(self.clone().route_audit_loop());
        tokio::spawn(self.clone().fetch_retained_once_synced());
        // A restarted node's old routes and sessions are stale: its data plane starts empty.
        let me = self.me();
        self.enqueue(Op::RoutePurge { node: me });
        self.enqueue(Op::SessionPurge { node: me });
        self.enqueue(Op::RetainPurge { node: me });
        self.enqueue(Op::MemberSet {
            node: me,
            member: self.member(),
        });
        if self.inner.s.role == Role::Core
            && !self.inner.s.seeds.iter().any(|(n, _)| *n == me)
            && !self.inner.s.seeds.is_empty()
        {
            // A core that is not an initial voter asks the seeds to add it.
            let me = self.clone();
            tokio::spawn(async move {
                let seeds = me.inner.s.seeds.clone();
                loop {
                    for &(id, addr) in &seeds {
                        match me.add_self_via(addr).await {
                            Ok(()) => {
                                info!(seed = id, "joined the core group");
                                return;
                            }
                            Err(e) => debug!(seed = id, error = %e, "join via seed failed"),
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
    }

    fn member(&self) -> Member {
        Member {
            addr: self.inner.transport.local_addr().to_string(),
            role: self.inner.s.role,
            api: self.inner.s.api.clone(),
        }
    }

    // ---- the data plane link -----------------------------------------------------------

    async fn send_shard(&self, shard: ShardId, mut batch: Vec<FromCluster>) {
        loop {
            match self.inner.link.try_send(shard, batch) {
                Ok(()) => return,
                Err(SendError::Full(b)) => {
                    batch = b;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(SendError::Closed) => return,
            }
        }
    }

    async fn broadcast(&self, make: impl Fn() -> Vec<FromCluster>) {
        for shard in 0..self.inner.link.shards() {
            let batch = make();
            if !batch.is_empty() {
                self.send_shard(shard, batch).await;
            }
        }
    }

    async fn uplink_loop(self, mut uplink: mpsc::Receiver<Vec<ToCluster>>) {
        let me = self.me();
        let mut weights = share_weights::ShareWeights::default();
        loop {
            // Shared-group weights are written when due, between batches.
            let batch = match weights.deadline() {
                Some(at) => tokio::select! {
                    b = uplink.recv() => b.map(Some),
                    _ = tokio::time::sleep_until(at.into()) => Some(None),
                },
                None => uplink.recv().await.map(Some),
            };
            for op in weights.poll(Instant::now(), me) {
                self.enqueue(op);
            }
            let batch = match batch {
                None => return,
                Some(None) => continue,
                Some(Some(b)) => b,
            };
            let mut commits: Vec<(ShardId, u64)> = Vec::new();
            // Writes that SUBACKs now wait for: answered at cluster.write_timeout_ms at the
            // latest, even while earlier writes are still retrying.
            let mut awaited: Vec<u64> = Vec::new();
            for m in batch {
                match m {
                    ToCluster::RouteAdd {
                        filter,
                        shard,
                        sync,
                    } => {
                        let mut routes = self.inner.routes.locked();
                        let r = routes.entry(filter.to_string()).or_insert(RouteRef {
                            shards: 0,
                            pending_write: None,
                        });
                        r.shards += 1;
                        if r.shards == 1 {
                            let id = self.enqueue(Op::RouteAdd {
                                filter: filter.to_string(),
                                node: me,
                            });
                            r.pending_write = Some(id);
                            self.inner
                                .writer
                                .pending_routes
                                .locked()
                                .insert(id, filter.to_string());
                        }
                        match (sync, r.pending_write) {
                            (Some(token), Some(id)) => {
                                self.inner
                                    .writer
                                    .waiters
                                    .locked()
                                    .entry(id)
                                    .or_default()
                                    .push((shard, token));
                                awaited.push(id);
                            }
                            (Some(token), None) => commits.push((shard, token)),
                            (None, _) => {}
                        }
                    }
                    ToCluster::RouteDel { filter, .. } => {
                        let mut routes = self.inner.routes.locked();
                        if let Some(r) = routes.get_mut(filter.as_str()) {
                            r.shards = r.shards.saturating_sub(1);
                            if r.shards == 0 {
                                routes.remove(filter.as_str());
                                if is_shared(&filter) {
                                    weights.forget(&filter);
                                }
                                self.enqueue(Op::RouteDel {
                                    filter: filter.to_string(),
                                    node: me,
                                });
                            }
                        }
                    }
                    ToCluster::ShareOnline {
                        share,
                        shard,
                        online,
                    } => weights.set(Instant::now(), &share, shard, online),
                    ToCluster::Forward { nodes, msg } => {
                        for n in nodes {
                            self.inner.forwarder.send(n, &msg, None);
                        }
                    }
                    ToCluster::ForwardShared { node, share, msg } => {
                        self.inner.forwarder.send(node, &msg, Some(share));
                    }
                    ToCluster::RetainSet { topic } => {
                        if self.tables(|t| t.retained_owner(&topic)) != Some(me) {
                            self.enqueue(Op::RetainSet {
                                topic: topic.to_string(),
                                node: me,
                            });
                        }
                    }
                    ToCluster::RetainDel { topic } => {
                        if self.tables(|t| t.retained_owner(&topic)).is_some() {
                            self.enqueue(Op::RetainDel {
                                topic: topic.to_string(),
                            });
                        }
                    }
                    ToCluster::RetainedDump {
                        request,
                        msgs,
                        done,
                    } => {
                        let mut dumps = self.inner.dumps.locked();
                        if let Some((parts, _)) = dumps.get_mut(&request) {
                            parts.extend(msgs);
                        }
                        if done {
                            if let Some((parts, w)) = dumps.remove(&request) {
                                let _ = w.send(parts);
                            }
                        }
                    }
                    ToCluster::SessionSet { client_id } => {
                        self.enqueue(Op::SessionSet {
                            client_id: client_id.to_string(),
                            node: me,
                        });
                    }
                    ToCluster::SessionDel { client_id } => {
                        self.enqueue(Op::SessionDel {
                            client_id: client_id.to_string(),
                            node: me,
                        });
                    }
                    ToCluster::SessionFetch {
                        client_id,
                        shard,
                        token,
                    } => self.session_fetch(client_id, shard, token),
                    ToCluster::SessionRestored { client_id, shard } => {
                        let now = match self.inner.restored.locked().as_mut() {
                            Some(waiting) => {
                                waiting.push((shard, client_id));
                                None
                            }
                            None => Some((shard, client_id)),
                        };
                        if let Some(r) = now {
                            self.check_restored(vec![r]).await;
                        }
                    }
                    ToCluster::SessionMovedOut { request, image } => {
                        self.session_moved_out(request, image)
                    }
                }
            }
            if !awaited.is_empty() {
                let me = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(me.inner.s.write_timeout).await;
                    let released = me.release(&awaited).await;
                    if released > 0 {
                        me.inner.writer.timeouts.fetch_add(1, Ordering::Relaxed);
                        warn!(released, "route write not committed within cluster.write_timeout_ms; SUBACK sent anyway");
                    }
                });
            }
            for (shard, token) in commits {
                self.send_shard(shard, vec![FromCluster::RouteCommitted { token }])
                    .await;
            }
        }
    }

    // ---- writes --------------------------------------------------------------------------

    /// Queues `op` for the next raft write; returns its write id. Over `WRITE_QUEUE_MAX`
    /// queued ops (the cluster has been unwritable for long), session and retained-index ops
    /// are dropped and counted; route ops never are (there is at most one per filter and
    /// change, and the route audit repairs the rest).
    fn enqueue(&self, op: Op) -> u64 {
        let w = &self.inner.writer;
        let id = w.next_id.fetch_add(1, Ordering::Relaxed);
        let mut q = w.queue.locked();
        if q.len() >= WRITE_QUEUE_MAX && !matches!(op, Op::RouteAdd { .. } | Op::RouteDel { .. }) {
            let n = w.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                warn!(
                    dropped = n,
                    "cluster write queue full: session and retained index updates dropped"
                );
            }
            return id;
        }
        q.push_back((id, op));
        drop(q);
        w.notify.notify_one();
        id
    }

    /// Takes batches of queued ops, writes each through the cluster (retrying until it
    /// commits), waits until this node has applied it, then answers the SUBACKs waiting.
    async fn write_loop(self) {
        let w = &self.inner.writer;
        loop {
            let batch: Vec<(u64, Op)> = {
                let mut q = w.queue.locked();
                let n = q.len().min(self.inner.s.write_batch_max);
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                w.notify.notified().await;
                continue;
            }
            let ids: Vec<u64> = batch.iter().map(|(id, _)| *id).collect();
            let ops: Vec<Op> = batch.into_iter().map(|(_, op)| op).collect();
            w.in_flight.store(ops.len() as u64, Ordering::Relaxed);
            let mut backoff = Duration::from_millis(50);
            let seqs = loop {
                match self.write(ops.clone()).await {
                    Ok(seqs) => break seqs,
                    Err(e) => {
                        w.failures.fetch_add(1, Ordering::Relaxed);
                        debug!(error = %e, ops = ops.len(), "cluster write failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            };
            w.writes.fetch_add(1, Ordering::Relaxed);
            w.ops.fetch_add(ops.len() as u64, Ordering::Relaxed);
            w.in_flight.store(0, Ordering::Relaxed);
            self.wait_applied(seqs).await;
            self.committed(&ids);
            self.release(&ids).await;
        }
    }

    /// The writes `ids` are committed and applied here: their routes are no longer pending
    /// (a later subscriber's SUBACK need not wait). Costs one lookup per route write.
    fn committed(&self, ids: &[u64]) {
        let mut pending = self.inner.writer.pending_routes.locked();
        let mut routes = self.inner.routes.locked();
        for id in ids {
            if let Some(filter) = pending.remove(id) {
                if let Some(r) = routes.get_mut(&filter) {
                    if r.pending_write == Some(*id) {
                        r.pending_write = None;
                    }
                }
            }
        }
    }

    /// Answers the SUBACKs waiting for `ids`; returns how many.
    async fn release(&self, ids: &[u64]) -> usize {
        let waiting: Vec<(ShardId, u64)> = {
            let mut waiters = self.inner.writer.waiters.locked();
            ids.iter()
                .filter_map(|id| waiters.remove(id))
                .flatten()
                .collect()
        };
        let n = waiting.len();
        for (shard, token) in waiting {
            self.send_shard(shard, vec![FromCluster::RouteCommitted { token }])
                .await;
        }
        n
    }

    /// One write through the cluster: on a core, its group (which forwards to the leader);
    /// on a replicant, an RPC to a core.
    async fn write(&self, ops: Vec<Op>) -> Result<[u64; RlogShard::COUNT], String> {
        match &self.inner.backend {
            Backend::Core(core) => core
                .write(ops)
                .await
                .map(|r| r.seqs)
                .map_err(|e| e.to_string()),
            Backend::Replicant(_) => {
                let (_, addr) = self.pick_core().await.ok_or("no core reachable")?;
                match rpc_call(&self.inner.transport, addr, &RpcRequest::Write(ops)).await? {
                    RpcResponse::Written(r) => Ok(r.seqs),
                    RpcResponse::Failed(e) => Err(e),
                    other => Err(format!("unexpected answer to a write: {other:?}")),
                }
            }
        }
    }

    fn local_seqs(&self) -> [u64; RlogShard::COUNT] {
        match &self.inner.backend {
            Backend::Core(core) => core.with_tables(|t| t.seqs()),
            Backend::Replicant(r) => *r.applied.borrow(),
        }
    }

    /// Waits until this node's tables have applied `seqs` (read-your-writes).
    async fn wait_applied(&self, seqs: [u64; RlogShard::COUNT]) {
        let reached = |have: &[u64; RlogShard::COUNT]| have.iter().zip(&seqs).all(|(h, w)| h >= w);
        match &self.inner.backend {
            Backend::Core(core) => {
                while !core.wait_applied(seqs, Duration::from_secs(5)).await {
                    debug!(?seqs, "still waiting for this core to apply a write");
                }
            }
            Backend::Replicant(r) => {
                let mut rx = r.applied.subscribe();
                while !reached(&rx.borrow_and_update()) {
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    // ---- changes to the shards -------------------------------------------------------------

    async fn apply_changes(self, mut rx: mpsc::UnboundedReceiver<Vec<Change>>) {
        let me = self.me();
        while let Some(changes) = rx.recv().await {
            let mut routes: Vec<(ByteStr, NodeId, RouteNote)> = Vec::new();
            let mut evict: Vec<ByteStr> = Vec::new();
            let mut unclaimed: Vec<ByteStr> = Vec::new();
            let mut readd: Vec<String> = Vec::new();
            let mut members_changed = false;
            for c in changes {
                match c {
                    Change::RouteAdded { filter, node } if node != me => {
                        routes.push((ByteStr::from(filter), node, RouteNote::Added))
                    }
                    Change::RouteRemoved { filter, node } if node != me => {
                        routes.push((ByteStr::from(filter), node, RouteNote::Removed))
                    }
                    Change::ShareWeight {
                        filter,
                        node,
                        online,
                    } if node != me => {
                        routes.push((ByteStr::from(filter), node, RouteNote::Weight(online)))
                    }
                    Change::SessionOwner {
                        client_id,
                        node: Some(node),
                        ..
                    } if node != me => evict.push(ByteStr::from(client_id)),
                    // Ours, unregistered by a purge (this node was down or cut off): the
                    // shard holding it registers it again. After a SessionDel of our own the
                    // shards no longer hold it and ignore this.
                    Change::SessionOwner {
                        client_id,
                        node: None,
                        previous: Some(p),
                    } if p == me => unclaimed.push(ByteStr::from(client_id)),
                    // Ours, removed by a purge while this node still has subscribers: written
                    // again at once rather than at the next route audit.
                    Change::RouteRemoved { filter, node }
                        if node == me && self.inner.routes.locked().contains_key(&filter) =>
                    {
                        readd.push(filter)
                    }
                    Change::MemberChanged { node, member } => {
                        members_changed = true;
                        if node != me {
                            let addr = member.and_then(|m| m.addr.parse().ok());
                            match addr {
                                Some(a) => self.inner.forwarder.set_peer(node, Some(a)),
                                None => self.inner.forwarder.remove_peer(node),
                            }
                        }
                    }
                    _ => {}
                }
            }
            if !readd.is_empty() {
                info!(
                    routes = readd.len(),
                    "this node's routes were purged while it has subscribers: writing them again"
                );
                for filter in readd {
                    self.enqueue(Op::RouteAdd { filter, node: me });
                }
            }
            if !unclaimed.is_empty() {
                info!(
                    sessions = unclaimed.len(),
                    "this node's sessions were purged: registering those it still holds again"
                );
            }
            let peers = members_changed.then(|| self.peer_ids());
            self.broadcast(|| {
                let mut batch: Vec<FromCluster> = routes
                    .iter()
                    .map(|(filter, node, note)| note.message(filter.clone(), *node))
                    .collect();
                batch.extend(evict.iter().map(|c| FromCluster::SessionTakenOver {
                    client_id: c.clone(),
                }));
                batch.extend(unclaimed.iter().map(|c| FromCluster::SessionUnclaimed {
                    client_id: c.clone(),
                }));
                if let Some(p) = &peers {
                    batch.push(FromCluster::Peers(p.clone()));
                }
                batch
            })
            .await;
        }
    }

    fn tables<R>(&self, f: impl FnOnce(&Tables) -> R) -> R {
        match &self.inner.backend {
            Backend::Core(core) => core.with_tables(f),
            Backend::Replicant(r) => f(&r.tables.locked()),
        }
    }

    fn peer_ids(&self) -> Vec<NodeId> {
        if *self.inner.left.borrow() {
            return Vec::new();
        }
        let me = self.me();
        self.tables(|t| t.members().keys().copied().filter(|&n| n != me).collect())
    }

    // ---- accepting streams -------------------------------------------------------------------

    async fn accept_loop(self) {
        while let Some(a) = self.inner.transport.accept().await {
            let me = self.clone();
            tokio::spawn(async move {
                match a.kind {
                    StreamKind::Raft => match &me.inner.backend {
                        Backend::Core(core) => core.handle_raft_stream(a.stream).await,
                        Backend::Replicant(_) => {
                            warn!(peer = a.peer_node, "raft stream to a replicant; ignored")
                        }
                    },
                    StreamKind::Rpc => match &me.inner.backend {
                        Backend::Core(core) => core.handle_rpc_stream(a.stream).await,
                        Backend::Replicant(_) => {
                            warn!(peer = a.peer_node, "rpc stream to a replicant; ignored")
                        }
                    },
                    StreamKind::Rlog => match &me.inner.backend {
                        Backend::Core(core) => {
                            replica::serve(
                                core,
                                &me.inner.serve_stats,
                                a.stream,
                                a.peer_node,
                                me.inner.s.bootstrap_batch,
                            )
                            .await
                        }
                        Backend::Replicant(_) => {
                            warn!(peer = a.peer_node, "rlog stream to a replicant; ignored")
                        }
                    },
                    StreamKind::Forward => {
                        me.inner.forwarder.serve(a.stream, &me).await;
                    }
                    StreamKind::Node => me.serve_node(a.stream, a.peer_node).await,
                }
            });
        }
    }

    async fn serve_node(&self, mut stream: FramedStream, peer: NodeId) {
        match stream.recv::<NodeRequest>().await {
            Ok(Some(NodeRequest::Retained)) => {
                if let Err(e) = self.send_retained(&mut stream).await {
                    debug!(peer, error = %e, "retained hand-over failed");
                }
                let _ = stream.finish();
            }
            Ok(Some(NodeRequest::TakeSession { client_id })) => {
                if let Err(e) = self.serve_take_session(&mut stream, client_id).await {
                    warn!(peer, error = %e, "session hand-over failed");
                }
                let _ = stream.finish();
            }
            Ok(Some(NodeRequest::Ping { .. })) => {
                let pong = self.pong();
                if let Err(e) = stream.send(&pong).await {
                    debug!(peer, error = %e, "cannot answer a ping");
                }
                let _ = stream.finish();
            }
            Ok(None) => {}
            Err(e) => debug!(peer, error = %e, "bad node request"),
        }
    }

    /// This node's retained messages (every shard holds them all; shard 0 answers).
    async fn dump_retained(&self) -> Option<Vec<Arc<shardmq_broker::Message>>> {
        let request = self.inner.next_dump.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner.dumps.locked().insert(request, (Vec::new(), tx));
        self.send_shard(0, vec![FromCluster::DumpRetained { request }])
            .await;
        let r = tokio::time::timeout(Duration::from_secs(10), rx).await;
        self.inner.dumps.locked().remove(&request);
        r.ok().and_then(Result::ok)
    }

    /// Answers `NodeRequest::Retained`: the retained messages the index says this node owns.
    async fn send_retained(&self, stream: &mut FramedStream) -> Result<(), String> {
        let msgs = self
            .dump_retained()
            .await
            .ok_or("the data plane did not answer")?;
        let me = self.me();
        let now = Instant::now();
        let mut buf = bytes::BytesMut::new();
        let owned: Vec<_> = self.tables(|t| {
            msgs.into_iter()
                .filter(|m| t.retained_owner(&m.topic) == Some(me))
                .collect()
        });
        for m in owned {
            crate::forward::encode_message(&m, now, &mut buf);
            if buf.len() >= RETAINED_CHUNK_BYTES {
                let packets = buf.split().to_vec();
                stream
                    .send(&RetainedFrame::Chunk { packets })
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        if !buf.is_empty() {
            let packets = buf.split().to_vec();
            stream
                .send(&RetainedFrame::Chunk { packets })
                .await
                .map_err(|e| e.to_string())?;
        }
        stream
            .send(&RetainedFrame::End)
            .await
            .map_err(|e| e.to_string())
    }

    /// Once this node follows the tables, fetch the retained messages other nodes own (they
    /// were published before this node started) and store them here.
    async fn fetch_retained_once_synced(self) {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let synced = match &self.inner.backend {
                Backend::Core(core) => core.leader().is_some(),
                Backend::Replicant(r) => r
                    .states()
                    .iter()
                    .all(|s| s.0 == shardmq_rlog::ShardState::Normal),
            };
            if synced {
                break;
            }
        }
        // At least as new as what the cores that answered a ping since this start had applied
        // (so a session that moved while this node was down is seen to have moved).
        let newest = async {
            loop {
                let seqs = {
                    let seen = self.inner.seen.locked();
                    seen.values()
                        .filter(|(_, p)| p.role == Role::Core)
                        .map(|(_, p)| p.seqs)
                        .reduce(|a, b| std::array::from_fn(|i| a[i].max(b[i])))
                };
                match seqs {
                    Some(s) => break self.wait_applied(s).await,
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        };
        let me = self.me();
        let other_cores = self.tables(|t| {
            t.members()
                .iter()
                .any(|(&n, m)| n != me && m.role == Role::Core)
        });
        if other_cores
            && tokio::time::timeout(RESTORE_CHECK_WAIT, newest)
                .await
                .is_err()
        {
            warn!("tables not caught up with the cores within {RESTORE_CHECK_WAIT:?}; checking restored sessions against them anyway");
        }
        let waiting = self.inner.restored.locked().take().unwrap_or_default();
        self.check_restored(waiting).await;
        let owners: BTreeMap<NodeId, SocketAddr> = self.tables(|t| {
            t.retained_owners()
                .filter(|&n| n != me)
                .filter_map(|n| Some((n, t.members().get(&n)?.addr.parse().ok()?)))
                .collect()
        });
        for (node, addr) in owners {
            match self.fetch_retained_from(addr).await {
                Ok(n) => info!(node, messages = n, "retained messages fetched"),
                Err(e) => warn!(node, error = %e, "cannot fetch retained messages"),
            }
        }
    }

    /// Sessions restored from storage, checked against the synced tables: registered here,
    /// unless the tables place the session on another node that is still a member (its client
    /// moved on while this node was down), whose shard then drops its stale copy.
    async fn check_restored(&self, restored: Vec<(ShardId, ByteStr)>) {
        let me = self.me();
        let mut stale = 0usize;
        for (shard, client_id) in restored {
            let elsewhere = self.tables(|t| {
                t.session_owner(&client_id)
                    .filter(|&n| n != me && t.members().contains_key(&n))
            });
            match elsewhere {
                Some(owner) => {
                    stale += 1;
                    debug!(client_id = %client_id, owner, "restored session lives on another node");
                    self.send_shard(shard, vec![FromCluster::SessionStale { client_id }])
                        .await;
                }
                None => {
                    self.enqueue(Op::SessionSet {
                        client_id: client_id.to_string(),
                        node: me,
                    });
                }
            }
        }
        if stale > 0 {
            info!(
                stale,
                "restored sessions dropped: their clients moved to other nodes"
            );
        }
    }

    /// Opens a Node stream to `addr` and sends `request` on it, for its answer.
    async fn node_request(
        &self,
        addr: SocketAddr,
        request: &NodeRequest,
    ) -> Result<FramedStream, String> {
        let mut s = self
            .inner
            .transport
            .open(addr, StreamKind::Node)
            .await
            .map_err(|e| e.to_string())?;
        s.send(request).await.map_err(|e| e.to_string())?;
        Ok(s)
    }

    async fn fetch_retained_from(&self, addr: SocketAddr) -> Result<usize, String> {
        let mut s = self.node_request(addr, &NodeRequest::Retained).await?;
        let mut decoder =
            shardmq_codec::Decoder::with_protocol(shardmq_codec::Protocol::V5, 256 << 20);
        let mut n = 0;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), s.recv::<RetainedFrame>())
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())?;
            match frame {
                Some(RetainedFrame::Chunk { packets }) => {
                    let msgs =
                        crate::forward::decode_batch(&mut decoder, packets, &[], Instant::now())?;
                    n += msgs.len();
                    let msgs = msgs.into_iter().map(|(m, _)| m).collect();
                    self.send_shard(0, vec![FromCluster::StoreRetained(msgs)])
                        .await;
                }
                Some(RetainedFrame::End) | None => return Ok(n),
            }
        }
    }

    fn pong(&self) -> Pong {
        Pong {
            role: self.inner.s.role,
            leader: self.leader(),
            replicants: self.inner.serve_stats.replicants[0].load(Ordering::Relaxed),
            seqs: self.local_seqs(),
            clients: self.inner.s.clients.pong(),
        }
    }

    fn leader(&self) -> Option<NodeId> {
        match &self.inner.backend {
            Backend::Core(core) => core.leader(),
            Backend::Replicant(r) => {
                let up = r.upstream.locked().map(|(n, _)| n);
                let seen = self.inner.seen.locked();
                up.and_then(|n| seen.get(&n)).and_then(|(_, p)| p.leader)
            }
        }
    }

    async fn ping(&self, addr: SocketAddr) -> Result<Pong, String> {
        let fut = async {
            let mut s = self
                .node_request(addr, &NodeRequest::Ping { from: self.me() })
                .await?;
            s.recv::<Pong>()
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "no answer".to_string())
        };
        tokio::time::timeout(Duration::from_millis(1000), fut)
            .await
            .map_err(|_| "ping timed out".to_string())?
    }

    /// Every node this one knows an address for: the seeds, the seeds given to `join`, and the
    /// members in the tables (only the cores among them with `cores_only`).
    fn known_nodes(&self, cores_only: bool) -> BTreeMap<NodeId, SocketAddr> {
        let mut nodes: BTreeMap<NodeId, SocketAddr> = self.inner.s.seeds.iter().copied().collect();
        nodes.extend(self.inner.extra_cores.locked().iter().copied());
        self.tables(|t| {
            for (id, m) in t.members() {
                if cores_only && m.role != Role::Core {
                    continue;
                }
                if let Ok(a) = m.addr.parse() {
                    nodes.insert(*id, a);
                }
            }
        });
        nodes
    }

    /// Every second: ping every other member (and the seeds), for liveness, leaders and lag.
    async fn ping_loop(self) {
        loop {
            let mut targets = self.known_nodes(false);
            targets.remove(&self.me());
            for (id, addr) in targets {
                let me = self.clone();
                tokio::spawn(async move {
                    if let Ok(p) = me.ping(addr).await {
                        me.inner.seen.locked().insert(id, (Instant::now(), p));
                    }
                });
            }
            self.purge_down_nodes();
            tokio::time::sleep(crate::timeouts::PING_INTERVAL).await;
        }
    }

    /// On the leader: a member silent for `node_down_purge` loses its routes, sessions and
    /// retained index entries (once per absence; it stays a member).
    fn purge_down_nodes(&self) {
        let Some(grace) = self.inner.s.node_down_purge else {
            return;
        };
        let Backend::Core(core) = &self.inner.backend else {
            return;
        };
        if core.leader() != Some(self.me()) || self.inner.started.elapsed() < grace {
            return;
        }
        let me = self.me();
        let members: Vec<NodeId> = self.tables(|t| t.members().keys().copied().collect());
        let seen = self.inner.seen.locked();
        let mut purged = self.inner.purged.locked();
        let mut noticed = self.inner.noticed.locked();
        for node in members.into_iter().filter(|&n| n != me) {
            // A member never heard from counts from when this node first saw it listed (a
            // node that just joined is not down).
            let since = seen
                .get(&node)
                .map(|(at, _)| *at)
                .unwrap_or_else(|| *noticed.entry(node).or_insert_with(Instant::now));
            let down = since.elapsed() >= grace;
            if !down {
                purged.remove(&node);
            } else if purged.insert(node) {
                warn!(
                    node,
                    grace_ms = grace.as_millis() as u64,
                    "node down: removing its routes, sessions and retained index entries"
                );
                self.enqueue(Op::RoutePurge { node });
                self.enqueue(Op::SessionPurge { node });
                self.enqueue(Op::RetainPurge { node });
            }
        }
    }

    /// Now and then: the tables must hold exactly this node's routes (a purge while it was
    /// unreachable, or a write lost at a timeout, is repaired here). The walk goes in chunks of
    /// `AUDIT_CHUNK` filters and yields between them, so a table of millions of routes never
    /// holds the control thread (Raft heartbeats, forwarding) for long.
    async fn route_audit_loop(self) {
        let me = self.me();
        loop {
            tokio::time::sleep(ROUTE_AUDIT_INTERVAL).await;
            if *self.inner.left.borrow() || !self.writer_idle() {
                continue;
            }
            // 1. Ours, missing from the tables.
            let ours: Vec<String> = self
                .inner
                .routes
                .locked()
                .iter()
                .filter(|(_, r)| r.pending_write.is_none())
                .map(|(f, _)| f.clone())
                .collect();
            let mut missing = Vec::new();
            for chunk in ours.chunks(AUDIT_CHUNK) {
                self.tables(|t| {
                    missing.extend(
                        chunk
                            .iter()
                            .filter(|f| !t.nodes_for(f).is_some_and(|n| n.contains(&me)))
                            .cloned(),
                    )
                });
                tokio::task::yield_now().await;
            }
            // 2. Listed for us in the tables, but not ours.
            let mut extra = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let (listed, last) = self.tables(|t| {
                    let mut last = None;
                    let mut listed = Vec::new();
                    for (f, nodes) in t.routes_after(cursor.as_deref()).take(AUDIT_CHUNK) {
                        if nodes.contains(&me) {
                            listed.push(f.to_string());
                        }
                        last = Some(f.to_string());
                    }
                    (listed, last)
                });
                {
                    let routes = self.inner.routes.locked();
                    extra.extend(listed.into_iter().filter(|f| !routes.contains_key(f)));
                }
                match last {
                    Some(l) => cursor = Some(l),
                    None => break,
                }
                tokio::task::yield_now().await;
            }
            // Filters added or removed during the walk are in flight: skip them.
            let routes = self.inner.routes.locked();
            missing.retain(|f| routes.get(f).is_some_and(|r| r.pending_write.is_none()));
            extra.retain(|f| !routes.contains_key(f));
            drop(routes);
            if missing.is_empty() && extra.is_empty() || !self.writer_idle() {
                continue;
            }
            info!(
                missing = missing.len(),
                extra = extra.len(),
                "repairing this node's routes in the cluster tables"
            );
            for filter in missing {
                self.enqueue(Op::RouteAdd { filter, node: me });
            }
            for filter in extra {
                self.enqueue(Op::RouteDel { filter, node: me });
            }
        }
    }

    /// No op is queued for a write.
    /// Nothing queued and no batch in flight (a batch being retried counts).
    fn writer_idle(&self) -> bool {
        let w = &self.inner.writer;
        w.queue.locked().is_empty() && w.in_flight.load(Ordering::Relaxed) == 0
    }

    /// A replicant's core: the current upstream if it still answers, else the reachable core
    /// with the fewest replicants, plus jitter (so a restarted core is not stampeded).
    async fn pick_core(&self) -> Option<(NodeId, SocketAddr)> {
        let Backend::Replicant(r) = &self.inner.backend else {
            return None;
        };
        if let Some(up) = *r.upstream.locked() {
            return Some(up);
        }
        let cands = self.known_nodes(true);
        let mut best: Option<(f64, NodeId, SocketAddr)> = None;
        for (id, addr) in cands {
            let Ok(p) = self.ping(addr).await else {
                continue;
            };
            if p.role != Role::Core {
                continue;
            }
            let score = p.replicants as f64 + jitter();
            if best.is_none_or(|(b, _, _)| score < b) {
                best = Some((score, id, addr));
            }
        }
        let (_, id, addr) = best?;
        let mut up = r.upstream.locked();
        // Another shard's task may have picked meanwhile: follow the same core.
        Some(*up.get_or_insert((id, addr)))
    }

    async fn add_self_via(&self, seed: SocketAddr) -> Result<(), String> {
        let req = RpcRequest::AddMember {
            id: self.me(),
            addr: self.inner.transport.local_addr(),
        };
        match rpc_call(&self.inner.transport, seed, &req).await? {
            RpcResponse::Done => Ok(()),
            RpcResponse::Failed(e) => Err(e),
            other => Err(format!("unexpected answer to AddMember: {other:?}")),
        }
    }

    // ---- operations --------------------------------------------------------------------------

    /// `ctl cluster join`: a core asks `seed`'s group to add it as a voter; a replicant adds
    /// `seed` to the cores it may follow. A node that left comes back.
    pub async fn join(&self, seed: (NodeId, SocketAddr)) -> Result<(), String> {
        if seed.0 == self.me() {
            return Err("cannot join through this node itself".into());
        }
        self.inner.extra_cores.locked().push(seed);
        match self.inner.s.role {
            Role::Core => self.add_self_via(seed.1).await?,
            Role::Replicant => {}
        }
        if *self.inner.left.borrow() {
            self.inner.left.send_replace(false);
            let me = self.me();
            self.enqueue(Op::MemberSet {
                node: me,
                member: self.member(),
            });
            let filters: Vec<String> = self.inner.routes.locked().keys().cloned().collect();
            for filter in filters {
                self.enqueue(Op::RouteAdd { filter, node: me });
            }
            let initial = self.tables(initial_changes);
            self.resync_shards(initial).await;
        }
        Ok(())
    }

    /// `ctl cluster leave`: the node's routes, sessions and membership are removed from the
    /// tables (a core also leaves the raft group); it goes on as a single node.
    pub async fn leave(&self) -> Result<(), String> {
        let me = self.me();
        let drained_by = Instant::now() + LEAVE_DRAIN_WAIT;
        while !self.writer_idle() && Instant::now() < drained_by {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !self.writer_idle() {
            warn!("leaving with cluster writes still pending: one that lands after the purge leaves a route of this node behind");
        }
        let seqs = self.write(Op::purge_node(me)).await?;
        self.wait_applied(seqs).await;
        if let Backend::Core(core) = &self.inner.backend {
            core.remove_member(me).await.map_err(|e| e.to_string())?;
        }
        self.inner.left.send_replace(true);
        // The shards forget every other node.
        let routes: Vec<(ByteStr, NodeId)> = self.tables(|t| {
            t.routes()
                .flat_map(|(f, nodes)| nodes.iter().map(move |n| (ByteStr::from(f), *n)))
                .filter(|(_, n)| *n != me)
                .collect()
        });
        self.broadcast(|| {
            let mut b: Vec<FromCluster> = routes
                .iter()
                .map(|(f, n)| FromCluster::RouteRemoved {
                    filter: f.clone(),
                    node: *n,
                })
                .collect();
            b.push(FromCluster::Peers(Vec::new()));
            b
        })
        .await;
        info!("left the cluster");
        Ok(())
    }

    async fn resync_shards(&self, changes: Vec<Change>) {
        let me = self.me();
        let routes: Vec<(ByteStr, NodeId, RouteNote)> = changes
            .into_iter()
            .filter_map(|c| match c {
                Change::RouteAdded { filter, node } if node != me => {
                    Some((ByteStr::from(filter), node, RouteNote::Added))
                }
                Change::ShareWeight {
                    filter,
                    node,
                    online,
                } if node != me => Some((ByteStr::from(filter), node, RouteNote::Weight(online))),
                _ => None,
            })
            .collect();
        let peers = self.peer_ids();
        self.broadcast(|| {
            let mut b: Vec<FromCluster> = routes
                .iter()
                .map(|(f, n, note)| note.message(f.clone(), *n))
                .collect();
            b.push(FromCluster::Peers(peers.clone()));
            b
        })
        .await;
    }

    /// `ctl cluster status`.
    pub fn cluster_status(&self) -> ClusterStatus {
        let me = self.me();
        let seen = self
            .inner
            .seen
            .locked()
            .iter()
            .map(|(n, (at, _))| (*n, *at))
            .collect::<HashMap<_, _>>();
        let (members, routes, sessions) = self.tables(|t| {
            let members = t
                .members()
                .iter()
                .map(|(id, m)| MemberStatus {
                    node: *id,
                    addr: m.addr.clone(),
                    role: m.role,
                    api: m.api.clone(),
                    status: match seen.get(id) {
                        _ if *id == me => "running".into(),
                        Some(at) if at.elapsed() < crate::timeouts::LIVENESS => "running".into(),
                        Some(_) => "stopped".into(),
                        None => "unknown".into(),
                    },
                })
                .collect();
            (members, t.route_count() as u64, t.session_count() as u64)
        });
        ClusterStatus {
            node: me,
            role: self.inner.s.role,
            leader: self.leader(),
            members,
            routes,
            sessions,
            pending_writes: self.pending_writes(),
        }
    }

    /// Ops queued or being written and not committed yet.
    fn pending_writes(&self) -> u64 {
        let w = &self.inner.writer;
        w.queue.locked().len() as u64 + w.in_flight.load(Ordering::Relaxed)
    }

    /// `ctl rlog status`.
    pub fn rlog_status(&self) -> RlogStatus {
        let seqs = self.local_seqs();
        let shards = match &self.inner.backend {
            Backend::Core(_) => RlogShard::ALL
                .iter()
                .map(|&s| ShardStatus {
                    shard: s.name().into(),
                    state: "core".into(),
                    seq: seqs[s.index()],
                    replicants: self.inner.serve_stats.replicants[s.index()]
                        .load(Ordering::Relaxed),
                    pending: self.inner.serve_stats.pending[s.index()].load(Ordering::Relaxed),
                    ..Default::default()
                })
                .collect(),
            Backend::Replicant(r) => {
                let states = r.states();
                let up = r.upstream.locked().map(|(n, _)| n);
                // Lag is measured against the Raft leader's seq (its upstream core may itself
                // trail the leader), falling back on the upstream's when no leader is known.
                let core_seqs = {
                    let seen = self.inner.seen.locked();
                    let seqs_of = |n: NodeId| seen.get(&n).map(|(_, p)| p.seqs);
                    let leader = up
                        .and_then(|n| seen.get(&n))
                        .and_then(|(_, p)| p.leader)
                        .or_else(|| seen.values().find_map(|(_, p)| p.leader));
                    let (l, u) = (leader.and_then(seqs_of), up.and_then(seqs_of));
                    match (l, u) {
                        (Some(l), Some(u)) => Some(std::array::from_fn(|i| l[i].max(u[i]))),
                        (l, u) => l.or(u),
                    }
                };
                RlogShard::ALL
                    .iter()
                    .map(|&s| {
                        let i = s.index();
                        let (state, replay, keys, bootstraps, resumes) = states[i];
                        let core_seq = core_seqs
                            .map_or(0, |c| c[i])
                            .max(r.core_seq[i].load(Ordering::Relaxed));
                        ShardStatus {
                            shard: s.name().into(),
                            state: state.name().into(),
                            seq: seqs[i],
                            lag: core_seq.saturating_sub(seqs[i]),
                            bootstrap_time_ms: r.bootstrap_ms[i].load(Ordering::Relaxed),
                            bootstrap_keys: keys,
                            replay_queue_len: replay,
                            bootstraps,
                            resumes,
                            upstream: up,
                            ..Default::default()
                        }
                    })
                    .collect()
            }
        };
        RlogStatus {
            node: self.me(),
            role: self.inner.s.role,
            leader: self.leader(),
            shards,
        }
    }

    /// Counters for the metrics endpoint: (name, help, value, is_counter).
    pub fn samples(&self) -> Vec<(&'static str, &'static str, f64, bool)> {
        let f = &self.inner.forwarder.stats;
        let w = &self.inner.writer;
        let m = &self.inner.move_stats;
        let counters: [(&'static str, &'static str, &AtomicU64); 13] = [
            (
                "shardmq_forward_sent",
                "Messages forwarded to other nodes.",
                &f.sent,
            ),
            (
                "shardmq_forward_received",
                "Messages received from other nodes.",
                &f.received,
            ),
            (
                "shardmq_forward_dropped",
                "Forwarded messages dropped (peer queue full, or QoS 0 lost at a reconnect).",
                &f.dropped,
            ),
            (
                "shardmq_forward_resent",
                "Forwarded messages sent again after a broken stream.",
                &f.resent,
            ),
            (
                "shardmq_forward_duplicates",
                "Forwarded batches received twice and skipped.",
                &f.duplicates,
            ),
            (
                "shardmq_cluster_writes",
                "Raft writes (batches of route and session ops).",
                &w.writes,
            ),
            (
                "shardmq_cluster_write_ops",
                "Route and session ops written.",
                &w.ops,
            ),
            (
                "shardmq_cluster_write_failures",
                "Failed write attempts (retried).",
                &w.failures,
            ),
            (
                "shardmq_cluster_write_timeouts",
                "Batches whose SUBACKs were answered at cluster.write_timeout_ms.",
                &w.timeouts,
            ),
            (
                "shardmq_session_moves_in",
                "Sessions fetched from another node for a Clean Start 0 CONNECT here.",
                &m.moved_in,
            ),
            (
                "shardmq_session_moves_out",
                "Sessions handed over to another node.",
                &m.moved_out,
            ),
            (
                "shardmq_session_move_failures",
                "Session fetches that got no session although the registry named another node (down, timed out, gone).",
                &m.fetch_failed,
            ),
            (
                "shardmq_cluster_write_dropped",
                "Session and retained-index ops dropped with the write queue full.",
                &w.dropped,
            ),
        ];
        let queued = w.queue.locked().len();
        let gauges = [
            (
                "shardmq_forward_pending",
                "Forwarded messages queued or awaiting acknowledgement.",
                self.inner.forwarder.pending_total() as f64,
            ),
            (
                "shardmq_cluster_write_queue",
                "Ops waiting to be written.",
                queued as f64,
            ),
            (
                "shardmq_cluster_uptime_seconds",
                "Seconds since the node joined the cluster.",
                self.inner.started.elapsed().as_secs_f64(),
            ),
        ];
        counters
            .into_iter()
            .map(|(name, help, a)| (name, help, a.load(Ordering::Relaxed) as f64, true))
            .chain(
                gauges
                    .into_iter()
                    .map(|(name, help, v)| (name, help, v, false)),
            )
            .collect()
    }
}

impl Deliver for ClusterNode {
    fn deliver(
        &self,
        msgs: Vec<crate::forward::Fwd>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            // One shard per topic keeps a topic's order; that shard fans out on this node.
            let n = self.inner.link.shards();
            let mut per: Vec<Vec<FromCluster>> = (0..n).map(|_| Vec::new()).collect();
            for (m, share) in msgs {
                let shard = (topic_hash(m.topic.as_str()) % n as u64) as usize;
                per[shard].push(match share {
                    None => FromCluster::Publish(m),
                    Some(share) => FromCluster::SharedPublish { share, msg: m },
                });
            }
            for (shard, batch) in per.into_iter().enumerate() {
                if !batch.is_empty() {
                    self.send_shard(shard, batch).await;
                }
            }
        })
    }
}

/// A route change for the shards, kept in table order (a weight follows its route).
#[derive(Clone, Copy)]
enum RouteNote {
    Added,
    Removed,
    Weight(u32),
}

impl RouteNote {
    fn message(self, filter: ByteStr, node: NodeId) -> FromCluster {
        match self {
            RouteNote::Added => FromCluster::RouteAdded { filter, node },
            RouteNote::Removed => FromCluster::RouteRemoved { filter, node },
            RouteNote::Weight(online) => FromCluster::ShareWeight {
                share: filter,
                node,
                online,
            },
        }
    }
}

fn topic_hash(topic: &str) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = ahash::RandomState::with_seeds(5, 6, 7, 8).build_hasher();
    h.write(topic.as_bytes());
    h.finish()
}

/// The tables as changes from empty: what the shards need at start.
fn initial_changes(t: &Tables) -> Vec<Change> {
    let mut out: Vec<Change> = t
        .routes()
        .flat_map(|(f, nodes)| {
            nodes.iter().map(move |n| Change::RouteAdded {
                filter: f.to_string(),
                node: *n,
            })
        })
        .collect();
    out.extend(
        t.all_share_weights()
            .map(|(f, node, online)| Change::ShareWeight {
                filter: f.to_string(),
                node,
                online,
            }),
    );
    out.extend(t.members().iter().map(|(n, m)| Change::MemberChanged {
        node: *n,
        member: Some(m.clone()),
    }));
    out
}

fn jitter() -> f64 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX)
}

impl EntrySource for CoreGroup {
    fn open(
        &self,
        shard: RlogShard,
        checkpoint: Option<u64>,
        batch_max: usize,
    ) -> (
        shardmq_rlog::RlogServer,
        tokio::sync::broadcast::Receiver<shardmq_rlog::Entry>,
    ) {
        self.subscribe_shard(shard, |tables, tail| {
            shardmq_rlog::RlogServer::open(
                checkpoint,
                tables,
                tail,
                shard,
                batch_max,
                replica::WINDOW_BATCHES,
            )
        })
    }
}

/// One request to a core over a fresh `Rpc` stream, bounded in time.
async fn rpc_call(
    transport: &Transport,
    addr: SocketAddr,
    req: &RpcRequest,
) -> Result<RpcResponse, String> {
    let fut = async {
        let mut s = transport
            .open(addr, StreamKind::Rpc)
            .await
            .map_err(|e| e.to_string())?;
        s.send(req).await.map_err(|e| e.to_string())?;
        let answer = s
            .recv::<RpcResponse>()
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no answer".to_string());
        let _ = s.finish();
        answer
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| format!("rpc to {addr} timed out"))?
}
