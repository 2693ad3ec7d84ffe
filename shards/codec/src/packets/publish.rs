//! PUBLISH (§3.3): topic, packet identifier when QoS > 0, 5.0 properties, payload.
//!
//! The codec checks the topic is valid UTF-8 and, on 3.x and on 5.0 without a Topic Alias,
//! not empty. It does not check for wildcards in the topic: the broker does, since on 5.0 it
//! must answer 0x90 (Topic Name invalid). The fixed-header flags (QoS 3, DUP on QoS 0) are
//! checked by the decoder before the body arrives.

use super::read_pkid;
use crate::error::{malformed, protocol, Result};
use crate::packet::{Publish, PublishProperties};
use crate::properties::{self, Properties};
use crate::types::{Protocol, QoS};
use crate::wire::{put_header, put_str, str_len, total_len, Reader};
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

/// (remaining length, properties length).
pub(crate) fn layout(p: &Publish, proto: Protocol) -> (usize, usize) {
    let mut n = str_len(&p.topic) + p.payload.len();
    if p.qos != QoS::AtMostOnce {
        n += 2;
    }
    let mut plen = 0;
    if proto.is_v5() {
        plen = p.properties.len();
        n += properties::wire_len(plen);
    }
    (n, plen)
}

pub(crate) fn write(p: &Publish, proto: Protocol, buf: &mut BytesMut) {
    let (remaining, plen) = layout(p, proto);
    buf.reserve(total_len(remaining));
    let first = 0x30 | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain);
    put_header(buf, first, remaining);
    put_str(buf, &p.topic);
    if p.qos != QoS::AtMostOnce {
        buf.put_u16(p.pkid);
    }
    if proto.is_v5() {
        properties::write(buf, &p.properties, plen);
    }
    buf.put_slice(&p.payload);
}
