//! Hand-written FetchResponse encoder (v4..=12) that leaves record bytes in their segment files.
//!
//! The generated encoder needs the records in memory. This one writes everything around the
//! records into memory and emits each partition's records as an [`OutChunk::File`] range, which
//! the connection writer sends with `sendfile(2)`. Tested against the generated decoder.

use bytes::{BufMut, BytesMut};
use strom_net::OutChunk;

use crate::shard::ops::FetchResult;

/// One partition of a FetchResponse.
pub struct PartitionOut {
    /// Partition index.
    pub partition: i32,
    /// What the owner shard read (offsets, error, the records' file range).
    pub result: FetchResult,
}

/// One topic of a FetchResponse.
pub struct TopicOut {
    /// Topic name.
    pub name: String,
    /// Its partitions, in request order.
    pub partitions: Vec<PartitionOut>,
}

/// A whole FetchResponse.
pub struct FetchOut {
    /// Top-level error code.
    pub error_code: i16,
    /// Fetch session id (always 0: sessions are not kept).
    pub session_id: i32,
    /// Whether the request asked for read_committed (last stable offset semantics).
    pub read_committed: bool,
    /// The topics, in request order.
    pub topics: Vec<TopicOut>,
}

struct Writer {
    chunks: Vec<OutChunk>,
    buf: BytesMut,
    flexible: bool,
}

impl Writer {
    fn uvarint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.put_u8(v as u8);
    }

    fn array_len(&mut self, n: usize) {
        if self.flexible {
            self.uvarint(n as u64 + 1);
        } else {
            self.buf.put_i32(n as i32);
        }
    }

    fn string(&mut self, s: &str) {
        if self.flexible {
            self.uvarint(s.len() as u64 + 1);
        } else {
            self.buf.put_i16(s.len() as i16);
        }
        self.buf.put_slice(s.as_bytes());
    }

    fn tags(&mut self) {
        if self.flexible {
            self.uvarint(0);
        }
    }

    /// The partition's tagged fields (v12+): `DivergingEpoch` (tag 0) and `CurrentLeader`
    /// (tag 1) when set.
    fn partition_tags(&mut self, r: &FetchResult) {
        if !self.flexible {
            return;
        }
        let count = u64::from(r.diverging_epoch.is_some()) + u64::from(r.current_leader.is_some());
        self.uvarint(count);
        if let Some((epoch, end_offset)) = r.diverging_epoch {
            self.uvarint(0);
            self.uvarint(4 + 8 + 1);
            self.buf.put_i32(epoch);
            self.buf.put_i64(end_offset);
            self.uvarint(0);
        }
        if let Some((leader, epoch)) = r.current_leader {
            self.uvarint(1);
            self.uvarint(4 + 4 + 1);
            self.buf.put_i32(leader);
            self.buf.put_i32(epoch);
            self.uvarint(0);
        }
    }

    fn records(&mut self, r: &FetchResult) {
        let len = r.slice.as_ref().map_or(0, |s| s.len);
        // Never null: librdkafka rejects a null record set ("invalid MessageSetSize -1").
        if self.flexible {
            self.uvarint(u64::from(len) + 1);
        } else {
            self.buf.put_i32(len as i32);
        }
        if let Some(s) = &r.slice {
            if s.len > 0 {
                let head = self.buf.split().freeze();
                self.chunks.push(OutChunk::Bytes(head));
                self.chunks.push(OutChunk::File {
                    fd: s.fd.clone(),
                    position: s.position,
                    len: s.len,
                });
            }
        }
    }
}

/// Encodes `[size][header][body]` of a FetchResponse as chunks.
pub fn encode(version: i16, correlation_id: i32, out: &FetchOut) -> Vec<OutChunk> {
    let flexible = version >= 12;
    let mut w = Writer {
        chunks: Vec::new(),
        buf: BytesMut::with_capacity(256),
        flexible,
    };
    w.buf.put_i32(0); // size, patched below
    w.buf.put_i32(correlation_id);
    w.tags(); // response header v1
    w.buf.put_i32(0); // throttle_time_ms
    if version >= 7 {
        w.buf.put_i16(out.error_code);
        w.buf.put_i32(out.session_id);
    }
    w.array_len(out.topics.len());
    for t in &out.topics {
        w.string(&t.name);
        w.array_len(t.partitions.len());
        for p in &t.partitions {
            let r = &p.result;
            w.buf.put_i32(p.partition);
            w.buf.put_i16(r.error);
            w.buf.put_i64(r.high_watermark);
            w.buf.put_i64(r.last_stable_offset);
            if version >= 5 {
                w.buf.put_i64(r.log_start_offset);
            }
            // aborted_transactions: none exist yet; null for read_uncommitted, empty otherwise.
            match (out.read_committed, flexible) {
                (false, true) => w.uvarint(0),
                (false, false) => w.buf.put_i32(-1),
                (true, _) => w.array_len(0),
            }
            if version >= 11 {
                w.buf.put_i32(-1); // preferred_read_replica
            }
            w.records(r);
            w.partition_tags(r);
        }
        w.tags();
    }
    w.tags();
    let tail = w.buf.split().freeze();
    w.chunks.push(OutChunk::Bytes(tail));
    let total: usize = w.chunks.iter().map(OutChunk::len).sum();
    // Patch the size prefix into the first chunk.
    if let Some(OutChunk::Bytes(first)) = w.chunks.first_mut() {
        let mut b = BytesMut::from(&first[..]);
        b[..4].copy_from_slice(&((total - 4) as i32).to_be_bytes());
        *first = b.freeze();
    }
    w.chunks
}

/// Concatenates chunks, reading file ranges (tests only).
#[cfg(test)]
pub fn materialize(chunks: &[OutChunk]) -> bytes::Bytes {
    use std::os::unix::fs::FileExt;
    let mut out = BytesMut::new();
    for c in chunks {
        match c {
            OutChunk::Bytes(b) => out.put_slice(b),
            OutChunk::File { fd, position, len } => {
                let mut v = vec![0u8; *len as usize];
                // SAFETY: (test helper) the fd stays open while `fd` is alive; ManuallyDrop
                // keeps this temporary File from closing it.
                let f = std::mem::ManuallyDrop::new(unsafe {
                    <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd.as_raw_fd())
                });
                f.read_exact_at(&mut v, *position).unwrap();
                out.put_slice(&v);
            }
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;
    use kafka_protocol::messages::{FetchResponse, ResponseHeader};
    use kafka_protocol::protocol::Decodable;
    use std::io::Write;
    use std::os::fd::OwnedFd;
    use std::sync::Arc;
    use strom_storage::{Offset, ReadSlice, SegmentFd};

    #[test]
    fn matches_the_generated_decoder_for_every_version() {
        let mut file = tempfile::tempfile().unwrap();
        let payload: Vec<u8> = (0..200u32).map(|i| (i * 7) as u8).collect();
        file.write_all(&payload).unwrap();
        let fd = Arc::new(SegmentFd::from(OwnedFd::from(file)));
        let slice = ReadSlice {
            fd,
            position: 10,
            len: 150,
            first_offset: Offset(5),
        };
        for version in 4..=12i16 {
            let with_data = FetchResult {
                error: 0,
                high_watermark: 42,
                last_stable_offset: 42,
                log_start_offset: 3,
                slice: Some(slice.clone()),
                diverging_epoch: Some((4, 17)),
                current_leader: None,
            };
            let empty = FetchResult {
                error: 6,
                high_watermark: -1,
                last_stable_offset: -1,
                log_start_offset: -1,
                slice: None,
                diverging_epoch: None,
                current_leader: Some((2, 9)),
            };
            let out = FetchOut {
                error_code: 0,
                session_id: 0,
                read_committed: version % 2 == 0,
                topics: vec![
                    TopicOut {
                        name: "orders".into(),
                        partitions: vec![
                            PartitionOut {
                                partition: 0,
                                result: with_data,
                            },
                            PartitionOut {
                                partition: 3,
                                result: empty,
                            },
                        ],
                    },
                    TopicOut {
                        name: "t2".into(),
                        partitions: vec![],
                    },
                ],
            };
            let chunks = encode(version, 77, &out);
            let mut bytes = materialize(&chunks);
            let size = bytes.get_i32() as usize;
            assert_eq!(size, bytes.len(), "v{version} size prefix");
            let header_version = if version >= 12 { 1 } else { 0 };
            let header = ResponseHeader::decode(&mut bytes, header_version).unwrap();
            assert_eq!(header.correlation_id, 77);
            let resp = FetchResponse::decode(&mut bytes, version).unwrap();
            assert_eq!(bytes.remaining(), 0, "v{version} trailing bytes");
            assert_eq!(resp.responses.len(), 2);
            let p0 = &resp.responses[0].partitions[0];
            assert_eq!(resp.responses[0].topic.0.as_str(), "orders");
            assert_eq!(p0.high_watermark, 42);
            assert_eq!(p0.records.as_deref(), Some(&payload[10..160]));
            if version >= 5 {
                assert_eq!(p0.log_start_offset, 3);
            }
            if version >= 12 {
                let d = &p0.diverging_epoch;
                assert_eq!(
                    (d.epoch, d.end_offset),
                    (4, 17),
                    "v{version} diverging epoch"
                );
            }
            let p1 = &resp.responses[0].partitions[1];
            assert_eq!((p1.partition_index, p1.error_code), (3, 6));
            if version >= 12 {
                let c = &p1.current_leader;
                assert_eq!(
                    (c.leader_id.0, c.leader_epoch),
                    (2, 9),
                    "v{version} current leader"
                );
                assert_eq!(
                    p1.diverging_epoch.epoch, -1,
                    "v{version} no diverging epoch"
                );
            }
            assert_eq!(
                p1.records.as_deref(),
                Some(&[][..]),
                "empty records are non-null"
            );
        }
    }
}
