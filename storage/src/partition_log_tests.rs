//! Unit tests of `PartitionLog`: append/read, offsets, rolls, indexes, timestamps, flush,
//! reopen and recovery.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::*;
use crate::batch::{validate_batch, BatchHeader};
use crate::testing::{build_batch, build_batch_with, build_batch_with_timestamps, BatchOptions};

/// Runs `test` on a fresh glommio executor with a partition directory inside a temp dir.
fn run<F, Fut>(test: F)
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("topic-0");
    glommio::LocalExecutorBuilder::default()
        .spawn(move || test(dir))
        .expect("spawn executor")
        .join()
        .expect("test panicked");
    drop(tmp);
}

fn config(segment_bytes: u64, index_interval_bytes: u32) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes,
        ..LogConfig::default()
    }
}

/// A batch of `records` records with `value_len`-byte values, timestamps `ts`.
fn batch(records: usize, value_len: usize, ts: i64) -> Vec<u8> {
    let value = vec![b'x'; value_len];
    let recs: Vec<crate::testing::KeyValue<'_>> =
        (0..records).map(|_| (None, Some(&value[..]))).collect();
    build_batch(ts, &recs)
}

/// What a batch looks like once the log assigned `base` and `epoch`.
fn stamped(batch: &[u8], base: i64, epoch: i32) -> Vec<u8> {
    let mut out = batch.to_vec();
    crate::batch::assign_offset_and_epoch(&mut out, base, epoch);
    out
}

async fn read_bytes(
    log: &PartitionLog,
    offset: i64,
    max_bytes: u32,
    min_one: bool,
) -> Option<(i64, Vec<u8>)> {
    let slice = log
        .read(Offset(offset), max_bytes, min_one)
        .await
        .expect("read")?;
    let bytes = slice.read_blocking().expect("pread");
    assert_eq!(bytes.len(), slice.len as usize);
    Some((slice.first_offset.0, bytes))
}

/// Reads the whole log from `from` by following returned batches.
async fn read_all(log: &PartitionLog, from: i64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut offset = from;
    while let Some((_, bytes)) = read_bytes(log, offset, 1 << 20, true).await {
        let mut pos = 0;
        while pos < bytes.len() {
            let header = BatchHeader::view(&bytes[pos..]).expect("header").info();
            validate_batch(&bytes[pos..pos + header.total_bytes() as usize])
                .expect("served batch is valid");
            pos += header.total_bytes() as usize;
            offset = header.last_offset() + 1;
        }
        out.extend_from_slice(&bytes);
    }
    assert_eq!(offset, log.high_watermark().0.max(from));
    out
}

/// Appends `batches`, returning the bytes expected on disk.
async fn append_all(log: &PartitionLog, batches: &[Vec<u8>], epoch: i32) -> Vec<u8> {
    let mut expected = Vec::new();
    for b in batches {
        let info = log
            .append(b, LeaderEpoch(epoch), 1_000)
            .await
            .expect("append");
        expected.extend_from_slice(&stamped(b, info.base_offset.0, epoch));
    }
    expected
}

fn segment_logs(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

fn active_log(dir: &Path) -> PathBuf {
    segment_logs(dir).pop().expect("a segment")
}

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
