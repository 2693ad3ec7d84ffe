//! Start-up snapshots and the clean-up after them.
//!
//! # Start-up (before the shards serve)
//! 1. [`crate::recover`] the storage directory (generation `G`).
//! 2. [`crate::State::split`] the state over the shards that exist now (owner of each client
//!    id; owner of each retained topic's record).
//! 3. [`remove_generations_above`]`(G)` (leftovers of a start-up that crashed before its
//!    commit), then [`write_snapshot`] for every shard, with generation `G + 1`: a fresh log holding just
//!    the live state, fsynced. Done in parallel (one per shard thread) or in sequence.
//! 4. [`crate::commit_generation`]`(G + 1)`: the atomic switch. A crash before it recovers `G`
//!    again (the half-written `G + 1` segments are ignored); after it, `G + 1`.
//! 5. [`remove_obsolete`]: deletes every segment not of `G + 1` and the directories of shards
//!    that no longer exist.
//!
//! [`restart`] does all five. Each shard then continues its log with a
//! [`crate::LogWriter`] at the [`LogPosition`] its snapshot returned.

use crate::error::StoreError;
use crate::format::{SegmentHeader, SEGMENT_HEADER_LEN};
use crate::layout::{
    commit_generation, list_segments, list_shard_dirs, shard_dir, shards_root, sync_dir,
    CORRUPT_SUFFIX, GENERATION_FILE,
};
use crate::recover::{recover, Recovered, ShardReport, StopKind};
use crate::state::State;
use crate::writer::{LogConfig, LogPosition, LogWriter};
use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes a snapshot buffers before writing them out.
pub const SNAPSHOT_FLUSH_BYTES: usize = 8 << 20;

/// Writes `state` as a fresh log for `config.shard` in `config.generation` into
/// `<storage_dir>/shards/<shard>/`, starting at one past the highest segment number there,
/// and fsyncs it (files and directory). Returns where the shard's writer continues.
pub fn write_snapshot(
    storage_dir: &Path,
    config: LogConfig,
    state: &State,
) -> Result<LogPosition, StoreError> {
    let dir = shard_dir(storage_dir, config.shard);
    std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
    let first = list_segments(&dir)?.last().map_or(1, |(s, _)| s + 1);
    let mut writer = LogWriter::new(
        config,
        LogPosition {
            segments: vec![(first, 0)],
            next_lsn: 0,
        },
    );
    let mut files: Vec<(String, std::fs::File)> = Vec::new();
    let mut flush = |writer: &mut LogWriter| -> Result<(), StoreError> {
        let Some(batch) = writer.take_batch() else {
            return Ok(());
        };
        for w in &batch.writes {
            let path = dir.join(&w.file_name);
            if w.create {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| StoreError::io(&path, e))?;
                files.push((w.file_name.clone(), f));
            }
            let (_, f) = files
                .iter()
                .find(|(n, _)| *n == w.file_name)
                .expect("a snapshot only appends to files it created");
            f.write_all_at(&w.bytes, w.offset)
                .map_err(|e| StoreError::io(&path, e))?;
        }
        writer.batch_written(batch.last_lsn);
        Ok(())
    };
    for record in state.snapshot_records() {
        writer.append(&record);
        if writer.pending_bytes() >= SNAPSHOT_FLUSH_BYTES {
            flush(&mut writer)?;
        }
    }
    flush(&mut writer)?;
    for (name, f) in &files {
        f.sync_data()
            .map_err(|e| StoreError::io(dir.join(name), e))?;
    }
    sync_dir(&dir)?;
    if let Some(last) = writer.next_lsn().checked_sub(1) {
        writer.batch_durable(last);
    }
    Ok(LogPosition {
        segments: writer.segments().to_vec(),
        next_lsn: writer.next_lsn(),
    })
}

/// What [`remove_obsolete`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Files and directories removed.
    pub removed: Vec<PathBuf>,
    /// Segments kept for inspection, renamed `*.corrupt`.
    pub kept_corrupt: Vec<PathBuf>,
}

/// After [`crate::commit_generation`]`(generation)`: removes every segment file that is not of
/// `generation` (leftovers, the replayed old log), renaming first the segments from a
/// [`StopKind::Corrupt`] stop on (as [`crate::recover`] reported in `reports`) to `*.corrupt`;
/// then removes
/// the directories of shards `>= shard_count` that are left empty.
pub fn remove_obsolete(
    storage_dir: &Path,
    generation: u64,
    shard_count: u32,
    reports: &[ShardReport],
) -> Result<Cleanup, StoreError> {
    let mut out = Cleanup::default();
    let corrupt: BTreeSet<PathBuf> = reports
        .iter()
        .filter_map(|r: &ShardReport| {
            let stop = r.stop.as_ref().filter(|s| s.kind == StopKind::Corrupt)?;
            Some(
                r.segments
                    .iter()
                    .filter(|s| s.seq >= stop.segment)
                    .map(|s| s.path.clone())
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        .collect();
    for (shard, dir) in list_shard_dirs(storage_dir)? {
        for (_, path) in list_segments(&dir)? {
            let ours = read_header(&path).is_some_and(|h| h.generation == generation);
            if ours {
                continue;
            }
            if corrupt.contains(&path) {
                out.kept_corrupt.push(set_aside(&path)?);
            } else {
                std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
                out.removed.push(path);
            }
        }
        if shard >= shard_count && std::fs::remove_dir(&dir).is_ok() {
            out.removed.push(dir);
        }
    }
    let tmp = shards_root(storage_dir).join(format!("{GENERATION_FILE}.tmp"));
    if std::fs::remove_file(&tmp).is_ok() {
        out.removed.push(tmp);
    }
    Ok(out)
}

/// Renames a segment to `<name>.corrupt` (no longer listed as a segment).
fn set_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let mut to = path.to_path_buf().into_os_string();
    to.push(CORRUPT_SUFFIX);
    let to = PathBuf::from(to);
    std::fs::rename(path, &to).map_err(|e| StoreError::io(path, e))?;
    Ok(to)
}

fn read_header(path: &Path) -> Option<SegmentHeader> {
    use std::io::Read;
    let mut buf = [0u8; SEGMENT_HEADER_LEN];
    let mut f = std::fs::File::open(path).ok()?;
    f.read_exact(&mut buf).ok()?;
    SegmentHeader::read(&buf).ok()
}

/// Removes the segments of every generation above `committed`: what a start-up that crashed
/// before [`commit_generation`] left. Run it before [`write_snapshot`] of `committed + 1`.
pub fn remove_generations_above(
    storage_dir: &Path,
    committed: u64,
) -> Result<Vec<PathBuf>, StoreError> {
    let mut removed = Vec::new();
    for (_, dir) in list_shard_dirs(storage_dir)? {
        for (_, path) in list_segments(&dir)? {
            if read_header(&path).is_some_and(|h| h.generation > committed) {
                std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
                removed.push(path);
            }
        }
    }
    Ok(removed)
}

/// A shard's starting point after [`restart`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardStart {
    /// The sessions and retained topics this shard's log now holds, and their messages.
    pub state: State,
    /// Where its [`LogWriter`] continues.
    pub position: LogPosition,
}

/// What [`restart`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restart {
    /// The new committed generation (give it to every shard's [`LogConfig`]).
    pub generation: u64,
    /// One per shard, indexed by shard id.
    pub shards: Vec<ShardStart>,
    /// What recovery found (state moved into `shards`).
    pub reports: Vec<ShardReport>,
    /// Counters of the merged state (see [`State::anomalies`], [`State::dangling`]).
    pub anomalies: u64,
    /// See [`State::dangling`].
    pub dangling: u64,
    /// The clean-up done.
    pub cleanup: Cleanup,
}

/// The whole start-up sequence (see the module docs) on the calling thread: recover, split
/// over `shard_count` shards, snapshot each, commit, clean up. `config` gives the writer
/// settings (its `shard` and `generation` are set per shard).
pub fn restart(
    storage_dir: &Path,
    shard_count: u32,
    owner_of_client: impl Fn(&str) -> usize,
    owner_of_topic: impl Fn(&str) -> usize,
    config: LogConfig,
) -> Result<Restart, StoreError> {
    assert!(shard_count > 0, "restart with zero shards");
    let Recovered {
        state,
        generation,
        shards: reports,
    } = recover(storage_dir)?;
    // Leftovers of an interrupted start-up carry the generation about to be written: go first.
    let mut leftovers = remove_generations_above(storage_dir, generation)?;
    // A file with an unreadable header holds nothing replayable: remove it (torn) or set it
    // aside (corrupt) now, so it never sits in front of the new generation's log.
    for stop in reports.iter().filter_map(|r| r.stop.as_ref()) {
        if stop.bad_header && stop.path.exists() {
            if stop.kind == StopKind::TornTail {
                std::fs::remove_file(&stop.path).map_err(|e| StoreError::io(&stop.path, e))?;
                leftovers.push(stop.path.clone());
            } else {
                set_aside(&stop.path)?;
            }
        }
    }
    let generation = generation + 1;
    let (anomalies, dangling) = (state.anomalies, state.dangling);
    let parts = state.split(shard_count as usize, owner_of_client, owner_of_topic);
    let mut shards = Vec::with_capacity(parts.len());
    for (shard, part) in parts.into_iter().enumerate() {
        let cfg = LogConfig {
            shard: shard as u32,
            generation,
            ..config
        };
        let position = write_snapshot(storage_dir, cfg, &part)?;
        shards.push(ShardStart {
            state: part,
            position,
        });
    }
    commit_generation(storage_dir, generation)?;
    let mut cleanup = remove_obsolete(storage_dir, generation, shard_count, &reports)?;
    leftovers.append(&mut cleanup.removed);
    cleanup.removed = leftovers;
    Ok(Restart {
        generation,
        shards,
        reports,
        anomalies,
        dangling,
        cleanup,
    })
}
