//! One test (at least) per decoding rule, on hand-written bytes.

mod common;

use bytes::BytesMut;
use common::*;
use shardmq_codec::*;
use DecodeError::{MalformedPacket, PacketTooLarge, ProtocolError, UnsupportedProtocolVersion};

const V3: Protocol = Protocol::V3_1_1;
const V5: Protocol = Protocol::V5;

/// A packet from its first byte and body, remaining length computed.
fn pkt(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n & 0x7F) as u8;
        n >>= 7;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn is_malformed(r: Result<Option<Packet>, DecodeError>) -> bool {
    matches!(r, Err(MalformedPacket(_)))
}

fn is_protocol_error(r: Result<Option<Packet>, DecodeError>) -> bool {
    matches!(r, Err(ProtocolError(_)))
}

fn ok(r: Result<Option<Packet>, DecodeError>) -> Packet {
    r.expect("decodes").expect("complete")
}

/// A CONNECT body: protocol name, level, flags, keep-alive 0, then `rest`.
fn connect_body(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut b = vec![0, name.len() as u8];
    b.extend_from_slice(name);
    b.extend_from_slice(&[level, flags, 0, 0]);
    b.extend_from_slice(rest);
    b
}

fn decode_new(bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
    Decoder::new(MAX).decode(&mut BytesMut::from(bytes))
}

/// A 5.0 CONNECT with the given property bytes and client id "c".
fn connect_v5_props(props: &[u8]) -> Vec<u8> {
    let mut rest = vec![props.len() as u8];
    rest.extend_from_slice(props);
    rest.extend_from_slice(&[0, 1, b'c']);
    pkt(0x10, &connect_body(b"MQTT", 5, 0x02, &rest))
}

// ---- fixed header ----

#[test]
fn remaining_length_fifth_byte_is_malformed() {
    assert!(is_malformed(decode(
        &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        V3
    )));
    // Known as soon as the fourth byte has its continuation bit set.
    assert!(is_malformed(decode(&[0x30, 0x80, 0x80, 0x80, 0x80], V3)));
    // Three bytes with continuation: need more.
    assert_eq!(decode(&[0x30, 0x80, 0x80, 0x80], V3), Ok(None));
}

#[test]
fn reserved_flags_are_malformed() {
    assert!(is_malformed(decode(&pkt(0x60, &[0, 1]), V3))); // PUBREL needs 0b0010
    assert!(is_malformed(decode(&pkt(0x80, &[0, 1, 0, 1, b'a', 0]), V3)));
    assert!(is_malformed(decode(&pkt(0xA0, &[0, 1, 0, 1, b'a']), V3)));
    assert!(is_malformed(decode(&pkt(0x42, &[0, 1]), V3))); // PUBACK needs 0
    assert!(is_malformed(decode(&[0xC1, 0], V3)));
    assert!(is_malformed(decode(&[0xE8, 0], V5)));
    assert_eq!(ok(decode(&pkt(0x62, &[0, 1]), V3)).packet_type(), 6);
}

#[test]
fn publish_qos3_and_dup_on_qos0_are_malformed() {
    let body = [0, 1, b't', 0, 1];
    assert!(is_malformed(decode(&pkt(0x36, &body), V3)));
    assert!(is_malformed(decode(&pkt(0x38, &body[..3]), V3)));
    // Reported from the first byte alone.
    assert!(is_malformed(decode(&[0x36], V3)));
    assert_eq!(ok(decode(&pkt(0x3A, &body), V3)).packet_type(), 3); // DUP + QoS 1
}

#[test]
fn packet_type_0_is_malformed() {
    assert!(is_malformed(decode(&[0x00, 0], V5)));
    assert!(is_malformed(decode_new(&[0x00, 0])));
}

#[test]
fn only_connect_before_protocol_known() {
    assert!(is_protocol_error(decode_new(&[0xC0, 0])));
    assert!(is_protocol_error(decode_new(&pkt(0x30, &[0, 1, b't']))));
    assert!(is_protocol_error(decode_new(&[0xF0, 0])));
}

#[test]
fn packet_too_large_from_fixed_header_only() {
    // Remaining length 1000, nothing of the body yet.
    let mut buf = BytesMut::from(&[0x30u8, 0xE8, 0x07][..]);
    let mut dec = Decoder::with_protocol(V5, 100);
    assert_eq!(
        dec.decode(&mut buf),
        Err(PacketTooLarge {
            size: 1003,
            max: 100
        })
    );
    // Before the protocol is known too.
    let mut dec = Decoder::new(100);
    let mut buf = BytesMut::from(&[0x10u8, 0xE8, 0x07][..]);
    assert_eq!(
        dec.decode(&mut buf),
        Err(PacketTooLarge {
            size: 1003,
            max: 100
        })
    );
    // The limit counts the fixed header: exactly max is fine.
    let mut dec = Decoder::with_protocol(V5, 4);
    assert_eq!(
        dec.decode(&mut BytesMut::from(&[0x40u8, 2, 0, 1][..]))
            .map(|p| p.is_some()),
        Ok(true)
    );
    dec.set_max_packet_size(3);
    assert_eq!(dec.max_packet_size(), 3);
    assert_eq!(
        dec.decode(&mut BytesMut::from(&[0x40u8, 2][..])),
        Err(PacketTooLarge { size: 4, max: 3 })
    );
}

#[test]
fn incomplete_leaves_buffer_untouched() {
    let mut full = BytesMut::new();
    encode(&Packet::PingReq, V5, &mut full);
    encode(&samples(V5)[3], V5, &mut full);
    let bytes = full.to_vec();
    let mut dec = Decoder::with_protocol(V5, MAX);
    let mut buf = BytesMut::from(&bytes[..bytes.len() - 1]);
    assert_eq!(dec.decode(&mut buf), Ok(Some(Packet::PingReq)));
    let before = buf.clone();
    assert_eq!(dec.decode(&mut buf), Ok(None));
    assert_eq!(buf, before);
}

// ---- CONNECT ----

#[test]
fn connect_protocol_names_and_levels() {
    let flags = 0x02;
    let id = [0, 1, b'c'];
    for (name, level, want) in [
        (&b"MQTT"[..], 4, Some(Protocol::V3_1_1)),
        (b"MQIsdp", 3, Some(Protocol::V3_1)),
        (b"MQTT", 3, None),
        (b"MQIsdp", 4, None),
        (b"MQTT", 6, None),
        (b"MQTX", 4, None),
        (b"MQTT", 0x84, None), // bridge bit
    ] {
        let got = decode_new(&pkt(0x10, &connect_body(name, level, flags, &id)));
        match want {
            Some(p) => assert!(matches!(ok(got), Packet::Connect(c) if c.protocol == p)),
            None => assert_eq!(got, Err(UnsupportedProtocolVersion(level))),
        }
    }
    let v5 = decode_new(&pkt(
        0x10,
        &connect_body(b"MQTT", 5, flags, &[0, 0, 1, b'c']),
    ));
    assert!(matches!(ok(v5), Packet::Connect(c) if c.protocol == V5));
}

#[test]
fn connect_flag_rules() {
    let id = [0, 1, b'c'];
    let will = [0, 1, b'c', 0, 1, b'w', 0, 0];
    let v3 =
        |flags: u8, rest: &[u8]| decode_new(&pkt(0x10, &connect_body(b"MQTT", 4, flags, rest)));
    assert!(is_malformed(v3(0x03, &id))); // reserved bit 0
    assert!(is_malformed(v3(0x04 | 0x18, &will))); // will QoS 3
    assert!(is_malformed(v3(0x08, &id))); // will QoS without will flag
    assert!(is_malformed(v3(0x20, &id))); // will retain without will flag
    assert!(ok(v3(0x04 | 0x10 | 0x20, &will)) != Packet::PingReq);
    // Password without user name: malformed in 3.1.1 and 3.1, fine in 5.0.
    let pw = [0, 1, b'c', 0, 2, 1, 2];
    assert!(is_malformed(v3(0x40, &pw)));
    let v31 = decode_new(&pkt(0x10, &connect_body(b"MQIsdp", 3, 0x40, &pw)));
    assert!(is_malformed(v31));
    let v5 = decode_new(&pkt(
        0x10,
        &connect_body(b"MQTT", 5, 0x40, &[0, 0, 1, b'c', 0, 2, 1, 2]),
    ));
    match ok(v5) {
        Packet::Connect(c) => {
            assert_eq!(c.username, None);
            assert_eq!(c.password.as_deref(), Some(&[1u8, 2][..]));
        }
        p => panic!("{p:?}"),
    }
}

#[test]
fn connect_trailing_and_truncated() {
    let id = [0, 1, b'c', 9];
    assert!(is_malformed(decode_new(&pkt(
        0x10,
        &connect_body(b"MQTT", 4, 2, &id)
    ))));
    assert!(is_malformed(decode_new(&pkt(
        0x10,
        &connect_body(b"MQTT", 4, 2, &id[..2])
    ))));
    assert!(is_malformed(decode_new(&pkt(0x10, &[0, 4, b'M', b'Q']))));
}

// ---- strings ----

#[test]
fn strings_must_be_mqtt_utf8() {
    assert!(is_malformed(decode(&pkt(0x30, &[0, 2, 0xC3, 0x28]), V3)));
    assert!(is_malformed(decode(&pkt(0x30, &[0, 2, b'a', 0]), V3)));
    // Surrogate half encoded in UTF-8 (U+D800).
    assert!(is_malformed(decode(
        &pkt(0x30, &[0, 3, 0xED, 0xA0, 0x80]),
        V3
    )));
    // Length past the packet.
    assert!(is_malformed(decode(&pkt(0x30, &[0, 9, b'a']), V3)));
    // User name, will topic and user property values are checked too.
    assert!(is_malformed(decode_new(&pkt(
        0x10,
        &connect_body(b"MQTT", 4, 0x82, &[0, 1, b'c', 0, 1, 0xFF])
    ))));
    assert!(is_malformed(decode(
        &connect_v5_props(&[0x26, 0, 1, b'k', 0, 1, 0]),
        V5
    )));
}

#[test]
fn trailing_bytes_are_malformed() {
    assert!(is_malformed(decode(&pkt(0x40, &[0, 1, 0]), V3)));
    assert!(is_malformed(decode(&pkt(0xB0, &[0, 1, 0]), V3)));
    assert!(is_malformed(decode(&[0xC0, 1, 0], V5)));
    assert!(is_malformed(decode(&[0xD0, 1, 0], V5)));
    assert!(is_malformed(decode(&pkt(0x20, &[0, 0, 0]), V3)));
    assert!(is_malformed(decode(&pkt(0x40, &[0, 1, 0x10, 0, 0]), V5)));
    assert!(is_malformed(decode(&pkt(0x20, &[0, 0, 0, 0]), V5)));
}

// ---- packet identifiers ----

#[test]
fn zero_packet_identifier_is_a_protocol_error() {
    assert!(is_protocol_error(decode(
        &pkt(0x32, &[0, 1, b't', 0, 0]),
        V3
    )));
    assert!(is_protocol_error(decode(&pkt(0x40, &[0, 0]), V3)));
    assert!(is_protocol_error(decode(&pkt(0x50, &[0, 0]), V5)));
    assert!(is_protocol_error(decode(&pkt(0x62, &[0, 0]), V3)));
    assert!(is_protocol_error(decode(&pkt(0x70, &[0, 0]), V3)));
    assert!(is_protocol_error(decode(
        &pkt(0x82, &[0, 0, 0, 1, b'a', 0]),
        V3
    )));
    assert!(is_protocol_error(decode(&pkt(0x90, &[0, 0, 0]), V3)));
    assert!(is_protocol_error(decode(
        &pkt(0xA2, &[0, 0, 0, 1, b'a']),
        V3
    )));
    assert!(is_protocol_error(decode(&pkt(0xB0, &[0, 0]), V3)));
    // QoS 0 has no identifier on the wire.
    assert!(
        matches!(ok(decode(&pkt(0x30, &[0, 1, b't', 0, 0]), V3)), Packet::Publish(p) if p.pkid == 0 && p.payload.len() == 2)
    );
}

// ---- SUBSCRIBE / UNSUBSCRIBE ----

#[test]
fn subscribe_and_unsubscribe_need_filters() {
    assert!(is_protocol_error(decode(&pkt(0x82, &[0, 1]), V3)));
    assert!(is_protocol_error(decode(&pkt(0x82, &[0, 1, 0]), V5)));
    assert!(is_protocol_error(decode(&pkt(0xA2, &[0, 1]), V3)));
    assert!(is_protocol_error(decode(&pkt(0xA2, &[0, 1, 0]), V5)));
    // A filter without its options byte is truncated.
    assert!(is_malformed(decode(&pkt(0x82, &[0, 1, 0, 1, b'a']), V3)));
}

#[test]
fn subscription_options() {
    let sub = |proto, opts: u8| {
        let body: &[u8] = if proto == V5 {
            &[0, 1, 0, 0, 1, b'a']
        } else {
            &[0, 1, 0, 1, b'a']
        };
        let mut body = body.to_vec();
        body.push(opts);
        decode(&pkt(0x82, &body), proto)
    };
    assert!(is_malformed(sub(V5, 0x40)));
    assert!(is_malformed(sub(V5, 0x80)));
    assert!(is_protocol_error(sub(V5, 0x30))); // retain handling 3
    assert!(is_protocol_error(sub(V5, 0x03))); // QoS 3
    match ok(sub(V5, 0x2E)) {
        Packet::Subscribe(s) => assert_eq!(
            s.filters[0].options,
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::Never,
            }
        ),
        p => panic!("{p:?}"),
    }
    for bit in 2..8 {
        assert!(is_malformed(sub(V3, 1 << bit)), "3.1.1 bit {bit}");
    }
    assert!(is_malformed(sub(V3, 0x03)));
    assert!(
        matches!(ok(sub(V3, 0x02)), Packet::Subscribe(s) if s.filters[0].options.qos == QoS::ExactlyOnce)
    );
}

// ---- properties ----

#[test]
fn property_not_allowed_on_packet_is_malformed() {
    assert!(is_malformed(decode(&connect_v5_props(&[0x23, 0, 1]), V5))); // Topic Alias
    assert!(is_malformed(decode(&connect_v5_props(&[0x7F, 0]), V5))); // unknown id
    assert!(is_malformed(decode(&pkt(0x40, &[0, 1, 0, 2, 0x11, 0]), V5))); // SEI on PUBACK
    assert!(is_malformed(decode(&pkt(0xE0, &[0, 2, 0x02, 0]), V5))); // expiry on DISCONNECT
}

#[test]
fn duplicate_property_is_a_protocol_error() {
    assert!(is_protocol_error(decode(
        &connect_v5_props(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]),
        V5
    )));
    assert!(is_protocol_error(decode(
        &pkt(0x40, &[0, 1, 0, 8, 0x1F, 0, 1, b'a', 0x1F, 0, 1, b'b']),
        V5
    )));
    // User properties and PUBLISH subscription identifiers may repeat.
    let p = ok(decode(
        &connect_v5_props(&[0x26, 0, 1, b'k', 0, 0, 0x26, 0, 1, b'k', 0, 0]),
        V5,
    ));
    assert!(matches!(p, Packet::Connect(c) if c.properties.user_properties.len() == 2));
    let p = ok(decode(&pkt(0x30, &[0, 1, b't', 4, 0x0B, 1, 0x0B, 2]), V5));
    assert!(matches!(p, Packet::Publish(p) if p.properties.subscription_identifiers[..] == [1, 2]));
    // But not on SUBSCRIBE.
    assert!(is_protocol_error(decode(
        &pkt(0x82, &[0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0]),
        V5
    )));
}

#[test]
fn property_length_past_packet_is_malformed() {
    assert!(is_malformed(decode(&connect_v5_props(&[0x11, 0, 0]), V5)));
    // Property Length itself larger than what is left.
    assert!(is_malformed(decode(&pkt(0x40, &[0, 1, 0, 9, 0x1F]), V5)));
    assert!(is_malformed(decode(
        &pkt(0x30, &[0, 1, b't', 5, 0x1F, 0, 9, b'a', b'b']),
        V5
    )));
}

#[test]
fn zero_values_are_protocol_errors() {
    assert!(is_protocol_error(decode(
        &connect_v5_props(&[0x21, 0, 0]),
        V5
    ))); // Receive Maximum
    assert!(is_protocol_error(decode(
        &connect_v5_props(&[0x27, 0, 0, 0, 0]),
        V5
    ))); // Max Packet Size
    assert!(matches!(
        decode(&pkt(0x30, &[0, 1, b't', 3, 0x23, 0, 0]), V5),
        Ok(Some(Packet::Publish(p))) if p.properties.topic_alias == Some(0)
    )); // Topic Alias 0 decodes: the session answers 0x94 Topic Alias invalid
    assert!(is_protocol_error(decode(
        &pkt(0x30, &[0, 1, b't', 2, 0x0B, 0]),
        V5
    ))); // Sub Id
    assert!(is_protocol_error(decode(
        &pkt(0x82, &[0, 1, 2, 0x0B, 0, 0, 1, b'a', 0]),
        V5
    )));
}

#[test]
fn boolean_properties_must_be_0_or_1() {
    assert!(is_protocol_error(decode(
        &pkt(0x30, &[0, 1, b't', 2, 0x01, 2]),
        V5
    ))); // PFI
    assert!(is_protocol_error(decode(&connect_v5_props(&[0x17, 2]), V5)));
    assert!(is_protocol_error(decode(&connect_v5_props(&[0x19, 2]), V5)));
    assert!(is_protocol_error(decode(
        &pkt(0x20, &[0, 0, 2, 0x25, 2]),
        V5
    ))); // Retain Available
    assert!(is_protocol_error(decode(
        &pkt(0x20, &[0, 0, 2, 0x24, 2]),
        V5
    ))); // Maximum QoS
    assert!(ok(decode(&pkt(0x20, &[0, 0, 4, 0x25, 1, 0x24, 0]), V5)).packet_type() == 2);
}

#[test]
fn authentication_data_needs_a_method() {
    assert!(is_protocol_error(decode(
        &connect_v5_props(&[0x16, 0, 1, 9]),
        V5
    )));
}

// ---- reason codes ----

#[test]
fn v5_ack_remaining_length_forms() {
    let p = ok(decode(&pkt(0x40, &[0, 9]), V5));
    assert_eq!(
        p,
        Packet::PubAck(Ack {
            pkid: 9,
            ..Ack::default()
        })
    );
    let p = ok(decode(&pkt(0x50, &[0, 9, 0x80]), V5));
    assert!(matches!(p, Packet::PubRec(a) if a.reason == ReasonCode::UNSPECIFIED_ERROR));
    let p = ok(decode(&[0xE0, 1, 0x8E], V5));
    assert!(matches!(p, Packet::Disconnect(d) if d.reason == ReasonCode::SESSION_TAKEN_OVER));
    let p = ok(decode(&[0xE0, 0], V5));
    assert_eq!(p, Packet::Disconnect(Disconnect::default()));
    let p = ok(decode(&[0xF0, 0], V5));
    assert_eq!(p, Packet::Auth(Auth::default()));
}

#[test]
fn reason_codes_must_be_allowed_on_the_packet() {
    assert!(is_protocol_error(decode(&pkt(0x40, &[0, 1, 0x92]), V5))); // PUBACK
    assert!(is_protocol_error(decode(&pkt(0x50, &[0, 1, 0x01]), V5))); // PUBREC
    assert!(is_protocol_error(decode(&pkt(0x62, &[0, 1, 0x10]), V5))); // PUBREL
    assert!(is_protocol_error(decode(&pkt(0x70, &[0, 1, 0x80]), V5))); // PUBCOMP
    assert!(is_protocol_error(decode(&pkt(0x90, &[0, 1, 0, 0x03]), V5))); // SUBACK
    assert!(is_protocol_error(decode(&pkt(0x90, &[0, 1, 0x87]), V3))); // 3.x SUBACK
    assert!(is_protocol_error(decode(&pkt(0xB0, &[0, 1, 0, 0x01]), V5))); // UNSUBACK
    assert!(is_protocol_error(decode(&[0xE0, 1, 0x91], V5))); // DISCONNECT
    assert!(is_protocol_error(decode(&[0xF0, 1, 0x01], V5))); // AUTH
    assert!(is_protocol_error(decode(&pkt(0x20, &[0, 0x01, 0]), V5))); // CONNACK
    assert!(is_protocol_error(decode(&pkt(0x20, &[0, 6]), V3))); // 3.x CONNACK
    assert!(is_malformed(decode(&pkt(0x20, &[2, 0]), V3))); // CONNACK reserved flag
    assert!(is_protocol_error(decode(&pkt(0x20, &[1, 5]), V3))); // session present + failure
                                                                 // 3.1 has no Session Present: the byte is ignored.
    let p = ok(decode(&pkt(0x20, &[0xFF, 0]), Protocol::V3_1));
    assert!(matches!(p, Packet::ConnAck(c) if !c.session_present));
    // Empty reason lists.
    assert!(is_protocol_error(decode(&pkt(0x90, &[0, 1]), V3)));
    assert!(is_protocol_error(decode(&pkt(0xB0, &[0, 1, 0]), V5)));
}

// ---- PUBLISH topic ----

#[test]
fn publish_topic_rules() {
    assert!(is_protocol_error(decode(&pkt(0x30, &[0, 0]), V3)));
    assert!(is_protocol_error(decode(&pkt(0x30, &[0, 0, 0]), V5)));
    let p = ok(decode(&pkt(0x30, &[0, 0, 3, 0x23, 0, 7, b'x']), V5));
    assert!(
        matches!(p, Packet::Publish(p) if p.topic.is_empty() && p.properties.topic_alias == Some(7))
    );
    // Wildcards are the broker's business.
    let p = ok(decode(&pkt(0x30, &[0, 3, b'a', b'/', b'#']), V3));
    assert!(matches!(p, Packet::Publish(p) if &*p.topic == "a/#"));
}

// ---- 3.x specifics ----

#[test]
fn v3_disconnect_has_no_body_and_auth_is_reserved() {
    assert!(is_malformed(decode(&[0xE0, 1, 0], V3)));
    assert!(is_malformed(decode(&[0xE0, 1, 0], Protocol::V3_1)));
    assert_eq!(
        ok(decode(&[0xE0, 0], V3)),
        Packet::Disconnect(Disconnect::default())
    );
    assert!(is_malformed(decode(&[0xF0, 0], V3)));
    assert!(is_malformed(decode(&[0xF0], Protocol::V3_1)));
}

#[test]
fn errors_map_to_reason_codes() {
    assert_eq!(MalformedPacket("x").reason_code(), ReasonCode(0x81));
    assert_eq!(ProtocolError("x").reason_code(), ReasonCode(0x82));
    assert_eq!(
        PacketTooLarge { size: 2, max: 1 }.reason_code(),
        ReasonCode(0x95)
    );
    assert_eq!(
        UnsupportedProtocolVersion(6).reason_code(),
        ReasonCode(0x84)
    );
    assert_eq!(
        UnsupportedProtocolVersion(6).reason_code().to_v3_connack(),
        1
    );
}
