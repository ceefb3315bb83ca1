//! The load itself: seeding stock, choosing keys, and the measured worker loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use rand::distributions::{Distribution, Uniform};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::Zipf;

use super::client::Api;
use super::report::Tally;
use super::wire::ReserveRequest;

/// Every bench key lives in this one warehouse; the key space varies by sku.
pub const WAREHOUSE: &str = "w1";
/// Long enough that no hold expires during a run, so `reserved` only ever grows.
pub const RESERVE_TTL_MS: u64 = 600_000;

/// Which key each attempt targets.
#[derive(Debug, Clone)]
pub enum KeyPicker {
    /// The flash sale: every attempt hits key 0.
    Single,
    Uniform(Uniform<u64>),
    /// Rank 1 (key 0) is the hottest key.
    Zipf(Zipf<f64>),
}

impl KeyPicker {
    pub fn uniform(keys: u64) -> anyhow::Result<Self> {
        anyhow::ensure!(keys >= 1, "--keys must be at least 1");
        Ok(Self::Uniform(Uniform::new(0, keys)))
    }

    pub fn zipf(keys: u64, s: f64) -> anyhow::Result<Self> {
        let dist = Zipf::new(keys, s).map_err(|e| anyhow::anyhow!("--keys/--zipf-s: {e}"))?;
        Ok(Self::Zipf(dist))
    }

    /// An index into the run's sku list.
    fn pick(&self, rng: &mut impl Rng, keys: usize) -> usize {
        let index = match self {
            Self::Single => 0,
            Self::Uniform(dist) => dist.sample(rng),
            // Zipf yields a rank in [1, keys] as a float.
            Self::Zipf(dist) => (dist.sample(rng) as u64).saturating_sub(1),
        };
        usize::try_from(index).map_or(0, |i| i.min(keys.saturating_sub(1)))
    }
}

/// How much load to offer before the workers stop.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// Keep going until this much time has passed (uniform, zipf).
    Timed(Duration),
    /// Make exactly this many attempts in total, whatever it takes (flash).
    Attempts(u64),
}

/// What the workers share while running; `Budget` turned into something they can claim from.
enum Gate {
    Until(Instant),
    Counter { next: AtomicU64, total: u64 },
}

impl Gate {
    fn open(budget: Budget) -> Self {
        match budget {
            Budget::Timed(duration) => Self::Until(Instant::now() + duration),
            Budget::Attempts(total) => Self::Counter {
                next: AtomicU64::new(0),
                total,
            },
        }
    }

    /// Whether the calling worker may make one more attempt.
    fn admit(&self) -> bool {
        match self {
            Self::Until(deadline) => Instant::now() < *deadline,
            Self::Counter { next, total } => next.fetch_add(1, Ordering::Relaxed) < *total,
        }
    }
}

/// Everything a measured run needs.
pub struct Plan {
    pub api: Api,
    /// Starts every reservation id of this run; unique per invocation, so a run against keys
    /// an earlier run used (`--run-id`) makes new reservations instead of replaying old ones.
    pub id_prefix: String,
    /// Reservation ids are padded to this length (0: not padded).
    pub id_len: usize,
    pub skus: Vec<String>,
    pub picker: KeyPicker,
    pub budget: Budget,
    pub clients: usize,
}

struct Shared {
    plan: Plan,
    gate: Gate,
    done: Arc<AtomicU64>,
}

/// Sets on-hand on every key, `concurrency` PUTs at a time. Any failure aborts the run: a
/// measurement against half-seeded keys would be meaningless.
pub async fn seed(
    api: &Api,
    run_id: &str,
    skus: &[String],
    on_hand: u64,
    concurrency: usize,
) -> anyhow::Result<()> {
    futures::stream::iter(skus.iter().enumerate())
        .map(|(i, sku)| api.set_stock(sku, WAREHOUSE, on_hand, format!("setup-{run_id}-{i}")))
        .buffer_unordered(concurrency.max(1))
        .try_collect::<()>()
        .await
        .map_err(|e| e.context("setup failed"))
}

/// Runs the measured phase: `plan.clients` workers until the budget is spent. `done` counts
/// finished attempts for the progress bar. Returns the merged tally and the wall time, from the
/// first attempt to the last answer.
pub async fn drive(plan: Plan, done: Arc<AtomicU64>) -> anyhow::Result<(Tally, Duration)> {
    let clients = plan.clients;
    let mut tallies = Vec::with_capacity(clients);
    for _ in 0..clients {
        tallies.push(Tally::new()?);
    }
    let started = Instant::now();
    let shared = Arc::new(Shared {
        gate: Gate::open(plan.budget),
        plan,
        done,
    });
    let workers: Vec<_> = tallies
        .into_iter()
        .enumerate()
        .map(|(client, tally)| tokio::spawn(worker(Arc::clone(&shared), client, tally)))
        .collect();
    let mut total = Tally::new()?;
    for joined in futures::future::join_all(workers).await {
        total.merge(joined?)?;
    }
    Ok((total, started.elapsed()))
}

/// `{prefix}-{client}-{seq}`, zero-padded before the client number to `len` characters.
fn reservation_id(prefix: &str, client: usize, seq: u64, len: usize) -> String {
    let tail = format!("{client}-{seq}");
    let pad = len.saturating_sub(prefix.len() + 1 + tail.len());
    format!("{prefix}-{}{tail}", "0".repeat(pad))
}

/// One client: reserve qty 1 on a picked key, record, repeat. Never retries: a failure is a
/// data point, and retrying would hide it and distort the latency of the next attempt.
async fn worker(shared: Arc<Shared>, client: usize, mut tally: Tally) -> Tally {
    let plan = &shared.plan;
    let mut rng = StdRng::from_entropy();
    let mut seq: u64 = 0;
    while shared.gate.admit() {
        let key = plan.picker.pick(&mut rng, plan.skus.len());
        let body = ReserveRequest {
            sku: plan.skus[key].clone(),
            warehouse: WAREHOUSE.to_owned(),
            qty: 1,
            reservation_id: reservation_id(&plan.id_prefix, client, seq, plan.id_len),
            ttl_ms: RESERVE_TTL_MS,
        };
        seq += 1;
        let sent = Instant::now();
        let outcome = plan.api.reserve(&body).await;
        tally.record(outcome, sent.elapsed());
        shared.done.fetch_add(1, Ordering::Relaxed);
    }
    tally
}
