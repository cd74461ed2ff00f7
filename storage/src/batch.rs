//! Record batch v2 header: a zero-copy view, a decoded copy, validation and CRC-32C.
//!
//! Layout (61 bytes, big-endian): baseOffset i64 @0, batchLength i32 @8, partitionLeaderEpoch
//! i32 @12, magic i8 @16, crc u32 @17, attributes i16 @21, lastOffsetDelta i32 @23,
//! baseTimestamp i64 @27, maxTimestamp i64 @35, producerId i64 @43, producerEpoch i16 @51,
//! baseSequence i32 @53, recordsCount i32 @57. The CRC covers bytes 21..end, so the broker may
//! assign baseOffset and partitionLeaderEpoch without recomputing it.

use zerocopy::byteorder::big_endian::{I16, I32, I64, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::config::TimestampType;
pub use crate::limits::BATCH_HEADER_BYTES;
use crate::limits::BATCH_LENGTH_OVERHEAD_BYTES;

/// The only record batch format stored.
pub const MAGIC_V2: i8 = 2;

/// Byte offset where the CRC-covered part of a batch starts (the attributes field).
pub(crate) const CRC_START: usize = 21;
/// Byte range of the CRC field.
const CRC_RANGE: std::ops::Range<usize> = 17..21;
/// Byte offset of the magic byte.
const MAGIC_POS: usize = 16;

/// Attribute bits 0-2: compression codec (0 = none).
const ATTR_COMPRESSION_MASK: i16 = 0x07;
/// Attribute bit 3: timestamp type (1 = LogAppendTime).
pub(crate) const ATTR_LOG_APPEND_TIME: i16 = 0x08;
/// Attribute bit 4: transactional batch.
const ATTR_TRANSACTIONAL: i16 = 0x10;
/// Attribute bit 5: control batch.
const ATTR_CONTROL: i16 = 0x20;

/// Zero-copy view of a record batch v2 header, laid over the first 61 bytes of a batch.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct BatchHeader {
    /// First offset of the batch (assigned by the broker).
    pub base_offset: I64,
    /// Bytes after this field: total size minus 12.
    pub batch_length: I32,
    /// Leader epoch at append time (assigned by the broker).
    pub partition_leader_epoch: I32,
    /// Format version; 2 for every batch stored here.
    pub magic: i8,
    /// CRC-32C of bytes 21..end.
    pub crc: U32,
    /// Compression, timestamp type, transactional and control bits.
    pub attributes: I16,
    /// Offset of the last record relative to `base_offset`.
    pub last_offset_delta: I32,
    /// Timestamp of the first record.
    pub base_timestamp: I64,
    /// Largest record timestamp (or the append time with LogAppendTime).
    pub max_timestamp: I64,
    /// Idempotent producer id, -1 if none.
    pub producer_id: I64,
    /// Idempotent producer epoch, -1 if none.
    pub producer_epoch: I16,
    /// Sequence number of the first record, -1 if none.
    pub base_sequence: I32,
    /// Number of records in the batch.
    pub records_count: I32,
}

const _: () = assert!(size_of::<BatchHeader>() == BATCH_HEADER_BYTES);

impl BatchHeader {
    /// Views the first 61 bytes of `bytes` as a header; None if shorter.
    pub fn view(bytes: &[u8]) -> Option<&BatchHeader> {
        BatchHeader::ref_from_prefix(bytes)
            .ok()
            .map(|(header, _)| header)
    }

    /// Mutable view of the first 61 bytes of `bytes`; None if shorter.
    pub fn view_mut(bytes: &mut [u8]) -> Option<&mut BatchHeader> {
        BatchHeader::mut_from_prefix(bytes)
            .ok()
            .map(|(header, _)| header)
    }

    /// Decoded copy of every field.
    pub fn info(&self) -> BatchHeaderInfo {
        BatchHeaderInfo {
            base_offset: self.base_offset.get(),
            batch_length: self.batch_length.get(),
            partition_leader_epoch: self.partition_leader_epoch.get(),
            magic: self.magic,
            crc: self.crc.get(),
            attributes: self.attributes.get(),
            last_offset_delta: self.last_offset_delta.get(),
            base_timestamp: self.base_timestamp.get(),
            max_timestamp: self.max_timestamp.get(),
            producer_id: self.producer_id.get(),
            producer_epoch: self.producer_epoch.get(),
            base_sequence: self.base_sequence.get(),
            records_count: self.records_count.get(),
        }
    }
}

/// Decoded copy of a batch header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeaderInfo {
    /// First offset of the batch.
    pub base_offset: i64,
    /// Total size minus 12.
    pub batch_length: i32,
    /// Leader epoch stamped on append.
    pub partition_leader_epoch: i32,
    /// Format version (2).
    pub magic: i8,
    /// Stored CRC-32C.
    pub crc: u32,
    /// Attribute bits.
    pub attributes: i16,
    /// Last record's offset relative to the base offset.
    pub last_offset_delta: i32,
    /// First record's timestamp.
    pub base_timestamp: i64,
    /// Largest timestamp in the batch.
    pub max_timestamp: i64,
    /// Producer id, -1 if none.
    pub producer_id: i64,
    /// Producer epoch, -1 if none.
    pub producer_epoch: i16,
    /// First sequence number, -1 if none.
    pub base_sequence: i32,
    /// Number of records.
    pub records_count: i32,
}

impl BatchHeaderInfo {
    /// Total size of the batch in bytes (header included). Only meaningful once the header is
    /// known sane (`batch_length >= 49`).
    pub fn total_bytes(&self) -> u64 {
        (i64::from(self.batch_length) + BATCH_LENGTH_OVERHEAD_BYTES as i64).max(0) as u64
    }

    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Compression codec (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression_codec(&self) -> u8 {
        (self.attributes & ATTR_COMPRESSION_MASK) as u8
    }

    /// Which timestamp the batch carries.
    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & ATTR_LOG_APPEND_TIME != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    /// Whether the batch is part of a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    /// Whether the batch holds control records (transaction markers).
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }
}

/// Why a batch was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Fewer bytes than a header (or a batchLength below the header size).
    #[error("batch too short: {len} bytes")]
    TooShort {
        /// Bytes available.
        len: usize,
    },
    /// The magic byte is not 2.
    #[error("unsupported magic {0}")]
    BadMagic(i8),
    /// batchLength does not match the bytes given.
    #[error("batch declares {declared} bytes but {actual} were given")]
    LengthMismatch {
        /// Total size the header declares.
        declared: i64,
        /// Bytes given.
        actual: usize,
    },
    /// The stored CRC does not match the bytes.
    #[error("crc mismatch: header says {expected:#010x}, bytes give {actual:#010x}")]
    CrcMismatch {
        /// CRC stored in the header.
        expected: u32,
        /// CRC computed over the bytes.
        actual: u32,
    },
    /// More than one batch was given where exactly one is required.
    #[error("more than one batch given")]
    MultipleBatches,
    /// recordsCount is below 1.
    #[error("batch holds no records")]
    Empty,
    /// lastOffsetDelta is negative.
    #[error("negative lastOffsetDelta {0}")]
    BadLastOffsetDelta(i32),
    /// Records without a key, for a compacted log (Kafka refuses these too).
    #[error(
        "Compacted topic cannot accept message without key (records {indexes:?} of the batch)"
    )]
    KeylessRecords {
        /// Positions of those records in the batch (Kafka's `batch_index`).
        indexes: Vec<i32>,
    },
    /// The records inside the batch do not parse or decompress.
    #[error("records unreadable: {0}")]
    RecordsUnreadable(String),
    /// recordsCount is not lastOffsetDelta + 1 in a batch a client sent (Kafka's LogValidator
    /// refuses it: the batch would claim offsets it holds no records for).
    #[error("Inconsistent batch offset range (lastOffsetDelta {last_offset_delta}) and count of records {records_count}")]
    CountMismatch {
        /// recordsCount from the header.
        records_count: i32,
        /// lastOffsetDelta from the header.
        last_offset_delta: i32,
    },
    /// The records section of an uncompressed batch is too short to hold recordsCount records.
    #[error("Incorrect declared batch size: {records_bytes} bytes of records cannot hold {records_count} records")]
    RecordsTooShort {
        /// recordsCount from the header.
        records_count: i32,
        /// Bytes after the header.
        records_bytes: usize,
    },
    /// A client sent a control batch (transaction markers are written by the broker only).
    #[error("Clients are not allowed to write control records")]
    ControlFromClient,
    /// A transactional batch: Strom has no transaction coordinator, so no transaction is ever
    /// ongoing.
    #[error("Record was not part of an ongoing transaction")]
    NoOngoingTransaction,
}

/// Recomputes a batch's CRC-32C after bytes it covers changed.
fn write_crc(batch: &mut [u8]) {
    let crc = batch_crc(batch);
    batch[CRC_RANGE].copy_from_slice(&crc.to_be_bytes());
}

/// CRC-32C of a whole batch's CRC-covered bytes (21..end).
pub(crate) fn batch_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[CRC_START..])
}

/// Checks that a header, on its own, describes a sane batch: magic 2, batchLength at least the
/// header size, lastOffsetDelta not negative. Returns its total size.
pub(crate) fn check_header(header: &BatchHeaderInfo) -> Result<u64, BatchError> {
    if header.magic != MAGIC_V2 {
        return Err(BatchError::BadMagic(header.magic));
    }
    let total = i64::from(header.batch_length) + BATCH_LENGTH_OVERHEAD_BYTES as i64;
    if total < BATCH_HEADER_BYTES as i64 {
        return Err(BatchError::TooShort {
            len: total.max(0) as usize,
        });
    }
    if header.last_offset_delta < 0 {
        return Err(BatchError::BadLastOffsetDelta(header.last_offset_delta));
    }
    Ok(total as u64)
}

/// Parses a header and checks that `bytes` holds exactly that one batch, without checking the CRC.
pub(crate) fn parse_single(bytes: &[u8]) -> Result<BatchHeaderInfo, BatchError> {
    let header = BatchHeader::view(bytes)
        .ok_or(BatchError::TooShort { len: bytes.len() })?
        .info();
    if header.magic != MAGIC_V2 {
        return Err(BatchError::BadMagic(header.magic));
    }
    let declared = i64::from(header.batch_length) + BATCH_LENGTH_OVERHEAD_BYTES as i64;
    if declared < BATCH_HEADER_BYTES as i64 || (bytes.len() as i64) < declared {
        return Err(BatchError::LengthMismatch {
            declared,
            actual: bytes.len(),
        });
    }
    if (bytes.len() as i64) > declared {
        // Trailing bytes that look like the start of another batch mean the producer sent several.
        let rest = &bytes[declared as usize..];
        if rest.len() > MAGIC_POS && rest[MAGIC_POS] as i8 == MAGIC_V2 {
            return Err(BatchError::MultipleBatches);
        }
        return Err(BatchError::LengthMismatch {
            declared,
            actual: bytes.len(),
        });
    }
    check_header(&header)?;
    Ok(header)
}

/// Validates the bytes of one whole batch, whoever wrote it: exactly one batch, magic 2,
/// batchLength equal to the slice length, recordsCount >= 1, lastOffsetDelta >= 0, and a
/// matching CRC-32C. Returns the decoded header. Batches from producers go through
/// `validate_client_batch`, which adds the checks that only hold for them.
pub fn validate_batch(bytes: &[u8]) -> Result<BatchHeaderInfo, BatchError> {
    let header = parse_single(bytes)?;
    if header.records_count < 1 {
        return Err(BatchError::Empty);
    }
    let actual = batch_crc(bytes);
    if actual != header.crc {
        return Err(BatchError::CrcMismatch {
            expected: header.crc,
            actual,
        });
    }
    Ok(header)
}

/// Smallest encoding of one record: length, attributes, timestampDelta, offsetDelta, keyLength,
/// valueLength and headerCount, each at least one byte.
const RECORD_BYTES_MIN: usize = 7;

/// Validates a batch a producer sent: everything `validate_batch` checks, then what Kafka's
/// `LogValidator` checks only for client appends, in its order.
///
/// Not for stored batches: compaction leaves fewer records than the offset range, and the
/// broker writes control batches itself.
///
/// What is checked about the records themselves: here only that an uncompressed records
/// section is long enough for recordsCount records (constant time, no record is decoded).
/// Appends to compacted logs decode every record anyway (`cleaner::check_keys`), which also
/// requires exactly recordsCount records and no bytes left over, compressed or not. Not
/// checked: the records of compressed batches on other logs (that would mean decompressing
/// every batch) and each record's own offsetDelta.
pub fn validate_client_batch(bytes: &[u8]) -> Result<BatchHeaderInfo, BatchError> {
    let header = validate_batch(bytes)?;
    if i64::from(header.records_count) != i64::from(header.last_offset_delta) + 1 {
        return Err(BatchError::CountMismatch {
            records_count: header.records_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    if header.is_control() {
        return Err(BatchError::ControlFromClient);
    }
    let records_bytes = bytes.len() - BATCH_HEADER_BYTES;
    let needed = usize::try_from(header.records_count)
        .unwrap_or(usize::MAX)
        .saturating_mul(RECORD_BYTES_MIN);
    if header.compression_codec() == 0 && records_bytes < needed {
        return Err(BatchError::RecordsTooShort {
            records_count: header.records_count,
            records_bytes,
        });
    }
    // Kafka (UnifiedLog.analyzeAndValidateProducerState) answers InvalidTxnStateException to a
    // transactional batch of a producer without an ongoing, verified transaction; here there
    // never is one.
    if header.is_transactional() {
        return Err(BatchError::NoOngoingTransaction);
    }
    Ok(header)
}

/// Writes baseOffset and partitionLeaderEpoch into a batch. The CRC does not cover them.
pub fn assign_offset_and_epoch(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    if let Some(header) = BatchHeader::view_mut(batch) {
        header.base_offset.set(base_offset);
        header.partition_leader_epoch.set(leader_epoch);
    }
}

/// After the records of `batch` were replaced (by the cleaner): sets batchLength and
/// recordsCount and recomputes the CRC.
pub(crate) fn reseal(batch: &mut [u8], records_count: i32) {
    let batch_length = (batch.len() - BATCH_LENGTH_OVERHEAD_BYTES) as i32;
    if let Some(header) = BatchHeader::view_mut(batch) {
        header.batch_length.set(batch_length);
        header.records_count.set(records_count);
    }
    write_crc(batch);
}

/// Marks a batch as LogAppendTime with `now_ms` as its maxTimestamp and recomputes its CRC.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    if let Some(header) = BatchHeader::view_mut(batch) {
        let attributes = header.attributes.get() | ATTR_LOG_APPEND_TIME;
        header.attributes.set(attributes);
        header.max_timestamp.set(now_ms);
    }
    write_crc(batch);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::build_batch;

    fn sample() -> Vec<u8> {
        build_batch(
            1_000,
            &[(Some(b"k1"), Some(b"v1")), (None, Some(b"value two"))],
        )
    }

    #[test]
    fn good_batch_validates() {
        let batch = sample();
        let info = validate_batch(&batch).expect("valid");
        assert_eq!(info.records_count, 2);
        assert_eq!(info.last_offset_delta, 1);
        assert_eq!(info.magic, 2);
        assert_eq!(info.total_bytes(), batch.len() as u64);
        assert_eq!(info.base_timestamp, 1_000);
        assert_eq!(info.compression_codec(), 0);
        assert_eq!(info.timestamp_type(), TimestampType::CreateTime);
    }

    #[test]
    fn bad_crc_is_rejected() {
        let mut batch = sample();
        let last = batch.len() - 1;
        batch[last] ^= 0xff;
        assert!(matches!(
            validate_batch(&batch),
            Err(BatchError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn bad_magic_is_rejected() {
        let mut batch = sample();
        batch[MAGIC_POS] = 1;
        assert_eq!(validate_batch(&batch), Err(BatchError::BadMagic(1)));
    }

    #[test]
    fn truncated_batch_is_rejected() {
        let batch = sample();
        assert!(matches!(
            validate_batch(&batch[..30]),
            Err(BatchError::TooShort { len: 30 })
        ));
        let cut = &batch[..batch.len() - 3];
        assert!(matches!(
            validate_batch(cut),
            Err(BatchError::LengthMismatch { .. })
        ));
        assert!(matches!(
            validate_batch(&[]),
            Err(BatchError::TooShort { len: 0 })
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut batch = sample();
        batch.extend_from_slice(&[0, 0, 0]);
        assert!(matches!(
            validate_batch(&batch),
            Err(BatchError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn two_batches_are_rejected() {
        let mut batch = sample();
        batch.extend_from_slice(&sample());
        assert_eq!(validate_batch(&batch), Err(BatchError::MultipleBatches));
    }

    #[test]
    fn empty_and_negative_delta_are_rejected() {
        let mut batch = sample();
        BatchHeader::view_mut(&mut batch)
            .unwrap()
            .records_count
            .set(0);
        write_crc(&mut batch);
        assert_eq!(validate_batch(&batch), Err(BatchError::Empty));

        let mut batch = sample();
        BatchHeader::view_mut(&mut batch)
            .unwrap()
            .last_offset_delta
            .set(-1);
        assert_eq!(
            validate_batch(&batch),
            Err(BatchError::BadLastOffsetDelta(-1))
        );
    }

    /// Rewrites header fields of `batch` through `edit` and reseals its CRC.
    fn edited(mut batch: Vec<u8>, edit: impl FnOnce(&mut BatchHeader)) -> Vec<u8> {
        edit(BatchHeader::view_mut(&mut batch).unwrap());
        write_crc(&mut batch);
        batch
    }

    #[test]
    fn client_batch_count_must_match_offset_range() {
        assert!(validate_client_batch(&sample()).is_ok());
        // One record claiming a million offsets.
        let claims = edited(sample(), |h| {
            h.records_count.set(1);
            h.last_offset_delta.set(1_000_000);
        });
        assert_eq!(
            validate_client_batch(&claims),
            Err(BatchError::CountMismatch {
                records_count: 1,
                last_offset_delta: 1_000_000
            })
        );
        // Stored batches may have fewer records than offsets (compaction): still valid there.
        assert!(validate_batch(&claims).is_ok());
        let fewer = edited(sample(), |h| h.records_count.set(3));
        assert!(matches!(
            validate_client_batch(&fewer),
            Err(BatchError::CountMismatch { .. })
        ));
    }

    #[test]
    fn client_batch_records_must_fit_the_bytes() {
        // Consistent header, but 2 records' bytes cannot hold a million records.
        let claims = edited(sample(), |h| {
            h.records_count.set(1_000_000);
            h.last_offset_delta.set(999_999);
        });
        assert!(matches!(
            validate_client_batch(&claims),
            Err(BatchError::RecordsTooShort {
                records_count: 1_000_000,
                ..
            })
        ));
        // Compressed records are not decompressed here, so the bound does not apply.
        let compressed = edited(claims, |h| h.attributes.set(4));
        assert!(validate_client_batch(&compressed).is_ok());
        // Seven bytes per record is the smallest encoding: the check never refuses a real batch.
        let smallest = build_batch(0, &[(None, None); 3]);
        assert_eq!(smallest.len() - BATCH_HEADER_BYTES, 3 * RECORD_BYTES_MIN);
        assert!(validate_client_batch(&smallest).is_ok());
    }

    #[test]
    fn client_control_and_transactional_batches_are_refused() {
        let control = edited(sample(), |h| h.attributes.set(ATTR_CONTROL));
        assert_eq!(
            validate_client_batch(&control),
            Err(BatchError::ControlFromClient)
        );
        assert!(validate_batch(&control).is_ok());
        let txn = edited(sample(), |h| h.attributes.set(ATTR_TRANSACTIONAL));
        assert_eq!(
            validate_client_batch(&txn),
            Err(BatchError::NoOngoingTransaction)
        );
        assert!(validate_batch(&txn).is_ok());
        // A transaction marker is a control batch first, as in Kafka's order of checks.
        let marker = edited(sample(), |h| {
            h.attributes.set(ATTR_CONTROL | ATTR_TRANSACTIONAL);
        });
        assert_eq!(
            validate_client_batch(&marker),
            Err(BatchError::ControlFromClient)
        );
        // The structural checks still come first.
        let mut bad_crc = txn.clone();
        let last = bad_crc.len() - 1;
        bad_crc[last] ^= 1;
        assert!(matches!(
            validate_client_batch(&bad_crc),
            Err(BatchError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn assigning_offset_and_epoch_keeps_crc_valid() {
        let original = sample();
        let mut batch = original.clone();
        assign_offset_and_epoch(&mut batch, 1234, 7);
        let info = validate_batch(&batch).expect("still valid");
        assert_eq!(info.base_offset, 1234);
        assert_eq!(info.partition_leader_epoch, 7);
        assert_eq!(info.crc, BatchHeader::view(&original).unwrap().crc.get());
        assert_eq!(batch[16..], original[16..]);
    }

    #[test]
    fn log_append_time_rewrites_crc() {
        let mut batch = sample();
        set_log_append_time(&mut batch, 99_999);
        let info = validate_batch(&batch).expect("valid after crc recompute");
        assert_eq!(info.max_timestamp, 99_999);
        assert_eq!(info.timestamp_type(), TimestampType::LogAppendTime);
    }
}
