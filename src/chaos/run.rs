//! The run: start the cluster, drive the clients while faults come and go, heal, settle, read
//! every key through every node, replay acknowledged ids, stop, check, report.

use super::check;
use super::cluster::{LocalCluster, Proc};
use super::history::{self, Answer, End, Event, Op};
use super::nemesis::{self, Kind, Window};
use super::net::Netns;
use super::report;
use super::workload::{self, Mix, Patience, Plan, Recorder, Sender, Target};
use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `stockring chaos`: a local cluster of real nodes, a client workload, faults, a verdict.
#[derive(clap::Args, Clone, Debug)]
pub struct ChaosArgs {
    /// Nodes to start (the first `--seeds` of them are the Raft seeds).
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    #[arg(long, default_value_t = 3)]
    pub seeds: usize,
    /// How long the clients work, faults included (e.g. 60s, 2m, 500ms).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Operations per second, all clients together.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Weights of the operations: reserve, commit, release, receive, read.
    #[arg(
        long,
        default_value = "reserve=40,commit=20,release=10,receive=10,read=20"
    )]
    pub mix: Mix,
    /// Few hot keys take `--hot-share` of the operations; many cold ones the rest.
    #[arg(long, default_value_t = 3)]
    pub hot_keys: usize,
    #[arg(long, default_value_t = 40)]
    pub cold_keys: usize,
    #[arg(long, default_value_t = 0.5)]
    pub hot_share: f64,
    /// Faults to draw from (comma-separated): kill, kill-leader, pause, pause-short,
    /// partition-one, partition-half, partition-oneway; `all`; or `none`.
    #[arg(long, default_value = "all")]
    pub faults: String,
    /// Where the nodes live: `namespaces` (one network namespace each: partitions possible;
    /// needs root, ip and iptables), `loopback` (127.0.0.1: process faults only), or `auto`
    /// (namespaces when possible, else loopback, said at the start).
    #[arg(long, default_value = "auto")]
    pub net: String,
    /// The seed of the workload and the fault schedule (random if not given; always printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where the configs, data, logs, history and report go (default chaos-out/seed-<seed>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Vnodes in the ring.
    #[arg(long, default_value_t = 64)]
    pub vnodes: u32,
    /// The `stockring` binary the nodes run (default: this one).
    #[arg(long)]
    pub bin: Option<PathBuf>,
    /// A client's request timeout: past it the outcome is unknown.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// The checker's time budget per key (a key it cannot decide in time makes the verdict
    /// undecided, never clean).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub check_budget: Duration,
    /// Acknowledged ids per key replayed after the run (their answer must be the first one).
    #[arg(long, default_value_t = 20)]
    pub replays: usize,
    /// Start nothing: check a recorded `history.jsonl` again (and write its verdict beside it).
    #[arg(long)]
    pub recheck: Option<PathBuf>,
}

impl Default for ChaosArgs {
    fn default() -> Self {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Wrap {
            #[command(flatten)]
            args: ChaosArgs,
        }
        Wrap::parse_from(["chaos"]).args
    }
}

/// `60s`, `2m`, `500ms`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m)")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_faults(s: &str) -> anyhow::Result<Vec<Kind>> {
    match s.trim() {
        "none" | "" => return Ok(Vec::new()),
        "all" => return Ok(Kind::ALL.to_vec()),
        _ => {}
    }
    s.split(',')
        .map(|k| k.trim().parse::<Kind>().map_err(anyhow::Error::msg))
        .collect()
}

/// What a run found.
#[derive(Debug, Serialize)]
pub struct Verdict {
    pub seed: u64,
    pub clean: bool,
    /// One line per problem: checker findings, nodes that died by themselves, no settling.
    pub problems: Vec<String>,
    pub calls: usize,
    pub unknown: usize,
    pub windows: Vec<report::WindowFigures>,
    pub per_kind: BTreeMap<String, report::KindFigures>,
    pub check: check::Report,
    pub out: PathBuf,
}

const SETUP_CLIENT: u64 = 1_000_000;
const FINAL_CLIENT: u64 = 2_000_000;

/// Runs one chaos run; the verdict says whether it is clean (an `Err` is a run that could not
/// be carried out, e.g. a node that never started).
pub async fn run(args: ChaosArgs) -> anyhow::Result<Verdict> {
    if let Some(history) = &args.recheck {
        return recheck(history, args.check_budget);
    }
    let kinds = parse_faults(&args.faults)?;
    let seed = args.seed.unwrap_or_else(|| rand::thread_rng().gen());
    anyhow::ensure!(
        args.clients > 0 && args.rate > 0.0,
        "need clients > 0 and rate > 0"
    );
    anyhow::ensure!(args.hot_keys + args.cold_keys > 0, "need at least one key");
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("chaos-out/seed-{seed}")));
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("finding this binary")?,
    };
    println!(
        "chaos: seed {seed}, {} nodes ({} seeds), {:?}, output in {}",
        args.nodes,
        args.seeds,
        args.duration,
        out.display()
    );
    let (net, kinds) = network(&args.net, args.nodes, kinds, args.faults.trim() == "all")?;
    let mut cluster = LocalCluster::new(bin, &out, (args.nodes, args.seeds, args.vnodes), net)?;
    for name in cluster.names() {
        cluster.spawn(&name)?;
    }
    let took = cluster.wait_settled(Duration::from_secs(120)).await?;
    println!("chaos: cluster settled in {:.1} s", took.as_secs_f64());

    let history_file = std::fs::File::create(out.join("history.jsonl"))?;
    let recorder = Arc::new(Recorder::new(Some(history_file)));
    let sender = Arc::new(Sender::new(recorder.clone(), args.request_timeout)?);
    let targets: Arc<Vec<Target>> = Arc::new(
        cluster
            .defs
            .iter()
            .map(|d| Target {
                name: d.name.clone(),
                base: d.base(),
            })
            .collect(),
    );
    let plan = Plan {
        clients: args.clients,
        rate: args.rate,
        hot_keys: args.hot_keys,
        cold_keys: args.cold_keys,
        hot_share: args.hot_share,
        mix: args.mix.clone(),
        seed,
        attempts: 3,
    };
    let mut problems = Vec::new();
    setup(&sender, &targets, &plan, &mut problems).await;

    // The run: clients and the nemesis side by side.
    let begun_us = recorder.now_us();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..args.clients as u64)
        .map(|id| {
            tokio::spawn(workload::client(
                id,
                plan.clone(),
                sender.clone(),
                targets.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let run_ms = args.duration.as_millis() as u64;
    let planned = nemesis::schedule(
        seed,
        &kinds,
        &cluster.names(),
        3_000.min(run_ms / 4),
        run_ms.saturating_sub(2_000),
    );
    let nemesis_task = {
        let recorder = recorder.clone();
        let started = Instant::now();
        tokio::spawn(async move {
            let mut windows = Vec::new();
            let mut crashes = Vec::new();
            for p in planned {
                let at = started + Duration::from_millis(p.start_ms);
                while Instant::now() < at {
                    crashes.extend(cluster.exited());
                    tokio::time::sleep(
                        Duration::from_millis(50).min(at.saturating_duration_since(Instant::now())),
                    )
                    .await;
                }
                let start_us = recorder.now_us();
                let node = match nemesis::start(&mut cluster, &p).await {
                    Ok(n) => n,
                    Err(e) => {
                        windows.push(Window {
                            kind: p.kind,
                            node: "?".into(),
                            start_us,
                            heal_us: start_us,
                            ready_us: None,
                            note: Some(format!("not started: {e:#}")),
                        });
                        continue;
                    }
                };
                println!(
                    "chaos: {:>6.1} s  {} {node} for {} ms",
                    start_us as f64 / 1e6,
                    p.kind.name(),
                    p.length_ms
                );
                tokio::time::sleep(Duration::from_millis(p.length_ms)).await;
                let heal_us = recorder.now_us();
                let mut note = nemesis::heal(&mut cluster, p.kind, &node)
                    .await
                    .err()
                    .map(|e| format!("heal: {e:#}"));
                let mut ready_us = None;
                if matches!(p.kind, Kind::Kill | Kind::KillLeader) {
                    match nemesis::wait_back(&mut cluster, &node).await {
                        Ok(()) => ready_us = Some(recorder.now_us()),
                        Err(e) => note = Some(format!("restart: {e:#}")),
                    }
                }
                windows.push(Window {
                    kind: p.kind,
                    node,
                    start_us,
                    heal_us,
                    ready_us,
                    note,
                });
            }
            (cluster, windows, crashes)
        })
    };
    tokio::time::sleep(args.duration).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let (mut cluster, windows, crashes) = nemesis_task.await.context("the nemesis task")?;
    let ended_us = recorder.now_us();
    for (name, status) in crashes.into_iter().chain(cluster.exited()) {
        problems.push(format!(
            "{name} exited by itself ({status}) during the run: see {name}.log"
        ));
    }
    // Heal whatever is left and let the cluster settle.
    for name in cluster.names() {
        match cluster.state(&name) {
            Proc::Paused => cluster.resume(&name)?,
            Proc::Stopped => cluster.spawn(&name)?,
            Proc::Running => {}
        }
    }
    match cluster.wait_settled(Duration::from_secs(120)).await {
        Ok(t) => println!("chaos: healed; settled in {:.1} s", t.as_secs_f64()),
        Err(e) => problems.push(format!("after healing: {e:#}")),
    }
    final_reads(
        &sender,
        &targets,
        &plan,
        &recorder.events(),
        args.replays,
        seed,
    )
    .await;
    for (name, status) in cluster.exited() {
        problems.push(format!(
            "{name} exited by itself ({status}) after healing: see {name}.log"
        ));
    }
    cluster.stop_all(Duration::from_secs(10));

    // Check.
    let events = recorder.events();
    let calls = history::calls(&events);
    let unknown = calls
        .iter()
        .filter(|c| matches!(c.end, End::Unknown { .. }))
        .count();
    let checked = check::check(&calls, args.check_budget);
    if !checked.is_clean() {
        problems.push(checked.summary());
    }
    // The figures and the picture are of the workload (not the setup and the final reads).
    let attempts: Vec<_> = report::attempts(&events)
        .into_iter()
        .filter(|a| a.client < SETUP_CLIENT)
        .collect();
    let figures = report::availability(&attempts, &windows);
    let per_kind = report::per_kind(&figures);
    std::fs::write(
        out.join("faults.json"),
        serde_json::to_vec_pretty(&windows)?,
    )?;
    let title = format!(
        "stockring chaos seed {seed}: {} nodes, {} ops, {:.0} s — {}",
        args.nodes,
        calls.len(),
        (ended_us - begun_us) as f64 / 1e6,
        if problems.is_empty() {
            "clean"
        } else {
            "NOT CLEAN"
        }
    );
    std::fs::write(
        out.join("report.svg"),
        report::svg(&attempts, &windows, &title),
    )?;
    let verdict = Verdict {
        seed,
        clean: problems.is_empty(),
        problems,
        calls: calls.len(),
        unknown,
        windows: figures,
        per_kind,
        check: checked,
        out: out.clone(),
    };
    std::fs::write(
        out.join("verdict.json"),
        serde_json::to_vec_pretty(&verdict)?,
    )?;
    Ok(verdict)
}

/// Checks a recorded history again.
fn recheck(path: &std::path::Path, budget: Duration) -> anyhow::Result<Verdict> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let events = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str::<Event>(l)
                .with_context(|| format!("{}:{}: not a history event", path.display(), i + 1))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let calls = history::calls(&events);
    let unknown = calls
        .iter()
        .filter(|c| matches!(c.end, End::Unknown { .. }))
        .count();
    let checked = check::check(&calls, budget);
    let out = path.parent().map_or_else(PathBuf::new, PathBuf::from);
    let verdict = Verdict {
        seed: 0,
        clean: checked.is_clean(),
        problems: if checked.is_clean() {
            Vec::new()
        } else {
            vec![checked.summary()]
        },
        calls: calls.len(),
        unknown,
        windows: Vec::new(),
        per_kind: BTreeMap::new(),
        check: checked,
        out: out.clone(),
    };
    std::fs::write(
        out.join("verdict-recheck.json"),
        serde_json::to_vec_pretty(&verdict)?,
    )?;
    Ok(verdict)
}

/// The nodes' network, and the faults it allows: partitions need namespaces. With `auto`,
/// a machine without them runs the process faults only, and says so.
fn network(
    mode: &str,
    nodes: usize,
    kinds: Vec<Kind>,
    all: bool,
) -> anyhow::Result<(Option<Netns>, Vec<Kind>)> {
    let wants_partitions = kinds.iter().any(|k| k.is_partition());
    let namespaces = match mode {
        "namespaces" => true,
        "loopback" => false,
        "auto" => match Netns::unavailable() {
            None => true,
            Some(why) => {
                println!("chaos: no network namespaces here ({why}): process faults only");
                false
            }
        },
        other => anyhow::bail!("--net {other:?}: expected auto, namespaces or loopback"),
    };
    if namespaces {
        if let Some(why) = Netns::unavailable() {
            anyhow::bail!("--net namespaces: {why}");
        }
        return Ok((Some(Netns::create(nodes)?), kinds));
    }
    if wants_partitions && !all {
        anyhow::bail!("partition faults need --net namespaces (or auto on a machine with them)");
    }
    Ok((
        None,
        kinds.into_iter().filter(|k| !k.is_partition()).collect(),
    ))
}

/// Stock for every key, through the history like any other operation.
async fn setup(sender: &Sender, targets: &[Target], plan: &Plan, problems: &mut Vec<String>) {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    for (i, key) in plan.keys().into_iter().enumerate() {
        let qty = if i < plan.hot_keys { 30 } else { 10 };
        let op = Op::Receive {
            id: format!("setup-{i}"),
            qty,
        };
        let patience = Patience {
            attempts: 20,
            refusals: 200,
            stop: None,
        };
        if workload::until_answered(
            sender,
            SETUP_CLIENT,
            targets,
            (&key, &op),
            patience,
            &mut rng,
        )
        .await
        .is_none()
        {
            problems.push(format!("setup: the receipt on {key} was never answered"));
        }
    }
}

/// After healing: every key read through every node, then acknowledged ids replayed (their
/// answer must be the first one: C2, C3), then every key read once more.
async fn final_reads(
    sender: &Sender,
    targets: &[Target],
    plan: &Plan,
    events: &[Event],
    replays: usize,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xf1a1);
    // Every mutation whose outcome is still unknown is sent again (same id) until answered:
    // the answer says what the first try did (a replay answers the first answer), and an
    // unresolved unknown costs the checker a branch at every step after its invocation.
    let calls = history::calls(events);
    let answered: std::collections::HashSet<(&str, &Op)> = calls
        .iter()
        .filter(|c| c.answer().is_some())
        .map(|c| (c.key.as_str(), &c.op))
        .collect();
    let mut unresolved: Vec<(&str, &Op)> = calls
        .iter()
        .filter(|c| c.answer().is_none() && !c.op.is_read())
        .map(|c| (c.key.as_str(), &c.op))
        .filter(|k| !answered.contains(k))
        .collect();
    unresolved.sort();
    unresolved.dedup();
    for (key, op) in unresolved {
        let patience = Patience {
            attempts: 10,
            refusals: 30,
            stop: None,
        };
        let _ =
            workload::until_answered(sender, FINAL_CLIENT, targets, (key, op), patience, &mut rng)
                .await;
    }
    let keys = plan.keys();
    for key in &keys {
        for t in targets {
            let _ = sender.send(FINAL_CLIENT, t, key, &Op::Read).await;
        }
    }
    // Acknowledged mutations per key, by the ops that carried them.
    let mut acked: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    let mut invoked: BTreeMap<u64, (&str, &Op)> = BTreeMap::new();
    for e in events {
        match e {
            Event::Invoke { index, key, op, .. } if !op.is_read() => {
                invoked.insert(*index, (key, op));
            }
            Event::Complete {
                index,
                end: End::Answered { answer, .. },
            } => {
                if let Some((key, op)) = invoked.get(index) {
                    if matches!(answer, Answer::Reserved { .. } | Answer::Stock { .. })
                        || matches!(answer, Answer::Refused { code, .. } if code == "insufficient_stock")
                    {
                        acked.entry(key).or_default().push(op);
                    }
                }
            }
            _ => {}
        }
    }
    for (key, mut ops) in acked {
        ops.sort_by_key(|o| o.id().map(str::to_owned));
        ops.dedup();
        for _ in 0..replays.min(ops.len()) {
            let op = ops.swap_remove(rng.gen_range(0..ops.len()));
            let patience = Patience {
                attempts: 3,
                refusals: 30,
                stop: None,
            };
            let _ = workload::until_answered(
                sender,
                FINAL_CLIENT,
                targets,
                (key, op),
                patience,
                &mut rng,
            )
            .await;
        }
    }
    for key in &keys {
        let t = &targets[rng.gen_range(0..targets.len())];
        let _ = sender.send(FINAL_CLIENT, t, key, &Op::Read).await;
    }
}

/// The verdict for a person: figures per fault kind, then clean or the problems.
pub fn describe(v: &Verdict) -> String {
    let mut s = String::new();
    use std::fmt::Write;
    let _ = writeln!(
        s,
        "chaos: {} calls, {} with an unknown outcome",
        v.calls, v.unknown
    );
    let _ = writeln!(
        s,
        "availability per fault kind (operations invoked while the fault lasted):"
    );
    for (kind, k) in &v.per_kind {
        let _ = writeln!(
            s,
            "  {kind:<17} {:>2} windows {:>6} operations {:>5.1}% unanswered  worst recovery after heal {}",
            k.windows,
            k.ops,
            100.0 * k.failed_share,
            k.worst_recovery_after_heal_ms.map_or("-".into(), |ms| format!("{ms} ms")),
        );
    }
    let _ = writeln!(
        s,
        "history, faults, verdict and report.svg in {}",
        v.out.display()
    );
    if v.clean {
        let _ = writeln!(s, "VERDICT: clean (seed {})", v.seed);
    } else {
        let _ = writeln!(s, "VERDICT: NOT CLEAN (seed {})", v.seed);
        for p in &v.problems {
            let _ = writeln!(s, "  - {p}");
        }
    }
    s
}
