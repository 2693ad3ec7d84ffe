//! What other shards of the node say ([`ShardMsg`]), handled in the order each sent it.

use super::*;

impl ShardCore {
    /// Handles one message from shard `from` (this one, for what it sent itself via `send`).
    pub fn handle_msg(&mut self, now: Instant, from: ShardId, msg: ShardMsg) {
        match msg {
            ShardMsg::Publish { msg, stamp } | ShardMsg::DurablePublish { msg, stamp } => {
                debug_assert!(
                    stamp.seq > self.handled[from],
                    "a pair's publishes in order"
                );
                self.handled[from] = stamp.seq;
                self.deliver_local(now, &msg, from, stamp);
            }
            ShardMsg::Forward {
                token,
                msg,
                origin,
                stamp,
            } => self.forwarded(now, token, &msg, origin, stamp),
            ShardMsg::MoveMark { token, from, to } => self.move_mark(token, from, to),
            ShardMsg::MoveMarkAck { token, upto } => {
                self.handled_upto(from, upto);
                self.move_mark_acked(now, token, from);
            }
            ShardMsg::ForwardEnd { token, upto } => {
                self.handled_upto(from, upto);
                self.move_window_step(now, token);
            }
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
                    .insert(Box::from(client_id.as_str()), RegEntry { shard, token });
                if prev.is_none() && !clean_start && self.cluster.is_some() {
                    // Perhaps on another node: the control plane fetches it, and the
                    // connection's shard registers it once it has it (node_moves.rs).
                    self.tell_cluster(ToCluster::SessionFetch {
                        client_id,
                        shard,
                        token,
                    });
                    return;
                }
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
                            replaces: p.token,
                            discard: clean_start,
                        },
                    ),
                    None => self.send(
                        shard,
                        ShardMsg::Handoff {
                            client_id,
                            token,
                            session: None,
                            handled: None,
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
                    .get(client_id.as_str())
                    .is_some_and(|e| e.shard == shard && e.token == token)
                {
                    self.registry.remove(client_id.as_str());
                    self.tell_cluster(ToCluster::SessionDel { client_id });
                }
            }
            ShardMsg::Takeover {
                client_id,
                to,
                token,
                replaces,
                discard,
            } => self.takeover(now, client_id, to, token, replaces, discard),
            ShardMsg::Handoff {
                client_id,
                token,
                session,
                handled,
            } => self.handoff(now, from, client_id, token, session, handled),
            ShardMsg::DurableAck { shard, upto } => self.durable_acked(now, shard, upto),
            ShardMsg::SessionStored { client_id } => self.session_stored(&client_id),
        }
    }
}
