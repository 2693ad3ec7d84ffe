//! Zero-copy MQTT 3.1, 3.1.1 and 5.0 codec.
//!
//! Pure: no I/O, no clock. [`Decoder::decode`] frames and parses one packet from a `BytesMut`
//! (`Ok(None)` means "need more bytes"), checking the maximum packet size from the fixed header
//! before the body is buffered. [`encode`] writes a packet for a given protocol version.
//!
//! # What the codec checks, and what it leaves to the broker
//!
//! The decoder enforces the encoding rules of the spec and reports each violation as
//! [`DecodeError::MalformedPacket`] (0x81, the bytes cannot be parsed: lengths past the end,
//! reserved bits, invalid UTF-8, trailing bytes, a property identifier not allowed on the
//! packet) or [`DecodeError::ProtocolError`] (0x82, it parses but a value is forbidden: packet
//! identifier 0, a duplicated property, a zero Receive Maximum / Maximum Packet Size / Topic
//! Alias / Subscription Identifier, a reason code not allowed on the packet, SUBSCRIBE or
//! UNSUBSCRIBE without filters).
//!
//! It does not check topic names and filters beyond UTF-8 (wildcards in a PUBLISH topic,
//! wildcard placement in filters, shared subscriptions), client identifier rules, or anything
//! that depends on connection state (topic alias ranges, receive maximum, a second CONNECT):
//! the broker does, since it must answer with a specific reason code.
#![warn(missing_docs, unreachable_pub)]

mod decode;
mod encode;
mod error;
mod packet;
mod packets;
mod properties;
mod types;
mod wire;

pub use decode::Decoder;
pub use encode::{encode, encode_publish, encode_publish_out, encoded_len, publish_out_len};
pub use error::DecodeError;
pub use packet::*;
pub use types::*;
