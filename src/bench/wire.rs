//! The JSON shapes of the three endpoints the load generator drives.
//!
//! They mirror the server's public contract by hand rather than importing the API layer, so the
//! bench keeps testing the wire format a real client sees, and so the null server can be built
//! from exactly the same shapes. Request bodies refuse unknown fields like the real server does;
//! response bodies tolerate them so a server that grows a field does not break the bench.

use serde::{Deserialize, Serialize};

/// `PUT /v1/stock/{sku}/{warehouse}`: a cycle count that sets on-hand.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct SetStockRequest {
    pub on_hand: u64,
    pub op_id: String,
}

/// `POST /v1/reservations`.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    pub sku: String,
    pub warehouse: String,
    pub qty: u64,
    pub reservation_id: String,
    pub ttl_ms: u64,
}

/// The stock figures of one (sku, warehouse), returned by PUT and GET.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct StockView {
    pub sku: String,
    pub warehouse: String,
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
    pub safety_stock: u64,
    pub version: u64,
}

/// A granted reservation (201, or 200 on a replay).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ReservationView {
    pub reservation_id: String,
    pub sku: String,
    pub warehouse: String,
    pub qty: u64,
    pub expires_at_ms: u64,
    pub available: u64,
}

/// Every error body; `available` is only present on `insufficient_stock`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ErrorBody {
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<u64>,
}

/// The error code that marks a legitimate "sold out" answer rather than a failure.
pub const INSUFFICIENT_STOCK: &str = "insufficient_stock";
