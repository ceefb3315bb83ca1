//! The domain core: pure, deterministic, no I/O, no clock reads, no async, no serde.
//! Everything stockring promises per key (C1, C3, C4's single order of operations, C6's
//! validation into types) is decided here; the rest of the crate moves bytes around it.

pub mod ids;
pub mod ledger;
pub mod order;
pub mod placement;
pub mod qty;

pub use ids::{IdError, OpId, OrderId, ReservationId, Sku, StockKey, WarehouseId};
pub use ledger::{Command, Event, OpRequest, Outcome, StockState, StockView};
pub use qty::Qty;

#[cfg(test)]
mod ledger_props;
