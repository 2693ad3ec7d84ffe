//! The journal replays to the session: after every step, the image the session had when the
//! journal started, with every drained change applied, equals the session's image now.

use super::*;
use crate::limits::Limits;
use crate::session::{accept_connect, Accepted, Action, Delivery};
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use shardmq_codec::{
    Ack, Connect, Disconnect, DisconnectProperties, Packet, Publish, ReasonCode, Subscribe,
    SubscribeFilter, SubscribeProperties, SubscriptionOptions, Unsubscribe, WillProperties,
};
use std::time::Instant;

fn accepted(expiry: u32, will: bool, receive_maximum: u16) -> Accepted {
    let mut c = Connect {
        protocol: Protocol::V5,
        clean_start: false,
        keep_alive: 30,
        client_id: "c1".into(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    };
    c.properties.session_expiry_interval = Some(expiry);
    c.properties.receive_maximum = Some(receive_maximum);
    if will {
        c.will = Some(LastWill {
            topic: "w".into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        });
    }
    accept_connect(&c, &Limits::default(), || "x".into()).expect("accepted")
}

fn msg(n: u32, qos: QoS) -> Arc<Message> {
    Arc::new(Message {
        topic: "t".into(),
        payload: Bytes::copy_from_slice(&n.to_be_bytes()),
        qos,
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

fn subscribe(filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        pkid: 1,
        filters: vec![SubscribeFilter {
            filter: filter.into(),
            options: SubscriptionOptions {
                qos,
                ..Default::default()
            },
        }],
        properties: SubscribeProperties::default(),
    })
}

/// A session, its connection's buffer, and the journal's replay beside it.
struct Harness {
    session: Session,
    limits: Limits,
    now: Instant,
    wire: BytesMut,
    replay: SessionImage,
    changes: Vec<Change>,
}

impl Harness {
    fn new(journal: bool) -> Harness {
        let limits = Limits {
            max_inflight: 3,
            max_queued_messages: 4,
            ..Limits::default()
        };
        let mut session = Session::new("c1".into(), Protocol::V5, 3600);
        if journal {
            session.enable_journal();
        }
        let replay = session.image();
        Harness {
            session,
            limits,
            now: Instant::now(),
            wire: BytesMut::new(),
            replay,
            changes: Vec::new(),
        }
    }

    /// Drains the journal into the replay and checks it against the session.
    fn check(&mut self) {
        let mut drained = Vec::new();
        self.session.drain_changes(&mut drained);
        for c in &drained {
            self.replay.apply(c);
        }
        self.changes.extend(drained);
        assert_eq!(self.replay, self.session.image());
        assert!(!self.session.has_changes());
    }

    fn attach(&mut self, will: bool, receive_maximum: u16) {
        self.wire.clear();
        let a = accepted(3600, will, receive_maximum);
        self.session
            .attach(self.now, &a, &self.limits, &mut self.wire);
    }

    fn deliver(&mut self, n: u32, qos: QoS, shared: bool) -> Delivery {
        let m = msg(n, qos);
        let wire = self.session.is_connected().then_some(&mut self.wire);
        if shared {
            let tag: ByteStr = "$share/g/t".into();
            self.session
                .deliver_shared(self.now, &m, qos, false, &[7], &tag, &self.limits, wire)
        } else {
            self.session
                .deliver(self.now, &m, qos, false, &[], &self.limits, wire)
        }
    }

    fn handle(&mut self, packet: Packet) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.session.is_connected() {
            let _ =
                self.session
                    .handle(self.now, packet, &self.limits, &mut self.wire, &mut actions);
        }
        actions
    }
}

#[test]
fn a_session_without_journal_records_nothing() {
    let mut h = Harness::new(false);
    h.attach(true, 10);
    h.handle(subscribe("a/#", QoS::AtLeastOnce));
    for n in 0..10 {
        h.deliver(n, QoS::AtLeastOnce, false);
    }
    h.handle(Packet::PubAck(ack(1)));
    h.session.detach();
    h.deliver(99, QoS::ExactlyOnce, false);
    assert!(!h.session.is_journaled());
    assert!(!h.session.has_changes());
    let mut out = Vec::new();
    h.session.drain_changes(&mut out);
    assert!(out.is_empty());
}

#[test]
fn an_offline_delivery_is_enqueued_then_sent_on_attach_then_completed() {
    let mut h = Harness::new(true);
    h.deliver(1, QoS::AtLeastOnce, false);
    h.deliver(2, QoS::AtMostOnce, false);
    h.check();
    h.attach(false, 10);
    h.check();
    h.handle(Packet::PubAck(ack(1)));
    h.check();
    let seq1 = match &h.changes[0] {
        Change::Enqueued(m) => {
            assert_eq!(m.msg.payload.as_ref(), &1u32.to_be_bytes());
            m.seq
        }
        other => panic!("expected Enqueued, got {other:?}"),
    };
    assert_eq!(h.changes.len(), 4, "{:?}", h.changes);
    assert!(matches!(
        h.changes[1],
        Change::Attached {
            expiry_secs: 3600,
            ..
        }
    ));
    assert_eq!(h.changes[2], Change::Sent { seq: seq1, pkid: 1 });
    assert!(
        matches!(&h.changes[3], Change::Completed { pkid: 1, msg } if msg.payload.as_ref() == 1u32.to_be_bytes())
    );
    assert!(h.replay.inflight.is_empty() && h.replay.queue.is_empty());
}

#[test]
fn qos2_both_directions_are_journaled() {
    let mut h = Harness::new(true);
    h.attach(false, 10);
    let publish = Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "in".into(),
        pkid: 9,
        properties: Default::default(),
        payload: Bytes::from_static(b"x"),
    };
    h.handle(Packet::Publish(Box::new(publish)));
    h.check();
    assert_eq!(h.replay.awaiting_rel, vec![9]);
    h.handle(Packet::PubRel(ack(9)));
    h.check();
    assert!(h.replay.awaiting_rel.is_empty());
    h.deliver(5, QoS::ExactlyOnce, false);
    h.handle(Packet::PubRec(ack(1)));
    h.check();
    assert!(h.replay.inflight[0].released);
    h.handle(Packet::PubComp(ack(1)));
    h.check();
    assert!(h.replay.inflight.is_empty());
}

#[test]
fn enabling_the_journal_numbers_what_the_session_holds() {
    let mut h = Harness::new(false);
    h.attach(true, 2);
    h.handle(subscribe("a", QoS::ExactlyOnce));
    for n in 0..5 {
        h.deliver(n, QoS::AtLeastOnce, false);
    }
    h.session.enable_journal();
    let image = h.session.image();
    assert_eq!(image.inflight.len(), 2);
    assert_eq!(image.queue.len(), 3);
    let seqs: Vec<u64> = image
        .inflight
        .iter()
        .map(|m| m.message.seq)
        .chain(image.queue.iter().map(|m| m.seq))
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    assert_eq!(image.last_seq, 5);
    assert!(image.will.is_some());
    // Rebuilt from its image, the session is the same session, detached.
    let rebuilt = Session::from_image(image.clone());
    let mut expected = image;
    expected.connected = false;
    assert_eq!(rebuilt.image(), expected);
    assert!(rebuilt.is_journaled());
}

#[test]
fn a_rebuilt_session_resends_with_dup_and_keeps_packet_ids() {
    let mut h = Harness::new(true);
    h.attach(false, 10);
    h.deliver(1, QoS::AtLeastOnce, false);
    h.deliver(2, QoS::ExactlyOnce, false);
    h.handle(Packet::PubRec(ack(2)));
    h.check();
    let mut rebuilt = Session::from_image(h.replay.clone());
    let mut wire = BytesMut::new();
    rebuilt.attach(h.now, &accepted(3600, false, 10), &h.limits, &mut wire);
    let mut decoder = shardmq_codec::Decoder::with_protocol(Protocol::V5, u32::MAX);
    let mut packets = Vec::new();
    while let Some(p) = decoder.decode(&mut wire).expect("valid") {
        packets.push(p);
    }
    assert!(matches!(&packets[0], Packet::Publish(p) if p.dup && p.pkid == 1));
    assert!(matches!(&packets[1], Packet::PubRel(a) if a.pkid == 2));
    // A new message does not reuse an id still in flight.
    rebuilt.deliver(
        h.now,
        &msg(3, QoS::AtLeastOnce),
        QoS::AtLeastOnce,
        false,
        &[],
        &h.limits,
        Some(&mut wire),
    );
    let img = rebuilt.image();
    let pkids: Vec<u16> = img.inflight.iter().map(|m| m.pkid).collect();
    assert_eq!(pkids, vec![1, 2, 3]);
}

#[derive(Debug, Clone)]
enum Op {
    Deliver { qos: u8, shared: bool },
    Ack(u16),
    Rec(u16),
    Comp(u16),
    InboundQos2(u16),
    Rel(u16),
    Subscribe(u8),
    Unsubscribe(u8),
    Attach { will: bool, receive_maximum: u16 },
    Detach,
    DisconnectExpiry(u32),
    TakeWill,
    TakeShared,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, any::<bool>()).prop_map(|(qos, shared)| Op::Deliver { qos, shared }),
        2 => (1u16..8).prop_map(Op::Ack),
        1 => (1u16..8).prop_map(Op::Rec),
        1 => (1u16..8).prop_map(Op::Comp),
        1 => (1u16..4).prop_map(Op::InboundQos2),
        1 => (1u16..4).prop_map(Op::Rel),
        1 => (0u8..3).prop_map(Op::Subscribe),
        1 => (0u8..3).prop_map(Op::Unsubscribe),
        1 => (any::<bool>(), 1u16..4).prop_map(|(will, receive_maximum)| Op::Attach { will, receive_maximum }),
        1 => Just(Op::Detach),
        1 => (1u32..100).prop_map(Op::DisconnectExpiry),
        1 => Just(Op::TakeWill),
        1 => Just(Op::TakeShared),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every prefix of the journal replays to the session as it was at that point, and a
    /// session rebuilt from that replay has the same image.
    #[test]
    fn the_journal_replays_to_the_session(journal_late in any::<bool>(), ops in prop::collection::vec(op(), 1..80)) {
        let mut h = Harness::new(!journal_late);
        let mut n = 0u32;
        let filters = ["a", "a/+", "#"];
        for (i, op) in ops.into_iter().enumerate() {
            if journal_late && i == 5 {
                h.session.enable_journal();
                h.replay = h.session.image();
            }
            match op {
                Op::Deliver { qos, shared } => {
                    n += 1;
                    let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][qos as usize];
                    h.deliver(n, qos, shared);
                }
                Op::Ack(p) => { h.handle(Packet::PubAck(ack(p))); }
                Op::Rec(p) => { h.handle(Packet::PubRec(ack(p))); }
                Op::Comp(p) => { h.handle(Packet::PubComp(ack(p))); }
                Op::InboundQos2(p) => {
                    h.handle(Packet::Publish(Box::new(Publish {
                        dup: false,
                        qos: QoS::ExactlyOnce,
                        retain: false,
                        topic: "in".into(),
                        pkid: p,
                        properties: Default::default(),
                        payload: Bytes::from_static(b"x"),
                    })));
                }
                Op::Rel(p) => { h.handle(Packet::PubRel(ack(p))); }
                Op::Subscribe(f) => { h.handle(subscribe(filters[f as usize], QoS::AtLeastOnce)); }
                Op::Unsubscribe(f) => {
                    h.handle(Packet::Unsubscribe(Unsubscribe {
                        pkid: 2,
                        filters: vec![filters[f as usize].into()],
                        properties: Default::default(),
                    }));
                }
                Op::Attach { will, receive_maximum } => h.attach(will, receive_maximum),
                Op::Detach => h.session.detach(),
                Op::DisconnectExpiry(secs) => {
                    let p = DisconnectProperties {
                        session_expiry_interval: Some(secs),
                        ..Default::default()
                    };
                    h.handle(Packet::Disconnect(Disconnect { reason: ReasonCode::SUCCESS, properties: p }));
                }
                Op::TakeWill => { h.session.take_will(); }
                Op::TakeShared => { h.session.take_shared_pending(); }
            }
            if h.session.is_journaled() {
                h.check();
                let mut rebuilt = h.replay.clone();
                rebuilt.connected = false;
                prop_assert_eq!(Session::from_image(rebuilt.clone()).image(), rebuilt);
            }
        }
    }
}
