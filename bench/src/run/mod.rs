//! `strom-bench run`: a workload of producers and consumers against a broker or a cluster
//! (each partition's requests go to its leader), with publish and end-to-end latency, a live
//! progress line, and a result the report module prints, saves as JSON and charts.

pub mod consumer;
pub mod findmax;
pub mod meter;
pub mod producer;
pub mod records;
pub mod workload;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::sysinfo::{self, BrokerProcess, ProcessSample};
use crate::wire::Conn;
use consumer::{Consumer, ConsumerControl, ConsumerPlan};
use meter::{histogram, Clock, Meter, Window};
use producer::{Producer, ProducerPlan};
use strom_client::cluster::{connect_any, Cluster, Router};
use workload::{Rate, Workload};

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub p9999_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        Some(Latency {
            count: h.len(),
            min_us: us(h.min()),
            mean_us: (h.mean() / 100.0).round() / 10.0,
            p50_us: us(h.value_at_quantile(0.5)),
            p90_us: us(h.value_at_quantile(0.9)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            p9999_us: us(h.value_at_quantile(0.9999)),
            max_us: us(h.max()),
        })
    }
}

/// Records through one direction in the measured window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Flow {
    /// Records completed (acknowledged or received) in the window.
    pub messages: u64,
    pub bytes: u64,
    pub messages_per_s: f64,
    pub mb_per_s: f64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// A process's CPU and memory over the measured window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessUse {
    pub cpu_s: f64,
    /// CPU seconds per GiB produced (ingested) and per GiB consumed (served).
    pub cpu_s_per_gib_in: Option<f64>,
    pub cpu_s_per_gib_out: Option<f64>,
    /// Average share of one core.
    pub cpu_pct: f64,
    pub rss_mib_start: Option<f64>,
    pub rss_mib_end: Option<f64>,
    pub rss_mib_max: Option<f64>,
}

/// One second of the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Point {
    pub t_s: f64,
    pub produce_messages_per_s: f64,
    pub produce_mb_per_s: f64,
    pub publish_p50_us: Option<f64>,
    pub publish_p99_us: Option<f64>,
    pub publish_p999_us: Option<f64>,
    pub publish_max_us: Option<f64>,
    pub consume_mb_per_s: f64,
    pub e2e_p50_us: Option<f64>,
    pub e2e_p99_us: Option<f64>,
    pub broker_cpu_pct: Option<f64>,
    pub broker_rss_mib: Option<f64>,
    pub client_cpu_pct: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// The offered rate (messages per second over all producers), None for "max".
    pub offered_messages_per_s: Option<f64>,
    pub warmup_s: f64,
    /// Length of the measured window.
    pub measured_s: f64,
    pub produced: Option<Flow>,
    pub publish_latency: Option<Latency>,
    pub consumed: Option<Flow>,
    pub e2e_latency: Option<Latency>,
    pub broker: Option<ProcessUse>,
    pub client: ProcessUse,
    pub timeline: Vec<Point>,
}

/// How the run finds the broker's process for CPU and memory figures.
#[derive(Clone, Debug)]
pub enum BrokerPid {
    Find,
    Pid(u32),
}

pub struct RunOptions {
    /// `--brokers` as given (for the report and the group members' bootstrap).
    pub brokers: String,
    /// Its addresses.
    pub bootstrap: Vec<String>,
    pub broker_pid: BrokerPid,
    /// Print a progress line every second.
    pub progress: bool,
}

/// How long consumers may take to catch up with the producers after they stop.
const CONSUMER_DRAIN: Duration = Duration::from_secs(10);

/// Client id of every connection.
pub const CLIENT_ID: &str = "strom-bench";
/// Bounds connecting, and each Metadata request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds each read and write of the setup and ListOffsets requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Creates `topic` with `configs` if needed (asking the first bootstrap address that accepts)
/// and returns its partition count once every partition has a leader.
pub fn prepare_topic(
    bootstrap: &[String],
    topic: &str,
    partitions: i32,
    configs: &BTreeMap<String, String>,
) -> Result<i32, String> {
    let (mut conn, _) = connect_any(bootstrap, REQUEST_TIMEOUT, CLIENT_ID)?;
    conn.set_timeout(REQUEST_TIMEOUT)?;
    let configs: Vec<(String, String)> = configs
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !conn.create_topic(topic, partitions, &configs)? && !configs.is_empty() {
        eprintln!("strom-bench: topic {topic} exists already; it keeps its own configs (--topic-config applies to new topics)");
    }
    wait_for_leaders(&mut conn, topic, Instant::now() + Duration::from_secs(10))
}

/// The partition count of `topic` once Metadata shows it with a leader for every partition (a
/// new topic shows up once every shard knows it; in a cluster, leaders follow); the reason it
/// is not ready when `deadline` passes.
pub fn wait_for_leaders(conn: &mut Conn, topic: &str, deadline: Instant) -> Result<i32, String> {
    loop {
        let ready = conn.metadata(&[topic]).and_then(|meta| meta.ready(topic));
        match ready {
            Ok(n) => return Ok(n),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// One topic of the run: its name, partition count and the consumers' progress on it.
struct TopicRun {
    name: String,
    partitions: i32,
    control: Arc<ConsumerControl>,
}

impl TopicRun {
    fn end_offsets(&self, router: &mut Router) -> Result<Vec<i64>, String> {
        end_offsets(router, &self.name, self.partitions)
    }
}

/// How long the end offsets must stay the same before the run takes them as final.
const END_OFFSETS_SETTLE: Duration = Duration::from_millis(500);

/// The topics' end offsets once every producer is done. An acks=1 answer comes before the
/// records are durable, and consumers see (and ListOffsets reports) only durable records, so
/// the last acknowledged records can be one group commit past the first reading: read until
/// the offsets stop moving for `END_OFFSETS_SETTLE` (at most `CONSUMER_DRAIN`).
fn settled_end_offsets(topics: &[TopicRun], cluster: &Cluster) -> Result<Vec<Vec<i64>>, String> {
    let mut router = Router::new(cluster.clone(), REQUEST_TIMEOUT);
    let mut read = || -> Result<Vec<Vec<i64>>, String> {
        topics.iter().map(|t| t.end_offsets(&mut router)).collect()
    };
    let started = Instant::now();
    let mut last = read()?;
    let mut stable_since = Instant::now();
    while stable_since.elapsed() < END_OFFSETS_SETTLE && started.elapsed() < CONSUMER_DRAIN {
        std::thread::sleep(Duration::from_millis(50));
        let now = read()?;
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    Ok(last)
}

/// Runs `w` once against the broker.
pub fn run_once(w: &Workload, opts: &RunOptions) -> Result<RunResult, String> {
    w.validate()?;
    let mut topics = Vec::new();
    for name in w.topic_names() {
        let partitions = prepare_topic(&opts.bootstrap, &name, w.partitions, &w.topic_configs)?;
        topics.push(TopicRun {
            name,
            partitions,
            control: Arc::new(ConsumerControl::new(partitions)),
        });
    }
    // Where every partition's leader is; producers and consumers start from this.
    let names: Vec<String> = topics.iter().map(|t| t.name.clone()).collect();
    let cluster = Arc::new(Cluster::discover(
        &opts.bootstrap,
        &names,
        CONNECT_TIMEOUT,
        CLIENT_ID,
    )?);
    let controls: Vec<Arc<ConsumerControl>> = topics.iter().map(|t| t.control.clone()).collect();
    let rate = w.rate()?;
    let broker = match opts.broker_pid {
        BrokerPid::Find => opts.bootstrap.first().and_then(|a| BrokerProcess::find(a)),
        BrokerPid::Pid(pid) => {
            Some(BrokerProcess::new(pid).ok_or_else(|| format!("no process {pid}"))?)
        }
    };
    let catch_up = w.producers == 0;

    // Consumers first, so that they hold their partitions and positions before the first record
    // is produced; the clock and the measured window start once they are ready.
    let go = Arc::new(OnceLock::<(Clock, Window)>::new());
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut consumers = Vec::new();
    for (ti, topic) in topics.iter().enumerate() {
        let cplan = Arc::new(ConsumerPlan {
            brokers: opts.brokers.clone(),
            cluster: cluster.clone(),
            topic: topic.name.clone(),
            partitions: topic.partitions,
            consumers: w.consumers,
            group: w.group_of(ti),
            from_earliest: w.consume_from == "earliest",
            fetch_max_wait_ms: w.fetch_max_wait_ms,
            fetch_partition_max_bytes: w.fetch_partition_max_bytes,
            fetch_max_bytes: w.fetch_max_bytes,
            e2e: !catch_up,
            go: go.clone(),
        });
        for i in 0..w.consumers {
            match Consumer::start(i, cplan.clone(), topic.control.clone(), ready_tx.clone()) {
                Ok(c) => consumers.push(c),
                Err(e) => return Err(stop_consumers(&controls, consumers, e)),
            }
        }
    }
    drop(ready_tx);
    let setup_deadline = Instant::now() + CONSUMER_SETUP;
    for _ in 0..consumers.len() {
        match ready_rx.recv_timeout(setup_deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(stop_consumers(&controls, consumers, e)),
            Err(_) => {
                let e = format!(
                    "the consumers did not get their partitions within {} s",
                    CONSUMER_SETUP.as_secs()
                );
                return Err(stop_consumers(&controls, consumers, e));
            }
        }
    }
    let ends_at_start = if catch_up {
        let mut router = Router::new(cluster.as_ref().clone(), REQUEST_TIMEOUT);
        Some(
            topics
                .iter()
                .map(|t| t.end_offsets(&mut router))
                .collect::<Result<Vec<_>, _>>()?,
        )
    } else {
        None
    };

    let clock = Clock::new();
    let window = Window {
        from_ns: (w.warmup_s * 1e9) as u64,
        to_ns: ((w.warmup_s + w.duration_s) * 1e9) as u64,
    };
    let _ = go.set((clock, window));
    let mut producers = Vec::new();
    let producers_total = w.producers * topics.len() as u32;
    for topic in topics.iter().filter(|_| w.producers > 0) {
        let pplan = Arc::new(ProducerPlan {
            cluster: cluster.clone(),
            topic: topic.name.clone(),
            partitions: topic.partitions,
            acks: w.acks,
            compression: records::compression_from_name(&w.compression)?,
            message_bytes: w.message_bytes,
            keys: w.keys()?,
            linger_ns: (w.linger_ms * 1e6) as u64,
            batch_bytes: w.batch_bytes,
            max_inflight: w.max_inflight,
            rate: match rate {
                Rate::Max => Rate::Max,
                Rate::Messages(r) => Rate::Messages(r / f64::from(producers_total)),
            },
            max_messages: (w.max_messages / u64::from(producers_total)).max(1),
            end_ns: window.to_ns,
            window,
            payload: Arc::new(records::payload(w.message_bytes)),
        });
        for i in 0..w.producers {
            match Producer::start(producers.len() as u32 + i, pplan.clone(), clock) {
                Ok(p) => producers.push(p),
                Err(e) => {
                    let e = stop_producers(producers, e);
                    return Err(stop_consumers(&controls, consumers, e));
                }
            }
        }
    }

    // Sample every second; close the window at its end (or when a catch-up read is done);
    // then wait for the producers' last answers and the consumers to read everything.
    let mut sampler = Sampler::new(broker, opts.progress, clock);
    let mut next_tick = 1_000_000_000u64;
    let mut window_start: Option<Sample> = None;
    let mut window_end: Option<Sample> = None;
    let mut ends_at_stop: Option<Vec<Vec<i64>>> = ends_at_start.clone();
    let mut drain_deadline: Option<u64> = None;
    loop {
        let now = clock.now_ns();
        if window_start.is_none() && now >= window.from_ns {
            window_start = Some(sampler.sample());
        }
        let caught_up = w.consumers == 0
            || ends_at_stop
                .as_ref()
                .is_some_and(|ends| topics.iter().zip(ends).all(|(t, e)| t.control.reached(e)));
        if window_end.is_none() && (now >= window.to_ns || (catch_up && caught_up)) {
            window_end = Some(sampler.sample());
        }
        let producers_done = producers.iter().all(Producer::is_finished);
        if window_end.is_some() && producers_done {
            if ends_at_stop.is_none() {
                ends_at_stop = Some(settled_end_offsets(&topics, &cluster)?);
                drain_deadline = Some(now + CONSUMER_DRAIN.as_nanos() as u64);
            }
            if caught_up || drain_deadline.is_some_and(|d| now >= d) || catch_up {
                break;
            }
        }
        if consumers.iter().any(Consumer::is_finished) {
            break; // a consumer failed; its error is reported below
        }
        let mut wake = next_tick;
        if window_start.is_none() {
            wake = wake.min(window.from_ns);
        }
        if window_end.is_none() {
            wake = wake.min(window.to_ns);
        }
        std::thread::sleep(Duration::from_nanos(
            wake.saturating_sub(now).clamp(100_000, 20_000_000),
        ));
        if clock.now_ns() >= next_tick {
            sampler.tick(&producers, &consumers);
            next_tick += 1_000_000_000;
        }
    }
    for c in &controls {
        c.stop.store(true, Ordering::Relaxed);
    }
    let producer_meters: Vec<Arc<Meter>> = producers.iter().map(|p| p.meter.clone()).collect();
    let consumer_meters: Vec<Arc<Meter>> = consumers.iter().map(|c| c.meter.clone()).collect();
    let mut errors = Vec::new();
    errors.extend(producers.into_iter().filter_map(|p| p.join().err()));
    errors.extend(consumers.into_iter().filter_map(|c| c.join().err()));
    if let Some(e) = errors.first() {
        return Err(format!("run failed: {e}"));
    }

    let window_start = window_start.unwrap_or_else(|| sampler.sample());
    let window_end = window_end.unwrap_or_else(|| sampler.sample());
    let measured_s = (window_end.at_s - window_start.at_s).max(1e-3);
    let (produced, publish_latency) = summarize(&producer_meters, measured_s);
    let (consumed, e2e_latency) = summarize(&consumer_meters, measured_s);
    let gib_in = (w.producers > 0)
        .then(|| produced.bytes as f64 / GIB)
        .filter(|g| *g > 0.0);
    let gib_out = (w.consumers > 0)
        .then(|| consumed.bytes as f64 / GIB)
        .filter(|g| *g > 0.0);
    let rss_max = sampler
        .timeline
        .iter()
        .filter_map(|p| p.broker_rss_mib)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let broker_use = match (window_start.broker, window_end.broker) {
        (Some(a), Some(b)) => Some(process_use(a, b, measured_s, gib_in, gib_out, rss_max)),
        _ => None,
    };
    let mut client_use = process_use(
        window_start.client,
        window_end.client,
        measured_s,
        gib_in,
        gib_out,
        None,
    );
    (
        client_use.rss_mib_start,
        client_use.rss_mib_end,
        client_use.rss_mib_max,
    ) = (None, None, None);
    Ok(RunResult {
        offered_messages_per_s: match rate {
            Rate::Max => None,
            Rate::Messages(r) => Some(r),
        },
        warmup_s: w.warmup_s,
        measured_s: round3(measured_s),
        produced: (w.producers > 0).then_some(produced),
        publish_latency,
        consumed: (w.consumers > 0).then_some(consumed),
        e2e_latency,
        broker: broker_use,
        client: client_use,
        timeline: sampler.timeline,
    })
}

const GIB: f64 = (1u64 << 30) as f64;
/// How long consumers may take to get their partitions.
const CONSUMER_SETUP: Duration = Duration::from_secs(90);

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn mib(bytes: u64) -> f64 {
    round3(bytes as f64 / (1u64 << 20) as f64)
}

fn process_use(
    a: ProcessSample,
    b: ProcessSample,
    wall_s: f64,
    gib_in: Option<f64>,
    gib_out: Option<f64>,
    rss_max: Option<f64>,
) -> ProcessUse {
    let cpu = (b.cpu_s - a.cpu_s).max(0.0);
    ProcessUse {
        cpu_s: round3(cpu),
        cpu_s_per_gib_in: gib_in.map(|g| round3(cpu / g)),
        cpu_s_per_gib_out: gib_out.map(|g| round3(cpu / g)),
        cpu_pct: (1000.0 * cpu / wall_s).round() / 10.0,
        rss_mib_start: Some(mib(a.rss_bytes)),
        rss_mib_end: Some(mib(b.rss_bytes)),
        rss_mib_max: Some(
            rss_max
                .unwrap_or(0.0)
                .max(mib(a.rss_bytes))
                .max(mib(b.rss_bytes)),
        ),
    }
}

/// The latest offset of every partition of `topic`, each asked of its leader.
fn end_offsets(router: &mut Router, topic: &str, partitions: i32) -> Result<Vec<i64>, String> {
    let all: Vec<i32> = (0..partitions).collect();
    let mut ends = vec![0; partitions as usize];
    for (p, o) in router.list_offsets(topic, &all, -1)? {
        if let Some(slot) = ends.get_mut(p as usize) {
            *slot = o;
        }
    }
    Ok(ends)
}

fn stop_consumers(
    controls: &[Arc<ConsumerControl>],
    consumers: Vec<Consumer>,
    error: String,
) -> String {
    for c in controls {
        c.stop.store(true, Ordering::Relaxed);
    }
    for c in consumers {
        let _ = c.join();
    }
    error
}

fn stop_producers(producers: Vec<Producer>, error: String) -> String {
    for p in producers {
        p.stop();
        let _ = p.join();
    }
    error
}

/// Sums the threads' window counters.
fn summarize(meters: &[Arc<Meter>], measured_s: f64) -> (Flow, Option<Latency>) {
    let mut h = histogram();
    let mut flow = Flow {
        messages: 0,
        bytes: 0,
        messages_per_s: 0.0,
        mb_per_s: 0.0,
        errors: 0,
        last_error: None,
    };
    for m in meters {
        m.with(|c| {
            let _ = h.add(&c.total);
            flow.messages += c.done_messages;
            flow.bytes += c.done_bytes;
            flow.errors += c.errors;
            if c.last_error.is_some() {
                flow.last_error = c.last_error.clone();
            }
        });
    }
    flow.messages_per_s = (flow.messages as f64 / measured_s).round();
    flow.mb_per_s = round3(flow.bytes as f64 / measured_s / 1e6);
    (flow, Latency::of(&h))
}

/// Broker and client CPU and memory at one moment.
#[derive(Clone, Copy)]
struct Sample {
    at_s: f64,
    broker: Option<ProcessSample>,
    client: ProcessSample,
}

fn take_sample(broker: Option<&BrokerProcess>, clock: Clock) -> Sample {
    Sample {
        at_s: clock.now_ns() as f64 / 1e9,
        broker: broker.and_then(BrokerProcess::sample),
        client: ProcessSample {
            cpu_s: sysinfo::own_cpu_s(),
            rss_bytes: 0,
        },
    }
}

/// Builds the timeline and prints the progress line.
struct Sampler {
    broker: Option<BrokerProcess>,
    progress: bool,
    clock: Clock,
    last: Sample,
    timeline: Vec<Point>,
}

impl Sampler {
    fn new(broker: Option<BrokerProcess>, progress: bool, clock: Clock) -> Sampler {
        let last = take_sample(broker.as_ref(), clock);
        Sampler {
            broker,
            progress,
            clock,
            last,
            timeline: Vec::new(),
        }
    }

    fn sample(&self) -> Sample {
        take_sample(self.broker.as_ref(), self.clock)
    }

    fn tick(&mut self, producers: &[Producer], consumers: &[Consumer]) {
        let now = self.sample();
        let last = std::mem::replace(&mut self.last, now);
        let dt = (now.at_s - last.at_s).max(1e-3);
        let (mut ph, mut pm, mut pb) = (histogram(), 0u64, 0u64);
        for p in producers {
            let (h, m, b) = p.meter.take_interval();
            let _ = ph.add(&h);
            pm += m;
            pb += b;
        }
        let (mut ch, mut cb) = (histogram(), 0u64);
        for c in consumers {
            let (h, _, b) = c.meter.take_interval();
            let _ = ch.add(&h);
            cb += b;
        }
        let q = |h: &Histogram<u64>, q: f64| {
            (!h.is_empty()).then(|| (h.value_at_quantile(q) as f64 / 100.0).round() / 10.0)
        };
        let point = Point {
            t_s: round3(now.at_s),
            produce_messages_per_s: (pm as f64 / dt).round(),
            produce_mb_per_s: round3(pb as f64 / dt / 1e6),
            publish_p50_us: q(&ph, 0.5),
            publish_p99_us: q(&ph, 0.99),
            publish_p999_us: q(&ph, 0.999),
            publish_max_us: q(&ph, 1.0),
            consume_mb_per_s: round3(cb as f64 / dt / 1e6),
            e2e_p50_us: q(&ch, 0.5),
            e2e_p99_us: q(&ch, 0.99),
            broker_cpu_pct: match (last.broker, now.broker) {
                (Some(a), Some(b)) => Some(((b.cpu_s - a.cpu_s) / dt * 1000.0).round() / 10.0),
                _ => None,
            },
            broker_rss_mib: now.broker.map(|b| mib(b.rss_bytes)),
            client_cpu_pct: ((now.client.cpu_s - last.client.cpu_s) / dt * 1000.0).round() / 10.0,
        };
        if self.progress {
            eprintln!(
                "{}",
                progress_line(&point, !producers.is_empty(), !consumers.is_empty())
            );
        }
        self.timeline.push(point);
    }
}

fn ms(us: Option<f64>) -> String {
    us.map_or_else(|| "-".to_string(), |u| format!("{:.2}", u / 1000.0))
}

fn progress_line(p: &Point, produce: bool, consume: bool) -> String {
    let mut line = format!("{:>6.1}s", p.t_s);
    if produce {
        line += &format!(
            "  produce {:>9.0} msg/s {:>8.1} MB/s  publish ms p50 {} p99 {} p99.9 {} max {}",
            p.produce_messages_per_s,
            p.produce_mb_per_s,
            ms(p.publish_p50_us),
            ms(p.publish_p99_us),
            ms(p.publish_p999_us),
            ms(p.publish_max_us)
        );
    }
    if consume {
        line += &format!("  consume {:>8.1} MB/s", p.consume_mb_per_s);
        if produce {
            line += &format!("  e2e ms p50 {} p99 {}", ms(p.e2e_p50_us), ms(p.e2e_p99_us));
        }
    }
    if let Some(cpu) = p.broker_cpu_pct {
        line += &format!(
            "  broker cpu {cpu:.0}% rss {:.0} MiB",
            p.broker_rss_mib.unwrap_or(0.0)
        );
    }
    line + &format!("  client cpu {:.0}%", p.client_cpu_pct)
}
