//! The management API's way into the shards: listing and acting on clients, sessions,
//! subscriptions, routes and retained messages, publishing as the broker, tracing a client.
//!
//! The requests and replies themselves: [`ShardCore::handle_mgmt`](crate::ShardCore::handle_mgmt)
//! answers one [`Request`] with one [`Reply`]. How they travel (a bounded queue per shard and a
//! wake socket) is the runtime's business (`shardmq_shards::Management`). Every answer costs the
//! shard work bounded by the request's `limit` ([`MAX_PAGE`] at most), except the walks of the
//! route and retained replicas, which visit every entry (and keep `limit` of them): see
//! [`Request::Routes`] and [`Request::Retained`].

use crate::bus::ShardId;
use bytes::Bytes;
use shardmq_codec::{ByteStr, Protocol, QoS};
use std::time::{Duration, SystemTime};

/// Most items one page holds.
pub const MAX_PAGE: usize = 1000;

/// Calls queued per shard before [`Management::ask`] answers [`AskError::Busy`].
pub const QUEUE_CALLS: usize = 64;

/// Longest a trace runs.
pub const TRACE_MAX_DURATION: Duration = Duration::from_secs(600);

/// Most packets one trace records per shard.
pub const TRACE_MAX_PACKETS: usize = 10_000;

/// Clients traced at once per shard; beyond it a new trace is refused.
pub const TRACES_MAX: usize = 16;

/// Most clients one [`Request::Evacuate`] step sends away: the step's walk of the shard's
/// connections stays short.
pub const EVACUATE_STEP_MAX: usize = 10_000;

/// What the management API asks a shard.
#[derive(Debug, Clone)]
pub enum Request {
    /// Connected clients with a slab key greater than `after`, at most `limit`.
    Clients {
        /// The last key of the previous page.
        after: Option<usize>,
        /// Page size (capped at [`MAX_PAGE`]).
        limit: usize,
        /// Which clients.
        filter: ClientFilter,
    },
    /// One connected client, with its subscriptions.
    Client {
        /// Client identifier.
        client_id: String,
    },
    /// Ends the client's connection (v5: DISCONNECT 0x98 Administrative action); the session
    /// stays.
    Kick {
        /// Client identifier.
        client_id: String,
    },
    /// Sessions (connected or not) with a slab key greater than `after`.
    Sessions {
        /// The last key of the previous page.
        after: Option<usize>,
        /// Page size.
        limit: usize,
        /// Client id substring.
        client_id: Option<String>,
        /// Only connected (`true`) or offline (`false`) sessions.
        connected: Option<bool>,
    },
    /// One session.
    Session {
        /// Client identifier.
        client_id: String,
    },
    /// Ends the session: its connection is closed, its state discarded (also on disk).
    DeleteSession {
        /// Client identifier.
        client_id: String,
    },
    /// Subscriptions, from session key `after.0`, skipping the first `after.1` of that
    /// session's.
    Subscriptions {
        /// Session key and position within it where the previous page stopped.
        after: Option<(usize, usize)>,
        /// Page size.
        limit: usize,
        /// Only this client's.
        client_id: Option<String>,
        /// Only this filter.
        filter: Option<String>,
        /// Only filters that match this topic.
        matching: Option<String>,
    },
    /// The node's routes (filter → this node and the other nodes with subscribers), from the
    /// shard's replica: every filter is visited, the `limit` smallest greater than `after`
    /// are kept.
    Routes {
        /// The last filter of the previous page.
        after: Option<String>,
        /// Page size.
        limit: usize,
        /// Only filters matching this topic.
        matching: Option<String>,
    },
    /// Retained messages matching `filter`, the `limit` smallest topics greater than `after`.
    Retained {
        /// The last topic of the previous page.
        after: Option<String>,
        /// Page size.
        limit: usize,
        /// An MQTT filter (`#` for all).
        filter: String,
    },
    /// One retained message, with its payload.
    RetainedGet {
        /// The topic.
        topic: String,
    },
    /// Publishes `payload` to `topic` as the broker (an empty retained payload deletes the
    /// retained message).
    Publish {
        /// Topic name (validated by the caller).
        topic: String,
        /// Payload.
        payload: Bytes,
        /// QoS.
        qos: QoS,
        /// RETAIN.
        retain: bool,
    },
    /// Starts (or restarts) recording one client's packets on this shard.
    TraceStart {
        /// Client identifier.
        client_id: String,
        /// How long (capped at [`TRACE_MAX_DURATION`]).
        duration: Duration,
        /// Most packets (capped at [`TRACE_MAX_PACKETS`]).
        max_packets: usize,
    },
    /// Lines recorded for the client with `seq > after`; the trace keeps them.
    TraceRead {
        /// Client identifier.
        client_id: String,
        /// The last sequence number read.
        after: u64,
    },
    /// Stops the trace and forgets its lines.
    TraceStop {
        /// Client identifier.
        client_id: String,
    },
    /// Puts reloaded settings in force (`POST /api/v1/config/reload`, SIGHUP).
    Configure(Box<LiveSettings>),
    /// One step of the node's evacuation (`POST /api/v1/node/evacuate`) or of its part in a
    /// rebalance: with `refuse_with`, from now on every CONNECT is refused with CONNACK 0x9C
    /// Use another server naming it (MQTT 3.x: return code 3 Server unavailable); and up to
    /// `send.len()` connected clients are sent away, the i-th with DISCONNECT 0x9C and Server
    /// Reference `send[i]` (3.x: closed).
    /// Answered with [`Reply::Evacuated`]. Costs the shard a walk of its connections up to
    /// the last one sent away.
    Evacuate {
        /// The Server Reference new CONNECTs are refused with (`None`: they are not; a
        /// rebalance).
        refuse_with: Option<ByteStr>,
        /// One Server Reference per client to send away now; at most
        /// [`EVACUATE_STEP_MAX`].
        send: Vec<ByteStr>,
    },
    /// Ends the evacuation: CONNECTs are accepted again (clients already sent away stay
    /// gone). Answered with `Done(was evacuating)`.
    EvacuateStop,
}

/// The settings a running shard takes from a configuration reload. Connections keep what
/// they negotiated at CONNECT (Receive Maximum, Maximum Packet Size, Topic Alias Maximum,
/// keep-alive); everything else applies from the next packet on.
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// Per-client MQTT limits (`max_packet_size` must stay what the shard started with: the
    /// decoders' bound is fixed at start).
    pub limits: shardmq_broker::Limits,
    /// Node-wide connection limit.
    pub max_connections: usize,
    /// Node-wide CONNECTs per second, 0 = unlimited.
    pub max_connection_rate: u32,
    /// Time allowed between accept and CONNECT, for connections accepted from now on.
    pub connect_timeout: Duration,
    /// `$SYS` interval; `None` = off.
    pub sys_interval: Option<Duration>,
}

/// Which clients [`Request::Clients`] lists.
#[derive(Debug, Clone, Default)]
pub struct ClientFilter {
    /// Client id substring.
    pub client_id: Option<String>,
    /// Exact user name.
    pub username: Option<String>,
    /// Address substring (`ip:port`).
    pub address: Option<String>,
}

/// A shard's answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A page of clients; `next` is the last key visited when more may follow.
    Clients {
        /// The clients.
        items: Vec<ClientInfo>,
        /// Where the next page starts, or `None` at the end of the shard.
        next: Option<usize>,
    },
    /// One client (`None`: not connected here).
    Client(Option<Box<(ClientInfo, Vec<SubscriptionInfo>)>>),
    /// A page of sessions.
    Sessions {
        /// The sessions.
        items: Vec<SessionInfo>,
        /// Where the next page starts.
        next: Option<usize>,
    },
    /// One session.
    Session(Option<SessionInfo>),
    /// A page of subscriptions.
    Subscriptions {
        /// The subscriptions.
        items: Vec<SubscriptionInfo>,
        /// Where the next page starts.
        next: Option<(usize, usize)>,
    },
    /// A page of routes.
    Routes {
        /// The routes, by filter.
        items: Vec<RouteInfo>,
        /// Whether filters beyond the page exist.
        more: bool,
    },
    /// A page of retained messages.
    Retained {
        /// The messages, by topic.
        items: Vec<RetainedInfo>,
        /// Whether topics beyond the page exist.
        more: bool,
    },
    /// One retained message with its payload.
    RetainedGet(Option<(RetainedInfo, Bytes)>),
    /// The request acted on something (`false`: nothing by that name here).
    Done(bool),
    /// Trace lines, by sequence number.
    Trace {
        /// Whether the trace is still recording here.
        active: bool,
        /// The lines.
        lines: Vec<TraceLine>,
    },
    /// The request cannot be served (e.g. too many traces).
    Refused(String),
    /// What an [`Request::Evacuate`] step did.
    Evacuated {
        /// Clients sent away by this step.
        sent: usize,
        /// Connections still open here, not counting those just sent away (clients before
        /// their CONNECT included: they are refused when it comes).
        left: usize,
    },
}

/// A connected client.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientInfo {
    /// Client identifier.
    pub client_id: String,
    /// User name from CONNECT (or what authentication made of it).
    pub username: Option<String>,
    /// ShardCore holding it.
    pub shard: ShardId,
    /// Peer address (or what a PROXY header said).
    pub address: Option<std::net::SocketAddr>,
    /// Protocol version.
    pub protocol: Protocol,
    /// Negotiated keep-alive, seconds.
    pub keep_alive: u16,
    /// When the session attached (wall clock).
    pub connected_at: SystemTime,
    /// CONNECT's Clean Start (Clean Session on 3.x).
    pub clean_start: bool,
    /// Session Expiry Interval in force, seconds (`u32::MAX`: never).
    pub expiry_secs: u32,
    /// QoS 1/2 messages sent and not acknowledged.
    pub inflight: usize,
    /// Messages waiting for the inflight window.
    pub queued: usize,
    /// Subscriptions.
    pub subscriptions: usize,
    /// Listener kind it came in on: `mqtt`, `mqtts`, `ws` or `wss`.
    pub listener: &'static str,
}

/// A session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    /// Client identifier.
    pub client_id: String,
    /// ShardCore holding it.
    pub shard: ShardId,
    /// A connection is attached.
    pub connected: bool,
    /// Session Expiry Interval, seconds (`u32::MAX`: never).
    pub expiry_secs: u32,
    /// Offline: seconds left before it expires (`None`: connected, or never expires).
    pub expires_in_secs: Option<u64>,
    /// Subscriptions.
    pub subscriptions: usize,
    /// QoS 1/2 messages sent and not acknowledged.
    pub inflight: usize,
    /// Messages waiting.
    pub queued: usize,
}

/// One subscription of one session.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionInfo {
    /// Client identifier.
    pub client_id: String,
    /// The filter as subscribed (`$share/{group}/{filter}` for a shared subscription).
    pub filter: String,
    /// Granted maximum QoS.
    pub qos: QoS,
    /// No Local.
    pub no_local: bool,
    /// Retain As Published.
    pub retain_as_published: bool,
    /// Retain Handling (0, 1, 2).
    pub retain_handling: u8,
    /// Subscription Identifier.
    pub identifier: Option<u32>,
}

/// A filter somebody subscribes to, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteInfo {
    /// The filter.
    pub filter: String,
    /// This node has subscribers.
    pub local: bool,
    /// The other nodes with subscribers.
    pub nodes: Vec<u64>,
}

/// A retained message, without its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct RetainedInfo {
    /// Topic.
    pub topic: String,
    /// QoS it was published with.
    pub qos: QoS,
    /// Payload size.
    pub payload_bytes: usize,
}

/// One traced packet.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceLine {
    /// Order within the shard's trace of the client.
    pub seq: u64,
    /// When it was read or written (wall clock).
    pub at: SystemTime,
    /// `true`: from the client; `false`: to it.
    pub inbound: bool,
    /// The packet, described: `PUBLISH topic=a/b qos=1 id=3 retain=false payload=5 B`.
    pub packet: String,
}

/// `"3.1"`, `"3.1.1"` or `"5.0"`.
pub fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::V3_1 => "3.1",
        Protocol::V3_1_1 => "3.1.1",
        Protocol::V5 => "5.0",
    }
}
