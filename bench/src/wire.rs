//! The few Kafka requests the load generator needs, over a blocking socket.

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, FetchRequest, FetchResponse, ListOffsetsRequest,
    ListOffsetsResponse, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

const PRODUCE_V: i16 = 7;
const FETCH_V: i16 = 11;

pub struct Conn {
    stream: TcpStream,
    next_id: i32,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// One uncompressed v2 batch of `count` records with `value`.
pub fn build_batch(value: &Bytes, count: usize) -> Result<Bytes, String> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(err)?.as_millis() as i64;
    let records: Vec<Record> = (0..count)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // The encoder groups records whose offset - sequence is constant; the first
            // record's sequence (-1: not idempotent) becomes the batch's base sequence.
            sequence: i as i32 - 1,
            delete_horizon: false,
            timestamp: now,
            key: None,
            value: Some(value.clone()),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, records.iter(), &RecordEncodeOptions { version: 2, compression: Compression::None })
        .map_err(err)?;
    Ok(buf.freeze())
}

impl Conn {
    pub fn connect(addr: &str) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connecting to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(err)?;
        Ok(Conn { stream, next_id: 1 })
    }

    fn send<R: Encodable>(&mut self, api: ApiKey, version: i16, body: &R) -> Result<i32, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = api as i16;
        header.request_api_version = version;
        header.correlation_id = id;
        header.client_id = Some(StrBytes::from_static_str("strom-bench"));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header.encode(&mut buf, api.request_header_version(version)).map_err(err)?;
        body.encode(&mut buf, version).map_err(err)?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&buf).map_err(err)?;
        Ok(id)
    }

    fn recv<R: Decodable>(&mut self, api: ApiKey, version: i16, id: i32) -> Result<R, String> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).map_err(err)?;
        let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut body).map_err(err)?;
        let mut b = Bytes::from(body);
        let h = ResponseHeader::decode(&mut b, api.response_header_version(version)).map_err(err)?;
        if h.correlation_id != id {
            return Err(format!("response for {} while waiting for {id}", h.correlation_id));
        }
        R::decode(&mut b, version).map_err(err)
    }

    pub fn create_topic(&mut self, topic: &str, partitions: i32) -> Result<(), String> {
        let mut t = CreatableTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.to_string()));
        t.num_partitions = partitions;
        t.replication_factor = 1;
        let mut req = CreateTopicsRequest::default();
        req.topics = vec![t];
        req.timeout_ms = 10_000;
        let id = self.send(ApiKey::CreateTopics, 4, &req)?;
        let resp: CreateTopicsResponse = self.recv(ApiKey::CreateTopics, 4, id)?;
        match resp.topics.first().map(|t| t.error_code) {
            Some(0) | Some(36) => Ok(()),
            other => Err(format!("creating {topic}: error {other:?}")),
        }
    }

    pub fn send_produce(&mut self, topic: &str, partition: i32, batch: Bytes, acks: i16) -> Result<i32, String> {
        let mut p = PartitionProduceData::default();
        p.index = partition;
        p.records = Some(batch);
        let mut t = TopicProduceData::default();
        t.name = TopicName(StrBytes::from_string(topic.to_string()));
        t.partition_data = vec![p];
        let mut req = ProduceRequest::default();
        req.acks = acks;
        req.timeout_ms = 30_000;
        req.topic_data = vec![t];
        self.send(ApiKey::Produce, PRODUCE_V, &req)
    }

    pub fn recv_produce(&mut self, id: i32) -> Result<(), String> {
        let resp: ProduceResponse = self.recv(ApiKey::Produce, PRODUCE_V, id)?;
        for t in &resp.responses {
            for p in &t.partition_responses {
                if p.error_code != 0 {
                    return Err(format!("produce error {} on partition {}", p.error_code, p.index));
                }
            }
        }
        Ok(())
    }

    pub fn latest_offset(&mut self, topic: &str, partition: i32) -> Result<i64, String> {
        let mut p = ListOffsetsPartition::default();
        p.partition_index = partition;
        p.timestamp = -1;
        let mut t = ListOffsetsTopic::default();
        t.name = TopicName(StrBytes::from_string(topic.to_string()));
        t.partitions = vec![p];
        let mut req = ListOffsetsRequest::default();
        req.replica_id = (-1).into();
        req.topics = vec![t];
        let id = self.send(ApiKey::ListOffsets, 1, &req)?;
        let resp: ListOffsetsResponse = self.recv(ApiKey::ListOffsets, 1, id)?;
        let p = resp.topics.first().and_then(|t| t.partitions.first()).ok_or("empty ListOffsets response")?;
        if p.error_code != 0 {
            return Err(format!("ListOffsets error {}", p.error_code));
        }
        Ok(p.offset)
    }

    /// Fetches once; returns the offset after the last whole batch and the bytes received.
    pub fn fetch(&mut self, topic: &str, partition: i32, offset: i64, max_bytes: i32) -> Result<(i64, u64), String> {
        let mut p = FetchPartition::default();
        p.partition = partition;
        p.fetch_offset = offset;
        p.partition_max_bytes = max_bytes;
        let mut t = FetchTopic::default();
        t.topic = TopicName(StrBytes::from_string(topic.to_string()));
        t.partitions = vec![p];
        let mut req = FetchRequest::default();
        req.replica_id = (-1).into();
        req.max_wait_ms = 500;
        req.min_bytes = 1;
        req.max_bytes = max_bytes;
        req.session_epoch = -1;
        req.topics = vec![t];
        let id = self.send(ApiKey::Fetch, FETCH_V, &req)?;
        let resp: FetchResponse = self.recv(ApiKey::Fetch, FETCH_V, id)?;
        let pd = resp.responses.first().and_then(|t| t.partitions.first()).ok_or("empty Fetch response")?;
        if pd.error_code != 0 {
            return Err(format!("Fetch error {}", pd.error_code));
        }
        let mut records = pd.records.clone().unwrap_or_default();
        let got = records.len() as u64;
        // Walk batch headers: base offset (8), length (4), ..., lastOffsetDelta at 23.
        let mut next = offset;
        while records.remaining() >= 61 {
            let base = i64::from_be_bytes(records[0..8].try_into().map_err(err)?);
            let len = i32::from_be_bytes(records[8..12].try_into().map_err(err)?) as usize + 12;
            if records.remaining() < len {
                break;
            }
            let last_delta = i32::from_be_bytes(records[23..27].try_into().map_err(err)?);
            next = base + last_delta as i64 + 1;
            records.advance(len);
        }
        Ok((next, got))
    }
}
