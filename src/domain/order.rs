//! Order-level state (many keys): the durable record the coordinator writes before and after
//! touching stock, so a crash at any point leaves an order that recovery can finish or undo.
//!
//! Line `i` of order `o` always holds stock under reservation id `o#i`, at whichever of its
//! warehouses it was taken from. That makes every step idempotent: recovery (or a client retry)
//! can re-send any reserve, commit or release and get the first outcome back (C3).

use super::ids::{OrderId, ReservationId, Sku, StockKey, WarehouseId};
use super::qty::Qty;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub sku: Sku,
    pub qty: Qty,
    /// Preference order: the line is taken from the first warehouse that can fill it.
    pub warehouses: Vec<WarehouseId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest {
    pub ttl_ms: u64,
    pub lines: Vec<OrderLine>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// Holds are being taken; recovery undoes this state.
    Reserving,
    /// Every line is held.
    Reserved,
    /// A line could not be filled anywhere; every hold taken was released.
    Failed {
        line: usize,
    },
    /// A crash interrupted `Reserving`; recovery released every hold.
    Aborted,
    /// Holds are being committed; recovery finishes this state.
    Committing,
    Committed,
    /// No line was sold: the commit came after the order's holds ran out (`expires_at_ms`),
    /// or every line's hold was gone when the commit reached it.
    Expired,
    /// Holds are being released; recovery finishes this state.
    Releasing,
    Released,
}

impl OrderStatus {
    /// A step is under way (recovery or the sweep finishes or undoes it).
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            OrderStatus::Reserving | OrderStatus::Committing | OrderStatus::Releasing
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            OrderStatus::Reserving => "reserving",
            OrderStatus::Reserved => "reserved",
            OrderStatus::Failed { .. } => "failed",
            OrderStatus::Aborted => "aborted",
            OrderStatus::Committing => "committing",
            OrderStatus::Committed => "committed",
            OrderStatus::Expired => "expired",
            OrderStatus::Releasing => "releasing",
            OrderStatus::Released => "released",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub order_id: OrderId,
    pub request: OrderRequest,
    pub status: OrderStatus,
    /// The warehouse each line was taken from, once it is held.
    pub allocation: Vec<Option<WarehouseId>>,
    pub created_at_ms: u64,
    /// Latest expiry among the line holds (0 until reserved).
    pub expires_at_ms: u64,
    /// Lines not sold by the commit: their hold had expired (or was otherwise gone) when the
    /// commit reached them. Every other line of a `committed` order was sold.
    pub expired_lines: Vec<usize>,
}

/// A step the coordinator asked for that the order's state does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderTransition {
    /// The request is a replay of the finished step; answer from the record.
    Replay,
    /// The order is in a state that forbids the step (e.g. commit after release).
    Invalid,
    /// Go ahead.
    Proceed,
    /// The step ended the order without touching stock; record it and answer.
    Finished,
}

impl Order {
    pub fn new(order_id: OrderId, request: OrderRequest, now_ms: u64) -> Self {
        let n = request.lines.len();
        assert!(n > 0, "an order has lines");
        Self {
            order_id,
            request,
            status: OrderStatus::Reserving,
            allocation: vec![None; n],
            created_at_ms: now_ms,
            expires_at_ms: 0,
            expired_lines: Vec::new(),
        }
    }

    pub fn line_reservation(&self, line: usize) -> ReservationId {
        ReservationId::for_order_line(&self.order_id, line)
    }

    /// Every key a line may hold stock at, for recovery's undo of a half-reserved order.
    pub fn candidate_keys(&self, line: usize) -> impl Iterator<Item = StockKey> + '_ {
        let l = &self.request.lines[line];
        l.warehouses
            .iter()
            .map(|w| StockKey::new(l.sku.clone(), w.clone()))
    }

    /// The keys this order holds stock at, line by line.
    pub fn held_keys(&self) -> Vec<(usize, StockKey)> {
        self.allocation
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                let w = w.as_ref()?;
                Some((
                    i,
                    StockKey::new(self.request.lines[i].sku.clone(), w.clone()),
                ))
            })
            .collect()
    }

    pub fn line_held(&mut self, line: usize, warehouse: WarehouseId, expires_at_ms: u64) {
        assert_eq!(self.status, OrderStatus::Reserving);
        assert!(self.request.lines[line].warehouses.contains(&warehouse));
        self.allocation[line] = Some(warehouse);
        self.expires_at_ms = self.expires_at_ms.max(expires_at_ms);
    }

    pub fn all_held(&mut self) {
        assert_eq!(self.status, OrderStatus::Reserving);
        assert!(
            self.allocation.iter().all(Option::is_some),
            "an unfilled line"
        );
        self.status = OrderStatus::Reserved;
    }

    /// A line could not be filled: the order fails once its holds are released.
    pub fn line_failed(&mut self, line: usize) {
        assert!(matches!(self.status, OrderStatus::Reserving));
        self.status = OrderStatus::Failed { line };
    }

    pub fn aborted(&mut self) {
        assert_eq!(self.status, OrderStatus::Reserving);
        self.status = OrderStatus::Aborted;
    }

    /// A commit at `now_ms`. An order whose holds have all run out by then (`expires_at_ms`)
    /// sells nothing: it ends `expired` at once, without touching stock (`Finished`).
    pub fn begin_commit(&mut self, now_ms: u64) -> OrderTransition {
        match self.status {
            OrderStatus::Reserved if now_ms >= self.expires_at_ms => {
                self.status = OrderStatus::Expired;
                self.expired_lines = (0..self.request.lines.len()).collect();
                OrderTransition::Finished
            }
            OrderStatus::Reserved | OrderStatus::Committing => {
                self.status = OrderStatus::Committing;
                OrderTransition::Proceed
            }
            OrderStatus::Committed | OrderStatus::Expired => OrderTransition::Replay,
            _ => OrderTransition::Invalid,
        }
    }

    pub fn begin_release(&mut self) -> OrderTransition {
        match self.status {
            OrderStatus::Reserved | OrderStatus::Releasing => {
                self.status = OrderStatus::Releasing;
                OrderTransition::Proceed
            }
            OrderStatus::Released => OrderTransition::Replay,
            _ => OrderTransition::Invalid,
        }
    }

    /// Ends a commit or a release. `expired` are the lines whose hold was gone (expired, or
    /// forgotten after it expired) when the step reached them: for a commit those were not
    /// sold (all of them: the order `expired`); for a release they were free already, so
    /// nothing is recorded.
    pub fn finish(&mut self, expired: Vec<usize>) {
        assert!(expired.iter().all(|l| *l < self.request.lines.len()));
        match self.status {
            OrderStatus::Committing => {
                let all = expired.len() == self.request.lines.len();
                self.status = if all {
                    OrderStatus::Expired
                } else {
                    OrderStatus::Committed
                };
                self.expired_lines = expired;
            }
            OrderStatus::Releasing => self.status = OrderStatus::Released,
            other => panic!("finish() in state {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> Order {
        let line = OrderLine {
            sku: Sku::parse("s").unwrap(),
            qty: Qty::new(1).unwrap(),
            warehouses: vec![
                WarehouseId::parse("a").unwrap(),
                WarehouseId::parse("b").unwrap(),
            ],
        };
        Order::new(
            OrderId::parse("o").unwrap(),
            OrderRequest {
                ttl_ms: 10,
                lines: vec![line],
            },
            5,
        )
    }

    #[test]
    fn commit_after_release_is_invalid_and_repeats_are_replays() {
        let mut o = order();
        o.line_held(0, WarehouseId::parse("b").unwrap(), 15);
        o.all_held();
        assert_eq!(o.begin_release(), OrderTransition::Proceed);
        o.finish(Vec::new());
        assert_eq!(o.status, OrderStatus::Released);
        assert_eq!(o.begin_release(), OrderTransition::Replay);
        assert_eq!(o.begin_commit(6), OrderTransition::Invalid);
        assert_eq!(o.held_keys().len(), 1);
        assert_eq!(o.line_reservation(0).as_str(), "o#0");
    }

    #[test]
    fn a_commit_at_or_after_the_holds_ran_out_sells_nothing() {
        let mut o = order();
        o.line_held(0, WarehouseId::parse("a").unwrap(), 15);
        o.all_held();
        let mut late = o.clone();
        assert_eq!(late.begin_commit(15), OrderTransition::Finished);
        assert_eq!(late.status, OrderStatus::Expired);
        assert_eq!(late.expired_lines, [0]);
        assert_eq!(late.begin_commit(16), OrderTransition::Replay);
        assert_eq!(o.begin_commit(14), OrderTransition::Proceed);
        assert_eq!(o.status, OrderStatus::Committing);
        // A commit under way is finished by its lines' answers, whatever the time.
        assert_eq!(o.begin_commit(99), OrderTransition::Proceed);
    }
}
