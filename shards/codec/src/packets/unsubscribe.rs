//! UNSUBSCRIBE (§3.10): packet identifier, 5.0 properties, then topic filters.

use super::read_pkid;
use crate::error::{protocol, Result};
use crate::packet::{Unsubscribe, UnsubscribeProperties};
use crate::properties::{self, Properties};
use crate::types::Protocol;
use crate::wire::{put_header, put_str, str_len, total_len, Reader};
use bytes::{BufMut, BytesMut};

pub(crate) fn read(r: &mut Reader, proto: Protocol) -> Result<Unsubscribe> {
    let pkid = read_pkid(r)?;
    let properties = if proto.is_v5() {
        properties::read::<UnsubscribeProperties>(r)?
    } else {
        UnsubscribeProperties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string()?);
    }
    if filters.is_empty() {
        return Err(protocol("UNSUBSCRIBE without topic filters"));
    }
    Ok(Unsubscribe {
        pkid,
        filters,
        properties,
    })
}

/// (remaining length, properties length).
pub(crate) fn layout(u: &Unsubscribe, proto: Protocol) -> (usize, usize) {
    let mut n = 2;
    let mut plen = 0;
    if proto.is_v5() {
        plen = u.properties.len();
        n += properties::wire_len(plen);
    }
    n += u.filters.iter().map(str_len).sum::<usize>();
    (n, plen)
}

pub(crate) fn write(u: &Unsubscribe, proto: Protocol, buf: &mut BytesMut) {
    let (remaining, plen) = layout(u, proto);
    buf.reserve(total_len(remaining));
    put_header(buf, 0xA2, remaining);
    buf.put_u16(u.pkid);
    if proto.is_v5() {
        properties::write(buf, &u.properties, plen);
    }
    for f in &u.filters {
        put_str(buf, f);
    }
}
