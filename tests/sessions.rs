//! Sessions across connections: persistence, expiry, bounded offline queues, the inflight
//! window with DUP redelivery, and takeover by a second connection with the same identifier.

mod common;

use common::*;
use shardmq_codec::{Packet, Protocol, QoS as Q};
use std::time::Duration;

#[tokio::test]
async fn persistent_session_v311_keeps_subscriptions_and_queues_messages() {
    use rumqttc::QoS;
    let broker = Broker::start();
    let (mut sub, ack) = V4::connect(broker.port, "ps4-sub", false).await;
    assert!(!ack.session_present, "first connection: no session yet");
    sub.subscribe("ps4/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let (mut publisher, _) = V4::connect(broker.port, "ps4-pub", true).await;
    for i in 0..3 {
        publisher
            .publish("ps4/t", QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    let (mut sub, ack) = V4::connect(broker.port, "ps4-sub", false).await;
    assert!(
        ack.session_present,
        "clean_session=0 reconnect: session present"
    );
    for i in 0..3 {
        let p = sub.expect_publish().await;
        assert_eq!(
            p.payload,
            format!("m{i}").as_bytes(),
            "queued messages in order"
        );
        assert_eq!(p.qos, QoS::AtLeastOnce);
    }
    sub.expect_no_publish(QUIET).await;
    // Subscriptions survived too: live messages flow.
    publisher
        .publish("ps4/t", QoS::AtLeastOnce, false, "live")
        .await;
    assert_eq!(&sub.expect_publish().await.payload[..], b"live");
    sub.disconnect().await;

    // Messages queued for the session, then a clean-session connection discards it all.
    publisher
        .publish("ps4/t", QoS::AtLeastOnce, false, "discarded")
        .await;
    let (mut sub, ack) = V4::connect(broker.port, "ps4-sub", true).await;
    assert!(!ack.session_present, "clean_session=1: no session present");
    sub.expect_no_publish(QUIET).await;
    publisher
        .publish("ps4/t", QoS::AtLeastOnce, false, "after")
        .await;
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn persistent_session_v5_with_expiry_and_clean_start() {
    use rumqttc::v5::mqttbytes::QoS;
    let broker = Broker::start();
    let persistent = || {
        let mut o = v5_options(broker.port, "ps5-sub", false);
        o.set_session_expiry_interval(Some(60));
        o
    };
    let (mut sub, ack) = V5::connect_opts(persistent()).await;
    assert!(!ack.session_present);
    sub.subscribe("ps5/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let (mut publisher, _) = V5::connect(broker.port, "ps5-pub", true).await;
    for i in 0..3 {
        publisher
            .publish("ps5/t", QoS::AtLeastOnce, false, format!("m{i}"))
            .await;
    }
    let (mut sub, ack) = V5::connect_opts(persistent()).await;
    assert!(
        ack.session_present,
        "clean_start=0 within expiry: session present"
    );
    for i in 0..3 {
        let p = sub.expect_publish().await;
        assert_eq!(p.payload, format!("m{i}").as_bytes());
    }
    assert!(sub.next_publish(QUIET).await.is_none());
    sub.disconnect().await;

    publisher
        .publish("ps5/t", QoS::AtLeastOnce, false, "discarded")
        .await;
    let mut clean = persistent();
    clean.set_clean_start(true);
    let (mut sub, ack) = V5::connect_opts(clean).await;
    assert!(!ack.session_present, "clean_start=1: session discarded");
    assert!(
        sub.next_publish(QUIET).await.is_none(),
        "nothing from the discarded session"
    );
}

#[tokio::test]
async fn session_expires_after_its_interval() {
    let broker = Broker::start();
    let connect = |client_id: &str, clean: bool, expiry: Option<u32>| {
        let mut c = connect_packet(Protocol::V5, client_id, clean, 0);
        c.properties.session_expiry_interval = expiry;
        c
    };
    // Expiry 1 s: gone 2.5 s after the disconnect.
    let (mut raw, _) = Raw::connect_with(broker.port, connect("exp-1", true, Some(1))).await;
    raw.subscribe(1, &[("exp/t", Q::AtLeastOnce)]).await;
    raw.disconnect().await;
    // Expiry 60 s: still there after the same wait.
    let (mut raw, _) = Raw::connect_with(broker.port, connect("exp-60", true, Some(60))).await;
    raw.subscribe(1, &[("exp/t", Q::AtLeastOnce)]).await;
    raw.disconnect().await;
    // No expiry property on 5.0 means 0: the session ends with the connection.
    let (mut raw, _) = Raw::connect_with(broker.port, connect("exp-0", true, None)).await;
    raw.subscribe(1, &[("exp/t", Q::AtLeastOnce)]).await;
    raw.disconnect().await;

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_a, ack) = Raw::connect_with(broker.port, connect("exp-1", false, Some(1))).await;
    assert_eq!(ack.code.0, 0);
    assert!(!ack.session_present, "expiry 1 s: session gone after 2.5 s");
    let (_b, ack) = Raw::connect_with(broker.port, connect("exp-60", false, Some(60))).await;
    assert!(ack.session_present, "expiry 60 s: session kept");
    let (_c, ack) = Raw::connect_with(broker.port, connect("exp-0", false, None)).await;
    assert!(
        !ack.session_present,
        "expiry 0: session ended at disconnect"
    );
}

#[tokio::test]
async fn offline_queue_is_bounded_and_keeps_the_newest() {
    let broker = Broker::start_with(&[("SHARDMQ_MQTT__MAX_QUEUED_MESSAGES", "5")]);
    let (mut sub, _) = Raw::connect(broker.port, Protocol::V3_1_1, "oq-sub", false).await;
    sub.subscribe(1, &[("oq/t", Q::AtLeastOnce)]).await;
    sub.disconnect().await;
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V3_1_1, "oq-pub", true).await;
    for i in 0..20u16 {
        publisher
            .publish(
                "oq/t",
                i.to_string().as_bytes(),
                Q::AtLeastOnce,
                i + 1,
                false,
            )
            .await;
    }
    let (mut sub, ack) = Raw::connect(broker.port, Protocol::V3_1_1, "oq-sub", false).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    while let Next::Packet(p) = sub.next(QUIET).await {
        let Packet::Publish(p) = p else {
            panic!("expected PUBLISH, got {p:?}")
        };
        sub.send(&puback(p.pkid)).await;
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    assert!(
        got.len() <= 5,
        "at most max_queued_messages = 5 delivered, got {got:?}"
    );
    assert_eq!(
        got,
        ["15", "16", "17", "18", "19"],
        "drop-oldest policy keeps the newest 5"
    );
}

#[tokio::test]
async fn inflight_window_and_dup_redelivery_on_reconnect() {
    let broker = Broker::start_with(&[("SHARDMQ_MQTT__MAX_INFLIGHT", "2")]);
    let (mut sub, _) = Raw::connect(broker.port, Protocol::V3_1_1, "if-sub", false).await;
    sub.subscribe(1, &[("if/t", Q::AtLeastOnce)]).await;
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V3_1_1, "if-pub", true).await;
    for i in 0..6u16 {
        publisher
            .publish("if/t", &[b'0' + i as u8], Q::AtLeastOnce, i + 1, false)
            .await;
    }
    // Never acknowledged: exactly the window's worth arrives.
    let first = [sub.expect_publish().await, sub.expect_publish().await];
    assert_eq!(&first[0].payload[..], b"0");
    assert_eq!(&first[1].payload[..], b"1");
    assert!(first.iter().all(|p| !p.dup && p.qos == Q::AtLeastOnce));
    sub.expect_silence(QUIET).await;
    drop(sub); // abrupt: no DISCONNECT, no PUBACK

    let (mut sub, ack) = Raw::connect(broker.port, Protocol::V3_1_1, "if-sub", false).await;
    assert!(ack.session_present);
    for (i, before) in first.iter().enumerate() {
        let p = sub.expect_publish().await;
        assert!(p.dup, "redelivered message {i} must have DUP=1: {p:?}");
        assert_eq!(p.pkid, before.pkid, "same packet identifier on redelivery");
        assert_eq!(p.payload, before.payload);
    }
    sub.expect_silence(QUIET).await;
    // Acknowledging makes room, one by one.
    let mut pending = vec![first[0].pkid, first[1].pkid];
    let mut rest = Vec::new();
    while let Some(pkid) = pending.pop() {
        sub.send(&puback(pkid)).await;
        if let Next::Packet(Packet::Publish(p)) = sub.next(Duration::from_secs(2)).await {
            assert!(!p.dup, "first delivery of {:?} has DUP=0", p.payload);
            pending.insert(0, p.pkid);
            rest.push(p.payload[0]);
        }
    }
    assert_eq!(
        rest, b"2345",
        "the rest arrive in order as the window opens"
    );
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn takeover_v311_repeated_keeps_the_session() {
    let broker = Broker::start();
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V3_1_1, "tk4-pub", true).await;
    let (mut current, _) = Raw::connect(broker.port, Protocol::V3_1_1, "tk4", false).await;
    current.subscribe(1, &[("tk4/t", Q::AtLeastOnce)]).await;
    // 20 fresh TCP connections: the kernel spreads them over both shards, so the takeover
    // crosses shards many times (all on one shard: probability 2^-20).
    for i in 0..20u16 {
        let (mut next, ack) = Raw::connect(broker.port, Protocol::V3_1_1, "tk4", false).await;
        assert!(ack.session_present, "takeover {i}: session present");
        let before_close = current.expect_closed(WAIT).await;
        assert!(
            before_close.is_empty(),
            "3.1.1: old connection just closes, got {before_close:?}"
        );
        publisher
            .publish("tk4/t", &i.to_be_bytes(), Q::AtLeastOnce, i + 1, false)
            .await;
        let mut p = next.expect_publish().await;
        // The previous message's PUBACK may still sit unread in the old connection when the
        // takeover happens: that message is then still in flight and comes again, as DUP
        // (at-least-once). Acknowledge it and look at the next one.
        if i > 0 && p.dup && p.payload[..] == (i - 1).to_be_bytes() {
            next.send(&puback(p.pkid)).await;
            p = next.expect_publish().await;
        }
        assert_eq!(
            p.payload[..],
            i.to_be_bytes(),
            "takeover {i}: delivered to the new connection"
        );
        next.send(&puback(p.pkid)).await;
        current = next;
    }
}

#[tokio::test]
async fn takeover_v5_disconnects_the_old_connection_with_0x8e() {
    let broker = Broker::start();
    let connect = |clean: bool| {
        let mut c = connect_packet(Protocol::V5, "tk5", clean, 0);
        c.properties.session_expiry_interval = Some(60);
        c
    };
    let (mut publisher, _) = Raw::connect(broker.port, Protocol::V5, "tk5-pub", true).await;
    let (mut current, _) = Raw::connect_with(broker.port, connect(true)).await;
    current.subscribe(1, &[("tk5/t", Q::AtLeastOnce)]).await;
    for i in 0..10u16 {
        let (mut next, ack) = Raw::connect_with(broker.port, connect(false)).await;
        assert_eq!(ack.code.0, 0);
        assert!(ack.session_present, "takeover {i}: session present");
        match current.expect_closed(WAIT).await.as_slice() {
            [Packet::Disconnect(d)] => assert_eq!(d.reason.0, 0x8E, "Session taken over"),
            other => panic!("takeover {i}: expected DISCONNECT 0x8E, got {other:?}"),
        }
        publisher
            .publish("tk5/t", &i.to_be_bytes(), Q::AtLeastOnce, i + 1, false)
            .await;
        let mut p = next.expect_publish().await;
        // As in the 3.1.1 test: a PUBACK still unread at the takeover leaves the previous
        // message in flight, and it comes again as DUP (at-least-once; seen once in CI).
        if i > 0 && p.dup && p.payload[..] == (i - 1).to_be_bytes() {
            next.send(&puback(p.pkid)).await;
            p = next.expect_publish().await;
        }
        assert_eq!(p.payload[..], i.to_be_bytes(), "takeover {i}");
        next.send(&puback(p.pkid)).await;
        current = next;
    }
    // A clean-start takeover discards the session: no subscription any more.
    let (mut next, ack) = Raw::connect_with(broker.port, connect(true)).await;
    assert!(!ack.session_present);
    current.expect_closed(WAIT).await;
    publisher
        .publish("tk5/t", b"gone", Q::AtLeastOnce, 100, false)
        .await;
    next.expect_silence(QUIET).await;
}
