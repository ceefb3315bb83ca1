//! The order coordinator: all-or-nothing reservations across keys.
//!
//! Protocol (each `put` is durable before the next step):
//! 1. `put(Reserving)`;
//! 2. reserve line `i` as `{order}#{i}` at its first warehouse that has the stock;
//! 3. all held: `put(Reserved)`, answer 201; a line unfillable: release what was held,
//!    `put(Failed)`, answer 409.
//!
//! Commit and release go `Committing`/`Releasing`, then the final state. A crash leaves an
//! order in a `*ing` state; `recover` runs before the node reports ready and undoes `Reserving`
//! (releases `{order}#{i}` at every candidate warehouse: it cannot know which reserve landed)
//! and finishes `Committing`/`Releasing`. Every step is idempotent per key (C3), so re-running
//! any of them is harmless. Holds also expire on their own.
//!
//! Requests for one order id are serialized by a per-order lock.

use super::{Node, ServiceError};
use crate::domain::order::{Order, OrderRequest, OrderStatus, OrderTransition};
use crate::domain::{Command, OrderId, Outcome, StockKey};
use crate::persistence::codec;
use crate::persistence::{Request, StorageError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// What the API gets back for an order request.
#[derive(Debug)]
pub enum OrderOutcome {
    /// The order as recorded; `replay` when nothing new was done.
    Done {
        order: Order,
        replay: bool,
    },
    /// The order id exists with a different body.
    IdConflict,
    /// A line could not be filled; `order` is recorded as failed.
    LineUnfillable {
        order: Order,
        line: usize,
    },
    /// Commit or release not allowed in the order's current state.
    InvalidState {
        order: Order,
    },
    /// A crash (or a failure and a failed undo) interrupted the reservation; nothing is held.
    Aborted {
        order: Order,
    },
    /// At least one hold had expired before it could be committed.
    Expired {
        order: Order,
        lines: Vec<usize>,
    },
    NotFound,
}

#[derive(Clone)]
pub struct OrderCoordinator {
    node: Node,
    locks: Arc<Mutex<HashMap<OrderId, Arc<tokio::sync::Mutex<()>>>>>,
}

impl OrderCoordinator {
    pub fn new(node: Node) -> Self {
        Self {
            node,
            locks: Arc::default(),
        }
    }

    fn lock_entry(&self, id: &OrderId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(id.clone()).or_default().clone()
    }

    async fn lock(&self, id: &OrderId) -> OrderLock {
        let m = self.lock_entry(id);
        let guard = m.clone().lock_owned().await;
        OrderLock {
            _guard: guard,
            id: id.clone(),
            locks: self.locks.clone(),
            m,
        }
    }

    /// The order's lock if no request holds it now.
    fn try_lock(&self, id: &OrderId) -> Option<OrderLock> {
        let m = self.lock_entry(id);
        let guard = m.clone().try_lock_owned();
        let lock = |guard| OrderLock {
            _guard: guard,
            id: id.clone(),
            locks: self.locks.clone(),
            m,
        };
        guard.ok().map(lock)
    }

    pub async fn get(&self, id: &OrderId) -> Result<Option<Order>, ServiceError> {
        let _l = self.lock(id).await;
        self.load(id).await
    }

    pub async fn reserve(
        &self,
        id: OrderId,
        request: OrderRequest,
    ) -> Result<OrderOutcome, ServiceError> {
        let _l = self.lock(&id).await;
        if let Some(mut order) = self.load(&id).await? {
            if order.request != request {
                return Ok(OrderOutcome::IdConflict);
            }
            if order.status == OrderStatus::Reserving {
                // An earlier attempt failed part-way and so did its undo: finish the undo now.
                // (Re-running the reservation instead would be wrong: a line the undo already
                // released would replay as reserved.)
                self.undo_reserving(&mut order).await?;
            }
            return Ok(match order.status {
                OrderStatus::Failed { line } => OrderOutcome::LineUnfillable { order, line },
                OrderStatus::Aborted => OrderOutcome::Aborted { order },
                _ => OrderOutcome::Done {
                    order,
                    replay: true,
                },
            });
        }
        let mut order = Order::new(id, request, self.node.now_ms());
        self.put(&order).await?;
        for line in 0..order.request.lines.len() {
            let filled = match self.reserve_line(&mut order, line).await {
                Ok(filled) => filled,
                Err(e) => {
                    // Unknown how far we got: undo like recovery would. If the undo fails too,
                    // the record stays `reserving` and a retry or the next start finishes it.
                    if let Err(undo) = self.undo_reserving(&mut order).await {
                        tracing::warn!(order = %order.order_id, error = %undo, "undo failed; left for retry or recovery");
                    }
                    return Err(e);
                }
            };
            if !filled {
                // Every held line must really be released before the order may say `failed`;
                // otherwise it stays `reserving`, which a retry or recovery undoes.
                self.release_held(&order).await?;
                order.line_failed(line);
                self.put(&order).await?;
                return Ok(OrderOutcome::LineUnfillable { order, line });
            }
        }
        order.all_held();
        self.put(&order).await?;
        Ok(OrderOutcome::Done {
            order,
            replay: false,
        })
    }

    /// Tries the line's warehouses in order; `Ok(false)` if none can fill it.
    async fn reserve_line(&self, order: &mut Order, line: usize) -> Result<bool, ServiceError> {
        let l = order.request.lines[line].clone();
        for warehouse in &l.warehouses {
            let command = Command::Reserve {
                reservation_id: order.line_reservation(line),
                qty: l.qty,
                ttl_ms: order.request.ttl_ms,
                order_id: Some(order.order_id.clone()),
            };
            let key = StockKey::new(l.sku.clone(), warehouse.clone());
            if let Outcome::Reserved { expires_at_ms, .. } = self.node.execute(key, command).await?
            {
                order.line_held(line, warehouse.clone(), expires_at_ms);
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub async fn commit(&self, id: &OrderId) -> Result<OrderOutcome, ServiceError> {
        self.commit_or_release(id, true).await
    }

    pub async fn release(&self, id: &OrderId) -> Result<OrderOutcome, ServiceError> {
        self.commit_or_release(id, false).await
    }

    async fn commit_or_release(
        &self,
        id: &OrderId,
        commit: bool,
    ) -> Result<OrderOutcome, ServiceError> {
        let _l = self.lock(id).await;
        let Some(mut order) = self.load(id).await? else {
            return Ok(OrderOutcome::NotFound);
        };
        let step = if commit {
            order.begin_commit(self.node.now_ms())
        } else {
            order.begin_release()
        };
        match step {
            OrderTransition::Replay => return Ok(finished(order, true)),
            OrderTransition::Invalid => return Ok(OrderOutcome::InvalidState { order }),
            OrderTransition::Finished => {
                self.put(&order).await?;
                return Ok(finished(order, false));
            }
            OrderTransition::Proceed => {}
        }
        self.put(&order).await?;
        self.finish(&mut order).await?;
        Ok(finished(order, false))
    }

    /// Drives a `committing` or `releasing` order to its end state and records it. Also the
    /// recovery of such an order: every step is idempotent per key.
    async fn finish(&self, order: &mut Order) -> Result<(), ServiceError> {
        let expired = self
            .finish_lines(order, order.status == OrderStatus::Committing)
            .await?;
        order.finish(expired);
        self.put(order).await
    }

    /// Commits or releases every held line; returns the lines whose hold was gone.
    ///
    /// A line counts as sold only if the key answers `committed` (now, or as the replay of an
    /// earlier attempt's commit). Any other answer means the hold is not there to sell: it
    /// expired, or it expired and its outcome was forgotten since (`unknown_reservation`),
    /// and those units may already belong to someone else. Counting such a line as sold
    /// would confirm units that never left `on_hand`. Recovery goes through here too.
    async fn finish_lines(&self, order: &Order, commit: bool) -> Result<Vec<usize>, ServiceError> {
        let mut gone = Vec::new();
        for (line, key) in order.held_keys() {
            let reservation_id = order.line_reservation(line);
            let command = if commit {
                Command::Commit { reservation_id }
            } else {
                Command::Release { reservation_id }
            };
            let outcome = self.node.execute(key, command).await?;
            let sold = matches!(outcome, Outcome::Committed { .. });
            if commit && !sold {
                gone.push(line);
            }
            if !commit && matches!(outcome, Outcome::AlreadyCommitted) {
                // The state machine never releases a committing order; say so if it happens.
                tracing::error!(order = %order.order_id, line, "release found the line committed");
            }
        }
        Ok(gone)
    }

    /// Best effort: the holds expire anyway if a release fails.
    async fn release_held(&self, order: &Order) -> Result<(), ServiceError> {
        for (line, key) in order.held_keys() {
            let command = Command::Release {
                reservation_id: order.line_reservation(line),
            };
            let _released = self.node.execute(key, command).await?;
        }
        Ok(())
    }

    /// Cancels the order's line ids at every candidate warehouse of every line (it cannot know
    /// which reserve landed), then records the order aborted. A cancel releases a hold that
    /// landed and leaves a tombstone where none did, so a reserve still on its way (a forward
    /// that timed out but was delivered late, or reordered behind this cancel) is refused
    /// instead of holding stock that nobody will release. Tries every key even if one fails,
    /// so one unavailable key strands nothing else; on any failure the order stays
    /// `reserving` for the next attempt.
    async fn undo_reserving(&self, order: &mut Order) -> Result<(), ServiceError> {
        let mut first_error = None;
        for line in 0..order.request.lines.len() {
            for key in order.candidate_keys(line).collect::<Vec<_>>() {
                let command = Command::Cancel {
                    reservation_id: order.line_reservation(line),
                };
                // Any answer will do (released, cancelled, not held): the id is spent.
                if let Err(e) = self.node.execute(key, command).await {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        order.aborted();
        self.put(order).await
    }

    /// Drives every order a crash interrupted to an end. Runs before the node is ready. An
    /// order that cannot be finished now (a key unavailable) is logged and left in flight: a
    /// client retry or the sweep (`recover_stalled`) finishes it, and its holds expire
    /// meanwhile. One bad key must not keep the whole node from serving. `enter` admits an
    /// order (see `recover_stalled`). Returns (finished, left).
    pub async fn recover<G>(
        &self,
        orders: Vec<Order>,
        enter: impl Fn(&OrderId) -> Option<G>,
    ) -> (usize, usize) {
        let (mut finished, mut left) = (0, 0);
        for mut order in orders {
            let Some(_inside) = enter(&order.order_id) else {
                continue;
            };
            let _l = self.lock(&order.order_id).await;
            if self.recover_logged(&mut order).await {
                finished += 1;
            } else {
                left += 1;
            }
        }
        (finished, left)
    }

    /// The safety net on a live node: orders left in flight although no request works on
    /// them any more (a step failed and so did its undo, or a node that coordinated them
    /// handed their vnode here). Those a request holds now are skipped; each is read again
    /// under its lock, since a request may have finished it after it was listed. Returns
    /// (finished, left).
    ///
    /// `enter` says whether this node coordinates an order now and, if so, holds what keeps
    /// that true while the order is worked on (in a cluster: its vnode's gate, which a handoff
    /// waits for). It is entered for one order at a time: held across the whole list, every
    /// handoff of those vnodes would wait for all the orders, up to an answer timeout each.
    pub async fn recover_stalled<G>(
        &self,
        orders: Vec<Order>,
        enter: impl Fn(&OrderId) -> Option<G>,
    ) -> (usize, usize) {
        let (mut finished, mut left) = (0, 0);
        for listed in orders {
            let Some(_inside) = enter(&listed.order_id) else {
                continue;
            };
            let Some(_l) = self.try_lock(&listed.order_id) else {
                continue;
            };
            let Ok(Some(mut order)) = self.load(&listed.order_id).await else {
                left += 1;
                continue;
            };
            if !order.status.in_flight() {
                continue;
            }
            if self.recover_logged(&mut order).await {
                finished += 1;
            } else {
                left += 1;
            }
        }
        (finished, left)
    }

    /// Orders in flight that no request has written for `stalled_ms`.
    pub async fn stalled(&self, stalled_ms: u64) -> Result<Vec<Order>, ServiceError> {
        let (tx, rx) = oneshot::channel();
        let reply = Box::new(move |r| {
            let _ = tx.send(r);
        });
        let updated_before_ms = self.node.now_ms().saturating_sub(stalled_ms);
        self.node
            .writer()
            .submit(Request::OrdersInFlight {
                updated_before_ms,
                reply,
            })
            .await?;
        Ok(rx.await.map_err(|_| StorageError::WriterStopped)??)
    }

    /// Recovers one order (its lock held); whether it reached an end state.
    async fn recover_logged(&self, order: &mut Order) -> bool {
        match self.recover_one(order).await {
            Ok(()) => {
                tracing::info!(order = %order.order_id, status = order.status.name(), "recovered order");
                true
            }
            Err(e) => {
                tracing::error!(order = %order.order_id, error = %e, "could not recover order; left for retry");
                false
            }
        }
    }

    async fn recover_one(&self, order: &mut Order) -> Result<(), ServiceError> {
        match order.status {
            OrderStatus::Reserving => self.undo_reserving(order).await,
            OrderStatus::Committing | OrderStatus::Releasing => self.finish(order).await,
            other => unreachable!("order {} not in flight: {other:?}", order.order_id),
        }
    }

    async fn put(&self, order: &Order) -> Result<(), ServiceError> {
        let (tx, rx) = oneshot::channel();
        let done = Box::new(move |r| {
            let _ = tx.send(r);
        });
        let request = Request::PutOrder {
            order_id: order.order_id.as_str().to_owned(),
            status: order.status.name(),
            record: codec::encode_order(order),
            at_ms: self.node.now_ms(),
            done,
        };
        self.node.writer().submit(request).await?;
        rx.await.map_err(|_| StorageError::WriterStopped)??;
        Ok(())
    }

    async fn load(&self, id: &OrderId) -> Result<Option<Order>, ServiceError> {
        let (tx, rx) = oneshot::channel();
        let reply = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.node
            .writer()
            .submit(Request::LoadOrder {
                order_id: id.as_str().to_owned(),
                reply,
            })
            .await?;
        Ok(rx.await.map_err(|_| StorageError::WriterStopped)??)
    }
}

/// The answer for a finished commit or release (or its replay).
fn finished(order: Order, replay: bool) -> OrderOutcome {
    if order.expired_lines.is_empty() {
        OrderOutcome::Done { order, replay }
    } else {
        let lines = order.expired_lines.clone();
        OrderOutcome::Expired { order, lines }
    }
}

/// Holds an order's lock; removes the lock entry when no one else waits on it.
struct OrderLock {
    _guard: tokio::sync::OwnedMutexGuard<()>,
    id: OrderId,
    locks: Arc<Mutex<HashMap<OrderId, Arc<tokio::sync::Mutex<()>>>>>,
    m: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for OrderLock {
    fn drop(&mut self) {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Held by: the map, `self.m`, and `_guard`'s own Arc. More means someone is waiting.
        if Arc::strong_count(&self.m) <= 3 {
            locks.remove(&self.id);
        }
    }
}

#[cfg(test)]
#[path = "order_tests.rs"]
mod tests;
