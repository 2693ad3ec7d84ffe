//! Read-only views of a shard's state, for the in-memory harness (`tests/harness.rs` checks its
//! properties with them) and for debugging. Nothing here changes the shard.

use super::{ConnKey, Phase, ShardCore};
use crate::bus::ShardId;
use shardmq_broker::shared::SharedKey;
use shardmq_codec::ByteStr;

impl ShardCore {
    /// Whether this shard's route replica holds `filter` for `shard` (a publish here matching it
    /// goes to `shard`). For a shared filter (`$share/{group}/{filter}`): whether this shard's
    /// replica of the group has members, so that a message of the group has a member to go to.
    pub fn routes_contain(&self, filter: &str, shard: ShardId) -> bool {
        let full = ByteStr::from(filter);
        match SharedKey::of(&full) {
            Some(key) => self
                .shared_routes
                .get(&key.filter)
                .is_some_and(|fg| fg.members_here(&key.group).1),
            None => self
                .routes
                .get(filter)
                .is_some_and(|set| set.contains(shard)),
        }
    }

    /// This shard's sessions: the client id, and the connection attached (if any) with its
    /// phase.
    pub fn sessions_view(&self) -> impl Iterator<Item = (&str, Option<(ConnKey, Phase)>)> + '_ {
        self.sessions.iter_from(0).map(|(_, slot)| {
            let conn = slot
                .conn
                .map(|c| (c, self.conns.get(c).map_or(Phase::Closing, |c| c.phase)));
            (slot.session.client_id().as_str(), conn)
        })
    }

    /// The filters of `client_id`'s session on this shard, if it has one here.
    pub fn session_filters(&self, client_id: &str) -> Option<Vec<String>> {
        let skey = self.session_of(client_id)?;
        let slot = self.sessions.get(skey)?;
        Some(
            slot.session
                .subscriptions()
                .map(|(f, _)| f.to_string())
                .collect(),
        )
    }

    /// The shard whose registry partition holds `client_id`.
    pub fn registry_owner(&self, client_id: &str) -> ShardId {
        self.owner_of(client_id)
    }

    /// The shard this shard's registry partition names for `client_id`: `None` if it is not
    /// registered (or this shard is not its owner).
    pub fn registry_shard(&self, client_id: &str) -> Option<ShardId> {
        self.registry.get(client_id).map(|e| e.shard)
    }

    /// Claims of `client_id` this shard waits on: its CONNECTs waiting for the registry's
    /// answer, and a takeover deferred until one of them lands.
    pub fn claims_in_progress(&self, client_id: &str) -> usize {
        let pending = self
            .pending_connects
            .values()
            .filter(|p| p.accepted.client_id.as_str() == client_id)
            .count();
        let deferred = self
            .deferred_takeovers
            .values()
            .filter(|d| d.0.as_str() == client_id)
            .count();
        pending + deferred
    }

    /// Work in progress: claims waiting for the registry, SUBACKs and CONNACKs waiting for
    /// route acknowledgements, deferred takeovers, messages to itself. All zero once the node
    /// is quiet (nothing in flight between shards or on any connection).
    pub fn in_progress(&self) -> usize {
        self.pending_connects.len()
            + self.route_syncs.len()
            + self.connect_syncs.len()
            + self.deferred_takeovers.len()
            + self.forwarders.len()
            + self.move_windows.len()
            + self.local.len()
    }
}
