//! The leader's work: following its log's durable end, answering followers' fetches, and
//! telling acks=all produces when their batch is replicated.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{select, select_all};
use kafka_protocol::ResponseError as E;
use strom_cluster::replication::{AckStatus, FetchDecision};
use strom_cluster::{LeaderEpoch, NodeId, Offset};

use super::{LeaderReplica, LogLookup, Replicas};
use crate::clock::now_ms;
use crate::shard::ops::{read_error, FetchResult};
use crate::shard::Shard;

/// How often a waiting task checks that its leadership still stands, at the latest.
const RECHECK_MS: u64 = 1_000;

/// One partition of a follower's fetch (Fetch v12 with `replica_id`).
pub struct ReplicaFetchPart {
    pub topic: Arc<str>,
    pub partition: i32,
    /// The follower's durable log end.
    pub offset: i64,
    /// The latest epoch of the follower's epoch cache, -1 if none.
    pub last_fetched_epoch: i32,
    /// The leader epoch the follower follows, -1 if not given.
    pub current_leader_epoch: i32,
    pub max_bytes: u32,
}

/// Keeps the leader's machine told of the log's durable end (the leader's own share of the
/// high watermark) for as long as the leadership lasts.
pub(super) async fn follow_durable_end(leader: Rc<LeaderReplica>) {
    while !leader.resigned.get() {
        let durable = leader.log.listen_durable();
        leader.sync();
        let timer = glommio::timer::Timer::new(Duration::from_millis(RECHECK_MS));
        select(durable, Box::pin(timer)).await;
    }
}

/// Answers a follower's fetch for partitions of this shard: each partition is counted as the
/// follower's durable end (which may move the high watermark) and read from the log up to its
/// end. If no partition has records or an error, waits up to `wait_ms` for an append, then
/// answers what it has.
pub async fn serve_replica_fetch(
    shard: &Rc<Shard>,
    node: i32,
    parts: Vec<ReplicaFetchPart>,
    wait_ms: u64,
) -> Vec<FetchResult> {
    let Some(replicas) = shard.replicas.clone() else {
        return parts.iter().map(|_| not_leader(None)).collect();
    };
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    loop {
        // Listening before reading, so an append in between is not missed.
        let listeners: Vec<_> = parts
            .iter()
            .filter_map(|p| replicas.leader(&p.topic, p.partition))
            .map(|l| l.log.listen_append())
            .collect();
        let mut results = Vec::with_capacity(parts.len());
        for p in &parts {
            results.push(read_for_follower(shard, &replicas, node, p).await);
        }
        let answer_now = listeners.is_empty()
            || results
                .iter()
                .any(|r| r.error != 0 || r.slice.is_some() || r.diverging_epoch.is_some());
        let left = deadline.saturating_duration_since(Instant::now());
        if answer_now || left.is_zero() {
            return results;
        }
        let timer = glommio::timer::Timer::new(left);
        select(select_all(listeners), Box::pin(timer)).await;
    }
}

fn not_leader(current_leader: Option<(i32, i32)>) -> FetchResult {
    FetchResult {
        error: E::NotLeaderOrFollower.code(),
        high_watermark: -1,
        last_stable_offset: -1,
        log_start_offset: -1,
        slice: None,
        diverging_epoch: None,
        current_leader,
    }
}

/// One partition of a follower's fetch.
async fn read_for_follower(
    shard: &Rc<Shard>,
    replicas: &Replicas,
    node: i32,
    p: &ReplicaFetchPart,
) -> FetchResult {
    let Some(leader) = replicas.leader(&p.topic, p.partition) else {
        let hint = shard.quorum.as_ref().and_then(|view| {
            let state = view.load();
            let record = state.image.partition(&p.topic, p.partition)?;
            Some((record.leader, record.leader_epoch))
        });
        return not_leader(hint);
    };
    leader.sync();
    let decision = leader.state.borrow_mut().on_follower_fetch(
        NodeId(node),
        Offset(p.offset),
        (p.last_fetched_epoch >= 0).then_some(LeaderEpoch(p.last_fetched_epoch)),
        (p.current_leader_epoch >= 0).then_some(LeaderEpoch(p.current_leader_epoch)),
        now_ms(),
        &LogLookup(&leader.log),
    );
    leader.publish_high_watermark();
    let log = &leader.log;
    let hw = leader.state.borrow().high_watermark().0;
    let mut r = FetchResult::at(hw, log.log_start_offset().0);
    match decision {
        FetchDecision::Read { from, .. } => match log.read_to_log_end(from, p.max_bytes).await {
            Ok(slice) => r.slice = slice,
            Err(e) => r.error = read_error(&e),
        },
        FetchDecision::Diverging { epoch, end_offset } => {
            r.diverging_epoch = Some((epoch.0, end_offset.0));
        }
        FetchDecision::FencedLeaderEpoch => r.error = E::FencedLeaderEpoch.code(),
        FetchDecision::UnknownLeaderEpoch => r.error = E::UnknownLeaderEpoch.code(),
        FetchDecision::NotReplica | FetchDecision::NotLeader => {
            r.error = E::NotLeaderOrFollower.code();
        }
        FetchDecision::OffsetOutOfRange { log_end } => {
            // For a follower, the high watermark field of this answer carries the leader's
            // log end offset: a follower ahead of it truncates to it.
            r.error = E::OffsetOutOfRange.code();
            r.high_watermark = log_end.0;
        }
    }
    r
}

/// What became of an acks=all produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// Durable on every ISR member (the high watermark passed it).
    Done,
    /// The ISR fell below `min.insync.replicas` before the batch was replicated.
    NotEnoughReplicasAfterAppend,
    /// This node stopped leading the partition.
    NotLeader,
    /// Not replicated within the request's timeout.
    TimedOut,
}

/// Waits until the batch ending at `batch_end` is replicated to the ISR, or can no longer be
/// acknowledged.
pub async fn wait_for_ack(
    replicas: &Replicas,
    leader: &Rc<LeaderReplica>,
    batch_end: Offset,
    timeout_ms: u64,
) -> AckOutcome {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let moved = leader.hw_event.listen();
        let isr = replicas.isr_changed.listen();
        if leader.resigned.get() {
            return AckOutcome::NotLeader;
        }
        leader.sync();
        match leader.state.borrow().ack_status(batch_end) {
            AckStatus::Done => return AckOutcome::Done,
            AckStatus::NotEnoughReplicasAfterAppend => {
                return AckOutcome::NotEnoughReplicasAfterAppend
            }
            AckStatus::Wait => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return AckOutcome::TimedOut;
        }
        let timer = glommio::timer::Timer::new(left.min(Duration::from_millis(RECHECK_MS)));
        select(select(moved, isr), Box::pin(timer)).await;
    }
}
