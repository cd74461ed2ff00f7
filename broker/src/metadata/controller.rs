//! The controller: the single writer of cluster metadata, running on shard 0.
//!
//! Every topic change is validated, persisted (`store::save`), carried out on the owning shards
//! (open or remove partition logs) and then published as a new `ClusterMeta`. Changes are
//! serialized by one permit, so two CreateTopics for the same name cannot both succeed.
//! The controller also hands out producer ids (`producer_ids`), outside that permit.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use glommio::sync::Semaphore;
use kafka_protocol::ResponseError as E;

use super::model::{ClusterMeta, MetadataSnapshot, TopicRecord};
use super::producer_ids::{ProducerIdError, ProducerIds};
use super::store;
use crate::group::GroupOp;
use crate::clock::now_ms;
use crate::shard::{Shard, ShardOp, ShardReply};
use crate::topic_config;

/// Kafka's limit on topic name length.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Partitions one topic may have (bounds metadata and per-request work).
pub const TOPIC_PARTITIONS_MAX: i32 = 10_000;

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
    ProducerId { id: i64, epoch: i16 },
}

pub type ControllerReply = Result<ControllerOutput, ControllerError>;

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
        current: Option<(i64, i16)>,
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

/// Steps of a topic deletion after which `test.fault.controller.abort.at` aborts the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerStep {
    /// The topic is listed in `__strom_meta/deleting`; the snapshot still has it.
    DeletingRecorded,
    /// The snapshot without the topic is durable; its partition directories still exist.
    SnapshotSaved,
}

impl ControllerStep {
    pub fn parse(name: &str) -> Option<ControllerStep> {
        match name {
            "deleting-recorded" => Some(ControllerStep::DeletingRecorded),
            "snapshot-saved" => Some(ControllerStep::SnapshotSaved),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ControllerStep::DeletingRecorded => "deleting-recorded",
            ControllerStep::SnapshotSaved => "snapshot-saved",
        }
    }
}

pub struct Controller {
    lock: Semaphore,
    snapshot: RefCell<Option<MetadataSnapshot>>,
    producer_ids: ProducerIds,
    /// Topics whose deletion is persisted in `__strom_meta/deleting` and whose logs are not yet
    /// removed everywhere (startup empties the file, so this starts empty).
    deleting: RefCell<Vec<String>>,
}

impl Controller {
    pub fn new(producer_ids: ProducerIds) -> Controller {
        Controller {
            lock: Semaphore::new(1),
            snapshot: RefCell::new(None),
            producer_ids,
            deleting: RefCell::new(Vec::new()),
        }
    }

    /// Persists the list of topics being deleted.
    async fn save_deleting(&self, shard: &Shard) -> Result<(), ControllerError> {
        let topics = self.deleting.borrow().clone();
        store::save_deleting(&shard.config.data_dir, &topics)
            .await
            .map_err(|e| {
                err(
                    E::KafkaStorageError,
                    format!("persisting the topics being deleted: {e}"),
                )
            })
    }

    fn fault(shard: &Shard, step: ControllerStep) {
        if shard.config.faults.controller_abort_at == Some(step) {
            tracing::error!(
                "test.fault.controller.abort.at={}: aborting on purpose",
                step.name()
            );
            std::process::abort();
        }
    }

    pub async fn apply(&self, shard: &Rc<Shard>, op: ControllerOp) -> ControllerReply {
        match op {
            // Producer ids have their own persistence and do not wait for metadata changes.
            ControllerOp::InitProducerId { current } => {
                match self.producer_ids.init(current, now_ms()).await {
                    Ok((id, epoch)) => Ok(ControllerOutput::ProducerId { id, epoch }),
                    Err(e @ ProducerIdError::Fenced { .. }) => {
                        Err(err(E::ProducerFenced, e.to_string()))
                    }
                    Err(e) => {
                        tracing::error!("allocating a producer id: {e}");
                        Err(err(E::KafkaStorageError, e.to_string()))
                    }
                }
            }
            op => self
                .change_metadata(shard, op)
                .await
                .map(|()| ControllerOutput::Done),
        }
    }

    async fn change_metadata(
        &self,
        shard: &Rc<Shard>,
        op: ControllerOp,
    ) -> Result<(), ControllerError> {
        let _permit = self
            .lock
            .acquire_permit(1)
            .await
            .map_err(|e| err(E::UnknownServerError, e.to_string()))?;
        let current = self.current(shard);
        let mut next = current.clone();
        next.version += 1;
        // Log work to do on owners once the new snapshot is durable.
        let mut after: Vec<(usize, ShardOp)> = Vec::new();
        match op {
            ControllerOp::CreateTopic {
                name,
                partitions,
                overrides,
                validate_only,
            } => {
                validate_topic_name(&name).map_err(|m| err(E::InvalidTopicException, m))?;
                if current.topics.iter().any(|t| t.name == name) {
                    return Err(err(
                        E::TopicAlreadyExists,
                        format!("Topic '{name}' already exists."),
                    ));
                }
                if !(1..=TOPIC_PARTITIONS_MAX).contains(&partitions) {
                    return Err(err(
                        E::InvalidPartitions,
                        format!("Number of partitions must be in 1..={TOPIC_PARTITIONS_MAX}"),
                    ));
                }
                for (k, v) in &overrides {
                    topic_config::validate(k, v).map_err(|m| err(E::InvalidConfig, m))?;
                }
                if validate_only {
                    return Ok(());
                }
                let shards: Vec<u32> = (0..partitions)
                    .map(|p| shard.table.assign(&name, p))
                    .collect();
                let id: [u8; 16] = rand::random();
                let record = TopicRecord {
                    name,
                    id,
                    partition_shards: shards,
                    partition_epochs: vec![0; partitions as usize],
                    overrides,
                };
                after.extend(open_ops(shard, &record, 0, true));
                next.topics.push(record);
            }
            ControllerOp::DeleteTopic { name } => {
                let Some(i) = current.topics.iter().position(|t| t.name == name) else {
                    return Err(err(
                        E::UnknownTopicOrPartition,
                        format!("Topic '{name}' does not exist"),
                    ));
                };
                let record = next.topics.remove(i);
                let topic: Arc<str> = Arc::from(record.name.as_str());
                let mut by_shard: BTreeMap<usize, Vec<i32>> = BTreeMap::new();
                for (p, &s) in record.partition_shards.iter().enumerate() {
                    by_shard
                        .entry(shard.table.effective(s))
                        .or_default()
                        .push(p as i32);
                }
                for (s, partitions) in by_shard {
                    after.push((
                        s,
                        ShardOp::RemoveLogs {
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
                    return Err(err(
                        E::UnknownTopicOrPartition,
                        format!("Topic '{name}' does not exist"),
                    ));
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
                    t.partition_shards.push(shard.table.assign(&t.name, p));
                    t.partition_epochs.push(0);
                }
                after.extend(open_ops(shard, t, have as usize, true));
            }
            ControllerOp::AlterConfigs {
                name,
                ops,
                replace,
                validate_only,
            } => {
                let Some(t) = next.topics.iter_mut().find(|t| t.name == name) else {
                    return Err(err(
                        E::UnknownTopicOrPartition,
                        format!("Topic '{name}' does not exist"),
                    ));
                };
                let mut overrides = if replace {
                    BTreeMap::new()
                } else {
                    t.overrides.clone()
                };
                for (key, kind, value) in ops {
                    apply_config_op(&mut overrides, &key, kind, value, shard)?;
                }
                for (k, v) in &overrides {
                    topic_config::validate(k, v).map_err(|m| err(E::InvalidConfig, m))?;
                }
                if validate_only {
                    return Ok(());
                }
                t.overrides = overrides;
                let config = shard
                    .config
                    .topic_defaults
                    .resolve(&t.overrides)
                    .log_config();
                let topic: Arc<str> = Arc::from(t.name.as_str());
                let owners: std::collections::BTreeSet<usize> = t
                    .partition_shards
                    .iter()
                    .map(|&s| shard.table.effective(s))
                    .collect();
                for s in owners {
                    after.push((
                        s,
                        ShardOp::UpdateLogConfig {
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
        // A deletion is recorded before the snapshot that drops the topic, so that the startup
        // check can tell the directories it leaves from data whose metadata was lost.
        let deleting: Vec<String> = after
            .iter()
            .filter_map(|(_, op)| match op {
                ShardOp::RemoveLogs { topic, .. } => Some(topic.to_string()),
                _ => None,
            })
            .filter(|t| !self.deleting.borrow().contains(t))
            .collect();
        if !deleting.is_empty() {
            self.deleting.borrow_mut().extend(deleting.iter().cloned());
            if let Err(e) = self.save_deleting(shard).await {
                self.deleting.borrow_mut().retain(|t| !deleting.contains(t));
                return Err(e);
            }
            Self::fault(shard, ControllerStep::DeletingRecorded);
        }
        store::save(&shard.config.data_dir, &next)
            .await
            .map_err(|e| err(E::KafkaStorageError, format!("persisting metadata: {e}")))?;
        if !deleting.is_empty() {
            Self::fault(shard, ControllerStep::SnapshotSaved);
        }
        // Opening logs must happen before the topic is published; removal after.
        let (opens, removes): (Vec<_>, Vec<_>) = after
            .into_iter()
            .partition(|(_, op)| !matches!(op, ShardOp::RemoveLogs { .. }));
        let mut failure = None;
        for r in futures::future::join_all(opens.into_iter().map(|(s, op)| shard.call(s, op))).await
        {
            if let ShardReply::Done(Err(e)) = r {
                failure = Some(e);
            }
        }
        shard.meta.store(Arc::new(ClusterMeta::from_snapshot(
            &next,
            &shard.table,
            &shard.config.topic_defaults,
        )));
        *self.snapshot.borrow_mut() = Some(next);
        let mut deleted: Vec<Arc<str>> = removes
            .iter()
            .filter_map(|(_, op)| match op {
                ShardOp::RemoveLogs { topic, .. } => Some(topic.clone()),
                _ => None,
            })
            .filter(|t| shard.meta().topic(t).is_none())
            .collect();
        deleted.dedup();
        let removed =
            futures::future::join_all(removes.into_iter().map(|(s, op)| shard.call(s, op))).await;
        if !deleting.is_empty()
            && removed
                .iter()
                .all(|r| matches!(r, ShardReply::Done(Ok(()))))
        {
            // Every directory is gone: the entries are no longer needed. If this write fails
            // they stay, which is harmless (startup removes nothing the metadata lists).
            self.deleting.borrow_mut().retain(|t| !deleting.contains(t));
            if let Err(e) = self.save_deleting(shard).await {
                tracing::warn!("{}", e.message);
            }
        }
        if !deleted.is_empty() {
            // Committed offsets of a deleted topic go with it.
            shard
                .group_call_all(|| GroupOp::TopicsDeleted {
                    topics: deleted.clone(),
                })
                .await;
        }
        match failure {
            Some(e) => Err(err(E::KafkaStorageError, e)),
            None => Ok(()),
        }
    }

    fn current(&self, shard: &Shard) -> MetadataSnapshot {
        if let Some(s) = self.snapshot.borrow().as_ref() {
            return s.clone();
        }
        // First change since start: rebuild the persisted form from the published view.
        let meta = shard.meta();
        MetadataSnapshot {
            version: meta.version,
            topics: meta
                .topics
                .values()
                .map(|t| TopicRecord {
                    name: t.name.to_string(),
                    id: t.id,
                    partition_shards: t.recorded_shards.clone(),
                    partition_epochs: t.partitions.iter().map(|p| p.leader_epoch).collect(),
                    overrides: t.overrides.clone(),
                })
                .collect(),
        }
    }
}

fn open_ops(shard: &Shard, t: &TopicRecord, from: usize, fresh: bool) -> Vec<(usize, ShardOp)> {
    let config = shard
        .config
        .topic_defaults
        .resolve(&t.overrides)
        .log_config();
    let topic: Arc<str> = Arc::from(t.name.as_str());
    let mut by_shard: BTreeMap<usize, Vec<i32>> = BTreeMap::new();
    for (p, &s) in t.partition_shards.iter().enumerate().skip(from) {
        by_shard
            .entry(shard.table.effective(s))
            .or_default()
            .push(p as i32);
    }
    by_shard
        .into_iter()
        .map(|(s, partitions)| {
            (
                s,
                ShardOp::OpenLogs {
                    topic: topic.clone(),
                    partitions,
                    config: config.clone(),
                    fresh,
                },
            )
        })
        .collect()
}

fn apply_config_op(
    overrides: &mut BTreeMap<String, String>,
    key: &str,
    kind: ConfigOpKind,
    value: Option<String>,
    shard: &Shard,
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
            let current = overrides.get(key).cloned().unwrap_or_else(|| {
                shard
                    .config
                    .topic_defaults
                    .resolve(&BTreeMap::new())
                    .cleanup_policy
            });
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
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_x-2").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("bad/name").is_err());
        assert!(validate_topic_name("spaces are bad").is_err());
        assert!(validate_topic_name(&"a".repeat(249)).is_ok());
        assert!(validate_topic_name(&"a".repeat(250)).is_err());
    }
}
