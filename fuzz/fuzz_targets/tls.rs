//! TLS server layer fed arbitrary bytes (as a client would send them), with client
//! certificates optional so the certificate path is reachable. Checks: no panic, no
//! plaintext from bytes that never completed a handshake, an error leaves the transport
//! closing.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use shardmq_transport::{tls::crypto_provider, Stack, Transport};

fn config() -> Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca_cert = ca.self_signed(&ca_key).unwrap();
            let issuer = rcgen::Issuer::new(ca, ca_key);
            let key = rcgen::KeyPair::generate().unwrap();
            let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            let mut roots = RootCertStore::empty();
            roots.add(CertificateDer::from(ca_cert.der().to_vec())).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
                .allow_unauthenticated()
                .build()
                .unwrap();
            let mut c = ServerConfig::builder_with_provider(crypto_provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(
                    vec![leaf.der().clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                )
                .unwrap();
            c.alpn_protocols = vec![b"mqtt".to_vec()];
            Arc::new(c)
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, data)) = data.split_first() else { return };
    let stack = Stack { tls: Some(config()), ..Stack::default() };
    let mut t = Transport::new(&stack).unwrap();
    let mut plain = BytesMut::new();
    let mut out = BytesMut::new();
    for chunk in data.chunks(usize::from(piece) * 4 + 1) {
        let r = t.on_wire_in(chunk, &mut plain);
        t.take_wire_out(&mut out);
        if r.is_err() {
            assert!(t.closing());
            break;
        }
        t.shrink();
    }
    // Random bytes cannot finish a handshake, so no application data can come out.
    assert!(plain.is_empty());
    assert!(!t.ready());
});
