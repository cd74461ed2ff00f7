//! The broker's errors at startup and in a shard's life. Each layer below has its own
//! `thiserror` enums (`LockError`, `DataDirError`, `MetaStoreError`, `ReplayError`, ...), which
//! these wrap; errors that become a Kafka error code in a response stay beside the code that
//! answers (`ControllerError`, `StoreError`).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use strom_storage::StorageError;

use crate::config::ConfigError;
use crate::data_dir::LockError;
use crate::metadata::dirs::DataDirError;
use crate::metadata::store::MetaStoreError;

/// Why a broker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The settings (file, environment, flags) are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file or directory of the data directory could not be created, opened or read.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("creating", "opening", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The data directory could not be locked (another broker holds it).
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The persisted metadata (topics, producer ids) could not be read.
    #[error(transparent)]
    Metadata(#[from] MetaStoreError),
    /// The data directory holds partitions the metadata does not account for, or its check
    /// failed.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}{what}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Which listener, for the message (empty for the Kafka listener).
        what: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// Cluster mode was asked for on a data directory that holds single-node topics, which
    /// the cluster cannot serve yet.
    #[error(
        "{} holds {topics} topic(s) of a single node; cluster mode (controller.quorum.voters) \
         cannot take them over yet: start it on an empty data directory, or run without \
         controller.quorum.voters", path.display()
    )]
    SingleNodeTopics {
        /// The data directory.
        path: PathBuf,
        /// How many topics it holds.
        topics: usize,
    },
    /// A single node was started on the data directory of a cluster node.
    #[error(
        "{} is the data directory of a cluster node (it has a controller log); start it with \
         its controller.quorum.voters, or use another directory for a single node",
        path.display()
    )]
    ClusterDataDir {
        /// The data directory.
        path: PathBuf,
    },
    /// The signal handlers could not be installed.
    #[error("installing signal handler: {0}")]
    Signals(#[source] io::Error),
    /// The test-only disk hooks (`test.fault.sync.*`) could not be set up.
    #[error("opening the sync journal: {0}")]
    DiskHooks(#[source] io::Error),
    /// The executor pool could not be started.
    #[error("starting shards: {0}")]
    Start(#[source] io::Error),
    /// A shard stopped with an error (the log names it and why).
    #[error("{failed} shard(s) failed; see the log above")]
    ShardsFailed {
        /// How many shards failed or panicked.
        failed: usize,
    },
}

/// Why a shard stopped before a clean shutdown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// The mesh between the shards could not be joined.
    #[error("joining the shard mesh failed")]
    MeshJoin,
    /// A partition log could not be opened at recovery.
    #[error("opening {topic}-{partition}: {source}")]
    OpenLog {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Why.
        source: StorageError,
    },
    /// The consumer groups could not be read back from the offsets log.
    #[error("loading consumer groups: {0}")]
    LoadGroups(#[source] crate::group::store::ReplayError),
    /// The Kafka listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// The admin listener could not be served.
    #[error("admin listener: {0}")]
    Admin(#[source] io::Error),
    /// The controller quorum could not start (its listener or its log).
    #[error("controller quorum: {0}")]
    Quorum(#[source] crate::quorum::QuorumError),
    /// A task queue or task could not be created.
    #[error("starting the {what} task: {source}")]
    Task {
        /// Which task.
        what: &'static str,
        /// glommio's error.
        source: io::Error,
    },
    /// The test-only disk hooks could not be set up.
    #[error("opening the sync journal: {0}")]
    DiskHooks(#[source] io::Error),
}
