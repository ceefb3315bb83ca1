//! Time never goes backwards on a node, across restarts too, even if the wall clock is
//! stepped back while it is down: a hold shown expired stays expired, and a later hold never
//! expires before an earlier one.

mod common;

use common::{hold_ttl, Node, NONE, OK};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use stockring::actors::clock::Wall;

struct SteppedWall(AtomicU64);

impl Wall for SteppedWall {
    fn wall_ms(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

const T0: u64 = 1_900_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wall_clock_stepped_back_across_a_restart_does_not_turn_time_back() {
    let wall = Arc::new(SteppedWall(AtomicU64::new(T0)));
    let node = Node::start_with_wall(tempfile::tempdir().expect("dir"), wall.clone()).await;
    node.count("s", "a", 5, "c1").await;
    node.check(
        "POST /v1/reservations",
        hold_ttl("s", "a", 5, "r1", 100),
        201,
        OK,
    )
    .await;
    wall.0.store(T0 + 200, Ordering::Release);
    // The hold has expired, and a read says so.
    assert_eq!(node.figures("s", "a").await, [5, 0, 5, 0]);
    // A hold on another key, made later.
    node.count("s", "b", 5, "c2").await;
    let r3 = node
        .check(
            "POST /v1/reservations",
            hold_ttl("s", "b", 1, "r3", 100),
            201,
            OK,
        )
        .await;
    let r3_expires = r3["expires_at_ms"].as_u64().expect("expires_at_ms");
    assert!(r3_expires >= T0 + 300, "{r3}");
    let dir = node.stop().await;

    // Down, the wall clock is stepped back by ten seconds; the node starts again.
    wall.0.store(T0 - 10_000, Ordering::Release);
    let node = Node::start_with_wall(dir, wall.clone()).await;
    assert_eq!(
        node.figures("s", "a").await,
        [5, 0, 5, 0],
        "an expired hold came back"
    );
    // A hold made now on a key never seen before expires no earlier than one made before.
    node.count("s", "c", 5, "c3").await;
    let r4 = node
        .check(
            "POST /v1/reservations",
            hold_ttl("s", "c", 1, "r4", 100),
            201,
            OK,
        )
        .await;
    let r4_expires = r4["expires_at_ms"].as_u64().expect("expires_at_ms");
    assert!(
        r4_expires >= r3_expires,
        "time went back across the restart: a later hold expires at {r4_expires}, an earlier one at {r3_expires}"
    );
    let got = node.check("GET /v1/stock/s/a", NONE, 200, OK).await;
    assert_eq!(got["available"], 5);
    node.stop().await;
}
