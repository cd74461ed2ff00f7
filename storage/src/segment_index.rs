//! `SegmentIndex`: the in-memory offset index and time index of one segment, the rules that
//! decide when an entry is added, lookups, and the byte encoding of the index files.
//!
//! File I/O lives in `Segment`; this type is pure so its rules are easy to test and to replay
//! during recovery.
//!
//! Rules (replayed identically by recovery):
//! - offset index: an entry (relative offset, position) for a batch when the index is empty or
//!   the batch starts at least `index_interval_bytes` after the last entry's position;
//! - time index: at each new offset index entry, an entry (max timestamp so far, relative offset
//!   of the batch holding it) if that timestamp is larger than the last entry's; and once more
//!   when the segment stops being active (roll or clean close).
//!
//! So for every time entry (T, O): all batches before O have maxTimestamp <= T and the batch at
//! O has maxTimestamp T. A lookup for ts may therefore skip everything before the last entry
//! with T < ts.

use crate::limits::{OFFSET_INDEX_ENTRY_BYTES, TIME_INDEX_ENTRY_BYTES};

/// One offset index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetEntry {
    /// Batch base offset minus segment base offset.
    pub rel_offset: u32,
    /// Byte position of the batch in the `.log` file.
    pub position: u32,
}

/// One time index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeEntry {
    /// Largest batch maxTimestamp of the segment up to and including the batch at `rel_offset`.
    pub timestamp: i64,
    /// Base offset (relative) of the first batch carrying `timestamp`.
    pub rel_offset: u32,
}

/// What appending one batch changes in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexUpdate {
    /// New offset index entry, if any.
    pub offset: Option<OffsetEntry>,
    /// New time index entry, if any.
    pub time: Option<TimeEntry>,
    /// The segment's largest timestamp after the batch.
    pub max: TimeEntry,
}

/// Offset and time index of one segment, in memory.
#[derive(Clone, Debug, Default)]
pub struct SegmentIndex {
    offsets: Vec<OffsetEntry>,
    times: Vec<TimeEntry>,
    max: Option<TimeEntry>,
}

impl SegmentIndex {
    /// Index built from entries loaded from disk; the segment maximum is the last time entry.
    pub fn from_entries(offsets: Vec<OffsetEntry>, times: Vec<TimeEntry>) -> SegmentIndex {
        let max = times.last().copied();
        SegmentIndex {
            offsets,
            times,
            max,
        }
    }

    /// Offset index entries.
    pub fn offsets(&self) -> &[OffsetEntry] {
        &self.offsets
    }

    /// Time index entries.
    pub fn times(&self) -> &[TimeEntry] {
        &self.times
    }

    /// Largest batch maxTimestamp in the segment and the first batch carrying it.
    pub fn max_timestamp(&self) -> Option<TimeEntry> {
        self.max
    }

    /// Entries that appending a batch at `position` with `max_timestamp` would add.
    pub fn plan_batch(
        &self,
        rel_offset: u32,
        position: u32,
        max_timestamp: i64,
        interval: u32,
    ) -> IndexUpdate {
        let max = match self.max {
            Some(current) if current.timestamp >= max_timestamp => current,
            _ => TimeEntry {
                timestamp: max_timestamp,
                rel_offset,
            },
        };
        let due = match self.offsets.last() {
            None => true,
            Some(last) => position.saturating_sub(last.position) >= interval.max(1),
        };
        if !due {
            return IndexUpdate {
                offset: None,
                time: None,
                max,
            };
        }
        let time = match self.times.last() {
            Some(last) if last.timestamp >= max.timestamp => None,
            _ => Some(max),
        };
        IndexUpdate {
            offset: Some(OffsetEntry {
                rel_offset,
                position,
            }),
            time,
            max,
        }
    }

    /// Applies a planned update (after its entries reached the files).
    pub fn apply(&mut self, update: &IndexUpdate) {
        if let Some(entry) = update.offset {
            self.offsets.push(entry);
        }
        if let Some(entry) = update.time {
            self.times.push(entry);
        }
        self.max = Some(update.max);
    }

    /// The time entry to add when the segment stops being active, if the maximum moved since
    /// the last entry.
    pub fn plan_seal(&self) -> Option<TimeEntry> {
        let max = self.max?;
        match self.times.last() {
            Some(last) if last.timestamp >= max.timestamp => None,
            _ => Some(max),
        }
    }

    /// Adds a time entry produced by `plan_seal`.
    pub fn push_time(&mut self, entry: TimeEntry) {
        self.times.push(entry);
        self.max = Some(entry);
    }

    /// Keeps the first `keep` offset entries and the time entries up to the last kept offset
    /// entry's batch; the segment maximum becomes the last kept time entry. Used by recovery
    /// before it replays the batches from the last kept entry on.
    pub fn truncate_for_replay(&mut self, keep: usize) {
        self.offsets.truncate(keep);
        match self.offsets.last() {
            None => self.times.clear(),
            Some(last) => {
                let limit = last.rel_offset;
                self.times.retain(|entry| entry.rel_offset <= limit);
            }
        }
        self.max = self.times.last().copied();
    }

    /// Largest offset entry whose relative offset is <= `rel_offset`.
    pub fn lookup_offset(&self, rel_offset: u32) -> Option<OffsetEntry> {
        let idx = self
            .offsets
            .partition_point(|entry| entry.rel_offset <= rel_offset);
        idx.checked_sub(1).map(|i| self.offsets[i])
    }

    /// Largest offset entry whose position is <= `position`.
    pub fn lookup_position(&self, position: u64) -> Option<OffsetEntry> {
        let idx = self
            .offsets
            .partition_point(|entry| u64::from(entry.position) <= position);
        idx.checked_sub(1).map(|i| self.offsets[i])
    }

    /// Last time entry whose timestamp is < `timestamp`: everything before its batch is older.
    pub fn lookup_time(&self, timestamp: i64) -> Option<TimeEntry> {
        let idx = self
            .times
            .partition_point(|entry| entry.timestamp < timestamp);
        idx.checked_sub(1).map(|i| self.times[i])
    }
}

/// Encodes offset entries as the `.index` file content.
pub(crate) fn encode_offsets(entries: &[OffsetEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * OFFSET_INDEX_ENTRY_BYTES);
    for entry in entries {
        out.extend_from_slice(&entry.rel_offset.to_be_bytes());
        out.extend_from_slice(&entry.position.to_be_bytes());
    }
    out
}

/// Encodes time entries as the `.timeindex` file content.
pub(crate) fn encode_times(entries: &[TimeEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * TIME_INDEX_ENTRY_BYTES);
    for entry in entries {
        out.extend_from_slice(&entry.timestamp.to_be_bytes());
        out.extend_from_slice(&entry.rel_offset.to_be_bytes());
    }
    out
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Decodes an `.index` file; None if its length is not a multiple of the entry size.
pub(crate) fn decode_offsets(bytes: &[u8]) -> Option<Vec<OffsetEntry>> {
    let chunks = bytes.chunks_exact(OFFSET_INDEX_ENTRY_BYTES);
    if !chunks.remainder().is_empty() {
        return None;
    }
    Some(
        chunks
            .map(|c| OffsetEntry {
                rel_offset: be_u32(&c[0..4]),
                position: be_u32(&c[4..8]),
            })
            .collect(),
    )
}

/// Decodes a `.timeindex` file; None if its length is not a multiple of the entry size.
pub(crate) fn decode_times(bytes: &[u8]) -> Option<Vec<TimeEntry>> {
    let chunks = bytes.chunks_exact(TIME_INDEX_ENTRY_BYTES);
    if !chunks.remainder().is_empty() {
        return None;
    }
    Some(
        chunks
            .map(|c| {
                let mut ts = [0u8; 8];
                ts.copy_from_slice(&c[0..8]);
                TimeEntry {
                    timestamp: i64::from_be_bytes(ts),
                    rel_offset: be_u32(&c[8..12]),
                }
            })
            .collect(),
    )
}

/// Length of the longest prefix of offset entries that is well formed for a `.log` of
/// `log_bytes` bytes whose batches have relative offsets <= `rel_offset_max`: first entry
/// (0, 0), relative offsets and positions strictly increasing, positions inside the file.
pub(crate) fn valid_offsets_prefix(
    entries: &[OffsetEntry],
    log_bytes: u64,
    rel_offset_max: i64,
) -> usize {
    let mut previous: Option<OffsetEntry> = None;
    for (i, entry) in entries.iter().enumerate() {
        let ok_first = previous.is_some() || (entry.rel_offset == 0 && entry.position == 0);
        let ok_order =
            previous.is_none_or(|p| entry.rel_offset > p.rel_offset && entry.position > p.position);
        let ok_bounds =
            u64::from(entry.position) < log_bytes && i64::from(entry.rel_offset) <= rel_offset_max;
        if !(ok_first && ok_order && ok_bounds) {
            return i;
        }
        previous = Some(*entry);
    }
    entries.len()
}

/// Whether time entries are well formed: timestamps strictly increasing, relative offsets
/// non-decreasing and <= `rel_offset_max`.
pub(crate) fn times_valid(entries: &[TimeEntry], rel_offset_max: i64) -> bool {
    entries
        .iter()
        .all(|e| i64::from(e.rel_offset) <= rel_offset_max)
        && entries
            .windows(2)
            .all(|w| w[1].timestamp > w[0].timestamp && w[1].rel_offset >= w[0].rel_offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replay(batches: &[(u32, u32, i64)], interval: u32) -> SegmentIndex {
        let mut index = SegmentIndex::default();
        for &(rel, pos, ts) in batches {
            let update = index.plan_batch(rel, pos, ts, interval);
            index.apply(&update);
        }
        index
    }

    #[test]
    fn offset_entries_follow_interval() {
        // 100-byte batches, one record each, interval 250: entries at 0, 300, 600.
        let batches: Vec<_> = (0..8).map(|i| (i, i * 100, 1_000 + i64::from(i))).collect();
        let index = replay(&batches, 250);
        let positions: Vec<u32> = index.offsets().iter().map(|e| e.position).collect();
        assert_eq!(positions, vec![0, 300, 600]);
        assert_eq!(
            index.lookup_offset(4),
            Some(OffsetEntry {
                rel_offset: 3,
                position: 300
            })
        );
        assert_eq!(
            index.lookup_offset(0),
            Some(OffsetEntry {
                rel_offset: 0,
                position: 0
            })
        );
        assert_eq!(index.lookup_position(599).map(|e| e.position), Some(300));
        assert_eq!(index.lookup_position(600).map(|e| e.position), Some(600));
    }

    #[test]
    fn time_entries_only_grow_and_seal_adds_the_max() {
        let batches = [
            (0, 0, 50),
            (1, 100, 40),
            (2, 200, 40),
            (3, 300, 45),
            (4, 400, 70),
        ];
        let mut index = replay(&batches, 150);
        // Offset entries at 0 and 200 (200 - 0 >= 150), then 400 (400 - 200 >= 150).
        assert_eq!(index.offsets().len(), 3);
        // Max at the entry moments: 50 (batch 0), 50 (no new entry), 70 (batch 4).
        assert_eq!(
            index.times(),
            &[
                TimeEntry {
                    timestamp: 50,
                    rel_offset: 0
                },
                TimeEntry {
                    timestamp: 70,
                    rel_offset: 4
                }
            ]
        );
        assert_eq!(index.plan_seal(), None);
        assert_eq!(
            index.lookup_time(60),
            Some(TimeEntry {
                timestamp: 50,
                rel_offset: 0
            })
        );
        assert_eq!(index.lookup_time(50), None);

        let update = index.plan_batch(5, 450, 90, 150);
        assert_eq!(update.offset, None);
        index.apply(&update);
        assert_eq!(
            index.plan_seal(),
            Some(TimeEntry {
                timestamp: 90,
                rel_offset: 5
            })
        );
    }

    #[test]
    fn codec_round_trip_and_validation() {
        let offsets = vec![
            OffsetEntry {
                rel_offset: 0,
                position: 0,
            },
            OffsetEntry {
                rel_offset: 9,
                position: 4096,
            },
        ];
        let bytes = encode_offsets(&offsets);
        assert_eq!(decode_offsets(&bytes), Some(offsets.clone()));
        assert_eq!(decode_offsets(&bytes[..7]), None);
        assert_eq!(valid_offsets_prefix(&offsets, 5000, 100), 2);
        assert_eq!(valid_offsets_prefix(&offsets, 4096, 100), 1);
        assert_eq!(valid_offsets_prefix(&offsets, 5000, 8), 1);

        let times = vec![
            TimeEntry {
                timestamp: -1,
                rel_offset: 0,
            },
            TimeEntry {
                timestamp: 5,
                rel_offset: 3,
            },
        ];
        let bytes = encode_times(&times);
        assert_eq!(decode_times(&bytes), Some(times.clone()));
        assert_eq!(decode_times(&bytes[..13]), None);
        assert!(times_valid(&times, 3));
        assert!(!times_valid(&times, 2));
    }

    #[test]
    fn truncate_for_replay_keeps_consistent_max() {
        let batches = [(0, 0, 10), (1, 100, 30), (2, 200, 20), (3, 300, 40)];
        let mut index = replay(&batches, 100);
        assert_eq!(index.offsets().len(), 4);
        index.truncate_for_replay(2);
        assert_eq!(
            index.max_timestamp(),
            Some(TimeEntry {
                timestamp: 30,
                rel_offset: 1
            })
        );
        // Replaying batch 1 itself adds nothing.
        let update = index.plan_batch(1, 100, 30, 100);
        assert_eq!(update.offset, None);
        assert_eq!(update.time, None);
    }
}
