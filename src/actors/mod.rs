//! The actor shell: stock actors (one per key), the router that activates and passivates them,
//! the order coordinator, and `Node`, the façade the API calls.

pub mod clock;
pub mod order;
pub mod router;
pub mod stock;

use crate::domain::{Command, Outcome, StockKey, StockView};
use crate::persistence::{StorageError, WriterHandle};
use router::Directory;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// The node as the API sees it: cheap to clone, safe to share.
#[derive(Clone)]
pub struct Node {
    directory: Arc<Directory>,
    writer: WriterHandle,
    permits: Arc<Semaphore>,
    admission_wait: Duration,
    ready: Arc<AtomicBool>,
    clock: Arc<dyn clock::Clock>,
}

impl Node {
    pub fn new(
        directory: Arc<Directory>,
        writer: WriterHandle,
        max_in_flight: usize,
        clock: Arc<dyn clock::Clock>,
    ) -> Self {
        Self {
            directory,
            writer,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            admission_wait: Duration::from_secs(1),
            ready: Arc::new(AtomicBool::new(false)),
            clock,
        }
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

    /// Runs one command on its key's actor; answers once the result is durable.
    pub async fn execute(&self, key: StockKey, command: Command) -> Result<Outcome, ServiceError> {
        self.ask(key, |reply| StockMsg::Apply { command, reply })
            .await
    }

    /// Reads one key; shows only durable state (C4).
    pub async fn read(&self, key: StockKey) -> Result<StockView, ServiceError> {
        self.ask(key, |reply| StockMsg::Read { reply }).await
    }

    async fn ask<T>(
        &self,
        key: StockKey,
        make: impl FnOnce(stock::Reply<T>) -> StockMsg,
    ) -> Result<T, ServiceError> {
        // ractor mailboxes are unbounded; admission is bounded here instead. The timer is
        // armed only when the node is saturated, not on every request.
        let permit = match self.permits.try_acquire() {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(ServiceError::ShuttingDown),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                tokio::time::timeout(self.admission_wait, self.permits.acquire())
                    .await
                    .map_err(|_| ServiceError::Overloaded)?
                    .map_err(|_| ServiceError::ShuttingDown)?
            }
        };
        let (tx, rx) = oneshot::channel();
        self.directory.route(key, make(tx));
        let result = rx.await.map_err(|_| ServiceError::Unavailable)?;
        drop(permit);
        result
    }
}
