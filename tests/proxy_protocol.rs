//! `proxy_protocol = true`: a HAProxy PROXY v1 or v2 header before MQTT. The address it carries
//! is the client's address from then on (logs, the auth service's throttling table, the API);
//! a connection without a valid header is closed with a `warn!`, and other clients carry on.

mod common;

use common::*;
use shardmq_codec::{Protocol, QoS};

/// A PROXY v2 header for a TCP over IPv4 connection from `src` (to 127.0.0.1:1883).
fn v2_header(src: [u8; 4], src_port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    h.push(0x11); // TCP over IPv4
    h.extend_from_slice(&12u16.to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&src_port.to_be_bytes());
    h.extend_from_slice(&1883u16.to_be_bytes());
    h
}

fn proxied_broker() -> Broker {
    // A password file with no users: any username is refused, and the refusal is logged with
    // the client's address.
    let pw = std::env::temp_dir().join(format!("shardmq-proxy-pw-{}", std::process::id()));
    std::fs::write(&pw, "").expect("write password file");
    Broker::start_with(&[
        ("SHARDMQ_LISTENER__PROXY_PROTOCOL", "true"),
        (
            "SHARDMQ_AUTH__PASSWORD_FILE",
            pw.to_str().expect("utf-8 path"),
        ),
        ("SHARDMQ_AUTH__ALLOW_ANONYMOUS", "true"),
    ])
}

#[tokio::test]
async fn the_proxy_header_gives_the_clients_address() {
    let broker = proxied_broker();
    for (header, addr) in [
        (
            b"PROXY TCP4 203.0.113.7 127.0.0.1 40001 1883\r\n".to_vec(),
            "203.0.113.7:40001",
        ),
        (v2_header([198, 51, 100, 9], 40002), "198.51.100.9:40002"),
    ] {
        let mut raw = Raw::open(broker.port, Protocol::V5).await;
        raw.send_bytes(&header).await;
        let mut connect = connect_packet(Protocol::V5, "proxied", true, 0);
        connect.username = Some("nobody".into());
        connect.password = Some(bytes::Bytes::from_static(b"pw"));
        raw.send(&shardmq_codec::Packet::Connect(Box::new(connect)))
            .await;
        let answer = raw.read_to_close().await;
        assert_eq!(answer[0] >> 4, 2, "a CONNACK: {answer:02x?}");
        broker.expect_warn(addr).await;
    }
    // Anonymous clients behind the proxy work end to end.
    let mut sub = Raw::open(broker.port, Protocol::V3_1_1).await;
    sub.send_bytes(b"PROXY TCP4 203.0.113.8 127.0.0.1 40003 1883\r\n")
        .await;
    sub.send(&shardmq_codec::Packet::Connect(Box::new(connect_packet(
        Protocol::V3_1_1,
        "sub",
        true,
        0,
    ))))
    .await;
    assert!(matches!(
        sub.expect(WAIT).await,
        shardmq_codec::Packet::ConnAck(a) if a.code.0 == 0
    ));
    sub.subscribe(1, &[("p/#", QoS::AtMostOnce)]).await;
    let mut publisher = Raw::open(broker.port, Protocol::V3_1_1).await;
    publisher.send_bytes(&v2_header([10, 0, 0, 1], 5000)).await;
    publisher
        .send(&shardmq_codec::Packet::Connect(Box::new(connect_packet(
            Protocol::V3_1_1,
            "pub",
            true,
            0,
        ))))
        .await;
    assert!(matches!(
        publisher.expect(WAIT).await,
        shardmq_codec::Packet::ConnAck(a) if a.code.0 == 0
    ));
    publisher
        .send(&publish_packet(
            "p/1",
            b"via proxy",
            QoS::AtMostOnce,
            0,
            false,
        ))
        .await;
    assert_eq!(&sub.expect_publish().await.payload[..], b"via proxy");
}

#[tokio::test]
async fn a_missing_or_lying_header_is_a_clean_close() {
    let broker = proxied_broker();
    let (mut bystander, _) = {
        let mut raw = Raw::open(broker.port, Protocol::V3_1_1).await;
        raw.send_bytes(b"PROXY UNKNOWN\r\n").await;
        raw.send(&shardmq_codec::Packet::Connect(Box::new(connect_packet(
            Protocol::V3_1_1,
            "bystander",
            true,
            0,
        ))))
        .await;
        let ack = raw.expect(WAIT).await;
        (raw, ack)
    };
    // No header: an MQTT CONNECT straight away.
    let mut raw = Raw::open(broker.port, Protocol::V3_1_1).await;
    raw.send(&shardmq_codec::Packet::Connect(Box::new(connect_packet(
        Protocol::V3_1_1,
        "direct",
        true,
        0,
    ))))
    .await;
    assert!(
        raw.read_to_close().await.is_empty(),
        "closed without an answer"
    );
    // A v2 header whose length says more than a header may hold.
    let mut lying = v2_header([10, 0, 0, 2], 1);
    lying[14..16].copy_from_slice(&60000u16.to_be_bytes());
    let mut raw = Raw::open(broker.port, Protocol::V3_1_1).await;
    raw.send_bytes(&lying).await;
    raw.send_bytes(&[0u8; 2048]).await;
    assert!(
        raw.read_to_close().await.is_empty(),
        "closed without an answer"
    );
    broker.expect_warn("PROXY").await;
    // The client that came first is unharmed.
    bystander.send(&shardmq_codec::Packet::PingReq).await;
    assert!(matches!(
        bystander.expect(WAIT).await,
        shardmq_codec::Packet::PingResp
    ));
}
