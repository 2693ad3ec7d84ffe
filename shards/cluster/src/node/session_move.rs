//! The control plane's side of a session moving between nodes (docs/cluster.md, "A session
//! moving between nodes"; the shards' side is `shardmq_core`'s `node_moves`).
//!
//! - **New node**: a shard asks ([`ToCluster::SessionFetch`]); if the replica of the session
//!   registry names another node, this node opens a `Node` stream to it with
//!   [`NodeRequest::TakeSession`] and reads the session back in [`SessionFrame`]s. Whatever
//!   happens (no owner, owner down, no answer within `cluster.session_move_timeout_ms`, a
//!   malformed answer), the shard gets an answer within that time: the session, or none.
//! - **Old node**: every shard is asked ([`FromCluster::SessionMoveOut`]); the first image that
//!   comes back, or `None` once every shard said it has none, is the answer.

use super::*;
use bytes::Bytes;

/// Most bytes of a session image this node takes from another (as `shardmq_core`'s
/// `SESSION_WIRE_MAX`).
const SESSION_WIRE_MAX: usize = 256 << 20;

/// Bytes of a session image per frame on the stream.
const SESSION_CHUNK_BYTES: usize = 1 << 20;

/// What a `TakeSession` stream carries back: the image in chunks, then `End`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum SessionFrame {
    Chunk {
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// `found`: the chunks before were a session (none came if not).
    End { found: bool },
}

/// A move-out asked of this node's shards, until one answers with the session or all have
/// said they hold none.
pub(super) struct MoveOut {
    left: usize,
    tx: tokio::sync::oneshot::Sender<Option<Bytes>>,
}

/// Counters of session moves, for the metrics endpoint.
#[derive(Default)]
pub(super) struct MoveStats {
    /// Sessions this node fetched from another node.
    pub(super) moved_in: AtomicU64,
    /// Sessions this node handed to another node.
    pub(super) moved_out: AtomicU64,
    /// Fetches that got no session although the registry named another node (down, timed
    /// out, not there any more, malformed).
    pub(super) fetch_failed: AtomicU64,
}

impl ClusterNode {
    /// Answers a shard's [`ToCluster::SessionFetch`], never later than the move timeout.
    pub(super) fn session_fetch(&self, client_id: ByteStr, shard: ShardId, token: u64) {
        let me = self.clone();
        tokio::spawn(async move {
            let image = me.fetch_session(&client_id).await;
            me.send_shard(
                shard,
                vec![FromCluster::SessionFetched {
                    client_id,
                    token,
                    image,
                }],
            )
            .await;
        });
    }

    async fn fetch_session(&self, client_id: &str) -> Option<Bytes> {
        let me = self.me();
        let (owner, addr) = self.tables(|t| {
            let owner = t.session_owner(client_id).filter(|&n| n != me)?;
            let addr: Option<SocketAddr> = t.members().get(&owner)?.addr.parse().ok();
            Some((owner, addr))
        })?;
        let stats = &self.inner.move_stats;
        let Some(addr) = addr else {
            warn!(
                client_id,
                owner, "session's node has no address; new session"
            );
            stats.fetch_failed.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let timeout = self.inner.s.session_move_timeout;
        let result = tokio::time::timeout(timeout, self.take_session_from(addr, client_id)).await;
        match result {
            Ok(Ok(Some(image))) => {
                stats.moved_in.fetch_add(1, Ordering::Relaxed);
                debug!(client_id, owner, bytes = image.len(), "session fetched");
                Some(image)
            }
            Ok(Ok(None)) => {
                // Registered there but gone (ended, or moved on meanwhile).
                debug!(client_id, owner, "session's node holds no session for it");
                stats.fetch_failed.fetch_add(1, Ordering::Relaxed);
                None
            }
            Ok(Err(e)) => {
                warn!(client_id, owner, error = %e, "cannot fetch the session from its node; new session");
                stats.fetch_failed.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(_) => {
                warn!(client_id, owner, ?timeout, "session's node did not hand it over within cluster.session_move_timeout_ms; new session");
                stats.fetch_failed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    async fn take_session_from(
        &self,
        addr: SocketAddr,
        client_id: &str,
    ) -> Result<Option<Bytes>, String> {
        let request = NodeRequest::TakeSession {
            client_id: client_id.to_string(),
        };
        let mut s = self.node_request(addr, &request).await?;
        let mut image = Vec::new();
        loop {
            match s.recv::<SessionFrame>().await.map_err(|e| e.to_string())? {
                Some(SessionFrame::Chunk { bytes }) => {
                    if image.len() + bytes.len() > SESSION_WIRE_MAX {
                        return Err(format!("session image over {SESSION_WIRE_MAX} bytes"));
                    }
                    image.extend_from_slice(&bytes);
                }
                Some(SessionFrame::End { found }) => {
                    return Ok(found.then(|| Bytes::from(image)));
                }
                None => return Err("stream ended before the session did".into()),
            }
        }
    }

    /// Serves [`NodeRequest::TakeSession`]: the session from this node's shards, in frames.
    pub(super) async fn serve_take_session(
        &self,
        stream: &mut FramedStream,
        client_id: String,
    ) -> Result<(), String> {
        let image = self.move_out(client_id).await;
        if let Some(image) = &image {
            self.inner
                .move_stats
                .moved_out
                .fetch_add(1, Ordering::Relaxed);
            for chunk in image.chunks(SESSION_CHUNK_BYTES) {
                let bytes = chunk.to_vec();
                stream
                    .send(&SessionFrame::Chunk { bytes })
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        stream
            .send(&SessionFrame::End {
                found: image.is_some(),
            })
            .await
            .map_err(|e| e.to_string())
    }

    /// Asks every shard to hand `client_id`'s session over.
    async fn move_out(&self, client_id: String) -> Option<Bytes> {
        let request = self.inner.next_move.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shards = self.inner.link.shards();
        self.inner
            .moves
            .locked()
            .insert(request, MoveOut { left: shards, tx });
        let client_id = ByteStr::from(client_id);
        self.broadcast(|| {
            vec![FromCluster::SessionMoveOut {
                request,
                client_id: client_id.clone(),
            }]
        })
        .await;
        // The shards answer within a turn; the asking node's own timeout is what bounds the
        // client's wait.
        let r = tokio::time::timeout(self.inner.s.session_move_timeout, rx).await;
        self.inner.moves.locked().remove(&request);
        r.ok().and_then(Result::ok).flatten()
    }

    /// A shard's [`ToCluster::SessionMovedOut`].
    pub(super) fn session_moved_out(&self, request: u64, image: Option<Bytes>) {
        let mut moves = self.inner.moves.locked();
        let done = match moves.get_mut(&request) {
            Some(m) if image.is_none() => {
                m.left = m.left.saturating_sub(1);
                m.left == 0
            }
            Some(_) => true,
            None => {
                if image.is_some() {
                    // The asking side gave up: this session is lost (docs/cluster.md).
                    warn!(
                        request,
                        "a session handed over after its move timed out is dropped"
                    );
                }
                false
            }
        };
        if done {
            if let Some(m) = moves.remove(&request) {
                let _ = m.tx.send(image);
            }
        }
    }
}
