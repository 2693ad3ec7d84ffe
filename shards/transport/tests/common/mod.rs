//! Test helpers: a PKI made with rcgen, rustls clients, and an in-memory pump.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use shardmq_transport::{
    PeerCertName, Stack, TlsSettings, Transport, TransportError, VerifyPeer, WsSettings,
};

/// A client identity: chain and key.
#[derive(Clone)]
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

pub struct Pki {
    pub dir: PathBuf,
    pub ca_file: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub server_cert_der: CertificateDer<'static>,
    pub ca_der: CertificateDer<'static>,
    pub client: Identity,
    pub client_expired: Identity,
    pub client_other_ca: Identity,
    /// A second server certificate (same CA), for reload tests.
    pub server2_cert: PathBuf,
    pub server2_key: PathBuf,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, rcgen::Certificate) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    (params, key, cert)
}

fn leaf(
    cn: &str,
    sans: Vec<SanType>,
    issuer: &Issuer<'_, KeyPair>,
    expired: bool,
) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = sans;
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert, key)
}

/// One PKI per test process (key generation is the slow part).
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("shardmq-transport-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca_params, ca_key, ca_cert) = ca("shardmq test CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let (_, other_key, _) = ca("other CA");
        let mut other_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        other_params
            .distinguished_name
            .push(DnType::CommonName, "other CA");
        other_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let other = Issuer::new(other_params, other_key);

        let dns = |s: &str| SanType::DnsName(s.try_into().unwrap());
        let (server, server_key) = leaf("localhost", vec![dns("localhost")], &issuer, false);
        let (server2, server2_key) = leaf("localhost", vec![dns("localhost")], &issuer, false);
        let (client, client_key) = leaf(
            "device-17",
            vec![
                SanType::IpAddress("10.0.0.1".parse().unwrap()),
                dns("device-17.example.com"),
                SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
            ],
            &issuer,
            false,
        );
        let (expired, expired_key) = leaf("old-device", vec![], &issuer, true);
        let (stranger, stranger_key) = leaf("stranger", vec![], &other, false);

        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let id = |c: &rcgen::Certificate, k: &KeyPair| Identity {
            cert: c.der().clone(),
            key_der: k.serialize_der(),
        };
        Pki {
            ca_file: write("ca.pem", ca_cert.pem()),
            server_cert: write("server.pem", server.pem()),
            server_key: write("server.key", server_key.serialize_pem()),
            server2_cert: write("server2.pem", server2.pem()),
            server2_key: write("server2.key", server2_key.serialize_pem()),
            server_cert_der: server.der().clone(),
            ca_der: ca_cert.der().clone(),
            client: id(&client, &client_key),
            client_expired: id(&expired, &expired_key),
            client_other_ca: id(&stranger, &stranger_key),
            dir,
        }
    })
}

pub fn settings(verify: VerifyPeer, name: PeerCertName) -> TlsSettings {
    let p = pki();
    TlsSettings {
        cert_file: p.server_cert.clone(),
        key_file: p.server_key.clone(),
        ca_file: Some(p.ca_file.clone()),
        verify_peer: verify,
        peer_cert_as_username: name,
    }
}

pub fn client_config(
    version: &'static rustls::SupportedProtocolVersion,
    identity: Option<&Identity>,
    alpn: &[&[u8]],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki().ca_der.clone()).unwrap();
    let b = ClientConfig::builder_with_provider(shardmq_transport::tls::crypto_provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots);
    let mut c = match identity {
        None => b.with_no_client_auth(),
        Some(id) => b
            .with_client_auth_cert(
                vec![id.cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_der.clone())),
            )
            .unwrap(),
    };
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(c)
}

pub fn client(config: Arc<ClientConfig>) -> ClientConnection {
    ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap()
}

pub fn stack_tls(verify: VerifyPeer, name: PeerCertName) -> Stack {
    let config =
        shardmq_transport::load_server_config(&settings(verify, name), &[b"mqtt"]).unwrap();
    Stack {
        tls: Some(config),
        peer_cert_name: name,
        ..Stack::default()
    }
}

pub fn ws_settings() -> WsSettings {
    WsSettings {
        path: "/mqtt".into(),
        max_message_bytes: 64 * 1024,
    }
}

/// What a pump ended with.
#[derive(Debug, Default)]
pub struct Outcome {
    pub server_err: Option<String>,
    pub client_err: Option<rustls::Error>,
}

/// Splits `bytes` into pieces using `cuts` (sizes, cycled); a piece size 0 means "all".
pub fn feed_split(
    server: &mut Transport,
    bytes: &[u8],
    cuts: &[usize],
    plain: &mut BytesMut,
) -> Result<(), TransportError> {
    let mut rest = bytes;
    let mut i = 0;
    while !rest.is_empty() {
        let n = match cuts.get(i % cuts.len().max(1)) {
            Some(&c) if c > 0 => c.min(rest.len()),
            _ => rest.len(),
        };
        i += 1;
        server.on_wire_in(&rest[..n], plain)?;
        rest = &rest[n..];
    }
    Ok(())
}

/// Moves bytes between a rustls client and a server `Transport` until both are quiet.
/// `to_app` receives the plaintext the client gets.
pub fn pump_tls(
    client: &mut ClientConnection,
    server: &mut Transport,
    plain_in: &mut BytesMut,
    to_app: &mut Vec<u8>,
    cuts: &[usize],
) -> Outcome {
    let mut out = Outcome::default();
    for _ in 0..64 {
        let mut c2s = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut c2s).unwrap();
        }
        if !c2s.is_empty() && out.server_err.is_none() {
            if let Err(e) = feed_split(server, &c2s, cuts, plain_in) {
                out.server_err = Some(format!("{e:?}"));
            }
        }
        let mut s2c = BytesMut::new();
        server.take_wire_out(&mut s2c);
        if !s2c.is_empty() {
            let mut rd = &s2c[..];
            while !rd.is_empty() {
                if client.read_tls(&mut rd).unwrap() == 0 {
                    break;
                }
                match client.process_new_packets() {
                    Ok(_) => {}
                    Err(e) => {
                        out.client_err = Some(e);
                        return out;
                    }
                }
            }
            let _ = client.reader().read_to_end(to_app);
        }
        if c2s.is_empty() && s2c.is_empty() {
            return out;
        }
    }
    panic!("pump did not settle (livelock)");
}

/// An in-memory duplex for tungstenite's client: reads return WouldBlock when empty.
#[derive(Default)]
pub struct Duplex {
    pub inbound: VecDeque<u8>,
    pub outbound: Vec<u8>,
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.inbound.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.inbound.len());
        for (i, b) in self.inbound.drain(..n).enumerate() {
            buf[i] = b;
        }
        Ok(n)
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbound.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
