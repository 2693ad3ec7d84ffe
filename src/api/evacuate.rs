//! `/api/v1/node/evacuate`: start (`POST`), watch (`GET`) and stop (`DELETE`) this node's
//! evacuation ([`crate::evacuate`]; docs/api.md).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{ApiError, Shared};
use crate::evacuate::{self, Targets, RATE_DEFAULT, RATE_MAX};

/// The evacuation route, merged into the API's router.
pub fn routes() -> Router<Shared> {
    Router::new().route(
        "/api/v1/node/evacuate",
        post(start).get(status).delete(stop),
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

async fn start(
    State(state): State<Shared>,
    body: Option<Json<StartBody>>,
) -> Result<Response, ApiError> {
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let rate = body.rate.unwrap_or(RATE_DEFAULT);
    if !(1..=RATE_MAX).contains(&rate) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("rate: clients per second, 1 to {RATE_MAX} (got {rate})"),
        ));
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
    let mut to = body.to;
    if let Some(to) = &mut to {
        to.sort_unstable();
        to.dedup();
        if to.is_empty() {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "to: at least one node id".into(),
            ));
        }
        for id in to.iter() {
            if *id == me {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("to: node {id} is this node"),
                ));
            }
            if !nodes.iter().any(|n| n.node == *id) {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("to: node {id} is not a running member of the cluster"),
                ));
            }
        }
    }
    if Targets::eligible(&nodes, me, to.as_deref()).is_empty() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "no node to evacuate to: clients go to running members other than this one that \
             are not evacuating themselves and advertise a client address \
             (cluster.client_address, or a client listener)"
                .into(),
        ));
    }
    let run = state.evacuation.begin(Instant::now(), rate, to.clone());
    tracing::info!(rate, ?to, "evacuation asked through the management API");
    let list: evacuate::ClientNodes = Arc::new(move || cluster.client_nodes());
    tokio::spawn(evacuate::drive(
        state.evacuation.clone(),
        run,
        management,
        list,
        me,
        rate,
        to,
    ));
    Ok((StatusCode::OK, Json(answer(&state))).into_response())
}

async fn stop(State(state): State<Shared>) -> Result<Json<Value>, ApiError> {
    let stopped = state.evacuation.end(Instant::now());
    if let Some(management) = &state.management {
        evacuate::stop_shards(management).await;
    }
    if stopped {
        tracing::info!("evacuation stopped through the management API");
    }
    let mut out = answer(&state);
    out["stopped"] = json!(stopped);
    Ok(Json(out))
}
