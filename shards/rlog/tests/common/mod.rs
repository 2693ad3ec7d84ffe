//! What the data plane knows of the route shard, rebuilt from [`Change`]s alone, checking that
//! each change has an effect: shared by the property and simulation tests.

use shardmq_rlog::{Change, NodeId};
use std::collections::{BTreeMap, BTreeSet};

/// Routes, and the shared-group weights of routed pairs.
#[derive(Default, PartialEq, Debug)]
pub struct RouteView {
    pub routes: BTreeSet<(String, NodeId)>,
    pub weights: BTreeMap<(String, NodeId), u32>,
}

impl RouteView {
    /// Applies `c` if it is a route shard change; gives it back otherwise.
    pub fn apply(&mut self, c: Change) -> Option<Change> {
        match c {
            Change::RouteAdded { filter, node } => {
                assert!(self.routes.insert((filter, node)), "route added twice")
            }
            Change::RouteRemoved { filter, node } => {
                self.weights.remove(&(filter.clone(), node));
                assert!(self.routes.remove(&(filter, node)), "absent route removed")
            }
            Change::ShareWeight {
                filter,
                node,
                online,
            } => {
                let pair = (filter, node);
                assert!(self.routes.contains(&pair), "weight of a pair not routed");
                match online {
                    0 => assert!(self.weights.remove(&pair).is_some(), "no weight to drop"),
                    w => assert_ne!(self.weights.insert(pair, w), Some(w), "same weight"),
                }
            }
            other => return Some(other),
        }
        None
    }
}
