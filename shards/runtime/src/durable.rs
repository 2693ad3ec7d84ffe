//! The shard's durable log, with its I/O (docs/durability.md): the start-up recovery that runs
//! before any shard serves, the per-shard state the shard keeps for it (its [`ShardLog`], the
//! output gates of `"sync"`, the cross-shard durable acknowledgements), the writer task
//! (glommio buffered file I/O on io_uring, one fdatasync per batch: group commit) and the
//! figures `/metrics` and `shardmq ctl storage status` show.
//!
//! What turns session and retained changes into records is `store.rs` (no I/O); the hooks
//! that call it are in `shard/durable.rs`.

use crate::bus::ShardId;
use crate::shard::{ConnKey, Shard};
use crate::store::{ShardLog, Ticket};
use shardmq_codec::ByteStr;
use shardmq_store::{Batch, LogConfig, ShardStart, StoredMessage};
use smallvec::SmallVec;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

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

/// Name of the lock file in `storage.dir`: one live process per folder.
pub const LOCK_FILE: &str = "LOCK";
/// How long a shard waits before it retries a batch the disk refused.
const RETRY_INTERVAL: Duration = Duration::from_millis(200);
/// `"sync"`: how long the writer task waits, before it takes a batch, for the acknowledgements
/// of deliveries sent in it (each one that comes cancels the delivery's records: a subscriber
/// that keeps up costs no write). Bounds the extra wait of an acknowledgement held for the
/// batch; deliveries to a subscriber slower than this are written.
const ACK_WAIT: Duration = Duration::from_micros(1500);

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
    pub(crate) failing_shards: std::sync::atomic::AtomicUsize,
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

/// What start-up recovered, for the shards to take.
pub(crate) struct Restored {
    pub(crate) generation: u64,
    /// Each shard's part, taken once by that shard.
    parts: Vec<Mutex<Option<ShardStart>>>,
    /// Every restored session's filters, with the shard that holds the session now: every
    /// shard's route replica starts with them, so no publish misses a restored subscriber.
    pub(crate) routes: Vec<(ByteStr, ShardId)>,
    /// Every retained message, with the shard whose log holds it.
    pub(crate) retained: Vec<(ShardId, ByteStr, StoredMessage)>,
}

impl Restored {
    pub(crate) fn take(&self, shard: ShardId) -> ShardStart {
        self.parts[shard]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("each shard takes its part once")
    }
}

/// Locks `storage.dir`, recovers every shard directory in it, splits the state over `shards`
/// shards by the current owners and writes each shard's snapshot (shardmq_store::restart).
pub(crate) fn start_up(
    spec: &StorageSpec,
    shards: usize,
    owner_of_client: impl Fn(&str) -> usize,
) -> io::Result<(Restored, Arc<StorageFigures>, std::fs::File)> {
    let started = Instant::now();
    let lock = lock_dir(&spec.dir)?;
    let n = shards as u32;
    let owner_of_topic = |topic: &str| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in topic.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        (h % n as u64) as usize
    };
    let restart = shardmq_store::restart(
        &spec.dir,
        n,
        owner_of_client,
        owner_of_topic,
        LogConfig::new(0, 0),
    )
    .map_err(|e| io::Error::other(format!("storage.dir {}: {e}", spec.dir.display())))?;
    let mut cut = 0u64;
    for r in &restart.reports {
        if let Some(stop) = &r.stop {
            cut += 1;
            warn!(shard = r.shard, stop = ?stop.kind, path = %stop.path.display(), "storage: the log's tail was cut off at recovery");
        }
    }
    let mut routes = Vec::new();
    let mut retained = Vec::new();
    let (mut sessions, mut topics) = (0u64, 0u64);
    for (shard, part) in restart.shards.iter().enumerate() {
        for s in part.state.sessions.values() {
            sessions += 1;
            for (filter, _) in &s.subscriptions {
                routes.push((filter.clone(), shard));
            }
        }
        for (topic, e) in &part.state.retained {
            if let Some(m) = e.message.and_then(|id| part.state.messages.get(&id)) {
                topics += 1;
                retained.push((shard, topic.clone(), m.clone()));
            }
        }
    }
    let recovery_ms = started.elapsed().as_millis() as u64;
    info!(dir = %spec.dir.display(), generation = restart.generation, sessions, retained = topics, anomalies = restart.anomalies, dangling = restart.dangling, recovery_ms, "storage recovered");
    let figures = Arc::new(StorageFigures {
        dir: spec.dir.clone(),
        mode: spec.mode,
        recovery_ms,
        restored_sessions: sessions,
        restored_retained: topics,
        recovery_cut_records: cut,
        shards: restart
            .shards
            .iter()
            .map(|part| ShardStorageFigures {
                persistent_sessions: AtomicU64::new(part.state.sessions.len() as u64),
                ..Default::default()
            })
            .collect(),
        failing_shards: Default::default(),
    });
    let restored = Restored {
        generation: restart.generation,
        parts: restart
            .shards
            .into_iter()
            .map(|p| Mutex::new(Some(p)))
            .collect(),
        routes,
        retained,
    };
    Ok((restored, figures, lock))
}

/// Creates `dir` and takes an exclusive `flock` on `dir/LOCK`, held while the returned file
/// lives: a second process on the same folder is refused with a clear error.
fn lock_dir(dir: &Path) -> io::Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    std::fs::create_dir_all(dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("storage.dir {}: cannot create: {e}", dir.display()),
        )
    })?;
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "storage.dir {} is in use by another shardmq process (pid {}); give each node its own storage.dir",
                    dir.display(),
                    holder.trim()
                ),
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(io::Error::new(
                e.kind(),
                format!("{}: cannot lock: {e}", path.display()),
            ))
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(file)
}

/// Output a connection may not write before some stored change is durable: bytes from
/// `start` on wait until the shard's batch `ticket` is durable and every peer shard in
/// `marks` acknowledged the publishes this shard sent it up to that number.
#[derive(Debug)]
pub(crate) struct Gate {
    /// Offset in the connection's output, counted from when its gates began.
    pub(crate) start: u64,
    pub(crate) ticket: Option<Ticket>,
    pub(crate) marks: SmallVec<[(u8, u64); 2]>,
}

/// A connection's gates (boxed: a connection without any costs one pointer).
#[derive(Debug, Default)]
pub(crate) struct ConnGates {
    /// Bytes of output written since the gates began.
    pub(crate) taken: u64,
    pub(crate) gates: VecDeque<Gate>,
    /// On the shard's list of connections to wake when durability moves.
    pub(crate) listed: bool,
}

/// Most gates one connection holds; beyond it the newest gate's position moves (merging
/// gates only delays output, never releases it early).
pub(crate) const CONN_GATES_MAX: usize = 1024;

/// A shard's durable side.
pub(crate) struct ShardDurable {
    pub(crate) log: ShardLog,
    pub(crate) mode: DurabilityMode,
    pub(crate) sync_interval: Duration,
    /// `<storage.dir>/shards/<id>`.
    pub(crate) dir: PathBuf,
    pub(crate) figures: Arc<StorageFigures>,
    /// Scratch for draining journals.
    pub(crate) changes: Vec<shardmq_broker::session::Change>,
    /// The writer task, parked until records are pending.
    pub(crate) writer_waker: Option<Waker>,
    /// The writer task waits for the acknowledgements of the deliveries in its batch.
    pub(crate) writer_awaits_acks: bool,
    /// Connections blocked on a gate: woken when durability moves.
    pub(crate) gated: Vec<(ConnKey, u64)>,
    /// QoS ≥ 1 publishes sent to each peer (`"sync"`).
    pub(crate) sent: Vec<u64>,
    /// What each peer acknowledged durable of them.
    pub(crate) acked: Vec<u64>,
    /// QoS ≥ 1 publishes received from each peer.
    pub(crate) received: Vec<u64>,
    /// Per peer: (batch that must be durable, publishes of that peer then acknowledged).
    pub(crate) pending_acks: Vec<VecDeque<(Ticket, u64)>>,
    /// Sessions this shard handed to another shard: deleted from this log once the new shard
    /// says it holds them (`SessionStored`).
    pub(crate) moved_out: ahash::AHashMap<ByteStr, shardmq_broker::session::SessionImage>,
    /// Sessions this shard took from another one: `SessionStored` goes out once the image (at
    /// the batch) is durable.
    pub(crate) stored_notices: VecDeque<(Option<Ticket>, ByteStr)>,
    /// The disk refused the last attempt.
    pub(crate) failing: bool,
    /// The compaction pass being written, a few items per batch.
    pub(crate) compaction: Option<Compaction>,
}

/// A compaction pass in progress: what is left to re-write.
pub(crate) struct Compaction {
    pub(crate) pass: shardmq_store::CompactionPass,
    /// Client ids of the sessions stored when the pass began.
    pub(crate) sessions: Vec<ByteStr>,
    /// Retained topics this log held when the pass began.
    pub(crate) retained: Vec<ByteStr>,
}

/// Items (sessions, retained topics) a compaction pass re-writes per batch: bounds the time
/// one step holds the shard's loop.
pub(crate) const COMPACT_STEP_ITEMS: usize = 512;

impl ShardDurable {
    pub(crate) fn new(
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
            writer_waker: None,
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
    pub(crate) fn is_durable(&self, ticket: Option<Ticket>) -> bool {
        ticket.is_none_or(|t| self.log.is_durable(t))
    }

    /// Whether a gate may be passed.
    pub(crate) fn passes(&self, gate: &Gate) -> bool {
        self.is_durable(gate.ticket)
            && gate
                .marks
                .iter()
                .all(|&(peer, seq)| self.acked[peer as usize] >= seq)
    }

    /// Records were appended: the writer task has work.
    pub(crate) fn wake_writer(&mut self) {
        // Waiting for acknowledgements: only their end is news (not every new delivery).
        if self.writer_awaits_acks && self.log.awaiting() > 0 {
            return;
        }
        if let Some(w) = self.writer_waker.take() {
            w.wake();
        }
    }
}

/// The writer task of a shard with storage: takes the log's pending records as one batch,
/// writes it with glommio's buffered file I/O, fdatasyncs every file written (and the folder
/// after a new segment), then marks it durable; while it works, new records gather into the
/// next batch (group commit). `"async"` waits `sync_interval` between batches. A write or
/// fdatasync the disk refuses is retried, whole, every 200 ms; meanwhile the shard refuses
/// QoS ≥ 1 PUBLISHes (`Shard::storage_refuses`).
pub(crate) async fn writer(shard: Rc<RefCell<Shard>>) {
    let (dir, mode, interval) = {
        let s = shard.borrow();
        let d = s
            .durable
            .as_ref()
            .expect("a writer for a shard with storage");
        (d.dir.clone(), d.mode, d.sync_interval)
    };
    let mut files = SegmentFiles::default();
    loop {
        if mode == DurabilityMode::Async {
            glommio::timer::sleep(interval).await;
        }
        poll_fn(|cx| {
            let mut s = shard.borrow_mut();
            let d = s.durable.as_mut().expect("storage");
            if d.log.has_pending() {
                Poll::Ready(())
            } else {
                d.writer_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        if mode == DurabilityMode::Sync {
            let until = Instant::now() + ACK_WAIT;
            loop {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                let waiting = poll_fn(|cx| {
                    let mut s = shard.borrow_mut();
                    let d = s.durable.as_mut().expect("storage");
                    if d.log.awaiting() == 0 {
                        d.writer_awaits_acks = false;
                        Poll::Ready(false)
                    } else {
                        d.writer_awaits_acks = true;
                        d.writer_waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                });
                let timeout = async {
                    glommio::timer::sleep(until - now).await;
                    true
                };
                if !futures_lite::future::or(waiting, timeout).await {
                    break;
                }
            }
            let mut s = shard.borrow_mut();
            s.durable.as_mut().expect("storage").writer_awaits_acks = false;
        }
        let (ticket, batch) = {
            let mut s = shard.borrow_mut();
            s.compaction_step(Instant::now());
            let d = s.durable.as_mut().expect("storage");
            d.log.take_batch()
        };
        let Some(batch) = batch else {
            // Everything in it cancelled out (deliveries acknowledged before it was taken).
            shard.borrow_mut().durable_moved(Instant::now());
            continue;
        };
        loop {
            match files.write(&dir, &batch).await {
                Ok(fsyncs) => {
                    shard.borrow_mut().batch_durable(ticket, &batch, fsyncs);
                    let obsolete = {
                        let mut s = shard.borrow_mut();
                        let d = s.durable.as_mut().expect("storage");
                        d.log.writer.take_obsolete()
                    };
                    if !obsolete.is_empty() {
                        files.reset();
                        remove_segments(&dir, &obsolete);
                        let mut s = shard.borrow_mut();
                        let id = s.id;
                        let d = s.durable.as_mut().expect("storage");
                        d.figures.shards[id]
                            .disk_bytes
                            .store(d.log.writer.disk_bytes(), Ordering::Relaxed);
                    }
                    break;
                }
                Err(e) => {
                    shard.borrow_mut().storage_failed(&e);
                    files.reset();
                    glommio::timer::sleep(RETRY_INTERVAL).await;
                }
            }
        }
    }
}

/// Deletes the segments a durable compaction pass made obsolete (an unlink each, once per
/// pass; a segment that survives a crash is replayed and superseded).
fn remove_segments(dir: &Path, names: &[String]) {
    for name in names {
        if let Err(e) = std::fs::remove_file(dir.join(name)) {
            warn!(dir = %dir.display(), segment = %name, error = %e, "storage: cannot delete a compacted segment");
        }
    }
    info!(dir = %dir.display(), segments = names.len(), "storage: compaction pass done, old segments deleted");
}

/// The open segment files of a shard's log.
#[derive(Default)]
struct SegmentFiles {
    open: Vec<(String, glommio::io::BufferedFile)>,
}

impl SegmentFiles {
    fn reset(&mut self) {
        self.open.clear();
    }

    /// Writes the batch and fdatasyncs what it wrote; returns the fdatasync count.
    async fn write(&mut self, dir: &Path, batch: &Batch) -> io::Result<u64> {
        let mut created = false;
        for w in &batch.writes {
            let i = match self.open.iter().position(|(n, _)| *n == w.file_name) {
                Some(i) => i,
                None => {
                    created |= w.create;
                    let file = glommio::io::OpenOptions::new()
                        .write(true)
                        .create(w.create)
                        .buffered_open(dir.join(&w.file_name))
                        .await
                        .map_err(io::Error::from)?;
                    // Only the newest segment is appended to: older ones are closed.
                    self.open.clear();
                    self.open.push((w.file_name.clone(), file));
                    0
                }
            };
            let file = &self.open[i].1;
            let mut off = 0usize;
            while off < w.bytes.len() {
                let n = file
                    .write_at(w.bytes[off..].to_vec(), w.offset + off as u64)
                    .await
                    .map_err(io::Error::from)?;
                if n == 0 {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
                }
                off += n;
            }
            if w.segment != batch.writes.last().expect("non-empty").segment {
                // A rolled segment: durable before the next one is written to.
                file.fdatasync().await.map_err(io::Error::from)?;
            }
        }
        let last = &self.open.last().expect("a batch writes a file").1;
        last.fdatasync().await.map_err(io::Error::from)?;
        let mut fsyncs = batch.writes.len() as u64;
        if created {
            let d = glommio::io::Directory::open(dir)
                .await
                .map_err(io::Error::from)?;
            d.sync().await.map_err(io::Error::from)?;
            fsyncs += 1;
        }
        Ok(fsyncs)
    }
}

impl Shard {
    /// The writer made `batch` durable.
    fn batch_durable(&mut self, ticket: Ticket, batch: &Batch, fsyncs: u64) {
        let id = self.id;
        let d = self.durable.as_mut().expect("storage");
        d.log.batch_durable(ticket, batch);
        let f = &d.figures.shards[id];
        f.bytes_written
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        f.fsyncs.fetch_add(fsyncs, Ordering::Relaxed);
        f.batches.fetch_add(1, Ordering::Relaxed);
        f.records.fetch_add(batch.records(), Ordering::Relaxed);
        f.coalesced.store(d.log.coalesced, Ordering::Relaxed);
        f.disk_bytes
            .store(d.log.writer.disk_bytes(), Ordering::Relaxed);
        f.messages.store(d.log.messages() as u64, Ordering::Relaxed);
        if d.failing {
            d.failing = false;
            f.failing.store(false, Ordering::Relaxed);
            d.figures.failing_shards.fetch_sub(1, Ordering::Relaxed);
            warn!(
                shard = id,
                "storage: writes succeed again; QoS 1/2 PUBLISHes accepted"
            );
        }
        self.durable_moved(Instant::now());
    }

    /// The disk refused a write or fdatasync.
    fn storage_failed(&mut self, e: &io::Error) {
        let id = self.id;
        let d = self.durable.as_mut().expect("storage");
        let f = &d.figures.shards[id];
        f.write_errors.fetch_add(1, Ordering::Relaxed);
        if !d.failing {
            d.failing = true;
            f.failing.store(true, Ordering::Relaxed);
            d.figures.failing_shards.fetch_add(1, Ordering::Relaxed);
            error!(shard = id, dir = %d.dir.display(), error = %e, "storage: cannot write the log (retrying every 200 ms); QoS 1/2 PUBLISHes are refused until it succeeds");
        }
    }
}
