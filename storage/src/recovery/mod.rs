//! Opening a partition directory: listing segments, loading their indexes, and recovering the
//! active segment after an unclean shutdown.
//!
//! Rules (also in docs/on_disk_format.md):
//! - closed segments trust their index files, which were fdatasynced when the segment rolled;
//!   an index file that is missing, of a bad length, or out of bounds is rebuilt by walking the
//!   batch headers;
//! - the active segment is trusted as is after a clean shutdown whose marker matches the files;
//!   otherwise only what the recovery point (`recovery-point`) names as durable is trusted: the
//!   first bytes of the `.log` and the first entries of its index files. Recovery restarts from
//!   the last durable offset index entry at which a batch validates (from 0 if none, or if the
//!   recovery point lies in an earlier segment), validates every batch from there (header,
//!   length, CRC-32C, contiguous offsets), and cuts the `.log` and the indexes at the first bad
//!   byte. Bad bytes inside the durable part are corruption, reported, never cut;
//! - after recovering, the active segment is fdatasynced and a new recovery point is written,
//!   so that what the log then serves is durable.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::checkpoint::{
    read_clean_shutdown, read_clean_swap, read_cleaner_offset, read_log_start, read_recovery_point,
    remove_clean_shutdown, write_log_start, write_recovery_point, CleanShutdown, RecoveryPoint,
    CLEAN_SHUTDOWN_FILE,
};
use crate::config::LogConfig;
use crate::error::StorageError;
use crate::file_io::{
    file_size, read_at, remove_file, std_io_err, sync_dir, truncate, write_small_at, TMP_SUFFIX,
};
use crate::limits::{
    RECOVERY_CHUNK_BYTES, RECOVERY_PROBE_CHUNK_BYTES, RELATIVE_OFFSET_MAX, SEGMENT_OPEN_CONCURRENCY,
};
use crate::partition_log::finish_swap;
use crate::segment::CLEANED_SUFFIX;
use crate::segment::{parse_file_name, Segment, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};
use crate::segment_index::{
    decode_offsets, decode_times, encode_offsets, encode_times, times_valid, valid_offsets_prefix,
    SegmentIndex,
};
use crate::segment_reader::{BatchWalker, WalkStep};
use crate::segment_set::SegmentSet;

/// A log directory after opening.
pub(crate) struct OpenedLog {
    /// Its segments, the last one active.
    pub segments: SegmentSet,
    /// The log start offset.
    pub log_start: i64,
    /// The cleaner's first dirty offset (the log start if never cleaned).
    pub first_dirty: i64,
}

/// What the directory listing found.
#[derive(Default)]
struct Listing {
    bases: Vec<i64>,
    has_marker: bool,
}

/// Lists segment base offsets, deletes leftovers of interrupted atomic writes and index files
/// whose `.log` is gone.
async fn list_dir(dir: &Path) -> Result<Listing, StorageError> {
    // Directory listing has no io_uring operation; this runs once per open, not per request.
    let entries = std::fs::read_dir(dir).map_err(|e| std_io_err("list", dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| std_io_err("list", dir, e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    let mut listing = Listing::default();
    let mut stray: Vec<PathBuf> = Vec::new();
    for name in &names {
        if let Some(base) = parse_file_name(name, LOG_SUFFIX) {
            listing.bases.push(base);
        } else if name == CLEAN_SHUTDOWN_FILE {
            listing.has_marker = true;
        } else if name.ends_with(TMP_SUFFIX) || name.ends_with(CLEANED_SUFFIX) {
            stray.push(dir.join(name));
        }
    }
    for name in &names {
        let base = parse_file_name(name, INDEX_SUFFIX)
            .or_else(|| parse_file_name(name, TIME_INDEX_SUFFIX));
        if let Some(base) = base {
            if !listing.bases.contains(&base) {
                stray.push(dir.join(name));
            }
        }
    }
    for path in &stray {
        tracing::warn!(path = %path.display(), "removing leftover file");
        remove_file(path).await?;
    }
    listing.bases.sort_unstable();
    Ok(listing)
}

/// Base offsets of the `.log` files in `dir`, ascending.
fn segment_bases(dir: &Path) -> Result<Vec<i64>, StorageError> {
    // Directory listing has no io_uring operation; this runs at open only.
    let entries = std::fs::read_dir(dir).map_err(|e| std_io_err("list", dir, e))?;
    let mut bases: Vec<i64> = entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| parse_file_name(n, LOG_SUFFIX))
        })
        .collect();
    bases.sort_unstable();
    Ok(bases)
}

/// Opens (creating if needed) the log in `dir` and recovers it.
pub(crate) async fn open_log(
    dir: &Path,
    config: &LogConfig,
    now_ms: i64,
) -> Result<OpenedLog, StorageError> {
    // Creating directories has no io_uring operation; this runs once per partition open.
    let created = !dir.exists();
    crate::file_io::create_dir_all(dir)?;
    if created {
        if let Some(parent) = dir.parent() {
            sync_dir(parent).await?;
        }
    }
    // A compaction swap that was committed but not finished is finished first; the cleaned
    // files of one that was not committed are removed by the listing.
    if let Some((base, end)) = read_clean_swap(dir).await? {
        let bases = segment_bases(dir)?;
        tracing::warn!(dir = %dir.display(), base, end, "finishing an interrupted compaction swap");
        finish_swap(dir, base, end, &bases, None).await?;
    }
    let listing = list_dir(dir).await?;
    let stored_log_start = read_log_start(dir).await?;
    let marker = if listing.has_marker {
        read_clean_shutdown(dir).await?
    } else {
        None
    };
    let interval = config.index_interval_clamped();

    let mut segments = SegmentSet::default();
    if listing.bases.is_empty() {
        let base = stored_log_start.unwrap_or(0).max(0);
        segments.push(Rc::new(Segment::create(dir, base, now_ms).await?));
        sync_dir(dir).await?;
    } else {
        let (active_base, closed) = listing
            .bases
            .split_last()
            .expect("the listing is not empty (checked above)");
        // Closed segments load a few at a time: opens and stats are punted to kernel workers
        // by io_uring, so overlapping them shortens the open of a log with many segments.
        let next_bases: Vec<i64> = listing.bases[1..].to_vec();
        for (chunk, next_chunk) in closed
            .chunks(SEGMENT_OPEN_CONCURRENCY)
            .zip(next_bases.chunks(SEGMENT_OPEN_CONCURRENCY))
        {
            let tasks: Vec<_> = chunk
                .iter()
                .zip(next_chunk)
                .map(|(&base, &next_base)| {
                    let dir = dir.to_path_buf();
                    glommio::spawn_local(async move {
                        let segment = Segment::open(&dir, base, now_ms).await?;
                        load_closed(&segment, next_base, interval).await?;
                        Ok::<Segment, StorageError>(segment)
                    })
                })
                .collect();
            for task in tasks {
                segments.push(Rc::new(task.await?));
            }
        }
        let segment = Segment::open(dir, *active_base, now_ms).await?;
        let recovery_point = read_recovery_point(dir).await?;
        let recovered = open_active(&segment, marker, recovery_point, interval, now_ms).await?;
        if recovered {
            // What survived is served from now on: make it durable first.
            segment.sync_all().await?;
            write_recovery_point(dir, recovery_point_of(&segment)).await?;
        }
        segments.push(Rc::new(segment));
    }
    if listing.has_marker {
        remove_clean_shutdown(dir).await?;
    }

    let first_base = segments.first().map_or(0, |s| s.base_offset());
    let log_end = segments.active().map_or(first_base, |s| s.next_offset());
    let log_start = stored_log_start
        .unwrap_or(first_base)
        .clamp(first_base, log_end);
    if stored_log_start != Some(log_start) {
        write_log_start(dir, log_start).await?;
    }
    let first_dirty = read_cleaner_offset(dir)
        .await?
        .unwrap_or(log_start)
        .clamp(log_start, log_end);
    Ok(OpenedLog {
        segments,
        log_start,
        first_dirty,
    })
}

/// Reads a whole index file.
async fn read_whole(
    file: &glommio::io::BufferedFile,
    path: &Path,
) -> Result<Vec<u8>, StorageError> {
    let len = file_size(file, path).await?;
    let data = read_at(file, path, 0, len as usize).await?;
    Ok(data.to_vec())
}

/// Loads the index files of a segment if they are well formed for a segment holding relative
/// offsets up to `rel_offset_max`; None otherwise.
async fn load_index(
    segment: &Segment,
    rel_offset_max: i64,
) -> Result<Option<SegmentIndex>, StorageError> {
    let files = segment.index_files();
    let offsets = decode_offsets(&read_whole(&files.offsets, &segment.paths.index).await?);
    let times = decode_times(&read_whole(&files.times, &segment.paths.time_index).await?);
    let (Some(offsets), Some(times)) = (offsets, times) else {
        return Ok(None);
    };
    let size = segment.size();
    let offsets_ok = valid_offsets_prefix(&offsets, size, rel_offset_max) == offsets.len();
    let times_ok = times_valid(&times, rel_offset_max);
    let complete = size == 0 || (!offsets.is_empty() && !times.is_empty());
    Ok((offsets_ok && times_ok && complete).then(|| SegmentIndex::from_entries(offsets, times)))
}

/// Writes the in-memory index of a segment over its index files.
async fn write_index_files(segment: &Segment) -> Result<(), StorageError> {
    let (offsets, times) = {
        let index = segment.index.borrow();
        (encode_offsets(index.offsets()), encode_times(index.times()))
    };
    let files = segment.index_files();
    write_small_at(&files.offsets, &segment.paths.index, 0, &offsets).await?;
    truncate(&files.offsets, &segment.paths.index, offsets.len() as u64).await?;
    write_small_at(&files.times, &segment.paths.time_index, 0, &times).await?;
    truncate(&files.times, &segment.paths.time_index, times.len() as u64).await
}

/// Where a replay of batches stopped.
struct ReplayEnd {
    /// Byte position after the last good batch.
    position: u64,
    /// Offset after the last good batch.
    next_offset: i64,
    /// Why it stopped before the file end, if it did.
    cut: Option<String>,
}

/// Walks batches from `start` (a batch boundary holding offset `start_offset`) to the end of
/// the `.log`, adding index entries to `index` by the usual rules, and stops at the first batch
/// that is invalid or whose offsets do not continue the previous batch.
async fn replay(
    segment: &Segment,
    index: &mut SegmentIndex,
    start: u64,
    start_offset: i64,
    interval: u32,
    verify_crc: bool,
    gaps_allowed: bool,
) -> Result<ReplayEnd, StorageError> {
    let base = segment.base_offset();
    let mut walker = BatchWalker::new(
        segment,
        start,
        segment.size(),
        RECOVERY_CHUNK_BYTES,
        verify_crc,
    );
    let mut expected = start_offset;
    // Bounded by the batches in the file: each step advances or stops.
    loop {
        let position = walker.position();
        let stop = |reason: String| ReplayEnd {
            position,
            next_offset: expected,
            cut: Some(reason),
        };
        match walker.next().await? {
            WalkStep::End => {
                return Ok(ReplayEnd {
                    position,
                    next_offset: expected,
                    cut: None,
                })
            }
            WalkStep::Invalid { reason, .. } => return Ok(stop(reason)),
            WalkStep::Batch { header, .. } => {
                // Compaction leaves gaps between the batches of closed segments.
                let continues = header.base_offset == expected
                    || (gaps_allowed && header.base_offset > expected);
                if !continues {
                    return Ok(stop(format!(
                        "batch base offset {} where {expected} was expected",
                        header.base_offset
                    )));
                }
                if header.last_offset() - base > RELATIVE_OFFSET_MAX {
                    return Ok(stop(format!(
                        "offset {} too far from segment base {base}",
                        header.last_offset()
                    )));
                }
                let update = index.plan_batch(
                    (header.base_offset - base) as u32,
                    position as u32,
                    header.max_timestamp,
                    interval,
                );
                index.apply(&update);
                expected = header.last_offset() + 1;
            }
        }
    }
}

/// Loads a closed segment, which ends where the next one (`next_base`) begins.
async fn load_closed(segment: &Segment, next_base: i64, interval: u32) -> Result<(), StorageError> {
    load_closed_index(segment, next_base, interval).await?;
    segment.close_index_files().await
}

/// Loads (or rebuilds) the index of a closed segment.
async fn load_closed_index(
    segment: &Segment,
    next_base: i64,
    interval: u32,
) -> Result<(), StorageError> {
    let base = segment.base_offset();
    segment.set_next_offset(next_base);
    if let Some(index) = load_index(segment, next_base - base - 1).await? {
        *segment.index.borrow_mut() = index;
        return Ok(());
    }
    tracing::warn!(segment = %segment.paths.log.display(), "rebuilding index files of a closed segment");
    let mut index = SegmentIndex::default();
    let end = replay(segment, &mut index, 0, base, interval, false, true).await?;
    if let Some(reason) = end.cut {
        return Err(StorageError::Corrupt {
            path: segment.paths.log.clone(),
            position: end.position,
            reason,
        });
    }
    // A compacted segment may end before the next one begins, never after.
    if end.next_offset > next_base {
        tracing::warn!(segment = %segment.paths.log.display(), end = end.next_offset, next_base,
            "closed segment does not end where the next one begins");
    }
    *segment.index.borrow_mut() = index;
    write_index_files(segment).await?;
    segment.seal().await
}

/// The recovery point at the current end of `segment` (the caller has synced it).
pub(crate) fn recovery_point_of(segment: &Segment) -> RecoveryPoint {
    let index = segment.index.borrow();
    RecoveryPoint {
        offset: segment.next_offset(),
        segment_base: segment.base_offset(),
        position: segment.size(),
        offset_entries: index.offsets().len() as u32,
        time_entries: index.times().len() as u32,
    }
}

/// Cuts `segment` (whose index files are open) at `position`, a batch boundary, for a
/// truncation of the log: the `.log` is truncated, the index is cut to the entries of the
/// batches kept and replayed from the last one (the segment maximum of the kept batches is not
/// in the sparse time index), both index files are rewritten, and all three are fdatasynced.
/// Sets the segment's size and next offset (the end of the last batch kept).
pub(crate) async fn cut_segment(
    segment: &Segment,
    position: u64,
    interval: u32,
) -> Result<(), StorageError> {
    let base = segment.base_offset();
    let mut index = segment.index.borrow().clone();
    let keep = index
        .offsets()
        .partition_point(|e| u64::from(e.position) < position);
    index.truncate_for_replay(keep);
    let start = index.offsets().last().map_or((0, base), |e| {
        (u64::from(e.position), base + i64::from(e.rel_offset))
    });
    segment.set_size(position);
    if segment.writeback_from() > position {
        segment.set_writeback_from(position);
    }
    truncate(&segment.log, &segment.paths.log, position).await?;
    segment.set_dirty_tail(false);
    let end = replay(segment, &mut index, start.0, start.1, interval, false, true).await?;
    if let Some(reason) = end.cut {
        return Err(StorageError::Corrupt {
            path: segment.paths.log.clone(),
            position: end.position,
            reason,
        });
    }
    segment.set_next_offset(end.next_offset);
    *segment.index.borrow_mut() = index;
    write_index_files(segment).await?;
    segment.sync_all().await
}

/// Opens the active segment: trusts it after a matching clean-shutdown marker, recovers it
/// otherwise (returning true). Then sets its creation time for `segment.ms` from its first
/// batch.
async fn open_active(
    segment: &Segment,
    marker: Option<CleanShutdown>,
    recovery_point: Option<RecoveryPoint>,
    interval: u32,
    now_ms: i64,
) -> Result<bool, StorageError> {
    let base = segment.base_offset();
    let clean = marker.filter(|m| {
        m.active_base == base
            && m.active_size == segment.size()
            && m.log_end_offset >= base
            && (segment.size() > 0 || m.log_end_offset == base)
    });
    let mut loaded = false;
    if let Some(marker) = clean {
        if let Some(index) = load_index(segment, marker.log_end_offset - base - 1).await? {
            *segment.index.borrow_mut() = index;
            segment.set_next_offset(marker.log_end_offset);
            loaded = true;
        }
    }
    if !loaded {
        recover_active(segment, interval, recovery_point).await?;
    }
    if segment.size() > 0 {
        let mut walker = BatchWalker::new(
            segment,
            0,
            segment.size(),
            RECOVERY_PROBE_CHUNK_BYTES,
            false,
        );
        if let WalkStep::Batch { header, .. } = walker.next().await? {
            if header.max_timestamp >= 0 {
                segment.set_created_ms(header.max_timestamp.min(now_ms));
            }
        }
    }
    Ok(!loaded)
}

/// Recovers the active segment after an unclean shutdown (see the module comment), trusting
/// what `recovery_point` names as durable.
pub(crate) async fn recover_active(
    segment: &Segment,
    interval: u32,
    recovery_point: Option<RecoveryPoint>,
) -> Result<(), StorageError> {
    let base = segment.base_offset();
    let size = segment.size();
    let corrupt = |position: u64, reason: String| StorageError::Corrupt {
        path: segment.paths.log.clone(),
        position,
        reason,
    };
    // How much of this segment is durable; None: nothing is known, validate it all.
    let durable = match recovery_point {
        Some(rp) if rp.segment_base == base => {
            if rp.position > size {
                return Err(corrupt(
                    size,
                    format!(
                        "the recovery point says {} bytes are durable; the file has {size}",
                        rp.position
                    ),
                ));
            }
            Some(rp)
        }
        Some(rp) if rp.segment_base > base => {
            return Err(corrupt(
                0,
                format!(
                    "the recovery point is in segment {} past the last segment {base}",
                    rp.segment_base
                ),
            ));
        }
        _ => None,
    };
    let files = segment.index_files();
    let offsets_raw = read_whole(&files.offsets, &segment.paths.index).await?;
    let times_raw = read_whole(&files.times, &segment.paths.time_index).await?;
    drop(files);
    // Only the durable entries are trusted: the index files of the active segment are synced
    // with the recovery point, not with each append, so later entries may point anywhere.
    let (offset_entries, time_entries, durable_bytes) = durable.map_or((0, 0, 0), |rp| {
        (
            rp.offset_entries as usize,
            rp.time_entries as usize,
            rp.position,
        )
    });
    let mut offsets = decode_offsets(&offsets_raw).unwrap_or_default();
    offsets.truncate(offset_entries);
    offsets.truncate(valid_offsets_prefix(
        &offsets,
        durable_bytes,
        RELATIVE_OFFSET_MAX,
    ));
    let mut times = decode_times(&times_raw).unwrap_or_default();
    times.truncate(time_entries);
    if !times_valid(&times, RELATIVE_OFFSET_MAX) {
        // Without a trustworthy time index the segment maximum is unknown: replay everything.
        offsets.clear();
        times.clear();
    }
    let mut index = SegmentIndex::from_entries(offsets, times);

    // Restart at the last durable index entry whose batch validates.
    let mut keep = index.offsets().len();
    let mut start = (0u64, base);
    while keep > 0 {
        let entry = index.offsets()[keep - 1];
        let position = u64::from(entry.position);
        let expected = base + i64::from(entry.rel_offset);
        let mut probe = BatchWalker::new(segment, position, size, RECOVERY_PROBE_CHUNK_BYTES, true);
        if let WalkStep::Batch { header, .. } = probe.next().await? {
            if header.base_offset == expected {
                start = (position, expected);
                break;
            }
        }
        keep -= 1;
    }
    index.truncate_for_replay(keep);
    if keep > 0 && index.max_timestamp().is_none() {
        // The first batch always gets a time entry; none means the time index lost entries.
        index.truncate_for_replay(0);
        start = (0, base);
    }

    let end = replay(segment, &mut index, start.0, start.1, interval, true, false).await?;
    if end.position < durable_bytes {
        return Err(corrupt(
            end.position,
            format!(
                "{} (inside the {durable_bytes} bytes the recovery point says are durable)",
                end.cut.as_deref().unwrap_or("batch does not validate")
            ),
        ));
    }
    if end.position < size {
        tracing::warn!(
            segment = %segment.paths.log.display(),
            position = end.position,
            bytes_cut = size - end.position,
            next_offset = end.next_offset,
            reason = end.cut.as_deref().unwrap_or("unknown"),
            "recovery cut the tail of the active segment"
        );
        truncate(&segment.log, &segment.paths.log, end.position).await?;
    }
    let changed =
        encode_offsets(index.offsets()) != offsets_raw || encode_times(index.times()) != times_raw;
    segment.set_size(end.position);
    segment.set_next_offset(end.next_offset);
    *segment.index.borrow_mut() = index;
    if changed {
        write_index_files(segment).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
