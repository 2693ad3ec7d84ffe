//! MQTT 5.0 features against the real broker over real sockets: topic aliases in both
//! directions, will delay, enhanced authentication, server redirection. The raw client sends the
//! exact packets (aliases, AUTH) and shows every property the broker sets.

mod common;

use bytes::Bytes;
use common::*;
use shardmq_codec::{ByteStr, Connect, Packet, Protocol, Publish, PublishProperties, QoS as Q};

/// A QoS 0 PUBLISH with `topic` (possibly empty) and `alias`.
fn aliased(topic: &str, alias: Option<u16>, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: Q::AtMostOnce,
        retain: false,
        topic: ByteStr::from(topic),
        pkid: 0,
        properties: PublishProperties {
            topic_alias: alias,
            ..Default::default()
        },
        payload: Bytes::from_static(payload),
    })
}

fn v5(client_id: &str) -> Connect {
    connect_packet(Protocol::V5, client_id, true, 0)
}

/// The DISCONNECT reason the broker closed with.
async fn closed_with(raw: &mut Raw) -> u8 {
    match raw.expect_closed(WAIT).await.as_slice() {
        [.., Packet::Disconnect(d)] => d.reason.0,
        other => panic!("expected DISCONNECT before the close, got {other:?}"),
    }
}

// ---- topic aliases ------------------------------------------------------------------------

#[tokio::test]
async fn client_topic_aliases_are_resolved_and_bounded_by_the_announced_maximum() {
    let broker = Broker::start_with(&[("SHARDMQ_MQTT__MAX_TOPIC_ALIAS", "10")]);
    let (mut sub, _) = Raw::connect(broker.port, Protocol::V5, "alias-sub", true).await;
    assert_eq!(
        sub.subscribe(1, &[("alias/#", Q::AtMostOnce)]).await,
        vec![0]
    );
    let (mut publisher, ack) = Raw::connect_with(broker.port, v5("alias-pub")).await;
    assert_eq!(ack.properties.topic_alias_maximum, Some(10));

    publisher.send(&aliased("alias/a", Some(10), b"1")).await;
    publisher.send(&aliased("", Some(10), b"2")).await;
    publisher.send(&aliased("alias/b", Some(10), b"3")).await;
    publisher.send(&aliased("", Some(10), b"4")).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let p = sub.expect_publish().await;
        got.push((p.topic.to_string(), p.payload.to_vec()));
    }
    assert_eq!(
        got,
        [
            ("alias/a".into(), b"1".to_vec()),
            ("alias/a".into(), b"2".to_vec()),
            ("alias/b".into(), b"3".to_vec()),
            ("alias/b".into(), b"4".to_vec()),
        ]
    );

    // Above the maximum: 0x94 Topic Alias invalid.
    publisher.send(&aliased("alias/c", Some(11), b"x")).await;
    assert_eq!(closed_with(&mut publisher).await, 0x94);

    // Alias 0: 0x94 too.
    let (mut zero, _) = Raw::connect_with(broker.port, v5("alias-zero")).await;
    zero.send(&aliased("alias/c", Some(0), b"x")).await;
    assert_eq!(closed_with(&mut zero).await, 0x94);

    // Empty topic with an alias never set on this connection: 0x82 Protocol error, also after a
    // reconnect of a client that had set it (aliases are per connection).
    let (mut again, _) = Raw::connect_with(broker.port, v5("alias-pub")).await;
    again.send(&aliased("", Some(10), b"x")).await;
    assert_eq!(closed_with(&mut again).await, 0x82);
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn topic_aliases_refused_when_the_maximum_is_zero() {
    let broker = Broker::start_with(&[("SHARDMQ_MQTT__MAX_TOPIC_ALIAS", "0")]);
    let (mut publisher, ack) = Raw::connect_with(broker.port, v5("alias-off")).await;
    assert_eq!(ack.properties.topic_alias_maximum, Some(0));
    publisher.send(&aliased("a", Some(1), b"x")).await;
    assert_eq!(closed_with(&mut publisher).await, 0x94);
}

#[tokio::test]
async fn broker_assigns_aliases_to_a_client_that_accepts_them() {
    let broker = Broker::start();
    let mut connect = v5("alias-out");
    connect.properties.topic_alias_maximum = Some(1);
    let (mut sub, _) = Raw::connect_with(broker.port, connect).await;
    assert_eq!(sub.subscribe(1, &[("out/#", Q::AtMostOnce)]).await, vec![0]);
    let (mut plain, _) = Raw::connect(broker.port, Protocol::V5, "alias-plain", true).await;
    assert_eq!(
        plain.subscribe(1, &[("out/#", Q::AtMostOnce)]).await,
        vec![0]
    );
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V5, "alias-out-pub", true).await;
    for (topic, payload) in [
        ("out/1", b"a"),
        ("out/1", b"b"),
        ("out/2", b"c"),
        ("out/2", b"d"),
    ] {
        publisher
            .publish(topic, payload, Q::AtMostOnce, 0, false)
            .await;
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        let p = sub.expect_publish().await;
        got.push((p.topic.to_string(), p.properties.topic_alias));
    }
    assert_eq!(
        got,
        [
            ("out/1".into(), Some(1)),
            (String::new(), Some(1)),
            ("out/2".into(), Some(1)),
            (String::new(), Some(1)),
        ],
        "first send names topic and alias, later ones only the alias"
    );
    // A client that set no Topic Alias Maximum gets full topics and no alias.
    for _ in 0..4 {
        let p = plain.expect_publish().await;
        assert!(p.topic.starts_with("out/"));
        assert_eq!(p.properties.topic_alias, None);
    }
}

#[tokio::test]
async fn resent_message_after_reconnect_carries_its_full_topic() {
    let broker = Broker::start();
    let mut connect = connect_packet(Protocol::V5, "alias-resend", false, 0);
    connect.properties.topic_alias_maximum = Some(5);
    connect.properties.session_expiry_interval = Some(60);
    let (mut sub, _) = Raw::connect_with(broker.port, connect.clone()).await;
    assert_eq!(sub.subscribe(1, &[("re/#", Q::AtLeastOnce)]).await, vec![1]);
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V5, "alias-re-pub", true).await;
    publisher
        .publish("re/t", b"1", Q::AtLeastOnce, 1, false)
        .await;
    publisher
        .publish("re/t", b"2", Q::AtLeastOnce, 2, false)
        .await;
    let first = sub.expect_publish().await;
    let second = sub.expect_publish().await;
    assert_eq!(
        (first.topic.as_str(), first.properties.topic_alias),
        ("re/t", Some(1))
    );
    assert_eq!(
        (second.topic.as_str(), second.properties.topic_alias),
        ("", Some(1))
    );
    // Unacknowledged; the client goes away and comes back.
    drop(sub);
    let (mut sub, ack) = Raw::connect_with(broker.port, connect.clone()).await;
    assert!(ack.session_present);
    for payload in [b"1", b"2"] {
        let p = sub.expect_publish().await;
        assert!(p.dup);
        assert_eq!(&p.payload[..], payload);
        assert_eq!(p.topic.as_str(), "re/t", "a resend names its topic");
        assert_eq!(p.properties.topic_alias, None);
    }
}

#[tokio::test]
async fn v3_clients_never_get_aliases() {
    let broker = Broker::start();
    let (mut sub, _) = Raw::connect(broker.port, Protocol::V3_1_1, "alias-v3", true).await;
    assert_eq!(sub.subscribe(1, &[("v3/#", Q::AtMostOnce)]).await, vec![0]);
    let (mut publisher, _) = Raw::connect_with(broker.port, v5("alias-v3-pub")).await;
    publisher.send(&aliased("v3/t", Some(1), b"a")).await;
    publisher.send(&aliased("", Some(1), b"b")).await;
    for payload in [b"a", b"b"] {
        let p = sub.expect_publish().await;
        assert_eq!(p.topic.as_str(), "v3/t");
        assert_eq!(&p.payload[..], payload);
    }
}
