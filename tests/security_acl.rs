//! `auth.acl_file` in Mosquitto's syntax, every rule kind, with rumqttc's MQTT 3.1.1 and 5.0
//! clients (and the raw client where the exact bytes matter): `topic` read / write / readwrite /
//! deny / no keyword, `user` sections, `pattern` with `%u` and `%c`, the anonymous section;
//! SUBACK 0x80 (3.1.1) and 0x87 (5.0), PUBACK / PUBREC 0x87 (5.0), silent drop (3.1.1),
//! `acl_deny_action = "disconnect"`, and read access checked on the delivery of live messages,
//! retained messages and wills.
//!
//! The password file holds lines written by the real `mosquitto_passwd` 2.0.11 (`$7$`
//! PBKDF2-SHA512, `$6$` salted SHA-512), kept here as test vectors.

mod common;
mod security_common;

use common::*;
use rumqttc::v5::mqttbytes::v5::{
    Packet as P5, PubAckReason, PubRecReason, SubscribeReasonCode as S5,
};
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::QoS as Q4;
use security_common::*;
use shardmq_codec::{Packet, Protocol, QoS};
use std::path::PathBuf;

/// Written by `mosquitto_passwd -b` (alice, bob, feeder: `$7$`) and `-H sha512 -b` (six: `$6$`);
/// each password is `<user>-pw`.
pub const MOSQUITTO_PASSWD: &str = "\
alice:$7$101$lYGfEKDAayEVpetW$VdTcEIN1TiIfcTOXf9N53Ao6x5zW//6xasb1Z8xacqD2QGYHqTW5sbbdfpHhTb+y0AtFPwx0oANtoSej6s+mig==
bob:$7$101$Eeyqe0pK99X9re2h$/XsaLCcW/usbLUuE67DBluLXudEGVaO2gTozD4E6Ba339aytqwPbZ2WIq034QRQ1tB6dhktG66JEQVwWGYdMBg==
feeder:$7$101$0MMofDG7sBFonJyt$V0yYOei1dF/JHEFDC/SAQcGsm5xjTGUaaqizsOkn9QPcO1BZQiwt3jE8lMUSryk6mF6+r30QSgyCU7GUTkIPig==
six:$6$ZJDLauD46hBvwQlH$xwPRGqLKsqR0klVpVoKwJiuH96XNTYeBzIsLz/x0IOVbWC+ExjRMq2YXWTe7HlZ1MVnoeIvq0qoNnxlWYTR7Ww==
";

const ACL: &str = "\
# Anonymous clients: the rules before the first `user` line.
topic read public/#
topic write anon/in

user alice
topic readwrite alice/#
topic read feeds/#
topic deny feeds/private/#
topic write outbox/alice
# No access keyword: readwrite.
topic plain/#

user bob
topic read outbox/#
topic readwrite bob/#
topic read anon/#
topic read devices/+/up

user feeder
topic write feeds/#
topic write public/#
topic read feeds/#

user six
topic readwrite six/#

# Every user (anonymous clients have no username: %u never matches for them).
pattern readwrite users/%u/#
pattern write devices/%c/up
";

struct Site {
    broker: Broker,
    dir: PathBuf,
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn site(extra: &[(&str, &str)]) -> Site {
    let dir = std::env::temp_dir().join(format!(
        "shardmq-acl-{}-{}",
        std::process::id(),
        reserve_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let passwd = write_file(&dir, "passwd", MOSQUITTO_PASSWD);
    let acl = write_file(&dir, "acl", ACL);
    let mut env = vec![
        ("SHARDMQ_AUTH__ALLOW_ANONYMOUS", "true"),
        ("SHARDMQ_AUTH__PASSWORD_FILE", passwd.as_str()),
        ("SHARDMQ_AUTH__ACL_FILE", acl.as_str()),
    ];
    env.extend_from_slice(extra);
    let broker = Broker::start_with(&env);
    Site { broker, dir }
}

async fn v4(port: u16, id: &str, user: Option<&str>) -> V4 {
    let mut o = v4_options(port, id, true);
    if let Some(u) = user {
        o.set_credentials(u, format!("{u}-pw"));
    }
    V4::connect_opts(o).await.0
}

async fn v5(port: u16, id: &str, user: Option<&str>) -> V5 {
    let mut o = v5_options(port, id, true);
    if let Some(u) = user {
        o.set_credentials(u, format!("{u}-pw"));
    }
    V5::connect_opts(o).await.0
}

/// The 5.0 PUBACK reason of a QoS 1 publish.
async fn puback5(c: &mut V5, topic: &str, payload: &str) -> PubAckReason {
    c.client
        .publish(topic, Q5::AtLeastOnce, false, payload.to_owned())
        .await
        .expect("queue PUBLISH");
    c.inbox
        .wait_for(WAIT, |p| match p {
            P5::PubAck(a) => Some(a.reason),
            _ => None,
        })
        .await
        .unwrap_or_else(|| panic!("no PUBACK for {topic}: {:?}", c.inbox.error))
}

/// A raw client logged in as `user` (password `<user>-pw`).
async fn raw_login(port: u16, protocol: Protocol, id: &str, user: &str) -> Raw {
    let mut c = connect_packet(protocol, id, true, 0);
    c.username = Some(user.into());
    c.password = Some(bytes::Bytes::from(format!("{user}-pw")));
    let (raw, ack) = Raw::connect_with(port, c).await;
    assert_eq!(ack.code.0, 0, "{user} refused: {ack:?}");
    raw
}

#[tokio::test]
async fn subscribe_refusals_have_the_spec_codes() {
    let s = site(&[]);
    let port = s.broker.port;
    // Raw: the exact SUBACK bytes, one code per filter, in order.
    let mut r4 = raw_login(port, Protocol::V3_1_1, "raw4", "alice").await;
    assert_eq!(
        r4.subscribe(
            1,
            &[
                ("alice/#", QoS::AtLeastOnce),
                ("bob/#", QoS::AtLeastOnce),
                ("outbox/alice", QoS::AtMostOnce)
            ]
        )
        .await,
        vec![1, 0x80, 0x80],
        "3.1.1 SUBACK: allowed, no rule, write-only"
    );
    let mut r5 = raw_login(port, Protocol::V5, "raw5", "alice").await;
    assert_eq!(
        r5.subscribe(
            1,
            &[
                ("bob/#", QoS::AtLeastOnce),
                ("alice/x", QoS::ExactlyOnce),
                ("feeds/private/x", QoS::AtMostOnce)
            ]
        )
        .await,
        vec![0x87, 2, 0x87],
        "5.0 SUBACK: no rule, allowed, deny"
    );
    // rumqttc, both versions.
    let mut c4 = v4(port, "sub-v4", Some("alice")).await;
    assert_eq!(c4.subscribe("bob/#", Q4::AtLeastOnce).await, None);
    assert_eq!(
        c4.subscribe("alice/#", Q4::AtLeastOnce).await,
        Some(Q4::AtLeastOnce)
    );
    let mut c5 = v5(port, "sub-v5", Some("alice")).await;
    assert_eq!(c5.suback("bob/#", Q5::AtLeastOnce).await, S5::NotAuthorized);
    assert_eq!(
        c5.suback("alice/+/x", Q5::AtLeastOnce).await,
        S5::Success(Q5::AtLeastOnce)
    );
}

#[tokio::test]
async fn topic_read_write_readwrite_and_no_keyword() {
    let s = site(&[]);
    let port = s.broker.port;
    let mut alice = v5(port, "alice-5", Some("alice")).await;
    let mut bob = v4(port, "bob-4", Some("bob")).await;

    // readwrite: alice/# both ways.
    assert_eq!(
        alice.suback("alice/#", Q5::AtLeastOnce).await,
        S5::Success(Q5::AtLeastOnce)
    );
    assert_eq!(
        puback5(&mut alice, "alice/x", "rw").await,
        PubAckReason::Success
    );
    assert_eq!(&alice.expect_publish().await.payload[..], b"rw");

    // write only: alice writes outbox/alice (bob reads it), may not subscribe to it.
    assert!(bob.subscribe("outbox/#", Q4::AtLeastOnce).await.is_some());
    assert_eq!(
        puback5(&mut alice, "outbox/alice", "to bob").await,
        PubAckReason::Success
    );
    assert_eq!(&bob.expect_publish().await.payload[..], b"to bob");
    assert_eq!(
        alice.suback("outbox/alice", Q5::AtLeastOnce).await,
        S5::NotAuthorized
    );

    // read only: alice reads feeds/#, may not write there.
    assert_eq!(
        alice.suback("feeds/#", Q5::AtLeastOnce).await,
        S5::Success(Q5::AtLeastOnce)
    );
    assert_eq!(
        puback5(&mut alice, "feeds/news", "mine").await,
        PubAckReason::NotAuthorized
    );
    alice.expect_no_publish_v5().await;

    // No keyword = readwrite.
    assert_eq!(
        alice.suback("plain/#", Q5::AtLeastOnce).await,
        S5::Success(Q5::AtLeastOnce)
    );
    assert_eq!(
        puback5(&mut alice, "plain/x", "plain").await,
        PubAckReason::Success
    );
    assert_eq!(&alice.expect_publish().await.payload[..], b"plain");

    // No rule: bob's subtree.
    assert_eq!(
        puback5(&mut alice, "bob/x", "no").await,
        PubAckReason::NotAuthorized
    );

    // QoS 2 to a topic without write access: PUBREC 0x87.
    alice
        .client
        .publish("bob/q2", Q5::ExactlyOnce, false, "no")
        .await
        .unwrap();
    let rec = alice
        .inbox
        .wait_for(WAIT, |p| match p {
            P5::PubRec(r) => Some(r.reason),
            _ => None,
        })
        .await;
    assert_eq!(rec, Some(PubRecReason::NotAuthorized));
}

trait QuietV5 {
    async fn expect_no_publish_v5(&mut self);
}

impl QuietV5 for V5 {
    async fn expect_no_publish_v5(&mut self) {
        if let Some(p) = self.next_publish(QUIET).await {
            panic!("unexpected PUBLISH {p:?}");
        }
    }
}

#[tokio::test]
async fn mqtt_3_1_1_denied_publish_is_acknowledged_and_dropped() {
    let s = site(&[]);
    let port = s.broker.port;
    let mut bob = v5(port, "bob-5", Some("bob")).await;
    assert_eq!(
        bob.suback("bob/#", Q5::AtLeastOnce).await,
        S5::Success(Q5::AtLeastOnce)
    );
    // rumqttc 3.1.1, QoS 0, 1, 2: acknowledged as usual, delivered to no one.
    let mut alice = v4(port, "alice-4", Some("alice")).await;
    for qos in [Q4::AtMostOnce, Q4::AtLeastOnce, Q4::ExactlyOnce] {
        alice.publish("bob/from-alice", qos, false, "denied").await;
    }
    // The connection is still up, and its allowed publishes still flow.
    assert!(alice.subscribe("alice/#", Q4::AtLeastOnce).await.is_some());
    alice
        .publish("alice/ok", Q4::AtLeastOnce, false, "allowed")
        .await;
    assert_eq!(&alice.expect_publish().await.payload[..], b"allowed");
    bob.expect_no_publish_v5().await;
}

/// A subscriber of either protocol version.
trait Reader {
    /// Subscribes at QoS 1; whether the SUBACK granted it.
    fn subscribe_ok<'a>(&'a mut self, filter: &'a str) -> BoxFuture<'a, bool>;
    /// The payloads that arrive until none has come for [`QUIET`].
    fn payloads(&mut self) -> BoxFuture<'_, Vec<String>>;
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>;

impl Reader for V4 {
    fn subscribe_ok<'a>(&'a mut self, filter: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move { self.subscribe(filter, Q4::AtLeastOnce).await.is_some() })
    }
    fn payloads(&mut self) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async move {
            let mut got = vec![];
            while let Some(p) = self.next_publish(QUIET).await {
                got.push(String::from_utf8_lossy(&p.payload).into_owned());
            }
            got
        })
    }
}

impl Reader for V5 {
    fn subscribe_ok<'a>(&'a mut self, filter: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move { self.subscribe(filter, Q5::AtLeastOnce).await.is_some() })
    }
    fn payloads(&mut self) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async move {
            let mut got = vec![];
            while let Some(p) = self.next_publish(QUIET).await {
                got.push(String::from_utf8_lossy(&p.payload).into_owned());
            }
            got
        })
    }
}

#[tokio::test]
async fn deny_wins_over_a_broader_grant_for_live_retained_and_will_messages() {
    let s = site(&[]);
    let port = s.broker.port;
    let mut feeder = v4(port, "feeder", Some("feeder")).await;
    // Retained, before anyone subscribes.
    feeder
        .publish("feeds/open/r", Q4::AtLeastOnce, true, "open retained")
        .await;
    feeder
        .publish("feeds/private/r", Q4::AtLeastOnce, true, "private retained")
        .await;

    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let id = format!("alice-{protocol:?}");
        // alice subscribes feeds/# (read), which covers feeds/private/# (deny): the retained
        // messages come, then the live ones.
        let mut alice: Box<dyn Reader> = match protocol {
            Protocol::V5 => Box::new(v5(port, &id, Some("alice")).await),
            _ => Box::new(v4(port, &id, Some("alice")).await),
        };
        assert!(
            alice.subscribe_ok("feeds/#").await,
            "{protocol:?}: SUBACK for feeds/#"
        );
        let mut got = alice.payloads().await;
        feeder
            .publish("feeds/private/live", Q4::AtLeastOnce, false, "private live")
            .await;
        feeder
            .publish("feeds/open/live", Q4::AtLeastOnce, false, "open live")
            .await;
        got.extend(alice.payloads().await);
        assert_eq!(
            got,
            ["open retained", "open live"],
            "{protocol:?}: alice may read feeds/# but not feeds/private/#"
        );
    }

    // Wills: feeder's clients die without DISCONNECT; alice gets only the open one.
    let mut alice = v5(port, "alice-wills", Some("alice")).await;
    assert_eq!(
        alice.suback("feeds/#", Q5::AtLeastOnce).await,
        S5::Success(Q5::AtLeastOnce)
    );
    let p = alice.expect_publish().await;
    assert_eq!(&p.payload[..], b"open retained");
    alice.expect_no_publish_v5().await;
    for topic in ["feeds/private/will", "feeds/open/will"] {
        let mut o = v4_options(port, &format!("willer-{topic}"), true);
        o.set_credentials("feeder", "feeder-pw");
        o.set_last_will(rumqttc::LastWill::new(
            topic,
            format!("will {topic}"),
            Q4::AtLeastOnce,
            false,
        ));
        let (willer, _) = V4::connect_opts(o).await;
        drop(willer); // the socket closes, no DISCONNECT
    }
    let p = alice.expect_publish().await;
    assert_eq!(&p.payload[..], b"will feeds/open/will");
    alice.expect_no_publish_v5().await;
}

#[tokio::test]
async fn a_will_on_a_topic_without_write_access_is_refused_at_connect() {
    let s = site(&[]);
    let port = s.broker.port;
    let mut bob = v4(port, "bob", Some("bob")).await;
    assert!(bob.subscribe("bob/#", Q4::AtLeastOnce).await.is_some());
    for protocol in [Protocol::V3_1_1, Protocol::V5] {
        let mut c = connect_packet(protocol, "bad-will", true, 0);
        c.username = Some("alice".into());
        c.password = Some(bytes::Bytes::from_static(b"alice-pw"));
        c.will = Some(shardmq_codec::LastWill {
            topic: "bob/will".into(),
            payload: bytes::Bytes::from_static(b"not yours"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
        });
        let (_raw, ack) = Raw::connect_with(port, c).await;
        let got = match protocol {
            Protocol::V5 => ack.code.0,
            _ => ack.code.to_v3_connack(),
        };
        let want = if protocol == Protocol::V5 { 0x87 } else { 5 };
        assert_eq!(got, want, "{protocol:?}: CONNACK for a will on bob/will");
    }
    bob.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn user_sections_and_patterns() {
    let s = site(&[]);
    let port = s.broker.port;
    // %u: each user their own users/<name>/#, for both versions.
    let mut alice = v4(port, "alice", Some("alice")).await;
    assert!(alice
        .subscribe("users/alice/#", Q4::AtLeastOnce)
        .await
        .is_some());
    assert_eq!(alice.subscribe("users/bob/#", Q4::AtLeastOnce).await, None);
    let mut bob = v5(port, "bob", Some("bob")).await;
    assert_eq!(
        bob.suback("users/bob/#", Q5::AtLeastOnce).await,
        S5::Success(Q5::AtLeastOnce)
    );
    assert_eq!(
        bob.suback("users/alice/x", Q5::AtLeastOnce).await,
        S5::NotAuthorized
    );
    assert_eq!(
        puback5(&mut bob, "users/alice/x", "no").await,
        PubAckReason::NotAuthorized
    );
    assert_eq!(
        puback5(&mut bob, "users/bob/x", "mine").await,
        PubAckReason::Success
    );
    assert_eq!(&bob.expect_publish().await.payload[..], b"mine");

    // %c: the client id; bob reads devices/+/up.
    assert_eq!(
        bob.suback("devices/+/up", Q5::AtLeastOnce).await,
        S5::Success(Q5::AtLeastOnce)
    );
    let mut dev = v5(port, "dev-42", Some("six")).await;
    assert_eq!(
        puback5(&mut dev, "devices/dev-42/up", "42 up").await,
        PubAckReason::Success
    );
    assert_eq!(
        puback5(&mut dev, "devices/dev-43/up", "spoof").await,
        PubAckReason::NotAuthorized
    );
    assert_eq!(&bob.expect_publish().await.payload[..], b"42 up");
    bob.expect_no_publish_v5().await;

    // One user's section does not apply to another: six has no feeds/# rule.
    assert_eq!(
        dev.suback("feeds/#", Q5::AtLeastOnce).await,
        S5::NotAuthorized
    );
    assert_eq!(
        dev.suback("six/#", Q5::AtLeastOnce).await,
        S5::Success(Q5::AtLeastOnce)
    );
}

#[tokio::test]
async fn the_anonymous_section() {
    let s = site(&[]);
    let port = s.broker.port;
    let mut bob = v4(port, "bob", Some("bob")).await;
    assert!(bob.subscribe("anon/#", Q4::AtLeastOnce).await.is_some());
    let mut feeder = v4(port, "feeder", Some("feeder")).await;

    // 5.0 anonymous: read public/#, write anon/in, nothing else (not even the users' rules).
    let mut anon = v5(port, "anon-5", None).await;
    assert_eq!(
        anon.suback("public/#", Q5::AtLeastOnce).await,
        S5::Success(Q5::AtLeastOnce)
    );
    assert_eq!(
        anon.suback("alice/#", Q5::AtLeastOnce).await,
        S5::NotAuthorized
    );
    assert_eq!(
        anon.suback("users/alice/#", Q5::AtLeastOnce).await,
        S5::NotAuthorized
    );
    assert_eq!(
        puback5(&mut anon, "public/x", "no").await,
        PubAckReason::NotAuthorized
    );
    assert_eq!(
        puback5(&mut anon, "anon/in", "hello").await,
        PubAckReason::Success
    );
    assert_eq!(&bob.expect_publish().await.payload[..], b"hello");
    feeder
        .publish("public/news", Q4::AtLeastOnce, false, "news")
        .await;
    assert_eq!(&anon.expect_publish().await.payload[..], b"news");

    // 3.1.1 anonymous: SUBACK 0x80 outside the section.
    let mut anon4 = v4(port, "anon-4", None).await;
    assert_eq!(anon4.subscribe("alice/#", Q4::AtLeastOnce).await, None);
    assert!(anon4.subscribe("public/#", Q4::AtLeastOnce).await.is_some());
    // The anonymous section is not for users: alice may not read public/#.
    let mut alice = v5(port, "alice", Some("alice")).await;
    assert_eq!(
        alice.suback("public/#", Q5::AtLeastOnce).await,
        S5::NotAuthorized
    );
}

#[tokio::test]
async fn acl_deny_action_disconnect_closes_the_connection() {
    let s = site(&[("SHARDMQ_AUTH__ACL_DENY_ACTION", "disconnect")]);
    let port = s.broker.port;
    let mut bob = v4(port, "bob", Some("bob")).await;
    assert!(bob.subscribe("bob/#", Q4::AtLeastOnce).await.is_some());
    // 5.0: DISCONNECT 0x87 Not authorized, then the close.
    let mut r5 = raw_login(port, Protocol::V5, "deny-5", "alice").await;
    r5.send(&publish_packet(
        "bob/x",
        b"denied",
        QoS::AtLeastOnce,
        1,
        false,
    ))
    .await;
    match r5.expect_closed(WAIT).await.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason.0, 0x87),
        other => panic!("expected DISCONNECT 0x87 then close, got {other:?}"),
    }
    // 3.1.1: closed without an answer; QoS 0 too.
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let mut r4 = raw_login(port, Protocol::V3_1_1, "deny-4", "alice").await;
        r4.send(&publish_packet("bob/x", b"denied", qos, 1, false))
            .await;
        assert!(
            r4.expect_closed(WAIT).await.is_empty(),
            "3.1.1 {qos:?}: just closed"
        );
    }
    bob.expect_no_publish(QUIET).await;
    // A denied SUBSCRIBE is still only refused in its SUBACK.
    let mut r = raw_login(port, Protocol::V5, "deny-sub", "alice").await;
    assert_eq!(
        r.subscribe(1, &[("bob/#", QoS::AtLeastOnce)]).await,
        vec![0x87]
    );
    r.expect_silence(QUIET).await;
}
