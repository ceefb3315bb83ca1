//! The actor shell: stock actors (one per key), the router that activates and passivates them,
//! the order coordinator, and `Node`, the façade the API calls.

pub mod clock;
pub mod order;
pub mod placement;
pub mod router;
pub mod stock;

use crate::domain::{Command, Outcome, StockKey, StockView};
use crate::persistence::{StorageError, WriterHandle};
use placement::{KeyAnswer, KeyOp, Placement};
use router::Directory;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use stock::StockMsg;
use tokio::sync::{oneshot, Semaphore};

/// Failures of the node itself (not business rejections, which are `Outcome`s).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The key's actor stopped before answering; the request was not applied. Retry.
    #[error("the key's actor was restarting; retry")]
    Unavailable,
    /// Too many requests in flight on this node.
    #[error("node overloaded; retry later")]
    Overloaded,
    /// The key did not answer in time (its actor is stuck behind a slow disk or load). The
    /// request may still be applied later: a retry with the same id replays its outcome.
    #[error(
        "the key did not answer within {0} ms; it may still be applied: retry with the same id"
    )]
    Timeout(u64),
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The key's vnode is moving or its owner is down: nothing was applied.
    #[error("the key's vnode is unavailable ({reason}); retry")]
    VnodeUnavailable { retry_after_ms: u64, reason: String },
    /// The request was forwarded to the key's owner and no answer came back (the connection
    /// failed, or the owner failed to answer): it may have been applied. A retry with the same
    /// id replays its outcome. Kept apart from `VnodeUnavailable` so that a client (and the
    /// chaos checker) can tell "not applied" from "unknown".
    #[error("the key's owner did not answer ({reason}); it may have applied the request: retry with the same id")]
    OutcomeUnknown { reason: String },
    /// A peer answered in a way this node cannot interpret.
    #[error("cluster: {0}")]
    Internal(String),
}

/// The node as the API sees it: cheap to clone, safe to share.
#[derive(Clone)]
pub struct Node {
    directory: Arc<Directory>,
    writer: WriterHandle,
    /// One per request admitted and not answered yet; it travels inside the request's reply
    /// (`stock::Reply`), so it is held while the request waits in an actor's mailbox even if
    /// its caller has gone. ractor mailboxes are unbounded: these permits are their bound.
    permits: Arc<Semaphore>,
    admission_wait: Duration,
    /// How long a caller waits for a key's answer.
    answer_timeout: Duration,
    ready: Arc<AtomicBool>,
    clock: Arc<dyn clock::Clock>,
    placement: Arc<OnceLock<Arc<dyn Placement>>>,
}

impl Node {
    pub fn new(
        directory: Arc<Directory>,
        writer: WriterHandle,
        limits: Admission,
        clock: Arc<dyn clock::Clock>,
    ) -> Self {
        Self {
            directory,
            writer,
            permits: Arc::new(Semaphore::new(limits.max_in_flight)),
            admission_wait: Duration::from_secs(1),
            answer_timeout: limits.answer_timeout,
            ready: Arc::new(AtomicBool::new(false)),
            clock,
            placement: Arc::default(),
        }
    }

    /// Makes this node part of a cluster: from now on every key operation goes through
    /// `placement` (which calls `execute_here`/`read_here` for the keys this node owns).
    pub fn set_placement(&self, placement: Arc<dyn Placement>) {
        let _ = self.placement.set(placement);
    }

    pub fn writer(&self) -> &WriterHandle {
        &self.writer
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Runs one command on its key's actor, wherever that lives; answers once the result is
    /// durable.
    pub async fn execute(&self, key: StockKey, command: Command) -> Result<Outcome, ServiceError> {
        match self.placement.get() {
            None => self.execute_here(key, command).await,
            Some(p) => match p.run(key, KeyOp::Apply(command)).await? {
                KeyAnswer::Applied(outcome) => Ok(outcome),
                KeyAnswer::View(_) => Err(ServiceError::Internal("a view for a command".into())),
            },
        }
    }

    /// Reads one key, wherever it lives; shows only durable state (C4).
    pub async fn read(&self, key: StockKey) -> Result<StockView, ServiceError> {
        match self.placement.get() {
            None => self.read_here(key).await,
            Some(p) => match p.run(key, KeyOp::Read).await? {
                KeyAnswer::View(view) => Ok(view),
                KeyAnswer::Applied(_) => {
                    Err(ServiceError::Internal("an outcome for a read".into()))
                }
            },
        }
    }

    /// Runs a command on this node's actor for the key (the caller checked ownership).
    pub async fn execute_here(
        &self,
        key: StockKey,
        command: Command,
    ) -> Result<Outcome, ServiceError> {
        self.ask(key, |reply| StockMsg::Apply { command, reply })
            .await
    }

    pub async fn read_here(&self, key: StockKey) -> Result<StockView, ServiceError> {
        self.ask(key, |reply| StockMsg::Read { reply }).await
    }

    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    async fn ask<T>(
        &self,
        key: StockKey,
        make: impl FnOnce(stock::Reply<T>) -> StockMsg,
    ) -> Result<T, ServiceError> {
        // The timer is armed only when the node is saturated, not on every request.
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(ServiceError::ShuttingDown),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                tokio::time::timeout(self.admission_wait, self.permits.clone().acquire_owned())
                    .await
                    .map_err(|_| ServiceError::Overloaded)?
                    .map_err(|_| ServiceError::ShuttingDown)?
            }
        };
        let (tx, rx) = oneshot::channel();
        self.directory
            .route(key, make(stock::Reply::new(tx, permit)));
        match tokio::time::timeout(self.answer_timeout, rx).await {
            Ok(answer) => answer.map_err(|_| ServiceError::Unavailable)?,
            Err(_) => Err(ServiceError::Timeout(self.answer_timeout.as_millis() as u64)),
        }
    }
}

/// The bounds of a node's request path.
#[derive(Clone, Copy, Debug)]
pub struct Admission {
    /// Requests admitted and not answered yet, at most; beyond it callers wait up to a
    /// second, then get `Overloaded`.
    pub max_in_flight: usize,
    /// How long a caller waits for a key's answer before `Timeout`.
    pub answer_timeout: Duration,
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
