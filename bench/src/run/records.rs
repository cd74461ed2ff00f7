//! Record batches as the load generator writes and reads them.
//!
//! Every value starts with the record's intended send time (Unix nanoseconds, big-endian), so
//! a consumer can measure end-to-end latency from the moment the record was due, not from when
//! a possibly delayed producer got round to it. Uncompressed batches are encoded and walked by
//! hand (no per-record allocation); compressed ones go through kafka-protocol's codecs.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// Bytes at the start of each value that carry the intended send time.
pub const STAMP_BYTES: usize = 8;
const BATCH_HEADER_BYTES: usize = 61;
const CRC_START: usize = 21;

pub use strom_client::batch::compression_from_name;

/// Records of one partition waiting to be sent: keys, intended times, and the bytes they take.
#[derive(Default)]
pub struct PendingBatch {
    /// Intended send time of each record, nanoseconds on the run's clock.
    pub due_ns: Vec<u64>,
    pub keys: Vec<Option<u32>>,
    /// Bytes the records will take on the wire (estimate, for batch.size).
    pub bytes: usize,
}

impl PendingBatch {
    pub fn push(&mut self, due_ns: u64, key: Option<u32>, record_bytes: usize) {
        self.due_ns.push(due_ns);
        self.keys.push(key);
        self.bytes += record_bytes;
    }

    pub fn is_empty(&self) -> bool {
        self.due_ns.is_empty()
    }
}

/// The key bytes of key number `k`.
pub fn key_bytes(k: u32, out: &mut Vec<u8>) {
    use std::io::Write;
    out.clear();
    // Formats straight into `out`: no allocation per record.
    let _ = write!(out, "key-{k}");
}

/// Encodes a v2 batch of `pending`'s records. Values are `value_bytes` long: the intended send
/// time (Unix ns = `unix_base_ns` + due) followed by `payload`. `now_ms` is the batch timestamp.
pub fn encode(
    pending: &PendingBatch,
    value_bytes: usize,
    payload: &[u8],
    unix_base_ns: u64,
    now_ms: i64,
    compression: Compression,
) -> Result<Bytes, String> {
    let value_bytes = value_bytes.max(STAMP_BYTES);
    let fill = &payload[..value_bytes - STAMP_BYTES];
    if compression != Compression::None {
        return encode_with_library(pending, fill, unix_base_ns, now_ms, compression);
    }
    let count = pending.due_ns.len();
    let mut buf = BytesMut::with_capacity(BATCH_HEADER_BYTES + pending.bytes + count * 16);
    buf.put_i64(0); // base offset
    buf.put_i32(0); // batch length, patched below
    buf.put_i32(-1); // partition leader epoch
    buf.put_i8(2); // magic
    buf.put_u32(0); // crc, patched below
    buf.put_i16(0); // attributes: no compression, create time
    buf.put_i32(count as i32 - 1); // last offset delta
    buf.put_i64(now_ms); // base timestamp
    buf.put_i64(now_ms); // max timestamp
    buf.put_i64(-1); // producer id
    buf.put_i16(-1); // producer epoch
    buf.put_i32(-1); // base sequence
    buf.put_i32(count as i32);
    let mut key = Vec::new();
    for (i, (&due, k)) in pending.due_ns.iter().zip(&pending.keys).enumerate() {
        if let Some(k) = k {
            key_bytes(*k, &mut key);
        }
        let key_len = k.map_or(-1, |_| key.len() as i64);
        // attributes, timestamp delta 0, offset delta, key, value, no headers
        let body_len = 1
            + varint_len(0)
            + varint_len(i as i64)
            + varint_len(key_len)
            + key_len.max(0) as usize
            + varint_len(value_bytes as i64)
            + value_bytes
            + varint_len(0);
        put_varint(&mut buf, body_len as i64);
        buf.put_i8(0);
        put_varint(&mut buf, 0);
        put_varint(&mut buf, i as i64);
        put_varint(&mut buf, key_len);
        if k.is_some() {
            buf.put_slice(&key);
        }
        put_varint(&mut buf, value_bytes as i64);
        buf.put_u64(unix_base_ns + due);
        buf.put_slice(fill);
        put_varint(&mut buf, 0);
    }
    let len = (buf.len() - 12) as i32;
    buf[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&buf[CRC_START..]);
    buf[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(buf.freeze())
}

fn encode_with_library(
    pending: &PendingBatch,
    fill: &[u8],
    unix_base_ns: u64,
    now_ms: i64,
    compression: Compression,
) -> Result<Bytes, String> {
    let mut key = Vec::new();
    let records: Vec<Record> = pending
        .due_ns
        .iter()
        .zip(&pending.keys)
        .enumerate()
        .map(|(i, (&due, k))| {
            let mut value = BytesMut::with_capacity(STAMP_BYTES + fill.len());
            value.put_u64(unix_base_ns + due);
            value.put_slice(fill);
            Record {
                transactional: false,
                control: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                // Constant offset - sequence keeps the records in one batch; the first record's
                // sequence (-1: not idempotent) becomes the batch's base sequence.
                sequence: i as i32 - 1,
                delete_horizon: false,
                timestamp: now_ms,
                key: k.map(|k| {
                    key_bytes(k, &mut key);
                    Bytes::copy_from_slice(&key)
                }),
                value: Some(value.freeze()),
                headers: Default::default(),
            }
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .map_err(|e| format!("encoding a {compression:?} batch: {e}"))?;
    Ok(buf.freeze())
}

/// What a fetched record set held.
#[derive(Default, Debug, PartialEq)]
pub struct Walked {
    pub records: u64,
    /// Offset after the last whole batch (the next fetch position), if any batch was whole.
    pub next_offset: Option<i64>,
}

/// Walks the whole batches of a fetched record set, calling `stamp(unix_ns)` with each data
/// record's intended send time (records whose value is too short to carry one are counted but
/// not stamped). Control batches are skipped.
pub fn walk(records: &Bytes, mut stamp: impl FnMut(u64)) -> Result<Walked, String> {
    const CONTROL: u16 = 0x20;
    let mut out = Walked::default();
    let mut pos = 0usize;
    while records.len() - pos >= BATCH_HEADER_BYTES {
        let b = &records[pos..];
        let len = i32::from_be_bytes(b[8..12].try_into().expect("4 bytes")) as usize + 12;
        if len < BATCH_HEADER_BYTES || b.len() < len {
            break;
        }
        let base = i64::from_be_bytes(b[0..8].try_into().expect("8 bytes"));
        let attributes = u16::from_be_bytes(b[21..23].try_into().expect("2 bytes"));
        let last_delta = i32::from_be_bytes(b[23..27].try_into().expect("4 bytes"));
        let count = i32::from_be_bytes(b[57..61].try_into().expect("4 bytes")).max(0) as u64;
        out.next_offset = Some(base + i64::from(last_delta) + 1);
        if attributes & CONTROL == 0 {
            out.records += count;
            if attributes & 0x7 == 0 {
                walk_plain(&b[BATCH_HEADER_BYTES..len], &mut stamp)?;
            } else {
                let mut batch = records.slice(pos..pos + len);
                let decoded = RecordBatchDecoder::decode(&mut batch)
                    .map_err(|e| format!("decoding a fetched batch: {e}"))?;
                for r in decoded.records {
                    if let Some(v) = r.value.as_ref().filter(|v| v.len() >= STAMP_BYTES) {
                        stamp(u64::from_be_bytes(
                            v[..STAMP_BYTES].try_into().expect("8 bytes"),
                        ));
                    }
                }
            }
        }
        pos += len;
    }
    Ok(out)
}

fn walk_plain(mut b: &[u8], stamp: &mut impl FnMut(u64)) -> Result<(), String> {
    let bad = || "malformed record in a fetched batch".to_string();
    while !b.is_empty() {
        let (len, n) = get_varint(b).ok_or_else(bad)?;
        let rest = &b[n..];
        if len < 0 || rest.len() < len as usize {
            return Err(bad());
        }
        let mut r = &rest[..len as usize];
        b = &rest[len as usize..];
        r = r.get(1..).ok_or_else(bad)?; // attributes
        for _ in 0..2 {
            let (_, n) = get_varint(r).ok_or_else(bad)?; // timestamp delta, offset delta
            r = &r[n..];
        }
        let (key_len, n) = get_varint(r).ok_or_else(bad)?;
        r = r.get(n + key_len.max(0) as usize..).ok_or_else(bad)?;
        let (value_len, n) = get_varint(r).ok_or_else(bad)?;
        r = &r[n..];
        if value_len >= STAMP_BYTES as i64 && r.len() >= STAMP_BYTES {
            stamp(u64::from_be_bytes(
                r[..STAMP_BYTES].try_into().expect("8 bytes"),
            ));
        }
    }
    Ok(())
}

fn varint_len(v: i64) -> usize {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut n = 1;
    while z >= 0x80 {
        z >>= 7;
        n += 1;
    }
    n
}

fn put_varint(buf: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    buf.put_u8(z as u8);
}

fn get_varint(b: &[u8]) -> Option<(i64, usize)> {
    let mut z = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        z |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((((z >> 1) as i64) ^ -((z & 1) as i64), i + 1));
        }
    }
    None
}

/// Kafka's default partitioner for keyed records: murmur2 of the key, made positive.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) as i32) % partitions
}

fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// A payload that compresses about as well as typical text-like data: pseudo-random bytes from
/// a 64-symbol alphabet.
pub fn payload(bytes: usize) -> Vec<u8> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,";
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % ALPHABET.len() as u64) as usize]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(n: usize, keyed: bool) -> PendingBatch {
        let mut p = PendingBatch::default();
        for i in 0..n {
            p.push(1000 + i as u64, keyed.then_some(i as u32 % 3), 100);
        }
        p
    }

    #[test]
    fn plain_batches_round_trip_through_the_library_decoder_and_the_walker() {
        let fill = payload(1024);
        for keyed in [false, true] {
            let b = encode(
                &pending(5, keyed),
                100,
                &fill,
                7_000_000,
                1_700_000_000_000,
                Compression::None,
            )
            .unwrap();
            let decoded = RecordBatchDecoder::decode(&mut b.clone()).unwrap();
            assert_eq!(decoded.records.len(), 5);
            assert_eq!(decoded.records[2].offset, 2);
            assert_eq!(decoded.records[1].value.as_ref().unwrap().len(), 100);
            assert_eq!(
                decoded.records[1].key.as_deref(),
                keyed.then_some(&b"key-1"[..])
            );
            let mut stamps = Vec::new();
            let w = walk(&b, |ns| stamps.push(ns)).unwrap();
            assert_eq!(
                w,
                Walked {
                    records: 5,
                    next_offset: Some(5)
                }
            );
            assert_eq!(
                stamps,
                vec![7_001_000, 7_001_001, 7_001_002, 7_001_003, 7_001_004]
            );
        }
    }

    #[test]
    fn compressed_batches_are_walked_too() {
        let fill = payload(1024);
        for c in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = encode(&pending(4, true), 200, &fill, 0, 1, c).unwrap();
            let mut stamps = Vec::new();
            let w = walk(&b, |ns| stamps.push(ns)).unwrap();
            assert_eq!(w.records, 4, "{c:?}");
            assert_eq!(stamps, vec![1000, 1001, 1002, 1003], "{c:?}");
        }
    }

    #[test]
    fn a_truncated_tail_is_left_for_the_next_fetch() {
        let fill = payload(64);
        let b = encode(&pending(3, false), 64, &fill, 0, 1, Compression::None).unwrap();
        let mut two = BytesMut::new();
        two.put_slice(&b);
        two.put_slice(&b[..b.len() - 10]);
        let w = walk(&two.freeze(), |_| {}).unwrap();
        assert_eq!(w.records, 3);
    }

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
    }
}
