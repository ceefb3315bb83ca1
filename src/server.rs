//! Wiring a node: data-dir lock, SQLite, the writer thread, the router, the order coordinator,
//! recovery and the HTTP server; and an orderly shutdown (stop taking requests, finish the ones
//! in flight, snapshot every active key, drain the writer).

use crate::actors::clock::{self, NodeClock, SystemWall, Wall};
use crate::actors::order::OrderCoordinator;
use crate::actors::router::{Directory, Router, RouterConfig, RouterMsg};
use crate::actors::stock::StockEnv;
use crate::actors::{Admission, Node};
use crate::api::{self, AppState, Services};
use crate::cluster::handoff::Fence;
use crate::cluster::http::OrderRoute;
use crate::cluster::node::Cluster;
use crate::cluster::transport::{RactorTransport, TransportConfig};
use crate::config::Config;
use crate::persistence::backup::DataDirLock;
use crate::persistence::{store, Writer};
use anyhow::Context;
use ractor::Actor;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// A node that is serving. Drop does not stop it; call `stop`.
pub struct RunningServer {
    pub http_addr: SocketAddr,
    pub node: Node,
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Stops taking requests, drains, and returns once the writer has flushed everything.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        self.task.await.context("server task")?
    }

    /// Serves until `signal` fires (then drains) or the node stops by itself (it left the
    /// cluster, or failed).
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            _ = signal => {
                tracing::info!("shutdown requested; draining");
                let _ = self.shutdown.send(());
                self.task.await.context("server task")?
            }
            done = &mut self.task => done.context("server task")?,
        }
    }

    /// Waits until the server stops by itself (it does not, short of an error).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task")?
    }
}

/// Starts a node; returns once the HTTP port is bound. Recovery continues in the background
/// and `/ready` turns 200 when it has finished.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    start_with_wall(config, Arc::new(SystemWall)).await
}

/// `start`, with wall time read from `wall` (tests step it).
pub async fn start_with_wall(config: Config, wall: Arc<dyn Wall>) -> anyhow::Result<RunningServer> {
    let started = Instant::now();
    // Installed before any actor exists: the actors keep metric handles taken on first use.
    let metrics = api::metrics_handle();
    let lock = DataDirLock::acquire(&config.data_dir)?;
    let conn = store::open(&store::db_path(&config.data_dir)).context("opening the database")?;
    let in_flight = store::orders_in_flight(&conn, u64::MAX)?;
    let fences = store::load_fences(&conn)?;
    let map_floor = store::load_map_floor(&conn)?;
    let storage_id = store::storage_id(&conn)?;
    let clock = Arc::new(NodeClock::new(wall, store::load_time_floor(&conn)?));
    let writer = Writer::start_with_window(
        conn,
        config.group_commit_max_batch,
        config.writer_queue,
        config.journal_compact_window_rows as i64,
    )?;
    // Right after a crash the stored floor may be a little ahead of the wall clock: wait it
    // out rather than serve times ahead of it. Then store the first floor before serving.
    if let Some(gap) = clock.start_delay() {
        tracing::info!(
            ms = gap.as_millis() as u64,
            "waiting for the wall clock to pass the time floor"
        );
        tokio::time::sleep(gap).await;
    }
    clock::raise_time_floor(&clock, &writer.handle).await?;
    tokio::spawn(clock::keep_time_floor(
        clock.clone(),
        writer.handle.downgrade(),
    ));
    let stop_clock = clock.clone();
    let env = StockEnv {
        writer: writer.handle.clone(),
        clock: clock.clone(),
        snapshot_every: config.snapshot_every_events,
        outcome_retention_ms: config.outcome_retention_ms,
    };
    let router_config = RouterConfig {
        max_active: config.max_active_actors,
        idle: Duration::from_millis(config.idle_passivate_ms),
    };
    let directory = Directory::new(env, router_config);
    let (router, router_task) = Actor::spawn(None, Router, directory.clone()).await?;
    let admission = Admission {
        max_in_flight: config.max_in_flight,
        answer_timeout: Duration::from_millis(config.answer_timeout_ms),
    };
    let node = Node::new(directory, writer.handle.clone(), admission, clock);
    let orders = OrderCoordinator::new(node.clone());
    let listener = tokio::net::TcpListener::bind(&config.http_addr)
        .await
        .with_context(|| format!("binding {}", config.http_addr))?;
    let http_addr = listener.local_addr()?;
    tracing::info!(%http_addr, data_dir = %config.data_dir.display(), "listening");
    let cluster = match config.cluster.enabled {
        true => {
            Some(start_cluster(&config, http_addr, &node, fences, map_floor, storage_id).await?)
        }
        false => None,
    };
    let state = AppState::new(Services {
        node: node.clone(),
        orders: orders.clone(),
        metrics,
        cluster: cluster.clone(),
    });
    let app = api::router(state.clone());
    if let Some(c) = &cluster {
        c.set_http(app.clone());
    }
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let upkeep = state.metrics.clone();
    let upkeep = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    let ready_node = node.clone();
    let left_cluster = cluster.as_ref().map(|c| c.left.subscribe());
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            match left_cluster {
                Some(mut left) => {
                    tokio::select! {
                        _ = shutdown_rx => {}
                        _ = left.wait_for(|l| *l) => {
                            tracing::info!("this node has left the cluster; stopping");
                        }
                    }
                }
                None => {
                    let _ = shutdown_rx.await;
                }
            }
        });
        let serving = tokio::spawn(async move { serve.await });
        if let Some(c) = &cluster {
            // Order recovery may touch keys anywhere: it needs the ring first.
            while !c.has_map() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let enter = |id: &_| enter_order(cluster.as_deref(), id);
        let (recovered, left) = orders.recover(in_flight, enter).await;
        ready_node.set_ready(true);
        tracing::info!(
            recovered_orders = recovered,
            orders_left_in_flight = left,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "ready"
        );
        let sweep = tokio::spawn(sweep_stalled_orders(orders, cluster));
        serving.await.context("http task")?.context("http server")?;
        sweep.abort();
        ready_node.set_ready(false);
        drain(router, router_task, writer, &stop_clock).await;
        upkeep.abort();
        drop(lock);
        Ok(())
    });
    Ok(RunningServer {
        http_addr,
        node,
        shutdown,
        task,
    })
}

/// Whether this node coordinates order `id` now and, if so, its vnode's gate entered (a
/// handoff waits for it) while the order is recovered. Without a cluster, every order (no
/// gate). In a cluster an order on disk here may be a copy imported by a handoff, or one whose
/// vnode moved away: its owner finishes it.
fn enter_order<'c>(
    cluster: Option<&'c Cluster>,
    id: &crate::domain::OrderId,
) -> Option<Option<crate::cluster::gates::Guard<'c>>> {
    let Some(c) = cluster else {
        return Some(None);
    };
    match c.order_route(id.as_str()) {
        OrderRoute::Here(vnode) => c.enter_gate(vnode).map(Some),
        _ => None,
    }
}

/// How often a live node looks for orders that no request finished.
const ORDER_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// An order in flight that no request has written for this long is finished or undone by
/// the sweep (a request working on one holds its lock, and the sweep skips it).
const ORDER_STALLED_AFTER_MS: u64 = 3_000;

/// The safety net behind every order request: a request runs to its end even if its client
/// hangs up (`api::detach`), but a step can fail and its undo with it (a key unavailable).
/// Such an order would stay `reserving`/`committing`/`releasing` until the next start; this
/// finishes or undoes it within about `ORDER_STALLED_AFTER_MS + ORDER_SWEEP_EVERY` once its
/// keys answer again.
async fn sweep_stalled_orders(orders: OrderCoordinator, cluster: Option<Arc<Cluster>>) {
    loop {
        tokio::time::sleep(ORDER_SWEEP_EVERY).await;
        let stalled = match orders.stalled(ORDER_STALLED_AFTER_MS).await {
            Ok(stalled) if stalled.is_empty() => continue,
            Ok(stalled) => stalled,
            Err(e) => {
                tracing::warn!(error = %e, "order sweep: cannot list orders in flight");
                continue;
            }
        };
        let enter = |id: &_| enter_order(cluster.as_deref(), id);
        let (finished, left) = orders.recover_stalled(stalled, enter).await;
        if finished + left > 0 {
            tracing::info!(finished, left, "order sweep");
        }
    }
}

async fn start_cluster(
    config: &Config,
    http_addr: SocketAddr,
    node: &Node,
    fences: Vec<(u32, u64, u64, u64)>,
    map_floor: u64,
    storage_id: u64,
) -> anyhow::Result<Arc<Cluster>> {
    let c = &config.cluster;
    let transport = RactorTransport::start(TransportConfig {
        name: c.node_name.clone(),
        addr: c.cluster_addr.clone(),
        cookie: c.cookie.clone(),
        heartbeat: Duration::from_millis(c.heartbeat_ms),
        down_after_missed: c.down_after_missed,
        max_in_flight_per_peer: c.max_in_flight_per_peer,
        max_message_bytes: c.max_message_bytes,
    })
    .await
    .context("starting the cluster transport")?;
    let fences = fences
        .into_iter()
        .map(|(vnode, move_id, epoch, begun_at)| Fence {
            vnode,
            move_id,
            epoch,
            begun_at,
        })
        .collect();
    let cluster = Cluster::start(
        c.clone(),
        http_addr.to_string(),
        &config.data_dir,
        node.clone(),
        transport.clone(),
        fences,
        map_floor,
        storage_id,
    )
    .await
    .context("joining the cluster")?;
    transport.set_inbound(cluster.clone());
    tracing::info!(node = %c.node_name, cluster_addr = %c.cluster_addr, seed = c.is_seed(), "cluster started");
    Ok(cluster)
}

async fn drain(
    router: ractor::ActorRef<RouterMsg>,
    router_task: tokio::task::JoinHandle<()>,
    writer: Writer,
    clock: &NodeClock,
) {
    let (tx, rx) = oneshot::channel();
    let sent = router.send_message(RouterMsg::Drain { reply: tx }).is_ok();
    if sent
        && tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .is_err()
    {
        // Still safe (everything acknowledged is in the journal), but the keys not
        // snapshotted make the next start scan their journal rows.
        tracing::warn!("drain did not finish within 30 s; stopping anyway");
    }
    router.stop(None);
    let _ = router_task.await;
    if let Err(e) = clock::settle_time_floor(clock, &writer.handle).await {
        tracing::warn!(error = %e, "the time floor was not settled; the next start may wait up to a second");
    }
    // The writer thread exits once every handle is gone and its queue is committed.
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    tracing::info!("stopped cleanly");
}
