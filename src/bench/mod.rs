//! The built-in HTTP load generator (`stockring bench`) and its null-server reference.
//!
//! A run seeds stock with `PUT`s (not measured), then drives `POST /v1/reservations` from
//! `clients` concurrent workers over one shared connection pool, and prints a human summary
//! plus one `{"bench":{...}}` JSON line. Three workloads:
//! - `uniform`: keys drawn uniformly, stock so large it never runs out: raw throughput;
//! - `zipf`: keys drawn from a Zipf distribution: throughput under hot-key skew;
//! - `flash`: one key, `attempts` racing for `stock`: a correctness check (no oversell, no
//!   undersell) that reports PASS/FAIL as well as latency.
//!
//! Every run picks a random run id and puts it in every sku and id it sends, so repeated runs
//! against the same server never collide. [`null_router`] serves the same endpoints from memory,
//! giving the HTTP ceiling a real node can be compared with.

mod client;
mod durable_log;
mod flash;
mod null_server;
mod progress;
mod report;
mod wire;
mod workload;

#[cfg(test)]
mod tests;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use durable_log::DurableLog;
pub use null_server::{null_router, serve_null};
pub use report::BenchReport;

use client::Api;
use progress::Progress;
use workload::{Budget, KeyPicker, Plan};

/// Stock per key for uniform/zipf: large enough that a run never sells out, so every answer
/// measures the grant path rather than the refusal path.
const UNLIMITED_STOCK: u64 = 1_000_000_000;

/// The shape of the offered load.
#[derive(clap::ValueEnum, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Keys drawn uniformly from `--keys`.
    Uniform,
    /// One key, `--stock` units, `--attempts` racing reservations; PASS/FAIL.
    Flash,
    /// Keys drawn from a Zipf distribution over `--keys` with exponent `--zipf-s`.
    Zipf,
}

impl Workload {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uniform => "uniform",
            Self::Flash => "flash",
            Self::Zipf => "zipf",
        }
    }
}

/// Options of `stockring bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Base URL of the node, e.g. http://127.0.0.1:8080
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Workload shape
    #[arg(long, value_enum, default_value = "uniform")]
    pub workload: Workload,
    /// Concurrent client tasks (each with at most one request in flight)
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Run time in seconds for uniform/zipf (flash ends when all attempts are made)
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Number of keys for uniform/zipf
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Flash: stock of the one key (uniform/zipf seed every key with 1e9 instead)
    #[arg(long, default_value_t = 10_000)]
    pub stock: u64,
    /// Flash: total reservation attempts
    #[arg(long, default_value_t = 100_000)]
    pub attempts: u64,
    /// Zipf exponent (0 = uniform; larger = more skewed)
    #[arg(long, default_value_t = 1.0)]
    pub zipf_s: f64,
    /// No progress bar and no summary; print only the JSON line
    #[arg(long)]
    pub json_only: bool,
    /// Name the keys with this id instead of a random one (to drive load at keys an earlier
    /// run seeded; see --skip-seed).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Do not seed the keys' stock first (they were seeded by an earlier run with --run-id).
    #[arg(long)]
    pub skip_seed: bool,
    /// Pad every reservation id to this many characters (at most 128; real ids are often
    /// UUIDs or longer): what a key that remembers its ids stores grows with them.
    #[arg(long, default_value_t = 0)]
    pub id_len: usize,
}

/// Runs one bench and prints its summary and JSON line to stdout.
///
/// Errors only when the run cannot start: bad arguments, an unreachable server, or a setup `PUT`
/// that is not 2xx. Failed reservations are counted in the report, not returned as errors, and a
/// flash FAIL is reported through `flash_pass`; the exit status is the caller's decision.
pub async fn run(args: BenchArgs) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(args.clients >= 1, "--clients must be at least 1");
    anyhow::ensure!(
        args.id_len <= crate::limits::MAX_ID_LEN,
        "--id-len must be at most {}",
        crate::limits::MAX_ID_LEN
    );
    let api = Api::new(&args.target, args.clients)?;
    let run_id = args
        .run_id
        .clone()
        .unwrap_or_else(|| format!("{:08x}", rand::random::<u32>()));
    let (skus, on_hand, picker, budget) = shape(&args, &run_id)?;

    if !args.skip_seed {
        workload::seed(&api, &run_id, &skus, on_hand, args.clients).await?;
    }

    let done = Arc::new(AtomicU64::new(0));
    let total = match budget {
        Budget::Attempts(n) => Some(n),
        Budget::Timed(_) => None,
    };
    let progress = Progress::start(args.json_only, total, Arc::clone(&done));
    let flash_sku = skus.first().cloned().unwrap_or_default();
    let plan = Plan {
        api: api.clone(),
        id_prefix: format!("{run_id}.{:08x}", rand::random::<u32>()),
        id_len: args.id_len,
        skus,
        picker,
        budget,
        clients: args.clients,
    };
    let measured = workload::drive(plan, done).await;
    progress.finish();
    let (tally, elapsed) = measured?;

    let mut report = BenchReport::new(args.workload, args.clients, &tally, elapsed);
    if args.workload == Workload::Flash {
        let verdict = flash::judge(&api, &flash_sku, args.stock, args.attempts, &tally).await;
        report.flash_pass = Some(verdict.pass);
        report.flash_detail = Some(verdict.detail);
    }
    report.print(tally.first_error.as_deref(), args.json_only)?;
    Ok(report)
}

/// The keys, their seeded stock, how attempts pick among them, and when the run stops.
fn shape(args: &BenchArgs, run_id: &str) -> anyhow::Result<(Vec<String>, u64, KeyPicker, Budget)> {
    let timed = Budget::Timed(Duration::from_secs(args.duration_s));
    let many_keys = || (0..args.keys).map(|i| format!("b{run_id}-k{i}")).collect();
    Ok(match args.workload {
        Workload::Flash => (
            vec![format!("flash-{run_id}")],
            args.stock,
            KeyPicker::Single,
            Budget::Attempts(args.attempts),
        ),
        Workload::Uniform => (
            many_keys(),
            UNLIMITED_STOCK,
            KeyPicker::uniform(args.keys)?,
            timed,
        ),
        Workload::Zipf => (
            many_keys(),
            UNLIMITED_STOCK,
            KeyPicker::zipf(args.keys, args.zipf_s)?,
            timed,
        ),
    })
}
