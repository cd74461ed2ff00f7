//! The leader-epoch cache wired into `PartitionLog`: assigned on appends, persisted as
//! `leader-epoch-checkpoint`, reloaded, rebuilt from the log when the file is missing or
//! damaged, cut when recovery or retention shortened the log, and the OffsetForLeaderEpoch
//! answers.

use std::path::Path;

use super::*;
use crate::epoch_cache::{EpochCache, UNDEFINED};
use crate::test_support::{active_log, batch, config, run};

const CHECKPOINT: &str = "leader-epoch-checkpoint";

fn e(n: i32) -> LeaderEpoch {
    LeaderEpoch(n)
}

fn o(n: i64) -> Offset {
    Offset(n)
}

fn on_disk(dir: &Path) -> Vec<(LeaderEpoch, Offset)> {
    let bytes = std::fs::read(dir.join(CHECKPOINT)).expect("checkpoint file");
    EpochCache::decode(&bytes)
        .expect("valid checkpoint")
        .entries()
}

/// Appends batches of 2 records with the given epochs; returns their base offsets.
async fn append_epochs(log: &PartitionLog, epochs: &[i32]) -> Vec<i64> {
    let mut bases = Vec::new();
    for &epoch in epochs {
        let info = log
            .append(&batch(2, 30, 1), e(epoch), 0)
            .await
            .expect("append");
        bases.push(info.base_offset.0);
    }
    bases
}

#[test]
fn appends_assign_epochs_and_write_the_checkpoint() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), config(1 << 20, 4096), 0)
            .await
            .expect("open");
        assert_eq!(log.latest_epoch(), None);
        assert_eq!(log.epoch_end_offset(e(0)), UNDEFINED);
        assert!(!dir.join(CHECKPOINT).exists(), "nothing to write yet");
        append_epochs(&log, &[0, 0, 2, 2, 5]).await;
        let want = vec![(e(0), o(0)), (e(2), o(4)), (e(5), o(8))];
        assert_eq!(log.leader_epochs(), want);
        assert_eq!(on_disk(&dir), want);
        assert_eq!(log.latest_epoch(), Some(e(5)));
        // OffsetForLeaderEpoch: an epoch ends where the next higher one starts.
        assert_eq!(log.epoch_end_offset(e(0)), (e(0), o(4)));
        assert_eq!(log.epoch_end_offset(e(1)), (e(0), o(4)));
        assert_eq!(log.epoch_end_offset(e(2)), (e(2), o(8)));
        assert_eq!(log.epoch_end_offset(e(4)), (e(2), o(8)));
        assert_eq!(log.epoch_end_offset(e(5)), (e(5), o(10)));
        assert_eq!(log.epoch_end_offset(e(6)), UNDEFINED);

        log.close().await.expect("close");
        let log = PartitionLog::open(dir.clone(), config(1 << 20, 4096), 0)
            .await
            .expect("reopen");
        assert_eq!(log.leader_epochs(), want);
        append_epochs(&log, &[5, 7]).await;
        assert_eq!(log.epoch_end_offset(e(5)), (e(5), o(12)));
        assert_eq!(on_disk(&dir).last(), Some(&(e(7), o(12))));
        log.close().await.expect("close");
    });
}

#[test]
fn a_missing_or_damaged_checkpoint_is_rebuilt_from_the_log() {
    run(|dir| async move {
        // Small segments: the rebuild walks closed segments too.
        let log = PartitionLog::open(dir.clone(), config(300, 64), 0)
            .await
            .expect("open");
        append_epochs(&log, &[1, 1, 1, 3, 3, 4, 4, 4, 9]).await;
        assert!(log.segment_count() > 2);
        let want = log.leader_epochs();
        assert_eq!(
            want,
            vec![(e(1), o(0)), (e(3), o(6)), (e(4), o(10)), (e(9), o(16))]
        );
        log.close().await.expect("close");

        std::fs::remove_file(dir.join(CHECKPOINT)).expect("remove");
        let log = PartitionLog::open(dir.clone(), config(300, 64), 0)
            .await
            .expect("reopen without the checkpoint");
        assert_eq!(log.leader_epochs(), want);
        assert_eq!(on_disk(&dir), want, "the rebuilt cache is written");
        log.close().await.expect("close");

        for garbage in [
            &b"0\n3\n1 0\n3 6\n"[..],
            b"1\n0\n",
            b"0\n2\n4 10\n3 12\n",
            b"\xff",
        ] {
            std::fs::write(dir.join(CHECKPOINT), garbage).expect("write");
            let log = PartitionLog::open(dir.clone(), config(300, 64), 0)
                .await
                .expect("reopen with a damaged checkpoint");
            assert_eq!(log.leader_epochs(), want, "{garbage:?}");
            assert_eq!(on_disk(&dir), want);
            log.close().await.expect("close");
        }
    });
}

#[test]
fn the_checkpoint_is_cut_when_recovery_cut_the_log() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), config(1 << 20, 4096), 0)
            .await
            .expect("open");
        append_epochs(&log, &[1, 1]).await;
        log.flush().await.expect("flush");
        let kept = std::fs::metadata(active_log(&dir)).expect("stat").len();
        append_epochs(&log, &[2, 3]).await;
        assert_eq!(
            on_disk(&dir),
            vec![(e(1), o(0)), (e(2), o(4)), (e(3), o(6))]
        );
        // Unclean stop; the unsynced batches of epochs 2 and 3 did not reach the disk.
        drop(log);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(active_log(&dir))
            .expect("open segment");
        file.set_len(kept).expect("cut");
        let log = PartitionLog::open(dir.clone(), config(1 << 20, 4096), 0)
            .await
            .expect("reopen");
        assert_eq!(log.log_end_offset(), o(4));
        assert_eq!(log.leader_epochs(), vec![(e(1), o(0))]);
        assert_eq!(on_disk(&dir), vec![(e(1), o(0))]);
        assert_eq!(log.epoch_end_offset(e(1)), (e(1), o(4)));
        log.close().await.expect("close");
    });
}

#[test]
fn moving_the_log_start_moves_the_first_epoch() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), config(300, 64), 0)
            .await
            .expect("open");
        append_epochs(&log, &[1, 1, 2, 2, 2, 2, 3, 3]).await;
        assert_eq!(log.delete_records(o(7)).await.expect("delete"), o(7));
        let want = vec![(e(2), o(7)), (e(3), o(12))];
        assert_eq!(log.leader_epochs(), want);
        assert_eq!(on_disk(&dir), want);
        log.close().await.expect("close");
        let log = PartitionLog::open(dir.clone(), config(300, 64), 0)
            .await
            .expect("reopen");
        assert_eq!(log.leader_epochs(), want);
        log.close().await.expect("close");
    });
}
