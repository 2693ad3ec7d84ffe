//! The QUIC transport between cluster nodes.
//!
//! One quinn [`quinn::Endpoint`] per node serves and dials on the same UDP socket. Both sides
//! authenticate with certificates made from the shared cluster cookie (see [`mod@self`] docs
//! below); a node with another cookie can neither connect nor be connected to.
//!
//! # Trust from a cookie
//! HKDF-SHA256 of the cookie (info `shardmq cluster ca v1`) gives a 32-byte Ed25519 seed. Every
//! node makes the same CA key from it and a CA certificate with the same fixed subject, so every
//! node's independently made CA is the same trust anchor. Each node then makes its own leaf key,
//! and a leaf certificate signed by that CA with SAN `shardmq-node` and CN `shardmq-node-<id>`.
//! The server requires a client certificate chaining to the CA, the client checks the server
//! against the same CA, and the peer's node id is read from its verified certificate.
//!
//! # Streams and frames
//! Every bidirectional stream starts with one [`StreamKind`] byte written by the opener. Then each
//! frame is a `u32` big-endian length and a postcard body of at most `frame_max_bytes`. An
//! oversize or malformed frame is an error on that stream only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hkdf::Hkdf;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ReadExactError, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::mpsc;
use tracing::{debug, trace, warn};

use crate::Locked;

/// A cluster node's identifier.
pub type NodeId = u64;

/// The TLS server name every node presents and every client checks.
pub const SERVER_NAME: &str = "shardmq-node";
/// ALPN protocol id of the cluster transport.
const ALPN: &[u8] = b"shardmq-cluster/1";
/// HKDF info string for the CA seed.
const CA_SEED_INFO: &[u8] = b"shardmq cluster ca v1";
/// Subject CN of the cluster CA (the same on every node).
const CA_COMMON_NAME: &str = "shardmq cluster ca";
/// Prefix of a node certificate's CN; the node id follows in decimal.
const NODE_CN_PREFIX: &str = "shardmq-node-";
/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410); the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// Default largest frame body.
pub const FRAME_MAX_BYTES_DEFAULT: usize = 16 << 20;
/// Accepted streams waiting for [`Transport::accept`].
const ACCEPT_QUEUE_MAX: usize = 1024;
/// Concurrent bidirectional streams a peer may open on one connection.
const BIDI_STREAMS_MAX: u32 = 1024;
/// How long an accepted stream may take to send its kind byte.
const KIND_TIMEOUT_MS: u64 = 5_000;
/// Application error code: stream stopped because a frame was too large or malformed.
const ERR_BAD_FRAME: u32 = 1;
/// Application error code: the peer's certificate carried no node id.
const ERR_NO_NODE_ID: u32 = 2;

/// Transport settings of one node.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// This node's id (goes into its certificate).
    pub node_id: NodeId,
    /// UDP address to bind (`cluster.listen`); port 0 picks one.
    pub listen: SocketAddr,
    /// Shared cluster secret; every node of a cluster must have the same.
    pub cookie: String,
    /// Largest frame body accepted or sent.
    pub frame_max_bytes: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout_ms: u64,
    /// Keep-alive ping interval (below `idle_timeout_ms`).
    pub keep_alive_ms: u64,
}

impl TransportConfig {
    /// Settings with the defaults: 16 MiB frames, 10 s idle timeout, 2 s keep-alive.
    pub fn new(node_id: NodeId, listen: SocketAddr, cookie: impl Into<String>) -> Self {
        TransportConfig {
            node_id,
            listen,
            cookie: cookie.into(),
            frame_max_bytes: FRAME_MAX_BYTES_DEFAULT,
            idle_timeout_ms: 10_000,
            keep_alive_ms: 2_000,
        }
    }
}

/// What a bidirectional stream carries; its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StreamKind {
    /// Raft RPCs between core nodes.
    Raft = 1,
    /// An RLOG shard stream from a core to a replicant.
    Rlog = 2,
    /// Forwarded publishes.
    Forward = 3,
    /// Control requests (writes forwarded to the leader, membership changes).
    Rpc = 4,
    /// Node-level requests: liveness pings, a core's replicant count and seqs.
    Node = 5,
}

impl TryFrom<u8> for StreamKind {
    type Error = TransportError;
    fn try_from(b: u8) -> Result<Self, TransportError> {
        Ok(match b {
            1 => StreamKind::Raft,
            2 => StreamKind::Rlog,
            3 => StreamKind::Forward,
            4 => StreamKind::Rpc,
            5 => StreamKind::Node,
            other => return Err(TransportError::UnknownKind(other)),
        })
    }
}

/// Errors of the cluster transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The UDP socket could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Certificates or TLS settings could not be made.
    #[error("tls setup: {0}")]
    Tls(String),
    /// A connection to a peer could not be made.
    #[error("connect to {peer}: {reason}")]
    Connect {
        /// The peer dialled.
        peer: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The connection was lost or refused.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to a stream failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading from a stream failed.
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// The stream was already finished or reset.
    #[error("stream closed")]
    StreamClosed,
    /// A frame longer than `frame_max_bytes`.
    #[error("frame of {len} bytes exceeds frame_max_bytes {max}")]
    FrameTooLarge {
        /// Length of the frame body.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A frame body that does not decode.
    #[error("malformed frame: {0}")]
    Malformed(postcard::Error),
    /// A message that does not encode.
    #[error("encode: {0}")]
    Encode(postcard::Error),
    /// The stream finished in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// A stream began with an unknown kind byte.
    #[error("unknown stream kind {0}")]
    UnknownKind(u8),
    /// The operation took too long.
    #[error("timed out")]
    Timeout,
    /// The transport was closed.
    #[error("transport closed")]
    Closed,
}

/// A stream opened by a peer, as [`Transport::accept`] delivers it.
#[derive(Debug)]
pub struct Accepted {
    /// What the stream carries.
    pub kind: StreamKind,
    /// The stream, after its kind byte.
    pub stream: FramedStream,
    /// The peer's node id, from its verified certificate.
    pub peer_node: NodeId,
    /// The peer's UDP address.
    pub peer_addr: SocketAddr,
}

/// One node's QUIC endpoint. Cheap to clone; clones share the endpoint and connections.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    frame_max_bytes: usize,
    connect_timeout: Duration,
    /// One slot per peer address; the async mutex makes concurrent opens share one dial.
    peers: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Option<quinn::Connection>>>>>,
    accepted: tokio::sync::Mutex<mpsc::Receiver<Accepted>>,
    closed: AtomicBool,
    accept_task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("node_id", &self.inner.node_id)
            .field("local_addr", &self.inner.local_addr)
            .finish()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Transport {
    /// Binds the endpoint and starts accepting connections. Must run inside a tokio runtime.
    pub fn bind(cfg: TransportConfig) -> Result<Transport, TransportError> {
        assert!(cfg.frame_max_bytes > 0 && cfg.frame_max_bytes <= u32::MAX as usize);
        assert!(
            cfg.keep_alive_ms < cfg.idle_timeout_ms,
            "keep_alive_ms must be below idle_timeout_ms"
        );
        let identity = Identity::new(&cfg.cookie, cfg.node_id)?;
        let (server_config, client_config) = quic_configs(&identity, &cfg)?;
        let mut endpoint =
            quinn::Endpoint::server(server_config, cfg.listen).map_err(|source| {
                TransportError::Bind {
                    addr: cfg.listen,
                    source,
                }
            })?;
        endpoint.set_default_client_config(client_config);
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| TransportError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE_MAX);
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), tx, cfg.frame_max_bytes));
        debug!(node = cfg.node_id, %local_addr, "cluster transport bound");
        Ok(Transport {
            inner: Arc::new(Inner {
                node_id: cfg.node_id,
                endpoint,
                local_addr,
                frame_max_bytes: cfg.frame_max_bytes,
                connect_timeout: Duration::from_millis(cfg.idle_timeout_ms),
                peers: Mutex::new(HashMap::new()),
                accepted: tokio::sync::Mutex::new(rx),
                closed: AtomicBool::new(false),
                accept_task,
            }),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node_id
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The largest frame body this transport sends or accepts.
    pub fn frame_max_bytes(&self) -> usize {
        self.inner.frame_max_bytes
    }

    /// Opens a stream of `kind` to `peer`, reusing the cached connection or dialling a new one.
    pub async fn open(
        &self,
        peer: SocketAddr,
        kind: StreamKind,
    ) -> Result<FramedStream, TransportError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(TransportError::Closed);
        }
        // A cached connection may have died since it was last used: one retry on a fresh one.
        for attempt in 0..2 {
            let conn = self.connection(peer).await?;
            match conn.open_bi().await {
                Ok((mut send, recv)) => {
                    send.write_all(&[kind as u8]).await?;
                    trace!(%peer, ?kind, "stream opened");
                    return Ok(FramedStream::new(send, recv, self.inner.frame_max_bytes));
                }
                Err(e) if attempt == 0 => {
                    debug!(%peer, error = %e, "cached connection lost, redialling");
                    self.forget(peer, &conn).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn connection(&self, peer: SocketAddr) -> Result<quinn::Connection, TransportError> {
        let slot = {
            let mut peers = self.inner.peers.locked();
            peers.entry(peer).or_default().clone()
        };
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
        }
        let connecting = self
            .inner
            .endpoint
            .connect(peer, SERVER_NAME)
            .map_err(|e| TransportError::Connect {
                peer,
                reason: e.to_string(),
            })?;
        let conn = match tokio::time::timeout(self.inner.connect_timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return Err(TransportError::Connect {
                    peer,
                    reason: e.to_string(),
                })
            }
            Err(_) => return Err(TransportError::Timeout),
        };
        debug!(node = self.inner.node_id, %peer, "connected");
        *guard = Some(conn.clone());
        Ok(conn)
    }

    async fn forget(&self, peer: SocketAddr, dead: &quinn::Connection) {
        let slot = {
            let peers = self.inner.peers.locked();
            peers.get(&peer).cloned()
        };
        if let Some(slot) = slot {
            let mut guard = slot.lock().await;
            if guard
                .as_ref()
                .is_some_and(|c| c.stable_id() == dead.stable_id())
            {
                *guard = None;
            }
        }
    }

    /// The next stream a peer opened; `None` once the transport is closed.
    pub async fn accept(&self) -> Option<Accepted> {
        if self.inner.closed.load(Ordering::Acquire) {
            return None;
        }
        let mut rx = self.inner.accepted.lock().await;
        rx.recv().await
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        if !self.inner.closed.swap(true, Ordering::AcqRel) {
            self.inner
                .endpoint
                .close(VarInt::from_u32(0), b"node closing");
            self.inner.accept_task.abort();
            self.inner.peers.locked().clear();
            debug!(node = self.inner.node_id, "cluster transport closed");
        }
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    tx: mpsc::Sender<Accepted>,
    frame_max_bytes: usize,
) {
    while let Some(incoming) = endpoint.accept().await {
        let tx = tx.clone();
        tokio::spawn(serve_connection(incoming, tx, frame_max_bytes));
    }
}

async fn serve_connection(
    incoming: quinn::Incoming,
    tx: mpsc::Sender<Accepted>,
    frame_max_bytes: usize,
) {
    let peer_addr = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            warn!(peer = %peer_addr, error = %e, "cluster handshake refused");
            return;
        }
    };
    let Some(peer_node) = peer_node_id(&conn) else {
        warn!(peer = %peer_addr, "peer certificate has no node id");
        conn.close(VarInt::from_u32(ERR_NO_NODE_ID), b"no node id");
        return;
    };
    debug!(peer = %peer_addr, peer_node, "peer connected");
    loop {
        let (send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                debug!(peer = %peer_addr, peer_node, error = %e, "peer connection ended");
                return;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut kind = [0u8; 1];
            let read = tokio::time::timeout(
                Duration::from_millis(KIND_TIMEOUT_MS),
                recv.read_exact(&mut kind),
            );
            let kind = match read.await {
                Ok(Ok(())) => match StreamKind::try_from(kind[0]) {
                    Ok(k) => k,
                    Err(e) => {
                        warn!(peer = %peer_addr, peer_node, error = %e, "bad stream");
                        let _ = recv.stop(VarInt::from_u32(ERR_BAD_FRAME));
                        return;
                    }
                },
                Ok(Err(e)) => {
                    debug!(peer = %peer_addr, peer_node, error = %e, "stream ended before its kind");
                    return;
                }
                Err(_) => {
                    warn!(peer = %peer_addr, peer_node, "stream sent no kind in time");
                    return;
                }
            };
            let stream = FramedStream::new(send, recv, frame_max_bytes);
            let _ = tx
                .send(Accepted {
                    kind,
                    stream,
                    peer_node,
                    peer_addr,
                })
                .await;
        });
    }
}

fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_id_from_cert(chain.first()?.as_ref())
}

/// Reads `N` from a `CN=shardmq-node-N` attribute of a DER certificate. The certificate was
/// verified by TLS, so only our CA could have written it; the scan skips the CA's own CN.
fn node_id_from_cert(der: &[u8]) -> Option<NodeId> {
    // OID 2.5.4.3 (commonName), then a UTF8String (0x0c) or PrintableString (0x13).
    const CN_OID: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let mut i = 0;
    while i + CN_OID.len() + 2 <= der.len() {
        if der[i..].starts_with(&CN_OID) {
            let tag = der[i + 5];
            let len = der[i + 6] as usize;
            let start = i + 7;
            if (tag == 0x0c || tag == 0x13) && len < 0x80 && start + len <= der.len() {
                if let Ok(s) = std::str::from_utf8(&der[start..start + len]) {
                    if let Some(id) = s.strip_prefix(NODE_CN_PREFIX).and_then(|n| n.parse().ok()) {
                        return Some(id);
                    }
                }
            }
        }
        i += 1;
    }
    None
}

/// The certificates and key of one node.
struct Identity {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    fn new(cookie: &str, node_id: NodeId) -> Result<Identity, TransportError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType,
            ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
        };
        let tls = |e: rcgen::Error| TransportError::Tls(e.to_string());
        let mut seed = [0u8; 32];
        Hkdf::<Sha256>::new(None, cookie.as_bytes())
            .expand(CA_SEED_INFO, &mut seed)
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut pkcs8 = Vec::with_capacity(ED25519_PKCS8_PREFIX.len() + seed.len());
        pkcs8.extend_from_slice(&ED25519_PKCS8_PREFIX);
        pkcs8.extend_from_slice(&seed);
        let ca_key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(pkcs8),
            &rcgen::PKCS_ED25519,
        )
        .map_err(tls)?;

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "shardmq");
        dn.push(DnType::CommonName, CA_COMMON_NAME);
        ca_params.distinguished_name = dn;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params.serial_number = Some(SerialNumber::from(1u64));
        let ca = ca_params.self_signed(&ca_key).map_err(tls)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(tls)?;
        let mut leaf_params = CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(tls)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "shardmq");
        dn.push(DnType::CommonName, format!("{NODE_CN_PREFIX}{node_id}"));
        leaf_params.distinguished_name = dn;
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        leaf_params.use_authority_key_identifier_extension = true;
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).map_err(tls)?;
        debug_assert_eq!(node_id_from_cert(leaf.der()), Some(node_id));
        Ok(Identity {
            ca: ca.der().clone(),
            chain: vec![leaf.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        })
    }
}

fn quic_configs(
    id: &Identity,
    cfg: &TransportConfig,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TransportError> {
    let tls = |e: rustls::Error| TransportError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(id.ca.clone()).map_err(tls)?;
    let roots = Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(tls)?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(roots)
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
        .map_err(tls)?;
    client.alpn_protocols = vec![ALPN.to_vec()];

    let mut transport = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(Duration::from_millis(cfg.idle_timeout_ms))
        .map_err(|e| TransportError::Tls(e.to_string()))?;
    transport
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(Duration::from_millis(cfg.keep_alive_ms)))
        .max_concurrent_bidi_streams(VarInt::from_u32(BIDI_STREAMS_MAX))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    let transport = Arc::new(transport);

    let server =
        QuicServerConfig::try_from(server).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport.clone());
    let client =
        QuicClientConfig::try_from(client).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client));
    client.transport_config(transport);
    Ok((server, client))
}

/// A bidirectional stream of length-prefixed postcard frames.
#[derive(Debug)]
pub struct FramedStream {
    tx: FrameSender,
    rx: FrameReceiver,
}

impl FramedStream {
    fn new(send: quinn::SendStream, recv: quinn::RecvStream, frame_max_bytes: usize) -> Self {
        FramedStream {
            tx: FrameSender {
                send,
                frame_max_bytes,
                buf: Vec::new(),
            },
            rx: FrameReceiver {
                recv,
                frame_max_bytes,
                buf: Vec::new(),
            },
        }
    }

    /// Sends one frame.
    pub async fn send<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<(), TransportError> {
        self.tx.send(msg).await
    }

    /// Receives one frame; `Ok(None)` when the peer finished the stream cleanly between frames.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, TransportError> {
        self.rx.recv().await
    }

    /// Finishes the sending half: the peer's next `recv` after the frames in flight gives `None`.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        self.tx.finish()
    }

    /// Splits into halves that can be used from different tasks.
    pub fn split(self) -> (FrameSender, FrameReceiver) {
        (self.tx, self.rx)
    }
}

/// The sending half of a [`FramedStream`].
#[derive(Debug)]
pub struct FrameSender {
    send: quinn::SendStream,
    frame_max_bytes: usize,
    buf: Vec<u8>,
}

/// Encode buffers above this size are not kept between frames.
const KEEP_BUF_MAX_BYTES: usize = 64 << 10;

impl FrameSender {
    /// Sends one frame. A message over `frame_max_bytes` is refused before anything is written,
    /// so the stream stays usable.
    pub async fn send<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<(), TransportError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(&[0; 4]);
        let mut buf = postcard::to_extend(msg, buf).map_err(TransportError::Encode)?;
        let len = buf.len() - 4;
        let result = if len > self.frame_max_bytes {
            Err(TransportError::FrameTooLarge {
                len,
                max: self.frame_max_bytes,
            })
        } else {
            buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
            self.send
                .write_all(&buf)
                .await
                .map_err(TransportError::from)
        };
        if buf.capacity() <= KEEP_BUF_MAX_BYTES {
            self.buf = buf;
        }
        result
    }

    /// Finishes the stream.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        self.send.finish().map_err(|_| TransportError::StreamClosed)
    }
}

/// The receiving half of a [`FramedStream`].
#[derive(Debug)]
pub struct FrameReceiver {
    recv: quinn::RecvStream,
    frame_max_bytes: usize,
    buf: Vec<u8>,
}

impl FrameReceiver {
    /// Receives one frame; `Ok(None)` when the peer finished the stream cleanly between frames.
    /// After an error the stream is stopped and should be dropped.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, TransportError> {
        let mut header = [0u8; 4];
        match self.recv.read_exact(&mut header).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(ReadExactError::FinishedEarly(_)) => return Err(TransportError::Truncated),
            Err(ReadExactError::ReadError(e)) => return Err(e.into()),
        }
        let len = u32::from_be_bytes(header) as usize;
        if len > self.frame_max_bytes {
            warn!(
                len,
                max = self.frame_max_bytes,
                "peer sent an oversize frame"
            );
            let _ = self.recv.stop(VarInt::from_u32(ERR_BAD_FRAME));
            return Err(TransportError::FrameTooLarge {
                len,
                max: self.frame_max_bytes,
            });
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.resize(len, 0);
        match self.recv.read_exact(&mut buf).await {
            Ok(()) => {}
            Err(ReadExactError::FinishedEarly(_)) => return Err(TransportError::Truncated),
            Err(ReadExactError::ReadError(e)) => return Err(e.into()),
        }
        let msg = postcard::from_bytes(&buf);
        if buf.capacity() <= KEEP_BUF_MAX_BYTES {
            self.buf = buf;
        }
        match msg {
            Ok(msg) => Ok(Some(msg)),
            Err(e) => {
                warn!(len, error = %e, "peer sent a malformed frame");
                let _ = self.recv.stop(VarInt::from_u32(ERR_BAD_FRAME));
                Err(TransportError::Malformed(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_the_same_on_every_node_and_differs_per_cookie() {
        let a = Identity::new("secret", 1).unwrap();
        let b = Identity::new("secret", 2).unwrap();
        let c = Identity::new("other", 1).unwrap();
        assert_eq!(a.ca, b.ca);
        assert_ne!(a.ca, c.ca);
        assert_ne!(a.chain[0], b.chain[0]);
        assert_eq!(node_id_from_cert(&a.chain[0]), Some(1));
        assert_eq!(node_id_from_cert(&b.chain[0]), Some(2));
        assert_eq!(node_id_from_cert(&a.ca), None);
    }

    /// A client that trusts the cluster CA but presents a certificate of another cookie: the
    /// server refuses it (the client-side check alone would never exercise this).
    #[tokio::test]
    async fn server_refuses_a_client_cert_of_another_cookie() {
        type AnyErr = Box<dyn std::error::Error + Send + Sync>;
        let any = "127.0.0.1:0".parse().unwrap();
        let server = Transport::bind(TransportConfig::new(1, any, "right")).unwrap();
        let good = Identity::new("right", 2).unwrap();
        let evil = Identity::new("wrong", 9).unwrap();
        let mixed = Identity {
            ca: good.ca.clone(),
            chain: evil.chain.clone(),
            key: evil.key.clone_key(),
        };
        let (_, client_cfg) = quic_configs(&mixed, &TransportConfig::new(9, any, "wrong")).unwrap();
        let mut ep = quinn::Endpoint::client(any).unwrap();
        ep.set_default_client_config(client_cfg);
        let exchange = async {
            let conn = ep.connect(server.local_addr(), SERVER_NAME)?.await?;
            let (mut send, mut recv) = conn.open_bi().await?;
            send.write_all(&[StreamKind::Rpc as u8, 0, 0, 0, 1, 0])
                .await?;
            let mut b = [0u8; 1];
            recv.read_exact(&mut b).await?;
            Ok::<_, AnyErr>(())
        };
        let r = tokio::time::timeout(Duration::from_secs(5), exchange).await;
        assert!(
            matches!(r, Ok(Err(_))),
            "a foreign client certificate was not refused in time"
        );
        let accepted = tokio::time::timeout(Duration::from_millis(200), server.accept()).await;
        assert!(
            accepted.is_err(),
            "a stream from a foreign client was accepted"
        );
    }

    #[test]
    fn stream_kind_round_trips() {
        for k in [
            StreamKind::Raft,
            StreamKind::Rlog,
            StreamKind::Forward,
            StreamKind::Rpc,
        ] {
            assert_eq!(StreamKind::try_from(k as u8).unwrap(), k);
        }
        assert!(StreamKind::try_from(0).is_err());
    }
}
