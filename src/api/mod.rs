//! The HTTP/JSON API (axum): routes, the readiness gate, request metrics, `/metrics`,
//! `/health`, `/ready` and `/openapi.json`.

pub mod cluster;
pub mod dto;
pub mod error;
pub mod openapi;
pub mod orders;
pub mod reply;
pub mod stock;
pub mod telemetry;

use crate::actors::order::OrderCoordinator;
use crate::actors::Node;
use crate::limits::MAX_BODY_BYTES;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use error::ApiError;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Instant;

/// What every handler shares, behind one `Arc`: axum clones the state for every request, and
/// one reference count is cheaper than one per field.
#[derive(Clone)]
pub struct AppState(std::sync::Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(std::sync::Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

pub struct Services {
    pub node: Node,
    pub orders: OrderCoordinator,
    pub metrics: PrometheusHandle,
    /// Present when the node runs in a cluster.
    pub cluster: Option<std::sync::Arc<crate::cluster::node::Cluster>>,
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/reservations", post(stock::reserve))
        .route("/v1/reservations/{id}/commit", post(stock::commit))
        .route("/v1/reservations/{id}/release", post(stock::release))
        .route("/v1/stock/{sku}", get(stock::get_sku))
        .route(
            "/v1/stock/{sku}/{warehouse}",
            get(stock::get_key).put(stock::key_op::<dto::SetOnHandBody>),
        )
        .route(
            "/v1/stock/{sku}/{warehouse}/receipts",
            post(stock::key_op::<dto::ReceiptBody>),
        )
        .route(
            "/v1/stock/{sku}/{warehouse}/safety-stock",
            axum::routing::put(stock::key_op::<dto::SafetyStockBody>),
        )
        .route("/v1/cluster", get(cluster::status))
        .route("/v1/cluster/leave", post(cluster::leave));
    let orders = Router::new()
        .route("/v1/orders", post(orders::create))
        .route("/v1/orders/{id}", get(orders::get))
        .route("/v1/orders/{id}/commit", post(orders::commit))
        .route("/v1/orders/{id}/release", post(orders::release))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            cluster::route_orders,
        ))
        .route("/v1/batch", post(orders::batch))
        .route_layer(middleware::from_fn(detach));
    let v1 = v1.merge(orders);
    Router::new()
        .merge(v1)
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({ "status": "up" })) }),
        )
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .fallback(|| async { ApiError::not_found("not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed here",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// A request of several steps runs to its end whatever the client does. axum drops a
/// handler's future when the client's connection closes; an order or a batch cut off between
/// two of its steps would leave holds taken and its record half-way (`reserving`) on a live
/// node. So orders and batches run on a task of their own, which the connection only waits
/// for. A single-key operation needs none: it is one message to the key's actor (or one
/// forward to its owner), which runs once sent whether or not anyone waits for the answer,
/// and is not sent if the caller goes first. Reads stay inline: dropping one changes nothing.
/// (A task per request costs ~10 % more CPU per reservation, measured.)
async fn detach(req: Request, next: Next) -> Response {
    if matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    ) {
        return next.run(req).await;
    }
    match tokio::spawn(next.run(req)).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::error!(error = %e, "request task failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the request failed on the server",
            )
            .into_response()
        }
    }
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.node.is_ready() {
        Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "recovery in progress",
        )
        .into_response()
    }
}

async fn render_metrics(State(state): State<AppState>) -> String {
    state.metrics.render()
}

/// The one middleware: refuses `/v1` calls until recovery (interrupted orders) has finished,
/// and records count and latency per route template (never per SKU: bounded label values).
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !state.node.is_ready() && req.uri().path().starts_with("/v1/") {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "recovery in progress",
        )
        .with("retry_after_ms", 100)
        .into_response();
    }
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let started = Instant::now();
    let resp = next.run(req).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    telemetry::record_http(
        route,
        &method,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// The process-wide Prometheus recorder, installed on first use (tests start many servers in
/// one process; a recorder can be installed only once).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ];
            let sizes = [
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &latency)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), &sizes))
                .map(|b| b.build_recorder());
            match recorder {
                Ok(recorder) => {
                    let handle = recorder.handle();
                    if metrics::set_global_recorder(recorder).is_err() {
                        tracing::warn!("a metrics recorder was already installed");
                    }
                    handle
                }
                Err(e) => {
                    tracing::error!(error = %e, "metrics recorder setup failed");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}
