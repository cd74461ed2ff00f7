//! Microbenchmarks of per-batch work on the produce path: CRC-32C, batch validation and
//! request decoding. Run with `cargo bench -p strom-perf`.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

fn batch(records: usize, value_bytes: usize) -> Vec<u8> {
    let value = vec![b'v'; value_bytes];
    let recs: Vec<strom_storage::testing::KeyValue> = (0..records).map(|_| (None, Some(&value[..]))).collect();
    strom_storage::testing::build_batch(1_700_000_000_000, &recs)
}

fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for size in [1024usize, 64 * 1024, 1024 * 1024] {
        let data = vec![7u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, d| b.iter(|| crc32c::crc32c(d)));
    }
    g.finish();
}

fn validate(c: &mut Criterion) {
    let mut g = c.benchmark_group("validate_batch");
    for (records, value) in [(1usize, 100usize), (64, 1024), (16, 64 * 1024)] {
        let b = batch(records, value);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_with_input(BenchmarkId::new("records_x_bytes", format!("{records}x{value}")), &b, |bench, b| {
            bench.iter(|| strom_storage::validate_batch(b).is_ok())
        });
    }
    g.finish();
}

fn decode_produce(c: &mut Criterion) {
    let b = Bytes::from(batch(64, 1024));
    let mut p = PartitionProduceData::default();
    p.records = Some(b.clone());
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_static_str("bench"));
    t.partition_data = vec![p];
    let mut req = ProduceRequest::default();
    req.acks = 1;
    req.topic_data = vec![t];
    let mut buf = BytesMut::new();
    req.encode(&mut buf, 9).expect("encodes");
    let encoded = buf.freeze();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.bench_function("produce_v9_64x1KiB", |bench| {
        bench.iter(|| {
            let mut b = encoded.clone();
            ProduceRequest::decode(&mut b, 9).expect("decodes")
        })
    });
    g.finish();
}

criterion_group!(benches, crc, validate, decode_produce);
criterion_main!(benches);
