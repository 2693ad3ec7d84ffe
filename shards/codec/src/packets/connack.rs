//! CONNACK (§3.2): acknowledge flags, reason code (3.x: return code), 5.0 properties.
//! On 3.1 the flags byte is reserved: written as 0, ignored when read.

use super::allowed;
use crate::error::{malformed, protocol, Result};
use crate::packet::{ConnAck, ConnAckProperties};
use crate::properties::{self, Properties};
use crate::types::{Protocol, ReasonCode};
use crate::wire::{put_header, total_len, Reader};
use bytes::{BufMut, BytesMut};

pub(crate) fn read(r: &mut Reader, proto: Protocol) -> Result<ConnAck> {
    let flags = r.u8()?;
    // 3.1 has no Session Present: the whole byte is reserved and unused, so it is ignored.
    let session_present = proto != Protocol::V3_1 && flags & 0x01 != 0;
    if proto != Protocol::V3_1 && flags & 0xFE != 0 {
        return Err(malformed("CONNACK reserved flag set"));
    }
    let raw = r.u8()?;
    let (code, properties) = if proto.is_v5() {
        if !allowed::connack(raw) {
            return Err(protocol("reason code not allowed on CONNACK"));
        }
        (ReasonCode(raw), properties::read::<ConnAckProperties>(r)?)
    } else {
        let code =
            ReasonCode::from_v3_connack(raw).ok_or(protocol("reserved CONNACK return code"))?;
        (code, ConnAckProperties::default())
    };
    r.finish()?;
    if session_present && code.0 != 0 {
        return Err(protocol("session present with a failure reason code"));
    }
    Ok(ConnAck {
        session_present,
        code,
        properties,
    })
}

/// (remaining length, properties length).
pub(crate) fn layout(c: &ConnAck, proto: Protocol) -> (usize, usize) {
    if proto.is_v5() {
        let plen = c.properties.len();
        (2 + properties::wire_len(plen), plen)
    } else {
        (2, 0)
    }
}

pub(crate) fn write(c: &ConnAck, proto: Protocol, buf: &mut BytesMut) {
    let (remaining, plen) = layout(c, proto);
    buf.reserve(total_len(remaining));
    put_header(buf, 0x20, remaining);
    // 3.1 has no Session Present flag.
    buf.put_u8(u8::from(c.session_present && proto != Protocol::V3_1));
    if proto.is_v5() {
        buf.put_u8(c.code.0);
        properties::write(buf, &c.properties, plen);
    } else {
        buf.put_u8(c.code.to_v3_connack());
    }
}
