//! Shared by the `tests/security_*.rs` tests: a test PKI made with rcgen, rustls client
//! configurations that trust it, a broker started with the TLS and WebSocket listeners, and raw
//! TLS / WebSocket connections for the exact bytes a hostile peer sends.
//!
//! (tests/interop/certs.sh makes the same PKI with the openssl CLI for the interop suite; here the
//! certificates come from rcgen so that `cargo test` needs nothing outside Cargo.)
#![allow(dead_code)]

use crate::common::*;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The CN of [`Pki::client`]'s certificate.
pub const CLIENT_CN: &str = "certuser";
/// The DNS SAN of [`Pki::client`]'s certificate.
pub const CLIENT_SAN: &str = "sensor-7.example";

/// A certificate chain (leaf first) and its private key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key_pkcs8: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Identity {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }
}

/// A CA, a P-256 server certificate for localhost / 127.0.0.1, client certificates (valid,
/// expired, from another CA), and the broker's PEM files in a temporary directory.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: CertificateDer<'static>,
    pub other_ca: CertificateDer<'static>,
    pub server: Identity,
    /// CN [`CLIENT_CN`], SAN [`CLIENT_SAN`], by the CA.
    pub client: Identity,
    /// CN `expired-user`, by the CA, valid only in 2020.
    pub expired: Identity,
    /// CN [`CLIENT_CN`], by the other CA.
    pub rogue: Identity,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

fn leaf(
    sans: &[&str],
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &CertifiedIssuer<'_, KeyPair>,
    validity: Option<(i32, i32)>,
) -> Identity {
    let key = KeyPair::generate().expect("P-256 key");
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut p = CertificateParams::new(sans).expect("leaf params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![usage];
    p.use_authority_key_identifier_extension = true;
    if let Some((from, to)) = validity {
        p.not_before = date_time_ymd(from, 1, 1);
        p.not_after = date_time_ymd(to, 12, 31);
    }
    let cert = p.signed_by(&key, issuer).expect("sign leaf");
    Identity {
        chain: vec![cert.der().clone(), issuer.der().clone()],
        key_pkcs8: key.serialize_der(),
        cert_pem: format!("{}{}", cert.pem(), issuer.pem()),
        key_pem: key.serialize_pem(),
    }
}

impl Pki {
    pub fn new() -> Pki {
        let ca = CertifiedIssuer::self_signed(
            ca_params("shardmq test CA"),
            KeyPair::generate().unwrap(),
        )
        .expect("CA");
        let other = CertifiedIssuer::self_signed(
            ca_params("not the shardmq test CA"),
            KeyPair::generate().unwrap(),
        )
        .expect("other CA");
        let server = leaf(
            &["localhost", "127.0.0.1"],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
            None,
        );
        let client = leaf(
            &[CLIENT_SAN],
            CLIENT_CN,
            ExtendedKeyUsagePurpose::ClientAuth,
            &ca,
            None,
        );
        let expired = leaf(
            &[CLIENT_SAN],
            "expired-user",
            ExtendedKeyUsagePurpose::ClientAuth,
            &ca,
            Some((2020, 2020)),
        );
        let rogue = leaf(
            &[CLIENT_SAN],
            CLIENT_CN,
            ExtendedKeyUsagePurpose::ClientAuth,
            &other,
            None,
        );
        let dir = std::env::temp_dir().join(format!(
            "shardmq-pki-{}-{}",
            std::process::id(),
            reserve_port()
        ));
        std::fs::create_dir_all(&dir).expect("PKI dir");
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server-chain.pem"), &server.cert_pem).unwrap();
        std::fs::write(dir.join("server.key"), &server.key_pem).unwrap();
        Pki {
            dir,
            ca: ca.der().clone(),
            other_ca: other.der().clone(),
            server,
            client,
            expired,
            rogue,
        }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The ring provider: the process has no default one (rustls is built without aws-lc here).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client configuration trusting `root`, TLS `versions`, with an optional client identity.
pub fn client_config(
    root: &CertificateDer<'static>,
    identity: Option<&Identity>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).expect("add root");
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots);
    match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key())
            .expect("client identity"),
        None => builder.with_no_client_auth(),
    }
}

/// [`client_config`] with TLS 1.2 and 1.3 and ALPN `mqtt`.
pub fn default_client_config(pki: &Pki, identity: Option<&Identity>) -> Arc<rustls::ClientConfig> {
    let mut c = client_config(&pki.ca, identity, rustls::ALL_VERSIONS);
    c.alpn_protocols = vec![b"mqtt".to_vec()];
    Arc::new(c)
}

// ---- the broker ----------------------------------------------------------------------------

/// The ports of a [`secure_broker`]'s listeners (the plain one is `Broker::port`).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub tls: u16,
    pub ws: u16,
    pub wss: u16,
}

/// A broker with the plain listener (the harness's port), `[listener.tls]`, `[listener.ws]` and
/// `[listener.wss]` on free ports, the PKI's files, plus `env`. Waits until every port accepts.
pub fn secure_broker(pki: &Pki, env: &[(&str, String)]) -> (Broker, Ports) {
    let ports = Ports {
        tls: reserve_port(),
        ws: reserve_port(),
        wss: reserve_port(),
    };
    let mut all: Vec<(String, String)> = vec![
        (
            "SHARDMQ_LISTENER__TLS__BIND".into(),
            format!("127.0.0.1:{}", ports.tls),
        ),
        (
            "SHARDMQ_LISTENER__TLS__CERT_FILE".into(),
            pki.path("server-chain.pem"),
        ),
        (
            "SHARDMQ_LISTENER__TLS__KEY_FILE".into(),
            pki.path("server.key"),
        ),
        ("SHARDMQ_LISTENER__TLS__CA_FILE".into(), pki.path("ca.pem")),
        (
            "SHARDMQ_LISTENER__WS__BIND".into(),
            format!("127.0.0.1:{}", ports.ws),
        ),
        (
            "SHARDMQ_LISTENER__WSS__BIND".into(),
            format!("127.0.0.1:{}", ports.wss),
        ),
    ];
    for (k, v) in env {
        all.retain(|(key, _)| key != k);
        all.push((k.to_string(), v.clone()));
    }
    let refs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let broker = Broker::start_with(&refs);
    for port in [ports.tls, ports.ws, ports.wss] {
        wait_accepting(&broker, port);
    }
    (broker, ports)
}

/// Waits (bounded) until 127.0.0.1:`port` accepts TCP connections.
pub fn wait_accepting(broker: &Broker, port: u16) {
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "port {port} does not accept within {WAIT:?}; log:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- raw TLS -------------------------------------------------------------------------------

/// A TLS connection to 127.0.0.1:`port` (server name `localhost`); the handshake's result.
pub async fn tls_connect(
    port: u16,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    tls_over(tcp, config).await
}

/// A TLS handshake over an open TCP connection.
pub async fn tls_over(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").expect("server name");
    bounded(
        WAIT,
        "TLS handshake",
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
}

/// Reads until EOF or an error, within [`WAIT`]; what was read, and the error if any. Panics
/// if the connection stays open.
pub async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    what: &str,
) -> (Vec<u8>, Option<std::io::Error>) {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => {
                panic!("{what}: the broker kept the connection open for {WAIT:?}; read {got:02x?}")
            }
            Ok(Ok(0)) => return (got, None),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (got, Some(e)),
        }
    }
}

/// The bytes of an MQTT 3.1.1 CONNECT with `username` / `password`.
pub fn connect_bytes(
    protocol: shardmq_codec::Protocol,
    client_id: &str,
    username: Option<&str>,
    password: Option<&str>,
) -> Vec<u8> {
    let mut c = connect_packet(protocol, client_id, true, 0);
    c.username = username.map(shardmq_codec::ByteStr::from);
    c.password = password.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes()));
    encoded(&shardmq_codec::Packet::Connect(Box::new(c)), protocol)
}

/// Sends a CONNECT over `s` and returns the CONNACK's code (0 = accepted; the 3.1.1 return code
/// for 3.1.1, the 5.0 reason code for 5.0), or None if the broker closed without one.
pub async fn connack_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    protocol: shardmq_codec::Protocol,
    connect: &[u8],
) -> Option<u8> {
    if s.write_all(connect).await.is_err() {
        return None;
    }
    let _ = s.flush().await;
    let mut buf = bytes::BytesMut::new();
    let mut decoder = shardmq_codec::Decoder::with_protocol(protocol, 1 << 20);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match decoder.decode(&mut buf) {
            Ok(Some(shardmq_codec::Packet::ConnAck(a))) => {
                return Some(match protocol {
                    shardmq_codec::Protocol::V5 => a.code.0,
                    _ => a.code.to_v3_connack(),
                })
            }
            Ok(Some(other)) => panic!("expected CONNACK, got {other:?}"),
            Ok(None) => {}
            Err(e) => panic!("undecodable bytes instead of CONNACK: {e}"),
        }
        match tokio::time::timeout_at(deadline, s.read_buf(&mut buf)).await {
            Err(_) => panic!("no CONNACK and no close within {WAIT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(_)) => {}
        }
    }
}

/// The WARN lines logged after the first `skip` lines of the log.
pub fn warns_since(broker: &Broker, skip: usize) -> Vec<String> {
    broker
        .log()
        .lines()
        .skip(skip)
        .filter(|l| l.contains(" WARN "))
        .map(str::to_owned)
        .collect()
}

/// Lines in the broker's log so far (a mark for [`warns_since`]).
pub fn log_mark(broker: &Broker) -> usize {
    broker.log().lines().count()
}

/// Waits (bounded) for a WARN line after `mark` that contains `needle`; returns it.
pub async fn expect_warn_since(broker: &Broker, mark: usize, needle: &str, what: &str) -> String {
    let mut found = None;
    eventually(WAIT, || {
        found = warns_since(broker, mark)
            .into_iter()
            .find(|l| l.contains(needle));
        let ok = found.is_some();
        async move { ok }
    })
    .await;
    if let Some(line) = &found {
        eprintln!("{what}: {line}");
    }
    found.unwrap_or_else(|| {
        panic!(
            "{what}: no WARN line containing {needle:?} after the attempt; WARN lines since: {:#?}",
            warns_since(broker, mark)
        )
    })
}

/// Writes the PKI-independent files of `[auth]` tests into `dir`: returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path.display().to_string()
}
