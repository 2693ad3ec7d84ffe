//! Per-listener limits, one test per configuration key, each set small and then crossed: the
//! broker must answer with the reason code docs/ARCHITECTURE.md promises for it.
//!
//! Keys tested elsewhere (not repeated here):
//! - `mqtt.max_packet_size`: `hostile::oversized_packet_is_refused_from_its_header`
//! - `mqtt.max_client_id_len`: `mqtt_v311::client_id_longer_than_the_limit_is_refused`
//! - `mqtt.max_inflight`: `sessions::inflight_window_and_dup_redelivery_on_reconnect`
//! - `mqtt.max_queued_messages`: `sessions::offline_queue_is_bounded_and_keeps_the_newest`

mod common;

use common::*;
use shardmq_codec::{ConnAck, Packet, Protocol, QoS};
use std::time::{Duration, Instant};

/// Expects a 5.0 DISCONNECT with `reason`, then the close.
async fn expect_disconnect(raw: &mut Raw, reason: u8) {
    match raw.expect_closed(WAIT).await.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason.0, reason, "DISCONNECT reason"),
        other => panic!("expected DISCONNECT 0x{reason:02X} then close, got {other:?}"),
    }
}

/// Connects `client_id`, retrying for a while while the broker refuses (a connection that
/// just closed may still count against a limit for a moment).
async fn connect_when_admitted(port: u16, protocol: Protocol, client_id: &str) -> Raw {
    let deadline = Instant::now() + WAIT;
    loop {
        let (raw, ack) =
            Raw::connect_with(port, connect_packet(protocol, client_id, true, 0)).await;
        if ack.code.0 == 0 {
            return raw;
        }
        assert!(
            Instant::now() < deadline,
            "{client_id} still refused after {WAIT:?}: {ack:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends CONNECT and returns the CONNACK, asserting that the broker then closes.
async fn refused_connack(port: u16, protocol: Protocol, client_id: &str) -> ConnAck {
    let (mut raw, ack) =
        Raw::connect_with(port, connect_packet(protocol, client_id, true, 0)).await;
    let rest = raw.expect_closed(WAIT).await;
    assert!(
        rest.is_empty(),
        "nothing after a refusing CONNACK: {rest:?}"
    );
    ack
}

#[tokio::test]
async fn max_connections_refuses_with_0x89_and_return_code_3() {
    let broker = Broker::start_with(&[("SHARDMQ_LISTENER__MAX_CONNECTIONS", "3")]);
    let port = broker.port;
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(connect_when_admitted(port, Protocol::V5, &format!("held-{i}")).await);
    }
    let ack = refused_connack(port, Protocol::V5, "fourth-v5").await;
    assert_eq!(ack.code.0, 0x89, "5.0: Server busy");
    let ack = refused_connack(port, Protocol::V3_1_1, "fourth-v3").await;
    assert_eq!(
        ack.code.to_v3_connack(),
        3,
        "3.1.1: return code 3 Server unavailable"
    );
    broker.expect_warn("max_connections reached").await;
    // A slot freed is a slot available again.
    held.pop().expect("held").disconnect().await;
    connect_when_admitted(port, Protocol::V3_1_1, "after-one-left").await;
}

#[tokio::test]
async fn max_connection_rate_refuses_with_0x9f_and_return_code_3() {
    // 2 CONNECTs a second on the node: 1 a second on each of the 2 shards, burst 1 each.
    let broker = Broker::start_with(&[("SHARDMQ_LISTENER__MAX_CONNECTION_RATE", "2")]);
    let port = broker.port;
    const ATTEMPTS: usize = 20;
    let t0 = Instant::now();
    let mut admitted = Vec::new();
    let mut refused = 0;
    for i in 0..ATTEMPTS {
        let (mut raw, ack) = Raw::connect_with(
            port,
            connect_packet(Protocol::V5, &format!("r-{i}"), true, 0),
        )
        .await;
        match ack.code.0 {
            0 => admitted.push(raw),
            0x9F => {
                raw.expect_closed(WAIT).await;
                refused += 1;
            }
            other => panic!("CONNECT {i}: expected success or 0x9F, got 0x{other:02X}"),
        }
    }
    let took = t0.elapsed().as_secs_f64();
    // At most the two bursts plus what 2/s refills in the time taken.
    let bound = 2 + (2.0 * took).ceil() as usize;
    assert!(
        admitted.len() <= bound,
        "{} of {ATTEMPTS} admitted in {took:.2} s; the rate allows at most {bound}",
        admitted.len()
    );
    assert!(refused > 0, "nothing refused in {took:.2} s");
    // 3.x has no 0x9F: return code 3. Drain both shards' buckets first.
    let mut saw_v3_refusal = false;
    for i in 0..8 {
        let (mut raw, ack) = Raw::connect_with(
            port,
            connect_packet(Protocol::V3_1_1, &format!("v3-{i}"), true, 0),
        )
        .await;
        if ack.code.0 != 0 {
            assert_eq!(ack.code.to_v3_connack(), 3, "3.1.1: return code 3");
            raw.expect_closed(WAIT).await;
            saw_v3_refusal = true;
            break;
        }
    }
    assert!(saw_v3_refusal, "8 quick 3.1.1 CONNECTs and none refused");
    broker.expect_warn("max_connection_rate exceeded").await;
    // The buckets refill: a second later a client gets in again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_raw, ack) = Raw::connect_with(port, connect_packet(Protocol::V5, "later", true, 0)).await;
    assert_eq!(ack.code.0, 0, "admitted once the bucket refilled");
}

#[tokio::test]
async fn max_topic_levels_publish_disconnects_0x90_and_subscribe_gets_0x8f() {
    let broker = Broker::start_with(&[("SHARDMQ_MQTT__MAX_TOPIC_LEVELS", "3")]);
    let port = broker.port;
    let (mut v5, _) = Raw::connect(port, Protocol::V5, "levels-v5", true).await;
    assert_eq!(
        v5.subscribe(
            1,
            &[("a/b/c", QoS::AtMostOnce), ("a/b/c/d", QoS::AtMostOnce)]
        )
        .await,
        vec![0x00, 0x8F],
        "5.0: a 4-level filter is Topic Filter invalid"
    );
    assert_eq!(
        v5.subscribe(
            2,
            &[("a/+/#", QoS::AtMostOnce), ("+/+/+/+", QoS::AtMostOnce)]
        )
        .await,
        vec![0x00, 0x8F],
        "wildcard levels count too"
    );
    v5.publish("a/b/c", b"ok", QoS::AtLeastOnce, 1, false).await;
    assert_eq!(&v5.expect_publish().await.payload[..], b"ok");
    v5.send(&publish_packet(
        "a/b/c/d",
        b"deep",
        QoS::AtLeastOnce,
        2,
        false,
    ))
    .await;
    expect_disconnect(&mut v5, 0x90).await;

    let (mut v3, _) = Raw::connect(port, Protocol::V3_1_1, "levels-v3", true).await;
    assert_eq!(
        v3.subscribe(1, &[("a/b/c/d", QoS::AtMostOnce)]).await,
        vec![0x80],
        "3.1.1: Failure"
    );
    v3.send(&publish_packet(
        "a/b/c/d",
        b"deep",
        QoS::AtMostOnce,
        0,
        false,
    ))
    .await;
    assert!(
        v3.expect_closed(WAIT).await.is_empty(),
        "3.1.1: closed without a packet"
    );
}

#[tokio::test]
async fn max_subscriptions_answers_0x97_per_filter_beyond_the_quota() {
    let broker = Broker::start_with(&[("SHARDMQ_MQTT__MAX_SUBSCRIPTIONS", "2")]);
    let port = broker.port;
    let (mut v5, _) = Raw::connect(port, Protocol::V5, "quota-v5", true).await;
    assert_eq!(
        v5.subscribe(
            1,
            &[
                ("q/1", QoS::AtLeastOnce),
                ("q/2", QoS::AtLeastOnce),
                ("q/3", QoS::AtLeastOnce)
            ]
        )
        .await,
        vec![0x01, 0x01, 0x97],
        "5.0: the third filter is over the quota"
    );
    assert_eq!(
        v5.subscribe(2, &[("q/1", QoS::AtMostOnce)]).await,
        vec![0x00],
        "replacing an existing subscription is not a new one"
    );
    // The refused filter was not subscribed: nothing arrives for it.
    let (mut publisher, _) = Raw::connect(port, Protocol::V5, "quota-pub", true).await;
    publisher
        .publish("q/3", b"no", QoS::AtLeastOnce, 1, false)
        .await;
    v5.expect_silence(QUIET).await;
    // An unsubscribe makes room.
    v5.send(&Packet::Unsubscribe(shardmq_codec::Unsubscribe {
        pkid: 3,
        filters: vec!["q/2".into()],
        properties: Default::default(),
    }))
    .await;
    assert!(matches!(v5.expect(WAIT).await, Packet::UnsubAck(_)));
    assert_eq!(
        v5.subscribe(4, &[("q/3", QoS::AtMostOnce)]).await,
        vec![0x00]
    );

    let (mut v3, _) = Raw::connect(port, Protocol::V3_1_1, "quota-v3", true).await;
    assert_eq!(
        v3.subscribe(
            1,
            &[
                ("q/1", QoS::AtMostOnce),
                ("q/2", QoS::AtMostOnce),
                ("q/3", QoS::AtMostOnce)
            ]
        )
        .await,
        vec![0x00, 0x00, 0x80],
        "3.1.1: Failure"
    );
}
