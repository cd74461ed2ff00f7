//! The leader's side of one partition: follower fetch state, the ISR, the high watermark.
//!
//! Which ISR counts where, while an ISR change is pending at the controller (Kafka's
//! `PendingExpandIsr` / `PendingShrinkIsr`):
//! - the high watermark is the minimum over the *maximal* ISR, the committed ISR united with the
//!   proposed one. The controller may commit either of them (or elect a new leader from the
//!   committed one meanwhile), so the high watermark must be safe under both: a member being
//!   added already counts, a member being removed still counts until the removal is committed;
//! - `min.insync.replicas` is checked against the *committed* ISR, for produce admission, for
//!   waiting acks=all produces and for advancing the high watermark. A proposed expansion does
//!   not count until committed (the controller may refuse it), and a proposed shrink only makes
//!   the committed ISR an over-estimate for as long as the shrinking member still counts in the
//!   high watermark, so acknowledged data is on that member anyway;
//! - acks=all admission and waiting produces also look at the pending proposal: once the leader
//!   has proposed an ISR whose members in common with the committed one are fewer than
//!   `min.insync.replicas`, new acks=all produces are refused and waiting ones fail. Refusing
//!   is always safe, and the controller may be unable to commit the shrink at all (the failure
//!   that took the followers may have taken the controller's majority too, when every node is
//!   a voter), which would otherwise leave producers waiting until their timeout.

use std::collections::BTreeMap;

use crate::replication::{EpochLookup, FetchDecision};
use crate::types::{LeaderEpoch, NodeId, Offset, PartitionAssignment};

/// The replication settings of a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// `min.insync.replicas`: the committed ISR size below which acks=all produces are refused
    /// and the high watermark stops.
    pub min_insync_replicas: usize,
    /// `replica.lag.time.max.ms`: a follower not caught up for longer leaves the ISR.
    pub replica_lag_time_max_ms: i64,
    /// How long an ISR change proposal waits for the controller's answer before it is sent
    /// again (Kafka retries AlterPartition).
    pub isr_change_retry_ms: i64,
}

/// A request to the controller to commit a new ISR (Kafka's AlterPartition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrChangeRequest {
    /// The proposing leader.
    pub leader: NodeId,
    /// The proposing leader's epoch; the controller refuses a stale one.
    pub leader_epoch: LeaderEpoch,
    /// The `partition_epoch` of the assignment the proposal is based on; the controller refuses
    /// the proposal if its assignment has moved on.
    pub partition_epoch: i32,
    /// The proposed ISR, in replica order; always contains the leader.
    pub new_isr: Vec<NodeId>,
}

/// What an assignment committed by the controller means for the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaderUpdate {
    /// Older than (or as old as) the assignment already known; nothing changed.
    Stale,
    /// Still the leader in the same epoch; the ISR or replicas were updated.
    Applied,
    /// Another leader or another epoch: this leader state is finished. The broker fails the
    /// waiting produces and becomes a follower (or drops the partition if no longer a replica).
    Resign,
}

/// Why a produce is refused before it is appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProduceError {
    /// acks=all while the committed ISR is smaller than `min.insync.replicas`
    /// (NOT_ENOUGH_REPLICAS, 19).
    #[error("not enough replicas: ISR has {isr} of min.insync.replicas {min_insync}")]
    NotEnoughReplicas {
        /// Size of the committed ISR.
        isr: usize,
        /// `min.insync.replicas`.
        min_insync: usize,
    },
}

/// Where an appended acks=all produce stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckStatus {
    /// The high watermark passed the batch: answer success.
    Done,
    /// Not yet replicated to the ISR: keep waiting.
    Wait,
    /// The committed ISR fell below `min.insync.replicas` while the produce waited, so the high
    /// watermark cannot pass it until the ISR grows back (NOT_ENOUGH_REPLICAS_AFTER_APPEND, 20).
    NotEnoughReplicasAfterAppend,
}

/// The leader's knowledge of one follower.
#[derive(Clone, Copy, Debug, Default)]
struct FollowerState {
    /// The follower's durable log end, as of its last fetch; `None` until it fetched from
    /// this leader (a new leader knows nothing of its followers).
    fetch_offset: Option<Offset>,
    /// The last time the follower was caught up with the leader's log end.
    last_caught_up_ms: Option<i64>,
    /// The leader's log end and the time at the follower's previous fetch (Kafka's
    /// `lastFetchLeaderLogEndOffset`, `lastFetchTimeMs`).
    last_fetch: Option<(Offset, i64)>,
}

/// An ISR change sent to the controller and not answered yet.
#[derive(Clone, Debug)]
struct PendingIsrChange {
    request: IsrChangeRequest,
    sent_ms: i64,
}

/// The leader's state of one partition, from becoming leader in one epoch until it resigns.
#[derive(Clone, Debug)]
pub struct LeaderPartition {
    me: NodeId,
    config: ReplicationConfig,
    /// The last assignment the controller committed that this leader knows of.
    assignment: PartitionAssignment,
    /// The ISR change in flight, if any (one at a time).
    pending: Option<PendingIsrChange>,
    /// The local log end offset, durable or not.
    log_end: Offset,
    /// The local durable log end offset: only this counts towards the high watermark.
    durable_end: Offset,
    /// The log end when this leader's epoch began.
    epoch_start_offset: Offset,
    high_watermark: Offset,
    /// Every replica but this one.
    followers: BTreeMap<NodeId, FollowerState>,
    /// Replicas the controller would refuse into the ISR (fenced brokers: dead, cut off or
    /// shutting down), however well they fetch.
    ineligible: Vec<NodeId>,
}

impl LeaderPartition {
    /// Takes over as leader of `assignment` (which names `me` as leader) with the local log as
    /// it stands: `log_end` (all appended), `durable_end` (synced) and the high watermark known
    /// from the previous leader (capped to the durable end). ISR followers count as caught up
    /// now, so they get `replica.lag.time.max.ms` to fetch before they are dropped; their
    /// offsets are unknown until they fetch.
    pub fn new(
        me: NodeId,
        assignment: PartitionAssignment,
        config: ReplicationConfig,
        log_end: Offset,
        durable_end: Offset,
        high_watermark: Offset,
        now_ms: i64,
    ) -> LeaderPartition {
        assert_eq!(assignment.leader, Some(me), "leader state on a non-leader");
        assert!(durable_end <= log_end, "durable end past the log end");
        let followers = assignment
            .replicas
            .iter()
            .filter(|&&r| r != me)
            .map(|&r| {
                let state = FollowerState {
                    last_caught_up_ms: assignment.isr.contains(&r).then_some(now_ms),
                    ..FollowerState::default()
                };
                (r, state)
            })
            .collect();
        LeaderPartition {
            me,
            config,
            assignment,
            pending: None,
            log_end,
            durable_end,
            epoch_start_offset: log_end,
            high_watermark: high_watermark.min(durable_end),
            followers,
            ineligible: Vec::new(),
        }
    }

    /// The replicas that may not join the ISR now (the controller's fenced brokers).
    pub fn set_ineligible(&mut self, nodes: Vec<NodeId>) {
        self.ineligible = nodes;
    }

    /// New settings (a topic's `min.insync.replicas` changed); the high watermark may move.
    /// Returns whether it moved.
    pub fn set_config(&mut self, config: ReplicationConfig) -> bool {
        self.config = config;
        self.maybe_advance_high_watermark()
    }

    /// The settings in force.
    pub fn config(&self) -> ReplicationConfig {
        self.config
    }

    /// The committed assignment this leader acts on.
    pub fn assignment(&self) -> &PartitionAssignment {
        &self.assignment
    }

    /// The leader epoch, stamped into every batch this leader appends.
    pub fn leader_epoch(&self) -> LeaderEpoch {
        self.assignment.leader_epoch
    }

    /// The high watermark: every offset below it is durable on every ISR member.
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// The log end when this leader's epoch began.
    pub fn epoch_start_offset(&self) -> Offset {
        self.epoch_start_offset
    }

    /// The maximal ISR: the committed ISR united with the pending proposal's.
    pub fn maximal_isr(&self) -> Vec<NodeId> {
        let proposed = self.pending.as_ref().map(|p| &p.request.new_isr);
        self.assignment
            .replicas
            .iter()
            .copied()
            .filter(|r| self.assignment.isr.contains(r) || proposed.is_some_and(|p| p.contains(r)))
            .collect()
    }

    /// Whether the committed ISR is below `min.insync.replicas`.
    fn under_min_isr(&self) -> bool {
        self.assignment.isr.len() < self.config.min_insync_replicas
    }

    /// The committed ISR members that the pending proposal (if any) keeps: the replicas known
    /// to be in sync whatever the controller decides.
    fn sure_isr_len(&self) -> usize {
        match &self.pending {
            Some(p) => self
                .assignment
                .isr
                .iter()
                .filter(|n| p.request.new_isr.contains(n))
                .count(),
            None => self.assignment.isr.len(),
        }
    }

    /// Whether acks=all produces are refused (or fail while waiting): the committed ISR, or
    /// what a pending proposal keeps of it, is below `min.insync.replicas`.
    fn refuses_acks_all(&self) -> bool {
        self.sure_isr_len() < self.config.min_insync_replicas
    }

    /// The broker appended to the local log, which now ends at `log_end`.
    pub fn on_local_append(&mut self, log_end: Offset) {
        assert!(log_end >= self.log_end, "a leader's log never shrinks");
        self.log_end = log_end;
    }

    /// The local log is durable up to `durable_end`. Returns whether the high watermark moved.
    pub fn on_local_durable(&mut self, durable_end: Offset) -> bool {
        assert!(durable_end <= self.log_end, "durable past the log end");
        self.durable_end = self.durable_end.max(durable_end);
        self.maybe_advance_high_watermark()
    }

    /// A follower's fetch. Checks, in Kafka's order: the leader epoch, that `node` is a
    /// follower, divergence of the follower's log (if it says its last fetched epoch), the
    /// offset range. Only a fetch answered with `Read` counts as the follower's durable end and
    /// for its caught-up time.
    pub fn on_follower_fetch(
        &mut self,
        node: NodeId,
        fetch_offset: Offset,
        last_fetched_epoch: Option<LeaderEpoch>,
        current_leader_epoch: Option<LeaderEpoch>,
        now_ms: i64,
        epochs: &impl EpochLookup,
    ) -> FetchDecision {
        let ours = self.assignment.leader_epoch;
        match current_leader_epoch {
            Some(e) if e < ours => return FetchDecision::FencedLeaderEpoch,
            Some(e) if e > ours => return FetchDecision::UnknownLeaderEpoch,
            _ => {}
        }
        if !self.followers.contains_key(&node) {
            return FetchDecision::NotReplica;
        }
        if let Some(last) = last_fetched_epoch {
            let (epoch, end_offset) = epochs.end_offset_for(last);
            if epoch.0 < 0 || end_offset.0 < 0 {
                // Kafka answers OFFSET_OUT_OF_RANGE when the leader knows no such epoch.
                return FetchDecision::OffsetOutOfRange {
                    log_end: self.log_end,
                };
            }
            if epoch < last || end_offset < fetch_offset {
                return FetchDecision::Diverging { epoch, end_offset };
            }
        }
        if fetch_offset.0 < 0 || fetch_offset > self.log_end {
            return FetchDecision::OffsetOutOfRange {
                log_end: self.log_end,
            };
        }
        let log_end = self.log_end;
        let state = self
            .followers
            .get_mut(&node)
            .expect("checked to be a follower above");
        state.fetch_offset = Some(fetch_offset);
        // Kafka's ReplicaState.updateFetchStateOrThrow: caught up now if at the leader's end,
        // else caught up as of the previous fetch if at the end the leader had then.
        let mut caught_up_ms = None;
        if fetch_offset >= log_end {
            caught_up_ms = Some(now_ms);
        } else if let Some((prev_end, prev_ms)) = state.last_fetch {
            if fetch_offset >= prev_end {
                caught_up_ms = Some(prev_ms);
            }
        }
        if let Some(t) = caught_up_ms {
            state.last_caught_up_ms = Some(state.last_caught_up_ms.map_or(t, |c| c.max(t)));
        }
        state.last_fetch = Some((log_end, now_ms));
        self.maybe_advance_high_watermark();
        FetchDecision::Read {
            from: fetch_offset,
            high_watermark: self.high_watermark,
        }
    }

    /// Moves the high watermark to the minimum durable end over the maximal ISR, if the
    /// committed ISR is at least `min.insync.replicas` and that minimum is higher. Returns
    /// whether it moved.
    fn maybe_advance_high_watermark(&mut self) -> bool {
        if self.under_min_isr() {
            return false;
        }
        let mut candidate = self.durable_end;
        for member in self.maximal_isr() {
            if member == self.me {
                continue;
            }
            // A member that has not fetched from this leader holds, as far as we know, nothing.
            match self.followers.get(&member).and_then(|f| f.fetch_offset) {
                Some(end) => candidate = candidate.min(end),
                None => return false,
            }
        }
        if candidate > self.high_watermark {
            self.high_watermark = candidate;
            true
        } else {
            false
        }
    }

    /// Whether a follower counts as caught up at `now_ms` (Kafka's `isCaughtUp`): at the
    /// leader's log end, or caught up within `replica.lag.time.max.ms`.
    fn is_caught_up(&self, state: &FollowerState, now_ms: i64) -> bool {
        if state.fetch_offset.is_some_and(|o| o >= self.log_end) {
            return true;
        }
        state
            .last_caught_up_ms
            .is_some_and(|t| now_ms - t <= self.config.replica_lag_time_max_ms)
    }

    /// Whether a follower outside the ISR may join it (Kafka's `isFollowerInSync`): it holds
    /// durably the high watermark and everything this leader had when its epoch began, and it
    /// is alive: it fetched within `replica.lag.time.max.ms`. Kafka only considers an expansion
    /// when the follower fetches; without the last condition a dead follower whose last fetch
    /// reached the high watermark (which stops while the ISR is below min ISR) would be added
    /// back, dropped again once the leader appends, and so on.
    fn may_join_isr(&self, state: &FollowerState, now_ms: i64) -> bool {
        let alive = state
            .last_fetch
            .is_some_and(|(_, at)| now_ms - at <= self.config.replica_lag_time_max_ms);
        alive
            && state
                .fetch_offset
                .is_some_and(|o| o >= self.high_watermark && o >= self.epoch_start_offset)
    }

    /// Periodic work: proposes an ISR change (lagging members out, caught-up replicas in) if
    /// none is pending, or sends the pending one again if the controller has not answered for
    /// `isr_change_retry_ms`. The caller sends the request to the controller.
    pub fn tick(&mut self, now_ms: i64) -> Option<IsrChangeRequest> {
        if let Some(pending) = &mut self.pending {
            if now_ms - pending.sent_ms >= self.config.isr_change_retry_ms {
                pending.sent_ms = now_ms;
                return Some(pending.request.clone());
            }
            return None;
        }
        let new_isr: Vec<NodeId> = self
            .assignment
            .replicas
            .iter()
            .copied()
            .filter(|&r| {
                if r == self.me {
                    return true;
                }
                let Some(state) = self.followers.get(&r) else {
                    return false;
                };
                if self.assignment.isr.contains(&r) {
                    self.is_caught_up(state, now_ms)
                } else {
                    !self.ineligible.contains(&r) && self.may_join_isr(state, now_ms)
                }
            })
            .collect();
        if same_members(&new_isr, &self.assignment.isr) {
            return None;
        }
        let request = IsrChangeRequest {
            leader: self.me,
            leader_epoch: self.assignment.leader_epoch,
            partition_epoch: self.assignment.partition_epoch,
            new_isr,
        };
        self.pending = Some(PendingIsrChange {
            request: request.clone(),
            sent_ms: now_ms,
        });
        Some(request)
    }

    /// The ISR change in flight, if any.
    pub fn pending_isr_change(&self) -> Option<&IsrChangeRequest> {
        self.pending.as_ref().map(|p| &p.request)
    }

    /// The controller committed `new` (the answer to an ISR change, someone else's change, or
    /// a new leader or epoch). A newer assignment ends the pending ISR change, whatever it says:
    /// the controller refuses a proposal based on an older `partition_epoch`, so once a newer
    /// one is known the proposal is either in it or dead.
    pub fn apply_assignment(&mut self, new: PartitionAssignment) -> LeaderUpdate {
        if new.partition_epoch <= self.assignment.partition_epoch {
            return LeaderUpdate::Stale;
        }
        if new.leader != Some(self.me) || new.leader_epoch != self.assignment.leader_epoch {
            return LeaderUpdate::Resign;
        }
        debug_assert!(
            new.isr.contains(&self.me),
            "the leader is always in its ISR"
        );
        self.pending = None;
        self.followers.retain(|r, _| new.replicas.contains(r));
        for &r in &new.replicas {
            if r != self.me {
                self.followers.entry(r).or_default();
            }
        }
        self.assignment = new;
        self.maybe_advance_high_watermark();
        LeaderUpdate::Applied
    }

    /// Produce admission: acks=all is refused while the committed ISR, or what a pending
    /// proposal keeps of it, is below `min.insync.replicas`.
    pub fn check_produce(&self, acks_all: bool) -> Result<(), ProduceError> {
        if acks_all && self.refuses_acks_all() {
            return Err(ProduceError::NotEnoughReplicas {
                isr: self.sure_isr_len(),
                min_insync: self.config.min_insync_replicas,
            });
        }
        Ok(())
    }

    /// Where an appended acks=all produce ending at `batch_end` (its last offset + 1) stands.
    /// Done once the high watermark passed it (with strict min ISR that means it was durable on
    /// at least `min.insync.replicas` members). Unlike Kafka, which answers
    /// NOT_ENOUGH_REPLICAS_AFTER_APPEND for a batch the high watermark has passed if the ISR is
    /// small *now*, a committed batch is reported done; the error is for a batch that is not
    /// committed while the committed ISR (or what a pending proposal keeps of it) is too small
    /// to commit it.
    pub fn ack_status(&self, batch_end: Offset) -> AckStatus {
        if self.high_watermark >= batch_end {
            AckStatus::Done
        } else if self.refuses_acks_all() {
            AckStatus::NotEnoughReplicasAfterAppend
        } else {
            AckStatus::Wait
        }
    }

    /// The follower's durable end as of its last fetch, if it fetched from this leader.
    pub fn follower_fetch_offset(&self, node: NodeId) -> Option<Offset> {
        self.followers.get(&node).and_then(|f| f.fetch_offset)
    }
}

/// Whether two ISRs hold the same nodes.
fn same_members(a: &[NodeId], b: &[NodeId]) -> bool {
    a.len() == b.len() && a.iter().all(|n| b.contains(n))
}

#[cfg(test)]
mod tests;
