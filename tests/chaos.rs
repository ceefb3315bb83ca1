//! Short chaos runs (20 s each) of the real binary (`stockring chaos`): real node processes, real
//! `kill -9` / SIGSTOP, real network partitions between network namespaces when this machine
//! allows them. Each must end with a clean verdict. Longer runs: see README ("Chaos").

use serde_json::Value;
use std::process::Command;

/// Runs `stockring chaos` with `args` into a temp dir; returns (exit code, verdict, stdout).
fn chaos(args: &[&str]) -> (i32, Value, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("run");
    let output = Command::new(env!("CARGO_BIN_EXE_stockring"))
        .arg("chaos")
        .args(args)
        .arg("--out")
        .arg(&out)
        .env("NO_COLOR", "1")
        .output()
        .expect("run stockring chaos");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let verdict = std::fs::read(out.join("verdict.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| panic!("no verdict.json; stdout:\n{stdout}\nstderr:\n{stderr}"));
    (output.status.code().unwrap_or(-1), verdict, stdout, dir)
}

fn assert_clean(code: i32, verdict: &Value, stdout: &str, kinds: &[&str]) {
    assert_eq!(code, 0, "not clean:\n{stdout}");
    assert_eq!(verdict["clean"], true, "{stdout}");
    assert!(
        verdict["calls"].as_u64().unwrap_or(0) > 300,
        "too few operations to say anything: {stdout}"
    );
    // The faults really happened: a clean verdict of a run without them proves little.
    let seen: Vec<&str> = verdict["windows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["kind"].as_str())
        .collect();
    assert!(
        seen.len() >= 2 && seen.iter().all(|k| kinds.contains(k)),
        "faults {seen:?} (expected at least two of {kinds:?}): {stdout}"
    );
}

/// A 20 s run of 4 nodes (3 seeds) with `kinds` of faults on `net`, which must end clean.
fn clean_run(kinds: &[&str], net: &str, seed: &str) {
    let faults = kinds.join(",");
    let (code, verdict, stdout, _dir) = chaos(&[
        "--nodes",
        "4",
        "--seeds",
        "3",
        "--duration",
        "20s",
        "--rate",
        "120",
        "--clients",
        "8",
        "--net",
        net,
        "--faults",
        &faults,
        "--seed",
        seed,
    ]);
    assert_clean(code, &verdict, &stdout, kinds);
}

#[test]
fn process_faults_leave_a_clean_history() {
    clean_run(
        &["kill", "kill-leader", "pause", "pause-short"],
        "loopback",
        "11",
    );
}

#[test]
fn partitions_leave_a_clean_history() {
    if let Some(why) = stockring::chaos::net::Netns::unavailable() {
        eprintln!("skipped: no network namespaces here ({why})");
        return;
    }
    clean_run(
        &["partition-one", "partition-half", "partition-oneway"],
        "namespaces",
        "12",
    );
}
