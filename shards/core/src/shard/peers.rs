//! What other shards of the node say ([`ShardMsg`]), handled in the order each sent it.

use super::*;

impl ShardCore {
    /// Handles one message from another shard (or from this one, via `send`).
    pub fn handle_msg(&mut self, now: Instant, msg: ShardMsg) {
        match msg {
            ShardMsg::Publish(m) | ShardMsg::DurablePublish(m) => self.deliver_local(now, &m),
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
                    .insert(client_id.clone(), RegEntry { shard, token });
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
                    .get(&client_id)
                    .is_some_and(|e| e.shard == shard && e.token == token)
                {
                    self.registry.remove(&client_id);
                    self.tell_cluster(ToCluster::SessionDel { client_id });
                }
            }
            ShardMsg::Superseded { token } => {
                if let Some(pc) = self.pending_connects.remove(&token) {
                    if let Some(conn) = self.conns.get_mut(pc.conn).filter(|c| c.id == pc.conn_id) {
                        debug!(shard = self.id, client_id = %pc.accepted.client_id, "claim superseded before CONNACK; closing");
                        conn.phase = Phase::Closing;
                        Self::wake_conn(&mut self.ready, conn);
                    }
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
            } => self.handoff(now, client_id, token, session),
            ShardMsg::DurableAck { shard, upto } => self.durable_acked(now, shard, upto),
            ShardMsg::SessionStored { client_id } => self.session_stored(&client_id),
        }
    }
}
