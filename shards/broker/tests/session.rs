//! The session state machine driven step by step through its public API: no sockets, no clock.
//!
//! Every test builds packets as a client would send them, hands them to the session, and decodes
//! what the session wrote into its write buffer to assert on the exact packets. Time is an
//! `Instant` taken once and moved by hand. The property test at the end runs random sequences of
//! deliveries, acknowledgements and reconnects against a model of the client.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use shardmq_broker::session::{
    accept_connect, connack_for, server_disconnect_for, Accepted, Action, Close, ConnParams,
    Delivery, DropReason, Session, EXPIRY_NEVER,
};
use shardmq_broker::{Limits, Message};
use shardmq_codec::{
    encode, encoded_len, Ack, Auth, ByteStr, ConnAck, Connect, Decoder, Disconnect,
    DisconnectProperties, LastWill, Packet, Protocol, Publish, QoS, ReasonCode, SubAck, Subscribe,
    SubscribeFilter, SubscribeProperties, SubscriptionOptions, Unsubscribe, UnsubscribeProperties,
    WillProperties,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Building blocks
// ---------------------------------------------------------------------------------------------

const ASSIGNED_ID: &str = "auto-1";

fn connect(protocol: Protocol, client_id: &str) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 30,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }
}

/// A CONNECT carrying the client's Receive Maximum and Maximum Packet Size (5.0 only).
fn connect_with(
    protocol: Protocol,
    receive_maximum: Option<u16>,
    max_packet_size: Option<u32>,
) -> Connect {
    let mut c = connect(protocol, "c1");
    if protocol.is_v5() {
        c.properties.receive_maximum = receive_maximum;
        c.properties.maximum_packet_size = max_packet_size;
    }
    c
}

fn accept(connect: &Connect, limits: &Limits) -> Result<Accepted, ReasonCode> {
    accept_connect(connect, limits, || ASSIGNED_ID.into())
}

fn will(topic: &str) -> LastWill {
    LastWill {
        topic: topic.into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties::default(),
    }
}

fn ack(pkid: u16) -> Ack {
    ack_with(pkid, ReasonCode::SUCCESS)
}

/// The answer to an acknowledgement for a packet id the receiver does not hold (5.0).
fn not_found(pkid: u16) -> Ack {
    ack_with(pkid, ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)
}

fn ack_with(pkid: u16, reason: ReasonCode) -> Ack {
    Ack {
        pkid,
        reason,
        properties: Default::default(),
    }
}

/// A PUBLISH as a client sends it.
fn inbound(qos: QoS, pkid: u16, topic: &str, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        pkid,
        properties: Default::default(),
        payload: Bytes::from_static(payload),
    }
}

/// A routed message, as another session's PUBLISH becomes.
fn message(topic: &str, payload: &[u8]) -> Arc<Message> {
    Arc::new(Message {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload),
        qos: QoS::ExactlyOnce,
        retain: false,
        properties: Default::default(),
        expires_at: None,
        publisher: "publisher".into(),
    })
}

fn subscribe(pkid: u16, filters: &[(&str, QoS)], id: Option<u32>) -> Packet {
    Packet::Subscribe(Subscribe {
        pkid,
        filters: filters
            .iter()
            .map(|&(filter, qos)| SubscribeFilter {
                filter: filter.into(),
                options: SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            })
            .collect(),
        properties: SubscribeProperties {
            subscription_identifier: id,
            ..Default::default()
        },
    })
}

fn unsubscribe(pkid: u16, filters: &[&str]) -> Packet {
    Packet::Unsubscribe(Unsubscribe {
        pkid,
        filters: filters.iter().map(|&f| f.into()).collect(),
        properties: UnsubscribeProperties::default(),
    })
}

fn disconnect(reason: ReasonCode, session_expiry_interval: Option<u32>) -> Packet {
    Packet::Disconnect(Disconnect {
        reason,
        properties: DisconnectProperties {
            session_expiry_interval,
            ..Default::default()
        },
    })
}

/// Decodes every packet in `wire`, which must hold whole packets only, and empties it.
fn decode_all(protocol: Protocol, wire: &mut BytesMut) -> Vec<Packet> {
    let mut decoder = Decoder::with_protocol(protocol, u32::MAX);
    let mut packets = Vec::new();
    while let Some(packet) = decoder
        .decode(wire)
        .expect("the session wrote a packet the codec cannot read")
    {
        packets.push(packet);
    }
    assert!(wire.is_empty(), "a partial packet was left in the buffer");
    packets
}

fn payload_id(publish: &Publish) -> u64 {
    let bytes: [u8; 8] = publish.payload[..8].try_into().expect("8-byte id");
    u64::from_be_bytes(bytes)
}

/// A session with a connection attached, and that connection's write buffer.
struct Client {
    session: Session,
    limits: Limits,
    protocol: Protocol,
    now: Instant,
    wire: BytesMut,
}

impl Client {
    fn new(protocol: Protocol, limits: Limits) -> Client {
        Client::with(connect(protocol, "c1"), limits)
    }

    fn with(connect: Connect, limits: Limits) -> Client {
        let now = Instant::now();
        let accepted = accept(&connect, &limits).expect("CONNECT accepted");
        let mut session = Session::new(
            accepted.client_id.clone(),
            accepted.protocol,
            accepted.expiry_secs,
        );
        let mut wire = BytesMut::new();
        session.attach(now, &accepted, &limits, &mut wire);
        assert!(wire.is_empty(), "a new session has nothing to send");
        Client {
            session,
            limits,
            protocol: accepted.protocol,
            now,
            wire,
        }
    }

    /// A new connection takes the session; the old write buffer is gone with the old one.
    fn reattach(&mut self, connect: Connect) {
        let accepted = accept(&connect, &self.limits).expect("CONNECT accepted");
        self.protocol = accepted.protocol;
        self.wire.clear();
        self.session
            .attach(self.now, &accepted, &self.limits, &mut self.wire);
    }

    fn handle(&mut self, packet: Packet) -> Result<Vec<Action>, Close> {
        let mut actions = Vec::new();
        self.session
            .handle(self.now, packet, &self.limits, &mut self.wire, &mut actions)?;
        Ok(actions)
    }

    fn handle_ok(&mut self, packet: Packet) -> Vec<Action> {
        self.handle(packet).expect("the session accepts the packet")
    }

    /// The reason code of the close the packet must cause; nothing may have been written.
    fn closes(&mut self, packet: Packet) -> ReasonCode {
        let close = self.handle(packet).expect_err("the connection must close");
        assert!(self.wire.is_empty(), "nothing is written before a close");
        close.reason
    }

    fn deliver(&mut self, msg: &Arc<Message>, qos: QoS) -> Delivery {
        self.session.deliver(
            self.now,
            msg,
            qos,
            false,
            &[],
            &self.limits,
            Some(&mut self.wire),
        )
    }

    fn deliver_offline(&mut self, msg: &Arc<Message>, qos: QoS) -> Delivery {
        self.session
            .deliver(self.now, msg, qos, false, &[], &self.limits, None)
    }

    /// Delivers a new message on topic `t` with `payload`.
    fn push(&mut self, payload: &[u8], qos: QoS) -> Delivery {
        self.deliver(&message("t", payload), qos)
    }

    fn push_offline(&mut self, payload: &[u8], qos: QoS) -> Delivery {
        self.deliver_offline(&message("t", payload), qos)
    }

    fn sent(&mut self) -> Vec<Packet> {
        decode_all(self.protocol, &mut self.wire)
    }

    fn sent_publishes(&mut self) -> Vec<Publish> {
        self.sent()
            .into_iter()
            .map(|p| match p {
                Packet::Publish(p) => *p,
                other => panic!("expected PUBLISH, got {other:?}"),
            })
            .collect()
    }

    fn sent_one_publish(&mut self) -> Publish {
        let mut publishes = self.sent_publishes();
        assert_eq!(publishes.len(), 1, "{publishes:?}");
        publishes.remove(0)
    }
}

fn limits_with(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut limits = Limits::default();
    f(&mut limits);
    limits.validate().expect("test limits are valid");
    limits
}

// ---------------------------------------------------------------------------------------------
// accept_connect and connack_for
// ---------------------------------------------------------------------------------------------

#[test]
fn v3_1_refuses_an_empty_client_id() {
    let limits = Limits::default();
    let mut c = connect(Protocol::V3_1, "");
    assert_eq!(
        accept(&c, &limits),
        Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
    );
    c.clean_start = false;
    assert_eq!(
        accept(&c, &limits),
        Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
    );
}

#[test]
fn v3_1_1_empty_client_id_needs_clean_session() {
    let limits = Limits::default();
    let mut c = connect(Protocol::V3_1_1, "");
    c.clean_start = false;
    assert_eq!(
        accept(&c, &limits),
        Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID)
    );

    c.clean_start = true;
    let accepted = accept(&c, &limits).expect("accepted");
    assert!(accepted.assigned);
    assert_eq!(accepted.client_id.as_str(), ASSIGNED_ID);
    assert_eq!(accepted.expiry_secs, 0);
    let connack = connack_for(&accepted, false, &limits);
    assert_eq!(connack.code, ReasonCode::SUCCESS);
    assert_eq!(
        connack.properties,
        Default::default(),
        "3.1.1 has no properties to announce the identifier in"
    );
}

#[test]
fn v5_empty_client_id_is_assigned_and_announced() {
    let limits = Limits::default();
    let mut c = connect(Protocol::V5, "");
    c.clean_start = false;
    let accepted = accept(&c, &limits).expect("accepted");
    assert!(accepted.assigned);
    assert_eq!(accepted.client_id.as_str(), ASSIGNED_ID);

    let connack = connack_for(&accepted, true, &limits);
    let p = &connack.properties;
    assert_eq!(
        p.assigned_client_identifier.as_deref(),
        Some(ASSIGNED_ID),
        "MQTT-3.2.2-16"
    );
    assert_eq!(p.receive_maximum, Some(limits.max_awaiting_rel));
    assert_eq!(p.maximum_packet_size, Some(limits.max_packet_size));
    assert_eq!(p.retain_available, Some(true));
    assert_eq!(p.topic_alias_maximum, Some(limits.max_topic_alias));
    assert_eq!(p.shared_subscription_available, Some(true));
    assert_eq!(p.server_keep_alive, None);
    assert_eq!(p.session_expiry_interval, None);

    // The CONNACK survives the wire as it is.
    let mut wire = BytesMut::new();
    encode(
        &Packet::ConnAck(Box::new(connack.clone())),
        Protocol::V5,
        &mut wire,
    );
    assert_eq!(
        decode_all(Protocol::V5, &mut wire),
        vec![Packet::ConnAck(Box::new(connack))]
    );
}

#[test]
fn a_client_chosen_id_is_kept_and_not_announced() {
    let limits = Limits::default();
    let accepted = accept_connect(&connect(Protocol::V5, "sensor-7"), &limits, || {
        panic!("no identifier to assign")
    })
    .expect("accepted");
    assert!(!accepted.assigned);
    assert_eq!(accepted.client_id.as_str(), "sensor-7");
    let connack: ConnAck = connack_for(&accepted, false, &limits);
    assert_eq!(connack.properties.assigned_client_identifier, None);
}

#[test]
fn client_id_longer_than_the_limit_is_refused() {
    let limits = limits_with(|l| l.max_client_id_len = 4);
    for protocol in [Protocol::V3_1, Protocol::V3_1_1, Protocol::V5] {
        assert!(accept(&connect(protocol, "abcd"), &limits).is_ok());
        assert_eq!(
            accept(&connect(protocol, "abcde"), &limits),
            Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID),
            "{protocol:?}"
        );
    }
}

#[test]
fn session_expiry_is_capped_and_the_cap_announced() {
    let limits = limits_with(|l| l.session_expiry_max_secs = 3600);
    let v5 = |expiry: Option<u32>| {
        let mut c = connect(Protocol::V5, "c1");
        c.properties.session_expiry_interval = expiry;
        accept(&c, &limits).expect("accepted")
    };

    let capped = v5(Some(7200));
    assert_eq!(capped.expiry_secs, 3600);
    assert!(capped.expiry_capped);
    assert_eq!(
        connack_for(&capped, false, &limits)
            .properties
            .session_expiry_interval,
        Some(3600)
    );

    for (asked, kept) in [(Some(60), 60), (Some(3600), 3600), (None, 0)] {
        let a = v5(asked);
        assert_eq!(a.expiry_secs, kept);
        assert!(!a.expiry_capped);
        assert_eq!(
            connack_for(&a, false, &limits)
                .properties
                .session_expiry_interval,
            None
        );
    }
    assert_eq!(v5(Some(EXPIRY_NEVER)).expiry_secs, 3600);

    // 3.x: Clean Session 0 asks for a session that never expires.
    let mut c = connect(Protocol::V3_1_1, "c1");
    c.clean_start = false;
    let a = accept(&c, &limits).expect("accepted");
    assert_eq!(a.expiry_secs, 3600);
    assert_eq!(
        connack_for(&a, true, &limits).properties,
        Default::default()
    );
    assert_eq!(
        accept(&c, &Limits::default())
            .expect("accepted")
            .expiry_secs,
        EXPIRY_NEVER
    );
    c.clean_start = true;
    assert_eq!(accept(&c, &limits).expect("accepted").expiry_secs, 0);
}

#[test]
fn keep_alive_is_capped_and_announced_as_server_keep_alive() {
    let limits = limits_with(|l| l.max_keepalive_secs = 60);
    let mut c = connect(Protocol::V5, "c1");
    c.keep_alive = 600;
    let a = accept(&c, &limits).expect("accepted");
    assert_eq!(a.params.keep_alive_secs, 60);
    assert!(a.keep_alive_capped);
    assert_eq!(a.params.read_timeout(), Some(Duration::from_secs(90)));
    assert_eq!(
        connack_for(&a, false, &limits).properties.server_keep_alive,
        Some(60)
    );

    c.keep_alive = 60;
    let a = accept(&c, &limits).expect("accepted");
    assert!(!a.keep_alive_capped);
    assert_eq!(
        connack_for(&a, false, &limits).properties.server_keep_alive,
        None
    );

    c.keep_alive = 0;
    let a = accept(&c, &limits).expect("accepted");
    assert_eq!(a.params.keep_alive_secs, 0);
    assert_eq!(a.params.read_timeout(), None);
}

#[test]
fn v3_keep_alive_is_not_lowered_without_telling_the_client() {
    // 3.x has no Server Keep Alive: a lowered keep-alive would disconnect a client that pings
    // exactly as often as it said it would.
    let limits = limits_with(|l| l.max_keepalive_secs = 60);
    for protocol in [Protocol::V3_1, Protocol::V3_1_1] {
        let mut c = connect(protocol, "c1");
        c.keep_alive = 600;
        let a = accept(&c, &limits).expect("accepted");
        assert_eq!(a.params.keep_alive_secs, 600, "{protocol:?}");
        assert!(!a.keep_alive_capped);
        assert_eq!(a.params.read_timeout(), Some(Duration::from_secs(900)));
    }
}

#[test]
fn read_timeout_is_one_and_a_half_keep_alives() {
    let params = |keep_alive_secs| ConnParams {
        keep_alive_secs,
        receive_maximum: 10,
        max_packet_size: 1000,
        topic_alias_max: 0,
        request_problem_information: true,
    };
    assert_eq!(params(0).read_timeout(), None);
    assert_eq!(params(1).read_timeout(), Some(Duration::from_millis(1500)));
    assert_eq!(params(10).read_timeout(), Some(Duration::from_secs(15)));
    assert_eq!(
        params(u16::MAX).read_timeout(),
        Some(Duration::from_millis(65535 * 1500))
    );
}

#[test]
fn will_topic_must_be_a_valid_topic_name() {
    let limits = Limits::default();
    for topic in ["a/+", "a/#", "#", "+", ""] {
        let mut c = connect(Protocol::V5, "c1");
        c.will = Some(will(topic));
        assert_eq!(
            accept(&c, &limits),
            Err(ReasonCode::TOPIC_NAME_INVALID),
            "{topic:?}"
        );
    }
    let mut c = connect(Protocol::V3_1_1, "c1");
    c.will = Some(will("clients/c1/status"));
    assert_eq!(
        accept(&c, &limits).expect("accepted").will,
        Some(will("clients/c1/status"))
    );
}

#[test]
fn retained_will_is_refused_when_retain_is_unavailable() {
    let limits = limits_with(|l| l.retain_available = false);
    let mut c = connect(Protocol::V5, "c1");
    let mut w = will("a/b");
    w.retain = true;
    c.will = Some(w.clone());
    assert_eq!(accept(&c, &limits), Err(ReasonCode::RETAIN_NOT_SUPPORTED));
    assert!(accept(&c, &Limits::default()).is_ok());
    w.retain = false;
    c.will = Some(w);
    assert!(accept(&c, &limits).is_ok());
}

#[test]
fn will_payload_must_match_its_format_indicator() {
    let mut c = connect(Protocol::V5, "c1");
    let mut w = will("a/b");
    w.properties.payload_format_indicator = Some(1);
    w.payload = Bytes::from_static(b"\xff\xfe");
    c.will = Some(w.clone());
    assert_eq!(
        accept(&c, &Limits::default()),
        Err(ReasonCode::PAYLOAD_FORMAT_INVALID)
    );
    w.properties.payload_format_indicator = Some(0);
    c.will = Some(w);
    assert!(accept(&c, &Limits::default()).is_ok());
}

#[test]
fn an_authentication_method_is_left_to_the_authenticators() {
    // `auth::Authenticators::begin` accepts or refuses the method (0x8C), not `accept_connect`.
    let mut c = connect(Protocol::V5, "c1");
    c.properties.authentication_method = Some("SCRAM-SHA-256".into());
    assert!(accept(&c, &Limits::default()).is_ok());
}

#[test]
fn the_clients_receive_maximum_and_packet_size_become_connection_parameters() {
    let a = accept(
        &connect_with(Protocol::V5, Some(5), Some(4096)),
        &Limits::default(),
    )
    .expect("accepted");
    assert_eq!(a.params.receive_maximum, 5);
    assert_eq!(a.params.max_packet_size, 4096);
    let a = accept(&connect(Protocol::V3_1_1, "c1"), &Limits::default()).expect("accepted");
    assert_eq!(a.params.receive_maximum, u16::MAX);
    assert_eq!(a.params.max_packet_size, u32::MAX);
}

#[test]
fn server_disconnect_carries_the_reason_string_unless_the_client_declined_it() {
    let close = Close {
        reason: ReasonCode::PROTOCOL_ERROR,
        why: "second CONNECT",
    };
    let reason_string = |params: Option<&ConnParams>| match server_disconnect_for(close, params) {
        Packet::Disconnect(d) => {
            assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR);
            d.properties.reason_string.map(|s| s.to_string())
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    };
    let mut c = connect(Protocol::V5, "c1");
    let params = accept(&c, &Limits::default()).expect("accepted").params;
    assert!(params.request_problem_information, "absent means 1");
    assert_eq!(
        reason_string(Some(&params)).as_deref(),
        Some("second CONNECT")
    );
    assert_eq!(reason_string(None).as_deref(), Some("second CONNECT"));
    c.properties.request_problem_information = Some(0);
    let params = accept(&c, &Limits::default()).expect("accepted").params;
    assert!(!params.request_problem_information);
    assert_eq!(reason_string(Some(&params)), None);
    // MQTT-3.14.2-3: not when it would exceed the client's Maximum Packet Size.
    c.properties.request_problem_information = None;
    c.properties.maximum_packet_size = Some(10);
    let params = accept(&c, &Limits::default()).expect("accepted").params;
    assert_eq!(reason_string(Some(&params)), None);
}

// ---------------------------------------------------------------------------------------------
// Inbound PUBLISH
// ---------------------------------------------------------------------------------------------

#[test]
fn qos0_publish_is_routed_without_an_ack() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    let actions = c.handle_ok(Packet::Publish(Box::new(inbound(
        QoS::AtMostOnce,
        0,
        "a/b",
        b"x",
    ))));
    assert!(matches!(&actions[..], [Action::Publish(m)] if m.qos == QoS::AtMostOnce));
    assert!(c.sent().is_empty());
}

#[test]
fn qos1_publish_is_acked_and_routed() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    let mut p = inbound(QoS::AtLeastOnce, 7, "a/b", b"hello");
    p.properties.message_expiry_interval = Some(30);
    p.properties.user_properties = vec![("k".into(), "v".into())];
    let actions = c.handle_ok(Packet::Publish(Box::new(p)));

    let [Action::Publish(msg)] = &actions[..] else {
        panic!("expected one Publish action, got {actions:?}");
    };
    assert_eq!(msg.topic.as_str(), "a/b");
    assert_eq!(&msg.payload[..], b"hello");
    assert_eq!(msg.qos, QoS::AtLeastOnce);
    assert!(!msg.retain);
    assert_eq!(msg.publisher.as_str(), "c1");
    assert_eq!(msg.expires_at, Some(c.now + Duration::from_secs(30)));
    assert_eq!(
        msg.properties.user_properties,
        vec![("k".into(), "v".into())]
    );
    assert_eq!(c.sent(), vec![Packet::PubAck(ack(7))]);
}

#[test]
fn qos2_publish_is_routed_once_and_released() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    let actions = c.handle_ok(Packet::Publish(Box::new(inbound(
        QoS::ExactlyOnce,
        9,
        "a",
        b"x",
    ))));
    assert!(matches!(&actions[..], [Action::Publish(_)]));
    assert_eq!(c.sent(), vec![Packet::PubRec(ack(9))]);

    // The client did not get the PUBREC and resends: acknowledged again, not routed again.
    let mut resend = inbound(QoS::ExactlyOnce, 9, "a", b"x");
    resend.dup = true;
    assert!(c.handle_ok(Packet::Publish(Box::new(resend))).is_empty());
    assert_eq!(c.sent(), vec![Packet::PubRec(ack(9))]);

    assert!(c.handle_ok(Packet::PubRel(ack(9))).is_empty());
    assert_eq!(c.sent(), vec![Packet::PubComp(ack(9))]);

    // Released: the same packet id now starts a new message.
    let actions = c.handle_ok(Packet::Publish(Box::new(inbound(
        QoS::ExactlyOnce,
        9,
        "a",
        b"y",
    ))));
    assert!(matches!(&actions[..], [Action::Publish(m)] if &m.payload[..] == b"y"));
    assert_eq!(c.sent(), vec![Packet::PubRec(ack(9))]);
}

#[test]
fn unknown_pubrel_is_answered_with_packet_identifier_not_found() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    c.handle_ok(Packet::PubRel(ack(3)));
    assert_eq!(c.sent(), vec![Packet::PubComp(not_found(3))]);

    let mut c = Client::new(Protocol::V3_1_1, Limits::default());
    c.handle_ok(Packet::PubRel(ack(3)));
    assert_eq!(c.sent(), vec![Packet::PubComp(ack(3))]);
}

#[test]
fn more_qos2_awaiting_release_than_receive_maximum_closes() {
    let mut c = Client::new(Protocol::V5, limits_with(|l| l.max_awaiting_rel = 2));
    for pkid in [1, 2] {
        c.handle_ok(Packet::Publish(Box::new(inbound(
            QoS::ExactlyOnce,
            pkid,
            "a",
            b"x",
        ))));
    }
    assert_eq!(
        c.sent(),
        vec![Packet::PubRec(ack(1)), Packet::PubRec(ack(2))]
    );
    // A resend of one it holds is no new message.
    assert!(c
        .handle_ok(Packet::Publish(Box::new(inbound(
            QoS::ExactlyOnce,
            1,
            "a",
            b"x"
        ))))
        .is_empty());
    c.sent();
    // QoS 1 is acknowledged at once and takes no slot.
    c.handle_ok(Packet::Publish(Box::new(inbound(
        QoS::AtLeastOnce,
        5,
        "a",
        b"x",
    ))));
    c.sent();
    assert_eq!(
        c.closes(Packet::Publish(Box::new(inbound(
            QoS::ExactlyOnce,
            3,
            "a",
            b"x"
        )))),
        ReasonCode::RECEIVE_MAXIMUM_EXCEEDED
    );

    // Once one is released there is room again.
    c.handle_ok(Packet::PubRel(ack(1)));
    c.sent();
    assert_eq!(
        c.handle_ok(Packet::Publish(Box::new(inbound(
            QoS::ExactlyOnce,
            3,
            "a",
            b"x"
        ))))
        .len(),
        1
    );
}

#[test]
fn publish_to_an_invalid_topic_closes() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    for topic in ["a/+", "a/#", "#", "+/b"] {
        assert_eq!(
            c.closes(Packet::Publish(Box::new(inbound(
                QoS::AtLeastOnce,
                1,
                topic,
                b"x"
            )))),
            ReasonCode::TOPIC_NAME_INVALID,
            "{topic:?}"
        );
    }
    assert_eq!(
        c.closes(Packet::Publish(Box::new(inbound(
            QoS::AtLeastOnce,
            1,
            "",
            b"x"
        )))),
        ReasonCode::PROTOCOL_ERROR,
        "empty topic without an alias"
    );
    let deep = limits_with(|l| l.max_topic_levels = 2);
    let mut c = Client::new(Protocol::V5, deep);
    assert_eq!(
        c.closes(Packet::Publish(Box::new(inbound(
            QoS::AtMostOnce,
            0,
            "a/b/c",
            b"x"
        )))),
        ReasonCode::TOPIC_NAME_INVALID
    );
}

fn aliased(topic: &str, alias: u16) -> Packet {
    let mut p = inbound(QoS::AtMostOnce, 0, topic, b"x");
    p.properties.topic_alias = Some(alias);
    Packet::Publish(Box::new(p))
}

fn routed_topic(actions: &[Action]) -> String {
    match actions {
        [Action::Publish(m)] => {
            assert_eq!(m.properties.topic_alias, None, "aliases are not forwarded");
            m.topic.to_string()
        }
        other => panic!("expected one Publish action, got {other:?}"),
    }
}

#[test]
fn topic_alias_is_resolved_before_routing() {
    let mut c = Client::new(Protocol::V5, limits_with(|l| l.max_topic_alias = 4));
    assert_eq!(routed_topic(&c.handle_ok(aliased("a/b", 4))), "a/b");
    assert_eq!(routed_topic(&c.handle_ok(aliased("", 4))), "a/b");
    assert_eq!(routed_topic(&c.handle_ok(aliased("c", 4))), "c", "remap");
    assert_eq!(routed_topic(&c.handle_ok(aliased("", 4))), "c");
}

#[test]
fn topic_alias_zero_or_above_the_maximum_closes_with_0x94() {
    for (max, alias) in [(4, 0), (4, 5), (0, 1)] {
        let mut c = Client::new(Protocol::V5, limits_with(|l| l.max_topic_alias = max));
        assert_eq!(
            c.closes(aliased("a", alias)),
            ReasonCode::TOPIC_ALIAS_INVALID,
            "max {max} alias {alias}"
        );
    }
}

#[test]
fn empty_topic_with_an_unknown_alias_is_a_protocol_error() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    assert_eq!(c.closes(aliased("", 1)), ReasonCode::PROTOCOL_ERROR);
}

#[test]
fn aliased_topic_is_still_validated() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    assert_eq!(c.closes(aliased("a/+", 1)), ReasonCode::TOPIC_NAME_INVALID);
}

#[test]
fn inbound_aliases_do_not_survive_a_reconnect() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    c.handle_ok(aliased("a", 1));
    c.session.detach();
    c.reattach(connect(Protocol::V5, "c1"));
    assert_eq!(c.closes(aliased("", 1)), ReasonCode::PROTOCOL_ERROR);
}

fn connect_with_alias_max(max: u16) -> Connect {
    let mut c = connect(Protocol::V5, "c1");
    c.properties.topic_alias_maximum = Some(max);
    c
}

#[test]
fn outgoing_topics_get_aliases_up_to_the_client_maximum() {
    let mut c = Client::with(connect_with_alias_max(1), Limits::default());
    c.deliver(&message("x/1", b"a"), QoS::AtMostOnce);
    c.deliver(&message("x/1", b"b"), QoS::AtLeastOnce);
    c.deliver(&message("x/2", b"c"), QoS::AtMostOnce);
    c.deliver(&message("x/2", b"d"), QoS::AtMostOnce);
    let sent: Vec<(String, Option<u16>)> = c
        .sent_publishes()
        .into_iter()
        .map(|p| (p.topic.to_string(), p.properties.topic_alias))
        .collect();
    assert_eq!(
        sent,
        [
            ("x/1".to_string(), Some(1)),
            (String::new(), Some(1)),
            ("x/2".to_string(), Some(1)),
            (String::new(), Some(1)),
        ]
    );
}

#[test]
fn no_outgoing_aliases_without_a_client_maximum_or_on_3_1_1() {
    for mut c in [
        Client::new(Protocol::V5, Limits::default()),
        Client::new(Protocol::V3_1_1, Limits::default()),
    ] {
        c.deliver(&message("x/1", b"a"), QoS::AtMostOnce);
        c.deliver(&message("x/1", b"b"), QoS::AtMostOnce);
        for p in c.sent_publishes() {
            assert_eq!(p.topic.as_str(), "x/1");
            assert_eq!(p.properties.topic_alias, None);
        }
    }
}

#[test]
fn resend_after_reconnect_carries_the_full_topic() {
    let mut c = Client::with(connect_with_alias_max(10), Limits::default());
    c.deliver(&message("x/1", b"a"), QoS::AtLeastOnce);
    c.deliver(&message("x/1", b"b"), QoS::AtLeastOnce);
    let first = c.sent_publishes();
    assert_eq!(first[1].topic.as_str(), "", "second send uses the alias");
    c.session.detach();
    c.reattach(connect_with_alias_max(10));
    let resent = c.sent_publishes();
    assert_eq!(resent.len(), 2);
    for p in &resent {
        assert!(p.dup);
        assert_eq!(p.topic.as_str(), "x/1", "a resend names its topic");
        assert_eq!(p.properties.topic_alias, None);
    }
    // The new connection's table starts empty: the next send assigns again.
    c.handle_ok(Packet::PubAck(ack(resent[0].pkid)));
    c.deliver(&message("x/1", b"c"), QoS::AtMostOnce);
    let p = c.sent_one_publish();
    assert_eq!(p.topic.as_str(), "x/1");
    assert_eq!(p.properties.topic_alias, Some(1));
}

#[test]
fn retained_publish_closes_when_retain_is_unavailable() {
    let mut p = inbound(QoS::AtLeastOnce, 1, "a", b"x");
    p.retain = true;
    let mut c = Client::new(Protocol::V5, limits_with(|l| l.retain_available = false));
    assert_eq!(
        c.closes(Packet::Publish(Box::new(p.clone()))),
        ReasonCode::RETAIN_NOT_SUPPORTED
    );

    let mut c = Client::new(Protocol::V5, Limits::default());
    let actions = c.handle_ok(Packet::Publish(Box::new(p)));
    assert!(matches!(&actions[..], [Action::Publish(m)] if m.retain));
}

#[test]
fn payload_not_matching_its_format_indicator_is_refused_and_not_routed() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    let bad = |qos, pkid| {
        let mut p = inbound(qos, pkid, "a", b"\xc3\x28");
        p.properties.payload_format_indicator = Some(1);
        Packet::Publish(Box::new(p))
    };

    // Refused with 0x99 and a Reason String saying why.
    let refused = |pkid| {
        let mut a = ack_with(pkid, ReasonCode::PAYLOAD_FORMAT_INVALID);
        a.properties.reason_string = Some(ByteStr::from_static(
            "payload is not UTF-8 but its Payload Format Indicator is 1",
        ));
        a
    };
    assert!(c.handle_ok(bad(QoS::AtLeastOnce, 1)).is_empty());
    assert_eq!(c.sent(), vec![Packet::PubAck(refused(1))]);

    assert!(c.handle_ok(bad(QoS::ExactlyOnce, 2)).is_empty());
    assert_eq!(c.sent(), vec![Packet::PubRec(refused(2))]);
    // The refused QoS 2 message holds no packet id.
    c.handle_ok(Packet::PubRel(ack(2)));
    assert_eq!(c.sent(), vec![Packet::PubComp(not_found(2))]);

    assert!(c.handle_ok(bad(QoS::AtMostOnce, 0)).is_empty());
    assert!(c.sent().is_empty());

    let mut good = inbound(QoS::AtLeastOnce, 3, "a", "héllo".as_bytes());
    good.properties.payload_format_indicator = Some(1);
    assert_eq!(c.handle_ok(Packet::Publish(Box::new(good))).len(), 1);
    assert_eq!(c.sent(), vec![Packet::PubAck(ack(3))]);
}

// ---------------------------------------------------------------------------------------------
// Outbound QoS 1/2: windows, queue, reconnect
// ---------------------------------------------------------------------------------------------

#[test]
fn qos1_window_is_the_smaller_of_server_and_client_limits() {
    let limits = limits_with(|l| l.max_inflight = 3);
    let mut c = Client::with(connect_with(Protocol::V5, Some(2), None), limits);
    let msgs: Vec<_> = (0..4u8).map(|i| message("t", &[i])).collect();
    assert_eq!(c.deliver(&msgs[0], QoS::AtLeastOnce), Delivery::Sent);
    assert_eq!(c.deliver(&msgs[1], QoS::AtLeastOnce), Delivery::Sent);
    assert_eq!(c.deliver(&msgs[2], QoS::AtLeastOnce), Delivery::Queued);
    assert_eq!(c.deliver(&msgs[3], QoS::AtLeastOnce), Delivery::Queued);
    assert_eq!((c.session.inflight_len(), c.session.queued_len()), (2, 2));

    let sent = c.sent_publishes();
    assert_eq!(
        sent.iter()
            .map(|p| (p.pkid, p.qos, p.dup, p.payload[0]))
            .collect::<Vec<_>>(),
        vec![
            (1, QoS::AtLeastOnce, false, 0),
            (2, QoS::AtLeastOnce, false, 1)
        ]
    );
    assert_eq!(sent[0].topic.as_str(), "t");

    // A PUBACK frees a slot, which the next queued message takes.
    c.handle_ok(Packet::PubAck(ack(1)));
    let p = c.sent_one_publish();
    assert_eq!((p.pkid, p.payload[0]), (3, 2));
    assert_eq!((c.session.inflight_len(), c.session.queued_len()), (2, 1));

    // A second PUBACK for the same id changes nothing.
    c.handle_ok(Packet::PubAck(ack(1)));
    assert!(c.sent().is_empty());
    assert_eq!((c.session.inflight_len(), c.session.queued_len()), (2, 1));

    c.handle_ok(Packet::PubAck(ack(3)));
    let p = c.sent_one_publish();
    assert_eq!((p.pkid, p.payload[0]), (4, 3));
    c.handle_ok(Packet::PubAck(ack(2)));
    c.handle_ok(Packet::PubAck(ack(4)));
    assert!(c.sent().is_empty());
    assert_eq!((c.session.inflight_len(), c.session.queued_len()), (0, 0));

    // Server limit smaller than the client's.
    let limits = limits_with(|l| l.max_inflight = 2);
    let mut c = Client::with(connect_with(Protocol::V5, Some(10), None), limits);
    for i in 0..3u8 {
        c.push(&[i], QoS::AtLeastOnce);
    }
    assert_eq!((c.session.inflight_len(), c.session.queued_len()), (2, 1));
}

#[test]
fn qos2_outbound_flow() {
    let limits = limits_with(|l| l.max_inflight = 1);
    let mut c = Client::new(Protocol::V5, limits);
    assert_eq!(c.push(b"a", QoS::ExactlyOnce), Delivery::Sent);
    assert_eq!(c.push(b"b", QoS::ExactlyOnce), Delivery::Queued);
    let p = c.sent_one_publish();
    assert_eq!(
        (p.pkid, p.qos, &p.payload[..]),
        (1, QoS::ExactlyOnce, &b"a"[..])
    );

    // Out-of-step acknowledgements are ignored.
    c.handle_ok(Packet::PubComp(ack(1)));
    c.handle_ok(Packet::PubAck(ack(1)));
    assert!(c.sent().is_empty());
    assert_eq!(c.session.inflight_len(), 1);

    c.handle_ok(Packet::PubRec(ack(1)));
    assert_eq!(c.sent(), vec![Packet::PubRel(ack(1))]);
    assert_eq!(
        (c.session.inflight_len(), c.session.queued_len()),
        (1, 1),
        "a released message still holds its slot"
    );

    c.handle_ok(Packet::PubComp(ack(1)));
    let p = c.sent_one_publish();
    assert_eq!((p.pkid, &p.payload[..]), (2, &b"b"[..]));
    assert_eq!((c.session.inflight_len(), c.session.queued_len()), (1, 0));
}

#[test]
fn pubrec_for_an_unknown_packet_id_gets_pubrel_not_found() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    c.handle_ok(Packet::PubRec(ack(5)));
    assert_eq!(c.sent(), vec![Packet::PubRel(not_found(5))]);
    // A QoS 1 message is no QoS 2 flow.
    c.push(b"a", QoS::AtLeastOnce);
    c.sent();
    c.handle_ok(Packet::PubRec(ack(1)));
    assert_eq!(c.sent(), vec![Packet::PubRel(not_found(1))]);
    assert_eq!(c.session.inflight_len(), 1);
}

#[test]
fn pubrec_with_an_error_ends_the_qos2_flow() {
    let mut c = Client::new(Protocol::V5, limits_with(|l| l.max_inflight = 1));
    c.push(b"a", QoS::ExactlyOnce);
    c.push(b"b", QoS::ExactlyOnce);
    c.sent();
    c.handle_ok(Packet::PubRec(ack_with(1, ReasonCode::QUOTA_EXCEEDED)));
    let p = c.sent_one_publish();
    assert_eq!(
        (p.pkid, &p.payload[..]),
        (2, &b"b"[..]),
        "no PUBREL, the next message"
    );
    assert_eq!(c.session.inflight_len(), 1);
}

#[test]
fn packet_ids_wrap_around_skipping_zero_and_ids_in_use() {
    let mut c = Client::new(Protocol::V5, limits_with(|l| l.max_inflight = 2));
    let msg = message("t", b"x");
    c.deliver(&msg, QoS::AtLeastOnce); // id 1 stays in flight throughout
    assert_eq!(c.sent_one_publish().pkid, 1);
    for expected in 2..=u16::MAX {
        c.deliver(&msg, QoS::AtLeastOnce);
        let pkid = c.sent_one_publish().pkid;
        assert_eq!(pkid, expected);
        c.handle_ok(Packet::PubAck(ack(pkid)));
    }
    c.deliver(&msg, QoS::AtLeastOnce);
    assert_eq!(c.sent_one_publish().pkid, 2, "0 is skipped, 1 is in use");
}

#[test]
fn full_queue_drops_qos0_first_then_the_oldest() {
    let limits = limits_with(|l| {
        l.max_inflight = 1;
        l.max_queued_messages = 3;
    });
    let mut c = Client::new(Protocol::V5, limits);
    assert_eq!(c.push(b"A", QoS::AtLeastOnce), Delivery::Sent);
    assert_eq!(c.push(b"B", QoS::AtLeastOnce), Delivery::Queued);
    // QoS 0 while the window is full goes straight out; queued only when offline.
    assert_eq!(c.push(b"-", QoS::AtMostOnce), Delivery::Sent);
    c.session.detach();
    assert_eq!(c.push_offline(b"C", QoS::AtMostOnce), Delivery::Queued);
    assert_eq!(c.push_offline(b"D", QoS::AtLeastOnce), Delivery::Queued);
    assert_eq!(c.session.queued_len(), 3);
    assert_eq!(c.session.stats().dropped, 0);

    // Full: the QoS 0 message C makes room for E, then the oldest, B, for F; an incoming
    // QoS 0 message is the one dropped when no queued QoS 0 message is left.
    assert_eq!(c.push_offline(b"E", QoS::AtLeastOnce), Delivery::Displaced);
    assert_eq!(c.push_offline(b"F", QoS::AtLeastOnce), Delivery::Displaced);
    assert_eq!(
        c.push_offline(b"G", QoS::AtMostOnce),
        Delivery::Dropped(DropReason::QueueFull)
    );
    assert_eq!(c.session.queued_len(), 3);
    assert_eq!(c.session.stats().dropped, 3);

    c.reattach(connect(Protocol::V5, "c1"));
    let mut got = Vec::new();
    for p in c.sent_publishes() {
        got.push((p.payload[0], p.dup));
    }
    assert_eq!(got, vec![(b'A', true)], "window of 1 is taken by A");
    for pkid in 1..=3 {
        c.handle_ok(Packet::PubAck(ack(pkid)));
        for p in c.sent_publishes() {
            got.push((p.payload[0], p.dup));
        }
    }
    assert_eq!(
        got,
        vec![(b'A', true), (b'D', false), (b'E', false), (b'F', false)]
    );
    assert_eq!(c.session.stats().dropped, 3);
}

#[test]
fn a_zero_queue_drops_what_cannot_be_sent() {
    let limits = limits_with(|l| {
        l.max_queued_messages = 0;
        l.max_inflight = 1;
    });
    let mut c = Client::new(Protocol::V5, limits);
    assert_eq!(c.push(b"a", QoS::AtLeastOnce), Delivery::Sent);
    assert_eq!(
        c.push(b"b", QoS::AtLeastOnce),
        Delivery::Dropped(DropReason::QueueFull)
    );
    c.session.detach();
    assert_eq!(
        c.push_offline(b"c", QoS::AtMostOnce),
        Delivery::Dropped(DropReason::QueueFull)
    );
    assert_eq!(c.session.queued_len(), 0);
    assert_eq!(c.session.stats().dropped, 2);
}

#[test]
fn sent_counts_first_transmissions_from_the_queue_too_but_not_resends() {
    let mut c = Client::new(Protocol::V5, limits_with(|l| l.max_inflight = 1));
    assert_eq!(c.push(b"a", QoS::AtLeastOnce), Delivery::Sent);
    assert_eq!(c.push(b"b", QoS::AtLeastOnce), Delivery::Queued);
    assert_eq!(c.push(b"c", QoS::AtLeastOnce), Delivery::Queued);
    assert_eq!(c.push(b"-", QoS::AtMostOnce), Delivery::Sent);
    assert_eq!(c.session.stats().sent, 2);
    // Each PUBACK lets the next queued message out through the window.
    c.handle_ok(Packet::PubAck(ack(1)));
    assert_eq!(c.session.stats().sent, 3);
    c.session.detach();
    assert_eq!(c.push_offline(b"q", QoS::AtMostOnce), Delivery::Queued);
    // The reconnect resends b with DUP (not counted), then c waits for the window, and the
    // queued QoS 0 message goes out behind it... once c is acknowledged.
    c.reattach(connect(Protocol::V5, "c1"));
    let resent: Vec<bool> = c.sent_publishes().iter().map(|p| p.dup).collect();
    assert_eq!(resent, vec![true]);
    assert_eq!(c.session.stats().sent, 3);
    c.handle_ok(Packet::PubAck(ack(2)));
    let got: Vec<u8> = c.sent_publishes().iter().map(|p| p.payload[0]).collect();
    assert_eq!(got, vec![b'c', b'q']);
    assert_eq!(c.session.stats().sent, 5);
}

#[test]
fn reconnect_resends_inflight_then_pubrels_then_drains_the_queue() {
    let mut c = Client::new(Protocol::V5, limits_with(|l| l.max_inflight = 3));
    c.push(b"a", QoS::AtLeastOnce);
    c.push(b"b", QoS::ExactlyOnce);
    c.push(b"c", QoS::ExactlyOnce);
    assert_eq!(c.sent_publishes().len(), 3);
    c.handle_ok(Packet::PubRec(ack(3)));
    assert_eq!(c.sent(), vec![Packet::PubRel(ack(3))]);

    c.session.detach();
    assert!(!c.session.is_connected());
    assert_eq!(c.push_offline(b"d", QoS::AtLeastOnce), Delivery::Queued);
    assert_eq!(c.push_offline(b"e", QoS::AtMostOnce), Delivery::Queued);
    assert_eq!((c.session.inflight_len(), c.session.queued_len()), (3, 2));

    c.reattach(connect(Protocol::V5, "c1"));
    assert!(c.session.is_connected());
    let sent = c.sent();
    let [Packet::Publish(a), Packet::Publish(b), Packet::PubRel(rel)] = &sent[..] else {
        panic!("expected PUBLISH, PUBLISH, PUBREL, got {sent:?}");
    };
    assert_eq!(
        (a.pkid, a.qos, a.dup, &a.payload[..]),
        (1, QoS::AtLeastOnce, true, &b"a"[..])
    );
    assert_eq!(
        (b.pkid, b.qos, b.dup, &b.payload[..]),
        (2, QoS::ExactlyOnce, true, &b"b"[..])
    );
    assert_eq!(rel, &ack(3));
    assert_eq!(c.session.queued_len(), 2, "the window is still full");

    c.handle_ok(Packet::PubComp(ack(3)));
    let sent = c.sent_publishes();
    assert_eq!(
        sent.iter()
            .map(|p| (p.pkid, p.qos, p.dup, p.payload[0]))
            .collect::<Vec<_>>(),
        vec![
            (4, QoS::AtLeastOnce, false, b'd'),
            (0, QoS::AtMostOnce, false, b'e')
        ]
    );
    assert_eq!((c.session.inflight_len(), c.session.queued_len()), (3, 0));
}

#[test]
fn messages_that_have_expired_are_dropped() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    let t0 = c.now;
    let mut m = (*message("t", b"x")).clone();
    m.expires_at = Some(t0 + Duration::from_secs(10));
    let m = Arc::new(m);

    c.now = t0 + Duration::from_secs(10);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        assert_eq!(c.deliver(&m, qos), Delivery::Dropped(DropReason::Expired));
    }
    assert!(c.sent().is_empty());
    assert_eq!(c.session.stats().dropped, 3);
}

#[test]
fn remaining_expiry_is_forwarded_rounded_up() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    let t0 = c.now;
    let mut m = (*message("t", b"x")).clone();
    m.expires_at = Some(t0 + Duration::from_secs(10));
    m.properties.message_expiry_interval = Some(10);
    let m = Arc::new(m);

    for (elapsed_ms, left) in [(0, 10), (3500, 7), (4000, 6), (9999, 1)] {
        c.now = t0 + Duration::from_millis(elapsed_ms);
        c.deliver(&m, QoS::AtMostOnce);
        assert_eq!(
            c.sent_one_publish().properties.message_expiry_interval,
            Some(left),
            "after {elapsed_ms} ms"
        );
    }

    // 3.1.1 carries no properties at all.
    let mut c = Client::new(Protocol::V3_1_1, Limits::default());
    c.now = t0;
    c.deliver(&m, QoS::AtLeastOnce);
    assert_eq!(c.sent_one_publish().properties, Default::default());
}

#[test]
fn queued_messages_that_expire_offline_are_dropped_on_reconnect() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    let t0 = c.now;
    let mut short = (*message("t", b"short")).clone();
    short.expires_at = Some(t0 + Duration::from_secs(5));
    let short = Arc::new(short);
    let mut long = (*message("t", b"long")).clone();
    long.expires_at = Some(t0 + Duration::from_secs(60));
    let long = Arc::new(long);

    c.session.detach();
    c.deliver_offline(&short, QoS::AtLeastOnce);
    c.deliver_offline(&long, QoS::AtLeastOnce);
    c.now = t0 + Duration::from_secs(6);
    c.reattach(connect(Protocol::V5, "c1"));
    let p = c.sent_one_publish();
    assert_eq!(&p.payload[..], b"long");
    assert_eq!(p.properties.message_expiry_interval, Some(54));
    assert_eq!(c.session.stats().dropped, 1);
    assert_eq!(c.session.queued_len(), 0);
}

#[test]
fn messages_larger_than_the_clients_maximum_packet_size_are_dropped() {
    let connect = connect_with(Protocol::V5, None, Some(64));
    let mut c = Client::with(connect.clone(), Limits::default());
    let big = message("t", &[b'x'; 100]);
    let small = message("t", b"x");
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        assert_eq!(
            c.deliver(&big, qos),
            Delivery::Dropped(DropReason::TooLarge)
        );
        assert_eq!(c.deliver(&small, qos), Delivery::Sent);
    }
    assert_eq!(c.sent_publishes().len(), 2);
    assert_eq!(c.session.stats().dropped, 2);
    c.handle_ok(Packet::PubAck(ack(1)));

    // Queued offline, sized when the client is back.
    c.session.detach();
    assert_eq!(c.deliver_offline(&big, QoS::AtLeastOnce), Delivery::Queued);
    c.reattach(connect);
    assert!(c.sent().is_empty());
    assert_eq!(c.session.queued_len(), 0);
    assert_eq!(c.session.stats().dropped, 3);
}

#[test]
fn inflight_too_large_for_the_new_connection_is_not_resent() {
    // MQTT-3.1.2-25: a packet too large for the client is discarded as if it had been sent.
    let mut c = Client::with(connect_with(Protocol::V5, None, None), Limits::default());
    c.push(&[b'x'; 100], QoS::AtLeastOnce);
    c.push(b"small", QoS::AtLeastOnce);
    assert_eq!(c.sent_publishes().len(), 2);
    c.session.detach();
    c.reattach(connect_with(Protocol::V5, None, Some(64)));
    let p = c.sent_one_publish();
    assert_eq!((p.pkid, p.dup, &p.payload[..]), (2, true, &b"small"[..]));
    assert_eq!(c.session.inflight_len(), 1);
    assert_eq!(c.session.stats().dropped, 1);
}

#[test]
fn qos0_is_dropped_while_the_write_buffer_is_full() {
    let limits = limits_with(|l| l.max_write_buffer_bytes = 1024);
    let mut c = Client::new(Protocol::V5, limits);
    let m = message("t", &[0u8; 300]);
    let mut sent = 0;
    while c.deliver(&m, QoS::AtMostOnce) == Delivery::Sent {
        sent += 1;
        assert!(sent < 10, "the write buffer bound is never reached");
    }
    assert!(c.wire.len() >= 1024);
    assert_eq!(
        c.deliver(&m, QoS::AtMostOnce),
        Delivery::Dropped(DropReason::WriteBufferFull)
    );
    assert_eq!(c.session.stats().dropped, 2);
    // QoS 1 is bounded by the window instead.
    assert_eq!(c.deliver(&m, QoS::AtLeastOnce), Delivery::Sent);
    let publishes = c.sent_publishes();
    assert_eq!(publishes.len(), sent + 1);

    // Once the client has read its buffer, QoS 0 flows again.
    assert_eq!(c.deliver(&m, QoS::AtMostOnce), Delivery::Sent);
}

#[test]
fn subscription_identifiers_and_retain_are_forwarded() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    let m = message("t", b"x");
    c.session.deliver(
        c.now,
        &m,
        QoS::AtLeastOnce,
        true,
        &[7, 9],
        &c.limits,
        Some(&mut c.wire),
    );
    let p = c.sent_one_publish();
    assert!(p.retain);
    assert_eq!(&p.properties.subscription_identifiers[..], &[7, 9]);

    let mut c = Client::new(Protocol::V3_1_1, Limits::default());
    c.session.deliver(
        c.now,
        &m,
        QoS::AtLeastOnce,
        false,
        &[7],
        &c.limits,
        Some(&mut c.wire),
    );
    let p = c.sent_one_publish();
    assert!(!p.retain);
    assert!(p.properties.subscription_identifiers.is_empty());
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE, UNSUBSCRIBE and the rest
// ---------------------------------------------------------------------------------------------

fn suback(actions: &[Action]) -> &SubAck {
    match actions.last() {
        Some(Action::SubAck(s)) => s,
        other => panic!("the last action must be the SUBACK, got {other:?}"),
    }
}

#[test]
fn subscribe_grants_the_requested_qos_and_keeps_the_identifier() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    let actions = c.handle_ok(subscribe(
        4,
        &[("a/+", QoS::AtLeastOnce), ("b/#", QoS::ExactlyOnce)],
        Some(77),
    ));
    assert!(c.sent().is_empty(), "the SUBACK is the shard's to send");
    assert_eq!(actions.len(), 3);
    for (action, (filter, qos)) in actions
        .iter()
        .zip([("a/+", QoS::AtLeastOnce), ("b/#", QoS::ExactlyOnce)])
    {
        let Action::Subscribe {
            filter: f,
            subscription,
            existed,
        } = action
        else {
            panic!("expected Subscribe, got {action:?}");
        };
        assert_eq!(f.as_str(), filter);
        assert_eq!(subscription.options.qos, qos);
        assert_eq!(subscription.id, Some(77));
        assert!(!existed);
        assert_eq!(c.session.subscription(filter), Some(subscription));
    }
    let ack = suback(&actions);
    assert_eq!(ack.pkid, 4);
    assert_eq!(
        ack.reasons,
        vec![ReasonCode::GRANTED_QOS_1, ReasonCode::GRANTED_QOS_2]
    );

    // Subscribing again replaces the options and says so.
    let actions = c.handle_ok(subscribe(5, &[("a/+", QoS::AtMostOnce)], None));
    assert!(matches!(
        &actions[0],
        Action::Subscribe { existed: true, subscription, .. }
            if subscription.options.qos == QoS::AtMostOnce && subscription.id.is_none()
    ));
    assert_eq!(suback(&actions).reasons, vec![ReasonCode::GRANTED_QOS_0]);
    assert_eq!(c.session.subscriptions().count(), 2);
}

#[test]
fn invalid_filters_are_refused_one_by_one() {
    let filters = [
        ("a/#/b", QoS::AtLeastOnce),
        ("a/b+", QoS::AtLeastOnce),
        ("", QoS::AtLeastOnce),
        ("$share/g/", QoS::AtLeastOnce),
        ("ok/#", QoS::AtLeastOnce),
    ];
    let mut c = Client::new(Protocol::V5, Limits::default());
    let actions = c.handle_ok(subscribe(1, &filters, None));
    assert_eq!(
        suback(&actions).reasons,
        vec![
            ReasonCode::TOPIC_FILTER_INVALID,
            ReasonCode::TOPIC_FILTER_INVALID,
            ReasonCode::TOPIC_FILTER_INVALID,
            ReasonCode::TOPIC_FILTER_INVALID,
            ReasonCode::GRANTED_QOS_1,
        ]
    );
    assert_eq!(actions.len(), 2, "one Subscribe, one SubAck");
    assert_eq!(c.session.subscriptions().count(), 1);
    assert_eq!(
        suback(&actions).properties.reason_string.as_deref(),
        Some("a topic filter is invalid"),
        "a SUBACK with a failure says why on 5.0"
    );
    let mut c = Client::new(Protocol::V3_1_1, Limits::default());
    let actions = c.handle_ok(subscribe(1, &filters, None));
    assert_eq!(
        suback(&actions).properties.reason_string,
        None,
        "3.1.1 has no properties"
    );

    let mut c = Client::new(Protocol::V3_1_1, Limits::default());
    let actions = c.handle_ok(subscribe(1, &filters, None));
    assert_eq!(
        suback(&actions).reasons,
        vec![
            ReasonCode::UNSPECIFIED_ERROR,
            ReasonCode::UNSPECIFIED_ERROR,
            ReasonCode::UNSPECIFIED_ERROR,
            ReasonCode::UNSPECIFIED_ERROR,
            ReasonCode::GRANTED_QOS_1,
        ]
    );
}

#[test]
fn shared_subscriptions_are_granted_to_v5_and_v311_clients() {
    for protocol in [Protocol::V5, Protocol::V3_1_1] {
        let filters = [
            ("$share/g/a/+", QoS::AtLeastOnce),
            ("$queue/q", QoS::ExactlyOnce),
            ("$share/other/#", QoS::AtMostOnce),
        ];
        let mut c = Client::new(protocol, Limits::default());
        let actions = c.handle_ok(subscribe(1, &filters, None));
        assert_eq!(
            suback(&actions).reasons,
            vec![
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::GRANTED_QOS_2,
                ReasonCode::SUCCESS
            ],
            "{protocol:?}"
        );
        let subscribed: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Subscribe { filter, .. } => Some(filter.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            subscribed,
            vec!["$share/g/a/+", "$queue/q", "$share/other/#"]
        );
        let actions = c.handle_ok(unsubscribe(2, &["$queue/q"]));
        assert!(
            matches!(&actions[..], [Action::Unsubscribe { filter }] if filter.as_str() == "$queue/q")
        );
    }
}

#[test]
fn malformed_shared_filters_are_refused_with_topic_filter_invalid() {
    let filters = [
        ("$share//a", QoS::AtLeastOnce),
        ("$share/g+/a", QoS::AtLeastOnce),
        ("$share/g", QoS::AtLeastOnce),
        ("$share/g/", QoS::AtLeastOnce),
        ("$queue/", QoS::AtLeastOnce),
        ("$share/g/a/#/b", QoS::AtLeastOnce),
    ];
    let mut c = Client::new(Protocol::V5, Limits::default());
    let actions = c.handle_ok(subscribe(1, &filters, None));
    assert_eq!(
        suback(&actions).reasons,
        vec![ReasonCode::TOPIC_FILTER_INVALID; 6]
    );
    assert_eq!(c.session.subscriptions().count(), 0);
}

#[test]
fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    // MQTT-3.8.3-4.
    let mut c = Client::new(Protocol::V5, Limits::default());
    let mut packet = subscribe(
        1,
        &[
            ("plain", QoS::AtLeastOnce),
            ("$share/g/t", QoS::AtLeastOnce),
        ],
        None,
    );
    let Packet::Subscribe(sub) = &mut packet else {
        unreachable!()
    };
    sub.filters[1].options.no_local = true;
    assert_eq!(c.closes(packet), ReasonCode::PROTOCOL_ERROR);
    assert_eq!(c.session.subscriptions().count(), 0, "nothing subscribed");
    // No Local on an ordinary subscription is fine.
    let mut packet = subscribe(2, &[("plain", QoS::AtLeastOnce)], None);
    let Packet::Subscribe(sub) = &mut packet else {
        unreachable!()
    };
    sub.filters[0].options.no_local = true;
    c.handle_ok(packet);
}

#[test]
fn shared_messages_the_client_does_not_have_are_given_back() {
    let mut c = Client::with(connect_with(Protocol::V5, Some(2), None), Limits::default());
    let group = ByteStr::from("$share/g/t");
    let shared = |c: &mut Client, payload: &[u8], qos: QoS| {
        c.session.deliver_shared(
            c.now,
            &message("t", payload),
            qos,
            false,
            &[],
            &group,
            &c.limits,
            Some(&mut c.wire),
        )
    };
    assert_eq!(shared(&mut c, b"s1", QoS::AtLeastOnce), Delivery::Sent);
    assert_eq!(shared(&mut c, b"s2", QoS::ExactlyOnce), Delivery::Sent);
    assert_eq!(shared(&mut c, b"s3", QoS::AtLeastOnce), Delivery::Queued);
    assert_eq!(shared(&mut c, b"s4", QoS::AtMostOnce), Delivery::Sent);
    assert_eq!(c.push(b"plain", QoS::AtLeastOnce), Delivery::Queued);
    assert_eq!(shared(&mut c, b"s5", QoS::AtLeastOnce), Delivery::Queued);
    let sent = c.sent_publishes();
    assert_eq!(sent.len(), 3);
    // s2 (QoS 2) is received by the client: it stays with this session.
    c.handle_ok(Packet::PubRec(ack(2)));
    c.sent();
    let taken: Vec<(String, Vec<u8>)> = c
        .session
        .take_shared_pending()
        .into_iter()
        .map(|(f, m)| (f.to_string(), m.payload.to_vec()))
        .collect();
    let expect = |p: &[u8]| ("$share/g/t".to_owned(), p.to_vec());
    assert_eq!(taken, vec![expect(b"s1"), expect(b"s3"), expect(b"s5")]);
    assert_eq!(c.session.inflight_len(), 1, "the released QoS 2 message");
    assert_eq!(
        c.session.queued_len(),
        1,
        "the ordinary subscription's message"
    );
    assert!(c.session.take_shared_pending().is_empty());
}

#[test]
fn subscriptions_beyond_the_quota_are_refused() {
    let mut c = Client::new(Protocol::V5, limits_with(|l| l.max_subscriptions = 2));
    let actions = c.handle_ok(subscribe(
        1,
        &[
            ("a", QoS::AtMostOnce),
            ("b", QoS::AtMostOnce),
            ("c", QoS::AtMostOnce),
        ],
        None,
    ));
    assert_eq!(
        suback(&actions).reasons,
        vec![
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::QUOTA_EXCEEDED
        ]
    );
    // Replacing one it has takes no new slot.
    let actions = c.handle_ok(subscribe(2, &[("a", QoS::AtLeastOnce)], None));
    assert!(matches!(
        &actions[0],
        Action::Subscribe { existed: true, .. }
    ));
    assert_eq!(suback(&actions).reasons, vec![ReasonCode::GRANTED_QOS_1]);

    // Unsubscribing frees a slot.
    c.handle_ok(unsubscribe(3, &["b"]));
    c.sent();
    let actions = c.handle_ok(subscribe(4, &[("c", QoS::AtMostOnce)], None));
    assert_eq!(suback(&actions).reasons, vec![ReasonCode::GRANTED_QOS_0]);

    let mut c = Client::new(Protocol::V3_1_1, limits_with(|l| l.max_subscriptions = 1));
    let actions = c.handle_ok(subscribe(
        1,
        &[("a", QoS::AtMostOnce), ("b", QoS::AtMostOnce)],
        None,
    ));
    assert_eq!(
        suback(&actions).reasons,
        vec![ReasonCode::GRANTED_QOS_0, ReasonCode::UNSPECIFIED_ERROR]
    );
}

#[test]
fn unsubscribe_v5_reports_each_filter() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    c.handle_ok(subscribe(1, &[("a/b", QoS::AtLeastOnce)], None));
    let actions = c.handle_ok(unsubscribe(2, &["a/b", "x/y"]));
    assert!(matches!(
        &actions[..],
        [Action::Unsubscribe { filter }] if filter.as_str() == "a/b"
    ));
    let sent = c.sent();
    let [Packet::UnsubAck(ack)] = &sent[..] else {
        panic!("expected UNSUBACK, got {sent:?}");
    };
    assert_eq!(ack.pkid, 2);
    assert_eq!(
        ack.reasons,
        vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
    );
    assert_eq!(c.session.subscription("a/b"), None);
}

#[test]
fn unsubscribe_v3_has_no_reason_codes() {
    let mut c = Client::new(Protocol::V3_1_1, Limits::default());
    c.handle_ok(subscribe(1, &[("a/b", QoS::AtLeastOnce)], None));
    let actions = c.handle_ok(unsubscribe(2, &["x/y", "a/b"]));
    assert_eq!(actions.len(), 1);
    let sent = c.sent();
    let [Packet::UnsubAck(ack)] = &sent[..] else {
        panic!("expected UNSUBACK, got {sent:?}");
    };
    assert_eq!(ack.pkid, 2);
    assert!(ack.reasons.is_empty());
}

#[test]
fn pingreq_is_answered() {
    for protocol in [Protocol::V3_1, Protocol::V3_1_1, Protocol::V5] {
        let mut c = Client::new(protocol, Limits::default());
        assert!(c.handle_ok(Packet::PingReq).is_empty());
        assert_eq!(c.sent(), vec![Packet::PingResp]);
    }
}

#[test]
fn disconnect_says_whether_to_publish_the_will() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    assert_eq!(
        c.handle_ok(disconnect(ReasonCode::DISCONNECT_WITH_WILL_MESSAGE, None)),
        vec![Action::Disconnect { publish_will: true }]
    );
    assert_eq!(
        c.handle_ok(disconnect(ReasonCode::NORMAL_DISCONNECTION, None)),
        vec![Action::Disconnect {
            publish_will: false
        }]
    );
    assert!(c.sent().is_empty());
}

#[test]
fn disconnect_cannot_turn_a_zero_session_expiry_into_a_non_zero_one() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    assert_eq!(c.session.expiry_secs(), 0);
    assert_eq!(
        c.closes(disconnect(ReasonCode::NORMAL_DISCONNECTION, Some(10))),
        ReasonCode::PROTOCOL_ERROR
    );
    assert_eq!(
        c.handle_ok(disconnect(ReasonCode::NORMAL_DISCONNECTION, Some(0)))
            .len(),
        1
    );
}

#[test]
fn disconnect_may_change_a_non_zero_session_expiry_within_the_cap() {
    let limits = limits_with(|l| l.session_expiry_max_secs = 100);
    let mut conn = connect(Protocol::V5, "c1");
    conn.properties.session_expiry_interval = Some(50);
    let mut c = Client::with(conn, limits);
    assert_eq!(c.session.expiry_secs(), 50);
    c.handle_ok(disconnect(ReasonCode::NORMAL_DISCONNECTION, Some(1000)));
    assert_eq!(c.session.expiry_secs(), 100);
    c.handle_ok(disconnect(ReasonCode::NORMAL_DISCONNECTION, Some(0)));
    assert_eq!(c.session.expiry_secs(), 0);
}

#[test]
fn packets_a_client_must_not_send_close_with_protocol_error() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    let packets = [
        Packet::Connect(Box::new(connect(Protocol::V5, "c1"))),
        Packet::Auth(Auth::default()),
        Packet::PingResp,
        Packet::ConnAck(Box::default()),
        Packet::SubAck(SubAck::default()),
    ];
    for packet in packets {
        let name = packet.name();
        assert_eq!(c.closes(packet), ReasonCode::PROTOCOL_ERROR, "{name}");
    }
}

#[test]
fn detach_keeps_subscriptions_and_the_will_comes_from_the_connection() {
    let mut conn = connect(Protocol::V5, "c1");
    conn.will = Some(will("c1/status"));
    let mut c = Client::with(conn, Limits::default());
    c.handle_ok(subscribe(1, &[("a", QoS::AtLeastOnce)], Some(3)));
    c.session.detach();
    assert!(c.session.conn_params().is_none());
    assert!(c.session.subscription("a").is_some());
    assert_eq!(c.session.take_will(), Some(will("c1/status")));
    assert_eq!(c.session.take_will(), None);

    c.reattach(connect(Protocol::V3_1_1, "c1"));
    assert_eq!(c.session.protocol(), Protocol::V3_1_1);
    assert_eq!(
        c.session.take_will(),
        None,
        "the new connection has no will"
    );
    assert_eq!(
        c.session.subscription("a").and_then(|s| s.id),
        Some(3),
        "subscriptions survive"
    );
    assert_eq!(c.session.clear_subscriptions(), vec![ByteStr::from("a")]);
    assert_eq!(c.session.subscriptions().count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Property: random deliveries, acknowledgements and reconnects against a model of the client
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Published,
    Released,
}

/// A QoS 1/2 message the client holds in flight, as it read it from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    id: u64,
    qos: QoS,
    stage: Stage,
    /// Bytes of its PUBLISH (a resend has the same size).
    size: usize,
}

#[derive(Debug, Clone, Copy)]
enum AckKind {
    /// PUBACK.
    Ack,
    /// PUBREC, success.
    Rec,
    /// PUBREC with an error reason code.
    RecRefused,
    /// PUBCOMP.
    Comp,
}

#[derive(Debug, Clone)]
enum Op {
    /// Route a message with a payload of `padding` extra bytes, maybe expiring.
    Deliver {
        qos: QoS,
        padding: usize,
        expiry_secs: Option<u64>,
    },
    /// The client acknowledges one of the messages in flight, in the right step.
    Ack {
        pick: prop::sample::Index,
        refuse: bool,
    },
    /// The client sends any acknowledgement for any packet id.
    StrayAck { kind: AckKind, pkid: u16 },
    /// The connection goes away.
    Detach,
    /// A new connection takes the session.
    Attach {
        receive_maximum: u16,
        max_packet_size: Option<u32>,
    },
    /// Time passes.
    Tick { millis: u64 },
    /// The client stops reading its socket, or starts again.
    ToggleStall,
}

fn op() -> impl Strategy<Value = Op> {
    let qos = prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ];
    let kind = prop_oneof![
        Just(AckKind::Ack),
        Just(AckKind::Rec),
        Just(AckKind::RecRefused),
        Just(AckKind::Comp)
    ];
    prop_oneof![
        8 => (qos, 0usize..300, prop::option::weighted(0.3, 1u64..5)).prop_map(
            |(qos, padding, expiry_secs)| Op::Deliver { qos, padding, expiry_secs }
        ),
        6 => (any::<prop::sample::Index>(), prop::bool::weighted(0.1))
            .prop_map(|(pick, refuse)| Op::Ack { pick, refuse }),
        1 => (kind, 1u16..12).prop_map(|(kind, pkid)| Op::StrayAck { kind, pkid }),
        1 => Just(Op::Detach),
        1 => (1u16..6, prop::option::weighted(0.4, 80u32..400)).prop_map(
            |(receive_maximum, max_packet_size)| Op::Attach { receive_maximum, max_packet_size }
        ),
        1 => (0u64..3000).prop_map(|millis| Op::Tick { millis }),
        1 => Just(Op::ToggleStall),
    ]
}

/// The session under test and what a well-behaved client has seen of it.
struct Model {
    protocol: Protocol,
    limits: Limits,
    session: Session,
    now: Instant,
    /// The current connection's write buffer, `None` while detached.
    wire: Option<BytesMut>,
    /// The client is not reading: `wire` piles up.
    stalled: bool,
    window: usize,
    max_packet_size: u32,
    next_id: u64,
    /// What the client holds in flight, by packet id, as it read it from the wire.
    inflight: BTreeMap<u16, InFlight>,
    /// Id of the last QoS 1/2 message first sent (ids grow with delivery order).
    last_first_sent: u64,
    delivered: u64,
    qos0_received: u64,
    /// QoS 1/2 messages the client acknowledged (or refused with an error PUBREC).
    completed: u64,
    /// Packet ids the reconnect must resend (PUBLISH with DUP, or PUBREL) before anything new.
    resend: BTreeSet<u16>,
}

impl Model {
    fn new(protocol: Protocol, limits: Limits) -> Model {
        let mut model = Model {
            protocol,
            session: Session::new("c1".into(), protocol, EXPIRY_NEVER),
            limits,
            now: Instant::now(),
            wire: None,
            stalled: false,
            window: 0,
            max_packet_size: u32::MAX,
            next_id: 1,
            inflight: BTreeMap::new(),
            last_first_sent: 0,
            delivered: 0,
            qos0_received: 0,
            completed: 0,
            resend: BTreeSet::new(),
        };
        model.attach(u16::MAX, None);
        model
    }

    fn attach(&mut self, receive_maximum: u16, max_packet_size: Option<u32>) {
        let mut conn = connect_with(self.protocol, Some(receive_maximum), max_packet_size);
        conn.clean_start = false;
        let accepted = accept(&conn, &self.limits).expect("CONNECT accepted");
        self.window = usize::from(
            self.limits
                .max_inflight
                .min(accepted.params.receive_maximum),
        );
        self.max_packet_size = accepted.params.max_packet_size;
        // A PUBLISH too large for the new connection is discarded, as if sent (MQTT-3.1.2-25).
        let max = self.max_packet_size as usize;
        self.inflight
            .retain(|_, e| e.stage == Stage::Released || e.size <= max);
        self.resend = self.inflight.keys().copied().collect();
        self.stalled = false;
        let mut wire = BytesMut::new();
        self.session
            .attach(self.now, &accepted, &self.limits, &mut wire);
        self.wire = Some(wire);
    }

    /// Reads what the session wrote, as the client would, checking each packet.
    fn read_wire(&mut self) {
        let Some(wire) = self.wire.as_mut() else {
            return;
        };
        for packet in decode_all(self.protocol, wire) {
            let size = encoded_len(&packet, self.protocol);
            assert!(
                size <= self.max_packet_size as usize,
                "{} of {size} bytes exceeds the client's maximum {}",
                packet.name(),
                self.max_packet_size
            );
            match packet {
                Packet::Publish(p) => {
                    let id = payload_id(&p);
                    let held = InFlight {
                        id,
                        qos: p.qos,
                        stage: Stage::Published,
                        size,
                    };
                    match p.qos {
                        QoS::AtMostOnce => {
                            assert!(!p.dup && p.pkid == 0, "{p:?}");
                            assert!(self.resend.is_empty(), "new message before the resends");
                            self.qos0_received += 1;
                        }
                        _ if p.dup => {
                            assert_eq!(
                                self.inflight.get(&p.pkid),
                                Some(&held),
                                "a resend must be of a message in flight"
                            );
                            assert!(self.resend.remove(&p.pkid), "resent twice, or late");
                        }
                        _ => {
                            assert_ne!(p.pkid, 0);
                            assert!(self.resend.is_empty(), "new message before the resends");
                            assert!(
                                id > self.last_first_sent,
                                "message {id} sent after {}",
                                self.last_first_sent
                            );
                            self.last_first_sent = id;
                            let old = self.inflight.insert(p.pkid, held);
                            assert_eq!(old, None, "packet id {} reused while in flight", p.pkid);
                        }
                    }
                }
                // Only on reconnect: PUBRELs after a PUBREC are checked where it is sent.
                Packet::PubRel(rel) => {
                    assert!(
                        self.resend.remove(&rel.pkid),
                        "PUBREL resent twice, or late"
                    );
                    assert_eq!(rel.reason, ReasonCode::SUCCESS);
                    assert!(
                        matches!(
                            self.inflight.get(&rel.pkid),
                            Some(InFlight {
                                qos: QoS::ExactlyOnce,
                                stage: Stage::Released,
                                ..
                            })
                        ),
                        "PUBREL {} for a message not released",
                        rel.pkid
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn deliver(&mut self, qos: QoS, padding: usize, expiry_secs: Option<u64>) {
        let id = self.next_id;
        self.next_id += 1;
        let mut payload = id.to_be_bytes().to_vec();
        payload.resize(8 + padding, b'.');
        let mut msg = (*message("t/x", &payload)).clone();
        msg.expires_at = expiry_secs.map(|s| self.now + Duration::from_secs(s));
        let msg = Arc::new(msg);
        let dropped = self.session.stats().dropped;
        let queued = self.session.queued_len();
        let result = self.session.deliver(
            self.now,
            &msg,
            qos,
            false,
            &[],
            &self.limits,
            self.wire.as_mut(),
        );
        self.delivered += 1;
        let dropped_now = self.session.stats().dropped;
        match result {
            Delivery::Dropped(DropReason::QueueFull) | Delivery::Displaced => {
                assert_eq!(dropped_now, dropped + 1);
                assert_eq!(
                    self.session.queued_len(),
                    queued.min(self.limits.max_queued_messages)
                );
            }
            Delivery::Dropped(_) => assert_eq!(dropped_now, dropped + 1),
            Delivery::Queued => {
                assert_eq!(dropped_now, dropped);
                assert_eq!(self.session.queued_len(), queued + 1);
            }
            Delivery::Sent => {
                assert_eq!(dropped_now, dropped);
                assert_eq!(self.session.queued_len(), queued);
                assert!(self.wire.is_some(), "sent while offline");
            }
        }
    }

    /// The client sends an acknowledgement; the model moves as the spec says the session must.
    fn client_ack(&mut self, kind: AckKind, pkid: u16) {
        let entry = self.inflight.get(&pkid).map(|e| (e.qos, e.stage));
        let (packet, expected_reply) = match kind {
            AckKind::Ack => {
                if matches!(entry, Some((QoS::AtLeastOnce, Stage::Published))) {
                    self.inflight.remove(&pkid);
                    self.completed += 1;
                }
                (Packet::PubAck(ack(pkid)), None)
            }
            AckKind::Rec | AckKind::RecRefused => {
                let refused = matches!(kind, AckKind::RecRefused);
                let reason = if refused {
                    ReasonCode::UNSPECIFIED_ERROR
                } else {
                    ReasonCode::SUCCESS
                };
                let reply = if matches!(entry, Some((QoS::ExactlyOnce, Stage::Published))) {
                    if refused {
                        self.inflight.remove(&pkid);
                        self.completed += 1;
                        None
                    } else {
                        self.inflight.get_mut(&pkid).expect("in flight").stage = Stage::Released;
                        Some(ack(pkid))
                    }
                } else if matches!(entry, Some((QoS::ExactlyOnce, Stage::Released))) {
                    // A repeated PUBREC: the session releases again.
                    Some(ack(pkid))
                } else if self.protocol.is_v5() {
                    Some(not_found(pkid))
                } else {
                    Some(ack(pkid))
                };
                (
                    Packet::PubRec(ack_with(pkid, reason)),
                    reply.map(Packet::PubRel),
                )
            }
            AckKind::Comp => {
                if matches!(entry, Some((QoS::ExactlyOnce, Stage::Released))) {
                    self.inflight.remove(&pkid);
                    self.completed += 1;
                }
                (Packet::PubComp(ack(pkid)), None)
            }
        };
        let wire = self.wire.as_mut().expect("connected");
        let mut actions = Vec::new();
        self.session
            .handle(self.now, packet, &self.limits, wire, &mut actions)
            .expect("acknowledgements never close the connection");
        assert!(actions.is_empty());
        if let Some(reply) = expected_reply {
            assert_eq!(decode_all(self.protocol, wire), vec![reply]);
        }
    }

    fn step(&mut self, op: Op) {
        let inflight_before = self.session.inflight_len();
        let dropped_before = self.session.stats().dropped;
        match op {
            Op::Deliver {
                qos,
                padding,
                expiry_secs,
            } => self.deliver(qos, padding, expiry_secs),
            Op::Ack { pick, refuse } => {
                // A client that is not reading has nothing new to acknowledge.
                if self.wire.is_some() && !self.stalled && !self.inflight.is_empty() {
                    let i = pick.index(self.inflight.len());
                    let (pkid, qos, stage) = self
                        .inflight
                        .iter()
                        .nth(i)
                        .map(|(&pkid, e)| (pkid, e.qos, e.stage))
                        .expect("index in range");
                    let kind = match (qos, stage) {
                        (QoS::AtLeastOnce, _) => AckKind::Ack,
                        (_, Stage::Released) => AckKind::Comp,
                        _ if refuse => AckKind::RecRefused,
                        _ => AckKind::Rec,
                    };
                    self.client_ack(kind, pkid);
                }
            }
            Op::StrayAck { kind, pkid } => {
                if self.wire.is_some() && !self.stalled {
                    self.client_ack(kind, pkid);
                }
            }
            Op::Detach => {
                // What was written before the close reached the client.
                self.read_wire();
                self.wire = None;
                self.stalled = false;
                self.session.detach();
            }
            Op::Attach {
                receive_maximum,
                max_packet_size,
            } => {
                if self.wire.is_some() {
                    self.read_wire();
                    self.session.detach();
                }
                self.attach(receive_maximum, max_packet_size);
            }
            Op::Tick { millis } => self.now += Duration::from_millis(millis),
            Op::ToggleStall => self.stalled = !self.stalled && self.wire.is_some(),
        }
        if !self.stalled {
            self.read_wire();
        }
        self.check(inflight_before, dropped_before);
    }

    fn check(&self, inflight_before: usize, dropped_before: u64) {
        let s = &self.session;
        let inflight = s.inflight_len();
        assert_eq!(s.is_connected(), self.wire.is_some());
        assert!(s.stats().dropped >= dropped_before);
        // The window: nothing new goes in flight while it is full. A reconnect with a smaller
        // Receive Maximum may leave more in flight than the new window; that only shrinks.
        let window = if s.is_connected() { self.window } else { 0 };
        assert!(
            inflight <= window.max(inflight_before),
            "{inflight} in flight, window {window}, {inflight_before} before"
        );
        assert!(s.queued_len() <= self.limits.max_queued_messages);
        if s.is_connected() && s.queued_len() > 0 {
            assert!(
                inflight >= window,
                "{} queued while the window has room ({inflight} of {window})",
                s.queued_len()
            );
        }
        if !self.stalled {
            assert!(self.resend.is_empty(), "not resent: {:?}", self.resend);
            // Every packet id in flight was read by the client, unique and non-zero.
            assert_eq!(inflight, self.inflight.len());
            // No message vanishes: each one was received (QoS 0), completed, is in flight, is
            // queued, or was counted as dropped.
            assert_eq!(
                self.delivered,
                self.qos0_received
                    + self.completed
                    + inflight as u64
                    + s.queued_len() as u64
                    + s.stats().dropped,
                "delivered {} = qos0 {} + completed {} + inflight {inflight} + queued {} + dropped {}",
                self.delivered,
                self.qos0_received,
                self.completed,
                s.queued_len(),
                s.stats().dropped
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn no_message_is_lost_and_no_window_is_exceeded(
        v5 in any::<bool>(),
        max_inflight in 1u16..5,
        max_queued_messages in 0usize..6,
        ops in prop::collection::vec(op(), 1..80),
    ) {
        let protocol = if v5 { Protocol::V5 } else { Protocol::V3_1_1 };
        let limits = limits_with(|l| {
            l.max_inflight = max_inflight;
            l.max_queued_messages = max_queued_messages;
            l.max_write_buffer_bytes = 1024;
        });
        let mut model = Model::new(protocol, limits);
        for op in ops {
            model.step(op);
        }
        // Finally the client reconnects with room and acknowledges everything: all that is
        // still in the session reaches it.
        model.step(Op::Attach { receive_maximum: u16::MAX, max_packet_size: None });
        while let Some((pkid, qos, stage)) =
            model.inflight.iter().next().map(|(&pkid, e)| (pkid, e.qos, e.stage))
        {
            let kind = match (qos, stage) {
                (QoS::AtLeastOnce, _) => AckKind::Ack,
                (_, Stage::Published) => AckKind::Rec,
                (_, Stage::Released) => AckKind::Comp,
            };
            model.client_ack(kind, pkid);
            model.read_wire();
            model.check(usize::MAX, 0);
        }
        prop_assert_eq!(model.session.inflight_len(), 0);
        prop_assert_eq!(model.session.queued_len(), 0);
    }
}

#[test]
fn a_repeated_pubrec_releases_again() {
    let mut c = Client::new(Protocol::V5, Limits::default());
    c.push(b"a", QoS::ExactlyOnce);
    c.sent();
    c.handle_ok(Packet::PubRec(ack(1)));
    assert_eq!(c.sent(), vec![Packet::PubRel(ack(1))]);
    // Our PUBREL was lost and the client repeats PUBREC: PUBREL again, still in flight.
    c.handle_ok(Packet::PubRec(ack(1)));
    assert_eq!(c.sent(), vec![Packet::PubRel(ack(1))]);
    assert_eq!(c.session.inflight_len(), 1);
    c.handle_ok(Packet::PubComp(ack(1)));
    assert_eq!(c.session.inflight_len(), 0);
}

#[test]
fn many_subscriptions_past_the_inline_ones_are_kept_replaced_and_removed() {
    // A session keeps its first subscriptions in a small vector and moves to a map past them:
    // every operation must behave the same on both sides of the move.
    let mut c = Client::new(Protocol::V5, Limits::default());
    let filters: Vec<String> = (0..20).map(|i| format!("f/{i}")).collect();
    for (i, f) in filters.iter().enumerate() {
        let actions = c.handle_ok(subscribe(i as u16 + 1, &[(f, QoS::AtMostOnce)], None));
        assert!(matches!(
            &actions[0],
            Action::Subscribe { existed: false, .. }
        ));
        assert_eq!(c.session.subscriptions().count(), i + 1);
    }
    // Replacing an existing one keeps the count and updates the options, on both sides.
    for f in ["f/3", "f/17"] {
        let actions = c.handle_ok(subscribe(30, &[(f, QoS::ExactlyOnce)], Some(7)));
        assert!(matches!(
            &actions[0],
            Action::Subscribe { existed: true, .. }
        ));
        let sub = c.session.subscription(f).expect("kept");
        assert_eq!((sub.options.qos, sub.id), (QoS::ExactlyOnce, Some(7)));
    }
    assert_eq!(c.session.subscriptions().count(), 20);
    c.handle_ok(unsubscribe(31, &["f/0", "f/19"]));
    assert!(c.session.subscription("f/0").is_none());
    assert!(c.session.subscription("f/1").is_some());
    let mut left: Vec<String> = c
        .session
        .clear_subscriptions()
        .iter()
        .map(|f| f.to_string())
        .collect();
    left.sort();
    let mut want: Vec<String> = filters[1..19].to_vec();
    want.sort();
    assert_eq!(left, want);
    assert_eq!(c.session.subscriptions().count(), 0);

    // A session that never passes the inline limit.
    let mut c = Client::new(Protocol::V5, Limits::default());
    c.handle_ok(subscribe(
        1,
        &[("a", QoS::AtMostOnce), ("b", QoS::AtMostOnce)],
        None,
    ));
    c.handle_ok(unsubscribe(2, &["a"]));
    let left = c.session.clear_subscriptions();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].as_str(), "b");
}
