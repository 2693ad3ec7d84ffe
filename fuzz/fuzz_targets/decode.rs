//! Feeds arbitrary bytes to the MQTT decoder, packet after packet, twice: once with the
//! protocol unknown (as a server sees a new connection) and once with the protocol chosen by
//! the first byte. Every decoded packet is re-encoded and decoded again, and must come back
//! equal, with `encoded_len` matching the bytes written.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardmq_codec::{encode, encoded_len, Decoder, Packet, Protocol};

/// Small enough that PacketTooLarge is exercised, large enough for any fuzz input.
const MAX_PACKET_SIZE: u32 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    drain(Decoder::new(MAX_PACKET_SIZE), data);
    if let Some((&selector, rest)) = data.split_first() {
        let protocol = match selector % 3 {
            0 => Protocol::V3_1,
            1 => Protocol::V3_1_1,
            _ => Protocol::V5,
        };
        let max = if selector & 0x80 != 0 {
            u32::from(selector & 0x7F)
        } else {
            MAX_PACKET_SIZE
        };
        drain(Decoder::with_protocol(protocol, max), rest);
    }
});

/// Decodes until the decoder wants more bytes or fails.
fn drain(mut decoder: Decoder, data: &[u8]) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match decoder.decode(&mut buf) {
            Ok(Some(packet)) => {
                assert!(buf.len() < before, "a decoded packet consumes bytes");
                let protocol = decoder
                    .protocol()
                    .expect("a decoded packet implies a protocol");
                check_round_trip(&packet, protocol);
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) leaves the buffer untouched");
                break;
            }
            Err(_) => break,
        }
    }
}

fn check_round_trip(packet: &Packet, protocol: Protocol) {
    let mut out = BytesMut::new();
    encode(packet, protocol, &mut out);
    assert_eq!(
        out.len(),
        encoded_len(packet, protocol),
        "encoded_len of {packet:?}"
    );
    let mut decoder = Decoder::with_protocol(protocol, u32::MAX);
    let again = decoder.decode(&mut out);
    assert_eq!(
        again.as_ref().ok().and_then(Option::as_ref),
        Some(packet),
        "re-decode: {again:?}"
    );
    assert!(out.is_empty(), "re-encoded {packet:?} left {out:?}");
}
