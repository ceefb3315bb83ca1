//! The control plane on real SQLite files in temp dirs, the seeds linked by an in-memory
//! transport that can cut a seed off. No timing is asserted: every wait polls until a generous
//! deadline, and only what must eventually hold is checked.

use super::plane::Tuning;
use super::*;
use crate::cluster::control::{ControlState, MemberSpec};
use futures::future::BoxFuture;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `cond` (an expression, which may `.await`) until it holds, for [`PATIENCE`] at most.
macro_rules! wait_until {
    ($what:expr, $cond:expr) => {{
        let deadline = Instant::now() + PATIENCE;
        while !$cond {
            assert!(Instant::now() < deadline, "gave up waiting for: {}", $what);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }};
}

/// The seeds' "network": name -> running plane, and the names cut off from everyone.
#[derive(Default)]
struct MemNet {
    planes: Mutex<HashMap<String, Arc<ControlPlane>>>,
    down: Mutex<HashSet<String>>,
}

impl MemNet {
    fn plane(&self, name: &str) -> Option<Arc<ControlPlane>> {
        self.planes.lock().unwrap().get(name).cloned()
    }

    fn is_down(&self, name: &str) -> bool {
        self.down.lock().unwrap().contains(name)
    }

    fn set_down(&self, name: &str, down: bool) {
        let mut set = self.down.lock().unwrap();
        if down {
            set.insert(name.to_string());
        } else {
            set.remove(name);
        }
    }
}

/// One seed's view of [`MemNet`]: nothing passes if either end is cut off.
struct MemTransport {
    me: String,
    net: Arc<MemNet>,
}

impl RaftTransport for MemTransport {
    fn call(
        &self,
        target: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let net = self.net.clone();
        let me = self.me.clone();
        let target = target.to_string();
        Box::pin(async move {
            if net.is_down(&me) || net.is_down(&target) {
                return Err(format!("{target} unreachable"));
            }
            let plane = net.plane(&target).ok_or(format!("{target} not running"))?;
            let reply = tokio::time::timeout(timeout, plane.handle_rpc(&payload))
                .await
                .map_err(|_| format!("{target} timed out"))?;
            if net.is_down(&me) || net.is_down(&target) {
                return Err(format!("{target} unreachable"));
            }
            Ok(reply)
        })
    }
}

/// A group of seeds, each with its own data dir.
struct Group {
    net: Arc<MemNet>,
    names: Vec<String>,
    dirs: HashMap<String, TempDir>,
    tuning: Tuning,
}

impl Group {
    fn new(n: usize, tuning: Tuning) -> Group {
        let names: Vec<String> = (1..=n).map(|i| format!("seed-{i}")).collect();
        let dirs = names
            .iter()
            .map(|n| (n.clone(), TempDir::new().expect("temp dir")))
            .collect();
        Group {
            net: Arc::new(MemNet::default()),
            names,
            dirs,
            tuning,
        }
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.dirs[name].path().join("data")
    }

    async fn start(&self, name: &str) -> Arc<ControlPlane> {
        let transport = Arc::new(MemTransport {
            me: name.to_string(),
            net: self.net.clone(),
        });
        let plane =
            ControlPlane::start_tuned(&self.dir(name), name, &self.names, transport, self.tuning)
                .await
                .expect("start control plane");
        let plane = Arc::new(plane);
        self.net
            .planes
            .lock()
            .unwrap()
            .insert(name.to_string(), plane.clone());
        plane
    }

    async fn start_all(&self) {
        for name in &self.names {
            self.start(name).await;
        }
        for name in &self.names {
            self.plane(name)
                .initialize_if_first()
                .await
                .expect("initialize");
        }
    }

    async fn shutdown_all(&self) {
        let planes: Vec<Arc<ControlPlane>> = self
            .net
            .planes
            .lock()
            .unwrap()
            .drain()
            .map(|(_, p)| p)
            .collect();
        for p in planes {
            p.shutdown().await;
        }
    }

    fn plane(&self, name: &str) -> Arc<ControlPlane> {
        self.net.plane(name).expect("running seed")
    }

    /// The seeds not cut off.
    fn reachable(&self) -> Vec<String> {
        self.names
            .iter()
            .filter(|n| !self.net.is_down(n))
            .cloned()
            .collect()
    }

    /// A reachable seed that a quorum confirms as leader.
    async fn leader(&self) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            for name in self.reachable() {
                if self.plane(&name).is_leader().await {
                    return name;
                }
            }
            assert!(Instant::now() < deadline, "no confirmed leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Proposes on the leader, following NotLeader answers until one accepts.
    async fn propose(&self, cmd: ControlCommand) -> ControlResponse {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let leader = self.leader().await;
            match self.plane(&leader).propose(cmd.clone()).await {
                Ok(resp) => return resp,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "proposal {cmd:?} never accepted: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Waits until every reachable seed has applied the same state as `expected`.
    async fn converged_to(&self, expected: &ControlState) {
        wait_until!(
            "replicas converge",
            self.reachable()
                .iter()
                .all(|n| *self.plane(n).state() == *expected)
        );
    }
}

fn spec(name: &str) -> MemberSpec {
    MemberSpec {
        name: name.to_string(),
        http_addr: format!("{name}:8080"),
        cluster_addr: format!("{name}:7070"),
        incarnation: 0,
        storage_id: 0,
    }
}

fn bootstrap(names: &[String]) -> ControlCommand {
    ControlCommand::Bootstrap {
        vnodes: 64,
        members: names.iter().map(|n| spec(n)).collect(),
    }
}

/// Bootstrap, a join, and a move of vnode 0 to the new member, checked on the leader's state.
async fn bootstrap_join_move(g: &Group) -> ControlState {
    assert_eq!(g.propose(bootstrap(&g.names)).await, ControlResponse::Done);
    let ControlResponse::Member(new) = g.propose(ControlCommand::Join(spec("worker-1"))).await
    else {
        panic!("join did not admit");
    };
    let begin = ControlCommand::BeginMove {
        vnode: 0,
        to: new,
        now_ms: 1,
    };
    assert_eq!(g.propose(begin).await, ControlResponse::Done);
    let leader = g.plane(&g.leader().await);
    let mv = leader.state().moves[&0];
    let fenced = ControlCommand::MoveFenced {
        vnode: 0,
        move_id: mv.id,
        by: mv.from,
    };
    assert_eq!(g.propose(fenced).await, ControlResponse::Done);
    let commit = ControlCommand::CommitMove {
        vnode: 0,
        move_id: mv.id,
        by: Some(new),
    };
    assert_eq!(g.propose(commit).await, ControlResponse::Done);
    let state = (*leader.state()).clone();
    assert_eq!(
        state.owner_of(0).map(|e| (e.owner, e.epoch)),
        Some((new, 2))
    );
    assert_eq!(state.members.len(), 4);
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_seeds_replicate_and_redirect() {
    let g = Group::new(3, Tuning::default());
    g.start_all().await;
    let state = bootstrap_join_move(&g).await;
    g.converged_to(&state).await;

    // A non-leader refuses, naming the leader.
    let leader = g.leader().await;
    let follower = g.names.iter().find(|n| **n != leader).unwrap().clone();
    wait_until!(
        "the follower knows the leader",
        g.plane(&follower).leader() == Some(leader.clone())
    );
    let err = g
        .plane(&follower)
        .propose(ControlCommand::Join(spec("worker-2")))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        ControlError::NotLeader {
            leader: Some(leader.clone())
        }
    );

    // Initialising again changes nothing.
    for n in &g.names {
        g.plane(n).initialize_if_first().await.unwrap();
    }
    assert!(g.plane(&leader).term() >= 1);
    assert!(g.plane(&leader).commit_index() >= 4);

    // Subscribers see the next apply.
    let mut rx = g.plane(&follower).subscribe();
    g.propose(ControlCommand::Join(spec("worker-2"))).await;
    tokio::time::timeout(PATIENCE, rx.changed())
        .await
        .expect("a change")
        .unwrap();
    let after = (*g.plane(&leader).state()).clone();
    assert_eq!(after.members.len(), 5);
    g.converged_to(&after).await;
    g.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovers_state_and_log() {
    // Small snapshots, so the restart also recovers across a snapshot and a purged log.
    let tuning = Tuning {
        snapshot_every: 5,
        keep_in_log: 2,
    };
    let g = Group::new(3, tuning);
    g.start_all().await;
    bootstrap_join_move(&g).await;
    for i in 0..8 {
        g.propose(ControlCommand::Join(spec(&format!("w{i}"))))
            .await;
    }
    let state = (*g.plane(&g.leader().await).state()).clone();
    g.converged_to(&state).await;
    let before: HashMap<String, (u64, Option<u64>)> = g
        .names
        .iter()
        .map(|n| {
            let m = g.plane(n).raft.metrics().borrow().clone();
            (n.clone(), (g.plane(n).commit_index(), m.last_log_index))
        })
        .collect();
    g.shutdown_all().await;

    for name in &g.names {
        g.start(name).await;
    }
    for name in &g.names {
        let p = g.plane(name);
        // Recovered from raft.db before any message from the others.
        assert_eq!(*p.state(), state, "{name} state");
        let m = p.raft.metrics().borrow().clone();
        assert!(m.last_log_index >= before[name].1, "{name} log");
        assert!(p.commit_index() >= before[name].0, "{name} applied");
        p.initialize_if_first().await.unwrap();
    }
    let ControlResponse::Member(_) = g.propose(ControlCommand::Join(spec("late"))).await else {
        panic!("join after restart");
    };
    let after = (*g.plane(&g.leader().await).state()).clone();
    assert_eq!(after.members.len(), state.members.len() + 1);
    g.converged_to(&after).await;
    g.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_loss_elects_another() {
    let g = Group::new(3, Tuning::default());
    g.start_all().await;
    let state = bootstrap_join_move(&g).await;
    g.converged_to(&state).await;

    let old = g.leader().await;
    g.net.set_down(&old, true);
    let new = g.leader().await;
    assert_ne!(new, old);
    let ControlResponse::Member(_) = g.propose(ControlCommand::Join(spec("after"))).await else {
        panic!("join under the new leader");
    };
    let after = (*g.plane(&new).state()).clone();
    assert_eq!(after.members.len(), state.members.len() + 1);
    g.converged_to(&after).await;
    assert!(g.plane(&new).term() > 1);

    // The old leader comes back, follows, and catches up.
    g.net.set_down(&old, false);
    g.converged_to(&after).await;
    wait_until!(
        "the old leader follows the new one",
        g.plane(&old).leader().is_some_and(|l| l != old)
    );
    g.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_seed_catches_up_from_a_snapshot() {
    let tuning = Tuning {
        snapshot_every: 5,
        keep_in_log: 0,
    };
    let g = Group::new(3, tuning);
    g.start_all().await;
    assert_eq!(g.propose(bootstrap(&g.names)).await, ControlResponse::Done);
    let leader = g.leader().await;
    let lagging = g.names.iter().find(|n| **n != leader).unwrap().clone();
    g.net.set_down(&lagging, true);
    for i in 0..15 {
        g.propose(ControlCommand::Join(spec(&format!("w{i}"))))
            .await;
    }
    // Once the leader has purged what the lagging seed lacks, only a snapshot can help it.
    let lagging_last = g.plane(&lagging).raft.metrics().borrow().last_log_index;
    let leader = g.leader().await;
    wait_until!("the leader purges its log", {
        let m = g.plane(&leader).raft.metrics().borrow().clone();
        m.purged.map(|p| p.index) > lagging_last
    });
    let state = (*g.plane(&leader).state()).clone();
    g.net.set_down(&lagging, false);
    g.converged_to(&state).await;
    let m = g.plane(&lagging).raft.metrics().borrow().clone();
    assert!(m.snapshot.is_some(), "caught up from a snapshot");

    // And the installed snapshot survives a restart.
    g.shutdown_all().await;
    let p = g.start(&lagging).await;
    assert_eq!(*p.state(), state);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_seed_group() {
    let g = Group::new(1, Tuning::default());
    g.start_all().await;
    let name = g.names[0].clone();
    assert_eq!(g.propose(bootstrap(&g.names)).await, ControlResponse::Done);
    let ControlResponse::Member(id) = g.propose(ControlCommand::Join(spec("w"))).await else {
        panic!("join");
    };
    let p = g.plane(&name);
    assert!(p.is_leader().await);
    assert_eq!(p.leader(), Some(name.clone()));
    let state = (*p.state()).clone();
    assert!(state.members.contains_key(&id));
    g.shutdown_all().await;

    let p = g.start(&name).await;
    p.initialize_if_first().await.unwrap();
    assert_eq!(*p.state(), state);
    wait_until!("leader again", p.is_leader().await);
    assert!(matches!(
        p.propose(ControlCommand::Leave { name: "w".into() }).await,
        Ok(ControlResponse::Done)
    ));
    p.shutdown().await;
}

#[test]
fn seed_list_must_name_me() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = TempDir::new().unwrap();
    let net = Arc::new(MemNet::default());
    let transport = Arc::new(MemTransport {
        me: "x".into(),
        net,
    });
    let res = rt.block_on(ControlPlane::start(
        dir.path(),
        "x",
        &["a".to_string(), "b".to_string()],
        transport,
    ));
    assert!(matches!(res, Err(ControlError::Seeds(_))));
}
