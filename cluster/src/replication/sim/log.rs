//! A simulated partition log: batches from offset 0, a durable prefix, the epoch cache.

use strom_storage::epoch_cache::EpochCache;

use crate::replication::LogEpochs;
use crate::types::{LeaderEpoch, Offset};

/// One record batch of a simulated log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Batch {
    pub(super) base: i64,
    pub(super) count: i64,
    pub(super) epoch: i32,
    pub(super) payload: u64,
}

impl Batch {
    pub(super) fn end(&self) -> i64 {
        self.base + self.count
    }
}

/// A node's log: batches from offset 0, a durable prefix and the leader-epoch cache.
#[derive(Debug, Default)]
pub(super) struct Log {
    pub(super) batches: Vec<Batch>,
    /// Batches that survive a crash.
    pub(super) durable_len: usize,
    pub(super) epochs: EpochCache,
    /// Bumped on every truncation and crash, so an fsync issued before one completes nothing.
    pub(super) generation: u64,
}

impl Log {
    pub(super) fn end(&self) -> Offset {
        Offset(self.batches.last().map_or(0, Batch::end))
    }

    pub(super) fn durable_end(&self) -> Offset {
        Offset(match self.durable_len {
            0 => 0,
            n => self.batches[n - 1].end(),
        })
    }

    pub(super) fn last_epoch(&self) -> Option<LeaderEpoch> {
        self.batches.last().map(|b| LeaderEpoch(b.epoch))
    }

    pub(super) fn lookup(&self) -> LogEpochs<'_> {
        LogEpochs {
            cache: &self.epochs,
            log_end: self.end(),
        }
    }

    /// Appends `batch`, which must start at the log end with an epoch no older than the last.
    pub(super) fn append(&mut self, batch: Batch) -> Result<(), String> {
        if Offset(batch.base) != self.end() {
            return Err(format!("append of {batch:?} at log end {}", self.end()));
        }
        if self.last_epoch().is_some_and(|e| e.0 > batch.epoch) {
            return Err(format!(
                "epoch goes back: {batch:?} after {:?}",
                self.last_epoch()
            ));
        }
        self.epochs
            .assign(LeaderEpoch(batch.epoch), Offset(batch.base));
        self.batches.push(batch);
        Ok(())
    }

    /// Drops every batch that does not end at or before `to`.
    pub(super) fn truncate_to(&mut self, to: Offset) {
        let keep = self.batches.partition_point(|b| b.end() <= to.0);
        self.batches.truncate(keep);
        self.durable_len = self.durable_len.min(keep);
        self.epochs.truncate_from_end(self.end());
        self.generation += 1;
    }

    /// A crash: the non-durable suffix is gone; the epoch cache is rebuilt from the batches.
    pub(super) fn crash(&mut self) {
        self.batches.truncate(self.durable_len);
        self.epochs = EpochCache::new();
        for b in &self.batches {
            self.epochs.assign(LeaderEpoch(b.epoch), Offset(b.base));
        }
        self.generation += 1;
    }

    /// Index of the batch starting at `offset`, or the batch count if it is the log end.
    pub(super) fn index_of(&self, offset: Offset) -> Option<usize> {
        if offset == self.end() {
            return Some(self.batches.len());
        }
        let i = self.batches.partition_point(|b| b.base < offset.0);
        (i < self.batches.len() && self.batches[i].base == offset.0).then_some(i)
    }
}
