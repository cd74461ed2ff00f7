//! Identifiers shared by the controller and the replication state machines.

use std::fmt;
use std::sync::Arc;

pub use strom_storage::{LeaderEpoch, Offset};

/// A node of the cluster (Kafka's `node.id`, the `broker_id` of Metadata).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub i32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One partition of one topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// The topic's name.
    pub topic: Arc<str>,
    /// The partition's index within the topic.
    pub partition: i32,
}

impl TopicPartition {
    /// `topic`-`partition`.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// The replica set of a partition as the controller committed it: who leads, in which epoch,
/// who holds copies and who is in sync. Every change the controller commits bumps
/// `partition_epoch`; a change of leader also bumps `leader_epoch`. A leader's request to change
/// the ISR names the `partition_epoch` it was based on and is refused if that is stale (Kafka's
/// AlterPartition rule), so two changes can never be applied on top of each other blindly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionAssignment {
    /// The replicas, preferred leader first.
    pub replicas: Vec<NodeId>,
    /// The in-sync replicas, a subset of `replicas`; always contains the leader if there is one.
    pub isr: Vec<NodeId>,
    /// The leader, or `None` while no replica of the ISR is alive.
    pub leader: Option<NodeId>,
    /// Bumped on every change of leader; stamped into every batch the leader appends.
    pub leader_epoch: LeaderEpoch,
    /// Bumped on every committed change of this record.
    pub partition_epoch: i32,
}
