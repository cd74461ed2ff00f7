//! Latency histograms, and the fsync latency of the current shard thread.
//!
//! Each shard is one thread, so the fsync histogram is a `thread_local` of plain `Cell`s: no
//! atomics or locks where fdatasync is issued. The broker copies it out with
//! [`fsync_latency_snapshot`] when it builds a metrics snapshot. The histogram type lives here,
//! the lowest crate that records one, and the broker reuses it for request latencies.

use std::cell::RefCell;
use std::time::Duration;

/// Upper bounds (seconds) of the histogram buckets: 100 µs to 10 s, roughly 1-2.5-5 steps,
/// which spans a page-cache fdatasync on NVMe up to a stalled disk or a long-polling fetch.
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A fixed-bucket latency histogram (Prometheus style: per-bucket counts, a sum and a count).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencyHistogram {
    /// Observations per bucket of [`LATENCY_BUCKETS_SECONDS`] (not cumulative); the last slot
    /// counts those above the largest bound.
    pub buckets: [u64; LATENCY_BUCKETS_SECONDS.len() + 1],
    /// Sum of all observations, in seconds.
    pub sum_seconds: f64,
    /// Number of observations.
    pub count: u64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS_SECONDS
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BUCKETS_SECONDS.len());
        self.buckets[i] += 1;
        self.sum_seconds += s;
        self.count += 1;
    }

    /// Adds another histogram's observations to this one.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.sum_seconds += other.sum_seconds;
        self.count += other.count;
    }

    /// Cumulative counts per bound of [`LATENCY_BUCKETS_SECONDS`], then the total (`+Inf`).
    pub fn cumulative(&self) -> impl Iterator<Item = (Option<f64>, u64)> + '_ {
        let mut total = 0;
        self.buckets.iter().enumerate().map(move |(i, n)| {
            total += n;
            (LATENCY_BUCKETS_SECONDS.get(i).copied(), total)
        })
    }
}

thread_local! {
    static FSYNC_LATENCY: RefCell<LatencyHistogram> = RefCell::new(LatencyHistogram::default());
    static SYNC_FAILURES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Counts one failed fdatasync or directory fsync on this thread.
pub(crate) fn record_sync_failure() {
    SYNC_FAILURES.with(|n| n.set(n.get() + 1));
}

/// Failed fdatasyncs and directory fsyncs on this thread (this shard) so far.
pub fn sync_failures() -> u64 {
    SYNC_FAILURES.with(|n| n.get())
}

/// Records the latency of one fdatasync or directory fsync on this thread.
pub(crate) fn record_fsync(d: Duration) {
    FSYNC_LATENCY.with(|h| h.borrow_mut().observe(d));
}

/// The fsync latencies recorded on this thread (this shard) so far.
pub fn fsync_latency_snapshot() -> LatencyHistogram {
    FSYNC_LATENCY.with(|h| h.borrow().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_merge_adds() {
        let mut h = LatencyHistogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(20));
        let c: Vec<_> = h.cumulative().collect();
        assert_eq!(c[0], (Some(0.0001), 1));
        assert_eq!(c[5], (Some(0.005), 2));
        assert_eq!(*c.last().unwrap(), (None, 3));
        let mut m = h.clone();
        m.merge(&h);
        assert_eq!(m.count, 6);
        assert!((m.sum_seconds - 2.0 * h.sum_seconds).abs() < 1e-9);
    }

    #[test]
    fn fsync_latency_is_per_thread() {
        record_fsync(Duration::from_millis(1));
        assert_eq!(fsync_latency_snapshot().count, 1);
        assert_eq!(
            std::thread::spawn(|| fsync_latency_snapshot().count)
                .join()
                .unwrap(),
            0
        );
    }
}
