//! The clients: each picks an operation, a key and a node at random (seeded), sends it over
//! HTTP, and records the invocation and how it ended. An operation whose outcome is unknown is
//! retried with the same id (C3 makes that safe), so most unknowns are resolved by a later
//! answer of the same operation.

use super::history::{Answer, End, Event, Op};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Holds live longer than any run: the model has no time in it (see `check`).
pub const TTL_MS: u64 = 3_600_000;

/// Writes events to `history.jsonl` as they happen and keeps them for the checker.
pub struct Recorder {
    started: Instant,
    next: AtomicU64,
    inner: Mutex<(Option<BufWriter<std::fs::File>>, Vec<Event>)>,
}

impl Recorder {
    pub fn new(file: Option<std::fs::File>) -> Self {
        Self {
            started: Instant::now(),
            next: AtomicU64::new(0),
            inner: Mutex::new((file.map(BufWriter::new), Vec::new())),
        }
    }

    /// Microseconds since the run began.
    pub fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    fn push(&self, e: Event) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = inner.0.as_mut() {
            if let Ok(line) = serde_json::to_string(&e) {
                let _ = writeln!(w, "{line}");
            }
        }
        inner.1.push(e);
    }

    pub fn invoke(&self, client: u64, key: &str, node: &str, op: &Op) -> u64 {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        self.push(Event::Invoke {
            index,
            client,
            key: key.to_owned(),
            node: node.to_owned(),
            op: op.clone(),
            at_us: self.now_us(),
        });
        index
    }

    pub fn complete(&self, index: u64, end: End) {
        self.push(Event::Complete { index, end });
    }

    pub fn not_sent(&self, index: u64) {
        self.push(Event::NotSent {
            index,
            at_us: self.now_us(),
        });
    }

    pub fn events(&self) -> Vec<Event> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = inner.0.as_mut() {
            let _ = w.flush();
        }
        inner.1.clone()
    }
}

/// One node a client can send to.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub base: String,
}

/// How a single HTTP attempt ended.
pub enum Sent {
    /// The connection was refused: the request never reached a node.
    NotSent,
    Ended(End),
}

/// Sends `op` on `key` to `target` and records it.
pub struct Sender {
    pub http: reqwest::Client,
    pub recorder: Arc<Recorder>,
}

fn split(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or((key, ""))
}

impl Sender {
    pub fn new(recorder: Arc<Recorder>, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self { http, recorder })
    }

    pub async fn send(&self, client: u64, target: &Target, key: &str, op: &Op) -> Sent {
        let index = self.recorder.invoke(client, key, &target.name, op);
        let result = self.request(target, key, op).await;
        match result {
            Err(e) if e.is_connect() => {
                self.recorder.not_sent(index);
                Sent::NotSent
            }
            Err(e) => {
                let end = End::Unknown {
                    at_us: self.recorder.now_us(),
                    reason: if e.is_timeout() {
                        "timeout".into()
                    } else {
                        format!("transport: {e}")
                    },
                };
                self.recorder.complete(index, end.clone());
                Sent::Ended(end)
            }
            Ok((status, body)) => {
                let at_us = self.recorder.now_us();
                let end = match classify(op, status, &body) {
                    Classified::Answer(answer) => End::Answered { at_us, answer },
                    Classified::NotApplied => {
                        self.recorder.not_sent(index);
                        return Sent::NotSent;
                    }
                    Classified::Unknown(reason) => End::Unknown { at_us, reason },
                };
                self.recorder.complete(index, end.clone());
                Sent::Ended(end)
            }
        }
    }

    async fn request(
        &self,
        target: &Target,
        key: &str,
        op: &Op,
    ) -> Result<(u16, Value), reqwest::Error> {
        let (sku, warehouse) = split(key);
        let base = &target.base;
        let req = match op {
            Op::Reserve { id, qty } => self
                .http
                .post(format!("{base}/v1/reservations"))
                .json(&json!({"sku": sku, "warehouse": warehouse, "qty": qty,
                        "reservation_id": id, "ttl_ms": TTL_MS})),
            Op::Commit { id } => self
                .http
                .post(format!("{base}/v1/reservations/{id}/commit"))
                .json(&json!({"sku": sku, "warehouse": warehouse})),
            Op::Release { id } => self
                .http
                .post(format!("{base}/v1/reservations/{id}/release"))
                .json(&json!({"sku": sku, "warehouse": warehouse})),
            Op::Receive { id, qty } => self
                .http
                .post(format!("{base}/v1/stock/{sku}/{warehouse}/receipts"))
                .json(&json!({"qty": qty, "op_id": id})),
            Op::Read => self.http.get(format!("{base}/v1/stock/{sku}/{warehouse}")),
        };
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, body))
    }
}

/// 503 codes that promise nothing was applied (see the README's API section): the node
/// refused before the request reached a key, or the key's owner is down or its vnode moving.
/// Every other 5xx (`timeout`, `outcome_unknown`, `key_unavailable`, `shutting_down`,
/// `internal`, ...) may come after the key applied it.
const NOT_APPLIED: &[&str] = &["vnode_unavailable", "overloaded", "not_ready"];

enum Classified {
    Answer(Answer),
    /// A 503 that promises nothing was applied: the checker drops it, like a refused
    /// connection. (If a node broke that promise, the history would show an effect no
    /// operation explains, and the checker would say so.)
    NotApplied,
    Unknown(String),
}

/// A node's answer as the checker sees it.
fn classify(op: &Op, status: u16, body: &Value) -> Classified {
    let int = |field: &str| body[field].as_i64();
    if (200..300).contains(&status) {
        let answer = match op {
            Op::Reserve { .. } => int("available").map(|available| Answer::Reserved { available }),
            Op::Commit { .. } | Op::Release { .. } => Some(Answer::Done),
            Op::Receive { .. } | Op::Read => match (int("on_hand"), int("reserved")) {
                (Some(on_hand), Some(reserved)) => Some(Answer::Stock { on_hand, reserved }),
                _ => None,
            },
        };
        return match answer {
            Some(a) => Classified::Answer(a),
            None => Classified::Unknown(format!("{status} with an unreadable body: {body}")),
        };
    }
    let code = body["code"].as_str().unwrap_or("").to_owned();
    if (400..500).contains(&status) && !code.is_empty() {
        return Classified::Answer(Answer::Refused {
            code,
            available: int("available"),
        });
    }
    if status == 503 && NOT_APPLIED.contains(&code.as_str()) {
        return Classified::NotApplied;
    }
    Classified::Unknown(if code.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status} {code}")
    })
}

/// Relative weights of the operations a client picks.
#[derive(Clone, Debug)]
pub struct Mix {
    pub reserve: u32,
    pub commit: u32,
    pub release: u32,
    pub receive: u32,
    pub read: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            reserve: 40,
            commit: 20,
            release: 10,
            receive: 10,
            read: 20,
        }
    }
}

impl std::str::FromStr for Mix {
    type Err = String;
    /// `reserve=40,commit=20,release=10,receive=10,read=20` (missing ones are 0).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut mix = Mix {
            reserve: 0,
            commit: 0,
            release: 0,
            receive: 0,
            read: 0,
        };
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("expected name=weight, got {part:?}"))?;
            let weight: u32 = weight
                .parse()
                .map_err(|_| format!("bad weight in {part:?}"))?;
            match name.trim() {
                "reserve" => mix.reserve = weight,
                "commit" => mix.commit = weight,
                "release" => mix.release = weight,
                "receive" => mix.receive = weight,
                "read" => mix.read = weight,
                other => return Err(format!("unknown operation {other:?} in the mix")),
            }
        }
        if mix.reserve == 0 || mix.reserve + mix.commit + mix.release + mix.receive + mix.read == 0
        {
            return Err("the mix needs reserve > 0".into());
        }
        Ok(mix)
    }
}

/// What the clients do.
#[derive(Clone, Debug)]
pub struct Plan {
    pub clients: usize,
    /// Operations per second, all clients together.
    pub rate: f64,
    pub hot_keys: usize,
    pub cold_keys: usize,
    /// Share of operations that go to the hot keys.
    pub hot_share: f64,
    pub mix: Mix,
    pub seed: u64,
    /// Attempts of one operation whose outcome stays unknown (same id each time).
    pub attempts: usize,
}

impl Plan {
    pub fn keys(&self) -> Vec<String> {
        (0..self.hot_keys)
            .map(|i| format!("hot-{i}/w1"))
            .chain((0..self.cold_keys).map(|i| format!("cold-{i}/w1")))
            .collect()
    }
}

/// How long `until_answered` keeps trying.
#[derive(Clone, Copy)]
pub struct Patience<'a> {
    /// Attempts whose outcome stays unknown (same id each time).
    pub attempts: usize,
    /// Attempts refused with nothing applied (connection refused, `vnode_unavailable`, ...):
    /// the workload gives up on such an operation soon (nothing to resolve) and moves on.
    pub refusals: usize,
    /// Give up after the current attempt once this is set.
    pub stop: Option<&'a AtomicBool>,
}

/// Sends `op` until a node answers it or the attempts run out, each try to a random node; a
/// refused connection does not count as an attempt (nothing was sent) but waits a little.
pub async fn until_answered(
    sender: &Sender,
    client: u64,
    targets: &[Target],
    (key, op): (&str, &Op),
    patience: Patience<'_>,
    rng: &mut StdRng,
) -> Option<Answer> {
    let Patience {
        attempts,
        refusals,
        stop,
    } = patience;
    let mut tries = 0;
    let mut refused = 0;
    while tries < attempts && refused < refusals {
        let target = &targets[rng.gen_range(0..targets.len())];
        match sender.send(client, target, key, op).await {
            Sent::Ended(End::Answered { answer, .. }) => return Some(answer),
            Sent::Ended(End::Unknown { .. }) => tries += 1,
            Sent::NotSent => refused += 1,
        }
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) && tries > 0 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..250))).await;
    }
    None
}

/// One client's loop until `stop`.
pub async fn client(
    id: u64,
    plan: Plan,
    sender: Arc<Sender>,
    targets: Arc<Vec<Target>>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_mul(1_000_003).wrapping_add(id));
    let keys = plan.keys();
    let (hot, cold) = keys.split_at(plan.hot_keys);
    // Reservations this client holds (or may hold): commit or release picks one.
    let mut holding: Vec<(String, String)> = Vec::new();
    let mut n = 0u64;
    let interval = Duration::from_secs_f64(plan.clients as f64 / plan.rate.max(0.001));
    let m = &plan.mix;
    let total = m.reserve + m.commit + m.release + m.receive + m.read;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        next += interval.mul_f64(rng.gen_range(0.5..1.5));
        let now = Instant::now();
        if next > now {
            tokio::time::sleep(next - now).await;
        } else {
            next = now;
        }
        let pick_key = |rng: &mut StdRng| -> String {
            if !hot.is_empty() && (cold.is_empty() || rng.gen_bool(plan.hot_share)) {
                hot[rng.gen_range(0..hot.len())].clone()
            } else {
                cold[rng.gen_range(0..cold.len())].clone()
            }
        };
        let mut roll = rng.gen_range(0..total);
        let mut which = 0;
        for (i, w) in [m.reserve, m.commit, m.release, m.receive, m.read]
            .into_iter()
            .enumerate()
        {
            if roll < w {
                which = i;
                break;
            }
            roll -= w;
        }
        if (which == 1 || which == 2) && holding.is_empty() {
            which = 0;
        }
        n += 1;
        let (key, op) = match which {
            0 => (
                pick_key(&mut rng),
                Op::Reserve {
                    id: format!("c{id}-{n}"),
                    qty: rng.gen_range(1..=3),
                },
            ),
            1 | 2 => {
                let (key, rid) = holding.swap_remove(rng.gen_range(0..holding.len()));
                let op = if which == 1 {
                    Op::Commit { id: rid }
                } else {
                    Op::Release { id: rid }
                };
                (key, op)
            }
            3 => (
                pick_key(&mut rng),
                Op::Receive {
                    id: format!("r{id}-{n}"),
                    qty: rng.gen_range(1..=10),
                },
            ),
            _ => (pick_key(&mut rng), Op::Read),
        };
        let patience = Patience {
            attempts: plan.attempts,
            refusals: 3,
            stop: Some(&stop),
        };
        let answer = until_answered(&sender, id, &targets, (&key, &op), patience, &mut rng).await;
        match (&op, answer) {
            // Held, or maybe held: either way it is worth a commit or release later.
            (Op::Reserve { id: rid, .. }, Some(Answer::Reserved { .. }) | None) => {
                holding.push((key, rid.clone()))
            }
            // A commit or release that got no answer: try it again later.
            (Op::Commit { id: rid } | Op::Release { id: rid }, None) => {
                holding.push((key, rid.clone()))
            }
            _ => {}
        }
    }
}
