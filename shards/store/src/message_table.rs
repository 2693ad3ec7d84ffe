//! The runtime's side of "messages are stored once": which message has which id, how many
//! stored references it has, and whether its put is still in the segments that will be kept.

use crate::record::{MessageId, SegmentSeq};
use std::collections::HashMap;
use std::hash::Hash;

/// Most messages one shard's table tracks at once; [`MessageTable::acquire`] asserts it (the
/// broker's queue and retained limits bound the real number far below).
pub const MESSAGE_TABLE_MAX: usize = 1 << 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    id: MessageId,
    refs: u64,
    put_segment: SegmentSeq,
}

/// What to write for a reference to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRef {
    /// The message's id, for the record that references it.
    pub id: MessageId,
    /// Append a [`crate::Record::MessagePut`] for it first: it is new, or its last put is in a
    /// segment that a running compaction will delete.
    pub needs_put: bool,
}

/// Per shard: message key → stored id, reference count, segment of its last put.
///
/// `K` must keep the message alive while it is in the table, so that a key is never reused
/// for another message: e.g. a wrapper around `Arc<Message>` that hashes and compares by
/// pointer (`Arc::as_ptr`), holding the `Arc`.
///
/// # Driving it
/// - Before appending a record that adds a reference (an [`crate::Record::Enqueued`], a
///   [`crate::Record::RetainedSet`], each delivery of a [`crate::Record::SessionImage`] of a
///   session new to the store): [`MessageTable::acquire`]; if `needs_put`, append the
///   `MessagePut` first.
/// - When a reference goes away (a `Completed` inflight, a `Dropped` delivery, a replaced or
///   cleared retained topic, each delivery of a deleted session):
///   [`MessageTable::release`].
/// - Compaction: after [`crate::LogWriter::begin_compaction`] returns `K`, call
///   [`MessageTable::begin_pass`]`(K)`; when re-imaging a session or retained topic, call
///   [`MessageTable::touch`] for each message it references and put it if told to.
/// - After a restart, [`MessageTable::adopt`] every message of the shard's recovered state
///   (its snapshot put them all).
#[derive(Debug)]
pub struct MessageTable<K> {
    slots: HashMap<K, Slot>,
    next_id: MessageId,
    keep_from: SegmentSeq,
}

impl<K: Hash + Eq> MessageTable<K> {
    /// An empty table allocating ids from `next_id` (the recovered
    /// [`crate::State::next_message_id`], at least 1).
    pub fn new(next_id: MessageId) -> MessageTable<K> {
        MessageTable {
            slots: HashMap::new(),
            next_id: next_id.max(1),
            keep_from: 0,
        }
    }

    /// Messages tracked.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no message is tracked.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The next id to allocate.
    pub fn next_id(&self) -> MessageId {
        self.next_id
    }

    /// Adds a message the recovered state holds under `id`, with `refs` references, put in
    /// segment `put_segment` (the shard's first snapshot segment).
    pub fn adopt(&mut self, key: K, id: MessageId, refs: u64, put_segment: SegmentSeq) {
        assert!(refs > 0, "an adopted message is referenced");
        self.next_id = self.next_id.max(id + 1);
        let old = self.slots.insert(
            key,
            Slot {
                id,
                refs,
                put_segment,
            },
        );
        assert!(old.is_none(), "message adopted twice");
    }

    /// One more stored reference to `key`; `current_segment` is
    /// [`crate::LogWriter::current_segment`].
    pub fn acquire(&mut self, key: K, current_segment: SegmentSeq) -> MessageRef {
        let keep_from = self.keep_from;
        let next_id = &mut self.next_id;
        let len = self.slots.len();
        let mut new = false;
        let slot = self.slots.entry(key).or_insert_with(|| {
            assert!(len < MESSAGE_TABLE_MAX, "message table full");
            new = true;
            let id = *next_id;
            *next_id += 1;
            Slot {
                id,
                refs: 0,
                put_segment: current_segment,
            }
        });
        slot.refs += 1;
        let needs_put = new || slot.put_segment < keep_from;
        if needs_put {
            slot.put_segment = current_segment;
        }
        MessageRef {
            id: slot.id,
            needs_put,
        }
    }

    /// For a re-image during compaction: the message's id and whether to put it again; the
    /// reference count does not change. `None` if the table does not hold `key`.
    pub fn touch(&mut self, key: &K, current_segment: SegmentSeq) -> Option<MessageRef> {
        let keep_from = self.keep_from;
        let slot = self.slots.get_mut(key)?;
        let needs_put = slot.put_segment < keep_from;
        if needs_put {
            slot.put_segment = current_segment;
        }
        Some(MessageRef {
            id: slot.id,
            needs_put,
        })
    }

    /// One stored reference fewer; returns true when it was the last (the message leaves the
    /// table; nothing is written: replay drops unreferenced messages by itself).
    pub fn release(&mut self, key: &K) -> bool {
        let slot = self
            .slots
            .get_mut(key)
            .expect("release of a message the table does not hold");
        assert!(slot.refs > 0);
        slot.refs -= 1;
        if slot.refs == 0 {
            self.slots.remove(key);
            true
        } else {
            false
        }
    }

    /// The id of `key`, if tracked.
    pub fn id_of(&self, key: &K) -> Option<MessageId> {
        self.slots.get(key).map(|s| s.id)
    }

    /// A compaction pass started at segment `from_segment`: messages last put before it are
    /// put again at their next reference or touch.
    pub fn begin_pass(&mut self, from_segment: SegmentSeq) {
        self.keep_from = self.keep_from.max(from_segment);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_once_then_referenced() {
        let mut t: MessageTable<u32> = MessageTable::new(1);
        let a = t.acquire(7, 1);
        assert_eq!(
            a,
            MessageRef {
                id: 1,
                needs_put: true
            }
        );
        let b = t.acquire(7, 1);
        assert_eq!(
            b,
            MessageRef {
                id: 1,
                needs_put: false
            }
        );
        assert_eq!(t.acquire(8, 1).id, 2);
        assert!(!t.release(&7));
        assert!(t.release(&7));
        assert_eq!(t.id_of(&7), None);
        // Ids are never reused.
        assert_eq!(
            t.acquire(7, 1),
            MessageRef {
                id: 3,
                needs_put: true
            }
        );
    }

    #[test]
    fn compaction_puts_old_messages_again_once() {
        let mut t: MessageTable<u32> = MessageTable::new(10);
        t.adopt(1, 4, 2, 1);
        assert_eq!(t.next_id(), 10);
        t.acquire(2, 3);
        t.begin_pass(4);
        assert_eq!(
            t.touch(&1, 4),
            Some(MessageRef {
                id: 4,
                needs_put: true
            })
        );
        assert_eq!(
            t.touch(&1, 4),
            Some(MessageRef {
                id: 4,
                needs_put: false
            })
        );
        assert_eq!(
            t.acquire(2, 5),
            MessageRef {
                id: 10,
                needs_put: true
            }
        );
        assert_eq!(
            t.acquire(2, 5),
            MessageRef {
                id: 10,
                needs_put: false
            }
        );
        assert_eq!(t.touch(&99, 5), None);
    }

    #[test]
    #[should_panic(expected = "does not hold")]
    fn release_of_an_unknown_message_is_a_bug() {
        let mut t: MessageTable<u32> = MessageTable::new(1);
        t.release(&1);
    }
}
