//! MQTT 5.0 features against the real broker over real sockets: topic aliases in both
//! directions, will delay, enhanced authentication, server redirection. The raw client sends the
//! exact packets (aliases, AUTH) and shows every property the broker sets.

mod common;

use bytes::Bytes;
use common::*;
use shardmq_codec::{
    ByteStr, Connect, Disconnect, LastWill, Packet, Protocol, Publish, PublishProperties, QoS as Q,
    ReasonCode, WillProperties,
};
use std::time::{Duration, Instant};

/// A QoS 0 PUBLISH with `topic` (possibly empty) and `alias`.
fn aliased(topic: &str, alias: Option<u16>, payload: &'static [u8]) -> Packet {
    Packet::Publish(Box::new(Publish {
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
    }))
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

// ---- will delay ---------------------------------------------------------------------------

/// A v5 CONNECT with a QoS 1 will on `topic` delayed by `delay_secs`, and a session expiry.
fn with_will(client_id: &str, topic: &str, delay_secs: u32, expiry_secs: u32) -> Connect {
    let mut c = connect_packet(Protocol::V5, client_id, false, 0);
    c.properties.session_expiry_interval = Some(expiry_secs);
    c.will = Some(LastWill {
        topic: ByteStr::from(topic),
        payload: Bytes::from_static(b"gone"),
        qos: Q::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: Some(delay_secs),
            ..Default::default()
        },
    });
    c
}

/// A subscriber to `topic`.
async fn watcher(broker: &Broker, client_id: &str, topic: &str) -> Raw {
    let (mut raw, _) = Raw::connect(broker.port, Protocol::V5, client_id, true).await;
    assert_eq!(raw.subscribe(1, &[(topic, Q::AtLeastOnce)]).await, vec![1]);
    raw
}

/// Waits for the will on the watcher; returns how long it took.
async fn will_arrives(watcher: &mut Raw, within: Duration) -> Duration {
    let t0 = Instant::now();
    match watcher.next(within).await {
        Next::Packet(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"gone"),
        other => panic!("expected the will within {within:?}, got {other:?}"),
    }
    t0.elapsed()
}

#[tokio::test]
async fn will_is_published_after_its_delay() {
    let broker = Broker::start();
    let mut w = watcher(&broker, "wd-watch", "wd/1").await;
    let (client, _) = Raw::connect_with(broker.port, with_will("wd-1", "wd/1", 2, 60)).await;
    drop(client);
    let waited = will_arrives(&mut w, Duration::from_secs(5)).await;
    assert!(
        waited >= Duration::from_millis(1700),
        "will published after {waited:?}, before its 2 s delay"
    );
}

#[tokio::test]
async fn session_expiry_shorter_than_the_delay_publishes_the_will_when_the_session_ends() {
    let broker = Broker::start();
    let mut w = watcher(&broker, "wd-exp-watch", "wd/exp").await;
    let (client, _) = Raw::connect_with(broker.port, with_will("wd-exp", "wd/exp", 60, 1)).await;
    drop(client);
    let waited = will_arrives(&mut w, Duration::from_secs(4)).await;
    assert!(waited >= Duration::from_millis(700), "after {waited:?}");

    // Session expiry 0: the session ends with the connection, so the will goes at once.
    let (client, _) = Raw::connect_with(broker.port, with_will("wd-exp0", "wd/exp", 60, 0)).await;
    drop(client);
    let waited = will_arrives(&mut w, Duration::from_secs(1)).await;
    assert!(waited < Duration::from_millis(700), "after {waited:?}");
}

#[tokio::test]
async fn a_reconnect_before_the_delay_cancels_the_will() {
    let broker = Broker::start();
    let mut w = watcher(&broker, "wd-re-watch", "wd/re/+").await;
    // Several clients, so that with two shards some reconnects land on the other shard.
    let mut resumed = Vec::new();
    for i in 0..6 {
        let id = format!("wd-re-{i}");
        let topic = format!("wd/re/{i}");
        let (client, _) = Raw::connect_with(broker.port, with_will(&id, &topic, 2, 60)).await;
        drop(client);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut again = connect_packet(Protocol::V5, &id, false, 0);
        again.properties.session_expiry_interval = Some(60);
        let (raw, ack) = Raw::connect_with(broker.port, again).await;
        assert!(ack.session_present);
        resumed.push(raw);
    }
    w.expect_silence(Duration::from_secs(3)).await;

    // Clean Start ends the session, and with it the wait: the will goes at once.
    let (client, _) =
        Raw::connect_with(broker.port, with_will("wd-clean", "wd/re/c", 30, 60)).await;
    drop(client);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_raw, ack) = Raw::connect_with(broker.port, v5("wd-clean")).await;
    assert!(!ack.session_present);
    let waited = will_arrives(&mut w, Duration::from_secs(2)).await;
    assert!(waited < Duration::from_secs(2));
}

#[tokio::test]
async fn takeover_of_a_live_connection_keeps_a_delayed_will_back() {
    let broker = Broker::start();
    let mut w = watcher(&broker, "wd-take-watch", "wd/take").await;
    let (_old, _) = Raw::connect_with(broker.port, with_will("wd-take", "wd/take", 1, 60)).await;
    let mut again = connect_packet(Protocol::V5, "wd-take", false, 0);
    again.properties.session_expiry_interval = Some(60);
    let (_new, ack) = Raw::connect_with(broker.port, again).await;
    assert!(ack.session_present);
    w.expect_silence(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn disconnect_with_will_publishes_it_after_the_delay() {
    let broker = Broker::start();
    let mut w = watcher(&broker, "wd-dc-watch", "wd/dc").await;
    let (mut client, _) = Raw::connect_with(broker.port, with_will("wd-dc", "wd/dc", 1, 60)).await;
    client
        .send(&Packet::Disconnect(Disconnect {
            reason: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
            properties: Default::default(),
        }))
        .await;
    let waited = will_arrives(&mut w, Duration::from_secs(4)).await;
    assert!(waited >= Duration::from_millis(700), "after {waited:?}");
}
