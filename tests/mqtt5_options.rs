//! MQTT 5.0 options against the real broker over real sockets: subscription options (No Local,
//! Retain As Published, Retain Handling), subscription identifiers, the client's Maximum Packet
//! Size and Receive Maximum, the server's Receive Maximum, PUBLISH properties passed through,
//! session expiry changed at DISCONNECT, Server Keep Alive, and the Reason String of the
//! server's DISCONNECT. The raw client sends the exact options and shows every flag and property
//! the broker sets.

mod common;

use bytes::Bytes;
use common::*;
use shardmq_codec::{
    Ack, ByteStr, Connect, Disconnect, DisconnectProperties, Packet, Protocol, Publish,
    PublishProperties, QoS as Q, ReasonCode, RetainHandling, Subscribe, SubscribeFilter,
    SubscribeProperties, SubscriptionOptions,
};
use std::time::{Duration, Instant};

fn v5(client_id: &str) -> Connect {
    connect_packet(Protocol::V5, client_id, true, 0)
}

/// Connects a v5 raw client with `connect`, asserting success.
async fn connect(broker: &Broker, connect: Connect) -> Raw {
    let (raw, ack) = Raw::connect_with(broker.port, connect).await;
    assert_eq!(ack.code.0, 0, "CONNACK refused: {ack:?}");
    raw
}

/// Sends one SUBSCRIBE for `filter` with `options` and identifier `id`; returns the SUBACK code.
async fn subscribe(
    raw: &mut Raw,
    pkid: u16,
    filter: &str,
    options: SubscriptionOptions,
    id: Option<u32>,
) -> u8 {
    raw.send(&Packet::Subscribe(Subscribe {
        pkid,
        filters: vec![SubscribeFilter {
            filter: ByteStr::from(filter),
            options,
        }],
        properties: SubscribeProperties {
            subscription_identifier: id,
            ..Default::default()
        },
    }))
    .await;
    match raw.expect(WAIT).await {
        Packet::SubAck(ack) => {
            assert_eq!(ack.pkid, pkid, "SUBACK packet id");
            assert_eq!(ack.reasons.len(), 1);
            ack.reasons[0].0
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn opts(qos: Q) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..Default::default()
    }
}

/// A PUBLISH with `properties`.
fn publish_with(
    topic: &str,
    payload: &[u8],
    qos: Q,
    pkid: u16,
    retain: bool,
    properties: PublishProperties,
) -> Packet {
    Packet::Publish(Box::new(Publish {
        dup: false,
        qos,
        retain,
        topic: ByteStr::from(topic),
        pkid: if qos == Q::AtMostOnce { 0 } else { pkid },
        properties,
        payload: Bytes::copy_from_slice(payload),
    }))
}

/// The server's DISCONNECT before it closed the connection.
async fn server_disconnect(raw: &mut Raw) -> Disconnect {
    match raw.expect_closed(WAIT).await.as_slice() {
        [.., Packet::Disconnect(d)] => d.clone(),
        other => panic!("expected DISCONNECT before the close, got {other:?}"),
    }
}

/// The connection is still up: PINGREQ is answered.
async fn still_connected(raw: &mut Raw) {
    raw.send(&Packet::PingReq).await;
    match raw.expect(WAIT).await {
        Packet::PingResp => {}
        other => panic!("expected PINGRESP, got {other:?}"),
    }
}

// ---- subscription options -----------------------------------------------------------------

#[tokio::test]
async fn no_local_skips_the_publishers_own_messages_only() {
    let broker = Broker::start();
    let mut a = connect(&broker, v5("nl-a")).await;
    let mut no_local = opts(Q::AtLeastOnce);
    no_local.no_local = true;
    assert_eq!(subscribe(&mut a, 1, "nl/t", no_local, None).await, 1);
    let mut b = connect(&broker, v5("nl-b")).await;
    assert_eq!(
        subscribe(&mut b, 1, "nl/t", opts(Q::AtLeastOnce), None).await,
        1
    );

    // A's own message reaches B, not A.
    a.publish("nl/t", b"from-a", Q::AtLeastOnce, 1, false).await;
    assert_eq!(&b.expect_publish().await.payload[..], b"from-a");
    a.expect_silence(QUIET).await;
    // A's subscription works for everybody else's messages.
    let (mut c, _) = Raw::connect(broker.port, Protocol::V5, "nl-c", true).await;
    c.publish("nl/t", b"from-c", Q::AtLeastOnce, 1, false).await;
    assert_eq!(&a.expect_publish().await.payload[..], b"from-c");
    assert_eq!(&b.expect_publish().await.payload[..], b"from-c");
}

#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag_on_live_delivery() {
    let broker = Broker::start();
    let mut rap = connect(&broker, v5("rap-1")).await;
    let mut keep = opts(Q::AtMostOnce);
    keep.retain_as_published = true;
    assert_eq!(subscribe(&mut rap, 1, "rap/t", keep, None).await, 0);
    let mut plain = connect(&broker, v5("rap-0")).await;
    assert_eq!(
        subscribe(&mut plain, 1, "rap/t", opts(Q::AtMostOnce), None).await,
        0
    );
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V5, "rap-pub", true).await;

    publisher
        .publish("rap/t", b"r", Q::AtLeastOnce, 1, true)
        .await;
    let got = rap.expect_publish().await;
    assert!(got.retain, "RAP=1: live delivery keeps retain=1");
    assert!(
        !plain.expect_publish().await.retain,
        "RAP=0: retain cleared"
    );
    publisher
        .publish("rap/t", b"n", Q::AtLeastOnce, 2, false)
        .await;
    assert!(!rap.expect_publish().await.retain, "a non-retained message");
    assert!(!plain.expect_publish().await.retain);

    // Whatever RAP says, a retained message sent because of a subscribe has retain=1.
    let mut late = connect(&broker, v5("rap-late")).await;
    assert_eq!(
        subscribe(&mut late, 1, "rap/t", opts(Q::AtMostOnce), None).await,
        0
    );
    let got = late.expect_publish().await;
    assert_eq!((&got.payload[..], got.retain), (&b"r"[..], true));
}

#[tokio::test]
async fn retain_handling_0_always_1_only_when_new_2_never() {
    let broker = Broker::start();
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V5, "rh-pub", true).await;
    publisher
        .publish("rh/t", b"kept", Q::AtLeastOnce, 1, true)
        .await;
    let with = |rh| SubscriptionOptions {
        retain_handling: rh,
        ..opts(Q::AtMostOnce)
    };
    let expect_retained = |p: Publish| {
        assert_eq!((&p.payload[..], p.retain), (&b"kept"[..], true), "{p:?}");
    };

    // 0: on every SUBSCRIBE, new or not.
    let mut c0 = connect(&broker, v5("rh-0")).await;
    for pkid in 1..=2 {
        subscribe(
            &mut c0,
            pkid,
            "rh/t",
            with(RetainHandling::OnSubscribe),
            None,
        )
        .await;
        expect_retained(c0.expect_publish().await);
        c0.expect_silence(QUIET).await;
    }

    // 1: only when the subscription did not exist; again after an unsubscribe.
    let mut c1 = connect(&broker, v5("rh-1")).await;
    subscribe(
        &mut c1,
        1,
        "rh/+",
        with(RetainHandling::OnNewSubscribe),
        None,
    )
    .await;
    expect_retained(c1.expect_publish().await);
    subscribe(
        &mut c1,
        2,
        "rh/+",
        with(RetainHandling::OnNewSubscribe),
        None,
    )
    .await;
    c1.expect_silence(QUIET).await;
    c1.send(&Packet::Unsubscribe(shardmq_codec::Unsubscribe {
        pkid: 3,
        filters: vec![ByteStr::from("rh/+")],
        properties: Default::default(),
    }))
    .await;
    assert!(matches!(c1.expect(WAIT).await, Packet::UnsubAck(_)));
    subscribe(
        &mut c1,
        4,
        "rh/+",
        with(RetainHandling::OnNewSubscribe),
        None,
    )
    .await;
    expect_retained(c1.expect_publish().await);

    // 2: never, though the subscription itself works.
    let mut c2 = connect(&broker, v5("rh-2")).await;
    subscribe(&mut c2, 1, "rh/#", with(RetainHandling::Never), None).await;
    c2.expect_silence(QUIET).await;
    publisher
        .publish("rh/t", b"live", Q::AtLeastOnce, 2, false)
        .await;
    assert_eq!(&c2.expect_publish().await.payload[..], b"live");
}

// ---- subscription identifiers -------------------------------------------------------------

#[tokio::test]
async fn overlapping_subscriptions_give_one_copy_with_every_matching_identifier() {
    let broker = Broker::start();
    let mut sub = connect(&broker, v5("sid-sub")).await;
    assert_eq!(
        subscribe(&mut sub, 1, "sid/#", opts(Q::AtLeastOnce), Some(7)).await,
        1
    );
    assert_eq!(
        subscribe(&mut sub, 2, "sid/a/+", opts(Q::AtMostOnce), Some(9)).await,
        0
    );
    assert_eq!(
        subscribe(&mut sub, 3, "plain/t", opts(Q::AtMostOnce), None).await,
        0
    );
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V5, "sid-pub", true).await;
    let ids = |p: &Publish| {
        let mut ids = p.properties.subscription_identifiers.to_vec();
        ids.sort_unstable();
        ids
    };

    // Both match: one copy, both identifiers, the higher of the two QoS.
    publisher
        .publish("sid/a/b", b"both", Q::AtLeastOnce, 1, false)
        .await;
    let p = sub.expect_publish().await;
    assert_eq!(&p.payload[..], b"both");
    assert_eq!(ids(&p), [7, 9]);
    assert_eq!(p.qos, Q::AtLeastOnce);
    sub.send(&puback(p.pkid)).await;
    sub.expect_silence(QUIET).await;
    // Only one matches: only its identifier.
    publisher
        .publish("sid/x", b"one", Q::AtMostOnce, 0, false)
        .await;
    let p = sub.expect_publish().await;
    assert_eq!((&p.payload[..], ids(&p)), (&b"one"[..], vec![7]));
    // A subscription without identifier: none.
    publisher
        .publish("plain/t", b"none", Q::AtMostOnce, 0, false)
        .await;
    let p = sub.expect_publish().await;
    assert_eq!((&p.payload[..], ids(&p)), (&b"none"[..], vec![]));

    // A retained message sent because of a subscribe carries that subscription's identifier.
    publisher
        .publish("ret/t", b"r", Q::AtLeastOnce, 2, true)
        .await;
    assert_eq!(
        subscribe(&mut sub, 4, "ret/t", opts(Q::AtMostOnce), Some(11)).await,
        0
    );
    let p = sub.expect_publish().await;
    assert_eq!((&p.payload[..], ids(&p)), (&b"r"[..], vec![11]));
}

#[tokio::test]
async fn a_no_local_subscription_adds_nothing_to_a_copy_of_the_clients_own_message() {
    let broker = Broker::start();
    let mut me = connect(&broker, v5("nl-mixed")).await;
    let no_local = SubscriptionOptions {
        qos: Q::AtLeastOnce,
        no_local: true,
        retain_as_published: true,
        ..Default::default()
    };
    assert_eq!(subscribe(&mut me, 1, "nl/#", no_local, Some(3)).await, 1);
    assert_eq!(
        subscribe(&mut me, 2, "nl/t", opts(Q::AtMostOnce), Some(4)).await,
        0
    );
    // Its own retained QoS 1 message comes through the second subscription only: QoS 0, no
    // retain flag, identifier 4 alone.
    me.publish("nl/t", b"own", Q::AtLeastOnce, 1, true).await;
    let mut own = None;
    while own.is_none() {
        match me.next(Duration::from_secs(2)).await {
            Next::Packet(Packet::Publish(p)) => own = Some(p),
            Next::Packet(_) => {}
            other => panic!("no copy of the client's own message: {other:?}"),
        }
    }
    let p = own.expect("set above");
    assert_eq!(&p.payload[..], b"own");
    assert_eq!(
        p.qos,
        Q::AtMostOnce,
        "the No Local subscription's QoS must not count"
    );
    assert!(
        !p.retain,
        "the No Local subscription's Retain As Published must not count"
    );
    assert_eq!(p.properties.subscription_identifiers.to_vec(), vec![4]);
}

// ---- the client's limits ------------------------------------------------------------------

#[tokio::test]
async fn a_message_above_the_clients_maximum_packet_size_is_skipped_for_that_client_only() {
    let broker = Broker::start();
    let mut small_connect = v5("mps-small");
    small_connect.properties.maximum_packet_size = Some(200);
    let mut small = connect(&broker, small_connect).await;
    assert_eq!(
        subscribe(&mut small, 1, "mps/t", opts(Q::AtLeastOnce), None).await,
        1
    );
    let mut big = connect(&broker, v5("mps-big")).await;
    assert_eq!(
        subscribe(&mut big, 1, "mps/t", opts(Q::AtLeastOnce), None).await,
        1
    );
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V5, "mps-pub", true).await;

    let large = vec![b'x'; 1000];
    for (pkid, qos) in [(1, Q::AtMostOnce), (2, Q::AtLeastOnce)] {
        publisher.publish("mps/t", &large, qos, pkid, false).await;
        publisher
            .publish("mps/t", b"small", qos, pkid + 10, false)
            .await;
        for _ in 0..2 {
            let p = big.expect_publish().await;
            if p.qos == Q::AtLeastOnce {
                big.send(&puback(p.pkid)).await;
            }
        }
        // The large one never comes; the small one right behind it does.
        let p = small.expect_publish().await;
        assert_eq!(
            &p.payload[..],
            b"small",
            "{qos:?}: the 1000-byte message was sent"
        );
        if p.qos == Q::AtLeastOnce {
            small.send(&puback(p.pkid)).await;
        }
    }
    small.expect_silence(QUIET).await;
    still_connected(&mut small).await;
}

#[tokio::test]
async fn the_clients_receive_maximum_bounds_unacknowledged_qos_1_and_2() {
    let broker = Broker::start();
    let mut c = v5("rm-sub");
    c.properties.receive_maximum = Some(2);
    let mut sub = connect(&broker, c).await;
    assert_eq!(
        subscribe(&mut sub, 1, "rm/t", opts(Q::ExactlyOnce), None).await,
        2
    );
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V5, "rm-pub", true).await;
    for i in 0..5u16 {
        publisher
            .publish("rm/t", &[b'0' + i as u8], Q::AtLeastOnce, i + 1, false)
            .await;
    }
    // Never acknowledged: exactly two.
    let first = [sub.expect_publish().await, sub.expect_publish().await];
    assert_eq!(&first[0].payload[..], b"0");
    assert_eq!(&first[1].payload[..], b"1");
    sub.expect_silence(QUIET).await;
    // Each acknowledgement lets exactly one more through.
    sub.send(&puback(first[0].pkid)).await;
    let third = sub.expect_publish().await;
    assert_eq!(&third.payload[..], b"2");
    sub.expect_silence(QUIET).await;
    for p in [&first[1], &third] {
        sub.send(&puback(p.pkid)).await;
    }
    let rest = [sub.expect_publish().await, sub.expect_publish().await];
    assert_eq!(&rest[0].payload[..], b"3");
    assert_eq!(&rest[1].payload[..], b"4");
    for p in &rest {
        sub.send(&puback(p.pkid)).await;
    }

    // QoS 2 holds its slot until PUBCOMP, not just until PUBREC.
    for i in 0..3u16 {
        publisher
            .publish("rm/t", &[b'a' + i as u8], Q::ExactlyOnce, i + 1, false)
            .await;
    }
    let q2 = [sub.expect_publish().await, sub.expect_publish().await];
    assert!(q2.iter().all(|p| p.qos == Q::ExactlyOnce));
    sub.send(&Packet::PubRec(Ack {
        pkid: q2[0].pkid,
        ..Default::default()
    }))
    .await;
    match sub.expect(WAIT).await {
        Packet::PubRel(a) => assert_eq!(a.pkid, q2[0].pkid),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.expect_silence(QUIET).await;
    sub.send(&Packet::PubComp(Ack {
        pkid: q2[0].pkid,
        ..Default::default()
    }))
    .await;
    assert_eq!(&sub.expect_publish().await.payload[..], b"c");
}

// ---- the server's Receive Maximum ---------------------------------------------------------

#[tokio::test]
async fn a_qos_2_publish_beyond_the_servers_receive_maximum_gets_disconnect_0x93() {
    let broker = Broker::start_with(&[("SHARDMQ_MQTT__MAX_AWAITING_REL", "2")]);
    let (mut c, ack) = Raw::connect_with(broker.port, v5("srm")).await;
    assert_eq!(ack.properties.receive_maximum, Some(2));
    async fn send(c: &mut Raw, pkid: u16) {
        c.send(&publish_packet("srm/t", b"x", Q::ExactlyOnce, pkid, false))
            .await;
    }
    async fn expect_ack(c: &mut Raw, pkid: u16) {
        match c.expect(WAIT).await {
            Packet::PubRec(a) | Packet::PubComp(a) => {
                assert_eq!((a.pkid, a.reason.0), (pkid, 0), "{a:?}");
            }
            other => panic!("expected PUBREC or PUBCOMP, got {other:?}"),
        }
    }
    // Two unreleased QoS 2 messages are within the maximum; a release frees a slot.
    for pkid in [1, 2] {
        send(&mut c, pkid).await;
        expect_ack(&mut c, pkid).await;
    }
    c.send(&Packet::PubRel(Ack {
        pkid: 1,
        ..Default::default()
    }))
    .await;
    expect_ack(&mut c, 1).await;
    send(&mut c, 3).await;
    expect_ack(&mut c, 3).await;
    // A third unreleased one exceeds it.
    send(&mut c, 4).await;
    let d = server_disconnect(&mut c).await;
    assert_eq!(d.reason, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
}

// ---- properties ---------------------------------------------------------------------------

fn all_properties() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some(ByteStr::from("application/json; charset=utf-8")),
        user_properties: vec![
            (ByteStr::from("k"), ByteStr::from("1")),
            (ByteStr::from("zeta"), ByteStr::from("ü")),
            (ByteStr::from("k"), ByteStr::from("2")),
            (ByteStr::from("a"), ByteStr::from("")),
            (ByteStr::from("k"), ByteStr::from("1")),
        ],
        response_topic: Some(ByteStr::from("props/reply")),
        correlation_data: Some(Bytes::from_static(b"\x00\xff\x01corr\x80")),
        ..Default::default()
    }
}

#[tokio::test]
async fn publish_properties_reach_subscribers_unchanged() {
    let broker = Broker::start();
    let mut sub = connect(&broker, v5("props-sub")).await;
    assert_eq!(
        subscribe(&mut sub, 1, "props/t", opts(Q::AtLeastOnce), None).await,
        1
    );
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V5, "props-pub", true).await;
    let payload = "{\"größe\":1}".as_bytes();
    publisher
        .send(&publish_with(
            "props/t",
            payload,
            Q::AtLeastOnce,
            1,
            true,
            all_properties(),
        ))
        .await;
    match publisher.expect(WAIT).await {
        Packet::PubAck(a) => assert_eq!((a.pkid, a.reason.0), (1, 0)),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let p = sub.expect_publish().await;
    assert_eq!(&p.payload[..], payload);
    assert_eq!(p.properties, all_properties(), "every property, in order");
    sub.send(&puback(p.pkid)).await;

    // The retained copy keeps them too.
    let mut late = connect(&broker, v5("props-late")).await;
    assert_eq!(
        subscribe(&mut late, 1, "props/t", opts(Q::AtMostOnce), None).await,
        0
    );
    let p = late.expect_publish().await;
    assert!(p.retain);
    assert_eq!(p.properties, all_properties());
}

#[tokio::test]
async fn a_payload_that_is_not_utf8_despite_its_format_indicator_gets_0x99_and_is_dropped() {
    let broker = Broker::start();
    let mut sub = connect(&broker, v5("pfi-sub")).await;
    assert_eq!(
        subscribe(&mut sub, 1, "pfi/t", opts(Q::AtMostOnce), None).await,
        0
    );
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V5, "pfi-pub", true).await;
    let utf8 = PublishProperties {
        payload_format_indicator: Some(1),
        ..Default::default()
    };
    let bad = b"\xff\xfe not utf-8";
    publisher
        .send(&publish_with(
            "pfi/t",
            bad,
            Q::AtLeastOnce,
            1,
            false,
            utf8.clone(),
        ))
        .await;
    match publisher.expect(WAIT).await {
        Packet::PubAck(a) => {
            assert_eq!((a.pkid, a.reason), (1, ReasonCode::PAYLOAD_FORMAT_INVALID))
        }
        other => panic!("expected PUBACK 0x99, got {other:?}"),
    }
    publisher
        .send(&publish_with(
            "pfi/t",
            bad,
            Q::ExactlyOnce,
            2,
            false,
            utf8.clone(),
        ))
        .await;
    match publisher.expect(WAIT).await {
        Packet::PubRec(a) => {
            assert_eq!((a.pkid, a.reason), (2, ReasonCode::PAYLOAD_FORMAT_INVALID))
        }
        other => panic!("expected PUBREC 0x99, got {other:?}"),
    }
    sub.expect_silence(QUIET).await;
    // The same bytes without the indicator, and UTF-8 with it, go through on that connection.
    publisher
        .publish("pfi/t", bad, Q::AtLeastOnce, 3, false)
        .await;
    assert_eq!(&sub.expect_publish().await.payload[..], bad);
    publisher
        .send(&publish_with(
            "pfi/t",
            b"ok",
            Q::AtLeastOnce,
            4,
            false,
            utf8,
        ))
        .await;
    assert!(matches!(publisher.expect(WAIT).await, Packet::PubAck(a) if a.reason.0 == 0));
    assert_eq!(&sub.expect_publish().await.payload[..], b"ok");
}

// ---- session expiry at DISCONNECT ---------------------------------------------------------

fn persistent(client_id: &str, expiry: u32) -> Connect {
    let mut c = connect_packet(Protocol::V5, client_id, false, 0);
    c.properties.session_expiry_interval = Some(expiry);
    c
}

fn disconnect_with_expiry(expiry: u32) -> Packet {
    Packet::Disconnect(Disconnect {
        reason: ReasonCode::SUCCESS,
        properties: DisconnectProperties {
            session_expiry_interval: Some(expiry),
            ..Default::default()
        },
    })
}

#[tokio::test]
async fn disconnect_with_session_expiry_0_ends_the_session() {
    let broker = Broker::start();
    for (id, at_disconnect, kept) in [("sx-keep", None, true), ("sx-end", Some(0), false)] {
        let mut c = connect(&broker, persistent(id, 60)).await;
        assert_eq!(
            subscribe(&mut c, 1, "sx/t", opts(Q::AtLeastOnce), None).await,
            1
        );
        match at_disconnect {
            Some(expiry) => c.send(&disconnect_with_expiry(expiry)).await,
            None => c.send(&Packet::Disconnect(Default::default())).await,
        }
        c.expect_closed(WAIT).await;
        let (_again, ack) = Raw::connect_with(broker.port, persistent(id, 60)).await;
        assert_eq!(
            ack.session_present, kept,
            "{id}: DISCONNECT expiry {at_disconnect:?}"
        );
    }
}

#[tokio::test]
async fn disconnect_setting_an_expiry_after_0_is_a_protocol_error() {
    let broker = Broker::start();
    let mut c = connect(&broker, persistent("sx-zero", 0)).await;
    assert_eq!(
        subscribe(&mut c, 1, "sx/t", opts(Q::AtLeastOnce), None).await,
        1
    );
    c.send(&disconnect_with_expiry(30)).await;
    let d = server_disconnect(&mut c).await;
    assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR);
    // And the session did not take the 30 s.
    let (_again, ack) = Raw::connect_with(broker.port, persistent("sx-zero", 0)).await;
    assert!(!ack.session_present);
}

// ---- Server Keep Alive --------------------------------------------------------------------

#[tokio::test]
async fn server_keep_alive_lowers_the_clients_and_is_enforced() {
    let broker = Broker::start_with(&[("SHARDMQ_MQTT__MAX_KEEPALIVE_SECS", "2")]);
    let (mut c, ack) =
        Raw::connect_with(broker.port, connect_packet(Protocol::V5, "ska", true, 60)).await;
    assert_eq!(ack.properties.server_keep_alive, Some(2));
    let t0 = Instant::now();
    let d = server_disconnect(&mut c).await;
    let waited = t0.elapsed();
    assert_eq!(d.reason, ReasonCode::KEEP_ALIVE_TIMEOUT);
    assert!(
        (Duration::from_millis(2800)..=Duration::from_millis(4500)).contains(&waited),
        "closed after {waited:?}, expected about 3 s (1.5 × the Server Keep Alive)"
    );
}

// ---- Reason String ------------------------------------------------------------------------

#[tokio::test]
async fn server_disconnect_carries_a_reason_string() {
    let broker = Broker::start_with(&[("SHARDMQ_MQTT__MAX_AWAITING_REL", "1")]);
    // A second CONNECT.
    let mut c = connect(&broker, v5("rs-connect")).await;
    c.send(&Packet::Connect(Box::new(v5("rs-connect")))).await;
    let d = server_disconnect(&mut c).await;
    assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR);
    assert_eq!(
        d.properties.reason_string.as_deref(),
        Some("second CONNECT")
    );
    // More QoS 2 awaiting release than the server's Receive Maximum.
    let mut c = connect(&broker, v5("rs-rm")).await;
    for pkid in [1, 2] {
        c.send(&publish_packet("rs/t", b"x", Q::ExactlyOnce, pkid, false))
            .await;
    }
    let d = server_disconnect(&mut c).await;
    assert_eq!(d.reason, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
    assert_eq!(
        d.properties.reason_string.as_deref(),
        Some("more QoS 2 in flight than Receive Maximum")
    );
}

#[tokio::test]
async fn no_reason_string_when_the_client_requests_no_problem_information() {
    let broker = Broker::start();
    let mut quiet = v5("rs-quiet");
    quiet.properties.request_problem_information = Some(0);
    let mut c = connect(&broker, quiet.clone()).await;
    c.send(&Packet::Connect(Box::new(quiet))).await;
    let d = server_disconnect(&mut c).await;
    assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR);
    assert_eq!(d.properties.reason_string, None);
    assert_eq!(d.properties, DisconnectProperties::default());
}
