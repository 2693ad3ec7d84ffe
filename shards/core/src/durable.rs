//! A shard's durable side without I/O: the state a shard keeps for its log (its
//! [`ShardLog`], the output gates of `"sync"`, the cross-shard durable acknowledgements) and
//! the figures `/metrics` and `shardmq ctl storage status` show. The writer task and the
//! start-up recovery are the runtime's (`shardmq_shards`, `durable.rs`).

use crate::bus::ShardId;
use crate::shard::ConnKey;
use crate::store::{ShardLog, Ticket};
use shardmq_codec::ByteStr;
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `storage.durability` without `"off"` (off: no [`StorageSpec`] at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurabilityMode {
    /// Written in order, fdatasynced every `sync_interval`; acknowledgements do not wait.
    Async,
    /// Acknowledgements of stored changes wait for the fdatasync of their batch.
    Sync,
}

/// `[storage]`, validated by the binary's config layer.
#[derive(Debug, Clone)]
pub struct StorageSpec {
    /// The node's data folder; the shards' logs are in `<dir>/shards/<id>/`.
    pub dir: PathBuf,
    /// When acknowledgements may go out.
    pub mode: DurabilityMode,
    /// `Async`: how often the log is fdatasynced.
    pub sync_interval: Duration,
    /// A segment file is closed at this size (`storage.segment_bytes`).
    pub segment_bytes: u64,
    /// A shard compacts its log while serving once it is at least this big and 4 times what
    /// the last compaction left (`storage.compact_min_bytes`).
    pub compact_min_bytes: u64,
}

/// What start-up recovery gives one shard ([`ShardCore::restore`](crate::ShardCore::restore)).
#[derive(Debug)]
pub struct Restored<'a> {
    /// This shard's part: its state and where its log continues.
    pub start: shardmq_store::ShardStart,
    /// The node's storage generation.
    pub generation: u64,
    /// Every restored session's filters, with the shard that holds the session now: every
    /// shard's route replica starts with them, so no publish misses a restored subscriber.
    pub routes: &'a [(ByteStr, ShardId)],
    /// Every retained message, with the shard whose log holds it.
    pub retained: &'a [(ShardId, ByteStr, shardmq_store::StoredMessage)],
}

/// Name of the lock file in `storage.dir`: one live process per folder.
pub const LOCK_FILE: &str = "LOCK";

/// One shard's storage counters, updated by its writer task.
#[derive(Debug, Default)]
pub struct ShardStorageFigures {
    /// Bytes written to segment files.
    pub bytes_written: AtomicU64,
    /// fdatasync calls that succeeded.
    pub fsyncs: AtomicU64,
    /// Batches (group commits) made durable.
    pub batches: AtomicU64,
    /// Records made durable (÷ `batches`: the mean group-commit size).
    pub records: AtomicU64,
    /// Bytes of the shard's live segments.
    pub disk_bytes: AtomicU64,
    /// Messages the shard's log holds (each stored once, however many sessions queue it).
    pub messages: AtomicU64,
    /// Failed write or fdatasync attempts (full disk, I/O error).
    pub write_errors: AtomicU64,
    /// The last attempt failed: QoS ≥ 1 PUBLISHes are refused until a retry succeeds.
    pub failing: AtomicBool,
    /// Persistent (journaled) sessions the shard holds. While it is 0, `"sync"` publishers on
    /// other shards do not wait for this shard's durable acknowledgement: it stores nothing
    /// for them. Raised before such a session's routes are announced (the announcement's
    /// channel orders it before any publish routed by them), lowered when it leaves.
    pub persistent_sessions: AtomicU64,
    /// Records that cancelled out before their batch was written (a delivery enqueued, sent
    /// and acknowledged within one group commit, and its message if nothing else needs it).
    pub coalesced: AtomicU64,
}

/// The node's storage figures, shared between the shards and the control plane.
#[derive(Debug)]
pub struct StorageFigures {
    /// The storage folder.
    pub dir: PathBuf,
    /// The mode.
    pub mode: DurabilityMode,
    /// Start-up recovery time (recover, split, snapshot, commit), milliseconds.
    pub recovery_ms: u64,
    /// Sessions restored at start-up.
    pub restored_sessions: u64,
    /// Retained messages restored at start-up.
    pub restored_retained: u64,
    /// Bytes recovery found damaged (torn or corrupt tails cut off).
    pub recovery_cut_records: u64,
    /// Per shard.
    pub shards: Vec<ShardStorageFigures>,
    /// Shards whose disk refuses writes now: while any does, every shard refuses QoS ≥ 1
    /// PUBLISHes (one disk, one answer).
    pub failing_shards: std::sync::atomic::AtomicUsize,
}

impl StorageFigures {
    /// Sum of a counter over the shards.
    pub fn total(&self, f: impl Fn(&ShardStorageFigures) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum()
    }

    /// Whether any shard's disk refuses writes now.
    pub fn failing(&self) -> bool {
        self.shards
            .iter()
            .any(|s| s.failing.load(Ordering::Relaxed))
    }
}

/// Output a connection may not write before some stored change is durable: bytes from
/// `start` on wait until the shard's batch `ticket` is durable and every peer shard in
/// `marks` acknowledged the publishes this shard sent it up to that number.
#[derive(Debug)]
pub struct Gate {
    /// Offset in the connection's output, counted from when its gates began.
    pub start: u64,
    pub ticket: Option<Ticket>,
    pub marks: SmallVec<[(u8, u64); 2]>,
}

/// A connection's gates (boxed: a connection without any costs one pointer).
#[derive(Debug, Default)]
pub struct ConnGates {
    /// Bytes of output written since the gates began.
    pub taken: u64,
    pub gates: VecDeque<Gate>,
    /// On the shard's list of connections to wake when durability moves.
    pub listed: bool,
}

/// Most gates one connection holds; beyond it the newest gate's position moves (merging
/// gates only delays output, never releases it early).
pub const CONN_GATES_MAX: usize = 1024;

/// A shard's durable side.
pub struct ShardDurable {
    pub log: ShardLog,
    pub mode: DurabilityMode,
    pub sync_interval: Duration,
    /// `<storage.dir>/shards/<id>`.
    pub dir: PathBuf,
    pub figures: Arc<StorageFigures>,
    /// Scratch for draining journals.
    pub changes: Vec<shardmq_broker::session::Change>,
    /// Records are pending for the writer task since the last
    /// [`take_writer_wanted`](ShardDurable::take_writer_wanted).
    writer_wanted: bool,
    /// The writer task waits for the acknowledgements of the deliveries in its batch.
    pub writer_awaits_acks: bool,
    /// Connections blocked on a gate: woken when durability moves.
    pub gated: Vec<(ConnKey, u64)>,
    /// QoS ≥ 1 publishes sent to each peer (`"sync"`).
    pub sent: Vec<u64>,
    /// What each peer acknowledged durable of them.
    pub acked: Vec<u64>,
    /// QoS ≥ 1 publishes received from each peer.
    pub received: Vec<u64>,
    /// Per peer: (batch that must be durable, publishes of that peer then acknowledged).
    pub pending_acks: Vec<VecDeque<(Ticket, u64)>>,
    /// Sessions this shard handed to another shard: deleted from this log once the new shard
    /// says it holds them (`SessionStored`).
    pub moved_out: ahash::AHashMap<ByteStr, shardmq_broker::session::SessionImage>,
    /// Sessions this shard took from another one: `SessionStored` goes out once the image (at
    /// the batch) is durable.
    pub stored_notices: VecDeque<(Option<Ticket>, ByteStr)>,
    /// The disk refused the last attempt.
    pub failing: bool,
    /// The compaction pass being written, a few items per batch.
    pub compaction: Option<Compaction>,
}

/// A compaction pass in progress: what is left to re-write.
pub struct Compaction {
    pub pass: shardmq_store::CompactionPass,
    /// Client ids of the sessions stored when the pass began.
    pub sessions: Vec<ByteStr>,
    /// Retained topics this log held when the pass began.
    pub retained: Vec<ByteStr>,
}

/// Items (sessions, retained topics) a compaction pass re-writes per batch: bounds the time
/// one step holds the shard's loop.
pub const COMPACT_STEP_ITEMS: usize = 512;

impl ShardDurable {
    pub fn new(
        id: ShardId,
        nshards: usize,
        spec: &StorageSpec,
        log: ShardLog,
        figures: Arc<StorageFigures>,
    ) -> ShardDurable {
        ShardDurable {
            log,
            mode: spec.mode,
            sync_interval: spec.sync_interval,
            dir: shardmq_store::shard_dir(&spec.dir, id as u32),
            figures,
            changes: Vec::new(),
            writer_wanted: false,
            writer_awaits_acks: false,
            gated: Vec::new(),
            sent: vec![0; nshards],
            acked: vec![0; nshards],
            received: vec![0; nshards],
            pending_acks: (0..nshards).map(|_| VecDeque::new()).collect(),
            moved_out: Default::default(),
            stored_notices: VecDeque::new(),
            failing: false,
            compaction: None,
        }
    }

    /// Whether batch `ticket` (if any) is durable.
    pub fn is_durable(&self, ticket: Option<Ticket>) -> bool {
        ticket.is_none_or(|t| self.log.is_durable(t))
    }

    /// Whether a gate may be passed.
    pub fn passes(&self, gate: &Gate) -> bool {
        self.is_durable(gate.ticket)
            && gate
                .marks
                .iter()
                .all(|&(peer, seq)| self.acked[peer as usize] >= seq)
    }

    /// Records were appended: the writer task has work.
    pub fn wake_writer(&mut self) {
        // Waiting for acknowledgements: only their end is news (not every new delivery).
        if self.writer_awaits_acks && self.log.awaiting() > 0 {
            return;
        }
        self.writer_wanted = true;
    }

    /// Output: whether the writer task has work since the last call (the shell wakes it).
    pub fn take_writer_wanted(&mut self) -> bool {
        std::mem::take(&mut self.writer_wanted)
    }
}
