//! Zero-copy MQTT 3.1, 3.1.1 and 5.0 codec.
//!
//! Pure: no I/O, no clock. `Decoder::decode` frames and parses one packet from a `BytesMut`
//! (`Ok(None)` means "need more bytes"), checking the maximum packet size from the fixed header
//! before the body is buffered. `encode` writes a packet for a given protocol version.
#![warn(missing_docs, unreachable_pub)]

mod packet;
mod types;

pub use packet::*;
pub use types::*;
