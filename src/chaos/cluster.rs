//! A local cluster of real `stockring serve` processes: one generated config, data directory
//! and log per node under the run's output directory, fixed ports (a restarted node keeps its
//! addresses), and real signals (`kill -9`, SIGSTOP, SIGCONT).

use anyhow::{bail, Context};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::net::Netns;

/// The generated cluster's cookie (also the admin token of `leave`).
pub const COOKIE: &str = "stockring-chaos-run-cookie";

pub struct NodeDef {
    pub name: String,
    /// Its address: 127.0.0.1, or its own namespace's when partitions are on.
    pub ip: String,
    pub http_port: u16,
    pub cluster_port: u16,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub seed: bool,
}

impl NodeDef {
    pub fn base(&self) -> String {
        format!("http://{}:{}", self.ip, self.http_port)
    }
}

/// How a node process stands, as the runner left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proc {
    Running,
    Paused,
    Stopped,
}

pub struct LocalCluster {
    pub bin: PathBuf,
    pub defs: Vec<NodeDef>,
    /// The nodes' namespaces, when partitions are on.
    net: Option<Netns>,
    procs: BTreeMap<String, (Child, Proc)>,
    http: reqwest::Client,
}

fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free ports")?;
    Ok(listeners
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
        .collect())
}

impl LocalCluster {
    /// Writes the configs of `nodes` nodes (the first `seeds` are the seeds) under `dir`; with
    /// `net`, each node lives in its own namespace (same ports, its own address).
    pub fn new(
        bin: PathBuf,
        dir: &Path,
        (nodes, seeds, vnodes): (usize, usize, u32),
        net: Option<Netns>,
    ) -> anyhow::Result<Self> {
        if seeds == 0 || seeds > nodes {
            bail!("need 1 <= seeds <= nodes (got {seeds} seeds of {nodes})");
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ports = match &net {
            Some(_) => (0..nodes).flat_map(|_| [8080, 7100]).collect(),
            None => free_ports(nodes * 2)?,
        };
        let defs: Vec<NodeDef> = (0..nodes)
            .map(|i| {
                let name = format!("n{}", i + 1);
                NodeDef {
                    ip: net.as_ref().map_or("127.0.0.1".into(), |n| n.ip(i)),
                    http_port: ports[2 * i],
                    cluster_port: ports[2 * i + 1],
                    data_dir: dir.join(format!("{name}-data")),
                    config: dir.join(format!("{name}.toml")),
                    log: dir.join(format!("{name}.log")),
                    seed: i < seeds,
                    name,
                }
            })
            .collect();
        let seed_list: Vec<String> = defs
            .iter()
            .filter(|d| d.seed)
            .map(|d| format!("\"{}@{}:{}\"", d.name, d.ip, d.cluster_port))
            .collect();
        for def in &defs {
            // Heartbeats fast enough that a pause of a few seconds marks a node down.
            let toml = format!(
                "http_addr = \"{ip}:{http}\"\n\
                 data_dir = {data:?}\n\
                 log = \"info,ractor_cluster=warn,ractor=warn\"\n\
                 \n\
                 [cluster]\n\
                 enabled = true\n\
                 node_name = \"{name}\"\n\
                 cluster_addr = \"{ip}:{cport}\"\n\
                 seeds = [{seeds}]\n\
                 cookie = \"{COOKIE}\"\n\
                 vnodes = {vnodes}\n\
                 heartbeat_ms = 250\n\
                 down_after_missed = 4\n",
                ip = def.ip,
                http = def.http_port,
                data = def.data_dir.display().to_string(),
                name = def.name,
                cport = def.cluster_port,
                seeds = seed_list.join(", "),
            );
            std::fs::write(&def.config, toml)
                .with_context(|| format!("writing {}", def.config.display()))?;
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        Ok(Self {
            bin,
            defs,
            net,
            procs: BTreeMap::new(),
            http,
        })
    }

    pub fn names(&self) -> Vec<String> {
        self.defs.iter().map(|d| d.name.clone()).collect()
    }

    pub fn def(&self, name: &str) -> anyhow::Result<&NodeDef> {
        self.defs
            .iter()
            .find(|d| d.name == name)
            .with_context(|| format!("no node {name}"))
    }

    fn index(&self, name: &str) -> anyhow::Result<usize> {
        self.defs
            .iter()
            .position(|d| d.name == name)
            .with_context(|| format!("no node {name}"))
    }

    pub fn partitions_on(&self) -> bool {
        self.net.is_some()
    }

    /// Nodes in `to` stop receiving from nodes in `from` (and the reverse unless `one_way`).
    pub fn cut(&self, from: &[String], to: &[String], one_way: bool) -> anyhow::Result<()> {
        let net = self
            .net
            .as_ref()
            .context("partitions need the nodes in network namespaces")?;
        for a in from {
            for b in to {
                let (a, b) = (self.index(a)?, self.index(b)?);
                net.drop_from(a, b)?;
                if !one_way {
                    net.drop_from(b, a)?;
                }
            }
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal_network(&self) -> anyhow::Result<()> {
        match &self.net {
            Some(net) => net.heal(),
            None => Ok(()),
        }
    }

    pub fn state(&self, name: &str) -> Proc {
        self.procs.get(name).map_or(Proc::Stopped, |(_, s)| *s)
    }

    /// Starts `stockring serve` for `name`; its output is appended to the node's log.
    pub fn spawn(&mut self, name: &str) -> anyhow::Result<()> {
        if self.state(name) != Proc::Stopped {
            bail!("{name} is already running");
        }
        let def = self.def(name)?;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&def.log)
            .with_context(|| format!("opening {}", def.log.display()))?;
        writeln!(log, "===== chaos: starting {name} =====")?;
        let err = log.try_clone()?;
        let index = self.index(name)?;
        // `ip netns exec` execs the command in place: the child is the node itself, so
        // signals reach it directly.
        let mut cmd = match &self.net {
            Some(net) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", net.namespace(index)])
                    .arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        let child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&def.config)
            .env_remove("STOCKRING_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.procs.insert(name.to_owned(), (child, Proc::Running));
        Ok(())
    }

    fn signal(&self, name: &str, sig: libc::c_int) -> anyhow::Result<()> {
        let (child, _) = self
            .procs
            .get(name)
            .with_context(|| format!("{name} is not running"))?;
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on a child we spawned and have not reaped; no memory is involved.
        if unsafe { libc::kill(pid, sig) } != 0 {
            bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self, name: &str) -> anyhow::Result<()> {
        if self.state(name) == Proc::Paused {
            // A stopped process dies of SIGKILL too; nothing else to do first.
        }
        self.signal(name, libc::SIGKILL)?;
        if let Some((mut child, _)) = self.procs.remove(name) {
            let _ = child.wait();
        }
        Ok(())
    }

    pub fn pause(&mut self, name: &str) -> anyhow::Result<()> {
        self.signal(name, libc::SIGSTOP)?;
        if let Some(p) = self.procs.get_mut(name) {
            p.1 = Proc::Paused;
        }
        Ok(())
    }

    pub fn resume(&mut self, name: &str) -> anyhow::Result<()> {
        self.signal(name, libc::SIGCONT)?;
        if let Some(p) = self.procs.get_mut(name) {
            p.1 = Proc::Running;
        }
        Ok(())
    }

    /// A node that exited by itself (a crash): its name and status.
    pub fn exited(&mut self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, (child, _)) in self.procs.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                out.push((name.clone(), status.to_string()));
            }
        }
        for (name, _) in &out {
            self.procs.remove(name);
        }
        out
    }

    /// SIGTERM to every node, then SIGKILL to any left after `grace`.
    pub fn stop_all(&mut self, grace: Duration) {
        for name in self.procs.keys().cloned().collect::<Vec<_>>() {
            let _ = self.signal(&name, libc::SIGCONT);
            let _ = self.signal(&name, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline
            && self
                .procs
                .values_mut()
                .any(|(c, _)| matches!(c.try_wait(), Ok(None)))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        for (_, (mut child, _)) in std::mem::take(&mut self.procs) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `GET path` on a node, as JSON; None if it does not answer 2xx with JSON in 2 s.
    pub async fn get_json(&self, name: &str, path: &str) -> Option<Value> {
        let base = self.def(name).ok()?.base();
        let resp = self.http.get(format!("{base}{path}")).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    /// Waits until `name` answers `/ready`.
    pub async fn wait_ready(&mut self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.get_json(name, "/ready").await.is_some() {
                return Ok(());
            }
            if let Some((n, status)) = self.exited().into_iter().find(|(n, _)| n == name) {
                bail!("{n} exited with {status} before it was ready (see its log)");
            }
            if Instant::now() > deadline {
                bail!("{name} was not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The Raft leader's name, as the first answering node sees it.
    pub async fn leader(&self) -> Option<String> {
        for def in &self.defs {
            if self.state(&def.name) != Proc::Running {
                continue;
            }
            let Some(status) = self.get_json(&def.name, "/v1/cluster").await else {
                continue;
            };
            let leader = &status["raft"]["leader"];
            if let Some(name) = leader.as_str() {
                return Some(name.to_owned());
            }
            if let Some(id) = leader.as_u64() {
                let members = status["members"].as_array()?;
                return members
                    .iter()
                    .find(|m| m["id"].as_u64() == Some(id))
                    .and_then(|m| m["name"].as_str().map(str::to_owned));
            }
        }
        None
    }

    /// Waits until every node is running, ready, and one of them sees every member `up`, the
    /// vnodes all owned and no move in progress.
    pub async fn wait_settled(&mut self, timeout: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let names = self.names();
        for name in &names {
            let left = timeout.saturating_sub(started.elapsed());
            self.wait_ready(name, left).await?;
        }
        loop {
            let mut settled = false;
            if let Some(s) = self.get_json(&names[0], "/v1/cluster").await {
                let members = s["members"].as_array().cloned().unwrap_or_default();
                let all_up =
                    members.len() == names.len() && members.iter().all(|m| m["state"] == "up");
                let owned: u64 = members.iter().filter_map(|m| m["vnodes"].as_u64()).sum();
                let moves = s["moves_in_progress"].as_array().map_or(1, Vec::len);
                settled = all_up && moves == 0 && owned == s["vnodes"].as_u64().unwrap_or(u64::MAX);
            }
            if settled {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                bail!("the cluster did not settle within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, (child, _)) in self.procs.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
