//! Topic-level configs (Kafka names), their broker-level defaults and validation.

use std::collections::BTreeMap;

use strom_storage::{CleanupPolicy, LogConfig, TimestampType};

use crate::config::ConfigError;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Long {
        min: i64,
    },
    Int {
        min: i64,
    },
    /// A float in [min, max].
    Double {
        min: f64,
        max: f64,
    },
    Bool,
    TimestampType,
    CleanupPolicy,
}

/// (topic key, broker key holding its default, kind)
const TOPIC_KEYS: &[(&str, &str, Kind)] = &[
    ("cleanup.policy", "log.cleanup.policy", Kind::CleanupPolicy),
    (
        "delete.retention.ms",
        "log.cleaner.delete.retention.ms",
        Kind::Long { min: 0 },
    ),
    (
        "flush.messages",
        "log.flush.interval.messages",
        Kind::Long { min: 1 },
    ),
    ("flush.ms", "log.flush.interval.ms", Kind::Long { min: 0 }),
    ("flush.on.ack", "log.flush.on.ack", Kind::Bool),
    (
        "index.interval.bytes",
        "log.index.interval.bytes",
        Kind::Int { min: 0 },
    ),
    (
        "max.compaction.lag.ms",
        "log.cleaner.max.compaction.lag.ms",
        Kind::Long { min: 1 },
    ),
    (
        "max.message.bytes",
        "message.max.bytes",
        Kind::Int { min: 0 },
    ),
    (
        "message.timestamp.type",
        "log.message.timestamp.type",
        Kind::TimestampType,
    ),
    (
        "min.cleanable.dirty.ratio",
        "log.cleaner.min.cleanable.ratio",
        Kind::Double { min: 0.0, max: 1.0 },
    ),
    (
        "min.compaction.lag.ms",
        "log.cleaner.min.compaction.lag.ms",
        Kind::Long { min: 0 },
    ),
    (
        "min.insync.replicas",
        "min.insync.replicas",
        Kind::Int { min: 1 },
    ),
    (
        "retention.bytes",
        "log.retention.bytes",
        Kind::Long { min: i64::MIN },
    ),
    ("retention.ms", "log.retention.ms", Kind::Long { min: -1 }),
    ("segment.bytes", "log.segment.bytes", Kind::Int { min: 14 }),
    ("segment.ms", "log.roll.ms", Kind::Long { min: 1 }),
];

/// Kafka topic configs that Strom accepts, stores and reports, but does not act on (yet), with
/// Kafka's defaults. Tools set them routinely (e.g. `compression.type`), so refusing them would
/// break clients for no gain.
const STORED_ONLY_KEYS: &[(&str, &str)] = &[
    ("compression.type", "producer"),
    ("file.delete.delay.ms", "60000"),
    ("follower.replication.throttled.replicas", ""),
    ("leader.replication.throttled.replicas", ""),
    ("local.retention.bytes", "-2"),
    ("local.retention.ms", "-2"),
    ("message.downconversion.enable", "true"),
    ("message.format.version", "3.0-IV1"),
    ("message.timestamp.after.max.ms", "9223372036854775807"),
    ("message.timestamp.before.max.ms", "9223372036854775807"),
    ("message.timestamp.difference.max.ms", "9223372036854775807"),
    ("preallocate", "false"),
    ("remote.storage.enable", "false"),
    ("segment.index.bytes", "10485760"),
    ("segment.jitter.ms", "0"),
    // Only `false` is accepted (see `validate`): with one replica nothing is unclean, and with
    // more, electing a replica outside the ISR would lose acknowledged records.
    ("unclean.leader.election.enable", "false"),
];

/// Why `unclean.leader.election.enable=true` is refused, at broker and at topic level.
pub(crate) const UNCLEAN_ELECTION_REFUSED: &str =
    "unclean leader election can lose acknowledged records and is not supported";

/// Checks one topic-level setting; the error text is returned to clients as is.
pub fn validate(key: &str, value: &str) -> Result<(), String> {
    if key == "unclean.leader.election.enable" {
        return match value.trim().to_ascii_lowercase().as_str() {
            "false" => Ok(()),
            "true" => Err(UNCLEAN_ELECTION_REFUSED.to_string()),
            _ => Err(format!("Invalid value {value} for configuration {key}")),
        };
    }
    if STORED_ONLY_KEYS.iter().any(|(k, _)| *k == key) {
        return Ok(());
    }
    let Some((_, _, kind)) = TOPIC_KEYS.iter().find(|(k, _, _)| *k == key) else {
        return Err(format!("Unknown topic config name: {key}"));
    };
    let v = value.trim();
    let ok = match kind {
        Kind::Long { min } => v.parse::<i64>().is_ok_and(|n| n >= *min),
        Kind::Int { min } => v.parse::<i32>().is_ok_and(|n| i64::from(n) >= *min),
        Kind::Double { min, max } => v.parse::<f64>().is_ok_and(|n| (*min..=*max).contains(&n)),
        Kind::Bool => matches!(v.to_ascii_lowercase().as_str(), "true" | "false"),
        Kind::TimestampType => matches!(v, "CreateTime" | "LogAppendTime"),
        Kind::CleanupPolicy => {
            !v.is_empty()
                && v.split(',')
                    .all(|p| matches!(p.trim(), "delete" | "compact"))
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("Invalid value {value} for configuration {key}"))
    }
}

/// The broker setting `broker_key`. `log.retention.ms` falls back, as in Kafka, to
/// `log.retention.minutes`, then to `log.retention.hours`, when it is not set; a negative
/// result means unlimited (-1).
fn broker_value(raw: &BTreeMap<String, String>, broker_key: &str) -> Result<String, ConfigError> {
    let get = |k: &str| raw.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    if broker_key != "log.retention.ms" || get(broker_key).is_some() {
        return Ok(get(broker_key).unwrap_or_default().to_string());
    }
    for (key, unit_ms) in [
        ("log.retention.minutes", 60_000i64),
        ("log.retention.hours", 3_600_000),
    ] {
        if let Some(v) = get(key) {
            let n: i64 = v
                .parse()
                .map_err(|e: std::num::ParseIntError| ConfigError::Invalid {
                    key: key.to_string(),
                    value: v.to_string(),
                    msg: e.to_string(),
                })?;
            return Ok(if n < 0 { -1 } else { n.saturating_mul(unit_ms) }.to_string());
        }
    }
    Ok(String::new())
}

/// Broker-level defaults of every topic config.
#[derive(Clone, Debug, Default)]
pub struct TopicDefaults {
    values: BTreeMap<&'static str, String>,
}

impl TopicDefaults {
    pub fn from_broker(raw: &BTreeMap<String, String>) -> Result<TopicDefaults, ConfigError> {
        let mut values = BTreeMap::new();
        for (topic_key, broker_key, _) in TOPIC_KEYS {
            let v = broker_value(raw, broker_key)?;
            validate(topic_key, &v).map_err(|msg| ConfigError::Invalid {
                key: broker_key.to_string(),
                value: v.clone(),
                msg,
            })?;
            values.insert(*topic_key, v);
        }
        Ok(TopicDefaults { values })
    }

    /// Resolves a topic's overrides over these defaults.
    pub fn resolve(&self, overrides: &BTreeMap<String, String>) -> TopicConfig {
        let get = |k: &str| {
            overrides
                .get(k)
                .or_else(|| self.values.get(k))
                .map(String::as_str)
                .unwrap_or("")
        };
        let long = |k: &str| get(k).trim().parse::<i64>().unwrap_or(i64::MAX);
        // Validated values; a fallback only for a stored override written by an older version.
        let ms = |k: &str| u64::try_from(long(k)).unwrap_or(0);
        let policy = get("cleanup.policy");
        let has = |p: &str| policy.split(',').any(|x| x.trim() == p);
        TopicConfig {
            segment_bytes: long("segment.bytes").max(14) as u64,
            segment_ms: long("segment.ms").max(1) as u64,
            index_interval_bytes: long("index.interval.bytes").clamp(0, i64::from(u32::MAX)) as u32,
            cleanup_policy: get("cleanup.policy").to_string(),
            max_message_bytes: long("max.message.bytes").clamp(0, i64::from(i32::MAX)) as usize,
            timestamp_type: if get("message.timestamp.type") == "LogAppendTime" {
                TimestampType::LogAppendTime
            } else {
                TimestampType::CreateTime
            },
            min_insync_replicas: long("min.insync.replicas") as i32,
            flush_messages: long("flush.messages").max(1) as u64,
            flush_ms: long("flush.ms").max(0) as u64,
            flush_on_ack: get("flush.on.ack").eq_ignore_ascii_case("true"),
            cleanup: CleanupPolicy {
                delete: has("delete"),
                compact: has("compact"),
            },
            retention_ms: long("retention.ms").max(-1),
            retention_bytes: long("retention.bytes"),
            delete_retention_ms: ms("delete.retention.ms"),
            min_cleanable_dirty_ratio: get("min.cleanable.dirty.ratio")
                .trim()
                .parse::<f64>()
                .map_or(0.5, |r| r.clamp(0.0, 1.0)),
            min_compaction_lag_ms: ms("min.compaction.lag.ms"),
            // Kafka's "never" is i64::MAX; the log's is u64::MAX.
            max_compaction_lag_ms: match long("max.compaction.lag.ms") {
                i64::MAX => u64::MAX,
                n => n.max(1) as u64,
            },
        }
    }

    /// Every topic config with its effective value and whether the topic overrides it.
    pub fn describe<'a>(
        &'a self,
        overrides: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = (&'static str, String, bool)> + 'a {
        let enforced = TOPIC_KEYS
            .iter()
            .map(move |(k, _, _)| (*k, self.values.get(k).cloned().unwrap_or_default()));
        let stored = STORED_ONLY_KEYS.iter().map(|(k, v)| (*k, v.to_string()));
        enforced
            .chain(stored)
            .map(move |(k, default)| match overrides.get(k) {
                Some(v) => (k, v.clone(), true),
                None => (k, default, false),
            })
    }
}

/// A topic's effective configuration.
#[derive(Clone, Debug)]
pub struct TopicConfig {
    pub segment_bytes: u64,
    pub segment_ms: u64,
    pub index_interval_bytes: u32,
    pub cleanup_policy: String,
    pub max_message_bytes: usize,
    pub timestamp_type: TimestampType,
    pub min_insync_replicas: i32,
    pub flush_messages: u64,
    pub flush_ms: u64,
    pub flush_on_ack: bool,
    /// `cleanup.policy` as flags.
    pub cleanup: CleanupPolicy,
    /// `retention.ms` (-1: unlimited).
    pub retention_ms: i64,
    /// `retention.bytes` (negative: unlimited).
    pub retention_bytes: i64,
    pub delete_retention_ms: u64,
    pub min_cleanable_dirty_ratio: f64,
    pub min_compaction_lag_ms: u64,
    /// u64::MAX: never.
    pub max_compaction_lag_ms: u64,
}

impl TopicConfig {
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: self.segment_bytes,
            segment_ms: self.segment_ms,
            index_interval_bytes: self.index_interval_bytes,
            flush_messages: self.flush_messages,
            flush_ms: self.flush_ms,
            timestamp_type: self.timestamp_type,
            cleanup: self.cleanup,
            retention_ms: self.retention_ms,
            retention_bytes: self.retention_bytes,
            delete_retention_ms: self.delete_retention_ms,
            min_cleanable_dirty_ratio: self.min_cleanable_dirty_ratio,
            min_compaction_lag_ms: self.min_compaction_lag_ms,
            max_compaction_lag_ms: self.max_compaction_lag_ms,
            // Readable only once durable when acks=all waits for the fdatasync (design.md).
            reads_durable_only: self.flush_on_ack,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_follows_kafka_rules() {
        assert!(validate("retention.ms", "-1").is_ok());
        assert!(validate("retention.ms", "-2").is_err());
        assert!(validate("segment.bytes", "13").is_err());
        assert!(validate("cleanup.policy", "compact,delete").is_ok());
        assert!(validate("cleanup.policy", "shred").is_err());
        assert!(validate("message.timestamp.type", "LogAppendTime").is_ok());
        assert!(validate("no.such.config", "1").is_err());
        assert!(validate("compression.type", "lz4").is_ok());
        assert!(validate("flush.on.ack", "maybe").is_err());
        assert!(validate("min.cleanable.dirty.ratio", "0.1").is_ok());
        assert!(validate("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(validate("max.compaction.lag.ms", "0").is_err());
    }

    #[test]
    fn retention_falls_back_to_minutes_then_hours() {
        // Every topic default set (log.retention.ms unset), plus `pairs`.
        let raw = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            let mut raw: BTreeMap<String, String> = TOPIC_KEYS
                .iter()
                .filter(|(_, b, _)| *b != "log.retention.ms")
                .map(|(_, b, kind)| {
                    let v = match kind {
                        Kind::Bool => "true",
                        Kind::TimestampType => "CreateTime",
                        Kind::CleanupPolicy => "delete",
                        Kind::Double { .. } => "0.5",
                        _ => "100",
                    };
                    (b.to_string(), v.to_string())
                })
                .collect();
            raw.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            raw
        };
        let ms = |r: BTreeMap<String, String>| {
            TopicDefaults::from_broker(&r)
                .unwrap()
                .resolve(&BTreeMap::new())
                .retention_ms
        };
        assert_eq!(ms(raw(&[("log.retention.hours", "2")])), 7_200_000);
        assert_eq!(
            ms(raw(&[
                ("log.retention.hours", "2"),
                ("log.retention.minutes", "3")
            ])),
            180_000
        );
        assert_eq!(
            ms(raw(&[
                ("log.retention.minutes", "3"),
                ("log.retention.ms", "7")
            ])),
            7
        );
        assert_eq!(ms(raw(&[("log.retention.hours", "-1")])), -1);
        let compact = TopicDefaults::from_broker(&raw(&[
            ("log.cleanup.policy", "compact,delete"),
            ("log.retention.hours", "1"),
        ]))
        .unwrap();
        let c = compact.resolve(&BTreeMap::new()).log_config();
        assert!(c.cleanup.compact && c.cleanup.delete);
    }

    #[test]
    fn overrides_win_over_broker_defaults() {
        let mut raw = BTreeMap::new();
        for (_, broker_key, kind) in TOPIC_KEYS {
            let v = match kind {
                Kind::Bool => "true",
                Kind::TimestampType => "CreateTime",
                Kind::CleanupPolicy => "delete",
                Kind::Double { .. } => "0.25",
                _ => "100",
            };
            raw.insert(broker_key.to_string(), v.to_string());
        }
        let d = TopicDefaults::from_broker(&raw).unwrap();
        let mut o = BTreeMap::new();
        o.insert("retention.ms".to_string(), "5".to_string());
        let c = d.resolve(&o);
        assert_eq!(c.segment_bytes, 100);
        assert_eq!(c.retention_ms, 5);
        assert_eq!(c.min_cleanable_dirty_ratio, 0.25);
        assert_eq!(c.log_config().delete_retention_ms, 100);
        assert!(c.flush_on_ack);
        let described: Vec<_> = d
            .describe(&o)
            .filter(|(_, _, overridden)| *overridden)
            .collect();
        assert!(d
            .describe(&o)
            .any(|(k, v, _)| k == "compression.type" && v == "producer"));
        assert_eq!(described, vec![("retention.ms", "5".to_string(), true)]);
    }
}
