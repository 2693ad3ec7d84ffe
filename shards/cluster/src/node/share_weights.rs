//! This node's weights of its shared groups: how many members of each group are online here,
//! summed over the shards, written to the cluster tables as [`Op::ShareWeight`] so that every
//! node's publishing shards balance a group's messages across nodes by member count.
//!
//! Pure (time is an argument): the uplink task owns one [`ShareWeights`], feeds it the shards'
//! [`ToCluster::ShareOnline`](shardmq_link::ToCluster::ShareOnline) reports and writes what
//! [`ShareWeights::poll`] returns. Coalesced: a group whose count changes many times within
//! [`SHARE_WEIGHT_PERIOD`] (a reconnect storm) costs one write with the last count.

use shardmq_link::ShardId;
use shardmq_rlog::Op;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a changed count waits for more changes before it is written: the longest a
/// group's weight lags its members here (plus one cluster write).
pub(super) const SHARE_WEIGHT_PERIOD: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
struct Group {
    /// (shard, members online there), only shards that reported.
    shards: Vec<(ShardId, u32)>,
    /// The count last handed out for writing (0: none, or none yet).
    written: u32,
    dirty: bool,
}

impl Group {
    fn total(&self) -> u32 {
        self.shards.iter().map(|(_, n)| *n).sum()
    }
}

/// The groups this node has members of, by their routed filter (`$share/{group}/{filter}`).
#[derive(Debug, Default)]
pub(super) struct ShareWeights {
    groups: HashMap<String, Group>,
    /// When the dirty groups are written; `None`: none is dirty.
    due: Option<Instant>,
}

impl ShareWeights {
    /// `shard` has `online` members of `share` online.
    pub(super) fn set(&mut self, now: Instant, share: &str, shard: ShardId, online: u32) {
        let g = match self.groups.get_mut(share) {
            Some(g) => g,
            None => self.groups.entry(share.to_string()).or_default(),
        };
        match g.shards.iter_mut().find(|(s, _)| *s == shard) {
            Some((_, n)) => *n = online,
            None => g.shards.push((shard, online)),
        }
        g.shards.retain(|(_, n)| *n > 0);
        g.dirty = g.total() != g.written;
        if g.dirty && self.due.is_none() {
            self.due = Some(now + SHARE_WEIGHT_PERIOD);
        }
    }

    /// This node's route of `share` is gone (its last member left): so is its weight, with
    /// the route's removal in the tables.
    pub(super) fn forget(&mut self, share: &str) {
        self.groups.remove(share);
    }

    /// When [`Self::poll`] has something to write.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.due
    }

    /// The writes due at `now`: one op per group whose count changed since its last write.
    pub(super) fn poll(&mut self, now: Instant, node: u64) -> Vec<Op> {
        if self.due.is_none_or(|d| d > now) {
            return Vec::new();
        }
        self.due = None;
        let mut ops = Vec::new();
        for (share, g) in self.groups.iter_mut().filter(|(_, g)| g.dirty) {
            g.dirty = false;
            let online = g.total();
            if online != g.written {
                g.written = online;
                ops.push(Op::ShareWeight {
                    filter: share.clone(),
                    node,
                    online,
                });
            }
        }
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(ops: &[Op]) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = ops
            .iter()
            .map(|op| match op {
                Op::ShareWeight { filter, online, .. } => (filter.clone(), *online),
                other => panic!("not a weight: {other:?}"),
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn counts_are_summed_over_shards_and_coalesced() {
        let t0 = Instant::now();
        let mut w = ShareWeights::default();
        assert_eq!(w.deadline(), None);
        // A storm: many changes within one period cost one write of the last sum.
        for i in 0..100 {
            w.set(t0, "$share/g/a", i % 2, (i / 2 + 1) as u32);
        }
        w.set(t0, "$share/g/b", 0, 1);
        assert_eq!(w.deadline(), Some(t0 + SHARE_WEIGHT_PERIOD));
        assert!(w.poll(t0, 7).is_empty(), "not due yet");
        let ops = w.poll(t0 + SHARE_WEIGHT_PERIOD, 7);
        assert_eq!(
            weights(&ops),
            vec![("$share/g/a".into(), 50 + 50), ("$share/g/b".into(), 1)]
        );
        assert!(matches!(ops[0], Op::ShareWeight { node: 7, .. }));
        assert_eq!(w.deadline(), None);
        // Back to what was written: nothing to write.
        w.set(t0, "$share/g/b", 0, 3);
        w.set(t0, "$share/g/b", 0, 1);
        assert!(w.poll(t0 + 2 * SHARE_WEIGHT_PERIOD, 7).is_empty());
        // Down to 0 is written (the others then stop sending messages here).
        w.set(t0, "$share/g/a", 0, 0);
        w.set(t0, "$share/g/a", 1, 0);
        let ops = w.poll(t0 + 3 * SHARE_WEIGHT_PERIOD, 7);
        assert_eq!(weights(&ops), vec![("$share/g/a".into(), 0)]);
        // A forgotten group starts again from nothing written.
        w.forget("$share/g/b");
        w.set(t0, "$share/g/b", 1, 1);
        let ops = w.poll(t0 + 4 * SHARE_WEIGHT_PERIOD, 7);
        assert_eq!(weights(&ops), vec![("$share/g/b".into(), 1)]);
    }
}
