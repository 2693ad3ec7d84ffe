//! Routing: the actions a session asks for (subscribe, unsubscribe, publish), the local
//! subscription trie, the route replica and its sync waits (SUBACK after every shard
//! acknowledged), and delivery of a publish on this shard and to the shards that route it.

use super::*;

impl ShardCore {
    pub(super) fn run_actions(
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
                    let inserted = self.trie_insert(&filter, skey, subscription);
                    // Not new here, but its announcement (another session's SUBSCRIBE) may
                    // still be on its way: announce again, and wait like the first did.
                    let new_route = inserted || self.route_unsettled(&filter);
                    // The SUBACK waits for every other shard and, in a cluster, for the
                    // node's route to commit (read-your-writes: a publish anywhere after the
                    // SUBACK reaches this subscriber).
                    let clustered = inserted && self.cluster.is_some() && !is_shared(&filter);
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
                        seq: self.route_seq,
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
    pub(super) fn finish_subscribe(&mut self, now: Instant, rs: RouteSync) {
        let Some(conn) = self.conns.get_mut(rs.conn) else {
            return;
        };
        if conn.id != rs.conn_id || conn.session() != Some(rs.session) {
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
            let walk = RetainedWalk {
                conn: rs.conn,
                conn_id: rs.conn_id,
                session: rs.session,
                filter,
                sub,
                cursor: None,
            };
            // The first step at once (a small store is done here); the rest over later turns.
            if let Some(rest) = self.retained_step(now, walk, RETAINED_STEP_NODES) {
                self.retained_walks.push_back(rest);
            }
        }
    }

    /// One step of a retained delivery: at most `budget` nodes of the retained replica, the
    /// matches delivered to the session. The walk back if it is not done and its connection
    /// still holds the session.
    pub(super) fn retained_step(
        &mut self,
        now: Instant,
        mut walk: RetainedWalk,
        budget: usize,
    ) -> Option<RetainedWalk> {
        let alive = self
            .conns
            .get(walk.conn)
            .is_some_and(|c| c.id == walk.conn_id && c.session() == Some(walk.session));
        if !alive {
            return None;
        }
        let mut found = Vec::new();
        let next =
            self.retained
                .walk_matches(&walk.filter, walk.cursor.as_ref(), budget, |_, m| {
                    found.push(m.clone())
                });
        let ids: SmallVec<[u32; 1]> = walk.sub.id.into_iter().collect();
        for msg in found {
            let qos = msg.qos.min(walk.sub.options.qos);
            self.deliver_to(now, walk.session as u32, &msg, qos, true, &ids, None);
        }
        walk.cursor = Some(next?);
        Some(walk)
    }

    /// Goes on with the retained deliveries of wildcard subscribes over a large store: at most
    /// [`RETAINED_STEP_NODES`] nodes in all per call (the timer task calls it each turn while
    /// some are left: [`poll_timeout`](Self::poll_timeout) is due at once).
    pub(super) fn retained_walks_step(&mut self, now: Instant) {
        if let Some((request, cursor)) = self.retained_dumps.pop_front() {
            if let Some(next) = self.retained_dump_step(request, Some(&cursor), RETAINED_STEP_NODES)
            {
                self.retained_dumps.push_front((request, next));
            }
        }
        let mut budget = RETAINED_STEP_NODES;
        while budget > 0 {
            let Some(walk) = self.retained_walks.pop_front() else {
                break;
            };
            let step = budget.clamp(1, RETAINED_STEP_NODES / 4);
            budget -= step;
            if let Some(rest) = self.retained_step(now, walk, step) {
                self.retained_walks.push_back(rest);
            }
        }
    }

    /// Adds a subscriber to the local trie. True if the filter is new on this shard.
    /// A shared subscription joins its group instead: true if the group's members changed.
    pub(super) fn trie_insert(
        &mut self,
        filter: &ByteStr,
        skey: SessionKey,
        sub: Subscription,
    ) -> bool {
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
    pub(super) fn trie_remove(&mut self, filter: &ByteStr, skey: SessionKey) {
        if let Some(key) = SharedKey::of(filter) {
            return self.shared_leave(key, skey);
        }
        let Some(set) = self.subs.get_mut(filter) else {
            return;
        };
        let before = set.len();
        set.retain(|(k, _)| *k != skey as u32);
        let removed = (before - set.len()) as u64;
        assert!(
            self.stats.subscriptions >= removed,
            "subscriptions are counted"
        );
        self.stats.subscriptions -= removed;
        if set.is_empty() {
            self.subs.remove(filter);
            // A session that moved away still has its publishes forwarded from here.
            if !self.route_holds.contains_key(filter) {
                self.route_gone(filter);
            }
        }
    }

    /// `filter` has no subscriber here any more: tells every shard and the cluster.
    pub(super) fn route_gone(&mut self, filter: &ByteStr) {
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

    /// Whether the last announcement of `filter` from here may not be applied everywhere.
    pub(super) fn route_unsettled(&self, filter: &ByteStr) -> bool {
        self.nshards > 1
            && self
                .route_fresh
                .get(filter)
                .is_some_and(|&seq| seq > self.route_settled)
    }

    /// A sync round sent at `seq` came back from every shard.
    pub(super) fn route_round_done(&mut self, seq: u64) {
        self.route_settled = self.route_settled.max(seq);
        if self.route_fresh.len() > self.route_fresh_prune_at {
            let settled = self.route_settled;
            self.route_fresh.retain(|_, s| *s > settled);
            self.route_fresh_prune_at = (2 * self.route_fresh.len()).max(ROUTE_FRESH_PRUNE_MIN);
        }
    }

    /// Counts an announcement of `filter` (to every other shard).
    pub(super) fn route_announced(&mut self, filter: &ByteStr) {
        if self.nshards > 1 {
            self.route_seq += 1;
            self.route_fresh.insert(filter.clone(), self.route_seq);
        }
    }

    pub(super) fn announce_route(&mut self, filter: &ByteStr, sync: Option<u64>) {
        self.route_announced(filter);
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
            let elsewhere = self.forward(&msg);
            return self.route_here(now, msg, &elsewhere);
        }
        self.route_here(now, msg, &[]);
    }

    /// Routes a message on this node only: retained store, then every shard with a matching
    /// filter, then the shared groups but those in `elsewhere` (placed on another node).
    pub(super) fn route_here(&mut self, now: Instant, msg: Arc<Message>, elsewhere: &[SharedKey]) {
        self.route_plain(now, &msg);
        if !self.shared_routes.is_empty() {
            self.route_shared(now, &msg, elsewhere);
        }
    }

    /// Retained store and plain subscribers of this node (no shared groups).
    pub(super) fn route_plain(&mut self, now: Instant, msg: &Arc<Message>) {
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
        let me = self.id;
        self.handled[me] += 1;
        let stamp = Stamp {
            seq: self.handled[me],
            dest: targets.without(me),
        };
        for shard in targets.iter() {
            if shard == me {
                self.deliver_local(now, msg, me, stamp);
            } else {
                let msg = msg.clone();
                let m = if self.durable_sent(shard, msg.qos) {
                    ShardMsg::DurablePublish { msg, stamp }
                } else {
                    ShardMsg::Publish { msg, stamp }
                };
                self.send(shard, m);
            }
        }
    }

    /// Delivers a publish that `origin` routed here (stamped `stamp`) to this shard's
    /// subscribers, and forwards it for the sessions that moved away (`moves.rs`).
    pub(super) fn deliver_local(
        &mut self,
        now: Instant,
        msg: &Arc<Message>,
        origin: ShardId,
        stamp: Stamp,
    ) {
        if !self.forwarders.is_empty() {
            self.forward_moved(msg, origin, stamp);
        }
        self.deliver_matching(now, msg, None, Some((origin, stamp.seq)));
    }

    /// Delivers to this shard's subscribers (only to session `only`, if given): one copy per
    /// session, at the highest matching QoS, with every matching subscription identifier. A
    /// publish numbered `seq` by `origin` skips the sessions that had it before their move.
    pub(super) fn deliver_matching(
        &mut self,
        now: Instant,
        msg: &Arc<Message>,
        only: Option<u32>,
        from: Option<(ShardId, u64)>,
    ) {
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
            let skip = only.is_some_and(|o| o != skey)
                || from.is_some_and(|(origin, seq)| {
                    !self.moving_in.is_empty() && self.move_skips(skey, origin, seq)
                });
            if skip {
                i = j;
                continue;
            }
            // The publisher's own session matters only to a No Local subscription: the client
            // id comparison is skipped for the others.
            let own = matches[i..j].iter().any(|(_, sub)| sub.options.no_local)
                && self
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
                let (qos, retain) = (msg.qos.min(qos), rap && msg.retain);
                if from.is_none() || self.moving_in.is_empty() {
                    self.deliver_to(now, skey, msg, qos, retain, &ids, None);
                } else if let Some((msg, qos, retain, ids)) =
                    // A session in a move window takes forwarded copies first (`moves.rs`).
                    self.move_hold(now, skey, (msg.clone(), qos, retain, ids))
                {
                    self.deliver_to(now, skey, &msg, qos, retain, &ids, None);
                }
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

    /// One of the acknowledgements a SUBACK or CONNACK waits for (a shard's replica, or the
    /// cluster's commit of the route).
    pub(super) fn route_acked(&mut self, now: Instant, token: u64) {
        if let Some(rs) = self.route_syncs.get_mut(&token) {
            assert!(
                rs.remaining > 0,
                "a route sync waits for this acknowledgement"
            );
            rs.remaining -= 1;
            if rs.remaining == 0 {
                let rs = self.route_syncs.remove(&token).expect("present");
                self.route_round_done(rs.seq);
                self.finish_subscribe(now, rs);
            }
        } else if let Some(cs) = self.connect_syncs.get_mut(&token) {
            assert!(
                cs.remaining > 0,
                "a connect sync waits for this acknowledgement"
            );
            cs.remaining -= 1;
            if cs.remaining == 0 {
                let cs = self.connect_syncs.remove(&token).expect("present");
                self.route_round_done(cs.seq);
                self.finish_connect(now, cs);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmq_codec::{ConnectProperties, Decoder, Subscribe, SubscribeFilter};

    fn core(now: Instant) -> ShardCore {
        let limits = Limits {
            max_queued_messages: 100_000,
            max_write_buffer_bytes: 64 << 20,
            ..Limits::default()
        };
        super::super::test_core(now, Duration::from_secs(60), limits)
    }

    fn publishes(core: &mut ShardCore, key: ConnKey) -> usize {
        let mut out = core.conns[key].out.split();
        let mut decoder = Decoder::with_protocol(Protocol::V3_1_1, u32::MAX);
        let mut n = 0;
        while let Some(p) = decoder
            .decode(&mut out)
            .expect("the core writes valid packets")
        {
            n += usize::from(matches!(p, Packet::Publish(_)));
        }
        n
    }

    /// A wildcard subscribe over 20,000 retained topics: the first step delivers a bounded
    /// part, each later turn a bounded part more, and all arrive once.
    #[test]
    fn retained_delivery_of_a_wildcard_subscribe_is_spread_over_turns() {
        const TOPICS: usize = 20_000;
        let t0 = Instant::now();
        let mut c = core(t0);
        for i in 0..TOPICS {
            let topic = ByteStr::from(format!("r/{}/{i}", i % 100));
            c.retained
                .insert(&topic, super::super::test_message(&topic));
        }
        let (key, _) = c.open_conn(t0, None, crate::ListenerKind::Tcp, 1, 0);
        let connect = Connect {
            protocol: Protocol::V3_1_1,
            clean_start: true,
            keep_alive: 0,
            client_id: ByteStr::from("s"),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
        };
        c.on_packet(t0, key, Packet::Connect(Box::new(connect)));
        assert_eq!(c.conns[key].phase, Phase::Active);
        c.conns[key].out.clear();
        let subscribe = Subscribe {
            pkid: 1,
            filters: vec![SubscribeFilter {
                filter: ByteStr::from("r/#"),
                options: Default::default(),
            }],
            properties: Default::default(),
        };
        c.on_packet(t0, key, Packet::Subscribe(subscribe));
        let first = publishes(&mut c, key);
        assert!(
            first > 0 && first <= RETAINED_STEP_NODES,
            "first step: {first}"
        );
        assert!(
            c.poll_timeout().is_some_and(|t| t <= t0),
            "the rest is due at once"
        );
        let mut total = first;
        let mut turns = 0;
        while !c.retained_walks.is_empty() {
            c.handle_timeout(t0);
            let n = publishes(&mut c, key);
            assert!(
                n <= RETAINED_STEP_NODES,
                "a turn delivers at most its budget: {n}"
            );
            total += n;
            turns += 1;
            assert!(turns < 100, "the walk ends");
        }
        assert_eq!(total, TOPICS, "every retained message once");
        assert!(
            turns >= TOPICS / RETAINED_STEP_NODES,
            "spread over turns: {turns}"
        );
    }
}
