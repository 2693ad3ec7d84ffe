//! Sessions: ending and extracting them, wills (delayed or not), offline expiry.

use super::*;

impl ShardCore {
    /// The key of `client_id`'s session, if it lives on this shard.
    pub(super) fn session_of(&self, client_id: &str) -> Option<SessionKey> {
        self.by_client.get(&self.sessions, client_id)
    }

    /// Removes a session for good: its subscriptions leave the trie, the registry forgets it.
    pub(super) fn end_session(&mut self, skey: SessionKey) {
        self.durable_end(skey);
        self.move_session_gone(skey);
        let mut slot = self.sessions.remove(skey);
        let client_id = slot.session.client_id().clone();
        debug!(shard = self.id, client_id = %client_id, "session ended");
        self.by_client.remove(&client_id, skey);
        if let Some(at) = slot.expires_at {
            self.offline.remove(&(at, skey, slot.reg_token));
        }
        for filter in slot.session.clear_subscriptions() {
            self.trie_remove(&filter, skey);
        }
        self.redispatch_shared(&mut slot.session);
        let owner = self.owner_of(&client_id);
        let me = self.id;
        self.send(
            owner,
            ShardMsg::Release {
                client_id,
                shard: me,
                token: slot.reg_token,
            },
        );
    }

    /// Takes a session off this shard (takeover), returning it with its subscriptions
    /// cleared from this shard's trie but kept in the session itself.
    pub(super) fn extract_session(&mut self, skey: SessionKey) -> Session {
        self.move_session_gone(skey);
        let slot = self.sessions.remove(skey);
        self.by_client.remove(slot.session.client_id(), skey);
        if let Some(at) = slot.expires_at {
            self.offline.remove(&(at, skey, slot.reg_token));
        }
        let filters: Vec<ByteStr> = slot
            .session
            .subscriptions()
            .map(|(f, _)| f.clone())
            .collect();
        for filter in filters {
            self.trie_remove(&filter, skey);
        }
        slot.session
    }

    /// Publishes `will` now, or after its Will Delay Interval cut to the session expiry
    /// `expiry_secs` (MQTT 5.0 §3.1.3.2.2); a reconnect before then cancels it (`takeover`).
    pub(super) fn publish_will_after(
        &mut self,
        now: Instant,
        client_id: ByteStr,
        will: LastWill,
        expiry_secs: u32,
    ) {
        let delay_secs = will.properties.will_delay_interval.unwrap_or(0);
        match will_delay(delay_secs, expiry_secs) {
            None => self.publish_will(now, client_id, will),
            Some(delay) => {
                debug!(shard = self.id, client_id = %client_id, ?delay, "will delayed");
                let replaced = self
                    .delayed_wills
                    .schedule(client_id.clone(), now + delay, will);
                if let Some(old) = replaced {
                    self.publish_will(now, client_id, old);
                }
            }
        }
    }

    pub(super) fn publish_will(&mut self, now: Instant, client_id: ByteStr, will: LastWill) {
        let msg = will_message(will, client_id, now);
        debug!(shard = self.id, client_id = %msg.publisher, "publishing will");
        self.route(now, Arc::new(msg));
    }

    /// Gives back the capacity that a burst left in the tables of work in progress (pending
    /// CONNECTs and their auth checks, route and connect syncs, deferred takeovers): hash
    /// tables never shrink by themselves, and after a connect storm of 10,000 clients the
    /// empty tables held more memory than the clients. Housekeeping calls it.
    pub fn shrink_transient_tables(&mut self) {
        fn shrink<K: Eq + std::hash::Hash, V>(m: &mut ahash::AHashMap<K, V>) {
            if m.capacity() > 64 && m.len() * 4 < m.capacity() {
                let keep = m.len() * 2;
                m.shrink_to(keep);
            }
        }
        shrink(&mut self.pending_connects);
        shrink(&mut self.pending_auth);
        shrink(&mut self.route_syncs);
        shrink(&mut self.connect_syncs);
        shrink(&mut self.deferred_takeovers);
        shrink(&mut self.forwarders);
        shrink(&mut self.route_holds);
        shrink(&mut self.move_windows);
        shrink(&mut self.moving_in);
    }

    /// Expires offline sessions whose time has come, after publishing the delayed wills that
    /// are due (a will is never due later than its session's end).
    pub fn expire_sessions(&mut self, now: Instant) {
        while let Some((client_id, will)) = self.delayed_wills.pop_due(now) {
            if let Some(skey) = self.session_of(&client_id) {
                // Out now: the session (and its stored image) forgets it.
                self.sessions[skey].session.take_will();
                self.journal_flush(now, skey);
            }
            self.publish_will(now, client_id, will);
        }
        while let Some(&(at, skey, token)) = self.offline.first() {
            if at > now {
                break;
            }
            self.offline.pop_first();
            let live = self
                .sessions
                .get(skey)
                .is_some_and(|s| s.reg_token == token && s.conn.is_none());
            if live {
                self.sessions[skey].expires_at = None;
                self.end_session(skey);
            }
        }
        self.drain_local(now);
    }

    /// A session whose connection died before CONNACK: it lives on offline, or ends now if it
    /// has no expiry.
    pub(super) fn orphan_session(&mut self, now: Instant, skey: SessionKey) {
        self.sessions[skey].session.detach();
        self.journal_flush(now, skey);
        let slot = &mut self.sessions[skey];
        match slot.session.expiry_secs() {
            0 => self.end_session(skey),
            EXPIRY_NEVER => {}
            secs => {
                let at = now + Duration::from_secs(u64::from(secs));
                slot.expires_at = Some(at);
                self.offline.insert((at, skey, slot.reg_token));
            }
        }
    }
}
