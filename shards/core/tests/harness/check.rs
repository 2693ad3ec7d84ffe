//! The properties, checked against what the clients saw (and, for the shards' own state, the
//! read-only accessors of `shard/inspect.rs`): at each SUBACK on its way out, at every quiet
//! point, and at the end of the run.

use crate::sim::{group_of_topic, matches, Property, Sub, World, FILTERS, GROUPS, TOPICS};
use shardmq_codec::{QoS, SubAck};
use shardmq_core::{Phase, ShardMsg};

impl World {
    /// Property 2, as a SUBACK leaves the core on link `l` (its connection still active):
    /// every shard's replica routes each granted filter to the subscriber's shard, and no
    /// RouteDel on its way from that shard (a session that just left it) is about to undo it.
    pub fn check_suback_routes(&mut self, l: usize, ack: &SubAck) {
        let link = &self.links[l];
        let Some((_, filters)) = link.pending_subs.iter().find(|(p, _)| *p == ack.pkid) else {
            return; // the client says so when it reads it
        };
        let shard = link.shard;
        let granted: Vec<usize> = filters
            .iter()
            .zip(&ack.reasons)
            .filter(|(_, reason)| !reason.is_error())
            .map(|(&(f, _), _)| f)
            .collect();
        for f in granted {
            self.stats.count(Property::SubackAfterRoutes);
            for s in self.unrouted(FILTERS[f], shard) {
                violate!(
                    self,
                    Property::SubackAfterRoutes,
                    "SUBACK {} for {} leaves core {shard} to {} (link {l}) while core {s}'s replica does not route it there (or a RouteDel from core {shard} is on its way)",
                    ack.pkid,
                    FILTERS[f],
                    self.clients[self.links[l].client].id
                );
            }
        }
    }

    /// Property 2 for a resumed session, as its CONNACK (Session Present) leaves the core on
    /// link `l`: every replica routes the subscriptions the session brought to its shard.
    pub fn check_connack_routes(&mut self, l: usize) {
        let (shard, c) = (self.links[l].shard, self.links[l].client);
        let id = self.clients[c].id.clone();
        let Some(filters) = self.cores[shard].session_filters(&id) else {
            violate!(
                self,
                Property::OneSession,
                "core {shard} CONNACKs {id}'s resumed session (link {l}) without holding it"
            );
            return;
        };
        for filter in filters {
            self.stats.count(Property::SubackAfterRoutes);
            for s in self.unrouted(&filter, shard) {
                violate!(
                    self,
                    Property::SubackAfterRoutes,
                    "CONNACK of {id}'s resumed session leaves core {shard} (link {l}) while core {s}'s replica does not route its {filter} there (or a RouteDel from core {shard} is on its way)"
                );
            }
        }
    }

    /// The shards whose replica does not route `filter` to `shard`, or will not once what
    /// `shard` sent them arrives (a RouteDel on its way, from a session that just left
    /// `shard`; a RouteAdd behind it comes too late).
    fn unrouted(&self, filter: &str, shard: usize) -> Vec<usize> {
        let shared = filter.starts_with("$share/");
        (0..self.nshards)
            .filter(|&s| {
                let leaving = !shared
                    && self.mesh_from_to(shard, s).any(|msg| {
                        matches!(msg, ShardMsg::RouteDel { filter: f, shard: by }
                            if *by == shard && f.as_str() == filter)
                    });
                !self.cores[s].routes_contain(filter, shard) || leaving
            })
            .collect()
    }

    /// What must hold whenever nothing is in flight: property 1, property 3 for connected
    /// subscribers, property 4 for the window that just closed.
    pub fn check_quiet(&mut self) {
        self.check_one_session();
        self.check_delivered_while_connected();
        self.check_shared_window();
    }

    /// Starts a new window between quiet points: what the groups look like now.
    pub fn snapshot_quiet(&mut self) {
        self.quiet += 1;
        self.epoch_at_quiet = self.group_epoch;
        for (g, &f) in GROUPS.iter().enumerate() {
            self.member_at_quiet[g] = (0..self.clients.len()).any(|c| {
                self.active_link(c).is_some_and(|l| {
                    matches!(
                        self.lineages[self.links[l].lineage].filters[f],
                        Sub::Active { .. }
                    )
                })
            });
        }
    }

    /// Property 1: one session per client id, where the registry says, attached to the
    /// client's one live connection; every claim answered (a race leaves exactly one).
    fn check_one_session(&mut self) {
        for s in 0..self.nshards {
            let pending = self.cores[s].in_progress();
            if pending != 0 {
                violate!(
                    self,
                    Property::RaceResolves,
                    "quiet, yet core {s} has {pending} claims, syncs or takeovers in progress"
                );
            }
        }
        for c in 0..self.clients.len() {
            self.stats.count(Property::OneSession);
            self.stats.count(Property::RaceResolves);
            let id = self.clients[c].id.clone();
            let mut sessions = Vec::new();
            let mut claims = 0;
            for (s, core) in self.cores.iter().enumerate() {
                claims += core.claims_in_progress(&id);
                for (cid, conn) in core.sessions_view() {
                    if cid == id {
                        sessions.push((s, conn));
                    }
                }
            }
            if sessions.len() > 1 {
                violate!(
                    self,
                    Property::OneSession,
                    "{id} has {} sessions: {sessions:?}",
                    sessions.len()
                );
            }
            for &(s, conn) in &sessions {
                let Some((key, _)) = conn else { continue };
                let own = self
                    .links
                    .iter()
                    .any(|k| k.open && k.shard == s && k.key == key && k.client == c);
                if !own {
                    violate!(
                        self,
                        Property::OneSession,
                        "{id}'s session on core {s} is attached to conn {key}, not a connection of {id}"
                    );
                }
            }
            let mut active = Vec::new();
            for l in 0..self.links.len() {
                let link = &self.links[l];
                if link.client != c || !link.open {
                    continue;
                }
                match self.cores[link.shard].conns[link.key].phase {
                    Phase::Active => active.push(l),
                    Phase::Closing => {}
                    other => violate!(
                        self,
                        Property::RaceResolves,
                        "{id}: link {l} on core {} still {other:?} once quiet",
                        link.shard
                    ),
                }
            }
            if active.len() > 1 {
                violate!(
                    self,
                    Property::OneSession,
                    "{id} has {} active connections: links {active:?}",
                    active.len()
                );
            }
            let wanted = self.clients[c].wanted.clone();
            if wanted.len() > 1 {
                violate!(
                    self,
                    Property::RaceResolves,
                    "{id}'s takeover race left {} connections alive: links {wanted:?}",
                    wanted.len()
                );
            }
            if claims > 0 {
                // The registry and the client's connections wait on the claim; RaceResolves
                // says that it never lands.
                continue;
            }
            let owner = self.cores[0].registry_owner(&id);
            let registered = self.cores[owner].registry_shard(&id);
            let held = sessions.first().map(|&(s, _)| s);
            if registered != held {
                violate!(
                    self,
                    Property::OneSession,
                    "{id}: registry on core {owner} names {registered:?}, the session is on {held:?}"
                );
            }
            match wanted[..] {
                [] => {
                    if !active.is_empty() {
                        violate!(
                            self,
                            Property::OneSession,
                            "{id} has no connection of its own, yet link {active:?} is active"
                        );
                    }
                    if !self.clients[c].persistent && !sessions.is_empty() {
                        violate!(
                            self,
                            Property::OneSession,
                            "{id} (Clean Start, expiry 0) is away, yet a session lives on core {held:?}"
                        );
                    }
                    let lineage = self.clients[c].lineage;
                    let kept = lineage.is_some_and(|lg| {
                        self.lineages[lg].persistent && self.lineages[lg].server_session
                    });
                    if kept && sessions.is_empty() {
                        violate!(
                            self,
                            Property::SessionKept,
                            "{id}'s persistent session is gone while it is away"
                        );
                    }
                }
                [l] => {
                    let link = &self.links[l];
                    let attached = sessions.iter().any(|&(s, conn)| {
                        s == link.shard && conn == Some((link.key, Phase::Active))
                    });
                    if link.connected_at.is_none() || !active.contains(&l) || !attached {
                        violate!(
                            self,
                            Property::OneSession,
                            "{id}'s live link {l} (core {}): connected {:?}, active links {active:?}, sessions {sessions:?}",
                            link.shard,
                            link.connected_at
                        );
                    }
                }
                _ => {}
            }
        }
    }

    /// Whether lineage `lg` holds a subscription matching `topic` continuously since before
    /// step `t`; the highest QoS granted among them.
    fn subscribed_since(&self, lg: usize, topic: usize, t: u64) -> Option<QoS> {
        let mut best = None;
        for (f, sub) in self.lineages[lg].filters.iter().enumerate() {
            if let Sub::Active { since, qos } = *sub {
                if since < t && matches(FILTERS[f], TOPICS[topic]) {
                    best = best.max(Some(qos));
                }
            }
        }
        best
    }

    /// Property 3, connected subscribers: a plain message sent after a client's SUBACK, while
    /// the connection it has now was up, has reached that session.
    fn check_delivered_while_connected(&mut self) {
        let mut missed = Vec::new();
        for c in 0..self.clients.len() {
            let Some(l) = self.active_link(c) else {
                continue;
            };
            let link = &self.links[l];
            let (lg, up_since) = (link.lineage, link.connected_at.expect("active: connected"));
            for (m, msg) in self.msgs.iter().enumerate() {
                let Some(t) = msg.sent else { continue };
                if up_since >= t || group_of_topic(msg.topic).is_some() {
                    continue;
                }
                if self.subscribed_since(lg, msg.topic, t).is_none() {
                    continue;
                }
                self.stats.checked[Property::DeliveredWhileConnected as usize] += 1;
                if !msg.deliveries.iter().any(|d| d.lineage == lg) {
                    missed.push((c, l, m));
                }
            }
        }
        for (c, l, m) in missed {
            violate!(
                self,
                Property::DeliveredWhileConnected,
                "m{m} ({} {:?}, sent at step {:?} by {}) never reached {} (link {l}, connected at {:?}, subscribed {:?})",
                TOPICS[self.msgs[m].topic],
                self.msgs[m].qos,
                self.msgs[m].sent,
                self.clients[self.msgs[m].publisher].id,
                self.clients[c].id,
                self.links[l].connected_at,
                self.lineages[self.links[l].lineage].filters
            );
        }
    }

    /// Property 4 for the window that just closed: where nothing touched a group's members
    /// and it had a connected member, each of its messages reached exactly one member.
    fn check_shared_window(&mut self) {
        let window = self.quiet;
        let mut wrong = Vec::new();
        for (m, msg) in self.msgs.iter().enumerate() {
            let Some(g) = group_of_topic(msg.topic) else {
                continue;
            };
            if msg.sent.is_none() || msg.window != window {
                continue;
            }
            if self.group_epoch[g] != self.epoch_at_quiet[g] || !self.member_at_quiet[g] {
                continue;
            }
            if msg.qos == QoS::AtLeastOnce && msg.routings > 1 {
                continue; // the publisher resent it: routed again, legitimately
            }
            self.stats.checked[Property::SharedOnce as usize] += 1;
            if msg.deliveries.len() != 1 {
                wrong.push((m, g));
            }
        }
        for (m, g) in wrong {
            let to: Vec<&str> = self.msgs[m]
                .deliveries
                .iter()
                .map(|d| self.clients[d.client].id.as_str())
                .collect();
            violate!(
                self,
                Property::SharedOnce,
                "m{m} ({} {:?}) to group {} reached {} members {to:?}, in a window where its members stayed",
                TOPICS[self.msgs[m].topic],
                self.msgs[m].qos,
                FILTERS[GROUPS[g]],
                to.len()
            );
        }
    }

    /// The end of the run, every persistent client back and the node quiet: properties 3 and
    /// 5 through reconnects, and what must never happen at all (a QoS 2 message twice to one
    /// session, a QoS 0 group message to two members).
    pub fn check_final(&mut self) {
        let mut lost = Vec::new();
        let mut twice = Vec::new();
        let mut shared_twice = Vec::new();
        for c in 0..self.clients.len() {
            if !self.clients[c].persistent {
                continue;
            }
            let Some(lg) = self.clients[c].lineage else {
                continue;
            };
            if self.active_link(c).is_none() {
                continue; // property 1 says why
            }
            for (m, msg) in self.msgs.iter().enumerate() {
                let Some(t) = msg.sent else { continue };
                if msg.qos == QoS::AtMostOnce || group_of_topic(msg.topic).is_some() {
                    continue;
                }
                let Some(granted) = self.subscribed_since(lg, msg.topic, t) else {
                    continue;
                };
                if granted == QoS::AtMostOnce {
                    continue;
                }
                let n = msg.deliveries.iter().filter(|d| d.lineage == lg).count();
                self.stats.checked[Property::DeliveredAfterReconnect as usize] += 1;
                if n == 0 {
                    lost.push((c, m));
                }
                if msg.qos == QoS::ExactlyOnce && granted == QoS::ExactlyOnce {
                    self.stats.checked[Property::ExactlyOnce as usize] += 1;
                    if n > 1 {
                        twice.push((c, m, n));
                    }
                }
            }
        }
        for (m, msg) in self.msgs.iter().enumerate() {
            if msg.qos == QoS::ExactlyOnce {
                for (i, d) in msg.deliveries.iter().enumerate() {
                    let again = msg.deliveries[..i]
                        .iter()
                        .any(|e| e.lineage == d.lineage && e.qos == QoS::ExactlyOnce);
                    if again && d.qos == QoS::ExactlyOnce {
                        twice.push((d.client, m, 2));
                    }
                }
            }
            if msg.qos == QoS::AtMostOnce
                && group_of_topic(msg.topic).is_some()
                && msg.deliveries.len() > 1
            {
                let to: Vec<&str> = msg
                    .deliveries
                    .iter()
                    .map(|d| self.clients[d.client].id.as_str())
                    .collect();
                shared_twice.push(format!(
                    "QoS 0 m{m} to a group reached {} members {to:?}",
                    to.len()
                ));
            }
        }
        for line in shared_twice {
            violate!(self, Property::SharedOnce, "{line}");
        }
        for (c, m) in lost {
            let msg = &self.msgs[m];
            violate!(
                self,
                Property::DeliveredAfterReconnect,
                "m{m} ({} {:?}, sent at step {:?} by {}) never reached {}'s persistent session (lineage {:?}: {:?})",
                TOPICS[msg.topic],
                msg.qos,
                msg.sent,
                self.clients[msg.publisher].id,
                self.clients[c].id,
                self.clients[c].lineage,
                self.clients[c].lineage.map(|lg| self.lineages[lg].filters)
            );
        }
        for (c, m, n) in twice {
            violate!(
                self,
                Property::ExactlyOnce,
                "QoS 2 m{m} ({}) reached {}'s session {n} times",
                TOPICS[self.msgs[m].topic],
                self.clients[c].id
            );
        }
    }
}
