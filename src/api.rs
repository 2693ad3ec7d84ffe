//! The HTTP management API and the control-plane thread it runs on.
//!
//! Routes (see `docs/operations.md`):
//!
//! | method | path                     | answer                                              |
//! |--------|--------------------------|-----------------------------------------------------|
//! | GET    | `/health`                | 200 `{"status":"ok",...}`, 503 with the reason      |
//! | GET    | `/metrics`               | Prometheus / OpenMetrics text                       |
//! | GET    | `/api/v1/cluster`        | members, leader, table sizes                        |
//! | POST   | `/api/v1/cluster/join`   | `{"seed":"2@127.0.0.1:4371"}`                       |
//! | POST   | `/api/v1/cluster/leave`  | this node leaves the cluster                        |
//! | GET    | `/api/v1/rlog`           | per RLOG shard state                                |
//!
//! Every route but `/health` needs an API key ([`auth`]; keys in `api.keys_file`, see
//! [`keys`]), except from loopback peers while `api.allow_unauthenticated_loopback`; with
//! `api.tls_cert_file` and `api.tls_key_file` the API is served over HTTPS ([`tls`]).
//!
//! Errors are JSON, `{"error": "..."}`, with a fitting status code. Without a cluster
//! (`cluster.enabled = false`) the node reports itself as a standalone core that leads itself,
//! with no RLOG shards, and refuses join/leave with 409 Conflict.
//!
//! The API is served by axum on a current-thread tokio runtime owned by the `shardmq-control`
//! thread ([`control_thread`]); the cluster runs on the same runtime ([`start_with`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::json;
use shardmq_shards::{FigureBoard, ShardFigures};

use crate::config::{ApiConfig, Config};
use auth::{Authenticator, KeyRing};

pub mod alarms;
pub mod auth;
pub mod dashboard;
pub mod evacuate;
pub mod keys;
pub mod manage;
pub mod tls;
pub use shardmq_rlog::status;
use shardmq_rlog::status::{ClusterStatus, MemberStatus, RlogStatus, ShardStatus};
use shardmq_rlog::Role as RlogRole;

/// A boxed, sendable future, as [`ClusterApi`] returns them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Name of the control-plane thread.
pub const CONTROL_THREAD_NAME: &str = "shardmq-control";

/// How long a status or metrics request waits for the cluster layer.
pub const STATUS_TIMEOUT_MS: u64 = 5_000;

/// How long a join or leave request waits for the cluster layer.
pub const MEMBERSHIP_TIMEOUT_MS: u64 = 30_000;

/// `what` from the cluster layer within `limit_ms`: its error is a 500, running late a 504.
async fn within<T>(
    limit_ms: u64,
    what: &str,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(std::time::Duration::from_millis(limit_ms), fut).await {
        Ok(answer) => answer.map_err(ApiError::internal),
        Err(_) => Err(ApiError(
            StatusCode::GATEWAY_TIMEOUT,
            format!("the cluster layer did not answer {what} within {limit_ms} ms"),
        )),
    }
}

/// What the API asks of the cluster layer. Implemented by the cluster when `cluster.enabled`;
/// every call runs on the control-plane runtime.
pub trait ClusterApi: Send + Sync + 'static {
    /// Members, leader and table sizes as this node sees them.
    fn cluster_status(&self) -> BoxFuture<'static, anyhow::Result<ClusterStatus>>;
    /// This node's RLOG shards.
    fn rlog_status(&self) -> BoxFuture<'static, anyhow::Result<RlogStatus>>;
    /// Joins the cluster that `seed` (`"id@host:port"`, a core) belongs to.
    fn join(&self, seed: String) -> BoxFuture<'static, anyhow::Result<()>>;
    /// Leaves the cluster.
    fn leave(&self) -> BoxFuture<'static, anyhow::Result<()>>;
    /// Extra metrics for `/metrics` (forwarding counters and the like).
    fn samples(&self) -> BoxFuture<'static, Vec<Sample>>;
    /// This node and the running members, with their client addresses and connection
    /// counts (from the last pings), by id; for evacuation and rebalance.
    fn client_nodes(&self) -> Vec<shardmq_cluster::ClientNode> {
        Vec::new()
    }
}

/// One extra metric value for `/metrics`. Samples with the same name form one metric family
/// (same `help` and `counter` expected; the first one wins).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name, e.g. `shardmq_forward_dropped`; a counter's `_total` suffix is added by the
    /// encoder (a name that already ends in `_total` keeps one).
    pub name: String,
    /// One-line description.
    pub help: String,
    /// Label pairs, e.g. `[("peer", "2")]`.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
    /// A counter (monotonic) rather than a gauge.
    pub counter: bool,
}

/// What the handlers share.
pub struct ApiState {
    /// `node.name`.
    pub node_name: String,
    /// `cluster.node_id`: the node's id in the answers of a standalone node.
    pub node_id: u64,
    /// The data plane's count of open client connections.
    pub connections: Arc<AtomicUsize>,
    /// The data plane's per-shard figures.
    pub figures: Arc<FigureBoard>,
    /// The cluster, when `cluster.enabled`.
    pub cluster: Option<Arc<dyn ClusterApi>>,
    /// When the node started, for `shardmq_uptime_seconds`.
    pub started: Instant,
    /// Who may call the API.
    pub auth: Arc<Authenticator>,
    /// The shards, for the management routes ([`manage`]); `None` in tests without a data
    /// plane.
    pub management: Option<Arc<shardmq_shards::Management>>,
    /// The client listeners, for the overview: `{"kind", "addr"[, "path"]}`.
    pub listeners: Vec<serde_json::Value>,
    /// `api.listen`, as peers reach this node.
    pub api_addr: String,
    /// `listener.max_connections`.
    pub max_connections: u64,
    /// What the alarms remember between calls.
    pub alarms: std::sync::Mutex<alarms::AlarmState>,
    /// How this node asks its peers' APIs: over HTTPS trusting the certificates of its own
    /// `api.tls_cert_file` when its API speaks HTTPS (`None`: plain HTTP).
    pub peer_tls: Option<ureq::tls::TlsConfig>,
    /// The node's evacuation (`/api/v1/node/evacuate`).
    pub evacuation: Arc<crate::evacuate::Evacuation>,
}

/// What the API needs of the data plane.
#[derive(Clone)]
pub struct DataPlane {
    /// The count of open client connections.
    pub connections: Arc<AtomicUsize>,
    /// The per-shard figures.
    pub figures: Arc<FigureBoard>,
    /// The shards' management inboxes.
    pub management: Option<Arc<shardmq_shards::Management>>,
    /// The node's evacuation, whose flag the cluster's pings also read.
    pub evacuation: Arc<crate::evacuate::Evacuation>,
}

impl ApiState {
    /// The authenticator `config` asks for: keys from `api.keys_file`, loopback peers let
    /// through when `api.allow_unauthenticated_loopback`.
    pub fn authenticator(config: &ApiConfig) -> Arc<Authenticator> {
        Arc::new(Authenticator {
            keys: KeyRing::new(config.keys_file.clone()),
            allow_unauthenticated_loopback: config.allow_unauthenticated_loopback,
        })
    }
}

type Shared = Arc<ApiState>;

/// The API's routes over `state`, behind the key check ([`auth::require_key`]). Serve it with
/// connect info (`into_make_service_with_connect_info::<SocketAddr>`), as [`serve`] does, or
/// no peer counts as loopback.
pub fn router(state: ApiState) -> Router {
    let auth = state.auth.clone();
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/cluster", get(cluster_status))
        .route("/api/v1/cluster/join", post(join))
        .route("/api/v1/cluster/leave", post(leave))
        .route("/api/v1/rlog", get(rlog_status))
        .route(
            "/api/v1/storage",
            get(|| async { Json(crate::storage::status()) }),
        )
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/config/reload", post(reload))
        .merge(manage::routes())
        .merge(evacuate::routes())
        .fallback(not_found)
        .with_state(Arc::new(state))
        .layer(axum::middleware::from_fn_with_state(
            auth,
            auth::require_key,
        ))
        .merge(dashboard::router())
}

/// What `POST /api/v1/config/reload` runs: the configuration reload of [`crate::reload`]
/// (the same as SIGHUP), answering what it applied. One per process, set by the node.
pub type ReloadHook = Arc<dyn Fn() -> anyhow::Result<serde_json::Value> + Send + Sync>;

static RELOAD_HOOK: std::sync::OnceLock<ReloadHook> = std::sync::OnceLock::new();

/// Sets what `POST /api/v1/reload` runs (once; later calls are ignored).
pub fn set_reload_hook(hook: ReloadHook) {
    let _ = RELOAD_HOOK.set(hook);
}

/// `POST /api/v1/config/reload` (and its old name `/api/v1/reload`): the configuration
/// reloaded without dropping a connection; 200 with what was applied and what needs a
/// restart, or 500 with what failed (nothing changed then).
async fn reload() -> Response {
    let Some(hook) = RELOAD_HOOK.get().cloned() else {
        return (
            StatusCode::OK,
            Json(serde_json::json!({ "reloaded": true, "note": "nothing to reload" })),
        )
            .into_response();
    };
    match tokio::task::spawn_blocking(move || hook()).await {
        Ok(Ok(outcome)) => (StatusCode::OK, Json(outcome)).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "reloaded": false, "error": format!("{e:#}") })),
        )
            .into_response(),
        Err(e) => ApiError::internal(anyhow::anyhow!("reload task failed: {e}")).into_response(),
    }
}

/// Serves the API on `listener` until the runtime stops: over HTTPS with `tls`, else plain
/// HTTP.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<()> {
    use axum::serve::ListenerExt as _;
    let addr = listener.local_addr().ok();
    let open = if state.auth.allow_unauthenticated_loopback {
        "keys required except from loopback"
    } else {
        "keys required"
    };
    let app = router(state);
    let served = match tls {
        Some(config) => {
            tracing::info!(addr = ?addr, auth = open, "management API listening (HTTPS)");
            // tap_io: its connect info is the listener's address type, SocketAddr.
            let listener = tls::TlsListener::new(listener, config)?.tap_io(|_| {});
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        }
        None => {
            tracing::info!(addr = ?addr, auth = open, "management API listening");
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        }
    };
    served.with_context(|| format!("api.listen: serving on {addr:?}"))
}

// ---- errors ---------------------------------------------------------------------------------

/// An error answer: `{"error": "..."}` with its status code.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl ApiError {
    fn internal(error: anyhow::Error) -> Self {
        Self(StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}"))
    }

    fn standalone(what: &str) -> Self {
        Self(
            StatusCode::CONFLICT,
            format!(
                "cannot {what}: this node runs standalone (cluster.enabled = false); \
                 enable [cluster] in its configuration and restart it"
            ),
        )
    }
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such route".to_owned())
}

// ---- handlers -------------------------------------------------------------------------------

/// `GET /health`.
async fn health(State(state): State<Shared>) -> Response {
    let uptime = state.started.elapsed().as_secs();
    let Some(cluster) = &state.cluster else {
        return Json(json!({
            "status": "ok",
            "node": state.node_name,
            "mode": "standalone",
            "uptime_seconds": uptime,
        }))
        .into_response();
    };
    let unhealthy = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unavailable",
                "node": state.node_name,
                "reason": reason,
                "uptime_seconds": uptime,
            })),
        )
            .into_response()
    };
    let rlog = match within(STATUS_TIMEOUT_MS, "the RLOG status", cluster.rlog_status()).await {
        Ok(rlog) => rlog,
        Err(e) => return unhealthy(format!("cluster status unavailable: {}", e.1)),
    };
    if let Some(reason) = unhealthy_reason(&rlog) {
        return unhealthy(reason);
    }
    Json(json!({
        "status": "ok",
        "node": state.node_name,
        "mode": "cluster",
        "node_id": rlog.node,
        "role": rlog.role,
        "leader": rlog.leader,
        "uptime_seconds": uptime,
    }))
    .into_response()
}

/// Why a clustered node is not healthy: no leader known, or (replicants) a shard that is not
/// following its stream yet.
fn unhealthy_reason(rlog: &RlogStatus) -> Option<String> {
    if rlog.leader.is_none() {
        return Some("no raft leader known to this node".to_owned());
    }
    if matches!(rlog.role, RlogRole::Replicant) {
        let behind: Vec<String> = rlog
            .shards
            .iter()
            .filter(|s| s.state != "normal")
            .map(|s| format!("{} ({})", s.shard, s.state))
            .collect();
        if !behind.is_empty() {
            return Some(format!(
                "replicant not in normal state for RLOG shard(s): {}",
                behind.join(", ")
            ));
        }
    }
    None
}

/// `GET /metrics`.
async fn metrics(State(state): State<Shared>) -> Response {
    let mut registry = Registry::default();
    let connections: Gauge = Gauge::default();
    connections.set(i64::try_from(state.connections.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    registry.register(
        "shardmq_connections",
        "Open client connections on this node",
        connections,
    );
    let uptime: Gauge<f64, AtomicU64> = Gauge::default();
    uptime.set(state.started.elapsed().as_secs_f64());
    registry.register(
        "shardmq_uptime_seconds",
        "Seconds since this node started",
        uptime,
    );
    register_samples(&mut registry, figure_samples(&state.figures.shards()));
    register_samples(&mut registry, evacuation_samples(&state.evacuation));
    register_samples(&mut registry, crate::storage::samples());
    if let Some(cluster) = &state.cluster {
        match within(STATUS_TIMEOUT_MS, "the RLOG status", cluster.rlog_status()).await {
            Ok(rlog) => register_rlog(&mut registry, &rlog),
            Err(e) => tracing::warn!(error = %e.1, "/metrics: no RLOG status"),
        }
        let samples = within(STATUS_TIMEOUT_MS, "its samples", async {
            Ok(cluster.samples().await)
        });
        match samples.await {
            Ok(samples) => register_samples(&mut registry, samples),
            Err(e) => tracing::warn!(error = %e.1, "/metrics: no cluster samples"),
        }
    }
    let mut text = String::new();
    if let Err(e) = encode(&mut text, &registry) {
        return ApiError::internal(anyhow::anyhow!("encoding metrics: {e}")).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `shardmq_evacuated_clients_total`, `shardmq_evacuating` and
/// `shardmq_evacuation_clients_left`.
fn evacuation_samples(e: &crate::evacuate::Evacuation) -> Vec<Sample> {
    let left = e.status().filter(|_| e.running()).map_or(0, |s| s.left);
    let sample = |name: &str, help: &str, value: u64, counter| Sample {
        name: name.into(),
        help: help.into(),
        labels: Vec::new(),
        value: value as f64,
        counter,
    };
    vec![
        sample(
            "shardmq_evacuated_clients",
            "Clients this node sent to other nodes by evacuation since it started",
            e.evacuated_total(),
            true,
        ),
        sample(
            "shardmq_evacuating",
            "1 while this node evacuates (new clients refused)",
            u64::from(e.running()),
            false,
        ),
        sample(
            "shardmq_evacuation_clients_left",
            "Connections left on this node during its evacuation",
            left,
            false,
        ),
    ]
}

/// The data plane's figures as samples, labelled by shard: sessions and subscriptions, and
/// the message and byte counters (`$SYS` has the same figures). Routes and retained messages
/// are replicated on every shard, so they are one node-wide gauge each (the largest replica).
fn figure_samples(shards: &[ShardFigures]) -> Vec<Sample> {
    let sample =
        |name: &str, help: &str, labels: Vec<(String, String)>, value: u64, counter| Sample {
            name: name.to_string(),
            help: help.to_string(),
            labels,
            value: value as f64,
            counter,
        };
    let mut out = Vec::new();
    for (i, f) in shards.iter().enumerate() {
        let per_shard: [(&str, &str, u64, bool); 7] = [
            (
                "shardmq_sessions",
                "Sessions held, connected or not",
                f.sessions,
                false,
            ),
            (
                "shardmq_subscriptions",
                "Subscriptions of the shard's sessions",
                f.subscriptions,
                false,
            ),
            (
                "shardmq_messages_received_total",
                "PUBLISH packets received from clients",
                f.messages_received,
                true,
            ),
            (
                "shardmq_messages_sent_total",
                "PUBLISH packets sent to clients (resends not counted)",
                f.messages_sent,
                true,
            ),
            (
                "shardmq_messages_dropped_total",
                "Messages dropped for a subscriber: queue or write buffer full, expired, too large",
                f.messages_dropped,
                true,
            ),
            (
                "shardmq_bytes_received_total",
                "Bytes read from client sockets",
                f.bytes_received,
                true,
            ),
            (
                "shardmq_bytes_sent_total",
                "Bytes written to client sockets",
                f.bytes_sent,
                true,
            ),
        ];
        for (name, help, value, counter) in per_shard {
            let labels = vec![("shard".to_string(), i.to_string())];
            out.push(sample(name, help, labels, value, counter));
        }
    }
    let routes = shards.iter().map(|f| f.topics).max().unwrap_or(0);
    let retained = shards.iter().map(|f| f.retained).max().unwrap_or(0);
    out.push(sample(
        "shardmq_routes",
        "Filters subscribed on this node",
        Vec::new(),
        routes,
        false,
    ));
    out.push(sample(
        "shardmq_retained_messages",
        "Retained messages",
        Vec::new(),
        retained,
        false,
    ));
    out
}

/// A family of integer gauges by label set.
type Labeled = Family<Vec<(String, String)>, Gauge>;
/// A family of float gauges by label set.
type LabeledF64 = Family<Vec<(String, String)>, Gauge<f64, AtomicU64>>;

/// The per-shard RLOG gauges: cores report `last_seq`, `replicants`, `pending`; replicants
/// `lag`, bootstrap figures, replay queue and their state per shard.
fn register_rlog(registry: &mut Registry, rlog: &RlogStatus) {
    let shard = |s: &str| vec![("shard".to_owned(), s.to_owned())];
    let family = |registry: &mut Registry, name: &str, help: &str, values: Vec<(Vec<_>, u64)>| {
        let family = Labeled::default();
        for (labels, value) in values {
            family
                .get_or_create(&labels)
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        registry.register(name, help, family);
    };
    let per_shard = |get: fn(&ShardStatus) -> u64| -> Vec<(Vec<_>, u64)> {
        rlog.shards
            .iter()
            .map(|s| (shard(&s.shard), get(s)))
            .collect()
    };
    family(
        registry,
        "shardmq_rlog_last_seq",
        "Last sequence number of the RLOG shard on this node",
        per_shard(|s| s.seq),
    );
    match rlog.role {
        RlogRole::Core => {
            family(
                registry,
                "shardmq_rlog_replicants",
                "Replicants following the RLOG shard from this core",
                per_shard(|s| s.replicants),
            );
            family(
                registry,
                "shardmq_rlog_pending",
                "Entries of the RLOG shard not yet acknowledged by replicants",
                per_shard(|s| s.pending),
            );
        }
        RlogRole::Replicant => {
            family(
                registry,
                "shardmq_rlog_lag",
                "Entries this replicant is behind its core on the RLOG shard",
                per_shard(|s| s.lag),
            );
            family(
                registry,
                "shardmq_rlog_bootstrap_time_ms",
                "Duration of the last bootstrap of the RLOG shard, in milliseconds",
                per_shard(|s| s.bootstrap_time_ms),
            );
            family(
                registry,
                "shardmq_rlog_bootstrap_keys",
                "Keys received in the last bootstrap of the RLOG shard",
                per_shard(|s| s.bootstrap_keys),
            );
            family(
                registry,
                "shardmq_rlog_replay_queue_len",
                "Entries buffered for local replay on the RLOG shard",
                per_shard(|s| s.replay_queue_len),
            );
            family(
                registry,
                "shardmq_rlog_state",
                "State of the RLOG shard on this replicant (1 for the current state)",
                rlog.shards
                    .iter()
                    .map(|s| {
                        let mut labels = shard(&s.shard);
                        labels.push(("state".to_owned(), s.state.clone()));
                        (labels, 1)
                    })
                    .collect(),
            );
        }
    }
}

/// The cluster's extra samples, one metric family per name.
fn register_samples(registry: &mut Registry, samples: Vec<Sample>) {
    let mut families: Vec<(Sample, Vec<Sample>)> = Vec::new();
    for sample in samples {
        match families
            .iter_mut()
            .find(|(first, _)| first.name == sample.name)
        {
            Some((_, all)) => all.push(sample),
            None => families.push((sample.clone(), vec![sample])),
        }
    }
    for (first, all) in families {
        let help = first.help.trim_end_matches('.');
        if let [only] = all.as_slice() {
            if only.labels.is_empty() {
                // No `{}` after the name.
                if first.counter {
                    let counter: Counter<f64, AtomicU64> = Counter::default();
                    counter.inc_by(only.value.max(0.0));
                    let name = first.name.strip_suffix("_total").unwrap_or(&first.name);
                    registry.register(name, help, counter);
                } else {
                    let gauge: Gauge<f64, AtomicU64> = Gauge::default();
                    gauge.set(only.value);
                    registry.register(&first.name, help, gauge);
                }
                continue;
            }
        }
        if first.counter {
            let name = first.name.strip_suffix("_total").unwrap_or(&first.name);
            let family: Family<Vec<(String, String)>, Counter<f64, AtomicU64>> = Family::default();
            for s in &all {
                family.get_or_create(&s.labels).inc_by(s.value.max(0.0));
            }
            registry.register(name, help, family);
        } else {
            let family = LabeledF64::default();
            for s in &all {
                family.get_or_create(&s.labels).set(s.value);
            }
            registry.register(&first.name, help, family);
        }
    }
}

/// `GET /api/v1/cluster`.
async fn cluster_status(State(state): State<Shared>) -> Result<Response, ApiError> {
    let (mode, status) = match &state.cluster {
        Some(cluster) => (
            "cluster",
            within(
                STATUS_TIMEOUT_MS,
                "the cluster status",
                cluster.cluster_status(),
            )
            .await?,
        ),
        None => ("standalone", standalone_cluster(&state)),
    };
    let mut body = serde_json::to_value(&status)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("encoding the cluster status: {e}")))?;
    if let Some(object) = body.as_object_mut() {
        object.insert("mode".to_owned(), json!(mode));
        object.insert("node_name".to_owned(), json!(state.node_name));
    }
    Ok(Json(body).into_response())
}

/// A standalone node's view: itself, a core, leading itself.
fn standalone_cluster(state: &ApiState) -> ClusterStatus {
    ClusterStatus {
        node: state.node_id,
        role: RlogRole::Core,
        leader: Some(state.node_id),
        members: vec![MemberStatus {
            node: state.node_id,
            addr: String::new(),
            role: RlogRole::Core,
            api: String::new(),
            status: "running".to_owned(),
        }],
        routes: 0,
        sessions: 0,
        pending_writes: 0,
    }
}

/// `GET /api/v1/rlog`.
async fn rlog_status(State(state): State<Shared>) -> Result<Json<RlogStatus>, ApiError> {
    match &state.cluster {
        Some(cluster) => Ok(Json(
            within(STATUS_TIMEOUT_MS, "the RLOG status", cluster.rlog_status()).await?,
        )),
        None => Ok(Json(RlogStatus {
            node: state.node_id,
            role: RlogRole::Core,
            leader: Some(state.node_id),
            shards: Vec::new(),
        })),
    }
}

/// Body of `POST /api/v1/cluster/join`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// A core of the cluster to join, `"id@host:port"`.
    pub seed: String,
}

/// `POST /api/v1/cluster/join`.
async fn join(
    State(state): State<Shared>,
    body: Result<Json<JoinRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(request) = body.map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "expected a JSON body {{\"seed\": \"id@host:port\"}}: {}",
                e.body_text()
            ),
        )
    })?;
    let Some(cluster) = &state.cluster else {
        return Err(ApiError::standalone("join a cluster"));
    };
    crate::config::parse_seed(&request.seed)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("seed: {e}")))?;
    within(
        MEMBERSHIP_TIMEOUT_MS,
        "the join",
        cluster.join(request.seed.clone()),
    )
    .await?;
    Ok(Json(json!({ "status": "ok", "joined": request.seed })))
}

/// `POST /api/v1/cluster/leave`.
async fn leave(State(state): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(cluster) = &state.cluster else {
        return Err(ApiError::standalone("leave a cluster"));
    };
    within(MEMBERSHIP_TIMEOUT_MS, "the leave", cluster.leave()).await?;
    Ok(Json(json!({ "status": "ok", "left": true })))
}

// ---- the control thread ---------------------------------------------------------------------

/// Binds `api.listen`; `None` when the API is disabled (`""`). The error names `api.listen`.
pub fn bind(config: &ApiConfig) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Some(addr) = config.listen_addr() else {
        return Ok(None);
    };
    let listener = bind_addr(addr)
        .with_context(|| format!("api.listen: cannot bind {addr} for the management API"))?;
    Ok(Some(listener))
}

fn bind_addr(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Runs `f` on a new thread named `name` with its own current-thread tokio runtime (all
/// drivers enabled), pinned to `cpu` when given. The future need not be `Send`: it is built
/// and polled on that thread. The thread ends when the future does.
pub fn control_thread<F, Fut>(
    name: &str,
    cpu: Option<usize>,
    f: F,
) -> anyhow::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the control plane's tokio runtime")?;
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            if let Some(cpu) = cpu {
                match crate::cpus::pin_current_thread(cpu) {
                    Ok(()) => tracing::info!(cpu, "control thread pinned"),
                    Err(e) => tracing::warn!(cpu, error = %e, "node.control_cpu: cannot pin the control thread"),
                }
            }
            runtime.block_on(f());
        })
        .with_context(|| format!("starting the {name} thread"))
}

/// Starts the control plane with the management API and an already built `cluster` (or none).
/// See [`start_with`].
pub fn start(
    config: &Config,
    plane: DataPlane,
    cluster: Option<Arc<dyn ClusterApi>>,
) -> anyhow::Result<()> {
    start_with(config, plane, move || async move { Ok(cluster) })
}

/// Starts the control plane: binds `api.listen` here (an error names it), then on the
/// `shardmq-control` thread ([`control_thread`], pinned to `node.control_cpu`) runs
/// `make_cluster` and serves the API. Returns once `make_cluster` has answered, with its error
/// if it failed; `make_cluster` should start the cluster's tasks (spawned on the control
/// runtime) and return, not wait for a leader.
pub fn start_with<F, Fut>(config: &Config, plane: DataPlane, make_cluster: F) -> anyhow::Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<Option<Arc<dyn ClusterApi>>>> + 'static,
{
    let listener = bind(&config.api)?;
    let tls = match config.api.tls_files() {
        Some((cert, key)) if listener.is_some() => Some(tls::server_config(cert, key)?),
        _ => None,
    };
    let auth = ApiState::authenticator(&config.api);
    let cpu = config
        .node
        .control_cpu
        .resolve(&crate::cpus::online_cpus())
        .unwrap_or(None);
    let node_name = config.node.name.clone();
    let node_id = config.cluster.node_id;
    let started = Instant::now();
    let listeners = listener_list(config);
    let api_addr = config.api.listen.trim().to_string();
    let max_connections = config.listener.max_connections;
    let peer_tls = match config.api.tls_files() {
        Some((cert, _)) => Some(
            crate::ctl::tls_config(Some(cert))
                .context("api.tls_cert_file, as the CA of the other nodes' APIs")?,
        ),
        None => None,
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    control_thread(CONTROL_THREAD_NAME, cpu, move || async move {
        let cluster = match make_cluster().await {
            Ok(cluster) => cluster,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let listener = match listener.map(tokio::net::TcpListener::from_std).transpose() {
            Ok(listener) => listener,
            Err(e) => {
                let _ = ready_tx.send(Err(anyhow::Error::new(e).context("api.listen")));
                return;
            }
        };
        let _ = ready_tx.send(Ok(()));
        match listener {
            Some(listener) => {
                let state = ApiState {
                    node_name,
                    node_id,
                    connections: plane.connections,
                    figures: plane.figures,
                    cluster,
                    started,
                    auth,
                    management: plane.management,
                    listeners,
                    api_addr,
                    max_connections,
                    alarms: Default::default(),
                    peer_tls,
                    evacuation: plane.evacuation,
                };
                if let Err(e) = serve(listener, state, tls).await {
                    tracing::error!(error = %format!("{e:#}"), "management API stopped");
                }
                // The cluster's tasks keep running on this runtime.
                std::future::pending::<()>().await;
            }
            // Keep the runtime (and the cluster's tasks) alive.
            None => std::future::pending::<()>().await,
        }
    })?;
    ready_rx
        .recv()
        .context("the control thread ended during start-up")?
}

/// The client listeners the configuration opens, for the overview.
fn listener_list(config: &Config) -> Vec<serde_json::Value> {
    let l = &config.listener;
    let mut out = Vec::new();
    if let Some(addr) = l.bind {
        out.push(json!({ "kind": "mqtt", "addr": addr.to_string() }));
    }
    if let Some(addr) = l.tls.bind {
        out.push(json!({ "kind": "mqtts", "addr": addr.to_string() }));
    }
    if let Some(addr) = l.ws.bind {
        out.push(json!({ "kind": "ws", "addr": addr.to_string(), "path": l.ws.path }));
    }
    if let Some(addr) = l.wss.bind {
        out.push(json!({ "kind": "wss", "addr": addr.to_string(), "path": l.wss.path }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A cluster whose answers the test sets.
    struct FakeCluster {
        rlog: Mutex<RlogStatus>,
        joined: Mutex<Vec<String>>,
    }

    impl ClusterApi for FakeCluster {
        fn cluster_status(&self) -> BoxFuture<'static, anyhow::Result<ClusterStatus>> {
            let rlog = self.rlog.lock().unwrap().clone();
            Box::pin(async move {
                Ok(ClusterStatus {
                    node: rlog.node,
                    role: rlog.role,
                    leader: rlog.leader,
                    members: vec![],
                    routes: 7,
                    sessions: 3,
                    pending_writes: 0,
                })
            })
        }
        fn rlog_status(&self) -> BoxFuture<'static, anyhow::Result<RlogStatus>> {
            let rlog = self.rlog.lock().unwrap().clone();
            Box::pin(async move { Ok(rlog) })
        }
        fn join(&self, seed: String) -> BoxFuture<'static, anyhow::Result<()>> {
            self.joined.lock().unwrap().push(seed);
            Box::pin(async { Ok(()) })
        }
        fn leave(&self) -> BoxFuture<'static, anyhow::Result<()>> {
            Box::pin(async { anyhow::bail!("the last core cannot leave") })
        }
        fn samples(&self) -> BoxFuture<'static, Vec<Sample>> {
            Box::pin(async {
                let sample = |peer: &str, value| Sample {
                    name: "shardmq_forward_dropped_total".into(),
                    help: "Forwarded messages dropped.".into(),
                    labels: vec![("peer".into(), peer.into())],
                    value,
                    counter: true,
                };
                vec![
                    sample("2", 5.0),
                    sample("3", 0.0),
                    Sample {
                        name: "shardmq_forward_pending".into(),
                        help: "Forwarded messages awaiting ack".into(),
                        labels: vec![],
                        value: 12.0,
                        counter: false,
                    },
                ]
            })
        }
    }

    fn shard(name: &str, state: &str) -> ShardStatus {
        ShardStatus {
            shard: name.into(),
            state: state.into(),
            seq: 42,
            lag: 3,
            replicants: 2,
            pending: 9,
            bootstrap_time_ms: 15,
            bootstrap_keys: 1000,
            replay_queue_len: 4,
            ..Default::default()
        }
    }

    /// Serves the API over `fake` on a free port; returns its address.
    async fn serve_fake(fake: Arc<FakeCluster>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = ApiState {
            node_name: "test".into(),
            node_id: 1,
            connections: Arc::new(AtomicUsize::new(5)),
            figures: Arc::new(FigureBoard::new(2)),
            cluster: Some(fake),
            started: Instant::now(),
            auth: ApiState::authenticator(&ApiConfig::default()),
            management: None,
            listeners: Vec::new(),
            api_addr: addr.clone(),
            max_connections: 0,
            alarms: Default::default(),
            peer_tls: None,
            evacuation: Default::default(),
        };
        tokio::spawn(serve(listener, state, None));
        addr
    }

    /// A blocking request on another thread: (status, body).
    async fn call(method: &'static str, url: String, body: Option<&'static str>) -> (u16, String) {
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let answer = match (method, body) {
                ("GET", _) => agent.get(&url).call(),
                (_, Some(body)) => agent
                    .post(&url)
                    .header("content-type", "application/json")
                    .send(body),
                (_, None) => agent.post(&url).send_empty(),
            };
            let mut r = answer.unwrap();
            (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
        })
        .await
        .unwrap()
    }

    fn fake(role: RlogRole, leader: Option<u64>, shards: Vec<ShardStatus>) -> Arc<FakeCluster> {
        Arc::new(FakeCluster {
            rlog: Mutex::new(RlogStatus {
                node: 4,
                role,
                leader,
                shards,
            }),
            joined: Mutex::new(vec![]),
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_follows_leader_and_replicant_state() {
        let cluster = fake(RlogRole::Replicant, None, vec![shard("route", "normal")]);
        let api = serve_fake(cluster.clone()).await;
        let url = format!("http://{api}/health");

        let (status, body) = call("GET", url.clone(), None).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("no raft leader"), "{body}");

        cluster.rlog.lock().unwrap().leader = Some(1);
        cluster
            .rlog
            .lock()
            .unwrap()
            .shards
            .push(shard("session", "bootstrap"));
        let (status, body) = call("GET", url.clone(), None).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("session (bootstrap)"), "{body}");
        assert!(!body.contains("route"), "{body}");

        cluster.rlog.lock().unwrap().shards[1].state = "normal".into();
        let (status, body) = call("GET", url.clone(), None).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"status\":\"ok\""), "{body}");

        // A core's shards are never "normal"; only the leader matters.
        let core = fake(RlogRole::Core, Some(2), vec![shard("route", "core")]);
        let api = serve_fake(core).await;
        let (status, body) = call("GET", format!("http://{api}/health"), None).await;
        assert_eq!(status, 200, "{body}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_per_role_and_extra_samples() {
        let replicant = fake(
            RlogRole::Replicant,
            Some(1),
            vec![shard("route", "bootstrap"), shard("session", "normal")],
        );
        let api = serve_fake(replicant).await;
        let (status, text) = call("GET", format!("http://{api}/metrics"), None).await;
        assert_eq!(status, 200, "{text}");
        for line in [
            "shardmq_connections 5",
            "shardmq_rlog_last_seq{shard=\"route\"} 42",
            "shardmq_rlog_lag{shard=\"session\"} 3",
            "shardmq_rlog_bootstrap_time_ms{shard=\"route\"} 15",
            "shardmq_rlog_bootstrap_keys{shard=\"route\"} 1000",
            "shardmq_rlog_replay_queue_len{shard=\"route\"} 4",
            "shardmq_rlog_state{shard=\"route\",state=\"bootstrap\"} 1",
            "shardmq_rlog_state{shard=\"session\",state=\"normal\"} 1",
            "# TYPE shardmq_forward_dropped counter",
            "shardmq_forward_dropped_total{peer=\"2\"} 5.0",
            "shardmq_forward_pending 12.0",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
        assert!(!text.contains("shardmq_rlog_replicants"), "{text}");
        assert!(
            !text.contains(".."),
            "help texts end in one period:\n{text}"
        );

        let core = fake(RlogRole::Core, Some(1), vec![shard("route", "core")]);
        let api = serve_fake(core).await;
        let (_, text) = call("GET", format!("http://{api}/metrics"), None).await;
        for line in [
            "shardmq_rlog_last_seq{shard=\"route\"} 42",
            "shardmq_rlog_replicants{shard=\"route\"} 2",
            "shardmq_rlog_pending{shard=\"route\"} 9",
        ] {
            assert!(text.contains(line), "{line:?} missing:\n{text}");
        }
        assert!(!text.contains("shardmq_rlog_lag"), "{text}");
        assert!(!text.contains("shardmq_rlog_state"), "{text}");
    }

    #[tokio::test]
    async fn a_cluster_layer_running_late_is_a_504() {
        let late = within(10, "the test", std::future::pending::<anyhow::Result<()>>()).await;
        let err = late.unwrap_err();
        assert_eq!(err.0, StatusCode::GATEWAY_TIMEOUT);
        assert!(err.1.contains("the test within 10 ms"), "{}", err.1);
        let failed = within(10, "x", async {
            anyhow::bail!("boom") as anyhow::Result<()>
        })
        .await;
        assert_eq!(failed.unwrap_err().0, StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster_routes_reach_the_cluster() {
        let cluster = fake(RlogRole::Core, Some(4), vec![]);
        let api = serve_fake(cluster.clone()).await;

        let (status, body) = call("GET", format!("http://{api}/api/v1/cluster"), None).await;
        assert_eq!(status, 200, "{body}");
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["mode"], "cluster");
        assert_eq!(value["routes"], 7);

        let join = format!("http://{api}/api/v1/cluster/join");
        let (status, body) =
            call("POST", join.clone(), Some(r#"{"seed":"2@127.0.0.1:4371"}"#)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(*cluster.joined.lock().unwrap(), ["2@127.0.0.1:4371"]);

        let (status, body) = call("POST", join, Some(r#"{"seed":"two@127.0.0.1:4371"}"#)).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("\"error\":\"seed: "), "{body}");

        let leave = format!("http://{api}/api/v1/cluster/leave");
        let (status, body) = call("POST", leave, None).await;
        assert_eq!(status, 500, "{body}");
        assert!(body.contains("the last core cannot leave"), "{body}");
    }
}
