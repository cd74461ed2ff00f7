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
mod ids;
mod kafka;
mod limits;
mod mesh;
mod metadata;
mod metrics;
mod quorum;
mod runtime;
mod shard;

pub use config::{ConfigError, ServeArgs};
pub use data_dir::LockError;
pub use group::store::ReplayError;
pub use metadata::dirs::DataDirError;
pub use metadata::store::MetaStoreError;
pub use runtime::error::{BrokerError, ShardError};

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
