//! Unit tests of the follower's rules.

use strom_storage::epoch_cache::EpochCache;

use super::*;
use crate::replication::{LeaderPartition, LogEpochs, ReplicationConfig};

const ME: NodeId = NodeId(2);
const LEADER: NodeId = NodeId(1);

fn o(n: i64) -> Offset {
    Offset(n)
}

fn e(n: i32) -> LeaderEpoch {
    LeaderEpoch(n)
}

fn assignment(leader: NodeId, epoch: i32, partition_epoch: i32) -> PartitionAssignment {
    PartitionAssignment {
        replicas: vec![LEADER, ME, NodeId(3)],
        isr: vec![LEADER, ME, NodeId(3)],
        leader: Some(leader),
        leader_epoch: e(epoch),
        partition_epoch,
    }
}

/// A follower in epoch 3 whose log holds epoch 0 from 0 and epoch 1 from 10 up to 20, durably.
fn follower() -> (FollowerPartition, EpochCache) {
    let mut cache = EpochCache::new();
    cache.assign(e(0), o(0));
    cache.assign(e(1), o(10));
    let f = FollowerPartition::new(ME, assignment(LEADER, 3, 7), o(20), o(20), Some(e(1)));
    (f, cache)
}

fn read(from: i64, hw: i64) -> FetchDecision {
    FetchDecision::Read {
        from: o(from),
        high_watermark: o(hw),
    }
}

#[test]
fn fetches_from_the_durable_end_with_its_last_epoch() {
    let (f, _) = follower();
    assert_eq!(
        f.next_fetch(),
        Some(FetchRequest {
            offset: o(20),
            last_fetched_epoch: Some(e(1)),
            current_leader_epoch: Some(e(3)),
        })
    );
    assert_eq!(f.leader(), Some(LEADER));
    let mut leaderless = assignment(LEADER, 3, 7);
    leaderless.leader = None;
    let f = FollowerPartition::new(ME, leaderless, o(0), o(0), None);
    assert_eq!(f.next_fetch(), None, "no leader to fetch from");
}

#[test]
fn appended_records_are_fetched_past_only_once_durable() {
    let (mut f, cache) = follower();
    let request = f.next_fetch().expect("idle");
    let epochs = LogEpochs {
        cache: &cache,
        log_end: o(20),
    };
    assert_eq!(
        f.on_fetch_response(&request, &read(20, 15), true, &epochs),
        FollowerAction::Append { from: o(20) }
    );
    assert_eq!(f.next_fetch(), None, "appending");
    f.on_local_append(o(30), e(3));
    assert_eq!(f.next_fetch(), None, "not durable yet");
    f.on_local_durable(o(25));
    assert_eq!(f.next_fetch(), None, "not all durable yet");
    f.on_local_durable(o(30));
    let next = f.next_fetch().expect("durable");
    assert_eq!((next.offset, next.last_fetched_epoch), (o(30), Some(e(3))));
    assert_eq!(f.high_watermark(), o(15));
}

#[test]
fn nothing_new_means_fetch_again_later() {
    let (mut f, cache) = follower();
    let request = f.next_fetch().expect("idle");
    let epochs = LogEpochs {
        cache: &cache,
        log_end: o(20),
    };
    assert_eq!(
        f.on_fetch_response(&request, &read(20, 20), false, &epochs),
        FollowerAction::Backoff
    );
    assert_eq!(f.next_fetch(), Some(request));
}

#[test]
fn divergence_truncates_to_where_the_epoch_ends_on_both_sides() {
    let (f, cache) = follower();
    let request = f.next_fetch().expect("idle");
    let epochs = LogEpochs {
        cache: &cache,
        log_end: o(20),
    };
    let diverging = |epoch, end| FetchDecision::Diverging {
        epoch: e(epoch),
        end_offset: o(end),
    };
    // The leader's epoch 1 ends at 15: cut there.
    let mut g = f.clone();
    let action = g.on_fetch_response(&request, &diverging(1, 15), false, &epochs);
    assert_eq!(action, FollowerAction::Truncate { to: o(15) });
    assert_eq!(g.next_fetch(), None, "truncating");
    g.on_truncated(o(15), Some(e(1)));
    assert_eq!(g.next_fetch().expect("truncated").offset, o(15));
    // The leader has epoch 0 up to 12 only, but epoch 0 ends at 10 here: cut at 10.
    let mut g = f.clone();
    let action = g.on_fetch_response(&request, &diverging(0, 12), false, &epochs);
    assert_eq!(action, FollowerAction::Truncate { to: o(10) });
    // Nothing known locally about the epoch (an empty cache): the leader's end.
    let mut g = f.clone();
    let empty = EpochCache::new();
    let none = LogEpochs {
        cache: &empty,
        log_end: o(20),
    };
    let action = g.on_fetch_response(&request, &diverging(0, 12), false, &none);
    assert_eq!(action, FollowerAction::Truncate { to: o(12) });
}

#[test]
fn an_answer_to_another_request_is_dropped() {
    let (mut f, cache) = follower();
    let request = f.next_fetch().expect("idle");
    let epochs = LogEpochs {
        cache: &cache,
        log_end: o(20),
    };
    let mut old = request;
    old.offset = o(10);
    assert_eq!(
        f.on_fetch_response(&old, &read(10, 0), true, &epochs),
        FollowerAction::Stale
    );
    assert_eq!(
        f.on_fetch_response(&request, &read(20, 0), true, &epochs),
        FollowerAction::Append { from: o(20) }
    );
    assert_eq!(
        f.on_fetch_response(&request, &read(20, 0), true, &epochs),
        FollowerAction::Stale,
        "a duplicate answer while appending"
    );
}

#[test]
fn epoch_errors_wait_for_metadata_or_retry() {
    let (mut f, cache) = follower();
    let request = f.next_fetch().expect("idle");
    let epochs = LogEpochs {
        cache: &cache,
        log_end: o(20),
    };
    for (decision, action) in [
        (
            FetchDecision::FencedLeaderEpoch,
            FollowerAction::AwaitAssignment,
        ),
        (FetchDecision::NotReplica, FollowerAction::AwaitAssignment),
        (FetchDecision::NotLeader, FollowerAction::AwaitAssignment),
        (FetchDecision::UnknownLeaderEpoch, FollowerAction::Backoff),
        (
            FetchDecision::OffsetOutOfRange { log_end: o(30) },
            FollowerAction::Backoff,
        ),
    ] {
        assert_eq!(
            f.on_fetch_response(&request, &decision, false, &epochs),
            action
        );
    }
    let short = FetchDecision::OffsetOutOfRange { log_end: o(12) };
    assert_eq!(
        f.on_fetch_response(&request, &short, false, &epochs),
        FollowerAction::Truncate { to: o(12) }
    );
}

#[test]
fn assignments_apply_in_order_and_name_the_new_leader() {
    let (mut f, _) = follower();
    assert_eq!(
        f.apply_assignment(assignment(NodeId(3), 2, 6)),
        FollowerUpdate::Stale
    );
    assert_eq!(
        f.apply_assignment(assignment(NodeId(3), 4, 8)),
        FollowerUpdate::Applied
    );
    assert_eq!(f.leader(), Some(NodeId(3)));
    assert_eq!(
        f.next_fetch().expect("idle").current_leader_epoch,
        Some(e(4))
    );
    assert_eq!(
        f.apply_assignment(assignment(ME, 5, 9)),
        FollowerUpdate::BecomeLeader
    );
    assert_eq!(f.next_fetch(), None, "no fetching from itself");
}

/// A node took over as leader in epoch 3 at offset 11 (its cache says so), appended nothing and
/// lost the leadership to a node that leads epoch 4. It fetches with its cache's epoch, 3, so the
/// new leader answers with a divergence and the empty epoch-3 entry is cut before any epoch-2
/// batch is appended after it (which would make the cache erase where epoch 2 starts).
#[test]
fn a_former_leader_that_appended_nothing_fetches_with_its_cache_epoch() {
    let mut local = EpochCache::new();
    for (epoch, start) in [(0, 0), (2, 7), (3, 11)] {
        local.assign(e(epoch), o(start));
    }
    let mut f = FollowerPartition::new(ME, assignment(LEADER, 4, 9), o(11), o(11), Some(e(3)));
    let mut remote = EpochCache::new();
    for (epoch, start) in [(0, 0), (2, 7), (4, 23)] {
        remote.assign(e(epoch), o(start));
    }
    let config = ReplicationConfig {
        min_insync_replicas: 2,
        replica_lag_time_max_ms: 100,
        isr_change_retry_ms: 50,
    };
    let mut leader_assignment = assignment(LEADER, 4, 9);
    leader_assignment.isr = vec![LEADER, ME];
    let mut l = LeaderPartition::new(LEADER, leader_assignment, config, o(30), o(30), o(0), 0);
    let remote_epochs = LogEpochs {
        cache: &remote,
        log_end: o(30),
    };
    let ask = |l: &mut LeaderPartition, r: FetchRequest| {
        l.on_follower_fetch(
            ME,
            r.offset,
            r.last_fetched_epoch,
            r.current_leader_epoch,
            0,
            &remote_epochs,
        )
    };

    let first = f.next_fetch().expect("idle");
    assert_eq!(first.last_fetched_epoch, Some(e(3)));
    let answer = ask(&mut l, first);
    assert_eq!(
        answer,
        FetchDecision::Diverging {
            epoch: e(2),
            end_offset: o(23)
        }
    );
    let local_epochs = LogEpochs {
        cache: &local,
        log_end: o(11),
    };
    let action = f.on_fetch_response(&first, &answer, false, &local_epochs);
    assert_eq!(
        action,
        FollowerAction::Truncate { to: o(11) },
        "no data lost"
    );
    local.truncate_from_end(o(11));
    assert_eq!(local.latest_epoch(), Some(e(2)), "the empty entry is gone");
    f.on_truncated(o(11), local.latest_epoch());
    let second = f.next_fetch().expect("truncated");
    assert_eq!(ask(&mut l, second), read(11, 11));
    // Epoch-2 batches from 11 on now extend the epoch-2 entry instead of replacing it.
    assert!(!local.assign(e(2), o(11)));
    assert_eq!(local.entries(), vec![(e(0), o(0)), (e(2), o(7))]);
}
