//! The controller: the single writer of cluster metadata, running on shard 0.
//!
//! Every topic change is validated, persisted (`store::save`), carried out on the owning shards
//! (open or remove partition logs) and then published as a new `ClusterMeta`. Changes are
//! serialized by one permit, so two CreateTopics for the same name cannot both succeed.
//! A change whose log opens fail on some shard is undone: the logs it opened are removed and
//! the previous metadata is persisted again, so no topic stays half-created.
//! The controller also hands out producer ids (`producer_ids`), outside that permit.
//!
//! It reaches the shards that own partitions only through [`LogOwners`] (the shard router
//! implements it; the tests below use a fake), and knows nothing else about shards.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use glommio::sync::Semaphore;
use kafka_protocol::ResponseError as E;
use strom_storage::{LogConfig, StorageError};

use super::model::{ClusterMeta, MetadataSnapshot, TopicRecord};
use super::producer_ids::{ProducerIdError, ProducerIds};
use super::store;
use super::table::ShardTable;
use crate::clock::now_ms;
use crate::config::topic::{self as topic_config, TopicDefaults};
use crate::config::ControllerStep;
use crate::ids::{PartitionId, ProducerId, ShardId};

mod cluster;
pub use cluster::QuorumLink;

/// Kafka's limit on topic name length.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Partitions one topic may have (bounds metadata and per-request work).
pub const TOPIC_PARTITIONS_MAX: i32 = 10_000;

/// The shard the controller runs on.
pub const CONTROLLER_SHARD: ShardId = ShardId(0);

/// Why work on a partition owner failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OwnerError {
    /// The owner's storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The owner could not be reached (shutting down, or its queue is full).
    #[error("shard {0} is unavailable")]
    Unavailable(ShardId),
}

/// How the controller reaches the shards that own partitions.
pub trait LogOwners {
    /// Opens partitions of `topic` on shard `owner`, creating them if they do not exist
    /// (`fresh`: a new topic or partition, so a directory left by a deleted topic of the same
    /// name is removed first).
    fn open_logs(
        &self,
        owner: ShardId,
        topic: Arc<str>,
        partitions: Vec<PartitionId>,
        config: LogConfig,
        fresh: bool,
    ) -> impl Future<Output = Result<(), OwnerError>>;
    /// Closes partitions of `topic` on shard `owner` and deletes their directories.
    fn remove_logs(
        &self,
        owner: ShardId,
        topic: Arc<str>,
        partitions: Vec<PartitionId>,
    ) -> impl Future<Output = Result<(), OwnerError>>;
    /// Gives every open partition of `topic` on shard `owner` a new configuration.
    fn update_log_config(
        &self,
        owner: ShardId,
        topic: Arc<str>,
        config: LogConfig,
    ) -> impl Future<Output = ()>;
    /// Tells the group coordinators of every shard that `topics` were deleted.
    fn topics_deleted(&self, topics: Vec<Arc<str>>) -> impl Future<Output = ()>;
}

/// What the controller works with besides the shards: where metadata is persisted, how
/// partitions are placed, and the published view it replaces with every change.
pub struct ControllerContext {
    /// The data directory (metadata lives in its `__strom_meta`).
    pub data_dir: PathBuf,
    /// Topic settings that apply where a topic has no override.
    pub topic_defaults: TopicDefaults,
    /// `test.fault.controller.abort.at`.
    pub abort_at: Option<ControllerStep>,
    /// Which shard owns a partition.
    pub table: ShardTable,
    /// The metadata every shard reads.
    pub meta: Arc<ArcSwap<ClusterMeta>>,
    /// In cluster mode, the controller quorum: topic changes become its commands, and
    /// [`Controller::adopt`] makes the local metadata follow its image.
    pub quorum: Option<QuorumLink>,
}

/// A refused or failed controller operation, with the Kafka error code the client gets.
#[derive(Debug, Clone)]
pub struct ControllerError {
    pub code: i16,
    pub message: String,
}

/// What a successful controller operation returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ControllerOutput {
    /// A metadata change was made (or validated).
    Done,
    /// InitProducerId: the producer's id and epoch.
    ProducerId {
        /// The producer's id.
        id: ProducerId,
        /// Its epoch.
        epoch: i16,
    },
}

pub type ControllerReply = Result<ControllerOutput, ControllerError>;

fn unknown_topic(name: &str) -> ControllerError {
    err(
        E::UnknownTopicOrPartition,
        format!("Topic '{name}' does not exist"),
    )
}

fn err(code: E, message: impl Into<String>) -> ControllerError {
    ControllerError {
        code: code.code(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ConfigOpKind {
    Set,
    Delete,
    Append,
    Subtract,
}

pub enum ControllerOp {
    CreateTopic {
        name: String,
        partitions: i32,
        /// Replicas per partition; -1 for `default.replication.factor` (cluster mode only: a
        /// single node has one replica of everything).
        replication_factor: i16,
        overrides: BTreeMap<String, String>,
        validate_only: bool,
    },
    DeleteTopic {
        name: String,
    },
    CreatePartitions {
        name: String,
        count: i32,
        validate_only: bool,
    },
    /// `replace`: AlterConfigs semantics (the given set becomes the whole override set);
    /// otherwise IncrementalAlterConfigs.
    AlterConfigs {
        name: String,
        ops: Vec<(String, ConfigOpKind, Option<String>)>,
        replace: bool,
        validate_only: bool,
    },
    /// A producer id for an idempotent producer; `current` is the id and epoch of a producer
    /// that already has one and asks for an epoch bump (KIP-360).
    InitProducerId {
        current: Option<(ProducerId, i16)>,
    },
}

/// Kafka's topic name rules: 1..=249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Topic name is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("Topic name cannot be \"{name}\""));
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return Err(format!(
            "Topic name is longer than {TOPIC_NAME_BYTES_MAX} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "Topic name \"{name}\" contains the illegal character {c:?}"
        ));
    }
    Ok(())
}

/// The single writer of cluster metadata (one per broker, on shard 0).
pub struct Controller {
    ctx: ControllerContext,
    lock: Semaphore,
    snapshot: RefCell<Option<MetadataSnapshot>>,
    producer_ids: ProducerIds,
    /// Topics whose deletion is persisted in `__strom_meta/deleting` and whose logs are not yet
    /// removed everywhere (startup empties the file, so this starts empty).
    deleting: RefCell<Vec<String>>,
}

impl Controller {
    /// A controller that persists into `ctx.data_dir` and publishes into `ctx.meta`.
    pub fn new(ctx: ControllerContext, producer_ids: ProducerIds) -> Controller {
        Controller {
            ctx,
            lock: Semaphore::new(1),
            snapshot: RefCell::new(None),
            producer_ids,
            deleting: RefCell::new(Vec::new()),
        }
    }

    /// In cluster mode, the controller quorum it follows.
    pub fn quorum_link(&self) -> Option<QuorumLink> {
        self.ctx.quorum.clone()
    }

    /// Persists the list of topics being deleted.
    async fn save_deleting(&self) -> Result<(), ControllerError> {
        let topics = self.deleting.borrow().clone();
        store::save_deleting(&self.ctx.data_dir, &topics)
            .await
            .map_err(|e| {
                err(
                    E::KafkaStorageError,
                    format!("persisting the topics being deleted: {e}"),
                )
            })
    }

    fn fault(&self, step: ControllerStep) {
        if self.ctx.abort_at == Some(step) {
            tracing::error!(
                "test.fault.controller.abort.at={}: aborting on purpose",
                step.name()
            );
            std::process::abort();
        }
    }

    /// Carries out `op`, reaching partition owners through `owners`.
    pub async fn apply(&self, owners: &impl LogOwners, op: ControllerOp) -> ControllerReply {
        match op {
            // Producer ids have their own persistence and do not wait for metadata changes.
            ControllerOp::InitProducerId { current } => {
                match self.producer_ids.init(current, now_ms()).await {
                    Ok((id, epoch)) => Ok(ControllerOutput::ProducerId { id, epoch }),
                    Err(e @ ProducerIdError::Fenced { .. }) => {
                        Err(err(E::ProducerFenced, e.to_string()))
                    }
                    // Retriable: clients ask again once the quorum has a leader.
                    Err(e @ ProducerIdError::QuorumUnavailable(_)) => {
                        Err(err(E::CoordinatorNotAvailable, e.to_string()))
                    }
                    Err(e) => {
                        tracing::error!("allocating a producer id: {e}");
                        Err(err(E::KafkaStorageError, e.to_string()))
                    }
                }
            }
            op => match &self.ctx.quorum {
                Some(link) => self
                    .cluster_change(link, op)
                    .await
                    .map(|()| ControllerOutput::Done),
                None => self
                    .change_metadata(owners, op)
                    .await
                    .map(|()| ControllerOutput::Done),
            },
        }
    }

    async fn change_metadata(
        &self,
        owners: &impl LogOwners,
        op: ControllerOp,
    ) -> Result<(), ControllerError> {
        let _permit = self
            .lock
            .acquire_permit(1)
            .await
            .map_err(|e| err(E::UnknownServerError, e.to_string()))?;
        let current = self.current();
        let mut next = current.clone();
        next.version += 1;
        // Log work to do on owners once the new snapshot is durable.
        let mut after: Vec<(ShardId, LogWork)> = Vec::new();
        match op {
            ControllerOp::CreateTopic {
                name,
                partitions,
                overrides,
                validate_only,
                ..
            } => {
                let exists = current.topics.iter().any(|t| t.name == name);
                check_new_topic(&name, exists, partitions, &overrides)?;
                if validate_only {
                    return Ok(());
                }
                let shards: Vec<u32> = (0..partitions)
                    .map(|p| self.ctx.table.assign(&name, p))
                    .collect();
                let id: [u8; 16] = rand::random();
                let record = TopicRecord {
                    name,
                    id,
                    partition_shards: shards,
                    partition_epochs: vec![0; partitions as usize],
                    overrides,
                };
                after.extend(self.open_work(&record, 0));
                next.topics.push(record);
            }
            ControllerOp::DeleteTopic { name } => {
                let Some(i) = current.topics.iter().position(|t| t.name == name) else {
                    return Err(unknown_topic(&name));
                };
                let record = next.topics.remove(i);
                let topic: Arc<str> = Arc::from(record.name.as_str());
                let mut by_shard: BTreeMap<ShardId, Vec<PartitionId>> = BTreeMap::new();
                for (p, &s) in record.partition_shards.iter().enumerate() {
                    by_shard
                        .entry(self.ctx.table.effective(s))
                        .or_default()
                        .push(PartitionId(p as i32));
                }
                for (s, partitions) in by_shard {
                    after.push((
                        s,
                        LogWork::Remove {
                            topic: topic.clone(),
                            partitions,
                        },
                    ));
                }
            }
            ControllerOp::CreatePartitions {
                name,
                count,
                validate_only,
            } => {
                let Some(t) = next.topics.iter_mut().find(|t| t.name == name) else {
                    return Err(unknown_topic(&name));
                };
                let have = t.partition_shards.len() as i32;
                if count <= have {
                    return Err(err(E::InvalidPartitions, format!("Topic currently has {have} partitions, {count} would not be an increase.")));
                }
                if count > TOPIC_PARTITIONS_MAX {
                    return Err(err(
                        E::InvalidPartitions,
                        format!("At most {TOPIC_PARTITIONS_MAX} partitions"),
                    ));
                }
                if validate_only {
                    return Ok(());
                }
                for p in have..count {
                    t.partition_shards.push(self.ctx.table.assign(&t.name, p));
                    t.partition_epochs.push(0);
                }
                after.extend(self.open_work(t, have as usize));
            }
            ControllerOp::AlterConfigs {
                name,
                ops,
                replace,
                validate_only,
            } => {
                let Some(t) = next.topics.iter_mut().find(|t| t.name == name) else {
                    return Err(unknown_topic(&name));
                };
                let overrides = self.changed_overrides(&t.overrides, ops, replace)?;
                if validate_only {
                    return Ok(());
                }
                t.overrides = overrides;
                let config = self.ctx.topic_defaults.resolve(&t.overrides).log_config();
                let topic: Arc<str> = Arc::from(t.name.as_str());
                let owners: std::collections::BTreeSet<ShardId> = t
                    .partition_shards
                    .iter()
                    .map(|&s| self.ctx.table.effective(s))
                    .collect();
                for s in owners {
                    after.push((
                        s,
                        LogWork::UpdateConfig {
                            topic: topic.clone(),
                            config: config.clone(),
                        },
                    ));
                }
            }
            ControllerOp::InitProducerId { .. } => {
                return Err(err(
                    E::UnknownServerError,
                    "InitProducerId is not a metadata change",
                ));
            }
        }
        self.commit(owners, &current, next, after).await
    }

    /// Makes `next` the metadata: records deletions, persists it, opens new logs (undoing all
    /// of it if an open fails), publishes it, then updates configs and removes deleted logs.
    /// The caller holds the metadata permit.
    async fn commit(
        &self,
        owners: &impl LogOwners,
        current: &MetadataSnapshot,
        next: MetadataSnapshot,
        after: Vec<(ShardId, LogWork)>,
    ) -> Result<(), ControllerError> {
        // A deletion is recorded before the snapshot that drops the topic, so that the startup
        // check can tell the directories it leaves from data whose metadata was lost.
        let deleting: Vec<String> = after
            .iter()
            .filter_map(|(_, work)| match work {
                LogWork::Remove { topic, .. } => Some(topic.to_string()),
                _ => None,
            })
            .filter(|t| !self.deleting.borrow().contains(t))
            .collect();
        if !deleting.is_empty() {
            self.deleting.borrow_mut().extend(deleting.iter().cloned());
            if let Err(e) = self.save_deleting().await {
                self.deleting.borrow_mut().retain(|t| !deleting.contains(t));
                return Err(e);
            }
            self.fault(ControllerStep::DeletingRecorded);
        }
        store::save(&self.ctx.data_dir, &next)
            .await
            .map_err(|e| err(E::KafkaStorageError, format!("persisting metadata: {e}")))?;
        if !deleting.is_empty() {
            self.fault(ControllerStep::SnapshotSaved);
        }
        // Opening logs must happen before the topic is published; removal after.
        let (opens, rest): (Vec<_>, Vec<_>) = after
            .into_iter()
            .partition(|(_, work)| matches!(work, LogWork::Open { .. }));
        let opened = futures::future::join_all(opens.iter().map(|(s, work)| match work {
            LogWork::Open {
                topic,
                partitions,
                config,
            } => owners.open_logs(*s, topic.clone(), partitions.clone(), config.clone(), true),
            _ => unreachable!("partitioned above"),
        }))
        .await;
        if let Some(e) = opened.iter().find_map(|r| r.as_ref().err()) {
            let message = format!("opening the new partitions: {e}");
            self.undo_opens(owners, &opens, current).await;
            return Err(err(E::KafkaStorageError, message));
        }
        for (s, work) in rest.iter() {
            if let LogWork::UpdateConfig { topic, config } = work {
                owners
                    .update_log_config(*s, topic.clone(), config.clone())
                    .await;
            }
        }
        self.publish(next);
        let meta = self.ctx.meta.load();
        let mut deleted: Vec<Arc<str>> = Vec::new();
        let mut removed_all = true;
        for (s, work) in rest {
            if let LogWork::Remove { topic, partitions } = work {
                if meta.topic(&topic).is_none() && !deleted.contains(&topic) {
                    deleted.push(topic.clone());
                }
                removed_all &= owners.remove_logs(s, topic, partitions).await.is_ok();
            }
        }
        if !deleting.is_empty() && removed_all {
            // Every directory is gone: the entries are no longer needed. If this write fails
            // they stay, which is harmless (startup removes nothing the metadata lists).
            self.deleting.borrow_mut().retain(|t| !deleting.contains(t));
            if let Err(e) = self.save_deleting().await {
                tracing::warn!("{}", e.message);
            }
        }
        if !deleted.is_empty() {
            // Committed offsets of a deleted topic go with it.
            owners.topics_deleted(deleted).await;
        }
        Ok(())
    }

    /// Undoes a change whose log opens failed on some shard: removes the logs it opened and
    /// persists `previous` again (with a newer version), so the change is gone after a restart
    /// too. If that write fails, the persisted metadata keeps the change and the next start opens
    /// its logs: the topic is then complete, never half-created.
    async fn undo_opens(
        &self,
        owners: &impl LogOwners,
        opens: &[(ShardId, LogWork)],
        previous: &MetadataSnapshot,
    ) {
        for (s, work) in opens {
            if let LogWork::Open {
                topic, partitions, ..
            } = work
            {
                if let Err(e) = owners
                    .remove_logs(*s, topic.clone(), partitions.clone())
                    .await
                {
                    tracing::warn!("undoing the creation of {topic} on shard {s}: {e}");
                }
            }
        }
        let mut restored = previous.clone();
        restored.version += 2;
        match store::save(&self.ctx.data_dir, &restored).await {
            Ok(()) => *self.snapshot.borrow_mut() = Some(restored),
            Err(e) => tracing::error!(
                "persisting the metadata without a change that failed: {e}; \
                 the change is kept and completed at the next start"
            ),
        }
    }

    /// Makes `next` the metadata every shard reads.
    fn publish(&self, next: MetadataSnapshot) {
        self.ctx.meta.store(Arc::new(ClusterMeta::from_snapshot(
            &next,
            &self.ctx.table,
            &self.ctx.topic_defaults,
        )));
        *self.snapshot.borrow_mut() = Some(next);
    }

    /// The log work that opens partitions `from..` of `t`, grouped by owner.
    fn open_work(&self, t: &TopicRecord, from: usize) -> Vec<(ShardId, LogWork)> {
        let all: Vec<usize> = (from..t.partition_shards.len()).collect();
        self.open_work_of(t, &all)
    }

    fn current(&self) -> MetadataSnapshot {
        if let Some(s) = self.snapshot.borrow().as_ref() {
            return s.clone();
        }
        // First change since start: rebuild the persisted form from the published view.
        let meta = self.ctx.meta.load_full();
        MetadataSnapshot {
            version: meta.version,
            topics: meta
                .topics
                .values()
                .map(|t| TopicRecord {
                    name: t.name.to_string(),
                    id: t.id,
                    partition_shards: t.recorded_shards.clone(),
                    partition_epochs: t.partitions.iter().map(|p| p.leader_epoch.0).collect(),
                    overrides: t.overrides.clone(),
                })
                .collect(),
        }
    }
}

/// Work on a partition owner that a metadata change needs.
enum LogWork {
    Open {
        topic: Arc<str>,
        partitions: Vec<PartitionId>,
        config: LogConfig,
    },
    Remove {
        topic: Arc<str>,
        partitions: Vec<PartitionId>,
    },
    UpdateConfig {
        topic: Arc<str>,
        config: LogConfig,
    },
}

/// The checks of a new topic, on a single node and in a cluster: a valid name not in use, a
/// partition count in `1..=TOPIC_PARTITIONS_MAX`, valid config overrides.
fn check_new_topic(
    name: &str,
    exists: bool,
    partitions: i32,
    overrides: &BTreeMap<String, String>,
) -> Result<(), ControllerError> {
    validate_topic_name(name).map_err(|m| err(E::InvalidTopicException, m))?;
    if exists {
        return Err(err(
            E::TopicAlreadyExists,
            format!("Topic '{name}' already exists."),
        ));
    }
    check_partition_count(partitions)?;
    validate_overrides(overrides)
}

fn check_partition_count(partitions: i32) -> Result<(), ControllerError> {
    if (1..=TOPIC_PARTITIONS_MAX).contains(&partitions) {
        Ok(())
    } else {
        Err(err(
            E::InvalidPartitions,
            format!("Number of partitions must be in 1..={TOPIC_PARTITIONS_MAX}"),
        ))
    }
}

fn validate_overrides(overrides: &BTreeMap<String, String>) -> Result<(), ControllerError> {
    for (k, v) in overrides {
        topic_config::validate(k, v).map_err(|m| err(E::InvalidConfig, m))?;
    }
    Ok(())
}

impl Controller {
    /// A topic's config overrides after AlterConfigs (`replace`: the given set becomes the whole
    /// set) or IncrementalAlterConfigs, validated.
    fn changed_overrides(
        &self,
        current: &BTreeMap<String, String>,
        ops: Vec<(String, ConfigOpKind, Option<String>)>,
        replace: bool,
    ) -> Result<BTreeMap<String, String>, ControllerError> {
        let mut overrides = if replace {
            BTreeMap::new()
        } else {
            current.clone()
        };
        for (key, kind, value) in ops {
            apply_config_op(&mut overrides, &key, kind, value, &self.ctx.topic_defaults)?;
        }
        validate_overrides(&overrides)?;
        Ok(overrides)
    }
}

fn apply_config_op(
    overrides: &mut BTreeMap<String, String>,
    key: &str,
    kind: ConfigOpKind,
    value: Option<String>,
    defaults: &TopicDefaults,
) -> Result<(), ControllerError> {
    match kind {
        ConfigOpKind::Set => {
            let v = value.ok_or_else(|| err(E::InvalidConfig, format!("null value for {key}")))?;
            overrides.insert(key.to_string(), v);
        }
        ConfigOpKind::Delete => {
            topic_config::validate(key, "0")
                .or_else(|m| {
                    if m.starts_with("Unknown") {
                        Err(m)
                    } else {
                        Ok(())
                    }
                })
                .map_err(|m| err(E::InvalidConfig, m))?;
            overrides.remove(key);
        }
        ConfigOpKind::Append | ConfigOpKind::Subtract => {
            if key != "cleanup.policy" {
                return Err(err(
                    E::InvalidConfig,
                    format!("{key} is not a list; APPEND/SUBTRACT apply to list configs only"),
                ));
            }
            let current = overrides
                .get(key)
                .cloned()
                .unwrap_or_else(|| defaults.resolve(&BTreeMap::new()).cleanup_policy);
            let mut items: Vec<String> = current
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            for v in value
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                if kind == ConfigOpKind::Append {
                    if !items.iter().any(|i| i == v) {
                        items.push(v.to_string());
                    }
                } else {
                    items.retain(|i| i != v);
                }
            }
            overrides.insert(key.to_string(), items.join(","));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
