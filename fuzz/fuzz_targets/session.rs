//! A session image from another node (`decode_session`) on arbitrary bytes. Checks: no panic;
//! an image that decodes encodes again to bytes that decode to the same image.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardmq_core::store::{decode_session, encode_session, Clock};
use std::sync::OnceLock;
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    static START: OnceLock<Instant> = OnceLock::new();
    let clock = Clock {
        now: *START.get_or_init(Instant::now) + std::time::Duration::from_secs(1 << 20),
        unix_ns: 1_800_000_000_000_000_000,
    };
    if let Ok(image) = decode_session(data, clock) {
        let again = encode_session(&image, clock);
        let back = decode_session(&again, clock).expect("a re-encoded image decodes");
        assert_eq!(back, image);
    }
});
