//! What a person looks at first: availability per fault window and per fault kind, and an SVG
//! with latency over time, throughput per second, the fault windows shaded and the unknown
//! outcomes marked (after Jepsen's latency and rate graphs).

use super::history::{Answer, End, Event, Op};
use super::nemesis::Window;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// How one invocation ended, from the events (unlike `Call`, this keeps the refused
/// connections: they count against availability).
#[derive(Clone, Debug)]
pub struct Attempt {
    pub client: u64,
    pub key: String,
    pub op: Op,
    pub invoke_us: u64,
    pub end_us: u64,
    pub outcome: Outcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Ok,
    /// A definite 4xx refusal (insufficient stock, ...): the system answered.
    Refused,
    /// Unknown outcome (timeout, reset, 5xx).
    Unknown,
    /// The connection was refused (the node was down).
    NotSent,
}

impl Outcome {
    pub fn answered(self) -> bool {
        matches!(self, Outcome::Ok | Outcome::Refused)
    }
}

pub fn attempts(events: &[Event]) -> Vec<Attempt> {
    let mut open: BTreeMap<u64, (u64, String, Op, u64)> = BTreeMap::new();
    let mut out = Vec::new();
    for e in events {
        match e {
            Event::Invoke {
                index,
                client,
                key,
                op,
                at_us,
                ..
            } => {
                open.insert(*index, (*client, key.clone(), op.clone(), *at_us));
            }
            Event::Complete { index, end } => {
                if let Some((client, key, op, invoke_us)) = open.remove(index) {
                    let (end_us, outcome) = match end {
                        End::Answered {
                            at_us,
                            answer: Answer::Refused { .. },
                        } => (*at_us, Outcome::Refused),
                        End::Answered { at_us, .. } => (*at_us, Outcome::Ok),
                        End::Unknown { at_us, .. } => (*at_us, Outcome::Unknown),
                    };
                    out.push(Attempt {
                        client,
                        key,
                        op,
                        invoke_us,
                        end_us,
                        outcome,
                    });
                }
            }
            Event::NotSent { index, at_us } => {
                if let Some((client, key, op, invoke_us)) = open.remove(index) {
                    out.push(Attempt {
                        client,
                        key,
                        op,
                        invoke_us,
                        end_us: *at_us,
                        outcome: Outcome::NotSent,
                    });
                }
            }
        }
    }
    out.sort_by_key(|a| a.invoke_us);
    out
}

/// A client's operation as it saw it: its consecutive attempts of the same operation on the
/// same key (the retries after an unknown outcome or a refused connection) as one, invoked
/// with the first attempt and ended as the last one ended.
pub fn operations(attempts: &[Attempt]) -> Vec<Attempt> {
    let mut by_client: BTreeMap<u64, Vec<&Attempt>> = BTreeMap::new();
    for a in attempts {
        by_client.entry(a.client).or_default().push(a);
    }
    let mut out = Vec::new();
    for list in by_client.values() {
        let mut current: Option<Attempt> = None;
        for a in list {
            match current.as_mut() {
                Some(c) if c.key == a.key && c.op == a.op && !c.outcome.answered() => {
                    c.end_us = a.end_us;
                    c.outcome = a.outcome;
                }
                _ => {
                    out.extend(current.take());
                    current = Some((*a).clone());
                }
            }
        }
        out.extend(current);
    }
    out.sort_by_key(|a| a.invoke_us);
    out
}

/// Availability during one fault.
#[derive(Clone, Debug, Serialize)]
pub struct WindowFigures {
    pub kind: String,
    pub node: String,
    pub start_s: f64,
    pub length_s: f64,
    /// Client operations (retries included in theirs) begun between the fault's start and its
    /// heal, and how many of them were never answered: the last try's outcome unknown, or
    /// the last try unable to connect.
    pub ops: usize,
    pub unknown: usize,
    pub not_sent: usize,
    /// Single tries (each retry counted) in the window, and how many of them went unanswered.
    pub tries: usize,
    pub tries_unanswered: usize,
    /// Keys with an unanswered operation in the window.
    pub affected_keys: usize,
    /// Over the affected keys, the longest time from the fault's start / its heal to the
    /// first answer to an operation invoked after it (None when no key was affected or one
    /// never answered again).
    pub worst_recovery_after_start_ms: Option<u64>,
    pub worst_recovery_after_heal_ms: Option<u64>,
}

impl WindowFigures {
    pub fn failed_share(&self) -> f64 {
        if self.ops == 0 {
            0.0
        } else {
            (self.unknown + self.not_sent) as f64 / self.ops as f64
        }
    }
}

pub fn availability(attempts: &[Attempt], windows: &[Window]) -> Vec<WindowFigures> {
    let operations = operations(attempts);
    windows
        .iter()
        .map(|w| {
            let within = |a: &&Attempt| a.invoke_us >= w.start_us && a.invoke_us < w.heal_us;
            let tries: Vec<&Attempt> = attempts.iter().filter(within).collect();
            let inside: Vec<&Attempt> = operations.iter().filter(within).collect();
            let affected: BTreeSet<&str> = tries
                .iter()
                .filter(|a| !a.outcome.answered())
                .map(|a| a.key.as_str())
                .collect();
            let recovery = |from: u64| -> Option<u64> {
                let mut worst = None::<u64>;
                for key in &affected {
                    let first = attempts
                        .iter()
                        .filter(|a| a.key == *key && a.invoke_us >= from && a.outcome.answered())
                        .map(|a| a.end_us)
                        .min()?;
                    let took = (first.saturating_sub(from)) / 1000;
                    worst = Some(worst.map_or(took, |w| w.max(took)));
                }
                worst
            };
            WindowFigures {
                kind: w.kind.name().to_owned(),
                node: w.node.clone(),
                start_s: w.start_us as f64 / 1e6,
                length_s: w.heal_us.saturating_sub(w.start_us) as f64 / 1e6,
                ops: inside.len(),
                unknown: inside
                    .iter()
                    .filter(|a| a.outcome == Outcome::Unknown)
                    .count(),
                not_sent: inside
                    .iter()
                    .filter(|a| a.outcome == Outcome::NotSent)
                    .count(),
                tries: tries.len(),
                tries_unanswered: tries.iter().filter(|a| !a.outcome.answered()).count(),
                affected_keys: affected.len(),
                worst_recovery_after_start_ms: recovery(w.start_us),
                worst_recovery_after_heal_ms: recovery(w.heal_us),
            }
        })
        .collect()
}

/// The windows of one kind together.
#[derive(Clone, Debug, Serialize)]
pub struct KindFigures {
    pub windows: usize,
    pub ops: usize,
    pub failed_share: f64,
    pub worst_recovery_after_heal_ms: Option<u64>,
}

pub fn per_kind(figures: &[WindowFigures]) -> BTreeMap<String, KindFigures> {
    let mut out: BTreeMap<String, KindFigures> = BTreeMap::new();
    for f in figures {
        let k = out.entry(f.kind.clone()).or_insert(KindFigures {
            windows: 0,
            ops: 0,
            failed_share: 0.0,
            worst_recovery_after_heal_ms: None,
        });
        let failed = k.failed_share * k.ops as f64 + (f.unknown + f.not_sent) as f64;
        k.windows += 1;
        k.ops += f.ops;
        k.failed_share = if k.ops == 0 {
            0.0
        } else {
            failed / k.ops as f64
        };
        if let Some(r) = f.worst_recovery_after_heal_ms {
            k.worst_recovery_after_heal_ms =
                Some(k.worst_recovery_after_heal_ms.map_or(r, |w| w.max(r)));
        }
    }
    out
}

const W: f64 = 1200.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const LAT_TOP: f64 = 46.0;
const LAT_H: f64 = 330.0;
const RATE_TOP: f64 = 420.0;
const RATE_H: f64 = 160.0;
const H: f64 = 640.0;

/// Latency (log scale, each operation a dot at its invocation time) above throughput per
/// second (answered vs unanswered), the fault windows shaded across both.
pub fn svg(attempts: &[Attempt], windows: &[Window], title: &str) -> String {
    let end_us = attempts
        .iter()
        .map(|a| a.end_us)
        .chain(windows.iter().map(|w| w.heal_us))
        .max()
        .unwrap_or(1)
        .max(1);
    let x = |us: u64| LEFT + (W - LEFT - RIGHT) * us as f64 / end_us as f64;
    // 100 us .. 10 s on a log axis.
    let (lo, hi) = (2.0_f64, 7.0_f64);
    let y_lat = |us: u64| {
        let l = (us.max(1) as f64).log10().clamp(lo, hi);
        LAT_TOP + LAT_H * (1.0 - (l - lo) / (hi - lo))
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="14" font-size="14">{}</text>
"##,
        escape(title)
    );
    for (i, w) in windows.iter().enumerate() {
        let (x0, x1) = (x(w.start_us), x(w.heal_us.max(w.start_us + 1)));
        // Labels alternate between two rows so that close windows stay readable.
        let label_y = LAT_TOP - 4.0 - 10.0 * (i % 2) as f64;
        let color = match w.kind.name() {
            "kill" | "kill-leader" => "#f4a0a0",
            "pause" => "#f7d08a",
            _ => "#c8d8f0",
        };
        let _ = writeln!(
            s,
            r##"<rect x="{x0:.1}" y="{LAT_TOP}" width="{:.1}" height="{:.1}" fill="{color}" fill-opacity="0.5"/><text x="{x0:.1}" y="{:.1}" font-size="9">{} {}</text>"##,
            (x1 - x0).max(1.0),
            RATE_TOP + RATE_H - LAT_TOP,
            label_y,
            w.kind.name(),
            escape(&w.node)
        );
    }
    // Axes and labels.
    for p in 2..=7 {
        let y = y_lat(10u64.pow(p));
        let label = match p {
            2 => "0.1 ms",
            3 => "1 ms",
            4 => "10 ms",
            5 => "100 ms",
            6 => "1 s",
            _ => "10 s",
        };
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="4" y="{:.1}">{label}</text>"##,
            W - RIGHT,
            y + 4.0
        );
    }
    let seconds = end_us / 1_000_000;
    let step = (seconds / 12).max(1);
    for t in (0..=seconds).step_by(step as usize) {
        let xx = x(t * 1_000_000);
        let _ = writeln!(
            s,
            r##"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{t} s</text>"##,
            RATE_TOP + RATE_H + 16.0
        );
    }
    // At most ~40,000 dots: an SVG a browser still opens quickly.
    let every = (attempts.len() / 40_000).max(1);
    for (i, a) in attempts.iter().enumerate() {
        let failed = !a.outcome.answered();
        if i % every != 0 && !failed {
            continue;
        }
        let color = match a.outcome {
            Outcome::Ok => "#1f5fbf",
            Outcome::Refused => "#888",
            Outcome::Unknown => "#d00",
            Outcome::NotSent => "#f80",
        };
        let r = if failed { 2.2 } else { 1.2 };
        let _ = writeln!(
            s,
            r##"<circle cx="{:.1}" cy="{:.1}" r="{r}" fill="{color}"/>"##,
            x(a.invoke_us),
            y_lat(a.end_us.saturating_sub(a.invoke_us))
        );
    }
    // Throughput per second.
    let buckets = (seconds + 1) as usize;
    let mut ok = vec![0u32; buckets];
    let mut bad = vec![0u32; buckets];
    for a in attempts {
        let b = ((a.end_us / 1_000_000) as usize).min(buckets - 1);
        if a.outcome.answered() {
            ok[b] += 1;
        } else {
            bad[b] += 1;
        }
    }
    let top = ok
        .iter()
        .chain(bad.iter())
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let line = |v: &[u32]| -> String {
        v.iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "{:.1},{:.1}",
                    x(i as u64 * 1_000_000 + 500_000),
                    RATE_TOP + RATE_H * (1.0 - *n as f64 / top)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#1f5fbf"/><polyline points="{}" fill="none" stroke="#d00"/>
<text x="4" y="{RATE_TOP}">{top} ops/s</text><text x="4" y="{:.1}">0</text>
<text x="{LEFT}" y="{:.1}">latency of each try (blue ok, grey refused by the ledger, red outcome unknown, orange nothing applied: connection refused or 503 vnode_unavailable)</text>
<text x="{LEFT}" y="{:.1}">operations per second: answered (blue), unanswered (red); shaded: faults</text>
</svg>"##,
        line(&ok),
        line(&bad),
        RATE_TOP + RATE_H,
        LAT_TOP + LAT_H + 20.0,
        RATE_TOP - 6.0,
    );
    s
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
