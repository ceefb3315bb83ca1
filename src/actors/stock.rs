//! The stock actor: the single owner of one (sku, warehouse). It is the shell around one
//! `StockState`: it applies commands one at a time (C4: one order per key), hands the events
//! to the group-commit writer and lets the reply leave only once they are durable (C2).
//!
//! The actor does not wait for the fsync before taking its next message: it pipelines. That is
//! safe because every reply, including reads and replays, is released only after everything
//! this actor submitted before it is durable (`inflight` counts submitted, not yet durable
//! requests; a reply that finds it non-zero goes through the writer as a barrier). So no client
//! ever sees state that a crash could take back.

use super::clock::Clock;
use super::ServiceError;
use crate::domain::ledger::RecordKey;
use crate::domain::{Command, Outcome, StockKey, StockState, StockView};
use crate::persistence::codec;
use crate::persistence::keys::KeyWrite;
use crate::persistence::{Request, StorageError, WriterHandle};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

/// Where a key's answer goes. It carries the caller's admission permit: the permit is
/// returned when the answer is sent (or the message is dropped), not when the caller stops
/// waiting, so the permits bound the messages queued at the actors, wherever the callers are.
pub struct Reply<T> {
    tx: oneshot::Sender<Result<T, ServiceError>>,
    /// `None` for work the actor makes itself (its expiry timer), which no caller waits for.
    _permit: Option<OwnedSemaphorePermit>,
}

impl<T> Reply<T> {
    pub fn new(tx: oneshot::Sender<Result<T, ServiceError>>, permit: OwnedSemaphorePermit) -> Self {
        Self {
            tx,
            _permit: Some(permit),
        }
    }

    fn internal(tx: oneshot::Sender<Result<T, ServiceError>>) -> Self {
        Self { tx, _permit: None }
    }

    /// Sends the answer (a caller that gave up is not an error) and returns the permit.
    pub fn send(self, answer: Result<T, ServiceError>) {
        let _ = self.tx.send(answer);
    }
}
type ExpiryTimer = tokio::task::JoinHandle<Result<(), ractor::MessagingErr<StockMsg>>>;

// Local-only (never remotable: a remotable actor is mirrored on every peer).
impl ractor::Message for StockMsg {}

pub enum StockMsg {
    Apply {
        command: Command,
        reply: Reply<Outcome>,
    },
    Read {
        reply: Reply<StockView>,
    },
    /// The earliest hold is due (sent by this actor's own timer).
    ExpiryDue,
    /// Write a final snapshot and stop; sent by the router, after which it sends nothing more.
    Passivate,
}

/// What every stock actor shares.
#[derive(Clone)]
pub struct StockEnv {
    pub writer: WriterHandle,
    pub clock: Arc<dyn Clock>,
    pub snapshot_every: u64,
    pub outcome_retention_ms: u64,
}

pub struct StockActor;

pub struct StockActorState {
    key_name: Arc<str>,
    env: StockEnv,
    ledger: StockState,
    inflight: Arc<AtomicU64>,
    events_since_snapshot: u64,
    /// The records changed since the last snapshot: what the next one stores.
    touched: BTreeSet<RecordKey>,
    /// Record states the key's stored segment generation holds (live or dead), as far as
    /// this actor knows: when to rewrite it (see `persistence::keys`).
    stored_records: u64,
    timer: Option<(u64, ExpiryTimer)>,
}

impl Actor for StockActor {
    type Msg = StockMsg;
    type State = StockActorState;
    type Arguments = (StockKey, StockEnv);

    async fn pre_start(
        &self,
        _: ActorRef<StockMsg>,
        (key, env): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(StockActorState {
            key_name: key.storage_name().into(),
            env,
            ledger: StockState::default(),
            inflight: Arc::new(AtomicU64::new(0)),
            events_since_snapshot: 0,
            touched: BTreeSet::new(),
            stored_records: 0,
            timer: None,
        })
    }

    /// Loads the key through the writer, so the load is ordered after every event a previous
    /// incarnation of this actor submitted. Messages wait in the mailbox meanwhile.
    async fn post_start(
        &self,
        myself: ActorRef<StockMsg>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (tx, rx) = oneshot::channel();
        let reply = Box::new(move |r| {
            let _ = tx.send(r);
        });
        st.env
            .writer
            .submit(Request::LoadKey {
                key: st.key_name.clone(),
                reply,
            })
            .await?;
        let loaded = rx.await.map_err(|_| StorageError::WriterStopped)??;
        st.ledger = loaded.state;
        st.events_since_snapshot = loaded.tail_events;
        st.touched = loaded.touched;
        st.stored_records = loaded.stored_records;
        holds_active().increment(st.ledger.held_count() as f64);
        metrics::counter!("stockring_activations_total").increment(1);
        arm_timer(&myself, st);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<StockMsg>,
        msg: StockMsg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StockMsg::Apply { command, reply } => {
                let now = st.env.clock.now_ms();
                let holds_before = st.ledger.held_count();
                let (outcome, events) = st.ledger.apply(&command, now);
                record_hold_change(holds_before, &st.ledger, &events);
                submit(st, events, outcome, reply).await?;
            }
            StockMsg::Read { reply } => {
                let now = st.env.clock.now_ms();
                // A read never shows an expiry that is not journaled: with the clock stepped
                // back across a restart, an unjournaled one would come back as a live hold.
                let holds_before = st.ledger.held_count();
                if let Some(event) = st.ledger.expire_due(now) {
                    record_hold_change(holds_before, &st.ledger, std::slice::from_ref(&event));
                    journal(st, vec![event], Box::new(|_| {})).await?;
                }
                let view = st.ledger.view(now);
                reply_when_durable(st, view, reply).await?;
            }
            StockMsg::ExpiryDue => {
                st.timer = None;
                let holds_before = st.ledger.held_count();
                if let Some(event) = st.ledger.expire_due(st.env.clock.now_ms()) {
                    record_hold_change(holds_before, &st.ledger, std::slice::from_ref(&event));
                    let (tx, _rx) = oneshot::channel();
                    submit(st, vec![event], (), Reply::internal(tx)).await?;
                }
            }
            StockMsg::Passivate => {
                if st.events_since_snapshot > 0 {
                    snapshot(st).await?;
                }
                myself.stop(Some("passivated".into()));
            }
        }
        arm_timer(&myself, st);
        Ok(())
    }

    async fn post_stop(
        &self,
        _: ActorRef<StockMsg>,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((_, handle)) = st.timer.take() {
            handle.abort();
        }
        holds_active().decrement(st.ledger.held_count() as f64);
        metrics::counter!("stockring_passivations_total").increment(1);
        Ok(())
    }
}

/// The gauge is touched on every apply: its handle is looked up once, not per call.
fn holds_active() -> &'static metrics::Gauge {
    static GAUGE: std::sync::OnceLock<metrics::Gauge> = std::sync::OnceLock::new();
    GAUGE.get_or_init(|| metrics::gauge!("stockring_holds_active"))
}

fn record_hold_change(before: u64, ledger: &StockState, events: &[crate::domain::Event]) {
    let after = ledger.held_count();
    holds_active().increment(after as f64 - before as f64);
    for e in events {
        if let crate::domain::Event::Expired {
            reservation_ids, ..
        } = e
        {
            metrics::counter!("stockring_holds_expired_total")
                .increment(reservation_ids.len() as u64);
        }
    }
}

/// Journals `events` (if any) and sends `value` once they and everything before are durable.
async fn submit<T: Send + 'static>(
    st: &mut StockActorState,
    events: Vec<crate::domain::Event>,
    value: T,
    reply: Reply<T>,
) -> Result<(), StorageError> {
    if events.is_empty() {
        return reply_when_durable(st, value, reply).await;
    }
    let done = Box::new(move |r: Result<(), StorageError>| {
        reply.send(r.map(|()| value).map_err(ServiceError::from));
    });
    journal(st, events, done).await?;
    // A snapshot costs what its events touched (or, rarely, a rewrite of the live records,
    // see `persistence::keys`), not what the key remembers: a fixed cadence keeps it O(1)
    // per event.
    if st.events_since_snapshot >= st.env.snapshot_every {
        snapshot(st).await?;
    }
    Ok(())
}

/// Hands `events` (just applied to the ledger) to the writer; `done` runs once they are
/// durable. Until then they count as in flight, so no later reply leaves before them.
async fn journal(
    st: &mut StockActorState,
    events: Vec<crate::domain::Event>,
    done: crate::persistence::writer::Done,
) -> Result<(), StorageError> {
    let n = events.len() as u64;
    let first_version = st.ledger.version() - n + 1;
    for event in &events {
        event.touched(|k| {
            st.touched.insert(k);
        });
    }
    let blobs = events.iter().map(codec::encode_event).collect();
    let inflight = st.inflight.clone();
    inflight.fetch_add(1, Ordering::AcqRel);
    let done = Box::new(move |r: Result<(), StorageError>| {
        inflight.fetch_sub(1, Ordering::AcqRel);
        done(r);
    });
    // If the writer is gone the memory state is ahead of the disk: fail the actor so that it
    // is rebuilt from what is durable.
    st.env
        .writer
        .submit(Request::Append {
            key: st.key_name.clone(),
            first_version,
            events: blobs,
            done,
        })
        .await?;
    st.events_since_snapshot += n;
    Ok(())
}

async fn reply_when_durable<T: Send + 'static>(
    st: &StockActorState,
    value: T,
    reply: Reply<T>,
) -> Result<(), StorageError> {
    if st.inflight.load(Ordering::Acquire) == 0 {
        reply.send(Ok(value));
        return Ok(());
    }
    let done = Box::new(move |r: Result<(), StorageError>| {
        reply.send(r.map(|()| value).map_err(ServiceError::from));
    });
    st.env.writer.submit(Request::Barrier { done }).await
}

/// Forgets outcomes past retention (a journaled `Forgot`, so every copy of the key forgets
/// the same ids), then stores the key: its scalars and the records changed since the last
/// snapshot. The writer drops the journal rows it covers in the same transaction.
async fn snapshot(st: &mut StockActorState) -> Result<(), StorageError> {
    let now = st.env.clock.now_ms();
    if let Some(event) = st.ledger.forget_due(now, st.env.outcome_retention_ms) {
        journal(st, vec![event], Box::new(|_| {})).await?;
    }
    let write = KeyWrite::of(&st.ledger, &st.touched, st.stored_records);
    st.stored_records = match write.rewrites() {
        true => write.records(),
        false => st.stored_records + write.records(),
    };
    st.touched.clear();
    let request = Request::Snapshot {
        key: st.key_name.clone(),
        version: st.ledger.version(),
        write,
        done: None,
    };
    st.env.writer.submit(request).await?;
    st.events_since_snapshot = 0;
    Ok(())
}

/// Keeps exactly one timer armed for the earliest hold's expiry.
fn arm_timer(myself: &ActorRef<StockMsg>, st: &mut StockActorState) {
    let next = st.ledger.next_expiry_ms();
    if st.timer.as_ref().map(|(at, _)| *at) == next {
        return;
    }
    if let Some((_, handle)) = st.timer.take() {
        handle.abort();
    }
    if let Some(at) = next {
        let delay = at.saturating_sub(st.env.clock.now_ms());
        // The timer may fire a millisecond early by the wall clock; expire_due then finds
        // nothing due and the timer is re-armed. Expiry is decided by the ledger, not the timer.
        let handle = myself.send_after(Duration::from_millis(delay), || StockMsg::ExpiryDue);
        st.timer = Some((at, handle));
    }
}
