//! `/api/v1/{overview,clients,sessions,subscriptions,topics,retained,publish,alarms,trace}`:
//! seeing and acting on what the shards hold, for the whole cluster (docs/api.md).
//!
//! The shards answer through [`Management`] (each call bounded work on the shard's thread);
//! the other nodes through their own API (`?local=true`), asked in node-id order with the
//! caller's `Authorization` header. Lists are paged by opaque cursors naming node, shard and
//! slab key, so a page never costs more than its size anywhere.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use shardmq_shards::mgmt::{
    self, protocol_name, AskError, ClientFilter, ClientInfo, Reply, Request, SessionInfo,
    SubscriptionInfo, TraceLine, MAX_PAGE,
};
use shardmq_shards::{rfc3339, Management};

use super::{ApiError, Shared};

/// How long a peer node has to answer a fanned-out request.
pub const PEER_TIMEOUT_MS: u64 = 5_000;

/// Shard calls one API request makes at most while it fills a page of a filtered list; the
/// page then ends early, with a cursor.
pub const CALLS_PER_PAGE_MAX: usize = 64;

/// Default page size.
pub const PAGE_DEFAULT: usize = 100;

/// The management routes, merged into the API's router.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/clients", get(clients))
        .route("/api/v1/clients/{clientid}", get(client).delete(kick))
        .route("/api/v1/sessions", get(sessions))
        .route(
            "/api/v1/sessions/{clientid}",
            get(session).delete(delete_session),
        )
        .route("/api/v1/subscriptions", get(subscriptions))
        .route("/api/v1/topics", get(topics))
        .route("/api/v1/retained", get(retained))
        .route(
            "/api/v1/retained/{*topic}",
            get(retained_get).delete(retained_delete),
        )
        .route("/api/v1/publish", post(publish))
        .route("/api/v1/alarms", get(alarms))
        .route(
            "/api/v1/trace/{clientid}",
            post(trace_start).get(trace_read).delete(trace_stop),
        )
}

type Params = Query<HashMap<String, String>>;

// ---- the cluster around this node -----------------------------------------------------------

/// The running members with an API, other than this node, by id; `(id, api)`.
pub(super) async fn peers(state: &Shared) -> Vec<(u64, String)> {
    let Some(cluster) = &state.cluster else {
        return Vec::new();
    };
    let Ok(Ok(status)) = tokio::time::timeout(
        Duration::from_millis(super::STATUS_TIMEOUT_MS),
        cluster.cluster_status(),
    )
    .await
    else {
        return Vec::new();
    };
    let mut peers: Vec<(u64, String)> = status
        .members
        .into_iter()
        .filter(|m| m.node != status.node && !m.api.is_empty() && m.status != "stopped")
        .map(|m| (m.node, m.api))
        .collect();
    peers.sort();
    peers
}

/// This node's id: the cluster's view, or `cluster.node_id` standalone.
fn me(state: &Shared) -> u64 {
    state.node_id
}

/// Whether the request asks for this node only.
fn local_only(q: &HashMap<String, String>) -> bool {
    q.get("local").is_some_and(|v| v == "true" || v == "1")
}

/// A peer's answer to `method path_and_query`, as JSON with its status; errors are peers that
/// did not answer.
pub(super) async fn peer_call(
    tls: Option<ureq::tls::TlsConfig>,
    api: &str,
    method: &'static str,
    path_and_query: String,
    auth: Option<String>,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{api}{path_and_query}");
    tokio::task::spawn_blocking(move || {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_millis(PEER_TIMEOUT_MS)));
        if let Some(tls) = tls {
            config = config.tls_config(tls);
        }
        let agent: ureq::Agent = config.build().into();
        let answer = match method {
            "GET" => with_auth(agent.get(&url), &auth).call(),
            "DELETE" => with_auth(agent.delete(&url), &auth).call(),
            _ => {
                let r =
                    with_auth(agent.post(&url), &auth).header("content-type", "application/json");
                match body {
                    Some(b) => r.send(b.to_string()),
                    None => r.send_empty(),
                }
            }
        };
        let mut response = answer?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string()?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    })
    .await?
}

/// `GET path` on every peer at once (a dead peer costs one [`PEER_TIMEOUT_MS`], not one
/// each); the answers by node id.
pub(super) async fn get_peers(
    state: &Shared,
    auth: Option<String>,
    path: String,
) -> Vec<(u64, anyhow::Result<(u16, Value)>)> {
    let mut calls = tokio::task::JoinSet::new();
    for (node, api) in peers(state).await {
        let (tls, auth, path) = (state.peer_tls.clone(), auth.clone(), path.clone());
        calls.spawn(async move { (node, peer_call(tls, &api, "GET", path, auth, None).await) });
    }
    let mut answers = Vec::new();
    while let Some(joined) = calls.join_next().await {
        if let Ok(answer) = joined {
            answers.push(answer);
        }
    }
    answers.sort_by_key(|(node, _)| *node);
    answers
}

fn with_auth<B>(r: ureq::RequestBuilder<B>, auth: &Option<String>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => r.header("authorization", a),
        None => r,
    }
}

pub(super) fn authorization(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The query string `q` with `local=true` and the given replacements.
fn peer_query(path: &str, q: &HashMap<String, String>, set: &[(&str, Option<String>)]) -> String {
    let mut q = q.clone();
    q.insert("local".into(), "true".into());
    for (k, v) in set {
        match v {
            Some(v) => q.insert((*k).into(), v.clone()),
            None => q.remove(*k),
        };
    }
    let mut keys: Vec<&String> = q.keys().collect();
    keys.sort();
    let pairs: Vec<String> = keys
        .into_iter()
        .map(|k| format!("{}={}", encode(k), encode(&q[k])))
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

/// Percent-encodes everything but unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn management(state: &Shared) -> Result<&Arc<Management>, ApiError> {
    state.management.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this API serves no data plane".into(),
        )
    })
}

impl From<AskError> for ApiError {
    fn from(e: AskError) -> Self {
        let code = match e {
            AskError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            AskError::Gone(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(code, e.to_string())
    }
}

fn limit(q: &HashMap<String, String>) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(PAGE_DEFAULT),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(bad(format!("limit: a number from 1 to {MAX_PAGE}"))),
        },
    }
}

fn bad(why: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, why.into())
}

fn not_found(what: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no such {what}"))
}

// ---- cursors --------------------------------------------------------------------------------

/// Where a page of a per-shard list starts: node, shard and the key after which to go on
/// (`None`: the shard's start), plus a position within that key (subscriptions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cursor {
    node: u64,
    shard: usize,
    key: Option<usize>,
    pos: usize,
}

impl Cursor {
    fn start(node: u64) -> Cursor {
        Cursor {
            node,
            shard: 0,
            key: None,
            pos: 0,
        }
    }

    fn parse(text: &str) -> Result<Cursor, ApiError> {
        let parts: Vec<&str> = text.split('.').collect();
        let num = |s: &str| s.parse::<u64>().map_err(|_| bad("cursor: not one of ours"));
        match parts.as_slice() {
            [n, s, k, p] => Ok(Cursor {
                node: num(n)?,
                shard: num(s)? as usize,
                key: match *k {
                    "-" => None,
                    k => Some(num(k)? as usize),
                },
                pos: num(p)? as usize,
            }),
            _ => Err(bad("cursor: not one of ours")),
        }
    }

    fn text(&self) -> String {
        let key = self.key.map_or("-".to_string(), |k| k.to_string());
        format!("{}.{}.{key}.{}", self.node, self.shard, self.pos)
    }
}

/// What one shard call returns for a per-shard list: items and where the shard goes on.
struct ShardPage {
    items: Vec<Value>,
    /// `None`: the shard is done.
    next: Option<(usize, usize)>,
}

/// A per-shard list (clients, sessions, subscriptions) over this node and then the others:
/// fills up to `limit` items, in node, shard, key order.
async fn list_cluster<F>(
    state: &Shared,
    path: &str,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    ask: F,
) -> Result<Response, ApiError>
where
    F: Fn(usize, Option<(usize, usize)>, usize) -> Request,
{
    let limit = limit(q)?;
    let me = me(state);
    let only_node = match q.get("node") {
        Some(n) => Some(n.parse::<u64>().map_err(|_| bad("node: a node id"))?),
        None => None,
    };
    let peers = if local_only(q) {
        Vec::new()
    } else {
        peers(state).await
    };
    // The nodes in id order, this one among them.
    let mut nodes: Vec<(u64, Option<String>)> =
        peers.into_iter().map(|(n, a)| (n, Some(a))).collect();
    nodes.push((me, None));
    nodes.sort_by_key(|(n, _)| *n);
    nodes.retain(|(n, _)| only_node.is_none_or(|o| o == *n));
    let mut cursor = match q.get("cursor") {
        Some(c) => Cursor::parse(c)?,
        None => Cursor::start(nodes.first().map_or(me, |(n, _)| *n)),
    };
    let mut items: Vec<Value> = Vec::new();
    let mut unreachable: Vec<u64> = Vec::new();
    let mut calls = 0;
    let auth = authorization(headers);
    let mut next: Option<Cursor> = None;
    let first = cursor.node;
    for (node, api) in nodes.iter().filter(|(n, _)| *n >= first) {
        if *node != cursor.node {
            cursor = Cursor::start(*node);
        }
        match api {
            None => {
                let m = management(state)?;
                while cursor.shard < m.shards() {
                    if items.len() == limit || calls == CALLS_PER_PAGE_MAX {
                        next = Some(cursor);
                        break;
                    }
                    calls += 1;
                    let after = cursor.key.map(|k| (k, cursor.pos));
                    let page = shard_page(
                        m,
                        cursor.shard,
                        ask(cursor.shard, after, limit - items.len()),
                    )
                    .await?;
                    items.extend(page.items.into_iter().map(|mut v| {
                        v["node"] = json!(me);
                        v
                    }));
                    match page.next {
                        Some((key, pos)) => {
                            cursor.key = Some(key);
                            cursor.pos = pos;
                        }
                        None => {
                            cursor.shard += 1;
                            cursor.key = None;
                            cursor.pos = 0;
                        }
                    }
                }
            }
            Some(api) => {
                if items.len() == limit {
                    next = Some(cursor);
                    break;
                }
                let want = limit - items.len();
                let query = peer_query(
                    path,
                    q,
                    &[
                        ("limit", Some(want.to_string())),
                        (
                            "cursor",
                            (cursor != Cursor::start(*node)).then(|| cursor.text()),
                        ),
                        ("node", None),
                    ],
                );
                match peer_call(
                    state.peer_tls.clone(),
                    api,
                    "GET",
                    query,
                    auth.clone(),
                    None,
                )
                .await
                {
                    Ok((200, body)) => {
                        if let Some(data) = body["data"].as_array() {
                            items.extend(data.iter().cloned());
                        }
                        if let Some(c) = body["next"].as_str() {
                            next = Some(Cursor::parse(c)?);
                        }
                    }
                    Ok((status, body)) => {
                        tracing::warn!(node, status, answer = %body, "a peer refused a management list");
                        unreachable.push(*node);
                    }
                    Err(e) => {
                        tracing::warn!(node, error = %e, "a peer did not answer a management list");
                        unreachable.push(*node);
                    }
                }
            }
        }
        if next.is_some() {
            break;
        }
    }
    Ok(Json(json!({
        "data": items,
        "next": next.map(|c| c.text()),
        "unreachable": unreachable,
    }))
    .into_response())
}

async fn shard_page(m: &Management, shard: usize, request: Request) -> Result<ShardPage, ApiError> {
    Ok(match m.ask(shard, request).await? {
        Reply::Clients { items, next } => ShardPage {
            items: items.iter().map(client_json).collect(),
            next: next.map(|k| (k, 0)),
        },
        Reply::Sessions { items, next } => ShardPage {
            items: items.iter().map(session_json).collect(),
            next: next.map(|k| (k, 0)),
        },
        Reply::Subscriptions { items, next } => ShardPage {
            items: items.iter().map(subscription_json).collect(),
            next,
        },
        other => {
            return Err(ApiError::internal(anyhow::anyhow!(
                "unexpected answer {other:?}"
            )))
        }
    })
}

// ---- JSON -----------------------------------------------------------------------------------

fn client_json(c: &ClientInfo) -> Value {
    json!({
        "clientid": c.client_id,
        "username": c.username,
        "shard": c.shard,
        "address": c.address.map(|a| a.to_string()),
        "protocol": protocol_name(c.protocol),
        "keepalive": c.keep_alive,
        "connected_at": rfc3339(c.connected_at),
        "clean_start": c.clean_start,
        "expiry_secs": c.expiry_secs,
        "inflight": c.inflight,
        "queued": c.queued,
        "subscriptions": c.subscriptions,
        "listener": c.listener,
    })
}

fn session_json(s: &SessionInfo) -> Value {
    json!({
        "clientid": s.client_id,
        "shard": s.shard,
        "connected": s.connected,
        "expiry_secs": s.expiry_secs,
        "expires_in_secs": s.expires_in_secs,
        "subscriptions": s.subscriptions,
        "inflight": s.inflight,
        "queued": s.queued,
    })
}

fn subscription_json(s: &SubscriptionInfo) -> Value {
    json!({
        "clientid": s.client_id,
        "filter": s.filter,
        "qos": s.qos as u8,
        "no_local": s.no_local,
        "retain_as_published": s.retain_as_published,
        "retain_handling": s.retain_handling,
        "identifier": s.identifier,
    })
}

fn micros(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn trace_json(node: u64, shard: usize, l: &TraceLine) -> Value {
    json!({
        "node": node,
        "shard": shard,
        "seq": l.seq,
        "at": rfc3339(l.at),
        "at_us": micros(l.at),
        "dir": if l.inbound { "in" } else { "out" },
        "packet": l.packet,
    })
}

// ---- handlers -------------------------------------------------------------------------------

async fn clients(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let filter = ClientFilter {
        client_id: q.get("clientid").cloned().filter(|s| !s.is_empty()),
        username: q.get("username").cloned().filter(|s| !s.is_empty()),
        address: q.get("address").cloned().filter(|s| !s.is_empty()),
    };
    list_cluster(
        &state,
        "/api/v1/clients",
        &q,
        &headers,
        |_, after, limit| Request::Clients {
            after: after.map(|(k, _)| k),
            limit,
            filter: filter.clone(),
        },
    )
    .await
}

async fn sessions(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let client_id = q.get("clientid").cloned().filter(|s| !s.is_empty());
    let connected = match q.get("connected").map(String::as_str) {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(bad("connected: true or false")),
    };
    list_cluster(
        &state,
        "/api/v1/sessions",
        &q,
        &headers,
        |_, after, limit| Request::Sessions {
            after: after.map(|(k, _)| k),
            limit,
            client_id: client_id.clone(),
            connected,
        },
    )
    .await
}

async fn subscriptions(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let get = |k: &str| q.get(k).cloned().filter(|s| !s.is_empty());
    let (client_id, filter, matching) = (get("clientid"), get("filter"), get("match"));
    list_cluster(
        &state,
        "/api/v1/subscriptions",
        &q,
        &headers,
        |_, after, limit| Request::Subscriptions {
            after,
            limit,
            client_id: client_id.clone(),
            filter: filter.clone(),
            matching: matching.clone(),
        },
    )
    .await
}

/// Asks every shard here, then every peer (`GET|DELETE path?local=true`), for the one thing
/// `request` names; the first answer that found it wins. `found` turns a shard's reply into
/// the JSON answer, or `None` for "not here".
async fn find_one(
    state: &Shared,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    method: &'static str,
    path: String,
    request: Request,
    found: impl Fn(Reply) -> Option<Value>,
) -> Result<Option<Value>, ApiError> {
    let m = management(state)?;
    for reply in m.ask_all(request).await? {
        if let Some(mut v) = found(reply) {
            if v.is_object() {
                v["node"] = json!(me(state));
            }
            return Ok(Some(v));
        }
    }
    if local_only(q) {
        return Ok(None);
    }
    let auth = authorization(headers);
    for (node, api) in peers(state).await {
        match peer_call(
            state.peer_tls.clone(),
            &api,
            method,
            format!("{path}?local=true"),
            auth.clone(),
            None,
        )
        .await
        {
            Ok((200, body)) => return Ok(Some(body)),
            Ok((404, _)) => {}
            Ok((status, body)) => {
                tracing::warn!(node, status, answer = %body, "a peer refused a management call");
            }
            Err(e) => tracing::warn!(node, error = %e, "a peer did not answer a management call"),
        }
    }
    Ok(None)
}

/// [`find_one`] for `/api/v1/{area}/{client_id}` (`area`: `clients` or `sessions`): the JSON
/// answer, or 404 naming `what`.
#[allow(clippy::too_many_arguments)]
async fn one_client(
    state: &Shared,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    method: &'static str,
    area: &str,
    what: &str,
    request: Request,
    found: impl Fn(Reply) -> Option<Value>,
) -> Result<Response, ApiError> {
    let client_id = match &request {
        Request::Client { client_id }
        | Request::Kick { client_id }
        | Request::Session { client_id }
        | Request::DeleteSession { client_id } => client_id.clone(),
        other => {
            return Err(ApiError::internal(anyhow::anyhow!(
                "not a lookup: {other:?}"
            )))
        }
    };
    let path = format!("/api/v1/{area}/{}", encode(&client_id));
    find_one(state, headers, q, method, path, request, found)
        .await?
        .map(|v| Json(v).into_response())
        .ok_or_else(|| not_found(what))
}

async fn client(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Params,
    Path(client_id): Path<String>,
) -> Result<Response, ApiError> {
    let request = Request::Client { client_id };
    one_client(
        &state,
        &headers,
        &q,
        "GET",
        "clients",
        "connected client",
        request,
        |r| match r {
            Reply::Client(Some(b)) => {
                let (info, subs) = *b;
                let mut v = client_json(&info);
                v["subscriptions_list"] = subs.iter().map(subscription_json).collect();
                Some(v)
            }
            _ => None,
        },
    )
    .await
}

async fn kick(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Params,
    Path(client_id): Path<String>,
) -> Result<Response, ApiError> {
    let request = Request::Kick { client_id };
    let what = "connected client";
    one_client(
        &state,
        &headers,
        &q,
        "DELETE",
        "clients",
        what,
        request,
        done("kicked"),
    )
    .await
}

/// A `Reply::Done(true)` as `{"<what>": true}`.
fn done(what: &'static str) -> impl Fn(Reply) -> Option<Value> {
    move |r| matches!(r, Reply::Done(true)).then(|| json!({ what: true }))
}

async fn session(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Params,
    Path(client_id): Path<String>,
) -> Result<Response, ApiError> {
    let request = Request::Session { client_id };
    one_client(
        &state,
        &headers,
        &q,
        "GET",
        "sessions",
        "session",
        request,
        |r| match r {
            Reply::Session(Some(s)) => Some(session_json(&s)),
            _ => None,
        },
    )
    .await
}

async fn delete_session(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Params,
    Path(client_id): Path<String>,
) -> Result<Response, ApiError> {
    let request = Request::DeleteSession { client_id };
    let deleted = done("deleted");
    one_client(
        &state, &headers, &q, "DELETE", "sessions", "session", request, deleted,
    )
    .await
}

/// Routes and retained messages come from shard 0's replicas, which hold the cluster's.
async fn topics(State(state): State<Shared>, Query(q): Params) -> Result<Response, ApiError> {
    let limit = limit(&q)?;
    let me = me(&state);
    let request = Request::Routes {
        after: q.get("cursor").cloned(),
        limit,
        matching: q.get("match").cloned().filter(|s| !s.is_empty()),
    };
    match management(&state)?.ask(0, request).await? {
        Reply::Routes { items, more } => {
            let next = more
                .then(|| items.last().map(|r| r.filter.clone()))
                .flatten();
            let data: Vec<Value> = items
                .into_iter()
                .map(|r| {
                    let mut nodes = r.nodes;
                    if r.local {
                        nodes.push(me);
                    }
                    nodes.sort_unstable();
                    nodes.dedup();
                    json!({ "filter": r.filter, "nodes": nodes })
                })
                .collect();
            Ok(Json(json!({ "data": data, "next": next, "unreachable": [] })).into_response())
        }
        other => Err(ApiError::internal(anyhow::anyhow!(
            "unexpected answer {other:?}"
        ))),
    }
}

async fn retained(State(state): State<Shared>, Query(q): Params) -> Result<Response, ApiError> {
    let limit = limit(&q)?;
    let filter = q
        .get("topic")
        .cloned()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "#".into());
    shardmq_broker::topic::validate_topic_filter(&filter, usize::MAX)
        .map_err(|e| bad(format!("topic: not a valid MQTT filter: {e:?}")))?;
    let request = Request::Retained {
        after: q.get("cursor").cloned(),
        limit,
        filter,
    };
    match management(&state)?.ask(0, request).await? {
        Reply::Retained { items, more } => {
            let next = more
                .then(|| items.last().map(|r| r.topic.clone()))
                .flatten();
            let me = me(&state);
            let data: Vec<Value> = items
                .into_iter()
                .map(|r| json!({ "topic": r.topic, "qos": r.qos as u8, "payload_bytes": r.payload_bytes, "node": me }))
                .collect();
            Ok(Json(json!({ "data": data, "next": next, "unreachable": [] })).into_response())
        }
        other => Err(ApiError::internal(anyhow::anyhow!(
            "unexpected answer {other:?}"
        ))),
    }
}

async fn retained_get(
    State(state): State<Shared>,
    Path(topic): Path<String>,
) -> Result<Response, ApiError> {
    match management(&state)?
        .ask(0, Request::RetainedGet { topic })
        .await?
    {
        Reply::RetainedGet(Some((r, payload))) => Ok(Json(json!({
            "topic": r.topic,
            "qos": r.qos as u8,
            "payload_bytes": r.payload_bytes,
            "node": me(&state),
            "payload": std::str::from_utf8(&payload).ok(),
            "payload_base64": base64::engine::general_purpose::STANDARD.encode(&payload),
        }))
        .into_response()),
        Reply::RetainedGet(None) => Err(not_found("retained message")),
        other => Err(ApiError::internal(anyhow::anyhow!(
            "unexpected answer {other:?}"
        ))),
    }
}

async fn retained_delete(
    State(state): State<Shared>,
    Path(topic): Path<String>,
) -> Result<Response, ApiError> {
    let m = management(&state)?;
    match m
        .ask(
            0,
            Request::RetainedGet {
                topic: topic.clone(),
            },
        )
        .await?
    {
        Reply::RetainedGet(Some(_)) => {}
        _ => return Err(not_found("retained message")),
    }
    // An empty retained publish removes it on every shard and node, as a client's would.
    m.ask(
        0,
        Request::Publish {
            topic,
            payload: bytes::Bytes::new(),
            qos: shardmq_codec::QoS::AtMostOnce,
            retain: true,
        },
    )
    .await?;
    Ok(Json(json!({ "deleted": true })).into_response())
}

/// `POST /api/v1/publish`.
#[derive(Debug, serde::Deserialize)]
struct PublishBody {
    topic: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
}

async fn publish(
    State(state): State<Shared>,
    body: Result<Json<PublishBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(|e| bad(format!("body: {e}")))?;
    shardmq_broker::topic::validate_topic_name(&body.topic, usize::MAX)
        .map_err(|e| bad(format!("topic: not a valid MQTT topic name: {e:?}")))?;
    if body.topic.starts_with('$') {
        return Err(bad("topic: topics starting with $ are the broker's"));
    }
    let payload = match body.encoding.as_deref() {
        None | Some("plain") => bytes::Bytes::from(body.payload),
        Some("base64") => bytes::Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(body.payload.as_bytes())
                .map_err(|e| bad(format!("payload: not base64: {e}")))?,
        ),
        Some(other) => return Err(bad(format!("encoding: plain or base64, not {other:?}"))),
    };
    let qos = match body.qos {
        0 => shardmq_codec::QoS::AtMostOnce,
        1 => shardmq_codec::QoS::AtLeastOnce,
        2 => shardmq_codec::QoS::ExactlyOnce,
        _ => return Err(bad("qos: 0, 1 or 2")),
    };
    let m = management(&state)?;
    m.ask(
        0,
        Request::Publish {
            topic: body.topic,
            payload,
            qos,
            retain: body.retain,
        },
    )
    .await?;
    Ok(Json(json!({ "published": true })).into_response())
}

/// This node's overview entry: figures per shard and their totals.
fn node_overview(state: &Shared, role: &str) -> Value {
    let shards = state.figures.shards();
    let mut total = shardmq_shards::ShardFigures::default();
    let per_shard: Vec<Value> = shards
        .iter()
        .enumerate()
        .map(|(i, f)| {
            total.connections += f.connections;
            total.sessions += f.sessions;
            total.subscriptions += f.subscriptions;
            total.messages_received += f.messages_received;
            total.messages_sent += f.messages_sent;
            total.messages_dropped += f.messages_dropped;
            total.bytes_received += f.bytes_received;
            total.bytes_sent += f.bytes_sent;
            total.retained = total.retained.max(f.retained);
            json!({
                "shard": i,
                "connections": f.connections,
                "sessions": f.sessions,
                "subscriptions": f.subscriptions,
                "messages_in": f.messages_received,
                "messages_out": f.messages_sent,
                "messages_dropped": f.messages_dropped,
                "bytes_in": f.bytes_received,
                "bytes_out": f.bytes_sent,
            })
        })
        .collect();
    json!({
        "node": state.node_id,
        "role": role,
        "status": "running",
        "api": state.api_addr,
        "connections": state.connections.load(std::sync::atomic::Ordering::Relaxed),
        "sessions": total.sessions,
        "subscriptions": total.subscriptions,
        "retained": total.retained,
        "messages_in": total.messages_received,
        "messages_out": total.messages_sent,
        "messages_dropped": total.messages_dropped,
        "bytes_in": total.bytes_received,
        "bytes_out": total.bytes_sent,
        "shards": per_shard,
    })
}

async fn overview(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let role = match &state.cluster {
        None => "core".to_string(),
        Some(c) => match tokio::time::timeout(
            Duration::from_millis(super::STATUS_TIMEOUT_MS),
            c.cluster_status(),
        )
        .await
        {
            Ok(Ok(s)) => format!("{:?}", s.role).to_lowercase(),
            _ => "unknown".to_string(),
        },
    };
    let mine = node_overview(&state, &role);
    if local_only(&q) {
        return Ok(Json(mine).into_response());
    }
    let mut nodes = vec![mine];
    let mut unreachable = Vec::new();
    let auth = authorization(&headers);
    for (node, answer) in get_peers(&state, auth, "/api/v1/overview?local=true".into()).await {
        match answer {
            Ok((200, body)) => nodes.push(body),
            _ => unreachable.push(node),
        }
    }
    nodes.sort_by_key(|n| n["node"].as_u64().unwrap_or(0));
    Ok(Json(json!({
        "node": {
            "id": state.node_id,
            "name": state.node_name,
            "role": role,
            "uptime_secs": state.started.elapsed().as_secs(),
            "version": env!("CARGO_PKG_VERSION"),
            "shards": state.figures.shards().len(),
            "listeners": state.listeners,
        },
        "nodes": nodes,
        "unreachable": unreachable,
    }))
    .into_response())
}

async fn alarms(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Params,
) -> Result<Response, ApiError> {
    let mut data = super::alarms::active(&state).await;
    let mut unreachable = Vec::new();
    if !local_only(&q) {
        let auth = authorization(&headers);
        for (node, answer) in get_peers(&state, auth, "/api/v1/alarms?local=true".into()).await {
            match answer {
                Ok((200, body)) => {
                    if let Some(list) = body["data"].as_array() {
                        data.extend(list.iter().cloned());
                    }
                }
                _ => unreachable.push(node),
            }
        }
    }
    Ok(Json(json!({ "data": data, "unreachable": unreachable })).into_response())
}

// ---- traces ---------------------------------------------------------------------------------

#[derive(Debug, Default, serde::Deserialize)]
struct TraceBody {
    #[serde(default)]
    seconds: Option<u64>,
    #[serde(default)]
    max_packets: Option<usize>,
}

/// Arms the trace on every shard of every node: the client may connect anywhere.
async fn trace_start(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Params,
    Path(client_id): Path<String>,
    body: Option<Json<TraceBody>>,
) -> Result<Response, ApiError> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let seconds = body.seconds.unwrap_or(60);
    let max_packets = body.max_packets.unwrap_or(1000);
    if seconds == 0 || seconds > mgmt::TRACE_MAX_DURATION.as_secs() {
        return Err(bad(format!(
            "seconds: 1 to {}",
            mgmt::TRACE_MAX_DURATION.as_secs()
        )));
    }
    if max_packets == 0 || max_packets > mgmt::TRACE_MAX_PACKETS {
        return Err(bad(format!(
            "max_packets: 1 to {}",
            mgmt::TRACE_MAX_PACKETS
        )));
    }
    let request = Request::TraceStart {
        client_id: client_id.clone(),
        duration: Duration::from_secs(seconds),
        max_packets,
    };
    for reply in management(&state)?.ask_all(request).await? {
        if let Reply::Refused(why) = reply {
            return Err(ApiError(StatusCode::TOO_MANY_REQUESTS, why));
        }
    }
    let mut unreachable = Vec::new();
    if !local_only(&q) {
        let auth = authorization(&headers);
        let path = format!("/api/v1/trace/{}?local=true", encode(&client_id));
        let b = json!({ "seconds": seconds, "max_packets": max_packets });
        for (node, api) in peers(&state).await {
            if !matches!(
                peer_call(
                    state.peer_tls.clone(),
                    &api,
                    "POST",
                    path.clone(),
                    auth.clone(),
                    Some(b.clone())
                )
                .await,
                Ok((200, _))
            ) {
                unreachable.push(node);
            }
        }
    }
    Ok(Json(json!({ "tracing": true, "seconds": seconds, "max_packets": max_packets, "unreachable": unreachable })).into_response())
}

/// Lines of every shard and node after `after_us` (Unix microseconds), by time.
async fn trace_read(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Params,
    Path(client_id): Path<String>,
) -> Result<Response, ApiError> {
    let after_us: u64 = match q.get("after_us") {
        Some(v) => v.parse().map_err(|_| bad("after_us: Unix microseconds"))?,
        None => 0,
    };
    let me = me(&state);
    let replies = management(&state)?
        .ask_all(Request::TraceRead {
            client_id: client_id.clone(),
            after: 0,
        })
        .await?;
    let mut active = false;
    let mut lines: Vec<Value> = Vec::new();
    for (shard, reply) in replies.into_iter().enumerate() {
        if let Reply::Trace {
            active: a,
            lines: l,
        } = reply
        {
            active |= a;
            lines.extend(
                l.iter()
                    .filter(|l| micros(l.at) > after_us)
                    .map(|l| trace_json(me, shard, l)),
            );
        }
    }
    if !local_only(&q) {
        let auth = authorization(&headers);
        let path = format!(
            "/api/v1/trace/{}?local=true&after_us={after_us}",
            encode(&client_id)
        );
        for (_, answer) in get_peers(&state, auth, path).await {
            if let Ok((200, body)) = answer {
                active |= body["active"].as_bool().unwrap_or(false);
                if let Some(l) = body["lines"].as_array() {
                    lines.extend(l.iter().cloned());
                }
            }
        }
    }
    lines.sort_by_key(|l| l["at_us"].as_u64().unwrap_or(0));
    lines.truncate(MAX_PAGE);
    let next = lines
        .last()
        .and_then(|l| l["at_us"].as_u64())
        .unwrap_or(after_us);
    Ok(Json(json!({ "active": active, "lines": lines, "next": next })).into_response())
}

async fn trace_stop(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Params,
    Path(client_id): Path<String>,
) -> Result<Response, ApiError> {
    let replies = management(&state)?
        .ask_all(Request::TraceStop {
            client_id: client_id.clone(),
        })
        .await?;
    let mut stopped = replies.iter().any(|r| matches!(r, Reply::Done(true)));
    if !local_only(&q) {
        let auth = authorization(&headers);
        let path = format!("/api/v1/trace/{}?local=true", encode(&client_id));
        for (_, api) in peers(&state).await {
            stopped |= matches!(
                peer_call(
                    state.peer_tls.clone(),
                    &api,
                    "DELETE",
                    path.clone(),
                    auth.clone(),
                    None
                )
                .await,
                Ok((200, _))
            );
        }
    }
    if stopped {
        Ok(Json(json!({ "stopped": true })).into_response())
    } else {
        Err(not_found("trace"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_junk() {
        for c in [
            Cursor::start(3),
            Cursor {
                node: 1,
                shard: 2,
                key: Some(77),
                pos: 5,
            },
        ] {
            assert_eq!(Cursor::parse(&c.text()).unwrap(), c);
        }
        for junk in ["", "1.2", "a.b.c.d", "1.2.3.4.5", "-1.0.-.0"] {
            assert!(Cursor::parse(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn peer_queries_are_local_and_encoded() {
        let mut q = HashMap::new();
        q.insert("clientid".to_string(), "a b/c".to_string());
        q.insert("node".to_string(), "2".to_string());
        let s = peer_query(
            "/api/v1/clients",
            &q,
            &[("limit", Some("5".into())), ("node", None)],
        );
        assert_eq!(s, "/api/v1/clients?clientid=a%20b%2Fc&limit=5&local=true");
    }
}
