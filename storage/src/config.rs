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

/// Configuration of one partition log.
#[derive(Clone, Debug, PartialEq, Eq)]
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
        }
    }
}

impl LogConfig {
    /// `segment_bytes` clamped to what the on-disk format supports.
    pub(crate) fn segment_bytes_clamped(&self) -> u64 {
        self.segment_bytes
            .clamp(SEGMENT_BYTES_MIN, SEGMENT_BYTES_MAX)
    }

    /// `index_interval_bytes` clamped to its supported range.
    pub(crate) fn index_interval_clamped(&self) -> u32 {
        self.index_interval_bytes
            .clamp(INDEX_INTERVAL_BYTES_MIN, INDEX_INTERVAL_BYTES_MAX)
    }
}
