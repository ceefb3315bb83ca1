//! The live progress bar.
//!
//! Workers only bump an atomic counter; a separate ticker copies it into the bar a few times a
//! second, so drawing never sits on the measured path or makes workers contend on its lock.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;

const TICK: Duration = Duration::from_millis(200);

/// A running progress display; [`Progress::finish`] removes it before the summary is printed.
pub struct Progress {
    bar: ProgressBar,
    ticker: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts a bar over `done`. With `total` it shows a bounded bar (flash); without, a
    /// counter with a rate (timed runs). Hidden under `json_only` or when stdout is not a
    /// terminal, so piped output stays exactly the summary and the JSON line.
    pub fn start(json_only: bool, total: Option<u64>, done: Arc<AtomicU64>) -> Self {
        if json_only || !std::io::stdout().is_terminal() {
            return Self {
                bar: ProgressBar::hidden(),
                ticker: None,
            };
        }
        let bar = match total {
            Some(len) => ProgressBar::new(len).with_style(style(
                "{elapsed_precise} [{bar:40}] {pos}/{len} attempts ({per_sec})",
            )),
            None => ProgressBar::new_spinner().with_style(style(
                "{spinner} {elapsed_precise} {pos} requests ({per_sec})",
            )),
        };
        let ticking = bar.clone();
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            loop {
                interval.tick().await;
                ticking.set_position(done.load(Ordering::Relaxed));
            }
        });
        Self {
            bar,
            ticker: Some(ticker),
        }
    }

    /// Stops the ticker and clears the bar.
    pub fn finish(self) {
        if let Some(ticker) = self.ticker {
            ticker.abort();
        }
        self.bar.finish_and_clear();
    }
}

/// The templates are constants, so a parse failure is a programming error; fall back to the
/// default style rather than panic.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}
