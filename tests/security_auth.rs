//! `[auth]`: a password file with the real `mosquitto_passwd`'s `$7$` and `$6$` lines and
//! `shardmq passwd`'s argon2id lines; refusals with the spec's codes (bad credentials: 5.0
//! 0x86, 3.1.1 return code 4; not authorized: 0x87 / 5); HS256 JWTs in the password field
//! (valid, expired, wrong secret, `alg: none`, tampered); over the plain listener and TLS.

mod common;
mod security_common;

use common::*;
use hmac::{Hmac, Mac};
use security_common::*;
use sha2::Sha256;
use shardmq_codec::{Protocol, QoS};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

/// `mosquitto_passwd -b` (`$7$`) and `-H sha512 -b` (`$6$`) output; each password is
/// `<user>-pw`.
const MOSQUITTO_PASSWD: &str = "\
alice:$7$101$lYGfEKDAayEVpetW$VdTcEIN1TiIfcTOXf9N53Ao6x5zW//6xasb1Z8xacqD2QGYHqTW5sbbdfpHhTb+y0AtFPwx0oANtoSej6s+mig==
six:$6$ZJDLauD46hBvwQlH$xwPRGqLKsqR0klVpVoKwJiuH96XNTYeBzIsLz/x0IOVbWC+ExjRMq2YXWTe7HlZ1MVnoeIvq0qoNnxlWYTR7Ww==
";

const JWT_SECRET: &str = "shardmq-test-jwt-secret-0123456789abcdef";

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let d = std::env::temp_dir().join(format!(
            "shardmq-auth-{}-{}",
            std::process::id(),
            reserve_port()
        ));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `shardmq passwd FILE USER` with the password on stdin; its exit status and output.
fn shardmq_passwd(file: &Path, user: &str, password: &str) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardmq"))
        .arg("passwd")
        .arg(file)
        .arg(user)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shardmq passwd");
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The CONNACK code for `user` / `password` on the plain listener.
async fn code(port: u16, protocol: Protocol, user: Option<&str>, password: Option<&[u8]>) -> u8 {
    let mut c = connect_packet(protocol, "", true, 0);
    if protocol == Protocol::V3_1_1 {
        c.client_id = "auth-test".into();
    }
    c.username = user.map(Into::into);
    c.password = password.map(bytes::Bytes::copy_from_slice);
    let (_raw, ack) = Raw::connect_with(port, c).await;
    match protocol {
        Protocol::V5 => ack.code.0,
        _ => ack.code.to_v3_connack(),
    }
}

/// (bad credentials, not authorized) for `protocol`.
fn codes(protocol: Protocol) -> (u8, u8) {
    match protocol {
        Protocol::V5 => (0x86, 0x87),
        _ => (4, 5),
    }
}

#[tokio::test]
async fn mosquitto_passwd_lines_and_shardmq_passwd_lines_verify() {
    let dir = Dir::new();
    let file = dir.0.join("passwd");
    std::fs::write(&file, MOSQUITTO_PASSWD).unwrap();
    let (ok, out) = shardmq_passwd(&file, "carol", "carol-pw");
    assert!(ok, "shardmq passwd: {out}");
    let text = std::fs::read_to_string(&file).unwrap();
    let carol: Vec<&str> = text.lines().filter(|l| l.starts_with("carol:")).collect();
    assert_eq!(carol.len(), 1, "{text}");
    assert!(carol[0].starts_with("carol:$argon2id$"), "{}", carol[0]);
    assert!(
        !text.contains("carol-pw"),
        "the password itself is in the file"
    );
    assert!(
        text.contains(MOSQUITTO_PASSWD.lines().next().unwrap()),
        "other lines kept"
    );

    let broker = Broker::start_with(&[
        ("SHARDMQ_AUTH__ALLOW_ANONYMOUS", "false"),
        ("SHARDMQ_AUTH__PASSWORD_FILE", file.to_str().unwrap()),
    ]);
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let (bad, not_authorized) = codes(protocol);
        for user in ["alice", "six", "carol"] {
            let pw = format!("{user}-pw");
            assert_eq!(
                code(broker.port, protocol, Some(user), Some(pw.as_bytes())).await,
                0,
                "{user} {protocol:?}"
            );
            assert_eq!(
                code(broker.port, protocol, Some(user), Some(b"wrong")).await,
                bad,
                "{user} wrong password {protocol:?}"
            );
        }
        // Another user's password, an unknown user, a username without a password.
        assert_eq!(
            code(broker.port, protocol, Some("alice"), Some(b"six-pw")).await,
            bad
        );
        assert_eq!(
            code(broker.port, protocol, Some("mallory"), Some(b"x")).await,
            bad
        );
        // No credentials at all, anonymous off: not authorized.
        assert_eq!(
            code(broker.port, protocol, None, None).await,
            not_authorized,
            "{protocol:?} anonymous"
        );
    }
    broker.expect_warn("bad username or password").await;

    // Changing carol's password: one line still, the old password refused.
    let (ok, out) = shardmq_passwd(&file, "carol", "carol-new");
    assert!(ok, "shardmq passwd (change): {out}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("carol:")).count(),
        1,
        "{text}"
    );
    // The broker re-reads the file on SIGHUP.
    Command::new("kill")
        .args(["-HUP", &broker.pid().to_string()])
        .status()
        .unwrap();
    let changed = eventually(WAIT, || async {
        code(broker.port, Protocol::V5, Some("carol"), Some(b"carol-new")).await == 0
    })
    .await;
    assert!(
        changed,
        "the new password is not accepted after SIGHUP:\n{}",
        broker.log()
    );
    assert_eq!(
        code(broker.port, Protocol::V5, Some("carol"), Some(b"carol-pw")).await,
        0x86
    );
}

#[tokio::test]
async fn refusals_over_tls_have_the_same_codes() {
    let pki = Pki::new();
    let file = write_file(&pki.dir, "passwd", MOSQUITTO_PASSWD);
    let (_broker, ports) = secure_broker(
        &pki,
        &[
            ("SHARDMQ_AUTH__ALLOW_ANONYMOUS", "false".into()),
            ("SHARDMQ_AUTH__PASSWORD_FILE", file),
        ],
    );
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let (bad, not_authorized) = codes(protocol);
        for (user, pw, want) in [
            (Some("alice"), Some("alice-pw"), 0),
            (Some("alice"), Some("nope"), bad),
            (None, None, not_authorized),
        ] {
            let mut tls = tls_connect(ports.tls, default_client_config(&pki, None))
                .await
                .expect("handshake");
            let connect = connect_bytes(protocol, "tls-auth", user, pw);
            assert_eq!(
                connack_over(&mut tls, protocol, &connect).await,
                Some(want),
                "{protocol:?} {user:?}/{pw:?} over TLS"
            );
        }
    }
}

// ---- JWT ------------------------------------------------------------------------------------

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn hs256(header: &str, claims: &str, secret: &str) -> String {
    let signing_input = format!(
        "{}.{}",
        b64url(header.as_bytes()),
        b64url(claims.as_bytes())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", b64url(&mac.finalize().into_bytes()))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn b64url_matches_rfc_4648_vectors() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
        ("fooba", "Zm9vYmE"),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(b64url(plain.as_bytes()), encoded);
    }
    assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
}

#[tokio::test]
async fn hs256_jwt_in_the_password_field() {
    let dir = Dir::new();
    let acl = write_file(&dir.0, "acl", "user jwtuser\ntopic readwrite jwt/#\n");
    let broker = Broker::start_with(&[
        ("SHARDMQ_AUTH__ALLOW_ANONYMOUS", "false"),
        ("SHARDMQ_AUTH__JWT_SECRET", JWT_SECRET),
        ("SHARDMQ_AUTH__ACL_FILE", &acl),
    ]);
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    let now = now_secs();
    let valid = hs256(
        header,
        &format!(r#"{{"sub":"jwtuser","iat":{now},"exp":{}}}"#, now + 300),
        JWT_SECRET,
    );

    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let (bad, not_authorized) = codes(protocol);
        assert_eq!(
            code(
                broker.port,
                protocol,
                Some("jwtuser"),
                Some(valid.as_bytes())
            )
            .await,
            0,
            "{protocol:?} valid token"
        );
        let expired = hs256(
            header,
            &format!(r#"{{"sub":"jwtuser","exp":{}}}"#, now - 120),
            JWT_SECRET,
        );
        let wrong_key = hs256(
            header,
            &format!(r#"{{"sub":"jwtuser","exp":{}}}"#, now + 300),
            "another-secret-0123456789abcdefghij",
        );
        // alg none: an unsigned token must never pass.
        let none = format!(
            "{}.{}.",
            b64url(br#"{"alg":"none","typ":"JWT"}"#),
            b64url(format!(r#"{{"sub":"jwtuser","exp":{}}}"#, now + 300).as_bytes())
        );
        // The payload changed after signing.
        let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
        parts[1] = b64url(format!(r#"{{"sub":"admin","exp":{}}}"#, now + 300).as_bytes());
        let tampered = parts.join(".");
        for (what, token) in [
            ("expired", &expired),
            ("wrong key", &wrong_key),
            ("alg none", &none),
            ("tampered", &tampered),
        ] {
            let got = code(
                broker.port,
                protocol,
                Some("jwtuser"),
                Some(token.as_bytes()),
            )
            .await;
            assert!(
                got == bad || got == not_authorized,
                "{protocol:?} {what} token: CONNACK {got:#x}"
            );
        }
    }

    // The ACL applies to the token's user, with rumqttc.
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let mut o = v5_options(broker.port, "jwt-client", true);
    o.set_credentials("jwtuser", valid.clone());
    let (mut c, _) = V5::connect_opts(o).await;
    assert_eq!(
        c.subscribe("jwt/#", Q5::AtLeastOnce).await,
        Some(Q5::AtLeastOnce)
    );
    assert_eq!(c.subscribe("other/#", Q5::AtLeastOnce).await, None);
    c.publish("jwt/x", Q5::AtLeastOnce, false, "signed").await;
    assert_eq!(&c.expect_publish().await.payload[..], b"signed");
    let mut r = Raw::connect_with(broker.port, {
        let mut k = connect_packet(Protocol::V3_1_1, "jwt-raw", true, 0);
        k.username = Some("jwtuser".into());
        k.password = Some(bytes::Bytes::from(valid));
        k
    })
    .await
    .0;
    assert_eq!(
        r.subscribe(1, &[("other/#", QoS::AtLeastOnce)]).await,
        vec![0x80]
    );
}
