//! Where a key's operations run. On a single node: here. In a cluster, the cluster layer
//! implements `Placement` and decides per key — run here (this node owns the key's vnode), on
//! its owner (forwarded), or not now (the vnode is moving or its owner is unreachable). The
//! actors layer only knows this trait, so it never names the cluster.

use super::ServiceError;
use crate::domain::{Command, Outcome, StockKey, StockView};
use futures::future::BoxFuture;

pub enum KeyOp {
    Apply(Command),
    Read,
}

pub enum KeyAnswer {
    Applied(Outcome),
    View(StockView),
}

pub trait Placement: Send + Sync + 'static {
    fn run(&self, key: StockKey, op: KeyOp) -> BoxFuture<'static, Result<KeyAnswer, ServiceError>>;
}
