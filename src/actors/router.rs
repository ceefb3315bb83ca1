//! Finding, activating and passivating stock actors: one `Directory` per node, consulted
//! directly by request tasks (no extra actor hop on the hot path), plus the `Router` actor that
//! supervises the stock actors and runs the periodic idle sweep, the cap and the drain.
//!
//! Every send to a stock actor (requests and `Passivate`) happens under its key's shard lock,
//! so the sends to one actor are totally ordered and `Passivate` comes after every message sent
//! before it. A key whose actor is stopping has its messages queued in its slot until the
//! actor has terminated; only then is a new actor activated (and handed the queue). So at most
//! one actor per key exists at any moment, and a new one loads only after the old one's last
//! events were handed to the writer.

use super::stock::{StockActor, StockEnv, StockMsg};
use crate::domain::placement::hash_key;
use crate::domain::StockKey;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

#[derive(Clone)]
pub struct RouterConfig {
    pub max_active: usize,
    pub idle: Duration,
}

enum Slot {
    Active {
        actor: ActorRef<StockMsg>,
        last_used: Instant,
        /// The key's placement hash (`domain::placement`), kept so that finding a vnode's
        /// actors does not hash every key again.
        placement: u64,
    },
    /// Told to passivate; messages wait here until it has terminated.
    Stopping {
        queued: Vec<StockMsg>,
        placement: u64,
    },
}

pub struct Directory {
    shards: Vec<Mutex<HashMap<StockKey, Slot>>>,
    hasher: RandomState,
    by_actor: Mutex<HashMap<ActorId, StockKey>>,
    active: AtomicUsize,
    draining: AtomicBool,
    /// A `Shed` is queued at the router: one is enough (each scans every slot).
    shed_pending: AtomicBool,
    env: StockEnv,
    config: RouterConfig,
    router: OnceLock<ActorRef<RouterMsg>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a shard lock cannot leave a slot half-written (every update is a
    // single insert or remove), so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Directory {
    pub fn new(env: StockEnv, config: RouterConfig) -> Arc<Self> {
        assert!(config.max_active > 0);
        Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            by_actor: Mutex::default(),
            active: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            shed_pending: AtomicBool::new(false),
            env,
            config,
            router: OnceLock::new(),
        })
    }

    fn shard(&self, key: &StockKey) -> MutexGuard<'_, HashMap<StockKey, Slot>> {
        lock(&self.shards[self.hasher.hash_one(key) as usize % SHARDS])
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Delivers `msg` to the key's actor, activating one if there is none. If the message
    /// cannot be delivered, it is dropped and the caller's reply port with it (a retryable
    /// error for the caller; nothing was applied).
    pub fn route(&self, key: StockKey, msg: StockMsg) {
        let mut shard = self.shard(&key);
        match shard.get_mut(&key) {
            Some(Slot::Active {
                actor, last_used, ..
            }) => {
                *last_used = Instant::now();
                let _ = actor.send_message(msg);
            }
            Some(Slot::Stopping { queued, .. }) => queued.push(msg),
            None => self.activate(&mut shard, key, vec![msg]),
        }
        drop(shard);
        if self.active() > self.config.max_active && !self.shed_pending.swap(true, Ordering::AcqRel)
        {
            if let Some(router) = self.router.get() {
                let _ = router.send_message(RouterMsg::Shed);
            }
        }
    }

    fn activate(&self, shard: &mut HashMap<StockKey, Slot>, key: StockKey, msgs: Vec<StockMsg>) {
        let Some(router) = self.router.get() else {
            return;
        };
        // The actor is known by id before its supervisor can hear of its end: an actor that
        // fails at once (its load fails) is reported to the router, whose `stopped` takes
        // this lock first. Recorded only after the spawn, its end could be missed, leaving a
        // slot that routes to a dead actor (or queues for it) for good.
        let mut by_actor = lock(&self.by_actor);
        let spawned = ractor::ActorRuntime::spawn_linked_instant(
            None,
            StockActor,
            (key.clone(), self.env.clone()),
            router.get_cell(),
        );
        let actor = match spawned {
            Ok((actor, _)) => actor,
            Err(e) => {
                tracing::error!(key = %key, error = %e, "could not spawn a stock actor");
                return;
            }
        };
        by_actor.insert(actor.get_id(), key.clone());
        drop(by_actor);
        for msg in msgs {
            let _ = actor.send_message(msg);
        }
        let placement = hash_key(key.sku.as_str(), key.warehouse.as_str());
        shard.insert(
            key,
            Slot::Active {
                actor,
                last_used: Instant::now(),
                placement,
            },
        );
        let active = self.active.fetch_add(1, Ordering::AcqRel) + 1;
        metrics::gauge!("stockring_active_actors").set(active as f64);
    }

    fn passivate(&self, key: &StockKey) {
        let mut shard = self.shard(key);
        if let Some(slot) = shard.get_mut(key) {
            if let Slot::Active {
                actor, placement, ..
            } = slot
            {
                let _ = actor.send_message(StockMsg::Passivate);
                *slot = Slot::Stopping {
                    queued: Vec::new(),
                    placement: *placement,
                };
                let active = self.active.fetch_sub(1, Ordering::AcqRel) - 1;
                metrics::gauge!("stockring_active_actors").set(active as f64);
            }
        }
    }

    /// A stock actor has terminated (or failed): free its slot; hand the messages that waited
    /// for it to a new actor, unless it failed or the node is draining (then those callers get
    /// a retryable error). Events are submitted whole after a successful apply, so a failed
    /// actor left no part of a step in the journal; the next message rebuilds the key.
    fn stopped(&self, id: &ActorId, failed: bool) {
        let Some(key) = lock(&self.by_actor).remove(id) else {
            return;
        };
        let mut shard = self.shard(&key);
        match shard.remove(&key) {
            Some(Slot::Active { .. }) => {
                let active = self.active.fetch_sub(1, Ordering::AcqRel) - 1;
                metrics::gauge!("stockring_active_actors").set(active as f64);
            }
            Some(Slot::Stopping { queued, .. })
                if !failed && !queued.is_empty() && !self.draining.load(Ordering::Acquire) =>
            {
                self.activate(&mut shard, key, queued);
            }
            Some(Slot::Stopping { .. }) => {}
            None => {}
        }
    }

    /// Keys whose actor has been idle for at least `idle`.
    fn idle_keys(&self, idle: Duration) -> Vec<StockKey> {
        let now = Instant::now();
        let mut keys = Vec::new();
        for shard in &self.shards {
            for (key, slot) in lock(shard).iter() {
                if let Slot::Active { last_used, .. } = slot {
                    if now.duration_since(*last_used) >= idle {
                        keys.push(key.clone());
                    }
                }
            }
        }
        keys
    }

    /// The `n` least recently used active keys.
    fn least_recent(&self, n: usize) -> Vec<StockKey> {
        let mut all: Vec<(Instant, StockKey)> = Vec::new();
        for shard in &self.shards {
            for (key, slot) in lock(shard).iter() {
                if let Slot::Active { last_used, .. } = slot {
                    all.push((*last_used, key.clone()));
                }
            }
        }
        let n = n.min(all.len());
        if n == 0 {
            return Vec::new();
        }
        all.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
        all.into_iter().take(n).map(|(_, k)| k).collect()
    }

    /// Passivates every active actor whose key's placement hash matches (a vnode handed away
    /// must leave no actor with its state behind). Returns how many matching actors exist,
    /// active or stopping: call again until it is 0.
    pub fn passivate_matching(&self, matches: impl Fn(u64) -> bool) -> usize {
        let mut active = Vec::new();
        let mut stopping = 0;
        for shard in &self.shards {
            for (key, slot) in lock(shard).iter() {
                match slot {
                    Slot::Active { placement, .. } if matches(*placement) => {
                        active.push(key.clone())
                    }
                    Slot::Stopping { placement, .. } if matches(*placement) => stopping += 1,
                    _ => {}
                }
            }
        }
        for key in &active {
            self.passivate(key);
        }
        active.len() + stopping
    }

    fn all_keys(&self) -> Vec<StockKey> {
        self.shards
            .iter()
            .flat_map(|s| lock(s).keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.shards.iter().all(|s| lock(s).is_empty())
    }
}

// Local-only: with `ractor_cluster` linked, every message type says whether it is remotable.
impl ractor::Message for RouterMsg {}

pub enum RouterMsg {
    /// Periodic: passivate actors idle for longer than the configured idle time.
    Sweep,
    /// Over the cap: passivate the least recently used tenth of it.
    Shed,
    /// Shutdown: passivate every actor (each writes its snapshot); answers once all stopped.
    Drain {
        reply: tokio::sync::oneshot::Sender<()>,
    },
}

/// Supervises the stock actors and runs the directory's housekeeping.
pub struct Router;

pub struct RouterState {
    directory: Arc<Directory>,
    draining: Option<tokio::sync::oneshot::Sender<()>>,
    _sweeper: tokio::task::JoinHandle<()>,
}

impl Actor for Router {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = Arc<Directory>;

    async fn pre_start(
        &self,
        myself: ActorRef<RouterMsg>,
        directory: Arc<Directory>,
    ) -> Result<RouterState, ActorProcessingErr> {
        if directory.router.set(myself.clone()).is_err() {
            return Err("a directory has one router".into());
        }
        let period = (directory.config.idle / 4).max(Duration::from_millis(10));
        let sweeper = myself.send_interval(period, || RouterMsg::Sweep);
        Ok(RouterState {
            directory,
            draining: None,
            _sweeper: sweeper,
        })
    }

    async fn handle(
        &self,
        _: ActorRef<RouterMsg>,
        msg: RouterMsg,
        st: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        let d = &st.directory;
        match msg {
            RouterMsg::Sweep => {
                for key in d.idle_keys(d.config.idle) {
                    d.passivate(&key);
                }
            }
            RouterMsg::Shed => {
                d.shed_pending.store(false, Ordering::Release);
                let target = d.config.max_active - d.config.max_active / 10;
                for key in d.least_recent(d.active().saturating_sub(target)) {
                    d.passivate(&key);
                }
            }
            RouterMsg::Drain { reply } => {
                d.draining.store(true, Ordering::Release);
                for key in d.all_keys() {
                    d.passivate(&key);
                }
                st.draining = Some(reply);
                check_drained(st);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<RouterMsg>,
        evt: SupervisionEvent,
        st: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match &evt {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                st.directory.stopped(&cell.get_id(), false)
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!(actor = %cell.get_id(), error = %err, "stock actor failed");
                metrics::counter!("stockring_actor_failures_total").increment(1);
                st.directory.stopped(&cell.get_id(), true);
            }
            _ => return Ok(()),
        }
        check_drained(st);
        Ok(())
    }
}

fn check_drained(st: &mut RouterState) {
    if st.draining.is_some() && st.directory.is_empty() {
        if let Some(reply) = st.draining.take() {
            let _ = reply.send(());
        }
    }
}
