//! The in-memory model of cluster metadata and its persisted form.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::table::ShardTable;
use crate::config::topic::{TopicConfig, TopicDefaults};
use crate::ids::{LeaderEpoch, PartitionId, ShardId};

/// Persisted form of one topic (rkyv-archived inside the metadata snapshot).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
pub struct TopicRecord {
    pub name: String,
    pub id: [u8; 16],
    /// Shard each partition was assigned to at creation (recorded, so it stays put).
    pub partition_shards: Vec<u32>,
    /// Leader epoch of each partition; bumped when leadership changes (replication, later).
    pub partition_epochs: Vec<i32>,
    pub overrides: BTreeMap<String, String>,
}

/// Persisted form of all metadata.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Default)]
pub struct MetadataSnapshot {
    /// Increases by one with every change.
    pub version: u64,
    pub topics: Vec<TopicRecord>,
}

#[derive(Clone, Debug)]
pub struct PartitionMeta {
    /// The owning shard on this node.
    pub shard: ShardId,
    pub leader_epoch: LeaderEpoch,
}

#[derive(Clone, Debug)]
pub struct TopicMeta {
    pub name: Arc<str>,
    pub id: [u8; 16],
    pub partitions: Vec<PartitionMeta>,
    /// Shards as recorded at creation (before folding onto the shards that exist now).
    pub recorded_shards: Vec<u32>,
    pub overrides: BTreeMap<String, String>,
    pub config: TopicConfig,
}

/// An immutable view of all metadata, shared by every shard.
#[derive(Clone, Debug, Default)]
pub struct ClusterMeta {
    pub version: u64,
    pub topics: BTreeMap<Arc<str>, Arc<TopicMeta>>,
}

impl ClusterMeta {
    pub fn from_snapshot(
        snap: &MetadataSnapshot,
        table: &ShardTable,
        defaults: &TopicDefaults,
    ) -> ClusterMeta {
        let topics = snap
            .topics
            .iter()
            .map(|t| {
                let meta = TopicMeta::from_record(t, table, defaults);
                (meta.name.clone(), Arc::new(meta))
            })
            .collect();
        ClusterMeta {
            version: snap.version,
            topics,
        }
    }

    pub fn topic(&self, name: &str) -> Option<&Arc<TopicMeta>> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: &[u8; 16]) -> Option<&Arc<TopicMeta>> {
        self.topics.values().find(|t| &t.id == id)
    }

    /// The shard owning a partition, if the topic and partition exist.
    pub fn owner(&self, topic: &str, partition: PartitionId) -> Option<ShardId> {
        let t = self.topics.get(topic)?;
        usize::try_from(partition.0)
            .ok()
            .and_then(|p| t.partitions.get(p))
            .map(|p| p.shard)
    }
}

impl TopicMeta {
    pub fn from_record(t: &TopicRecord, table: &ShardTable, defaults: &TopicDefaults) -> TopicMeta {
        TopicMeta {
            name: Arc::from(t.name.as_str()),
            id: t.id,
            partitions: t
                .partition_shards
                .iter()
                .zip(&t.partition_epochs)
                .map(|(&s, &e)| PartitionMeta {
                    shard: table.effective(s),
                    leader_epoch: LeaderEpoch(e),
                })
                .collect(),
            recorded_shards: t.partition_shards.clone(),
            overrides: t.overrides.clone(),
            config: defaults.resolve(&t.overrides),
        }
    }
}
