//! Cluster metadata: topics, their partitions and owning shards, topic config overrides, and
//! the producer ids of idempotent producers ([`producer_ids`]).
//!
//! The controller (shard 0) is the only writer. It persists every change with [`store`]
//! before applying it, then publishes a new immutable [`ClusterMeta`] that every shard reads
//! without locks (`ArcSwap`).

pub mod controller;
pub mod dirs;
pub mod model;
pub mod producer_ids;
pub mod store;
pub mod table;

pub use model::{ClusterMeta, TopicMeta};
