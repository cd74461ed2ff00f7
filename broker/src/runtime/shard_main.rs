//! What one shard's executor runs: recovery (open its logs, load its groups), the mesh tasks,
//! the acceptor, the maintenance task and the tick loop, until shutdown.

use std::cell::Cell;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::TcpListener;
use strom_storage::LogManager;

use super::error::ShardError;
use super::maintenance::{
    expire_producers, flush_due_logs, maintain_logs, MAINTENANCE_SHARES, PRODUCER_EXPIRY_CHECK_MS,
};
use super::watchdog::Watchdog;
use super::TICK_MS;
use crate::clock::now_ms;
use crate::config::BrokerConfig;
use crate::group::store::OffsetsStore;
use crate::group::GroupCoordinator;
use crate::ids::ShardId;
use crate::mesh::{Mesh, Msg};
use crate::metadata::controller::{Controller, ControllerContext, QuorumLink};
use crate::metadata::producer_ids::{BlockSource, ProducerIds};
use crate::metadata::table::ShardTable;
use crate::metadata::ClusterMeta;
use crate::quorum::{QuorumSetup, QuorumView};
use crate::shard::{Shard, ShardStats};

/// Everything a shard needs to start; cloned into each executor.
#[derive(Clone)]
pub(crate) struct ShardContext {
    pub(crate) config: Arc<BrokerConfig>,
    pub(crate) meta: Arc<ArcSwap<ClusterMeta>>,
    pub(crate) mesh: MeshBuilder<Msg<Shard>, Full>,
    pub(crate) shutdown: Arc<AtomicBool>,
    pub(crate) watchdog: Arc<Watchdog>,
    /// The persisted end of the last reserved producer id block (for the controller).
    pub(crate) producer_id_block_end: i64,
    /// The admin HTTP listener, bound by `serve` so that "in use" is a startup error; shard 0
    /// serves it.
    pub(crate) admin_listener: Option<Arc<std::net::TcpListener>>,
    /// Shards that have finished recovery (logs opened, groups loaded, mesh tasks running).
    pub(crate) recovered_shards: Arc<AtomicUsize>,
    /// When the process started (for the uptime metric).
    pub(crate) started: std::time::Instant,
    /// Client connections of the whole broker (`max.connections`, `max.connections.per.ip`).
    pub(crate) connection_limiter: Arc<strom_net::ConnectionLimiter>,
    /// In cluster mode: the published controller state every shard reads, and what shard 0
    /// needs to run the controller quorum.
    pub(crate) quorum: Option<QuorumStart>,
}

/// What the controller quorum starts from (cluster mode only).
#[derive(Clone)]
pub(crate) struct QuorumStart {
    /// The committed metadata every shard reads.
    pub(crate) view: Arc<QuorumView>,
    /// Shard 0's settings for the controller node.
    pub(crate) setup: QuorumSetup,
    /// The controller listener, bound at startup.
    pub(crate) listener: Arc<std::net::TcpListener>,
}

thread_local! {
    /// The shard this thread runs, for the panic hook's message.
    static CURRENT_SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The shard the calling thread runs, if it is a shard thread.
pub(crate) fn current_shard() -> Option<usize> {
    CURRENT_SHARD.with(Cell::get)
}

/// The body of one shard's executor. Returns after a clean shutdown.
pub(crate) async fn run(ctx: ShardContext) -> Result<(), ShardError> {
    super::install_test_disk_hooks(&ctx.config).map_err(ShardError::DiskHooks)?;
    let slot = ctx.watchdog.register();
    glommio::spawn_local(ctx.watchdog.clone().wake_target(slot)).detach();
    let beats = ctx.watchdog.clone();
    // The heartbeat lives as long as the executor, through shutdown too.
    glommio::spawn_local(async move {
        loop {
            beats.beat(slot);
            glommio::timer::sleep(Duration::from_millis(TICK_MS)).await;
        }
    })
    .detach();
    let (senders, receivers) = ctx.mesh.join().await.map_err(|_| ShardError::MeshJoin)?;
    let id = senders.peer_id();
    CURRENT_SHARD.with(|c| c.set(Some(id)));
    let table = ShardTable::new(senders.nr_consumers());
    let settings = ctx.config.groups.clone();
    let defaults = ctx.config.topic_defaults.resolve(&Default::default());
    let store = OffsetsStore::new(
        &ctx.config.data_dir,
        settings.offsets_partitions,
        settings.offsets_segment_bytes,
        defaults.delete_retention_ms,
        defaults.flush_on_ack,
    );
    let groups = GroupCoordinator::new(settings, store);
    // The controller quorum runs on shard 0 from the start: the other nodes may be waiting
    // for this one to form a majority.
    let quorum = match (&ctx.quorum, id) {
        (Some(q), 0) => Some(
            crate::quorum::spawn(q.setup.clone(), q.view.clone(), &q.listener)
                .map_err(ShardError::Quorum)?,
        ),
        _ => None,
    };
    let shard = Rc::new(Shard {
        id: ShardId(id),
        table,
        config: ctx.config.clone(),
        meta: ctx.meta.clone(),
        logs: LogManager::new(ctx.config.data_dir.clone())
            .with_producer_ids_max(ctx.config.producers.ids_max_per_partition),
        controller: (id == 0).then(|| {
            let expiration_ms = ctx.config.producers.id_expiration_ms;
            let context = ControllerContext {
                data_dir: ctx.config.data_dir.clone(),
                topic_defaults: ctx.config.topic_defaults.clone(),
                abort_at: ctx.config.faults.controller_abort_at,
                table,
                meta: ctx.meta.clone(),
                quorum: match (&quorum, &ctx.quorum) {
                    (Some(q), Some(start)) => Some(QuorumLink {
                        node_id: start.setup.node_id,
                        view: start.view.clone(),
                        handle: q.handle.clone(),
                        default_replication_factor: ctx
                            .config
                            .cluster
                            .as_ref()
                            .map_or(1, |c| c.default_replication_factor),
                    }),
                    _ => None,
                },
            };
            // Producer ids are unique per cluster: in cluster mode their blocks come from the
            // controller quorum.
            let source = match (&quorum, &ctx.config.cluster) {
                (Some(q), Some(settings)) => BlockSource::Quorum {
                    node_id: settings.node_id,
                    handle: q.handle.clone(),
                },
                _ => BlockSource::Local(ctx.config.data_dir.clone()),
            };
            Controller::new(
                context,
                ProducerIds::with_source(source, ctx.producer_id_block_end, expiration_ms),
            )
        }),
        groups,
        stats: ShardStats::default(),
        metrics: Default::default(),
        recovered_shards: ctx.recovered_shards.clone(),
        started: ctx.started,
        produce_requests_acked: Cell::new(0),
        request_budget: strom_net::ByteBudget::new(
            ctx.config.request_budget_bytes / ctx.config.cores.max(1),
            crate::limits::REQUEST_SMALL_BYTES_MAX,
        ),
        mesh: Rc::new(Mesh::new(senders)),
        quorum: ctx.quorum.as_ref().map(|q| q.view.clone()),
        replicas: ctx.config.cluster.as_ref().map(|c| {
            Rc::new(crate::shard::replication::Replicas::new(
                strom_cluster::NodeId(c.node_id),
            ))
        }),
    });
    if shard.replicas.is_some() {
        // Cluster mode: the offsets log is the replicated offsets topic.
        shard
            .groups
            .use_offsets_topic(Rc::new(crate::shard::replication::ShardOffsets(
                Rc::downgrade(&shard),
            )));
    }
    // Before recovery, so that readiness can be asked while the logs are being opened.
    if let (0, Some(listener)) = (id, &ctx.admin_listener) {
        crate::admin::spawn(&shard, listener).map_err(ShardError::Admin)?;
    }
    if ctx.config.faults.recovery_delay_ms > 0 {
        glommio::timer::sleep(Duration::from_millis(ctx.config.faults.recovery_delay_ms)).await;
    }
    open_owned_logs(&shard).await?;
    let owned =
        crate::group::owned_partitions(shard.groups.partitions(), shard.id, shard.table.shards());
    shard
        .groups
        .load(&owned, &shard.meta())
        .await
        .map_err(ShardError::LoadGroups)?;
    crate::mesh::spawn_tasks(&shard.mesh, shard.clone(), receivers);
    ctx.recovered_shards.fetch_add(1, Ordering::AcqRel);
    tracing::info!(shard = id, "recovery complete");
    if let (0, Some(link)) = (id, shard.controller.as_ref().and_then(|c| c.quorum_link())) {
        glommio::spawn_local(follow_quorum(shard.clone(), link)).detach();
    }
    let panic_after_ms = ctx.config.faults.shard_panic_after_ms;
    if panic_after_ms > 0 && id + 1 == shard.table.shards() {
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(panic_after_ms)).await;
            panic!(
                "test.fault.shard.panic.after.ms={panic_after_ms}: shard {id} panics on purpose"
            );
        })
        .detach();
    }

    let fd =
        strom_net::listener::bind_shared(ctx.config.listen).map_err(|source| ShardError::Bind {
            addr: ctx.config.listen,
            source,
        })?;
    // SAFETY: `fd` is a listening TCP socket we own; the listener takes it over.
    let listener = unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) };
    tracing::info!(shard = id, "listening on {}", ctx.config.listen);
    let acceptor = glommio::spawn_local(accept_loop(
        shard.clone(),
        listener,
        ctx.connection_limiter.clone(),
        false,
    ));
    // Cluster mode: followers of this shard's partitions on other nodes fetch from this
    // shard's own replication port, and this shard follows its partitions led elsewhere.
    let mut replication_tasks = Vec::new();
    if let (Some(settings), Some(replicas)) = (&ctx.config.cluster, &shard.replicas) {
        let addr = settings.replication_listen_of_shard(id);
        let listener = TcpListener::bind(addr).map_err(|e| ShardError::Bind {
            addr,
            source: std::io::Error::other(e.to_string()),
        })?;
        tracing::info!(shard = id, "replication listener on {addr}");
        replication_tasks.push(glommio::spawn_local(accept_loop(
            shard.clone(),
            listener,
            ctx.connection_limiter.clone(),
            true,
        )));
        replication_tasks.push(glommio::spawn_local(crate::shard::replication::run(
            shard.clone(),
            replicas.clone(),
            ctx.shutdown.clone(),
        )));
    }
    // Retention and compaction yield the core to request handling: their own task queue with
    // few shares, so under contention they get about a tenth of what request handling gets.
    let queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(MAINTENANCE_SHARES),
        glommio::Latency::NotImportant,
        "maintenance",
    );
    let maintenance =
        glommio::spawn_local_into(maintain_logs(shard.clone(), ctx.shutdown.clone()), queue)
            .map_err(|e| ShardError::Task {
                what: "maintenance",
                source: e.into(),
            })?;

    // Checked once a minute, or twice per expiration time if that is shorter.
    let expiry_check_ms =
        (shard.config.producers.id_expiration_ms / 2).clamp(100, PRODUCER_EXPIRY_CHECK_MS);
    let mut next_producer_expiry = now_ms() + expiry_check_ms;
    while !ctx.shutdown.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(TICK_MS)).await;
        shard.groups.tick();
        flush_due_logs(&shard).await;
        if now_ms() >= next_producer_expiry {
            next_producer_expiry = now_ms() + expiry_check_ms;
            expire_producers(&shard);
        }
    }
    drop(acceptor);
    for task in replication_tasks {
        drop(task);
    }
    if let Some(quorum) = quorum {
        quorum.stop().await;
    }
    tracing::info!(shard = id, "shutting down: flushing and closing logs");
    if let Err(e) = shard.logs.close_all().await {
        tracing::error!(shard = id, "closing logs: {e}");
    }
    shard.groups.close().await;
    // Closing the logs made any pass in progress give up; the task ends on the shutdown flag.
    maintenance.await;
    Ok(())
}

/// Cluster mode, shard 0: makes the local metadata and logs follow every new image of the
/// controller quorum (`Controller::adopt`), from the first one after recovery on.
async fn follow_quorum(shard: Rc<Shard>, link: QuorumLink) {
    const RETRY_MS: u64 = 1_000;
    let mut adopted = u64::MAX;
    loop {
        let listener = link.view.changed.listen();
        let state = link.view.load();
        if state.applied == adopted || state.applied == 0 {
            listener.await;
            continue;
        }
        let Some(controller) = shard.controller.as_ref() else {
            return;
        };
        match controller.adopt(&shard, link.node_id, &state.image).await {
            Ok(false) => adopted = state.applied,
            Ok(true) => {}
            Err(e) => {
                tracing::warn!(
                    "following the cluster metadata (applied index {}): {}; retrying",
                    state.applied,
                    e.message
                );
                glommio::timer::sleep(Duration::from_millis(RETRY_MS)).await;
            }
        }
    }
}

async fn open_owned_logs(shard: &Rc<Shard>) -> Result<(), ShardError> {
    let meta = shard.meta();
    let now = now_ms();
    // In cluster mode a node holds only the partitions it is a replica of: those whose
    // directory it created. Replicas it still lacks are opened by `follow_quorum`.
    let cluster = shard.config.cluster.is_some();
    for topic in meta.topics.values() {
        for (p, pm) in topic.partitions.iter().enumerate() {
            let held = !cluster
                || shard
                    .config
                    .data_dir
                    .join(format!("{}-{p}", topic.name))
                    .is_dir();
            if pm.shard == shard.id && held {
                shard
                    .logs
                    .open_or_create(&topic.name, p as i32, topic.config.log_config(), now)
                    .await
                    .map_err(|source| ShardError::OpenLog {
                        topic: topic.name.to_string(),
                        partition: p as i32,
                        source,
                    })?;
            }
        }
    }
    Ok(())
}

async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    limiter: Arc<strom_net::ConnectionLimiter>,
    peers: bool,
) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let ip = match stream.peer_addr() {
                    Ok(addr) => addr.ip(),
                    Err(e) => {
                        tracing::debug!(
                            shard = shard.id.0,
                            "dropping a connection without a peer address: {e}"
                        );
                        continue;
                    }
                };
                let slot = match limiter.admit(ip) {
                    Ok(slot) => slot,
                    Err(refused) => {
                        refuse_connection(&shard, ip, refused);
                        continue;
                    }
                };
                shard
                    .stats
                    .connections
                    .set(shard.stats.connections.get() + 1);
                if peers {
                    crate::kafka::connection::spawn_peer(shard.clone(), stream, slot);
                } else {
                    crate::kafka::connection::spawn(shard.clone(), stream, slot);
                }
            }
            Err(e) => {
                tracing::warn!(shard = shard.id.0, "accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Counts a connection closed at accept, with a warning at most every
/// `CONNECTION_REFUSED_LOG_INTERVAL_MS` per shard.
fn refuse_connection(shard: &Shard, ip: std::net::IpAddr, refused: strom_net::Refused) {
    let stats = &shard.stats;
    stats
        .connections_refused
        .set(stats.connections_refused.get() + 1);
    let now = now_ms();
    if now - stats.connections_refused_logged_ms.get()
        >= crate::limits::CONNECTION_REFUSED_LOG_INTERVAL_MS as i64
    {
        stats.connections_refused_logged_ms.set(now);
        let limit = match refused {
            strom_net::Refused::Total => shard.config.connections_max,
            strom_net::Refused::PerIp => shard.config.connections_per_ip_max,
        };
        tracing::warn!(
            shard = shard.id.0,
            "refusing a connection from {ip}: {} = {limit} reached ({} refused on this shard so far)",
            refused.setting(),
            stats.connections_refused.get()
        );
    }
}
