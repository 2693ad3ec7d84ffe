//! A session moving between nodes (docs/cluster.md, "A session moving between nodes"): a
//! Clean Start 0 CONNECT on this node for a session the cluster's registry places on another
//! node fetches it from there instead of starting empty.
//!
//! - **Here (the new node)**: the registry's owner shard, given a claim it holds nothing for,
//!   asks the control plane ([`ToCluster::SessionFetch`]) instead of answering at once. The
//!   control plane answers the connection's shard ([`FromCluster::SessionFetched`]) with the
//!   session's wire image, or nothing, within `cluster.session_move_timeout_ms`; that shard
//!   installs it like a session handed over by another shard (routes, then CONNACK with Session
//!   Present 1, then the unacknowledged messages again) and registers it cluster-wide.
//! - **There (the old node)**: every shard is asked ([`FromCluster::SessionMoveOut`]); the one
//!   that holds the session closes its connection (MQTT 5.0: DISCONNECT 0x8E), publishes the
//!   will as a takeover does (only one without a delay; a delayed will is cancelled, the client
//!   is back), ends the session here and answers with its image
//!   ([`ToCluster::SessionMovedOut`]).
//!
//! The image is the store's record format ([`crate::store::encode_session`]): QoS 1/2 queued
//! and in-flight messages, QoS 2 ids awaiting PUBREL, subscriptions with their options and
//! identifiers, expiry, will. QoS 0 messages a disconnected session queued stay behind.

use super::*;
use crate::store::{decode_session, encode_session, Clock};

impl ShardCore {
    fn clock(&self, now: Instant) -> Clock {
        let unix_ns = self
            .wall(now)
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Clock { now, unix_ns }
    }

    /// The control plane answered the fetch of claim `token`: install what came (or a new
    /// session) for the waiting connection.
    pub(super) fn session_fetched(
        &mut self,
        now: Instant,
        client_id: ByteStr,
        token: u64,
        image: Option<bytes::Bytes>,
    ) {
        let session = image.and_then(|bytes| match decode_session(&bytes, self.clock(now)) {
            Ok(image) if image.client_id == client_id => {
                debug!(shard = self.id, client_id = %client_id, queued = image.queue.len(), inflight = image.inflight.len(), "session moved in from another node");
                let mut s = Session::from_image(image);
                // Journaled again only if it is durable here (`durable_install`), with numbers
                // of this node's store.
                s.disable_journal();
                Some(Box::new(s))
            }
            Ok(image) => {
                warn!(shard = self.id, client_id = %client_id, got = %image.client_id, "session from another node is for another client; new session");
                None
            }
            Err(e) => {
                warn!(shard = self.id, client_id = %client_id, error = %e, "session from another node does not decode; new session");
                None
            }
        });
        self.tell_cluster(ToCluster::SessionSet {
            client_id: client_id.clone(),
        });
        let me = self.id;
        self.handoff(now, me, client_id, token, session, None);
    }

    /// Another node asks for `client_id`'s session: hand it over if it is here.
    pub(super) fn session_move_out(&mut self, now: Instant, request: u64, client_id: ByteStr) {
        let image = self
            .session_of(&client_id)
            .map(|skey| self.move_out(now, skey, &client_id));
        self.tell_cluster(ToCluster::SessionMovedOut { request, image });
    }

    /// Ends session `skey` here for a connection on another node; its wire image.
    fn move_out(&mut self, now: Instant, skey: SessionKey, client_id: &ByteStr) -> bytes::Bytes {
        debug!(shard = self.id, client_id = %client_id, "session moving to another node");
        // The session continues on the other node: only a will without delay goes
        // (MQTT 5.0 §3.1.3.2.2), as for a takeover within the node.
        if let Some(will) = self.close_for_other_node(skey) {
            if will.properties.will_delay_interval.unwrap_or(0) == 0 {
                self.publish_will(now, client_id.clone(), will);
            }
        }
        if self.delayed_wills.cancel(client_id).is_some() {
            debug!(shard = self.id, client_id = %client_id, "delayed will cancelled: the client is back on another node");
        }
        let reg_token = self.sessions[skey].reg_token;
        let mut session = self.extract_session(skey);
        session.detach();
        self.durable_extracted(&session, true);
        let owner = self.owner_of(client_id);
        let me = self.id;
        self.send(
            owner,
            ShardMsg::Release {
                client_id: client_id.clone(),
                shard: me,
                token: reg_token,
            },
        );
        encode_session(&session.image(), self.clock(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardmq_codec::{Decoder, Protocol, Subscribe, SubscribeFilter, SubscriptionOptions};

    fn node(now: Instant) -> ShardCore {
        let mut c = super::super::test_core(now, Duration::from_secs(5), Limits::default());
        c.cluster = Some(Box::new(ClusterShard::new()));
        c
    }

    /// Runs what the shard queued for itself and answers its cluster requests as a control
    /// plane with no other node would (routes committed), except fetches: returned.
    fn settle(c: &mut ShardCore, now: Instant) -> Vec<ToCluster> {
        let mut kept = Vec::new();
        for _ in 0..10 {
            c.drain_local(now);
            let out = c.take_cluster_out();
            if out.is_empty() {
                break;
            }
            for m in out {
                match m {
                    ToCluster::RouteAdd {
                        sync: Some(token), ..
                    } => c.handle_cluster(now, FromCluster::RouteCommitted { token }),
                    other => kept.push(other),
                }
            }
        }
        kept
    }

    fn connect(c: &mut ShardCore, now: Instant, id: &str, clean_start: bool) -> ConnKey {
        super::super::test_connect(c, now, id, Protocol::V5, clean_start)
    }

    /// The fetch a Clean Start 0 CONNECT asked for, answered with `image`.
    fn answer_fetch(
        c: &mut ShardCore,
        now: Instant,
        image: Option<bytes::Bytes>,
    ) -> Vec<ToCluster> {
        let out = settle(c, now);
        let (client_id, token) = out
            .iter()
            .find_map(|m| match m {
                ToCluster::SessionFetch {
                    client_id, token, ..
                } => Some((client_id.clone(), *token)),
                _ => None,
            })
            .expect("a Clean Start 0 CONNECT in a cluster fetches");
        assert!(
            !out.iter()
                .any(|m| matches!(m, ToCluster::SessionSet { .. })),
            "registered only once the fetch is answered"
        );
        c.handle_cluster(
            now,
            FromCluster::SessionFetched {
                client_id,
                token,
                image,
            },
        );
        settle(c, now)
    }

    fn output(c: &mut ShardCore, key: ConnKey) -> Vec<Packet> {
        let mut out = c.conns[key].out.split();
        let mut d = Decoder::with_protocol(Protocol::V5, 1 << 20);
        let mut packets = Vec::new();
        while let Some(p) = d.decode(&mut out).expect("the shard writes valid packets") {
            packets.push(p);
        }
        packets
    }

    fn qos1(topic: &str, n: u8) -> Arc<Message> {
        Arc::new(Message {
            topic: ByteStr::from(topic),
            payload: bytes::Bytes::from(vec![n]),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            expires_at: None,
            publisher: ByteStr::from("p"),
        })
    }

    fn subscribe(c: &mut ShardCore, now: Instant, key: ConnKey, filter: &str) {
        let sub = Subscribe {
            pkid: 1,
            filters: vec![SubscribeFilter {
                filter: ByteStr::from(filter),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                },
            }],
            properties: Default::default(),
        };
        c.on_packet(now, key, Packet::Subscribe(sub));
        settle(c, now);
    }

    fn moved_out(out: Vec<ToCluster>, request: u64) -> Option<bytes::Bytes> {
        out.into_iter()
            .find_map(|m| match m {
                ToCluster::SessionMovedOut { request: r, image } if r == request => Some(image),
                _ => None,
            })
            .expect("the move-out is answered")
    }

    /// Node A: "mover" subscribed to t/# got 1..=3 (unacknowledged), went away, then 4 and 5
    /// were queued. Returns A and the connection it had.
    fn node_a_with_session(t0: Instant) -> (ShardCore, ConnKey) {
        let mut a = node(t0);
        let key = connect(&mut a, t0, "mover", false);
        answer_fetch(&mut a, t0, None);
        let connack = output(&mut a, key);
        assert!(
            matches!(&connack[..], [Packet::ConnAck(ack)] if !ack.session_present),
            "{connack:?}"
        );
        subscribe(&mut a, t0, key, "t/#");
        assert!(matches!(&output(&mut a, key)[..], [Packet::SubAck(_)]));
        for n in 1..=3 {
            a.route(t0, qos1("t/x", n));
        }
        settle(&mut a, t0);
        assert_eq!(output(&mut a, key).len(), 3, "sent, never acknowledged");
        (a, key)
    }

    #[test]
    fn a_session_moves_to_another_node_with_its_unacknowledged_and_queued_messages() {
        let t0 = Instant::now();
        let (mut a, key) = node_a_with_session(t0);
        a.conn_closed(t0, key);
        settle(&mut a, t0);
        for n in 4..=5 {
            a.route(t0, qos1("t/x", n));
        }
        settle(&mut a, t0);

        a.handle_cluster(
            t0,
            FromCluster::SessionMoveOut {
                request: 9,
                client_id: ByteStr::from("mover"),
            },
        );
        let out = settle(&mut a, t0);
        assert!(
            out.iter().any(
                |m| matches!(m, ToCluster::RouteDel { filter, .. } if filter.as_str() == "t/#")
            ),
            "node A withdraws the route: {out:?}"
        );
        let image = moved_out(out, 9).expect("A held the session");
        assert!(
            a.by_client.is_empty() && a.registry.is_empty(),
            "A holds nothing of it"
        );
        a.route(t0, qos1("t/x", 6));
        a.handle_cluster(
            t0,
            FromCluster::SessionMoveOut {
                request: 10,
                client_id: ByteStr::from("mover"),
            },
        );
        assert_eq!(moved_out(settle(&mut a, t0), 10), None, "asked again: gone");

        let mut b = node(t0);
        let key = connect(&mut b, t0, "mover", false);
        let out = answer_fetch(&mut b, t0, Some(image));
        assert!(out
            .iter()
            .any(|m| matches!(m, ToCluster::SessionSet { .. })));
        assert!(
            out.iter().any(
                |m| matches!(m, ToCluster::RouteAdd { filter, .. } if filter.as_str() == "t/#")
            ),
            "the route moves with the session: {out:?}"
        );
        let packets = output(&mut b, key);
        let Packet::ConnAck(ack) = &packets[0] else {
            panic!("{packets:?}")
        };
        assert!(ack.session_present);
        let got: Vec<(u8, bool)> = packets[1..]
            .iter()
            .map(|p| match p {
                Packet::Publish(p) => (p.payload[0], p.dup),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            [(1, true), (2, true), (3, true), (4, false), (5, false)],
            "unacknowledged ones again (DUP), then the queue, in order"
        );
        b.route(t0, qos1("t/x", 7));
        settle(&mut b, t0);
        assert!(
            matches!(&output(&mut b, key)[..], [Packet::Publish(p)] if p.payload[..] == [7]),
            "the subscription works on B"
        );
    }

    #[test]
    fn a_connected_session_is_disconnected_0x8e_when_it_moves() {
        let t0 = Instant::now();
        let (mut a, key) = node_a_with_session(t0);
        a.handle_cluster(
            t0,
            FromCluster::SessionMoveOut {
                request: 1,
                client_id: ByteStr::from("mover"),
            },
        );
        let image = moved_out(settle(&mut a, t0), 1).expect("held");
        let packets = output(&mut a, key);
        assert!(
            matches!(&packets[..], [Packet::Disconnect(d)] if d.reason == ReasonCode::SESSION_TAKEN_OVER),
            "{packets:?}"
        );
        assert_eq!(a.conns[key].phase, Phase::Closing);
        let image = decode_session(&image, a.clock(t0)).expect("decodes");
        assert_eq!(image.inflight.len(), 3);
        assert_eq!(image.subscriptions.len(), 1);
    }

    #[test]
    fn a_fetch_that_finds_nothing_or_garbage_gives_a_new_session() {
        let t0 = Instant::now();
        for image in [
            None,
            Some(bytes::Bytes::from_static(b"\x07\x00\x00\x00garbage")),
        ] {
            let mut b = node(t0);
            let key = connect(&mut b, t0, "c", false);
            let out = answer_fetch(&mut b, t0, image);
            assert!(out
                .iter()
                .any(|m| matches!(m, ToCluster::SessionSet { .. })));
            let packets = output(&mut b, key);
            assert!(
                matches!(&packets[..], [Packet::ConnAck(ack)] if !ack.session_present),
                "{packets:?}"
            );
        }
    }

    #[test]
    fn clean_start_or_a_session_held_here_fetches_nothing() {
        let t0 = Instant::now();
        let mut b = node(t0);
        let key = connect(&mut b, t0, "c", true);
        let out = settle(&mut b, t0);
        assert!(!out
            .iter()
            .any(|m| matches!(m, ToCluster::SessionFetch { .. })));
        assert!(matches!(&output(&mut b, key)[..], [Packet::ConnAck(_)]));
        b.conn_closed(t0, key);
        settle(&mut b, t0);
        let key = connect(&mut b, t0, "c", false);
        let out = settle(&mut b, t0);
        assert!(
            !out.iter()
                .any(|m| matches!(m, ToCluster::SessionFetch { .. })),
            "the session is here"
        );
        assert!(matches!(&output(&mut b, key)[..], [Packet::ConnAck(ack)] if ack.session_present));
    }
}
