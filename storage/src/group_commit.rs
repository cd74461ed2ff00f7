//! Group commit: concurrent `flush` callers share fdatasyncs, and `flush.messages` /
//! `flush.ms` bookkeeping.

use std::cell::Cell;
use std::future::Future;

use event_listener::Event;

use crate::error::StorageError;

/// Flush bookkeeping of one log. Counts records: each append adds at least one, so the running
/// total works as a sequence number of appends.
#[derive(Default)]
pub(crate) struct GroupCommit {
    appended: Cell<u64>,
    durable: Cell<u64>,
    in_flight: Cell<bool>,
    done: Event,
    first_unflushed_ms: Cell<Option<i64>>,
    syncs: Cell<u64>,
}

/// Clears `in_flight` and wakes waiters even if the flushing future is dropped mid-sync.
struct InFlight<'a>(&'a GroupCommit);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.set(false);
        self.0.done.notify(usize::MAX);
    }
}

impl GroupCommit {
    /// Records a completed append of `records` records at `now_ms`.
    pub fn on_append(&self, records: u64, now_ms: i64) {
        if self.appended.get() == self.durable.get() {
            self.first_unflushed_ms.set(Some(now_ms));
        }
        self.appended.set(self.appended.get() + records.max(1));
    }

    /// Number of syncs started so far (observability and tests).
    pub fn syncs(&self) -> u64 {
        self.syncs.get()
    }

    /// Records appended but not yet known durable.
    pub fn unflushed_records(&self) -> u64 {
        self.appended.get() - self.durable.get()
    }

    /// Whether `flush.messages` or `flush.ms` asks for a flush now.
    pub fn needs_flush(&self, now_ms: i64, flush_messages: u64, flush_ms: u64) -> bool {
        let unflushed = self.unflushed_records();
        if unflushed == 0 {
            return false;
        }
        if unflushed >= flush_messages {
            return true;
        }
        match self.first_unflushed_ms.get() {
            Some(first) => now_ms.saturating_sub(first).max(0) as u64 >= flush_ms,
            None => false,
        }
    }

    /// Returns once everything appended before the call is durable. One caller at a time runs
    /// `sync`; callers arriving meanwhile wait for it and then share the next one.
    pub async fn flush<F, Fut>(&self, sync: F) -> Result<(), StorageError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), StorageError>>,
    {
        let target = self.appended.get();
        // Each round either returns, waits for the flush in flight to end, or runs one sync.
        loop {
            if self.durable.get() >= target {
                return Ok(());
            }
            if self.in_flight.get() {
                let listener = self.done.listen();
                if self.in_flight.get() {
                    listener.await;
                }
                continue;
            }
            self.in_flight.set(true);
            let guard = InFlight(self);
            let covered = self.appended.get();
            self.syncs.set(self.syncs.get() + 1);
            let result = sync().await;
            if result.is_ok() {
                self.durable.set(self.durable.get().max(covered));
                if self.durable.get() == self.appended.get() {
                    self.first_unflushed_ms.set(None);
                }
            }
            drop(guard);
            result?;
        }
    }
}
