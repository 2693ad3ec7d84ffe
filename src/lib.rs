//! shardmq: a clustered MQTT broker, thread-per-core on io_uring.
//!
//! This crate is the node: configuration, CPU selection, and start-up of the data plane
//! (`shards/`) and the control plane.

#![warn(missing_docs, unreachable_pub)]

pub mod api;
pub mod cluster;
pub mod config;
pub mod cpus;
pub mod ctl;
pub mod evacuate;
mod node;
pub mod reload;
pub mod storage;
pub mod tune;

pub use node::run;
