//! Decode errors and the MQTT 5.0 reason code each one maps to.

use crate::types::ReasonCode;

/// Why a packet could not be decoded. Every variant is fatal for the connection: the broker
/// answers with [`DecodeError::reason_code`] (CONNACK or DISCONNECT on 5.0) and closes it.
///
/// The split between [`DecodeError::MalformedPacket`] and [`DecodeError::ProtocolError`] follows
/// MQTT 5.0 §4.13: *malformed* when the bytes cannot be parsed (lengths running past the packet,
/// reserved bits set, invalid UTF-8, trailing bytes), *protocol error* when the packet parses but
/// carries a value the protocol forbids (a zero packet identifier, a duplicated property, a
/// Receive Maximum of 0, a reason code not allowed on that packet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes cannot be parsed as the packet they claim to be (0x81).
    #[error("malformed packet: {0}")]
    MalformedPacket(&'static str),
    /// The packet parses but breaks a protocol rule (0x82).
    #[error("protocol error: {0}")]
    ProtocolError(&'static str),
    /// The whole packet (fixed header included) exceeds the maximum packet size (0x95).
    /// Reported as soon as the fixed header is complete, before the body has arrived.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Total size the fixed header announces, fixed header included.
        size: usize,
        /// The decoder's limit.
        max: u32,
    },
    /// CONNECT names a protocol or level this codec does not speak (0x84; 3.x return code 1).
    /// Carries the protocol level byte so the broker can pick the CONNACK format.
    #[error("unsupported protocol version {0}")]
    UnsupportedProtocolVersion(u8),
}

impl DecodeError {
    /// The MQTT 5.0 reason code to report in CONNACK or DISCONNECT.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::MalformedPacket(_) => ReasonCode::MALFORMED_PACKET,
            DecodeError::ProtocolError(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolVersion(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

/// Shorthand used by the parsers.
pub(crate) type Result<T> = std::result::Result<T, DecodeError>;

pub(crate) const fn malformed(why: &'static str) -> DecodeError {
    DecodeError::MalformedPacket(why)
}

pub(crate) const fn protocol(why: &'static str) -> DecodeError {
    DecodeError::ProtocolError(why)
}
