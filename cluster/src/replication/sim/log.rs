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
    /// Runs of batches of one epoch, and where the last run starts: the epoch cache must hold
    /// exactly one entry per run.
    epoch_runs: usize,
    last_run_start: i64,
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

    /// The latest epoch of the epoch cache (Kafka's `log.latestEpoch`): newer than the last
    /// batch's after this node took over as leader and appended nothing yet.
    pub(super) fn latest_epoch(&self) -> Option<LeaderEpoch> {
        self.epochs.latest_epoch()
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
        if self.last_epoch() != Some(LeaderEpoch(batch.epoch)) {
            self.epoch_runs += 1;
            self.last_run_start = batch.base;
        }
        self.epochs
            .assign(LeaderEpoch(batch.epoch), Offset(batch.base));
        self.batches.push(batch);
        // The cache must say where each epoch of the log starts, nothing else.
        let entries = self.epochs.entries();
        let last_run = (LeaderEpoch(batch.epoch), Offset(self.last_run_start));
        if entries.len() != self.epoch_runs || entries.last() != Some(&last_run) {
            return Err(format!(
                "epoch cache {entries:?} disagrees with the log after appending {batch:?}"
            ));
        }
        Ok(())
    }

    /// Recounts the epoch runs after the log was cut.
    fn recount_runs(&mut self) {
        self.epoch_runs = 0;
        let mut last = None;
        for b in &self.batches {
            if last != Some(b.epoch) {
                self.epoch_runs += 1;
                self.last_run_start = b.base;
                last = Some(b.epoch);
            }
        }
    }

    /// Drops every batch that does not end at or before `to`.
    pub(super) fn truncate_to(&mut self, to: Offset) {
        let keep = self.batches.partition_point(|b| b.end() <= to.0);
        self.batches.truncate(keep);
        self.durable_len = self.durable_len.min(keep);
        self.epochs.truncate_from_end(self.end());
        self.generation += 1;
        self.recount_runs();
    }

    /// A crash: the non-durable suffix is gone; the epoch cache is rebuilt from the batches.
    pub(super) fn crash(&mut self) {
        self.batches.truncate(self.durable_len);
        self.epochs = EpochCache::new();
        for b in &self.batches {
            self.epochs.assign(LeaderEpoch(b.epoch), Offset(b.base));
        }
        self.generation += 1;
        self.recount_runs();
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
