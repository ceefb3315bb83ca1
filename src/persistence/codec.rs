//! The on-disk formats of events, key snapshots, record segments and order records. Domain
//! types are not serializable on purpose (their shape is free to change); these DTOs are the
//! contract with every journal ever written. Each blob is `[format: u8][FNV-1a 64 of payload:
//! 8 bytes LE][MessagePack payload]`, so a torn or foreign blob is detected, never misread.
//! The format byte also names what the blob is: an event, order or v1 snapshot (1), a
//! snapshot of a key's scalars (2), a segment of its remembered records (3).

use crate::domain::ids::{IdError, OpId, OrderId, ReservationId, Sku, WarehouseId};
use crate::domain::ledger::{
    Event, OpRecord, OpRequest, Outcome, RecordKey, Reservation, ReservationStatus, StockParts,
    StockScalars, StockState, StoredRecord,
};
use crate::domain::order::{Order, OrderLine, OrderRequest, OrderStatus};
use crate::domain::Qty;
use serde::{Deserialize, Serialize};

const FORMAT_V1: u8 = 1;
/// A key's snapshot without its records (schema v5 on).
const FORMAT_SCALARS: u8 = 2;
/// A segment of a key's remembered records.
const FORMAT_RECORDS: u8 = 3;
/// A segment is cut once its records reach about this many bytes, so that any one stored
/// value (and any one handoff item) stays small whatever the key has seen.
pub const SEGMENT_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("blob too short or of unknown format version")]
    Format,
    #[error("blob checksum mismatch")]
    Checksum,
    #[error("undecodable payload: {0}")]
    Payload(String),
    #[error("stored value fails validation: {0}")]
    Invalid(&'static str),
}

impl From<IdError> for CodecError {
    fn from(_: IdError) -> Self {
        CodecError::Invalid("bad id")
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn seal<T: Serialize>(value: &T) -> Vec<u8> {
    seal_as(FORMAT_V1, value)
}

fn seal_as<T: Serialize>(format: u8, value: &T) -> Vec<u8> {
    // Encoding plain owned data into a Vec cannot fail.
    let payload = rmp_serde::to_vec(value).expect("messagepack encoding of plain data");
    let mut out = Vec::with_capacity(payload.len() + 9);
    out.push(format);
    out.extend_from_slice(&fnv1a(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn open<T: for<'de> Deserialize<'de>>(blob: &[u8]) -> Result<T, CodecError> {
    open_as(FORMAT_V1, blob)
}

fn open_as<T: for<'de> Deserialize<'de>>(format: u8, blob: &[u8]) -> Result<T, CodecError> {
    if blob.len() < 9 || blob[0] != format {
        return Err(CodecError::Format);
    }
    let sum = u64::from_le_bytes(blob[1..9].try_into().map_err(|_| CodecError::Format)?);
    if sum != fnv1a(&blob[9..]) {
        return Err(CodecError::Checksum);
    }
    rmp_serde::from_slice(&blob[9..]).map_err(|e| CodecError::Payload(e.to_string()))
}

#[derive(Serialize, Deserialize)]
enum EventV1 {
    Reserved {
        id: String,
        qty: u64,
        ttl: u64,
        order: Option<String>,
        at: u64,
    },
    ReserveRefused {
        id: String,
        qty: u64,
        ttl: u64,
        order: Option<String>,
        at: u64,
        available: u64,
    },
    Committed {
        id: String,
        at: u64,
    },
    Released {
        id: String,
        at: u64,
    },
    Expired {
        ids: Vec<String>,
        at: u64,
    },
    OpApplied {
        op: String,
        request: OpRequestV1,
        at: u64,
    },
    CountRefused {
        op: String,
        counted: u64,
        at: u64,
    },
    Cancelled {
        id: String,
        at: u64,
    },
    Forgot {
        before: u64,
        at: u64,
    },
}

#[derive(Serialize, Deserialize, Clone, Copy)]
enum OpRequestV1 {
    Receive(u64),
    SetOnHand(u64),
    SetSafetyStock(u64),
}

impl From<OpRequest> for OpRequestV1 {
    fn from(r: OpRequest) -> Self {
        match r {
            OpRequest::Receive { qty } => Self::Receive(qty),
            OpRequest::SetOnHand { on_hand } => Self::SetOnHand(on_hand),
            OpRequest::SetSafetyStock { safety_stock } => Self::SetSafetyStock(safety_stock),
        }
    }
}

impl From<OpRequestV1> for OpRequest {
    fn from(r: OpRequestV1) -> Self {
        match r {
            OpRequestV1::Receive(qty) => Self::Receive { qty },
            OpRequestV1::SetOnHand(on_hand) => Self::SetOnHand { on_hand },
            OpRequestV1::SetSafetyStock(safety_stock) => Self::SetSafetyStock { safety_stock },
        }
    }
}

fn rid(s: &str) -> Result<ReservationId, CodecError> {
    Ok(ReservationId::parse_stored(s)?)
}

fn oid(s: &Option<String>) -> Result<Option<OrderId>, CodecError> {
    s.as_deref()
        .map(OrderId::parse)
        .transpose()
        .map_err(CodecError::from)
}

fn ostr(o: &Option<OrderId>) -> Option<String> {
    o.as_ref().map(|o| o.as_str().to_owned())
}

pub fn encode_event(e: &Event) -> Vec<u8> {
    let dto = match e {
        Event::Reserved {
            reservation_id,
            qty,
            ttl_ms,
            order_id,
            at_ms,
        } => EventV1::Reserved {
            id: reservation_id.as_str().into(),
            qty: *qty,
            ttl: *ttl_ms,
            order: ostr(order_id),
            at: *at_ms,
        },
        Event::ReserveRefused {
            reservation_id,
            qty,
            ttl_ms,
            order_id,
            at_ms,
            available,
        } => EventV1::ReserveRefused {
            id: reservation_id.as_str().into(),
            qty: *qty,
            ttl: *ttl_ms,
            order: ostr(order_id),
            at: *at_ms,
            available: *available,
        },
        Event::Committed {
            reservation_id,
            at_ms,
        } => EventV1::Committed {
            id: reservation_id.as_str().into(),
            at: *at_ms,
        },
        Event::Released {
            reservation_id,
            at_ms,
        } => EventV1::Released {
            id: reservation_id.as_str().into(),
            at: *at_ms,
        },
        Event::Expired {
            reservation_ids,
            at_ms,
        } => EventV1::Expired {
            ids: reservation_ids
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
            at: *at_ms,
        },
        Event::OpApplied {
            op_id,
            request,
            at_ms,
        } => EventV1::OpApplied {
            op: op_id.as_str().into(),
            request: (*request).into(),
            at: *at_ms,
        },
        Event::CountRefused {
            op_id,
            counted,
            at_ms,
        } => EventV1::CountRefused {
            op: op_id.as_str().into(),
            counted: *counted,
            at: *at_ms,
        },
        Event::Cancelled {
            reservation_id,
            at_ms,
        } => EventV1::Cancelled {
            id: reservation_id.as_str().into(),
            at: *at_ms,
        },
        Event::Forgot { before_ms, at_ms } => EventV1::Forgot {
            before: *before_ms,
            at: *at_ms,
        },
    };
    seal(&dto)
}

pub fn decode_event(blob: &[u8]) -> Result<Event, CodecError> {
    Ok(match open::<EventV1>(blob)? {
        EventV1::Reserved {
            id,
            qty,
            ttl,
            order,
            at,
        } => Event::Reserved {
            reservation_id: rid(&id)?,
            qty,
            ttl_ms: ttl,
            order_id: oid(&order)?,
            at_ms: at,
        },
        EventV1::ReserveRefused {
            id,
            qty,
            ttl,
            order,
            at,
            available,
        } => Event::ReserveRefused {
            reservation_id: rid(&id)?,
            qty,
            ttl_ms: ttl,
            order_id: oid(&order)?,
            at_ms: at,
            available,
        },
        EventV1::Committed { id, at } => Event::Committed {
            reservation_id: rid(&id)?,
            at_ms: at,
        },
        EventV1::Released { id, at } => Event::Released {
            reservation_id: rid(&id)?,
            at_ms: at,
        },
        EventV1::Expired { ids, at } => Event::Expired {
            reservation_ids: ids.iter().map(|i| rid(i)).collect::<Result<_, _>>()?,
            at_ms: at,
        },
        EventV1::OpApplied { op, request, at } => Event::OpApplied {
            op_id: OpId::parse(&op)?,
            request: request.into(),
            at_ms: at,
        },
        EventV1::CountRefused { op, counted, at } => Event::CountRefused {
            op_id: OpId::parse(&op)?,
            counted,
            at_ms: at,
        },
        EventV1::Cancelled { id, at } => Event::Cancelled {
            reservation_id: rid(&id)?,
            at_ms: at,
        },
        EventV1::Forgot { before, at } => Event::Forgot {
            before_ms: before,
            at_ms: at,
        },
    })
}

#[derive(Serialize, Deserialize)]
struct SnapshotV1 {
    on_hand: u64,
    safety_stock: u64,
    version: u64,
    last_now: u64,
    next_seq: u64,
    reservations: Vec<ReservationV1>,
    ops: Vec<OpV1>,
}

#[derive(Serialize, Deserialize)]
struct ReservationV1 {
    id: String,
    qty: u64,
    ttl: u64,
    order: Option<String>,
    created_at: u64,
    expires_at: u64,
    available_after: u64,
    /// 0 held, 1 committed, 2 released, 3 expired, 4 refused, 5 cancelled.
    status: u8,
    status_at: u64,
    seq: u64,
}

#[derive(Serialize, Deserialize)]
struct OpV1 {
    id: String,
    request: OpRequestV1,
    at: u64,
    /// `[on_hand, reserved, safety_stock, available]` for an applied op,
    /// `[counted, reserved, shortfall]` for a refused count.
    applied: bool,
    figures: Vec<u64>,
}

fn encode_status(s: ReservationStatus) -> u8 {
    match s {
        ReservationStatus::Held => 0,
        ReservationStatus::Committed => 1,
        ReservationStatus::Released => 2,
        ReservationStatus::Expired => 3,
        ReservationStatus::Refused { .. } => 4,
        ReservationStatus::Cancelled => 5,
    }
}

fn encode_reservation(id: &ReservationId, r: &Reservation) -> ReservationV1 {
    ReservationV1 {
        id: id.as_str().into(),
        qty: r.qty,
        ttl: r.ttl_ms,
        order: ostr(&r.order_id),
        created_at: r.created_at_ms,
        expires_at: r.expires_at_ms,
        available_after: r.available_after,
        status: encode_status(r.status),
        status_at: r.status_at_ms,
        seq: r.seq,
    }
}

/// A key's snapshot since schema v5: its scalars only (see `StockScalars`); the records are
/// stored apart, in segments.
#[derive(Serialize, Deserialize)]
struct ScalarsV2 {
    on_hand: u64,
    safety_stock: u64,
    version: u64,
    last_now: u64,
    next_seq: u64,
    forgotten_before: u64,
}

pub fn encode_scalars(s: &StockScalars) -> Vec<u8> {
    seal_as(
        FORMAT_SCALARS,
        &ScalarsV2 {
            on_hand: s.on_hand,
            safety_stock: s.safety_stock,
            version: s.version,
            last_now: s.last_now_ms,
            next_seq: s.next_seq,
            forgotten_before: s.forgotten_before_ms,
        },
    )
}

pub fn decode_scalars(blob: &[u8]) -> Result<StockScalars, CodecError> {
    let s: ScalarsV2 = open_as(FORMAT_SCALARS, blob)?;
    Ok(StockScalars {
        on_hand: s.on_hand,
        safety_stock: s.safety_stock,
        version: s.version,
        last_now_ms: s.last_now,
        next_seq: s.next_seq,
        forgotten_before_ms: s.forgotten_before,
    })
}

#[derive(Serialize, Deserialize)]
enum RecordV1 {
    Reservation(ReservationV1),
    Op(OpV1),
    /// `StoredRecord::Gone` of a reservation id.
    GoneReservation(String),
    /// `StoredRecord::Gone` of an op id.
    GoneOp(String),
}

#[derive(Serialize, Deserialize)]
struct SegmentV1 {
    records: Vec<RecordV1>,
}

/// Records as segments of about `SEGMENT_BYTES` each, in the order given (which is the order
/// they must be read back in).
pub fn encode_segments(records: impl IntoIterator<Item = StoredRecord>) -> Vec<Vec<u8>> {
    let mut segments = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0usize;
    for record in records {
        let (dto, size) = match &record {
            StoredRecord::Reservation(id, r) => (
                RecordV1::Reservation(encode_reservation(id, r)),
                id.as_str().len() + r.order_id.as_ref().map_or(0, |o| o.as_str().len()) + 64,
            ),
            StoredRecord::Op(id, op) => (RecordV1::Op(encode_op(id, op)), id.as_str().len() + 64),
            StoredRecord::Gone(RecordKey::Reservation(id)) => (
                RecordV1::GoneReservation(id.as_str().into()),
                id.as_str().len() + 8,
            ),
            StoredRecord::Gone(RecordKey::Op(id)) => {
                (RecordV1::GoneOp(id.as_str().into()), id.as_str().len() + 8)
            }
        };
        current.push(dto);
        bytes += size;
        if bytes >= SEGMENT_BYTES {
            segments.push(seal_as(
                FORMAT_RECORDS,
                &SegmentV1 {
                    records: std::mem::take(&mut current),
                },
            ));
            bytes = 0;
        }
    }
    if !current.is_empty() {
        segments.push(seal_as(FORMAT_RECORDS, &SegmentV1 { records: current }));
    }
    segments
}

pub fn decode_segment(blob: &[u8]) -> Result<Vec<StoredRecord>, CodecError> {
    let s: SegmentV1 = open_as(FORMAT_RECORDS, blob)?;
    s.records
        .into_iter()
        .map(|r| match r {
            RecordV1::Reservation(r) => {
                decode_reservation(r).map(|(id, r)| StoredRecord::Reservation(id, r))
            }
            RecordV1::Op(op) => decode_op(op).map(|(id, op)| StoredRecord::Op(id, op)),
            RecordV1::GoneReservation(id) => {
                Ok(StoredRecord::Gone(RecordKey::Reservation(rid(&id)?)))
            }
            RecordV1::GoneOp(id) => Ok(StoredRecord::Gone(RecordKey::Op(OpId::parse(&id)?))),
        })
        .collect()
}

fn encode_op(id: &OpId, op: &OpRecord) -> OpV1 {
    let (applied, figures) = match op.outcome {
        Outcome::StockSet {
            on_hand,
            reserved,
            safety_stock,
            available,
            ..
        } => (true, vec![on_hand, reserved, safety_stock, available]),
        Outcome::CountBelowReserved {
            counted,
            reserved,
            shortfall,
            ..
        } => (false, vec![counted, reserved, shortfall]),
        ref other => panic!("op record holds a non-recordable outcome {other:?}"),
    };
    OpV1 {
        id: id.as_str().into(),
        request: op.request.into(),
        at: op.at_ms,
        applied,
        figures,
    }
}

fn decode_op(op: OpV1) -> Result<(OpId, OpRecord), CodecError> {
    let outcome = match (op.applied, op.figures.as_slice()) {
        (true, &[on_hand, reserved, safety_stock, available]) => Outcome::StockSet {
            on_hand,
            reserved,
            safety_stock,
            available,
            replay: false,
        },
        (false, &[counted, reserved, shortfall]) => Outcome::CountBelowReserved {
            counted,
            reserved,
            shortfall,
            replay: false,
        },
        _ => return Err(CodecError::Invalid("op record figures")),
    };
    let record = OpRecord {
        request: op.request.into(),
        outcome,
        at_ms: op.at,
    };
    Ok((OpId::parse(&op.id)?, record))
}

fn decode_reservation(r: ReservationV1) -> Result<(ReservationId, Reservation), CodecError> {
    let status = match r.status {
        0 => ReservationStatus::Held,
        1 => ReservationStatus::Committed,
        2 => ReservationStatus::Released,
        3 => ReservationStatus::Expired,
        4 => ReservationStatus::Refused {
            available: r.available_after,
        },
        5 => ReservationStatus::Cancelled,
        _ => return Err(CodecError::Invalid("reservation status")),
    };
    let res = Reservation {
        qty: r.qty,
        ttl_ms: r.ttl,
        order_id: oid(&r.order)?,
        created_at_ms: r.created_at,
        expires_at_ms: r.expires_at,
        available_after: r.available_after,
        status,
        status_at_ms: r.status_at,
        seq: r.seq,
    };
    Ok((rid(&r.id)?, res))
}

/// Writes a snapshot as schemas v1–v4 stored it: only to build old files in tests.
#[cfg(test)]
pub fn encode_snapshot_v1(state: &StockState) -> Vec<u8> {
    let p = state.to_parts();
    seal(&SnapshotV1 {
        on_hand: p.on_hand,
        safety_stock: p.safety_stock,
        version: p.version,
        last_now: p.last_now_ms,
        next_seq: p.next_seq,
        reservations: p
            .reservations
            .iter()
            .map(|(id, r)| encode_reservation(id, r))
            .collect(),
        ops: p.ops.iter().map(|(id, op)| encode_op(id, op)).collect(),
    })
}

/// A snapshot as schemas v1–v4 stored it (the whole state, records included); read once, by
/// the migration to v5.
pub fn decode_snapshot_v1(blob: &[u8]) -> Result<StockState, CodecError> {
    let s: SnapshotV1 = open(blob)?;
    let parts = StockParts {
        on_hand: s.on_hand,
        safety_stock: s.safety_stock,
        version: s.version,
        last_now_ms: s.last_now,
        next_seq: s.next_seq,
        reservations: s
            .reservations
            .into_iter()
            .map(decode_reservation)
            .collect::<Result<_, _>>()?,
        ops: s.ops.into_iter().map(decode_op).collect::<Result<_, _>>()?,
        forgotten_before_ms: 0,
    };
    StockState::from_parts(parts).map_err(|e| CodecError::Invalid(e.0))
}

#[derive(Serialize, Deserialize)]
struct OrderV1 {
    id: String,
    ttl: u64,
    lines: Vec<(String, u64, Vec<String>)>,
    status: String,
    failed_line: Option<u64>,
    allocation: Vec<Option<String>>,
    created_at: u64,
    expires_at: u64,
    expired_lines: Vec<u64>,
}

pub fn encode_order(o: &Order) -> Vec<u8> {
    let lines = o
        .request
        .lines
        .iter()
        .map(|l| {
            let whs = l.warehouses.iter().map(|w| w.as_str().to_owned()).collect();
            (l.sku.as_str().to_owned(), l.qty.get(), whs)
        })
        .collect();
    let failed_line = match o.status {
        OrderStatus::Failed { line } => Some(line as u64),
        _ => None,
    };
    seal(&OrderV1 {
        id: o.order_id.as_str().into(),
        ttl: o.request.ttl_ms,
        lines,
        status: o.status.name().into(),
        failed_line,
        allocation: o
            .allocation
            .iter()
            .map(|a| a.as_ref().map(|w| w.as_str().to_owned()))
            .collect(),
        created_at: o.created_at_ms,
        expires_at: o.expires_at_ms,
        expired_lines: o.expired_lines.iter().map(|l| *l as u64).collect(),
    })
}

pub fn decode_order(blob: &[u8]) -> Result<Order, CodecError> {
    let o: OrderV1 = open(blob)?;
    let status = match (o.status.as_str(), o.failed_line) {
        ("reserving", _) => OrderStatus::Reserving,
        ("reserved", _) => OrderStatus::Reserved,
        ("failed", Some(line)) => OrderStatus::Failed {
            line: line as usize,
        },
        ("aborted", _) => OrderStatus::Aborted,
        ("committing", _) => OrderStatus::Committing,
        ("committed", _) => OrderStatus::Committed,
        ("expired", _) => OrderStatus::Expired,
        ("releasing", _) => OrderStatus::Releasing,
        ("released", _) => OrderStatus::Released,
        _ => return Err(CodecError::Invalid("order status")),
    };
    let mut lines = Vec::with_capacity(o.lines.len());
    for (sku, qty, whs) in &o.lines {
        let warehouses = whs
            .iter()
            .map(|w| WarehouseId::parse(w))
            .collect::<Result<_, _>>()?;
        let qty = Qty::new(*qty).map_err(|_| CodecError::Invalid("order qty"))?;
        lines.push(OrderLine {
            sku: Sku::parse(sku)?,
            qty,
            warehouses,
        });
    }
    if lines.is_empty() || o.allocation.len() != lines.len() {
        return Err(CodecError::Invalid("order lines"));
    }
    let allocation = o
        .allocation
        .iter()
        .map(|a| a.as_deref().map(WarehouseId::parse).transpose())
        .collect::<Result<_, _>>()?;
    Ok(Order {
        order_id: OrderId::parse(&o.id)?,
        request: OrderRequest {
            ttl_ms: o.ttl,
            lines,
        },
        status,
        allocation,
        created_at_ms: o.created_at,
        expires_at_ms: o.expires_at,
        expired_lines: o.expired_lines.iter().map(|l| *l as usize).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ledger::Command;

    #[test]
    fn events_and_snapshots_round_trip_and_corruption_is_detected() {
        let mut s = StockState::default();
        let mut events = Vec::new();
        let op = OpId::parse("op").unwrap();
        let (_, e) = s.apply(
            &Command::Receive {
                op_id: op,
                qty: Qty::new(9).unwrap(),
            },
            10,
        );
        events.extend(e);
        let reserve = |id: &str, qty| Command::Reserve {
            reservation_id: ReservationId::parse(id).unwrap(),
            qty: Qty::new(qty).unwrap(),
            ttl_ms: 5,
            order_id: Some(OrderId::parse("o").unwrap()),
        };
        events.extend(s.apply(&reserve("a", 4), 11).1);
        events.extend(s.apply(&reserve("b", 9), 12).1);
        events.extend(s.apply(&reserve("c", 2), 20).1);
        let count = Command::SetOnHand {
            op_id: OpId::parse("cc").unwrap(),
            on_hand: 1,
        };
        events.extend(s.apply(&count, 21).1);
        for e in &events {
            assert_eq!(&decode_event(&encode_event(e)).unwrap(), e);
        }
        let cancel = Command::Cancel {
            reservation_id: ReservationId::parse("z").unwrap(),
        };
        events.extend(s.apply(&cancel, 22).1);
        events.extend(s.apply(&reserve("d", 1), 10_000).1);
        events.extend(s.forget_due(10_000, 100));
        assert!(matches!(events.last(), Some(Event::Forgot { .. })));
        for e in &events {
            assert_eq!(&decode_event(&encode_event(e)).unwrap(), e);
        }
        let scalars = encode_scalars(&s.scalars());
        let segments = encode_segments(s.records());
        let records = segments.iter().flat_map(|b| decode_segment(b).unwrap());
        let back = StockState::from_log(decode_scalars(&scalars).unwrap(), records).unwrap();
        assert_eq!(back, s);
        let mut bad = scalars.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(decode_scalars(&bad), Err(CodecError::Checksum)));
        assert!(matches!(decode_event(&[2, 0]), Err(CodecError::Format)));
        // A blob of one kind is never read as another.
        assert!(matches!(decode_segment(&scalars), Err(CodecError::Format)));
        assert!(matches!(
            decode_scalars(&segments[0]),
            Err(CodecError::Format)
        ));
        let v1 = encode_snapshot_v1(&s);
        assert!(matches!(decode_scalars(&v1), Err(CodecError::Format)));
    }

    #[test]
    fn segments_are_cut_by_size_and_keep_their_order() {
        let mut s = StockState::default();
        let _ = s.apply(
            &Command::Receive {
                op_id: OpId::parse("op").unwrap(),
                qty: Qty::new(1).unwrap(),
            },
            1,
        );
        let id = "x".repeat(100);
        for i in 0..5_000 {
            let reserve = Command::Reserve {
                reservation_id: ReservationId::parse(&format!("{id}{i}")).unwrap(),
                qty: Qty::new(5).unwrap(),
                ttl_ms: 5,
                order_id: None,
            };
            let _ = s.apply(&reserve, 2 + i);
        }
        let segments = encode_segments(s.records());
        assert!(segments.len() > 1);
        assert!(segments.iter().all(|b| b.len() < 2 * SEGMENT_BYTES));
        let records = segments.iter().flat_map(|b| decode_segment(b).unwrap());
        let back = StockState::from_log(s.scalars(), records).unwrap();
        assert_eq!(back, s);
    }
}
