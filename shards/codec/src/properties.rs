//! MQTT 5.0 properties (§2.2.2): one declarative table per packet drives decoding, sizing and
//! encoding, so the three can never disagree.
//!
//! Decoding rules (§2.2.2.2 and each property's section):
//! - an identifier not allowed on the packet is a malformed packet (the spec's wording);
//! - a property that may appear once appearing twice is a protocol error;
//! - a zero Receive Maximum, Maximum Packet Size, Topic Alias or Subscription Identifier, and a
//!   byte property other than 0/1 where only 0/1 is allowed, are protocol errors;
//! - a property length or value running past the packet is malformed.

use crate::error::{malformed, protocol, Result};
use crate::packet::*;
use crate::types::ByteStr;
use crate::wire::{bin_len, put_bin, put_str, put_varint, str_len, varint_len, Reader};
use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;

/// Property identifiers (§2.2.2.2).
mod ids {
    pub(super) const PAYLOAD_FORMAT_INDICATOR: u32 = 0x01;
    pub(super) const MESSAGE_EXPIRY_INTERVAL: u32 = 0x02;
    pub(super) const CONTENT_TYPE: u32 = 0x03;
    pub(super) const RESPONSE_TOPIC: u32 = 0x08;
    pub(super) const CORRELATION_DATA: u32 = 0x09;
    pub(super) const SUBSCRIPTION_IDENTIFIER: u32 = 0x0B;
    pub(super) const SESSION_EXPIRY_INTERVAL: u32 = 0x11;
    pub(super) const ASSIGNED_CLIENT_IDENTIFIER: u32 = 0x12;
    pub(super) const SERVER_KEEP_ALIVE: u32 = 0x13;
    pub(super) const AUTHENTICATION_METHOD: u32 = 0x15;
    pub(super) const AUTHENTICATION_DATA: u32 = 0x16;
    pub(super) const REQUEST_PROBLEM_INFORMATION: u32 = 0x17;
    pub(super) const WILL_DELAY_INTERVAL: u32 = 0x18;
    pub(super) const REQUEST_RESPONSE_INFORMATION: u32 = 0x19;
    pub(super) const RESPONSE_INFORMATION: u32 = 0x1A;
    pub(super) const SERVER_REFERENCE: u32 = 0x1C;
    pub(super) const REASON_STRING: u32 = 0x1F;
    pub(super) const RECEIVE_MAXIMUM: u32 = 0x21;
    pub(super) const TOPIC_ALIAS_MAXIMUM: u32 = 0x22;
    pub(super) const TOPIC_ALIAS: u32 = 0x23;
    pub(super) const MAXIMUM_QOS: u32 = 0x24;
    pub(super) const RETAIN_AVAILABLE: u32 = 0x25;
    pub(super) const USER_PROPERTY: u32 = 0x26;
    pub(super) const MAXIMUM_PACKET_SIZE: u32 = 0x27;
    pub(super) const WILDCARD_SUBSCRIPTION_AVAILABLE: u32 = 0x28;
    pub(super) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u32 = 0x29;
    pub(super) const SHARED_SUBSCRIPTION_AVAILABLE: u32 = 0x2A;
}

/// A packet's property set.
pub(crate) trait Properties: Default {
    /// Reads the value of property `id` (its identifier already consumed).
    fn read_one(&mut self, id: u32, r: &mut Reader) -> Result<()>;
    /// Checks rules that span several properties, after all were read.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
    /// Bytes of the properties on the wire, without the Property Length prefix.
    fn len(&self) -> usize;
    /// Writes the properties, without the Property Length prefix.
    fn write(&self, buf: &mut BytesMut);
}

/// Reads a Property Length and the properties it covers.
pub(crate) fn read<P: Properties>(r: &mut Reader) -> Result<P> {
    let n = r.varint()? as usize;
    let mut sub = r.sub(n)?;
    let mut props = P::default();
    while !sub.is_empty() {
        let id = sub.varint()?;
        props.read_one(id, &mut sub)?;
    }
    props.validate()?;
    Ok(props)
}

/// Bytes of Property Length plus properties, given `len` from [`Properties::len`].
pub(crate) fn wire_len(len: usize) -> usize {
    varint_len(len) + len
}

/// Writes Property Length and properties, given `len` from [`Properties::len`].
pub(crate) fn write<P: Properties>(buf: &mut BytesMut, props: &P, len: usize) {
    put_varint(buf, len);
    props.write(buf);
}

/// How one kind of property value is read, sized and written.
trait Kind {
    type Field;
    fn read(field: &mut Self::Field, r: &mut Reader) -> Result<()>;
    fn len(field: &Self::Field) -> usize;
    fn write(buf: &mut BytesMut, id: u32, field: &Self::Field);
}

fn once<T>(slot: &mut Option<T>, value: T) -> Result<()> {
    if slot.is_some() {
        return Err(protocol("property appears more than once"));
    }
    *slot = Some(value);
    Ok(())
}

fn put_id(buf: &mut BytesMut, id: u32) {
    // Every defined identifier is below 128: one byte as a variable byte integer.
    buf.put_u8(id as u8);
}

fn zero_or_one(v: u8) -> Result<u8> {
    if v > 1 {
        return Err(protocol("property value must be 0 or 1"));
    }
    Ok(v)
}

fn non_zero<T: PartialEq + Default>(v: T) -> Result<T> {
    if v == T::default() {
        return Err(protocol("property value must not be 0"));
    }
    Ok(v)
}

/// Wire size of an optional fixed-size value: identifier and `size` bytes.
fn fixed_len<T>(f: &Option<T>, size: usize) -> usize {
    if f.is_some() {
        1 + size
    } else {
        0
    }
}

fn put_fixed<T: Copy>(buf: &mut BytesMut, id: u32, f: &Option<T>, put: fn(&mut BytesMut, T)) {
    if let Some(v) = *f {
        put_id(buf, id);
        put(buf, v);
    }
}

/// A byte that must be 0 or 1 (Payload Format Indicator, Request * Information, Maximum QoS).
struct Flag;
impl Kind for Flag {
    type Field = Option<u8>;
    fn read(f: &mut Option<u8>, r: &mut Reader) -> Result<()> {
        once(f, zero_or_one(r.u8()?)?)
    }
    fn len(f: &Option<u8>) -> usize {
        fixed_len(f, 1)
    }
    fn write(buf: &mut BytesMut, id: u32, f: &Option<u8>) {
        put_fixed(buf, id, f, |b, v| b.put_u8(v))
    }
}

/// A boolean byte (the *Available properties of CONNACK).
struct Bool;
impl Kind for Bool {
    type Field = Option<bool>;
    fn read(f: &mut Option<bool>, r: &mut Reader) -> Result<()> {
        once(f, zero_or_one(r.u8()?)? == 1)
    }
    fn len(f: &Option<bool>) -> usize {
        fixed_len(f, 1)
    }
    fn write(buf: &mut BytesMut, id: u32, f: &Option<bool>) {
        put_fixed(buf, id, f, |b, v| b.put_u8(u8::from(v)))
    }
}

/// A two-byte integer.
struct U16;
impl Kind for U16 {
    type Field = Option<u16>;
    fn read(f: &mut Option<u16>, r: &mut Reader) -> Result<()> {
        once(f, r.u16()?)
    }
    fn len(f: &Option<u16>) -> usize {
        fixed_len(f, 2)
    }
    fn write(buf: &mut BytesMut, id: u32, f: &Option<u16>) {
        put_fixed(buf, id, f, |b, v| b.put_u16(v))
    }
}

/// A two-byte integer for which 0 is a protocol error (Receive Maximum, Topic Alias).
struct U16NonZero;
impl Kind for U16NonZero {
    type Field = Option<u16>;
    fn read(f: &mut Option<u16>, r: &mut Reader) -> Result<()> {
        once(f, non_zero(r.u16()?)?)
    }
    fn len(f: &Option<u16>) -> usize {
        U16::len(f)
    }
    fn write(buf: &mut BytesMut, id: u32, f: &Option<u16>) {
        U16::write(buf, id, f)
    }
}

/// A four-byte integer.
struct U32;
impl Kind for U32 {
    type Field = Option<u32>;
    fn read(f: &mut Option<u32>, r: &mut Reader) -> Result<()> {
        once(f, r.u32()?)
    }
    fn len(f: &Option<u32>) -> usize {
        fixed_len(f, 4)
    }
    fn write(buf: &mut BytesMut, id: u32, f: &Option<u32>) {
        put_fixed(buf, id, f, |b, v| b.put_u32(v))
    }
}

/// A four-byte integer for which 0 is a protocol error (Maximum Packet Size).
struct U32NonZero;
impl Kind for U32NonZero {
    type Field = Option<u32>;
    fn read(f: &mut Option<u32>, r: &mut Reader) -> Result<()> {
        once(f, non_zero(r.u32()?)?)
    }
    fn len(f: &Option<u32>) -> usize {
        U32::len(f)
    }
    fn write(buf: &mut BytesMut, id: u32, f: &Option<u32>) {
        U32::write(buf, id, f)
    }
}

/// A UTF-8 string.
struct Str;
impl Kind for Str {
    type Field = Option<ByteStr>;
    fn read(f: &mut Option<ByteStr>, r: &mut Reader) -> Result<()> {
        let v = r.string()?;
        once(f, v)
    }
    fn len(f: &Option<ByteStr>) -> usize {
        f.as_ref().map_or(0, |s| 1 + str_len(s))
    }
    fn write(buf: &mut BytesMut, id: u32, f: &Option<ByteStr>) {
        if let Some(s) = f {
            put_id(buf, id);
            put_str(buf, s);
        }
    }
}

/// Binary data.
struct Bin;
impl Kind for Bin {
    type Field = Option<Bytes>;
    fn read(f: &mut Option<Bytes>, r: &mut Reader) -> Result<()> {
        let v = r.binary()?;
        once(f, v)
    }
    fn len(f: &Option<Bytes>) -> usize {
        f.as_ref().map_or(0, |b| 1 + bin_len(b))
    }
    fn write(buf: &mut BytesMut, id: u32, f: &Option<Bytes>) {
        if let Some(b) = f {
            put_id(buf, id);
            put_bin(buf, b);
        }
    }
}

/// User Property pairs; may repeat.
struct User;
impl Kind for User {
    type Field = UserProperties;
    fn read(f: &mut UserProperties, r: &mut Reader) -> Result<()> {
        f.push(r.pair()?);
        Ok(())
    }
    fn len(f: &UserProperties) -> usize {
        f.iter().map(|(k, v)| 1 + str_len(k) + str_len(v)).sum()
    }
    fn write(buf: &mut BytesMut, id: u32, f: &UserProperties) {
        for (k, v) in f {
            put_id(buf, id);
            put_str(buf, k);
            put_str(buf, v);
        }
    }
}

/// One Subscription Identifier (SUBSCRIBE): a variable byte integer, 0 is a protocol error.
struct SubId;
impl Kind for SubId {
    type Field = Option<u32>;
    fn read(f: &mut Option<u32>, r: &mut Reader) -> Result<()> {
        once(f, non_zero(r.varint()?)?)
    }
    fn len(f: &Option<u32>) -> usize {
        f.map_or(0, |v| 1 + varint_len(v as usize))
    }
    fn write(buf: &mut BytesMut, id: u32, f: &Option<u32>) {
        if let Some(v) = *f {
            put_id(buf, id);
            put_varint(buf, v as usize);
        }
    }
}

/// Subscription Identifiers (PUBLISH): may repeat, 0 is a protocol error.
struct SubIds;
impl Kind for SubIds {
    type Field = SmallVec<[u32; 1]>;
    fn read(f: &mut SmallVec<[u32; 1]>, r: &mut Reader) -> Result<()> {
        f.push(non_zero(r.varint()?)?);
        Ok(())
    }
    fn len(f: &SmallVec<[u32; 1]>) -> usize {
        f.iter().map(|&v| 1 + varint_len(v as usize)).sum()
    }
    fn write(buf: &mut BytesMut, id: u32, f: &SmallVec<[u32; 1]>) {
        for &v in f {
            put_id(buf, id);
            put_varint(buf, v as usize);
        }
    }
}

/// Implements [`Properties`] from a table of `IDENTIFIER => field: Kind`.
macro_rules! property_set {
    ($ty:ty, $packet:literal, { $($id:ident => $field:ident : $kind:ident),+ $(,)? }) => {
        impl Properties for $ty {
            fn read_one(&mut self, id: u32, r: &mut Reader) -> Result<()> {
                match id {
                    $( ids::$id => $kind::read(&mut self.$field, r), )+
                    _ => Err(malformed(concat!("property not allowed on ", $packet))),
                }
            }
            fn validate(&self) -> Result<()> {
                <$ty as Extra>::extra(self)
            }
            fn len(&self) -> usize {
                0 $( + $kind::len(&self.$field) )+
            }
            fn write(&self, buf: &mut BytesMut) {
                $( $kind::write(buf, ids::$id, &self.$field); )+
            }
        }
    };
}

/// Cross-property rules; only CONNECT has one.
trait Extra {
    fn extra(&self) -> Result<()> {
        Ok(())
    }
}

impl Extra for ConnectProperties {
    fn extra(&self) -> Result<()> {
        // §3.1.2.11.10
        if self.authentication_data.is_some() && self.authentication_method.is_none() {
            return Err(protocol(
                "authentication data without authentication method",
            ));
        }
        Ok(())
    }
}
impl Extra for WillProperties {}
impl Extra for ConnAckProperties {}
impl Extra for PublishProperties {}
impl Extra for AckProperties {}
impl Extra for SubscribeProperties {}
impl Extra for UnsubscribeProperties {}
impl Extra for DisconnectProperties {}
impl Extra for AuthProperties {}

property_set!(ConnectProperties, "CONNECT", {
    SESSION_EXPIRY_INTERVAL => session_expiry_interval: U32,
    RECEIVE_MAXIMUM => receive_maximum: U16NonZero,
    MAXIMUM_PACKET_SIZE => maximum_packet_size: U32NonZero,
    TOPIC_ALIAS_MAXIMUM => topic_alias_maximum: U16,
    REQUEST_RESPONSE_INFORMATION => request_response_information: Flag,
    REQUEST_PROBLEM_INFORMATION => request_problem_information: Flag,
    AUTHENTICATION_METHOD => authentication_method: Str,
    AUTHENTICATION_DATA => authentication_data: Bin,
    USER_PROPERTY => user_properties: User,
});

property_set!(WillProperties, "the will", {
    WILL_DELAY_INTERVAL => will_delay_interval: U32,
    PAYLOAD_FORMAT_INDICATOR => payload_format_indicator: Flag,
    MESSAGE_EXPIRY_INTERVAL => message_expiry_interval: U32,
    CONTENT_TYPE => content_type: Str,
    RESPONSE_TOPIC => response_topic: Str,
    CORRELATION_DATA => correlation_data: Bin,
    USER_PROPERTY => user_properties: User,
});

property_set!(ConnAckProperties, "CONNACK", {
    SESSION_EXPIRY_INTERVAL => session_expiry_interval: U32,
    RECEIVE_MAXIMUM => receive_maximum: U16NonZero,
    MAXIMUM_QOS => maximum_qos: Flag,
    RETAIN_AVAILABLE => retain_available: Bool,
    MAXIMUM_PACKET_SIZE => maximum_packet_size: U32NonZero,
    ASSIGNED_CLIENT_IDENTIFIER => assigned_client_identifier: Str,
    TOPIC_ALIAS_MAXIMUM => topic_alias_maximum: U16,
    REASON_STRING => reason_string: Str,
    WILDCARD_SUBSCRIPTION_AVAILABLE => wildcard_subscription_available: Bool,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE => subscription_identifiers_available: Bool,
    SHARED_SUBSCRIPTION_AVAILABLE => shared_subscription_available: Bool,
    SERVER_KEEP_ALIVE => server_keep_alive: U16,
    RESPONSE_INFORMATION => response_information: Str,
    SERVER_REFERENCE => server_reference: Str,
    AUTHENTICATION_METHOD => authentication_method: Str,
    AUTHENTICATION_DATA => authentication_data: Bin,
    USER_PROPERTY => user_properties: User,
});

// Topic Alias 0 decodes: the receiver refuses it with 0x94 Topic Alias invalid (MQTT-3.3.2-8),
// which is the session's call, not a malformed packet.
property_set!(PublishProperties, "PUBLISH", {
    PAYLOAD_FORMAT_INDICATOR => payload_format_indicator: Flag,
    MESSAGE_EXPIRY_INTERVAL => message_expiry_interval: U32,
    TOPIC_ALIAS => topic_alias: U16,
    RESPONSE_TOPIC => response_topic: Str,
    CORRELATION_DATA => correlation_data: Bin,
    SUBSCRIPTION_IDENTIFIER => subscription_identifiers: SubIds,
    CONTENT_TYPE => content_type: Str,
    USER_PROPERTY => user_properties: User,
});

/// Bytes of a [`PublishOut`]'s properties on the wire (without the Property Length prefix).
pub(crate) fn publish_out_len(p: &PublishOut) -> usize {
    let b = p.properties;
    Flag::len(&b.payload_format_indicator)
        + U32::len(&p.message_expiry_interval)
        + U16::len(&p.topic_alias)
        + Str::len(&b.response_topic)
        + Bin::len(&b.correlation_data)
        + p.subscription_identifiers
            .iter()
            .map(|&v| 1 + varint_len(v as usize))
            .sum::<usize>()
        + Str::len(&b.content_type)
        + User::len(&b.user_properties)
}

/// Writes a [`PublishOut`]'s properties, without the Property Length prefix, in the order of
/// [`PublishProperties`]' own writer (the same bytes).
pub(crate) fn publish_out_write(buf: &mut BytesMut, p: &PublishOut) {
    let b = p.properties;
    Flag::write(
        buf,
        ids::PAYLOAD_FORMAT_INDICATOR,
        &b.payload_format_indicator,
    );
    U32::write(
        buf,
        ids::MESSAGE_EXPIRY_INTERVAL,
        &p.message_expiry_interval,
    );
    U16::write(buf, ids::TOPIC_ALIAS, &p.topic_alias);
    Str::write(buf, ids::RESPONSE_TOPIC, &b.response_topic);
    Bin::write(buf, ids::CORRELATION_DATA, &b.correlation_data);
    for &v in p.subscription_identifiers {
        put_id(buf, ids::SUBSCRIPTION_IDENTIFIER);
        put_varint(buf, v as usize);
    }
    Str::write(buf, ids::CONTENT_TYPE, &b.content_type);
    User::write(buf, ids::USER_PROPERTY, &b.user_properties);
}

property_set!(AckProperties, "an acknowledgement", {
    REASON_STRING => reason_string: Str,
    USER_PROPERTY => user_properties: User,
});

property_set!(SubscribeProperties, "SUBSCRIBE", {
    SUBSCRIPTION_IDENTIFIER => subscription_identifier: SubId,
    USER_PROPERTY => user_properties: User,
});

property_set!(UnsubscribeProperties, "UNSUBSCRIBE", {
    USER_PROPERTY => user_properties: User,
});

property_set!(DisconnectProperties, "DISCONNECT", {
    SESSION_EXPIRY_INTERVAL => session_expiry_interval: U32,
    REASON_STRING => reason_string: Str,
    SERVER_REFERENCE => server_reference: Str,
    USER_PROPERTY => user_properties: User,
});

property_set!(AuthProperties, "AUTH", {
    AUTHENTICATION_METHOD => authentication_method: Str,
    AUTHENTICATION_DATA => authentication_data: Bin,
    REASON_STRING => reason_string: Str,
    USER_PROPERTY => user_properties: User,
});
