//! Admission: permits bound the requests queued at the actors, whatever their callers do, and
//! a caller never waits for a key without end. The writer here never answers, so an actor
//! stays in its load and every message waits in its mailbox.

use super::clock::NodeClock;
use super::router::{Directory, Router, RouterConfig};
use super::stock::StockEnv;
use super::{Admission, Node, ServiceError};
use crate::domain::{Sku, StockKey, WarehouseId};
use crate::persistence::{Request, WriterHandle};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

async fn stuck_node(limits: Admission) -> (Node, mpsc::Receiver<Request>) {
    let (writer, queue) = WriterHandle::detached(1024);
    let clock = Arc::new(NodeClock::unfloored());
    let env = StockEnv {
        writer: writer.clone(),
        clock: clock.clone(),
        snapshot_every: 1000,
        outcome_retention_ms: 60_000,
    };
    let config = RouterConfig {
        max_active: 100,
        idle: Duration::from_secs(60),
    };
    let directory = Directory::new(env, config);
    ractor::Actor::spawn(None, Router, directory.clone())
        .await
        .expect("router");
    (Node::new(directory, writer, limits, clock), queue)
}

fn key(n: usize) -> StockKey {
    StockKey::new(
        Sku::parse(&format!("s{n}")).expect("sku"),
        WarehouseId::parse("w").expect("warehouse"),
    )
}

/// Callers that give up (a client hung up, a timeout) leave their messages queued: those
/// still count against `max_in_flight`, so the next request is refused instead of piling a
/// message more onto an unbounded mailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_keeps_its_message_counted() {
    let limits = Admission {
        max_in_flight: 2,
        answer_timeout: Duration::from_secs(3600),
    };
    let (node, _queue) = stuck_node(limits).await;
    for n in 0..2 {
        let gave_up = tokio::time::timeout(Duration::from_millis(50), node.read_here(key(n)));
        assert!(gave_up.await.is_err(), "a stuck key answered");
    }
    let third = tokio::time::timeout(Duration::from_secs(5), node.read_here(key(2))).await;
    assert!(
        matches!(third, Ok(Err(ServiceError::Overloaded))),
        "a third request was admitted over two queued messages: {third:?}"
    );
}

/// A key that does not answer gives its caller a `Timeout` (503 `timeout`), not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_does_not_answer_times_out() {
    let limits = Admission {
        max_in_flight: 16,
        answer_timeout: Duration::from_millis(200),
    };
    let (node, _queue) = stuck_node(limits).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), node.read_here(key(0))).await;
    assert!(
        matches!(answer, Ok(Err(ServiceError::Timeout(200)))),
        "{answer:?}"
    );
}
