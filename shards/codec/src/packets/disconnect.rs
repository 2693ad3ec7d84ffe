//! DISCONNECT (§3.14). 3.x has no body; 5.0 has an optional reason code and properties.

use super::{allowed, read_reason_tail, reason_tail_layout, write_reason_tail};
use crate::error::Result;
use crate::packet::{Disconnect, DisconnectProperties};
use crate::types::Protocol;
use crate::wire::{put_header, total_len, Reader};
use bytes::BytesMut;

pub(crate) fn read(r: &mut Reader, protocol: Protocol) -> Result<Disconnect> {
    if !protocol.is_v5() {
        r.finish()?;
        return Ok(Disconnect::default());
    }
    let (reason, properties) = read_reason_tail::<DisconnectProperties>(r, allowed::disconnect)?;
    Ok(Disconnect { reason, properties })
}

/// (remaining length, reason tail layout). Normal disconnection without properties is
/// encoded with a remaining length of 0.
pub(crate) fn layout(d: &Disconnect, protocol: Protocol) -> (usize, (usize, usize)) {
    if !protocol.is_v5() {
        return (0, (0, 0));
    }
    let tail = reason_tail_layout(d.reason, &d.properties, true);
    (tail.0, tail)
}

pub(crate) fn write(d: &Disconnect, protocol: Protocol, buf: &mut BytesMut) {
    let (remaining, tail) = layout(d, protocol);
    buf.reserve(total_len(remaining));
    put_header(buf, 0xE0, remaining);
    write_reason_tail(buf, d.reason, &d.properties, tail);
}
