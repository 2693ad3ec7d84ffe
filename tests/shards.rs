//! Thread-per-core: connections spread over both shards, and messages, routes, retained
//! messages and sessions cross between them.

mod common;

use common::*;
use rumqttc::QoS;
use shardmq_codec::{Packet, Protocol, QoS as Q};
use std::collections::HashSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_shards_serve_clients_and_every_message_arrives_exactly_once() {
    every_message_arrives_exactly_once(&[]).await;
}

/// The first connection driver (`shard.driver = "tasks"`, kept for kernels before 6.0) still
/// serves both shards; every other test runs on the default `"uring"` driver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tasks_driver_serves_clients_and_every_message_arrives_exactly_once() {
    every_message_arrives_exactly_once(&[("SHARDMQ_SHARD__DRIVER", "tasks")]).await;
}

async fn every_message_arrives_exactly_once(env: &[(&str, &str)]) {
    const N: usize = 40;
    let broker = Broker::start_with(env);
    let mut subs = Vec::new();
    for i in 0..N {
        let (mut s, _) = V4::connect(broker.port, &format!("fan-sub-{i}"), true).await;
        assert_eq!(
            s.subscribe("fan/+", QoS::AtLeastOnce).await,
            Some(QoS::AtLeastOnce)
        );
        subs.push(s);
    }
    let mut pubs = Vec::new();
    for i in 0..N {
        pubs.push(
            V4::connect(broker.port, &format!("fan-pub-{i}"), true)
                .await
                .0,
        );
    }
    // $SYS figures are republished every 100 ms; give them two rounds.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let figures = shard_connections(broker.port, 2).await;
    assert!(
        figures[&0] > 0 && figures[&1] > 0,
        "both shards must hold connections: {figures:?}"
    );
    assert!(
        figures[&0] + figures[&1] >= 2 * N as u64,
        "connections counted: {figures:?}"
    );

    for (i, p) in pubs.iter_mut().enumerate() {
        p.publish(&format!("fan/{i}"), QoS::AtLeastOnce, false, i.to_string())
            .await;
    }
    let receive_all = async {
        for (s_i, s) in subs.iter_mut().enumerate() {
            let mut seen = HashSet::new();
            while seen.len() < N {
                let p = match s.next_publish(Duration::from_secs(10)).await {
                    Some(p) => p,
                    None => panic!("subscriber {s_i} got {} of {N} messages", seen.len()),
                };
                let body = String::from_utf8(p.payload.to_vec()).unwrap();
                assert_eq!(p.topic, format!("fan/{body}"));
                assert!(
                    seen.insert(body.clone()),
                    "subscriber {s_i} got {body} twice"
                );
            }
        }
    };
    bounded(Duration::from_secs(30), "fan-out delivery", receive_all).await;
    for (s_i, s) in subs.iter_mut().enumerate() {
        if let Some(p) = s.next_publish(Duration::from_millis(10)).await {
            panic!("subscriber {s_i}: duplicate or extra delivery {p:?}");
        }
    }
}

#[tokio::test]
async fn publish_right_after_suback_from_the_other_shard_is_delivered() {
    let broker = Broker::start();
    let (mut on0, _) = connect_on_shard(broker.port, 0).await;
    let (mut on1, _) = connect_on_shard(broker.port, 1).await;
    for i in 0..20u16 {
        // Alternate: subscriber on shard 0 and publisher on shard 1, then the reverse.
        let (sub, publisher) = if i % 2 == 0 {
            (&mut on0, &mut on1)
        } else {
            (&mut on1, &mut on0)
        };
        let topic = format!("sync/{i}");
        assert_eq!(
            sub.subscribe(i + 1, &[(&topic, Q::AtLeastOnce)]).await,
            vec![1]
        );
        publisher
            .publish(&topic, b"now", Q::AtLeastOnce, i + 1, false)
            .await;
        match sub.next(WAIT).await {
            Next::Packet(Packet::Publish(p)) => {
                assert_eq!(p.topic.as_str(), topic);
                sub.send(&puback(p.pkid)).await;
            }
            other => panic!(
                "round {i}: publish from the other shard right after SUBACK not delivered: {other:?}"
            ),
        }
    }
}

#[tokio::test]
async fn retained_message_is_visible_on_the_other_shard_right_after_puback() {
    let broker = Broker::start();
    let (mut on0, _) = connect_on_shard(broker.port, 0).await;
    let (mut on1, _) = connect_on_shard(broker.port, 1).await;
    for i in 0..20u16 {
        let (publisher, sub) = if i % 2 == 0 {
            (&mut on0, &mut on1)
        } else {
            (&mut on1, &mut on0)
        };
        let topic = format!("rv/{i}");
        publisher
            .publish(&topic, b"kept", Q::AtLeastOnce, i + 1, true)
            .await;
        assert_eq!(
            sub.subscribe(i + 1, &[(&topic, Q::AtLeastOnce)]).await,
            vec![1]
        );
        match sub.next(WAIT).await {
            Next::Packet(Packet::Publish(p)) => {
                assert!(p.retain);
                assert_eq!(&p.payload[..], b"kept");
                sub.send(&puback(p.pkid)).await;
            }
            other => panic!(
                "round {i}: retained message acknowledged on one shard but not delivered on \
                 subscribe on the other: {other:?}"
            ),
        }
    }
}

#[tokio::test]
async fn resumed_session_gets_messages_published_right_after_connack() {
    let broker = Broker::start();
    let (mut p0, _) = connect_on_shard(broker.port, 0).await;
    let (mut p1, _) = connect_on_shard(broker.port, 1).await;
    let (mut current, _) = Raw::connect(broker.port, Protocol::V3_1_1, "resume", false).await;
    current.subscribe(1, &[("resume/t", Q::AtLeastOnce)]).await;
    let mut lost = Vec::new();
    // Each round loses with a small probability when the bug is present; 120 rounds make it
    // show in most runs. Stop at the third loss to bound the time spent waiting.
    for i in 0..120u16 {
        if lost.len() >= 3 {
            break;
        }
        let (mut next, ack) = Raw::connect(broker.port, Protocol::V3_1_1, "resume", false).await;
        assert!(ack.session_present, "round {i}: session present");
        // Publish from both shards the moment CONNACK is in: one of them is not the shard
        // that now holds the session.
        p0.send(&publish_packet(
            "resume/t",
            &[0, i as u8],
            Q::AtLeastOnce,
            i + 1,
            false,
        ))
        .await;
        p1.send(&publish_packet(
            "resume/t",
            &[1, i as u8],
            Q::AtLeastOnce,
            i + 1,
            false,
        ))
        .await;
        let mut got = Vec::new();
        while got.len() < 2 {
            match next.next(Duration::from_secs(2)).await {
                Next::Packet(Packet::Publish(p)) => {
                    next.send(&puback(p.pkid)).await;
                    // A message of an earlier round whose PUBACK the broker had not read
                    // before the takeover comes again (DUP): at-least-once, not this round's.
                    if p.payload[1] == i as u8 {
                        got.push(p.payload[0]);
                    }
                }
                _ => break,
            }
        }
        for from in [0u8, 1] {
            if !got.contains(&from) {
                lost.push((i, from));
            }
        }
        for p in [&mut p0, &mut p1] {
            assert!(matches!(p.expect(WAIT).await, Packet::PubAck(_)));
        }
        current.expect_closed(WAIT).await;
        current = next;
    }
    assert!(
        lost.is_empty(),
        "QoS 1 messages published right after CONNACK (session present) were lost, as \
         (round, publisher shard): {lost:?}"
    );
}
