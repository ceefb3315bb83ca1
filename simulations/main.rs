//! Deterministic simulation of membership change and vnode handoff.
//!
//! The control state (`control`), the planner, and the handoff state machines (`handoff`) are
//! the library's own, unchanged; around them this drives a lossy network, crashing nodes with
//! durable stores, a Raft-like control plane with a leader that rebalances, clients that write,
//! and a nemesis, all from one seed. After every step: at most one writer per vnode (C5), no
//! acknowledged write lost (C2), fences on disk = fences in memory; `ControlState::check` runs
//! on every apply. After the faults stop: the cluster settles (no moves, balanced, every
//! vnode writable on exactly its owner).
//!
//! Running it:
//! - `cargo test --test simulations`: the regression seeds, then seeds 0..`DEFAULT_SEEDS`
//!   (about 2-4 s in a debug build), plus the determinism and mutant tests.
//! - `simulations/sweep.sh [count] [first]`: a long sweep, release build, one chunk per core
//!   (60 000 seeds take under a minute on 2 cores); prints each failing seed.
//! - `STOCKRING_SIM_SEEDS=n [STOCKRING_SIM_FIRST=k] cargo test --test simulations
//!   membership -- --nocapture`: a long sweep over seeds k..k+n (20 000 seeds take about
//!   10 minutes in a debug build; `--release` is faster once built).
//! - `STOCKRING_SIM_SEED=s cargo test --test simulations membership -- --nocapture`: replays
//!   one seed and prints its trace tail (`STOCKRING_SIM_TRACE=n` lines, default 400).
//!
//! A failing seed prints itself, the failure, the trace tail and the replay command. Add it to
//! `REGRESSION_SEEDS` once fixed.
//!
//! The simulation can fail. Besides the mutants in `simulation_catches_broken_shells` (run on
//! every `cargo test`), the protocol itself was broken in local experiments (never committed),
//! each run over the seeds 0..200 (the default then):
//! - `Ownership::access` ignoring fences (`Local` whenever the map says owner): 175 of 200
//!   seeds fail, seed 0 first, at t=978ms: "stale writer: n0 may write v1 at epoch 1, but the
//!   control state says epoch 2, owner 2" (a fenced source with a map from before the commit).
//!   With the stale-writer checks switched off, seed 0 fails at t=988ms with the plain C5
//!   check: "v1 is writable on n0 (epoch 1) and on n2 (epoch 2)"; 73 seeds with C2 (lost
//!   acknowledged writes) instead.
//! - `on_export_request` answering the final request with `Copy`, i.e. exporting without
//!   fencing: 175 of 200 seeds fail, seed 0 first ("stale writer", t=1107ms); seed 3 with C2:
//!   "acknowledged op 348 on v7 is not in the store of its owner n2", the write the source
//!   took after its final export.

mod checks;
mod network;
mod world;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;
use world::{Config, Mutation, Stats, World};

/// Seeds that once failed or that reach rare windows; always run (also when
/// `STOCKRING_SIM_FIRST`/`STOCKRING_SIM_SEEDS` pick other seeds).
const REGRESSION_SEEDS: &[u64] = &[
    // The shell stopped a node as "left" on a map older than its own re-admitting `Join`
    // (fixed: `Proc::joined_at`); the ring ended with an Up member that never came back.
    14, 115, 146, 186, 215,
    // Reach the windows the mutants need (see `MUTANTS`): a restart racing a commit, a late
    // copy export after the final one, a map from before a commit after it, a move resolved
    // while its source drains.
    0, 12, 22, 37, 282, 428,
    // A late copy of a `Join` from a process that had left since re-admitted its member; the
    // process had stopped, so a member no process stood behind ended `Up` with no vnodes
    // ("unbalanced at the end"). Fixed: `Join` carries the process's incarnation.
    22995, 51812, 52684,
];

/// Seeds run by a plain `cargo test` (about 15 s in a debug build on 2 cores).
const DEFAULT_SEEDS: u64 = 1_000;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")),
    )
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = e.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "(non-string panic)".into()
    }
}

/// Runs one seed; on failure, the panic message.
fn run_seed(cfg: Config) -> Result<Stats, String> {
    let mut world = World::new(cfg);
    catch_unwind(AssertUnwindSafe(|| world.run())).map_err(|e| panic_text(&*e))
}

/// Replays a seed with tracing on and prints the tail of its trace.
fn replay(seed: u64, lines: usize, mutation: Mutation) -> Result<Stats, String> {
    let cfg = Config {
        trace: lines,
        mutation,
        ..Config::new(seed)
    };
    let mut world = World::new(cfg);
    let result = catch_unwind(AssertUnwindSafe(|| world.run())).map_err(|e| panic_text(&*e));
    eprintln!("---- trace of seed {seed} (last {lines} lines) ----");
    for line in &world.log.lines {
        eprintln!("{line}");
    }
    eprintln!("---- end of trace ----");
    result
}

fn replay_hint(seed: u64) -> String {
    format!("replay: STOCKRING_SIM_SEED={seed} cargo test --test simulations -- --nocapture")
}

#[test]
fn membership_and_handoff() {
    let trace_lines = env_u64("STOCKRING_SIM_TRACE").unwrap_or(400) as usize;
    if let Some(seed) = env_u64("STOCKRING_SIM_SEED") {
        let mutation = std::env::var("STOCKRING_SIM_MUTANT")
            .ok()
            .and_then(|m| MUTANTS.iter().find(|(x, _, _)| format!("{x:?}") == m))
            .map_or(Mutation::None, |(x, _, _)| *x);
        match replay(seed, trace_lines, mutation) {
            Ok(stats) => eprintln!("seed {seed} passed: {stats:?}"),
            Err(e) => panic!("seed {seed} failed: {e}\n{}", replay_hint(seed)),
        }
        return;
    }
    let count = env_u64("STOCKRING_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first = env_u64("STOCKRING_SIM_FIRST").unwrap_or(0);
    let mut seeds: Vec<u64> = REGRESSION_SEEDS.to_vec();
    seeds.extend((first..first + count).filter(|s| !REGRESSION_SEEDS.contains(s)));
    let started = Instant::now();
    let mut total = Stats::default();
    let mut failed: Vec<(u64, String)> = Vec::new();
    for &seed in &seeds {
        match run_seed(Config::new(seed)) {
            Ok(stats) => total.add(&stats),
            Err(e) => {
                eprintln!("SIMULATION FAILED: seed {seed}: {e}\n{}", replay_hint(seed));
                failed.push((seed, e));
            }
        }
    }
    eprintln!(
        "{} seeds in {:.1?}: {total:?}",
        seeds.len(),
        started.elapsed()
    );
    if let Some((seed, e)) = failed.first() {
        let _ = replay(*seed, 120, Mutation::None);
        let list: Vec<u64> = failed.iter().map(|f| f.0).collect();
        panic!(
            "{} of {} seeds failed: {list:?}\nfirst: seed {seed}: {e}\n{}",
            failed.len(),
            seeds.len(),
            replay_hint(*seed)
        );
    }
    // The simulation is only as good as what it exercised.
    if count >= DEFAULT_SEEDS {
        assert!(total.commits > 100, "too few commits: {total:?}");
        assert!(total.aborts > 10, "too few aborts: {total:?}");
        assert!(
            total.crashes_mid_move > 10,
            "too few crashes mid-move: {total:?}"
        );
        assert!(
            total.buggify_crashes > 10,
            "too few buggify crashes: {total:?}"
        );
        assert!(
            total.refused_fenced > 10,
            "too few fenced refusals: {total:?}"
        );
        assert!(
            total.fences_lifted_on_abort > 0,
            "no fence lifted: {total:?}"
        );
        assert!(
            total.fences_dropped_while_draining > 0,
            "no move resolved while its source drained: {total:?}"
        );
        assert!(
            total.stale_replies_ignored > 10,
            "no stale replies: {total:?}"
        );
        assert!(
            total.leaves > 10 && total.joins > 10,
            "too little churn: {total:?}"
        );
    }
}

/// The same seed gives the same run, step for step.
#[test]
fn a_seed_replays_identically() {
    let run = |seed| {
        let mut w = World::new(Config {
            trace: 1,
            ..Config::new(seed)
        });
        let stats = w.run();
        (w.log.hash, stats.steps, w.control.state.version)
    };
    for seed in [1, 2, 3] {
        assert_eq!(run(seed), run(seed), "seed {seed} is not deterministic");
    }
}

/// Broken shells, each with the first seed (of 0..400) that catches it and what it sees. The
/// simulation must keep failing on them: if a change to the simulation moves the seeds, find
/// new ones with `cargo test --test simulations explore_mutants -- --ignored --nocapture`.
const MUTANTS: &[(Mutation, u64, &str)] = &[
    (Mutation::VolatileFences, 12, "stale writer"),
    (Mutation::ImportAnyPhase, 428, "C2 violated"),
    (Mutation::StaleMapsToReceiver, 282, "C2 violated"),
    // Not a broken shell but an environment the protocol does not survive as specified: a
    // restarted node that reads an older map than it had (see `map_floor_...` below).
    (Mutation::LaggingMapReads, 22, "stale writer"),
    // A fence task that does not re-check its fence after the drain writes it to disk for a
    // move that was aborted meanwhile.
    (
        Mutation::FenceOutlivesMove,
        37,
        "differ from fences on disk",
    ),
    // A target that commits after the copy, with the control plane taking its commit
    // unchecked (as before `MoveFenced`): the unfenced source still writes a vnode the
    // target owns (almost every seed catches it).
    (Mutation::CommitAfterCopyUnchecked, 0, "stale writer"),
];

/// The simulation can fail: shells that break the protocol's assumptions are caught.
#[test]
fn simulation_catches_broken_shells() {
    for &(mutation, seed, expected) in MUTANTS {
        match run_seed(Config {
            mutation,
            ..Config::new(seed)
        }) {
            Ok(_) => panic!(
                "{mutation:?} passed seed {seed}: the simulation no longer sees it (see MUTANTS)"
            ),
            Err(e) => assert!(
                e.contains(expected),
                "{mutation:?} on seed {seed}: expected {expected:?}, got {e}"
            ),
        }
    }
}

/// A target that proposes its commit without the last export (its source never fenced) is
/// refused by the control plane: the same broken target that loses writes when its commit is
/// taken unchecked (`CommitAfterCopyUnchecked` in `MUTANTS`) loses nothing.
#[test]
fn the_control_plane_refuses_a_commit_before_the_fence() {
    for seed in 0..30 {
        let cfg = Config {
            mutation: Mutation::CommitAfterCopy,
            ..Config::new(seed)
        };
        // Its moves never commit, so the cluster may never settle: that is the broken
        // target's doing. Safety must hold throughout.
        match run_seed(cfg) {
            Ok(_) => {}
            Err(e) if e.contains("liveness: not settled") => {}
            Err(e) => panic!("a commit before the fence, seed {seed}: {e}"),
        }
    }
}

/// Lagging map reads break the protocol as specified (a node's map is volatile, so after a
/// restart it can go backwards: a source that resolved its fence on seeing a commit is the
/// owner again without a fence, and a target re-runs a move that already committed and
/// overwrites what it acknowledged since). A shell that persists the version of the newest
/// map it accepted and ignores older ones after a restart survives them.
#[test]
fn map_floor_makes_lagging_map_reads_safe() {
    for seed in 0..40 {
        let cfg = Config {
            mutation: Mutation::LaggingMapReads,
            map_floor: true,
            ..Config::new(seed)
        };
        if let Err(e) = run_seed(cfg) {
            panic!("lagging reads with a map floor, seed {seed}: {e}");
        }
    }
}

/// Lists the seeds (of 0..400, or `STOCKRING_SIM_SEEDS`) that catch each mutant, and how
/// (`STOCKRING_SIM_MUTANT=Name` for one mutant only).
#[test]
#[ignore]
fn explore_mutants() {
    let count = env_u64("STOCKRING_SIM_SEEDS").unwrap_or(400);
    let only = std::env::var("STOCKRING_SIM_MUTANT").ok();
    for &(mutation, _, _) in MUTANTS {
        if only.as_ref().is_some_and(|m| *m != format!("{mutation:?}")) {
            continue;
        }
        for seed in 0..count {
            if let Err(e) = run_seed(Config {
                mutation,
                ..Config::new(seed)
            }) {
                let first: String = e.lines().next().unwrap_or("").chars().take(140).collect();
                println!("{mutation:?} {seed}: {first}");
            }
        }
    }
}
