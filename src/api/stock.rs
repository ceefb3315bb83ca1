//! Handlers for reservations and stock: validate into domain types, run on the node, map the
//! outcome. No business rules here.

use super::dto::{self, KeyBody, KeyOpBody, ReserveBody};
use super::error::ApiError;
use super::reply::{outcome_reply, view_body, Reply};
use super::AppState;
use crate::domain::{Command, StockKey};
use crate::persistence::{Request, StorageError};
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

type Body<T> = Result<Json<T>, JsonRejection>;
type ApiResult = Result<(StatusCode, Json<Value>), ApiError>;

fn respond(r: Result<Reply, ApiError>) -> ApiResult {
    r.map(|(status, body)| (status, Json(body)))
}

async fn run(state: &AppState, key: StockKey, command: Command) -> ApiResult {
    let outcome = state.node.execute(key.clone(), command.clone()).await?;
    respond(outcome_reply(&key, &command, outcome))
}

pub async fn reserve(State(state): State<AppState>, body: Body<ReserveBody>) -> ApiResult {
    let Json(body) = body?;
    let (key, command) = body.into_command()?;
    run(&state, key, command).await
}

async fn finish(
    state: AppState,
    id: Result<Path<String>, PathRejection>,
    body: Body<KeyBody>,
    commit: bool,
) -> ApiResult {
    let Path(id) = id?;
    let Json(body) = body?;
    let key = dto::key(&body.sku, &body.warehouse)?;
    let reservation_id = dto::reservation_id(&id)?;
    let command = if commit {
        Command::Commit { reservation_id }
    } else {
        Command::Release { reservation_id }
    };
    run(&state, key, command).await
}

pub async fn commit(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Body<KeyBody>,
) -> ApiResult {
    finish(state, id, body, true).await
}

pub async fn release(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Body<KeyBody>,
) -> ApiResult {
    finish(state, id, body, false).await
}

type KeyPath = Result<Path<(String, String)>, PathRejection>;

pub async fn get_key(State(state): State<AppState>, path: KeyPath) -> ApiResult {
    let Path((sku, wh)) = path?;
    let key = dto::key(&sku, &wh)?;
    let view = state.node.read(key.clone()).await?;
    super::telemetry::record_operation("get", "ok");
    Ok((StatusCode::OK, Json(view_body(&key, &view))))
}

/// `PUT /v1/stock/{sku}/{warehouse}` (count), `.../receipts`, `.../safety-stock`: one handler,
/// instantiated per body type.
pub async fn key_op<B: KeyOpBody>(
    State(state): State<AppState>,
    path: KeyPath,
    body: Body<B>,
) -> ApiResult {
    let Path((sku, wh)) = path?;
    let key = dto::key(&sku, &wh)?;
    let Json(body) = body?;
    run(&state, key, body.into_command()?).await
}

/// Every warehouse that has stock state for the SKU, and the totals.
pub async fn get_sku(
    State(state): State<AppState>,
    sku: Result<Path<String>, PathRejection>,
) -> ApiResult {
    let Path(sku) = sku?;
    let sku = dto::sku(&sku)?;
    let warehouses = match &state.cluster {
        Some(cluster) => cluster.warehouses(sku.as_str()).await.map_err(|reason| {
            crate::actors::ServiceError::VnodeUnavailable {
                retry_after_ms: 500,
                reason,
            }
        })?,
        None => local_warehouses(&state, sku.as_str()).await?,
    };
    let reads = warehouses
        .iter()
        .filter_map(|w| dto::warehouse(w).ok())
        .map(|w| {
            let key = StockKey::new(sku.clone(), w);
            let node = state.node.clone();
            async move { node.read(key.clone()).await.map(|v| (key, v)) }
        });
    let views = futures::future::try_join_all(reads).await?;
    let (mut on_hand, mut reserved, mut available) = (0u64, 0u64, 0u64);
    let rows: Vec<Value> = views
        .iter()
        .map(|(key, v)| {
            on_hand += v.on_hand;
            reserved += v.reserved;
            available += v.available;
            view_body(key, v)
        })
        .collect();
    let total = json!({ "on_hand": on_hand, "reserved": reserved, "available": available });
    Ok((
        StatusCode::OK,
        Json(json!({ "sku": sku.as_str(), "warehouses": rows, "total": total })),
    ))
}

async fn local_warehouses(state: &AppState, sku: &str) -> Result<Vec<String>, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let reply = Box::new(move |r| {
        let _ = tx.send(r);
    });
    state
        .node
        .writer()
        .submit(Request::ListWarehouses {
            sku: sku.to_owned(),
            reply,
        })
        .await
        .map_err(crate::actors::ServiceError::from)?;
    Ok(rx
        .await
        .map_err(|_| StorageError::WriterStopped)
        .map_err(crate::actors::ServiceError::from)?
        .map_err(crate::actors::ServiceError::from)?)
}
