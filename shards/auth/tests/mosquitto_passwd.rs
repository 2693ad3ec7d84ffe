//! Password files written by the real `mosquitto_passwd` (Debian's `mosquitto` package). The
//! committed fixture `fixtures/passwd_mosquitto` was made by Mosquitto 2.0.11's tool
//! (`-b` for `$7$`, `-H sha512 -b` for `$6$`), so the fixture test runs without it; the live
//! test runs the tool when it is installed and says so when it is not.

use std::path::Path;
use std::process::Command;

use shardmq_auth::{passwd_set, PasswordFile, PasswordVerdict};

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/passwd_mosquitto")
}

#[test]
fn committed_fixture_from_mosquitto_passwd_verifies() {
    let f = PasswordFile::load(&fixture()).unwrap();
    assert_eq!(
        f.verify("alice", Some(b"secret7")),
        PasswordVerdict::Accepted
    );
    assert_eq!(f.verify("bob", Some(b"secret6")), PasswordVerdict::Accepted);
    assert_eq!(
        f.verify("ünï cödé", Some("pässwörd".as_bytes())),
        PasswordVerdict::Accepted
    );
    assert_eq!(
        f.verify("alice", Some(b"secret")),
        PasswordVerdict::Rejected
    );
}

fn tool() -> Option<&'static str> {
    let found = Command::new("mosquitto_passwd").arg("-h").output().is_ok();
    if !found {
        eprintln!("mosquitto_passwd not installed: live test skipped (fixture test still runs)");
    }
    found.then_some("mosquitto_passwd")
}

#[test]
fn live_mosquitto_passwd_lines_verify_and_survive_passwd_set() {
    let Some(bin) = tool() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    let run = |args: &[&str]| {
        let out = Command::new(bin).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let p = path.to_str().unwrap();
    run(&["-b", "-c", p, "user", "pass"]);
    run(&["-H", "sha512", "-b", p, "old", "legacy pw"]);
    run(&["-b", p, "long", &"x".repeat(1000)]);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("user:$7$") && text.contains("old:$6$"),
        "{text}"
    );
    let f = PasswordFile::load(&path).unwrap();
    assert_eq!(f.verify("user", Some(b"pass")), PasswordVerdict::Accepted);
    assert_eq!(f.verify("user", Some(b"pass ")), PasswordVerdict::Rejected);
    assert_eq!(
        f.verify("old", Some(b"legacy pw")),
        PasswordVerdict::Accepted
    );
    assert_eq!(
        f.verify("long", Some("x".repeat(1000).as_bytes())),
        PasswordVerdict::Accepted
    );
    // our argon2id line next to theirs; their lines stay byte for byte
    passwd_set(&path, "new", "argon").unwrap();
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(after.starts_with(&text), "mosquitto_passwd's lines kept");
    let f = PasswordFile::load(&path).unwrap();
    assert_eq!(f.verify("new", Some(b"argon")), PasswordVerdict::Accepted);
    assert_eq!(f.verify("user", Some(b"pass")), PasswordVerdict::Accepted);
    // and mosquitto_passwd can still update the file that passwd_set wrote
    run(&["-b", p, "user", "changed"]);
    let f = PasswordFile::load(&path).unwrap();
    assert_eq!(
        f.verify("user", Some(b"changed")),
        PasswordVerdict::Accepted
    );
    assert_eq!(f.verify("new", Some(b"argon")), PasswordVerdict::Accepted);
}
