//! Varints and the record layout inside an uncompressed v2 batch.
//!
//! Record: length varint, attributes i8, timestampDelta varlong, offsetDelta varint,
//! keyLength varint (-1 = null), key, valueLength varint, value, headerCount varint, headers.
//! All varints are zigzag-encoded.

use crate::batch::BATCH_HEADER_BYTES;

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
}
