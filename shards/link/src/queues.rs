//! The bounded queues between the data plane and the control plane (feature `queues`: the
//! message types alone need no channel crate).

use crate::{FromCluster, ShardId, ToCluster};
use std::io::{self, Write};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// Batches in flight per direction and shard before a sender waits.
pub const LINK_CAPACITY: usize = 1024;

/// The data plane's ends, handed to `Node::start`.
pub struct DataPlaneLink {
    uplink: tokio::sync::mpsc::Sender<Vec<ToCluster>>,
    inboxes: Vec<ShardInbox>,
}

impl DataPlaneLink {
    /// The sender of the shards' batches (cloned once per shard) and one inbox per shard.
    pub fn into_parts(self) -> (tokio::sync::mpsc::Sender<Vec<ToCluster>>, Vec<ShardInbox>) {
        (self.uplink, self.inboxes)
    }
}

impl std::fmt::Debug for DataPlaneLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlaneLink")
            .field("shards", &self.inboxes.len())
            .finish()
    }
}

/// One shard's inbound queue and the socket that wakes it.
pub struct ShardInbox {
    /// The batches, in the control plane's order.
    pub rx: crossbeam_channel::Receiver<Vec<FromCluster>>,
    /// Readable when a batch was queued; the shard reads it empty, then drains `rx`.
    pub wake: OwnedFd,
}

impl std::fmt::Debug for ShardInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardInbox")
            .field("queued", &self.rx.len())
            .finish()
    }
}

/// The control plane's ends.
pub struct ControlPlaneLink {
    /// Batches from every shard, in each shard's order.
    pub uplink: tokio::sync::mpsc::Receiver<Vec<ToCluster>>,
    outlets: Vec<ShardOutlet>,
}

struct ShardOutlet {
    tx: crossbeam_channel::Sender<Vec<FromCluster>>,
    wake: UnixStream,
}

/// Why a batch could not be queued for a shard.
#[derive(Debug)]
pub enum SendError {
    /// The shard's queue holds `LINK_CAPACITY` batches: retry later (the batch is returned).
    Full(Vec<FromCluster>),
    /// The shard is gone.
    Closed,
}

impl ControlPlaneLink {
    /// Takes the receiving end of the shards' batches out of the link, for its own task.
    pub fn take_uplink(
        mut self,
    ) -> (
        ControlPlaneLink,
        tokio::sync::mpsc::Receiver<Vec<ToCluster>>,
    ) {
        let (_, closed) = tokio::sync::mpsc::channel(1);
        let uplink = std::mem::replace(&mut self.uplink, closed);
        (self, uplink)
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.outlets.len()
    }

    /// Queues `batch` for `shard` and wakes it.
    pub fn try_send(&self, shard: ShardId, batch: Vec<FromCluster>) -> Result<(), SendError> {
        let out = &self.outlets[shard];
        match out.tx.try_send(batch) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(b)) => return Err(SendError::Full(b)),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Err(SendError::Closed),
        }
        // A full socket buffer means the shard has wake-ups it has not read yet: enough.
        match (&out.wake).write(&[1]) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(_) => Err(SendError::Closed),
        }
    }
}

/// Makes the link between a data plane of `shards` shards and the control plane.
pub fn link(shards: usize) -> io::Result<(DataPlaneLink, ControlPlaneLink)> {
    let (up_tx, up_rx) = tokio::sync::mpsc::channel(LINK_CAPACITY * shards.max(1));
    let mut inboxes = Vec::with_capacity(shards);
    let mut outlets = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = crossbeam_channel::bounded(LINK_CAPACITY);
        let (ours, theirs) = UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        theirs.set_nonblocking(true)?;
        // SAFETY: `into_raw_fd` gives up ownership of a valid, open socket.
        let wake =
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(theirs.into_raw_fd()) };
        inboxes.push(ShardInbox { rx, wake });
        outlets.push(ShardOutlet { tx, wake: ours });
    }
    Ok((
        DataPlaneLink {
            uplink: up_tx,
            inboxes,
        },
        ControlPlaneLink {
            uplink: up_rx,
            outlets,
        },
    ))
}
