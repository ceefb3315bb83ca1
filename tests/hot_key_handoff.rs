//! A measurement, not part of the default suite: a flash sale on one key (1,000,000 attempts
//! with 100-character ids by default, stock 10,000), then the node holding the key leaves and
//! the key's vnode is handed to the other node. Prints the flash figures, the size of the
//! key's stored snapshot (and records), how long the handoff took, and checks the key on its
//! new owner: every hold, and the remembered ids (a repeated reserve replays).
//!
//! ```text
//! cargo test --release --test hot_key_handoff -- --ignored --nocapture
//! STOCKRING_BIN=/path/to/older/stockring cargo test --release --test hot_key_handoff -- --ignored --nocapture
//! STOCKRING_FLASH_ATTEMPTS=200000 ...   (a shorter run)
//! ```

mod cluster_support;

use cluster_support::{ClusterSpec, TestCluster, COOKIE};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use stockring::bench::{BenchArgs, Workload};

const STOCK: u64 = 10_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn call(base: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let client = reqwest::Client::new();
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut rb = client
        .request(method, format!("{base}{path}"))
        .bearer_auth(COOKIE);
    if !body.is_null() {
        rb = rb.json(&body);
    }
    let resp = rb.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The sizes of a key's stored state on a node's disk: the snapshot row, and (schema v5 on)
/// its record segments.
fn stored_sizes(cluster: &TestCluster, node: &str, key: &str) -> (i64, i64, i64) {
    let db = cluster.def(node).data_dir.join("stockring.db");
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
    let conn = rusqlite::Connection::open_with_flags(db, flags).expect("open the node's db");
    let row: i64 = conn
        .query_row(
            "SELECT length(state) FROM snapshots WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .unwrap_or(-1);
    let segments = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(length(records)), 0) FROM segments WHERE key = ?1",
        [key],
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    let (count, bytes) = segments.unwrap_or((0, 0));
    (row, count, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn a_flash_sale_key_is_handed_over() {
    let attempts = env_u64("STOCKRING_FLASH_ATTEMPTS", 1_000_000);
    let cluster = TestCluster::new(ClusterSpec {
        nodes: vec!["n1".into(), "n2".into()],
        seeds: vec!["n1".into()],
        vnodes: 8,
        heartbeat_ms: 200,
        down_after_missed: 10,
    });
    cluster.spawn("n1");
    cluster.wait_ready("n1", Duration::from_secs(60)).await;
    cluster.spawn("n2");
    cluster.wait_ready("n2", Duration::from_secs(60)).await;
    cluster
        .wait_status(
            "n1",
            "n2 holds half the vnodes",
            Duration::from_secs(60),
            |s| {
                cluster_support::vnodes_of(s, "n2") == 4
                    && cluster_support::moves_in_progress(s) == 0
            },
        )
        .await;
    // A flash key that n2 owns: asking n2 for it forwards nothing.
    let n2 = cluster.base("n2");
    let mut run_id = None;
    for i in 0..64 {
        let before = cluster.metric("n2", "stockring_forwarded_total").await;
        call(
            &n2,
            "GET",
            &format!("/v1/stock/flash-hk{i}/w1"),
            Value::Null,
        )
        .await;
        if cluster.metric("n2", "stockring_forwarded_total").await == before {
            run_id = Some(format!("hk{i}"));
            break;
        }
    }
    let run_id = run_id.expect("a key owned by n2");
    let key = format!("flash-{run_id}/w1");

    let args = BenchArgs {
        target: n2.clone(),
        workload: Workload::Flash,
        clients: 64,
        duration_s: 10,
        keys: 1,
        stock: STOCK,
        attempts,
        zipf_s: 1.0,
        json_only: true,
        run_id: Some(run_id.clone()),
        skip_seed: false,
        id_len: 100,
    };
    let report = stockring::bench::run(args).await.expect("flash run");
    println!(
        "flash on n2: {attempts} attempts, {:.0} req/s, p50 {} us, p99 {} us, p99.9 {} us, max {} us, pass {:?}",
        report.throughput_rps,
        report.p50_us,
        report.p99_us,
        report.p999_us,
        report.max_us,
        report.flash_pass
    );
    assert_eq!(report.flash_pass, Some(true), "{:?}", report.flash_detail);
    // A held probe: after the move, its repeat must replay (the key's ids moved with it).
    let sku = format!("flash-{run_id}");
    let restock = json!({ "qty": 1, "op_id": "probe-restock" });
    let (code, body) = call(
        &n2,
        "POST",
        &format!("/v1/stock/{sku}/w1/receipts"),
        restock,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let probe = json!({ "sku": sku, "warehouse": "w1", "qty": 1,
                        "reservation_id": "probe-held", "ttl_ms": 3_600_000 });
    let (code, body) = call(&n2, "POST", "/v1/reservations", probe.clone()).await;
    assert_eq!(code, 201, "{body}");
    let (row, segments, segment_bytes) = stored_sizes(&cluster, "n2", &key);
    println!(
        "stored on n2: snapshot row {row} bytes; {segments} record segments, {segment_bytes} bytes"
    );

    let started = Instant::now();
    let (code, body) = call(
        &cluster.base("n1"),
        "POST",
        "/v1/cluster/leave",
        json!({ "node": "n2" }),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let limit = Duration::from_secs(env_u64("STOCKRING_HANDOFF_LIMIT_S", 300));
    let left = loop {
        if cluster.try_exit("n2").is_some() {
            break Some(started.elapsed());
        }
        if started.elapsed() > limit {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let Some(took) = left else {
        cluster.dump();
        panic!("n2 still holds vnodes {limit:?} after its leave: the hot key's vnode did not move");
    };
    println!("handoff: n2 left (4 vnodes moved, the flash key's among them) in {took:?}");
    let n1 = cluster.base("n1");
    let (code, stock) = call(&n1, "GET", &format!("/v1/stock/{sku}/w1"), Value::Null).await;
    assert_eq!(code, 200, "{stock}");
    assert_eq!(
        (&stock["on_hand"], &stock["reserved"]),
        (&json!(STOCK + 1), &json!(STOCK + 1)),
        "{stock}"
    );
    let (code, body) = call(&n1, "POST", "/v1/reservations", probe).await;
    assert_eq!(
        code, 200,
        "the probe's repeat did not replay on the new owner: {body}"
    );
    let (row, segments, segment_bytes) = stored_sizes(&cluster, "n1", &key);
    println!(
        "stored on n1: snapshot row {row} bytes; {segments} record segments, {segment_bytes} bytes"
    );
}
