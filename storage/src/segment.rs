//! `Segment`: one `.log` file of concatenated batches plus its `.index` and `.timeindex`.
//!
//! Appending lives in `segment_appender.rs`, reading in `segment_reader.rs`, the index rules in
//! `segment_index.rs`, and loading/recovery in `recovery.rs`.

use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use glommio::io::BufferedFile;

use crate::error::StorageError;
use crate::file_io::{create_rw, fdatasync, io_err, open_rw, std_io_err};
use crate::segment_fd::SegmentFd;
use crate::segment_index::SegmentIndex;

/// Extension of segment data files.
pub(crate) const LOG_SUFFIX: &str = ".log";
/// Extension of offset index files.
pub(crate) const INDEX_SUFFIX: &str = ".index";
/// Extension of time index files.
pub(crate) const TIME_INDEX_SUFFIX: &str = ".timeindex";
/// Added to a segment's file names while the cleaner writes its compacted copy.
pub(crate) const CLEANED_SUFFIX: &str = ".cleaned";
/// Digits of the zero-padded base offset in file names.
const NAME_DIGITS: usize = 20;

/// File name stem of a segment: its base offset, zero-padded to 20 digits.
pub(crate) fn file_stem(base_offset: i64) -> String {
    format!("{base_offset:0NAME_DIGITS$}")
}

/// Parses `<20 digits><suffix>` into a base offset.
pub(crate) fn parse_file_name(name: &str, suffix: &str) -> Option<i64> {
    let stem = name.strip_suffix(suffix)?;
    if stem.len() != NAME_DIGITS || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Paths of a segment's three files.
#[derive(Clone, Debug)]
pub(crate) struct SegmentPaths {
    /// `.log` data file.
    pub log: PathBuf,
    /// `.index` offset index.
    pub index: PathBuf,
    /// `.timeindex` time index.
    pub time_index: PathBuf,
}

impl SegmentPaths {
    /// Paths of the segment with `base_offset` in `dir`.
    pub fn new(dir: &Path, base_offset: i64) -> SegmentPaths {
        SegmentPaths::with_suffix(dir, base_offset, "")
    }

    /// Paths of the cleaner's compacted copy of the segment with `base_offset`.
    pub fn cleaned(dir: &Path, base_offset: i64) -> SegmentPaths {
        SegmentPaths::with_suffix(dir, base_offset, CLEANED_SUFFIX)
    }

    fn with_suffix(dir: &Path, base_offset: i64, extra: &str) -> SegmentPaths {
        let stem = file_stem(base_offset);
        SegmentPaths {
            log: dir.join(format!("{stem}{LOG_SUFFIX}{extra}")),
            index: dir.join(format!("{stem}{INDEX_SUFFIX}{extra}")),
            time_index: dir.join(format!("{stem}{TIME_INDEX_SUFFIX}{extra}")),
        }
    }

    /// The three paths, index files first (the order the cleaner renames them in).
    pub fn all(&self) -> [&PathBuf; 3] {
        [&self.index, &self.time_index, &self.log]
    }
}

/// The open index files of a segment. Only the active segment keeps them open (closed segments
/// serve lookups from memory), which saves two descriptors per closed segment.
pub(crate) struct IndexFiles {
    /// `.index`.
    pub offsets: BufferedFile,
    /// `.timeindex`.
    pub times: BufferedFile,
}

/// One segment: its files, its logical size and next offset, and its in-memory index.
pub(crate) struct Segment {
    base_offset: i64,
    pub(crate) paths: SegmentPaths,
    pub(crate) log: BufferedFile,
    index_files: RefCell<Option<Rc<IndexFiles>>>,
    fd: Arc<SegmentFd>,
    /// Bytes of whole batches in `.log`; appends write here.
    size: Cell<u64>,
    /// Offset the next batch appended to this segment gets.
    next_offset: Cell<i64>,
    /// When the segment counts as created, for `segment.ms`.
    created_ms: Cell<i64>,
    /// Set when a failed append could not be rolled back: the file holds bytes past `size`
    /// that must be cut before the next append.
    dirty_tail: Cell<bool>,
    /// Start of the appended bytes whose writeback has not been started yet.
    writeback_from: Cell<u64>,
    pub(crate) index: RefCell<SegmentIndex>,
}

impl Segment {
    /// Creates the three files of a new, empty segment (truncating leftovers with that name).
    pub async fn create(
        dir: &Path,
        base_offset: i64,
        now_ms: i64,
    ) -> Result<Segment, StorageError> {
        let paths = SegmentPaths::new(dir, base_offset);
        let log = create_rw(&paths.log).await?;
        let offsets = create_rw(&paths.index).await?;
        let times = create_rw(&paths.time_index).await?;
        Segment::assemble(
            paths,
            base_offset,
            log,
            IndexFiles { offsets, times },
            0,
            now_ms,
        )
    }

    /// Opens the files of an existing segment; the caller loads or recovers its index and sets
    /// its size and next offset.
    pub async fn open(dir: &Path, base_offset: i64, now_ms: i64) -> Result<Segment, StorageError> {
        let paths = SegmentPaths::new(dir, base_offset);
        let log = open_rw(&paths.log).await?;
        let offsets = open_rw(&paths.index).await?;
        let times = open_rw(&paths.time_index).await?;
        let size = log
            .file_size()
            .await
            .map_err(|e| io_err("stat", &paths.log, e))?;
        Segment::assemble(
            paths,
            base_offset,
            log,
            IndexFiles { offsets, times },
            size,
            now_ms,
        )
    }

    fn assemble(
        paths: SegmentPaths,
        base_offset: i64,
        log: BufferedFile,
        index_files: IndexFiles,
        size: u64,
        now_ms: i64,
    ) -> Result<Segment, StorageError> {
        let fd =
            SegmentFd::dup_of(log.as_raw_fd()).map_err(|e| std_io_err("dup", &paths.log, e))?;
        Ok(Segment {
            base_offset,
            paths,
            log,
            index_files: RefCell::new(Some(Rc::new(index_files))),
            fd: Arc::new(fd),
            size: Cell::new(size),
            next_offset: Cell::new(base_offset),
            created_ms: Cell::new(now_ms),
            dirty_tail: Cell::new(false),
            writeback_from: Cell::new(size),
            index: RefCell::new(SegmentIndex::default()),
        })
    }

    /// Offset of the first batch (also the file name).
    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    /// Bytes of whole batches in the `.log`.
    pub fn size(&self) -> u64 {
        self.size.get()
    }

    pub(crate) fn set_size(&self, size: u64) {
        self.size.set(size);
    }

    pub(crate) fn writeback_from(&self) -> u64 {
        self.writeback_from.get()
    }

    pub(crate) fn set_writeback_from(&self, position: u64) {
        self.writeback_from.set(position);
    }

    /// Offset the next batch appended here would get (last offset + 1).
    pub fn next_offset(&self) -> i64 {
        self.next_offset.get()
    }

    pub(crate) fn set_next_offset(&self, offset: i64) {
        self.next_offset.set(offset);
    }

    /// Creation time used by `segment.ms`.
    pub fn created_ms(&self) -> i64 {
        self.created_ms.get()
    }

    pub(crate) fn set_created_ms(&self, ms: i64) {
        self.created_ms.set(ms);
    }

    pub(crate) fn dirty_tail(&self) -> bool {
        self.dirty_tail.get()
    }

    pub(crate) fn set_dirty_tail(&self, dirty: bool) {
        self.dirty_tail.set(dirty);
    }

    /// Shared descriptor of the `.log` for zero-copy sends.
    pub fn fd(&self) -> Arc<SegmentFd> {
        Arc::clone(&self.fd)
    }

    /// Whether the segment holds no batch.
    pub fn is_empty(&self) -> bool {
        self.size.get() == 0
    }

    /// fdatasyncs the `.log` only (what durability of acknowledged data needs).
    pub async fn sync_log(&self) -> Result<(), StorageError> {
        fdatasync(&self.log, &self.paths.log).await
    }

    /// The open index files. Only the active segment (and recovery) writes index files, and
    /// they are open until the segment stops being active; anything else is a bug.
    pub(crate) fn index_files(&self) -> Rc<IndexFiles> {
        self.index_files
            .borrow()
            .clone()
            .expect("index files are open while a segment is active or being loaded")
    }

    /// fdatasyncs all three files (done when the segment stops being active).
    pub async fn sync_all(&self) -> Result<(), StorageError> {
        fdatasync(&self.log, &self.paths.log).await?;
        let files = self.index_files.borrow().clone();
        if let Some(files) = files {
            fdatasync(&files.offsets, &self.paths.index).await?;
            fdatasync(&files.times, &self.paths.time_index).await?;
        }
        Ok(())
    }

    /// Closes the index files once the segment is no longer active; lookups use memory.
    pub async fn close_index_files(&self) -> Result<(), StorageError> {
        let files = self.index_files.borrow_mut().take();
        match files {
            Some(files) => close_index_files(files, &self.paths).await,
            None => Ok(()),
        }
    }

    /// Opens the index files again when a closed segment becomes the active one (a truncation
    /// removed the segments after it).
    pub(crate) async fn reopen_index_files(&self) -> Result<(), StorageError> {
        if self.index_files.borrow().is_some() {
            return Ok(());
        }
        let offsets = open_rw(&self.paths.index).await?;
        let times = open_rw(&self.paths.time_index).await?;
        *self.index_files.borrow_mut() = Some(Rc::new(IndexFiles { offsets, times }));
        Ok(())
    }

    /// Closes all files, reporting the first error.
    pub async fn close(self) -> Result<(), StorageError> {
        let Segment {
            paths,
            log,
            index_files,
            ..
        } = self;
        let a = log
            .close()
            .await
            .map_err(|e| io_err("close", &paths.log, e));
        let b = match index_files.into_inner() {
            Some(files) => close_index_files(files, &paths).await,
            None => Ok(()),
        };
        a.and(b)
    }
}

/// Closes index files if nothing else holds them (an append in flight would; then they close
/// when it drops them).
async fn close_index_files(
    files: Rc<IndexFiles>,
    paths: &SegmentPaths,
) -> Result<(), StorageError> {
    let Ok(IndexFiles { offsets, times }) = Rc::try_unwrap(files) else {
        return Ok(());
    };
    let a = offsets
        .close()
        .await
        .map_err(|e| io_err("close", &paths.index, e));
    let b = times
        .close()
        .await
        .map_err(|e| io_err("close", &paths.time_index, e));
    a.and(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        assert_eq!(file_stem(42), "00000000000000000042");
        assert_eq!(
            parse_file_name("00000000000000000042.log", LOG_SUFFIX),
            Some(42)
        );
        assert_eq!(
            parse_file_name("00000000000000000042.index", LOG_SUFFIX),
            None
        );
        assert_eq!(parse_file_name("42.log", LOG_SUFFIX), None);
        assert_eq!(
            parse_file_name("0000000000000000004x.log", LOG_SUFFIX),
            None
        );
    }
}
