//! Shared subscriptions (MQTT 5.0 §4.8.2): `$share/{group}/{filter}`, and EMQX's
//! `$queue/{filter}`, which is the group `$queue`. Each message matching `filter` goes to exactly
//! one member of each group.
//!
//! Pure: the shard runtime keeps, per (group, filter),
//! - a [`LocalGroup`]: the member sessions the shard owns, online or not;
//! - a [`GroupRoute`] in its replica of the node: how many members each shard has online and
//!   offline (persistent sessions stay members while offline).
//!
//! A publish is placed in two steps. The publishing shard asks its [`GroupRoute`] for a shard and
//! a slot ([`GroupRoute::pick`]); that shard asks its [`LocalGroup`] for the member in the slot
//! ([`LocalGroup::pick`]). Online members are always preferred; an offline member is chosen only
//! when no member of the group is online anywhere. Both steps follow the node's
//! [`SharedStrategy`].

use crate::session::Subscription;
use crate::topic::{validate_topic_filter, TopicError};
use shardmq_codec::ByteStr;
use smallvec::SmallVec;
use std::fmt;
use std::str::FromStr;

/// Prefix of a shared subscription.
pub const SHARE_PREFIX: &str = "$share/";
/// Prefix of EMQX's queue subscription, an alias of `$share/$queue/`.
pub const QUEUE_PREFIX: &str = "$queue/";
/// The group of a `$queue/` subscription.
pub const QUEUE_GROUP: &str = "$queue";

/// Whether `filter` is a shared subscription (valid or not).
pub fn is_shared(filter: &str) -> bool {
    filter.starts_with(SHARE_PREFIX) || filter.starts_with(QUEUE_PREFIX)
}

/// A shared subscription's group and the filter its members subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// Share name.
    pub group: &'a str,
    /// The topic filter proper.
    pub filter: &'a str,
}

/// Why a `$share/` or `$queue/` filter is refused (SUBACK 0x8F Topic Filter invalid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SharedFilterError {
    /// The share name is empty or contains `+` or `#` (MQTT-4.8.2-1, -2).
    #[error("share name is empty or contains '+' or '#'")]
    ShareName,
    /// The filter after the share name is missing or invalid.
    #[error("shared subscription filter: {0}")]
    Filter(#[from] TopicError),
}

/// Parses `filter` as a shared subscription. `None`: it is not one (no `$share/` or `$queue/`
/// prefix). The share name must be non-empty and hold no `/`, `+` or `#`; the filter after it
/// must be a valid filter of at most `max_levels` levels.
pub fn parse_shared(
    filter: &str,
    max_levels: usize,
) -> Option<Result<SharedFilter<'_>, SharedFilterError>> {
    let parsed = if let Some(rest) = filter.strip_prefix(SHARE_PREFIX) {
        match rest.split_once('/') {
            None => Err(SharedFilterError::Filter(TopicError::Empty)),
            Some((group, _)) if group.is_empty() || group.contains(['+', '#']) => {
                Err(SharedFilterError::ShareName)
            }
            Some((group, filter)) => Ok(SharedFilter { group, filter }),
        }
    } else {
        let filter = filter.strip_prefix(QUEUE_PREFIX)?;
        Ok(SharedFilter {
            group: QUEUE_GROUP,
            filter,
        })
    };
    Some(parsed.and_then(|s| {
        validate_topic_filter(s.filter, max_levels)?;
        Ok(s)
    }))
}

/// A shared group of one filter, owned: the key of [`LocalGroup`]s and [`GroupRoute`]s.
/// `$queue/a` and `$share/$queue/a` are the same group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SharedKey {
    /// Share name.
    pub group: ByteStr,
    /// The topic filter proper.
    pub filter: ByteStr,
}

impl SharedKey {
    /// The key of a shared subscription filter already validated by [`parse_shared`]; `None`
    /// for any other filter.
    pub fn of(filter: &ByteStr) -> Option<SharedKey> {
        let s = parse_shared(filter, usize::MAX)?.ok()?;
        let bytes = filter.as_bytes();
        let slice = |part: &str| {
            let start = part.as_ptr() as usize - filter.as_ptr() as usize;
            ByteStr::try_from_bytes(bytes.slice(start..start + part.len()))
                .expect("a slice of a str at '/' boundaries is UTF-8")
        };
        let group = if s.group == QUEUE_GROUP {
            ByteStr::from_static(QUEUE_GROUP)
        } else {
            slice(s.group)
        };
        Some(SharedKey {
            group,
            filter: slice(s.filter),
        })
    }
}

/// How a message picks its one member of a group (`mqtt.shared_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SharedStrategy {
    /// Members in turn (per publishing shard).
    #[default]
    RoundRobin,
    /// One member gets everything while it stays online.
    Sticky,
    /// A topic always goes to the same member while membership does not change.
    HashTopic,
    /// A publisher's messages always go to the same member while membership does not change.
    HashClientId,
}

impl SharedStrategy {
    /// Every strategy, in configuration order.
    pub const ALL: [SharedStrategy; 4] = [
        SharedStrategy::RoundRobin,
        SharedStrategy::Sticky,
        SharedStrategy::HashTopic,
        SharedStrategy::HashClientId,
    ];

    /// The configuration name.
    pub fn as_str(self) -> &'static str {
        match self {
            SharedStrategy::RoundRobin => "round_robin",
            SharedStrategy::Sticky => "sticky",
            SharedStrategy::HashTopic => "hash_topic",
            SharedStrategy::HashClientId => "hash_clientid",
        }
    }
}

impl fmt::Display for SharedStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SharedStrategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        SharedStrategy::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a shared subscription strategy; expected one of: {}",
                    SharedStrategy::ALL.map(|k| k.as_str()).join(", ")
                )
            })
    }
}

/// A group's members on one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemberCounts {
    /// Members with a connection.
    pub online: u32,
    /// Members without one (persistent sessions).
    pub offline: u32,
}

impl MemberCounts {
    /// No member at all.
    pub fn is_empty(self) -> bool {
        self.online == 0 && self.offline == 0
    }
}

/// Where one message of a group goes: a shard, and the slot among that shard's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    /// The shard.
    pub shard: usize,
    /// Index among the shard's online members (offline ones when `online` is false), as the
    /// picker counted them; the shard takes it modulo its own count.
    pub slot: u32,
    /// Whether the pick is among online members.
    pub online: bool,
}

/// Chooses an index below `total` for one message. `turn` advances on every call (round robin,
/// and the first choice of sticky); `hash` is the topic's or the publisher's hash.
fn choose(strategy: SharedStrategy, turn: &mut u64, hash: u64, total: u64) -> u64 {
    debug_assert!(total > 0);
    match strategy {
        SharedStrategy::RoundRobin | SharedStrategy::Sticky => {
            let i = *turn % total;
            *turn = turn.wrapping_add(1);
            i
        }
        SharedStrategy::HashTopic | SharedStrategy::HashClientId => hash % total,
    }
}

/// One group of one filter as a shard's replica sees the node: its members per shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRoute {
    group: ByteStr,
    /// (shard, counts), ascending by shard, never empty counts.
    shards: SmallVec<[(usize, MemberCounts); 2]>,
    turn: u64,
    sticky: Option<usize>,
}

impl GroupRoute {
    /// A group with no member yet.
    pub fn new(group: ByteStr) -> GroupRoute {
        GroupRoute {
            group,
            shards: SmallVec::new(),
            turn: 0,
            sticky: None,
        }
    }

    /// Share name.
    pub fn group(&self) -> &ByteStr {
        &self.group
    }

    /// Records `shard`'s members (as that shard announced them).
    pub fn set(&mut self, shard: usize, counts: MemberCounts) {
        match self.shards.binary_search_by_key(&shard, |(s, _)| *s) {
            Ok(i) if counts.is_empty() => {
                self.shards.remove(i);
            }
            Ok(i) => self.shards[i].1 = counts,
            Err(_) if counts.is_empty() => {}
            Err(i) => self.shards.insert(i, (shard, counts)),
        }
    }

    /// `shard`'s members.
    pub fn counts(&self, shard: usize) -> MemberCounts {
        self.shards
            .iter()
            .find(|(s, _)| *s == shard)
            .map_or(MemberCounts::default(), |(_, c)| *c)
    }

    /// No shard has a member.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Members online on every shard together.
    pub fn online(&self) -> u32 {
        self.shards.iter().map(|(_, c)| c.online).sum()
    }

    /// Chooses the shard for one message, never one whose bit is set in `exclude` (shards that
    /// already found no member): among shards with online members, weighted by their number,
    /// else among shards with offline members. `None` when no member is left.
    pub fn pick(&mut self, strategy: SharedStrategy, hash: u64, exclude: u64) -> Option<Pick> {
        let allowed = |s: usize| s >= 64 || exclude & (1 << s) == 0;
        for online in [true, false] {
            let weight = |c: &MemberCounts| if online { c.online } else { c.offline };
            let candidates = || {
                self.shards
                    .iter()
                    .filter(|(s, c)| allowed(*s) && weight(c) > 0)
                    .map(|(s, c)| (*s, u64::from(weight(c))))
            };
            let total: u64 = candidates().map(|(_, w)| w).sum();
            if total == 0 {
                continue;
            }
            if strategy == SharedStrategy::Sticky {
                if let Some(s) = self.sticky.filter(|s| candidates().any(|(c, _)| c == *s)) {
                    return Some(Pick {
                        shard: s,
                        slot: 0,
                        online,
                    });
                }
            }
            let mut index = choose(strategy, &mut self.turn, hash, total);
            for (shard, w) in candidates() {
                if index < w {
                    if strategy == SharedStrategy::Sticky && online {
                        self.sticky = Some(shard);
                    }
                    return Some(Pick {
                        shard,
                        slot: index as u32,
                        online,
                    });
                }
                index -= w;
            }
            unreachable!("index below the total weight");
        }
        None
    }
}

/// Where one message of a group goes in a cluster: to this node's members, or to another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeChoice {
    /// This node (its [`GroupRoute`] then picks the shard).
    Here,
    /// The node with this id.
    Node(u64),
}

/// One shared group as a publishing shard sees the other nodes of the cluster: the nodes with
/// members (their routes) and how many members each has online (the weight it announced).
///
/// A message of the group goes to one node, chosen among this node and the others with the
/// node's [`SharedStrategy`], each weighted by its members online, so a group's load spreads by
/// member count rather than staying on the publisher's node. When no member is online anywhere
/// (as far as the weights tell), this node's offline members come first, then another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteGroup {
    share: ByteStr,
    /// (node, members online), ascending by node.
    nodes: SmallVec<[(u64, u32); 2]>,
    turn: u64,
    sticky: Option<NodeChoice>,
}

impl RemoteGroup {
    /// A group known by its routed filter (`$share/{group}/{filter}`), no node yet.
    pub fn new(share: ByteStr) -> RemoteGroup {
        RemoteGroup {
            share,
            nodes: SmallVec::new(),
            turn: 0,
            sticky: None,
        }
    }

    /// The routed filter.
    pub fn share(&self) -> &ByteStr {
        &self.share
    }

    /// `node` has the route (weight 0 until it says otherwise). False if it had it.
    pub fn add_node(&mut self, node: u64) -> bool {
        match self.nodes.binary_search_by_key(&node, |(n, _)| *n) {
            Ok(_) => false,
            Err(i) => {
                self.nodes.insert(i, (node, 0));
                true
            }
        }
    }

    /// `node` no longer has the route.
    pub fn remove_node(&mut self, node: u64) {
        self.nodes.retain(|(n, _)| *n != node);
    }

    /// `node`'s members online; ignored for a node without the route.
    pub fn set_weight(&mut self, node: u64, online: u32) {
        if let Ok(i) = self.nodes.binary_search_by_key(&node, |(n, _)| *n) {
            self.nodes[i].1 = online;
        }
    }

    /// (node, members online), ascending by node.
    pub fn nodes(&self) -> &[(u64, u32)] {
        &self.nodes
    }

    /// No other node has the route.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Chooses the node of one message. `here_online`: this node's members online (every
    /// shard's), `here_any`: whether this node has members at all. `None`: no member anywhere.
    pub fn pick(
        &mut self,
        strategy: SharedStrategy,
        hash: u64,
        here_online: u32,
        here_any: bool,
    ) -> Option<NodeChoice> {
        let total =
            u64::from(here_online) + self.nodes.iter().map(|(_, w)| u64::from(*w)).sum::<u64>();
        if total == 0 {
            if here_any {
                return Some(NodeChoice::Here);
            }
            if self.nodes.is_empty() {
                return None;
            }
            let i = choose(strategy, &mut self.turn, hash, self.nodes.len() as u64);
            return Some(NodeChoice::Node(self.nodes[i as usize].0));
        }
        if strategy == SharedStrategy::Sticky {
            let alive = |c: NodeChoice| match c {
                NodeChoice::Here => here_online > 0,
                NodeChoice::Node(n) => self.nodes.iter().any(|&(m, w)| m == n && w > 0),
            };
            if let Some(c) = self.sticky.filter(|&c| alive(c)) {
                return Some(c);
            }
        }
        let mut index = choose(strategy, &mut self.turn, hash, total);
        let choice = if index < u64::from(here_online) {
            NodeChoice::Here
        } else {
            index -= u64::from(here_online);
            let mut chosen = None;
            for &(node, w) in &self.nodes {
                if index < u64::from(w) {
                    chosen = Some(NodeChoice::Node(node));
                    break;
                }
                index -= u64::from(w);
            }
            chosen.expect("index below the total weight")
        };
        if strategy == SharedStrategy::Sticky {
            self.sticky = Some(choice);
        }
        Some(choice)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    id: u32,
    subscription: Subscription,
    online: bool,
}

/// One group of one filter on one shard: the member sessions the shard owns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalGroup {
    /// In joining order.
    members: Vec<Member>,
    sticky: Option<u32>,
}

impl LocalGroup {
    /// Adds session `id`, or replaces its subscription options. True if it is a new member.
    pub fn insert(&mut self, id: u32, subscription: Subscription, online: bool) -> bool {
        match self.members.iter_mut().find(|m| m.id == id) {
            Some(m) => {
                m.subscription = subscription;
                false
            }
            None => {
                self.members.push(Member {
                    id,
                    subscription,
                    online,
                });
                true
            }
        }
    }

    /// Removes session `id`. True if it was a member.
    pub fn remove(&mut self, id: u32) -> bool {
        let before = self.members.len();
        self.members.retain(|m| m.id != id);
        if self.sticky == Some(id) {
            self.sticky = None;
        }
        before != self.members.len()
    }

    /// Marks session `id` online or offline. True if that changed anything.
    pub fn set_online(&mut self, id: u32, online: bool) -> bool {
        match self.members.iter_mut().find(|m| m.id == id) {
            Some(m) if m.online != online => {
                m.online = online;
                true
            }
            _ => false,
        }
    }

    /// Members online and offline, as announced to the other shards.
    pub fn counts(&self) -> MemberCounts {
        let online = self.members.iter().filter(|m| m.online).count() as u32;
        MemberCounts {
            online,
            offline: self.members.len() as u32 - online,
        }
    }

    /// No member left.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The member in `slot` (modulo their number) among the online members, or the offline ones
    /// when `online` is false; sticky keeps the member it chose while it stays online.
    pub fn pick(
        &mut self,
        strategy: SharedStrategy,
        slot: u32,
        online: bool,
    ) -> Option<(u32, Subscription)> {
        let candidates = || self.members.iter().filter(|m| m.online == online);
        let n = candidates().count();
        if n == 0 {
            return None;
        }
        if strategy == SharedStrategy::Sticky {
            if let Some(m) = self.sticky.and_then(|id| candidates().find(|m| m.id == id)) {
                return Some((m.id, m.subscription));
            }
        }
        let m = candidates()
            .nth(slot as usize % n)
            .expect("slot below the count");
        let chosen = (m.id, m.subscription);
        if strategy == SharedStrategy::Sticky && online {
            self.sticky = Some(chosen.0);
        }
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmq_codec::{QoS, SubscriptionOptions};
    use std::collections::BTreeMap;

    fn picks(
        g: &mut RemoteGroup,
        strategy: SharedStrategy,
        here: (u32, bool),
        n: u64,
    ) -> BTreeMap<Option<NodeChoice>, u64> {
        let mut got = BTreeMap::new();
        for i in 0..n {
            let hash = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            *got.entry(g.pick(strategy, hash, here.0, here.1))
                .or_default() += 1;
        }
        got
    }

    #[test]
    fn a_group_across_nodes_is_balanced_by_members_online() {
        let mut g = RemoteGroup::new(ByteStr::from_static("$share/g/t"));
        assert_eq!(g.pick(SharedStrategy::RoundRobin, 0, 0, false), None);
        g.add_node(7);
        g.add_node(2);
        g.set_weight(2, 1);
        g.set_weight(7, 4);
        g.set_weight(9, 5); // no route: ignored
                            // Round robin: exactly by weight, 3 here, 1 on node 2, 4 on node 7.
        let rr = picks(&mut g, SharedStrategy::RoundRobin, (3, true), 800);
        assert_eq!(rr[&Some(NodeChoice::Here)], 300);
        assert_eq!(rr[&Some(NodeChoice::Node(2))], 100);
        assert_eq!(rr[&Some(NodeChoice::Node(7))], 400);
        // Hashing spreads by weight too (within 20 % of the share here).
        let h = picks(&mut g, SharedStrategy::HashTopic, (3, true), 8000);
        for (c, want) in [
            (NodeChoice::Here, 3000),
            (NodeChoice::Node(2), 1000),
            (NodeChoice::Node(7), 4000),
        ] {
            let got = h[&Some(c)];
            assert!(
                got.abs_diff(want) < want / 5,
                "{c:?}: {got} of 8000, want ~{want}"
            );
        }
        // The same hash, the same node.
        let a = g.pick(SharedStrategy::HashTopic, 12345, 3, true);
        assert_eq!(g.pick(SharedStrategy::HashTopic, 12345, 3, true), a);
        // Sticky stays on its first choice while it has members online.
        let first = g.pick(SharedStrategy::Sticky, 0, 3, true).unwrap();
        let st = picks(&mut g, SharedStrategy::Sticky, (3, true), 50);
        assert_eq!(st.get(&Some(first)), Some(&50));
        // Nobody online: this node's offline members, else another node's route.
        let mut g = RemoteGroup::new(ByteStr::from_static("$share/g/t"));
        g.add_node(4);
        assert_eq!(
            g.pick(SharedStrategy::RoundRobin, 1, 0, true),
            Some(NodeChoice::Here)
        );
        assert_eq!(
            g.pick(SharedStrategy::RoundRobin, 1, 0, false),
            Some(NodeChoice::Node(4))
        );
        // A node online elsewhere beats offline members here.
        g.set_weight(4, 1);
        assert_eq!(
            g.pick(SharedStrategy::RoundRobin, 1, 0, true),
            Some(NodeChoice::Node(4))
        );
        g.remove_node(4);
        assert!(g.is_empty());
        assert_eq!(g.pick(SharedStrategy::RoundRobin, 1, 0, false), None);
    }

    fn sub(qos: QoS) -> Subscription {
        Subscription {
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
            id: None,
        }
    }

    fn counts(online: u32, offline: u32) -> MemberCounts {
        MemberCounts { online, offline }
    }

    #[test]
    fn parses_share_and_queue_filters() {
        let p = |f| parse_shared(f, 128);
        assert_eq!(p("a/b"), None);
        assert_eq!(p("$SYS/#"), None);
        assert_eq!(p("$shared/g/a"), None);
        assert_eq!(
            p("$share/g/a/+"),
            Some(Ok(SharedFilter {
                group: "g",
                filter: "a/+"
            }))
        );
        assert_eq!(
            p("$share/g/#"),
            Some(Ok(SharedFilter {
                group: "g",
                filter: "#"
            }))
        );
        assert_eq!(
            p("$queue/a/b"),
            Some(Ok(SharedFilter {
                group: "$queue",
                filter: "a/b"
            }))
        );
        assert_eq!(
            p("$share/g//"),
            Some(Ok(SharedFilter {
                group: "g",
                filter: "/"
            }))
        );
    }

    #[test]
    fn refuses_bad_share_names_and_filters() {
        let p = |f| parse_shared(f, 3);
        assert_eq!(p("$share//a"), Some(Err(SharedFilterError::ShareName)));
        assert_eq!(p("$share/g+/a"), Some(Err(SharedFilterError::ShareName)));
        assert_eq!(p("$share/#/a"), Some(Err(SharedFilterError::ShareName)));
        assert_eq!(p("$share/+/a"), Some(Err(SharedFilterError::ShareName)));
        let empty = Some(Err(SharedFilterError::Filter(TopicError::Empty)));
        assert_eq!(p("$share/g/"), empty);
        assert_eq!(p("$share/g"), empty);
        assert_eq!(p("$share/"), empty);
        assert_eq!(p("$queue/"), empty);
        assert_eq!(
            p("$share/g/a/#/b"),
            Some(Err(SharedFilterError::Filter(TopicError::InvalidWildcard)))
        );
        assert_eq!(
            p("$share/g/a/b/c/d"),
            Some(Err(SharedFilterError::Filter(TopicError::TooManyLevels {
                max: 3
            })))
        );
    }

    #[test]
    fn key_of_queue_equals_share_of_the_queue_group() {
        let k = |f: &str| SharedKey::of(&ByteStr::from(f));
        let q = k("$queue/a/+").unwrap();
        assert_eq!((q.group.as_str(), q.filter.as_str()), ("$queue", "a/+"));
        assert_eq!(k("$share/$queue/a/+"), Some(q));
        let s = k("$share/grp/x").unwrap();
        assert_eq!((s.group.as_str(), s.filter.as_str()), ("grp", "x"));
        assert_eq!(k("x/y"), None);
        assert_eq!(k("$share/g/"), None);
    }

    #[test]
    fn strategy_names_round_trip() {
        for s in SharedStrategy::ALL {
            assert_eq!(s.as_str().parse::<SharedStrategy>(), Ok(s));
        }
        assert_eq!(SharedStrategy::default(), SharedStrategy::RoundRobin);
        let err = "random".parse::<SharedStrategy>().unwrap_err();
        assert!(
            err.contains("round_robin, sticky, hash_topic, hash_clientid"),
            "{err}"
        );
    }

    /// Places `n` messages through a route and the local groups behind it, like the shards do.
    fn place(
        route: &mut GroupRoute,
        locals: &mut BTreeMap<usize, LocalGroup>,
        strategy: SharedStrategy,
        hashes: impl Iterator<Item = u64>,
    ) -> Vec<(usize, u32)> {
        hashes
            .map(|h| {
                let p = route.pick(strategy, h, 0).expect("a member");
                let (id, _) = locals
                    .get_mut(&p.shard)
                    .unwrap()
                    .pick(strategy, p.slot, p.online)
                    .expect("member on the picked shard");
                (p.shard, id)
            })
            .collect()
    }

    fn two_shards(
        online: [&[u32]; 2],
        offline: [&[u32]; 2],
    ) -> (GroupRoute, BTreeMap<usize, LocalGroup>) {
        let mut route = GroupRoute::new("g".into());
        let mut locals = BTreeMap::new();
        for shard in 0..2 {
            let mut g = LocalGroup::default();
            for &id in online[shard] {
                assert!(g.insert(id, sub(QoS::AtLeastOnce), true));
            }
            for &id in offline[shard] {
                assert!(g.insert(id, sub(QoS::AtLeastOnce), false));
            }
            route.set(shard, g.counts());
            locals.insert(shard, g);
        }
        (route, locals)
    }

    #[test]
    fn round_robin_visits_every_online_member_in_turn_across_shards() {
        let (mut route, mut locals) = two_shards([&[1, 2], &[7]], [&[3], &[]]);
        let got = place(&mut route, &mut locals, SharedStrategy::RoundRobin, 0..9);
        let mut per: BTreeMap<(usize, u32), usize> = BTreeMap::new();
        for g in &got {
            *per.entry(*g).or_default() += 1;
        }
        assert_eq!(
            per,
            BTreeMap::from([((0, 1), 3), ((0, 2), 3), ((1, 7), 3)]),
            "offline member 3 gets nothing while others are online: {got:?}"
        );
    }

    #[test]
    fn offline_members_are_chosen_only_when_none_is_online() {
        let (mut route, mut locals) = two_shards([&[], &[]], [&[3], &[4]]);
        let got = place(&mut route, &mut locals, SharedStrategy::RoundRobin, 0..4);
        assert_eq!(got, vec![(0, 3), (1, 4), (0, 3), (1, 4)]);
        route.set(1, counts(1, 1));
        locals
            .get_mut(&1)
            .unwrap()
            .insert(5, sub(QoS::AtMostOnce), true);
        let got = place(&mut route, &mut locals, SharedStrategy::RoundRobin, 0..3);
        assert_eq!(got, vec![(1, 5); 3]);
    }

    #[test]
    fn hash_strategies_keep_a_key_on_one_member() {
        for strategy in [SharedStrategy::HashTopic, SharedStrategy::HashClientId] {
            let (mut route, mut locals) = two_shards([&[1, 2, 3], &[8, 9]], [&[], &[]]);
            let first = place(&mut route, &mut locals, strategy, 0..50);
            let again = place(&mut route, &mut locals, strategy, 0..50);
            assert_eq!(first, again, "{strategy}: same hash, same member");
            let members: std::collections::BTreeSet<_> = first.iter().collect();
            assert_eq!(
                members.len(),
                5,
                "{strategy}: hashes spread over every member"
            );
            let one = place(
                &mut route,
                &mut locals,
                strategy,
                std::iter::repeat_n(12345, 10),
            );
            assert!(one.windows(2).all(|w| w[0] == w[1]), "{strategy}: {one:?}");
        }
    }

    #[test]
    fn sticky_keeps_its_member_until_it_goes_offline() {
        let (mut route, mut locals) = two_shards([&[1, 2], &[7]], [&[], &[]]);
        let got = place(&mut route, &mut locals, SharedStrategy::Sticky, 0..5);
        assert!(got.windows(2).all(|w| w[0] == w[1]), "{got:?}");
        let (shard, id) = got[0];
        // The sticky member goes offline: another one takes over and keeps it.
        let local = locals.get_mut(&shard).unwrap();
        assert!(local.set_online(id, false));
        route.set(shard, local.counts());
        let next = place(&mut route, &mut locals, SharedStrategy::Sticky, 0..5);
        assert!(next.windows(2).all(|w| w[0] == w[1]), "{next:?}");
        assert_ne!(next[0], (shard, id));
    }

    #[test]
    fn excluded_shards_are_never_picked_and_an_empty_route_picks_none() {
        let (mut route, _) = two_shards([&[1], &[2]], [&[], &[]]);
        for _ in 0..4 {
            let p = route.pick(SharedStrategy::RoundRobin, 0, 1 << 0).unwrap();
            assert_eq!((p.shard, p.online), (1, true));
        }
        assert_eq!(route.pick(SharedStrategy::RoundRobin, 0, 0b11), None);
        route.set(0, MemberCounts::default());
        route.set(1, MemberCounts::default());
        assert!(route.is_empty());
        assert_eq!(route.pick(SharedStrategy::HashTopic, 7, 0), None);
    }

    #[test]
    fn local_group_membership_and_counts() {
        let mut g = LocalGroup::default();
        assert!(g.insert(1, sub(QoS::AtMostOnce), true));
        assert!(
            !g.insert(1, sub(QoS::AtLeastOnce), true),
            "options replaced"
        );
        assert!(g.insert(2, sub(QoS::AtLeastOnce), false));
        assert_eq!(g.counts(), counts(1, 1));
        assert_eq!(
            g.pick(SharedStrategy::RoundRobin, 5, true),
            Some((1, sub(QoS::AtLeastOnce)))
        );
        assert!(g.set_online(2, true));
        assert!(!g.set_online(2, true));
        assert!(!g.set_online(9, true));
        assert_eq!(g.counts(), counts(2, 0));
        assert!(g.remove(1));
        assert!(!g.remove(1));
        assert!(g.remove(2));
        assert!(g.is_empty());
        assert_eq!(g.pick(SharedStrategy::RoundRobin, 0, true), None);
    }
}
