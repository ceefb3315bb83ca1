//! HTTP integration tests: each test starts its own in-process node on its own temp data dir
//! and talks to it over HTTP. Helpers live in `common`; `check` asserts status and code.

mod common;

use common::{figures, hold, hold_ttl, key, line, now_ms, Node, LONG, NONE, OK};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const RESERVE: &str = "POST /v1/reservations";
const ORDER: &str = "POST /v1/orders";
const BATCH: &str = "POST /v1/batch";

/// The body of `POST /v1/orders`.
fn order(id: &str, lines: &[Value]) -> Value {
    json!({ "order_id": id, "lines": lines })
}

// ---------------------------------------------------------------------------------------------
// 1. Happy paths

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycle_count_receipt_and_safety_stock_answer_with_the_figures() {
    let s = Node::start().await;
    let set = s.count("s1", "w1", 10, "c1").await;
    let want = json!({ "sku": "s1", "warehouse": "w1",
        "on_hand": 10, "reserved": 0, "available": 10, "safety_stock": 0 });
    assert_eq!(set, want);
    let receipt = s.receive("s1", "w1", 5, "r1").await;
    assert_eq!(figures(&receipt), [15, 0, 15, 0]);
    let safety = s.safety("s1", "w1", 4, "ss1").await;
    assert_eq!(figures(&safety), [15, 0, 11, 4]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_is_201_and_its_replay_is_200_with_the_same_body() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    let first = s.reserve(hold("s1", "w1", 3, "r1")).await;
    assert_eq!(first["reservation_id"], "r1");
    assert_eq!(first["qty"], 3);
    assert_eq!(first["available"], 7);
    assert!(first["expires_at_ms"].as_u64() > Some(now_ms()));
    let replay = s.check(RESERVE, hold("s1", "w1", 3, "r1"), 200, OK);
    assert_eq!(replay.await, first);
    assert_eq!(s.figures("s1", "w1").await, [10, 3, 7, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_repeats_as_a_replay_and_release_after_commit_is_409() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.reserve(hold("s1", "w1", 3, "r1")).await;
    let done = s.commit("r1", "s1/w1", 200, OK).await;
    assert_eq!(done["status"], "committed");
    assert_eq!(done["qty"], 3);
    assert_eq!(s.commit("r1", "s1/w1", 200, OK).await, done);
    s.release("r1", "s1/w1", 409, "already_committed").await;
    assert_eq!(s.figures("s1", "w1").await, [7, 0, 7, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_after_release_is_409() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.reserve(hold("s1", "w1", 3, "r1")).await;
    let done = s.release("r1", "s1/w1", 200, OK).await;
    assert_eq!(done["status"], "released");
    assert_eq!(s.release("r1", "s1/w1", 200, OK).await, done);
    s.commit("r1", "s1/w1", 409, "already_released").await;
    assert_eq!(s.figures("s1", "w1").await, [10, 0, 10, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_or_release_of_an_unknown_reservation_is_404() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.commit("nope", "s1/w1", 404, "unknown_reservation").await;
    s.release("nope", "s1/w1", 404, "unknown_reservation").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_key_reports_every_figure() {
    let s = Node::start().await;
    let fresh = json!({ "sku": "s1", "warehouse": "w1", "on_hand": 0,
        "reserved": 0, "available": 0, "safety_stock": 0, "version": 0 });
    assert_eq!(s.stock("s1", "w1").await, fresh);
    s.count("s1", "w1", 10, "c1").await;
    s.safety("s1", "w1", 2, "ss1").await;
    s.reserve(hold("s1", "w1", 3, "r1")).await;
    let want = json!({ "sku": "s1", "warehouse": "w1", "on_hand": 10,
        "reserved": 3, "available": 5, "safety_stock": 2, "version": 3 });
    assert_eq!(s.stock("s1", "w1").await, want);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_sku_lists_its_warehouses_with_totals() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.count("s1", "w2", 4, "c2").await;
    s.count("s10", "w1", 99, "c3").await; // `s1` is a prefix of it: not listed
    s.reserve(hold("s1", "w2", 1, "r1")).await;
    let got = s.check("GET /v1/stock/s1", NONE, 200, OK).await;
    assert_eq!(got["sku"], "s1");
    let rows = got["warehouses"].as_array().expect("warehouses");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0], s.stock("s1", "w1").await);
    assert_eq!(rows[1], s.stock("s1", "w2").await);
    let total = json!({ "on_hand": 14, "reserved": 1, "available": 13 });
    assert_eq!(got["total"], total);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Refusals and idempotency

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_beyond_available_is_409_with_available() {
    let s = Node::start().await;
    s.count("s1", "w1", 5, "c1").await;
    let body = hold("s1", "w1", 6, "r1");
    let err = s.check(RESERVE, body, 409, "insufficient_stock").await;
    assert_eq!([&err["available"], &err["requested"]], [5, 6]);
    assert_eq!(s.figures("s1", "w1").await, [5, 0, 5, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservation_id_reuse_with_another_qty_is_id_conflict() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.reserve(hold("s1", "w1", 3, "r1")).await;
    let other = hold("s1", "w1", 4, "r1");
    s.check(RESERVE, other, 409, "id_conflict").await;
    assert_eq!(s.figures("s1", "w1").await, [10, 3, 7, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op_id_reuse_with_another_body_is_id_conflict() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.receive("s1", "w1", 2, "r1").await;
    let cases = [
        r#"409 id_conflict PUT /v1/stock/s1/w1 {"on_hand":11,"op_id":"c1"}"#,
        r#"409 id_conflict POST /v1/stock/s1/w1/receipts {"qty":3,"op_id":"r1"}"#,
    ];
    for case in cases {
        s.check_case(case).await;
    }
    assert_eq!(s.figures("s1", "w1").await, [12, 0, 12, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_replay_answers_the_same_and_adds_stock_once() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    let first = s.receive("s1", "w1", 5, "r1").await;
    assert_eq!(s.receive("s1", "w1", 5, "r1").await, first);
    assert_eq!(s.figures("s1", "w1").await, [15, 0, 15, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_past_the_stock_limit_is_422_and_changes_nothing() {
    const LIMIT: u64 = 1_000_000_000_000;
    let s = Node::start().await;
    s.count("s1", "w1", LIMIT, "c1").await;
    let receipt = r#"422 stock_limit POST /v1/stock/s1/w1/receipts {"qty":1,"op_id":"r1"}"#;
    assert_eq!(s.check_case(receipt).await["limit"], LIMIT);
    assert_eq!(s.figures("s1", "w1").await, [LIMIT, 0, LIMIT, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reserves_never_oversell() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    let ids: Vec<String> = (0..30).map(|i| format!("r{i}")).collect();
    let sends = ids
        .iter()
        .map(|id| s.send(RESERVE, hold("s1", "w1", 1, id)));
    let answers = futures::future::join_all(sends).await;
    let created = answers.iter().filter(|(status, _)| *status == 201).count();
    let refused = answers
        .iter()
        .filter(|(_, b)| b["code"] == "insufficient_stock");
    assert_eq!((created, refused.count()), (10, 20), "{answers:?}");
    assert_eq!(s.figures("s1", "w1").await, [10, 10, 0, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_one_reservation_hold_once() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    let sends = (0..20).map(|_| s.send(RESERVE, hold("s1", "w1", 3, "r1")));
    let answers = futures::future::join_all(sends).await;
    let mut statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [vec![200; 19], vec![201]].concat());
    assert!(
        answers.iter().all(|(_, body)| *body == answers[0].1),
        "{answers:?}"
    );
    assert_eq!(s.figures("s1", "w1").await, [10, 3, 7, 0]);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Expiry

/// The node and this test read the same wall clock, so a GET answered before `expires_at_ms`
/// must still see the hold and a GET sent at or after it must not: expiry is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hold_frees_its_stock_and_cannot_be_committed() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    let held = s.reserve(hold_ttl("s1", "w1", 4, "r1", 300)).await;
    let expires = held["expires_at_ms"].as_u64().expect("expires_at_ms");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sent = now_ms();
        let got = s.figures("s1", "w1").await;
        let answered = now_ms();
        if answered < expires {
            assert_eq!(
                got,
                [10, 4, 6, 0],
                "expired before {expires}, at {answered}"
            );
        }
        if sent >= expires {
            assert_eq!(got, [10, 0, 10, 0], "still held at {sent}, after {expires}");
            break;
        }
        assert!(Instant::now() < deadline, "the hold never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = s.commit("r1", "s1/w1", 409, "expired").await;
    assert_eq!(err["expires_at_ms"], expires);
    s.release("r1", "s1/w1", 409, "expired").await;
    assert_eq!(s.figures("s1", "w1").await, [10, 0, 10, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_within_its_ttl_commits() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.reserve(hold("s1", "w1", 4, "r1")).await;
    s.commit("r1", "s1/w1", 200, OK).await;
    assert_eq!(s.figures("s1", "w1").await, [6, 0, 6, 0]);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4-5. Safety stock and cycle counts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safety_stock_is_kept_out_of_available() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.reserve(hold("s1", "w1", 2, "r1")).await;
    let set = s.safety("s1", "w1", 3, "ss1").await;
    // available = on_hand - reserved - safety_stock
    assert_eq!(figures(&set), [10, 2, 5, 3]);
    let over = hold("s1", "w1", 6, "r2");
    let err = s.check(RESERVE, over, 409, "insufficient_stock").await;
    assert_eq!(err["available"], 5);
    let fits = s.reserve(hold("s1", "w1", 5, "r3")).await;
    assert_eq!(fits["available"], 0);
    assert_eq!(s.figures("s1", "w1").await, [10, 7, 0, 3]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycle_count_below_reserved_is_409_with_the_shortfall() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.reserve(hold("s1", "w1", 6, "r1")).await;
    let before = s.figures("s1", "w1").await;
    let count = r#"409 count_below_reserved PUT /v1/stock/s1/w1 {"on_hand":4,"op_id":"c2"}"#;
    let err = s.check_case(count).await;
    assert_eq!(err["counted"], 4);
    assert_eq!(err["reserved"], 6);
    assert_eq!(err["shortfall"], 2);
    assert_eq!(s.check_case(count).await, err, "a replay answers the same");
    assert_eq!(s.figures("s1", "w1").await, before);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Orders

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_all_or_nothing_across_skus() {
    let s = Node::start().await;
    s.count("a", "w1", 5, "c1").await;
    s.count("b", "w1", 1, "c2").await;
    let o1 = order("o1", &[line("a", 3, &["w1"]), line("b", 2, &["w1"])]);
    let err = s.check(ORDER, o1, 409, "insufficient_stock").await;
    assert_eq!(err["line"], 1);
    // Line 0 was held, then given back.
    assert_eq!(s.figures("a", "w1").await, [5, 0, 5, 0]);
    assert_eq!(s.figures("b", "w1").await, [1, 0, 1, 0]);
    let got = s.check("GET /v1/orders/o1", NONE, 200, OK).await;
    assert_eq!(got["status"], "failed");
    assert_eq!(got["failed_line"], 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_line_falls_back_to_its_next_warehouse() {
    let s = Node::start().await;
    s.count("a", "w1", 1, "c1").await;
    s.count("a", "w2", 5, "c2").await;
    let o1 = order("o1", &[line("a", 3, &["w1", "w2"])]);
    let got = s.check(ORDER, o1, 201, OK).await;
    assert_eq!(got["order_id"], "o1");
    assert_eq!(got["status"], "reserved");
    assert_eq!(got["lines"][0]["allocated_warehouse"], "w2");
    assert_eq!(s.figures("a", "w1").await, [1, 0, 1, 0]);
    assert_eq!(s.figures("a", "w2").await, [5, 3, 2, 0]);
    assert_eq!(s.check("GET /v1/orders/o1", NONE, 200, OK).await, got);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_replay_is_200_and_another_body_is_id_conflict() {
    let s = Node::start().await;
    s.count("a", "w1", 10, "c1").await;
    let o1 = order("o1", &[line("a", 3, &["w1"])]);
    let first = s.check(ORDER, o1.clone(), 201, OK).await;
    assert_eq!(s.check(ORDER, o1, 200, OK).await, first);
    let other = order("o1", &[line("a", 4, &["w1"])]);
    s.check(ORDER, other, 409, "id_conflict").await;
    assert_eq!(s.figures("a", "w1").await, [10, 3, 7, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committing_an_order_takes_its_stock_out_of_on_hand() {
    let s = Node::start().await;
    s.count("a", "w1", 10, "c1").await;
    s.count("b", "w1", 10, "c2").await;
    let o1 = order("o1", &[line("a", 3, &["w1"]), line("b", 1, &["w1"])]);
    s.check(ORDER, o1, 201, OK).await;
    let commit = "POST /v1/orders/o1/commit";
    let done = s.check(commit, NONE, 200, OK).await;
    assert_eq!(done["status"], "committed");
    assert_eq!(s.check(commit, NONE, 200, OK).await, done, "a replay");
    let release = "POST /v1/orders/o1/release";
    s.check(release, NONE, 409, "invalid_order_state").await;
    assert_eq!(s.figures("a", "w1").await, [7, 0, 7, 0]);
    assert_eq!(s.figures("b", "w1").await, [9, 0, 9, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_an_order_frees_its_stock_and_it_cannot_be_committed() {
    let s = Node::start().await;
    s.count("a", "w1", 10, "c1").await;
    let o1 = order("o1", &[line("a", 3, &["w1"])]);
    s.check(ORDER, o1, 201, OK).await;
    assert_eq!(s.figures("a", "w1").await, [10, 3, 7, 0]);
    let done = s.check("POST /v1/orders/o1/release", NONE, 200, OK).await;
    assert_eq!(done["status"], "released");
    assert_eq!(s.figures("a", "w1").await, [10, 0, 10, 0]);
    let commit = "POST /v1/orders/o1/commit";
    let err = s.check(commit, NONE, 409, "invalid_order_state").await;
    assert_eq!(err["order"]["status"], "released");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committing_an_order_after_its_holds_expired_is_409_expired() {
    let s = Node::start().await;
    s.count("a", "w1", 10, "c1").await;
    let o1 = json!({ "order_id": "o1", "ttl_ms": 300, "lines": [line("a", 3, &["w1"])] });
    s.check(ORDER, o1, 201, OK).await;
    s.await_figures("a", "w1", [10, 0, 10, 0]).await;
    let commit = "POST /v1/orders/o1/commit";
    let err = s.check(commit, NONE, 409, "expired").await;
    assert_eq!(err["expired_lines"], json!([0]));
    assert_eq!(s.figures("a", "w1").await, [10, 0, 10, 0]);
    // The record says what happened: nothing was sold, and a repeat answers the same.
    let order = s.check("GET /v1/orders/o1", NONE, 200, OK).await;
    assert_eq!(order["status"], "expired");
    assert_eq!(order["expired_lines"], json!([0]));
    let again = s.check(commit, NONE, 409, "expired").await;
    assert_eq!(again["expired_lines"], json!([0]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_orders_hold_all_lines_or_none() {
    let s = Node::start().await;
    s.count("a", "w1", 10, "c1").await;
    s.count("b", "w1", 5, "c2").await;
    let lines = [line("a", 1, &["w1"]), line("b", 1, &["w1"])];
    let orders: Vec<Value> = (0..10).map(|i| order(&format!("o{i}"), &lines)).collect();
    let answers = futures::future::join_all(orders.into_iter().map(|o| s.send(ORDER, o))).await;
    let created = answers.iter().filter(|(status, _)| *status == 201).count();
    let refused = answers
        .iter()
        .filter(|(_, b)| b["code"] == "insufficient_stock");
    assert_eq!((created, refused.count()), (5, 5), "{answers:?}");
    assert_eq!(s.figures("a", "w1").await, [10, 5, 5, 0]);
    assert_eq!(s.figures("b", "w1").await, [5, 5, 0, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_order_is_404() {
    let s = Node::start().await;
    for req in [
        "GET /v1/orders/x",
        "POST /v1/orders/x/commit",
        "POST /v1/orders/x/release",
    ] {
        s.check(req, NONE, 404, "unknown_order").await;
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Batch

/// A batch op on `s1/w1`.
fn op(op: &str, fields: Value) -> Value {
    let mut v = json!({ "op": op, "sku": "s1", "warehouse": "w1" });
    if let (Some(v), Value::Object(fields)) = (v.as_object_mut(), fields) {
        v.extend(fields);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_ops_on_one_key_in_order_and_answers_in_order() {
    let s = Node::start().await;
    let ops = json!([
        op("receive", json!({ "qty": 5, "op_id": "b-r1" })),
        { "op": "set_on_hand", "sku": "s2", "warehouse": "w1", "on_hand": 7, "op_id": "b-c1" },
        op("reserve", json!({ "qty": 3, "reservation_id": "b1", "ttl_ms": LONG })),
        op("reserve", json!({ "qty": 3, "reservation_id": "b2" })),
        op("get", json!({})),
        op("commit", json!({ "reservation_id": "b1" })),
        op("get", json!({})),
    ]);
    let got = s.check(BATCH, json!({ "ops": ops }), 200, OK).await;
    let results = got["results"].as_array().expect("results");
    let statuses: Vec<_> = results.iter().map(|r| &r["status"]).collect();
    assert_eq!(statuses, [200, 200, 201, 409, 200, 200, 200]);
    let body = |i: usize| &results[i]["body"];
    assert_eq!(body(1)["sku"], "s2");
    assert_eq!(body(3)["code"], "insufficient_stock");
    assert_eq!(figures(body(4)), [5, 3, 2, 0]);
    assert_eq!(body(5)["status"], "committed");
    assert_eq!(figures(body(6)), [2, 0, 2, 0]);
    assert_eq!(body(6), &s.stock("s1", "w1").await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_an_invalid_op_applies_nothing() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    let before = s.stock("s1", "w1").await;
    let ops = json!([
        op("receive", json!({ "qty": 5, "op_id": "b-r1" })),
        op("reserve", json!({ "qty": 1, "reservation_id": "b1" })),
        op("reserve", json!({ "qty": 0, "reservation_id": "b2" })),
    ]);
    let batch = json!({ "ops": ops });
    let err = s.check(BATCH, batch, 400, "invalid_quantity").await;
    assert_eq!(err["index"], 2);
    let empty = json!({ "ops": [] });
    s.check(BATCH, empty, 400, "invalid_batch").await;
    assert_eq!(s.stock("s1", "w1").await, before);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 8. Bad input (C6): a 4xx with {code, message}, never a 5xx, and nothing changes

/// A node with `s1/w1` counted to 10 and hold `r1` of 2; returns it and the key's GET body.
async fn seeded() -> (Node, Value) {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.reserve(hold("s1", "w1", 2, "r1")).await;
    let before = s.stock("s1", "w1").await;
    (s, before)
}

/// Checks every `check_case` line on a seeded node, and that none changed the stock.
async fn refuse_all(cases: &[String]) {
    let (s, before) = seeded().await;
    for case in cases {
        s.check_case(case).await;
        let after = s.stock("s1", "w1").await;
        assert_eq!(after, before, "{case} changed the stock");
    }
    s.stop().await;
}

/// Each `(status code, value)` substituted for `$` in each `"METHOD /path body"` template.
fn cases(templates: &[&str], values: &[(&str, &str)]) -> Vec<String> {
    let mut out = Vec::new();
    for t in templates {
        for (expect, v) in values {
            out.push(format!("{expect} {}", t.replace('$', v)));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_400() {
    let cases = [
        r#"400 malformed_json POST /v1/reservations {"sku":"s1","warehouse":"w1","qty":1"#,
        r#"400 malformed_json POST /v1/reservations"#,
        r#"400 malformed_json POST /v1/stock/s1/w1/receipts {"#,
        r#"400 malformed_json PUT /v1/stock/s1/w1 {"on_hand":5,"op_id":"c9"} trailing"#,
        r#"400 invalid_body POST /v1/reservations {"sku":"s1","warehouse":"w1","qty":1,"reservation_id":"x","color":"red"}"#,
        r#"400 invalid_body POST /v1/reservations {"sku":"s1","warehouse":"w1","reservation_id":"x"}"#,
        r#"400 invalid_body POST /v1/reservations {"sku":"s1","warehouse":"w1","qty":"1","reservation_id":"x"}"#,
        r#"400 invalid_body POST /v1/reservations [1, 2]"#,
        r#"400 invalid_body POST /v1/reservations null"#,
        r#"400 invalid_body POST /v1/reservations/r1/commit {"sku":"s1"}"#,
        r#"400 invalid_body POST /v1/reservations/r1/release {"sku":"s1","warehouse":"w1","x":1}"#,
        r#"400 invalid_body PUT /v1/stock/s1/w1 {"on_hand":5}"#,
        r#"400 invalid_body PUT /v1/stock/s1/w1 {"on_hand":5,"op_id":"c9","note":"x"}"#,
        r#"400 invalid_body PUT /v1/stock/s1/w1/safety-stock {"safety":1,"op_id":"x"}"#,
        r#"400 invalid_body POST /v1/orders {"order_id":"o1","lines":[{"sku":"s1","qty":1}]}"#,
        r#"400 invalid_order POST /v1/orders {"order_id":"o1","lines":[]}"#,
        r#"400 invalid_order POST /v1/orders {"order_id":"o1","lines":[{"sku":"s1","qty":1,"warehouses":[]}]}"#,
        r#"400 invalid_order POST /v1/orders {"order_id":"o1","lines":[{"sku":"s1","qty":1,"warehouses":["w1","w1"]}]}"#,
        r#"400 invalid_body POST /v1/batch {"ops":[{"op":"explode","sku":"s1","warehouse":"w1"}]}"#,
        r#"400 invalid_body POST /v1/batch {"ops":[{"sku":"s1","warehouse":"w1"}]}"#,
        r#"400 invalid_body POST /v1/batch {"ops":[{"op":"get","sku":"s1","warehouse":"w1","qty":1}]}"#,
    ];
    refuse_all(&cases.map(String::from)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_quantities_are_400() {
    let qty_templates = [
        r#"POST /v1/reservations {"sku":"s1","warehouse":"w1","qty":$,"reservation_id":"x"}"#,
        r#"POST /v1/stock/s1/w1/receipts {"qty":$,"op_id":"x"}"#,
        r#"POST /v1/orders {"order_id":"o1","lines":[{"sku":"s1","qty":$,"warehouses":["w1"]}]}"#,
        r#"POST /v1/batch {"ops":[{"op":"receive","sku":"s1","warehouse":"w1","qty":$,"op_id":"x"}]}"#,
    ];
    let qty_values = [
        ("400 invalid_quantity", "0"),
        ("400 invalid_quantity", "1000000001"),
        ("400 invalid_body", "-1"),
        ("400 invalid_body", "18446744073709551616"),
        ("400 invalid_body", "1.5"),
        ("400 invalid_body", "null"),
    ];
    let count_templates = [
        r#"PUT /v1/stock/s1/w1 {"on_hand":$,"op_id":"c9"}"#,
        r#"PUT /v1/stock/s1/w1/safety-stock {"safety_stock":$,"op_id":"x"}"#,
        r#"POST /v1/batch {"ops":[{"op":"set_on_hand","sku":"s1","warehouse":"w1","on_hand":$,"op_id":"x"}]}"#,
    ];
    let count_values = [
        ("400 invalid_quantity", "1000000000001"),
        ("400 invalid_body", "-1"),
        ("400 invalid_body", "18446744073709551616"),
    ];
    let mut all = cases(&qty_templates, &qty_values);
    all.extend(cases(&count_templates, &count_values));
    refuse_all(&all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_out_of_range_is_400() {
    let templates = [
        r#"POST /v1/reservations {"sku":"s1","warehouse":"w1","qty":1,"reservation_id":"x","ttl_ms":$}"#,
        r#"POST /v1/orders {"order_id":"o1","ttl_ms":$,"lines":[{"sku":"s1","qty":1,"warehouses":["w1"]}]}"#,
    ];
    let values = [
        ("400 invalid_ttl", "0"),
        ("400 invalid_ttl", "604800001"),
        ("400 invalid_body", "-5"),
        ("400 invalid_body", "18446744073709551616"),
    ];
    refuse_all(&cases(&templates, &values)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_in_bodies_are_400() {
    let long = "x".repeat(129);
    let (s, before) = seeded().await;
    for bad in ["", long.as_str(), "a b", "a#1", "a/b", "é"] {
        let mut with_order = hold("s1", "w1", 1, "x");
        with_order["order_id"] = json!(bad);
        let get = json!({ "op": "get", "sku": bad, "warehouse": "w1" });
        let cases = [
            (RESERVE, hold(bad, "w1", 1, "x")),
            (RESERVE, hold("s1", bad, 1, "x")),
            (RESERVE, hold("s1", "w1", 1, bad)),
            (RESERVE, with_order),
            ("POST /v1/reservations/r1/commit", key("s1", bad)),
            ("PUT /v1/stock/s1/w1", json!({ "on_hand": 3, "op_id": bad })),
            (
                "POST /v1/stock/s1/w1/receipts",
                json!({ "qty": 3, "op_id": bad }),
            ),
            (
                "PUT /v1/stock/s1/w1/safety-stock",
                json!({ "safety_stock": 3, "op_id": bad }),
            ),
            (ORDER, order(bad, &[line("s1", 1, &["w1"])])),
            (ORDER, order("o1", &[line("s1", 1, &[bad])])),
            (BATCH, json!({ "ops": [get] })),
        ];
        for (req, body) in cases {
            s.check(req, body.clone(), 400, "invalid_id").await;
            let after = s.stock("s1", "w1").await;
            assert_eq!(after, before, "{req} {body} changed the stock");
        }
    }
    let listed = s.check("GET /v1/stock/s1", NONE, 200, OK).await;
    assert_eq!(listed["warehouses"].as_array().map(Vec::len), Some(1));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_in_paths_are_400() {
    let long = "x".repeat(129);
    let (s, before) = seeded().await;
    // `%23` is `#`, `%2F` is `/` (inside one segment), `%C3%A9` is `é`.
    let bad_ids = [long.as_str(), "a%20b", "a%231", "a%2Fb", "%C3%A9", "a%00"];
    for bad in bad_ids {
        let cases = [
            format!("GET /v1/stock/{bad}"),
            format!("GET /v1/stock/{bad}/w1"),
            format!(r#"PUT /v1/stock/s1/{bad} {{"on_hand":3,"op_id":"c9"}}"#),
            format!(r#"POST /v1/stock/{bad}/w1/receipts {{"qty":3,"op_id":"x"}}"#),
            format!(r#"PUT /v1/stock/s1/{bad}/safety-stock {{"safety_stock":3,"op_id":"x"}}"#),
            format!(r#"POST /v1/reservations/{bad}/commit {{"sku":"s1","warehouse":"w1"}}"#),
            format!(r#"POST /v1/reservations/{bad}/release {{"sku":"s1","warehouse":"w1"}}"#),
            format!("GET /v1/orders/{bad}"),
            format!("POST /v1/orders/{bad}/commit"),
            format!("POST /v1/orders/{bad}/release"),
        ];
        for case in cases {
            s.check_case(&format!("400 invalid_id {case}")).await;
            let after = s.stock("s1", "w1").await;
            assert_eq!(after, before, "{case} changed the stock");
        }
    }
    // An empty segment inside a path is an empty id; a trailing one matches no route.
    let empty = [
        r#"400 invalid_id GET /v1/stock//w1"#,
        r#"400 invalid_id PUT /v1/stock//w1 {"on_hand":3,"op_id":"c9"}"#,
        r#"400 invalid_id POST /v1/reservations//commit {"sku":"s1","warehouse":"w1"}"#,
        r#"400 invalid_id POST /v1/orders//release"#,
        r#"404 not_found PUT /v1/stock/s1/ {"on_hand":3,"op_id":"c9"}"#,
        r#"404 not_found GET /v1/orders/"#,
    ];
    for case in empty {
        s.check_case(case).await;
    }
    assert_eq!(s.stock("s1", "w1").await, before);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_without_json_content_type_is_415_and_a_charset_is_fine() {
    let (s, before) = seeded().await;
    let body = r#"{"on_hand":3,"op_id":"c9"}"#;
    for ct in [None, Some("text/plain")] {
        let (status, reply) = s.send_raw("PUT /v1/stock/s1/w1", ct, body).await;
        common::expect("PUT", status, &reply, 415, "unsupported_media_type");
    }
    assert_eq!(s.stock("s1", "w1").await, before);
    let ct = Some("application/json; charset=utf-8");
    let (status, reply) = s.send_raw("PUT /v1/stock/s1/w1", ct, body).await;
    common::expect("PUT with charset", status, &reply, 200, OK);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_of_orders_and_batches_are_400() {
    let (s, before) = seeded().await;
    let get = json!({ "op": "get", "sku": "s1", "warehouse": "w1" });
    let ops = json!({ "ops": vec![get; 1001] });
    s.check(BATCH, ops, 400, "invalid_batch").await;
    let lines = vec![line("s1", 1, &["w1"]); 101];
    s.check(ORDER, order("o1", &lines), 400, "invalid_order")
        .await;
    let whs: Vec<String> = (0..17).map(|i| format!("w{i}")).collect();
    let whs: Vec<&str> = whs.iter().map(String::as_str).collect();
    let wide = order("o1", &[line("s1", 1, &whs)]);
    s.check(ORDER, wide, 400, "invalid_order").await;
    assert_eq!(s.stock("s1", "w1").await, before);
    s.check("GET /v1/orders/o1", NONE, 404, "unknown_order")
        .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_1_mib_is_413() {
    let (s, before) = seeded().await;
    let op = r#"{"op":"receive","sku":"s1","warehouse":"w1","qty":1,"op_id":"big"},"#;
    let ops = op.repeat((1 << 20) / op.len() + 1);
    let body = format!(r#"{{"ops":[{ops}{{"op":"get","sku":"s1","warehouse":"w1"}}]}}"#);
    assert!(body.len() > 1 << 20);
    s.check_raw(BATCH, &body, 413, "body_too_large").await;
    let big_id = format!(r#"{{"qty":1,"op_id":"{}"}}"#, "x".repeat((1 << 20) + 1));
    let receipt = "POST /v1/stock/s1/w1/receipts";
    s.check_raw(receipt, &big_id, 413, "body_too_large").await;
    assert_eq!(s.stock("s1", "w1").await, before);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_is_405_and_an_unknown_path_is_404() {
    let (s, before) = seeded().await;
    let cases = [
        "405 method_not_allowed DELETE /v1/stock/s1/w1",
        "405 method_not_allowed GET /v1/reservations",
        "405 method_not_allowed PUT /v1/batch",
        "405 method_not_allowed POST /v1/stock/s1",
        "405 method_not_allowed GET /v1/orders/o1/commit",
        "405 method_not_allowed POST /health",
        "404 not_found GET /v1/nope",
        "404 not_found GET /v1/stock/s1/w1/receipts/x",
        "404 not_found POST /v2/reservations",
        "404 not_found GET /",
    ];
    for case in cases {
        s.check_case(case).await;
    }
    assert_eq!(s.stock("s1", "w1").await, before);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 9. Operations endpoints

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_are_200() {
    let s = Node::start().await;
    let health = s.check("GET /health", NONE, 200, OK).await;
    assert_eq!(health, json!({ "status": "up" }));
    let ready = s.check("GET /ready", NONE, 200, OK).await;
    assert_eq!(ready, json!({ "status": "ready" }));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_operations_without_naming_skus() {
    let s = Node::start().await;
    let (sku, wh) = ("metricsku-q7Zx", "metricwh-k3Vb");
    let at = &format!("{sku}/{wh}");
    s.count(sku, wh, 10, "metricop-1").await;
    s.reserve(hold(sku, wh, 3, "metricres-1")).await;
    let over = hold(sku, wh, 30, "metricres-2");
    s.check(RESERVE, over, 409, "insufficient_stock").await;
    s.commit("metricres-1", at, 200, OK).await;
    let by_sku = format!("GET /v1/stock/{sku}");
    s.check(&by_sku, NONE, 200, OK).await;
    let unknown = format!("404 not_found GET /v1/stock/{at}/nowhere");
    s.check_case(&unknown).await;
    let (status, text) = s.text("/metrics").await;
    assert_eq!(status, 200);
    let names = [
        "stockring_operations_total",
        "stockring_group_commit_batch_size",
        "stockring_http_requests_total",
    ];
    for name in names {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    for id in ["metricsku", "metricwh", "metricres", "metricop"] {
        assert!(!text.contains(id), "/metrics names {id}");
    }
    s.stop().await;
}

/// Every route `src/api/mod.rs` serves, by path and method.
const ROUTES: &[(&str, &str)] = &[
    ("/v1/reservations", "post"),
    ("/v1/reservations/{id}/commit", "post"),
    ("/v1/reservations/{id}/release", "post"),
    ("/v1/stock/{sku}", "get"),
    ("/v1/stock/{sku}/{warehouse}", "get"),
    ("/v1/stock/{sku}/{warehouse}", "put"),
    ("/v1/stock/{sku}/{warehouse}/receipts", "post"),
    ("/v1/stock/{sku}/{warehouse}/safety-stock", "put"),
    ("/v1/orders", "post"),
    ("/v1/orders/{id}", "get"),
    ("/v1/orders/{id}/commit", "post"),
    ("/v1/orders/{id}/release", "post"),
    ("/v1/batch", "post"),
    ("/health", "get"),
    ("/ready", "get"),
    ("/metrics", "get"),
    ("/openapi.json", "get"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_route() {
    let s = Node::start().await;
    let doc = s.check("GET /openapi.json", NONE, 200, OK).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys() {
            documented.insert((path.as_str(), method.as_str()));
        }
    }
    let served: BTreeSet<(&str, &str)> = ROUTES.iter().copied().collect();
    assert_eq!(documented, served);
    for (path, method) in ROUTES {
        let op = &paths[*path][*method];
        let responses = op["responses"].as_object();
        assert!(responses.is_some_and(|r| !r.is_empty()), "{method} {path}");
        let params = op["parameters"].as_array().into_iter().flatten();
        let params: BTreeSet<_> = params.filter_map(|p| p["name"].as_str()).collect();
        let segments = path.split('/');
        let vars = segments.filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'));
        assert_eq!(
            params,
            vars.collect::<BTreeSet<_>>(),
            "{method} {path}: parameters"
        );
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 10. Durability across a restart

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_expires_while_the_node_is_down() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    let held = s.reserve(hold_ttl("s1", "w1", 4, "r1", 300)).await;
    let dir = s.stop().await;
    let expires = held["expires_at_ms"].as_u64().expect("expires_at_ms");
    let wait = expires.saturating_sub(now_ms()) + 50;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let s = Node::start_in(dir).await;
    assert_eq!(s.figures("s1", "w1").await, [10, 0, 10, 0]);
    s.commit("r1", "s1/w1", 409, "expired").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_replays_survive_a_restart() {
    let mut s = Node::start().await;
    s.count("a", "w1", 10, "c1").await;
    s.count("a", "w2", 5, "c2").await;
    s.count("b", "w1", 4, "c3").await;
    s.safety("a", "w1", 1, "ss1").await;
    s.reserve(hold("b", "w1", 3, "r2")).await;
    s.commit("r2", "b/w1", 200, OK).await;
    s.check(ORDER, order("o2", &[line("b", 1, &["w1"])]), 201, OK)
        .await;
    s.check("POST /v1/orders/o2/release", NONE, 200, OK).await;
    let o1 = order("o1", &[line("a", 4, &["w1", "w2"]), line("b", 1, &["w1"])]);
    // Requests whose answers must not change across the restart.
    let probes = [
        (RESERVE, hold("a", "w1", 2, "r1")),
        ("POST /v1/reservations/r2/commit", key("b", "w1")),
        ("POST /v1/reservations/r2/release", key("b", "w1")),
        (
            "POST /v1/stock/a/w1/receipts",
            json!({ "qty": 5, "op_id": "rc1" }),
        ),
        ("PUT /v1/stock/a/w1", json!({ "on_hand": 9, "op_id": "c1" })),
        (ORDER, o1),
        (ORDER, order("o2", &[line("b", 2, &["w1"])])),
        ("POST /v1/orders/o2/commit", NONE),
        ("GET /v1/orders/o1", NONE),
        ("GET /v1/orders/o2", NONE),
        ("GET /v1/stock/a", NONE),
        ("GET /v1/stock/b", NONE),
        ("GET /v1/stock/a/w1", NONE),
        ("GET /v1/stock/a/w2", NONE),
        ("GET /v1/stock/b/w1", NONE),
    ];
    let mut first = Vec::new();
    for (req, body) in &probes {
        first.push(s.send(req, body.clone()).await);
    }
    // Second round: the writes above are replays now, so nothing moves any more.
    let mut replayed = Vec::new();
    for (req, body) in &probes {
        replayed.push(s.send(req, body.clone()).await);
    }
    s = s.restart().await;
    for ((req, body), before) in probes.iter().zip(&replayed) {
        let after = s.send(req, body.clone()).await;
        assert_eq!(&after, before, "{req}: changed across the restart");
    }
    assert_eq!(first[0].0, 201, "the first reserve created the hold");
    assert_eq!(replayed[0], (200, first[0].1.clone()), "reserve replay");
    assert_eq!(first[5].0, 201, "the first order created its holds");
    // a/w1: r1 (2) and o1's line 0 (4) held, safety stock 1.
    assert_eq!(figures(&replayed[12].1), [15, 6, 8, 1]);
    assert_eq!(figures(&replayed[14].1), [1, 1, 0, 0]);
    s.stop().await;
}
