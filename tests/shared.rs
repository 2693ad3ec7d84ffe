//! Shared subscriptions (`$share/{group}/{filter}`, `$queue/{filter}`): each message goes to
//! exactly one member of each group, across both shards, by the configured strategy; members
//! that leave hand their unacknowledged messages to the others.

mod common;

use common::*;
use rumqttc::v5::mqttbytes::QoS;
use shardmq_codec::{Packet, Protocol, QoS as Q, ReasonCode};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How long a member must stay silent for its inbox to count as complete.
const SETTLE: Duration = Duration::from_millis(500);

/// Payloads a rumqttc v5 client receives until it has been silent for [`SETTLE`].
async fn drain(c: &mut V5) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(p) = c.next_publish(SETTLE).await {
        got.push(String::from_utf8(p.payload.to_vec()).expect("UTF-8 payload"));
    }
    got
}

/// Payloads a raw client receives until silent for [`SETTLE`], acknowledging QoS 1.
async fn drain_raw(c: &mut Raw) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        match c.next(SETTLE).await {
            Next::Packet(Packet::Publish(p)) => {
                if p.qos == Q::AtLeastOnce {
                    c.send(&puback(p.pkid)).await;
                }
                got.push(String::from_utf8(p.payload.to_vec()).expect("UTF-8 payload"));
            }
            Next::Timeout => return got,
            other => panic!("raw member: {other:?}"),
        }
    }
}

async fn member(port: u16, id: &str, filter: &str) -> V5 {
    let (mut c, _) = V5::connect(port, id, true).await;
    assert_eq!(
        c.subscribe(filter, QoS::AtLeastOnce).await,
        Some(QoS::AtLeastOnce),
        "{id} subscribing {filter}"
    );
    c
}

async fn publish_n(publisher: &mut V5, topic: impl Fn(usize) -> String, n: usize) {
    for i in 0..n {
        publisher
            .publish(&topic(i), QoS::AtLeastOnce, false, i.to_string())
            .await;
    }
}

/// Asserts the members' inboxes are disjoint and together hold exactly `0..n`.
fn assert_partition(inboxes: &[Vec<String>], n: usize) {
    let mut seen = BTreeSet::new();
    for (m, inbox) in inboxes.iter().enumerate() {
        for p in inbox {
            assert!(
                seen.insert(p.clone()),
                "message {p} delivered twice (member {m}): {inboxes:?}"
            );
        }
    }
    let all: BTreeSet<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(
        seen, all,
        "every message exactly once across the group: {inboxes:?}"
    );
}

#[tokio::test]
async fn connack_announces_shared_subscriptions() {
    let broker = Broker::start();
    let (_c, ack) = V5::connect(broker.port, "announce", true).await;
    let available = ack
        .properties
        .and_then(|p| p.shared_subscription_available)
        .unwrap_or(1);
    assert_eq!(available, 1, "Shared Subscription Available");
}

#[tokio::test]
async fn round_robin_gives_each_message_to_one_member_and_spreads_evenly() {
    const N: usize = 60;
    let broker = Broker::start();
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(member(broker.port, &format!("rr-{i}"), "$share/g/rr/+").await);
    }
    let (mut publisher, _) = V5::connect(broker.port, "rr-pub", true).await;
    publish_n(&mut publisher, |i| format!("rr/{}", i % 7), N).await;
    let mut inboxes = Vec::new();
    for m in &mut members {
        inboxes.push(drain(m).await);
    }
    assert_partition(&inboxes, N);
    for (i, inbox) in inboxes.iter().enumerate() {
        assert!(
            (N / 3 - 5..=N / 3 + 5).contains(&inbox.len()),
            "member {i} got {} of {N}: round robin is not even: {:?}",
            inbox.len(),
            inboxes.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn every_group_and_every_plain_subscriber_gets_each_message() {
    const N: usize = 30;
    let broker = Broker::start();
    let mut g = vec![
        member(broker.port, "two-g0", "$share/g/two/#").await,
        member(broker.port, "two-g1", "$share/g/two/#").await,
    ];
    let mut h = vec![
        member(broker.port, "two-h0", "$share/h/two/+").await,
        member(broker.port, "two-h1", "$share/h/two/+").await,
        member(broker.port, "two-h2", "$share/h/two/+").await,
    ];
    let mut plain = member(broker.port, "two-plain", "two/+").await;
    let (mut publisher, _) = V5::connect(broker.port, "two-pub", true).await;
    publish_n(&mut publisher, |_| "two/t".to_owned(), N).await;
    let mut inboxes = Vec::new();
    for m in &mut g {
        inboxes.push(drain(m).await);
    }
    assert_partition(&inboxes, N);
    let mut inboxes = Vec::new();
    for m in &mut h {
        inboxes.push(drain(m).await);
    }
    assert_partition(&inboxes, N);
    assert_partition(&[drain(&mut plain).await], N);
}

#[tokio::test]
async fn members_on_both_shards_share_one_group() {
    const N: usize = 40;
    let broker = Broker::start();
    let mut on0 = connect_on_shard(broker.port, 0).await.0;
    let mut on1 = connect_on_shard(broker.port, 1).await.0;
    for m in [&mut on0, &mut on1] {
        assert_eq!(
            m.subscribe(1, &[("$share/x/cross", Q::AtLeastOnce)]).await,
            vec![1]
        );
    }
    // Publishers on both shards, alternating.
    let mut p0 = connect_on_shard(broker.port, 0).await.0;
    let mut p1 = connect_on_shard(broker.port, 1).await.0;
    for i in 0..N {
        let p = if i % 2 == 0 { &mut p0 } else { &mut p1 };
        p.publish(
            "cross",
            i.to_string().as_bytes(),
            Q::AtLeastOnce,
            i as u16 + 1,
            false,
        )
        .await;
    }
    let inboxes = vec![drain_raw(&mut on0).await, drain_raw(&mut on1).await];
    assert_partition(&inboxes, N);
    assert!(
        inboxes.iter().all(|i| i.len() >= N / 4),
        "both shards' members get a share: {:?}",
        inboxes.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn hash_topic_keeps_each_topic_on_one_member() {
    let broker = Broker::start_with(&[("SHARDMQ_MQTT__SHARED_STRATEGY", "hash_topic")]);
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(member(broker.port, &format!("ht-{i}"), "$share/g/ht/+").await);
    }
    let (mut publisher, _) = V5::connect(broker.port, "ht-pub", true).await;
    // 12 topics, 5 messages each, interleaved; the payload names the topic.
    for round in 0..5 {
        for t in 0..12 {
            publisher
                .publish(
                    &format!("ht/{t}"),
                    QoS::AtLeastOnce,
                    false,
                    format!("{t}.{round}"),
                )
                .await;
        }
    }
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0;
    for (m, c) in members.iter_mut().enumerate() {
        for p in drain(c).await {
            total += 1;
            let topic = p.split('.').next().unwrap().to_owned();
            if let Some(prev) = owner.insert(topic.clone(), m) {
                assert_eq!(prev, m, "topic ht/{topic} went to members {prev} and {m}");
            }
        }
    }
    assert_eq!(total, 60, "every message once");
    assert_eq!(owner.len(), 12);
    let used: BTreeSet<usize> = owner.values().copied().collect();
    assert!(
        used.len() >= 2,
        "12 topics all hashed onto one member: {owner:?}"
    );
}

#[tokio::test]
async fn sticky_sends_everything_to_one_member_until_it_leaves() {
    let broker = Broker::start_with(&[("SHARDMQ_MQTT__SHARED_STRATEGY", "sticky")]);
    let mut members = Vec::new();
    for i in 0..3 {
        members.push(member(broker.port, &format!("st-{i}"), "$share/g/st").await);
    }
    let (mut publisher, _) = V5::connect(broker.port, "st-pub", true).await;
    publish_n(&mut publisher, |_| "st".to_owned(), 20).await;
    let mut inboxes = Vec::new();
    for m in &mut members {
        inboxes.push(drain(m).await);
    }
    assert_partition(&inboxes, 20);
    let chosen = inboxes.iter().position(|i| i.len() == 20);
    let chosen = chosen.unwrap_or_else(|| panic!("sticky split the messages: {inboxes:?}"));
    members.remove(chosen).disconnect().await;
    publish_n(&mut publisher, |_| "st".to_owned(), 10).await;
    let mut inboxes = Vec::new();
    for m in &mut members {
        inboxes.push(drain(m).await);
    }
    assert_partition(&inboxes, 10);
    assert!(
        inboxes.iter().any(|i| i.len() == 10),
        "after the sticky member left, another one takes everything: {inboxes:?}"
    );
}

#[tokio::test]
async fn unacknowledged_messages_of_a_member_that_leaves_go_to_the_others() {
    const N: usize = 12;
    let broker = Broker::start_with(&[("SHARDMQ_MQTT__MAX_INFLIGHT", "2")]);
    // A member that never acknowledges: 2 messages in flight, the rest of its share queued.
    let (mut silent, _) = Raw::connect(broker.port, Protocol::V5, "rd-silent", true).await;
    assert_eq!(
        silent
            .subscribe(1, &[("$share/g/rd", Q::AtLeastOnce)])
            .await,
        vec![1]
    );
    let mut other = member(broker.port, "rd-other", "$share/g/rd").await;
    let (mut publisher, _) = V5::connect(broker.port, "rd-pub", true).await;
    publish_n(&mut publisher, |_| "rd".to_owned(), N).await;
    let mut held = 0;
    while let Next::Packet(Packet::Publish(_)) = silent.next(SETTLE).await {
        held += 1;
    }
    assert_eq!(
        held, 2,
        "the silent member fills its window and keeps the rest queued"
    );
    // It goes without DISCONNECT and without a session to keep its messages in.
    drop(silent);
    let got = drain(&mut other).await;
    assert_partition(&[got], N);
}

#[tokio::test]
async fn an_offline_persistent_member_is_skipped_while_another_is_online() {
    let broker = Broker::start();
    let persistent = || {
        let mut o = v5_options(broker.port, "pm-persistent", false);
        o.set_session_expiry_interval(Some(300));
        o
    };
    let (mut p, _) = V5::connect_opts(persistent()).await;
    assert_eq!(
        p.subscribe("$share/g/pm", QoS::AtLeastOnce).await,
        Some(QoS::AtLeastOnce)
    );
    p.disconnect().await;
    let mut online = member(broker.port, "pm-online", "$share/g/pm").await;
    let (mut publisher, _) = V5::connect(broker.port, "pm-pub", true).await;
    publish_n(&mut publisher, |_| "pm".to_owned(), 10).await;
    assert_partition(&[drain(&mut online).await], 10);
    // The only online member leaves: now the offline member's session keeps the messages.
    online.disconnect().await;
    for i in 10..15 {
        publisher
            .publish("pm", QoS::AtLeastOnce, false, i.to_string())
            .await;
    }
    let (mut p, ack) = V5::connect_opts(persistent()).await;
    assert!(ack.session_present);
    let mut got = drain(&mut p).await;
    // As a set: a publish that reached the online member's shard while its DISCONNECT was
    // being handled is handed back to the group from there, after later ones went straight to
    // the offline member (order holds per member, not across a member leaving; seen once in CI).
    got.sort();
    let want: Vec<String> = (10..15).map(|i| i.to_string()).collect();
    assert_eq!(
        got, want,
        "queued for the offline member, nothing from before"
    );
}

#[tokio::test]
async fn queue_prefix_is_a_shared_group() {
    const N: usize = 20;
    let broker = Broker::start();
    let mut a = member(broker.port, "q-a", "$queue/jobs/+").await;
    let mut b = member(broker.port, "q-b", "$queue/jobs/+").await;
    let (mut publisher, _) = V5::connect(broker.port, "q-pub", true).await;
    publish_n(&mut publisher, |i| format!("jobs/{i}"), N).await;
    let inboxes = vec![drain(&mut a).await, drain(&mut b).await];
    assert_partition(&inboxes, N);
    assert!(inboxes.iter().all(|i| !i.is_empty()), "{inboxes:?}");
}

#[tokio::test]
async fn retained_messages_are_not_sent_to_shared_subscriptions() {
    let broker = Broker::start();
    let (mut publisher, _) = V5::connect(broker.port, "ret-pub", true).await;
    publisher
        .publish("ret/t", QoS::AtLeastOnce, true, "kept")
        .await;
    let mut shared = member(broker.port, "ret-shared", "$share/g/ret/#").await;
    let mut plain = member(broker.port, "ret-plain", "ret/#").await;
    let got = plain.expect_publish().await;
    assert!(
        got.retain,
        "the plain subscription gets the retained message"
    );
    if let Some(p) = shared.next_publish(QUIET).await {
        panic!("retained message sent to a shared subscription: {p:?}");
    }
}

#[tokio::test]
async fn v311_clients_can_use_share() {
    use rumqttc::QoS as Q4;
    const N: usize = 20;
    let broker = Broker::start();
    let mut members = Vec::new();
    for i in 0..2 {
        let (mut c, _) = V4::connect(broker.port, &format!("v4-{i}"), true).await;
        assert_eq!(
            c.subscribe("$share/g/v4/t", Q4::AtLeastOnce).await,
            Some(Q4::AtLeastOnce)
        );
        members.push(c);
    }
    let (mut publisher, _) = V4::connect(broker.port, "v4-pub", true).await;
    for i in 0..N {
        publisher
            .publish("v4/t", Q4::AtLeastOnce, false, i.to_string())
            .await;
    }
    let mut inboxes = Vec::new();
    for m in &mut members {
        let mut got = Vec::new();
        while let Some(p) = m.next_publish(SETTLE).await {
            got.push(String::from_utf8(p.payload.to_vec()).unwrap());
        }
        inboxes.push(got);
    }
    assert_partition(&inboxes, N);
    assert!(inboxes.iter().all(|i| !i.is_empty()), "{inboxes:?}");
}

#[tokio::test]
async fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let broker = Broker::start();
    let (mut c, _) = Raw::connect(broker.port, Protocol::V5, "nl", true).await;
    let mut packet = subscribe_packet(1, &[("$share/g/nl", Q::AtLeastOnce)]);
    let Packet::Subscribe(s) = &mut packet else {
        unreachable!()
    };
    s.filters[0].options.no_local = true;
    c.send(&packet).await;
    let got = c.expect_closed(WAIT).await;
    assert!(
        matches!(&got[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::PROTOCOL_ERROR),
        "DISCONNECT 0x82, then close: {got:?}"
    );
}

#[tokio::test]
async fn malformed_shared_filters_are_refused() {
    let broker = Broker::start();
    let (mut c, _) = Raw::connect(broker.port, Protocol::V5, "bad-share", true).await;
    let codes = c
        .subscribe(
            1,
            &[
                ("$share/g/", Q::AtLeastOnce),
                ("$share//t", Q::AtLeastOnce),
                ("$share/g+/t", Q::AtLeastOnce),
                ("$share/g/ok", Q::AtLeastOnce),
            ],
        )
        .await;
    assert_eq!(codes, vec![0x8F, 0x8F, 0x8F, 1]);
}
