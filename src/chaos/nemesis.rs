//! Faults: a schedule drawn from the seed (pure: seed and settings in, windows out), and the
//! shell that carries each one out on the local cluster's processes.

use super::cluster::{LocalCluster, Proc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `kill -9` of a random node, restarted after the window.
    Kill,
    /// `kill -9` of the Raft leader (whoever it is when the fault starts).
    KillLeader,
    /// SIGSTOP long enough to be marked down, then SIGCONT.
    Pause,
    /// SIGSTOP shorter than failure detection, then SIGCONT.
    PauseShort,
    /// One node cut off from every other node (both ways); clients still reach it.
    PartitionOne,
    /// The nodes split in a random majority and minority.
    PartitionHalf,
    /// One node stops receiving from the others (it can still send).
    PartitionOneway,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Kill,
        Kind::KillLeader,
        Kind::Pause,
        Kind::PauseShort,
        Kind::PartitionOne,
        Kind::PartitionHalf,
        Kind::PartitionOneway,
    ];
    pub const PROCESS: [Kind; 4] = [Kind::Kill, Kind::KillLeader, Kind::Pause, Kind::PauseShort];

    pub fn is_partition(self) -> bool {
        matches!(
            self,
            Kind::PartitionOne | Kind::PartitionHalf | Kind::PartitionOneway
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::KillLeader => "kill-leader",
            Kind::Pause => "pause",
            Kind::PauseShort => "pause-short",
            Kind::PartitionOne => "partition-one",
            Kind::PartitionHalf => "partition-half",
            Kind::PartitionOneway => "partition-oneway",
        }
    }

    /// How long the fault lasts (ms), drawn from its range.
    fn length_ms(self, rng: &mut StdRng) -> u64 {
        match self {
            Kind::Kill | Kind::KillLeader => rng.gen_range(1_000..4_000),
            Kind::Pause => rng.gen_range(2_000..5_000),
            Kind::PauseShort => rng.gen_range(100..500),
            Kind::PartitionOne | Kind::PartitionHalf | Kind::PartitionOneway => {
                rng.gen_range(2_000..6_000)
            }
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let known: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown fault {s:?} (known: {})", known.join(", "))
            })
    }
}

/// One planned fault: `kind` starts `start_ms` after the run began and is healed `length_ms`
/// later. `node` is drawn now for a random-node fault (the leader's is found when it starts).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Planned {
    pub kind: Kind,
    pub node: Option<String>,
    /// The minority of a split (`PartitionHalf`).
    #[serde(default)]
    pub minority: Vec<String>,
    pub start_ms: u64,
    pub length_ms: u64,
}

/// Faults one after another (one at a time: with one copy of each vnode, two nodes down at
/// once say nothing more about safety), separated by quiet gaps of 1–4 s, between `warmup_ms`
/// and `end_ms` (the last one healed by then).
pub fn schedule(
    seed: u64,
    kinds: &[Kind],
    nodes: &[String],
    warmup_ms: u64,
    end_ms: u64,
) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7300);
    let mut out = Vec::new();
    if kinds.is_empty() || nodes.is_empty() {
        return out;
    }
    let mut t = warmup_ms;
    loop {
        let kind = kinds[rng.gen_range(0..kinds.len())];
        let length_ms = kind.length_ms(&mut rng);
        if t + length_ms > end_ms {
            return out;
        }
        let node = (kind != Kind::KillLeader).then(|| nodes[rng.gen_range(0..nodes.len())].clone());
        let minority = if kind == Kind::PartitionHalf {
            let mut shuffled = nodes.to_vec();
            shuffled.shuffle(&mut rng);
            shuffled.truncate((nodes.len() - 1) / 2);
            shuffled.sort();
            shuffled
        } else {
            Vec::new()
        };
        out.push(Planned {
            kind,
            node,
            minority,
            start_ms: t,
            length_ms,
        });
        t += length_ms + rng.gen_range(1_000..4_000);
    }
}

/// A fault as it happened, for the record and the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Window {
    pub kind: Kind,
    pub node: String,
    pub start_us: u64,
    pub heal_us: u64,
    /// When the node answered `/ready` again after a restart (kills only).
    pub ready_us: Option<u64>,
    pub note: Option<String>,
}

/// Starts a fault; returns the node(s) it hit.
pub async fn start(cluster: &mut LocalCluster, planned: &Planned) -> anyhow::Result<String> {
    let node = match &planned.node {
        Some(n) => n.clone(),
        None => cluster
            .leader()
            .await
            .ok_or_else(|| anyhow::anyhow!("no node names a Raft leader"))?,
    };
    let others = |side: &[String]| -> Vec<String> {
        cluster
            .names()
            .into_iter()
            .filter(|n| !side.contains(n))
            .collect()
    };
    match planned.kind {
        Kind::Kill | Kind::KillLeader => cluster.kill9(&node)?,
        Kind::Pause | Kind::PauseShort => cluster.pause(&node)?,
        Kind::PartitionOne => {
            let one = [node.clone()];
            cluster.cut(&others(&one), &one, false)?
        }
        Kind::PartitionOneway => {
            let one = [node.clone()];
            cluster.cut(&others(&one), &one, true)?
        }
        Kind::PartitionHalf => {
            let minority = planned.minority.clone();
            cluster.cut(&others(&minority), &minority, false)?;
            return Ok(minority.join(","));
        }
    }
    Ok(node)
}

/// Heals a fault: resumes a paused node, restarts a killed one, removes the cuts.
pub async fn heal(cluster: &mut LocalCluster, kind: Kind, node: &str) -> anyhow::Result<()> {
    match kind {
        Kind::Kill | Kind::KillLeader => {
            if cluster.state(node) == Proc::Stopped {
                cluster.spawn(node)?;
            }
        }
        Kind::Pause | Kind::PauseShort => {
            if cluster.state(node) == Proc::Paused {
                cluster.resume(node)?;
            }
        }
        Kind::PartitionOne | Kind::PartitionHalf | Kind::PartitionOneway => {
            cluster.heal_network()?
        }
    }
    Ok(())
}

/// Waits for a restarted node to be ready (bounded).
pub async fn wait_back(cluster: &mut LocalCluster, node: &str) -> anyhow::Result<()> {
    cluster.wait_ready(node, Duration::from_secs(60)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_is_a_function_of_its_seed_and_fits_the_run() {
        let nodes: Vec<String> = (1..=5).map(|i| format!("n{i}")).collect();
        let a = schedule(7, &Kind::ALL, &nodes, 3_000, 60_000);
        assert_eq!(a, schedule(7, &Kind::ALL, &nodes, 3_000, 60_000));
        assert_ne!(a, schedule(8, &Kind::ALL, &nodes, 3_000, 60_000));
        assert!(a.len() >= 5, "{a:?}");
        for w in a.windows(2) {
            assert!(
                w[0].start_ms + w[0].length_ms < w[1].start_ms,
                "overlap: {w:?}"
            );
        }
        let last = a.last().expect("some faults");
        assert!(a[0].start_ms >= 3_000 && last.start_ms + last.length_ms <= 60_000);
        assert!(schedule(7, &[], &nodes, 0, 60_000).is_empty());
        assert!(a
            .iter()
            .all(|p| (p.kind == Kind::KillLeader) == p.node.is_none()));
    }

    #[test]
    fn fault_names_parse_and_unknown_ones_are_refused() {
        for k in Kind::ALL {
            assert_eq!(k.name().parse::<Kind>(), Ok(k));
        }
        let e = "partition".parse::<Kind>().expect_err("not a kind");
        assert!(e.contains("partition-one"), "{e}");
    }

    #[test]
    fn a_split_leaves_a_minority() {
        let nodes: Vec<String> = (1..=5).map(|i| format!("n{i}")).collect();
        let plan = schedule(3, &[Kind::PartitionHalf], &nodes, 0, 60_000);
        assert!(!plan.is_empty());
        assert!(plan.iter().all(|p| p.minority.len() == 2), "{plan:?}");
    }
}
