//! Persisting the idempotent producers' state: snapshots written at roll and close, and the
//! rebuild when a log opens (the newest intact snapshot, then the batch headers after it).

use std::path::Path;
use std::rc::Rc;

use super::PartitionLog;
use crate::error::StorageError;
use crate::file_io::{remove_file, sync_dir, write_atomic};
use crate::producer_state::{
    last_sequence, parse_snapshot_name, snapshot_name, BatchMeta, ProducerState, SNAPSHOTS_KEPT,
};
use crate::segment::Segment;
use crate::segment_reader::{BatchWalker, WalkStep};

impl PartitionLog {
    /// Forgets idempotent producers whose last append is older than `max_age_ms`
    /// (`producer.id.expiration.ms`). Returns how many.
    pub fn expire_producers(&self, now_ms: i64, max_age_ms: i64) -> usize {
        self.producers.borrow_mut().expire(now_ms, max_age_ms)
    }

    /// Idempotent producers tracked.
    pub fn producer_count(&self) -> usize {
        self.producers.borrow().len()
    }

    /// Writes the producer-state snapshot at `offset` and removes older ones beyond the few
    /// kept. A failure is logged, not returned: without the snapshot, reopening scans further.
    pub(super) async fn write_producer_snapshot(&self, offset: i64) {
        if self.producers.borrow().is_empty() && list_snapshots(&self.dir).is_empty() {
            return;
        }
        let bytes = self.producers.borrow().encode_snapshot(offset);
        if let Err(e) = write_atomic(&self.dir, &snapshot_name(offset), &bytes).await {
            tracing::warn!(dir = %self.dir.display(), offset, error = %e, "writing producer-state snapshot");
            return;
        }
        let snapshots = list_snapshots(&self.dir);
        for old in snapshots.iter().rev().skip(SNAPSHOTS_KEPT) {
            if let Err(e) = remove_file(&self.dir.join(snapshot_name(*old))).await {
                tracing::warn!(dir = %self.dir.display(), error = %e, "removing old producer-state snapshot");
            }
        }
    }
}

/// Offsets of the producer-state snapshots in `dir`, ascending.
pub(super) fn list_snapshots(dir: &Path) -> Vec<i64> {
    // Listing has no io_uring operation; it runs at open and at segment roll.
    let mut offsets: Vec<i64> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(parse_snapshot_name))
                .collect()
        })
        .unwrap_or_default();
    offsets.sort_unstable();
    offsets
}

/// Bytes read at a time while rebuilding producer state from batch headers.
const PRODUCER_SCAN_CHUNK_BYTES: usize = 1 << 20;

/// Rebuilds the idempotent producers' state of a freshly opened (recovered) log: the newest
/// intact snapshot at or below the log end offset, then the batch headers after it, keeping at
/// most `producer_ids_max` producers. Snapshots above the log end offset (the log was cut back
/// by recovery or a truncation) are deleted, durably.
pub(super) async fn load_producer_state(
    dir: &Path,
    segments: &[Rc<Segment>],
    log_start: i64,
    log_end: i64,
    producer_ids_max: usize,
    now_ms: i64,
) -> Result<ProducerState, StorageError> {
    let mut state = ProducerState::with_max(producer_ids_max);
    let mut from = log_start;
    let mut removed = false;
    for offset in list_snapshots(dir).into_iter().rev() {
        let path = dir.join(snapshot_name(offset));
        if offset > log_end {
            remove_file(&path).await?;
            removed = true;
            continue;
        }
        // A small file read once per open.
        match std::fs::read(&path)
            .ok()
            .and_then(|b| ProducerState::decode_snapshot(&b))
        {
            Some((at, loaded)) if at == offset => {
                state = loaded;
                // Written under a larger cap: the oldest producers go.
                let evicted = state.set_max(producer_ids_max);
                if evicted > 0 {
                    tracing::info!(path = %path.display(), evicted, "producer-state snapshot holds more producers than the cap");
                }
                from = offset;
                break;
            }
            _ => tracing::warn!(path = %path.display(), "ignoring damaged producer-state snapshot"),
        }
    }
    if removed {
        // Durably: a snapshot of records that are gone must not come back after a power loss,
        // once the log has grown past its offset again.
        sync_dir(dir).await?;
    }
    if from >= log_end {
        return Ok(state);
    }
    for (i, segment) in segments.iter().enumerate() {
        let next_base = segments.get(i + 1).map_or(i64::MAX, |s| s.base_offset());
        if next_base <= from {
            continue;
        }
        let mut walker =
            BatchWalker::new(segment, 0, segment.size(), PRODUCER_SCAN_CHUNK_BYTES, false);
        loop {
            match walker.next().await? {
                WalkStep::Batch { header, .. } => {
                    if header.last_offset() < from
                        || header.producer_id < 0
                        || header.producer_epoch < 0
                        || header.base_sequence < 0
                        || header.is_control()
                    {
                        continue;
                    }
                    let stored = BatchMeta {
                        first_seq: header.base_sequence,
                        last_seq: last_sequence(header.base_sequence, header.last_offset_delta),
                        first_offset: header.base_offset,
                        last_offset: header.last_offset(),
                    };
                    state.record(header.producer_id, header.producer_epoch, stored, now_ms);
                }
                WalkStep::End => break,
                WalkStep::Invalid { position, reason } => {
                    // Recovery has already cut torn tails; stop at anything else unreadable.
                    tracing::warn!(segment = %segment.paths.log.display(), position, reason, "producer-state scan stopped");
                    break;
                }
            }
        }
    }
    Ok(state)
}
