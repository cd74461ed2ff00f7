//! The cluster metadata the controller replicates, and the commands that change it.
//!
//! [`MetadataImage`] is the state machine of the controller's Raft log: every node applies the
//! same committed [`Command`]s in the same order and so holds the same image. `apply` is
//! deterministic and never fails as a whole: a command that is not valid against the image
//! (a topic that already exists, an ISR change based on a stale partition epoch) leaves the
//! image unchanged and returns the Kafka error the proposer should answer with. Validation at
//! apply time, not only at proposal time, is what keeps two racing proposals safe: only the
//! first of them to commit takes effect.
//!
//! Records use plain integers and strings so they archive with rkyv as they are; accessors
//! give the typed view ([`PartitionRecord::assignment`]).

use std::collections::BTreeMap;

use crate::types::{LeaderEpoch, NodeId, PartitionAssignment};

/// Kafka error codes `apply` answers with.
pub mod errors {
    /// TOPIC_ALREADY_EXISTS.
    pub const TOPIC_ALREADY_EXISTS: i16 = 36;
    /// UNKNOWN_TOPIC_OR_PARTITION.
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    /// INVALID_PARTITIONS (a partition list that does not extend the topic's).
    pub const INVALID_PARTITIONS: i16 = 37;
    /// INVALID_REPLICA_ASSIGNMENT (replicas naming an unknown broker twice or not at all).
    pub const INVALID_REPLICA_ASSIGNMENT: i16 = 39;
    /// FENCED_LEADER_EPOCH: an ISR change from a leader whose epoch is not the current one.
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    /// NOT_LEADER_OR_FOLLOWER: an ISR change from a node that is not the partition's leader.
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    /// INVALID_UPDATE_VERSION: an ISR change based on a stale partition epoch.
    pub const INVALID_UPDATE_VERSION: i16 = 96;
    /// INELIGIBLE_REPLICA: an ISR that is not a subset of the replicas or lacks the leader.
    pub const INELIGIBLE_REPLICA: i16 = 107;
    /// STALE_BROKER_EPOCH: a fence or unfence for an older incarnation of the broker.
    pub const STALE_BROKER_EPOCH: i16 = 77;
    /// BROKER_ID_NOT_REGISTERED.
    pub const BROKER_ID_NOT_REGISTERED: i16 = 102;
}

/// A listener a broker advertises (`advertised.listeners`).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EndpointRecord {
    /// The listener's name (`PLAINTEXT`, `REPLICATION`, ...).
    pub listener: String,
    /// Host name or address clients connect to.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// A registered broker.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BrokerRecord {
    /// `node.id`.
    pub node_id: i32,
    /// Chosen at random by each start of the process; a fence for an older incarnation is
    /// stale and ignored (Kafka's broker epoch plays this role).
    pub incarnation: u64,
    /// Advertised listeners.
    pub endpoints: Vec<EndpointRecord>,
    /// `broker.rack`.
    pub rack: Option<String>,
    /// Fenced brokers lead nothing and are left out of Metadata's broker list.
    pub fenced: bool,
}

/// One partition's replica set (see [`PartitionAssignment`] for the rules).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PartitionRecord {
    /// Replicas, preferred leader first.
    pub replicas: Vec<i32>,
    /// In-sync replicas.
    pub isr: Vec<i32>,
    /// The leader, -1 for none.
    pub leader: i32,
    /// Bumped on every leader change.
    pub leader_epoch: i32,
    /// Bumped on every committed change.
    pub partition_epoch: i32,
}

impl PartitionRecord {
    /// A new partition: the first replica leads in epoch 0, every replica is in sync.
    pub fn new(replicas: &[NodeId]) -> PartitionRecord {
        let replicas: Vec<i32> = replicas.iter().map(|n| n.0).collect();
        PartitionRecord {
            leader: replicas.first().copied().unwrap_or(-1),
            isr: replicas.clone(),
            replicas,
            leader_epoch: 0,
            partition_epoch: 0,
        }
    }

    /// A leader change: `leader` (-1 for none) leads in the next leader epoch.
    fn set_leader(&mut self, leader: i32) {
        self.leader = leader;
        self.leader_epoch += 1;
        self.partition_epoch += 1;
    }

    /// The typed view.
    pub fn assignment(&self) -> PartitionAssignment {
        PartitionAssignment {
            replicas: self.replicas.iter().map(|&n| NodeId(n)).collect(),
            isr: self.isr.iter().map(|&n| NodeId(n)).collect(),
            leader: (self.leader >= 0).then_some(NodeId(self.leader)),
            leader_epoch: LeaderEpoch(self.leader_epoch),
            partition_epoch: self.partition_epoch,
        }
    }
}

/// A topic: its partitions and its config overrides.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TopicRecord {
    /// Kafka's topic id (a UUID), chosen by the proposer.
    pub topic_id: [u8; 16],
    /// Partitions, by index.
    pub partitions: Vec<PartitionRecord>,
    /// Topic-level config overrides.
    pub configs: BTreeMap<String, String>,
}

/// A fence or unfence of one incarnation of a broker.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BrokerFence {
    /// The broker.
    pub node_id: i32,
    /// The incarnation it is for; another incarnation's is stale.
    pub incarnation: u64,
}

/// A new topic.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CreateTopic {
    /// Name.
    pub name: String,
    /// Its record (partitions with their replicas, configs).
    pub topic: TopicRecord,
}

/// More partitions for a topic.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CreatePartitions {
    /// Topic name.
    pub name: String,
    /// The new partitions, appended after the existing ones.
    pub partitions: Vec<PartitionRecord>,
}

/// New config overrides for a topic.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AlterConfigs {
    /// Topic name.
    pub name: String,
    /// The new overrides (all of them).
    pub configs: BTreeMap<String, String>,
}

/// A partition leader's request to change the ISR (Kafka's AlterPartition).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AlterIsr {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
    /// The leader asking.
    pub leader: i32,
    /// The leader epoch it leads in.
    pub leader_epoch: i32,
    /// The partition epoch its view is based on.
    pub partition_epoch: i32,
    /// The ISR it asks for.
    pub new_isr: Vec<i32>,
}

/// A broker's request for a block of producer ids (Kafka's AllocateProducerIds).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct AllocateProducerIds {
    /// The broker asking.
    pub node_id: i32,
    /// How many ids.
    pub count: i64,
}

/// A change to the image. Proposed by the active controller, applied by every node once
/// committed.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// A broker started (or restarted with a new incarnation): record it, unfenced.
    RegisterBroker(BrokerRecord),
    /// The broker missed its heartbeats (or shut down): fence it.
    FenceBroker(BrokerFence),
    /// A fenced broker heartbeats again: unfence it.
    UnfenceBroker(BrokerFence),
    /// Create a topic with the given assignment.
    CreateTopic(CreateTopic),
    /// Delete the named topic.
    DeleteTopic(String),
    /// Add partitions to a topic.
    CreatePartitions(CreatePartitions),
    /// Replace a topic's config overrides.
    AlterConfigs(AlterConfigs),
    /// A partition leader asks to change the ISR.
    AlterIsr(AlterIsr),
    /// Hand out producer ids to a broker.
    AllocateProducerIds(AllocateProducerIds),
    /// Preferred-leader election: each named partition whose first replica is live, in the
    /// ISR and not leading gets it back as leader (Kafka's `auto.leader.rebalance.enable`).
    /// A partition for which that no longer holds when the command applies is left alone.
    ElectPreferred(Vec<PartitionRef>),
}

/// A partition, by topic name and index.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PartitionRef {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
}

fn is_live(brokers: &BTreeMap<i32, BrokerRecord>, node: i32) -> bool {
    brokers.get(&node).is_some_and(|b| !b.fenced)
}

/// The first ISR member in replica order (preferred first) that is live.
fn live_isr_member(p: &PartitionRecord, brokers: &BTreeMap<i32, BrokerRecord>) -> Option<i32> {
    p.replicas
        .iter()
        .copied()
        .find(|&n| p.isr.contains(&n) && is_live(brokers, n))
}

/// The preferred leader, if it should take over: live, in the ISR, not leading.
fn preferred_move(p: &PartitionRecord, brokers: &BTreeMap<i32, BrokerRecord>) -> Option<i32> {
    let preferred = *p.replicas.first()?;
    (p.leader != preferred && p.isr.contains(&preferred) && is_live(brokers, preferred))
        .then_some(preferred)
}

/// A block of producer ids `[start, start + count)`.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdBlock {
    /// First id of the block.
    pub start: i64,
    /// Ids in the block.
    pub count: i64,
}

/// What applying a command did.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The command took effect.
    Ok,
    /// This block of producer ids now belongs to the asking broker.
    ProducerIds(IdBlock),
    /// An ISR change took effect: the partition's new record.
    Partition(PartitionRecord),
    /// The command was refused with this Kafka error code; the image is unchanged.
    Refused(i16),
}

/// The whole cluster metadata.
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq, Default,
)]
pub struct MetadataImage {
    /// Registered brokers by node id.
    pub brokers: BTreeMap<i32, BrokerRecord>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicRecord>,
    /// The first producer id not yet handed out.
    pub next_producer_id: i64,
}

impl MetadataImage {
    /// Applies one committed command.
    pub fn apply(&mut self, command: &Command) -> Applied {
        match command {
            Command::RegisterBroker(broker) => {
                let mut broker = broker.clone();
                broker.fenced = false;
                let restarted = self
                    .brokers
                    .get(&broker.node_id)
                    .is_some_and(|old| old.incarnation != broker.incarnation);
                if restarted {
                    // A restarted broker may have lost what it had not synced: it leads its
                    // partitions again in a new leader epoch, so that followers holding more of
                    // the old epoch find their divergence and truncate (Kafka elects anew, with
                    // a new epoch, when a broker comes back).
                    for p in self
                        .topics
                        .values_mut()
                        .flat_map(|t| t.partitions.iter_mut())
                    {
                        if p.leader == broker.node_id {
                            p.leader_epoch += 1;
                            p.partition_epoch += 1;
                        }
                    }
                }
                self.brokers.insert(broker.node_id, broker);
                self.elect_leaderless();
                Applied::Ok
            }
            Command::FenceBroker(f) => {
                let applied = self.set_fenced(f.node_id, f.incarnation, true);
                if applied == Applied::Ok {
                    self.fail_over(f.node_id);
                }
                applied
            }
            Command::UnfenceBroker(f) => {
                let applied = self.set_fenced(f.node_id, f.incarnation, false);
                if applied == Applied::Ok {
                    self.elect_leaderless();
                }
                applied
            }
            Command::CreateTopic(CreateTopic { name, topic }) => {
                if self.topics.contains_key(name) {
                    return Applied::Refused(errors::TOPIC_ALREADY_EXISTS);
                }
                if let Some(code) = self.check_partitions(&topic.partitions) {
                    return Applied::Refused(code);
                }
                let mut topic = topic.clone();
                self.lead_live(&mut topic.partitions);
                self.topics.insert(name.clone(), topic);
                Applied::Ok
            }
            Command::DeleteTopic(name) => match self.topics.remove(name) {
                Some(_) => Applied::Ok,
                None => Applied::Refused(errors::UNKNOWN_TOPIC_OR_PARTITION),
            },
            Command::CreatePartitions(CreatePartitions { name, partitions }) => {
                if partitions.is_empty() {
                    return Applied::Refused(errors::INVALID_PARTITIONS);
                }
                if let Some(code) = self.check_partitions(partitions) {
                    return Applied::Refused(code);
                }
                let mut partitions = partitions.clone();
                self.lead_live(&mut partitions);
                match self.topics.get_mut(name) {
                    Some(topic) => {
                        topic.partitions.extend(partitions);
                        Applied::Ok
                    }
                    None => Applied::Refused(errors::UNKNOWN_TOPIC_OR_PARTITION),
                }
            }
            Command::AlterConfigs(AlterConfigs { name, configs }) => {
                match self.topics.get_mut(name) {
                    Some(topic) => {
                        topic.configs = configs.clone();
                        Applied::Ok
                    }
                    None => Applied::Refused(errors::UNKNOWN_TOPIC_OR_PARTITION),
                }
            }
            Command::AlterIsr(change) => self.alter_isr(change),
            Command::AllocateProducerIds(AllocateProducerIds { node_id, count }) => {
                if !self.brokers.contains_key(node_id) {
                    return Applied::Refused(errors::BROKER_ID_NOT_REGISTERED);
                }
                let count = (*count).max(1);
                let start = self.next_producer_id;
                self.next_producer_id = start.saturating_add(count);
                Applied::ProducerIds(IdBlock { start, count })
            }
            Command::ElectPreferred(partitions) => {
                for PartitionRef { topic, partition } in partitions {
                    let Some(record) = usize::try_from(*partition)
                        .ok()
                        .and_then(|i| self.topics.get_mut(topic)?.partitions.get_mut(i))
                    else {
                        continue;
                    };
                    if let Some(preferred) = preferred_move(record, &self.brokers) {
                        record.set_leader(preferred);
                    }
                }
                Applied::Ok
            }
        }
    }

    /// The partitions whose preferred leader (first replica) is live, in the ISR and not
    /// leading: what an [`Command::ElectPreferred`] would move now.
    pub fn preferred_elections(&self) -> Vec<PartitionRef> {
        let mut out = Vec::new();
        for (name, topic) in &self.topics {
            for (i, p) in topic.partitions.iter().enumerate() {
                if preferred_move(p, &self.brokers).is_some() {
                    out.push(PartitionRef {
                        topic: name.clone(),
                        partition: i as i32,
                    });
                }
            }
        }
        out
    }

    /// A fenced broker (dead, paused, cut off, or shutting down) leaves every ISR it is in,
    /// unless it is the last member (what it holds may be all there is), and every partition
    /// it led gets a new leader from the remaining ISR in a new leader epoch, or none (-1,
    /// offline) when no live ISR member is left. Never a replica outside the ISR: it may lack
    /// acknowledged records.
    fn fail_over(&mut self, node: i32) {
        let brokers = &self.brokers;
        for p in self
            .topics
            .values_mut()
            .flat_map(|t| t.partitions.iter_mut())
        {
            let mut changed = false;
            if p.isr.len() > 1 && p.isr.contains(&node) {
                p.isr.retain(|&n| n != node);
                // Sorted, as an AlterIsr leaves it.
                p.isr.sort_unstable();
                changed = true;
            }
            if p.leader == node {
                let next = live_isr_member(p, brokers).unwrap_or(-1);
                p.set_leader(next);
            } else if changed {
                p.partition_epoch += 1;
            }
        }
    }

    /// New partitions whose proposed leader was fenced before they committed start with the
    /// first live ISR member instead, or none.
    fn lead_live(&self, partitions: &mut [PartitionRecord]) {
        for p in partitions {
            if p.leader >= 0 && !is_live(&self.brokers, p.leader) {
                p.leader = live_isr_member(p, &self.brokers).unwrap_or(-1);
            }
        }
    }

    /// Partitions without a leader get the first live ISR member in replica order (a broker
    /// that came back, when it was the last in sync).
    fn elect_leaderless(&mut self) {
        let brokers = &self.brokers;
        for p in self
            .topics
            .values_mut()
            .flat_map(|t| t.partitions.iter_mut())
        {
            if p.leader < 0 {
                if let Some(next) = live_isr_member(p, brokers) {
                    p.set_leader(next);
                }
            }
        }
    }

    /// The partition's record, if the topic and partition exist.
    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionRecord> {
        let index = usize::try_from(partition).ok()?;
        self.topics.get(topic)?.partitions.get(index)
    }

    fn set_fenced(&mut self, node_id: i32, incarnation: u64, fenced: bool) -> Applied {
        match self.brokers.get_mut(&node_id) {
            None => Applied::Refused(errors::BROKER_ID_NOT_REGISTERED),
            Some(b) if b.incarnation != incarnation => Applied::Refused(errors::STALE_BROKER_EPOCH),
            Some(b) => {
                b.fenced = fenced;
                Applied::Ok
            }
        }
    }

    /// A partition list is valid when every partition has replicas, all registered and
    /// distinct, and its ISR and leader are among them.
    fn check_partitions(&self, partitions: &[PartitionRecord]) -> Option<i16> {
        for p in partitions {
            let mut seen = p.replicas.clone();
            seen.sort_unstable();
            seen.dedup();
            let bad = p.replicas.is_empty()
                || seen.len() != p.replicas.len()
                || p.replicas.iter().any(|n| !self.brokers.contains_key(n))
                || p.isr.iter().any(|n| !p.replicas.contains(n))
                || (p.leader >= 0 && !p.isr.contains(&p.leader));
            if bad {
                return Some(errors::INVALID_REPLICA_ASSIGNMENT);
            }
        }
        None
    }

    /// Kafka's AlterPartition checks, in its order: the partition exists, the sender leads it
    /// in the current leader epoch, the change is based on the current partition epoch, the
    /// new ISR holds the leader and only replicas.
    fn alter_isr(&mut self, change: &AlterIsr) -> Applied {
        let AlterIsr {
            topic,
            partition,
            leader,
            leader_epoch,
            partition_epoch,
            new_isr,
        } = change;
        let (partition, leader, leader_epoch, partition_epoch) =
            (*partition, *leader, *leader_epoch, *partition_epoch);
        let Some(record) = usize::try_from(partition)
            .ok()
            .and_then(|i| self.topics.get_mut(topic)?.partitions.get_mut(i))
        else {
            return Applied::Refused(errors::UNKNOWN_TOPIC_OR_PARTITION);
        };
        if record.leader != leader {
            return Applied::Refused(errors::NOT_LEADER_OR_FOLLOWER);
        }
        if record.leader_epoch != leader_epoch {
            return Applied::Refused(errors::FENCED_LEADER_EPOCH);
        }
        if record.partition_epoch != partition_epoch {
            return Applied::Refused(errors::INVALID_UPDATE_VERSION);
        }
        // A fenced broker may not join (KIP-841): it is dead, cut off or shutting down.
        let fenced_joins = new_isr
            .iter()
            .any(|n| !record.isr.contains(n) && self.brokers.get(n).is_none_or(|b| b.fenced));
        if !new_isr.contains(&leader)
            || new_isr.iter().any(|n| !record.replicas.contains(n))
            || fenced_joins
        {
            return Applied::Refused(errors::INELIGIBLE_REPLICA);
        }
        let mut isr = new_isr.to_vec();
        isr.sort_unstable();
        isr.dedup();
        record.isr = isr;
        record.partition_epoch += 1;
        Applied::Partition(record.clone())
    }

    /// The image as bytes (a Raft snapshot's data).
    pub fn encode(&self) -> Vec<u8> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .map(|b| b.to_vec())
            .unwrap_or_default()
    }

    /// The image from [`MetadataImage::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<MetadataImage, CodecError> {
        decode_archived(bytes)
    }
}

impl Command {
    /// The command as bytes (a Raft entry's data).
    pub fn encode(&self) -> Vec<u8> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .map(|b| b.to_vec())
            .unwrap_or_default()
    }

    /// The command from [`Command::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Command, CodecError> {
        decode_archived(bytes)
    }
}

/// Bytes that are not a valid archive of the expected type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("controller record does not decode: {0}")]
pub struct CodecError(String);

pub(crate) fn decode_archived<T>(bytes: &[u8]) -> Result<T, CodecError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    // Archives need alignment; bytes from a network buffer or a file have none.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rkyv::rancor::Error>(&aligned).map_err(|e| CodecError(e.to_string()))
}
