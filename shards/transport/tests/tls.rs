//! TLS through `Transport`, against an in-memory rustls client.
mod common;

use std::io::Write;

use bytes::BytesMut;
use common::*;
use rustls::version::{TLS12, TLS13};
use shardmq_transport::{
    load_server_config, PeerCertName, Stack, TlsConfigCell, TlsError, Transport, TransportError,
    VerifyPeer,
};

const CONNECT: &[u8] = &[
    0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 4, b'd', b'e', b'v', b'1',
];

fn handshake(
    stack: &Stack,
    version: &'static rustls::SupportedProtocolVersion,
    id: Option<&Identity>,
) -> (rustls::ClientConnection, Transport, Outcome) {
    let mut c = client(client_config(version, id, &[b"mqtt"]));
    let mut s = Transport::new(stack).unwrap();
    let mut plain = BytesMut::new();
    let mut app = Vec::new();
    let o = pump_tls(&mut c, &mut s, &mut plain, &mut app, &[]);
    assert!(plain.is_empty());
    (c, s, o)
}

fn exchange(c: &mut rustls::ClientConnection, s: &mut Transport, cuts: &[usize]) {
    let mut plain = BytesMut::new();
    let mut app = Vec::new();
    c.writer().write_all(CONNECT).unwrap();
    c.writer().write_all(&[0xc0, 0]).unwrap(); // PINGREQ in a second record
    let o = pump_tls(c, s, &mut plain, &mut app, cuts);
    assert!(o.server_err.is_none() && o.client_err.is_none(), "{o:?}");
    let mut want = CONNECT.to_vec();
    want.extend_from_slice(&[0xc0, 0]);
    assert_eq!(&plain[..], &want[..]);
    s.on_plain_out(&[0x20, 2, 0, 0]).unwrap(); // CONNACK
    s.on_plain_out(&[0xd0, 0]).unwrap(); // PINGRESP
    let o = pump_tls(c, s, &mut plain, &mut app, cuts);
    assert!(o.server_err.is_none() && o.client_err.is_none(), "{o:?}");
    assert_eq!(app, [0x20, 2, 0, 0, 0xd0, 0]);
}

#[test]
fn tls13_and_tls12_handshake_and_mqtt_both_ways() {
    let stack = stack_tls(VerifyPeer::None, PeerCertName::None);
    for (version, want) in [
        (&TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&TLS12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let (mut c, mut s, o) = handshake(&stack, version, None);
        assert!(o.server_err.is_none() && o.client_err.is_none(), "{o:?}");
        assert!(s.ready() && !c.is_handshaking());
        assert_eq!(s.tls().unwrap().protocol_version(), Some(want));
        assert_eq!(s.tls().unwrap().alpn_protocol(), Some(&b"mqtt"[..]));
        assert_eq!(c.alpn_protocol(), Some(&b"mqtt"[..]));
        exchange(&mut c, &mut s, &[]);
        exchange(&mut c, &mut s, &[1, 7, 3, 100]);
        // Clean close from the client: the server answers close_notify and wants to close.
        c.send_close_notify();
        let mut plain = BytesMut::new();
        let mut app = Vec::new();
        let o = pump_tls(&mut c, &mut s, &mut plain, &mut app, &[]);
        assert!(o.server_err.is_none(), "{o:?}");
        assert!(s.closing());
    }
}

#[test]
fn mqtt_before_ready_is_refused() {
    let stack = stack_tls(VerifyPeer::None, PeerCertName::None);
    let mut s = Transport::new(&stack).unwrap();
    assert!(!s.ready());
    assert!(matches!(
        s.on_plain_out(&[0xd0, 0]),
        Err(TransportError::NotReady)
    ));
}

#[test]
fn verify_required() {
    let p = pki();
    let stack = stack_tls(VerifyPeer::Required, PeerCertName::Cn);
    let (mut c, mut s, o) = handshake(&stack, &TLS13, Some(&p.client));
    assert!(o.server_err.is_none() && o.client_err.is_none(), "{o:?}");
    assert_eq!(s.peer_cert_name(), Some("device-17"));
    exchange(&mut c, &mut s, &[]);

    for (id, tls12) in [
        (None, false),
        (Some(&p.client_expired), false),
        (Some(&p.client_other_ca), false),
        (Some(&p.client_expired), true),
    ] {
        let version = if tls12 { &TLS12 } else { &TLS13 };
        let (_, s, o) = handshake(&stack, version, id);
        let err = o.server_err.expect("server refuses");
        assert!(s.closing() && !s.ready());
        match id {
            None => assert!(err.contains("NoCertificatesPresented"), "{err}"),
            Some(i) if std::ptr::eq(i, &p.client_expired) => {
                assert!(err.contains("Expired"), "{err}")
            }
            Some(_) => assert!(err.contains("UnknownIssuer"), "{err}"),
        }
        // The alert reached the client, so it knows why.
        assert!(
            matches!(o.client_err, Some(rustls::Error::AlertReceived(_))),
            "{:?}",
            o.client_err
        );
    }
}

#[test]
fn verify_optional_and_none() {
    let p = pki();
    let stack = stack_tls(VerifyPeer::Optional, PeerCertName::San);
    let (_, s, o) = handshake(&stack, &TLS13, None);
    assert!(o.server_err.is_none(), "{o:?}");
    assert!(s.ready());
    assert_eq!(s.peer_cert_name(), None);
    let (_, s, o) = handshake(&stack, &TLS12, Some(&p.client));
    assert!(o.server_err.is_none(), "{o:?}");
    // The first DNS or e-mail SAN (the IP SAN before it is skipped).
    assert_eq!(s.peer_cert_name(), Some("device-17.example.com"));
    let (_, _, o) = handshake(&stack, &TLS13, Some(&p.client_other_ca));
    assert!(o.server_err.unwrap().contains("UnknownIssuer"));

    // verify_peer = none: a certificate is not even asked for.
    let stack = stack_tls(VerifyPeer::None, PeerCertName::Cn);
    let (_, s, o) = handshake(&stack, &TLS13, Some(&p.client_other_ca));
    assert!(o.server_err.is_none(), "{o:?}");
    assert_eq!(s.peer_cert_name(), None);
}

#[test]
fn cert_names() {
    let p = pki();
    use shardmq_transport::tls::cert_name;
    assert_eq!(
        cert_name(&p.client.cert, PeerCertName::Cn).as_deref(),
        Some("device-17")
    );
    assert_eq!(
        cert_name(&p.client.cert, PeerCertName::San).as_deref(),
        Some("device-17.example.com")
    );
    assert_eq!(cert_name(&p.client.cert, PeerCertName::None), None);
    assert_eq!(cert_name(&p.client_expired.cert, PeerCertName::San), None);
    assert_eq!(cert_name(b"not a certificate", PeerCertName::Cn), None);
}

#[test]
fn non_tls_client_and_garbage() {
    let stack = stack_tls(VerifyPeer::None, PeerCertName::None);
    // An MQTT CONNECT on the TLS port.
    let mut s = Transport::new(&stack).unwrap();
    let mut plain = BytesMut::new();
    let e = s.on_wire_in(CONNECT, &mut plain).unwrap_err();
    assert!(matches!(e, TransportError::Tls(_)), "{e:?}");
    assert!(s.closing() && plain.is_empty());
    let mut out = BytesMut::new();
    s.take_wire_out(&mut out);
    // An alert record (content type 21) tells the peer.
    assert_eq!(out.first(), Some(&21), "{out:?}");
    // Later bytes are ignored.
    s.on_wire_in(CONNECT, &mut plain).unwrap();

    // Garbage before a real ClientHello.
    let mut c = client(client_config(&TLS13, None, &[]));
    let mut hello = vec![0xde, 0xad, 0xbe, 0xef, 0x01];
    c.write_tls(&mut hello).unwrap();
    let mut s = Transport::new(&stack).unwrap();
    assert!(s.on_wire_in(&hello, &mut plain).is_err());
    assert!(!s.ready());

    // An HTTP request on the TLS port.
    let mut s = Transport::new(&stack).unwrap();
    assert!(s
        .on_wire_in(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut plain)
        .is_err());
}

#[test]
fn record_flood_in_one_feed() {
    let stack = stack_tls(VerifyPeer::None, PeerCertName::None);
    let (mut c, mut s, _) = handshake(&stack, &TLS13, None);
    c.set_buffer_limit(None);
    // 5,000 records of 3 bytes each (a PINGREQ and a byte), all in one socket read.
    let mut want = Vec::new();
    for i in 0..5000u32 {
        let rec = [0xc0, 0, i as u8];
        c.writer().write_all(&rec).unwrap();
        want.extend_from_slice(&rec);
    }
    let mut wire = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut wire).unwrap();
    }
    assert!(wire.len() > 5000 * 20);
    let mut plain = BytesMut::new();
    s.on_wire_in(&wire, &mut plain).unwrap();
    assert_eq!(&plain[..], &want[..]);

    // A flood of garbage records (valid headers, undecryptable bodies) is refused.
    let mut flood = Vec::new();
    for _ in 0..1000 {
        flood.extend_from_slice(&[23, 3, 3, 0, 20]);
        flood.extend_from_slice(&[0x55; 20]);
    }
    let e = s.on_wire_in(&flood, &mut plain).unwrap_err();
    assert!(
        matches!(e, TransportError::Tls(rustls::Error::DecryptError)),
        "{e:?}"
    );
    assert_eq!(plain.len(), want.len());
}

#[test]
fn alpn_mismatch_is_refused() {
    let stack = stack_tls(VerifyPeer::None, PeerCertName::None);
    let mut c = client(client_config(&TLS13, None, &[b"h2"]));
    let mut s = Transport::new(&stack).unwrap();
    let o = pump_tls(&mut c, &mut s, &mut BytesMut::new(), &mut Vec::new(), &[]);
    assert!(o.server_err.unwrap().contains("NoApplicationProtocol"));
    // A client with no ALPN at all is fine (most MQTT clients).
    let (_, s, o) = handshake(&stack, &TLS13, None);
    assert!(o.server_err.is_none() && s.ready());
}

#[test]
fn load_errors_name_the_file() {
    let p = pki();
    let mut st = settings(VerifyPeer::None, PeerCertName::None);
    st.cert_file = p.dir.join("missing.pem");
    let e = load_server_config(&st, &[]).unwrap_err();
    assert!(
        matches!(e, TlsError::Read { .. }) && e.to_string().contains("missing.pem"),
        "{e}"
    );

    let mut st = settings(VerifyPeer::None, PeerCertName::None);
    st.key_file = p.server_cert.clone(); // a certificate where the key should be
    let e = load_server_config(&st, &[]).unwrap_err();
    assert!(e.to_string().contains("server.pem"), "{e}");

    let mut st = settings(VerifyPeer::None, PeerCertName::None);
    st.key_file = p.server2_key.clone(); // the key of another certificate
    let e = load_server_config(&st, &[]).unwrap_err();
    assert!(matches!(e, TlsError::CertKey { .. }), "{e}");

    let mut st = settings(VerifyPeer::Required, PeerCertName::None);
    st.ca_file = None;
    assert!(matches!(
        load_server_config(&st, &[]),
        Err(TlsError::MissingCaFile(_))
    ));

    let mut st = settings(VerifyPeer::Required, PeerCertName::None);
    st.ca_file = Some(p.server_key.clone());
    let e = load_server_config(&st, &[]).unwrap_err();
    assert!(matches!(e, TlsError::NoCertificate { .. }), "{e}");
}

#[test]
fn sec1_ec_key_loads() {
    // Rewrap the P-256 PKCS#8 key as SEC1 (the ECPrivateKey inside the PKCS#8 OCTET STRING).
    use x509_parser::der_parser::ber::parse_ber_sequence;
    let p = pki();
    let pem = std::fs::read_to_string(&p.server_key).unwrap();
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map(|k: rustls_pki_types::PrivatePkcs8KeyDer<'static>| k.secret_pkcs8_der().to_vec())
        .unwrap();
    let (_, seq) = parse_ber_sequence(&der).unwrap();
    let sec1 = seq.as_sequence().unwrap()[2].as_slice().unwrap().to_vec();
    let b64 = base64_encode(&sec1);
    let path = p.dir.join("server.sec1.key");
    std::fs::write(
        &path,
        format!("-----BEGIN EC PRIVATE KEY-----\n{b64}\n-----END EC PRIVATE KEY-----\n"),
    )
    .unwrap();
    let mut st = settings(VerifyPeer::None, PeerCertName::None);
    st.key_file = path;
    let config = load_server_config(&st, &[b"mqtt"]).unwrap();
    let stack = Stack {
        tls: Some(config),
        ..Stack::default()
    };
    let (_, s, o) = handshake(&stack, &TLS13, None);
    assert!(o.server_err.is_none() && s.ready(), "{o:?}");
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[test]
fn reload_keeps_existing_connections() {
    let p = pki();
    let st = settings(VerifyPeer::None, PeerCertName::None);
    let cell = TlsConfigCell::new(&st, &[b"mqtt"]).unwrap();
    let old = Stack {
        tls: Some(cell.current()),
        ..Stack::default()
    };
    let mut c_old = client(client_config(&TLS13, None, &[]));
    let mut s_old = Transport::new(&old).unwrap();
    // Half a handshake on the old configuration.
    let mut hello = Vec::new();
    c_old.write_tls(&mut hello).unwrap();
    s_old.on_wire_in(&hello, &mut BytesMut::new()).unwrap();

    let mut st2 = st.clone();
    st2.cert_file = p.server2_cert.clone();
    st2.key_file = p.server2_key.clone();
    cell.reload(&st2).unwrap();
    // A failed reload keeps the current configuration.
    let mut bad = st2.clone();
    bad.cert_file = p.dir.join("nope.pem");
    assert!(cell.reload(&bad).is_err());

    let o = pump_tls(
        &mut c_old,
        &mut s_old,
        &mut BytesMut::new(),
        &mut Vec::new(),
        &[],
    );
    assert!(o.server_err.is_none() && s_old.ready());
    assert_eq!(c_old.peer_certificates().unwrap()[0], p.server_cert_der);

    let new = Stack {
        tls: Some(cell.current()),
        ..Stack::default()
    };
    let (c_new, s_new, o) = handshake(&new, &TLS13, None);
    assert!(o.server_err.is_none() && s_new.ready());
    assert_ne!(c_new.peer_certificates().unwrap()[0], p.server_cert_der);
}

/// Writes fuzz seeds (a TLS 1.3 and a TLS 1.2 ClientHello, whole and split) when
/// `SHARDMQ_FUZZ_SEEDS` names the fuzz corpus folder: `$SHARDMQ_FUZZ_SEEDS/tls/…`.
#[test]
fn write_fuzz_seeds() {
    let Some(dir) = std::env::var_os("SHARDMQ_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::Path::new(&dir).join("tls");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, version) in [&TLS13, &TLS12].into_iter().enumerate() {
        let mut c = client(client_config(version, Some(&pki().client), &[b"mqtt"]));
        let mut hello = Vec::new();
        c.write_tls(&mut hello).unwrap();
        for piece in [255u8, 3] {
            let mut seed = vec![piece];
            seed.extend_from_slice(&hello);
            std::fs::write(dir.join(format!("client-hello-{i}-{piece}")), seed).unwrap();
        }
    }
}
