//! Work a shard does for the partitions it owns, whichever shard received the request.
//! Results carry Kafka error codes: each storage error becomes a code in exactly one place
//! per operation (`produce_error` in `produce.rs`, `read_error`, `delete_records_error`).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{select, select_all};
use kafka_protocol::ResponseError as E;
use strom_storage::{LeaderEpoch, LogConfig, Offset, ReadSlice, StorageError};

use super::Shard;
use crate::clock::now_ms;
use crate::group::{GroupOp, GroupReply};
use crate::ids::{PartitionId, ShardId};
use crate::metadata::controller::{ControllerOp, ControllerReply};
use crate::metadata::controller::{LogOwners, OwnerError};

pub struct ProducePart {
    pub topic: Arc<str>,
    pub partition: i32,
    pub records: Option<Bytes>,
    pub acks: i16,
    /// The request's `timeout_ms`: how long an acks=all produce waits for replication.
    pub timeout_ms: i32,
}

#[derive(Debug, Default, Clone)]
pub struct ProduceResult {
    pub error: i16,
    pub message: Option<String>,
    pub base_offset: i64,
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
    /// Positions in the batch of the records that made it fail (ProduceResponse v8+
    /// `record_errors`): keyless records for a compacted topic.
    pub record_errors: Vec<i32>,
    /// Cluster mode, NOT_LEADER_OR_FOLLOWER: the leader and its epoch (KIP-951 hint).
    pub current_leader: Option<(i32, i32)>,
}

pub struct FetchPart {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub max_bytes: u32,
    pub min_one_batch: bool,
}

/// What the owner shard answers for one partition of a Fetch.
#[derive(Debug, Clone)]
pub struct FetchResult {
    /// Kafka error code (0: none).
    pub error: i16,
    /// The partition's high watermark.
    pub high_watermark: i64,
    /// Its last stable offset (the high watermark: no transactions).
    pub last_stable_offset: i64,
    /// Its log start offset.
    pub log_start_offset: i64,
    /// The records: a byte range of a segment file, sent with sendfile.
    pub slice: Option<ReadSlice>,
    /// A follower replica's log diverges from the leader's (Fetch v12+ `DivergingEpoch`):
    /// (epoch, end offset) of its last epoch on the leader.
    pub diverging_epoch: Option<(i32, i64)>,
    /// NOT_LEADER_OR_FOLLOWER in cluster mode: the leader and its epoch (Fetch v12+
    /// `CurrentLeader`, KIP-951).
    pub current_leader: Option<(i32, i32)>,
}

impl FetchResult {
    /// A result without error or records yet, for a log with this high watermark and start.
    pub fn at(high_watermark: i64, log_start_offset: i64) -> FetchResult {
        FetchResult {
            error: 0,
            high_watermark,
            last_stable_offset: high_watermark,
            log_start_offset,
            slice: None,
            diverging_epoch: None,
            current_leader: None,
        }
    }
}

pub struct OffsetQuery {
    pub topic: Arc<str>,
    pub partition: i32,
    pub timestamp: i64,
}

#[derive(Debug, Clone)]
pub struct OffsetAnswer {
    pub error: i16,
    pub timestamp: i64,
    pub offset: i64,
    pub leader_epoch: i32,
}

/// OffsetForLeaderEpoch for one partition: where `leader_epoch` ends in its log.
pub struct EpochQuery {
    pub topic: Arc<str>,
    pub partition: i32,
    pub leader_epoch: i32,
    /// The partition's current leader epoch.
    pub current_epoch: i32,
}

/// The answer: the largest epoch at or below the one asked for, and where it ends (the log end
/// for the latest epoch); -1 and -1 when nothing is known.
#[derive(Debug, Clone)]
pub struct EpochAnswer {
    pub error: i16,
    pub leader_epoch: i32,
    pub end_offset: i64,
}

/// Takes a client connection over on the shard it moved to.
pub type Adoption = Box<dyn FnOnce(&Rc<Shard>) + Send>;

pub enum ShardOp {
    Produce(Vec<ProducePart>),
    Fetch(Vec<FetchPart>),
    /// Completes when any listed partition's high watermark passes the given offset, or after `wait_ms`.
    WaitForData {
        parts: Vec<(Arc<str>, i32, i64)>,
        wait_ms: u64,
    },
    ListOffsets(Vec<OffsetQuery>),
    EpochEnds(Vec<EpochQuery>),
    /// DeleteRecords: (topic, partition, delete before this offset; -1 = the high watermark).
    DeleteRecords(Vec<(Arc<str>, i32, i64)>),
    /// DescribeLogDirs: the size of each listed partition this shard owns (None: all of them).
    LogDirSizes(Option<Vec<(Arc<str>, Vec<i32>)>>),
    OpenLogs {
        topic: Arc<str>,
        partitions: Vec<PartitionId>,
        config: LogConfig,
        fresh: bool,
    },
    RemoveLogs {
        topic: Arc<str>,
        partitions: Vec<PartitionId>,
    },
    UpdateLogConfig {
        topic: Arc<str>,
        config: LogConfig,
    },
    Controller(ControllerOp),
    /// A follower's fetch (cluster mode) for partitions this shard leads; waits up to
    /// `wait_ms` for records.
    ReplicaFetch {
        node: i32,
        parts: Vec<super::replication::ReplicaFetchPart>,
        wait_ms: u64,
    },
    /// Shard 0: proposes a partition leader's ISR change to the controller quorum.
    ProposeIsr(Box<strom_cluster::controller::AlterIsr>),
    Group(GroupOp),
    /// This shard's metrics snapshot (for the admin server on shard 0).
    Metrics,
    /// Serve this client connection from now on (it moves to the shard its partitions live on).
    /// The closure takes the connection over; the shard does not need to know what it holds.
    AdoptConnection(Adoption),
}

pub enum ShardReply {
    Produce(Vec<ProduceResult>),
    Fetch(Vec<FetchResult>),
    Waited,
    ListOffsets(Vec<OffsetAnswer>),
    EpochEnds(Vec<EpochAnswer>),
    /// Per partition, in request order: (error code, low watermark or -1).
    DeleteRecords(Vec<(i16, i64)>),
    /// (topic, partition, bytes of its segment files), user topics only.
    LogDirSizes(Vec<(Arc<str>, i32, u64)>),
    Done(Result<(), StorageError>),
    Controller(ControllerReply),
    Group(GroupReply),
    Metrics(Box<crate::metrics::Snapshot>),
    /// The target shard is gone (shutting down).
    Unavailable,
}

impl ShardOp {
    /// Whether the caller may stop waiting and have the owner drop the operation midway. Only
    /// waits qualify: dropping any other operation could leave its work half done.
    pub fn cancellable(&self) -> bool {
        matches!(self, ShardOp::WaitForData { .. })
    }
}

pub async fn execute(shard: &Rc<Shard>, op: ShardOp) -> ShardReply {
    use super::produce::produce;
    match op {
        ShardOp::Produce(parts) => {
            let results =
                futures::future::join_all(parts.into_iter().map(|p| produce(shard, p))).await;
            ShardReply::Produce(results)
        }
        ShardOp::Fetch(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                out.push(fetch(shard, p).await);
            }
            ShardReply::Fetch(out)
        }
        ShardOp::WaitForData { parts, wait_ms } => {
            wait_for_data(shard, parts, wait_ms).await;
            ShardReply::Waited
        }
        ShardOp::EpochEnds(qs) => ShardReply::EpochEnds(
            qs.iter()
                .map(|q| match shard.logs.get(&q.topic, q.partition) {
                    // The current leader epoch ends at the log end, whether or not a batch
                    // of it was appended yet (Kafka's leader records its epoch at the log end
                    // when it takes over; a single node never takes over).
                    Some(log) if q.leader_epoch == q.current_epoch => EpochAnswer {
                        error: 0,
                        leader_epoch: q.current_epoch,
                        end_offset: log.log_end_offset().0,
                    },
                    Some(log) => {
                        let (epoch, end) = log.epoch_end_offset(LeaderEpoch(q.leader_epoch));
                        EpochAnswer {
                            error: 0,
                            leader_epoch: epoch.0,
                            end_offset: end.0,
                        }
                    }
                    None => EpochAnswer {
                        error: E::UnknownTopicOrPartition.code(),
                        leader_epoch: -1,
                        end_offset: -1,
                    },
                })
                .collect(),
        ),
        ShardOp::ListOffsets(qs) => {
            let mut out = Vec::with_capacity(qs.len());
            for q in qs {
                out.push(list_offset(shard, q).await);
            }
            ShardReply::ListOffsets(out)
        }
        ShardOp::DeleteRecords(parts) => {
            let results = futures::future::join_all(
                parts
                    .iter()
                    .map(|(t, p, o)| delete_records(shard, t, *p, *o)),
            )
            .await;
            ShardReply::DeleteRecords(results)
        }
        ShardOp::LogDirSizes(filter) => ShardReply::LogDirSizes(log_dir_sizes(shard, filter)),
        ShardOp::OpenLogs {
            topic,
            partitions,
            config,
            fresh,
        } => {
            let opened = open_logs(shard, &topic, &partitions, config, fresh).await;
            if let Some(replicas) = &shard.replicas {
                // Their replicas take their roles now rather than at the next tick.
                replicas.wake.notify(usize::MAX);
            }
            ShardReply::Done(opened)
        }
        ShardOp::RemoveLogs { topic, partitions } => {
            let mut res = Ok(());
            for p in partitions {
                if let Err(e) = shard.logs.remove(&topic, p.0).await {
                    tracing::error!("removing {topic}-{p}: {e}");
                    res = Err(e);
                }
            }
            ShardReply::Done(res)
        }
        ShardOp::UpdateLogConfig { topic, config } => {
            for ((t, _), log) in shard.logs.all() {
                if *t == *topic {
                    log.update_config(config.clone());
                }
            }
            ShardReply::Done(Ok(()))
        }
        ShardOp::ReplicaFetch {
            node,
            parts,
            wait_ms,
        } => ShardReply::Fetch(
            super::replication::serve_replica_fetch(shard, node, parts, wait_ms).await,
        ),
        ShardOp::ProposeIsr(change) => {
            match shard.controller.as_ref().and_then(|c| c.quorum_link()) {
                Some(link) => {
                    let outcome = link
                        .handle
                        .propose(strom_cluster::controller::Command::AlterIsr(*change))
                        .await;
                    tracing::debug!("ISR change: {outcome:?}");
                    ShardReply::Done(Ok(()))
                }
                None => ShardReply::Unavailable,
            }
        }
        ShardOp::Group(op) => ShardReply::Group(super::groups::execute(shard, op).await),
        ShardOp::Metrics => ShardReply::Metrics(Box::new(super::stats::snapshot(shard))),
        ShardOp::AdoptConnection(adopt) => {
            adopt(shard);
            ShardReply::Done(Ok(()))
        }
        ShardOp::Controller(op) => match &shard.controller {
            // Boxed: a controller operation calls shards itself (rare, so the allocation is free).
            Some(c) => ShardReply::Controller(Box::pin(c.apply(shard, op)).await),
            None => ShardReply::Unavailable,
        },
    }
}

async fn open_logs(
    shard: &Rc<Shard>,
    topic: &str,
    partitions: &[PartitionId],
    config: LogConfig,
    fresh: bool,
) -> Result<(), StorageError> {
    for &PartitionId(p) in partitions {
        if fresh {
            // A directory left by a deleted topic of the same name must not leak its data into
            // the new topic.
            let dir = shard.config.data_dir.join(format!("{topic}-{p}"));
            if dir.exists() {
                tracing::warn!("removing stale partition directory {}", dir.display());
                std::fs::remove_dir_all(&dir).map_err(|source| StorageError::Io {
                    op: "remove stale directory",
                    path: dir.clone(),
                    source,
                })?;
            }
        }
        shard
            .logs
            .open_or_create(topic, p, config.clone(), now_ms())
            .await?;
    }
    Ok(())
}

pub(crate) fn read_error(e: &StorageError) -> i16 {
    match e {
        StorageError::OffsetOutOfRange { .. } => E::OffsetOutOfRange.code(),
        _ => E::KafkaStorageError.code(),
    }
}

async fn fetch(shard: &Rc<Shard>, p: FetchPart) -> FetchResult {
    let Some(log) = shard.logs.get(&p.topic, p.partition) else {
        return FetchResult {
            error: E::UnknownTopicOrPartition.code(),
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            slice: None,
            diverging_epoch: None,
            current_leader: None,
        };
    };
    let mut r = FetchResult::at(log.high_watermark().0, log.log_start_offset().0);
    match log
        .read(Offset(p.offset), p.max_bytes, p.min_one_batch)
        .await
    {
        Ok(slice) => r.slice = slice,
        Err(e) => {
            if !matches!(e, StorageError::OffsetOutOfRange { .. }) {
                tracing::error!(
                    "read of {}-{} at {} failed: {e}",
                    p.topic,
                    p.partition,
                    p.offset
                );
            }
            r.error = read_error(&e);
        }
    }
    r
}

async fn wait_for_data(shard: &Rc<Shard>, parts: Vec<(Arc<str>, i32, i64)>, wait_ms: u64) {
    let mut listeners = Vec::new();
    for (topic, p, offset) in &parts {
        let Some(log) = shard.logs.get(topic, *p) else {
            return;
        };
        let listener = log.listen();
        // Checked after listening, so an append in between is not missed.
        if log.high_watermark().0 > *offset || *offset < log.log_start_offset().0 {
            return;
        }
        listeners.push(listener);
    }
    if listeners.is_empty() {
        return;
    }
    let _waiting = crate::metrics::Tracked::start(&shard.metrics.fetch_waits);
    let timer = glommio::timer::Timer::new(Duration::from_millis(wait_ms));
    let any = select_all(listeners.into_iter().map(Box::pin));
    let _ = select(Box::pin(any), Box::pin(timer)).await;
}

async fn list_offset(shard: &Rc<Shard>, q: OffsetQuery) -> OffsetAnswer {
    let meta = shard.meta();
    let epoch = meta
        .topic(&q.topic)
        .and_then(|t| t.partitions.get(q.partition as usize))
        .map_or(-1, |m| m.leader_epoch.0);
    let Some(log) = shard.logs.get(&q.topic, q.partition) else {
        return OffsetAnswer {
            error: E::UnknownTopicOrPartition.code(),
            timestamp: -1,
            offset: -1,
            leader_epoch: -1,
        };
    };
    let ok = |offset: i64, timestamp: i64| OffsetAnswer {
        error: 0,
        timestamp,
        offset,
        leader_epoch: epoch,
    };
    match q.timestamp {
        // LATEST: the high watermark (= last stable offset: no transactions yet).
        -1 => ok(log.high_watermark().0, -1),
        // EARLIEST
        -2 => ok(log.log_start_offset().0, -1),
        // MAX_TIMESTAMP (KIP-734)
        -3 => match log.max_timestamp() {
            Some((o, ts)) => ok(o.0, ts),
            None => ok(-1, -1),
        },
        ts if ts < 0 => OffsetAnswer {
            error: E::InvalidRequest.code(),
            timestamp: -1,
            offset: -1,
            leader_epoch: epoch,
        },
        ts => match log.offset_for_timestamp(ts).await {
            Ok(Some((o, found))) => ok(o.0, found),
            Ok(None) => ok(-1, -1),
            Err(e) => OffsetAnswer {
                error: read_error(&e),
                timestamp: -1,
                offset: -1,
                leader_epoch: epoch,
            },
        },
    }
}

fn delete_records_error(e: &StorageError) -> i16 {
    match e {
        StorageError::OffsetOutOfRange { .. } => E::OffsetOutOfRange.code(),
        _ => E::KafkaStorageError.code(),
    }
}

/// Moves the log start offset of one partition to `offset` (-1: the high watermark) and answers
/// (error code, low watermark); the low watermark is -1 on error, as in Kafka.
async fn delete_records(shard: &Rc<Shard>, topic: &str, partition: i32, offset: i64) -> (i16, i64) {
    let Some(log) = shard.logs.get(topic, partition) else {
        return (E::UnknownTopicOrPartition.code(), -1);
    };
    let before = match offset {
        -1 => log.high_watermark(),
        o if o < -1 => return (E::OffsetOutOfRange.code(), -1),
        o => Offset(o),
    };
    match log.delete_records(before).await {
        Ok(low_watermark) => {
            tracing::info!(
                "{topic}-{partition}: records before {} deleted, log start offset {}",
                before.0,
                low_watermark.0
            );
            (0, low_watermark.0)
        }
        Err(e) => {
            if matches!(e, StorageError::OffsetOutOfRange { .. }) {
                tracing::debug!(
                    "delete records of {topic}-{partition} before {}: {e}",
                    before.0
                );
            } else {
                tracing::error!(
                    "delete records of {topic}-{partition} before {} failed: {e}",
                    before.0
                );
            }
            (delete_records_error(&e), -1)
        }
    }
}

/// The user-topic partitions this shard has open. Only partitions of topics in the metadata:
/// internal logs and the logs of a topic being created or deleted are left out.
pub(crate) fn user_partition_logs(
    shard: &Shard,
) -> Vec<(Arc<str>, i32, Rc<strom_storage::PartitionLog>)> {
    let meta = shard.meta();
    shard
        .logs
        .all()
        .into_iter()
        .filter_map(|((topic, p), log)| {
            let (name, _) = meta.topics.get_key_value(topic.as_str())?;
            meta.owner(name, PartitionId(p))?;
            Some((name.clone(), p, log))
        })
        .collect()
}

/// Sizes of the user-topic partitions this shard has open, or of those listed in `filter`
/// (partitions that are not open here are left out).
fn log_dir_sizes(
    shard: &Rc<Shard>,
    filter: Option<Vec<(Arc<str>, Vec<i32>)>>,
) -> Vec<(Arc<str>, i32, u64)> {
    let meta = shard.meta();
    match filter {
        None => user_partition_logs(shard)
            .into_iter()
            .map(|(name, p, log)| (name, p, log.size_bytes()))
            .collect(),
        Some(topics) => topics
            .into_iter()
            .flat_map(|(topic, partitions)| partitions.into_iter().map(move |p| (topic.clone(), p)))
            .filter_map(|(topic, p)| {
                meta.owner(&topic, PartitionId(p))?;
                let log = shard.logs.get(&topic, p)?;
                Some((topic, p, log.size_bytes()))
            })
            .collect(),
    }
}

/// The controller reaches partition owners through the shard router.
impl LogOwners for Rc<Shard> {
    async fn open_logs(
        &self,
        owner: ShardId,
        topic: Arc<str>,
        partitions: Vec<PartitionId>,
        config: LogConfig,
        fresh: bool,
    ) -> Result<(), OwnerError> {
        let op = ShardOp::OpenLogs {
            topic,
            partitions,
            config,
            fresh,
        };
        done(owner, self.call(owner, op).await)
    }

    async fn remove_logs(
        &self,
        owner: ShardId,
        topic: Arc<str>,
        partitions: Vec<PartitionId>,
    ) -> Result<(), OwnerError> {
        let op = ShardOp::RemoveLogs { topic, partitions };
        done(owner, self.call(owner, op).await)
    }

    async fn update_log_config(&self, owner: ShardId, topic: Arc<str>, config: LogConfig) {
        let _ = self
            .call(owner, ShardOp::UpdateLogConfig { topic, config })
            .await;
    }

    async fn topics_deleted(&self, topics: Vec<Arc<str>>) {
        self.group_call_all(|| GroupOp::TopicsDeleted {
            topics: topics.clone(),
        })
        .await;
    }
}

/// The outcome of an operation answered with [`ShardReply::Done`].
fn done(owner: ShardId, reply: ShardReply) -> Result<(), OwnerError> {
    match reply {
        ShardReply::Done(r) => Ok(r?),
        _ => Err(OwnerError::Unavailable(owner)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A storage error that is neither a range nor a batch problem (shared with `produce.rs`).
    pub(crate) fn io_error() -> StorageError {
        StorageError::Io {
            op: "fdatasync",
            path: PathBuf::from("t-0/00000000000000000000.log"),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        }
    }

    #[test]
    fn read_and_delete_failures_tell_out_of_range_from_storage_errors() {
        let range = StorageError::OffsetOutOfRange {
            requested: 10,
            log_start: 0,
            log_end: 5,
        };
        assert_eq!(read_error(&range), E::OffsetOutOfRange.code());
        assert_eq!(read_error(&io_error()), E::KafkaStorageError.code());
        assert_eq!(delete_records_error(&range), E::OffsetOutOfRange.code());
        assert_eq!(
            delete_records_error(&io_error()),
            E::KafkaStorageError.code()
        );
    }

    #[test]
    fn only_waits_may_be_cancelled() {
        let wait = ShardOp::WaitForData {
            parts: Vec::new(),
            wait_ms: 1,
        };
        assert!(wait.cancellable());
        assert!(!ShardOp::Produce(Vec::new()).cancellable());
        assert!(!ShardOp::RemoveLogs {
            topic: Arc::from("t"),
            partitions: Vec::new(),
        }
        .cancellable());
    }
}
