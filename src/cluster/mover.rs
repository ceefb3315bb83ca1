//! The shell of a handoff (the protocol itself is `handoff.rs`): the target side pulls pages
//! from the source and stores them, then proposes the commit; the source side answers those
//! pulls, and on the last one fences the vnode, drains it and persists the fence first.

use super::control::{ControlCommand, ControlResponse, Move};
use super::handoff::{Effect, ExportDecision, ExportRequest, Phase};
use super::node::{done_channel, Cluster};
use super::ring::{stored_hash_range, vnode_of_hash};
use super::wire::{PeerReply, PeerRequest};
use crate::persistence::{ExportCursor, ExportPage, ExportPass, Request, StorageError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Incoming moves worked on at once by one node.
const PARALLEL_MOVES: usize = 8;
const EXPORT_TIMEOUT: Duration = Duration::from_secs(20);

/// Target side: runs the receiver's effects as they become due.
pub(super) async fn drive(cluster: Arc<Cluster>) {
    let mut changed = cluster.map_changed.subscribe();
    loop {
        let now = cluster.now_ms();
        let effects = lock(&cluster.receiver).poll(now, PARALLEL_MOVES);
        metrics::gauge!("stockring_handoffs_in_flight")
            .set(lock(&cluster.receiver).in_flight() as f64);
        for effect in effects {
            let c = cluster.clone();
            tokio::spawn(async move {
                let (id, phase, result) = match effect {
                    Effect::Export(req) => {
                        let phase = if req.last { Phase::Last } else { Phase::Copy };
                        (req.mv.id, phase, pull(&c, req).await)
                    }
                    Effect::ProposeCommit(mv) => (mv.id, Phase::Commit, commit(&c, mv).await),
                };
                let now = c.now_ms();
                match result {
                    Ok(()) => lock(&c.receiver).on_done(id, phase, now),
                    Err(e) => {
                        tracing::info!(move_id = id, ?phase, error = %e, "handoff step failed; will retry");
                        lock(&c.receiver).on_failed(id, phase, now);
                    }
                }
                c.map_changed.send_modify(|v| *v += 1);
            });
        }
        let _ = tokio::time::timeout(Duration::from_millis(50), changed.changed()).await;
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Pulls every page of one export from the source and stores each durably.
async fn pull(cluster: &Arc<Cluster>, req: ExportRequest) -> Result<(), String> {
    let mv = req.mv;
    let source = cluster
        .map()
        .and_then(|m| m.members.get(&mv.from).map(|m| m.spec.name.clone()))
        .ok_or("source unknown")?;
    let since = if req.last {
        lock(&cluster.copy_marks).get(&mv.id).copied().unwrap_or(0)
    } else {
        0
    };
    let started = Instant::now();
    let mut first_mark = None;
    let mut keys = 0usize;
    for pass in [ExportPass::Keys, ExportPass::Segments, ExportPass::Orders] {
        keys += pull_pass(cluster, &source, req, pass, since, &mut first_mark).await?;
    }
    if !req.last {
        lock(&cluster.copy_marks).insert(mv.id, first_mark.unwrap_or(0));
    }
    metrics::counter!("stockring_handoff_keys_total").increment(keys as u64);
    tracing::info!(
        vnode = mv.vnode,
        move_id = mv.id,
        last = req.last,
        keys,
        ms = started.elapsed().as_millis() as u64,
        "handoff pages stored"
    );
    Ok(())
}

/// All pages of one pass of an export; returns how many items it stored.
async fn pull_pass(
    cluster: &Arc<Cluster>,
    source: &str,
    req: ExportRequest,
    pass: ExportPass,
    since: i64,
    first_mark: &mut Option<i64>,
) -> Result<usize, String> {
    let mv = req.mv;
    let mut after: Option<ExportCursor> = None;
    let mut stored = 0usize;
    loop {
        let ask = PeerRequest::Export {
            mv,
            last: req.last,
            pass,
            since,
            after: after.clone(),
            max_bytes: cluster.config.handoff_page_bytes,
        };
        let reply = cluster
            .transport
            .call(source, &ask, EXPORT_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let (images, segments, order_images, next, changed_upto) = match reply {
            PeerReply::ExportPage {
                images,
                segments,
                orders,
                next,
                changed_upto,
            } => (images, segments, orders, next, changed_upto),
            PeerReply::ExportRefused => return Err("source refused the export".into()),
            other => return Err(format!("unexpected answer {other:?}")),
        };
        first_mark.get_or_insert(changed_upto);
        let phase = if req.last { Phase::Last } else { Phase::Copy };
        if lock(&cluster.receiver).phase_of(mv.id) != Some(phase) || cluster.owns_now(mv.vnode) {
            return Err("the move is no longer current here; page dropped".into());
        }
        stored += images.len() + segments.len() + order_images.len();
        if !images.is_empty() || !segments.is_empty() || !order_images.is_empty() {
            let (done, rx) = done_channel();
            let import = Request::Import {
                images,
                segments,
                orders: order_images,
                done,
            };
            cluster
                .node
                .writer()
                .submit(import)
                .await
                .map_err(|e| e.to_string())?;
            rx.await
                .map_err(|_| "writer stopped".to_string())?
                .map_err(|e| e.to_string())?;
        }
        match next {
            Some(cursor) => after = Some(cursor),
            None => return Ok(stored),
        }
    }
}

async fn commit(cluster: &Arc<Cluster>, mv: Move) -> Result<(), String> {
    let cmd = ControlCommand::CommitMove {
        vnode: mv.vnode,
        move_id: mv.id,
        by: Some(mv.to),
    };
    match cluster.propose(cmd).await? {
        ControlResponse::Rejected(why) => {
            tracing::info!(
                move_id = mv.id,
                why,
                "commit refused (the move was resolved)"
            );
        }
        _ => {
            metrics::counter!("stockring_handoffs_total").increment(1);
            tracing::info!(vnode = mv.vnode, move_id = mv.id, "vnode moved here");
        }
    }
    lock(&cluster.copy_marks).remove(&mv.id);
    super::loops::refresh_map(cluster).await;
    Ok(())
}

/// Source side: one page of an export, fencing first when it is the last phase.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve_export(
    cluster: &Arc<Cluster>,
    mv: Move,
    last: bool,
    pass: ExportPass,
    since: i64,
    after: Option<ExportCursor>,
    max_bytes: usize,
) -> PeerReply {
    let decision = {
        let mut o = cluster.ownership.write().unwrap_or_else(|p| p.into_inner());
        let d = o.on_export_request(&ExportRequest { mv, last });
        if let ExportDecision::FenceThenExport(f) = d {
            // Closed under the same lock that recorded the fence: no new local write can
            // start on this vnode from here on.
            cluster.gates.close(f.vnode);
        }
        d
    };
    let Some(map) = cluster.map() else {
        return PeerReply::ExportRefused;
    };
    match decision {
        ExportDecision::Refuse => return PeerReply::ExportRefused,
        ExportDecision::Copy => {}
        ExportDecision::FenceThenExport(f) => {
            if let Err(e) = fence(cluster, f, mv.from, map.vnodes).await {
                return PeerReply::Error(e.to_string());
            }
        }
    }
    let range = stored_hash_range(mv.vnode, map.vnodes);
    let (tx, rx) = oneshot::channel();
    let reply = Box::new(move |r: Result<ExportPage, StorageError>| {
        let _ = tx.send(r);
    });
    let asked = Request::Export {
        range,
        pass,
        since,
        after,
        max_bytes: max_bytes.min(cluster.config.handoff_page_bytes),
        reply,
    };
    if let Err(e) = cluster.node.writer().submit(asked).await {
        return PeerReply::Error(e.to_string());
    }
    match rx.await {
        Ok(Ok(page)) => PeerReply::ExportPage {
            images: page.images,
            segments: page.segments,
            orders: page.orders,
            next: page.next,
            changed_upto: page.changed_upto,
        },
        Ok(Err(e)) => PeerReply::Error(e.to_string()),
        Err(_) => PeerReply::Error("writer stopped".into()),
    }
}

/// Waits for every local operation on the vnode to finish (their replies leave only once
/// durable), passivates the vnode's actors (none may keep state behind), and persists the
/// fence. Only then may the last export be answered.
///
/// The fence belongs to its move: at every step it checks, under the ownership lock, that
/// this node still holds exactly this fence. If the move was resolved meanwhile (aborted: the
/// fence lifted, the gate reopened) or another move fenced the vnode, it stops: no more
/// passivating a vnode that serves again, and no late write of a fence that would stand on
/// disk for a move that is gone (or, before the conditional write below, in place of the
/// newer move's fence, which a restarted source would then lift while its target commits).
async fn fence(
    cluster: &Arc<Cluster>,
    f: super::handoff::Fence,
    from: super::MemberId,
    vnodes: u32,
) -> Result<(), FenceError> {
    if lock(&cluster.durable_fences).contains(&(f.vnode, f.move_id)) {
        return Ok(()); // a later page of the same last phase
    }
    let current = || {
        cluster
            .ownership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .holds_fence(&f)
    };
    while !cluster.gates.is_drained(f.vnode) {
        if !current() {
            return Err(FenceError::Resolved);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let directory = cluster.node.directory().clone();
    // Until no actor of the vnode is left, active or stopping: a stopping actor's queued
    // message (whose caller may have gone away, releasing its gate guard) re-activates one.
    while directory.passivate_matching(|h| vnode_of_hash(h, vnodes) == f.vnode) > 0 {
        if !current() {
            return Err(FenceError::Resolved);
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rx = loop {
        // Queued under the lock that lifting a fence takes too (`Cluster::take_map` queues
        // its `DeleteFence` there): the writer sees the two in the order they happened.
        let queued = {
            let o = cluster.ownership.read().unwrap_or_else(|p| p.into_inner());
            if !o.holds_fence(&f) {
                return Err(FenceError::Resolved);
            }
            let (done, rx) = done_channel();
            let put = Request::PutFence {
                fence: (f.vnode, f.move_id, f.epoch, f.begun_at),
                done,
            };
            cluster.node.writer().try_submit(put).map(|()| rx)
        };
        match queued {
            Ok(rx) => break rx,
            // The writer's queue is full: try again shortly.
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    };
    rx.await
        .map_err(|_| StorageError::WriterStopped)?
        .map_err(FenceError::Storage)?;
    if !current() {
        // Lifted while it was being written: the lift's delete follows it on disk.
        return Err(FenceError::Resolved);
    }
    // The control plane records the fence: the target's commit is refused before it.
    let fenced = ControlCommand::MoveFenced {
        vnode: f.vnode,
        move_id: f.move_id,
        by: from,
    };
    match cluster.propose(fenced).await.map_err(FenceError::Control)? {
        ControlResponse::Rejected(why) if why != "unchanged" => {
            return Err(FenceError::Control(why));
        }
        _ => {}
    }
    if !current() {
        return Err(FenceError::Resolved);
    }
    lock(&cluster.durable_fences).insert((f.vnode, f.move_id));
    tracing::info!(
        vnode = f.vnode,
        move_id = f.move_id,
        "vnode fenced for handoff"
    );
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum FenceError {
    #[error("the move was resolved while its fence was being set")]
    Resolved,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the control plane did not record the fence: {0}")]
    Control(String),
}
