//! The per-client state machine: CONNECT acceptance, QoS 0/1/2 in both directions with bounded
//! windows and queues, subscriptions, will, DISCONNECT.
//!
//! Pure: no I/O, no clock. The shard runtime drives it:
//! - inputs: [`accept_connect`] for a CONNECT, [`Session::attach`] when a connection takes the
//!   session, [`Session::handle`] for every later packet, [`Session::deliver`] for every message
//!   routed to it, [`Session::detach`] when the connection goes;
//! - outputs: bytes appended to the connection's write buffer (`wire`), and [`Action`]s the shard
//!   must carry out (route a publish, change the subscription trie, send a SUBACK).

use crate::alias::{AliasError, InboundAliases, OutAlias, OutboundAliases};
use crate::authz::{AuthzCache, DenyAction, SharedAuthorizer};
use crate::limits::Limits;
use crate::message::Message;
use crate::shared;
use crate::topic::{validate_topic_filter, validate_topic_name, TopicError};
use bytes::BytesMut;
use shardmq_codec::{
    encode, encode_publish_out, encoded_len, publish_out_len, Ack, AckProperties, ByteStr, ConnAck,
    ConnAckProperties, Connect, Disconnect, DisconnectProperties, LastWill, Packet, Protocol,
    Publish, PublishOut, QoS, ReasonCode, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe,
};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod journal;
pub use journal::{Change, InflightMessage, QueuedMessage, SessionImage, JOURNAL_CHANGES_MAX};

/// Session Expiry Interval meaning "never expires".
pub const EXPIRY_NEVER: u32 = u32::MAX;

/// A subscription as the session keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    /// Options from SUBSCRIBE (QoS is the granted maximum).
    pub options: SubscriptionOptions,
    /// Subscription Identifier, if the SUBSCRIBE carried one.
    pub id: Option<u32>,
}

/// Why a connection must close. On MQTT 5.0 the runtime sends DISCONNECT with `reason` first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// Reason code for the DISCONNECT (5.0 only; 3.x connections just close).
    pub reason: ReasonCode,
    /// What the client did, for the `warn!` line.
    pub why: &'static str,
}

impl Close {
    fn new(reason: ReasonCode, why: &'static str) -> Close {
        Close { reason, why }
    }
}

/// What the shard must do after [`Session::handle`].
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Route this message to matching subscribers (and store it if retained).
    Publish(Arc<Message>),
    /// Add `filter` to the shard's subscription trie for this session.
    Subscribe {
        /// The topic filter.
        filter: ByteStr,
        /// Its options and identifier.
        subscription: Subscription,
        /// The session already had this filter (options replaced).
        existed: bool,
    },
    /// Remove `filter` from the shard's trie for this session.
    Unsubscribe {
        /// The topic filter.
        filter: ByteStr,
    },
    /// Send this SUBACK once the subscriptions above are routable, then the retained messages.
    SubAck(SubAck),
    /// The client sent DISCONNECT; close the connection.
    Disconnect {
        /// Reason 0x04: publish the will anyway.
        publish_will: bool,
    },
}

/// Outcome of [`Session::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written to the connection.
    Sent,
    /// Queued: offline, or the inflight window is full.
    Queued,
    /// Queued, and an older queued message was dropped to make room (counted in stats).
    Displaced,
    /// Not delivered, and why.
    Dropped(DropReason),
}

/// Why a message was dropped for one session. Each is counted by the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its message expiry interval passed.
    Expired,
    /// QoS 0 and the connection's write buffer is full (client not reading).
    WriteBufferFull,
    /// The session queue was full and the message was QoS 0 (or the queue has size 0).
    QueueFull,
    /// Larger than the client's Maximum Packet Size.
    TooLarge,
    /// No Local subscription and the session published it.
    NoLocal,
    /// The client may not receive messages on this topic (ACL).
    NotAuthorized,
}

/// Parameters of the current connection (not carried across reconnects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnParams {
    /// Negotiated keep-alive, seconds (0: none).
    pub keep_alive_secs: u16,
    /// Client's Receive Maximum: our QoS 1/2 send quota.
    pub receive_maximum: u16,
    /// Client's Maximum Packet Size.
    pub max_packet_size: u32,
    /// Client's Topic Alias Maximum: how many aliases we may assign to it (0 on 3.x).
    pub topic_alias_max: u16,
    /// Client's Request Problem Information (5.0; absent means 1): whether the server's
    /// DISCONNECT carries a Reason String.
    pub request_problem_information: bool,
}

impl ConnParams {
    /// How long the connection may stay silent: 1.5 × keep-alive (MQTT-3.1.2-24), or none.
    pub fn read_timeout(&self) -> Option<Duration> {
        (self.keep_alive_secs > 0)
            .then(|| Duration::from_millis(u64::from(self.keep_alive_secs) * 1500))
    }
}

/// A CONNECT the broker accepts, with everything the runtime needs to open the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Client identifier (assigned if the client sent none).
    pub client_id: ByteStr,
    /// The identifier was assigned by the server.
    pub assigned: bool,
    /// Protocol version.
    pub protocol: Protocol,
    /// Clean Start / Clean Session.
    pub clean_start: bool,
    /// Session expiry interval to use, seconds (capped).
    pub expiry_secs: u32,
    /// The client asked for a different expiry than `expiry_secs`.
    pub expiry_capped: bool,
    /// Connection parameters.
    pub params: ConnParams,
    /// The keep-alive was lowered to the server's maximum.
    pub keep_alive_capped: bool,
    /// Will message, validated.
    pub will: Option<LastWill>,
}

/// Validates a CONNECT against the spec and `limits`. `Err` is the CONNACK reason code to refuse
/// with (`to_v3_connack` maps it for 3.x). `assign_id` makes an identifier for a client that sent
/// none.
pub fn accept_connect(
    connect: &Connect,
    limits: &Limits,
    assign_id: impl FnOnce() -> ByteStr,
) -> Result<Accepted, ReasonCode> {
    let protocol = connect.protocol;
    let (client_id, assigned) = if connect.client_id.is_empty() {
        match protocol {
            // 3.1 requires 1..=23 characters; 3.1.1 allows empty only with Clean Session.
            Protocol::V3_1 => return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
            Protocol::V3_1_1 if !connect.clean_start => {
                return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
            }
            _ => (assign_id(), true),
        }
    } else {
        // Detached: the session outlives the CONNECT's read buffer (which also holds the
        // password); keeping a slice of it would pin all of it.
        (connect.client_id.detach(), false)
    };
    if client_id.len() > limits.max_client_id_len {
        return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    }
    let requested_expiry = match protocol {
        Protocol::V5 => connect.properties.session_expiry_interval.unwrap_or(0),
        _ if connect.clean_start => 0,
        _ => EXPIRY_NEVER,
    };
    let expiry_secs = requested_expiry.min(limits.session_expiry_max_secs);
    // Only 5.0 can tell the client about a lower keep-alive (Server Keep Alive). A 3.x client
    // keeps pinging at the interval it asked for, so lowering it would disconnect a client that
    // behaves exactly as it said it would.
    let keep_alive_capped = protocol.is_v5() && connect.keep_alive > limits.max_keepalive_secs;
    let keep_alive_secs = if keep_alive_capped {
        limits.max_keepalive_secs
    } else {
        connect.keep_alive
    };
    if let Some(will) = &connect.will {
        match validate_topic_name(&will.topic, limits.max_topic_levels) {
            Ok(()) => {}
            Err(_) => return Err(ReasonCode::TOPIC_NAME_INVALID),
        }
        if will.retain && !limits.retain_available {
            return Err(ReasonCode::RETAIN_NOT_SUPPORTED);
        }
        if will.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&will.payload).is_err()
        {
            return Err(ReasonCode::PAYLOAD_FORMAT_INVALID);
        }
    }
    // An Authentication Method is checked by `auth::Authenticators::begin`, not here.
    let props = &connect.properties;
    Ok(Accepted {
        client_id,
        assigned,
        protocol,
        clean_start: connect.clean_start,
        expiry_secs,
        expiry_capped: expiry_secs != requested_expiry,
        params: ConnParams {
            keep_alive_secs,
            receive_maximum: props.receive_maximum.unwrap_or(u16::MAX),
            max_packet_size: props.maximum_packet_size.unwrap_or(u32::MAX),
            topic_alias_max: props.topic_alias_maximum.unwrap_or(0),
            request_problem_information: props.request_problem_information != Some(0),
        },
        keep_alive_capped,
        will: connect.will.as_ref().map(|w| LastWill {
            topic: w.topic.detach(),
            payload: bytes::Bytes::copy_from_slice(&w.payload),
            ..w.clone()
        }),
    })
}

/// The CONNACK for an accepted CONNECT, announcing the server's limits on MQTT 5.0.
pub fn connack_for(accepted: &Accepted, session_present: bool, limits: &Limits) -> ConnAck {
    let mut properties = ConnAckProperties::default();
    if accepted.protocol.is_v5() {
        properties.receive_maximum = Some(limits.max_awaiting_rel);
        properties.maximum_packet_size = Some(limits.max_packet_size);
        properties.retain_available = Some(limits.retain_available);
        properties.topic_alias_maximum = Some(limits.max_topic_alias);
        properties.wildcard_subscription_available = Some(true);
        properties.subscription_identifiers_available = Some(true);
        properties.shared_subscription_available = Some(true);
        if accepted.assigned {
            properties.assigned_client_identifier = Some(accepted.client_id.clone());
        }
        if accepted.keep_alive_capped {
            properties.server_keep_alive = Some(accepted.params.keep_alive_secs);
        }
        if accepted.expiry_capped {
            properties.session_expiry_interval = Some(accepted.expiry_secs);
        }
    }
    ConnAck {
        session_present,
        code: ReasonCode::SUCCESS,
        properties,
    }
}

/// The CONNACK that refuses a client with `code`.
pub fn connack_refusal(code: ReasonCode) -> ConnAck {
    ConnAck {
        session_present: false,
        code,
        properties: ConnAckProperties::default(),
    }
}

/// The DISCONNECT the server sends on MQTT 5.0 before closing for `reason`.
pub fn server_disconnect(reason: ReasonCode) -> Packet {
    Packet::Disconnect(Disconnect {
        reason,
        properties: DisconnectProperties::default(),
    })
}

/// The DISCONNECT the server sends on MQTT 5.0 before closing for `close`, with `close.why` as
/// its Reason String unless the connection (`params`) asked for no problem information
/// (MQTT 5.0 §3.1.2.11.7) or the string would make the packet larger than the client's Maximum
/// Packet Size (MQTT-3.14.2-3).
pub fn server_disconnect_for(close: Close, params: Option<&ConnParams>) -> Packet {
    let mut packet = server_disconnect(close.reason);
    if params.is_some_and(|p| !p.request_problem_information) {
        return packet;
    }
    if let Packet::Disconnect(d) = &mut packet {
        d.properties.reason_string = Some(ByteStr::from_static(close.why));
    }
    let max = params.map_or(u32::MAX, |p| p.max_packet_size);
    if encoded_len(&packet, Protocol::V5) > max as usize {
        return server_disconnect(close.reason);
    }
    packet
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

#[derive(Debug, Clone)]
struct Outgoing {
    pkid: u16,
    state: OutState,
    item: Queued,
}

#[derive(Debug, Clone)]
struct Queued {
    msg: Arc<Message>,
    qos: QoS,
    retain: bool,
    sub_ids: SmallVec<[u32; 1]>,
    /// The shared subscription (`$share/...` filter) that chose this session, if one did: the
    /// message goes back to its group if the session ends before the client has it.
    shared: Option<ByteStr>,
    /// Delivery number in the session's journal (0: not journaled).
    seq: u64,
}

/// A session's subscriptions by filter. Most sessions hold one or a few: up to
/// [`SubMap::FEW`] stay in a boxed slice searched linearly, in the order they were first
/// subscribed (no hasher; an empty map allocates nothing, one subscription is one 48 B
/// allocation); past that they move to a hash map. The map is 16 B inline either way, which
/// every idle session pays. Measured with
/// `shardmq-capacity sessions -n 1000000 --subs-per-session 1`: the one-entry hash map cost
/// ~230 B per session (docs/capacity.md).
#[derive(Debug)]
enum SubMap {
    /// At most [`SubMap::FEW`] entries, exactly as many as the slice holds (it is reallocated
    /// on each subscribe and unsubscribe: those are rare next to lookups).
    Few(Box<[(ByteStr, Subscription)]>),
    Many(Box<ahash::AHashMap<ByteStr, Subscription>>),
}

impl SubMap {
    /// Most subscriptions kept in the linearly searched slice.
    const FEW: usize = 8;

    fn new() -> SubMap {
        SubMap::Few(Box::default())
    }

    fn len(&self) -> usize {
        match self {
            SubMap::Few(v) => v.len(),
            SubMap::Many(m) => m.len(),
        }
    }

    fn get(&self, filter: &str) -> Option<&Subscription> {
        match self {
            SubMap::Few(v) => v.iter().find(|(f, _)| f.as_str() == filter).map(|(_, s)| s),
            SubMap::Many(m) => m.get(filter),
        }
    }

    fn contains_key(&self, filter: &str) -> bool {
        self.get(filter).is_some()
    }

    /// Adds or replaces the subscription for `filter` (an existing entry keeps its key and its
    /// place).
    fn insert(&mut self, filter: ByteStr, sub: Subscription) {
        match self {
            SubMap::Few(v) => {
                if let Some(entry) = v.iter_mut().find(|(f, _)| *f == filter) {
                    entry.1 = sub;
                } else if v.len() < Self::FEW {
                    // One allocation of the exact size: `into_boxed_slice` then has nothing to
                    // shrink.
                    let old = std::mem::take(v).into_vec();
                    let mut grown = Vec::with_capacity(old.len() + 1);
                    grown.extend(old);
                    grown.push((filter, sub));
                    *v = grown.into_boxed_slice();
                } else {
                    let mut m: ahash::AHashMap<ByteStr, Subscription> =
                        std::mem::take(v).into_vec().into_iter().collect();
                    m.insert(filter, sub);
                    *self = SubMap::Many(Box::new(m));
                }
            }
            SubMap::Many(m) => {
                m.insert(filter, sub);
            }
        }
    }

    fn remove_entry(&mut self, filter: &str) -> Option<(ByteStr, Subscription)> {
        match self {
            SubMap::Few(v) => {
                let i = v.iter().position(|(f, _)| f.as_str() == filter)?;
                let mut rest = std::mem::take(v).into_vec();
                let entry = rest.remove(i);
                *v = rest.into_boxed_slice();
                Some(entry)
            }
            SubMap::Many(m) => m.remove_entry(filter),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&ByteStr, &Subscription)> {
        let (few, many) = match self {
            SubMap::Few(v) => (Some(v.iter().map(|(f, s)| (f, s))), None),
            SubMap::Many(m) => (None, Some(m.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }

    /// Empties the map, returning the filters.
    fn take_filters(&mut self) -> Vec<ByteStr> {
        match std::mem::replace(self, SubMap::new()) {
            SubMap::Few(v) => v.into_vec().into_iter().map(|(f, _)| f).collect(),
            SubMap::Many(m) => m.into_keys().collect(),
        }
    }
}

/// What a session holds only while messages are on their way, in either direction: an idle
/// session has none of it, so it lives behind one pointer ([`Session`]'s `flow`), allocated on
/// first use and freed by [`Session::trim`] once empty again (on detach and on PINGREQ, which a
/// client sends when it has nothing else to send). Freeing it also returns the capacity the
/// queues grew to.
#[derive(Debug, Default)]
struct Flow {
    /// Outgoing QoS 1/2 messages sent and not yet acknowledged, oldest first.
    inflight: VecDeque<Outgoing>,
    /// Messages waiting for the window or for the client to come back, oldest first.
    queue: VecDeque<Queued>,
    /// Incoming QoS 2 packet ids acknowledged with PUBREC, waiting for PUBREL.
    awaiting_rel: SmallVec<[u16; 4]>,
    /// Topic aliases of the current connection (reset on attach and detach, never carried).
    aliases_in: InboundAliases,
}

impl Flow {
    /// Whether dropping it changes nothing (an empty alias table behaves as a fresh one).
    fn is_empty(&self) -> bool {
        self.inflight.is_empty()
            && self.queue.is_empty()
            && self.awaiting_rel.is_empty()
            && self.aliases_in.is_empty()
    }
}

/// Counters a session keeps for the shard's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Messages dropped for this session, any reason.
    pub dropped: u64,
    /// PUBLISHes written to the client for the first time (resends with DUP not counted),
    /// whether sent at once or later from the queue.
    pub sent: u64,
}

/// One client's session: what survives a reconnect (subscriptions, inflight, queue, QoS 2
/// state) plus the current connection's parameters. `Send`, so it can move between shards on
/// takeover.
#[derive(Debug)]
pub struct Session {
    client_id: ByteStr,
    protocol: Protocol,
    expiry_secs: u32,
    subscriptions: SubMap,
    /// Messages in flight and the inbound topic aliases; `None` while there are none (see
    /// [`Flow`]).
    flow: Option<Box<Flow>>,
    next_pkid: u16,
    will: Option<Box<LastWill>>,
    conn: Option<ConnParams>,
    /// `None` while the client takes no topic aliases (most clients; the table is ~96 B).
    aliases_out: Option<Box<OutboundAliases>>,
    stats: SessionStats,
    /// The change journal, while the session is stored (`storage.durability`); `None` costs
    /// nothing (see `journal.rs`).
    journal: Option<Box<journal::Journal>>,
    /// The ACL of the client's current (or last) connection; `None`: everything allowed.
    authz: Option<Box<AuthzCache>>,
}

impl Session {
    /// A new, empty, detached session.
    pub fn new(client_id: ByteStr, protocol: Protocol, expiry_secs: u32) -> Session {
        Session {
            client_id,
            protocol,
            expiry_secs,
            subscriptions: SubMap::new(),
            flow: None,
            next_pkid: 0,
            will: None,
            conn: None,
            aliases_out: None,
            stats: SessionStats::default(),
            journal: None,
            authz: None,
        }
    }

    /// Sets the ACL of the connection being attached (`None`: everything allowed). It stays
    /// with the session while offline, for the messages queued meanwhile.
    pub fn set_authorizer(&mut self, authorizer: Option<SharedAuthorizer>, deny: DenyAction) {
        self.authz = authorizer.map(|a| Box::new(AuthzCache::new(a, deny)));
    }

    /// Client identifier.
    pub fn client_id(&self) -> &ByteStr {
        &self.client_id
    }

    /// Protocol of the last connection.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Session expiry interval, seconds ([`EXPIRY_NEVER`] = never).
    pub fn expiry_secs(&self) -> u32 {
        self.expiry_secs
    }

    /// Replaces the Session Expiry Interval (the management API ends a session with 0: it
    /// ends when its connection does).
    pub fn set_expiry_secs(&mut self, secs: u32) {
        self.expiry_secs = secs;
    }

    /// Whether a connection is attached.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Current connection parameters.
    pub fn conn_params(&self) -> Option<&ConnParams> {
        self.conn.as_ref()
    }

    /// The session's subscriptions.
    pub fn subscriptions(&self) -> impl Iterator<Item = (&ByteStr, &Subscription)> {
        self.subscriptions.iter()
    }

    /// The subscription for `filter`, if any.
    pub fn subscription(&self, filter: &str) -> Option<&Subscription> {
        self.subscriptions.get(filter)
    }

    /// Outgoing QoS 1/2 messages awaiting acknowledgement.
    pub fn inflight_len(&self) -> usize {
        self.flow.as_deref().map_or(0, |f| f.inflight.len())
    }

    /// Messages waiting for the window or for the client to come back.
    pub fn queued_len(&self) -> usize {
        self.flow.as_deref().map_or(0, |f| f.queue.len())
    }

    /// Whether the session holds the state of messages in flight (inflight, queued, QoS 2
    /// awaiting PUBREL) or inbound topic aliases. An idle session, once trimmed, holds none:
    /// see [`Session::trim`].
    pub fn holds_flow_state(&self) -> bool {
        self.flow.is_some()
    }

    /// Frees the flow state if nothing is in it (no message inflight, queued or awaiting
    /// PUBREL, no inbound topic alias). No behaviour changes: it is allocated again on first
    /// use. The session calls it on detach and on PINGREQ; the runtime may call it whenever a
    /// session goes idle.
    pub fn trim(&mut self) {
        if self.flow.as_deref().is_some_and(Flow::is_empty) {
            self.flow = None;
        }
    }

    /// The flow state, allocated if the session has none.
    fn flow_mut(&mut self) -> &mut Flow {
        self.flow.get_or_insert_with(Box::default)
    }

    /// Outgoing messages inflight, oldest first (none without flow state).
    fn inflight(&self) -> impl Iterator<Item = &Outgoing> {
        self.flow.iter().flat_map(|f| f.inflight.iter())
    }

    /// Incoming QoS 2 packet ids waiting for PUBREL.
    fn awaiting_rel(&self) -> &[u16] {
        self.flow.as_deref().map_or(&[], |f| &f.awaiting_rel[..])
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The will message, if the session holds one. A will waiting for its delay stays in the
    /// session (and so in its stored image) until it is published: see [`Session::take_will`].
    pub fn will(&self) -> Option<&LastWill> {
        self.will.as_deref()
    }

    /// Removes and returns the will message (on an abnormal close).
    pub fn take_will(&mut self) -> Option<LastWill> {
        let will = self.will.take().map(|w| *w);
        if will.is_some() {
            self.journal_push(|| Change::WillCleared);
        }
        will
    }

    /// A connection takes this session: records its parameters, resends unacknowledged
    /// messages with DUP set and pending PUBRELs (MQTT-4.4.0-1), then fills the window.
    pub fn attach(
        &mut self,
        now: Instant,
        accepted: &Accepted,
        limits: &Limits,
        wire: &mut BytesMut,
    ) {
        self.protocol = accepted.protocol;
        self.expiry_secs = accepted.expiry_secs;
        self.will = accepted.will.clone().map(Box::new);
        self.journal_push(|| Change::Attached {
            protocol: accepted.protocol,
            expiry_secs: accepted.expiry_secs,
            will: accepted.will.clone().map(Box::new),
        });
        self.conn = Some(accepted.params);
        // A new connection starts with no topic aliases in either direction (MQTT-3.3.2-7).
        if let Some(flow) = self.flow.as_deref_mut() {
            flow.aliases_in = InboundAliases::default();
        }
        let alias_max = if accepted.protocol.is_v5() {
            accepted.params.topic_alias_max
        } else {
            0
        };
        self.aliases_out = (alias_max > 0).then(|| Box::new(OutboundAliases::new(alias_max)));
        let protocol = self.protocol;
        // A PUBLISH too large for this connection is discarded as if it had been sent
        // (MQTT-3.1.2-25); the previous connection may have allowed larger packets.
        let max = accepted.params.max_packet_size;
        let mut discarded: SmallVec<[(u16, Arc<Message>); 1]> = SmallVec::new();
        if let Some(flow) = self.flow.as_deref_mut() {
            flow.inflight.retain(|out| {
                let keep =
                    out.state == OutState::Released || !too_large(protocol, &out.item, now, max);
                if !keep {
                    discarded.push((out.pkid, out.item.msg.clone()));
                }
                keep
            });
        }
        self.stats.dropped += discarded.len() as u64;
        for (pkid, msg) in discarded {
            self.journal_push(|| Change::Completed { pkid, msg });
        }
        for out in self.inflight() {
            match out.state {
                OutState::Published => {
                    write_publish(protocol, &out.item, out.pkid, true, now, None, wire);
                }
                OutState::Released => {
                    encode(&pubrel(out.pkid, ReasonCode::SUCCESS), protocol, wire)
                }
            }
        }
        self.fill_window(now, limits, wire);
    }

    /// The connection went away. Subscriptions, inflight and queued messages stay; the flow
    /// state is freed if nothing else is in it ([`Session::trim`]).
    pub fn detach(&mut self) {
        self.journal_push(|| Change::Detached);
        self.conn = None;
        if let Some(flow) = self.flow.as_deref_mut() {
            flow.aliases_in = InboundAliases::default();
        }
        self.aliases_out = None;
        self.trim();
    }

    /// Handles one packet from the connected client.
    pub fn handle(
        &mut self,
        now: Instant,
        packet: Packet,
        limits: &Limits,
        wire: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) -> Result<(), Close> {
        let protocol = self.protocol;
        match packet {
            Packet::Publish(publish) => self.handle_publish(now, publish, limits, wire, actions),
            Packet::PubAck(ack) => {
                self.complete(
                    now,
                    ack.pkid,
                    OutState::Published,
                    QoS::AtLeastOnce,
                    limits,
                    wire,
                );
                Ok(())
            }
            Packet::PubRec(ack) => {
                match self.inflight_position(ack.pkid, OutState::Published, QoS::ExactlyOnce) {
                    Some(i) if ack.reason.is_error() => {
                        // The receiver refused the message: the flow ends here (MQTT-4.3.3).
                        if let Some(out) = self.flow_mut().inflight.remove(i) {
                            let pkid = ack.pkid;
                            let msg = out.item.msg;
                            self.journal_push(|| Change::Completed { pkid, msg });
                        }
                        self.fill_window(now, limits, wire);
                    }
                    Some(i) => {
                        self.flow_mut().inflight[i].state = OutState::Released;
                        let pkid = ack.pkid;
                        self.journal_push(|| Change::Released { pkid });
                        encode(&pubrel(ack.pkid, ReasonCode::SUCCESS), protocol, wire);
                    }
                    None if self
                        .inflight_position(ack.pkid, OutState::Released, QoS::ExactlyOnce)
                        .is_some() =>
                    {
                        // A repeated PUBREC (our PUBREL was lost): release again.
                        encode(&pubrel(ack.pkid, ReasonCode::SUCCESS), protocol, wire);
                    }
                    None => encode(
                        &pubrel(
                            ack.pkid,
                            v5_or_success(protocol, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND),
                        ),
                        protocol,
                        wire,
                    ),
                }
                Ok(())
            }
            Packet::PubRel(ack) => {
                let reason = match self.awaiting_rel().iter().position(|&p| p == ack.pkid) {
                    Some(i) => {
                        self.flow_mut().awaiting_rel.swap_remove(i);
                        let pkid = ack.pkid;
                        self.journal_push(|| Change::RelDone { pkid });
                        ReasonCode::SUCCESS
                    }
                    None => v5_or_success(protocol, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND),
                };
                encode(&Packet::PubComp(ack_with(ack.pkid, reason)), protocol, wire);
                Ok(())
            }
            Packet::PubComp(ack) => {
                self.complete(
                    now,
                    ack.pkid,
                    OutState::Released,
                    QoS::ExactlyOnce,
                    limits,
                    wire,
                );
                Ok(())
            }
            Packet::Subscribe(sub) => self.handle_subscribe(sub, limits, actions),
            Packet::Unsubscribe(unsub) => {
                self.handle_unsubscribe(unsub, wire, actions);
                Ok(())
            }
            Packet::PingReq => {
                encode(&Packet::PingResp, protocol, wire);
                // The client had nothing else to send: a good moment to free what idle
                // sessions do not need.
                self.trim();
                Ok(())
            }
            Packet::Disconnect(d) => {
                if let Some(expiry) = d.properties.session_expiry_interval {
                    if self.expiry_secs == 0 && expiry != 0 {
                        // MQTT-3.14.2-2: cannot turn a zero expiry into a non-zero one.
                        return Err(Close::new(
                            ReasonCode::PROTOCOL_ERROR,
                            "DISCONNECT sets session expiry after 0",
                        ));
                    }
                    self.expiry_secs = expiry.min(limits.session_expiry_max_secs);
                    let secs = self.expiry_secs;
                    self.journal_push(|| Change::Expiry(secs));
                }
                actions.push(Action::Disconnect {
                    publish_will: d.reason == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
                });
                Ok(())
            }
            Packet::Connect(_) => Err(Close::new(ReasonCode::PROTOCOL_ERROR, "second CONNECT")),
            Packet::Auth(_) => Err(Close::new(
                ReasonCode::PROTOCOL_ERROR,
                "AUTH without an authentication method",
            )),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Close::new(
                    ReasonCode::PROTOCOL_ERROR,
                    "server-to-client packet sent by a client",
                ))
            }
        }
    }

    fn handle_publish(
        &mut self,
        now: Instant,
        publish: Box<Publish>,
        limits: &Limits,
        wire: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) -> Result<(), Close> {
        let protocol = self.protocol;
        let mut publish = publish;
        // Aliases are resolved first: validation and routing see the real topic.
        let alias = publish.properties.topic_alias;
        let max_alias = if protocol.is_v5() {
            limits.max_topic_alias
        } else {
            0
        };
        // Without an alias the topic is the PUBLISH's own: no table needed (nor allocated).
        let resolved = match alias {
            None => Ok(publish.topic.clone()),
            Some(_) => self
                .flow_mut()
                .aliases_in
                .resolve(&publish.topic, alias, max_alias),
        };
        match resolved {
            Ok(topic) => publish.topic = topic,
            Err(AliasError::Invalid) => {
                // MQTT-3.3.2-8, -9: 0 or above the Topic Alias Maximum we announced.
                return Err(Close::new(
                    ReasonCode::TOPIC_ALIAS_INVALID,
                    "topic alias 0 or above Topic Alias Maximum",
                ));
            }
            Err(AliasError::Unknown) => {
                return Err(Close::new(
                    ReasonCode::PROTOCOL_ERROR,
                    "empty topic with an unknown topic alias",
                ))
            }
        }
        match validate_topic_name(&publish.topic, limits.max_topic_levels) {
            Ok(()) => {}
            Err(TopicError::Empty) => {
                return Err(Close::new(
                    ReasonCode::PROTOCOL_ERROR,
                    "empty topic without alias",
                ))
            }
            Err(_) => {
                return Err(Close::new(
                    ReasonCode::TOPIC_NAME_INVALID,
                    "invalid PUBLISH topic",
                ))
            }
        }
        if publish.retain && !limits.retain_available {
            return Err(Close::new(
                ReasonCode::RETAIN_NOT_SUPPORTED,
                "retain not available",
            ));
        }
        if publish.qos == QoS::ExactlyOnce && self.awaiting_rel().contains(&publish.pkid) {
            // A resent QoS 2 PUBLISH we already own: acknowledge again, do not route twice.
            encode(
                &Packet::PubRec(ack_with(publish.pkid, ReasonCode::SUCCESS)),
                protocol,
                wire,
            );
            return Ok(());
        }
        if publish.qos == QoS::ExactlyOnce
            && self.awaiting_rel().len() >= usize::from(limits.max_awaiting_rel)
        {
            return Err(Close::new(
                ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                "more QoS 2 in flight than Receive Maximum",
            ));
        }
        let bad_format = publish.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&publish.payload).is_err();
        let reason = if bad_format {
            ReasonCode::PAYLOAD_FORMAT_INVALID
        } else {
            ReasonCode::SUCCESS
        };
        let pkid = publish.pkid;
        let qos = publish.qos;
        let mut denied = false;
        if let Some(authz) = self.authz.as_deref_mut() {
            if !authz.may_publish(&publish.topic) {
                if authz.deny_action() == DenyAction::Disconnect {
                    return Err(Close::new(
                        ReasonCode::NOT_AUTHORIZED,
                        "PUBLISH denied by the ACL",
                    ));
                }
                tracing::debug!(client_id = %self.client_id, topic = %publish.topic, "PUBLISH denied by the ACL");
                denied = true;
            }
        }
        // 5.0: the acknowledgement says why; 3.x has no code for it: acknowledged, dropped.
        let reason = if denied {
            v5_or_success(protocol, ReasonCode::NOT_AUTHORIZED)
        } else {
            reason
        };
        if !denied && !bad_format {
            let mut properties = publish.properties;
            properties.topic_alias = None;
            properties.subscription_identifiers.clear();
            let expires_at = properties
                .message_expiry_interval
                .map(|s| now + Duration::from_secs(u64::from(s)));
            actions.push(Action::Publish(Arc::new(Message {
                topic: publish.topic,
                payload: publish.payload,
                qos,
                retain: publish.retain,
                properties,
                expires_at,
                publisher: self.client_id.clone(),
            })));
        } else if bad_format {
            tracing::warn!(client_id = %self.client_id, "payload is not UTF-8 although its format indicator says so");
        }
        let mut ack = ack_with(pkid, v5_or_success(protocol, reason));
        if bad_format {
            ack.properties.reason_string =
                self.problem_text("payload is not UTF-8 but its Payload Format Indicator is 1");
        }
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => encode(&Packet::PubAck(ack), protocol, wire),
            QoS::ExactlyOnce => {
                if !reason.is_error() {
                    self.flow_mut().awaiting_rel.push(pkid);
                    self.journal_push(|| Change::RelAwaited { pkid });
                }
                encode(&Packet::PubRec(ack), protocol, wire)
            }
        }
        Ok(())
    }

    fn handle_subscribe(
        &mut self,
        sub: Subscribe,
        limits: &Limits,
        actions: &mut Vec<Action>,
    ) -> Result<(), Close> {
        if sub
            .filters
            .iter()
            .any(|f| f.options.no_local && shared::is_shared(&f.filter))
        {
            // MQTT-3.8.3-4.
            return Err(Close::new(
                ReasonCode::PROTOCOL_ERROR,
                "No Local on a shared subscription",
            ));
        }
        let mut reasons = Vec::with_capacity(sub.filters.len());
        let mut problem = None;
        let id = sub.properties.subscription_identifier;
        for f in sub.filters {
            let valid = match shared::parse_shared(&f.filter, limits.max_topic_levels) {
                Some(parsed) => parsed.is_ok(),
                None => validate_topic_filter(&f.filter, limits.max_topic_levels).is_ok(),
            };
            let permitted = !valid
                || self.authz.as_deref().is_none_or(|authz| {
                    let plain = match shared::parse_shared(&f.filter, limits.max_topic_levels) {
                        Some(Ok(parsed)) => parsed.filter,
                        _ => &f.filter,
                    };
                    authz.may_subscribe(plain)
                });
            let reason = if !valid {
                problem.get_or_insert("a topic filter is invalid");
                failure(self.protocol, ReasonCode::TOPIC_FILTER_INVALID)
            } else if !permitted {
                problem.get_or_insert("a topic filter is not authorized");
                failure(self.protocol, ReasonCode::NOT_AUTHORIZED)
            } else {
                let existed = self.subscriptions.contains_key(&f.filter);
                if !existed
                    && limits.max_subscriptions > 0
                    && self.subscriptions.len() >= limits.max_subscriptions
                {
                    problem.get_or_insert("mqtt.max_subscriptions reached");
                    failure(self.protocol, ReasonCode::QUOTA_EXCEEDED)
                } else {
                    let filter = f.filter.detach();
                    let subscription = Subscription {
                        options: f.options,
                        id,
                    };
                    self.subscriptions.insert(filter.clone(), subscription);
                    self.journal_push(|| Change::Subscribed {
                        filter: filter.clone(),
                        subscription,
                    });
                    actions.push(Action::Subscribe {
                        filter,
                        subscription,
                        existed,
                    });
                    ReasonCode(f.options.qos as u8)
                }
            };
            reasons.push(reason);
        }
        let properties = AckProperties {
            reason_string: problem.and_then(|text| self.problem_text(text)),
            ..Default::default()
        };
        actions.push(Action::SubAck(SubAck {
            pkid: sub.pkid,
            reasons,
            properties,
        }));
        Ok(())
    }

    fn handle_unsubscribe(
        &mut self,
        unsub: Unsubscribe,
        wire: &mut BytesMut,
        actions: &mut Vec<Action>,
    ) {
        let mut reasons = Vec::with_capacity(unsub.filters.len());
        for filter in unsub.filters {
            match self.subscriptions.remove_entry(&filter) {
                Some((filter, _)) => {
                    self.journal_push(|| Change::Unsubscribed {
                        filter: filter.clone(),
                    });
                    actions.push(Action::Unsubscribe { filter });
                    reasons.push(ReasonCode::SUCCESS);
                }
                None => reasons.push(ReasonCode::NO_SUBSCRIPTION_EXISTED),
            }
        }
        if !self.protocol.is_v5() {
            reasons.clear();
        }
        let ack = UnsubAck {
            pkid: unsub.pkid,
            reasons,
            properties: Default::default(),
        };
        encode(&Packet::UnsubAck(ack), self.protocol, wire);
    }

    /// Removes every subscription, returning the filters (for a clean start or an ended session).
    pub fn clear_subscriptions(&mut self) -> Vec<ByteStr> {
        self.subscriptions.take_filters()
    }

    /// Delivers a routed message at `qos` (already the minimum of the message's QoS and the
    /// subscription's). `wire` is the connection's write buffer, `None` when offline.
    #[allow(clippy::too_many_arguments)] // each input is one the spec makes distinct
    pub fn deliver(
        &mut self,
        now: Instant,
        msg: &Arc<Message>,
        qos: QoS,
        retain: bool,
        sub_ids: &[u32],
        limits: &Limits,
        wire: Option<&mut BytesMut>,
    ) -> Delivery {
        self.deliver_tagged(now, msg, qos, retain, sub_ids, None, limits, wire)
    }

    /// Delivers a message that the shared subscription `filter` (`$share/...`) chose this
    /// session for, at `qos` (the minimum of the message's and the subscription's). Until the
    /// client has it, [`Session::take_shared_pending`] can give it back to the group.
    #[allow(clippy::too_many_arguments)] // as `deliver`
    pub fn deliver_shared(
        &mut self,
        now: Instant,
        msg: &Arc<Message>,
        qos: QoS,
        retain: bool,
        sub_ids: &[u32],
        filter: &ByteStr,
        limits: &Limits,
        wire: Option<&mut BytesMut>,
    ) -> Delivery {
        let shared = Some(filter.clone());
        self.deliver_tagged(now, msg, qos, retain, sub_ids, shared, limits, wire)
    }

    /// Takes back the QoS 1/2 messages shared subscriptions chose this session for that the
    /// client does not have yet: queued ones, and inflight ones not acknowledged (a QoS 2
    /// message the client answered with PUBREC stays). For a session that ends, so that its
    /// group can give them to another member. Returns (shared filter, message) pairs.
    pub fn take_shared_pending(&mut self) -> Vec<(ByteStr, Arc<Message>)> {
        let mut taken = Vec::new();
        let mut gone: Vec<Change> = Vec::new();
        let journaled = self.journal.is_some();
        let mut take = |item: &Queued, change: Change| match &item.shared {
            Some(filter) if item.qos != QoS::AtMostOnce => {
                taken.push((filter.clone(), item.msg.clone()));
                if journaled {
                    gone.push(change);
                }
                false
            }
            _ => true,
        };
        if let Some(flow) = self.flow.as_deref_mut() {
            flow.inflight.retain(|out| {
                let pkid = out.pkid;
                let msg = out.item.msg.clone();
                out.state == OutState::Released || take(&out.item, Change::Completed { pkid, msg })
            });
            flow.queue.retain(|item| {
                let seq = item.seq;
                let msg = item.msg.clone();
                take(item, Change::Dropped { seq, msg })
            });
        }
        for change in gone {
            self.journal_push(|| change);
        }
        taken
    }

    #[allow(clippy::too_many_arguments)] // as `deliver`
    fn deliver_tagged(
        &mut self,
        now: Instant,
        msg: &Arc<Message>,
        qos: QoS,
        retain: bool,
        sub_ids: &[u32],
        shared: Option<ByteStr>,
        limits: &Limits,
        wire: Option<&mut BytesMut>,
    ) -> Delivery {
        if msg.is_expired(now) {
            return self.dropped(DropReason::Expired);
        }
        if let Some(authz) = self.authz.as_deref_mut() {
            if !authz.may_receive(&msg.topic) {
                return self.dropped(DropReason::NotAuthorized);
            }
        }
        let item = Queued {
            msg: msg.clone(),
            qos,
            retain,
            sub_ids: SmallVec::from_slice(sub_ids),
            shared,
            seq: 0,
        };
        let (Some(conn), Some(wire)) = (self.conn, wire) else {
            return self.enqueue(item, limits);
        };
        if too_large(self.protocol, &item, now, self.send_max(conn)) {
            return self.dropped(DropReason::TooLarge);
        }
        if qos == QoS::AtMostOnce {
            if wire.len() >= limits.max_write_buffer_bytes {
                return self.dropped(DropReason::WriteBufferFull);
            }
            self.write_new(now, &item, 0, wire);
            self.stats.sent += 1;
            return Delivery::Sent;
        }
        if self.queued_len() > 0 || self.inflight_len() >= self.window(limits) {
            return self.enqueue(item, limits);
        }
        self.send_inflight(now, item, wire);
        Delivery::Sent
    }

    /// Writes the first transmission of `item`, with a topic alias where the client takes them.
    fn write_new(&mut self, now: Instant, item: &Queued, pkid: u16, wire: &mut BytesMut) {
        let aliases = self.aliases_out.as_deref_mut();
        write_publish(self.protocol, item, pkid, false, now, aliases, wire);
    }

    /// The client's Maximum Packet Size less what a topic alias property may add.
    fn send_max(&self, conn: ConnParams) -> u32 {
        if conn.max_packet_size == u32::MAX {
            return u32::MAX;
        }
        conn.max_packet_size
            .saturating_sub(self.aliases_out.as_ref().map_or(0, |a| a.overhead()) as u32)
    }

    fn window(&self, limits: &Limits) -> usize {
        let client = self.conn.map_or(u16::MAX, |c| c.receive_maximum);
        usize::from(limits.max_inflight.min(client))
    }

    fn enqueue(&mut self, item: Queued, limits: &Limits) -> Delivery {
        if limits.max_queued_messages == 0 {
            return self.dropped(DropReason::QueueFull);
        }
        let mut result = Delivery::Queued;
        if self.queued_len() >= limits.max_queued_messages {
            // Policy: QoS 0 messages go first (a queued one, else the incoming one); among
            // QoS 1/2 the newest wins and the oldest queued message makes room.
            let queue = &mut self.flow_mut().queue;
            match queue.iter().position(|q| q.qos == QoS::AtMostOnce) {
                Some(i) => {
                    queue.remove(i);
                }
                None if item.qos == QoS::AtMostOnce => return self.dropped(DropReason::QueueFull),
                None => {
                    if let Some(old) = queue.pop_front() {
                        self.journal_dropped(&old);
                    }
                }
            }
            self.stats.dropped += 1;
            result = Delivery::Displaced;
        }
        let mut item = item;
        self.journal_enqueued(&mut item);
        self.flow_mut().queue.push_back(item);
        result
    }

    fn dropped(&mut self, reason: DropReason) -> Delivery {
        self.stats.dropped += 1;
        Delivery::Dropped(reason)
    }

    fn send_inflight(&mut self, now: Instant, mut item: Queued, wire: &mut BytesMut) {
        let pkid = self.next_free_pkid();
        self.journal_sent(&mut item, pkid);
        self.write_new(now, &item, pkid, wire);
        self.stats.sent += 1;
        self.flow_mut().inflight.push_back(Outgoing {
            pkid,
            state: OutState::Published,
            item,
        });
    }

    /// Moves queued messages to the connection while the window has room.
    fn fill_window(&mut self, now: Instant, limits: &Limits, wire: &mut BytesMut) {
        let Some(conn) = self.conn else { return };
        while let Some(item) = self.flow.as_deref_mut().and_then(|f| f.queue.pop_front()) {
            if item.msg.is_expired(now) {
                self.stats.dropped += 1;
                self.journal_dropped(&item);
                continue;
            }
            if too_large(self.protocol, &item, now, self.send_max(conn)) {
                self.stats.dropped += 1;
                self.journal_dropped(&item);
                continue;
            }
            if item.qos == QoS::AtMostOnce {
                self.write_new(now, &item, 0, wire);
                self.stats.sent += 1;
                continue;
            }
            if self.inflight_len() >= self.window(limits) {
                self.flow_mut().queue.push_front(item);
                break;
            }
            self.send_inflight(now, item, wire);
        }
    }

    fn next_free_pkid(&mut self) -> u16 {
        assert!(
            self.inflight_len() < usize::from(u16::MAX),
            "inflight window exceeds packet id space"
        );
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            let candidate = self.next_pkid;
            if !self.inflight().any(|o| o.pkid == candidate) {
                return candidate;
            }
        }
    }

    /// A Reason String for an acknowledgement, if the client is on 5.0 and did not turn problem
    /// information off (MQTT-3.1.2-29).
    fn problem_text(&self, text: &'static str) -> Option<ByteStr> {
        let wanted = self.conn.is_some_and(|c| c.request_problem_information);
        (self.protocol.is_v5() && wanted).then(|| ByteStr::from_static(text))
    }

    /// The final acknowledgement (PUBACK, PUBCOMP) of an outgoing message: frees its slot and
    /// lets the next queued message in. An unknown packet id is ignored (MQTT-4.3).
    fn complete(
        &mut self,
        now: Instant,
        pkid: u16,
        state: OutState,
        qos: QoS,
        limits: &Limits,
        wire: &mut BytesMut,
    ) {
        match self.inflight_position(pkid, state, qos) {
            Some(i) => {
                if let Some(out) = self.flow_mut().inflight.remove(i) {
                    let msg = out.item.msg;
                    self.journal_push(|| Change::Completed { pkid, msg });
                }
                self.fill_window(now, limits, wire);
            }
            None => {
                tracing::debug!(client_id = %self.client_id, pkid, ?qos, "acknowledgement for an unknown packet id")
            }
        }
    }

    fn inflight_position(&self, pkid: u16, state: OutState, qos: QoS) -> Option<usize> {
        self.inflight()
            .position(|o| o.pkid == pkid && o.state == state && o.item.qos == qos)
    }
}

fn failure(protocol: Protocol, v5: ReasonCode) -> ReasonCode {
    if protocol.is_v5() {
        v5
    } else {
        ReasonCode::UNSPECIFIED_ERROR
    }
}

fn v5_or_success(protocol: Protocol, v5: ReasonCode) -> ReasonCode {
    if protocol.is_v5() {
        v5
    } else {
        ReasonCode::SUCCESS
    }
}

fn ack_with(pkid: u16, reason: ReasonCode) -> Ack {
    Ack {
        pkid,
        reason,
        properties: Default::default(),
    }
}

fn pubrel(pkid: u16, reason: ReasonCode) -> Packet {
    Packet::PubRel(ack_with(pkid, reason))
}

/// The PUBLISH for `item`, borrowed from its message: the message's topic (or `topic`, when
/// an alias replaces it), payload and properties, with the expiry left, `topic_alias` and the
/// matching subscriptions' identifiers (5.0 only; 3.x writes no properties).
fn outgoing_publish<'a>(
    protocol: Protocol,
    item: &'a Queued,
    pkid: u16,
    dup: bool,
    now: Instant,
    topic: &'a str,
    topic_alias: Option<u16>,
) -> PublishOut<'a> {
    let msg = &item.msg;
    PublishOut {
        dup,
        qos: item.qos,
        retain: item.retain,
        topic,
        pkid,
        properties: &msg.properties,
        message_expiry_interval: if protocol.is_v5() {
            msg.remaining_expiry_secs(now)
        } else {
            None
        },
        topic_alias,
        subscription_identifiers: &item.sub_ids,
        payload: &msg.payload,
    }
}

/// Writes the PUBLISH for `item`. With `aliases`, the topic is replaced by an alias the client
/// knows (or sent along with a new one); resends pass `None` and carry the full topic.
fn write_publish(
    protocol: Protocol,
    item: &Queued,
    pkid: u16,
    dup: bool,
    now: Instant,
    aliases: Option<&mut OutboundAliases>,
    wire: &mut BytesMut,
) {
    let topic = &item.msg.topic;
    let (topic, alias) = match aliases.map_or(OutAlias::None, |a| a.alias_for(topic)) {
        OutAlias::None => (&**topic, None),
        OutAlias::Assign(alias) => (&**topic, Some(alias)),
        OutAlias::Reuse(alias) => ("", Some(alias)),
    };
    let publish = outgoing_publish(protocol, item, pkid, dup, now, topic, alias);
    encode_publish_out(&publish, protocol, wire);
}

/// Whether the PUBLISH for `item` exceeds the client's Maximum Packet Size. Clients that set
/// none (every 3.x client) skip the sizing entirely.
fn too_large(protocol: Protocol, item: &Queued, now: Instant, max: u32) -> bool {
    if max == u32::MAX {
        return false;
    }
    // Packet id 1 stands for any non-zero id: the length is the same.
    let pkid = u16::from(item.qos != QoS::AtMostOnce);
    let publish = outgoing_publish(protocol, item, pkid, false, now, &item.msg.topic, None);
    publish_out_len(&publish, protocol) > max as usize
}

#[cfg(test)]
mod tests;
