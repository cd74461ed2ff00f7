//! Microbenchmark of the storage write path: `PartitionLog::append` of a 64 x 1 KiB batch to a
//! real log in a temp dir, on a glommio executor, without fsync (the topic default,
//! `flush.on.ack` off: appends land in the page cache and are flushed later by policy).
//! Run with `cargo bench -p strom-perf --bench segment_append`.

#![allow(
    missing_docs,
    reason = "criterion_group! defines the group as a `pub fn` that cannot carry a doc comment"
)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glommio::Placement;
use strom_storage::testing::{build_batch, KeyValue};
use strom_storage::{LeaderEpoch, LogConfig, PartitionLog};

use common::Worker;

/// Wall clock handed to the log (fixed, so no time-based roll happens).
const NOW_MS: i64 = 1_700_000_000_000;

/// Appends `iters` copies of `batch` to a fresh log in `dir` and returns the time the appends
/// took; opening and deleting the log are not timed.
async fn timed_appends(dir: PathBuf, batch: Arc<[u8]>, iters: u64) -> Duration {
    // Default config: 1 GiB segments (no roll within a sample), flush never, CreateTime.
    let log = PartitionLog::open(dir, LogConfig::default(), NOW_MS)
        .await
        .expect("open the log");
    let start = Instant::now();
    for _ in 0..iters {
        log.append(&batch, LeaderEpoch(1), NOW_MS)
            .await
            .expect("append");
    }
    let elapsed = start.elapsed();
    log.delete().await.expect("delete the log");
    elapsed
}

/// Time and bytes per second of appending one batch of 64 records with 1 KiB values: offset
/// assignment, the segment write through io_uring and the index bookkeeping. Each sample
/// appends to a fresh log, so the files never grow past one sample's worth.
fn append(c: &mut Criterion) {
    let value = vec![b'v'; 1024];
    let records: Vec<KeyValue<'_>> = (0..64).map(|_| (None, Some(&value[..]))).collect();
    let batch: Arc<[u8]> = build_batch(NOW_MS, &records).into();
    let root = tempfile::tempdir().expect("temp dir");
    let worker = Worker::spawn(Placement::Unbound, || async {});
    let mut sample = 0u64;
    let mut g = c.benchmark_group("segment_append");
    g.throughput(Throughput::Bytes(batch.len() as u64));
    g.bench_function("64x1KiB", |b| {
        b.iter_custom(|iters| {
            sample += 1;
            let dir = root.path().join(format!("bench-{sample}"));
            let batch = Arc::clone(&batch);
            worker.run(move |()| timed_appends(dir, batch, iters))
        });
    });
    g.finish();
    drop(worker);
    root.close().expect("remove the temp dir");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = append
}
criterion_main!(benches);
