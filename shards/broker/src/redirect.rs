//! Server redirection (MQTT 5.0 §4.11): what a node tells clients when they should use
//! another server.
//!
//! Two settings, both a Server Reference (`host:port`, or anything the clients understand):
//! - `use_another_server`: in force from start-up. Every CONNECT is refused with CONNACK 0x9C
//!   Use another server (temporary: come back later).
//! - `moved_to`: armed at start-up, in force once the node is *moved* (the runtime's move
//!   trigger, SIGUSR2 in the binary). From then on every CONNECT is refused with CONNACK 0x9D
//!   Server moved, and every connected client is sent away with DISCONNECT 0x9D; both carry
//!   the reference. A moved node stays moved until it restarts.
//!
//! MQTT 3.x has neither the reason codes nor the property: its CONNECTs are refused with return
//! code 3 (Server unavailable) and its connections are just closed.

use shardmq_codec::{
    ByteStr, ConnAck, ConnAckProperties, Disconnect, DisconnectProperties, Packet, Protocol,
    ReasonCode,
};

/// A node's redirection settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redirect {
    moved_to: Option<ByteStr>,
    use_another_server: Option<ByteStr>,
}

impl Redirect {
    /// From the configuration's strings; empty means not set.
    pub fn new(moved_to: &str, use_another_server: &str) -> Redirect {
        let reference = |s: &str| (!s.is_empty()).then(|| ByteStr::from(s));
        Redirect {
            moved_to: reference(moved_to),
            use_another_server: reference(use_another_server),
        }
    }

    /// Whether a move can happen (`moved_to` is set).
    pub fn can_move(&self) -> bool {
        self.moved_to.is_some()
    }

    /// The CONNACK that refuses a new CONNECT, if redirection is in force; `moved` says whether
    /// the node has been moved. A move wins over a temporary redirection.
    pub fn connack(&self, moved: bool, protocol: Protocol) -> Option<ConnAck> {
        let (code, reference) = match (&self.moved_to, &self.use_another_server) {
            (Some(to), _) if moved => (ReasonCode::SERVER_MOVED, to),
            (_, Some(other)) => (ReasonCode::USE_ANOTHER_SERVER, other),
            _ => return None,
        };
        Some(ConnAck {
            session_present: false,
            code,
            properties: ConnAckProperties {
                server_reference: protocol.is_v5().then(|| reference.clone()),
                ..ConnAckProperties::default()
            },
        })
    }

    /// The DISCONNECT 0x9D that sends a connected MQTT 5.0 client to `moved_to`, once moved.
    /// `None` when `moved_to` is not set.
    pub fn disconnect(&self) -> Option<Packet> {
        let to = self.moved_to.as_ref()?;
        Some(Packet::Disconnect(Disconnect {
            reason: ReasonCode::SERVER_MOVED,
            properties: DisconnectProperties {
                server_reference: Some(to.clone()),
                ..DisconnectProperties::default()
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_set_redirects_nobody() {
        let r = Redirect::new("", "");
        assert!(!r.can_move());
        assert_eq!(r.connack(false, Protocol::V5), None);
        assert_eq!(r.connack(true, Protocol::V5), None);
        assert_eq!(r.disconnect(), None);
    }

    #[test]
    fn use_another_server_refuses_with_0x9c_from_the_start() {
        let r = Redirect::new("", "b.example:1883");
        let ack = r.connack(false, Protocol::V5).expect("refused");
        assert_eq!(ack.code, ReasonCode::USE_ANOTHER_SERVER);
        assert_eq!(
            ack.properties.server_reference.as_deref(),
            Some("b.example:1883")
        );
        let v3 = r.connack(false, Protocol::V3_1_1).expect("refused");
        assert_eq!(v3.code.to_v3_connack(), 3);
        assert_eq!(v3.properties.server_reference, None);
        assert_eq!(r.disconnect(), None, "a temporary redirection moves nobody");
    }

    #[test]
    fn moved_to_refuses_with_0x9d_only_once_moved() {
        let r = Redirect::new("new.example:1883", "");
        assert!(r.can_move());
        assert_eq!(r.connack(false, Protocol::V5), None);
        let ack = r.connack(true, Protocol::V5).expect("refused once moved");
        assert_eq!(ack.code, ReasonCode::SERVER_MOVED);
        assert_eq!(
            ack.properties.server_reference.as_deref(),
            Some("new.example:1883")
        );
        assert_eq!(
            r.connack(true, Protocol::V3_1)
                .unwrap()
                .code
                .to_v3_connack(),
            3
        );
        let Some(Packet::Disconnect(d)) = r.disconnect() else {
            panic!("a DISCONNECT");
        };
        assert_eq!(d.reason, ReasonCode::SERVER_MOVED);
        assert_eq!(
            d.properties.server_reference.as_deref(),
            Some("new.example:1883")
        );
    }

    #[test]
    fn a_move_wins_over_a_temporary_redirection() {
        let r = Redirect::new("new:1883", "other:1883");
        assert_eq!(
            r.connack(false, Protocol::V5).unwrap().code,
            ReasonCode::USE_ANOTHER_SERVER
        );
        assert_eq!(
            r.connack(true, Protocol::V5).unwrap().code,
            ReasonCode::SERVER_MOVED
        );
    }
}
