//! The OpenAPI 3.1 document served at `/openapi.json`. Written by hand next to the DTOs it
//! describes; `tests/http_api.rs` checks that every route the router serves is documented.

use serde_json::{json, Value};

fn obj(required: &[&str], props: Value) -> Value {
    json!({ "type": "object", "additionalProperties": false, "required": required, "properties": props })
}

fn id() -> Value {
    json!({ "type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$" })
}

fn qty() -> Value {
    json!({ "type": "integer", "minimum": 1, "maximum": 1_000_000_000u64 })
}

fn count() -> Value {
    json!({ "type": "integer", "minimum": 0, "maximum": 1_000_000_000_000u64 })
}

fn body(schema: &str) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn resp(desc: &str, schema: &str) -> Value {
    json!({ "description": desc, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } })
}

fn errors(codes: &str) -> Value {
    json!({ "description": format!("Error; code is one of: {codes}"), "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn path_param(name: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "schema": id() })
}

fn op(summary: &str, params: &[&str], req: Option<&str>, responses: Value) -> Value {
    let mut o = json!({
        "summary": summary,
        "parameters": params.iter().map(|p| path_param(p)).collect::<Vec<_>>(),
        "responses": responses,
    });
    if let (Some(r), Some(m)) = (req, o.as_object_mut()) {
        m.insert("requestBody".into(), body(r));
    }
    o
}

fn schemas() -> Value {
    json!({
        "Error": { "type": "object", "required": ["code", "message"], "properties": {
            "code": { "type": "string" }, "message": { "type": "string" } }, "additionalProperties": true },
        "ReserveRequest": obj(&["sku", "warehouse", "qty", "reservation_id"], json!({
            "sku": id(), "warehouse": id(), "qty": qty(), "reservation_id": id(),
            "ttl_ms": { "type": "integer", "minimum": 1, "maximum": 604_800_000u64, "default": 900_000 },
            "order_id": id() })),
        "Reservation": { "type": "object", "properties": {
            "sku": id(), "warehouse": id(), "reservation_id": id(), "qty": qty(),
            "expires_at_ms": { "type": "integer" }, "available": count(),
            "status": { "enum": ["committed", "released"] } } },
        "KeyRef": obj(&["sku", "warehouse"], json!({ "sku": id(), "warehouse": id() })),
        "Stock": { "type": "object", "properties": {
            "sku": id(), "warehouse": id(), "on_hand": count(), "reserved": count(), "available": count(),
            "safety_stock": count(), "version": { "type": "integer" } } },
        "SkuStock": { "type": "object", "properties": {
            "sku": id(), "warehouses": { "type": "array", "items": { "$ref": "#/components/schemas/Stock" } },
            "total": { "type": "object" } } },
        "SetOnHand": obj(&["on_hand", "op_id"], json!({ "on_hand": count(), "op_id": id() })),
        "Receipt": obj(&["qty", "op_id"], json!({ "qty": qty(), "op_id": id() })),
        "SafetyStock": obj(&["safety_stock", "op_id"], json!({ "safety_stock": count(), "op_id": id() })),
        "OrderRequest": obj(&["order_id", "lines"], json!({
            "order_id": id(), "ttl_ms": { "type": "integer", "minimum": 1 },
            "lines": { "type": "array", "minItems": 1, "maxItems": 100, "items": obj(&["sku", "qty", "warehouses"], json!({
                "sku": id(), "qty": qty(),
                "warehouses": { "type": "array", "minItems": 1, "maxItems": 16, "items": id() } })) } })),
        "Order": { "type": "object", "properties": {
            "order_id": id(), "status": { "enum": ["reserving", "reserved", "failed", "aborted", "committing", "committed", "expired", "releasing", "released"] },
            "ttl_ms": { "type": "integer" }, "created_at_ms": { "type": "integer" }, "expires_at_ms": { "type": "integer" },
            "failed_line": { "type": "integer" }, "expired_lines": { "type": "array" }, "lines": { "type": "array" } } },
        "BatchRequest": obj(&["ops"], json!({ "ops": { "type": "array", "minItems": 1, "maxItems": 1000, "items": {
            "type": "object", "required": ["op"], "properties": { "op": { "enum": [
                "reserve", "commit", "release", "receive", "set_on_hand", "set_safety_stock", "get"] } },
            "description": "The fields of the matching single-operation body plus sku and warehouse." } } })),
        "BatchResponse": { "type": "object", "properties": { "results": { "type": "array", "items": {
            "type": "object", "properties": { "status": { "type": "integer" }, "body": { "type": "object" } } } } } },
    })
}

pub fn document() -> Value {
    let reserve_errors = "insufficient_stock, id_conflict (409); invalid_id, invalid_quantity, invalid_ttl, invalid_body, malformed_json (400)";
    let finish_errors = "unknown_reservation (404); expired, already_released, already_committed, reservation_not_held (409)";
    let paths = json!({
        "/v1/reservations": { "post": op("Reserve stock (a hold with a TTL)", &[], Some("ReserveRequest"), json!({
            "201": resp("Reserved", "Reservation"), "200": resp("Replay of the same id and body: the first answer", "Reservation"),
            "409": errors(reserve_errors), "400": errors(reserve_errors), "503": errors("overloaded, key_unavailable, not_ready, vnode_unavailable (nothing applied), timeout or outcome_unknown (may still apply: retry with the same id)") })) },
        "/v1/reservations/{id}/commit": { "post": op("Commit a hold: the units leave on_hand", &["id"], Some("KeyRef"), json!({
            "200": resp("Committed (also on a repeat)", "Reservation"), "404": errors(finish_errors), "409": errors(finish_errors) })) },
        "/v1/reservations/{id}/release": { "post": op("Release a hold", &["id"], Some("KeyRef"), json!({
            "200": resp("Released (also on a repeat)", "Reservation"), "404": errors(finish_errors), "409": errors(finish_errors) })) },
        "/v1/stock/{sku}": { "get": op("Stock of a SKU in every warehouse, with totals", &["sku"], None, json!({
            "200": resp("Stock", "SkuStock") })) },
        "/v1/stock/{sku}/{warehouse}": {
            "get": op("Stock of one key", &["sku", "warehouse"], None, json!({ "200": resp("Stock", "Stock") })),
            "put": op("Cycle count: set on_hand", &["sku", "warehouse"], Some("SetOnHand"), json!({
                "200": resp("Set", "Stock"), "409": errors("count_below_reserved (with shortfall), id_conflict") })) },
        "/v1/stock/{sku}/{warehouse}/receipts": { "post": op("Receive (restock)", &["sku", "warehouse"], Some("Receipt"), json!({
            "200": resp("Received", "Stock"), "409": errors("id_conflict"), "422": errors("stock_limit") })) },
        "/v1/stock/{sku}/{warehouse}/safety-stock": { "put": op("Set safety stock", &["sku", "warehouse"], Some("SafetyStock"), json!({
            "200": resp("Set", "Stock"), "409": errors("id_conflict") })) },
        "/v1/orders": { "post": op("Reserve an order: all lines or none", &[], Some("OrderRequest"), json!({
            "201": resp("Every line held", "Order"), "200": resp("Replay", "Order"),
            "409": errors("insufficient_stock (names the line), id_conflict, order_aborted (an interrupted reservation was undone; nothing is held)") })) },
        "/v1/orders/{id}": { "get": op("An order", &["id"], None, json!({ "200": resp("Order", "Order"), "404": errors("unknown_order") })) },
        "/v1/orders/{id}/commit": { "post": op("Commit every line", &["id"], None, json!({
            "200": resp("Committed", "Order"), "404": errors("unknown_order"), "409": errors("invalid_order_state, expired (names the expired_lines not sold)") })) },
        "/v1/orders/{id}/release": { "post": op("Release every line", &["id"], None, json!({
            "200": resp("Released", "Order"), "404": errors("unknown_order"), "409": errors("invalid_order_state") })) },
        "/v1/batch": { "post": op("Many operations; results in order", &[], Some("BatchRequest"), json!({
            "200": resp("Per-op status and body", "BatchResponse"), "400": errors("invalid_batch and per-op validation errors (with index)") })) },
        "/health": { "get": { "summary": "Process is up", "responses": { "200": { "description": "up" } } } },
        "/ready": { "get": { "summary": "Recovery finished", "responses": { "200": { "description": "ready" }, "503": errors("not_ready") } } },
        "/metrics": { "get": { "summary": "Prometheus metrics", "responses": { "200": { "description": "text exposition format" } } } },
        "/openapi.json": { "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI 3.1" } } } },
    });
    json!({
        "openapi": "3.1.0",
        "info": { "title": "stockring", "version": env!("CARGO_PKG_VERSION"),
            "description": "Inventory reservations: one actor per (sku, warehouse), durable before every reply." },
        "paths": paths,
        "components": { "schemas": schemas() },
    })
}
