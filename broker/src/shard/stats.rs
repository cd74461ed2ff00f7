//! What a shard reports to the metrics endpoint: its snapshot, and every shard's at a scrape.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use super::{Shard, ShardOp, ShardReply};
use crate::metrics::{LeaderGauges, PartitionGauges, ProcessInfo, Snapshot};

/// This shard's snapshot (runs on the shard).
pub fn snapshot(shard: &Shard) -> Snapshot {
    let meta = shard.meta();
    let m = &shard.metrics;
    let counters = m.counters(|t| meta.topic(t).is_some());
    let mut partitions: Vec<PartitionGauges> = super::ops::user_partition_logs(shard)
        .into_iter()
        .map(|(topic, partition, log)| PartitionGauges {
            topic,
            partition,
            log_start_offset: log.log_start_offset().0,
            high_watermark: log.high_watermark().0,
            log_end_offset: log.log_end_offset().0,
            durable_end_offset: log.durable_end_offset().0,
            sync_failed: log.sync_failed(),
            size_bytes: log.size_bytes(),
        })
        .collect();
    let logs_sync_failed = shard
        .all_logs()
        .iter()
        .filter(|log| log.sync_failed())
        .count() as u64;
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let mesh = shard.mesh_counts();
    let queue_depth = m.requests_inflight.get() + mesh.running + mesh.queued;
    Snapshot {
        shard: shard.id.0,
        requests: counters.requests,
        topic_bytes: counters.topic_bytes,
        partitions,
        queue_depth,
        cross_shard_messages: mesh.sent,
        cross_shard_channel_full: mesh.channel_full,
        connections_open: m.connections_open.get(),
        connections_accepted: shard.stats.connections.get(),
        connections_refused: shard.stats.connections_refused.get(),
        connections_idle_closed: shard.stats.connections_idle_closed.get(),
        connections_migrated: shard.stats.connections_migrated.get(),
        request_bytes_inflight: shard.request_budget.in_use() as u64,
        request_bytes_budget: shard.request_budget.capacity() as u64,
        request_budget_waits: shard.request_budget.waits_total(),
        fetch_waits: m.fetch_waits.get(),
        mesh_outbox_full: mesh.outbox_full,
        mesh_cancelled: mesh.cancelled,
        committed: shard.groups.committed_offsets(),
        fsync: strom_storage::metrics::fsync_latency_snapshot(),
        sync_failures: strom_storage::metrics::sync_failures(),
        logs_sync_failed,
        stages: counters.stages,
        ..replication_gauges(shard)
    }
}

/// The replication part of the snapshot (cluster mode; empty on a single node).
fn replication_gauges(shard: &Shard) -> Snapshot {
    let Some(replicas) = &shard.replicas else {
        return Snapshot::default();
    };
    let mut leaders = Vec::new();
    let mut followed = 0;
    for ((topic, partition), role) in replicas.roles() {
        match role {
            super::replication::Role::Leader(l) => {
                let state = l.state.borrow();
                let end = l.log.log_end_offset().0;
                let assignment = state.assignment();
                leaders.push(LeaderGauges {
                    topic,
                    partition,
                    replicas: assignment.replicas.len(),
                    isr: assignment.isr.len(),
                    min_insync: state.config().min_insync_replicas,
                    followers: assignment
                        .replicas
                        .iter()
                        .filter(|&&n| Some(n) != assignment.leader)
                        .map(|&n| {
                            let lag = state
                                .follower_fetch_offset(n)
                                .map_or(-1, |o| (end - o.0).max(0));
                            (n.0, lag)
                        })
                        .collect(),
                });
            }
            super::replication::Role::Follower(_) => followed += 1,
        }
    }
    leaders.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Snapshot {
        leaders,
        followed,
        isr_shrinks: replicas.isr_shrinks.get(),
        isr_expands: replicas.isr_expands.get(),
        ..Snapshot::default()
    }
}

/// True once every shard has finished recovery.
pub fn ready(shard: &Shard) -> bool {
    shard.recovered_shards.load(Ordering::Acquire) >= shard.table.shards()
}

/// Snapshots of every shard once all are ready; before that only this shard's, without waiting
/// on shards that are still recovering.
pub async fn collect(shard: &Rc<Shard>) -> Vec<Snapshot> {
    if !ready(shard) {
        return vec![snapshot(shard)];
    }
    let calls = shard.table.all().map(|s| shard.call(s, ShardOp::Metrics));
    futures::future::join_all(calls)
        .await
        .into_iter()
        .filter_map(|r| match r {
            ShardReply::Metrics(s) => Some(*s),
            _ => None,
        })
        .collect()
}

/// The process-wide values of a scrape.
pub fn process_info(shard: &Shard) -> ProcessInfo {
    ProcessInfo {
        version: env!("CARGO_PKG_VERSION"),
        node_id: shard.config.node_id,
        shards: shard.table.shards(),
        shards_recovered: shard
            .recovered_shards
            .load(Ordering::Acquire)
            .min(shard.table.shards()),
        uptime_seconds: shard.started.elapsed().as_secs_f64(),
    }
}
