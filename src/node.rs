//! Starting a node from its configuration.

use crate::config::Config;
use crate::cpus::{online_cpus, pin_current_thread, CpuSpec};
use crate::evacuate::Evacuation;
use anyhow::Context;
use shardmq_broker::auth::{Authenticators, HmacSha256Auth};
use shardmq_broker::redirect::Redirect;
use shardmq_broker::Limits;
use shardmq_shards::{MoveTrigger, Node, RuntimeConfig, MAX_SHARDS};
use std::sync::Arc;
use std::time::Duration;

/// What the management API needs of the running data plane.
fn data_plane(node: &Node, evacuation: &Arc<Evacuation>) -> crate::api::DataPlane {
    crate::api::DataPlane {
        connections: node.connections(),
        figures: node.figures(),
        management: Some(node.management()),
        evacuation: evacuation.clone(),
    }
}

/// Translates the validated configuration into the data plane's terms.
pub(crate) fn runtime_config(
    config: &Config,
    security: &Security,
) -> anyhow::Result<RuntimeConfig> {
    let mut cpus = config
        .node
        .cpus
        .resolve(&online_cpus())
        .context("node.cpus")?;
    if config.node.cpus == CpuSpec::All && cpus.len() > MAX_SHARDS {
        tracing::warn!(
            usable = cpus.len(),
            "node.cpus = \"all\": a node runs at most {MAX_SHARDS} shards; using the first {MAX_SHARDS} CPUs"
        );
        cpus.truncate(MAX_SHARDS);
    }
    anyhow::ensure!(
        cpus.len() <= MAX_SHARDS,
        "node.cpus: at most {MAX_SHARDS} shards per node, {} given",
        cpus.len()
    );
    let m = &config.mqtt;
    let limits = limits(m);
    let core = shardmq_shards::CoreSettings {
        node_name: config.node.name.clone(),
        shards: cpus.len(),
        auth: security.auth.is_some(),
        acl_deny_action: match config.auth.acl_deny_action {
            crate::config::AclDenyAction::Ignore => shardmq_broker::authz::DenyAction::Ignore,
            crate::config::AclDenyAction::Disconnect => {
                shardmq_broker::authz::DenyAction::Disconnect
            }
        },
        max_connections: usize::try_from(config.listener.max_connections).unwrap_or(usize::MAX),
        max_connection_rate: config.listener.max_connection_rate,
        connect_timeout: Duration::from_millis(m.connect_timeout_ms),
        limits,
        shared_strategy: m.shared_strategy,
        channel_capacity: config.shard.channel_capacity as usize,
        batch_max: config.shard.batch_max as usize,
        sys_interval: (config.sys.interval_ms > 0)
            .then(|| Duration::from_millis(config.sys.interval_ms)),
        authenticators: authenticators(config),
        redirect: Redirect::new(
            &config.listener.moved_to,
            &config.listener.use_another_server,
        ),
    };
    let rt = RuntimeConfig {
        core,
        cpus,
        listeners: listeners(config, security)?,
        auth: security.auth.clone(),
        backlog: config.listener.backlog,
        send_timeout: Duration::from_millis(m.send_timeout_ms),
        spin_before_park: (config.shard.spin_before_park_us > 0)
            .then(|| Duration::from_micros(u64::from(config.shard.spin_before_park_us))),
        driver: match config.shard.driver {
            crate::config::ShardDriver::Uring => shardmq_shards::ConnectionDriver::Uring,
            crate::config::ShardDriver::Tasks => shardmq_shards::ConnectionDriver::Tasks,
        },
        park_guard: (config.shard.park_guard_ms > 0)
            .then(|| Duration::from_millis(u64::from(config.shard.park_guard_ms))),
        move_trigger: MoveTrigger::default(),
        storage: storage_spec(&config.storage),
    };
    rt.validate().map_err(anyhow::Error::msg)?;
    Ok(rt)
}

/// `[mqtt]`'s per-client limits in the data plane's terms.
pub(crate) fn limits(m: &crate::config::MqttConfig) -> Limits {
    Limits {
        max_packet_size: m.max_packet_size,
        max_client_id_len: usize::from(m.max_client_id_len),
        max_inflight: m.max_inflight,
        max_queued_messages: m.max_queued_messages as usize,
        max_awaiting_rel: m.max_awaiting_rel,
        max_topic_levels: usize::from(m.max_topic_levels),
        max_subscriptions: m.max_subscriptions as usize,
        session_expiry_max_secs: m.session_expiry_max_secs,
        max_keepalive_secs: m.max_keepalive_secs,
        retain_available: m.retain_available,
        max_write_buffer_bytes: usize::try_from(m.max_write_buffer_bytes).unwrap_or(usize::MAX),
        max_topic_alias: m.max_topic_alias,
    }
}

/// `[storage]` in the data plane's terms; `None` for `durability = "off"`.
fn storage_spec(s: &crate::config::StorageConfig) -> Option<shardmq_shards::StorageSpec> {
    use crate::config::Durability;
    let mode = match s.durability {
        Durability::Off => return None,
        Durability::Async => shardmq_shards::DurabilityMode::Async,
        Durability::Sync => shardmq_shards::DurabilityMode::Sync,
    };
    Some(shardmq_shards::StorageSpec {
        dir: s.dir.clone(),
        mode,
        sync_interval: Duration::from_millis(s.sync_interval_ms),
        segment_bytes: s.segment_bytes,
        compact_min_bytes: s.compact_min_bytes,
    })
}

/// What SIGHUP (and `POST /api/v1/reload`) reloads: the TLS certificates of the TLS and WSS
/// listeners, and the auth service's files (password file, ACL, JWT key).
#[derive(Clone, Default)]
pub(crate) struct Security {
    /// `[listener.tls]`'s configuration with ALPN `mqtt`.
    tls: Option<Arc<shardmq_transport::TlsConfigCell>>,
    /// The same certificates with ALPN `http/1.1`, for `[listener.wss]`.
    wss: Option<Arc<shardmq_transport::TlsConfigCell>>,
    settings: Option<shardmq_transport::TlsSettings>,
    /// `None` when `[auth]` asks for nothing (anonymous allowed, no file, no hook).
    pub(crate) auth: Option<Arc<shardmq_auth::AuthService>>,
}

impl Security {
    /// Loads the certificates and the auth files the configuration names.
    pub(crate) fn load(config: &Config) -> anyhow::Result<Security> {
        let l = &config.listener;
        let mut security = Security::default();
        if l.tls.bind.is_some() || l.wss.bind.is_some() {
            let settings = tls_settings(config);
            if l.tls.bind.is_some() {
                let cell = shardmq_transport::TlsConfigCell::new(&settings, &[b"mqtt"])
                    .context("[listener.tls]")?;
                security.tls = Some(Arc::new(cell));
            }
            if l.wss.bind.is_some() {
                let cell = shardmq_transport::TlsConfigCell::new(&settings, &[b"http/1.1"])
                    .context("[listener.wss] (the certificates of [listener.tls])")?;
                security.wss = Some(Arc::new(cell));
            }
            security.settings = Some(settings);
        }
        security.auth = auth_service(config)?;
        Ok(security)
    }

    /// Re-reads certificates and auth files; what fails to load keeps its previous state.
    /// Connections already open keep theirs.
    pub(crate) fn reload(&self) -> anyhow::Result<()> {
        let mut failed = Vec::new();
        if let Some(settings) = &self.settings {
            for cell in [&self.tls, &self.wss].into_iter().flatten() {
                if let Err(e) = cell.reload(settings) {
                    failed.push(format!("TLS: {e}"));
                }
            }
        }
        if let Some(auth) = &self.auth {
            if let Err(e) = auth.reload() {
                failed.push(format!("auth: {e}"));
            }
        }
        if failed.is_empty() {
            tracing::info!("reloaded certificates and auth files");
            Ok(())
        } else {
            anyhow::bail!("reload failed, previous state kept: {}", failed.join("; "))
        }
    }
}

fn tls_settings(config: &Config) -> shardmq_transport::TlsSettings {
    use crate::config::VerifyPeer;
    let t = &config.listener.tls;
    shardmq_transport::TlsSettings {
        cert_file: t.cert_file.trim().into(),
        key_file: t.key_file.trim().into(),
        ca_file: (!t.ca_file.trim().is_empty()).then(|| t.ca_file.trim().into()),
        verify_peer: match t.verify_peer {
            VerifyPeer::None => shardmq_transport::VerifyPeer::None,
            VerifyPeer::Optional => shardmq_transport::VerifyPeer::Optional,
            VerifyPeer::Required => shardmq_transport::VerifyPeer::Required,
        },
        peer_cert_as_username: peer_cert_name(t.peer_cert_as_username),
    }
}

fn peer_cert_name(name: crate::config::PeerCertName) -> shardmq_transport::PeerCertName {
    use crate::config::PeerCertName;
    match name {
        PeerCertName::None => shardmq_transport::PeerCertName::None,
        PeerCertName::Cn => shardmq_transport::PeerCertName::Cn,
        PeerCertName::San => shardmq_transport::PeerCertName::San,
    }
}

/// The client listeners the configuration turns on.
fn listeners(
    config: &Config,
    security: &Security,
) -> anyhow::Result<Vec<shardmq_shards::ListenerSpec>> {
    use shardmq_shards::{ListenerKind, ListenerSpec};
    let l = &config.listener;
    let cert_name = peer_cert_name(l.tls.peer_cert_as_username);
    let mut specs = Vec::new();
    if let Some(bind) = l.bind {
        specs.push(ListenerSpec {
            kind: ListenerKind::Tcp,
            bind,
            proxy_protocol: l.proxy_protocol,
            tls: None,
            peer_cert_name: shardmq_transport::PeerCertName::None,
            ws_path: None,
        });
    }
    if let Some(bind) = l.tls.bind {
        specs.push(ListenerSpec {
            kind: ListenerKind::Tls,
            bind,
            proxy_protocol: l.tls.proxy_protocol,
            tls: security.tls.clone(),
            peer_cert_name: cert_name,
            ws_path: None,
        });
    }
    if let Some(bind) = l.ws.bind {
        specs.push(ListenerSpec {
            kind: ListenerKind::Ws,
            bind,
            proxy_protocol: l.ws.proxy_protocol,
            tls: None,
            peer_cert_name: shardmq_transport::PeerCertName::None,
            ws_path: Some(l.ws.path.clone()),
        });
    }
    if let Some(bind) = l.wss.bind {
        specs.push(ListenerSpec {
            kind: ListenerKind::Wss,
            bind,
            proxy_protocol: l.wss.proxy_protocol,
            tls: security.wss.clone(),
            peer_cert_name: cert_name,
            ws_path: Some(l.wss.path.clone()),
        });
    }
    anyhow::ensure!(!specs.is_empty(), "every listener is off");
    Ok(specs)
}

/// The auth service for `[auth]`, or `None` when it would allow everyone everything.
fn auth_service(config: &Config) -> anyhow::Result<Option<Arc<shardmq_auth::AuthService>>> {
    let a = &config.auth;
    let nothing = a.allow_anonymous
        && a.password_file.trim().is_empty()
        && a.acl_file.trim().is_empty()
        && a.jwt_secret.is_empty()
        && a.jwt_public_key_file.trim().is_empty()
        && a.http_url.trim().is_empty();
    if nothing {
        return Ok(None);
    }
    let path = |p: &str| (!p.trim().is_empty()).then(|| std::path::PathBuf::from(p.trim()));
    let settings = shardmq_auth::AuthSettings {
        allow_anonymous: a.allow_anonymous,
        password_file: path(&a.password_file),
        acl_file: path(&a.acl_file),
        jwt_secret: (!a.jwt_secret.is_empty()).then(|| a.jwt_secret.clone()),
        jwt_public_key_file: path(&a.jwt_public_key_file),
        http_url: (!a.http_url.trim().is_empty()).then(|| a.http_url.trim().to_string()),
        http_timeout_ms: a.http_timeout_ms,
        http_cache_max: a.http_cache_max as usize,
        http_cache_ttl_ms: a.http_cache_ttl_ms,
        workers: usize::from(a.workers),
        queue_max: a.queue_max as usize,
        acl_deny_action: match a.acl_deny_action {
            crate::config::AclDenyAction::Ignore => shardmq_broker::authz::DenyAction::Ignore,
            crate::config::AclDenyAction::Disconnect => {
                shardmq_broker::authz::DenyAction::Disconnect
            }
        },
        ..Default::default()
    };
    let service = shardmq_auth::AuthService::new(&settings).context("[auth]")?;
    Ok(Some(service))
}

/// SIGHUP reloads the configuration (`crate::reload`; connections stay up).
fn watch_reload_signal(reloader: Arc<crate::reload::Reloader>) -> anyhow::Result<()> {
    use signal_hook::{consts::SIGHUP, iterator::Signals};
    let mut signals = Signals::new([SIGHUP]).context("installing the SIGHUP handler")?;
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            for _ in signals.forever() {
                tracing::info!("SIGHUP: reloading the configuration");
                if let Err(e) = reloader.reload() {
                    tracing::error!("reload failed, nothing changed: {e:#}");
                }
            }
        })
        .context("starting the reload thread")?;
    Ok(())
}

/// Makes the reloader of the running node and hands it to SIGHUP and the API.
fn arm_reload(
    config: &Config,
    config_path: Option<std::path::PathBuf>,
    security: &Security,
    node: &Node,
) -> anyhow::Result<()> {
    let reloader = Arc::new(crate::reload::Reloader::new(
        config_path,
        config.clone(),
        security.clone(),
        node.management(),
    ));
    watch_reload_signal(reloader.clone())?;
    crate::api::set_reload_hook(Arc::new(move || reloader.reload()));
    Ok(())
}

/// The enhanced authentication methods `[auth]` offers.
fn authenticators(config: &Config) -> Authenticators {
    let mut methods = Authenticators::new();
    if !config.auth.hmac_secret.is_empty() {
        methods.register(Arc::new(HmacSha256Auth::new([&config.auth.hmac_secret])));
    }
    methods
}

/// SIGUSR2 moves the node's clients to `listener.moved_to`: a small thread waits for the signal
/// and pulls the data plane's move trigger, which the shards read in their housekeeping (no lock
/// on the message path). Without `moved_to` the signal is logged and ignored.
fn watch_move_signal(trigger: MoveTrigger, armed: bool) -> anyhow::Result<()> {
    use signal_hook::{consts::SIGUSR2, iterator::Signals};
    let mut signals = Signals::new([SIGUSR2]).context("installing the SIGUSR2 handler")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                if armed {
                    tracing::warn!("SIGUSR2: moving every client to listener.moved_to");
                    trigger.pull();
                } else {
                    tracing::warn!("SIGUSR2 ignored: listener.moved_to is not set");
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// The control plane's CPU (`node.control_cpu`), checked: online and in the affinity mask, or
/// the node does not start. Warns if it is also a shard CPU.
fn control_cpu(config: &Config, shard_cpus: &[usize]) -> anyhow::Result<Option<usize>> {
    let cpu = config
        .node
        .control_cpu
        .resolve(&online_cpus())
        .map_err(anyhow::Error::msg)?;
    if let Some(cpu) = cpu.filter(|cpu| shard_cpus.contains(cpu)) {
        tracing::warn!(
            "node.control_cpu = {cpu} is also in node.cpus: the control plane will compete with that shard for the CPU; pick a CPU outside node.cpus (see docs/tuning.md)"
        );
    }
    Ok(cpu)
}

/// Raises the soft open-file limit to the hard one, and warns when that cannot hold
/// `listener.max_connections`.
fn warn_if_nofile_too_low(max_connections: u64) {
    let before = crate::tune::nofile_limit();
    let nofile = crate::tune::raise_nofile_to_hard();
    if nofile > before {
        tracing::info!(
            "open-file limit (RLIMIT_NOFILE) raised from {before} to the hard limit {nofile}"
        );
    }
    if let Some(needed) = crate::tune::nofile_shortfall(max_connections, nofile) {
        tracing::warn!(
            nofile,
            max_connections,
            "this host cannot hold listener.max_connections = {max_connections}: the open-file limit (RLIMIT_NOFILE, raised to its hard limit) is {nofile}; raise the hard limit to at least {needed} (LimitNOFILE= in the systemd unit, or /etc/security/limits.d; see `shardmq tune check`), or lower listener.max_connections"
        );
    }
}

/// Runs the broker node described by `config` until the process is stopped.
pub fn run(config: Config, config_path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let security = Security::load(&config)?;
    let rt = runtime_config(&config, &security)?;
    let control = control_cpu(&config, &rt.cpus)?;
    warn_if_nofile_too_low(config.listener.max_connections);
    watch_move_signal(
        rt.move_trigger.clone(),
        !config.listener.moved_to.is_empty(),
    )?;
    let binds: Vec<String> = rt
        .listeners
        .iter()
        .map(|l| format!("{:?} {}", l.kind, l.bind))
        .collect();
    tracing::info!(node = %rt.core.node_name, cpus = ?rt.cpus, listeners = ?binds, "starting shardmq {}", env!("CARGO_PKG_VERSION"));
    // Control plane (src/api.rs): the management API and, in a cluster, the cluster node on
    // the `shardmq-control` thread; an api.listen that cannot be bound stops the node here.
    let evacuation = Arc::new(Evacuation::default());
    let node = if config.cluster.enabled {
        let (data, control) =
            shardmq_shards::link(rt.cpus.len()).context("linking the data and control planes")?;
        let node = Node::start_linked(rt, Some(data)).context("starting the data plane")?;
        if let Some(storage) = node.storage() {
            crate::storage::set(storage);
        }
        arm_reload(&config, config_path, &security, &node)?;
        let mut settings = crate::cluster::settings(&config);
        settings.clients.connections = node.connections();
        settings.clients.evacuating = evacuation.flag();
        tracing::info!(node_id = settings.node_id, role = ?settings.role, listen = %settings.listen, seeds = ?settings.seeds, "joining the cluster");
        let plane = data_plane(&node, &evacuation);
        crate::api::start_with(&config, plane, move || async move {
            let cluster = shardmq_cluster::ClusterNode::start(settings, control)
                .await
                .context("starting the cluster node (cluster.*)")?;
            let handle: Arc<dyn crate::api::ClusterApi> =
                Arc::new(crate::cluster::ClusterHandle(cluster));
            Ok(Some(handle))
        })?;
        node
    } else {
        let node = Node::start(rt).context("starting the data plane")?;
        if let Some(storage) = node.storage() {
            crate::storage::set(storage);
        }
        arm_reload(&config, config_path, &security, &node)?;
        crate::api::start(&config, data_plane(&node, &evacuation), None)?;
        node
    };
    tracing::info!("shardmq ready");
    // The control plane will run on its own thread on node.control_cpu; until it exists, the
    // main thread (which only waits for the shards) is what runs there.
    if let Some(cpu) = control {
        pin_current_thread(cpu)
            .with_context(|| format!("node.control_cpu: pinning to CPU {cpu}"))?;
        tracing::info!(cpu, "control plane pinned");
    }
    node.join();
    Ok(())
}
