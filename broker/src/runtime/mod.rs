//! The runtime bootstrap: settings, the data directory, the executor pool (one pinned shard per
//! core), and what each shard runs beside request handling (acceptor, admin server, maintenance,
//! the watchdog). Everything above the shards starts here; nothing below imports it.

pub(crate) mod error;
mod maintenance;
mod shard_main;
pub(crate) mod watchdog;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{CpuSet, LocalExecutorPoolBuilder, PoolPlacement};

use crate::config::ServeArgs;
use crate::config::{self, BrokerConfig, ConfigSources};
use crate::mesh::MESH_CHANNEL_CAPACITY;
use crate::metadata::table::ShardTable;
use crate::metadata::{self, ClusterMeta};
use crate::{admin, data_dir, group};
use error::BrokerError;
pub(crate) use shard_main::current_shard;
use shard_main::{QuorumStart, ShardContext};

/// How often a shard checks the shutdown flag and the flush policy of its logs.
///
/// The tick is also the shard's heartbeat for the [`watchdog`]. Shorter ticks cost idle CPU
/// (1 ms ticks cost about 5% of a core per shard here).
pub const TICK_MS: u64 = 20;

/// Runs a broker with `args` until SIGINT or SIGTERM.
pub(crate) fn run(args: ServeArgs) -> Result<(), BrokerError> {
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
    install_test_disk_hooks(&config).map_err(BrokerError::DiskHooks)?;

    data_dir::create_dir_durable(&config.data_dir).map_err(|source| BrokerError::Io {
        action: "creating",
        path: config.data_dir.clone(),
        source,
    })?;
    let _lock = data_dir::lock(&config.data_dir)?;
    // The offsets log keeps the partition count it was created with.
    config.groups.offsets_partitions =
        group::store::load_partition_count(&config.data_dir, config.groups.offsets_partitions)
            .map_err(|source| BrokerError::Io {
                action: "reading the consumer-group log layout in",
                path: config.data_dir.clone(),
                source,
            })?;
    let config = Arc::new(config);
    let snapshot = metadata::store::load(&config.data_dir)?;
    let producer_id_block_end = metadata::producer_ids::load(&config.data_dir)?;
    let table = ShardTable::new(config.cores);
    let meta = ClusterMeta::from_snapshot(&snapshot, &table, &config.topic_defaults);
    let deleting = metadata::store::load_deleting(&config.data_dir)?;
    metadata::dirs::check_partition_dirs(&config.data_dir, &meta, &deleting)?;
    probe_port(&config)?;
    // A data directory belongs to a single node or to a cluster node (which has a controller
    // log); its topics cannot be taken from one to the other.
    let cluster_dir = crate::quorum::log_path(&config.data_dir).exists();
    let quorum = match &config.cluster {
        Some(_) if !cluster_dir && !snapshot.topics.is_empty() => {
            return Err(BrokerError::SingleNodeTopics {
                path: config.data_dir.clone(),
                topics: snapshot.topics.len(),
            })
        }
        None if cluster_dir => {
            return Err(BrokerError::ClusterDataDir {
                path: config.data_dir.clone(),
            })
        }
        Some(settings) => {
            let setup = crate::quorum::QuorumSetup::from_settings(settings, &config.data_dir)
                .map_err(|source| BrokerError::Io {
                    action: "resolving the controller quorum voters for",
                    path: config.data_dir.clone(),
                    source,
                })?;
            tracing::info!(
                "cluster mode: node {} of voters {:?}; controller listener {}",
                settings.node_id,
                settings.voters.iter().map(|v| v.id).collect::<Vec<_>>(),
                settings.controller_listen
            );
            let listener =
                crate::quorum::bind(setup.listen).map_err(|source| BrokerError::Listen {
                    addr: setup.listen,
                    what: " (the controller listener)",
                    source,
                })?;
            Some(QuorumStart {
                view: Arc::new(crate::quorum::QuorumView::default()),
                setup,
                listener: Arc::new(listener),
            })
        }
        None => None,
    };
    let admin_listener = match config.admin_listen {
        Some(addr) => Some(Arc::new(admin::bind(addr).map_err(|source| {
            BrokerError::Listen {
                addr,
                what: " (admin.listeners)",
                source,
            }
        })?)),
        None => None,
    };

    let shutdown = Arc::new(AtomicBool::new(false));
    // A cluster node stops in two steps (controlled shutdown): the signal asks the controller
    // to move this node's leaderships away, and the shards stop once that is done.
    let controlled = match (&config.cluster, &quorum) {
        (Some(settings), Some(q)) if settings.controlled_shutdown => Some((
            q.view.clone(),
            settings.node_id,
            settings.controlled_shutdown_timeout_ms,
        )),
        _ => None,
    };
    let signalled = match &controlled {
        Some(_) => Arc::new(AtomicBool::new(false)),
        None => shutdown.clone(),
    };
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, signalled.clone()).map_err(BrokerError::Signals)?;
    }
    if let Some((view, node_id, timeout_ms)) = controlled {
        let stop = crate::quorum::ControlledShutdown {
            view,
            node_id,
            timeout: Duration::from_millis(timeout_ms),
        };
        let (signalled, shutdown) = (signalled.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name("strom-stop".into())
            .spawn(move || stop.run(&signalled, &shutdown))
            .map_err(BrokerError::Start)?;
    }
    let watchdog = watchdog::Watchdog::new(config.cores, TICK_MS);
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
        quorum,
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
        .on_all_shards(move || shard_main::run(ctx))
        .map_err(|e| BrokerError::Start(e.into()))?;
    let mut failed = 0;
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
                failed += 1;
            }
            Err(e) => {
                tracing::error!("shard panicked: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(BrokerError::ShardsFailed { failed });
    }
    tracing::info!("clean shutdown complete");
    Ok(())
}

/// Installs the disk hooks `test.fault.sync.*` asks for on the calling thread (each thread that
/// does storage I/O calls this).
pub(crate) fn install_test_disk_hooks(config: &BrokerConfig) -> std::io::Result<()> {
    let hooks = config.faults.disk_hooks()?;
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
        let shard = current_shard().map_or_else(String::new, |s| format!("shard {s} ({name})"));
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
fn probe_port(config: &BrokerConfig) -> Result<(), BrokerError> {
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
            Err(source) => {
                return Err(BrokerError::Listen {
                    addr: config.listen,
                    what: "",
                    source,
                })
            }
        }
    }
}
