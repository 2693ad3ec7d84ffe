//! `shardmq ctl`: asks a node's management API (`api.listen`, see [`crate::api`]) about the
//! cluster and prints the answer as aligned tables, or as the API's JSON with `--json`; and
//! manages the API keys in `api.keys_file` (on the file itself: no running node needed).
//!
//! ```text
//! shardmq ctl cluster status
//! shardmq ctl cluster join 2@10.0.0.2:4370
//! shardmq ctl cluster leave
//! shardmq ctl rlog status --json
//! shardmq -c /etc/shardmq.toml ctl rlog status      # the API address from that file
//! shardmq ctl --api 10.0.0.3:18083 cluster status   # any node
//! shardmq ctl --api https://10.0.0.3:18083 --cacert ca.pem --api-key smq_... cluster status
//! shardmq ctl api-key create --name grafana         # prints the key, once
//! shardmq ctl api-key list
//! shardmq ctl api-key delete grafana                # by id or name
//! shardmq ctl clients list --clientid sensor         # and sessions, subs, retained,
//! shardmq ctl trace client sensor-1                  # publish: see [`manage`]
//! shardmq ctl node evacuate --to 2,3 --rate 200      # and --status, --stop
//! shardmq ctl cluster rebalance --rate 200 --threshold 10   # and --status, --stop
//! ```
//!
//! The API key comes from `--api-key` or `SHARDMQ_API_KEY` and is sent as
//! `Authorization: Bearer`.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

use crate::api::keys::{self, KeyFile};
use crate::config::ApiConfig;

pub mod manage;

/// How long one request may take, connection included: more than the API gives the cluster
/// layer for a join or leave ([`crate::api::MEMBERSHIP_TIMEOUT_MS`]).
pub const REQUEST_TIMEOUT_MS: u64 = crate::api::MEMBERSHIP_TIMEOUT_MS + 10_000;

/// How long connecting to the API may take.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;

/// `shardmq ctl`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct CtlArgs {
    /// Management API of the node to ask, HOST:PORT. Default: api.listen of the configuration
    /// (--config, SHARDMQ_API__LISTEN).
    /// `https://HOST:PORT` for an API served over HTTPS (then --cacert).
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub api: Option<String>,
    /// API key sent as `Authorization: Bearer` (see `ctl api-key create`).
    #[arg(
        long,
        global = true,
        env = "SHARDMQ_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// PEM CA certificate(s) to trust for an HTTPS API. Default, when the address comes from
    /// the configuration: api.tls_cert_file (right for a self-signed certificate).
    #[arg(long, global = true, env = "SHARDMQ_API_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Print the API's JSON answer instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `shardmq ctl <area>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlCommand {
    /// This node: evacuation (moving its clients to the other nodes).
    Node {
        /// What to do.
        #[command(subcommand)]
        action: NodeAction,
    },
    /// Cluster membership.
    Cluster {
        /// What to do.
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// RLOG replication.
    Rlog {
        /// What to do.
        #[command(subcommand)]
        action: RlogAction,
    },
    /// Storage (`[storage]`): durability, bytes written, fsyncs, group commits, disk used.
    Storage {
        /// What to do.
        #[command(subcommand)]
        action: StorageAction,
    },
    /// Connected clients, cluster-wide: list, show, kick.
    Clients {
        /// What to do.
        #[command(subcommand)]
        action: manage::ClientsAction,
    },
    /// Sessions, offline ones included: list, delete.
    Sessions {
        /// What to do.
        #[command(subcommand)]
        action: manage::SessionsAction,
    },
    /// Subscriptions, cluster-wide.
    Subs {
        /// What to do.
        #[command(subcommand)]
        action: manage::SubsAction,
    },
    /// Retained messages: list, show, delete.
    Retained {
        /// What to do.
        #[command(subcommand)]
        action: manage::RetainedAction,
    },
    /// Publish a message as the broker.
    Publish(manage::PublishArgs),
    /// A bounded live log of one client's packets.
    Trace {
        /// What to trace.
        #[command(subcommand)]
        action: manage::TraceAction,
    },
    /// API keys in api.keys_file (edits the file; a running node picks changes up by itself).
    ApiKey {
        /// What to do.
        #[command(subcommand)]
        action: ApiKeyAction,
    },
}

/// `shardmq ctl api-key <action>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ApiKeyAction {
    /// Make a key: printed once on stdout (only its SHA-256 is stored).
    Create {
        /// A name to list and delete it by; unique.
        #[arg(long)]
        name: Option<String>,
    },
    /// Ids, names and creation times (never the keys).
    List,
    /// Delete a key by id or name.
    Delete {
        /// The key's id or name.
        #[arg(value_name = "ID|NAME")]
        which: String,
    },
}

/// `shardmq ctl cluster <action>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClusterAction {
    /// Members, their roles and state, the raft leader, table sizes.
    Status,
    /// Join the cluster of a core node.
    Join {
        /// A core of the cluster, id@host:port (its cluster.node_id and cluster.listen).
        #[arg(value_name = "ID@HOST:PORT")]
        seed: String,
    },
    /// Leave the cluster.
    Leave,
    /// Even the connections across the nodes: when some node is further from the mean than
    /// --threshold per cent, clients move from the nodes above it to those below (MQTT 5.0:
    /// DISCONNECT 0x9C with the new node's address) until each is within one of the mean.
    Rebalance {
        /// Clients moved per second, for the whole cluster (1 to 100000).
        #[arg(long, value_name = "N", default_value_t = crate::evacuate::RATE_DEFAULT)]
        rate: u32,
        /// How far from the mean a node may be and count as even, per cent (0 to 100).
        #[arg(long, value_name = "PCT", default_value_t = crate::evacuate::THRESHOLD_DEFAULT_PCT)]
        threshold: u32,
        /// Show each node's connections and its part, instead of starting.
        #[arg(long, conflicts_with = "stop")]
        status: bool,
        /// Stop every node's part of the rebalance.
        #[arg(long)]
        stop: bool,
    },
}

/// `shardmq ctl node <action>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum NodeAction {
    /// Move this node's clients to the other nodes at a bounded rate (MQTT 5.0: DISCONNECT
    /// 0x9C Use another server with the new node's address; 3.x: closed) and refuse new
    /// ones, until --stop or a restart. Their sessions follow them.
    Evacuate {
        /// Node ids clients may go to, e.g. 2,3 (default: every other running node).
        #[arg(long, value_delimiter = ',', value_name = "NODES")]
        to: Option<Vec<u64>>,
        /// Clients sent away per second (1 to 100000).
        #[arg(long, value_name = "N", default_value_t = crate::evacuate::RATE_DEFAULT)]
        rate: u32,
        /// Show how the evacuation stands instead of starting one.
        #[arg(long, conflicts_with_all = ["stop", "to"])]
        status: bool,
        /// Stop the evacuation: CONNECTs are accepted again.
        #[arg(long, conflicts_with_all = ["status", "to"])]
        stop: bool,
    },
}

/// `shardmq ctl storage <action>`.
#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum StorageAction {
    /// Mode, folder, recovery, bytes written, fsyncs, group-commit size, disk used, per shard.
    Status,
}

/// `shardmq ctl rlog <action>`.
#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum RlogAction {
    /// Per RLOG shard: state, sequence, lag, replicants, bootstrap figures.
    Status,
}

/// Where and how `ctl` reaches a node's API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// HOST:PORT.
    pub addr: String,
    /// Over HTTPS.
    pub https: bool,
    /// PEM CA file to trust, for HTTPS.
    pub ca_file: Option<PathBuf>,
}

impl Endpoint {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub fn base_url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

/// The API `ctl` asks: `--api` if given (`https://` for HTTPS), else `api.listen` of the
/// configuration that `load` reads (a wildcard address is asked on loopback; HTTPS when
/// `api.tls_cert_file` is set, trusting that file unless `cacert` is given).
pub fn endpoint(
    given: Option<&str>,
    cacert: Option<&Path>,
    load: impl FnOnce() -> anyhow::Result<ApiConfig>,
) -> anyhow::Result<Endpoint> {
    if let Some(api) = given {
        let api = api.trim();
        let (https, rest) = match api.strip_prefix("https://") {
            Some(rest) => (true, rest),
            None => (false, api.strip_prefix("http://").unwrap_or(api)),
        };
        let rest = rest.trim_end_matches('/');
        anyhow::ensure!(!rest.is_empty(), "--api: empty address");
        return Ok(Endpoint {
            addr: rest.to_owned(),
            https,
            ca_file: cacert.map(Path::to_path_buf),
        });
    }
    let config = load()?;
    let Some(addr) = config.listen_addr() else {
        bail!(
            "api.listen is \"\" in the configuration (the management API is off); \
             give --api HOST:PORT of a node that has it"
        );
    };
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let tls = config.tls_files();
    Ok(Endpoint {
        addr: SocketAddr::new(ip, addr.port()).to_string(),
        https: tls.is_some(),
        ca_file: cacert
            .map(Path::to_path_buf)
            .or_else(|| tls.map(|(cert, _)| cert.to_path_buf())),
    })
}

/// Runs `shardmq ctl`: `api-key` commands on `api.keys_file` of the configuration `load`
/// reads, the others against the node's API ([`endpoint`], [`run`]). Returns what to print
/// on stdout; notes for the operator go to stderr.
pub fn main(
    args: &CtlArgs,
    load: impl FnOnce() -> anyhow::Result<ApiConfig>,
) -> anyhow::Result<String> {
    if let CtlCommand::ApiKey { action } = &args.command {
        let config = load()?;
        return api_key(&config.keys_file, action, args.json);
    }
    let endpoint = endpoint(args.api.as_deref(), args.cacert.as_deref(), load)?;
    run(&endpoint, args)
}

/// `ctl api-key create|list|delete` on `file`.
pub fn api_key(file: &Path, action: &ApiKeyAction, json: bool) -> anyhow::Result<String> {
    let shown = file.display();
    match action {
        ApiKeyAction::Create { name } => {
            let (secret, id) = keys::random_key_material()?;
            let made = KeyFile::update(file, |f| {
                f.add(name.as_deref(), keys::now_unix_secs(), secret, id)
            })
            .with_context(|| format!("api.keys_file {shown}"))?;
            let stored = &made.stored;
            if json {
                return Ok(pretty(&json!({
                    "id": stored.id,
                    "name": stored.name,
                    "created": keys::rfc3339_utc(stored.created_unix_secs),
                    "key": made.secret,
                })));
            }
            eprintln!(
                "API key {} created{} in {shown} (only its SHA-256 is stored): it is shown \
                 this once",
                stored.id,
                if stored.name.is_empty() {
                    String::new()
                } else {
                    format!(" as {:?}", stored.name)
                },
            );
            Ok(format!("{}\n", made.secret))
        }
        ApiKeyAction::List => {
            let f = KeyFile::read(file).with_context(|| format!("api.keys_file {shown}"))?;
            if json {
                let list: Vec<Value> = f
                    .keys
                    .iter()
                    .map(|k| {
                        json!({
                            "id": k.id,
                            "name": k.name,
                            "created": keys::rfc3339_utc(k.created_unix_secs),
                        })
                    })
                    .collect();
                return Ok(pretty(&Value::Array(list)));
            }
            if f.keys.is_empty() {
                return Ok(format!("no API keys in {shown}\n"));
            }
            let rows: Vec<Vec<String>> = f
                .keys
                .iter()
                .map(|k| {
                    vec![
                        k.id.clone(),
                        cell(Some(&Value::String(k.name.clone()))),
                        keys::rfc3339_utc(k.created_unix_secs),
                    ]
                })
                .collect();
            Ok(table(&["ID", "NAME", "CREATED"], &rows))
        }
        ApiKeyAction::Delete { which } => {
            let gone = KeyFile::update(file, |f| f.remove(which))
                .with_context(|| format!("api.keys_file {shown}"))?;
            if json {
                return Ok(pretty(&json!({ "deleted": gone.id, "name": gone.name })));
            }
            Ok(format!("deleted API key {}\n", gone.id))
        }
    }
}

/// Runs `args` (not `api-key`) against the API at `endpoint`; returns what to print.
pub fn run(endpoint: &Endpoint, args: &CtlArgs) -> anyhow::Result<String> {
    let client = Client::new(endpoint, args.api_key.as_deref())?;
    let json = args.json;
    match &args.command {
        CtlCommand::Cluster {
            action: ClusterAction::Status,
        } => {
            let status = client.get("/api/v1/cluster")?;
            Ok(if json {
                pretty(&status)
            } else {
                render_cluster(&status)
            })
        }
        CtlCommand::Cluster {
            action: ClusterAction::Join { seed },
        } => {
            let answer = client.post(
                "/api/v1/cluster/join",
                Some(&serde_json::json!({ "seed": seed })),
            )?;
            Ok(if json {
                pretty(&answer)
            } else {
                format!("joined the cluster through {seed}\n")
            })
        }
        CtlCommand::Cluster {
            action: ClusterAction::Leave,
        } => {
            let answer = client.post("/api/v1/cluster/leave", None)?;
            Ok(if json {
                pretty(&answer)
            } else {
                "left the cluster\n".to_owned()
            })
        }
        CtlCommand::Node {
            action:
                NodeAction::Evacuate {
                    to,
                    rate,
                    status,
                    stop,
                },
        } => {
            let path = "/api/v1/node/evacuate";
            let answer = if *status {
                client.get(path)?
            } else if *stop {
                client.delete(path)?
            } else {
                let mut body = json!({ "rate": rate });
                if let Some(to) = to {
                    body["to"] = json!(to);
                }
                client.post(path, Some(&body))?
            };
            Ok(if json {
                pretty(&answer)
            } else {
                render_evacuation(&answer)
            })
        }
        CtlCommand::Cluster {
            action:
                ClusterAction::Rebalance {
                    rate,
                    threshold,
                    status,
                    stop,
                },
        } => {
            let path = "/api/v1/cluster/rebalance";
            let answer = if *status {
                client.get(&format!("{path}?threshold={threshold}"))?
            } else if *stop {
                client.delete(path)?
            } else {
                let body = json!({ "rate": rate, "threshold": threshold });
                client.post(path, Some(&body))?
            };
            Ok(if json {
                pretty(&answer)
            } else {
                render_rebalance(&answer)
            })
        }
        CtlCommand::Rlog {
            action: RlogAction::Status,
        } => {
            let status = client.get("/api/v1/rlog")?;
            Ok(if json {
                pretty(&status)
            } else {
                render_rlog(&status)
            })
        }
        CtlCommand::Storage {
            action: StorageAction::Status,
        } => {
            let status = client.get("/api/v1/storage")?;
            Ok(if json {
                pretty(&status)
            } else {
                crate::storage::render(&status)
            })
        }
        CtlCommand::Clients { action } => manage::clients(&client, action, json),
        CtlCommand::Sessions { action } => manage::sessions(&client, action, json),
        CtlCommand::Subs { action } => manage::subs(&client, action, json),
        CtlCommand::Retained { action } => manage::retained(&client, action, json),
        CtlCommand::Publish(args) => manage::publish(&client, args, json),
        CtlCommand::Trace { action } => manage::trace(&client, action, json),
        CtlCommand::ApiKey { .. } => bail!("ctl api-key works on api.keys_file, not the API"),
    }
}

/// A blocking HTTP client for one node's API.
struct Client {
    api: String,
    base: String,
    agent: ureq::Agent,
    authorization: Option<String>,
}

impl Client {
    fn new(endpoint: &Endpoint, api_key: Option<&str>) -> anyhow::Result<Self> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_millis(REQUEST_TIMEOUT_MS)))
            .timeout_connect(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)));
        if endpoint.https {
            config = config.tls_config(tls_config(endpoint.ca_file.as_deref())?);
        }
        Ok(Self {
            api: endpoint.addr.clone(),
            base: endpoint.base_url(),
            agent: config.build().into(),
            authorization: api_key
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(|k| format!("Bearer {k}")),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        let mut request = self.agent.get(&self.url(path));
        if let Some(auth) = &self.authorization {
            request = request.header("authorization", auth);
        }
        let answer = request.call();
        self.answer("GET", path, answer)
    }

    fn delete(&self, path: &str) -> anyhow::Result<Value> {
        let mut request = self.agent.delete(&self.url(path));
        if let Some(auth) = &self.authorization {
            request = request.header("authorization", auth);
        }
        let answer = request.call();
        self.answer("DELETE", path, answer)
    }

    fn post(&self, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut request = self.agent.post(&self.url(path));
        if let Some(auth) = &self.authorization {
            request = request.header("authorization", auth);
        }
        let answer = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .send(body.to_string()),
            None => request.send_empty(),
        };
        self.answer("POST", path, answer)
    }

    /// The JSON body of a 2xx answer; otherwise an error with the API's `error` text.
    fn answer(
        &self,
        method: &str,
        path: &str,
        answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let mut response = answer.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the management API at {}: {e} (is the node running with api.listen \
                 = \"{}\"? give another address with --api HOST:PORT)",
                self.api,
                self.api
            )
        })?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("{method} {path} at {}: reading the answer", self.api))?;
        let body: Option<Value> = serde_json::from_str(&text).ok();
        if !status.is_success() {
            let why = body
                .as_ref()
                .and_then(|b| b.get("error"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or(text);
            let hint = if status == 401 {
                if self.authorization.is_some() {
                    " (the key given with --api-key / SHARDMQ_API_KEY is not in that node's \
                     api.keys_file)"
                } else {
                    " (give a key with --api-key KEY or SHARDMQ_API_KEY; make one with \
                     `shardmq ctl api-key create` on the node's host)"
                }
            } else {
                ""
            };
            bail!("{method} {path} at {}: {status}: {why}{hint}", self.api);
        }
        body.with_context(|| format!("{method} {path} at {}: the answer is not JSON", self.api))
    }
}

/// TLS for an HTTPS API: rustls (ring), trusting the certificates of `ca_file`.
pub(crate) fn tls_config(ca_file: Option<&Path>) -> anyhow::Result<ureq::tls::TlsConfig> {
    use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig};
    let Some(ca_file) = ca_file else {
        bail!("an HTTPS API needs a CA to trust: give --cacert FILE (or SHARDMQ_API_CACERT)");
    };
    let pem = std::fs::read(ca_file)
        .with_context(|| format!("--cacert: reading {}", ca_file.display()))?;
    let mut certs = Vec::new();
    for item in parse_pem(&pem) {
        if let PemItem::Certificate(cert) =
            item.with_context(|| format!("--cacert: {}", ca_file.display()))?
        {
            certs.push(cert);
        }
    }
    anyhow::ensure!(
        !certs.is_empty(),
        "--cacert: no certificate in {}",
        ca_file.display()
    );
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::new_with_certs(&certs))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build())
}

/// The elements of the array `value[key]` (none when it is not an array).
fn items<'a>(value: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    value
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// `ctl node evacuate`'s answer: the state, then the figures and where clients went.
fn render_evacuation(answer: &Value) -> String {
    let mut out = String::new();
    let node = cell(answer.get("node"));
    let total = cell(answer.get("evacuated_total"));
    let e = answer.get("evacuation").filter(|e| !e.is_null());
    let Some(e) = e else {
        let _ = writeln!(out, "node {node}: not evacuating (never since it started)");
        return out;
    };
    let state = e.get("state").and_then(Value::as_str).unwrap_or("-");
    let to = match e.get("to").and_then(Value::as_array) {
        Some(ids) => ids
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(","),
        None => "any other node".to_owned(),
    };
    let _ = writeln!(out, "node {node}: {state}");
    let _ = writeln!(
        out,
        "rate {}/s to {to}, started {}, {} ms ago",
        cell(e.get("rate")),
        cell(e.get("started")),
        cell(e.get("elapsed_ms"))
    );
    let _ = writeln!(
        out,
        "sent {} (since start-up {total}), connections left {}",
        cell(e.get("sent")),
        cell(e.get("left"))
    );
    let sent_to = e.get("sent_to").and_then(Value::as_object);
    let mut rows = Vec::new();
    for t in items(e, "targets") {
        let id = cell(t.get("node"));
        let sent = sent_to
            .and_then(|m| m.get(&id))
            .map_or("0".to_owned(), |v| v.to_string());
        rows.push(vec![
            id,
            cell(t.get("address")),
            cell(t.get("connections")),
            sent,
        ]);
    }
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table(&["NODE", "ADDRESS", "CONNECTIONS", "SENT"], &rows));
    }
    out
}

/// `ctl cluster rebalance`'s answers: the plan, each node's part, or what was stopped.
fn render_rebalance(answer: &Value) -> String {
    let mut out = String::new();
    if let Some(stopped) = answer.get("stopped").and_then(Value::as_array) {
        let ids: Vec<String> = stopped.iter().map(Value::to_string).collect();
        let _ = match ids.is_empty() {
            true => writeln!(out, "no rebalance was running"),
            false => writeln!(out, "rebalance stopped on node(s) {}", ids.join(",")),
        };
        return out;
    }
    let mean = answer.get("mean").and_then(Value::as_f64).unwrap_or(0.0);
    let band = answer.get("band").and_then(Value::as_f64).unwrap_or(0.0);
    let even = answer.get("even").and_then(Value::as_bool).unwrap_or(false);
    let _ = writeln!(
        out,
        "{} (mean {mean:.1} connections, even within ±{band:.1}: {}%)",
        if even { "even" } else { "uneven" },
        cell(answer.get("threshold"))
    );
    if let Some(moves) = answer.get("moves").and_then(Value::as_object) {
        for (from, to) in moves {
            for (target, n) in to.as_object().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "moving {n} client(s) from node {from} to node {target}"
                );
            }
        }
        if let Some(failed) = answer.get("failed").and_then(Value::as_object) {
            for (node, why) in failed {
                let _ = writeln!(out, "node {node} did not start: {}", cell(Some(why)));
            }
        }
        if !even {
            let _ = writeln!(out, "rate {}/s for the cluster", cell(answer.get("rate")));
        }
    }
    let mut rows = Vec::new();
    for n in items(answer, "nodes") {
        let run = n.get("run").filter(|r| !r.is_null());
        rows.push(vec![
            cell(n.get("node")),
            cell(n.get("address")),
            cell(n.get("connections")),
            run.map_or("-".to_owned(), |r| {
                format!("{} {}", cell(r.get("kind")), cell(r.get("state")))
            }),
            run.map_or("-".to_owned(), |r| cell(r.get("sent"))),
        ]);
    }
    if !rows.is_empty() && answer.get("moves").is_none() {
        out.push('\n');
        out.push_str(&table(
            &["NODE", "ADDRESS", "CONNECTIONS", "RUN", "SENT"],
            &rows,
        ));
    }
    out
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

/// A JSON field as a table cell: strings as they are, `null` and `""` as `-`.
fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) if s.is_empty() => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Left-aligned columns, two spaces apart, no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<width$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `ctl cluster status` as text.
pub fn render_cluster(status: &Value) -> String {
    let leader = status.get("leader").and_then(Value::as_u64);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mode: {}  node: {} ({})  role: {}  leader: {}",
        cell(status.get("mode")),
        cell(status.get("node")),
        cell(status.get("node_name")),
        cell(status.get("role")).to_lowercase(),
        leader.map_or("none known".to_owned(), |l| l.to_string()),
    );
    let _ = writeln!(
        out,
        "routes: {}  sessions: {}",
        cell(status.get("routes")),
        cell(status.get("sessions"))
    );
    out.push('\n');
    let rows: Vec<Vec<String>> = status
        .get("members")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let node = m.get("node").and_then(Value::as_u64);
            vec![
                cell(m.get("node")),
                cell(m.get("role")).to_lowercase(),
                cell(m.get("addr")),
                cell(m.get("api")),
                cell(m.get("status")),
                if node.is_some() && node == leader {
                    "*".to_owned()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &["NODE", "ROLE", "ADDR", "API", "STATUS", "LEADER"],
        &rows,
    ));
    out
}

/// `ctl rlog status` as text.
pub fn render_rlog(status: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node: {}  role: {}  leader: {}",
        cell(status.get("node")),
        cell(status.get("role")).to_lowercase(),
        match status.get("leader").and_then(Value::as_u64) {
            Some(l) => l.to_string(),
            None => "none known".to_owned(),
        }
    );
    let shards = status
        .get("shards")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if shards.is_empty() {
        out.push_str("no RLOG shards on this node (standalone, or the cluster is starting)\n");
        return out;
    }
    out.push('\n');
    let fields = [
        "shard",
        "state",
        "seq",
        "lag",
        "replicants",
        "pending",
        "bootstrap_time_ms",
        "bootstrap_keys",
        "replay_queue_len",
        "upstream",
    ];
    let rows: Vec<Vec<String>> = shards
        .iter()
        .map(|s| fields.iter().map(|f| cell(s.get(*f))).collect())
        .collect();
    out.push_str(&table(
        &[
            "SHARD",
            "STATE",
            "SEQ",
            "LAG",
            "REPLICANTS",
            "PENDING",
            "BOOTSTRAP_TIME_MS",
            "KEYS",
            "REPLAY_QUEUE",
            "UPSTREAM",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn api_address_defaults_to_api_listen_on_loopback() {
        let cfg = |listen: &str| {
            let listen = listen.to_owned();
            move || {
                Ok(ApiConfig {
                    listen,
                    ..ApiConfig::default()
                })
            }
        };
        let addr = |given, load| endpoint(given, None, load).map(|e| e.base_url());
        assert_eq!(
            addr(None, cfg("127.0.0.1:18083")).unwrap(),
            "http://127.0.0.1:18083"
        );
        assert_eq!(
            addr(None, cfg("0.0.0.0:9000")).unwrap(),
            "http://127.0.0.1:9000"
        );
        assert_eq!(addr(None, cfg("[::]:9000")).unwrap(), "http://[::1]:9000");
        assert_eq!(
            addr(Some("http://node2:18083/"), cfg("")).unwrap(),
            "http://node2:18083"
        );
        assert_eq!(
            addr(Some("https://node2:18083"), cfg("")).unwrap(),
            "https://node2:18083"
        );
        let err = addr(None, cfg("")).unwrap_err().to_string();
        assert!(err.contains("api.listen") && err.contains("--api"), "{err}");

        // HTTPS from the configuration trusts its certificate unless told otherwise.
        let tls = || {
            Ok(ApiConfig {
                listen: "127.0.0.1:1".into(),
                tls_cert_file: "/etc/c.pem".into(),
                tls_key_file: "/etc/k.pem".into(),
                ..ApiConfig::default()
            })
        };
        let e = endpoint(None, None, tls).unwrap();
        assert!(e.https);
        assert_eq!(e.ca_file.as_deref(), Some(Path::new("/etc/c.pem")));
        let e = endpoint(None, Some(Path::new("ca.pem")), tls).unwrap();
        assert_eq!(e.ca_file.as_deref(), Some(Path::new("ca.pem")));
    }

    #[test]
    fn tables_are_aligned() {
        let text = table(
            &["A", "LONGER"],
            &[
                vec!["wide cell".into(), "1".into()],
                vec!["x".into(), "".into()],
            ],
        );
        assert_eq!(text, "A          LONGER\nwide cell  1\nx\n");
    }

    #[test]
    fn evacuation_status_reads_as_lines_and_a_table() {
        let text = render_evacuation(&json!({
            "node": 1, "evacuating": true, "evacuated_total": 7,
            "evacuation": {
                "state": "evacuating", "rate": 50, "to": [2], "started": "2026-12-03T12:00:00Z",
                "elapsed_ms": 140, "sent": 7, "left": 3, "sent_to": {"2": 7},
                "targets": [{"node": 2, "address": "127.0.0.2:1883", "connections": 9}]
            }
        }));
        assert_eq!(
            text,
            "node 1: evacuating\n\
             rate 50/s to 2, started 2026-12-03T12:00:00Z, 140 ms ago\n\
             sent 7 (since start-up 7), connections left 3\n\
             \n\
             NODE  ADDRESS         CONNECTIONS  SENT\n\
             2     127.0.0.2:1883  9            7\n"
        );
        let never =
            render_evacuation(&json!({"node": 3, "evacuated_total": 0, "evacuation": null}));
        assert_eq!(never, "node 3: not evacuating (never since it started)\n");
    }

    #[test]
    fn rebalance_answers_read_as_lines_and_a_table() {
        let started = render_rebalance(&json!({
            "even": false, "mean": 50.0, "band": 5.0, "threshold": 10, "rate": 100,
            "moves": {"1": {"2": 50}}, "started": [1], "failed": {}, "nodes": []
        }));
        assert_eq!(
            started,
            "uneven (mean 50.0 connections, even within ±5.0: 10%)\n\
             moving 50 client(s) from node 1 to node 2\n\
             rate 100/s for the cluster\n"
        );
        let status = render_rebalance(&json!({
            "even": true, "mean": 5.0, "band": 1.0, "threshold": 10,
            "nodes": [
                {"node": 1, "address": "a:1883", "connections": 5,
                 "run": {"kind": "rebalance", "state": "done", "sent": 5}},
                {"node": 2, "address": "b:1883", "connections": 5, "run": null}
            ]
        }));
        assert_eq!(
            status,
            "even (mean 5.0 connections, even within ±1.0: 10%)\n\
             \n\
             NODE  ADDRESS  CONNECTIONS  RUN             SENT\n\
             1     a:1883   5            rebalance done  5\n\
             2     b:1883   5            -               -\n"
        );
        assert_eq!(
            render_rebalance(&json!({"stopped": []})),
            "no rebalance was running\n"
        );
    }

    #[test]
    fn cluster_status_marks_the_leader() {
        let text = render_cluster(&json!({
            "mode": "cluster", "node": 1, "node_name": "a", "role": "core", "leader": 2,
            "routes": 10, "sessions": 3,
            "members": [
                {"node": 1, "addr": "10.0.0.1:4370", "role": "core", "api": "10.0.0.1:18083", "status": "up"},
                {"node": 2, "addr": "10.0.0.2:4370", "role": "core", "api": "", "status": "up"},
            ]
        }));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("leader: 2"), "{text}");
        assert!(lines[1].contains("routes: 10"), "{text}");
        assert_eq!(
            lines[3],
            "NODE  ROLE  ADDR           API             STATUS  LEADER"
        );
        assert_eq!(lines[4], "1     core  10.0.0.1:4370  10.0.0.1:18083  up");
        assert_eq!(
            lines[5],
            "2     core  10.0.0.2:4370  -               up      *"
        );
    }

    #[test]
    fn rlog_status_lists_shards() {
        let text = render_rlog(&json!({
            "node": 3, "role": "replicant", "leader": null,
            "shards": [{"shard": "route", "state": "bootstrap", "seq": 5, "lag": 7,
                "replicants": 0, "pending": 0, "bootstrap_time_ms": 12, "bootstrap_keys": 100,
                "replay_queue_len": 4, "bootstraps": 1, "resumes": 0, "upstream": 1}]
        }));
        assert!(
            text.starts_with("node: 3  role: replicant  leader: none known\n"),
            "{text}"
        );
        assert!(text.contains("SHARD  STATE      SEQ"), "{text}");
        assert!(text.contains("route  bootstrap  5    7"), "{text}");
        let empty = render_rlog(&json!({"node": 1, "role": "core", "leader": 1, "shards": []}));
        assert!(empty.contains("no RLOG shards"), "{empty}");
    }
}
