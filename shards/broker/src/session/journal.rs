//! The session's change journal: what changed in a persistent session, as plain events the
//! shard drains after each call and turns into storage records.
//!
//! Off by default and free when off: a session without a journal carries one null pointer
//! (`Option<Box<Journal>>`) and every hook is a single `is_some` check. The runtime turns it on
//! ([`Session::enable_journal`]) for sessions that outlive their connection (expiry ≠ 0) when
//! `storage.durability` is not `off`, writes the session's full [`SessionImage`] once, and from
//! then on appends the [`Change`]s it drains with [`Session::drain_changes`].
//!
//! Replaying a session's image followed by its changes, in order, with [`SessionImage::apply`]
//! gives the session's image at that point: every prefix of the sequence is a consistent
//! session (the property the store's recovery relies on; tested in this module).
//!
//! QoS 0 messages are not journaled: a QoS 0 message queued for an offline session is lost on
//! a restart, which MQTT allows (at most once).

use super::{Flow, OutState, Outgoing, Queued, Session, SubMap, Subscription};
use crate::message::Message;
use shardmq_codec::{ByteStr, LastWill, Protocol, QoS};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::sync::Arc;

/// Most changes a journal holds before the shard drains it. The shard drains after every call
/// into the session, and one call makes at most a few changes per message it touches (bounded
/// by the inflight window and the queue); the bound catches a runtime that forgot to drain.
pub const JOURNAL_CHANGES_MAX: usize = 1 << 20;

/// A QoS 1/2 message a session must deliver, as the journal and the image name it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedMessage {
    /// The session's number for this delivery (1, 2, …; unique within the session, increasing
    /// in queue order). Later changes refer to it.
    pub seq: u64,
    /// The message (stored once by the runtime, referenced by every session that queues it).
    pub msg: Arc<Message>,
    /// QoS of this delivery (the minimum of the message's and the subscription's).
    pub qos: QoS,
    /// RETAIN flag of this delivery.
    pub retain: bool,
    /// Subscription identifiers of this delivery.
    pub sub_ids: SmallVec<[u32; 1]>,
    /// The shared subscription (`$share/...`) that chose this session, if one did.
    pub shared: Option<ByteStr>,
}

/// An outgoing QoS 1/2 message the client has not fully acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct InflightMessage {
    /// Packet identifier it was sent with.
    pub pkid: u16,
    /// QoS 2 only: the client sent PUBREC and we sent PUBREL (waiting for PUBCOMP).
    pub released: bool,
    /// The delivery.
    pub message: QueuedMessage,
}

/// One change to a journaled session, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A connection took the session (CONNECT without Clean Start, or a new session's first
    /// connection): protocol, expiry and will are the connection's.
    Attached {
        /// Protocol of the connection.
        protocol: Protocol,
        /// Session expiry interval, seconds.
        expiry_secs: u32,
        /// Will message of the connection.
        will: Option<Box<LastWill>>,
    },
    /// The connection went away; the runtime stamps the wall-clock time (session expiry and
    /// will delay resume from it after a restart).
    Detached,
    /// DISCONNECT changed the session expiry interval.
    Expiry(u32),
    /// The will was taken (published, delayed by the shard, or dropped on a normal
    /// DISCONNECT).
    WillCleared,
    /// A subscription was added or its options replaced.
    Subscribed {
        /// The filter.
        filter: ByteStr,
        /// Options and identifier.
        subscription: Subscription,
    },
    /// A subscription was removed.
    Unsubscribed {
        /// The filter.
        filter: ByteStr,
    },
    /// A QoS 1/2 message was queued for the session (at the back of its queue).
    Enqueued(QueuedMessage),
    /// Queued delivery `seq` was sent with packet id `pkid` and now awaits acknowledgement.
    Sent {
        /// The delivery.
        seq: u64,
        /// Its packet identifier.
        pkid: u16,
    },
    /// Queued delivery `seq` left the queue unsent (displaced by a newer one, expired, too
    /// large for the client, or given back to its shared group).
    Dropped {
        /// The delivery.
        seq: u64,
        /// Its message (the store drops its reference).
        msg: Arc<Message>,
    },
    /// The client sent PUBREC for `pkid` (QoS 2); PUBREL sent.
    Released {
        /// Packet identifier.
        pkid: u16,
    },
    /// The outgoing message `pkid` is done (PUBACK, PUBCOMP, a refusing PUBREC) or was
    /// discarded (too large for a new connection, given back to its shared group).
    Completed {
        /// Packet identifier.
        pkid: u16,
        /// Its message (the store drops its reference).
        msg: Arc<Message>,
    },
    /// An incoming QoS 2 PUBLISH `pkid` was accepted (PUBREC sent): a repeat must not be routed
    /// again until PUBREL.
    RelAwaited {
        /// Packet identifier.
        pkid: u16,
    },
    /// PUBREL for `pkid` arrived (PUBCOMP sent).
    RelDone {
        /// Packet identifier.
        pkid: u16,
    },
}

/// The journal a session keeps while it is durable.
#[derive(Debug, Default)]
pub(super) struct Journal {
    changes: Vec<Change>,
    last_seq: u64,
}

impl Journal {
    fn push(&mut self, change: Change) {
        assert!(
            self.changes.len() < JOURNAL_CHANGES_MAX,
            "session journal not drained"
        );
        self.changes.push(change);
    }
}

/// A whole session as the store keeps it: what [`Session::image`] returns, what
/// [`Session::from_image`] rebuilds from, and what [`SessionImage::apply`] updates.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionImage {
    /// Client identifier.
    pub client_id: ByteStr,
    /// Protocol of the last connection.
    pub protocol: Protocol,
    /// Session expiry interval, seconds.
    pub expiry_secs: u32,
    /// Whether a connection was attached (a restored session is always detached; the runtime
    /// uses the wall-clock time of the last [`Change::Detached`] for its expiry).
    pub connected: bool,
    /// Subscriptions, in the order they were made.
    pub subscriptions: Vec<(ByteStr, Subscription)>,
    /// Outgoing messages awaiting acknowledgement, oldest first.
    pub inflight: Vec<InflightMessage>,
    /// Queued QoS 1/2 messages, oldest first.
    pub queue: Vec<QueuedMessage>,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub awaiting_rel: Vec<u16>,
    /// The will, while the session holds one.
    pub will: Option<LastWill>,
    /// Highest delivery number used so far.
    pub last_seq: u64,
}

impl SessionImage {
    /// An empty session.
    pub fn new(client_id: ByteStr, protocol: Protocol, expiry_secs: u32) -> SessionImage {
        SessionImage {
            client_id,
            protocol,
            expiry_secs,
            connected: false,
            subscriptions: Vec::new(),
            inflight: Vec::new(),
            queue: Vec::new(),
            awaiting_rel: Vec::new(),
            will: None,
            last_seq: 0,
        }
    }

    /// Applies one change. Changes that refer to what the image does not hold (a delivery
    /// number or packet id it never saw) are ignored, so a store may leave some out.
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::Attached {
                protocol,
                expiry_secs,
                will,
            } => {
                self.protocol = *protocol;
                self.expiry_secs = *expiry_secs;
                self.will = will.as_deref().cloned();
                self.connected = true;
            }
            Change::Detached => self.connected = false,
            Change::Expiry(secs) => self.expiry_secs = *secs,
            Change::WillCleared => self.will = None,
            Change::Subscribed {
                filter,
                subscription,
            } => match self.subscriptions.iter_mut().find(|(f, _)| f == filter) {
                Some(entry) => entry.1 = *subscription,
                None => self.subscriptions.push((filter.clone(), *subscription)),
            },
            Change::Unsubscribed { filter } => self.subscriptions.retain(|(f, _)| f != filter),
            Change::Enqueued(m) => {
                self.last_seq = self.last_seq.max(m.seq);
                self.queue.push(m.clone());
            }
            Change::Sent { seq, pkid } => {
                if let Some(i) = self.queue.iter().position(|m| m.seq == *seq) {
                    let message = self.queue.remove(i);
                    self.inflight.push(InflightMessage {
                        pkid: *pkid,
                        released: false,
                        message,
                    });
                }
            }
            Change::Dropped { seq, .. } => self.queue.retain(|m| m.seq != *seq),
            Change::Released { pkid } => {
                if let Some(m) = self.inflight.iter_mut().find(|m| m.pkid == *pkid) {
                    m.released = true;
                }
            }
            Change::Completed { pkid, .. } => self.inflight.retain(|m| m.pkid != *pkid),
            Change::RelAwaited { pkid } => {
                if !self.awaiting_rel.contains(pkid) {
                    self.awaiting_rel.push(*pkid);
                }
            }
            Change::RelDone { pkid } => {
                // As the session removes it (the order is the session's, for equality).
                if let Some(i) = self.awaiting_rel.iter().position(|p| p == pkid) {
                    self.awaiting_rel.swap_remove(i);
                }
            }
        }
    }
}

fn queued_message(item: &Queued) -> QueuedMessage {
    QueuedMessage {
        seq: item.seq,
        msg: item.msg.clone(),
        qos: item.qos,
        retain: item.retain,
        sub_ids: item.sub_ids.clone(),
        shared: item.shared.clone(),
    }
}

fn queued(m: QueuedMessage) -> Queued {
    Queued {
        msg: m.msg,
        qos: m.qos,
        retain: m.retain,
        sub_ids: m.sub_ids,
        shared: m.shared,
        seq: m.seq,
    }
}

impl Session {
    /// Starts journaling this session's changes (no effect if it already does). Messages it
    /// already holds get delivery numbers, so that the [`Session::image`] the runtime writes
    /// next names them.
    pub fn enable_journal(&mut self) {
        if self.journal.is_some() {
            return;
        }
        let mut journal = Box::<Journal>::default();
        if let Some(flow) = self.flow.as_deref_mut() {
            let items = flow
                .inflight
                .iter_mut()
                .map(|o| &mut o.item)
                .chain(flow.queue.iter_mut());
            for item in items {
                if item.seq == 0 {
                    journal.last_seq += 1;
                    item.seq = journal.last_seq;
                } else {
                    journal.last_seq = journal.last_seq.max(item.seq);
                }
            }
        }
        self.journal = Some(journal);
    }

    /// Stops journaling and forgets undrained changes (the session is no longer stored).
    pub fn disable_journal(&mut self) {
        self.journal = None;
    }

    /// Whether the session journals its changes.
    pub fn is_journaled(&self) -> bool {
        self.journal.is_some()
    }

    /// Moves the changes made since the last call to the end of `out`, oldest first. Nothing
    /// (and no cost) when the journal is off.
    pub fn drain_changes(&mut self, out: &mut Vec<Change>) {
        if let Some(j) = &mut self.journal {
            out.append(&mut j.changes);
        }
    }

    /// Whether changes wait to be drained.
    pub fn has_changes(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| !j.changes.is_empty())
    }

    /// The whole session as the store keeps it. Call after [`Session::enable_journal`] so
    /// that every message has its delivery number.
    pub fn image(&self) -> SessionImage {
        SessionImage {
            client_id: self.client_id.clone(),
            protocol: self.protocol,
            expiry_secs: self.expiry_secs,
            connected: self.conn.is_some(),
            subscriptions: self
                .subscriptions
                .iter()
                .map(|(f, s)| (f.clone(), *s))
                .collect(),
            inflight: self
                .inflight()
                .filter(|o| o.item.qos != QoS::AtMostOnce)
                .map(|o| InflightMessage {
                    pkid: o.pkid,
                    released: o.state == OutState::Released,
                    message: queued_message(&o.item),
                })
                .collect(),
            queue: self
                .flow
                .iter()
                .flat_map(|f| f.queue.iter())
                .filter(|q| q.qos != QoS::AtMostOnce)
                .map(queued_message)
                .collect(),
            awaiting_rel: self.awaiting_rel().to_vec(),
            will: self.will.as_deref().cloned(),
            last_seq: self.journal.as_ref().map_or(0, |j| j.last_seq),
        }
    }

    /// A detached session rebuilt from the store, with its journal on. Its messages are resent
    /// (DUP) when a connection attaches, as after any reconnect.
    pub fn from_image(image: SessionImage) -> Session {
        let mut s = Session::new(image.client_id, image.protocol, image.expiry_secs);
        let mut subs = SubMap::new();
        for (f, sub) in image.subscriptions {
            subs.insert(f, sub);
        }
        s.subscriptions = subs;
        let flow = Flow {
            inflight: image
                .inflight
                .into_iter()
                .map(|m| Outgoing {
                    pkid: m.pkid,
                    state: if m.released {
                        OutState::Released
                    } else {
                        OutState::Published
                    },
                    item: queued(m.message),
                })
                .collect::<VecDeque<_>>(),
            queue: image.queue.into_iter().map(queued).collect(),
            awaiting_rel: SmallVec::from_vec(image.awaiting_rel),
            aliases_in: Default::default(),
        };
        s.next_pkid = flow.inflight.back().map_or(0, |o| o.pkid);
        s.will = image.will.map(Box::new);
        let mut journal = Box::new(Journal {
            changes: Vec::new(),
            last_seq: image.last_seq,
        });
        for item in flow
            .inflight
            .iter()
            .map(|o| &o.item)
            .chain(flow.queue.iter())
        {
            journal.last_seq = journal.last_seq.max(item.seq);
        }
        s.journal = Some(journal);
        // A session with nothing in flight is stored and restored without flow state.
        s.flow = (!flow.is_empty()).then(|| Box::new(flow));
        s
    }

    // ---- hooks, called by the session's own code ---------------------------------------

    #[inline]
    pub(super) fn journal_push(&mut self, change: impl FnOnce() -> Change) {
        if let Some(j) = &mut self.journal {
            j.push(change());
        }
    }

    /// `item` entered the queue.
    #[inline]
    pub(super) fn journal_enqueued(&mut self, item: &mut Queued) {
        let Some(j) = &mut self.journal else { return };
        if item.qos == QoS::AtMostOnce {
            return;
        }
        j.last_seq += 1;
        item.seq = j.last_seq;
        j.push(Change::Enqueued(queued_message(item)));
    }

    /// `item` (queued before, or new) was sent with `pkid` and awaits acknowledgement.
    #[inline]
    pub(super) fn journal_sent(&mut self, item: &mut Queued, pkid: u16) {
        if self.journal.is_none() || item.qos == QoS::AtMostOnce {
            return;
        }
        if item.seq == 0 {
            self.journal_enqueued(item);
        }
        let seq = item.seq;
        self.journal_push(|| Change::Sent { seq, pkid });
    }

    /// `item` left the queue unsent.
    #[inline]
    pub(super) fn journal_dropped(&mut self, item: &Queued) {
        if item.seq != 0 && item.qos != QoS::AtMostOnce {
            let (seq, msg) = (item.seq, item.msg.clone());
            self.journal_push(|| Change::Dropped { seq, msg });
        }
    }
}

#[cfg(test)]
mod tests;
