//! Hostile input on the TLS, WebSocket and PROXY-protocol layers. Each attack must end in a
//! clean close (EOF or reset, bounded, no MQTT answer), a WARN line that names the peer's
//! address, and no harm to a client connected before it (checked after every attack).

mod common;
mod security_common;

use common::*;
use security_common::*;
use shardmq_codec::Protocol;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn tcp(port: u16) -> (TcpStream, SocketAddr) {
    let s = bounded(WAIT, "TCP connect", TcpStream::connect(("127.0.0.1", port)))
        .await
        .expect("TCP connect");
    let local = s.local_addr().unwrap();
    (s, local)
}

/// The broker closes `s` (bounded) without an MQTT packet; returns what it sent first.
async fn expect_closed(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let (got, _) = read_until_closed(s, what).await;
    assert!(
        !got.starts_with(&[0x20]),
        "{what}: the broker answered with a CONNACK: {got:02x?}"
    );
    got
}

/// A WARN line naming `peer` (its address and port) is logged after `mark`.
async fn expect_peer_warned(broker: &Broker, mark: usize, peer: SocketAddr, what: &str) {
    expect_warn_since(broker, mark, &peer.to_string(), what).await;
}

/// An HTTP/1.1 WebSocket upgrade request for `path`, offering `protocol` (None: no
/// Sec-WebSocket-Protocol header).
fn upgrade_request(port: u16, path: &str, protocol: Option<&str>) -> String {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocol {
        r.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    r.push_str("\r\n");
    r
}

/// Reads an HTTP response head (up to the blank line); its status code and the head.
async fn http_response(s: &mut TcpStream, what: &str) -> (u16, String) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    let deadline = tokio::time::Instant::now() + WAIT;
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout_at(deadline, s.read(&mut b)).await {
            Err(_) => panic!(
                "{what}: no HTTP response within {WAIT:?}; got {:?}",
                String::from_utf8_lossy(&head)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => head.push(b[0]),
        }
        assert!(head.len() < 16384, "{what}: response head over 16 KiB");
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn tls_broker(pki: &Pki) -> (Broker, Ports) {
    secure_broker(
        pki,
        &[
            // Client certificates are checked when sent, so bad ones can be refused.
            ("SHARDMQ_LISTENER__TLS__VERIFY_PEER", "optional".into()),
            ("SHARDMQ_MQTT__CONNECT_TIMEOUT_MS", "1500".into()),
        ],
    )
}

#[tokio::test]
async fn plain_mqtt_on_the_tls_port_is_closed() {
    let pki = Pki::new();
    let (broker, ports) = tls_broker(&pki);
    let mut healthy = Healthy::connect(broker.port).await;
    let mark = log_mark(&broker);
    let (mut s, local) = tcp(ports.tls).await;
    s.write_all(&connect_bytes(Protocol::V3_1_1, "plain-on-tls", None, None))
        .await
        .unwrap();
    let got = expect_closed(&mut s, "plain CONNECT on the TLS port").await;
    // At most a TLS alert record (content type 21) comes back.
    assert!(
        got.is_empty() || got[0] == 0x15,
        "not a TLS alert: {got:02x?}"
    );
    expect_peer_warned(&broker, mark, local, "plain MQTT on the TLS port").await;
    // rumqttc without TLS on the TLS port: no CONNACK.
    let (c, eventloop) = rumqttc::AsyncClient::new(v4_options(ports.tls, "plain-rumqttc", true), 8);
    let mut inbox = Inbox::spawn(eventloop);
    let connack = inbox
        .wait_for(WAIT, |p| {
            matches!(p, rumqttc::Packet::ConnAck(_)).then_some(())
        })
        .await;
    assert!(
        connack.is_none(),
        "rumqttc without TLS got a CONNACK from the TLS port"
    );
    drop(c);
    healthy.check().await;
}

#[tokio::test]
async fn garbage_before_the_client_hello_is_closed() {
    let pki = Pki::new();
    let (broker, ports) = tls_broker(&pki);
    let mut healthy = Healthy::connect(broker.port).await;
    let mark = log_mark(&broker);
    let (mut s, local) = tcp(ports.tls).await;
    s.write_all(b"\x00\x01garbage\r\n\r\n").await.unwrap();
    // Then a real handshake on the same connection: it must not succeed.
    let handshake = tls_over(s, default_client_config(&pki, None)).await;
    assert!(handshake.is_err(), "a handshake after garbage succeeded");
    expect_peer_warned(&broker, mark, local, "garbage before ClientHello").await;
    healthy.check().await;
}

#[tokio::test]
async fn a_tls_record_flood_is_cut_off() {
    let pki = Pki::new();
    let (broker, ports) = tls_broker(&pki);
    let mut healthy = Healthy::connect(broker.port).await;
    let rss_before = broker.rss_kib();
    let mark = log_mark(&broker);
    let (s, local) = tcp(ports.tls).await;
    let (mut r, mut w) = s.into_split();
    // Handshake records (content type 22) of the maximum size, as fast as the socket takes
    // them: a ClientHello that declares 16 MiB - 1, then its never-ending body.
    let mut record = vec![0x16, 0x03, 0x01, 0x40, 0x00];
    record.extend_from_slice(&[0x01, 0xff, 0xff, 0xff]);
    record.resize(5 + 0x4000, 0x41);
    let limit_bytes: usize = 64 << 20;
    let t0 = Instant::now();
    let mut sent = 0usize;
    let cut = loop {
        match tokio::time::timeout(WAIT, w.write_all(&record)).await {
            Ok(Ok(())) => sent += record.len(),
            Ok(Err(_)) => break true,
            Err(_) => break false, // the broker stopped reading but did not close
        }
        if sent >= limit_bytes {
            break false;
        }
        if sent == record.len() {
            // Every later record is pure body.
            record.truncate(5);
            record.resize(5 + 0x4000, 0x41);
        }
    };
    if !cut {
        // A broker that stopped reading must still close the connection.
        let (_, _) = read_until_closed(&mut r, "TLS record flood").await;
    }
    assert!(
        sent < limit_bytes,
        "the broker took {sent} bytes of a TLS flood in {:?} without closing",
        t0.elapsed()
    );
    expect_peer_warned(&broker, mark, local, "TLS record flood").await;
    let grown = broker.rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 32 * 1024,
        "broker RSS grew by {grown} KiB during the flood"
    );
    healthy.check().await;
}

async fn bad_client_certificate(identity: fn(&Pki) -> &Identity, what: &str) {
    let pki = Pki::new();
    let (broker, ports) = tls_broker(&pki);
    let mut healthy = Healthy::connect(broker.port).await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mark = log_mark(&broker);
        let (s, local) = tcp(ports.tls).await;
        let config = Arc::new(client_config(&pki.ca, Some(identity(&pki)), &[version]));
        let accepted = match tls_over(s, config).await {
            Err(_) => false,
            // TLS 1.3: the client finishes before the server has checked its certificate; the
            // refusal is an alert on the first read.
            Ok(mut tls) => {
                let connect = connect_bytes(Protocol::V5, "bad-cert", None, None);
                connack_over(&mut tls, Protocol::V5, &connect)
                    .await
                    .is_some()
            }
        };
        assert!(
            !accepted,
            "{what} over {:?}: got a CONNACK",
            version.version
        );
        expect_peer_warned(&broker, mark, local, what).await;
    }
    healthy.check().await;
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    bad_client_certificate(|p| &p.expired, "expired client certificate").await;
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    bad_client_certificate(|p| &p.rogue, "client certificate from another CA").await;
}

#[tokio::test]
async fn websocket_upgrades_with_a_wrong_path_or_subprotocol_are_refused() {
    let pki = Pki::new();
    let (broker, ports) = tls_broker(&pki);
    let mut healthy = Healthy::connect(broker.port).await;
    // The right request first: 101 with the subprotocol mqtt.
    let (mut s, _) = tcp(ports.ws).await;
    s.write_all(upgrade_request(ports.ws, "/mqtt", Some("mqtt")).as_bytes())
        .await
        .unwrap();
    let (status, head) = http_response(&mut s, "valid upgrade").await;
    assert_eq!(status, 101, "valid upgrade: {head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: mqtt"),
        "101 without the subprotocol mqtt: {head}"
    );
    drop(s);
    for (path, protocol, what) in [
        ("/nope", Some("mqtt"), "wrong path"),
        ("/mqtt/extra", Some("mqtt"), "path with a suffix"),
        ("/mqtt", None, "no subprotocol"),
        (
            "/mqtt",
            Some("chat, superchat"),
            "subprotocols without mqtt",
        ),
    ] {
        let mark = log_mark(&broker);
        let (mut s, local) = tcp(ports.ws).await;
        s.write_all(upgrade_request(ports.ws, path, protocol).as_bytes())
            .await
            .unwrap();
        let (status, head) = http_response(&mut s, what).await;
        assert!(
            (400..500).contains(&status),
            "{what}: expected a 4xx refusal, got {status}: {head}"
        );
        read_until_closed(&mut s, what).await;
        expect_peer_warned(&broker, mark, local, what).await;
    }
    // Not HTTP at all on the WebSocket port.
    let mark = log_mark(&broker);
    let (mut s, local) = tcp(ports.ws).await;
    s.write_all(&connect_bytes(Protocol::V5, "mqtt-on-ws", None, None))
        .await
        .unwrap();
    expect_closed(&mut s, "raw MQTT on the WebSocket port").await;
    expect_peer_warned(&broker, mark, local, "raw MQTT on the WebSocket port").await;
    healthy.check().await;
}

/// A masked client frame header: FIN + binary, the 64-bit length form.
fn frame_header(len: u64) -> Vec<u8> {
    let mut h = vec![0x82, 0x80 | 127];
    h.extend_from_slice(&len.to_be_bytes());
    h.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
    h
}

async fn upgraded(port: u16) -> (TcpStream, SocketAddr) {
    let (mut s, local) = tcp(port).await;
    s.write_all(upgrade_request(port, "/mqtt", Some("mqtt")).as_bytes())
        .await
        .unwrap();
    let (status, head) = http_response(&mut s, "upgrade").await;
    assert_eq!(status, 101, "{head}");
    (s, local)
}

#[tokio::test]
async fn an_oversized_websocket_frame_is_refused_from_its_header() {
    let pki = Pki::new();
    let (broker, ports) = secure_broker(&pki, &[("SHARDMQ_MQTT__MAX_PACKET_SIZE", "65536".into())]);
    let mut healthy = Healthy::connect(broker.port).await;
    // 1 TiB, then 4 MiB (over max_packet_size, but a length a buffer could hold): the broker
    // must close after the header, without waiting for (or buffering) the body.
    for len in [1u64 << 40, 4 << 20] {
        let mark = log_mark(&broker);
        let (mut s, local) = upgraded(ports.ws).await;
        s.write_all(&frame_header(len)).await.unwrap();
        s.write_all(&[0u8; 64]).await.unwrap();
        let t0 = Instant::now();
        let (got, _) = read_until_closed(&mut s, "oversized WebSocket frame").await;
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "closed only after {:?}",
            t0.elapsed()
        );
        // At most a Close frame (opcode 8; 1009 Message Too Big or 1002) comes back.
        assert!(
            got.is_empty() || got[0] & 0x0f == 0x08,
            "not a Close frame: {got:02x?}"
        );
        expect_peer_warned(&broker, mark, local, "oversized WebSocket frame").await;
    }
    // An unmasked client frame (RFC 6455 §5.1: the server must close).
    let mark = log_mark(&broker);
    let (mut s, local) = upgraded(ports.ws).await;
    let connect = connect_bytes(Protocol::V5, "unmasked", None, None);
    let mut frame = vec![0x82, connect.len() as u8];
    frame.extend_from_slice(&connect);
    s.write_all(&frame).await.unwrap();
    let (got, _) = read_until_closed(&mut s, "unmasked frame").await;
    assert!(
        got.is_empty() || got[0] & 0x0f == 0x08,
        "not a Close frame: {got:02x?}"
    );
    expect_peer_warned(&broker, mark, local, "unmasked WebSocket frame").await;
    healthy.check().await;
}

/// A PROXY v2 header: signature, version 2 / PROXY, TCP over IPv4, the declared length, then
/// `body`.
fn proxy_v2(declared_len: u16, body: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11]);
    h.extend_from_slice(&declared_len.to_be_bytes());
    h.extend_from_slice(body);
    h
}

/// Source 203.0.113.7:4242, destination 127.0.0.1:1883.
const V2_ADDRS: [u8; 12] = [203, 0, 113, 7, 127, 0, 0, 1, 0x10, 0x92, 0x07, 0x5b];

#[tokio::test]
async fn a_proxy_header_that_lies_about_its_length_is_closed() {
    let pki = Pki::new();
    let (broker, ports) = secure_broker(
        &pki,
        &[
            ("SHARDMQ_LISTENER__TLS__PROXY_PROTOCOL", "true".into()),
            ("SHARDMQ_LISTENER__WS__PROXY_PROTOCOL", "true".into()),
            ("SHARDMQ_MQTT__CONNECT_TIMEOUT_MS", "1500".into()),
        ],
    );
    let mut healthy = Healthy::connect(broker.port).await;

    // Shorter than its address family needs (TCP4: 12 bytes; it says 4).
    let mark = log_mark(&broker);
    let (mut s, local) = tcp(ports.tls).await;
    let mut bytes = proxy_v2(4, &V2_ADDRS[..4]);
    bytes.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0]);
    s.write_all(&bytes).await.unwrap();
    expect_closed(&mut s, "PROXY v2 too short for TCP4").await;
    expect_peer_warned(&broker, mark, local, "PROXY v2 header too short").await;

    // Longer than what follows (it says 200 bytes, then 2,000; 12 address bytes and a TLS
    // ClientHello's start follow, then silence): no handshake, closed at once when over the
    // broker's bound on a header, else within the connect timeout (1.5 s here).
    for declared in [200u16, 2000] {
        let mark = log_mark(&broker);
        let (mut s, local) = tcp(ports.tls).await;
        let mut bytes = proxy_v2(declared, &V2_ADDRS);
        bytes.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0]);
        s.write_all(&bytes).await.unwrap();
        let t0 = Instant::now();
        let got = expect_closed(&mut s, "PROXY v2 longer than sent").await;
        assert!(
            !got.starts_with(&[0x16]),
            "the broker answered a ClientHello hidden in a PROXY header: {got:02x?}"
        );
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "PROXY v2 declaring {declared} bytes: closed only after {:?}",
            t0.elapsed()
        );
        expect_peer_warned(&broker, mark, local, "PROXY v2 header longer than sent").await;
    }

    // v1: no CRLF within the 107 bytes the specification allows.
    let mark = log_mark(&broker);
    let (mut s, local) = tcp(ports.ws).await;
    let mut line = b"PROXY TCP4 203.0.113.7 127.0.0.1 4242 1883".to_vec();
    line.resize(300, b' ');
    s.write_all(&line).await.unwrap();
    expect_closed(&mut s, "PROXY v1 line without CRLF").await;
    expect_peer_warned(&broker, mark, local, "PROXY v1 line without CRLF").await;

    // v1 whose ports are not numbers.
    let mark = log_mark(&broker);
    let (mut s, local) = tcp(ports.ws).await;
    s.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 x\r\n")
        .await
        .unwrap();
    expect_closed(&mut s, "PROXY v1 with bad ports").await;
    expect_peer_warned(&broker, mark, local, "PROXY v1 with bad ports").await;

    // No PROXY header at all on a listener that requires one: a plain upgrade request.
    let mark = log_mark(&broker);
    let (mut s, local) = tcp(ports.ws).await;
    s.write_all(upgrade_request(ports.ws, "/mqtt", Some("mqtt")).as_bytes())
        .await
        .unwrap();
    let got = expect_closed(&mut s, "no PROXY header").await;
    assert!(
        !String::from_utf8_lossy(&got).contains(" 101 "),
        "upgraded without a PROXY header"
    );
    expect_peer_warned(&broker, mark, local, "missing PROXY header").await;
    healthy.check().await;
}

#[tokio::test]
async fn the_proxy_header_address_is_the_one_logged() {
    let pki = Pki::new();
    let (broker, ports) = secure_broker(
        &pki,
        &[
            ("SHARDMQ_LISTENER__TLS__PROXY_PROTOCOL", "true".into()),
            ("SHARDMQ_AUTH__ALLOW_ANONYMOUS", "false".into()),
        ],
    );
    for header in [
        b"PROXY TCP4 203.0.113.7 127.0.0.1 4242 1883\r\n".to_vec(),
        proxy_v2(12, &V2_ADDRS),
    ] {
        let mark = log_mark(&broker);
        let (mut s, _) = tcp(ports.tls).await;
        s.write_all(&header).await.unwrap();
        let mut tls = tls_over(s, default_client_config(&pki, None))
            .await
            .expect("TLS after a valid PROXY header");
        // Anonymous is off: refused, and the warning names the address the header carried,
        // not the proxy's (127.0.0.1).
        let connect = connect_bytes(Protocol::V5, "proxied", None, None);
        assert_eq!(
            connack_over(&mut tls, Protocol::V5, &connect).await,
            Some(0x87)
        );
        expect_warn_since(
            &broker,
            mark,
            "203.0.113.7",
            "refused CONNECT from a proxied client",
        )
        .await;
    }
}
