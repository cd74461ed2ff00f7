//! Helpers for tests and benchmarks (here and in other crates): builders of valid record
//! batches (uncompressed v2, varint records, correct CRC-32C) and an executor runner.

pub use crate::sim_disk::{PowerLoss, PowerLossReport, SimDisk};
pub use crate::sync_journal::SyncJournal;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

/// How often the watchdog of `run_local` wakes the executor.
const WATCHDOG_WAKE_INTERVAL: Duration = Duration::from_millis(5);

/// Runs the future made by `make` on a new glommio executor thread and returns its output;
/// panics (after the executor thread printed its panic) if it panicked.
///
/// glommio 0.9 can park its executor while tasks are runnable, when it finds itself preempted
/// before running any task queue (glommio/glommio pull request 53, fixed after 0.9); it then
/// sleeps until some unrelated I/O or timer completes, which may be never. A watchdog thread
/// wakes a parked task every few milliseconds, which writes the executor's eventfd and bounds
/// such a stall to that interval.
pub fn run_local<G, F, T>(make: G) -> T
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let slot: Arc<Mutex<Option<Waker>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (slot, stop) = (Arc::clone(&slot), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(WATCHDOG_WAKE_INTERVAL);
                let waker = slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some(waker) = waker {
                    waker.wake();
                }
            }
        })
    };
    let joined = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let nudged = futures_lite::future::poll_fn(move |cx| {
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
                Poll::<()>::Pending
            });
            glommio::spawn_local(nudged).detach();
            make().await
        })
        .expect("spawn a glommio executor")
        .join();
    stop.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    joined.expect("the test future panicked (see its message above)")
}

/// A record to encode with the batch's timestamp: key, value.
pub type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// A record to encode: key, value, timestamp in ms.
pub type TestRecord<'a> = (Option<&'a [u8]>, Option<&'a [u8]>, i64);

pub use crate::records::BatchOptions;

/// Encodes a valid uncompressed batch whose records all carry `base_timestamp`.
pub fn build_batch(base_timestamp: i64, records: &[KeyValue<'_>]) -> Vec<u8> {
    let records: Vec<TestRecord<'_>> = records
        .iter()
        .map(|(key, value)| (*key, *value, base_timestamp))
        .collect();
    build_batch_with(&BatchOptions::default(), &records)
}

/// Encodes a valid uncompressed batch with one timestamp per record.
pub fn build_batch_with_timestamps(records: &[TestRecord<'_>]) -> Vec<u8> {
    build_batch_with(&BatchOptions::default(), records)
}

/// Encodes a valid batch with the given header options. `records` must not be empty.
pub fn build_batch_with(options: &BatchOptions, records: &[TestRecord<'_>]) -> Vec<u8> {
    crate::records::encode_batch_with(options, records)
}

/// The `.log` segment files of a partition directory, oldest first.
pub fn segment_logs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut logs: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .expect("list the partition directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

/// The active (newest) `.log` segment file of a partition directory.
pub fn active_log(dir: &std::path::Path) -> std::path::PathBuf {
    segment_logs(dir).pop().expect("a segment")
}
