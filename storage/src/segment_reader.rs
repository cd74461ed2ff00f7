//! Reading a segment: walking batch headers (`BatchWalker`), locating the batch that holds an
//! offset, choosing how many whole batches fit a byte budget, and timestamp lookups.

use glommio::io::ReadResult;

use crate::batch::{check_header, BatchHeader, BatchHeaderInfo, BATCH_HEADER_BYTES, CRC_START};
use crate::config::TimestampType;
use crate::error::StorageError;
use crate::file_io::read_at;
use crate::records::first_record_at_or_after;
use crate::segment::Segment;

/// One step of a walk over the batches of a `.log`.
#[derive(Debug)]
pub(crate) enum WalkStep {
    /// A batch whose header is sane (and CRC matches, if checked).
    Batch {
        /// Byte position of the batch.
        position: u64,
        /// Its header.
        header: BatchHeaderInfo,
    },
    /// The walk reached its limit exactly at a batch boundary.
    End,
    /// The bytes at `position` are not a whole valid batch.
    Invalid {
        /// Where the bad batch starts.
        position: u64,
        /// What check failed.
        reason: String,
    },
}

/// Walks batches of a segment from a batch boundary up to `limit`, reading in chunks.
pub(crate) struct BatchWalker<'a> {
    segment: &'a Segment,
    buf: Option<ReadResult>,
    buf_pos: u64,
    pos: u64,
    limit: u64,
    chunk_bytes: usize,
    verify_crc: bool,
}

impl<'a> BatchWalker<'a> {
    /// A walker starting at `start` (a batch boundary) that stops at `limit`.
    pub fn new(
        segment: &'a Segment,
        start: u64,
        limit: u64,
        chunk_bytes: usize,
        verify_crc: bool,
    ) -> Self {
        BatchWalker {
            segment,
            buf: None,
            buf_pos: 0,
            pos: start,
            limit,
            chunk_bytes,
            verify_crc,
        }
    }

    /// Position of the next batch to be returned.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn buffered(&self, pos: u64, len: usize) -> Option<&[u8]> {
        let buf = self.buf.as_ref()?;
        let start = usize::try_from(pos.checked_sub(self.buf_pos)?).ok()?;
        buf.get(start..start.checked_add(len)?)
    }

    /// Makes the buffer cover [pos, pos + len), reading a chunk if needed. Returns false if the
    /// file ends before that.
    async fn fill(&mut self, pos: u64, len: usize) -> Result<bool, StorageError> {
        if self.buffered(pos, len).is_some() {
            return Ok(true);
        }
        let want = (self.limit.saturating_sub(pos) as usize)
            .min(self.chunk_bytes)
            .max(len);
        let segment = self.segment;
        let data = read_at(&segment.log, &segment.paths.log, pos, want).await?;
        self.buf = Some(data);
        self.buf_pos = pos;
        Ok(self.buffered(pos, len).is_some())
    }

    /// The `len` bytes at `pos` (a batch the walk returned), read through the walk's buffer.
    /// None if the file ends first.
    pub async fn bytes(&mut self, pos: u64, len: usize) -> Result<Option<&[u8]>, StorageError> {
        if !self.fill(pos, len).await? {
            return Ok(None);
        }
        Ok(self.buffered(pos, len))
    }

    /// The next batch with its bytes, None at the end; bytes that are not a valid batch are
    /// `StorageError::Corrupt` (for closed segments, which were synced and validated).
    pub async fn next_with_bytes(
        &mut self,
    ) -> Result<Option<(BatchHeaderInfo, &[u8])>, StorageError> {
        match self.next().await? {
            WalkStep::Batch { position, header } => {
                let total = header.total_bytes() as usize;
                let segment = self.segment;
                match self.bytes(position, total).await? {
                    Some(bytes) => Ok(Some((header, bytes))),
                    None => Err(corrupt(
                        segment,
                        position,
                        "file ends inside a batch".to_string(),
                    )),
                }
            }
            WalkStep::End => Ok(None),
            WalkStep::Invalid { position, reason } => Err(corrupt(self.segment, position, reason)),
        }
    }

    /// Returns the next batch, the end, or why the bytes at the current position are invalid.
    pub async fn next(&mut self) -> Result<WalkStep, StorageError> {
        let position = self.pos;
        if position >= self.limit {
            return Ok(WalkStep::End);
        }
        let invalid = |reason: String| Ok(WalkStep::Invalid { position, reason });
        let remaining = self.limit - position;
        if remaining < BATCH_HEADER_BYTES as u64 {
            return invalid(format!("torn header: {remaining} bytes left"));
        }
        if !self.fill(position, BATCH_HEADER_BYTES).await? {
            return invalid("file ends inside a batch header".to_string());
        }
        let header = match self
            .buffered(position, BATCH_HEADER_BYTES)
            .and_then(BatchHeader::view)
        {
            Some(view) => view.info(),
            None => return invalid("header not readable".to_string()),
        };
        let total = match check_header(&header) {
            Ok(total) => total,
            Err(e) => return invalid(format!("bad header: {e}")),
        };
        if total > remaining {
            return invalid(format!(
                "batch of {total} bytes but only {remaining} bytes left"
            ));
        }
        if self.verify_crc {
            let actual = self.crc_of(position, total).await?;
            match actual {
                Some(actual) if actual == header.crc => {}
                Some(actual) => {
                    return invalid(format!(
                        "crc mismatch: stored {:#010x}, computed {actual:#010x}",
                        header.crc
                    ))
                }
                None => return invalid("file ends inside a batch".to_string()),
            }
        }
        self.pos = position + total;
        Ok(WalkStep::Batch { position, header })
    }

    /// CRC-32C of bytes [position + 21, position + total); None if the file is shorter.
    async fn crc_of(&mut self, position: u64, total: u64) -> Result<Option<u32>, StorageError> {
        let end = position + total;
        let mut cursor = position + CRC_START as u64;
        let mut crc = 0u32;
        // Each round consumes at least one byte (or returns), so at most `total` rounds.
        while cursor < end {
            if !self.fill(cursor, 1).await? {
                return Ok(None);
            }
            let Some(buf) = self.buf.as_ref() else {
                return Ok(None);
            };
            let start = (cursor - self.buf_pos) as usize;
            let take = (buf.len() - start).min((end - cursor) as usize);
            crc = crc32c::crc32c_append(crc, &buf[start..start + take]);
            cursor += take as u64;
        }
        Ok(Some(crc))
    }
}

/// A byte range of whole batches in one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchRange {
    /// Position of the first batch.
    pub position: u64,
    /// Bytes of whole batches.
    pub len: u64,
    /// Base offset of the first batch.
    pub first_offset: i64,
}

/// What `read_range` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RangeRead {
    /// Whole batches from the one holding the offset.
    Found(BatchRange),
    /// The batch holding the offset is larger than the budget (and `min_one_batch` is false).
    TooLarge,
    /// No batch below the limit holds the offset or a later one (a compacted segment may end
    /// with a gap before the next segment's base).
    NotHere,
}

fn corrupt(segment: &Segment, position: u64, reason: String) -> StorageError {
    StorageError::Corrupt {
        path: segment.paths.log.clone(),
        position,
        reason,
    }
}

impl Segment {
    /// Finds the first batch below `limit` whose last offset is >= `offset`.
    pub(crate) async fn locate(
        &self,
        offset: i64,
        limit: u64,
        chunk_bytes: usize,
    ) -> Result<Option<(u64, BatchHeaderInfo)>, StorageError> {
        let rel = (offset - self.base_offset()).clamp(0, i64::from(u32::MAX)) as u32;
        let start = self
            .index
            .borrow()
            .lookup_offset(rel)
            .map_or(0, |e| u64::from(e.position));
        let mut walker = BatchWalker::new(self, start, limit, chunk_bytes, false);
        // Bounded by the batches below `limit`; the index keeps the usual walk to one interval.
        loop {
            match walker.next().await? {
                WalkStep::Batch { position, header } if header.last_offset() >= offset => {
                    return Ok(Some((position, header)))
                }
                WalkStep::Batch { .. } => {}
                WalkStep::End => return Ok(None),
                WalkStep::Invalid { position, reason } => {
                    return Err(corrupt(self, position, reason))
                }
            }
        }
    }

    /// Whole batches starting with the one that holds `offset`, at most `max_bytes` of them
    /// (but the first one whole if `min_one_batch`), never past `limit`.
    pub(crate) async fn read_range(
        &self,
        offset: i64,
        max_bytes: u32,
        min_one_batch: bool,
        limit: u64,
        chunk_bytes: usize,
    ) -> Result<RangeRead, StorageError> {
        let Some((start, first)) = self.locate(offset, limit, chunk_bytes).await? else {
            return Ok(RangeRead::NotHere);
        };
        let first_end = start + first.total_bytes();
        let budget_end = (start + u64::from(max_bytes)).min(limit);
        if first_end > budget_end {
            if !min_one_batch {
                return Ok(RangeRead::TooLarge);
            }
            return Ok(RangeRead::Found(BatchRange {
                position: start,
                len: first.total_bytes(),
                first_offset: first.base_offset,
            }));
        }
        // Jump to the last indexed batch that starts within the budget: every batch before it
        // fits, so only the stretch after it needs its headers walked.
        let jump = self
            .index
            .borrow()
            .lookup_position(budget_end)
            .map(|e| u64::from(e.position))
            .filter(|&p| p > first_end)
            .unwrap_or(first_end);
        let mut end = jump;
        let mut walker = BatchWalker::new(self, jump, limit, chunk_bytes, false);
        loop {
            match walker.next().await? {
                WalkStep::Batch { position, header } => {
                    let batch_end = position + header.total_bytes();
                    if batch_end > budget_end {
                        break;
                    }
                    end = batch_end;
                }
                WalkStep::End => break,
                WalkStep::Invalid { position, reason } => {
                    return Err(corrupt(self, position, reason))
                }
            }
        }
        Ok(RangeRead::Found(BatchRange {
            position: start,
            len: end - start,
            first_offset: first.base_offset,
        }))
    }

    /// First record (uncompressed CreateTime batches) or batch (otherwise) below `limit` with a
    /// timestamp >= `timestamp`, as (offset, timestamp).
    pub(crate) async fn find_timestamp(
        &self,
        timestamp: i64,
        limit: u64,
        chunk_bytes: usize,
    ) -> Result<Option<(i64, i64)>, StorageError> {
        let start = {
            let index = self.index.borrow();
            match index.lookup_time(timestamp) {
                Some(entry) => index
                    .lookup_offset(entry.rel_offset)
                    .map_or(0, |e| u64::from(e.position)),
                None => 0,
            }
        };
        let mut walker = BatchWalker::new(self, start, limit, chunk_bytes, false);
        loop {
            match walker.next().await? {
                WalkStep::Batch { position, header } if header.max_timestamp >= timestamp => {
                    return self
                        .first_in_batch(position, &header, timestamp)
                        .await
                        .map(Some);
                }
                WalkStep::Batch { .. } => {}
                WalkStep::End => return Ok(None),
                WalkStep::Invalid { position, reason } => {
                    return Err(corrupt(self, position, reason))
                }
            }
        }
    }

    async fn first_in_batch(
        &self,
        position: u64,
        header: &BatchHeaderInfo,
        timestamp: i64,
    ) -> Result<(i64, i64), StorageError> {
        let batch_level = (header.base_offset, header.max_timestamp);
        if header.compression_codec() != 0
            || header.timestamp_type() == TimestampType::LogAppendTime
        {
            return Ok(batch_level);
        }
        let bytes = read_at(
            &self.log,
            &self.paths.log,
            position,
            header.total_bytes() as usize,
        )
        .await?;
        let found = first_record_at_or_after(
            &bytes,
            header.base_timestamp,
            header.records_count,
            timestamp,
        );
        Ok(found.map_or(batch_level, |(delta, ts)| {
            (header.base_offset + i64::from(delta), ts)
        }))
    }
}
