//! Microbenchmark of the cross-shard hop: a request from one shard executor to another and the
//! reply back, over the same mechanism as the broker. Run with
//! `cargo bench -p strom-perf --bench cross_shard`.
//!
//! The broker is a binary crate, so the `Mesh` below mirrors broker/src/shard/mesh.rs: a glommio
//! `channel_mesh` full mesh of bounded channels (capacity `MESH_CHANNEL_CAPACITY`), a per-peer
//! outbox drained in order by a pump task woken through an `event_listener::Event`, a receiver
//! task per peer that runs each request in its own task, and a `futures` oneshot per call for
//! the reply. The differences: ops and replies are a `u64` and executing an op echoes it (the
//! broker runs `ops::execute`), and the per-shard statistics counters are left out. The two
//! executors are pinned to different CPUs with the broker's preemption timer (see `common`).

#![allow(
    missing_docs,
    reason = "criterion_group! defines the group as a `pub fn` that cannot carry a doc comment"
)]

mod common;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use event_listener::Event;
use futures::channel::oneshot;
use futures::stream::{FuturesUnordered, StreamExt};
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::{CpuSet, GlommioError, Placement, ResourceType};

use common::Worker;

/// Messages per direction between two shards before senders wait (as in mesh.rs).
const MESH_CHANNEL_CAPACITY: usize = 1024;

/// Calls in flight in the pipelined benchmark.
const PIPELINE_DEPTH: usize = 64;

enum ShardMsg {
    Request { id: u64, op: u64 },
    Reply { id: u64, reply: u64 },
}

struct Outbox {
    queue: RefCell<VecDeque<ShardMsg>>,
    ready: Event,
}

/// One shard's end of the mesh.
struct Mesh {
    id: usize,
    senders: Rc<Senders<ShardMsg>>,
    outboxes: Vec<Rc<Outbox>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<u64>>>,
    next_id: Cell<u64>,
}

impl Mesh {
    fn new(senders: Senders<ShardMsg>) -> Mesh {
        let peers = senders.nr_consumers();
        Mesh {
            id: senders.peer_id(),
            senders: Rc::new(senders),
            outboxes: (0..peers)
                .map(|_| {
                    Rc::new(Outbox {
                        queue: RefCell::new(VecDeque::new()),
                        ready: Event::new(),
                    })
                })
                .collect(),
            pending: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
        }
    }

    fn enqueue(&self, to: usize, msg: ShardMsg) {
        let outbox = &self.outboxes[to];
        outbox.queue.borrow_mut().push_back(msg);
        outbox.ready.notify(1);
    }

    async fn call(&self, to: usize, op: u64) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        self.enqueue(to, ShardMsg::Request { id, op });
        rx.await.expect("the peer replies")
    }
}

/// Moves one peer's outbox into its channel, in order.
async fn pump(mesh: Rc<Mesh>, to: usize) {
    let outbox = mesh.outboxes[to].clone();
    let senders = mesh.senders.clone();
    loop {
        let next = outbox.queue.borrow_mut().pop_front();
        let Some(msg) = next else {
            let listener = outbox.ready.listen();
            if outbox.queue.borrow().is_empty() {
                listener.await;
            }
            continue;
        };
        let sent = match senders.try_send_to(to, msg) {
            Ok(()) => Ok(()),
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                senders.send_to(to, msg).await.map_err(|_| ())
            }
            Err(_) => Err(()),
        };
        if sent.is_err() {
            // The peer is gone (the benchmark is over).
            mesh.pending.borrow_mut().clear();
            return;
        }
    }
}

fn spawn_tasks(mesh: &Rc<Mesh>, mut receivers: Receivers<ShardMsg>) {
    for to in 0..mesh.outboxes.len() {
        if to != mesh.id {
            glommio::spawn_local(pump(mesh.clone(), to)).detach();
        }
    }
    for (peer, rx) in receivers.streams() {
        let mesh = mesh.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                match msg {
                    ShardMsg::Request { id, op } => {
                        let mesh = mesh.clone();
                        glommio::spawn_local(async move {
                            mesh.enqueue(peer, ShardMsg::Reply { id, reply: op });
                        })
                        .detach();
                    }
                    ShardMsg::Reply { id, reply } => {
                        if let Some(tx) = mesh.pending.borrow_mut().remove(&id) {
                            let _ = tx.send(reply);
                        }
                    }
                }
            }
        })
        .detach();
    }
}

/// Joins the mesh as the shard startup does and starts the mesh tasks.
async fn join(builder: MeshBuilder<ShardMsg, Full>) -> Rc<Mesh> {
    let (senders, receivers) = builder.join().await.expect("join the mesh");
    let mesh = Rc::new(Mesh::new(senders));
    spawn_tasks(&mesh, receivers);
    mesh
}

/// `iters` calls to the other shard, one at a time; returns the total time.
async fn sequential(mesh: Rc<Mesh>, iters: u64) -> Duration {
    let peer = 1 - mesh.id;
    let start = Instant::now();
    for op in 0..iters {
        assert_eq!(mesh.call(peer, op).await, op);
    }
    start.elapsed()
}

/// `n` calls to the other shard, one at a time, each timed; microseconds per round trip.
async fn timed(mesh: Rc<Mesh>, n: u64) -> hdrhistogram::Histogram<u64> {
    let peer = 1 - mesh.id;
    let mut h = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    for op in 0..n {
        let start = Instant::now();
        assert_eq!(mesh.call(peer, op).await, op);
        h.saturating_record(start.elapsed().as_micros() as u64);
    }
    h
}

/// `iters` calls to the other shard with up to `PIPELINE_DEPTH` in flight; returns the total time.
async fn pipelined(mesh: Rc<Mesh>, iters: u64) -> Duration {
    let peer = 1 - mesh.id;
    let mut in_flight = FuturesUnordered::new();
    let mut issued = 0;
    let start = Instant::now();
    while issued < iters && in_flight.len() < PIPELINE_DEPTH {
        in_flight.push(mesh.call(peer, issued));
        issued += 1;
    }
    while in_flight.next().await.is_some() {
        if issued < iters {
            in_flight.push(mesh.call(peer, issued));
            issued += 1;
        }
    }
    start.elapsed()
}

/// Round trip of one request/reply between two shards pinned to different CPUs (`round_trip`,
/// time per hop there and back with nothing else in flight) and the rate of calls with 64 in
/// flight (`pipelined_64`, where batching in the channels and pumps amortizes the wake-ups).
/// Round trips that hit glommio 0.9's park stall (see `common`) take milliseconds instead of
/// microseconds; they are rare but weigh on the mean.
fn cross_shard(c: &mut Criterion) {
    let cpus: Vec<usize> = CpuSet::online()
        .expect("list online CPUs")
        .iter()
        .map(|l| l.cpu)
        .collect();
    if cpus.len() < 2 {
        eprintln!("cross_shard: skipped, it needs two online CPUs");
        return;
    }
    let builder = MeshBuilder::full(2, MESH_CHANNEL_CAPACITY);
    let peer_builder = builder.clone();
    let caller = Worker::spawn(Placement::Fixed(cpus[0]), move || join(builder));
    let peer = Worker::spawn(Placement::Fixed(cpus[1]), move || join(peer_builder));
    let mut g = c.benchmark_group("cross_shard");
    g.bench_function("round_trip", |b| {
        b.iter_custom(|iters| caller.run(move |mesh| sequential(mesh, iters)));
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("pipelined_64", |b| {
        b.iter_custom(|iters| caller.run(move |mesh| pipelined(mesh, iters)));
    });
    g.finish();
    // The tail, which criterion's mean and median hide: a fixed number of timed round trips
    // (fewer under `--test`, as CI runs it).
    let n: u64 = if std::env::args().any(|a| a == "--test") {
        2_000
    } else {
        20_000
    };
    let h = caller.run(move |mesh| timed(mesh, n));
    println!(
        "cross_shard/round_trip percentiles over {n} calls (us): p50 {} p90 {} p99 {} p99.9 {} max {}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    );
    drop(caller);
    drop(peer);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = cross_shard
}
criterion_main!(benches);
