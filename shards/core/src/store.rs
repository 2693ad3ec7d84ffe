//! A shard's side of durability, without I/O: turns its sessions' journal changes
//! ([`shardmq_broker::session::Change`]) and its retained changes into
//! [`shardmq_store::Record`]s, messages stored once (by id, through the shard's
//! [`MessageTable`]), and appends them to the shard's [`LogWriter`]. The writer task (glommio
//! file I/O) takes the batches; the returned LSNs are the durable gates of the output that
//! depends on them (docs/durability.md).
//!
//! Time comes in as an argument ([`Clock`]): the broker's messages expire at an `Instant`, the
//! store keeps wall-clock milliseconds.

use shardmq_broker::session::{Change, InflightMessage, QueuedMessage, SessionImage, Subscription};
use shardmq_broker::Message;
use shardmq_codec::ByteStr;
use shardmq_store::{
    LogWriter, MessageTable, Record, StoredDelivery, StoredInflight, StoredMessage, StoredSession,
    StoredSubscription,
};
use smallvec::SmallVec;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A message as the shard's table knows it: the `Arc` itself, compared by pointer, held so that
/// its address is never reused while the table tracks it.
#[derive(Debug, Clone)]
pub struct MsgKey(pub Arc<Message>);

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
pub trait WillForm {
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
pub struct Clock {
    /// Monotonic time of the step (message expiry in the broker).
    pub now: Instant,
    /// Wall-clock time of the step, ns since the Unix epoch.
    pub unix_ns: u64,
}

impl Clock {
    fn unix_ms(&self) -> u64 {
        self.unix_ns / 1_000_000
    }
}

/// A message as stored: its expiry moved from the monotonic clock to the wall clock.
pub fn stored_message(msg: &Message, clock: Clock) -> StoredMessage {
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

/// The store's form of a session: `image` with each message named by the id `id_of` gives it.
/// `clock` dates the record (its disconnect and update times).
pub fn stored_session(
    image: &SessionImage,
    clock: Clock,
    id_of: impl FnMut(&Arc<Message>) -> u64,
) -> StoredSession {
    let disconnected_at = (!image.connected).then(|| clock.unix_ms());
    session_record(image, disconnected_at, clock, id_of)
}

/// `image` as a store record, disconnected at `disconnected_at_unix_ms` (`None`: connected).
fn session_record(
    image: &SessionImage,
    disconnected_at_unix_ms: Option<u64>,
    clock: Clock,
    mut id_of: impl FnMut(&Arc<Message>) -> u64,
) -> StoredSession {
    let mut delivery = |m: &QueuedMessage| StoredDelivery {
        seq: m.seq,
        message: id_of(&m.msg),
        qos: m.qos,
        retain: m.retain,
        sub_ids: m.sub_ids.clone(),
        shared: m.shared.clone(),
    };
    let mut s = StoredSession::new(image.client_id.clone(), image.protocol, image.expiry_secs);
    s.disconnected_at_unix_ms = disconnected_at_unix_ms;
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
            delivery: delivery(&m.message),
        })
        .collect();
    s.queue = image.queue.iter().map(&mut delivery).collect();
    s.awaiting_rel = image.awaiting_rel.clone();
    s.will = image.will.clone().map(WillForm::from_will);
    s.last_seq = image.last_seq;
    s
}

/// The broker's form of a stored session (detached), its messages looked up by id in `arcs`;
/// a delivery whose message is missing is left out.
pub fn session_image_of(
    s: StoredSession,
    arcs: &ahash::AHashMap<u64, Arc<Message>>,
) -> SessionImage {
    let queued = |d: StoredDelivery| {
        Some(QueuedMessage {
            seq: d.seq,
            msg: arcs.get(&d.message)?.clone(),
            qos: d.qos,
            retain: d.retain,
            sub_ids: d.sub_ids,
            shared: d.shared,
        })
    };
    SessionImage {
        client_id: s.client_id,
        protocol: s.protocol,
        expiry_secs: s.expiry_secs,
        connected: false,
        subscriptions: s
            .subscriptions
            .into_iter()
            .map(|(f, sub)| {
                (
                    f,
                    Subscription {
                        options: sub.options,
                        id: sub.id,
                    },
                )
            })
            .collect(),
        inflight: s
            .inflight
            .into_iter()
            .filter_map(|i| {
                Some(InflightMessage {
                    pkid: i.pkid,
                    released: i.released,
                    message: queued(i.delivery)?,
                })
            })
            .collect(),
        queue: s.queue.into_iter().filter_map(queued).collect(),
        awaiting_rel: s.awaiting_rel,
        will: s.will.map(WillForm::into_will),
        last_seq: s.last_seq,
    }
}

/// A stored message back in the broker's terms: its wall-clock expiry on the monotonic clock.
pub fn message_of(m: &StoredMessage, clock: Clock) -> Message {
    let now_unix_ms = clock.unix_ms();
    Message {
        topic: m.topic.clone(),
        payload: m.payload.clone(),
        qos: m.qos,
        retain: m.retain,
        properties: m.properties.clone(),
        expires_at: m
            .expires_at_unix_ms
            .map(|t| clock.now + Duration::from_millis(t.saturating_sub(now_unix_ms))),
        publisher: m.publisher.clone(),
    }
}

/// Most bytes a session's wire image may take (its queue is bounded by the session limits;
/// this bounds what a peer can make a node buffer).
pub const SESSION_WIRE_MAX: usize = 256 << 20;

/// A session as it travels to another node (a session move, docs/cluster.md): the store's
/// records, one `MessagePut` per distinct message, then its `SessionImage`, so the move reuses
/// the log's checksummed format and its decoder.
pub fn encode_session(image: &SessionImage, clock: Clock) -> bytes::Bytes {
    let mut ids: ahash::AHashMap<*const Message, u64> = Default::default();
    let mut records = Vec::new();
    let stored = stored_session(image, clock, |m| {
        let next = ids.len() as u64 + 1;
        *ids.entry(Arc::as_ptr(m)).or_insert_with(|| {
            records.push(Record::MessagePut {
                id: next,
                message: stored_message(m, clock),
            });
            next
        })
    });
    records.push(Record::SessionImage(Box::new(stored)));
    let mut out = bytes::BytesMut::new();
    shardmq_store::encode_batch(&records, 1, &mut out);
    out.freeze()
}

/// Why a session's wire image was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionWireError {
    /// A frame or record did not decode.
    #[error(transparent)]
    Decode(#[from] shardmq_store::DecodeError),
    /// The records were not messages followed by one session.
    #[error("not a session image: {0}")]
    Shape(&'static str),
}

/// The session [`encode_session`] wrote, detached, its messages rebuilt against `clock`.
pub fn decode_session(buf: &[u8], clock: Clock) -> Result<SessionImage, SessionWireError> {
    let mut records = shardmq_store::decode_batch(buf, 1)?;
    let Some(Record::SessionImage(session)) = records.pop() else {
        return Err(SessionWireError::Shape("no session record last"));
    };
    let mut arcs: ahash::AHashMap<u64, Arc<Message>> = Default::default();
    for r in records {
        let Record::MessagePut { id, message } = r else {
            return Err(SessionWireError::Shape("a record other than a message"));
        };
        arcs.insert(id, Arc::new(message_of(&message, clock)));
    }
    Ok(session_image_of(*session, &arcs))
}

/// Number of a group commit (batch) of a shard's log, counted from 1: output that depends on
/// a stored change waits until the batch that holds it is durable.
pub type Ticket = u64;

/// Most records one batch stages before they are handed to the writer in one go (the bound of
/// the staging area; a full area is flushed into the writer, which coalesces nothing more).
pub const STAGED_RECORDS_MAX: usize = 1 << 20;

/// A session's deliveries staged in the open batch, which a completion within the same batch
/// cancels (enqueued, sent and acknowledged before anything was written: nothing to store).
#[derive(Debug, Default)]
struct ClientStage {
    /// (delivery number, index of its `Enqueued` in the staging area).
    enqueued: Vec<(u64, usize)>,
    /// (packet id, delivery number, index of its `Sent`, index of its `Released` if any).
    sent: Vec<(u16, u64, usize, Option<usize>)>,
}

/// A shard's log: the writer, its message table, the staging area of the open batch, and the
/// counters `/metrics` shows.
///
/// Records are staged, not encoded, until the writer task takes the batch
/// ([`ShardLog::take_batch`]): a delivery enqueued, sent and completed (or dropped) within one
/// open batch is never written, nor is its message when nothing else references it. Output
/// that depends on a change waits for [`ShardLog::ticket`] to become durable.
pub struct ShardLog {
    pub writer: LogWriter,
    table: MessageTable<MsgKey>,
    /// Records accepted since start-up (staged, including those later coalesced away).
    pub records: u64,
    /// Records that cancelled out before they were written.
    pub coalesced: u64,
    /// The open batch's records in order; `None`: cancelled.
    staged: Vec<Option<Record>>,
    /// Per client: its cancellable staged deliveries.
    stages: ahash::AHashMap<ByteStr, ClientStage>,
    /// Message id → (index of its staged `MessagePut`, staged records that reference it and
    /// are not cancelled). The put is cancelled only when both the table's count and this
    /// one reach 0: every prefix of the batch then still resolves what it references.
    puts: ahash::AHashMap<u64, (usize, u64)>,
    /// Staged deliveries sent and awaiting their acknowledgement: each may still cancel out.
    awaiting: usize,
    /// Retained topics whose latest change this log holds, with that change (message, or
    /// `None`: a clear, kept until one compaction pass re-wrote it) and its time: what a
    /// compaction pass re-writes.
    retained_owned: ahash::AHashMap<ByteStr, (Option<Arc<Message>>, u64)>,
    /// The batch collecting changes now.
    open: Ticket,
    /// Something was staged into `open`.
    open_dirty: bool,
    /// The batch the writer task is writing.
    in_flight: Option<Ticket>,
    /// Every batch up to this one is durable.
    durable: Ticket,
}

impl ShardLog {
    pub fn new(writer: LogWriter, table: MessageTable<MsgKey>) -> ShardLog {
        ShardLog {
            writer,
            table,
            records: 0,
            coalesced: 0,
            staged: Vec::new(),
            stages: Default::default(),
            puts: Default::default(),
            awaiting: 0,
            retained_owned: Default::default(),
            open: 1,
            open_dirty: false,
            in_flight: None,
            durable: 0,
        }
    }

    fn append(&mut self, record: Record) -> usize {
        if self.staged.len() >= STAGED_RECORDS_MAX {
            self.flush();
        }
        self.records += 1;
        self.open_dirty = true;
        self.staged.push(Some(record));
        self.staged.len() - 1
    }

    /// The batch that will hold every change accepted so far, if it is not durable yet: the
    /// gate of output that depends on them.
    pub fn ticket(&self) -> Option<Ticket> {
        if self.open_dirty {
            Some(self.open)
        } else {
            self.in_flight
        }
    }

    /// Whether batch `t` is durable.
    pub fn is_durable(&self, t: Ticket) -> bool {
        t <= self.durable
    }

    /// Whether changes wait for [`ShardLog::take_batch`].
    pub fn has_pending(&self) -> bool {
        self.open_dirty
    }

    /// Encodes the staged records into the writer (nothing more coalesces with them).
    pub fn flush(&mut self) {
        for r in self.staged.drain(..).flatten() {
            self.writer.append(&r);
        }
        self.stages.clear();
        self.puts.clear();
        self.awaiting = 0;
    }

    /// Closes the open batch: its number and what to write (`None`: everything in it cancelled
    /// out; it is durable already). One batch at a time.
    pub fn take_batch(&mut self) -> (Ticket, Option<shardmq_store::Batch>) {
        assert!(self.in_flight.is_none(), "one batch at a time");
        self.flush();
        let t = self.open;
        self.open += 1;
        self.open_dirty = false;
        match self.writer.take_batch() {
            Some(b) => {
                self.in_flight = Some(t);
                (t, Some(b))
            }
            None => {
                self.durable = t;
                (t, None)
            }
        }
    }

    /// Batch `t` (`batch`) is written and fdatasynced.
    pub fn batch_durable(&mut self, t: Ticket, batch: &shardmq_store::Batch) {
        assert_eq!(self.in_flight, Some(t), "durable: the batch in flight");
        self.writer.batch_written(batch.last_lsn);
        self.writer.batch_durable(batch.last_lsn);
        self.in_flight = None;
        self.durable = t;
    }

    /// One more reference to `msg`: its id, with a `MessagePut` staged first if the log
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
            let at = self.append(put);
            self.puts.insert(r.id, (at, 1));
        } else if let Some(p) = self.puts.get_mut(&r.id) {
            p.1 += 1;
        }
        r.id
    }

    /// One reference fewer to `msg` (nothing is written; replay drops what nothing references).
    /// A message this shard's table does not hold (a retained message another shard stored)
    /// is left alone. The last reference to a message whose put is still staged, with no
    /// staged record referencing it any more, cancels the put.
    fn release(&mut self, msg: &Arc<Message>) {
        let key = MsgKey(msg.clone());
        if let Some(id) = self.table.id_of(&key) {
            if self.table.release(&key) && self.puts.get(&id).is_some_and(|p| p.1 == 0) {
                let (at, _) = self.puts.remove(&id).expect("staged put");
                self.cancel([at]);
            }
        }
    }

    /// `client_id`'s staged records no longer cancel out (an image or a delete follows them).
    fn unstage(&mut self, client_id: &ByteStr) {
        if let Some(cs) = self.stages.remove(client_id) {
            assert!(
                self.awaiting >= cs.sent.len(),
                "staged deliveries are counted"
            );
            self.awaiting -= cs.sent.len();
        }
    }

    /// Staged deliveries sent and awaiting their acknowledgement (the writer task may wait a
    /// little for them before it takes the batch: each one acknowledged meanwhile is not
    /// written).
    pub fn awaiting(&self) -> usize {
        self.awaiting
    }

    /// Cancels staged records (they were never written).
    fn cancel(&mut self, at: impl IntoIterator<Item = usize>) {
        for i in at {
            debug_assert!(self.staged[i].is_some());
            self.staged[i] = None;
            self.coalesced += 1;
        }
    }

    /// A completion (`pkid`) or a drop (`seq`) of a delivery whose records are all staged:
    /// cancels them and returns true (the completion itself is not written either).
    fn cancel_delivery(
        &mut self,
        client_id: &ByteStr,
        pkid: Option<u16>,
        seq: Option<u64>,
    ) -> bool {
        let Some(cs) = self.stages.get_mut(client_id) else {
            return false;
        };
        let mut cancel: SmallVec<[usize; 3]> = SmallVec::new();
        let seq = match (pkid, seq) {
            (Some(pkid), _) => {
                let Some(i) = cs.sent.iter().position(|s| s.0 == pkid) else {
                    return false;
                };
                let (_, seq, sent, rel) = cs.sent.swap_remove(i);
                assert!(self.awaiting > 0, "a staged delivery is counted");
                self.awaiting -= 1;
                cancel.push(sent);
                cancel.extend(rel);
                seq
            }
            (None, Some(seq)) => {
                if cs.sent.iter().any(|s| s.1 == seq) {
                    return false;
                }
                seq
            }
            (None, None) => return false,
        };
        let Some(i) = cs.enqueued.iter().position(|e| e.0 == seq) else {
            return false;
        };
        let enqueued = cs.enqueued.swap_remove(i).1;
        cancel.push(enqueued);
        if let Some(Record::Enqueued { delivery, .. }) = &self.staged[enqueued] {
            if let Some(p) = self.puts.get_mut(&delivery.message) {
                assert!(p.1 > 0, "a staged put of the message is counted");
                p.1 -= 1;
            }
        }
        self.cancel(cancel);
        true
    }

    /// Stages the records of `changes` (drained from session `client_id`'s journal, oldest
    /// first) and empties it; a delivery completed or dropped before its batch is taken
    /// cancels out.
    pub fn session_changes(
        &mut self,
        client_id: &ByteStr,
        changes: &mut Vec<Change>,
        clock: Clock,
    ) {
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
                Change::Enqueued(m) => {
                    let delivery = self.delivery(&m, clock);
                    let at = self.append(Record::Enqueued {
                        client_id: client_id.clone(),
                        delivery,
                    });
                    let cs = self.stages.entry(client_id).or_default();
                    cs.enqueued.push((m.seq, at));
                    continue;
                }
                Change::Sent { seq, pkid } => {
                    let at = self.append(Record::Sent {
                        client_id: client_id.clone(),
                        seq,
                        pkid,
                    });
                    if let Some(cs) = self.stages.get_mut(&client_id) {
                        if cs.enqueued.iter().any(|e| e.0 == seq) {
                            cs.sent.push((pkid, seq, at, None));
                            self.awaiting += 1;
                        }
                    }
                    continue;
                }
                Change::Dropped { seq, msg } => {
                    let cancelled = self.cancel_delivery(&client_id, None, Some(seq));
                    self.release(&msg);
                    if cancelled {
                        continue;
                    }
                    Record::Dropped { client_id, seq }
                }
                Change::Released { pkid } => {
                    let at = self.append(Record::Released {
                        client_id: client_id.clone(),
                        pkid,
                    });
                    if let Some(cs) = self.stages.get_mut(&client_id) {
                        if let Some(s) = cs.sent.iter_mut().find(|s| s.0 == pkid) {
                            s.3 = Some(at);
                        }
                    }
                    continue;
                }
                Change::Completed { pkid, msg } => {
                    let cancelled = self.cancel_delivery(&client_id, Some(pkid), None);
                    self.release(&msg);
                    if cancelled {
                        continue;
                    }
                    Record::Completed { client_id, pkid }
                }
                Change::RelAwaited { pkid } => Record::RelAwaited { client_id, pkid },
                Change::RelDone { pkid } => Record::RelDone { client_id, pkid },
            };
            self.append(record);
        }
    }

    /// Appends the whole session (it became durable here: a new persistent session, or one
    /// handed over from another shard). Takes a reference to every message it holds.
    pub fn session_image(&mut self, image: &SessionImage, clock: Clock) {
        let s = stored_session(image, clock, |m| self.acquire(m, clock));
        // What was staged for the session before stays: the image replaces it on replay.
        self.unstage(&image.client_id);
        self.append(Record::SessionImage(Box::new(s)));
    }

    /// Appends the end of a session (expired, clean start, taken to another shard) and drops
    /// its references (`image`: what it held).
    pub fn session_deleted(&mut self, image: &SessionImage) {
        self.unstage(&image.client_id);
        for m in &image.inflight {
            self.release(&m.message.msg);
        }
        for m in &image.queue {
            self.release(&m.msg);
        }
        self.append(Record::SessionDelete {
            client_id: image.client_id.clone(),
        });
    }

    /// Appends a retained change made by a PUBLISH this shard received: `msg` (the detached
    /// copy every replica stores) or `None` to clear; `previous` is what this shard's replica
    /// held for the topic.
    pub fn retained(
        &mut self,
        topic: &ByteStr,
        msg: Option<&Arc<Message>>,
        previous: Option<&Arc<Message>>,
        clock: Clock,
    ) {
        if let Some(prev) = previous {
            self.release(prev);
        }
        self.retained_owned
            .insert(topic.clone(), (msg.cloned(), clock.unix_ns));
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
        self.append(record);
    }

    /// Another shard's change, made at `other_unix_ns`, replaced retained `topic` in this
    /// shard's replica: if this log holds an older change of the topic, a clear just before
    /// the other one (which wins on merge; within this log the clear is the later record)
    /// keeps this log self-consistent. A newer change of ours stays (it wins on merge).
    /// Returns whether a record was staged.
    pub fn retained_replaced(&mut self, topic: &ByteStr, other_unix_ns: u64) -> bool {
        match self.retained_owned.get(topic) {
            Some(&(_, ours)) if ours < other_unix_ns => {}
            _ => return false,
        }
        let (msg, ours) = self.retained_owned.remove(topic).expect("owned");
        if let Some(m) = &msg {
            self.release(m);
        }
        self.append(Record::RetainedClear {
            topic: topic.clone(),
            at_unix_ns: ours.max(other_unix_ns - 1),
        });
        true
    }

    /// A recovered retained topic this log holds.
    pub fn adopt_retained(&mut self, topic: &ByteStr, msg: &Arc<Message>, at_unix_ns: u64) {
        self.retained_owned
            .insert(topic.clone(), (Some(msg.clone()), at_unix_ns));
    }

    /// Starts a compaction pass (the staged records go first: they belong before it); returns
    /// the retained topics it re-writes.
    pub fn begin_compaction(&mut self) -> (shardmq_store::CompactionPass, Vec<ByteStr>) {
        self.flush();
        let pass = self.writer.begin_compaction();
        self.table.begin_pass(pass.from_segment);
        (pass, self.retained_owned.keys().cloned().collect())
    }

    /// A reference a compaction image writes: the message's id, put again if its last put is
    /// in a segment the pass makes obsolete; the reference count does not change.
    fn touch(&mut self, msg: &Arc<Message>, clock: Clock) -> u64 {
        let key = MsgKey(msg.clone());
        let Some(r) = self.table.touch(&key, self.writer.current_segment()) else {
            // Not this table's (cannot happen for what this log holds): stored afresh.
            return self.acquire(msg, clock);
        };
        if r.needs_put {
            let at = self.append(Record::MessagePut {
                id: r.id,
                message: stored_message(msg, clock),
            });
            self.puts.insert(r.id, (at, 1));
        } else if let Some(p) = self.puts.get_mut(&r.id) {
            p.1 += 1;
        }
        r.id
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

    /// Compaction: re-writes a stored session whole (`disconnected_at_unix_ms`: when it went
    /// offline, `None` if connected), without taking references.
    pub fn compact_session(
        &mut self,
        image: &SessionImage,
        disconnected_at_unix_ms: Option<u64>,
        clock: Clock,
    ) {
        let s = session_record(image, disconnected_at_unix_ms, clock, |m| {
            self.touch(m, clock)
        });
        self.unstage(&image.client_id);
        self.append(Record::SessionImage(Box::new(s)));
    }

    /// Compaction: re-writes retained `topic` as this log holds it (a clear is written once
    /// more, then forgotten).
    pub fn compact_retained(&mut self, topic: &ByteStr, clock: Clock) {
        let Some((msg, at_unix_ns)) = self.retained_owned.get(topic).cloned() else {
            return;
        };
        let record = match msg {
            Some(m) => Record::RetainedSet {
                topic: topic.clone(),
                message: self.touch(&m, clock),
                at_unix_ns,
            },
            None => {
                self.retained_owned.remove(topic);
                Record::RetainedClear {
                    topic: topic.clone(),
                    at_unix_ns,
                }
            }
        };
        self.append(record);
    }

    /// Messages the table tracks (each stored once however many sessions queue it).
    pub fn messages(&self) -> usize {
        self.table.len()
    }

    /// Takes over a recovered message: `refs` references to it are in the shard's snapshot,
    /// whose first segment is `put_segment`.
    pub fn adopt(&mut self, msg: &Arc<Message>, id: u64, refs: u64, put_segment: u64) {
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
        let (_, batch) = log.take_batch();
        let batch = batch.expect("something appended");
        let mut bytes = BytesMut::new();
        for w in &batch.writes {
            bytes.extend_from_slice(&w.bytes);
        }
        // Frames: length (u32 LE), CRC32C (u32 LE), payload; LSNs count from the batch's first.
        let mut records = Vec::new();
        let mut off = if batch.writes[0].create {
            shardmq_store::format::SEGMENT_HEADER_LEN
        } else {
            0
        };
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
        log.session_changes(s.client_id(), &mut changes, c);
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

    /// A session that is journaled, with its image staged.
    fn session(log: &mut ShardLog, id: &str, c: Clock) -> Session {
        let mut s = Session::new(id.into(), Protocol::V5, 3600);
        s.enable_journal();
        log.session_image(&s.image(), c);
        s
    }

    fn deliver(log: &mut ShardLog, s: &mut Session, m: &Arc<Message>, c: Clock) {
        s.deliver(
            c.now,
            m,
            QoS::AtLeastOnce,
            false,
            &[],
            &Limits::default(),
            None,
        );
        let mut changes = Vec::new();
        s.drain_changes(&mut changes);
        log.session_changes(s.client_id(), &mut changes, c);
    }

    fn sent_and_completed(log: &mut ShardLog, s: &Session, seq: u64, m: &Arc<Message>, c: Clock) {
        let mut changes = vec![
            Change::Sent {
                seq,
                pkid: seq as u16,
            },
            Change::Completed {
                pkid: seq as u16,
                msg: m.clone(),
            },
        ];
        log.session_changes(s.client_id(), &mut changes, c);
    }

    #[test]
    fn a_delivery_acknowledged_before_its_batch_is_taken_is_never_written() {
        let c = clock();
        let mut log = log();
        let mut s = session(&mut log, "a", c);
        let (t0, b) = log.take_batch();
        let b = b.expect("the image");
        log.batch_durable(t0, &b);
        assert_eq!(log.ticket(), None);
        let m = msg(1, None, c);
        deliver(&mut log, &mut s, &m, c);
        let t = log.ticket().expect("something staged");
        assert!(!log.is_durable(t));
        sent_and_completed(&mut log, &s, 1, &m, c);
        assert_eq!(log.messages(), 0);
        // put + enqueued + sent cancelled, completed never staged
        assert_eq!(log.coalesced, 3);
        let (t1, b) = log.take_batch();
        assert_eq!(t1, t);
        assert!(b.is_none(), "nothing left to write");
        assert!(log.is_durable(t), "an empty batch is durable at once");
        assert_eq!(log.ticket(), None);
    }

    #[test]
    fn a_delivery_written_in_an_earlier_batch_is_completed_in_the_log() {
        let c = clock();
        let mut log = log();
        let mut s = session(&mut log, "a", c);
        let m = msg(1, None, c);
        deliver(&mut log, &mut s, &m, c);
        let (t, b) = log.take_batch();
        log.batch_durable(t, &b.expect("image + delivery"));
        sent_and_completed(&mut log, &s, 1, &m, c);
        let (state, records) = replay(&mut log);
        assert!(
            matches!(records[..], [Record::Sent { .. }, Record::Completed { .. }]),
            "{records:?}"
        );
        assert!(state.sessions.is_empty() || state.sessions["a"].inflight.is_empty());
    }

    #[test]
    fn a_message_another_staged_record_references_keeps_its_put() {
        let c = clock();
        let mut log = log();
        let mut a = session(&mut log, "a", c);
        let mut b = session(&mut log, "b", c);
        let m = msg(1, None, c);
        deliver(&mut log, &mut a, &m, c);
        deliver(&mut log, &mut b, &m, c);
        // b goes away (its delivery stays staged, before its delete), a acknowledges.
        log.session_deleted(&b.image());
        sent_and_completed(&mut log, &a, 1, &m, c);
        assert_eq!(log.messages(), 0);
        let (state, records) = replay(&mut log);
        let puts = records
            .iter()
            .filter(|r| matches!(r, Record::MessagePut { .. }))
            .count();
        assert_eq!(puts, 1, "b's staged delivery still resolves: {records:?}");
        assert_eq!(state.dangling, 0);
        assert!(state.sessions["a"].inflight.is_empty() && state.sessions["a"].queue.is_empty());
        // Every prefix of the batch resolves its references.
        for n in 0..=records.len() {
            let mut st = State::new();
            for (lsn, r) in records[..n].iter().cloned().enumerate() {
                st.apply(0, lsn as u64, r);
            }
            st.finish();
            assert_eq!(st.dangling, 0, "prefix {n}");
        }
    }

    #[test]
    fn a_retained_message_is_not_cancelled_by_a_delivery() {
        let c = clock();
        let mut log = log();
        let mut a = session(&mut log, "a", c);
        let topic: ByteStr = "t".into();
        let m = msg(1, None, c);
        log.retained(&topic, Some(&m), None, c);
        deliver(&mut log, &mut a, &m, c);
        sent_and_completed(&mut log, &a, 1, &m, c);
        let (state, _) = replay(&mut log);
        assert!(state.retained["t"].message.is_some());
        assert_eq!(state.dangling, 0);
    }

    #[test]
    fn a_retained_topic_another_shard_replaced_is_cleared_only_if_ours_is_older() {
        let c = clock();
        let mut log = log();
        let topic: ByteStr = "t".into();
        let m = msg(1, None, c);
        log.retained(&topic, Some(&m), None, c);
        // Another shard's change older than ours (concurrent writes): ours stays.
        assert!(!log.retained_replaced(&topic, c.unix_ns - 5));
        assert_eq!(log.messages(), 1);
        // A newer one: our log clears the topic just before it.
        assert!(log.retained_replaced(&topic, c.unix_ns + 10));
        assert_eq!(log.messages(), 0);
        let (state, records) = replay(&mut log);
        assert!(
            matches!(records.last(), Some(Record::RetainedClear { at_unix_ns, .. }) if *at_unix_ns == c.unix_ns + 9),
            "{records:?}"
        );
        assert!(state.retained.get("t").is_none_or(|e| e.message.is_none()));
        assert!(
            !log.retained_replaced(&topic, c.unix_ns + 20),
            "not ours any more"
        );
    }
}
