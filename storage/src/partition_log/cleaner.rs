//! The cleaner of compacted logs (`cleanup.policy=compact`): keeps the newest record of each key.
//!
//! A pass, as in Kafka's log cleaner:
//! 1. The *cleanable range* is the closed segments wholly below the high watermark, up to the
//!    first one holding records newer than `min.compaction.lag.ms`. Its *dirty* part starts at
//!    the first offset not compacted yet (`cleaner-offset`). The pass runs when dirty bytes are
//!    at least `min.cleanable.dirty.ratio` of the range, or a dirty record is older than
//!    `max.compaction.lag.ms`.
//! 2. A map of key -> newest offset is built over the dirty segments (as many whole segments as
//!    `CLEANER_KEY_MAP_BYTES_MAX` allows).
//! 3. Every segment from the log start to the end of the mapped part is rewritten, in groups of
//!    consecutive segments whose sizes add up to at most `segment.bytes`. A record survives if no
//!    newer record of its key is in the map; records without a key go; a tombstone goes once its
//!    timestamp is older than `delete.retention.ms`. A batch keeps its header (base offset, last
//!    offset delta, producer id, epoch and sequence), so offsets never change and idempotent
//!    producers' sequence ranges stay as they were; a batch left without records goes.
//!    Compressed batches are decompressed and recompressed with their codec.
//! 4. Each group becomes one segment named after the group's base offset, swapped in crash-safe:
//!    the compacted copy is written as `*.cleaned` files and fdatasync'ed; `clean-swap` (the
//!    replaced range) is written atomically, which commits the swap; the replaced segments'
//!    files are deleted; the `.cleaned` files are renamed over the first segment's names; the
//!    directory is fsync'ed; `clean-swap` is removed. Opening a log finishes a committed swap
//!    and deletes the `.cleaned` files of one that was not committed, so a crash at any step
//!    leaves either the old or the new segments, never a mix.
//!
//! The cleaner never holds the append lock: it reads closed segments, which appends do not
//! touch, and the in-memory swap is one synchronous step. It yields to other tasks between
//! batches.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use glommio::io::BufferedFile;

use super::PartitionLog;
use crate::batch::{reseal, BatchError, BatchHeaderInfo, BATCH_HEADER_BYTES};
use crate::checkpoint::{remove_clean_swap, write_clean_swap, write_cleaner_offset};
use crate::codec::{self, CODEC_NONE};
use crate::error::StorageError;
use crate::file_io::{
    create_rw, fdatasync, io_err, remove_file_if_exists, rename, sync_dir, write_small_at,
};
use crate::limits::{
    CLEANER_BATCH_DECOMPRESSED_BYTES_MAX, CLEANER_KEY_MAP_BYTES_MAX,
    CLEANER_KEY_MAP_ENTRY_OVERHEAD_BYTES, CLEANER_WRITE_CHUNK_BYTES, READ_WALK_CHUNK_BYTES_MAX,
    RELATIVE_OFFSET_MAX,
};
use crate::records::{record_spans, RecordSpan};
use crate::segment::{Segment, SegmentPaths};
use crate::segment_index::{encode_offsets, encode_times, SegmentIndex};
use crate::segment_reader::BatchWalker;
use crate::types::Offset;

/// The steps of a segment swap, in order; a fault hook can stop a pass after any of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CleanerStep {
    /// The `.cleaned` files are written and synced (not committed yet).
    CleanedWritten,
    /// `clean-swap` is written: the swap is committed.
    SwapCommitted,
    /// The replaced segments' files are deleted.
    OldRemoved,
    /// The `.cleaned` files carry their final names (`clean-swap` still present).
    Renamed,
}

impl CleanerStep {
    /// Every step, in order.
    pub const ALL: [CleanerStep; 4] = [
        CleanerStep::CleanedWritten,
        CleanerStep::SwapCommitted,
        CleanerStep::OldRemoved,
        CleanerStep::Renamed,
    ];

    /// The step's name (as in the broker's `test.fault.cleaner.abort.at` setting).
    pub fn name(self) -> &'static str {
        match self {
            CleanerStep::CleanedWritten => "cleaned-written",
            CleanerStep::SwapCommitted => "swap-committed",
            CleanerStep::OldRemoved => "old-removed",
            CleanerStep::Renamed => "renamed",
        }
    }

    /// The step with this name.
    pub fn parse(name: &str) -> Option<CleanerStep> {
        CleanerStep::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A test hook: what happens when a pass reaches a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CleanerFault {
    /// The pass returns `StorageError::InjectedFault` there and leaves the files as they are;
    /// the log must then be dropped and reopened, as after a crash.
    Fail(CleanerStep),
    /// The process aborts there (for crash tests of the whole broker).
    Abort(CleanerStep),
}

/// What one compaction pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanReport {
    /// Segments rewritten (before merging).
    pub segments_cleaned: usize,
    /// Bytes of those segments before.
    pub bytes_before: u64,
    /// Bytes of the segments that replaced them.
    pub bytes_after: u64,
    /// Records removed.
    pub records_removed: u64,
    /// The first offset not compacted after the pass.
    pub first_dirty: i64,
}

fn check_fault(hook: Option<CleanerFault>, step: CleanerStep) -> Result<(), StorageError> {
    match hook {
        Some(CleanerFault::Fail(at)) if at == step => {
            Err(StorageError::InjectedFault { step: step.name() })
        }
        Some(CleanerFault::Abort(at)) if at == step => {
            eprintln!(
                "strom: test fault: aborting after cleaner step {}",
                step.name()
            );
            std::process::abort();
        }
        _ => Ok(()),
    }
}

/// The records section of a batch (decompressed) and where each record lies in it.
pub(crate) fn batch_records<'a>(
    batch: &'a [u8],
    header: &BatchHeaderInfo,
) -> Result<(Cow<'a, [u8]>, Vec<RecordSpan>), BatchError> {
    let section = &batch[BATCH_HEADER_BYTES..];
    let codec = header.compression_codec();
    let records: Cow<'a, [u8]> = if codec == CODEC_NONE {
        Cow::Borrowed(section)
    } else {
        Cow::Owned(
            codec::decompress(codec, section, CLEANER_BATCH_DECOMPRESSED_BYTES_MAX)
                .map_err(|e| BatchError::RecordsUnreadable(e.to_string()))?,
        )
    };
    let spans = record_spans(&records, header.records_count)
        .ok_or_else(|| BatchError::RecordsUnreadable("records do not parse".to_string()))?;
    Ok((records, spans))
}

/// For appends to compacted logs: every record of a (non-control) batch must have a key.
pub(crate) fn check_keys(batch: &[u8], header: &BatchHeaderInfo) -> Result<(), BatchError> {
    if header.is_control() {
        return Ok(());
    }
    let (_, spans) = batch_records(batch, header)?;
    let indexes: Vec<i32> = (0..)
        .zip(&spans)
        .filter(|(_, s)| s.key.is_none())
        .map(|(i, _)| i)
        .collect();
    if indexes.is_empty() {
        Ok(())
    } else {
        Err(BatchError::KeylessRecords { indexes })
    }
}

/// Newest offset of each key in the dirty segments, with a memory budget.
#[derive(Default)]
struct KeyMap {
    newest: HashMap<Box<[u8]>, i64>,
    bytes: usize,
}

impl KeyMap {
    fn insert(&mut self, key: &[u8], offset: i64) {
        match self.newest.get_mut(key) {
            Some(stored) => *stored = offset,
            None => {
                self.bytes += key.len() + CLEANER_KEY_MAP_ENTRY_OVERHEAD_BYTES;
                self.newest.insert(key.into(), offset);
            }
        }
    }

    fn newest(&self, key: &[u8]) -> Option<i64> {
        self.newest.get(key).copied()
    }

    fn full(&self) -> bool {
        self.bytes >= CLEANER_KEY_MAP_BYTES_MAX
    }
}

/// What decides whether a record survives a pass.
struct Retain<'a> {
    map: &'a KeyMap,
    /// Tombstones with a timestamp below this go.
    tombstone_horizon_ms: i64,
    /// `delete.retention.ms`.
    delete_retention_ms: i64,
}

impl Retain<'_> {
    fn keeps(
        &self,
        records: &[u8],
        span: &RecordSpan,
        base_offset: i64,
        timestamp_ms: i64,
    ) -> bool {
        let Some((from, to)) = span.key else {
            return false;
        };
        let offset = base_offset + span.offset_delta;
        if self
            .map
            .newest(&records[from..to])
            .is_some_and(|newest| newest > offset)
        {
            return false;
        }
        !(span.tombstone && timestamp_ms < self.tombstone_horizon_ms)
    }
}

/// The compacted copy of one group of segments, being written as `*.cleaned` files.
struct CleanedSegment {
    paths: SegmentPaths,
    log: BufferedFile,
    base: i64,
    /// Bytes written to the file so far.
    written: u64,
    buf: Vec<u8>,
    index: SegmentIndex,
    interval: u32,
}

impl CleanedSegment {
    async fn create(dir: &Path, base: i64, interval: u32) -> Result<CleanedSegment, StorageError> {
        let paths = SegmentPaths::cleaned(dir, base);
        let log = create_rw(&paths.log).await?;
        Ok(CleanedSegment {
            paths,
            log,
            base,
            written: 0,
            buf: Vec::with_capacity(CLEANER_WRITE_CHUNK_BYTES),
            index: SegmentIndex::default(),
            interval,
        })
    }

    fn size(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    async fn push(&mut self, batch: &[u8], header: &BatchHeaderInfo) -> Result<(), StorageError> {
        let update = self.index.plan_batch(
            (header.base_offset - self.base) as u32,
            self.size() as u32,
            header.max_timestamp,
            self.interval,
        );
        self.index.apply(&update);
        if self.buf.len() + batch.len() > CLEANER_WRITE_CHUNK_BYTES {
            self.write_buffered().await?;
        }
        if batch.len() > CLEANER_WRITE_CHUNK_BYTES {
            write_small_at(&self.log, &self.paths.log, self.written, batch).await?;
            self.written += batch.len() as u64;
        } else {
            self.buf.extend_from_slice(batch);
        }
        Ok(())
    }

    async fn write_buffered(&mut self) -> Result<(), StorageError> {
        if !self.buf.is_empty() {
            write_small_at(&self.log, &self.paths.log, self.written, &self.buf).await?;
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes the rest, the index files, and syncs all three files.
    async fn finish(mut self) -> Result<(SegmentIndex, u64), StorageError> {
        self.write_buffered().await?;
        if let Some(entry) = self.index.plan_seal() {
            self.index.push_time(entry);
        }
        let synced = fdatasync(&self.log, &self.paths.log).await;
        let closed = self
            .log
            .close()
            .await
            .map_err(|e| io_err("close", &self.paths.log, e));
        synced?;
        closed?;
        write_synced(&self.paths.index, &encode_offsets(self.index.offsets())).await?;
        write_synced(&self.paths.time_index, &encode_times(self.index.times())).await?;
        Ok((self.index, self.written))
    }

    async fn abandon(self) {
        let _ = self.log.close().await;
        remove_cleaned(&self.paths).await;
    }
}

/// Creates `path` holding `data`, fdatasync'ed.
async fn write_synced(path: &Path, data: &[u8]) -> Result<(), StorageError> {
    let file = create_rw(path).await?;
    let written = async {
        write_small_at(&file, path, 0, data).await?;
        fdatasync(&file, path).await
    }
    .await;
    let closed = file.close().await.map_err(|e| io_err("close", path, e));
    written.and(closed)
}

async fn remove_cleaned(paths: &SegmentPaths) {
    for path in paths.all() {
        if let Err(e) = remove_file_if_exists(path).await {
            tracing::warn!(path = %path.display(), error = %e, "removing an abandoned compacted file");
        }
    }
}

/// Steps 3-5 of a committed swap of the segments with bases in [`base`, `end`) (listed in
/// `bases`, possibly with others) by the `.cleaned` files of `base`. Idempotent, so opening a
/// log after a crash at any step runs it again to the end.
pub(crate) async fn finish_swap(
    dir: &Path,
    base: i64,
    end: i64,
    bases: &[i64],
    hook: Option<CleanerFault>,
) -> Result<(), StorageError> {
    for &old in bases.iter().filter(|&&b| b > base && b < end) {
        let paths = SegmentPaths::new(dir, old);
        // The `.log` first: index files without a `.log` are removed on open anyway.
        for path in paths.all().into_iter().rev() {
            remove_file_if_exists(path).await?;
        }
    }
    check_fault(hook, CleanerStep::OldRemoved)?;
    let cleaned = SegmentPaths::cleaned(dir, base);
    let target = SegmentPaths::new(dir, base);
    for (from, to) in cleaned.all().into_iter().zip(target.all()) {
        // Only this function renames `.cleaned` files: one that is missing was renamed by an
        // earlier, interrupted run.
        if from.exists() {
            rename(from, to).await?;
        }
    }
    sync_dir(dir).await?;
    check_fault(hook, CleanerStep::Renamed)?;
    remove_clean_swap(dir).await
}

/// A closed segment and where it ends (the next segment's base offset).
type Bounded = (Rc<Segment>, i64);

impl PartitionLog {
    /// Sets (or clears) the cleaner's fault hook. For tests.
    pub fn set_cleaner_fault(&self, fault: Option<CleanerFault>) {
        self.cleaner_fault.set(fault);
    }

    /// First offset the cleaner has not compacted yet.
    pub fn first_dirty_offset(&self) -> Offset {
        Offset(self.first_dirty.get())
    }

    /// Runs one compaction pass if the log is compacted and the pass is due (see the module
    /// comment). Ok(None) when there was nothing to do.
    pub async fn clean(&self, now_ms: i64) -> Result<Option<CleanReport>, StorageError> {
        self.check_writable()?;
        let config = self.config();
        if !config.cleanup.compact {
            return Ok(None);
        }
        let _maintenance = self.maintenance.lock().await;
        self.check_writable()?;
        let Some((range, dirty_from)) = self.cleanable(now_ms) else {
            return Ok(None);
        };
        // usize::MAX: no dirty segment, only tombstones to drop from the whole range.
        let dirty_from = dirty_from.min(range.len());
        let first_dirty = self.first_dirty.get().max(self.log_start.get());
        let map = self
            .build_key_map(&range[dirty_from..], first_dirty)
            .await?;
        let mapped_end = dirty_from + map.1;
        let map = map.0;
        let Some(&(_, end)) = mapped_end.checked_sub(1).and_then(|i| range.get(i)) else {
            return Ok(None);
        };
        let delete_retention_ms = config.delete_retention_ms.min(i64::MAX as u64) as i64;
        let retain = Retain {
            map: &map,
            tombstone_horizon_ms: now_ms.saturating_sub(delete_retention_ms),
            delete_retention_ms,
        };
        self.tombstone_due_ms.set(None);
        let mut report = CleanReport::default();
        let segment_bytes = config.segment_bytes_clamped();
        let interval = config.index_interval_clamped();
        let mut group: Vec<Bounded> = Vec::new();
        let mut group_bytes = 0u64;
        for (segment, seg_end) in range[..mapped_end].iter().cloned() {
            let fits = group.first().is_none_or(|(first, _)| {
                group_bytes + segment.size() <= segment_bytes
                    && seg_end - 1 - first.base_offset() <= RELATIVE_OFFSET_MAX
            });
            if !fits {
                self.clean_group(&group, &retain, interval, &mut report)
                    .await?;
                group.clear();
                group_bytes = 0;
            }
            group_bytes += segment.size();
            group.push((segment, seg_end));
        }
        self.clean_group(&group, &retain, interval, &mut report)
            .await?;
        write_cleaner_offset(&self.dir, end).await?;
        self.first_dirty.set(end);
        report.first_dirty = end;
        tracing::info!(dir = %self.dir.display(), segments = report.segments_cleaned,
            bytes_before = report.bytes_before, bytes_after = report.bytes_after,
            records_removed = report.records_removed, first_dirty = end, "compacted log");
        Ok(Some(report))
    }

    /// The cleanable closed segments with their ends, and the index of the first dirty one;
    /// None if no pass is due.
    fn cleanable(&self, now_ms: i64) -> Option<(Vec<Bounded>, usize)> {
        let config = self.config.borrow().clone();
        let all = self.segments.borrow().all();
        let hw = self.high_watermark.get();
        let first_dirty = self.first_dirty.get().max(self.log_start.get());
        let lag_horizon =
            now_ms.saturating_sub(config.min_compaction_lag_ms.min(i64::MAX as u64) as i64);
        let mut range: Vec<Bounded> = Vec::new();
        for pair in all.windows(2) {
            let (segment, end) = (&pair[0], pair[1].base_offset());
            if end > hw {
                break;
            }
            let newest = segment.index.borrow().max_timestamp().map(|t| t.timestamp);
            if end > first_dirty
                && config.min_compaction_lag_ms > 0
                && newest.is_some_and(|ts| ts > lag_horizon)
            {
                break;
            }
            range.push((Rc::clone(segment), end));
        }
        // With nothing dirty, a pass still runs once a kept tombstone may go.
        let tombstones_due = self.tombstone_due_ms.get().is_some_and(|due| now_ms >= due);
        let dirty_from = match range.iter().position(|(_, end)| *end > first_dirty) {
            Some(i) => i,
            None if tombstones_due && !range.is_empty() => return Some((range, usize::MAX)),
            None => return None,
        };
        let dirty_bytes: u64 = range[dirty_from..].iter().map(|(s, _)| s.size()).sum();
        let total_bytes: u64 = range.iter().map(|(s, _)| s.size()).sum();
        let ratio = if total_bytes == 0 {
            1.0
        } else {
            dirty_bytes as f64 / total_bytes as f64
        };
        let overdue = config.max_compaction_lag_ms < i64::MAX as u64 && {
            let horizon = now_ms.saturating_sub(config.max_compaction_lag_ms as i64);
            range[dirty_from..].iter().any(|(s, _)| {
                s.index
                    .borrow()
                    .times()
                    .first()
                    .is_some_and(|t| t.timestamp < horizon)
            })
        };
        (ratio >= config.min_cleanable_dirty_ratio || overdue).then_some((range, dirty_from))
    }

    /// The key map over `dirty` from `first_dirty` on: as many whole segments as the budget
    /// allows (at least one). Returns it with the number of segments it covers.
    async fn build_key_map(
        &self,
        dirty: &[Bounded],
        first_dirty: i64,
    ) -> Result<(KeyMap, usize), StorageError> {
        let mut map = KeyMap::default();
        let mut covered = 0;
        for (segment, _) in dirty {
            if covered > 0 && map.full() {
                break;
            }
            let mut walker =
                BatchWalker::new(segment, 0, segment.size(), READ_WALK_CHUNK_BYTES_MAX, false);
            while let Some((header, bytes)) = walker.next_with_bytes().await? {
                if header.last_offset() < first_dirty || header.is_control() {
                    continue;
                }
                // A batch whose records cannot be read is kept whole (see `rewrite`), so its
                // keys are unknown: older records of those keys are kept too.
                if let Ok((records, spans)) = batch_records(bytes, &header) {
                    for span in &spans {
                        if let Some((from, to)) = span.key {
                            map.insert(&records[from..to], header.base_offset + span.offset_delta);
                        }
                    }
                }
                glommio::yield_if_needed().await;
            }
            covered += 1;
        }
        Ok((map, covered))
    }

    /// Compacts one group of consecutive closed segments into one and swaps it in.
    async fn clean_group(
        &self,
        group: &[Bounded],
        retain: &Retain<'_>,
        interval: u32,
        report: &mut CleanReport,
    ) -> Result<(), StorageError> {
        let (Some((first, _)), Some((_, end))) = (group.first(), group.last()) else {
            return Ok(());
        };
        let (base, end) = (first.base_offset(), *end);
        let mut out = CleanedSegment::create(&self.dir, base, interval).await?;
        let mut removed = 0u64;
        let mut changed = group.len() > 1;
        let mut bytes_before = 0;
        for (segment, _) in group {
            bytes_before += segment.size();
            let mut walker =
                BatchWalker::new(segment, 0, segment.size(), READ_WALK_CHUNK_BYTES_MAX, false);
            loop {
                if self.closing.get() {
                    out.abandon().await;
                    return Err(self.closed_error());
                }
                let step = walker.next_with_bytes().await;
                let (header, bytes) = match step {
                    Ok(Some(batch)) => batch,
                    Ok(None) => break,
                    Err(e) => {
                        out.abandon().await;
                        return Err(e);
                    }
                };
                let kept = rewrite(bytes, &header, retain);
                if let Some(due) = kept.tombstone_due_ms {
                    let earliest = self.tombstone_due_ms.get().map_or(due, |d| d.min(due));
                    self.tombstone_due_ms.set(Some(earliest));
                }
                removed += u64::from(kept.removed);
                changed |= kept.removed > 0;
                let pushed = match &kept.batch {
                    Some(Cow::Borrowed(b)) => out.push(b, &header).await,
                    Some(Cow::Owned(b)) => out.push(b, &header).await,
                    None => Ok(()),
                };
                if let Err(e) = pushed {
                    out.abandon().await;
                    return Err(e);
                }
                glommio::yield_if_needed().await;
            }
        }
        if !changed {
            // Nothing to remove: keep the segment as it is.
            out.abandon().await;
            return Ok(());
        }
        let paths = out.paths.clone();
        let (index, size) = match out.finish().await {
            Ok(done) => done,
            Err(e) => {
                remove_cleaned(&paths).await;
                return Err(e);
            }
        };
        let hook = self.cleaner_fault.get();
        check_fault(hook, CleanerStep::CleanedWritten)?;
        if self.closing.get() {
            remove_cleaned(&paths).await;
            return Err(self.closed_error());
        }
        write_clean_swap(&self.dir, base, end).await?;
        check_fault(hook, CleanerStep::SwapCommitted)?;
        let bases: Vec<i64> = group.iter().map(|(s, _)| s.base_offset()).collect();
        finish_swap(&self.dir, base, end, &bases, hook).await?;

        let segment = Segment::open(&self.dir, base, 0).await?;
        *segment.index.borrow_mut() = index;
        segment.set_next_offset(end);
        segment.close_index_files().await?;
        let old = self.segments.borrow_mut().replace(Rc::new(segment), end);
        self.size_bytes
            .set(self.size_bytes.get() - bytes_before + size);
        for segment in old {
            if let Ok(segment) = Rc::try_unwrap(segment) {
                if let Err(e) = segment.close().await {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "closing a replaced segment");
                }
            }
        }
        report.segments_cleaned += group.len();
        report.bytes_before += bytes_before;
        report.bytes_after += size;
        report.records_removed += removed;
        Ok(())
    }
}

/// A batch after compaction: the bytes to keep (None: the whole batch goes) and how many of its
/// records were removed.
struct Rewritten<'a> {
    batch: Option<Cow<'a, [u8]>>,
    removed: u32,
    /// When the earliest tombstone kept in the batch may go.
    tombstone_due_ms: Option<i64>,
}

/// Applies `retain` to the records of one batch. Control batches and batches whose records
/// cannot be read stay as they are.
fn rewrite<'a>(batch: &'a [u8], header: &BatchHeaderInfo, retain: &Retain<'_>) -> Rewritten<'a> {
    let unchanged = Rewritten {
        batch: Some(Cow::Borrowed(batch)),
        removed: 0,
        tombstone_due_ms: None,
    };
    if header.is_control() {
        return unchanged;
    }
    let Ok((records, spans)) = batch_records(batch, header) else {
        tracing::warn!(
            base_offset = header.base_offset,
            "keeping a batch whose records cannot be read"
        );
        return unchanged;
    };
    let log_append_time = header.timestamp_type() == crate::config::TimestampType::LogAppendTime;
    let mut tombstone_due_ms: Option<i64> = None;
    let kept: Vec<&RecordSpan> = spans
        .iter()
        .filter(|span| {
            let ts = if log_append_time {
                header.max_timestamp
            } else {
                header.base_timestamp.saturating_add(span.timestamp_delta)
            };
            let keep = retain.keeps(&records, span, header.base_offset, ts);
            if keep && span.tombstone {
                let due = ts.saturating_add(retain.delete_retention_ms);
                tombstone_due_ms = Some(tombstone_due_ms.map_or(due, |d| d.min(due)));
            }
            keep
        })
        .collect();
    let removed = (spans.len() - kept.len()) as u32;
    if removed == 0 {
        return Rewritten {
            tombstone_due_ms,
            ..unchanged
        };
    }
    if kept.is_empty() {
        return Rewritten {
            batch: None,
            removed,
            tombstone_due_ms,
        };
    }
    let mut section = Vec::with_capacity(records.len());
    for span in &kept {
        section.extend_from_slice(&records[span.start..span.end]);
    }
    let codec = header.compression_codec();
    let section = match codec::compress(codec, &section) {
        Ok(packed) => packed,
        Err(e) => {
            tracing::warn!(base_offset = header.base_offset, error = %e, "keeping a batch that does not recompress");
            return unchanged;
        }
    };
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + section.len());
    out.extend_from_slice(&batch[..BATCH_HEADER_BYTES]);
    out.extend_from_slice(&section);
    reseal(&mut out, kept.len() as i32);
    Rewritten {
        batch: Some(Cow::Owned(out)),
        removed,
        tombstone_due_ms,
    }
}
