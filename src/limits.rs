//! Every bound stockring enforces, in one place, with the relations between them checked at
//! compile time. A value a client sends is checked against these before it reaches the domain.

/// Largest quantity one request may move (reserve, receive).
pub const MAX_QTY: u64 = 1_000_000_000;
/// Largest on-hand or safety-stock count a key may hold. Leaves headroom below `u64::MAX` so
/// that `on_hand + MAX_QTY` can never overflow before the checked add rejects it.
pub const MAX_STOCK: u64 = 1_000_000_000_000;
/// Longest id (sku, warehouse, reservation, op, order) in bytes.
pub const MAX_ID_LEN: usize = 128;
/// Longest hold a client may ask for (7 days).
pub const MAX_TTL_MS: u64 = 7 * 24 * 3600 * 1000;
/// Hold length when a request names none (15 minutes).
pub const DEFAULT_TTL_MS: u64 = 15 * 60 * 1000;
/// Most lines in one order.
pub const MAX_ORDER_LINES: usize = 100;
/// Most warehouses a line may list as its preference.
pub const MAX_LINE_WAREHOUSES: usize = 16;
/// Most operations in one `/v1/batch` request.
pub const MAX_BATCH_OPS: usize = 1000;
/// Largest HTTP body accepted (the batch endpoint is the only large one).
pub const MAX_BODY_BYTES: usize = 1 << 20;

const _: () = assert!(MAX_QTY < MAX_STOCK);
const _: () = assert!(MAX_STOCK.checked_add(MAX_QTY).is_some());
const _: () = assert!(DEFAULT_TTL_MS <= MAX_TTL_MS);
// A batch of maximal ops with maximal ids must fit the body limit (about 4 ids of 128 bytes each).
const _: () = assert!(MAX_BATCH_OPS * (4 * MAX_ID_LEN + 128) <= MAX_BODY_BYTES);
