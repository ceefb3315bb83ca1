//! Validated identifiers. Every id a client sends is 1..=128 bytes of `[A-Za-z0-9._:-]`, so ids
//! are safe in URLs, logs and SQL parameters, and the character `#` stays free for the ids the
//! order coordinator derives (`{order_id}#{line}`), which can never collide with a client's.

use crate::limits::MAX_ID_LEN;
use std::fmt;

/// Why an id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdError {
    Empty,
    TooLong,
    BadChar,
}

fn validate(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(IdError::BadChar)
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates a client-supplied id.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                validate(s).map(|()| Self(s.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(/// A stock-keeping unit.
    Sku);
id_type!(/// A warehouse (or store, or edge location) that holds stock.
    WarehouseId);
id_type!(/// A client-chosen operation id for receipts, counts and safety-stock changes (C3).
    OpId);
id_type!(/// A client-chosen order id.
    OrderId);

/// A client-chosen reservation id, or one the order coordinator derived for an order line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReservationId(String);

impl ReservationId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        validate(s).map(|()| Self(s.to_owned()))
    }

    /// The hold of line `line` of order `order`; `#` keeps it apart from every client id.
    pub fn for_order_line(order: &OrderId, line: usize) -> Self {
        Self(format!("{}#{}", order.as_str(), line))
    }

    /// Rebuilds an id read back from our own journal, where both forms may appear.
    pub fn parse_stored(s: &str) -> Result<Self, IdError> {
        match s.split_once('#') {
            None => Self::parse(s),
            Some((order, line)) if !line.is_empty() && line.bytes().all(|b| b.is_ascii_digit()) => {
                validate(order).map(|()| Self(s.to_owned()))
            }
            Some(_) => Err(IdError::BadChar),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One stock actor's identity: a SKU in one warehouse.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StockKey {
    pub sku: Sku,
    pub warehouse: WarehouseId,
}

impl StockKey {
    pub fn new(sku: Sku, warehouse: WarehouseId) -> Self {
        Self { sku, warehouse }
    }

    /// The key's name in storage. `/` is not an id character, so the encoding is unambiguous.
    pub fn storage_name(&self) -> String {
        format!("{}/{}", self.sku, self.warehouse)
    }

    pub fn from_storage_name(s: &str) -> Option<Self> {
        let (sku, wh) = s.split_once('/')?;
        Some(Self::new(
            Sku::parse(sku).ok()?,
            WarehouseId::parse(wh).ok()?,
        ))
    }
}

impl fmt::Display for StockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.sku, self.warehouse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_documented_charset_only() {
        assert!(Sku::parse("SKU-1.a_b:c").is_ok());
        assert_eq!(Sku::parse(""), Err(IdError::Empty));
        assert_eq!(Sku::parse("a b"), Err(IdError::BadChar));
        assert_eq!(Sku::parse("a/b"), Err(IdError::BadChar));
        assert_eq!(Sku::parse("a#1"), Err(IdError::BadChar));
        assert_eq!(Sku::parse(&"x".repeat(129)), Err(IdError::TooLong));
        assert!(Sku::parse(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn order_line_ids_round_trip_and_never_parse_as_client_ids() {
        let order = OrderId::parse("o-1").unwrap();
        let id = ReservationId::for_order_line(&order, 3);
        assert_eq!(id.as_str(), "o-1#3");
        assert!(ReservationId::parse(id.as_str()).is_err());
        assert_eq!(ReservationId::parse_stored(id.as_str()), Ok(id));
        assert!(ReservationId::parse_stored("o#x").is_err());
    }

    #[test]
    fn storage_names_round_trip() {
        let key = StockKey::new(Sku::parse("s1").unwrap(), WarehouseId::parse("w1").unwrap());
        assert_eq!(StockKey::from_storage_name(&key.storage_name()), Some(key));
    }
}
