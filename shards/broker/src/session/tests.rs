//! The session's inline size (paid by every idle connection) and the containers behind it:
//! the subscription map, and the flow state an idle session frees.

use super::*;
use bytes::Bytes;
use shardmq_codec::{Connect, PublishProperties};

#[test]
fn a_session_is_at_most_128_bytes() {
    // One per idle connection (and per offline session): keep what idle sessions do not use
    // behind pointers.
    assert!(
        std::mem::size_of::<Session>() <= 128,
        "Session is {} B",
        std::mem::size_of::<Session>()
    );
}

/// A v5 session attached to a connection, with its write buffer.
struct Attached {
    session: Session,
    limits: Limits,
    now: Instant,
    wire: BytesMut,
}

impl Attached {
    fn new(limits: Limits) -> Attached {
        let connect = Connect {
            protocol: Protocol::V5,
            clean_start: true,
            keep_alive: 30,
            client_id: "c1".into(),
            will: None,
            username: None,
            password: None,
            properties: Default::default(),
        };
        let accepted = accept_connect(&connect, &limits, || "x".into()).expect("accepted");
        let mut session = Session::new(accepted.client_id.clone(), Protocol::V5, 60);
        let now = Instant::now();
        let mut wire = BytesMut::new();
        session.attach(now, &accepted, &limits, &mut wire);
        Attached {
            session,
            limits,
            now,
            wire,
        }
    }

    fn handle(&mut self, packet: Packet) -> Vec<Action> {
        let mut actions = Vec::new();
        self.session
            .handle(self.now, packet, &self.limits, &mut self.wire, &mut actions)
            .expect("accepted packet");
        actions
    }

    fn deliver(&mut self, qos: QoS, online: bool) -> Delivery {
        let wire = online.then_some(&mut self.wire);
        self.session
            .deliver(self.now, &message(), qos, false, &[], &self.limits, wire)
    }

    fn ping(&mut self) {
        self.wire.clear();
        assert!(self.handle(Packet::PingReq).is_empty());
        assert_eq!(&self.wire[..], &[0xD0, 0x00], "PINGRESP");
    }
}

fn message() -> Arc<Message> {
    Arc::new(Message {
        topic: "t/1".into(),
        payload: Bytes::from_static(b"m"),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        publisher: "p".into(),
    })
}

fn ack(pkid: u16) -> Ack {
    Ack {
        pkid,
        reason: ReasonCode::SUCCESS,
        properties: Default::default(),
    }
}

fn publish(qos: QoS, pkid: u16, topic: &str, alias: Option<u16>) -> Packet {
    let properties = PublishProperties {
        topic_alias: alias,
        ..Default::default()
    };
    Packet::Publish(Box::new(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        pkid,
        properties,
        payload: Bytes::from_static(b"x"),
    }))
}

#[test]
fn an_idle_session_holds_no_flow_state() {
    let mut c = Attached::new(Limits::default());
    assert!(!c.session.holds_flow_state());
    c.handle(Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![shardmq_codec::SubscribeFilter {
            filter: "t/#".into(),
            options: SubscriptionOptions::default(),
        }],
        properties: Default::default(),
    }));
    // QoS 0 in both directions, without aliases, goes straight through.
    assert_eq!(c.deliver(QoS::AtMostOnce, true), Delivery::Sent);
    c.handle(publish(QoS::AtMostOnce, 0, "t/1", None));
    c.handle(publish(QoS::AtLeastOnce, 1, "t/1", None));
    assert!(!c.session.holds_flow_state());
    c.ping();
    c.session.detach();
    assert!(!c.session.holds_flow_state());
}

#[test]
fn ping_frees_the_flow_state_once_the_inflight_message_is_acknowledged() {
    let mut c = Attached::new(Limits::default());
    assert_eq!(c.deliver(QoS::AtLeastOnce, true), Delivery::Sent);
    assert_eq!(c.session.inflight_len(), 1);
    assert!(c.session.holds_flow_state());
    // A message inflight: trimming keeps it (and its packet id).
    c.ping();
    c.session.trim();
    assert!(c.session.holds_flow_state());
    assert_eq!(c.session.inflight_len(), 1);
    c.handle(Packet::PubAck(ack(1)));
    assert_eq!(c.session.inflight_len(), 0);
    c.ping();
    assert!(!c.session.holds_flow_state());
    // Packet ids go on from where they were, not from 1 again.
    assert_eq!(c.deliver(QoS::AtLeastOnce, true), Delivery::Sent);
    assert!(c.session.holds_flow_state());
    assert_eq!(
        c.session.inflight().map(|o| o.pkid).collect::<Vec<_>>(),
        [2]
    );
}

#[test]
fn detach_keeps_queued_and_inflight_messages_and_frees_the_rest() {
    let limits = Limits {
        max_inflight: 1,
        ..Limits::default()
    };
    let mut c = Attached::new(limits);
    assert_eq!(c.deliver(QoS::AtLeastOnce, true), Delivery::Sent);
    assert_eq!(c.deliver(QoS::AtLeastOnce, true), Delivery::Queued);
    c.session.detach();
    assert!(c.session.holds_flow_state());
    assert_eq!((c.session.inflight_len(), c.session.queued_len()), (1, 1));

    // Offline QoS 0 with the queue off: dropped, nothing allocated for it.
    let mut idle = Attached::new(Limits {
        max_queued_messages: 0,
        ..Limits::default()
    });
    idle.session.detach();
    assert_eq!(
        idle.deliver(QoS::AtMostOnce, false),
        Delivery::Dropped(DropReason::QueueFull)
    );
    assert!(!idle.session.holds_flow_state());
    // Offline with a queue: the message waits in the flow state, which detach then keeps.
    let mut offline = Attached::new(Limits::default());
    offline.session.detach();
    assert_eq!(offline.deliver(QoS::AtMostOnce, false), Delivery::Queued);
    offline.session.trim();
    assert!(offline.session.holds_flow_state());
    assert_eq!(offline.session.queued_len(), 1);
}

#[test]
fn qos_2_awaiting_pubrel_keeps_the_flow_state() {
    let mut c = Attached::new(Limits::default());
    assert_eq!(c.handle(publish(QoS::ExactlyOnce, 7, "t/1", None)).len(), 1);
    c.ping();
    assert!(c.session.holds_flow_state());
    // The repeat is recognised after the ping: acknowledged again, not routed.
    assert!(c
        .handle(publish(QoS::ExactlyOnce, 7, "t/1", None))
        .is_empty());
    c.handle(Packet::PubRel(ack(7)));
    c.ping();
    assert!(!c.session.holds_flow_state());
}

#[test]
fn inbound_topic_aliases_survive_a_ping_and_go_with_the_connection() {
    let mut c = Attached::new(Limits {
        max_topic_alias: 4,
        ..Limits::default()
    });
    c.handle(publish(QoS::AtMostOnce, 0, "t/1", Some(2)));
    c.ping();
    assert!(c.session.holds_flow_state());
    let actions = c.handle(publish(QoS::AtMostOnce, 0, "", Some(2)));
    assert!(
        matches!(&actions[..], [Action::Publish(m)] if m.topic.as_str() == "t/1"),
        "{actions:?}"
    );
    c.session.detach();
    assert!(!c.session.holds_flow_state());
}

#[test]
fn a_stored_session_without_messages_is_restored_without_flow_state() {
    let image = SessionImage::new("c1".into(), Protocol::V5, 60);
    assert!(!Session::from_image(image.clone()).holds_flow_state());
    let mut with_rel = image;
    with_rel.awaiting_rel.push(3);
    let restored = Session::from_image(with_rel);
    assert!(restored.holds_flow_state());
    assert_eq!(restored.awaiting_rel(), [3]);
}

fn sub(qos: QoS) -> Subscription {
    Subscription {
        options: SubscriptionOptions {
            qos,
            ..Default::default()
        },
        id: None,
    }
}

fn filters(m: &SubMap) -> Vec<&str> {
    m.iter().map(|(f, _)| f.as_str()).collect()
}

#[test]
fn an_empty_subscription_map_is_two_words() {
    assert!(std::mem::size_of::<SubMap>() <= 16);
}

#[test]
fn few_subscriptions_keep_their_order_through_replace_and_remove() {
    let mut m = SubMap::new();
    for f in ["a", "b", "c", "d"] {
        m.insert(f.into(), sub(QoS::AtMostOnce));
    }
    // Replacing keeps the entry's place and its options change.
    m.insert("b".into(), sub(QoS::ExactlyOnce));
    assert_eq!(filters(&m), ["a", "b", "c", "d"]);
    assert_eq!(m.get("b").map(|s| s.options.qos), Some(QoS::ExactlyOnce));
    let (removed, _) = m.remove_entry("b").expect("present");
    assert_eq!(removed.as_str(), "b");
    assert!(m.remove_entry("b").is_none());
    assert_eq!(filters(&m), ["a", "c", "d"]);
    assert_eq!(m.len(), 3);
    assert!(matches!(&m, SubMap::Few(v) if v.len() == 3));
    let taken = m.take_filters();
    assert_eq!(
        taken.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
        ["a", "c", "d"]
    );
    assert_eq!(m.len(), 0);
}

#[test]
fn the_ninth_subscription_moves_the_map_to_a_hash_map() {
    let mut m = SubMap::new();
    let names: Vec<String> = (0..=SubMap::FEW).map(|i| format!("t/{i}")).collect();
    for f in &names[..SubMap::FEW] {
        m.insert(f.as_str().into(), sub(QoS::AtLeastOnce));
    }
    assert!(matches!(&m, SubMap::Few(v) if v.len() == SubMap::FEW));
    m.insert(names[SubMap::FEW].as_str().into(), sub(QoS::AtLeastOnce));
    assert!(matches!(&m, SubMap::Many(_)));
    assert_eq!(m.len(), SubMap::FEW + 1);
    for f in &names {
        assert!(m.contains_key(f), "{f}");
    }
    let mut taken: Vec<String> = m.take_filters().iter().map(|f| f.to_string()).collect();
    taken.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(taken, expected);
    assert!(matches!(&m, SubMap::Few(v) if v.is_empty()));
}
