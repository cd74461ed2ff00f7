//! Criterion microbenchmarks of Strom's hot paths. Run them all with `cargo bench -p strom-perf`
//! (or one file with `--bench NAME`); `cargo bench -p strom-perf -- --test` runs each once.
//!
//! This file, per-batch CPU work in the storage crate:
//! - `crc32c/{1024,65536,1048576}`: CRC-32C over that many bytes;
//! - `validate_batch/records_x_bytes/*`: the produce-path batch check (`validate_client_batch`:
//!   header, CRC and the client-only rules);
//! - `batch_header/view_info`, `assign_offset_and_epoch`, `set_log_append_time/64x1KiB`: the
//!   header view and the stamping `PartitionLog::append` does on each batch;
//! - `segment_index/lookup_{offset,position,time}/{1000,100000}`: index lookups by offset,
//!   file position and timestamp in a segment index of that many entries.
//!
//! Other files:
//! - `codec.rs`: `decode/request_header_v2`, `decode/produce_v9_64x1KiB`,
//!   `encode/metadata_v12/{1,100}_topics`, `encode/fetch_v12_chunks`,
//!   `encode/fetch_v12_generated_64x1KiB`;
//! - `segment_append.rs`: `segment_append/64x1KiB`, appends to a real log on glommio;
//! - `cross_shard.rs`: `cross_shard/round_trip` and `cross_shard/pipelined_64`, request/reply
//!   between two pinned shard executors over the broker's mesh mechanism.

#![allow(
    missing_docs,
    reason = "criterion_group! defines the group as a `pub fn` that cannot carry a doc comment"
)]

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use strom_storage::testing::{build_batch, KeyValue};
use strom_storage::{
    assign_offset_and_epoch, set_log_append_time, BatchHeader, OffsetEntry, SegmentIndex, TimeEntry,
};

/// A valid uncompressed batch of `records` records with `value_bytes`-byte values.
fn batch(records: usize, value_bytes: usize) -> Vec<u8> {
    let value = vec![b'v'; value_bytes];
    let recs: Vec<KeyValue<'_>> = (0..records).map(|_| (None, Some(&value[..]))).collect();
    build_batch(1_700_000_000_000, &recs)
}

/// CRC-32C (the batch checksum) over buffers of 1 KiB, 64 KiB and 1 MiB.
fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for size in [1024usize, 64 * 1024, 1024 * 1024] {
        let data = vec![7u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, d| {
            b.iter(|| crc32c::crc32c(d));
        });
    }
    g.finish();
}

/// `validate_client_batch` (header sanity, CRC-32C, the client-only rules) on batches of several
/// shapes.
fn validate(c: &mut Criterion) {
    let mut g = c.benchmark_group("validate_batch");
    for (records, value) in [(1usize, 100usize), (64, 1024), (16, 64 * 1024)] {
        let b = batch(records, value);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_with_input(
            BenchmarkId::new("records_x_bytes", format!("{records}x{value}")),
            &b,
            |bench, b| bench.iter(|| strom_storage::validate_client_batch(b).is_ok()),
        );
    }
    g.finish();
}

/// The header work of an append: `view_info` parses the 61-byte header (`BatchHeader::view`
/// and `info`); `assign_offset_and_epoch` writes baseOffset and partitionLeaderEpoch in place
/// through `BatchHeader::view_mut` (no CRC); `set_log_append_time` stamps a LogAppendTime log's
/// batch, which recomputes the CRC over the whole 64 x 1 KiB batch.
fn header(c: &mut Criterion) {
    let original = batch(64, 1024);
    let mut g = c.benchmark_group("batch_header");
    g.bench_function("view_info", |b| {
        b.iter(|| BatchHeader::view(black_box(&original)).map(BatchHeader::info));
    });
    let mut stamped = original.clone();
    let mut offset = 0i64;
    g.bench_function("assign_offset_and_epoch", |b| {
        b.iter(|| {
            offset += 64;
            assign_offset_and_epoch(black_box(&mut stamped), offset, 7);
        });
    });
    g.throughput(Throughput::Bytes(original.len() as u64));
    let mut now_ms = 1_700_000_000_000i64;
    g.bench_function("set_log_append_time/64x1KiB", |b| {
        b.iter(|| {
            now_ms += 1;
            set_log_append_time(black_box(&mut stamped), now_ms);
        });
    });
    g.finish();
}

// The index built by `index_of` has one entry per batch: 64 records in 4 KiB (the default
// `index.interval.bytes`), one batch every 10 ms.
/// Records between consecutive index entries.
const RECORDS_PER_ENTRY: u32 = 64;
/// Log bytes between consecutive offset index entries.
const BYTES_PER_ENTRY: u32 = 4096;
/// Milliseconds between consecutive time index entries.
const MS_PER_ENTRY: i64 = 10;
/// Timestamp of the first time index entry.
const FIRST_TIMESTAMP: i64 = 1_700_000_000_000;

/// A segment index with `entries` offset and time entries, one per batch.
fn index_of(entries: u32) -> SegmentIndex {
    let offsets = (0..entries)
        .map(|i| OffsetEntry {
            rel_offset: i * RECORDS_PER_ENTRY,
            position: i * BYTES_PER_ENTRY,
        })
        .collect();
    let times = (0..entries)
        .map(|i| TimeEntry {
            timestamp: FIRST_TIMESTAMP + i64::from(i) * MS_PER_ENTRY,
            rel_offset: i * RECORDS_PER_ENTRY,
        })
        .collect();
    SegmentIndex::from_entries(offsets, times)
}

/// 1024 pseudo-random keys below `bound` (xorshift64), so lookups do not follow one path.
fn keys(bound: u64) -> Vec<u64> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % bound
        })
        .collect()
}

/// Benchmarks `lookup` over `keys`, one key per iteration.
fn lookups<T>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    entries: u32,
    keys: &[u64],
    lookup: impl Fn(u64) -> T,
) {
    g.bench_function(BenchmarkId::new(name, entries), |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % keys.len();
            lookup(keys[i])
        });
    });
}

/// `SegmentIndex` lookups, the binary searches behind every fetch and ListOffsets:
/// `lookup_offset` (the entry at or before an offset), `lookup_position` (at or before a file
/// position) and `lookup_time` (the last entry older than a timestamp), on indexes of 1k and
/// 100k entries with random keys.
fn index_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("segment_index");
    for entries in [1_000u32, 100_000] {
        let index = index_of(entries);
        let offsets = keys(u64::from(entries * RECORDS_PER_ENTRY));
        let positions = keys(u64::from(entries * BYTES_PER_ENTRY));
        let times = keys(u64::from(entries) * MS_PER_ENTRY as u64);
        lookups(&mut g, "lookup_offset", entries, &offsets, |k| {
            index.lookup_offset(k as u32)
        });
        lookups(&mut g, "lookup_position", entries, &positions, |k| {
            index.lookup_position(k)
        });
        lookups(&mut g, "lookup_time", entries, &times, |k| {
            index.lookup_time(FIRST_TIMESTAMP + k as i64)
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = crc, validate, header, index_lookup
}
criterion_main!(benches);
