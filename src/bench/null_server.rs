//! The null server: the node's three bench endpoints served from a `HashMap` behind a mutex.
//!
//! It is a **ceiling reference, not an implementation**: no actors, no journal, no durability,
//! no idempotency tracking (a replayed reservation id reserves again), no expiry. It is built
//! the way the real API is (axum, the same JSON shapes extracted and serialized, `Json`
//! responses), so benchmarking it measures what HTTP + JSON + this load generator cost on their
//! own. The gap between it and a real node is what the service itself costs.
//!
//! Given a [`DurableLog`] (`--durable-dir`), it also appends every change to SQLite and answers
//! only after the fsync: the floor of durable acknowledgements alone (see `durable_log`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};

use super::durable_log::DurableLog;
use super::wire::{
    ErrorBody, ReservationView, ReserveRequest, SetStockRequest, StockView, INSUFFICIENT_STOCK,
};

/// The figures of one (sku, warehouse).
#[derive(Debug, Default, Clone, Copy)]
struct Level {
    on_hand: u64,
    reserved: u64,
    version: u64,
}

impl Level {
    fn available(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved)
    }
}

type Stock = HashMap<(String, String), Level>;

#[derive(Clone)]
struct NullState {
    stock: Arc<Mutex<Stock>>,
    /// With `--durable-dir`: every change is also committed to SQLite before it is answered.
    log: Option<DurableLog>,
}

impl NullState {
    /// Appends a small record of the change to the durable log, if there is one.
    async fn persist(&self, id: &str, sku: &str, warehouse: &str, n: u64) -> Result<(), NullError> {
        let Some(log) = &self.log else {
            return Ok(());
        };
        let entry = format!("{id}\0{sku}\0{warehouse}\0{n}").into_bytes();
        log.append(entry)
            .await
            .map_err(|e| NullError::new(StatusCode::SERVICE_UNAVAILABLE, "storage", &e.to_string()))
    }

    /// A handler cannot panic while holding the lock, but a poisoned map is still usable.
    fn lock(&self) -> MutexGuard<'_, Stock> {
        self.stock.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The null server's router: `PUT`/`GET /v1/stock/{sku}/{warehouse}` and
/// `POST /v1/reservations`, all in memory (and, given a `log`, each change appended to it
/// durably before the answer). See the module docs for what it leaves out.
pub fn null_router(log: Option<DurableLog>) -> Router {
    Router::new()
        .route("/v1/stock/{sku}/{warehouse}", put(set_stock).get(get_stock))
        .route("/v1/reservations", post(reserve))
        .with_state(NullState {
            stock: Arc::default(),
            log,
        })
}

/// Serves [`null_router`] on an already bound listener until `shutdown` resolves. The caller
/// binds, so it can print the real address when asked for port 0, and supplies its own signal
/// handling, so the null server stops the same way a node does.
pub async fn serve_null<F>(
    listener: tokio::net::TcpListener,
    log: Option<DurableLog>,
    shutdown: F,
) -> anyhow::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    tracing::info!(addr = %listener.local_addr()?, "null server listening");
    axum::serve(listener, null_router(log))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn set_stock(
    State(state): State<NullState>,
    Path((sku, warehouse)): Path<(String, String)>,
    Json(req): Json<SetStockRequest>,
) -> Result<Json<StockView>, NullError> {
    check_ids(&[&sku, &warehouse, &req.op_id])?;
    let level = {
        let mut stock = state.lock();
        let level = stock.entry((sku.clone(), warehouse.clone())).or_default();
        level.on_hand = req.on_hand;
        level.version += 1;
        *level
    };
    state
        .persist(&req.op_id, &sku, &warehouse, req.on_hand)
        .await?;
    Ok(Json(view(sku, warehouse, level)))
}

async fn get_stock(
    State(state): State<NullState>,
    Path((sku, warehouse)): Path<(String, String)>,
) -> Result<Json<StockView>, NullError> {
    check_ids(&[&sku, &warehouse])?;
    let level = state.lock().get(&(sku.clone(), warehouse.clone())).copied();
    match level {
        Some(level) => Ok(Json(view(sku, warehouse, level))),
        None => Err(NullError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "unknown key",
        )),
    }
}

async fn reserve(
    State(state): State<NullState>,
    Json(req): Json<ReserveRequest>,
) -> Result<(StatusCode, Json<ReservationView>), NullError> {
    check_ids(&[&req.sku, &req.warehouse, &req.reservation_id])?;
    if req.qty == 0 {
        return Err(NullError::invalid("qty must be at least 1"));
    }
    let available = {
        let mut stock = state.lock();
        // An unknown key simply has nothing available; it is not created.
        let key = (req.sku.clone(), req.warehouse.clone());
        match stock.get_mut(&key).filter(|l| l.available() >= req.qty) {
            Some(level) => {
                level.reserved += req.qty;
                level.version += 1;
                Ok(level.available())
            }
            None => Err(stock.get(&key).map_or(0, Level::available)),
        }
    };
    // A refusal is persisted too, as a node journals it (a replayed id must get it again).
    state
        .persist(&req.reservation_id, &req.sku, &req.warehouse, req.qty)
        .await?;
    let available = available.map_err(NullError::insufficient)?;
    let grant = ReservationView {
        reservation_id: req.reservation_id,
        sku: req.sku,
        warehouse: req.warehouse,
        qty: req.qty,
        expires_at_ms: now_ms().saturating_add(req.ttl_ms),
        available,
    };
    Ok((StatusCode::CREATED, Json(grant)))
}

fn view(sku: String, warehouse: String, level: Level) -> StockView {
    StockView {
        sku,
        warehouse,
        on_hand: level.on_hand,
        reserved: level.reserved,
        available: level.available(),
        safety_stock: 0,
        version: level.version,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The same id rule as the real server (`[A-Za-z0-9._:-]{1,128}`), so the null server does
/// the same per-request validation work.
fn check_ids(ids: &[&str]) -> Result<(), NullError> {
    let valid = |s: &str| {
        (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    };
    match ids.iter().find(|s| !valid(s)) {
        None => Ok(()),
        Some(bad) => Err(NullError::invalid(&format!("invalid id {bad:?}"))),
    }
}

/// An error answer in the server's `{"code","message"}` shape.
#[derive(Debug)]
struct NullError {
    status: StatusCode,
    body: ErrorBody,
}

impl NullError {
    fn new(status: StatusCode, code: &str, message: &str) -> Self {
        let body = ErrorBody {
            code: code.to_owned(),
            message: message.to_owned(),
            available: None,
        };
        Self { status, body }
    }

    fn invalid(message: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    fn insufficient(available: u64) -> Self {
        let mut err = Self::new(StatusCode::CONFLICT, INSUFFICIENT_STOCK, "not enough stock");
        err.body.available = Some(available);
        err
    }
}

impl IntoResponse for NullError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}
