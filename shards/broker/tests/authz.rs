//! The session's ACL checks, driven through its public API: a denied PUBLISH gets v5 0x87 and
//! is not routed (3.x: acknowledged, dropped), `acl_deny_action = disconnect` closes, a denied
//! SUBSCRIBE filter gets 0x87 (3.x 0x80), and a message the client may not read is dropped at
//! delivery (retained ones too).

use bytes::{Bytes, BytesMut};
use shardmq_broker::authz::{Authorizer, DenyAction};
use shardmq_broker::session::{accept_connect, Action, Delivery, DropReason, Session};
use shardmq_broker::{Limits, Message};
use shardmq_codec::{
    Connect, Decoder, Packet, Protocol, Publish, QoS, ReasonCode, Subscribe, SubscribeFilter,
    SubscriptionOptions,
};
use std::sync::Arc;
use std::time::Instant;

/// Publish under `out/`, subscribe and read under `in/`.
#[derive(Debug)]
struct Rules;

impl Authorizer for Rules {
    fn may_publish(&self, topic: &str) -> bool {
        topic.starts_with("out/")
    }
    fn may_subscribe(&self, filter: &str) -> bool {
        filter.starts_with("in/")
    }
    fn may_receive(&self, topic: &str) -> bool {
        topic.starts_with("in/")
    }
}

fn attached(protocol: Protocol, deny: DenyAction) -> (Session, Limits, BytesMut) {
    let limits = Limits::default();
    let connect = Connect {
        protocol,
        clean_start: true,
        keep_alive: 30,
        client_id: "c1".into(),
        will: None,
        username: Some("u".into()),
        password: None,
        properties: Default::default(),
    };
    let accepted = accept_connect(&connect, &limits, || "x".into()).expect("accepted");
    let mut session = Session::new("c1".into(), protocol, 0);
    session.set_authorizer(Some(Arc::new(Rules)), deny);
    let mut wire = BytesMut::new();
    session.attach(Instant::now(), &accepted, &limits, &mut wire);
    wire.clear();
    (session, limits, wire)
}

fn publish(qos: QoS, topic: &str) -> Packet {
    Packet::Publish(Box::new(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        pkid: 7,
        properties: Default::default(),
        payload: Bytes::from_static(b"x"),
    }))
}

fn packets(protocol: Protocol, wire: &mut BytesMut) -> Vec<Packet> {
    let mut decoder = Decoder::with_protocol(protocol, u32::MAX);
    let mut out = Vec::new();
    while let Some(p) = decoder.decode(wire).expect("valid output") {
        out.push(p);
    }
    out
}

#[test]
fn a_denied_publish_is_refused_with_0x87_on_v5_and_not_routed() {
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let (mut s, limits, mut wire) = attached(Protocol::V5, DenyAction::Ignore);
        let mut actions = Vec::new();
        s.handle(
            Instant::now(),
            publish(qos, "secret/x"),
            &limits,
            &mut wire,
            &mut actions,
        )
        .expect("not a protocol error");
        assert!(actions.is_empty(), "not routed: {actions:?}");
        let reason = match packets(Protocol::V5, &mut wire).as_slice() {
            [Packet::PubAck(a)] | [Packet::PubRec(a)] => a.reason,
            other => panic!("one acknowledgement expected, got {other:?}"),
        };
        assert_eq!(reason, ReasonCode::NOT_AUTHORIZED);
        // An allowed topic is routed and acknowledged with success.
        s.handle(
            Instant::now(),
            publish(qos, "out/x"),
            &limits,
            &mut wire,
            &mut actions,
        )
        .expect("allowed");
        assert!(matches!(actions.as_slice(), [Action::Publish(m)] if &*m.topic == "out/x"));
    }
}

#[test]
fn a_denied_publish_on_3_1_1_is_acknowledged_and_dropped() {
    let (mut s, limits, mut wire) = attached(Protocol::V3_1_1, DenyAction::Ignore);
    let mut actions = Vec::new();
    s.handle(
        Instant::now(),
        publish(QoS::AtLeastOnce, "secret/x"),
        &limits,
        &mut wire,
        &mut actions,
    )
    .expect("not a protocol error");
    assert!(actions.is_empty());
    assert!(
        matches!(packets(Protocol::V3_1_1, &mut wire).as_slice(), [Packet::PubAck(a)] if a.pkid == 7)
    );
}

#[test]
fn deny_action_disconnect_closes_with_0x87() {
    let (mut s, limits, mut wire) = attached(Protocol::V5, DenyAction::Disconnect);
    let mut actions = Vec::new();
    let close = s
        .handle(
            Instant::now(),
            publish(QoS::AtMostOnce, "secret/x"),
            &limits,
            &mut wire,
            &mut actions,
        )
        .expect_err("closes");
    assert_eq!(close.reason, ReasonCode::NOT_AUTHORIZED);
    assert!(actions.is_empty());
}

#[test]
fn a_denied_filter_gets_0x87_on_v5_and_0x80_on_3_1_1() {
    for (protocol, code) in [(Protocol::V5, 0x87), (Protocol::V3_1_1, 0x80)] {
        let (mut s, limits, mut wire) = attached(protocol, DenyAction::Ignore);
        let mut actions = Vec::new();
        let sub = Packet::Subscribe(Subscribe {
            pkid: 1,
            filters: ["in/+", "#", "$share/g/in/a", "$share/g/other"]
                .iter()
                .map(|f| SubscribeFilter {
                    filter: (*f).into(),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        ..Default::default()
                    },
                })
                .collect(),
            properties: Default::default(),
        });
        s.handle(Instant::now(), sub, &limits, &mut wire, &mut actions)
            .expect("not a protocol error");
        let subscribed: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Subscribe { filter, .. } => Some(filter.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(subscribed, ["in/+", "$share/g/in/a"]);
        let Some(Action::SubAck(ack)) = actions.last() else {
            panic!("SUBACK expected")
        };
        let codes: Vec<u8> = ack.reasons.iter().map(|r| r.0).collect();
        assert_eq!(codes, [1, code, 1, code], "{protocol:?}");
    }
}

#[test]
fn a_message_the_client_may_not_read_is_not_delivered_retained_or_not() {
    let (mut s, limits, mut wire) = attached(Protocol::V5, DenyAction::Ignore);
    let msg = |topic: &str| {
        Arc::new(Message {
            topic: topic.into(),
            payload: Bytes::from_static(b"m"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
            expires_at: None,
            publisher: "p".into(),
        })
    };
    let now = Instant::now();
    for retain in [false, true] {
        let d = s.deliver(
            now,
            &msg("secret/a"),
            QoS::AtLeastOnce,
            retain,
            &[],
            &limits,
            Some(&mut wire),
        );
        assert_eq!(d, Delivery::Dropped(DropReason::NotAuthorized));
    }
    assert!(wire.is_empty());
    let d = s.deliver(
        now,
        &msg("in/a"),
        QoS::AtLeastOnce,
        true,
        &[],
        &limits,
        Some(&mut wire),
    );
    assert_eq!(d, Delivery::Sent);
}
