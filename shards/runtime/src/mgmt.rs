//! The management API's way into the shards: listing and acting on clients, sessions,
//! subscriptions, routes and retained messages, publishing as the broker, tracing a client.
//!
//! Each shard has a bounded queue of [`Call`]s and a wake socket (the pattern of the control
//! plane's [`link`](crate::link)): [`Management::ask`] queues a request, writes one byte, and
//! awaits the answer on a oneshot channel; the shard's `mgmt_inbox` task reads the byte and
//! answers every queued call on the shard's own thread, between two turns of its loop. Every
//! answer costs the shard work bounded by the request's `limit` ([`MAX_PAGE`] at most), except
//! the walks of the route and retained replicas, which visit every entry (and keep `limit` of
//! them): see [`Request::Routes`] and [`Request::Retained`].

use crate::bus::ShardId;
use std::io::{self, Write};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

pub use shardmq_core::mgmt::*;

/// A request and where its answer goes.
pub(crate) struct Call {
    pub(crate) request: Request,
    pub(crate) reply: tokio::sync::oneshot::Sender<Reply>,
}

/// Why [`Management::ask`] got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    /// The shard has [`QUEUE_CALLS`] calls waiting: try again later.
    #[error("shard {0} is busy with management calls")]
    Busy(ShardId),
    /// The shard is gone (the node is stopping).
    #[error("shard {0} is gone")]
    Gone(ShardId),
}

/// The management API's handle on every shard; cheap to share between threads.
pub struct Management {
    outlets: Vec<Outlet>,
}

struct Outlet {
    tx: crossbeam_channel::Sender<Call>,
    wake: UnixStream,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Management")
            .field("shards", &self.outlets.len())
            .finish()
    }
}

/// One shard's end: its queue and the socket that wakes it.
pub(crate) struct Inbox {
    pub(crate) rx: crossbeam_channel::Receiver<Call>,
    pub(crate) wake: OwnedFd,
}

impl Management {
    /// The handle and each shard's inbox.
    pub(crate) fn new(shards: usize) -> io::Result<(Management, Vec<Inbox>)> {
        let mut outlets = Vec::with_capacity(shards);
        let mut inboxes = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = crossbeam_channel::bounded(QUEUE_CALLS);
            let (ours, theirs) = UnixStream::pair()?;
            ours.set_nonblocking(true)?;
            theirs.set_nonblocking(true)?;
            // SAFETY: `into_raw_fd` gives up ownership of a valid, open socket.
            let wake =
                unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(theirs.into_raw_fd()) };
            outlets.push(Outlet { tx, wake: ours });
            inboxes.push(Inbox { rx, wake });
        }
        Ok((Management { outlets }, inboxes))
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.outlets.len()
    }

    /// Asks `shard`; the answer comes after the shard's current turn.
    pub async fn ask(&self, shard: ShardId, request: Request) -> Result<Reply, AskError> {
        let out = self.outlets.get(shard).ok_or(AskError::Gone(shard))?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        match out.tx.try_send(Call { request, reply }) {
            Ok(()) => {}
            Err(crossbeam_channel::TrySendError::Full(_)) => return Err(AskError::Busy(shard)),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                return Err(AskError::Gone(shard))
            }
        }
        // A full socket buffer means the shard has wake-ups it has not read yet: enough.
        match (&out.wake).write(&[1]) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Err(AskError::Gone(shard)),
        }
        answer.await.map_err(|_| AskError::Gone(shard))
    }

    /// Asks every shard the same, in shard order.
    pub async fn ask_all(&self, request: Request) -> Result<Vec<Reply>, AskError> {
        let mut answers = Vec::with_capacity(self.outlets.len());
        for shard in 0..self.outlets.len() {
            answers.push(self.ask(shard, request.clone()).await?);
        }
        Ok(answers)
    }
}
