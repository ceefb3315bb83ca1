//! Ledger outcomes to HTTP: the status, the body and the stable code of every answer, shared
//! by the single-operation endpoints and `/v1/batch`. Also counts every operation by outcome.

use super::error::ApiError;
use crate::domain::{Command, Outcome, StockKey, StockView};
use axum::http::StatusCode;
use serde_json::{json, Value};

/// A successful answer.
pub type Reply = (StatusCode, Value);

pub fn op_name(command: &Command) -> &'static str {
    match command {
        Command::Reserve { .. } => "reserve",
        Command::Commit { .. } => "commit",
        Command::Release { .. } => "release",
        Command::Cancel { .. } => "cancel",
        Command::Receive { .. } => "receive",
        Command::SetOnHand { .. } => "set_on_hand",
        Command::SetSafetyStock { .. } => "set_safety_stock",
    }
}

pub fn view_body(key: &StockKey, v: &StockView) -> Value {
    json!({
        "sku": key.sku.as_str(),
        "warehouse": key.warehouse.as_str(),
        "on_hand": v.on_hand,
        "reserved": v.reserved,
        "available": v.available,
        "safety_stock": v.safety_stock,
        "version": v.version,
    })
}

/// Maps one outcome; rejections come back as `Err` with their code.
pub fn outcome_reply(
    key: &StockKey,
    command: &Command,
    outcome: Outcome,
) -> Result<Reply, ApiError> {
    let op = op_name(command);
    let result = map(key, command, outcome);
    let label = match &result {
        Ok((StatusCode::OK, _)) if op == "reserve" => "replay",
        Ok(_) => "ok",
        Err(e) => e.code,
    };
    super::telemetry::record_operation(op, label);
    result
}

fn status(replay: bool, created: bool) -> StatusCode {
    if created && !replay {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

fn reservation_id(command: &Command) -> &str {
    match command {
        Command::Reserve { reservation_id, .. }
        | Command::Commit { reservation_id }
        | Command::Release { reservation_id }
        | Command::Cancel { reservation_id } => reservation_id.as_str(),
        _ => "",
    }
}

fn map(key: &StockKey, command: &Command, outcome: Outcome) -> Result<Reply, ApiError> {
    let rid = reservation_id(command);
    let base = |extra: Value| {
        let mut body = json!({ "sku": key.sku.as_str(), "warehouse": key.warehouse.as_str() });
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        body
    };
    match outcome {
        Outcome::Reserved { qty, expires_at_ms, available, replay } => Ok((
            status(replay, true),
            base(json!({ "reservation_id": rid, "qty": qty, "expires_at_ms": expires_at_ms, "available": available })),
        )),
        Outcome::Committed { qty, .. } => {
            Ok((StatusCode::OK, base(json!({ "reservation_id": rid, "status": "committed", "qty": qty }))))
        }
        Outcome::Released { qty, .. } => {
            Ok((StatusCode::OK, base(json!({ "reservation_id": rid, "status": "released", "qty": qty }))))
        }
        Outcome::StockSet { on_hand, reserved, safety_stock, available, .. } => Ok((
            StatusCode::OK,
            base(json!({ "on_hand": on_hand, "reserved": reserved, "available": available, "safety_stock": safety_stock })),
        )),
        Outcome::Insufficient { requested, available, .. } => Err(ApiError::conflict(
            "insufficient_stock",
            format!("requested {requested}, available {available}"),
        )
        .with("available", available)
        .with("requested", requested)),
        Outcome::CountBelowReserved { counted, reserved, shortfall, .. } => Err(ApiError::conflict(
            "count_below_reserved",
            format!("counted {counted} is {shortfall} below the {reserved} units reserved; release holds first"),
        )
        .with("counted", counted)
        .with("reserved", reserved)
        .with("shortfall", shortfall)),
        Outcome::StockLimit { limit } => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "stock_limit",
            format!("the result would exceed the stock limit {limit}"),
        )
        .with("limit", limit)),
        Outcome::IdConflict => Err(ApiError::conflict("id_conflict", "this id was already used with a different request")),
        Outcome::UnknownReservation => Err(ApiError::not_found("unknown_reservation", format!("no reservation {rid} on {key}"))),
        Outcome::NotHeld => Err(ApiError::conflict("reservation_not_held", "the reservation was refused; nothing is held")),
        Outcome::Expired { expires_at_ms } => {
            Err(ApiError::conflict("expired", "the hold expired").with("expires_at_ms", expires_at_ms))
        }
        Outcome::AlreadyReleased => Err(ApiError::conflict("already_released", "the reservation was released")),
        Outcome::AlreadyCommitted => Err(ApiError::conflict("already_committed", "the reservation was committed")),
        Outcome::Cancelled => Err(ApiError::conflict("cancelled", "the reservation was cancelled before it was made; nothing is held")),
    }
}
