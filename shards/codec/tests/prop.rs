//! Property tests: arbitrary valid packets round-trip, arbitrary bytes never panic, and a
//! packet split anywhere is "need more bytes" until its last byte arrives.

mod common;

use bytes::{Bytes, BytesMut};
use common::MAX;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use shardmq_codec::*;

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::V3_1),
        Just(Protocol::V3_1_1),
        Just(Protocol::V5)
    ]
}

fn text() -> impl Strategy<Value = ByteStr> {
    "[^\\x00]{0,12}".prop_map(ByteStr::from)
}

fn topic() -> impl Strategy<Value = ByteStr> {
    "[^\\x00]{1,12}".prop_map(ByteStr::from)
}

fn data() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

fn user() -> impl Strategy<Value = UserProperties> {
    vec((text(), text()), 0..3)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    of(0u8..=1)
}

fn pkid() -> impl Strategy<Value = u16> {
    1u16..
}

fn reason(codes: &'static [u8]) -> impl Strategy<Value = ReasonCode> {
    proptest::sample::select(codes).prop_map(ReasonCode)
}

const CONNACK: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const CONNACK_V3: &[u8] = &[0x00, 0x84, 0x85, 0x88, 0x86, 0x87];
const PUBACK: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL: &[u8] = &[0x00, 0x92];
const SUBACK: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const SUBACK_V3: &[u8] = &[0x00, 0x01, 0x02, 0x80];
const UNSUBACK: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH: &[u8] = &[0x00, 0x18, 0x19];

/// `props` on 5.0, the default elsewhere.
fn v5_only<T: Default + std::fmt::Debug + Clone + 'static>(
    proto: Protocol,
    props: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if proto.is_v5() {
        props.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

fn connect_props() -> impl Strategy<Value = ConnectProperties> {
    (
        (of(any::<u32>()), of(1u16..), of(1u32..), of(any::<u16>())),
        (flag(), flag(), user(), of(text()), of(data())),
    )
        .prop_map(
            |((sei, rm, mps, tam), (rri, rpi, up, am, ad))| ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                user_properties: up,
                authentication_method: if ad.is_some() && am.is_none() {
                    Some(ByteStr::from("m"))
                } else {
                    am
                },
                authentication_data: ad,
            },
        )
}

fn will(proto: Protocol) -> impl Strategy<Value = LastWill> {
    let props = (
        (of(any::<u32>()), flag(), of(any::<u32>()), of(text())),
        (of(topic()), of(data()), user()),
    )
        .prop_map(|((wdi, pfi, mei, ct), (rt, cd, up))| WillProperties {
            will_delay_interval: wdi,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
        });
    (topic(), data(), qos(), any::<bool>(), v5_only(proto, props)).prop_map(
        |(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties,
        },
    )
}

fn connect(proto: Protocol) -> impl Strategy<Value = Packet> {
    (
        any::<bool>(),
        any::<u16>(),
        text(),
        of(will(proto)),
        of(text()),
        of(data()),
        v5_only(proto, connect_props()),
    )
        .prop_map(
            move |(
                clean_start,
                keep_alive,
                client_id,
                will,
                mut username,
                password,
                properties,
            )| {
                if !proto.is_v5() && password.is_some() && username.is_none() {
                    username = Some(ByteStr::from("u"));
                }
                Packet::Connect(Box::new(Connect {
                    protocol: proto,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn connack(proto: Protocol) -> impl Strategy<Value = Packet> {
    let props = (
        (
            of(any::<u32>()),
            of(1u16..),
            flag(),
            of(any::<bool>()),
            of(1u32..),
            of(text()),
        ),
        (
            of(any::<u16>()),
            of(text()),
            user(),
            of(any::<bool>()),
            of(any::<bool>()),
        ),
        (
            of(any::<bool>()),
            of(any::<u16>()),
            of(text()),
            of(text()),
            of(text()),
            of(data()),
        ),
    )
        .prop_map(
            |((sei, rm, mq, ra, mps, aci), (tam, rs, up, wsa, sia), (ssa, ska, ri, sr, am, ad))| {
                ConnAckProperties {
                    session_expiry_interval: sei,
                    receive_maximum: rm,
                    maximum_qos: mq,
                    retain_available: ra,
                    maximum_packet_size: mps,
                    assigned_client_identifier: aci,
                    topic_alias_maximum: tam,
                    reason_string: rs,
                    user_properties: up,
                    wildcard_subscription_available: wsa,
                    subscription_identifiers_available: sia,
                    shared_subscription_available: ssa,
                    server_keep_alive: ska,
                    response_information: ri,
                    server_reference: sr,
                    authentication_method: am,
                    authentication_data: ad,
                }
            },
        );
    let codes = if proto.is_v5() { CONNACK } else { CONNACK_V3 };
    (any::<bool>(), reason(codes), v5_only(proto, props)).prop_map(move |(sp, code, properties)| {
        Packet::ConnAck(Box::new(ConnAck {
            session_present: sp && code == ReasonCode::SUCCESS && proto != Protocol::V3_1,
            code,
            properties,
        }))
    })
}

fn publish(proto: Protocol) -> impl Strategy<Value = Packet> {
    let props = (
        (
            flag(),
            of(any::<u32>()),
            of(1u16..),
            of(topic()),
            of(data()),
        ),
        (user(), vec(1u32..=268_435_455, 0..3), of(text())),
    )
        .prop_map(
            |((pfi, mei, ta, rt, cd), (up, sids, ct))| PublishProperties {
                payload_format_indicator: pfi,
                message_expiry_interval: mei,
                topic_alias: ta,
                response_topic: rt,
                correlation_data: cd,
                user_properties: up,
                subscription_identifiers: sids.into_iter().collect(),
                content_type: ct,
            },
        );
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        text(),
        pkid(),
        v5_only(proto, props),
        data(),
    )
        .prop_map(|(dup, qos, retain, topic, pkid, properties, payload)| {
            let qos0 = qos == QoS::AtMostOnce;
            let topic = if topic.is_empty() && properties.topic_alias.is_none() {
                ByteStr::from("t")
            } else {
                topic
            };
            Packet::Publish(Box::new(Publish {
                dup: dup && !qos0,
                qos,
                retain,
                topic,
                pkid: if qos0 { 0 } else { pkid },
                properties,
                payload,
            }))
        })
}

fn ack_props(proto: Protocol) -> BoxedStrategy<AckProperties> {
    v5_only(
        proto,
        (of(text()), user()).prop_map(|(reason_string, user_properties)| AckProperties {
            reason_string,
            user_properties,
        }),
    )
}

fn ack(proto: Protocol, codes: &'static [u8]) -> impl Strategy<Value = Ack> {
    let reason = if proto.is_v5() {
        reason(codes).boxed()
    } else {
        Just(ReasonCode::SUCCESS).boxed()
    };
    (pkid(), reason, ack_props(proto)).prop_map(|(pkid, reason, properties)| Ack {
        pkid,
        reason,
        properties,
    })
}

fn subscribe(proto: Protocol) -> impl Strategy<Value = Packet> {
    let options =
        (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(move |(qos, nl, rap, rh)| {
            let v5 = proto.is_v5();
            SubscriptionOptions {
                qos,
                no_local: nl && v5,
                retain_as_published: rap && v5,
                retain_handling: match rh {
                    1 if v5 => RetainHandling::OnNewSubscribe,
                    2 if v5 => RetainHandling::Never,
                    _ => RetainHandling::OnSubscribe,
                },
            }
        });
    let props =
        (of(1u32..=268_435_455), user()).prop_map(|(subscription_identifier, user_properties)| {
            SubscribeProperties {
                subscription_identifier,
                user_properties,
            }
        });
    (
        pkid(),
        vec(
            (text(), options).prop_map(|(filter, options)| SubscribeFilter { filter, options }),
            1..4,
        ),
        v5_only(proto, props),
    )
        .prop_map(|(pkid, filters, properties)| {
            Packet::Subscribe(Subscribe {
                pkid,
                filters,
                properties,
            })
        })
}

fn packet(proto: Protocol) -> BoxedStrategy<Packet> {
    let v5 = proto.is_v5();
    let suback_codes = if v5 { SUBACK } else { SUBACK_V3 };
    let mut all = vec![
        connect(proto).boxed(),
        connack(proto).boxed(),
        publish(proto).boxed(),
        ack(proto, PUBACK).prop_map(Packet::PubAck).boxed(),
        ack(proto, PUBACK).prop_map(Packet::PubRec).boxed(),
        ack(proto, PUBREL).prop_map(Packet::PubRel).boxed(),
        ack(proto, PUBREL).prop_map(Packet::PubComp).boxed(),
        subscribe(proto).boxed(),
        (pkid(), vec(reason(suback_codes), 1..4), ack_props(proto))
            .prop_map(|(pkid, reasons, properties)| {
                Packet::SubAck(SubAck {
                    pkid,
                    reasons,
                    properties,
                })
            })
            .boxed(),
        (pkid(), vec(text(), 1..4), v5_only(proto, user()))
            .prop_map(|(pkid, filters, user_properties)| {
                Packet::Unsubscribe(Unsubscribe {
                    pkid,
                    filters,
                    properties: UnsubscribeProperties { user_properties },
                })
            })
            .boxed(),
        (
            pkid(),
            v5_only(proto, vec(reason(UNSUBACK), 1..4)),
            ack_props(proto),
        )
            .prop_map(|(pkid, reasons, properties)| {
                Packet::UnsubAck(UnsubAck {
                    pkid,
                    reasons,
                    properties,
                })
            })
            .boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
    ];
    if v5 {
        let disconnect_props = (of(any::<u32>()), of(text()), user(), of(text())).prop_map(
            |(session_expiry_interval, reason_string, user_properties, server_reference)| {
                DisconnectProperties {
                    session_expiry_interval,
                    reason_string,
                    user_properties,
                    server_reference,
                }
            },
        );
        all.push(
            (reason(DISCONNECT), disconnect_props)
                .prop_map(|(reason, properties)| {
                    Packet::Disconnect(Disconnect { reason, properties })
                })
                .boxed(),
        );
        let auth_props = (of(text()), of(data()), of(text()), user()).prop_map(
            |(authentication_method, authentication_data, reason_string, user_properties)| {
                AuthProperties {
                    authentication_method,
                    authentication_data,
                    reason_string,
                    user_properties,
                }
            },
        );
        all.push(
            (reason(AUTH), auth_props)
                .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }))
                .boxed(),
        );
    } else {
        all.push(Just(Packet::Disconnect(Disconnect::default())).boxed());
    }
    proptest::strategy::Union::new(all).boxed()
}

fn proto_and_packet() -> impl Strategy<Value = (Protocol, Packet)> {
    protocol().prop_flat_map(|p| (Just(p), packet(p)))
}

/// Decodes everything in `buf` until `Ok(None)` or an error; never panics.
fn drain(dec: &mut Decoder, buf: &mut BytesMut) {
    let mut guard = 0;
    while let Ok(Some(_)) = dec.decode(buf) {
        guard += 1;
        assert!(guard <= 1 << 16, "decoder made no progress");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn encode_decode_round_trip((proto, packet) in proto_and_packet()) {
        let mut buf = BytesMut::new();
        encode(&packet, proto, &mut buf);
        prop_assert_eq!(buf.len(), encoded_len(&packet, proto));
        let mut dec = Decoder::with_protocol(proto, MAX);
        let got = dec.decode(&mut buf);
        prop_assert_eq!(got, Ok(Some(packet)));
        prop_assert!(buf.is_empty());
    }

    /// The delivery encoder writes, from a message's parts and three per-delivery properties,
    /// exactly the bytes of the `Publish` with those properties set, and says its length.
    #[test]
    fn publish_out_writes_the_bytes_of_the_equivalent_publish(
        (proto, packet) in protocol().prop_flat_map(|p| (Just(p), publish(p))),
        // The message's own values of the three: whatever they are, the given ones win.
        stale in (of(any::<u32>()), of(1u16..), vec(1u32..=268_435_455, 0..3)),
        given in (of(any::<u32>()), of(1u16..), vec(1u32..=268_435_455, 0..3)),
    ) {
        let Packet::Publish(mut p) = packet else { unreachable!() };
        let mut message = p.properties.clone();
        (message.message_expiry_interval, message.topic_alias) = (stale.0, stale.1);
        message.subscription_identifiers = stale.2.into_iter().collect();
        let out = PublishOut {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: &p.topic,
            pkid: p.pkid,
            properties: &message,
            message_expiry_interval: given.0,
            topic_alias: given.1,
            subscription_identifiers: &given.2,
            payload: &p.payload,
        };
        let mut got = BytesMut::new();
        encode_publish_out(&out, proto, &mut got);
        prop_assert_eq!(got.len(), publish_out_len(&out, proto));
        if proto.is_v5() {
            p.properties.message_expiry_interval = given.0;
            p.properties.topic_alias = given.1;
            p.properties.subscription_identifiers = given.2.iter().copied().collect();
        }
        let mut want = BytesMut::new();
        encode_publish(&p, proto, &mut want);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn split_anywhere_needs_more_until_complete((proto, packet) in proto_and_packet()) {
        let mut full = BytesMut::new();
        encode(&packet, proto, &mut full);
        let mut dec = Decoder::with_protocol(proto, MAX);
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            prop_assert_eq!(dec.decode(&mut part), Ok(None), "cut at {}", cut);
            prop_assert_eq!(&part[..], &full[..cut]);
        }
        // Streaming: one byte at a time into the same buffer.
        let mut buf = BytesMut::new();
        for (i, &b) in full.iter().enumerate() {
            buf.extend_from_slice(&[b]);
            let got = dec.decode(&mut buf).unwrap();
            prop_assert_eq!(got.is_some(), i + 1 == full.len());
            if let Some(got) = got {
                prop_assert_eq!(&got, &packet);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256), max in 0u32..512) {
        drain(&mut Decoder::new(max.max(2) * 4), &mut BytesMut::from(&bytes[..]));
        for proto in [Protocol::V3_1, Protocol::V3_1_1, Protocol::V5] {
            drain(&mut Decoder::with_protocol(proto, max), &mut BytesMut::from(&bytes[..]));
            drain(&mut Decoder::with_protocol(proto, MAX), &mut BytesMut::from(&bytes[..]));
        }
    }

    #[test]
    fn mutated_packets_never_panic(
        (proto, packet) in proto_and_packet(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut buf = BytesMut::new();
        encode(&packet, proto, &mut buf);
        for (at, byte) in flips {
            let i = at.index(buf.len());
            buf[i] = byte;
        }
        let mut dec = Decoder::with_protocol(proto, MAX);
        let bytes = buf.clone();
        if let Ok(Some(p)) = dec.decode(&mut buf) {
            // Whatever decodes re-encodes to something that decodes to the same packet.
            let mut again = BytesMut::new();
            encode(&p, proto, &mut again);
            prop_assert_eq!(again.len(), encoded_len(&p, proto));
            let mut dec2 = Decoder::with_protocol(proto, MAX);
            prop_assert_eq!(dec2.decode(&mut again), Ok(Some(p)), "from {:?}", bytes);
        }
    }
}
