//! API requests that span the cluster: orders are coordinated by the owner of their order id's
//! vnode (so an order id means one record, wherever the request lands), and a SKU's
//! warehouses are gathered from every owner.

use super::handoff::Access;
use super::node::Cluster;
use super::ring::{vnode_of_key, vnode_of_name};
use super::wire::{PeerReply, PeerRequest};
use crate::domain::StockKey;
use crate::persistence::Request;
use std::sync::Arc;
use std::time::Duration;

/// Marks a request that another node forwarded here: it is served here or refused, never
/// forwarded again (no loops while maps disagree).
pub const FORWARDED_HEADER: &str = "x-stockring-forwarded";

pub enum OrderRoute {
    /// Served here, inside the order vnode's gate (a handoff waits for it).
    Here(super::ring::Vnode),
    Remote(String),
    Unavailable(&'static str),
}

impl Cluster {
    /// Enters a vnode's gate if this node owns the vnode, as seen after the entry (None while
    /// it is being handed over, or once it has moved away).
    pub fn enter_gate(&self, vnode: super::ring::Vnode) -> Option<super::gates::Guard<'_>> {
        self.enter_owned(vnode).ok()
    }

    pub fn order_route(&self, order_id: &str) -> OrderRoute {
        let Some(map) = self.map() else {
            return OrderRoute::Unavailable("no ring map yet");
        };
        let v = vnode_of_name(order_id, map.vnodes);
        let access = self
            .ownership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .access(v);
        match access {
            Access::Local { .. } => OrderRoute::Here(v),
            Access::Remote { owner, .. } => match map.members.get(&owner) {
                Some(m) => OrderRoute::Remote(m.spec.name.clone()),
                None => OrderRoute::Unavailable("owner unknown"),
            },
            Access::Fenced => OrderRoute::Unavailable("vnode moving"),
            Access::Unknown => OrderRoute::Unavailable("no ring map yet"),
        }
    }

    /// Sends an API request to `peer`; its answer, as (status, JSON body).
    pub async fn forward_http(
        &self,
        peer: &str,
        method: String,
        path: String,
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), String> {
        metrics::counter!("stockring_forwarded_total").increment(1);
        let req = PeerRequest::Http { method, path, body };
        match self
            .transport
            .call(peer, &req, Duration::from_secs(10))
            .await
        {
            Ok(PeerReply::Http { status, body }) => Ok((status, body)),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Every warehouse with state for `sku`, gathered from every member holding vnodes.
    pub async fn warehouses(self: &Arc<Self>, sku: &str) -> Result<Vec<String>, String> {
        let Some(map) = self.map() else {
            return Err("no ring map yet".into());
        };
        let asks = map
            .members
            .values()
            .filter(|m| map.owned_by(m.id) > 0)
            .map(|m| {
                let me = self.clone();
                let name = m.spec.name.clone();
                let sku = sku.to_owned();
                async move {
                    if name == me.name() {
                        return Ok(local_warehouses(&me, &sku).await);
                    }
                    let req = PeerRequest::Warehouses { sku };
                    match me.transport.call(&name, &req, Duration::from_secs(3)).await {
                        Ok(PeerReply::Warehouses(w)) => Ok(w),
                        Ok(other) => Err(format!("{name}: unexpected {other:?}")),
                        Err(e) => Err(e.to_string()),
                    }
                }
            });
        let mut all: Vec<String> = futures::future::try_join_all(asks)
            .await?
            .into_iter()
            .flatten()
            .collect();
        all.sort();
        all.dedup();
        Ok(all)
    }
}

/// The warehouses of `sku` whose keys this node owns now (stale copies of keys it handed
/// away stay on disk but are not reported).
pub(super) async fn local_warehouses(cluster: &Arc<Cluster>, sku: &str) -> Vec<String> {
    let Some(map) = cluster.map() else {
        return Vec::new();
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let asked = Request::ListWarehouses {
        sku: sku.to_owned(),
        reply: Box::new(move |r| {
            let _ = tx.send(r);
        }),
    };
    if cluster.node.writer().submit(asked).await.is_err() {
        return Vec::new();
    }
    let Ok(Ok(found)) = rx.await else {
        return Vec::new();
    };
    let (Ok(sku_id), me) = (
        crate::domain::Sku::parse(sku),
        cluster
            .ownership
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .me(),
    ) else {
        return Vec::new();
    };
    found
        .into_iter()
        .filter(|w| {
            crate::domain::WarehouseId::parse(w).is_ok_and(|wh| {
                let key = StockKey::new(sku_id.clone(), wh);
                map.owner_of(vnode_of_key(&key, map.vnodes))
                    .is_some_and(|e| e.owner == me)
            })
        })
        .collect()
}

/// An API request forwarded by another node, run through this node's own router.
pub(super) async fn serve_forwarded(
    cluster: &Arc<Cluster>,
    method: String,
    path: String,
    body: Vec<u8>,
) -> PeerReply {
    use tower::ServiceExt;
    let Some(router) = cluster.http.get().cloned() else {
        return PeerReply::Error("node starting".into());
    };
    let request = axum::http::Request::builder()
        .method(method.as_str())
        .uri(path)
        .header("content-type", "application/json")
        .header(FORWARDED_HEADER, cluster.name())
        .body(axum::body::Body::from(body));
    let Ok(request) = request else {
        return PeerReply::Error("bad forwarded request".into());
    };
    let Ok(response) = router.oneshot(request).await;
    let status = response.status().as_u16();
    match axum::body::to_bytes(response.into_body(), crate::limits::MAX_BODY_BYTES * 4).await {
        Ok(bytes) => PeerReply::Http {
            status,
            body: bytes.to_vec(),
        },
        Err(e) => PeerReply::Error(e.to_string()),
    }
}
