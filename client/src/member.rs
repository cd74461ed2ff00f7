//! One classic-protocol consumer group member: join (with the member-id round trip), range
//! assignment as leader, sync, heartbeat and leave, on its own connection.

use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{consumer_protocol_assignment, consumer_protocol_subscription};
use kafka_protocol::messages::{
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::cluster::{connect_any, join_host_port, parse_bootstrap};
use crate::conn::{code, code_name, Conn, JoinParams};

const PROTOCOL_TYPE: &str = "consumer";
const ASSIGNOR: &str = "range";
/// Highest ConsumerProtocolSubscription / ConsumerProtocolAssignment version this client knows.
const CONSUMER_PROTOCOL_V: i16 = 3;
/// Upper bound on JoinGroup/SyncGroup round trips for one (re)join.
const MAX_JOIN_ATTEMPTS: u32 = 100;
/// Pause before retrying while a coordinator loads.
const RETRY_BACKOFF: Duration = Duration::from_millis(50);
/// The client id of the member's connections.
const CLIENT_ID: &str = "strom-bench";

/// Timeouts a member announces in JoinGroup.
#[derive(Clone, Copy)]
pub struct GroupTimeouts {
    /// Heartbeat silence after which the coordinator removes the member.
    pub session_ms: i32,
    /// Time the coordinator gives members to rejoin during a rebalance.
    pub rebalance_ms: i32,
}

/// What a heartbeat told the member.
#[derive(PartialEq, Eq)]
pub enum Heartbeat {
    /// The generation is current: keep consuming the assignment.
    Stable,
    /// A rebalance began or the member was dropped: join again before consuming.
    Rejoin,
}

/// A group member consuming one topic, with its own connection to the coordinator (group
/// requests and committed offsets; records are fetched from each partition's leader).
pub struct Member {
    conn: Conn,
    group: String,
    topic: String,
    partitions: i32,
    timeouts: GroupTimeouts,
    member_id: String,
    generation: i32,
    assigned: Vec<i32>,
}

impl Member {
    /// Connects to `brokers` (an address, or a comma-separated bootstrap list of which the
    /// first that accepts is used), looks up the group's coordinator and, when that is another
    /// broker, connects to the coordinator instead.
    pub fn connect(
        brokers: &str,
        group: &str,
        topic: &str,
        partitions: i32,
        timeouts: GroupTimeouts,
        deadline: Instant,
    ) -> Result<Member, String> {
        let bootstrap = parse_bootstrap(brokers)?;
        let (conn, addr) = connect_any(&bootstrap, remaining(deadline), CLIENT_ID)?;
        let mut m = Member {
            conn,
            group: group.to_string(),
            topic: topic.to_string(),
            partitions,
            timeouts,
            member_id: String::new(),
            generation: -1,
            assigned: Vec::new(),
        };
        m.bound_io(deadline)?;
        m.find_coordinator(&addr, deadline)?;
        Ok(m)
    }

    /// Lets no socket read or write outlast `deadline`.
    fn bound_io(&self, deadline: Instant) -> Result<(), String> {
        self.conn.set_timeout(remaining(deadline))
    }

    /// Asks the broker at `connected` for the group's coordinator and moves the member's
    /// connection there unless it is that broker.
    fn find_coordinator(&mut self, connected: &str, deadline: Instant) -> Result<(), String> {
        loop {
            deadline_check(deadline, "finding the group coordinator")?;
            let c = self.conn.find_coordinator(&self.group)?;
            match c.error {
                0 => {
                    let coordinator = join_host_port(&c.host, c.port);
                    if same_address(&coordinator, connected) {
                        return Ok(());
                    }
                    self.conn = Conn::connect_timeout(&coordinator, remaining(deadline), CLIENT_ID)
                        .map_err(|e| {
                            format!(
                                "the coordinator of group {} is node {} at {coordinator}: {e}",
                                self.group, c.node_id
                            )
                        })?;
                    return self.bound_io(deadline);
                }
                code::COORDINATOR_NOT_AVAILABLE | code::COORDINATOR_LOAD_IN_PROGRESS => {
                    std::thread::sleep(RETRY_BACKOFF);
                }
                e => return Err(format!("FindCoordinator {}: {}", self.group, code_name(e))),
            }
        }
    }

    /// The member's connection to the coordinator, for committed offsets (OffsetFetch,
    /// OffsetCommit).
    pub fn conn(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// The group this member belongs to.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The id the coordinator assigned; empty before the first join.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The generation of the last successful join; -1 before it.
    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// Partitions of the topic assigned in the current generation.
    pub fn assigned(&self) -> &[i32] {
        &self.assigned
    }

    /// Joins (or rejoins) and syncs until the member holds an assignment of a stable generation.
    pub fn join_and_sync(&mut self, deadline: Instant) -> Result<(), String> {
        for _ in 0..MAX_JOIN_ATTEMPTS {
            deadline_check(deadline, &format!("joining group {}", self.group))?;
            self.bound_io(deadline)?;
            if let Some(assignments) = self.join_once()? {
                if self.sync_once(assignments)? {
                    return Ok(());
                }
            }
        }
        Err(format!(
            "group {}: no stable assignment after {MAX_JOIN_ATTEMPTS} JoinGroup attempts",
            self.group
        ))
    }

    /// One JoinGroup. `None` when the member has to send another; otherwise the assignments
    /// to hand to SyncGroup (empty unless this member leads).
    fn join_once(&mut self) -> Result<Option<Vec<(String, Bytes)>>, String> {
        let metadata = self.subscription()?;
        let joined = self.conn.join_group(&JoinParams {
            group: &self.group,
            member_id: &self.member_id,
            session_timeout_ms: self.timeouts.session_ms,
            rebalance_timeout_ms: self.timeouts.rebalance_ms,
            protocol_type: PROTOCOL_TYPE,
            protocol_name: ASSIGNOR,
            metadata,
        })?;
        match joined.error {
            0 => {}
            code::MEMBER_ID_REQUIRED => {
                self.member_id = joined.member_id;
                return Ok(None);
            }
            code::UNKNOWN_MEMBER_ID => {
                self.member_id.clear();
                return Ok(None);
            }
            code::REBALANCE_IN_PROGRESS
            | code::COORDINATOR_LOAD_IN_PROGRESS
            | code::COORDINATOR_NOT_AVAILABLE => {
                std::thread::sleep(RETRY_BACKOFF);
                return Ok(None);
            }
            e => return Err(format!("JoinGroup {}: {}", self.group, code_name(e))),
        }
        if let Some(name) = joined.protocol_name.as_deref().filter(|n| *n != ASSIGNOR) {
            return Err(format!(
                "JoinGroup {}: coordinator chose protocol {name:?}, not {ASSIGNOR:?}",
                self.group
            ));
        }
        self.member_id = joined.member_id;
        self.generation = joined.generation;
        if joined.leader == self.member_id {
            range_assign(&joined.members, &self.topic, self.partitions).map(Some)
        } else {
            Ok(Some(Vec::new()))
        }
    }

    /// One SyncGroup; false when the generation moved on and the member has to rejoin.
    fn sync_once(&mut self, assignments: Vec<(String, Bytes)>) -> Result<bool, String> {
        let (error, assignment) = self.conn.sync_group(
            &self.group,
            self.generation,
            &self.member_id,
            (PROTOCOL_TYPE, ASSIGNOR),
            assignments,
        )?;
        match error {
            0 => {
                self.assigned = decode_assignment(assignment, &self.topic)?;
                Ok(true)
            }
            code::REBALANCE_IN_PROGRESS | code::ILLEGAL_GENERATION => Ok(false),
            code::UNKNOWN_MEMBER_ID => {
                self.member_id.clear();
                Ok(false)
            }
            e => Err(format!("SyncGroup {}: {}", self.group, code_name(e))),
        }
    }

    /// One heartbeat of the current generation.
    pub fn heartbeat(&mut self) -> Result<Heartbeat, String> {
        match self
            .conn
            .heartbeat(&self.group, self.generation, &self.member_id)?
        {
            0 => Ok(Heartbeat::Stable),
            code::REBALANCE_IN_PROGRESS | code::ILLEGAL_GENERATION => Ok(Heartbeat::Rejoin),
            code::UNKNOWN_MEMBER_ID => {
                self.member_id.clear();
                Ok(Heartbeat::Rejoin)
            }
            e => Err(format!("Heartbeat {}: {}", self.group, code_name(e))),
        }
    }

    /// Leaves the group; the member holds nothing afterwards.
    pub fn leave(&mut self) -> Result<(), String> {
        if self.member_id.is_empty() {
            return Ok(());
        }
        self.conn.leave_group(&self.group, &self.member_id)?;
        self.member_id.clear();
        self.generation = -1;
        self.assigned.clear();
        Ok(())
    }

    /// This member's subscription: the topic, plus what it owns when rejoining.
    fn subscription(&self) -> Result<Bytes, String> {
        let mut owned = Vec::new();
        if !self.assigned.is_empty() {
            let mut tp = consumer_protocol_subscription::TopicPartition::default();
            tp.topic = TopicName(StrBytes::from_string(self.topic.clone()));
            tp.partitions = self.assigned.clone();
            owned.push(tp);
        }
        let mut s = ConsumerProtocolSubscription::default();
        s.topics = vec![StrBytes::from_string(self.topic.clone())];
        s.owned_partitions = owned;
        s.generation_id = self.generation;
        encode_versioned(&s, CONSUMER_PROTOCOL_V)
    }
}

/// The time left until `deadline`, at least 1 ms (a zero socket timeout would mean none).
fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

/// Fails with what was being waited for once `deadline` has passed.
pub fn deadline_check(deadline: Instant, doing: &str) -> Result<(), String> {
    if Instant::now() >= deadline {
        return Err(format!("deadline exceeded while {doing}"));
    }
    Ok(())
}

/// Whether `a` and `b` (host:port) name the same endpoint, literally or once resolved.
fn same_address(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let resolve = |s: &str| {
        s.to_socket_addrs()
            .map(|it| it.collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let b_addrs = resolve(b);
    resolve(a).iter().any(|x| b_addrs.contains(x))
}

/// Consumer-protocol encoding: an i16 version, then the message at that version.
fn encode_versioned<M: Encodable>(m: &M, version: i16) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    buf.put_i16(version);
    m.encode(&mut buf, version)
        .map_err(|e| format!("encoding consumer protocol v{version}: {e}"))?;
    Ok(buf.freeze())
}

/// Reads the i16 version prefix and decodes at that version, or at the highest known one when
/// newer (later versions only append fields, which is how Kafka's clients read them too).
fn decode_versioned<M: Decodable>(mut bytes: Bytes, what: &str) -> Result<(i16, M), String> {
    if bytes.remaining() < 2 {
        return Err(format!(
            "{what}: {} bytes, too short for a version",
            bytes.remaining()
        ));
    }
    let version = bytes.get_i16();
    if version < 0 {
        return Err(format!("{what}: negative version {version}"));
    }
    let m = M::decode(&mut bytes, version.min(CONSUMER_PROTOCOL_V))
        .map_err(|e| format!("{what} v{version}: {e}"))?;
    Ok((version, m))
}

/// The partitions of `topic` in a SyncGroup assignment (empty bytes: nothing assigned).
fn decode_assignment(bytes: Bytes, topic: &str) -> Result<Vec<i32>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let (_, a): (_, ConsumerProtocolAssignment) =
        decode_versioned(bytes, "ConsumerProtocolAssignment")?;
    let mut partitions: Vec<i32> = a
        .assigned_partitions
        .iter()
        .filter(|tp| tp.topic.0.as_str() == topic)
        .flat_map(|tp| tp.partitions.iter().copied())
        .collect();
    partitions.sort_unstable();
    Ok(partitions)
}

/// Kafka's range assignor for one topic: members subscribed to it, sorted by member id, get
/// consecutive ranges; the first `partitions % n` get one partition more. Every member gets an
/// assignment (possibly empty), encoded at the lowest subscription version among them.
fn range_assign(
    members: &[(String, Bytes)],
    topic: &str,
    partitions: i32,
) -> Result<Vec<(String, Bytes)>, String> {
    let mut version = CONSUMER_PROTOCOL_V;
    let mut subscribed = Vec::new();
    for (id, metadata) in members {
        let (v, s): (_, ConsumerProtocolSubscription) =
            decode_versioned(metadata.clone(), &format!("subscription of member {id}"))?;
        version = version.min(v);
        if s.topics.iter().any(|t| t.as_str() == topic) {
            subscribed.push(id.as_str());
        }
    }
    subscribed.sort_unstable();
    let n = subscribed.len() as i32;
    members
        .iter()
        .map(|(id, _)| {
            let range = match subscribed.iter().position(|m| *m == id.as_str()) {
                Some(i) => member_range(i as i32, n, partitions),
                None => 0..0,
            };
            let mut tp = consumer_protocol_assignment::TopicPartition::default();
            tp.topic = TopicName(StrBytes::from_string(topic.to_string()));
            tp.partitions = range.collect();
            let mut a = ConsumerProtocolAssignment::default();
            a.assigned_partitions = if tp.partitions.is_empty() {
                Vec::new()
            } else {
                vec![tp]
            };
            Ok((id.clone(), encode_versioned(&a, version)?))
        })
        .collect()
}

/// The partitions the `i`th of `n` sorted members gets under range assignment.
fn member_range(i: i32, n: i32, partitions: i32) -> std::ops::Range<i32> {
    let per = partitions / n;
    let extra = partitions % n;
    let start = i * per + i.min(extra);
    let len = per + i32::from(i < extra);
    start..start + len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_splits_like_kafka() {
        let ranges: Vec<_> = (0..3).map(|i| member_range(i, 3, 7)).collect();
        assert_eq!(ranges, vec![0..3, 3..5, 5..7]);
        assert_eq!(member_range(1, 2, 1), 1..1);
    }

    #[test]
    fn assignment_round_trips() {
        let sub = |topic: &str| {
            let mut s = ConsumerProtocolSubscription::default();
            s.topics = vec![StrBytes::from_string(topic.to_string())];
            encode_versioned(&s, 1).unwrap()
        };
        let members = vec![
            ("b".to_string(), sub("t")),
            ("a".to_string(), sub("t")),
            ("c".to_string(), sub("u")),
        ];
        let out = range_assign(&members, "t", 5).unwrap();
        let got: Vec<_> = out
            .into_iter()
            .map(|(id, bytes)| (id, decode_assignment(bytes, "t").unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("b".into(), vec![3, 4]),
                ("a".into(), vec![0, 1, 2]),
                ("c".into(), vec![])
            ]
        );
    }
}
