//! `strom-bench`: a Kafka-wire load generator. It speaks the protocol directly (no client
//! library in between, so it is not the bottleneck), and works against any Kafka-compatible
//! broker or cluster: `--brokers` is one address or a bootstrap list, Metadata names each
//! partition's leader, and every partition's requests go to its leader.
//!
//! - `run`: a workload of producers and consumers (flags or a TOML file) with fixed-rate or
//!   maximal load, publish and end-to-end latency, a JSON report and an SVG chart;
//!   `run --find-max` sweeps the rate up to a latency target.
//! - `limits`: the machine's ceilings (disk, fdatasync, loopback sendfile) to relate results to.
//! - `compare A.json B.json`: two reports side by side.
//! - `group`: consumer-group join and rebalance latency.

mod chart;
mod group;
mod limits;
mod report;
mod run;
mod sysinfo;
use strom_client::cluster::parse_bootstrap;
use strom_client::conn as wire;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use run::findmax::{self, FindMaxArgs};
use run::workload::Workload;
use run::{BrokerPid, RunOptions};

#[derive(Parser, Debug)]
#[command(name = "strom-bench", about = "Kafka-wire load generator")]
struct Cli {
    /// Broker address, or a comma-separated bootstrap list of a cluster's brokers
    /// (host:port,host:port,...). Metadata gives every partition's leader; each partition's
    /// Produce, Fetch and ListOffsets requests go to its leader.
    #[arg(short, long, default_value = "127.0.0.1:9092", global = true)]
    brokers: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a workload: producers and/or consumers for a warm-up and a measured duration.
    Run(Box<RunArgs>),
    /// Measure this machine's ceilings: O_DIRECT write bandwidth, fdatasync latency, loopback
    /// TCP sendfile bandwidth (for `run --limits`).
    Limits(limits::LimitsArgs),
    /// Print the figures two JSON reports have in common, with their ratio B/A.
    Compare { a: PathBuf, b: PathBuf },
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

/// Workload flags override the workload file, which overrides the defaults.
#[derive(Args, Debug)]
struct RunArgs {
    /// A TOML workload file (keys as the flags, with underscores: message_bytes = 1024).
    #[arg(long)]
    workload: Option<PathBuf>,
    /// The topic, or with --topics N > 1 the prefix of <topic>-0 .. <topic>-(N-1).
    #[arg(long)]
    topic: Option<String>,
    #[arg(long)]
    topics: Option<u32>,
    /// Partitions per topic.
    #[arg(long)]
    partitions: Option<i32>,
    /// Producers per topic.
    #[arg(long)]
    producers: Option<u32>,
    /// Consumers per topic.
    #[arg(long)]
    consumers: Option<u32>,
    /// Consumers join this group (classic protocol) instead of splitting partitions statically.
    #[arg(long)]
    group: Option<String>,
    /// latest or earliest.
    #[arg(long)]
    consume_from: Option<String>,
    #[arg(long)]
    message_bytes: Option<usize>,
    /// none, round-robin:N or random:N.
    #[arg(long)]
    keys: Option<String>,
    /// 0, 1 or -1 (all).
    #[arg(long, allow_hyphen_values = true)]
    acks: Option<i16>,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long)]
    compression: Option<String>,
    #[arg(long)]
    linger_ms: Option<f64>,
    #[arg(long)]
    batch_bytes: Option<usize>,
    #[arg(long)]
    max_inflight: Option<usize>,
    /// max, messages per second (50000) or bytes per second (100MB/s, 64MiB/s), over all producers.
    #[arg(long)]
    rate: Option<String>,
    #[arg(long)]
    warmup_s: Option<f64>,
    #[arg(long)]
    duration_s: Option<f64>,
    #[arg(long)]
    max_messages: Option<u64>,
    #[arg(long)]
    fetch_max_wait_ms: Option<i32>,
    #[arg(long)]
    fetch_partition_max_bytes: Option<i32>,
    #[arg(long)]
    fetch_max_bytes: Option<i32>,
    /// A topic config sent in CreateTopics when the run creates its topic(s), e.g.
    /// cleanup.policy=compact (repeatable; adds to or overrides the workload file's
    /// topic_configs). An existing topic keeps its own configs.
    #[arg(long = "topic-config", value_name = "KEY=VALUE")]
    topic_config: Vec<String>,

    /// Sweep the producer rate up to the latency target and report the sustainable maximum.
    #[arg(long)]
    find_max: bool,
    /// find-max: publish p99 target in milliseconds.
    #[arg(long, default_value_t = 5.0)]
    target_p99_ms: f64,
    /// find-max: measured seconds per step (each step also has --warmup-s).
    #[arg(long, default_value_t = 10.0)]
    step_s: f64,
    /// find-max: offered rates after the probe, as comma-separated fractions of its throughput.
    #[arg(long, default_value = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1")]
    fractions: String,

    /// Broker process for CPU and memory figures (default: the local process listening on the
    /// address of --brokers, or of its first entry for a list, if any).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// A `strom-bench limits --json-out` file: the report then states throughput as a share of
    /// the machine's ceilings.
    #[arg(long)]
    limits: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Write the SVG chart here.
    #[arg(long)]
    svg_out: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
}

impl RunArgs {
    fn workload(&self) -> Result<Workload, String> {
        let mut w = match &self.workload {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                Workload::from_toml(&text)?
            }
            None => Workload::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { w.$field = v.clone(); } )* };
        }
        set!(
            topic,
            topics,
            partitions,
            producers,
            consumers,
            consume_from,
            message_bytes,
            keys,
            acks,
            compression,
            linger_ms,
            batch_bytes,
            max_inflight,
            rate,
            warmup_s,
            duration_s,
            max_messages,
            fetch_max_wait_ms,
            fetch_partition_max_bytes,
            fetch_max_bytes
        );
        if self.group.is_some() {
            w.group = self.group.clone();
        }
        for kv in &self.topic_config {
            let (k, v) = run::workload::parse_topic_config(kv)
                .map_err(|e| format!("--topic-config: {e}"))?;
            w.topic_configs.insert(k, v);
        }
        w.validate()?;
        Ok(w)
    }
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(&cli.brokers, &args),
        Command::Limits(args) => limits::run(&args),
        Command::Compare { a, b } => report::compare(&a.to_string_lossy(), &b.to_string_lossy()),
        Command::Group {
            topic,
            partitions,
            rounds,
            heartbeat_ms,
            timeout_s,
            json,
        } => group::run(&group::GroupArgs {
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

fn run(brokers: &str, args: &RunArgs) -> Result<(), String> {
    let w = args.workload()?;
    let bootstrap = parse_bootstrap(brokers).map_err(|e| format!("--brokers: {e}"))?;
    let broker_pid = match args.broker_pid {
        Some(pid) => BrokerPid::Pid(pid),
        None => BrokerPid::Find,
    };
    let pid = match &broker_pid {
        BrokerPid::Pid(p) => Some(*p),
        _ => sysinfo::BrokerProcess::find(&bootstrap[0]).map(|p| p.pid),
    };
    let opts = RunOptions {
        brokers: brokers.to_string(),
        bootstrap,
        broker_pid,
        progress: !args.quiet,
    };
    let mut report = report::Report::new(brokers, pid, &w);
    if let Some(path) = &args.limits {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        report.limits = Some(
            serde_json::from_str(&text)
                .map_err(|e| format!("{} is not JSON: {e}", path.display()))?,
        );
    }
    if args.find_max {
        let fractions = args
            .fractions
            .split(',')
            .map(|f| {
                f.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|f| *f > 0.0 && *f <= 10.0)
            })
            .collect::<Option<Vec<f64>>>()
            .ok_or_else(|| {
                format!(
                    "--fractions {:?}: comma-separated numbers in (0, 10]",
                    args.fractions
                )
            })?;
        if w.producers == 0 {
            return Err("--find-max needs at least one producer".into());
        }
        let fm = FindMaxArgs {
            target_p99_ms: args.target_p99_ms,
            step_s: args.step_s,
            warmup_s: w.warmup_s,
            fractions,
        };
        report.find_max = Some(findmax::find_max(&w, &fm, &opts)?);
    } else {
        report.result = Some(run::run_once(&w, &opts)?);
    }
    report.relate_to_limits();
    report.print_table();
    if let Some(path) = &args.json_out {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("report: {}", path.display());
    }
    if let Some(path) = &args.svg_out {
        std::fs::write(path, report.svg())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("chart: {}", path.display());
    }
    Ok(())
}
