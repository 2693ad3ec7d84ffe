//! One shard's state: its connections, the sessions they own, its subscription trie, its
//! replica of the node's routing table and retained store, and its partition of the client
//! registry. Single-threaded: every method runs on the shard's own executor, never across an
//! `.await`.

use crate::bus::{ShardId, ShardMsg, ShardSet};
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
use shardmq_broker::shared::{is_shared, LocalGroup, SharedKey};
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
use tracing::{debug, trace, warn};

mod durable;
mod mgmt;
mod shared;

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
pub struct Conn {
    pub id: u64,
    pub phase: Phase,
    pub out: BytesMut,
    /// The connection's own key in the shard's slab.
    key: u32,
    /// What the driver asked [`ShardCore::poll_conn`] to hand back with the key (its slot).
    pub io_token: u32,
    /// On the list [`ShardCore::poll_conn`] drains: set once until polled.
    io_wanted: bool,
    pub session: Option<SessionKey>,
    pub protocol: Option<Protocol>,
    /// Read timeout the driver should apply (connect timeout, then 1.5 × keep-alive).
    pub read_timeout: Option<Duration>,
    /// Set when the node is over `max_connections`: the CONNECT is refused.
    over_limit: bool,
    /// The connection ended with a DISCONNECT from the client (no will, unless asked).
    graceful: Option<bool>,
    /// Enhanced authentication, for connections whose CONNECT named a method.
    auth: Option<Box<ConnAuth>>,
    /// The client's address: the socket's peer, or what a PROXY header said.
    pub peer: Option<std::net::SocketAddr>,
    /// The client certificate's name (`listener.tls.peer_cert_as_username`), after the handshake.
    pub cert_name: Option<Box<str>>,
    /// Who the auth workers said the client is, and its ACL; `None` when `[auth]` is off.
    ident: Option<Box<ConnIdent>>,
    /// `storage.durability = "sync"`: output held until what it acknowledges is durable.
    pub gates: Option<Box<crate::durable::ConnGates>>,
    /// The listener it came in on.
    pub listener: crate::ListenerKind,
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
    ack: SubAck,
    retained: Vec<(ByteStr, Subscription, bool)>,
}

/// A CONNACK held until every shard routes the subscriptions the session brought along.
struct ConnectSync {
    conn: ConnKey,
    conn_id: u64,
    session: SessionKey,
    /// The session's registration token: a takeover while waiting replaces the session.
    reg_token: u64,
    remaining: usize,
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
    fn count_session(&mut self, before: SessionStats, after: SessionStats) {
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
    by_client: ahash::AHashMap<ByteStr, SessionKey>,
    subs: SubscriptionTrie<Subscribers>,
    routes: SubscriptionTrie<ShardSet>,
    retained: RetainedStore<Arc<Message>>,
    registry: ahash::AHashMap<ByteStr, RegEntry>,
    pending_connects: ahash::AHashMap<u64, PendingConnect>,
    /// CONNECTs whose credentials the auth workers are checking, by token.
    pending_auth: ahash::AHashMap<u64, PendingAuth>,
    /// Credentials for the verifier, polled by the shell (`poll_verify`).
    verify_out: Vec<(u64, Credentials)>,
    /// Takeovers that arrived while this shard's own claim for the client was in flight.
    deferred_takeovers: ahash::AHashMap<ByteStr, (ShardId, u64, bool)>,
    route_syncs: ahash::AHashMap<u64, RouteSync>,
    connect_syncs: ahash::AHashMap<u64, ConnectSync>,
    offline: BTreeSet<(Instant, SessionKey, u64)>,
    /// Wills waiting for their Will Delay Interval, by client id.
    delayed_wills: DelayedWills<LastWill>,
    next_token: u64,
    next_conn_id: u64,
    /// Messages for other shards, per destination, sent in batches by the flusher.
    pub outbox: Vec<Vec<ShardMsg>>,
    /// Something was queued for another shard or the control plane since the last
    /// [`ShardCore::take_flush_wanted`].
    flush_wanted: bool,
    /// Connections with new output, a phase change or the end of a wait (`poll_conn`).
    ready: Vec<ConnKey>,
    local: VecDeque<ShardMsg>,
    hasher: ahash::RandomState,
    /// Connections this shard holds (the node's count is the shell's, given to `open_conn`).
    pub connections: usize,
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
    /// Replica of the other nodes' shared groups: filter → (group, nodes with members).
    remote_shared: SubscriptionTrie<SmallVec<[(ByteStr, NodeSet); 1]>>,
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
            verify_out: Vec::new(),
            deferred_takeovers: Default::default(),
            route_syncs: Default::default(),
            connect_syncs: Default::default(),
            offline: BTreeSet::new(),
            delayed_wills: DelayedWills::default(),
            next_token: 0,
            next_conn_id: 0,
            outbox: (0..nshards).map(|_| Vec::new()).collect(),
            flush_wanted: false,
            ready: Vec::new(),
            local: VecDeque::new(),
            hasher,
            connections: 0,
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
            cluster: None,
            durable: None,
            traces: None,
        }
    }

    /// Queues `msg` for the control plane and wakes the flusher.
    fn tell_cluster(&mut self, msg: ToCluster) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if c.out.len() >= CLUSTER_OUT_MAX && matches!(msg, ToCluster::Forward { .. }) {
            c.forward_dropped += 1;
            if c.forward_dropped.is_power_of_two() {
                warn!(
                    shard = self.id,
                    dropped = c.forward_dropped,
                    "control plane queue full: forwarded publishes dropped"
                );
            }
            return;
        }
        c.out.push(msg);
        self.flush_wanted = true;
    }

    /// The per-client limits in force (a configuration reload replaces them).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// True if the flusher has something for the control plane.
    pub fn cluster_pending(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| !c.out.is_empty())
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        (self.next_token << 8) | self.id as u64
    }

    fn owner_of(&self, client_id: &str) -> ShardId {
        (self.hasher.hash_one(client_id) % self.nshards as u64) as ShardId
    }

    /// Queues `msg` for shard `to` (handled in place, after the current step, if `to` is us).
    fn send(&mut self, to: ShardId, msg: ShardMsg) {
        if to == self.id {
            self.local.push_back(msg);
            return;
        }
        self.outbox[to].push(msg);
        self.flush_wanted = true;
    }

    fn broadcast(&mut self, msg: impl Fn() -> ShardMsg) {
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
            self.handle_msg(now, msg);
        }
    }

    /// Lists `conn` for [`poll_conn`](Self::poll_conn) (once until polled).
    fn wake_conn(ready: &mut Vec<ConnKey>, conn: &mut Conn) {
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
            self.handle_msg(now, msg);
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
            Some(std::mem::take(q))
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
        match (sessions, wills) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Input: time passed. Expires offline sessions, publishes delayed wills that are due,
    /// forgets ended traces, gives back memory of tables a storm grew, and sends the clients
    /// away once the move trigger was pulled.
    pub fn handle_timeout(&mut self, now: Instant) {
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

    fn nonce_from(rng: &mut rand_chacha::ChaCha20Rng) -> Nonce {
        use rand_core::RngCore;
        let mut nonce = Nonce::default();
        rng.fill_bytes(&mut nonce);
        nonce
    }

    // ---- connections -------------------------------------------------------------------

    /// Registers an accepted connection.
    ///
    /// `node_connections` is the node's count of connections with this one (the shell keeps
    /// it across shards): over `max_connections`, its CONNECT is refused. `io_token` comes
    /// back with the key from [`poll_conn`](Self::poll_conn).
    pub fn open_conn(
        &mut self,
        peer: Option<std::net::SocketAddr>,
        listener: crate::ListenerKind,
        node_connections: usize,
        io_token: u32,
    ) -> (ConnKey, u64) {
        let n = node_connections;
        self.connections += 1;
        self.next_conn_id += 1;
        let id = self.next_conn_id;
        let key = self.conns.vacant_key();
        let key_u32 = u32::try_from(key).expect("fewer than 2^32 connections per shard");
        let inserted = self.conns.insert(Conn {
            id,
            phase: Phase::AwaitConnect,
            out: BytesMut::new(),
            key: key_u32,
            io_token,
            io_wanted: false,
            session: None,
            protocol: None,
            read_timeout: Some(self.connect_timeout),
            over_limit: n > self.max_connections,
            graceful: None,
            auth: None,
            peer,
            cert_name: None,
            ident: None,
            gates: None,
            listener,
        });
        assert_eq!(inserted, key, "the slab fills its vacant key");
        (key, id)
    }

    /// Writes a v5 DISCONNECT (if the protocol has one) and moves the connection to Closing.
    pub fn close_conn(&mut self, key: ConnKey, close: Close) {
        let conn = &mut self.conns[key];
        if conn.phase == Phase::Closing {
            return;
        }
        if conn.protocol == Some(Protocol::V5) && conn.phase == Phase::Active {
            let params = conn
                .session
                .and_then(|s| self.sessions.get(s))
                .and_then(|slot| slot.session.conn_params());
            encode(
                &server_disconnect_for(close, params),
                Protocol::V5,
                &mut conn.out,
            );
        }
        conn.phase = Phase::Closing;
        Self::wake_conn(&mut self.ready, conn);
    }

    /// The driver is done with the connection: detach the session, publish the will unless
    /// the client said goodbye, start the expiry clock or end the session.
    pub fn conn_closed(&mut self, now: Instant, key: ConnKey) {
        assert!(self.connections > 0, "a connection closes once");
        self.connections -= 1;
        let conn = self.conns.remove(key);
        let Some(skey) = conn.session else { return };
        let slot = &mut self.sessions[skey];
        slot.conn = None;
        slot.session.detach();
        let expiry = slot.session.expiry_secs();
        let will = match conn.graceful {
            Some(false) => {
                slot.session.take_will();
                None
            }
            // A will that waits for its delay stays in the session (and in its stored image,
            // so a restart in between still publishes it) until it goes out.
            _ if slot.session.will().is_some_and(|w| {
                will_delay(w.properties.will_delay_interval.unwrap_or(0), expiry).is_some()
            }) =>
            {
                slot.session.will().cloned()
            }
            _ => slot.session.take_will(),
        };
        if let Some(will) = will {
            let client_id = slot.session.client_id().clone();
            self.publish_will_after(now, client_id, will, expiry);
        }
        if expiry != 0 {
            self.shared_set_online(skey, false);
        }
        self.journal_flush(now, skey);
        if expiry == 0 {
            self.end_session(skey);
        } else if expiry != EXPIRY_NEVER {
            let at = now + Duration::from_secs(u64::from(expiry));
            let slot = &mut self.sessions[skey];
            slot.expires_at = Some(at);
            self.offline.insert((at, skey, slot.reg_token));
        }
        self.drain_local(now);
    }

    /// Removes a session for good: its subscriptions leave the trie, the registry forgets it.
    fn end_session(&mut self, skey: SessionKey) {
        self.durable_end(skey);
        let mut slot = self.sessions.remove(skey);
        let client_id = slot.session.client_id().clone();
        debug!(shard = self.id, client_id = %client_id, "session ended");
        self.by_client.remove(&client_id);
        if let Some(at) = slot.expires_at {
            self.offline.remove(&(at, skey, slot.reg_token));
        }
        for filter in slot.session.clear_subscriptions() {
            self.trie_remove(&filter, skey);
        }
        self.redispatch_shared(&mut slot.session);
        let owner = self.owner_of(&client_id);
        let me = self.id;
        self.send(
            owner,
            ShardMsg::Release {
                client_id,
                shard: me,
                token: slot.reg_token,
            },
        );
    }

    /// Takes a session off this shard (takeover), returning it with its subscriptions
    /// cleared from this shard's trie but kept in the session itself.
    fn extract_session(&mut self, skey: SessionKey) -> Session {
        let slot = self.sessions.remove(skey);
        self.by_client.remove(slot.session.client_id());
        if let Some(at) = slot.expires_at {
            self.offline.remove(&(at, skey, slot.reg_token));
        }
        let filters: Vec<ByteStr> = slot
            .session
            .subscriptions()
            .map(|(f, _)| f.clone())
            .collect();
        for filter in filters {
            self.trie_remove(&filter, skey);
        }
        slot.session
    }

    /// Publishes `will` now, or after its Will Delay Interval cut to the session expiry
    /// `expiry_secs` (MQTT 5.0 §3.1.3.2.2); a reconnect before then cancels it (`takeover`).
    fn publish_will_after(
        &mut self,
        now: Instant,
        client_id: ByteStr,
        will: LastWill,
        expiry_secs: u32,
    ) {
        let delay_secs = will.properties.will_delay_interval.unwrap_or(0);
        match will_delay(delay_secs, expiry_secs) {
            None => self.publish_will(now, client_id, will),
            Some(delay) => {
                debug!(shard = self.id, client_id = %client_id, ?delay, "will delayed");
                let replaced = self
                    .delayed_wills
                    .schedule(client_id.clone(), now + delay, will);
                if let Some(old) = replaced {
                    self.publish_will(now, client_id, old);
                }
            }
        }
    }

    fn publish_will(&mut self, now: Instant, client_id: ByteStr, will: LastWill) {
        let msg = will_message(will, client_id, now);
        debug!(shard = self.id, client_id = %msg.publisher, "publishing will");
        self.route(now, Arc::new(msg));
    }

    /// Expires offline sessions whose time has come, after publishing the delayed wills that
    /// are due (a will is never due later than its session's end).
    /// Gives back the capacity that a burst left in the tables of work in progress (pending
    /// CONNECTs and their auth checks, route and connect syncs, deferred takeovers): hash
    /// tables never shrink by themselves, and after a connect storm of 10,000 clients the
    /// empty tables held more memory than the clients. Housekeeping calls it.
    pub fn shrink_transient_tables(&mut self) {
        fn shrink<K: Eq + std::hash::Hash, V>(m: &mut ahash::AHashMap<K, V>) {
            if m.capacity() > 64 && m.len() * 4 < m.capacity() {
                let keep = m.len() * 2;
                m.shrink_to(keep);
            }
        }
        shrink(&mut self.pending_connects);
        shrink(&mut self.pending_auth);
        shrink(&mut self.route_syncs);
        shrink(&mut self.connect_syncs);
        shrink(&mut self.deferred_takeovers);
    }

    pub fn expire_sessions(&mut self, now: Instant) {
        while let Some((client_id, will)) = self.delayed_wills.pop_due(now) {
            if let Some(&skey) = self.by_client.get(&client_id) {
                // Out now: the session (and its stored image) forgets it.
                self.sessions[skey].session.take_will();
                self.journal_flush(now, skey);
            }
            self.publish_will(now, client_id, will);
        }
        while let Some(&(at, skey, token)) = self.offline.first() {
            if at > now {
                break;
            }
            self.offline.pop_first();
            let live = self
                .sessions
                .get(skey)
                .is_some_and(|s| s.reg_token == token && s.conn.is_none());
            if live {
                self.sessions[skey].expires_at = None;
                self.end_session(skey);
            }
        }
        self.drain_local(now);
    }

    // ---- packets -----------------------------------------------------------------------

    /// One decoded packet from connection `key`.
    pub fn on_packet(&mut self, now: Instant, key: ConnKey, packet: Packet) {
        if self.traces.is_some() {
            self.trace_in(now, key, &packet);
        }
        self.stats.messages_in += u64::from(matches!(packet, Packet::Publish(_)));
        // What a stored change acknowledges (`storage.durability = "sync"`): the PUBACK/PUBREC
        // of a QoS 1/2 PUBLISH, and the PUBCOMP of a PUBREL (an early one could let a reused
        // packet id pass for a duplicate after a crash).
        let gate = match &packet {
            Packet::Publish(p) if p.qos != QoS::AtMostOnce => {
                if self.storage_refuses() && self.conns[key].phase == Phase::Active {
                    self.refuse_publish(key, p.qos, p.pkid);
                    return;
                }
                true
            }
            Packet::PubRel(_) => true,
            _ => false,
        } && self.durable.is_some();
        let gate_at = self.conns[key].out.len();
        let conn = &mut self.conns[key];
        match conn.phase {
            Phase::AwaitConnect => match packet {
                Packet::Connect(connect) => self.on_connect(now, key, &connect),
                other => {
                    warn!(
                        shard = self.id,
                        packet = other.name(),
                        "first packet is not CONNECT; closing"
                    );
                    self.close_conn(
                        key,
                        Close {
                            reason: ReasonCode::PROTOCOL_ERROR,
                            why: "first packet not CONNECT",
                        },
                    );
                }
            },
            Phase::Authenticating => self.on_connect_auth(key, packet),
            Phase::Verifying | Phase::Claiming | Phase::Closing => {
                debug!(shard = self.id, "packet while not active ignored");
            }
            Phase::Active if conn.auth.is_some() && matches!(packet, Packet::Auth(_)) => {
                self.on_reauth(key, packet)
            }
            Phase::Active => {
                let Some(skey) = conn.session else { return };
                let mut actions = std::mem::take(&mut self.actions_scratch);
                let slot = &mut self.sessions[skey];
                let before = slot.session.stats();
                let result =
                    slot.session
                        .handle(now, packet, &self.limits, &mut conn.out, &mut actions);
                // An acknowledgement frees the window: queued messages go out here.
                self.stats.count_session(before, slot.session.stats());
                if let Err(close) = result {
                    warn!(shard = self.id, client_id = %slot.session.client_id(), reason = ?close.reason, why = close.why, "protocol violation; disconnecting");
                    actions.clear();
                    self.actions_scratch = actions;
                    self.close_conn(key, close);
                    return;
                }
                self.run_actions(now, key, skey, &mut actions);
                actions.clear();
                self.actions_scratch = actions;
                self.journal_flush(now, skey);
            }
        }
        self.drain_local(now);
        if gate {
            self.durable_gate(key, gate_at);
        }
    }

    /// The decoder rejected the byte stream: answer as the spec says and close.
    pub fn on_decode_error(&mut self, key: ConnKey, reason: ReasonCode, what: &str) {
        let conn = &mut self.conns[key];
        warn!(shard = self.id, conn = conn.id, reason = ?reason, error = what, "bad packet; closing");
        if conn.phase == Phase::AwaitConnect && reason == ReasonCode::UNSUPPORTED_PROTOCOL_VERSION {
            // MQTT-3.1.2-2: CONNACK 0x84 (3.x: return code 1), then close.
            // The level is one we do not speak, so answer in the 3.1.1 layout (return code 1).
            encode(
                &Packet::ConnAck(connack_refusal(reason)),
                Protocol::V3_1_1,
                &mut conn.out,
            );
        }
        self.close_conn(
            key,
            Close {
                reason,
                why: "decode error",
            },
        );
    }

    fn on_connect(&mut self, now: Instant, key: ConnKey, connect: &Connect) {
        let id = self.id;
        let conn = &mut self.conns[key];
        conn.protocol = Some(connect.protocol);
        let refuse = |conn: &mut Conn, code: ReasonCode| {
            encode(
                &Packet::ConnAck(connack_refusal(code)),
                connect.protocol,
                &mut conn.out,
            );
            conn.phase = Phase::Closing;
        };
        let moved = self.move_pulled;
        if let Some(ack) = self.cfg.redirect.connack(moved, connect.protocol) {
            debug!(shard = id, client_id = %connect.client_id, reason = ?ack.code, "redirecting");
            encode(&Packet::ConnAck(ack), connect.protocol, &mut conn.out);
            conn.phase = Phase::Closing;
            return;
        }
        if conn.over_limit {
            warn!(shard = id, client_id = %connect.client_id, "max_connections reached; refusing");
            refuse(conn, ReasonCode::SERVER_BUSY);
            return;
        }
        if let Some(bucket) = &mut self.connect_rate {
            if !bucket.try_take(now) {
                warn!(shard = id, client_id = %connect.client_id, "max_connection_rate exceeded; refusing");
                refuse(conn, ReasonCode::CONNECTION_RATE_EXCEEDED);
                return;
            }
        }
        let conn_id = conn.id;
        let counter = self.next_conn_id;
        let accepted = match accept_connect(connect, &self.limits, || {
            ByteStr::from(format!("shardmq-{id}-{conn_id}-{counter:x}"))
        }) {
            Ok(a) => a,
            Err(code) => {
                warn!(shard = id, client_id = %connect.client_id, reason = ?code, "CONNECT refused");
                refuse(conn, code);
                return;
            }
        };
        if self.cfg.auth {
            self.verify(key, connect, accepted);
            return;
        }
        if let Some(username) = &connect.username {
            // Kept for the management API only (no ACL applies without `[auth]`).
            conn.ident = Some(Box::new(ConnIdent {
                username: Some(username.to_string()),
                authorizer: None,
            }));
        }
        self.begin_session(key, connect, accepted);
    }

    /// Queues the CONNECT's credentials for the verifier ([`poll_verify`](Self::poll_verify));
    /// its [`Verdict`] comes back through [`handle_verdict`](Self::handle_verdict). The
    /// connection reads nothing meanwhile.
    fn verify(&mut self, key: ConnKey, connect: &Connect, accepted: Accepted) {
        let token = self.token();
        let conn = &mut self.conns[key];
        let username = match &conn.cert_name {
            Some(name) => Some(name.to_string()),
            None => connect.username.as_ref().map(|u| u.to_string()),
        };
        let credentials = Credentials {
            client_id: accepted.client_id.to_string(),
            username,
            password: connect.password.clone(),
            peer: conn
                .peer
                .map(|p| p.ip())
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            cert_name: conn.cert_name.as_ref().map(|n| n.to_string()),
            protocol_version: connect.protocol.level(),
        };
        conn.phase = Phase::Verifying;
        self.pending_auth.insert(
            token,
            PendingAuth {
                conn: key,
                conn_id: conn.id,
                connect: Box::new(connect.clone()),
                accepted,
            },
        );
        self.verify_out.push((token, credentials));
    }

    /// Output: the next CONNECT's credentials to judge, with the token its verdict names.
    /// A certificate name (`peer_cert_as_username`) is the credential itself: the verifier
    /// only looks up its ACL.
    pub fn poll_verify(&mut self) -> Option<(u64, Credentials)> {
        if self.verify_out.is_empty() {
            return None;
        }
        Some(self.verify_out.remove(0))
    }

    /// Input: the verifier's verdict on the credentials polled with `token`. A verdict for a
    /// connection that closed meanwhile is dropped.
    pub fn handle_verdict(&mut self, now: Instant, token: u64, verdict: Verdict) {
        let Some(pending) = self.pending_auth.remove(&token) else {
            return;
        };
        let alive = self
            .conns
            .get(pending.conn)
            .is_some_and(|c| c.id == pending.conn_id && c.phase == Phase::Verifying);
        if alive {
            self.conns[pending.conn].phase = Phase::AwaitConnect;
            if matches!(verdict, Verdict::Busy) {
                let conn = &mut self.conns[pending.conn];
                warn!(shard = self.id, client_id = %pending.connect.client_id, "auth.queue_max CONNECTs wait for verification; refusing");
                Self::refuse_connect(
                    &mut self.ready,
                    conn,
                    pending.connect.protocol,
                    ReasonCode::SERVER_BUSY,
                );
            } else {
                self.verified(
                    now,
                    pending.conn,
                    &pending.connect,
                    pending.accepted,
                    verdict,
                );
                Self::wake_conn(&mut self.ready, &mut self.conns[pending.conn]);
            }
        }
        self.drain_local(now);
    }

    /// Goes on with a CONNECT once its credentials are judged.
    fn verified(
        &mut self,
        _now: Instant,
        key: ConnKey,
        connect: &Connect,
        accepted: Accepted,
        outcome: Verdict,
    ) {
        let conn = &mut self.conns[key];
        let code = match outcome {
            Verdict::Allowed {
                username,
                authorizer,
            } => {
                let will_denied = match (&accepted.will, &authorizer) {
                    (Some(will), Some(a)) => !a.may_publish(&will.topic),
                    _ => false,
                };
                if !will_denied {
                    trace!(shard = self.id, client_id = %accepted.client_id, ?username, "credentials accepted");
                    conn.ident = Some(Box::new(ConnIdent {
                        username,
                        authorizer,
                    }));
                    self.begin_session(key, connect, accepted);
                    return;
                }
                warn!(shard = self.id, client_id = %accepted.client_id, peer = ?conn.peer, "the will's topic is denied by the ACL; refusing");
                ReasonCode::NOT_AUTHORIZED
            }
            Verdict::BadCredentials => {
                warn!(shard = self.id, client_id = %accepted.client_id, peer = ?conn.peer, "bad username or password; refusing");
                ReasonCode::BAD_USER_NAME_OR_PASSWORD
            }
            Verdict::NotAuthorized | Verdict::Busy => {
                warn!(shard = self.id, client_id = %accepted.client_id, peer = ?conn.peer, "not authorized; refusing");
                ReasonCode::NOT_AUTHORIZED
            }
        };
        Self::refuse_connect(&mut self.ready, conn, connect.protocol, code);
    }

    /// CONNACK with a refusal, then close.
    fn refuse_connect(
        ready: &mut Vec<ConnKey>,
        conn: &mut Conn,
        protocol: Protocol,
        code: ReasonCode,
    ) {
        encode(
            &Packet::ConnAck(connack_refusal(code)),
            protocol,
            &mut conn.out,
        );
        conn.phase = Phase::Closing;
        Self::wake_conn(ready, conn);
    }

    /// Enhanced authentication (when the CONNECT names a method), then the claim.
    fn begin_session(&mut self, key: ConnKey, connect: &Connect, accepted: Accepted) {
        let id = self.id;
        let conn = &mut self.conns[key];
        let mut refuse = |conn: &mut Conn, code: ReasonCode| {
            Self::refuse_connect(&mut self.ready, conn, connect.protocol, code);
        };
        match self
            .cfg
            .authenticators
            .begin(connect, || Self::nonce_from(&mut self.rng))
        {
            Ok(None) => {}
            Ok(Some((exchange, outcome))) => {
                let mut auth = Box::new(ConnAuth {
                    exchange,
                    accepted: None,
                });
                match outcome {
                    AuthOutcome::Challenge(challenge) => {
                        trace!(shard = id, client_id = %accepted.client_id, "CONNECT accepted; authenticating");
                        encode(&Packet::Auth(challenge), Protocol::V5, &mut conn.out);
                        auth.accepted = Some(accepted);
                        conn.auth = Some(auth);
                        conn.phase = Phase::Authenticating;
                        return;
                    }
                    AuthOutcome::Success(_) => conn.auth = Some(auth),
                    AuthOutcome::Fail(code) => {
                        warn!(shard = id, client_id = %connect.client_id, reason = ?code, "authentication failed");
                        refuse(conn, code);
                        return;
                    }
                }
            }
            Err(code) => {
                warn!(shard = id, client_id = %connect.client_id, reason = ?code, "authentication method not offered");
                refuse(conn, code);
                return;
            }
        }
        self.claim(key, accepted);
    }

    /// Asks the registry for the client id of an accepted (and authenticated) CONNECT.
    fn claim(&mut self, key: ConnKey, accepted: Accepted) {
        let id = self.id;
        let conn = &mut self.conns[key];
        let conn_id = conn.id;
        trace!(shard = id, client_id = %accepted.client_id, "CONNECT accepted; claiming");
        conn.phase = Phase::Claiming;
        conn.read_timeout = None;
        let token = self.token();
        let client_id = accepted.client_id.clone();
        let clean_start = accepted.clean_start;
        self.pending_connects.insert(
            token,
            PendingConnect {
                conn: key,
                conn_id,
                accepted,
            },
        );
        let owner = self.owner_of(&client_id);
        self.send(
            owner,
            ShardMsg::Claim {
                client_id,
                shard: id,
                token,
                clean_start,
            },
        );
    }

    /// A packet while the CONNECT's authentication exchange runs: only AUTH may come.
    fn on_connect_auth(&mut self, key: ConnKey, packet: Packet) {
        let id = self.id;
        let conn = &mut self.conns[key];
        let auth = conn
            .auth
            .as_mut()
            .expect("an authenticating connection has an exchange");
        let step = match packet {
            Packet::Auth(a) => auth
                .exchange
                .on_auth(&a, || Self::nonce_from(&mut self.rng)),
            _ => Err(Close {
                reason: ReasonCode::PROTOCOL_ERROR,
                why: "packet other than AUTH while authenticating",
            }),
        };
        let code = match step {
            Ok(AuthOutcome::Challenge(challenge)) => {
                encode(&Packet::Auth(challenge), Protocol::V5, &mut conn.out);
                return;
            }
            Ok(AuthOutcome::Success(_)) => {
                let accepted = auth
                    .accepted
                    .take()
                    .expect("the CONNECT waits for its authentication");
                debug!(shard = id, client_id = %accepted.client_id, method = %auth.exchange.method(), "authenticated");
                self.claim(key, accepted);
                return;
            }
            Ok(AuthOutcome::Fail(code)) => {
                warn!(shard = id, reason = ?code, "authentication failed; refusing");
                code
            }
            Err(close) => {
                warn!(shard = id, reason = ?close.reason, why = close.why, "protocol violation while authenticating; refusing");
                close.reason
            }
        };
        // Before CONNACK the refusal is a CONNACK (MQTT 5.0 §4.13.1); only 5.0 authenticates.
        encode(
            &Packet::ConnAck(connack_refusal(code)),
            Protocol::V5,
            &mut conn.out,
        );
        conn.phase = Phase::Closing;
    }

    /// AUTH from an authenticated, connected client: re-authentication (MQTT 5.0 §4.12.1).
    fn on_reauth(&mut self, key: ConnKey, packet: Packet) {
        let Packet::Auth(a) = packet else {
            unreachable!("only AUTH is routed here")
        };
        let id = self.id;
        let conn = &mut self.conns[key];
        let auth = conn
            .auth
            .as_mut()
            .expect("re-authentication needs an exchange");
        let close = match auth
            .exchange
            .on_auth(&a, || Self::nonce_from(&mut self.rng))
        {
            Ok(AuthOutcome::Challenge(reply) | AuthOutcome::Success(Some(reply))) => {
                trace!(shard = id, reason = ?reply.reason, "re-authentication step");
                encode(&Packet::Auth(reply), Protocol::V5, &mut conn.out);
                return;
            }
            Ok(AuthOutcome::Success(None)) => return,
            Ok(AuthOutcome::Fail(reason)) => Close {
                reason,
                why: "re-authentication failed",
            },
            Err(close) => close,
        };
        warn!(shard = id, reason = ?close.reason, why = close.why, "re-authentication refused; disconnecting");
        self.close_conn(key, close);
    }

    fn run_actions(
        &mut self,
        now: Instant,
        key: ConnKey,
        skey: SessionKey,
        actions: &mut Vec<Action>,
    ) {
        let mut sync: Option<(u64, usize)> = None;
        let mut retained = Vec::new();
        for action in actions.drain(..) {
            match action {
                Action::Publish(msg) => self.route(now, msg),
                Action::Subscribe {
                    filter,
                    subscription,
                    existed,
                } => {
                    let new_route = self.trie_insert(&filter, skey, subscription);
                    // The SUBACK waits for every other shard and, in a cluster, for the
                    // node's route to commit (read-your-writes: a publish anywhere after the
                    // SUBACK reaches this subscriber).
                    let clustered = new_route && self.cluster.is_some() && !is_shared(&filter);
                    let waits =
                        if new_route { self.nshards - 1 } else { 0 } + usize::from(clustered);
                    let token = (waits > 0).then(|| match sync {
                        Some((t, ref mut n)) => {
                            *n += waits;
                            t
                        }
                        None => {
                            let t = self.token();
                            sync = Some((t, waits));
                            t
                        }
                    });
                    if new_route {
                        self.announce_route(&filter, token.filter(|_| self.nshards > 1));
                    }
                    if clustered {
                        let shard = self.id;
                        self.tell_cluster(ToCluster::RouteAdd {
                            filter: filter.clone(),
                            shard,
                            sync: token,
                        });
                    }
                    retained.push((filter, subscription, existed));
                }
                Action::Unsubscribe { filter } => self.trie_remove(&filter, skey),
                Action::SubAck(ack) => {
                    let conn_id = self.conns[key].id;
                    let rs = RouteSync {
                        conn: key,
                        conn_id,
                        session: skey,
                        remaining: 0,
                        ack,
                        retained: std::mem::take(&mut retained),
                    };
                    match sync.take() {
                        Some((token, remaining)) => {
                            self.route_syncs
                                .insert(token, RouteSync { remaining, ..rs });
                        }
                        None => self.finish_subscribe(now, rs),
                    }
                }
                Action::Disconnect { publish_will } => {
                    let conn = &mut self.conns[key];
                    conn.graceful = Some(publish_will);
                    conn.phase = Phase::Closing;
                }
            }
        }
    }

    /// Sends the SUBACK, then the retained messages the new subscriptions ask for.
    fn finish_subscribe(&mut self, now: Instant, rs: RouteSync) {
        let Some(conn) = self.conns.get_mut(rs.conn) else {
            return;
        };
        if conn.id != rs.conn_id || conn.session != Some(rs.session) {
            return;
        }
        let protocol = self.sessions[rs.session].session.protocol();
        let gate_at = conn.out.len();
        encode(&Packet::SubAck(rs.ack), protocol, &mut conn.out);
        Self::wake_conn(&mut self.ready, conn);
        if self.sessions[rs.session].session.is_journaled() {
            self.durable_gate(rs.conn, gate_at);
        }
        for (filter, sub, existed) in rs.retained {
            let send = match sub.options.retain_handling {
                // A shared subscription gets no retained messages (MQTT 5.0 §4.8.2).
                _ if is_shared(&filter) => false,
                RetainHandling::OnSubscribe => true,
                RetainHandling::OnNewSubscribe => !existed,
                RetainHandling::Never => false,
            };
            if !send {
                continue;
            }
            let mut found = Vec::new();
            self.retained
                .for_each_match(&filter, |_, m| found.push(m.clone()));
            let ids: SmallVec<[u32; 1]> = sub.id.into_iter().collect();
            for msg in found {
                let qos = msg.qos.min(sub.options.qos);
                self.deliver_to(now, rs.session as u32, &msg, qos, true, &ids, None);
            }
        }
    }

    // ---- routing -----------------------------------------------------------------------

    /// Adds a subscriber to the local trie. True if the filter is new on this shard.
    /// A shared subscription joins its group instead: true if the group's members changed.
    fn trie_insert(&mut self, filter: &ByteStr, skey: SessionKey, sub: Subscription) -> bool {
        if let Some(key) = SharedKey::of(filter) {
            return self.shared_join(key, skey, sub);
        }
        let set = self.subs.entry_or_insert_with(filter, SmallVec::new);
        let was_empty = set.is_empty();
        match set.iter_mut().find(|(k, _)| *k == skey as u32) {
            Some(entry) => entry.1 = sub,
            None => {
                set.push((skey as u32, sub));
                self.stats.subscriptions += 1;
            }
        }
        was_empty
    }

    /// Removes a subscriber; when the filter has none left here, tells every shard.
    fn trie_remove(&mut self, filter: &ByteStr, skey: SessionKey) {
        if let Some(key) = SharedKey::of(filter) {
            return self.shared_leave(key, skey);
        }
        let Some(set) = self.subs.get_mut(filter) else {
            return;
        };
        let before = set.len();
        set.retain(|(k, _)| *k != skey as u32);
        self.stats.subscriptions -= (before - set.len()) as u64;
        if set.is_empty() {
            self.subs.remove(filter);
            let me = self.id;
            let f = filter.clone();
            self.broadcast(|| ShardMsg::RouteDel {
                filter: f.clone(),
                shard: me,
            });
            self.tell_cluster(ToCluster::RouteDel {
                filter: filter.clone(),
                shard: me,
            });
        }
    }

    fn announce_route(&mut self, filter: &ByteStr, sync: Option<u64>) {
        if let Some(key) = SharedKey::of(filter) {
            return self.announce_shared(key, sync);
        }
        let me = self.id;
        for to in 0..self.nshards {
            let sync = if to == me { None } else { sync };
            self.send(
                to,
                ShardMsg::RouteAdd {
                    filter: filter.clone(),
                    shard: me,
                    sync,
                },
            );
        }
    }

    /// Routes a published message: retained store, then every shard with a matching filter,
    /// then, in a cluster, every other node with a matching route.
    pub fn route(&mut self, now: Instant, msg: Arc<Message>) {
        if self.cluster.is_some() {
            if msg.retain && !msg.topic.starts_with("$SYS/") {
                let topic = msg.topic.clone();
                self.tell_cluster(if msg.payload.is_empty() {
                    ToCluster::RetainDel { topic }
                } else {
                    ToCluster::RetainSet { topic }
                });
            }
            self.forward(&msg);
        }
        self.route_here(now, msg);
    }

    /// Sends `msg` to the other nodes that route its topic (all of them if it is retained,
    /// so every node's retained store has it). `$SYS` topics stay on their node.
    fn forward(&mut self, msg: &Arc<Message>) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if msg.topic.starts_with("$SYS/") {
            return;
        }
        let mut nodes = NodeSet::new();
        if msg.retain {
            nodes.extend(c.peers.iter().copied());
        } else {
            c.remote.for_each_match(&msg.topic, |set| {
                for n in set {
                    if !nodes.contains(n) {
                        nodes.push(*n);
                    }
                }
            });
        }
        let mut shared: SmallVec<[(NodeId, ByteStr); 1]> = SmallVec::new();
        if !c.remote_shared.is_empty() {
            // A shared group takes each message once in the cluster: on this node if it has
            // members here, else on one node that has some (by topic hash).
            let local = &self.shared_routes;
            let hash = self.hasher.hash_one(msg.topic.as_str());
            c.remote_shared.for_each_match(&msg.topic, |groups| {
                for (share, nodes) in groups {
                    let Some(key) = SharedKey::of(share) else {
                        continue;
                    };
                    let here = local
                        .get(&key.filter)
                        .is_some_and(|fg| fg.has_group(&key.group));
                    if !here && !nodes.is_empty() {
                        shared.push((nodes[(hash % nodes.len() as u64) as usize], share.clone()));
                    }
                }
            });
        }
        if !nodes.is_empty() {
            c.forwarded_out += nodes.len() as u64;
            self.tell_cluster(ToCluster::Forward {
                nodes,
                msg: msg.clone(),
            });
        }
        for (node, share) in shared {
            if let Some(c) = self.cluster.as_mut() {
                c.forwarded_out += 1;
            }
            self.tell_cluster(ToCluster::ForwardShared {
                node,
                share,
                msg: msg.clone(),
            });
        }
    }

    /// Routes a message on this node only: retained store, then every shard with a matching
    /// filter, then the shared groups.
    fn route_here(&mut self, now: Instant, msg: Arc<Message>) {
        self.route_plain(now, &msg);
        if !self.shared_routes.is_empty() {
            self.route_shared(now, &msg);
        }
    }

    /// Retained store and plain subscribers of this node (no shared groups).
    fn route_plain(&mut self, now: Instant, msg: &Arc<Message>) {
        if msg.retain {
            let stored = if msg.payload.is_empty() {
                None
            } else {
                Some(msg.detached())
            };
            let topic = msg.topic.clone();
            let origin = Some(self.id);
            let at_unix_ns = self.durable_retained(now, &topic, stored.as_ref());
            self.broadcast(|| ShardMsg::Retain {
                topic: topic.clone(),
                origin,
                at_unix_ns,
                msg: stored.clone(),
            });
        }
        let mut targets = ShardSet::EMPTY;
        self.routes
            .for_each_match(&msg.topic, |set| targets = targets.union(*set));
        for shard in targets.iter() {
            if shard == self.id {
                self.deliver_local(now, msg);
            } else {
                let m = if self.durable_sent(shard, msg.qos) {
                    ShardMsg::DurablePublish(msg.clone())
                } else {
                    ShardMsg::Publish(msg.clone())
                };
                self.send(shard, m);
            }
        }
    }

    /// Delivers to this shard's subscribers: one copy per session, at the highest matching QoS,
    /// with every matching subscription identifier.
    fn deliver_local(&mut self, now: Instant, msg: &Arc<Message>) {
        let mut matches = std::mem::take(&mut self.match_scratch);
        matches.clear();
        self.subs
            .for_each_match(&msg.topic, |set| matches.extend(set.iter().copied()));
        if matches.len() > 1 {
            matches.sort_unstable_by_key(|(k, _)| *k);
        }
        let mut i = 0;
        while i < matches.len() {
            let skey = matches[i].0;
            let mut j = i;
            while j < matches.len() && matches[j].0 == skey {
                j += 1;
            }
            let own = self
                .sessions
                .get(skey as usize)
                .is_some_and(|s| *s.session.client_id() == msg.publisher);
            // One copy per session, from the subscriptions that allow it (a No Local one does
            // not, for the publisher's own messages): the highest QoS, Retain As Published if
            // any asks for it, and every such subscription's identifier.
            let mut grant: Option<(QoS, bool)> = None;
            let mut ids: SmallVec<[u32; 1]> = SmallVec::new();
            for &(_, sub) in &matches[i..j] {
                if own && sub.options.no_local {
                    continue;
                }
                let (qos, rap) = grant.get_or_insert((sub.options.qos, false));
                *qos = (*qos).max(sub.options.qos);
                *rap |= sub.options.retain_as_published;
                ids.extend(sub.id);
            }
            i = j;
            if let Some((qos, rap)) = grant {
                self.deliver_to(
                    now,
                    skey,
                    msg,
                    msg.qos.min(qos),
                    rap && msg.retain,
                    &ids,
                    None,
                );
            }
        }
        self.match_scratch = matches;
    }

    /// Hands `msg` to session `skey` (as a member of shared group `shared`, if given), counts
    /// what the session did with it, and wakes the connection if it has new bytes to write.
    #[allow(clippy::too_many_arguments)] // the delivery's inputs, as Session::deliver takes them
    pub(super) fn deliver_to(
        &mut self,
        now: Instant,
        skey: u32,
        msg: &Arc<Message>,
        qos: QoS,
        retain: bool,
        ids: &[u32],
        shared: Option<&ByteStr>,
    ) {
        let Some(slot) = self.sessions.get_mut(skey as usize) else {
            return;
        };
        let ckey = slot.conn.filter(|&c| self.conns[c].phase == Phase::Active);
        let had_out = ckey.is_some_and(|c| !self.conns[c].out.is_empty());
        let wire = ckey.map(|c| &mut self.conns[c].out);
        let before = slot.session.stats();
        let delivery = match shared {
            None => slot
                .session
                .deliver(now, msg, qos, retain, ids, &self.limits, wire),
            Some(tag) => {
                slot.session
                    .deliver_shared(now, msg, qos, retain, ids, tag, &self.limits, wire)
            }
        };
        self.stats.count_session(before, slot.session.stats());
        let journaled = slot.session.has_changes();
        match delivery {
            Delivery::Sent => {
                if let (Some(c), false) = (ckey, had_out) {
                    Self::wake_conn(&mut self.ready, &mut self.conns[c]);
                }
            }
            Delivery::Queued | Delivery::Displaced => {}
            Delivery::Dropped(reason) => {
                trace!(shard = self.id, client_id = %slot.session.client_id(), ?reason, "message dropped");
            }
        }
        if journaled {
            self.journal_flush(now, skey as usize);
        }
    }

    // ---- cross-shard messages ---------------------------------------------------------

    /// Handles one message from another shard (or from this one, via `send`).
    pub fn handle_msg(&mut self, now: Instant, msg: ShardMsg) {
        match msg {
            ShardMsg::Publish(m) | ShardMsg::DurablePublish(m) => self.deliver_local(now, &m),
            ShardMsg::SharedPublish(sp) => self.shared_deliver(now, *sp),
            ShardMsg::SharedRoute {
                key,
                shard,
                counts,
                sync,
            } => {
                self.apply_shared_route(&key, shard, counts);
                if let Some(token) = sync {
                    self.send(shard, ShardMsg::RouteAck { token });
                }
            }
            ShardMsg::SharedRedispatch { key, msg } => self.shared_dispatch(now, *key, msg),
            ShardMsg::Figures { shard, figures } => self.record_figures(shard, figures),
            ShardMsg::RouteAdd {
                filter,
                shard,
                sync,
            } => {
                let set = self
                    .routes
                    .entry_or_insert_with(&filter, || ShardSet::EMPTY);
                *set = set.with(shard);
                if let Some(token) = sync {
                    self.send(shard, ShardMsg::RouteAck { token });
                }
            }
            ShardMsg::RouteDel { filter, shard } => {
                if let Some(set) = self.routes.get_mut(&filter) {
                    *set = set.without(shard);
                    if set.is_empty() {
                        self.routes.remove(&filter);
                    }
                }
            }
            ShardMsg::RouteAck { token } => self.route_acked(now, token),
            ShardMsg::Retain {
                topic,
                origin,
                at_unix_ns,
                msg,
            } => {
                if origin != Some(self.id) {
                    self.durable_retained_replaced(&topic, at_unix_ns);
                }
                match msg {
                    Some(m) => {
                        self.retained.insert(&topic, m);
                    }
                    None => {
                        self.retained.remove(&topic);
                    }
                }
            }
            ShardMsg::Claim {
                client_id,
                shard,
                token,
                clean_start,
            } => {
                let prev = self
                    .registry
                    .insert(client_id.clone(), RegEntry { shard, token });
                self.tell_cluster(ToCluster::SessionSet {
                    client_id: client_id.clone(),
                });
                match prev {
                    Some(p) => self.send(
                        p.shard,
                        ShardMsg::Takeover {
                            client_id,
                            to: shard,
                            token,
                            discard: clean_start,
                        },
                    ),
                    None => self.send(
                        shard,
                        ShardMsg::Handoff {
                            client_id,
                            token,
                            session: None,
                        },
                    ),
                }
            }
            ShardMsg::Release {
                client_id,
                shard,
                token,
            } => {
                if self
                    .registry
                    .get(&client_id)
                    .is_some_and(|e| e.shard == shard && e.token == token)
                {
                    self.registry.remove(&client_id);
                    self.tell_cluster(ToCluster::SessionDel { client_id });
                }
            }
            ShardMsg::Superseded { token } => {
                if let Some(pc) = self.pending_connects.remove(&token) {
                    if let Some(conn) = self.conns.get_mut(pc.conn).filter(|c| c.id == pc.conn_id) {
                        debug!(shard = self.id, client_id = %pc.accepted.client_id, "claim superseded before CONNACK; closing");
                        conn.phase = Phase::Closing;
                        Self::wake_conn(&mut self.ready, conn);
                    }
                }
            }
            ShardMsg::Takeover {
                client_id,
                to,
                token,
                discard,
            } => self.takeover(now, client_id, to, token, discard),
            ShardMsg::Handoff {
                client_id,
                token,
                session,
            } => self.handoff(now, client_id, token, session),
            ShardMsg::DurableAck { shard, upto } => self.durable_acked(now, shard, upto),
            ShardMsg::SessionStored { client_id } => self.session_stored(&client_id),
        }
    }

    /// One of the acknowledgements a SUBACK or CONNACK waits for (a shard's replica, or the
    /// cluster's commit of the route).
    fn route_acked(&mut self, now: Instant, token: u64) {
        if let Some(rs) = self.route_syncs.get_mut(&token) {
            rs.remaining -= 1;
            if rs.remaining == 0 {
                let rs = self.route_syncs.remove(&token).expect("present");
                self.finish_subscribe(now, rs);
            }
        } else if let Some(cs) = self.connect_syncs.get_mut(&token) {
            cs.remaining -= 1;
            if cs.remaining == 0 {
                let cs = self.connect_syncs.remove(&token).expect("present");
                self.finish_connect(now, cs);
            }
        }
    }

    /// Handles one message from the control plane.
    pub fn handle_cluster(&mut self, now: Instant, msg: FromCluster) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        match msg {
            FromCluster::RouteAdded { filter, node } => match SharedKey::of(&filter) {
                Some(key) => {
                    let groups = c
                        .remote_shared
                        .entry_or_insert_with(&key.filter, SmallVec::new);
                    match groups.iter_mut().find(|(s, _)| *s == filter) {
                        Some((_, nodes)) if nodes.contains(&node) => {}
                        Some((_, nodes)) => nodes.push(node),
                        None => groups.push((filter, smallvec::smallvec![node])),
                    }
                }
                None => {
                    let set = c.remote.entry_or_insert_with(&filter, NodeSet::new);
                    if !set.contains(&node) {
                        set.push(node);
                    }
                }
            },
            FromCluster::RouteRemoved { filter, node } if is_shared(&filter) => {
                let Some(key) = SharedKey::of(&filter) else {
                    return;
                };
                if let Some(groups) = c.remote_shared.get_mut(&key.filter) {
                    for (_, nodes) in groups.iter_mut().filter(|(s, _)| *s == filter) {
                        nodes.retain(|n| *n != node);
                    }
                    groups.retain(|(_, nodes)| !nodes.is_empty());
                    if groups.is_empty() {
                        c.remote_shared.remove(&key.filter);
                    }
                }
            }
            FromCluster::RouteRemoved { filter, node } => {
                if let Some(set) = c.remote.get_mut(&filter) {
                    set.retain(|n| *n != node);
                    if set.is_empty() {
                        c.remote.remove(&filter);
                    }
                }
            }
            FromCluster::Peers(peers) => c.peers = peers,
            FromCluster::DumpRetained { request } => {
                let mut msgs = Vec::with_capacity(self.retained.len());
                self.retained.retain(|_, m| {
                    msgs.push(m.clone());
                    true
                });
                self.tell_cluster(ToCluster::RetainedDump { request, msgs });
            }
            FromCluster::StoreRetained(msgs) => {
                for m in msgs {
                    if m.payload.is_empty() || self.retained.get(&m.topic).is_some() {
                        continue;
                    }
                    let topic = m.topic.clone();
                    let stored = Some(m.detached());
                    self.broadcast(|| ShardMsg::Retain {
                        topic: topic.clone(),
                        origin: None,
                        at_unix_ns: 0,
                        msg: stored.clone(),
                    });
                }
            }
            FromCluster::ClearRoutes => {
                c.remote = SubscriptionTrie::new();
                c.remote_shared = SubscriptionTrie::new();
            }
            FromCluster::Publish(msg) => {
                c.forwarded_in += 1;
                self.stats.messages_in += 1;
                self.route_plain(now, &msg);
            }
            FromCluster::SharedPublish { share, msg } => {
                c.forwarded_in += 1;
                self.stats.messages_in += 1;
                if let Some(key) = SharedKey::of(&share) {
                    self.shared_dispatch(now, key, msg);
                }
            }
            FromCluster::RouteCommitted { token } => self.route_acked(now, token),
            FromCluster::SessionTakenOver { client_id } => self.evict(now, &client_id),
        }
    }

    /// `client_id` connected on another node: its connection here (if any) is closed with
    /// 0x8E Session taken over, its will published, and its session ended.
    fn evict(&mut self, now: Instant, client_id: &ByteStr) {
        let Some(skey) = self.by_client.get(client_id).copied() else {
            return;
        };
        if let Some(ckey) = self.sessions[skey].conn {
            debug!(shard = self.id, client_id = %client_id, "session taken over by another node");
            self.close_conn(
                ckey,
                Close {
                    reason: ReasonCode::SESSION_TAKEN_OVER,
                    why: "taken over by a connection on another node",
                },
            );
            let will = self.sessions[skey].session.take_will();
            self.conns[ckey].session = None;
            self.sessions[skey].conn = None;
            if let Some(will) = will {
                self.publish_will(now, client_id.clone(), will);
            }
        }
        if let Some(will) = self.delayed_wills.cancel(client_id) {
            self.publish_will(now, client_id.clone(), will);
        }
        self.sessions[skey].session.detach();
        self.end_session(skey);
    }

    /// Another connection claimed `client_id`: kick ours and hand the session over.
    fn takeover(
        &mut self,
        now: Instant,
        client_id: ByteStr,
        to: ShardId,
        token: u64,
        discard: bool,
    ) {
        // A claim of ours still in flight for this client, other than the one this takeover
        // answers (when the old session lives on the claiming shard, the takeover comes back
        // here for that very claim, and deferring it would wait for itself).
        if self
            .pending_connects
            .iter()
            .any(|(&t, p)| t != token && p.accepted.client_id == client_id)
        {
            // An earlier claim of ours is still in flight: run this takeover once it lands.
            // A takeover already waiting here belongs to a claim this newer one supersedes
            // (the registry now names the newer claimer): that connection lost the race
            // before its CONNACK and is closed, as if taken over at once.
            if let Some((old_to, old_token, _)) = self
                .deferred_takeovers
                .insert(client_id, (to, token, discard))
            {
                self.send(old_to, ShardMsg::Superseded { token: old_token });
            }
            return;
        }
        let session = match self.by_client.get(&client_id).copied() {
            Some(skey) => {
                if let Some(ckey) = self.sessions[skey].conn {
                    debug!(shard = self.id, client_id = %client_id, "session taken over");
                    self.close_conn(
                        ckey,
                        Close {
                            reason: ReasonCode::SESSION_TAKEN_OVER,
                            why: "taken over",
                        },
                    );
                    // The old connection ends abnormally from the client's view: its will goes,
                    // unless the session continues (no Clean Start) and the will has a delay
                    // (MQTT 5.0 §3.1.3.2.2).
                    let will = self.sessions[skey].session.take_will();
                    let conn = &mut self.conns[ckey];
                    conn.session = None;
                    if let Some(will) = will {
                        if discard || will.properties.will_delay_interval.unwrap_or(0) == 0 {
                            self.publish_will(now, client_id.clone(), will);
                        }
                    }
                }
                // The client is back before its delayed will went out: cancelled, unless the
                // session ends here (Clean Start), which publishes it.
                if let Some(will) = self.delayed_wills.cancel(&client_id) {
                    if discard {
                        self.publish_will(now, client_id.clone(), will);
                    } else {
                        debug!(shard = self.id, client_id = %client_id, "delayed will cancelled");
                    }
                }
                let mut session = self.extract_session(skey);
                session.detach();
                if discard {
                    self.redispatch_shared(&mut session);
                }
                self.durable_extracted(&session, discard);
                (!discard).then(|| Box::new(session))
            }
            None => None,
        };
        self.send(
            to,
            ShardMsg::Handoff {
                client_id,
                token,
                session,
            },
        );
    }

    /// The registry answered our claim: install the session and send CONNACK.
    fn handoff(&mut self, now: Instant, client_id: ByteStr, token: u64, old: Option<Box<Session>>) {
        let Some(pc) = self.pending_connects.remove(&token) else {
            return;
        };
        let conn_alive = self
            .conns
            .get(pc.conn)
            .is_some_and(|c| c.id == pc.conn_id && c.phase == Phase::Claiming);
        let accepted = pc.accepted;
        let session_present = !accepted.clean_start && old.is_some();
        let moved_in = old.is_some();
        let session = match old {
            Some(s) if !accepted.clean_start => *s,
            _ => Session::new(client_id.clone(), accepted.protocol, accepted.expiry_secs),
        };
        let skey = self.sessions.vacant_key();
        let filters: Vec<(ByteStr, Subscription)> = session
            .subscriptions()
            .map(|(f, s)| (f.clone(), *s))
            .collect();
        self.sessions.insert(SessionSlot {
            session,
            conn: None,
            reg_token: token,
            expires_at: None,
            connected_at: 0,
            clean_start: false,
        });
        self.by_client.insert(client_id.clone(), skey);
        self.durable_install(now, skey, accepted.expiry_secs != 0, moved_in);
        // The inherited subscriptions become routable everywhere before CONNACK, so a publish
        // sent after it (from any shard) reaches this session here, not the shard it left.
        let sync = self.token();
        let mut remaining = 0;
        for (filter, sub) in filters {
            if self.trie_insert(&filter, skey, sub) {
                let synced = conn_alive && self.nshards > 1;
                self.announce_route(&filter, synced.then_some(sync));
                remaining += if synced { self.nshards - 1 } else { 0 };
                if !is_shared(&filter) {
                    let shard = self.id;
                    self.tell_cluster(ToCluster::RouteAdd {
                        filter,
                        shard,
                        sync: None,
                    });
                }
            }
        }
        let cs = ConnectSync {
            conn: pc.conn,
            conn_id: pc.conn_id,
            session: skey,
            reg_token: token,
            remaining,
            accepted,
            session_present,
        };
        if !conn_alive {
            self.orphan_session(now, skey);
        } else if remaining > 0 {
            self.connect_syncs.insert(sync, cs);
        } else {
            self.finish_connect(now, cs);
        }
        if let Some((to, t, discard)) = self.deferred_takeovers.remove(&client_id) {
            self.takeover(now, client_id, to, t, discard);
        }
    }

    /// Attaches the connection to its session and sends CONNACK, then whatever the session
    /// had in flight or queued.
    fn finish_connect(&mut self, now: Instant, cs: ConnectSync) {
        let ours = self
            .sessions
            .get(cs.session)
            .is_some_and(|s| s.reg_token == cs.reg_token && s.conn.is_none());
        if !ours {
            // Taken over while the routes were syncing: this connection lost the race.
            if let Some(conn) = self.conns.get_mut(cs.conn).filter(|c| c.id == cs.conn_id) {
                conn.phase = Phase::Closing;
                Self::wake_conn(&mut self.ready, conn);
            }
            return;
        }
        let alive = self
            .conns
            .get(cs.conn)
            .is_some_and(|c| c.id == cs.conn_id && c.phase == Phase::Claiming);
        if !alive {
            self.orphan_session(now, cs.session);
            return;
        }
        let conn = &mut self.conns[cs.conn];
        let accepted = cs.accepted;
        conn.phase = Phase::Active;
        conn.session = Some(cs.session);
        conn.read_timeout = accepted.params.read_timeout();
        let mut connack = connack_for(&accepted, cs.session_present, &self.limits);
        if let Some(auth) = &mut conn.auth {
            auth.exchange.complete_connack(&mut connack);
        }
        let gate_at = conn.out.len();
        encode(&Packet::ConnAck(connack), accepted.protocol, &mut conn.out);
        let slot = &mut self.sessions[cs.session];
        slot.conn = Some(cs.conn);
        slot.connected_at =
            unix_secs(self.wall_started + now.saturating_duration_since(self.started));
        slot.clean_start = accepted.clean_start;
        let before = slot.session.stats();
        let authorizer = conn.ident.as_ref().and_then(|i| i.authorizer.clone());
        slot.session
            .set_authorizer(authorizer, self.cfg.acl_deny_action);
        slot.session
            .attach(now, &accepted, &self.limits, &mut conn.out);
        // The queue an offline session kept goes out here.
        self.stats.count_session(before, slot.session.stats());
        Self::wake_conn(&mut self.ready, conn);
        let username = conn.ident.as_ref().and_then(|i| i.username.as_deref());
        debug!(shard = self.id, client_id = %accepted.client_id, ?username, peer = ?conn.peer, session_present = cs.session_present, "client connected");
        self.shared_set_online(cs.session, true);
        self.journal_flush(now, cs.session);
        if self.sessions[cs.session].session.is_journaled() {
            self.durable_gate(cs.conn, gate_at);
        }
    }

    /// A session whose connection died before CONNACK: it lives on offline, or ends now if it
    /// has no expiry.
    fn orphan_session(&mut self, now: Instant, skey: SessionKey) {
        self.sessions[skey].session.detach();
        self.journal_flush(now, skey);
        let slot = &mut self.sessions[skey];
        match slot.session.expiry_secs() {
            0 => self.end_session(skey),
            EXPIRY_NEVER => {}
            secs => {
                let at = now + Duration::from_secs(u64::from(secs));
                slot.expires_at = Some(at);
                self.offline.insert((at, skey, slot.reg_token));
            }
        }
    }

    // ---- housekeeping ------------------------------------------------------------------

    /// Once the node is moved (its move trigger pulled, `listener.moved_to` set), sends every
    /// client of this shard away, once: connected MQTT 5.0 clients get DISCONNECT 0x9D with the
    /// Server Reference, 3.x ones are closed; a client still before its CONNACK gets CONNACK
    /// 0x9D (3.x: return code 3). Wills are published, as for any server-side close. New
    /// CONNECTs are refused in `on_connect`.
    pub fn move_clients_if_moved(&mut self) {
        if self.moved || !self.move_pulled {
            return;
        }
        self.moved = true;
        let Some(disconnect) = self.cfg.redirect.disconnect() else {
            return;
        };
        let mut moved = 0usize;
        for (_, conn) in self.conns.iter_mut() {
            let Some(protocol) = conn.protocol else {
                // No CONNECT yet: refused with CONNACK 0x9D when it comes.
                continue;
            };
            match conn.phase {
                Phase::AwaitConnect | Phase::Closing => continue,
                Phase::Active if protocol.is_v5() => encode(&disconnect, protocol, &mut conn.out),
                Phase::Active => {}
                Phase::Verifying | Phase::Authenticating | Phase::Claiming => {
                    if let Some(ack) = self.cfg.redirect.connack(true, protocol) {
                        encode(&Packet::ConnAck(ack), protocol, &mut conn.out);
                    }
                }
            }
            conn.phase = Phase::Closing;
            Self::wake_conn(&mut self.ready, conn);
            moved += 1;
        }
        tracing::info!(
            shard = self.id,
            clients = moved,
            "node moved; clients sent to listener.moved_to"
        );
    }

    /// Publishes this shard's `$SYS` figures as retained messages and sends its snapshot to
    /// shard 0; shard 0 then publishes the node's totals from the latest snapshot of every
    /// shard. `wall` is the wall-clock time for `datetime`.
    pub fn publish_sys(&mut self, now: Instant, wall: SystemTime) {
        let figures = self.figures();
        let base = format!("$SYS/brokers/{}/shards/{}", self.cfg.node_name, self.id);
        let uptime = now.duration_since(self.started);
        let per_shard = [
            ("connections", figures.connections),
            ("sessions", figures.sessions),
            ("subscriptions", figures.subscriptions),
            ("messages/received", figures.messages_received),
            ("messages/sent", figures.messages_sent),
            ("messages/dropped", figures.messages_dropped),
            ("bytes/received", figures.bytes_received),
            ("bytes/sent", figures.bytes_sent),
            ("uptime_secs", uptime.as_secs()),
        ];
        for (name, value) in per_shard {
            self.publish_sys_topic(now, format!("{base}/{name}"), value.to_string());
        }
        let me = self.id;
        self.send(0, ShardMsg::Figures { shard: me, figures });
        self.drain_local(now);
        let Some(node) = &mut self.node_figures else {
            return;
        };
        let Some(totals) = node.totals() else {
            return;
        };
        let max = node.connections_max();
        let name = self.cfg.node_name.clone();
        self.publish_sys_topic(now, "$SYS/brokers".to_string(), name.clone());
        for (topic, value) in crate::sys::node_topics(&totals, max, uptime, wall) {
            self.publish_sys_topic(now, format!("$SYS/brokers/{name}/{topic}"), value);
        }
        self.drain_local(now);
    }

    /// This shard's `$SYS` snapshot.
    fn figures(&self) -> ShardFigures {
        ShardFigures {
            connections: self.conns.len() as u64,
            sessions: self.sessions.len() as u64,
            subscriptions: self.stats.subscriptions,
            topics: self.routes.len() as u64,
            retained: self.retained.len() as u64,
            messages_received: self.stats.messages_in,
            messages_sent: self.stats.messages_out,
            messages_dropped: self.stats.messages_dropped,
            bytes_received: self.stats.bytes_in,
            bytes_sent: self.stats.bytes_out,
        }
    }

    /// This shard's figures now, for the board the management API reads.
    pub fn post_figures(&self) -> ShardFigures {
        self.figures()
    }

    /// A shard's snapshot arrived (shard 0 only).
    fn record_figures(&mut self, shard: ShardId, figures: ShardFigures) {
        self.node_figures
            .as_mut()
            .expect("$SYS snapshots go to shard 0")
            .record(shard, figures);
    }

    fn publish_sys_topic(&mut self, now: Instant, topic: String, payload: String) {
        let msg = Message {
            topic: ByteStr::from(topic),
            payload: Bytes::from(payload),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: PublishProperties::default(),
            expires_at: None,
            publisher: ByteStr::default(),
        };
        self.route(now, Arc::new(msg));
    }
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
