//! stockring: a distributed inventory reservation service.
//!
//! Layers, bottom to top (a lower layer never names a higher one):
//! - [`domain`]: the pure per-key ledger and order state machines;
//! - [`persistence`]: SQLite journal, snapshots, order records, the group-commit writer;
//! - [`actors`]: one ractor actor per (sku, warehouse), the router, the order coordinator;
//! - [`api`]: HTTP/JSON, metrics, health;
//! - [`bench`]: the built-in load generator.
//!
//! See `ARCHITECTURE.md` for how a reservation flows through them.

pub mod actors;
pub mod api;
pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod limits;
pub mod persistence;
pub mod server;
