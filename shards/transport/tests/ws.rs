//! WebSocket through `Transport`, against tungstenite's client over an in-memory duplex.
mod common;

use std::io::Write;

use bytes::BytesMut;
use common::*;
use proptest::prelude::*;
use shardmq_transport::{PeerCertName, Stack, Transport, TransportError, VerifyPeer, WsError};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::{Message, WebSocket};

type Client = WebSocket<Duplex>;

fn ws_stack() -> Stack {
    Stack {
        ws: Some(ws_settings()),
        ..Stack::default()
    }
}

fn request(path: &str, protocol: Option<&str>) -> tungstenite::handshake::client::Request {
    let mut req = format!("ws://localhost{path}")
        .into_client_request()
        .unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.parse().unwrap());
    }
    req
}

/// Client bytes to server, server bytes to client, until quiet (plain WebSocket, no TLS).
fn pump(
    duplex: &mut Duplex,
    s: &mut Transport,
    plain: &mut BytesMut,
) -> Result<(), TransportError> {
    let c2s = std::mem::take(&mut duplex.outbound);
    let r = s.on_wire_in(&c2s, plain);
    let mut out = BytesMut::new();
    s.take_wire_out(&mut out);
    duplex.inbound.extend(out.iter());
    r
}

fn connect(
    s: &mut Transport,
    path: &str,
    protocol: Option<&str>,
) -> Result<Client, (TransportError, Vec<u8>)> {
    let mut mid = match tungstenite::client::client(request(path, protocol), Duplex::default()) {
        Err(HandshakeError::Interrupted(mid)) => mid,
        other => panic!(
            "client handshake should wait: {:?}",
            other.map(|_| ()).err()
        ),
    };
    let mut plain = BytesMut::new();
    if let Err(e) = pump(mid.get_mut().get_mut(), s, &mut plain) {
        let reply: Vec<u8> = mid.get_mut().get_mut().inbound.drain(..).collect();
        return Err((e, reply));
    }
    assert!(plain.is_empty());
    match mid.handshake() {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            Ok(ws)
        }
        Err(e) => panic!("client refused the 101: {e:?}"),
    }
}

fn server_frames(c: &mut Client) -> Vec<Message> {
    let mut v = Vec::new();
    loop {
        match c.read() {
            Ok(m) => v.push(m),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return v
            }
            Err(tungstenite::Error::ConnectionClosed) => return v,
            Err(e) => panic!("client read: {e}"),
        }
    }
}

#[test]
fn upgrade_then_mqtt_both_ways() {
    for proto in ["mqtt", "mqttv3.1", "mqttv3.1, mqtt"] {
        let mut s = Transport::new(&ws_stack()).unwrap();
        let mut c = connect(&mut s, "/mqtt?client=1", Some(proto)).unwrap();
        assert!(s.ready());
        let want = if proto == "mqttv3.1" {
            "mqttv3.1"
        } else {
            "mqtt"
        };
        let _ = want; // The client checked the answered protocol is one it offered.

        let mut plain = BytesMut::new();
        // One packet split over two frames of one message, then two packets in one frame.
        c.write(Message::Frame(Frame::message(
            vec![0x10, 0x04],
            OpCode::Data(Data::Binary),
            false,
        )))
        .unwrap();
        c.write(Message::Frame(Frame::message(
            vec![0, 0],
            OpCode::Data(Data::Continue),
            true,
        )))
        .unwrap();
        c.send(Message::Binary(vec![0xc0, 0, 0xe0, 0].into()))
            .unwrap();
        pump(c.get_mut(), &mut s, &mut plain).unwrap();
        assert_eq!(&plain[..], &[0x10, 4, 0, 0, 0xc0, 0, 0xe0, 0]);

        s.on_plain_out(&[0x20, 2, 0, 0]).unwrap();
        s.on_plain_out(&[0xd0, 0]).unwrap();
        pump(c.get_mut(), &mut s, &mut plain).unwrap();
        let got = server_frames(&mut c);
        assert_eq!(
            got,
            vec![
                Message::Binary(vec![0x20, 2, 0, 0].into()),
                Message::Binary(vec![0xd0, 0].into())
            ]
        );
    }
}

#[test]
fn ping_pong_and_close() {
    let mut s = Transport::new(&ws_stack()).unwrap();
    let mut c = connect(&mut s, "/mqtt", Some("mqtt")).unwrap();
    let mut plain = BytesMut::new();
    c.send(Message::Ping(b"hello".to_vec().into())).unwrap();
    pump(c.get_mut(), &mut s, &mut plain).unwrap();
    assert_eq!(
        server_frames(&mut c),
        vec![Message::Pong(b"hello".to_vec().into())]
    );
    assert!(plain.is_empty());

    c.close(None).unwrap();
    pump(c.get_mut(), &mut s, &mut plain).unwrap();
    assert!(s.closing());
    let got = server_frames(&mut c);
    assert!(matches!(&got[..], [Message::Close(_)]), "{got:?}");
}

#[test]
fn refused_upgrades() {
    let mut s = Transport::new(&ws_stack()).unwrap();
    let (e, reply) = connect(&mut s, "/other", Some("mqtt")).err().unwrap();
    assert!(
        matches!(e, TransportError::WebSocket(WsError::NotFound(_))),
        "{e:?}"
    );
    assert!(
        reply.starts_with(b"HTTP/1.1 404"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert!(s.closing());

    for proto in [None, Some("mqtt5-custom")] {
        let mut s = Transport::new(&ws_stack()).unwrap();
        let (e, reply) = connect(&mut s, "/mqtt", proto).err().unwrap();
        assert!(
            matches!(e, TransportError::WebSocket(WsError::Subprotocol)),
            "{e:?}"
        );
        assert!(reply.starts_with(b"HTTP/1.1 400"));
    }

    // Not an upgrade, not GET, wrong version, not HTTP, too large.
    let cases: [(&[u8], &str); 4] = [
        (b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n", "400"),
        (b"POST /mqtt HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", "400"),
        (b"GET /mqtt HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n", "426"),
        (&[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T'], "400"),
    ];
    for (req, status) in cases {
        let mut s = Transport::new(&ws_stack()).unwrap();
        assert!(s.on_wire_in(req, &mut BytesMut::new()).is_err());
        let mut out = BytesMut::new();
        s.take_wire_out(&mut out);
        assert!(
            out.starts_with(format!("HTTP/1.1 {status}").as_bytes()),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
    let mut s = Transport::new(&ws_stack()).unwrap();
    let mut big = b"GET /mqtt HTTP/1.1\r\n".to_vec();
    let e = loop {
        big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        if let Err(e) = s.on_wire_in(
            b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            &mut BytesMut::new(),
        ) {
            break e;
        }
        assert!(big.len() < 20_000, "upgrade request is not bounded");
    };
    assert!(
        matches!(
            e,
            TransportError::WebSocket(WsError::RequestTooLarge | WsError::BadRequest(_))
        ),
        "{e:?}"
    );
}

fn expect_close(c: &mut Client, s: &mut Transport, code: CloseCode) -> TransportError {
    let mut plain = BytesMut::new();
    let e = pump(c.get_mut(), s, &mut plain).unwrap_err();
    assert!(s.closing());
    let got = server_frames(c);
    match &got[..] {
        [Message::Close(Some(f))] => assert_eq!(f.code, code),
        other => panic!("expected close {code}: {other:?}"),
    }
    e
}

#[test]
fn text_oversized_and_unmasked_frames_close() {
    let mut s = Transport::new(&ws_stack()).unwrap();
    let mut c = connect(&mut s, "/mqtt", Some("mqtt")).unwrap();
    c.send(Message::Text("hi".into())).unwrap();
    let e = expect_close(&mut c, &mut s, CloseCode::Unsupported);
    assert!(matches!(e, TransportError::WebSocket(WsError::Text)));

    // One frame over the limit: refused from its header, before the payload arrives.
    let mut s = Transport::new(&ws_stack()).unwrap();
    let mut c = connect(&mut s, "/mqtt", Some("mqtt")).unwrap();
    c.send(Message::Binary(vec![0; 64 * 1024 + 1].into()))
        .unwrap();
    let e = expect_close(&mut c, &mut s, CloseCode::Size);
    assert!(matches!(
        e,
        TransportError::WebSocket(WsError::TooBig { .. })
    ));

    // A message whose fragments add up to more than the limit.
    let mut s = Transport::new(&ws_stack()).unwrap();
    let mut c = connect(&mut s, "/mqtt", Some("mqtt")).unwrap();
    c.write(Message::Frame(Frame::message(
        vec![0; 40_000],
        OpCode::Data(Data::Binary),
        false,
    )))
    .unwrap();
    c.send(Message::Frame(Frame::message(
        vec![0; 40_000],
        OpCode::Data(Data::Continue),
        true,
    )))
    .unwrap();
    expect_close(&mut c, &mut s, CloseCode::Size);

    // Unmasked client frame (hand-made: a client library always masks).
    let mut s = Transport::new(&ws_stack()).unwrap();
    let mut c = connect(&mut s, "/mqtt", Some("mqtt")).unwrap();
    c.get_mut()
        .outbound
        .extend_from_slice(&[0x82, 0x02, 0xc0, 0x00]);
    let e = expect_close(&mut c, &mut s, CloseCode::Protocol);
    assert!(matches!(e, TransportError::WebSocket(WsError::Protocol(_))));
}

/// Builds the client's whole byte stream (upgrade request and frames) once.
fn client_stream(payloads: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
    let mut s = Transport::new(&ws_stack()).unwrap();
    let mut c = connect(&mut s, "/mqtt", Some("mqtt")).unwrap();
    // Re-create the request bytes the client sent (the handshake consumed them above).
    let mut stream = Vec::new();
    let mut want = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        if i % 3 == 2 && p.len() > 1 {
            let (a, b) = p.split_at(p.len() / 2);
            c.write(Message::Frame(Frame::message(
                a.to_vec(),
                OpCode::Data(Data::Binary),
                false,
            )))
            .unwrap();
            c.write(Message::Ping(b"p".to_vec().into())).unwrap();
            c.write(Message::Frame(Frame::message(
                b.to_vec(),
                OpCode::Data(Data::Continue),
                true,
            )))
            .unwrap();
        } else {
            c.write(Message::Binary(p.clone().into())).unwrap();
        }
        want.extend_from_slice(p);
    }
    c.flush().unwrap();
    stream.extend_from_slice(&c.get_mut().outbound);
    (stream, want)
}

const UPGRADE: &[u8] = b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Random splits of the input stream give the same plaintext (PROXY v1 + WebSocket).
    #[test]
    fn random_splits_same_plaintext(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 1..12),
        cuts in proptest::collection::vec(1usize..40, 1..20),
    ) {
        let (frames, want) = client_stream(&payloads);
        let mut stream = b"PROXY TCP4 10.1.2.3 10.0.0.1 40000 80\r\n".to_vec();
        stream.extend_from_slice(UPGRADE);
        stream.extend_from_slice(&frames);
        let stack = Stack { proxy: true, ..ws_stack() };
        let mut s = Transport::new(&stack).unwrap();
        let mut plain = BytesMut::new();
        feed_split(&mut s, &stream, &cuts, &mut plain).unwrap();
        prop_assert_eq!(&plain[..], &want[..]);
        prop_assert_eq!(s.peer_addr(), Some("10.1.2.3:40000".parse().unwrap()));
        prop_assert!(s.ready());
        let mut out = BytesMut::new();
        s.take_wire_out(&mut out);
        prop_assert!(out.starts_with(b"HTTP/1.1 101 "));
    }

    /// Random splits of every TLS flight give the same plaintext (TLS 1.3 and WebSocket).
    #[test]
    fn random_splits_tls_ws(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 1..6),
        cuts in proptest::collection::vec(1usize..200, 1..10),
    ) {
        let (frames, want) = client_stream(&payloads);
        let config = shardmq_transport::load_server_config(&settings(VerifyPeer::None, PeerCertName::None), &[b"http/1.1"]).unwrap();
        let stack = Stack { tls: Some(config), ..ws_stack() };
        let mut s = Transport::new(&stack).unwrap();
        let mut c = client(client_config(&rustls::version::TLS13, None, &[b"http/1.1"]));
        let mut plain = BytesMut::new();
        let mut app = Vec::new();
        pump_tls(&mut c, &mut s, &mut plain, &mut app, &cuts);
        c.writer().write_all(UPGRADE).unwrap();
        c.writer().write_all(&frames).unwrap();
        let o = pump_tls(&mut c, &mut s, &mut plain, &mut app, &cuts);
        prop_assert!(o.server_err.is_none() && o.client_err.is_none(), "{:?}", o);
        prop_assert_eq!(&plain[..], &want[..]);
        prop_assert!(app.starts_with(b"HTTP/1.1 101 "));
    }
}

#[test]
fn full_stack_proxy_v2_tls_ws() {
    let src: std::net::SocketAddr = "[2001:db8::7]:50000".parse().unwrap();
    let dst: std::net::SocketAddr = "[2001:db8::1]:8084".parse().unwrap();
    let header = ppp::v2::Builder::with_addresses(0x21, ppp::v2::Protocol::Stream, (src, dst))
        .build()
        .unwrap();
    let config = shardmq_transport::load_server_config(
        &settings(VerifyPeer::Required, PeerCertName::Cn),
        &[b"http/1.1"],
    )
    .unwrap();
    let stack = Stack {
        proxy: true,
        tls: Some(config),
        peer_cert_name: PeerCertName::Cn,
        ws: Some(ws_settings()),
    };
    let mut s = Transport::new(&stack).unwrap();
    let mut plain = BytesMut::new();
    s.on_wire_in(&header[..5], &mut plain).unwrap();
    s.on_wire_in(&header[5..], &mut plain).unwrap();
    assert_eq!(s.peer_addr(), Some(src));
    assert!(!s.ready());

    let mut c = client(client_config(
        &rustls::version::TLS12,
        Some(&pki().client),
        &[b"http/1.1"],
    ));
    let mut app = Vec::new();
    let o = pump_tls(&mut c, &mut s, &mut plain, &mut app, &[]);
    assert!(o.server_err.is_none(), "{o:?}");
    assert_eq!(s.peer_cert_name(), Some("device-17"));
    assert!(!s.ready(), "WebSocket upgrade still to come");

    // The WebSocket client runs over the TLS client's plaintext.
    let mut mid =
        match tungstenite::client::client(request("/mqtt", Some("mqtt")), Duplex::default()) {
            Err(HandshakeError::Interrupted(mid)) => mid,
            _ => panic!(),
        };
    let req = std::mem::take(&mut mid.get_mut().get_mut().outbound);
    c.writer().write_all(&req).unwrap();
    let o = pump_tls(&mut c, &mut s, &mut plain, &mut app, &[]);
    assert!(o.server_err.is_none(), "{o:?}");
    mid.get_mut().get_mut().inbound.extend(app.drain(..));
    let (mut ws, _) = mid.handshake().unwrap();
    assert!(s.ready());

    ws.send(Message::Binary(vec![0x10, 2, 0, 0, 0xc0, 0].into()))
        .unwrap();
    let bytes = std::mem::take(&mut ws.get_mut().outbound);
    c.writer().write_all(&bytes).unwrap();
    pump_tls(&mut c, &mut s, &mut plain, &mut app, &[3]);
    assert_eq!(&plain[..], &[0x10, 2, 0, 0, 0xc0, 0]);

    s.on_plain_out(&[0x20, 2, 0, 0]).unwrap();
    pump_tls(&mut c, &mut s, &mut plain, &mut app, &[]);
    ws.get_mut().inbound.extend(app.drain(..));
    assert_eq!(
        ws.read().unwrap(),
        Message::Binary(vec![0x20, 2, 0, 0].into())
    );

    // The broker closes: a close frame inside TLS, then close_notify.
    s.close();
    assert!(s.closing());
    let o = pump_tls(&mut c, &mut s, &mut plain, &mut app, &[]);
    assert!(o.client_err.is_none());
    ws.get_mut().inbound.extend(app.drain(..));
    assert!(matches!(ws.read(), Ok(Message::Close(Some(f))) if f.code == CloseCode::Normal));
}
