//! `strom-bench`: a lean Kafka-wire load generator. It speaks the protocol directly (no client
//! library in between), pipelines requests on one connection and prints throughput and request
//! latency percentiles. It works against any Kafka-compatible broker.

mod group;
mod wire;

use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;

use wire::Conn;

#[derive(Parser, Debug)]
#[command(name = "strom-bench", about = "Kafka-wire load generator")]
struct Cli {
    /// Broker address.
    #[arg(short, long, default_value = "127.0.0.1:9092", global = true)]
    brokers: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Produce fixed-size records as fast as the pipeline allows.
    Produce {
        #[arg(long, default_value = "strom-bench")]
        topic: String,
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Total records to send (the run also stops at --duration-s).
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
        #[arg(long, default_value_t = 1024)]
        record_bytes: usize,
        /// Records per batch (one batch per partition per request).
        #[arg(long, default_value_t = 64)]
        batch_records: usize,
        /// 0, 1 or -1 (all).
        #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
        acks: i16,
        /// Requests in flight on the connection.
        #[arg(long, default_value_t = 8)]
        inflight: usize,
        #[arg(long, default_value_t = 60)]
        duration_s: u64,
    },
    /// Read a partition from offset 0 up to its end as fast as possible.
    Consume {
        #[arg(long, default_value = "strom-bench")]
        topic: String,
        #[arg(long, default_value_t = 0)]
        partition: i32,
        #[arg(long, default_value_t = 4 * 1024 * 1024)]
        max_bytes: i32,
        #[arg(long, default_value_t = 60)]
        duration_s: u64,
    },
    /// Consumer group latencies (classic protocol): join to first record, and rebalance after a
    /// member leaves. Needs group.initial.rebalance.delay.ms=0 on the broker.
    Group {
        #[arg(long, default_value = "strom-bench-group")]
        topic: String,
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Measured rounds per scenario, each with a new group.
        #[arg(long, default_value_t = 20)]
        rounds: u32,
        /// Heartbeat interval of the members in the rebalance scenario.
        #[arg(long, default_value_t = 100)]
        heartbeat_ms: u64,
        /// Deadline of each round (and of the setup); exceeding it fails the run.
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Produce { topic, partitions, records, record_bytes, batch_records, acks, inflight, duration_s } => produce(
            &cli.brokers,
            &topic,
            partitions,
            records,
            record_bytes,
            batch_records,
            acks,
            inflight.max(1),
            Duration::from_secs(duration_s),
        ),
        Command::Consume { topic, partition, max_bytes, duration_s } => {
            consume(&cli.brokers, &topic, partition, max_bytes, Duration::from_secs(duration_s))
        }
        Command::Group { topic, partitions, rounds, heartbeat_ms, timeout_s, json } => group::run(&group::GroupArgs {
            brokers: cli.brokers.clone(),
            topic,
            partitions,
            rounds,
            heartbeat: Duration::from_millis(heartbeat_ms),
            timeout: Duration::from_secs(timeout_s),
            json,
        }),
    };
    if let Err(e) = result {
        eprintln!("strom-bench: {e}");
        std::process::exit(1);
    }
}

fn print_latency(name: &str, h: &Histogram<u64>) {
    println!(
        "{name} latency us: p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max(),
        h.len()
    );
}

#[allow(clippy::too_many_arguments)]
fn produce(
    brokers: &str,
    topic: &str,
    partitions: i32,
    records: u64,
    record_bytes: usize,
    batch_records: usize,
    acks: i16,
    inflight: usize,
    duration: Duration,
) -> Result<(), String> {
    let mut conn = Conn::connect(brokers)?;
    conn.create_topic(topic, partitions)?;
    let value = Bytes::from(vec![b'x'; record_bytes]);
    let batch = wire::build_batch(&value, batch_records)?;
    let batch_bytes = batch.len() as u64;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut sent_records = 0u64;
    let mut in_flight = std::collections::VecDeque::new();
    let start = Instant::now();
    let mut next_partition = 0;
    let mut acked_bytes = 0u64;
    while (sent_records < records && start.elapsed() < duration) || !in_flight.is_empty() {
        while in_flight.len() < inflight && sent_records < records && start.elapsed() < duration {
            let id = conn.send_produce(topic, next_partition, batch.clone(), acks)?;
            next_partition = (next_partition + 1) % partitions;
            sent_records += batch_records as u64;
            if acks == 0 {
                acked_bytes += batch_bytes;
            } else {
                in_flight.push_back((id, Instant::now()));
            }
        }
        if let Some((id, t0)) = in_flight.pop_front() {
            conn.recv_produce(id)?;
            let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
            acked_bytes += batch_bytes;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "produce: {} records of {} B in {:.2} s: {:.0} records/s, {:.1} MB/s (batches of {} B, acks={}, inflight={})",
        sent_records,
        record_bytes,
        secs,
        sent_records as f64 / secs,
        acked_bytes as f64 / secs / 1e6,
        batch_bytes,
        acks,
        inflight
    );
    if !hist.is_empty() {
        print_latency("produce request", &hist);
    }
    Ok(())
}

fn consume(brokers: &str, topic: &str, partition: i32, max_bytes: i32, duration: Duration) -> Result<(), String> {
    let mut conn = Conn::connect(brokers)?;
    let end = conn.latest_offset(topic, partition)?;
    let mut offset = 0i64;
    let mut bytes = 0u64;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let start = Instant::now();
    while offset < end && start.elapsed() < duration {
        let t0 = Instant::now();
        let (next, got) = conn.fetch(topic, partition, offset, max_bytes)?;
        let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
        if next <= offset {
            return Err(format!("no progress at offset {offset}"));
        }
        offset = next;
        bytes += got;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "consume: {} records, {} bytes in {:.2} s: {:.1} MB/s",
        offset,
        bytes,
        secs,
        bytes as f64 / secs / 1e6
    );
    print_latency("fetch request", &hist);
    Ok(())
}
