//! The replicated state machine: [`Tables`] plus a [`ShardTail`] per RLOG shard, and its
//! snapshots.
//!
//! A snapshot is the postcard of [`SmData`] (tables, last applied log id, membership), kept in
//! `snapshot.bin` under the data dir as the postcard of a [`SnapshotFile`] (meta + data),
//! written to `snapshot.bin.tmp`, fsynced and renamed over the old one. The state machine
//! itself is not persisted otherwise: at start it loads the snapshot and openraft re-applies
//! the committed log after it.

// openraft's trait methods return its `StorageError` (over 200 bytes); our helpers follow them.
#![allow(clippy::result_large_err)]

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use shardmq_rlog::{Change, Entry, RlogShard, ShardTail, Tables};
use tokio::sync::{broadcast, watch};
use tracing::{debug, info};

use super::{NodeId, TypeConfig, WriteResult};
use crate::Locked;

const SNAPSHOT_FILE: &str = "snapshot.bin";
const SNAPSHOT_TMP_FILE: &str = "snapshot.bin.tmp";

/// What a snapshot holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub(crate) struct SmData {
    pub(crate) last_applied: Option<LogId<NodeId>>,
    pub(crate) last_membership: StoredMembership<NodeId, BasicNode>,
    pub(crate) tables: Tables,
}

/// The snapshot file: meta and the postcard of [`SmData`].
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// State under the hub's lock: changed only by apply and snapshot install.
pub(crate) struct Applied {
    pub(crate) data: SmData,
    pub(crate) tails: Vec<ShardTail>,
}

/// What the state machine shares with [`super::CoreGroup`]: the applied state and the fan-out
/// channels. Entries are sent under the lock, so a subscriber that reads the state and
/// subscribes under it misses and duplicates nothing.
pub(crate) struct Hub {
    state: Mutex<Applied>,
    pub(crate) entries: broadcast::Sender<Entry>,
    pub(crate) changes: broadcast::Sender<Vec<Change>>,
    pub(crate) seqs: watch::Sender<[u64; RlogShard::COUNT]>,
}

impl Hub {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Applied> {
        self.state.locked()
    }
}

fn sm_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::StateMachine, verb, AnyError::new(&e)).into()
}

fn snap_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::Snapshot(None), verb, AnyError::new(&e)).into()
}

/// The openraft state machine of a core.
pub(crate) struct StateMachine {
    hub: Arc<Hub>,
    dir: PathBuf,
    snapshot_count: u64,
}

impl StateMachine {
    /// Loads the last snapshot from `dir` if there is one.
    pub(crate) fn open(
        dir: &Path,
        tail_len: usize,
        entries_cap: usize,
        changes_cap: usize,
    ) -> Result<(StateMachine, Arc<Hub>), StorageError<NodeId>> {
        let data = match read_snapshot_file(dir)? {
            Some(file) => {
                let data: SmData =
                    postcard::from_bytes(&file.data).map_err(|e| snap_err(ErrorVerb::Read, e))?;
                info!(last_applied = ?data.last_applied, "loaded raft snapshot");
                data
            }
            None => SmData::default(),
        };
        let seqs = data.tables.seqs();
        let tails = RlogShard::ALL
            .iter()
            .map(|&s| {
                let mut t = ShardTail::new(s, tail_len);
                t.reset_to(seqs[s.index()]);
                t
            })
            .collect();
        let hub = Arc::new(Hub {
            state: Mutex::new(Applied { data, tails }),
            entries: broadcast::channel(entries_cap).0,
            changes: broadcast::channel(changes_cap).0,
            seqs: watch::channel(seqs).0,
        });
        Ok((
            StateMachine {
                hub: hub.clone(),
                dir: dir.to_path_buf(),
                snapshot_count: 0,
            },
            hub,
        ))
    }
}

fn read_snapshot_file(dir: &Path) -> Result<Option<SnapshotFile>, StorageError<NodeId>> {
    let bytes = match std::fs::read(dir.join(SNAPSHOT_FILE)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(snap_err(ErrorVerb::Read, e)),
    };
    let file = postcard::from_bytes(&bytes).map_err(|e| snap_err(ErrorVerb::Read, e))?;
    Ok(Some(file))
}

fn write_snapshot_file(
    dir: &Path,
    meta: &SnapshotMeta<NodeId, BasicNode>,
    data: &[u8],
) -> Result<(), StorageError<NodeId>> {
    let file = SnapshotFile {
        meta: meta.clone(),
        data: data.to_vec(),
    };
    let bytes = postcard::to_allocvec(&file).map_err(|e| snap_err(ErrorVerb::Write, e))?;
    let tmp = dir.join(SNAPSHOT_TMP_FILE);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| snap_err(ErrorVerb::Write, e))
}

/// Builds snapshots from a copy of the state taken under the lock.
pub(crate) struct SnapshotBuilder {
    hub: Arc<Hub>,
    dir: PathBuf,
    id: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let data = self.hub.lock().data.clone();
        let bytes = postcard::to_allocvec(&data).map_err(|e| snap_err(ErrorVerb::Write, e))?;
        let snapshot_id = match data.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.id),
            None => format!("none-{}", self.id),
        };
        let meta = SnapshotMeta {
            last_log_id: data.last_applied,
            last_membership: data.last_membership.clone(),
            snapshot_id,
        };
        let dir = self.dir.clone();
        let (m, b) = (meta.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || write_snapshot_file(&dir, &m, &b))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))??;
        debug!(snapshot = %meta.snapshot_id, bytes = bytes.len(), "raft snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let st = self.hub.lock();
        Ok((st.data.last_applied, st.data.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<WriteResult>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let hub = &self.hub;
        let mut changes = Vec::new();
        let mut results = Vec::new();
        let mut st = hub.lock();
        let st = &mut *st;
        for ent in entries {
            st.data.last_applied = Some(ent.log_id);
            match ent.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => {
                    for op in batch.ops {
                        let e = st.data.tables.apply(op, &mut changes);
                        st.tails[e.shard.index()].push(e.clone());
                        // No receiver is fine: nobody follows the entries now.
                        let _ = hub.entries.send(e);
                    }
                }
                EntryPayload::Membership(m) => {
                    st.data.last_membership = StoredMembership::new(Some(ent.log_id), m);
                }
            }
            results.push(WriteResult {
                seqs: st.data.tables.seqs(),
            });
        }
        hub.seqs.send_replace(st.data.tables.seqs());
        if !changes.is_empty() {
            let _ = hub.changes.send(changes);
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_count += 1;
        SnapshotBuilder {
            hub: self.hub.clone(),
            dir: self.dir.clone(),
            id: self.snapshot_count,
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let new: SmData = postcard::from_bytes(&bytes).map_err(|e| sm_err(ErrorVerb::Read, e))?;
        let dir = self.dir.clone();
        let m = meta.clone();
        let b = bytes.clone();
        tokio::task::spawn_blocking(move || write_snapshot_file(&dir, &m, &b))
            .await
            .map_err(|e| snap_err(ErrorVerb::Write, e))??;

        let hub = &self.hub;
        let mut changes = Vec::new();
        let mut st = hub.lock();
        let st = &mut *st;
        // Shard by shard, so that the data plane gets the exact diff old → new.
        for shard in RlogShard::ALL {
            st.data
                .tables
                .replace_shard(new.tables.snapshot_shard(shard), &mut changes);
        }
        debug_assert!(
            st.data.tables == new.tables,
            "snapshot install left tables different"
        );
        st.data.tables = new.tables;
        st.data.last_applied = meta.last_log_id;
        st.data.last_membership = meta.last_membership.clone();
        let seqs = st.data.tables.seqs();
        for tail in &mut st.tails {
            tail.reset_to(seqs[tail.shard().index()]);
        }
        info!(snapshot = %meta.snapshot_id, ?seqs, changes = changes.len(), "raft snapshot installed");
        hub.seqs.send_replace(seqs);
        if !changes.is_empty() {
            let _ = hub.changes.send(changes);
        }
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let dir = self.dir.clone();
        let file = tokio::task::spawn_blocking(move || read_snapshot_file(&dir))
            .await
            .map_err(|e| snap_err(ErrorVerb::Read, e))??;
        Ok(file.map(|f| Snapshot {
            meta: f.meta,
            snapshot: Box::new(Cursor::new(f.data)),
        }))
    }
}
