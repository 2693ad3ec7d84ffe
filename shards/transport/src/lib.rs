//! shardmq-transport (being written).
#![warn(missing_docs, unreachable_pub)]
