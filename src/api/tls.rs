//! HTTPS for the management API (`api.tls_cert_file`, `api.tls_key_file`): rustls (ring) via
//! tokio-rustls, in front of axum's own server.
//!
//! [`TlsListener`] is an [`axum::serve::Listener`]: a task accepts TCP connections and runs
//! each TLS handshake on a task of its own (at most [`TLS_HANDSHAKES_MAX`] at once, each within
//! [`TLS_HANDSHAKE_TIMEOUT_MS`]), so that a slow or silent client holds up no one; finished
//! handshakes queue (bounded) for axum to serve.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// TLS handshakes in progress at once; further connections wait in the kernel's backlog.
pub const TLS_HANDSHAKES_MAX: usize = 64;
/// How long a client may take to finish its handshake.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Handshaken connections waiting for axum to take them.
pub const TLS_READY_QUEUE_MAX: usize = 64;

/// The API's rustls configuration from PEM files: a certificate chain and its private key
/// (PKCS#8, PKCS#1 or SEC1); ALPN `http/1.1`. Errors name the key they are about.
pub fn server_config(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("api.tls_cert_file: reading {}", cert_file.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "api.tls_cert_file: no certificate in {}",
        cert_file.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("api.tls_key_file: reading {}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("api TLS: protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("api.tls_key_file: does not fit api.tls_cert_file")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepted and handshaken TLS connections, for `axum::serve`.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener` (a task on the current runtime).
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(TLS_READY_QUEUE_MAX);
        tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
        Ok(Self { ready, local })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let gate = Arc::new(Semaphore::new(TLS_HANDSHAKES_MAX));
    loop {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "management API: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let limit = Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS);
            let handshake = tokio::time::timeout(limit, acceptor.accept(tcp)).await;
            drop(permit);
            match handshake {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, peer)).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "management API: TLS handshake failed")
                }
                Err(_) => tracing::debug!(%peer, "management API: TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (the runtime is going down): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
