//! The command-line tools' view of a cluster: a bootstrap connection, the API versions the
//! brokers accept, and one connection per broker address, made when first needed.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable};
use strom_client::conn::{code, topic_name};
use strom_client::{code_name, Conn};

use super::Common;

const CLIENT_ID: &str = "strom-cli";
/// Metadata versions the tools speak (v10+ carries topic ids).
const METADATA: (i16, i16) = (1, 12);
/// Pause between retries while a coordinator loads.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// How long ListOffsets answers that a partition is not served yet (unknown, no leader, not the
/// leader) are asked again.
const OFFSETS_RETRY_MAX: Duration = Duration::from_secs(5);

/// A tool's connections to a cluster, with the API versions the bootstrap broker accepts.
pub struct Client {
    /// Bound on connecting and on every request (`--timeout-ms`).
    pub timeout: Duration,
    bootstrap: String,
    conns: HashMap<String, Conn>,
    /// Highest version the bootstrap broker accepts, by API key.
    versions: BTreeMap<i16, (i16, i16)>,
    /// Broker addresses by node id, from the last Metadata.
    pub brokers: BTreeMap<i32, String>,
}

impl Client {
    /// Connects to the first reachable of `common.brokers` and reads its API versions.
    pub fn connect(common: &Common) -> Result<Client, String> {
        let timeout = Duration::from_millis(common.timeout_ms.max(1));
        let mut errors = Vec::new();
        for addr in common
            .brokers
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            match Conn::connect_timeout(addr, timeout, CLIENT_ID) {
                Ok(mut conn) => {
                    let resp: ApiVersionsResponse =
                        conn.request(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default())?;
                    if resp.error_code != 0 {
                        return Err(format!(
                            "ApiVersions from {addr}: {}",
                            code_name(resp.error_code)
                        ));
                    }
                    let versions = resp
                        .api_keys
                        .iter()
                        .map(|k| (k.api_key, (k.min_version, k.max_version)))
                        .collect();
                    let mut conns = HashMap::new();
                    conns.insert(addr.to_string(), conn);
                    return Ok(Client {
                        timeout,
                        bootstrap: addr.to_string(),
                        conns,
                        versions,
                        brokers: BTreeMap::new(),
                    });
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            return Err("no broker address given (-b HOST:PORT)".into());
        }
        Err(format!("cannot reach any broker: {}", errors.join("; ")))
    }

    /// API key → (min, max) versions of the bootstrap broker.
    pub fn api_versions(&self) -> &BTreeMap<i16, (i16, i16)> {
        &self.versions
    }

    /// The version to send `api` at: the highest of `lowest..=preferred` the broker accepts.
    pub fn version(&self, api: ApiKey, (lowest, preferred): (i16, i16)) -> Result<i16, String> {
        let Some(&(min, max)) = self.versions.get(&(api as i16)) else {
            return Err(format!("the broker does not support {api:?}"));
        };
        let v = preferred.min(max);
        if v < lowest || v < min {
            return Err(format!("the broker supports {api:?} v{min}..v{max}; this tool needs v{lowest}..v{preferred}"));
        }
        Ok(v)
    }

    /// The connection to `addr` (host:port), opened on first use.
    pub fn conn_to(&mut self, addr: &str) -> Result<&mut Conn, String> {
        if !self.conns.contains_key(addr) {
            let conn = Conn::connect_timeout(addr, self.timeout, CLIENT_ID)?;
            self.conns.insert(addr.to_string(), conn);
        }
        Ok(self.conns.get_mut(addr).expect("inserted above"))
    }

    /// The connection to broker `node` (as named by the last Metadata).
    pub fn conn_to_node(&mut self, node: i32) -> Result<&mut Conn, String> {
        let addr = match self.brokers.get(&node) {
            Some(a) => a.clone(),
            None => {
                self.metadata(Some(&[]))?;
                self.brokers
                    .get(&node)
                    .cloned()
                    .ok_or_else(|| format!("broker {node} is not in the cluster metadata"))?
            }
        };
        self.conn_to(&addr)
    }

    /// Sends `req` to `node` (None: the bootstrap broker) at the negotiated version.
    pub fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        node: Option<i32>,
        api: ApiKey,
        versions: (i16, i16),
        req: &Req,
    ) -> Result<Resp, String> {
        let v = self.version(api, versions)?;
        let conn = match node {
            Some(n) => self.conn_to_node(n)?,
            None => {
                let b = self.bootstrap.clone();
                self.conn_to(&b)?
            }
        };
        conn.request(api, v, req)
    }

    /// Metadata for `topics` (None: every topic; empty: brokers only), never creating topics.
    pub fn metadata(&mut self, topics: Option<&[String]>) -> Result<MetadataResponse, String> {
        let mut req = MetadataRequest::default();
        req.allow_auto_topic_creation = false;
        req.topics = topics.map(|ts| {
            ts.iter()
                .map(|t| {
                    let mut mt = MetadataRequestTopic::default();
                    mt.name = Some(topic_name(t));
                    mt
                })
                .collect()
        });
        let resp: MetadataResponse = self.call(None, ApiKey::Metadata, METADATA, &req)?;
        self.brokers = resp
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
            .collect();
        Ok(resp)
    }

    /// Partition → leader of `topic`; a clear error when it does not exist.
    pub fn leaders(&mut self, topic: &str) -> Result<BTreeMap<i32, i32>, String> {
        let resp = self.metadata(Some(&[topic.to_string()]))?;
        let t = resp
            .topics
            .first()
            .ok_or_else(|| format!("topic {topic}: not in the Metadata response"))?;
        if t.error_code != 0 {
            return Err(topic_error(topic, t.error_code));
        }
        Ok(t.partitions
            .iter()
            .map(|p| (p.partition_index, p.leader_id.0))
            .collect())
    }

    /// The node coordinating `group`, waiting (within the timeout) while it loads.
    pub fn coordinator(&mut self, group: &str) -> Result<i32, String> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let b = self.bootstrap.clone();
            let c = self.conn_to(&b)?.find_coordinator(group)?;
            match c.error {
                0 => {
                    let addr = format!("{}:{}", c.host, c.port);
                    self.brokers.insert(c.node_id, addr);
                    return Ok(c.node_id);
                }
                code::COORDINATOR_NOT_AVAILABLE | code::COORDINATOR_LOAD_IN_PROGRESS
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(RETRY_BACKOFF);
                }
                e => {
                    return Err(format!(
                        "finding the coordinator of group {group}: {}",
                        code_name(e)
                    ))
                }
            }
        }
    }

    /// ListOffsets at `timestamp` (-1 latest, -2 earliest, else ms) for every partition of
    /// `topic` in `leaders`, asking each leader for its own: partition → offset (-1: none).
    pub fn offsets(
        &mut self,
        topic: &str,
        leaders: &BTreeMap<i32, i32>,
        timestamp: i64,
    ) -> Result<BTreeMap<i32, i64>, String> {
        let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for (&p, &l) in leaders {
            by_leader.entry(l).or_default().push(p);
        }
        let mut out = BTreeMap::new();
        for (leader, parts) in by_leader {
            if leader < 0 {
                return Err(format!("{topic}: partitions {parts:?} have no leader"));
            }
            // A partition created a moment ago may not be open on its leader yet (in a
            // cluster, the leader adopts the new topic a little after the controller): the
            // retriable answers are asked again for a bounded time, as Kafka's clients do.
            let deadline = Instant::now() + OFFSETS_RETRY_MAX;
            let mut pending = parts;
            while !pending.is_empty() {
                let answers = self
                    .conn_to_node(leader)?
                    .list_offsets_codes(topic, &pending, timestamp)?;
                let mut again = Vec::new();
                for (p, error, offset) in answers {
                    match error {
                        0 => {
                            out.insert(p, offset);
                        }
                        3 | 5 | 6 if Instant::now() < deadline => again.push(p),
                        e => return Err(format!("ListOffsets {topic}/{p}: {}", code_name(e))),
                    }
                }
                if !again.is_empty() {
                    std::thread::sleep(RETRY_BACKOFF);
                }
                pending = again;
            }
        }
        Ok(out)
    }
}

/// A topic-level error as users read it.
pub fn topic_error(topic: &str, error: i16) -> String {
    if error == 3 {
        return format!("topic {topic} does not exist");
    }
    format!("topic {topic}: {}", code_name(error))
}
