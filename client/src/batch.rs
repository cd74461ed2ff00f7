//! Record batches (magic v2) in and out: encoding records a tool produces, and walking the
//! record sets a Fetch returns, which may end in a partial batch.

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// Bytes before a batch's `batchLength` field ends: baseOffset (8) + batchLength (4).
const LOG_OVERHEAD: usize = 12;

/// One record to send.
#[derive(Debug, Clone, Default)]
pub struct OutRecord {
    /// The record key (partitioning and compaction); None is a null key.
    pub key: Option<Bytes>,
    /// The record value; None is a null value (a tombstone on a compacted topic).
    pub value: Option<Bytes>,
    /// Record headers in order, as (name, value); a None value is a null header value.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Milliseconds since the Unix epoch.
    pub timestamp: i64,
}

/// One record read back.
#[derive(Debug, Clone)]
pub struct InRecord {
    /// The record's offset in its partition.
    pub offset: i64,
    /// Milliseconds since the Unix epoch (create or log-append time, as the topic says).
    pub timestamp: i64,
    /// The record key; None is a null key.
    pub key: Option<Bytes>,
    /// The record value; None is a null value.
    pub value: Option<Bytes>,
    /// Record headers in order, as (name, value).
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Parses a codec name as the Kafka tools spell it (`none`, `gzip`, `snappy`, `lz4`, `zstd`).
pub fn compression_from_name(name: &str) -> Result<Compression, String> {
    Ok(match name {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        other => {
            return Err(format!(
                "unknown compression {other:?} (none, gzip, snappy, lz4, zstd)"
            ))
        }
    })
}

/// Encodes `records` as one v2 batch with relative offsets from 0 (the broker assigns the
/// real ones).
pub fn encode(records: &[OutRecord], compression: Compression) -> Result<Bytes, String> {
    let recs: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Record {
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
            timestamp: r.timestamp,
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (StrBytes::from_string(k.clone()), v.clone()))
                .collect(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        recs.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .map_err(|e| format!("encoding a record batch: {e}"))?;
    Ok(buf.freeze())
}

/// What a record set held.
#[derive(Debug, Default)]
pub struct Decoded {
    /// Records of every complete batch, control records left out, in offset order.
    pub records: Vec<InRecord>,
    /// The offset after the last complete batch (None: no complete batch), which moves a
    /// reader past batches that hold only control records.
    pub next_offset: Option<i64>,
}

/// Offset of the `lastOffsetDelta` field in a v2 batch header.
const LAST_OFFSET_DELTA_AT: usize = 23;

/// The records of every complete batch in `set` (a Fetch answer's bytes). A trailing partial
/// batch is ignored: the next fetch starts where the last complete one ended.
pub fn decode(set: &Bytes) -> Result<Decoded, String> {
    let mut out = Vec::new();
    let mut next_offset = None;
    let mut pos = 0;
    while set.len() - pos >= LOG_OVERHEAD {
        let len = i32::from_be_bytes(set[pos + 8..pos + 12].try_into().expect("4 bytes"));
        if len < 0 {
            return Err(format!("a fetched batch claims a negative length {len}"));
        }
        let end = pos + LOG_OVERHEAD + len as usize;
        if end > set.len() {
            break;
        }
        if len as usize >= LAST_OFFSET_DELTA_AT + 4 - LOG_OVERHEAD {
            let base = i64::from_be_bytes(set[pos..pos + 8].try_into().expect("8 bytes"));
            let at = pos + LAST_OFFSET_DELTA_AT;
            let delta = i32::from_be_bytes(set[at..at + 4].try_into().expect("4 bytes"));
            next_offset = Some(base + i64::from(delta) + 1);
        }
        let mut batch = set.slice(pos..end);
        let decoded = RecordBatchDecoder::decode(&mut batch)
            .map_err(|e| format!("decoding a fetched batch: {e}"))?;
        for r in decoded.records {
            if r.control {
                continue;
            }
            out.push(InRecord {
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            });
        }
        pos = end;
    }
    Ok(Decoded {
        records: out,
        next_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_every_codec() {
        for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
            let recs: Vec<OutRecord> = (0..3)
                .map(|i| OutRecord {
                    key: (i != 1).then(|| Bytes::from(format!("k{i}"))),
                    value: Some(Bytes::from(format!("v{i}"))),
                    headers: vec![("h".into(), Some(Bytes::from_static(b"x")))],
                    timestamp: 1_700_000_000_000 + i,
                })
                .collect();
            let b = encode(&recs, compression_from_name(codec).unwrap()).unwrap();
            assert_eq!(
                i32::from_be_bytes(b[57..61].try_into().unwrap()),
                3,
                "one batch of 3 records"
            );
            assert_eq!(
                i32::from_be_bytes(b[53..57].try_into().unwrap()),
                -1,
                "base sequence"
            );
            let mut two = BytesMut::from(&b[..]);
            two.extend_from_slice(&b);
            // A partial third batch at the end is ignored.
            two.extend_from_slice(&b[..20]);
            let decoded = decode(&two.freeze()).unwrap();
            assert_eq!(decoded.next_offset, Some(3), "{codec}");
            let got = decoded.records;
            assert_eq!(got.len(), 6, "{codec}");
            assert_eq!(got[1].key, None);
            assert_eq!(got[2].value.as_deref(), Some(&b"v2"[..]));
            assert_eq!(got[0].headers[0].0, "h");
            assert_eq!(got[2].timestamp, 1_700_000_000_002);
        }
    }
}
