//! Cluster endpoints: status, decommission, and the routing of order requests to the node
//! that coordinates their order id.

use super::error::ApiError;
use super::AppState;
use crate::cluster::control::{ControlCommand, ControlResponse};
use crate::cluster::http::{OrderRoute, FORWARDED_HEADER};
use axum::body::Body;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

fn no_cluster() -> ApiError {
    ApiError::not_found("not_a_cluster", "this node runs without [cluster] enabled")
}

pub async fn status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let cluster = state.cluster.as_ref().ok_or_else(no_cluster)?;
    Ok(Json(cluster.status()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaveBody {
    node: String,
}

/// Decommission: the node's vnodes are handed to the others; it stops once it holds none.
/// An admin operation: the caller shows the cluster's secret as a bearer token
/// (`Authorization: Bearer <cookie>`); without it, 401 and nothing happens.
pub async fn leave(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Result<Json<LeaveBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let cluster = state.cluster.as_ref().ok_or_else(no_cluster)?;
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !token.is_some_and(|t| cluster.is_admin_token(t)) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an admin operation: send the cluster cookie as `Authorization: Bearer <cookie>`",
        ));
    }
    let Json(body) = body?;
    if cluster.seeds_contain(&body.node) {
        return Err(ApiError::conflict(
            "seed_cannot_leave",
            "seeds are the Raft group; replace a seed by changing the seed list instead",
        ));
    }
    match cluster
        .propose(ControlCommand::Leave {
            name: body.node.clone(),
        })
        .await
    {
        Ok(ControlResponse::Rejected(why)) => Err(ApiError::conflict("leave_refused", why)),
        Ok(_) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "node": body.node, "state": "leaving" })),
        )
            .into_response()),
        Err(e) => Err(
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "control_unavailable", e)
                .with("retry_after_ms", 500),
        ),
    }
}

/// Order requests are served by the owner of the order id's vnode; others forward them there.
pub async fn route_orders(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(cluster) = state.cluster.clone() else {
        return next.run(req).await;
    };
    let forwarded = req.headers().contains_key(FORWARDED_HEADER);
    let path = req.uri().path().to_owned();
    let method = req.method().to_string();
    let (mut parts, body) = req.into_parts();
    // The id as the handler will see it (percent-decoded), not the raw path segment.
    let path_id =
        axum::extract::Path::<std::collections::HashMap<String, String>>::from_request_parts(
            &mut parts, &state,
        )
        .await
        .ok()
        .and_then(|p| p.0.get("id").cloned());
    let Ok(bytes) = axum::body::to_bytes(body, crate::limits::MAX_BODY_BYTES).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body too large",
        )
        .into_response();
    };
    let order_id = match path_id {
        Some(id) => Some(id),
        None => serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| {
                v.get("order_id")
                    .and_then(|o| o.as_str())
                    .map(str::to_owned)
            }),
    };
    let rebuilt = || Request::from_parts(parts.clone(), Body::from(bytes.clone()));
    // No readable order id: the handler here reports the exact validation error.
    let Some(order_id) = order_id else {
        return next.run(rebuilt()).await;
    };
    match cluster.order_route(&order_id) {
        OrderRoute::Here(vnode) => match cluster.enter_gate(vnode) {
            Some(_inside) => next.run(rebuilt()).await,
            None => unavailable("vnode moving".into()),
        },
        // Forwarded once already: never a second hop (maps disagree; the client retries).
        OrderRoute::Remote(_) if forwarded => unavailable("stale ring map".into()),
        OrderRoute::Remote(peer) => {
            let path_q = parts
                .uri
                .path_and_query()
                .map_or(path.clone(), |p| p.to_string());
            match cluster
                .forward_http(&peer, method, path_q, bytes.to_vec())
                .await
            {
                Ok((status, body)) => Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(Body::from(body))
                    .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response()),
                Err(e) => unavailable(e),
            }
        }
        OrderRoute::Unavailable(why) => unavailable(why.to_owned()),
    }
}

fn unavailable(why: String) -> Response {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "vnode_unavailable", why)
        .with("retry_after_ms", 200)
        .into_response()
}
