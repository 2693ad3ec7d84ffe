//! Hostile input: each gets the spec's answer and a WARN line, and a healthy client connected
//! before the attack keeps working.

mod common;

use common::*;
use rumqttc::QoS;
use shardmq_codec::{Packet, Protocol, QoS as Q};
use std::time::{Duration, Instant};

/// Expects a 5.0 DISCONNECT with `reason`, then the close.
async fn expect_disconnect(raw: &mut Raw, reason: u8) {
    match raw.expect_closed(WAIT).await.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason.0, reason, "DISCONNECT reason"),
        other => panic!("expected DISCONNECT 0x{reason:02X} then close, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_bytes_are_refused() {
    let broker = Broker::start();
    let mut healthy = Healthy::connect(broker.port).await;
    let mut raw = Raw::open(broker.port, Protocol::V3_1_1).await;
    raw.send_bytes(&[0x00, 0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0xff, 0x7f])
        .await;
    assert!(raw.expect_closed(WAIT).await.is_empty());
    broker.expect_warn("bad packet").await;
    healthy.check().await;
}

#[tokio::test]
async fn publish_before_connect_is_refused() {
    let broker = Broker::start();
    let mut healthy = Healthy::connect(broker.port).await;
    let mut raw = Raw::open(broker.port, Protocol::V3_1_1).await;
    let publish = publish_packet("early/t", b"x", Q::AtMostOnce, 0, false);
    raw.send_bytes(&encoded(&publish, Protocol::V3_1_1)).await;
    assert!(
        raw.expect_closed(WAIT).await.is_empty(),
        "no CONNACK for a non-CONNECT"
    );
    broker.expect_warn("first packet is not CONNECT").await;
    healthy.check().await;
}

#[tokio::test]
async fn second_connect_is_a_protocol_error() {
    let broker = Broker::start();
    let mut healthy = Healthy::connect(broker.port).await;
    let (mut raw, _) = Raw::connect(broker.port, Protocol::V5, "twice-5", true).await;
    raw.send(&Packet::Connect(Box::new(connect_packet(
        Protocol::V5,
        "twice-5",
        true,
        0,
    ))))
    .await;
    expect_disconnect(&mut raw, 0x82).await;
    let (mut raw, _) = Raw::connect(broker.port, Protocol::V3_1_1, "twice-4", true).await;
    raw.send(&Packet::Connect(Box::new(connect_packet(
        Protocol::V3_1_1,
        "twice-4",
        true,
        0,
    ))))
    .await;
    assert!(
        raw.expect_closed(WAIT).await.is_empty(),
        "3.1.1: just closed"
    );
    broker.expect_warn("second CONNECT").await;
    healthy.check().await;
}

#[tokio::test]
async fn wildcard_in_publish_topic_is_refused_with_0x90() {
    let broker = Broker::start();
    let mut healthy = Healthy::connect(broker.port).await;
    for topic in ["a/+/b", "a/#"] {
        let (mut raw, _) = Raw::connect(broker.port, Protocol::V5, "wild-pub", true).await;
        raw.send(&publish_packet(topic, b"x", Q::AtLeastOnce, 1, false))
            .await;
        expect_disconnect(&mut raw, 0x90).await;
    }
    broker.expect_warn("invalid PUBLISH topic").await;
    let (mut raw, _) = Raw::connect(broker.port, Protocol::V3_1_1, "wild-pub-4", true).await;
    raw.send(&publish_packet("x/+", b"x", Q::AtMostOnce, 0, false))
        .await;
    assert!(
        raw.expect_closed(WAIT).await.is_empty(),
        "3.1.1: just closed"
    );
    healthy.check().await;
}

#[tokio::test]
async fn invalid_utf8_topic_is_malformed() {
    let broker = Broker::start();
    let mut healthy = Healthy::connect(broker.port).await;
    let (mut raw, _) = Raw::connect(broker.port, Protocol::V5, "utf8", true).await;
    // PUBLISH QoS 1, topic [ff fe], packet id 1, no properties, payload "x".
    raw.send_bytes(&[0x32, 8, 0, 2, 0xff, 0xfe, 0, 1, 0, b'x'])
        .await;
    expect_disconnect(&mut raw, 0x81).await;
    broker.expect_warn("bad packet").await;
    healthy.check().await;
}

#[tokio::test]
async fn truncated_packets_are_refused() {
    let broker = Broker::start_with(&[("SHARDMQ_MQTT__CONNECT_TIMEOUT_MS", "500")]);
    let mut healthy = Healthy::connect(broker.port).await;
    // A PUBLISH whose topic length runs past the packet's end: Malformed Packet.
    let (mut raw, _) = Raw::connect(broker.port, Protocol::V5, "short", true).await;
    raw.send_bytes(&[0x30, 3, 0, 10, b'a']).await;
    expect_disconnect(&mut raw, 0x81).await;
    broker.expect_warn("bad packet").await;
    // Half a CONNECT, then silence: closed at the connect timeout.
    let mut raw = Raw::open(broker.port, Protocol::V3_1_1).await;
    raw.send_bytes(&[0x10, 13, 0, 4, b'M', b'Q']).await;
    let t0 = Instant::now();
    assert!(raw.expect_closed(WAIT).await.is_empty());
    let waited = t0.elapsed();
    assert!(
        (Duration::from_millis(400)..Duration::from_millis(2500)).contains(&waited),
        "closed after {waited:?}; connect_timeout_ms is 500"
    );
    broker.expect_warn("connect timeout").await;
    healthy.check().await;
}

#[tokio::test]
async fn oversized_packet_is_refused_from_its_header() {
    let broker = Broker::start_with(&[("SHARDMQ_MQTT__MAX_PACKET_SIZE", "1024")]);
    let mut healthy = Healthy::connect(broker.port).await;
    // Fixed header announcing 1,000,000 bytes, then only a few: the broker must answer
    // without waiting for the body.
    let header = [0x30, 0xC0, 0x84, 0x3D, 0, 1, b'a'];
    let (mut raw, _) = Raw::connect(broker.port, Protocol::V5, "big-5", true).await;
    raw.send_bytes(&header).await;
    let t0 = Instant::now();
    expect_disconnect(&mut raw, 0x95).await;
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "answered from the header"
    );
    let (mut raw, _) = Raw::connect(broker.port, Protocol::V3_1_1, "big-4", true).await;
    raw.send_bytes(&header).await;
    assert!(
        raw.expect_closed(WAIT).await.is_empty(),
        "3.1.1: just closed"
    );
    broker.expect_warn("bad packet").await;
    // Just under the limit is fine.
    let (mut raw, _) = Raw::connect(broker.port, Protocol::V5, "fits", true).await;
    raw.publish("fits", &[7; 900], Q::AtLeastOnce, 1, false)
        .await;
    healthy.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_cannot_grow_the_broker() {
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 200; // 50 MiB in all
    let broker = Broker::start();
    let mut healthy = Healthy::connect(broker.port).await;
    healthy.sub.subscribe("flood/#", QoS::AtLeastOnce).await;
    let (mut stuck, _) = Raw::connect(broker.port, Protocol::V3_1_1, "stuck", true).await;
    assert_eq!(
        stuck.subscribe(1, &[("flood/#", Q::AtMostOnce)]).await,
        vec![0]
    );
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V3_1_1, "flood-pub", true).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_before = broker.rss_kib();
    let mut rss_max = rss_before;
    let payload = vec![0x5a; CHUNK];
    let flood = async {
        for i in 0..CHUNKS {
            publisher
                .send(&publish_packet(
                    "flood/data",
                    &payload,
                    Q::AtMostOnce,
                    0,
                    false,
                ))
                .await;
            if i % 10 == 0 {
                rss_max = rss_max.max(broker.rss_kib());
            }
        }
        publisher
            .publish("flood/end", b"end", Q::AtLeastOnce, 1, false)
            .await;
    };
    bounded(Duration::from_secs(60), "publishing 50 MiB", flood).await;
    rss_max = rss_max.max(broker.rss_kib());
    let growth_mib = (rss_max.saturating_sub(rss_before)) / 1024;
    assert!(
        growth_mib < 100,
        "broker RSS grew by {growth_mib} MiB while a subscriber did not read"
    );
    // The reading subscriber gets the end marker (QoS 1: never dropped).
    let mut data = 0usize;
    let got_end = bounded(
        Duration::from_secs(60),
        "healthy subscriber drains",
        async {
            while let Some(p) = healthy.sub.next_publish(Duration::from_secs(10)).await {
                if p.topic == "flood/end" {
                    return true;
                }
                data += 1;
            }
            false
        },
    )
    .await;
    eprintln!(
        "flood: RSS {rss_before} KiB -> max {rss_max} KiB; healthy got {data} of {CHUNKS} chunks"
    );
    assert!(
        got_end,
        "healthy subscriber did not get the end marker ({data} chunks before)"
    );
    assert!(data > 0, "healthy subscriber got none of the flood");
    healthy.check().await;
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_the_send_timeout() {
    const CHUNK: usize = 256 * 1024;
    let broker = Broker::start_with(&[("SHARDMQ_MQTT__SEND_TIMEOUT_MS", "1000")]);
    let mut healthy = Healthy::connect(broker.port).await;
    let (mut stuck, _) = Raw::connect(broker.port, Protocol::V3_1_1, "stuck-t", true).await;
    assert_eq!(
        stuck.subscribe(1, &[("sink/#", Q::AtMostOnce)]).await,
        vec![0]
    );
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V3_1_1, "sink-pub", true).await;
    let payload = vec![0x33; CHUNK];
    // Keep the stuck client's socket full until the broker gives up on it: once the flood
    // stops, whatever the broker still holds may fit in the kernel's buffers and no write is
    // left blocked to time out. Bounded in count and time.
    let t0 = Instant::now();
    let mut sent = 0;
    while !broker.warned("mqtt.send_timeout_ms")
        && sent < 2000
        && t0.elapsed() < Duration::from_secs(20)
    {
        publisher
            .send(&publish_packet(
                "sink/data",
                &payload,
                Q::AtMostOnce,
                0,
                false,
            ))
            .await;
        sent += 1;
        if sent > 160 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let took = t0.elapsed();
    assert!(
        broker.warned("mqtt.send_timeout_ms"),
        "no send-timeout close after {sent} chunks in {took:?}; log:\n{}",
        broker.log()
    );
    // With the default 15 s timeout it could not have fired yet.
    assert!(
        took < Duration::from_secs(12),
        "the send timeout took {took:?}"
    );
    // Whatever the kernel buffered is still readable, then the close shows.
    stuck.expect_closed(Duration::from_secs(10)).await;
    broker.expect_warn("mqtt.send_timeout_ms").await;
    healthy.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_storm_is_absorbed() {
    const N: usize = 2000;
    let broker = Broker::start();
    let mut healthy = Healthy::connect(broker.port).await;
    let port = broker.port;
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            tokio::spawn(async move {
                let (raw, ack) = Raw::connect_with(
                    port,
                    connect_packet(Protocol::V3_1_1, &format!("storm-{i}"), true, 0),
                )
                .await;
                assert_eq!(ack.code.0, 0, "storm client {i} refused");
                raw
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(N);
    for t in tasks {
        conns.push(
            bounded(Duration::from_secs(60), "storm CONNACK", t)
                .await
                .expect("storm task"),
        );
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(30), "{N} connects took {took:?}");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let figures = shard_connections(broker.port, 2).await;
    let total: u64 = figures.values().sum();
    eprintln!("storm: {N} CONNACKs in {took:?}; $SYS connections {figures:?}");
    assert!(
        total >= N as u64,
        "$SYS counts {total} connections: {figures:?}"
    );
    healthy.check().await;
    drop(conns);
    let settled = eventually(Duration::from_secs(10), || async {
        let f = shard_connections(port, 2).await;
        f.values().sum::<u64>() < 10
    })
    .await;
    assert!(
        settled,
        "connections not released after the storm disconnected"
    );
    healthy.check().await;
}

#[tokio::test]
async fn a_client_that_keeps_sending_past_receive_maximum_still_reads_disconnect_0x93() {
    reason_code_survives_a_flood("uring").await;
}

#[tokio::test]
async fn the_tasks_driver_also_lets_the_client_read_disconnect_0x93() {
    reason_code_survives_a_flood("tasks").await;
}

async fn reason_code_survives_a_flood(driver: &str) {
    // The broker closes while the client's publishes keep arriving: a plain close() with
    // unread input would send a reset, and the client's kernel would discard the DISCONNECT.
    let broker = Broker::start_with(&[
        ("SHARDMQ_MQTT__MAX_AWAITING_REL", "2"),
        ("SHARDMQ_SHARD__DRIVER", driver),
    ]);
    for round in 0..5 {
        let (mut c, _) =
            Raw::connect(broker.port, Protocol::V5, &format!("flood-{round}"), true).await;
        let mut burst = bytes::BytesMut::new();
        for pkid in 1..=400u16 {
            shardmq_codec::encode(
                &publish_packet("flood/t", &[7u8; 512], Q::ExactlyOnce, pkid, false),
                Protocol::V5,
                &mut burst,
            );
        }
        // Everything at once, then more while the broker is closing.
        c.send_bytes(&burst).await;
        c.send_bytes(&burst).await;
        let got = c.expect_closed(WAIT).await;
        assert!(
            got.iter()
                .any(|p| matches!(p, Packet::Disconnect(d) if d.reason.0 == 0x93)),
            "round {round}: no DISCONNECT 0x93 among {} packets: {:?}",
            got.len(),
            got.iter().rev().take(3).collect::<Vec<_>>()
        );
    }
    // The DISCONNECT behind megabytes the client has not read yet: it is still in the
    // broker's socket when the broker closes, and a reset would throw it away.
    let mut c = Raw::connect_small(broker.port, Protocol::V5, "flood-behind", 4096).await;
    assert_eq!(c.subscribe(1, &[("big/#", Q::AtMostOnce)]).await, [0]);
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V3_1_1, "flood-pub", true).await;
    for _ in 0..200 {
        publisher
            .publish("big/x", &[1u8; 32 * 1024], Q::AtMostOnce, 0, false)
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut burst = bytes::BytesMut::new();
    for pkid in 1..=400u16 {
        shardmq_codec::encode(
            &publish_packet("flood/t", &[7u8; 512], Q::ExactlyOnce, pkid, false),
            Protocol::V5,
            &mut burst,
        );
    }
    c.send_bytes(&burst).await;
    let got = c.expect_closed(Duration::from_secs(20)).await;
    assert!(
        matches!(got.last(), Some(Packet::Disconnect(d)) if d.reason.0 == 0x93),
        "the last of {} packets is not DISCONNECT 0x93: {:?}",
        got.len(),
        got.iter()
            .rev()
            .take(2)
            .map(|p| p.name())
            .collect::<Vec<_>>()
    );
}
