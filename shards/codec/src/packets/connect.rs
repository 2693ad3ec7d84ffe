//! CONNECT (§3.1): protocol name and level, flags, keep-alive, properties, then the payload
//! (client id, will, user name, password).
//!
//! The codec checks the encoding rules; the broker checks the rest, because it must answer with
//! a CONNACK reason code: client identifier validity (empty id with Clean Session 0 in 3.1.1,
//! the 23-character limit of 3.1), the will topic's wildcards and emptiness.

use crate::error::{malformed, DecodeError, Result};
use crate::packet::{Connect, ConnectProperties, LastWill, WillProperties};
use crate::properties::{self, Properties};
use crate::types::{Protocol, QoS};
use crate::wire::{bin_len, put_bin, put_header, put_str, str_len, total_len, Reader};
use bytes::{BufMut, BytesMut};

const RESERVED: u8 = 0x01;
const CLEAN_START: u8 = 0x02;
const WILL: u8 = 0x04;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;

fn protocol_name(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::V3_1 => b"MQIsdp",
        Protocol::V3_1_1 | Protocol::V5 => b"MQTT",
    }
}

/// Parses the body. An unknown protocol name or level is reported as
/// [`DecodeError::UnsupportedProtocolVersion`] before anything else is parsed, so the broker
/// can answer with CONNACK 0x84 (3.x return code 1).
pub(crate) fn read(r: &mut Reader) -> Result<Connect> {
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQTT", 4) => Protocol::V3_1_1,
        (b"MQTT", 5) => Protocol::V5,
        (b"MQIsdp", 3) => Protocol::V3_1,
        _ => return Err(DecodeError::UnsupportedProtocolVersion(level)),
    };

    let flags = r.u8()?;
    if flags & RESERVED != 0 {
        return Err(malformed("CONNECT reserved flag set"));
    }
    let will_flag = flags & WILL != 0;
    let will_qos_bits = (flags >> WILL_QOS_SHIFT) & 0x03;
    let will_retain = flags & WILL_RETAIN != 0;
    let will_qos = QoS::from_u8(will_qos_bits).ok_or(malformed("will QoS 3"))?;
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        return Err(malformed("will QoS or retain set without will flag"));
    }
    let has_username = flags & USERNAME != 0;
    let has_password = flags & PASSWORD != 0;
    if has_password && !has_username && !protocol.is_v5() {
        return Err(malformed("password flag without user name flag"));
    }
    let keep_alive = r.u16()?;
    let properties = if protocol.is_v5() {
        properties::read::<ConnectProperties>(r)?
    } else {
        ConnectProperties::default()
    };

    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if protocol.is_v5() {
            properties::read::<WillProperties>(r)?
        } else {
            WillProperties::default()
        };
        let topic = r.string()?;
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string()?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish()?;
    Ok(Connect {
        protocol,
        clean_start: flags & CLEAN_START != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// Sizes of a CONNECT on the wire.
pub(crate) struct Layout {
    pub(crate) remaining: usize,
    props: usize,
    will_props: usize,
}

/// CONNECT is always written in its own `protocol` (name, level, properties or not).
pub(crate) fn layout(c: &Connect) -> Layout {
    let v5 = c.protocol.is_v5();
    let mut props = 0;
    let mut will_props = 0;
    let mut n = 2 + protocol_name(c.protocol).len() + 1 + 1 + 2;
    if v5 {
        props = c.properties.len();
        n += properties::wire_len(props);
    }
    n += str_len(&c.client_id);
    if let Some(w) = &c.will {
        if v5 {
            will_props = w.properties.len();
            n += properties::wire_len(will_props);
        }
        n += str_len(&w.topic) + bin_len(&w.payload);
    }
    if let Some(u) = &c.username {
        n += str_len(u);
    }
    if let Some(p) = &c.password {
        n += bin_len(p);
    }
    Layout {
        remaining: n,
        props,
        will_props,
    }
}

pub(crate) fn write(c: &Connect, buf: &mut BytesMut) {
    let l = layout(c);
    let v5 = c.protocol.is_v5();
    buf.reserve(total_len(l.remaining));
    put_header(buf, 0x10, l.remaining);
    put_bin(buf, protocol_name(c.protocol));
    buf.put_u8(c.protocol.level());
    let mut flags = 0;
    if c.clean_start {
        flags |= CLEAN_START;
    }
    if let Some(w) = &c.will {
        flags |= WILL | ((w.qos as u8) << WILL_QOS_SHIFT);
        if w.retain {
            flags |= WILL_RETAIN;
        }
    }
    if c.username.is_some() {
        flags |= USERNAME;
    }
    if c.password.is_some() {
        flags |= PASSWORD;
    }
    buf.put_u8(flags);
    buf.put_u16(c.keep_alive);
    if v5 {
        properties::write(buf, &c.properties, l.props);
    }
    put_str(buf, &c.client_id);
    if let Some(w) = &c.will {
        if v5 {
            properties::write(buf, &w.properties, l.will_props);
        }
        put_str(buf, &w.topic);
        put_bin(buf, &w.payload);
    }
    if let Some(u) = &c.username {
        put_str(buf, u);
    }
    if let Some(p) = &c.password {
        put_bin(buf, p);
    }
}
