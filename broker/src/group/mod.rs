//! Consumer groups (Kafka's classic group protocol) and their committed offsets.
//!
//! Each group lives on one shard: the group id hashes to a partition of the internal offsets
//! log ([`store::partition_of`]) and that partition belongs to shard `partition % shards`. A
//! group request arriving on another shard is forwarded there as a [`GroupOp`]; all state of a
//! group is touched by that one thread only.

pub mod coordinator;
pub mod input;
pub mod state;
pub mod store;

use std::sync::Arc;

pub use coordinator::GroupCoordinator;
pub use coordinator::{
    CommitParams, DescribedGroup, FetchedOffset, JoinParams, ListedGroup, SyncParams,
};
use state::{JoinResult, SyncResult};

use crate::ids::ShardId;

pub enum GroupOp {
    Join(JoinParams),
    Sync(SyncParams),
    Heartbeat {
        group_id: String,
        generation: i32,
        member_id: String,
        instance_id: Option<String>,
    },
    Leave {
        group_id: String,
        members: Vec<(String, Option<String>)>,
    },
    Commit(CommitParams),
    FetchOffsets {
        group_id: String,
        topics: Option<Vec<(Arc<str>, Vec<i32>)>>,
    },
    DeleteOffsets {
        group_id: String,
        partitions: Vec<(Arc<str>, i32)>,
    },
    List {
        states: Vec<String>,
        types: Vec<String>,
    },
    Describe {
        group_ids: Vec<String>,
    },
    Delete {
        group_ids: Vec<String>,
    },
    TopicsDeleted {
        topics: Vec<Arc<str>>,
    },
}

pub enum GroupReply {
    Join(JoinResult),
    Sync(SyncResult),
    Code(i16),
    Codes(Vec<i16>),
    Offsets(Vec<FetchedOffset>),
    OffsetDelete(i16, Vec<i16>),
    List(Vec<ListedGroup>),
    Describe(Vec<DescribedGroup>),
    Done,
}

/// The partitions of the offsets log that shard `shard` of `shards` owns.
pub fn owned_partitions(partitions: u32, shard: ShardId, shards: usize) -> Vec<u32> {
    (0..partitions)
        .filter(|p| *p as usize % shards == shard.0)
        .collect()
}

/// The shard that coordinates `group_id`.
pub fn owner(group_id: &str, partitions: u32, shards: usize) -> ShardId {
    ShardId(store::partition_of(group_id, partitions) as usize % shards)
}
