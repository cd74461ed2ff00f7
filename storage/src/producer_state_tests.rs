//! Idempotent appends through `PartitionLog`: duplicates, sequence and epoch errors, and the
//! producer state after a clean reopen (snapshot), an unclean one (rescan), and a cut tail.

use std::path::Path;

use crate::error::StorageError;
use crate::partition_log::PartitionLog;
use crate::producer_state::ProducerError;
use crate::test_support::{config, run, segment_logs};
use crate::testing::{build_batch_with, BatchOptions};
use crate::types::{LeaderEpoch, Offset};

/// A batch of `records` records from producer `pid` with `epoch`, starting at `seq`.
fn pbatch(pid: i64, epoch: i16, seq: i32, records: usize) -> Vec<u8> {
    let value = [b'v'; 40];
    let recs: Vec<crate::testing::TestRecord<'_>> = (0..records).map(|_| (Some(&b"k"[..]), Some(&value[..]), 1)).collect();
    build_batch_with(&BatchOptions { producer_id: pid, producer_epoch: epoch, base_sequence: seq, ..Default::default() }, &recs)
}

fn snapshots(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".snapshot")).count()
}

async fn append(log: &PartitionLog, b: &[u8]) -> Result<(i64, bool), StorageError> {
    log.append(b, LeaderEpoch(0), 10).await.map(|i| (i.base_offset.0, i.duplicate))
}

#[test]
fn retries_are_answered_with_the_stored_offsets() {
    run(|dir| async move {
        let log = PartitionLog::open(dir, config(1 << 20, 4096), 0).await.expect("open");
        assert_eq!(append(&log, &pbatch(5, 0, 0, 3)).await.unwrap(), (0, false));
        assert_eq!(append(&log, &pbatch(5, 0, 3, 2)).await.unwrap(), (3, false));
        assert_eq!(append(&log, &pbatch(6, 0, 0, 1)).await.unwrap(), (5, false));
        // Retries of both batches of producer 5: nothing appended, original offsets.
        assert_eq!(append(&log, &pbatch(5, 0, 0, 3)).await.unwrap(), (0, true));
        assert_eq!(append(&log, &pbatch(5, 0, 3, 2)).await.unwrap(), (3, true));
        assert_eq!(log.log_end_offset(), Offset(6));
        // A gap, a stale epoch, and a new epoch that does not start at 0.
        assert!(matches!(append(&log, &pbatch(5, 0, 7, 1)).await, Err(StorageError::Producer(ProducerError::OutOfOrder { .. }))));
        assert!(matches!(append(&log, &pbatch(5, 1, 5, 1)).await, Err(StorageError::Producer(ProducerError::OutOfOrder { .. }))));
        assert_eq!(append(&log, &pbatch(5, 1, 0, 1)).await.unwrap(), (6, false));
        assert!(matches!(append(&log, &pbatch(5, 0, 5, 1)).await, Err(StorageError::Producer(ProducerError::StaleEpoch { .. }))));
        assert_eq!(log.log_end_offset(), Offset(7));
        // Batches without a producer id are never checked.
        assert_eq!(append(&log, &pbatch(-1, -1, -1, 1)).await.unwrap(), (7, false));
        assert_eq!(append(&log, &pbatch(-1, -1, -1, 1)).await.unwrap(), (8, false));
    });
}

#[test]
fn producer_state_survives_clean_and_unclean_reopen() {
    run(|dir| async move {
        // Small segments: several rolls, so snapshots are written along the way.
        let log = PartitionLog::open(dir.clone(), config(1024, 4096), 0).await.expect("open");
        let mut seq = 0;
        for _ in 0..30 {
            append(&log, &pbatch(9, 2, seq, 4)).await.expect("append");
            seq += 4;
        }
        assert!(segment_logs(&dir).len() > 3, "the log rolled");
        assert!((1..=2).contains(&snapshots(&dir)), "a couple of snapshots are kept");
        log.close().await.expect("close");

        // Clean: the close wrote a snapshot at the log end.
        let log = PartitionLog::open(dir.clone(), config(1024, 4096), 0).await.expect("reopen");
        assert_eq!(append(&log, &pbatch(9, 2, seq - 4, 4)).await.unwrap(), (116, true));
        assert!(matches!(append(&log, &pbatch(9, 2, seq + 1, 1)).await, Err(StorageError::Producer(_))));
        assert_eq!(append(&log, &pbatch(9, 2, seq, 4)).await.unwrap(), (120, false));
        seq += 4;
        drop(log);

        // Unclean: the last roll's snapshot plus a rescan of what followed.
        let log = PartitionLog::open(dir.clone(), config(1024, 4096), 0).await.expect("recover");
        assert_eq!(append(&log, &pbatch(9, 2, seq - 4, 4)).await.unwrap(), (120, true));
        assert_eq!(append(&log, &pbatch(9, 2, seq - 8, 4)).await.unwrap(), (116, true));
        assert_eq!(append(&log, &pbatch(9, 2, seq, 4)).await.unwrap(), (124, false));
        drop(log);

        // Without any snapshot the whole log is scanned.
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().ends_with(".snapshot") {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        let log = PartitionLog::open(dir.clone(), config(1024, 4096), 0).await.expect("rescan");
        assert_eq!(append(&log, &pbatch(9, 2, seq, 4)).await.unwrap(), (124, true));
        assert!(matches!(append(&log, &pbatch(9, 1, 0, 1)).await, Err(StorageError::Producer(ProducerError::StaleEpoch { .. }))));
        log.close().await.expect("close");
    });
}

#[test]
fn a_cut_tail_takes_its_producer_batches_with_it() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), config(1 << 20, 4096), 0).await.expect("open");
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
        std::fs::OpenOptions::new().write(true).open(seg).unwrap().set_len(len - last + 7).unwrap();

        let log = PartitionLog::open(dir.clone(), config(1 << 20, 4096), 0).await.expect("recover");
        assert_eq!(log.log_end_offset(), Offset(2));
        // The lost batch is not a duplicate: it is appended again, at offset 2.
        assert_eq!(append(&log, &pbatch(3, 0, 2, 2)).await.unwrap(), (2, false));
        assert_eq!(append(&log, &pbatch(3, 0, 0, 2)).await.unwrap(), (0, true));
        log.close().await.unwrap();
    });
}
