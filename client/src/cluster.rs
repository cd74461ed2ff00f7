//! The cluster as Metadata describes it: a bootstrap list, the brokers, and the leader of every
//! partition, so that Produce, Fetch and ListOffsets go to the node that leads the partition.
//! A single broker is the special case of a cluster of one: everything then goes to the
//! address it was reached at.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::MetadataResponse;

use crate::conn::{code_name, Conn};

/// The partition has no leader at the moment (an election is under way, or its leader is down).
pub const LEADER_NOT_AVAILABLE: i16 = 5;
/// The broker asked does not lead the partition (any more): ask Metadata for the leader.
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;

/// Whether `code` says that the partition's leader is elsewhere or not known yet, so that a
/// Metadata refresh and a retry can succeed.
pub fn is_leader_error(code: i16) -> bool {
    code == LEADER_NOT_AVAILABLE || code == NOT_LEADER_OR_FOLLOWER
}

/// How many times a request refused with a leader error is routed again (each after a
/// Metadata refresh), at most.
pub const ROUTE_ATTEMPTS: u32 = 50;
/// Pause before each Metadata refresh that follows a leader error.
pub const ROUTE_BACKOFF: Duration = Duration::from_millis(200);
/// How long a request refused with leader errors is retried, at most.
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// The addresses of a bootstrap list: `host:port`, or several separated by commas (spaces
/// around them are ignored).
pub fn parse_bootstrap(list: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for a in list.split(',').map(str::trim) {
        if a.is_empty() {
            continue;
        }
        let port = a
            .rsplit_once(':')
            .map(|(host, port)| (host, port.parse::<u16>()));
        match port {
            Some((host, Ok(_))) if !host.is_empty() => {}
            _ => {
                return Err(format!(
                    "broker address {a:?} is not host:port (in the bootstrap list {list:?})"
                ))
            }
        }
        if !out.iter().any(|o| o == a) {
            out.push(a.to_string());
        }
    }
    if out.is_empty() {
        return Err(format!("no broker address in {list:?}"));
    }
    Ok(out)
}

/// `host:port`, with an IPv6 host in brackets.
pub fn join_host_port(host: &str, port: i32) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// A broker as Metadata lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerMeta {
    /// Its node id, which partitions name as their leader.
    pub node_id: i32,
    /// The host of its client listener.
    pub host: String,
    /// The port of its client listener.
    pub port: i32,
}

/// One partition as Metadata describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMeta {
    /// The partition index.
    pub partition: i32,
    /// Kafka error code (LEADER_NOT_AVAILABLE while it has no leader).
    pub error: i16,
    /// Node id of the leader; -1 when there is none.
    pub leader: i32,
}

/// One topic as Metadata describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMeta {
    /// The topic name.
    pub name: String,
    /// Kafka error code (e.g. UNKNOWN_TOPIC_OR_PARTITION).
    pub error: i16,
    /// Its partitions, in the order of the answer.
    pub partitions: Vec<PartitionMeta>,
}

/// The part of a Metadata answer that routing needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The live brokers.
    pub brokers: Vec<BrokerMeta>,
    /// The topics asked for.
    pub topics: Vec<TopicMeta>,
}

impl Metadata {
    /// The brokers and partition leaders of a Metadata response.
    pub fn from_response(resp: &MetadataResponse) -> Metadata {
        Metadata {
            brokers: resp
                .brokers
                .iter()
                .map(|b| BrokerMeta {
                    node_id: b.node_id.0,
                    host: b.host.to_string(),
                    port: b.port,
                })
                .collect(),
            topics: resp
                .topics
                .iter()
                .map(|t| TopicMeta {
                    name: t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                    error: t.error_code,
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| PartitionMeta {
                            partition: p.partition_index,
                            error: p.error_code,
                            leader: p.leader_id.0,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// The broker with node id `node`, if listed.
    pub fn broker(&self, node: i32) -> Option<&BrokerMeta> {
        self.brokers.iter().find(|b| b.node_id == node)
    }

    /// `topic`, if the answer has it without a topic error.
    fn topic(&self, topic: &str) -> Result<&TopicMeta, String> {
        let t = self
            .topics
            .iter()
            .find(|t| t.name == topic)
            .ok_or_else(|| format!("Metadata: no topic {topic} in the answer"))?;
        if t.error != 0 {
            return Err(format!("Metadata for {topic}: {}", code_name(t.error)));
        }
        Ok(t)
    }

    /// The node that leads `partition` of `topic`; an error naming the partition when it has
    /// no leader or its leader is not among the listed brokers.
    pub fn leader(&self, topic: &str, partition: i32) -> Result<i32, String> {
        let t = self.topic(topic)?;
        let p = t
            .partitions
            .iter()
            .find(|p| p.partition == partition)
            .ok_or_else(|| {
                format!(
                    "{topic}/{partition}: not in Metadata (the topic has {} partitions)",
                    t.partitions.len()
                )
            })?;
        if p.leader < 0 {
            let why = if p.error != 0 {
                code_name(p.error)
            } else {
                "leader -1".to_string()
            };
            return Err(format!(
                "{topic}/{partition}: no leader in Metadata ({why})"
            ));
        }
        if self.broker(p.leader).is_none() {
            return Err(format!(
                "{topic}/{partition}: its leader, node {}, is not among the brokers Metadata lists",
                p.leader
            ));
        }
        Ok(p.leader)
    }

    /// `partitions` of `topic` grouped by leader: node id to its partitions (in the order
    /// given), nodes ascending.
    pub fn by_leader(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, Vec<i32>>, String> {
        let mut out: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for &p in partitions {
            out.entry(self.leader(topic, p)?).or_default().push(p);
        }
        Ok(out)
    }

    /// The partition count of `topic` once every partition has a leader among the listed
    /// brokers (what a new topic is waited for); otherwise why not.
    pub fn ready(&self, topic: &str) -> Result<i32, String> {
        let t = self.topic(topic)?;
        if t.partitions.is_empty() {
            return Err(format!("Metadata for {topic}: no partitions yet"));
        }
        for p in &t.partitions {
            self.leader(topic, p.partition)?;
        }
        Ok(t.partitions.len() as i32)
    }
}

/// The address to reach `node` at. A Metadata answer that lists a single broker describes the
/// broker that sent it, so that one is reached where it answered (`via`), whatever address it
/// advertises; in a larger cluster every node is reached at its advertised address.
pub fn address_of(meta: &Metadata, via: &str, node: i32) -> Result<String, String> {
    let b = meta
        .broker(node)
        .ok_or_else(|| format!("node {node} is not among the brokers Metadata lists"))?;
    if meta.brokers.len() == 1 {
        return Ok(via.to_string());
    }
    Ok(join_host_port(&b.host, b.port))
}

/// Connects to the first of `addrs` that accepts, each within `timeout` (which then bounds
/// every read and write too). Returns the connection and the address it went to.
pub fn connect_any(
    addrs: &[String],
    timeout: Duration,
    client_id: &str,
) -> Result<(Conn, String), String> {
    let mut errors = Vec::new();
    for a in addrs {
        match Conn::connect_timeout(a, timeout, client_id) {
            Ok(conn) => return Ok((conn, a.clone())),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        return Err("no broker address to connect to".to_string());
    }
    Err(errors.join("; "))
}

/// What the client knows of the cluster: the bootstrap list, the last Metadata answer for its
/// topics, and the address that answered it.
#[derive(Clone, Debug)]
pub struct Cluster {
    bootstrap: Vec<String>,
    topics: Vec<String>,
    via: String,
    /// The last Metadata answer.
    pub meta: Metadata,
    timeout: Duration,
    client_id: String,
}

impl Cluster {
    /// Asks the first bootstrap address that accepts a connection for the Metadata of
    /// `topics`. `timeout` bounds connecting and each request.
    pub fn discover(
        bootstrap: &[String],
        topics: &[String],
        timeout: Duration,
        client_id: &str,
    ) -> Result<Cluster, String> {
        let (mut conn, via) = connect_any(bootstrap, timeout, client_id)?;
        let meta = fetch_metadata(&mut conn, &via, topics)?;
        Ok(Cluster::from_metadata(
            bootstrap, topics, &via, meta, timeout, client_id,
        ))
    }

    /// A cluster known from an earlier Metadata answer `meta` for `topics`, which `via` gave.
    pub fn from_metadata(
        bootstrap: &[String],
        topics: &[String],
        via: &str,
        meta: Metadata,
        timeout: Duration,
        client_id: &str,
    ) -> Cluster {
        Cluster {
            bootstrap: bootstrap.to_vec(),
            topics: topics.to_vec(),
            via: via.to_string(),
            meta,
            timeout,
            client_id: client_id.to_string(),
        }
    }

    /// Asks Metadata again: first where the last answer came from, then the rest of the
    /// bootstrap list, then the brokers the last answer listed.
    pub fn refresh(&mut self) -> Result<(), String> {
        let mut candidates = vec![self.via.clone()];
        for a in self.bootstrap.iter().cloned().chain(
            self.meta
                .brokers
                .iter()
                .map(|b| join_host_port(&b.host, b.port)),
        ) {
            if !candidates.contains(&a) {
                candidates.push(a);
            }
        }
        let mut errors = Vec::new();
        for a in candidates {
            let answer = Conn::connect_timeout(&a, self.timeout, &self.client_id)
                .and_then(|mut conn| fetch_metadata(&mut conn, &a, &self.topics));
            match answer {
                Ok(meta) => {
                    self.meta = meta;
                    self.via = a;
                    return Ok(());
                }
                Err(e) => errors.push(e),
            }
        }
        Err(format!("refreshing Metadata: {}", errors.join("; ")))
    }

    /// The address to reach `node` at (see [`address_of`]).
    pub fn address(&self, node: i32) -> Result<String, String> {
        address_of(&self.meta, &self.via, node)
    }

    /// A new connection to `node`, its reads and writes bounded by `io_timeout`.
    pub fn connect(&self, node: i32, io_timeout: Duration) -> Result<Conn, String> {
        let conn = Conn::connect_timeout(&self.address(node)?, self.timeout, &self.client_id)?;
        conn.set_timeout(io_timeout)?;
        Ok(conn)
    }
}

fn fetch_metadata(conn: &mut Conn, addr: &str, topics: &[String]) -> Result<Metadata, String> {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let meta = conn
        .metadata(&names)
        .map_err(|e| format!("Metadata from {addr}: {e}"))?;
    if meta.brokers.is_empty() {
        return Err(format!("Metadata from {addr} lists no brokers"));
    }
    Ok(meta)
}

/// One try of a routed request: done, or refused with a leader error (described) and worth
/// another try after a Metadata refresh.
enum Try<T> {
    Done(T),
    Again(String),
}

/// A [`Cluster`] with one open connection per node, for requests that each go to a
/// partition's leader and are routed again after a leader error.
pub struct Router {
    /// The cluster the connections follow.
    pub cluster: Cluster,
    conns: BTreeMap<i32, (String, Conn)>,
    io_timeout: Duration,
}

impl Router {
    /// A router over `cluster`; `io_timeout` bounds every read and write on its connections.
    pub fn new(cluster: Cluster, io_timeout: Duration) -> Router {
        Router {
            cluster,
            conns: BTreeMap::new(),
            io_timeout,
        }
    }

    /// The connection to `node`, opened on first use.
    pub fn conn(&mut self, node: i32) -> Result<&mut Conn, String> {
        if !self.conns.contains_key(&node) {
            let addr = self.cluster.address(node)?;
            let conn = self.cluster.connect(node, self.io_timeout)?;
            self.conns.insert(node, (addr, conn));
        }
        match self.conns.get_mut(&node) {
            Some((_, conn)) => Ok(conn),
            None => Err(format!("no connection to node {node}")),
        }
    }

    /// Connects to every node that leads one of `partitions` of `topic` now, so that later
    /// requests do not include connecting.
    pub fn connect_leaders(&mut self, topic: &str, partitions: &[i32]) -> Result<(), String> {
        for node in self.cluster.meta.by_leader(topic, partitions)?.into_keys() {
            self.conn(node)?;
        }
        Ok(())
    }

    /// Hands over the open connections (node, address, connection), e.g. to a loop that
    /// pipelines requests on them; the router opens new ones when it needs them again.
    pub fn take_conns(&mut self) -> Vec<(i32, String, Conn)> {
        std::mem::take(&mut self.conns)
            .into_iter()
            .map(|(node, (addr, conn))| (node, addr, conn))
            .collect()
    }

    /// Refreshes Metadata, and closes connections to nodes that left or moved.
    pub fn refresh(&mut self) -> Result<(), String> {
        self.cluster.refresh()?;
        let cluster = &self.cluster;
        self.conns
            .retain(|node, (addr, _)| cluster.address(*node).is_ok_and(|a| a == *addr));
        Ok(())
    }

    /// After a failed connection (or connection attempt) to `node`: closes it, and in a
    /// cluster of several brokers lets the caller try again after a Metadata refresh (another
    /// broker may lead the partitions now); with a single broker, fails with `error`.
    fn connection_failed(&mut self, node: i32, error: String) -> Result<(), String> {
        self.conns.remove(&node);
        if self.cluster.meta.brokers.len() > 1 {
            Ok(())
        } else {
            Err(error)
        }
    }

    /// Runs `attempt` until it is done; after a leader error, pauses, refreshes Metadata and
    /// tries again, at most [`ROUTE_ATTEMPTS`] times within [`ROUTE_TIMEOUT`].
    fn retrying<T>(
        &mut self,
        mut attempt: impl FnMut(&mut Router) -> Result<Try<T>, String>,
    ) -> Result<T, String> {
        let started = Instant::now();
        for n in 1..=ROUTE_ATTEMPTS {
            let why = match attempt(self)? {
                Try::Done(out) => return Ok(out),
                Try::Again(why) => why,
            };
            if n == ROUTE_ATTEMPTS || started.elapsed() + ROUTE_BACKOFF > ROUTE_TIMEOUT {
                return Err(format!(
                    "{why}; still so after {} Metadata refreshes in {:.1} s",
                    n - 1,
                    started.elapsed().as_secs_f64()
                ));
            }
            std::thread::sleep(ROUTE_BACKOFF);
            self.refresh()?;
        }
        Err("no attempt made".to_string())
    }

    /// ListOffsets for `partitions` of `topic` at `timestamp` (-1 latest, -2 earliest), each
    /// asked of its leader: (partition, offset).
    pub fn list_offsets(
        &mut self,
        topic: &str,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<Vec<(i32, i64)>, String> {
        let mut out = Vec::with_capacity(partitions.len());
        let mut pending = partitions.to_vec();
        self.retrying(|r| {
            let groups = match r.cluster.meta.by_leader(topic, &pending) {
                Ok(g) => g,
                Err(e) => return Ok(Try::Again(format!("ListOffsets {e}"))),
            };
            let mut again = Vec::new();
            let mut why = String::new();
            for (node, parts) in groups {
                let answer = r
                    .conn(node)
                    .and_then(|c| c.list_offsets_codes(topic, &parts, timestamp));
                let answer = match answer {
                    Ok(a) => a,
                    Err(e) => {
                        why = format!("ListOffsets {topic} from node {node}: {e}");
                        r.connection_failed(node, e)?;
                        again.extend(parts);
                        continue;
                    }
                };
                for (p, error, offset) in answer {
                    if error == 0 {
                        out.push((p, offset));
                    } else if is_leader_error(error) {
                        again.push(p);
                        why = format!(
                            "ListOffsets {topic}/{p}: {} from node {node}, its leader in Metadata",
                            code_name(error)
                        );
                    } else {
                        return Err(format!("ListOffsets {topic}/{p}: {}", code_name(error)));
                    }
                }
            }
            if again.is_empty() {
                return Ok(Try::Done(std::mem::take(&mut out)));
            }
            pending = again;
            Ok(Try::Again(why))
        })
    }

    /// Produces `batch` to `partition` of `topic` at its leader and waits for the answer
    /// (`acks` must not be 0); returns the partition's error code once it is not a leader
    /// error.
    pub fn produce_one(
        &mut self,
        topic: &str,
        partition: i32,
        batch: &Bytes,
        acks: i16,
    ) -> Result<i16, String> {
        self.retrying(|r| {
            let node = match r.cluster.meta.leader(topic, partition) {
                Ok(n) => n,
                Err(e) => return Ok(Try::Again(format!("Produce {e}"))),
            };
            let answer = r.conn(node).and_then(|conn| {
                let id = conn.send_produce_parts(topic, vec![(partition, batch.clone())], acks)?;
                conn.recv_produce_errors(id)
            });
            let error = match answer {
                Ok(errors) => errors
                    .into_iter()
                    .find(|(p, _)| *p == partition)
                    .map_or(-1, |(_, e)| e),
                Err(e) => {
                    let why = format!("Produce {topic}/{partition} to node {node}: {e}");
                    r.connection_failed(node, e)?;
                    return Ok(Try::Again(why));
                }
            };
            if is_leader_error(error) {
                return Ok(Try::Again(format!(
                    "Produce {topic}/{partition}: {} from node {node}, its leader in Metadata",
                    code_name(error)
                )));
            }
            Ok(Try::Done(error))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::BrokerId;

    use crate::conn::{str_bytes, topic_name};

    #[test]
    fn bootstrap_lists() {
        assert_eq!(
            parse_bootstrap("127.0.0.1:9092").unwrap(),
            vec!["127.0.0.1:9092"]
        );
        assert_eq!(
            parse_bootstrap("127.0.1.1:9092, 127.0.1.2:9092 ,127.0.1.3:9092,").unwrap(),
            vec!["127.0.1.1:9092", "127.0.1.2:9092", "127.0.1.3:9092"]
        );
        assert_eq!(
            parse_bootstrap("a:1,[::1]:9092,a:1").unwrap(),
            vec!["a:1", "[::1]:9092"]
        );
        for bad in [
            "",
            " , ",
            "localhost",
            "a:1,b",
            ":9092",
            "a:port",
            "a:70000",
        ] {
            assert!(parse_bootstrap(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_bootstrap("a:1,b")
            .unwrap_err()
            .contains("\"b\" is not host:port"));
    }

    fn response(brokers: &[(i32, &str)], leaders: &[(i32, i32, i16)]) -> MetadataResponse {
        let mut resp = MetadataResponse::default();
        resp.brokers = brokers
            .iter()
            .map(|&(id, host)| {
                let mut b = MetadataResponseBroker::default();
                b.node_id = BrokerId(id);
                b.host = str_bytes(host);
                b.port = 9092;
                b
            })
            .collect();
        let mut t = MetadataResponseTopic::default();
        t.name = Some(topic_name("t"));
        t.partitions = leaders
            .iter()
            .map(|&(p, leader, error)| {
                let mut mp = MetadataResponsePartition::default();
                mp.partition_index = p;
                mp.leader_id = BrokerId(leader);
                mp.error_code = error;
                mp
            })
            .collect();
        resp.topics = vec![t];
        resp
    }

    #[test]
    fn partitions_grouped_by_leader() {
        let resp = response(
            &[(2, "127.0.1.3"), (0, "127.0.1.1"), (1, "127.0.1.2")],
            &[(0, 1, 0), (1, 2, 0), (2, 0, 0), (3, 1, 0), (4, 2, 0)],
        );
        let meta = Metadata::from_response(&resp);
        assert_eq!(meta.brokers.len(), 3);
        assert_eq!(
            meta.broker(1),
            Some(&BrokerMeta {
                node_id: 1,
                host: "127.0.1.2".into(),
                port: 9092
            })
        );
        let groups = meta.by_leader("t", &[4, 3, 2, 1, 0]).unwrap();
        assert_eq!(
            groups.into_iter().collect::<Vec<_>>(),
            vec![(0, vec![2]), (1, vec![3, 0]), (2, vec![4, 1])]
        );
        assert_eq!(meta.ready("t"), Ok(5));
        assert_eq!(address_of(&meta, "x:1", 1).unwrap(), "127.0.1.2:9092");
        assert!(address_of(&meta, "x:1", 7).is_err());
    }

    #[test]
    fn partitions_without_a_usable_leader_are_named() {
        let meta = Metadata::from_response(&response(
            &[(0, "h0"), (1, "h1")],
            &[(0, 0, 0), (1, -1, LEADER_NOT_AVAILABLE), (2, 5, 0)],
        ));
        let e = meta.by_leader("t", &[0, 1]).unwrap_err();
        assert!(e.contains("t/1") && e.contains("LeaderNotAvailable"), "{e}");
        let e = meta.by_leader("t", &[2]).unwrap_err();
        assert!(e.contains("t/2") && e.contains("node 5"), "{e}");
        let e = meta.leader("t", 9).unwrap_err();
        assert!(e.contains("t/9") && e.contains("3 partitions"), "{e}");
        assert!(meta.leader("u", 0).unwrap_err().contains("no topic u"));
        assert!(meta.ready("t").unwrap_err().contains("t/1"));
        assert_eq!(meta.leader("t", 0), Ok(0));
    }

    #[test]
    fn a_single_broker_is_reached_where_it_answered() {
        let meta = Metadata::from_response(&response(&[(7, "advertised.example")], &[(0, 7, 0)]));
        assert_eq!(
            address_of(&meta, "127.0.0.1:39092", 7).unwrap(),
            "127.0.0.1:39092"
        );
        assert_eq!(join_host_port("::1", 9092), "[::1]:9092");
        assert_eq!(join_host_port("h", 1), "h:1");
    }

    #[test]
    fn leader_errors() {
        assert!(is_leader_error(NOT_LEADER_OR_FOLLOWER) && is_leader_error(LEADER_NOT_AVAILABLE));
        assert!(!is_leader_error(0) && !is_leader_error(3));
    }
}
