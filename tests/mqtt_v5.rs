//! MQTT 5.0 against the real broker: QoS flows, CONNACK properties, assigned identifiers,
//! UNSUBACK reason codes, keep-alive DISCONNECT.

mod common;

use common::*;
use rumqttc::v5::mqttbytes::QoS;
use shardmq_codec::{ByteStr, Packet, Protocol, QoS as Q, Unsubscribe, UnsubscribeProperties};
use std::time::{Duration, Instant};

#[tokio::test]
async fn qos_0_1_2_flow_both_ways_with_equal_payloads() {
    let broker = Broker::start();
    let (mut a, _) = V5::connect(broker.port, "v5-a", true).await;
    let (mut b, _) = V5::connect(broker.port, "v5-b", true).await;
    assert_eq!(
        a.subscribe("to-a/#", QoS::ExactlyOnce).await,
        Some(QoS::ExactlyOnce)
    );
    assert_eq!(
        b.subscribe("to-b/#", QoS::ExactlyOnce).await,
        Some(QoS::ExactlyOnce)
    );
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let payload: Vec<u8> = (0..=255u8).rev().chain([i as u8]).collect();
        b.publish(&format!("to-a/{i}"), qos, false, payload.clone())
            .await;
        let got = a.expect_publish().await;
        assert_eq!(&got.topic[..], format!("to-a/{i}").as_bytes());
        assert_eq!(got.qos, qos);
        assert_eq!(&got.payload[..], &payload[..], "payload bytes preserved");
        a.publish(&format!("to-b/{i}"), qos, false, payload.clone())
            .await;
        let got = b.expect_publish().await;
        assert_eq!(got.qos, qos);
        assert_eq!(&got.payload[..], &payload[..]);
    }
    assert!(a.next_publish(QUIET).await.is_none(), "no extra deliveries");
}

#[tokio::test]
async fn qos_is_downgraded_to_the_subscription_maximum() {
    let broker = Broker::start();
    let (mut sub0, _) = V5::connect(broker.port, "v5-down-0", true).await;
    let (mut sub1, _) = V5::connect(broker.port, "v5-down-1", true).await;
    let (mut publisher, _) = V5::connect(broker.port, "v5-down-pub", true).await;
    sub0.subscribe("down/t", QoS::AtMostOnce).await;
    sub1.subscribe("down/t", QoS::AtLeastOnce).await;
    publisher
        .publish("down/t", QoS::ExactlyOnce, false, "x")
        .await;
    assert_eq!(sub0.expect_publish().await.qos, QoS::AtMostOnce);
    assert_eq!(sub1.expect_publish().await.qos, QoS::AtLeastOnce);
}

#[tokio::test]
async fn connack_announces_the_configured_limits() {
    let broker = Broker::start_with(&[
        ("SHARDMQ_MQTT__MAX_PACKET_SIZE", "4096"),
        ("SHARDMQ_MQTT__MAX_AWAITING_REL", "7"),
        ("SHARDMQ_MQTT__MAX_KEEPALIVE_SECS", "30"),
    ]);
    let (_raw, ack) = Raw::connect_with(
        broker.port,
        connect_packet(Protocol::V5, "limits", true, 120),
    )
    .await;
    assert_eq!(ack.code.0, 0);
    let p = &ack.properties;
    assert_eq!(p.maximum_packet_size, Some(4096));
    assert_eq!(p.receive_maximum, Some(7));
    assert_eq!(
        p.topic_alias_maximum,
        Some(65535),
        "mqtt.max_topic_alias default"
    );
    assert_eq!(
        p.server_keep_alive,
        Some(30),
        "keep-alive above the maximum is lowered"
    );
    assert_eq!(p.assigned_client_identifier, None);
}

#[tokio::test]
async fn empty_client_id_gets_an_assigned_identifier() {
    let broker = Broker::start();
    let (mut first, ack) =
        Raw::connect_with(broker.port, connect_packet(Protocol::V5, "", true, 0)).await;
    assert_eq!(ack.code.0, 0, "{ack:?}");
    let id = ack
        .properties
        .assigned_client_identifier
        .clone()
        .expect("CONNACK carries an Assigned Client Identifier");
    assert!(!id.is_empty());
    let (_second, ack2) =
        Raw::connect_with(broker.port, connect_packet(Protocol::V5, "", true, 0)).await;
    let id2 = ack2
        .properties
        .assigned_client_identifier
        .expect("assigned");
    assert_ne!(id, id2, "assigned identifiers are unique");
    // The assigned identifier is a working session name.
    assert_eq!(
        first.subscribe(1, &[("assigned/t", Q::AtLeastOnce)]).await,
        vec![1]
    );
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V5, "assigned-pub", true).await;
    publisher
        .publish("assigned/t", b"hi", Q::AtLeastOnce, 1, false)
        .await;
    assert_eq!(&first.expect_publish().await.payload[..], b"hi");
}

#[tokio::test]
async fn unsuback_reports_each_filter() {
    let broker = Broker::start();
    let (mut raw, _) = Raw::connect(broker.port, Protocol::V5, "unsuback", true).await;
    assert_eq!(
        raw.subscribe(1, &[("known/t", Q::AtLeastOnce)]).await,
        vec![1]
    );
    raw.send(&Packet::Unsubscribe(Unsubscribe {
        pkid: 2,
        filters: vec![ByteStr::from("known/t"), ByteStr::from("never/subscribed")],
        properties: UnsubscribeProperties::default(),
    }))
    .await;
    match raw.expect(WAIT).await {
        Packet::UnsubAck(ack) => {
            assert_eq!(ack.pkid, 2);
            let reasons: Vec<u8> = ack.reasons.iter().map(|r| r.0).collect();
            assert_eq!(
                reasons,
                vec![0x00, 0x11],
                "Success for the subscribed filter, No subscription existed (0x11) for the other"
            );
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    // And the subscription is really gone.
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V5, "unsuback-pub", true).await;
    publisher
        .publish("known/t", b"x", Q::AtLeastOnce, 1, false)
        .await;
    raw.expect_silence(QUIET).await;
}

#[tokio::test]
async fn keep_alive_timeout_sends_disconnect_0x8d() {
    let broker = Broker::start();
    let (mut raw, _) =
        Raw::connect_with(broker.port, connect_packet(Protocol::V5, "ka5", true, 1)).await;
    let t0 = Instant::now();
    let got = raw.expect_closed(Duration::from_secs(5)).await;
    let waited = t0.elapsed();
    assert!(
        (Duration::from_millis(1400)..=Duration::from_millis(3000)).contains(&waited),
        "closed after {waited:?}, expected about 1.5 s"
    );
    match got.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason.0, 0x8D, "Keep Alive timeout"),
        other => panic!("expected DISCONNECT 0x8D before the close, got {other:?}"),
    }
}
