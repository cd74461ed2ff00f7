//! Idempotent producers: per partition, the state of each producer id (its epoch and its last
//! few batches), the sequence checks an append must pass, and the snapshot files that let a
//! reopened log rebuild the state without rescanning the whole partition.
//!
//! Rules (Kafka's):
//! - A batch with a producer id carries (epoch, first sequence); its last sequence is
//!   `first + last_offset_delta` (wrapping at `i32::MAX` to 0).
//! - An epoch below the producer's current one is refused ([`ProducerError::StaleEpoch`]).
//! - A newer epoch must start at sequence 0.
//! - With the current epoch, a batch equal to one of the last [`BATCHES_RETAINED`] (same first and
//!   last sequence) is a duplicate: not appended again, answered with its original offsets.
//! - Otherwise the first sequence must follow the last one stored
//!   ([`ProducerError::OutOfOrder`]). A producer the partition does not know may start anywhere
//!   (its state may have expired).
//! - At most `max` producers are kept (`producer.id.max.per.partition`): a new producer beyond
//!   it evicts the one with the oldest last append, as Redpanda's `max_concurrent_producer_ids`
//!   does. An evicted producer is then unknown, so a retry of its batch is appended again.
//!
//! Snapshot file `<20-digit offset>.snapshot`: the state after every batch below that offset.
//! Layout (big-endian): magic `u32` "STPS", version `u8` = 1, offset `i64`, producer count
//! `u32`, then per producer: id `i64`, epoch `i16`, last append time ms `i64`, batch count
//! `u8`, and per batch: first sequence `i32`, last sequence `i32`, first offset `i64`, last
//! offset `i64`; finally the CRC-32C of everything before it (`u32`). A snapshot holds at most
//! the cap of producers (139 bytes each at most), so its size is bounded by the cap as well.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::limits::PRODUCER_IDS_MAX_DEFAULT;

/// Batches remembered per producer (Kafka's limit on in-flight requests with idempotence).
pub const BATCHES_RETAINED: usize = 5;

/// Suffix of producer-state snapshot files.
pub(crate) const SNAPSHOT_SUFFIX: &str = ".snapshot";
/// Snapshots kept per partition (older ones are deleted when a new one is written).
pub(crate) const SNAPSHOTS_KEPT: usize = 2;

const SNAPSHOT_MAGIC: u32 = u32::from_be_bytes(*b"STPS");
const SNAPSHOT_VERSION: u8 = 1;

/// One stored batch of a producer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMeta {
    /// Sequence number of the first record.
    pub first_seq: i32,
    /// Sequence number of the last record.
    pub last_seq: i32,
    /// Offset of the first record.
    pub first_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
}

/// What the partition knows about one producer id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerEntry {
    /// Current epoch.
    pub epoch: i16,
    /// The last batches of the current epoch, oldest first.
    pub batches: VecDeque<BatchMeta>,
    /// Wall-clock ms of the last append (for expiration).
    pub last_append_ms: i64,
}

/// Why an idempotent batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProducerError {
    /// The batch's epoch is older than the producer's current one (a fenced producer).
    #[error("producer {producer_id}: epoch {epoch} is older than the current epoch {current}")]
    StaleEpoch {
        /// The producer id.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The current epoch.
        current: i16,
    },
    /// The batch's first sequence does not follow the last one stored.
    #[error("producer {producer_id} epoch {epoch}: sequence {first_seq} does not follow {expected_after}")]
    OutOfOrder {
        /// The producer id.
        producer_id: i64,
        /// The batch's epoch.
        epoch: i16,
        /// The batch's first sequence.
        first_seq: i32,
        /// The last sequence stored (-1: a new epoch, which must start at 0).
        expected_after: i32,
    },
}

/// What an append of an idempotent batch should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceVerdict {
    /// Append it.
    Append,
    /// Already stored: answer with these offsets, append nothing.
    Duplicate(BatchMeta),
}

/// The last sequence of a batch starting at `first` with `records` records (wrapping).
pub fn last_sequence(first: i32, last_offset_delta: i32) -> i32 {
    let last = i64::from(first) + i64::from(last_offset_delta);
    if last > i64::from(i32::MAX) {
        (last - i64::from(i32::MAX) - 1) as i32
    } else {
        last as i32
    }
}

fn follows(last: i32, next: i32) -> bool {
    if last == i32::MAX {
        next == 0
    } else {
        next == last + 1
    }
}

/// All producers of one partition, at most `max` of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerState {
    producers: HashMap<i64, ProducerEntry>,
    /// (last append ms, producer id) of every entry: the oldest is first, so eviction and
    /// expiry find it in O(log n) instead of scanning. Equal times fall back to the lower id,
    /// which the controller handed out earlier.
    by_age: BTreeSet<(i64, i64)>,
    max: usize,
}

impl Default for ProducerState {
    fn default() -> Self {
        ProducerState::with_max(PRODUCER_IDS_MAX_DEFAULT)
    }
}

impl ProducerState {
    /// An empty state that keeps at most `max` producers (at least 1).
    pub fn with_max(max: usize) -> Self {
        ProducerState {
            producers: HashMap::new(),
            by_age: BTreeSet::new(),
            max: max.max(1),
        }
    }

    /// The most producers kept.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Changes the cap, evicting the oldest producers beyond it; returns how many went.
    pub fn set_max(&mut self, max: usize) -> usize {
        self.max = max.max(1);
        let mut evicted = 0;
        while self.producers.len() > self.max {
            self.evict_oldest();
            evicted += 1;
        }
        evicted
    }

    fn evict_oldest(&mut self) -> Option<i64> {
        let (_, id) = self.by_age.pop_first()?;
        self.producers.remove(&id);
        Some(id)
    }

    /// Inserts an entry known not to be present, evicting the oldest one at the cap.
    fn insert_new(&mut self, producer_id: i64, entry: ProducerEntry) -> Option<i64> {
        let evicted = if self.producers.len() >= self.max {
            self.evict_oldest()
        } else {
            None
        };
        self.by_age.insert((entry.last_append_ms, producer_id));
        self.producers.insert(producer_id, entry);
        evicted
    }

    /// Number of producers tracked.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is tracked.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// The entry of a producer id.
    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Checks a batch against the producer's state (see the module rules).
    pub fn check(
        &self,
        producer_id: i64,
        epoch: i16,
        first_seq: i32,
        last_seq: i32,
    ) -> Result<SequenceVerdict, ProducerError> {
        let Some(entry) = self.producers.get(&producer_id) else {
            return Ok(SequenceVerdict::Append);
        };
        if epoch < entry.epoch {
            return Err(ProducerError::StaleEpoch {
                producer_id,
                epoch,
                current: entry.epoch,
            });
        }
        if epoch > entry.epoch {
            if first_seq != 0 {
                return Err(ProducerError::OutOfOrder {
                    producer_id,
                    epoch,
                    first_seq,
                    expected_after: -1,
                });
            }
            return Ok(SequenceVerdict::Append);
        }
        if let Some(b) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return Ok(SequenceVerdict::Duplicate(*b));
        }
        match entry.batches.back() {
            Some(last) if !follows(last.last_seq, first_seq) => Err(ProducerError::OutOfOrder {
                producer_id,
                epoch,
                first_seq,
                expected_after: last.last_seq,
            }),
            _ => Ok(SequenceVerdict::Append),
        }
    }

    /// Records a stored batch (after a successful append, or while rebuilding from the log).
    /// A producer not known yet evicts the oldest one when the state is full; returns its id.
    pub fn record(
        &mut self,
        producer_id: i64,
        epoch: i16,
        batch: BatchMeta,
        now_ms: i64,
    ) -> Option<i64> {
        let Some(entry) = self.producers.get_mut(&producer_id) else {
            // Sized for the batches kept, so it never reallocates.
            let mut batches = VecDeque::with_capacity(BATCHES_RETAINED);
            batches.push_back(batch);
            return self.insert_new(
                producer_id,
                ProducerEntry {
                    epoch,
                    batches,
                    last_append_ms: now_ms,
                },
            );
        };
        if epoch != entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        while entry.batches.len() >= BATCHES_RETAINED {
            entry.batches.pop_front();
        }
        entry.batches.push_back(batch);
        let before = entry.last_append_ms;
        entry.last_append_ms = before.max(now_ms);
        // Several appends of one producer within a millisecond leave its place unchanged.
        if entry.last_append_ms != before {
            self.by_age.remove(&(before, producer_id));
            self.by_age.insert((entry.last_append_ms, producer_id));
        }
        None
    }

    /// Forgets producers whose last append is older than `max_age_ms`; returns how many.
    pub fn expire(&mut self, now_ms: i64, max_age_ms: i64) -> usize {
        let mut expired = 0;
        while let Some(&(last_append_ms, _)) = self.by_age.first() {
            if now_ms.saturating_sub(last_append_ms) < max_age_ms {
                break;
            }
            self.evict_oldest();
            expired += 1;
        }
        expired
    }

    /// Drops every batch at or above `offset` (the log was cut back there), and producers left
    /// without batches.
    pub fn truncate_to(&mut self, offset: i64) {
        let by_age = &mut self.by_age;
        self.producers.retain(|id, e| {
            e.batches.retain(|b| b.last_offset < offset);
            let keep = !e.batches.is_empty();
            if !keep {
                by_age.remove(&(e.last_append_ms, *id));
            }
            keep
        });
    }

    /// Encodes a snapshot of the state at `offset`.
    pub fn encode_snapshot(&self, offset: i64) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.producers.len() * 80);
        out.extend_from_slice(&SNAPSHOT_MAGIC.to_be_bytes());
        out.push(SNAPSHOT_VERSION);
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&(self.producers.len() as u32).to_be_bytes());
        let mut ids: Vec<&i64> = self.producers.keys().collect();
        ids.sort();
        for id in ids {
            let e = &self.producers[id];
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&e.epoch.to_be_bytes());
            out.extend_from_slice(&e.last_append_ms.to_be_bytes());
            out.push(e.batches.len() as u8);
            for b in &e.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.first_offset.to_be_bytes());
                out.extend_from_slice(&b.last_offset.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    /// Decodes a snapshot: (its offset, the state). None if it is damaged or of another format.
    /// The state has the default cap and may hold more producers than that (a snapshot written
    /// under a larger cap); `set_max` trims it.
    pub fn decode_snapshot(bytes: &[u8]) -> Option<(i64, ProducerState)> {
        let (body, crc) = bytes.split_at(bytes.len().checked_sub(4)?);
        if crc32c::crc32c(body) != u32::from_be_bytes(crc.try_into().ok()?) {
            return None;
        }
        let mut r = Reader(body);
        if r.u32()? != SNAPSHOT_MAGIC || r.u8()? != SNAPSHOT_VERSION {
            return None;
        }
        let offset = r.i64()?;
        let count = r.u32()?;
        let mut state = ProducerState::default();
        for _ in 0..count {
            let id = r.i64()?;
            let epoch = r.i16()?;
            let last_append_ms = r.i64()?;
            let n = r.u8()?;
            let mut batches = VecDeque::with_capacity(usize::from(n));
            for _ in 0..n {
                batches.push_back(BatchMeta {
                    first_seq: r.i32()?,
                    last_seq: r.i32()?,
                    first_offset: r.i64()?,
                    last_offset: r.i64()?,
                });
            }
            if state
                .producers
                .insert(
                    id,
                    ProducerEntry {
                        epoch,
                        batches,
                        last_append_ms,
                    },
                )
                .is_some()
            {
                return None;
            }
            state.by_age.insert((last_append_ms, id));
        }
        if !r.0.is_empty() {
            return None;
        }
        Some((offset, state))
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.0.len() < N {
            return None;
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn i16(&mut self) -> Option<i16> {
        self.take().map(i16::from_be_bytes)
    }
    fn i32(&mut self) -> Option<i32> {
        self.take().map(i32::from_be_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_be_bytes)
    }
}

/// File name of the snapshot at `offset`.
pub(crate) fn snapshot_name(offset: i64) -> String {
    format!("{offset:020}{SNAPSHOT_SUFFIX}")
}

/// The offset a snapshot file name stands for.
pub(crate) fn parse_snapshot_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(first_seq: i32, last_seq: i32, first_offset: i64) -> BatchMeta {
        BatchMeta {
            first_seq,
            last_seq,
            first_offset,
            last_offset: first_offset + i64::from(last_seq - first_seq),
        }
    }

    #[test]
    fn sequences_duplicates_and_epochs() {
        let mut s = ProducerState::default();
        assert_eq!(
            s.check(7, 0, 5, 9),
            Ok(SequenceVerdict::Append),
            "an unknown producer may start anywhere"
        );
        s.record(7, 0, meta(0, 4, 100), 1);
        s.record(7, 0, meta(5, 9, 105), 2);
        assert_eq!(s.check(7, 0, 10, 14), Ok(SequenceVerdict::Append));
        assert_eq!(
            s.check(7, 0, 5, 9),
            Ok(SequenceVerdict::Duplicate(meta(5, 9, 105)))
        );
        assert_eq!(
            s.check(7, 0, 0, 4),
            Ok(SequenceVerdict::Duplicate(meta(0, 4, 100)))
        );
        assert!(matches!(
            s.check(7, 0, 11, 12),
            Err(ProducerError::OutOfOrder {
                expected_after: 9,
                ..
            })
        ));
        assert!(matches!(
            s.check(7, 0, 3, 5),
            Err(ProducerError::OutOfOrder { .. })
        ));
        // A new epoch starts at 0; the old one is fenced afterwards.
        assert!(matches!(
            s.check(7, 1, 10, 10),
            Err(ProducerError::OutOfOrder {
                expected_after: -1,
                ..
            })
        ));
        assert_eq!(s.check(7, 1, 0, 0), Ok(SequenceVerdict::Append));
        s.record(7, 1, meta(0, 0, 110), 3);
        assert!(matches!(
            s.check(7, 0, 10, 14),
            Err(ProducerError::StaleEpoch { current: 1, .. })
        ));
    }

    #[test]
    fn keeps_the_last_five_batches() {
        let mut s = ProducerState::default();
        for i in 0..8 {
            s.record(1, 0, meta(i, i, i64::from(i)), 0);
        }
        assert_eq!(s.get(1).unwrap().batches.len(), BATCHES_RETAINED);
        assert_eq!(
            s.check(1, 0, 3, 3),
            Ok(SequenceVerdict::Duplicate(meta(3, 3, 3)))
        );
        assert!(
            s.check(1, 0, 2, 2).is_err(),
            "too old to be recognised: out of order"
        );
    }

    #[test]
    fn sequence_wraps_at_i32_max() {
        assert_eq!(last_sequence(i32::MAX - 1, 2), 0);
        let mut s = ProducerState::default();
        s.record(
            1,
            0,
            BatchMeta {
                first_seq: i32::MAX - 1,
                last_seq: i32::MAX,
                first_offset: 0,
                last_offset: 1,
            },
            0,
        );
        assert_eq!(s.check(1, 0, 0, 3), Ok(SequenceVerdict::Append));
    }

    #[test]
    fn snapshot_round_trip_expiry_and_truncation() {
        let mut s = ProducerState::default();
        s.record(1, 2, meta(0, 4, 10), 1_000);
        s.record(1, 2, meta(5, 5, 15), 1_000);
        s.record(9, 0, meta(0, 0, 16), 5_000);
        let bytes = s.encode_snapshot(17);
        assert_eq!(
            ProducerState::decode_snapshot(&bytes),
            Some((17, s.clone()))
        );
        let mut bad = bytes.clone();
        bad[10] ^= 1;
        assert_eq!(ProducerState::decode_snapshot(&bad), None);
        assert_eq!(
            ProducerState::decode_snapshot(&bytes[..bytes.len() - 1]),
            None
        );

        let mut t = s.clone();
        t.truncate_to(15);
        assert_eq!(t.get(1).unwrap().batches.len(), 1);
        assert!(t.get(9).is_none());

        assert_eq!(s.expire(6_000, 2_000), 1);
        assert!(s.get(1).is_none() && s.get(9).is_some());
        assert_eq!(parse_snapshot_name(&snapshot_name(17)), Some(17));
        assert_eq!(parse_snapshot_name("17.snapshot"), None);
    }
}
