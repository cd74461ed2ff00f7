//! The controller: the cluster metadata replicated by Raft over the nodes' shard 0.
//!
//! - [`image`]: the metadata ([`MetadataImage`]) and the commands that change it.
//! - [`store`]: the Raft log as Raft reads it, and the batches the driver makes durable.
//! - [`liveness`]: broker heartbeats in, fence and unfence commands out.
//! - [`log_file`]: those batches as bytes in an append-only file, and its replay.
//! - [`wire`]: the messages between controller nodes and their frames.
//! - [`node`]: one node, tikv's Raft `RawNode` driven without I/O.
//! - [`placement`]: which brokers hold a new partition's replicas.

pub mod image;
pub mod liveness;
pub mod log_file;
pub mod node;
pub mod placement;
pub mod store;
pub mod wire;

#[cfg(test)]
mod image_tests;
#[cfg(test)]
mod sim_tests;

pub use image::{
    AllocateProducerIds, AlterConfigs, AlterIsr, Applied, BrokerFence, BrokerRecord, Command,
    CreatePartitions, CreateTopic, EndpointRecord, IdBlock, MetadataImage, PartitionRecord,
    PartitionRef, TopicRecord,
};
pub use liveness::Liveness;
pub use node::{
    AppliedEntry, ControllerConfig, ControllerError, ControllerNode, NotLeader, Outbound, ReadyStep,
};
pub use store::{PersistBatch, RaftLogStore};
pub use wire::{
    Forward, ForwardReply, Heartbeat, Hello, PeerMessage, ProposalOutcome, PEER_FRAME_BYTES_MAX,
};
