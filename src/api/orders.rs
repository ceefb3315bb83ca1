//! Handlers for orders (many keys, all-or-nothing) and the batch endpoint.

use super::dto::{self, BatchBody, OrderBody, Validated};
use super::error::ApiError;
use super::reply::{outcome_reply, view_body};
use super::AppState;
use crate::actors::order::OrderOutcome;
use crate::domain::order::{Order, OrderStatus};
use crate::domain::StockKey;
use crate::limits::MAX_BATCH_OPS;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use std::collections::BTreeMap;

type ApiResult = Result<(StatusCode, Json<Value>), ApiError>;

pub fn order_body(o: &Order) -> Value {
    let lines: Vec<Value> = o
        .request
        .lines
        .iter()
        .zip(&o.allocation)
        .map(|(l, w)| {
            json!({
                "sku": l.sku.as_str(),
                "qty": l.qty.get(),
                "warehouses": l.warehouses.iter().map(|w| w.as_str()).collect::<Vec<_>>(),
                "allocated_warehouse": w.as_ref().map(|w| w.as_str()),
            })
        })
        .collect();
    let mut body = json!({
        "order_id": o.order_id.as_str(),
        "status": o.status.name(),
        "ttl_ms": o.request.ttl_ms,
        "created_at_ms": o.created_at_ms,
        "expires_at_ms": o.expires_at_ms,
        "lines": lines,
    });
    if let (OrderStatus::Failed { line }, Some(b)) = (o.status, body.as_object_mut()) {
        b.insert("failed_line".into(), json!(line));
    }
    if let (false, Some(b)) = (o.expired_lines.is_empty(), body.as_object_mut()) {
        b.insert("expired_lines".into(), json!(o.expired_lines));
    }
    body
}

fn map(outcome: OrderOutcome, created: bool) -> ApiResult {
    match outcome {
        OrderOutcome::Done { order, replay } => {
            let status = if created && !replay {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(order_body(&order))))
        }
        OrderOutcome::IdConflict => Err(ApiError::conflict(
            "id_conflict",
            "this order id was used with a different body",
        )),
        OrderOutcome::LineUnfillable { order, line } => Err(ApiError::conflict(
            "insufficient_stock",
            format!("line {line} cannot be filled from any of its warehouses; nothing is held"),
        )
        .with("line", line)
        .with("order", order_body(&order))),
        OrderOutcome::InvalidState { order } => Err(ApiError::conflict(
            "invalid_order_state",
            format!("the order is {}", order.status.name()),
        )
        .with("order", order_body(&order))),
        OrderOutcome::Expired { order, lines } => Err(ApiError::conflict(
            "expired",
            "those lines' holds had expired (or were gone) before the commit reached them: they were not sold; every other line was",
        )
        .with("expired_lines", lines)
        .with("order", order_body(&order))),
        OrderOutcome::Aborted { order } => Err(ApiError::conflict(
            "order_aborted",
            "the reservation was interrupted and undone; nothing is held; place the order again under a new order_id",
        )
        .with("order", order_body(&order))),
        OrderOutcome::NotFound => Err(ApiError::not_found("unknown_order", "no such order")),
    }
}

pub async fn create(
    State(state): State<AppState>,
    body: Result<Json<OrderBody>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body?;
    let (id, request) = body.into_request()?;
    map(state.orders.reserve(id, request).await?, true)
}

pub async fn commit(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = id?;
    map(state.orders.commit(&dto::order_id(&id)?).await?, false)
}

pub async fn release(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = id?;
    map(state.orders.release(&dto::order_id(&id)?).await?, false)
}

pub async fn get(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(id) = id?;
    match state.orders.get(&dto::order_id(&id)?).await? {
        Some(order) => Ok((StatusCode::OK, Json(order_body(&order)))),
        None => Err(ApiError::not_found("unknown_order", "no such order")),
    }
}

/// Many operations in one request. The whole batch is validated before anything runs (a bad
/// op changes nothing, C6). Ops on the same key run in the order given; different keys run
/// concurrently. Results come back in request order, each with its own status and body.
pub async fn batch(
    State(state): State<AppState>,
    body: Result<Json<BatchBody>, JsonRejection>,
) -> ApiResult {
    let Json(body) = body?;
    if body.ops.is_empty() || body.ops.len() > MAX_BATCH_OPS {
        return Err(ApiError::bad_request(
            "invalid_batch",
            format!("a batch has 1 to {MAX_BATCH_OPS} ops"),
        ));
    }
    let mut ops = Vec::with_capacity(body.ops.len());
    for (i, op) in body.ops.into_iter().enumerate() {
        ops.push(op.validate().map_err(|e| e.with("index", i))?);
    }
    let mut by_key: BTreeMap<StockKey, Vec<(usize, Validated)>> = BTreeMap::new();
    for (i, op) in ops.into_iter().enumerate() {
        let key = match &op {
            Validated::Command { key, .. } | Validated::Get { key } => key.clone(),
        };
        by_key.entry(key).or_default().push((i, op));
    }
    let n = by_key.values().map(Vec::len).sum();
    let lanes = by_key.into_values().map(|ops| run_lane(&state, ops));
    let mut results = vec![Value::Null; n];
    for lane in futures::future::join_all(lanes).await {
        for (i, result) in lane {
            results[i] = result;
        }
    }
    Ok((StatusCode::OK, Json(json!({ "results": results }))))
}

async fn run_lane(state: &AppState, ops: Vec<(usize, Validated)>) -> Vec<(usize, Value)> {
    let mut out = Vec::with_capacity(ops.len());
    for (i, op) in ops {
        let result = match op {
            Validated::Command { key, command, .. } => {
                match state.node.execute(key.clone(), command.clone()).await {
                    Ok(outcome) => outcome_reply(&key, &command, outcome),
                    Err(e) => Err(ApiError::from(e)),
                }
            }
            Validated::Get { key } => match state.node.read(key.clone()).await {
                Ok(view) => Ok((StatusCode::OK, view_body(&key, &view))),
                Err(e) => Err(ApiError::from(e)),
            },
        };
        let entry = match result {
            Ok((status, body)) => json!({ "status": status.as_u16(), "body": body }),
            Err(e) => json!({ "status": e.status.as_u16(), "body": e.body() }),
        };
        out.push((i, entry));
    }
    out
}
