//! The Raft log, vote and commit index, persisted in one redb database (`raft-log.redb`).
//!
//! Table `log`: log index → postcard of the openraft entry. Table `meta`: `vote`, `committed`
//! and `last_purged`, each a postcard value. Every write is one redb transaction with
//! immediate durability (fsync), run on tokio's blocking pool so the control-plane thread keeps
//! serving QUIC meanwhile.

// openraft's trait methods return its `StorageError` (over 200 bytes); our helpers follow them.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, LogState, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{NodeId, TypeConfig};

type Entry = openraft::Entry<TypeConfig>;

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

fn io_err(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn logs_err(verb: ErrorVerb) -> impl Fn(redb::Error) -> StorageError<NodeId> {
    move |e| io_err(ErrorSubject::Logs, verb, e)
}

/// The persistent Raft log of one core node. Cheap to clone: clones share the database.
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<redb::Database>,
}

impl LogStore {
    /// Opens (or creates) `dir/raft-log.redb`.
    pub(crate) fn open(dir: &Path) -> Result<LogStore, redb::Error> {
        let db = redb::Database::create(dir.join("raft-log.redb"))?;
        let tx = db.begin_write()?;
        tx.open_table(LOG)?;
        tx.open_table(META)?;
        tx.commit()?;
        Ok(LogStore { db: Arc::new(db) })
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<R, F>(&self, f: F) -> Result<R, StorageError<NodeId>>
    where
        F: FnOnce(&redb::Database) -> Result<R, StorageError<NodeId>> + Send + 'static,
        R: Send + 'static,
    {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(r) => r,
            Err(e) => Err(io_err(ErrorSubject::Store, ErrorVerb::Write, e)),
        }
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        db: &redb::Database,
        key: &str,
    ) -> Result<Option<T>, redb::Error> {
        let tx = db.begin_read()?;
        let table = tx.open_table(META)?;
        let Some(v) = table.get(key)? else {
            return Ok(None);
        };
        let v = postcard::from_bytes(v.value())
            .map_err(|e| redb::Error::Corrupted(format!("meta {key}: {e}")))?;
        Ok(Some(v))
    }

    fn put_meta<T: serde::Serialize>(
        db: &redb::Database,
        key: &str,
        v: &T,
    ) -> Result<(), redb::Error> {
        let bytes = postcard::to_allocvec(v)
            .map_err(|e| redb::Error::Corrupted(format!("meta {key}: {e}")))?;
        let tx = db.begin_write()?;
        tx.open_table(META)?.insert(key, bytes.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    fn read_range(
        db: &redb::Database,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<Vec<Entry>, redb::Error> {
        let tx = db.begin_read()?;
        let table = tx.open_table(LOG)?;
        let mut out = Vec::new();
        for item in table.range::<u64>((start, end))? {
            let (k, v) = item?;
            let e: Entry = postcard::from_bytes(v.value())
                .map_err(|e| redb::Error::Corrupted(format!("log entry {}: {e}", k.value())))?;
            out.push(e);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        self.blocking(move |db| {
            LogStore::read_range(db, start, end).map_err(logs_err(ErrorVerb::Read))
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        self.blocking(|db| {
            let f = || -> Result<LogState<TypeConfig>, redb::Error> {
                let last_purged: Option<LogId<NodeId>> = LogStore::get_meta(db, KEY_LAST_PURGED)?;
                let tx = db.begin_read()?;
                let table = tx.open_table(LOG)?;
                let last = match table.last()? {
                    Some((_, v)) => {
                        let e: Entry = postcard::from_bytes(v.value())
                            .map_err(|e| redb::Error::Corrupted(format!("last log entry: {e}")))?;
                        Some(e.log_id)
                    }
                    None => last_purged,
                };
                Ok(LogState {
                    last_purged_log_id: last_purged,
                    last_log_id: last,
                })
            };
            f().map_err(logs_err(ErrorVerb::Read))
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.blocking(move |db| {
            LogStore::put_meta(db, KEY_VOTE, &vote)
                .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.blocking(|db| {
            LogStore::get_meta(db, KEY_VOTE)
                .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))
        })
        .await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.blocking(move |db| {
            LogStore::put_meta(db, KEY_COMMITTED, &committed)
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.blocking(|db| {
            let v: Option<Option<LogId<NodeId>>> = LogStore::get_meta(db, KEY_COMMITTED)
                .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
            Ok(v.flatten())
        })
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut encoded = Vec::new();
        for e in entries {
            let bytes = postcard::to_allocvec(&e)
                .map_err(|err| io_err(ErrorSubject::Log(e.log_id), ErrorVerb::Write, err))?;
            encoded.push((e.log_id.index, bytes));
        }
        let r = self
            .blocking(move |db| {
                let f = || -> Result<(), redb::Error> {
                    let tx = db.begin_write()?;
                    {
                        let mut table = tx.open_table(LOG)?;
                        for (index, bytes) in &encoded {
                            table.insert(*index, bytes.as_slice())?;
                        }
                    }
                    tx.commit()?;
                    Ok(())
                };
                f().map_err(logs_err(ErrorVerb::Write))
            })
            .await;
        match &r {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        r
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.blocking(move |db| {
            let f = || -> Result<(), redb::Error> {
                let tx = db.begin_write()?;
                tx.open_table(LOG)?
                    .retain_in(log_id.index.., |_, _| false)?;
                tx.commit()?;
                Ok(())
            };
            f().map_err(logs_err(ErrorVerb::Delete))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.blocking(move |db| {
            let f = || -> Result<(), redb::Error> {
                let bytes = postcard::to_allocvec(&log_id)
                    .map_err(|e| redb::Error::Corrupted(format!("last_purged: {e}")))?;
                let tx = db.begin_write()?;
                tx.open_table(META)?
                    .insert(KEY_LAST_PURGED, bytes.as_slice())?;
                tx.open_table(LOG)?
                    .retain_in(..=log_id.index, |_, _| false)?;
                tx.commit()?;
                Ok(())
            };
            f().map_err(logs_err(ErrorVerb::Delete))
        })
        .await
    }
}
