//! Broker configuration: defaults, then a TOML file, then `STROM_*` environment variables,
//! then command-line flags. Keys are Kafka's names (`num.partitions`, `log.dirs`, ...).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use strom_storage::CleanerStep;

mod args;
pub mod cluster;
mod listeners;
pub mod topic;

pub use args::ServeArgs;
pub use cluster::ClusterSettings;

use topic::TopicDefaults;

/// Invalid broker settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML file could not be read or parsed.
    #[error("config file {path}: {msg}")]
    File {
        /// The file given with `--config`.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A setting has a value it cannot take.
    #[error("setting `{key}` = `{value}`: {msg}")]
    Invalid {
        /// The setting's Kafka name.
        key: String,
        /// The value given.
        value: String,
        /// Why it is refused.
        msg: String,
    },
    /// A `-o` / `--set` argument without `=`.
    #[error("`{0}` is not of the form key=value")]
    NotKeyValue(String),
}

/// Every broker setting Strom understands, with its default. `STROM_` + the key upper-cased
/// with dots as underscores is its environment variable.
const BROKER_KEYS: &[(&str, &str)] = &[
    // `NAME://host:port,...`; an entry without `NAME://` is the PLAINTEXT listener. Clients use
    // the listener named PLAINTEXT, or else the first that is neither the controller's nor the
    // replication listener. The default serves one node on loopback.
    ("listeners", "PLAINTEXT://127.0.0.1:9092"),
    // Same syntax: the endpoint given to clients and peers for each listener; a listener not
    // listed is advertised at its listen address. Empty by default: advertise what is listened on.
    ("advertised.listeners", ""),
    // Listener name -> security protocol, as in Kafka. Only PLAINTEXT is supported, so any other
    // protocol is refused rather than silently served as plaintext. The default covers the
    // default names of the client, controller and replication listeners.
    (
        "listener.security.protocol.map",
        "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,REPLICATION:PLAINTEXT",
    ),
    // The listener that serves the controller's Raft traffic (the first name if several);
    // Kafka's usual name.
    ("controller.listener.names", "CONTROLLER"),
    // The listener replication uses (Kafka's name; Kafka's default is the client listener, but
    // here replication has its own ports). Shard i of the node listens on its port + i: a
    // partition's replicas use the same shard on every node, so shard i of each node talks only
    // to shard i of its peers, each on its own port.
    ("inter.broker.listener.name", "REPLICATION"),
    // The controller quorum, `id@host:port,...` (Kafka's static voter syntax; host:port is the
    // voter's controller listener). Every node of a cluster is a voter. Empty: single-node mode,
    // where none of the cluster settings is used.
    ("controller.quorum.voters", ""),
    // Kafka 4's dynamic quorum membership; accepted as a key, but a non-empty value is refused
    // (only static membership through `controller.quorum.voters` is supported).
    ("controller.quorum.bootstrap.servers", ""),
    // Rack (or zone) of this node, for rack-aware replica placement. Empty: none.
    ("broker.rack", ""),
    ("log.dirs", "./strom-data"),
    ("node.id", "0"),
    ("broker.id", ""),
    ("num.partitions", "1"),
    // Replicas of a topic created without a factor. 1 as in Kafka, so a topic can be created on
    // any cluster; at most the number of voters.
    ("default.replication.factor", "1"),
    // Replicas of the consumer-offsets log, as in Kafka. In a cluster the factor used is
    // min(this, number of voters), so a smaller cluster still starts; single-node mode ignores it.
    ("offsets.topic.replication.factor", "3"),
    // A follower that has not caught up with the leader for this long leaves the ISR. Kafka's
    // default is 30000; Strom's is shorter because a dead follower stalls every acks=all produce
    // to its partitions until it leaves the ISR.
    ("replica.lag.time.max.ms", "10000"),
    // Longest wait of a follower's fetch for new records (Kafka's default); must be less than
    // `replica.lag.time.max.ms`.
    ("replica.fetch.wait.max.ms", "500"),
    // Record bytes a follower asks for per partition and fetch (Kafka's default); the first batch
    // is returned whole even when larger.
    ("replica.fetch.max.bytes", "1048576"),
    // How often a node heartbeats to the controller. Kafka's default is 2000; Strom's is shorter
    // so that a dead node is fenced, and its partitions get new leaders, within a second.
    ("broker.heartbeat.interval.ms", "100"),
    // A node without a heartbeat for this long is fenced (Kafka: 9000). Ten heartbeats, so a few
    // late ones do not fence a live node; must be greater than the heartbeat interval.
    ("broker.session.timeout.ms", "1000"),
    // The controller gives each partition back to its preferred leader (first replica) once
    // that replica is live and in sync again, after a restart or failover. Kafka checks every
    // 300 s; Strom every 5 s, so that a rolling restart ends with leadership spread as before.
    ("auto.leader.rebalance.enable", "true"),
    ("leader.imbalance.check.interval.seconds", "5"),
    // A stop (SIGTERM, SIGINT) of a cluster node first has its leaderships moved to other
    // in-sync replicas and waits for that, at most `controlled.shutdown.timeout.ms`.
    ("controlled.shutdown.enable", "true"),
    ("controlled.shutdown.timeout.ms", "10000"),
    // Electing a leader outside the ISR can lose acknowledged records: only false is accepted,
    // here and as a topic config.
    ("unclean.leader.election.enable", "false"),
    ("auto.create.topics.enable", "true"),
    ("socket.request.max.bytes", "104857600"),
    ("message.max.bytes", "1048588"),
    ("log.segment.bytes", "1073741824"),
    ("log.roll.ms", "604800000"),
    ("log.index.interval.bytes", "4096"),
    ("log.flush.interval.messages", "9223372036854775807"),
    ("log.flush.interval.ms", "9223372036854775807"),
    ("log.flush.on.ack", "true"),
    // Kafka's recovery-point checkpoint interval: how often each log makes its appended data
    // durable and records it, bounding what an unclean restart must validate.
    ("log.flush.offset.checkpoint.interval.ms", "60000"),
    // As in Kafka, `log.retention.ms` wins, then `log.retention.minutes`, then `log.retention.hours`.
    ("log.retention.ms", ""),
    ("log.retention.minutes", ""),
    ("log.retention.hours", "168"),
    ("log.retention.bytes", "-1"),
    ("log.retention.check.interval.ms", "300000"),
    ("log.cleaner.enable", "true"),
    ("log.cleaner.backoff.ms", "15000"),
    ("log.cleaner.delete.retention.ms", "86400000"),
    ("log.cleaner.min.cleanable.ratio", "0.5"),
    ("log.cleaner.min.compaction.lag.ms", "0"),
    ("log.cleaner.max.compaction.lag.ms", "9223372036854775807"),
    ("log.cleanup.policy", "delete"),
    ("log.message.timestamp.type", "CreateTime"),
    ("min.insync.replicas", "1"),
    ("cluster.id", "strom-cluster"),
    ("queued.max.requests", "32"),
    // Request bytes read and not yet handled, for the whole broker (each shard gets an equal
    // share); a connection whose next request does not fit stops reading until it does. Kafka's
    // default is unlimited; Strom always bounds it.
    ("queued.max.request.bytes", "536870912"),
    // Client connections in all and from one address; more are closed at accept. Kafka's
    // defaults are unlimited; Strom always bounds them.
    ("max.connections", "10000"),
    ("max.connections.per.ip", "1000"),
    // A connection with no request in flight and no byte received for this long is closed.
    ("connections.max.idle.ms", "600000"),
    ("connections.max.send.wait.ms", "30000"),
    // A connection whose requests all go to partitions of another shard moves to that shard
    // (kafka/affinity.rs), so it no longer pays a cross-core hop per request.
    ("connections.migrate.to.owner", "true"),
    ("group.initial.rebalance.delay.ms", "3000"),
    ("group.min.session.timeout.ms", "6000"),
    ("group.max.session.timeout.ms", "1800000"),
    // Kafka's default is unlimited. 1000 members is far past real consumer groups (members beyond
    // the partition count sit idle, and a classic rebalance of that many stalls them all), as
    // Kafka's own cap on share groups (1000); with the per-member bounds in `limits.rs` it keeps
    // one group's protocols and assignments to about 2 GiB.
    ("group.max.size", "1000"),
    ("offset.metadata.max.bytes", "4096"),
    ("offsets.retention.minutes", "10080"),
    ("offsets.topic.num.partitions", "50"),
    ("offsets.topic.segment.bytes", "104857600"),
    ("producer.id.expiration.ms", "86400000"),
    // Idempotent producers each partition keeps state for; a new one beyond it evicts the one
    // with the oldest last write (not a Kafka setting; Redpanda's `max_concurrent_producer_ids`).
    ("producer.id.max.per.partition", "10000"),
    ("transactional.id.expiration.ms", "604800000"),
    // The admin HTTP listener (health, readiness, status, Prometheus metrics) on shard 0.
    // An empty `admin.listeners` or `admin.enable=false` turns it off.
    ("admin.listeners", "127.0.0.1:9644"),
    ("admin.enable", "true"),
    // Log filter (`RUST_LOG` wins when set) and line format: `text` or `json`.
    ("log.level", "info"),
    ("log.format", "text"),
    // Test only: every Nth Produce request (acks != 0) a shard handles is carried out and then
    // its connection is closed instead of answering, so clients retry. 0 = off.
    ("test.fault.produce.drop.response.every", "0"),
    // Test only: the log cleaner aborts the process after this step of a segment swap
    // (cleaned-written, swap-committed, old-removed, renamed). Empty = off.
    ("test.fault.cleaner.abort.at", ""),
    // Test only: each shard waits this long before it opens its logs at startup, so that
    // readiness can be observed as false. 0 = off.
    ("test.fault.recovery.delay.ms", "0"),
    // Test only: the controller aborts the process after this step of a topic deletion
    // (deleting-recorded, snapshot-saved). Empty = off.
    ("test.fault.controller.abort.at", ""),
    // Test only: the last shard panics this long after it finished recovery. 0 = off.
    ("test.fault.shard.panic.after.ms", "0"),
    // Test only: append a line per durable fact (fdatasync, create, truncate) of every file to
    // this journal, for power-loss emulation after a SIGKILL (storage's SyncJournal). Empty = off.
    ("test.fault.sync.journal", ""),
    // Test only: every fdatasync of a file whose path contains this fails with EIO. Empty = off.
    ("test.fault.sync.fail.path", ""),
];

/// Settings of the group coordinator (Kafka's names in the comments).
#[derive(Clone, Debug)]
pub struct GroupSettings {
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty group waits
    /// for more members.
    pub initial_rebalance_delay_ms: i64,
    /// `group.min.session.timeout.ms` / `group.max.session.timeout.ms`.
    pub session_timeout_ms_min: i32,
    pub session_timeout_ms_max: i32,
    /// `group.max.size`: most members (joined or pending) of one group; a JoinGroup beyond it
    /// gets GROUP_MAX_SIZE_REACHED.
    pub members_max: usize,
    /// `offset.metadata.max.bytes`: longest commit metadata string.
    pub offset_metadata_bytes_max: usize,
    /// `offsets.retention.minutes`, in ms: offsets of a group that has been empty this long are
    /// removed.
    pub offsets_retention_ms: i64,
    /// `offsets.topic.num.partitions`: partitions of the internal offsets log, fixed when the
    /// data directory is first used.
    pub offsets_partitions: u32,
    /// `offsets.topic.segment.bytes`.
    pub offsets_segment_bytes: u64,
}

/// Settings of producer ids (Kafka's names in the comments).
#[derive(Clone, Debug)]
pub struct ProducerSettings {
    /// `producer.id.expiration.ms`: how long the epoch of a producer id that sent no
    /// InitProducerId is remembered (for epoch bumps).
    pub id_expiration_ms: i64,
    /// `producer.id.max.per.partition`: idempotent producers whose state each partition keeps.
    pub ids_max_per_partition: usize,
    /// `transactional.id.expiration.ms`: accepted and reported; used once transactions exist.
    #[allow(dead_code, reason = "read once transactions exist")]
    pub transactional_id_expiration_ms: i64,
}

/// Fault injection for tests; all off by default.
#[derive(Clone, Debug, Default)]
pub struct TestFaults {
    /// `test.fault.produce.drop.response.every`: when N > 0, every Nth Produce request with
    /// acks != 0 that a shard handles is carried out, then its connection is closed instead of
    /// answering.
    pub produce_drop_response_every: u64,
    /// `test.fault.cleaner.abort.at`: the cleaner aborts the process after this step.
    pub cleaner_abort_at: Option<CleanerStep>,
    /// `test.fault.recovery.delay.ms`: each shard sleeps this long before opening its logs.
    pub recovery_delay_ms: u64,
    /// `test.fault.controller.abort.at`: the controller aborts the process after this step of a
    /// topic deletion.
    pub controller_abort_at: Option<ControllerStep>,
    /// `test.fault.shard.panic.after.ms`: the last shard panics this long after recovery.
    pub shard_panic_after_ms: u64,
    /// `test.fault.sync.journal`: journal of durable file lengths.
    pub sync_journal: Option<PathBuf>,
    /// `test.fault.sync.fail.path`: fdatasyncs of paths containing this fail with EIO.
    pub sync_fail_path: Option<String>,
}

impl TestFaults {
    /// The disk hooks these settings ask for, if any (install them on every thread that does
    /// storage I/O).
    pub fn disk_hooks(&self) -> std::io::Result<Option<strom_storage::testing::SyncJournal>> {
        if self.sync_journal.is_none() && self.sync_fail_path.is_none() {
            return Ok(None);
        }
        strom_storage::testing::SyncJournal::open(
            self.sync_journal.as_deref(),
            self.sync_fail_path.clone(),
        )
        .map(Some)
    }
}

/// Format of the log lines on stderr (`log.format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    /// One JSON object per line (tracing-subscriber's `json` formatter).
    Json,
}

/// Logging (`log.level`, `log.format`); `RUST_LOG`, when set, replaces `log.level`.
#[derive(Clone, Debug)]
pub struct LogSettings {
    /// An `EnvFilter` directive: `info`, `debug`, `strom=debug,info`, ...
    pub level: String,
    pub format: LogFormat,
}

/// Background work on the logs (Kafka's names in the comments).
#[derive(Clone, Debug)]
pub struct MaintenanceSettings {
    /// `log.retention.check.interval.ms`: how often retention runs.
    pub retention_check_interval_ms: u64,
    /// `log.cleaner.enable`.
    pub cleaner_enable: bool,
    /// `log.cleaner.backoff.ms`: how often each shard looks for logs to compact.
    pub cleaner_backoff_ms: u64,
    /// `log.flush.offset.checkpoint.interval.ms`: how often each log writes its recovery point.
    pub recovery_point_interval_ms: u64,
}

/// The resolved broker configuration.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub data_dir: PathBuf,
    pub node_id: i32,
    pub cores: usize,
    pub num_partitions: i32,
    pub auto_create_topics: bool,
    pub request_bytes_max: usize,
    pub cluster_id: String,
    /// Requests of one connection that may be in flight at once (Kafka's `queued.max.requests`).
    pub connection_requests_inflight_max: usize,
    /// How long a response may wait for a slow reader's socket before the connection is closed.
    pub send_wait_ms_max: u64,
    /// `queued.max.request.bytes`: request bytes in flight, for the whole broker.
    pub request_budget_bytes: usize,
    /// `max.connections` / `max.connections.per.ip`.
    pub connections_max: usize,
    pub connections_per_ip_max: usize,
    /// `connections.max.idle.ms`.
    pub connection_idle_ms: u64,
    /// `connections.migrate.to.owner`: move a connection to the shard its requests go to.
    pub connection_migrate: bool,
    pub topic_defaults: TopicDefaults,
    pub groups: GroupSettings,
    pub producers: ProducerSettings,
    pub faults: TestFaults,
    pub maintenance: MaintenanceSettings,
    /// `admin.listeners` unless empty or `admin.enable=false`: where the admin HTTP server
    /// listens.
    pub admin_listen: Option<SocketAddr>,
    pub log: LogSettings,
    /// The node's place in a multi-node cluster; `None` in single-node mode (an empty
    /// `controller.quorum.voters`).
    pub cluster: Option<ClusterSettings>,
    /// Warnings found while loading (unknown keys, test faults on), logged once logging is up.
    pub warnings: Vec<String>,
    /// The raw key/value pairs, for DescribeConfigs on the broker resource.
    pub raw: BTreeMap<String, String>,
}

/// Where settings came from, lowest precedence first.
pub struct ConfigSources {
    pub file: Option<PathBuf>,
    pub env: Vec<(String, String)>,
    pub overrides: Vec<String>,
    pub cores: Option<usize>,
}

fn parse<T: std::str::FromStr>(raw: &BTreeMap<String, String>, key: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    let value = raw.get(key).map(String::as_str).unwrap_or("");
    value.trim().parse::<T>().map_err(|e| ConfigError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        msg: e.to_string(),
    })
}

/// A setting that must be a positive number (Kafka's -1 for "unlimited" is refused: Strom
/// bounds everything a client can make it hold).
fn positive<T>(raw: &BTreeMap<String, String>, key: &str) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + Default + std::fmt::Display,
    T::Err: std::fmt::Display,
{
    let v: T = parse(raw, key).map_err(|e| match e {
        ConfigError::Invalid { key, value, msg } => ConfigError::Invalid {
            key,
            value,
            msg: format!("{msg} (must be a positive number)"),
        },
        other => other,
    })?;
    if v <= T::default() {
        return Err(ConfigError::Invalid {
            key: key.into(),
            value: v.to_string(),
            msg: "must be a positive number".into(),
        });
    }
    Ok(v)
}

/// A single-address listener setting (`admin.listeners`): `PLAINTEXT://host:port`, `host:port`
/// or a list of them (the first is used), resolved to one socket address.
fn resolve(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    let first = value.split(',').next().unwrap_or("").trim();
    let addr = match first.split_once("://") {
        Some((proto, rest)) if proto.eq_ignore_ascii_case("PLAINTEXT") => rest,
        Some((proto, _)) => {
            return Err(ConfigError::Invalid {
                key: key.into(),
                value: value.into(),
                msg: format!("listener protocol {proto} is not supported (only PLAINTEXT)"),
            })
        }
        None => first,
    };
    let (host, port) = listeners::host_port(key, value, addr)?;
    listeners::resolve(key, value, &host, port)
}

impl BrokerConfig {
    pub fn load(sources: ConfigSources) -> Result<BrokerConfig, ConfigError> {
        let mut raw: BTreeMap<String, String> = BROKER_KEYS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some(path) = &sources.file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.clone(),
                msg: e.to_string(),
            })?;
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::File {
                        path: path.clone(),
                        msg: e.to_string(),
                    })?;
            flatten_toml("", &table, &mut raw);
        }
        for (key, _) in BROKER_KEYS {
            let env_key = format!("STROM_{}", key.to_uppercase().replace('.', "_"));
            if let Some((_, v)) = sources.env.iter().find(|(k, _)| *k == env_key) {
                raw.insert(key.to_string(), v.clone());
            }
        }
        for kv in &sources.overrides {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| ConfigError::NotKeyValue(kv.clone()))?;
            raw.insert(k.trim().to_string(), v.trim().to_string());
        }
        let mut warnings = Vec::new();
        for key in raw.keys() {
            if !BROKER_KEYS.iter().any(|(k, _)| k == key) {
                warnings.push(format!("unknown setting `{key}` ignored"));
            }
        }
        if raw.get("broker.id").is_some_and(|v| !v.is_empty()) {
            let id = raw["broker.id"].clone();
            raw.insert("node.id".into(), id);
        }
        let node_id: i32 = parse(&raw, "node.id")?;
        let names = cluster::ListenerNames::parse(&raw);
        let protocols = listeners::protocol_map(&raw["listener.security.protocol.map"])?;
        let all_listeners =
            listeners::Listeners::parse(&raw["listeners"], &protocols, &names.not_client())?;
        let client = &all_listeners.client;
        let listen = listeners::resolve("listeners", &raw["listeners"], &client.host, client.port)?;
        let advertised = match raw["advertised.listeners"].trim() {
            "" => Vec::new(),
            v => listeners::parse_list("advertised.listeners", v, &client.name)?,
        };
        if let Some(e) = advertised
            .iter()
            .find(|e| all_listeners.get(&e.name).is_none())
        {
            return Err(ConfigError::Invalid {
                key: "advertised.listeners".into(),
                value: raw["advertised.listeners"].clone(),
                msg: format!("listener {} is not in listeners", e.name),
            });
        }
        let (adv_host, adv_port) = match advertised.iter().find(|e| e.name == client.name) {
            Some(e) => (e.host.clone(), e.port),
            None => {
                let h = if listen.ip().is_unspecified() {
                    "127.0.0.1".to_string()
                } else {
                    listen.ip().to_string()
                };
                (h, client.port)
            }
        };
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cores = sources.cores.unwrap_or(online).max(1);
        let request_bytes_max: usize = parse(&raw, "socket.request.max.bytes")?;
        let num_partitions: i32 = parse(&raw, "num.partitions")?;
        if num_partitions < 1 {
            return Err(ConfigError::Invalid {
                key: "num.partitions".into(),
                value: num_partitions.to_string(),
                msg: "must be >= 1".into(),
            });
        }
        let topic_defaults = TopicDefaults::from_broker(&raw)?;
        let groups = GroupSettings {
            initial_rebalance_delay_ms: parse::<i64>(&raw, "group.initial.rebalance.delay.ms")?
                .max(0),
            session_timeout_ms_min: parse(&raw, "group.min.session.timeout.ms")?,
            session_timeout_ms_max: parse(&raw, "group.max.session.timeout.ms")?,
            members_max: parse::<usize>(&raw, "group.max.size")?.max(1),
            offset_metadata_bytes_max: parse(&raw, "offset.metadata.max.bytes")?,
            offsets_retention_ms: parse::<i64>(&raw, "offsets.retention.minutes")?
                .saturating_mul(60_000),
            offsets_partitions: parse::<u32>(&raw, "offsets.topic.num.partitions")?.clamp(1, 1000),
            // Kafka's minimum is 1; the log applies its own minimum on top.
            offsets_segment_bytes: parse::<u64>(&raw, "offsets.topic.segment.bytes")?.max(1),
        };
        let producers = ProducerSettings {
            id_expiration_ms: parse::<i64>(&raw, "producer.id.expiration.ms")?.max(1),
            ids_max_per_partition: parse::<usize>(&raw, "producer.id.max.per.partition")?.max(1),
            transactional_id_expiration_ms: parse::<i64>(&raw, "transactional.id.expiration.ms")?
                .max(1),
        };
        let abort_at = raw["test.fault.cleaner.abort.at"].trim().to_string();
        let cleaner_abort_at = match abort_at.as_str() {
            "" => None,
            name => Some(
                CleanerStep::parse(name).ok_or_else(|| ConfigError::Invalid {
                    key: "test.fault.cleaner.abort.at".into(),
                    value: name.into(),
                    msg: "expected cleaned-written, swap-committed, old-removed or renamed".into(),
                })?,
            ),
        };
        if let Some(step) = cleaner_abort_at {
            warnings.push(format!("test.fault.cleaner.abort.at={}: the cleaner aborts the process on purpose (test only)", step.name()));
        }
        let controller_abort_at = match raw["test.fault.controller.abort.at"].trim() {
            "" => None,
            name => Some(
                ControllerStep::parse(name).ok_or_else(|| ConfigError::Invalid {
                    key: "test.fault.controller.abort.at".into(),
                    value: name.into(),
                    msg: "expected deleting-recorded or snapshot-saved".into(),
                })?,
            ),
        };
        if let Some(step) = controller_abort_at {
            warnings.push(format!("test.fault.controller.abort.at={}: topic deletion aborts the process on purpose (test only)", step.name()));
        }
        let faults = TestFaults {
            produce_drop_response_every: parse(&raw, "test.fault.produce.drop.response.every")?,
            cleaner_abort_at,
            recovery_delay_ms: parse(&raw, "test.fault.recovery.delay.ms")?,
            controller_abort_at,
            shard_panic_after_ms: parse(&raw, "test.fault.shard.panic.after.ms")?,
            sync_journal: Some(raw["test.fault.sync.journal"].trim())
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            sync_fail_path: Some(raw["test.fault.sync.fail.path"].trim())
                .filter(|v| !v.is_empty())
                .map(str::to_string),
        };
        if let Some(path) = &faults.sync_journal {
            warnings.push(format!(
                "test.fault.sync.journal={}: every durable file length is journaled (test only)",
                path.display()
            ));
        }
        if let Some(pattern) = &faults.sync_fail_path {
            warnings.push(format!("test.fault.sync.fail.path={pattern}: fdatasyncs of those files fail on purpose (test only)"));
        }
        if faults.shard_panic_after_ms > 0 {
            warnings.push(format!(
                "test.fault.shard.panic.after.ms={}: a shard panics on purpose (test only)",
                faults.shard_panic_after_ms
            ));
        }
        if faults.recovery_delay_ms > 0 {
            warnings.push(format!("test.fault.recovery.delay.ms={}: startup recovery is delayed on purpose (test only)", faults.recovery_delay_ms));
        }
        let maintenance = MaintenanceSettings {
            retention_check_interval_ms: parse::<u64>(&raw, "log.retention.check.interval.ms")?
                .max(1),
            cleaner_enable: parse(&raw, "log.cleaner.enable")?,
            cleaner_backoff_ms: parse::<u64>(&raw, "log.cleaner.backoff.ms")?.max(1),
            recovery_point_interval_ms: parse::<u64>(
                &raw,
                "log.flush.offset.checkpoint.interval.ms",
            )?
            .max(1),
        };
        if faults.produce_drop_response_every > 0 {
            warnings.push(format!(
                "test.fault.produce.drop.response.every={}: dropping Produce responses on purpose (test only)",
                faults.produce_drop_response_every
            ));
        }
        if groups.session_timeout_ms_min > groups.session_timeout_ms_max {
            return Err(ConfigError::Invalid {
                key: "group.min.session.timeout.ms".into(),
                value: groups.session_timeout_ms_min.to_string(),
                msg: "must not exceed group.max.session.timeout.ms".into(),
            });
        }
        let admin_listen = match (
            parse::<bool>(&raw, "admin.enable")?,
            raw["admin.listeners"].trim(),
        ) {
            (false, _) | (true, "") => None,
            (true, v) => Some(resolve("admin.listeners", v)?),
        };
        let cluster = cluster::load(
            &cluster::Context {
                raw: &raw,
                names: &names,
                listeners: &all_listeners,
                client_listen: listen,
                advertised: &advertised,
                node_id,
                cores,
                admin_listen,
            },
            &mut warnings,
        )?;
        let format = match raw["log.format"].trim() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::Invalid {
                    key: "log.format".into(),
                    value: other.into(),
                    msg: "expected text or json".into(),
                })
            }
        };
        let level = raw["log.level"].trim().to_string();
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            return Err(ConfigError::Invalid {
                key: "log.level".into(),
                value: level,
                msg: "not a log filter (e.g. info, debug, strom=debug)".into(),
            });
        }
        let request_budget_bytes: usize = positive(&raw, "queued.max.request.bytes")?;
        let shard_share_min = crate::limits::REQUEST_BUDGET_SHARD_BYTES_MIN * cores;
        if request_budget_bytes < shard_share_min {
            return Err(ConfigError::Invalid {
                key: "queued.max.request.bytes".into(),
                value: request_budget_bytes.to_string(),
                msg: format!(
                    "must be at least {shard_share_min} ({} per shard)",
                    crate::limits::REQUEST_BUDGET_SHARD_BYTES_MIN
                ),
            });
        }
        // Absolute from here on: the working directory is read once, and nothing later (glommio
        // opens directories relative to no descriptor) sees a relative path.
        let data_dir_raw = raw["log.dirs"]
            .split(',')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        if data_dir_raw.is_empty() {
            return Err(ConfigError::Invalid {
                key: "log.dirs".into(),
                value: data_dir_raw,
                msg: "must name a directory".into(),
            });
        }
        let data_dir = std::path::absolute(&data_dir_raw).map_err(|e| ConfigError::Invalid {
            key: "log.dirs".into(),
            value: data_dir_raw.clone(),
            msg: format!("cannot resolve: {e}"),
        })?;
        Ok(BrokerConfig {
            admin_listen,
            log: LogSettings { level, format },
            warnings,
            listen,
            advertised_host: adv_host,
            advertised_port: i32::from(adv_port),
            data_dir,
            node_id,
            cores,
            num_partitions,
            auto_create_topics: parse(&raw, "auto.create.topics.enable")?,
            request_bytes_max,
            cluster_id: raw["cluster.id"].clone(),
            connection_requests_inflight_max: parse::<usize>(&raw, "queued.max.requests")?
                .clamp(1, 1024),
            send_wait_ms_max: parse(&raw, "connections.max.send.wait.ms")?,
            request_budget_bytes,
            connections_max: positive(&raw, "max.connections")?,
            connections_per_ip_max: positive(&raw, "max.connections.per.ip")?,
            connection_migrate: parse(&raw, "connections.migrate.to.owner")?,
            connection_idle_ms: positive::<u64>(&raw, "connections.max.idle.ms")?,
            topic_defaults,
            groups,
            producers,
            faults,
            maintenance,
            cluster,
            raw,
        })
    }
}

/// `a = { b = 1 }` and `"a.b" = 1` both become `a.b = "1"`.
fn flatten_toml(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten_toml(&key, t, out),
            toml::Value::String(s) => {
                out.insert(key, s.clone());
            }
            toml::Value::Array(a) => {
                let items: Vec<String> = a
                    .iter()
                    .map(|x| match x {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect();
                out.insert(key, items.join(","));
            }
            other => {
                out.insert(key, other.to_string());
            }
        }
    }
}

/// Steps of a topic deletion after which `test.fault.controller.abort.at` aborts the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControllerStep {
    /// The topic is listed in `__strom_meta/deleting`; the snapshot still has it.
    DeletingRecorded,
    /// The snapshot without the topic is durable; its partition directories still exist.
    SnapshotSaved,
}

impl ControllerStep {
    pub fn parse(name: &str) -> Option<ControllerStep> {
        match name {
            "deleting-recorded" => Some(ControllerStep::DeletingRecorded),
            "snapshot-saved" => Some(ControllerStep::SnapshotSaved),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ControllerStep::DeletingRecorded => "deleting-recorded",
            ControllerStep::SnapshotSaved => "snapshot-saved",
        }
    }
}

#[cfg(test)]
mod tests;
