//! Varints and the record layout inside an uncompressed v2 batch.
//!
//! Record: length varint, attributes i8, timestampDelta varlong, offsetDelta varint,
//! keyLength varint (-1 = null), key, valueLength varint, value, headerCount varint, headers.
//! All varints are zigzag-encoded.

use crate::batch::{
    batch_crc, validate_batch, BatchError, BatchHeader, BATCH_HEADER_BYTES, MAGIC_V2,
};

/// Longest zigzag varlong encoding in bytes.
const VARLONG_BYTES_MAX: usize = 10;

/// Appends the zigzag varint encoding of `value`.
pub(crate) fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        let byte = (zigzag & 0x7f) as u8;
        zigzag >>= 7;
        if zigzag == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Decodes a zigzag varint at `*pos`, advancing it. None if truncated or too long.
pub(crate) fn get_varint(bytes: &[u8], pos: &mut usize) -> Option<i64> {
    let mut raw: u64 = 0;
    for i in 0..VARLONG_BYTES_MAX {
        let byte = *bytes.get(*pos)?;
        *pos += 1;
        raw |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(((raw >> 1) as i64) ^ -((raw & 1) as i64));
        }
    }
    None
}

/// In an uncompressed batch (whole bytes, header included), finds the first record whose
/// timestamp is >= `target_ms`. Returns (offsetDelta, timestamp). None if no record qualifies
/// or the records do not parse; the caller then falls back to batch granularity.
pub(crate) fn first_record_at_or_after(
    batch: &[u8],
    base_timestamp: i64,
    records_count: i32,
    target_ms: i64,
) -> Option<(i32, i64)> {
    let mut pos = BATCH_HEADER_BYTES;
    for _ in 0..records_count.max(0) {
        let length = get_varint(batch, &mut pos)?;
        let body_start = pos;
        let body_end = body_start.checked_add(usize::try_from(length).ok()?)?;
        if body_end > batch.len() {
            return None;
        }
        let mut cursor = body_start + 1; // skip attributes
        let timestamp_delta = get_varint(batch, &mut cursor)?;
        let offset_delta = get_varint(batch, &mut cursor)?;
        let timestamp = base_timestamp.checked_add(timestamp_delta)?;
        if timestamp >= target_ms {
            return Some((i32::try_from(offset_delta).ok()?, timestamp));
        }
        pos = body_end;
    }
    None
}

/// Header fields an encoder may set; the rest is derived from the records.
#[derive(Clone, Copy, Debug)]
pub struct BatchOptions {
    /// Written into baseOffset (the log overwrites it on append).
    pub base_offset: i64,
    /// Written into partitionLeaderEpoch (the log overwrites it on append).
    pub partition_leader_epoch: i32,
    /// Attribute bits. Setting a compression codec does NOT compress the records; it only lets
    /// tests exercise code that treats compressed batches differently.
    pub attributes: i16,
    /// Producer id (-1 for none).
    pub producer_id: i64,
    /// Producer epoch (-1 for none).
    pub producer_epoch: i16,
    /// First sequence number (-1 for none).
    pub base_sequence: i32,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            base_offset: 0,
            partition_leader_epoch: -1,
            attributes: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }
}

/// One record of an uncompressed batch: key, value (None = null) and timestamp in ms.
pub type RecordParts<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, i64);

/// Encodes a valid uncompressed v2 batch (no headers on the records) with a correct CRC-32C.
/// `records` must not be empty.
pub fn encode_batch_with(options: &BatchOptions, records: &[RecordParts<'_>]) -> Vec<u8> {
    assert!(!records.is_empty(), "a batch needs at least one record");
    let base_timestamp = records[0].2;
    let max_timestamp = records
        .iter()
        .map(|record| record.2)
        .max()
        .unwrap_or(base_timestamp);

    let mut out = vec![0u8; BATCH_HEADER_BYTES];
    let mut body = Vec::new();
    for (delta, (key, value, timestamp)) in records.iter().enumerate() {
        body.clear();
        body.push(0); // record attributes
        put_varint(&mut body, timestamp - base_timestamp);
        put_varint(&mut body, delta as i64);
        put_bytes(&mut body, *key);
        put_bytes(&mut body, *value);
        put_varint(&mut body, 0); // no headers
        put_varint(&mut out, body.len() as i64);
        out.extend_from_slice(&body);
    }

    let total = out.len();
    let header = BatchHeader::view_mut(&mut out).expect("buffer starts with a header");
    header.base_offset.set(options.base_offset);
    header.batch_length.set((total - 12) as i32);
    header
        .partition_leader_epoch
        .set(options.partition_leader_epoch);
    header.magic = MAGIC_V2;
    header.attributes.set(options.attributes);
    header.last_offset_delta.set(records.len() as i32 - 1);
    header.base_timestamp.set(base_timestamp);
    header.max_timestamp.set(max_timestamp);
    header.producer_id.set(options.producer_id);
    header.producer_epoch.set(options.producer_epoch);
    header.base_sequence.set(options.base_sequence);
    header.records_count.set(records.len() as i32);
    let crc = batch_crc(&out);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out
}

/// Encodes a valid uncompressed v2 batch with default header options.
pub fn encode_batch(records: &[RecordParts<'_>]) -> Vec<u8> {
    encode_batch_with(&BatchOptions::default(), records)
}

fn put_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(bytes) => {
            put_varint(out, bytes.len() as i64);
            out.extend_from_slice(bytes);
        }
    }
}

/// A record read back from an uncompressed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord<'a> {
    /// Absolute offset (baseOffset + offsetDelta).
    pub offset: i64,
    /// Absolute timestamp.
    pub timestamp: i64,
    /// Key (None = null).
    pub key: Option<&'a [u8]>,
    /// Value (None = null, a tombstone).
    pub value: Option<&'a [u8]>,
}

/// Why the records of a batch could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The batch itself is invalid.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The batch is compressed; only uncompressed batches are decoded here.
    #[error("batch is compressed (codec {0})")]
    Compressed(u8),
    /// A record does not parse.
    #[error("record {index} is malformed")]
    BadRecord {
        /// Position of the record in the batch.
        index: i32,
    },
}

/// Decodes every record of one uncompressed v2 batch (`batch` holds exactly one whole batch;
/// its CRC is checked). Record headers are skipped.
pub fn decode_records(batch: &[u8]) -> Result<Vec<DecodedRecord<'_>>, DecodeError> {
    validate_batch(batch)?;
    let header = BatchHeader::view(batch).expect("validated");
    let codec = header.info().compression_codec();
    if codec != 0 {
        return Err(DecodeError::Compressed(codec));
    }
    let base_offset = header.base_offset.get();
    let base_timestamp = header.base_timestamp.get();
    let count = header.records_count.get();
    let mut out = Vec::with_capacity(count.max(0) as usize);
    let mut pos = BATCH_HEADER_BYTES;
    for index in 0..count {
        let record = decode_record(batch, &mut pos, base_offset, base_timestamp)
            .ok_or(DecodeError::BadRecord { index })?;
        out.push(record);
    }
    Ok(out)
}

fn decode_record<'a>(
    batch: &'a [u8],
    pos: &mut usize,
    base_offset: i64,
    base_timestamp: i64,
) -> Option<DecodedRecord<'a>> {
    let length = usize::try_from(get_varint(batch, pos)?).ok()?;
    let end = pos.checked_add(length)?;
    if end > batch.len() {
        return None;
    }
    let body = &batch[..end];
    let mut cursor = *pos + 1; // skip attributes
    let timestamp = base_timestamp.checked_add(get_varint(body, &mut cursor)?)?;
    let offset = base_offset.checked_add(get_varint(body, &mut cursor)?)?;
    let key = get_bytes(body, &mut cursor)?;
    let value = get_bytes(body, &mut cursor)?;
    *pos = end;
    Some(DecodedRecord {
        offset,
        timestamp,
        key,
        value,
    })
}

fn get_bytes<'a>(bytes: &'a [u8], pos: &mut usize) -> Option<Option<&'a [u8]>> {
    let len = get_varint(bytes, pos)?;
    if len < 0 {
        return Some(None);
    }
    let end = pos.checked_add(usize::try_from(len).ok()?)?;
    let slice = bytes.get(*pos..end)?;
    *pos = end;
    Some(Some(slice))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::build_batch_with_timestamps;

    #[test]
    fn varint_round_trip() {
        for value in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            300,
            -300,
            i64::MAX,
            i64::MIN,
            1 << 40,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut pos = 0;
            assert_eq!(get_varint(&out, &mut pos), Some(value));
            assert_eq!(pos, out.len());
        }
        let mut pos = 0;
        assert_eq!(get_varint(&[0x80, 0x80], &mut pos), None);
    }

    #[test]
    fn finds_first_record_by_timestamp() {
        let batch = build_batch_with_timestamps(&[
            (None, Some(b"a"), 100),
            (None, Some(b"b"), 300),
            (None, Some(b"c"), 200),
            (None, Some(b"d"), 400),
        ]);
        assert_eq!(first_record_at_or_after(&batch, 100, 4, 50), Some((0, 100)));
        assert_eq!(
            first_record_at_or_after(&batch, 100, 4, 150),
            Some((1, 300))
        );
        assert_eq!(
            first_record_at_or_after(&batch, 100, 4, 301),
            Some((3, 400))
        );
        assert_eq!(first_record_at_or_after(&batch, 100, 4, 401), None);
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let batch = encode_batch(&[
            (Some(b"k1"), Some(b"v1"), 10),
            (Some(b"k2"), None, 12),
            (None, Some(b""), 11),
        ]);
        let records = decode_records(&batch).expect("decodes");
        assert_eq!(records.len(), 3);
        assert_eq!(
            records[0],
            DecodedRecord {
                offset: 0,
                timestamp: 10,
                key: Some(b"k1"),
                value: Some(b"v1")
            }
        );
        assert_eq!(
            records[1],
            DecodedRecord {
                offset: 1,
                timestamp: 12,
                key: Some(b"k2"),
                value: None
            }
        );
        assert_eq!(
            records[2],
            DecodedRecord {
                offset: 2,
                timestamp: 11,
                key: None,
                value: Some(b"")
            }
        );
        let mut corrupt = batch.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert!(matches!(
            decode_records(&corrupt),
            Err(DecodeError::Batch(BatchError::CrcMismatch { .. }))
        ));
    }
}

/// Where one record lies in a records section, and what compaction needs of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordSpan {
    /// Byte range of the whole record (length prefix included) in the records section.
    pub start: usize,
    /// End of the record.
    pub end: usize,
    /// offsetDelta.
    pub offset_delta: i64,
    /// timestampDelta.
    pub timestamp_delta: i64,
    /// Byte range of the key, None for a null key.
    pub key: Option<(usize, usize)>,
    /// The value is null (a tombstone).
    pub tombstone: bool,
}

/// Splits a (decompressed) records section into its `count` records. None if it does not parse
/// or has bytes left over.
pub(crate) fn record_spans(records: &[u8], count: i32) -> Option<Vec<RecordSpan>> {
    let mut out = Vec::with_capacity(count.clamp(0, 1 << 16) as usize);
    let mut pos = 0usize;
    for _ in 0..count.max(0) {
        let start = pos;
        let length = usize::try_from(get_varint(records, &mut pos)?).ok()?;
        let end = pos.checked_add(length)?;
        let body = records.get(..end)?;
        let mut cursor = pos + 1; // attributes
        let timestamp_delta = get_varint(body, &mut cursor)?;
        let offset_delta = get_varint(body, &mut cursor)?;
        let key_len = get_varint(body, &mut cursor)?;
        let key = if key_len < 0 {
            None
        } else {
            let key_end = cursor.checked_add(usize::try_from(key_len).ok()?)?;
            if key_end > end {
                return None;
            }
            let key = (cursor, key_end);
            cursor = key_end;
            Some(key)
        };
        let value_len = get_varint(body, &mut cursor)?;
        if cursor > end {
            return None;
        }
        out.push(RecordSpan {
            start,
            end,
            offset_delta,
            timestamp_delta,
            key,
            tombstone: value_len < 0,
        });
        pos = end;
    }
    (pos == records.len()).then_some(out)
}
