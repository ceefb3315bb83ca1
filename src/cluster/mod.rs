//! The cluster: the vnode ring, the control plane that decides ownership (Raft on the seeds),
//! the handoff protocol that moves vnodes between nodes, and the node-to-node transport.
//!
//! The pure parts (`ring`, `planner`, `control`, `handoff`) take input and time in and give
//! decisions out; the simulation in `simulations/` drives them from a seed. The rest is shell.

pub mod control;
pub mod forward;
pub mod gates;
pub mod handoff;
pub mod http;
mod loops;
mod mover;
pub mod node;
pub mod planner;
pub mod raft;
pub mod replication;
pub mod ring;
mod status;
pub mod transport;
pub mod wire;

/// A member's compact id, assigned by the control plane when it is admitted.
pub type MemberId = u32;

/// `stockring cluster status` as a table.
pub fn format_status(s: &serde_json::Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let raft = &s["raft"];
    let _ = writeln!(
        out,
        "node {}  map v{}  vnodes {}  raft leader {} term {} commit {}",
        s["node"],
        s["map_version"],
        s["vnodes"],
        raft["leader"],
        raft["term"],
        raft["commit_index"]
    );
    let _ = writeln!(
        out,
        "{:<12} {:<4} {:<8} {:>6} {:>8}  {:<22} {:<22}",
        "member", "id", "state", "vnodes", "rtt_ms", "http", "cluster"
    );
    for m in s["members"].as_array().into_iter().flatten() {
        let rtt = m["heartbeat_rtt_ms"]
            .as_f64()
            .map_or("-".to_owned(), |r| format!("{r:.2}"));
        let _ = writeln!(
            out,
            "{:<12} {:<4} {:<8} {:>6} {:>8}  {:<22} {:<22}",
            m["name"].as_str().unwrap_or("?"),
            m["id"].to_string(),
            m["state"].as_str().unwrap_or("?"),
            m["vnodes"].to_string(),
            rtt,
            m["http_addr"].as_str().unwrap_or(""),
            m["cluster_addr"].as_str().unwrap_or(""),
        );
    }
    let moves = s["moves_in_progress"].as_array().map_or(0, Vec::len);
    let _ = writeln!(out, "moves in progress: {moves}");
    for mv in s["moves_in_progress"]
        .as_array()
        .into_iter()
        .flatten()
        .take(10)
    {
        let _ = writeln!(
            out,
            "  vnode {} {} -> {} ({} ms)",
            mv["vnode"], mv["from"], mv["to"], mv["age_ms"]
        );
    }
    out
}
