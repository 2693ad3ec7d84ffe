//! PUBACK, PUBREC, PUBREL and PUBCOMP (§3.4–§3.7): one layout, four packet types.

use super::{read_pkid, read_reason_tail, reason_tail_layout, write_reason_tail};
use crate::error::Result;
use crate::packet::{Ack, AckProperties};
use crate::types::Protocol;
use crate::wire::{put_header, Reader};
use bytes::{BufMut, BytesMut};

/// Parses the body. `allowed` is the packet type's reason code set.
pub(crate) fn read(r: &mut Reader, protocol: Protocol, allowed: fn(u8) -> bool) -> Result<Ack> {
    let pkid = read_pkid(r)?;
    if !protocol.is_v5() {
        r.finish()?;
        return Ok(Ack {
            pkid,
            ..Ack::default()
        });
    }
    let (reason, properties) = read_reason_tail::<AckProperties>(r, allowed)?;
    Ok(Ack {
        pkid,
        reason,
        properties,
    })
}

/// (remaining length, reason tail layout).
pub(crate) fn layout(ack: &Ack, protocol: Protocol) -> (usize, (usize, usize)) {
    if !protocol.is_v5() {
        return (2, (0, 0));
    }
    let tail = reason_tail_layout(ack.reason, &ack.properties, true);
    (2 + tail.0, tail)
}

/// Appends the packet; `first` is the fixed header's first byte.
pub(crate) fn write(ack: &Ack, protocol: Protocol, first: u8, buf: &mut BytesMut) {
    let (remaining, tail) = layout(ack, protocol);
    buf.reserve(crate::wire::total_len(remaining));
    put_header(buf, first, remaining);
    buf.put_u16(ack.pkid);
    write_reason_tail(buf, ack.reason, &ack.properties, tail);
}
