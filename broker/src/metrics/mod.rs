//! Broker metrics: counters and histograms kept per shard in plain `Cell`/`RefCell`s (each shard
//! is one thread, so the request path pays no atomics and no locks), copied out as a
//! [`Snapshot`] when scraped. Shard 0 asks every shard for its snapshot with
//! `ShardOp::Metrics` (`shard::stats`), merges them and renders the Prometheus text format ([`render`]).

mod render;
pub mod stages;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use strom_storage::metrics::LatencyHistogram;

pub use render::{render, render_cluster, render_replication, status_json, ClusterGauges};
use stages::{RequestTrace, StageHistograms};

/// Request counters of one API on one shard.
#[derive(Clone, Debug, Default)]
pub struct ApiStats {
    pub requests: u64,
    pub errors: u64,
    pub latency: LatencyHistogram,
}

/// Bytes of record batches produced to and fetched from one topic.
#[derive(Clone, Copy, Debug, Default)]
pub struct TopicBytes {
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The counters of one shard; touched only by its own thread.
#[derive(Default)]
pub struct ShardMetrics {
    /// Indexed by API key.
    requests: RefCell<Vec<ApiStats>>,
    topics: RefCell<HashMap<Arc<str>, TopicBytes>>,
    /// Kafka requests being handled on this shard.
    pub requests_inflight: Cell<u64>,
    /// Client connections open on this shard.
    pub connections_open: Cell<u64>,
    /// Long-poll waits (Fetch below `min_bytes`) parked on this shard's partitions.
    pub fetch_waits: Cell<u64>,
    /// Where requests answered on this shard spent their time.
    stages: RefCell<StageHistograms>,
}

/// Counts something in a gauge for as long as it lives, however it ends (a cancelled task is
/// dropped without finishing).
pub struct Tracked<'a>(&'a Cell<u64>);

impl<'a> Tracked<'a> {
    pub fn start(gauge: &'a Cell<u64>) -> Tracked<'a> {
        gauge.set(gauge.get() + 1);
        Tracked(gauge)
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl ShardMetrics {
    /// Counts one handled request: `failed` if its response carries an error code or the
    /// connection was closed instead of answering.
    pub fn record_request(&self, api: ApiKey, failed: bool, elapsed: Duration) {
        let key = api as i16;
        if key < 0 {
            return;
        }
        let mut requests = self.requests.borrow_mut();
        let i = key as usize;
        if requests.len() <= i {
            requests.resize_with(i + 1, ApiStats::default);
        }
        let s = &mut requests[i];
        s.requests += 1;
        s.errors += u64::from(failed);
        s.latency.observe(elapsed);
    }

    /// Records the stages of a request whose response was written (or dropped, for acks=0).
    pub fn record_stages(&self, api: ApiKey, trace: &RequestTrace) {
        self.stages.borrow_mut().record(api, trace);
    }

    pub fn add_bytes_in(&self, topic: &Arc<str>, n: u64) {
        self.topic_entry(topic, |t| t.bytes_in += n);
    }

    pub fn add_bytes_out(&self, topic: &Arc<str>, n: u64) {
        self.topic_entry(topic, |t| t.bytes_out += n);
    }

    fn topic_entry(&self, topic: &Arc<str>, f: impl FnOnce(&mut TopicBytes)) {
        let mut topics = self.topics.borrow_mut();
        match topics.get_mut(&**topic) {
            Some(t) => f(t),
            None => f(topics.entry(topic.clone()).or_default()),
        }
    }

    /// Forgets the byte counters of deleted topics (bounds the map by the live topics).
    fn retain_topics(&self, live: impl Fn(&str) -> bool) {
        self.topics.borrow_mut().retain(|t, _| live(t));
    }

    /// Copies the counters out for a scrape: per API, per topic (topics for which `live` is
    /// false are forgotten first) and the request stages.
    pub fn counters(&self, live: impl Fn(&str) -> bool) -> Counters {
        self.retain_topics(live);
        Counters {
            requests: self
                .requests
                .borrow()
                .iter()
                .enumerate()
                .filter(|(_, s)| s.requests > 0)
                .map(|(k, s)| (k as i16, s.clone()))
                .collect(),
            topic_bytes: self
                .topics
                .borrow()
                .iter()
                .map(|(t, b)| (t.clone(), *b))
                .collect(),
            stages: self.stages.borrow().clone(),
        }
    }
}

/// The counters of [`ShardMetrics`], copied out.
pub struct Counters {
    /// (API key, its counters), APIs with at least one request.
    pub requests: Vec<(i16, ApiStats)>,
    /// Bytes in and out per topic.
    pub topic_bytes: Vec<(Arc<str>, TopicBytes)>,
    /// Where requests spent their time.
    pub stages: StageHistograms,
}

/// Gauges of one partition log.
#[derive(Clone, Debug)]
pub struct PartitionGauges {
    pub topic: Arc<str>,
    pub partition: i32,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub log_end_offset: i64,
    /// Offset below which every record is fdatasynced.
    pub durable_end_offset: i64,
    /// An fdatasync failed; the log refuses writes until the broker restarts.
    pub sync_failed: bool,
    pub size_bytes: u64,
}

/// A partition this shard leads in cluster mode, for the replication metrics.
#[derive(Clone, Debug)]
pub struct LeaderGauges {
    pub topic: Arc<str>,
    pub partition: i32,
    /// Replicas of the partition.
    pub replicas: usize,
    /// Members of its committed ISR.
    pub isr: usize,
    /// Its `min.insync.replicas`.
    pub min_insync: usize,
    /// (follower node, messages it is behind the leader's log end as of its last fetch; -1
    /// before its first fetch from this leader).
    pub followers: Vec<(i32, i64)>,
}

/// A committed offset of a group this shard coordinates.
#[derive(Clone, Debug)]
pub struct CommittedOffset {
    pub group: String,
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

/// Everything one shard reports at a scrape.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub shard: usize,
    /// (API key, its counters), APIs with at least one request.
    pub requests: Vec<(i16, ApiStats)>,
    pub topic_bytes: Vec<(Arc<str>, TopicBytes)>,
    pub partitions: Vec<PartitionGauges>,
    pub queue_depth: u64,
    pub cross_shard_messages: u64,
    pub cross_shard_channel_full: u64,
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub connections_idle_closed: u64,
    pub connections_migrated: u64,
    pub request_bytes_inflight: u64,
    pub request_bytes_budget: u64,
    pub request_budget_waits: u64,
    pub fetch_waits: u64,
    pub mesh_outbox_full: u64,
    pub mesh_cancelled: u64,
    pub committed: Vec<CommittedOffset>,
    pub fsync: LatencyHistogram,
    /// Failed fdatasyncs and directory fsyncs on the shard.
    pub sync_failures: u64,
    /// Logs of the shard (offsets logs included) that refuse writes after a failed fdatasync.
    pub logs_sync_failed: u64,
    pub stages: StageHistograms,
    /// Cluster mode: the partitions this shard leads.
    pub leaders: Vec<LeaderGauges>,
    /// Cluster mode: the partitions this shard follows.
    pub followed: u64,
    /// Cluster mode: ISR shrinks and expansions this shard's leaders proposed.
    pub isr_shrinks: u64,
    pub isr_expands: u64,
}

/// Process-wide values rendered alongside the shard snapshots.
pub struct ProcessInfo {
    pub version: &'static str,
    pub node_id: i32,
    pub shards: usize,
    pub shards_recovered: usize,
    pub uptime_seconds: f64,
}

impl ProcessInfo {
    pub fn ready(&self) -> bool {
        self.shards_recovered >= self.shards
    }
}
