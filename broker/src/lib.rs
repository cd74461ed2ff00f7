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
mod error;
mod group;
mod ids;
mod kafka;
mod limits;
mod mesh;
mod metadata;
mod metrics;
mod runtime;
mod shard;

use std::path::PathBuf;

pub use config::ConfigError;
pub use error::{BrokerError, DataDirError, ShardError};

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
    pub use crate::kafka::codec::frame_response;
    pub use crate::kafka::handlers::fetch::encode::{encode, FetchOut, PartitionOut, TopicOut};
    pub use crate::mesh::{spawn_tasks, Handler, Mesh, MeshCounts, Msg, MESH_CHANNEL_CAPACITY};
    pub use crate::metrics::stages::OwnerTimes;
    pub use crate::shard::ops::FetchResult;
}

/// Runs a broker with `args` until SIGINT or SIGTERM, then shuts it down cleanly.
pub fn serve(args: ServeArgs) -> Result<(), BrokerError> {
    runtime::run(args)
}
