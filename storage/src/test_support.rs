//! Helpers shared by the unit tests of the log: an executor runner, batch builders and readers.

use std::future::Future;
use std::path::PathBuf;

use crate::batch::{validate_batch, BatchHeader};
use crate::config::LogConfig;
use crate::partition_log::PartitionLog;
use crate::testing::build_batch;
use crate::types::{LeaderEpoch, Offset};

/// Runs `test` on a fresh glommio executor with a partition directory inside a temp dir.
pub(crate) fn run<F, Fut>(test: F)
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("topic-0");
    crate::testing::run_local(move || test(dir));
    drop(tmp);
}

pub(crate) fn config(segment_bytes: u64, index_interval_bytes: u32) -> LogConfig {
    LogConfig {
        segment_bytes,
        index_interval_bytes,
        ..LogConfig::default()
    }
}

/// A batch of `records` records with `value_len`-byte values, timestamps `ts`.
pub(crate) fn batch(records: usize, value_len: usize, ts: i64) -> Vec<u8> {
    let value = vec![b'x'; value_len];
    let recs: Vec<crate::testing::KeyValue<'_>> =
        (0..records).map(|_| (None, Some(&value[..]))).collect();
    build_batch(ts, &recs)
}

/// What a batch looks like once the log assigned `base` and `epoch`.
pub(crate) fn stamped(batch: &[u8], base: i64, epoch: i32) -> Vec<u8> {
    let mut out = batch.to_vec();
    crate::batch::assign_offset_and_epoch(&mut out, base, epoch);
    out
}

pub(crate) async fn read_bytes(
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
pub(crate) async fn read_all(log: &PartitionLog, from: i64) -> Vec<u8> {
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
pub(crate) async fn append_all(log: &PartitionLog, batches: &[Vec<u8>], epoch: i32) -> Vec<u8> {
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

pub(crate) use crate::testing::{active_log, segment_logs};
