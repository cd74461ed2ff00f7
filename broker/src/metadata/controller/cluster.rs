//! The controller in cluster mode: topic changes become commands of the controller quorum, and
//! every node makes its local metadata and logs follow the quorum's committed image.
//!
//! A topic change is validated as on a single node, placed with Kafka's replica assignment over
//! the live brokers, proposed, and answered once the command is applied here (or refused with
//! the error the image's check gave). [`Controller::adopt`] then runs on every node for every
//! new image: it persists and publishes the local metadata (all topics, with the shard of every
//! partition) and opens the logs of the partitions this node holds a replica of, removes the
//! logs of deleted topics and updates configs, through the same steps as a single node's
//! change.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError as E;
use strom_cluster::controller::placement::{assign_replicas, Candidate};
use strom_cluster::controller::{
    AlterConfigs, Applied as Outcome, Command, CreatePartitions, CreateTopic, MetadataImage,
    PartitionRecord, ProposalOutcome, TopicRecord as ClusterTopic,
};
use strom_cluster::NodeId;

use super::{
    check_new_topic, check_partition_count, err, unknown_topic, Controller, ControllerError,
    ControllerOp, LogOwners, LogWork,
};
use crate::ids::{PartitionId, ShardId};
use crate::metadata::model::{MetadataSnapshot, TopicRecord};
use crate::quorum::{QuorumHandle, QuorumView};

/// How long a topic change waits for its command to be applied on this node after it
/// committed (the forwarding node applies it a moment after the leader answered).
const APPLY_WAIT_MS: u64 = 5_000;

/// Whether an image shows a change as applied.
type Applied = Box<dyn Fn(&MetadataImage) -> bool>;

/// What the controller of a node in cluster mode works with.
#[derive(Clone)]
pub struct QuorumLink {
    /// This node.
    pub node_id: NodeId,
    /// The committed image.
    pub view: Arc<QuorumView>,
    /// Proposals go here.
    pub handle: QuorumHandle,
    /// `default.replication.factor`: replicas of a topic created without a factor.
    pub default_replication_factor: i16,
}

impl Controller {
    /// A topic change in cluster mode.
    pub(super) async fn cluster_change(
        &self,
        link: &QuorumLink,
        op: ControllerOp,
    ) -> Result<(), ControllerError> {
        let image = link.view.load().image.clone();
        let (command, applied): (Command, Applied) = match op {
            ControllerOp::CreateTopic {
                name,
                partitions,
                replication_factor,
                overrides,
                validate_only,
            } => {
                check_new_topic(
                    &name,
                    image.topics.contains_key(&name),
                    partitions,
                    &overrides,
                )?;
                let factor = match replication_factor {
                    -1 => link.default_replication_factor,
                    rf => rf,
                };
                let replicas = place(&image, 0, partitions, factor)?;
                if validate_only {
                    return Ok(());
                }
                let topic = ClusterTopic {
                    topic_id: rand::random(),
                    partitions: replicas.iter().map(|r| PartitionRecord::new(r)).collect(),
                    configs: overrides,
                };
                let check = name.clone();
                (
                    Command::CreateTopic(CreateTopic { name, topic }),
                    Box::new(move |i: &MetadataImage| i.topics.contains_key(&check)),
                )
            }
            ControllerOp::DeleteTopic { name } => {
                if !image.topics.contains_key(&name) {
                    return Err(unknown_topic(&name));
                }
                let check = name.clone();
                (
                    Command::DeleteTopic(name),
                    Box::new(move |i: &MetadataImage| !i.topics.contains_key(&check)),
                )
            }
            ControllerOp::CreatePartitions {
                name,
                count,
                validate_only,
            } => {
                let Some(t) = image.topics.get(&name) else {
                    return Err(unknown_topic(&name));
                };
                let have = i32::try_from(t.partitions.len()).unwrap_or(i32::MAX);
                if count <= have {
                    return Err(err(
                        E::InvalidPartitions,
                        format!("Topic currently has {have} partitions, {count} would not be an increase."),
                    ));
                }
                check_partition_count(count)?;
                // New partitions get as many replicas as the topic's first one has.
                let factor = t.partitions.first().map_or(1, |p| p.replicas.len());
                let factor = i16::try_from(factor).unwrap_or(i16::MAX);
                let replicas = place(&image, have, count - have, factor)?;
                if validate_only {
                    return Ok(());
                }
                let check = (name.clone(), count);
                (
                    Command::CreatePartitions(CreatePartitions {
                        name,
                        partitions: replicas.iter().map(|r| PartitionRecord::new(r)).collect(),
                    }),
                    Box::new(move |i: &MetadataImage| {
                        i.topics
                            .get(&check.0)
                            .is_some_and(|t| t.partitions.len() >= check.1 as usize)
                    }),
                )
            }
            ControllerOp::AlterConfigs {
                name,
                ops,
                replace,
                validate_only,
            } => {
                let Some(t) = image.topics.get(&name) else {
                    return Err(unknown_topic(&name));
                };
                let configs = self.changed_overrides(&t.configs, ops, replace)?;
                if validate_only {
                    return Ok(());
                }
                let check = (name.clone(), configs.clone());
                (
                    Command::AlterConfigs(AlterConfigs { name, configs }),
                    Box::new(move |i: &MetadataImage| {
                        i.topics.get(&check.0).is_some_and(|t| t.configs == check.1)
                    }),
                )
            }
            ControllerOp::InitProducerId { .. } => {
                return Err(err(
                    E::UnknownServerError,
                    "InitProducerId is not a metadata change",
                ))
            }
        };
        match link.handle.propose(command).await {
            ProposalOutcome::Applied(Outcome::Ok) => {}
            ProposalOutcome::Applied(Outcome::Refused(code)) => {
                return Err(ControllerError {
                    code,
                    message: "refused by the cluster metadata".into(),
                })
            }
            ProposalOutcome::Applied(other) => {
                return Err(err(E::UnknownServerError, format!("{other:?}")))
            }
            ProposalOutcome::NotLeader(_) | ProposalOutcome::TimedOut => {
                // Retriable: admin clients look the controller up again and retry.
                return Err(err(
                    E::NotController,
                    "the controller quorum has no active controller right now",
                ));
            }
        }
        // Answer once this node shows the change, so that the client's next Metadata request
        // sees it here too.
        let mut waited = 0;
        while !applied(&link.view.load().image) && waited < APPLY_WAIT_MS {
            glommio::timer::sleep(Duration::from_millis(10)).await;
            waited += 10;
        }
        Ok(())
    }

    /// Makes this node's metadata and logs follow `image`: topics it lacks are added, with the
    /// logs of the partitions this node holds a replica of; partitions added to a topic
    /// likewise; topics gone from the image are removed with their logs; changed configs are
    /// given to the logs. Does nothing when they already agree. Returns whether another call is
    /// needed (a topic deleted and created again under its name: its old logs go first).
    pub async fn adopt(
        &self,
        owners: &impl LogOwners,
        node: NodeId,
        image: &MetadataImage,
    ) -> Result<bool, ControllerError> {
        let _permit = self
            .lock
            .acquire_permit(1)
            .await
            .map_err(|e| err(E::UnknownServerError, e.to_string()))?;
        let current = self.current();
        let mut next = MetadataSnapshot {
            version: current.version + 1,
            topics: Vec::with_capacity(image.topics.len()),
        };
        let mut after: Vec<(ShardId, LogWork)> = Vec::new();
        let mut again = false;
        for (name, topic) in &image.topics {
            let old = current.topics.iter().find(|t| t.name == *name);
            if old.is_some_and(|o| o.id != topic.topic_id) {
                // Deleted and created again under the same name: the old logs go first (below),
                // the new topic in the next call.
                again = true;
                continue;
            }
            let count = topic.partitions.len();
            let record = TopicRecord {
                name: name.clone(),
                id: topic.topic_id,
                partition_shards: (0..count)
                    .map(|p| {
                        old.and_then(|o| o.partition_shards.get(p).copied())
                            .unwrap_or_else(|| self.ctx.table.assign(name, p as i32))
                    })
                    .collect(),
                partition_epochs: topic.partitions.iter().map(|p| p.leader_epoch).collect(),
                overrides: topic.configs.clone(),
            };
            let from = old.map_or(0, |o| o.partition_shards.len());
            let local: Vec<usize> = (from..count)
                .filter(|&p| topic.partitions[p].replicas.contains(&node.0))
                .collect();
            after.extend(self.open_work_of(&record, &local));
            if old.is_some_and(|o| o.overrides != record.overrides) {
                let config = self
                    .ctx
                    .topic_defaults
                    .resolve(&record.overrides)
                    .log_config();
                let owners: BTreeSet<ShardId> = record
                    .partition_shards
                    .iter()
                    .map(|&s| self.ctx.table.effective(s))
                    .collect();
                for s in owners {
                    after.push((
                        s,
                        LogWork::UpdateConfig {
                            topic: Arc::from(name.as_str()),
                            config: config.clone(),
                        },
                    ));
                }
            }
            next.topics.push(record);
        }
        for old in &current.topics {
            if next.topics.iter().any(|t| t.name == old.name) {
                continue;
            }
            let topic: Arc<str> = Arc::from(old.name.as_str());
            let mut by_shard: BTreeMap<ShardId, Vec<PartitionId>> = BTreeMap::new();
            for (p, &s) in old.partition_shards.iter().enumerate() {
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
        let unchanged = after.is_empty()
            && next.topics.len() == current.topics.len()
            && next.topics.iter().zip(&current.topics).all(|(a, b)| a == b);
        if unchanged {
            return Ok(again);
        }
        self.commit(owners, &current, next, after).await?;
        Ok(again)
    }

    /// The log work that opens `partitions` of `t`, grouped by owner.
    pub(super) fn open_work_of(
        &self,
        t: &TopicRecord,
        partitions: &[usize],
    ) -> Vec<(ShardId, LogWork)> {
        if partitions.is_empty() {
            return Vec::new();
        }
        let config = self.ctx.topic_defaults.resolve(&t.overrides).log_config();
        let topic: Arc<str> = Arc::from(t.name.as_str());
        let mut by_shard: BTreeMap<ShardId, Vec<PartitionId>> = BTreeMap::new();
        for &p in partitions {
            by_shard
                .entry(self.ctx.table.effective(t.partition_shards[p]))
                .or_default()
                .push(PartitionId(p as i32));
        }
        by_shard
            .into_iter()
            .map(|(s, partitions)| {
                (
                    s,
                    LogWork::Open {
                        topic: topic.clone(),
                        partitions,
                        config: config.clone(),
                    },
                )
            })
            .collect()
    }
}

/// `factor` replicas for each of the partitions `first..first + count`, over the live brokers
/// (Kafka's rack-aware assignment). INVALID_REPLICATION_FACTOR if fewer brokers are live.
fn place(
    image: &MetadataImage,
    first: i32,
    count: i32,
    factor: i16,
) -> Result<Vec<Vec<NodeId>>, ControllerError> {
    if factor < 1 {
        return Err(err(
            E::InvalidReplicationFactor,
            format!("Replication factor must be larger than 0; got {factor}"),
        ));
    }
    let brokers: Vec<Candidate> = image
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .map(|b| Candidate {
            node: NodeId(b.node_id),
            rack: b.rack.clone(),
        })
        .collect();
    let start = rand::random::<u32>() as usize;
    assign_replicas(
        &brokers,
        usize::try_from(first).unwrap_or(0),
        usize::try_from(count).unwrap_or(0),
        usize::try_from(factor).unwrap_or(1),
        start,
    )
    .map_err(|e| err(E::InvalidReplicationFactor, e.to_string()))
}
