//! TLS over rustls 0.23 (ring provider): server configuration from PEM files, a reloadable
//! configuration handle shared by all shards, and [`TlsLayer`], the sans-I/O server side of
//! one connection.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::{BufMut, BytesMut};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
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

/// Bytes of ciphertext handed to rustls per step. rustls decrypts what a step took before it
/// takes more, so at most this much ciphertext (plus one partial record) is buffered inside
/// rustls at a time, and the plaintext one step yields is bounded by it.
pub const TLS_FEED_STEP_BYTES: usize = 16 * 1024 + 2048;

/// The server side of one TLS connection, sans-I/O, over a [`rustls::ServerConnection`].
///
/// Inputs: [`TlsLayer::feed`] (ciphertext from the socket), [`TlsLayer::send`] (plaintext to
/// encrypt), [`TlsLayer::send_close_notify`]. Outputs: plaintext appended to the caller's
/// buffer by `feed`, ciphertext from [`TlsLayer::take_wire_out`].
pub struct TlsLayer {
    conn: ServerConnection,
    peer_closed: bool,
}

impl std::fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsLayer")
            .field("handshaking", &self.conn.is_handshaking())
            .field("peer_closed", &self.peer_closed)
            .finish()
    }
}

impl TlsLayer {
    /// A new server connection with `config`.
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, TransportError> {
        let mut conn = ServerConnection::new(config).map_err(TransportError::Tls)?;
        // The driver bounds what it queues for a connection; rustls must never silently take
        // fewer bytes than it was given.
        conn.set_buffer_limit(None);
        Ok(Self {
            conn,
            peer_closed: false,
        })
    }

    /// Feeds ciphertext read from the socket and appends the plaintext it carries to `plain`.
    ///
    /// On `Err`, the connection is dead; an alert telling the peer why may be queued: send
    /// [`TlsLayer::take_wire_out`] before closing.
    pub fn feed(&mut self, mut wire: &[u8], plain: &mut BytesMut) -> Result<(), TransportError> {
        while !wire.is_empty() {
            if self.peer_closed {
                // Bytes after close_notify are ignored.
                return Ok(());
            }
            let step = wire.len().min(TLS_FEED_STEP_BYTES);
            let mut chunk = &wire[..step];
            let taken = match self.conn.read_tls(&mut chunk) {
                Ok(n) => n,
                // rustls refuses input when its buffers are full: a single handshake message
                // over 64 KiB, or records it cannot make progress on.
                Err(e) => return Err(TransportError::TlsBuffer(e.to_string())),
            };
            wire = &wire[taken..];
            let state = self
                .conn
                .process_new_packets()
                .map_err(TransportError::Tls)?;
            let n = state.plaintext_bytes_to_read();
            if n > 0 {
                assert!(
                    n <= TLS_FEED_STEP_BYTES + rustls_max_fragment(),
                    "plaintext per step"
                );
                plain.reserve(n);
                let start = plain.len();
                plain.resize(start + n, 0);
                self.conn
                    .reader()
                    .read_exact(&mut plain[start..])
                    .expect("rustls reported this many plaintext bytes");
            }
            if state.peer_has_closed() {
                self.peer_closed = true;
            }
            if taken == 0 {
                // rustls took nothing (it returns 0 only when it cannot buffer more): nothing
                // more will happen with this input.
                return Err(TransportError::TlsBuffer("rustls accepted no input".into()));
            }
        }
        Ok(())
    }

    /// Encrypts `plain` (buffered inside rustls until the handshake is done).
    pub fn send(&mut self, plain: &[u8]) -> Result<(), TransportError> {
        let n = self
            .conn
            .writer()
            .write(plain)
            .map_err(|e| TransportError::TlsBuffer(e.to_string()))?;
        assert_eq!(n, plain.len(), "rustls buffer limit is off");
        Ok(())
    }

    /// Queues a close_notify alert.
    pub fn send_close_notify(&mut self) {
        self.conn.send_close_notify();
    }

    /// Moves every queued TLS record (handshake, application data, alerts) into `wire_out`.
    pub fn take_wire_out(&mut self, wire_out: &mut BytesMut) {
        let mut w = wire_out.writer();
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut w) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => unreachable!("writing to a BytesMut cannot fail: {e}"),
            }
        }
    }

    /// True until the handshake is complete.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// True when TLS records are waiting for [`TlsLayer::take_wire_out`].
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// True once the peer sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
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

fn rustls_max_fragment() -> usize {
    // A TLS record holds at most 2^14 plaintext bytes.
    16 * 1024
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
