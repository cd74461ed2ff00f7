//! Kafka-style ISR replication of one partition, as two sans-I/O state machines.
//!
//! Followers pull: each follower fetches from the leader at its *durable* log end, so the
//! leader's record of a follower's fetch offset is data that survives a crash of that follower.
//! The leader ([`LeaderPartition`]) keeps, per follower, that fetch offset and the last time the
//! follower was caught up; it answers fetches (fencing stale epochs, detecting divergent
//! follower logs as Fetch v12+ does), moves the high watermark to the minimum durable end over
//! the ISR, proposes ISR shrinks and expansions to the controller and decides when an acks=all
//! produce is done. The follower ([`FollowerPartition`]) builds fetch requests and turns the
//! answers into appends and truncations.
//!
//! Neither machine reads a clock or touches the log: the broker appends, truncates and syncs, and
//! reports the outcomes (`on_local_append`, `on_local_durable`, `on_truncated`); time comes in
//! as `now_ms`; where an epoch's end offset is needed, the caller lends an [`EpochLookup`] over
//! the log's leader-epoch cache ([`LogEpochs`] wraps `strom_storage`'s [`EpochCache`]).
//!
//! Rules that keep acknowledged data safe, all Kafka's:
//! - the high watermark never exceeds what every ISR member is known to hold durably, counting
//!   members whose state is not known yet as holding nothing;
//! - it only advances while the committed ISR has at least `min.insync.replicas` members
//!   (KIP-966's strict min ISR, Kafka 4);
//! - a replica joins the ISR only once it holds the high watermark and everything the leader had
//!   when its epoch began, so a later leader elected from the ISR holds every acknowledged batch;
//! - the leader epoch fences everything a deposed leader or a stale follower says.

use strom_storage::epoch_cache::EpochCache;

use crate::types::{LeaderEpoch, Offset};

mod follower;
mod leader;
#[cfg(test)]
mod sim;

pub use follower::{FollowerAction, FollowerPartition, FollowerUpdate};
pub use leader::{
    AckStatus, IsrChangeRequest, LeaderPartition, LeaderUpdate, ProduceError, ReplicationConfig,
};

/// Where a leader epoch ends in a log: Kafka's `LeaderEpochFileCache.endOffsetFor`.
pub trait EpochLookup {
    /// `(largest epoch <= epoch known to the log, the offset where it ends)`; the latest epoch
    /// ends at the log end; `(-1, -1)` when nothing is known (an epoch newer than all, an empty
    /// log).
    fn end_offset_for(&self, epoch: LeaderEpoch) -> (LeaderEpoch, Offset);
}

/// An [`EpochLookup`] over a log's epoch cache and its end offset.
#[derive(Clone, Copy, Debug)]
pub struct LogEpochs<'a> {
    /// The log's leader-epoch cache.
    pub cache: &'a EpochCache,
    /// The log's end offset (where the latest epoch ends).
    pub log_end: Offset,
}

impl EpochLookup for LogEpochs<'_> {
    fn end_offset_for(&self, epoch: LeaderEpoch) -> (LeaderEpoch, Offset) {
        self.cache.end_offset_for(epoch, self.log_end)
    }
}

/// A follower's fetch for this partition (the partition part of a Kafka Fetch request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    /// Where to read from: the follower's durable log end.
    pub offset: Offset,
    /// Epoch of the follower's last batch (`LastFetchedEpoch`); `None` when its log is empty.
    pub last_fetched_epoch: Option<LeaderEpoch>,
    /// The leader epoch the follower believes current (`CurrentLeaderEpoch`, KIP-320).
    pub current_leader_epoch: Option<LeaderEpoch>,
}

/// The leader's answer to a follower's fetch. Records are not part of it: on `Read` the broker
/// reads the log from `from` and sends what it finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchDecision {
    /// Send the records from `from` on, with the leader's high watermark.
    Read {
        /// The first offset to send (the fetch offset).
        from: Offset,
        /// The leader's high watermark after this fetch was counted.
        high_watermark: Offset,
    },
    /// The follower's log diverges from the leader's (Fetch v12+ `DivergingEpoch`): its last
    /// epoch ends at `end_offset` on the leader, as `epoch` (the largest epoch the leader knows
    /// at or below the follower's).
    Diverging {
        /// The largest epoch the leader has at or below the follower's last fetched epoch.
        epoch: LeaderEpoch,
        /// Where that epoch ends in the leader's log.
        end_offset: Offset,
    },
    /// The follower's leader epoch is older than the leader's (FENCED_LEADER_EPOCH, 74).
    FencedLeaderEpoch,
    /// The follower's leader epoch is newer than the leader's (UNKNOWN_LEADER_EPOCH, 75): this
    /// node has not heard of the newer assignment yet.
    UnknownLeaderEpoch,
    /// The fetching node is not a follower replica of this partition (NOT_LEADER_OR_FOLLOWER).
    NotReplica,
    /// This node does not lead the partition (NOT_LEADER_OR_FOLLOWER); answered by a broker that
    /// holds no [`LeaderPartition`].
    NotLeader,
    /// The fetch offset is outside the leader's log (OFFSET_OUT_OF_RANGE, 1).
    OffsetOutOfRange {
        /// The leader's log end offset.
        log_end: Offset,
    },
}
