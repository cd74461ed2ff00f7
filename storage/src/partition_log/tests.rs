//! Unit tests of `PartitionLog`: append/read, offsets, rolls, indexes, timestamps, flush,
//! high watermark, errors. Reopen and recovery tests are in `recovery/tests.rs`.

use std::rc::Rc;

use super::*;
use crate::batch::validate_batch;
use crate::test_support::{
    append_all, batch, config, read_all, read_bytes, run, segment_logs, stamped,
};
use crate::testing::{build_batch_with, build_batch_with_timestamps, BatchOptions};

#[test]
fn append_read_round_trip() {
    run(|dir| async move {
        let log = PartitionLog::open(dir, LogConfig::default(), 0)
            .await
            .expect("open");
        assert_eq!(log.log_end_offset(), Offset(0));
        assert_eq!(
            log.read(Offset(0), 1000, true)
                .await
                .expect("read")
                .map(|s| s.len),
            None
        );
        let batches = [batch(1, 10, 5), batch(3, 20, 6), batch(2, 5, 7)];
        let mut expected = Vec::new();
        let mut next = 0;
        for b in &batches {
            let info = log.append(b, LeaderEpoch(3), 100).await.expect("append");
            let records = i64::from(validate_batch(b).expect("valid").records_count);
            assert_eq!(info.base_offset, Offset(next));
            assert_eq!(info.last_offset, Offset(next + records - 1));
            assert_eq!(info.log_append_time_ms, -1);
            assert_eq!(info.log_start_offset, Offset(0));
            next += records;
            assert_eq!(log.log_end_offset(), Offset(next));
            assert_eq!(log.high_watermark(), Offset(next));
            expected.extend_from_slice(&stamped(b, info.base_offset.0, 3));
        }
        assert_eq!(read_all(&log, 0).await, expected);
        assert_eq!(log.size_bytes(), expected.len() as u64);
        assert_eq!(log.max_timestamp(), Some((Offset(4), 7)));
        log.close().await.expect("close");
    });
}

#[test]
fn offsets_and_epoch_are_assigned_in_place_without_touching_crc() {
    run(|dir| async move {
        let log = PartitionLog::open(dir, LogConfig::default(), 0)
            .await
            .expect("open");
        let first = batch(4, 8, 1);
        let second = build_batch_with(
            &BatchOptions {
                base_offset: 777,
                partition_leader_epoch: 9,
                ..Default::default()
            },
            &[(None, Some(b"v"), 2)],
        );
        log.append(&first, LeaderEpoch(11), 0)
            .await
            .expect("append");
        log.append(&second, LeaderEpoch(12), 0)
            .await
            .expect("append");
        let (_, bytes) = read_bytes(&log, 4, 1 << 20, true).await.expect("data");
        let info = validate_batch(&bytes).expect("valid after assignment");
        assert_eq!(info.base_offset, 4);
        assert_eq!(info.partition_leader_epoch, 12);
        assert_eq!(info.crc, validate_batch(&second).expect("valid").crc);
        assert_eq!(
            bytes[16..],
            second[16..],
            "everything from magic on is stored verbatim"
        );
    });
}

#[test]
fn read_from_the_middle_of_a_batch_returns_the_whole_batch() {
    run(|dir| async move {
        let log = PartitionLog::open(dir, LogConfig::default(), 0)
            .await
            .expect("open");
        let batches = [batch(5, 10, 1), batch(3, 10, 2)];
        let expected = append_all(&log, &batches, 0).await;
        let first_len = batches[0].len();
        let (first, bytes) = read_bytes(&log, 3, 1 << 20, true).await.expect("data");
        assert_eq!(first, 0);
        assert_eq!(bytes, expected);
        let (first, bytes) = read_bytes(&log, 6, 1 << 20, true).await.expect("data");
        assert_eq!(first, 5);
        assert_eq!(bytes, expected[first_len..]);
    });
}

#[test]
fn max_bytes_and_min_one_batch() {
    run(|dir| async move {
        let log = PartitionLog::open(dir, LogConfig::default(), 0)
            .await
            .expect("open");
        let batches: Vec<Vec<u8>> = (0..5).map(|i| batch(1, 100, i)).collect();
        let expected = append_all(&log, &batches, 0).await;
        let size = batches[0].len();
        // Two whole batches fit in 2.5 batches' worth of bytes.
        let (_, bytes) = read_bytes(&log, 0, (size * 5 / 2) as u32, false)
            .await
            .expect("data");
        assert_eq!(bytes, expected[..2 * size]);
        // Exactly two batches' worth.
        let (_, bytes) = read_bytes(&log, 1, (size * 2) as u32, false)
            .await
            .expect("data");
        assert_eq!(bytes, expected[size..3 * size]);
        // A budget below one batch: the first batch whole with min_one_batch, nothing without.
        let (_, bytes) = read_bytes(&log, 2, 10, true).await.expect("data");
        assert_eq!(bytes, expected[2 * size..3 * size]);
        assert!(read_bytes(&log, 2, 10, false).await.is_none());
        assert!(read_bytes(&log, 2, 0, false).await.is_none());
        // At the end: nothing yet; past the end or below the start: out of range.
        assert!(log
            .read(Offset(5), 1000, true)
            .await
            .expect("read")
            .is_none());
        assert!(matches!(
            log.read(Offset(6), 1000, true).await,
            Err(StorageError::OffsetOutOfRange {
                requested: 6,
                log_start: 0,
                log_end: 5
            })
        ));
        assert!(matches!(
            log.read(Offset(-1), 1000, true).await,
            Err(StorageError::OffsetOutOfRange { .. })
        ));
    });
}

#[test]
fn rolls_by_size_and_reads_across_segments() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), config(1000, 100), 0)
            .await
            .expect("open");
        let batches: Vec<Vec<u8>> = (0..30).map(|i| batch(2, 150, i)).collect();
        let expected = append_all(&log, &batches, 1).await;
        let per_segment = 1000 / batches[0].len();
        assert_eq!(log.segment_count(), batches.len().div_ceil(per_segment));
        assert_eq!(segment_logs(&dir).len(), log.segment_count());
        for path in segment_logs(&dir) {
            let len = std::fs::metadata(&path).expect("stat").len();
            assert!(len <= 1000, "{} has {len} bytes", path.display());
        }
        assert_eq!(read_all(&log, 0).await, expected);
        // A read never spans two segments.
        let (_, bytes) = read_bytes(&log, 0, 1 << 20, true).await.expect("data");
        assert_eq!(bytes.len(), per_segment * batches[0].len());
    });
}

#[test]
fn rolls_by_time() {
    run(|dir| async move {
        let cfg = LogConfig {
            segment_ms: 1_000,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir, cfg, 10_000).await.expect("open");
        log.append(&batch(1, 1, 1), LeaderEpoch(0), 10_000)
            .await
            .expect("append");
        log.append(&batch(1, 1, 1), LeaderEpoch(0), 10_999)
            .await
            .expect("append");
        assert_eq!(log.segment_count(), 1);
        log.append(&batch(1, 1, 1), LeaderEpoch(0), 11_000)
            .await
            .expect("append");
        assert_eq!(log.segment_count(), 2);
        // The new segment's clock starts at its creation.
        log.append(&batch(1, 1, 1), LeaderEpoch(0), 11_999)
            .await
            .expect("append");
        assert_eq!(log.segment_count(), 2);
        assert_eq!(log.log_end_offset(), Offset(4));
    });
}

#[test]
fn index_lookup_over_many_batches_and_segments() {
    run(|dir| async move {
        let log = PartitionLog::open(dir, config(8 << 10, 256), 0)
            .await
            .expect("open");
        let mut batches = Vec::new();
        let mut bases = Vec::new();
        for i in 0..600usize {
            let b = batch(1 + i % 4, (i * 37) % 300, i as i64);
            let info = log.append(&b, LeaderEpoch(0), 0).await.expect("append");
            bases.push((info.base_offset.0, info.last_offset.0));
            batches.push(stamped(&b, info.base_offset.0, 0));
        }
        assert!(log.segment_count() > 10);
        let end = log.log_end_offset().0;
        for offset in 0..end {
            let idx = bases
                .iter()
                .position(|&(b, l)| b <= offset && offset <= l)
                .expect("in some batch");
            let (first, bytes) = read_bytes(&log, offset, 1, true).await.expect("data");
            assert_eq!(first, bases[idx].0, "offset {offset}");
            assert_eq!(bytes, batches[idx], "offset {offset}");
        }
    });
}

#[test]
fn offset_for_timestamp_per_record_and_per_batch() {
    run(|dir| async move {
        let log = PartitionLog::open(dir, config(600, 64), 0)
            .await
            .expect("open");
        // Uncompressed batches: record-level answers. Timestamps go up and down.
        let mut reference: Vec<(i64, i64)> = Vec::new(); // (offset, timestamp) of every record
        let mut batch_max: Vec<(i64, i64, i64)> = Vec::new(); // (base, last, max ts)
        let pattern = [
            100i64, 90, 150, 120, 300, 310, 200, 500, 450, 800, 790, 1000,
        ];
        for chunk in pattern.chunks(3) {
            let records: Vec<_> = chunk
                .iter()
                .map(|&ts| (None, Some(&b"value"[..]), ts))
                .collect();
            let b = build_batch_with_timestamps(&records);
            let info = log.append(&b, LeaderEpoch(0), 0).await.expect("append");
            for (i, &ts) in chunk.iter().enumerate() {
                reference.push((info.base_offset.0 + i as i64, ts));
            }
            batch_max.push((
                info.base_offset.0,
                info.last_offset.0,
                *chunk.iter().max().expect("non-empty"),
            ));
        }
        // A "compressed" batch: answered at batch granularity.
        let codec_batch = build_batch_with(
            &BatchOptions {
                attributes: 1,
                ..Default::default()
            },
            &[(None, Some(b"a"), 1500), (None, Some(b"b"), 1400)],
        );
        let info = log
            .append(&codec_batch, LeaderEpoch(0), 0)
            .await
            .expect("append");
        let codec_base = info.base_offset.0;
        assert!(log.segment_count() >= 1);
        for target in [
            0i64, 95, 100, 101, 151, 299, 300, 305, 311, 499, 500, 501, 999, 1000, 1001, 1450, 1500,
        ] {
            let got = log.offset_for_timestamp(target).await.expect("lookup");
            let expected = if target > 1000 {
                Some((Offset(codec_base), 1500))
            } else {
                let (base, last, _) = *batch_max
                    .iter()
                    .find(|&&(_, _, max)| max >= target)
                    .expect("a batch");
                reference
                    .iter()
                    .find(|&&(o, ts)| o >= base && o <= last && ts >= target)
                    .map(|&(o, ts)| (Offset(o), ts))
            };
            assert_eq!(got, expected, "target {target}");
        }
        assert_eq!(log.offset_for_timestamp(1501).await.expect("lookup"), None);
        assert_eq!(log.max_timestamp(), Some((Offset(codec_base), 1500)));
    });
}

#[test]
fn log_append_time_stamps_batches() {
    run(|dir| async move {
        let cfg = LogConfig {
            timestamp_type: TimestampType::LogAppendTime,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir, cfg, 0).await.expect("open");
        let b = batch(2, 4, 5);
        let info = log
            .append(&b, LeaderEpoch(0), 123_456)
            .await
            .expect("append");
        assert_eq!(info.log_append_time_ms, 123_456);
        let (_, bytes) = read_bytes(&log, 0, 1 << 20, true).await.expect("data");
        let header = validate_batch(&bytes).expect("valid with recomputed crc");
        assert_eq!(header.max_timestamp, 123_456);
        assert_eq!(header.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(
            log.offset_for_timestamp(100_000).await.expect("lookup"),
            Some((Offset(0), 123_456))
        );
    });
}

#[test]
fn concurrent_flushes_share_fdatasyncs() {
    run(|dir| async move {
        let log = PartitionLog::open(dir, LogConfig::default(), 0)
            .await
            .expect("open");
        log.flush().await.expect("flush of nothing");
        assert_eq!(log.flush_count(), 0, "nothing to sync");
        log.append(&batch(1, 10, 1), LeaderEpoch(0), 0)
            .await
            .expect("append");
        let flushes: Vec<_> = (0..8)
            .map(|_| {
                let log = Rc::clone(&log);
                glommio::spawn_local(async move { log.flush().await })
            })
            .collect();
        for f in flushes {
            f.await.expect("flush");
        }
        assert_eq!(log.flush_count(), 1, "eight callers share one fdatasync");

        // Appends interleaved with flushes: at most one sync in flight plus one that covers
        // everyone who arrived meanwhile, per round.
        let mut tasks = Vec::new();
        for i in 0..16 {
            let log = Rc::clone(&log);
            tasks.push(glommio::spawn_local(async move {
                log.append(&batch(1, 10, i), LeaderEpoch(0), 0)
                    .await
                    .expect("append");
                log.flush().await
            }));
        }
        for t in tasks {
            t.await.expect("flush");
        }
        assert!(log.flush_count() <= 1 + 16);
        assert!(!log.needs_flush(i64::MAX));
        log.flush().await.expect("flush");
        let syncs = log.flush_count();
        log.flush().await.expect("flush");
        assert_eq!(log.flush_count(), syncs, "no new data, no new sync");
    });
}

#[test]
fn needs_flush_follows_messages_and_age() {
    run(|dir| async move {
        let cfg = LogConfig {
            flush_messages: 5,
            flush_ms: 100,
            ..LogConfig::default()
        };
        let log = PartitionLog::open(dir, cfg, 0).await.expect("open");
        assert!(!log.needs_flush(1_000_000));
        log.append(&batch(2, 1, 1), LeaderEpoch(0), 1_000)
            .await
            .expect("append");
        assert!(!log.needs_flush(1_050));
        assert!(
            log.needs_flush(1_100),
            "oldest unflushed append is 100 ms old"
        );
        log.append(&batch(3, 1, 1), LeaderEpoch(0), 1_010)
            .await
            .expect("append");
        assert!(log.needs_flush(1_010), "5 unflushed messages");
        log.flush().await.expect("flush");
        assert!(!log.needs_flush(5_000));
    });
}

#[test]
fn listener_fires_when_high_watermark_advances() {
    run(|dir| async move {
        let log = PartitionLog::open(dir, LogConfig::default(), 0)
            .await
            .expect("open");
        let listener = log.listen();
        let waiter = glommio::spawn_local(listener);
        log.append(&batch(1, 1, 1), LeaderEpoch(0), 0)
            .await
            .expect("append");
        waiter.await;
        assert_eq!(log.high_watermark(), Offset(1));
        log.set_high_watermark(Offset(1));
    });
}

#[test]
fn reads_stop_at_the_high_watermark() {
    run(|dir| async move {
        // Small segments: the third batch goes to a second segment.
        let log = PartitionLog::open(dir, config(500, 1), 0)
            .await
            .expect("open");
        let b0 = batch(1, 150, 10);
        let b1 = batch(3, 40, 20);
        let b2 = batch(1, 250, 30);
        let i0 = log.append(&b0, LeaderEpoch(0), 0).await.expect("append");
        let i1 = log
            .append_with(&b1, LeaderEpoch(0), 0, false)
            .await
            .expect("append");
        let i2 = log
            .append_with(&b2, LeaderEpoch(0), 0, false)
            .await
            .expect("append");
        assert_eq!(log.segment_count(), 2);
        assert_eq!(
            (log.high_watermark(), log.log_end_offset()),
            (Offset(1), Offset(5))
        );
        let s0 = stamped(&b0, i0.base_offset.0, 0);
        let s1 = stamped(&b1, i1.base_offset.0, 0);
        let s2 = stamped(&b2, i2.base_offset.0, 0);

        assert_eq!(
            read_bytes(&log, 0, 1 << 20, true).await,
            Some((0, s0.clone()))
        );
        for offset in 1..=5 {
            assert!(
                read_bytes(&log, offset, 1 << 20, true).await.is_none(),
                "offset {offset}"
            );
        }
        assert_eq!(log.offset_for_timestamp(15).await.expect("lookup"), None);

        // A high watermark inside a batch does not expose that batch.
        log.set_high_watermark(Offset(2));
        assert!(read_bytes(&log, 1, 1 << 20, true).await.is_none());
        assert_eq!(
            read_bytes(&log, 0, 1 << 20, true).await,
            Some((0, s0.clone()))
        );

        let listener = log.listen();
        let waiter = glommio::spawn_local(listener);
        log.set_high_watermark(Offset(4));
        waiter.await;
        assert_eq!(
            read_bytes(&log, 0, 1 << 20, true).await,
            Some((0, [s0.clone(), s1.clone()].concat()))
        );
        assert!(read_bytes(&log, 4, 1 << 20, true).await.is_none());
        assert_eq!(
            log.offset_for_timestamp(15).await.expect("lookup"),
            Some((Offset(1), 20))
        );
        assert_eq!(log.offset_for_timestamp(25).await.expect("lookup"), None);

        log.set_high_watermark(Offset(5));
        assert_eq!(read_bytes(&log, 4, 1 << 20, true).await, Some((4, s2)));
        assert_eq!(
            log.offset_for_timestamp(25).await.expect("lookup"),
            Some((Offset(4), 30))
        );
    });
}

#[test]
fn rejects_malformed_batches_without_consuming_offsets() {
    run(|dir| async move {
        let log = PartitionLog::open(dir, LogConfig::default(), 0)
            .await
            .expect("open");
        let good = batch(1, 5, 1);
        let mut two = good.clone();
        two.extend_from_slice(&good);
        assert!(matches!(
            log.append(&two, LeaderEpoch(0), 0).await,
            Err(StorageError::InvalidBatch(_))
        ));
        assert!(matches!(
            log.append(&good[..40], LeaderEpoch(0), 0).await,
            Err(StorageError::InvalidBatch(_))
        ));
        assert_eq!(log.log_end_offset(), Offset(0));
        assert_eq!(
            log.append(&good, LeaderEpoch(0), 0)
                .await
                .expect("append")
                .base_offset,
            Offset(0)
        );
    });
}

#[test]
fn delete_removes_the_directory() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), LogConfig::default(), 0)
            .await
            .expect("open");
        log.append(&batch(1, 5, 1), LeaderEpoch(0), 0)
            .await
            .expect("append");
        let slice = log
            .read(Offset(0), 1000, true)
            .await
            .expect("read")
            .expect("data");
        log.delete().await.expect("delete");
        assert!(!dir.exists());
        // A slice handed out earlier stays readable.
        assert_eq!(
            slice.read_blocking().expect("pread").len(),
            slice.len as usize
        );
        assert!(matches!(
            log.flush().await,
            Err(StorageError::Closed { .. })
        ));
    });
}

#[test]
fn writeback_is_started_every_few_mebibytes_of_appends() {
    run(|dir| async move {
        let log = PartitionLog::open(dir, LogConfig::default(), 0)
            .await
            .expect("open");
        // 64 records of 16 KiB: about 1 MiB per batch.
        let b = batch(64, 16 * 1024, 1);
        let mut appended = 0u64;
        let mut kicks = 0;
        let mut last_from = 0;
        for _ in 0..20 {
            log.append(&b, LeaderEpoch(0), 100).await.expect("append");
            appended += b.len() as u64;
            let active = log.active().expect("active");
            let from = active.writeback_from();
            assert!(from <= active.size());
            assert!(
                active.size() - from < crate::limits::WRITEBACK_KICK_BYTES,
                "unkicked bytes stay under the threshold"
            );
            if from != last_from {
                kicks += 1;
                assert_eq!(
                    from,
                    active.size(),
                    "a kick covers everything appended so far"
                );
                last_from = from;
            }
        }
        assert_eq!(appended / crate::limits::WRITEBACK_KICK_BYTES, kicks);
        assert_eq!(read_all(&log, 0).await.len() as u64, appended);
        log.close().await.expect("close");
    });
}
