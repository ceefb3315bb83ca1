//! The cluster with the real binary, several processes on loopback.
//!
//! `cluster_scenario_under_load` is one long scenario (starting and stopping processes is the
//! expensive part, so the phases share one cluster) under continuous reservation load from
//! several clients against random nodes:
//! 1. three nodes up and balanced;
//! 2. a fourth node joins: it ends up with V/N vnodes and no more than that moved;
//! 3. a node is `kill -9`ed and restarted on the same data dir: same ownership, nothing moved;
//! 4. a node is SIGSTOPped: another node reports it `down` (time printed); SIGCONT: `up` again;
//! 5. the non-seed node is decommissioned (`POST /v1/cluster/leave`): it exits 0 by itself and
//!    the others own its vnodes, balanced.
//!
//! Throughout, clients see only 2xx answers, business 409s, or retryable 503s (retried with the
//! same id and body). At the end, from the outside: every acknowledged reservation replays with
//! its first answer on any node, and every key's `on_hand` and `reserved` are exactly what the
//! acknowledged operations account for (nothing lost, nothing applied twice, no oversell).
//!
//! `forwarding_and_orders_across_owners` checks that a request through a non-owner gets the
//! owner's answer, and that an order over keys owned by different nodes is all-or-nothing.
//!
//! The seed set (the Raft group) is a parameter: `STOCKRING_CLUSTER_TEST_SEEDS=n1` or
//! `n1,n2,n3` (the default is `DEFAULT_SEEDS`). Nodes that are not seeds join.
//! `STOCKRING_CLUSTER_TEST_SEED` replays the clients' random choices; on failure every node's
//! `/v1/cluster` and log tail are printed; `STOCKRING_KEEP_CLUSTER_DIR=1` keeps configs, data and
//! logs.

mod cluster_support;

use cluster_support::{
    balanced_over, member_state, moves_in_progress, ownership, until_done, vnodes_of, Clients,
    ClusterSpec, Stats, Targets, TestCluster,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The Raft group unless `STOCKRING_CLUSTER_TEST_SEEDS` says otherwise.
const DEFAULT_SEEDS: &[&str] = &["n1", "n2", "n3"];
const VNODES: u32 = 64;
const CONVERGE: Duration = Duration::from_secs(60);
/// Vnodes a join or leave may move beyond the ideal (ceil(V/N)).
const MOVE_SLACK: u64 = 2;

const CLIENTS: usize = 6;
const HOT_KEYS: usize = 3;
const COLD_KEYS: usize = 24;
const HOT_STOCK: u64 = 20;
const COLD_STOCK: u64 = 1_000_000;
/// Long enough that nothing expires during the test: replays must find every hold.
const TTL_MS: u64 = 600_000;
/// Steady load between the phases.
const SOAK: Duration = Duration::from_secs(2);

/// The cluster tests start several processes each: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn seeds() -> Vec<String> {
    match std::env::var("STOCKRING_CLUSTER_TEST_SEEDS") {
        Ok(s) if !s.trim().is_empty() => s.split(',').map(|x| x.trim().to_owned()).collect(),
        _ => DEFAULT_SEEDS.iter().map(|s| s.to_string()).collect(),
    }
}

fn spec(nodes: &[&str]) -> ClusterSpec {
    let seeds = seeds();
    for s in &seeds {
        assert!(
            nodes.contains(&s.as_str()),
            "seed {s} is not one of the test's nodes {nodes:?}"
        );
    }
    ClusterSpec {
        nodes: nodes.iter().map(|s| s.to_string()).collect(),
        seeds,
        vnodes: VNODES,
        heartbeat_ms: 200,
        down_after_missed: 4,
    }
}

/// Starts `names`: the seeds first, all at once (a Raft group needs a quorum before anything
/// is ready), then the others (joins). Waits until each is ready.
async fn start_nodes(cluster: &TestCluster, names: &[&str]) {
    let (seeds, joiners): (Vec<&str>, Vec<&str>) = names.iter().partition(|n| cluster.is_seed(n));
    for group in [seeds, joiners] {
        for n in &group {
            cluster.spawn(n);
        }
        for n in &group {
            cluster.wait_ready(n, CONVERGE).await;
        }
    }
}

fn key_name(k: usize) -> (String, String) {
    if k < HOT_KEYS {
        (format!("hot-{k}"), "w1".into())
    } else {
        (format!("cold-{k}"), format!("w{}", k % 3))
    }
}

fn initial_stock(k: usize) -> u64 {
    if k < HOT_KEYS {
        HOT_STOCK
    } else {
        COLD_STOCK
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    Held,
    Committed,
    Released,
}

struct Acked {
    key: usize,
    qty: u64,
    id: String,
    /// The first 2xx answer.
    answer: Value,
    state: Hold,
}

/// What the clients were told: the expected state of every key follows from it.
#[derive(Default)]
struct Ledger {
    acked: Vec<Acked>,
    received: BTreeMap<usize, u64>,
    refused: u64,
    replays_on_retry: u64,
}

fn reserve_body(key: usize, id: &str, qty: u64) -> Value {
    let (sku, wh) = key_name(key);
    json!({ "sku": sku, "warehouse": wh, "qty": qty, "reservation_id": id, "ttl_ms": TTL_MS })
}

struct Load {
    targets: Arc<Targets>,
    stats: Arc<Stats>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
}

/// One client: reserve (hot keys run out of stock), then commit, release or keep the hold;
/// now and then a receipt on a hot key. Every operation is retried on retryable 503s until its
/// answer is definitive, so the ledger is exact.
async fn client(load: Arc<Load>, c: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut clients = Clients::default();
    let (targets, stats) = (load.targets.clone(), load.stats.clone());
    let mut n = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        n += 1;
        if rng.gen_bool(0.05) {
            let k = rng.gen_range(0..HOT_KEYS);
            let (sku, wh) = key_name(k);
            let qty = rng.gen_range(3..=8u64);
            let body = json!({ "qty": qty, "op_id": format!("rcpt-{c}-{n}") });
            let path = format!("/v1/stock/{sku}/{wh}/receipts");
            match until_done(
                &targets,
                &stats,
                &mut clients,
                &mut rng,
                Method::POST,
                &path,
                Some(&body),
                None,
            )
            .await
            {
                Ok((200, _)) => *load.ledger.lock().unwrap().received.entry(k).or_default() += qty,
                Ok((s, v)) => stats.fail(format!("receipt {path}: {s} {v}")),
                Err(e) => stats.fail(e),
            }
            continue;
        }
        let k = if rng.gen_bool(0.35) {
            rng.gen_range(0..HOT_KEYS)
        } else {
            rng.gen_range(HOT_KEYS..HOT_KEYS + COLD_KEYS)
        };
        let qty = rng.gen_range(1..=3u64);
        let id = format!("r-{c}-{n}");
        let body = reserve_body(k, &id, qty);
        let answer = until_done(
            &targets,
            &stats,
            &mut clients,
            &mut rng,
            Method::POST,
            "/v1/reservations",
            Some(&body),
            None,
        )
        .await;
        let answer = match answer {
            Ok((status @ (200 | 201), v)) => {
                let mut l = load.ledger.lock().unwrap();
                if status == 200 {
                    // A retry after a 503 whose request had in fact been applied.
                    l.replays_on_retry += 1;
                }
                l.acked.push(Acked {
                    key: k,
                    qty,
                    id: id.clone(),
                    answer: v.clone(),
                    state: Hold::Held,
                });
                v
            }
            Ok((409, v)) if v["code"] == "insufficient_stock" => {
                load.ledger.lock().unwrap().refused += 1;
                continue;
            }
            Ok((s, v)) => {
                stats.fail(format!("reserve {body}: {s} {v}"));
                continue;
            }
            Err(e) => {
                stats.fail(e);
                continue;
            }
        };
        if answer["qty"] != qty || answer["reservation_id"] != id.as_str() {
            stats.fail(format!("reserve {body} answered {answer}"));
        }
        let (verb, state) = match rng.gen_range(0..10) {
            0..=2 => ("commit", Hold::Committed),
            3..=5 => ("release", Hold::Released),
            _ => continue,
        };
        let (sku, wh) = key_name(k);
        let path = format!("/v1/reservations/{id}/{verb}");
        let finish = json!({ "sku": sku, "warehouse": wh });
        match until_done(
            &targets,
            &stats,
            &mut clients,
            &mut rng,
            Method::POST,
            &path,
            Some(&finish),
            None,
        )
        .await
        {
            Ok((200, _)) => {
                let mut l = load.ledger.lock().unwrap();
                if let Some(a) = l.acked.iter_mut().rev().find(|a| a.id == id) {
                    a.state = state;
                }
            }
            Ok((s, v)) => stats.fail(format!("{verb} {path}: {s} {v}")),
            Err(e) => stats.fail(e),
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(5..20))).await;
    }
}

/// The node to kill or stop, a node to watch it from, and whether it is the Raft leader. The
/// leader when the seeds keep a quorum without it (the harder case: the control plane fails
/// over too), else `fallback`, which must not be a seed.
async fn victim(cluster: &TestCluster, fallback: &str) -> (String, String, bool) {
    let leader_may_go = cluster.spec.seeds.len() >= 3;
    let status = cluster.status("n1").await.expect("status of n1");
    let leader = status["raft"]["leader"].as_str().map(str::to_owned);
    let chosen = match &leader {
        Some(l) if leader_may_go => l.clone(),
        _ => fallback.to_owned(),
    };
    assert!(
        leader_may_go || !cluster.is_seed(&chosen),
        "with fewer than 3 seeds the victim must not be a seed"
    );
    let observer = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != chosen)
        .expect("an observer")
        .to_owned();
    let is_leader = leader.as_deref() == Some(chosen.as_str());
    (chosen, observer, is_leader)
}

fn leader_note(is_leader: bool) -> &'static str {
    if is_leader {
        " (the Raft leader)"
    } else {
        ""
    }
}

/// `stockring_handoffs_total` summed over `nodes`, once it is at least `at_least` (a target
/// counts its handoff just after the commit that the observer may already have seen), or
/// whatever it is after a few seconds.
async fn handoffs_at_least(cluster: &TestCluster, nodes: &[&str], at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = sum_metric(cluster, nodes, "stockring_handoffs_total").await;
        if n >= at_least || Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `POST /v1/cluster/leave` until it is accepted (202); a 503 (no control-plane leader
/// reachable yet) is retried.
async fn leave(cluster: &TestCluster, via: &str, node: &str) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    // Without the admin token: refused, nothing happens.
    let refused = http
        .post(format!("{}/v1/cluster/leave", cluster.base(via)))
        .json(&json!({ "node": node }))
        .send()
        .await
        .expect("leave request");
    assert_eq!(refused.status().as_u16(), 401, "a leave without the token");
    let deadline = Instant::now() + CONVERGE;
    loop {
        let resp = http
            .post(format!("{}/v1/cluster/leave", cluster.base(via)))
            .bearer_auth(cluster_support::COOKIE)
            .json(&json!({ "node": node }))
            .send()
            .await
            .expect("leave request");
        let code = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        match code {
            202 => return,
            503 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => panic!("leave {node} through {via}: {code} {body}"),
        }
    }
}

/// Sum of a counter over the given running nodes.
async fn sum_metric(cluster: &TestCluster, nodes: &[&str], metric: &str) -> u64 {
    let mut total = 0.0;
    for n in nodes {
        total += cluster.metric(n, metric).await;
    }
    total as u64
}

fn assert_no_client_failures(stats: &Stats, phase: &str) {
    let failures = stats.failures();
    assert!(
        failures.is_empty(),
        "clients saw {} failure(s) by the end of phase {phase:?}; first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

/// Figures printed at the end (and asserted where the issue asks).
#[derive(Default, Debug)]
struct Figures {
    initial_ring: BTreeMap<String, u64>,
    join_ms: u128,
    join_moved: u64,
    join_ring: BTreeMap<String, u64>,
    kill_to_down_ms: u128,
    restart_to_settled_ms: u128,
    stop_to_down_ms: u128,
    cont_to_up_ms: u128,
    leave_ms: u128,
    leave_moved: u64,
    leaver_had: u64,
    leave_ring: BTreeMap<String, u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_scenario_under_load() {
    let _serial = SERIAL.lock().await;
    let test_started = Instant::now();
    let seed: u64 = std::env::var("STOCKRING_CLUSTER_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let cluster = TestCluster::new(spec(&["n1", "n2", "n3", "n4"]));
    // n4 joins and, as the non-seed, is the one decommissioned at the end. The nodes killed and
    // stopped are picked when their phase starts: the Raft leader if the seeds keep a quorum
    // without it, else a node that is not a seed.
    let (joiner, observer) = ("n4", "n1");
    assert!(!cluster.is_seed(joiner), "the joiner must not be a seed");
    println!(
        "cluster test: seeds {:?}, vnodes {VNODES}, client seed {seed} \
         (STOCKRING_CLUSTER_TEST_SEED to replay), dir {}",
        cluster.spec.seeds,
        cluster.dir.path().display()
    );
    let mut fig = Figures::default();
    let v = u64::from(VNODES);

    // 1. Three nodes, balanced.
    start_nodes(&cluster, &["n1", "n2", "n3"]).await;
    let (status, _) = cluster
        .wait_status(observer, "n1..n3 up and balanced", CONVERGE, |s| {
            balanced_over(s, &["n1", "n2", "n3"])
        })
        .await;
    fig.initial_ring = ownership(&status);
    println!(
        "3 nodes balanced after {:?}: {:?}",
        test_started.elapsed(),
        fig.initial_ring
    );

    let targets = Arc::new(Targets::default());
    for n in ["n1", "n2", "n3"] {
        targets.add(n, &cluster.base(n));
    }
    let stats = Arc::new(Stats::default());
    stats.set_phase("setup");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut clients = Clients::default();
    for k in 0..HOT_KEYS + COLD_KEYS {
        let (sku, wh) = key_name(k);
        let body = json!({ "on_hand": initial_stock(k), "op_id": "init" });
        let (s, answer) = until_done(
            &targets,
            &stats,
            &mut clients,
            &mut rng,
            Method::PUT,
            &format!("/v1/stock/{sku}/{wh}"),
            Some(&body),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("setting up {sku}/{wh}: {e}"));
        assert_eq!(s, 200, "setting up {sku}/{wh}: {answer}");
    }

    let load = Arc::new(Load {
        targets: targets.clone(),
        stats: stats.clone(),
        ledger: Arc::default(),
        stop: Arc::default(),
    });
    stats.set_phase("steady");
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client(load.clone(), c, rng.gen())))
        .collect();
    tokio::time::sleep(SOAK).await;
    assert_no_client_failures(&stats, "steady");

    // 2. A fourth node joins.
    stats.set_phase("join");
    let before = sum_metric(&cluster, &["n1", "n2", "n3"], "stockring_handoffs_total").await;
    let started = Instant::now();
    cluster.spawn(joiner);
    cluster.wait_ready(joiner, CONVERGE).await;
    targets.add(joiner, &cluster.base(joiner));
    let all4 = ["n1", "n2", "n3", "n4"];
    let (status, _) = cluster
        .wait_status(observer, "the joiner up, n1..n4 balanced", CONVERGE, |s| {
            balanced_over(s, &all4)
        })
        .await;
    fig.join_ms = started.elapsed().as_millis();
    fig.join_ring = ownership(&status);
    fig.join_moved =
        handoffs_at_least(&cluster, &all4, before + vnodes_of(&status, joiner)).await - before;
    println!(
        "join: {joiner} balanced after {} ms; vnodes moved {} (ideal V/N = {}); ring {:?}",
        fig.join_ms,
        fig.join_moved,
        v / 4,
        fig.join_ring
    );
    assert!(
        fig.join_moved <= v.div_ceil(4) + MOVE_SLACK,
        "the join moved {} vnodes; ideal {}",
        fig.join_moved,
        v / 4
    );
    assert!(
        fig.join_moved >= vnodes_of(&status, joiner),
        "the joiner owns more vnodes than were handed to it"
    );
    tokio::time::sleep(SOAK).await;
    assert_no_client_failures(&stats, "join");

    // 3. kill -9 and restart on the same data dir.
    stats.set_phase("kill-9");
    let before_ring = fig.join_ring.clone();
    let (killed, observer, was_leader) = victim(&cluster, "n2").await;
    let (killed, observer) = (killed.as_str(), observer.as_str());
    let others: Vec<&str> = all4.iter().copied().filter(|n| *n != killed).collect();
    let before = sum_metric(&cluster, &others, "stockring_handoffs_total").await;
    targets.remove_and_drain(killed).await;
    let killed_at = Instant::now();
    cluster.kill9(killed);
    cluster
        .wait_status(observer, "the killed node down", CONVERGE, |s| {
            member_state(s, killed).as_deref() == Some("down")
        })
        .await;
    fig.kill_to_down_ms = killed_at.elapsed().as_millis();
    let restarted = Instant::now();
    cluster.spawn(killed);
    cluster.wait_ready(killed, CONVERGE).await;
    targets.add(killed, &cluster.base(killed));
    let (status, _) = cluster
        .wait_status(
            observer,
            "the restarted node up, ring as before the kill",
            CONVERGE,
            |s| balanced_over(s, &all4) && ownership(s) == before_ring,
        )
        .await;
    fig.restart_to_settled_ms = restarted.elapsed().as_millis();
    let moved = sum_metric(&cluster, &all4, "stockring_handoffs_total").await - before;
    println!(
        "kill -9 {killed}{}: down after {} ms; restarted, up with the same {} vnodes after {} ms; \
         vnodes moved meanwhile {moved}; Raft leader now {}",
        leader_note(was_leader),
        fig.kill_to_down_ms,
        vnodes_of(&status, killed),
        fig.restart_to_settled_ms,
        status["raft"]["leader"]
    );
    assert_eq!(moved, 0, "vnodes moved around a kill -9 and restart");
    tokio::time::sleep(SOAK).await;
    assert_no_client_failures(&stats, "kill-9");

    // 4. SIGSTOP: down; SIGCONT: up.
    stats.set_phase("sigstop");
    let (stopped, observer, was_leader) = victim(&cluster, "n3").await;
    let (stopped, observer) = (stopped.as_str(), observer.as_str());
    targets.remove_and_drain(stopped).await;
    cluster.sigstop(stopped);
    let (_, took) = cluster
        .wait_status(observer, "the stopped node down", CONVERGE, |s| {
            member_state(s, stopped).as_deref() == Some("down")
        })
        .await;
    fig.stop_to_down_ms = took.as_millis();
    println!(
        "SIGSTOP {stopped}{}: down after {} ms (heartbeat {} ms x {} missed)",
        leader_note(was_leader),
        fig.stop_to_down_ms,
        cluster.spec.heartbeat_ms,
        cluster.spec.down_after_missed
    );
    // Keep it stopped a little, so the cluster serves (and refuses retryably) without it.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let continued = Instant::now();
    cluster.sigcont(stopped);
    let (status, _) = cluster
        .wait_status(observer, "the continued node up again", CONVERGE, |s| {
            balanced_over(s, &all4) && ownership(s) == before_ring
        })
        .await;
    fig.cont_to_up_ms = continued.elapsed().as_millis();
    println!(
        "SIGCONT {stopped}: up after {} ms, vnodes {}; Raft leader now {}",
        fig.cont_to_up_ms,
        vnodes_of(&status, stopped),
        status["raft"]["leader"]
    );
    cluster.wait_ready(stopped, CONVERGE).await;
    targets.add(stopped, &cluster.base(stopped));
    tokio::time::sleep(SOAK).await;
    assert_no_client_failures(&stats, "sigstop");

    // 5. Decommission the non-seed.
    stats.set_phase("leave");
    let observer = "n1";
    let remaining: Vec<&str> = all4.iter().copied().filter(|n| *n != joiner).collect();
    let before = sum_metric(&cluster, &remaining, "stockring_handoffs_total").await;
    fig.leaver_had = vnodes_of(&status, joiner);
    targets.remove_and_drain(joiner).await;
    let leave_started = Instant::now();
    leave(&cluster, observer, joiner).await;
    let exit = cluster.wait_exit(joiner, CONVERGE).await;
    assert!(exit.success(), "{joiner} exited with {exit} after leaving");
    let (status, _) = cluster
        .wait_status(
            observer,
            "the leaver gone, the rest balanced",
            CONVERGE,
            |s| {
                balanced_over(s, &remaining)
                    && member_state(s, joiner).as_deref() == Some("left")
                    && vnodes_of(s, joiner) == 0
            },
        )
        .await;
    fig.leave_ms = leave_started.elapsed().as_millis();
    fig.leave_ring = ownership(&status);
    fig.leave_moved =
        handoffs_at_least(&cluster, &remaining, before + fig.leaver_had).await - before;
    println!(
        "leave {joiner}: exited 0 and the ring settled after {} ms; vnodes moved {} \
         ({joiner} held {}, ideal V/N = {}); ring {:?}",
        fig.leave_ms,
        fig.leave_moved,
        fig.leaver_had,
        v / 4,
        fig.leave_ring
    );
    assert!(
        fig.leave_moved >= fig.leaver_had && fig.leave_moved <= fig.leaver_had + MOVE_SLACK,
        "the leave moved {} vnodes; the leaver held {}",
        fig.leave_moved,
        fig.leaver_had
    );
    tokio::time::sleep(SOAK).await;
    assert_no_client_failures(&stats, "leave");

    // The clients finish their current operation and stop.
    stats.set_phase("drain");
    load.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(cluster_support::OP_PATIENCE * 2, t)
            .await
            .expect("clients did not stop")
            .expect("client task panicked");
    }
    assert_no_client_failures(&stats, "drain");
    assert_eq!(
        moves_in_progress(&cluster.status(observer).await.expect("status")),
        0
    );

    // Check from the outside.
    stats.set_phase("verify");
    let ledger = std::mem::take(&mut *load.ledger.lock().unwrap());
    verify(&targets, &stats, &ledger, &remaining, seed).await;

    let counts = stats.counts();
    println!("client outcomes per phase:");
    for ((phase, outcome), n) in &counts {
        println!("  {phase:<8} {outcome:<28} {n}");
    }
    // The load only: not the setup and the verification.
    let load_phase = |p: &str| p != "setup" && p != "verify";
    let retryable = stats.total(|p, o| load_phase(p) && o.starts_with("503"));
    let ok = stats.total(|p, o| load_phase(p) && o == "2xx");
    let business = stats.total(|p, o| load_phase(p) && o.starts_with("409"));
    println!(
        "load totals: 2xx {ok}, business 409 {business}, retryable 503 {retryable}, \
         acked reservations {}, refused (insufficient_stock) {}, retries answered by replay {}",
        ledger.acked.len(),
        ledger.refused,
        ledger.replays_on_retry
    );
    println!("figures: {fig:?}");
    println!("scenario took {:?}", test_started.elapsed());
    assert!(
        ledger.refused > 0,
        "the hot keys never ran out: the load did not exercise insufficient_stock"
    );
    assert!(ledger.acked.len() > 100, "too little load to mean anything");
}

/// Every acknowledged reservation replays with its first answer; every key holds exactly what
/// the acknowledged operations account for, identically through every node.
async fn verify(
    targets: &Arc<Targets>,
    stats: &Arc<Stats>,
    ledger: &Ledger,
    nodes: &[&str],
    seed: u64,
) {
    let started = Instant::now();
    let acked: Vec<(usize, u64, String, Value)> = ledger
        .acked
        .iter()
        .map(|a| (a.key, a.qty, a.id.clone(), a.answer.clone()))
        .collect();
    let chunks: Vec<Vec<(usize, u64, String, Value)>> = acked
        .chunks(acked.len().div_ceil(8).max(1))
        .map(<[_]>::to_vec)
        .collect();
    let checkers: Vec<_> = chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let (targets, stats) = (targets.clone(), stats.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ i as u64);
                let mut clients = Clients::default();
                let mut errors = Vec::new();
                for (key, qty, id, first) in chunk {
                    let body = reserve_body(key, &id, qty);
                    match until_done(
                        &targets,
                        &stats,
                        &mut clients,
                        &mut rng,
                        Method::POST,
                        "/v1/reservations",
                        Some(&body),
                        None,
                    )
                    .await
                    {
                        Ok((200, answer)) if answer == first => {}
                        Ok((s, answer)) => errors.push(format!(
                            "acknowledged reservation {id} replays as {s} {answer}, first {first}"
                        )),
                        Err(e) => errors.push(e),
                    }
                }
                errors
            })
        })
        .collect();
    let mut errors = Vec::new();
    for c in checkers {
        errors.extend(c.await.expect("checker panicked"));
    }
    assert!(
        errors.is_empty(),
        "{} acknowledged reservation(s) did not replay; first: {:#?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );

    let mut rng = StdRng::seed_from_u64(seed);
    let mut clients = Clients::default();
    for k in 0..HOT_KEYS + COLD_KEYS {
        let (sku, wh) = key_name(k);
        let mine = ledger.acked.iter().filter(|a| a.key == k);
        let committed: u64 = mine
            .clone()
            .filter(|a| a.state == Hold::Committed)
            .map(|a| a.qty)
            .sum();
        let held: u64 = mine.filter(|a| a.state == Hold::Held).map(|a| a.qty).sum();
        let received = ledger.received.get(&k).copied().unwrap_or(0);
        let want_on_hand = initial_stock(k) + received - committed;
        let mut seen: Option<(String, Value)> = None;
        for n in nodes {
            let (s, view) = until_done(
                targets,
                stats,
                &mut clients,
                &mut rng,
                Method::GET,
                &format!("/v1/stock/{sku}/{wh}"),
                None,
                Some(n),
            )
            .await
            .unwrap_or_else(|e| panic!("reading {sku}/{wh} through {n}: {e}"));
            assert_eq!(s, 200, "{sku}/{wh} through {n}: {view}");
            let (on_hand, reserved, available) = (
                view["on_hand"].as_u64().expect("on_hand"),
                view["reserved"].as_u64().expect("reserved"),
                view["available"].as_i64().expect("available"),
            );
            assert_eq!(
                on_hand,
                want_on_hand,
                "{sku}/{wh} through {n}: on_hand {on_hand} != initial {} + received {received} \
                 - committed {committed}; {view}",
                initial_stock(k)
            );
            assert_eq!(
                reserved, held,
                "{sku}/{wh} through {n}: reserved {reserved} != acknowledged holds {held}; {view}"
            );
            assert!(reserved <= on_hand, "oversold {sku}/{wh}: {view}");
            assert!(available >= 0, "negative available on {sku}/{wh}: {view}");
            match &seen {
                Some((first, v)) => assert_eq!(
                    v, &view,
                    "{sku}/{wh} reads differently through {first} and {n}"
                ),
                None => seen = Some((n.to_string(), view)),
            }
        }
    }
    println!(
        "verified {} acknowledged reservations and {} keys through {nodes:?} in {:?}",
        ledger.acked.len(),
        HOT_KEYS + COLD_KEYS,
        started.elapsed()
    );
}

/// One request with a few retries on retryable 503s; the definitive (status, body).
async fn call(method: Method, url: &str, body: Option<&Value>) -> (u16, Value) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let deadline = Instant::now() + cluster_support::OP_PATIENCE;
    loop {
        match cluster_support::send_once(&http, method.clone(), url, body).await {
            Ok(cluster_support::Reply::Done(status, value)) => return (status, value),
            Ok(cluster_support::Reply::Retry { code, after_ms }) => {
                assert!(
                    Instant::now() < deadline,
                    "{method} {url}: still 503 {code}"
                );
                tokio::time::sleep(Duration::from_millis(after_ms.clamp(5, 200))).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// The node that owns `sku/wh`: the one whose read of it is not forwarded (its
/// `stockring_forwarded_total` does not move; nothing else runs meanwhile).
async fn owner_of(cluster: &TestCluster, nodes: &[&str], sku: &str, wh: &str) -> String {
    let mut owners = Vec::new();
    for n in nodes {
        let before = cluster.metric(n, "stockring_forwarded_total").await;
        let url = format!("{}/v1/stock/{sku}/{wh}", cluster.base(n));
        let (s, v) = call(Method::GET, &url, None).await;
        assert_eq!(s, 200, "GET {url}: {v}");
        if cluster.metric(n, "stockring_forwarded_total").await == before {
            owners.push(n.to_string());
        }
    }
    assert_eq!(
        owners.len(),
        1,
        "{sku}/{wh} is served locally by {owners:?}"
    );
    owners.pop().expect("one owner")
}

/// The same GET through every node: identical answers; returns it.
/// `call` on one node of the cluster.
async fn via(
    cluster: &TestCluster,
    node: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    call(method, &format!("{}{path}", cluster.base(node)), body).await
}

async fn same_everywhere(cluster: &TestCluster, nodes: &[&str], path: &str) -> Value {
    let mut first: Option<Value> = None;
    for n in nodes {
        let (s, v) = via(cluster, n, Method::GET, path, None).await;
        assert_eq!(s, 200, "GET {path} through {n}: {v}");
        match &first {
            Some(f) => assert_eq!(f, &v, "GET {path} differs through {} and {n}", nodes[0]),
            None => first = Some(v),
        }
    }
    first.expect("at least one node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_and_orders_across_owners() {
    let _serial = SERIAL.lock().await;
    let nodes = ["n1", "n2", "n3"];
    let cluster = TestCluster::new(spec(&nodes));
    start_nodes(&cluster, &nodes).await;
    // Every node must have the settled map before owners can be told apart.
    for n in nodes {
        cluster
            .wait_status(n, "n1..n3 up and balanced", CONVERGE, |s| {
                balanced_over(s, &nodes)
            })
            .await;
    }
    // One key owned by each node.
    let mut owned: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..200 {
        let sku = format!("fwd-{i}");
        let owner = owner_of(&cluster, &nodes, &sku, "w1").await;
        owned.entry(owner).or_insert(sku);
        if owned.len() == nodes.len() {
            break;
        }
    }
    assert_eq!(
        owned.len(),
        nodes.len(),
        "no key found for some node: {owned:?}"
    );
    println!("keys by owner: {owned:?}");

    // A reservation through a non-owner answers what the owner answers.
    let sku = owned["n2"].clone();
    let (s, v) = via(
        &cluster,
        "n2",
        Method::PUT,
        &format!("/v1/stock/{sku}/w1"),
        Some(&json!({ "on_hand": 10, "op_id": "init" })),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let forwarded = cluster.metric("n1", "stockring_forwarded_total").await;
    let body = json!({ "sku": sku, "warehouse": "w1", "qty": 3, "reservation_id": "fwd-r1", "ttl_ms": TTL_MS });
    let (s, first) = via(
        &cluster,
        "n1",
        Method::POST,
        "/v1/reservations",
        Some(&body),
    )
    .await;
    assert_eq!(s, 201, "reserve through n1: {first}");
    assert!(
        cluster.metric("n1", "stockring_forwarded_total").await > forwarded,
        "the reservation through n1 was not forwarded"
    );
    for n in ["n2", "n3", "n1"] {
        let (s, again) = via(&cluster, n, Method::POST, "/v1/reservations", Some(&body)).await;
        assert_eq!((s, &again), (200, &first), "replay through {n}");
    }
    let mut other = body.clone();
    other["qty"] = json!(4);
    for n in ["n1", "n2"] {
        let (s, v) = via(&cluster, n, Method::POST, "/v1/reservations", Some(&other)).await;
        assert_eq!(
            (s, v["code"].as_str()),
            (409, Some("id_conflict")),
            "through {n}: {v}"
        );
    }
    let big = json!({ "sku": sku, "warehouse": "w1", "qty": 100, "reservation_id": "fwd-r2", "ttl_ms": TTL_MS });
    let (s, via_n1) = via(&cluster, "n1", Method::POST, "/v1/reservations", Some(&big)).await;
    let (s2, via_n2) = via(&cluster, "n2", Method::POST, "/v1/reservations", Some(&big)).await;
    assert_eq!(
        (s, via_n1["code"].as_str()),
        (409, Some("insufficient_stock")),
        "{via_n1}"
    );
    assert_eq!(
        (s2, &via_n2),
        (s, &via_n1),
        "insufficient_stock through the owner and n1"
    );
    let view = same_everywhere(&cluster, &nodes, &format!("/v1/stock/{sku}/w1")).await;
    assert_eq!(
        (view["on_hand"].as_u64(), view["reserved"].as_u64()),
        (Some(10), Some(3)),
        "{view}"
    );
    let finish = json!({ "sku": sku, "warehouse": "w1" });
    let (s, committed) = via(
        &cluster,
        "n3",
        Method::POST,
        "/v1/reservations/fwd-r1/commit",
        Some(&finish),
    )
    .await;
    assert_eq!(s, 200, "{committed}");
    let (s, again) = via(
        &cluster,
        "n1",
        Method::POST,
        "/v1/reservations/fwd-r1/commit",
        Some(&finish),
    )
    .await;
    assert_eq!(
        (s, &again),
        (200, &committed),
        "a repeated commit through n1"
    );
    let (s, v) = via(
        &cluster,
        "n2",
        Method::POST,
        "/v1/reservations/fwd-r1/release",
        Some(&finish),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("already_committed")),
        "{v}"
    );
    let view = same_everywhere(&cluster, &nodes, &format!("/v1/stock/{sku}/w1")).await;
    assert_eq!(
        (view["on_hand"].as_u64(), view["reserved"].as_u64()),
        (Some(7), Some(0)),
        "{view}"
    );

    // Orders over keys owned by three different nodes are all-or-nothing.
    let (a, b, c) = (
        owned["n1"].clone(),
        owned["n2"].clone(),
        owned["n3"].clone(),
    );
    for (sku, stock) in [(&a, 5), (&c, 2)] {
        let (s, v) = via(
            &cluster,
            "n3",
            Method::PUT,
            &format!("/v1/stock/{sku}/w1"),
            Some(&json!({ "on_hand": stock, "op_id": "init" })),
        )
        .await;
        assert_eq!(s, 200, "{v}");
    }
    // b (owned by n2) has 7 from above.
    let line = |sku: &str, qty: u64| json!({ "sku": sku, "qty": qty, "warehouses": ["w1"] });
    let reserved = |v: &Value| v["reserved"].as_u64().expect("reserved");
    let unfillable = json!({ "order_id": "ord-fail", "ttl_ms": TTL_MS, "lines": [line(&a, 2), line(&b, 2), line(&c, 3)] });
    let (s, v) = via(
        &cluster,
        "n1",
        Method::POST,
        "/v1/orders",
        Some(&unfillable),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("insufficient_stock")),
        "{v}"
    );
    assert_eq!(v["line"], 2, "the unfillable line is the third: {v}");
    for sku in [&a, &b, &c] {
        let view = same_everywhere(&cluster, &nodes, &format!("/v1/stock/{sku}/w1")).await;
        assert_eq!(
            reserved(&view),
            0,
            "a refused order left a hold on {sku}: {view}"
        );
    }
    let order = json!({ "order_id": "ord-ok", "ttl_ms": TTL_MS, "lines": [line(&a, 2), line(&b, 2), line(&c, 2)] });
    let (s, placed) = via(&cluster, "n2", Method::POST, "/v1/orders", Some(&order)).await;
    assert_eq!(s, 201, "{placed}");
    for l in placed["lines"].as_array().expect("lines") {
        assert_eq!(l["allocated_warehouse"], "w1", "{placed}");
    }
    let (s, again) = via(&cluster, "n3", Method::POST, "/v1/orders", Some(&order)).await;
    assert_eq!((s, &again), (200, &placed), "order replay through n3");
    let got = same_everywhere(&cluster, &nodes, "/v1/orders/ord-ok").await;
    assert_eq!(got["status"], "reserved", "{got}");
    for sku in [&a, &b, &c] {
        let view = same_everywhere(&cluster, &nodes, &format!("/v1/stock/{sku}/w1")).await;
        assert_eq!(reserved(&view), 2, "{sku}: {view}");
    }
    // c has nothing left: this order must hold nothing on a either.
    let short =
        json!({ "order_id": "ord-fail2", "ttl_ms": TTL_MS, "lines": [line(&a, 1), line(&c, 1)] });
    let (s, v) = via(&cluster, "n3", Method::POST, "/v1/orders", Some(&short)).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("insufficient_stock")),
        "{v}"
    );
    let view = same_everywhere(&cluster, &nodes, &format!("/v1/stock/{a}/w1")).await;
    assert_eq!(
        reserved(&view),
        2,
        "a refused order left a hold on {a}: {view}"
    );
    let (s, done) = via(
        &cluster,
        "n3",
        Method::POST,
        "/v1/orders/ord-ok/commit",
        Some(&json!({})),
    )
    .await;
    assert_eq!(
        (s, done["status"].as_str()),
        (200, Some("committed")),
        "{done}"
    );
    for (sku, on_hand) in [(&a, 3), (&b, 5), (&c, 0)] {
        let view = same_everywhere(&cluster, &nodes, &format!("/v1/stock/{sku}/w1")).await;
        assert_eq!(
            (view["on_hand"].as_u64(), reserved(&view)),
            (Some(on_hand), 0),
            "{sku} after the commit: {view}"
        );
    }
    let got = same_everywhere(&cluster, &nodes, "/v1/orders/ord-ok").await;
    assert_eq!(got["status"], "committed", "{got}");
}

/// A node that comes back under its old name on an empty data dir (a lost or replaced disk)
/// must not serve its vnodes as if it still held them: its `Join` carries another storage
/// identity, the control plane refuses it, and the node does not take the vnodes its name
/// owns. Its keys answer a retryable 503, never an empty stock nor a fresh "created" for an
/// id that was acknowledged before (C2, C3). Replicas will rebuild such a node (issue 13);
/// with one copy, its data is gone and the cluster says so instead of hiding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_on_an_empty_disk_does_not_serve_its_vnodes_empty() {
    let _serial = SERIAL.lock().await;
    let nodes = ["n1", "n2", "n3", "n4"];
    let cluster = TestCluster::new(spec(&nodes));
    start_nodes(&cluster, &nodes).await;
    for n in nodes {
        cluster
            .wait_status(n, "n1..n4 up and balanced", CONVERGE, |s| {
                balanced_over(s, &nodes)
            })
            .await;
    }
    let mut owned = None;
    for i in 0..400 {
        let sku = format!("disk-{i}");
        if owner_of(&cluster, &nodes, &sku, "w1").await == "n4" {
            owned = Some(sku);
            break;
        }
    }
    let sku = owned.expect("a key owned by n4");
    let path = format!("/v1/stock/{sku}/w1");
    let (s, v) = via(
        &cluster,
        "n1",
        Method::PUT,
        &path,
        Some(&json!({ "on_hand": 10, "op_id": "init" })),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let hold = json!({ "sku": sku, "warehouse": "w1", "qty": 4, "reservation_id": "disk-r1", "ttl_ms": TTL_MS });
    let (s, first) = via(
        &cluster,
        "n1",
        Method::POST,
        "/v1/reservations",
        Some(&hold),
    )
    .await;
    assert_eq!(s, 201, "{first}");

    cluster.kill9("n4");
    std::fs::remove_dir_all(&cluster.def("n4").data_dir).expect("wipe n4's data dir");
    cluster.spawn("n4");
    // It answers HTTP but never becomes ready: it is not admitted.
    let up = Instant::now() + CONVERGE;
    let probe = reqwest::Client::new();
    let ready_url = format!("{}/ready", cluster.base("n4"));
    while probe.get(&ready_url).send().await.is_err() {
        assert!(Instant::now() < up, "n4 does not answer HTTP");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Long enough for its map polls and join attempts to have happened many times.
    let until = Instant::now() + Duration::from_secs(6);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut answers = BTreeMap::<String, u64>::new();
    while Instant::now() < until {
        for n in nodes {
            let stock = format!("{}{path}", cluster.base(n));
            let r = cluster_support::send_once(&http, Method::GET, &stock, None).await;
            match r {
                Ok(cluster_support::Reply::Done(s, v)) => {
                    assert_eq!(s, 503, "{n} answered GET {path} from an empty disk: {v}");
                    *answers.entry(format!("GET {s} {}", v["code"])).or_default() += 1;
                }
                Ok(cluster_support::Reply::Retry { code, .. }) => {
                    *answers.entry(format!("GET 503 {code}")).or_default() += 1;
                }
                Err(e) => panic!("{e}"),
            }
            let reserve = format!("{}/v1/reservations", cluster.base(n));
            match cluster_support::send_once(&http, Method::POST, &reserve, Some(&hold)).await {
                Ok(cluster_support::Reply::Done(s, v)) => {
                    assert_eq!(
                        s, 503,
                        "{n} answered a replay of an acknowledged hold from an empty disk: {v}"
                    );
                    *answers
                        .entry(format!("POST {s} {}", v["code"]))
                        .or_default() += 1;
                }
                Ok(cluster_support::Reply::Retry { code, .. }) => {
                    *answers.entry(format!("POST 503 {code}")).or_default() += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("answers for n4's key after its disk was lost: {answers:?}");
    let ready = format!("{}/ready", cluster.base("n4"));
    let (s, _) = match cluster_support::send_once(&http, Method::GET, &ready, None).await {
        Ok(cluster_support::Reply::Done(s, v)) => (s, v),
        Ok(cluster_support::Reply::Retry { code, .. }) => (503, json!(code)),
        Err(e) => panic!("{e}"),
    };
    assert_ne!(s, 200, "n4 says it is ready");
    let log = std::fs::read_to_string(&cluster.def("n4").log).unwrap_or_default();
    assert!(
        log.contains("storage replaced"),
        "n4 does not say why it is refused"
    );
}
