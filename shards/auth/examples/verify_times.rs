//! Measures password verification: `cargo run --release -p shardmq-auth --example verify_times`.

use std::time::Instant;

use shardmq_auth::{hash_argon2id, PasswordFile, PasswordVerdict};

fn main() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/passwd_mosquitto"
    );
    let text = std::fs::read_to_string(fixture).expect("fixture");
    let argon = hash_argon2id(b"pw").expect("hash");
    let file = PasswordFile::parse(&format!("{text}argon:{argon}\n"));
    for (user, pw, what) in [
        (
            "alice",
            "secret7",
            "$7$ PBKDF2-SHA512, 101 iterations (mosquitto_passwd default)",
        ),
        ("bob", "secret6", "$6$ SHA-512"),
        ("argon", "pw", "argon2id m=19456 KiB, t=2, p=1"),
    ] {
        let n = 50;
        let t0 = Instant::now();
        for _ in 0..n {
            assert_eq!(
                file.verify(user, Some(pw.as_bytes())),
                PasswordVerdict::Accepted
            );
        }
        let each = t0.elapsed() / n;
        println!("{what}: {each:?} per verify");
    }
}
