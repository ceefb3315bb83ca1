//! Tests of the checker: histories that must pass, known-bad ones that must be caught with the
//! right class, and a 5,000-call history made by the real ledger (`domain::StockState`), so
//! the checker's model is held to the implemented contract.

use super::*;
use crate::chaos::history::{Answer, Call, End, Op};
use crate::domain::{Command, OpId, Outcome, Qty as DomainQty, ReservationId, StockState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEY: &str = "sku-1/berlin";
const BUDGET: Duration = Duration::from_secs(10);

/// A history under construction. Every call is its own client unless said otherwise.
#[derive(Default)]
struct H {
    calls: Vec<Call>,
}

impl H {
    fn push(&mut self, key: &str, op: Op, invoke_us: u64, end: End) -> u64 {
        let index = self.calls.len() as u64;
        self.calls.push(Call {
            index,
            client: index,
            key: key.to_owned(),
            node: format!("n{}", index % 3 + 1),
            op,
            invoke_us,
            end,
        });
        index
    }

    /// A call on `KEY` answered at `end`.
    fn ok(&mut self, invoke: u64, end: u64, op: Op, answer: Answer) -> u64 {
        self.ok_on(KEY, invoke, end, op, answer)
    }

    fn ok_on(&mut self, key: &str, invoke: u64, end: u64, op: Op, answer: Answer) -> u64 {
        let end = End::Answered { at_us: end, answer };
        self.push(key, op, invoke, end)
    }

    /// A call on `KEY` whose outcome is unknown.
    fn unknown(&mut self, invoke: u64, op: Op) -> u64 {
        let end = End::Unknown {
            at_us: invoke + 1_000,
            reason: "timeout".into(),
        };
        self.push(KEY, op, invoke, end)
    }

    /// Sequential calls, each in its own 5 us slot, 10 us apart, from `start`.
    fn seq(&mut self, start: u64, steps: Vec<(Op, Answer)>) {
        for (i, (op, answer)) in steps.into_iter().enumerate() {
            let t = start + 10 * i as u64;
            self.ok(t, t + 5, op, answer);
        }
    }

    fn check(&self) -> Report {
        check(&self.calls, BUDGET)
    }
}

fn reserve(id: &str, qty: u64) -> Op {
    Op::Reserve { id: id.into(), qty }
}
fn commit(id: &str) -> Op {
    Op::Commit { id: id.into() }
}
fn release(id: &str) -> Op {
    Op::Release { id: id.into() }
}
fn receive(id: &str, qty: u64) -> Op {
    Op::Receive { id: id.into(), qty }
}
fn read() -> Op {
    Op::Read
}
fn reserved(available: i64) -> Answer {
    Answer::Reserved { available }
}
fn done() -> Answer {
    Answer::Done
}
fn stock(on_hand: i64, reserved: i64) -> Answer {
    Answer::Stock { on_hand, reserved }
}
fn refused(code: &str) -> Answer {
    Answer::Refused {
        code: code.into(),
        available: None,
    }
}
fn insufficient(available: i64) -> Answer {
    Answer::Refused {
        code: "insufficient_stock".into(),
        available: Some(available),
    }
}

#[track_caller]
fn assert_clean(r: &Report) {
    assert!(r.is_clean(), "expected clean:\n{}", r.summary());
}

#[track_caller]
fn violation(r: &Report) -> &Violation {
    match &r.keys[KEY] {
        KeyVerdict::Violation(v) => v,
        other => panic!("expected a violation, got {other:?}\n{}", r.summary()),
    }
}

#[track_caller]
fn assert_finding(r: &Report, g: Guarantee, kind: &str) {
    assert!(
        r.findings
            .iter()
            .any(|f| f.guarantee == g && f.kind == kind),
        "expected finding {g:?} {kind}:\n{}",
        r.summary()
    );
}

/// Every rule of the model, one after the other.
fn sequential_rules() -> Vec<(Op, Answer)> {
    vec![
        (receive("o1", 10), stock(10, 0)),
        (reserve("a", 3), reserved(7)),
        (read(), stock(10, 3)),
        (reserve("b", 8), insufficient(7)),
        (commit("b"), refused("reservation_not_held")),
        (release("b"), refused("reservation_not_held")),
        // A refusal is remembered and replayed, with its available, after stock came back.
        (receive("o2", 5), stock(15, 3)),
        (reserve("b", 8), insufficient(7)),
        (reserve("a", 4), refused("id_conflict")),
        (commit("a"), done()),
        (commit("a"), done()),
        (release("a"), refused("already_committed")),
        // A replay answers the first answer, whatever became of the hold.
        (reserve("a", 3), reserved(7)),
        (read(), stock(12, 0)),
        (reserve("c", 2), reserved(10)),
        (release("c"), done()),
        (release("c"), done()),
        (commit("c"), refused("already_released")),
        (commit("zz"), refused("unknown_reservation")),
        (release("zz"), refused("unknown_reservation")),
        (receive("o1", 10), stock(10, 0)),
        (receive("o1", 5), refused("id_conflict")),
        // Op ids and reservation ids are separate name spaces.
        (receive("a", 1), stock(13, 0)),
        (read(), stock(13, 0)),
    ]
}

#[test]
fn sequential_history_is_linearizable() {
    let mut h = H::default();
    h.seq(0, sequential_rules());
    let r = h.check();
    assert_clean(&r);
    assert_eq!(r.stats[KEY].answered, sequential_rules().len());
}

/// A wrong answer at any step of the sequential history is caught: every rule is enforced.
#[test]
fn each_rule_of_the_model_is_enforced() {
    let wrong = |a: &Answer| match a {
        Answer::Reserved { available } => reserved(available + 1),
        Answer::Done => refused("unknown_reservation"),
        Answer::Stock { on_hand, reserved } => stock(on_hand + 1, *reserved),
        Answer::Refused {
            code,
            available: Some(x),
        } => Answer::Refused {
            code: code.clone(),
            available: Some(x + 1),
        },
        Answer::Refused { code, .. } if code == "unknown_reservation" => {
            refused("reservation_not_held")
        }
        Answer::Refused { .. } => refused("unknown_reservation"),
    };
    let steps = sequential_rules();
    for i in 0..steps.len() {
        let mut mutated = steps.clone();
        mutated[i].1 = wrong(&mutated[i].1);
        let mut h = H::default();
        h.seq(0, mutated);
        let r = h.check();
        assert!(
            matches!(r.keys[KEY], KeyVerdict::Violation(_)),
            "step {i} ({:?}) with a wrong answer passed",
            steps[i]
        );
    }
}

#[test]
fn a_refusal_without_available_matches_on_its_code() {
    let mut h = H::default();
    h.seq(
        0,
        vec![
            (reserve("a", 1), refused("insufficient_stock")),
            (reserve("a", 1), insufficient(0)),
        ],
    );
    assert_clean(&h.check());
}

#[test]
fn a_code_the_model_never_gives_is_a_violation() {
    let mut h = H::default();
    h.seq(
        0,
        vec![
            (receive("o1", 10), stock(10, 0)),
            (reserve("a", 1), reserved(9)),
            // Holds never expire in a run: `expired` is not an answer the model gives.
            (commit("a"), refused("expired")),
        ],
    );
    let r = h.check();
    let v = violation(&r);
    assert_eq!(v.prefix_len, 2);
    assert_eq!(v.stuck[0].expected, done());
    assert!(v.suspect.contains("code"), "{}", v.suspect);
}

#[test]
fn concurrent_reserves_where_only_one_order_fits() {
    // A is invoked first, but its answer says B went first: 10 - 4 = 6, 6 - 3 = 3.
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.ok(10, 40, reserve("a", 3), reserved(3));
    h.ok(12, 38, reserve("b", 4), reserved(6));
    h.ok(50, 55, read(), stock(10, 7));
    assert_clean(&h.check());

    // Both answering as if first fits no order.
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.ok(10, 40, reserve("a", 3), reserved(7));
    h.ok(12, 38, reserve("b", 4), reserved(6));
    violation(&h.check());
}

#[test]
fn an_unknown_reserve_that_took_effect() {
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.unknown(10, reserve("a", 3));
    h.ok(50, 60, read(), stock(10, 0));
    // It landed late, after the first read.
    h.ok(100, 110, read(), stock(10, 3));
    h.ok(120, 130, reserve("b", 2), reserved(5));
    let r = h.check();
    assert_clean(&r);
    assert_eq!(r.stats[KEY].unknown, 1);

    // With another quantity than the one it asked for, nothing explains the read.
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.unknown(10, reserve("a", 3));
    h.ok(100, 110, read(), stock(10, 4));
    violation(&h.check());
}

#[test]
fn an_unknown_reserve_that_did_not_take_effect() {
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.unknown(10, reserve("a", 3));
    h.ok(100, 110, read(), stock(10, 0));
    h.ok(120, 130, reserve("b", 2), reserved(8));
    h.ok(140, 150, commit("a"), refused("unknown_reservation"));
    assert_clean(&h.check());
}

#[test]
fn a_retry_chain_is_merged() {
    // Two unknown tries, then the answer; a read between the first try and the answered one
    // already sees the hold: the first try took effect, and the answer is its replay.
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.unknown(10, reserve("a", 3));
    h.unknown(20, reserve("a", 3));
    h.ok(25, 28, read(), stock(10, 3));
    h.ok(30, 40, reserve("a", 3), reserved(7));
    h.unknown(50, commit("a"));
    h.ok(60, 70, commit("a"), done());
    h.ok(80, 90, read(), stock(7, 0));
    let r = h.check();
    assert_clean(&r);
    let stats = &r.stats[KEY];
    assert_eq!(stats.retries_merged, 3);
    assert_eq!(stats.unknown, 0);

    // The merged call keeps the later call's answer: a retry that answers as a new hold is
    // caught.
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.unknown(10, reserve("a", 3));
    h.ok(25, 28, read(), stock(10, 3));
    h.ok(30, 40, reserve("a", 3), reserved(4));
    violation(&h.check());
}

#[test]
fn a_commit_that_lands_after_its_refused_retry() {
    // The first commit is delayed; its retry finds nothing to commit (recorded nowhere), the
    // reserve lands, then the delayed commit does. Merging the two commits would hide that.
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.unknown(100, commit("x"));
    h.ok(110, 120, commit("x"), refused("unknown_reservation"));
    h.ok(130, 140, reserve("x", 2), reserved(8));
    h.ok(200, 210, read(), stock(8, 0));
    let r = h.check();
    assert_clean(&r);
    assert_eq!(r.stats[KEY].retries_merged, 0);
}

#[test]
fn unknown_reads_are_dropped() {
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.unknown(10, read());
    let r = h.check();
    assert_clean(&r);
    assert_eq!(r.stats[KEY].unknown_reads_dropped, 1);
    assert_eq!(r.stats[KEY].searched, 1);
}

#[test]
fn a_stale_read_is_caught() {
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.ok(10, 20, reserve("a", 3), reserved(7));
    let stale = h.ok(30, 40, read(), stock(10, 0));
    h.ok(50, 60, read(), stock(10, 3));
    let r = h.check();
    let v = violation(&r);
    assert_eq!(v.stuck[0].index, stale);
    assert_finding(&r, Guarantee::C4, "stale_read");
    assert!(v.suspect.starts_with("C4"), "{}", v.suspect);
}

#[test]
fn a_lost_acknowledged_reserve_is_caught() {
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.ok(10, 20, reserve("a", 3), reserved(7));
    h.ok(30, 40, reserve("b", 2), reserved(5));
    // An unknown release of another id does not excuse it.
    h.unknown(45, release("b"));
    h.ok(50, 60, read(), stock(10, 2));
    let r = h.check();
    let v = violation(&r);
    assert_finding(&r, Guarantee::C2, "lost_acknowledged_reservation");
    assert!(v.suspect.starts_with("C2"), "{}", v.suspect);

    // An unknown release of that very id does: the read is then explained.
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.ok(10, 20, reserve("a", 3), reserved(7));
    h.ok(30, 40, reserve("b", 2), reserved(5));
    h.unknown(45, release("a"));
    h.ok(50, 60, read(), stock(10, 2));
    assert_clean(&h.check());
}

#[test]
fn a_reserve_applied_twice_is_caught() {
    // The retry made a second hold and said so.
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.ok(10, 20, reserve("a", 3), reserved(7));
    h.ok(30, 40, reserve("a", 3), reserved(4));
    h.ok(50, 60, read(), stock(10, 6));
    let r = h.check();
    violation(&r);
    assert_finding(&r, Guarantee::C3, "replay_differs");
    assert_finding(&r, Guarantee::C3, "hold_counted_twice");

    // The retry answered like a replay but held again: the read shows it twice.
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.ok(10, 20, reserve("a", 3), reserved(7));
    h.ok(30, 40, reserve("a", 3), reserved(7));
    h.ok(50, 60, read(), stock(10, 6));
    let r = h.check();
    violation(&r);
    assert_finding(&r, Guarantee::C3, "hold_counted_twice");
}

#[test]
fn a_receipt_applied_twice_is_caught() {
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 5), stock(5, 0));
    h.ok(10, 15, receive("o1", 5), stock(10, 0));
    h.ok(20, 25, read(), stock(10, 0));
    let r = h.check();
    violation(&r);
    assert_finding(&r, Guarantee::C3, "replay_differs");
    assert_finding(&r, Guarantee::C3, "receipt_counted_twice");
}

#[test]
fn an_oversell_is_caught() {
    // Two reserves one after the other, both granted, with stock for one.
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 1), stock(1, 0));
    h.ok(10, 20, reserve("a", 1), reserved(0));
    let second = h.ok(30, 40, reserve("b", 1), reserved(0));
    let r = h.check();
    let v = violation(&r);
    assert_eq!(v.stuck[0].index, second);
    assert_eq!(v.stuck[0].expected, insufficient(0));
    assert!(v.suspect.starts_with("C1 oversell"), "{}", v.suspect);
}

#[test]
fn a_stock_answer_with_reserved_above_on_hand_is_caught() {
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 1), stock(1, 0));
    h.ok(10, 20, reserve("a", 1), reserved(0));
    h.ok(30, 40, reserve("b", 1), reserved(0));
    h.ok(50, 60, read(), stock(1, 2));
    let r = h.check();
    let v = violation(&r);
    assert_finding(&r, Guarantee::C1, "reserved_above_on_hand");
    assert!(v.suspect.starts_with("C1"), "{}", v.suspect);
}

#[test]
fn a_replay_that_answers_differently_is_caught() {
    let mut h = H::default();
    h.ok(0, 5, reserve("a", 5), insufficient(0));
    h.ok(10, 15, receive("o1", 10), stock(10, 0));
    h.ok(20, 25, reserve("a", 5), reserved(5));
    let r = h.check();
    violation(&r);
    assert_finding(&r, Guarantee::C3, "replay_differs");
}

#[test]
fn keys_are_checked_separately() {
    let mut h = H::default();
    h.ok_on("good/w", 0, 5, receive("o1", 10), stock(10, 0));
    h.ok_on("good/w", 10, 20, read(), stock(10, 0));
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.ok(10, 20, read(), stock(9, 0));
    let r = h.check();
    assert!(r.keys["good/w"].is_linearizable());
    violation(&r);
    assert!(!r.is_clean());
    assert!(r.findings.iter().all(|f| f.key == KEY), "{}", r.summary());
}

#[test]
fn a_search_out_of_budget_is_undecided_never_ok() {
    let mut h = H::default();
    h.seq(0, sequential_rules());
    let r = check(&h.calls, Duration::ZERO);
    assert!(
        matches!(r.keys[KEY], KeyVerdict::Undecided { .. }),
        "{}",
        r.summary()
    );
    assert!(!r.is_clean());
    assert!(r.summary().contains("UNDECIDED"), "{}", r.summary());
}

#[test]
fn the_report_serializes_and_summarizes() {
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.ok(10, 20, reserve("a", 3), reserved(7));
    h.ok(30, 40, read(), stock(10, 0));
    h.ok(50, 60, read(), stock(10, 3));
    let r = h.check();
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["keys"][KEY]["verdict"], "violation");
    assert_eq!(json["keys"][KEY]["stuck"][0]["op"]["f"], "read");
    assert_eq!(json["findings"][0]["guarantee"], "C4");
    let summary = r.summary();
    assert!(summary.starts_with("NOT CLEAN"), "{summary}");
    assert!(summary.contains("VIOLATION sku-1/berlin"), "{summary}");
    assert!(summary.contains("stale_read"), "{summary}");
    assert!(summary.lines().count() <= 6, "{summary}");
}

#[test]
fn an_unknown_refusal_that_a_release_would_have_turned_into_a_hold() {
    // `x` landed while stock was short (refused, remembered), then `y` was released: the
    // search must place the unknown reserve before the release although the release fits
    // first (a "flip": placing the release first would make `x` a hold).
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 5), stock(5, 0));
    h.ok(10, 15, reserve("y", 3), reserved(2));
    h.unknown(20, reserve("x", 3));
    h.ok(21, 30, release("y"), done());
    h.ok(40, 50, commit("x"), refused("reservation_not_held"));
    h.ok(60, 70, read(), stock(5, 0));
    assert_clean(&h.check());
}

#[test]
fn two_unknown_calls_seen_together() {
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 5), stock(5, 0));
    h.unknown(10, reserve("x", 2));
    h.unknown(11, receive("o2", 4));
    h.ok(50, 60, read(), stock(9, 2));
    h.ok(70, 80, reserve("y", 7), reserved(0));
    assert_clean(&h.check());
}

#[test]
fn unknown_calls_that_only_work_against_index_order() {
    // The commit was sent first but can only have landed after the reserve.
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 5), stock(5, 0));
    h.unknown(10, commit("x"));
    h.unknown(20, reserve("x", 2));
    h.ok(50, 60, read(), stock(3, 0));
    assert_clean(&h.check());
}

#[test]
fn interchangeable_unknown_reserves() {
    // Two lost-or-landed reserves of the same qty on ids nothing else names: one landed.
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 5), stock(5, 0));
    h.unknown(10, reserve("x1", 2));
    h.unknown(11, reserve("x2", 2));
    h.ok(50, 60, read(), stock(5, 2));
    h.ok(70, 80, read(), stock(5, 4));
    h.ok(90, 95, reserve("y", 1), reserved(0));
    assert_clean(&h.check());

    let mut h = H::default();
    h.ok(0, 5, receive("o1", 5), stock(5, 0));
    h.unknown(10, reserve("x1", 2));
    h.unknown(11, reserve("x2", 2));
    h.ok(50, 60, read(), stock(5, 6));
    violation(&h.check());
}

#[test]
fn reads_rule_out_an_early_landing() {
    // The reads show the unknown reserve had not landed by 100: it is only placed after that.
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.unknown(10, reserve("x", 3));
    h.ok(100, 110, read(), stock(10, 0));
    h.ok(200, 210, read(), stock(10, 3));
    let r = h.check();
    assert_clean(&r);
    assert_eq!(r.stats[KEY].unknown_deferred, 1);

    // A reserve that saw it before a read that did not: no order fits (with or without the
    // narrowing).
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.unknown(10, reserve("x", 3));
    h.ok(50, 60, reserve("y", 1), reserved(6));
    h.ok(100, 110, read(), stock(10, 1));
    let r = h.check();
    violation(&r);
    assert_eq!(r.stats[KEY].unknown_deferred, 1);
    // ... and the same history without the read that rules the early landing out is fine.
    let mut h = H::default();
    h.ok(0, 5, receive("o1", 10), stock(10, 0));
    h.unknown(10, reserve("x", 3));
    h.ok(50, 60, reserve("y", 1), reserved(6));
    h.ok(100, 110, read(), stock(10, 4));
    assert_clean(&h.check());
}

// ---------------------------------------------------------------------------------------------
// A long history made by the real ledger
// ---------------------------------------------------------------------------------------------

/// Holds outlive the run.
const TTL_MS: u64 = 86_400_000;

enum Fate {
    Answered,
    /// Timed out for the client; took effect at its linearization point.
    UnknownApplied,
    /// Timed out and never took effect.
    UnknownLost,
}

struct Planned {
    client: u64,
    op: Op,
    invoke: u64,
    lin: u64,
    end: u64,
    fate: Fate,
}

/// The answer the real ledger gives, as the runner would record it.
fn apply_real(state: &mut StockState, op: &Op) -> Answer {
    let rid = |id: &str| ReservationId::parse(id).unwrap();
    let qty = |q: u64| DomainQty::new(q).unwrap();
    let command = match op {
        Op::Read => {
            let v = state.view(0);
            return stock(v.on_hand as i64, v.reserved as i64);
        }
        Op::Reserve { id, qty: q } => Command::Reserve {
            reservation_id: rid(id),
            qty: qty(*q),
            ttl_ms: TTL_MS,
            order_id: None,
        },
        Op::Commit { id } => Command::Commit {
            reservation_id: rid(id),
        },
        Op::Release { id } => Command::Release {
            reservation_id: rid(id),
        },
        Op::Receive { id, qty: q } => Command::Receive {
            op_id: OpId::parse(id).unwrap(),
            qty: qty(*q),
        },
    };
    let (outcome, _) = state.apply(&command, 0);
    match outcome {
        Outcome::Reserved { available, .. } => reserved(available as i64),
        Outcome::Insufficient { available, .. } => insufficient(available as i64),
        Outcome::Committed { .. } | Outcome::Released { .. } => done(),
        Outcome::StockSet {
            on_hand, reserved, ..
        } => stock(on_hand as i64, reserved as i64),
        Outcome::IdConflict => refused("id_conflict"),
        Outcome::UnknownReservation => refused("unknown_reservation"),
        Outcome::NotHeld => refused("reservation_not_held"),
        Outcome::AlreadyReleased => refused("already_released"),
        Outcome::AlreadyCommitted => refused("already_committed"),
        Outcome::StockLimit { .. } => refused("stock_limit"),
        other => panic!("the chaos workload cannot get {other:?}"),
    }
}

/// `clients` concurrent clients, each one call at a time with random gaps and durations, ops
/// chosen without looking at the state (replays, conflicts and unknown ids included), each
/// taking effect at a random point of its interval; answers from the real ledger applied in
/// that order. About `unknown` calls time out (half of them took effect, some much later than
/// the client gave up), and about half of those are retried.
fn simulate(seed: u64, clients: usize, answered: usize, unknown: usize) -> Vec<Call> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut clock = vec![0u64; clients];
    let mut retry: Vec<Option<Op>> = vec![None; clients];
    let mut holds: Vec<(String, u64)> = Vec::new();
    let mut receipts: Vec<(String, u64)> = Vec::new();
    let mut plans: Vec<Planned> = Vec::new();
    let (mut n_answered, mut n_unknown) = (0, 0);
    let unknown_p = unknown as f64 / answered as f64 * 1.6;
    while n_answered < answered {
        let c = (0..clients).min_by_key(|&c| clock[c]).unwrap();
        let op = retry[c].take().unwrap_or_else(|| {
            let recent = |v: &Vec<(String, u64)>, rng: &mut StdRng| {
                v[v.len() - 1 - rng.gen_range(0..v.len().min(40))].clone()
            };
            match rng.gen_range(0..100) {
                0..=29 => read(),
                30..=64 => {
                    if !holds.is_empty() && rng.gen_bool(0.12) {
                        let (id, q) = recent(&holds, &mut rng);
                        let q = if rng.gen_bool(0.3) { q % 5 + 1 } else { q };
                        reserve(&id, q)
                    } else {
                        let id = format!("r{}", holds.len());
                        let q = rng.gen_range(1..=5);
                        holds.push((id.clone(), q));
                        reserve(&id, q)
                    }
                }
                65..=89 if !holds.is_empty() => {
                    let id = if rng.gen_bool(0.03) {
                        format!("zz{}", rng.gen_range(0..1000))
                    } else {
                        recent(&holds, &mut rng).0
                    };
                    if rng.gen_bool(0.6) {
                        commit(&id)
                    } else {
                        release(&id)
                    }
                }
                _ => {
                    if !receipts.is_empty() && rng.gen_bool(0.1) {
                        let (id, q) = recent(&receipts, &mut rng);
                        let q = if rng.gen_bool(0.3) { q + 1 } else { q };
                        receive(&id, q)
                    } else {
                        let id = format!("o{}", receipts.len());
                        let q = rng.gen_range(1..=20);
                        receipts.push((id.clone(), q));
                        receive(&id, q)
                    }
                }
            }
        });
        let invoke = clock[c] + rng.gen_range(0..40);
        let times_out = !op.is_read() && n_unknown < unknown && rng.gen_bool(unknown_p.min(1.0));
        let (lin, end, fate) = if times_out {
            n_unknown += 1;
            if rng.gen_bool(0.5) {
                retry[c] = Some(op.clone());
            }
            let end = invoke + 1_000;
            if rng.gen_bool(0.5) {
                (invoke + rng.gen_range(1..3_000), end, Fate::UnknownApplied)
            } else {
                (0, end, Fate::UnknownLost)
            }
        } else {
            n_answered += 1;
            let lin = invoke + rng.gen_range(0..200);
            (lin, lin + rng.gen_range(0..200), Fate::Answered)
        };
        clock[c] = end;
        plans.push(Planned {
            client: c as u64,
            op,
            invoke,
            lin,
            end,
            fate,
        });
    }
    let mut order: Vec<usize> = (0..plans.len())
        .filter(|&i| !matches!(plans[i].fate, Fate::UnknownLost))
        .collect();
    order.sort_by_key(|&i| (plans[i].lin, i));
    let mut state = StockState::default();
    let mut answers: Vec<Option<Answer>> = vec![None; plans.len()];
    for i in order {
        answers[i] = Some(apply_real(&mut state, &plans[i].op));
    }
    plans
        .into_iter()
        .zip(answers)
        .enumerate()
        .map(|(i, (p, answer))| Call {
            index: i as u64,
            client: p.client,
            key: KEY.to_owned(),
            node: format!("n{}", i % 3 + 1),
            op: p.op,
            invoke_us: p.invoke,
            end: match p.fate {
                Fate::Answered => End::Answered {
                    at_us: p.end,
                    answer: answer.unwrap(),
                },
                _ => End::Unknown {
                    at_us: p.end,
                    reason: "timeout".into(),
                },
            },
        })
        .collect()
}

/// Many small histories from the real ledger, with the answers of every kind of op: the model
/// agrees with the implemented contract (a disagreement is a violation here).
#[test]
fn the_model_agrees_with_the_real_ledger() {
    for seed in 0..40 {
        let calls = simulate(seed, 4, 200, 6);
        let r = check(&calls, BUDGET);
        assert!(r.is_clean(), "seed {seed}:\n{}", r.summary());
    }
}

#[test]
fn five_thousand_calls_from_sixteen_clients() {
    let calls = simulate(7, 16, 5_000, 50);
    let unknown = calls.iter().filter(|c| c.answer().is_none()).count();
    let codes = |code: &str| {
        calls
            .iter()
            .filter(|c| matches!(c.answer(), Some(Answer::Refused { code: k, .. }) if k == code))
            .count()
    };
    let budget = Duration::from_secs(20);
    let started = Instant::now();
    let r = check(&calls, budget);
    let took = started.elapsed();
    let s = &r.stats[KEY];
    println!(
        "5,000-call history: {} calls ({unknown} unknown, {} retries merged; {} insufficient, {} conflicts, {} not held, {} unknown ids): {} in {took:?}, {} states",
        calls.len(),
        s.retries_merged,
        codes("insufficient_stock"),
        codes("id_conflict"),
        codes("reservation_not_held"),
        codes("unknown_reservation"),
        if r.is_clean() { "linearizable" } else { "NOT CLEAN" },
        s.states,
    );
    assert_eq!(s.answered + s.retries_merged + s.unknown, calls.len());
    assert!((40..=60).contains(&unknown), "{unknown} unknown calls");
    assert!(r.is_clean(), "{}", r.summary());

    // One answer flipped in the middle: a read that shows 1,000 more on hand than there is.
    let mut mutated = calls.clone();
    let middle = mutated.len() / 2;
    let read = (middle..mutated.len())
        .find(|&i| mutated[i].op.is_read() && mutated[i].answer().is_some())
        .unwrap();
    if let End::Answered {
        answer: Answer::Stock { on_hand, .. },
        ..
    } = &mut mutated[read].end
    {
        *on_hand += 1_000;
    }
    let started = Instant::now();
    let r = check(&mutated, budget);
    println!(
        "the mutated copy: {} in {:?}, {} states",
        match &r.keys[KEY] {
            KeyVerdict::Violation(v) => format!("violation after {} calls", v.prefix_len),
            other => format!("{other:?}"),
        },
        started.elapsed(),
        r.stats[KEY].states
    );
    let v = violation(&r);
    let flipped = mutated[read].index;
    assert!(
        v.stuck.iter().any(|s| s.index == flipped),
        "{}",
        r.summary()
    );
}

/// A history of a few calls from three clients on small ids and quantities (replays,
/// conflicts, refusals, unknown calls and their retries are common), answered by the real
/// ledger; with probability `wrong` one answer is then changed.
fn small_history(rng: &mut StdRng, calls: usize, wrong: f64) -> Vec<Call> {
    let mut clock = [0u64; 3];
    let mut retry: [Option<Op>; 3] = Default::default();
    let mut plans = Vec::new();
    for i in 0..calls {
        let c = rng.gen_range(0..3);
        let id = |rng: &mut StdRng, p: &str| format!("{p}{}", rng.gen_range(0..3));
        let op = retry[c]
            .take()
            .unwrap_or_else(|| match rng.gen_range(0..10) {
                0..=2 => reserve(&id(rng, "r"), rng.gen_range(1..=3)),
                3 => commit(&id(rng, "r")),
                4 => release(&id(rng, "r")),
                5..=6 => receive(&id(rng, "o"), rng.gen_range(1..=3)),
                _ => read(),
            });
        let invoke = clock[c] + rng.gen_range(0..20);
        let lin = invoke + rng.gen_range(0..30);
        let end = lin + rng.gen_range(0..30);
        clock[c] = end;
        let fate = match rng.gen_range(0..10) {
            0..=1 => Fate::UnknownApplied,
            2 => Fate::UnknownLost,
            _ => Fate::Answered,
        };
        if !matches!(fate, Fate::Answered) && rng.gen_bool(0.5) {
            retry[c] = Some(op.clone());
        }
        let lin = match fate {
            Fate::UnknownApplied => invoke + rng.gen_range(0..200),
            _ => lin,
        };
        plans.push((i, c as u64, op, invoke, lin, end, fate));
    }
    let mut order: Vec<usize> = (0..plans.len())
        .filter(|&i| !matches!(plans[i].6, Fate::UnknownLost))
        .collect();
    order.sort_by_key(|&i| (plans[i].4, i));
    let mut state = StockState::default();
    let mut answers = vec![None; plans.len()];
    for i in order {
        answers[i] = Some(apply_real(&mut state, &plans[i].2));
    }
    let mut out: Vec<Call> = plans
        .into_iter()
        .zip(answers)
        .map(|((i, client, op, invoke, _, end, fate), answer)| Call {
            index: i as u64,
            client,
            key: KEY.to_owned(),
            node: "n1".into(),
            op,
            invoke_us: invoke,
            end: match fate {
                Fate::Answered => End::Answered {
                    at_us: end,
                    answer: answer.unwrap(),
                },
                _ => End::Unknown {
                    at_us: end,
                    reason: "timeout".into(),
                },
            },
        })
        .collect();
    if rng.gen_bool(wrong) {
        let answered: Vec<usize> = (0..out.len())
            .filter(|&i| out[i].answer().is_some())
            .collect();
        if let Some(&i) = answered.get(rng.gen_range(0..answered.len().max(1))) {
            if let End::Answered { answer, .. } = &mut out[i].end {
                *answer = match answer.clone() {
                    Answer::Reserved { available } => reserved(available + rng.gen_range(-1..=1)),
                    Answer::Done => refused("unknown_reservation"),
                    Answer::Stock { on_hand, reserved } => stock(
                        on_hand + rng.gen_range(-1..=1),
                        reserved + rng.gen_range(-1..=1),
                    ),
                    Answer::Refused { code, .. } if code == "unknown_reservation" => done(),
                    Answer::Refused { .. } => reserved(rng.gen_range(0..3)),
                };
            }
        }
    }
    out
}

/// The answer fits as the checker compares them (codes; `available` when both have one).
fn fits(model: &Answer, given: &Answer) -> bool {
    match (model, given) {
        (
            Answer::Refused {
                code: a,
                available: x,
            },
            Answer::Refused {
                code: b,
                available: y,
            },
        ) => a == b && (x.is_none() || y.is_none() || x == y),
        _ => model == given,
    }
}

/// Every order of the calls that respects real time, unknown calls placed anywhere or not at
/// all, against the real ledger: no memo, no merging, no pruning beyond real time.
fn brute_force(calls: &[Call]) -> bool {
    fn go(calls: &[&Call], placed: &mut [bool], state: &StockState) -> bool {
        let open = |i: usize| !placed[i] && calls[i].answer().is_some();
        let Some(deadline) = (0..calls.len())
            .filter(|&i| open(i))
            .map(|i| calls[i].answered_at().unwrap())
            .min()
        else {
            return true;
        };
        for i in 0..calls.len() {
            if placed[i] || calls[i].invoke_us > deadline {
                continue;
            }
            let mut next = state.clone();
            let answer = apply_real(&mut next, &calls[i].op);
            if calls[i].answer().is_some_and(|given| !fits(&answer, given)) {
                continue;
            }
            placed[i] = true;
            let found = go(calls, placed, &next);
            placed[i] = false;
            if found {
                return true;
            }
        }
        false
    }
    let calls: Vec<&Call> = calls
        .iter()
        .filter(|c| !(c.op.is_read() && c.answer().is_none()))
        .collect();
    go(
        &calls,
        &mut vec![false; calls.len()],
        &StockState::default(),
    )
}

/// The checker (memo, merged retries, narrowed unknown calls, free steps, the rules for when
/// an unknown call is worth placing) against the brute force, on many small histories, about
/// half of them with one answer changed: the same verdict every time.
#[test]
fn agrees_with_brute_force_on_small_histories() {
    let mut rng = StdRng::seed_from_u64(11);
    let (mut linearizable, mut not) = (0, 0);
    for case in 0..6_000 {
        let n = rng.gen_range(3..=10);
        let calls = small_history(&mut rng, n, 0.5);
        let expected = brute_force(&calls);
        let r = check(&calls, BUDGET);
        let got = match &r.keys[KEY] {
            KeyVerdict::Linearizable => true,
            KeyVerdict::Violation(_) => false,
            KeyVerdict::Undecided { reason } => panic!("case {case}: undecided: {reason}"),
        };
        assert_eq!(got, expected, "case {case}: {calls:#?}\n{}", r.summary());
        // A finding is a proof of a violation too.
        assert!(
            r.findings.is_empty() || !expected,
            "case {case}: {calls:#?}\n{}",
            r.summary()
        );
        if expected {
            linearizable += 1;
        } else {
            not += 1;
        }
    }
    println!("small histories: {linearizable} linearizable, {not} not");
    assert!(
        linearizable > 2_000 && not > 1_000,
        "{linearizable} / {not}"
    );
}
