//! shardmq-store (being written).
#![warn(missing_docs, unreachable_pub)]
