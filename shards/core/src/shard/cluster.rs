//! The shard's side of the cluster: the other nodes' routes, forwarding publishes to the
//! nodes that route them, and what the control plane says ([`FromCluster`]).

use super::shared::shared_hash;
use super::*;

impl ShardCore {
    /// Queues `msg` for the control plane and wakes the flusher.
    pub(super) fn tell_cluster(&mut self, msg: ToCluster) {
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

    /// Sends `msg` to the other nodes that route its topic (all of them if it is retained,
    /// so every node's retained store has it). `$SYS` topics stay on their node.
    ///
    /// Each shared group that other nodes have members of picks one node for the message,
    /// this one included, weighted by members online ([`RemoteGroup::pick`]). Returns the
    /// groups this node has members of whose message went to another node: this node's
    /// [`Self::route_shared`] skips them.
    pub(super) fn forward(&mut self, msg: &Arc<Message>) -> SmallVec<[SharedKey; 1]> {
        let mut elsewhere = SmallVec::new();
        let Some(c) = self.cluster.as_mut() else {
            return elsewhere;
        };
        if msg.topic.starts_with("$SYS/") {
            return elsewhere;
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
            // A shared group takes each message once in the cluster, on the node its pick
            // chooses (this one or another).
            let mut matched: SmallVec<[ByteStr; 2]> = SmallVec::new();
            c.remote_shared.for_each_match(&msg.topic, |groups| {
                matched.extend(groups.iter().map(|g| g.share().clone()))
            });
            let strategy = self.cfg.shared_strategy;
            let hash = shared_hash(strategy, &self.hasher, msg);
            for share in matched {
                let Some(key) = SharedKey::of(&share) else {
                    continue;
                };
                let (online, any) = self
                    .shared_routes
                    .get(&key.filter)
                    .map_or((0, false), |fg| fg.members_here(&key.group));
                let Some(group) = c
                    .remote_shared
                    .get_mut(&key.filter)
                    .and_then(|gs| gs.iter_mut().find(|g| *g.share() == share))
                else {
                    continue;
                };
                if let Some(NodeChoice::Node(node)) = group.pick(strategy, hash, online, any) {
                    if any {
                        elsewhere.push(key);
                    }
                    shared.push((node, share));
                }
            }
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
        elsewhere
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
                    match groups.iter_mut().find(|g| *g.share() == filter) {
                        Some(g) => {
                            g.add_node(node);
                        }
                        None => {
                            let mut g = RemoteGroup::new(filter);
                            g.add_node(node);
                            groups.push(g);
                        }
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
                    for g in groups.iter_mut().filter(|g| *g.share() == filter) {
                        g.remove_node(node);
                    }
                    groups.retain(|g| !g.is_empty());
                    if groups.is_empty() {
                        c.remote_shared.remove(&key.filter);
                    }
                }
            }
            FromCluster::ShareWeight {
                share,
                node,
                online,
            } => {
                if let Some(key) = SharedKey::of(&share) {
                    if let Some(groups) = c.remote_shared.get_mut(&key.filter) {
                        for g in groups.iter_mut().filter(|g| *g.share() == share) {
                            g.set_weight(node, online);
                        }
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
                // The first part at once (a small store is all of it); the rest over turns.
                if let Some(cursor) = self.retained_dump_step(request, None, RETAINED_STEP_NODES) {
                    self.retained_dumps.push_back((request, cursor));
                }
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
            FromCluster::SessionStale { client_id } => self.drop_stale(&client_id),
            FromCluster::SessionUnclaimed { client_id } => {
                if self.session_of(&client_id).is_some() {
                    self.tell_cluster(ToCluster::SessionSet { client_id });
                }
            }
            FromCluster::SessionFetched {
                client_id,
                token,
                image,
            } => self.session_fetched(now, client_id, token, image),
            FromCluster::SessionMoveOut { request, client_id } => {
                self.session_move_out(now, request, client_id)
            }
        }
    }

    /// One part of a retained dump: at most `budget` nodes of the replica from `cursor`, sent
    /// to the control plane. The cursor to go on from, if the dump is not done.
    pub(super) fn retained_dump_step(
        &mut self,
        request: u64,
        cursor: Option<&shardmq_broker::retain::WalkCursor>,
        budget: usize,
    ) -> Option<shardmq_broker::retain::WalkCursor> {
        let mut msgs = Vec::new();
        let next = self
            .retained
            .walk_all(cursor, budget, |_, m| msgs.push(m.clone()));
        self.tell_cluster(ToCluster::RetainedDump {
            request,
            msgs,
            done: next.is_none(),
        });
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retained_dump_comes_in_bounded_parts_and_holds_every_message_once() {
        const TOPICS: usize = 20_000;
        let t0 = Instant::now();
        let mut c = super::super::test_core(t0, Duration::from_secs(60), Limits::default());
        c.cluster = Some(Box::new(ClusterShard::new()));
        for i in 0..TOPICS {
            let topic = ByteStr::from(format!("d/{}/{i}", i % 50));
            let msg = super::super::test_message(&topic);
            c.retained.insert(&topic, msg);
        }
        c.handle_cluster(t0, FromCluster::DumpRetained { request: 7 });
        let mut topics = ahash::AHashSet::new();
        let mut parts = 0;
        let mut done = false;
        while !done {
            assert!(parts < 100, "the dump ends");
            if parts > 0 {
                c.handle_timeout(t0);
            }
            for out in c.take_cluster_out() {
                if let ToCluster::RetainedDump {
                    request,
                    msgs,
                    done: last,
                } = out
                {
                    assert_eq!(request, 7);
                    assert!(msgs.len() <= RETAINED_STEP_NODES, "a part is bounded");
                    for m in msgs {
                        assert!(topics.insert(m.topic.clone()), "{} twice", m.topic);
                    }
                    parts += 1;
                    done = last;
                }
            }
        }
        assert_eq!(topics.len(), TOPICS);
        assert!(parts >= TOPICS / RETAINED_STEP_NODES, "in parts: {parts}");
    }
}
