//! Pure broker logic for shardmq: sessions, the subscription trie and the retained store.
//!
//! Nothing here does I/O, reads a clock or spawns a task: the shard runtime drives these types
//! and passes time in. That is what makes them testable step by step and fuzzable.
#![warn(missing_docs, unreachable_pub)]

pub mod alias;
pub mod auth;
pub mod authz;
pub mod limits;
pub mod message;
pub mod rate;
pub mod redirect;
pub mod retain;
pub mod session;
pub mod shared;
pub mod topic;
pub mod trie;
pub mod will;

pub use limits::Limits;
pub use message::Message;
