//! Microbenchmark of the cross-shard hop: a request from one shard executor to another and the
//! reply back, over the broker's own mesh (`strom_broker::bench_api::Mesh`, the code shards use:
//! a glommio `channel_mesh` of bounded channels, an outbox per peer drained in order by a pump
//! task, a receiver task per peer that runs each request in its own task, a oneshot per call).
//! Operations and replies are a `u64` and executing one echoes it; the broker's handler runs
//! `ShardOp`s instead. The two executors are pinned to different CPUs with the broker's
//! preemption timer (see `common`). Run with `cargo bench -p strom-perf --bench cross_shard`.

#![allow(
    missing_docs,
    reason = "criterion_group! defines the group as a `pub fn` that cannot carry a doc comment"
)]

mod common;

use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::stream::{FuturesUnordered, StreamExt};
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::{CpuSet, Placement};
use strom_broker::bench_api::{spawn_tasks, Handler, Mesh, Msg, MESH_CHANNEL_CAPACITY};

use common::Worker;

/// Calls in flight in the pipelined benchmark.
const PIPELINE_DEPTH: usize = 64;

/// Executes an operation by echoing it.
struct Echo;

impl Handler for Echo {
    type Op = u64;
    type Reply = u64;

    fn cancellable(_: &u64) -> bool {
        false
    }

    fn unavailable() -> u64 {
        u64::MAX
    }

    async fn execute(self: &Rc<Self>, op: u64) -> u64 {
        op
    }
}

/// Calls `peer` with `op`; the echo must come back.
async fn call(mesh: &Mesh<Echo>, peer: usize, op: u64) -> u64 {
    let (reply, _) = mesh.call(peer, op).await;
    assert_eq!(reply, op, "the peer echoes");
    reply
}

/// Joins the mesh as the shard startup does and starts the mesh tasks.
async fn join(builder: MeshBuilder<Msg<Echo>, Full>) -> Rc<Mesh<Echo>> {
    let (senders, receivers) = builder.join().await.expect("join the mesh");
    let mesh = Rc::new(Mesh::new(senders));
    spawn_tasks(&mesh, Rc::new(Echo), receivers);
    mesh
}

/// `iters` calls to the other shard, one at a time; returns the total time.
async fn sequential(mesh: Rc<Mesh<Echo>>, iters: u64) -> Duration {
    let peer = 1 - mesh.id();
    let start = Instant::now();
    for op in 0..iters {
        call(&mesh, peer, op).await;
    }
    start.elapsed()
}

/// `n` calls to the other shard, one at a time, each timed; microseconds per round trip.
async fn timed(mesh: Rc<Mesh<Echo>>, n: u64) -> hdrhistogram::Histogram<u64> {
    let peer = 1 - mesh.id();
    let mut h = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    for op in 0..n {
        let start = Instant::now();
        call(&mesh, peer, op).await;
        h.saturating_record(start.elapsed().as_micros() as u64);
    }
    h
}

/// `iters` calls to the other shard with up to `PIPELINE_DEPTH` in flight; returns the total time.
async fn pipelined(mesh: Rc<Mesh<Echo>>, iters: u64) -> Duration {
    let peer = 1 - mesh.id();
    let mut in_flight = FuturesUnordered::new();
    let mut issued = 0;
    let start = Instant::now();
    while issued < iters && in_flight.len() < PIPELINE_DEPTH {
        in_flight.push(call(&mesh, peer, issued));
        issued += 1;
    }
    while in_flight.next().await.is_some() {
        if issued < iters {
            in_flight.push(call(&mesh, peer, issued));
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
