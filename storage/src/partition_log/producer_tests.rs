//! Idempotent appends through `PartitionLog`: duplicates, sequence and epoch errors, the
//! producer state after a clean reopen (snapshot), an unclean one (rescan), and a cut tail, and
//! the cap on producers per partition.

use std::path::Path;

use crate::error::StorageError;
use crate::log_manager::LogManager;
use crate::partition_log::PartitionLog;
use crate::producer_state::{BatchMeta, ProducerError, ProducerState, SequenceVerdict};
use crate::test_support::{config, run, segment_logs};
use crate::testing::{build_batch_with, BatchOptions};
use crate::types::{LeaderEpoch, Offset};

/// A batch of `records` records from producer `pid` with `epoch`, starting at `seq`.
fn pbatch(pid: i64, epoch: i16, seq: i32, records: usize) -> Vec<u8> {
    let value = [b'v'; 40];
    let recs: Vec<crate::testing::TestRecord<'_>> = (0..records)
        .map(|_| (Some(&b"k"[..]), Some(&value[..]), 1))
        .collect();
    build_batch_with(
        &BatchOptions {
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            ..Default::default()
        },
        &recs,
    )
}

fn snapshots(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".snapshot"))
        .count()
}

async fn append(log: &PartitionLog, b: &[u8]) -> Result<(i64, bool), StorageError> {
    log.append(b, LeaderEpoch(0), 10)
        .await
        .map(|i| (i.base_offset.0, i.duplicate))
}

#[test]
fn retries_are_answered_with_the_stored_offsets() {
    run(|dir| async move {
        let log = PartitionLog::open(dir, config(1 << 20, 4096), 0)
            .await
            .expect("open");
        assert_eq!(append(&log, &pbatch(5, 0, 0, 3)).await.unwrap(), (0, false));
        assert_eq!(append(&log, &pbatch(5, 0, 3, 2)).await.unwrap(), (3, false));
        assert_eq!(append(&log, &pbatch(6, 0, 0, 1)).await.unwrap(), (5, false));
        // Retries of both batches of producer 5: nothing appended, original offsets.
        assert_eq!(append(&log, &pbatch(5, 0, 0, 3)).await.unwrap(), (0, true));
        assert_eq!(append(&log, &pbatch(5, 0, 3, 2)).await.unwrap(), (3, true));
        assert_eq!(log.log_end_offset(), Offset(6));
        // A gap, a stale epoch, and a new epoch that does not start at 0.
        assert!(matches!(
            append(&log, &pbatch(5, 0, 7, 1)).await,
            Err(StorageError::Producer(ProducerError::OutOfOrder { .. }))
        ));
        assert!(matches!(
            append(&log, &pbatch(5, 1, 5, 1)).await,
            Err(StorageError::Producer(ProducerError::OutOfOrder { .. }))
        ));
        assert_eq!(append(&log, &pbatch(5, 1, 0, 1)).await.unwrap(), (6, false));
        assert!(matches!(
            append(&log, &pbatch(5, 0, 5, 1)).await,
            Err(StorageError::Producer(ProducerError::StaleEpoch { .. }))
        ));
        assert_eq!(log.log_end_offset(), Offset(7));
        // Batches without a producer id are never checked.
        assert_eq!(
            append(&log, &pbatch(-1, -1, -1, 1)).await.unwrap(),
            (7, false)
        );
        assert_eq!(
            append(&log, &pbatch(-1, -1, -1, 1)).await.unwrap(),
            (8, false)
        );
    });
}

#[test]
fn producer_state_survives_clean_and_unclean_reopen() {
    run(|dir| async move {
        // Small segments: several rolls, so snapshots are written along the way.
        let log = PartitionLog::open(dir.clone(), config(1024, 4096), 0)
            .await
            .expect("open");
        let mut seq = 0;
        for _ in 0..30 {
            append(&log, &pbatch(9, 2, seq, 4)).await.expect("append");
            seq += 4;
        }
        assert!(segment_logs(&dir).len() > 3, "the log rolled");
        assert!(
            (1..=2).contains(&snapshots(&dir)),
            "a couple of snapshots are kept"
        );
        log.close().await.expect("close");

        // Clean: the close wrote a snapshot at the log end.
        let log = PartitionLog::open(dir.clone(), config(1024, 4096), 0)
            .await
            .expect("reopen");
        assert_eq!(
            append(&log, &pbatch(9, 2, seq - 4, 4)).await.unwrap(),
            (116, true)
        );
        assert!(matches!(
            append(&log, &pbatch(9, 2, seq + 1, 1)).await,
            Err(StorageError::Producer(_))
        ));
        assert_eq!(
            append(&log, &pbatch(9, 2, seq, 4)).await.unwrap(),
            (120, false)
        );
        seq += 4;
        drop(log);

        // Unclean: the last roll's snapshot plus a rescan of what followed.
        let log = PartitionLog::open(dir.clone(), config(1024, 4096), 0)
            .await
            .expect("recover");
        assert_eq!(
            append(&log, &pbatch(9, 2, seq - 4, 4)).await.unwrap(),
            (120, true)
        );
        assert_eq!(
            append(&log, &pbatch(9, 2, seq - 8, 4)).await.unwrap(),
            (116, true)
        );
        assert_eq!(
            append(&log, &pbatch(9, 2, seq, 4)).await.unwrap(),
            (124, false)
        );
        drop(log);

        // Without any snapshot the whole log is scanned.
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".snapshot") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        let log = PartitionLog::open(dir.clone(), config(1024, 4096), 0)
            .await
            .expect("rescan");
        assert_eq!(
            append(&log, &pbatch(9, 2, seq, 4)).await.unwrap(),
            (124, true)
        );
        assert!(matches!(
            append(&log, &pbatch(9, 1, 0, 1)).await,
            Err(StorageError::Producer(ProducerError::StaleEpoch { .. }))
        ));
        log.close().await.expect("close");
    });
}

#[test]
fn a_cut_tail_takes_its_producer_batches_with_it() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), config(1 << 20, 4096), 0)
            .await
            .expect("open");
        append(&log, &pbatch(3, 0, 0, 2)).await.unwrap();
        append(&log, &pbatch(3, 0, 2, 2)).await.unwrap();
        log.flush().await.unwrap();
        log.close().await.unwrap();
        // A snapshot at the log end (4) exists; now lose the last batch as a crash would, and
        // leave the (now too new) snapshot behind.
        std::fs::remove_file(dir.join("clean-shutdown")).unwrap();
        let seg = &segment_logs(&dir)[0];
        let len = std::fs::metadata(seg).unwrap().len();
        let last = pbatch(3, 0, 2, 2).len() as u64;
        std::fs::OpenOptions::new()
            .write(true)
            .open(seg)
            .unwrap()
            .set_len(len - last + 7)
            .unwrap();

        let log = PartitionLog::open(dir.clone(), config(1 << 20, 4096), 0)
            .await
            .expect("recover");
        assert_eq!(log.log_end_offset(), Offset(2));
        // The lost batch is not a duplicate: it is appended again, at offset 2.
        assert_eq!(append(&log, &pbatch(3, 0, 2, 2)).await.unwrap(), (2, false));
        assert_eq!(append(&log, &pbatch(3, 0, 0, 2)).await.unwrap(), (0, true));
        log.close().await.unwrap();
    });
}

fn meta(seq: i32, offset: i64) -> BatchMeta {
    BatchMeta {
        first_seq: seq,
        last_seq: seq,
        first_offset: offset,
        last_offset: offset,
    }
}

#[test]
fn a_full_state_evicts_the_producer_written_longest_ago() {
    let mut s = ProducerState::with_max(3);
    assert_eq!(s.record(1, 0, meta(0, 0), 100), None);
    assert_eq!(s.record(2, 0, meta(0, 1), 200), None);
    assert_eq!(s.record(3, 0, meta(0, 2), 300), None);
    // Producer 1 writes again: now producer 2 is the one written longest ago.
    assert_eq!(s.record(1, 0, meta(1, 3), 400), None);
    assert_eq!(s.record(4, 0, meta(0, 4), 500), Some(2));
    assert_eq!(s.len(), 3);
    assert!(s.get(2).is_none());
    // The evicted producer is unknown: its retry is appended again, at any sequence.
    assert_eq!(s.check(2, 0, 0, 0), Ok(SequenceVerdict::Append));
    assert_eq!(s.check(2, 0, 7, 7), Ok(SequenceVerdict::Append));
    // The others are still recognised.
    assert_eq!(
        s.check(1, 0, 1, 1),
        Ok(SequenceVerdict::Duplicate(meta(1, 3)))
    );
    assert_eq!(
        s.check(3, 0, 0, 0),
        Ok(SequenceVerdict::Duplicate(meta(0, 2)))
    );
    // Equal times: the lower (earlier issued) id goes first.
    let mut t = ProducerState::with_max(2);
    t.record(9, 0, meta(0, 0), 10);
    t.record(5, 0, meta(0, 1), 10);
    assert_eq!(t.record(7, 0, meta(0, 2), 10), Some(5));
}

#[test]
fn the_age_order_follows_expiry_truncation_and_snapshots() {
    let mut s = ProducerState::with_max(3);
    s.record(1, 0, meta(0, 0), 100);
    s.record(2, 0, meta(0, 1), 200);
    s.record(3, 0, meta(0, 5), 300);
    // Expiry removes the oldest only, and what it removed is no longer evicted later.
    assert_eq!(s.expire(1_150, 1_000), 1);
    assert!(s.get(1).is_none());
    // A cut tail drops producer 3; the next two new producers fill the free slots first.
    s.truncate_to(5);
    assert!(s.get(3).is_none());
    assert_eq!(s.record(4, 0, meta(0, 5), 400), None);
    assert_eq!(s.record(5, 0, meta(0, 6), 500), None);
    assert_eq!(s.record(6, 0, meta(0, 7), 600), Some(2));

    // A snapshot holds at most the cap; loaded under a smaller cap, the oldest go.
    let bytes = s.encode_snapshot(8);
    let (_, mut loaded) = ProducerState::decode_snapshot(&bytes).expect("decodes");
    assert_eq!(loaded.len(), 3);
    assert_eq!(loaded.set_max(2), 1);
    assert!(loaded.get(4).is_none() && loaded.get(5).is_some() && loaded.get(6).is_some());
    assert_eq!(loaded.record(7, 0, meta(0, 8), 700), Some(5));
    assert_eq!(
        ProducerState::with_max(0).max(),
        1,
        "a cap of 0 still keeps one producer"
    );
}

async fn append_at(log: &PartitionLog, b: &[u8], now_ms: i64) -> (i64, bool) {
    let info = log.append(b, LeaderEpoch(0), now_ms).await.expect("append");
    (info.base_offset.0, info.duplicate)
}

#[test]
fn the_cap_holds_through_appends_and_reopens() {
    run(|dir| async move {
        let open = |max| {
            PartitionLog::open_with_producer_ids_max(dir.clone(), config(1 << 20, 4096), max, 0)
        };
        let log = open(3).await.expect("open");
        for (pid, now) in [(1, 10), (2, 20), (3, 30), (4, 40)] {
            assert_eq!(
                append_at(&log, &pbatch(pid, 0, 0, 1), now).await,
                (pid - 1, false)
            );
        }
        assert_eq!(log.producer_count(), 3);
        // Producer 1 was evicted by producer 4: its retry is stored again (and evicts producer
        // 2, now the oldest). Producer 3's retry is still recognised.
        assert_eq!(append_at(&log, &pbatch(1, 0, 0, 1), 50).await, (4, false));
        assert_eq!(append_at(&log, &pbatch(3, 0, 0, 1), 60).await, (2, true));
        assert_eq!(
            append_at(&log, &pbatch(2, 0, 0, 1), 60).await,
            (5, false),
            "producer 2 was evicted"
        );
        log.close().await.expect("close");

        // The clean-close snapshot holds producers 3 (30), 1 (50), 2 (60); reopened with a cap
        // of 2, producer 3 goes.
        let log = open(2).await.expect("reopen");
        assert_eq!(log.producer_count(), 2);
        assert_eq!(append_at(&log, &pbatch(1, 0, 0, 1), 70).await, (4, true));
        assert_eq!(append_at(&log, &pbatch(2, 0, 0, 1), 70).await, (5, true));
        assert_eq!(append_at(&log, &pbatch(3, 0, 0, 1), 70).await, (6, false));
        drop(log);

        // Unclean, no snapshot: the rescan keeps the cap too, and the log manager passes it on.
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".snapshot") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        let data_dir = dir.parent().unwrap().to_path_buf();
        let manager = LogManager::new(data_dir).with_producer_ids_max(1);
        let log = manager
            .open_or_create("topic", 0, config(1 << 20, 4096), 0)
            .await
            .expect("rescan");
        assert_eq!(log.producer_count(), 1);
        // The last batch in the log was producer 3's: that one is kept.
        assert_eq!(append_at(&log, &pbatch(3, 0, 0, 1), 80).await, (6, true));
        assert_eq!(append_at(&log, &pbatch(2, 0, 0, 1), 80).await, (7, false));
        log.close().await.expect("close");
    });
}
