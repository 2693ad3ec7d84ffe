//! Server redirection (MQTT 5.0 §4.11) against the real broker: `listener.use_another_server`
//! (CONNACK 0x9C from start-up) and `listener.moved_to` with SIGUSR2 (connected clients get
//! DISCONNECT 0x9D, later CONNECTs CONNACK 0x9D, both with the Server Reference).

mod common;

use common::*;
use shardmq_codec::{Packet, Protocol, ReasonCode};
use std::time::Duration;

const NEW_HOME: &str = "mqtt2.example:1883";

fn sigusr2(broker: &Broker) {
    let pid = libc::pid_t::try_from(broker.pid()).expect("pid fits pid_t");
    // SAFETY: kill(2) with a valid signal number has no memory effects on this process.
    let rc = unsafe { libc::kill(pid, libc::SIGUSR2) };
    assert_eq!(rc, 0, "kill -USR2 {pid}");
}

#[tokio::test]
async fn use_another_server_refuses_with_connack_0x9c_and_the_reference() {
    let broker = Broker::start_with(&[("SHARDMQ_LISTENER__USE_ANOTHER_SERVER", NEW_HOME)]);
    let (mut raw, ack) =
        Raw::connect_with(broker.port, connect_packet(Protocol::V5, "c5", true, 0)).await;
    assert_eq!(ack.code, ReasonCode::USE_ANOTHER_SERVER);
    assert_eq!(ack.properties.server_reference.as_deref(), Some(NEW_HOME));
    assert!(raw.expect_closed(WAIT).await.is_empty());

    let (_, ack) =
        Raw::connect_with(broker.port, connect_packet(Protocol::V3_1_1, "c3", true, 0)).await;
    assert_eq!(ack.code.to_v3_connack(), 3, "3.x: server unavailable");
}

#[tokio::test]
async fn sigusr2_moves_connected_clients_and_later_connects_get_connack_0x9d() {
    let broker = Broker::start_with(&[("SHARDMQ_LISTENER__MOVED_TO", NEW_HOME)]);
    // Armed only: clients connect as usual until the signal. Several, so both shards hold some.
    let mut v5 = Vec::new();
    for i in 0..4 {
        v5.push(
            Raw::connect(broker.port, Protocol::V5, &format!("v5-{i}"), true)
                .await
                .0,
        );
    }
    let (mut v3, _) = Raw::connect(broker.port, Protocol::V3_1_1, "v3", true).await;

    sigusr2(&broker);
    for raw in &mut v5 {
        match raw.expect_closed(WAIT).await.as_slice() {
            [Packet::Disconnect(d)] => {
                assert_eq!(d.reason, ReasonCode::SERVER_MOVED);
                assert_eq!(d.properties.server_reference.as_deref(), Some(NEW_HOME));
            }
            other => panic!("expected DISCONNECT 0x9D, got {other:?}"),
        }
    }
    assert!(
        v3.expect_closed(WAIT).await.is_empty(),
        "3.x is just closed"
    );

    let (mut raw, ack) =
        Raw::connect_with(broker.port, connect_packet(Protocol::V5, "late", true, 0)).await;
    assert_eq!(ack.code, ReasonCode::SERVER_MOVED);
    assert_eq!(ack.properties.server_reference.as_deref(), Some(NEW_HOME));
    assert!(raw.expect_closed(WAIT).await.is_empty());
    let (_, ack) = Raw::connect_with(
        broker.port,
        connect_packet(Protocol::V3_1_1, "late3", true, 0),
    )
    .await;
    assert_eq!(ack.code.to_v3_connack(), 3);
}

#[tokio::test]
async fn sigusr2_without_moved_to_is_ignored() {
    let broker = Broker::start();
    let (mut raw, _) = Raw::connect(broker.port, Protocol::V5, "stays", true).await;
    sigusr2(&broker);
    raw.expect_silence(Duration::from_millis(800)).await;
    raw.send(&Packet::PingReq).await;
    assert!(matches!(raw.expect(WAIT).await, Packet::PingResp));
    assert!(broker.warned("SIGUSR2 ignored"));
    let (raw2, _) = Raw::connect(broker.port, Protocol::V5, "new", true).await;
    raw2.disconnect().await;
}
