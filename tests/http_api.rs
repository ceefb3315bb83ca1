//! HTTP integration tests: each test starts its own in-process node on its own temp data dir
//! and talks to it over HTTP. Helpers live in `common`.

mod common;

use common::{figures, hold, key, line, now_ms, Node, OK};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// A TTL no test outlives.
const LONG: u64 = 600_000;
const NONE: Value = Value::Null;

// ---------------------------------------------------------------------------------------------
// 1. Happy paths

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycle_count_receipt_and_safety_stock_answer_with_the_figures() {
    let s = Node::start().await;
    let set = s.count("s1", "w1", 10, "c1").await;
    assert_eq!(set, json!({ "sku": "s1", "warehouse": "w1", "on_hand": 10, "reserved": 0, "available": 10, "safety_stock": 0 }));
    let got = s.check("POST /v1/stock/s1/w1/receipts", json!({ "qty": 5, "op_id": "r1" }), 200, OK).await;
    assert_eq!(figures(&got), [15, 0, 15, 0]);
    let got = s.check("PUT /v1/stock/s1/w1/safety-stock", json!({ "safety_stock": 4, "op_id": "ss1" }), 200, OK).await;
    assert_eq!(figures(&got), [15, 0, 11, 4]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_is_201_and_its_replay_is_200_with_the_same_body() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    let first = s.check("POST /v1/reservations", hold("s1", "w1", 3, "r1", LONG), 201, OK).await;
    assert_eq!(first["reservation_id"], "r1");
    assert_eq!(first["qty"], 3);
    assert_eq!(first["available"], 7);
    assert!(first["expires_at_ms"].as_u64().expect("expires_at_ms") > now_ms());
    let replay = s.check("POST /v1/reservations", hold("s1", "w1", 3, "r1", LONG), 200, OK).await;
    assert_eq!(replay, first);
    assert_eq!(figures(&s.stock("s1", "w1").await), [10, 3, 7, 0], "the replay holds nothing more");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_repeats_as_a_replay_and_release_after_commit_is_409() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.check("POST /v1/reservations", hold("s1", "w1", 3, "r1", LONG), 201, OK).await;
    let done = s.check("POST /v1/reservations/r1/commit", key("s1", "w1"), 200, OK).await;
    assert_eq!((&done["status"], &done["qty"]), (&json!("committed"), &json!(3)));
    let again = s.check("POST /v1/reservations/r1/commit", key("s1", "w1"), 200, OK).await;
    assert_eq!(again, done);
    s.check("POST /v1/reservations/r1/release", key("s1", "w1"), 409, "already_committed").await;
    assert_eq!(figures(&s.stock("s1", "w1").await), [7, 0, 7, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_after_release_is_409() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.check("POST /v1/reservations", hold("s1", "w1", 3, "r1", LONG), 201, OK).await;
    let done = s.check("POST /v1/reservations/r1/release", key("s1", "w1"), 200, OK).await;
    assert_eq!(done["status"], "released");
    s.check("POST /v1/reservations/r1/release", key("s1", "w1"), 200, OK).await;
    s.check("POST /v1/reservations/r1/commit", key("s1", "w1"), 409, "already_released").await;
    assert_eq!(figures(&s.stock("s1", "w1").await), [10, 0, 10, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_or_release_of_an_unknown_reservation_is_404() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.check("POST /v1/reservations/nope/commit", key("s1", "w1"), 404, "unknown_reservation").await;
    s.check("POST /v1/reservations/nope/release", key("s1", "w1"), 404, "unknown_reservation").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_key_reports_every_figure() {
    let s = Node::start().await;
    let fresh = s.stock("s1", "w1").await;
    assert_eq!(fresh, json!({ "sku": "s1", "warehouse": "w1", "on_hand": 0, "reserved": 0, "available": 0, "safety_stock": 0, "version": 0 }));
    s.count("s1", "w1", 10, "c1").await;
    s.check("PUT /v1/stock/s1/w1/safety-stock", json!({ "safety_stock": 2, "op_id": "ss1" }), 200, OK).await;
    s.check("POST /v1/reservations", hold("s1", "w1", 3, "r1", LONG), 201, OK).await;
    let got = s.stock("s1", "w1").await;
    assert_eq!(got, json!({ "sku": "s1", "warehouse": "w1", "on_hand": 10, "reserved": 3, "available": 5, "safety_stock": 2, "version": 3 }));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_sku_lists_its_warehouses_with_totals() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.count("s1", "w2", 4, "c2").await;
    s.count("s10", "w1", 99, "c3").await; // another SKU sharing a prefix: not listed
    s.check("POST /v1/reservations", hold("s1", "w2", 1, "r1", LONG), 201, OK).await;
    let got = s.check("GET /v1/stock/s1", NONE, 200, OK).await;
    assert_eq!(got["sku"], "s1");
    let rows = got["warehouses"].as_array().expect("warehouses");
    let names: Vec<&str> = rows.iter().map(|r| r["warehouse"].as_str().expect("warehouse")).collect();
    assert_eq!(names, ["w1", "w2"]);
    assert_eq!(rows[0], s.stock("s1", "w1").await);
    assert_eq!(rows[1], s.stock("s1", "w2").await);
    assert_eq!(got["total"], json!({ "on_hand": 14, "reserved": 1, "available": 13 }));
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Refusals and idempotency

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_beyond_available_is_409_with_available() {
    let s = Node::start().await;
    s.count("s1", "w1", 5, "c1").await;
    let err = s.check("POST /v1/reservations", hold("s1", "w1", 6, "r1", LONG), 409, "insufficient_stock").await;
    assert_eq!((&err["available"], &err["requested"]), (&json!(5), &json!(6)));
    assert_eq!(figures(&s.stock("s1", "w1").await), [5, 0, 5, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservation_id_reuse_with_another_qty_is_id_conflict() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.check("POST /v1/reservations", hold("s1", "w1", 3, "r1", LONG), 201, OK).await;
    s.check("POST /v1/reservations", hold("s1", "w1", 4, "r1", LONG), 409, "id_conflict").await;
    assert_eq!(figures(&s.stock("s1", "w1").await), [10, 3, 7, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn op_id_reuse_with_another_body_is_id_conflict() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.check("PUT /v1/stock/s1/w1", json!({ "on_hand": 11, "op_id": "c1" }), 409, "id_conflict").await;
    s.check("POST /v1/stock/s1/w1/receipts", json!({ "qty": 2, "op_id": "r1" }), 200, OK).await;
    s.check("POST /v1/stock/s1/w1/receipts", json!({ "qty": 3, "op_id": "r1" }), 409, "id_conflict").await;
    assert_eq!(figures(&s.stock("s1", "w1").await), [12, 0, 12, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_replay_answers_the_same_and_adds_stock_once() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    let receipt = json!({ "qty": 5, "op_id": "r1" });
    let first = s.check("POST /v1/stock/s1/w1/receipts", receipt.clone(), 200, OK).await;
    let replay = s.check("POST /v1/stock/s1/w1/receipts", receipt, 200, OK).await;
    assert_eq!(replay, first);
    assert_eq!(figures(&s.stock("s1", "w1").await), [15, 0, 15, 0]);
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
    let held = s.check("POST /v1/reservations", hold("s1", "w1", 4, "r1", 300), 201, OK).await;
    let expires = held["expires_at_ms"].as_u64().expect("expires_at_ms");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sent = now_ms();
        let got = figures(&s.stock("s1", "w1").await);
        let answered = now_ms();
        if answered < expires {
            assert_eq!(got, [10, 4, 6, 0], "expired before {expires} (answered at {answered})");
        }
        if sent >= expires {
            assert_eq!(got, [10, 0, 10, 0], "still held at {sent}, after {expires}");
            break;
        }
        assert!(Instant::now() < deadline, "the hold never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = s.check("POST /v1/reservations/r1/commit", key("s1", "w1"), 409, "expired").await;
    assert_eq!(err["expires_at_ms"], expires);
    s.check("POST /v1/reservations/r1/release", key("s1", "w1"), 409, "expired").await;
    assert_eq!(figures(&s.stock("s1", "w1").await), [10, 0, 10, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_within_its_ttl_commits() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.check("POST /v1/reservations", hold("s1", "w1", 4, "r1", LONG), 201, OK).await;
    s.check("POST /v1/reservations/r1/commit", key("s1", "w1"), 200, OK).await;
    assert_eq!(figures(&s.stock("s1", "w1").await), [6, 0, 6, 0]);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4-5. Safety stock and cycle counts

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safety_stock_is_kept_out_of_available() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.check("POST /v1/reservations", hold("s1", "w1", 2, "r1", LONG), 201, OK).await;
    let set = s.check("PUT /v1/stock/s1/w1/safety-stock", json!({ "safety_stock": 3, "op_id": "ss1" }), 200, OK).await;
    assert_eq!(figures(&set), [10, 2, 5, 3], "available = on_hand - reserved - safety_stock");
    let err = s.check("POST /v1/reservations", hold("s1", "w1", 6, "r2", LONG), 409, "insufficient_stock").await;
    assert_eq!(err["available"], 5);
    let ok = s.check("POST /v1/reservations", hold("s1", "w1", 5, "r3", LONG), 201, OK).await;
    assert_eq!(ok["available"], 0);
    assert_eq!(figures(&s.stock("s1", "w1").await), [10, 7, 0, 3]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycle_count_below_reserved_is_409_with_the_shortfall() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.check("POST /v1/reservations", hold("s1", "w1", 6, "r1", LONG), 201, OK).await;
    let before = figures(&s.stock("s1", "w1").await);
    let count = json!({ "on_hand": 4, "op_id": "c2" });
    let err = s.check("PUT /v1/stock/s1/w1", count.clone(), 409, "count_below_reserved").await;
    assert_eq!((&err["counted"], &err["reserved"], &err["shortfall"]), (&json!(4), &json!(6), &json!(2)));
    assert_eq!(s.check("PUT /v1/stock/s1/w1", count, 409, "count_below_reserved").await, err, "a replay");
    assert_eq!(figures(&s.stock("s1", "w1").await), before);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Orders

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_all_or_nothing_across_skus() {
    let s = Node::start().await;
    s.count("a", "w1", 5, "c1").await;
    s.count("b", "w1", 1, "c2").await;
    let order = json!({ "order_id": "o1", "lines": [line("a", 3, &["w1"]), line("b", 2, &["w1"])] });
    let err = s.check("POST /v1/orders", order, 409, "insufficient_stock").await;
    assert_eq!(err["line"], 1);
    assert_eq!(figures(&s.stock("a", "w1").await), [5, 0, 5, 0], "line 0's hold was given back");
    assert_eq!(figures(&s.stock("b", "w1").await), [1, 0, 1, 0]);
    let recorded = s.check("GET /v1/orders/o1", NONE, 200, OK).await;
    assert_eq!((&recorded["status"], &recorded["failed_line"]), (&json!("failed"), &json!(1)));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_line_falls_back_to_its_next_warehouse() {
    let s = Node::start().await;
    s.count("a", "w1", 1, "c1").await;
    s.count("a", "w2", 5, "c2").await;
    let order = json!({ "order_id": "o1", "ttl_ms": LONG, "lines": [line("a", 3, &["w1", "w2"])] });
    let got = s.check("POST /v1/orders", order, 201, OK).await;
    assert_eq!((&got["order_id"], &got["status"]), (&json!("o1"), &json!("reserved")));
    assert_eq!(got["lines"][0]["allocated_warehouse"], "w2");
    assert_eq!(figures(&s.stock("a", "w1").await), [1, 0, 1, 0]);
    assert_eq!(figures(&s.stock("a", "w2").await), [5, 3, 2, 0]);
    assert_eq!(s.check("GET /v1/orders/o1", NONE, 200, OK).await, got);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_replay_is_200_and_another_body_is_id_conflict() {
    let s = Node::start().await;
    s.count("a", "w1", 10, "c1").await;
    let order = json!({ "order_id": "o1", "lines": [line("a", 3, &["w1"])] });
    let first = s.check("POST /v1/orders", order.clone(), 201, OK).await;
    assert_eq!(s.check("POST /v1/orders", order, 200, OK).await, first);
    let other = json!({ "order_id": "o1", "lines": [line("a", 4, &["w1"])] });
    s.check("POST /v1/orders", other, 409, "id_conflict").await;
    assert_eq!(figures(&s.stock("a", "w1").await), [10, 3, 7, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committing_an_order_takes_its_stock_out_of_on_hand() {
    let s = Node::start().await;
    s.count("a", "w1", 10, "c1").await;
    s.count("b", "w1", 10, "c2").await;
    let order = json!({ "order_id": "o1", "lines": [line("a", 3, &["w1"]), line("b", 1, &["w1"])] });
    s.check("POST /v1/orders", order, 201, OK).await;
    let done = s.check("POST /v1/orders/o1/commit", NONE, 200, OK).await;
    assert_eq!(done["status"], "committed");
    assert_eq!(s.check("POST /v1/orders/o1/commit", NONE, 200, OK).await, done, "a replay");
    s.check("POST /v1/orders/o1/release", NONE, 409, "invalid_order_state").await;
    assert_eq!(figures(&s.stock("a", "w1").await), [7, 0, 7, 0]);
    assert_eq!(figures(&s.stock("b", "w1").await), [9, 0, 9, 0]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releasing_an_order_frees_its_stock_and_it_cannot_be_committed() {
    let s = Node::start().await;
    s.count("a", "w1", 10, "c1").await;
    s.check("POST /v1/orders", json!({ "order_id": "o1", "lines": [line("a", 3, &["w1"])] }), 201, OK).await;
    assert_eq!(figures(&s.stock("a", "w1").await), [10, 3, 7, 0]);
    let done = s.check("POST /v1/orders/o1/release", NONE, 200, OK).await;
    assert_eq!(done["status"], "released");
    assert_eq!(figures(&s.stock("a", "w1").await), [10, 0, 10, 0]);
    let err = s.check("POST /v1/orders/o1/commit", NONE, 409, "invalid_order_state").await;
    assert_eq!(err["order"]["status"], "released");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_order_is_404() {
    let s = Node::start().await;
    s.check("GET /v1/orders/nope", NONE, 404, "unknown_order").await;
    s.check("POST /v1/orders/nope/commit", NONE, 404, "unknown_order").await;
    s.check("POST /v1/orders/nope/release", NONE, 404, "unknown_order").await;
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7. Batch

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_ops_on_one_key_in_order_and_answers_in_order() {
    let s = Node::start().await;
    let k = |op: &str, extra: Value| {
        let mut v = json!({ "op": op, "sku": "s1", "warehouse": "w1" });
        v.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        v
    };
    let ops = json!([
        k("receive", json!({ "qty": 5, "op_id": "b-r1" })),
        { "op": "set_on_hand", "sku": "s2", "warehouse": "w1", "on_hand": 7, "op_id": "b-c1" },
        k("reserve", json!({ "qty": 3, "reservation_id": "b1", "ttl_ms": LONG })),
        k("reserve", json!({ "qty": 3, "reservation_id": "b2" })),
        k("get", json!({})),
        k("commit", json!({ "reservation_id": "b1" })),
        k("get", json!({})),
    ]);
    let got = s.check("POST /v1/batch", json!({ "ops": ops }), 200, OK).await;
    let results = got["results"].as_array().expect("results");
    let statuses: Vec<u64> = results.iter().map(|r| r["status"].as_u64().expect("status")).collect();
    assert_eq!(statuses, [200, 200, 201, 409, 200, 200, 200]);
    assert_eq!(results[1]["body"]["sku"], "s2");
    assert_eq!(results[3]["body"]["code"], "insufficient_stock");
    assert_eq!(figures(&results[4]["body"]), [5, 3, 2, 0]);
    assert_eq!(results[5]["body"]["status"], "committed");
    assert_eq!(figures(&results[6]["body"]), [2, 0, 2, 0]);
    assert_eq!(results[6]["body"], s.stock("s1", "w1").await);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_an_invalid_op_applies_nothing() {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    let before = s.stock("s1", "w1").await;
    let ops = json!([
        { "op": "receive", "sku": "s1", "warehouse": "w1", "qty": 5, "op_id": "b-r1" },
        { "op": "reserve", "sku": "s1", "warehouse": "w1", "qty": 1, "reservation_id": "b1" },
        { "op": "reserve", "sku": "s1", "warehouse": "w1", "qty": 0, "reservation_id": "b2" },
    ]);
    let err = s.check("POST /v1/batch", json!({ "ops": ops }), 400, "invalid_quantity").await;
    assert_eq!(err["index"], 2);
    s.check("POST /v1/batch", json!({ "ops": [] }), 400, "invalid_batch").await;
    assert_eq!(s.stock("s1", "w1").await, before);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 8. Bad input (C6): a 4xx with {code, message}, never a 5xx, and nothing changes

/// A node with `s1/w1` counted to 10 and hold `r1` of 2; returns it and the key's GET body.
async fn seeded() -> (Node, Value) {
    let s = Node::start().await;
    s.count("s1", "w1", 10, "c1").await;
    s.check("POST /v1/reservations", hold("s1", "w1", 2, "r1", LONG), 201, OK).await;
    let before = s.stock("s1", "w1").await;
    (s, before)
}

/// Sends each `(request, raw JSON body, status, code)` and checks the key did not change.
async fn refuse_all(cases: &[(&str, &str, u16, &str)]) {
    let (s, before) = seeded().await;
    for (req, body, status, code) in cases {
        s.check_raw(req, body, *status, code).await;
        assert_eq!(s.stock("s1", "w1").await, before, "{req} {body} changed the stock");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_400() {
    refuse_all(&[
        ("POST /v1/reservations", r#"{"sku":"s1","warehouse":"w1","qty":1,"reservation_id":"x""#, 400, "malformed_json"),
        ("POST /v1/reservations", "", 400, "malformed_json"),
        ("POST /v1/reservations", r#"{"sku":"s1","warehouse":"w1","qty":1,"reservation_id":"x","color":"red"}"#, 400, "invalid_body"),
        ("POST /v1/reservations", r#"{"sku":"s1","warehouse":"w1","reservation_id":"x"}"#, 400, "invalid_body"),
        ("POST /v1/reservations", r#"{"sku":"s1","warehouse":"w1","qty":"1","reservation_id":"x"}"#, 400, "invalid_body"),
        ("POST /v1/reservations", "[1, 2]", 400, "invalid_body"),
        ("POST /v1/reservations/r1/commit", r#"{"sku":"s1"}"#, 400, "invalid_body"),
        ("POST /v1/reservations/r1/release", r#"{"sku":"s1","warehouse":"w1","extra":1}"#, 400, "invalid_body"),
        ("PUT /v1/stock/s1/w1", r#"{"on_hand":5}"#, 400, "invalid_body"),
        ("PUT /v1/stock/s1/w1", r#"{"on_hand":5,"op_id":"c9","note":"x"}"#, 400, "invalid_body"),
        ("POST /v1/stock/s1/w1/receipts", "{", 400, "malformed_json"),
        ("PUT /v1/stock/s1/w1/safety-stock", r#"{"safety":1,"op_id":"x"}"#, 400, "invalid_body"),
        ("POST /v1/orders", r#"{"order_id":"o1","lines":[{"sku":"s1","qty":1}]}"#, 400, "invalid_body"),
        ("POST /v1/orders", r#"{"order_id":"o1","lines":[]}"#, 400, "invalid_order"),
        ("POST /v1/orders", r#"{"order_id":"o1","lines":[{"sku":"s1","qty":1,"warehouses":[]}]}"#, 400, "invalid_order"),
        ("POST /v1/orders", r#"{"order_id":"o1","lines":[{"sku":"s1","qty":1,"warehouses":["w1","w1"]}]}"#, 400, "invalid_order"),
        ("POST /v1/batch", r#"{"ops":[{"op":"explode","sku":"s1","warehouse":"w1"}]}"#, 400, "invalid_body"),
        ("POST /v1/batch", r#"{"ops":[{"op":"get","sku":"s1","warehouse":"w1","qty":1}]}"#, 400, "invalid_body"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_numbers_are_400() {
    let reserve = |qty: &str| format!(r#"{{"sku":"s1","warehouse":"w1","qty":{qty},"reservation_id":"x"}}"#);
    let receipt = |qty: &str| format!(r#"{{"qty":{qty},"op_id":"x"}}"#);
    let order = |qty: &str| format!(r#"{{"order_id":"o1","lines":[{{"sku":"s1","qty":{qty},"warehouses":["w1"]}}]}}"#);
    let (r0, r_neg, r_big, r_2_64, r_frac) =
        (reserve("0"), reserve("-1"), reserve("1000000001"), reserve("18446744073709551616"), reserve("1.5"));
    let (c0, c_neg, c_big, c_2_64) = (receipt("0"), receipt("-1"), receipt("1000000001"), receipt("18446744073709551616"));
    let (o0, o_big) = (order("0"), order("1000000001"));
    refuse_all(&[
        ("POST /v1/reservations", &r0, 400, "invalid_quantity"),
        ("POST /v1/reservations", &r_neg, 400, "invalid_body"),
        ("POST /v1/reservations", &r_big, 400, "invalid_quantity"),
        ("POST /v1/reservations", &r_2_64, 400, "invalid_body"),
        ("POST /v1/reservations", &r_frac, 400, "invalid_body"),
        ("POST /v1/stock/s1/w1/receipts", &c0, 400, "invalid_quantity"),
        ("POST /v1/stock/s1/w1/receipts", &c_neg, 400, "invalid_body"),
        ("POST /v1/stock/s1/w1/receipts", &c_big, 400, "invalid_quantity"),
        ("POST /v1/stock/s1/w1/receipts", &c_2_64, 400, "invalid_body"),
        ("POST /v1/orders", &o0, 400, "invalid_quantity"),
        ("POST /v1/orders", &o_big, 400, "invalid_quantity"),
        ("PUT /v1/stock/s1/w1", r#"{"on_hand":1000000000001,"op_id":"c9"}"#, 400, "invalid_quantity"),
        ("PUT /v1/stock/s1/w1", r#"{"on_hand":-1,"op_id":"c9"}"#, 400, "invalid_body"),
        ("PUT /v1/stock/s1/w1", r#"{"on_hand":18446744073709551616,"op_id":"c9"}"#, 400, "invalid_body"),
        ("PUT /v1/stock/s1/w1/safety-stock", r#"{"safety_stock":1000000000001,"op_id":"x"}"#, 400, "invalid_quantity"),
        ("POST /v1/batch", r#"{"ops":[{"op":"receive","sku":"s1","warehouse":"w1","qty":0,"op_id":"x"}]}"#, 400, "invalid_quantity"),
        ("POST /v1/batch", r#"{"ops":[{"op":"receive","sku":"s1","warehouse":"w1","qty":-1,"op_id":"x"}]}"#, 400, "invalid_body"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_out_of_range_is_400() {
    let reserve = |ttl: &str| format!(r#"{{"sku":"s1","warehouse":"w1","qty":1,"reservation_id":"x","ttl_ms":{ttl}}}"#);
    let order = |ttl: &str| format!(r#"{{"order_id":"o1","ttl_ms":{ttl},"lines":[{{"sku":"s1","qty":1,"warehouses":["w1"]}}]}}"#);
    let (r0, r_big, r_neg, o0, o_big) = (reserve("0"), reserve("604800001"), reserve("-5"), order("0"), order("604800001"));
    refuse_all(&[
        ("POST /v1/reservations", &r0, 400, "invalid_ttl"),
        ("POST /v1/reservations", &r_big, 400, "invalid_ttl"),
        ("POST /v1/reservations", &r_neg, 400, "invalid_body"),
        ("POST /v1/orders", &o0, 400, "invalid_ttl"),
        ("POST /v1/orders", &o_big, 400, "invalid_ttl"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_in_bodies_are_400() {
    let long = "x".repeat(129);
    let (s, before) = seeded().await;
    for bad in ["", long.as_str(), "a b", "a#1", "a/b", "é"] {
        let cases = [
            ("POST /v1/reservations", hold(bad, "w1", 1, "x", LONG)),
            ("POST /v1/reservations", hold("s1", bad, 1, "x", LONG)),
            ("POST /v1/reservations", hold("s1", "w1", 1, bad, LONG)),
            ("POST /v1/reservations", json!({ "sku": "s1", "warehouse": "w1", "qty": 1, "reservation_id": "x", "order_id": bad })),
            ("POST /v1/reservations/r1/commit", key("s1", bad)),
            ("PUT /v1/stock/s1/w1", json!({ "on_hand": 3, "op_id": bad })),
            ("POST /v1/stock/s1/w1/receipts", json!({ "qty": 3, "op_id": bad })),
            ("PUT /v1/stock/s1/w1/safety-stock", json!({ "safety_stock": 3, "op_id": bad })),
            ("POST /v1/orders", json!({ "order_id": bad, "lines": [line("s1", 1, &["w1"])] })),
            ("POST /v1/orders", json!({ "order_id": "o1", "lines": [line("s1", 1, &[bad])] })),
            ("POST /v1/batch", json!({ "ops": [{ "op": "get", "sku": bad, "warehouse": "w1" }] })),
        ];
        for (req, body) in cases {
            s.check(req, body.clone(), 400, "invalid_id").await;
            assert_eq!(s.stock("s1", "w1").await, before, "{req} {body} changed the stock");
        }
    }
    assert_eq!(s.check("GET /v1/stock/s1", NONE, 200, OK).await["warehouses"].as_array().map(Vec::len), Some(1));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_ids_in_paths_are_4xx() {
    let long = "x".repeat(129);
    let (s, before) = seeded().await;
    let count = json!({ "on_hand": 3, "op_id": "c9" });
    for bad in [long.as_str(), "a%20b", "a%231", "a%2Fb", "%C3%A9", "a%00"] {
        let cases = [
            (format!("GET /v1/stock/{bad}/w1"), NONE),
            (format!("GET /v1/stock/{bad}"), NONE),
            (format!("PUT /v1/stock/s1/{bad}"), count.clone()),
            (format!("POST /v1/stock/{bad}/w1/receipts"), json!({ "qty": 3, "op_id": "x" })),
            (format!("PUT /v1/stock/s1/{bad}/safety-stock"), json!({ "safety_stock": 3, "op_id": "x" })),
            (format!("POST /v1/reservations/{bad}/commit"), key("s1", "w1")),
            (format!("POST /v1/reservations/{bad}/release"), key("s1", "w1")),
            (format!("GET /v1/orders/{bad}"), NONE),
            (format!("POST /v1/orders/{bad}/commit"), NONE),
        ];
        for (req, body) in cases {
            s.check(&req, body, 400, "invalid_id").await;
            assert_eq!(s.stock("s1", "w1").await, before, "{req} changed the stock");
        }
    }
    // An empty segment still matches its route, and is refused as an id.
    s.check("PUT /v1/stock//w1", count.clone(), 400, "invalid_id").await;
    s.check("POST /v1/reservations//commit", key("s1", "w1"), 400, "invalid_id").await;
    assert_eq!(s.stock("s1", "w1").await, before);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_without_json_content_type_is_415() {
    let (s, before) = seeded().await;
    let body = r#"{"on_hand":3,"op_id":"c9"}"#;
    for ct in [None, Some("text/plain")] {
        let (status, reply) = s.send_raw("PUT /v1/stock/s1/w1", ct, body).await;
        common::expect("PUT without JSON content type", status, &reply, 415, "unsupported_media_type");
    }
    assert_eq!(s.stock("s1", "w1").await, before);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_1_mib_is_413() {
    let (s, before) = seeded().await;
    let op = r#"{"op":"receive","sku":"s1","warehouse":"w1","qty":1,"op_id":"big"},"#;
    let body = format!(r#"{{"ops":[{}{}]}}"#, op.repeat((1 << 20) / op.len() + 1), r#"{"op":"get","sku":"s1","warehouse":"w1"}"#);
    assert!(body.len() > 1 << 20);
    s.check_raw("POST /v1/batch", &body, 413, "body_too_large").await;
    let big_id = format!(r#"{{"qty":1,"op_id":"{}"}}"#, "x".repeat((1 << 20) + 1));
    s.check_raw("POST /v1/stock/s1/w1/receipts", &big_id, 413, "body_too_large").await;
    assert_eq!(s.stock("s1", "w1").await, before);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_is_405_and_an_unknown_path_is_404() {
    let (s, before) = seeded().await;
    for req in ["DELETE /v1/stock/s1/w1", "GET /v1/reservations", "PUT /v1/batch", "POST /v1/stock/s1", "GET /v1/orders/o1/commit", "POST /health"] {
        s.check(req, NONE, 405, "method_not_allowed").await;
    }
    for req in ["GET /v1/nope", "GET /v1/stock/s1/w1/receipts/x", "POST /v2/reservations", "GET /"] {
        s.check(req, NONE, 404, "not_found").await;
    }
    assert_eq!(s.stock("s1", "w1").await, before);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 9. Operations endpoints

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_are_200() {
    let s = Node::start().await;
    assert_eq!(s.check("GET /health", NONE, 200, OK).await, json!({ "status": "up" }));
    assert_eq!(s.check("GET /ready", NONE, 200, OK).await, json!({ "status": "ready" }));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_operations_without_naming_skus() {
    let s = Node::start().await;
    let (sku, wh) = ("metricsku-q7Zx", "metricwh-k3Vb");
    s.count(sku, wh, 10, "metricop-1").await;
    s.check("POST /v1/reservations", hold(sku, wh, 3, "metricres-1", LONG), 201, OK).await;
    s.check("POST /v1/reservations", hold(sku, wh, 30, "metricres-2", LONG), 409, "insufficient_stock").await;
    s.check("POST /v1/reservations/metricres-1/commit", key(sku, wh), 200, OK).await;
    s.check(&format!("GET /v1/stock/{sku}"), NONE, 200, OK).await;
    s.check(&format!("GET /v1/stock/{sku}/{wh}/nowhere"), NONE, 404, "not_found").await;
    let (status, text) = s.text("/metrics").await;
    eprintln!("METRICS-DUMP\n{text}");
    assert_eq!(status, 200);
    for name in ["stockring_operations_total", "stockring_group_commit_batch_size", "stockring_http_requests_total"] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    for id in [sku, wh, "metricres-", "metricop-", "metricsku", "metricwh"] {
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
    let documented: BTreeSet<(&str, &str)> =
        paths.iter().flat_map(|(p, ops)| ops.as_object().expect("path item").keys().map(move |m| (p.as_str(), m.as_str()))).collect();
    let served: BTreeSet<(&str, &str)> = ROUTES.iter().copied().collect();
    assert_eq!(documented, served);
    for (path, method) in ROUTES {
        let op = &paths[*path][*method];
        assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} documents no response");
        let params: BTreeSet<&str> = op["parameters"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
        let in_path: BTreeSet<&str> = path.split('/').filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}')).collect();
        assert_eq!(params, in_path, "{method} {path}: path parameters");
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 10. Durability across a restart

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_replays_survive_a_restart() {
    let mut s = Node::start().await;
    s.count("a", "w1", 10, "c1").await;
    s.count("a", "w2", 5, "c2").await;
    s.count("b", "w1", 4, "c3").await;
    s.check("PUT /v1/stock/a/w1/safety-stock", json!({ "safety_stock": 1, "op_id": "ss1" }), 200, OK).await;
    s.check("POST /v1/reservations", hold("b", "w1", 3, "r2", LONG), 201, OK).await;
    s.check("POST /v1/reservations/r2/commit", key("b", "w1"), 200, OK).await;
    s.check("POST /v1/orders", json!({ "order_id": "o2", "lines": [line("b", 1, &["w1"])] }), 201, OK).await;
    s.check("POST /v1/orders/o2/release", NONE, 200, OK).await;
    // (request, body) pairs whose answers must not change across the restart.
    let probes = [
        ("POST /v1/reservations", hold("a", "w1", 2, "r1", LONG)),
        ("POST /v1/reservations/r2/commit", key("b", "w1")),
        ("POST /v1/reservations/r2/release", key("b", "w1")),
        ("POST /v1/stock/a/w1/receipts", json!({ "qty": 5, "op_id": "rc1" })),
        ("PUT /v1/stock/a/w1", json!({ "on_hand": 9, "op_id": "c1" })),
        ("POST /v1/orders", json!({ "order_id": "o1", "ttl_ms": LONG, "lines": [line("a", 4, &["w1", "w2"]), line("b", 1, &["w1"])] })),
        ("POST /v1/orders", json!({ "order_id": "o2", "lines": [line("b", 2, &["w1"])] })),
        ("POST /v1/orders/o2/commit", NONE),
        ("GET /v1/orders/o1", NONE),
        ("GET /v1/orders/o2", NONE),
        ("GET /v1/stock/a", NONE),
        ("GET /v1/stock/b", NONE),
        ("GET /v1/stock/a/w1", NONE),
        ("GET /v1/stock/a/w2", NONE),
        ("GET /v1/stock/b/w1", NONE),
    ];
    let mut before = Vec::new();
    for (req, body) in &probes {
        before.push(s.send(req, body.clone()).await);
    }
    // Second round: the writes above are now replays, and nothing moves any more.
    let mut replayed = Vec::new();
    for (req, body) in &probes {
        replayed.push(s.send(req, body.clone()).await);
    }
    s = s.restart().await;
    let mut after = Vec::new();
    for (req, body) in &probes {
        after.push(s.send(req, body.clone()).await);
    }
    for (i, (req, _)) in probes.iter().enumerate() {
        assert_eq!(after[i], replayed[i], "{req}: answer changed across the restart");
    }
    assert_eq!(before[0].0, 201, "the first reserve created the hold");
    assert_eq!((&replayed[0].0, &replayed[0].1), (&200, &before[0].1), "reserve replay");
    assert_eq!(figures(&after[12].1), [15, 6, 8, 1], "r1 (2) and o1's line 0 (4) held, safety stock 1");
    assert_eq!(figures(&after[14].1), [1, 1, 0, 0]);
    s.stop().await;
}
