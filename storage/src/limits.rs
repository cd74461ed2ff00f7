//! Bounds of the storage layer, each with the reason for its value.

/// Size of a record batch v2 header, the fixed part before the records.
pub const BATCH_HEADER_BYTES: usize = 61;

/// Bytes of a batch header counted outside `batchLength` (baseOffset and batchLength itself).
pub const BATCH_LENGTH_OVERHEAD_BYTES: usize = 12;

/// Largest segment file the log rolls at. Positions in the offset index are `u32`, and Kafka
/// itself caps `segment.bytes` at `i32::MAX`.
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;

/// Smallest `segment.bytes` honoured: below one batch header every segment holds one batch anyway.
pub const SEGMENT_BYTES_MIN: u64 = BATCH_HEADER_BYTES as u64;

/// Largest single batch `append` accepts. Kafka's `message.max.bytes` is far below this; the bound
/// exists so that a segment (at most `SEGMENT_BYTES_MAX` before its last batch) plus one batch still
/// has `u32` byte positions.
pub const BATCH_BYTES_MAX: u64 = 1 << 30;

/// Offsets in index entries are stored relative to the segment base as `u32`; a batch whose last
/// offset would not fit forces a roll (Kafka does the same).
pub const RELATIVE_OFFSET_MAX: i64 = u32::MAX as i64;

/// Smallest `index.interval.bytes` used; 0 would mean "an entry per batch", which 1 already gives.
pub const INDEX_INTERVAL_BYTES_MIN: u32 = 1;

/// Largest `index.interval.bytes` used, so that the read path's lookup window stays bounded.
pub const INDEX_INTERVAL_BYTES_MAX: u32 = 16 << 20;

/// Bytes of one offset index entry: relative offset u32 + position u32.
pub const OFFSET_INDEX_ENTRY_BYTES: usize = 8;

/// Bytes of one time index entry: timestamp i64 + relative offset u32.
pub const TIME_INDEX_ENTRY_BYTES: usize = 12;

/// Extra bytes read past the index interval when the read path looks for a batch: one read then
/// covers the whole stretch between two index entries plus a typical batch.
pub const READ_WALK_SLACK_BYTES: usize = 64 << 10;

/// Upper bound of one read while walking batch headers, whatever the index interval.
pub const READ_WALK_CHUNK_BYTES_MAX: usize = 1 << 20;

/// Bytes read per call while recovery validates batches (CRC needs every byte).
pub const RECOVERY_CHUNK_BYTES: usize = 1 << 20;

/// Bytes read when probing whether an index entry points at a valid batch during recovery.
pub const RECOVERY_PROBE_CHUNK_BYTES: usize = 64 << 10;

/// Closed segments loaded concurrently when a log opens: enough to overlap the kernel workers
/// that run io_uring's opens and stats, few enough to bound descriptors and memory in flight.
pub const SEGMENT_OPEN_CONCURRENCY: usize = 16;

/// Longest topic name Kafka allows; with `-{partition}` appended, directory names stay within
/// NAME_MAX (255) for partitions below 100000, as in Kafka.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

const _: () = assert!(SEGMENT_BYTES_MAX + BATCH_BYTES_MAX <= u32::MAX as u64);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_MAX);
const _: () = assert!(READ_WALK_CHUNK_BYTES_MAX >= READ_WALK_SLACK_BYTES);
const _: () = assert!(INDEX_INTERVAL_BYTES_MIN <= INDEX_INTERVAL_BYTES_MAX);
const _: () = assert!(READ_WALK_SLACK_BYTES >= BATCH_HEADER_BYTES);
const _: () = assert!(RECOVERY_PROBE_CHUNK_BYTES >= BATCH_HEADER_BYTES);
const _: () = assert!(TOPIC_NAME_BYTES_MAX + "-99999".len() <= 255);

/// Bytes appended to a segment after which their writeback is started (`sync_file_range`), so
/// dirty data never piles up to a whole segment and the fdatasync at roll stays short.
pub const WRITEBACK_KICK_BYTES: u64 = 8 << 20;

/// Writes up to this size go to the page cache with a plain pwrite(2) on the shard's thread
/// instead of through io_uring. ext4 has no non-blocking buffered writes, so io_uring hands
/// every buffered write to a kernel worker thread; for small writes that handoff (two context
/// switches and a wakeup) costs far more than the copy itself. Larger writes keep the worker, so
/// a long copy never stalls the shard.
pub const INLINE_WRITE_BYTES_MAX: usize = 128 << 10;

/// Segments one retention pass deletes from a log at most: each costs three unlinks and the pass
/// ends with a directory fsync, so this bounds the time a pass holds the shard's I/O. A log far
/// over its limit catches up over a few passes.
pub const RETENTION_SEGMENTS_PER_PASS_MAX: usize = 64;

/// Memory the cleaner's map of keys (newest offset per key in the dirty segments) may use in one
/// pass. The pass covers as many whole dirty segments as fit; the rest waits for the next pass
/// (Kafka's `log.cleaner.dedupe.buffer.size` plays the same role).
pub const CLEANER_KEY_MAP_BYTES_MAX: usize = 64 << 20;

/// Bookkeeping counted per key in the cleaner's map on top of the key bytes.
pub const CLEANER_KEY_MAP_ENTRY_OVERHEAD_BYTES: usize = 64;

/// Bytes of compacted output buffered before they are written (one pwrite each).
pub const CLEANER_WRITE_CHUNK_BYTES: usize = INLINE_WRITE_BYTES_MAX;

/// Decompressed size of one batch's records that the cleaner accepts; a batch claiming more is
/// kept as it is rather than expanded (a bound on memory for a hostile or broken batch).
pub const CLEANER_BATCH_DECOMPRESSED_BYTES_MAX: usize = 64 << 20;

const _: () = assert!(CLEANER_WRITE_CHUNK_BYTES <= INLINE_WRITE_BYTES_MAX);

/// Default of `producer.id.max.per.partition`: idempotent producers whose state one partition
/// keeps before the one with the oldest last append is evicted. Each costs about 250 bytes of
/// memory (its map slot at ~100, five remembered batches at 120, its place in the age order at
/// ~30) and at most 139 bytes in a producer-state snapshot, so the cap bounds a partition at
/// about 2.5 MB and its snapshots at about 1.4 MB. Without a cap, clients that take a new
/// producer id per connection or per request grow that state until `producer.id.expiration.ms`
/// (a day) passes, the way Kafka brokers ran out of memory (KIP-936). Ten thousand live
/// producers on one partition is far more than real workloads have.
pub const PRODUCER_IDS_MAX_DEFAULT: usize = 10_000;

#[cfg(test)]
mod tests {
    /// scripts/test-all.sh runs the Rust tests with `--profile release-checked` and sets
    /// `STROM_EXPECT_OVERFLOW_CHECKS=1`: then an overflow must panic, not wrap.
    #[test]
    fn overflow_checks_are_on_where_expected() {
        if std::env::var_os("STROM_EXPECT_OVERFLOW_CHECKS").is_none() {
            return;
        }
        let max = std::hint::black_box(u32::MAX);
        let wrapped = std::panic::catch_unwind(|| max + std::hint::black_box(1));
        assert!(
            wrapped.is_err(),
            "u32::MAX + 1 did not panic: the tests run without overflow checks"
        );
    }
}
