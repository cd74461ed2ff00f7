//! Unit tests of the broker settings.

use super::cluster::{AdvertisedListener, Voter};
use super::*;

fn load(
    file: Option<&str>,
    env: &[(&str, &str)],
    overrides: &[&str],
) -> Result<BrokerConfig, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = file.map(|text| {
        let p = dir.path().join("strom.toml");
        std::fs::write(&p, text).unwrap();
        p
    });
    BrokerConfig::load(ConfigSources {
        file: path,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        overrides: overrides.iter().map(|s| s.to_string()).collect(),
        cores: Some(1),
    })
}

#[test]
fn defaults_serve_single_node_on_loopback() {
    let c = load(None, &[], &[]).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:9092");
    // The relative default is resolved against the working directory once, at load.
    assert!(c.data_dir.is_absolute(), "{}", c.data_dir.display());
    assert_eq!(
        c.data_dir,
        std::env::current_dir().unwrap().join("strom-data")
    );
    assert!(c.auto_create_topics);
    assert_eq!(c.num_partitions, 1);
    assert_eq!(
        (c.advertised_host.as_str(), c.advertised_port),
        ("127.0.0.1", 9092)
    );
}

#[test]
fn flags_beat_env_beat_file() {
    let file = "\"num.partitions\" = 2\nlog = { dirs = \"/tmp/a\" }\nlisteners = \"PLAINTEXT://127.0.0.1:1\"\n";
    let c = load(
        Some(file),
        &[("STROM_NUM_PARTITIONS", "3")],
        &["listeners=127.0.0.1:7"],
    )
    .unwrap();
    assert_eq!(c.num_partitions, 3);
    assert_eq!(c.data_dir, PathBuf::from("/tmp/a"));
    assert_eq!(c.listen.port(), 7);
    let c = load(
        Some(file),
        &[("STROM_NUM_PARTITIONS", "3")],
        &["num.partitions=5"],
    )
    .unwrap();
    assert_eq!(c.num_partitions, 5);
}

#[test]
fn advertised_listener_is_separate() {
    let c = load(
        None,
        &[],
        &[
            "listeners=PLAINTEXT://0.0.0.0:9000",
            "advertised.listeners=PLAINTEXT://broker.local:19000",
        ],
    )
    .unwrap();
    assert_eq!(c.listen.port(), 9000);
    assert_eq!(
        (c.advertised_host.as_str(), c.advertised_port),
        ("broker.local", 19000)
    );
}

#[test]
fn producer_settings_and_faults() {
    let c = load(None, &[], &[]).unwrap();
    assert_eq!(c.producers.id_expiration_ms, 86_400_000);
    assert_eq!(c.producers.transactional_id_expiration_ms, 604_800_000);
    assert_eq!(c.faults.produce_drop_response_every, 0);
    let c = load(
        None,
        &[("STROM_PRODUCER_ID_EXPIRATION_MS", "5000")],
        &["test.fault.produce.drop.response.every=3"],
    )
    .unwrap();
    assert_eq!(c.producers.id_expiration_ms, 5000);
    assert_eq!(c.faults.produce_drop_response_every, 3);
    assert!(load(None, &[], &["test.fault.produce.drop.response.every=-1"]).is_err());
}

#[test]
fn producer_ids_per_partition_cap() {
    // The broker default and the storage default are one number.
    let default = load(None, &[], &[])
        .unwrap()
        .producers
        .ids_max_per_partition;
    assert_eq!(default, strom_storage::limits::PRODUCER_IDS_MAX_DEFAULT);
    let c = load(None, &[("STROM_PRODUCER_ID_MAX_PER_PARTITION", "3")], &[]).unwrap();
    assert_eq!(c.producers.ids_max_per_partition, 3);
    assert_eq!(
        load(None, &[], &["producer.id.max.per.partition=0"])
            .unwrap()
            .producers
            .ids_max_per_partition,
        1
    );
    assert!(load(None, &[], &["producer.id.max.per.partition=-1"]).is_err());
}

#[test]
fn retention_and_cleaner_settings() {
    let c = load(None, &[], &[]).unwrap();
    assert_eq!(c.maintenance.retention_check_interval_ms, 300_000);
    assert_eq!(c.maintenance.cleaner_backoff_ms, 15_000);
    assert!(c.maintenance.cleaner_enable);
    assert_eq!(c.faults.cleaner_abort_at, None);
    let described: BTreeMap<_, _> = c
        .topic_defaults
        .describe(&BTreeMap::new())
        .map(|(k, v, _)| (k, v))
        .collect();
    for (key, value) in [
        ("cleanup.policy", "delete"),
        ("retention.ms", "604800000"),
        ("retention.bytes", "-1"),
        ("delete.retention.ms", "86400000"),
        ("min.cleanable.dirty.ratio", "0.5"),
        ("min.compaction.lag.ms", "0"),
        ("max.compaction.lag.ms", "9223372036854775807"),
    ] {
        assert_eq!(described[key], value, "{key}");
    }
    let c = load(
        None,
        &[("STROM_LOG_RETENTION_MINUTES", "2")],
        &[
            "log.cleaner.enable=false",
            "log.cleaner.backoff.ms=100",
            "test.fault.cleaner.abort.at=swap-committed",
        ],
    )
    .unwrap();
    assert_eq!(
        c.topic_defaults.resolve(&BTreeMap::new()).retention_ms,
        120_000
    );
    assert!(!c.maintenance.cleaner_enable);
    assert_eq!(c.maintenance.cleaner_backoff_ms, 100);
    assert_eq!(c.faults.cleaner_abort_at, Some(CleanerStep::SwapCommitted));
    assert!(load(None, &[], &["test.fault.cleaner.abort.at=never"]).is_err());
    assert!(load(None, &[], &["log.cleaner.min.cleanable.ratio=2"]).is_err());
}

#[test]
fn admin_and_log_settings() {
    let c = load(None, &[], &[]).unwrap();
    assert_eq!(
        c.admin_listen.map(|a| a.to_string()).as_deref(),
        Some("127.0.0.1:9644")
    );
    assert_eq!(
        (c.log.level.as_str(), c.log.format),
        ("info", LogFormat::Text)
    );
    assert_eq!(c.faults.recovery_delay_ms, 0);
    assert!(load(None, &[], &["admin.listeners="])
        .unwrap()
        .admin_listen
        .is_none());
    assert!(load(None, &[], &["admin.enable=false"])
        .unwrap()
        .admin_listen
        .is_none());
    let c = load(
        None,
        &[],
        &[
            "admin.listeners=0.0.0.0:19644",
            "log.format=json",
            "log.level=debug",
            "test.fault.recovery.delay.ms=500",
        ],
    )
    .unwrap();
    assert_eq!(c.admin_listen.unwrap().port(), 19644);
    assert_eq!(
        (c.log.level.as_str(), c.log.format),
        ("debug", LogFormat::Json)
    );
    assert_eq!(c.faults.recovery_delay_ms, 500);
    assert!(c.warnings.iter().any(|w| w.contains("recovery.delay")));
    assert!(load(None, &[], &["log.format=xml"]).is_err());
    assert!(load(None, &[], &["admin.listeners=nonsense"]).is_err());
    assert!(load(None, &[], &["no.such.key=1"])
        .unwrap()
        .warnings
        .iter()
        .any(|w| w.contains("no.such.key")));
}

#[test]
fn connection_and_request_limits() {
    let c = load(None, &[], &[]).unwrap();
    assert_eq!(
        (c.connections_max, c.connections_per_ip_max),
        (10_000, 1_000)
    );
    assert_eq!(
        (c.connection_idle_ms, c.request_budget_bytes),
        (600_000, 512 << 20)
    );
    let c = load(
        None,
        &[],
        &[
            "max.connections=3",
            "max.connections.per.ip=2",
            "connections.max.idle.ms=500",
            "queued.max.request.bytes=1048576",
        ],
    )
    .unwrap();
    assert_eq!(
        (
            c.connections_max,
            c.connections_per_ip_max,
            c.connection_idle_ms,
            c.request_budget_bytes
        ),
        (3, 2, 500, 1 << 20)
    );
    for bad in [
        "max.connections=0",
        "max.connections.per.ip=-1",
        "connections.max.idle.ms=0",
        "queued.max.request.bytes=-1",
        "queued.max.request.bytes=1000",
    ] {
        let e = load(None, &[], &[bad]).unwrap_err().to_string();
        assert!(e.contains(bad.split('=').next().unwrap()), "{bad}: {e}");
    }
}

#[test]
fn bad_values_are_clear_errors() {
    let e = load(None, &[], &["num.partitions=zero"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("num.partitions"), "{e}");
    assert!(load(None, &[], &["listeners=SSL://127.0.0.1:1"]).is_err());
    assert!(load(None, &[], &["novalue"]).is_err());
    assert!(load(Some("not = [valid"), &[], &[]).is_err());
}

/// Loads `overrides` (later ones win) on a node with `cores` shards.
fn load_on_cores(overrides: &[&str], cores: usize) -> Result<BrokerConfig, ConfigError> {
    BrokerConfig::load(ConfigSources {
        file: None,
        env: Vec::new(),
        overrides: overrides.iter().map(|s| s.to_string()).collect(),
        cores: Some(cores),
    })
}

/// Node 2 of a three-node cluster, listening on every interface, with 4 shards.
const NODE_2_OF_3: &[&str] = &[
    "controller.quorum.voters=1@node1:9093,2@node2:9093,3@node3:9093",
    "node.id=2",
    "listeners=PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093,REPLICATION://0.0.0.0:9100",
    "advertised.listeners=PLAINTEXT://node2:9092,CONTROLLER://node2:9093,REPLICATION://node2:9100",
    "default.replication.factor=3",
    "broker.rack=az-b",
];

/// Node 2 with `extra` settings on top.
fn node_2(extra: &[&str]) -> Result<BrokerConfig, ConfigError> {
    let overrides: Vec<&str> = NODE_2_OF_3.iter().chain(extra).copied().collect();
    load_on_cores(&overrides, 4)
}

/// `result` is `ConfigError::Invalid` for `key`, its message containing `says`.
#[track_caller]
fn assert_refused(result: Result<BrokerConfig, ConfigError>, key: &str, says: &str) {
    match result {
        Err(ConfigError::Invalid { key: k, msg, .. }) => {
            assert_eq!(k, key, "{msg}");
            assert!(msg.contains(says), "{key}: `{msg}` does not say `{says}`");
        }
        other => panic!("expected {key} to be refused, got {other:?}"),
    }
}

#[test]
fn single_node_defaults_have_no_cluster() {
    let c = load(None, &[], &[]).unwrap();
    assert!(c.cluster.is_none());
    assert_eq!(c.listen.to_string(), "127.0.0.1:9092");
    assert_eq!(
        (c.advertised_host.as_str(), c.advertised_port),
        ("127.0.0.1", 9092)
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // Listening on every interface still advertises loopback, as before.
    let c = load(None, &[], &["listeners=PLAINTEXT://0.0.0.0:9000"]).unwrap();
    assert_eq!(
        (c.listen.to_string().as_str(), c.advertised_host.as_str()),
        ("0.0.0.0:9000", "127.0.0.1")
    );
    assert!(c.cluster.is_none());
    // Cluster-only settings are checked for well-formed values in single-node mode too.
    assert_refused(
        load(None, &[], &["replica.lag.time.max.ms=soon"]),
        "replica.lag.time.max.ms",
        "",
    );
}

#[test]
fn single_node_ignores_controller_and_replication_listeners() {
    let c = load(
        None,
        &[],
        &[
            "listeners=CONTROLLER://127.0.0.1:9093,PLAINTEXT://127.0.0.1:9092,REPLICATION://127.0.0.1:9100",
            "advertised.listeners=PLAINTEXT://broker.local:19092",
        ],
    )
    .unwrap();
    assert!(c.cluster.is_none());
    assert_eq!(c.listen.to_string(), "127.0.0.1:9092");
    assert_eq!(
        (c.advertised_host.as_str(), c.advertised_port),
        ("broker.local", 19092)
    );
    for name in ["CONTROLLER", "REPLICATION"] {
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains(name) && w.contains("single-node")),
            "{name}: {:?}",
            c.warnings
        );
    }
}

#[test]
fn client_listener_is_plaintext_or_first_other() {
    let c = load(
        None,
        &[],
        &[
            "listener.security.protocol.map=CLIENT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "listeners=CONTROLLER://127.0.0.1:9093,CLIENT://127.0.0.1:9000",
            // Without a name, an advertised entry is the client listener's.
            "advertised.listeners=broker.local:19000",
        ],
    )
    .unwrap();
    assert_eq!(c.listen.port(), 9000);
    assert_eq!(
        (c.advertised_host.as_str(), c.advertised_port),
        ("broker.local", 19000)
    );
    assert_refused(
        load(None, &[], &["listeners=CONTROLLER://127.0.0.1:9093"]),
        "listeners",
        "no client listener",
    );
    assert_refused(
        load(None, &[], &["listeners=SSL://127.0.0.1:1"]),
        "listeners",
        "listener.security.protocol.map",
    );
    assert_refused(
        load(
            None,
            &[],
            &["advertised.listeners=PLAINTEXT://a:1,EXTERNAL://b:2"],
        ),
        "advertised.listeners",
        "EXTERNAL",
    );
    assert_refused(
        load(
            None,
            &[],
            &["listeners=PLAINTEXT://127.0.0.1:1,PLAINTEXT://127.0.0.1:2"],
        ),
        "listeners",
        "twice",
    );
}

#[test]
fn three_node_cluster_settings() {
    let c = node_2(&[]).unwrap();
    let cluster = c.cluster.as_ref().expect("cluster mode");
    assert_eq!((c.node_id, cluster.node_id), (2, 2));
    assert_eq!(
        cluster.voters,
        (1..=3)
            .map(|id| Voter {
                id,
                host: format!("node{id}"),
                port: 9093
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(c.listen.to_string(), "0.0.0.0:9092");
    assert_eq!(cluster.controller_listen.to_string(), "0.0.0.0:9093");
    assert_eq!(cluster.replication_listen.to_string(), "0.0.0.0:9100");
    assert_eq!(
        (
            cluster.client_listener.as_str(),
            cluster.controller_listener.as_str(),
            cluster.replication_listener.as_str()
        ),
        ("PLAINTEXT", "CONTROLLER", "REPLICATION")
    );
    let advertised = |name: &str, port| AdvertisedListener {
        name: name.into(),
        host: "node2".into(),
        port,
    };
    assert_eq!(
        cluster.advertised,
        vec![
            advertised("PLAINTEXT", 9092),
            advertised("CONTROLLER", 9093),
            advertised("REPLICATION", 9100)
        ]
    );
    assert_eq!(
        (c.advertised_host.as_str(), c.advertised_port),
        ("node2", 9092)
    );
    // Shard i listens, and is reached, on the replication port + i.
    let ports: Vec<u16> = (0..4)
        .map(|shard| cluster.replication_listen_of_shard(shard).port())
        .collect();
    assert_eq!(ports, [9100, 9101, 9102, 9103]);
    assert_eq!(cluster.replication_advertised_of_shard(3), ("node2", 9103));
    assert_eq!(cluster.rack.as_deref(), Some("az-b"));
    assert_eq!(
        (
            cluster.default_replication_factor,
            cluster.offsets_replication_factor
        ),
        (3, 3)
    );
    assert_eq!(
        (
            cluster.replica_lag_time_max_ms,
            cluster.replica_fetch_wait_max_ms,
            cluster.replica_fetch_max_bytes
        ),
        (10_000, 500, 1_048_576)
    );
    assert_eq!(
        (cluster.heartbeat_interval_ms, cluster.session_timeout_ms),
        (100, 1000)
    );
}

#[test]
fn cluster_defaults_advertise_the_listen_addresses() {
    let c = load_on_cores(
        &[
            "controller.quorum.voters=1@127.0.0.1:19093,2@127.0.0.1:29093",
            "node.id=1",
            "listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093,REPLICATION://127.0.0.2:19100",
            "admin.enable=false",
        ],
        2,
    )
    .unwrap();
    let cluster = c.cluster.unwrap();
    let names_ports: Vec<(&str, &str, u16)> = cluster
        .advertised
        .iter()
        .map(|a| (a.name.as_str(), a.host.as_str(), a.port))
        .collect();
    assert_eq!(
        names_ports,
        [
            ("PLAINTEXT", "127.0.0.1", 19092),
            ("CONTROLLER", "127.0.0.1", 19093),
            ("REPLICATION", "127.0.0.2", 19100)
        ]
    );
    assert_eq!(
        cluster.voters[1].socket_addr().unwrap().to_string(),
        "127.0.0.1:29093"
    );
    // Two voters: the offsets log gets two replicas, not Kafka's 3.
    assert_eq!(cluster.offsets_replication_factor, 2);
    assert_eq!(cluster.default_replication_factor, 1);
    assert_eq!(cluster.rack, None);
}

#[test]
fn cluster_voters_are_checked() {
    assert_refused(
        node_2(&["controller.quorum.voters=1@node1:9093,2@node2:9093,2@node3:9093"]),
        "controller.quorum.voters",
        "listed twice",
    );
    assert_refused(
        node_2(&["controller.quorum.voters=1@node1:9093,-2@node2:9093"]),
        "controller.quorum.voters",
        "not a node id",
    );
    assert_refused(
        node_2(&["controller.quorum.voters=1@node1:9093,2@node2"]),
        "controller.quorum.voters",
        "host:port",
    );
    assert_refused(
        node_2(&["controller.quorum.voters=1@node1:9093,2node2:9093"]),
        "controller.quorum.voters",
        "id@host:port",
    );
    assert_refused(
        node_2(&["controller.quorum.voters=1@node1:9093,2@node1:9093"]),
        "controller.quorum.voters",
        "same address",
    );
    assert_refused(
        node_2(&["node.id=4"]),
        "node.id",
        "nodes that are not voters are not supported yet",
    );
    assert_refused(
        node_2(&["controller.quorum.bootstrap.servers=node1:9093"]),
        "controller.quorum.bootstrap.servers",
        "controller.quorum.voters",
    );
    // Refused in single-node mode as well.
    assert_refused(
        load(
            None,
            &[],
            &["controller.quorum.bootstrap.servers=node1:9093"],
        ),
        "controller.quorum.bootstrap.servers",
        "static membership",
    );
}

#[test]
fn cluster_listeners_are_checked() {
    assert_refused(
        node_2(&[
            "listeners=PLAINTEXT://0.0.0.0:9092,REPLICATION://0.0.0.0:9100",
            "advertised.listeners=PLAINTEXT://node2:9092,REPLICATION://node2:9100",
        ]),
        "listeners",
        "no CONTROLLER listener",
    );
    assert_refused(
        node_2(&[
            "listeners=PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093",
            "advertised.listeners=PLAINTEXT://node2:9092,CONTROLLER://node2:9093",
        ]),
        "listeners",
        "no REPLICATION listener",
    );
    assert_refused(
        node_2(&["inter.broker.listener.name=CONTROLLER"]),
        "inter.broker.listener.name",
        "controller listener",
    );
    // Replication ports 9090..=9093 (4 shards) take the client and controller ports.
    assert_refused(
        node_2(&[
            "listeners=PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093,REPLICATION://0.0.0.0:9090",
        ]),
        "listeners",
        "collides",
    );
    assert_refused(
        node_2(&[
            "listeners=PLAINTEXT://0.0.0.0:9093,CONTROLLER://0.0.0.0:9093,REPLICATION://0.0.0.0:9100",
        ]),
        "listeners",
        "collides",
    );
    assert_refused(
        node_2(&["admin.listeners=127.0.0.1:9103"]),
        "admin.listeners",
        "collides",
    );
    assert_refused(
        node_2(&[
            "listeners=PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093,REPLICATION://0.0.0.0:65534",
        ]),
        "listeners",
        "65535",
    );
    // The range grows with the shards: 9090 alone is free, 9090..=9092 takes the client port.
    let replication_9090: Vec<&str> = NODE_2_OF_3
        .iter()
        .copied()
        .chain([
            "listeners=PLAINTEXT://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093,REPLICATION://0.0.0.0:9090",
        ])
        .collect();
    assert!(load_on_cores(&replication_9090, 2)
        .unwrap()
        .cluster
        .is_some());
    assert_refused(
        load_on_cores(&replication_9090, 3),
        "listeners",
        "the PLAINTEXT listener's port 9092",
    );
    for map in [
        "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,REPLICATION:SSL",
        "PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT,REPLICATION:PLAINTEXT",
    ] {
        let setting = format!("listener.security.protocol.map={map}");
        assert_refused(
            node_2(&[&setting]),
            "listener.security.protocol.map",
            "not supported (only PLAINTEXT)",
        );
        assert_refused(
            load(None, &[], &[&setting]),
            "listener.security.protocol.map",
            "only PLAINTEXT",
        );
    }
}

#[test]
fn cluster_refuses_advertising_every_interface() {
    assert_refused(
        node_2(&[
            "advertised.listeners=PLAINTEXT://0.0.0.0:9092,CONTROLLER://node2:9093,REPLICATION://node2:9100",
        ]),
        "advertised.listeners",
        "0.0.0.0",
    );
    // A listener on 0.0.0.0 without an advertised entry would be advertised as 0.0.0.0.
    assert_refused(
        node_2(&["advertised.listeners=PLAINTEXT://node2:9092,CONTROLLER://node2:9093"]),
        "advertised.listeners",
        "REPLICATION",
    );
    assert_refused(
        node_2(&[
            "advertised.listeners=PLAINTEXT://node2:9092,CONTROLLER://node2:9093,REPLICATION://[::]:9100",
        ]),
        "advertised.listeners",
        "::",
    );
}

#[test]
fn replication_settings_are_checked() {
    assert_refused(
        node_2(&["default.replication.factor=4"]),
        "default.replication.factor",
        "must not exceed the 3 nodes",
    );
    assert_refused(
        load(None, &[], &["default.replication.factor=0"]),
        "default.replication.factor",
        "positive",
    );
    assert_refused(
        load(None, &[], &["offsets.topic.replication.factor=0"]),
        "offsets.topic.replication.factor",
        "positive",
    );
    assert_refused(
        node_2(&["min.insync.replicas=0"]),
        "min.insync.replicas",
        "",
    );
    assert_refused(
        node_2(&["broker.session.timeout.ms=100"]),
        "broker.session.timeout.ms",
        "greater than broker.heartbeat.interval.ms",
    );
    assert_refused(
        node_2(&["broker.heartbeat.interval.ms=0"]),
        "broker.heartbeat.interval.ms",
        "positive",
    );
    assert_refused(
        node_2(&["replica.fetch.wait.max.ms=10000"]),
        "replica.fetch.wait.max.ms",
        "less than replica.lag.time.max.ms",
    );
    assert_refused(
        node_2(&["replica.fetch.max.bytes=-1"]),
        "replica.fetch.max.bytes",
        "positive",
    );
    for result in [
        node_2(&["unclean.leader.election.enable=true"]),
        load(None, &[], &["unclean.leader.election.enable=true"]),
    ] {
        assert_refused(
            result,
            "unclean.leader.election.enable",
            "unclean leader election can lose acknowledged records and is not supported",
        );
    }
    assert!(node_2(&["unclean.leader.election.enable=false"]).is_ok());
}

#[test]
fn unclean_election_is_refused_as_a_topic_config() {
    assert_eq!(
        topic::validate("unclean.leader.election.enable", "true"),
        Err("unclean leader election can lose acknowledged records and is not supported".into())
    );
    assert_eq!(
        topic::validate("unclean.leader.election.enable", "false"),
        Ok(())
    );
    assert!(topic::validate("unclean.leader.election.enable", "sometimes").is_err());
    let defaults = load(None, &[], &[]).unwrap().topic_defaults;
    assert!(defaults
        .describe(&BTreeMap::new())
        .any(|(k, v, _)| k == "unclean.leader.election.enable" && v == "false"));
}
