//! The one place the shell reads time. Hold expiry is absolute wall-clock milliseconds (it must
//! survive restarts), but the time a node serves never goes backwards, within a process or
//! across a restart:
//! - within a process, a wall-clock step back is absorbed (`last`);
//! - across a restart, a durable *time floor* bounds it: the node never serves a time above
//!   the floor stored in its database (`ceiling`), and `keep_time_floor` keeps raising the
//!   floor a little ahead of the clock, so in practice nothing waits for it. A restarted node
//!   starts its clock at the stored floor: at least every time it served before, so a hold
//!   that a reply (or a journaled expiry) showed as expired never comes back, even if the wall
//!   clock was stepped back while it was down.

use crate::persistence::{Request, StorageError, WriterHandle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// Where wall time comes from (the system clock, or a test's).
pub trait Wall: Send + Sync + 'static {
    fn wall_ms(&self) -> u64;
}

#[derive(Default)]
pub struct SystemWall;

impl Wall for SystemWall {
    fn wall_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// How far ahead of the clock the durable floor is kept: raised to `now + FLOOR_AHEAD_MS`
/// once the clock comes within half of it. So a busy node writes the floor a few times a
/// second (riding on group commits), and a restart starts at most this far ahead of the wall
/// clock (it waits that out first, see `NodeClock::start_delay`).
pub const FLOOR_AHEAD_MS: u64 = 500;

/// A node's clock: wall time, never going back, never past the durable floor.
pub struct NodeClock {
    wall: Arc<dyn Wall>,
    last: AtomicU64,
    /// The durable floor: no time above it has been served.
    ceiling: AtomicU64,
    /// Stopping: the floor is set to the largest time served and no longer raised.
    settled: std::sync::atomic::AtomicBool,
}

impl NodeClock {
    /// A clock that starts at the floor a previous run of the node stored (0 for a new node).
    pub fn new(wall: Arc<dyn Wall>, stored_floor: u64) -> Self {
        Self {
            wall,
            last: AtomicU64::new(stored_floor),
            ceiling: AtomicU64::new(stored_floor),
            settled: Default::default(),
        }
    }

    /// A clock with no durable floor (tests of the actors alone).
    pub fn unfloored() -> Self {
        Self {
            wall: Arc::new(SystemWall),
            last: AtomicU64::new(0),
            ceiling: AtomicU64::new(u64::MAX),
            settled: Default::default(),
        }
    }

    /// How long the wall clock is behind the stored floor, if it is by at most
    /// `2 * FLOOR_AHEAD_MS`: a restart right after a crash waits that out, so it serves no
    /// time ahead of the wall clock. A larger gap is a clock stepped back: waiting is no
    /// answer, so the clock holds at the floor until the wall clock catches up (expiries come
    /// late, never early).
    pub fn start_delay(&self) -> Option<Duration> {
        let gap = self
            .ceiling
            .load(Ordering::Acquire)
            .saturating_sub(self.wall.wall_ms());
        (gap > 0 && gap <= 2 * FLOOR_AHEAD_MS).then(|| Duration::from_millis(gap))
    }

    /// The floor to store next, if the clock has come close to the stored one.
    fn floor_due(&self) -> Option<u64> {
        if self.settled.load(Ordering::Acquire) {
            return None;
        }
        let ceiling = self.ceiling.load(Ordering::Acquire);
        let wall = self.wall.wall_ms().max(self.last.load(Ordering::Acquire));
        (wall + FLOOR_AHEAD_MS / 2 >= ceiling).then_some(wall + FLOOR_AHEAD_MS)
    }

    fn floor_stored(&self, floor: u64) {
        self.ceiling.fetch_max(floor, Ordering::AcqRel);
    }
}

impl Clock for NodeClock {
    fn now_ms(&self) -> u64 {
        let wall = self
            .wall
            .wall_ms()
            .min(self.ceiling.load(Ordering::Acquire));
        let prev = self.last.fetch_max(wall, Ordering::AcqRel);
        prev.max(wall)
    }
}

/// Stores the floor before the node serves anything (its first value), then keeps it ahead of
/// the clock for as long as the writer runs.
pub async fn raise_time_floor(
    clock: &NodeClock,
    writer: &WriterHandle,
) -> Result<(), StorageError> {
    let Some(floor) = clock.floor_due() else {
        return Ok(());
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let done = Box::new(move |r| {
        let _ = tx.send(r);
    });
    writer
        .submit(Request::SetTimeFloor {
            floor,
            exact: false,
            done,
        })
        .await?;
    rx.await.map_err(|_| StorageError::WriterStopped)??;
    clock.floor_stored(floor);
    Ok(())
}

/// Keeps the durable floor ahead of the clock (see the module doc), until the writer stops.
/// It writes the floor a few times a second while time passes, idle or not: a request after
/// a quiet hour must read the time of now, not of an hour ago.
pub async fn keep_time_floor(
    clock: Arc<NodeClock>,
    writer: crate::persistence::writer::WeakWriterHandle,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(FLOOR_AHEAD_MS / 10)).await;
        let Some(writer) = writer.upgrade() else {
            return;
        };
        match raise_time_floor(&clock, &writer).await {
            Ok(()) => {}
            Err(StorageError::WriterStopped) => return,
            Err(e) => tracing::warn!(error = %e, "the time floor could not be stored; time holds"),
        }
    }
}

/// At a clean stop, once nothing is served any more: stores the largest time served as the
/// floor, so that a restart (with a sound wall clock) has nothing to wait out.
pub async fn settle_time_floor(
    clock: &NodeClock,
    writer: &WriterHandle,
) -> Result<(), StorageError> {
    clock.settled.store(true, Ordering::Release);
    let floor = clock.last.load(Ordering::Acquire);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let done = Box::new(move |r| {
        let _ = tx.send(r);
    });
    writer
        .submit(Request::SetTimeFloor {
            floor,
            exact: true,
            done,
        })
        .await?;
    rx.await.map_err(|_| StorageError::WriterStopped)?
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(AtomicU64);

    impl Wall for Fixed {
        fn wall_ms(&self) -> u64 {
            self.0.load(Ordering::Acquire)
        }
    }

    #[test]
    fn time_never_passes_the_stored_floor_nor_goes_back() {
        let wall = Arc::new(Fixed(AtomicU64::new(10_000)));
        let clock = NodeClock::new(wall.clone(), 9_000);
        assert_eq!(
            clock.now_ms(),
            9_000,
            "held at the floor until it is raised"
        );
        assert_eq!(clock.floor_due(), Some(10_000 + FLOOR_AHEAD_MS));
        clock.floor_stored(10_500);
        assert_eq!(clock.now_ms(), 10_000);
        wall.0.store(5_000, Ordering::Release);
        assert_eq!(clock.now_ms(), 10_000, "a step back is absorbed");
        wall.0.store(20_000, Ordering::Release);
        assert_eq!(clock.now_ms(), 10_500, "never past the durable floor");
        // A restart after a step back starts at the floor, and holds there.
        let restarted = NodeClock::new(Arc::new(Fixed(AtomicU64::new(1_000))), 10_500);
        assert_eq!(
            restarted.start_delay(),
            None,
            "a large gap is not waited out"
        );
        assert_eq!(restarted.now_ms(), 10_500);
        let soon = NodeClock::new(Arc::new(Fixed(AtomicU64::new(10_200))), 10_500);
        assert_eq!(soon.start_delay(), Some(Duration::from_millis(300)));
    }
}
