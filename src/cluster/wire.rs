//! What nodes say to each other. Every message is one rmp-serde `PeerRequest` answered by one
//! `PeerReply`; the transport carries them as bytes. The domain's commands and outcomes have
//! their own wire forms here (the domain stays serde-free, and a wire format must outlive a
//! refactoring of the domain). Variants may be added, never renamed or reordered.

use super::control::{ControlCommand, ControlResponse, ControlState, Move};
use crate::domain::{Command, OpId, OrderId, Outcome, Qty, ReservationId, StockKey, StockView};
use crate::persistence::{ExportCursor, ExportPass, KeyImage, OrderImage, SegmentImage};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    Ping {
        from: String,
    },
    /// Key operations for vnodes the receiver owns (as the sender believes), many per message.
    Forward(Vec<ForwardItem>),
    /// Handoff: the target asks the source for a page of the vnode.
    Export {
        mv: Move,
        last: bool,
        /// Key snapshots, their record segments, or order records (a vnode holds all three).
        pass: ExportPass,
        since: i64,
        after: Option<ExportCursor>,
        max_bytes: usize,
    },
    /// An encoded openraft RPC for the seed's control plane.
    Raft(Vec<u8>),
    /// The control state, if the receiver has one newer than `have`.
    GetMap {
        have: u64,
    },
    /// A control command for the Raft leader, from the node named `from` (which the leader
    /// checks may propose it: `ControlCommand::proposable_by`).
    Propose {
        from: String,
        cmd: ControlCommand,
    },
    /// An API request for an order the receiver coordinates (orders live with their vnode).
    Http {
        method: String,
        path: String,
        body: Vec<u8>,
    },
    /// The warehouses of a SKU whose keys the receiver owns (for `GET /v1/stock/{sku}`).
    Warehouses {
        sku: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerReply {
    Pong,
    Forwarded(Vec<ForwardResult>),
    ExportPage {
        images: Vec<KeyImage>,
        segments: Vec<SegmentImage>,
        orders: Vec<OrderImage>,
        next: Option<ExportCursor>,
        changed_upto: i64,
    },
    /// The source will not export (not the owner at that epoch, or the move is resolved).
    ExportRefused,
    Raft(Vec<u8>),
    Map {
        state: Option<Box<ControlState>>,
        leader: Option<String>,
        term: u64,
        commit_index: u64,
    },
    Proposed(ControlResponse),
    NotLeader {
        leader: Option<String>,
    },
    Http {
        status: u16,
        body: Vec<u8>,
    },
    Warehouses(Vec<String>),
    Error(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardItem {
    /// The key's storage name (`sku/warehouse`).
    pub key: String,
    /// The epoch of the vnode in the sender's map.
    pub epoch: u64,
    pub op: WireOp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WireOp {
    Apply(WireCommand),
    Read,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardResult {
    Applied(WireOutcome),
    View(WireView),
    /// The receiver does not own the vnode; its map is at `version`.
    NotOwner {
        version: u64,
    },
    /// The receiver is handing the vnode over: retry shortly.
    Fenced,
    /// The receiver could not run it (overloaded, shutting down, storage); nothing applied.
    Failed(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WireCommand {
    Reserve {
        reservation_id: String,
        qty: u64,
        ttl_ms: u64,
        order_id: Option<String>,
    },
    Commit {
        reservation_id: String,
    },
    Release {
        reservation_id: String,
    },
    Receive {
        op_id: String,
        qty: u64,
    },
    SetOnHand {
        op_id: String,
        on_hand: u64,
    },
    SetSafetyStock {
        op_id: String,
        safety_stock: u64,
    },
    Cancel {
        reservation_id: String,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WireOutcome {
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
    StockSet {
        on_hand: u64,
        reserved: u64,
        safety_stock: u64,
        available: u64,
        replay: bool,
    },
    CountBelowReserved {
        counted: u64,
        reserved: u64,
        shortfall: u64,
        replay: bool,
    },
    StockLimit {
        limit: u64,
    },
    IdConflict,
    UnknownReservation,
    NotHeld,
    Expired {
        expires_at_ms: u64,
    },
    AlreadyReleased,
    AlreadyCommitted,
    Cancelled,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct WireView {
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
    pub safety_stock: u64,
    pub version: u64,
}

/// A peer sent something that is not a valid request (a bug or a version skew): refused
/// whole, nothing applied (C6 holds between nodes too).
#[derive(Debug, thiserror::Error)]
#[error("invalid {0} from a peer")]
pub struct WireError(pub &'static str);

pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // rmp-serde only fails on types it cannot represent; ours are plain data.
    rmp_serde::to_vec(msg).unwrap_or_default()
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    rmp_serde::from_slice(bytes).map_err(|_| WireError("message"))
}

pub fn key_from_wire(name: &str) -> Result<StockKey, WireError> {
    StockKey::from_storage_name(name).ok_or(WireError("key"))
}

impl From<&Command> for WireCommand {
    fn from(c: &Command) -> Self {
        match c {
            Command::Reserve {
                reservation_id,
                qty,
                ttl_ms,
                order_id,
            } => WireCommand::Reserve {
                reservation_id: reservation_id.as_str().to_owned(),
                qty: qty.get(),
                ttl_ms: *ttl_ms,
                order_id: order_id.as_ref().map(|o| o.as_str().to_owned()),
            },
            Command::Commit { reservation_id } => WireCommand::Commit {
                reservation_id: reservation_id.as_str().to_owned(),
            },
            Command::Release { reservation_id } => WireCommand::Release {
                reservation_id: reservation_id.as_str().to_owned(),
            },
            Command::Cancel { reservation_id } => WireCommand::Cancel {
                reservation_id: reservation_id.as_str().to_owned(),
            },
            Command::Receive { op_id, qty } => WireCommand::Receive {
                op_id: op_id.as_str().to_owned(),
                qty: qty.get(),
            },
            Command::SetOnHand { op_id, on_hand } => WireCommand::SetOnHand {
                op_id: op_id.as_str().to_owned(),
                on_hand: *on_hand,
            },
            Command::SetSafetyStock {
                op_id,
                safety_stock,
            } => WireCommand::SetSafetyStock {
                op_id: op_id.as_str().to_owned(),
                safety_stock: *safety_stock,
            },
        }
    }
}

impl TryFrom<WireCommand> for Command {
    type Error = WireError;

    /// Validates exactly as the API does: ids and quantities are re-checked on arrival.
    fn try_from(w: WireCommand) -> Result<Self, WireError> {
        let rid = |s: &str| ReservationId::parse_stored(s).map_err(|_| WireError("id"));
        let op = |s: &str| OpId::parse(s).map_err(|_| WireError("id"));
        let qty = |n: u64| Qty::new(n).map_err(|_| WireError("quantity"));
        Ok(match w {
            WireCommand::Reserve {
                reservation_id,
                qty: q,
                ttl_ms,
                order_id,
            } => Command::Reserve {
                reservation_id: rid(&reservation_id)?,
                qty: qty(q)?,
                ttl_ms,
                order_id: order_id
                    .map(|o| OrderId::parse(&o).map_err(|_| WireError("id")))
                    .transpose()?,
            },
            WireCommand::Commit { reservation_id } => Command::Commit {
                reservation_id: rid(&reservation_id)?,
            },
            WireCommand::Release { reservation_id } => Command::Release {
                reservation_id: rid(&reservation_id)?,
            },
            WireCommand::Cancel { reservation_id } => Command::Cancel {
                reservation_id: rid(&reservation_id)?,
            },
            WireCommand::Receive { op_id, qty: q } => Command::Receive {
                op_id: op(&op_id)?,
                qty: qty(q)?,
            },
            WireCommand::SetOnHand { op_id, on_hand } => Command::SetOnHand {
                op_id: op(&op_id)?,
                on_hand,
            },
            WireCommand::SetSafetyStock {
                op_id,
                safety_stock,
            } => Command::SetSafetyStock {
                op_id: op(&op_id)?,
                safety_stock,
            },
        })
    }
}

impl From<Outcome> for WireOutcome {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Reserved {
                qty,
                expires_at_ms,
                available,
                replay,
            } => WireOutcome::Reserved {
                qty,
                expires_at_ms,
                available,
                replay,
            },
            Outcome::Insufficient {
                requested,
                available,
                replay,
            } => WireOutcome::Insufficient {
                requested,
                available,
                replay,
            },
            Outcome::Committed { qty, replay } => WireOutcome::Committed { qty, replay },
            Outcome::Released { qty, replay } => WireOutcome::Released { qty, replay },
            Outcome::StockSet {
                on_hand,
                reserved,
                safety_stock,
                available,
                replay,
            } => WireOutcome::StockSet {
                on_hand,
                reserved,
                safety_stock,
                available,
                replay,
            },
            Outcome::CountBelowReserved {
                counted,
                reserved,
                shortfall,
                replay,
            } => WireOutcome::CountBelowReserved {
                counted,
                reserved,
                shortfall,
                replay,
            },
            Outcome::StockLimit { limit } => WireOutcome::StockLimit { limit },
            Outcome::IdConflict => WireOutcome::IdConflict,
            Outcome::UnknownReservation => WireOutcome::UnknownReservation,
            Outcome::NotHeld => WireOutcome::NotHeld,
            Outcome::Expired { expires_at_ms } => WireOutcome::Expired { expires_at_ms },
            Outcome::AlreadyReleased => WireOutcome::AlreadyReleased,
            Outcome::AlreadyCommitted => WireOutcome::AlreadyCommitted,
            Outcome::Cancelled => WireOutcome::Cancelled,
        }
    }
}

impl From<WireOutcome> for Outcome {
    fn from(o: WireOutcome) -> Self {
        match o {
            WireOutcome::Reserved {
                qty,
                expires_at_ms,
                available,
                replay,
            } => Outcome::Reserved {
                qty,
                expires_at_ms,
                available,
                replay,
            },
            WireOutcome::Insufficient {
                requested,
                available,
                replay,
            } => Outcome::Insufficient {
                requested,
                available,
                replay,
            },
            WireOutcome::Committed { qty, replay } => Outcome::Committed { qty, replay },
            WireOutcome::Released { qty, replay } => Outcome::Released { qty, replay },
            WireOutcome::StockSet {
                on_hand,
                reserved,
                safety_stock,
                available,
                replay,
            } => Outcome::StockSet {
                on_hand,
                reserved,
                safety_stock,
                available,
                replay,
            },
            WireOutcome::CountBelowReserved {
                counted,
                reserved,
                shortfall,
                replay,
            } => Outcome::CountBelowReserved {
                counted,
                reserved,
                shortfall,
                replay,
            },
            WireOutcome::StockLimit { limit } => Outcome::StockLimit { limit },
            WireOutcome::IdConflict => Outcome::IdConflict,
            WireOutcome::UnknownReservation => Outcome::UnknownReservation,
            WireOutcome::NotHeld => Outcome::NotHeld,
            WireOutcome::Expired { expires_at_ms } => Outcome::Expired { expires_at_ms },
            WireOutcome::AlreadyReleased => Outcome::AlreadyReleased,
            WireOutcome::AlreadyCommitted => Outcome::AlreadyCommitted,
            WireOutcome::Cancelled => Outcome::Cancelled,
        }
    }
}

impl From<StockView> for WireView {
    fn from(v: StockView) -> Self {
        WireView {
            on_hand: v.on_hand,
            reserved: v.reserved,
            available: v.available,
            safety_stock: v.safety_stock,
            version: v.version,
        }
    }
}

impl From<WireView> for StockView {
    fn from(v: WireView) -> Self {
        StockView {
            on_hand: v.on_hand,
            reserved: v.reserved,
            available: v.available,
            safety_stock: v.safety_stock,
            version: v.version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_are_validated_on_arrival() {
        let cmd = Command::Reserve {
            reservation_id: ReservationId::parse("r-1").unwrap(),
            qty: Qty::new(3).unwrap(),
            ttl_ms: 500,
            order_id: Some(OrderId::parse("o-1").unwrap()),
        };
        let wire: WireCommand = (&cmd).into();
        let back: WireCommand = decode(&encode(&wire)).unwrap();
        assert_eq!(Command::try_from(back).unwrap(), cmd);
        let bad = WireCommand::Receive {
            op_id: "op".into(),
            qty: 0,
        };
        assert!(Command::try_from(bad).is_err());
        let bad_id = WireCommand::Commit {
            reservation_id: "has space".into(),
        };
        assert!(Command::try_from(bad_id).is_err());
    }
}
