//! The Prometheus text exposition format (version 0.0.4) and the `/v1/status` JSON, from the
//! merged shard snapshots.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{Display, Write};
use std::sync::Arc;

use kafka_protocol::messages::ApiKey;
use strom_storage::metrics::LatencyHistogram;

use super::stages::{ApiGroup, Stage, StageHistograms};
use super::{ApiStats, PartitionGauges, ProcessInfo, Snapshot, TopicBytes};
use crate::metadata::ClusterMeta;

/// Escapes a label value: backslash, double quote and line feed, as the text format requires.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &LatencyHistogram) {
        let bucket = format!("{name}_bucket");
        for (bound, n) in h.cumulative() {
            let le = bound.map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&bucket, &l, n);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds);
        self.sample(&format!("{name}_count"), labels, h.count);
    }
}

/// The request stage histograms of every shard, merged, as a Prometheus summary (quantiles
/// since the broker started; quantile 1 is the maximum).
fn render_stages(o: &mut Out, snaps: &[Snapshot]) {
    let mut merged = StageHistograms::default();
    for s in snaps {
        merged.merge(&s.stages);
    }
    const NAME: &str = "strom_request_stage_seconds";
    o.family(
        NAME,
        "summary",
        "Where requests spend their time, by API (Produce, Fetch, other) and stage: schedule, decode, hop_out, execute, hop_back, encode, queue, send, and total (frame read to response written). Quantile 1 is the maximum.",
    );
    for api in ApiGroup::ALL {
        for stage in Stage::ALL {
            let h = merged.get(api, stage);
            if h.is_empty() {
                continue;
            }
            let labels = [("api", api.name()), ("stage", stage.name())];
            for q in ["0.5", "0.9", "0.99", "0.999", "1"] {
                let v = if q == "1" {
                    h.max()
                } else {
                    h.value_at_quantile(q.parse().unwrap_or(1.0))
                };
                let mut l = labels.to_vec();
                l.push(("quantile", q));
                o.sample(NAME, &l, format!("{:.6}", v as f64 / 1e6));
            }
            o.sample(
                &format!("{NAME}_sum"),
                &labels,
                format!("{:.6}", h.mean() * h.len() as f64 / 1e6),
            );
            o.sample(&format!("{NAME}_count"), &labels, h.len());
        }
    }
}

/// A per-partition gauge: name, help, value.
type PartitionMetric = (&'static str, &'static str, fn(&PartitionGauges) -> i64);
/// A per-shard metric: name, type, help, value.
type ShardMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Snapshot) -> u64,
);

fn api_name(key: i16) -> String {
    ApiKey::try_from(key).map_or_else(|_| format!("Unknown{key}"), |a| format!("{a:?}"))
}

/// Renders the merged snapshots in the Prometheus text format.
pub fn render(process: &ProcessInfo, snaps: &[Snapshot]) -> String {
    let mut o = Out(String::with_capacity(16 * 1024));
    o.family(
        "strom_build_info",
        "gauge",
        "Always 1; the labels say which build is running.",
    );
    o.sample("strom_build_info", &[("version", process.version)], 1);
    o.family(
        "strom_uptime_seconds",
        "gauge",
        "Seconds since the broker process started.",
    );
    o.sample(
        "strom_uptime_seconds",
        &[],
        format!("{:.3}", process.uptime_seconds),
    );
    o.family(
        "strom_ready",
        "gauge",
        "1 once every shard has finished recovery, else 0.",
    );
    o.sample("strom_ready", &[], u8::from(process.ready()));
    o.family(
        "strom_shards",
        "gauge",
        "Shards (pinned cores) of this broker.",
    );
    o.sample("strom_shards", &[], process.shards);
    o.family(
        "strom_shards_recovered",
        "gauge",
        "Shards that have finished recovery.",
    );
    o.sample("strom_shards_recovered", &[], process.shards_recovered);

    let mut apis: BTreeMap<String, ApiStats> = BTreeMap::new();
    for s in snaps {
        for (key, st) in &s.requests {
            let e = apis.entry(api_name(*key)).or_default();
            e.requests += st.requests;
            e.errors += st.errors;
            e.latency.merge(&st.latency);
        }
    }
    o.family(
        "strom_requests_total",
        "counter",
        "Kafka requests handled, by API.",
    );
    for (api, st) in &apis {
        o.sample("strom_requests_total", &[("api", api)], st.requests);
    }
    o.family(
        "strom_request_errors_total",
        "counter",
        "Kafka requests whose response carried an error code or that closed the connection, by API.",
    );
    for (api, st) in &apis {
        o.sample("strom_request_errors_total", &[("api", api)], st.errors);
    }
    o.family(
        "strom_request_latency_seconds",
        "histogram",
        "Time from a decoded request to its encoded response, by API.",
    );
    for (api, st) in &apis {
        o.histogram(
            "strom_request_latency_seconds",
            &[("api", api)],
            &st.latency,
        );
    }

    render_stages(&mut o, snaps);

    let mut topics: BTreeMap<Arc<str>, TopicBytes> = BTreeMap::new();
    for s in snaps {
        for (t, b) in &s.topic_bytes {
            let e = topics.entry(t.clone()).or_default();
            e.bytes_in += b.bytes_in;
            e.bytes_out += b.bytes_out;
        }
    }
    o.family(
        "strom_topic_bytes_in_total",
        "counter",
        "Record-batch bytes appended by Produce requests, by topic.",
    );
    for (t, b) in &topics {
        o.sample("strom_topic_bytes_in_total", &[("topic", t)], b.bytes_in);
    }
    o.family(
        "strom_topic_bytes_out_total",
        "counter",
        "Record-batch bytes returned by Fetch requests, by topic.",
    );
    for (t, b) in &topics {
        o.sample("strom_topic_bytes_out_total", &[("topic", t)], b.bytes_out);
    }

    let mut parts: Vec<&PartitionGauges> = snaps.iter().flat_map(|s| &s.partitions).collect();
    parts.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let gauges: [PartitionMetric; 5] = [
        (
            "strom_partition_log_end_offset",
            "Offset the next appended record gets.",
            |p| p.log_end_offset,
        ),
        (
            "strom_partition_high_watermark",
            "Offset below which records are visible to consumers.",
            |p| p.high_watermark,
        ),
        (
            "strom_partition_durable_end_offset",
            "Offset below which records are fdatasynced (cannot be lost to a power loss).",
            |p| p.durable_end_offset,
        ),
        (
            "strom_partition_log_start_offset",
            "First offset still in the log.",
            |p| p.log_start_offset,
        ),
        (
            "strom_partition_size_bytes",
            "Bytes of the partition's segment files.",
            |p| p.size_bytes as i64,
        ),
    ];
    for (name, help, value) in gauges {
        o.family(name, "gauge", help);
        for p in &parts {
            let partition = p.partition.to_string();
            o.sample(
                name,
                &[("topic", &p.topic), ("partition", &partition)],
                value(p),
            );
        }
    }

    let mut shards: Vec<&Snapshot> = snaps.iter().collect();
    shards.sort_by_key(|s| s.shard);
    let per_shard: [ShardMetric; 16] = [
        (
            "strom_shard_task_queue_depth",
            "gauge",
            "Work waiting or running on the shard: Kafka requests in flight, operations from other shards being executed, and messages queued to other shards.",
            |s| s.queue_depth,
        ),
        ("strom_shard_cross_shard_messages_total", "counter", "Messages this shard sent to other shards (requests and replies).", |s| {
            s.cross_shard_messages
        }),
        ("strom_shard_cross_shard_channel_full_total", "counter", "Times a message to another shard found the channel full and waited.", |s| {
            s.cross_shard_channel_full
        }),
        ("strom_connections", "gauge", "Client connections open, by shard.", |s| s.connections_open),
        ("strom_connections_accepted_total", "counter", "Client connections accepted, by shard.", |s| s.connections_accepted),
        ("strom_connections_refused_total", "counter", "Client connections closed at accept by max.connections or max.connections.per.ip.", |s| {
            s.connections_refused
        }),
        ("strom_connections_idle_closed_total", "counter", "Connections closed for connections.max.idle.ms or a request body that stopped arriving.", |s| {
            s.connections_idle_closed
        }),
        ("strom_connections_migrated_total", "counter", "Connections this shard handed to the shard that owns the partitions they use (connections.migrate.to.owner).", |s| {
            s.connections_migrated
        }),
        ("strom_request_bytes_inflight", "gauge", "Request bytes charged to the shard's share of queued.max.request.bytes.", |s| {
            s.request_bytes_inflight
        }),
        ("strom_request_bytes_budget", "gauge", "The shard's share of queued.max.request.bytes.", |s| s.request_bytes_budget),
        ("strom_request_budget_waits_total", "counter", "Times a connection stopped reading until its next request fit the budget.", |s| {
            s.request_budget_waits
        }),
        ("strom_log_sync_failures_total", "counter", "fdatasync and directory fsync calls that failed; the log involved refuses writes until the broker restarts.", |s| {
            s.sync_failures
        }),
        ("strom_partitions_sync_failed", "gauge", "Partition logs (consumer-group offsets logs included) that refuse writes after a failed fdatasync.", |s| {
            s.logs_sync_failed
        }),
        ("strom_fetch_waits", "gauge", "Long-poll fetch waits parked on the shard's partitions.", |s| s.fetch_waits),
        ("strom_shard_cross_shard_outbox_full_total", "counter", "Requests to another shard refused because its outbox was full.", |s| {
            s.mesh_outbox_full
        }),
        ("strom_shard_cross_shard_cancelled_total", "counter", "Waits other shards cancelled while they ran here (their fetch had its answer).", |s| {
            s.mesh_cancelled
        }),
    ];
    for (name, kind, help, value) in per_shard {
        o.family(name, kind, help);
        for s in &shards {
            o.sample(name, &[("shard", &s.shard.to_string())], value(s));
        }
    }

    let hw: HashMap<(&str, i32), i64> = parts
        .iter()
        .map(|p| ((&*p.topic, p.partition), p.high_watermark))
        .collect();
    let mut lags: Vec<(&str, &str, i32, i64)> = snaps
        .iter()
        .flat_map(|s| &s.committed)
        .filter_map(|c| {
            hw.get(&(&*c.topic, c.partition)).map(|h| {
                (
                    c.group.as_str(),
                    &*c.topic,
                    c.partition,
                    (h - c.offset).max(0),
                )
            })
        })
        .collect();
    lags.sort();
    o.family(
        "strom_group_lag",
        "gauge",
        "High watermark minus the committed offset, per group and partition (groups with committed offsets).",
    );
    for (g, t, p, lag) in lags {
        o.sample(
            "strom_group_lag",
            &[("group", g), ("topic", t), ("partition", &p.to_string())],
            lag,
        );
    }

    let mut fsync = LatencyHistogram::default();
    for s in snaps {
        fsync.merge(&s.fsync);
    }
    o.family(
        "strom_fsync_latency_seconds",
        "histogram",
        "Latency of fdatasync and directory fsync calls of the logs.",
    );
    o.histogram("strom_fsync_latency_seconds", &[], &fsync);
    o.0
}

/// The cluster-mode gauges of `/metrics`, as this node sees the controller quorum.
#[derive(Debug, Clone, Default)]
pub struct ClusterGauges {
    /// This node.
    pub node_id: i32,
    /// The active controller, -1 while none.
    pub controller_id: i32,
    /// The controller quorum's Raft term.
    pub term: u64,
    /// Index of the last metadata command this node applied.
    pub applied_index: u64,
    /// Registered brokers that are unfenced.
    pub brokers_live: usize,
    /// Registered brokers that are fenced.
    pub brokers_fenced: usize,
    /// Partitions of the cluster.
    pub partitions: usize,
    /// Partitions without a live leader.
    pub partitions_offline: usize,
    /// Partitions this node leads.
    pub partitions_led: usize,
}

/// The cluster-mode families of `/metrics`.
pub fn render_cluster(c: &ClusterGauges) -> String {
    let mut o = Out(String::new());
    o.family(
        "strom_cluster_controller_active",
        "gauge",
        "1 if this node is the active controller of the quorum, else 0.",
    );
    o.sample(
        "strom_cluster_controller_active",
        &[],
        u8::from(c.controller_id == c.node_id),
    );
    o.family(
        "strom_cluster_controller_id",
        "gauge",
        "Node id of the active controller as this node sees it; -1 while there is none.",
    );
    o.sample("strom_cluster_controller_id", &[], c.controller_id);
    o.family(
        "strom_cluster_raft_term",
        "gauge",
        "Raft term of the controller quorum; it grows with every election.",
    );
    o.sample("strom_cluster_raft_term", &[], c.term);
    o.family(
        "strom_cluster_metadata_applied_index",
        "gauge",
        "Index of the last cluster metadata command this node applied.",
    );
    o.sample("strom_cluster_metadata_applied_index", &[], c.applied_index);
    o.family(
        "strom_cluster_brokers",
        "gauge",
        "Registered brokers by state: live (unfenced) or fenced (missed heartbeats).",
    );
    o.sample(
        "strom_cluster_brokers",
        &[("state", "live")],
        c.brokers_live,
    );
    o.sample(
        "strom_cluster_brokers",
        &[("state", "fenced")],
        c.brokers_fenced,
    );
    o.family(
        "strom_cluster_partitions",
        "gauge",
        "Partitions of the cluster: all, offline (no live leader), and led by this node.",
    );
    o.sample(
        "strom_cluster_partitions",
        &[("state", "all")],
        c.partitions,
    );
    o.sample(
        "strom_cluster_partitions",
        &[("state", "offline")],
        c.partitions_offline,
    );
    o.sample(
        "strom_cluster_partitions",
        &[("state", "led_here")],
        c.partitions_led,
    );
    o.0
}

/// The replication families of `/metrics` (cluster mode), from every shard's leaders and
/// followers.
pub fn render_replication(snaps: &[Snapshot]) -> String {
    let mut o = Out(String::new());
    let leaders: Vec<&super::LeaderGauges> = snaps.iter().flat_map(|s| &s.leaders).collect();
    let sum = |f: fn(&Snapshot) -> u64| snaps.iter().map(f).sum::<u64>();
    o.family(
        "strom_cluster_under_replicated_partitions",
        "gauge",
        "Partitions this node leads whose ISR is smaller than their replica set.",
    );
    o.sample(
        "strom_cluster_under_replicated_partitions",
        &[],
        leaders.iter().filter(|l| l.isr < l.replicas).count(),
    );
    o.family(
        "strom_cluster_under_min_isr_partitions",
        "gauge",
        "Partitions this node leads whose ISR is below min.insync.replicas: acks=all is refused and the high watermark stops.",
    );
    o.sample(
        "strom_cluster_under_min_isr_partitions",
        &[],
        leaders.iter().filter(|l| l.isr < l.min_insync).count(),
    );
    o.family(
        "strom_cluster_followed_partitions",
        "gauge",
        "Partitions this node holds a follower replica of.",
    );
    o.sample(
        "strom_cluster_followed_partitions",
        &[],
        sum(|s| s.followed),
    );
    o.family(
        "strom_cluster_isr_shrinks_total",
        "counter",
        "ISR shrinks this node's leaders proposed to the controller (a follower fell behind for replica.lag.time.max.ms).",
    );
    o.sample(
        "strom_cluster_isr_shrinks_total",
        &[],
        sum(|s| s.isr_shrinks),
    );
    o.family(
        "strom_cluster_isr_expands_total",
        "counter",
        "ISR expansions this node's leaders proposed to the controller (a follower caught up).",
    );
    o.sample(
        "strom_cluster_isr_expands_total",
        &[],
        sum(|s| s.isr_expands),
    );
    o.family(
        "strom_cluster_replica_lag_messages",
        "gauge",
        "Per follower of a partition this node leads: offsets between the leader's log end and the follower's durable end at its last fetch; -1 before its first fetch.",
    );
    for l in &leaders {
        let partition = l.partition.to_string();
        for (node, lag) in &l.followers {
            o.sample(
                "strom_cluster_replica_lag_messages",
                &[
                    ("topic", &l.topic),
                    ("partition", &partition),
                    ("replica", &node.to_string()),
                ],
                *lag,
            );
        }
    }
    o.0
}

/// The `/v1/status` document: every topic of the metadata, with the gauges of the partitions
/// whose shard answered (null otherwise, e.g. while it is still recovering).
pub fn status_json(
    process: &ProcessInfo,
    meta: &ClusterMeta,
    snaps: &[Snapshot],
) -> serde_json::Value {
    use serde_json::json;
    let by_partition: HashMap<(&str, i32), &PartitionGauges> = snaps
        .iter()
        .flat_map(|s| &s.partitions)
        .map(|p| ((&*p.topic, p.partition), p))
        .collect();
    let topics: Vec<serde_json::Value> = meta
        .topics
        .values()
        .map(|t| {
            let partitions: Vec<serde_json::Value> = t
                .partitions
                .iter()
                .enumerate()
                .map(|(i, pm)| match by_partition.get(&(&*t.name, i as i32)) {
                    Some(p) => json!({
                        "partition": i,
                        "shard": pm.shard.0,
                        "log_start_offset": p.log_start_offset,
                        "high_watermark": p.high_watermark,
                        "log_end_offset": p.log_end_offset,
                        "durable_end_offset": p.durable_end_offset,
                        "sync_failed": p.sync_failed,
                        "size_bytes": p.size_bytes,
                    }),
                    None => json!({
                        "partition": i,
                        "shard": pm.shard.0,
                        "log_start_offset": null,
                        "high_watermark": null,
                        "log_end_offset": null,
                        "durable_end_offset": null,
                        "sync_failed": null,
                        "size_bytes": null,
                    }),
                })
                .collect();
            json!({ "name": &*t.name, "partitions": partitions })
        })
        .collect();
    json!({
        "version": process.version,
        "node_id": process.node_id,
        "shards": process.shards,
        "ready": process.ready(),
        "topics": topics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::CommittedOffset;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }

    #[test]
    fn merges_shards_and_renders_families() {
        let process = ProcessInfo {
            version: "0.1.0",
            node_id: 0,
            shards: 2,
            shards_recovered: 2,
            uptime_seconds: 1.0,
        };
        let topic: Arc<str> = Arc::from("t");
        let mut produce = ApiStats {
            requests: 2,
            ..Default::default()
        };
        produce.latency.observe(std::time::Duration::from_millis(1));
        let gauges = PartitionGauges {
            topic: topic.clone(),
            partition: 0,
            log_start_offset: 0,
            high_watermark: 10,
            log_end_offset: 10,
            durable_end_offset: 10,
            sync_failed: false,
            size_bytes: 100,
        };
        let a = Snapshot {
            shard: 0,
            requests: vec![(0, produce.clone())],
            ..Default::default()
        };
        let b = Snapshot {
            shard: 1,
            requests: vec![(0, produce)],
            topic_bytes: vec![(
                topic.clone(),
                TopicBytes {
                    bytes_in: 5,
                    bytes_out: 7,
                },
            )],
            partitions: vec![gauges],
            committed: vec![CommittedOffset {
                group: "g\"1".into(),
                topic,
                partition: 0,
                offset: 4,
            }],
            ..Default::default()
        };
        let text = render(&process, &[a, b]);
        assert!(
            text.contains("strom_requests_total{api=\"Produce\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("strom_request_latency_seconds_bucket{api=\"Produce\",le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("strom_topic_bytes_in_total{topic=\"t\"} 5\n"));
        assert!(text.contains("strom_partition_log_end_offset{topic=\"t\",partition=\"0\"} 10\n"));
        assert!(
            text.contains("strom_group_lag{group=\"g\\\"1\",topic=\"t\",partition=\"0\"} 6\n"),
            "{text}"
        );
        assert!(text.contains("strom_connections{shard=\"1\"} 0\n"));
        assert!(text.contains("strom_fsync_latency_seconds_count 0\n"));
    }
}
