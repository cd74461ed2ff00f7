//! The run's clock and the counters each producer and consumer thread fills.

use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

/// Time since the run started, in nanoseconds, plus the Unix time of that start: values carry
/// Unix nanoseconds so a consumer in another process could measure end-to-end latency too.
#[derive(Clone, Copy)]
pub struct Clock {
    pub start: Instant,
    pub unix_base_ns: u64,
}

impl Clock {
    pub fn new() -> Clock {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            start: Instant::now(),
            unix_base_ns: unix.as_nanos() as u64,
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn unix_ms(&self, ns: u64) -> i64 {
        ((self.unix_base_ns + ns) / 1_000_000) as i64
    }
}

/// Latencies up to an hour, in nanoseconds, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// The measured window: records due in it count towards the run's results.
#[derive(Clone, Copy)]
pub struct Window {
    pub from_ns: u64,
    pub to_ns: u64,
}

impl Window {
    pub fn contains(&self, ns: u64) -> bool {
        (self.from_ns..self.to_ns).contains(&ns)
    }
}

/// Counters of one direction (produce or consume) of one thread.
pub struct Counts {
    /// Since the last `take_interval`: every record, whatever its due time.
    pub interval: Histogram<u64>,
    pub interval_messages: u64,
    pub interval_bytes: u64,
    /// Records due inside the measured window.
    pub total: Histogram<u64>,
    pub messages: u64,
    pub bytes: u64,
    /// Records completed (acknowledged, or fetched) inside the measured window, whenever due:
    /// the achieved throughput.
    pub done_messages: u64,
    pub done_bytes: u64,
    /// Records the broker refused (produce) or fetch errors (consume).
    pub errors: u64,
    pub last_error: Option<String>,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            interval: histogram(),
            interval_messages: 0,
            interval_bytes: 0,
            total: histogram(),
            messages: 0,
            bytes: 0,
            done_messages: 0,
            done_bytes: 0,
            errors: 0,
            last_error: None,
        }
    }

    /// One record due at `due_ns` done at `done_ns` (latency None: not measured, e.g. acks=0).
    pub fn record(
        &mut self,
        due_ns: u64,
        done_ns: u64,
        latency_ns: Option<u64>,
        bytes: u64,
        window: &Window,
    ) {
        if window.contains(done_ns) {
            self.done_messages += 1;
            self.done_bytes += bytes;
        }
        self.interval_messages += 1;
        self.interval_bytes += bytes;
        if let Some(l) = latency_ns {
            let _ = self.interval.record(l.max(1));
        }
        if window.contains(due_ns) {
            self.messages += 1;
            self.bytes += bytes;
            if let Some(l) = latency_ns {
                let _ = self.total.record(l.max(1));
            }
        }
    }

    pub fn error(&mut self, records: u64, what: String) {
        self.errors += records;
        self.last_error = Some(what);
    }
}

/// A thread's counters behind a lock the main loop takes once a second.
pub struct Meter(Mutex<Counts>);

impl Meter {
    pub fn new() -> Meter {
        Meter(Mutex::new(Counts::new()))
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Counts) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The interval's histogram and counts, resetting them.
    pub fn take_interval(&self) -> (Histogram<u64>, u64, u64) {
        self.with(|c| {
            let h = std::mem::replace(&mut c.interval, histogram());
            let out = (h, c.interval_messages, c.interval_bytes);
            c.interval_messages = 0;
            c.interval_bytes = 0;
            out
        })
    }
}
