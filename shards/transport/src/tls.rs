//! TLS over rustls 0.23 (ring provider): server configuration from PEM files, a reloadable
//! configuration handle shared by all shards, and [`TlsLayer`], the sans-I/O server side of
//! one connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::{Buf, BytesMut};
use rustls::server::{UnbufferedServerConnection, WebPkiClientVerifier};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TransportError;

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyPeer {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A client certificate is asked for; a client without one is accepted, a client with an
    /// invalid one is refused.
    Optional,
    /// A valid client certificate (signed by a CA of `ca_file`) is mandatory.
    Required,
}

/// Which name of the client certificate becomes the MQTT username, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerCertName {
    /// The certificate does not name the user.
    #[default]
    None,
    /// The subject's first common name (CN).
    Cn,
    /// The first DNS name or e-mail address of the subject alternative names.
    San,
}

/// Files and policy of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file holding the server certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM file holding the private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_file: PathBuf,
    /// PEM file holding the CA certificates that sign client certificates.
    pub ca_file: Option<PathBuf>,
    /// Whether client certificates are asked for and required.
    pub verify_peer: VerifyPeer,
    /// Which certificate name becomes the username.
    pub peer_cert_as_username: PeerCertName,
}

/// Why a TLS configuration could not be loaded. Each variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid PEM, or holds no item of the expected kind.
    #[error("{path}: {what}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
        /// The PEM error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("{path}: no certificate found")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A CA certificate could not be added to the trust store.
    #[error("{path}: invalid CA certificate: {source}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// `verify_peer` asks for client certificates but no `ca_file` is set.
    #[error("verify_peer is {0:?} but no ca_file is set")]
    MissingCaFile(VerifyPeer),
    /// The client verifier could not be built.
    #[error("{path}: client certificate verifier: {source}")]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// The builder error.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// rustls refused the certificate and key (for example, the key does not match).
    #[error("{cert_file} / {key_file}: {source}")]
    CertKey {
        /// The certificate file.
        cert_file: PathBuf,
        /// The key file.
        key_file: PathBuf,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            what: "certificates",
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The crypto provider of every shardmq TLS endpoint (ring, as quinn uses).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a server configuration from PEM files: TLS 1.2 and 1.3, client certificates per
/// `verify_peer`, ALPN protocols in the caller's order of preference (`b"mqtt"` for MQTT over
/// TLS, `b"http/1.1"` for WebSocket over TLS; a client offering none of them is refused, a
/// client offering no ALPN at all is accepted).
pub fn load_server_config(
    settings: &TlsSettings,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let chain = read_certs(&settings.cert_file)?;
    let key_pem = read_file(&settings.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| TlsError::Pem {
        path: settings.key_file.clone(),
        what: "private key",
        source,
    })?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3");
    let builder = match settings.verify_peer {
        VerifyPeer::None => builder.with_no_client_auth(),
        mode @ (VerifyPeer::Optional | VerifyPeer::Required) => {
            let ca_file = settings
                .ca_file
                .as_ref()
                .ok_or(TlsError::MissingCaFile(mode))?;
            let mut roots = RootCertStore::empty();
            for ca in read_certs(ca_file)? {
                roots.add(ca).map_err(|source| TlsError::BadCa {
                    path: ca_file.clone(),
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if mode == VerifyPeer::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier.build().map_err(|source| TlsError::Verifier {
                path: ca_file.clone(),
                source,
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::CertKey {
            cert_file: settings.cert_file.clone(),
            key_file: settings.key_file.clone(),
            source,
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // No session resumption state: rustls's default is a process-wide stateful cache of 256
    // sessions behind a Mutex, filled with two TLS 1.3 tickets per handshake. Shared between
    // shards, it is a lock on every handshake, and at a broker's connection counts it holds
    // too few sessions to resume anyway; the two tickets cost CPU on every handshake.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A server configuration shared by every shard, replaced as a whole on reload (SIGHUP):
/// connections started after [`TlsConfigCell::reload`] get the new one, existing connections
/// keep the one they started with.
#[derive(Debug)]
pub struct TlsConfigCell {
    current: ArcSwap<ServerConfig>,
    alpn: Vec<Vec<u8>>,
}

impl TlsConfigCell {
    /// Loads the first configuration.
    pub fn new(settings: &TlsSettings, alpn: &[&[u8]]) -> Result<Self, TlsError> {
        let config = load_server_config(settings, alpn)?;
        Ok(Self {
            current: ArcSwap::new(config),
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
        })
    }

    /// The configuration for a new connection.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Loads the files again and, if they load, makes them current. On error the previous
    /// configuration stays in force.
    pub fn reload(&self, settings: &TlsSettings) -> Result<(), TlsError> {
        let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
        let config = load_server_config(settings, &alpn)?;
        self.current.store(config);
        Ok(())
    }
}

/// Most ciphertext a connection buffers while waiting for the rest of a record or of a
/// handshake message (rustls accepts handshake messages up to 64 KiB; a record is at most
/// 16 KiB + 2 KiB). More than this after processing is an error.
pub const TLS_MAX_BUFFERED_BYTES: usize = 64 * 1024 + 18 * 1024;
/// Most plaintext queued before the handshake completes (the broker sends nothing before it
/// has read a CONNECT, so this only bounds a misbehaving caller).
pub const TLS_MAX_EARLY_PLAIN_BYTES: usize = 64 * 1024;
/// Bound on state-machine steps per input byte (rustls makes progress on every step; this
/// only turns a livelock into an error).
const TLS_STEPS_PER_CALL_MIN: usize = 64;
/// Room for one record's header, tag and padding when sizing an output buffer.
const TLS_RECORD_OVERHEAD_BYTES: usize = 5 + 16 + 256;
/// Largest plaintext in one TLS record.
const TLS_MAX_FRAGMENT_BYTES: usize = 16 * 1024;

/// The server side of one TLS connection, sans-I/O, over rustls's unbuffered API
/// ([`rustls::server::UnbufferedServerConnection`]): this layer owns the ciphertext buffers,
/// so an idle connection keeps none of them (see [`TlsLayer::shrink`]).
///
/// Inputs: [`TlsLayer::feed`] (ciphertext from the socket), [`TlsLayer::send`] (plaintext to
/// encrypt), [`TlsLayer::send_close_notify`]. Outputs: plaintext appended to the caller's
/// buffer by `feed`, ciphertext from [`TlsLayer::take_wire_out`].
pub struct TlsLayer {
    conn: UnbufferedServerConnection,
    /// Ciphertext not processed yet (a partial record or handshake message).
    incoming: BytesMut,
    /// Ciphertext to send.
    outgoing: BytesMut,
    /// Plaintext given before the handshake completed.
    early_plain: BytesMut,
    /// Plaintext decrypted outside `feed` (delivered by the next `feed`).
    stash: BytesMut,
    close_pending: bool,
    peer_closed: bool,
    failed: bool,
}

impl std::fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLayer")
            .field("handshaking", &self.conn.is_handshaking())
            .field("incoming", &self.incoming.len())
            .field("outgoing", &self.outgoing.len())
            .field("peer_closed", &self.peer_closed)
            .field("failed", &self.failed)
            .finish()
    }
}

impl TlsLayer {
    /// A new server connection with `config`.
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, TransportError> {
        Ok(Self {
            conn: UnbufferedServerConnection::new(config).map_err(TransportError::Tls)?,
            incoming: BytesMut::new(),
            outgoing: BytesMut::new(),
            early_plain: BytesMut::new(),
            stash: BytesMut::new(),
            close_pending: false,
            peer_closed: false,
            failed: false,
        })
    }

    /// Feeds ciphertext read from the socket and appends the plaintext it carries to `plain`
    /// (never more plaintext than `wire` holds, plus what an earlier call left over).
    ///
    /// On `Err`, the connection is dead; an alert telling the peer why is queued: send
    /// [`TlsLayer::take_wire_out`] before closing.
    pub fn feed(&mut self, wire: &[u8], plain: &mut BytesMut) -> Result<(), TransportError> {
        if self.failed || self.peer_closed {
            // Nothing after a fatal error or after close_notify is read.
            return Ok(());
        }
        if !self.stash.is_empty() {
            plain.extend_from_slice(&self.stash);
            self.stash.clear();
        }
        self.incoming.extend_from_slice(wire);
        let r = self.process(Some(plain), &[]);
        if r.is_ok() && self.incoming.len() > TLS_MAX_BUFFERED_BYTES {
            self.failed = true;
            return Err(TransportError::TlsLimit(
                "incomplete TLS record or handshake too large",
            ));
        }
        r
    }

    /// Encrypts `plain` (queued until the handshake is done).
    pub fn send(&mut self, plain: &[u8]) -> Result<(), TransportError> {
        if self.failed {
            return Ok(());
        }
        if self.conn.is_handshaking() {
            if self.early_plain.len() + plain.len() > TLS_MAX_EARLY_PLAIN_BYTES {
                return Err(TransportError::TlsLimit(
                    "plaintext queued before the handshake",
                ));
            }
            self.early_plain.extend_from_slice(plain);
            return Ok(());
        }
        self.process(None, plain)
    }

    /// Queues a close_notify alert (sent once the handshake is done).
    pub fn send_close_notify(&mut self) {
        if self.failed {
            return;
        }
        self.close_pending = true;
        let _ = self.process(None, &[]);
    }

    /// Runs rustls until it needs more input. `plain_in`: where decrypted bytes go (the stash
    /// when `None`); `to_send`: plaintext to encrypt once application data may flow.
    fn process(
        &mut self,
        plain_in: Option<&mut BytesMut>,
        to_send: &[u8],
    ) -> Result<(), TransportError> {
        let plain_in = match plain_in {
            Some(p) => p,
            None => &mut self.stash,
        };
        let mut to_send = Some(to_send).filter(|s| !s.is_empty());
        let max_steps = TLS_STEPS_PER_CALL_MIN + self.incoming.len();
        for _ in 0..max_steps {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.incoming[..]);
            let mut stop = false;
            let step: Result<(), TransportError> = match state {
                Err(e) => Err(TransportError::Tls(e)),
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    let mut res = Ok(());
                    while let Some(rec) = r.next_record() {
                        match rec {
                            Ok(rec) => {
                                debug_assert_eq!(rec.discard, 0);
                                plain_in.extend_from_slice(rec.payload);
                            }
                            Err(e) => {
                                res = Err(TransportError::Tls(e));
                                break;
                            }
                        }
                    }
                    res
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode_into(&mut self.outgoing, 512, |buf| match e.encode(buf) {
                        Ok(n) => Ok(n),
                        Err(EncodeError::InsufficientSize(s)) => Err(Some(s.required_size)),
                        Err(EncodeError::AlreadyEncoded) => Err(None),
                    });
                    Ok(())
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    // The bytes wait in `outgoing` for take_wire_out.
                    t.done();
                    Ok(())
                }
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    stop = true;
                    let mut res = Ok(());
                    for data in [&self.early_plain[..], to_send.take().unwrap_or(&[])] {
                        if res.is_ok() && !data.is_empty() {
                            res =
                                encrypt_into(&mut self.outgoing, data, |d, buf| w.encrypt(d, buf));
                        }
                    }
                    self.early_plain.clear();
                    if res.is_ok() && self.close_pending {
                        self.close_pending = false;
                        res = encrypt_into(&mut self.outgoing, &[], |_, buf| {
                            w.queue_close_notify(buf)
                        });
                    }
                    res
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(())
                }
                Ok(ConnectionState::ReadEarlyData(mut r)) => {
                    // 0-RTT is not enabled; drop anything that shows up.
                    while r.next_record().is_some() {}
                    Ok(())
                }
                Ok(ConnectionState::BlockedHandshake | ConnectionState::Closed) | Ok(_) => {
                    stop = true;
                    Ok(())
                }
            };
            self.incoming.advance(discard);
            if let Err(e) = step {
                self.fail();
                return Err(e);
            }
            if stop {
                if let Some(data) = to_send {
                    // Handshake not done yet (cannot happen from `send`, which checks).
                    self.early_plain.extend_from_slice(data);
                }
                return Ok(());
            }
        }
        self.fail();
        Err(TransportError::TlsLimit(
            "TLS state machine made no progress",
        ))
    }

    /// After a fatal error: moves the alert rustls queued into `outgoing`.
    fn fail(&mut self) {
        self.failed = true;
        // Each call encodes one queued record, then reports it for transmission.
        // Pop only what is queued (`wants_write`): a call with nothing queued would deframe
        // the bad input again. rustls's handshake deframer remembers positions in the buffer,
        // so it gets the same (discarded-from) buffer as before, never an empty one.
        for _ in 0..8 {
            if !self.conn.wants_write() {
                break;
            }
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.incoming[..]);
            if let Ok(ConnectionState::EncodeTlsData(mut e)) = state {
                encode_into(&mut self.outgoing, 64, |buf| match e.encode(buf) {
                    Ok(n) => Ok(n),
                    Err(EncodeError::InsufficientSize(s)) => Err(Some(s.required_size)),
                    Err(EncodeError::AlreadyEncoded) => Err(None),
                });
            }
            self.incoming.advance(discard);
        }
        self.incoming = BytesMut::new();
        self.early_plain = BytesMut::new();
    }

    /// Moves every queued TLS record (handshake, application data, alerts) into `wire_out`.
    pub fn take_wire_out(&mut self, wire_out: &mut BytesMut) {
        if self.outgoing.is_empty() {
            return;
        }
        if wire_out.is_empty() {
            std::mem::swap(wire_out, &mut self.outgoing);
        } else {
            wire_out.extend_from_slice(&self.outgoing);
            self.outgoing.clear();
        }
    }

    /// Releases empty buffers (call when the connection is idle).
    pub fn shrink(&mut self) {
        for b in [
            &mut self.incoming,
            &mut self.outgoing,
            &mut self.early_plain,
            &mut self.stash,
        ] {
            if b.is_empty() && b.capacity() > 0 {
                *b = BytesMut::new();
            }
        }
    }

    /// True until the handshake is complete.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// True when TLS records are waiting for [`TlsLayer::take_wire_out`].
    pub fn wants_write(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// True once the peer sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// True once a fatal error happened (the alert may still wait in `take_wire_out`).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The negotiated ALPN protocol, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The negotiated protocol version, once known.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// The name of the client certificate chosen by `which`, once the handshake is done and
    /// if the client presented a certificate that has one.
    pub fn peer_identity(&self, which: PeerCertName) -> Option<String> {
        let leaf = self.conn.peer_certificates()?.first()?;
        cert_name(leaf, which)
    }
}

/// Appends what `f` writes to `out`, growing the room to what `f` asks for
/// (`Err(Some(n))`); `Err(None)`: nothing to write.
fn encode_into(
    out: &mut BytesMut,
    first_guess: usize,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, Option<usize>>,
) {
    let mut room = first_guess;
    loop {
        let start = out.len();
        out.resize(start + room, 0);
        match f(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return;
            }
            Err(Some(needed)) if needed > room => {
                out.truncate(start);
                room = needed;
            }
            Err(_) => {
                out.truncate(start);
                return;
            }
        }
    }
}

/// Encrypts `data` into `out` (rustls splits it into records).
fn encrypt_into(
    out: &mut BytesMut,
    data: &[u8],
    mut f: impl FnMut(&[u8], &mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), TransportError> {
    let records = data.len() / TLS_MAX_FRAGMENT_BYTES + 1;
    let mut failure = None;
    encode_into(
        out,
        data.len() + records * TLS_RECORD_OVERHEAD_BYTES,
        |buf| match f(data, buf) {
            Ok(n) => Ok(n),
            Err(EncryptError::InsufficientSize(s)) => Err(Some(s.required_size)),
            Err(_) => {
                failure = Some(TransportError::TlsLimit("TLS encrypter exhausted"));
                Err(None)
            }
        },
    );
    failure.map_or(Ok(()), Err)
}

/// The CN or the first DNS / e-mail SAN of a DER certificate.
pub fn cert_name(der: &[u8], which: PeerCertName) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::{FromDer, X509Certificate};
    if which == PeerCertName::None {
        return None;
    }
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    match which {
        PeerCertName::None => None,
        PeerCertName::Cn => cert
            .subject()
            .iter_common_name()
            .next()?
            .as_str()
            .ok()
            .map(str::to_owned),
        PeerCertName::San => {
            let san = cert.subject_alternative_name().ok()??;
            san.value.general_names.iter().find_map(|name| match name {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) => Some((*s).to_owned()),
                _ => None,
            })
        }
    }
}
