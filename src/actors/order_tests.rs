//! Recovery of orders on a live node (the sweep), on a real writer and real key actors.

use super::*;
use crate::actors::clock::NodeClock;
use crate::actors::router::{Directory, Router, RouterConfig};
use crate::actors::stock::StockEnv;
use crate::actors::Admission;
use crate::domain::order::OrderLine;
use crate::domain::{OpId, Qty, Sku, WarehouseId};
use crate::persistence::{store, Writer};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

async fn live_node(dir: &std::path::Path) -> (Node, Writer) {
    let conn = store::open(&store::db_path(dir)).expect("open");
    let writer = Writer::start_with_window(conn, 16, 64, 1_000).expect("writer");
    let clock = Arc::new(NodeClock::unfloored());
    let env = StockEnv {
        writer: writer.handle.clone(),
        clock: clock.clone(),
        snapshot_every: 1_000,
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
    let limits = Admission {
        max_in_flight: 1_000,
        answer_timeout: Duration::from_secs(30),
    };
    let node = Node::new(directory, writer.handle.clone(), limits, clock);
    (node, writer)
}

/// What `enter` hands out: counts how many are held at once.
struct Inside<'a> {
    held: &'a AtomicUsize,
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The sweep finishes every stalled order, and holds what `enter` gives (in a cluster, the
/// order's vnode gate, which a handoff of that vnode waits for) for one order at a time, not
/// for the whole list: a handoff waits for at most the order being recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_enters_one_order_at_a_time_and_undoes_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _writer) = live_node(dir.path()).await;
    let coordinator = OrderCoordinator::new(node.clone());
    let sku = Sku::parse("sku-1").expect("sku");
    let warehouse = WarehouseId::parse("w1").expect("warehouse");
    let key = StockKey::new(sku.clone(), warehouse.clone());
    let qty = |n| Qty::new(n).expect("qty");
    let receive = Command::Receive {
        op_id: OpId::parse("restock").expect("id"),
        qty: qty(100),
    };
    let received = node.execute(key.clone(), receive).await.expect("receive");
    assert!(matches!(received, Outcome::StockSet { .. }), "{received:?}");

    // Three orders stalled in `reserving`, each with its line held: a request that reserved
    // and then failed before it recorded the order as reserved, and whose undo failed too.
    let mut stalled = Vec::new();
    for i in 0..3 {
        let request = OrderRequest {
            ttl_ms: 60_000,
            lines: vec![OrderLine {
                sku: sku.clone(),
                qty: qty(2),
                warehouses: vec![warehouse.clone()],
            }],
        };
        let id = OrderId::parse(&format!("order-{i}")).expect("order id");
        let order = Order::new(id, request, node.now_ms());
        coordinator.put(&order).await.expect("put order");
        let reserve = Command::Reserve {
            reservation_id: order.line_reservation(0),
            qty: qty(2),
            ttl_ms: 60_000,
            order_id: None,
        };
        let held = node.execute(key.clone(), reserve).await.expect("reserve");
        assert!(matches!(held, Outcome::Reserved { .. }), "{held:?}");
        stalled.push(order);
    }
    assert_eq!(node.read(key.clone()).await.expect("read").reserved, 6);

    let held = AtomicUsize::new(0);
    let most = AtomicUsize::new(0);
    let entered = AtomicUsize::new(0);
    let enter = |_: &OrderId| {
        entered.fetch_add(1, Ordering::SeqCst);
        let now = held.fetch_add(1, Ordering::SeqCst) + 1;
        most.fetch_max(now, Ordering::SeqCst);
        Some(Inside { held: &held })
    };
    let (finished, left) = coordinator.recover_stalled(stalled.clone(), enter).await;

    assert_eq!((finished, left), (3, 0), "every stalled order was undone");
    assert_eq!(entered.load(Ordering::SeqCst), 3);
    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "the sweep held more than one order's gate at a time"
    );
    assert_eq!(held.load(Ordering::SeqCst), 0, "a gate was left entered");
    assert_eq!(
        node.read(key).await.expect("read").reserved,
        0,
        "the undo left holds"
    );
    for order in &stalled {
        let stored = coordinator.load(&order.order_id).await.expect("load");
        let status = stored.expect("stored").status;
        assert_eq!(status, OrderStatus::Aborted, "{}", order.order_id);
    }
}

/// An order this node does not coordinate (`enter` says no) is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_leaves_an_order_it_does_not_coordinate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _writer) = live_node(dir.path()).await;
    let coordinator = OrderCoordinator::new(node.clone());
    let request = OrderRequest {
        ttl_ms: 60_000,
        lines: vec![OrderLine {
            sku: Sku::parse("sku-1").expect("sku"),
            qty: Qty::new(1).expect("qty"),
            warehouses: vec![WarehouseId::parse("w1").expect("warehouse")],
        }],
    };
    let order = Order::new(OrderId::parse("elsewhere").expect("id"), request, 0);
    coordinator.put(&order).await.expect("put order");
    let (finished, left) = coordinator
        .recover_stalled(vec![order.clone()], |_: &OrderId| None::<()>)
        .await;
    assert_eq!((finished, left), (0, 0));
    let stored = coordinator.load(&order.order_id).await.expect("load");
    assert_eq!(stored.expect("stored").status, OrderStatus::Reserving);
}
