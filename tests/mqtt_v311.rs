//! MQTT 3.1.1 against the real broker: QoS flows, CONNECT validation, keep-alive, will,
//! retained messages, wildcards, `$SYS` and UNSUBSCRIBE.

mod common;

use common::*;
use rumqttc::{LastWill, QoS};
use shardmq_codec::{Packet, Protocol, QoS as Q};
use std::time::{Duration, Instant};

/// A payload with every byte value, so a lossy or re-encoding path shows.
fn binary_payload(tag: u8) -> Vec<u8> {
    (0..=255u8).chain([tag, 0, 0xff]).collect()
}

#[tokio::test]
async fn qos_0_1_2_flow_both_ways_with_equal_payloads() {
    let broker = Broker::start();
    let (mut a, _) = V4::connect(broker.port, "v311-a", true).await;
    let (mut b, _) = V4::connect(broker.port, "v311-b", true).await;
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
        let payload = binary_payload(i as u8);
        // b -> a
        b.publish(&format!("to-a/{i}"), qos, false, payload.clone())
            .await;
        let got = a.expect_publish().await;
        assert_eq!(got.topic, format!("to-a/{i}"));
        assert_eq!(
            got.qos, qos,
            "delivered at the publish QoS (subscription allows 2)"
        );
        assert_eq!(&got.payload[..], &payload[..], "payload bytes preserved");
        assert!(!got.retain);
        // a -> b
        a.publish(&format!("to-b/{i}"), qos, false, payload.clone())
            .await;
        let got = b.expect_publish().await;
        assert_eq!(got.qos, qos);
        assert_eq!(&got.payload[..], &payload[..]);
    }
    a.expect_no_publish(QUIET).await;
    b.expect_no_publish(Duration::ZERO).await;
}

#[tokio::test]
async fn qos_is_downgraded_to_the_subscription_maximum() {
    let broker = Broker::start();
    let (mut sub0, _) = V4::connect(broker.port, "down-0", true).await;
    let (mut sub1, _) = V4::connect(broker.port, "down-1", true).await;
    let (mut publisher, _) = V4::connect(broker.port, "down-pub", true).await;
    assert_eq!(
        sub0.subscribe("down/t", QoS::AtMostOnce).await,
        Some(QoS::AtMostOnce)
    );
    assert_eq!(
        sub1.subscribe("down/t", QoS::AtLeastOnce).await,
        Some(QoS::AtLeastOnce)
    );
    publisher
        .publish("down/t", QoS::ExactlyOnce, false, "x")
        .await;
    assert_eq!(sub0.expect_publish().await.qos, QoS::AtMostOnce);
    assert_eq!(sub1.expect_publish().await.qos, QoS::AtLeastOnce);
    // And never upgraded: a QoS 0 publish stays QoS 0 for a QoS 1 subscriber.
    publisher
        .publish("down/t", QoS::AtMostOnce, false, "y")
        .await;
    assert_eq!(sub1.expect_publish().await.qos, QoS::AtMostOnce);
}

#[tokio::test]
async fn unsupported_protocol_level_gets_return_code_1_then_close() {
    let broker = Broker::start();
    let mut raw = Raw::open(broker.port, Protocol::V3_1_1).await;
    // CONNECT, protocol "MQTT" level 6, Clean Session, keep-alive 0, client id "x".
    raw.send_bytes(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 0, 0, 1, b'x',
    ])
    .await;
    let answer = raw.read_to_close().await;
    assert_eq!(
        answer,
        [0x20, 0x02, 0x00, 0x01],
        "CONNACK return code 1 (unacceptable protocol version), then close"
    );
    broker.expect_warn("bad packet").await;
}

#[tokio::test]
async fn zero_length_client_id_needs_clean_session() {
    let broker = Broker::start();
    let (raw, ack) =
        Raw::connect_with(broker.port, connect_packet(Protocol::V3_1_1, "", true, 0)).await;
    assert_eq!(
        ack.code.0, 0,
        "empty id with Clean Session is accepted: {ack:?}"
    );
    assert!(!ack.session_present);
    raw.disconnect().await;

    let answer = Raw::refused(broker.port, connect_packet(Protocol::V3_1_1, "", false, 0)).await;
    assert_eq!(
        answer,
        [0x20, 0x02, 0x00, 0x02],
        "empty id without Clean Session: CONNACK return code 2 (identifier rejected), then close"
    );
    broker.expect_warn("CONNECT refused").await;
}

#[tokio::test]
async fn client_id_longer_than_the_limit_is_refused() {
    let broker = Broker::start_with(&[("SHARDMQ_MQTT__MAX_CLIENT_ID_LEN", "23")]);
    let ok = "a".repeat(23);
    let (raw, ack) =
        Raw::connect_with(broker.port, connect_packet(Protocol::V3_1_1, &ok, true, 0)).await;
    assert_eq!(ack.code.0, 0, "23 bytes is within the limit");
    raw.disconnect().await;
    let long = "a".repeat(24);
    let answer = Raw::refused(
        broker.port,
        connect_packet(Protocol::V3_1_1, &long, true, 0),
    )
    .await;
    assert_eq!(
        answer,
        [0x20, 0x02, 0x00, 0x02],
        "3.1.1: return code 2, then close"
    );
    let answer = Raw::refused(broker.port, connect_packet(Protocol::V5, &long, true, 0)).await;
    assert_eq!(answer.first(), Some(&0x20), "5.0: a CONNACK: {answer:02x?}");
    assert_eq!(
        answer.get(3),
        Some(&0x85),
        "5.0: Client Identifier not valid: {answer:02x?}"
    );
    broker.expect_warn("CONNECT refused").await;
}

#[tokio::test]
async fn silent_client_is_closed_after_one_and_a_half_keep_alives() {
    let broker = Broker::start();
    let (mut raw, _) = Raw::connect_with(
        broker.port,
        connect_packet(Protocol::V3_1_1, "ka-silent", true, 1),
    )
    .await;
    let t0 = Instant::now();
    raw.expect_closed(Duration::from_secs(5)).await;
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(1400),
        "closed after {waited:?}: before 1.5 x keep-alive"
    );
    assert!(
        waited <= Duration::from_millis(3000),
        "closed after {waited:?}: later than 1.5 x keep-alive + slack"
    );
    broker.expect_warn("keep-alive").await;
}

#[tokio::test]
async fn pinging_client_stays_connected() {
    let broker = Broker::start();
    let (mut raw, _) = Raw::connect_with(
        broker.port,
        connect_packet(Protocol::V3_1_1, "ka-ping", true, 1),
    )
    .await;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        raw.send(&Packet::PingReq).await;
        match raw.next(Duration::from_secs(1)).await {
            Next::Packet(Packet::PingResp) => {}
            other => panic!("after {:?}: expected PINGRESP, got {other:?}", t0.elapsed()),
        }
    }
    raw.disconnect().await;
}

#[tokio::test]
async fn will_is_published_on_abrupt_close_only() {
    let broker = Broker::start();
    let (mut watcher, _) = V4::connect(broker.port, "will-watcher", true).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;

    // Dropped without DISCONNECT: the will goes.
    let mut opts = v4_options(broker.port, "will-abrupt", true);
    opts.set_last_will(LastWill::new(
        "will/abrupt",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (abrupt, _) = V4::connect_opts(opts).await;
    drop(abrupt);
    let will = watcher.expect_publish().await;
    assert_eq!(will.topic, "will/abrupt");
    assert_eq!(&will.payload[..], b"gone");
    assert_eq!(will.qos, QoS::AtLeastOnce);

    // DISCONNECT first: no will.
    let mut opts = v4_options(broker.port, "will-polite", true);
    opts.set_last_will(LastWill::new(
        "will/polite",
        "should not",
        QoS::AtLeastOnce,
        false,
    ));
    let (polite, _) = V4::connect_opts(opts).await;
    polite.disconnect().await;
    watcher.expect_no_publish(Duration::from_millis(800)).await;

    // A will with retain is stored as a retained message.
    let mut opts = v4_options(broker.port, "will-retained", true);
    opts.set_last_will(LastWill::new(
        "will/retained",
        "kept",
        QoS::AtLeastOnce,
        true,
    ));
    let (retained, _) = V4::connect_opts(opts).await;
    drop(retained);
    let live = watcher.expect_publish().await;
    assert_eq!(live.topic, "will/retained");
    let (mut late, _) = V4::connect(broker.port, "will-late", true).await;
    late.subscribe("will/retained", QoS::AtLeastOnce).await;
    let stored = late.expect_publish().await;
    assert_eq!(&stored.payload[..], b"kept");
    assert!(
        stored.retain,
        "delivered because of the subscribe: retain flag set"
    );
}

#[tokio::test]
async fn retained_set_replace_clear_and_flags() {
    let broker = Broker::start();
    let (mut publisher, _) = V4::connect(broker.port, "ret-pub", true).await;
    publisher
        .publish("ret/a", QoS::AtLeastOnce, true, "one")
        .await;
    publisher
        .publish("ret/a", QoS::AtLeastOnce, true, "two")
        .await;
    publisher
        .publish("ret/b", QoS::AtLeastOnce, true, "bee")
        .await;

    // Latest value only, retain flag set because it comes from the subscribe.
    let (mut sub, _) = V4::connect(broker.port, "ret-sub", true).await;
    sub.subscribe("ret/a", QoS::AtLeastOnce).await;
    let got = sub.expect_publish().await;
    assert_eq!(
        &got.payload[..],
        b"two",
        "the replacement, not the first value"
    );
    assert!(got.retain);
    sub.expect_no_publish(QUIET).await;

    // Live messages to an existing subscription carry retain = 0 (MQTT-3.3.1-9), even when
    // published with retain.
    publisher
        .publish("ret/a", QoS::AtLeastOnce, false, "live")
        .await;
    let got = sub.expect_publish().await;
    assert_eq!(&got.payload[..], b"live");
    assert!(!got.retain, "live message must not carry retain");
    publisher
        .publish("ret/a", QoS::AtLeastOnce, true, "three")
        .await;
    let got = sub.expect_publish().await;
    assert_eq!(&got.payload[..], b"three");
    assert!(
        !got.retain,
        "3.1.1: a retained publish to an existing subscriber has retain = 0"
    );

    // A wildcard subscriber gets every matching retained message.
    let (mut wild, _) = V4::connect(broker.port, "ret-wild", true).await;
    wild.subscribe("ret/+", QoS::AtLeastOnce).await;
    let mut got = [wild.expect_publish().await, wild.expect_publish().await];
    got.sort_by(|x, y| x.topic.cmp(&y.topic));
    assert_eq!(
        (got[0].topic.as_str(), &got[0].payload[..]),
        ("ret/a", &b"three"[..])
    );
    assert_eq!(
        (got[1].topic.as_str(), &got[1].payload[..]),
        ("ret/b", &b"bee"[..])
    );
    assert!(got.iter().all(|p| p.retain));
    wild.expect_no_publish(QUIET).await;

    // An empty retained payload clears the topic.
    publisher.publish("ret/a", QoS::AtLeastOnce, true, "").await;
    let (mut after, _) = V4::connect(broker.port, "ret-after", true).await;
    after.subscribe("ret/a", QoS::AtLeastOnce).await;
    after.expect_no_publish(QUIET).await;
    let (mut after_wild, _) = V4::connect(broker.port, "ret-after-wild", true).await;
    after_wild.subscribe("ret/#", QoS::AtLeastOnce).await;
    let only = after_wild.expect_publish().await;
    assert_eq!(only.topic, "ret/b", "only the uncleared topic remains");
    after_wild.expect_no_publish(QUIET).await;
}

/// Subscribes one raw client per filter (plus "end"), publishes `topics` then "end", and
/// returns, per filter, the topics received in order.
async fn matches_per_filter(port: u16, filters: &[&str], topics: &[&str]) -> Vec<Vec<String>> {
    let mut subs = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        let (mut raw, _) = Raw::connect(port, Protocol::V3_1_1, &format!("wild-{i}"), true).await;
        let codes = raw
            .subscribe(1, &[(f, Q::AtLeastOnce), ("end", Q::AtLeastOnce)])
            .await;
        assert_eq!(codes, vec![1, 1], "SUBACK for {f}");
        subs.push(raw);
    }
    let (mut publisher, _) = Raw::connect(port, Protocol::V3_1_1, "wild-pub", true).await;
    for (i, t) in topics.iter().chain(&["end"]).enumerate() {
        publisher
            .publish(t, t.as_bytes(), Q::AtLeastOnce, i as u16 + 1, false)
            .await;
    }
    let mut out = Vec::new();
    for raw in &mut subs {
        let mut got = Vec::new();
        loop {
            let p = raw.expect_publish().await;
            raw.send(&puback(p.pkid)).await;
            if p.topic.as_str() == "end" {
                break;
            }
            got.push(p.topic.to_string());
        }
        out.push(got);
    }
    out
}

#[tokio::test]
async fn wildcard_semantics() {
    let broker = Broker::start();
    let topics = ["a", "a/b", "a/b/c", "a/x/c", "b/b", "/a", "a/"];
    let filters = ["a/#", "a/+", "+/b", "a/+/c", "#", "+", "+/+", "/+", "a/b"];
    let got = matches_per_filter(broker.port, &filters, &topics).await;
    let expect: [&[&str]; 9] = [
        &["a", "a/b", "a/b/c", "a/x/c", "a/"], // a/# also matches the parent "a"
        &["a/b", "a/"],
        &["a/b", "b/b"],
        &["a/b/c", "a/x/c"],
        &["a", "a/b", "a/b/c", "a/x/c", "b/b", "/a", "a/"],
        &["a"],
        &["a/b", "b/b", "/a", "a/"],
        &["/a"],
        &["a/b"],
    ];
    for ((filter, got), expect) in filters.iter().zip(&got).zip(expect) {
        assert_eq!(got, expect, "topics delivered to filter {filter:?}");
    }
}

#[tokio::test]
async fn sys_topics_are_not_matched_by_root_wildcards() {
    let broker = Broker::start();
    let (mut all, _) = V4::connect(broker.port, "sys-all", true).await;
    let (mut plus, _) = V4::connect(broker.port, "sys-plus", true).await;
    let (mut sys, _) = V4::connect(broker.port, "sys-sys", true).await;
    all.subscribe("#", QoS::AtMostOnce).await;
    plus.subscribe("+/brokers/#", QoS::AtMostOnce).await;
    sys.subscribe("$SYS/#", QoS::AtMostOnce).await;
    // $SYS figures are retained and republished every 100 ms.
    let got = sys.expect_publish().await;
    assert!(got.topic.starts_with("$SYS/brokers/"), "{}", got.topic);
    all.expect_no_publish(Duration::from_millis(500)).await;
    plus.expect_no_publish(Duration::ZERO).await;
    // "#" still gets ordinary topics.
    let (mut publisher, _) = V4::connect(broker.port, "sys-pub", true).await;
    publisher
        .publish("plain", QoS::AtLeastOnce, false, "p")
        .await;
    assert_eq!(all.expect_publish().await.topic, "plain");
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let broker = Broker::start();
    let (mut sub, _) = V4::connect(broker.port, "unsub-sub", true).await;
    let (mut publisher, _) = V4::connect(broker.port, "unsub-pub", true).await;
    sub.subscribe("unsub/t", QoS::AtLeastOnce).await;
    sub.subscribe("unsub/other", QoS::AtLeastOnce).await;
    publisher
        .publish("unsub/t", QoS::AtLeastOnce, false, "1")
        .await;
    assert_eq!(&sub.expect_publish().await.payload[..], b"1");
    sub.client
        .unsubscribe("unsub/t")
        .await
        .expect("queue UNSUBSCRIBE");
    let unsuback = sub
        .inbox
        .wait_for(WAIT, |p| {
            matches!(p, rumqttc::Packet::UnsubAck(_)).then_some(())
        })
        .await;
    assert!(unsuback.is_some(), "no UNSUBACK");
    publisher
        .publish("unsub/t", QoS::AtLeastOnce, false, "2")
        .await;
    publisher
        .publish("unsub/other", QoS::AtLeastOnce, false, "3")
        .await;
    let next = sub.expect_publish().await;
    assert_eq!(
        (next.topic.as_str(), &next.payload[..]),
        ("unsub/other", &b"3"[..]),
        "the unsubscribed topic must not be delivered"
    );
    sub.expect_no_publish(QUIET).await;
}
