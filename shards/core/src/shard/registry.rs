//! This shard's partition of the node's client registry, and the move of a session between
//! shards: Claim (to the owner shard) → Takeover (to the shard holding the session) → Handoff
//! (the session, to the shard of the new connection), with takeovers deferred while the
//! shard's own claim for the client is in flight; then the CONNACK once the session's routes
//! are synced.

use super::*;

impl ShardCore {
    /// Asks the registry for the client id of an accepted (and authenticated) CONNECT.
    pub(super) fn claim(&mut self, key: ConnKey, accepted: Accepted) {
        let id = self.id;
        let conn = &mut self.conns[key];
        let conn_id = conn.id;
        trace!(shard = id, client_id = %accepted.client_id, "CONNECT accepted; claiming");
        conn.phase = Phase::Claiming;
        conn.set_read_timeout(None);
        let token = self.token();
        let client_id = accepted.client_id.clone();
        let clean_start = accepted.clean_start;
        self.pending_connects.insert(
            token,
            PendingConnect {
                conn: key,
                conn_id,
                accepted,
            },
        );
        let owner = self.owner_of(&client_id);
        self.send(
            owner,
            ShardMsg::Claim {
                client_id,
                shard: id,
                token,
                clean_start,
            },
        );
    }

    /// `client_id` connected on another node: its connection here (if any) is closed with
    /// 0x8E Session taken over, its will published, and its session ended.
    pub(super) fn evict(&mut self, now: Instant, client_id: &ByteStr) {
        let Some(skey) = self.session_of(client_id) else {
            return;
        };
        debug!(shard = self.id, client_id = %client_id, "session taken over by another node");
        if let Some(will) = self.close_for_other_node(skey) {
            self.publish_will(now, client_id.clone(), will);
        }
        if let Some(will) = self.delayed_wills.cancel(client_id) {
            self.publish_will(now, client_id.clone(), will);
        }
        self.sessions[skey].session.detach();
        self.end_session(skey);
    }

    /// The restored session of `client_id` is stale: the tables place it on another node (its
    /// client moved on while this node was down). Dropped without its will, unless a client
    /// connected here meanwhile (then the session is live and stays).
    pub(super) fn drop_stale(&mut self, client_id: &ByteStr) {
        let Some(skey) = self.session_of(client_id) else {
            return;
        };
        if self.sessions[skey].conn.is_some() {
            return;
        }
        info!(shard = self.id, client_id = %client_id, "restored session is stale: it lives on another node");
        let _ = self.delayed_wills.cancel(client_id);
        let _ = self.sessions[skey].session.take_will();
        self.sessions[skey].session.detach();
        self.end_session(skey);
    }

    /// Closes session `skey`'s connection (if any) with 0x8E Session taken over, for a client
    /// now connected on another node; the will it held, for the caller to publish or not.
    pub(super) fn close_for_other_node(&mut self, skey: SessionKey) -> Option<LastWill> {
        let ckey = self.sessions[skey].conn.take()?;
        self.close_conn(
            ckey,
            Close {
                reason: ReasonCode::SESSION_TAKEN_OVER,
                why: "taken over by a connection on another node",
            },
        );
        self.conns[ckey].set_session(None);
        self.sessions[skey].session.take_will()
    }

    /// Another connection claimed `client_id`: kick ours and hand the session over.
    pub(super) fn takeover(
        &mut self,
        now: Instant,
        client_id: ByteStr,
        to: ShardId,
        token: u64,
        replaces: u64,
        discard: bool,
    ) {
        // The registry replaced the registration of a claim of ours that is still in flight:
        // that claim was registered first, so it gets the session first; this takeover runs
        // once its Handoff lands. Any other takeover concerns the session held here now (a
        // claim of ours registered later than this one gets its own takeover in turn: waiting
        // for it here would wait on a shard that waits on us). Each registration is replaced
        // once, so a claim has at most one takeover waiting for it, and the waits follow the
        // registry's order: no cycle.
        if self
            .pending_connects
            .get(&replaces)
            .is_some_and(|p| p.accepted.client_id == client_id)
        {
            let earlier = self
                .deferred_takeovers
                .insert(replaces, (client_id, to, token, discard));
            assert!(earlier.is_none(), "a registration is replaced once");
            return;
        }
        // The session is still arriving from a move here: it moves on once that is done.
        if let Some(skey) = self.session_of(&client_id) {
            if !discard && self.defer_in_window(skey, &client_id, to, token, replaces) {
                return;
            }
        }
        let mut handled = None;
        let mut held = None;
        let session = match self.session_of(&client_id) {
            Some(skey) => {
                if let Some(ckey) = self.sessions[skey].conn {
                    debug!(shard = self.id, client_id = %client_id, "session taken over");
                    self.close_conn(
                        ckey,
                        Close {
                            reason: ReasonCode::SESSION_TAKEN_OVER,
                            why: "taken over",
                        },
                    );
                    // The old connection ends abnormally from the client's view: its will goes,
                    // unless the session continues (no Clean Start) and the will has a delay
                    // (MQTT 5.0 §3.1.3.2.2).
                    let will = self.sessions[skey].session.take_will();
                    let conn = &mut self.conns[ckey];
                    conn.set_session(None);
                    if let Some(will) = will {
                        if discard || will.properties.will_delay_interval.unwrap_or(0) == 0 {
                            self.publish_will(now, client_id.clone(), will);
                        }
                    }
                }
                // The client is back before its delayed will went out: cancelled, unless the
                // session ends here (Clean Start), which publishes it.
                if let Some(will) = self.delayed_wills.cancel(&client_id) {
                    if discard {
                        self.publish_will(now, client_id.clone(), will);
                    } else {
                        debug!(shard = self.id, client_id = %client_id, "delayed will cancelled");
                    }
                }
                if !discard && to != self.id {
                    handled = Some(self.forward_start(skey, to, token));
                } else if !discard {
                    held = Some(self.hold_routes(skey));
                }
                let mut session = self.extract_session(skey);
                session.detach();
                if discard {
                    self.redispatch_shared(&mut session);
                }
                self.durable_extracted(&session, discard);
                (!discard).then(|| Box::new(session))
            }
            None => None,
        };
        if to == self.id {
            // A move within the shard is installed at once, its routes held meanwhile: no
            // publish is handled between, and no other shard sees the routes go.
            let me = self.id;
            self.handoff(now, me, client_id, token, session, None);
            if let Some(filters) = held {
                self.release_routes(filters);
            }
            return;
        }
        self.send(
            to,
            ShardMsg::Handoff {
                client_id,
                token,
                session,
                handled,
            },
        );
    }

    /// The registry answered our claim: install the session and send CONNACK.
    pub(super) fn handoff(
        &mut self,
        now: Instant,
        from: ShardId,
        client_id: ByteStr,
        token: u64,
        old: Option<Box<Session>>,
        handled: Option<Box<[u64]>>,
    ) {
        let Some(pc) = self.pending_connects.remove(&token) else {
            if handled.is_some() {
                // Not installed here: the old shard still ends its forwarding.
                self.send_move_marks(token, from);
            }
            self.run_deferred_takeover(now, token);
            return;
        };
        let conn_alive = self
            .conns
            .get(pc.conn)
            .is_some_and(|c| c.id == pc.conn_id && c.phase == Phase::Claiming);
        let accepted = pc.accepted;
        let session_present = !accepted.clean_start && old.is_some();
        let moved_in = old.is_some();
        let session = match old {
            Some(s) if !accepted.clean_start => *s,
            _ => Session::new(client_id.clone(), accepted.protocol, accepted.expiry_secs),
        };
        let skey = self.sessions.vacant_key();
        let filters: Vec<(ByteStr, Subscription)> = session
            .subscriptions()
            .map(|(f, s)| (f.clone(), *s))
            .collect();
        self.sessions.insert(SessionSlot {
            session,
            conn: None,
            reg_token: token,
            expires_at: None,
            connected_at: 0,
            clean_start: false,
        });
        self.by_client.insert(&self.sessions, skey);
        self.durable_install(now, skey, accepted.expiry_secs != 0, moved_in);
        // The inherited subscriptions become routable everywhere before CONNACK, so a publish
        // sent after it (from any shard) reaches this session here, not the shard it left.
        let sync = self.token();
        let mut remaining = 0;
        for (filter, sub) in filters {
            let inserted = self.trie_insert(&filter, skey, sub);
            if inserted || (conn_alive && self.route_unsettled(&filter)) {
                let synced = conn_alive && self.nshards > 1;
                self.announce_route(&filter, synced.then_some(sync));
                remaining += if synced { self.nshards - 1 } else { 0 };
                if inserted && !is_shared(&filter) {
                    let shard = self.id;
                    self.tell_cluster(ToCluster::RouteAdd {
                        filter,
                        shard,
                        sync: None,
                    });
                }
            }
        }
        if let Some(left) = handled.filter(|_| moved_in && !accepted.clean_start) {
            self.move_arrived(skey, from, token, left);
        }
        let cs = ConnectSync {
            conn: pc.conn,
            conn_id: pc.conn_id,
            session: skey,
            reg_token: token,
            remaining,
            seq: self.route_seq,
            accepted,
            session_present,
        };
        if !conn_alive {
            self.orphan_session(now, skey);
        } else if remaining > 0 {
            self.connect_syncs.insert(sync, cs);
        } else {
            self.finish_connect(now, cs);
        }
        self.run_deferred_takeover(now, token);
    }

    /// The claim `token` of ours is answered: the takeover that waited for it, if any, runs.
    pub(super) fn run_deferred_takeover(&mut self, now: Instant, token: u64) {
        if let Some((client_id, to, t, discard)) = self.deferred_takeovers.remove(&token) {
            self.takeover(now, client_id, to, t, token, discard);
        }
    }

    /// Attaches the connection to its session and sends CONNACK, then whatever the session
    /// had in flight or queued.
    pub(super) fn finish_connect(&mut self, now: Instant, cs: ConnectSync) {
        let ours = self
            .sessions
            .get(cs.session)
            .is_some_and(|s| s.reg_token == cs.reg_token && s.conn.is_none());
        if !ours {
            // Taken over while the routes were syncing: this connection lost the race.
            if let Some(conn) = self.conns.get_mut(cs.conn).filter(|c| c.id == cs.conn_id) {
                conn.phase = Phase::Closing;
                Self::wake_conn(&mut self.ready, conn);
            }
            return;
        }
        let alive = self
            .conns
            .get(cs.conn)
            .is_some_and(|c| c.id == cs.conn_id && c.phase == Phase::Claiming);
        if !alive {
            self.orphan_session(now, cs.session);
            return;
        }
        let conn = &mut self.conns[cs.conn];
        let accepted = cs.accepted;
        conn.phase = Phase::Active;
        conn.set_session(Some(cs.session));
        conn.set_read_timeout(accepted.params.read_timeout());
        let mut connack = connack_for(&accepted, cs.session_present, &self.limits);
        if let Some(auth) = conn.cold.as_mut().and_then(|c| c.auth.as_mut()) {
            auth.exchange.complete_connack(&mut connack);
        }
        let gate_at = conn.out.len();
        encode(
            &Packet::ConnAck(Box::new(connack)),
            accepted.protocol,
            &mut conn.out,
        );
        let slot = &mut self.sessions[cs.session];
        slot.conn = Some(cs.conn);
        slot.connected_at =
            unix_secs(self.wall_started + now.saturating_duration_since(self.started));
        slot.clean_start = accepted.clean_start;
        let before = slot.session.stats();
        let authorizer = conn.ident().and_then(|i| i.authorizer.clone());
        slot.session
            .set_authorizer(authorizer, self.cfg.acl_deny_action);
        slot.session
            .attach(now, &accepted, &self.limits, &mut conn.out);
        // The queue an offline session kept goes out here.
        self.stats.count_session(before, slot.session.stats());
        Self::wake_conn(&mut self.ready, conn);
        let username = conn.ident().and_then(|i| i.username.as_deref());
        debug!(shard = self.id, client_id = %accepted.client_id, ?username, peer = ?conn.peer(), session_present = cs.session_present, "client connected");
        self.shared_set_online(cs.session, true);
        self.arm_conn_timer(now, cs.conn);
        self.journal_flush(now, cs.session);
        if self.sessions[cs.session].session.is_journaled() {
            self.durable_gate(cs.conn, gate_at);
        }
    }
}
