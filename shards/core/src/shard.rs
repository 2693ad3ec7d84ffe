//! One shard's state: its connections, the sessions they own, its subscription trie, its
//! replica of the node's routing table and retained store, and its partition of the client
//! registry. Single-threaded: every method runs on the shard's own executor, never across an
//! `.await`.

use crate::bus::{ShardId, ShardMsg, ShardSet, Stamp};
use crate::chunk_slab::ChunkSlab as Slab;
use crate::link::{FromCluster, NodeId, NodeSet, ToCluster};
use crate::sys::{NodeFigures, ShardFigures};
use crate::verify::{Credentials, Verdict};
use crate::CoreSettings;
use bytes::{Bytes, BytesMut};
use shardmq_broker::auth::{AuthExchange, AuthOutcome, Nonce};
use shardmq_broker::rate::TokenBucket;
use shardmq_broker::retain::RetainedStore;
use shardmq_broker::session::{
    accept_connect, connack_for, connack_refusal, server_disconnect_for, Accepted, Action, Close,
    Delivery, Session, SessionStats, Subscription, EXPIRY_NEVER,
};
use shardmq_broker::shared::{is_shared, LocalGroup, NodeChoice, RemoteGroup, SharedKey};
use shardmq_broker::topic::filter_matches;
use shardmq_broker::trie::SubscriptionTrie;
use shardmq_broker::will::{will_delay, DelayedWills};
use shardmq_broker::{Limits, Message};
use shardmq_codec::{
    encode, ByteStr, Connect, LastWill, Packet, Protocol, PublishProperties, QoS, ReasonCode,
    RetainHandling, SubAck,
};
use smallvec::SmallVec;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug, info, trace, warn};

mod client_index;
mod cluster;
mod connections;
mod durable;
mod evacuate;
mod figures;
mod inspect;
mod mgmt;
mod moves;
mod node_moves;
mod peers;
mod registry;
mod routes;
mod sessions;
mod shared;
mod timers;

pub use timers::{TIMER_BUCKET, TIMER_RECHECK};

/// Key of a connection in the shard's slab.
pub type ConnKey = usize;
/// Key of a session in the shard's slab.
pub type SessionKey = usize;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; only CONNECT may come.
    AwaitConnect,
    /// CONNECT accepted; its credentials are with the auth workers (`[auth]`). Not read.
    Verifying,
    /// CONNECT with an Authentication Method accepted; only AUTH may come (MQTT 5.0 §4.12).
    Authenticating,
    /// CONNECT accepted; waiting for the registry and, on takeover, the old session.
    Claiming,
    /// Session attached; packets flow.
    Active,
    /// Flush what is written, then close.
    Closing,
}

/// A connection as the shard sees it. The driver task owns the socket; the shard owns the
/// write buffer so routing can append to it without touching the task.
///
/// One lives per connection, idle ones included, so it is kept small (88 B): keys and timeouts
/// as `u32`, an IPv4 peer inline, and what few connections use (enhanced authentication, the
/// verified identity, a certificate name, durability gates, an IPv6 peer) in one box, `cold`.
pub struct Conn {
    pub id: u64,
    pub out: BytesMut,
    /// The connection's own key in the shard's slab.
    key: u32,
    /// What the driver asked [`ShardCore::poll_conn`] to hand back with the key (its slot).
    pub io_token: u32,
    /// When bytes last came from the client (ms since the core started; `bytes_in`).
    last_in_ms: u32,
    /// The bucket of the timer table the connection is armed in (`timers::NO_BUCKET`: none).
    timer_bucket: u32,
    /// The attached session's key ([`NO_SESSION`]: none).
    session: u32,
    /// Read timeout the driver should apply (connect timeout, then 1.5 × keep-alive), in
    /// milliseconds; 0: none.
    read_timeout_ms: u32,
    /// The client's address when it is IPv4 (the socket's peer, or what a PROXY header said);
    /// an IPv6 one is in `cold`.
    peer_v4: Option<std::net::SocketAddrV4>,
    cold: Option<Box<ConnCold>>,
    pub phase: Phase,
    /// On the list [`ShardCore::poll_conn`] drains: set once until polled.
    io_wanted: bool,
    pub protocol: Option<Protocol>,
    /// Set when the node is over `max_connections`: the CONNECT is refused.
    over_limit: bool,
    /// The connection ended with a DISCONNECT from the client (no will, unless asked).
    graceful: Option<bool>,
    /// The listener it came in on.
    pub listener: crate::ListenerKind,
}

/// `Conn::session` of a connection without a session.
const NO_SESSION: u32 = u32::MAX;

/// The parts of a connection that most connections never use.
#[derive(Default)]
struct ConnCold {
    /// Enhanced authentication, for connections whose CONNECT named a method.
    auth: Option<Box<ConnAuth>>,
    /// Who the auth workers said the client is, and its ACL (without `[auth]`: the username
    /// only, for the management API).
    ident: Option<Box<ConnIdent>>,
    /// The client certificate's name (`listener.tls.peer_cert_as_username`), after the handshake.
    cert_name: Option<Box<str>>,
    /// `storage.durability = "sync"`: output held until what it acknowledges is durable.
    gates: Option<Box<crate::durable::ConnGates>>,
    /// The client's address when it is not IPv4.
    peer: Option<std::net::SocketAddr>,
}

impl Conn {
    /// The attached session.
    pub fn session(&self) -> Option<SessionKey> {
        (self.session != NO_SESSION).then_some(self.session as SessionKey)
    }

    fn set_session(&mut self, session: Option<SessionKey>) {
        self.session = match session {
            Some(s) => u32::try_from(s).expect("fewer than 2^32 sessions per shard"),
            None => NO_SESSION,
        };
    }

    /// Read timeout the driver should apply (connect timeout, then 1.5 × keep-alive).
    pub fn read_timeout(&self) -> Option<Duration> {
        (self.read_timeout_ms != 0).then(|| Duration::from_millis(u64::from(self.read_timeout_ms)))
    }

    /// Sets the read timeout, in whole milliseconds (at least 1, at most `u32::MAX`: 49 days).
    fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout_ms = timeout.map_or(0, |t| {
            u32::try_from(t.as_millis()).unwrap_or(u32::MAX).max(1)
        });
    }

    /// The client's address: the socket's peer, or what a PROXY header said.
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        match self.peer_v4 {
            Some(v4) => Some(v4.into()),
            None => self.cold.as_ref().and_then(|c| c.peer),
        }
    }

    /// Sets the client's address (the driver, after a PROXY header).
    pub fn set_peer(&mut self, peer: Option<std::net::SocketAddr>) {
        match peer {
            Some(std::net::SocketAddr::V4(v4)) => {
                self.peer_v4 = Some(v4);
                if let Some(c) = self.cold.as_mut() {
                    c.peer = None;
                }
            }
            other => {
                self.peer_v4 = None;
                if other.is_some() || self.cold.is_some() {
                    self.cold_mut().peer = other;
                }
            }
        }
    }

    /// The client certificate's name, after the TLS handshake.
    pub fn cert_name(&self) -> Option<&str> {
        self.cold.as_ref().and_then(|c| c.cert_name.as_deref())
    }

    /// Sets the client certificate's name (`listener.tls.peer_cert_as_username`).
    pub fn set_cert_name(&mut self, name: Option<Box<str>>) {
        if name.is_some() || self.cold.is_some() {
            self.cold_mut().cert_name = name;
        }
    }

    /// Whether output waits on durability gates (`storage.durability = "sync"`).
    pub fn gated(&self) -> bool {
        self.cold.as_ref().is_some_and(|c| c.gates.is_some())
    }

    fn auth(&self) -> Option<&ConnAuth> {
        self.cold.as_ref().and_then(|c| c.auth.as_deref())
    }

    fn ident(&self) -> Option<&ConnIdent> {
        self.cold.as_ref().and_then(|c| c.ident.as_deref())
    }

    fn cold_mut(&mut self) -> &mut ConnCold {
        self.cold.get_or_insert_with(Default::default)
    }
}

/// A verified client: its username and what it may do.
struct ConnIdent {
    username: Option<String>,
    authorizer: Option<shardmq_broker::authz::SharedAuthorizer>,
}

/// A CONNECT whose credentials the auth workers are checking.
struct PendingAuth {
    conn: ConnKey,
    conn_id: u64,
    connect: Box<Connect>,
    accepted: Accepted,
}

/// A connection's enhanced authentication: the exchange (kept for re-authentication) and,
/// while it runs before CONNACK, the accepted CONNECT waiting for it.
struct ConnAuth {
    exchange: AuthExchange,
    accepted: Option<Accepted>,
}

struct SessionSlot {
    session: Session,
    conn: Option<ConnKey>,
    /// Registration token in the owner shard's registry.
    reg_token: u64,
    /// When an offline session expires.
    expires_at: Option<Instant>,
    /// When its connection attached (Unix seconds), for the management API.
    connected_at: u32,
    /// The attaching CONNECT's Clean Start.
    clean_start: bool,
}

struct PendingConnect {
    conn: ConnKey,
    conn_id: u64,
    accepted: Accepted,
}

struct RouteSync {
    conn: ConnKey,
    conn_id: u64,
    session: SessionKey,
    remaining: usize,
    /// `route_seq` when the round went out: once every shard answered, every route
    /// announcement up to it is applied everywhere.
    seq: u64,
    ack: SubAck,
    retained: Vec<(ByteStr, Subscription, bool)>,
}

/// A wildcard subscribe's retained messages, delivered over several turns.
struct RetainedWalk {
    conn: ConnKey,
    conn_id: u64,
    session: SessionKey,
    filter: ByteStr,
    sub: Subscription,
    /// Where the last step stopped (`None`: not started).
    cursor: Option<shardmq_broker::retain::WalkCursor>,
}

/// Retained replica nodes a shard examines per turn for the retained deliveries of new
/// subscriptions (bounds the time a wildcard subscribe over a million retained topics holds
/// the shard's loop; the rest waits for the next turn).
pub const RETAINED_STEP_NODES: usize = 4096;

/// Entries `route_fresh` holds before its first pruning.
const ROUTE_FRESH_PRUNE_MIN: usize = 64;

/// A CONNACK held until every shard routes the subscriptions the session brought along.
struct ConnectSync {
    conn: ConnKey,
    conn_id: u64,
    session: SessionKey,
    /// The session's registration token: a takeover while waiting replaces the session.
    reg_token: u64,
    remaining: usize,
    /// As `RouteSync::seq`.
    seq: u64,
    accepted: Accepted,
    session_present: bool,
}

/// An entry of this shard's partition of the node-wide client registry.
#[derive(Debug, Clone, Copy)]
struct RegEntry {
    shard: ShardId,
    token: u64,
}

/// Per-shard counters, read by `$SYS` publishing and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShardStats {
    /// PUBLISH packets from clients.
    pub messages_in: u64,
    /// PUBLISHes written to clients for the first time, at once or later from a session's
    /// queue (the sessions' `SessionStats::sent`, added up step by step).
    pub messages_out: u64,
    /// Messages dropped for subscribers (the sessions' `SessionStats::dropped`).
    pub messages_dropped: u64,
    /// Bytes read from client sockets.
    pub bytes_in: u64,
    /// Bytes written to client sockets.
    pub bytes_out: u64,
    /// Subscriptions (session, filter) in this shard's trie.
    pub subscriptions: u64,
}

impl ShardStats {
    /// Adds what one session step sent and dropped, from its counters before and after.
    pub(super) fn count_session(&mut self, before: SessionStats, after: SessionStats) {
        self.messages_out += after.sent - before.sent;
        self.messages_dropped += after.dropped - before.dropped;
    }
}

type Subscribers = SmallVec<[(u32, Subscription); 1]>;

/// The shard.
pub struct ShardCore {
    pub id: ShardId,
    nshards: usize,
    pub cfg: Arc<CoreSettings>,
    limits: Limits,
    started: Instant,
    pub conns: Slab<Conn>,
    sessions: Slab<SessionSlot>,
    by_client: client_index::ClientIndex,
    subs: SubscriptionTrie<Subscribers>,
    routes: SubscriptionTrie<ShardSet>,
    retained: RetainedStore<Arc<Message>>,
    /// Keyed by a copy of the id (`Box<str>`: 16 B, against 32 B for a `ByteStr`, whose clone
    /// would also keep a shared header alive).
    registry: ahash::AHashMap<Box<str>, RegEntry>,
    pending_connects: ahash::AHashMap<u64, PendingConnect>,
    /// CONNECTs whose credentials the auth workers are checking, by token.
    pending_auth: ahash::AHashMap<u64, PendingAuth>,
    /// Connect and keep-alive timeouts of the connections.
    conn_timers: timers::ConnTimers,
    /// Credentials for the verifier, polled by the shell (`poll_verify`).
    verify_out: Vec<(u64, Credentials)>,
    /// Takeovers that arrived while this shard's own claim for the client was in flight,
    /// by the token of the claim each waits for: client id, claimer, its token, Clean Start.
    deferred_takeovers: ahash::AHashMap<u64, (ByteStr, ShardId, u64, bool)>,
    /// Per shard: the number of the last publish of it this shard handled (its own: the last it
    /// routed), for sessions moving between shards (`moves.rs`).
    handled: Vec<u64>,
    /// Sessions that left for another shard, by move token: publishes for them go on there.
    forwarders: ahash::AHashMap<u64, moves::Forwarder>,
    /// Filters the forwarders keep routed here, with how many hold each.
    route_holds: ahash::AHashMap<ByteStr, u32>,
    /// Sessions that arrived from another shard, by move token, while copies of earlier
    /// publishes may still come.
    move_windows: ahash::AHashMap<u64, moves::MoveWindow>,
    /// The open move window of a session here, by session key.
    moving_in: ahash::AHashMap<u32, u64>,
    route_syncs: ahash::AHashMap<u64, RouteSync>,
    /// Retained deliveries still walking the replica, in order.
    retained_walks: VecDeque<RetainedWalk>,
    /// Retained dumps for the control plane still walking the replica: request, cursor.
    retained_dumps: VecDeque<(u64, shardmq_broker::retain::WalkCursor)>,
    /// Route announcements this shard sent (RouteAdd, RouteDel, SharedRoute), counted.
    route_seq: u64,
    /// Every announcement up to this one is applied on every shard (a sync round sent after
    /// it came back complete; the mesh keeps each pair's order).
    route_settled: u64,
    /// Filters whose last announcement from here may not be applied everywhere yet, with its
    /// number: a SUBACK or CONNACK for such a filter waits for a round of its own even when
    /// the filter is not new here (another session's SUBSCRIBE of it is still in flight).
    route_fresh: ahash::AHashMap<ByteStr, u64>,
    /// `route_fresh` is pruned of settled entries when it grows past this (amortized: a
    /// settled entry is harmless, only memory).
    route_fresh_prune_at: usize,
    connect_syncs: ahash::AHashMap<u64, ConnectSync>,
    offline: BTreeSet<(Instant, SessionKey, u64)>,
    /// Wills waiting for their Will Delay Interval, by client id.
    delayed_wills: DelayedWills<LastWill>,
    next_token: u64,
    next_conn_id: u64,
    /// Messages for other shards, per destination, sent in batches by the flusher. A deque:
    /// a batch taken off the front of a long queue leaves the rest where it is (a `Vec`'s
    /// drain shifted all of it, once per batch: 5 % of a shard's CPU at QoS 0 saturation).
    pub outbox: Vec<std::collections::VecDeque<ShardMsg>>,
    /// Something was queued for another shard or the control plane since the last
    /// [`ShardCore::take_flush_wanted`].
    flush_wanted: bool,
    /// Connections with new output, a phase change or the end of a wait (`poll_conn`).
    ready: Vec<ConnKey>,
    local: VecDeque<ShardMsg>,
    hasher: ahash::RandomState,
    pub stats: ShardStats,
    /// ShardCore 0 only: the latest `$SYS` snapshot of every shard, for the node's totals.
    node_figures: Option<NodeFigures>,
    /// The wall clock at `started`: wall times are derived from `now` (no clock inside).
    wall_started: SystemTime,
    /// Nonces for authentication exchanges: ChaCha20 seeded by the caller.
    rng: rand_chacha::ChaCha20Rng,
    /// This shard's share of `listener.max_connection_rate`; `None` when unlimited.
    connect_rate: Option<TokenBucket>,
    /// Node-wide connection limit (`listener.max_connections`; a reload changes it).
    max_connections: usize,
    /// Time allowed between accept and CONNECT (`mqtt.connect_timeout_ms`).
    connect_timeout: Duration,
    /// `$SYS` interval (`sys.interval_ms`); `None` = off.
    pub sys_interval: Option<Duration>,
    match_scratch: Vec<(u32, Subscription)>,
    /// This shard's members of each shared group, with the `$share/{group}/{filter}` name their
    /// messages are tagged with.
    shared_local: ahash::AHashMap<SharedKey, (ByteStr, LocalGroup)>,
    /// Replica of every shard's members of each shared group, by filter.
    shared_routes: SubscriptionTrie<shared::FilterGroups>,
    actions_scratch: Vec<Action>,
    /// This shard has sent its clients to `listener.moved_to` (the node's move trigger).
    moved: bool,
    /// The node's move trigger was pulled ([`pull_move`](ShardCore::pull_move)).
    move_pulled: bool,
    /// The node is being evacuated: CONNECTs are refused with CONNACK 0x9C naming this
    /// Server Reference (`evacuate.rs`).
    evacuating: Option<ByteStr>,
    /// The shard's side of the cluster, when the node is in one.
    pub cluster: Option<Box<ClusterShard>>,
    /// The shard's durable log (`[storage]`); `None` with `durability = "off"`.
    pub durable: Option<Box<crate::durable::ShardDurable>>,
    /// Clients whose packets the management API traces here; `None` while none is.
    pub traces: Option<Box<mgmt::Traces>>,
}

/// Most messages a shard queues for the control plane; beyond it, forwarded publishes are
/// dropped (counted in `forward_dropped`, logged), route and session updates never are.
pub const CLUSTER_OUT_MAX: usize = 65_536;

/// A shard's view of the cluster: the other nodes' routes and what goes to the control plane.
pub struct ClusterShard {
    /// Batch for the control plane, sent by the flusher.
    pub out: Vec<ToCluster>,
    /// Replica of the other nodes' routes: filter → nodes.
    remote: SubscriptionTrie<NodeSet>,
    /// Replica of the other nodes' shared groups: filter → groups, each with its nodes and
    /// their members online.
    remote_shared: SubscriptionTrie<SmallVec<[RemoteGroup; 1]>>,
    /// The other nodes (retained messages go to all of them).
    peers: Vec<NodeId>,
    /// Messages forwarded to other nodes (one per destination node).
    pub forwarded_out: u64,
    /// Messages received from other nodes.
    pub forwarded_in: u64,
    /// Forwarded messages dropped because the control plane's queue was full.
    pub forward_dropped: u64,
}

impl Default for ClusterShard {
    fn default() -> ClusterShard {
        ClusterShard::new()
    }
}

impl ClusterShard {
    /// A shard's view of a cluster it just joined: no peers, no remote routes.
    pub fn new() -> ClusterShard {
        ClusterShard {
            out: Vec::new(),
            remote: SubscriptionTrie::new(),
            remote_shared: SubscriptionTrie::new(),
            peers: Vec::new(),
            forwarded_out: 0,
            forwarded_in: 0,
            forward_dropped: 0,
        }
    }
}

impl ShardCore {
    /// Shard `id` of `cfg.shards`, started at `now` (wall clock `wall`). `hasher` places
    /// client ids on their owner shards: every shard of the node must get the same one. `seed`
    /// seeds the nonces of authentication exchanges (give it from the operating system).
    pub fn new(
        now: Instant,
        wall: SystemTime,
        id: ShardId,
        cfg: Arc<CoreSettings>,
        hasher: ahash::RandomState,
        seed: [u8; 32],
    ) -> ShardCore {
        use rand_core::SeedableRng;
        let nshards = cfg.shards;
        let cfg_rate = cfg.max_connection_rate;
        let (cfg_max_connections, cfg_connect_timeout, cfg_sys_interval) =
            (cfg.max_connections, cfg.connect_timeout, cfg.sys_interval);
        ShardCore {
            id,
            nshards,
            limits: cfg.limits.clone(),
            cfg,
            started: now,
            wall_started: wall,
            rng: rand_chacha::ChaCha20Rng::from_seed(seed),
            conns: Slab::new(),
            sessions: Slab::new(),
            by_client: Default::default(),
            subs: SubscriptionTrie::new(),
            routes: SubscriptionTrie::new(),
            retained: RetainedStore::new(),
            registry: Default::default(),
            pending_connects: Default::default(),
            pending_auth: Default::default(),
            conn_timers: timers::ConnTimers::default(),
            verify_out: Vec::new(),
            deferred_takeovers: Default::default(),
            handled: vec![0; nshards],
            forwarders: Default::default(),
            route_holds: Default::default(),
            move_windows: Default::default(),
            moving_in: Default::default(),
            route_syncs: Default::default(),
            retained_walks: VecDeque::new(),
            retained_dumps: VecDeque::new(),
            route_seq: 0,
            route_settled: 0,
            route_fresh: Default::default(),
            route_fresh_prune_at: ROUTE_FRESH_PRUNE_MIN,
            connect_syncs: Default::default(),
            offline: BTreeSet::new(),
            delayed_wills: DelayedWills::default(),
            next_token: 0,
            next_conn_id: 0,
            outbox: (0..nshards).map(|_| Default::default()).collect(),
            flush_wanted: false,
            ready: Vec::new(),
            local: VecDeque::new(),
            hasher,
            stats: ShardStats::default(),
            node_figures: (id == 0).then(|| NodeFigures::new(nshards)),
            connect_rate: (cfg_rate > 0).then(|| TokenBucket::share_of(cfg_rate, nshards)),
            max_connections: cfg_max_connections,
            connect_timeout: cfg_connect_timeout,
            sys_interval: cfg_sys_interval,
            match_scratch: Vec::new(),
            shared_local: Default::default(),
            shared_routes: SubscriptionTrie::new(),
            actions_scratch: Vec::new(),
            moved: false,
            move_pulled: false,
            evacuating: None,
            cluster: None,
            durable: None,
            traces: None,
        }
    }

    /// The per-client limits in force (a configuration reload replaces them).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// True if the flusher has something for the control plane.
    pub fn cluster_pending(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| !c.out.is_empty())
    }

    pub(super) fn token(&mut self) -> u64 {
        self.next_token += 1;
        (self.next_token << 8) | self.id as u64
    }

    pub(super) fn owner_of(&self, client_id: &str) -> ShardId {
        (self.hasher.hash_one(client_id) % self.nshards as u64) as ShardId
    }

    /// Queues `msg` for shard `to` (handled in place, after the current step, if `to` is us).
    pub(super) fn send(&mut self, to: ShardId, msg: ShardMsg) {
        if to == self.id {
            self.local.push_back(msg);
            return;
        }
        self.outbox[to].push_back(msg);
        self.flush_wanted = true;
    }

    pub(super) fn broadcast(&mut self, msg: impl Fn() -> ShardMsg) {
        for to in 0..self.nshards {
            self.send(to, msg());
        }
    }

    /// True while some destination has more queued than the bound: readers pause.
    pub fn congested(&self) -> bool {
        let bound = self.cfg.channel_capacity * self.cfg.batch_max;
        self.outbox.iter().any(|q| q.len() >= bound)
    }

    /// Handles messages this shard sent to itself. Every entry point ends with it.
    pub fn drain_local(&mut self, now: Instant) {
        while let Some(msg) = self.local.pop_front() {
            self.handle_msg(now, self.id, msg);
        }
    }

    /// Lists `conn` for [`poll_conn`](Self::poll_conn) (once until polled).
    pub(super) fn wake_conn(ready: &mut Vec<ConnKey>, conn: &mut Conn) {
        if !conn.io_wanted {
            conn.io_wanted = true;
            ready.push(conn.key as ConnKey);
        }
    }

    /// Output: the next connection that has new output, changed phase (closing) or whose
    /// wait ended (verdict, durable gate, congestion); with the `io_token` its driver set.
    /// Call after every input until it returns `None`; then write each one's `out` and look at
    /// its phase. A connection listed twice before a poll comes once.
    pub fn poll_conn(&mut self) -> Option<(ConnKey, u32)> {
        while let Some(key) = self.ready.pop() {
            if let Some(conn) = self.conns.get_mut(key) {
                if conn.io_wanted {
                    conn.io_wanted = false;
                    return Some((key, conn.io_token));
                }
            }
        }
        None
    }

    /// Whether [`poll_conn`](Self::poll_conn) has something (without taking it).
    pub fn conn_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Output: whether batches were queued for other shards or the control plane since the
    /// last call (the shell then runs its flusher: [`take_outbox`](Self::take_outbox) and
    /// [`take_cluster_out`](Self::take_cluster_out)).
    pub fn take_flush_wanted(&mut self) -> bool {
        std::mem::take(&mut self.flush_wanted)
    }

    /// Input: a batch from shard `from`, in the order `from` queued it. Counts the durable
    /// publishes in it for the cross-shard acknowledgements of `storage.durability = "sync"`.
    pub fn handle_peer(&mut self, now: Instant, from: ShardId, batch: crate::bus::Batch) {
        let durable_publishes = self.durable_count(&batch);
        for msg in batch {
            self.handle_msg(now, from, msg);
        }
        self.drain_local(now);
        if let Some(counted) = durable_publishes {
            self.durable_received(now, from, counted);
        }
    }

    /// Output: the next batch for shard `to`, at most `batch_max` messages, in queue order.
    pub fn take_batch(&mut self, to: ShardId) -> Option<crate::bus::Batch> {
        let max = self.cfg.batch_max;
        let q = &mut self.outbox[to];
        if q.is_empty() {
            None
        } else if q.len() > max {
            Some(q.drain(..max).collect())
        } else {
            Some(std::mem::take(q).into())
        }
    }

    /// Whether a batch waits for another shard or the control plane.
    pub fn has_output(&self) -> bool {
        self.outbox.iter().any(|q| !q.is_empty()) || self.cluster_pending()
    }

    /// Output: everything queued for the control plane, in order.
    pub fn take_cluster_out(&mut self) -> Vec<ToCluster> {
        self.cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.out))
            .unwrap_or_default()
    }

    /// Puts back a batch the control plane's queue had no room for, ahead of what came since.
    pub fn return_cluster_out(&mut self, batch: Vec<ToCluster>) {
        let c = self.cluster.as_mut().expect("a linked shard");
        let newer = std::mem::replace(&mut c.out, batch);
        c.out.extend(newer);
    }

    /// The next instant [`handle_timeout`](Self::handle_timeout) has work: an offline
    /// session's expiry or a delayed will. The shell may call it earlier (housekeeping) too.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let sessions = self.offline.first().map(|&(at, _, _)| at);
        let wills = self.delayed_wills.next_deadline();
        let conns = self.next_conn_timer();
        // Retained deliveries left: due now (the start is in the past).
        let walks = (!self.retained_walks.is_empty() || !self.retained_dumps.is_empty())
            .then_some(self.started);
        [sessions, wills, conns, walks].into_iter().flatten().min()
    }

    /// Input: time passed. Expires offline sessions, publishes delayed wills that are due,
    /// forgets ended traces, gives back memory of tables a storm grew, and sends the clients
    /// away once the move trigger was pulled.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.fire_conn_timers(now);
        self.retained_walks_step(now);
        self.expire_sessions(now);
        self.expire_traces(now);
        self.shrink_transient_tables();
        self.move_clients_if_moved();
        self.drain_local(now);
    }

    /// Input: the node's move trigger was pulled (`listener.moved_to`): CONNECTs are refused
    /// with CONNACK 0x9D from now on, and the next
    /// [`move_clients_if_moved`](Self::move_clients_if_moved) sends the connected clients away.
    pub fn pull_move(&mut self) {
        self.move_pulled = true;
    }

    /// The wall clock at `now`, derived from the one given to [`new`](Self::new).
    pub fn wall(&self, now: Instant) -> SystemTime {
        self.wall_started + now.saturating_duration_since(self.started)
    }

    pub(super) fn nonce_from(rng: &mut rand_chacha::ChaCha20Rng) -> Nonce {
        use rand_core::RngCore;
        let mut nonce = Nonce::default();
        rng.fill_bytes(&mut nonce);
        nonce
    }

    // ---- packets -----------------------------------------------------------------------

    // ---- cross-shard messages ---------------------------------------------------------
}

/// The message a will becomes when it is published.
fn will_message(will: LastWill, publisher: ByteStr, now: Instant) -> Message {
    let p = will.properties;
    Message {
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        expires_at: p
            .message_expiry_interval
            .map(|s| now + Duration::from_secs(u64::from(s))),
        properties: PublishProperties {
            payload_format_indicator: p.payload_format_indicator,
            message_expiry_interval: p.message_expiry_interval,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p.correlation_data,
            user_properties: p.user_properties,
            ..Default::default()
        },
        publisher,
    }
}

/// `wall` as Unix seconds (0 before 1970, saturated in 2106).
fn unix_secs(wall: SystemTime) -> u32 {
    wall.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().min(u64::from(u32::MAX)) as u32)
}

/// A one-shard core for the unit tests of the shard's parts.
#[cfg(test)]
fn test_core(now: Instant, connect_timeout: Duration, limits: Limits) -> ShardCore {
    let settings = CoreSettings {
        node_name: "n".into(),
        shards: 1,
        auth: false,
        acl_deny_action: Default::default(),
        max_connections: 100,
        max_connection_rate: 0,
        connect_timeout,
        limits,
        shared_strategy: Default::default(),
        channel_capacity: 4,
        batch_max: 16,
        sys_interval: None,
        authenticators: Default::default(),
        redirect: Default::default(),
    };
    settings.validate().expect("valid settings");
    ShardCore::new(
        now,
        SystemTime::UNIX_EPOCH,
        0,
        Arc::new(settings),
        ahash::RandomState::with_seeds(1, 2, 3, 4),
        [7; 32],
    )
}

/// Opens a connection and gives it a CONNECT as `client_id` (keep-alive off, no will; v5
/// with a Session Expiry Interval of an hour), for the unit tests of the shard's parts.
#[cfg(test)]
fn test_connect(
    c: &mut ShardCore,
    now: Instant,
    client_id: &str,
    protocol: Protocol,
    clean_start: bool,
) -> ConnKey {
    let key = c.open_conn(now, None, crate::ListenerKind::Tcp, 1, 0).0;
    let connect = Connect {
        protocol,
        clean_start,
        keep_alive: 0,
        client_id: ByteStr::from(client_id),
        will: None,
        username: None,
        password: None,
        properties: shardmq_codec::ConnectProperties {
            session_expiry_interval: protocol.is_v5().then_some(3600),
            ..Default::default()
        },
    };
    c.on_packet(now, key, Packet::Connect(Box::new(connect)));
    key
}

/// A retained QoS 0 message on `topic`, for the unit tests of the shard's parts.
#[cfg(test)]
fn test_message(topic: &ByteStr) -> Arc<Message> {
    Arc::new(Message {
        topic: topic.clone(),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtMostOnce,
        retain: true,
        properties: Default::default(),
        expires_at: None,
        publisher: ByteStr::from("p"),
    })
}

#[cfg(test)]
mod conn_tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

    /// One `Conn` lives per connection, idle ones included: a field that grows it should be
    /// cold (in `ConnCold`) or earn its bytes.
    #[test]
    fn a_connection_is_at_most_88_bytes() {
        assert!(
            std::mem::size_of::<Conn>() <= 88,
            "Conn is {} B",
            std::mem::size_of::<Conn>()
        );
    }

    #[test]
    fn an_idle_plain_connection_holds_nothing_cold_and_keeps_its_fields() {
        let now = Instant::now();
        let mut c = test_core(now, Duration::from_secs(10), Limits::default());
        let v4 = SocketAddr::from((Ipv4Addr::new(10, 1, 2, 3), 4567));
        let key = c.open_conn(now, Some(v4), crate::ListenerKind::Tcp, 1, 0).0;
        let conn = &mut c.conns[key];
        assert_eq!(conn.peer(), Some(v4));
        assert!(conn.cold.is_none(), "an IPv4 peer stays inline");
        assert_eq!(conn.read_timeout(), Some(Duration::from_secs(10)));
        assert_eq!(conn.session(), None);
        conn.set_cert_name(None);
        assert!(conn.cold.is_none(), "no name, nothing allocated");
        assert!(!conn.gated());

        conn.set_session(Some(7));
        assert_eq!(conn.session(), Some(7));
        conn.set_session(None);
        assert_eq!(conn.session(), None);
        conn.set_read_timeout(None);
        assert_eq!(conn.read_timeout(), None);
        conn.set_read_timeout(Some(Duration::from_micros(10)));
        assert_eq!(
            conn.read_timeout(),
            Some(Duration::from_millis(1)),
            "rounded up, never 0"
        );

        // An IPv6 peer (a PROXY header's) goes cold, and back inline for IPv4.
        let v6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 9, 0, 0));
        conn.set_peer(Some(v6));
        assert_eq!(conn.peer(), Some(v6));
        conn.set_cert_name(Some("device-7".into()));
        assert_eq!(conn.cert_name(), Some("device-7"));
        conn.set_peer(Some(v4));
        assert_eq!(conn.peer(), Some(v4));
        assert_eq!(conn.cert_name(), Some("device-7"));
        conn.set_peer(None);
        assert_eq!(conn.peer(), None);
    }
}
