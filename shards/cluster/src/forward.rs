//! Publishes forwarded between nodes.
//!
//! A publish matched to remote nodes is sent once per node. Each peer has `forward_lanes`
//! ordered lanes, each one QUIC stream; a message takes the lane of its topic's hash, so the
//! messages of one topic (and so of one publisher and topic) arrive in the order they were
//! published. A lane sends batches of up to [`BATCH_MAX`] messages as soon as it has them, and
//! the receiver acknowledges each batch after handing it to its shards. Unacknowledged batches
//! are kept; when the stream or connection breaks, the lane reconnects and sends them again
//! (QoS 1 and 2 messages; QoS 0 ones are dropped and counted). The receiver remembers the last
//! batch it delivered per (sender incarnation, lane), so a batch sent twice is delivered once.
//!
//! Bounded: at most `forward_pending_max` messages per peer are queued or unacknowledged;
//! beyond it new messages to that peer are dropped, counted in `forward_dropped` and logged.

use crate::transport::{FrameReceiver, FramedStream, StreamKind, Transport};
use crate::Locked;
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use shardmq_broker::Message;
use shardmq_codec::{encode_publish, ByteStr, Decoder, Packet, Protocol, Publish, QoS};
use shardmq_rlog::NodeId;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

/// Most messages in one forwarded batch.
pub(crate) const BATCH_MAX: usize = 512;
/// Most unacknowledged batches per lane; a lane waits for acks beyond it.
pub(crate) const LANE_WINDOW_BATCHES: usize = 64;
/// Largest forwarded PUBLISH the receiver decodes.
const PACKET_MAX_BYTES: u32 = 256 << 20;

/// Frames of a forward stream, sender → receiver.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FwdFrame {
    /// First frame: who sends, which incarnation (process start) and lane.
    Hello {
        /// Sending node.
        node: NodeId,
        /// Changes each time the sender starts: batch ids restart with it.
        incarnation: u64,
        /// Lane index.
        lane: u16,
    },
    /// Messages, as MQTT 5.0 PUBLISH packets back to back.
    Batch {
        /// Batch id, increasing per lane and incarnation.
        id: u64,
        /// The packets.
        #[serde(with = "serde_bytes")]
        packets: Vec<u8>,
        /// Messages (by index in the batch) meant for one shared subscription only.
        shares: Vec<(u32, String)>,
    },
}

/// Receiver → sender: every batch up to `upto` is delivered.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct FwdAck {
    upto: u64,
}

/// Forwarding counters, for metrics.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Messages sent to other nodes (first sends; resends not counted).
    pub sent: AtomicU64,
    /// Messages received from other nodes and delivered to this node's shards.
    pub received: AtomicU64,
    /// Messages dropped: peer over `forward_pending_max`, or QoS 0 unacknowledged at a break.
    pub dropped: AtomicU64,
    /// Messages sent again after a break.
    pub resent: AtomicU64,
    /// Batches received twice and skipped.
    pub duplicates: AtomicU64,
}

/// Where received messages go: the node's shards.
pub(crate) trait Deliver: Send + Sync + 'static {
    /// Hands `msgs` (in order) to this node's data plane; a message with a share is for that
    /// shared subscription's members only.
    fn deliver(
        &self,
        msgs: Vec<Fwd>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

/// A forwarded message, and the shared subscription it is for, if it is for one only.
pub(crate) type Fwd = (Arc<Message>, Option<ByteStr>);

struct Peer {
    addr: watch::Sender<Option<SocketAddr>>,
    lanes: Vec<mpsc::UnboundedSender<Fwd>>,
    pending: Arc<AtomicUsize>,
}

/// The sending side for every peer, and the receiving side's duplicate filter.
pub(crate) struct Forwarder {
    me: NodeId,
    incarnation: u64,
    transport: Transport,
    lanes: usize,
    pending_max: usize,
    peers: Mutex<HashMap<NodeId, Peer>>,
    hasher: ahash::RandomState,
    /// (sender, lane) → (incarnation, last delivered batch id).
    seen: Mutex<HashMap<(NodeId, u16), (u64, u64)>>,
    pub(crate) stats: Arc<ForwardStats>,
}

impl Forwarder {
    pub(crate) fn new(
        me: NodeId,
        transport: Transport,
        lanes: usize,
        pending_max: usize,
    ) -> Forwarder {
        assert!(lanes > 0 && lanes <= usize::from(u16::MAX));
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Forwarder {
            me,
            incarnation,
            transport,
            lanes,
            pending_max,
            peers: Mutex::new(HashMap::new()),
            // Fixed keys: the lane of a topic must not change while the node runs.
            hasher: ahash::RandomState::with_seeds(1, 2, 3, 4),
            seen: Mutex::new(HashMap::new()),
            stats: Arc::new(ForwardStats::default()),
        }
    }

    /// Sets (or clears) a peer's address; lanes start on first use and follow address changes.
    pub(crate) fn set_peer(&self, node: NodeId, addr: Option<SocketAddr>) {
        if node == self.me {
            return;
        }
        let mut peers = self.peers.locked();
        match peers.get(&node) {
            Some(p) => {
                p.addr.send_replace(addr);
            }
            None => {
                if addr.is_some() {
                    let peer = self.start_peer(node, addr);
                    peers.insert(node, peer);
                }
            }
        }
    }

    /// Forgets a peer: its lanes stop, its queued messages are dropped.
    pub(crate) fn remove_peer(&self, node: NodeId) {
        let mut peers = self.peers.locked();
        if let Some(p) = peers.remove(&node) {
            p.addr.send_replace(None);
        }
    }

    /// Messages queued or unacknowledged, over every peer.
    pub(crate) fn pending_total(&self) -> usize {
        let peers = self.peers.locked();
        peers
            .values()
            .map(|p| p.pending.load(Ordering::Relaxed))
            .sum()
    }

    fn start_peer(&self, node: NodeId, addr: Option<SocketAddr>) -> Peer {
        let (addr_tx, addr_rx) = watch::channel(addr);
        let pending = Arc::new(AtomicUsize::new(0));
        let mut lanes = Vec::with_capacity(self.lanes);
        for lane in 0..self.lanes {
            let (tx, rx) = mpsc::unbounded_channel();
            let ctx = LaneCtx {
                me: self.me,
                incarnation: self.incarnation,
                peer: node,
                lane: lane as u16,
                transport: self.transport.clone(),
                pending: pending.clone(),
                stats: self.stats.clone(),
            };
            tokio::spawn(run_lane(ctx, rx, addr_rx.clone()));
            lanes.push(tx);
        }
        Peer {
            addr: addr_tx,
            lanes,
            pending,
        }
    }

    /// Queues `msg` for `node` on its topic's lane (for the members of `share` only, if given).
    pub(crate) fn send(&self, node: NodeId, msg: &Arc<Message>, share: Option<ByteStr>) {
        let peers = self.peers.locked();
        let Some(peer) = peers.get(&node) else {
            self.drop_one(node, "no address known for the node");
            return;
        };
        if peer.pending.load(Ordering::Relaxed) >= self.pending_max {
            drop(peers);
            self.drop_one(node, "cluster.forward_pending_max reached");
            return;
        }
        let mut h = self.hasher.build_hasher();
        h.write(msg.topic.as_bytes());
        let lane = (h.finish() % self.lanes as u64) as usize;
        peer.pending.fetch_add(1, Ordering::Relaxed);
        if peer.lanes[lane].send((msg.clone(), share)).is_err() {
            peer.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn drop_one(&self, node: NodeId, why: &'static str) {
        let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            warn!(node, dropped = n, why, "forwarded publish dropped");
        }
    }

    /// Serves a forward stream a peer opened: delivers each batch once, in order, and acks it.
    pub(crate) async fn serve(&self, mut stream: FramedStream, deliver: &dyn Deliver) {
        let (node, incarnation, lane) = match stream.recv::<FwdFrame>().await {
            Ok(Some(FwdFrame::Hello {
                node,
                incarnation,
                lane,
            })) => (node, incarnation, lane),
            Ok(_) => {
                warn!("forward stream without Hello; closing it");
                return;
            }
            Err(e) => {
                debug!(error = %e, "forward stream ended before Hello");
                return;
            }
        };
        let mut decoder = Decoder::with_protocol(Protocol::V5, PACKET_MAX_BYTES);
        loop {
            let (id, packets, shares) = match stream.recv::<FwdFrame>().await {
                Ok(Some(FwdFrame::Batch {
                    id,
                    packets,
                    shares,
                })) => (id, packets, shares),
                Ok(Some(FwdFrame::Hello { .. })) => {
                    warn!(node, "second Hello on a forward stream; closing it");
                    return;
                }
                Ok(None) => return,
                Err(e) => {
                    debug!(node, lane, error = %e, "forward stream ended");
                    return;
                }
            };
            let duplicate = {
                let seen = self.seen.locked();
                seen.get(&(node, lane))
                    .is_some_and(|&(inc, last)| inc == incarnation && id <= last)
            };
            if duplicate {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            } else {
                match decode_batch(&mut decoder, packets, &shares, Instant::now()) {
                    Ok(msgs) => {
                        self.stats
                            .received
                            .fetch_add(msgs.len() as u64, Ordering::Relaxed);
                        deliver.deliver(msgs).await;
                    }
                    // Acknowledged all the same: sent again it would fail again.
                    Err(why) => {
                        warn!(node, lane, id, why, "malformed forwarded batch skipped");
                        decoder = Decoder::with_protocol(Protocol::V5, PACKET_MAX_BYTES);
                    }
                }
                self.seen.locked().insert((node, lane), (incarnation, id));
            }
            if let Err(e) = stream.send(&FwdAck { upto: id }).await {
                debug!(node, lane, error = %e, "cannot ack a forwarded batch");
                return;
            }
        }
    }
}

struct LaneCtx {
    me: NodeId,
    incarnation: u64,
    peer: NodeId,
    lane: u16,
    transport: Transport,
    pending: Arc<AtomicUsize>,
    stats: Arc<ForwardStats>,
}

struct Unacked {
    id: u64,
    msgs: Vec<Fwd>,
}

/// One lane: connect, resend what is unacknowledged, then send batches as messages come.
async fn run_lane(
    ctx: LaneCtx,
    mut rx: mpsc::UnboundedReceiver<Fwd>,
    mut addr: watch::Receiver<Option<SocketAddr>>,
) {
    let mut unacked: VecDeque<Unacked> = VecDeque::new();
    let mut next_id = 1u64;
    let mut backoff = Duration::from_millis(20);
    let mut buf = BytesMut::new();
    loop {
        let Some(peer_addr) = *addr.borrow_and_update() else {
            // No address: the peer left. Drop what is queued and wait for one.
            let mut dropped = unacked.drain(..).map(|u| u.msgs.len()).sum::<usize>();
            while let Ok(_m) = rx.try_recv() {
                dropped += 1;
            }
            if dropped > 0 {
                ctx.pending.fetch_sub(dropped, Ordering::Relaxed);
                ctx.stats
                    .dropped
                    .fetch_add(dropped as u64, Ordering::Relaxed);
            }
            if addr.changed().await.is_err() {
                return;
            }
            continue;
        };
        let stream = match ctx.transport.open(peer_addr, StreamKind::Forward).await {
            Ok(s) => s,
            Err(e) => {
                debug!(peer = ctx.peer, lane = ctx.lane, error = %e, "forward lane cannot connect");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    r = addr.changed() => if r.is_err() { return },
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let (mut tx, frx) = stream.split();
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_acks(frx, ack_tx));
        let hello = FwdFrame::Hello {
            node: ctx.me,
            incarnation: ctx.incarnation,
            lane: ctx.lane,
        };
        let mut broken = tx.send(&hello).await.is_err();
        // Resend: QoS ≥ 1 messages again, QoS 0 ones are given up.
        if !broken && !unacked.is_empty() {
            let mut keep = VecDeque::with_capacity(unacked.len());
            for mut u in unacked.drain(..) {
                let before = u.msgs.len();
                u.msgs.retain(|(m, _)| m.qos != QoS::AtMostOnce);
                let gone = before - u.msgs.len();
                if gone > 0 {
                    ctx.pending.fetch_sub(gone, Ordering::Relaxed);
                    ctx.stats.dropped.fetch_add(gone as u64, Ordering::Relaxed);
                }
                if !u.msgs.is_empty() {
                    keep.push_back(u);
                }
            }
            unacked = keep;
            for u in &unacked {
                ctx.stats
                    .resent
                    .fetch_add(u.msgs.len() as u64, Ordering::Relaxed);
                if send_batch(&mut tx, u, &mut buf).await.is_err() {
                    broken = true;
                    break;
                }
            }
        }
        if !broken {
            backoff = Duration::from_millis(20);
        }
        while !broken {
            let room = unacked.len() < LANE_WINDOW_BATCHES;
            tokio::select! {
                ack = ack_rx.recv() => match ack {
                    Some(upto) => {
                        while unacked.front().is_some_and(|u| u.id <= upto) {
                            let u = unacked.pop_front().expect("front exists");
                            ctx.pending.fetch_sub(u.msgs.len(), Ordering::Relaxed);
                        }
                    }
                    None => broken = true,
                },
                first = rx.recv(), if room => {
                    let Some(first) = first else {
                        reader.abort();
                        return;
                    };
                    let mut msgs = Vec::with_capacity(16);
                    msgs.push(first);
                    while msgs.len() < BATCH_MAX {
                        match rx.try_recv() {
                            Ok(m) => msgs.push(m),
                            Err(_) => break,
                        }
                    }
                    ctx.stats.sent.fetch_add(msgs.len() as u64, Ordering::Relaxed);
                    let u = Unacked { id: next_id, msgs };
                    next_id += 1;
                    broken = send_batch(&mut tx, &u, &mut buf).await.is_err();
                    unacked.push_back(u);
                },
                r = addr.changed() => {
                    if r.is_err() {
                        reader.abort();
                        return;
                    }
                    broken = true;
                },
            }
        }
        reader.abort();
        debug!(
            peer = ctx.peer,
            lane = ctx.lane,
            unacked = unacked.len(),
            "forward lane broke; reconnecting"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

async fn read_acks(mut rx: FrameReceiver, acks: mpsc::UnboundedSender<u64>) {
    while let Ok(Some(FwdAck { upto })) = rx.recv::<FwdAck>().await {
        if acks.send(upto).is_err() {
            return;
        }
    }
}

async fn send_batch(
    tx: &mut crate::transport::FrameSender,
    u: &Unacked,
    buf: &mut BytesMut,
) -> Result<(), crate::transport::TransportError> {
    buf.clear();
    let now = Instant::now();
    let mut shares = Vec::new();
    for (i, (m, share)) in u.msgs.iter().enumerate() {
        encode_message(m, now, buf);
        if let Some(s) = share {
            shares.push((i as u32, s.to_string()));
        }
    }
    let frame = FwdFrame::Batch {
        id: u.id,
        packets: buf.to_vec(),
        shares,
    };
    tx.send(&frame).await
}

/// A message as the MQTT 5.0 PUBLISH that carries it between nodes: the expiry as seconds
/// left, packet id 1 for QoS ≥ 1 (unused), no alias and no subscription identifiers.
pub(crate) fn encode_message(m: &Message, now: Instant, buf: &mut BytesMut) {
    let mut properties = m.properties.clone();
    properties.message_expiry_interval = m.remaining_expiry_secs(now);
    properties.topic_alias = None;
    properties.subscription_identifiers.clear();
    let p = Publish {
        dup: false,
        qos: m.qos,
        retain: m.retain,
        topic: m.topic.clone(),
        pkid: if m.qos == QoS::AtMostOnce { 0 } else { 1 },
        properties,
        payload: m.payload.clone(),
    };
    encode_publish(&p, Protocol::V5, buf);
}

/// Decodes a batch back into messages; an error names what was wrong.
pub(crate) fn decode_batch(
    decoder: &mut Decoder,
    packets: Vec<u8>,
    shares: &[(u32, String)],
    now: Instant,
) -> Result<Vec<Fwd>, &'static str> {
    let mut buf = BytesMut::from(&packets[..]);
    let mut out: Vec<Fwd> = Vec::new();
    let mut shares = shares.iter().peekable();
    while !buf.is_empty() {
        match decoder.decode(&mut buf) {
            Ok(Some(Packet::Publish(p))) => {
                if p.topic.is_empty() {
                    return Err("forwarded PUBLISH without a topic");
                }
                let expires_at = p
                    .properties
                    .message_expiry_interval
                    .map(|s| now + Duration::from_secs(u64::from(s)));
                let share = match shares.peek() {
                    Some((i, s)) if *i as usize == out.len() => {
                        let s = ByteStr::from(s.as_str());
                        shares.next();
                        Some(s)
                    }
                    _ => None,
                };
                let msg = Arc::new(Message {
                    topic: p.topic,
                    payload: p.payload,
                    qos: p.qos,
                    retain: p.retain,
                    properties: p.properties,
                    expires_at,
                    publisher: ByteStr::from_static(""),
                });
                out.push((msg, share));
            }
            Ok(Some(_)) => return Err("forwarded packet is not a PUBLISH"),
            Ok(None) => return Err("truncated forwarded PUBLISH"),
            Err(_) => return Err("malformed forwarded PUBLISH"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use shardmq_codec::PublishProperties;

    fn msg(topic: &str, qos: QoS, expiry: Option<Duration>) -> Message {
        let now = Instant::now();
        Message {
            topic: ByteStr::from(topic),
            payload: Bytes::from_static(b"hello"),
            qos,
            retain: true,
            properties: PublishProperties {
                content_type: Some(ByteStr::from("text/plain")),
                ..Default::default()
            },
            expires_at: expiry.map(|d| now + d),
            publisher: ByteStr::from("pub-1"),
        }
    }

    #[test]
    fn a_batch_round_trips() {
        let now = Instant::now();
        let a = msg("a/b", QoS::AtLeastOnce, Some(Duration::from_secs(30)));
        let b = msg("c", QoS::AtMostOnce, None);
        let mut buf = BytesMut::new();
        encode_message(&a, now, &mut buf);
        encode_message(&b, now, &mut buf);
        let mut d = Decoder::with_protocol(Protocol::V5, PACKET_MAX_BYTES);
        let out = decode_batch(&mut d, buf.to_vec(), &[(1, "$share/g/c".into())], now).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].1, None);
        assert_eq!(out[1].1.as_deref(), Some("$share/g/c"));
        let out: Vec<Arc<Message>> = out.into_iter().map(|(m, _)| m).collect();
        assert_eq!(out[0].topic.as_str(), "a/b");
        assert_eq!(out[0].qos, QoS::AtLeastOnce);
        assert!(out[0].retain);
        assert_eq!(out[0].payload, a.payload);
        assert_eq!(out[0].properties.content_type, a.properties.content_type);
        assert_eq!(
            out[0].remaining_expiry_secs(now),
            a.remaining_expiry_secs(now)
        );
        assert!(out[0]
            .remaining_expiry_secs(now)
            .is_some_and(|s| (30..=31).contains(&s)));
        assert_eq!(out[1].expires_at, None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut d = Decoder::with_protocol(Protocol::V5, PACKET_MAX_BYTES);
        assert!(decode_batch(&mut d, vec![0x30, 0x05, 0, 9], &[], Instant::now()).is_err());
        let mut d = Decoder::with_protocol(Protocol::V5, PACKET_MAX_BYTES);
        assert!(decode_batch(&mut d, vec![0xC0, 0x00], &[], Instant::now()).is_err());
    }

    struct Collect(Mutex<Vec<Fwd>>);

    impl Deliver for Collect {
        fn deliver(
            &self,
            msgs: Vec<Fwd>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
            self.0.lock().unwrap().extend(msgs);
            Box::pin(async {})
        }
    }

    fn pair() -> (Transport, Transport) {
        use crate::transport::TransportConfig;
        let any = "127.0.0.1:0".parse().unwrap();
        let a = Transport::bind(TransportConfig::new(1, any, "forward-test-cookie")).unwrap();
        let b = Transport::bind(TransportConfig::new(2, any, "forward-test-cookie")).unwrap();
        (a, b)
    }

    fn batch(id: u64, msgs: &[Message]) -> FwdFrame {
        let mut buf = BytesMut::new();
        for m in msgs {
            encode_message(m, Instant::now(), &mut buf);
        }
        FwdFrame::Batch {
            id,
            packets: buf.to_vec(),
            shares: Vec::new(),
        }
    }

    /// The receiver delivers each batch once per (sender incarnation, lane), across streams,
    /// and acknowledges duplicates without delivering them.
    #[tokio::test]
    async fn the_receiver_delivers_a_resent_batch_once() {
        let (a, b) = pair();
        let receiver = Arc::new(Forwarder::new(2, b.clone(), 1, 100));
        let got = Arc::new(Collect(Mutex::new(Vec::new())));
        {
            let (b, receiver, got) = (b.clone(), receiver.clone(), got.clone());
            tokio::spawn(async move {
                while let Some(acc) = b.accept().await {
                    let (receiver, got) = (receiver.clone(), got.clone());
                    tokio::spawn(async move { receiver.serve(acc.stream, &*got).await });
                }
            });
        }
        let m = |t: &str| msg(t, QoS::AtLeastOnce, None);
        let hello = FwdFrame::Hello {
            node: 1,
            incarnation: 7,
            lane: 0,
        };
        let mut s = a.open(b.local_addr(), StreamKind::Forward).await.unwrap();
        s.send(&hello).await.unwrap();
        for (id, t) in [(1, "a"), (1, "a"), (2, "b")] {
            s.send(&batch(id, &[m(t)])).await.unwrap();
            let ack: FwdAck = s.recv().await.unwrap().unwrap();
            assert_eq!(ack.upto, id);
        }
        drop(s);
        // A new stream of the same incarnation resends batch 2, then sends 3.
        let mut s = a.open(b.local_addr(), StreamKind::Forward).await.unwrap();
        s.send(&hello).await.unwrap();
        for (id, t) in [(2, "b"), (3, "c")] {
            s.send(&batch(id, &[m(t)])).await.unwrap();
            let ack: FwdAck = s.recv().await.unwrap().unwrap();
            assert_eq!(ack.upto, id);
        }
        let topics: Vec<String> = got
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|(m, _)| m.topic.to_string())
            .collect();
        assert_eq!(topics, ["a", "b", "c"]);
        assert_eq!(receiver.stats.duplicates.load(Ordering::Relaxed), 2);
    }

    /// A lane whose stream breaks before the ack sends the batch again on a new stream, QoS 1
    /// messages only (QoS 0 ones are given up and counted), then goes on with new batches.
    #[tokio::test]
    async fn a_lane_resends_unacknowledged_qos1_after_a_break() {
        let (a, b) = pair();
        let sender = Forwarder::new(1, a.clone(), 1, 100);
        sender.set_peer(2, Some(b.local_addr()));
        let q1 = Arc::new(msg("x", QoS::AtLeastOnce, None));
        let q0 = Arc::new(msg("x", QoS::AtMostOnce, None));
        sender.send(2, &q1, None);
        sender.send(2, &q0, None);
        // First stream: read Hello and the batch, then drop it without acking.
        let mut first = tokio::time::timeout(Duration::from_secs(5), b.accept())
            .await
            .unwrap()
            .unwrap()
            .stream;
        assert!(matches!(
            first.recv::<FwdFrame>().await.unwrap(),
            Some(FwdFrame::Hello { lane: 0, .. })
        ));
        let Some(FwdFrame::Batch { id, packets, .. }) = first.recv::<FwdFrame>().await.unwrap()
        else {
            panic!("expected a batch");
        };
        let mut d = Decoder::with_protocol(Protocol::V5, PACKET_MAX_BYTES);
        assert_eq!(
            decode_batch(&mut d, packets, &[], Instant::now())
                .unwrap()
                .len(),
            2
        );
        drop(first);
        // Second stream: the same batch again, with the QoS 1 message only.
        let mut second = tokio::time::timeout(Duration::from_secs(5), b.accept())
            .await
            .unwrap()
            .unwrap()
            .stream;
        assert!(matches!(
            second.recv::<FwdFrame>().await.unwrap(),
            Some(FwdFrame::Hello { .. })
        ));
        let Some(FwdFrame::Batch {
            id: again, packets, ..
        }) = second.recv::<FwdFrame>().await.unwrap()
        else {
            panic!("expected the resent batch");
        };
        assert_eq!(again, id);
        let mut d = Decoder::with_protocol(Protocol::V5, PACKET_MAX_BYTES);
        let resent = decode_batch(&mut d, packets, &[], Instant::now()).unwrap();
        assert_eq!(resent.len(), 1);
        assert_eq!(resent[0].0.qos, QoS::AtLeastOnce);
        second.send(&FwdAck { upto: id }).await.unwrap();
        assert_eq!(sender.stats.resent.load(Ordering::Relaxed), 1);
        assert_eq!(sender.stats.dropped.load(Ordering::Relaxed), 1);
        // Acked: nothing pending; a new message goes out as the next batch.
        let ok = async {
            while sender.pending_total() != 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), ok)
            .await
            .unwrap();
        sender.send(2, &q1, None);
        let Some(FwdFrame::Batch { id: next, .. }) = second.recv::<FwdFrame>().await.unwrap()
        else {
            panic!("expected a new batch");
        };
        assert_eq!(next, id + 1);
    }
}
