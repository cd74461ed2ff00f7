//! The follower's side of one partition: what to fetch next and what to do with the answer.
//!
//! A follower fetches only from its durable log end and only when everything it appended is
//! durable, so the offset the leader records for it is data that survives a crash.
//!
//! The last fetched epoch it sends is the latest epoch of its epoch cache, as Kafka's follower
//! sends `log.latestEpoch`, not the epoch of its last batch. They differ on a node that took
//! over as leader (which records its new epoch at its log end) and lost the leadership before
//! appending anything: sending the older batch epoch would let the new leader accept the
//! fetch, the follower would then append older-epoch batches after a newer cache entry, and
//! the cache's rule for non-monotonic entries would erase the start of that older epoch,
//! leaving a cache that misplaces epoch boundaries and answers later divergence checks wrongly.
//! Sending the cache's epoch gets a divergence answer that truncates the empty entry away
//! first. After a
//! `Read` with records it waits for the broker's append ([`FollowerPartition::on_local_append`])
//! and sync ([`FollowerPartition::on_local_durable`]); after a divergence it waits for the
//! truncation ([`FollowerPartition::on_truncated`]). Answers that do not match the current
//! request (a duplicate, a late answer to an older request, one from a deposed leader) are
//! dropped, so a lossy or reordering transport is fine.

use crate::replication::{EpochLookup, FetchDecision, FetchRequest};
use crate::types::{LeaderEpoch, NodeId, Offset, PartitionAssignment};

/// What the broker does with a fetch answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowerAction {
    /// Append the records of the answer with the leader's offsets and epochs, starting at
    /// `from` (the local log end), then call `on_local_append` and, once synced,
    /// `on_local_durable`.
    Append {
        /// Where the records start: the local log end.
        from: Offset,
    },
    /// Cut the local log (and its epoch cache) so that it ends at or before `to`, then call
    /// `on_truncated`.
    Truncate {
        /// The new log end at most.
        to: Offset,
    },
    /// Nothing new, or the leader is behind: fetch again later.
    Backoff,
    /// The leader says this follower's assignment is stale or that it is no replica: wait for
    /// a newer assignment before fetching again.
    AwaitAssignment,
    /// The answer does not belong to the current request; drop it.
    Stale,
}

/// What an assignment committed by the controller means for a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FollowerUpdate {
    /// Older than (or as old as) the assignment already known; nothing changed.
    Stale,
    /// Still a follower; the leader, epoch or ISR may have changed.
    Applied,
    /// This node is the new leader: the broker builds a [`crate::replication::LeaderPartition`]
    /// from the log as it stands.
    BecomeLeader,
}

/// Local work the follower waits for before it fetches again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waiting {
    /// The records of an answer are being appended.
    Append,
    /// The log is being truncated to end at or before this offset.
    Truncate(Offset),
}

/// A follower replica's fetch state for one partition.
#[derive(Clone, Debug)]
pub struct FollowerPartition {
    me: NodeId,
    assignment: PartitionAssignment,
    /// The local log end, durable or not.
    log_end: Offset,
    /// The latest epoch of the local epoch cache (Kafka's `log.latestEpoch`), sent as the last
    /// fetched epoch.
    latest_epoch: Option<LeaderEpoch>,
    /// The local durable log end: the fetch offset.
    durable_end: Offset,
    /// The leader's high watermark as last heard, capped to the local log end.
    high_watermark: Offset,
    waiting: Option<Waiting>,
}

impl FollowerPartition {
    /// Follows `assignment` with the local log as it stands: `log_end` (all appended),
    /// `durable_end` (synced) and the latest epoch of its epoch cache.
    pub fn new(
        me: NodeId,
        assignment: PartitionAssignment,
        log_end: Offset,
        durable_end: Offset,
        latest_epoch: Option<LeaderEpoch>,
    ) -> FollowerPartition {
        assert!(durable_end <= log_end, "durable end past the log end");
        FollowerPartition {
            me,
            assignment,
            log_end,
            latest_epoch,
            durable_end,
            high_watermark: Offset(0),
            waiting: None,
        }
    }

    /// The committed assignment this follower acts on.
    pub fn assignment(&self) -> &PartitionAssignment {
        &self.assignment
    }

    /// The leader to fetch from, if there is one and it is not this node.
    pub fn leader(&self) -> Option<NodeId> {
        self.assignment.leader.filter(|&l| l != self.me)
    }

    /// The leader's high watermark as last heard, capped to the local log end.
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// The next fetch to send to [`FollowerPartition::leader`], or `None` while there is no
    /// leader, an append or truncation is under way, or appended data is not durable yet.
    pub fn next_fetch(&self) -> Option<FetchRequest> {
        self.leader()?;
        if self.waiting.is_some() || self.durable_end < self.log_end {
            return None;
        }
        Some(FetchRequest {
            offset: self.durable_end,
            last_fetched_epoch: self.latest_epoch,
            current_leader_epoch: Some(self.assignment.leader_epoch),
        })
    }

    /// The leader answered `request` with `decision`, with records (`has_records`) or without.
    /// `epochs` looks up the local log's epochs (for truncation after a divergence).
    pub fn on_fetch_response(
        &mut self,
        request: &FetchRequest,
        decision: &FetchDecision,
        has_records: bool,
        epochs: &impl EpochLookup,
    ) -> FollowerAction {
        if self.next_fetch() != Some(*request) {
            return FollowerAction::Stale;
        }
        match *decision {
            FetchDecision::Read { high_watermark, .. } => {
                self.high_watermark = self.high_watermark.max(high_watermark.min(self.log_end));
                if has_records {
                    self.waiting = Some(Waiting::Append);
                    FollowerAction::Append { from: self.log_end }
                } else {
                    FollowerAction::Backoff
                }
            }
            FetchDecision::Diverging { epoch, end_offset } => {
                // Kafka's follower truncation: to where the epoch ends on the leader, or
                // earlier if it ends earlier here. If this log does not know `epoch`, its end
                // for it is where its next higher epoch starts, which is earlier than where
                // the leader's data of `epoch` could begin to differ; the next fetch says the
                // older epoch and the leader answers again.
                let (local_epoch, local_end) = epochs.end_offset_for(epoch);
                let mut to = end_offset.min(self.log_end);
                if local_epoch.0 >= 0 && local_end.0 >= 0 {
                    to = to.min(local_end);
                }
                self.waiting = Some(Waiting::Truncate(to));
                FollowerAction::Truncate { to }
            }
            FetchDecision::OffsetOutOfRange { log_end } if log_end < self.log_end => {
                // The leader's log ends before this one (Kafka truncates to the leader's end).
                self.waiting = Some(Waiting::Truncate(log_end));
                FollowerAction::Truncate { to: log_end }
            }
            FetchDecision::OffsetOutOfRange { .. } | FetchDecision::UnknownLeaderEpoch => {
                FollowerAction::Backoff
            }
            FetchDecision::FencedLeaderEpoch
            | FetchDecision::NotReplica
            | FetchDecision::NotLeader => FollowerAction::AwaitAssignment,
        }
    }

    /// The broker appended the records of the last answer: the log now ends at `log_end` and
    /// the latest epoch of its epoch cache is `latest_epoch`.
    pub fn on_local_append(&mut self, log_end: Offset, latest_epoch: LeaderEpoch) {
        assert!(log_end >= self.log_end, "an append never shrinks the log");
        if self.waiting == Some(Waiting::Append) {
            self.waiting = None;
        }
        self.log_end = log_end;
        self.latest_epoch = Some(latest_epoch);
    }

    /// The local log is durable up to `durable_end`.
    pub fn on_local_durable(&mut self, durable_end: Offset) {
        self.durable_end = self.durable_end.max(durable_end.min(self.log_end));
    }

    /// The broker truncated the log: it now ends at `log_end` (at or before the offset asked
    /// for) and the latest epoch of its epoch cache is `latest_epoch` (`None` if empty). The
    /// cut is durable.
    pub fn on_truncated(&mut self, log_end: Offset, latest_epoch: Option<LeaderEpoch>) {
        if let Some(Waiting::Truncate(to)) = self.waiting {
            assert!(log_end <= to, "truncated less than asked");
            self.waiting = None;
        }
        self.log_end = log_end;
        self.latest_epoch = latest_epoch;
        self.durable_end = self.durable_end.min(log_end);
        self.high_watermark = self.high_watermark.min(log_end);
    }

    /// The controller committed `new`. Returns whether this node now leads.
    pub fn apply_assignment(&mut self, new: PartitionAssignment) -> FollowerUpdate {
        if new.partition_epoch <= self.assignment.partition_epoch {
            return FollowerUpdate::Stale;
        }
        assert!(
            new.leader_epoch >= self.assignment.leader_epoch,
            "leader epochs only grow"
        );
        let leads = new.leader == Some(self.me);
        self.assignment = new;
        if leads {
            FollowerUpdate::BecomeLeader
        } else {
            FollowerUpdate::Applied
        }
    }
}

#[cfg(test)]
mod tests;
