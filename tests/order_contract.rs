//! Orders against the real binary, as a client sees them: a commit never confirms units it
//! did not sell, and a client that hangs up mid-request strands nothing.

mod common;
mod process;

use common::{figures, line};
use process::NodeProcess;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

async fn call(base: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut rb = client.request(method, format!("{base}{path}"));
    if !body.is_null() {
        rb = rb.json(&body);
    }
    let resp = rb.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn ok(base: &str, method: &str, path: &str, body: Value) -> Value {
    let (status, reply) = call(base, method, path, body).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {reply}"
    );
    reply
}

/// The order's holds expired and their outcome was forgotten (retention 500 ms, a snapshot
/// after every event, two receipts to make the key snapshot and prune). A commit then must
/// not answer `committed`: nothing left `on_hand`, and the units are free for others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_after_the_holds_expired_and_were_forgotten_sells_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [
        ("STOCKRING_OUTCOME_RETENTION_MS", "500"),
        ("STOCKRING_SNAPSHOT_EVERY_EVENTS", "1"),
    ];
    let node = NodeProcess::start(dir.path(), &env).await;
    let base = node.base.clone();
    ok(
        &base,
        "PUT",
        "/v1/stock/s/w",
        json!({ "on_hand": 10, "op_id": "c1" }),
    )
    .await;
    let order = json!({ "order_id": "o1", "ttl_ms": 100, "lines": [line("s", 3, &["w"])] });
    ok(&base, "POST", "/v1/orders", order).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    for op in ["r1", "r2"] {
        let receipt = json!({ "qty": 1, "op_id": op });
        ok(&base, "POST", "/v1/stock/s/w/receipts", receipt).await;
    }
    let (status, reply) = call(&base, "POST", "/v1/orders/o1/commit", Value::Null).await;
    assert_eq!(
        status, 409,
        "a commit of expired holds answered {status}: {reply}"
    );
    assert_eq!(reply["code"], "expired", "{reply}");
    assert_eq!(reply["expired_lines"], json!([0]), "{reply}");
    let stock = ok(&base, "GET", "/v1/stock/s/w", Value::Null).await;
    assert_eq!(
        figures(&stock),
        [12, 0, 12, 0],
        "the commit moved stock: {stock}"
    );
    let recorded = ok(&base, "GET", "/v1/orders/o1", Value::Null).await;
    assert_eq!(recorded["status"], "expired", "{recorded}");
    // A repeat answers the same.
    let (again, body) = call(&base, "POST", "/v1/orders/o1/commit", Value::Null).await;
    assert_eq!((again, &body["code"]), (409, &json!("expired")), "{body}");
    node.terminate();
}

/// Sends `body` to `path` on a raw connection and closes it `after` later, before (or
/// whatever) the answer: what a client that times out or crashes does.
async fn send_and_hang_up(addr: &str, path: &str, body: &Value, after: Duration) {
    let body = body.to_string();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(request.as_bytes()).await.expect("send");
    tokio::time::sleep(after).await;
    drop(conn);
}

const SKUS: usize = 100;
const ORDERS: usize = 12;

fn order_body(o: usize) -> Value {
    let lines: Vec<Value> = (0..SKUS)
        .map(|k| line(&format!("k{k}"), 1 + (o % 3) as u64, &["w"]))
        .collect();
    json!({ "order_id": format!("hang{o}"), "ttl_ms": 600_000, "lines": lines })
}

/// Polls until every order has left `reserving`/`committing`/`releasing`; their statuses.
async fn settled_orders(base: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let mut statuses = Vec::new();
        for o in 0..ORDERS {
            let (_, order) = call(base, "GET", &format!("/v1/orders/hang{o}"), Value::Null).await;
            statuses.push(order["status"].as_str().unwrap_or("absent").to_owned());
        }
        let in_flight = statuses
            .iter()
            .any(|s| matches!(s.as_str(), "reserving" | "committing" | "releasing"));
        if !in_flight {
            return statuses;
        }
        assert!(
            Instant::now() < deadline,
            "orders still in flight on a live node: {statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The units held and sold over all keys.
async fn totals(base: &str) -> (u64, u64) {
    let (mut reserved, mut on_hand) = (0, 0);
    for k in 0..SKUS {
        let [h, r, _, _] =
            figures(&ok(base, "GET", &format!("/v1/stock/k{k}/w"), Value::Null).await);
        reserved += r;
        on_hand += h;
    }
    (reserved, on_hand)
}

/// Twelve 100-line orders whose clients hang up 3–36 ms after sending, then their commits
/// likewise, then a batch likewise. Every order must reach an end state on the live node
/// (no restart), and the stock must agree with what the orders say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_hang_up_mid_request_strand_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = NodeProcess::start(dir.path(), &[]).await;
    let base = node.base.clone();
    let addr = base.trim_start_matches("http://").to_owned();
    let stock = 1_000u64;
    for k in 0..SKUS {
        let count = json!({ "on_hand": stock, "op_id": format!("c{k}") });
        ok(&base, "PUT", &format!("/v1/stock/k{k}/w"), count).await;
    }
    let gap = |o: usize| Duration::from_millis(3 + 3 * o as u64);
    let sends = (0..ORDERS).map(|o| {
        let addr = addr.clone();
        async move { send_and_hang_up(&addr, "/v1/orders", &order_body(o), gap(o)).await }
    });
    futures::future::join_all(sends).await;
    let statuses = settled_orders(&base, Duration::from_secs(20)).await;
    let held_per_key: u64 = (0..ORDERS)
        .filter(|o| statuses[*o] == "reserved")
        .map(|o| 1 + (o % 3) as u64)
        .sum();
    let (reserved, _) = totals(&base).await;
    assert_eq!(
        reserved,
        held_per_key * SKUS as u64,
        "held units do not match the reserved orders {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| s == "reserved"),
        "work that started did not finish: {statuses:?}"
    );

    // Commits whose clients hang up: every one is carried out.
    let commits = (0..ORDERS).map(|o| {
        let addr = addr.clone();
        let path = format!("/v1/orders/hang{o}/commit");
        async move { send_and_hang_up(&addr, &path, &Value::Null, gap(o)).await }
    });
    futures::future::join_all(commits).await;
    let statuses = settled_orders(&base, Duration::from_secs(20)).await;
    assert!(statuses.iter().all(|s| s == "committed"), "{statuses:?}");
    let sold: u64 = (0..ORDERS).map(|o| 1 + (o % 3) as u64).sum::<u64>() * SKUS as u64;
    assert_eq!(totals(&base).await, (0, stock * SKUS as u64 - sold));

    // A batch of 1,000 reserves whose client hangs up at once: all of them run.
    let ops: Vec<Value> = (0..1000)
        .map(|i| {
            json!({ "op": "reserve", "sku": format!("k{}", i % SKUS), "warehouse": "w",
                    "qty": 1, "reservation_id": format!("b{i}"), "ttl_ms": 600_000 })
        })
        .collect();
    let batch = json!({ "ops": ops });
    send_and_hang_up(&addr, "/v1/batch", &batch, Duration::from_millis(3)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (reserved, _) = totals(&base).await;
        if reserved == 1000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the batch stopped at {reserved} of 1000"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.terminate();
}
