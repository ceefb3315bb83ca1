//! Quantities a client asks to move: integers in `1..=MAX_QTY`, so zero, negative (rejected at
//! parse time, the API type is unsigned) and huge values never reach the ledger.

use crate::limits::MAX_QTY;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Qty(u64);

/// A quantity outside `1..=MAX_QTY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("quantity must be between 1 and {MAX_QTY}, got {0}")]
pub struct QtyError(pub u64);

impl Qty {
    pub fn new(n: u64) -> Result<Self, QtyError> {
        if (1..=MAX_QTY).contains(&n) {
            Ok(Self(n))
        } else {
            Err(QtyError(n))
        }
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        assert!(Qty::new(0).is_err());
        assert!(Qty::new(1).is_ok());
        assert!(Qty::new(MAX_QTY).is_ok());
        assert!(Qty::new(MAX_QTY + 1).is_err());
    }
}
