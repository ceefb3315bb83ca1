//! The per-key ledger: the whole business logic of one (sku, warehouse), as a pure state machine.
//!
//! `StockState::apply(command, now_ms)` returns the outcome for the client and the events to
//! journal; `StockState::apply_event` replays one event. Replaying the events of `apply` on a
//! copy of the old state yields exactly the new state (checked by the property tests), which is
//! what makes the journal the source of truth.
//!
//! Invariants, asserted after every step (`check_cheap`) and in full by the tests (`check_full`):
//! - `reserved == Σ qty of held reservations` and `reserved <= on_hand` (C1);
//! - every held reservation is in the expiry queue and nothing else is;
//! - after `apply` at `now`, no held reservation has `expires_at_ms <= now` (expiry is exact:
//!   a hold is live strictly before `created + ttl` and expired from that instant on);
//! - expiries apply in (expires_at, creation seq) order;
//! - `version` counts applied events.
//!
//! Time is an argument. It is clamped to the time of the last event (`last_now_ms`), and the
//! shell's clock is monotonic too, so a wall-clock step backwards can delay an expiry but never
//! make a hold expire early. Only events change the state: a command that changes nothing
//! (a replay, a refusal that is not recorded) leaves the state bit-for-bit as it was.

use super::ids::{OpId, OrderId, ReservationId};
use super::qty::Qty;
use crate::limits::MAX_STOCK;
use std::collections::{BTreeMap, BTreeSet};

/// What the client asked of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Reserve {
        reservation_id: ReservationId,
        qty: Qty,
        ttl_ms: u64,
        order_id: Option<OrderId>,
    },
    Commit {
        reservation_id: ReservationId,
    },
    Release {
        reservation_id: ReservationId,
    },
    /// Release the hold if there is one; if the id is unknown, remember it as cancelled, so a
    /// reserve of it that arrives later (reordered, or delayed in a paused process) is
    /// refused instead of holding stock nobody will release. The order coordinator's undo.
    Cancel {
        reservation_id: ReservationId,
    },
    Receive {
        op_id: OpId,
        qty: Qty,
    },
    SetOnHand {
        op_id: OpId,
        on_hand: u64,
    },
    SetSafetyStock {
        op_id: OpId,
        safety_stock: u64,
    },
}

/// The body of an op-id request, kept to tell a replay from a conflicting reuse of the id (C3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpRequest {
    Receive { qty: u64 },
    SetOnHand { on_hand: u64 },
    SetSafetyStock { safety_stock: u64 },
}

/// The answer to a command. Business rejections are values, not errors.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Outcome {
    Reserved {
        qty: u64,
        expires_at_ms: u64,
        available: u64,
        replay: bool,
    },
    Insufficient {
        requested: u64,
        available: u64,
        replay: bool,
    },
    Committed {
        qty: u64,
        replay: bool,
    },
    Released {
        qty: u64,
        replay: bool,
    },
    /// Receipt, count and safety-stock changes answer with the resulting stock figures.
    StockSet {
        on_hand: u64,
        reserved: u64,
        safety_stock: u64,
        available: u64,
        replay: bool,
    },
    /// A cycle count below what is reserved: refused, because accepting it would break
    /// `reserved <= on_hand`; the shortfall is reported so the operator can act on it.
    CountBelowReserved {
        counted: u64,
        reserved: u64,
        shortfall: u64,
        replay: bool,
    },
    /// The result would exceed `MAX_STOCK`. Not recorded: nothing changed.
    StockLimit {
        limit: u64,
    },
    IdConflict,
    UnknownReservation,
    /// Commit or release of a reservation that was refused for lack of stock.
    NotHeld,
    Expired {
        expires_at_ms: u64,
    },
    AlreadyReleased,
    AlreadyCommitted,
    /// The id was cancelled before any reserve of it arrived: nothing is (or will be) held.
    Cancelled,
}

/// A fact about one key, in journal order. Every event bumps `version` by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Reserved {
        reservation_id: ReservationId,
        qty: u64,
        ttl_ms: u64,
        order_id: Option<OrderId>,
        at_ms: u64,
    },
    ReserveRefused {
        reservation_id: ReservationId,
        qty: u64,
        ttl_ms: u64,
        order_id: Option<OrderId>,
        at_ms: u64,
        available: u64,
    },
    Committed {
        reservation_id: ReservationId,
        at_ms: u64,
    },
    Released {
        reservation_id: ReservationId,
        at_ms: u64,
    },
    /// Holds whose time ran out, in expiry order. Each expired at its own `expires_at_ms`.
    Expired {
        reservation_ids: Vec<ReservationId>,
        at_ms: u64,
    },
    OpApplied {
        op_id: OpId,
        request: OpRequest,
        at_ms: u64,
    },
    CountRefused {
        op_id: OpId,
        counted: u64,
        at_ms: u64,
    },
    /// A cancel of an id this key had never seen: remembered, so a late reserve is refused.
    Cancelled {
        reservation_id: ReservationId,
        at_ms: u64,
    },
    /// Forgets every finished outcome (reservation or op) whose status changed before
    /// `before_ms`. An event, not a side effect of taking a snapshot, so that every copy of
    /// the key that replays the journal forgets exactly the same ids.
    Forgot { before_ms: u64, at_ms: u64 },
}

impl Event {
    pub fn at_ms(&self) -> u64 {
        match self {
            Event::Reserved { at_ms, .. }
            | Event::ReserveRefused { at_ms, .. }
            | Event::Committed { at_ms, .. }
            | Event::Released { at_ms, .. }
            | Event::Expired { at_ms, .. }
            | Event::OpApplied { at_ms, .. }
            | Event::CountRefused { at_ms, .. }
            | Event::Cancelled { at_ms, .. }
            | Event::Forgot { at_ms, .. } => *at_ms,
        }
    }

    /// The remembered ids whose record this event creates or changes (what a snapshot taken
    /// after it must store again), given one by one to `each`. `Forgot` changes none: what
    /// it forgets is dropped on load by the forgotten horizon the snapshot carries.
    pub fn touched(&self, mut each: impl FnMut(RecordKey)) {
        let r = |id: &ReservationId| RecordKey::Reservation(id.clone());
        match self {
            Event::Reserved { reservation_id, .. }
            | Event::ReserveRefused { reservation_id, .. }
            | Event::Committed { reservation_id, .. }
            | Event::Released { reservation_id, .. }
            | Event::Cancelled { reservation_id, .. } => each(r(reservation_id)),
            Event::Expired {
                reservation_ids, ..
            } => reservation_ids.iter().for_each(|id| each(r(id))),
            Event::OpApplied { op_id, .. } | Event::CountRefused { op_id, .. } => {
                each(RecordKey::Op(op_id.clone()))
            }
            Event::Forgot { .. } => {}
        }
    }
}

/// The name of a remembered record: a reservation id or an op id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordKey {
    Reservation(ReservationId),
    Op(OpId),
}

/// One remembered record as stored outside the snapshot: its state as of some version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredRecord {
    Reservation(ReservationId, Reservation),
    Op(OpId, OpRecord),
    /// The id is no longer remembered. Its earlier stored states (a hold, say) may predate
    /// the `Forgot` that dropped it without any later state having been stored.
    Gone(RecordKey),
}

/// A key's state without its remembered records: what a snapshot holds. Its size does not
/// depend on how many ids the key has seen; the records are stored apart (`StoredRecord`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockScalars {
    pub on_hand: u64,
    pub safety_stock: u64,
    pub version: u64,
    pub last_now_ms: u64,
    pub next_seq: u64,
    /// The horizon of the last `Forgot`: a stored finished record older than it is gone.
    pub forgotten_before_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationStatus {
    Held,
    Committed,
    Released,
    Expired,
    /// Refused for lack of stock; `available` is what the refusal reported.
    Refused {
        available: u64,
    },
    /// Cancelled before any reserve arrived (a tombstone: no quantity, never held).
    Cancelled,
}

/// What stockring remembers of one reservation id: its request (for C3), its hold, its fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub qty: u64,
    pub ttl_ms: u64,
    pub order_id: Option<OrderId>,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    /// `available` right after the reserve, returned again on a replay.
    pub available_after: u64,
    pub status: ReservationStatus,
    /// When `status` last changed; drives retention of finished records.
    pub status_at_ms: u64,
    /// Creation order, the tie-break between holds expiring at the same instant.
    pub seq: u64,
}

/// What stockring remembers of one op id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRecord {
    pub request: OpRequest,
    pub outcome: Outcome,
    pub at_ms: u64,
}

/// A consistent read of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockView {
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
    pub safety_stock: u64,
    pub version: u64,
}

/// The durable state of one key. Fields are private: only `apply`/`apply_event` change them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StockState {
    on_hand: u64,
    safety_stock: u64,
    reserved: u64,
    held_count: u64,
    reservations: BTreeMap<ReservationId, Reservation>,
    expiry_queue: BTreeSet<(u64, u64, ReservationId)>,
    ops: BTreeMap<OpId, OpRecord>,
    version: u64,
    last_now_ms: u64,
    next_seq: u64,
    forgotten_before_ms: u64,
    /// When the oldest finished record finished (derived: it tells when a `Forgot` is due
    /// without walking every record).
    oldest_finished_ms: Option<u64>,
}

/// The parts of a `StockState`, for snapshots. `StockState::from_parts` re-derives and checks
/// everything else, so a snapshot cannot smuggle in a broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockParts {
    pub on_hand: u64,
    pub safety_stock: u64,
    pub version: u64,
    pub last_now_ms: u64,
    pub next_seq: u64,
    pub reservations: Vec<(ReservationId, Reservation)>,
    pub ops: Vec<(OpId, OpRecord)>,
    pub forgotten_before_ms: u64,
}

/// A snapshot that does not satisfy the ledger's invariants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshot violates a ledger invariant: {0}")]
pub struct CorruptState(pub &'static str);

impl StockState {
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn held_count(&self) -> u64 {
        self.held_count
    }

    /// Remembered ids (reservations and ops): what a snapshot's size grows with.
    pub fn record_count(&self) -> u64 {
        (self.reservations.len() + self.ops.len()) as u64
    }

    pub fn reservation(&self, id: &ReservationId) -> Option<&Reservation> {
        self.reservations.get(id)
    }

    /// When the next hold expires; the shell arms one timer for it.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.expiry_queue.first().map(|(at, _, _)| *at)
    }

    fn available_raw(&self) -> u64 {
        self.on_hand
            .saturating_sub(self.reserved)
            .saturating_sub(self.safety_stock)
    }

    /// The key as of `now_ms`, counting holds due by then as expired. Changes nothing.
    pub fn view(&self, now_ms: u64) -> StockView {
        let now_ms = now_ms.max(self.last_now_ms);
        let due: u64 = self
            .expiry_queue
            .iter()
            .take_while(|(at, _, _)| *at <= now_ms)
            .map(|(_, _, id)| self.reservations[id].qty)
            .sum();
        let reserved = self.reserved - due;
        StockView {
            on_hand: self.on_hand,
            reserved,
            available: self
                .on_hand
                .saturating_sub(reserved)
                .saturating_sub(self.safety_stock),
            safety_stock: self.safety_stock,
            version: self.version,
        }
    }

    /// Applies one command at `now_ms`: first the expiries due by then, then the command.
    /// Returns the client's answer and the events to make durable before that answer leaves.
    pub fn apply(&mut self, command: &Command, now_ms: u64) -> (Outcome, Vec<Event>) {
        let now_ms = now_ms.max(self.last_now_ms);
        let mut events = Vec::with_capacity(2);
        if let Some(expired) = self.expire_due(now_ms) {
            events.push(expired);
        }
        let (outcome, event) = self.decide(command, now_ms);
        if let Some(event) = event {
            self.apply_event(&event);
            events.push(event);
        }
        self.check_cheap();
        (outcome, events)
    }

    /// Expires every hold due by `now_ms`; the timer path. `None` when nothing was due.
    pub fn expire_due(&mut self, now_ms: u64) -> Option<Event> {
        let now_ms = now_ms.max(self.last_now_ms);
        let due: Vec<ReservationId> = self
            .expiry_queue
            .iter()
            .take_while(|(at, _, _)| *at <= now_ms)
            .map(|(_, _, id)| id.clone())
            .collect();
        if due.is_empty() {
            return None;
        }
        let event = Event::Expired {
            reservation_ids: due,
            at_ms: now_ms,
        };
        self.apply_event(&event);
        Some(event)
    }

    /// Decides a command against the current state without changing it.
    fn decide(&self, command: &Command, now_ms: u64) -> (Outcome, Option<Event>) {
        match command {
            Command::Reserve {
                reservation_id,
                qty,
                ttl_ms,
                order_id,
            } => self.decide_reserve(reservation_id, qty.get(), *ttl_ms, order_id, now_ms),
            Command::Commit { reservation_id } => self.decide_finish(reservation_id, now_ms, true),
            Command::Release { reservation_id } => {
                self.decide_finish(reservation_id, now_ms, false)
            }
            Command::Cancel { reservation_id } => match self.reservations.get(reservation_id) {
                Some(_) => self.decide_finish(reservation_id, now_ms, false),
                None => (
                    Outcome::Cancelled,
                    Some(Event::Cancelled {
                        reservation_id: reservation_id.clone(),
                        at_ms: now_ms,
                    }),
                ),
            },
            Command::Receive { op_id, qty } => {
                self.decide_op(op_id, OpRequest::Receive { qty: qty.get() }, now_ms)
            }
            Command::SetOnHand { op_id, on_hand } => {
                self.decide_op(op_id, OpRequest::SetOnHand { on_hand: *on_hand }, now_ms)
            }
            Command::SetSafetyStock {
                op_id,
                safety_stock,
            } => self.decide_op(
                op_id,
                OpRequest::SetSafetyStock {
                    safety_stock: *safety_stock,
                },
                now_ms,
            ),
        }
    }

    fn decide_reserve(
        &self,
        id: &ReservationId,
        qty: u64,
        ttl_ms: u64,
        order_id: &Option<OrderId>,
        now_ms: u64,
    ) -> (Outcome, Option<Event>) {
        if let Some(r) = self.reservations.get(id) {
            if r.status == ReservationStatus::Cancelled {
                return (Outcome::Cancelled, None);
            }
            let same = r.qty == qty && r.ttl_ms == ttl_ms && &r.order_id == order_id;
            if !same {
                return (Outcome::IdConflict, None);
            }
            let outcome = match r.status {
                ReservationStatus::Refused { available } => Outcome::Insufficient {
                    requested: qty,
                    available,
                    replay: true,
                },
                _ => Outcome::Reserved {
                    qty,
                    expires_at_ms: r.expires_at_ms,
                    available: r.available_after,
                    replay: true,
                },
            };
            return (outcome, None);
        }
        let available = self.available_raw();
        if qty > available {
            let event = Event::ReserveRefused {
                reservation_id: id.clone(),
                qty,
                ttl_ms,
                order_id: order_id.clone(),
                at_ms: now_ms,
                available,
            };
            return (
                Outcome::Insufficient {
                    requested: qty,
                    available,
                    replay: false,
                },
                Some(event),
            );
        }
        let outcome = Outcome::Reserved {
            qty,
            expires_at_ms: now_ms + ttl_ms,
            available: available - qty,
            replay: false,
        };
        let event = Event::Reserved {
            reservation_id: id.clone(),
            qty,
            ttl_ms,
            order_id: order_id.clone(),
            at_ms: now_ms,
        };
        (outcome, Some(event))
    }

    /// Commit (`commit == true`) or release of a reservation.
    fn decide_finish(
        &self,
        id: &ReservationId,
        now_ms: u64,
        commit: bool,
    ) -> (Outcome, Option<Event>) {
        let Some(r) = self.reservations.get(id) else {
            return (Outcome::UnknownReservation, None);
        };
        match (r.status, commit) {
            (ReservationStatus::Held, _) => {
                let reservation_id = id.clone();
                if commit {
                    let outcome = Outcome::Committed {
                        qty: r.qty,
                        replay: false,
                    };
                    (
                        outcome,
                        Some(Event::Committed {
                            reservation_id,
                            at_ms: now_ms,
                        }),
                    )
                } else {
                    let outcome = Outcome::Released {
                        qty: r.qty,
                        replay: false,
                    };
                    (
                        outcome,
                        Some(Event::Released {
                            reservation_id,
                            at_ms: now_ms,
                        }),
                    )
                }
            }
            (ReservationStatus::Committed, true) => (
                Outcome::Committed {
                    qty: r.qty,
                    replay: true,
                },
                None,
            ),
            (ReservationStatus::Released, false) => (
                Outcome::Released {
                    qty: r.qty,
                    replay: true,
                },
                None,
            ),
            (ReservationStatus::Committed, false) => (Outcome::AlreadyCommitted, None),
            (ReservationStatus::Released, true) => (Outcome::AlreadyReleased, None),
            (ReservationStatus::Expired, _) => (
                Outcome::Expired {
                    expires_at_ms: r.expires_at_ms,
                },
                None,
            ),
            (ReservationStatus::Refused { .. }, _) => (Outcome::NotHeld, None),
            (ReservationStatus::Cancelled, _) => (Outcome::Cancelled, None),
        }
    }

    fn decide_op(&self, op_id: &OpId, request: OpRequest, now_ms: u64) -> (Outcome, Option<Event>) {
        if let Some(rec) = self.ops.get(op_id) {
            if rec.request != request {
                return (Outcome::IdConflict, None);
            }
            return (replayed(&rec.outcome), None);
        }
        let applied = Event::OpApplied {
            op_id: op_id.clone(),
            request,
            at_ms: now_ms,
        };
        match request {
            OpRequest::Receive { qty } => match self.on_hand.checked_add(qty) {
                Some(n) if n <= MAX_STOCK => {
                    (self.stock_outcome(n, self.safety_stock), Some(applied))
                }
                _ => (Outcome::StockLimit { limit: MAX_STOCK }, None),
            },
            OpRequest::SetOnHand { on_hand } if on_hand > MAX_STOCK => {
                (Outcome::StockLimit { limit: MAX_STOCK }, None)
            }
            OpRequest::SetOnHand { on_hand } if on_hand < self.reserved => {
                let outcome = Outcome::CountBelowReserved {
                    counted: on_hand,
                    reserved: self.reserved,
                    shortfall: self.reserved - on_hand,
                    replay: false,
                };
                let event = Event::CountRefused {
                    op_id: op_id.clone(),
                    counted: on_hand,
                    at_ms: now_ms,
                };
                (outcome, Some(event))
            }
            OpRequest::SetOnHand { on_hand } => (
                self.stock_outcome(on_hand, self.safety_stock),
                Some(applied),
            ),
            OpRequest::SetSafetyStock { safety_stock } if safety_stock > MAX_STOCK => {
                (Outcome::StockLimit { limit: MAX_STOCK }, None)
            }
            OpRequest::SetSafetyStock { safety_stock } => (
                self.stock_outcome(self.on_hand, safety_stock),
                Some(applied),
            ),
        }
    }

    fn stock_outcome(&self, on_hand: u64, safety_stock: u64) -> Outcome {
        Outcome::StockSet {
            on_hand,
            reserved: self.reserved,
            safety_stock,
            available: on_hand
                .saturating_sub(self.reserved)
                .saturating_sub(safety_stock),
            replay: false,
        }
    }

    /// Replays one event. Panics on an event that does not fit the state: the journal is ours,
    /// so a mismatch is corruption or a bug, and serving on top of it could oversell.
    pub fn apply_event(&mut self, event: &Event) {
        let at_ms = event.at_ms();
        assert!(at_ms >= self.last_now_ms, "event time went backwards");
        match event {
            Event::Reserved {
                reservation_id,
                qty,
                ttl_ms,
                order_id,
                ..
            } => {
                let available = self.available_raw();
                assert!(*qty <= available, "journal reserves more than is available");
                let seq = self.next_seq;
                self.next_seq += 1;
                let expires_at_ms = at_ms + ttl_ms;
                self.reserved += qty;
                self.held_count += 1;
                self.expiry_queue
                    .insert((expires_at_ms, seq, reservation_id.clone()));
                let r = Reservation {
                    qty: *qty,
                    ttl_ms: *ttl_ms,
                    order_id: order_id.clone(),
                    created_at_ms: at_ms,
                    expires_at_ms,
                    available_after: available - qty,
                    status: ReservationStatus::Held,
                    status_at_ms: at_ms,
                    seq,
                };
                let old = self.reservations.insert(reservation_id.clone(), r);
                assert!(old.is_none(), "journal reuses a reservation id");
            }
            Event::ReserveRefused {
                reservation_id,
                qty,
                ttl_ms,
                order_id,
                available,
                ..
            } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let r = Reservation {
                    qty: *qty,
                    ttl_ms: *ttl_ms,
                    order_id: order_id.clone(),
                    created_at_ms: at_ms,
                    expires_at_ms: at_ms,
                    available_after: *available,
                    status: ReservationStatus::Refused {
                        available: *available,
                    },
                    status_at_ms: at_ms,
                    seq,
                };
                let old = self.reservations.insert(reservation_id.clone(), r);
                assert!(old.is_none(), "journal reuses a reservation id");
                self.finished_at(at_ms);
            }
            Event::Committed { reservation_id, .. } => {
                let qty = self.end_hold(reservation_id, ReservationStatus::Committed, at_ms);
                self.on_hand -= qty;
            }
            Event::Released { reservation_id, .. } => {
                self.end_hold(reservation_id, ReservationStatus::Released, at_ms);
            }
            Event::Expired {
                reservation_ids, ..
            } => {
                for id in reservation_ids {
                    let r = &self.reservations[id];
                    assert!(r.expires_at_ms <= at_ms, "hold expired early");
                    let first = self.expiry_queue.first().map(|(_, _, first)| first);
                    assert_eq!(first, Some(id), "expiries out of order");
                    // Its status changed now (when the expiry was recorded), at or after
                    // `expires_at_ms`: retention counts from here, like every other status.
                    self.end_hold(id, ReservationStatus::Expired, at_ms);
                }
            }
            Event::OpApplied { op_id, request, .. } => {
                let outcome = match *request {
                    OpRequest::Receive { qty } => {
                        let on_hand = self
                            .on_hand
                            .checked_add(qty)
                            .expect("journal overflows on_hand");
                        self.stock_outcome(on_hand, self.safety_stock)
                    }
                    OpRequest::SetOnHand { on_hand } => {
                        self.stock_outcome(on_hand, self.safety_stock)
                    }
                    OpRequest::SetSafetyStock { safety_stock } => {
                        self.stock_outcome(self.on_hand, safety_stock)
                    }
                };
                if let Outcome::StockSet {
                    on_hand,
                    safety_stock,
                    ..
                } = outcome
                {
                    assert!(
                        on_hand >= self.reserved && on_hand <= MAX_STOCK,
                        "op breaks C1"
                    );
                    self.on_hand = on_hand;
                    self.safety_stock = safety_stock;
                }
                self.record_op(op_id, *request, outcome, at_ms);
            }
            Event::Cancelled { reservation_id, .. } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let r = Reservation {
                    qty: 0,
                    ttl_ms: 0,
                    order_id: None,
                    created_at_ms: at_ms,
                    expires_at_ms: at_ms,
                    available_after: 0,
                    status: ReservationStatus::Cancelled,
                    status_at_ms: at_ms,
                    seq,
                };
                let old = self.reservations.insert(reservation_id.clone(), r);
                assert!(old.is_none(), "journal cancels a known reservation");
                self.finished_at(at_ms);
            }
            Event::Forgot { before_ms, .. } => self.forget(*before_ms),
            Event::CountRefused { op_id, counted, .. } => {
                assert!(*counted < self.reserved, "refused a count that fits");
                let outcome = Outcome::CountBelowReserved {
                    counted: *counted,
                    reserved: self.reserved,
                    shortfall: self.reserved - counted,
                    replay: false,
                };
                self.record_op(
                    op_id,
                    OpRequest::SetOnHand { on_hand: *counted },
                    outcome,
                    at_ms,
                );
            }
        }
        self.version += 1;
        self.last_now_ms = at_ms;
        self.check_cheap();
    }

    fn record_op(&mut self, op_id: &OpId, request: OpRequest, outcome: Outcome, at_ms: u64) {
        let old = self.ops.insert(
            op_id.clone(),
            OpRecord {
                request,
                outcome,
                at_ms,
            },
        );
        assert!(old.is_none(), "journal reuses an op id");
        self.finished_at(at_ms);
    }

    /// A record finished at `at_ms` (times only grow, so the oldest stays the oldest).
    fn finished_at(&mut self, at_ms: u64) {
        self.oldest_finished_ms.get_or_insert(at_ms);
    }

    fn forget(&mut self, before_ms: u64) {
        assert!(
            before_ms >= self.forgotten_before_ms,
            "forgotten horizon went back"
        );
        self.forgotten_before_ms = before_ms;
        self.reservations
            .retain(|_, r| r.status == ReservationStatus::Held || r.status_at_ms >= before_ms);
        self.ops.retain(|_, op| op.at_ms >= before_ms);
        self.oldest_finished_ms = self.oldest_finished();
    }

    fn oldest_finished(&self) -> Option<u64> {
        let reservations = self
            .reservations
            .values()
            .filter(|r| r.status != ReservationStatus::Held)
            .map(|r| r.status_at_ms);
        let ops = self.ops.values().map(|op| op.at_ms);
        reservations.chain(ops).min()
    }

    /// Ends a held reservation; returns its quantity.
    fn end_hold(&mut self, id: &ReservationId, status: ReservationStatus, at_ms: u64) -> u64 {
        let r = self
            .reservations
            .get_mut(id)
            .expect("journal ends an unknown hold");
        assert_eq!(
            r.status,
            ReservationStatus::Held,
            "journal ends a hold that is not held"
        );
        r.status = status;
        r.status_at_ms = at_ms;
        self.oldest_finished_ms.get_or_insert(at_ms);
        let removed = self
            .expiry_queue
            .remove(&(r.expires_at_ms, r.seq, id.clone()));
        assert!(removed, "held reservation missing from the expiry queue");
        self.reserved -= r.qty;
        self.held_count -= 1;
        r.qty
    }

    /// The `Forgot` due at `now_ms`, applied: finished outcomes older than `retention_ms`
    /// are forgotten (held reservations never are). After it, a repeat of a forgotten id is
    /// new: C3 holds within the retention window. To keep the walk over every record rare,
    /// it is due only once the oldest finished record is `retention_ms / 8` past the window,
    /// so an outcome is remembered for at least `retention_ms` and at most 1.125 times it.
    pub fn forget_due(&mut self, now_ms: u64, retention_ms: u64) -> Option<Event> {
        let now_ms = now_ms.max(self.last_now_ms);
        let before_ms = now_ms.saturating_sub(retention_ms);
        let slack = retention_ms / 8;
        let oldest = self.oldest_finished_ms?;
        if oldest.saturating_add(slack) >= before_ms {
            return None;
        }
        let event = Event::Forgot {
            before_ms,
            at_ms: now_ms,
        };
        self.apply_event(&event);
        Some(event)
    }

    /// O(1) invariants, checked after every step in production too.
    fn check_cheap(&self) {
        assert!(
            self.reserved <= self.on_hand,
            "C1: reserved exceeds on_hand"
        );
        assert!(self.on_hand <= MAX_STOCK, "on_hand over limit");
        assert_eq!(
            self.held_count as usize,
            self.expiry_queue.len(),
            "expiry queue out of sync"
        );
    }

    /// Every invariant, by walking the whole state. Used by tests and on snapshot load.
    pub fn check_full(&self) -> Result<(), CorruptState> {
        let held: Vec<_> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.status == ReservationStatus::Held)
            .collect();
        let sum: u64 = held.iter().map(|(_, r)| r.qty).sum();
        let ok = [
            (sum == self.reserved, "reserved != sum of holds"),
            (self.reserved <= self.on_hand, "reserved > on_hand"),
            (self.on_hand <= MAX_STOCK, "on_hand over limit"),
            (self.safety_stock <= MAX_STOCK, "safety stock over limit"),
            (held.len() as u64 == self.held_count, "held count wrong"),
            (
                held.len() == self.expiry_queue.len(),
                "expiry queue size wrong",
            ),
        ];
        if let Some((_, why)) = ok.iter().find(|(holds, _)| !holds) {
            return Err(CorruptState(why));
        }
        for (id, r) in held {
            if !self
                .expiry_queue
                .contains(&(r.expires_at_ms, r.seq, (*id).clone()))
            {
                return Err(CorruptState("held reservation not queued"));
            }
            if r.seq >= self.next_seq || r.qty == 0 {
                return Err(CorruptState("bad reservation record"));
            }
        }
        Ok(())
    }

    pub fn to_parts(&self) -> StockParts {
        StockParts {
            on_hand: self.on_hand,
            safety_stock: self.safety_stock,
            version: self.version,
            last_now_ms: self.last_now_ms,
            next_seq: self.next_seq,
            reservations: self
                .reservations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ops: self
                .ops
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            forgotten_before_ms: self.forgotten_before_ms,
        }
    }

    pub fn from_parts(parts: StockParts) -> Result<Self, CorruptState> {
        let mut state = StockState {
            on_hand: parts.on_hand,
            safety_stock: parts.safety_stock,
            version: parts.version,
            last_now_ms: parts.last_now_ms,
            next_seq: parts.next_seq,
            forgotten_before_ms: parts.forgotten_before_ms,
            ..StockState::default()
        };
        for (id, r) in parts.reservations {
            if r.status == ReservationStatus::Held {
                state.reserved = state
                    .reserved
                    .checked_add(r.qty)
                    .ok_or(CorruptState("reserved overflows"))?;
                state.held_count += 1;
                state
                    .expiry_queue
                    .insert((r.expires_at_ms, r.seq, id.clone()));
            }
            state.reservations.insert(id, r);
        }
        state.ops = parts.ops.into_iter().collect();
        state.oldest_finished_ms = state.oldest_finished();
        state.check_full()?;
        Ok(state)
    }

    /// The snapshot part of the state (see `StockScalars`).
    pub fn scalars(&self) -> StockScalars {
        StockScalars {
            on_hand: self.on_hand,
            safety_stock: self.safety_stock,
            version: self.version,
            last_now_ms: self.last_now_ms,
            next_seq: self.next_seq,
            forgotten_before_ms: self.forgotten_before_ms,
        }
    }

    /// The current record of `key`: its state, or `Gone` if it is not remembered.
    pub fn record(&self, key: &RecordKey) -> StoredRecord {
        let found = match key {
            RecordKey::Reservation(id) => self
                .reservations
                .get(id)
                .map(|r| StoredRecord::Reservation(id.clone(), r.clone())),
            RecordKey::Op(id) => self
                .ops
                .get(id)
                .map(|op| StoredRecord::Op(id.clone(), op.clone())),
        };
        found.unwrap_or_else(|| StoredRecord::Gone(key.clone()))
    }

    /// Every remembered record (held reservations included).
    pub fn records(&self) -> impl Iterator<Item = StoredRecord> + '_ {
        let reservations = self
            .reservations
            .iter()
            .map(|(id, r)| StoredRecord::Reservation(id.clone(), r.clone()));
        let ops = self
            .ops
            .iter()
            .map(|(id, op)| StoredRecord::Op(id.clone(), op.clone()));
        reservations.chain(ops)
    }

    /// Rebuilds a key from its snapshot and the records stored since it was last rewritten,
    /// in the order they were stored: a later state of an id replaces an earlier one, and a
    /// finished record older than the forgotten horizon is dropped, as `Forgot` dropped it.
    /// Exactly the state that was stored, checked like any snapshot.
    pub fn from_log(
        scalars: StockScalars,
        records: impl IntoIterator<Item = StoredRecord>,
    ) -> Result<Self, CorruptState> {
        let mut reservations: BTreeMap<ReservationId, Reservation> = BTreeMap::new();
        let mut ops: BTreeMap<OpId, OpRecord> = BTreeMap::new();
        for record in records {
            match record {
                StoredRecord::Reservation(id, r) => {
                    reservations.insert(id, r);
                }
                StoredRecord::Op(id, op) => {
                    ops.insert(id, op);
                }
                StoredRecord::Gone(RecordKey::Reservation(id)) => {
                    reservations.remove(&id);
                }
                StoredRecord::Gone(RecordKey::Op(id)) => {
                    ops.remove(&id);
                }
            }
        }
        let horizon = scalars.forgotten_before_ms;
        reservations
            .retain(|_, r| r.status == ReservationStatus::Held || r.status_at_ms >= horizon);
        ops.retain(|_, op| op.at_ms >= horizon);
        Self::from_parts(StockParts {
            on_hand: scalars.on_hand,
            safety_stock: scalars.safety_stock,
            version: scalars.version,
            last_now_ms: scalars.last_now_ms,
            next_seq: scalars.next_seq,
            reservations: reservations.into_iter().collect(),
            ops: ops.into_iter().collect(),
            forgotten_before_ms: horizon,
        })
    }
}

fn replayed(outcome: &Outcome) -> Outcome {
    let mut o = outcome.clone();
    match &mut o {
        Outcome::StockSet { replay, .. } | Outcome::CountBelowReserved { replay, .. } => {
            *replay = true
        }
        _ => {}
    }
    o
}
