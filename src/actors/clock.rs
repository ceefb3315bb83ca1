//! The one place the shell reads time. Hold expiry is absolute wall-clock milliseconds (it must
//! survive restarts), but never goes backwards within a process: a wall-clock step back is
//! absorbed, so no hold can expire early and then come back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

#[derive(Default)]
pub struct SystemClock {
    last: AtomicU64,
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let prev = self.last.fetch_max(wall, Ordering::AcqRel);
        prev.max(wall)
    }
}
