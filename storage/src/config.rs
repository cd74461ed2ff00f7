//! Per-log configuration, named after Kafka's topic configs.

use crate::limits::{
    INDEX_INTERVAL_BYTES_MAX, INDEX_INTERVAL_BYTES_MIN, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN,
};

/// Which timestamp a log stores in its batches (`message.timestamp.type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum TimestampType {
    /// Keep the producer's timestamps.
    #[default]
    CreateTime,
    /// Stamp each batch with the broker's clock on append.
    LogAppendTime,
}

/// `cleanup.policy`: what happens to old data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CleanupPolicy {
    /// `delete`: whole closed segments are removed by `retention.ms` / `retention.bytes`.
    pub delete: bool,
    /// `compact`: the cleaner keeps only the newest record of each key in closed segments.
    pub compact: bool,
}

impl Default for CleanupPolicy {
    fn default() -> Self {
        CleanupPolicy {
            delete: true,
            compact: false,
        }
    }
}

/// Configuration of one partition log.
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll the active segment before it would grow past this. Default 1 GiB.
    pub segment_bytes: u64,
    /// `segment.ms`: roll the active segment once it is this old. Default 7 days.
    pub segment_ms: u64,
    /// `index.interval.bytes`: log bytes between offset index entries. Default 4096.
    pub index_interval_bytes: u32,
    /// `flush.messages`: unflushed messages that make `needs_flush` true. Default never.
    pub flush_messages: u64,
    /// `flush.ms`: age of the oldest unflushed append that makes `needs_flush` true. Default never.
    pub flush_ms: u64,
    /// `message.timestamp.type`. Default CreateTime.
    pub timestamp_type: TimestampType,
    /// `cleanup.policy`. Default `delete`.
    pub cleanup: CleanupPolicy,
    /// `retention.ms`: closed segments whose newest timestamp is older than this are deleted
    /// (with `cleanup.policy` delete). Negative: no limit. Default 7 days.
    pub retention_ms: i64,
    /// `retention.bytes`: oldest closed segments are deleted while the log would stay at least
    /// this big without them. Negative: no limit (the default).
    pub retention_bytes: i64,
    /// `delete.retention.ms`: how long a tombstone (null value) survives compaction after its
    /// timestamp. Default 1 day.
    pub delete_retention_ms: u64,
    /// `min.cleanable.dirty.ratio`: share of not-yet-compacted bytes in the closed segments
    /// above which the cleaner runs. Default 0.5.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: a segment is compacted only once its newest timestamp is this
    /// old. Default 0.
    pub min_compaction_lag_ms: u64,
    /// `max.compaction.lag.ms`: a record is compacted at the latest this long after its
    /// timestamp, whatever the dirty ratio (the active segment is rolled for it). Default never.
    pub max_compaction_lag_ms: u64,
    /// Records become readable (the high watermark passes them) only once they are
    /// fdatasynced, as in Redpanda; the broker sets it with `flush.on.ack`. Default false:
    /// readable once appended, as in Kafka.
    pub reads_durable_only: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 60 * 60 * 1000,
            index_interval_bytes: 4096,
            flush_messages: u64::MAX,
            flush_ms: u64::MAX,
            timestamp_type: TimestampType::CreateTime,
            cleanup: CleanupPolicy::default(),
            retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_bytes: -1,
            delete_retention_ms: 24 * 60 * 60 * 1000,
            min_cleanable_dirty_ratio: 0.5,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: u64::MAX,
            reads_durable_only: false,
        }
    }
}

impl LogConfig {
    /// `segment_bytes` clamped to what the on-disk format supports.
    pub(crate) fn segment_bytes_clamped(&self) -> u64 {
        self.segment_bytes
            .clamp(SEGMENT_BYTES_MIN, SEGMENT_BYTES_MAX)
    }

    /// Age at which the active segment rolls: `segment.ms`, or `max.compaction.lag.ms` if that
    /// is shorter and the log is compacted (a record must reach a closed segment to be cleaned).
    pub(crate) fn roll_ms(&self) -> u64 {
        if self.cleanup.compact {
            self.segment_ms.min(self.max_compaction_lag_ms)
        } else {
            self.segment_ms
        }
    }

    /// `index_interval_bytes` clamped to its supported range.
    pub(crate) fn index_interval_clamped(&self) -> u32 {
        self.index_interval_bytes
            .clamp(INDEX_INTERVAL_BYTES_MIN, INDEX_INTERVAL_BYTES_MAX)
    }
}
