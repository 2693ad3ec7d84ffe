//! The shard's durable log, with its I/O (docs/durability.md): the start-up recovery that runs
//! before any shard serves, the per-shard state the shard keeps for it (its [`ShardLog`], the
//! output gates of `"sync"`, the cross-shard durable acknowledgements), the writer task
//! (glommio buffered file I/O on io_uring, one fdatasync per batch: group commit) and the
//! figures `/metrics` and `shardmq ctl storage status` show.
//!
//! What turns session and retained changes into records is `store.rs` (no I/O); the hooks
//! that call it are in `shard/durable.rs`.

use crate::shell::Shard;
use shardmq_codec::ByteStr;
use shardmq_core::store::Ticket;
use shardmq_core::ShardId;
use shardmq_store::{Batch, LogConfig, ShardStart, StoredMessage};
use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

pub use shardmq_core::durable::*;

/// How long a shard waits before it retries a batch the disk refused.
const RETRY_INTERVAL: Duration = Duration::from_millis(200);
/// `"sync"`: how long the writer task waits, before it takes a batch, for the acknowledgements
/// of deliveries sent in it (each one that comes cancels the delivery's records: a subscriber
/// that keeps up costs no write). Bounds the extra wait of an acknowledgement held for the
/// batch; deliveries to a subscriber slower than this are written.
const ACK_WAIT: Duration = Duration::from_micros(1500);

/// What start-up recovered, for the shards to take.
pub(crate) struct Recovered {
    pub(crate) generation: u64,
    /// Each shard's part, taken once by that shard.
    parts: Vec<Mutex<Option<ShardStart>>>,
    /// Every restored session's filters, with the shard that holds the session now: every
    /// shard's route replica starts with them, so no publish misses a restored subscriber.
    pub(crate) routes: Vec<(ByteStr, ShardId)>,
    /// Every retained message, with the shard whose log holds it.
    pub(crate) retained: Vec<(ShardId, ByteStr, StoredMessage)>,
}

impl Recovered {
    /// Shard `shard`'s part, with every shard's routes and retained messages (once per shard).
    pub(crate) fn part(&self, shard: ShardId) -> Restored<'_> {
        let start = self.parts[shard]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("each shard takes its part once");
        Restored {
            start,
            generation: self.generation,
            routes: &self.routes,
            retained: &self.retained,
        }
    }
}

/// Locks `storage.dir`, recovers every shard directory in it, splits the state over `shards`
/// shards by the current owners and writes each shard's snapshot (shardmq_store::restart).
pub(crate) fn start_up(
    spec: &StorageSpec,
    shards: usize,
    owner_of_client: impl Fn(&str) -> usize,
) -> io::Result<(Recovered, Arc<StorageFigures>, std::fs::File)> {
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
    let restored = Recovered {
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
                s.writer_waker = Some(cx.waker().clone());
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
                        s.writer_waker = Some(cx.waker().clone());
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
            let mut s = crate::shell::step(&shard);
            s.compaction_step(Instant::now());
            let d = s.durable.as_mut().expect("storage");
            d.log.take_batch()
        };
        let Some(batch) = batch else {
            // Everything in it cancelled out (deliveries acknowledged before it was taken).
            crate::shell::step(&shard).durable_moved(Instant::now());
            continue;
        };
        loop {
            match files.write(&dir, &batch).await {
                Ok(fsyncs) => {
                    crate::shell::step(&shard).batch_durable(ticket, &batch, fsyncs);
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
            let was = d.figures.failing_shards.fetch_sub(1, Ordering::Relaxed);
            assert!(was > 0, "a failing shard is counted");
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
