//! Node-to-node transport on `ractor_cluster`, hardened as notes/ractor-cluster.md §6 asks:
//! - one remotable actor per node, the gateway (process group `stockring.gw.<name>`); stock
//!   actors are never remotable (each remotable actor is mirrored on every peer);
//! - our own dial loop over the known peers, with a connect timeout and backoff (ractor_cluster
//!   neither reconnects nor times out a connect);
//! - an application heartbeat: a peer that misses `down_after_missed` pings in a row is down
//!   (ractor_cluster never notices a frozen peer: its TCP session stays up);
//! - caps: requests in flight per peer, and message size, checked before sending (one frame
//!   above the receiver's limit would tear down the whole session);
//! - the gateway is looked up again in the process group on every call, so a reconnect (which
//!   gives remote actors new ids) needs no cache invalidation.
//!
//! Everything above it sees only the `Transport` trait, so tests and the simulation can swap
//! it for something in memory.

use super::wire::{self, PeerReply, PeerRequest};
use futures::future::BoxFuture;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::{NodeServer, NodeServerMessage, RactorClusterMessage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("peer {0} is not connected")]
    Unreachable(String),
    #[error("peer {0} did not answer in time")]
    Timeout(String),
    #[error("message of {0} bytes is over the cluster's limit")]
    TooLarge(usize),
    #[error("too many requests in flight to {0}")]
    Overloaded(String),
    #[error("peer answered something unreadable")]
    BadReply,
}

/// Requests from other nodes, as the node shell handles them.
pub trait Inbound: Send + Sync + 'static {
    fn handle(&self, req: PeerRequest) -> BoxFuture<'static, PeerReply>;
}

pub trait Transport: Send + Sync + 'static {
    fn call(
        &self,
        peer: &str,
        req: &PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<PeerReply, TransportError>>;
    /// Adds (or re-addresses) a peer to dial and watch.
    fn add_peer(&self, name: &str, addr: &str);
    fn health(&self) -> Vec<PeerHealth>;
    /// The peer missed enough heartbeats in a row to be considered down (by this node).
    fn is_down(&self, peer: &str) -> bool;
}

#[derive(Clone, Debug)]
pub struct PeerHealth {
    pub name: String,
    pub addr: String,
    pub connected: bool,
    /// Missed heartbeats in a row; `down` once it reaches the configured limit.
    pub missed: u32,
    pub down: bool,
    pub rtt_ms: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub name: String,
    /// `ip:port` to listen on; also the address peers dial.
    pub addr: String,
    pub cookie: String,
    pub heartbeat: Duration,
    pub down_after_missed: u32,
    pub max_in_flight_per_peer: usize,
    pub max_message_bytes: usize,
}

#[derive(RactorClusterMessage)]
pub enum GatewayMsg {
    #[rpc]
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

struct Gateway;

type InboundSlot = Arc<OnceLock<Arc<dyn Inbound>>>;

impl Actor for Gateway {
    type Msg = GatewayMsg;
    type State = (InboundSlot, usize);
    type Arguments = (InboundSlot, usize);

    async fn pre_start(
        &self,
        _: ActorRef<GatewayMsg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<GatewayMsg>,
        msg: GatewayMsg,
        (inbound, max_bytes): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let GatewayMsg::Call(bytes, reply) = msg;
        let inbound = inbound.get().cloned();
        let max_bytes = *max_bytes;
        // The gateway never waits: each request runs on its own task, so one slow handoff
        // page does not hold up forwarded reservations behind it.
        tokio::spawn(async move {
            let answer = match (inbound, wire::decode::<PeerRequest>(&bytes)) {
                (Some(inbound), Ok(req)) => inbound.handle(req).await,
                (None, _) => PeerReply::Error("node starting".into()),
                (_, Err(e)) => PeerReply::Error(e.to_string()),
            };
            let mut out = wire::encode(&answer);
            if out.len() > max_bytes {
                out = wire::encode(&PeerReply::Error("reply over the size limit".into()));
            }
            let _ = reply.send(out);
        });
        Ok(())
    }
}

fn group_of(name: &str) -> String {
    format!("stockring.gw.{name}")
}

struct Peer {
    addr: String,
    permits: Arc<Semaphore>,
    missed: u32,
    rtt_ms: Option<f64>,
    next_dial: Instant,
    dial_failures: u32,
}

pub struct RactorTransport {
    config: TransportConfig,
    node_server: ActorRef<NodeServerMessage>,
    peers: Mutex<HashMap<String, Peer>>,
    inbound: InboundSlot,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RactorTransport {
    pub async fn start(config: TransportConfig) -> anyhow::Result<Arc<Self>> {
        let addr: std::net::SocketAddr = config.addr.parse()?;
        let server = NodeServer::new(
            addr.port(),
            config.cookie.clone(),
            config.name.clone(),
            addr.ip().to_string(),
            None,
            None,
        )
        .with_listen_addr(addr.ip())
        .with_max_inbound_frame_size(2 * config.max_message_bytes as u64 + 4096);
        let (node_server, _) = Actor::spawn(None, server, ()).await?;
        let inbound: InboundSlot = Arc::default();
        let (gateway, _) =
            Actor::spawn(None, Gateway, (inbound.clone(), config.max_message_bytes)).await?;
        ractor::pg::join(group_of(&config.name), vec![gateway.get_cell()]);
        let transport = Arc::new(Self {
            config,
            node_server,
            peers: Mutex::default(),
            inbound,
        });
        tokio::spawn(dial_loop(Arc::downgrade(&transport)));
        tokio::spawn(heartbeat_loop(Arc::downgrade(&transport)));
        Ok(transport)
    }

    pub fn set_inbound(&self, inbound: Arc<dyn Inbound>) {
        let _ = self.inbound.set(inbound);
    }

    fn gateway_of(name: &str) -> Option<ActorRef<GatewayMsg>> {
        ractor::pg::get_members(&group_of(name))
            .into_iter()
            .find(|cell| !cell.get_id().is_local())
            .map(ActorRef::from)
    }

    fn record_ping(&self, name: &str, rtt: Option<Duration>) {
        let mut peers = lock(&self.peers);
        let Some(p) = peers.get_mut(name) else {
            return;
        };
        match rtt {
            Some(rtt) => {
                if p.missed >= self.config.down_after_missed {
                    tracing::info!(peer = name, "peer answers heartbeats again: up");
                }
                p.missed = 0;
                let ms = rtt.as_secs_f64() * 1e3;
                p.rtt_ms = Some(ms);
                metrics::histogram!("stockring_heartbeat_rtt_seconds").record(rtt.as_secs_f64());
            }
            None => {
                p.missed = p.missed.saturating_add(1);
                if p.missed == self.config.down_after_missed {
                    tracing::warn!(
                        peer = name,
                        missed = p.missed,
                        "peer missed heartbeats: down"
                    );
                }
            }
        }
    }
}

impl Transport for RactorTransport {
    fn call(
        &self,
        peer: &str,
        req: &PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<PeerReply, TransportError>> {
        let bytes = wire::encode(req);
        let peer = peer.to_owned();
        let too_large = bytes.len() > self.config.max_message_bytes;
        let is_ping = matches!(req, PeerRequest::Ping { .. });
        let permits = lock(&self.peers).get(&peer).map(|p| p.permits.clone());
        Box::pin(async move {
            if too_large {
                return Err(TransportError::TooLarge(bytes.len()));
            }
            let permits = permits.ok_or_else(|| TransportError::Unreachable(peer.clone()))?;
            // Heartbeats never wait for a permit: a busy peer is not a down peer.
            let _permit = match is_ping {
                true => None,
                false => Some(
                    permits
                        .try_acquire_owned()
                        .map_err(|_| TransportError::Overloaded(peer.clone()))?,
                ),
            };
            let gw =
                Self::gateway_of(&peer).ok_or_else(|| TransportError::Unreachable(peer.clone()))?;
            match gw
                .call(|reply| GatewayMsg::Call(bytes, reply), Some(timeout))
                .await
            {
                Ok(ractor::rpc::CallResult::Success(out)) => {
                    wire::decode(&out).map_err(|_| TransportError::BadReply)
                }
                // Timeout and SenderError both mean: unknown whether it ran (see the notes §3.3).
                Ok(_) => Err(TransportError::Timeout(peer)),
                Err(_) => Err(TransportError::Unreachable(peer)),
            }
        })
    }

    fn add_peer(&self, name: &str, addr: &str) {
        if name == self.config.name {
            return;
        }
        let mut peers = lock(&self.peers);
        let cap = self.config.max_in_flight_per_peer;
        let entry = peers.entry(name.to_owned()).or_insert_with(|| Peer {
            addr: addr.to_owned(),
            permits: Arc::new(Semaphore::new(cap)),
            missed: 0,
            rtt_ms: None,
            next_dial: Instant::now(),
            dial_failures: 0,
        });
        if entry.addr != addr {
            entry.addr = addr.to_owned();
            entry.next_dial = Instant::now();
        }
    }

    fn is_down(&self, peer: &str) -> bool {
        lock(&self.peers)
            .get(peer)
            .is_some_and(|p| p.missed >= self.config.down_after_missed)
    }

    fn health(&self) -> Vec<PeerHealth> {
        let mut out: Vec<PeerHealth> = lock(&self.peers)
            .iter()
            .map(|(name, p)| PeerHealth {
                name: name.clone(),
                addr: p.addr.clone(),
                connected: Self::gateway_of(name).is_some(),
                missed: p.missed,
                down: p.missed >= self.config.down_after_missed,
                rtt_ms: p.rtt_ms,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// Dials every known peer that has no session, with a connect timeout and exponential backoff.
async fn dial_loop(transport: std::sync::Weak<RactorTransport>) {
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Some(t) = transport.upgrade() else {
            return;
        };
        let now = Instant::now();
        let due: Vec<(String, String)> = lock(&t.peers)
            .iter()
            .filter(|(name, p)| p.next_dial <= now && RactorTransport::gateway_of(name).is_none())
            .map(|(name, p)| (name.clone(), p.addr.clone()))
            .collect();
        for (name, addr) in due {
            let dialed = tokio::time::timeout(
                Duration::from_secs(1),
                ractor_cluster::client_connect(&t.node_server, addr.as_str()),
            )
            .await;
            let ok = matches!(dialed, Ok(Ok(())));
            let mut peers = lock(&t.peers);
            if let Some(p) = peers.get_mut(&name) {
                if ok {
                    // The handshake finishes asynchronously; do not dial again meanwhile.
                    p.dial_failures = 0;
                    p.next_dial = Instant::now() + Duration::from_secs(2);
                } else {
                    p.dial_failures = p.dial_failures.saturating_add(1);
                    let backoff = 100u64 << p.dial_failures.min(5);
                    p.next_dial = Instant::now() + Duration::from_millis(backoff.min(3_000));
                }
            }
        }
    }
}

async fn heartbeat_loop(transport: std::sync::Weak<RactorTransport>) {
    loop {
        let Some(t) = transport.upgrade() else {
            return;
        };
        let period = t.config.heartbeat;
        let names: Vec<String> = lock(&t.peers).keys().cloned().collect();
        let me = t.config.name.clone();
        let pings: Vec<_> = names
            .into_iter()
            .map(|name| {
                let t = t.clone();
                let me = me.clone();
                async move {
                    let started = Instant::now();
                    let ok = matches!(
                        t.call(&name, &PeerRequest::Ping { from: me }, period).await,
                        Ok(PeerReply::Pong)
                    );
                    t.record_ping(&name, ok.then(|| started.elapsed()));
                }
            })
            .collect();
        drop(t);
        let round = futures::future::join_all(pings);
        let _ = tokio::join!(round, tokio::time::sleep(period));
    }
}
