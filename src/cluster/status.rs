//! What an operator sees: `GET /v1/cluster` (and `stockring cluster status`) and the
//! cluster metrics.

use super::control::{ControlState, MemberState};
use super::node::Cluster;
use super::MemberId;
use serde_json::{json, Value};

pub(super) fn record_map_metrics(cluster: &Cluster, map: &ControlState, me: MemberId) {
    metrics::gauge!("stockring_ring_version").set(map.version as f64);
    metrics::gauge!("stockring_vnodes_owned").set(map.owned_by(me) as f64);
    metrics::gauge!("stockring_moves_in_progress").set(map.moves.len() as f64);
    for state in ["joining", "up", "leaving", "left", "down"] {
        let n = map
            .members
            .values()
            .filter(|m| member_state(m.state, m.down) == state)
            .count();
        metrics::gauge!("stockring_members", "state" => state).set(n as f64);
    }
    let (_, term, commit) = cluster.raft_view_mut().clone();
    metrics::gauge!("stockring_raft_term").set(term as f64);
    metrics::gauge!("stockring_raft_commit_index").set(commit as f64);
}

/// A member's state as operators read it: down (by heartbeat, as committed by the leader)
/// overrides the membership state.
fn member_state(state: MemberState, down: bool) -> &'static str {
    if down && state != MemberState::Left {
        "down"
    } else {
        state.as_str()
    }
}

impl Cluster {
    pub fn status(&self) -> Value {
        let (leader, term, commit) = self.raft_view_mut().clone();
        let health = self.transport.health();
        let Some(map) = self.map() else {
            return json!({
                "node": self.name(),
                "ready": false,
                "raft": { "leader": leader, "term": term, "commit_index": commit },
                "peers": health.iter().map(|h| json!({
                    "name": h.name, "addr": h.addr, "connected": h.connected, "down": h.down,
                })).collect::<Vec<_>>(),
            });
        };
        let now = self.now_ms();
        let members: Vec<Value> = map
            .members
            .values()
            .map(|m| {
                let h = health.iter().find(|h| h.name == m.spec.name);
                let local_down = if m.spec.name == self.name() {
                    false
                } else {
                    h.is_none_or(|h| h.down)
                };
                json!({
                    "id": m.id,
                    "name": m.spec.name,
                    "state": member_state(m.state, m.down),
                    "membership": m.state.as_str(),
                    "down_committed": m.down,
                    "down_seen_here": local_down,
                    "http_addr": m.spec.http_addr,
                    "cluster_addr": m.spec.cluster_addr,
                    "vnodes": map.owned_by(m.id),
                    "heartbeat_rtt_ms": h.and_then(|h| h.rtt_ms),
                    "missed_heartbeats": h.map(|h| h.missed),
                })
            })
            .collect();
        let moves: Vec<Value> = map
            .moves
            .values()
            .map(|mv| {
                json!({
                    "id": mv.id,
                    "vnode": mv.vnode,
                    "from": map.members.get(&mv.from).map(|m| m.spec.name.clone()),
                    "to": map.members.get(&mv.to).map(|m| m.spec.name.clone()),
                    "epoch": mv.epoch,
                    "age_ms": now.saturating_sub(mv.started_ms),
                })
            })
            .collect();
        json!({
            "node": self.name(),
            "ready": self.has_map(),
            "map_version": map.version,
            "vnodes": map.vnodes,
            "raft": { "leader": leader, "term": term, "commit_index": commit },
            "members": members,
            "moves_in_progress": moves,
            "fences_held": self.ownership.read().unwrap_or_else(|p| p.into_inner()).fences().count(),
            "uptime_ms": self.started.elapsed().as_millis() as u64,
        })
    }
}
