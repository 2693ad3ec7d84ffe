//! The encoder: appends packets to a send buffer with one `reserve` each.
//!
//! Panics (caller bugs, never network input): binary data longer than 65,535 bytes, a packet
//! longer than the 268,435,455-byte remaining length limit, a Subscription Identifier above it.

use crate::packet::{Packet, Publish, PublishOut};
use crate::packets::*;
use crate::types::Protocol;
use crate::wire::total_len;
use bytes::BytesMut;

/// Appends `packet`, encoded for `protocol`, to `buf`.
///
/// - CONNECT is written in its own `Connect::protocol` whatever `protocol` says.
/// - 3.x: properties are omitted, acks carry no reason code, SUBACK maps every failure code to
///   0x80, CONNACK maps its reason code through `ReasonCode::to_v3_connack`, DISCONNECT has no
///   body, and AUTH (which 3.x lacks) writes nothing (a debug assertion flags it).
/// - 5.0: shortest forms: acks with Success and no properties omit reason and properties,
///   DISCONNECT with Normal disconnection and no properties has no body.
pub fn encode(packet: &Packet, protocol: Protocol, buf: &mut BytesMut) {
    match packet {
        Packet::Connect(c) => connect::write(c, buf),
        Packet::ConnAck(c) => connack::write(c, protocol, buf),
        Packet::Publish(p) => publish::write(p, protocol, buf),
        Packet::PubAck(a) => ack::write(a, protocol, 0x40, buf),
        Packet::PubRec(a) => ack::write(a, protocol, 0x50, buf),
        Packet::PubRel(a) => ack::write(a, protocol, 0x62, buf),
        Packet::PubComp(a) => ack::write(a, protocol, 0x70, buf),
        Packet::Subscribe(s) => subscribe::write(s, protocol, buf),
        Packet::SubAck(s) => suback::write(s, protocol, buf),
        Packet::Unsubscribe(u) => unsubscribe::write(u, protocol, buf),
        Packet::UnsubAck(u) => unsuback::write(u, protocol, buf),
        Packet::PingReq => buf.extend_from_slice(&[0xC0, 0]),
        Packet::PingResp => buf.extend_from_slice(&[0xD0, 0]),
        Packet::Disconnect(d) => disconnect::write(d, protocol, buf),
        Packet::Auth(a) => {
            debug_assert!(protocol.is_v5(), "AUTH does not exist before MQTT 5.0");
            if protocol.is_v5() {
                auth::write(a, buf);
            }
        }
    }
}

/// Appends a PUBLISH: the same bytes as `encode(&Packet::Publish(p.clone()), ..)`, without the
/// clone. The broker's fan-out path.
pub fn encode_publish(p: &Publish, protocol: Protocol, buf: &mut BytesMut) {
    publish::write(p, protocol, buf);
}

/// Appends a PUBLISH from borrowed parts ([`PublishOut`]): the bytes [`encode_publish`] writes
/// for the equivalent [`Publish`], with nothing cloned.
pub fn encode_publish_out(p: &PublishOut, protocol: Protocol, buf: &mut BytesMut) {
    publish::write_out(p, protocol, buf);
}

/// The exact number of bytes [`encode_publish_out`] would append.
pub fn publish_out_len(p: &PublishOut, protocol: Protocol) -> usize {
    total_len(publish::layout_out(p, protocol).0)
}

/// The exact number of bytes [`encode`] would append.
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    let remaining = match packet {
        Packet::Connect(c) => connect::layout(c).remaining,
        Packet::ConnAck(c) => connack::layout(c, protocol).0,
        Packet::Publish(p) => publish::layout(p, protocol).0,
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            ack::layout(a, protocol).0
        }
        Packet::Subscribe(s) => subscribe::layout(s, protocol).0,
        Packet::SubAck(s) => suback::layout(s, protocol).0,
        Packet::Unsubscribe(u) => unsubscribe::layout(u, protocol).0,
        Packet::UnsubAck(u) => unsuback::layout(u, protocol).0,
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => disconnect::layout(d, protocol).0,
        Packet::Auth(a) => {
            if !protocol.is_v5() {
                return 0;
            }
            auth::layout(a).0
        }
    };
    total_len(remaining)
}
