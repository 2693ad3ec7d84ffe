//! Evacuation (docs/cluster.md, "Evacuation and rebalance"): the node's control plane sends
//! this shard's clients to other nodes a few at a time ([`Request::Evacuate`]), and while it
//! does, every new CONNECT is refused and pointed elsewhere.
//!
//! What a client sees: MQTT 5.0 gets DISCONNECT 0x9C Use another server with a Server
//! Reference (the node chosen for it), and a CONNECT gets CONNACK 0x9C with one; MQTT 3.x has
//! neither, so its connection is closed and its CONNECT refused with return code 3 (Server
//! unavailable). The session stays here, offline, until the client connects to the other
//! node, which takes it over the node link. Wills follow the ordinary rules of a server-side
//! close (a will with a Will Delay Interval waits, and the session's move cancels it).
//!
//! [`Request::Evacuate`]: crate::mgmt::Request::Evacuate

use super::*;
use crate::mgmt::Reply;
use shardmq_codec::{ConnAck, ConnAckProperties, Disconnect, DisconnectProperties};

/// The CONNACK refusing a CONNECT while the node evacuates (`reference`: where to go).
pub(super) fn connack(reference: Option<&ByteStr>, protocol: Protocol) -> Option<ConnAck> {
    let reference = reference?;
    Some(ConnAck {
        session_present: false,
        code: ReasonCode::USE_ANOTHER_SERVER,
        properties: ConnAckProperties {
            server_reference: protocol.is_v5().then(|| reference.clone()),
            ..ConnAckProperties::default()
        },
    })
}

impl ShardCore {
    /// One step of the evacuation: refuse new CONNECTs with `refuse_with` from now on (if
    /// given), send one connected client away per reference in `send`. Visits the
    /// connections up to the last one sent away (or all of them when fewer are connected).
    pub(super) fn evacuate_step(
        &mut self,
        refuse_with: Option<ByteStr>,
        send: &[ByteStr],
    ) -> Reply {
        assert!(
            send.len() <= crate::mgmt::EVACUATE_STEP_MAX,
            "an evacuation step sends at most EVACUATE_STEP_MAX clients"
        );
        if let Some(refuse_with) = refuse_with {
            if self.evacuating.is_none() {
                tracing::info!(shard = self.id, to = %refuse_with, "node evacuating: CONNECTs refused with 0x9C");
            }
            self.evacuating = Some(refuse_with);
        }
        let mut sent = 0usize;
        let mut references = send.iter();
        for (_, conn) in self.conns.iter_mut() {
            if conn.phase != Phase::Active {
                // Before CONNACK: refused or sent away by a later step once active.
                continue;
            }
            let Some(reference) = references.next() else {
                break;
            };
            let protocol = conn.protocol.expect("an active connection has a protocol");
            if protocol.is_v5() {
                let disconnect = Packet::Disconnect(Disconnect {
                    reason: ReasonCode::USE_ANOTHER_SERVER,
                    properties: DisconnectProperties {
                        server_reference: Some(reference.clone()),
                        ..DisconnectProperties::default()
                    },
                });
                encode(&disconnect, protocol, &mut conn.out);
            }
            conn.phase = Phase::Closing;
            Self::wake_conn(&mut self.ready, conn);
            sent += 1;
        }
        if sent > 0 {
            debug!(shard = self.id, sent, "clients sent away (evacuation)");
        }
        let open = self
            .conns
            .len()
            .checked_sub(sent)
            .expect("the clients sent away are among the connections");
        Reply::Evacuated { sent, left: open }
    }

    /// Ends the evacuation; whether one was in force.
    pub(super) fn evacuate_stop(&mut self) -> bool {
        let was = self.evacuating.take().is_some();
        if was {
            tracing::info!(
                shard = self.id,
                "evacuation stopped: CONNECTs accepted again"
            );
        }
        was
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mgmt::Request;
    use shardmq_codec::Decoder;

    fn connect(c: &mut ShardCore, now: Instant, id: &str, protocol: Protocol) -> ConnKey {
        let key = super::super::test_connect(c, now, id, protocol, false);
        c.drain_local(now);
        key
    }

    fn output(c: &mut ShardCore, key: ConnKey) -> Vec<Packet> {
        let protocol = c.conns[key].protocol.expect("CONNECT came");
        let mut out = c.conns[key].out.split();
        let mut d = Decoder::with_protocol(protocol, 1 << 20);
        let mut packets = Vec::new();
        while let Some(p) = d.decode(&mut out).expect("the shard writes valid packets") {
            packets.push(p);
        }
        packets
    }

    fn step(c: &mut ShardCore, now: Instant, send: &[&str]) -> (usize, usize) {
        step_refusing(c, now, send, true)
    }

    fn step_refusing(
        c: &mut ShardCore,
        now: Instant,
        send: &[&str],
        refuse: bool,
    ) -> (usize, usize) {
        let request = Request::Evacuate {
            refuse_with: refuse.then(|| ByteStr::from("b:1883")),
            send: send.iter().map(|s| ByteStr::from(*s)).collect(),
        };
        match c.handle_mgmt(now, request) {
            Reply::Evacuated { sent, left } => (sent, left),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_rebalance_step_sends_clients_away_and_refuses_nobody() {
        let now = Instant::now();
        let mut c = super::super::test_core(now, Duration::from_secs(60), Limits::default());
        let first = connect(&mut c, now, "first", Protocol::V5);
        let _ = output(&mut c, first);
        assert_eq!(step_refusing(&mut c, now, &["b:1883"], false), (1, 0));
        assert!(
            matches!(output(&mut c, first).as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::USE_ANOTHER_SERVER)
        );
        c.conn_closed(now, first);
        let next = connect(&mut c, now, "next", Protocol::V5);
        assert_eq!(
            c.conns[next].phase,
            Phase::Active,
            "CONNECTs still accepted"
        );
    }

    #[test]
    fn clients_are_sent_away_as_many_as_asked_and_new_connects_refused_until_stopped() {
        let now = Instant::now();
        let mut c = super::super::test_core(now, Duration::from_secs(60), Limits::default());
        let v5 = connect(&mut c, now, "v5", Protocol::V5);
        let v3 = connect(&mut c, now, "v3", Protocol::V3_1_1);
        let other = connect(&mut c, now, "other", Protocol::V5);
        for key in [v5, v3, other] {
            assert_eq!(c.conns[key].phase, Phase::Active);
            let _ = output(&mut c, key);
        }

        assert_eq!(step(&mut c, now, &["b:1883", "c:1883"]), (2, 1));
        match output(&mut c, v5).as_slice() {
            [Packet::Disconnect(d)] => {
                assert_eq!(d.reason, ReasonCode::USE_ANOTHER_SERVER);
                assert_eq!(d.properties.server_reference.as_deref(), Some("b:1883"));
            }
            other => panic!("DISCONNECT 0x9C expected, got {other:?}"),
        }
        assert_eq!(c.conns[v5].phase, Phase::Closing);
        assert!(output(&mut c, v3).is_empty(), "3.1.1 has no DISCONNECT");
        assert_eq!(c.conns[v3].phase, Phase::Closing);
        assert_eq!(c.conns[other].phase, Phase::Active, "only as many as asked");
        c.conn_closed(now, v5);
        c.conn_closed(now, v3);
        assert!(c.session_of("v5").is_some(), "the session stays");

        // A new CONNECT is refused and pointed elsewhere; a 3.1.1 one gets return code 3.
        let late = connect(&mut c, now, "late", Protocol::V5);
        match output(&mut c, late).as_slice() {
            [Packet::ConnAck(a)] => {
                assert_eq!(a.code, ReasonCode::USE_ANOTHER_SERVER);
                assert_eq!(a.properties.server_reference.as_deref(), Some("b:1883"));
            }
            other => panic!("CONNACK 0x9C expected, got {other:?}"),
        }
        let late3 = connect(&mut c, now, "late3", Protocol::V3_1_1);
        match output(&mut c, late3).as_slice() {
            [Packet::ConnAck(a)] => assert_eq!(a.code.to_v3_connack(), 3),
            other => panic!("CONNACK 3 expected, got {other:?}"),
        }
        c.conn_closed(now, late);
        c.conn_closed(now, late3);

        // Nothing asked: nobody sent; the last one goes with the next step.
        assert_eq!(step(&mut c, now, &[]), (0, 1));
        assert_eq!(step(&mut c, now, &["b:1883", "b:1883"]), (1, 0));
        c.conn_closed(now, other);

        assert!(matches!(
            c.handle_mgmt(now, Request::EvacuateStop),
            Reply::Done(true)
        ));
        assert!(matches!(
            c.handle_mgmt(now, Request::EvacuateStop),
            Reply::Done(false)
        ));
        let back = connect(&mut c, now, "v5", Protocol::V5);
        match output(&mut c, back).as_slice() {
            [Packet::ConnAck(a), ..] => {
                assert_eq!(a.code, ReasonCode::SUCCESS);
                assert!(a.session_present, "the session waited here");
            }
            other => panic!("CONNACK 0 expected, got {other:?}"),
        }
    }
}
