//! shardmq-store: the durable storage format of a shard — records, segment files, recovery,
//! snapshots. Pure: no glommio, no threads, no clock; the runtime does the per-message I/O.
//!
//! # Layout
//! ```text
//! <storage.dir>/shards/GENERATION          committed start-up generation (decimal)
//! <storage.dir>/shards/<shard-id>/NNNNNNNN.log   segments, numbered, append-only
//! ```
//! Each shard owns its directory (no lock shared between shards). A segment starts with a
//! versioned, checksummed header and holds framed records, each with its length and a CRC32C
//! over its LSN and bytes ([`format`]).
//!
//! # What the runtime does, in order
//! 1. **Start-up**, before serving: [`restart`] (or its steps: [`recover`],
//!    [`State::split`], [`write_snapshot`] per shard, [`commit_generation`],
//!    [`remove_obsolete`]). Each shard gets the sessions and retained topics it owns and a
//!    [`LogPosition`]; every shard loads every part's retained entries into its replica.
//! 2. **Per shard**, a [`LogWriter`] (`LogConfig::new(shard, generation)`), a
//!    [`MessageTable`] (`adopt` the recovered messages).
//! 3. **Each loop turn**: turn the session journal's changes and retained changes into
//!    [`Record`]s and [`LogWriter::append`] them (a `MessagePut` first when the table says so);
//!    remember the returned [`Lsn`] as the durable gate of output that depends on it.
//! 4. **Writer task** (one per shard, glommio file I/O): when idle and
//!    [`LogWriter::take_batch`] gives a [`Batch`], write it, fdatasync, call
//!    [`LogWriter::batch_written`] and [`LogWriter::batch_durable`], release the gates.
//! 5. **Compaction**, when [`LogWriter::compaction_due`]: [`LogWriter::begin_compaction`],
//!    [`MessageTable::begin_pass`], re-image every owned live item a few per turn,
//!    [`LogWriter::end_compaction`], then delete what [`LogWriter::take_obsolete`] returns.
//!
//! Records are self-contained and keyed by client id, so a shard's log replays without any
//! other shard's. See [`recover`] for exactly what a damaged log recovers to.
#![warn(missing_docs, unreachable_pub)]

mod error;
pub mod format;
mod layout;
mod message_table;
mod record;
mod recover;
mod snapshot;
mod state;
mod writer;

pub use error::{DecodeError, StoreError};
pub use format::{decode_batch, decode_record, encode_batch, encode_record, SegmentHeader};
pub use layout::{
    commit_generation, list_segments, list_shard_dirs, parse_segment_file_name, read_generation,
    segment_file_name, shard_dir, shards_root, sync_dir, CORRUPT_SUFFIX, GENERATION_FILE,
    SEGMENT_SUFFIX, SHARDS_DIR,
};
pub use message_table::{MessageRef, MessageTable, MESSAGE_TABLE_MAX};
pub use record::*;
pub use recover::{recover, recover_shard, Recovered, SegmentReport, ShardReport, Stop, StopKind};
pub use snapshot::{
    remove_generations_above, remove_obsolete, restart, write_snapshot, Cleanup, Restart,
    ShardStart, SNAPSHOT_FLUSH_BYTES,
};
pub use state::{RetainedEntry, State};
pub use writer::{
    Batch, CompactionPass, LogConfig, LogPosition, LogWriter, SegmentWrite,
    COMPACT_MIN_BYTES_DEFAULT, COMPACT_RATIO_DEFAULT, SEGMENT_BYTES_DEFAULT,
};
