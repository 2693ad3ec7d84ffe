//! PUBLISH (§3.3): topic, packet identifier when QoS > 0, 5.0 properties, payload.
//!
//! The codec checks the topic is valid UTF-8 and, on 3.x and on 5.0 without a Topic Alias,
//! not empty. It does not check for wildcards in the topic: the broker does, since on 5.0 it
//! must answer 0x90 (Topic Name invalid). The fixed-header flags (QoS 3, DUP on QoS 0) are
//! checked by the decoder before the body arrives.

use super::read_pkid;
use crate::error::{malformed, protocol, Result};
use crate::packet::{Publish, PublishOut, PublishProperties};
use crate::properties;
use crate::types::{Protocol, QoS};
use crate::wire::{bin_len, put_bin, put_header, put_varint, total_len, Reader};
use bytes::{BufMut, BytesMut};

/// Parses the body; `flags` are the fixed header's low four bits, already validated.
pub(crate) fn read(r: &mut Reader, flags: u8, proto: Protocol) -> Result<Publish> {
    let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(malformed("PUBLISH QoS 3"))?;
    let topic = r.string()?;
    let pkid = if qos == QoS::AtMostOnce {
        0
    } else {
        read_pkid(r)?
    };
    let properties = if proto.is_v5() {
        properties::read::<PublishProperties>(r)?
    } else {
        PublishProperties::default()
    };
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(protocol("empty topic name without topic alias"));
    }
    Ok(Publish {
        dup: flags & 0x08 != 0,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        pkid,
        properties,
        payload: r.rest(),
    })
}

/// A [`Publish`]'s parts, as the writer takes them.
fn parts(p: &Publish) -> PublishOut<'_> {
    PublishOut {
        dup: p.dup,
        qos: p.qos,
        retain: p.retain,
        topic: &p.topic,
        pkid: p.pkid,
        properties: &p.properties,
        message_expiry_interval: p.properties.message_expiry_interval,
        topic_alias: p.properties.topic_alias,
        subscription_identifiers: &p.properties.subscription_identifiers,
        payload: &p.payload,
    }
}

/// (remaining length, properties length).
pub(crate) fn layout(p: &Publish, proto: Protocol) -> (usize, usize) {
    layout_out(&parts(p), proto)
}

pub(crate) fn write(p: &Publish, proto: Protocol, buf: &mut BytesMut) {
    write_out(&parts(p), proto, buf);
}

/// (remaining length, properties length) of a [`PublishOut`].
pub(crate) fn layout_out(p: &PublishOut, proto: Protocol) -> (usize, usize) {
    let mut n = bin_len(p.topic.as_bytes()) + p.payload.len();
    if p.qos != QoS::AtMostOnce {
        n += 2;
    }
    let mut plen = 0;
    if proto.is_v5() {
        plen = properties::publish_out_len(p);
        n += properties::wire_len(plen);
    }
    (n, plen)
}

/// Writes a [`PublishOut`]: the bytes [`write`] writes for the equivalent [`Publish`].
pub(crate) fn write_out(p: &PublishOut, proto: Protocol, buf: &mut BytesMut) {
    let (remaining, plen) = layout_out(p, proto);
    buf.reserve(total_len(remaining));
    let first = 0x30 | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain);
    put_header(buf, first, remaining);
    put_bin(buf, p.topic.as_bytes());
    if p.qos != QoS::AtMostOnce {
        buf.put_u16(p.pkid);
    }
    if proto.is_v5() {
        put_varint(buf, plen);
        properties::publish_out_write(buf, p);
    }
    buf.put_slice(p.payload);
}
