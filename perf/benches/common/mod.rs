//! A glommio executor that lives across a whole benchmark and runs jobs sent from the
//! criterion thread, so `iter_custom` routines can time async code without building an
//! executor per sample.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::channel::mpsc;
use futures::StreamExt;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};

/// The preemption quantum of the broker's shard executors (broker/src/lib.rs).
const PREEMPT_TIMER: Duration = Duration::from_millis(5);

/// How often the nudger wakes the executor (as `strom_storage::testing::run_local` does).
const NUDGE_INTERVAL: Duration = Duration::from_millis(5);

type Job<S> = Box<dyn FnOnce(S) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// An executor thread, built like a broker shard, whose state `S` was made by an `init`
/// future on that thread; `run` executes a job there and waits for its result.
///
/// glommio 0.9 can park an executor while tasks are runnable (see
/// broker/src/shard/watchdog.rs); a nudger thread wakes a task of the executor every few
/// milliseconds so such a stall is bounded instead of hanging the benchmark.
pub struct Worker<S> {
    jobs: Option<mpsc::UnboundedSender<Job<S>>>,
    executor: Option<ExecutorJoinHandle<()>>,
    stop: Arc<AtomicBool>,
    nudger: Option<JoinHandle<()>>,
}

impl<S: Clone + 'static> Worker<S> {
    /// Starts the executor at `placement`; it first awaits `init()`, then runs jobs in order.
    pub fn spawn<I, F>(placement: Placement, init: I) -> Worker<S>
    where
        I: FnOnce() -> F + Send + 'static,
        F: Future<Output = S> + 'static,
    {
        let (jobs, mut queue) = mpsc::unbounded::<Job<S>>();
        let slot: Arc<Mutex<Option<Waker>>> = Arc::default();
        let lent = Arc::clone(&slot);
        let executor = LocalExecutorBuilder::new(placement)
            .name("strom-perf")
            .preempt_timer(PREEMPT_TIMER)
            .spawn(move || async move {
                let lend_waker = futures::future::poll_fn(move |cx| {
                    *lent.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
                    Poll::<()>::Pending
                });
                glommio::spawn_local(lend_waker).detach();
                let state = init().await;
                while let Some(job) = queue.next().await {
                    job(state.clone()).await;
                }
            })
            .expect("spawn a glommio executor");
        let stop = Arc::new(AtomicBool::new(false));
        let nudger = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(NUDGE_INTERVAL);
                    let waker = slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                }
            })
        };
        Worker {
            jobs: Some(jobs),
            executor: Some(executor),
            stop,
            nudger: Some(nudger),
        }
    }

    /// Runs `job` with the executor's state on the executor and returns its output.
    pub fn run<T, J, Fut>(&self, job: J) -> T
    where
        J: FnOnce(S) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let (done, result) = std_mpsc::sync_channel(1);
        let boxed: Job<S> = Box::new(move |state| {
            Box::pin(async move {
                let _ = done.send(job(state).await);
            })
        });
        self.jobs
            .as_ref()
            .expect("jobs are open until drop")
            .unbounded_send(boxed)
            .expect("the executor is running");
        result
            .recv()
            .expect("the job panicked (see its message above)")
    }
}

impl<S> Drop for Worker<S> {
    /// Ends the executor once its queued jobs are done, then the nudger.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(executor) = self.executor.take() {
            let _ = executor.join();
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(nudger) = self.nudger.take() {
            let _ = nudger.join();
        }
    }
}
