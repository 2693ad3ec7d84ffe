//! MQTT 5.0 enhanced authentication (§4.12) against the real broker, with the
//! `SHARDMQ-HMAC-SHA256` method (`auth.hmac_secret`). The test computes the client's answer
//! with the `hmac` and `sha2` crates itself, as any client would, not with the broker's code.

mod common;

use bytes::Bytes;
use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use shardmq_codec::{Auth, AuthProperties, ByteStr, Connect, Packet, Protocol, QoS, ReasonCode};

const METHOD: &str = "SHARDMQ-HMAC-SHA256";
const SECRET: &str = "correct horse battery staple";

fn broker() -> Broker {
    Broker::start_with(&[("SHARDMQ_AUTH__HMAC_SECRET", SECRET)])
}

fn auth_connect(client_id: &str, method: &str) -> Connect {
    let mut c = connect_packet(Protocol::V5, client_id, true, 0);
    c.properties.authentication_method = Some(ByteStr::from(method));
    c
}

fn auth_packet(reason: ReasonCode, method: &str, data: Option<&[u8]>) -> Packet {
    Packet::Auth(Auth {
        reason,
        properties: AuthProperties {
            authentication_method: Some(ByteStr::from(method)),
            authentication_data: data.map(Bytes::copy_from_slice),
            ..Default::default()
        },
    })
}

/// HMAC-SHA256(secret, nonce || client_id).
fn answer(secret: &str, nonce: &[u8], client_id: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(nonce);
    mac.update(client_id.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The next packet must be AUTH 0x18 with the method and a 16-byte nonce; returns the nonce.
async fn expect_challenge(raw: &mut Raw) -> Bytes {
    match raw.expect(WAIT).await {
        Packet::Auth(a) => {
            assert_eq!(a.reason, ReasonCode::CONTINUE_AUTHENTICATION, "{a:?}");
            assert_eq!(a.properties.authentication_method.as_deref(), Some(METHOD));
            let nonce = a
                .properties
                .authentication_data
                .expect("nonce in the challenge");
            assert_eq!(nonce.len(), 16, "nonce length");
            nonce
        }
        other => panic!("expected AUTH 0x18, got {other:?}"),
    }
}

/// The broker must answer with CONNACK `code` (a refusal) and close.
async fn expect_refused(raw: &mut Raw, code: ReasonCode) {
    match raw.expect_closed(WAIT).await.as_slice() {
        [Packet::ConnAck(ack)] => assert_eq!(ack.code, code, "CONNACK reason"),
        other => panic!("expected CONNACK {code:?} then close, got {other:?}"),
    }
}

/// The broker must send DISCONNECT `code` and close.
async fn expect_disconnected(raw: &mut Raw, code: ReasonCode) {
    match raw.expect_closed(WAIT).await.as_slice() {
        [Packet::Disconnect(d)] => assert_eq!(d.reason, code, "DISCONNECT reason"),
        other => panic!("expected DISCONNECT {code:?} then close, got {other:?}"),
    }
}

/// Opens a 5.0 connection, sends CONNECT with the method and expects the challenge; returns
/// the client and the nonce.
async fn challenged(port: u16, client_id: &str) -> (Raw, Bytes) {
    let mut raw = Raw::open(port, Protocol::V5).await;
    raw.send(&Packet::Connect(Box::new(auth_connect(client_id, METHOD))))
        .await;
    let nonce = expect_challenge(&mut raw).await;
    (raw, nonce)
}

/// Sends AUTH 0x18 with `data`.
async fn answer_with(raw: &mut Raw, data: &[u8]) {
    raw.send(&auth_packet(
        ReasonCode::CONTINUE_AUTHENTICATION,
        METHOD,
        Some(data),
    ))
    .await;
}

/// Connects `client_id` through the whole exchange with `secret`; returns the client and the
/// CONNACK's reason code.
async fn authenticate(port: u16, client_id: &str, secret: &str) -> (Raw, u8) {
    let (mut raw, nonce) = challenged(port, client_id).await;
    let data = answer(secret, &nonce, client_id);
    answer_with(&mut raw, &data).await;
    match raw.expect(WAIT).await {
        Packet::ConnAck(ack) => {
            if ack.code.0 == 0 {
                assert_eq!(
                    ack.properties.authentication_method.as_deref(),
                    Some(METHOD),
                    "CONNACK names the method"
                );
            }
            (raw, ack.code.0)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn hmac_challenge_response_connects_and_the_session_works() {
    let broker = broker();
    let (mut raw, code) = authenticate(broker.port, "dev-ok", SECRET).await;
    assert_eq!(code, 0);
    assert_eq!(raw.subscribe(1, &[("a/b", QoS::AtLeastOnce)]).await, [1]);
    raw.publish("a/b", b"hi", QoS::AtLeastOnce, 7, false).await;
    let p = raw.expect_publish().await;
    assert_eq!(&p.payload[..], b"hi");
    raw.disconnect().await;
}

#[tokio::test]
async fn hmac_wrong_secret_gets_connack_0x87() {
    let broker = broker();
    let (mut raw, code) = authenticate(broker.port, "dev-bad", "not the secret").await;
    assert_eq!(code, ReasonCode::NOT_AUTHORIZED.0);
    assert!(raw.expect_closed(WAIT).await.is_empty());
    // An answer for another client id fails too: the id is part of what is signed.
    let (mut raw, nonce) = challenged(broker.port, "dev-a").await;
    let data = answer(SECRET, &nonce, "dev-b");
    answer_with(&mut raw, &data).await;
    expect_refused(&mut raw, ReasonCode::NOT_AUTHORIZED).await;
}

#[tokio::test]
async fn unknown_method_or_no_secret_gets_connack_0x8c() {
    let broker = broker();
    let (mut raw, ack) = Raw::connect_with(broker.port, auth_connect("c1", "SCRAM-SHA-256")).await;
    assert_eq!(ack.code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    assert!(raw.expect_closed(WAIT).await.is_empty());

    // Without auth.hmac_secret the method is not offered.
    let plain = Broker::start();
    let (mut raw, ack) = Raw::connect_with(plain.port, auth_connect("c2", METHOD)).await;
    assert_eq!(ack.code, ReasonCode::BAD_AUTHENTICATION_METHOD);
    assert!(raw.expect_closed(WAIT).await.is_empty());
}

#[tokio::test]
async fn a_packet_other_than_auth_during_the_exchange_is_a_protocol_error() {
    let broker = broker();
    let (mut raw, _) = challenged(broker.port, "c-sub").await;
    raw.send(&subscribe_packet(1, &[("x", QoS::AtMostOnce)]))
        .await;
    expect_refused(&mut raw, ReasonCode::PROTOCOL_ERROR).await;
    // AUTH with another method during the exchange: the same.
    let (mut raw, _) = challenged(broker.port, "c-other").await;
    raw.send(&auth_packet(
        ReasonCode::CONTINUE_AUTHENTICATION,
        "OTHER",
        None,
    ))
    .await;
    expect_refused(&mut raw, ReasonCode::PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn reauthentication_succeeds_with_a_fresh_nonce_and_fails_with_disconnect_0x87() {
    let broker = broker();
    let (mut raw, code) = authenticate(broker.port, "dev-re", SECRET).await;
    assert_eq!(code, 0);
    raw.send(&auth_packet(ReasonCode::RE_AUTHENTICATE, METHOD, None))
        .await;
    let nonce = expect_challenge(&mut raw).await;
    let data = answer(SECRET, &nonce, "dev-re");
    answer_with(&mut raw, &data).await;
    match raw.expect(WAIT).await {
        Packet::Auth(a) => {
            assert_eq!(a.reason, ReasonCode::SUCCESS);
            assert_eq!(a.properties.authentication_method.as_deref(), Some(METHOD));
        }
        other => panic!("expected AUTH 0x00, got {other:?}"),
    }
    // Still connected and working.
    raw.send(&Packet::PingReq).await;
    assert!(matches!(raw.expect(WAIT).await, Packet::PingResp));

    // A second round with the old answer (a replay) fails: DISCONNECT 0x87.
    raw.send(&auth_packet(ReasonCode::RE_AUTHENTICATE, METHOD, None))
        .await;
    let fresh = expect_challenge(&mut raw).await;
    assert_ne!(fresh, nonce, "each exchange has its own nonce");
    answer_with(&mut raw, &data).await;
    expect_disconnected(&mut raw, ReasonCode::NOT_AUTHORIZED).await;
}

#[tokio::test]
async fn reauthentication_with_another_method_is_a_protocol_error() {
    let broker = broker();
    let (mut raw, code) = authenticate(broker.port, "dev-m", SECRET).await;
    assert_eq!(code, 0);
    raw.send(&auth_packet(
        ReasonCode::RE_AUTHENTICATE,
        "SCRAM-SHA-256",
        None,
    ))
    .await;
    expect_disconnected(&mut raw, ReasonCode::PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn auth_from_a_client_without_enhanced_auth_is_a_protocol_error() {
    let broker = broker();
    let (mut raw, _) = Raw::connect(broker.port, Protocol::V5, "plain", true).await;
    raw.send(&auth_packet(ReasonCode::RE_AUTHENTICATE, METHOD, None))
        .await;
    expect_disconnected(&mut raw, ReasonCode::PROTOCOL_ERROR).await;
}
