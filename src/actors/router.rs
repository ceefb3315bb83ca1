//! The router: one per node. It finds the stock actor of a key, activating it on first use,
//! and passivates actors that are idle or beyond the cap on active actors.
//!
//! Every message to a stock actor goes through the router, so the router is its only sender
//! and ractor's per-sender FIFO orders `Passivate` after everything forwarded before it. A key
//! whose actor is stopping has its messages queued here until the actor has terminated; only
//! then is a new actor activated. So at most one actor per key exists at any moment, and the
//! new one loads only after the old one's last events were handed to the writer.

use super::stock::{StockActor, StockEnv, StockMsg};
use crate::domain::StockKey;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub enum RouterMsg {
    Route {
        key: StockKey,
        msg: StockMsg,
    },
    /// Periodic: passivate actors idle for longer than the configured idle time.
    Sweep,
    ActiveCount {
        reply: tokio::sync::oneshot::Sender<usize>,
    },
    /// Shutdown: passivate every actor (each writes its snapshot); answers once all stopped.
    Drain {
        reply: tokio::sync::oneshot::Sender<()>,
    },
}

#[derive(Clone)]
pub struct RouterConfig {
    pub max_active: usize,
    pub idle: Duration,
}

pub struct Router;

enum Slot {
    Active {
        actor: ActorRef<StockMsg>,
        last_used: Instant,
    },
    /// Told to passivate; messages wait here until it has terminated.
    Stopping { queued: Vec<StockMsg> },
}

pub struct RouterState {
    env: StockEnv,
    config: RouterConfig,
    slots: HashMap<StockKey, Slot>,
    by_actor: HashMap<ActorId, StockKey>,
    active: usize,
    draining: Option<tokio::sync::oneshot::Sender<()>>,
    _sweeper: tokio::task::JoinHandle<()>,
}

impl Actor for Router {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = (StockEnv, RouterConfig);

    async fn pre_start(
        &self,
        myself: ActorRef<RouterMsg>,
        (env, config): Self::Arguments,
    ) -> Result<RouterState, ActorProcessingErr> {
        assert!(config.max_active > 0);
        let period = (config.idle / 4).max(Duration::from_millis(10));
        let sweeper = myself.send_interval(period, || RouterMsg::Sweep);
        Ok(RouterState {
            env,
            config,
            slots: HashMap::new(),
            by_actor: HashMap::new(),
            active: 0,
            draining: None,
            _sweeper: sweeper,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RouterMsg>,
        msg: RouterMsg,
        st: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Route { key, msg } => route(&myself, st, key, msg)?,
            RouterMsg::Sweep => {
                let idle = st.config.idle;
                let now = Instant::now();
                let stale: Vec<StockKey> = st
                    .slots
                    .iter()
                    .filter_map(|(k, s)| match s {
                        Slot::Active { last_used, .. }
                            if now.duration_since(*last_used) >= idle =>
                        {
                            Some(k.clone())
                        }
                        _ => None,
                    })
                    .collect();
                for key in stale {
                    passivate(st, &key);
                }
            }
            RouterMsg::ActiveCount { reply } => {
                let _ = reply.send(st.active);
            }
            RouterMsg::Drain { reply } => {
                let keys: Vec<StockKey> = st.slots.keys().cloned().collect();
                for key in keys {
                    passivate(st, &key);
                }
                st.draining = Some(reply);
                check_drained(st);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RouterMsg>,
        evt: SupervisionEvent,
        st: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        let (id, failure) = match &evt {
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell.get_id(), None),
            SupervisionEvent::ActorFailed(cell, err) => (cell.get_id(), Some(err.to_string())),
            _ => return Ok(()),
        };
        let Some(key) = st.by_actor.remove(&id) else {
            return Ok(());
        };
        let queued = match st.slots.remove(&key) {
            Some(Slot::Active { .. }) => {
                st.active -= 1;
                Vec::new()
            }
            Some(Slot::Stopping { queued }) => queued,
            None => Vec::new(),
        };
        metrics::gauge!("stockring_active_actors").set(st.active as f64);
        if let Some(err) = failure {
            // Events are submitted whole after a successful apply, so the journal holds no part
            // of a failed step; the next message rebuilds the key from disk. Queued messages
            // are dropped and their callers get a retryable error.
            tracing::error!(key = %key, error = %err, "stock actor failed");
            metrics::counter!("stockring_actor_failures_total").increment(1);
            check_drained(st);
            return Ok(());
        }
        if st.draining.is_some() {
            // Shutting down: the queued callers get a retryable error.
            drop(queued);
        } else {
            for msg in queued {
                route(&myself, st, key.clone(), msg)?;
            }
        }
        check_drained(st);
        Ok(())
    }
}

fn check_drained(st: &mut RouterState) {
    if st.slots.is_empty() {
        if let Some(reply) = st.draining.take() {
            let _ = reply.send(());
        }
    }
}

fn route(
    myself: &ActorRef<RouterMsg>,
    st: &mut RouterState,
    key: StockKey,
    msg: StockMsg,
) -> Result<(), ActorProcessingErr> {
    match st.slots.get_mut(&key) {
        Some(Slot::Active { actor, last_used }) => {
            *last_used = Instant::now();
            // A send fails only if the actor died unseen; the caller's reply port is dropped
            // with the message and it gets a retryable error.
            let _ = actor.send_message(msg);
        }
        Some(Slot::Stopping { queued }) => queued.push(msg),
        None => {
            let (actor, _) = ractor::ActorRuntime::spawn_linked_instant(
                None,
                StockActor,
                (key.clone(), st.env.clone()),
                myself.get_cell(),
            )?;
            let _ = actor.send_message(msg);
            st.by_actor.insert(actor.get_id(), key.clone());
            st.slots.insert(
                key,
                Slot::Active {
                    actor,
                    last_used: Instant::now(),
                },
            );
            st.active += 1;
            metrics::gauge!("stockring_active_actors").set(st.active as f64);
            if st.active > st.config.max_active {
                shed(st);
            }
        }
    }
    Ok(())
}

/// Passivates the least recently used tenth of the cap, so the O(n) scan is amortized.
fn shed(st: &mut RouterState) {
    let target = st.config.max_active - st.config.max_active / 10;
    let excess = st.active.saturating_sub(target);
    let mut lru: Vec<(Instant, StockKey)> = st
        .slots
        .iter()
        .filter_map(|(k, s)| match s {
            Slot::Active { last_used, .. } => Some((*last_used, k.clone())),
            Slot::Stopping { .. } => None,
        })
        .collect();
    let excess = excess.min(lru.len());
    if excess == 0 {
        return;
    }
    lru.select_nth_unstable_by_key(excess - 1, |(t, _)| *t);
    for (_, key) in lru.into_iter().take(excess) {
        passivate(st, &key);
    }
}

fn passivate(st: &mut RouterState, key: &StockKey) {
    if let Some(slot) = st.slots.get_mut(key) {
        if let Slot::Active { actor, .. } = slot {
            let _ = actor.send_message(StockMsg::Passivate);
            *slot = Slot::Stopping { queued: Vec::new() };
            st.active -= 1;
        }
    }
    metrics::gauge!("stockring_active_actors").set(st.active as f64);
}
