//! `stockring chaos`: a local cluster of real `stockring serve` processes, a client workload
//! against random nodes, faults from a seeded schedule, and a verdict from the outside: the
//! recorded history is checked for per-key linearizability against a model of one ledger.

pub mod check;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod report;
pub mod run;
pub mod workload;

pub use run::{run, ChaosArgs, Verdict};
