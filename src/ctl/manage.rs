//! `shardmq ctl clients|sessions|subs|retained|publish|trace`: the management API of
//! docs/api.md from the command line. Lists print one page (`--limit`, default 100) and, on
//! stderr, the cursor of the next; `--all` follows the cursors to the end.
//!
//! ```text
//! shardmq ctl clients list --clientid sensor
//! shardmq ctl clients show sensor-1
//! shardmq ctl clients kick sensor-1
//! shardmq ctl sessions list --connected false
//! shardmq ctl sessions delete sensor-1
//! shardmq ctl subs list --match a/b/c
//! shardmq ctl retained list --topic 'config/#'
//! shardmq ctl retained delete config/x
//! shardmq ctl publish a/b 'hello' --qos 1 --retain
//! shardmq ctl trace client sensor-1 --seconds 30
//! ```

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};

use super::{cell, pretty, table, Client};
use crate::api::manage::encode;

/// Pages `--all` follows at most.
pub const PAGES_MAX: usize = 10_000;

/// How often `ctl trace` asks for new lines.
pub const TRACE_POLL: Duration = Duration::from_millis(500);

/// Paging options of every list.
#[derive(Debug, Clone, clap::Args)]
pub struct Paging {
    /// Items per page (1–1000).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Start at this cursor (the `next` of an earlier page).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Follow the cursors to the last page.
    #[arg(long)]
    pub all: bool,
    /// Only this node's (a node id).
    #[arg(long)]
    pub node: Option<u64>,
}

/// `shardmq ctl clients <action>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClientsAction {
    /// Connected clients, cluster-wide.
    List {
        /// Client id substring.
        #[arg(long)]
        clientid: Option<String>,
        /// Exact user name.
        #[arg(long)]
        username: Option<String>,
        /// Address substring.
        #[arg(long)]
        address: Option<String>,
        /// Paging.
        #[command(flatten)]
        paging: Paging,
    },
    /// One client, with its subscriptions.
    Show {
        /// Client identifier.
        clientid: String,
    },
    /// Disconnect a client (v5: DISCONNECT 0x98 Administrative action); its session stays.
    Kick {
        /// Client identifier.
        clientid: String,
    },
}

/// `shardmq ctl sessions <action>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SessionsAction {
    /// Sessions, offline persistent ones included.
    List {
        /// Client id substring.
        #[arg(long)]
        clientid: Option<String>,
        /// Only connected (true) or offline (false) sessions.
        #[arg(long)]
        connected: Option<bool>,
        /// Paging.
        #[command(flatten)]
        paging: Paging,
    },
    /// End a session: its client is disconnected, its subscriptions and messages discarded.
    Delete {
        /// Client identifier.
        clientid: String,
    },
}

/// `shardmq ctl subs <action>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SubsAction {
    /// Subscriptions, cluster-wide.
    List {
        /// Only this client's.
        #[arg(long)]
        clientid: Option<String>,
        /// Only this filter.
        #[arg(long)]
        filter: Option<String>,
        /// Only filters matching this topic.
        #[arg(long = "match", value_name = "TOPIC")]
        matching: Option<String>,
        /// Paging.
        #[command(flatten)]
        paging: Paging,
    },
}

/// `shardmq ctl retained <action>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum RetainedAction {
    /// Retained messages (topics, QoS, sizes).
    List {
        /// An MQTT filter (default `#`).
        #[arg(long)]
        topic: Option<String>,
        /// Paging.
        #[command(flatten)]
        paging: Paging,
    },
    /// One retained message with its payload.
    Show {
        /// The topic.
        topic: String,
    },
    /// Delete a retained message on every node.
    Delete {
        /// The topic.
        topic: String,
    },
}

/// `shardmq ctl publish`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct PublishArgs {
    /// Topic name.
    pub topic: String,
    /// Payload (text; base64 with --base64).
    pub payload: String,
    /// QoS 0, 1 or 2.
    #[arg(long, default_value_t = 0)]
    pub qos: u8,
    /// Retain it.
    #[arg(long)]
    pub retain: bool,
    /// The payload is base64.
    #[arg(long)]
    pub base64: bool,
}

/// `shardmq ctl trace <what>`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TraceAction {
    /// Print one client's packets as they pass, on every node, until --seconds or
    /// --max-packets, then stop the trace.
    Client {
        /// Client identifier.
        clientid: String,
        /// How long (1–600).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Most packets per shard (1–10000).
        #[arg(long, default_value_t = 1000)]
        max_packets: usize,
    },
}

/// A query string from `pairs` whose value is set.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let set: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!("?{}", set.join("&"))
    }
}

/// The items of `path` with `filters` and `paging`: one page, or every page with `--all`.
fn list(
    client: &Client,
    path: &str,
    filters: &[(&str, Option<String>)],
    paging: &Paging,
) -> anyhow::Result<(Vec<Value>, Option<String>)> {
    let mut items = Vec::new();
    let mut cursor = paging.cursor.clone();
    for _ in 0..PAGES_MAX {
        let mut pairs: Vec<(&str, Option<String>)> = filters.to_vec();
        pairs.push(("limit", Some(paging.limit.to_string())));
        pairs.push(("node", paging.node.map(|n| n.to_string())));
        pairs.push(("cursor", cursor.clone()));
        let page = client.get(&format!("{path}{}", query(&pairs)))?;
        if let Some(data) = page["data"].as_array() {
            items.extend(data.iter().cloned());
        }
        if let Some(down) = page["unreachable"].as_array().filter(|d| !d.is_empty()) {
            eprintln!("note: nodes that did not answer: {down:?}");
        }
        cursor = page["next"].as_str().map(str::to_owned);
        if !paging.all || cursor.is_none() {
            return Ok((items, cursor));
        }
    }
    anyhow::bail!("more than {PAGES_MAX} pages")
}

fn note_more(next: &Option<String>) {
    if let Some(c) = next {
        eprintln!("more: --cursor {c} (or --all)");
    }
}

fn sub_rows(subs: &[Value], with_client: bool) -> Vec<Vec<String>> {
    subs.iter()
        .map(|s| {
            let mut row = Vec::new();
            if with_client {
                row.push(cell(s.get("clientid")));
                row.push(cell(s.get("node")));
            }
            row.extend([
                cell(s.get("filter")),
                cell(s.get("qos")),
                cell(s.get("no_local")),
                cell(s.get("retain_as_published")),
                cell(s.get("retain_handling")),
            ]);
            row
        })
        .collect()
}

/// `DELETE path`: the API's JSON with `--json`, else `said`.
fn delete(client: &Client, path: &str, json: bool, said: String) -> anyhow::Result<String> {
    let answer = client.delete(path)?;
    Ok(if json { pretty(&answer) } else { said })
}

/// `ctl clients ...`.
pub(super) fn clients(
    client: &Client,
    action: &ClientsAction,
    json: bool,
) -> anyhow::Result<String> {
    match action {
        ClientsAction::List {
            clientid,
            username,
            address,
            paging,
        } => {
            let filters = [
                ("clientid", clientid.clone()),
                ("username", username.clone()),
                ("address", address.clone()),
            ];
            let (items, next) = list(client, "/api/v1/clients", &filters, paging)?;
            if json {
                return Ok(pretty(&json!({ "data": items, "next": next })));
            }
            note_more(&next);
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|c| {
                    [
                        "clientid",
                        "node",
                        "shard",
                        "address",
                        "protocol",
                        "username",
                        "keepalive",
                        "connected_at",
                        "inflight",
                        "queued",
                        "subscriptions",
                    ]
                    .iter()
                    .map(|k| cell(c.get(*k)))
                    .collect()
                })
                .collect();
            Ok(table(
                &[
                    "CLIENT ID",
                    "NODE",
                    "SHARD",
                    "ADDRESS",
                    "PROTOCOL",
                    "USERNAME",
                    "KEEPALIVE",
                    "CONNECTED AT",
                    "INFLIGHT",
                    "QUEUED",
                    "SUBS",
                ],
                &rows,
            ))
        }
        ClientsAction::Show { clientid } => {
            let c = client.get(&format!("/api/v1/clients/{}", encode(clientid)))?;
            if json {
                return Ok(pretty(&c));
            }
            let mut out = String::new();
            for key in [
                "clientid",
                "node",
                "shard",
                "address",
                "listener",
                "protocol",
                "username",
                "keepalive",
                "connected_at",
                "clean_start",
                "expiry_secs",
                "inflight",
                "queued",
            ] {
                out.push_str(&format!("{key:<13} {}\n", cell(c.get(key))));
            }
            let subs = c["subscriptions_list"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            out.push('\n');
            out.push_str(&table(
                &[
                    "FILTER",
                    "QOS",
                    "NO LOCAL",
                    "RETAIN AS PUBLISHED",
                    "RETAIN HANDLING",
                ],
                &sub_rows(&subs, false),
            ));
            Ok(out)
        }
        ClientsAction::Kick { clientid } => delete(
            client,
            &format!("/api/v1/clients/{}", encode(clientid)),
            json,
            format!("kicked {clientid}\n"),
        ),
    }
}

/// `ctl sessions ...`.
pub(super) fn sessions(
    client: &Client,
    action: &SessionsAction,
    json: bool,
) -> anyhow::Result<String> {
    match action {
        SessionsAction::List {
            clientid,
            connected,
            paging,
        } => {
            let filters = [
                ("clientid", clientid.clone()),
                ("connected", connected.map(|c| c.to_string())),
            ];
            let (items, next) = list(client, "/api/v1/sessions", &filters, paging)?;
            if json {
                return Ok(pretty(&json!({ "data": items, "next": next })));
            }
            note_more(&next);
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|s| {
                    [
                        "clientid",
                        "node",
                        "shard",
                        "connected",
                        "expiry_secs",
                        "expires_in_secs",
                        "subscriptions",
                        "inflight",
                        "queued",
                    ]
                    .iter()
                    .map(|k| cell(s.get(*k)))
                    .collect()
                })
                .collect();
            Ok(table(
                &[
                    "CLIENT ID",
                    "NODE",
                    "SHARD",
                    "CONNECTED",
                    "EXPIRY",
                    "EXPIRES IN",
                    "SUBS",
                    "INFLIGHT",
                    "QUEUED",
                ],
                &rows,
            ))
        }
        SessionsAction::Delete { clientid } => delete(
            client,
            &format!("/api/v1/sessions/{}", encode(clientid)),
            json,
            format!("deleted the session of {clientid}\n"),
        ),
    }
}

/// `ctl subs ...`.
pub(super) fn subs(client: &Client, action: &SubsAction, json: bool) -> anyhow::Result<String> {
    let SubsAction::List {
        clientid,
        filter,
        matching,
        paging,
    } = action;
    let filters = [
        ("clientid", clientid.clone()),
        ("filter", filter.clone()),
        ("match", matching.clone()),
    ];
    let (items, next) = list(client, "/api/v1/subscriptions", &filters, paging)?;
    if json {
        return Ok(pretty(&json!({ "data": items, "next": next })));
    }
    note_more(&next);
    Ok(table(
        &[
            "CLIENT ID",
            "NODE",
            "FILTER",
            "QOS",
            "NO LOCAL",
            "RETAIN AS PUBLISHED",
            "RETAIN HANDLING",
        ],
        &sub_rows(&items, true),
    ))
}

/// `ctl retained ...`.
pub(super) fn retained(
    client: &Client,
    action: &RetainedAction,
    json: bool,
) -> anyhow::Result<String> {
    match action {
        RetainedAction::List { topic, paging } => {
            let (items, next) = list(
                client,
                "/api/v1/retained",
                &[("topic", topic.clone())],
                paging,
            )?;
            if json {
                return Ok(pretty(&json!({ "data": items, "next": next })));
            }
            note_more(&next);
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|r| {
                    ["topic", "qos", "payload_bytes"]
                        .iter()
                        .map(|k| cell(r.get(*k)))
                        .collect()
                })
                .collect();
            Ok(table(&["TOPIC", "QOS", "BYTES"], &rows))
        }
        RetainedAction::Show { topic } => {
            let r = client.get(&format!("/api/v1/retained/{}", encode(topic)))?;
            if json {
                return Ok(pretty(&r));
            }
            let payload = match r["payload"].as_str() {
                Some(text) => text.to_owned(),
                None => format!("(base64) {}", cell(r.get("payload_base64"))),
            };
            Ok(format!(
                "topic    {}\nqos      {}\nbytes    {}\npayload  {payload}\n",
                cell(r.get("topic")),
                cell(r.get("qos")),
                cell(r.get("payload_bytes"))
            ))
        }
        RetainedAction::Delete { topic } => delete(
            client,
            &format!("/api/v1/retained/{}", encode(topic)),
            json,
            format!("deleted the retained message of {topic}\n"),
        ),
    }
}

/// `ctl publish`.
pub(super) fn publish(client: &Client, args: &PublishArgs, json: bool) -> anyhow::Result<String> {
    let body = json!({
        "topic": args.topic,
        "payload": args.payload,
        "encoding": if args.base64 { "base64" } else { "plain" },
        "qos": args.qos,
        "retain": args.retain,
    });
    let answer = client.post("/api/v1/publish", Some(&body))?;
    Ok(if json {
        pretty(&answer)
    } else {
        format!("published to {}\n", args.topic)
    })
}

/// `ctl trace client ID`: starts the trace, prints lines as they come (to stdout, at once),
/// stops it at the end. Bounded by `seconds` (plus one poll).
pub(super) fn trace(client: &Client, action: &TraceAction, json: bool) -> anyhow::Result<String> {
    use std::io::Write as _;
    let TraceAction::Client {
        clientid,
        seconds,
        max_packets,
    } = action;
    let path = format!("/api/v1/trace/{}", encode(clientid));
    client.post(
        &path,
        Some(&json!({ "seconds": seconds, "max_packets": max_packets })),
    )?;
    eprintln!("tracing {clientid} for {seconds} s (at most {max_packets} packets per shard)");
    let until = Instant::now() + Duration::from_secs(*seconds) + TRACE_POLL;
    let mut after: u64 = 0;
    let mut stdout = std::io::stdout().lock();
    loop {
        let page = client.get(&format!("{path}?after_us={after}"))?;
        for line in page["lines"].as_array().cloned().unwrap_or_default() {
            let text = if json {
                line.to_string()
            } else {
                format!(
                    "{} node {} shard {} {:<3} {}",
                    cell(line.get("at")),
                    cell(line.get("node")),
                    cell(line.get("shard")),
                    cell(line.get("dir")),
                    cell(line.get("packet"))
                )
            };
            writeln!(stdout, "{text}").context("writing to stdout")?;
        }
        stdout.flush().ok();
        after = page["next"].as_u64().unwrap_or(after);
        let active = page["active"].as_bool().unwrap_or(false);
        if Instant::now() >= until || (!active && after > 0) {
            break;
        }
        std::thread::sleep(TRACE_POLL);
    }
    let _ = client.delete(&path);
    Ok(String::new())
}
