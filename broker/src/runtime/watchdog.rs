//! Wakes a shard whose executor has stopped running.
//!
//! glommio 0.9 can park an executor although tasks are runnable: `run_task_queues` reports
//! "nothing ran" when it finds the preemption flag already set, and the executor then sleeps
//! until an unrelated I/O completion arrives, which on an idle broker may be minutes away (seen
//! as a SIGTERM that took effect only when the next client connected). The upstream fix came
//! after 0.9.0, the latest release.
//!
//! Each shard's tick task records when it last ran. A watchdog thread checks every tick; a shard
//! whose tick is late by more than `STALL_TICKS` ticks gets one of its tasks woken from this
//! foreign thread, which writes the executor's eventfd and ends the sleep. A healthy shard is
//! never woken by the watchdog, so this costs nothing on the shards' cores. On shutdown every
//! shard is woken at once.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::Duration;

use crate::clock::now_ms;

/// A tick late by this many periods counts as a stall.
const STALL_TICKS: i64 = 3;

#[derive(Default)]
struct Slot {
    last_tick_ms: AtomicI64,
    waker: Mutex<Option<Waker>>,
}

/// Shared between the shards and the watchdog thread.
pub struct Watchdog {
    slots: Vec<Slot>,
    tick_ms: u64,
    stalls: AtomicU64,
    registered: AtomicUsize,
}

impl Watchdog {
    pub fn new(shards: usize, tick_ms: u64) -> Arc<Watchdog> {
        Arc::new(Watchdog {
            slots: (0..shards).map(|_| Slot::default()).collect(),
            tick_ms,
            stalls: AtomicU64::new(0),
            registered: AtomicUsize::new(0),
        })
    }

    /// Gives the calling executor its slot, before anything else runs on it (the mesh join at
    /// startup can stall too).
    pub fn register(&self) -> usize {
        self.registered.fetch_add(1, Ordering::Relaxed)
    }

    /// Called by the tick of the executor holding slot `id`.
    pub fn beat(&self, id: usize) {
        if let Some(s) = self.slots.get(id) {
            s.last_tick_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// A task that never finishes and lends its waker to the watchdog; spawn one per shard.
    pub async fn wake_target(self: Arc<Self>, id: usize) {
        poll_fn(|cx| {
            if let Some(s) = self.slots.get(id) {
                *s.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            }
            Poll::<()>::Pending
        })
        .await;
    }

    fn wake(&self, id: usize) {
        let waker = self.slots[id]
            .waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Stalls detected so far.
    pub fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// Runs the watchdog thread until `stop` is set. Wakes every shard when `shutdown` is set.
    pub fn spawn(
        self: &Arc<Self>,
        shutdown: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("strom-watchdog".into())
            .spawn(move || {
                let mut shutdown_seen = false;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(me.tick_ms));
                    let now = now_ms();
                    let wake_all = shutdown.load(Ordering::Relaxed) && !shutdown_seen;
                    shutdown_seen |= wake_all;
                    for (id, s) in me.slots.iter().enumerate() {
                        let last = s.last_tick_ms.load(Ordering::Relaxed);
                        let stalled = last > 0 && now - last > STALL_TICKS * me.tick_ms as i64;
                        if stalled {
                            me.stalls.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(
                                shard = id,
                                late_ms = now - last,
                                "shard stalled; waking it"
                            );
                        }
                        if stalled || wake_all {
                            me.wake(id);
                        }
                    }
                }
            })
            .expect("spawning the watchdog thread")
    }
}
