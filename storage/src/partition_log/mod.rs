//! `PartitionLog`: one partition's log — append with offset assignment, reads bounded by the
//! high watermark, timestamp lookups, group-commit flush, roll, clean close. The follower's
//! append and truncation are in `follower.rs`, the leader-epoch cache in `epochs.rs`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use event_listener::{Event, EventListener};

use crate::batch::{
    assign_offset_and_epoch, parse_single, set_log_append_time, BatchHeader, BatchHeaderInfo,
    BATCH_HEADER_BYTES,
};
use crate::checkpoint::{write_clean_shutdown, write_recovery_point, CleanShutdown, RecoveryPoint};
use crate::config::{LogConfig, TimestampType};
use crate::epoch_cache::EpochCache;
use crate::error::StorageError;
use crate::fifo_lock::FifoLock;
use crate::file_io::{remove_file, std_io_err, sync_dir};
use crate::group_commit::GroupCommit;
use crate::limits::{
    BATCH_BYTES_MAX, PRODUCER_IDS_MAX_DEFAULT, READ_WALK_CHUNK_BYTES_MAX, READ_WALK_SLACK_BYTES,
    RELATIVE_OFFSET_MAX,
};
use crate::producer_state::{last_sequence, BatchMeta, ProducerState, SequenceVerdict};
use crate::recovery::open_log;
use crate::segment::Segment;
use crate::segment_reader::RangeRead;
use crate::segment_set::{max_timestamp_of, SegmentSet};
use crate::types::{LeaderEpoch, Offset};

pub use crate::segment_fd::SegmentFd;

/// What an append assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the batch's first record.
    pub base_offset: Offset,
    /// Offset of the batch's last record.
    pub last_offset: Offset,
    /// The append time stamped into the batch, or -1 unless the log uses LogAppendTime.
    pub log_append_time_ms: i64,
    /// The log start offset after the append.
    pub log_start_offset: Offset,
    /// The batch was a retry of one already stored (same producer, epoch and sequences): it was
    /// not appended again, and the offsets are those of the stored copy.
    pub duplicate: bool,
}

/// A byte range of whole batches in a segment file, to be sent with sendfile by a thread other
/// than the owner.
#[derive(Clone, Debug)]
pub struct ReadSlice {
    /// Descriptor of the segment file (stays valid after the segment is deleted).
    pub fd: Arc<SegmentFd>,
    /// Byte position of the first batch in the file.
    pub position: u64,
    /// Bytes of whole batches.
    pub len: u32,
    /// Base offset of the first batch (may be below the offset asked for).
    pub first_offset: Offset,
}

impl ReadSlice {
    /// Reads the bytes with a blocking pread. For tests and tools; a shard thread sends the
    /// range with sendfile instead.
    pub fn read_blocking(&self) -> std::io::Result<Vec<u8>> {
        let file = std::fs::File::from(self.fd.try_clone_owned()?);
        let mut out = vec![0u8; self.len as usize];
        file.read_exact_at(&mut out, self.position)?;
        Ok(out)
    }
}

/// End of a batch that is above the high watermark: where reads may stop once the high
/// watermark passes it.
#[derive(Clone, Copy, Debug)]
struct BatchEnd {
    next_offset: i64,
    segment_base: i64,
    position: u64,
}

/// One partition's log. Every method is called from the single owning executor thread.
pub struct PartitionLog {
    dir: PathBuf,
    config: RefCell<LogConfig>,
    segments: RefCell<SegmentSet>,
    /// Serializes appends, rolls and close, strictly in call order (see `fifo_lock`).
    append_lock: FifoLock,
    log_start: Cell<i64>,
    log_end: Cell<i64>,
    high_watermark: Cell<i64>,
    /// (segment base, byte position) that reads stop at: the end of the last batch below the
    /// high watermark.
    hw_mark: Cell<(i64, u64)>,
    /// Ends of batches above the high watermark, oldest first.
    pending_ends: RefCell<VecDeque<BatchEnd>>,
    max_timestamp: Cell<Option<(i64, i64)>>,
    size_bytes: Cell<u64>,
    commit: GroupCommit,
    hw_event: Event,
    /// Fires after every append (a leader's followers wait on it for records past their end).
    append_event: Event,
    /// Offset below which everything is fdatasynced (the durable end offset).
    /// with where it lies: (offset, base of its segment, synced bytes of that segment).
    durable_end: Cell<(i64, i64, u64)>,
    /// Fires when `durable_end` moves.
    durable_event: Event,
    /// Whether appends move the high watermark (single node); false once replication moves it.
    hw_follows_appends: Cell<bool>,
    /// Offset of the last recovery point written (or found) in `recovery-point`.
    recovery_point: Cell<i64>,
    /// A background flush task runs (`flush_in_background`).
    background_flush: Cell<bool>,
    /// Appends arrived while it ran: it flushes once more.
    background_again: Cell<bool>,
    closed: Cell<bool>,
    sync_failed: Cell<bool>,
    /// Idempotent producers' state (see `producer_state`).
    producers: RefCell<ProducerState>,
    /// Serializes the work that removes or replaces closed segments (retention, DeleteRecords,
    /// the cleaner) with each other and with close.
    maintenance: FifoLock,
    /// Set when close or delete begins: the cleaner abandons a pass it has not committed.
    closing: Cell<bool>,
    /// First offset the cleaner has not compacted yet (persisted in `cleaner-offset`).
    first_dirty: Cell<i64>,
    /// When the earliest tombstone the cleaner kept may be removed (memory only: after a
    /// restart, at the next pass that dirty data starts).
    tombstone_due_ms: Cell<Option<i64>>,
    /// Test hook: where a compaction pass stops as if the process died (see `cleaner`).
    cleaner_fault: Cell<Option<CleanerFault>>,
    /// Where each leader epoch starts (see `epochs`).
    epochs: RefCell<EpochCache>,
    /// Serializes writes of the leader-epoch checkpoint.
    epoch_file_lock: FifoLock,
    /// Counts truncations (`truncate_to`): a sync that started before one must not move the
    /// durable end afterwards.
    truncations: Cell<u64>,
    /// Leader appends (`append_as_leader`) of an older leader epoch are refused: the log
    /// follows a newer leader (`follow_epoch`).
    leader_appends_from: Cell<i32>,
}

impl fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionLog")
            .field("dir", &self.dir)
            .field("log_start", &self.log_start.get())
            .field("log_end", &self.log_end.get())
            .field("high_watermark", &self.high_watermark.get())
            .field("segments", &self.segments.borrow().len())
            .finish()
    }
}

impl PartitionLog {
    /// Opens (creating `dir` if missing) and recovers the log. `now_ms` is wall clock ms.
    pub async fn open(
        dir: PathBuf,
        config: LogConfig,
        now_ms: i64,
    ) -> Result<Rc<PartitionLog>, StorageError> {
        Self::open_with_producer_ids_max(dir, config, PRODUCER_IDS_MAX_DEFAULT, now_ms).await
    }

    /// `open`, keeping the state of at most `producer_ids_max` idempotent producers.
    pub(crate) async fn open_with_producer_ids_max(
        dir: PathBuf,
        config: LogConfig,
        producer_ids_max: usize,
        now_ms: i64,
    ) -> Result<Rc<PartitionLog>, StorageError> {
        let opened = open_log(&dir, &config, now_ms).await?;
        let segments = opened.segments;
        let active = segments
            .active()
            .expect("open_log leaves at least one segment");
        let log_end = active.next_offset();
        let max_timestamp = max_timestamp_of(&segments.all());
        let producers = load_producer_state(
            &dir,
            &segments.all(),
            opened.log_start,
            log_end,
            producer_ids_max,
            now_ms,
        )
        .await?;
        let epochs = load_epoch_cache(&dir, &segments.all(), opened.log_start, log_end).await?;
        let log = PartitionLog {
            dir,
            config: RefCell::new(config),
            size_bytes: Cell::new(segments.size_bytes()),
            hw_mark: Cell::new((active.base_offset(), active.size())),
            segments: RefCell::new(segments),
            append_lock: FifoLock::default(),
            log_start: Cell::new(opened.log_start),
            log_end: Cell::new(log_end),
            high_watermark: Cell::new(log_end),
            pending_ends: RefCell::new(VecDeque::new()),
            max_timestamp: Cell::new(max_timestamp),
            commit: GroupCommit::default(),
            hw_event: Event::new(),
            append_event: Event::new(),
            // A clean close synced everything; an unclean open synced what recovery kept.
            durable_end: Cell::new((log_end, active.base_offset(), active.size())),
            durable_event: Event::new(),
            hw_follows_appends: Cell::new(true),
            // Everything is durable at open; a recovery point is due once more is appended.
            recovery_point: Cell::new(log_end),
            background_flush: Cell::new(false),
            background_again: Cell::new(false),
            closed: Cell::new(false),
            sync_failed: Cell::new(false),
            producers: RefCell::new(producers),
            maintenance: FifoLock::default(),
            closing: Cell::new(false),
            first_dirty: Cell::new(opened.first_dirty.max(opened.log_start)),
            tombstone_due_ms: Cell::new(None),
            cleaner_fault: Cell::new(None),
            epochs: RefCell::new(epochs),
            epoch_file_lock: FifoLock::default(),
            truncations: Cell::new(0),
            leader_appends_from: Cell::new(i32::MIN),
        };
        // A crash between persisting a new log start and deleting the segments below it leaves
        // them behind; they go now.
        log.remove_segments_below_start().await?;
        Ok(Rc::new(log))
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn closed_error(&self) -> StorageError {
        StorageError::Closed {
            dir: self.dir.clone(),
        }
    }

    fn check_open(&self) -> Result<(), StorageError> {
        if self.closed.get() {
            return Err(self.closed_error());
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<(), StorageError> {
        self.check_open()?;
        if self.sync_failed.get() {
            return Err(StorageError::SyncFailed {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    fn active(&self) -> Result<Rc<Segment>, StorageError> {
        self.segments
            .borrow()
            .active()
            .ok_or_else(|| self.closed_error())
    }

    /// Appends one already-validated batch (see `validate_batch`): assigns baseOffset = log end
    /// offset and partitionLeaderEpoch in the written copy; with LogAppendTime also sets
    /// maxTimestamp = `now_ms` and the timestamp-type bit and recomputes the CRC. Rolls first if
    /// the active segment is non-empty and too big or too old. On a write error the segment is
    /// cut back, no offset is consumed, and the error is returned.
    pub async fn append(
        &self,
        batch: &[u8],
        leader_epoch: LeaderEpoch,
        now_ms: i64,
    ) -> Result<AppendInfo, StorageError> {
        // Single node: the high watermark follows the log end offset.
        self.append_with(batch, leader_epoch, now_ms, true).await
    }

    /// A replicated partition's leader appends: as `append`, but the high watermark stays where
    /// it is, now and when the batch becomes durable; replication moves it with
    /// `set_high_watermark` once the in-sync replicas hold the batch.
    pub async fn append_as_leader(
        &self,
        batch: &[u8],
        leader_epoch: LeaderEpoch,
        now_ms: i64,
    ) -> Result<AppendInfo, StorageError> {
        self.append_with(batch, leader_epoch, now_ms, false).await
    }

    /// `append`, optionally leaving the high watermark where it is (replication will advance it
    /// with `set_high_watermark` once followers have the batch).
    pub(crate) async fn append_with(
        &self,
        batch: &[u8],
        leader_epoch: LeaderEpoch,
        now_ms: i64,
        advance_high_watermark: bool,
    ) -> Result<AppendInfo, StorageError> {
        self.check_writable()?;
        let header = parse_single(batch)?;
        let len = batch.len() as u64;
        if len > BATCH_BYTES_MAX {
            return Err(StorageError::BatchTooLarge {
                len,
                max: BATCH_BYTES_MAX,
            });
        }
        let _permit = self.append_lock.lock().await;
        self.check_writable()?;
        if !advance_high_watermark && leader_epoch.0 < self.leader_appends_from.get() {
            return Err(StorageError::FencedLeaderEpoch {
                dir: self.dir.clone(),
                epoch: leader_epoch.0,
                current: self.leader_appends_from.get(),
            });
        }
        // Checked under the append lock, so pipelined batches of one producer are checked in the
        // order they are appended.
        let producer = (header.producer_id >= 0
            && header.producer_epoch >= 0
            && header.base_sequence >= 0
            && !header.is_control())
        .then(|| {
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence,
                last_sequence(header.base_sequence, header.last_offset_delta),
            )
        });
        if let Some((id, epoch, first_seq, last_seq)) = producer {
            if let SequenceVerdict::Duplicate(stored) = self
                .producers
                .borrow()
                .check(id, epoch, first_seq, last_seq)?
            {
                return Ok(AppendInfo {
                    base_offset: Offset(stored.first_offset),
                    last_offset: Offset(stored.last_offset),
                    log_append_time_ms: -1,
                    log_start_offset: Offset(self.log_start.get()),
                    duplicate: true,
                });
            }
        }
        let config = self.config.borrow().clone();
        if config.cleanup.compact {
            cleaner::check_keys(batch, &header)?;
        }
        let base_offset = self.log_end.get();
        let last_offset = base_offset + i64::from(header.last_offset_delta);
        // Before the batch, so that the checkpoint is never behind the log.
        self.assign_epochs(std::iter::once((leader_epoch.0, base_offset)))
            .await?;
        self.maybe_roll(len, last_offset, &config, now_ms).await?;
        let active = self.active()?;

        let log_append_time = config.timestamp_type == TimestampType::LogAppendTime;
        let mut first = batch.to_vec();
        assign_offset_and_epoch(&mut first, base_offset, leader_epoch.0);
        if log_append_time {
            set_log_append_time(&mut first, now_ms);
        }
        let stamped = BatchHeader::view(&first)
            .map(BatchHeader::info)
            .expect("parse_single checked that the batch holds a whole header");
        let mut stamped_header = [0u8; BATCH_HEADER_BYTES];
        stamped_header.copy_from_slice(&first[..BATCH_HEADER_BYTES]);
        let rest = |from: usize| -> Vec<u8> {
            let mut out = Vec::with_capacity(batch.len() - from);
            if from < BATCH_HEADER_BYTES {
                out.extend_from_slice(&stamped_header[from..]);
                out.extend_from_slice(&batch[BATCH_HEADER_BYTES..]);
            } else {
                out.extend_from_slice(&batch[from..]);
            }
            out
        };
        active
            .append_batch(first, &rest, &stamped, config.index_interval_clamped())
            .await?;
        self.record_appended(&active, &stamped, now_ms);
        self.hw_follows_appends.set(advance_high_watermark);
        // With `reads_durable_only` the high watermark follows the durable end instead.
        if advance_high_watermark && !config.reads_durable_only {
            self.advance_high_watermark(last_offset + 1);
        }
        Ok(AppendInfo {
            base_offset: Offset(base_offset),
            last_offset: Offset(last_offset),
            log_append_time_ms: if log_append_time { now_ms } else { -1 },
            log_start_offset: Offset(self.log_start.get()),
            duplicate: false,
        })
    }

    /// Bookkeeping after `stamped` (as stored) was written to `active`: log end offset, size,
    /// group-commit counters, maximum timestamp, batch ends above the high watermark, and the
    /// idempotent producer's state.
    fn record_appended(&self, active: &Segment, stamped: &BatchHeaderInfo, now_ms: i64) {
        let (base_offset, last_offset) = (stamped.base_offset, stamped.last_offset());
        assert!(last_offset + 1 > self.log_end.get(), "offsets only grow");
        self.log_end.set(last_offset + 1);
        self.append_event.notify(usize::MAX);
        self.size_bytes
            .set(self.size_bytes.get() + stamped.total_bytes());
        self.commit
            .on_append(u64::try_from(stamped.records_count).unwrap_or(1), now_ms);
        if self
            .max_timestamp
            .get()
            .is_none_or(|(_, ts)| stamped.max_timestamp > ts)
        {
            self.max_timestamp
                .set(Some((base_offset, stamped.max_timestamp)));
        }
        self.pending_ends.borrow_mut().push_back(BatchEnd {
            next_offset: last_offset + 1,
            segment_base: active.base_offset(),
            position: active.size(),
        });
        if stamped.producer_id >= 0
            && stamped.producer_epoch >= 0
            && stamped.base_sequence >= 0
            && !stamped.is_control()
        {
            let stored = BatchMeta {
                first_seq: stamped.base_sequence,
                last_seq: last_sequence(stamped.base_sequence, stamped.last_offset_delta),
                first_offset: base_offset,
                last_offset,
            };
            let id = stamped.producer_id;
            if let Some(evicted) =
                self.producers
                    .borrow_mut()
                    .record(id, stamped.producer_epoch, stored, now_ms)
            {
                tracing::debug!(dir = %self.dir.display(), evicted, producer = id, "producer state full: evicted the oldest producer");
            }
        }
    }

    /// Starts a new segment at the log end offset if the active one is non-empty and the batch
    /// would overflow it, it is older than `segment.ms`, or the batch's offsets would not fit
    /// its index.
    async fn maybe_roll(
        &self,
        len: u64,
        last_offset: i64,
        config: &LogConfig,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        let active = self.active()?;
        if active.is_empty() {
            return Ok(());
        }
        let too_big = active.size() + len > config.segment_bytes_clamped();
        let age_ms = now_ms.saturating_sub(active.created_ms());
        let too_old = age_ms >= 0 && age_ms as u64 >= config.roll_ms();
        let too_far = last_offset - active.base_offset() > RELATIVE_OFFSET_MAX;
        if !(too_big || too_old || too_far) {
            return Ok(());
        }
        active.cut_dirty_tail().await?;
        active.seal_time_index().await?;
        if let Err(e) = active.sync_all().await {
            self.on_sync_failed(&e).await;
            return Err(e);
        }
        self.mark_durable(active.next_offset(), active.base_offset(), active.size());
        let base = self.log_end.get();
        let segment = Segment::create(&self.dir, base, now_ms).await?;
        sync_dir(&self.dir).await?;
        tracing::debug!(dir = %self.dir.display(), base, too_big, too_old, too_far, "rolled segment");
        self.segments.borrow_mut().push(Rc::new(segment));
        if let Err(e) = active.close_index_files().await {
            // Synced already; a failed close loses nothing.
            tracing::warn!(segment = %active.paths.log.display(), error = %e, "closing index files");
        }
        // The producer state as of the new segment's base, so that reopening after a crash
        // rescans at most the active segment.
        self.write_producer_snapshot(base).await;
        // Everything before the new segment is durable: recovery need not look at it.
        let point = RecoveryPoint {
            offset: base,
            segment_base: base,
            position: 0,
            offset_entries: 0,
            time_entries: 0,
        };
        match write_recovery_point(&self.dir, point).await {
            Ok(()) => self.recovery_point.set(base),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "writing the recovery point");
            }
        }
        Ok(())
    }

    /// First offset of the log.
    pub fn log_start_offset(&self) -> Offset {
        Offset(self.log_start.get())
    }

    /// Next offset to assign.
    pub fn log_end_offset(&self) -> Offset {
        Offset(self.log_end.get())
    }

    /// Offset below which records may be read (== log end offset after each append on a single node).
    pub fn high_watermark(&self) -> Offset {
        Offset(self.high_watermark.get())
    }

    /// Moves the high watermark forward (for replication). Panics if `hw` is above the log end
    /// offset or below the current high watermark.
    pub fn set_high_watermark(&self, hw: Offset) {
        assert!(
            hw.0 <= self.log_end.get(),
            "high watermark {hw} above log end offset {}",
            self.log_end.get()
        );
        assert!(
            hw.0 >= self.high_watermark.get(),
            "high watermark moves only forward"
        );
        self.advance_high_watermark(hw.0);
    }

    fn advance_high_watermark(&self, hw: i64) {
        {
            let mut pending = self.pending_ends.borrow_mut();
            while let Some(end) = pending.front().copied() {
                if end.next_offset > hw {
                    break;
                }
                self.hw_mark.set((end.segment_base, end.position));
                pending.pop_front();
            }
        }
        if hw > self.high_watermark.get() {
            self.high_watermark.set(hw);
            self.hw_event.notify(usize::MAX);
        }
    }

    /// Byte position in `segment` that reads must not pass.
    fn read_limit(&self, segment: &Segment) -> u64 {
        let (hw_base, hw_position) = self.hw_mark.get();
        match segment.base_offset().cmp(&hw_base) {
            std::cmp::Ordering::Less => segment.size(),
            std::cmp::Ordering::Equal => hw_position.min(segment.size()),
            std::cmp::Ordering::Greater => 0,
        }
    }

    fn read_chunk_bytes(&self) -> usize {
        let interval = self.config.borrow().index_interval_clamped() as usize;
        (interval + READ_WALK_SLACK_BYTES).min(READ_WALK_CHUNK_BYTES_MAX)
    }

    fn out_of_range(&self, offset: Offset) -> StorageError {
        StorageError::OffsetOutOfRange {
            requested: offset.0,
            log_start: self.log_start.get(),
            log_end: self.log_end.get(),
        }
    }

    /// Reads whole batches starting with the one that holds `offset`, never past the high
    /// watermark, from one segment: at most `max_bytes` bytes, except that the first batch is
    /// returned whole if `min_one_batch` (KIP-74). Ok(None) when `offset` is at or above the high
    /// watermark (up to the log end offset) or when no whole batch fits and `min_one_batch` is
    /// false. Err(OffsetOutOfRange) below the log start or above the log end offset.
    pub async fn read(
        &self,
        offset: Offset,
        max_bytes: u32,
        min_one_batch: bool,
    ) -> Result<Option<ReadSlice>, StorageError> {
        self.read_up_to(offset, max_bytes, min_one_batch, false)
            .await
    }

    /// `read` for a follower replica: up to the log end offset, past the high watermark (the
    /// leader sends followers what it has appended, durable or not).
    pub async fn read_to_log_end(
        &self,
        offset: Offset,
        max_bytes: u32,
    ) -> Result<Option<ReadSlice>, StorageError> {
        self.read_up_to(offset, max_bytes, true, true).await
    }

    async fn read_up_to(
        &self,
        offset: Offset,
        max_bytes: u32,
        min_one_batch: bool,
        to_log_end: bool,
    ) -> Result<Option<ReadSlice>, StorageError> {
        self.check_open()?;
        if offset.0 < self.log_start.get() || offset.0 > self.log_end.get() {
            return Err(self.out_of_range(offset));
        }
        let end = if to_log_end {
            self.log_end.get()
        } else {
            self.high_watermark.get()
        };
        if offset.0 >= end {
            return Ok(None);
        }
        let chunk_bytes = self.read_chunk_bytes();
        let mut segment = self
            .segments
            .borrow()
            .floor(offset.0)
            .ok_or_else(|| self.out_of_range(offset))?;
        // Each round moves to a later segment or returns, so it runs at most once per segment.
        loop {
            if offset.0 >= segment.next_offset() {
                let next = self.segments.borrow().after(segment.base_offset());
                match next {
                    Some(next) => {
                        segment = next;
                        continue;
                    }
                    None => return Ok(None),
                }
            }
            let limit = if to_log_end {
                segment.size()
            } else {
                self.read_limit(&segment)
            };
            let range = segment
                .read_range(offset.0, max_bytes, min_one_batch, limit, chunk_bytes)
                .await?;
            let r = match range {
                RangeRead::Found(r) => r,
                RangeRead::TooLarge => return Ok(None),
                RangeRead::NotHere => {
                    // Compaction may have removed the batches at the end of a closed segment:
                    // the offset then lives in a later segment.
                    let next = (limit >= segment.size())
                        .then(|| self.segments.borrow().after(segment.base_offset()))
                        .flatten();
                    match next {
                        Some(next) => {
                            segment = next;
                            continue;
                        }
                        None => return Ok(None),
                    }
                }
            };
            return Ok(Some(ReadSlice {
                fd: segment.fd(),
                position: r.position,
                len: u32::try_from(r.len).expect("a range is at most one segment"),
                first_offset: Offset(r.first_offset),
            }));
        }
    }

    /// First offset whose timestamp is >= `timestamp`, with that timestamp (Kafka ListOffsets
    /// by timestamp): exact per record for uncompressed CreateTime batches, the batch's base
    /// offset and maxTimestamp otherwise. None if no batch below the high watermark qualifies.
    pub async fn offset_for_timestamp(
        &self,
        timestamp: i64,
    ) -> Result<Option<(Offset, i64)>, StorageError> {
        self.check_open()?;
        let chunk_bytes = self.read_chunk_bytes();
        let segments = self.segments.borrow().all();
        for segment in segments {
            let max = segment.index.borrow().max_timestamp();
            if max.is_none_or(|m| m.timestamp < timestamp) {
                continue;
            }
            let limit = self.read_limit(&segment);
            if limit == 0 {
                break;
            }
            if let Some((offset, ts)) = segment
                .find_timestamp(timestamp, limit, chunk_bytes)
                .await?
            {
                return Ok(Some((Offset(offset), ts)));
            }
            if limit < segment.size() {
                break;
            }
        }
        Ok(None)
    }

    /// Largest batch maxTimestamp in the log and the base offset of the first batch carrying it.
    pub fn max_timestamp(&self) -> Option<(Offset, i64)> {
        self.max_timestamp
            .get()
            .map(|(offset, ts)| (Offset(offset), ts))
    }

    /// A listener that fires on the next advance of the high watermark. Create it before
    /// checking the high watermark to not miss an advance.
    pub fn listen(&self) -> EventListener {
        self.hw_event.listen()
    }

    /// A listener that fires on the next append. Create it before checking
    /// `log_end_offset` to not miss one.
    pub fn listen_append(&self) -> EventListener {
        self.append_event.listen()
    }

    /// Replaces the configuration; takes effect from the next append.
    pub fn update_config(&self, config: LogConfig) {
        *self.config.borrow_mut() = config;
    }

    /// The current configuration.
    pub fn config(&self) -> LogConfig {
        self.config.borrow().clone()
    }

    /// Bytes in all segment files.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes.get()
    }

    /// Number of fdatasyncs `flush` has started (shared ones count once).
    pub fn flush_count(&self) -> u64 {
        self.commit.syncs()
    }

    /// Number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.borrow().len()
    }

    /// Whether `flush.messages` or `flush.ms` asks for a flush at `now_ms`.
    pub fn needs_flush(&self, now_ms: i64) -> bool {
        let config = self.config.borrow();
        self.commit
            .needs_flush(now_ms, config.flush_messages, config.flush_ms)
    }

    /// Clean shutdown: waits for appends in flight, flushes, writes the clean-shutdown marker,
    /// closes the files. The log is unusable afterwards.
    pub async fn close(&self) -> Result<(), StorageError> {
        if self.closed.get() {
            return Ok(());
        }
        self.closing.set(true);
        let _maintenance = self.maintenance.lock().await;
        let _permit = self.append_lock.lock().await;
        if self.closed.get() {
            return Ok(());
        }
        let marked = self.write_clean_marker().await;
        self.closed.set(true);
        let closed = self.close_segments().await;
        marked.and(closed)
    }

    async fn write_clean_marker(&self) -> Result<(), StorageError> {
        if self.sync_failed.get() {
            return Err(StorageError::SyncFailed {
                dir: self.dir.clone(),
            });
        }
        self.flush().await?;
        self.write_producer_snapshot(self.log_end.get()).await;
        let active = self.active()?;
        active.seal().await?;
        let marker = CleanShutdown {
            log_end_offset: self.log_end.get(),
            active_base: active.base_offset(),
            active_size: active.size(),
        };
        write_clean_shutdown(&self.dir, marker).await
    }

    async fn close_segments(&self) -> Result<(), StorageError> {
        let segments = self.segments.borrow_mut().take_all();
        let mut result = Ok(());
        for segment in segments {
            // A read in flight may still hold the segment; its files then close when it ends.
            if let Ok(segment) = Rc::try_unwrap(segment) {
                let closed = segment.close().await;
                if result.is_ok() {
                    result = closed;
                }
            }
        }
        result
    }

    /// Closes the log (without the clean-shutdown marker) and removes its directory.
    pub async fn delete(&self) -> Result<(), StorageError> {
        self.closing.set(true);
        let _maintenance = self.maintenance.lock().await;
        let _permit = self.append_lock.lock().await;
        self.closed.set(true);
        let closed = self.close_segments().await;
        if let Err(e) = closed {
            tracing::warn!(dir = %self.dir.display(), error = %e, "error closing files of a deleted log");
        }
        // Listing and rmdir have no io_uring operations; deletion is rare.
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(std_io_err("list", &self.dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| std_io_err("list", &self.dir, e))?;
            remove_file(&entry.path()).await?;
        }
        std::fs::remove_dir(&self.dir).map_err(|e| std_io_err("remove dir", &self.dir, e))?;
        if let Some(parent) = self.dir.parent() {
            sync_dir(parent).await?;
        }
        Ok(())
    }
}

mod durability;
mod epochs;
use epochs::load_epoch_cache;
mod follower;
mod producer_recovery;
use producer_recovery::load_producer_state;

mod retention;

mod cleaner;
pub(crate) use cleaner::finish_swap;
pub use cleaner::{CleanReport, CleanerFault, CleanerStep};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod producer_tests;

#[cfg(test)]
mod retention_tests;

#[cfg(test)]
mod cleaner_tests;

#[cfg(test)]
mod epoch_tests;

#[cfg(test)]
mod follower_tests;
