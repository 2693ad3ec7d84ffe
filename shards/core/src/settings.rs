//! [`CoreSettings`]: what a shard's logic is configured with, and its [`validate`](CoreSettings::validate).

use crate::bus::MAX_SHARDS;
use shardmq_broker::Limits;
use std::time::Duration;

/// Everything [`ShardCore`](crate::ShardCore) is configured with. The runtime's
/// configuration holds one and the binary's config layer builds it, then calls
/// [`validate`](Self::validate) before anything starts.
#[derive(Debug, Clone)]
pub struct CoreSettings {
    /// Node name, used in `$SYS` topics.
    pub node_name: String,
    /// Shards of the node (one per pinned CPU), `1..=MAX_SHARDS`.
    pub shards: usize,
    /// `[auth]` is configured: every CONNECT's credentials go to the verifier
    /// ([`ShardCore::poll_verify`](crate::ShardCore::poll_verify)).
    pub auth: bool,
    /// What a PUBLISH the ACL denies gets (`auth.acl_deny_action`).
    pub acl_deny_action: shardmq_broker::authz::DenyAction,
    /// Node-wide connection limit (`listener.max_connections`).
    pub max_connections: usize,
    /// Node-wide CONNECTs admitted per second, shared equally between shards; 0 = unlimited.
    /// Beyond it: CONNACK 0x9F Connection rate exceeded (MQTT 3.x return code 3).
    pub max_connection_rate: u32,
    /// Time allowed between accept and CONNECT (`mqtt.connect_timeout_ms`).
    pub connect_timeout: Duration,
    /// Per-client MQTT limits.
    pub limits: Limits,
    /// How a shared subscription's group picks the member for each message.
    pub shared_strategy: shardmq_broker::shared::SharedStrategy,
    /// Batches in flight per shard pair (`shard.channel_capacity`).
    pub channel_capacity: usize,
    /// Messages per batch (`shard.batch_max`).
    pub batch_max: usize,
    /// `$SYS` publish interval; `None` disables it.
    pub sys_interval: Option<Duration>,
    /// MQTT 5.0 enhanced authentication methods offered (empty: CONNACK 0x8C to any).
    pub authenticators: shardmq_broker::auth::Authenticators,
    /// Server redirection (`listener.moved_to`, `listener.use_another_server`).
    pub redirect: shardmq_broker::redirect::Redirect,
}

/// Why [`CoreSettings::validate`] refused the settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

impl CoreSettings {
    /// Checks the settings and the relations between them; the message names the key.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let fail = |m: &str| Err(SettingsError(m.to_string()));
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return Err(SettingsError(format!(
                "shard.cpus: a node runs 1 to {MAX_SHARDS} shards, not {}",
                self.shards
            )));
        }
        if self.max_connections == 0 {
            return fail("listener.max_connections must be at least 1");
        }
        if self.connect_timeout.is_zero() {
            return fail("mqtt.connect_timeout_ms must be at least 1");
        }
        if self.channel_capacity == 0 {
            return fail("shard.channel_capacity must be at least 1");
        }
        if self.batch_max == 0 {
            return fail("shard.batch_max must be at least 1");
        }
        if self.sys_interval.is_some_and(|i| i.is_zero()) {
            return fail("sys.interval_ms must be at least 1 (0 is written as no interval)");
        }
        self.limits.validate().map_err(SettingsError)
    }
}
