//! The record types: every change the runtime stores, as plain data.
//!
//! They mirror the broker's session journal (`shardmq_broker::session::Change`) one to one,
//! keyed by client identifier, plus the records for messages and retained topics. Messages
//! are stored once ([`Record::MessagePut`]) and referenced by [`MessageId`] from sessions'
//! deliveries and from retained topics.
//!
//! # Message lifetime (reference semantics)
//! - A [`MessageId`] is allocated by the runtime, per shard, increasing, never reused (resume
//!   from [`crate::State::next_message_id`] after a restart). A `MessagePut` for an id always
//!   carries the same message, so a message may be put again (compaction does) harmlessly.
//! - A message lives while something references it: a retained topic, a queued delivery or an
//!   inflight delivery of a session. There is no delete record: replay resolves references at
//!   the end ([`crate::State::finish`]) and drops every message nothing references. A reference
//!   may come before or after the put in the log; it only has to be in the replayed segments
//!   (the runtime's [`crate::MessageTable`] makes sure of that across compaction).
//! - A reference to an id no replayed segment puts is dangling: the delivery or retained
//!   entry is dropped and counted in [`crate::State::dangling`] (never happens to a log
//!   written by the rules; a damaged log may cause it).

use bytes::Bytes;
use shardmq_codec::{ByteStr, LastWill, Protocol, PublishProperties, QoS, SubscriptionOptions};
use smallvec::SmallVec;
use std::collections::VecDeque;

/// A message's number within one shard's log (see the module docs).
pub type MessageId = u64;

/// Log sequence number: the position of a record in a shard's log, counting from 0. The
/// durable gate of a connection is an `Lsn`: output waits until the log is durable up to it.
pub type Lsn = u64;

/// Sequence number of a segment file within a shard's directory (its file name).
pub type SegmentSeq = u64;

/// A message as stored: [`shardmq_broker::Message`] with the expiry as wall-clock time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Topic name.
    pub topic: ByteStr,
    /// Payload.
    pub payload: Bytes,
    /// QoS the publisher used.
    pub qos: QoS,
    /// RETAIN flag as published.
    pub retain: bool,
    /// Properties, stored through the codec's own MQTT 5.0 encoder, so every property survives.
    pub properties: PublishProperties,
    /// Wall-clock expiry time, milliseconds since the Unix epoch, if the message expires.
    pub expires_at_unix_ms: Option<u64>,
    /// Client identifier of the publisher (No Local); empty for broker-made messages.
    pub publisher: ByteStr,
}

/// A subscription as stored (the broker's `Subscription`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredSubscription {
    /// Options from SUBSCRIBE (QoS is the granted maximum).
    pub options: SubscriptionOptions,
    /// Subscription Identifier, if the SUBSCRIBE carried one.
    pub id: Option<u32>,
}

/// One QoS 1/2 delivery of a message to a session (the journal's `QueuedMessage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDelivery {
    /// The session's number for this delivery (unique within the session).
    pub seq: u64,
    /// The message.
    pub message: MessageId,
    /// QoS of this delivery.
    pub qos: QoS,
    /// RETAIN flag of this delivery.
    pub retain: bool,
    /// Subscription identifiers of this delivery.
    pub sub_ids: SmallVec<[u32; 1]>,
    /// The shared subscription that chose this session, if one did.
    pub shared: Option<ByteStr>,
}

/// An outgoing delivery the client has not fully acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredInflight {
    /// Packet identifier it was sent with.
    pub pkid: u16,
    /// QoS 2: PUBREC received, PUBREL sent, waiting for PUBCOMP.
    pub released: bool,
    /// The delivery.
    pub delivery: StoredDelivery,
}

/// A whole persistent session (the journal's `SessionImage`, messages by id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// Client identifier.
    pub client_id: ByteStr,
    /// Protocol of the last connection.
    pub protocol: Protocol,
    /// Session Expiry Interval, seconds.
    pub expiry_secs: u32,
    /// Wall-clock time of the last disconnect, ms since the Unix epoch; `None` when a
    /// connection was attached at the last record (the node stopped under it: the runtime
    /// treats the session as disconnected at restart, and its will as due).
    pub disconnected_at_unix_ms: Option<u64>,
    /// Wall-clock time of the last attach, detach or image, ms since the Unix epoch. When two
    /// shard directories both hold a session (a takeover between shards cut by a crash), the
    /// newer one wins.
    pub updated_unix_ms: u64,
    /// Subscriptions in the order they were made.
    pub subscriptions: Vec<(ByteStr, StoredSubscription)>,
    /// Outgoing deliveries awaiting acknowledgement, oldest first.
    pub inflight: Vec<StoredInflight>,
    /// Queued deliveries, oldest first.
    pub queue: VecDeque<StoredDelivery>,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub awaiting_rel: Vec<u16>,
    /// The will (its delay is in its properties), while the session holds one.
    pub will: Option<Box<LastWill>>,
    /// Highest delivery number used so far.
    pub last_seq: u64,
}

impl StoredSession {
    /// An empty session.
    pub fn new(client_id: ByteStr, protocol: Protocol, expiry_secs: u32) -> StoredSession {
        StoredSession {
            client_id,
            protocol,
            expiry_secs,
            disconnected_at_unix_ms: None,
            updated_unix_ms: 0,
            subscriptions: Vec::new(),
            inflight: Vec::new(),
            queue: VecDeque::new(),
            awaiting_rel: Vec::new(),
            will: None,
            last_seq: 0,
        }
    }

    /// Every message id the session references (inflight first, then queued).
    pub fn message_ids(&self) -> impl Iterator<Item = MessageId> + '_ {
        self.inflight
            .iter()
            .map(|i| i.delivery.message)
            .chain(self.queue.iter().map(|d| d.message))
    }
}

/// One stored change. See the crate docs for the order the runtime writes them in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Stores `message` under `id` (see the module docs for its lifetime).
    MessagePut {
        /// Its id.
        id: MessageId,
        /// The message.
        message: StoredMessage,
    },
    /// `topic` now retains message `message`.
    RetainedSet {
        /// Topic name.
        topic: ByteStr,
        /// The message (put before or after, in the replayed segments).
        message: MessageId,
        /// Wall-clock time of the change, ns since the Unix epoch (cross-shard order).
        at_unix_ns: u64,
    },
    /// `topic` retains nothing any more (a tombstone: it beats older sets in other shards).
    RetainedClear {
        /// Topic name.
        topic: ByteStr,
        /// Wall-clock time of the change, ns since the Unix epoch.
        at_unix_ns: u64,
    },
    /// The whole session, replacing whatever the log said before (a session becoming durable,
    /// a takeover from another shard, compaction).
    SessionImage(Box<StoredSession>),
    /// The session is gone (expired, clean start, taken over by another shard).
    SessionDelete {
        /// Client identifier.
        client_id: ByteStr,
    },
    /// A connection took the session (creates it if the log does not hold it).
    Attached {
        /// Client identifier.
        client_id: ByteStr,
        /// Protocol of the connection.
        protocol: Protocol,
        /// Session expiry interval, seconds.
        expiry_secs: u32,
        /// The connection's will.
        will: Option<Box<LastWill>>,
        /// Wall-clock time, ms since the Unix epoch.
        at_unix_ms: u64,
    },
    /// The connection went away at `at_unix_ms` (expiry and will delay resume from it).
    Detached {
        /// Client identifier.
        client_id: ByteStr,
        /// Wall-clock time, ms since the Unix epoch.
        at_unix_ms: u64,
    },
    /// DISCONNECT changed the session expiry interval.
    Expiry {
        /// Client identifier.
        client_id: ByteStr,
        /// The new interval, seconds.
        expiry_secs: u32,
    },
    /// The will was taken (published, handed to the delay timer, or dropped).
    WillCleared {
        /// Client identifier.
        client_id: ByteStr,
    },
    /// A subscription was added or its options replaced.
    Subscribed {
        /// Client identifier.
        client_id: ByteStr,
        /// The filter.
        filter: ByteStr,
        /// Options and identifier.
        subscription: StoredSubscription,
    },
    /// A subscription was removed.
    Unsubscribed {
        /// Client identifier.
        client_id: ByteStr,
        /// The filter.
        filter: ByteStr,
    },
    /// A delivery was queued at the back of the session's queue.
    Enqueued {
        /// Client identifier.
        client_id: ByteStr,
        /// The delivery.
        delivery: StoredDelivery,
    },
    /// Queued delivery `seq` was sent with `pkid`: it moves to the back of inflight.
    Sent {
        /// Client identifier.
        client_id: ByteStr,
        /// The delivery.
        seq: u64,
        /// Its packet identifier.
        pkid: u16,
    },
    /// Queued delivery `seq` left the queue unsent.
    Dropped {
        /// Client identifier.
        client_id: ByteStr,
        /// The delivery.
        seq: u64,
    },
    /// PUBREC for outgoing `pkid` (QoS 2): it is released, PUBREL sent.
    Released {
        /// Client identifier.
        client_id: ByteStr,
        /// Packet identifier.
        pkid: u16,
    },
    /// Outgoing `pkid` is done (PUBACK, PUBCOMP) or discarded.
    Completed {
        /// Client identifier.
        client_id: ByteStr,
        /// Packet identifier.
        pkid: u16,
    },
    /// Incoming QoS 2 `pkid` accepted (PUBREC sent), awaiting PUBREL.
    RelAwaited {
        /// Client identifier.
        client_id: ByteStr,
        /// Packet identifier.
        pkid: u16,
    },
    /// PUBREL for incoming `pkid` arrived.
    RelDone {
        /// Client identifier.
        client_id: ByteStr,
        /// Packet identifier.
        pkid: u16,
    },
}

impl Record {
    /// The session the record changes, if it changes one.
    pub fn client_id(&self) -> Option<&ByteStr> {
        match self {
            Record::MessagePut { .. }
            | Record::RetainedSet { .. }
            | Record::RetainedClear { .. } => None,
            Record::SessionImage(s) => Some(&s.client_id),
            Record::SessionDelete { client_id }
            | Record::Attached { client_id, .. }
            | Record::Detached { client_id, .. }
            | Record::Expiry { client_id, .. }
            | Record::WillCleared { client_id }
            | Record::Subscribed { client_id, .. }
            | Record::Unsubscribed { client_id, .. }
            | Record::Enqueued { client_id, .. }
            | Record::Sent { client_id, .. }
            | Record::Dropped { client_id, .. }
            | Record::Released { client_id, .. }
            | Record::Completed { client_id, .. }
            | Record::RelAwaited { client_id, .. }
            | Record::RelDone { client_id, .. } => Some(client_id),
        }
    }
}
