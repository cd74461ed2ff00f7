//! What a run does, from a TOML file (`--workload`), flags, or both (flags win).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// A workload, in the spirit of the OpenMessaging Benchmark's workload files.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    /// The topic, or with `topics` > 1 the prefix of `<topic>-0` .. `<topic>-<N-1>`.
    pub topic: String,
    pub topics: u32,
    /// Partitions to create each topic with (an existing topic keeps its own count).
    pub partitions: i32,
    /// Producer connections per topic; each has its own writer and reader thread.
    pub producers: u32,
    /// Consumer connections per topic; each reads its share of the topic's partitions.
    pub consumers: u32,
    /// When set, each topic's consumers join this consumer group (`<group>-<i>` with several
    /// topics; classic protocol, range assignor) and commit their positions every 5 s;
    /// otherwise partitions are split among them statically.
    pub group: Option<String>,
    /// Where consumers start: "latest" (end-to-end latency) or "earliest" (catch-up reads; with
    /// no producers the run ends when the consumers reach the end offsets of its start).
    pub consume_from: String,
    pub message_bytes: usize,
    /// "none" (null keys, sticky partition per batch), "round-robin:N" or "random:N" (N keys,
    /// partitioned by murmur2 as Kafka's default partitioner does).
    pub keys: String,
    /// 0, 1 or -1 (all).
    pub acks: i16,
    /// none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// How long a partition's records may wait for more before their batch is sent.
    pub linger_ms: f64,
    /// A partition's batch is sent once it holds this many bytes.
    pub batch_bytes: usize,
    /// Produce requests in flight per producer connection.
    pub max_inflight: usize,
    /// Offered load over all producers of all topics: "max", messages per second ("50000"), or
    /// bytes per second ("100MB/s", "64MiB/s").
    pub rate: String,
    /// Seconds at the start whose results are not counted.
    pub warmup_s: f64,
    /// Measured seconds after the warm-up.
    pub duration_s: f64,
    /// Upper bound on the messages the run sends (over all producers of all topics).
    pub max_messages: u64,
    pub fetch_max_wait_ms: i32,
    pub fetch_partition_max_bytes: i32,
    pub fetch_max_bytes: i32,
    /// Topic configs sent in CreateTopics when the run creates its topic(s), as a table
    /// (`topic_configs = { "cleanup.policy" = "compact", "segment.bytes" = 1048576 }`) or a list
    /// of "key=value" strings. A topic that exists already keeps its own configs.
    #[serde(deserialize_with = "topic_configs_from_table_or_list")]
    pub topic_configs: BTreeMap<String, String>,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            topic: "strom-bench".into(),
            topics: 1,
            partitions: 1,
            producers: 1,
            consumers: 0,
            group: None,
            consume_from: "latest".into(),
            message_bytes: 1024,
            keys: "none".into(),
            acks: 1,
            compression: "none".into(),
            linger_ms: 5.0,
            batch_bytes: 1_000_000,
            max_inflight: 5,
            rate: "max".into(),
            warmup_s: 2.0,
            duration_s: 10.0,
            max_messages: 1_000_000_000,
            fetch_max_wait_ms: 500,
            fetch_partition_max_bytes: 1024 * 1024,
            fetch_max_bytes: 50 * 1024 * 1024,
            topic_configs: BTreeMap::new(),
        }
    }
}

/// Offered load.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    Max,
    /// Messages per second over all producers.
    Messages(f64),
}

/// How records get keys.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Keys {
    None,
    RoundRobin(u32),
    Random(u32),
}

impl Workload {
    pub fn from_toml(text: &str) -> Result<Workload, String> {
        toml::from_str(text).map_err(|e| format!("workload file: {e}"))
    }

    pub fn rate(&self) -> Result<Rate, String> {
        parse_rate(&self.rate, self.message_bytes)
    }

    pub fn keys(&self) -> Result<Keys, String> {
        parse_keys(&self.keys)
    }

    /// The topic names the run uses.
    pub fn topic_names(&self) -> Vec<String> {
        if self.topics <= 1 {
            return vec![self.topic.clone()];
        }
        (0..self.topics)
            .map(|i| format!("{}-{i}", self.topic))
            .collect()
    }

    /// The consumer group of the `i`th topic, if consumers use groups.
    pub fn group_of(&self, i: usize) -> Option<String> {
        self.group.as_ref().map(|g| {
            if self.topics <= 1 {
                g.clone()
            } else {
                format!("{g}-{i}")
            }
        })
    }

    /// Checks every field, so a bad workload fails before anything is sent.
    pub fn validate(&self) -> Result<(), String> {
        self.rate()?;
        self.keys()?;
        super::records::compression_from_name(&self.compression)?;
        let check = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(format!("workload: {what}"))
            }
        };
        check(!self.topic.is_empty(), "topic must not be empty")?;
        check(self.partitions >= 1, "partitions must be at least 1")?;
        check(
            self.producers + self.consumers >= 1,
            "needs at least one producer or consumer",
        )?;
        check((1..=1000).contains(&self.topics), "topics must be 1..=1000")?;
        check(
            self.topics * self.producers <= 256 && self.topics * self.consumers <= 256,
            "at most 256 producers and 256 consumers over all topics",
        )?;
        check(
            matches!(self.consume_from.as_str(), "latest" | "earliest"),
            "consume_from is latest or earliest",
        )?;
        check(
            (8..=64 * 1024 * 1024).contains(&self.message_bytes),
            "message_bytes must be 8..=64 MiB (8 carry the send time)",
        )?;
        check(matches!(self.acks, -1..=1), "acks is 0, 1 or -1")?;
        check(
            self.linger_ms >= 0.0 && self.linger_ms <= 60_000.0,
            "linger_ms must be 0..=60000",
        )?;
        check(self.batch_bytes >= 1, "batch_bytes must be positive")?;
        check(
            (1..=1024).contains(&self.max_inflight),
            "max_inflight must be 1..=1024",
        )?;
        check(
            self.warmup_s >= 0.0 && self.duration_s > 0.0,
            "duration_s must be positive, warmup_s not negative",
        )?;
        check(
            self.warmup_s + self.duration_s <= 24.0 * 3600.0,
            "a run lasts at most 24 hours",
        )?;
        check(self.max_messages >= 1, "max_messages must be positive")?;
        check(
            self.fetch_partition_max_bytes >= 1 && self.fetch_max_bytes >= 1,
            "fetch sizes must be positive",
        )?;
        check(
            self.topic_configs.keys().all(|k| !k.trim().is_empty()),
            "topic config names must not be empty",
        )?;
        let compacted = self
            .topic_configs
            .get("cleanup.policy")
            .is_some_and(|p| p.split(',').any(|p| p.trim() == "compact"));
        check(
            !(compacted && self.producers > 0 && self.keys == "none"),
            "cleanup.policy=compact needs keyed records (--keys random:N or round-robin:N)",
        )?;
        Ok(())
    }
}

pub fn parse_rate(s: &str, message_bytes: usize) -> Result<Rate, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("max") {
        return Ok(Rate::Max);
    }
    let bad = || {
        format!("rate {s:?}: use max, messages per second (50000) or bytes per second (100MB/s, 64MiB/s)")
    };
    let units = [
        ("MiB/s", 1024.0 * 1024.0),
        ("KiB/s", 1024.0),
        ("MB/s", 1e6),
        ("KB/s", 1e3),
        ("B/s", 1.0),
    ];
    let (number, bytes_per_unit) = units
        .iter()
        .find_map(|(suffix, scale)| s.strip_suffix(suffix).map(|n| (n, Some(*scale))))
        .unwrap_or((s.strip_suffix("/s").unwrap_or(s), None));
    let value: f64 = number.trim().parse().map_err(|_| bad())?;
    if !(value.is_finite() && value > 0.0) {
        return Err(bad());
    }
    Ok(Rate::Messages(match bytes_per_unit {
        Some(scale) => value * scale / message_bytes as f64,
        None => value,
    }))
}

/// One `KEY=VALUE` topic config (`--topic-config`).
pub fn parse_topic_config(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!(
            "topic config {s:?}: use KEY=VALUE, e.g. cleanup.policy=compact"
        )),
    }
}

/// `topic_configs` of a workload file: a table whose values are strings, numbers or booleans,
/// or a list of "key=value" strings.
fn topic_configs_from_table_or_list<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    use serde::de::Error;
    use serde_json::Value;
    let scalar = |k: &str, v: Value| match v {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(D::Error::custom(format!(
            "topic_configs: the value of {k:?} must be a string, number or boolean"
        ))),
    };
    match Value::deserialize(d)? {
        Value::Object(table) => table
            .into_iter()
            .map(|(k, v)| scalar(&k, v).map(|v| (k, v)))
            .collect(),
        Value::Array(list) => {
            let mut out = BTreeMap::new();
            for item in list {
                let Value::String(s) = item else {
                    return Err(D::Error::custom(
                        "topic_configs: a list holds \"key=value\" strings",
                    ));
                };
                let (k, v) = parse_topic_config(&s).map_err(D::Error::custom)?;
                if out.insert(k.clone(), v).is_some() {
                    return Err(D::Error::custom(format!(
                        "topic_configs: {k} is given twice"
                    )));
                }
            }
            Ok(out)
        }
        _ => Err(D::Error::custom(
            "topic_configs: a table of config names to values, or a list of \"key=value\" strings",
        )),
    }
}

pub fn parse_keys(s: &str) -> Result<Keys, String> {
    let bad = || format!("keys {s:?}: use none, round-robin:N or random:N (N >= 1)");
    if s == "none" {
        return Ok(Keys::None);
    }
    let (kind, n) = s.split_once(':').ok_or_else(bad)?;
    let n: u32 = n.parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    match kind {
        "round-robin" => Ok(Keys::RoundRobin(n)),
        "random" => Ok(Keys::Random(n)),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_messages_and_bytes() {
        assert_eq!(parse_rate("max", 1024), Ok(Rate::Max));
        assert_eq!(parse_rate("50000", 1024), Ok(Rate::Messages(50000.0)));
        assert_eq!(parse_rate("2000/s", 1024), Ok(Rate::Messages(2000.0)));
        assert_eq!(parse_rate("100MB/s", 1000), Ok(Rate::Messages(100_000.0)));
        assert_eq!(parse_rate("1MiB/s", 1024), Ok(Rate::Messages(1024.0)));
        assert!(parse_rate("fast", 1024).is_err());
        assert!(parse_rate("0", 1024).is_err());
        assert!(parse_rate("-5", 1024).is_err());
    }

    #[test]
    fn keys_parse() {
        assert_eq!(parse_keys("none"), Ok(Keys::None));
        assert_eq!(parse_keys("round-robin:10"), Ok(Keys::RoundRobin(10)));
        assert_eq!(parse_keys("random:1000"), Ok(Keys::Random(1000)));
        assert!(parse_keys("random:0").is_err());
        assert!(parse_keys("sequential:5").is_err());
    }

    #[test]
    fn a_workload_file_overrides_defaults_and_rejects_unknown_fields() {
        let w = Workload::from_toml(
            "partitions = 6\nproducers = 2\nrate = \"10MB/s\"\nkeys = \"random:100\"\n",
        )
        .unwrap();
        assert_eq!((w.partitions, w.producers, w.message_bytes), (6, 2, 1024));
        w.validate().unwrap();
        assert!(Workload::from_toml("partitons = 6\n")
            .unwrap_err()
            .contains("partitons"));
        let many = Workload {
            topics: 3,
            group: Some("g".into()),
            ..Default::default()
        };
        assert_eq!(
            many.topic_names(),
            vec!["strom-bench-0", "strom-bench-1", "strom-bench-2"]
        );
        assert_eq!(many.group_of(2).as_deref(), Some("g-2"));
        assert_eq!(Workload::default().topic_names(), vec!["strom-bench"]);
        assert!(Workload {
            topics: 100,
            producers: 3,
            ..Default::default()
        }
        .validate()
        .is_err());
        let bad = Workload {
            acks: 2,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn topic_configs_come_as_a_table_or_a_list() {
        let table = "keys = \"random:10\"\ntopic_configs = { \"cleanup.policy\" = \"compact\", \"segment.bytes\" = 65536 }\n";
        let w = Workload::from_toml(table).unwrap();
        assert_eq!(
            w.topic_configs.get("cleanup.policy").map(String::as_str),
            Some("compact")
        );
        assert_eq!(
            w.topic_configs.get("segment.bytes").map(String::as_str),
            Some("65536")
        );
        w.validate().unwrap();
        let list = Workload::from_toml(
            "topic_configs = [\"retention.bytes=1048576\", \"cleanup.policy = delete\"]\n",
        )
        .unwrap();
        assert_eq!(list.topic_configs.len(), 2);
        assert_eq!(list.topic_configs["cleanup.policy"], "delete");
        assert!(Workload::from_toml("topic_configs = [\"nonsense\"]\n")
            .unwrap_err()
            .contains("KEY=VALUE"));
        assert!(Workload::from_toml("topic_configs = [\"a=1\", \"a=2\"]\n")
            .unwrap_err()
            .contains("twice"));
        assert!(Workload::from_toml("topic_configs = { a = [1] }\n").is_err());
        // A compacted topic refuses records without a key: caught before the run starts.
        let unkeyed =
            Workload::from_toml("topic_configs = { \"cleanup.policy\" = \"compact,delete\" }\n")
                .unwrap();
        assert!(unkeyed.validate().unwrap_err().contains("keyed records"));
        assert_eq!(
            parse_topic_config("segment.bytes=1048576"),
            Ok(("segment.bytes".into(), "1048576".into()))
        );
        assert!(parse_topic_config("=5").is_err());
    }
}
