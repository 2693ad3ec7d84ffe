//! Starting a node from its configuration.

use crate::config::Config;
use crate::cpus::{online_cpus, pin_current_thread, CpuSpec};
use anyhow::Context;
use shardmq_broker::auth::{Authenticators, HmacSha256Auth};
use shardmq_broker::redirect::Redirect;
use shardmq_broker::Limits;
use shardmq_shards::{MoveTrigger, Node, RuntimeConfig, MAX_SHARDS};
use std::sync::Arc;
use std::time::Duration;

/// Translates the validated configuration into the data plane's terms.
pub(crate) fn runtime_config(config: &Config) -> anyhow::Result<RuntimeConfig> {
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
    let limits = Limits {
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
    };
    limits.validate().map_err(anyhow::Error::msg)?;
    Ok(RuntimeConfig {
        node_name: config.node.name.clone(),
        cpus,
        bind: config.listener.bind,
        backlog: config.listener.backlog,
        max_connections: usize::try_from(config.listener.max_connections).unwrap_or(usize::MAX),
        max_connection_rate: config.listener.max_connection_rate,
        connect_timeout: Duration::from_millis(m.connect_timeout_ms),
        send_timeout: Duration::from_millis(m.send_timeout_ms),
        limits,
        shared_strategy: m.shared_strategy,
        channel_capacity: config.shard.channel_capacity as usize,
        batch_max: config.shard.batch_max as usize,
        spin_before_park: (config.shard.spin_before_park_us > 0)
            .then(|| Duration::from_micros(u64::from(config.shard.spin_before_park_us))),
        park_guard: (config.shard.park_guard_ms > 0)
            .then(|| Duration::from_millis(u64::from(config.shard.park_guard_ms))),
        sys_interval: (config.sys.interval_ms > 0)
            .then(|| Duration::from_millis(config.sys.interval_ms)),
        authenticators: authenticators(config),
        redirect: Redirect::new(
            &config.listener.moved_to,
            &config.listener.use_another_server,
        ),
        move_trigger: MoveTrigger::default(),
    })
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
pub fn run(config: Config) -> anyhow::Result<()> {
    let rt = runtime_config(&config)?;
    let control = control_cpu(&config, &rt.cpus)?;
    warn_if_nofile_too_low(config.listener.max_connections);
    watch_move_signal(
        rt.move_trigger.clone(),
        !config.listener.moved_to.is_empty(),
    )?;
    tracing::info!(node = %rt.node_name, cpus = ?rt.cpus, bind = %rt.bind, "starting shardmq {}", env!("CARGO_PKG_VERSION"));
    // Control plane (src/api.rs): the management API and, in a cluster, the cluster node on
    // the `shardmq-control` thread; an api.listen that cannot be bound stops the node here.
    let node = if config.cluster.enabled {
        let (data, control) =
            shardmq_shards::link(rt.cpus.len()).context("linking the data and control planes")?;
        let node = Node::start_linked(rt, Some(data)).context("starting the data plane")?;
        let settings = crate::cluster::settings(&config);
        tracing::info!(node_id = settings.node_id, role = ?settings.role, listen = %settings.listen, seeds = ?settings.seeds, "joining the cluster");
        crate::api::start_with(
            &config,
            node.connections(),
            node.figures(),
            move || async move {
                let cluster = shardmq_cluster::ClusterNode::start(settings, control)
                    .await
                    .context("starting the cluster node (cluster.*)")?;
                let handle: Arc<dyn crate::api::ClusterApi> =
                    Arc::new(crate::cluster::ClusterHandle(cluster));
                Ok(Some(handle))
            },
        )?;
        node
    } else {
        let node = Node::start(rt).context("starting the data plane")?;
        crate::api::start(&config, node.connections(), node.figures(), None)?;
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
