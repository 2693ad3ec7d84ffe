//! SUBACK (§3.9): packet identifier, 5.0 properties, one reason code per filter.
//! 3.x carries granted QoS 0-2 or 0x80; any 5.0 failure code is written as 0x80 there.

use super::{allowed, read_pkid, read_reason_list};
use crate::error::Result;
use crate::packet::{AckProperties, SubAck};
use crate::properties::{self, Properties};
use crate::types::Protocol;
use crate::wire::{put_header, total_len, Reader};
use bytes::{BufMut, BytesMut};

pub(crate) fn read(r: &mut Reader, proto: Protocol) -> Result<SubAck> {
    let pkid = read_pkid(r)?;
    let (properties, allowed) = if proto.is_v5() {
        (
            properties::read::<AckProperties>(r)?,
            allowed::suback as fn(u8) -> bool,
        )
    } else {
        (
            AckProperties::default(),
            allowed::suback_v3 as fn(u8) -> bool,
        )
    };
    let reasons = read_reason_list(r, allowed)?;
    Ok(SubAck {
        pkid,
        reasons,
        properties,
    })
}

/// (remaining length, properties length).
pub(crate) fn layout(s: &SubAck, proto: Protocol) -> (usize, usize) {
    if proto.is_v5() {
        let plen = s.properties.len();
        (2 + properties::wire_len(plen) + s.reasons.len(), plen)
    } else {
        (2 + s.reasons.len(), 0)
    }
}

pub(crate) fn write(s: &SubAck, proto: Protocol, buf: &mut BytesMut) {
    let (remaining, plen) = layout(s, proto);
    buf.reserve(total_len(remaining));
    put_header(buf, 0x90, remaining);
    buf.put_u16(s.pkid);
    if proto.is_v5() {
        properties::write(buf, &s.properties, plen);
        buf.extend(s.reasons.iter().map(|c| c.0));
    } else {
        buf.extend(
            s.reasons
                .iter()
                .map(|c| if c.is_error() { 0x80 } else { c.0 }),
        );
    }
}
