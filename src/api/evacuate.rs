//! `/api/v1/node/evacuate`: start (`POST`), watch (`GET`) and stop (`DELETE`) this node's
//! evacuation; `/api/v1/cluster/rebalance`: plan a rebalance from the nodes' connection
//! counts and start each source node's part, see it, stop it ([`crate::evacuate`];
//! docs/cluster.md, "Evacuation and rebalance").

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::manage::{authorization, get_peers, peer_call, peers};
use super::{ApiError, Shared};
use crate::evacuate::{self, Order, Targets, RATE_DEFAULT, RATE_MAX, THRESHOLD_DEFAULT_PCT};

/// The evacuation and rebalance routes, merged into the API's router.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/api/v1/node/evacuate",
            post(start).get(status).delete(stop),
        )
        .route(
            "/api/v1/cluster/rebalance",
            post(rebalance).get(rebalance_status).delete(rebalance_stop),
        )
}

/// `POST /api/v1/node/evacuate`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    /// Clients per second.
    #[serde(default)]
    rate: Option<u32>,
    /// Node ids clients may go to (default: every other running node).
    #[serde(default)]
    to: Option<Vec<u64>>,
    /// A rebalance's part: how many clients go to each node; new clients stay welcome.
    #[serde(default)]
    shed: Option<BTreeMap<u64, u64>>,
}

fn answer(state: &Shared) -> Value {
    json!({
        "node": state.node_id,
        "evacuating": state.evacuation.running(),
        "evacuated_total": state.evacuation.evacuated_total(),
        "evacuation": state.evacuation.status(),
    })
}

async fn status(State(state): State<Shared>) -> Json<Value> {
    Json(answer(&state))
}

fn bad(why: String) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, why)
}

async fn start(
    State(state): State<Shared>,
    body: Option<Json<StartBody>>,
) -> Result<Response, ApiError> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let order = Order {
        rate: body.rate.unwrap_or(RATE_DEFAULT),
        to: body.to,
        shed: body.shed,
    };
    start_order(&state, order)?;
    Ok((StatusCode::OK, Json(answer(&state))).into_response())
}

/// Checks `order` and starts its run on this node.
fn start_order(state: &Shared, mut order: Order) -> Result<(), ApiError> {
    if !(1..=RATE_MAX).contains(&order.rate) {
        return Err(bad(format!(
            "rate: clients per second, 1 to {RATE_MAX} (got {})",
            order.rate
        )));
    }
    let Some(cluster) = state.cluster.clone() else {
        return Err(ApiError::standalone("evacuate"));
    };
    let Some(management) = state.management.clone() else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this API serves no data plane".into(),
        ));
    };
    let me = state.node_id;
    let nodes = cluster.client_nodes();
    if let Some(shed) = &mut order.shed {
        if order.to.is_some() {
            return Err(bad("to and shed: one or the other".into()));
        }
        if state.evacuation.running() {
            return Err(ApiError(
                StatusCode::CONFLICT,
                "this node is evacuating: it takes no part in a rebalance".into(),
            ));
        }
        if let Some((id, n)) = shed.iter().find(|(_, n)| **n > evacuate::SHED_MAX) {
            return Err(bad(format!(
                "shed: {n} clients for node {id}, more than {}",
                evacuate::SHED_MAX
            )));
        }
        shed.retain(|_, n| *n > 0);
        if shed.is_empty() {
            return Err(bad("shed: at least one node and count".into()));
        }
    }
    let mut ids: Vec<u64> = match (&order.to, &order.shed) {
        (Some(to), _) => to.clone(),
        (_, Some(shed)) => shed.keys().copied().collect(),
        _ => Vec::new(),
    };
    ids.sort_unstable();
    ids.dedup();
    if order.to.is_some() {
        if ids.is_empty() {
            return Err(bad("to: at least one node id".into()));
        }
        order.to = Some(ids.clone());
    }
    for id in &ids {
        if *id == me {
            return Err(bad(format!("to: node {id} is this node")));
        }
        if !nodes.iter().any(|n| n.node == *id) {
            return Err(bad(format!(
                "to: node {id} is not a running member of the cluster"
            )));
        }
    }
    let to = (!ids.is_empty()).then_some(ids);
    if Targets::eligible(&nodes, me, to.as_deref()).is_empty() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "no node to evacuate to: clients go to running members other than this one that \
             are not evacuating themselves and advertise a client address \
             (cluster.client_address, or a client listener)"
                .into(),
        ));
    }
    let run = state.evacuation.begin(Instant::now(), &order);
    tracing::info!(rate = order.rate, to = ?order.to, shed = ?order.shed, "evacuation asked through the management API");
    let list: evacuate::ClientNodes = Arc::new(move || cluster.client_nodes());
    tokio::spawn(evacuate::drive(
        state.evacuation.clone(),
        run,
        management,
        list,
        me,
        order,
    ));
    Ok(())
}

async fn stop(
    State(state): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let only_rebalance = q.get("kind").is_some_and(|k| k == "rebalance");
    let stopped = state.evacuation.end(Instant::now(), only_rebalance);
    if let Some(management) = &state.management {
        if !only_rebalance {
            evacuate::stop_shards(management).await;
        }
    }
    if stopped {
        tracing::info!("evacuation stopped through the management API");
    }
    let mut out = answer(&state);
    out["stopped"] = json!(stopped);
    Ok(Json(out))
}

/// `POST /api/v1/cluster/rebalance`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RebalanceBody {
    /// Clients per second, for the whole cluster (split between the source nodes).
    #[serde(default)]
    rate: Option<u32>,
    /// Per cent of the mean a node may be off and count as even.
    #[serde(default)]
    threshold: Option<u32>,
}

/// Most a rebalance threshold may be, per cent of the mean.
pub const THRESHOLD_MAX_PCT: u32 = 100;

async fn rebalance(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Option<Json<RebalanceBody>>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let rate = body.rate.unwrap_or(RATE_DEFAULT);
    let threshold = body.threshold.unwrap_or(THRESHOLD_DEFAULT_PCT);
    if !(1..=RATE_MAX).contains(&rate) {
        return Err(bad(format!(
            "rate: clients per second, 1 to {RATE_MAX} (got {rate})"
        )));
    }
    if threshold > THRESHOLD_MAX_PCT {
        return Err(bad(format!(
            "threshold: per cent of the mean, 0 to {THRESHOLD_MAX_PCT} (got {threshold})"
        )));
    }
    let Some(cluster) = state.cluster.clone() else {
        return Err(ApiError::standalone("rebalance"));
    };
    let nodes = cluster.client_nodes();
    let plan = evacuate::plan_rebalance(&nodes, threshold);
    let mut started = Vec::new();
    let mut failed = BTreeMap::new();
    if !plan.even {
        let sources = u32::try_from(plan.moves.len()).unwrap_or(u32::MAX).max(1);
        let part_rate = (rate / sources).max(1);
        let apis: HashMap<u64, String> = peers(&state).await.into_iter().collect();
        let auth = authorization(&headers);
        for (source, shed) in &plan.moves {
            let order = Order {
                rate: part_rate,
                to: None,
                shed: Some(shed.clone()),
            };
            let outcome = if *source == state.node_id {
                start_order(&state, order).map_err(|e| e.1)
            } else if let Some(api) = apis.get(source) {
                let body = json!({ "rate": part_rate, "shed": shed });
                match peer_call(
                    state.peer_tls.clone(),
                    api,
                    "POST",
                    "/api/v1/node/evacuate".into(),
                    auth.clone(),
                    Some(body),
                )
                .await
                {
                    Ok((200, _)) => Ok(()),
                    Ok((code, answer)) => Err(format!("{code}: {}", answer["error"])),
                    Err(e) => Err(format!("{e:#}")),
                }
            } else {
                Err("no API address known for that node".into())
            };
            match outcome {
                Ok(()) => started.push(*source),
                Err(e) => {
                    tracing::warn!(node = source, error = %e, "a rebalance part did not start");
                    failed.insert(*source, e);
                }
            }
        }
        tracing::info!(rate, threshold, moves = ?plan.moves, "rebalance started");
    }
    Ok(Json(json!({
        "even": plan.even,
        "mean": plan.mean,
        "band": plan.band,
        "threshold": threshold,
        "rate": rate,
        "moves": plan.moves,
        "started": started,
        "failed": failed,
        "nodes": nodes,
    })))
}

/// Every node's connections and its run, and whether they are even now.
async fn rebalance_status(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let threshold = match q.get("threshold") {
        None => THRESHOLD_DEFAULT_PCT,
        Some(v) => v
            .parse()
            .ok()
            .filter(|t| *t <= THRESHOLD_MAX_PCT)
            .ok_or_else(|| bad(format!("threshold: 0 to {THRESHOLD_MAX_PCT}")))?,
    };
    let Some(cluster) = state.cluster.clone() else {
        return Err(ApiError::standalone("rebalance"));
    };
    let nodes = cluster.client_nodes();
    let plan = evacuate::plan_rebalance(&nodes, threshold);
    let mut runs: BTreeMap<u64, Value> = BTreeMap::new();
    runs.insert(state.node_id, answer(&state)["evacuation"].clone());
    for (node, reply) in get_peers(
        &state,
        authorization(&headers),
        "/api/v1/node/evacuate".into(),
    )
    .await
    {
        if let Ok((200, body)) = reply {
            runs.insert(node, body["evacuation"].clone());
        }
    }
    let shown: Vec<Value> = nodes
        .iter()
        .map(|n| {
            json!({
                "node": n.node,
                "address": n.address,
                "connections": n.connections,
                "evacuating": n.evacuating,
                "run": runs.get(&n.node).cloned().unwrap_or(Value::Null),
            })
        })
        .collect();
    Ok(Json(json!({
        "even": plan.even,
        "mean": plan.mean,
        "band": plan.band,
        "threshold": threshold,
        "nodes": shown,
    })))
}

/// Stops every node's part of a rebalance (never an evacuation).
async fn rebalance_stop(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let mut stopped = Vec::new();
    if state.evacuation.end(Instant::now(), true) {
        stopped.push(state.node_id);
    }
    let auth = authorization(&headers);
    for (node, api) in peers(&state).await {
        let path = "/api/v1/node/evacuate?kind=rebalance".to_string();
        if let Ok((200, body)) = peer_call(
            state.peer_tls.clone(),
            &api,
            "DELETE",
            path,
            auth.clone(),
            None,
        )
        .await
        {
            if body["stopped"] == true {
                stopped.push(node);
            }
        }
    }
    Ok(Json(json!({ "stopped": stopped })))
}
