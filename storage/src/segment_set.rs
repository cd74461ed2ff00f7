//! `SegmentSet`: the segments of one log ordered by base offset; the last one is active.

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::segment::Segment;

/// Segments of a log by base offset. Never empty while the log is open.
#[derive(Default)]
pub(crate) struct SegmentSet {
    segments: BTreeMap<i64, Rc<Segment>>,
}

impl SegmentSet {
    /// Adds a segment (its base offset must be above every other's).
    pub fn push(&mut self, segment: Rc<Segment>) {
        if let Some((&last, _)) = self.segments.last_key_value() {
            assert!(
                segment.base_offset() > last,
                "segments are added in offset order"
            );
        }
        self.segments.insert(segment.base_offset(), segment);
    }

    /// The active (last) segment.
    pub fn active(&self) -> Option<Rc<Segment>> {
        self.segments.last_key_value().map(|(_, s)| Rc::clone(s))
    }

    /// The first segment.
    pub fn first(&self) -> Option<Rc<Segment>> {
        self.segments.first_key_value().map(|(_, s)| Rc::clone(s))
    }

    /// The segment whose base offset is the largest one <= `offset`.
    pub fn floor(&self, offset: i64) -> Option<Rc<Segment>> {
        self.segments
            .range(..=offset)
            .next_back()
            .map(|(_, s)| Rc::clone(s))
    }

    /// The segment after the one with `base_offset`.
    pub fn after(&self, base_offset: i64) -> Option<Rc<Segment>> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.segments
            .range((Excluded(base_offset), Unbounded))
            .next()
            .map(|(_, s)| Rc::clone(s))
    }

    /// All segments in offset order.
    pub fn all(&self) -> Vec<Rc<Segment>> {
        self.segments.values().cloned().collect()
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// Total bytes of all `.log` files.
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size()).sum()
    }

    /// Removes and returns the segment with `base_offset`.
    pub fn remove(&mut self, base_offset: i64) -> Option<Rc<Segment>> {
        self.segments.remove(&base_offset)
    }

    /// Replaces the segments with base offsets in [`segment.base_offset()`, `end`) by
    /// `segment` (a compacted copy of them) and returns the replaced ones. The active segment is
    /// never in that range.
    pub fn replace(&mut self, segment: Rc<Segment>, end: i64) -> Vec<Rc<Segment>> {
        let base = segment.base_offset();
        let active = self.segments.last_key_value().map(|(&b, _)| b);
        assert!(
            active.is_some_and(|a| a >= end),
            "the active segment is never replaced"
        );
        let replaced: Vec<i64> = self.segments.range(base..end).map(|(&b, _)| b).collect();
        let old = replaced
            .iter()
            .filter_map(|b| self.segments.remove(b))
            .collect();
        self.segments.insert(base, segment);
        old
    }

    /// Removes and returns every segment.
    pub fn take_all(&mut self) -> Vec<Rc<Segment>> {
        std::mem::take(&mut self.segments).into_values().collect()
    }
}

/// Largest batch maxTimestamp of `segments` with the offset of the first batch carrying it.
pub(crate) fn max_timestamp_of(segments: &[Rc<Segment>]) -> Option<(i64, i64)> {
    let mut max_timestamp: Option<(i64, i64)> = None;
    for segment in segments {
        if let Some(entry) = segment.index.borrow().max_timestamp() {
            if max_timestamp.is_none_or(|(_, ts)| entry.timestamp > ts) {
                max_timestamp = Some((
                    segment.base_offset() + i64::from(entry.rel_offset),
                    entry.timestamp,
                ));
            }
        }
    }
    max_timestamp
}
