//! The leader-epoch cache of one partition log: at which offset each leader epoch began.
//!
//! Replication needs it: a follower asks the leader where its own last epoch ends on the leader
//! (OffsetForLeaderEpoch, Fetch v12+ `diverging_epoch`) and truncates its log there, so that
//! replicas never keep records the current leader does not have. The rules are Kafka's
//! (`LeaderEpochFileCache`):
//! - [`EpochCache::assign`] records `(epoch, start_offset)` when a batch of a new epoch is
//!   appended; an entry that is not newer than the last one in both epoch and offset replaces
//!   the entries it contradicts (they came from a leader that lost).
//! - [`EpochCache::end_offset_for`] answers where an epoch ends: the log end offset for the
//!   latest epoch, else the start offset of the next higher epoch, with the largest known epoch
//!   at or below the one asked for.
//! - Truncating the log at either end truncates the cache with it.
//!
//! The cache is kept in memory and written as a small text file in Kafka's checkpoint format
//! ([`EpochCache::encode`]: version `0`, the entry count, then `epoch offset` per line).

use std::collections::BTreeMap;

use crate::types::{LeaderEpoch, Offset};

/// Epoch and end offset of an OffsetForLeaderEpoch answer when nothing is known (Kafka's
/// `UNDEFINED_EPOCH` and `UNDEFINED_EPOCH_OFFSET`).
pub const UNDEFINED: (LeaderEpoch, Offset) = (LeaderEpoch(-1), Offset(-1));

/// Entries the cache holds at most. A partition gets a new epoch only when its leader changes,
/// so this is never reached in practice; past it the oldest entries are dropped (they only
/// matter to a replica that is that far behind, which then truncates further than needed and
/// fetches again, never keeping divergent data).
pub const EPOCH_ENTRIES_MAX: usize = 100_000;

/// Why an epoch checkpoint file does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("leader-epoch checkpoint: {0}")]
pub struct EpochCacheError(String);

/// The start offset of every leader epoch of a log, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    /// epoch -> start offset; epochs and offsets both strictly increase.
    entries: BTreeMap<i32, i64>,
}

impl EpochCache {
    /// An empty cache (a new log).
    pub fn new() -> EpochCache {
        EpochCache::default()
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> Vec<(LeaderEpoch, Offset)> {
        self.entries
            .iter()
            .map(|(&e, &o)| (LeaderEpoch(e), Offset(o)))
            .collect()
    }

    /// The latest epoch, if any.
    pub fn latest_epoch(&self) -> Option<LeaderEpoch> {
        self.entries.keys().next_back().map(|&e| LeaderEpoch(e))
    }

    /// Records that `epoch` starts at `start_offset` (a batch of that epoch was appended there).
    /// Returns whether the cache changed (then it should be written). The same epoch at the
    /// same or a later offset changes nothing. An entry that does not follow the last one (an
    /// older or equal epoch at an earlier offset, or an older epoch at all) removes every entry
    /// at or after it in epoch or offset first, as Kafka does. Negative values are ignored.
    pub fn assign(&mut self, epoch: LeaderEpoch, start_offset: Offset) -> bool {
        if epoch.0 < 0 || start_offset.0 < 0 {
            return false;
        }
        if let Some((&last_epoch, &last_start)) = self.entries.iter().next_back() {
            if epoch.0 == last_epoch && start_offset.0 >= last_start {
                return false;
            }
        }
        // Kafka's maybeTruncateNonMonotonicEntries: drop what the new entry contradicts.
        while let Some((&e, &o)) = self.entries.iter().next_back() {
            if e >= epoch.0 || o >= start_offset.0 {
                self.entries.remove(&e);
            } else {
                break;
            }
        }
        self.entries.insert(epoch.0, start_offset.0);
        while self.entries.len() > EPOCH_ENTRIES_MAX {
            self.entries.pop_first();
        }
        true
    }

    /// Where `epoch` ends on this log whose end offset is `log_end`: `(largest known epoch <=
    /// epoch, end offset)`, as OffsetForLeaderEpoch answers. The latest epoch ends at the log
    /// end; an older one at the start of the next higher epoch; an epoch older than every known
    /// one ends where the first known epoch starts; an unknown newer epoch, a negative epoch or
    /// an empty cache give [`UNDEFINED`].
    pub fn end_offset_for(&self, epoch: LeaderEpoch, log_end: Offset) -> (LeaderEpoch, Offset) {
        if epoch.0 < 0 {
            return UNDEFINED;
        }
        if self.latest_epoch() == Some(epoch) {
            return (epoch, log_end);
        }
        let Some((_, &higher_start)) = self.entries.range(epoch.0 + 1..).next() else {
            return UNDEFINED;
        };
        match self.entries.range(..=epoch.0).next_back() {
            Some((&floor, _)) => (LeaderEpoch(floor), Offset(higher_start)),
            None => (epoch, Offset(higher_start)),
        }
    }

    /// The log was cut so that it ends at `end` (a follower truncating to the leader): entries
    /// starting at or after it go. Returns whether the cache changed.
    pub fn truncate_from_end(&mut self, end: Offset) -> bool {
        let before = self.entries.len();
        self.entries.retain(|_, &mut o| o < end.0);
        self.entries.len() != before
    }

    /// The log now starts at `start` (retention, DeleteRecords): entries before it go, except
    /// that the last epoch starting at or before `start` is kept, moved to start there. Returns
    /// whether the cache changed.
    pub fn truncate_from_start(&mut self, start: Offset) -> bool {
        let covered: Vec<(i32, i64)> = self
            .entries
            .iter()
            .take_while(|(_, &o)| o <= start.0)
            .map(|(&e, &o)| (e, o))
            .collect();
        let Some(&(last_epoch, last_start)) = covered.last() else {
            return false;
        };
        if covered.len() == 1 && last_start == start.0 {
            return false;
        }
        for (e, _) in &covered {
            self.entries.remove(e);
        }
        self.entries.insert(last_epoch, start.0);
        true
    }

    /// The checkpoint file's bytes (Kafka's format): `0\n<count>\n<epoch> <offset>\n...`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("0\n{}\n", self.entries.len());
        for (e, o) in &self.entries {
            out.push_str(&format!("{e} {o}\n"));
        }
        out.into_bytes()
    }

    /// Parses [`EpochCache::encode`]'s output. Entries must strictly increase in epoch and
    /// offset, and the count must match; anything else is an error (the caller rebuilds the
    /// cache from the log's batch headers then).
    pub fn decode(bytes: &[u8]) -> Result<EpochCache, EpochCacheError> {
        let bad = |why: &str| EpochCacheError(why.to_string());
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let mut lines = text.lines();
        if lines.next() != Some("0") {
            return Err(bad("unknown version"));
        }
        let count: usize = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| bad("no entry count"))?;
        if count > EPOCH_ENTRIES_MAX {
            return Err(bad("too many entries"));
        }
        let mut cache = EpochCache::new();
        let mut last: Option<(i32, i64)> = None;
        for _ in 0..count {
            let line = lines
                .next()
                .ok_or_else(|| bad("fewer entries than counted"))?;
            let mut fields = line.split_whitespace();
            let (Some(e), Some(o), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(bad("an entry is not `epoch offset`"));
            };
            let e: i32 = e.parse().map_err(|_| bad("an epoch is not a number"))?;
            let o: i64 = o.parse().map_err(|_| bad("an offset is not a number"))?;
            if e < 0 || o < 0 || last.is_some_and(|(le, lo)| e <= le || o <= lo) {
                return Err(bad("entries do not strictly increase"));
            }
            last = Some((e, o));
            cache.entries.insert(e, o);
        }
        if lines.any(|l| !l.trim().is_empty()) {
            return Err(bad("more entries than counted"));
        }
        Ok(cache)
    }
}

#[cfg(test)]
mod tests;
