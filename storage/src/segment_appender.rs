//! Appending to a segment: the batch write, its index entries, and the rollback that keeps the
//! files equal to what was acknowledged when a write fails (ENOSPC, short write).

use std::os::fd::AsRawFd;

use crate::batch::BatchHeaderInfo;
use crate::error::StorageError;
use crate::file_io::{truncate, write_all_at, write_small_at};
use crate::limits::{OFFSET_INDEX_ENTRY_BYTES, TIME_INDEX_ENTRY_BYTES, WRITEBACK_KICK_BYTES};
use crate::segment::Segment;
use crate::segment_fd::SegmentFd;
use crate::segment_index::{encode_offsets, encode_times, IndexUpdate};

impl Segment {
    /// Writes one stamped batch at the end of the segment and its index entries. `first` is the
    /// batch; `rest(n)` rebuilds its bytes from `n` on if the kernel writes only part of it.
    ///
    /// On error the `.log` and the index files are cut back to their previous lengths (or, if
    /// even that fails, the segment remembers to cut before the next append), and nothing in
    /// memory changes. Dropping the future midway is safe the same way.
    pub(crate) async fn append_batch(
        &self,
        first: Vec<u8>,
        rest: &dyn Fn(usize) -> Vec<u8>,
        header: &BatchHeaderInfo,
        index_interval_bytes: u32,
    ) -> Result<(), StorageError> {
        self.cut_dirty_tail().await?;
        let position = self.size();
        let len = first.len() as u64;
        // The caller rolls before a relative offset or position could leave u32.
        let rel_offset = u32::try_from(header.base_offset - self.base_offset())
            .expect("relative offset fits u32: the log rolls before it would not");
        let position_u32 = u32::try_from(position).expect("segment positions fit u32 (limits.rs)");

        // Until the append completes or is rolled back, the file may hold bytes past `size`: if
        // this future is dropped midway (io_uring still finishes the write), the next append
        // cuts them first.
        self.set_dirty_tail(true);
        if let Err(e) = write_all_at(&self.log, &self.paths.log, position, first, rest).await {
            self.rollback_log(position).await;
            return Err(e);
        }
        let update = self.index.borrow().plan_batch(
            rel_offset,
            position_u32,
            header.max_timestamp,
            index_interval_bytes,
        );
        if let Err(e) = self.write_index_update(&update).await {
            self.rollback_log(position).await;
            return Err(e);
        }
        self.index.borrow_mut().apply(&update);
        self.set_size(position + len);
        self.set_next_offset(header.last_offset() + 1);
        self.set_dirty_tail(false);
        self.kick_writeback();
        Ok(())
    }

    /// Starts writeback of what was appended since the last kick once it reaches
    /// `WRITEBACK_KICK_BYTES`. Without it the kernel lets a whole segment's worth of dirty pages
    /// pile up, and the fdatasync at roll, which holds up every append of the partition, then
    /// writes all of it (hundreds of milliseconds for 1 GiB). `SYNC_FILE_RANGE_WRITE` only
    /// submits the pages, but submitting 8 MiB blocks the caller for milliseconds when the device
    /// queue is busy, so it runs on the executor's blocking-syscall thread with its own
    /// descriptor of the file, never on the shard's thread (it once stalled every request of the
    /// shard for 4-9 ms). A failure only loses the head start: the fdatasync that matters comes
    /// later and reports errors.
    fn kick_writeback(&self) {
        let (from, to) = (self.writeback_from(), self.size());
        if from > to {
            self.set_writeback_from(to);
            return;
        }
        if to - from < WRITEBACK_KICK_BYTES {
            return;
        }
        self.set_writeback_from(to);
        let log = self.paths.log.clone();
        let fd = match SegmentFd::dup_of(self.log.as_raw_fd()) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::debug!(path = %log.display(), error = %e, "starting writeback");
                return;
            }
        };
        let job = glommio::executor().spawn_blocking(move || {
            // SAFETY: sync_file_range on a descriptor this closure owns; no memory is passed.
            let rc = unsafe {
                libc::sync_file_range(
                    fd.as_raw_fd(),
                    from as i64,
                    (to - from) as i64,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            (rc == 0)
                .then_some(())
                .ok_or_else(std::io::Error::last_os_error)
        });
        glommio::spawn_local(async move {
            if let Err(e) = job.await {
                tracing::debug!(path = %log.display(), error = %e, "starting writeback");
            }
        })
        .detach();
    }

    /// Cuts bytes a failed or abandoned append left past `size`, if any.
    pub(crate) async fn cut_dirty_tail(&self) -> Result<(), StorageError> {
        if self.dirty_tail() {
            truncate(&self.log, &self.paths.log, self.size()).await?;
            self.set_dirty_tail(false);
        }
        Ok(())
    }

    /// Cuts the `.log` back to `position` after a failed append.
    async fn rollback_log(&self, position: u64) {
        match truncate(&self.log, &self.paths.log, position).await {
            Ok(()) => self.set_dirty_tail(false),
            Err(e) => tracing::warn!(path = %self.paths.log.display(), position, error = %e,
                "could not cut a failed append; will retry before the next append"),
        }
    }

    /// Appends the entries of `update` to the index files; on error cuts them back.
    async fn write_index_update(&self, update: &IndexUpdate) -> Result<(), StorageError> {
        let (offsets_len, times_len) = {
            let index = self.index.borrow();
            (index.offsets().len(), index.times().len())
        };
        let files = self.index_files();
        let offsets_pos = (offsets_len * OFFSET_INDEX_ENTRY_BYTES) as u64;
        let times_pos = (times_len * TIME_INDEX_ENTRY_BYTES) as u64;
        if let Some(entry) = update.offset {
            let bytes = encode_offsets(&[entry]);
            if let Err(e) =
                write_small_at(&files.offsets, &self.paths.index, offsets_pos, &bytes).await
            {
                let _ = truncate(&files.offsets, &self.paths.index, offsets_pos).await;
                return Err(e);
            }
        }
        if let Some(entry) = update.time {
            let bytes = encode_times(&[entry]);
            if let Err(e) =
                write_small_at(&files.times, &self.paths.time_index, times_pos, &bytes).await
            {
                let _ = truncate(&files.times, &self.paths.time_index, times_pos).await;
                if update.offset.is_some() {
                    let _ = truncate(&files.offsets, &self.paths.index, offsets_pos).await;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Ends the segment's active life (roll or clean close): adds the final time index entry if
    /// the maximum timestamp moved since the last one, then fdatasyncs all three files.
    pub(crate) async fn seal(&self) -> Result<(), StorageError> {
        self.seal_time_index().await?;
        self.sync_all().await
    }

    /// Adds the final time index entry if the maximum timestamp moved since the last one.
    pub(crate) async fn seal_time_index(&self) -> Result<(), StorageError> {
        let (entry, times_len) = {
            let index = self.index.borrow();
            (index.plan_seal(), index.times().len())
        };
        if let Some(entry) = entry {
            let files = self.index_files();
            let pos = (times_len * TIME_INDEX_ENTRY_BYTES) as u64;
            let bytes = encode_times(&[entry]);
            if let Err(e) = write_small_at(&files.times, &self.paths.time_index, pos, &bytes).await
            {
                let _ = truncate(&files.times, &self.paths.time_index, pos).await;
                return Err(e);
            }
            self.index.borrow_mut().push_time(entry);
        }
        Ok(())
    }
}
