//! The cluster as the binary runs it: settings from the configuration, and the management
//! API's view of a running [`ClusterNode`].

use crate::api::{BoxFuture, ClusterApi, Sample};
use crate::config::{Config, Role as ConfigRole};
use anyhow::Context as _;
use shardmq_cluster::{ClusterNode, ClusterSettings};
use shardmq_rlog::status::{ClusterStatus, RlogStatus};
use shardmq_rlog::Role;
use std::time::Duration;

/// The `[cluster]` section and `node.role` in the cluster's terms.
pub fn settings(config: &Config) -> ClusterSettings {
    let c = &config.cluster;
    ClusterSettings {
        node_id: c.node_id,
        role: match config.node.role {
            ConfigRole::Core => Role::Core,
            ConfigRole::Replicant => Role::Replicant,
        },
        listen: c.listen,
        seeds: c.seed_list(),
        cookie: c.cookie.clone(),
        data_dir: c.data_dir.clone(),
        tail_len: usize::try_from(c.tail_len).unwrap_or(usize::MAX),
        bootstrap_batch: c.bootstrap_batch as usize,
        write_batch_max: c.write_batch_max as usize,
        write_timeout: Duration::from_millis(c.write_timeout_ms),
        forward_lanes: usize::from(c.forward_lanes),
        forward_pending_max: usize::try_from(c.forward_pending_max).unwrap_or(usize::MAX),
        heartbeat_ms: c.heartbeat_ms,
        election_timeout_ms: c.election_timeout_ms,
        replica_persist: Duration::from_millis(c.replica_persist_ms),
        node_down_purge: (c.node_down_purge_ms > 0)
            .then(|| Duration::from_millis(c.node_down_purge_ms)),
        session_move_timeout: Duration::from_millis(c.session_move_timeout_ms),
        api: config.api.listen.clone(),
        clients: shardmq_cluster::ClientFacing {
            address: c.client_address_for(&config.listener),
            ..Default::default()
        },
    }
}

/// The API's handle on the running cluster node.
pub struct ClusterHandle(pub ClusterNode);

impl ClusterApi for ClusterHandle {
    fn cluster_status(&self) -> BoxFuture<'static, anyhow::Result<ClusterStatus>> {
        let s = self.0.cluster_status();
        Box::pin(async move { Ok(s) })
    }

    fn rlog_status(&self) -> BoxFuture<'static, anyhow::Result<RlogStatus>> {
        let s = self.0.rlog_status();
        Box::pin(async move { Ok(s) })
    }

    fn join(&self, seed: String) -> BoxFuture<'static, anyhow::Result<()>> {
        let node = self.0.clone();
        Box::pin(async move {
            let (id, addr) = seed
                .split_once('@')
                .and_then(|(id, addr)| Some((id.trim().parse().ok()?, addr.trim().parse().ok()?)))
                .context("seed must be \"id@host:port\"")?;
            node.join((id, addr)).await.map_err(anyhow::Error::msg)
        })
    }

    fn leave(&self) -> BoxFuture<'static, anyhow::Result<()>> {
        let node = self.0.clone();
        Box::pin(async move { node.leave().await.map_err(anyhow::Error::msg) })
    }

    fn client_nodes(&self) -> Vec<shardmq_cluster::ClientNode> {
        self.0.client_nodes()
    }

    fn samples(&self) -> BoxFuture<'static, Vec<Sample>> {
        let samples = self
            .0
            .samples()
            .into_iter()
            .map(|(name, help, value, counter)| Sample {
                name: name.into(),
                help: help.into(),
                labels: Vec::new(),
                value,
                counter,
            })
            .collect();
        Box::pin(async move { samples })
    }
}
