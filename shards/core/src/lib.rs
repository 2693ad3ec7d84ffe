//! One shard of a shardmq node as a pure state machine: [`ShardCore`].
//!
//! A shard owns a partition of the node's connections and everything they touch: the sessions
//! (with expiry and wills), its partition of the client registry, a replica of the node's route
//! table and retained store, the shared-subscription groups, the replica of the other nodes'
//! routes, and its `$SYS` figures. Nothing here does I/O, reads a clock, draws randomness or
//! knows an executor: time comes in as arguments (`now: Instant`; the wall clock is derived
//! from the one given to [`ShardCore::new`]), nonces come from a ChaCha20 generator seeded by
//! the caller, and everything the shard wants done comes out of `poll_*` methods. The runtime
//! (`shardmq-shards`) is the I/O shell around it: executors, listeners, connection drivers, the
//! cross-shard mesh, the control-plane link, the storage writer. The tests drive several cores
//! in memory (`tests/harness.rs`).
//!
//! # Driving a `ShardCore`
//!
//! Inputs (each may produce outputs):
//! - connections: [`open_conn`](ShardCore::open_conn) when one is accepted,
//!   [`bytes_in`](ShardCore::bytes_in) for every read (its keep-alive restarts),
//!   [`on_packet`](ShardCore::on_packet) for each decoded packet (only while the connection's
//!   [`Phase`] reads: `AwaitConnect`, `Authenticating`, `Active`),
//!   [`on_decode_error`](ShardCore::on_decode_error), [`conn_closed`](ShardCore::conn_closed)
//!   once the driver is done with it (after a close it asked for, or when the socket died);
//! - other shards: [`handle_peer`](ShardCore::handle_peer) with each batch, in the order the
//!   sending shard queued them (the mesh keeps FIFO order per pair of shards);
//! - the control plane: [`handle_cluster`](ShardCore::handle_cluster);
//! - the verifier: [`handle_verdict`](ShardCore::handle_verdict);
//! - the management API: [`handle_mgmt`](ShardCore::handle_mgmt);
//! - time: [`handle_timeout`](ShardCore::handle_timeout) at or after
//!   [`poll_timeout`](ShardCore::poll_timeout): connect and keep-alive timeouts (a timer table
//!   in buckets of [`TIMER_BUCKET`], `shard/timers.rs`), session expiry, delayed wills, traces;
//!   [`publish_sys`](ShardCore::publish_sys) every `sys_interval`;
//! - the storage writer: `durable_moved`, `durable_received` (see `shard/durable.rs`).
//!
//! Outputs, to drain after every input, in this order:
//! 1. [`poll_verify`](ShardCore::poll_verify): credentials for the verifier;
//! 2. [`take_outbox`](ShardCore::take_outbox) when [`take_flush_wanted`](ShardCore::take_flush_wanted)
//!    says so: batches for other shards (and [`take_cluster_out`](ShardCore::take_cluster_out)
//!    for the control plane), at most `channel_capacity × batch_max` messages per destination
//!    before [`congested`](ShardCore::congested) asks the shell to stop reading;
//! 3. [`poll_conn`](ShardCore::poll_conn): connections with new output in `Conn::out` or a new
//!    phase (`Closing`: write what is there, then close and call `conn_closed`).
//!
//! Within one input the core may send itself messages; every input ends by handling them
//! ([`drain_local`](ShardCore::drain_local)), so the order above sees a settled state.

pub mod bus;
mod chunk_slab;
pub mod durable;
pub mod mgmt;
mod settings;
mod shard;
pub mod store;
pub mod sys;
pub mod verify;

use shardmq_link as link;

pub use bus::{Batch, ShardId, ShardMsg, ShardSet, SharedPublish, MAX_SHARDS};
pub use chunk_slab::ChunkSlab;
pub use settings::{CoreSettings, SettingsError};
pub use shard::{
    ClusterShard, Conn, ConnKey, Phase, SessionKey, ShardCore, ShardStats, CLUSTER_OUT_MAX,
    RETAINED_STEP_NODES, TIMER_BUCKET, TIMER_RECHECK,
};

/// What a listener speaks under MQTT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// MQTT over TCP (`[listener]`).
    Tcp,
    /// MQTT over TLS (`[listener.tls]`).
    Tls,
    /// MQTT over WebSocket (`[listener.ws]`).
    Ws,
    /// MQTT over WebSocket over TLS (`[listener.wss]`).
    Wss,
}

impl ListenerKind {
    /// The configuration key of the listener's address, for messages.
    pub fn bind_key(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "listener.bind",
            ListenerKind::Tls => "listener.tls.bind",
            ListenerKind::Ws => "listener.ws.bind",
            ListenerKind::Wss => "listener.wss.bind",
        }
    }
}
