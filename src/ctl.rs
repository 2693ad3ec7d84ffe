//! `shardmq ctl`: asks a node's management API (`api.listen`, see [`crate::api`]) about the
//! cluster and prints the answer as aligned tables, or as the API's JSON with `--json`.
//!
//! ```text
//! shardmq ctl cluster status
//! shardmq ctl cluster join 2@10.0.0.2:4370
//! shardmq ctl cluster leave
//! shardmq ctl rlog status --json
//! shardmq -c /etc/shardmq.toml ctl rlog status      # the API address from that file
//! shardmq ctl --api 10.0.0.3:18083 cluster status   # any node
//! ```

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::config::ApiConfig;

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
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub api: Option<String>,
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
}

/// `shardmq ctl rlog <action>`.
#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum RlogAction {
    /// Per RLOG shard: state, sequence, lag, replicants, bootstrap figures.
    Status,
}

/// The API address `ctl` uses: `--api` if given, else `api.listen` of the configuration that
/// `load` reads (a wildcard address is asked on loopback).
pub fn api_address(
    given: Option<&str>,
    load: impl FnOnce() -> anyhow::Result<ApiConfig>,
) -> anyhow::Result<String> {
    if let Some(api) = given {
        let api = api.trim();
        let api = api
            .strip_prefix("http://")
            .unwrap_or(api)
            .trim_end_matches('/');
        anyhow::ensure!(!api.is_empty(), "--api: empty address");
        return Ok(api.to_owned());
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
    Ok(SocketAddr::new(ip, addr.port()).to_string())
}

/// Runs `args` against the API at `api` (HOST:PORT); returns what to print.
pub fn run(api: &str, args: &CtlArgs) -> anyhow::Result<String> {
    let client = Client::new(api);
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
    }
}

/// A blocking HTTP client for one node's API.
struct Client {
    api: String,
    agent: ureq::Agent,
}

impl Client {
    fn new(api: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_millis(REQUEST_TIMEOUT_MS)))
            .timeout_connect(Some(Duration::from_millis(CONNECT_TIMEOUT_MS)))
            .build()
            .into();
        Self {
            api: api.to_owned(),
            agent,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        let answer = self.agent.get(&self.url(path)).call();
        self.answer("GET", path, answer)
    }

    fn post(&self, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let request = self.agent.post(&self.url(path));
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
            bail!("{method} {path} at {}: {status}: {why}", self.api);
        }
        body.with_context(|| format!("{method} {path} at {}: the answer is not JSON", self.api))
    }
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
            move || Ok(ApiConfig { listen })
        };
        assert_eq!(
            api_address(None, cfg("127.0.0.1:18083")).unwrap(),
            "127.0.0.1:18083"
        );
        assert_eq!(
            api_address(None, cfg("0.0.0.0:9000")).unwrap(),
            "127.0.0.1:9000"
        );
        assert_eq!(api_address(None, cfg("[::]:9000")).unwrap(), "[::1]:9000");
        assert_eq!(
            api_address(Some("http://node2:18083/"), cfg("")).unwrap(),
            "node2:18083"
        );
        let err = api_address(None, cfg("")).unwrap_err().to_string();
        assert!(err.contains("api.listen") && err.contains("--api"), "{err}");
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
