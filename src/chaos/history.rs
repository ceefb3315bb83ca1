//! What the chaos runner records: every client operation as it was invoked and how it ended,
//! seen from outside the cluster (nothing here comes from a node's own account of itself,
//! except the answers it gave).
//!
//! Two forms: `Event`s, one JSON line each as they happen (invoke, then ok / fail / info, as
//! Jepsen writes them), and `Call`s, an invocation paired with its end, which the checker
//! reads.

use serde::{Deserialize, Serialize};

/// One client operation on one key (`sku/warehouse`). Every mutating operation carries its
/// id, so a retry is the same operation (C3).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Op {
    /// `POST /v1/reservations` with a TTL longer than the run (holds never expire in it).
    Reserve { id: String, qty: u64 },
    /// `POST /v1/reservations/{id}/commit`.
    Commit { id: String },
    /// `POST /v1/reservations/{id}/release`.
    Release { id: String },
    /// `POST /v1/stock/{sku}/{warehouse}/receipts` with `op_id = id`.
    Receive { id: String, qty: u64 },
    /// `GET /v1/stock/{sku}/{warehouse}`.
    Read,
}

impl Op {
    /// The id it carries (none for a read).
    pub fn id(&self) -> Option<&str> {
        match self {
            Op::Reserve { id, .. }
            | Op::Commit { id }
            | Op::Release { id }
            | Op::Receive { id, .. } => Some(id),
            Op::Read => None,
        }
    }

    pub fn is_read(&self) -> bool {
        matches!(self, Op::Read)
    }
}

/// A definite answer from a node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "a", rename_all = "snake_case")]
pub enum Answer {
    /// A reserve succeeded (201, or 200 on a replay); `available` is what it answered.
    Reserved { available: i64 },
    /// A commit or release succeeded (also on a repeat).
    Done,
    /// A receipt or a read: the figures it answered.
    Stock { on_hand: i64, reserved: i64 },
    /// A definite refusal (4xx) with its stable code: `insufficient_stock` (with `available`),
    /// `unknown_reservation`, `already_released`, `already_committed`, `reservation_not_held`,
    /// `id_conflict`, ... It changed nothing, and a replay of its id gives it again.
    Refused {
        code: String,
        available: Option<i64>,
    },
}

/// How a call ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "end", rename_all = "snake_case")]
pub enum End {
    /// Answered at `at_us`.
    Answered { at_us: u64, answer: Answer },
    /// The outcome is unknown (timeout, connection reset, a 5xx after the request may have
    /// reached the key): it may or may not have taken effect, at any time after its invocation.
    Unknown { at_us: u64, reason: String },
}

/// An invocation and how it ended: what the checker reads. Times are microseconds since the
/// run began, on the runner's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// Unique in the run (the event index of its invocation).
    pub index: u64,
    /// The client that made it.
    pub client: u64,
    /// `sku/warehouse`.
    pub key: String,
    /// The node it was sent to.
    pub node: String,
    pub op: Op,
    pub invoke_us: u64,
    pub end: End,
}

impl Call {
    /// When it was answered, if it was.
    pub fn answered_at(&self) -> Option<u64> {
        match &self.end {
            End::Answered { at_us, .. } => Some(*at_us),
            End::Unknown { .. } => None,
        }
    }

    pub fn answer(&self) -> Option<&Answer> {
        match &self.end {
            End::Answered { answer, .. } => Some(answer),
            End::Unknown { .. } => None,
        }
    }
}

/// One line of `history.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Invoke {
        index: u64,
        client: u64,
        key: String,
        node: String,
        op: Op,
        at_us: u64,
    },
    /// The call `index` ended: `Call::end`.
    Complete { index: u64, end: End },
    /// A call that changed nothing: the node refused the connection, or answered a 503 that
    /// promises nothing was applied (`vnode_unavailable`, `overloaded`, `not_ready`). The
    /// checker drops it.
    NotSent { index: u64, at_us: u64 },
}

/// Pairs invocations with their ends. A call still open when the history stops is `Unknown`.
pub fn calls(events: &[Event]) -> Vec<Call> {
    use std::collections::BTreeMap;
    let mut open: BTreeMap<u64, Call> = BTreeMap::new();
    let mut done = Vec::new();
    let mut last_us = 0;
    for e in events {
        match e {
            Event::Invoke {
                index,
                client,
                key,
                node,
                op,
                at_us,
            } => {
                last_us = last_us.max(*at_us);
                open.insert(
                    *index,
                    Call {
                        index: *index,
                        client: *client,
                        key: key.clone(),
                        node: node.clone(),
                        op: op.clone(),
                        invoke_us: *at_us,
                        end: End::Unknown {
                            at_us: u64::MAX,
                            reason: "never ended".into(),
                        },
                    },
                );
            }
            Event::Complete { index, end } => {
                if let Some(mut call) = open.remove(index) {
                    call.end = end.clone();
                    done.push(call);
                }
            }
            Event::NotSent { index, .. } => {
                open.remove(index);
            }
        }
    }
    for (_, mut call) in open {
        call.end = End::Unknown {
            at_us: last_us,
            reason: "still open when the history stopped".into(),
        };
        done.push(call);
    }
    done.sort_by_key(|c| c.index);
    done
}
