//! Unit tests of the cleaner: newest value per key, tombstones and delete.retention.ms,
//! compressed batches, a crash at every step of the swap, idempotent producers, keyless records.

use std::collections::BTreeMap;

use super::*;
use crate::batch::{validate_batch, BatchError};
use crate::config::CleanupPolicy;
use crate::test_support::{run, segment_logs};
use crate::testing::{build_batch_with, BatchOptions};

/// (offset, key, value) of every record the log serves from `from`.
type Rows = Vec<(i64, Vec<u8>, Option<Vec<u8>>)>;

fn compacted() -> LogConfig {
    LogConfig {
        segment_bytes: 600,
        index_interval_bytes: 200,
        cleanup: CleanupPolicy {
            delete: false,
            compact: true,
        },
        min_cleanable_dirty_ratio: 0.0,
        delete_retention_ms: 1_000,
        ..LogConfig::default()
    }
}

/// A batch of keyed records at `ts`, compressed with `codec`.
fn keyed(
    records: &[(&[u8], Option<&[u8]>)],
    ts: i64,
    codec: u8,
    producer: Option<(i64, i16, i32)>,
) -> Vec<u8> {
    let parts: Vec<crate::testing::TestRecord<'_>> =
        records.iter().map(|(k, v)| (Some(*k), *v, ts)).collect();
    let (producer_id, producer_epoch, base_sequence) = producer.unwrap_or((-1, -1, -1));
    let options = BatchOptions {
        producer_id,
        producer_epoch,
        base_sequence,
        ..BatchOptions::default()
    };
    let mut batch = build_batch_with(&options, &parts);
    if codec != 0 {
        let packed = crate::codec::compress(codec, &batch[BATCH_HEADER_BYTES..]).expect("compress");
        batch.truncate(BATCH_HEADER_BYTES);
        batch.extend_from_slice(&packed);
        let attributes = i16::from(codec);
        BatchHeader::view_mut(&mut batch)
            .expect("header")
            .attributes
            .set(attributes);
        let count = records.len() as i32;
        crate::batch::reseal(&mut batch, count);
    }
    batch
}

/// Every record served from `from`, with the batches' codecs.
async fn rows(log: &PartitionLog, from: i64) -> (Rows, Vec<u8>) {
    let mut out = Vec::new();
    let mut codecs = Vec::new();
    let mut offset = from;
    while let Some(slice) = log.read(Offset(offset), 1 << 20, true).await.expect("read") {
        let bytes = slice.read_blocking().expect("pread");
        let mut pos = 0;
        while pos < bytes.len() {
            let header = BatchHeader::view(&bytes[pos..]).expect("header").info();
            let one = &bytes[pos..pos + header.total_bytes() as usize];
            validate_batch(one).expect("a served batch is valid");
            codecs.push(header.compression_codec());
            let (records, spans) = cleaner::batch_records(one, &header).expect("records");
            for span in spans {
                let (k0, k1) = span.key.expect("keyed");
                let rec = &records[span.start..span.end];
                let value = (!span.tombstone).then(|| {
                    // The value is the tail of the record before its header count (0 headers).
                    let mut cursor = k1 - span.start;
                    let len = crate::records::get_varint(rec, &mut cursor).expect("value length")
                        as usize;
                    rec[cursor..cursor + len].to_vec()
                });
                let o = header.base_offset + span.offset_delta;
                if o >= from {
                    out.push((o, records[k0..k1].to_vec(), value));
                }
            }
            pos += header.total_bytes() as usize;
            offset = header.last_offset() + 1;
        }
    }
    let offsets: Vec<i64> = out.iter().map(|r| r.0).collect();
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets increase: {offsets:?}"
    );
    (out, codecs)
}

/// What compaction up to `end` must leave of `all`: below `end` the newest record of each key
/// (tombstones only if not older than `horizon`), from `end` on everything.
fn expected(all: &Rows, end: i64, horizon: i64, ts_of: &dyn Fn(i64) -> i64) -> Rows {
    let mut newest: BTreeMap<&[u8], i64> = BTreeMap::new();
    for (o, k, _) in all.iter().filter(|r| r.0 < end) {
        newest.insert(k, *o);
    }
    all.iter()
        .filter(|(o, k, v)| {
            *o >= end || (newest[&k[..]] == *o && (v.is_some() || ts_of(*o) >= horizon))
        })
        .cloned()
        .collect()
}

/// Appends `n` updates over `keys` keys (every 7th a tombstone), one record per batch, at
/// timestamp 1000 + offset.
async fn updates(log: &PartitionLog, n: usize, keys: usize, codec: u8) {
    for i in 0..n {
        let key = format!("key-{}", i % keys);
        let value = format!("value-{i}-{}", "v".repeat(i % 5));
        let v = (i % 7 != 6).then_some(value.as_bytes());
        let o = log.log_end_offset().0;
        let b = keyed(&[(key.as_bytes(), v)], 1_000 + o, codec, None);
        log.append(&b, LeaderEpoch(0), 1_000 + o)
            .await
            .expect("append");
    }
}

#[test]
fn compaction_keeps_the_newest_record_of_each_key() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), compacted(), 0)
            .await
            .expect("open");
        updates(&log, 120, 6, 0).await;
        let (before, _) = rows(&log, 0).await;
        let size_before = log.size_bytes();
        // Tombstones stay: their timestamps are within delete.retention.ms of now.
        let now = 1_500;
        let report = log.clean(now).await.expect("clean").expect("a pass ran");
        let end = report.first_dirty;
        assert!(
            end > 100 && end <= log.log_end_offset().0,
            "cleaned up to {end}"
        );
        assert!(report.records_removed > 0 && report.bytes_after < report.bytes_before);
        assert_eq!(
            log.size_bytes(),
            size_before - report.bytes_before + report.bytes_after
        );
        let want = expected(&before, end, now - 1_000, &|o| 1_000 + o);
        assert_eq!(rows(&log, 0).await.0, want);
        assert!(
            log.clean(now).await.expect("clean").is_none(),
            "nothing dirty, nothing due"
        );
        assert_eq!(log.first_dirty_offset().0, end);

        // More updates, a second pass merges and dedupes again; reading from any offset works.
        updates(&log, 60, 6, 0).await;
        let (before, _) = rows(&log, 0).await;
        let files_before = segment_logs(&dir).len();
        let report = log.clean(now).await.expect("clean").expect("a pass ran");
        assert!(
            segment_logs(&dir).len() < files_before,
            "compacted segments were merged"
        );
        let want = expected(&before, report.first_dirty, now - 1_000, &|o| 1_000 + o);
        assert_eq!(rows(&log, 0).await.0, want);
        for (o, _, _) in want.iter().take(10) {
            assert_eq!(rows(&log, *o).await.0.first().map(|r| r.0), Some(*o));
        }
        // Offsets in the gaps compaction left are served from the next record on.
        let gap = (0..report.first_dirty)
            .find(|o| !want.iter().any(|r| r.0 == *o))
            .expect("a gap");
        let next = want.iter().find(|r| r.0 > gap).map(|r| r.0);
        assert_eq!(rows(&log, gap).await.0.first().map(|r| r.0), next);
        log.close().await.expect("close");

        let log = PartitionLog::open(dir, compacted(), 0)
            .await
            .expect("reopen");
        assert_eq!(
            rows(&log, 0).await.0,
            want,
            "the compacted log reopens as it was"
        );
        assert_eq!(log.first_dirty_offset().0, report.first_dirty);
        log.close().await.expect("close");
    });
}

#[test]
fn tombstones_go_after_delete_retention_ms() {
    run(|dir| async move {
        let log = PartitionLog::open(dir, compacted(), 0).await.expect("open");
        updates(&log, 90, 5, 0).await;
        let (before, _) = rows(&log, 0).await;
        let report = log.clean(1_100).await.expect("clean").expect("pass");
        let end = report.first_dirty;
        let kept = rows(&log, 0).await.0;
        assert!(
            kept.iter().any(|r| r.0 < end && r.2.is_none()),
            "recent tombstones are kept"
        );
        // Nothing dirty, but the kept tombstones fall due: a pass runs and removes them.
        assert!(
            log.clean(1_500).await.expect("clean").is_none(),
            "not due yet"
        );
        let late = 1_000 + end + 1_000;
        log.clean(late)
            .await
            .expect("clean")
            .expect("tombstones due");
        let after = rows(&log, 0).await.0;
        assert_eq!(after, expected(&before, end, late - 1_000, &|o| 1_000 + o));
        assert!(
            !after.iter().any(|r| r.0 < end && r.2.is_none()),
            "no tombstone left below {end}"
        );
        log.close().await.expect("close");
    });
}

#[test]
fn compressed_batches_are_compacted_with_their_codec() {
    for codec in 1..=4u8 {
        run(move |dir| async move {
            let log = PartitionLog::open(dir, compacted(), 0).await.expect("open");
            // Batches of four records over three keys: each batch loses some records.
            for i in 0..40 {
                let vals: Vec<String> = (0..4).map(|j| format!("v{i}-{j}")).collect();
                let keys = [
                    b"a".as_slice(),
                    b"b".as_slice(),
                    b"c".as_slice(),
                    b"a".as_slice(),
                ];
                let recs: Vec<(&[u8], Option<&[u8]>)> = keys
                    .iter()
                    .zip(&vals)
                    .map(|(k, v)| (*k, Some(v.as_bytes())))
                    .collect();
                let o = log.log_end_offset().0;
                log.append(&keyed(&recs, 1_000 + o, codec, None), LeaderEpoch(0), 1_000)
                    .await
                    .expect("append");
            }
            let (before, _) = rows(&log, 0).await;
            let report = log.clean(2_000).await.expect("clean").expect("pass");
            let (after, codecs) = rows(&log, 0).await;
            assert_eq!(
                after,
                expected(&before, report.first_dirty, 0, &|_| 0),
                "codec {codec}"
            );
            assert!(
                codecs.iter().all(|c| *c == codec),
                "codec {codec} kept: {codecs:?}"
            );
            log.close().await.expect("close");
        });
    }
}

#[test]
fn a_crash_at_any_step_of_the_swap_leaves_old_or_new_segments() {
    for step in CleanerStep::ALL {
        run(move |dir| async move {
            let log = PartitionLog::open(dir.clone(), compacted(), 0)
                .await
                .expect("open");
            updates(&log, 100, 4, 0).await;
            let (before, _) = rows(&log, 0).await;
            let end = log.log_end_offset().0;
            log.set_cleaner_fault(Some(CleanerFault::Fail(step)));
            let err = log.clean(1_100).await.expect_err("the hook stops the pass");
            assert!(matches!(err, StorageError::InjectedFault { .. }), "{err}");
            drop(log); // as if the process died here

            let log = PartitionLog::open(dir.clone(), compacted(), 0)
                .await
                .expect("reopen");
            let names: Vec<String> = std::fs::read_dir(&dir)
                .expect("list")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                !names
                    .iter()
                    .any(|n| n.ends_with(".cleaned") || n == "clean-swap"),
                "{step:?}: {names:?}"
            );
            let (now, _) = rows(&log, 0).await;
            assert_eq!(log.log_end_offset().0, end);
            // Either untouched, or the first group swapped in: every record of the old log is
            // there unless a newer record of its key is.
            if step == CleanerStep::CleanedWritten {
                assert_eq!(
                    now, before,
                    "{step:?}: an uncommitted swap leaves the old segments"
                );
            } else {
                assert_ne!(
                    now, before,
                    "{step:?}: a committed swap is finished on open"
                );
            }
            for (o, k, v) in &before {
                let newest = before.iter().rev().find(|r| &r.1 == k).expect("key").0;
                if newest == *o {
                    assert!(
                        now.contains(&(*o, k.clone(), v.clone())),
                        "{step:?}: lost the newest record of {k:?}"
                    );
                }
            }
            let report = log.clean(1_100).await.expect("clean").expect("pass");
            assert_eq!(
                rows(&log, 0).await.0,
                expected(&before, report.first_dirty, 100, &|o| 1_000 + o)
            );
            log.close().await.expect("close");
        });
    }
}

#[test]
fn idempotent_producers_survive_compaction_and_reopen() {
    run(|dir| async move {
        let log = PartitionLog::open(dir.clone(), compacted(), 0)
            .await
            .expect("open");
        let (pid, epoch) = (7, 0i16);
        let mut sequence = 0;
        let mut last = Vec::new();
        for i in 0..60 {
            let value = format!("value-{i}");
            let key = format!("k{}", i % 3);
            last = keyed(
                &[(key.as_bytes(), Some(value.as_bytes()))],
                1_000,
                0,
                Some((pid, epoch, sequence)),
            );
            log.append(&last, LeaderEpoch(0), 1_000)
                .await
                .expect("append");
            sequence += 1;
        }
        log.clean(1_100).await.expect("clean").expect("pass");
        log.close().await.expect("close");
        let log = PartitionLog::open(dir, compacted(), 0)
            .await
            .expect("reopen");
        let retry = log
            .append(&last, LeaderEpoch(0), 1_000)
            .await
            .expect("retry");
        assert!(retry.duplicate, "the retried last batch is recognised");
        assert_eq!(retry.base_offset.0, 59);
        let next = keyed(
            &[(&b"k0"[..], Some(&b"after"[..]))],
            1_000,
            0,
            Some((pid, epoch, sequence)),
        );
        let info = log
            .append(&next, LeaderEpoch(0), 1_000)
            .await
            .expect("next sequence");
        assert_eq!((info.base_offset.0, info.duplicate), (60, false));
        let gap = keyed(
            &[(&b"k0"[..], Some(&b"gap"[..]))],
            1_000,
            0,
            Some((pid, epoch, sequence + 5)),
        );
        assert!(
            log.append(&gap, LeaderEpoch(0), 1_000).await.is_err(),
            "a sequence gap is still refused"
        );
        log.close().await.expect("close");
    });
}

#[test]
fn compacted_logs_refuse_keyless_records() {
    run(|dir| async move {
        let log = PartitionLog::open(dir, compacted(), 0).await.expect("open");
        let keyless = build_batch_with(
            &BatchOptions::default(),
            &[
                (Some(&b"k"[..]), Some(&b"v"[..]), 1),
                (None, Some(&b"v"[..]), 1),
            ],
        );
        let err = log
            .append(&keyless, LeaderEpoch(0), 1)
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, StorageError::InvalidBatch(BatchError::KeylessRecords { indexes }) if indexes == &[1]),
            "{err}"
        );
        assert_eq!(log.log_end_offset().0, 0, "nothing stored");
        log.update_config(LogConfig {
            cleanup: CleanupPolicy::default(),
            ..compacted()
        });
        log.append(&keyless, LeaderEpoch(0), 1)
            .await
            .expect("delete policy takes keyless records");
        log.close().await.expect("close");
    });
}

#[test]
fn min_compaction_lag_holds_back_recent_segments() {
    run(|dir| async move {
        let config = LogConfig {
            min_compaction_lag_ms: 500,
            ..compacted()
        };
        let log = PartitionLog::open(dir, config, 0).await.expect("open");
        // Timestamps 1000 + offset, offsets 0..80.
        updates(&log, 80, 4, 0).await;
        assert!(
            log.clean(1_000).await.expect("clean").is_none(),
            "every closed segment is younger than the lag"
        );
        // At 1530 the segments whose newest record is at or before 1030 qualify, no later ones.
        let report = log
            .clean(1_530)
            .await
            .expect("clean")
            .expect("the old segments are due");
        assert!(
            report.first_dirty <= 31,
            "cleaned up to {}",
            report.first_dirty
        );
        assert!(report.first_dirty > 0);
        let report = log
            .clean(10_000)
            .await
            .expect("clean")
            .expect("the rest is due later");
        assert!(report.first_dirty > 31);
        log.close().await.expect("close");
    });
}

#[test]
fn max_compaction_lag_forces_a_pass_and_rolls_the_active_segment() {
    run(|dir| async move {
        let log = PartitionLog::open(dir, compacted(), 0).await.expect("open");
        updates(&log, 80, 4, 0).await;
        log.clean(1_100).await.expect("clean").expect("first pass");
        // A little new dirty data: far below a dirty ratio of 0.99.
        updates(&log, 12, 4, 0).await;
        let lazy = LogConfig {
            min_cleanable_dirty_ratio: 0.99,
            ..compacted()
        };
        log.update_config(lazy.clone());
        assert!(
            log.clean(1_200).await.expect("clean").is_none(),
            "below the dirty ratio"
        );
        // With max.compaction.lag.ms the dirty records (timestamps about 1080-1092) are overdue.
        log.update_config(LogConfig {
            max_compaction_lag_ms: 50,
            ..lazy
        });
        assert!(
            log.clean(1_200).await.expect("clean").is_some(),
            "overdue records force a pass"
        );
        // The active segment rolls once it is older than the lag, so its records become cleanable.
        let segments = log.segment_count();
        let b = keyed(&[(&b"key-0"[..], Some(&b"late"[..]))], 5_000, 0, None);
        log.append(&b, LeaderEpoch(0), 5_000).await.expect("append");
        assert_eq!(
            log.segment_count(),
            segments + 1,
            "rolled for max.compaction.lag.ms"
        );
        log.close().await.expect("close");
    });
}
