//! Unit tests of retention and DeleteRecords: which segments go, the log start offset, reads
//! below it, persistence across reopen.

use super::*;
use crate::config::CleanupPolicy;
use crate::test_support::{batch, read_all, run, segment_logs};

/// Small segments (about three 100-byte batches each).
fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes: 400,
        index_interval_bytes: 1,
        ..LogConfig::default()
    }
}

/// Appends `n` batches with timestamps `ts0`, `ts0 + 1`, ...
async fn fill(log: &PartitionLog, n: usize, ts0: i64) {
    for i in 0..n {
        log.append(
            &batch(1, 60, ts0 + i as i64),
            LeaderEpoch(0),
            ts0 + i as i64,
        )
        .await
        .expect("append");
    }
}

#[test]
fn retention_by_size_deletes_oldest_closed_segments_only() {
    run(|dir| async move {
        let config = LogConfig {
            retention_ms: -1,
            ..small_segments()
        };
        let log = PartitionLog::open(dir.clone(), config.clone(), 0)
            .await
            .expect("open");
        fill(&log, 30, 1_000).await;
        let before = log.segment_count();
        assert!(before >= 8, "{before} segments");
        assert_eq!(log.enforce_retention(5_000).await.expect("no limit"), 0);

        log.update_config(LogConfig {
            retention_bytes: 1_000,
            ..config.clone()
        });
        let deleted = log.enforce_retention(5_000).await.expect("retention");
        assert!(deleted > 0);
        assert_eq!(log.segment_count(), before - deleted);
        assert_eq!(
            segment_logs(&dir).len(),
            log.segment_count(),
            "files follow the segment set"
        );
        let size = log.size_bytes();
        let first = log.segments.borrow().first().expect("segment");
        assert!(size >= 1_000 && size - first.size() < 1_000, "size {size}");
        assert_eq!(log.log_start_offset().0, first.base_offset());
        let start = log.log_start_offset();
        assert!(matches!(
            log.read(Offset(start.0 - 1), 1 << 20, true).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert!(log
            .read(start, 1 << 20, true)
            .await
            .expect("read")
            .is_some());
        assert_eq!(
            log.enforce_retention(5_000).await.expect("again"),
            0,
            "nothing more to do"
        );

        // retention.bytes 0: every closed segment goes, the active one stays.
        log.update_config(LogConfig {
            retention_bytes: 0,
            ..config.clone()
        });
        log.enforce_retention(5_000).await.expect("retention");
        assert_eq!(log.segment_count(), 1);
        let active = log.segments.borrow().active().expect("active");
        assert_eq!(log.log_start_offset().0, active.base_offset());
        assert!(active.size() > 0);
        let end = log.log_end_offset();
        log.close().await.expect("close");

        let log = PartitionLog::open(dir, config, 0).await.expect("reopen");
        assert_eq!(log.log_start_offset().0, active.base_offset());
        assert_eq!(log.log_end_offset(), end);
        assert!(!read_all(&log, log.log_start_offset().0).await.is_empty());
    });
}

#[test]
fn retention_by_time_uses_the_newest_timestamp_of_each_segment() {
    run(|dir| async move {
        let config = small_segments();
        let log = PartitionLog::open(dir, config.clone(), 0)
            .await
            .expect("open");
        fill(&log, 30, 1_000).await;
        // Batches of timestamps 1000..1029; at now = 1020 + 100 with retention.ms 100, the
        // segments whose newest batch is below 1020 go.
        log.update_config(LogConfig {
            retention_ms: 100,
            ..config
        });
        let deleted = log.enforce_retention(1_120).await.expect("retention");
        assert!(deleted > 0);
        let first = log.segments.borrow().first().expect("segment");
        let newest_kept = first.index.borrow().max_timestamp().expect("ts").timestamp;
        assert!(
            newest_kept >= 1_020,
            "the first kept segment holds a batch at or after 1020"
        );
        // The batch just below the new start is older than the limit.
        assert!(
            log.log_start_offset().0 <= 20,
            "start {}",
            log.log_start_offset()
        );
        for segment in log.segments.borrow().all() {
            let ts = segment.index.borrow().max_timestamp().map(|t| t.timestamp);
            assert!(
                ts.is_none_or(|ts| ts >= 1_020),
                "kept segment with newest {ts:?}"
            );
        }
        // compact only: retention does nothing.
        let compact = LogConfig {
            retention_ms: 0,
            cleanup: CleanupPolicy {
                delete: false,
                compact: true,
            },
            ..small_segments()
        };
        log.update_config(compact);
        assert_eq!(
            log.enforce_retention(1_000_000)
                .await
                .expect("compact only"),
            0
        );
        log.close().await.expect("close");
    });
}

#[test]
fn delete_records_moves_the_log_start_and_deletes_whole_segments() {
    run(|dir| async move {
        let config = small_segments();
        let log = PartitionLog::open(dir.clone(), config.clone(), 0)
            .await
            .expect("open");
        fill(&log, 30, 1_000).await;
        let segments = log.segment_count();
        assert!(matches!(
            log.delete_records(Offset(31)).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        assert_eq!(
            log.delete_records(Offset(1)).await.expect("delete"),
            Offset(1)
        );
        assert_eq!(
            log.segment_count(),
            segments,
            "offset 1 is inside the first segment"
        );
        assert!(matches!(
            log.read(Offset(0), 1000, true).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
        // A read at the new start returns the batch holding it (here it starts there).
        let slice = log
            .read(Offset(1), 1000, true)
            .await
            .expect("read")
            .expect("data");
        assert!(slice.first_offset.0 <= 1);

        assert_eq!(
            log.delete_records(Offset(17)).await.expect("delete"),
            Offset(17)
        );
        assert!(log.segment_count() < segments);
        let first = log.segments.borrow().first().expect("segment");
        assert!(first.base_offset() <= 17 && first.next_offset() > 17);
        assert_eq!(
            log.delete_records(Offset(5)).await.expect("never back"),
            Offset(17)
        );
        let kept = read_all(&log, 17).await;
        log.close().await.expect("close");

        let log = PartitionLog::open(dir.clone(), config.clone(), 0)
            .await
            .expect("reopen");
        assert_eq!(log.log_start_offset(), Offset(17));
        assert_eq!(read_all(&log, 17).await, kept);
        // Up to the high watermark: all closed segments go.
        assert_eq!(
            log.delete_records(Offset(30)).await.expect("to hw"),
            Offset(30)
        );
        assert_eq!(log.segment_count(), 1);
        assert!(log
            .read(Offset(30), 1000, true)
            .await
            .expect("at end")
            .is_none());
        log.close().await.expect("close");
    });
}

#[test]
fn segments_below_a_persisted_log_start_are_removed_on_open() {
    run(|dir| async move {
        let config = small_segments();
        let log = PartitionLog::open(dir.clone(), config.clone(), 0)
            .await
            .expect("open");
        fill(&log, 30, 1_000).await;
        let before = segment_logs(&dir).len();
        log.close().await.expect("close");
        // As if the process died after persisting a new log start but before the unlinks.
        crate::checkpoint::write_log_start(&dir, 20)
            .await
            .expect("write");
        let log = PartitionLog::open(dir.clone(), config, 0)
            .await
            .expect("reopen");
        assert_eq!(log.log_start_offset(), Offset(20));
        assert!(segment_logs(&dir).len() < before);
        let first = log.segments.borrow().first().expect("segment");
        assert!(first.base_offset() <= 20 && first.next_offset() > 20);
        assert!(!read_all(&log, 20).await.is_empty());
        log.close().await.expect("close");
    });
}
