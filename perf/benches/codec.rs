//! Microbenchmarks of Kafka wire decoding and encoding on the request paths. Run with
//! `cargo bench -p strom-perf --bench codec`.
//!
//! The bench calls the broker's own code through `strom_broker::bench_api`: the hand-written
//! FetchResponse encoder (broker/src/kafka/handlers/fetch/encode.rs) and `frame_response`, which
//! frames a generated encoder's output (broker/src/kafka/codec.rs, used for Metadata and most
//! APIs).

#![allow(
    missing_docs,
    reason = "criterion_group! defines the group as a `pub fn` that cannot carry a doc comment"
)]

use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchResponse, MetadataResponse, ProduceRequest, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use strom_net::OutChunk;
use strom_storage::testing::{build_batch, KeyValue};
use strom_storage::{Offset, ReadSlice, SegmentFd};

/// A valid batch of 64 records with 1 KiB values.
fn batch_64x1kib() -> Bytes {
    let value = vec![b'v'; 1024];
    let records: Vec<KeyValue<'_>> = (0..64).map(|_| (None, Some(&value[..]))).collect();
    Bytes::from(build_batch(1_700_000_000_000, &records))
}

/// `RequestHeader::decode` of a Produce v9 request header (header v2: API key, version,
/// correlation id, client id, tagged fields), as the connection does for every request.
fn decode_header(c: &mut Criterion) {
    let version = ApiKey::Produce.request_header_version(9);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(9)
        .with_correlation_id(42)
        .with_client_id(Some(StrBytes::from_static_str("strom-perf-producer")));
    let mut buf = BytesMut::new();
    header.encode(&mut buf, version).expect("encodes");
    let encoded = buf.freeze();
    c.benchmark_group("decode")
        .bench_function("request_header_v2", |b| {
            b.iter(|| {
                let mut frame = encoded.clone();
                RequestHeader::decode(&mut frame, version).expect("decodes")
            });
        });
}

/// `ProduceRequest::decode` (v9) of a request carrying one 64 x 1 KiB batch. The records stay a
/// `Bytes` slice of the frame, so the time does not grow with their size (hence no throughput).
fn decode_produce(c: &mut Criterion) {
    let partition = PartitionProduceData::default().with_records(Some(batch_64x1kib()));
    let topic = TopicProduceData::default()
        .with_name(TopicName(StrBytes::from_static_str("bench")))
        .with_partition_data(vec![partition]);
    let req = ProduceRequest::default()
        .with_acks(1)
        .with_topic_data(vec![topic]);
    let mut buf = BytesMut::new();
    req.encode(&mut buf, 9).expect("encodes");
    let encoded = buf.freeze();
    c.benchmark_group("decode")
        .bench_function("produce_v9_64x1KiB", |bench| {
            bench.iter(|| {
                let mut b = encoded.clone();
                ProduceRequest::decode(&mut b, 9).expect("decodes")
            });
        });
}

/// The broker's `frame_response`: `[size][response header][body]`.
fn frame_response<R: Encodable>(api: ApiKey, version: i16, correlation_id: i32, body: &R) -> Bytes {
    strom_broker::bench_api::frame_response(api, version, correlation_id, body).expect("encodes")
}

/// A Metadata v12 response as the broker builds it (broker/src/kafka/handlers/metadata.rs):
/// one broker, `topics` topics of 16 single-replica partitions each.
fn metadata_response(topics: usize) -> MetadataResponse {
    let node = BrokerId(0);
    let broker = MetadataResponseBroker::default()
        .with_node_id(node)
        .with_host(StrBytes::from_static_str("broker-0.example.internal"))
        .with_port(9092);
    let topic = |t: usize| {
        let partitions = (0..16)
            .map(|p| {
                MetadataResponsePartition::default()
                    .with_partition_index(p)
                    .with_leader_id(node)
                    .with_leader_epoch(3)
                    .with_replica_nodes(vec![node])
                    .with_isr_nodes(vec![node])
            })
            .collect();
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(format!(
                "orders-{t}"
            )))))
            .with_topic_authorized_operations(i32::MIN)
            .with_partitions(partitions)
    };
    MetadataResponse::default()
        .with_brokers(vec![broker])
        .with_cluster_id(Some(StrBytes::from_static_str("strom-perf-cluster")))
        .with_controller_id(node)
        .with_topics((0..topics).map(topic).collect())
}

/// Framing a Metadata v12 response (generated encoder, sizing pass included) for 1 and 100
/// topics of 16 partitions.
fn encode_metadata(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for topics in [1usize, 100] {
        let resp = metadata_response(topics);
        g.bench_function(
            BenchmarkId::new("metadata_v12", format!("{topics}_topics")),
            |b| b.iter(|| frame_response(ApiKey::Metadata, 12, 7, &resp)),
        );
    }
    g.finish();
}

// The broker's own Fetch encoder (the library's bench API), not a copy.
use strom_broker::bench_api::{
    encode as encode_fetch, FetchOut, FetchResult, PartitionOut, TopicOut,
};

/// FetchResponse v12 for one partition holding a 64 x 1 KiB batch. `fetch_v12_chunks` is
/// Strom's encoder, which leaves the records in the segment file (sent with sendfile), so its
/// cost does not grow with the records; `fetch_v12_generated_64x1KiB` is the generated encoder
/// with the records in memory, the copy that Strom's encoder avoids.
fn encode_fetch_response(c: &mut Criterion) {
    let records = batch_64x1kib();
    let mut file = tempfile::tempfile().expect("temp file");
    file.write_all(&records).expect("write the records");
    let fd = Arc::new(SegmentFd::from(OwnedFd::from(file)));
    let slice = ReadSlice {
        fd,
        position: 0,
        len: records.len() as u32,
        first_offset: Offset(0),
    };
    let result = FetchResult {
        error: 0,
        high_watermark: 64,
        last_stable_offset: 64,
        log_start_offset: 0,
        slice: Some(slice),
        diverging_epoch: None,
        current_leader: None,
    };
    let out = FetchOut {
        error_code: 0,
        session_id: 0,
        read_committed: false,
        topics: vec![TopicOut {
            name: "orders".into(),
            partitions: vec![PartitionOut {
                partition: 0,
                result,
            }],
        }],
    };

    // The copy must still produce what the generated decoder reads back.
    let mut wire = BytesMut::new();
    for chunk in encode_fetch(12, 7, &out) {
        match chunk {
            OutChunk::Bytes(b) => wire.put_slice(&b),
            OutChunk::File { .. } => wire.put_slice(&records),
        }
    }
    let mut wire = wire.split_off(4).freeze();
    ResponseHeader::decode(&mut wire, 1).expect("response header");
    let decoded = FetchResponse::decode(&mut wire, 12).expect("the encoder's output decodes");
    assert_eq!(
        decoded.responses[0].partitions[0].records.as_ref(),
        Some(&records)
    );

    let generated =
        FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("orders")))
            .with_partitions(vec![PartitionData::default()
                .with_high_watermark(64)
                .with_last_stable_offset(64)
                .with_records(Some(records.clone()))])]);

    let mut g = c.benchmark_group("encode");
    g.bench_function("fetch_v12_chunks", |b| b.iter(|| encode_fetch(12, 7, &out)));
    g.throughput(Throughput::Bytes(records.len() as u64));
    g.bench_function("fetch_v12_generated_64x1KiB", |b| {
        b.iter(|| frame_response(ApiKey::Fetch, 12, 7, &generated));
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = decode_header, decode_produce, encode_metadata, encode_fetch_response
}
criterion_main!(benches);
