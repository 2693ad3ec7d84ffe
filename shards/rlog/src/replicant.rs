//! Replicant side of one shard stream.

use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::{Change, Entry, NodeId, RlogError, RlogShard, Tables, ToCore, ToReplicant};

/// Where a replicant's shard stream is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardState {
    /// No stream, or `Hello` sent and no answer yet.
    Disconnected,
    /// Receiving a snapshot; live entries are buffered.
    Bootstrap,
    /// Applying the buffered entries newer than the snapshot (inside the `BootstrapEnd` call).
    LocalReplay,
    /// Following the live stream.
    Normal,
}

impl ShardState {
    /// Lower-case name for status and metrics: `disconnected`, `bootstrap`, `local_replay`,
    /// `normal`.
    pub fn name(self) -> &'static str {
        match self {
            ShardState::Disconnected => "disconnected",
            ShardState::Bootstrap => "bootstrap",
            ShardState::LocalReplay => "local_replay",
            ShardState::Normal => "normal",
        }
    }
}

/// The replicant side of one shard. Pure: the transport sends [`ReplicantShard::hello`] on a
/// new stream, feeds each received message to [`ReplicantShard::on_message`] and sends what it
/// pushes to `out`. On `Err` (a gap, a message out of place, a replay overflow) the stream is
/// unusable: the transport drops it and reconnects, to any core; the state is already
/// `Disconnected` and `tables` hold a consistent prefix of the log.
///
/// Every message is checked against the state, so loss, reordering or duplication by the
/// transport is detected (as an `Err`) or harmless (a duplicate entry is skipped); it never
/// makes the tables diverge from the cores'.
#[derive(Debug)]
pub struct ReplicantShard {
    shard: RlogShard,
    replay_max: usize,
    state: ShardState,
    boot: Option<Boot>,
    bootstrap_keys: u64,
    bootstraps: u64,
    resumes: u64,
    upstream_seq: u64,
}

#[derive(Debug)]
struct Boot {
    seq: u64,
    keys: u64,
    received: u64,
    next_batch: u64,
    staging: Tables,
    buffer: Vec<Entry>,
    buffered_seq: u64,
}

impl ReplicantShard {
    /// A disconnected shard that buffers at most `replay_max` live entries while bootstrapping.
    pub fn new(shard: RlogShard, replay_max: usize) -> Self {
        Self {
            shard,
            replay_max,
            state: ShardState::Disconnected,
            boot: None,
            bootstrap_keys: 0,
            bootstraps: 0,
            resumes: 0,
            upstream_seq: 0,
        }
    }

    /// Shard of this stream.
    pub fn shard(&self) -> RlogShard {
        self.shard
    }

    /// First message of a new stream. `checkpoint` is `Some(tables.seq(shard))` unless `fresh`
    /// (this node never synced the shard, so its tables prove nothing).
    pub fn hello(&self, node: NodeId, tables: &Tables, fresh: bool) -> ToCore {
        ToCore::Hello {
            node,
            shard: self.shard,
            checkpoint: (!fresh).then(|| tables.seq(self.shard)),
        }
    }

    /// Handles one message from the core; pushes the replies (acks) to `out` and the effective
    /// table changes to `changes`. On `Err` the state is `Disconnected`.
    pub fn on_message(
        &mut self,
        msg: ToReplicant,
        tables: &mut Tables,
        changes: &mut Vec<Change>,
        out: &mut Vec<ToCore>,
    ) -> Result<(), RlogError> {
        let r = self.handle(msg, tables, changes, out);
        if let Err(e) = &r {
            debug!(shard = self.shard.name(), error = %e, "rlog stream error");
            self.on_disconnect();
        }
        r
    }

    fn handle(
        &mut self,
        msg: ToReplicant,
        tables: &mut Tables,
        changes: &mut Vec<Change>,
        out: &mut Vec<ToCore>,
    ) -> Result<(), RlogError> {
        let seen = match &msg {
            ToReplicant::Resume { from } => *from,
            ToReplicant::BootstrapBegin { seq, .. } => *seq,
            ToReplicant::Entries(entries) => entries.last().map_or(0, |e| e.seq),
            ToReplicant::BootstrapBatch { .. } | ToReplicant::BootstrapEnd => 0,
        };
        self.upstream_seq = self.upstream_seq.max(seen);
        match (self.state, msg) {
            (ShardState::Disconnected, ToReplicant::Resume { from }) => {
                if from != tables.seq(self.shard) {
                    return Err(RlogError::Protocol("resume from another checkpoint"));
                }
                self.state = ShardState::Normal;
                self.resumes += 1;
                debug!(shard = self.shard.name(), from, "rlog resumed");
                Ok(())
            }
            (ShardState::Disconnected, ToReplicant::BootstrapBegin { seq, keys }) => {
                self.state = ShardState::Bootstrap;
                self.bootstrap_keys = keys;
                self.boot = Some(Boot {
                    seq,
                    keys,
                    received: 0,
                    next_batch: 1,
                    staging: Tables::default(),
                    buffer: Vec::new(),
                    buffered_seq: seq,
                });
                debug!(
                    shard = self.shard.name(),
                    seq, keys, "rlog bootstrap begins"
                );
                Ok(())
            }
            (ShardState::Bootstrap, ToReplicant::BootstrapBatch { batch, ops }) => {
                let boot = self
                    .boot
                    .as_mut()
                    .ok_or(RlogError::Protocol("no bootstrap"))?;
                if batch != boot.next_batch {
                    return Err(RlogError::Protocol("bootstrap batch out of order"));
                }
                if boot.received + ops.len() as u64 > boot.keys {
                    return Err(RlogError::Protocol(
                        "bootstrap sent more ops than announced",
                    ));
                }
                for op in &ops {
                    if op.shard() != self.shard {
                        return Err(RlogError::Protocol("bootstrap op of another shard"));
                    }
                    boot.staging.apply_op(op, None);
                }
                boot.received += ops.len() as u64;
                boot.next_batch += 1;
                out.push(ToCore::BootstrapAck { batch });
                Ok(())
            }
            (ShardState::Bootstrap, ToReplicant::Entries(entries)) => {
                let boot = self
                    .boot
                    .as_mut()
                    .ok_or(RlogError::Protocol("no bootstrap"))?;
                for e in entries {
                    if e.shard != self.shard || e.op.shard() != self.shard {
                        return Err(RlogError::Protocol("entry of another shard"));
                    }
                    if e.seq <= boot.buffered_seq {
                        continue;
                    }
                    if e.seq != boot.buffered_seq + 1 {
                        return Err(RlogError::Gap {
                            shard: self.shard,
                            have: boot.buffered_seq,
                            got: e.seq,
                        });
                    }
                    if boot.buffer.len() >= self.replay_max {
                        return Err(RlogError::ReplayOverflow {
                            shard: self.shard,
                            replay_max: self.replay_max,
                        });
                    }
                    boot.buffered_seq = e.seq;
                    boot.buffer.push(e);
                }
                Ok(())
            }
            (ShardState::Bootstrap, ToReplicant::BootstrapEnd) => {
                let boot = self
                    .boot
                    .take()
                    .ok_or(RlogError::Protocol("no bootstrap"))?;
                if boot.received != boot.keys {
                    return Err(RlogError::Protocol(
                        "bootstrap ended before all ops arrived",
                    ));
                }
                self.state = ShardState::LocalReplay;
                tables.replace_shard_from(self.shard, boot.staging, boot.seq, changes);
                let replayed = boot.buffer.len();
                for e in &boot.buffer {
                    tables.apply_entry(e, changes)?;
                }
                self.state = ShardState::Normal;
                self.bootstraps += 1;
                debug!(
                    shard = self.shard.name(),
                    seq = boot.seq,
                    keys = boot.keys,
                    replayed,
                    "rlog bootstrap done"
                );
                Ok(())
            }
            (ShardState::Normal, ToReplicant::Entries(entries)) => {
                for e in &entries {
                    if e.shard != self.shard {
                        return Err(RlogError::Protocol("entry of another shard"));
                    }
                    tables.apply_entry(e, changes)?;
                }
                Ok(())
            }
            (ShardState::Disconnected, _) => Err(RlogError::Protocol("message before handshake")),
            (ShardState::Bootstrap, _) => {
                Err(RlogError::Protocol("unexpected message in bootstrap"))
            }
            (ShardState::LocalReplay | ShardState::Normal, _) => {
                Err(RlogError::Protocol("unexpected message in normal state"))
            }
        }
    }

    /// The stream is gone: forget any bootstrap in progress. `tables` keep what was applied.
    pub fn on_disconnect(&mut self) {
        self.state = ShardState::Disconnected;
        self.boot = None;
    }

    /// Current state.
    pub fn state(&self) -> ShardState {
        self.state
    }

    /// Live entries buffered by the bootstrap in progress.
    pub fn replay_queue_len(&self) -> usize {
        self.boot.as_ref().map_or(0, |b| b.buffer.len())
    }

    /// Ops announced by the current or last bootstrap.
    pub fn bootstrap_keys(&self) -> u64 {
        self.bootstrap_keys
    }

    /// Highest seq of this shard the upstream cores announced or sent so far: the replicant's
    /// lag is `upstream_seq() - tables.seq(shard)` (saturating).
    pub fn upstream_seq(&self) -> u64 {
        self.upstream_seq
    }

    /// Completed bootstraps.
    pub fn bootstraps(&self) -> u64 {
        self.bootstraps
    }

    /// Streams that resumed from a checkpoint.
    pub fn resumes(&self) -> u64 {
        self.resumes
    }
}
