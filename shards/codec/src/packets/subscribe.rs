//! SUBSCRIBE (§3.8): packet identifier, 5.0 properties, then filter and options pairs.
//!
//! The codec checks UTF-8 and the options byte; the broker checks wildcard placement, empty
//! filters, shared-subscription syntax and No Local on shared subscriptions (it must answer
//! with a SUBACK reason code or a DISCONNECT).

use super::read_pkid;
use crate::error::{malformed, protocol, Result};
use crate::packet::{Subscribe, SubscribeFilter, SubscribeProperties, SubscriptionOptions};
use crate::properties::{self, Properties};
use crate::types::{Protocol, QoS, RetainHandling};
use crate::wire::{put_header, put_str, str_len, total_len, Reader};
use bytes::{BufMut, BytesMut};

pub(crate) fn read(r: &mut Reader, proto: Protocol) -> Result<Subscribe> {
    let pkid = read_pkid(r)?;
    let properties = if proto.is_v5() {
        properties::read::<SubscribeProperties>(r)?
    } else {
        SubscribeProperties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = read_options(r.u8()?, proto)?;
        filters.push(SubscribeFilter { filter, options });
    }
    if filters.is_empty() {
        return Err(protocol("SUBSCRIBE without topic filters"));
    }
    Ok(Subscribe {
        pkid,
        filters,
        properties,
    })
}

/// Subscription Options (§3.8.3.1). 5.0: reserved bits 6-7 are malformed, QoS 3 and Retain
/// Handling 3 are protocol errors. 3.x: the byte is the requested QoS; bits 2-7 set or QoS 3
/// are malformed (3.1.1 §3.8.3-4).
fn read_options(b: u8, proto: Protocol) -> Result<SubscriptionOptions> {
    if !proto.is_v5() {
        if b & 0xFC != 0 {
            return Err(malformed("subscription options reserved bits set"));
        }
        let qos = QoS::from_u8(b).ok_or(malformed("subscription QoS 3"))?;
        return Ok(SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        });
    }
    if b & 0xC0 != 0 {
        return Err(malformed("subscription options reserved bits set"));
    }
    let qos = QoS::from_u8(b & 0x03).ok_or(protocol("subscription QoS 3"))?;
    let retain_handling = match (b >> 4) & 0x03 {
        0 => RetainHandling::OnSubscribe,
        1 => RetainHandling::OnNewSubscribe,
        2 => RetainHandling::Never,
        _ => return Err(protocol("retain handling 3")),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: b & 0x04 != 0,
        retain_as_published: b & 0x08 != 0,
        retain_handling,
    })
}

fn options_byte(o: &SubscriptionOptions, proto: Protocol) -> u8 {
    let mut b = o.qos as u8;
    if proto.is_v5() {
        b |= u8::from(o.no_local) << 2;
        b |= u8::from(o.retain_as_published) << 3;
        b |= (o.retain_handling as u8) << 4;
    }
    b
}

/// (remaining length, properties length).
pub(crate) fn layout(s: &Subscribe, proto: Protocol) -> (usize, usize) {
    let mut n = 2;
    let mut plen = 0;
    if proto.is_v5() {
        plen = s.properties.len();
        n += properties::wire_len(plen);
    }
    n += s
        .filters
        .iter()
        .map(|f| str_len(&f.filter) + 1)
        .sum::<usize>();
    (n, plen)
}

pub(crate) fn write(s: &Subscribe, proto: Protocol, buf: &mut BytesMut) {
    let (remaining, plen) = layout(s, proto);
    buf.reserve(total_len(remaining));
    put_header(buf, 0x82, remaining);
    buf.put_u16(s.pkid);
    if proto.is_v5() {
        properties::write(buf, &s.properties, plen);
    }
    for f in &s.filters {
        put_str(buf, &f.filter);
        buf.put_u8(options_byte(&f.options, proto));
    }
}
