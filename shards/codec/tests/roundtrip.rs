//! One round trip per packet type per protocol version, every property populated on 5.0.

mod common;

use bytes::BytesMut;
use common::*;
use shardmq_codec::*;

fn check_all(proto: Protocol) {
    let samples = samples(proto);
    let mut types: Vec<u8> = samples.iter().map(Packet::packet_type).collect();
    types.dedup();
    let expected = if proto.is_v5() { 15 } else { 14 };
    assert_eq!(types.len(), expected, "every packet type sampled");
    for p in &samples {
        assert_eq!(&round_trip(p, proto), p, "{} on {proto:?}", p.name());
    }
}

#[test]
fn round_trip_v3_1() {
    check_all(Protocol::V3_1);
}

#[test]
fn round_trip_v3_1_1() {
    check_all(Protocol::V3_1_1);
}

#[test]
fn round_trip_v5() {
    check_all(Protocol::V5);
}

#[test]
fn connect_learns_protocol_for_each_version() {
    for proto in [Protocol::V3_1, Protocol::V3_1_1, Protocol::V5] {
        let packet = Packet::Connect(Box::new(connect(proto)));
        let mut buf = BytesMut::new();
        // CONNECT is written in its own protocol whatever the argument says.
        encode(&packet, Protocol::V5, &mut buf);
        encode(&Packet::PingReq, proto, &mut buf);
        let mut dec = Decoder::new(MAX);
        assert_eq!(dec.protocol(), None);
        assert_eq!(dec.decode(&mut buf).unwrap(), Some(packet));
        assert_eq!(dec.protocol(), Some(proto));
        assert_eq!(dec.decode(&mut buf).unwrap(), Some(Packet::PingReq));
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
    }
}

#[test]
fn pipelined_v5_packets_after_connect() {
    let mut buf = BytesMut::new();
    let all = samples(Protocol::V5);
    for p in &all {
        encode(p, Protocol::V5, &mut buf);
    }
    let mut dec = Decoder::new(MAX);
    for p in &all {
        assert_eq!(dec.decode(&mut buf).unwrap().as_ref(), Some(p));
    }
    assert!(buf.is_empty());
}

#[test]
fn encode_publish_matches_encode() {
    for proto in [Protocol::V3_1_1, Protocol::V5] {
        for p in samples(proto) {
            if let Packet::Publish(publish) = &p {
                let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
                encode(&p, proto, &mut a);
                encode_publish(publish, proto, &mut b);
                assert_eq!(a, b);
            }
        }
    }
}

#[test]
fn decode_is_zero_copy() {
    let p = &samples(Protocol::V5)[3];
    let mut buf = BytesMut::new();
    encode(p, Protocol::V5, &mut buf);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Some(Packet::Publish(got)) = decode_in_place(&mut buf) else {
        panic!("not a publish")
    };
    assert!(range.contains(&(got.payload.as_ptr() as usize)));
    assert!(range.contains(&(got.topic.as_bytes().as_ptr() as usize)));
}

fn decode_in_place(buf: &mut BytesMut) -> Option<Packet> {
    Decoder::with_protocol(Protocol::V5, MAX)
        .decode(buf)
        .unwrap()
}

#[test]
fn v3_encoding_drops_what_3x_cannot_carry() {
    let proto = Protocol::V3_1_1;
    let v5 = samples(Protocol::V5);
    // SUBACK: failure codes become 0x80.
    let suback = Packet::SubAck(SubAck {
        pkid: 1,
        reasons: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::NOT_AUTHORIZED],
        properties: ack_props(Protocol::V5),
    });
    let mut buf = BytesMut::new();
    encode(&suback, proto, &mut buf);
    assert_eq!(&buf[..], &[0x90, 4, 0, 1, 0x01, 0x80]);
    // CONNACK: reason code through to_v3_connack.
    let connack = Packet::ConnAck(Box::new(ConnAck {
        session_present: false,
        code: ReasonCode::BANNED,
        properties: ConnAckProperties::default(),
    }));
    let mut buf = BytesMut::new();
    encode(&connack, proto, &mut buf);
    assert_eq!(&buf[..], &[0x20, 2, 0, 5]);
    // Acks and DISCONNECT lose reason and properties; every 5.0 sample encodes to a valid 3.x
    // packet (AUTH aside).
    for p in v5.iter().filter(|p| !matches!(p, Packet::Auth(_))) {
        let mut buf = BytesMut::new();
        encode(p, proto, &mut buf);
        assert_eq!(buf.len(), encoded_len(p, proto));
        if let Packet::Connect(_) = p {
            continue; // written as 5.0 whatever the argument
        }
        let got = decode(&buf, proto);
        assert!(matches!(got, Ok(Some(_))), "{} -> {got:?}", p.name());
    }
}

#[test]
fn v5_shortest_forms() {
    let proto = Protocol::V5;
    let enc = |p: &Packet| {
        let mut buf = BytesMut::new();
        encode(p, proto, &mut buf);
        buf.to_vec()
    };
    let puback = |reason| {
        Packet::PubAck(Ack {
            pkid: 5,
            reason,
            properties: AckProperties::default(),
        })
    };
    assert_eq!(enc(&puback(ReasonCode::SUCCESS)), [0x40, 2, 0, 5]);
    assert_eq!(
        enc(&puback(ReasonCode::NO_MATCHING_SUBSCRIBERS)),
        [0x40, 3, 0, 5, 0x10]
    );
    assert_eq!(enc(&Packet::Disconnect(Disconnect::default())), [0xE0, 0]);
    assert_eq!(enc(&Packet::Auth(Auth::default())), [0xF0, 0]);
    // A lone reason byte decodes, and so does an explicit zero Property Length.
    let long = decode(&[0x40, 4, 0, 5, 0x10, 0], proto).unwrap().unwrap();
    assert_eq!(long, puback(ReasonCode::NO_MATCHING_SUBSCRIBERS));
    assert_eq!(
        decode(&[0x40, 3, 0, 5, 0x00], proto).unwrap().unwrap(),
        puback(ReasonCode::SUCCESS)
    );
}

/// Writes fuzz seeds (one per sample packet and protocol, plus whole 5.0 and 3.1.1 sessions)
/// when `SHARDMQ_FUZZ_SEEDS` names a folder; see fuzz/README.md. A no-op otherwise.
#[test]
fn write_fuzz_seeds() {
    let Some(dir) = std::env::var_os("SHARDMQ_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The fuzz target picks the protocol from the first byte: 0 -> 3.1, 1 -> 3.1.1, 2 -> 5.0.
    for (selector, proto) in [
        (0u8, Protocol::V3_1),
        (1, Protocol::V3_1_1),
        (2, Protocol::V5),
    ] {
        let mut session = BytesMut::new();
        for (i, p) in samples(proto).iter().enumerate() {
            let mut buf = BytesMut::from(&[selector][..]);
            encode(p, proto, &mut buf);
            encode(p, proto, &mut session);
            std::fs::write(dir.join(format!("{selector}-{i}")), &buf).unwrap();
        }
        std::fs::write(dir.join(format!("session-{selector}")), &session).unwrap();
    }
}

#[test]
fn byte_str_hashes_like_str() {
    use std::collections::HashMap;
    let mut map = HashMap::new();
    map.insert(ByteStr::from("a/b"), 1);
    assert_eq!(map.get("a/b"), Some(&1));
    let mut set = std::collections::BTreeSet::new();
    set.insert(ByteStr::from("x"));
    assert!(set.contains("x"));
}
