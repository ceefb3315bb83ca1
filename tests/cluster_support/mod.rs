//! A local cluster of real `stockring` processes for the cluster tests: one TOML config, data
//! directory and log file per node in a temp dir, fixed ports (so a restarted node keeps its
//! addresses), signals (`kill -9`, SIGSTOP/SIGCONT), `GET /v1/cluster` polling, and a dump of
//! every node's status and log tail when a test fails.

#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The test cluster's cookie (also the admin token of `POST /v1/cluster/leave`).
pub const COOKIE: &str = "stockring-cluster-test";

/// Log filter of every node (the node's stderr goes to `<dir>/<name>.log`).
pub const LOG_FILTER: &str = "info,ractor_cluster=warn,ractor=warn";

/// One node's fixed identity: name, ports, files.
pub struct NodeDef {
    pub name: String,
    pub http_port: u16,
    pub cluster_port: u16,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl NodeDef {
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }
}

/// Cluster-wide knobs written into every node's config.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Every node the test may start (seeds first is customary, not required).
    pub nodes: Vec<String>,
    /// The seeds: the Raft group. The same list goes into every node's config.
    pub seeds: Vec<String>,
    pub vnodes: u32,
    pub heartbeat_ms: u64,
    pub down_after_missed: u32,
}

pub struct TestCluster {
    pub spec: ClusterSpec,
    pub dir: tempfile::TempDir,
    defs: BTreeMap<String, NodeDef>,
    procs: Mutex<BTreeMap<String, Child>>,
}

/// Distinct free loopback ports (all bound at once, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

impl TestCluster {
    /// Writes every node's config; starts nothing.
    pub fn new(spec: ClusterSpec) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(spec.nodes.len() * 2);
        let mut defs = BTreeMap::new();
        for (i, name) in spec.nodes.iter().enumerate() {
            let def = NodeDef {
                name: name.clone(),
                http_port: ports[2 * i],
                cluster_port: ports[2 * i + 1],
                data_dir: dir.path().join(format!("{name}-data")),
                config: dir.path().join(format!("{name}.toml")),
                log: dir.path().join(format!("{name}.log")),
            };
            defs.insert(name.clone(), def);
        }
        let seeds: Vec<String> = spec
            .seeds
            .iter()
            .map(|s| format!("\"{s}@127.0.0.1:{}\"", defs[s].cluster_port))
            .collect();
        for def in defs.values() {
            let toml = format!(
                "http_addr = \"127.0.0.1:{http}\"\n\
                 data_dir = {data:?}\n\
                 log = \"{LOG_FILTER}\"\n\
                 \n\
                 [cluster]\n\
                 enabled = true\n\
                 node_name = \"{name}\"\n\
                 cluster_addr = \"127.0.0.1:{cport}\"\n\
                 seeds = [{seeds}]\n\
                 cookie = \"{COOKIE}\"\n\
                 vnodes = {vnodes}\n\
                 heartbeat_ms = {hb}\n\
                 down_after_missed = {missed}\n",
                http = def.http_port,
                data = def.data_dir.display().to_string(),
                name = def.name,
                cport = def.cluster_port,
                seeds = seeds.join(", "),
                vnodes = spec.vnodes,
                hb = spec.heartbeat_ms,
                missed = spec.down_after_missed,
            );
            std::fs::write(&def.config, toml).expect("write node config");
        }
        TestCluster {
            spec,
            dir,
            defs,
            procs: Mutex::default(),
        }
    }

    pub fn def(&self, name: &str) -> &NodeDef {
        &self.defs[name]
    }

    pub fn base(&self, name: &str) -> String {
        self.def(name).base()
    }

    pub fn is_seed(&self, name: &str) -> bool {
        self.spec.seeds.iter().any(|s| s == name)
    }

    fn procs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Child>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns `stockring serve --config <name>.toml` (`$STOCKRING_BIN` if set); stdout and
    /// stderr are appended to the node's log file (a restart keeps the earlier lines). Does
    /// not wait for anything.
    pub fn spawn(&self, name: &str) {
        let def = self.def(name);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&def.log)
            .expect("open node log");
        let _ = writeln!(log, "===== test harness: starting {name} =====");
        let err = log.try_clone().expect("clone log handle");
        // `STOCKRING_BIN`: another build of the binary (to measure an older one the same way).
        let bin = std::env::var("STOCKRING_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_stockring").to_owned());
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&def.config)
            .env_remove("STOCKRING_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn stockring");
        let old = self.procs().insert(name.to_owned(), child);
        assert!(old.is_none(), "{name} was already running");
    }

    pub fn pid(&self, name: &str) -> i32 {
        self.procs()
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not running"))
            .id() as i32
    }

    fn signal(&self, name: &str, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid(name)), sig)
            .unwrap_or_else(|e| panic!("{sig} to {name}: {e}"));
    }

    /// SIGKILL and reap: no drain, no snapshot, no goodbye to the peers.
    pub fn kill9(&self, name: &str) {
        let mut child = self
            .procs()
            .remove(name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        child.kill().expect("kill -9");
        let _ = child.wait();
    }

    pub fn sigstop(&self, name: &str) {
        self.signal(name, nix::sys::signal::Signal::SIGSTOP);
    }

    pub fn sigcont(&self, name: &str) {
        self.signal(name, nix::sys::signal::Signal::SIGCONT);
    }

    /// The exit status if the process has ended (then it is forgotten), None while it runs.
    pub fn try_exit(&self, name: &str) -> Option<ExitStatus> {
        let mut procs = self.procs();
        let status = procs.get_mut(name)?.try_wait().expect("try_wait")?;
        procs.remove(name);
        Some(status)
    }

    /// Waits until the process exits by itself.
    pub async fn wait_exit(&self, name: &str, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit(name) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `/ready` of the node answers 200 (the process must keep running).
    pub async fn wait_ready(&self, name: &str, timeout: Duration) {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let url = format!("{}/ready", self.base(name));
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = http.get(&url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Some(status) = self.try_exit(name) {
                panic!("{name} exited with {status} before it became ready");
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not become ready within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /v1/cluster` of a node; None if it does not answer (in 2 s) with JSON.
    pub async fn status(&self, name: &str) -> Option<Value> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .ok()?;
        let resp = http
            .get(format!("{}/v1/cluster", self.base(name)))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    /// A Prometheus counter/gauge without labels from `GET /metrics` (0 when not exported).
    pub async fn metric(&self, name: &str, metric: &str) -> f64 {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let text = http
            .get(format!("{}/metrics", self.base(name)))
            .send()
            .await
            .unwrap_or_else(|e| panic!("metrics of {name}: {e}"))
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (n, v) = l.split_once(' ')?;
                (n == metric).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    /// Polls `check` on `GET /v1/cluster` of `observer` every 50 ms until it holds; returns the
    /// status that satisfied it and how long it took. Panics (dumping the cluster) on timeout.
    pub async fn wait_status(
        &self,
        observer: &str,
        what: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> (Value, Duration) {
        let started = Instant::now();
        let mut last = None;
        loop {
            if let Some(s) = self.status(observer).await {
                if check(&s) {
                    return (s, started.elapsed());
                }
                last = Some(s);
            }
            if started.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for: {what} (as {observer} sees it); \
                     last status: {}",
                    last.map_or("none".into(), |s| s.to_string())
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every running node's `/v1/cluster` and the tail of every node's log, on stderr.
    /// Synchronous (plain TCP) so that it also works from `Drop` while a test panics.
    pub fn dump(&self) {
        eprintln!(
            "================ cluster dump ({}) ================",
            self.dir.path().display()
        );
        for def in self.defs.values() {
            let running = self.procs().contains_key(&def.name);
            eprintln!("---- {} (running: {running}) /v1/cluster:", def.name);
            if running {
                match raw_get(def.http_port, "/v1/cluster") {
                    Some(body) => eprintln!("{body}"),
                    None => eprintln!("(no answer)"),
                }
            }
            eprintln!("---- {} log tail ({}):", def.name, def.log.display());
            eprintln!("{}", tail(&def.log, 60));
        }
        eprintln!("================ end of cluster dump ================");
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        if std::env::var_os("STOCKRING_KEEP_CLUSTER_DIR").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tmp"));
            eprintln!("keeping {}", dir.keep().display());
        }
        for (_, mut child) in std::mem::take(&mut *self.procs()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A plain HTTP/1.0 GET with short timeouts; the body, if any.
fn raw_get(port: u16, path: &str) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some(body)
}

fn tail(path: &PathBuf, lines: usize) -> String {
    let mut text = String::new();
    if File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .is_err()
    {
        return "(no log)".into();
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A member of a `GET /v1/cluster` answer by name.
pub fn member<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
}

pub fn member_state(status: &Value, name: &str) -> Option<String> {
    member(status, name).and_then(|m| m["state"].as_str().map(str::to_owned))
}

pub fn vnodes_of(status: &Value, name: &str) -> u64 {
    member(status, name).map_or(0, |m| m["vnodes"].as_u64().unwrap_or(0))
}

pub fn moves_in_progress(status: &Value) -> usize {
    status["moves_in_progress"]
        .as_array()
        .map_or(usize::MAX, Vec::len)
}

/// Vnodes per member name, as one node sees the ring.
pub fn ownership(status: &Value) -> BTreeMap<String, u64> {
    status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("?").to_owned(),
                m["vnodes"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The ring is settled over exactly `owners`: each is `up`, holds floor or ceil of V/N, nobody
/// else holds anything, and no move is in progress.
pub fn balanced_over(status: &Value, owners: &[&str]) -> bool {
    let v = status["vnodes"].as_u64().unwrap_or(0);
    if v == 0 || moves_in_progress(status) != 0 {
        return false;
    }
    let n = owners.len() as u64;
    let (lo, hi) = (v / n, v.div_ceil(n));
    let counts = ownership(status);
    let owners_ok = owners.iter().all(|o| {
        member_state(status, o).as_deref() == Some("up")
            && (lo..=hi).contains(counts.get(*o).unwrap_or(&0))
    });
    let others_empty = counts
        .iter()
        .all(|(name, c)| owners.contains(&name.as_str()) || *c == 0);
    owners_ok && others_empty && counts.values().sum::<u64>() == v
}

// ---------------------------------------------------------------------------------------------
// Clients: requests to random live nodes, retried on retryable 503s, with outcome counts.

/// The 503 codes a client may retry (same id, same body: C3 makes that safe).
pub const RETRYABLE: &[&str] = &[
    "vnode_unavailable",
    "outcome_unknown",
    "timeout",
    "overloaded",
    "key_unavailable",
    "not_ready",
    "shutting_down",
];

/// How long one operation may keep getting retryable answers before the test fails.
pub const OP_PATIENCE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub base: String,
    /// Bumped each time the node is (re)added: clients drop pooled connections to an older
    /// process on the same port.
    pub generation: u64,
}

#[derive(Default)]
struct TargetsInner {
    live: Vec<Target>,
    in_flight: BTreeMap<String, usize>,
    generation: u64,
}

/// The nodes clients may send to, and how many requests each has in flight. A node about to
/// be killed or stopped is removed first and drained, so no client request is cut off by the
/// test itself: any transport error a client sees is a failure of the cluster.
#[derive(Default)]
pub struct Targets {
    inner: Mutex<TargetsInner>,
}

/// A request slot on one node; released on drop.
pub struct Lease {
    targets: std::sync::Arc<Targets>,
    pub target: Target,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut t = self.targets.lock();
        if let Some(n) = t.in_flight.get_mut(&self.target.name) {
            *n -= 1;
        }
    }
}

impl Targets {
    fn lock(&self) -> std::sync::MutexGuard<'_, TargetsInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, name: &str, base: &str) {
        let mut t = self.lock();
        t.generation += 1;
        let generation = t.generation;
        t.live.retain(|x| x.name != name);
        t.live.push(Target {
            name: name.to_owned(),
            base: base.to_owned(),
            generation,
        });
    }

    pub fn names(&self) -> Vec<String> {
        self.lock().live.iter().map(|t| t.name.clone()).collect()
    }

    /// A random live node (or exactly `only`, if it is live), counted as in flight.
    pub fn lease(
        self: &std::sync::Arc<Self>,
        rng: &mut impl rand::Rng,
        only: Option<&str>,
    ) -> Option<Lease> {
        let mut t = self.lock();
        let target = match only {
            Some(name) => t.live.iter().find(|x| x.name == name)?.clone(),
            None if t.live.is_empty() => return None,
            None => t.live[rng.gen_range(0..t.live.len())].clone(),
        };
        *t.in_flight.entry(target.name.clone()).or_default() += 1;
        Some(Lease {
            targets: self.clone(),
            target,
        })
    }

    /// Takes the node out of rotation and waits until no client request to it is in flight.
    pub async fn remove_and_drain(&self, name: &str) {
        self.lock().live.retain(|x| x.name != name);
        let deadline = Instant::now() + OP_PATIENCE;
        while self.lock().in_flight.get(name).copied().unwrap_or(0) > 0 {
            assert!(
                Instant::now() < deadline,
                "client requests to {name} did not finish"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// One HTTP client per node and process generation (pooled connections never outlive the
/// process they were opened to).
#[derive(Default)]
pub struct Clients {
    by_node: BTreeMap<String, (u64, reqwest::Client)>,
}

impl Clients {
    pub fn get(&mut self, target: &Target) -> reqwest::Client {
        match self.by_node.get(&target.name) {
            Some((g, c)) if *g == target.generation => c.clone(),
            _ => {
                let c = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .expect("client");
                self.by_node
                    .insert(target.name.clone(), (target.generation, c.clone()));
                c
            }
        }
    }
}

/// Outcome counts per test phase, and the failures clients ran into.
#[derive(Default)]
pub struct Stats {
    phase: Mutex<String>,
    counts: Mutex<BTreeMap<(String, String), u64>>,
    failures: Mutex<Vec<String>>,
}

impl Stats {
    pub fn set_phase(&self, phase: &str) {
        *self.phase.lock().unwrap() = phase.to_owned();
    }

    pub fn note(&self, outcome: &str) {
        let phase = self.phase.lock().unwrap().clone();
        *self
            .counts
            .lock()
            .unwrap()
            .entry((phase, outcome.to_owned()))
            .or_default() += 1;
    }

    pub fn fail(&self, what: String) {
        eprintln!("CLIENT FAILURE: {what}");
        let mut f = self.failures.lock().unwrap();
        if f.len() < 50 {
            f.push(what);
        }
    }

    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }

    /// (phase, outcome) -> count.
    pub fn counts(&self) -> BTreeMap<(String, String), u64> {
        self.counts.lock().unwrap().clone()
    }

    /// Total of the (phase, outcome) counts matching `pred`.
    pub fn total(&self, pred: impl Fn(&str, &str) -> bool) -> u64 {
        self.counts
            .lock()
            .unwrap()
            .iter()
            .filter(|((p, o), _)| pred(p, o))
            .map(|(_, n)| *n)
            .sum()
    }
}

/// A definitive answer (2xx or a 409 business answer) or a retryable 503.
pub enum Reply {
    Done(u16, Value),
    Retry { code: String, after_ms: u64 },
}

/// One request; anything that is neither 2xx, 409 nor a retryable 503 is an error.
pub async fn send_once(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<&Value>,
) -> Result<Reply, String> {
    let mut req = http.request(method.clone(), url);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| format!("{method} {url}: transport error: {e:?}"))?;
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("{method} {url}: reading the body: {e}"))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|_| format!("{method} {url}: {status} with a non-JSON body {text:?}"))?;
    let code = value["code"].as_str().unwrap_or("").to_owned();
    match status {
        200..=299 | 409 => Ok(Reply::Done(status, value)),
        503 if RETRYABLE.contains(&code.as_str()) => Ok(Reply::Retry {
            code,
            after_ms: value["retry_after_ms"].as_u64().unwrap_or(50),
        }),
        _ => Err(format!("{method} {url} {body:?}: {status} {value}")),
    }
}

/// Sends `method path body` to a random live node (or to `only`) until the answer is
/// definitive, counting every outcome in `stats`. Errors: a non-retryable failure, or no
/// definitive answer within `OP_PATIENCE`.
#[allow(clippy::too_many_arguments)]
pub async fn until_done(
    targets: &std::sync::Arc<Targets>,
    stats: &Stats,
    clients: &mut Clients,
    rng: &mut impl rand::Rng,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
    only: Option<&str>,
) -> Result<(u16, Value), String> {
    let started = Instant::now();
    let mut last = String::from("no live node");
    loop {
        if started.elapsed() > OP_PATIENCE {
            return Err(format!(
                "{method} {path} {body:?}: no definitive answer within {OP_PATIENCE:?}; last: {last}"
            ));
        }
        let Some(lease) = targets.lease(rng, only) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let http = clients.get(&lease.target);
        let url = format!("{}{path}", lease.target.base);
        let reply = send_once(&http, method.clone(), &url, body).await;
        drop(lease);
        match reply {
            Ok(Reply::Done(status, value)) => {
                let code = value["code"].as_str().unwrap_or("");
                stats.note(&if status < 300 {
                    "2xx".to_owned()
                } else {
                    format!("{status} {code}")
                });
                return Ok((status, value));
            }
            Ok(Reply::Retry { code, after_ms }) => {
                stats.note(&format!("503 {code}"));
                last = format!("503 {code} from {url}");
                let pause = after_ms.clamp(5, 200) + rng.gen_range(0..20);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
            Err(e) => {
                stats.note("failure");
                return Err(e);
            }
        }
    }
}
