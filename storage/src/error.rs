//! The storage layer's error type.

use std::path::PathBuf;

use crate::batch::BatchError;

/// Everything that can go wrong in the storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A file system operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("write", "fdatasync", ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error, with its errno preserved.
        source: std::io::Error,
    },
    /// Data that was durable earlier does not parse (e.g. a closed segment with a bad header).
    #[error("corrupt {} at byte {position}: {reason}", path.display())]
    Corrupt {
        /// The file that holds the damage.
        path: PathBuf,
        /// Byte position of the first bad byte found.
        position: u64,
        /// What check failed.
        reason: String,
    },
    /// A batch handed to `append` is malformed.
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    /// An idempotent producer's batch failed the sequence or epoch checks.
    #[error(transparent)]
    Producer(#[from] crate::producer_state::ProducerError),
    /// A batch handed to `append` is larger than the log can hold in one segment.
    #[error("record batch of {len} bytes exceeds the limit of {max} bytes")]
    BatchTooLarge {
        /// Size of the batch.
        len: u64,
        /// The limit (`limits::BATCH_BYTES_MAX`).
        max: u64,
    },
    /// A read asked for an offset the log does not hold.
    #[error("offset {requested} is out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: i64,
        /// The log start offset at the time.
        log_start: i64,
        /// The log end offset at the time.
        log_end: i64,
    },
    /// A replicated batch does not continue the log: its base offset is not the next offset.
    #[error("replicated batch starts at offset {got}, but the log expects {expected}")]
    OffsetMismatch {
        /// The offset the log expected (its end offset, or the end of the previous batch).
        expected: i64,
        /// The batch's base offset.
        got: i64,
    },
    /// A test hook stopped a compaction pass at a step, as if the process had died there.
    #[error("injected fault: the cleaner stopped after step {step}")]
    InjectedFault {
        /// The step.
        step: &'static str,
    },
    /// The log was closed or deleted.
    #[error("log {} is closed", dir.display())]
    Closed {
        /// The partition directory.
        dir: PathBuf,
    },
    /// A leader append in an epoch that is over: the log follows a newer leader now.
    #[error("log {} follows leader epoch {current}; an append of leader epoch {epoch} is refused", dir.display())]
    FencedLeaderEpoch {
        /// The partition directory.
        dir: PathBuf,
        /// The epoch of the refused append.
        epoch: i32,
        /// The epoch the log follows.
        current: i32,
    },
    /// An earlier fdatasync failed; the kernel may have dropped dirty pages, so nothing written
    /// since the last good sync can be trusted until the log is reopened (and recovered).
    #[error("log {} failed to sync earlier and refuses further writes until reopened", dir.display())]
    SyncFailed {
        /// The partition directory.
        dir: PathBuf,
    },
    /// A topic name or partition number that cannot name a directory.
    #[error("invalid partition name {topic:?}/{partition}")]
    InvalidName {
        /// The topic name given.
        topic: String,
        /// The partition number given.
        partition: i32,
    },
}

impl StorageError {
    /// Whether this error means the disk (or the user's quota) is full: ENOSPC or EDQUOT.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StorageError::Io { source, .. } => {
                matches!(
                    source.raw_os_error(),
                    Some(libc::ENOSPC) | Some(libc::EDQUOT)
                ) || matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                )
            }
            _ => false,
        }
    }
}
