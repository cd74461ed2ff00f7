//! Shards: one pinned glommio executor per core, each owning a set of partitions.
//!
//! A [`Shard`] routes: it knows its id, the placement table, the published metadata and its end
//! of the mesh, and [`Shard::call`] runs a [`ShardOp`] on the shard that owns what it touches
//! (directly if that is itself, else over the mesh). It holds the subsystems it dispatches to
//! (partition logs, the group coordinator, the controller on shard 0, the metrics); they do
//! not know it. Shard-local state is `Rc`/`RefCell`; nothing here is shared between threads
//! except the metadata snapshot (`ArcSwap`, read without locks). The executor that runs a shard
//! is started by `runtime`.

mod groups;
pub mod ops;
pub(crate) mod produce;
pub mod replication;
pub mod stats;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::ArcSwap;
use strom_storage::LogManager;

use crate::config::BrokerConfig;
use crate::group::{GroupCoordinator, GroupOp, GroupReply};
use crate::ids::ShardId;
use crate::mesh::{Handler, Mesh, MeshCounts};
use crate::metadata::controller::Controller;
use crate::metadata::table::ShardTable;
use crate::metadata::ClusterMeta;
use crate::metrics::stages::OwnerTimes;
pub use ops::{ShardOp, ShardReply};

/// Per-shard counters of the acceptor and its connections (exported by the metrics endpoint).
#[derive(Default)]
pub struct ShardStats {
    pub connections: Cell<u64>,
    /// Connections closed at accept by `max.connections` or `max.connections.per.ip`.
    pub connections_refused: Cell<u64>,
    /// When a refused connection was last logged (ms), to rate-limit the warning.
    pub(crate) connections_refused_logged_ms: Cell<i64>,
    /// Connections closed for `connections.max.idle.ms` or a stalled request body.
    pub connections_idle_closed: Cell<u64>,
    /// Connections handed to another shard (`kafka/affinity.rs`).
    pub connections_migrated: Cell<u64>,
}

pub struct Shard {
    pub id: ShardId,
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
    pub(crate) mesh: Rc<Mesh<Shard>>,
    /// In cluster mode, the controller's committed metadata (`None` on a single node).
    pub quorum: Option<Arc<crate::quorum::QuorumView>>,
    /// In cluster mode, this shard's partition replicas (`None` on a single node).
    pub replicas: Option<Rc<replication::Replicas>>,
}

impl Shard {
    /// Every partition log this shard owns: topics' and the consumer-group offsets logs.
    pub fn all_logs(&self) -> Vec<Rc<strom_storage::PartitionLog>> {
        let mut logs: Vec<_> = self.logs.all().into_iter().map(|(_, log)| log).collect();
        logs.extend(self.groups.offsets_logs());
        logs
    }

    /// Runs `op` on shard `to`: directly if that is this shard, else over the mesh.
    pub async fn call(self: &Rc<Self>, to: ShardId, op: ShardOp) -> ShardReply {
        self.call_timed(to, op).await.0
    }

    /// [`Shard::call`], also saying when the owner ran the operation (None if it never did).
    pub async fn call_timed(
        self: &Rc<Self>,
        to: ShardId,
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
            self.mesh.call(to.0, op).await
        }
    }

    /// The counters of this shard's end of the mesh (for the metrics).
    pub fn mesh_counts(&self) -> MeshCounts {
        self.mesh.counts()
    }

    pub fn meta(&self) -> Arc<ClusterMeta> {
        self.meta.load_full()
    }

    /// The shard that coordinates `group_id`: in cluster mode the one that holds its partition
    /// of the offsets topic.
    pub fn group_owner(&self, group_id: &str) -> ShardId {
        if self.replicas.is_some() {
            let p = crate::group::store::partition_of(group_id, self.groups.partitions());
            let topic = crate::group::store::OFFSETS_TOPIC;
            if let Some(owner) = self.meta().owner(topic, crate::ids::PartitionId(p as i32)) {
                return owner;
            }
        }
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
        let calls = self
            .table
            .all()
            .map(|s| self.call(s, ShardOp::Group(make())));
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

impl Handler for Shard {
    type Op = ShardOp;
    type Reply = ShardReply;

    fn cancellable(op: &ShardOp) -> bool {
        op.cancellable()
    }

    fn unavailable() -> ShardReply {
        ShardReply::Unavailable
    }

    async fn execute(self: &Rc<Self>, op: ShardOp) -> ShardReply {
        ops::execute(self, op).await
    }
}
