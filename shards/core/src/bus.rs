//! What shards say to each other. Messages travel in batches (`Vec<ShardMsg>`) over glommio's
//! bounded channel mesh; one batch per destination per event-loop turn.

use crate::sys::ShardFigures;
use shardmq_broker::session::Session;
use shardmq_broker::shared::{MemberCounts, SharedKey};
use shardmq_broker::Message;
use shardmq_codec::ByteStr;
use std::sync::Arc;

pub use shardmq_link::ShardId;

/// Most shards one node runs: [`ShardSet`] is one machine word.
pub const MAX_SHARDS: usize = 64;

/// A set of shards, as the routing replica stores it per filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardSet(u64);

impl ShardSet {
    /// No shard.
    pub const EMPTY: ShardSet = ShardSet(0);

    /// This set plus `shard`.
    pub fn with(self, shard: ShardId) -> ShardSet {
        assert!(shard < MAX_SHARDS);
        ShardSet(self.0 | 1 << shard)
    }

    /// This set without `shard`.
    pub fn without(self, shard: ShardId) -> ShardSet {
        assert!(shard < MAX_SHARDS);
        ShardSet(self.0 & !(1 << shard))
    }

    /// Union.
    pub fn union(self, other: ShardSet) -> ShardSet {
        ShardSet(self.0 | other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether `shard` is in the set.
    pub fn contains(self, shard: ShardId) -> bool {
        shard < MAX_SHARDS && self.0 & (1 << shard) != 0
    }

    /// The shards, ascending.
    pub fn iter(self) -> impl Iterator<Item = ShardId> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(i)
        })
    }
}

/// One message between shards.
#[derive(Debug)]
pub enum ShardMsg {
    /// Deliver to the receiving shard's local subscribers.
    Publish {
        /// The message.
        msg: Arc<Message>,
        /// Where the sender routed it (see [`Stamp`]).
        stamp: Stamp,
    },
    /// `storage.durability = "sync"`: a QoS 1/2 publish to a shard that holds persistent
    /// sessions: delivered like `Publish`, and counted (per shard pair, in order) for the
    /// receiver's `DurableAck`, which the publisher's acknowledgement waits for.
    DurablePublish {
        /// The message.
        msg: Arc<Message>,
        /// As for `Publish`.
        stamp: Stamp,
    },
    /// From the shard a session left to the shard it moved to: a publish that reached the old
    /// shard for it during the move (`shard/moves.rs`); the receiver delivers it to that session
    /// alone, unless its own copy of the publish reached the session there.
    Forward {
        /// The move: the token of the claim that moved the session.
        token: u64,
        /// The message.
        msg: Arc<Message>,
        /// The shard that routed it, and its stamp there.
        origin: ShardId,
        /// As for `Publish`.
        stamp: Stamp,
    },
    /// From the shard a session moved to, to every other shard, after the `RouteAdd`s of the
    /// session's filters: answer with `MoveMarkAck` to both ends of the move (the old shard
    /// takes this mark itself as the new shard's).
    MoveMark {
        /// The move's token.
        token: u64,
        /// The shard the session left.
        from: ShardId,
        /// The shard it moved to.
        to: ShardId,
    },
    /// A shard applied the new shard's routes of a move (`MoveMark`): whatever it routes from
    /// now on reaches the session on its new shard directly.
    MoveMarkAck {
        /// The move's token.
        token: u64,
        /// The number of the last publish the sender routed: every copy of one up to it
        /// that the sender sent the receiver came before this message.
        upto: u64,
    },
    /// From the old shard of a move: no `Forward` of it follows.
    ForwardEnd {
        /// The move's token.
        token: u64,
        /// As for `MoveMarkAck`.
        upto: u64,
    },
    /// To shard 0, at each `$SYS` interval: `shard`'s figures, for the node's totals.
    Figures {
        /// Reporting shard.
        shard: ShardId,
        /// Its snapshot.
        figures: ShardFigures,
    },
    /// `shard` has its first subscriber to `filter`; acknowledge with `RouteAck` if `sync`.
    RouteAdd {
        /// The filter.
        filter: ByteStr,
        /// ShardCore that subscribes.
        shard: ShardId,
        /// Token to acknowledge, when the subscriber's SUBACK waits for every replica.
        sync: Option<u64>,
    },
    /// One message of a shared group for the receiving shard to give one of its members, or to
    /// pass on to a shard that has one.
    SharedPublish(Box<SharedPublish>),
    /// `shard`'s members of a shared group are now `counts`; acknowledge with `RouteAck` if
    /// `sync` (sent like `RouteAdd`, in order, so the latest counts win).
    SharedRoute {
        /// The group and its filter.
        key: Box<SharedKey>,
        /// ShardCore whose members these are.
        shard: ShardId,
        /// Its members online and offline.
        counts: MemberCounts,
        /// Token to acknowledge, when a SUBACK or CONNACK waits for every replica.
        sync: Option<u64>,
    },
    /// To the shard itself: a member of the group ended before its client had `msg`; place it
    /// again, with another member.
    SharedRedispatch {
        /// The group and its filter.
        key: Box<SharedKey>,
        /// The message.
        msg: Arc<Message>,
    },
    /// `shard` has no subscriber to `filter` any more.
    RouteDel {
        /// The filter.
        filter: ByteStr,
        /// ShardCore that unsubscribed.
        shard: ShardId,
    },
    /// A replica applied a synced `RouteAdd`.
    RouteAck {
        /// The sync token.
        token: u64,
    },
    /// Set (or clear, with `None`) the retained message of `topic` in the replica.
    Retain {
        /// The topic.
        topic: ByteStr,
        /// The shard whose PUBLISH made the change (and whose log stores it); `None`: from
        /// the cluster.
        origin: Option<ShardId>,
        /// Wall-clock time of the change, ns since the Unix epoch (0: from the cluster).
        at_unix_ns: u64,
        /// The message, detached from any read buffer.
        msg: Option<Arc<Message>>,
    },
    /// To the registry owner of `client_id`: a connection on `shard` claims it.
    Claim {
        /// Client identifier.
        client_id: ByteStr,
        /// Claiming shard.
        shard: ShardId,
        /// Claim token.
        token: u64,
        /// Clean start: the old session is discarded.
        clean_start: bool,
    },
    /// To the registry owner: the session registered under `token` ended.
    Release {
        /// Client identifier.
        client_id: ByteStr,
        /// ShardCore that held it.
        shard: ShardId,
        /// Its registration token.
        token: u64,
    },
    /// To the shard holding `client_id`: close its connection and hand the session to `to`.
    Takeover {
        /// Client identifier.
        client_id: ByteStr,
        /// Claiming shard.
        to: ShardId,
        /// The claim's token.
        token: u64,
        /// The registration the claim replaces: the token of the claim (or session) the
        /// receiver registered before. If that claim is still in flight on the receiver, the
        /// takeover waits for it; otherwise it concerns the session the receiver holds now.
        replaces: u64,
        /// Clean start: drop the session instead of sending it.
        discard: bool,
    },
    /// `storage.durability = "sync"`: `shard` stored durably what the QoS 1/2 publishes the
    /// receiver sent it (counted per shard pair, in order) up to number `upto` changed.
    DurableAck {
        /// The acknowledging shard.
        shard: ShardId,
        /// Publishes of the receiver's, counted from 1, that are durable there.
        upto: u64,
    },
    /// The session of `client_id` this shard took over is durable in its log: a shard still
    /// holding the old copy in its own log deletes it there.
    SessionStored {
        /// Client identifier.
        client_id: ByteStr,
    },
    /// To the claiming shard: the claim is granted, with the previous session if kept.
    Handoff {
        /// Client identifier.
        client_id: ByteStr,
        /// The claim's token.
        token: u64,
        /// The previous session, if any and not discarded.
        session: Option<Box<Session>>,
        /// With a session from another shard: that shard's `handled` numbers when the
        /// session left it (`shard/moves.rs`).
        handled: Option<Box<[u64]>>,
    },
}

/// What a shard's copy of a publish says of its routing, for a session moving between shards:
/// the publish's number among those its shard routed (from 1, in routing order: the mesh keeps
/// each pair's order), and the shards it went to (besides the router itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    /// Number of the publish at its shard.
    pub seq: u64,
    /// The shards the router sent it to.
    pub dest: ShardSet,
}

/// A message placed with a shared group, on its way to the shard of the member it goes to.
#[derive(Debug)]
pub struct SharedPublish {
    /// The group and its filter.
    pub key: SharedKey,
    /// The message.
    pub msg: Arc<Message>,
    /// The member's slot among the shard's online (or, if not `online`, offline) members.
    pub slot: u32,
    /// The hash the strategy placed the message by (topic or publisher), for a further pick.
    pub hash: u64,
    /// Shards that found no member for it: never picked again, which bounds the hops.
    pub tried: ShardSet,
}

/// A batch of messages for one destination.
pub type Batch = Vec<ShardMsg>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_set_ops() {
        let s = ShardSet::EMPTY.with(0).with(5).with(63);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 5, 63]);
        assert!(s.contains(5) && !s.contains(4));
        let s = s.without(5);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 63]);
        assert!(ShardSet::EMPTY.is_empty());
        assert_eq!(
            ShardSet::EMPTY
                .with(1)
                .union(ShardSet::EMPTY.with(2))
                .iter()
                .count(),
            2
        );
    }
}
