//! The leader-epoch cache of a `PartitionLog` (see `epoch_cache`): kept in memory, persisted as
//! `leader-epoch-checkpoint` in the partition directory whenever it changes, loaded (or rebuilt
//! from the batch headers) when the log opens.
//!
//! The checkpoint on disk may be *ahead* of the log, never behind it: a new entry is written
//! before the batch that starts the epoch, and a truncation cuts the log before the checkpoint.
//! Opening the log then cuts the loaded checkpoint to the recovered log (entries at or past the
//! log end go, entries before the log start are folded into it), which is all it takes to make
//! it exact again after a crash at any point.

use std::path::Path;
use std::rc::Rc;

use super::PartitionLog;
use crate::epoch_cache::EpochCache;
use crate::error::StorageError;
use crate::file_io::write_atomic;
use crate::limits::RECOVERY_CHUNK_BYTES;
use crate::segment::Segment;
use crate::segment_reader::{BatchWalker, WalkStep};
use crate::types::{LeaderEpoch, Offset};

/// The leader-epoch checkpoint file (Kafka's name and text format).
pub(crate) const LEADER_EPOCH_CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";

impl PartitionLog {
    /// Where `epoch` ends on this log, as OffsetForLeaderEpoch answers: the largest epoch at or
    /// below `epoch` that this log knows, and the start offset of the next higher epoch (the log
    /// end offset for the latest epoch). `epoch_cache::UNDEFINED` if unknown.
    pub fn epoch_end_offset(&self, epoch: LeaderEpoch) -> (LeaderEpoch, Offset) {
        self.epochs
            .borrow()
            .end_offset_for(epoch, Offset(self.log_end.get()))
    }

    /// The epoch of the newest batch that began a leader epoch in this log, if any.
    pub fn latest_epoch(&self) -> Option<LeaderEpoch> {
        self.epochs.borrow().latest_epoch()
    }

    /// A new leader records that its epoch starts at the log end offset (Kafka's leader does
    /// this when it takes over), so that the epoch is known, and ends at the log end, before
    /// its first batch. Nothing happens if the latest epoch is already `epoch` or newer.
    pub async fn begin_epoch(&self, epoch: LeaderEpoch) -> Result<(), StorageError> {
        let _permit = self.append_lock.lock().await;
        self.check_writable()?;
        if self.latest_epoch().is_some_and(|latest| latest >= epoch) {
            return Ok(());
        }
        self.assign_epochs(std::iter::once((epoch.0, self.log_end.get())))
            .await
    }

    /// The leader-epoch cache entries (epoch, start offset), oldest first.
    pub fn leader_epochs(&self) -> Vec<(LeaderEpoch, Offset)> {
        self.epochs.borrow().entries()
    }

    /// Records that batches of the given (epoch, base offset) pairs are about to be appended:
    /// if that changes the cache, the checkpoint is written first (so it is never behind the
    /// log), and only then the cache in memory changes. Serialized with the other writers of
    /// the checkpoint.
    pub(super) async fn assign_epochs(
        &self,
        starts: impl Iterator<Item = (i32, i64)>,
    ) -> Result<(), StorageError> {
        let _turn = self.epoch_file_lock.lock().await;
        let mut next = self.epochs.borrow().clone();
        let mut changed = false;
        for (epoch, start) in starts {
            changed |= next.assign(LeaderEpoch(epoch), Offset(start));
        }
        if !changed {
            return Ok(());
        }
        write_atomic(&self.dir, LEADER_EPOCH_CHECKPOINT_FILE, &next.encode()).await?;
        *self.epochs.borrow_mut() = next;
        Ok(())
    }

    /// Applies `edit` to the cache and, if it changed, writes the checkpoint. The cache in
    /// memory changes even if the write fails: edits that only remove entries leave the file
    /// ahead of the log, which the next open corrects.
    pub(super) async fn edit_epochs(
        &self,
        edit: impl FnOnce(&mut EpochCache) -> bool,
    ) -> Result<(), StorageError> {
        let _turn = self.epoch_file_lock.lock().await;
        if !edit(&mut self.epochs.borrow_mut()) {
            return Ok(());
        }
        let bytes = self.epochs.borrow().encode();
        write_atomic(&self.dir, LEADER_EPOCH_CHECKPOINT_FILE, &bytes).await
    }
}

/// Loads the leader-epoch cache of a freshly opened (recovered) log whose offsets are
/// [`log_start`, `log_end`): the checkpoint cut to that range, or, if the file is missing or
/// does not parse, a cache rebuilt from the batch headers. Writes the checkpoint back when it
/// was rebuilt (and is not empty) or cut.
pub(super) async fn load_epoch_cache(
    dir: &Path,
    segments: &[Rc<Segment>],
    log_start: i64,
    log_end: i64,
) -> Result<EpochCache, StorageError> {
    let path = dir.join(LEADER_EPOCH_CHECKPOINT_FILE);
    // A small file read once per open.
    let loaded = match std::fs::read(&path) {
        Ok(bytes) => match EpochCache::decode(&bytes) {
            Ok(cache) => Some(cache),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "rebuilding the leader-epoch cache from the log");
                None
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(crate::file_io::std_io_err("read", &path, e)),
    };
    let existed = loaded.is_some();
    let (mut cache, mut dirty) = match loaded {
        Some(cache) => (cache, false),
        None => {
            let cache = scan_epochs(segments, log_start).await?;
            let dirty = !cache.entries().is_empty() || path.exists();
            (cache, dirty)
        }
    };
    dirty |= cache.truncate_from_end(Offset(log_end));
    dirty |= cache.truncate_from_start(Offset(log_start));
    if dirty {
        write_atomic(dir, LEADER_EPOCH_CHECKPOINT_FILE, &cache.encode()).await?;
        if existed {
            tracing::info!(path = %path.display(), entries = cache.entries().len(),
                "cut the leader-epoch checkpoint to the recovered log");
        }
    }
    Ok(cache)
}

/// The leader-epoch cache as the batch headers of `segments` give it (from `log_start` on).
async fn scan_epochs(segments: &[Rc<Segment>], log_start: i64) -> Result<EpochCache, StorageError> {
    let mut cache = EpochCache::new();
    for (i, segment) in segments.iter().enumerate() {
        let next_base = segments.get(i + 1).map_or(i64::MAX, |s| s.base_offset());
        if next_base <= log_start {
            continue;
        }
        let mut walker = BatchWalker::new(segment, 0, segment.size(), RECOVERY_CHUNK_BYTES, false);
        // Bounded by the batches of the segment: each step advances or stops.
        loop {
            match walker.next().await? {
                WalkStep::Batch { header, .. } => {
                    if header.last_offset() >= log_start {
                        cache.assign(
                            LeaderEpoch(header.partition_leader_epoch),
                            Offset(header.base_offset),
                        );
                    }
                }
                WalkStep::End => break,
                WalkStep::Invalid { position, reason } => {
                    // Recovery has already cut torn tails; stop at anything else unreadable.
                    tracing::warn!(segment = %segment.paths.log.display(), position, reason,
                        "leader-epoch scan stopped");
                    break;
                }
            }
        }
    }
    Ok(cache)
}
