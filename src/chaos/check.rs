//! The checker of `stockring chaos`: does some single order of the recorded calls, each placed
//! inside its own real-time interval, explain every answer the nodes gave (C4)? Checked per
//! key against a model of one ledger. Beside that search it runs direct checks that name the
//! guarantee a history breaks (C1 no oversell, C2 nothing acknowledged lost, C3 exactly-once),
//! because "no order fits" alone does not say which promise failed.
//!
//! Pure: no I/O, no randomness. It reads a clock only for its per-key search budget.
//!
//! Per key (keys share nothing, so a history is linearizable iff each key's part is: Herlihy
//! and Wing's locality, "P-compositionality" in Porcupine):
//! 1. `direct_checks`: C1 on every answer, replays against first answers, and bounds on every
//!    read that count each id's effect once (conservation);
//! 2. `prepare`: drop reads that never answered (they change nothing), merge retries, move
//!    unknown calls past the reads that show they had not landed yet, number the ids densely;
//! 3. `search`: Wing–Gong / Lowe (WGL) with memoization, as in Porcupine and Lowe's "Testing
//!    for linearizability" (2017), plus rules that keep unknown calls from making it
//!    exponential without making it incomplete (see the search section).
//!
//! A key is `Linearizable` only when the search found an order; `Violation` when it proved
//! there is none (it tried every order that matters) or a direct check failed; `Undecided`
//! when its budget ran out first.

use super::history::{Answer, Call, Op};
use crate::limits::MAX_STOCK;
use serde::Serialize;
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;

/// Most calls a violation lists: enough for a human to see what went wrong.
const MAX_LISTED: usize = 10;

// ---------------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------------

/// What `check` found: a verdict per key, the direct checks' findings, and what the search cost.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub keys: BTreeMap<String, KeyVerdict>,
    pub findings: Vec<Finding>,
    pub stats: BTreeMap<String, KeyStats>,
}

/// The verdict on one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum KeyVerdict {
    /// Some order of the calls within their intervals explains every answer.
    Linearizable,
    /// No order does.
    Violation(Violation),
    /// The search ran out of its budget: nothing is claimed.
    Undecided { reason: String },
}

/// The facts a human needs to start on a violation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub key: String,
    /// Calls in the longest linearizable prefix the search found.
    pub prefix_len: usize,
    /// Answered calls that had to be placed (after merging retries).
    pub answered: usize,
    /// The model's figures after that prefix.
    pub state_at_prefix: Figures,
    /// The answered calls that could be next after that prefix, none of whose answers fits
    /// (at most `MAX_LISTED`, earliest answer first).
    pub stuck: Vec<StuckCall>,
    /// Best-effort class: which guarantee most likely failed.
    pub suspect: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Figures {
    pub on_hand: i64,
    pub reserved: i64,
}

/// A call the search could not place, with what it answered and what the model expected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StuckCall {
    pub index: u64,
    /// Earlier tries of the same operation merged into this call (their indices).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tries: Vec<u64>,
    pub client: u64,
    pub node: String,
    pub op: Op,
    /// The first try's invocation.
    pub invoke_us: u64,
    pub answered_at_us: Option<u64>,
    pub answer: Option<Answer>,
    pub expected: Answer,
}

/// Which promise of README's table a finding breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Guarantee {
    /// No oversell: `0 <= reserved <= on_hand`, `available >= 0`.
    C1,
    /// Nothing acknowledged is lost.
    C2,
    /// Exactly-once effect; a repeat returns the first answer.
    C3,
    /// Linearizable per key (here: a read that misses what was acknowledged before it began).
    C4,
}

/// A direct check that failed on one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub guarantee: Guarantee,
    /// A stable name: `negative_stock`, `reserved_above_on_hand`, `negative_available`,
    /// `replay_differs`, `lost_acknowledged_reservation`, `lost_acknowledged_receipt`,
    /// `hold_counted_twice`, `receipt_counted_twice`, `stale_read`.
    pub kind: &'static str,
    pub key: String,
    pub detail: String,
    /// The calls it is about (at most `MAX_LISTED`).
    pub calls: Vec<u64>,
}

/// What one key's check saw and cost.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KeyStats {
    /// Calls recorded on the key.
    pub calls: usize,
    /// Calls the search placed or could place, after merging.
    pub searched: usize,
    /// Of those, answered ones.
    pub answered: usize,
    /// Of those, calls whose outcome stayed unknown.
    pub unknown: usize,
    /// Unknown tries merged into a later identical call.
    pub retries_merged: usize,
    /// Reads that never answered (dropped: they change nothing).
    pub unknown_reads_dropped: usize,
    /// Unknown reserves and receipts the reads show landed only after some read, if at all
    /// (their invocation is moved there; see `narrow_unknowns`).
    pub unknown_deferred: usize,
    /// Search states visited.
    pub states: u64,
    pub elapsed_ms: u64,
}

impl KeyVerdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, KeyVerdict::Linearizable)
    }
}

impl Report {
    /// Every key linearizable (none undecided) and no direct check failed.
    pub fn is_clean(&self) -> bool {
        self.keys.values().all(KeyVerdict::is_linearizable) && self.findings.is_empty()
    }

    /// A few lines for a human: the counts, then each violation, undecided key and finding.
    pub fn summary(&self) -> String {
        let count = |f: fn(&KeyVerdict) -> bool| self.keys.values().filter(|v| f(v)).count();
        let violations = count(|v| matches!(v, KeyVerdict::Violation(_)));
        let undecided = count(|v| matches!(v, KeyVerdict::Undecided { .. }));
        let sum = |f: fn(&KeyStats) -> usize| self.stats.values().map(f).sum::<usize>();
        let mut s = format!(
            "{}: {} keys, {} linearizable, {} violations, {} undecided; {} calls ({} unknown, {} retries merged); {} findings\n",
            if self.is_clean() { "CLEAN" } else { "NOT CLEAN" },
            self.keys.len(),
            count(KeyVerdict::is_linearizable),
            violations,
            undecided,
            sum(|s| s.calls),
            sum(|s| s.unknown),
            sum(|s| s.retries_merged),
            self.findings.len(),
        );
        let mut lines = 0;
        for (key, verdict) in &self.keys {
            if lines >= MAX_LISTED {
                break;
            }
            match verdict {
                KeyVerdict::Linearizable => continue,
                KeyVerdict::Undecided { reason } => {
                    let _ = writeln!(s, "UNDECIDED {key}: {reason}");
                }
                KeyVerdict::Violation(v) => {
                    let _ = writeln!(
                        s,
                        "VIOLATION {key}: {} calls placed of {} answered to place; suspect: {}",
                        v.prefix_len, v.answered, v.suspect
                    );
                    if let Some(c) = v.stuck.first() {
                        let _ = writeln!(s, "  stuck: {}", show_stuck(c));
                    }
                }
            }
            lines += 1;
        }
        for f in self.findings.iter().take(MAX_LISTED) {
            let _ = writeln!(s, "{:?} {} {}: {}", f.guarantee, f.kind, f.key, f.detail);
        }
        if self.findings.len() > MAX_LISTED {
            let _ = writeln!(
                s,
                "... and {} more findings",
                self.findings.len() - MAX_LISTED
            );
        }
        s
    }
}

/// Checks every key of `calls` (in any order; `Call::key` groups them). Each key's search
/// stops after `budget_per_key`, then that key is `Undecided`.
pub fn check(calls: &[Call], budget_per_key: Duration) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Call>> = BTreeMap::new();
    for c in calls {
        by_key.entry(c.key.as_str()).or_default().push(c);
    }
    let mut report = Report::default();
    for (key, mut calls) in by_key {
        calls.sort_by_key(|c| (c.invoke_us, c.index));
        let started = Instant::now();
        let bounds = read_bounds(&calls);
        let findings = direct_checks(key, &calls, &bounds);
        let history = prepare(&calls, &bounds);
        let outcome = search(&history, budget_per_key);
        let verdict = match outcome.result {
            SearchResult::Linearizable => KeyVerdict::Linearizable,
            // A finding proves a violation (every correct history passes the direct checks),
            // so a search that ran out of time does not make the key undecided.
            SearchResult::Undecided(_, best) if !findings.is_empty() => {
                KeyVerdict::Violation(violation(key, &history, best, &findings))
            }
            SearchResult::Undecided(reason, _) => KeyVerdict::Undecided { reason },
            SearchResult::Violation(best) => {
                KeyVerdict::Violation(violation(key, &history, best, &findings))
            }
        };
        let mut stats = history.stats.clone();
        stats.states = outcome.states;
        stats.elapsed_ms = started.elapsed().as_millis() as u64;
        report.keys.insert(key.to_owned(), verdict);
        report.stats.insert(key.to_owned(), stats);
        report.findings.extend(findings);
    }
    report
}

// ---------------------------------------------------------------------------------------------
// The model: one (sku, warehouse) ledger, as `src/domain/ledger.rs` implements it
// ---------------------------------------------------------------------------------------------
//
// Starts at on_hand 0, reserved 0, safety stock 0, no ids. No time: holds never expire within
// a run (the runner's TTL outlives it), and forgetting ids takes `outcome_retention_ms` (24 h).
// Reservation ids and op (receipt) ids are two separate name spaces (`StockState::reservations`
// and `StockState::ops`), so `r1` as a reservation and `r1` as a receipt are unrelated.
// - Reserve{id, qty}, id unseen: available = on_hand - reserved; qty > available refuses
//   (`insufficient_stock` with available) and remembers the refusal; else holds and answers
//   the available after the hold. Seen with another qty: `id_conflict`, no change (the ledger
//   also compares ttl and order id, which the runner keeps fixed). Seen with the same qty: the
//   first answer again, whatever became of the hold.
// - Commit / Release: held -> done (commit also takes the qty off on_hand); a repeat of the
//   same -> done; the other one after -> `already_released` / `already_committed`; an id whose
//   reserve was refused -> `reservation_not_held`; unseen -> `unknown_reservation` (not
//   remembered: the same commit may succeed later).
// - Receive{id, qty}, id unseen: on_hand += qty, answers the figures after; past `MAX_STOCK`
//   it is refused with `stock_limit` and not remembered. Seen: the first answer again, or
//   `id_conflict` for another qty.
// - Read: the figures.

/// The refusal codes the model gives. Any other code in a history never matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Code {
    InsufficientStock,
    IdConflict,
    UnknownReservation,
    AlreadyReleased,
    AlreadyCommitted,
    ReservationNotHeld,
    StockLimit,
    /// `expired`, `cancelled` or anything else: the model never gives it in a chaos run.
    Other,
}

impl Code {
    fn parse(s: &str) -> Code {
        match s {
            "insufficient_stock" => Code::InsufficientStock,
            "id_conflict" => Code::IdConflict,
            "unknown_reservation" => Code::UnknownReservation,
            "already_released" => Code::AlreadyReleased,
            "already_committed" => Code::AlreadyCommitted,
            "reservation_not_held" => Code::ReservationNotHeld,
            "stock_limit" => Code::StockLimit,
            _ => Code::Other,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Code::InsufficientStock => "insufficient_stock",
            Code::IdConflict => "id_conflict",
            Code::UnknownReservation => "unknown_reservation",
            Code::AlreadyReleased => "already_released",
            Code::AlreadyCommitted => "already_committed",
            Code::ReservationNotHeld => "reservation_not_held",
            Code::StockLimit => "stock_limit",
            Code::Other => "other",
        }
    }
}

/// An answer in a form that compares without allocating (the search compares millions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    Reserved(i64),
    Done,
    Stock(i64, i64),
    Refused(Code, Option<i64>),
}

impl Reply {
    fn of(a: &Answer) -> Reply {
        match a {
            Answer::Reserved { available } => Reply::Reserved(*available),
            Answer::Done => Reply::Done,
            Answer::Stock { on_hand, reserved } => Reply::Stock(*on_hand, *reserved),
            Answer::Refused { code, available } => Reply::Refused(Code::parse(code), *available),
        }
    }

    fn to_answer(self) -> Answer {
        match self {
            Reply::Reserved(available) => Answer::Reserved { available },
            Reply::Done => Answer::Done,
            Reply::Stock(on_hand, reserved) => Answer::Stock { on_hand, reserved },
            Reply::Refused(code, available) => Answer::Refused {
                code: code.as_str().to_owned(),
                available,
            },
        }
    }

    /// Does the answer a node gave (`given`) fit this one? Refusals compare their code, and
    /// their `available` only when both carry one.
    fn fits(self, given: Reply) -> bool {
        match (self, given) {
            (Reply::Refused(a, x), Reply::Refused(b, y)) => {
                a == b && a != Code::Other && (x.is_none() || y.is_none() || x == y)
            }
            (a, b) => a == b,
        }
    }
}

/// An operation with its id numbered densely (reservation and op ids separately).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MOp {
    Reserve { r: u32, qty: i64 },
    Commit { r: u32 },
    Release { r: u32 },
    Receive { o: u32, qty: i64 },
    Read,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Hold {
    #[default]
    Unseen,
    Held,
    Committed,
    Released,
    /// The first reserve was refused for lack of stock.
    Refused,
}

/// What the ledger remembers of one reservation id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ResSlot {
    hold: Hold,
    qty: i64,
    /// The `available` of the first answer (after the hold, or the refusal's).
    available: i64,
}

/// What the ledger remembers of one receipt id: its qty and first answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct OpSlot {
    applied: bool,
    qty: i64,
    on_hand: i64,
    reserved: i64,
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Res(u32, ResSlot),
    Op(u32, OpSlot),
}

/// A state change: one id's record replaced, and the figures moved.
#[derive(Clone, Copy, Debug)]
struct Change {
    slot: Slot,
    d_on_hand: i64,
    d_reserved: i64,
}

/// The model's state. It is a function of the id records alone (on_hand and reserved follow
/// from them), so `hash` — the XOR of one fingerprint per non-empty record, kept up to date on
/// every change (Zobrist hashing) — identifies the whole state.
///
/// A first answer is kept only where some answered call can replay it (`replayed_*`):
/// elsewhere it is unobservable, and keeping it would make two unknown calls that commute
/// (two holds, in either order) look like different states to the memo.
#[derive(Clone, Debug)]
struct Ledger {
    on_hand: i64,
    reserved: i64,
    res: Vec<ResSlot>,
    ops: Vec<OpSlot>,
    replayed_res: Vec<bool>,
    replayed_ops: Vec<bool>,
    hash: u128,
}

impl Ledger {
    fn new(history: &KeyHistory) -> Ledger {
        let mut replayed_res = vec![false; history.n_res];
        let mut replayed_ops = vec![false; history.n_ops];
        for e in history.entries.iter().filter(|e| e.given.is_some()) {
            match e.op {
                MOp::Reserve { r, .. } => replayed_res[r as usize] = true,
                MOp::Receive { o, .. } => replayed_ops[o as usize] = true,
                _ => {}
            }
        }
        Ledger {
            on_hand: 0,
            reserved: 0,
            res: vec![ResSlot::default(); history.n_res],
            ops: vec![OpSlot::default(); history.n_ops],
            replayed_res,
            replayed_ops,
            hash: 0,
        }
    }

    fn figures(&self) -> Figures {
        Figures {
            on_hand: self.on_hand,
            reserved: self.reserved,
        }
    }

    /// The answer to `op` now, and the change it makes (if any). Changes nothing itself.
    fn decide(&self, op: MOp) -> (Reply, Option<Change>) {
        let no_change = |reply| (reply, None);
        match op {
            MOp::Read => no_change(Reply::Stock(self.on_hand, self.reserved)),
            MOp::Reserve { r, qty } => {
                let s = self.res[r as usize];
                match s.hold {
                    Hold::Unseen => {
                        let available = self.on_hand - self.reserved;
                        let (hold, after, d_reserved, reply) = if qty > available {
                            let reply = Reply::Refused(Code::InsufficientStock, Some(available));
                            (Hold::Refused, available, 0, reply)
                        } else {
                            let after = available - qty;
                            (Hold::Held, after, qty, Reply::Reserved(after))
                        };
                        let slot = ResSlot {
                            hold,
                            qty,
                            available: if self.replayed_res[r as usize] {
                                after
                            } else {
                                0
                            },
                        };
                        let change = Change {
                            slot: Slot::Res(r, slot),
                            d_on_hand: 0,
                            d_reserved,
                        };
                        (reply, Some(change))
                    }
                    _ if s.qty != qty => no_change(Reply::Refused(Code::IdConflict, None)),
                    Hold::Refused => {
                        no_change(Reply::Refused(Code::InsufficientStock, Some(s.available)))
                    }
                    Hold::Held | Hold::Committed | Hold::Released => {
                        no_change(Reply::Reserved(s.available))
                    }
                }
            }
            MOp::Commit { r } => self.finish(r, true),
            MOp::Release { r } => self.finish(r, false),
            MOp::Receive { o, qty } => {
                let s = self.ops[o as usize];
                if s.applied {
                    return if s.qty == qty {
                        no_change(Reply::Stock(s.on_hand, s.reserved))
                    } else {
                        no_change(Reply::Refused(Code::IdConflict, None))
                    };
                }
                match self.on_hand.checked_add(qty) {
                    Some(on_hand) if on_hand <= MAX_STOCK as i64 => {
                        let slot = if self.replayed_ops[o as usize] {
                            OpSlot {
                                applied: true,
                                qty,
                                on_hand,
                                reserved: self.reserved,
                            }
                        } else {
                            OpSlot {
                                applied: true,
                                qty,
                                ..OpSlot::default()
                            }
                        };
                        let change = Change {
                            slot: Slot::Op(o, slot),
                            d_on_hand: qty,
                            d_reserved: 0,
                        };
                        (Reply::Stock(on_hand, self.reserved), Some(change))
                    }
                    _ => no_change(Reply::Refused(Code::StockLimit, None)),
                }
            }
        }
    }

    /// Commit (`commit`) or release of reservation `r`.
    fn finish(&self, r: u32, commit: bool) -> (Reply, Option<Change>) {
        let s = self.res[r as usize];
        let refused = |code| (Reply::Refused(code, None), None);
        match (s.hold, commit) {
            (Hold::Unseen, _) => refused(Code::UnknownReservation),
            (Hold::Refused, _) => refused(Code::ReservationNotHeld),
            (Hold::Committed, false) => refused(Code::AlreadyCommitted),
            (Hold::Released, true) => refused(Code::AlreadyReleased),
            (Hold::Committed, true) | (Hold::Released, false) => (Reply::Done, None),
            (Hold::Held, _) => {
                let hold = if commit {
                    Hold::Committed
                } else {
                    Hold::Released
                };
                let change = Change {
                    slot: Slot::Res(r, ResSlot { hold, ..s }),
                    d_on_hand: if commit { -s.qty } else { 0 },
                    d_reserved: -s.qty,
                };
                (Reply::Done, Some(change))
            }
        }
    }

    /// Applies a change; returns the change that undoes it.
    fn apply(&mut self, ch: Change) -> Change {
        let old = self.put(ch.slot);
        self.on_hand += ch.d_on_hand;
        self.reserved += ch.d_reserved;
        Change {
            slot: old,
            d_on_hand: -ch.d_on_hand,
            d_reserved: -ch.d_reserved,
        }
    }

    /// Stores one record, keeping `hash` up to date; returns the record it replaced.
    fn put(&mut self, slot: Slot) -> Slot {
        let old = match slot {
            Slot::Res(i, new) => Slot::Res(i, std::mem::replace(&mut self.res[i as usize], new)),
            Slot::Op(i, new) => Slot::Op(i, std::mem::replace(&mut self.ops[i as usize], new)),
        };
        self.hash ^= slot_hash(old) ^ slot_hash(slot);
        old
    }
}

/// A record's fingerprint; an empty record's is 0, so the initial state hashes to 0.
fn slot_hash(slot: Slot) -> u128 {
    match slot {
        Slot::Res(_, s) if s.hold == Hold::Unseen => 0,
        Slot::Op(_, s) if !s.applied => 0,
        Slot::Res(i, s) => {
            fingerprint(&[1, i as u64, s.hold as u64, s.qty as u64, s.available as u64])
        }
        Slot::Op(i, s) => fingerprint(&[
            2,
            i as u64,
            s.qty as u64,
            s.on_hand as u64,
            s.reserved as u64,
        ]),
    }
}

fn mix64(mut z: u64) -> u64 {
    // splitmix64's finalizer: every input bit affects every output bit.
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 128 bits from two independently seeded mixes. The search's memo stores only fingerprints;
/// a collision could only make it skip a state it had not seen (a false violation, never a
/// false pass), and at 128 bits per half of the key that is beyond reach (~2^-100 for 10^9
/// states).
fn fingerprint(words: &[u64]) -> u128 {
    let (mut a, mut b) = (0x243F_6A88_85A3_08D3_u64, 0x1319_8A2E_0370_7344_u64);
    for &w in words {
        a = mix64(a ^ w);
        b = mix64(b.rotate_left(23) ^ w ^ 0xA409_3822_299F_31D0);
    }
    ((a as u128) << 64) | b as u128
}

// ---------------------------------------------------------------------------------------------
// Preparing one key's history
// ---------------------------------------------------------------------------------------------

/// One call as the search sees it: possibly a chain of retries merged into one.
struct Entry<'a> {
    /// The last call of the chain: its end is the entry's end.
    call: &'a Call,
    /// Earlier tries merged into it (call indices), oldest first.
    tries: Vec<u64>,
    /// The first try's invocation.
    invoke_us: u64,
    /// `None`: the outcome is unknown, so the call may take effect at any time after its
    /// invocation, or never.
    ret_us: Option<u64>,
    op: MOp,
    given: Option<Reply>,
}

struct KeyHistory<'a> {
    /// In invocation order.
    entries: Vec<Entry<'a>>,
    n_res: usize,
    n_ops: usize,
    stats: KeyStats,
}

/// Drops unanswered reads, merges retries and numbers the ids. `calls` are one key's, in
/// invocation order.
fn prepare<'a>(calls: &[&'a Call], bounds: &[ReadBounds]) -> KeyHistory<'a> {
    let mut stats = KeyStats {
        calls: calls.len(),
        ..KeyStats::default()
    };
    let kept: Vec<&Call> = calls
        .iter()
        .copied()
        .filter(|c| !(c.op.is_read() && c.answer().is_none()))
        .collect();
    stats.unknown_reads_dropped = calls.len() - kept.len();
    let chains = merge_retries(&kept);
    let (mut res_ids, mut op_ids) = (HashMap::new(), HashMap::new());
    let number = |ids: &mut HashMap<&'a str, u32>, id: &'a str| {
        let n = ids.len() as u32;
        *ids.entry(id).or_insert(n)
    };
    let qty = |q: u64| i64::try_from(q).unwrap_or(i64::MAX);
    let mut entries = Vec::with_capacity(chains.len());
    for chain in chains {
        let (first, last) = (chain[0], chain[chain.len() - 1]);
        let op = match &last.op {
            Op::Reserve { id, qty: q } => MOp::Reserve {
                r: number(&mut res_ids, id),
                qty: qty(*q),
            },
            Op::Commit { id } => MOp::Commit {
                r: number(&mut res_ids, id),
            },
            Op::Release { id } => MOp::Release {
                r: number(&mut res_ids, id),
            },
            Op::Receive { id, qty: q } => MOp::Receive {
                o: number(&mut op_ids, id),
                qty: qty(*q),
            },
            Op::Read => MOp::Read,
        };
        stats.retries_merged += chain.len() - 1;
        entries.push(Entry {
            call: last,
            tries: chain[..chain.len() - 1].iter().map(|c| c.index).collect(),
            invoke_us: first.invoke_us,
            ret_us: last.answered_at(),
            op,
            given: last.answer().map(Reply::of),
        });
    }
    narrow_unknowns(&mut entries, bounds, &mut stats);
    stats.searched = entries.len();
    stats.answered = entries.iter().filter(|e| e.ret_us.is_some()).count();
    stats.unknown = stats.searched - stats.answered;
    KeyHistory {
        entries,
        n_res: res_ids.len(),
        n_ops: op_ids.len(),
        stats,
    }
}

/// Moves an unknown reserve or receipt to the earliest time it can have landed, as the reads
/// show: a call that never landed otherwise stays a candidate from its invocation to the end,
/// and the search pays for every place it could go.
///
/// A reserve qualifies when nothing can end its hold or read its record after it lands: the
/// only other calls on its id found no reservation (`unknown_reservation`), so they all came
/// before it. Then, had it landed before some read, as a hold, that read shows at least the
/// read's lower bound (`read_bounds`, which cannot count it: it never answered) plus its qty;
/// and landing as a refusal nothing reads is the same as not landing. So it landed after every
/// read that shows less. A receipt with no other call on its id likewise landed after every
/// read whose on_hand is below the bound plus its qty. Every valid order keeps these calls
/// within the narrowed intervals, so the verdict is the same. The entries stay in invocation
/// order.
fn narrow_unknowns(entries: &mut [Entry], bounds: &[ReadBounds], stats: &mut KeyStats) {
    let mut named: HashMap<IdRef, Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(id) = e.op.ids() {
            named.entry(id).or_default().push(i);
        }
    }
    for i in 0..entries.len() {
        let e = &entries[i];
        let Some(id) = e.op.ids().filter(|_| e.ret_us.is_none()) else {
            continue;
        };
        let mut others = named[&id].iter().filter(|&&j| j != i).map(|&j| &entries[j]);
        let mut earliest = e.invoke_us;
        match e.op {
            MOp::Reserve { qty, .. } => {
                let mut found_nothing = true;
                for o in others {
                    found_nothing &=
                        matches!(o.given, Some(Reply::Refused(Code::UnknownReservation, _)));
                    earliest = earliest.max(o.invoke_us);
                }
                if !found_nothing {
                    continue;
                }
                for b in bounds
                    .iter()
                    .filter(|b| b.reserved < b.reserved_lo.saturating_add(qty))
                {
                    earliest = earliest.max(b.read.invoke_us);
                }
            }
            MOp::Receive { qty, .. } => {
                if others.next().is_some() {
                    continue;
                }
                for b in bounds
                    .iter()
                    .filter(|b| b.on_hand < b.on_hand_lo.saturating_add(qty))
                {
                    earliest = earliest.max(b.read.invoke_us);
                }
            }
            _ => continue,
        }
        if earliest > e.invoke_us {
            entries[i].invoke_us = earliest;
            stats.unknown_deferred += 1;
        }
    }
    entries.sort_by_key(|e| (e.invoke_us, e.call.index));
}

/// Merges each unknown mutating call into the next call on the key with an identical `Op`
/// (chains repeatedly): one entry, the first try's invocation, the last call's end.
///
/// Why this changes no verdict: every mutating op is idempotent by its id. Once an op has taken
/// effect, its id's record makes every later identical op a no-op that answers the first
/// answer (a reserve or receipt is remembered with its answer; a committed hold answers a
/// commit `done`, a released one a release), and nothing in a run undoes a record. So of the
/// tries of one op at most one has an effect, and the answer of every answered try is that
/// effect's answer. Hence for an unknown try `u` followed by an identical answered `c`:
/// - `u` took effect at `p` before `c`: `c` replays, so the pair is one op at `p` in
///   `[invoke(u), end(c)]` answering `c`'s answer;
/// - `u` took no effect, or only after `c` had (then `u` is a no-op): the pair is `c` alone,
///   which the merged interval contains;
/// - conversely the merged op at `p` is `u` at `p` followed by `c` replaying.
///
/// The one exception: a refusal that records nothing (`unknown_reservation` for a commit or
/// release of an id not yet reserved, `stock_limit` for a receipt). After it the same op can
/// still take effect, so a delayed `u` landing after `c` is a real possibility that a merged
/// entry would hide. Such a `c` is not merged into; `u` waits for the next identical call.
/// When the last call of a chain is unknown too, the merged entry is unknown: at most one try
/// took effect, at some time after the first invocation, which is what an unknown entry
/// allows.
fn merge_retries<'a>(calls: &[&'a Call]) -> Vec<Vec<&'a Call>> {
    let mut chains: Vec<Vec<&Call>> = Vec::with_capacity(calls.len());
    // Op -> the chain whose last call is an unknown try of it.
    let mut open: HashMap<&Op, usize> = HashMap::new();
    for &c in calls {
        let records_nothing = matches!(
            c.answer(),
            Some(Answer::Refused { code, .. })
                if code == "unknown_reservation" || code == "stock_limit"
        );
        let at = match open.get(&c.op) {
            Some(&i) if !records_nothing => {
                open.remove(&c.op);
                chains[i].push(c);
                i
            }
            _ => {
                chains.push(vec![c]);
                chains.len() - 1
            }
        };
        if c.answer().is_none() && !c.op.is_read() {
            open.insert(&c.op, at);
        }
    }
    chains
}

// ---------------------------------------------------------------------------------------------
// The search: WGL with memoization
// ---------------------------------------------------------------------------------------------
//
// Calls and returns sit in one doubly linked list in time order (a call before a return at the
// same instant: intervals are closed, so touching intervals may go either way). The calls
// before the first return in the list are exactly those that may take effect next: none of
// them was invoked after some unplaced call answered. Placing a call lifts its two entries out
// of the list (dancing links); backtracking puts them back in reverse order. An unknown call has
// no return entry (it never has to be placed), so the search succeeds once every answered call
// is placed: leaving an unknown call out is the same as placing it after everything.
//
// Memo: the pairs (placed set, model state) already explored, both as 128-bit Zobrist
// fingerprints (XOR of a random word per placed call; the ledger's own hash).
//
// Plain WGL is exponential in the unknown calls that never took effect: they stay candidates
// to the end, and every time the search backed up through a frame it tried every subset of
// them there. The rules below keep it to what can matter. Each only drops orders for which an
// equivalent one (same calls, same answers, same final state) is still tried, so the search
// stays complete: an exhausted search is a proof. (`agrees_with_brute_force_on_small_histories`
// checks this against a search without any of them.)
//
// 1. A free step (`only_free_step`): an answered call that fits now and changes nothing is
//    placed without trying alternatives.
// 2. An unknown call is placed only where it has an effect someone can see: a reserve refused
//    for lack of stock records something only if another unplaced call names its id;
//    otherwise landing now is the same as never landing.
// 3. An unknown call is placed next only if some answered candidate `a` needs it
//    (`worth_unknowns`). Why that is enough: in any valid order, if `a` comes right after a
//    run `W` of unknown calls, already fits before `W`, and placing it before `W` gives the
//    same final state, move it there; this keeps the order valid (an unknown call never has to
//    precede anything in real time) and ends. In the orders this leaves, a run of unknown
//    calls placed now and followed by `a` means either `a` does not fit now and the pending
//    unknown calls can make it fit, or `a` fits now and some of them decide differently when
//    `a` goes first: only a reserve's held-or-refused decision depends on other ids (through
//    `available`), and a receipt's at the stock limit, so that needs such a call whose
//    quantity lies where `a` moves the decision. `worth_unknowns` over-approximates both.
// 4. Within a run of unknown calls, two adjacent ones that commute (the same state either way)
//    are only tried in index order (`commutes`).
// 5. Of pending unknown reserves (or receipts) of the same quantity on ids nothing else names
//    any more, only the first is tried: they are interchangeable (`twin_class`).
//
// Before the search, `narrow_unknowns` moves unknown calls past the reads that show they had
// not landed yet, which keeps most of the ones that never landed out of the way.

/// Identity hasher: the memo's keys are fingerprints already.
#[derive(Default)]
struct Fingerprinted(u64);

impl Hasher for Fingerprinted {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 ^= n as u64;
    }
}

type Memo = HashSet<(u128, u128), BuildHasherDefault<Fingerprinted>>;

enum SearchResult {
    Linearizable,
    Violation(Best),
    /// Out of budget, with the deepest point reached so far.
    Undecided(String, Best),
}

struct SearchOutcome {
    result: SearchResult,
    states: u64,
}

/// The deepest point reached: how many calls were placed, the state, and the answered calls
/// that could have been next with what the model expected of each.
struct Best {
    depth: usize,
    figures: Figures,
    stuck: Vec<(u32, Reply)>,
}

/// One level of the depth-first search.
struct Frame {
    /// Answered candidates first, then unknown ones from `first_unknown` on.
    candidates: Vec<u32>,
    first_unknown: usize,
    /// Whether the unknown candidates were narrowed down yet (`Search::unknown_moves`).
    unknowns_ready: bool,
    next: usize,
    /// The call placed to reach this level, and the change that undoes it.
    via: Option<(u32, Option<Change>)>,
}

/// The time-ordered list of calls and returns.
struct Events {
    next: Vec<u32>,
    prev: Vec<u32>,
    /// Node -> (entry, is a return). Node 0 is the list's head and end.
    what: Vec<(u32, bool)>,
    call_node: Vec<u32>,
    /// 0 for an unknown call.
    ret_node: Vec<u32>,
}

impl Events {
    fn new(entries: &[Entry]) -> Events {
        let mut ev: Vec<(u64, bool, u32)> = Vec::with_capacity(entries.len() * 2);
        for (i, e) in entries.iter().enumerate() {
            ev.push((e.invoke_us, false, i as u32));
            if let Some(ret) = e.ret_us {
                ev.push((ret, true, i as u32));
            }
        }
        ev.sort_unstable();
        let n = ev.len() + 1;
        let mut list = Events {
            next: (1..=n as u32).map(|i| i % n as u32).collect(),
            prev: (0..n as u32)
                .map(|i| (i + n as u32 - 1) % n as u32)
                .collect(),
            what: vec![(0, false); n],
            call_node: vec![0; entries.len()],
            ret_node: vec![0; entries.len()],
        };
        for (k, &(_, is_ret, e)) in ev.iter().enumerate() {
            let node = k as u32 + 1;
            list.what[node as usize] = (e, is_ret);
            if is_ret {
                list.ret_node[e as usize] = node;
            } else {
                list.call_node[e as usize] = node;
            }
        }
        list
    }

    fn unlink(&mut self, n: u32) {
        let (p, x) = (self.prev[n as usize], self.next[n as usize]);
        self.next[p as usize] = x;
        self.prev[x as usize] = p;
    }

    fn relink(&mut self, n: u32) {
        let (p, x) = (self.prev[n as usize], self.next[n as usize]);
        self.next[p as usize] = n;
        self.prev[x as usize] = n;
    }

    fn lift(&mut self, e: u32) {
        self.unlink(self.call_node[e as usize]);
        if self.ret_node[e as usize] != 0 {
            self.unlink(self.ret_node[e as usize]);
        }
    }

    fn unlift(&mut self, e: u32) {
        if self.ret_node[e as usize] != 0 {
            self.relink(self.ret_node[e as usize]);
        }
        self.relink(self.call_node[e as usize]);
    }

    /// The calls that may be placed next: answered ones (they must be placed) in invocation
    /// order, then unknown ones. Returns how many are answered.
    fn candidates(&self, entries: &[Entry], out: &mut Vec<u32>, unknown: &mut Vec<u32>) -> usize {
        out.clear();
        unknown.clear();
        let mut n = self.next[0];
        while n != 0 {
            let (e, is_ret) = self.what[n as usize];
            if is_ret {
                break;
            }
            if entries[e as usize].ret_us.is_some() {
                out.push(e);
            } else {
                unknown.push(e);
            }
            n = self.next[n as usize];
        }
        let answered = out.len();
        out.append(unknown);
        answered
    }
}

/// The search's state besides the stack: the model, the event list, and per reservation id
/// how many of its calls are not placed yet (rule 2).
struct Search<'h> {
    entries: &'h [Entry<'h>],
    ledger: Ledger,
    events: Events,
    /// Per reservation id and per op id: its calls not placed yet.
    unplaced_res: Vec<u32>,
    unplaced_ops: Vec<u32>,
}

fn search(history: &KeyHistory, budget: Duration) -> SearchOutcome {
    let started = Instant::now();
    let entries = &history.entries[..];
    let mut left = history.stats.answered;
    if left == 0 {
        return SearchOutcome {
            result: SearchResult::Linearizable,
            states: 0,
        };
    }
    let mut s = Search {
        entries,
        ledger: Ledger::new(history),
        events: Events::new(entries),
        unplaced_res: vec![0; history.n_res],
        unplaced_ops: vec![0; history.n_ops],
    };
    for e in entries {
        s.count_unplaced(e.op, 1);
    }
    let call_bits: Vec<u128> = (0..entries.len() as u64)
        .map(|i| fingerprint(&[3, i]))
        .collect();
    let mut memo = Memo::default();
    let mut placed: u128 = 0;
    let mut scratch = Vec::new();
    let mut spare: Vec<Vec<u32>> = Vec::new();
    let mut best = Best {
        depth: 0,
        figures: s.ledger.figures(),
        stuck: Vec::new(),
    };
    let mut frames = vec![s.frame(Vec::new(), &mut scratch, None, &mut best, 0)];
    let mut states: u64 = 0;
    let mut steps: u64 = 0;
    loop {
        // The clock is read every 256 steps, and on the first: a zero budget decides nothing.
        if steps.is_multiple_of(256) && started.elapsed() > budget {
            let reason = format!(
                "search budget {budget:?} spent after {states} states; deepest prefix {} of {} answered calls",
                best.depth, history.stats.answered
            );
            return SearchOutcome {
                result: SearchResult::Undecided(reason, best),
                states,
            };
        }
        steps += 1;
        let top = frames
            .last_mut()
            .expect("the root frame is never popped here");
        if top.next == top.first_unknown && !top.unknowns_ready {
            top.unknowns_ready = true;
            let (answered, pending) = top.candidates.split_at(top.first_unknown);
            let moves = s.unknown_moves(answered, pending, top.via);
            top.candidates.truncate(top.first_unknown);
            top.candidates.extend(moves);
        }
        if top.next < top.candidates.len() {
            let e = top.candidates[top.next];
            top.next += 1;
            let Some(change) = s.try_place(e) else {
                continue;
            };
            let undo = change.map(|c| s.ledger.apply(c));
            placed ^= call_bits[e as usize];
            if !memo.insert((placed, s.ledger.hash)) {
                placed ^= call_bits[e as usize];
                if let Some(u) = undo {
                    s.ledger.apply(u);
                }
                continue;
            }
            states += 1;
            s.lift(e);
            if entries[e as usize].ret_us.is_some() {
                left -= 1;
                if left == 0 {
                    return SearchOutcome {
                        result: SearchResult::Linearizable,
                        states,
                    };
                }
            }
            let depth = frames.len();
            let buf = spare.pop().unwrap_or_default();
            let frame = s.frame(buf, &mut scratch, Some((e, undo)), &mut best, depth);
            frames.push(frame);
        } else {
            let frame = frames.pop().expect("a frame is on the stack");
            spare.push(frame.candidates);
            let Some((e, undo)) = frame.via else {
                // Every order from the start was tried.
                return SearchOutcome {
                    result: SearchResult::Violation(best),
                    states,
                };
            };
            s.unlift(e);
            if let Some(u) = undo {
                s.ledger.apply(u);
            }
            placed ^= call_bits[e as usize];
            if entries[e as usize].ret_us.is_some() {
                left += 1;
            }
        }
    }
}

impl Search<'_> {
    /// The frame for the current state, at `depth` calls placed; records it as the deepest
    /// point when it is one.
    fn frame(
        &self,
        mut candidates: Vec<u32>,
        scratch: &mut Vec<u32>,
        via: Option<(u32, Option<Change>)>,
        best: &mut Best,
        depth: usize,
    ) -> Frame {
        let answered = self
            .events
            .candidates(self.entries, &mut candidates, scratch);
        if depth > best.depth || (depth == 0 && best.stuck.is_empty()) {
            *best = Best {
                depth,
                figures: self.ledger.figures(),
                stuck: stuck_at(self.entries, &self.ledger, &candidates[..answered]),
            };
        }
        let first_unknown = if only_free_step(self.entries, &self.ledger, &mut candidates) {
            1
        } else {
            answered
        };
        Frame {
            candidates,
            first_unknown,
            unknowns_ready: false,
            next: 0,
            via,
        }
    }

    fn lift(&mut self, e: u32) {
        self.events.lift(e);
        self.count_unplaced(self.entries[e as usize].op, -1);
    }

    fn unlift(&mut self, e: u32) {
        self.events.unlift(e);
        self.count_unplaced(self.entries[e as usize].op, 1);
    }

    fn count_unplaced(&mut self, op: MOp, by: i32) {
        let n = match op.ids() {
            Some(IdRef::Res(r)) => &mut self.unplaced_res[r as usize],
            Some(IdRef::Op(o)) => &mut self.unplaced_ops[o as usize],
            None => return,
        };
        *n = n.wrapping_add_signed(by);
    }

    /// The unknown calls worth placing next, from the `pending` ones (rule 3, plus two that
    /// only drop orders equivalent to ones kept):
    /// - within a run of unknown calls, in index order: two adjacent ones that commute (the
    ///   same state either way) can be swapped, so a lower index after a higher one is tried
    ///   only when the two do not commute here;
    /// - of two pending reserves (or receipts) with the same quantity on ids no other unplaced
    ///   call names, only the first: the two are interchangeable.
    fn unknown_moves(
        &mut self,
        answered: &[u32],
        pending: &[u32],
        via: Option<(u32, Option<Change>)>,
    ) -> Vec<u32> {
        let last = via.filter(|&(u, _)| self.entries[u as usize].ret_us.is_none());
        let mut moves: Vec<u32> = Vec::with_capacity(pending.len());
        let mut twins: Vec<(bool, i64)> = Vec::new();
        for &v in pending {
            if let Some((u, Some(undo_u))) = last {
                if v < u && self.commutes(u, undo_u, v) {
                    continue;
                }
            }
            if let Some(class) = self.twin_class(v) {
                if twins.contains(&class) {
                    continue;
                }
                twins.push(class);
            }
            moves.push(v);
        }
        if !moves.is_empty() && !self.worth_unknowns(answered, &moves) {
            moves.clear();
        }
        moves
    }

    /// Do the unknown calls `u` (just placed; `undo_u` undoes it) and `v` give the same state
    /// in either order?
    fn commutes(&mut self, u: u32, undo_u: Change, v: u32) -> bool {
        let (op_u, op_v) = (self.entries[u as usize].op, self.entries[v as usize].op);
        let Some(change_v) = self.ledger.decide(op_v).1 else {
            return true; // `v` does nothing after `u`: it is not placed here anyway
        };
        let back = self.ledger.apply(change_v);
        let u_then_v = self.ledger.hash;
        self.ledger.apply(back);
        let redo_u = self.ledger.apply(undo_u);
        let v_then_u = match self.ledger.decide(op_v).1 {
            None => None,
            Some(c) => {
                let back_v = self.ledger.apply(c);
                let h = match self.ledger.decide(op_u).1 {
                    None => self.ledger.hash,
                    Some(c) => {
                        let back_u = self.ledger.apply(c);
                        let h = self.ledger.hash;
                        self.ledger.apply(back_u);
                        h
                    }
                };
                self.ledger.apply(back_v);
                Some(h)
            }
        };
        self.ledger.apply(redo_u);
        v_then_u == Some(u_then_v)
    }

    /// For an unknown reserve or receipt on an id nothing else still names and that has no
    /// record yet: its kind and quantity, which are all that can matter about it.
    fn twin_class(&self, v: u32) -> Option<(bool, i64)> {
        match self.entries[v as usize].op {
            MOp::Reserve { r, qty } => (self.unplaced_res[r as usize] == 1
                && self.ledger.res[r as usize].hold == Hold::Unseen)
                .then_some((true, qty)),
            MOp::Receive { o, qty } => (self.unplaced_ops[o as usize] == 1
                && !self.ledger.ops[o as usize].applied)
                .then_some((false, qty)),
            _ => None,
        }
    }

    /// The change placing `e` now makes (`Some(None)`: none), or `None` when it cannot or need
    /// not be placed now: an answer that does not fit, or an unknown call without a visible
    /// effect (rule 2).
    fn try_place(&self, e: u32) -> Option<Option<Change>> {
        let entry = &self.entries[e as usize];
        let (reply, change) = self.ledger.decide(entry.op);
        match entry.given {
            Some(given) => reply.fits(given).then_some(change),
            None => self.visible(change).then_some(change),
        }
    }

    /// Whether an unknown call's change is visible to a call still to be placed.
    fn visible(&self, change: Option<Change>) -> bool {
        match change {
            None => false,
            Some(Change {
                slot: Slot::Res(r, s),
                ..
            }) if s.hold == Hold::Refused => self.unplaced_res[r as usize] > 1,
            Some(_) => true,
        }
    }

    /// Rule 3: may an unknown call be placed next? Yes if some answered candidate does not fit
    /// and the pending unknown calls could make it fit, or fits and one of them could decide
    /// differently after it. Over-approximates both (never says no when the answer is yes).
    fn worth_unknowns(&self, answered: &[u32], pending: &[u32]) -> bool {
        let pool = Pool::new(self, pending);
        answered.iter().any(|&a| {
            let entry = &self.entries[a as usize];
            let (reply, change) = self.ledger.decide(entry.op);
            let given = entry.given.expect("answered");
            if reply.fits(given) {
                self.may_flip(entry.op, change, &pool)
            } else {
                self.may_fix(entry.op, given, &pool)
            }
        })
    }

    /// `a` fits now with `change`: could a pending unknown call decide differently if `a` went
    /// first?
    fn may_flip(&self, op: MOp, change: Option<Change>, pool: &Pool) -> bool {
        if op.ids().is_some_and(|id| pool.touches(id)) {
            return true;
        }
        // A pending receipt refused at the stock limit before `a` may fit after it, or back.
        if change.is_some_and(|c| c.d_on_hand != 0) && pool.may_reach_stock_limit(&self.ledger) {
            return true;
        }
        let moved = change.map_or(0, |c| c.d_on_hand - c.d_reserved);
        if moved == 0 {
            return false;
        }
        // The `available` a pending reserve can meet, with or without `a`'s change first.
        let Some((lo, hi)) = pool.available_range(&self.ledger) else {
            return true;
        };
        let (lo, hi) = (lo + moved.min(0), hi + moved.max(0));
        pool.reserves.iter().any(|&(r, qty)| {
            // A refusal must be visible to count (rule 2); `a` raising `available` can only
            // turn a refusal into a hold. Lowering it turns a hold into a refusal, and `a`
            // (a hold, which shows `available`) then only fits if other pending calls give the
            // same amount back.
            let decided_differently = qty > lo && qty <= hi;
            let visible = if moved > 0 {
                self.unplaced_res[r as usize] > 1
            } else {
                pool.gives_back()
            };
            decided_differently && visible
        })
    }

    /// `a` does not fit now: could pending unknown calls make it fit?
    fn may_fix(&self, op: MOp, given: Reply, pool: &Pool) -> bool {
        if op.ids().is_some_and(|id| pool.touches(id)) {
            return true;
        }
        let l = &self.ledger;
        let available = l.on_hand - l.reserved;
        match (op, given) {
            (MOp::Read, Reply::Stock(on_hand, reserved)) => {
                pool.reaches(on_hand - l.on_hand, reserved - l.reserved)
            }
            (MOp::Receive { o, qty }, Reply::Stock(on_hand, reserved)) => {
                !l.ops[o as usize].applied
                    && pool.reaches(on_hand - qty - l.on_hand, reserved - l.reserved)
            }
            (MOp::Receive { o, .. }, Reply::Refused(Code::StockLimit, _)) => {
                !l.ops[o as usize].applied && pool.may_reach_stock_limit(l)
            }
            (MOp::Reserve { r, qty }, _) if l.res[r as usize].hold == Hold::Unseen => match given {
                Reply::Reserved(av) => pool.reaches_available(av + qty - available),
                Reply::Refused(Code::InsufficientStock, Some(av)) => {
                    av < qty && pool.reaches_available(av - available)
                }
                Reply::Refused(Code::InsufficientStock, None) => {
                    pool.available_range(l).is_none_or(|(lo, _)| lo < qty)
                }
                _ => false,
            },
            // Every other mismatch is about a record: a pending call on the same id could
            // change it (handled above); nothing else can.
            _ => false,
        }
    }
}

impl MOp {
    /// The id it names, in its name space.
    fn ids(self) -> Option<IdRef> {
        match self {
            MOp::Reserve { r, .. } | MOp::Commit { r } | MOp::Release { r } => Some(IdRef::Res(r)),
            MOp::Receive { o, .. } => Some(IdRef::Op(o)),
            MOp::Read => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum IdRef {
    Res(u32),
    Op(u32),
}

/// What the pending unknown calls could change together: for `on_hand`, `reserved` and
/// `available`, every sum of at most one possible change per call (subset sums, as bitsets,
/// built on first use: most frames never need them).
struct Pool {
    ids: Vec<IdRef>,
    /// Pending reserves: (id, qty).
    reserves: Vec<(u32, i64)>,
    /// Each call's possible changes, as (call, d_on_hand, d_reserved): a reserve's hold, a
    /// receipt, a commit or release of a hold held now or one a pending reserve could make.
    changes: Vec<(u32, i64, i64)>,
    /// Largest receipt pending (for `stock_limit`).
    receipts: i64,
    on_hand: OnceCell<Option<Sums>>,
    reserved: OnceCell<Option<Sums>>,
    available: OnceCell<Option<Sums>>,
}

impl Pool {
    fn new(s: &Search, pending: &[u32]) -> Pool {
        let ops = || pending.iter().map(|&e| s.entries[e as usize].op);
        let reserves: Vec<(u32, i64)> = ops()
            .filter_map(|op| match op {
                MOp::Reserve { r, qty } => Some((r, qty)),
                _ => None,
            })
            .collect();
        let mut changes = Vec::with_capacity(pending.len());
        for (i, op) in ops().enumerate() {
            let i = i as u32;
            let (r, commit) = match op {
                MOp::Reserve { qty, .. } => {
                    changes.push((i, 0, qty));
                    continue;
                }
                MOp::Receive { qty, .. } => {
                    changes.push((i, qty, 0));
                    continue;
                }
                MOp::Read => continue,
                MOp::Commit { r } => (r, true),
                MOp::Release { r } => (r, false),
            };
            let slot = s.ledger.res[r as usize];
            let mut push = |q: i64| changes.push((i, if commit { -q } else { 0 }, -q));
            match slot.hold {
                Hold::Held => push(slot.qty),
                Hold::Unseen => reserves.iter().filter(|x| x.0 == r).for_each(|x| push(x.1)),
                _ => {}
            }
        }
        Pool {
            ids: ops().filter_map(MOp::ids).collect(),
            receipts: ops()
                .map(|op| match op {
                    MOp::Receive { qty, .. } => qty,
                    _ => 0,
                })
                .max()
                .unwrap_or(0),
            reserves,
            changes,
            on_hand: OnceCell::new(),
            reserved: OnceCell::new(),
            available: OnceCell::new(),
        }
    }

    fn on_hand(&self) -> &Option<Sums> {
        self.on_hand
            .get_or_init(|| Sums::new(&self.changes, |o, _| o))
    }

    fn reserved(&self) -> &Option<Sums> {
        self.reserved
            .get_or_init(|| Sums::new(&self.changes, |_, r| r))
    }

    fn available(&self) -> &Option<Sums> {
        self.available
            .get_or_init(|| Sums::new(&self.changes, |o, r| o - r))
    }

    /// Some pending call could raise `available` (a receipt, a release).
    fn gives_back(&self) -> bool {
        self.changes.iter().any(|&(_, o, r)| o - r > 0)
    }

    fn touches(&self, id: IdRef) -> bool {
        self.ids.contains(&id)
    }

    fn reaches(&self, d_on_hand: i64, d_reserved: i64) -> bool {
        Sums::has(self.available(), d_on_hand - d_reserved)
            && Sums::has(self.reserved(), d_reserved)
            && Sums::has(self.on_hand(), d_on_hand)
    }

    fn reaches_available(&self, d: i64) -> bool {
        Sums::has(self.available(), d)
    }

    /// The `available` the pending calls can lead to, `None` when too wide to track.
    fn available_range(&self, l: &Ledger) -> Option<(i64, i64)> {
        let a = self.available().as_ref()?;
        let now = l.on_hand - l.reserved;
        Some((now + a.min(), now + a.max()))
    }

    fn may_reach_stock_limit(&self, l: &Ledger) -> bool {
        let most = self.on_hand().as_ref().map_or(i64::MAX, Sums::max);
        l.on_hand.saturating_add(most).saturating_add(self.receipts) > MAX_STOCK as i64
    }
}

/// The sums reachable by adding at most one option of each item, as a bitset over
/// `[lo, lo + 64 * bits.len())`. `None` (in `Pool`) when the range is too wide to track, which
/// then counts as "anything is reachable".
struct Sums {
    lo: i64,
    bits: Vec<u64>,
}

impl Sums {
    const MAX_WIDTH: i64 = 1 << 16;

    /// From options `(item, d_on_hand, d_reserved)`, grouped by item, projected by `f`.
    fn new(options: &[(u32, i64, i64)], f: fn(i64, i64) -> i64) -> Option<Sums> {
        let (mut down, mut up) = (0i64, 0i64);
        for item in options.chunk_by(|a, b| a.0 == b.0) {
            let ds = item.iter().map(|&(_, o, r)| f(o, r));
            down = down.checked_add(ds.clone().map(|d| (-d).max(0)).max().unwrap_or(0))?;
            up = up.checked_add(ds.map(|d| d.max(0)).max().unwrap_or(0))?;
        }
        let width = down.checked_add(up)?.checked_add(1)?;
        if width > Self::MAX_WIDTH {
            return None;
        }
        let mut bits = vec![0u64; (width as usize).div_ceil(64)];
        bits[(down / 64) as usize] |= 1 << (down % 64);
        let mut next = bits.clone();
        for item in options.chunk_by(|a, b| a.0 == b.0) {
            next.copy_from_slice(&bits);
            for &(_, o, r) in item {
                let d = f(o, r);
                if d != 0 {
                    shift_or(&mut next, &bits, d);
                }
            }
            std::mem::swap(&mut bits, &mut next);
        }
        Some(Sums { lo: -down, bits })
    }

    /// Is `v` reachable? (`None`: assumed so.)
    fn has(sums: &Option<Sums>, v: i64) -> bool {
        let Some(s) = sums else { return true };
        let i = v - s.lo;
        i >= 0 && i < 64 * s.bits.len() as i64 && s.bits[(i / 64) as usize] >> (i % 64) & 1 == 1
    }

    fn min(&self) -> i64 {
        let i = self.bits.iter().position(|&w| w != 0).unwrap_or(0);
        self.lo + 64 * i as i64 + self.bits[i].trailing_zeros() as i64
    }

    fn max(&self) -> i64 {
        let i = self.bits.iter().rposition(|&w| w != 0).unwrap_or(0);
        self.lo + 64 * i as i64 + 63 - self.bits[i].leading_zeros() as i64
    }
}

/// `dst |= src` shifted by `d` bits (towards higher sums when `d > 0`).
fn shift_or(dst: &mut [u64], src: &[u64], d: i64) {
    let n = src.len() as i64;
    let (words, bits) = (d.div_euclid(64), d.rem_euclid(64) as u32);
    for (i, w) in dst.iter_mut().enumerate() {
        // Bit j of the result comes from bit j - d of the source.
        let from = i as i64 - words;
        let get = |k: i64| {
            if (0..n).contains(&k) {
                src[k as usize]
            } else {
                0
            }
        };
        let mut v = get(from) << bits;
        if bits > 0 {
            v |= get(from - 1) >> (64 - bits);
        }
        *w |= v;
    }
}

/// If an answered candidate fits now and changes nothing (a read, a replay, a refusal that
/// records nothing), it is the only candidate worth trying: when any order of the remaining
/// calls works, one that starts with it does too. It is a candidate, so no unplaced call had
/// to precede it; and placing it changes no state, so every later call sees what it saw before.
/// Reads are a third of a workload, and without this each wrong guess before a read was paid
/// for again with every order of the calls placed in between. Returns whether it found one.
fn only_free_step(entries: &[Entry], ledger: &Ledger, candidates: &mut Vec<u32>) -> bool {
    let free = candidates.iter().position(|&e| {
        let entry = &entries[e as usize];
        entry.given.is_some_and(|given| {
            let (reply, change) = ledger.decide(entry.op);
            change.is_none() && reply.fits(given)
        })
    });
    if let Some(i) = free {
        let e = candidates[i];
        candidates.clear();
        candidates.push(e);
    }
    free.is_some()
}

/// The answered candidates whose answers do not fit the model now, with the model's answer.
fn stuck_at(entries: &[Entry], ledger: &Ledger, candidates: &[u32]) -> Vec<(u32, Reply)> {
    candidates
        .iter()
        .filter_map(|&e| {
            let given = entries[e as usize].given?;
            let (reply, _) = ledger.decide(entries[e as usize].op);
            (!reply.fits(given)).then_some((e, reply))
        })
        .collect()
}

fn violation(key: &str, history: &KeyHistory, best: Best, findings: &[Finding]) -> Violation {
    let mut stuck: Vec<StuckCall> = best
        .stuck
        .iter()
        .map(|&(e, expected)| {
            let entry = &history.entries[e as usize];
            StuckCall {
                index: entry.call.index,
                tries: entry.tries.clone(),
                client: entry.call.client,
                node: entry.call.node.clone(),
                op: entry.call.op.clone(),
                invoke_us: entry.invoke_us,
                answered_at_us: entry.ret_us,
                answer: entry.call.answer().cloned(),
                expected: expected.to_answer(),
            }
        })
        .collect();
    stuck.sort_by_key(|s| (s.answered_at_us, s.index));
    stuck.truncate(MAX_LISTED);
    let suspect = suspect(findings, &stuck);
    Violation {
        key: key.to_owned(),
        prefix_len: best.depth,
        answered: history.stats.answered,
        state_at_prefix: best.figures,
        stuck,
        suspect,
    }
}

/// Which guarantee most likely failed: the key's findings first (they name one), else what the
/// stuck calls look like. Best effort: a search cannot tell every failure apart.
fn suspect(findings: &[Finding], stuck: &[StuckCall]) -> String {
    if let Some(f) = findings.iter().min_by_key(|f| f.guarantee) {
        return format!("{:?} {}: {}", f.guarantee, f.kind, f.detail);
    }
    for s in stuck {
        let guess = match (&s.op, &s.answer, &s.expected) {
            (Op::Reserve { .. }, Some(Answer::Reserved { .. }), Answer::Refused { code, .. })
                if code == "insufficient_stock" =>
            {
                "C1 oversell: a reserve was granted where every order leaves too little stock"
            }
            (_, Some(Answer::Refused { code, .. }), _) if Code::parse(code) == Code::Other => {
                "an answer with a code the model never gives in a chaos run"
            }
            (_, Some(Answer::Stock { reserved: r, .. }), Answer::Stock { reserved: e, .. })
                if r < e =>
            {
                "C4 or C2: a read shows fewer holds than any order gives (stale read, or a lost reservation)"
            }
            (_, Some(Answer::Stock { reserved: r, .. }), Answer::Stock { reserved: e, .. })
                if r > e =>
            {
                "C4 or C3: a read shows holds no order explains (stale read, or a hold counted twice)"
            }
            (_, Some(Answer::Stock { .. }), Answer::Stock { .. }) => {
                "C4, C2 or C3: a read's on_hand fits no order (stale read, lost or repeated receipt or commit)"
            }
            _ => continue,
        };
        return guess.to_owned();
    }
    "C4: the answers fit no single order of the calls".to_owned()
}

// ---------------------------------------------------------------------------------------------
// Direct checks
// ---------------------------------------------------------------------------------------------

/// The checks that name a guarantee. `calls` are one key's, in invocation order.
fn direct_checks(key: &str, calls: &[&Call], bounds: &[ReadBounds]) -> Vec<Finding> {
    let mut out = Vec::new();
    no_oversell(key, calls, &mut out);
    replays(key, calls, &mut out);
    conservation(key, bounds, &mut out);
    out
}

fn finding(
    g: Guarantee,
    kind: &'static str,
    key: &str,
    detail: String,
    calls: Vec<u64>,
) -> Finding {
    Finding {
        guarantee: g,
        kind,
        key: key.to_owned(),
        detail,
        calls,
    }
}

/// C1 on every answer: figures never negative, never more reserved than on hand.
fn no_oversell(key: &str, calls: &[&Call], out: &mut Vec<Finding>) {
    let mut bad: BTreeMap<&'static str, Vec<&Call>> = BTreeMap::new();
    for &c in calls {
        let kind = match c.answer() {
            Some(Answer::Stock { on_hand, reserved }) if *on_hand < 0 || *reserved < 0 => {
                "negative_stock"
            }
            Some(Answer::Stock { on_hand, reserved }) if reserved > on_hand => {
                "reserved_above_on_hand"
            }
            Some(Answer::Reserved { available })
            | Some(Answer::Refused {
                available: Some(available),
                ..
            }) if *available < 0 => "negative_available",
            _ => continue,
        };
        bad.entry(kind).or_default().push(c);
    }
    for (kind, cs) in bad {
        let first = cs[0];
        let detail = format!(
            "{} answer(s), the first #{} {} answered {}",
            cs.len(),
            first.index,
            show_op(&first.op),
            first.answer().map(show_answer).unwrap_or_default()
        );
        let ids = cs.iter().take(MAX_LISTED).map(|c| c.index).collect();
        out.push(finding(Guarantee::C1, kind, key, detail, ids));
    }
}

/// C3: every answer to a reserve or receipt is its id's first answer, so all answered calls of
/// one such `Op` answer alike (`stock_limit` excepted: it records nothing).
fn replays(key: &str, calls: &[&Call], out: &mut Vec<Finding>) {
    let mut by_op: HashMap<&Op, Vec<&Call>> = HashMap::new();
    for &c in calls {
        let Some(answer) = c.answer() else { continue };
        let stock_limit = matches!(answer, Answer::Refused { code, .. } if code == "stock_limit");
        if matches!(c.op, Op::Reserve { .. } | Op::Receive { .. }) && !stock_limit {
            by_op.entry(&c.op).or_default().push(c);
        }
    }
    let mut differing: Vec<(&Call, Vec<&Call>)> = by_op
        .into_values()
        .filter_map(|mut cs| {
            cs.sort_by_key(|c| (c.answered_at(), c.index));
            let first = Reply::of(cs[0].answer()?);
            let other: Vec<&Call> = cs[1..]
                .iter()
                .copied()
                .filter(|c| c.answer().is_some_and(|a| !first.fits(Reply::of(a))))
                .collect();
            (!other.is_empty()).then(|| (cs[0], other))
        })
        .collect();
    differing.sort_by_key(|(first, _)| first.index);
    for (first, other) in differing.into_iter().take(MAX_LISTED) {
        let detail = format!(
            "{} answered {} (#{}), then {} (#{}){}",
            show_op(&first.op),
            first.answer().map(show_answer).unwrap_or_default(),
            first.index,
            other[0].answer().map(show_answer).unwrap_or_default(),
            other[0].index,
            if other.len() > 1 {
                format!(" and {} more differing answers", other.len() - 1)
            } else {
                String::new()
            }
        );
        let ids = std::iter::once(first.index)
            .chain(other.iter().map(|c| c.index))
            .take(MAX_LISTED)
            .collect();
        out.push(finding(Guarantee::C3, "replay_differs", key, detail, ids));
    }
}

/// When the effects of one id can have happened, from its calls: `surely_by` is the earliest
/// answer of a call that shows the effect happened, `maybe_from` the earliest invocation of a
/// call that may have made it (answered with the effect, or unknown).
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    surely_by: Option<u64>,
    maybe_from: Option<u64>,
}

impl Window {
    fn sure(&mut self, c: &Call) {
        self.maybe(c);
        let end = c.answered_at().unwrap_or(u64::MAX);
        self.surely_by = Some(self.surely_by.map_or(end, |t| t.min(end)));
    }

    fn maybe(&mut self, c: &Call) {
        self.maybe_from = Some(self.maybe_from.map_or(c.invoke_us, |t| t.min(c.invoke_us)));
    }

    /// Surely in effect at any point of a call invoked at `invoke`.
    fn surely_before(&self, invoke: u64) -> bool {
        self.surely_by.is_some_and(|t| t < invoke)
    }

    /// Possibly in effect at some point of a call that answered at `end`.
    fn maybe_before(&self, end: u64) -> bool {
        self.maybe_from.is_some_and(|t| t <= end)
    }
}

/// The quantity an id's effect moves: `lo` and `hi` over what its calls allow. An answered
/// success fixes it (a replay needs the same qty); otherwise it is one of the unknown calls'.
#[derive(Clone, Copy, Debug, Default)]
struct Qty {
    ok: Option<(i64, i64)>,
    unknown: Option<(i64, i64)>,
}

impl Qty {
    fn add(range: &mut Option<(i64, i64)>, q: u64) {
        let q = i64::try_from(q).unwrap_or(i64::MAX);
        *range = Some(range.map_or((q, q), |(lo, hi)| (lo.min(q), hi.max(q))));
    }

    fn range(&self) -> (i64, i64) {
        self.ok.or(self.unknown).unwrap_or((0, 0))
    }
}

#[derive(Default)]
struct Receipt {
    applied: Window,
    qty: Qty,
}

#[derive(Default)]
struct Reservation {
    held: Window,
    qty: Qty,
    /// A commit or a release.
    ended: Window,
    committed: Window,
}

/// What a read showed, and the bounds every correct history keeps it in (see `read_bounds`).
struct ReadBounds<'a> {
    read: &'a Call,
    on_hand: i64,
    reserved: i64,
    reserved_lo: i64,
    reserved_hi: i64,
    on_hand_lo: i64,
    on_hand_hi: i64,
}

/// Bounds on every answered read of one key, counting each id's effect once. A read's figures
/// must lie within what the calls allow at some point of its interval:
/// - reserved >= Σ qty of holds acknowledged before the read began that no commit or release
///   (answered done, or unknown) invoked before the read answered could have ended;
/// - reserved <= Σ qty of holds that may have been made before the read answered (acknowledged
///   or unknown reserves) and that no commit/release acknowledged before the read began ended;
/// - on_hand >= Σ receipts acknowledged before the read began − Σ commits that may have
///   happened before it answered;
/// - on_hand <= Σ receipts that may have happened before the read answered − Σ commits
///   acknowledged before it began.
///
/// Sound for any correct history: a receipt or commit acknowledged before the read began took
/// effect before every point of it; one invoked after the read answered took effect after.
fn read_bounds<'a>(calls: &[&'a Call]) -> Vec<ReadBounds<'a>> {
    let mut receipts: HashMap<&str, Receipt> = HashMap::new();
    let mut holds: HashMap<&str, Reservation> = HashMap::new();
    let mut reads = Vec::new();
    for &c in calls {
        let answer = c.answer();
        match (&c.op, answer) {
            (Op::Read, Some(Answer::Stock { on_hand, reserved })) => {
                reads.push((c, *on_hand, *reserved));
            }
            (Op::Receive { id, qty }, Some(Answer::Stock { .. })) => {
                let r = receipts.entry(id).or_default();
                r.applied.sure(c);
                Qty::add(&mut r.qty.ok, *qty);
            }
            (Op::Receive { id, qty }, None) => {
                let r = receipts.entry(id).or_default();
                r.applied.maybe(c);
                Qty::add(&mut r.qty.unknown, *qty);
            }
            (Op::Reserve { id, qty }, Some(Answer::Reserved { .. })) => {
                let h = holds.entry(id).or_default();
                h.held.sure(c);
                Qty::add(&mut h.qty.ok, *qty);
            }
            (Op::Reserve { id, qty }, None) => {
                let h = holds.entry(id).or_default();
                h.held.maybe(c);
                Qty::add(&mut h.qty.unknown, *qty);
            }
            (Op::Commit { id } | Op::Release { id }, Some(Answer::Done) | None) => {
                let h = holds.entry(id).or_default();
                let commit = matches!(c.op, Op::Commit { .. });
                if answer.is_some() {
                    h.ended.sure(c);
                    if commit {
                        h.committed.sure(c);
                    }
                } else {
                    h.ended.maybe(c);
                    if commit {
                        h.committed.maybe(c);
                    }
                }
            }
            _ => {}
        }
    }
    let receipts: Vec<Receipt> = receipts.into_values().collect();
    let holds: Vec<Reservation> = holds.into_values().collect();
    reads
        .into_iter()
        .map(|(read, on_hand, reserved)| {
            let (inv, end) = (read.invoke_us, read.answered_at().unwrap_or(u64::MAX));
            let (mut res_lo, mut res_hi, mut oh_lo, mut oh_hi) = (0i64, 0i64, 0i64, 0i64);
            for r in &receipts {
                let (lo, hi) = r.qty.range();
                if r.applied.surely_before(inv) {
                    oh_lo = oh_lo.saturating_add(lo);
                }
                if r.applied.maybe_before(end) {
                    oh_hi = oh_hi.saturating_add(hi);
                }
            }
            for h in &holds {
                let (lo, hi) = h.qty.range();
                let maybe_held = h.held.maybe_before(end);
                if h.held.surely_before(inv) && !h.ended.maybe_before(end) {
                    res_lo = res_lo.saturating_add(lo);
                }
                if maybe_held && !h.ended.surely_before(inv) {
                    res_hi = res_hi.saturating_add(hi);
                }
                if maybe_held && h.committed.maybe_before(end) {
                    oh_lo = oh_lo.saturating_sub(hi);
                }
                if h.committed.surely_before(inv) {
                    oh_hi = oh_hi.saturating_sub(lo);
                }
            }
            ReadBounds {
                read,
                on_hand,
                reserved,
                reserved_lo: res_lo,
                reserved_hi: res_hi,
                on_hand_lo: oh_lo,
                on_hand_hi: oh_hi,
            }
        })
        .collect()
}

/// Conservation (C2, C3): every read within its `read_bounds`. A breach on the last read
/// (greatest invocation) is a lasting one (C2 or C3); a breach only on earlier reads, which a
/// later read does not repeat, is a stale read (C4).
fn conservation(key: &str, bounds: &[ReadBounds], out: &mut Vec<Finding>) {
    // Per direction: the reads that breach it, as (read, figure shown, bound).
    let mut breaches: [Vec<(&Call, i64, i64)>; 4] = Default::default();
    for b in bounds {
        let checks = [
            (b.reserved < b.reserved_lo, b.reserved, b.reserved_lo),
            (b.reserved > b.reserved_hi, b.reserved, b.reserved_hi),
            (b.on_hand > b.on_hand_hi, b.on_hand, b.on_hand_hi),
            (b.on_hand < b.on_hand_lo, b.on_hand, b.on_hand_lo),
        ];
        for (i, (breached, shown, bound)) in checks.into_iter().enumerate() {
            if breached {
                breaches[i].push((b.read, shown, bound));
            }
        }
    }
    let Some(last) = bounds
        .iter()
        .map(|b| b.read)
        .max_by_key(|c| (c.invoke_us, c.index))
    else {
        return;
    };
    // (lasting guarantee, lasting kind, what the figure is, how it breaks the bound)
    let names = [
        (Guarantee::C2, "lost_acknowledged_reservation", "reserved", "below the", "acknowledged holds that no commit or release could have ended"),
        (Guarantee::C3, "hold_counted_twice", "reserved", "above the", "holds that may exist (a hold counted twice, C3, or an acknowledged commit/release lost, C2)"),
        (Guarantee::C3, "receipt_counted_twice", "on_hand", "above the", "most the receipts and commits allow (a receipt counted twice, C3, or an acknowledged commit lost, C2)"),
        (Guarantee::C2, "lost_acknowledged_receipt", "on_hand", "below the", "least the acknowledged receipts and possible commits allow (an acknowledged receipt lost, C2, or a commit counted twice, C3)"),
    ];
    for (breach, (g, kind, figure, side, what)) in breaches.iter().zip(names) {
        let Some(&(first, shown, bound)) = breach.first() else {
            continue;
        };
        let lasting = breach.iter().find(|(c, ..)| c.index == last.index);
        let mut ids: Vec<u64> = breach
            .iter()
            .map(|(c, ..)| c.index)
            .take(MAX_LISTED)
            .collect();
        match lasting {
            Some(&(c, shown, bound)) => {
                let detail = format!(
                    "the last read #{} shows {figure} {shown}, {side} {bound} of {what}",
                    c.index
                );
                ids.retain(|&i| i != c.index);
                ids.insert(0, c.index);
                ids.truncate(MAX_LISTED);
                out.push(finding(g, kind, key, detail, ids));
            }
            None => {
                let detail = format!(
                    "read #{} shows {figure} {shown}, {side} {bound} of {what}; a later read does not ({} read(s) like it)",
                    first.index,
                    breach.len()
                );
                out.push(finding(Guarantee::C4, "stale_read", key, detail, ids));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Display
// ---------------------------------------------------------------------------------------------

fn show_op(op: &Op) -> String {
    match op {
        Op::Reserve { id, qty } => format!("reserve({id}, {qty})"),
        Op::Commit { id } => format!("commit({id})"),
        Op::Release { id } => format!("release({id})"),
        Op::Receive { id, qty } => format!("receive({id}, {qty})"),
        Op::Read => "read".to_owned(),
    }
}

fn show_answer(a: &Answer) -> String {
    match a {
        Answer::Reserved { available } => format!("reserved(available {available})"),
        Answer::Done => "done".to_owned(),
        Answer::Stock { on_hand, reserved } => {
            format!("stock(on_hand {on_hand}, reserved {reserved})")
        }
        Answer::Refused {
            code,
            available: Some(a),
        } => format!("refused({code}, available {a})"),
        Answer::Refused { code, .. } => format!("refused({code})"),
    }
}

fn show_stuck(c: &StuckCall) -> String {
    format!(
        "#{} client {} on {}: {} [{}..{}us] answered {}, expected {}",
        c.index,
        c.client,
        c.node,
        show_op(&c.op),
        c.invoke_us,
        c.answered_at_us.map_or("?".to_owned(), |t| t.to_string()),
        c.answer.as_ref().map_or("nothing".to_owned(), show_answer),
        show_answer(&c.expected)
    )
}
