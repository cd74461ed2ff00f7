//! Reopen and recovery tests: clean and unclean reopen, torn, garbage and corrupt tails, and
//! rebuilt index files.

use std::path::{Path, PathBuf};

use crate::batch::validate_batch;
use crate::config::LogConfig;
use crate::error::StorageError;
use crate::partition_log::PartitionLog;
use crate::test_support::{
    active_log, append_all, batch, config, read_all, run, segment_logs, stamped,
};
use crate::testing::build_batch_with_timestamps;
use crate::types::{LeaderEpoch, Offset};

#[test]
fn reopen_after_clean_close_uses_the_marker() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), config(2000, 128), 0)
            .await
            .expect("open");
        let batches: Vec<Vec<u8>> = (0..20).map(|i| batch(3, 50, i)).collect();
        let mut expected = append_all(&log, &batches, 2).await;
        let end = log.log_end_offset();
        log.close().await.expect("close");
        assert!(dir.join("clean-shutdown").exists());
        assert!(matches!(
            log.append(&batches[0], LeaderEpoch(2), 0).await,
            Err(StorageError::Closed { .. })
        ));
        assert!(matches!(
            log.read(Offset(0), 100, true).await,
            Err(StorageError::Closed { .. })
        ));

        let log = PartitionLog::open(dir.clone(), config(2000, 128), 0)
            .await
            .expect("reopen");
        assert!(
            !dir.join("clean-shutdown").exists(),
            "marker is consumed on open"
        );
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.max_timestamp(), Some((Offset(19 * 3), 19)));
        expected.extend_from_slice(&append_all(&log, &batches[..2], 2).await);
        assert_eq!(log.log_end_offset(), Offset(end.0 + 6));
        assert_eq!(read_all(&log, 0).await, expected);
        log.close().await.expect("close");
    });
}

#[test]
fn stale_marker_does_not_skip_recovery() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), LogConfig::default(), 0)
            .await
            .expect("open");
        let expected = append_all(&log, &[batch(2, 10, 1), batch(2, 10, 2)], 0).await;
        log.close().await.expect("close");
        // Garbage after the clean close: sizes no longer match the marker.
        let path = active_log(&dir);
        let mut data = std::fs::read(&path).expect("read");
        data.extend_from_slice(&[7u8; 100]);
        std::fs::write(&path, &data).expect("write");
        let log = PartitionLog::open(dir.clone(), LogConfig::default(), 0)
            .await
            .expect("reopen");
        assert_eq!(log.log_end_offset(), Offset(4));
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            expected.len() as u64
        );
        assert_eq!(read_all(&log, 0).await, expected);
    });
}

#[test]
fn reopen_after_unclean_drop_recovers() {
    run(|dir| async move {
        let cfg = config(1500, 100);
        let log = PartitionLog::open(dir.clone(), cfg.clone(), 0)
            .await
            .expect("open");
        let batches: Vec<Vec<u8>> = (0..25).map(|i| batch(2, 40 + i, i as i64)).collect();
        let expected = append_all(&log, &batches, 0).await;
        let end = log.log_end_offset();
        let segments = log.segment_count();
        drop(log);
        let log = PartitionLog::open(dir.clone(), cfg, 0)
            .await
            .expect("reopen");
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.segment_count(), segments);
        assert_eq!(read_all(&log, 0).await, expected);
        let info = log
            .append(&batches[0], LeaderEpoch(0), 0)
            .await
            .expect("append");
        assert_eq!(info.base_offset, end);
    });
}

/// Appends `n` batches, drops the log, damages the active segment with `damage`, reopens, and
/// checks that the log holds exactly the first batches that `damage` says survive, and that
/// appends continue with the right offsets.
fn recovery_case(n: usize, damage: fn(&Path, &[Vec<u8>]) -> usize) {
    run(move |dir| async move {
        let cfg = config(1 << 20, 200);
        let log = PartitionLog::open(dir.clone(), cfg.clone(), 0)
            .await
            .expect("open");
        let batches: Vec<Vec<u8>> = (0..n)
            .map(|i| batch(1 + i % 3, 30 + 7 * i, i as i64))
            .collect();
        let mut stamped_batches = Vec::new();
        for b in &batches {
            let info = log.append(b, LeaderEpoch(4), 0).await.expect("append");
            stamped_batches.push(stamped(b, info.base_offset.0, 4));
        }
        drop(log);
        let survivors = damage(&active_log(&dir), &stamped_batches);

        let log = PartitionLog::open(dir.clone(), cfg.clone(), 0)
            .await
            .expect("reopen");
        let kept: Vec<u8> = stamped_batches[..survivors].concat();
        let kept_end: i64 = batches[..survivors]
            .iter()
            .map(|b| i64::from(validate_batch(b).expect("valid").records_count))
            .sum();
        assert_eq!(log.log_end_offset(), Offset(kept_end));
        assert_eq!(
            std::fs::metadata(active_log(&dir)).expect("stat").len(),
            kept.len() as u64
        );
        assert_eq!(read_all(&log, 0).await, kept);
        let extra = batch(2, 9, 99);
        let info = log
            .append(&extra, LeaderEpoch(5), 0)
            .await
            .expect("append after recovery");
        assert_eq!(info.base_offset, Offset(kept_end));
        let mut all = kept.clone();
        all.extend_from_slice(&stamped(&extra, kept_end, 5));
        assert_eq!(read_all(&log, 0).await, all);
        drop(log);
        // And the recovered state survives another unclean reopen.
        let log = PartitionLog::open(dir, cfg, 0).await.expect("reopen again");
        assert_eq!(read_all(&log, 0).await, all);
    });
}

#[test]
fn recovers_from_a_torn_tail() {
    recovery_case(30, |path, batches| {
        let len = std::fs::metadata(path).expect("stat").len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open");
        file.set_len(len - 5).expect("truncate");
        batches.len() - 1
    });
}

#[test]
fn recovers_from_a_torn_header() {
    recovery_case(30, |path, batches| {
        let len = std::fs::metadata(path).expect("stat").len();
        let last = batches.last().expect("batches").len() as u64;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open");
        file.set_len(len - last + 20).expect("truncate");
        batches.len() - 1
    });
}

#[test]
fn recovers_from_a_garbage_tail() {
    recovery_case(30, |path, batches| {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut data = std::fs::read(path).expect("read");
        data.extend((0..3000).map(|_| rng.gen::<u8>()));
        std::fs::write(path, data).expect("write");
        batches.len()
    });
}

#[test]
fn recovers_from_a_corrupt_crc_in_the_last_batch() {
    recovery_case(30, |path, batches| {
        let mut data = std::fs::read(path).expect("read");
        let at = data.len() - batches.last().expect("batches").len() / 2;
        data[at] ^= 0x55;
        std::fs::write(path, data).expect("write");
        batches.len() - 1
    });
}

#[test]
fn recovers_when_the_last_indexed_batch_is_corrupt() {
    // Recovery restarts at the last offset index entry whose batch validates; damage that very
    // batch so that it must fall back to the entry before and cut there.
    recovery_case(30, |path, batches| {
        let index = std::fs::read(path.with_extension("index")).expect("read index");
        assert!(
            index.len() >= 16,
            "the test needs at least two index entries"
        );
        let last = &index[index.len() - 8..];
        let position = u32::from_be_bytes([last[4], last[5], last[6], last[7]]) as usize;
        let mut data = std::fs::read(path).expect("read");
        data[position + 30] ^= 0x01;
        std::fs::write(path, data).expect("write");
        let mut start = 0;
        batches
            .iter()
            .take_while(|b| {
                let keep = start < position;
                start += b.len();
                keep
            })
            .count()
    });
}

#[test]
fn recovers_an_emptied_active_segment() {
    recovery_case(5, |path, _| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open")
            .set_len(0)
            .expect("truncate");
        0
    });
}

fn index_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "index" || e == "timeindex")
        })
        .map(|p| {
            let data = std::fs::read(&p).expect("read");
            (p, data)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn damaged_or_missing_index_files_are_rebuilt() {
    run(|dir| async move {
        let cfg = config(3000, 150);
        let log = PartitionLog::open(dir.clone(), cfg.clone(), 0)
            .await
            .expect("open");
        let mut reference = Vec::new();
        for i in 0..60i64 {
            let records: Vec<_> = (0..3)
                .map(|r| (None, Some(&b"0123456789"[..]), (i * 7919 + r * 13) % 1000))
                .collect();
            let b = build_batch_with_timestamps(&records);
            let info = log.append(&b, LeaderEpoch(0), 0).await.expect("append");
            reference.push(stamped(&b, info.base_offset.0, 0));
        }
        assert!(log.segment_count() >= 3);
        let before = index_files(&dir);
        let mut lookups = Vec::new();
        for ts in (0..1000).step_by(37) {
            lookups.push(log.offset_for_timestamp(ts).await.expect("lookup"));
        }
        drop(log);

        // Remove one closed segment's offset index, give another's time index a bad length,
        // point the active offset index past the end of its log, and remove the active time index.
        let logs = segment_logs(&dir);
        std::fs::remove_file(logs[0].with_extension("index")).expect("remove");
        let t1 = logs[1].with_extension("timeindex");
        let mut data = std::fs::read(&t1).expect("read");
        data.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&t1, data).expect("write");
        let active = logs.last().expect("active");
        let mut data = std::fs::read(active.with_extension("index")).expect("read");
        data.extend_from_slice(&[0, 0, 0, 99, 0, 1, 0, 0]);
        std::fs::write(active.with_extension("index"), data).expect("write");
        std::fs::remove_file(active.with_extension("timeindex")).expect("remove");

        let log = PartitionLog::open(dir.clone(), cfg, 0)
            .await
            .expect("reopen");
        assert_eq!(
            index_files(&dir),
            before,
            "rebuilt index files equal the originals"
        );
        assert_eq!(read_all(&log, 0).await, reference.concat());
        let mut again = Vec::new();
        for ts in (0..1000).step_by(37) {
            again.push(log.offset_for_timestamp(ts).await.expect("lookup"));
        }
        assert_eq!(again, lookups);
    });
}
