//! Connections: accepting and ending them, their packets, CONNECT (limits, redirection,
//! the verifier, enhanced authentication) and the moving of clients to another server.

use super::*;

impl ShardCore {
    /// Registers an accepted connection.
    ///
    /// `node_connections` is the node's count of connections with this one (the shell keeps
    /// it across shards): over `max_connections`, its CONNECT is refused. `io_token` comes
    /// back with the key from [`poll_conn`](Self::poll_conn).
    pub fn open_conn(
        &mut self,
        now: Instant,
        peer: Option<std::net::SocketAddr>,
        listener: crate::ListenerKind,
        node_connections: usize,
        io_token: u32,
    ) -> (ConnKey, u64) {
        let n = node_connections;
        self.next_conn_id += 1;
        let id = self.next_conn_id;
        let key = self.conns.vacant_key();
        let key_u32 = u32::try_from(key).expect("fewer than 2^32 connections per shard");
        let inserted = self.conns.insert(Conn {
            id,
            out: BytesMut::new(),
            key: key_u32,
            io_token,
            last_in_ms: self.ms(now),
            timer_bucket: timers::NO_BUCKET,
            session: NO_SESSION,
            read_timeout_ms: 0,
            peer_v4: None,
            cold: None,
            phase: Phase::AwaitConnect,
            io_wanted: false,
            protocol: None,
            over_limit: n > self.max_connections,
            graceful: None,
            listener,
        });
        let conn = &mut self.conns[key];
        conn.set_read_timeout(Some(self.connect_timeout));
        conn.set_peer(peer);
        assert_eq!(inserted, key, "the slab fills its vacant key");
        self.arm_conn_timer(now, key);
        (key, id)
    }

    /// Writes a v5 DISCONNECT (if the protocol has one) and moves the connection to Closing.
    pub fn close_conn(&mut self, key: ConnKey, close: Close) {
        let conn = &mut self.conns[key];
        if conn.phase == Phase::Closing {
            return;
        }
        if conn.protocol == Some(Protocol::V5) && conn.phase == Phase::Active {
            let params = conn
                .session()
                .and_then(|s| self.sessions.get(s))
                .and_then(|slot| slot.session.conn_params());
            encode(
                &server_disconnect_for(close, params),
                Protocol::V5,
                &mut conn.out,
            );
        }
        conn.phase = Phase::Closing;
        Self::wake_conn(&mut self.ready, conn);
    }

    /// The driver is done with the connection: detach the session, publish the will unless
    /// the client said goodbye, start the expiry clock or end the session.
    pub fn conn_closed(&mut self, now: Instant, key: ConnKey) {
        let conn = self.conns.remove(key);
        let Some(skey) = conn.session() else { return };
        let slot = &mut self.sessions[skey];
        slot.conn = None;
        slot.session.detach();
        let expiry = slot.session.expiry_secs();
        let will = match conn.graceful {
            Some(false) => {
                slot.session.take_will();
                None
            }
            // A will that waits for its delay stays in the session (and in its stored image,
            // so a restart in between still publishes it) until it goes out.
            _ if slot.session.will().is_some_and(|w| {
                will_delay(w.properties.will_delay_interval.unwrap_or(0), expiry).is_some()
            }) =>
            {
                slot.session.will().cloned()
            }
            _ => slot.session.take_will(),
        };
        if let Some(will) = will {
            let client_id = slot.session.client_id().clone();
            self.publish_will_after(now, client_id, will, expiry);
        }
        if expiry != 0 {
            self.shared_set_online(skey, false);
        }
        self.journal_flush(now, skey);
        if expiry == 0 {
            self.end_session(skey);
        } else if expiry != EXPIRY_NEVER {
            let at = now + Duration::from_secs(u64::from(expiry));
            let slot = &mut self.sessions[skey];
            slot.expires_at = Some(at);
            self.offline.insert((at, skey, slot.reg_token));
        }
        self.drain_local(now);
    }

    /// One decoded packet from connection `key`.
    pub fn on_packet(&mut self, now: Instant, key: ConnKey, packet: Packet) {
        if self.traces.is_some() {
            self.trace_in(now, key, &packet);
        }
        self.stats.messages_in += u64::from(matches!(packet, Packet::Publish(_)));
        // What a stored change acknowledges (`storage.durability = "sync"`): the PUBACK/PUBREC
        // of a QoS 1/2 PUBLISH, and the PUBCOMP of a PUBREL (an early one could let a reused
        // packet id pass for a duplicate after a crash).
        let gate = match &packet {
            Packet::Publish(p) if p.qos != QoS::AtMostOnce => {
                if self.storage_refuses() && self.conns[key].phase == Phase::Active {
                    self.refuse_publish(key, p.qos, p.pkid);
                    return;
                }
                true
            }
            Packet::PubRel(_) => true,
            _ => false,
        } && self.durable.is_some();
        let gate_at = self.conns[key].out.len();
        let conn = &mut self.conns[key];
        match conn.phase {
            Phase::AwaitConnect => match packet {
                Packet::Connect(connect) => self.on_connect(now, key, &connect),
                other => {
                    warn!(
                        shard = self.id,
                        packet = other.name(),
                        "first packet is not CONNECT; closing"
                    );
                    self.close_conn(
                        key,
                        Close {
                            reason: ReasonCode::PROTOCOL_ERROR,
                            why: "first packet not CONNECT",
                        },
                    );
                }
            },
            Phase::Authenticating => self.on_connect_auth(key, packet),
            Phase::Verifying | Phase::Claiming | Phase::Closing => {
                debug!(shard = self.id, "packet while not active ignored");
            }
            Phase::Active if conn.auth().is_some() && matches!(packet, Packet::Auth(_)) => {
                self.on_reauth(key, packet)
            }
            Phase::Active => {
                let Some(skey) = conn.session() else { return };
                let mut actions = std::mem::take(&mut self.actions_scratch);
                let slot = &mut self.sessions[skey];
                let before = slot.session.stats();
                let result =
                    slot.session
                        .handle(now, packet, &self.limits, &mut conn.out, &mut actions);
                // An acknowledgement frees the window: queued messages go out here.
                self.stats.count_session(before, slot.session.stats());
                if let Err(close) = result {
                    warn!(shard = self.id, client_id = %slot.session.client_id(), reason = ?close.reason, why = close.why, "protocol violation; disconnecting");
                    actions.clear();
                    self.actions_scratch = actions;
                    self.close_conn(key, close);
                    return;
                }
                self.run_actions(now, key, skey, &mut actions);
                actions.clear();
                self.actions_scratch = actions;
                self.journal_flush(now, skey);
            }
        }
        self.drain_local(now);
        if gate {
            self.durable_gate(key, gate_at);
        }
    }

    /// The decoder rejected the byte stream: answer as the spec says and close.
    pub fn on_decode_error(&mut self, key: ConnKey, reason: ReasonCode, what: &str) {
        let conn = &mut self.conns[key];
        warn!(shard = self.id, conn = conn.id, reason = ?reason, error = what, "bad packet; closing");
        if conn.phase == Phase::AwaitConnect && reason == ReasonCode::UNSUPPORTED_PROTOCOL_VERSION {
            // MQTT-3.1.2-2: CONNACK 0x84 (3.x: return code 1), then close.
            // The level is one we do not speak, so answer in the 3.1.1 layout (return code 1).
            encode(
                &Packet::ConnAck(Box::new(connack_refusal(reason))),
                Protocol::V3_1_1,
                &mut conn.out,
            );
        }
        self.close_conn(
            key,
            Close {
                reason,
                why: "decode error",
            },
        );
    }

    pub(super) fn on_connect(&mut self, now: Instant, key: ConnKey, connect: &Connect) {
        let id = self.id;
        let conn = &mut self.conns[key];
        conn.protocol = Some(connect.protocol);
        let refuse = |conn: &mut Conn, code: ReasonCode| {
            encode(
                &Packet::ConnAck(Box::new(connack_refusal(code))),
                connect.protocol,
                &mut conn.out,
            );
            conn.phase = Phase::Closing;
        };
        let moved = self.move_pulled;
        if let Some(ack) = self.cfg.redirect.connack(moved, connect.protocol) {
            debug!(shard = id, client_id = %connect.client_id, reason = ?ack.code, "redirecting");
            encode(
                &Packet::ConnAck(Box::new(ack)),
                connect.protocol,
                &mut conn.out,
            );
            conn.phase = Phase::Closing;
            return;
        }
        if let Some(ack) = evacuate::connack(self.evacuating.as_ref(), connect.protocol) {
            debug!(shard = id, client_id = %connect.client_id, "node evacuating; CONNECT refused");
            encode(
                &Packet::ConnAck(Box::new(ack)),
                connect.protocol,
                &mut conn.out,
            );
            conn.phase = Phase::Closing;
            return;
        }
        if conn.over_limit {
            warn!(shard = id, client_id = %connect.client_id, "max_connections reached; refusing");
            refuse(conn, ReasonCode::SERVER_BUSY);
            return;
        }
        if let Some(bucket) = &mut self.connect_rate {
            if !bucket.try_take(now) {
                warn!(shard = id, client_id = %connect.client_id, "max_connection_rate exceeded; refusing");
                refuse(conn, ReasonCode::CONNECTION_RATE_EXCEEDED);
                return;
            }
        }
        let conn_id = conn.id;
        let counter = self.next_conn_id;
        let accepted = match accept_connect(connect, &self.limits, || {
            ByteStr::from(format!("shardmq-{id}-{conn_id}-{counter:x}"))
        }) {
            Ok(a) => a,
            Err(code) => {
                warn!(shard = id, client_id = %connect.client_id, reason = ?code, "CONNECT refused");
                refuse(conn, code);
                return;
            }
        };
        if self.cfg.auth {
            self.verify(key, connect, accepted);
            return;
        }
        if let Some(username) = &connect.username {
            // Kept for the management API only (no ACL applies without `[auth]`).
            conn.cold_mut().ident = Some(Box::new(ConnIdent {
                username: Some(username.to_string()),
                authorizer: None,
            }));
        }
        self.begin_session(key, connect, accepted);
    }

    /// Queues the CONNECT's credentials for the verifier ([`poll_verify`](Self::poll_verify));
    /// its [`Verdict`] comes back through [`handle_verdict`](Self::handle_verdict). The
    /// connection reads nothing meanwhile.
    pub(super) fn verify(&mut self, key: ConnKey, connect: &Connect, accepted: Accepted) {
        let token = self.token();
        let conn = &mut self.conns[key];
        let username = match conn.cert_name() {
            Some(name) => Some(name.to_string()),
            None => connect.username.as_ref().map(|u| u.to_string()),
        };
        let credentials = Credentials {
            client_id: accepted.client_id.to_string(),
            username,
            password: connect.password.clone(),
            peer: conn
                .peer()
                .map(|p| p.ip())
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            cert_name: conn.cert_name().map(str::to_string),
            protocol_version: connect.protocol.level(),
        };
        conn.phase = Phase::Verifying;
        self.pending_auth.insert(
            token,
            PendingAuth {
                conn: key,
                conn_id: conn.id,
                connect: Box::new(connect.clone()),
                accepted,
            },
        );
        self.verify_out.push((token, credentials));
    }

    /// Output: the next CONNECT's credentials to judge, with the token its verdict names.
    /// A certificate name (`peer_cert_as_username`) is the credential itself: the verifier
    /// only looks up its ACL.
    pub fn poll_verify(&mut self) -> Option<(u64, Credentials)> {
        if self.verify_out.is_empty() {
            return None;
        }
        Some(self.verify_out.remove(0))
    }

    /// Input: the verifier's verdict on the credentials polled with `token`. A verdict for a
    /// connection that closed meanwhile is dropped.
    pub fn handle_verdict(&mut self, now: Instant, token: u64, verdict: Verdict) {
        let Some(pending) = self.pending_auth.remove(&token) else {
            return;
        };
        let alive = self
            .conns
            .get(pending.conn)
            .is_some_and(|c| c.id == pending.conn_id && c.phase == Phase::Verifying);
        if alive {
            self.conns[pending.conn].phase = Phase::AwaitConnect;
            if matches!(verdict, Verdict::Busy) {
                let conn = &mut self.conns[pending.conn];
                warn!(shard = self.id, client_id = %pending.connect.client_id, "auth.queue_max CONNECTs wait for verification; refusing");
                Self::refuse_connect(
                    &mut self.ready,
                    conn,
                    pending.connect.protocol,
                    ReasonCode::SERVER_BUSY,
                );
            } else {
                self.verified(
                    now,
                    pending.conn,
                    &pending.connect,
                    pending.accepted,
                    verdict,
                );
                Self::wake_conn(&mut self.ready, &mut self.conns[pending.conn]);
            }
        }
        self.drain_local(now);
    }

    /// Goes on with a CONNECT once its credentials are judged.
    pub(super) fn verified(
        &mut self,
        _now: Instant,
        key: ConnKey,
        connect: &Connect,
        accepted: Accepted,
        outcome: Verdict,
    ) {
        let conn = &mut self.conns[key];
        let code = match outcome {
            Verdict::Allowed {
                username,
                authorizer,
            } => {
                let will_denied = match (&accepted.will, &authorizer) {
                    (Some(will), Some(a)) => !a.may_publish(&will.topic),
                    _ => false,
                };
                if !will_denied {
                    trace!(shard = self.id, client_id = %accepted.client_id, ?username, "credentials accepted");
                    conn.cold_mut().ident = Some(Box::new(ConnIdent {
                        username,
                        authorizer,
                    }));
                    self.begin_session(key, connect, accepted);
                    return;
                }
                warn!(shard = self.id, client_id = %accepted.client_id, peer = ?conn.peer(), "the will's topic is denied by the ACL; refusing");
                ReasonCode::NOT_AUTHORIZED
            }
            Verdict::BadCredentials => {
                warn!(shard = self.id, client_id = %accepted.client_id, peer = ?conn.peer(), "bad username or password; refusing");
                ReasonCode::BAD_USER_NAME_OR_PASSWORD
            }
            Verdict::NotAuthorized | Verdict::Busy => {
                warn!(shard = self.id, client_id = %accepted.client_id, peer = ?conn.peer(), "not authorized; refusing");
                ReasonCode::NOT_AUTHORIZED
            }
        };
        Self::refuse_connect(&mut self.ready, conn, connect.protocol, code);
    }

    /// CONNACK with a refusal, then close.
    pub(super) fn refuse_connect(
        ready: &mut Vec<ConnKey>,
        conn: &mut Conn,
        protocol: Protocol,
        code: ReasonCode,
    ) {
        encode(
            &Packet::ConnAck(Box::new(connack_refusal(code))),
            protocol,
            &mut conn.out,
        );
        conn.phase = Phase::Closing;
        Self::wake_conn(ready, conn);
    }

    /// Enhanced authentication (when the CONNECT names a method), then the claim.
    pub(super) fn begin_session(&mut self, key: ConnKey, connect: &Connect, accepted: Accepted) {
        let id = self.id;
        let conn = &mut self.conns[key];
        let mut refuse = |conn: &mut Conn, code: ReasonCode| {
            Self::refuse_connect(&mut self.ready, conn, connect.protocol, code);
        };
        match self
            .cfg
            .authenticators
            .begin(connect, || Self::nonce_from(&mut self.rng))
        {
            Ok(None) => {}
            Ok(Some((exchange, outcome))) => {
                let mut auth = Box::new(ConnAuth {
                    exchange,
                    accepted: None,
                });
                match outcome {
                    AuthOutcome::Challenge(challenge) => {
                        trace!(shard = id, client_id = %accepted.client_id, "CONNECT accepted; authenticating");
                        encode(&Packet::Auth(challenge), Protocol::V5, &mut conn.out);
                        auth.accepted = Some(accepted);
                        conn.cold_mut().auth = Some(auth);
                        conn.phase = Phase::Authenticating;
                        return;
                    }
                    AuthOutcome::Success(_) => conn.cold_mut().auth = Some(auth),
                    AuthOutcome::Fail(code) => {
                        warn!(shard = id, client_id = %connect.client_id, reason = ?code, "authentication failed");
                        refuse(conn, code);
                        return;
                    }
                }
            }
            Err(code) => {
                warn!(shard = id, client_id = %connect.client_id, reason = ?code, "authentication method not offered");
                refuse(conn, code);
                return;
            }
        }
        self.claim(key, accepted);
    }

    /// A packet while the CONNECT's authentication exchange runs: only AUTH may come.
    pub(super) fn on_connect_auth(&mut self, key: ConnKey, packet: Packet) {
        let id = self.id;
        let conn = &mut self.conns[key];
        let auth = conn
            .cold
            .as_mut()
            .and_then(|c| c.auth.as_mut())
            .expect("an authenticating connection has an exchange");
        let step = match packet {
            Packet::Auth(a) => auth
                .exchange
                .on_auth(&a, || Self::nonce_from(&mut self.rng)),
            _ => Err(Close {
                reason: ReasonCode::PROTOCOL_ERROR,
                why: "packet other than AUTH while authenticating",
            }),
        };
        let code = match step {
            Ok(AuthOutcome::Challenge(challenge)) => {
                encode(&Packet::Auth(challenge), Protocol::V5, &mut conn.out);
                return;
            }
            Ok(AuthOutcome::Success(_)) => {
                let accepted = auth
                    .accepted
                    .take()
                    .expect("the CONNECT waits for its authentication");
                debug!(shard = id, client_id = %accepted.client_id, method = %auth.exchange.method(), "authenticated");
                self.claim(key, accepted);
                return;
            }
            Ok(AuthOutcome::Fail(code)) => {
                warn!(shard = id, reason = ?code, "authentication failed; refusing");
                code
            }
            Err(close) => {
                warn!(shard = id, reason = ?close.reason, why = close.why, "protocol violation while authenticating; refusing");
                close.reason
            }
        };
        // Before CONNACK the refusal is a CONNACK (MQTT 5.0 §4.13.1); only 5.0 authenticates.
        encode(
            &Packet::ConnAck(Box::new(connack_refusal(code))),
            Protocol::V5,
            &mut conn.out,
        );
        conn.phase = Phase::Closing;
    }

    /// AUTH from an authenticated, connected client: re-authentication (MQTT 5.0 §4.12.1).
    pub(super) fn on_reauth(&mut self, key: ConnKey, packet: Packet) {
        let Packet::Auth(a) = packet else {
            unreachable!("only AUTH is routed here")
        };
        let id = self.id;
        let conn = &mut self.conns[key];
        let auth = conn
            .cold
            .as_mut()
            .and_then(|c| c.auth.as_mut())
            .expect("re-authentication needs an exchange");
        let close = match auth
            .exchange
            .on_auth(&a, || Self::nonce_from(&mut self.rng))
        {
            Ok(AuthOutcome::Challenge(reply) | AuthOutcome::Success(Some(reply))) => {
                trace!(shard = id, reason = ?reply.reason, "re-authentication step");
                encode(&Packet::Auth(reply), Protocol::V5, &mut conn.out);
                return;
            }
            Ok(AuthOutcome::Success(None)) => return,
            Ok(AuthOutcome::Fail(reason)) => Close {
                reason,
                why: "re-authentication failed",
            },
            Err(close) => close,
        };
        warn!(shard = id, reason = ?close.reason, why = close.why, "re-authentication refused; disconnecting");
        self.close_conn(key, close);
    }

    /// Once the node is moved (its move trigger pulled, `listener.moved_to` set), sends every
    /// client of this shard away, once: connected MQTT 5.0 clients get DISCONNECT 0x9D with the
    /// Server Reference, 3.x ones are closed; a client still before its CONNACK gets CONNACK
    /// 0x9D (3.x: return code 3). Wills are published, as for any server-side close. New
    /// CONNECTs are refused in `on_connect`.
    pub fn move_clients_if_moved(&mut self) {
        if self.moved || !self.move_pulled {
            return;
        }
        self.moved = true;
        let Some(disconnect) = self.cfg.redirect.disconnect() else {
            return;
        };
        let mut moved = 0usize;
        for (_, conn) in self.conns.iter_mut() {
            let Some(protocol) = conn.protocol else {
                // No CONNECT yet: refused with CONNACK 0x9D when it comes.
                continue;
            };
            match conn.phase {
                Phase::AwaitConnect | Phase::Closing => continue,
                Phase::Active if protocol.is_v5() => encode(&disconnect, protocol, &mut conn.out),
                Phase::Active => {}
                Phase::Verifying | Phase::Authenticating | Phase::Claiming => {
                    if let Some(ack) = self.cfg.redirect.connack(true, protocol) {
                        encode(&Packet::ConnAck(Box::new(ack)), protocol, &mut conn.out);
                    }
                }
            }
            conn.phase = Phase::Closing;
            Self::wake_conn(&mut self.ready, conn);
            moved += 1;
        }
        tracing::info!(
            shard = self.id,
            clients = moved,
            "node moved; clients sent to listener.moved_to"
        );
    }
}
