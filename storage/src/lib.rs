//! Partition logs for Strom: segmented, append-only logs of Kafka record batches (magic 2),
//! with sparse offset and time indexes and crash recovery.
//!
//! The chain of nouns is `LogManager` (all logs of one shard) -> `PartitionLog` -> `SegmentSet`
//! -> `Segment` (with its appender, reader and `SegmentIndex`), plus `batch` (header view, CRC)
//! and `recovery`. Everything runs on one glommio executor thread; see `docs/on_disk_format.md`
//! for the bytes on disk and the recovery rules.
//!
//! For replication a `PartitionLog` keeps the leader-epoch cache (`epoch_cache`, persisted as
//! `leader-epoch-checkpoint`) and answers where an epoch ends (`epoch_end_offset`); a follower
//! copies the leader's batches byte for byte (`append_replicated`) and cuts what the leader
//! does not have (`truncate_to`). The storage layer knows nothing of who leads: the broker
//! decides which of these to call.

mod append_file;
mod batch;
mod checkpoint;
mod codec;
mod config;
pub mod epoch_cache;
mod error;
mod fifo_lock;
mod file_io;
mod group_commit;
pub mod limits;
mod log_manager;
pub mod metrics;
mod partition_log;
mod producer_state;
pub mod records;
mod recovery;
mod segment;
mod segment_appender;
mod segment_fd;
mod segment_index;
mod segment_reader;
mod segment_set;
mod sim_disk;
mod sync_journal;
#[cfg(test)]
mod test_support;
pub mod testing;
mod types;

pub use append_file::AppendFile;
pub use batch::{
    validate_batch, validate_client_batch, BatchError, BatchHeader, BatchHeaderInfo,
    BATCH_HEADER_BYTES,
};
pub use codec::CodecError;
pub use config::{CleanupPolicy, LogConfig, TimestampType};
pub use error::StorageError;
pub use file_io::{
    install_disk_hooks, sync_dir, write_atomic, write_atomic_blocking, DiskHooks, FileRef,
};
pub use log_manager::LogManager;
pub use partition_log::{
    AppendInfo, CleanReport, CleanerFault, CleanerStep, PartitionLog, ReadSlice, SegmentFd,
};
pub use producer_state::{
    BatchMeta, ProducerError, ProducerState, SequenceVerdict, BATCHES_RETAINED,
};
// For the microbenchmarks in perf/ (not a stable API): the stamping `PartitionLog::append`
// does on each batch, and the in-memory index of a segment.
#[doc(hidden)]
pub use batch::{assign_offset_and_epoch, set_log_append_time};
#[doc(hidden)]
pub use segment_index::{IndexUpdate, OffsetEntry, SegmentIndex, TimeEntry};
pub use types::{LeaderEpoch, Offset};
