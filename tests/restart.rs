//! Restart with many keys on disk: the node is ready without activating any of them (activation
//! is lazy), and a key read after the restart has exactly its state, whether the node stopped
//! cleanly (snapshots written on drain) or was killed (state rebuilt from the journal tail).

mod process;

use process::NodeProcess;
use serde_json::{json, Value};

const KEYS: usize = 3_000;

async fn populate(node: &NodeProcess) {
    let client = reqwest::Client::new();
    for chunk in 0..KEYS / 1_000 {
        let ops: Vec<Value> = (chunk * 1_000..(chunk + 1) * 1_000)
            .map(|i| json!({ "op": "receive", "sku": format!("many-{i}"), "warehouse": "w1", "qty": i + 1, "op_id": "r1" }))
            .collect();
        let resp = client
            .post(format!("{}/v1/batch", node.base))
            .json(&json!({ "ops": ops }))
            .send()
            .await
            .expect("batch");
        assert_eq!(resp.status().as_u16(), 200);
        let body: Value = resp.json().await.expect("json");
        assert!(
            body["results"]
                .as_array()
                .expect("results")
                .iter()
                .all(|r| r["status"] == 200),
            "{body}"
        );
    }
    // One key with a live hold, to check that holds survive too.
    let hold = json!({ "sku": "many-7", "warehouse": "w1", "qty": 5, "reservation_id": "h1", "ttl_ms": 3_600_000 });
    let resp = client
        .post(format!("{}/v1/reservations", node.base))
        .json(&hold)
        .send()
        .await
        .expect("reserve");
    assert_eq!(resp.status().as_u16(), 201);
}

async fn check_lazy_and_correct(node: &NodeProcess) {
    assert_eq!(
        node.metric("stockring_activations_total").await,
        0.0,
        "keys were loaded eagerly"
    );
    for i in [0usize, 7, 1_234, KEYS - 1] {
        let view = node.view(&format!("many-{i}"), "w1").await;
        let reserved = if i == 7 { 5 } else { 0 };
        assert_eq!(view["on_hand"], (i + 1) as u64, "{view}");
        assert_eq!(view["reserved"], reserved, "{view}");
    }
    assert_eq!(node.metric("stockring_activations_total").await, 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_is_lazy_after_clean_stop_and_after_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]).await;
    populate(&node).await;
    node.terminate();

    let node = NodeProcess::start(dir.path(), &[]).await;
    check_lazy_and_correct(&node).await;
    node.kill9();

    let node = NodeProcess::start(dir.path(), &[]).await;
    check_lazy_and_correct(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passivated_keys_come_back_with_their_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A cap of 50 active actors forces constant passivation while 3,000 keys are written.
    let env = [
        ("STOCKRING_MAX_ACTIVE_ACTORS", "50"),
        ("STOCKRING_IDLE_PASSIVATE_MS", "200"),
    ];
    let node = NodeProcess::start(dir.path(), &env).await;
    populate(&node).await;
    // Passivations complete asynchronously (the counter moves in the actor's post_stop), so
    // wait for them, within a bound.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let passivated = node.metric("stockring_passivations_total").await;
        if passivated >= (KEYS - 100) as f64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {passivated} passivations"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let active = node.metric("stockring_active_actors").await;
    assert!(active <= 50.0, "cap exceeded: {active}");
    for i in [0usize, 7, 1_234, KEYS - 1] {
        let view = node.view(&format!("many-{i}"), "w1").await;
        assert_eq!(view["on_hand"], (i + 1) as u64, "{view}");
    }
}

/// `stockring backup` while the node serves, then `stockring restore` into a new directory:
/// the restored node has the same state and replays the same answers. Restore refuses a data
/// directory a running node holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_backup_restores_the_same_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (live, restored, file) = (
        dir.path().join("live"),
        dir.path().join("restored"),
        dir.path().join("b.db"),
    );
    let node = NodeProcess::start(&live, &[]).await;
    populate(&node).await;
    let file_s = file.to_str().expect("utf-8 path");
    let backup = cli(&[
        "backup",
        "--data-dir",
        live.to_str().expect("utf-8"),
        "--to",
        file_s,
    ]);
    assert!(backup.status.success(), "{backup:?}");
    let refused = cli(&[
        "restore",
        "--from",
        file_s,
        "--data-dir",
        live.to_str().expect("utf-8"),
    ]);
    assert!(
        !refused.status.success(),
        "restore into a live data dir must be refused"
    );
    let client = reqwest::Client::new();
    let hold = json!({ "sku": "many-7", "warehouse": "w1", "qty": 5, "reservation_id": "h1", "ttl_ms": 3_600_000 });
    let first: Value = client
        .post(format!("{}/v1/reservations", node.base))
        .json(&hold)
        .send()
        .await
        .expect("replay")
        .json()
        .await
        .expect("json");
    node.terminate();

    let restore = cli(&[
        "restore",
        "--from",
        file_s,
        "--data-dir",
        restored.to_str().expect("utf-8"),
    ]);
    assert!(restore.status.success(), "{restore:?}");
    let node = NodeProcess::start(&restored, &[]).await;
    check_lazy_and_correct(&node).await;
    let resp = client
        .post(format!("{}/v1/reservations", node.base))
        .json(&hold)
        .send()
        .await
        .expect("replay");
    assert_eq!(
        resp.status().as_u16(),
        200,
        "the hold taken before the backup replays"
    );
    assert_eq!(resp.json::<Value>().await.expect("json"), first);
}

/// Runs the `stockring` binary with `args` and waits for it.
fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_stockring"))
        .args(args)
        .output()
        .expect("run stockring")
}
