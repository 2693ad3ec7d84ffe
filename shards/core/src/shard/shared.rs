//! The shard's side of shared subscriptions: its members of each group ([`LocalGroup`]), its
//! replica of every shard's member counts ([`GroupRoute`] per group, by filter), and placing each
//! message of a group with exactly one member on the node.
//!
//! A member joins when its session subscribes `$share/{group}/{filter}` (or `$queue/{filter}`)
//! and leaves when it unsubscribes, when its session ends, or when it moves to another shard
//! (takeover). Every change of a group's counts on a shard is sent to every shard as
//! `SharedRoute`, like `RouteAdd`, and synced before the SUBACK (or the CONNACK of a resumed
//! session) the same way. A member that ends before its client has the group's QoS 1/2 messages
//! hands them back (`SharedRedispatch`), and they are placed again with the members left.

use super::{SessionKey, ShardCore};
use crate::bus::{ShardId, ShardMsg, ShardSet, SharedPublish};
use crate::link::ToCluster;
use shardmq_broker::session::{Session, Subscription};
use shardmq_broker::shared::{GroupRoute, MemberCounts, Pick, SharedKey, SharedStrategy};
use shardmq_broker::Message;
use shardmq_codec::ByteStr;
use smallvec::SmallVec;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, trace};

/// The shared groups of one filter in a shard's replica.
pub struct FilterGroups {
    filter: ByteStr,
    groups: SmallVec<[GroupRoute; 1]>,
}

impl FilterGroups {
    /// `group`'s members online on this node, and whether it has any (online or offline).
    pub(super) fn members_here(&self, group: &ByteStr) -> (u32, bool) {
        self.groups
            .iter()
            .find(|g| g.group() == group && !g.is_empty())
            .map_or((0, false), |g| (g.online(), true))
    }
}

/// The hash a message of a shared group is placed by, for `strategy`.
pub(super) fn shared_hash(
    strategy: SharedStrategy,
    hasher: &ahash::RandomState,
    msg: &Message,
) -> u64 {
    match strategy {
        SharedStrategy::HashTopic => hasher.hash_one(msg.topic.as_str()),
        SharedStrategy::HashClientId => hasher.hash_one(msg.publisher.as_str()),
        SharedStrategy::RoundRobin | SharedStrategy::Sticky => 0,
    }
}

impl ShardCore {
    /// Session `skey` joins the group of `key` with `sub`. True if the group's members changed
    /// (the caller then announces them, with a sync token if a SUBACK waits).
    pub(super) fn shared_join(
        &mut self,
        key: SharedKey,
        skey: SessionKey,
        sub: Subscription,
    ) -> bool {
        let online = self.sessions.get(skey).is_some_and(|s| s.conn.is_some());
        let mut created = None;
        let (_, group) = self.shared_local.entry(key).or_insert_with_key(|k| {
            let tag = ByteStr::from(format!("$share/{}/{}", k.group, k.filter));
            created = Some(tag.clone());
            (tag, Default::default())
        });
        let changed = group.insert(skey as u32, sub, online);
        // The node's cluster route for the group: this shard has members now.
        if let Some(share) = created {
            let shard = self.id;
            self.tell_cluster(ToCluster::RouteAdd {
                filter: share,
                shard,
                sync: None,
            });
        }
        changed
    }

    /// Session `skey` leaves the group of `key`; the other shards learn the new counts.
    pub(super) fn shared_leave(&mut self, key: SharedKey, skey: SessionKey) {
        let left = self
            .shared_local
            .get_mut(&key)
            .is_some_and(|(_, g)| g.remove(skey as u32));
        if left {
            self.announce_shared(key, None);
        }
    }

    /// A session's connection came or went: its groups count it online or offline.
    pub(super) fn shared_set_online(&mut self, skey: SessionKey, online: bool) {
        if self.shared_local.is_empty() {
            return;
        }
        let Some(slot) = self.sessions.get(skey) else {
            return;
        };
        let keys: SmallVec<[SharedKey; 2]> = slot
            .session
            .subscriptions()
            .filter_map(|(f, _)| SharedKey::of(f))
            .collect();
        for key in keys {
            let changed = self
                .shared_local
                .get_mut(&key)
                .is_some_and(|(_, g)| g.set_online(skey as u32, online));
            if changed {
                self.announce_shared(key, None);
            }
        }
    }

    /// Tells every shard this shard's members of `key` (applied here at once, so a message
    /// placed next already sees them); `sync` as for `RouteAdd`.
    pub(super) fn announce_shared(&mut self, key: SharedKey, sync: Option<u64>) {
        let shard = self.id;
        let counts = match self.shared_local.get(&key) {
            Some((_, g)) if g.is_empty() => {
                if let Some((share, _)) = self.shared_local.remove(&key) {
                    self.tell_cluster(ToCluster::ShareOnline {
                        share: share.clone(),
                        shard,
                        online: 0,
                    });
                    self.tell_cluster(ToCluster::RouteDel {
                        filter: share,
                        shard,
                    });
                }
                MemberCounts::default()
            }
            Some((share, g)) => {
                let counts = g.counts();
                if self.cluster.is_some() {
                    let share = share.clone();
                    self.tell_cluster(ToCluster::ShareOnline {
                        share,
                        shard,
                        online: counts.online,
                    });
                }
                counts
            }
            None => MemberCounts::default(),
        };
        let me = self.id;
        self.apply_shared_route(&key, me, counts);
        for to in (0..self.nshards).filter(|&to| to != me) {
            self.send(
                to,
                ShardMsg::SharedRoute {
                    key: Box::new(key.clone()),
                    shard: me,
                    counts,
                    sync,
                },
            );
        }
    }

    /// Records `shard`'s members of `key` in this shard's replica.
    pub(super) fn apply_shared_route(
        &mut self,
        key: &SharedKey,
        shard: ShardId,
        counts: MemberCounts,
    ) {
        let entry = self
            .shared_routes
            .entry_or_insert_with(&key.filter, || FilterGroups {
                filter: key.filter.clone(),
                groups: SmallVec::new(),
            });
        match entry.groups.iter().position(|g| *g.group() == key.group) {
            Some(i) => {
                entry.groups[i].set(shard, counts);
                if entry.groups[i].is_empty() {
                    entry.groups.swap_remove(i);
                }
            }
            None if !counts.is_empty() => {
                let mut g = GroupRoute::new(key.group.clone());
                g.set(shard, counts);
                entry.groups.push(g);
            }
            None => {}
        }
        if entry.groups.is_empty() {
            self.shared_routes.remove(&key.filter);
        }
    }

    /// A session ends: the group messages its client does not have go back to their groups.
    pub(super) fn redispatch_shared(&mut self, session: &mut Session) {
        let me = self.id;
        for (tag, msg) in session.take_shared_pending() {
            let Some(key) = SharedKey::of(&tag) else {
                continue;
            };
            trace!(shard = me, client_id = %session.client_id(), group = %key.group, "redispatching");
            // Placed after the current step, once the session has left its groups.
            self.send(
                me,
                ShardMsg::SharedRedispatch {
                    key: Box::new(key),
                    msg,
                },
            );
        }
    }

    /// A published message: one copy for each shared group whose filter matches, but for the
    /// groups in `elsewhere` (whose copy went to another node).
    pub(super) fn route_shared(
        &mut self,
        now: Instant,
        msg: &Arc<Message>,
        elsewhere: &[SharedKey],
    ) {
        let mut keys: SmallVec<[SharedKey; 2]> = SmallVec::new();
        self.shared_routes.for_each_match(&msg.topic, |fg| {
            keys.extend(
                fg.groups
                    .iter()
                    .map(|g| SharedKey {
                        group: g.group().clone(),
                        filter: fg.filter.clone(),
                    })
                    .filter(|k| !elsewhere.contains(k)),
            )
        });
        for key in keys {
            self.shared_dispatch(now, key, msg.clone());
        }
    }

    /// Places one message of the group `key`: with a member here, or on the shard the strategy
    /// picks. Dropped (and counted) when the group has no member left.
    pub(super) fn shared_dispatch(&mut self, now: Instant, key: SharedKey, msg: Arc<Message>) {
        let hash = shared_hash(self.cfg.shared_strategy, &self.hasher, &msg);
        let sp = SharedPublish {
            key,
            msg,
            slot: 0,
            hash,
            tried: ShardSet::EMPTY,
        };
        match self.shared_pick(&sp.key, hash, ShardSet::EMPTY) {
            Some(p) if p.shard == self.id => {
                self.shared_deliver(now, SharedPublish { slot: p.slot, ..sp })
            }
            Some(p) => self.send(
                p.shard,
                ShardMsg::SharedPublish(Box::new(SharedPublish { slot: p.slot, ..sp })),
            ),
            None => self.shared_drop(&sp),
        }
    }

    /// A message placed with this shard: an online member here takes it; else an online
    /// member elsewhere; else an offline member here (queued), else one elsewhere.
    pub(super) fn shared_deliver(&mut self, now: Instant, sp: SharedPublish) {
        if let Some((tag, member)) = self.shared_member(&sp.key, sp.slot, true) {
            return self.deliver_shared_to(now, member, tag, &sp.msg);
        }
        let tried = sp.tried.with(self.id);
        let elsewhere = self.shared_pick(&sp.key, sp.hash, tried);
        if !elsewhere.is_some_and(|p| p.online) {
            if let Some((tag, member)) = self.shared_member(&sp.key, sp.slot, false) {
                return self.deliver_shared_to(now, member, tag, &sp.msg);
            }
        }
        match elsewhere {
            Some(p) => self.send(
                p.shard,
                ShardMsg::SharedPublish(Box::new(SharedPublish {
                    slot: p.slot,
                    tried,
                    ..sp
                })),
            ),
            None => self.shared_drop(&sp),
        }
    }

    fn shared_drop(&mut self, sp: &SharedPublish) {
        debug!(shard = self.id, group = %sp.key.group, filter = %sp.key.filter, topic = %sp.msg.topic, "shared group has no member; message dropped");
        self.stats.messages_dropped += 1;
    }

    /// A member of `key` on this shard, online or offline, for `slot`.
    fn shared_member(
        &mut self,
        key: &SharedKey,
        slot: u32,
        online: bool,
    ) -> Option<(ByteStr, (u32, Subscription))> {
        let strategy = self.cfg.shared_strategy;
        let (tag, group) = self.shared_local.get_mut(key)?;
        let member = group.pick(strategy, slot, online)?;
        Some((tag.clone(), member))
    }

    /// The shard for one message of `key`, never one in `tried`.
    fn shared_pick(&mut self, key: &SharedKey, hash: u64, tried: ShardSet) -> Option<Pick> {
        let strategy = self.cfg.shared_strategy;
        let exclude = tried.iter().fold(0u64, |m, s| m | 1 << s);
        self.shared_routes
            .get_mut(&key.filter)?
            .groups
            .iter_mut()
            .find(|g| *g.group() == key.group)?
            .pick(strategy, hash, exclude)
    }

    fn deliver_shared_to(
        &mut self,
        now: Instant,
        (skey, sub): (u32, Subscription),
        tag: ByteStr,
        msg: &Arc<Message>,
    ) {
        let ids: SmallVec<[u32; 1]> = sub.id.into_iter().collect();
        let qos = msg.qos.min(sub.options.qos);
        let retain = sub.options.retain_as_published && msg.retain;
        self.deliver_to(now, skey, msg, qos, retain, &ids, Some(&tag));
    }
}
