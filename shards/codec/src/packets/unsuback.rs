//! UNSUBACK (§3.11): packet identifier; on 5.0 also properties and one reason code per filter.

use super::{allowed, read_pkid, read_reason_list};
use crate::error::Result;
use crate::packet::{AckProperties, UnsubAck};
use crate::properties::{self, Properties};
use crate::types::Protocol;
use crate::wire::{put_header, total_len, Reader};
use bytes::{BufMut, BytesMut};

pub(crate) fn read(r: &mut Reader, proto: Protocol) -> Result<UnsubAck> {
    let pkid = read_pkid(r)?;
    if !proto.is_v5() {
        r.finish()?;
        return Ok(UnsubAck {
            pkid,
            ..UnsubAck::default()
        });
    }
    let properties = properties::read::<AckProperties>(r)?;
    let reasons = read_reason_list(r, allowed::unsuback)?;
    Ok(UnsubAck {
        pkid,
        reasons,
        properties,
    })
}

/// (remaining length, properties length). 3.x writes the packet identifier only.
pub(crate) fn layout(u: &UnsubAck, proto: Protocol) -> (usize, usize) {
    if proto.is_v5() {
        let plen = u.properties.len();
        (2 + properties::wire_len(plen) + u.reasons.len(), plen)
    } else {
        (2, 0)
    }
}

pub(crate) fn write(u: &UnsubAck, proto: Protocol, buf: &mut BytesMut) {
    let (remaining, plen) = layout(u, proto);
    buf.reserve(total_len(remaining));
    put_header(buf, 0xB0, remaining);
    buf.put_u16(u.pkid);
    if proto.is_v5() {
        properties::write(buf, &u.properties, plen);
        buf.extend(u.reasons.iter().map(|c| c.0));
    }
}
