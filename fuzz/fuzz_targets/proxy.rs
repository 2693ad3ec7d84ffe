//! PROXY v1/v2 header parsing on arbitrary bytes. Checks: no panic; a parsed header never
//! claims more bytes than it was given or than the limit; parsing only the consumed prefix
//! gives the same answer; feeding the same bytes to a `Transport` in pieces gives the same
//! result as in one piece.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shardmq_transport::proxy::PROXY_MAX_BYTES;
use shardmq_transport::{ProxyHeader, Stack, Transport};

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let whole = ProxyHeader::parse(data);
    if let Ok(Some((info, n))) = &whole {
        assert!(*n > 0 && *n <= data.len() && *n <= PROXY_MAX_BYTES);
        assert_eq!(ProxyHeader::parse(&data[..*n]), Ok(Some((*info, *n))));
    }
    if let Ok(None) = whole {
        assert!(data.len() < PROXY_MAX_BYTES);
    }

    let stack = Stack { proxy: true, ..Stack::default() };
    let run = |pieces: &[&[u8]]| {
        let mut t = Transport::new(&stack).unwrap();
        let mut plain = BytesMut::new();
        let mut ok = true;
        for p in pieces {
            if t.on_wire_in(p, &mut plain).is_err() {
                ok = false;
                break;
            }
        }
        (ok, t.proxy_info(), plain)
    };
    let at = usize::from(split).min(data.len());
    let one = run(&[data]);
    let two = run(&[&data[..at], &data[at..]]);
    assert_eq!(one.1, two.1);
    if one.0 && two.0 {
        assert_eq!(one.2, two.2);
    }
});
