//! The cluster's background loops: following the ring map, getting admitted, and (on the Raft
//! leader) bootstrapping, failure decisions and rebalancing.

use super::control::{ControlCommand, ControlResponse, ControlState, MemberSpec};
use super::node::Cluster;
use super::wire::{PeerReply, PeerRequest};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const MAP_POLL: Duration = Duration::from_millis(100);
const LEAD_PERIOD: Duration = Duration::from_millis(250);

/// Seeds: every state the local Raft applies becomes this node's map.
pub(super) async fn follow_raft(
    cluster: Arc<Cluster>,
    mut states: watch::Receiver<Arc<ControlState>>,
) {
    loop {
        let state = states.borrow_and_update().clone();
        if state.is_bootstrapped() {
            cluster.take_map(state);
        }
        if let Some(plane) = &cluster.control {
            *cluster.raft_view_mut() = (plane.leader(), plane.term(), plane.commit_index());
        }
        if states.changed().await.is_err() {
            return;
        }
    }
}

/// Everyone: ask a seed for a newer map a few times a second (seeds also keep their Raft
/// view fresh here: leader and term change without a new state).
pub(super) async fn poll_map(cluster: Arc<Cluster>) {
    loop {
        refresh_map(&cluster).await;
        tokio::time::sleep(MAP_POLL).await;
    }
}

/// Fetches a newer map if a seed has one.
pub(super) async fn refresh_map(cluster: &Arc<Cluster>) {
    if let Some(plane) = &cluster.control {
        *cluster.raft_view_mut() = (plane.leader(), plane.term(), plane.commit_index());
        let state = plane.state();
        if state.is_bootstrapped() {
            cluster.take_map(state);
        }
        return;
    }
    let have = cluster.map().map_or(0, |m| m.version);
    let mut targets: Vec<String> = cluster.raft_view_mut().0.clone().into_iter().collect();
    targets.extend(cluster.seeds.iter().map(|(n, _)| n.clone()));
    targets.dedup();
    for target in targets {
        let call = cluster.transport.call(
            &target,
            &PeerRequest::GetMap { have },
            Duration::from_secs(1),
        );
        if let Ok(PeerReply::Map {
            state,
            leader,
            term,
            commit_index,
        }) = call.await
        {
            *cluster.raft_view_mut() = (leader, term, commit_index);
            if let Some(state) = state {
                if state.is_bootstrapped() {
                    cluster.take_map(Arc::new(*state));
                }
            }
            return;
        }
    }
}

/// Gets this node admitted (or, after a restart, its addresses refreshed; a known name is not
/// a join and moves nothing). Retries until the map shows this node as it is configured.
pub(super) async fn join(cluster: Arc<Cluster>) {
    loop {
        if cluster.is_admitted() {
            tracing::info!(node = cluster.name(), "admitted to the cluster");
            return;
        }
        match cluster
            .propose(ControlCommand::Join(cluster.spec.clone()))
            .await
        {
            Ok(ControlResponse::Member(id)) => {
                tracing::info!(node = cluster.name(), member = id, "join accepted");
                refresh_map(&cluster).await;
            }
            Ok(other) => tracing::warn!(?other, "join refused"),
            Err(e) => tracing::debug!(error = %e, "join: no leader yet"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Seeds: while this node leads the Raft group, bootstrap the ring, turn heartbeat verdicts
/// into committed up/down decisions, and start or abort moves as the planner says.
pub(super) async fn lead(cluster: Arc<Cluster>) {
    let Some(plane) = cluster.control.clone() else {
        return;
    };
    let mut states = plane.subscribe();
    loop {
        // Every applied change (a commit frees a move slot) or a tick, whichever first.
        let _ = tokio::time::timeout(LEAD_PERIOD, states.changed()).await;
        if !plane.is_leader().await {
            continue;
        }
        let state = plane.state();
        let mut commands = Vec::new();
        if !state.is_bootstrapped() {
            let members = cluster
                .seeds
                .iter()
                .map(|(name, addr)| MemberSpec {
                    name: name.clone(),
                    http_addr: String::new(),
                    cluster_addr: addr.clone(),
                    incarnation: 0,
                    storage_id: 0,
                })
                .collect();
            commands.push(ControlCommand::Bootstrap {
                vnodes: cluster.config.vnodes,
                members,
            });
        } else {
            let health = cluster.transport.health();
            for m in state.members.values() {
                if m.spec.name == cluster.name() {
                    continue;
                }
                if let Some(h) = health.iter().find(|h| h.name == m.spec.name) {
                    if h.down != m.down {
                        commands.push(ControlCommand::SetDown {
                            member: m.id,
                            down: h.down,
                        });
                    }
                }
            }
            commands.extend(state.rebalance(
                cluster.now_ms(),
                cluster.config.max_moves,
                cluster.config.move_timeout_ms,
            ));
        }
        for cmd in commands {
            match plane.propose(cmd.clone()).await {
                Ok(ControlResponse::Rejected(why)) => {
                    tracing::debug!(?cmd, why, "control command rejected")
                }
                Ok(_) => tracing::info!(?cmd, "control command committed"),
                Err(e) => {
                    tracing::debug!(error = %e, "lost leadership while proposing");
                    break;
                }
            }
        }
    }
}
