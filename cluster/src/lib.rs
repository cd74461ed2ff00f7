//! Strom's cluster logic as sans-I/O state machines.
//!
//! Nothing here does I/O or reads a clock: every input (a message, a timer tick with the current
//! time, a storage completion) is a method call and every output (a message to send, an entry
//! to persist, a state change to apply) is a returned value. The broker drives these machines
//! from its shards; `cargo test` drives them from seeded simulators with a virtual clock, a lossy
//! network and crashes, checking the safety invariants after every step.
//!
//! - [`replication`]: Kafka-style ISR replication of one partition: the leader's view of its
//!   followers (fetch offsets, ISR, high watermark, min.insync.replicas) and the follower's
//!   fetch state (diverging-epoch truncation).
//! - [`controller`]: the cluster metadata (brokers, topics, partition assignments with leader,
//!   leader epoch and ISR, producer-id blocks) replicated by Raft (tikv's `raft` crate).

pub mod controller;
pub mod replication;
pub mod types;

pub use types::{LeaderEpoch, NodeId, Offset, PartitionAssignment, TopicPartition};
