//! The broker's configuration: built-in defaults, then a TOML file, then `SHARDMQ_*`
//! environment variables.
//!
//! The defaults are `config/shardmq.toml`, embedded in the binary, so the broker runs with no
//! file at all. Environment variables are named `SHARDMQ_<SECTION>__<KEY>` (a double underscore
//! between section and key): `SHARDMQ_LISTENER__BIND=127.0.0.1:1884`, `SHARDMQ_NODE__CPUS=0-1`,
//! `SHARDMQ_MQTT__MAX_INFLIGHT=64`. Unknown keys are refused, and every error names the key it is
//! about (`mqtt.max_inflight: ...`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::cpus::{ControlCpu, CpuSpec};
use shardmq_broker::shared::SharedStrategy;

/// The documented example configuration, which is also the built-in defaults.
pub const DEFAULTS_TOML: &str = include_str!("../config/shardmq.toml");

/// Prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "SHARDMQ_";

/// Separator between section and key in environment variable names.
pub const ENV_SEPARATOR: &str = "__";

/// The whole configuration of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[node]`: identity and CPUs.
    pub node: NodeConfig,
    /// `[listener]`: the MQTT TCP listener.
    pub listener: ListenerConfig,
    /// `[mqtt]`: protocol limits.
    pub mqtt: MqttConfig,
    /// `[shard]`: cross-shard traffic.
    pub shard: ShardConfig,
    /// `[sys]`: `$SYS` topics.
    pub sys: SysConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// `[auth]`: MQTT 5.0 enhanced authentication.
    pub auth: AuthConfig,
    /// `[api]`: the HTTP management API.
    pub api: ApiConfig,
    /// `[cluster]`: membership, replication and forwarding between nodes.
    pub cluster: ClusterConfig,
    /// `[storage]`: durability of retained messages and persistent sessions.
    pub storage: StorageConfig,
}

/// `[api]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address of the HTTP management API (`/health`, `/metrics`, `/api/v1/...`), IP:PORT;
    /// empty = no API.
    pub listen: String,
    /// The API key file (`shardmq ctl api-key` writes it; the API re-reads it when it changes).
    /// Holds SHA-256 hashes of the keys, never the keys.
    pub keys_file: std::path::PathBuf,
    /// Requests from a loopback peer address need no key.
    pub allow_unauthenticated_loopback: bool,
    /// PEM certificate chain of the API's HTTPS listener; empty (with `tls_key_file`) = plain
    /// HTTP.
    pub tls_cert_file: String,
    /// PEM private key of the API's HTTPS listener; empty (with `tls_cert_file`) = plain HTTP.
    pub tls_key_file: String,
}

impl Default for ApiConfig {
    /// The embedded defaults' `[api]`.
    fn default() -> Self {
        Config::default().api
    }
}

impl ApiConfig {
    /// The address to bind, or `None` when the API is disabled. `listen` is validated at load.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        let text = self.listen.trim();
        if text.is_empty() {
            None
        } else {
            text.parse().ok()
        }
    }

    /// `(cert, key)` PEM files when the API is served over HTTPS; both or neither are set
    /// (validated at load).
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        let (cert, key) = (self.tls_cert_file.trim(), self.tls_key_file.trim());
        (!cert.is_empty() && !key.is_empty()).then(|| (Path::new(cert), Path::new(key)))
    }

    /// `[api]`: `listen` is an address or empty; the TLS files come in pairs; a key file is
    /// named.
    fn validate(&self) -> Result<(), ConfigError> {
        let listen = self.listen.trim();
        if !listen.is_empty() && listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::value(
                "api.listen",
                format!(
                    "{listen:?} is not a socket address (expected IP:PORT, e.g. \"127.0.0.1:18083\", or \"\" to disable the API)"
                ),
            ));
        }
        if self.keys_file.as_os_str().is_empty() {
            return Err(ConfigError::value("api.keys_file", "must not be empty"));
        }
        let (cert, key) = (self.tls_cert_file.trim(), self.tls_key_file.trim());
        match (cert.is_empty(), key.is_empty()) {
            (true, false) => Err(ConfigError::value(
                "api.tls_cert_file",
                "missing: api.tls_key_file is set, HTTPS needs both (or neither, for plain HTTP)",
            )),
            (false, true) => Err(ConfigError::value(
                "api.tls_key_file",
                "missing: api.tls_cert_file is set, HTTPS needs both (or neither, for plain HTTP)",
            )),
            _ => Ok(()),
        }
    }
}

/// `[storage]`: what the node keeps on disk so that nothing it acknowledged is lost on a
/// restart or a crash (docs/durability.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The node's data folder, one subfolder per concern: `shards/<id>/` holds each shard's
    /// log. The same folder as `cluster.data_dir` by default.
    pub dir: std::path::PathBuf,
    /// When an acknowledgement may go out: [`Durability`].
    pub durability: Durability,
    /// `"async"`: how often the log is fsynced (a crash loses at most this much); `"sync"`: the
    /// longest a change waits before its group commit starts while another one runs. At least
    /// 1.
    pub sync_interval_ms: u64,
    /// A shard's log segment file is closed at this size and the next one started (at least
    /// 64 KiB).
    pub segment_bytes: u64,
    /// A shard compacts its log while serving (re-writes its live state, then deletes the old
    /// segments) once the log is at least this big and 4 times what the last compaction left.
    pub compact_min_bytes: u64,
}

/// `storage.durability`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Nothing is stored: a restart loses retained messages and persistent sessions.
    Off,
    /// Changes are written in order and fsynced every `sync_interval_ms`; acknowledgements do
    /// not wait (a crash loses at most that interval, a clean stop nothing).
    Async,
    /// A PUBACK/PUBREC of a stored message, the SUBACK and CONNACK of a persistent session go
    /// out only once the change is on disk (group commit: one fsync per batch).
    Sync,
}

impl StorageConfig {
    /// `[storage]`: a folder is named and the interval is at least 1 ms.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.dir.as_os_str().is_empty() {
            return Err(ConfigError::value("storage.dir", "must not be empty"));
        }
        if self.sync_interval_ms == 0 {
            return Err(ConfigError::value(
                "storage.sync_interval_ms",
                "must be at least 1",
            ));
        }
        if self.segment_bytes < 64 << 10 {
            return Err(ConfigError::value(
                "storage.segment_bytes",
                "must be at least 65536",
            ));
        }
        Ok(())
    }
}

/// A node's part in the cluster (`node.role`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A Raft voter holding the replicated tables.
    #[default]
    Core,
    /// Not a Raft member: follows the cores' RLOG shards and forwards writes to a core.
    Replicant,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Core => "core",
            Self::Replicant => "replicant",
        })
    }
}

/// `[cluster]`. Only read when `enabled`; a single node needs none of it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Whether this node joins a cluster.
    pub enabled: bool,
    /// This node's id, unique in the cluster, > 0.
    pub node_id: u64,
    /// QUIC (UDP) address for cluster traffic.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Core nodes, `"id@host:port"` (static discovery); a core listed with its own id is an
    /// initial voter. A list, or one comma-separated string (handy in the environment).
    #[serde(deserialize_with = "string_list")]
    pub seeds: Vec<String>,
    /// Shared secret from which the nodes derive their mutual-TLS CA; at least 16 bytes when
    /// `enabled`. Printed redacted.
    #[serde(serialize_with = "redacted")]
    pub cookie: String,
    /// Directory of the raft log and snapshots (cores) or the replica snapshot (replicants).
    pub data_dir: std::path::PathBuf,
    /// Entries a core keeps per RLOG shard for replicants to resume from. At least 1.
    pub tail_len: u64,
    /// Keys per bootstrap batch. At least 1.
    pub bootstrap_batch: u32,
    /// Route/session operations per raft write. At least 1.
    pub write_batch_max: u32,
    /// How long a SUBACK waits for its route to commit before answering anyway (with a warn).
    /// At least 1.
    pub write_timeout_ms: u64,
    /// Ordered QUIC streams per peer node for forwarded publishes, 1..=64.
    pub forward_lanes: u16,
    /// Forwarded messages held per peer awaiting acknowledgement; beyond it new ones are
    /// dropped (counted, warn). At least 1.
    pub forward_pending_max: u64,
    /// Raft heartbeat interval. At least 1.
    pub heartbeat_ms: u64,
    /// Minimum raft election timeout (the maximum is twice this); more than `heartbeat_ms`.
    pub election_timeout_ms: u64,
    /// How often a replicant saves its table snapshot (and at shutdown). At least 1.
    pub replica_persist_ms: u64,
    /// A node that answers no ping for this long has its routes, sessions and retained index
    /// entries removed by the leader (it stays a member, shown `stopped`; it re-adds its routes
    /// when it is back). 0 = never.
    pub node_down_purge_ms: u64,
    /// Longest a Clean Start 0 CONNECT waits for the node holding its session to hand it over;
    /// then the client gets a new session. At least 1.
    pub session_move_timeout_ms: u64,
    /// `host:port` MQTT clients use to reach this node: the Server Reference other nodes give
    /// the clients they send here (evacuation, rebalance). `""` = derived:
    /// [`ClusterConfig::client_address_for`].
    pub client_address: String,
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the cookie itself.
        let cookie = if self.cookie.is_empty() { "" } else { "<set>" };
        f.debug_struct("ClusterConfig")
            .field("enabled", &self.enabled)
            .field("node_id", &self.node_id)
            .field("listen", &self.listen)
            .field("seeds", &self.seeds)
            .field("cookie", &cookie)
            .field("data_dir", &self.data_dir)
            .field("tail_len", &self.tail_len)
            .field("bootstrap_batch", &self.bootstrap_batch)
            .field("write_batch_max", &self.write_batch_max)
            .field("write_timeout_ms", &self.write_timeout_ms)
            .field("forward_lanes", &self.forward_lanes)
            .field("forward_pending_max", &self.forward_pending_max)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("election_timeout_ms", &self.election_timeout_ms)
            .field("replica_persist_ms", &self.replica_persist_ms)
            .field("node_down_purge_ms", &self.node_down_purge_ms)
            .field("session_move_timeout_ms", &self.session_move_timeout_ms)
            .field("client_address", &self.client_address)
            .finish()
    }
}

impl ClusterConfig {
    /// Shortest `cookie` accepted when the cluster is enabled, in bytes.
    pub const COOKIE_MIN_BYTES: usize = 16;

    /// The address clients reach this node at (`client_address`): as configured, else the
    /// first client listener of `listener` (plain TCP, else TLS), with a wildcard IP replaced
    /// by the IP of `listen` (the address the other nodes reach this one at). `""` when the
    /// node has neither.
    pub fn client_address_for(&self, listener: &ListenerConfig) -> String {
        let given = self.client_address.trim();
        if !given.is_empty() {
            return given.to_string();
        }
        let Some(mut addr) = listener.bind.or(listener.tls.bind) else {
            return String::new();
        };
        if addr.ip().is_unspecified() {
            addr.set_ip(self.listen.ip());
        }
        addr.to_string()
    }

    /// The seeds as `(node id, address)`; entries that do not parse are skipped (the
    /// configuration refuses them at load when the cluster is enabled).
    pub fn seed_list(&self) -> Vec<(u64, SocketAddr)> {
        self.seeds
            .iter()
            .filter_map(|seed| parse_seed(seed).ok())
            .collect()
    }
}

/// Parses a seed, `"id@host:port"` with a numeric id > 0 and an IP:PORT address.
pub fn parse_seed(seed: &str) -> Result<(u64, SocketAddr), String> {
    let seed = seed.trim();
    let (id, addr) = seed
        .split_once('@')
        .ok_or_else(|| format!("{seed:?} is not \"id@ip:port\" (no '@')"))?;
    let id: u64 = id
        .trim()
        .parse()
        .map_err(|_| format!("{seed:?}: node id {id:?} is not a number"))?;
    if id == 0 {
        return Err(format!("{seed:?}: node id must be > 0"));
    }
    let addr: SocketAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{seed:?}: {addr:?} is not a socket address (IP:PORT)"))?;
    Ok((id, addr))
}

/// A list of strings, or one comma-separated string (as environment variables give it).
fn string_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        OneOrMany::Many(list) => list,
    })
}

/// `[auth]`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Shared secret of the `SHARDMQ-HMAC-SHA256` enhanced authentication method; empty = the
    /// method is not offered (CONNACK 0x8C Bad authentication method). Printed redacted.
    #[serde(serialize_with = "redacted")]
    pub hmac_secret: String,
    /// Clients that send no username (and no certificate name) may connect.
    pub allow_anonymous: bool,
    /// Users and password hashes in `mosquitto_passwd` format (`$7$`, `$6$`) or argon2id;
    /// empty = none.
    pub password_file: String,
    /// Mosquitto `acl_file`; empty = every client may publish and subscribe to anything.
    pub acl_file: String,
    /// A PUBLISH the ACL denies: `ignore` or `disconnect`.
    pub acl_deny_action: AclDenyAction,
    /// HS256 secret of JWTs sent as the password; empty = none. Printed redacted.
    #[serde(serialize_with = "redacted")]
    pub jwt_secret: String,
    /// PEM public key (RSA or EC P-256) of RS256/ES256 JWTs; empty = none.
    pub jwt_public_key_file: String,
    /// URL the HTTP authentication hook POSTs each CONNECT to; empty = none.
    pub http_url: String,
    /// How long the hook may take, ms; beyond it the CONNECT is refused.
    pub http_timeout_ms: u64,
    /// Answers of the hook remembered, at most.
    pub http_cache_max: u32,
    /// How long an answer of the hook is remembered, ms; 0 = not at all.
    pub http_cache_ttl_ms: u64,
    /// Threads verifying credentials (hashing, the hook), off every shard's event loop.
    pub workers: u16,
    /// CONNECTs waiting for a worker, at most; beyond it CONNACK 0x89 Server busy (3.x: 3).
    pub queue_max: u32,
}

/// Serializes a secret as `"<redacted>"` (empty stays empty), so `check-config` never prints it.
fn redacted<S: serde::Serializer>(secret: &str, to: S) -> Result<S::Ok, S::Error> {
    to.serialize_str(if secret.is_empty() { "" } else { "<redacted>" })
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret itself.
        let shown = if self.hmac_secret.is_empty() {
            ""
        } else {
            "<set>"
        };
        let jwt = if self.jwt_secret.is_empty() {
            ""
        } else {
            "<set>"
        };
        f.debug_struct("AuthConfig")
            .field("hmac_secret", &shown)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("password_file", &self.password_file)
            .field("acl_file", &self.acl_file)
            .field("acl_deny_action", &self.acl_deny_action)
            .field("jwt_secret", &jwt)
            .field("jwt_public_key_file", &self.jwt_public_key_file)
            .field("http_url", &self.http_url)
            .field("http_timeout_ms", &self.http_timeout_ms)
            .field("http_cache_max", &self.http_cache_max)
            .field("http_cache_ttl_ms", &self.http_cache_ttl_ms)
            .field("workers", &self.workers)
            .field("queue_max", &self.queue_max)
            .finish()
    }
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name, used in `$SYS` topics and logs. Not empty.
    pub name: String,
    /// CPUs to run one shard each on.
    pub cpus: CpuSpec,
    /// CPU of the control plane (the `shardmq-control` thread, and the main thread once the
    /// shards have started); `none` = unpinned. Must be online and in the affinity mask at start.
    pub control_cpu: ControlCpu,
    /// `core` or `replicant`; only meaningful with `cluster.enabled`.
    pub role: Role,
}

/// `[listener]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address the MQTT TCP listener binds (on every shard, with `SO_REUSEPORT`); `None` (from
    /// `""`) = no plain TCP listener.
    #[serde(
        deserialize_with = "optional_socket_addr",
        serialize_with = "show_optional_addr"
    )]
    pub bind: Option<SocketAddr>,
    /// A HAProxy PROXY v1/v2 header comes before MQTT on this listener.
    pub proxy_protocol: bool,
    /// `[listener.tls]`: MQTT over TLS.
    pub tls: TlsListenerConfig,
    /// `[listener.ws]`: MQTT over WebSocket.
    pub ws: WsListenerConfig,
    /// `[listener.wss]`: MQTT over WebSocket over TLS (the certificates of `[listener.tls]`).
    pub wss: WsListenerConfig,
    /// Connections on the whole node; beyond it new clients are refused with CONNACK 0x89
    /// Server busy (MQTT 3.x return code 3). At least 1.
    pub max_connections: u64,
    /// CONNECTs admitted per second on the whole node (each shard admits its equal share,
    /// token bucket with one second of burst); beyond it CONNACK 0x9F Connection rate exceeded
    /// (MQTT 3.x return code 3). 0 = unlimited.
    pub max_connection_rate: u32,
    /// `listen(2)` backlog, 1..=`i32::MAX`.
    pub backlog: u32,
    /// Server Reference of the node's new home (MQTT 5.0 §4.11); empty = none. Armed only: the
    /// move happens on SIGUSR2, after which connected clients get DISCONNECT 0x9D Server moved
    /// and new CONNECTs CONNACK 0x9D (MQTT 3.x: closed / return code 3).
    pub moved_to: String,
    /// Server Reference to send every new client to, from start-up: CONNACK 0x9C Use another
    /// server (MQTT 3.x return code 3); empty = none.
    pub use_another_server: String,
}

impl ListenerConfig {
    /// At least one listener; TLS listeners have their files; client verification has CAs;
    /// no two listeners share an address; WebSocket paths are absolute.
    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let binds = [
            ("listener.bind", self.bind),
            ("listener.tls.bind", self.tls.bind),
            ("listener.ws.bind", self.ws.bind),
            ("listener.wss.bind", self.wss.bind),
        ];
        if binds.iter().all(|(_, b)| b.is_none()) {
            return Err(ConfigError::value(
                "listener.bind",
                "every listener is off (listener.bind, listener.tls.bind, listener.ws.bind, listener.wss.bind are all \"\")",
            ));
        }
        for (i, (key, a)) in binds.iter().enumerate() {
            if let Some(a) = a {
                if let Some((other, _)) = binds[..i].iter().find(|(_, b)| *b == Some(*a)) {
                    return Err(ConfigError::value(key, format!("{a} is also {other}")));
                }
            }
        }
        let tls_used = self.tls.bind.is_some() || self.wss.bind.is_some();
        if tls_used {
            let who = if self.tls.bind.is_some() {
                "listener.tls.bind"
            } else {
                "listener.wss.bind"
            };
            if self.tls.cert_file.trim().is_empty() {
                return Err(ConfigError::value(
                    "listener.tls.cert_file",
                    format!("missing: {who} is set"),
                ));
            }
            if self.tls.key_file.trim().is_empty() {
                return Err(ConfigError::value(
                    "listener.tls.key_file",
                    format!("missing: {who} is set"),
                ));
            }
            if self.tls.verify_peer != VerifyPeer::None && self.tls.ca_file.trim().is_empty() {
                return Err(ConfigError::value(
                    "listener.tls.ca_file",
                    "missing: listener.tls.verify_peer asks for client certificates",
                ));
            }
        }
        if self.tls.peer_cert_as_username != PeerCertName::None
            && self.tls.verify_peer == VerifyPeer::None
        {
            return Err(ConfigError::value(
                "listener.tls.peer_cert_as_username",
                "needs listener.tls.verify_peer = \"optional\" or \"required\"",
            ));
        }
        for (key, ws) in [
            ("listener.ws.path", &self.ws),
            ("listener.wss.path", &self.wss),
        ] {
            if !ws.path.starts_with('/') {
                return Err(ConfigError::value(key, "must start with /"));
            }
        }
        Ok(())
    }
}

/// `[listener.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    /// Address of the MQTT-over-TLS listener; `None` (from `""`) = off.
    #[serde(
        deserialize_with = "optional_socket_addr",
        serialize_with = "show_optional_addr"
    )]
    pub bind: Option<SocketAddr>,
    /// PEM certificate chain (server certificate first). Used by `[listener.wss]` too.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// PEM CA certificates that client certificates are verified against; empty = none.
    pub ca_file: String,
    /// Client certificates: not asked for, verified when given, or required.
    pub verify_peer: VerifyPeer,
    /// Take the MQTT username from the client certificate's CN or first SAN.
    pub peer_cert_as_username: PeerCertName,
    /// A HAProxy PROXY header comes before the TLS handshake.
    pub proxy_protocol: bool,
}

/// `listener.tls.verify_peer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyPeer {
    /// No client certificate is asked for.
    None,
    /// A client certificate is asked for and verified when sent.
    Optional,
    /// A verified client certificate is required.
    Required,
}

/// `listener.tls.peer_cert_as_username`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerCertName {
    /// The username is the CONNECT's.
    None,
    /// The certificate's subject Common Name.
    Cn,
    /// The certificate's first DNS (or e-mail) Subject Alternative Name.
    San,
}

/// `[listener.ws]` and `[listener.wss]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsListenerConfig {
    /// Listener address; `None` (from `""`) = off.
    #[serde(
        deserialize_with = "optional_socket_addr",
        serialize_with = "show_optional_addr"
    )]
    pub bind: Option<SocketAddr>,
    /// HTTP path of the upgrade request (the query string is ignored).
    pub path: String,
    /// A HAProxy PROXY header comes before the HTTP upgrade (or the TLS handshake).
    pub proxy_protocol: bool,
}

/// What to do with a PUBLISH the ACL denies (`auth.acl_deny_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AclDenyAction {
    /// MQTT 5.0: PUBACK/PUBREC 0x87 Not authorized; 3.x: acknowledged and dropped.
    Ignore,
    /// Close the connection (MQTT 5.0: DISCONNECT 0x87 first).
    Disconnect,
}

/// `[mqtt]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Largest packet accepted, in bytes, 2..=268435460 (v5 CONNACK Maximum Packet Size).
    pub max_packet_size: u32,
    /// Longest client identifier accepted, in bytes, 23..=65535 (MQTT requires at least 23).
    pub max_client_id_len: u16,
    /// Outgoing QoS 1/2 window per session, 1..=65535.
    pub max_inflight: u16,
    /// Per-session queue of pending or offline messages before dropping. At least 1.
    pub max_queued_messages: u32,
    /// Inbound QoS 2 messages awaiting PUBREL per session (server Receive Maximum), 1..=65535.
    pub max_awaiting_rel: u16,
    /// Most levels in a topic name or filter. At least 1.
    pub max_topic_levels: u16,
    /// Subscriptions per client; 0 = unlimited.
    pub max_subscriptions: u32,
    /// Cap on the session expiry interval a client may ask for.
    pub session_expiry_max_secs: u32,
    /// Cap on the client keep alive (v5 Server Keep Alive), 1..=65535.
    pub max_keepalive_secs: u16,
    /// Time allowed between accept and a complete CONNECT. At least 1.
    pub connect_timeout_ms: u64,
    /// A client whose socket accepts no bytes for this long is disconnected. At least 1.
    pub send_timeout_ms: u64,
    /// Whether retained messages are stored and delivered.
    pub retain_available: bool,
    /// Outbound bytes buffered per connection before QoS 0 drops and QoS 1/2 backpressure.
    /// At least 1.
    pub max_write_buffer_bytes: u64,
    /// Topic aliases a v5 client may set per connection (CONNACK Topic Alias Maximum), 0..=65535;
    /// 0 refuses aliases.
    pub max_topic_alias: u16,
    /// How a shared subscription group (`$share/{group}/...`, `$queue/...`) picks the one
    /// member each message goes to: "round_robin", "sticky", "hash_topic" or "hash_clientid".
    #[serde(with = "shared_strategy")]
    pub shared_strategy: SharedStrategy,
}

/// `mqtt.shared_strategy` as its configuration name.
mod shared_strategy {
    use serde::{Deserialize, Deserializer, Serializer};
    use shardmq_broker::shared::SharedStrategy;

    pub(super) fn serialize<S: Serializer>(s: &SharedStrategy, to: S) -> Result<S::Ok, S::Error> {
        to.serialize_str(s.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        from: D,
    ) -> Result<SharedStrategy, D::Error> {
        String::deserialize(from)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `[shard]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// Cross-shard batches in flight per pair of shards. At least 1.
    pub channel_capacity: u32,
    /// Messages per cross-shard batch. At least 1.
    pub batch_max: u32,
    /// Microseconds a shard with nothing to run keeps polling before it sleeps in the kernel;
    /// 0 = sleep at once. Spinning trades CPU for the wake-up latency of the next message
    /// (see docs/benchmarks.md). At most 10,000.
    pub spin_before_park_us: u32,
    /// Milliseconds between wake-ups of a shard's park guard while the shard moves client
    /// bytes, a bound on how long a park can leave runnable tasks stranded (glommio 0.9.0 could,
    /// docs/decisions/0003; the vendored glommio cannot, 0005); the guard backs off to 200 ms
    /// while idle. 0 = no guard (the default). At most 1,000.
    pub park_guard_ms: u32,
    /// How a shard drives its client connections (docs/decisions/0004).
    pub driver: ShardDriver,
}

/// `shard.driver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardDriver {
    /// Every connection through one io_uring of the shard's own, no task per connection.
    Uring,
    /// A glommio task and stream per connection (kernels before 6.0).
    Tasks,
}

/// `[sys]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SysConfig {
    /// `$SYS` publish interval; 0 disables `$SYS` topics.
    pub interval_ms: u64,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing_subscriber::EnvFilter` directive. `RUST_LOG` wins if set.
    pub level: String,
    /// Log line format.
    pub format: LogFormat,
}

/// Log line format. JSON would need tracing-subscriber's `json` feature, which this build does
/// not enable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "text" => Ok(Self::Text),
            _ => Err(serde::de::Error::custom(format!(
                "{text:?} is not an available log format; expected \"text\" \
                 (\"json\" needs tracing-subscriber's `json` feature, not in this build)"
            ))),
        }
    }
}

/// Why the configuration cannot be loaded. Each message starts with the key it is about, where
/// there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read or is not valid TOML.
    File {
        /// The file as given.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A key that the schema does not have.
    UnknownKey {
        /// Dotted key, e.g. `mqtt.max_inflightt`.
        key: String,
        /// Where it came from: a file path or "the environment".
        origin: Option<String>,
        /// Keys of the same section, to help with typos.
        expected: Vec<String>,
    },
    /// A value of the wrong type, unparsable, or out of range.
    Value {
        /// Dotted key, e.g. `listener.bind`.
        key: String,
        /// What is wrong with the value.
        message: String,
        /// Where it came from, when known: a file path or "the environment".
        origin: Option<String>,
    },
    /// Anything else the configuration library reports.
    Other(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = |f: &mut fmt::Formatter<'_>, origin: &Option<String>| match origin {
            Some(origin) => write!(f, " (from {origin})"),
            None => Ok(()),
        };
        match self {
            Self::File { path, message } => write!(f, "configuration file {path}: {message}"),
            Self::UnknownKey {
                key,
                origin,
                expected,
            } => {
                write!(f, "{key}: unknown key")?;
                from(f, origin)?;
                if !expected.is_empty() {
                    write!(f, "; expected one of: {}", expected.join(", "))?;
                }
                Ok(())
            }
            Self::Value {
                key,
                message,
                origin,
            } => {
                write!(f, "{key}: {message}")?;
                from(f, origin)
            }
            Self::Other(message) => write!(f, "configuration: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    fn value(key: &str, message: impl Into<String>) -> Self {
        Self::Value {
            key: key.to_owned(),
            message: message.into(),
            origin: None,
        }
    }
}

/// Loads the configuration: the embedded defaults, then `path` if given, then the process's
/// `SHARDMQ_*` environment variables; then validates it. See [`load_from`].
pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
    load_from(path, std::env::vars())
}

/// Loads the configuration from the embedded defaults, then `path` if given, then the
/// `SHARDMQ_*` variables among `env` (others are ignored); then validates it.
///
/// Environment values are strings parsed as a boolean, an integer or a float where they look
/// like one, else kept as strings (so `SHARDMQ_NODE__CPUS=0-1` stays a string of ranges).
pub fn load_from<I>(path: Option<&Path>, env: I) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    use config::{Environment, File, FileFormat};

    let env: config::Map<String, String> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    let mut builder =
        config::Config::builder().add_source(File::from_str(DEFAULTS_TOML, FileFormat::Toml));
    if let Some(path) = path {
        // Checked here for a plain message; the library's names the path twice.
        std::fs::metadata(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        builder = builder.add_source(File::from(path).format(FileFormat::Toml).required(true));
    }
    builder = builder.add_source(
        Environment::with_prefix(ENV_PREFIX.trim_end_matches('_'))
            .prefix_separator("_")
            .separator(ENV_SEPARATOR)
            .try_parsing(true)
            .source(Some(env)),
    );
    let merged = builder.build().map_err(|e| from_config_error(e, path))?;

    let known = config::Config::builder()
        .add_source(File::from_str(DEFAULTS_TOML, FileFormat::Toml))
        .build()
        .map_err(|e| from_config_error(e, None))?;
    check_known_keys(&cache_table(&known)?, &cache_table(&merged)?, "")
        .map_err(|e| name_origin(e, path))?;

    let config: Config = merged
        .try_deserialize()
        .map_err(|e| name_origin(from_config_error(e, path), path))?;
    config.validate()?;
    Ok(config)
}

/// The merged key/value tree of a built `config::Config`, values keeping their origin.
fn cache_table(config: &config::Config) -> Result<BTreeMap<String, config::Value>, ConfigError> {
    config::Source::collect(config)
        .map(|map| map.into_iter().collect())
        .map_err(|e| ConfigError::Other(e.to_string()))
}

fn to_table(map: config::Map<String, config::Value>) -> BTreeMap<String, config::Value> {
    map.into_iter().collect()
}

/// Refuses any key in `given` that `known` (the defaults, which list every key) lacks.
fn check_known_keys(
    known: &BTreeMap<String, config::Value>,
    given: &BTreeMap<String, config::Value>,
    prefix: &str,
) -> Result<(), ConfigError> {
    for (name, value) in given {
        let key = format!("{prefix}{name}");
        let Some(known_value) = known.get(name) else {
            return Err(ConfigError::UnknownKey {
                key,
                origin: origin_of(value),
                expected: known.keys().cloned().collect(),
            });
        };
        if let (Ok(known_table), Ok(given_table)) =
            (known_value.clone().into_table(), value.clone().into_table())
        {
            check_known_keys(
                &to_table(known_table),
                &to_table(given_table),
                &format!("{key}."),
            )?;
        }
    }
    Ok(())
}

/// Where `value` came from: its own origin, or for a table the origin of its first entry.
fn origin_of(value: &config::Value) -> Option<String> {
    if let Some(origin) = value.origin() {
        return Some(origin.to_owned());
    }
    let table = value.clone().into_table().ok()?;
    table.values().find_map(origin_of)
}

/// The environment variable that sets `key`: `mqtt.max_inflight` gives
/// `SHARDMQ_MQTT__MAX_INFLIGHT`.
pub fn env_var_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', ENV_SEPARATOR).to_uppercase()
    )
}

/// Replaces the library's origin names: the file as the user gave it, and the environment
/// variable by its name.
fn name_origin(error: ConfigError, path: Option<&Path>) -> ConfigError {
    let rename = |key: &str, origin: Option<String>| match origin.as_deref() {
        Some("the environment") => Some(format!("environment variable {}", env_var_name(key))),
        Some(_) => path.map(|path| path.display().to_string()).or(origin),
        None => None,
    };
    match error {
        ConfigError::UnknownKey {
            key,
            origin,
            expected,
        } => ConfigError::UnknownKey {
            origin: rename(&key, origin),
            key,
            expected,
        },
        ConfigError::Value {
            key,
            message,
            origin,
        } => ConfigError::Value {
            origin: rename(&key, origin),
            key,
            message,
        },
        other => other,
    }
}

/// Turns the configuration library's error into ours, moving the key to the front.
fn from_config_error(error: config::ConfigError, path: Option<&Path>) -> ConfigError {
    match error {
        config::ConfigError::Type {
            origin,
            unexpected,
            expected,
            key,
        } => ConfigError::Value {
            key: key.unwrap_or_default(),
            message: format!("invalid type: {unexpected}, expected {expected}"),
            origin,
        },
        config::ConfigError::At { error, origin, key } => match key {
            Some(key) => ConfigError::Value {
                key,
                message: error.to_string(),
                origin,
            },
            None => ConfigError::Other(error.to_string()),
        },
        config::ConfigError::NotFound(key) => ConfigError::value(&key, "missing"),
        config::ConfigError::FileParse { uri, cause } => ConfigError::File {
            path: match (uri, path) {
                (Some(_), Some(path)) => path.display().to_string(),
                (Some(uri), None) => uri,
                (None, _) => "(embedded defaults)".to_owned(),
            },
            message: cause.to_string(),
        },
        config::ConfigError::Foreign(cause) => match path {
            Some(path) => ConfigError::File {
                path: path.display().to_string(),
                message: cause.to_string(),
            },
            None => ConfigError::Other(cause.to_string()),
        },
        other => ConfigError::Other(other.to_string()),
    }
}

/// Parses a socket address with an error that shows the value.
fn optional_socket_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    text.trim().parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not a socket address (expected IP:PORT, e.g. \"0.0.0.0:1883\" or \"[::]:1883\", or \"\" for off)"
        ))
    })
}

/// Writes an optional listener address as the file has it: the address, or `""` for off.
fn show_optional_addr<S: serde::Serializer>(
    addr: &Option<SocketAddr>,
    to: S,
) -> Result<S::Ok, S::Error> {
    match addr {
        Some(a) => to.serialize_str(&a.to_string()),
        None => to.serialize_str(""),
    }
}

#[allow(dead_code)] // kept for addresses that may not be off
fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.trim().parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not a socket address (expected IP:PORT, e.g. \"0.0.0.0:1883\" or \"[::]:1883\")"
        ))
    })
}

impl Default for Config {
    /// The embedded defaults (`config/shardmq.toml`), without environment overrides.
    fn default() -> Self {
        load_from(None, std::iter::empty()).expect("the embedded defaults are valid")
    }
}

impl Config {
    /// Largest `mqtt.max_packet_size`: the MQTT Remaining Length limit plus the fixed header.
    pub const MAX_PACKET_SIZE_LIMIT: u32 = 268_435_460;

    /// Checks value ranges and relations between values; each error names its key.
    /// `node.cpus` is checked for syntax and duplicates only: whether its CPUs are online is
    /// [`CpuSpec::resolve`]'s job at start-up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let Self {
            node,
            listener,
            mqtt,
            shard,
            sys: _,
            log,
            auth,
            api,
            cluster,
            storage,
        } = self;
        storage.validate()?;
        if node.name.trim().is_empty() {
            return Err(ConfigError::value("node.name", "must not be empty"));
        }
        listener.validate_listeners()?;
        if auth.workers == 0 {
            return Err(ConfigError::value("auth.workers", "must be at least 1"));
        }
        if auth.queue_max == 0 {
            return Err(ConfigError::value("auth.queue_max", "must be at least 1"));
        }
        if !auth.jwt_secret.is_empty() && !auth.jwt_public_key_file.trim().is_empty() {
            return Err(ConfigError::value(
                "auth.jwt_secret",
                "set jwt_secret (HS256) or jwt_public_key_file (RS256/ES256), not both",
            ));
        }
        node.cpus.check().map_err(|e| {
            let text = e.to_string();
            ConfigError::value(
                "node.cpus",
                text.strip_prefix("node.cpus: ").unwrap_or(&text),
            )
        })?;

        const U16: u64 = u16::MAX as u64;
        const U32: u64 = u32::MAX as u64;
        const ANY: u64 = u64::MAX;
        const PACKET: u64 = Config::MAX_PACKET_SIZE_LIMIT as u64;
        let (l, m, s) = (listener, mqtt, shard);
        let ranges: [(&str, u64, u64, u64); 16] = [
            ("listener.max_connections", l.max_connections, 1, ANY),
            ("listener.backlog", l.backlog.into(), 1, i32::MAX as u64),
            ("mqtt.max_packet_size", m.max_packet_size.into(), 2, PACKET),
            (
                "mqtt.max_client_id_len",
                m.max_client_id_len.into(),
                23,
                U16,
            ),
            ("mqtt.max_inflight", m.max_inflight.into(), 1, U16),
            (
                "mqtt.max_queued_messages",
                m.max_queued_messages.into(),
                1,
                U32,
            ),
            ("mqtt.max_awaiting_rel", m.max_awaiting_rel.into(), 1, U16),
            ("mqtt.max_topic_levels", m.max_topic_levels.into(), 1, U16),
            (
                "mqtt.max_keepalive_secs",
                m.max_keepalive_secs.into(),
                1,
                U16,
            ),
            ("mqtt.connect_timeout_ms", m.connect_timeout_ms, 1, ANY),
            ("mqtt.send_timeout_ms", m.send_timeout_ms, 1, ANY),
            (
                "mqtt.max_write_buffer_bytes",
                m.max_write_buffer_bytes,
                1,
                ANY,
            ),
            ("shard.channel_capacity", s.channel_capacity.into(), 1, U32),
            ("shard.batch_max", s.batch_max.into(), 1, U32),
            (
                "shard.spin_before_park_us",
                s.spin_before_park_us.into(),
                0,
                10_000,
            ),
            ("shard.park_guard_ms", s.park_guard_ms.into(), 0, 1_000),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::value(
                    key,
                    format!("{value} is out of range {min}..={max}"),
                ));
            }
        }

        // The data plane's own check of its limits, so that what passes here (check-config,
        // a reload) also starts: it names the key it refuses.
        if let Err(e) = crate::node::limits(mqtt).validate() {
            let (key, message) = e.split_once(' ').unwrap_or(("mqtt", e.as_str()));
            return Err(ConfigError::value(key, message));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log.level) {
            return Err(ConfigError::value(
                "log.level",
                format!("{:?} is not a tracing filter directive: {e}", log.level),
            ));
        }
        api.validate()?;
        Self::validate_cluster(node.role, cluster)
    }

    /// `[cluster]`: ranges always (the defaults must stay sane), identity, cookie and seeds
    /// when enabled.
    fn validate_cluster(role: Role, c: &ClusterConfig) -> Result<(), ConfigError> {
        const ANY: u64 = u64::MAX;
        let ranges: [(&str, u64, u64, u64); 10] = [
            ("cluster.tail_len", c.tail_len, 1, ANY),
            ("cluster.bootstrap_batch", c.bootstrap_batch.into(), 1, ANY),
            ("cluster.write_batch_max", c.write_batch_max.into(), 1, ANY),
            ("cluster.write_timeout_ms", c.write_timeout_ms, 1, ANY),
            (
                "cluster.session_move_timeout_ms",
                c.session_move_timeout_ms,
                1,
                ANY,
            ),
            ("cluster.forward_lanes", c.forward_lanes.into(), 1, 64),
            ("cluster.forward_pending_max", c.forward_pending_max, 1, ANY),
            ("cluster.heartbeat_ms", c.heartbeat_ms, 1, ANY),
            ("cluster.election_timeout_ms", c.election_timeout_ms, 1, ANY),
            ("cluster.replica_persist_ms", c.replica_persist_ms, 1, ANY),
        ];
        for (key, value, min, max) in ranges {
            if !(min..=max).contains(&value) {
                return Err(ConfigError::value(
                    key,
                    format!("{value} is out of range {min}..={max}"),
                ));
            }
        }
        let address = c.client_address.trim();
        if !address.is_empty() {
            let port = address
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p > 0) {
                return Err(ConfigError::value(
                    "cluster.client_address",
                    format!("{address:?} is not host:port"),
                ));
            }
        }
        if let Err(e) = shardmq_cluster::timeouts::check_purge(c.node_down_purge_ms) {
            return Err(ConfigError::value("cluster.node_down_purge_ms", e));
        }
        if c.election_timeout_ms <= c.heartbeat_ms {
            return Err(ConfigError::value(
                "cluster.election_timeout_ms",
                format!(
                    "{} must be more than cluster.heartbeat_ms ({})",
                    c.election_timeout_ms, c.heartbeat_ms
                ),
            ));
        }
        if !c.enabled {
            return Ok(());
        }
        if c.node_id == 0 {
            return Err(ConfigError::value("cluster.node_id", "must be > 0"));
        }
        if c.cookie.len() < ClusterConfig::COOKIE_MIN_BYTES {
            return Err(ConfigError::value(
                "cluster.cookie",
                format!(
                    "must be at least {} bytes when cluster.enabled (it is {})",
                    ClusterConfig::COOKIE_MIN_BYTES,
                    c.cookie.len()
                ),
            ));
        }
        let mut ids = Vec::with_capacity(c.seeds.len());
        for seed in &c.seeds {
            let (id, _) = parse_seed(seed).map_err(|e| ConfigError::value("cluster.seeds", e))?;
            if ids.contains(&id) {
                return Err(ConfigError::value(
                    "cluster.seeds",
                    format!("node id {id} is listed more than once"),
                ));
            }
            ids.push(id);
        }
        if role == Role::Replicant {
            if ids.is_empty() {
                return Err(ConfigError::value(
                    "cluster.seeds",
                    "a replicant (node.role = \"replicant\") needs at least one core in cluster.seeds",
                ));
            }
            if ids.contains(&c.node_id) {
                return Err(ConfigError::value(
                    "cluster.seeds",
                    format!(
                        "lists this node's own id {} but node.role = \"replicant\": seeds are cores",
                        c.node_id
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::PathBuf;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn defaults() -> Config {
        load_from(None, env(&[])).expect("defaults load")
    }

    /// A temporary TOML file, removed on drop.
    struct TempToml(PathBuf);

    impl TempToml {
        fn new(name: &str, text: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "shardmq-config-test-{}-{name}.toml",
                std::process::id()
            ));
            let mut file = std::fs::File::create(&path).expect("create temp file");
            file.write_all(text.as_bytes()).expect("write temp file");
            Self(path)
        }
    }

    impl Drop for TempToml {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn err_text(path: Option<&Path>, vars: &[(&str, &str)]) -> String {
        load_from(path, env(vars))
            .expect_err("configuration must be refused")
            .to_string()
    }

    /// The error for a configuration file holding `text`; the file's name contains `name`.
    fn file_err_text(name: &str, text: &str) -> String {
        let file = TempToml::new(name, text);
        err_text(Some(&file.0), &[])
    }

    #[test]
    fn what_the_data_plane_would_refuse_is_refused_at_load() {
        // It passed check-config and then failed at start.
        let text = err_text(None, &[("SHARDMQ_MQTT__MAX_WRITE_BUFFER_BYTES", "1")]);
        assert!(
            text.contains("mqtt.max_write_buffer_bytes") && text.contains("at least 1024"),
            "{text}"
        );
    }

    #[test]
    fn defaults_have_the_documented_values() {
        let c = defaults();
        assert_eq!(c.node.name, "shardmq@127.0.0.1");
        assert_eq!(c.node.cpus, CpuSpec::All);
        assert_eq!(c.node.control_cpu, ControlCpu::None);
        assert_eq!(c.listener.bind, Some("0.0.0.0:1883".parse().unwrap()));
        assert_eq!(c.listener.max_connections, 1_000_000);
        assert_eq!(c.listener.max_connection_rate, 0);
        assert_eq!(c.listener.backlog, 4096);
        assert_eq!(c.listener.moved_to, "");
        assert_eq!(c.listener.use_another_server, "");
        assert_eq!(c.auth.hmac_secret, "");
        assert_eq!(c.mqtt.max_packet_size, 1_048_576);
        assert_eq!(c.mqtt.max_client_id_len, 65535);
        assert_eq!(c.mqtt.max_inflight, 32);
        assert_eq!(c.mqtt.max_queued_messages, 1000);
        assert_eq!(c.mqtt.max_awaiting_rel, 100);
        assert_eq!(c.mqtt.max_topic_levels, 128);
        assert_eq!(c.mqtt.max_subscriptions, 0);
        assert_eq!(c.mqtt.session_expiry_max_secs, u32::MAX);
        assert_eq!(c.mqtt.max_keepalive_secs, 65535);
        assert_eq!(c.mqtt.connect_timeout_ms, 10_000);
        assert_eq!(c.mqtt.send_timeout_ms, 15_000);
        assert!(c.mqtt.retain_available);
        assert_eq!(c.mqtt.max_write_buffer_bytes, 1_048_576);
        assert_eq!(c.mqtt.max_topic_alias, 65535);
        assert_eq!(c.mqtt.shared_strategy, SharedStrategy::RoundRobin);
        assert_eq!(c.shard.channel_capacity, 1024);
        assert_eq!(c.shard.batch_max, 256);
        assert_eq!(c.shard.spin_before_park_us, 0);
        assert_eq!(c.shard.park_guard_ms, 0);
        assert_eq!(c.shard.driver, ShardDriver::Uring);
        assert_eq!(c.sys.interval_ms, 1000);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.node.role, Role::Core);
        assert_eq!(c.api.listen, "127.0.0.1:18083");
        assert_eq!(
            c.api.listen_addr(),
            Some("127.0.0.1:18083".parse().unwrap())
        );
        let k = &c.cluster;
        assert!(!k.enabled);
        assert_eq!(k.node_id, 1);
        assert_eq!(k.listen, "127.0.0.1:4370".parse().unwrap());
        assert!(k.seeds.is_empty());
        assert_eq!(k.cookie, "");
        assert_eq!(k.data_dir, Path::new("data"));
        assert_eq!(k.tail_len, 100_000);
        assert_eq!(k.bootstrap_batch, 1000);
        assert_eq!(k.write_batch_max, 1000);
        assert_eq!(k.write_timeout_ms, 5000);
        assert_eq!(k.forward_lanes, 4);
        assert_eq!(k.forward_pending_max, 100_000);
        assert_eq!(k.heartbeat_ms, 250);
        assert_eq!(k.election_timeout_ms, 1000);
        assert_eq!(k.replica_persist_ms, 1000);
        assert_eq!(k.node_down_purge_ms, 30_000);
        assert_eq!(k.session_move_timeout_ms, 3_000);
        assert_eq!(k.client_address, "");
        assert_eq!(Config::default(), c);
    }

    #[test]
    fn the_client_address_is_derived_from_the_first_listener_and_checked() {
        let c = defaults();
        // listener.bind 0.0.0.0:1883, cluster.listen 127.0.0.1:4370.
        assert_eq!(c.cluster.client_address_for(&c.listener), "127.0.0.1:1883");
        let mut l = c.listener.clone();
        l.bind = None;
        assert_eq!(c.cluster.client_address_for(&l), "", "no listener: none");
        l.tls.bind = Some("10.0.0.5:8883".parse().unwrap());
        assert_eq!(c.cluster.client_address_for(&l), "10.0.0.5:8883");
        let mut k = c.cluster.clone();
        k.client_address = "mqtt-2.example:1883".into();
        assert_eq!(k.client_address_for(&l), "mqtt-2.example:1883");
        for bad in ["mqtt-2.example", ":1883", "h:0", "h:x"] {
            let e = load_from(None, env(&[("SHARDMQ_CLUSTER__CLIENT_ADDRESS", bad)]))
                .expect_err(bad)
                .to_string();
            assert!(e.contains("cluster.client_address"), "{bad}: {e}");
        }
    }

    #[test]
    fn hmac_secret_and_redirection_come_from_the_environment_and_the_secret_is_never_shown() {
        let c = load_from(
            None,
            env(&[
                ("SHARDMQ_AUTH__HMAC_SECRET", "hunter2"),
                ("SHARDMQ_LISTENER__MOVED_TO", "b.example:1883"),
                ("SHARDMQ_LISTENER__USE_ANOTHER_SERVER", "c.example:1883"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.auth.hmac_secret, "hunter2");
        assert_eq!(c.listener.moved_to, "b.example:1883");
        assert_eq!(c.listener.use_another_server, "c.example:1883");
        let printed = toml::to_string_pretty(&c).expect("serializes");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(
            printed.contains("hmac_secret = \"<redacted>\""),
            "{printed}"
        );
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn example_file_equals_defaults() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/shardmq.toml");
        assert_eq!(load_from(Some(&example), env(&[])).unwrap(), defaults());
        let direct: Config = toml::from_str(DEFAULTS_TOML).expect("example parses as Config");
        assert_eq!(direct, defaults());
    }

    #[test]
    fn example_file_lists_every_key() {
        // The unknown-key check trusts the defaults to list every key of the schema.
        let from_file: toml::Table = toml::from_str(DEFAULTS_TOML).unwrap();
        let from_schema = toml::Table::try_from(defaults()).unwrap();
        let keys = |t: &toml::Table| -> Vec<String> {
            t.iter()
                .flat_map(|(section, v)| {
                    let table = v.as_table().expect("sections are tables");
                    table.keys().map(move |k| format!("{section}.{k}"))
                })
                .collect()
        };
        assert_eq!(keys(&from_file), keys(&from_schema));
    }

    #[test]
    fn test_config_file_overrides_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/config/override.toml");
        let c = load_from(Some(&path), env(&[])).unwrap();
        assert_eq!(c.node.name, "test@10.0.0.1");
        assert_eq!(c.node.cpus, CpuSpec::List(vec![0]));
        assert_eq!(c.listener.bind, Some("127.0.0.1:18830".parse().unwrap()));
        assert_eq!(c.mqtt.max_inflight, 16);
        assert!(!c.mqtt.retain_available);
        assert_eq!(c.sys.interval_ms, 0);
        // Untouched keys keep their defaults.
        let d = defaults();
        assert_eq!(c.listener.backlog, d.listener.backlog);
        assert_eq!(c.shard, d.shard);
        assert_eq!(c.log, d.log);
    }

    #[test]
    fn file_override_of_cpus_list() {
        let file = TempToml::new("cpus-list", "[node]\ncpus = [1, 0]\n");
        let c = load_from(Some(&file.0), env(&[])).unwrap();
        assert_eq!(c.node.cpus, CpuSpec::List(vec![1, 0]));
    }

    #[test]
    fn env_overrides_file_and_defaults() {
        let file = TempToml::new("env-over-file", "[mqtt]\nmax_inflight = 16\n");
        let c = load_from(
            Some(&file.0),
            env(&[
                ("SHARDMQ_MQTT__MAX_INFLIGHT", "64"),
                ("SHARDMQ_LISTENER__BIND", "127.0.0.1:1884"),
                ("SHARDMQ_NODE__CPUS", "0-1"),
                ("SHARDMQ_MQTT__RETAIN_AVAILABLE", "false"),
                ("SHARDMQ_NODE__NAME", "edge@10.1.2.3"),
                ("SHARDMQ_LOG__LEVEL", "debug,shardmq=trace"),
                ("UNRELATED", "x"),
                ("SHARDMQ", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(c.mqtt.max_inflight, 64);
        assert_eq!(c.listener.bind, Some("127.0.0.1:1884".parse().unwrap()));
        assert_eq!(c.node.cpus, CpuSpec::List(vec![0, 1]));
        assert!(!c.mqtt.retain_available);
        assert_eq!(c.node.name, "edge@10.1.2.3");
        assert_eq!(c.log.level, "debug,shardmq=trace");
    }

    #[test]
    fn env_var_names_follow_the_keys() {
        assert_eq!(
            env_var_name("mqtt.max_inflight"),
            "SHARDMQ_MQTT__MAX_INFLIGHT"
        );
        assert_eq!(env_var_name("node.cpus"), "SHARDMQ_NODE__CPUS");
    }

    #[test]
    fn env_cpus_accepts_all_one_id_and_lists() {
        let cpus = |value: &str| {
            load_from(None, env(&[("SHARDMQ_NODE__CPUS", value)]))
                .map(|c| c.node.cpus)
                .map_err(|e| e.to_string())
        };
        assert_eq!(cpus("all"), Ok(CpuSpec::All));
        assert_eq!(cpus("3"), Ok(CpuSpec::List(vec![3])));
        assert_eq!(cpus(" 1 , 2 "), Ok(CpuSpec::List(vec![1, 2])));
        let err = cpus("3-1").unwrap_err();
        assert!(err.starts_with("node.cpus: "), "{err}");
        assert!(err.contains("reversed"), "{err}");
        let err = cpus("0,0").unwrap_err();
        assert!(err.starts_with("node.cpus: "), "{err}");
        assert!(err.contains("more than once"), "{err}");
    }

    #[test]
    fn control_cpu_comes_from_file_and_environment() {
        let control = |vars: &[(&str, &str)]| {
            load_from(None, env(vars))
                .map(|c| c.node.control_cpu)
                .map_err(|e| e.to_string())
        };
        assert_eq!(control(&[]), Ok(ControlCpu::None));
        assert_eq!(
            control(&[("SHARDMQ_NODE__CONTROL_CPU", "3")]),
            Ok(ControlCpu::Cpu(3))
        );
        assert_eq!(
            control(&[("SHARDMQ_NODE__CONTROL_CPU", "none")]),
            Ok(ControlCpu::None)
        );
        let err = control(&[("SHARDMQ_NODE__CONTROL_CPU", "0-1")]).unwrap_err();
        assert!(err.starts_with("node.control_cpu: "), "{err}");
        let err = control(&[("SHARDMQ_NODE__CONTROL_CPU", "-1")]).unwrap_err();
        assert!(err.starts_with("node.control_cpu: "), "{err}");
        let file = TempToml::new("control-cpu", "[node]\ncontrol_cpu = 1\n");
        let c = load_from(Some(&file.0), env(&[])).unwrap();
        assert_eq!(c.node.control_cpu, ControlCpu::Cpu(1));
        let printed = toml::to_string_pretty(&c).unwrap();
        assert!(printed.contains("control_cpu = 1"), "{printed}");
    }

    #[test]
    fn env_number_that_is_not_a_number_names_the_key() {
        let err = err_text(None, &[("SHARDMQ_MQTT__MAX_INFLIGHT", "lots")]);
        assert!(err.starts_with("mqtt.max_inflight: invalid type"), "{err}");
        assert!(
            err.ends_with("(from environment variable SHARDMQ_MQTT__MAX_INFLIGHT)"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_name_the_key() {
        let err = err_text(None, &[("SHARDMQ_MQTT__MAX_INFLIGHTT", "1")]);
        assert!(err.starts_with("mqtt.max_inflightt: unknown key"), "{err}");
        assert!(err.contains("max_inflight,"), "{err}");

        let err = err_text(None, &[("SHARDMQ_MQTT_MAX_INFLIGHT", "1")]);
        assert!(err.starts_with("mqtt_max_inflight: unknown key"), "{err}");
        assert!(err.contains("SHARDMQ_MQTT_MAX_INFLIGHT"), "{err}");

        let err = file_err_text("unknown-section", "[clusterr]\nrole = \"core\"\n");
        assert!(err.starts_with("clusterr: unknown key"), "{err}");
        assert!(err.contains("api, auth, cluster,"), "{err}");
        assert!(err.contains("unknown-section"), "names the file: {err}");

        let err = file_err_text("unknown-cluster-key", "[cluster]\nrole = \"core\"\n");
        assert!(err.starts_with("cluster.role: unknown key"), "{err}");

        let err = file_err_text("unknown-key", "[listener]\nport = 1883\n");
        assert!(err.starts_with("listener.port: unknown key"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let file = TempToml::new("bad-type", "[mqtt]\nmax_inflight = \"x\"\n");
        let err = err_text(Some(&file.0), &[]);
        assert!(err.starts_with("mqtt.max_inflight: invalid type"), "{err}");
        let from = format!("(from {})", file.0.display());
        assert!(err.ends_with(&from), "names the file as given: {err}");

        let err = err_text(None, &[("SHARDMQ_LISTENER__BIND", "x")]);
        assert!(
            err.starts_with("listener.bind: \"x\" is not a socket address"),
            "{err}"
        );

        let err = file_err_text("bad-section", "mqtt = 3\n");
        assert!(err.starts_with("mqtt: invalid type"), "{err}");

        let err = err_text(None, &[("SHARDMQ_MQTT__SHARED_STRATEGY", "random")]);
        assert!(err.starts_with("mqtt.shared_strategy: "), "{err}");
        assert!(
            err.contains("round_robin, sticky, hash_topic, hash_clientid"),
            "{err}"
        );
        let c = load_from(
            None,
            env(&[("SHARDMQ_MQTT__SHARED_STRATEGY", "hash_clientid")]),
        );
        assert_eq!(
            c.expect("hash_clientid accepted").mqtt.shared_strategy,
            SharedStrategy::HashClientId
        );

        let err = err_text(None, &[("SHARDMQ_LOG__FORMAT", "json")]);
        assert!(err.starts_with("log.format: "), "{err}");
        assert!(err.contains("text"), "{err}");

        let err = file_err_text("bad-cpus", "[node]\ncpus = [0, -1]\n");
        assert!(err.starts_with("node.cpus"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "SHARDMQ_MQTT__MAX_INFLIGHT",
                "0",
                "mqtt.max_inflight: 0 is out of range 1..=65535",
            ),
            ("SHARDMQ_MQTT__MAX_INFLIGHT", "65536", "mqtt.max_inflight: "),
            (
                "SHARDMQ_MQTT__MAX_PACKET_SIZE",
                "1",
                "mqtt.max_packet_size: 1 is out of range",
            ),
            (
                "SHARDMQ_MQTT__MAX_PACKET_SIZE",
                "268435461",
                "mqtt.max_packet_size: ",
            ),
            (
                "SHARDMQ_MQTT__MAX_AWAITING_REL",
                "0",
                "mqtt.max_awaiting_rel: ",
            ),
            (
                "SHARDMQ_MQTT__MAX_CLIENT_ID_LEN",
                "22",
                "mqtt.max_client_id_len: ",
            ),
            (
                "SHARDMQ_MQTT__MAX_QUEUED_MESSAGES",
                "0",
                "mqtt.max_queued_messages: ",
            ),
            (
                "SHARDMQ_MQTT__MAX_TOPIC_LEVELS",
                "0",
                "mqtt.max_topic_levels: ",
            ),
            (
                "SHARDMQ_MQTT__MAX_KEEPALIVE_SECS",
                "0",
                "mqtt.max_keepalive_secs: ",
            ),
            (
                "SHARDMQ_MQTT__CONNECT_TIMEOUT_MS",
                "0",
                "mqtt.connect_timeout_ms: ",
            ),
            (
                "SHARDMQ_MQTT__SEND_TIMEOUT_MS",
                "0",
                "mqtt.send_timeout_ms: ",
            ),
            (
                "SHARDMQ_MQTT__MAX_WRITE_BUFFER_BYTES",
                "0",
                "mqtt.max_write_buffer_bytes: ",
            ),
            (
                "SHARDMQ_MQTT__SESSION_EXPIRY_MAX_SECS",
                "-1",
                "mqtt.session_expiry_max_secs: ",
            ),
            (
                "SHARDMQ_LISTENER__MAX_CONNECTIONS",
                "0",
                "listener.max_connections: ",
            ),
            ("SHARDMQ_LISTENER__BACKLOG", "0", "listener.backlog: "),
            (
                "SHARDMQ_LISTENER__BACKLOG",
                "2147483648",
                "listener.backlog: ",
            ),
            (
                "SHARDMQ_SHARD__CHANNEL_CAPACITY",
                "0",
                "shard.channel_capacity: ",
            ),
            ("SHARDMQ_SHARD__BATCH_MAX", "0", "shard.batch_max: "),
            ("SHARDMQ_NODE__NAME", " ", "node.name: must not be empty"),
            ("SHARDMQ_LOG__LEVEL", "info,[", "log.level: "),
        ];
        for (var, value, expected) in cases {
            let err = err_text(None, &[(var, value)]);
            assert!(err.starts_with(expected), "{var}={value}: {err}");
        }
    }

    #[test]
    fn limits_at_their_bounds_are_accepted() {
        let c = load_from(
            None,
            env(&[
                ("SHARDMQ_MQTT__MAX_PACKET_SIZE", "268435460"),
                ("SHARDMQ_MQTT__MAX_INFLIGHT", "65535"),
                ("SHARDMQ_MQTT__MAX_CLIENT_ID_LEN", "23"),
                ("SHARDMQ_SYS__INTERVAL_MS", "0"),
            ]),
        )
        .unwrap();
        assert_eq!(c.mqtt.max_packet_size, Config::MAX_PACKET_SIZE_LIMIT);
        assert_eq!(c.mqtt.max_inflight, 65535);
    }

    const COOKIE: (&str, &str) = ("SHARDMQ_CLUSTER__COOKIE", "0123456789abcdef-secret");

    #[test]
    fn cluster_from_the_environment_with_seeds_as_one_string() {
        let c = load_from(
            None,
            env(&[
                ("SHARDMQ_CLUSTER__ENABLED", "true"),
                ("SHARDMQ_CLUSTER__NODE_ID", "2"),
                (
                    "SHARDMQ_CLUSTER__SEEDS",
                    "1@127.0.0.1:4370, 2@127.0.0.1:4371",
                ),
                ("SHARDMQ_CLUSTER__LISTEN", "127.0.0.1:4371"),
                ("SHARDMQ_API__LISTEN", "127.0.0.1:18084"),
                COOKIE,
            ]),
        )
        .expect("loads");
        assert!(c.cluster.enabled);
        assert_eq!(c.cluster.node_id, 2);
        assert_eq!(
            c.cluster.seed_list(),
            vec![
                (1, "127.0.0.1:4370".parse().unwrap()),
                (2, "127.0.0.1:4371".parse().unwrap())
            ]
        );
        assert_eq!(
            c.api.listen_addr(),
            Some("127.0.0.1:18084".parse().unwrap())
        );
        let printed = toml::to_string_pretty(&c).expect("serializes");
        assert!(!printed.contains("0123456789abcdef"), "{printed}");
        assert!(printed.contains("cookie = \"<redacted>\""), "{printed}");
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
        // What check-config prints loads again (but for the redacted cookie).
        let file = TempToml::new("printed-cluster", &printed);
        let again = load_from(Some(&file.0), env(&[COOKIE])).expect("printed config loads");
        assert_eq!(again, c);
    }

    #[test]
    fn cluster_seeds_from_a_file_list() {
        let file = TempToml::new(
            "seeds-list",
            "[node]\nrole = \"replicant\"\n[cluster]\nenabled = true\nnode_id = 9\n\
             seeds = [\"1@10.0.0.1:4370\", \"2@[::1]:4370\"]\ncookie = \"0123456789abcdef\"\n",
        );
        let c = load_from(Some(&file.0), env(&[])).expect("loads");
        assert_eq!(c.node.role, Role::Replicant);
        assert_eq!(c.cluster.seed_list().len(), 2);
        assert_eq!(c.cluster.seed_list()[1].1, "[::1]:4370".parse().unwrap());
    }

    #[test]
    fn cluster_rules_name_the_key() {
        let on = ("SHARDMQ_CLUSTER__ENABLED", "true");
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[on], "cluster.cookie: must be at least 16 bytes"),
            (
                &[on, ("SHARDMQ_CLUSTER__COOKIE", "short")],
                "cluster.cookie: ",
            ),
            (
                &[on, COOKIE, ("SHARDMQ_CLUSTER__NODE_ID", "0")],
                "cluster.node_id: must be > 0",
            ),
            (
                &[on, COOKIE, ("SHARDMQ_CLUSTER__SEEDS", "127.0.0.1:4370")],
                "cluster.seeds: \"127.0.0.1:4370\" is not",
            ),
            (
                &[on, COOKIE, ("SHARDMQ_CLUSTER__SEEDS", "x@127.0.0.1:4370")],
                "cluster.seeds: ",
            ),
            (
                &[on, COOKIE, ("SHARDMQ_CLUSTER__SEEDS", "0@127.0.0.1:4370")],
                "cluster.seeds: ",
            ),
            (
                &[on, COOKIE, ("SHARDMQ_CLUSTER__SEEDS", "1@localhost")],
                "cluster.seeds: ",
            ),
            (
                &[
                    on,
                    COOKIE,
                    ("SHARDMQ_CLUSTER__SEEDS", "1@127.0.0.1:1,1@127.0.0.1:2"),
                ],
                "cluster.seeds: node id 1 is listed more than once",
            ),
            (
                &[on, COOKIE, ("SHARDMQ_NODE__ROLE", "replicant")],
                "cluster.seeds: a replicant",
            ),
            (
                &[
                    on,
                    COOKIE,
                    ("SHARDMQ_NODE__ROLE", "replicant"),
                    ("SHARDMQ_CLUSTER__NODE_ID", "2"),
                    ("SHARDMQ_CLUSTER__SEEDS", "1@127.0.0.1:1,2@127.0.0.1:2"),
                ],
                "cluster.seeds: lists this node's own id 2",
            ),
            (&[("SHARDMQ_NODE__ROLE", "voter")], "node.role: "),
            (
                &[("SHARDMQ_CLUSTER__LISTEN", "nowhere")],
                "cluster.listen: ",
            ),
            (
                &[("SHARDMQ_API__LISTEN", "localhost")],
                "api.listen: \"localhost\" is not",
            ),
            (
                &[("SHARDMQ_CLUSTER__FORWARD_LANES", "0")],
                "cluster.forward_lanes: ",
            ),
            (
                &[("SHARDMQ_CLUSTER__FORWARD_LANES", "65")],
                "cluster.forward_lanes: ",
            ),
            (&[("SHARDMQ_CLUSTER__TAIL_LEN", "0")], "cluster.tail_len: "),
            (
                &[("SHARDMQ_CLUSTER__ELECTION_TIMEOUT_MS", "250")],
                "cluster.election_timeout_ms: 250 must be more than cluster.heartbeat_ms",
            ),
            (
                &[("SHARDMQ_CLUSTER__NODE_DOWN_PURGE_MS", "2000")],
                "cluster.node_down_purge_ms: 2000 must be 0 (never) or more than 3000 ms",
            ),
        ];
        for (vars, expected) in cases {
            let err = err_text(None, vars);
            assert!(err.starts_with(expected), "{vars:?}: {err}");
        }
    }

    #[test]
    fn cluster_rules_accept_what_they_should() {
        let on = ("SHARDMQ_CLUSTER__ENABLED", "true");
        // A core with no seeds is a single-core cluster of itself.
        load_from(None, env(&[on, COOKIE])).expect("lone core");
        // A core listed among the seeds is an initial voter.
        load_from(
            None,
            env(&[on, COOKIE, ("SHARDMQ_CLUSTER__SEEDS", "1@127.0.0.1:4370")]),
        )
        .expect("core in seeds");
        load_from(
            None,
            env(&[
                on,
                COOKIE,
                ("SHARDMQ_NODE__ROLE", "replicant"),
                ("SHARDMQ_CLUSTER__NODE_ID", "5"),
                ("SHARDMQ_CLUSTER__SEEDS", "1@127.0.0.1:4370"),
            ]),
        )
        .expect("replicant");
        // Disabled: cookie and seeds are not looked at; the API can be switched off.
        let c = load_from(
            None,
            env(&[
                ("SHARDMQ_CLUSTER__SEEDS", "garbage"),
                ("SHARDMQ_API__LISTEN", ""),
            ]),
        )
        .expect("disabled cluster");
        assert_eq!(c.api.listen_addr(), None);
        assert!(c.cluster.seed_list().is_empty());
    }

    #[test]
    fn missing_file_and_bad_toml_are_reported_with_the_path() {
        let missing = Path::new("/nonexistent/shardmq.toml");
        let err = err_text(Some(missing), &[]);
        assert!(err.contains("/nonexistent/shardmq.toml"), "{err}");

        let err = file_err_text("bad-syntax", "[mqtt\nmax_inflight = 1\n");
        assert!(err.contains("bad-syntax"), "{err}");
    }
}

#[cfg(test)]
mod storage_tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        load_from(None, env)
    }

    #[test]
    fn storage_defaults_to_sync_in_data() {
        let c = Config::default();
        assert_eq!(c.storage.durability, Durability::Sync);
        assert_eq!(c.storage.dir, std::path::Path::new("data"));
        assert_eq!(c.storage.sync_interval_ms, 10);
    }

    #[test]
    fn storage_durability_takes_its_three_names_only() {
        for (text, d) in [
            ("off", Durability::Off),
            ("async", Durability::Async),
            ("sync", Durability::Sync),
        ] {
            let c = with(&[("SHARDMQ_STORAGE__DURABILITY", text)]).expect("valid");
            assert_eq!(c.storage.durability, d);
        }
        let err = with(&[("SHARDMQ_STORAGE__DURABILITY", "fsync")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.durability"), "{err}");
    }

    #[test]
    fn storage_sync_interval_must_be_positive() {
        let err = with(&[("SHARDMQ_STORAGE__SYNC_INTERVAL_MS", "0")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage.sync_interval_ms"), "{err}");
    }
}
