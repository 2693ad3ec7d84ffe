//! A shard's side of durability, without I/O: turns its sessions' journal changes
//! ([`shardmq_broker::session::Change`]) and its retained changes into
//! [`shardmq_store::Record`]s, messages stored once (by id, through the shard's
//! [`MessageTable`]), and appends them to the shard's [`LogWriter`]. The writer task (glommio
//! file I/O) takes the batches; the returned LSNs are the durable gates of the output that
//! depends on them (docs/durability.md).
//!
//! Time comes in as an argument ([`Clock`]): the broker's messages expire at an `Instant`, the
//! store keeps wall-clock milliseconds.

use shardmq_broker::session::{Change, QueuedMessage, SessionImage};
use shardmq_broker::Message;
use shardmq_codec::ByteStr;
use shardmq_store::{
    LogWriter, Lsn, MessageTable, Record, StoredDelivery, StoredInflight, StoredMessage,
    StoredSession, StoredSubscription,
};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

/// A message as the shard's table knows it: the `Arc` itself, compared by pointer, held so that
/// its address is never reused while the table tracks it.
#[derive(Debug, Clone)]
pub(crate) struct MsgKey(pub(crate) Arc<Message>);

impl PartialEq for MsgKey {
    fn eq(&self, other: &MsgKey) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for MsgKey {}

impl Hash for MsgKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state)
    }
}

/// A will as the store's records hold it (by value or boxed: the store crate boxes it to
/// keep its records small), converted both ways.
pub(crate) trait WillForm {
    fn from_will(w: shardmq_codec::LastWill) -> Self;
    fn into_will(self) -> shardmq_codec::LastWill;
}

impl WillForm for shardmq_codec::LastWill {
    fn from_will(w: shardmq_codec::LastWill) -> Self {
        w
    }
    fn into_will(self) -> shardmq_codec::LastWill {
        self
    }
}

impl WillForm for Box<shardmq_codec::LastWill> {
    fn from_will(w: shardmq_codec::LastWill) -> Self {
        Box::new(w)
    }
    fn into_will(self) -> shardmq_codec::LastWill {
        *self
    }
}

/// The two clocks a record needs, read once per shard step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// Monotonic time of the step (message expiry in the broker).
    pub(crate) now: Instant,
    /// Wall-clock time of the step, ns since the Unix epoch.
    pub(crate) unix_ns: u64,
}

impl Clock {
    fn unix_ms(&self) -> u64 {
        self.unix_ns / 1_000_000
    }
}

/// A message as stored: its expiry moved from the monotonic clock to the wall clock.
pub(crate) fn stored_message(msg: &Message, clock: Clock) -> StoredMessage {
    StoredMessage {
        topic: msg.topic.clone(),
        payload: msg.payload.clone(),
        qos: msg.qos,
        retain: msg.retain,
        properties: msg.properties.clone(),
        expires_at_unix_ms: msg.expires_at.map(|t| {
            let left = t.saturating_duration_since(clock.now).as_millis() as u64;
            clock.unix_ms().saturating_add(left)
        }),
        publisher: msg.publisher.clone(),
    }
}

/// A shard's log: the writer, its message table, and the counters `/metrics` shows.
pub(crate) struct ShardLog {
    pub(crate) writer: LogWriter,
    table: MessageTable<MsgKey>,
    /// Records appended since start-up.
    pub(crate) records: u64,
    /// LSN of the last record appended, if any.
    pub(crate) last_lsn: Option<Lsn>,
}

impl ShardLog {
    pub(crate) fn new(writer: LogWriter, table: MessageTable<MsgKey>) -> ShardLog {
        ShardLog {
            writer,
            table,
            records: 0,
            last_lsn: None,
        }
    }

    fn append(&mut self, record: &Record) -> Lsn {
        let lsn = self.writer.append(record);
        self.records += 1;
        self.last_lsn = Some(lsn);
        lsn
    }

    /// One more reference to `msg`: its id, with a `MessagePut` appended first if the log
    /// needs one.
    fn acquire(&mut self, msg: &Arc<Message>, clock: Clock) -> u64 {
        let r = self
            .table
            .acquire(MsgKey(msg.clone()), self.writer.current_segment());
        if r.needs_put {
            let put = Record::MessagePut {
                id: r.id,
                message: stored_message(msg, clock),
            };
            self.append(&put);
        }
        r.id
    }

    /// One reference fewer to `msg` (nothing is written; replay drops what nothing references).
    /// A message this shard's table does not hold (a retained message another shard stored)
    /// is left alone.
    fn release(&mut self, msg: &Arc<Message>) {
        let key = MsgKey(msg.clone());
        if self.table.id_of(&key).is_some() {
            self.table.release(&key);
        }
    }

    fn delivery(&mut self, m: &QueuedMessage, clock: Clock) -> StoredDelivery {
        StoredDelivery {
            seq: m.seq,
            message: self.acquire(&m.msg, clock),
            qos: m.qos,
            retain: m.retain,
            sub_ids: m.sub_ids.clone(),
            shared: m.shared.clone(),
        }
    }

    /// Appends the records of `changes` (drained from session `client_id`'s journal, oldest
    /// first) and empties it. Returns the LSN of the last record appended, if any.
    pub(crate) fn session_changes(
        &mut self,
        client_id: &ByteStr,
        changes: &mut Vec<Change>,
        clock: Clock,
    ) -> Option<Lsn> {
        let mut last = None;
        for change in changes.drain(..) {
            let client_id = client_id.clone();
            let record = match change {
                Change::Attached {
                    protocol,
                    expiry_secs,
                    will,
                } => Record::Attached {
                    client_id,
                    protocol,
                    expiry_secs,
                    will: will.map(|w| WillForm::from_will(*w)),
                    at_unix_ms: clock.unix_ms(),
                },
                Change::Detached => Record::Detached {
                    client_id,
                    at_unix_ms: clock.unix_ms(),
                },
                Change::Expiry(expiry_secs) => Record::Expiry {
                    client_id,
                    expiry_secs,
                },
                Change::WillCleared => Record::WillCleared { client_id },
                Change::Subscribed {
                    filter,
                    subscription,
                } => Record::Subscribed {
                    client_id,
                    filter,
                    subscription: StoredSubscription {
                        options: subscription.options,
                        id: subscription.id,
                    },
                },
                Change::Unsubscribed { filter } => Record::Unsubscribed { client_id, filter },
                Change::Enqueued(m) => Record::Enqueued {
                    client_id,
                    delivery: self.delivery(&m, clock),
                },
                Change::Sent { seq, pkid } => Record::Sent {
                    client_id,
                    seq,
                    pkid,
                },
                Change::Dropped { seq, msg } => {
                    self.release(&msg);
                    Record::Dropped { client_id, seq }
                }
                Change::Released { pkid } => Record::Released { client_id, pkid },
                Change::Completed { pkid, msg } => {
                    self.release(&msg);
                    Record::Completed { client_id, pkid }
                }
                Change::RelAwaited { pkid } => Record::RelAwaited { client_id, pkid },
                Change::RelDone { pkid } => Record::RelDone { client_id, pkid },
            };
            last = Some(self.append(&record));
        }
        last
    }

    /// Appends the whole session (it became durable here: a new persistent session, or one
    /// handed over from another shard). Takes a reference to every message it holds.
    pub(crate) fn session_image(&mut self, image: &SessionImage, clock: Clock) -> Lsn {
        let mut s = StoredSession::new(image.client_id.clone(), image.protocol, image.expiry_secs);
        s.disconnected_at_unix_ms = (!image.connected).then(|| clock.unix_ms());
        s.updated_unix_ms = clock.unix_ms();
        s.subscriptions = image
            .subscriptions
            .iter()
            .map(|(f, sub)| {
                let stored = StoredSubscription {
                    options: sub.options,
                    id: sub.id,
                };
                (f.clone(), stored)
            })
            .collect();
        s.inflight = image
            .inflight
            .iter()
            .map(|m| StoredInflight {
                pkid: m.pkid,
                released: m.released,
                delivery: self.delivery(&m.message, clock),
            })
            .collect();
        s.queue = image
            .queue
            .iter()
            .map(|m| self.delivery(m, clock))
            .collect();
        s.awaiting_rel = image.awaiting_rel.clone();
        s.will = image.will.clone().map(WillForm::from_will);
        s.last_seq = image.last_seq;
        self.append(&Record::SessionImage(Box::new(s)))
    }

    /// Appends the end of a session (expired, clean start, taken to another shard) and drops
    /// its references (`image`: what it held).
    pub(crate) fn session_deleted(&mut self, image: &SessionImage) -> Lsn {
        for m in &image.inflight {
            self.release(&m.message.msg);
        }
        for m in &image.queue {
            self.release(&m.msg);
        }
        self.append(&Record::SessionDelete {
            client_id: image.client_id.clone(),
        })
    }

    /// Appends a retained change made by a PUBLISH this shard received: `msg` (the detached
    /// copy every replica stores) or `None` to clear; `previous` is what this shard's replica
    /// held for the topic.
    pub(crate) fn retained(
        &mut self,
        topic: &ByteStr,
        msg: Option<&Arc<Message>>,
        previous: Option<&Arc<Message>>,
        clock: Clock,
    ) -> Lsn {
        if let Some(prev) = previous {
            self.release(prev);
        }
        let record = match msg {
            Some(m) => Record::RetainedSet {
                topic: topic.clone(),
                message: self.acquire(m, clock),
                at_unix_ns: clock.unix_ns,
            },
            None => Record::RetainedClear {
                topic: topic.clone(),
                at_unix_ns: clock.unix_ns,
            },
        };
        self.append(&record)
    }

    /// Messages the table tracks (each stored once however many sessions queue it).
    pub(crate) fn messages(&self) -> usize {
        self.table.len()
    }

    /// Takes over a recovered message: `refs` references to it are in the shard's snapshot,
    /// whose first segment is `put_segment`.
    pub(crate) fn adopt(&mut self, msg: &Arc<Message>, id: u64, refs: u64, put_segment: u64) {
        self.table.adopt(MsgKey(msg.clone()), id, refs, put_segment);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use shardmq_broker::session::Session;
    use shardmq_broker::Limits;
    use shardmq_codec::{Protocol, QoS};
    use shardmq_store::{LogConfig, LogPosition, State};
    use std::time::Duration;

    fn log() -> ShardLog {
        let at = LogPosition {
            segments: vec![(1, 0)],
            next_lsn: 0,
        };
        ShardLog::new(
            LogWriter::new(LogConfig::new(0, 1), at),
            MessageTable::new(1),
        )
    }

    fn clock() -> Clock {
        Clock {
            now: Instant::now(),
            unix_ns: 1_700_000_000_000_000_000,
        }
    }

    fn msg(n: u8, expiry: Option<Duration>, clock: Clock) -> Arc<Message> {
        Arc::new(Message {
            topic: "t".into(),
            payload: Bytes::copy_from_slice(&[n]),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            expires_at: expiry.map(|d| clock.now + d),
            publisher: "p".into(),
        })
    }

    /// Replays the records the log appended into the store's state.
    fn replay(log: &mut ShardLog) -> (State, Vec<Record>) {
        let batch = log.writer.take_batch().expect("something appended");
        let mut bytes = BytesMut::new();
        for w in &batch.writes {
            bytes.extend_from_slice(&w.bytes);
        }
        // Frames: length (u32 LE), CRC32C (u32 LE), payload; LSNs count from the batch's first.
        let mut records = Vec::new();
        let mut off = shardmq_store::format::SEGMENT_HEADER_LEN;
        let mut lsn = batch.first_lsn;
        while off < bytes.len() {
            let len = u32::from_le_bytes(bytes[off..off + 4].try_into().expect("4 bytes")) as usize;
            let payload = &bytes[off + 8..off + 8 + len];
            let record = shardmq_store::decode_record(payload).expect("valid record");
            records.push((lsn, record));
            lsn += 1;
            off += 8 + len;
        }
        let mut state = State::new();
        for (lsn, r) in records.clone() {
            state.apply(0, lsn, r);
        }
        state.finish();
        (state, records.into_iter().map(|(_, r)| r).collect())
    }

    #[test]
    fn a_message_queued_for_two_sessions_is_stored_once_and_released_with_them() {
        let c = clock();
        let mut log = log();
        let limits = Limits::default();
        let m = msg(1, Some(Duration::from_secs(60)), c);
        let mut images = Vec::new();
        for id in ["a", "b"] {
            let mut s = Session::new(id.into(), Protocol::V5, 3600);
            s.enable_journal();
            log.session_image(&s.image(), c);
            s.deliver(c.now, &m, QoS::AtLeastOnce, false, &[], &limits, None);
            let mut changes = Vec::new();
            s.drain_changes(&mut changes);
            assert_eq!(changes.len(), 1);
            log.session_changes(s.client_id(), &mut changes, c);
            assert!(changes.is_empty());
            images.push(s.image());
        }
        assert_eq!(log.messages(), 1);
        let (state, records) = replay(&mut log);
        let puts = records
            .iter()
            .filter(|r| matches!(r, Record::MessagePut { .. }))
            .count();
        assert_eq!(puts, 1, "{records:?}");
        assert_eq!(state.sessions.len(), 2);
        let stored = state.messages.values().next().expect("one message");
        assert_eq!(
            stored.expires_at_unix_ms,
            Some(c.unix_ns / 1_000_000 + 60_000)
        );
        assert_eq!(state.sessions["a"].queue.len(), 1);
        for image in &images {
            log.session_deleted(image);
        }
        assert_eq!(log.messages(), 0);
    }

    #[test]
    fn an_acknowledged_delivery_releases_its_message() {
        let c = clock();
        let mut log = log();
        let limits = Limits::default();
        let mut s = Session::new("a".into(), Protocol::V5, 3600);
        s.enable_journal();
        log.session_image(&s.image(), c);
        let m = msg(1, None, c);
        s.deliver(c.now, &m, QoS::AtLeastOnce, false, &[], &limits, None);
        let mut changes = Vec::new();
        s.drain_changes(&mut changes);
        log.session_changes(s.client_id(), &mut changes, c);
        assert_eq!(log.messages(), 1);
        // Completed releases it: replay the Change by hand as the session would journal it.
        let mut changes = vec![
            Change::Sent { seq: 1, pkid: 1 },
            Change::Completed { pkid: 1, msg: m },
        ];
        let lsn = log.session_changes(s.client_id(), &mut changes, c);
        assert_eq!(lsn, log.last_lsn);
        assert_eq!(log.messages(), 0);
        let (state, _) = replay(&mut log);
        assert!(state.sessions["a"].inflight.is_empty());
        assert!(state.messages.is_empty());
    }

    #[test]
    fn a_replaced_retained_message_is_released() {
        let c = clock();
        let mut log = log();
        let topic: ByteStr = "r".into();
        let first = msg(1, None, c);
        let second = msg(2, None, c);
        log.retained(&topic, Some(&first), None, c);
        log.retained(&topic, Some(&second), Some(&first), c);
        assert_eq!(log.messages(), 1);
        // A retained message another shard stored is not this table's to release.
        log.retained(&topic, None, Some(&msg(3, None, c)), c);
        let (state, _) = replay(&mut log);
        // A clear is a tombstone (kept for merging, or dropped by finish): no message either way.
        assert!(state.retained.get("r").is_none_or(|e| e.message.is_none()));
        assert!(state.messages.is_empty());
    }
}
