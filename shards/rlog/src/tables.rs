//! The replicated tables: a deterministic state machine over [`Op`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use crate::{Change, Entry, Member, NodeId, Op, RlogError, RlogShard};

/// The replicated tables of every shard and each shard's last applied seq.
///
/// Cores apply committed ops with [`Tables::apply`]; replicants apply streamed entries with
/// [`Tables::apply_entry`] or replace a whole shard with [`Tables::replace_shard`]. Both report
/// effective [`Change`]s so the data plane can follow without rescanning.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    route: BTreeMap<String, BTreeSet<NodeId>>,
    sessions: BTreeMap<String, NodeId>,
    retain: BTreeMap<String, NodeId>,
    members: BTreeMap<NodeId, Member>,
    config: BTreeMap<String, String>,
    seqs: [u64; RlogShard::COUNT],
    /// Shared route → node → members online there (never 0; only for pairs in `route`).
    weight: BTreeMap<String, BTreeMap<NodeId, u32>>,
}

/// Ops that recreate one shard's table, valid at `seq`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ShardSnapshot {
    /// Shard.
    pub shard: RlogShard,
    /// Seq the snapshot is valid at.
    pub seq: u64,
    /// Ops (all of `shard`) that rebuild the table from empty.
    pub ops: Vec<Op>,
}

impl Tables {
    /// Empty tables, every seq 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Core side: applies a committed op, assigns it `seq(shard) + 1` and returns the entry.
    pub fn apply(&mut self, op: Op, changes: &mut Vec<Change>) -> Entry {
        let shard = op.shard();
        self.apply_op(&op, Some(changes));
        let seq = &mut self.seqs[shard.index()];
        *seq += 1;
        Entry {
            shard,
            seq: *seq,
            op,
        }
    }

    /// Replicant side: applies an entry from the stream. `Ok(false)`: a duplicate
    /// (`seq <= seq(shard)`), nothing changed. `Err(Gap)`: `seq > seq(shard) + 1`.
    pub fn apply_entry(&mut self, e: &Entry, changes: &mut Vec<Change>) -> Result<bool, RlogError> {
        if e.op.shard() != e.shard {
            return Err(RlogError::Protocol("entry op does not belong to its shard"));
        }
        let have = self.seqs[e.shard.index()];
        if e.seq <= have {
            return Ok(false);
        }
        if e.seq != have + 1 {
            return Err(RlogError::Gap {
                shard: e.shard,
                have,
                got: e.seq,
            });
        }
        self.apply_op(&e.op, Some(changes));
        self.seqs[e.shard.index()] = e.seq;
        Ok(true)
    }

    /// Last applied seq of `shard` (0: nothing applied).
    pub fn seq(&self, shard: RlogShard) -> u64 {
        self.seqs[shard.index()]
    }

    /// Last applied seq of every shard, by [`RlogShard::index`].
    pub fn seqs(&self) -> [u64; RlogShard::COUNT] {
        self.seqs
    }

    /// Ops that recreate `shard`'s table, with the seq they are valid at. Deterministic order.
    pub fn snapshot_shard(&self, shard: RlogShard) -> ShardSnapshot {
        let mut ops = Vec::with_capacity(self.op_count(shard));
        match shard {
            RlogShard::Route => {
                for (filter, nodes) in &self.route {
                    for &node in nodes {
                        ops.push(Op::RouteAdd {
                            filter: filter.clone(),
                            node,
                        });
                    }
                }
                for (filter, nodes) in &self.weight {
                    for (&node, &online) in nodes {
                        ops.push(Op::ShareWeight {
                            filter: filter.clone(),
                            node,
                            online,
                        });
                    }
                }
            }
            RlogShard::Session => {
                for (client_id, &node) in &self.sessions {
                    ops.push(Op::SessionSet {
                        client_id: client_id.clone(),
                        node,
                    });
                }
            }
            RlogShard::Retain => {
                for (topic, &node) in &self.retain {
                    ops.push(Op::RetainSet {
                        topic: topic.clone(),
                        node,
                    });
                }
            }
            RlogShard::Config => {
                for (&node, member) in &self.members {
                    ops.push(Op::MemberSet {
                        node,
                        member: member.clone(),
                    });
                }
                for (key, value) in &self.config {
                    ops.push(Op::ConfigSet {
                        key: key.clone(),
                        value: value.clone(),
                    });
                }
            }
        }
        ShardSnapshot {
            shard,
            seq: self.seq(shard),
            ops,
        }
    }

    /// Number of ops [`Tables::snapshot_shard`] produces for `shard`.
    pub fn op_count(&self, shard: RlogShard) -> usize {
        match shard {
            RlogShard::Route => {
                self.route.values().map(BTreeSet::len).sum::<usize>()
                    + self.weight.values().map(BTreeMap::len).sum::<usize>()
            }
            _ => self.key_count(shard),
        }
    }

    /// Replaces one shard's table by a snapshot and sets its seq to `snap.seq`; emits the diff
    /// old → new as changes, so the data plane stays exact.
    ///
    /// # Panics
    /// If an op of the snapshot belongs to another shard (callers validate network input).
    pub fn replace_shard(&mut self, snap: ShardSnapshot, changes: &mut Vec<Change>) {
        let mut staging = Tables::default();
        for op in &snap.ops {
            assert_eq!(op.shard(), snap.shard, "snapshot op of another shard");
            staging.apply_op(op, None);
        }
        self.replace_shard_from(snap.shard, staging, snap.seq, changes);
    }

    /// Replaces `shard`'s table by the same shard of `src` and sets its seq to `seq`, emitting
    /// the diff old → new. Other shards of `src` are ignored.
    pub(crate) fn replace_shard_from(
        &mut self,
        shard: RlogShard,
        mut src: Tables,
        seq: u64,
        changes: &mut Vec<Change>,
    ) {
        match shard {
            RlogShard::Route => {
                let new = std::mem::take(&mut src.route);
                diff_sets(&self.route, &new, changes);
                self.route = new;
                let new = std::mem::take(&mut src.weight);
                diff_weights(&self.weight, &new, &self.route, changes);
                self.weight = new;
            }
            RlogShard::Session => {
                let new = std::mem::take(&mut src.sessions);
                diff_maps(&self.sessions, &new, |client_id, old, node| {
                    changes.push(Change::SessionOwner {
                        client_id: client_id.clone(),
                        node: node.copied(),
                        previous: old.copied(),
                    })
                });
                self.sessions = new;
            }
            RlogShard::Retain => {
                self.retain = std::mem::take(&mut src.retain);
            }
            RlogShard::Config => {
                let new = std::mem::take(&mut src.members);
                diff_maps(&self.members, &new, |&node, _, member| {
                    changes.push(Change::MemberChanged {
                        node,
                        member: member.cloned(),
                    })
                });
                self.members = new;
                self.config = std::mem::take(&mut src.config);
            }
        }
        self.seqs[shard.index()] = seq;
    }

    /// Every route: filter → nodes, in filter order.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &BTreeSet<NodeId>)> {
        self.route.iter().map(|(f, n)| (f.as_str(), n))
    }

    /// Routes with filters after `after` (all of them for `None`), in filter order: a cursor for
    /// walking a large table in chunks.
    pub fn routes_after<'a>(
        &'a self,
        after: Option<&str>,
    ) -> impl Iterator<Item = (&'a str, &'a BTreeSet<NodeId>)> {
        use std::ops::Bound;
        let lower = match after {
            Some(f) => Bound::Excluded(f.to_string()),
            None => Bound::Unbounded,
        };
        self.route
            .range((lower, Bound::Unbounded))
            .map(|(f, n)| (f.as_str(), n))
    }

    /// Number of filters with at least one node.
    pub fn route_count(&self) -> usize {
        self.route.len()
    }

    /// Members online of the shared route `filter` at each node that reported some.
    pub fn share_weights(&self, filter: &str) -> Option<&BTreeMap<NodeId, u32>> {
        self.weight.get(filter)
    }

    /// Every reported weight: (shared route, node, members online), in filter order.
    pub fn all_share_weights(&self) -> impl Iterator<Item = (&str, NodeId, u32)> {
        self.weight
            .iter()
            .flat_map(|(f, n)| n.iter().map(move |(&node, &w)| (f.as_str(), node, w)))
    }

    /// Nodes with a subscriber on exactly `filter`.
    pub fn nodes_for(&self, filter: &str) -> Option<&BTreeSet<NodeId>> {
        self.route.get(filter)
    }

    /// Node the session of `client_id` is registered at.
    pub fn session_owner(&self, client_id: &str) -> Option<NodeId> {
        self.sessions.get(client_id).copied()
    }

    /// Number of registered sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Node holding the latest retained message of `topic`.
    pub fn retained_owner(&self, topic: &str) -> Option<NodeId> {
        self.retain.get(topic).copied()
    }

    /// The nodes that hold at least one latest retained message, ascending, each once.
    pub fn retained_owners(&self) -> impl Iterator<Item = NodeId> {
        self.retain
            .values()
            .copied()
            .collect::<BTreeSet<NodeId>>()
            .into_iter()
    }

    /// Topics in the retained-message index.
    pub fn retained_count(&self) -> usize {
        self.retain.len()
    }

    /// Cluster members.
    pub fn members(&self) -> &BTreeMap<NodeId, Member> {
        &self.members
    }

    /// Cluster-wide configuration.
    pub fn config(&self) -> &BTreeMap<String, String> {
        &self.config
    }

    /// Number of keys in `shard`'s table: filters, sessions, retained topics, or members plus
    /// config keys.
    pub fn key_count(&self, shard: RlogShard) -> usize {
        match shard {
            RlogShard::Route => self.route.len(),
            RlogShard::Session => self.sessions.len(),
            RlogShard::Retain => self.retain.len(),
            RlogShard::Config => self.members.len() + self.config.len(),
        }
    }

    /// Whether `shard`'s table and seq are equal in `self` and `other`.
    pub fn shard_eq(&self, other: &Tables, shard: RlogShard) -> bool {
        self.seq(shard) == other.seq(shard)
            && match shard {
                RlogShard::Route => self.route == other.route && self.weight == other.weight,
                RlogShard::Session => self.sessions == other.sessions,
                RlogShard::Retain => self.retain == other.retain,
                RlogShard::Config => self.members == other.members && self.config == other.config,
            }
    }

    /// A digest of `shard`'s table content (not its seq), stable across processes and runs of
    /// the same build: two nodes at the same seq must report the same digest.
    pub fn shard_digest(&self, shard: RlogShard) -> u64 {
        // SipHash with zero keys: deterministic, unlike `RandomState`.
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new();
        match shard {
            RlogShard::Route => {
                self.route.hash(&mut h);
                self.weight.hash(&mut h);
            }
            RlogShard::Session => self.sessions.hash(&mut h),
            RlogShard::Retain => self.retain.hash(&mut h),
            RlogShard::Config => {
                for (node, m) in &self.members {
                    (node, &m.addr, m.role as u8, &m.api).hash(&mut h);
                }
                self.config.hash(&mut h);
            }
        }
        h.finish()
    }

    /// Applies `op` without touching seqs; reports effective changes if `changes` is given.
    pub(crate) fn apply_op(&mut self, op: &Op, mut changes: Option<&mut Vec<Change>>) {
        let mut emit = |c: Change| {
            if let Some(changes) = changes.as_deref_mut() {
                changes.push(c);
            }
        };
        match op {
            Op::RouteAdd { filter, node } => {
                if self.route.entry(filter.clone()).or_default().insert(*node) {
                    emit(Change::RouteAdded {
                        filter: filter.clone(),
                        node: *node,
                    });
                }
            }
            Op::RouteDel { filter, node } => {
                self.forget_weight(filter, *node);
                if let Some(nodes) = self.route.get_mut(filter.as_str()) {
                    if nodes.remove(node) {
                        emit(Change::RouteRemoved {
                            filter: filter.clone(),
                            node: *node,
                        });
                    }
                    if nodes.is_empty() {
                        self.route.remove(filter.as_str());
                    }
                }
            }
            Op::RoutePurge { node } => {
                self.weight.retain(|_, nodes| {
                    nodes.remove(node);
                    !nodes.is_empty()
                });
                self.route.retain(|filter, nodes| {
                    if nodes.remove(node) {
                        emit(Change::RouteRemoved {
                            filter: filter.clone(),
                            node: *node,
                        });
                    }
                    !nodes.is_empty()
                });
            }
            Op::SessionSet { client_id, node } => {
                let previous = self.sessions.insert(client_id.clone(), *node);
                if previous != Some(*node) {
                    emit(Change::SessionOwner {
                        client_id: client_id.clone(),
                        node: Some(*node),
                        previous,
                    });
                }
            }
            Op::SessionDel { client_id, node } => {
                if self.sessions.get(client_id.as_str()) == Some(node) {
                    self.sessions.remove(client_id.as_str());
                    emit(Change::SessionOwner {
                        client_id: client_id.clone(),
                        node: None,
                        previous: Some(*node),
                    });
                }
            }
            Op::SessionPurge { node } => {
                self.sessions.retain(|client_id, owner| {
                    if owner == node {
                        emit(Change::SessionOwner {
                            client_id: client_id.clone(),
                            node: None,
                            previous: Some(*node),
                        });
                        false
                    } else {
                        true
                    }
                });
            }
            Op::RetainSet { topic, node } => {
                self.retain.insert(topic.clone(), *node);
            }
            Op::RetainDel { topic } => {
                self.retain.remove(topic.as_str());
            }
            Op::RetainPurge { node } => {
                self.retain.retain(|_, owner| owner != node);
            }
            Op::MemberSet { node, member } => {
                if self.members.get(node) != Some(member) {
                    self.members.insert(*node, member.clone());
                    emit(Change::MemberChanged {
                        node: *node,
                        member: Some(member.clone()),
                    });
                }
            }
            Op::MemberDel { node } => {
                if self.members.remove(node).is_some() {
                    emit(Change::MemberChanged {
                        node: *node,
                        member: None,
                    });
                }
            }
            Op::ConfigSet { key, value } => {
                self.config.insert(key.clone(), value.clone());
            }
            Op::ShareWeight {
                filter,
                node,
                online,
            } => {
                let routed = self
                    .route
                    .get(filter.as_str())
                    .is_some_and(|n| n.contains(node));
                if !routed {
                    return;
                }
                let old = if *online == 0 {
                    self.forget_weight(filter, *node)
                } else {
                    self.weight
                        .entry(filter.clone())
                        .or_default()
                        .insert(*node, *online)
                        .unwrap_or(0)
                };
                if old != *online {
                    emit(Change::ShareWeight {
                        filter: filter.clone(),
                        node: *node,
                        online: *online,
                    });
                }
            }
        }
    }

    /// Drops `node`'s weight of `filter`; returns it (0 if it had none).
    fn forget_weight(&mut self, filter: &str, node: NodeId) -> u32 {
        let Some(nodes) = self.weight.get_mut(filter) else {
            return 0;
        };
        let old = nodes.remove(&node).unwrap_or(0);
        if nodes.is_empty() {
            self.weight.remove(filter);
        }
        old
    }
}

/// Emits `ShareWeight` for every (filter, node) whose weight differs between `old` and `new`,
/// for pairs still routed in `routes` (a removed route's weight goes with its `RouteRemoved`).
fn diff_weights(
    old: &BTreeMap<String, BTreeMap<NodeId, u32>>,
    new: &BTreeMap<String, BTreeMap<NodeId, u32>>,
    routes: &BTreeMap<String, BTreeSet<NodeId>>,
    changes: &mut Vec<Change>,
) {
    let empty = BTreeMap::new();
    let routed = |f: &str, n: &NodeId| routes.get(f).is_some_and(|s| s.contains(n));
    for (filter, nodes) in old {
        let now = new.get(filter).unwrap_or(&empty);
        for node in nodes.keys().filter(|n| !now.contains_key(*n)) {
            if routed(filter, node) {
                changes.push(Change::ShareWeight {
                    filter: filter.clone(),
                    node: *node,
                    online: 0,
                });
            }
        }
    }
    for (filter, nodes) in new {
        let had = old.get(filter).unwrap_or(&empty);
        for (node, &online) in nodes {
            if had.get(node) != Some(&online) && routed(filter, node) {
                changes.push(Change::ShareWeight {
                    filter: filter.clone(),
                    node: *node,
                    online,
                });
            }
        }
    }
}

/// Emits `RouteRemoved` for pairs only in `old`, then `RouteAdded` for pairs only in `new`.
fn diff_sets(
    old: &BTreeMap<String, BTreeSet<NodeId>>,
    new: &BTreeMap<String, BTreeSet<NodeId>>,
    changes: &mut Vec<Change>,
) {
    let empty = BTreeSet::new();
    for (filter, nodes) in old {
        let keep = new.get(filter).unwrap_or(&empty);
        for &node in nodes.difference(keep) {
            changes.push(Change::RouteRemoved {
                filter: filter.clone(),
                node,
            });
        }
    }
    for (filter, nodes) in new {
        let had = old.get(filter).unwrap_or(&empty);
        for &node in nodes.difference(had) {
            changes.push(Change::RouteAdded {
                filter: filter.clone(),
                node,
            });
        }
    }
}

/// Calls `emit(key, old_value, new_value)` for every key whose value differs between `old` and
/// `new`.
fn diff_maps<K: Ord, V: PartialEq>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    mut emit: impl FnMut(&K, Option<&V>, Option<&V>),
) {
    for (k, v) in old {
        if !new.contains_key(k) {
            emit(k, Some(v), None);
        }
    }
    for (k, v) in new {
        let was = old.get(k);
        if was != Some(v) {
            emit(k, was, Some(v));
        }
    }
}
