//! Where the files are: `<storage.dir>/shards/GENERATION` and
//! `<storage.dir>/shards/<shard-id>/NNNNNNNN.log`.

use crate::error::StoreError;
use crate::record::SegmentSeq;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Sub-folder of `storage.dir` that holds the shards' logs.
pub const SHARDS_DIR: &str = "shards";
/// File in [`SHARDS_DIR`] naming the committed start-up generation.
pub const GENERATION_FILE: &str = "GENERATION";
/// Suffix of a segment file.
pub const SEGMENT_SUFFIX: &str = ".log";
/// Suffix given to a segment recovery could not fully read, kept for inspection.
pub const CORRUPT_SUFFIX: &str = ".corrupt";

/// `<storage_dir>/shards`.
pub fn shards_root(storage_dir: &Path) -> PathBuf {
    storage_dir.join(SHARDS_DIR)
}

/// `<storage_dir>/shards/<shard>`: the directory shard `shard` owns.
pub fn shard_dir(storage_dir: &Path, shard: u32) -> PathBuf {
    shards_root(storage_dir).join(shard.to_string())
}

/// The file name of segment `seq`: eight or more decimal digits and `.log` (`00000042.log`).
pub fn segment_file_name(seq: SegmentSeq) -> String {
    format!("{seq:08}{SEGMENT_SUFFIX}")
}

/// The segment number in a file name made by [`segment_file_name`].
pub fn parse_segment_file_name(name: &str) -> Option<SegmentSeq> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() < 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segment files in `dir`, sorted by number. A missing directory holds none.
pub fn list_segments(dir: &Path) -> Result<Vec<(SegmentSeq, PathBuf)>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            out.push((seq, entry.path()));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Shard directories under `<storage_dir>/shards`, sorted by shard id.
pub fn list_shard_dirs(storage_dir: &Path) -> Result<Vec<(u32, PathBuf)>, StoreError> {
    let root = shards_root(storage_dir);
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(&root, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(&root, e))?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if entry.path().is_dir() && name.to_str() == Some(&id.to_string()) {
            out.push((id, entry.path()));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The committed generation (0 when the file does not exist: a fresh directory).
pub fn read_generation(storage_dir: &Path) -> Result<u64, StoreError> {
    let path = shards_root(storage_dir).join(GENERATION_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse().map_err(|e| StoreError::BadGeneration {
            path,
            why: format!("{e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(StoreError::io(path, e)),
    }
}

/// Commits `generation` atomically: write a temporary file, fsync it, rename it over
/// [`GENERATION_FILE`], fsync the directory.
pub fn commit_generation(storage_dir: &Path, generation: u64) -> Result<(), StoreError> {
    let root = shards_root(storage_dir);
    std::fs::create_dir_all(&root).map_err(|e| StoreError::io(&root, e))?;
    let tmp = root.join(format!("{GENERATION_FILE}.tmp"));
    let path = root.join(GENERATION_FILE);
    let mut f = std::fs::File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    writeln!(f, "{generation}").map_err(|e| StoreError::io(&tmp, e))?;
    f.sync_all().map_err(|e| StoreError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
    sync_dir(&root)
}

/// fsyncs a directory (makes created, renamed and removed names durable).
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}
