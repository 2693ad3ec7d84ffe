//! WebSocket server layer on arbitrary bytes: the upgrade request, then frames. The first
//! byte chooses whether a valid upgrade request (and a PROXY header) is prepended, so frames
//! are reached often, and how the input is split. Checks: no panic; splitting the input does
//! not change the MQTT bytes delivered (while no error happened); bounded output.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardmq_transport::{Stack, Transport, WsSettings};

const UPGRADE: &[u8] = b"GET /mqtt HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

fn run(stack: &Stack, input: &[u8], piece: usize) -> (bool, BytesMut, usize) {
    let mut t = Transport::new(stack).unwrap();
    let mut plain = BytesMut::new();
    let mut out = BytesMut::new();
    let mut ok = true;
    for chunk in input.chunks(piece.max(1)) {
        if t.on_wire_in(chunk, &mut plain).is_err() {
            ok = false;
            break;
        }
        if t.ready() && !plain.is_empty() {
            // Echo as the broker would answer.
            t.on_plain_out(&plain[plain.len() - 1..]).unwrap();
        }
        t.take_wire_out(&mut out);
        t.shrink();
    }
    t.take_wire_out(&mut out);
    assert!(ok || t.closing());
    (ok, plain, out.len())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else { return };
    let mut input = Vec::new();
    if mode & 1 != 0 {
        input.extend_from_slice(b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n");
    }
    if mode & 2 != 0 {
        input.extend_from_slice(UPGRADE);
    }
    input.extend_from_slice(data);
    let stack = Stack {
        proxy: mode & 1 != 0,
        ws: Some(WsSettings { path: "/mqtt".into(), max_message_bytes: 256 }),
        ..Stack::default()
    };
    let whole = run(&stack, &input, input.len());
    let split = run(&stack, &input, usize::from(mode >> 2) + 1);
    assert_eq!(whole.0, split.0);
    if whole.0 {
        assert_eq!(whole.1, split.1);
    }
});
