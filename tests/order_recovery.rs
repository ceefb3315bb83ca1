//! Orders that a crash or a failure interrupted: a retry never answers success for an order
//! that holds nothing, and a failure part-way never strands the holds already taken.

mod common;

use common::{line, Node, NONE, OK};
use serde_json::json;
use stockring::domain::order::{Order, OrderLine, OrderRequest};
use stockring::domain::{Command, OrderId, Outcome, Qty, Sku, StockKey, WarehouseId};
use stockring::persistence::{codec, store};

/// Writes straight into a stopped node's database.
fn sql(dir: &std::path::Path, f: impl FnOnce(&rusqlite::Connection)) {
    let conn = store::open(&store::db_path(dir)).expect("open db");
    f(&conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_an_order_recovery_aborted_is_409_order_aborted() {
    let node = Node::start().await;
    node.count("s", "a", 5, "c1").await;
    let dir = node.stop().await;
    // A crash left order o1 `reserving` (the record is written before any stock is touched).
    let request = OrderRequest {
        ttl_ms: 60_000,
        lines: vec![OrderLine {
            sku: Sku::parse("s").unwrap(),
            qty: Qty::new(2).unwrap(),
            warehouses: vec![WarehouseId::parse("a").unwrap()],
        }],
    };
    let order = Order::new(OrderId::parse("o1").unwrap(), request, 1);
    sql(dir.path(), |c| {
        c.execute(
            "INSERT INTO orders (order_id, status, record, updated_at_ms) VALUES ('o1', 'reserving', ?1, 1)",
            [codec::encode_order(&order)],
        )
        .expect("insert");
    });
    let node = Node::start_in(dir).await;
    let got = node.check("GET /v1/orders/o1", NONE, 200, OK).await;
    assert_eq!(got["status"], "aborted");
    let retry = json!({ "order_id": "o1", "ttl_ms": 60_000, "lines": [line("s", 2, &["a"])] });
    let err = node
        .check("POST /v1/orders", retry, 409, "order_aborted")
        .await;
    assert_eq!(err["order"]["status"], "aborted");
    assert_eq!(node.figures("s", "a").await, [5, 0, 5, 0]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_failing_part_way_strands_nothing_and_never_replays_success() {
    let node = Node::start().await;
    node.count("s", "a", 5, "c1").await;
    node.count("s", "bad", 5, "c2").await;
    let dir = node.stop().await;
    // Key s/bad cannot be loaded any more: every request on it fails (retryably).
    sql(dir.path(), |c| {
        c.execute("UPDATE snapshots SET state = x'00' WHERE key = 's/bad'", [])
            .expect("corrupt");
    });
    let node = Node::start_in(dir).await;
    let body = json!({ "order_id": "o2", "lines": [line("s", 1, &["a"]), line("s", 1, &["bad"])] });
    let (status, first) = node.send("POST /v1/orders", body.clone()).await;
    assert_eq!(status, 503, "{first}");
    // Line 0 was held, then released by the undo although line 1's key stays unavailable.
    assert_eq!(node.figures("s", "a").await, [5, 0, 5, 0]);
    for _ in 0..2 {
        let (status, again) = node.send("POST /v1/orders", body.clone()).await;
        assert!(
            status == 503 || status == 409,
            "a retry answered {status}: {again}"
        );
        assert_ne!(again["order"]["status"], "reserved");
    }
    assert_eq!(node.figures("s", "a").await, [5, 0, 5, 0]);
    node.stop().await;
}

/// The safety net on a live node: an order left `reserving` with no request working on it
/// (here written straight into the running node's database, as a failed step and a failed
/// undo would leave it) is undone within a few seconds, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_node_undoes_an_order_no_request_finished() {
    let node = Node::start().await;
    node.count("s", "a", 5, "c1").await;
    let body = json!({ "order_id": "o3", "ttl_ms": 600_000, "lines": [line("s", 2, &["a"])] });
    node.check("POST /v1/orders", body, 201, OK).await;
    assert_eq!(node.figures("s", "a").await, [5, 2, 3, 0]);
    let request = OrderRequest {
        ttl_ms: 600_000,
        lines: vec![OrderLine {
            sku: Sku::parse("s").unwrap(),
            qty: Qty::new(2).unwrap(),
            warehouses: vec![WarehouseId::parse("a").unwrap()],
        }],
    };
    let stuck = Order::new(OrderId::parse("o3").unwrap(), request, 1);
    sql(node.data_dir(), |c| {
        c.execute(
            "UPDATE orders SET status = 'reserving', record = ?1, updated_at_ms = 1 WHERE order_id = 'o3'",
            [codec::encode_order(&stuck)],
        )
        .expect("update");
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = node.check("GET /v1/orders/o3", NONE, 200, OK).await;
        if got["status"] == "aborted" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {} after 10 s on a live node",
            got["status"]
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(node.figures("s", "a").await, [5, 0, 5, 0]);
    node.stop().await;
}

/// An order's undo cancels its line ids: a reserve of a line that arrives after the undo (a
/// forward that timed out but landed late, or was reordered behind the undo) is refused, and
/// holds nothing until its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_that_arrives_after_the_undo_holds_nothing() {
    let node = Node::start().await;
    node.count("s", "a", 5, "c1").await;
    let dir = node.stop().await;
    // A crash left order o4 `reserving` before its line's reserve reached the key.
    let request = OrderRequest {
        ttl_ms: 600_000,
        lines: vec![OrderLine {
            sku: Sku::parse("s").unwrap(),
            qty: Qty::new(2).unwrap(),
            warehouses: vec![WarehouseId::parse("a").unwrap()],
        }],
    };
    let order = Order::new(OrderId::parse("o4").unwrap(), request.clone(), 1);
    sql(dir.path(), |c| {
        c.execute(
            "INSERT INTO orders (order_id, status, record, updated_at_ms) VALUES ('o4', 'reserving', ?1, 1)",
            [codec::encode_order(&order)],
        )
        .expect("insert");
    });
    let node = Node::start_in(dir).await;
    let got = node.check("GET /v1/orders/o4", NONE, 200, OK).await;
    assert_eq!(got["status"], "aborted");
    // The line's reserve, still on its way when recovery undid the order, lands now.
    let late = Command::Reserve {
        reservation_id: order.line_reservation(0),
        qty: Qty::new(2).unwrap(),
        ttl_ms: request.ttl_ms,
        order_id: Some(order.order_id.clone()),
    };
    let key = StockKey::new(Sku::parse("s").unwrap(), WarehouseId::parse("a").unwrap());
    let outcome = node.node().execute(key, late).await.expect("answered");
    assert!(
        !matches!(outcome, Outcome::Reserved { .. }),
        "a late reserve of an undone order held stock: {outcome:?}"
    );
    assert_eq!(node.figures("s", "a").await, [5, 0, 5, 0]);
    node.stop().await;
}
