//! Cluster control plane for shardmq.
#![warn(missing_docs, unreachable_pub)]

pub mod transport;
