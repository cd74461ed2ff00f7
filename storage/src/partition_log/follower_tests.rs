//! The follower's side of replication: `append_replicated` (a byte-identical copy of the
//! leader's log, its checks, producer state for after a promotion) and `truncate_to` (inside a
//! segment, at a boundary, across segments, inside a batch; the high watermark, the epoch
//! cache and the producer state after it; reopen and power loss do not bring records back).

use std::path::{Path, PathBuf};

use super::*;
use crate::batch::BatchError;
use crate::test_support::{batch, config, read_all, run, segment_logs};
use crate::testing::{build_batch_with, BatchOptions, PowerLoss, SimDisk};

fn e(n: i32) -> LeaderEpoch {
    LeaderEpoch(n)
}

fn o(n: i64) -> Offset {
    Offset(n)
}

/// A batch of `records` records from producer `pid` (epoch 0) starting at sequence `seq`;
/// `pid` -1 for none.
fn pbatch(pid: i64, seq: i32, records: usize, ts: i64) -> Vec<u8> {
    let value = [b'v'; 40];
    let recs: Vec<crate::testing::TestRecord<'_>> = (0..records)
        .map(|i| (Some(&b"k"[..]), Some(&value[..]), ts + i as i64))
        .collect();
    let producer = pid >= 0;
    build_batch_with(
        &BatchOptions {
            producer_id: pid,
            producer_epoch: if producer { 0 } else { -1 },
            base_sequence: if producer { seq } else { -1 },
            ..Default::default()
        },
        &recs,
    )
}

/// A batch as a leader would send it: base offset and epoch already set.
fn leader_batch(base: i64, epoch: i32, records: usize) -> Vec<u8> {
    let value = [b'r'; 20];
    let recs: Vec<crate::testing::TestRecord<'_>> =
        (0..records).map(|_| (None, Some(&value[..]), 5)).collect();
    build_batch_with(
        &BatchOptions {
            base_offset: base,
            partition_leader_epoch: epoch,
            ..Default::default()
        },
        &recs,
    )
}

async fn open(dir: &Path, segment_bytes: u64) -> Rc<PartitionLog> {
    PartitionLog::open(dir.to_path_buf(), config(segment_bytes, 64), 0)
        .await
        .expect("open")
}

/// Feeds the follower what the leader serves from the follower's log end, in reads of at most
/// `max_bytes` (several batches each), until it has everything.
async fn replicate(leader: &PartitionLog, follower: &PartitionLog, max_bytes: u32) {
    while follower.log_end_offset() < leader.log_end_offset() {
        let from = follower.log_end_offset();
        let slice = leader
            .read(from, max_bytes, true)
            .await
            .expect("leader read")
            .expect("leader has data");
        let bytes = slice.read_blocking().expect("pread");
        let end = follower
            .append_replicated(&bytes, 0)
            .await
            .expect("follower append");
        assert!(end > from);
    }
}

/// Leader appends: batches of changing epochs, some from idempotent producers.
async fn fill_leader(leader: &PartitionLog, batches: usize) {
    for i in 0..batches {
        let epoch = [0, 0, 0, 2, 2, 5][i * 6 / batches];
        let pid = [7, -1, 8][i % 3];
        let seq = (i / 3) as i32 * 2;
        leader
            .append(&pbatch(pid, seq, 2, 100 + i as i64), e(epoch), 0)
            .await
            .expect("leader append");
    }
}

fn dirs(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("leader"), dir.join("follower"))
}

#[test]
fn a_follower_log_is_a_byte_identical_copy_of_the_leader_log() {
    run(|dir| async move {
        let (ldir, fdir) = dirs(&dir);
        let leader = open(&ldir, 700).await;
        let follower = open(&fdir, 700).await;
        fill_leader(&leader, 30).await;
        assert!(leader.segment_count() > 3);
        replicate(&leader, &follower, 600).await;
        assert_eq!(follower.log_end_offset(), leader.log_end_offset());
        assert_eq!(
            follower.high_watermark(),
            o(0),
            "a follower append moves no high watermark"
        );
        follower.flush().await.expect("flush");
        assert_eq!(follower.durable_end_offset(), follower.log_end_offset());
        follower.set_high_watermark(follower.log_end_offset());
        let want = read_all(&leader, 0).await;
        assert_eq!(read_all(&follower, 0).await, want);
        assert_eq!(follower.leader_epochs(), leader.leader_epochs());
        assert_eq!(follower.leader_epochs().len(), 3);
        assert_eq!(follower.max_timestamp(), leader.max_timestamp());
        assert_eq!(follower.size_bytes(), leader.size_bytes());
        assert_eq!(follower.producer_count(), 2);
        for epoch in 0..7 {
            assert_eq!(
                follower.epoch_end_offset(e(epoch)),
                leader.epoch_end_offset(e(epoch))
            );
        }
        // Same segment files, byte for byte.
        let lfiles = segment_logs(&ldir);
        let ffiles = segment_logs(&fdir);
        assert_eq!(lfiles.len(), ffiles.len());
        for (l, f) in lfiles.iter().zip(&ffiles) {
            assert_eq!(l.file_name(), f.file_name());
            assert!(std::fs::read(l).unwrap() == std::fs::read(f).unwrap());
        }
        // Empty input changes nothing.
        assert_eq!(
            follower.append_replicated(&[], 0).await.expect("empty"),
            follower.log_end_offset()
        );
        follower.close().await.expect("close");
        let follower = open(&fdir, 700).await;
        assert_eq!(read_all(&follower, 0).await, want);
        assert_eq!(follower.leader_epochs(), leader.leader_epochs());
    });
}

#[test]
fn a_follower_refuses_gaps_overlaps_and_damaged_batches() {
    run(|dir| async move {
        let log = open(&dir, 1 << 20).await;
        let first = [leader_batch(0, 1, 3), leader_batch(3, 1, 2)].concat();
        assert_eq!(
            log.append_replicated(&first, 0).await.expect("append"),
            o(5)
        );
        let size = log.size_bytes();
        let mismatch = |r: Result<Offset, StorageError>| match r {
            Err(StorageError::OffsetMismatch { expected, got }) => (expected, got),
            other => panic!("expected OffsetMismatch, got {other:?}"),
        };
        // A gap, an overlap, and a gap between two batches of one input.
        assert_eq!(
            mismatch(log.append_replicated(&leader_batch(6, 1, 1), 0).await),
            (5, 6)
        );
        assert_eq!(
            mismatch(log.append_replicated(&leader_batch(3, 1, 2), 0).await),
            (5, 3)
        );
        let gapped = [leader_batch(5, 2, 2), leader_batch(8, 2, 1)].concat();
        assert_eq!(mismatch(log.append_replicated(&gapped, 0).await), (7, 8));
        // A damaged record (the CRC no longer matches) in the second batch.
        let mut damaged = [leader_batch(5, 2, 2), leader_batch(7, 2, 1)].concat();
        let last = damaged.len() - 3;
        damaged[last] ^= 0x55;
        assert!(matches!(
            log.append_replicated(&damaged, 0).await,
            Err(StorageError::InvalidBatch(BatchError::CrcMismatch { .. }))
        ));
        // A partial batch at the end.
        let mut partial = [leader_batch(5, 2, 2), leader_batch(7, 2, 1)].concat();
        partial.truncate(partial.len() - 10);
        assert!(matches!(
            log.append_replicated(&partial, 0).await,
            Err(StorageError::InvalidBatch(
                BatchError::LengthMismatch { .. }
            ))
        ));
        // Nothing of the refused inputs was written, not even the epoch they carried.
        assert_eq!(log.log_end_offset(), o(5));
        assert_eq!(log.size_bytes(), size);
        assert_eq!(log.leader_epochs(), vec![(e(1), o(0))]);
        let good = [leader_batch(5, 2, 2), leader_batch(7, 2, 1)].concat();
        assert_eq!(log.append_replicated(&good, 0).await.expect("append"), o(8));
        assert_eq!(log.leader_epochs(), vec![(e(1), o(0)), (e(2), o(5))]);
    });
}

#[test]
fn a_promoted_follower_recognizes_retries_of_replicated_batches() {
    run(|dir| async move {
        let (ldir, fdir) = dirs(&dir);
        let leader = open(&ldir, 1 << 20).await;
        let follower = open(&fdir, 1 << 20).await;
        let first = pbatch(42, 0, 3, 1);
        let second = pbatch(42, 3, 2, 2);
        leader
            .append(&batch(1, 10, 1), e(3), 0)
            .await
            .expect("append");
        leader.append(&first, e(3), 0).await.expect("append");
        leader.append(&second, e(3), 0).await.expect("append");
        replicate(&leader, &follower, 1 << 20).await;
        // Promoted: the producer retries its last batch on the new leader.
        let info = follower.append(&second, e(4), 0).await.expect("retry");
        assert!(info.duplicate, "the retry was appended again");
        assert_eq!(info.base_offset, o(4));
        assert_eq!(follower.log_end_offset(), o(6));
        // After an unclean restart (the producer state is rebuilt from the log), too.
        drop(follower);
        let follower = open(&fdir, 1 << 20).await;
        let info = follower.append(&first, e(4), 0).await.expect("retry");
        assert!(info.duplicate && info.base_offset == o(1));
        let next = follower
            .append(&pbatch(42, 5, 1, 3), e(4), 0)
            .await
            .expect("next");
        assert!(!next.duplicate);
        assert_eq!(next.base_offset, o(6));
    });
}

/// Leader-style appends of `n` batches of 2 records (epoch 1 for the first half, then 2);
/// returns (base offset, stored bytes) per batch.
async fn fill(log: &PartitionLog, n: usize) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..n {
        let epoch = if i < n / 2 { 1 } else { 2 };
        let b = pbatch(9, 2 * i as i32, 2, 10 + i as i64);
        let info = log.append(&b, e(epoch), 0).await.expect("append");
        out.push((
            info.base_offset.0,
            crate::test_support::stamped(&b, info.base_offset.0, epoch),
        ));
    }
    out
}

fn bytes_below(batches: &[(i64, Vec<u8>)], end: i64) -> Vec<u8> {
    batches
        .iter()
        .filter(|(base, _)| *base < end)
        .flat_map(|(_, b)| b.clone())
        .collect()
}

/// Checks the log holds exactly the batches below `end` and nothing else.
async fn check_truncated(log: &PartitionLog, batches: &[(i64, Vec<u8>)], end: i64) {
    assert_eq!(log.log_end_offset(), o(end));
    assert_eq!(log.high_watermark(), o(end));
    assert_eq!(read_all(log, 0).await, bytes_below(batches, end));
    let expected_size: usize = batches
        .iter()
        .filter(|(b, _)| *b < end)
        .map(|(_, b)| b.len())
        .sum();
    assert_eq!(log.size_bytes(), expected_size as u64);
    let max = batches.iter().filter(|(b, _)| *b < end).count() as i64;
    assert_eq!(
        log.max_timestamp(),
        (max > 0).then(|| (o(2 * (max - 1)), 10 + max))
    );
}

#[test]
fn truncate_inside_a_segment_then_append_and_reopen() {
    run(|dir| async move {
        let log = open(&dir, 1 << 20).await;
        let batches = fill(&log, 10).await;
        assert_eq!(log.leader_epochs(), vec![(e(1), o(0)), (e(2), o(10))]);
        // Offset 13 is inside the batch 12..13: that batch goes whole.
        assert_eq!(log.truncate_to(o(13), 0).await.expect("truncate"), o(12));
        check_truncated(&log, &batches, 12).await;
        assert_eq!(log.durable_end_offset(), o(12));
        // Past the end, and at the end: nothing to do.
        assert_eq!(log.truncate_to(o(50), 0).await.expect("no-op"), o(12));
        assert_eq!(log.truncate_to(o(12), 0).await.expect("no-op"), o(12));
        // Into epoch 1: the epoch-2 entry goes, in memory and on disk.
        assert_eq!(log.truncate_to(o(8), 0).await.expect("truncate"), o(8));
        check_truncated(&log, &batches, 8).await;
        assert_eq!(log.leader_epochs(), vec![(e(1), o(0))]);
        let on_disk = std::fs::read(dir.join("leader-epoch-checkpoint")).unwrap();
        assert_eq!(
            EpochCache::decode(&on_disk).unwrap().entries(),
            vec![(e(1), o(0))]
        );
        // The producer state lost the batches that went: their retry is new again, the last kept
        // one is still a duplicate.
        let retry_kept = pbatch(9, 6, 2, 13);
        assert!(log.append(&retry_kept, e(3), 0).await.unwrap().duplicate);
        let info = log
            .append(&pbatch(9, 8, 2, 14), e(3), 0)
            .await
            .expect("append");
        assert!(!info.duplicate);
        assert_eq!(info.base_offset, o(8));
        assert_eq!(log.leader_epochs(), vec![(e(1), o(0)), (e(3), o(8))]);
        let mut want = bytes_below(&batches, 8);
        want.extend(crate::test_support::stamped(&pbatch(9, 8, 2, 14), 8, 3));
        assert_eq!(read_all(&log, 0).await, want);
        log.close().await.expect("close");
        let log = open(&dir, 1 << 20).await;
        assert_eq!(read_all(&log, 0).await, want);
        assert_eq!(log.leader_epochs(), vec![(e(1), o(0)), (e(3), o(8))]);
        assert!(
            log.append(&pbatch(9, 8, 2, 14), e(3), 0)
                .await
                .unwrap()
                .duplicate
        );
        // An unclean stop right after a truncation.
        assert_eq!(log.truncate_to(o(3), 0).await.expect("truncate"), o(2));
        drop(log);
        let log = open(&dir, 1 << 20).await;
        check_truncated(&log, &batches, 2).await;
        assert_eq!(log.leader_epochs(), vec![(e(1), o(0))]);
    });
}

#[test]
fn truncate_at_a_segment_boundary_and_across_segments() {
    run(|dir| async move {
        let log = open(&dir, 500).await;
        let batches = fill(&log, 24).await;
        let bases: Vec<i64> = segment_logs(&dir)
            .iter()
            .map(|p| p.file_stem().unwrap().to_str().unwrap().parse().unwrap())
            .collect();
        assert!(bases.len() >= 5, "{bases:?}");
        // At the base of the fourth segment: it stays, empty and active.
        let at = bases[3];
        assert_eq!(log.truncate_to(o(at), 0).await.expect("truncate"), o(at));
        check_truncated(&log, &batches, at).await;
        assert_eq!(log.segment_count(), 4);
        assert_eq!(segment_logs(&dir).len(), 4);
        // Across several segments, into the middle of the second one.
        let mid = bases[1] + 3;
        let end = log.truncate_to(o(mid), 0).await.expect("truncate");
        assert_eq!(end, o(bases[1] + 2));
        check_truncated(&log, &batches, end.0).await;
        assert_eq!(log.segment_count(), 2);
        assert_eq!(segment_logs(&dir).len(), 2);
        // Appends continue in the cut segment, roll again, and everything reopens.
        let mut more = Vec::new();
        for i in 0..10 {
            let b = batch(2, 40, 500 + i);
            let info = log.append(&b, e(4), 0).await.expect("append");
            more.extend(crate::test_support::stamped(&b, info.base_offset.0, 4));
        }
        assert!(log.segment_count() > 2);
        let mut want = bytes_below(&batches, end.0);
        want.extend(more);
        assert_eq!(read_all(&log, 0).await, want);
        log.close().await.expect("close");
        let log = open(&dir, 500).await;
        assert_eq!(read_all(&log, 0).await, want);
        let reopened = log.leader_epochs();
        assert_eq!(reopened.last(), Some(&(e(4), end)));
        // Below the log start: out of range.
        log.delete_records(o(bases[1])).await.expect("delete");
        assert!(matches!(
            log.truncate_to(o(bases[1] - 1), 0).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
    });
}

#[test]
fn truncate_below_the_high_watermark_lowers_it() {
    run(|dir| async move {
        let (ldir, fdir) = dirs(&dir);
        let leader = open(&ldir, 600).await;
        let follower = open(&fdir, 600).await;
        fill_leader(&leader, 12).await;
        replicate(&leader, &follower, 1 << 20).await;
        follower.set_high_watermark(o(20));
        follower.flush().await.expect("flush");
        // Above the high watermark it stays.
        assert_eq!(follower.truncate_to(o(22), 0).await.unwrap(), o(22));
        assert_eq!(follower.high_watermark(), o(20));
        assert_eq!(follower.durable_end_offset(), o(22));
        // Below it, it comes down, and reads stop there.
        assert_eq!(follower.truncate_to(o(9), 0).await.unwrap(), o(8));
        assert_eq!(follower.high_watermark(), o(8));
        assert_eq!(follower.durable_end_offset(), o(8));
        assert!(follower.read(o(8), 1 << 20, true).await.unwrap().is_none());
        let want = read_all(&leader, 0).await;
        let got = read_all(&follower, 0).await;
        assert_eq!(got, want[..got.len()]);
        // The follower fetches again from its new end and catches up.
        replicate(&leader, &follower, 300).await;
        follower.set_high_watermark(follower.log_end_offset());
        assert_eq!(read_all(&follower, 0).await, want);
        assert_eq!(follower.leader_epochs(), leader.leader_epochs());
    });
}

#[test]
fn a_power_loss_after_truncation_does_not_bring_records_back() {
    for mode in [
        PowerLoss::DropUnsynced,
        PowerLoss::KeepPrefix,
        PowerLoss::Scramble,
    ] {
        run(move |dir| async move {
            let sim = SimDisk::install(dir.parent().unwrap());
            let log = open(&dir, 500).await;
            let batches = fill(&log, 20).await;
            log.flush().await.expect("flush");
            log.write_recovery_point().await.expect("recovery point");
            let end = log.truncate_to(o(25), 0).await.expect("truncate");
            assert_eq!(end, o(24));
            drop(log);
            sim.power_loss(mode, 7);
            let log = open(&dir, 500).await;
            check_truncated(&log, &batches, 24).await;
            assert_eq!(log.leader_epochs(), vec![(e(1), o(0)), (e(2), o(20))]);
            // Truncated into an older segment, power loss again.
            let end = log.truncate_to(o(3), 0).await.expect("truncate");
            assert_eq!(end, o(2));
            drop(log);
            sim.power_loss(mode, 8);
            let log = open(&dir, 500).await;
            check_truncated(&log, &batches, 2).await;
            assert_eq!(log.leader_epochs(), vec![(e(1), o(0))]);
            log.close().await.expect("close");
            SimDisk::uninstall();
        });
    }
}

#[test]
fn a_leader_append_leaves_the_high_watermark_to_replication() {
    run(|dir| async move {
        let log = open(&dir, 1 << 20).await;
        let appended = log.listen_append();
        let info = log
            .append_as_leader(&pbatch(-1, 0, 3, 10), e(4), 0)
            .await
            .expect("append");
        assert_eq!((info.base_offset, info.last_offset), (o(0), o(2)));
        appended.await;
        log.flush().await.expect("flush");
        assert_eq!(log.durable_end_offset(), o(3));
        assert_eq!(
            log.high_watermark(),
            o(0),
            "neither the append nor its sync moves the high watermark"
        );
        assert!(
            log.read(o(0), 1 << 20, true).await.expect("read").is_none(),
            "consumers see nothing past the high watermark"
        );
        // Followers read past it, up to the log end.
        let slice = log
            .read_to_log_end(o(0), 1 << 20)
            .await
            .expect("read")
            .expect("records");
        assert_eq!(slice.first_offset, o(0));
        assert!(log
            .read_to_log_end(o(3), 1 << 20)
            .await
            .expect("read")
            .is_none());
        log.set_high_watermark(o(3));
        let read = log.read(o(0), 1 << 20, true).await.expect("read");
        assert_eq!(read.map(|s| s.len), Some(slice.len));
        assert_eq!(log.leader_epochs(), vec![(e(4), o(0))]);
    });
}

#[test]
fn a_new_leader_records_its_epoch_at_the_log_end() {
    run(|dir| async move {
        let log = open(&dir, 1 << 20).await;
        log.append_as_leader(&pbatch(-1, 0, 2, 10), e(1), 0)
            .await
            .expect("append");
        log.begin_epoch(e(3)).await.expect("begin epoch");
        assert_eq!(log.latest_epoch(), Some(e(3)));
        assert_eq!(log.leader_epochs(), vec![(e(1), o(0)), (e(3), o(2))]);
        assert_eq!(log.epoch_end_offset(e(1)), (e(1), o(2)));
        assert_eq!(log.epoch_end_offset(e(3)), (e(3), o(2)));
        // The same or an older epoch changes nothing.
        log.begin_epoch(e(3)).await.expect("same epoch");
        log.begin_epoch(e(2)).await.expect("older epoch");
        assert_eq!(log.leader_epochs(), vec![(e(1), o(0)), (e(3), o(2))]);
        log.append_as_leader(&pbatch(-1, 0, 1, 11), e(3), 0)
            .await
            .expect("append");
        assert_eq!(log.leader_epochs(), vec![(e(1), o(0)), (e(3), o(2))]);
        assert_eq!(log.epoch_end_offset(e(3)), (e(3), o(3)));
    });
}

#[test]
fn a_leadership_without_records_goes_when_the_follower_truncates_at_its_end() {
    run(|dir| async move {
        let log = open(&dir, 1 << 20).await;
        log.append_as_leader(&pbatch(-1, 0, 2, 10), e(1), 0)
            .await
            .expect("append");
        // This node led epoch 3 without appending, then follows a leader of epoch 4 that
        // diverges from it at offset 2.
        log.begin_epoch(e(3)).await.expect("begin epoch");
        assert_eq!(log.truncate_to(o(2), 0).await.expect("truncate"), o(2));
        assert_eq!(log.leader_epochs(), vec![(e(1), o(0))]);
        assert_eq!(log.latest_epoch(), Some(e(1)));
        let on_disk = std::fs::read(dir.join("leader-epoch-checkpoint")).unwrap();
        assert_eq!(
            EpochCache::decode(&on_disk).unwrap().entries(),
            vec![(e(1), o(0))]
        );
    });
}

#[test]
fn a_log_that_follows_a_newer_epoch_refuses_older_leader_appends() {
    run(|dir| async move {
        let log = open(&dir, 1 << 20).await;
        log.append_as_leader(&pbatch(-1, 0, 2, 10), e(1), 0)
            .await
            .expect("append");
        log.follow_epoch(e(2)).await.expect("follow");
        assert_eq!(log.durable_end_offset(), o(2));
        let refused = log.append_as_leader(&pbatch(-1, 0, 1, 11), e(1), 0).await;
        assert!(
            matches!(
                refused,
                Err(StorageError::FencedLeaderEpoch {
                    epoch: 1,
                    current: 2,
                    ..
                })
            ),
            "{refused:?}"
        );
        assert_eq!(log.log_end_offset(), o(2));
        // The new epoch's leader (this node again, later) appends.
        log.begin_epoch(e(2)).await.expect("begin");
        log.append_as_leader(&pbatch(-1, 0, 1, 12), e(2), 0)
            .await
            .expect("append in the followed epoch");
    });
}
