//! Errors at the store's boundary.

use std::path::PathBuf;

/// What went wrong reading or writing the store's files.
///
/// Damaged *records* are not errors: recovery cuts the log at the first bad record and reports
/// it in [`crate::ShardReport::stop`]. These are the failures recovery cannot work around.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system call failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A segment was written by a newer format this build does not read.
    #[error("{path}: segment format version {found}, this build reads up to {supported}")]
    UnsupportedVersion {
        /// The segment file.
        path: PathBuf,
        /// Version in its header.
        found: u16,
        /// Highest version this build reads.
        supported: u16,
    },
    /// The generation file exists but does not hold a generation number.
    #[error("{path}: not a generation file ({why})")]
    BadGeneration {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Why a record's bytes (whose checksum matched) could not be decoded: a bug or a format
/// mismatch, reported as corruption by recovery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body ended before a field.
    #[error("record truncated")]
    Truncated,
    /// Bytes left after the last field.
    #[error("{0} trailing bytes after the record")]
    Trailing(usize),
    /// Unknown record kind byte.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// A field holds a value it cannot hold.
    #[error("bad value for {0}")]
    BadValue(&'static str),
    /// An embedded MQTT packet image did not decode.
    #[error("embedded {0} image: {1}")]
    BadImage(&'static str, String),
}
