//! The decoder: frames one packet from a receive buffer and parses it.

use crate::error::{malformed, protocol, DecodeError};
use crate::packet::Packet;
use crate::packets;
use crate::types::Protocol;
use crate::wire::{parse_varint, Reader};
use bytes::{Buf, BytesMut};

/// Frames and parses MQTT packets, tokio-util style: feed it the receive buffer, get packets.
///
/// It knows the connection's protocol version: unknown until a CONNECT is decoded (only CONNECT
/// is accepted until then), or set up front with [`Decoder::with_protocol`] on the client side.
///
/// Every error is fatal for the connection; after an error the buffer's contents are
/// unspecified (the failing packet may have been split off).
#[derive(Debug, Clone)]
pub struct Decoder {
    protocol: Option<Protocol>,
    max_packet_size: u32,
}

impl Decoder {
    /// A decoder for a new server-side connection: the protocol is learnt from CONNECT.
    /// `max_packet_size` bounds the whole packet, fixed header included.
    pub fn new(max_packet_size: u32) -> Decoder {
        Decoder {
            protocol: None,
            max_packet_size,
        }
    }

    /// A decoder that already knows the protocol (client side, or tests).
    pub fn with_protocol(protocol: Protocol, max_packet_size: u32) -> Decoder {
        Decoder {
            protocol: Some(protocol),
            max_packet_size,
        }
    }

    /// The protocol in use; `None` until a CONNECT is decoded.
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    /// Sets the protocol.
    pub fn set_protocol(&mut self, protocol: Protocol) {
        self.protocol = Some(protocol);
    }

    /// The largest packet accepted, fixed header included.
    pub fn max_packet_size(&self) -> u32 {
        self.max_packet_size
    }

    /// Sets the largest packet accepted, fixed header included.
    pub fn set_max_packet_size(&mut self, max: u32) {
        self.max_packet_size = max;
    }

    /// Frames and parses one packet.
    ///
    /// - `Ok(None)`: more bytes are needed; `buf` is untouched.
    /// - `Ok(Some(packet))`: the packet's bytes were split off the front of `buf`; the
    ///   packet's strings and payloads are `Bytes` slices of them (zero-copy).
    /// - `Err(_)`: the connection must be closed (see [`DecodeError::reason_code`]).
    ///
    /// The packet type and flags are checked from the first byte, and the total size against
    /// the maximum as soon as the remaining length is complete, before the body has arrived.
    /// A decoded CONNECT sets the decoder's protocol, so pipelined packets decode right.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Packet>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        check_first_byte(first, self.protocol)?;
        let Some((remaining, len_bytes)) = parse_varint(&buf[1..])? else {
            return Ok(None);
        };
        let header = 1 + len_bytes;
        let size = header + remaining as usize;
        if size > self.max_packet_size as usize {
            return Err(DecodeError::PacketTooLarge {
                size,
                max: self.max_packet_size,
            });
        }
        if buf.len() < size {
            return Ok(None);
        }
        let mut frame = buf.split_to(size).freeze();
        frame.advance(header);
        let mut r = Reader::new(frame);
        let packet = match self.protocol {
            None => {
                let connect = packets::connect::read(&mut r)?;
                self.protocol = Some(connect.protocol);
                Packet::Connect(Box::new(connect))
            }
            Some(p) => parse(first, p, &mut r)?,
        };
        Ok(Some(packet))
    }
}

/// Checks the packet type and the fixed-header flags (§2.1.2, §2.1.3).
fn check_first_byte(first: u8, proto: Option<Protocol>) -> Result<(), DecodeError> {
    let (kind, flags) = (first >> 4, first & 0x0F);
    match kind {
        0 => return Err(malformed("reserved packet type 0")),
        1 => {}
        _ if proto.is_none() => return Err(protocol("first packet is not CONNECT")),
        15 if proto.is_some_and(|p| !p.is_v5()) => {
            return Err(malformed("packet type 15 is reserved before MQTT 5.0"))
        }
        _ => {}
    }
    let ok = match kind {
        3 => {
            let qos = (flags >> 1) & 0x03;
            if qos == 3 {
                return Err(malformed("PUBLISH QoS 3"));
            }
            if qos == 0 && flags & 0x08 != 0 {
                return Err(malformed("PUBLISH DUP set on QoS 0"));
            }
            true
        }
        6 | 8 | 10 => flags == 0x02,
        _ => flags == 0,
    };
    if ok {
        Ok(())
    } else {
        Err(malformed("reserved fixed-header flags"))
    }
}

/// Parses a body once the protocol is known.
fn parse(first: u8, proto: Protocol, r: &mut Reader) -> Result<Packet, DecodeError> {
    use packets::*;
    Ok(match first >> 4 {
        1 => Packet::Connect(Box::new(connect::read(r)?)),
        2 => Packet::ConnAck(Box::new(connack::read(r, proto)?)),
        3 => Packet::Publish(Box::new(publish::read(r, first & 0x0F, proto)?)),
        4 => Packet::PubAck(ack::read(r, proto, allowed::puback)?),
        5 => Packet::PubRec(ack::read(r, proto, allowed::puback)?),
        6 => Packet::PubRel(ack::read(r, proto, allowed::pubrel)?),
        7 => Packet::PubComp(ack::read(r, proto, allowed::pubrel)?),
        8 => Packet::Subscribe(subscribe::read(r, proto)?),
        9 => Packet::SubAck(suback::read(r, proto)?),
        10 => Packet::Unsubscribe(unsubscribe::read(r, proto)?),
        11 => Packet::UnsubAck(unsuback::read(r, proto)?),
        12 => {
            r.finish()?;
            Packet::PingReq
        }
        13 => {
            r.finish()?;
            Packet::PingResp
        }
        14 => Packet::Disconnect(disconnect::read(r, proto)?),
        // 15: check_first_byte let it through only on 5.0.
        _ => Packet::Auth(auth::read(r)?),
    })
}
