//! The interop suite's scenarios (see `tests/interop/run.sh`) driven by rumqttc, MQTT 3.1.1 (its
//! v4 API) and 5.0: each test starts its own broker.
//!
//! Every test prints `@@ PASS|FAIL rumqttc <version>/<scenario> [:: detail]` (seen with
//! `--nocapture`, which the interop driver reads). A scenario listed in `tests/interop/xfail`
//! (or in `INTEROP_XFAIL`, which replaces that list) may fail without failing the test.

mod common;

use bytes::Bytes;
use common::*;
use rumqttc::v5::mqttbytes::v5::{Packet as P5, PublishProperties, SubscribeReasonCode as Code5};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::QoS as Q4;
use std::future::Future;
use std::time::Duration;

const CLIENT: &str = "rumqttc";

fn xfail_names() -> Vec<String> {
    if let Ok(list) = std::env::var("INTEROP_XFAIL") {
        return list.split_whitespace().map(str::to_owned).collect();
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/xfail");
    let text = std::fs::read_to_string(path).expect("read tests/interop/xfail");
    text.lines()
        .filter_map(|l| l.split('#').next()?.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn expected_to_fail(full: &str) -> bool {
    let name = full.split_once('/').map_or(full, |(_, n)| n);
    let accepted = [
        name.to_owned(),
        full.to_owned(),
        format!("{CLIENT}:{name}"),
        format!("{CLIENT}:{full}"),
    ];
    xfail_names().iter().any(|e| accepted.contains(e))
}

/// Runs one scenario in its own task, prints its line, and fails the test unless the scenario
/// passed or is expected to fail.
async fn scenario(full: &str, body: impl Future<Output = ()> + Send + 'static) {
    match tokio::spawn(body).await {
        Ok(()) => println!("@@ PASS {CLIENT} {full}"),
        Err(e) => {
            let detail = match e.try_into_panic() {
                Ok(p) => p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into()),
                Err(e) => e.to_string(),
            };
            println!("@@ FAIL {CLIENT} {full} :: {}", detail.replace('\n', " "));
            assert!(
                expected_to_fail(full),
                "{full}: {detail} (not listed in tests/interop/xfail)"
            );
        }
    }
}

// ---- helpers ----------------------------------------------------------------------------------

fn v4_persistent(port: u16, id: &str) -> rumqttc::MqttOptions {
    v4_options(port, id, false)
}

fn v5_persistent(port: u16, id: &str) -> rumqttc::v5::MqttOptions {
    let mut o = v5_options(port, id, false);
    o.set_session_expiry_interval(Some(60));
    o
}

/// Publishes with properties and, for QoS 1, waits for the PUBACK.
async fn publish5(c: &mut V5, topic: &str, payload: &'static [u8], props: PublishProperties) {
    c.client
        .publish_with_properties(topic, Q5::AtLeastOnce, false, payload, props)
        .await
        .expect("queue PUBLISH");
    let acked = c
        .inbox
        .wait_for(WAIT, |p| matches!(p, P5::PubAck(_)).then_some(()))
        .await;
    assert!(
        acked.is_some(),
        "publish to {topic:?} not acknowledged: {:?}",
        c.inbox.error
    );
}

fn payload_for(qos: u8) -> Vec<u8> {
    (0..=255u8).rev().chain([qos]).collect()
}

// ---- MQTT 3.1.1 -------------------------------------------------------------------------------

#[tokio::test]
async fn v311_connect() {
    scenario("v311/connect", async {
        let broker = Broker::start();
        let (c, ack) = V4::connect(broker.port, "rumqttc-v311-connect", true).await;
        assert!(!ack.session_present);
        c.disconnect().await;
    })
    .await;
}

#[tokio::test]
async fn v311_qos() {
    scenario("v311/qos", async {
        let broker = Broker::start();
        let (mut a, _) = V4::connect(broker.port, "rumqttc-v311-qos-a", true).await;
        let (mut b, _) = V4::connect(broker.port, "rumqttc-v311-qos-b", true).await;
        assert_eq!(
            a.subscribe("qos/v311/to-a/#", Q4::ExactlyOnce).await,
            Some(Q4::ExactlyOnce)
        );
        assert_eq!(
            b.subscribe("qos/v311/to-b/#", Q4::ExactlyOnce).await,
            Some(Q4::ExactlyOnce)
        );
        for (i, qos) in [Q4::AtMostOnce, Q4::AtLeastOnce, Q4::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            let payload = payload_for(i as u8);
            let topic = format!("qos/v311/to-a/{i}");
            b.publish(&topic, qos, false, payload.clone()).await;
            let got = a.expect_publish().await;
            assert_eq!((got.topic.as_str(), got.qos), (topic.as_str(), qos));
            assert_eq!(&got.payload[..], &payload[..], "payload bytes on {topic}");
            let topic = format!("qos/v311/to-b/{i}");
            a.publish(&topic, qos, false, payload.clone()).await;
            let got = b.expect_publish().await;
            assert_eq!((got.topic.as_str(), got.qos), (topic.as_str(), qos));
            assert_eq!(&got.payload[..], &payload[..], "payload bytes on {topic}");
        }
        a.expect_no_publish(QUIET).await;
        b.expect_no_publish(QUIET).await;
    })
    .await;
}

#[tokio::test]
async fn v311_retained() {
    scenario("v311/retained", async {
        let broker = Broker::start();
        let t = "retained/v311/t";
        let (mut p, _) = V4::connect(broker.port, "rumqttc-v311-ret-pub", true).await;
        p.publish(t, Q4::AtLeastOnce, true, "kept").await;
        let (mut r1, _) = V4::connect(broker.port, "rumqttc-v311-ret-sub1", true).await;
        r1.subscribe(t, Q4::AtLeastOnce).await;
        let m = r1.expect_publish().await;
        assert_eq!(
            (m.topic.as_str(), &m.payload[..], m.retain),
            (t, &b"kept"[..], true)
        );
        p.publish(t, Q4::AtLeastOnce, true, "").await;
        let (mut r2, _) = V4::connect(broker.port, "rumqttc-v311-ret-sub2", true).await;
        r2.subscribe(t, Q4::AtLeastOnce).await;
        r2.expect_no_publish(QUIET).await;
    })
    .await;
}

#[tokio::test]
async fn v311_will() {
    scenario("v311/will", async {
        let broker = Broker::start();
        let t = "will/v311/t";
        let (mut sub, _) = V4::connect(broker.port, "rumqttc-v311-will-sub", true).await;
        sub.subscribe(t, Q4::AtLeastOnce).await;
        let mut o = v4_options(broker.port, "rumqttc-v311-willer", true);
        o.set_last_will(rumqttc::LastWill::new(t, "gone", Q4::AtLeastOnce, false));
        let (willer, _) = V4::connect_opts(o).await;
        drop(willer); // aborts the event loop: the socket closes with no DISCONNECT
        let m = sub.expect_publish().await;
        assert_eq!(
            (m.topic.as_str(), &m.payload[..], m.qos),
            (t, &b"gone"[..], Q4::AtLeastOnce)
        );
    })
    .await;
}

#[tokio::test]
async fn v311_persistent_session() {
    scenario("v311/persistent_session", async {
        let broker = Broker::start();
        let (t, id) = ("session/v311/t", "rumqttc-v311-persist");
        let (mut c, _) = V4::connect_opts(v4_persistent(broker.port, id)).await;
        c.subscribe(t, Q4::AtLeastOnce).await;
        c.disconnect().await;
        let (mut p, _) = V4::connect(broker.port, "rumqttc-v311-persist-pub", true).await;
        p.publish(t, Q4::AtLeastOnce, false, "while-offline").await;
        let (mut c, ack) = V4::connect_opts(v4_persistent(broker.port, id)).await;
        assert!(ack.session_present, "session present on reconnect");
        let m = c.expect_publish().await;
        assert_eq!(
            (m.topic.as_str(), &m.payload[..], m.qos),
            (t, &b"while-offline"[..], Q4::AtLeastOnce)
        );
    })
    .await;
}

// ---- MQTT 5.0 ---------------------------------------------------------------------------------

#[tokio::test]
async fn v5_connect() {
    scenario("v5/connect", async {
        let broker = Broker::start();
        let (c, ack) = V5::connect(broker.port, "rumqttc-v5-connect", true).await;
        assert!(!ack.session_present);
        c.disconnect().await;
    })
    .await;
}

#[tokio::test]
async fn v5_qos() {
    scenario("v5/qos", async {
        let broker = Broker::start();
        let (mut a, _) = V5::connect(broker.port, "rumqttc-v5-qos-a", true).await;
        let (mut b, _) = V5::connect(broker.port, "rumqttc-v5-qos-b", true).await;
        assert_eq!(
            a.subscribe("qos/v5/to-a/#", Q5::ExactlyOnce).await,
            Some(Q5::ExactlyOnce)
        );
        assert_eq!(
            b.subscribe("qos/v5/to-b/#", Q5::ExactlyOnce).await,
            Some(Q5::ExactlyOnce)
        );
        for (i, qos) in [Q5::AtMostOnce, Q5::AtLeastOnce, Q5::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            let payload = payload_for(i as u8);
            let topic = format!("qos/v5/to-a/{i}");
            b.publish(&topic, qos, false, payload.clone()).await;
            let got = a.expect_publish().await;
            assert_eq!((&got.topic[..], got.qos), (topic.as_bytes(), qos));
            assert_eq!(&got.payload[..], &payload[..], "payload bytes on {topic}");
            let topic = format!("qos/v5/to-b/{i}");
            a.publish(&topic, qos, false, payload.clone()).await;
            let got = b.expect_publish().await;
            assert_eq!((&got.topic[..], got.qos), (topic.as_bytes(), qos));
            assert_eq!(&got.payload[..], &payload[..], "payload bytes on {topic}");
        }
        assert!(a.next_publish(QUIET).await.is_none(), "no extra deliveries");
        assert!(b.next_publish(QUIET).await.is_none(), "no extra deliveries");
    })
    .await;
}

#[tokio::test]
async fn v5_retained() {
    scenario("v5/retained", async {
        let broker = Broker::start();
        let t = "retained/v5/t";
        let (mut p, _) = V5::connect(broker.port, "rumqttc-v5-ret-pub", true).await;
        p.publish(t, Q5::AtLeastOnce, true, "kept").await;
        let (mut r1, _) = V5::connect(broker.port, "rumqttc-v5-ret-sub1", true).await;
        r1.subscribe(t, Q5::AtLeastOnce).await;
        let m = r1.expect_publish().await;
        assert_eq!(
            (&m.topic[..], &m.payload[..], m.retain),
            (t.as_bytes(), &b"kept"[..], true)
        );
        p.publish(t, Q5::AtLeastOnce, true, "").await;
        let (mut r2, _) = V5::connect(broker.port, "rumqttc-v5-ret-sub2", true).await;
        r2.subscribe(t, Q5::AtLeastOnce).await;
        assert!(
            r2.next_publish(QUIET).await.is_none(),
            "retained message was cleared"
        );
    })
    .await;
}

#[tokio::test]
async fn v5_will() {
    scenario("v5/will", async {
        let broker = Broker::start();
        let t = "will/v5/t";
        let (mut sub, _) = V5::connect(broker.port, "rumqttc-v5-will-sub", true).await;
        sub.subscribe(t, Q5::AtLeastOnce).await;
        let mut o = v5_options(broker.port, "rumqttc-v5-willer", true);
        o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
            t,
            "gone",
            Q5::AtLeastOnce,
            false,
            None,
        ));
        let (willer, _) = V5::connect_opts(o).await;
        drop(willer); // aborts the event loop: the socket closes with no DISCONNECT
        let m = sub.expect_publish().await;
        assert_eq!(
            (&m.topic[..], &m.payload[..], m.qos),
            (t.as_bytes(), &b"gone"[..], Q5::AtLeastOnce)
        );
    })
    .await;
}

#[tokio::test]
async fn v5_persistent_session() {
    scenario("v5/persistent_session", async {
        let broker = Broker::start();
        let (t, id) = ("session/v5/t", "rumqttc-v5-persist");
        let (mut c, _) = V5::connect_opts(v5_persistent(broker.port, id)).await;
        c.subscribe(t, Q5::AtLeastOnce).await;
        c.disconnect().await;
        let (mut p, _) = V5::connect(broker.port, "rumqttc-v5-persist-pub", true).await;
        p.publish(t, Q5::AtLeastOnce, false, "while-offline").await;
        let (mut c, ack) = V5::connect_opts(v5_persistent(broker.port, id)).await;
        assert!(ack.session_present, "session present on reconnect");
        let m = c.expect_publish().await;
        assert_eq!(
            (&m.topic[..], &m.payload[..], m.qos),
            (t.as_bytes(), &b"while-offline"[..], Q5::AtLeastOnce)
        );
    })
    .await;
}

#[tokio::test]
async fn v5_shared_subscription() {
    scenario("v5/shared_subscription", async {
        let broker = Broker::start();
        let (f, t, n) = ("$share/g/shared/v5/t", "shared/v5/t", 10);
        let (mut m1, _) = V5::connect(broker.port, "rumqttc-v5-shared-1", true).await;
        let (mut m2, _) = V5::connect(broker.port, "rumqttc-v5-shared-2", true).await;
        for m in [&mut m1, &mut m2] {
            let code = m.suback(f, Q5::AtLeastOnce).await;
            assert_eq!(code, Code5::Success(Q5::AtLeastOnce), "SUBACK for {f}");
        }
        let (mut p, _) = V5::connect(broker.port, "rumqttc-v5-shared-pub", true).await;
        for i in 0..n {
            p.publish(t, Q5::AtLeastOnce, false, format!("m{i}")).await;
        }
        let mut got: [Vec<String>; 2] = Default::default();
        let deadline = tokio::time::Instant::now() + WAIT;
        // Collect until every message came, then watch a while longer for duplicates.
        while tokio::time::Instant::now() < deadline {
            let quiet = got[0].len() + got[1].len() >= n;
            let within = if quiet {
                QUIET
            } else {
                Duration::from_millis(20)
            };
            let mut any = false;
            for (i, m) in [&mut m1, &mut m2].into_iter().enumerate() {
                if let Some(p) = m.next_publish(within / 2).await {
                    got[i].push(String::from_utf8_lossy(&p.payload).into_owned());
                    any = true;
                }
            }
            if quiet && !any {
                break;
            }
        }
        let mut all: Vec<String> = got.concat();
        all.sort();
        let mut want: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        want.sort();
        assert_eq!(
            all, want,
            "each message to exactly one member: member 1 got {:?}, member 2 got {:?}",
            got[0], got[1]
        );
    })
    .await;
}

#[tokio::test]
async fn v5_topic_alias() {
    scenario("v5/topic_alias", async {
        let broker = Broker::start();
        // Client to broker: alias 1 set with the topic, then the alias alone. Broker to client:
        // the subscriber allows 10 aliases. rumqttc 0.25 hands out an incoming PUBLISH before it
        // resolves its alias (the event is queued first), so the test resolves them itself.
        let t = "alias/v5/a/rather/long/topic/name";
        let mut o = v5_options(broker.port, "rumqttc-v5-alias-sub", true);
        o.set_topic_alias_max(Some(10));
        let (mut sub, _) = V5::connect_opts(o).await;
        sub.subscribe(t, Q5::AtLeastOnce).await;
        let (mut p, ack) = V5::connect(broker.port, "rumqttc-v5-alias-pub", true).await;
        let max = ack.properties.as_ref().and_then(|p| p.topic_alias_max);
        assert!(
            max.unwrap_or(0) >= 1,
            "CONNACK Topic Alias Maximum is {max:?}: rumqttc may not send aliases"
        );
        let alias = || PublishProperties {
            topic_alias: Some(1),
            ..Default::default()
        };
        publish5(&mut p, t, b"first", alias()).await;
        publish5(&mut p, "", b"by-alias", alias()).await;
        publish5(&mut p, t, b"by-topic", PublishProperties::default()).await;
        let mut aliases = std::collections::HashMap::new();
        let mut alias_only = 0;
        for want in [&b"first"[..], b"by-alias", b"by-topic"] {
            let m = sub.expect_publish().await;
            let mut topic = m.topic.clone();
            if let Some(a) = m.properties.as_ref().and_then(|p| p.topic_alias) {
                assert!(
                    (1..=10).contains(&a),
                    "broker used alias {a}, allowed 1..=10"
                );
                if topic.is_empty() {
                    alias_only += 1;
                    topic = aliases
                        .get(&a)
                        .cloned()
                        .expect("alias the broker set before");
                } else {
                    aliases.insert(a, topic.clone());
                }
            }
            assert_eq!((&topic[..], &m.payload[..]), (t.as_bytes(), want));
        }
        assert!(
            alias_only >= 1,
            "the broker sent no alias-only PUBLISH to a subscriber allowing 10 aliases"
        );
    })
    .await;
}

#[tokio::test]
async fn v5_message_expiry() {
    scenario("v5/message_expiry", async {
        let broker = Broker::start();
        let (t, id) = ("expiry/v5/t", "rumqttc-v5-expiry");
        let (mut c, _) = V5::connect_opts(v5_persistent(broker.port, id)).await;
        c.subscribe(t, Q5::AtLeastOnce).await;
        c.disconnect().await;
        // Let the broker read the DISCONNECT before publishing: a message already sent to the
        // old connection is in flight, and in-flight messages are resent on reconnect whatever
        // their expiry (MQTT 5.0 §3.3.2.3.3 only deletes copies not yet sent).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (mut p, _) = V5::connect(broker.port, "rumqttc-v5-expiry-pub", true).await;
        let expiry = |secs| PublishProperties {
            message_expiry_interval: Some(secs),
            ..Default::default()
        };
        publish5(&mut p, t, b"short", expiry(1)).await;
        publish5(&mut p, t, b"long", expiry(60)).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (mut c, _) = V5::connect_opts(v5_persistent(broker.port, id)).await;
        let m = c.expect_publish().await;
        assert_eq!(
            &m.payload[..],
            b"long",
            "the 1 s message should have expired"
        );
        let remaining = m
            .properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval);
        assert!(
            matches!(remaining, Some(50..=58)),
            "remaining Message Expiry Interval {remaining:?} after 2.5 s waiting; expected 57 or 58"
        );
        assert!(c.next_publish(QUIET).await.is_none(), "no further message");
    })
    .await;
}

#[tokio::test]
async fn v5_request_response() {
    scenario("v5/request_response", async {
        let broker = Broker::start();
        let (req, resp) = ("rr/v5/request", "rr/v5/response/rumqttc");
        let corr = Bytes::from_static(b"\x00corr\xff\x47\x11");
        let (mut responder, _) = V5::connect(broker.port, "rumqttc-v5-responder", true).await;
        responder.subscribe(req, Q5::AtLeastOnce).await;
        let (mut requester, _) = V5::connect(broker.port, "rumqttc-v5-requester", true).await;
        requester.subscribe(resp, Q5::AtLeastOnce).await;
        let props = PublishProperties {
            response_topic: Some(resp.into()),
            correlation_data: Some(corr.clone()),
            ..Default::default()
        };
        publish5(&mut requester, req, b"question", props).await;
        let m = responder.expect_publish().await;
        let props = m.properties.clone().unwrap_or_default();
        assert_eq!(
            props.response_topic.as_deref(),
            Some(resp),
            "response topic passed through"
        );
        assert_eq!(
            props.correlation_data.as_ref(),
            Some(&corr),
            "correlation data passed through"
        );
        let answer = PublishProperties {
            correlation_data: props.correlation_data.clone(),
            ..Default::default()
        };
        let to = props.response_topic.clone().expect("response topic");
        publish5(&mut responder, &to, b"answer", answer).await;
        let r = requester.expect_publish().await;
        assert_eq!(
            (&r.topic[..], &r.payload[..]),
            (resp.as_bytes(), &b"answer"[..])
        );
        let got = r.properties.and_then(|p| p.correlation_data);
        assert_eq!(
            got.as_ref(),
            Some(&corr),
            "correlation data of the response"
        );
    })
    .await;
}
