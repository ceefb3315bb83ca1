//! Property tests: the ledger against a deliberately naive reference model (linear scans, no
//! queues), with every invariant checked after every step, replay of the journal compared with
//! the live state, and snapshot round trips.

use super::ids::{OpId, OrderId, ReservationId};
use super::ledger::{Command, Event, OpRequest, Outcome, RecordKey, StockState, StockView};
use super::qty::Qty;
use proptest::prelude::*;
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq)]
enum St {
    Held,
    Committed,
    Released,
    Expired,
    Refused(u64),
    Cancelled,
}

#[derive(Debug, Clone)]
struct MHold {
    id: String,
    qty: u64,
    ttl: u64,
    order: Option<String>,
    expires: u64,
    avail_after: u64,
    st: St,
    /// When `st` last changed.
    st_at: u64,
}

#[derive(Default)]
struct Model {
    on_hand: u64,
    safety: u64,
    holds: Vec<MHold>,
    /// (id, request, outcome, at)
    ops: Vec<(String, OpRequest, Outcome, u64)>,
}

impl Model {
    fn reserved(&self) -> u64 {
        self.holds
            .iter()
            .filter(|h| h.st == St::Held)
            .map(|h| h.qty)
            .sum()
    }

    fn available(&self) -> u64 {
        self.on_hand
            .saturating_sub(self.reserved())
            .saturating_sub(self.safety)
    }

    /// Expires holds due by `now`, oldest deadline first, ties in creation order (Vec order).
    fn expire(&mut self, now: u64) {
        let mut due: Vec<usize> = (0..self.holds.len())
            .filter(|&i| self.holds[i].st == St::Held && self.holds[i].expires <= now)
            .collect();
        due.sort_by_key(|&i| (self.holds[i].expires, i));
        for i in due {
            self.holds[i].st = St::Expired;
            self.holds[i].st_at = now;
        }
    }

    /// Forgets finished records older than `before`.
    fn forget(&mut self, before: u64) {
        self.holds.retain(|h| h.st == St::Held || h.st_at >= before);
        self.ops.retain(|(_, _, _, at)| *at >= before);
    }

    fn view(&self, now: u64) -> (u64, u64, u64) {
        let reserved: u64 = self
            .holds
            .iter()
            .filter(|h| h.st == St::Held && h.expires > now)
            .map(|h| h.qty)
            .sum();
        let avail = self
            .on_hand
            .saturating_sub(reserved)
            .saturating_sub(self.safety);
        (self.on_hand, reserved, avail)
    }

    fn apply(&mut self, cmd: &Command, now: u64) -> Outcome {
        self.expire(now);
        match cmd {
            Command::Reserve {
                reservation_id,
                qty,
                ttl_ms,
                order_id,
            } => {
                let order = order_id.as_ref().map(|o| o.to_string());
                self.reserve(reservation_id.as_str(), qty.get(), *ttl_ms, order, now)
            }
            Command::Commit { reservation_id } => self.finish(reservation_id.as_str(), true, now),
            Command::Release { reservation_id } => self.finish(reservation_id.as_str(), false, now),
            Command::Cancel { reservation_id } => {
                let id = reservation_id.as_str();
                if self.holds.iter().any(|h| h.id == id) {
                    return self.finish(id, false, now);
                }
                self.holds.push(MHold {
                    id: id.into(),
                    qty: 0,
                    ttl: 0,
                    order: None,
                    expires: now,
                    avail_after: 0,
                    st: St::Cancelled,
                    st_at: now,
                });
                Outcome::Cancelled
            }
            Command::Receive { op_id, qty } => {
                self.op(op_id.as_str(), OpRequest::Receive { qty: qty.get() }, now)
            }
            Command::SetOnHand { op_id, on_hand } => self.op(
                op_id.as_str(),
                OpRequest::SetOnHand { on_hand: *on_hand },
                now,
            ),
            Command::SetSafetyStock {
                op_id,
                safety_stock,
            } => self.op(
                op_id.as_str(),
                OpRequest::SetSafetyStock {
                    safety_stock: *safety_stock,
                },
                now,
            ),
        }
    }

    fn reserve(
        &mut self,
        id: &str,
        qty: u64,
        ttl: u64,
        order: Option<String>,
        now: u64,
    ) -> Outcome {
        if let Some(h) = self.holds.iter().find(|h| h.id == id) {
            if h.st == St::Cancelled {
                return Outcome::Cancelled;
            }
            if h.qty != qty || h.ttl != ttl || h.order != order {
                return Outcome::IdConflict;
            }
            return match h.st {
                St::Refused(available) => Outcome::Insufficient {
                    requested: qty,
                    available,
                    replay: true,
                },
                _ => Outcome::Reserved {
                    qty,
                    expires_at_ms: h.expires,
                    available: h.avail_after,
                    replay: true,
                },
            };
        }
        let available = self.available();
        let (st, avail_after, outcome) = if qty > available {
            (
                St::Refused(available),
                available,
                Outcome::Insufficient {
                    requested: qty,
                    available,
                    replay: false,
                },
            )
        } else {
            let o = Outcome::Reserved {
                qty,
                expires_at_ms: now + ttl,
                available: available - qty,
                replay: false,
            };
            (St::Held, available - qty, o)
        };
        let expires = if st == St::Held { now + ttl } else { now };
        self.holds.push(MHold {
            id: id.into(),
            qty,
            ttl,
            order,
            expires,
            avail_after,
            st,
            st_at: now,
        });
        outcome
    }

    fn finish(&mut self, id: &str, commit: bool, now: u64) -> Outcome {
        let Some(h) = self.holds.iter_mut().find(|h| h.id == id) else {
            return Outcome::UnknownReservation;
        };
        match (h.st, commit) {
            (St::Held, true) => {
                h.st = St::Committed;
                h.st_at = now;
                self.on_hand -= h.qty;
                Outcome::Committed {
                    qty: h.qty,
                    replay: false,
                }
            }
            (St::Held, false) => {
                h.st = St::Released;
                h.st_at = now;
                Outcome::Released {
                    qty: h.qty,
                    replay: false,
                }
            }
            (St::Committed, true) => Outcome::Committed {
                qty: h.qty,
                replay: true,
            },
            (St::Released, false) => Outcome::Released {
                qty: h.qty,
                replay: true,
            },
            (St::Committed, false) => Outcome::AlreadyCommitted,
            (St::Released, true) => Outcome::AlreadyReleased,
            (St::Expired, _) => Outcome::Expired {
                expires_at_ms: h.expires,
            },
            (St::Refused(_), _) => Outcome::NotHeld,
            (St::Cancelled, _) => Outcome::Cancelled,
        }
    }

    fn op(&mut self, id: &str, req: OpRequest, now: u64) -> Outcome {
        if let Some((_, r, o, _)) = self.ops.iter().find(|(i, _, _, _)| i == id) {
            if *r != req {
                return Outcome::IdConflict;
            }
            let mut o = o.clone();
            if let Outcome::StockSet { replay, .. } | Outcome::CountBelowReserved { replay, .. } =
                &mut o
            {
                *replay = true;
            }
            return o;
        }
        let reserved = self.reserved();
        let (on_hand, safety) = match req {
            OpRequest::Receive { qty } => (self.on_hand + qty, self.safety),
            OpRequest::SetOnHand { on_hand } if on_hand < reserved => {
                let o = Outcome::CountBelowReserved {
                    counted: on_hand,
                    reserved,
                    shortfall: reserved - on_hand,
                    replay: false,
                };
                self.ops.push((id.into(), req, o.clone(), now));
                return o;
            }
            OpRequest::SetOnHand { on_hand } => (on_hand, self.safety),
            OpRequest::SetSafetyStock { safety_stock } => (self.on_hand, safety_stock),
        };
        self.on_hand = on_hand;
        self.safety = safety;
        let o = Outcome::StockSet {
            on_hand,
            reserved,
            safety_stock: safety,
            available: self.available(),
            replay: false,
        };
        self.ops.push((id.into(), req, o.clone(), now));
        o
    }
}

#[derive(Debug, Clone)]
enum Step {
    Cmd {
        cmd: Command,
        advance_ms: u64,
    },
    Tick {
        advance_ms: u64,
    },
    /// Outcomes older than `retention_ms` are forgotten (when due).
    Forget {
        retention_ms: u64,
    },
    /// A snapshot is stored here (the records touched since the last one are appended).
    Snapshot,
}

fn command() -> impl Strategy<Value = Command> {
    let rid = (0u8..8).prop_map(|i| ReservationId::parse(&format!("r{i}")).unwrap());
    let oid = (0u8..5).prop_map(|i| OpId::parse(&format!("op{i}")).unwrap());
    let qty = (1u64..25).prop_map(|q| Qty::new(q).unwrap());
    let order = prop::option::of((0u8..2).prop_map(|i| OrderId::parse(&format!("o{i}")).unwrap()));
    prop_oneof![
        4 => (rid.clone(), qty.clone(), 1u64..60, order)
            .prop_map(|(reservation_id, qty, ttl_ms, order_id)| Command::Reserve { reservation_id, qty, ttl_ms, order_id }),
        2 => rid.clone().prop_map(|reservation_id| Command::Commit { reservation_id }),
        2 => rid.clone().prop_map(|reservation_id| Command::Release { reservation_id }),
        1 => rid.prop_map(|reservation_id| Command::Cancel { reservation_id }),
        2 => (oid.clone(), qty).prop_map(|(op_id, qty)| Command::Receive { op_id, qty }),
        1 => (oid.clone(), 0u64..80).prop_map(|(op_id, on_hand)| Command::SetOnHand { op_id, on_hand }),
        1 => (oid, 0u64..10).prop_map(|(op_id, safety_stock)| Command::SetSafetyStock { op_id, safety_stock }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (command(), 0u64..20).prop_map(|(cmd, advance_ms)| Step::Cmd { cmd, advance_ms }),
        1 => (0u64..40).prop_map(|advance_ms| Step::Tick { advance_ms }),
        1 => (0u64..200).prop_map(|retention_ms| Step::Forget { retention_ms }),
        1 => Just(Step::Snapshot),
    ]
}

fn replay(journal: &[Event]) -> StockState {
    let mut s = StockState::default();
    for e in journal {
        s.apply_event(e);
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The ledger against the model, step by step; the journal replays to the same state; and
    /// the state as storage keeps it — snapshots that append the records touched since the
    /// previous one, read back in order with the forgotten horizon applied — is the same state.
    #[test]
    fn ledger_matches_model_and_replays_exactly(steps in prop::collection::vec(step(), 1..120)) {
        let mut state = StockState::default();
        let mut model = Model::default();
        let mut journal: Vec<Event> = Vec::new();
        let mut stored = Vec::new();
        let mut touched: BTreeSet<RecordKey> = BTreeSet::new();
        let mut now = 1_000u64;
        for step in &steps {
            match step {
                Step::Cmd { cmd, advance_ms } => {
                    now += advance_ms;
                    let before = state.clone();
                    let (outcome, events) = state.apply(cmd, now);
                    let expected = model.apply(cmd, now);
                    prop_assert_eq!(&outcome, &expected, "command {:?} at {}", cmd, now);
                    if events.is_empty() {
                        prop_assert_eq!(&before, &state, "a command without events changed state");
                    }
                    for e in &events {
                        if let Event::Expired { reservation_ids, at_ms } = e {
                            for id in reservation_ids {
                                let r = state.reservation(id).unwrap();
                                prop_assert!(r.expires_at_ms <= *at_ms, "expired early");
                            }
                        }
                        e.touched(|k| {
                            touched.insert(k);
                        });
                    }
                    journal.extend(events);
                }
                Step::Tick { advance_ms } => {
                    now += advance_ms;
                    if let Some(e) = state.expire_due(now) {
                        e.touched(|k| {
                            touched.insert(k);
                        });
                        journal.push(e);
                    }
                    model.expire(now);
                }
                Step::Forget { retention_ms } => {
                    if let Some(e) = state.forget_due(now, *retention_ms) {
                        let Event::Forgot { before_ms, .. } = e else {
                            panic!("forget_due made {e:?}");
                        };
                        model.forget(before_ms);
                        journal.push(e);
                    }
                }
                Step::Snapshot => {
                    stored.extend(touched.iter().map(|k| state.record(k)));
                    touched.clear();
                    let back = StockState::from_log(state.scalars(), stored.clone());
                    prop_assert_eq!(back.as_ref(), Ok(&state), "the stored state differs");
                }
            }
            prop_assert!(state.check_full().is_ok(), "{:?}", state.check_full());
            // Views look ahead too: holds due later must count as expired exactly from then on.
            for ahead in [0u64, 1, 7, 30, 61] {
                let v: StockView = state.view(now + ahead);
                prop_assert_eq!((v.on_hand, v.reserved, v.available), model.view(now + ahead));
                prop_assert!(v.reserved <= v.on_hand);
            }
            let v = state.view(now);
            prop_assert_eq!(v.version as usize, journal.len());
        }
        prop_assert_eq!(&replay(&journal), &state);
        let round = StockState::from_parts(state.to_parts()).unwrap();
        prop_assert_eq!(&round, &state);
        // The last snapshot plus the rest of the journal replayed on it.
        stored.extend(touched.iter().map(|k| state.record(k)));
        let back = StockState::from_log(state.scalars(), stored).unwrap();
        prop_assert_eq!(&back, &state);
    }
}

#[test]
fn a_hold_is_live_until_the_instant_it_expires() {
    let mut s = StockState::default();
    let op = OpId::parse("op").unwrap();
    let _ = s.apply(
        &Command::Receive {
            op_id: op,
            qty: Qty::new(5).unwrap(),
        },
        0,
    );
    let r = ReservationId::parse("r").unwrap();
    let reserve = Command::Reserve {
        reservation_id: r.clone(),
        qty: Qty::new(5).unwrap(),
        ttl_ms: 100,
        order_id: None,
    };
    let (o, _) = s.apply(&reserve, 1_000);
    assert!(matches!(
        o,
        Outcome::Reserved {
            expires_at_ms: 1_100,
            available: 0,
            ..
        }
    ));
    assert_eq!(s.view(1_099).available, 0);
    assert_eq!(s.view(1_100).available, 5);
    let mut early = s.clone();
    let (o, _) = early.apply(
        &Command::Commit {
            reservation_id: r.clone(),
        },
        1_099,
    );
    assert!(matches!(
        o,
        Outcome::Committed {
            qty: 5,
            replay: false
        }
    ));
    let (o, events) = s.apply(&Command::Commit { reservation_id: r }, 1_100);
    assert_eq!(
        o,
        Outcome::Expired {
            expires_at_ms: 1_100
        }
    );
    assert!(matches!(&events[..], [Event::Expired { .. }]));
}

#[test]
fn a_count_below_reserved_is_refused_with_the_shortfall() {
    let mut s = StockState::default();
    let _ = s.apply(
        &Command::Receive {
            op_id: OpId::parse("a").unwrap(),
            qty: Qty::new(10).unwrap(),
        },
        0,
    );
    let reserve = Command::Reserve {
        reservation_id: ReservationId::parse("r").unwrap(),
        qty: Qty::new(7).unwrap(),
        ttl_ms: 1_000,
        order_id: None,
    };
    let _ = s.apply(&reserve, 1);
    let (o, _) = s.apply(
        &Command::SetOnHand {
            op_id: OpId::parse("c").unwrap(),
            on_hand: 4,
        },
        2,
    );
    assert_eq!(
        o,
        Outcome::CountBelowReserved {
            counted: 4,
            reserved: 7,
            shortfall: 3,
            replay: false
        }
    );
    assert_eq!(s.view(2).on_hand, 10);
}

#[test]
fn corrupt_snapshots_are_refused() {
    let mut s = StockState::default();
    let _ = s.apply(
        &Command::Receive {
            op_id: OpId::parse("a").unwrap(),
            qty: Qty::new(3).unwrap(),
        },
        0,
    );
    let reserve = Command::Reserve {
        reservation_id: ReservationId::parse("r").unwrap(),
        qty: Qty::new(3).unwrap(),
        ttl_ms: 1_000,
        order_id: None,
    };
    let _ = s.apply(&reserve, 1);
    let mut parts = s.to_parts();
    parts.on_hand = 2;
    assert!(StockState::from_parts(parts).is_err());
}
