//! Sample packets shared by the integration tests.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use shardmq_codec::*;
use smallvec::smallvec;

pub const MAX: u32 = 1 << 20;

pub fn s(v: &str) -> ByteStr {
    ByteStr::from(v)
}

pub fn user() -> UserProperties {
    vec![
        (s("k"), s("v1")),
        (s("k"), s("v2")),
        (s("ключ"), s("значение")),
    ]
}

/// Encodes, checks `encoded_len`, decodes with a decoder set to `proto`.
pub fn round_trip(packet: &Packet, proto: Protocol) -> Packet {
    let mut buf = BytesMut::new();
    encode(packet, proto, &mut buf);
    assert_eq!(
        buf.len(),
        encoded_len(packet, proto),
        "encoded_len of {packet:?}"
    );
    let mut dec = Decoder::with_protocol(proto, MAX);
    let out = dec.decode(&mut buf).expect("decodes").expect("complete");
    assert!(buf.is_empty(), "trailing bytes after {packet:?}");
    out
}

/// Decodes `bytes` as one packet with the protocol known.
pub fn decode(bytes: &[u8], proto: Protocol) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    Decoder::with_protocol(proto, MAX).decode(&mut buf)
}

pub fn connect(proto: Protocol) -> Connect {
    let v5 = proto.is_v5();
    Connect {
        protocol: proto,
        clean_start: true,
        keep_alive: 30,
        client_id: s("client-1"),
        will: Some(LastWill {
            topic: s("will/topic"),
            payload: Bytes::from_static(b"gone\x00\xff"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if v5 {
                WillProperties {
                    will_delay_interval: Some(10),
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(3600),
                    content_type: Some(s("text/plain")),
                    response_topic: Some(s("resp/topic")),
                    correlation_data: Some(Bytes::from_static(b"\x01\x02")),
                    user_properties: user(),
                }
            } else {
                WillProperties::default()
            },
        }),
        username: Some(s("user")),
        password: Some(Bytes::from_static(b"p\x00ss")),
        properties: if v5 {
            ConnectProperties {
                session_expiry_interval: Some(0xFFFF_FFFF),
                receive_maximum: Some(100),
                maximum_packet_size: Some(65536),
                topic_alias_maximum: Some(10),
                request_response_information: Some(1),
                request_problem_information: Some(0),
                user_properties: user(),
                authentication_method: Some(s("SCRAM-SHA-1")),
                authentication_data: Some(Bytes::from_static(b"\x00data")),
            }
        } else {
            ConnectProperties::default()
        },
    }
}

pub fn ack_props(proto: Protocol) -> AckProperties {
    if proto.is_v5() {
        AckProperties {
            reason_string: Some(s("because")),
            user_properties: user(),
        }
    } else {
        AckProperties::default()
    }
}

/// One sample of every packet type, every property populated on 5.0.
pub fn samples(proto: Protocol) -> Vec<Packet> {
    let v5 = proto.is_v5();
    let mut out = vec![
        Packet::Connect(Box::new(connect(proto))),
        Packet::ConnAck(Box::new(ConnAck {
            session_present: proto != Protocol::V3_1,
            code: ReasonCode::SUCCESS,
            properties: if v5 {
                ConnAckProperties {
                    session_expiry_interval: Some(60),
                    receive_maximum: Some(20),
                    maximum_qos: Some(1),
                    retain_available: Some(true),
                    maximum_packet_size: Some(1 << 20),
                    assigned_client_identifier: Some(s("auto-1")),
                    topic_alias_maximum: Some(5),
                    reason_string: Some(s("welcome")),
                    user_properties: user(),
                    wildcard_subscription_available: Some(false),
                    subscription_identifiers_available: Some(true),
                    shared_subscription_available: Some(true),
                    server_keep_alive: Some(45),
                    response_information: Some(s("resp/")),
                    server_reference: Some(s("other:1883")),
                    authentication_method: Some(s("SCRAM-SHA-1")),
                    authentication_data: Some(Bytes::from_static(b"srv")),
                }
            } else {
                ConnAckProperties::default()
            },
        })),
        Packet::ConnAck(Box::new(ConnAck {
            session_present: false,
            code: ReasonCode::NOT_AUTHORIZED,
            properties: ConnAckProperties::default(),
        })),
        Packet::Publish(Box::new(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: s("a/b/c"),
            pkid: 7,
            properties: if v5 {
                PublishProperties {
                    payload_format_indicator: Some(0),
                    message_expiry_interval: Some(99),
                    topic_alias: Some(3),
                    response_topic: Some(s("r/t")),
                    correlation_data: Some(Bytes::from_static(b"cd")),
                    user_properties: user(),
                    subscription_identifiers: smallvec![1, 300, 268_435_455],
                    content_type: Some(s("application/json")),
                }
            } else {
                PublishProperties::default()
            },
            payload: Bytes::from(vec![0xAB; 300]),
        })),
        Packet::Publish(Box::new(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s("t"),
            pkid: 0,
            properties: PublishProperties::default(),
            payload: Bytes::new(),
        })),
    ];
    let reason = |v5_code: ReasonCode| if v5 { v5_code } else { ReasonCode::SUCCESS };
    let ack = |code: ReasonCode| Ack {
        pkid: 0xBEEF,
        reason: reason(code),
        properties: ack_props(proto),
    };
    out.extend([
        Packet::PubAck(ack(ReasonCode::NO_MATCHING_SUBSCRIBERS)),
        Packet::PubAck(Ack {
            pkid: 1,
            ..Ack::default()
        }),
        Packet::PubRec(ack(ReasonCode::QUOTA_EXCEEDED)),
        Packet::PubRel(ack(ReasonCode::PACKET_IDENTIFIER_NOT_FOUND)),
        Packet::PubComp(ack(ReasonCode::SUCCESS)),
        Packet::Subscribe(Subscribe {
            pkid: 10,
            filters: vec![
                SubscribeFilter {
                    filter: s("a/+/#"),
                    options: SubscriptionOptions {
                        qos: QoS::ExactlyOnce,
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: if v5 {
                            RetainHandling::Never
                        } else {
                            RetainHandling::OnSubscribe
                        },
                    },
                },
                SubscribeFilter {
                    filter: s("$share/g/x"),
                    options: SubscriptionOptions::default(),
                },
            ],
            properties: if v5 {
                SubscribeProperties {
                    subscription_identifier: Some(268_435_455),
                    user_properties: user(),
                }
            } else {
                SubscribeProperties::default()
            },
        }),
        Packet::SubAck(SubAck {
            pkid: 10,
            reasons: vec![
                ReasonCode::GRANTED_QOS_2,
                ReasonCode::GRANTED_QOS_0,
                ReasonCode::UNSPECIFIED_ERROR,
            ],
            properties: ack_props(proto),
        }),
        Packet::Unsubscribe(Unsubscribe {
            pkid: 11,
            filters: vec![s("a/+/#"), s("b")],
            properties: UnsubscribeProperties {
                user_properties: if v5 { user() } else { vec![] },
            },
        }),
        Packet::UnsubAck(UnsubAck {
            pkid: 11,
            reasons: if v5 {
                vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]
            } else {
                vec![]
            },
            properties: ack_props(proto),
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect::default()),
    ]);
    if v5 {
        out.extend([
            Packet::Disconnect(Disconnect {
                reason: ReasonCode::SERVER_SHUTTING_DOWN,
                properties: DisconnectProperties {
                    session_expiry_interval: Some(0),
                    reason_string: Some(s("bye")),
                    user_properties: user(),
                    server_reference: Some(s("elsewhere")),
                },
            }),
            Packet::Disconnect(Disconnect {
                reason: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
                properties: DisconnectProperties::default(),
            }),
            Packet::Auth(Auth {
                reason: ReasonCode::CONTINUE_AUTHENTICATION,
                properties: AuthProperties {
                    authentication_method: Some(s("SCRAM-SHA-1")),
                    authentication_data: Some(Bytes::from_static(b"\x00\x01")),
                    reason_string: Some(s("more")),
                    user_properties: user(),
                },
            }),
            Packet::Auth(Auth::default()),
        ]);
    }
    out
}
