//! Retention and DeleteRecords: moving the log start offset forward and deleting the closed
//! segments wholly below it, oldest first. The active segment is never deleted.

use std::rc::Rc;

use super::PartitionLog;
use crate::checkpoint::write_log_start;
use crate::error::StorageError;
use crate::file_io::{remove_file_if_exists, sync_dir};
use crate::limits::RETENTION_SEGMENTS_PER_PASS_MAX;
use crate::segment::Segment;
use crate::types::Offset;

impl PartitionLog {
    /// Applies `retention.ms` and `retention.bytes` (when `cleanup.policy` includes delete):
    /// deletes closed segments, oldest first, whose newest timestamp is older than
    /// `retention.ms` or without which the log still holds `retention.bytes`. Only segments
    /// wholly below the high watermark qualify, and at most
    /// `RETENTION_SEGMENTS_PER_PASS_MAX` go per call, so one pass is bounded work. Returns how
    /// many segments were deleted.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<usize, StorageError> {
        self.check_writable()?;
        let config = self.config();
        if !config.cleanup.delete || (config.retention_ms < 0 && config.retention_bytes < 0) {
            return Ok(0);
        }
        let _maintenance = self.maintenance.lock().await;
        self.check_writable()?;
        let segments = self.segments.borrow().all();
        let hw = self.high_watermark.get();
        let mut remaining = self.size_bytes.get();
        let mut new_start = None;
        for pair in segments.windows(2).take(RETENTION_SEGMENTS_PER_PASS_MAX) {
            let (segment, next) = (&pair[0], &pair[1]);
            if next.base_offset() > hw {
                break;
            }
            let newest = segment.index.borrow().max_timestamp().map(|t| t.timestamp);
            let by_time = config.retention_ms >= 0
                && newest.is_none_or(|ts| now_ms.saturating_sub(ts) > config.retention_ms);
            let by_size = config.retention_bytes >= 0
                && remaining - segment.size() >= config.retention_bytes as u64;
            if !(by_time || by_size) {
                break;
            }
            remaining -= segment.size();
            new_start = Some(next.base_offset());
        }
        let Some(start) = new_start else {
            return Ok(0);
        };
        if start > self.log_start.get() {
            self.advance_log_start(start).await?;
        }
        let removed = self.remove_segments_below_start().await?;
        tracing::info!(dir = %self.dir.display(), segments = removed, log_start = self.log_start.get(),
            "retention deleted segments");
        Ok(removed)
    }

    /// DeleteRecords: moves the log start offset up to `before` (never back) and deletes the
    /// segments wholly below it. `before` above the high watermark is out of range. Returns the
    /// new log start offset (Kafka's low watermark).
    pub async fn delete_records(&self, before: Offset) -> Result<Offset, StorageError> {
        self.check_writable()?;
        if before.0 < 0 || before.0 > self.high_watermark.get() {
            return Err(self.out_of_range(before));
        }
        let _maintenance = self.maintenance.lock().await;
        self.check_writable()?;
        if before.0 > self.log_start.get() {
            self.advance_log_start(before.0).await?;
        }
        self.remove_segments_below_start().await?;
        Ok(Offset(self.log_start.get()))
    }

    /// Persists a new log start offset, then publishes it (reads below it fail from then on).
    async fn advance_log_start(&self, start: i64) -> Result<(), StorageError> {
        assert!(
            start <= self.high_watermark.get(),
            "log start offset above the high watermark"
        );
        assert!(
            start >= self.log_start.get(),
            "the log start offset only grows"
        );
        write_log_start(&self.dir, start).await?;
        self.log_start.set(start);
        if self.first_dirty.get() < start {
            self.first_dirty.set(start);
        }
        // After the log start: a checkpoint left with older entries is cut at the next open.
        if let Err(e) = self
            .edit_epochs(|epochs| epochs.truncate_from_start(Offset(start)))
            .await
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "writing the leader-epoch checkpoint");
        }
        Ok(())
    }

    /// Deletes the closed segments that end at or below the log start offset. The segment set
    /// changes first, so no new read finds them; a read in flight keeps its descriptor, which
    /// stays readable after the unlink.
    pub(super) async fn remove_segments_below_start(&self) -> Result<usize, StorageError> {
        let start = self.log_start.get();
        let doomed: Vec<Rc<Segment>> = {
            let mut set = self.segments.borrow_mut();
            let all = set.all();
            let bases: Vec<i64> = all
                .windows(2)
                .take_while(|pair| pair[1].base_offset() <= start)
                .map(|pair| pair[0].base_offset())
                .collect();
            bases.iter().filter_map(|&b| set.remove(b)).collect()
        };
        if doomed.is_empty() {
            return Ok(0);
        }
        let freed: u64 = doomed.iter().map(|s| s.size()).sum();
        self.size_bytes.set(self.size_bytes.get() - freed);
        for segment in &doomed {
            for path in segment.paths.all().into_iter().rev() {
                remove_file_if_exists(path).await?;
            }
        }
        sync_dir(&self.dir).await?;
        let count = doomed.len();
        for segment in doomed {
            if let Ok(segment) = Rc::try_unwrap(segment) {
                if let Err(e) = segment.close().await {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "closing a deleted segment");
                }
            }
        }
        Ok(count)
    }
}
