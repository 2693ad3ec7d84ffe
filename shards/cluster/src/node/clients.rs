//! What the nodes tell each other about their MQTT clients, in every ping's answer: the
//! address clients should use to reach a node (`cluster.client_address`), how many
//! connections it holds and whether it is evacuating. The node's evacuation and the
//! cluster's rebalance (docs/cluster.md, "Evacuation and rebalance") pick where clients go
//! from it.

use super::*;
use std::sync::atomic::{AtomicBool, AtomicUsize};

/// This node's client side, as its pings tell the others.
#[derive(Debug, Clone, Default)]
pub struct ClientFacing {
    /// `host:port` clients use to reach this node: the Server Reference other nodes send
    /// clients here with. `""`: this node takes no clients sent from elsewhere.
    pub address: String,
    /// The data plane's count of open client connections.
    pub connections: Arc<AtomicUsize>,
    /// Set while this node evacuates (it is then no place to send clients to).
    pub evacuating: Arc<AtomicBool>,
}

/// The part of a ping's answer about clients.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct ClientsPong {
    address: String,
    connections: u64,
    evacuating: bool,
}

impl ClientFacing {
    pub(super) fn pong(&self) -> ClientsPong {
        ClientsPong {
            address: self.address.clone(),
            connections: self.connections.load(Ordering::Relaxed) as u64,
            evacuating: self.evacuating.load(Ordering::Relaxed),
        }
    }
}

/// A running member and its clients, as it last said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientNode {
    /// Node id.
    pub node: NodeId,
    /// Its `cluster.client_address` (`""`: none).
    pub address: String,
    /// Open client connections.
    pub connections: u64,
    /// It is evacuating.
    pub evacuating: bool,
}

impl ClusterNode {
    /// This node and every member that answered a ping in the last 3 s, with what it said
    /// of its clients; by node id.
    pub fn client_nodes(&self) -> Vec<ClientNode> {
        let me = self.me();
        let mine = self.inner.s.clients.pong();
        let mut nodes = vec![ClientNode {
            node: me,
            address: mine.address,
            connections: mine.connections,
            evacuating: mine.evacuating,
        }];
        let members: Vec<NodeId> = self.tables(|t| t.members().keys().copied().collect());
        let seen = self.inner.seen.locked();
        for id in members.into_iter().filter(|&id| id != me) {
            if let Some((at, pong)) = seen.get(&id) {
                if at.elapsed() < crate::timeouts::LIVENESS {
                    nodes.push(ClientNode {
                        node: id,
                        address: pong.clients.address.clone(),
                        connections: pong.clients.connections,
                        evacuating: pong.clients.evacuating,
                    });
                }
            }
        }
        nodes.sort_by_key(|n| n.node);
        nodes
    }
}
