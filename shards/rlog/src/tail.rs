//! A core's bounded tail of recent entries of one shard.

use std::collections::VecDeque;

use crate::{Entry, RlogShard};

/// The last `cap` entries a core applied on one shard. A replicant whose checkpoint is still
/// covered resumes from here instead of bootstrapping.
#[derive(Clone, Debug)]
pub struct ShardTail {
    shard: RlogShard,
    cap: usize,
    entries: VecDeque<Entry>,
    last_seq: u64,
}

impl ShardTail {
    /// An empty tail at seq 0 keeping at most `cap` entries.
    pub fn new(shard: RlogShard, cap: usize) -> Self {
        Self {
            shard,
            cap,
            entries: VecDeque::with_capacity(cap.min(4096)),
            last_seq: 0,
        }
    }

    /// Shard of this tail.
    pub fn shard(&self) -> RlogShard {
        self.shard
    }

    /// Appends the entry the core just applied, dropping the oldest beyond `cap`.
    ///
    /// # Panics
    /// If `e` is of another shard or `e.seq != last_seq() + 1`.
    pub fn push(&mut self, e: Entry) {
        assert_eq!(e.shard, self.shard, "tail: entry of another shard");
        assert_eq!(e.seq, self.last_seq + 1, "tail: entries must be contiguous");
        self.last_seq = e.seq;
        if self.cap == 0 {
            return;
        }
        if self.entries.len() == self.cap {
            self.entries.pop_front();
        }
        self.entries.push_back(e);
    }

    /// Seq of the last entry pushed (or given to [`ShardTail::reset_to`]).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Seq of the oldest entry held, if any.
    pub fn first_seq(&self) -> Option<u64> {
        self.entries.front().map(|e| e.seq)
    }

    /// Entries after `checkpoint` if the tail still covers `checkpoint + 1`, or an empty vector
    /// if `checkpoint >= last_seq()` (nothing to send yet: a replicant ahead of a lagging core
    /// waits for it). `None`: the entries are gone, bootstrap needed.
    pub fn since(&self, checkpoint: u64) -> Option<Vec<Entry>> {
        if checkpoint >= self.last_seq {
            return Some(Vec::new());
        }
        let first = self.first_seq()?;
        if checkpoint + 1 < first {
            return None;
        }
        let skip = usize::try_from(checkpoint + 1 - first).ok()?;
        Some(self.entries.iter().skip(skip).cloned().collect())
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops every entry and restarts at `seq`: for a core that installs a Raft snapshot (its
    /// tables jump to `seq`) or restarts. Streams opened before must be dropped (see
    /// [`crate::RlogServer::on_live`]); their replicants reconnect and resume or bootstrap.
    pub fn reset_to(&mut self, seq: u64) {
        self.entries.clear();
        self.last_seq = seq;
    }
}
