//! The follower's side of replication: appending the leader's batches as they are, and
//! truncating the log back to where it agrees with the leader.

use std::rc::Rc;

use super::PartitionLog;
use crate::batch::{validate_batch, BatchHeader, BatchHeaderInfo};
use crate::checkpoint::{write_log_start, write_recovery_point, RecoveryPoint};
use crate::error::StorageError;
use crate::file_io::{remove_file_if_exists, sync_dir};
use crate::limits::BATCH_BYTES_MAX;
use crate::recovery::{cut_segment, recovery_point_of};
use crate::segment::Segment;
use crate::segment_set::max_timestamp_of;
use crate::types::{LeaderEpoch, Offset};

use super::load_producer_state;

/// Splits `bytes` into whole batches and validates each one (framing, magic, CRC-32C, at least
/// one record); returns (start, header) per batch.
fn split_batches(bytes: &[u8]) -> Result<Vec<(usize, BatchHeaderInfo)>, StorageError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    // Each round consumes one whole batch or fails.
    while at < bytes.len() {
        let rest = &bytes[at..];
        let header = BatchHeader::view(rest)
            .ok_or(crate::batch::BatchError::TooShort { len: rest.len() })?
            .info();
        let total = usize::try_from(header.total_bytes()).unwrap_or(usize::MAX);
        if total > rest.len() {
            // A partial batch (a Fetch response may end with one): refused, not cut, so that
            // the caller decides what to fetch again.
            return Err(crate::batch::BatchError::LengthMismatch {
                declared: header.total_bytes() as i64,
                actual: rest.len(),
            }
            .into());
        }
        if total as u64 > BATCH_BYTES_MAX {
            return Err(StorageError::BatchTooLarge {
                len: total as u64,
                max: BATCH_BYTES_MAX,
            });
        }
        let header = validate_batch(&rest[..total])?;
        out.push((at, header));
        at += total;
    }
    Ok(out)
}

impl PartitionLog {
    /// The log follows the leader of `epoch` from now on: leader appends of older epochs are
    /// refused (`StorageError::FencedLeaderEpoch`), also those already waiting for the append
    /// lock. Returns once the appends ahead of this call are written and everything appended
    /// is durable, so that the follower starts from a log that no old-epoch append changes.
    pub async fn follow_epoch(&self, epoch: LeaderEpoch) -> Result<(), StorageError> {
        if epoch.0 > self.leader_appends_from.get() {
            self.leader_appends_from.set(epoch.0);
        }
        // The lock is FIFO: holding it once means every append queued before is done.
        drop(self.append_lock.lock().await);
        self.flush().await
    }

    /// Follower append: writes `batches` (one or more whole record batches exactly as the
    /// leader sent them in a Fetch response) byte for byte, keeping the leader's base offsets,
    /// leader epochs and timestamps. Every batch is validated (framing, CRC-32C) and the first
    /// must start at the log end offset, each next one where the previous one ends
    /// (`StorageError::OffsetMismatch` otherwise); nothing is written unless all pass. The
    /// leader-epoch cache, the producer state (recorded, never checked: the leader decided), the
    /// indexes and the group-commit counters are updated as for `append`, and the data becomes
    /// durable the same way (`flush`, `durable_end_offset`, `listen_durable`). The high
    /// watermark does not move (the leader's is set with `set_high_watermark`). Returns the log
    /// end offset after the append; empty input changes nothing. If a write fails midway, the
    /// batches before the failing one stay appended (the log end offset says how far it got).
    pub async fn append_replicated(
        &self,
        batches: &[u8],
        now_ms: i64,
    ) -> Result<Offset, StorageError> {
        self.check_writable()?;
        if batches.is_empty() {
            return Ok(Offset(self.log_end.get()));
        }
        let split = split_batches(batches)?;
        let _permit = self.append_lock.lock().await;
        self.check_writable()?;
        let mut expected = self.log_end.get();
        for (_, header) in &split {
            if header.base_offset != expected {
                return Err(StorageError::OffsetMismatch {
                    expected,
                    got: header.base_offset,
                });
            }
            expected = header.last_offset() + 1;
        }
        // Before the batches, so that the checkpoint is never behind the log.
        self.assign_epochs(
            split
                .iter()
                .map(|(_, h)| (h.partition_leader_epoch, h.base_offset)),
        )
        .await?;
        self.hw_follows_appends.set(false);
        let config = self.config.borrow().clone();
        for (at, header) in &split {
            let bytes = &batches[*at..*at + header.total_bytes() as usize];
            let written = async {
                self.maybe_roll(header.total_bytes(), header.last_offset(), &config, now_ms)
                    .await?;
                let active = self.active()?;
                active
                    .append_batch(
                        bytes.to_vec(),
                        &|from| bytes[from..].to_vec(),
                        header,
                        config.index_interval_clamped(),
                    )
                    .await?;
                Ok::<Rc<Segment>, StorageError>(active)
            }
            .await;
            match written {
                Ok(active) => self.record_appended(&active, header, now_ms),
                Err(e) => {
                    // Epochs assigned for batches that were not written go again.
                    let end = Offset(self.log_end.get());
                    if let Err(e) = self.edit_epochs(|c| c.truncate_from_end(end)).await {
                        tracing::warn!(dir = %self.dir.display(), error = %e, "writing the leader-epoch checkpoint");
                    }
                    return Err(e);
                }
            }
        }
        Ok(Offset(self.log_end.get()))
    }

    /// Removes every record at or after `offset` (a follower cutting what the leader does not
    /// have), on a batch boundary: the batch holding `offset` goes whole, so the log may end
    /// below `offset` (Kafka's follower truncation does the same). Returns the new log end
    /// offset. At or above the log end offset only epochs that start at the log end (and so
    /// have no records) leave the leader-epoch cache; below the log start offset it is
    /// `StorageError::OffsetOutOfRange`.
    ///
    /// Segments past the cut are deleted, the segment holding it is cut and fdatasynced with
    /// its rebuilt indexes and becomes the active segment; all of it is durable before this
    /// returns, so a crash cannot bring the records back. The high watermark and the durable
    /// end offset come down to the new end if they were above it, the leader-epoch cache is
    /// cut there, and the producer state is rebuilt from the log that remains. `now_ms` stamps
    /// the rebuilt producers' last activity. If a step fails, the log refuses writes (as after
    /// a failed fdatasync) until it is reopened, and recovery finishes the job.
    pub async fn truncate_to(&self, offset: Offset, now_ms: i64) -> Result<Offset, StorageError> {
        self.check_writable()?;
        let _maintenance = self.maintenance.lock().await;
        let _permit = self.append_lock.lock().await;
        self.check_writable()?;
        if offset.0 < self.log_start.get() {
            return Err(self.out_of_range(offset));
        }
        let end = Offset(self.log_end.get());
        if offset >= end {
            // No record goes, but an epoch this log began without a record of it (a leader's
            // `begin_epoch` at its log end) does: the leader does not know it, and a follower
            // that kept it would ask with it, and diverge at the same offset, forever.
            self.edit_epochs(|c| c.truncate_from_end(end)).await?;
            return Ok(end);
        }
        let segment = self
            .segments
            .borrow()
            .floor(offset.0)
            .ok_or_else(|| self.out_of_range(offset))?;
        let chunk_bytes = self.read_chunk_bytes();
        let (position, cut_offset) = match segment
            .locate(offset.0, segment.size(), chunk_bytes)
            .await?
        {
            Some((position, header)) => (position, header.base_offset),
            // Past the last batch of a compacted segment: only later segments go.
            None => (segment.size(), offset.0),
        };
        // Readers stop at the cut from now on.
        self.truncations.set(self.truncations.get() + 1);
        self.lower_high_watermark(cut_offset, segment.base_offset(), position);
        let result = self.cut_log(&segment, position, now_ms).await;
        if let Err(e) = &result {
            tracing::error!(dir = %self.dir.display(), offset = offset.0, error = %e,
                "truncation failed: the log refuses writes until it is reopened");
            self.sync_failed.set(true);
        }
        result
    }

    /// The high watermark comes down to `end` if above it, with the read limit at `position`
    /// of the segment based at `segment_base`.
    fn lower_high_watermark(&self, end: i64, segment_base: i64, position: u64) {
        self.pending_ends
            .borrow_mut()
            .retain(|batch_end| batch_end.next_offset <= end);
        if self.high_watermark.get() > end {
            self.high_watermark.set(end);
            self.hw_mark.set((segment_base, position));
        }
    }

    /// The disk side of `truncate_to`, in an order after which a crash at any point leaves a
    /// log that opens: a recovery point that claims nothing past the segment's start, the
    /// segments after it gone, the segment cut and synced, then the checkpoints.
    async fn cut_log(
        &self,
        segment: &Rc<Segment>,
        position: u64,
        now_ms: i64,
    ) -> Result<Offset, StorageError> {
        let base = segment.base_offset();
        let conservative = RecoveryPoint {
            offset: base,
            segment_base: base,
            position: 0,
            offset_entries: 0,
            time_entries: 0,
        };
        write_recovery_point(&self.dir, conservative).await?;
        self.recovery_point.set(base);
        let doomed: Vec<Rc<Segment>> = {
            let mut set = self.segments.borrow_mut();
            let later: Vec<i64> = set
                .all()
                .iter()
                .map(|s| s.base_offset())
                .filter(|&b| b > base)
                .collect();
            later.iter().filter_map(|&b| set.remove(b)).collect()
        };
        for doomed in &doomed {
            for path in doomed.paths.all().into_iter().rev() {
                remove_file_if_exists(path).await?;
            }
        }
        if !doomed.is_empty() {
            sync_dir(&self.dir).await?;
        }
        for doomed in doomed {
            if let Ok(doomed) = Rc::try_unwrap(doomed) {
                if let Err(e) = doomed.close().await {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "closing a truncated segment");
                }
            }
        }
        segment.reopen_index_files().await?;
        let interval = self.config.borrow().index_interval_clamped();
        cut_segment(segment, position, interval).await?;

        let end = segment.next_offset();
        let all = self.segments.borrow().all();
        self.log_end.set(end);
        self.size_bytes.set(all.iter().map(|s| s.size()).sum());
        self.max_timestamp.set(max_timestamp_of(&all));
        self.lower_high_watermark(end, base, segment.size());
        // Everything below the new end is synced: earlier segments when they rolled, this one
        // just now.
        let durable = self.durable_end.get().0;
        self.durable_end.set((end, base, segment.size()));
        if end > durable {
            self.durable_event.notify(usize::MAX);
        }
        if self.first_dirty.get() > end {
            self.first_dirty.set(end);
        }
        if self.log_start.get() > end {
            // The batch holding the log start offset was cut: the log is empty at `end`.
            write_log_start(&self.dir, end).await?;
            self.log_start.set(end);
        }
        let point = recovery_point_of(segment);
        write_recovery_point(&self.dir, point).await?;
        self.recovery_point.set(point.offset);
        // After the log, so that the checkpoint is never behind it.
        self.edit_epochs(|epochs| epochs.truncate_from_end(Offset(end)))
            .await?;
        let max = self.producers.borrow().max();
        let producers =
            load_producer_state(&self.dir, &all, self.log_start.get(), end, max, now_ms).await?;
        *self.producers.borrow_mut() = producers;
        tracing::info!(dir = %self.dir.display(), log_end = end, segments_deleted = all.len(),
            "truncated the log");
        Ok(Offset(end))
    }
}
