//! The Strom broker: a Kafka-compatible event-streaming broker, shard-per-core on io_uring.
//!
//! The public surface is small: [`serve`] runs a broker with the settings of [`ServeArgs`]
//! until SIGINT or SIGTERM. The `strom` binary (package `strom`) parses its command line,
//! calls [`serve`], and dispatches the client tools to `strom-cli`.

#![warn(missing_docs)]

mod admin;
mod clock;
mod config;
mod data_dir;
mod group;
mod kafka;
mod limits;
mod metadata;
mod metrics;
mod shard;
mod topic_config;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement};

pub use config::ConfigError;
use config::{BrokerConfig, ConfigSources};
use metadata::ClusterMeta;
use shard::mesh::MESH_CHANNEL_CAPACITY;
use shard::table::ShardTable;
use shard::ShardContext;

/// What `strom serve` (and `strom` without a subcommand) takes on its command line.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// TOML file of settings with Kafka's names, e.g. `"num.partitions" = 3`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Number of shards (pinned cores); default: all online cores.
    #[arg(long, value_name = "N")]
    pub cores: Option<usize>,
    /// Data directory (Kafka's `log.dirs`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Listen address (Kafka's `listeners`), e.g. 127.0.0.1:9092.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Address given to clients (Kafka's `advertised.listeners`).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Any setting by its Kafka name; repeatable.
    #[arg(short = 'o', long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Internals that the microbenchmarks in `perf/` measure directly, so that they time the real
/// code rather than a copy. Not a stable API.
#[doc(hidden)]
pub mod bench_api {
    pub use crate::kafka::handlers::fetch::encode::{encode, FetchOut, PartitionOut, TopicOut};
    pub use crate::shard::ops::FetchResult;
}

/// Why a broker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The settings (file, environment, flags) are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Startup failed (data directory, port, metadata) or a shard failed.
    #[error("{0}")]
    Run(String),
}

impl From<String> for BrokerError {
    fn from(msg: String) -> BrokerError {
        BrokerError::Run(msg)
    }
}

/// Runs a broker with `args` until SIGINT or SIGTERM, then shuts it down cleanly.
pub fn serve(args: ServeArgs) -> Result<(), BrokerError> {
    run(args)
}

fn run(args: ServeArgs) -> Result<(), BrokerError> {
    let mut overrides = Vec::new();
    if let Some(d) = &args.data_dir {
        overrides.push(format!("log.dirs={}", d.display()));
    }
    if let Some(l) = &args.listen {
        overrides.push(format!("listeners={l}"));
    }
    if let Some(a) = &args.advertise {
        overrides.push(format!("advertised.listeners={a}"));
    }
    overrides.extend(args.set.iter().cloned());
    let config = BrokerConfig::load(ConfigSources {
        file: args.config.clone(),
        env: std::env::vars().collect(),
        overrides,
        cores: args.cores,
    })?;
    init_logging(&config.log);
    install_panic_hook();
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let mut config = config;
    // Test-only disk hooks on this thread, for the files written before the shards start.
    install_test_disk_hooks(&config)?;

    data_dir::create_dir_durable(&config.data_dir)
        .map_err(|e| format!("creating {}: {e}", config.data_dir.display()))?;
    let _lock = data_dir::lock(&config.data_dir)?;
    // The offsets log keeps the partition count it was created with.
    config.groups.offsets_partitions =
        group::store::load_partition_count(&config.data_dir, config.groups.offsets_partitions)
            .map_err(|e| format!("reading the consumer-group log layout: {e}"))?;
    let config = Arc::new(config);
    let snapshot = metadata::store::load(&config.data_dir).map_err(|e| e.to_string())?;
    let producer_id_block_end =
        metadata::producer_ids::load(&config.data_dir).map_err(|e| e.to_string())?;
    let table = ShardTable::new(config.cores);
    let meta = ClusterMeta::from_snapshot(&snapshot, &table, &config.topic_defaults);
    let deleting = metadata::store::load_deleting(&config.data_dir).map_err(|e| e.to_string())?;
    data_dir::check_partition_dirs(&config.data_dir, &meta, &deleting)?;
    probe_port(&config)?;
    let admin_listener = match config.admin_listen {
        Some(addr) => Some(Arc::new(admin::bind(addr)?)),
        None => None,
    };

    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, shutdown.clone())
            .map_err(|e| format!("installing signal handler: {e}"))?;
    }
    let watchdog = shard::watchdog::Watchdog::new(config.cores, shard::TICK_MS);
    let watchdog_stop = Arc::new(AtomicBool::new(false));
    let watchdog_thread = watchdog.spawn(shutdown.clone(), watchdog_stop.clone());
    let ctx = ShardContext {
        config: config.clone(),
        meta: Arc::new(ArcSwap::from_pointee(meta)),
        mesh: MeshBuilder::full(config.cores, MESH_CHANNEL_CAPACITY),
        shutdown,
        watchdog: watchdog.clone(),
        producer_id_block_end,
        admin_listener,
        recovered_shards: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        started: std::time::Instant::now(),
        connection_limiter: strom_net::ConnectionLimiter::new(
            config.connections_max,
            config.connections_per_ip_max,
        ),
    };
    tracing::info!(
        "strom {} starting: {} shard(s), data in {}, {} topic(s)",
        env!("CARGO_PKG_VERSION"),
        config.cores,
        config.data_dir.display(),
        snapshot.topics.len()
    );
    let placement = match CpuSet::online() {
        Ok(cpus) if cpus.len() >= config.cores => {
            PoolPlacement::MaxSpread(config.cores, Some(cpus))
        }
        _ => PoolPlacement::Unbound(config.cores),
    };
    let handles = LocalExecutorPoolBuilder::new(placement)
        .name("strom-shard")
        // Long fetches and scans yield at least this often, so one fast consumer cannot hold a
        // core for glommio's default 100 ms.
        .preempt_timer(Duration::from_millis(5))
        .on_all_shards(move || shard::run(ctx))
        .map_err(|e| format!("starting shards: {e}"))?;
    let mut failed = false;
    let results = handles.join_all();
    watchdog_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watchdog_thread.join();
    if watchdog.stalls() > 0 {
        tracing::info!(
            "the watchdog woke stalled shards {} time(s)",
            watchdog.stalls()
        );
    }
    for r in results {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!("shard failed: {e}");
                failed = true;
            }
            Err(e) => {
                tracing::error!("shard panicked: {e}");
                failed = true;
            }
        }
    }
    if failed {
        return Err(BrokerError::Run("a shard failed; see the log above".into()));
    }
    tracing::info!("clean shutdown complete");
    Ok(())
}

/// Installs the disk hooks `test.fault.sync.*` asks for on the calling thread (each thread that
/// does storage I/O calls this).
pub(crate) fn install_test_disk_hooks(config: &config::BrokerConfig) -> Result<(), String> {
    let hooks = config
        .faults
        .disk_hooks()
        .map_err(|e| format!("opening the sync journal: {e}"))?;
    if let Some(hooks) = hooks {
        strom_storage::install_disk_hooks(Some(std::rc::Rc::new(hooks)));
    }
    Ok(())
}

/// A panic anywhere in the broker ends the whole process. Every shard owns partitions and
/// consumer groups no other shard can serve, so a broker that lost one shard would answer some
/// requests and hang or fail others while reporting itself ready; better to stop at once (the
/// log says which shard and why) and let the supervisor restart it, with recovery on the way.
fn install_panic_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed thread");
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let location = info
            .location()
            .map_or_else(String::new, |l| format!(" at {l}"));
        let shard =
            shard::current_shard().map_or_else(String::new, |s| format!("shard {s} ({name})"));
        let who = if shard.is_empty() {
            name.to_string()
        } else {
            shard
        };
        tracing::error!("{who} panicked{location}: {message}; aborting the process");
        default_hook(info);
        std::process::abort();
    }));
}

/// Installs the log subscriber: `RUST_LOG` if set, else `log.level`; text or JSON lines on stderr.
fn init_logging(log: &config::LogSettings) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            EnvFilter::try_new(&v).unwrap_or_else(|_| EnvFilter::new(&log.level))
        }
        _ => EnvFilter::new(&log.level),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match log.format {
        config::LogFormat::Text => builder.init(),
        config::LogFormat::Json => builder.json().init(),
    }
}

/// Shards bind with SO_REUSEPORT, which would silently share a port with another broker; this
/// check makes "address in use" a clear startup error instead.
///
/// A broker killed a moment ago can still hold its listening socket: io_uring tears a dead
/// process's rings down asynchronously, and a pending accept keeps the socket open until then.
/// So "in use" is retried for up to `PORT_BUSY_WAIT_MS` before it becomes an error.
fn probe_port(config: &BrokerConfig) -> Result<(), String> {
    const PORT_BUSY_WAIT_MS: u64 = 5_000;
    const RETRY_MS: u64 = 100;
    let mut waited = 0;
    loop {
        match strom_net::listener::check_free(config.listen) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && waited < PORT_BUSY_WAIT_MS => {
                std::thread::sleep(Duration::from_millis(RETRY_MS));
                waited += RETRY_MS;
            }
            Err(e) => return Err(format!("cannot listen on {}: {e}", config.listen)),
        }
    }
}
