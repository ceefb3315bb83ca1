//! Forwarding key operations to their owner, many per message. One task per peer takes what
//! has queued up while its previous messages were in flight and sends it as one `Forward`:
//! under light load a message carries one operation (no added latency), under heavy load
//! hundreds (fewer, larger frames; the per-message cost of ractor_cluster is paid once).

use super::transport::{Transport, TransportError};
use super::wire::{ForwardItem, ForwardResult, PeerReply, PeerRequest};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};

type Pending = (
    ForwardItem,
    oneshot::Sender<Result<ForwardResult, TransportError>>,
);

/// Most operations in one message.
const MAX_BATCH: usize = 512;

#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::Sender<Pending>,
}

impl Forwarder {
    pub fn spawn(
        peer: String,
        transport: Arc<dyn Transport>,
        in_flight: usize,
        timeout: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel(in_flight * MAX_BATCH);
        tokio::spawn(run(peer, transport, rx, in_flight, timeout));
        Self { tx }
    }

    pub async fn send(&self, item: ForwardItem) -> Result<ForwardResult, TransportError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((item, tx))
            .await
            .map_err(|_| TransportError::Unreachable("forwarder stopped".into()))?;
        rx.await
            .map_err(|_| TransportError::Unreachable("forwarder stopped".into()))?
    }
}

async fn run(
    peer: String,
    transport: Arc<dyn Transport>,
    mut rx: mpsc::Receiver<Pending>,
    in_flight: usize,
    timeout: Duration,
) {
    let permits = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = rx.recv().await {
        // Wait for a free slot first: whatever queues meanwhile joins this batch.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        metrics::histogram!("stockring_forward_batch_size").record(batch.len() as f64);
        let (items, replies): (Vec<ForwardItem>, Vec<_>) = batch.into_iter().unzip();
        let call = transport.call(&peer, &PeerRequest::Forward(items), timeout);
        tokio::spawn(async move {
            let _permit = permit;
            match call.await {
                Ok(PeerReply::Forwarded(results)) if results.len() == replies.len() => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(Ok(result));
                    }
                }
                Ok(other) => {
                    tracing::warn!(?other, "unexpected answer to a forward");
                    for reply in replies {
                        let _ = reply.send(Err(TransportError::BadReply));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}
