//! Configuration reload (SIGHUP, `POST /api/v1/config/reload`): the file is read again and
//! checked like at start; what can change in a running node is put in force without dropping a
//! connection, and every other changed key is reported as needing a restart, never ignored.
//!
//! In force at once:
//!
//! | key | how |
//! |---|---|
//! | `mqtt.*` limits but `max_packet_size` | each shard's limits, from its next packet on (a connection keeps what it negotiated at CONNECT: Receive Maximum, Maximum Packet Size, Topic Alias Maximum, keep-alive) |
//! | `mqtt.connect_timeout_ms` | for connections accepted from then on |
//! | `listener.max_connections`, `listener.max_connection_rate` | each shard's admission |
//! | `sys.interval_ms` | each shard's housekeeping |
//! | `log.level` | the log filter (unless `RUST_LOG` is set: it wins, and the answer says so) |
//! | certificate, key, password, ACL and JWT key files | re-read at the same paths (as before this module) |
//!
//! Everything else (listeners, `mqtt.max_packet_size`, `mqtt.send_timeout_ms`,
//! `mqtt.shared_strategy`, `[shard]`, `[node]`, `[cluster]`, `[storage]`, `[api]`, the paths
//! of the files above) is listed in `restart_required` until the node restarts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{json, Value};
use shardmq_shards::mgmt::{LiveSettings, Reply, Request};
use shardmq_shards::Management;

use crate::config::Config;

/// Sets the log filter to a `tracing_subscriber::EnvFilter` directive.
pub type LogFilterHook = Box<dyn Fn(&str) -> anyhow::Result<()> + Send + Sync>;

static LOG_FILTER: std::sync::OnceLock<LogFilterHook> = std::sync::OnceLock::new();

/// Sets how `log.level` is changed at run time (once, by `main` when it installs tracing).
pub fn set_log_filter_hook(hook: LogFilterHook) {
    let _ = LOG_FILTER.set(hook);
}

/// The keys (dotted, e.g. `mqtt.max_inflight`) a reload puts in force at once.
pub fn is_live(key: &str) -> bool {
    const LIVE: &[&str] = &[
        "listener.max_connections",
        "listener.max_connection_rate",
        "sys.interval_ms",
        "log.level",
    ];
    const NOT_LIVE_MQTT: &[&str] = &[
        "mqtt.max_packet_size",
        "mqtt.send_timeout_ms",
        "mqtt.shared_strategy",
    ];
    LIVE.contains(&key) || (key.starts_with("mqtt.") && !NOT_LIVE_MQTT.contains(&key))
}

/// Every leaf key whose value differs between `a` and `b`, dotted, sorted.
pub fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    fn leaves(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.clone());
            }
        }
    }
    let (mut la, mut lb) = (BTreeMap::new(), BTreeMap::new());
    if let (Ok(va), Ok(vb)) = (toml::Value::try_from(a), toml::Value::try_from(b)) {
        leaves("", &va, &mut la);
        leaves("", &vb, &mut lb);
    }
    let mut keys: Vec<String> = la
        .keys()
        .chain(lb.keys())
        .filter(|k| la.get(*k) != lb.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Reloads the node's configuration.
pub struct Reloader {
    /// `--config`, or `None` for the embedded defaults (plus `SHARDMQ_*`).
    path: Option<PathBuf>,
    /// The configuration the node started with: what the non-live keys still are.
    started: Config,
    /// The live keys in force now.
    live: Mutex<Config>,
    security: crate::node::Security,
    management: Arc<Management>,
}

impl Reloader {
    pub(crate) fn new(
        path: Option<PathBuf>,
        started: Config,
        security: crate::node::Security,
        management: Arc<Management>,
    ) -> Reloader {
        Reloader {
            path,
            live: Mutex::new(started.clone()),
            started,
            security,
            management,
        }
    }

    /// Reads the configuration again and puts what it can in force. An invalid file changes
    /// nothing (the error says why). Answers `{"reloaded", "applied", "restart_required",
    /// "notes"}`.
    pub fn reload(&self) -> anyhow::Result<Value> {
        let new = crate::config::load(self.path.as_deref()).context("invalid configuration")?;
        let mut notes: Vec<String> = Vec::new();
        let restart_required: Vec<String> = changed_keys(&self.started, &new)
            .into_iter()
            .filter(|k| !is_live(k))
            .collect();
        let mut live = self.live.lock().expect("reload state");
        let applied_keys: Vec<String> = changed_keys(&live, &new)
            .into_iter()
            .filter(|k| is_live(k))
            .collect();
        // Certificates and auth files: re-read at the paths the node started with.
        self.security.reload()?;
        let mut limits = crate::node::limits(&new.mqtt);
        // The decoders' bound stays what the shards started with.
        limits.max_packet_size = self.started.mqtt.max_packet_size;
        limits.validate().map_err(anyhow::Error::msg)?;
        let settings = LiveSettings {
            limits,
            max_connections: usize::try_from(new.listener.max_connections).unwrap_or(usize::MAX),
            max_connection_rate: new.listener.max_connection_rate,
            connect_timeout: Duration::from_millis(new.mqtt.connect_timeout_ms),
            sys_interval: (new.sys.interval_ms > 0)
                .then(|| Duration::from_millis(new.sys.interval_ms)),
        };
        let management = self.management.clone();
        let answers = block_on_control(async move {
            management
                .ask_all(Request::Configure(Box::new(settings)))
                .await
        })?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(
            answers.iter().all(|a| matches!(a, Reply::Done(true))),
            "a shard refused the settings: {answers:?}"
        );
        if applied_keys.iter().any(|k| k == "log.level") {
            match std::env::var("RUST_LOG") {
                Ok(d) if !d.trim().is_empty() => notes.push(format!(
                    "log.level changed, but RUST_LOG={d:?} is set and wins"
                )),
                _ => match LOG_FILTER.get() {
                    Some(set) => set(&new.log.level).context("log.level")?,
                    None => {
                        notes.push("log.level: this process has no reloadable log filter".into())
                    }
                },
            }
        }
        *live = new;
        tracing::info!(applied = ?applied_keys, restart_required = ?restart_required, "configuration reloaded");
        if !restart_required.is_empty() {
            tracing::warn!(keys = ?restart_required, "changed settings that take effect only after a restart");
        }
        Ok(json!({
            "reloaded": true,
            "applied": applied_keys,
            "files_reread": true,
            "restart_required": restart_required,
            "notes": notes,
        }))
    }
}

/// Runs `fut` to completion on a small runtime of its own (reloads come from the SIGHUP
/// thread or a blocking task of the API, never from the data plane).
fn block_on_control<T>(fut: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a runtime for the reload")?;
    Ok(rt.block_on(fut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_are_dotted_leaves() {
        let a = Config::default();
        let mut b = a.clone();
        b.mqtt.max_inflight += 1;
        b.listener.max_connections = 7;
        b.node.name = "other".into();
        assert_eq!(
            changed_keys(&a, &b),
            ["listener.max_connections", "mqtt.max_inflight", "node.name"]
        );
        assert!(changed_keys(&a, &a).is_empty());
    }

    #[test]
    fn live_keys_are_the_documented_ones() {
        for k in [
            "mqtt.max_inflight",
            "mqtt.max_queued_messages",
            "mqtt.connect_timeout_ms",
            "listener.max_connections",
            "sys.interval_ms",
            "log.level",
        ] {
            assert!(is_live(k), "{k}");
        }
        for k in [
            "mqtt.max_packet_size",
            "mqtt.send_timeout_ms",
            "listener.bind",
            "node.cpus",
            "storage.dir",
            "auth.password_file",
            "api.listen",
        ] {
            assert!(!is_live(k), "{k}");
        }
    }
}
