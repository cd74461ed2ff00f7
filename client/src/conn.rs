//! A blocking Kafka connection: framing, correlation ids, and the requests the load generator
//! and the `strom` command-line tools send. Every read and write can be bounded by a timeout,
//! so a broker that never answers ends in an error instead of a hang.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, FetchRequest, FetchResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListOffsetsRequest,
    ListOffsetsResponse, MetadataRequest, MetadataResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, ProduceRequest, ProduceResponse,
    RequestHeader, ResponseHeader, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::ResponseError;

use crate::cluster::Metadata;

const PRODUCE_V: i16 = 7;
const FETCH_V: i16 = 11;
const LIST_OFFSETS_V: i16 = 1;
const METADATA_V: i16 = 9;
const FIND_COORDINATOR_V: i16 = 3;
const JOIN_GROUP_V: i16 = 9;
const SYNC_GROUP_V: i16 = 5;
const HEARTBEAT_V: i16 = 4;
const LEAVE_GROUP_V: i16 = 5;
const OFFSET_FETCH_V: i16 = 8;
const OFFSET_COMMIT_V: i16 = 8;
const TOPIC_ALREADY_EXISTS: i16 = 36;

/// Kafka error codes the group client reacts to.
pub mod code {
    /// The coordinator is still loading the group's state: retry after a pause.
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    /// No coordinator is ready for the group: look it up again after a pause.
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    /// The member's generation is stale: rejoin the group.
    pub const ILLEGAL_GENERATION: i16 = 22;
    /// The coordinator does not know the member id: rejoin with an empty id.
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    /// The group is rebalancing: rejoin to take part.
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    /// The first JoinGroup returned an assigned member id: join again with it.
    pub const MEMBER_ID_REQUIRED: i16 = 79;
}

/// A Kafka error code as `NAME (code)` for messages.
pub fn code_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        Some(e) => format!("{e:?} ({code})"),
        None => "no error (0)".to_string(),
    }
}

/// One blocking connection to a broker; requests on it are answered in order.
pub struct Conn {
    stream: TcpStream,
    next_id: i32,
    rbuf: BytesMut,
    client_id: StrBytes,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A topic name in the protocol crate's type, for building requests.
pub fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// A string in the protocol crate's type, for building requests.
pub fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// A FindCoordinator answer.
pub struct Coordinator {
    /// Kafka error code; 0 when the coordinator was found.
    pub error: i16,
    /// Broker id of the coordinator.
    pub node_id: i32,
    /// Host to connect to for the group's requests.
    pub host: String,
    /// Port to connect to for the group's requests.
    pub port: i32,
}

/// One member's JoinGroup outcome.
pub struct Joined {
    /// Kafka error code; 0 when the member joined.
    pub error: i16,
    /// Generation of the group this join belongs to; later requests must carry it.
    pub generation: i32,
    /// The member id the coordinator assigned or confirmed.
    pub member_id: String,
    /// Member id of the group leader, which computes the assignment.
    pub leader: String,
    /// The protocol (assignor) the group chose; None if the broker sent none (e.g. on error).
    pub protocol_name: Option<String>,
    /// (member id, subscription metadata); only the leader receives them.
    pub members: Vec<(String, Bytes)>,
}

/// What a member sends to join: group, its id so far, timeouts and one protocol.
pub struct JoinParams<'a> {
    /// The group to join.
    pub group: &'a str,
    /// The member id from an earlier join, or empty for a new member.
    pub member_id: &'a str,
    /// How long the coordinator waits for a heartbeat before removing the member.
    pub session_timeout_ms: i32,
    /// How long the coordinator waits for members to rejoin during a rebalance.
    pub rebalance_timeout_ms: i32,
    /// The protocol type, `consumer` for consumer groups.
    pub protocol_type: &'a str,
    /// The one assignor this member supports, e.g. `range`.
    pub protocol_name: &'a str,
    /// The member's subscription, as the protocol encodes it.
    pub metadata: Bytes,
}

impl Conn {
    /// Connects to `addr` without timeouts, with the client id `strom-bench`.
    pub fn connect(addr: &str) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
        Conn::from_stream(stream, "strom-bench")
    }

    /// Connects within `timeout` (per resolved address) and bounds every later read and write
    /// by it too.
    pub fn connect_timeout(addr: &str, timeout: Duration, client_id: &str) -> Result<Conn, String> {
        let addrs = addr
            .to_socket_addrs()
            .map_err(|e| format!("resolving {addr}: {e}"))?;
        let mut last = format!("resolving {addr}: no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(stream) => {
                    let conn = Conn::from_stream(stream, client_id)?;
                    conn.set_timeout(timeout)?;
                    return Ok(conn);
                }
                Err(e) => last = format!("connecting to {addr}: {e}"),
            }
        }
        Err(last)
    }

    fn from_stream(stream: TcpStream, client_id: &str) -> Result<Conn, String> {
        stream.set_nodelay(true).map_err(err)?;
        Ok(Conn {
            stream,
            next_id: 1,
            rbuf: BytesMut::new(),
            client_id: str_bytes(client_id),
        })
    }

    /// Sends `req` as `api` at `version` and waits for its response.
    pub fn request<Req: Encodable, Resp: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        req: &Req,
    ) -> Result<Resp, String> {
        let id = self.send(api, version, req)?;
        self.recv(api, version, id)
    }

    /// A second handle on the same socket, so one thread can write requests while another
    /// reads the responses (which arrive in request order).
    pub fn try_clone(&self) -> Result<Conn, String> {
        Ok(Conn {
            stream: self.stream.try_clone().map_err(err)?,
            next_id: self.next_id,
            rbuf: BytesMut::new(),
            client_id: self.client_id.clone(),
        })
    }

    /// Bounds every read and write, so a broker that never answers ends in an error.
    pub fn set_timeout(&self, timeout: Duration) -> Result<(), String> {
        self.stream.set_read_timeout(Some(timeout)).map_err(err)?;
        self.stream.set_write_timeout(Some(timeout)).map_err(err)
    }

    /// Writes `body` as one `api` request at `version` without waiting; returns its correlation
    /// id for [`Conn::recv`].
    pub fn send<R: Encodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &R,
    ) -> Result<i32, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = api as i16;
        header.request_api_version = version;
        header.correlation_id = id;
        header.client_id = Some(self.client_id.clone());
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header
            .encode(&mut buf, api.request_header_version(version))
            .map_err(err)?;
        body.encode(&mut buf, version).map_err(err)?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf).map_err(err)?;
        Ok(id)
    }

    /// Reads the next response and checks it answers the request with correlation id `id`.
    pub fn recv<R: Decodable>(&mut self, api: ApiKey, version: i16, id: i32) -> Result<R, String> {
        let timeout = self
            .stream
            .read_timeout()
            .ok()
            .flatten()
            .unwrap_or_default();
        let reading = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                format!("no {api:?} response within {} ms", timeout.as_millis())
            }
            _ => format!("reading {api:?} response: {e}"),
        };
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).map_err(reading)?;
        let len = i32::from_be_bytes(len).max(0) as usize;
        // One receive buffer for the connection: once the previous response's bytes are
        // dropped, `reserve` takes the same allocation back, so large fetches do not fault in
        // fresh pages every time.
        self.rbuf.clear();
        self.rbuf.reserve(len);
        self.rbuf.resize(len, 0);
        self.stream
            .read_exact(&mut self.rbuf[..])
            .map_err(reading)?;
        let mut b = self.rbuf.split().freeze();
        let h =
            ResponseHeader::decode(&mut b, api.response_header_version(version)).map_err(err)?;
        if h.correlation_id != id {
            return Err(format!(
                "response for {} while waiting for {id}",
                h.correlation_id
            ));
        }
        R::decode(&mut b, version).map_err(err)
    }

    /// CreateTopics for one topic with `configs` (name, value). Returns true if the topic was
    /// created, false if it existed already (it is then left as it is, configs included); any
    /// other answer, such as a config the broker refuses, is an error carrying its message.
    pub fn create_topic(
        &mut self,
        topic: &str,
        partitions: i32,
        configs: &[(String, String)],
    ) -> Result<bool, String> {
        let mut t = CreatableTopic::default();
        t.name = topic_name(topic);
        t.num_partitions = partitions;
        t.replication_factor = 1;
        t.configs = configs
            .iter()
            .map(|(k, v)| {
                let mut c = CreatableTopicConfig::default();
                c.name = str_bytes(k);
                c.value = Some(str_bytes(v));
                c
            })
            .collect();
        let mut req = CreateTopicsRequest::default();
        req.topics = vec![t];
        req.timeout_ms = 10_000;
        let id = self.send(ApiKey::CreateTopics, 4, &req)?;
        let resp: CreateTopicsResponse = self.recv(ApiKey::CreateTopics, 4, id)?;
        let r = resp.topics.first().ok_or_else(|| {
            format!("creating topic {topic}: no topic in the CreateTopics response")
        })?;
        match r.error_code {
            0 => Ok(true),
            TOPIC_ALREADY_EXISTS => Ok(false),
            code => {
                let message = r
                    .error_message
                    .as_ref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                let sent = if configs.is_empty() {
                    String::new()
                } else {
                    let list: Vec<String> =
                        configs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    format!(" (topic configs sent: {})", list.join(" "))
                };
                Err(format!(
                    "creating topic {topic}: the broker answered {}{message}{sent}",
                    code_name(code)
                ))
            }
        }
    }

    /// One Produce request with a batch for each of `parts` (partition, batch) of `topic`.
    pub fn send_produce_parts(
        &mut self,
        topic: &str,
        parts: Vec<(i32, Bytes)>,
        acks: i16,
    ) -> Result<i32, String> {
        let mut t = TopicProduceData::default();
        t.name = topic_name(topic);
        t.partition_data = parts
            .into_iter()
            .map(|(partition, batch)| {
                let mut p = PartitionProduceData::default();
                p.index = partition;
                p.records = Some(batch);
                p
            })
            .collect();
        let mut req = ProduceRequest::default();
        req.acks = acks;
        req.timeout_ms = 30_000;
        req.topic_data = vec![t];
        self.send(ApiKey::Produce, PRODUCE_V, &req)
    }

    /// The (partition, error code) pairs of a Produce response.
    pub fn recv_produce_errors(&mut self, id: i32) -> Result<Vec<(i32, i16)>, String> {
        let resp: ProduceResponse = self.recv(ApiKey::Produce, PRODUCE_V, id)?;
        Ok(resp
            .responses
            .iter()
            .flat_map(|t| &t.partition_responses)
            .map(|p| (p.index, p.error_code))
            .collect())
    }

    /// ListOffsets for `partitions` at `timestamp` (-1 latest, -2 earliest): (partition, offset).
    pub fn list_offsets(
        &mut self,
        topic: &str,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<Vec<(i32, i64)>, String> {
        let mut out = Vec::with_capacity(partitions.len());
        for (partition, error, offset) in self.list_offsets_codes(topic, partitions, timestamp)? {
            if error != 0 {
                return Err(format!(
                    "ListOffsets {topic}/{partition}: {}",
                    code_name(error)
                ));
            }
            out.push((partition, offset));
        }
        Ok(out)
    }

    /// ListOffsets for `partitions` at `timestamp` (-1 latest, -2 earliest), with each
    /// partition's error code: (partition, error, offset). Fails only if the request does, or
    /// if the answer does not cover every partition asked for.
    pub fn list_offsets_codes(
        &mut self,
        topic: &str,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<Vec<(i32, i16, i64)>, String> {
        let mut t = ListOffsetsTopic::default();
        t.name = topic_name(topic);
        t.partitions = partitions
            .iter()
            .map(|&p| {
                let mut lp = ListOffsetsPartition::default();
                lp.partition_index = p;
                lp.timestamp = timestamp;
                lp
            })
            .collect();
        let mut req = ListOffsetsRequest::default();
        req.replica_id = (-1).into();
        req.topics = vec![t];
        let id = self.send(ApiKey::ListOffsets, LIST_OFFSETS_V, &req)?;
        let resp: ListOffsetsResponse = self.recv(ApiKey::ListOffsets, LIST_OFFSETS_V, id)?;
        let out: Vec<(i32, i16, i64)> = resp
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| (p.partition_index, p.error_code, p.offset))
            .collect();
        if out.len() != partitions.len() {
            // A partition error says more than the count does.
            if let Some((p, e, _)) = out.iter().find(|(_, e, _)| *e != 0) {
                return Err(format!("ListOffsets {topic}/{p}: {}", code_name(*e)));
            }
            return Err(format!(
                "ListOffsets {topic}: asked for {} partitions, got {}",
                partitions.len(),
                out.len()
            ));
        }
        Ok(out)
    }

    /// Metadata for `topics` (without creating any): the brokers, and each partition's leader.
    pub fn metadata(&mut self, topics: &[&str]) -> Result<Metadata, String> {
        let mut req = MetadataRequest::default();
        req.topics = Some(
            topics
                .iter()
                .map(|topic| {
                    let mut t = MetadataRequestTopic::default();
                    t.name = Some(topic_name(topic));
                    t
                })
                .collect(),
        );
        req.allow_auto_topic_creation = false;
        let id = self.send(ApiKey::Metadata, METADATA_V, &req)?;
        let resp: MetadataResponse = self.recv(ApiKey::Metadata, METADATA_V, id)?;
        Ok(Metadata::from_response(&resp))
    }

    /// The partition count of `topic` from Metadata.
    pub fn partition_count(&mut self, topic: &str) -> Result<i32, String> {
        let mut t = MetadataRequestTopic::default();
        t.name = Some(topic_name(topic));
        let mut req = MetadataRequest::default();
        req.topics = Some(vec![t]);
        let id = self.send(ApiKey::Metadata, METADATA_V, &req)?;
        let resp: MetadataResponse = self.recv(ApiKey::Metadata, METADATA_V, id)?;
        let t = resp
            .topics
            .first()
            .ok_or_else(|| format!("Metadata for {topic}: no topic in the response"))?;
        if t.error_code != 0 {
            return Err(format!("Metadata for {topic}: {}", code_name(t.error_code)));
        }
        Ok(t.partitions.len() as i32)
    }

    /// Fetches `positions` (partition, offset) of `topic` once: (partition, error, records).
    pub fn fetch_sets(
        &mut self,
        topic: &str,
        positions: &[(i32, i64)],
        max_wait_ms: i32,
        partition_max_bytes: i32,
        max_bytes: i32,
    ) -> Result<Vec<(i32, i16, Bytes)>, String> {
        let id = self.send_fetch(
            topic,
            positions,
            max_wait_ms,
            partition_max_bytes,
            max_bytes,
        )?;
        self.recv_fetch(id)
    }

    /// Writes one Fetch request for `positions` (partition, offset) of `topic` without waiting;
    /// returns its correlation id for [`Conn::recv_fetch`].
    pub fn send_fetch(
        &mut self,
        topic: &str,
        positions: &[(i32, i64)],
        max_wait_ms: i32,
        partition_max_bytes: i32,
        max_bytes: i32,
    ) -> Result<i32, String> {
        let mut t = FetchTopic::default();
        t.topic = topic_name(topic);
        t.partitions = positions
            .iter()
            .map(|&(partition, offset)| {
                let mut p = FetchPartition::default();
                p.partition = partition;
                p.fetch_offset = offset;
                p.partition_max_bytes = partition_max_bytes;
                p
            })
            .collect();
        let mut req = FetchRequest::default();
        req.replica_id = (-1).into();
        req.max_wait_ms = max_wait_ms;
        req.min_bytes = 1;
        req.max_bytes = max_bytes;
        req.session_epoch = -1;
        req.topics = vec![t];
        self.send(ApiKey::Fetch, FETCH_V, &req)
    }

    /// Reads the answer to the Fetch request `id`: (partition, error, records).
    pub fn recv_fetch(&mut self, id: i32) -> Result<Vec<(i32, i16, Bytes)>, String> {
        let resp: FetchResponse = self.recv(ApiKey::Fetch, FETCH_V, id)?;
        if resp.error_code != 0 {
            return Err(format!("Fetch: {}", code_name(resp.error_code)));
        }
        Ok(resp
            .responses
            .into_iter()
            .flat_map(|t| t.partitions)
            .map(|p| {
                (
                    p.partition_index,
                    p.error_code,
                    p.records.unwrap_or_default(),
                )
            })
            .collect())
    }

    /// Commits `offsets` (partition, next offset) of `topic` for a group member.
    pub fn offset_commit(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        topic: &str,
        offsets: &[(i32, i64)],
    ) -> Result<(), String> {
        let mut t = OffsetCommitRequestTopic::default();
        t.name = topic_name(topic);
        t.partitions = offsets
            .iter()
            .map(|&(partition, offset)| {
                let mut p = OffsetCommitRequestPartition::default();
                p.partition_index = partition;
                p.committed_offset = offset;
                p
            })
            .collect();
        let mut req = OffsetCommitRequest::default();
        req.group_id = GroupId(str_bytes(group));
        req.generation_id_or_member_epoch = generation;
        req.member_id = str_bytes(member_id);
        req.topics = vec![t];
        let id = self.send(ApiKey::OffsetCommit, OFFSET_COMMIT_V, &req)?;
        let resp: OffsetCommitResponse = self.recv(ApiKey::OffsetCommit, OFFSET_COMMIT_V, id)?;
        for p in resp.topics.iter().flat_map(|t| &t.partitions) {
            match p.error_code {
                0 => {}
                // A rebalance started: the next heartbeat says so and the member rejoins.
                code::REBALANCE_IN_PROGRESS
                | code::ILLEGAL_GENERATION
                | code::UNKNOWN_MEMBER_ID => return Ok(()),
                e => {
                    return Err(format!(
                        "OffsetCommit {group} {topic}/{}: {}",
                        p.partition_index,
                        code_name(e)
                    ))
                }
            }
        }
        Ok(())
    }

    /// FindCoordinator for a consumer group.
    pub fn find_coordinator(&mut self, group: &str) -> Result<Coordinator, String> {
        let mut req = FindCoordinatorRequest::default();
        req.key = str_bytes(group);
        req.key_type = 0;
        let id = self.send(ApiKey::FindCoordinator, FIND_COORDINATOR_V, &req)?;
        let resp: FindCoordinatorResponse =
            self.recv(ApiKey::FindCoordinator, FIND_COORDINATOR_V, id)?;
        Ok(Coordinator {
            error: resp.error_code,
            node_id: resp.node_id.0,
            host: resp.host.to_string(),
            port: resp.port,
        })
    }

    /// JoinGroup; blocks until the coordinator completes the join phase.
    pub fn join_group(&mut self, p: &JoinParams<'_>) -> Result<Joined, String> {
        let mut protocol = JoinGroupRequestProtocol::default();
        protocol.name = str_bytes(p.protocol_name);
        protocol.metadata = p.metadata.clone();
        let mut req = JoinGroupRequest::default();
        req.group_id = GroupId(str_bytes(p.group));
        req.session_timeout_ms = p.session_timeout_ms;
        req.rebalance_timeout_ms = p.rebalance_timeout_ms;
        req.member_id = str_bytes(p.member_id);
        req.protocol_type = str_bytes(p.protocol_type);
        req.protocols = vec![protocol];
        let id = self.send(ApiKey::JoinGroup, JOIN_GROUP_V, &req)?;
        let resp: JoinGroupResponse = self.recv(ApiKey::JoinGroup, JOIN_GROUP_V, id)?;
        Ok(Joined {
            error: resp.error_code,
            generation: resp.generation_id,
            member_id: resp.member_id.to_string(),
            leader: resp.leader.to_string(),
            protocol_name: resp.protocol_name.map(|n| n.to_string()),
            members: resp
                .members
                .into_iter()
                .map(|m| (m.member_id.to_string(), m.metadata))
                .collect(),
        })
    }

    /// SyncGroup; the leader passes every member's assignment, the others none. Returns the
    /// error code and this member's assignment bytes.
    pub fn sync_group(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
        protocol: (&str, &str),
        assignments: Vec<(String, Bytes)>,
    ) -> Result<(i16, Bytes), String> {
        let mut req = SyncGroupRequest::default();
        req.group_id = GroupId(str_bytes(group));
        req.generation_id = generation;
        req.member_id = str_bytes(member_id);
        req.protocol_type = Some(str_bytes(protocol.0));
        req.protocol_name = Some(str_bytes(protocol.1));
        req.assignments = assignments
            .into_iter()
            .map(|(member, assignment)| {
                let mut a = SyncGroupRequestAssignment::default();
                a.member_id = StrBytes::from_string(member);
                a.assignment = assignment;
                a
            })
            .collect();
        let id = self.send(ApiKey::SyncGroup, SYNC_GROUP_V, &req)?;
        let resp: SyncGroupResponse = self.recv(ApiKey::SyncGroup, SYNC_GROUP_V, id)?;
        Ok((resp.error_code, resp.assignment))
    }

    /// Heartbeat; returns the error code (REBALANCE_IN_PROGRESS asks the member to rejoin).
    pub fn heartbeat(
        &mut self,
        group: &str,
        generation: i32,
        member_id: &str,
    ) -> Result<i16, String> {
        let mut req = HeartbeatRequest::default();
        req.group_id = GroupId(str_bytes(group));
        req.generation_id = generation;
        req.member_id = str_bytes(member_id);
        let id = self.send(ApiKey::Heartbeat, HEARTBEAT_V, &req)?;
        let resp: HeartbeatResponse = self.recv(ApiKey::Heartbeat, HEARTBEAT_V, id)?;
        Ok(resp.error_code)
    }

    /// LeaveGroup for one member.
    pub fn leave_group(&mut self, group: &str, member_id: &str) -> Result<(), String> {
        let mut member = MemberIdentity::default();
        member.member_id = str_bytes(member_id);
        member.reason = Some(StrBytes::from_static_str("leaving"));
        let mut req = LeaveGroupRequest::default();
        req.group_id = GroupId(str_bytes(group));
        req.members = vec![member];
        let id = self.send(ApiKey::LeaveGroup, LEAVE_GROUP_V, &req)?;
        let resp: LeaveGroupResponse = self.recv(ApiKey::LeaveGroup, LEAVE_GROUP_V, id)?;
        let member_error = resp.members.first().map_or(0, |m| m.error_code);
        let code = if resp.error_code != 0 {
            resp.error_code
        } else {
            member_error
        };
        if code != 0 {
            return Err(format!("LeaveGroup {group}: {}", code_name(code)));
        }
        Ok(())
    }

    /// Committed offsets of `partitions` for `group`: (partition, offset, -1 when none).
    pub fn offset_fetch(
        &mut self,
        group: &str,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Vec<(i32, i64)>, String> {
        let mut t = OffsetFetchRequestTopics::default();
        t.name = topic_name(topic);
        t.partition_indexes = partitions.to_vec();
        let mut g = OffsetFetchRequestGroup::default();
        g.group_id = GroupId(str_bytes(group));
        g.topics = Some(vec![t]);
        let mut req = OffsetFetchRequest::default();
        req.groups = vec![g];
        let id = self.send(ApiKey::OffsetFetch, OFFSET_FETCH_V, &req)?;
        let resp: OffsetFetchResponse = self.recv(ApiKey::OffsetFetch, OFFSET_FETCH_V, id)?;
        let g = resp
            .groups
            .first()
            .ok_or_else(|| format!("OffsetFetch {group}: no group in the response"))?;
        if g.error_code != 0 {
            return Err(format!("OffsetFetch {group}: {}", code_name(g.error_code)));
        }
        let mut out = Vec::with_capacity(partitions.len());
        for p in g.topics.iter().flat_map(|t| &t.partitions) {
            if p.error_code != 0 {
                return Err(format!(
                    "OffsetFetch {group} {topic}/{}: {}",
                    p.partition_index,
                    code_name(p.error_code)
                ));
            }
            out.push((p.partition_index, p.committed_offset));
        }
        if out.len() != partitions.len() {
            return Err(format!(
                "OffsetFetch {group}: asked for {} partitions, got {}",
                partitions.len(),
                out.len()
            ));
        }
        Ok(out)
    }
}

#[cfg(unix)]
impl std::os::fd::AsRawFd for Conn {
    /// The socket, for waiting on several connections at once (poll).
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.stream.as_raw_fd()
    }
}
