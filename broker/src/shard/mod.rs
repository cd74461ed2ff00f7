//! Shards: one pinned glommio executor per core, each owning a set of partitions.
//!
//! Every shard accepts connections (SO_REUSEPORT spreads them). A request that touches
//! partitions of other shards is split; each part travels as a [`ShardOp`] over a bounded
//! channel of the full mesh to its owner, and the replies are put back together in request
//! order. Shard-local state is `Rc`/`RefCell`; nothing here is shared between threads except the
//! metadata snapshot (`ArcSwap`, read without locks) and the shutdown flag.

pub mod mesh;
pub mod ops;
pub mod table;
pub mod watchdog;

use std::cell::Cell;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::TcpListener;
use strom_storage::{LogManager, StorageError};

use crate::config::BrokerConfig;
use crate::group::store::OffsetsStore;
use crate::group::{GroupCoordinator, GroupOp, GroupReply};
use crate::metadata::controller::Controller;
use crate::metadata::producer_ids::ProducerIds;
use crate::metadata::ClusterMeta;
use crate::metrics::stages::OwnerTimes;
use crate::clock::now_ms;
use mesh::{Mesh, ShardMsg};
pub use ops::{ShardOp, ShardReply};
use table::ShardTable;

/// How often a shard checks the shutdown flag and the flush policy of its logs.
///
/// The tick is also the shard's heartbeat for the [`watchdog`]. Shorter ticks cost idle CPU
/// (1 ms ticks cost about 5% of a core per shard here).
pub const TICK_MS: u64 = 20;

/// Everything a shard needs to start; cloned into each executor.
#[derive(Clone)]
pub struct ShardContext {
    pub config: Arc<BrokerConfig>,
    pub meta: Arc<ArcSwap<ClusterMeta>>,
    pub mesh: MeshBuilder<ShardMsg, Full>,
    pub shutdown: Arc<AtomicBool>,
    pub watchdog: Arc<watchdog::Watchdog>,
    /// The persisted end of the last reserved producer id block (for the controller).
    pub producer_id_block_end: i64,
    /// The admin HTTP listener, bound by `serve` so that "in use" is a startup error; shard 0
    /// serves it.
    pub admin_listener: Option<Arc<std::net::TcpListener>>,
    /// Shards that have finished recovery (logs opened, groups loaded, mesh tasks running).
    pub recovered_shards: Arc<AtomicUsize>,
    /// When the process started (for the uptime metric).
    pub started: std::time::Instant,
    /// Client connections of the whole broker (`max.connections`, `max.connections.per.ip`).
    pub connection_limiter: Arc<strom_net::ConnectionLimiter>,
}

/// Per-shard counters of the mesh and the acceptor (exported by the metrics endpoint).
#[derive(Default)]
pub struct ShardStats {
    pub cross_shard_sent: Cell<u64>,
    pub cross_shard_channel_full: Cell<u64>,
    pub connections: Cell<u64>,
    /// Connections closed at accept by `max.connections` or `max.connections.per.ip`.
    pub connections_refused: Cell<u64>,
    /// When a refused connection was last logged (ms), to rate-limit the warning.
    connections_refused_logged_ms: Cell<i64>,
    /// Connections closed for `connections.max.idle.ms` or a stalled request body.
    pub connections_idle_closed: Cell<u64>,
    /// Connections handed to another shard (`kafka/affinity.rs`).
    pub connections_migrated: Cell<u64>,
}

pub struct Shard {
    pub id: usize,
    pub table: ShardTable,
    pub config: Arc<BrokerConfig>,
    pub meta: Arc<ArcSwap<ClusterMeta>>,
    pub logs: LogManager,
    pub controller: Option<Controller>,
    pub groups: Rc<GroupCoordinator>,
    pub stats: ShardStats,
    pub metrics: crate::metrics::ShardMetrics,
    /// Shards that have finished recovery (shared by all shards).
    pub recovered_shards: Arc<AtomicUsize>,
    /// When the process started.
    pub started: std::time::Instant,
    /// Produce requests with acks != 0 handled so far, counted while
    /// `test.fault.produce.drop.response.every` is set.
    pub produce_requests_acked: Cell<u64>,
    /// This shard's share of `queued.max.request.bytes`, charged per request before its body
    /// is read.
    pub request_budget: Rc<strom_net::ByteBudget>,
    mesh: Mesh,
}

impl Shard {
    /// Every partition log this shard owns: topics' and the consumer-group offsets logs.
    pub fn all_logs(&self) -> Vec<Rc<strom_storage::PartitionLog>> {
        let mut logs: Vec<_> = self.logs.all().into_iter().map(|(_, log)| log).collect();
        logs.extend(self.groups.offsets_logs());
        logs
    }

    /// Runs `op` on shard `to`: directly if that is this shard, else over the mesh.
    pub async fn call(self: &Rc<Self>, to: usize, op: ShardOp) -> ShardReply {
        self.call_timed(to, op).await.0
    }

    /// [`Shard::call`], also saying when the owner ran the operation (None if it never did).
    pub async fn call_timed(
        self: &Rc<Self>,
        to: usize,
        op: ShardOp,
    ) -> (ShardReply, Option<OwnerTimes>) {
        if to == self.id {
            let start = std::time::Instant::now();
            let reply = ops::execute(self, op).await;
            (
                reply,
                Some(OwnerTimes {
                    start,
                    end: std::time::Instant::now(),
                }),
            )
        } else {
            self.mesh.call(self, to, op).await
        }
    }

    /// Requests refused because an outbox to another shard was full, and requests from other
    /// shards cancelled while they ran (for the metrics).
    pub fn mesh_counts(&self) -> (u64, u64) {
        (self.mesh.outbox_full(), self.mesh.cancelled())
    }

    /// Messages queued to other shards, not yet in their channels.
    pub fn mesh_queued(&self) -> usize {
        self.mesh.queued()
    }

    pub fn meta(&self) -> Arc<ClusterMeta> {
        self.meta.load_full()
    }

    /// The shard that coordinates `group_id`.
    pub fn group_owner(&self, group_id: &str) -> usize {
        crate::group::owner(group_id, self.groups.partitions(), self.table.shards())
    }

    /// Runs a group operation on the shard that coordinates `group_id`.
    pub async fn group_call(self: &Rc<Self>, group_id: &str, op: GroupOp) -> Option<GroupReply> {
        match self
            .call(self.group_owner(group_id), ShardOp::Group(op))
            .await
        {
            ShardReply::Group(r) => Some(r),
            _ => None,
        }
    }

    /// Runs a group operation on every shard.
    pub async fn group_call_all(self: &Rc<Self>, make: impl Fn() -> GroupOp) -> Vec<GroupReply> {
        let calls = (0..self.table.shards()).map(|s| self.call(s, ShardOp::Group(make())));
        futures::future::join_all(calls)
            .await
            .into_iter()
            .filter_map(|r| match r {
                ShardReply::Group(r) => Some(r),
                _ => None,
            })
            .collect()
    }
}

thread_local! {
    /// The shard this thread runs, for the panic hook's message.
    static CURRENT_SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The shard the calling thread runs, if it is a shard thread.
pub fn current_shard() -> Option<usize> {
    CURRENT_SHARD.with(Cell::get)
}

/// The body of one shard's executor. Returns after a clean shutdown.
pub async fn run(ctx: ShardContext) -> Result<(), String> {
    crate::install_test_disk_hooks(&ctx.config)?;
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
    let (senders, receivers) = ctx
        .mesh
        .join()
        .await
        .map_err(|_| "joining the shard mesh failed".to_string())?;
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
    let shard = Rc::new(Shard {
        id,
        table,
        config: ctx.config.clone(),
        meta: ctx.meta.clone(),
        logs: LogManager::new(ctx.config.data_dir.clone())
            .with_producer_ids_max(ctx.config.producers.ids_max_per_partition),
        controller: (id == 0).then(|| {
            let expiration_ms = ctx.config.producers.id_expiration_ms;
            Controller::new(ProducerIds::new(
                ctx.config.data_dir.clone(),
                ctx.producer_id_block_end,
                expiration_ms,
            ))
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
        mesh: Mesh::new(senders),
    });
    // Before recovery, so that readiness can be asked while the logs are being opened.
    if let (0, Some(listener)) = (id, &ctx.admin_listener) {
        crate::admin::spawn(&shard, listener)?;
    }
    if ctx.config.faults.recovery_delay_ms > 0 {
        glommio::timer::sleep(Duration::from_millis(ctx.config.faults.recovery_delay_ms)).await;
    }
    open_owned_logs(&shard).await?;
    let owned = crate::group::owned_partitions(shard.groups.partitions(), id, shard.table.shards());
    shard
        .groups
        .load(&owned, &shard.meta())
        .await
        .map_err(|e| format!("loading consumer groups: {e}"))?;
    mesh::spawn_tasks(&shard, receivers);
    ctx.recovered_shards.fetch_add(1, Ordering::AcqRel);
    tracing::info!(shard = id, "recovery complete");
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

    let fd = strom_net::listener::bind_shared(ctx.config.listen)
        .map_err(|e| format!("binding {}: {e}", ctx.config.listen))?;
    // SAFETY: `fd` is a listening TCP socket we own; the listener takes it over.
    let listener = unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) };
    tracing::info!(shard = id, "listening on {}", ctx.config.listen);
    let acceptor = glommio::spawn_local(accept_loop(
        shard.clone(),
        listener,
        ctx.connection_limiter.clone(),
    ));
    // Retention and compaction yield the core to request handling: their own task queue with
    // few shares, so under contention they get about a tenth of what request handling gets.
    let queue = glommio::executor().create_task_queue(
        glommio::Shares::Static(MAINTENANCE_SHARES),
        glommio::Latency::NotImportant,
        "maintenance",
    );
    let maintenance =
        glommio::spawn_local_into(maintain_logs(shard.clone(), ctx.shutdown.clone()), queue)
            .map_err(|e| format!("starting the maintenance task: {e}"))?;

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
    tracing::info!(shard = id, "shutting down: flushing and closing logs");
    if let Err(e) = shard.logs.close_all().await {
        tracing::error!(shard = id, "closing logs: {e}");
    }
    shard.groups.close().await;
    // Closing the logs made any pass in progress give up; the task ends on the shutdown flag.
    maintenance.await;
    Ok(())
}

/// Shares of the maintenance task queue; request handling runs in the default queue (1000).
const MAINTENANCE_SHARES: usize = 100;

/// Retention every `log.retention.check.interval.ms`, compaction every `log.cleaner.backoff.ms`,
/// for every log of the shard (the consumer-group offsets logs are compacted too).
async fn maintain_logs(shard: Rc<Shard>, shutdown: Arc<AtomicBool>) {
    let settings = shard.config.maintenance.clone();
    let fault = shard
        .config
        .faults
        .cleaner_abort_at
        .map(strom_storage::CleanerFault::Abort);
    let mut next_retention = now_ms() + settings.retention_check_interval_ms as i64;
    let mut next_clean = now_ms() + settings.cleaner_backoff_ms as i64;
    let mut next_recovery_point = now_ms() + settings.recovery_point_interval_ms as i64;
    let tick_ms = TICK_MS
        .min(settings.retention_check_interval_ms)
        .min(settings.cleaner_backoff_ms)
        .min(settings.recovery_point_interval_ms);
    while !shutdown.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(tick_ms)).await;
        if now_ms() >= next_recovery_point {
            let logs = shard.all_logs();
            for log in logs {
                if shutdown.load(Ordering::Relaxed) {
                    return;
                }
                match log.write_recovery_point().await {
                    Ok(_) | Err(StorageError::Closed { .. } | StorageError::SyncFailed { .. }) => {}
                    Err(e) => tracing::error!("recovery point of {}: {e}", log.dir().display()),
                }
            }
            next_recovery_point = now_ms() + settings.recovery_point_interval_ms as i64;
        }
        if now_ms() >= next_retention {
            for ((topic, p), log) in shard.logs.all() {
                if shutdown.load(Ordering::Relaxed) {
                    return;
                }
                match log.enforce_retention(now_ms()).await {
                    Ok(_) | Err(StorageError::Closed { .. }) => {}
                    Err(e) => tracing::error!("retention of {topic}-{p}: {e}"),
                }
            }
            next_retention = now_ms() + settings.retention_check_interval_ms as i64;
        }
        if settings.cleaner_enable && now_ms() >= next_clean {
            let logs = shard.all_logs();
            for log in logs {
                if shutdown.load(Ordering::Relaxed) {
                    return;
                }
                log.set_cleaner_fault(fault);
                match log.clean(now_ms()).await {
                    Ok(_) | Err(StorageError::Closed { .. }) => {}
                    Err(e) => tracing::error!("compaction of {}: {e}", log.dir().display()),
                }
            }
            next_clean = now_ms() + settings.cleaner_backoff_ms as i64;
        }
    }
}

async fn open_owned_logs(shard: &Rc<Shard>) -> Result<(), String> {
    let meta = shard.meta();
    let now = now_ms();
    for topic in meta.topics.values() {
        for (p, pm) in topic.partitions.iter().enumerate() {
            if pm.shard == shard.id {
                shard
                    .logs
                    .open_or_create(&topic.name, p as i32, topic.config.log_config(), now)
                    .await
                    .map_err(|e| format!("opening {}-{p}: {e}", topic.name))?;
            }
        }
    }
    Ok(())
}

async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    limiter: Arc<strom_net::ConnectionLimiter>,
) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let ip = match stream.peer_addr() {
                    Ok(addr) => addr.ip(),
                    Err(e) => {
                        tracing::debug!(
                            shard = shard.id,
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
                crate::kafka::connection::spawn(shard.clone(), stream, slot);
            }
            Err(e) => {
                tracing::warn!(shard = shard.id, "accept failed: {e}");
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
            shard = shard.id,
            "refusing a connection from {ip}: {} = {limit} reached ({} refused on this shard so far)",
            refused.setting(),
            stats.connections_refused.get()
        );
    }
}

/// How often a shard looks for idempotent producers to forget (at most).
const PRODUCER_EXPIRY_CHECK_MS: i64 = 60_000;

/// `producer.id.expiration.ms`: forget idempotent producers not heard from for that long.
fn expire_producers(shard: &Rc<Shard>) {
    let now = now_ms();
    let max_age = shard.config.producers.id_expiration_ms;
    for ((topic, p), log) in shard.logs.all() {
        let n = log.expire_producers(now, max_age);
        if n > 0 {
            tracing::debug!("{topic}-{p}: forgot {n} idle producer id(s)");
        }
    }
}

/// Kafka's `flush.messages` / `flush.ms`: flush logs whose policy says so.
async fn flush_due_logs(shard: &Rc<Shard>) {
    let now = now_ms();
    for ((topic, p), log) in shard.logs.all() {
        if log.needs_flush(now) {
            if let Err(e) = log.flush().await {
                tracing::error!("flushing {topic}-{p}: {e}");
            }
        }
    }
}
