//! Unit tests of the leader's rules, one rule per test.

use strom_storage::epoch_cache::EpochCache;

use super::*;
use crate::replication::LogEpochs;

const L: NodeId = NodeId(1);
const F1: NodeId = NodeId(2);
const F2: NodeId = NodeId(3);
const LAG_MS: i64 = 100;
const RETRY_MS: i64 = 50;

fn o(n: i64) -> Offset {
    Offset(n)
}

fn e(n: i32) -> LeaderEpoch {
    LeaderEpoch(n)
}

fn assignment(isr: &[NodeId], epoch: i32, partition_epoch: i32) -> PartitionAssignment {
    PartitionAssignment {
        replicas: vec![L, F1, F2],
        isr: isr.to_vec(),
        leader: Some(L),
        leader_epoch: e(epoch),
        partition_epoch,
    }
}

fn config(min_insync_replicas: usize) -> ReplicationConfig {
    ReplicationConfig {
        min_insync_replicas,
        replica_lag_time_max_ms: LAG_MS,
        isr_change_retry_ms: RETRY_MS,
    }
}

/// A leader in epoch 2 with ISR `isr`, min ISR 2, whose log (epoch 0 from 0, epoch 2 from 10)
/// ends at `end`, all durable; it took over at offset 10.
fn leader(isr: &[NodeId], end: i64) -> (LeaderPartition, EpochCache) {
    let mut cache = EpochCache::new();
    cache.assign(e(0), o(0));
    cache.assign(e(2), o(10));
    let mut l = LeaderPartition::new(L, assignment(isr, 2, 5), config(2), o(10), o(10), o(0), 0);
    l.on_local_append(o(end));
    l.on_local_durable(o(end));
    (l, cache)
}

/// A fetch by `node` at `offset` in epoch 2 whose last batch is of epoch 2.
fn fetch(
    l: &mut LeaderPartition,
    cache: &EpochCache,
    node: NodeId,
    offset: i64,
    now: i64,
) -> FetchDecision {
    let end = l.log_end;
    l.on_follower_fetch(
        node,
        o(offset),
        Some(e(2)),
        Some(e(2)),
        now,
        &LogEpochs {
            cache,
            log_end: end,
        },
    )
}

fn read(from: i64, hw: i64) -> FetchDecision {
    FetchDecision::Read {
        from: o(from),
        high_watermark: o(hw),
    }
}

#[test]
fn fetches_in_another_leader_epoch_are_fenced() {
    let (mut l, cache) = leader(&[L, F1, F2], 20);
    let epochs = LogEpochs {
        cache: &cache,
        log_end: o(20),
    };
    let stale = l.on_follower_fetch(F1, o(12), Some(e(2)), Some(e(1)), 0, &epochs);
    assert_eq!(stale, FetchDecision::FencedLeaderEpoch);
    let newer = l.on_follower_fetch(F1, o(12), Some(e(2)), Some(e(3)), 0, &epochs);
    assert_eq!(newer, FetchDecision::UnknownLeaderEpoch);
    assert_eq!(
        l.follower_fetch_offset(F1),
        None,
        "a fenced fetch counts for nothing"
    );
    let unchecked = l.on_follower_fetch(F1, o(12), Some(e(2)), None, 0, &epochs);
    assert_eq!(
        unchecked,
        read(12, 0),
        "no current epoch: not checked (old clients)"
    );
}

#[test]
fn only_follower_replicas_may_fetch() {
    let (mut l, cache) = leader(&[L, F1, F2], 20);
    assert_eq!(
        fetch(&mut l, &cache, NodeId(9), 12, 0),
        FetchDecision::NotReplica
    );
    assert_eq!(fetch(&mut l, &cache, L, 12, 0), FetchDecision::NotReplica);
}

#[test]
fn a_divergent_follower_log_gets_the_end_of_its_last_epoch() {
    let (mut l, cache) = leader(&[L, F1, F2], 20);
    let epochs = LogEpochs {
        cache: &cache,
        log_end: o(20),
    };
    // Epoch 0 ends at 10 here: the follower's epoch-0 data past 10 is not the leader's.
    let past_end = l.on_follower_fetch(F1, o(15), Some(e(0)), Some(e(2)), 0, &epochs);
    assert_eq!(
        past_end,
        FetchDecision::Diverging {
            epoch: e(0),
            end_offset: o(10)
        }
    );
    // Epoch 1 is unknown here: the largest epoch below it is 0, which ends at 10.
    let unknown_epoch = l.on_follower_fetch(F1, o(8), Some(e(1)), Some(e(2)), 0, &epochs);
    assert_eq!(
        unknown_epoch,
        FetchDecision::Diverging {
            epoch: e(0),
            end_offset: o(10)
        }
    );
    assert_eq!(
        l.follower_fetch_offset(F1),
        None,
        "a divergent fetch counts for nothing"
    );
    // Epoch 0 up to 10 is the leader's: in sync.
    let at_end = l.on_follower_fetch(F1, o(10), Some(e(0)), Some(e(2)), 0, &epochs);
    assert_eq!(at_end, read(10, 0));
    assert_eq!(l.follower_fetch_offset(F1), Some(o(10)));
}

#[test]
fn a_fetch_past_the_log_end_is_out_of_range() {
    let (mut l, cache) = leader(&[L, F1, F2], 20);
    let epochs = LogEpochs {
        cache: &cache,
        log_end: o(20),
    };
    let no_epoch = l.on_follower_fetch(F1, o(25), None, Some(e(2)), 0, &epochs);
    assert_eq!(no_epoch, FetchDecision::OffsetOutOfRange { log_end: o(20) });
    // With its last epoch the follower learns where that epoch ends instead.
    let with_epoch = l.on_follower_fetch(F1, o(25), Some(e(2)), Some(e(2)), 0, &epochs);
    assert_eq!(
        with_epoch,
        FetchDecision::Diverging {
            epoch: e(2),
            end_offset: o(20)
        }
    );
}

#[test]
fn the_high_watermark_is_the_minimum_durable_end_over_the_isr() {
    let (mut l, cache) = leader(&[L, F1, F2], 20);
    assert_eq!(
        fetch(&mut l, &cache, F1, 16, 1),
        read(16, 0),
        "F2 unknown yet"
    );
    assert_eq!(fetch(&mut l, &cache, F2, 12, 1), read(12, 12));
    assert_eq!(fetch(&mut l, &cache, F2, 20, 2), read(20, 16));
    assert_eq!(fetch(&mut l, &cache, F1, 20, 3), read(20, 20));
    // A follower going back (a late duplicate of an old fetch) never moves it back.
    assert_eq!(fetch(&mut l, &cache, F1, 14, 4), read(14, 20));
}

#[test]
fn only_the_leaders_durable_data_counts() {
    let (mut l, cache) = leader(&[L, F1, F2], 20);
    l.on_local_append(o(30));
    fetch(&mut l, &cache, F1, 30, 1);
    fetch(&mut l, &cache, F2, 30, 1);
    assert_eq!(
        l.high_watermark(),
        o(20),
        "the leader has 30 but only 20 durably"
    );
    assert!(l.on_local_durable(o(30)));
    assert_eq!(l.high_watermark(), o(30));
}

#[test]
fn a_new_leader_waits_for_every_isr_member_to_fetch() {
    let (mut l, cache) = leader(&[L, F1, F2], 20);
    fetch(&mut l, &cache, F1, 20, 1);
    assert_eq!(
        l.high_watermark(),
        o(0),
        "F2 holds nothing as far as this leader knows"
    );
    fetch(&mut l, &cache, F2, 20, 1);
    assert_eq!(l.high_watermark(), o(20));
}

#[test]
fn the_high_watermark_stops_below_min_insync_replicas() {
    let (mut l, cache) = leader(&[L], 20);
    fetch(&mut l, &cache, F1, 20, 1);
    assert_eq!(l.high_watermark(), o(0), "ISR {{L}} is below min ISR 2");
    let request = l.tick(1).expect("F1 may join");
    assert_eq!(request.new_isr, vec![L, F1]);
    assert_eq!(
        l.high_watermark(),
        o(0),
        "a proposed expansion does not count for min ISR"
    );
    assert_eq!(
        l.apply_assignment(assignment(&[L, F1], 2, 6)),
        LeaderUpdate::Applied
    );
    assert_eq!(l.high_watermark(), o(20));
}

#[test]
fn a_lagging_follower_is_proposed_out_of_the_isr() {
    let (mut l, cache) = leader(&[L, F1, F2], 20);
    fetch(&mut l, &cache, F1, 20, 90);
    assert_eq!(
        l.tick(LAG_MS),
        None,
        "ISR followers count as caught up when the leader began"
    );
    let request = l.tick(LAG_MS + 1).expect("F2 lags");
    assert_eq!(
        request,
        IsrChangeRequest {
            leader: L,
            leader_epoch: e(2),
            partition_epoch: 5,
            new_isr: vec![L, F1],
        }
    );
}

#[test]
fn a_follower_at_the_leaders_previous_end_was_caught_up_then() {
    let (mut l, cache) = leader(&[L, F1, F2], 20);
    fetch(&mut l, &cache, F2, 20, 0);
    fetch(&mut l, &cache, F1, 20, 10);
    l.on_local_append(o(30));
    // At 50 F1 is at 20, behind the end (30) but at the end of its previous fetch: caught up
    // as of 10.
    fetch(&mut l, &cache, F1, 20, 50);
    l.on_local_append(o(40));
    fetch(&mut l, &cache, F2, 40, 60);
    assert_eq!(l.tick(10 + LAG_MS), None);
    let request = l.tick(10 + LAG_MS + 1).expect("F1 last caught up at 10");
    assert_eq!(request.new_isr, vec![L, F2]);
}

#[test]
fn a_follower_at_the_log_end_stays_in_sync_without_new_data() {
    let (mut l, cache) = leader(&[L, F1, F2], 20);
    fetch(&mut l, &cache, F1, 20, 0);
    fetch(&mut l, &cache, F2, 20, 0);
    assert_eq!(l.tick(10 * LAG_MS), None);
}

#[test]
fn a_follower_joins_the_isr_once_it_holds_the_high_watermark_and_the_epoch_start() {
    let (mut l, cache) = leader(&[L, F1], 20);
    fetch(&mut l, &cache, F1, 20, 0);
    assert_eq!(l.high_watermark(), o(20));
    // F2 holds the high watermark of an earlier leader but not this leader's epoch start.
    let epochs = LogEpochs {
        cache: &cache,
        log_end: o(20),
    };
    l.on_follower_fetch(F2, o(8), Some(e(0)), Some(e(2)), 1, &epochs);
    assert_eq!(l.tick(1), None);
    fetch(&mut l, &cache, F2, 18, 2);
    assert_eq!(l.tick(2), None, "below the high watermark");
    fetch(&mut l, &cache, F2, 20, 3);
    assert_eq!(l.tick(3).expect("F2 in sync").new_isr, vec![L, F1, F2]);
}

#[test]
fn a_pending_expansion_counts_the_new_member_for_the_high_watermark() {
    let (mut l, cache) = leader(&[L, F1], 20);
    fetch(&mut l, &cache, F1, 20, 0);
    fetch(&mut l, &cache, F2, 20, 0);
    assert!(l.tick(0).is_some());
    assert_eq!(l.maximal_isr(), vec![L, F1, F2]);
    l.on_local_append(o(30));
    l.on_local_durable(o(30));
    fetch(&mut l, &cache, F1, 30, 1);
    assert_eq!(
        l.high_watermark(),
        o(20),
        "F2, maybe in the ISR already, holds only 20"
    );
    fetch(&mut l, &cache, F2, 30, 2);
    assert_eq!(l.high_watermark(), o(30));
}

#[test]
fn a_pending_shrink_keeps_counting_the_leaving_member() {
    let (mut l, cache) = leader(&[L, F1, F2], 20);
    fetch(&mut l, &cache, F1, 20, 0);
    fetch(&mut l, &cache, F2, 20, 0);
    l.on_local_append(o(30));
    l.on_local_durable(o(30));
    fetch(&mut l, &cache, F1, 30, 1);
    let request = l.tick(LAG_MS + 1).expect("F2 lags");
    assert_eq!(request.new_isr, vec![L, F1]);
    assert_eq!(
        l.high_watermark(),
        o(20),
        "the controller may still refuse the shrink"
    );
    assert_eq!(
        l.apply_assignment(assignment(&[L, F1], 2, 6)),
        LeaderUpdate::Applied
    );
    assert_eq!(l.high_watermark(), o(30));
}

#[test]
fn one_isr_change_at_a_time_sent_again_until_answered() {
    let (mut l, cache) = leader(&[L, F1, F2], 20);
    fetch(&mut l, &cache, F1, 20, 0);
    let first = l.tick(LAG_MS + 1).expect("F2 lags");
    fetch(&mut l, &cache, F1, 20, LAG_MS + 2);
    assert_eq!(l.tick(LAG_MS + 2), None, "one proposal in flight");
    assert_eq!(
        l.tick(LAG_MS + 1 + RETRY_MS),
        Some(first.clone()),
        "sent again"
    );
    assert_eq!(
        l.apply_assignment(assignment(&[L, F1, F2], 2, 5)),
        LeaderUpdate::Stale
    );
    assert_eq!(
        l.pending_isr_change(),
        Some(&first),
        "a stale assignment answers nothing"
    );
    // Someone else's change (partition epoch 6) ends the proposal: it was based on 5.
    assert_eq!(
        l.apply_assignment(assignment(&[L, F1, F2], 2, 6)),
        LeaderUpdate::Applied
    );
    assert_eq!(l.pending_isr_change(), None);
    let again = l.tick(LAG_MS + 2 + RETRY_MS).expect("F2 still lags");
    assert_eq!(again.partition_epoch, 6);
}

#[test]
fn another_leader_or_epoch_ends_the_leadership() {
    let (mut l, _) = leader(&[L, F1, F2], 20);
    let mut moved = assignment(&[L, F1, F2], 3, 6);
    moved.leader = Some(F1);
    assert_eq!(l.clone().apply_assignment(moved), LeaderUpdate::Resign);
    assert_eq!(
        l.apply_assignment(assignment(&[L, F1, F2], 3, 6)),
        LeaderUpdate::Resign
    );
}

#[test]
fn acks_all_is_refused_below_min_insync_replicas() {
    let (l, _) = leader(&[L], 20);
    assert_eq!(
        l.check_produce(true),
        Err(ProduceError::NotEnoughReplicas {
            isr: 1,
            min_insync: 2
        })
    );
    assert_eq!(l.check_produce(false), Ok(()));
    let (l, _) = leader(&[L, F1], 20);
    assert_eq!(l.check_produce(true), Ok(()));
}

#[test]
fn a_waiting_produce_is_done_at_the_high_watermark_or_fails_when_the_isr_shrinks() {
    let (mut l, cache) = leader(&[L, F1, F2], 20);
    fetch(&mut l, &cache, F1, 20, 0);
    fetch(&mut l, &cache, F2, 20, 0);
    l.on_local_append(o(30));
    l.on_local_durable(o(30));
    assert_eq!(l.ack_status(o(20)), AckStatus::Done);
    assert_eq!(l.ack_status(o(30)), AckStatus::Wait);
    // Both followers stop; the ISR shrinks to the leader alone while the produce waits.
    assert!(l.tick(LAG_MS + 1).is_some());
    assert_eq!(
        l.ack_status(o(30)),
        AckStatus::NotEnoughReplicasAfterAppend,
        "the proposed shrink leaves the ISR below min ISR: fail now, commit or not"
    );
    assert_eq!(
        l.apply_assignment(assignment(&[L], 2, 6)),
        LeaderUpdate::Applied
    );
    assert_eq!(l.ack_status(o(30)), AckStatus::NotEnoughReplicasAfterAppend);
    assert_eq!(
        l.ack_status(o(20)),
        AckStatus::Done,
        "committed data stays done"
    );
}

#[test]
fn a_proposed_shrink_below_min_isr_refuses_acks_all_before_it_commits() {
    let (mut l, cache) = leader(&[L, F1, F2], 20);
    fetch(&mut l, &cache, F1, 20, 0);
    assert_eq!(l.check_produce(true), Ok(()));
    // F2 lags: [L, F1] keeps 2 of the committed ISR, enough for min ISR 2.
    let request = l.tick(LAG_MS + 1).expect("F2 lags");
    assert_eq!(request.new_isr, vec![L, F1]);
    assert_eq!(l.check_produce(true), Ok(()));
    assert_eq!(
        l.apply_assignment(assignment(&[L, F1], 2, 6)),
        LeaderUpdate::Applied
    );
    // F1 lags too (the leader appended past it): the proposal [L] is not committed (the
    // controller may have no majority), yet acks=all is refused from now on.
    l.on_local_append(o(30));
    let request = l.tick(3 * LAG_MS).expect("F1 lags");
    assert_eq!(request.new_isr, vec![L]);
    assert_eq!(
        l.check_produce(true),
        Err(ProduceError::NotEnoughReplicas {
            isr: 1,
            min_insync: 2
        })
    );
    assert_eq!(l.check_produce(false), Ok(()), "acks=1 still appends");
    // F1 fetches again and the controller refuses the stale proposal with a newer record
    // that keeps F1: acks=all is admitted again.
    assert_eq!(
        l.apply_assignment(assignment(&[L, F1], 2, 7)),
        LeaderUpdate::Applied
    );
    assert_eq!(l.check_produce(true), Ok(()));
}

#[test]
fn a_follower_that_stopped_fetching_is_not_added_back() {
    let (mut l, cache) = leader(&[L, F1, F2], 20);
    fetch(&mut l, &cache, F1, 20, 0);
    fetch(&mut l, &cache, F2, 20, 0);
    l.on_local_append(o(30));
    // Both followers die at their last fetch (20); the leader drops them.
    let request = l.tick(LAG_MS + 1).expect("both lag");
    assert_eq!(request.new_isr, vec![L]);
    assert_eq!(
        l.apply_assignment(assignment(&[L], 2, 6)),
        LeaderUpdate::Applied
    );
    // Below min ISR the high watermark stays at 20, which the dead followers hold: still they
    // are not proposed back, however often the leader ticks.
    assert_eq!(l.high_watermark(), o(20));
    for now in [LAG_MS + 2, 2 * LAG_MS, 10 * LAG_MS] {
        assert_eq!(l.tick(now), None, "at {now}");
    }
    // F1 comes back and fetches: it is proposed back.
    fetch(&mut l, &cache, F1, 30, 10 * LAG_MS + 1);
    let request = l.tick(10 * LAG_MS + 2).expect("F1 is back");
    assert_eq!(request.new_isr, vec![L, F1]);
}

#[test]
fn a_fenced_follower_is_not_proposed_into_the_isr_however_well_it_fetches() {
    let (mut l, cache) = leader(&[L, F1], 20);
    fetch(&mut l, &cache, F1, 20, 0);
    l.set_ineligible(vec![F2]);
    fetch(&mut l, &cache, F2, 20, 1);
    assert_eq!(l.tick(1), None, "fenced: dead, cut off or shutting down");
    l.set_ineligible(Vec::new());
    fetch(&mut l, &cache, F2, 20, 2);
    assert_eq!(l.tick(2).expect("unfenced").new_isr, vec![L, F1, F2]);
}
