//! Durability of a `PartitionLog`: group-commit flushes (waited on or in the background), the
//! durable end offset and its watchers, the recovery point, and what a failed fdatasync does.

use std::rc::Rc;

use event_listener::EventListener;

use super::PartitionLog;
use crate::checkpoint::write_recovery_point;
use crate::error::StorageError;
use crate::file_io::truncate;
use crate::recovery::recovery_point_of;
use crate::types::Offset;

impl PartitionLog {
    /// Group commit: returns once every byte appended before the call is fdatasynced. Callers
    /// arriving while a sync runs wait for it, then share one more.
    pub async fn flush(&self) -> Result<(), StorageError> {
        self.check_open()?;
        self.commit.flush(|| self.sync_active()).await
    }

    /// Starts a group-commit flush without waiting for it: what `reads_durable_only` needs after
    /// an append nobody waits on (acks=0/1), so that it becomes readable after one fdatasync.
    /// At most one such task runs per log; appends during its sync make it flush once more.
    pub fn flush_in_background(self: &Rc<Self>) {
        if self.background_flush.replace(true) {
            self.background_again.set(true);
            return;
        }
        let log = Rc::clone(self);
        glommio::spawn_local(async move {
            // Each round covers every append before it; it repeats only while appends keep
            // arriving during the sync, and stops at the first error (closed, sync failed).
            loop {
                log.background_again.set(false);
                if let Err(e) = log.flush().await {
                    if !matches!(e, StorageError::Closed { .. }) {
                        tracing::error!(dir = %log.dir.display(), error = %e, "background flush");
                    }
                    break;
                }
                if !log.background_again.get() {
                    break;
                }
            }
            log.background_flush.set(false);
        })
        .detach();
    }

    async fn sync_active(&self) -> Result<(), StorageError> {
        if self.sync_failed.get() {
            return Err(StorageError::SyncFailed {
                dir: self.dir.clone(),
            });
        }
        let active = self.active()?;
        // Every batch below this offset is written to this segment (or to an earlier one,
        // synced when it rolled), so the sync covers it.
        let (covered, position) = (active.next_offset(), active.size());
        let truncations = self.truncations.get();
        let result = active.sync_log().await;
        match &result {
            // A truncation during the sync may have removed what it covered.
            Ok(()) if self.truncations.get() != truncations => {}
            Ok(()) => self.mark_durable(covered, active.base_offset(), position),
            Err(e) => self.on_sync_failed(e).await,
        }
        result
    }

    /// After a failed fdatasync the kernel may have dropped the dirty pages (Linux marks them
    /// clean) and a retry could succeed without them, while the page cache still serves them:
    /// refuse to pretend anything later is durable, refuse writes until the log is reopened,
    /// and cut the active segment back to its durable end, so that a restart does not find
    /// (and serve) bytes that were never written to the disk.
    pub(super) async fn on_sync_failed(&self, error: &StorageError) {
        if self.sync_failed.replace(true) {
            return;
        }
        tracing::error!(dir = %self.dir.display(), %error,
            "fdatasync failed: the log refuses writes until it is reopened");
        let (_, base, position) = self.durable_end.get();
        let Ok(active) = self.active() else { return };
        let keep = match base.cmp(&active.base_offset()) {
            std::cmp::Ordering::Equal => position,
            std::cmp::Ordering::Less => 0,
            std::cmp::Ordering::Greater => return,
        };
        match truncate(&active.log, &active.paths.log, keep).await {
            Ok(()) => tracing::warn!(segment = %active.paths.log.display(), keep,
                "cut the segment back to its durable end after the failed fdatasync"),
            Err(e) => tracing::error!(segment = %active.paths.log.display(), error = %e,
                "could not cut the segment back to its durable end; recovery will validate it"),
        }
    }

    /// Whether an fdatasync of this log failed (it then refuses writes until reopened).
    pub fn sync_failed(&self) -> bool {
        self.sync_failed.get()
    }

    /// Records that every offset below `offset` is durable (the first `position` bytes of the
    /// segment based at `segment_base`); wakes durable-end watchers and, with
    /// `reads_durable_only` on a single node, moves the high watermark.
    pub(super) fn mark_durable(&self, offset: i64, segment_base: i64, position: u64) {
        if offset <= self.durable_end.get().0 {
            return;
        }
        self.durable_end.set((offset, segment_base, position));
        self.durable_event.notify(usize::MAX);
        if self.hw_follows_appends.get() && self.config.borrow().reads_durable_only {
            self.advance_high_watermark(offset.min(self.log_end.get()));
        }
    }

    /// Offset below which every record is fdatasynced (what a follower may report, and what a
    /// power loss cannot take back).
    pub fn durable_end_offset(&self) -> Offset {
        Offset(self.durable_end.get().0)
    }

    /// A listener that fires on the next advance of the durable end offset. Create it before
    /// checking `durable_end_offset` to not miss an advance.
    pub fn listen_durable(&self) -> EventListener {
        self.durable_event.listen()
    }

    /// Makes everything appended so far durable (the active segment's `.log` and index files)
    /// and persists it as the recovery point, so that an unclean restart validates only what
    /// came after. Returns false if nothing was appended since the last one. Kafka writes its
    /// recovery-point checkpoint every `log.flush.offset.checkpoint.interval.ms`; the broker
    /// calls this at that interval.
    pub async fn write_recovery_point(&self) -> Result<bool, StorageError> {
        self.check_writable()?;
        let _maintenance = self.maintenance.lock().await;
        self.check_writable()?;
        let active = self.active()?;
        let point = recovery_point_of(&active);
        if point.offset <= self.recovery_point.get() {
            return Ok(false);
        }
        if let Err(e) = active.sync_all().await {
            self.on_sync_failed(&e).await;
            return Err(e);
        }
        self.mark_durable(point.offset, point.segment_base, point.position);
        write_recovery_point(&self.dir, point).await?;
        self.recovery_point.set(point.offset);
        Ok(true)
    }
}
