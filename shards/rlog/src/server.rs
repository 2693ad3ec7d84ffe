//! Core side of one replicant stream.

use std::collections::VecDeque;

use tracing::{debug, warn};

use crate::{Entry, Op, RlogError, RlogShard, ShardTail, Tables, ToReplicant};

/// The core side of one replicant's stream on one shard. Pure: the transport feeds it inputs
/// and sends what [`RlogServer::poll_transmit`] returns, in order.
///
/// - Inputs: [`RlogServer::on_live`] for every entry the core applies on this shard after
///   [`RlogServer::open`], in seq order; [`RlogServer::on_ack`] for every `BootstrapAck`.
/// - Output: [`RlogServer::poll_transmit`], drained after each input until `None`.
///
/// If the replicant's checkpoint is covered by the tail (or is at or past the core's seq), the
/// stream starts with `Resume { from: checkpoint }` followed by `Entries`. Otherwise it
/// bootstraps: `BootstrapBegin`, `BootstrapBatch`es (at most `window_batches` beyond the last
/// acknowledged one), `BootstrapEnd`; live entries are sent interleaved as `Entries` and the
/// replicant buffers them until the snapshot is complete.
///
/// The server buffers live entries the replicant has not taken yet; the transport should drop
/// the stream when [`RlogServer::pending`] grows past its limit (the replicant then resumes or
/// bootstraps again).
#[derive(Debug)]
pub struct RlogServer {
    shard: RlogShard,
    batch_max: usize,
    window_batches: usize,
    control: VecDeque<ToReplicant>,
    live: VecDeque<Entry>,
    /// Seq of the last entry the core applied (checked for contiguity).
    core_seq: u64,
    /// Entries up to this seq are already at the replicant (checkpoint or snapshot).
    floor_seq: u64,
    bootstrap: Option<Bootstrap>,
}

#[derive(Debug)]
struct Bootstrap {
    ops: VecDeque<Op>,
    /// Next batch number to send (1-based).
    next_batch: u64,
    total_batches: u64,
    acked: u64,
    end_sent: bool,
}

impl RlogServer {
    /// Starts a stream for a replicant that sent `Hello { checkpoint }`. `tables` and `tail`
    /// must be at the same seq on `shard`.
    ///
    /// # Panics
    /// If `batch_max` or `window_batches` is 0, if `tail` is of another shard, or if `tables`
    /// and `tail` disagree on the shard's seq.
    pub fn open(
        hello_checkpoint: Option<u64>,
        tables: &Tables,
        tail: &ShardTail,
        shard: RlogShard,
        batch_max: usize,
        window_batches: usize,
    ) -> Self {
        assert!(batch_max > 0, "batch_max must be > 0");
        assert!(window_batches > 0, "window_batches must be > 0");
        assert_eq!(tail.shard(), shard, "tail of another shard");
        assert_eq!(
            tables.seq(shard),
            tail.last_seq(),
            "tables and tail must be at the same seq"
        );
        let core_seq = tail.last_seq();
        let mut s = Self {
            shard,
            batch_max,
            window_batches,
            control: VecDeque::new(),
            live: VecDeque::new(),
            core_seq,
            floor_seq: core_seq,
            bootstrap: None,
        };
        let resume = hello_checkpoint.and_then(|cp| tail.since(cp).map(|entries| (cp, entries)));
        match resume {
            Some((cp, entries)) => {
                debug!(
                    shard = shard.name(),
                    checkpoint = cp,
                    core_seq,
                    "rlog resume"
                );
                s.control.push_back(ToReplicant::Resume { from: cp });
                s.floor_seq = cp.max(core_seq);
                s.live.extend(entries);
            }
            None => {
                let snap = tables.snapshot_shard(shard);
                let keys = snap.ops.len() as u64;
                let total_batches = keys.div_ceil(batch_max as u64);
                debug!(
                    shard = shard.name(),
                    checkpoint = ?hello_checkpoint,
                    seq = snap.seq,
                    keys,
                    "rlog bootstrap"
                );
                s.control.push_back(ToReplicant::BootstrapBegin {
                    seq: snap.seq,
                    keys,
                });
                s.bootstrap = Some(Bootstrap {
                    ops: snap.ops.into(),
                    next_batch: 1,
                    total_batches,
                    acked: 0,
                    end_sent: false,
                });
            }
        }
        s
    }

    /// Shard of this stream.
    pub fn shard(&self) -> RlogShard {
        self.shard
    }

    /// The core applied `e` on this shard.
    ///
    /// When the core's tables jump (it installs a Raft snapshot, [`ShardTail::reset_to`]), the
    /// shell must drop its replicant streams instead: the next entry would not be contiguous.
    /// [`RlogServer::try_on_live`] reports that case as an error instead of panicking.
    ///
    /// # Panics
    /// If `e` is of another shard or does not follow the previous entry.
    pub fn on_live(&mut self, e: Entry) {
        assert_eq!(e.shard, self.shard, "live entry of another shard");
        assert_eq!(e.seq, self.core_seq + 1, "live entries must be contiguous");
        self.core_seq = e.seq;
        if e.seq > self.floor_seq {
            self.live.push_back(e);
        }
    }

    /// Like [`RlogServer::on_live`] for a shell that cannot guarantee contiguity (a broadcast
    /// subscription racing with a Raft snapshot install): an entry at or below the last one
    /// seen is ignored, an entry that skips seqs is `Err(Gap)` and the shell must drop the
    /// stream (the replicant reconnects and resumes or bootstraps).
    pub fn try_on_live(&mut self, e: Entry) -> Result<(), RlogError> {
        if e.shard != self.shard {
            return Err(RlogError::Protocol("live entry of another shard"));
        }
        if e.seq <= self.core_seq {
            return Ok(());
        }
        if e.seq != self.core_seq + 1 {
            return Err(RlogError::Gap {
                shard: self.shard,
                have: self.core_seq,
                got: e.seq,
            });
        }
        self.on_live(e);
        Ok(())
    }

    /// The replicant acknowledged bootstrap batch `batch` (and every one before it). Acks of
    /// unsent batches are ignored.
    pub fn on_ack(&mut self, batch: u64) {
        match &mut self.bootstrap {
            Some(b) if batch < b.next_batch => b.acked = b.acked.max(batch),
            _ => warn!(
                shard = self.shard.name(),
                batch, "rlog: unexpected bootstrap ack"
            ),
        }
    }

    /// Next message to send, `None` when there is nothing to send now.
    pub fn poll_transmit(&mut self) -> Option<ToReplicant> {
        if let Some(m) = self.control.pop_front() {
            return Some(m);
        }
        if !self.live.is_empty() {
            let n = self.live.len().min(self.batch_max);
            return Some(ToReplicant::Entries(self.live.drain(..n).collect()));
        }
        let b = self.bootstrap.as_mut()?;
        if b.next_batch <= b.total_batches {
            if b.next_batch > b.acked + self.window_batches as u64 {
                return None;
            }
            let n = b.ops.len().min(self.batch_max);
            let ops: Vec<Op> = b.ops.drain(..n).collect();
            let batch = b.next_batch;
            b.next_batch += 1;
            return Some(ToReplicant::BootstrapBatch { batch, ops });
        }
        if !b.end_sent {
            b.end_sent = true;
            return Some(ToReplicant::BootstrapEnd);
        }
        None
    }

    /// Whether the snapshot is not yet completely sent and acknowledged.
    pub fn is_bootstrapping(&self) -> bool {
        self.bootstrap
            .as_ref()
            .is_some_and(|b| !b.end_sent || b.acked < b.total_batches)
    }

    /// Work not yet handed to the transport: live entries plus snapshot ops still to send.
    pub fn pending(&self) -> usize {
        self.live.len() + self.bootstrap.as_ref().map_or(0, |b| b.ops.len())
    }

    /// Seq of the last entry the core applied on this shard, as seen by this stream.
    pub fn core_seq(&self) -> u64 {
        self.core_seq
    }
}
