//! One module per control packet: `read` parses the variable header and payload (the fixed
//! header is already checked), `layout` sizes it for a protocol version and `write` appends it.

pub(crate) mod ack;
pub(crate) mod auth;
pub(crate) mod connack;
pub(crate) mod connect;
pub(crate) mod disconnect;
pub(crate) mod publish;
pub(crate) mod suback;
pub(crate) mod subscribe;
pub(crate) mod unsuback;
pub(crate) mod unsubscribe;

use crate::error::{protocol, Result};
use crate::properties::{self, Properties};
use crate::types::ReasonCode;
use crate::wire::Reader;
use bytes::{BufMut, BytesMut};

/// Reads a Packet Identifier; 0 is a protocol error (§2.2.1: it parses, but the protocol
/// forbids the value).
pub(crate) fn read_pkid(r: &mut Reader) -> Result<u16> {
    match r.u16()? {
        0 => Err(protocol("packet identifier must not be 0")),
        id => Ok(id),
    }
}

/// Reads the optional `reason code, properties` tail shared by the 5.0 acks, DISCONNECT and
/// AUTH: nothing left means Success without properties, one byte means a reason code without
/// properties (§3.4.2.1, §3.14.2.1). The packet must end after it.
pub(crate) fn read_reason_tail<P: Properties>(
    r: &mut Reader,
    allowed: fn(u8) -> bool,
) -> Result<(ReasonCode, P)> {
    if r.is_empty() {
        return Ok((ReasonCode::SUCCESS, P::default()));
    }
    let code = r.u8()?;
    if !allowed(code) {
        return Err(protocol("reason code not allowed on this packet"));
    }
    let props = if r.is_empty() {
        P::default()
    } else {
        properties::read(r)?
    };
    r.finish()?;
    Ok((ReasonCode(code), props))
}

/// Sizes of an optional reason tail: (bytes on the wire, properties length).
/// Shortest form: nothing for Success without properties, the reason byte alone when there are
/// no properties and `reason_alone` is allowed.
pub(crate) fn reason_tail_layout<P: Properties>(
    reason: ReasonCode,
    props: &P,
    reason_alone: bool,
) -> (usize, usize) {
    let plen = props.len();
    if plen == 0 && reason == ReasonCode::SUCCESS {
        (0, 0)
    } else if plen == 0 && reason_alone {
        (1, 0)
    } else {
        (1 + properties::wire_len(plen), plen)
    }
}

/// Writes an optional reason tail sized by [`reason_tail_layout`].
pub(crate) fn write_reason_tail<P: Properties>(
    buf: &mut BytesMut,
    reason: ReasonCode,
    props: &P,
    (len, plen): (usize, usize),
) {
    if len > 0 {
        buf.put_u8(reason.0);
    }
    if len > 1 {
        properties::write(buf, props, plen);
    }
}

/// Reason codes allowed on each 5.0 packet (§2.4 and each packet's Reason Code section).
pub(crate) mod allowed {
    /// CONNACK (§3.2.2.2).
    pub(crate) fn connack(c: u8) -> bool {
        matches!(
            c,
            0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F
        )
    }
    /// PUBACK and PUBREC (§3.4.2.1, §3.5.2.1).
    pub(crate) fn puback(c: u8) -> bool {
        matches!(
            c,
            0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
        )
    }
    /// PUBREL and PUBCOMP (§3.6.2.1, §3.7.2.1).
    pub(crate) fn pubrel(c: u8) -> bool {
        matches!(c, 0x00 | 0x92)
    }
    /// SUBACK (§3.9.3).
    pub(crate) fn suback(c: u8) -> bool {
        matches!(
            c,
            0x00 | 0x01 | 0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
        )
    }
    /// SUBACK in 3.x: granted QoS or failure.
    pub(crate) fn suback_v3(c: u8) -> bool {
        matches!(c, 0x00 | 0x01 | 0x02 | 0x80)
    }
    /// UNSUBACK (§3.11.3).
    pub(crate) fn unsuback(c: u8) -> bool {
        matches!(c, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91)
    }
    /// DISCONNECT (§3.14.2.1).
    pub(crate) fn disconnect(c: u8) -> bool {
        matches!(
            c,
            0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0x90 | 0x93..=0xA2
        )
    }
    /// AUTH (§3.15.2.1).
    pub(crate) fn auth(c: u8) -> bool {
        matches!(c, 0x00 | 0x18 | 0x19)
    }
}

/// Reads the reason code list that ends SUBACK and UNSUBACK: at least one, each allowed.
pub(crate) fn read_reason_list(r: &mut Reader, allowed: fn(u8) -> bool) -> Result<Vec<ReasonCode>> {
    let raw = r.rest();
    if raw.is_empty() {
        return Err(protocol("acknowledgement without reason codes"));
    }
    if !raw.iter().all(|&c| allowed(c)) {
        return Err(protocol("reason code not allowed on this packet"));
    }
    Ok(raw.iter().map(|&c| ReasonCode(c)).collect())
}
