//! AUTH (§3.15), MQTT 5.0 only: the decoder rejects packet type 15 on 3.x before it gets here.

use super::{allowed, read_reason_tail, reason_tail_layout, write_reason_tail};
use crate::error::Result;
use crate::packet::{Auth, AuthProperties};
use crate::wire::{put_header, total_len, Reader};
use bytes::BytesMut;

/// Parses the body. A lone reason byte without Property Length is accepted, as on DISCONNECT.
pub(crate) fn read(r: &mut Reader) -> Result<Auth> {
    let (reason, properties) = read_reason_tail::<AuthProperties>(r, allowed::auth)?;
    Ok(Auth { reason, properties })
}

/// (remaining length, reason tail layout): empty for Success without properties, otherwise
/// reason code and properties (the spec allows omitting only both together).
pub(crate) fn layout(a: &Auth) -> (usize, (usize, usize)) {
    let tail = reason_tail_layout(a.reason, &a.properties, false);
    (tail.0, tail)
}

pub(crate) fn write(a: &Auth, buf: &mut BytesMut) {
    let (remaining, tail) = layout(a);
    buf.reserve(total_len(remaining));
    put_header(buf, 0xF0, remaining);
    write_reason_tail(buf, a.reason, &a.properties, tail);
}
