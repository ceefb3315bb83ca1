//! Per-worker counting and the final report.
//!
//! Each worker owns a [`Tally`] so the hot loop never contends on shared state; tallies are
//! merged once, after every worker has finished.

use std::io::{self, Write};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::client::Outcome;
use super::Workload;

/// The histogram's upper bound: latencies are recorded in µs up to 60 s (clamped beyond).
const MAX_LATENCY_US: u64 = 60_000_000;
/// Three significant figures: 0.1 % resolution, the usual choice for latency percentiles.
const SIG_FIGS: u8 = 3;

/// Outcomes and latencies seen by one worker (or, after merging, by all of them).
#[derive(Debug, Clone)]
pub struct Tally {
    hist: Histogram<u64>,
    pub ok: u64,
    pub insufficient: u64,
    pub errors: u64,
    /// The first failure seen, kept so a run full of errors says what went wrong.
    pub first_error: Option<String>,
}

impl Tally {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, SIG_FIGS)?,
            ok: 0,
            insufficient: 0,
            errors: 0,
            first_error: None,
        })
    }

    /// Counts one attempt. Every attempt's latency is recorded, failures included, so timeouts
    /// and slow error paths show up in the tail instead of vanishing from it.
    pub fn record(&mut self, outcome: Outcome, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.hist.saturating_record(us.max(1));
        match outcome {
            Outcome::Granted => self.ok += 1,
            Outcome::Insufficient => self.insufficient += 1,
            Outcome::Failed(why) => {
                self.errors += 1;
                self.first_error.get_or_insert(why);
            }
        }
    }

    /// Folds another worker's tally into this one.
    pub fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.hist.add(&other.hist)?;
        self.ok += other.ok;
        self.insufficient += other.insufficient;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }

    pub fn requests(&self) -> u64 {
        self.ok + self.insufficient + self.errors
    }
}

/// The result of one bench run; printed as `{"bench":{...}}` and returned to the caller.
#[derive(Serialize, Debug, Clone)]
pub struct BenchReport {
    pub workload: Workload,
    pub clients: usize,
    pub requests: u64,
    /// 2xx answers.
    pub ok: u64,
    /// 409 `insufficient_stock` answers.
    pub insufficient: u64,
    /// Everything else: transport errors, timeouts, 5xx, other 4xx.
    pub errors: u64,
    pub elapsed_s: f64,
    pub throughput_rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Flash only: whether exactly the available stock was granted, and nothing failed.
    pub flash_pass: Option<bool>,
    pub flash_detail: Option<String>,
}

impl BenchReport {
    /// Builds the report from the merged tally of a run that took `elapsed`.
    pub fn new(workload: Workload, clients: usize, tally: &Tally, elapsed: Duration) -> Self {
        let requests = tally.requests();
        let elapsed_s = elapsed.as_secs_f64();
        let throughput_rps = if elapsed_s > 0.0 {
            requests as f64 / elapsed_s
        } else {
            0.0
        };
        let pct = |q: f64| {
            if requests == 0 {
                0
            } else {
                tally.hist.value_at_quantile(q)
            }
        };
        Self {
            workload,
            clients,
            requests,
            ok: tally.ok,
            insufficient: tally.insufficient,
            errors: tally.errors,
            elapsed_s,
            throughput_rps,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
            p999_us: pct(0.999),
            max_us: if requests == 0 { 0 } else { tally.hist.max() },
            flash_pass: None,
            flash_detail: None,
        }
    }

    /// The machine-readable line: exactly one line, `{"bench":{...}}`.
    pub fn json_line(&self) -> serde_json::Result<String> {
        #[derive(Serialize)]
        struct Line<'a> {
            bench: &'a BenchReport,
        }
        serde_json::to_string(&Line { bench: self })
    }

    /// Writes the human summary (unless `json_only`) followed by the JSON line.
    pub fn print(&self, first_error: Option<&str>, json_only: bool) -> anyhow::Result<()> {
        let mut out = io::stdout().lock();
        if !json_only {
            self.write_summary(&mut out, first_error)?;
        }
        writeln!(out, "{}", self.json_line()?)?;
        out.flush()?;
        Ok(())
    }

    fn write_summary(&self, out: &mut impl Write, first_error: Option<&str>) -> io::Result<()> {
        let ms = |us: u64| us as f64 / 1000.0;
        writeln!(
            out,
            "bench {}: {} clients, {:.2} s, {:.0} req/s",
            self.workload.as_str(),
            self.clients,
            self.elapsed_s,
            self.throughput_rps
        )?;
        writeln!(
            out,
            "  latency ms: p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.p999_us),
            ms(self.max_us)
        )?;
        writeln!(
            out,
            "  requests {}: ok {}, insufficient {}, errors {}",
            self.requests, self.ok, self.insufficient, self.errors
        )?;
        if let Some(why) = first_error {
            writeln!(out, "  first error: {why}")?;
        }
        if let (Some(pass), Some(detail)) = (self.flash_pass, &self.flash_detail) {
            let verdict = if pass { "PASS" } else { "FAIL" };
            writeln!(out, "  flash: {verdict}: {detail}")?;
        }
        Ok(())
    }
}
