//! Request and response bodies. They are separate from domain types: these are the public
//! contract (documented in `/openapi.json`), and converting them validates into domain types,
//! so nothing unchecked reaches the ledger (C6). Unknown fields are rejected.

use super::error::ApiError;
use crate::domain::order::{OrderLine, OrderRequest};
use crate::domain::{Command, OpId, OrderId, Qty, ReservationId, Sku, StockKey, WarehouseId};
use crate::limits::{DEFAULT_TTL_MS, MAX_LINE_WAREHOUSES, MAX_ORDER_LINES, MAX_STOCK, MAX_TTL_MS};
use serde::Deserialize;

pub fn sku(s: &str) -> Result<Sku, ApiError> {
    Sku::parse(s).map_err(|e| ApiError::invalid_id("sku", e))
}

pub fn warehouse(s: &str) -> Result<WarehouseId, ApiError> {
    WarehouseId::parse(s).map_err(|e| ApiError::invalid_id("warehouse", e))
}

pub fn key(s: &str, w: &str) -> Result<StockKey, ApiError> {
    Ok(StockKey::new(sku(s)?, warehouse(w)?))
}

pub fn reservation_id(s: &str) -> Result<ReservationId, ApiError> {
    ReservationId::parse(s).map_err(|e| ApiError::invalid_id("reservation_id", e))
}

pub fn op_id(s: &str) -> Result<OpId, ApiError> {
    OpId::parse(s).map_err(|e| ApiError::invalid_id("op_id", e))
}

pub fn order_id(s: &str) -> Result<OrderId, ApiError> {
    OrderId::parse(s).map_err(|e| ApiError::invalid_id("order_id", e))
}

fn qty(n: u64) -> Result<Qty, ApiError> {
    Qty::new(n)
        .map_err(|e| ApiError::bad_request("invalid_quantity", e.to_string()).with("field", "qty"))
}

fn stock_figure(field: &'static str, n: u64) -> Result<u64, ApiError> {
    if n > MAX_STOCK {
        return Err(ApiError::bad_request(
            "invalid_quantity",
            format!("{field} must be at most {MAX_STOCK}"),
        )
        .with("field", field));
    }
    Ok(n)
}

fn ttl(ttl_ms: Option<u64>) -> Result<u64, ApiError> {
    let t = ttl_ms.unwrap_or(DEFAULT_TTL_MS);
    if t == 0 || t > MAX_TTL_MS {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            format!("ttl_ms must be between 1 and {MAX_TTL_MS}"),
        )
        .with("field", "ttl_ms"));
    }
    Ok(t)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveBody {
    pub sku: String,
    pub warehouse: String,
    pub qty: u64,
    pub reservation_id: String,
    pub ttl_ms: Option<u64>,
    pub order_id: Option<String>,
}

impl ReserveBody {
    pub fn into_command(self) -> Result<(StockKey, Command), ApiError> {
        let key = key(&self.sku, &self.warehouse)?;
        let command = Command::Reserve {
            reservation_id: reservation_id(&self.reservation_id)?,
            qty: qty(self.qty)?,
            ttl_ms: ttl(self.ttl_ms)?,
            order_id: self.order_id.as_deref().map(order_id).transpose()?,
        };
        Ok((key, command))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBody {
    pub sku: String,
    pub warehouse: String,
}

/// The body of an op-id operation on one key (count, receipt, safety stock).
pub trait KeyOpBody: serde::de::DeserializeOwned + Send + 'static {
    fn into_command(self) -> Result<Command, ApiError>;
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetOnHandBody {
    pub on_hand: u64,
    pub op_id: String,
}

impl KeyOpBody for SetOnHandBody {
    fn into_command(self) -> Result<Command, ApiError> {
        Ok(Command::SetOnHand {
            op_id: op_id(&self.op_id)?,
            on_hand: stock_figure("on_hand", self.on_hand)?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    pub qty: u64,
    pub op_id: String,
}

impl KeyOpBody for ReceiptBody {
    fn into_command(self) -> Result<Command, ApiError> {
        Ok(Command::Receive {
            op_id: op_id(&self.op_id)?,
            qty: qty(self.qty)?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyStockBody {
    pub safety_stock: u64,
    pub op_id: String,
}

impl KeyOpBody for SafetyStockBody {
    fn into_command(self) -> Result<Command, ApiError> {
        Ok(Command::SetSafetyStock {
            op_id: op_id(&self.op_id)?,
            safety_stock: stock_figure("safety_stock", self.safety_stock)?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderBody {
    pub order_id: String,
    pub ttl_ms: Option<u64>,
    pub lines: Vec<OrderLineBody>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderLineBody {
    pub sku: String,
    pub qty: u64,
    pub warehouses: Vec<String>,
}

impl OrderBody {
    pub fn into_request(self) -> Result<(OrderId, OrderRequest), ApiError> {
        let id = order_id(&self.order_id)?;
        if self.lines.is_empty() || self.lines.len() > MAX_ORDER_LINES {
            return Err(ApiError::bad_request(
                "invalid_order",
                format!("an order has 1 to {MAX_ORDER_LINES} lines"),
            ));
        }
        let mut lines = Vec::with_capacity(self.lines.len());
        for l in self.lines {
            if l.warehouses.is_empty() || l.warehouses.len() > MAX_LINE_WAREHOUSES {
                return Err(ApiError::bad_request(
                    "invalid_order",
                    format!("a line lists 1 to {MAX_LINE_WAREHOUSES} warehouses"),
                ));
            }
            let warehouses: Vec<WarehouseId> = l
                .warehouses
                .iter()
                .map(|w| warehouse(w))
                .collect::<Result<_, _>>()?;
            let mut sorted = warehouses.clone();
            sorted.sort();
            sorted.dedup();
            if sorted.len() != warehouses.len() {
                return Err(ApiError::bad_request(
                    "invalid_order",
                    "a line lists a warehouse twice",
                ));
            }
            lines.push(OrderLine {
                sku: sku(&l.sku)?,
                qty: qty(l.qty)?,
                warehouses,
            });
        }
        Ok((
            id,
            OrderRequest {
                ttl_ms: ttl(self.ttl_ms)?,
                lines,
            },
        ))
    }
}

/// One operation of `/v1/batch`; the same bodies as the single endpoints, tagged by `op`.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum BatchOp {
    Reserve {
        sku: String,
        warehouse: String,
        qty: u64,
        reservation_id: String,
        ttl_ms: Option<u64>,
        order_id: Option<String>,
    },
    Commit {
        sku: String,
        warehouse: String,
        reservation_id: String,
    },
    Release {
        sku: String,
        warehouse: String,
        reservation_id: String,
    },
    Receive {
        sku: String,
        warehouse: String,
        qty: u64,
        op_id: String,
    },
    SetOnHand {
        sku: String,
        warehouse: String,
        on_hand: u64,
        op_id: String,
    },
    SetSafetyStock {
        sku: String,
        warehouse: String,
        safety_stock: u64,
        op_id: String,
    },
    Get {
        sku: String,
        warehouse: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    pub ops: Vec<BatchOp>,
}

/// A validated batch operation: a command, or a read.
pub enum Validated {
    Command {
        key: StockKey,
        command: Command,
        op: &'static str,
    },
    Get {
        key: StockKey,
    },
}

impl BatchOp {
    pub fn validate(self) -> Result<Validated, ApiError> {
        let cmd = |key, command, op| Ok(Validated::Command { key, command, op });
        match self {
            BatchOp::Reserve {
                sku,
                warehouse,
                qty,
                reservation_id,
                ttl_ms,
                order_id,
            } => {
                let body = ReserveBody {
                    sku,
                    warehouse,
                    qty,
                    reservation_id,
                    ttl_ms,
                    order_id,
                };
                let (key, command) = body.into_command()?;
                cmd(key, command, "reserve")
            }
            BatchOp::Commit {
                sku,
                warehouse,
                reservation_id: r,
            } => cmd(
                key(&sku, &warehouse)?,
                Command::Commit {
                    reservation_id: reservation_id(&r)?,
                },
                "commit",
            ),
            BatchOp::Release {
                sku,
                warehouse,
                reservation_id: r,
            } => cmd(
                key(&sku, &warehouse)?,
                Command::Release {
                    reservation_id: reservation_id(&r)?,
                },
                "release",
            ),
            BatchOp::Receive {
                sku,
                warehouse,
                qty,
                op_id,
            } => cmd(
                key(&sku, &warehouse)?,
                ReceiptBody { qty, op_id }.into_command()?,
                "receive",
            ),
            BatchOp::SetOnHand {
                sku,
                warehouse,
                on_hand,
                op_id,
            } => cmd(
                key(&sku, &warehouse)?,
                SetOnHandBody { on_hand, op_id }.into_command()?,
                "set_on_hand",
            ),
            BatchOp::SetSafetyStock {
                sku,
                warehouse,
                safety_stock,
                op_id,
            } => cmd(
                key(&sku, &warehouse)?,
                SafetyStockBody {
                    safety_stock,
                    op_id,
                }
                .into_command()?,
                "set_safety_stock",
            ),
            BatchOp::Get { sku, warehouse } => Ok(Validated::Get {
                key: key(&sku, &warehouse)?,
            }),
        }
    }
}
