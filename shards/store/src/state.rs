//! The recovered state: what replaying a log gives, what a snapshot writes.

use crate::record::*;
use ahash::{AHashMap, AHashSet};
use shardmq_codec::ByteStr;
use std::collections::BTreeMap;

/// A topic's retained entry as replay knows it (tombstones included until [`State::finish`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedEntry {
    /// The retained message; `None` is a tombstone (cleared).
    pub message: Option<MessageId>,
    /// Wall-clock time of the change, ns since the Unix epoch.
    pub at_unix_ns: u64,
    /// Shard whose log holds the change (cross-shard tie-break).
    pub shard: u32,
    /// LSN of the change in that shard's log (last tie-break).
    pub lsn: Lsn,
}

impl RetainedEntry {
    fn order_key(&self) -> (u64, u32, Lsn) {
        (self.at_unix_ns, self.shard, self.lsn)
    }
}

/// Retained messages, sessions and the messages they reference: a shard's (or, merged, a
/// node's) durable state.
///
/// Build it with [`State::apply`] for every record in log order, then call
/// [`State::finish`]; or take it from [`crate::recover`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Messages by id. After [`State::finish`]: exactly those something references.
    pub messages: AHashMap<MessageId, StoredMessage>,
    /// Retained entries by topic. After [`State::finish`]: live ones only (no tombstones).
    pub retained: BTreeMap<ByteStr, RetainedEntry>,
    /// Sessions by client identifier.
    pub sessions: AHashMap<ByteStr, StoredSession>,
    /// The next message id to allocate (one past the highest seen).
    pub next_message_id: MessageId,
    /// Records that referred to something the state did not hold (a session never created, a
    /// delivery number or packet id it never saw). Zero for a log written by the rules; a
    /// damaged or cut log may cause some. The record is ignored.
    pub anomalies: u64,
    /// References to messages no replayed record put, dropped by [`State::finish`].
    pub dangling: u64,
}

impl State {
    /// An empty state.
    pub fn new() -> State {
        State::default()
    }

    /// Applies one record of shard `shard`'s log at `lsn`. Within one log the later record
    /// wins; `shard` and `lsn` only order retained changes across shards (see [`State::merge`]).
    pub fn apply(&mut self, shard: u32, lsn: Lsn, record: Record) {
        match record {
            Record::MessagePut { id, message } => {
                self.next_message_id = self.next_message_id.max(id + 1);
                self.messages.insert(id, message);
            }
            Record::RetainedSet {
                topic,
                message,
                at_unix_ns,
            } => {
                self.next_message_id = self.next_message_id.max(message + 1);
                self.retained.insert(
                    topic,
                    RetainedEntry {
                        message: Some(message),
                        at_unix_ns,
                        shard,
                        lsn,
                    },
                );
            }
            Record::RetainedClear { topic, at_unix_ns } => {
                self.retained.insert(
                    topic,
                    RetainedEntry {
                        message: None,
                        at_unix_ns,
                        shard,
                        lsn,
                    },
                );
            }
            Record::SessionImage(s) => {
                for id in s.message_ids() {
                    self.next_message_id = self.next_message_id.max(id + 1);
                }
                self.sessions.insert(s.client_id.clone(), *s);
            }
            Record::SessionDelete { client_id } => {
                if self.sessions.remove(&client_id).is_none() {
                    self.anomalies += 1;
                }
            }
            Record::Attached {
                client_id,
                protocol,
                expiry_secs,
                will,
                at_unix_ms,
            } => {
                let s = match self.sessions.get_mut(client_id.as_str()) {
                    Some(s) => s,
                    None => self
                        .sessions
                        .entry(client_id.clone())
                        .or_insert_with(|| StoredSession::new(client_id, protocol, expiry_secs)),
                };
                s.protocol = protocol;
                s.expiry_secs = expiry_secs;
                s.will = will;
                s.disconnected_at_unix_ms = None;
                s.updated_unix_ms = at_unix_ms;
            }
            other => self.apply_session_change(other),
        }
    }

    fn apply_session_change(&mut self, record: Record) {
        let Some(client_id) = record.client_id().cloned() else {
            unreachable!("message and retained records are applied by State::apply")
        };
        let Some(s) = self.sessions.get_mut(client_id.as_str()) else {
            self.anomalies += 1;
            return;
        };
        let known = match record {
            Record::Detached { at_unix_ms, .. } => {
                s.disconnected_at_unix_ms = Some(at_unix_ms);
                s.updated_unix_ms = at_unix_ms;
                true
            }
            Record::Expiry { expiry_secs, .. } => {
                s.expiry_secs = expiry_secs;
                true
            }
            Record::WillCleared { .. } => s.will.take().is_some(),
            Record::Subscribed {
                filter,
                subscription,
                ..
            } => {
                match s.subscriptions.iter_mut().find(|(f, _)| *f == filter) {
                    Some(entry) => entry.1 = subscription,
                    None => s.subscriptions.push((filter, subscription)),
                }
                true
            }
            Record::Unsubscribed { filter, .. } => {
                let before = s.subscriptions.len();
                s.subscriptions.retain(|(f, _)| *f != filter);
                s.subscriptions.len() != before
            }
            Record::Enqueued { delivery, .. } => {
                self.next_message_id = self.next_message_id.max(delivery.message + 1);
                s.last_seq = s.last_seq.max(delivery.seq);
                s.queue.push_back(delivery);
                true
            }
            Record::Sent { seq, pkid, .. } => match s.queue.iter().position(|d| d.seq == seq) {
                Some(i) => {
                    let delivery = s.queue.remove(i).expect("position is in range");
                    s.inflight.push(StoredInflight {
                        pkid,
                        released: false,
                        delivery,
                    });
                    true
                }
                None => false,
            },
            Record::Dropped { seq, .. } => match s.queue.iter().position(|d| d.seq == seq) {
                Some(i) => {
                    s.queue.remove(i);
                    true
                }
                None => false,
            },
            Record::Released { pkid, .. } => match s.inflight.iter_mut().find(|i| i.pkid == pkid) {
                Some(i) => {
                    i.released = true;
                    true
                }
                None => false,
            },
            Record::Completed { pkid, .. } => {
                let before = s.inflight.len();
                s.inflight.retain(|i| i.pkid != pkid);
                s.inflight.len() != before
            }
            Record::RelAwaited { pkid, .. } => {
                if !s.awaiting_rel.contains(&pkid) {
                    s.awaiting_rel.push(pkid);
                }
                true
            }
            Record::RelDone { pkid, .. } => {
                let before = s.awaiting_rel.len();
                s.awaiting_rel.retain(|p| *p != pkid);
                s.awaiting_rel.len() != before
            }
            Record::MessagePut { .. }
            | Record::RetainedSet { .. }
            | Record::RetainedClear { .. }
            | Record::SessionImage(_)
            | Record::SessionDelete { .. }
            | Record::Attached { .. } => unreachable!("applied by State::apply"),
        };
        if !known {
            self.anomalies += 1;
        }
    }

    /// Ends a replay: drops tombstones, drops references to messages never put (counting them
    /// in [`State::dangling`]) and drops messages nothing references.
    pub fn finish(&mut self) {
        let messages = &self.messages;
        let mut dangling = 0u64;
        self.retained.retain(|_, e| match e.message {
            None => false,
            Some(id) => {
                let ok = messages.contains_key(&id);
                dangling += u64::from(!ok);
                ok
            }
        });
        for s in self.sessions.values_mut() {
            s.inflight.retain(|i| {
                let ok = messages.contains_key(&i.delivery.message);
                dangling += u64::from(!ok);
                ok
            });
            s.queue.retain(|d| {
                let ok = messages.contains_key(&d.message);
                dangling += u64::from(!ok);
                ok
            });
        }
        self.dangling += dangling;
        if self.messages.is_empty() {
            return;
        }
        let mut live: AHashSet<MessageId> = AHashSet::with_capacity(self.messages.len());
        live.extend(self.retained.values().filter_map(|e| e.message));
        for s in self.sessions.values() {
            live.extend(s.message_ids());
        }
        self.messages.retain(|id, _| live.contains(id));
    }

    /// Merges the (unfinished) states of several shard directories into one node state, then
    /// finishes it. Message ids are renumbered from 1 when there are several parts (ids are per
    /// shard log, so two directories may use the same one). Retained: per topic the change
    /// with the greatest `(at_unix_ns, shard, lsn)` wins, tombstones included. Sessions: a
    /// client id held by several directories keeps the one with the greatest
    /// `(updated_unix_ms, shard)`.
    pub fn merge(mut parts: Vec<(u32, State)>) -> State {
        parts.sort_by_key(|(shard, _)| *shard);
        if parts.len() == 1 {
            // One log: its ids are already unique.
            let (_, mut st) = parts.pop().expect("one part");
            st.finish();
            return st;
        }
        let mut out = State {
            next_message_id: 1,
            ..State::default()
        };
        out.messages
            .reserve(parts.iter().map(|(_, p)| p.messages.len()).sum());
        out.sessions
            .reserve(parts.iter().map(|(_, p)| p.sessions.len()).sum());
        for (_, mut part) in parts {
            // Renumber: old id -> new id, for every message this part puts.
            let mut ids: AHashMap<MessageId, MessageId> =
                AHashMap::with_capacity(part.messages.len());
            let mut olds: Vec<MessageId> = part.messages.keys().copied().collect();
            olds.sort_unstable();
            for old in olds {
                let m = part.messages.remove(&old).expect("key listed");
                let new = out.next_message_id;
                out.next_message_id += 1;
                ids.insert(old, new);
                out.messages.insert(new, m);
            }
            // Unknown ids become an id no message has, so finish() counts them dangling.
            let map = |id: MessageId| ids.get(&id).copied().unwrap_or(MessageId::MAX);
            for (topic, mut e) in part.retained {
                e.message = e.message.map(map);
                match out.retained.get(&topic) {
                    Some(cur) if cur.order_key() >= e.order_key() => {}
                    _ => {
                        out.retained.insert(topic, e);
                    }
                }
            }
            for (client_id, mut s) in part.sessions {
                for i in &mut s.inflight {
                    i.delivery.message = map(i.delivery.message);
                }
                for d in &mut s.queue {
                    d.message = map(d.message);
                }
                // Parts come in shard order: on equal times the later (higher) shard wins.
                match out.sessions.get_mut(&client_id) {
                    Some(cur) if cur.updated_unix_ms > s.updated_unix_ms => {}
                    Some(cur) => *cur = s,
                    None => {
                        out.sessions.insert(client_id, s);
                    }
                }
            }
            out.anomalies += part.anomalies;
            out.dangling += part.dangling;
        }
        out.finish();
        out
    }

    /// Splits a finished state over `shard_count` shards: each session goes to
    /// `owner_of_client(client_id)`, each retained topic to `owner_of_topic(topic)` (the shard
    /// whose log will hold it), each with the messages it references (a message referenced
    /// from two shards is copied into both). Every part keeps this state's `next_message_id`.
    pub fn split(
        mut self,
        shard_count: usize,
        owner_of_client: impl Fn(&str) -> usize,
        owner_of_topic: impl Fn(&str) -> usize,
    ) -> Vec<State> {
        assert!(shard_count > 0, "split over zero shards");
        if shard_count == 1 {
            return vec![self];
        }
        let mut parts: Vec<State> = (0..shard_count)
            .map(|_| State {
                next_message_id: self.next_message_id,
                ..State::default()
            })
            .collect();
        // Each message moves to the last part that needs it and is copied for the others.
        let mut messages = std::mem::take(&mut self.messages);
        let mut refs: AHashMap<MessageId, u32> = AHashMap::with_capacity(messages.len());
        let ids = self.retained.values().filter_map(|e| e.message);
        for id in ids.chain(self.sessions.values().flat_map(|s| s.message_ids())) {
            *refs.entry(id).or_default() += 1;
        }
        let mut copy = |part: &mut State, id: MessageId| {
            let Some(left) = refs.get_mut(&id) else {
                return;
            };
            *left -= 1;
            let m = if *left == 0 {
                messages.remove(&id)
            } else {
                messages.get(&id).cloned()
            };
            if let Some(m) = m {
                part.messages.entry(id).or_insert(m);
            }
        };
        for (topic, e) in std::mem::take(&mut self.retained) {
            let owner = owner_of_topic(topic.as_str());
            assert!(owner < shard_count, "topic owner {owner} out of range");
            if let Some(id) = e.message {
                copy(&mut parts[owner], id);
            }
            parts[owner].retained.insert(topic, e);
        }
        for (client_id, s) in std::mem::take(&mut self.sessions) {
            let owner = owner_of_client(client_id.as_str());
            assert!(owner < shard_count, "session owner {owner} out of range");
            for id in s.message_ids() {
                copy(&mut parts[owner], id);
            }
            parts[owner].sessions.insert(client_id, s);
        }
        parts
    }

    /// The records that rebuild this (finished) state from nothing: every message, then
    /// every retained entry, then every session image. Deterministic order (by id, topic,
    /// client id), so equal states give equal snapshots.
    pub fn snapshot_records(&self) -> impl Iterator<Item = Record> + '_ {
        let mut ids: Vec<&MessageId> = self.messages.keys().collect();
        ids.sort_unstable();
        let mut clients: Vec<&ByteStr> = self.sessions.keys().collect();
        clients.sort_unstable();
        let messages = ids.into_iter().map(|id| Record::MessagePut {
            id: *id,
            message: self.messages[id].clone(),
        });
        let retained = self.retained.iter().filter_map(|(topic, e)| {
            e.message.map(|message| Record::RetainedSet {
                topic: topic.clone(),
                message,
                at_unix_ns: e.at_unix_ns,
            })
        });
        let sessions = clients
            .into_iter()
            .map(|c| Record::SessionImage(Box::new(self.sessions[c].clone())));
        messages.chain(retained).chain(sessions)
    }

    /// The state with its replay details (`shard`/`lsn` of retained entries, anomaly counts)
    /// cleared, for comparing two states that should hold the same data.
    pub fn normalized(&self) -> State {
        let mut s = self.clone();
        for e in s.retained.values_mut() {
            e.shard = 0;
            e.lsn = 0;
        }
        s.anomalies = 0;
        s.dangling = 0;
        s
    }
}
