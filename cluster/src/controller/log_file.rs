//! The bytes of the controller's durable Raft log: one record per [`PersistBatch`], appended.
//!
//! ```text
//! record  := length:u32le  crc:u32le  body            (crc = CRC-32C of body; length = body bytes)
//! body    := version:u8 = 1
//!            snapshot: part                           (empty part = none)
//!            entries:u32le  entry: part * entries
//!            hard_state: part                         (empty part = none)
//! part    := length:u32le  protobuf bytes of the Raft message
//! ```
//!
//! Replaying the records in order through [`RaftLogStore::persist`] rebuilds the store. A
//! record cut short or with a bad CRC can only be the last one, written when the process died
//! before its fsync returned; nothing after it was acknowledged, so [`replay`] stops there and
//! says how many bytes are good (the driver truncates the file to that). [`encode_store`] writes
//! a whole store as one record: the driver rewrites the file with it after a compaction, so the
//! file stays about the size of the image.

use raft::eraftpb::{Entry, HardState, Snapshot};

use super::store::{PersistBatch, RaftLogStore};

/// The body format version.
const VERSION: u8 = 1;
/// Bytes before a record's body.
pub const RECORD_HEADER_BYTES: usize = 8;
/// The largest record accepted on replay; a length above it is damage, not data.
pub const RECORD_MAX_BYTES: usize = 256 * 1024 * 1024;

/// Why a log file cannot be replayed at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogFileError {
    /// A record with a valid CRC whose body does not decode: written by another version, or
    /// damaged in a way a CRC does not catch. Refusing is safer than dropping committed state.
    #[error("controller log record at byte {at}: {reason}")]
    BadRecord {
        /// Offset of the record in the file.
        at: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A replayed log: the store, and how many leading bytes of the file were whole records.
#[derive(Debug)]
pub struct Replayed {
    /// The rebuilt store.
    pub store: RaftLogStore,
    /// Bytes of whole, valid records; anything after is a torn tail to cut.
    pub valid_bytes: usize,
    /// Records replayed.
    pub records: usize,
}

/// One batch as a record.
pub fn encode_batch(batch: &PersistBatch) -> Vec<u8> {
    let mut body = vec![VERSION];
    put_part(&mut body, batch.snapshot.as_ref());
    put_u32(&mut body, batch.entries.len());
    for entry in &batch.entries {
        put_part(&mut body, Some(entry));
    }
    put_part(&mut body, batch.hard_state.as_ref());
    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + body.len());
    put_u32(&mut out, body.len());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// A whole store as one record (what a rewritten file starts with).
pub fn encode_store(store: &RaftLogStore) -> Vec<u8> {
    encode_batch(&PersistBatch {
        snapshot: Some(store.latest_snapshot().clone()),
        entries: store.stored_entries().to_vec(),
        hard_state: Some(store.hard_state().clone()),
    })
}

/// Rebuilds a store from a log file's bytes, starting from `initial` (a new node's store).
pub fn replay(initial: RaftLogStore, bytes: &[u8]) -> Result<Replayed, LogFileError> {
    let mut store = initial;
    let mut at = 0;
    let mut records = 0;
    while let Some(header) = bytes.get(at..at + RECORD_HEADER_BYTES) {
        let len = u32_at(header, 0) as usize;
        let crc = u32_at(header, 4);
        if len > RECORD_MAX_BYTES {
            break;
        }
        let Some(body) = bytes.get(at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + len) else {
            break; // cut short
        };
        if crc32c::crc32c(body) != crc {
            break; // torn
        }
        let batch = decode_body(body).map_err(|reason| LogFileError::BadRecord { at, reason })?;
        store.persist(&batch);
        at += RECORD_HEADER_BYTES + len;
        records += 1;
    }
    Ok(Replayed {
        store,
        valid_bytes: at,
        records,
    })
}

fn decode_body(body: &[u8]) -> Result<PersistBatch, String> {
    let mut cur = Cursor { bytes: body, at: 0 };
    let version = cur.take(1)?[0];
    if version != VERSION {
        return Err(format!("unknown version {version}"));
    }
    let snapshot = cur.part::<Snapshot>()?;
    let count = cur.u32()? as usize;
    let mut entries = Vec::with_capacity(count.min(65_536));
    for _ in 0..count {
        entries.push(cur.part::<Entry>()?.ok_or("empty entry")?);
    }
    let hard_state = cur.part::<HardState>()?;
    if cur.at != body.len() {
        return Err(format!("{} trailing bytes", body.len() - cur.at));
    }
    Ok(PersistBatch {
        snapshot,
        entries,
        hard_state,
    })
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let out = self
            .bytes
            .get(self.at..self.at + n)
            .ok_or_else(|| format!("cut short at byte {}", self.at))?;
        self.at += n;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32_at(self.take(4)?, 0))
    }

    fn part<M: protobuf::Message>(&mut self) -> Result<Option<M>, String> {
        let len = self.u32()? as usize;
        if len == 0 {
            return Ok(None);
        }
        let bytes = self.take(len)?;
        M::parse_from_bytes(bytes)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_le_bytes());
}

/// A message as a part. A message whose fields are all defaults encodes to no bytes and reads
/// back as `None`, which means the same to [`RaftLogStore::persist`] (a default hard state; an
/// entry or a snapshot is never all defaults: an entry has an index, a snapshot voters).
fn put_part<M: protobuf::Message>(out: &mut Vec<u8>, message: Option<&M>) {
    let bytes = message
        .and_then(|m| m.write_to_bytes().ok())
        .unwrap_or_default();
    put_u32(out, bytes.len());
    out.extend_from_slice(&bytes);
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Entry::default()
        }
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..HardState::default()
        }
    }

    fn batches() -> Vec<PersistBatch> {
        vec![
            PersistBatch {
                entries: vec![entry(1, 1, b"a"), entry(2, 1, b"b")],
                hard_state: Some(hard_state(1, 1, 0)),
                ..PersistBatch::default()
            },
            PersistBatch {
                // A new leader overwrites index 2.
                entries: vec![entry(2, 2, b"c"), entry(3, 2, b"d")],
                hard_state: Some(hard_state(2, 2, 3)),
                ..PersistBatch::default()
            },
            PersistBatch {
                snapshot: Some({
                    let mut s = Snapshot::default();
                    s.mut_metadata().index = 2;
                    s.mut_metadata().term = 2;
                    s.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
                    s.data = b"image".to_vec().into();
                    s
                }),
                ..PersistBatch::default()
            },
        ]
    }

    fn apply_all(batches: &[PersistBatch]) -> RaftLogStore {
        let mut store = RaftLogStore::new(vec![1, 2, 3]);
        for b in batches {
            store.persist(b);
        }
        store
    }

    #[test]
    fn replaying_the_records_rebuilds_the_store() {
        let batches = batches();
        let file: Vec<u8> = batches.iter().flat_map(encode_batch).collect();
        let replayed = replay(RaftLogStore::new(vec![1, 2, 3]), &file).unwrap();
        assert_eq!(replayed.valid_bytes, file.len());
        assert_eq!(replayed.records, 3);
        assert_eq!(replayed.store, apply_all(&batches));
        assert_eq!(
            replayed.store.stored_entries().len(),
            1,
            "index 3 after the snapshot at 2"
        );
        // The whole store as one record gives the same store.
        let rewritten = encode_store(&replayed.store);
        let again = replay(RaftLogStore::new(vec![1, 2, 3]), &rewritten).unwrap();
        assert_eq!(again.store, replayed.store);
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_record() {
        let batches = batches();
        let records: Vec<Vec<u8>> = batches.iter().map(encode_batch).collect();
        let whole: usize = records[..2].iter().map(Vec::len).sum();
        let file: Vec<u8> = records.concat();
        let mut rng = StdRng::seed_from_u64(5);
        // Every cut inside the third record, and random damage to its bytes.
        for cut in whole..file.len() {
            let replayed = replay(RaftLogStore::new(vec![1, 2, 3]), &file[..cut]).unwrap();
            assert_eq!(replayed.valid_bytes, whole, "cut at {cut}");
            assert_eq!(replayed.store, apply_all(&batches[..2]), "cut at {cut}");
        }
        for _ in 0..200 {
            let mut damaged = file.clone();
            let at = rng.gen_range(whole..file.len());
            damaged[at] ^= rng.gen_range(1..=255u8);
            let replayed = replay(RaftLogStore::new(vec![1, 2, 3]), &damaged).unwrap();
            assert_eq!(replayed.valid_bytes, whole, "damage at {at}");
        }
    }

    #[test]
    fn a_record_with_a_valid_crc_that_does_not_decode_is_refused() {
        let body = [9u8, 0, 0];
        let mut file = Vec::new();
        put_u32(&mut file, body.len());
        file.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        file.extend_from_slice(&body);
        let err = replay(RaftLogStore::new(vec![1]), &file).unwrap_err();
        assert!(err.to_string().contains("unknown version 9"), "{err}");
    }
}
