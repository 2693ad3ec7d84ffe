//! RLOG streams over QUIC: the core side serving replicants, and a replicant's local copy of
//! the tables with one follower task per RLOG shard.
//!
//! The protocol logic is `shardmq_rlog`'s pure `RlogServer` and `ReplicantShard`; this module
//! only moves their messages over one `Rlog` QUIC stream per shard, times the bootstrap, and
//! keeps a replicant's tables on disk so that a restart resumes from its checkpoint.

use crate::transport::{FramedStream, StreamKind, Transport};
use crate::Locked;
use shardmq_rlog::{
    Change, NodeId, ReplicantShard, RlogServer, RlogShard, ShardState, Tables, ToCore, ToReplicant,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, info, warn};

/// Most buffered live entries per shard while a bootstrap runs.
pub(crate) const REPLAY_MAX: usize = 1_000_000;
/// Bootstrap batches in flight before the core waits for an ack.
pub(crate) const WINDOW_BATCHES: usize = 4;

/// A replicant's copy of the tables and the state of its per-shard streams.
pub(crate) struct Replica {
    pub(crate) me: NodeId,
    pub(crate) tables: Mutex<Tables>,
    shards: Mutex<Vec<ReplicantShard>>,
    /// Seqs applied, per shard, for read-your-writes waits.
    pub(crate) applied: watch::Sender<[u64; RlogShard::COUNT]>,
    /// The tables came from disk or a stream (a checkpoint means something).
    synced: AtomicBool,
    dirty: AtomicBool,
    /// Per shard: the last bootstrap's duration and key count, and the core's last seq.
    pub(crate) bootstrap_ms: [AtomicU64; RlogShard::COUNT],
    pub(crate) core_seq: [AtomicU64; RlogShard::COUNT],
    /// Core followed now.
    pub(crate) upstream: Mutex<Option<(NodeId, SocketAddr)>>,
    path: PathBuf,
}

impl Replica {
    /// Loads `data_dir/replica.snap` if it is there and readable.
    pub(crate) fn open(me: NodeId, data_dir: &std::path::Path) -> Replica {
        let path = data_dir.join("replica.snap");
        let loaded = std::fs::read(&path)
            .ok()
            .and_then(|b| match postcard::from_bytes::<Tables>(&b) {
                Ok(t) => Some(t),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "replica snapshot unreadable; bootstrapping");
                    None
                }
            });
        let synced = loaded.is_some();
        let tables = loaded.unwrap_or_default();
        if synced {
            info!(seqs = ?tables.seqs(), routes = tables.route_count(), "replica loaded from disk; resuming from its checkpoint");
        }
        let (applied, _) = watch::channel(tables.seqs());
        Replica {
            me,
            tables: Mutex::new(tables),
            shards: Mutex::new(
                RlogShard::ALL
                    .iter()
                    .map(|&s| ReplicantShard::new(s, REPLAY_MAX))
                    .collect(),
            ),
            applied,
            synced: AtomicBool::new(synced),
            dirty: AtomicBool::new(false),
            bootstrap_ms: Default::default(),
            core_seq: Default::default(),
            upstream: Mutex::new(None),
            path,
        }
    }

    /// State of each shard's stream.
    pub(crate) fn states(&self) -> Vec<(ShardState, u64, u64, u64, u64)> {
        let shards = self.shards.locked();
        shards
            .iter()
            .map(|s| {
                (
                    s.state(),
                    s.replay_queue_len() as u64,
                    s.bootstrap_keys(),
                    s.bootstraps(),
                    s.resumes(),
                )
            })
            .collect()
    }

    /// Makes the next `persist` write even if nothing changed.
    pub(crate) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Writes the tables to disk (tmp file, then rename) if they changed since last time.
    pub(crate) fn persist(&self) -> std::io::Result<()> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let bytes = {
            let t = self.tables.locked();
            postcard::to_allocvec(&*t).map_err(std::io::Error::other)?
        };
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("snap.tmp");
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Follows `shard` from whichever core `pick` gives, forever (until `stop`).
    pub(crate) async fn follow(
        self: Arc<Self>,
        shard: RlogShard,
        transport: Transport,
        pick: Arc<dyn Fn() -> PickFuture + Send + Sync>,
        changes: mpsc::UnboundedSender<Vec<Change>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(50);
        loop {
            if *stop.borrow() {
                if stop.changed().await.is_err() {
                    return;
                }
                continue;
            }
            let Some((core, addr)) = pick().await else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            };
            let stream = match transport.open(addr, StreamKind::Rlog).await {
                Ok(s) => s,
                Err(e) => {
                    debug!(shard = shard.name(), core, error = %e, "rlog: cannot reach core");
                    self.forget_upstream(core);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            let ended = tokio::select! {
                r = self.run_stream(shard, core, stream, &changes) => r,
                _ = stop.changed() => Ok(()),
            };
            self.shards.locked()[shard.index()].on_disconnect();
            match ended {
                Ok(()) => debug!(shard = shard.name(), core, "rlog stream closed"),
                Err(why) => {
                    warn!(shard = shard.name(), core, why = %why, "rlog stream failed; reconnecting");
                    self.forget_upstream(core);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    fn forget_upstream(&self, core: NodeId) {
        let mut up = self.upstream.locked();
        if up.is_some_and(|(n, _)| n == core) {
            *up = None;
        }
    }

    async fn run_stream(
        &self,
        shard: RlogShard,
        core: NodeId,
        stream: FramedStream,
        changes: &mpsc::UnboundedSender<Vec<Change>>,
    ) -> Result<(), String> {
        let (mut tx, mut rx) = stream.split();
        let hello = {
            let t = self.tables.locked();
            let s = self.shards.locked();
            s[shard.index()].hello(self.me, &t, !self.synced.load(Ordering::Acquire))
        };
        tx.send(&hello).await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let mut started: Option<Instant> = None;
        loop {
            let msg = match rx.recv::<ToReplicant>().await {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            };
            match &msg {
                ToReplicant::BootstrapBegin { seq, keys } => {
                    info!(shard = shard.name(), core, seq, keys, "rlog: bootstrap");
                    started = Some(Instant::now());
                }
                ToReplicant::Resume { from } => {
                    info!(
                        shard = shard.name(),
                        core, from, "rlog: resumed from checkpoint"
                    );
                }
                ToReplicant::Entries(es) => {
                    if let Some(last) = es.last() {
                        self.core_seq[shard.index()].fetch_max(last.seq, Ordering::Relaxed);
                    }
                }
                _ => {}
            }
            let mut ch = Vec::new();
            let (state, seqs) = {
                let mut t = self.tables.locked();
                let mut s = self.shards.locked();
                s[shard.index()]
                    .on_message(msg, &mut t, &mut ch, &mut out)
                    .map_err(|e| e.to_string())?;
                (s[shard.index()].state(), t.seqs())
            };
            if state == ShardState::Normal {
                if let Some(at) = started.take() {
                    let ms = at.elapsed().as_millis() as u64;
                    self.bootstrap_ms[shard.index()].store(ms, Ordering::Relaxed);
                    self.synced.store(true, Ordering::Release);
                    info!(shard = shard.name(), core, ms, "rlog: bootstrap done");
                }
                self.core_seq[shard.index()].fetch_max(seqs[shard.index()], Ordering::Relaxed);
            }
            if !ch.is_empty() {
                self.dirty.store(true, Ordering::Release);
                let _ = changes.send(ch);
            }
            self.applied.send_replace(seqs);
            for m in out.drain(..) {
                tx.send(&m).await.map_err(|e| e.to_string())?;
            }
        }
    }
}

/// What a replicant's core picker returns.
pub(crate) type PickFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<(NodeId, SocketAddr)>> + Send>>;

/// What a core's RLOG streams need from the state machine: the shard's tables and tail at one
/// point, and every entry applied after it.
pub(crate) trait EntrySource: Send + Sync + 'static {
    /// Opens the server for `shard` at a consistent point and subscribes to later entries.
    fn open(
        &self,
        shard: RlogShard,
        checkpoint: Option<u64>,
        batch_max: usize,
    ) -> (RlogServer, broadcast::Receiver<shardmq_rlog::Entry>);
}

/// Per-shard counters of a core's RLOG streams.
#[derive(Debug, Default)]
pub(crate) struct ServeStats {
    pub(crate) replicants: [AtomicU64; RlogShard::COUNT],
    pub(crate) pending: [AtomicU64; RlogShard::COUNT],
}

/// Serves one replicant's stream for one shard until it ends.
pub(crate) async fn serve(
    source: &dyn EntrySource,
    stats: &ServeStats,
    stream: FramedStream,
    peer: NodeId,
    batch_max: usize,
) {
    let (mut tx, mut rx) = stream.split();
    let (shard, checkpoint) = match rx.recv::<ToCore>().await {
        Ok(Some(ToCore::Hello {
            shard, checkpoint, ..
        })) => (shard, checkpoint),
        Ok(_) => {
            warn!(peer, "rlog stream without Hello; closing it");
            return;
        }
        Err(e) => {
            debug!(peer, error = %e, "rlog stream ended before Hello");
            return;
        }
    };
    let (mut server, mut live) = source.open(shard, checkpoint, batch_max);
    let i = shard.index();
    stats.replicants[i].fetch_add(1, Ordering::Relaxed);
    info!(
        peer,
        shard = shard.name(),
        ?checkpoint,
        bootstrap = server.is_bootstrapping(),
        "rlog: replicant follows"
    );
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            match rx.recv::<ToCore>().await {
                Ok(Some(ToCore::BootstrapAck { batch })) => {
                    if ack_tx.send(batch).is_err() {
                        return;
                    }
                }
                Ok(Some(ToCore::Hello { .. })) => {
                    warn!(peer, "second Hello on an rlog stream");
                    return;
                }
                Ok(None) | Err(_) => return,
            }
        }
    });
    let mut last_pending = 0u64;
    'serve: loop {
        while let Some(m) = server.poll_transmit() {
            if tx.send(&m).await.is_err() {
                break 'serve;
            }
        }
        let pending = server.pending() as u64;
        stats.pending[i].fetch_add(pending, Ordering::Relaxed);
        stats.pending[i].fetch_sub(last_pending, Ordering::Relaxed);
        last_pending = pending;
        tokio::select! {
            e = live.recv() => match e {
                Ok(e) if e.shard == shard => {
                    // A snapshot installed on this core makes the seqs jump: the replicant
                    // reconnects and resumes or bootstraps.
                    if let Err(err) = server.try_on_live(e) {
                        warn!(peer, shard = shard.name(), error = %err, "rlog: live stream broken on this core; dropping the replicant's stream");
                        break 'serve;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    warn!(peer, shard = shard.name(), missed = n, "rlog: replicant too slow for the live stream; dropping it (it resumes from its checkpoint)");
                    break 'serve;
                }
                Err(broadcast::error::RecvError::Closed) => break 'serve,
            },
            a = ack_rx.recv() => match a {
                Some(batch) => server.on_ack(batch),
                None => break 'serve,
            },
        }
    }
    reader.abort();
    stats.pending[i].fetch_sub(last_pending, Ordering::Relaxed);
    stats.replicants[i].fetch_sub(1, Ordering::Relaxed);
    debug!(peer, shard = shard.name(), "rlog: replicant stream ended");
}
