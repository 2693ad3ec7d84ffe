//! shardmq-auth (being written).
#![warn(missing_docs, unreachable_pub)]
