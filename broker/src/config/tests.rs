//! Unit tests of the broker settings.

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
