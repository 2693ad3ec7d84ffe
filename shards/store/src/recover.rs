//! Recovery: read a storage directory back into a [`State`].
//!
//! # The rule
//! A shard directory's log is the sequence of its segments of the committed generation, in
//! segment order, their LSNs chained (each segment's `base_lsn` is one past the previous
//! segment's last record). Recovery replays the **longest valid prefix** of that log: it
//! stops at the first record whose frame is incomplete or whose checksum fails, at a segment
//! whose header is bad, or at a break in the LSN chain. Nothing after the stop is replayed,
//! not even later segments, so the state is always that of a prefix of what was written —
//! consistent by construction — and never a panic.
//!
//! The stop is reported ([`Stop`]) and classified:
//! - [`StopKind::TornTail`]: the damage is at the very end of the newest segment (or of the one
//!   before it, when a batch spanning a roll was cut): an incomplete frame, a final frame
//!   with a bad checksum, or a zero-filled tail; a header shorter than 48 bytes or zeroed
//!   in the newest segment. This is what a crash during a write leaves; nothing lost was
//!   acknowledged (`"sync"`), or at most the sync interval was (`"async"`). Log at `warn!`.
//! - [`StopKind::Corrupt`]: anything else (valid-looking data after the bad record, a bad
//!   header in an older segment, an LSN chain break, a record that decodes badly despite its
//!   checksum). Acknowledged data after the stop is lost: log at `error!`, count it in a
//!   metric. [`crate::remove_obsolete`] keeps such segments, renamed `*.corrupt`, for
//!   inspection.
//!
//! Segments of other generations are leftovers of an earlier run or of an interrupted
//! start-up: never replayed, removed by [`crate::remove_obsolete`].

use crate::error::StoreError;
use crate::format::{
    decode_record, read_frame, Frame, HeaderError, SegmentHeader, FORMAT_VERSION,
    SEGMENT_HEADER_LEN,
};
use crate::layout::{list_segments, list_shard_dirs, read_generation};
use crate::record::{Lsn, SegmentSeq};
use crate::state::State;
use std::path::{Path, PathBuf};

/// How recovery stopped before the end of a shard's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// A write cut by a crash at the end of the log (expected after `kill -9`).
    TornTail,
    /// Damage elsewhere: data after the stop is lost.
    Corrupt,
}

/// Where and why recovery of one shard's log stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// Classification (see the module docs).
    pub kind: StopKind,
    /// Segment holding the stop.
    pub segment: SegmentSeq,
    /// Its file.
    pub path: PathBuf,
    /// Byte offset of the bad frame (or 0 for a bad header).
    pub offset: u64,
    /// LSN the bad record would have had.
    pub lsn: Lsn,
    /// What was wrong.
    pub why: String,
    /// Bytes of the log not replayed (from the stop to the end of the last segment).
    pub skipped_bytes: u64,
    /// The segment's header was unreadable (the file holds no replayable record).
    pub bad_header: bool,
}

/// One segment as recovery saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    /// Segment number.
    pub seq: SegmentSeq,
    /// Its file.
    pub path: PathBuf,
    /// File size.
    pub bytes: u64,
    /// Records replayed from it.
    pub records: u64,
}

/// Recovery of one shard directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardReport {
    /// Shard id (the directory name).
    pub shard: u32,
    /// The directory.
    pub dir: PathBuf,
    /// Segments of the committed generation, in order (those after a stop replayed nothing).
    pub segments: Vec<SegmentReport>,
    /// Segment files of other generations (not replayed).
    pub stale: Vec<PathBuf>,
    /// Records replayed.
    pub records: u64,
    /// Bytes replayed (headers and frames).
    pub bytes: u64,
    /// Why recovery stopped before the end, if it did.
    pub stop: Option<Stop>,
    /// One past the highest segment number of any file in the directory (the next segment to
    /// create there).
    pub next_segment: SegmentSeq,
    /// LSN after the last replayed record.
    pub next_lsn: Lsn,
}

/// What [`recover`] found: the node's merged, finished state and a report per directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Merged over every shard directory, finished ([`State::finish`]).
    pub state: State,
    /// The committed generation that was replayed (0: a fresh directory).
    pub generation: u64,
    /// One report per shard directory found.
    pub shards: Vec<ShardReport>,
}

impl Recovered {
    /// Whether some directory stopped at corruption (acknowledged data may be lost).
    pub fn has_corruption(&self) -> bool {
        self.shards
            .iter()
            .any(|s| s.stop.as_ref().is_some_and(|s| s.kind == StopKind::Corrupt))
    }
}

/// Reads the whole storage directory: the committed generation, every shard directory under
/// `<storage_dir>/shards/` (whatever the shard count now), merged with [`State::merge`].
/// Synchronous (std::fs + memmap2): run it at start-up, before the shards serve.
pub fn recover(storage_dir: &Path) -> Result<Recovered, StoreError> {
    let generation = read_generation(storage_dir)?;
    let mut parts = Vec::new();
    let mut shards = Vec::new();
    for (shard, dir) in list_shard_dirs(storage_dir)? {
        let (state, report) = recover_shard(&dir, shard, generation)?;
        tracing::debug!(
            shard,
            records = report.records,
            bytes = report.bytes,
            sessions = state.sessions.len(),
            "shard log replayed"
        );
        parts.push((shard, state));
        shards.push(report);
    }
    Ok(Recovered {
        state: State::merge(parts),
        generation,
        shards,
    })
}

/// Replays one shard directory's segments of `generation` into an unfinished [`State`]
/// (call [`State::finish`], or [`State::merge`], on it).
pub fn recover_shard(
    dir: &Path,
    shard: u32,
    generation: u64,
) -> Result<(State, ShardReport), StoreError> {
    let files = list_segments(dir)?;
    let next_segment = files.last().map_or(1, |(s, _)| s + 1);
    let mut report = ShardReport {
        shard,
        dir: dir.to_path_buf(),
        segments: Vec::new(),
        stale: Vec::new(),
        records: 0,
        bytes: 0,
        stop: None,
        next_segment,
        next_lsn: 0,
    };
    // Map every file, keep this generation's.
    let mut maps = Vec::new();
    for (seq, path) in files {
        let map = map_file(&path)?;
        match SegmentHeader::read(map.as_ref()) {
            Ok(h) if h.generation != generation => report.stale.push(path),
            Ok(h) => maps.push((seq, path, map, Ok(h))),
            Err(HeaderError::Version(v)) => {
                return Err(StoreError::UnsupportedVersion {
                    path,
                    found: v,
                    supported: FORMAT_VERSION,
                })
            }
            // A bad header: ours if it sits among ours. Leftovers of old generations are
            // rewritten as whole files, so a bad one only matters inside this generation.
            Err(e) => maps.push((seq, path, map, Err(e))),
        }
    }
    // A file whose header does not read is kept in the chain wherever it sits: it may be one
    // of ours. (Start-up removes such files once recovered — see `crate::restart` — so a
    // leftover of an older generation never sits in front of this one.)
    let mut state = State::new();
    let total: Vec<u64> = maps.iter().map(|(_, _, m, _)| m.len() as u64).collect();
    let n = maps.len();
    let mut expected_lsn: Option<Lsn> = None;
    for (i, (seq, path, map, header)) in maps.iter().enumerate() {
        let buf: &[u8] = map.as_ref();
        let newest = i + 1 == n;
        let near_end = i + 2 >= n;
        let rest_bytes = |from: u64| total[i] - from + total[i + 1..].iter().sum::<u64>();
        let mut seg = SegmentReport {
            seq: *seq,
            path: path.clone(),
            bytes: buf.len() as u64,
            records: 0,
        };
        let stop = |kind, offset: u64, lsn, why: String| Stop {
            kind,
            segment: *seq,
            path: path.clone(),
            offset,
            lsn,
            why,
            skipped_bytes: rest_bytes(offset),
            bad_header: false,
        };
        let h = match header {
            Ok(h) => *h,
            Err(e) => {
                let zero_or_short = *e == HeaderError::Short || buf.iter().all(|b| *b == 0);
                let kind = if newest && zero_or_short {
                    StopKind::TornTail
                } else {
                    StopKind::Corrupt
                };
                let lsn = expected_lsn.unwrap_or(0);
                let mut st = stop(kind, 0, lsn, format!("bad segment header ({e:?})"));
                st.bad_header = true;
                report.stop = Some(st);
                report.segments.push(seg);
                break;
            }
        };
        if h.seq != *seq {
            let why = format!("header says segment {}, file name {seq}", h.seq);
            report.stop = Some(stop(StopKind::Corrupt, 0, h.base_lsn, why));
            report.segments.push(seg);
            break;
        }
        if let Some(want) = expected_lsn {
            if h.base_lsn != want {
                let why = format!(
                    "LSN chain broken: segment starts at {}, expected {want}",
                    h.base_lsn
                );
                report.stop = Some(stop(StopKind::Corrupt, 0, want, why));
                report.segments.push(seg);
                break;
            }
        }
        let mut lsn = h.base_lsn;
        let mut at = SEGMENT_HEADER_LEN;
        report.bytes += SEGMENT_HEADER_LEN as u64;
        let mut stopped = None;
        loop {
            let rest = &buf[at..];
            match read_frame(rest, lsn) {
                Frame::End => break,
                Frame::Good { payload, len } => match decode_record(payload) {
                    Ok(record) => {
                        state.apply(shard, lsn, record);
                        seg.records += 1;
                        report.bytes += len as u64;
                        lsn += 1;
                        at += len;
                    }
                    Err(e) => {
                        let why = format!("record {lsn} does not decode: {e}");
                        stopped = Some(stop(StopKind::Corrupt, at as u64, lsn, why));
                        break;
                    }
                },
                bad => {
                    let at_end = match bad {
                        Frame::Incomplete => true,
                        Frame::BadChecksum { len } => {
                            let end = 8 + len;
                            end == rest.len() || rest[end..].iter().all(|b| *b == 0)
                        }
                        _ => unreachable!("handled above"),
                    } || rest.iter().all(|b| *b == 0);
                    let kind = if at_end && near_end {
                        StopKind::TornTail
                    } else {
                        StopKind::Corrupt
                    };
                    let why = match bad {
                        Frame::Incomplete => format!("incomplete frame, {} bytes left", rest.len()),
                        _ => "checksum mismatch".to_string(),
                    };
                    stopped = Some(stop(kind, at as u64, lsn, why));
                    break;
                }
            }
        }
        report.records += seg.records;
        report.segments.push(seg);
        expected_lsn = Some(lsn);
        report.next_lsn = lsn;
        if let Some(s) = stopped {
            report.stop = Some(s);
            break;
        }
    }
    // Segments after a stop are listed too, unreplayed.
    for (seq, path, map, _) in maps.iter().skip(report.segments.len()) {
        report.segments.push(SegmentReport {
            seq: *seq,
            path: path.clone(),
            bytes: map.len() as u64,
            records: 0,
        });
    }
    Ok((state, report))
}

/// The file's bytes: memory-mapped, or empty for an empty file.
enum Mapped {
    Map(memmap2::Mmap),
    Empty,
}

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        match self {
            Mapped::Map(m) => m,
            Mapped::Empty => &[],
        }
    }
}

impl Mapped {
    fn len(&self) -> usize {
        self.as_ref().len()
    }
}

fn map_file(path: &Path) -> Result<Mapped, StoreError> {
    let file = std::fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
    let len = file.metadata().map_err(|e| StoreError::io(path, e))?.len();
    if len == 0 {
        return Ok(Mapped::Empty);
    }
    // SAFETY: recovery runs before any shard writes to the directory, and nothing else writes
    // segment files, so the mapped bytes do not change while they are read. (A file truncated
    // under us by another process would fault; that is outside what the store supports.)
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| StoreError::io(path, e))?;
    Ok(Mapped::Map(map))
}
